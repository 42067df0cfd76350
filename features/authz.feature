Feature: Least-privilege authorization
  Every service accepts calls only from the workloads on its real call paths; everything else
  is denied by RBAC with 403 "RBAC: access denied" (AuthorizationPolicies in security.yaml).
  api-gateway is reached only through the ingress gateway, so no workload may call it.
  auth-service's key-set port serves its key set to anyone (istiod fetches it), and nothing else.

  Background:
    Given the mesh is running

  Scenario Outline: <caller> calling <callee> is <verdict>
    When <caller> calls <callee> at /health
    Then the call is <verdict>

    Examples:
      | caller           | callee           | verdict        |
      | api-gateway      | api-gateway      | denied by RBAC |
      | api-gateway      | auth-service     | allowed        |
      | api-gateway      | airtable-gateway | allowed        |
      | api-gateway      | llm-orchestrator | allowed        |
      | api-gateway      | file-processor   | allowed        |
      | api-gateway      | workflow-engine  | allowed        |
      | auth-service     | api-gateway      | denied by RBAC |
      | auth-service     | auth-service     | denied by RBAC |
      | auth-service     | airtable-gateway | denied by RBAC |
      | auth-service     | llm-orchestrator | denied by RBAC |
      | auth-service     | file-processor   | denied by RBAC |
      | auth-service     | workflow-engine  | denied by RBAC |
      | airtable-gateway | api-gateway      | denied by RBAC |
      | airtable-gateway | auth-service     | denied by RBAC |
      | airtable-gateway | airtable-gateway | denied by RBAC |
      | airtable-gateway | llm-orchestrator | denied by RBAC |
      | airtable-gateway | file-processor   | denied by RBAC |
      | airtable-gateway | workflow-engine  | denied by RBAC |
      | llm-orchestrator | api-gateway      | denied by RBAC |
      | llm-orchestrator | auth-service     | denied by RBAC |
      | llm-orchestrator | airtable-gateway | allowed        |
      | llm-orchestrator | llm-orchestrator | denied by RBAC |
      | llm-orchestrator | file-processor   | denied by RBAC |
      | llm-orchestrator | workflow-engine  | denied by RBAC |
      | file-processor   | api-gateway      | denied by RBAC |
      | file-processor   | auth-service     | denied by RBAC |
      | file-processor   | airtable-gateway | allowed        |
      | file-processor   | llm-orchestrator | denied by RBAC |
      | file-processor   | file-processor   | denied by RBAC |
      | file-processor   | workflow-engine  | denied by RBAC |
      | workflow-engine  | api-gateway      | denied by RBAC |
      | workflow-engine  | auth-service     | denied by RBAC |
      | workflow-engine  | airtable-gateway | allowed        |
      | workflow-engine  | llm-orchestrator | allowed        |
      | workflow-engine  | file-processor   | allowed        |
      | workflow-engine  | workflow-engine  | denied by RBAC |

  Scenario: auth-service's key-set port serves the key set to anyone, and nothing else
    When a client outside the mesh calls auth-service:8081 at /.well-known/jwks.json over plaintext
    Then the response status is 200
    When a client outside the mesh calls auth-service:8081 at /health over plaintext
    Then the call is denied by RBAC
    When llm-orchestrator calls auth-service:8081 at /health
    Then the call is denied by RBAC
