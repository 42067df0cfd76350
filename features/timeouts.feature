Feature: Route timeouts
  Every route carries the timeout its VirtualService declares: the edge routes 30 s (the LLM
  area 120 s), the mesh routes to airtable-gateway 30 s and to llm-orchestrator 120 s. Each
  proxy's own route configuration is read back and compared; the mechanism is shown cutting a
  hung request off on a route whose timeout is lowered for the test; and @slow scenarios wait
  out the declared values themselves.

  Background:
    Given the mesh is running

  Scenario: Every proxy carries the timeouts its VirtualServices declare
    Then the proxies' routes have the timeouts their VirtualServices declare:
      | virtual service            | route         | timeout |
      | pyairtable-external-routes | chaos-testing | 30s     |
      | pyairtable-external-routes | canary-opt-in | 30s     |
      | pyairtable-external-routes | llm           | 120s    |
      | pyairtable-external-routes | default       | 30s     |
      | airtable-gateway           | #0            | 30s     |
      | llm-orchestrator           | #0            | 120s    |

  @serial
  Scenario: A hung upstream is cut off at the route's timeout
    Given the ingress route default times out after 500 ms for this test
    And every api-gateway replica hangs
    When the client calls /health through the ingress
    Then the response status is 504
    And the response body is "upstream request timeout"
    And the answer came at the route's deadline, within 10%

  @serial @slow
  Scenario: A hung api-gateway is cut off at the edge's declared 30 s
    Given the ingress route default declares a timeout of 30s
    And every api-gateway replica hangs
    When the client calls /health through the ingress, waiting up to 45 s
    Then the response status is 504
    And the answer came at the route's deadline, within 10%

  @serial @slow
  Scenario: A hung airtable-gateway is cut off at its declared 30 s
    Given the route to airtable-gateway declares a timeout of 30s
    And every airtable-gateway replica hangs
    When workflow-engine-0 calls airtable-gateway at /bases, waiting up to 45 s
    Then the response status is 504
    And the answer came at the route's deadline, within 10%

  @serial @slow
  Scenario: A hung llm-orchestrator is cut off at its declared 120 s
    Given the route to llm-orchestrator declares a timeout of 120s
    And every llm-orchestrator replica hangs
    When workflow-engine-0 calls llm-orchestrator at /complete, waiting up to 150 s
    Then the response status is 504
    And the answer came at the route's deadline, within 10%
