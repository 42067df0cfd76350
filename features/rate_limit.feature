Feature: Per-tenant rate limits by tier
  The tenant-rate-limit EnvoyFilter gives each tenant its own token bucket at the ingress, sized
  by the tier in its verified JWT: free 100, pro 1000, enterprise 10000 requests per minute.
  A bucket refills once a minute, so a run that straddles a refill may let a tenant through up
  to twice its limit; the steps allow exactly that and no more.

  Background:
    Given the mesh is running

  Scenario: A free-tier tenant is limited at 100 requests per minute
    Given tenant acme on the free tier
    When tenant acme sends requests to /api/v1/airtable/bases through the ingress until it is limited, at most twice its limit of 100
    Then tenant acme got at least 100 requests through before it was limited
    And tenant acme was refused with 429 "local_rate_limited" and the x-local-rate-limit header

  Scenario: One free tenant's exhaustion does not limit another free tenant
    Given tenant acme on the free tier
    And tenant globex on the free tier
    When tenant acme sends requests to /api/v1/airtable/bases through the ingress until it is limited, at most twice its limit of 100
    And tenant globex sends 20 requests to /api/v1/airtable/bases through the ingress
    Then tenant acme was refused with 429 "local_rate_limited" and the x-local-rate-limit header
    And all of tenant globex's requests succeed

  Scenario: A pro-tier tenant gets its higher limit of 1000 requests per minute
    Given tenant initech on the pro tier
    When tenant initech sends requests to /api/v1/airtable/bases through the ingress until it is limited, at most twice its limit of 1000
    Then tenant initech got at least 1000 requests through before it was limited
    And tenant initech was refused with 429 "local_rate_limited" and the x-ratelimit-limit header

  Scenario: A tenant cannot raise its tier or borrow another tenant's bucket with headers
    Given tenant mallory on the free tier
    When tenant mallory sends requests to /api/v1/airtable/bases through the ingress with header x-tenant-tier: enterprise until it is limited, at most twice its limit of 100
    Then tenant mallory got at least 100 requests through before it was limited
    And tenant mallory was refused with 429 "local_rate_limited" and the x-local-rate-limit header
