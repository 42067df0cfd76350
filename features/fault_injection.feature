Feature: Fault injection only on request
  The seed's chaos testing injects a 2 s delay into 1% and a 503 abort into 0.5% of the edge's
  requests, and only into requests that ask for it with x-chaos-test: enabled. The rates are
  judged with an exact binomial test at a false-alarm rate of 0.001 each, on a sample sized for
  power 0.99 against a rate three times too high and against no fault at all (the power against
  a rate three times too low is reported too); the counts are the ingress proxy's own,
  cross-checked against what clients saw.

  Background:
    Given the mesh is running

  @serial
  Scenario: With the opt-in header, the declared delay and abort rates hold
    Given the ingress route chaos-testing declares a 2s delay for 1.0% and a 503 abort for 0.5% of requests
    When enough requests are sent through the ingress to /health with header x-chaos-test: enabled to judge the declared fault rates
    Then the delayed and aborted shares are consistent with the declared rates

  @serial
  Scenario: Without the header, no request is delayed or aborted
    When enough requests are sent through the ingress to /health without the header to see a fault that applied to them
    Then no request was delayed or aborted by the fault filter
