Feature: Circuit breakers
  Every DestinationRule carries the seed's connection pool (50 connections, 50 pending requests)
  and outlier detection (3 consecutive gateway errors eject a replica for 30 s). Callers are
  pinned to one pod so the Envoy stats checked are the ones that made the decisions.

  Background:
    Given the mesh is running

  @serial
  Scenario: Connection-pool overflow is shed with 503 and x-envoy-overloaded
    Given every auth-service replica takes 3000 ms to answer
    When api-gateway-1 sends 160 concurrent requests to auth-service at /health
    Then some responses are 503 with header x-envoy-overloaded
    And Envoy on api-gateway-1 counts pending-request overflows to auth-service

  @serial
  Scenario: A replica that keeps failing is ejected and traffic moves to the healthy ones
    Given airtable-gateway-0 answers every request with status 503
    When api-gateway-0 sends 12 requests to airtable-gateway at /bases
    Then Envoy on api-gateway-0 has ejected airtable-gateway-0 from airtable-gateway
    And the next 10 requests from api-gateway-0 to airtable-gateway at /bases are answered by replicas other than airtable-gateway-0

  @serial
  Scenario: With every replica failing, clients get 503
    Given every file-processor replica answers every request with status 503
    When workflow-engine-0 sends 5 requests to file-processor at /upload
    Then every response is 503
