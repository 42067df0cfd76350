Feature: STRICT mTLS
  PeerAuthentication default-strict-mtls puts the pyairtable namespace in STRICT mode: a sidecar
  accepts only mutual TLS from mesh identities, and every meshed call carries the caller's
  SPIFFE identity to the callee.

  Background:
    Given the mesh is running

  Scenario: Plaintext from outside the mesh gets no HTTP response from any pod
    Then every pod refuses plaintext from outside the mesh

  Scenario: Plaintext to auth-service is refused
    When a client outside the mesh calls auth-service at /health over plaintext
    Then the connection is refused without an HTTP response

  Scenario: A TLS client without a certificate is rejected
    When a client outside the mesh calls auth-service at /health over TLS without a client certificate
    Then the TLS handshake fails

  Scenario: A client presenting a certificate from another CA is rejected
    When a client outside the mesh calls airtable-gateway at /health over TLS with a certificate from another CA
    Then the TLS handshake fails

  Scenario Outline: Meshed calls carry the caller's SPIFFE identity
    When <caller> calls <callee> at /health
    Then the call is allowed
    And the upstream sees the caller identity spiffe://cluster.local/ns/pyairtable/sa/<caller>-sa

    Examples:
      | caller           | callee           |
      | api-gateway      | auth-service     |
      | llm-orchestrator | airtable-gateway |
      | workflow-engine  | llm-orchestrator |
