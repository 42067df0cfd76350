@serial @chaos
Feature: Resilience under chaos
  The seed's resilience promises, proven with faults injected while load runs: each fault goes
  through the chaos machinery (a lease the mesh keeps, reverted after the scenario), must meet
  the traffic (else the scenario is UNCHECKED: "fault not effective"), and is judged with the
  same code as `meshtest chaos` profiles.

  Background:
    Given the mesh is running

  # Through the canary only (its opt-in header), so the ejection this causes, which lasts the
  # declared 30 s, touches no proxy that other features watch.
  Scenario: Retries hide a replica that fails every request, and outlier detection ejects it
    Given Envoy on api-gateway-canary-0 ejects no airtable-gateway replica
    And airtable-gateway-2 fails every request
    When 50 requests per second go through the ingress to /api/v1/airtable/bases with header x-pyairtable-canary: true
    Then Envoy on api-gateway-canary-0 ejects airtable-gateway-2 within 5 s
    And no client request fails

  Scenario: A failing canary costs at most its declared weight, and stable traffic nothing
    Given every v2 pod of api-gateway answers 500 to every request
    When 60 requests per second go through the ingress to /api/v1/airtable/bases
    Then the error rate stays within the canary subset's weight
    And the stable subset of api-gateway serves no 5xx

  Scenario: Latency between api-gateway and llm-orchestrator stays within the LLM route
    Given 200 ms of latency between api-gateway and llm-orchestrator
    When 20 requests per second go through the ingress to /api/v1/llm/chat
    Then no client request fails
    And every request ends within the route's timeout

  Scenario: The auth API fails fast while auth-service is down
    Given auth-service is down
    When 20 requests per second go through the ingress to /api/v1/auth/session
    Then every request fails within 1000 ms
