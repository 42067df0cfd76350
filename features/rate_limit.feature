Feature: Per-tenant rate limits by tier
  The tenant-rate-limit EnvoyFilter gives each tenant its own token bucket at the ingress, sized
  by the tier in its verified JWT: free 100, pro 1000, enterprise 10000 requests per minute.
  Envoy refills a bucket continuously from full, so a tenant that sends as fast as it can gets
  exactly its bucket plus what refilled while it sent (computed from the declared rate and the
  time it took), and not one request more.

  Background:
    Given the mesh is running

  Scenario: Every tier's bucket is declared as the tiers promise
    Then the ingress rate limit declares these buckets:
      | tier       | requests | per |
      | free       | 100      | 60s |
      | pro        | 1000     | 60s |
      | enterprise | 10000    | 60s |

  Scenario: A free-tier tenant gets exactly its bucket before the first 429
    Given the free tier's declared bucket is 100 requests, refilled 100 per 60s
    And tenant acme on the free tier
    When tenant acme sends requests to /health through the ingress until it is limited
    Then tenant acme got exactly its tier's bucket before the first 429
    And tenant acme was refused with 429 "local_rate_limited" and the x-local-rate-limit header

  Scenario: One free tenant's exhaustion does not limit another free tenant
    Given tenant acme on the free tier
    And tenant globex on the free tier
    When tenant acme sends requests to /health through the ingress until it is limited
    And tenant globex sends 20 requests to /health through the ingress
    Then tenant acme was refused with 429 "local_rate_limited" and the x-local-rate-limit header
    And all of tenant globex's requests succeed

  Scenario: A pro-tier tenant gets exactly its higher bucket
    Given the pro tier's declared bucket is 1000 requests, refilled 1000 per 60s
    And tenant initech on the pro tier
    When tenant initech sends requests to /health through the ingress until it is limited
    Then tenant initech got exactly its tier's bucket before the first 429
    And tenant initech was refused with 429 "local_rate_limited" and the x-ratelimit-limit header

  @slow
  Scenario: An enterprise-tier tenant gets exactly its bucket
    Given the enterprise tier's declared bucket is 10000 requests, refilled 10000 per 60s
    And tenant hooli on the enterprise tier
    When tenant hooli sends requests to /health through the ingress until it is limited
    Then tenant hooli got exactly its tier's bucket before the first 429

  Scenario: A tenant cannot raise its tier or borrow another tenant's bucket with headers
    Given the free tier's declared bucket is 100 requests, refilled 100 per 60s
    And tenant mallory on the free tier
    When tenant mallory sends requests to /health through the ingress with header x-tenant-tier: enterprise until it is limited
    Then tenant mallory got exactly its tier's bucket before the first 429
    And tenant mallory was refused with 429 "local_rate_limited" and the x-local-rate-limit header
