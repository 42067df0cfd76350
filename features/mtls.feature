Feature: STRICT mTLS
  PeerAuthentication default-strict-mtls puts the pyairtable namespace in STRICT mode; only
  auth-service's port 8081, where istiod fetches the JWT key set from outside the mesh, is
  PERMISSIVE (portLevelMtls). On every STRICT port a sidecar accepts only mutual TLS from mesh
  identities, and every meshed call carries the caller's SPIFFE identity. A refusal counts only
  when the refusing proxy is shown alive: the same address completes an mTLS handshake with a
  mesh identity.

  Background:
    Given the mesh is running

  Scenario: Every pod port answers plaintext only if its declared mode allows it
    Given the PeerAuthentications declare STRICT mTLS for every pod port of namespace pyairtable except auth-service:8081
    And the PeerAuthentications declare PERMISSIVE mTLS for auth-service:8081
    Then every pod port answers plaintext from outside the mesh as its declared mTLS mode says

  Scenario: Plaintext to auth-service is refused by its live proxy
    Given the PeerAuthentications declare STRICT mTLS for auth-service:8080
    When a client outside the mesh calls auth-service at /health over plaintext
    Then the connection is refused without an HTTP response by a live proxy

  Scenario: A TLS client without a certificate is rejected
    Given the PeerAuthentications declare STRICT mTLS for auth-service:8080
    When a client outside the mesh calls auth-service at /health over TLS without a client certificate
    Then the proxy ends the TLS handshake with an alert

  Scenario: A client presenting a certificate from another CA is rejected
    Given the PeerAuthentications declare STRICT mTLS for airtable-gateway:8080
    When a client outside the mesh calls airtable-gateway at /health over TLS with a certificate from another CA
    Then the proxy ends the TLS handshake with an alert

  Scenario Outline: Meshed calls carry the caller's SPIFFE identity
    When <caller> calls <callee> at /health
    Then the call is allowed
    And the upstream sees the caller identity spiffe://cluster.local/ns/pyairtable/sa/<caller>-sa

    Examples:
      | caller           | callee           |
      | api-gateway      | auth-service     |
      | llm-orchestrator | airtable-gateway |
      | workflow-engine  | llm-orchestrator |
