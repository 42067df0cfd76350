Feature: Retries
  A failed request is attempted exactly as often as its route declares: its retries plus the
  first attempt, and only for the failures its retryOn names. The replicas' own count of the
  requests they received is the ground truth.

  Background:
    Given the mesh is running

  @serial
  Scenario: A request to a failing airtable-gateway is attempted its declared retries plus once
    Given the route to airtable-gateway declares 3 retries on gateway-error,connect-failure,refused-stream with 10s per try
    And every airtable-gateway replica answers every request with status 503
    And the requests airtable-gateway receives are counted from now
    When workflow-engine-0 calls airtable-gateway at /bases
    Then the response status is 503
    And the airtable-gateway replicas received exactly the attempts its route allows for a 503

  @serial
  Scenario: A failure its route does not retry on is attempted once
    Given the route to llm-orchestrator declares 2 retries on connect-failure,refused-stream
    And every llm-orchestrator replica answers every request with status 503
    And the requests llm-orchestrator receives are counted from now
    When api-gateway-0 calls llm-orchestrator at /complete
    Then the response status is 503
    And the llm-orchestrator replicas received exactly the attempts its route allows for a 503

  @serial
  Scenario: The edge retries a failing api-gateway its declared retries plus once
    Given the ingress route default declares 3 retries on gateway-error,connect-failure,refused-stream with 10s per try
    And every api-gateway replica answers every request with status 503
    And the requests api-gateway receives are counted from now
    When the client calls /health through the ingress
    Then the response status is 503
    And the api-gateway replicas received exactly the attempts the ingress route default allows for a 503
