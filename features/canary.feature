Feature: Canary routing at the edge
  pyairtable-external-routes splits api-gateway traffic 90/10 between the stable (v1) and canary
  (v2) subsets, and sends requests with x-pyairtable-canary: true to the canary. The split is
  judged with an exact binomial interval at a false-alarm rate of 0.001: with 400 requests an
  intact 90/10 mesh fails this scenario once in a thousand runs, and a 50/50 split never passes.

  Background:
    Given the mesh is running

  Scenario: The 90/10 split holds
    When 400 requests are sent through the ingress to /health
    Then the share of version v2 is consistent with 10% at a false-alarm rate of 0.001

  Scenario: Opting in by header always reaches the canary
    When 30 requests are sent through the ingress to /health with header x-pyairtable-canary: true
    Then every response comes from version v2

  Scenario: Any other value of the header follows the split
    When 400 requests are sent through the ingress to /health with header x-pyairtable-canary: false
    Then the share of version v2 is consistent with 10% at a false-alarm rate of 0.001
