Feature: JWT enforcement at the edge
  RequestAuthentication pyairtable-jwt-auth verifies tokens at the ingress gateway with the key
  set istiod fetched from auth-service (jwksUri), and the require-jwt-at-edge policy demands a
  valid token on /api/* while /health stays open. Every route the gateway serves under /api/
  (from its VirtualServices, and every path its policies name) refuses a request without one;
  each way a token can be wrong gets the status Istio gives it.

  Background:
    Given the mesh is running
    And the gateway trusts tokens from issuer pyairtable-auth

  Scenario: /health needs no token
    Given no token
    When the client calls /health through the ingress
    Then the response status is 200

  Scenario: Every API route refuses a request without a token
    Then every route the gateway serves under /api/ refuses a request without a token

  Scenario: A request to the API without a token is denied by RBAC
    Given no token
    When the client calls /api/v1/airtable/bases through the ingress
    Then the response status is 403
    And the response body is "RBAC: access denied"

  Scenario: A valid token passes, through two mTLS hops
    Given a valid token for tenant acme on the pro tier
    When the client calls /api/v1/auth/verify through the ingress
    Then the response status is 200
    And the upstream sees the caller identity spiffe://cluster.local/ns/pyairtable/sa/api-gateway-sa

  Scenario: An expired token is refused
    Given an expired token for tenant acme on the pro tier
    When the client calls /api/v1/airtable/bases through the ingress
    Then the response status is 401
    And the response body is "Jwt is expired"

  Scenario: A token from another issuer is refused
    Given a wrong-issuer token for tenant acme on the pro tier
    When the client calls /api/v1/airtable/bases through the ingress
    Then the response status is 401
    And the response body is "Jwt issuer is not configured"

  Scenario: A token signed with another key is refused
    Given a badly signed token for tenant acme on the pro tier
    When the client calls /api/v1/airtable/bases through the ingress
    Then the response status is 401
    And the response body is "Jwt verification fails"

  Scenario: A token whose payload was edited after signing is refused
    Given a tampered token for tenant acme on the free tier
    When the client calls /api/v1/airtable/bases through the ingress
    Then the response status is 401
    And the response body is "Jwt verification fails"

  Scenario: A bearer value that is not a JWT is refused
    Given a token that is not a JWT
    When the client calls /api/v1/airtable/bases through the ingress
    Then the response status is 401
