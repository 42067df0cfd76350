Feature: Latency within the SLO
  The seed alerts when p99 latency passes 1 s. Under steady open-loop load (latency measured
  from each request's intended send time, so a stalled mesh cannot hide), the edge and the
  two-hop API path stay below it. Each scenario's HDR histograms land in the run's report,
  under load/.

  Background:
    Given the mesh is running

  Scenario: The edge answers within the SLO
    When 200 requests are sent through the ingress to /health at 50 per second
    Then p99 is below 1000 ms
    And no request failed

  Scenario: The API answers within the SLO across two mTLS hops
    When 200 requests are sent through the ingress to /api/v1/airtable/bases at 50 per second as tenant latency on the enterprise tier
    Then p99 is below 1000 ms
    And no request failed

  Scenario: The canary answers within the SLO
    When 150 requests are sent through the ingress to /api/v1/files/list at 50 per second as tenant canary-user on the enterprise tier with header x-pyairtable-canary: true
    Then p99 is below 1000 ms
    And no request failed
