Feature: Circuit breakers
  Every DestinationRule carries the seed's connection pool (50 connections, 50 pending requests,
  5 requests per connection) and outlier detection (3 consecutive gateway errors eject a replica
  for 30 s, checked every 30 s; at most 50% of a service's replicas at once). Each is checked at
  its declared value, on both sides of it, in the caller's own Envoy. Callers are pinned to one
  pod so the proxy checked is the one that made the decisions.

  Background:
    Given the mesh is running

  Scenario: Every service's DestinationRule declares the seed's circuit breakers
    Then the DestinationRules declare these traffic policies:
      | service          | load balancer | max connections | pending requests | HTTP/2 requests | requests per connection | max retries | connect timeout | gateway errors | interval | base ejection | max ejection |
      | api-gateway      | ROUND_ROBIN   | 50              | 50               | 100             | 5                       | 3           | 30s             | 3              | 30s      | 30s           | 50%          |
      | auth-service     | ROUND_ROBIN   | 50              | 50               | 100             | 5                       | 3           | 30s             | 3              | 30s      | 30s           | 50%          |
      | airtable-gateway | ROUND_ROBIN   | 50              | 50               | 100             | 5                       | 3           | 30s             | 3              | 30s      | 30s           | 50%          |
      | llm-orchestrator | LEAST_REQUEST | 50              | 50               | 100             | 5                       | 3           | 30s             | 3              | 30s      | 30s           | 50%          |
      | file-processor   | ROUND_ROBIN   | 50              | 50               | 100             | 5                       | 3           | 30s             | 3              | 30s      | 30s           | 50%          |
      | workflow-engine  | ROUND_ROBIN   | 50              | 50               | 100             | 5                       | 3           | 30s             | 3              | 30s      | 30s           | 50%          |

  @serial
  Scenario: The connection pool takes exactly its declared connections and pending requests, and sheds the next
    Given auth-service's DestinationRule allows 50 connections and 50 pending requests
    And every auth-service replica holds every request until released
    When api-gateway-1 fills auth-service's connection pool one request at a time
    Then exactly auth-service's declared connections are active on api-gateway-1 and its declared pending requests wait
    And one more request from api-gateway-1 to auth-service is shed with 503 and x-envoy-overloaded
    And once auth-service is released every held request is answered 200

  @serial
  Scenario: A connection carries at most its declared number of requests
    Given file-processor's DestinationRule allows 5 requests per connection
    When workflow-engine-0 sends file-processor ten connections' worth of requests at /health, one after another
    Then Envoy on workflow-engine-0 closed a connection to file-processor after every declared number of requests

  @serial
  Scenario: A replica is ejected at exactly its declared number of consecutive gateway errors
    Given airtable-gateway's DestinationRule ejects a replica after 3 consecutive gateway errors
    And airtable-gateway-0 answers every request with status 503
    When api-gateway-0 sends requests to airtable-gateway until airtable-gateway-0 has failed one time fewer than the ejection threshold
    Then Envoy on api-gateway-0 has not ejected airtable-gateway-0 from airtable-gateway
    When api-gateway-0 sends requests to airtable-gateway until airtable-gateway-0 has failed as often as the ejection threshold
    Then Envoy on api-gateway-0 has ejected airtable-gateway-0 from airtable-gateway
    And the next 10 requests from api-gateway-0 to airtable-gateway at /bases are answered by replicas other than airtable-gateway-0

  @serial
  Scenario: With every replica failing, no more replicas are ejected than the declared percentage allows
    Given airtable-gateway's DestinationRule ejects a replica after 3 consecutive gateway errors, at most 50% of them at once
    And every airtable-gateway replica answers every request with status 503
    When llm-orchestrator-0 sends requests to airtable-gateway until every replica has failed as often as the ejection threshold
    Then Envoy on llm-orchestrator-0 has ejected as many airtable-gateway replicas as its declared maximum ejection percentage allows, no more
    And every response is 503

  @serial @slow
  Scenario: An ejected replica returns after the declared base ejection time
    Given airtable-gateway's DestinationRule ejects a replica for 30s, checked every 30s
    And airtable-gateway-1 answers every request with status 503
    When api-gateway-1 sends requests to airtable-gateway until airtable-gateway-1 has failed as often as the ejection threshold
    Then Envoy on api-gateway-1 has ejected airtable-gateway-1 from airtable-gateway
    When airtable-gateway-1 answers normally again
    Then airtable-gateway-1 returns to api-gateway-1's pool no sooner than the base ejection time and no later than one interval after it
