@serial @observability
Feature: Observability: the telemetry agrees with the truth, and the alerts fire when they should
  The seed promises Prometheus metrics, alerts on error rates above 5%, and access logs with
  business context. A real Prometheus (started with the mesh for these scenarios) scrapes every
  proxy each second and evaluates the mesh's PrometheusRule; the steps compare what it and the
  proxies' access logs say with what the load generator sent and got back. The alerts' `for:`
  windows and ranges come from the PrometheusRule; the thresholds (5% errors, p99 1 s) are the
  seed's promise. The @slow scenario induces the errors on either side of 5% (`--slow`).

  Background:
    Given the mesh is running
    And Prometheus scrapes every proxy

  Scenario: Request counts agree exactly with what the load generator saw, and clean traffic raises no alert
    When 400 requests are sent through the ingress to /api/v1/airtable/bases at 40 per second as tenant observer on the enterprise tier
    Then Prometheus counts exactly the requests the generator got answers to, by response code, at the ingress gateway and at api-gateway
    And no alert fired during the load, which outlasted every alert's for window

  Scenario: The alerts page at the seed's thresholds
    Then the mesh's alerts fire above these thresholds:
      | alert                   | threshold |
      | PyAirtableHighErrorRate | 0.05      |
      | PyAirtableHighLatency   | 1000      |

  # About a minute: the error rate must fill the alert's window on either side of 5%.
  @slow
  Scenario: The error-rate alert stays quiet at 3% errors, fires at 8%, and resolves when the errors stop
    Given no alert is firing
    When 40 requests per second go through the ingress to /api/v1/airtable/bases for 90 s in the background
    And every airtable-gateway replica answers 503 to 3% of requests
    Then PyAirtableHighErrorRate does not fire for airtable-gateway within its range and for window plus the evaluation lag
    When every airtable-gateway replica answers 503 to 8% of requests
    Then PyAirtableHighErrorRate fires for airtable-gateway within its range and for window plus the evaluation lag
    When every airtable-gateway replica answers normally again
    Then PyAirtableHighErrorRate resolves for airtable-gateway within its window plus the evaluation lag

  Scenario: Every proxy on a request's path logs it with the tenant, the route and the request id
    When tenant auditor sends a request through the ingress to /api/v1/airtable/bases
    Then every proxy on its path logs it with tenant auditor, a route and its request id
