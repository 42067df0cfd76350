Feature: Bookstore keeps its promises with the steps meshtest ships
  A second mesh, shaped unlike PyAirtable's (namespace store, ports 80/9090/9091/7000/8080/8081,
  a gRPC port 50051 and a Redis (TCP) port 6379,
  named and renumbered target ports, Helm's `istio: ingress` gateway on shop.example.com, its
  own issuer, Sidecars narrowing two proxies' egress), whose unmodified containers run as
  stand-in agents. Run it with
  `meshtest run --mesh mesh/bookstore mesh/bookstore/features`.

  Background:
    Given the mesh is running

  Scenario: Every pod port answers plaintext only if its declared mode allows it
    Given the PeerAuthentications declare STRICT mTLS for every pod port of namespace store except accounts:8081
    And the PeerAuthentications declare PERMISSIVE mTLS for accounts:8081
    Then every pod port answers plaintext from outside the mesh as its declared mTLS mode says

  Scenario: Plaintext to the storefront is refused by its live proxy
    Given the PeerAuthentications declare STRICT mTLS for storefront:80
    When a client outside the mesh calls storefront at /health over plaintext
    Then the connection is refused without an HTTP response by a live proxy

  Scenario: A client presenting a certificate from another CA is rejected
    When a client outside the mesh calls payments:7000 at /health over TLS with a certificate from another CA
    Then the proxy ends the TLS handshake with an alert

  Scenario Outline: <caller> calling <callee> at <path> is <verdict>
    When <caller> calls <callee> at <path>
    Then the call is <verdict>

    Examples:
      | caller     | callee          | path               | verdict        |
      | storefront | catalog:9090    | /books/42          | allowed        |
      | orders     | catalog:9090    | /books/42          | allowed        |
      | payments   | catalog:9090    | /books/42          | denied by RBAC |
      | storefront | catalog:9090    | /admin/reindex     | denied by RBAC |
      | storefront | orders:9090     | /orders            | allowed        |
      | storefront | orders:9091     | /metrics           | denied by RBAC |
      | catalog    | orders:9090     | /orders            | denied by RBAC |
      | orders     | payments:7000   | /charges           | allowed        |
      | storefront | payments:7000   | /charges           | denied by RBAC |
      | payments   | accounts:8080   | /users/7           | allowed        |
      | catalog    | storefront:80   | /                  | denied by RBAC |
      | storefront | catalog:50051   | /store.Catalog/Get | allowed        |
      | payments   | catalog:50051   | /store.Catalog/Get | denied by RBAC |
      | orders     | cache:6379      | /                  | allowed        |
      | storefront | cache:6379      | /                  | closed by RBAC |

  # egress.yaml: accounts' and the cache's Sidecars program their proxies for orders only.
  Scenario: A sidecar reaches only its Sidecar's egress hosts; REGISTRY_ONLY refuses the rest itself
    When accounts calls orders:9090 at /orders
    Then the call is denied by RBAC
    When accounts calls catalog:9090 at /books/42
    Then the caller's sidecar answers 502 itself, as REGISTRY_ONLY does for a host outside its egress

  Scenario: With ALLOW_ANY a call outside the egress hosts leaves in plaintext, and STRICT refuses it
    When cache calls orders:9090 at /orders
    Then the call is denied by RBAC
    When cache calls catalog:9090 at /books/42
    Then the call leaves the caller's sidecar in plaintext, and the callee's STRICT mTLS refuses it

  Scenario: Plaintext to the Redis port is refused by its live proxy
    Given the PeerAuthentications declare STRICT mTLS for cache:6379
    When a client outside the mesh calls cache:6379 at / over plaintext
    Then the connection is refused without an HTTP response by a live proxy

  Scenario: Calls carry the caller's identity across renumbered ports
    When orders calls payments:7000 at /charges
    Then the call is allowed
    And the upstream sees the caller identity spiffe://cluster.local/ns/store/sa/orders

  Scenario: The key set is served to anyone on its PERMISSIVE port, and nothing else is
    When a client outside the mesh calls accounts:8081 at /.well-known/jwks.json over plaintext
    Then the response status is 200
    When a client outside the mesh calls accounts:8081 at /health over plaintext
    Then the call is denied by RBAC

  Scenario: The shop answers on its own host through Helm's gateway
    Given no token
    When the client calls / through the ingress
    Then the response status is 200
    When the client calls /api/catalog/books/42 through the ingress
    Then the response status is 200

  Scenario: Orders need a token from the store's issuer
    Given the gateway trusts tokens from issuer https://accounts.store.example
    And no token
    When the client calls /api/orders/17 through the ingress
    Then the call is denied by RBAC
    Given a valid token for tenant reader-1 on the pro tier
    When the client calls /api/orders/17 through the ingress
    Then the response status is 200
    Given a wrong-issuer token for tenant reader-1 on the pro tier
    When the client calls /api/orders/17 through the ingress
    Then the response status is 401
    And the response body is "Jwt issuer is not configured"
    Given an expired token for tenant reader-1 on the pro tier
    When the client calls /api/orders/17 through the ingress
    Then the response status is 401
    And the response body is "Jwt is expired"
