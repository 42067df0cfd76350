Feature: Canary routing at the edge
  pyairtable-external-routes splits api-gateway traffic 90/10 between the stable (v1) and canary
  (v2) subsets, and sends requests with x-pyairtable-canary: true to the canary. The split is
  judged with an exact binomial test at a false-alarm rate of 0.001, on a sample sized for power
  0.99 against a split 5 points off (85/15 or 95/5).

  Background:
    Given the mesh is running

  Scenario: Every edge route sends the declared share to the canary
    Then the ingress routes send these shares to version v2:
      | route         | share |
      | chaos-testing | 10%   |
      | canary-opt-in | 100%  |
      | llm           | 10%   |
      | default       | 10%   |

  Scenario: The 90/10 split holds
    Given the ingress route default sends 10% of requests to version v2
    When enough requests are sent through the ingress to /health to judge its split at a false-alarm rate of 0.001 with power 0.99 against a 5-point shift
    Then the share of version v2 is consistent with the declared weight

  Scenario: Opting in by header always reaches the canary
    Given the ingress route canary-opt-in sends 100% of requests to version v2
    When 30 requests are sent through the ingress to /health with header x-pyairtable-canary: true
    Then every response comes from version v2

  Scenario: Any other value of the header follows the split
    Given the ingress route default sends 10% of requests to version v2
    When enough requests are sent through the ingress to /health with header x-pyairtable-canary: false to judge its split at a false-alarm rate of 0.001 with power 0.99 against a 5-point shift
    Then the share of version v2 is consistent with the declared weight
