Feature: Timeouts, retries and fault injection
  The seed's routing promises: routes time out, failed attempts are retried on another replica,
  and injected faults only ever touch requests that ask for them with x-chaos-test: enabled.

  Background:
    Given the mesh is running

  @serial
  Scenario: A hung upstream is cut off at the route timeout
    Given the ingress route default times out after 500 ms for this test
    And every api-gateway replica hangs
    When the client calls /health through the ingress
    Then the response status is 504
    And the response body is "upstream request timeout"

  @serial
  Scenario: A replica answering 503 is retried on another one
    Given airtable-gateway-1 answers every request with status 503
    When workflow-engine-0 sends 12 requests to airtable-gateway at /bases
    Then every response is 200
    And Envoy on workflow-engine-0 retried requests to airtable-gateway

  @serial
  Scenario: Injected faults hit requests that carry x-chaos-test: enabled
    Given fault injection at the ingress is turned up to 100% for this test
    When 20 requests are sent through the ingress to /health with header x-chaos-test: enabled
    Then every response is 503
    And every response body is "fault filter abort"

  @serial
  Scenario: Injected faults never hit requests without the header
    Given fault injection at the ingress is turned up to 100% for this test
    When 50 requests are sent through the ingress to /health
    Then every response is 200
