//! What meshtest translates for the embedded mesh, and what it refuses: the README's coverage
//! table is this list (a test keeps the two equal), so the table cannot drift from the code.

/// (resource, translated, refused with file:line or not yet translated).
pub const COVERAGE: &[(&str, &str, &str)] = &[
    (
        "Deployment, StatefulSet, DaemonSet",
        "replicas (a DaemonSet: 1), selector, pod labels, serviceAccountName (`default` when unset), container ports; `meshtest agent` containers run as declared, any other image runs as a stand-in agent on each pod port",
        "pods without a sidecar (`sidecar.istio.io/inject: \"false\"`, `istio-injection: disabled`), `traffic.sidecar.istio.io/*`, `proxy.istio.io/config`",
    ),
    (
        "Service",
        "ports (name, number, targetPort by number or container port name), selector, several Services selecting the same pods; protocol from appProtocol or the name's prefix as Istio selects it: http (and unnamed), http2 and grpc (h2 between sidecars, h2c to the app), tcp/tls/https/mongo/mysql/redis (tcp_proxy, network RBAC, an outbound listener per TCP service port)",
        "`networking.istio.io/exportTo`; UDP and SCTP ports",
    ),
    (
        "PeerAuthentication",
        "mtls.mode (STRICT, PERMISSIVE, DISABLE, UNSET), portLevelMtls, selector, root-namespace scope",
        "-",
    ),
    (
        "AuthorizationPolicy",
        "ALLOW, DENY and AUDIT (Envoy's LOG action: marks, never enforces); from.source principals, namespaces, serviceAccounts, ipBlocks, remoteIpBlocks, requestPrincipals (and their not-forms); to.operation ports, paths, methods, hosts (and not-forms); `when` on request.headers[], source.ip, remote.ip, source.namespace, source.principal, source.serviceAccount, request.auth.principal/audiences/presenter/claims[], destination.ip, destination.port, connection.sni; `istio.io/dry-run` (shadow rules); on TCP ports Istio's reading (ALLOW rules needing HTTP dropped, DENY rules without their HTTP conditions)",
        "CUSTOM (ext_authz providers are not translated), targetRef(s), other `when` keys",
    ),
    (
        "RequestAuthentication",
        "jwtRules issuer, jwksUri (fetched as istiod does), audiences, outputClaimToHeaders, forwardOriginalToken, fromHeaders",
        "-",
    ),
    (
        "VirtualService",
        "hosts, gateways, http match (uri exact/prefix/regex, headers, method, authority, queryParams, ignoreUriCase, port), route weights and subsets, timeout, retries, fault delay/abort, rewrite (uri, authority, uriRegexRewrite), redirect, headers (request/response set, add, remove), corsPolicy, mirror + mirrorPercentage",
        "tcp/tls routes, match sourceLabels/withoutHeaders/gateways, per-destination headers, mirrors (list), delegate",
    ),
    (
        "DestinationRule",
        "subsets (labels, trafficPolicy), trafficPolicy tls.mode (ISTIO_MUTUAL, DISABLE), loadBalancer.simple (ROUND_ROBIN, LEAST_REQUEST, LEAST_CONN, RANDOM) and consistentHash (httpHeaderName, httpCookie, useSourceIp, httpQueryParameterName; ring hash or maglev), connectionPool (tcp, http), outlierDetection",
        "tls modes SIMPLE and MUTUAL, portLevelSettings, localityLbSetting",
    ),
    (
        "Gateway (networking.istio.io)",
        "selector (one ingress gateway: `istio: ingressgateway` or Helm's `istio: ingress`), servers HTTP and HTTPS (credentialName)",
        "Gateways selecting different workloads",
    ),
    (
        "Gateway, HTTPRoute, GRPCRoute (gateway.networking.k8s.io)",
        "class `istio` listeners HTTP/HTTPS; HTTPRoute parentRefs (Gateway, Service), hostnames, matches (path Exact/PathPrefix/RegularExpression, headers, method) in the Gateway API's precedence, backendRefs with weights, timeouts.request; GRPCRoute (method matches on /SERVICE/METHOD, headers); other classes noted and ignored",
        "TCPRoute, TLSRoute, route filters, queryParams, listeners TCP/TLS",
    ),
    (
        "EnvoyFilter",
        "HTTP_FILTER patches (local rate limit) by context and workloadSelector",
        "other applyTo kinds",
    ),
    (
        "Telemetry, IstioOperator meshConfig",
        "accessLogging providers, tracing providers + randomSamplingPercentage, extensionProviders envoyFileAccessLog (JSON format) and zipkin, outboundTrafficPolicy.mode",
        "metrics overrides, tracing customTags/match/disableSpanReporting, other tracing providers",
    ),
    (
        "PrometheusRule",
        "groups of recording rules and alerts (loaded into the embedded Prometheus)",
        "-",
    ),
    (
        "Sidecar",
        "workloadSelector (else the namespace's, else the root namespace's default), egress hosts (`namespace/dnsName` with `*`, `.`, `~`, wildcards) and port: a proxy gets clusters and routes for those services only; outboundTrafficPolicy (and meshConfig's): ALLOW_ANY sends other calls out in plaintext (Istio's ORIGINAL_DST PassthroughCluster, to the service's first pod; a plaintext cluster per TCP port), REGISTRY_ONLY answers them 502",
        "ingress listeners, inboundConnectionPool, egress bind and captureMode, outboundTrafficPolicy.egressProxy",
    ),
    (
        "ServiceEntry",
        "MESH_EXTERNAL: noted (calls to it leave the mesh)",
        "MESH_INTERNAL",
    ),
    (
        "List; ConfigMap, Secret, HPA, PDB, RBAC, CRDs, ServiceMonitor, ...",
        "List items unpacked; the others noted and ignored (they do not change a request's path)",
        "NetworkPolicy, Ingress, WorkloadEntry and any other kind",
    ),
];

/// The table as Markdown, as the README carries it.
pub fn markdown() -> String {
    let mut out =
        String::from("| Resource | Translated | Refused or not yet translated |\n|---|---|---|\n");
    for (resource, yes, no) in COVERAGE {
        out.push_str(&format!("| {resource} | {yes} | {no} |\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_readme_carries_the_coverage_table() {
        let readme = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md"),
        )
        .unwrap();
        let table = super::markdown();
        let start = "<!-- coverage:start -->\n";
        let end = "<!-- coverage:end -->";
        let got = readme
            .split_once(start)
            .and_then(|(_, rest)| rest.split_once(end))
            .map(|(t, _)| t);
        assert_eq!(
            got,
            Some(table.as_str()),
            "README.md's coverage table differs from manifest::coverage; put this between the markers:\n{table}"
        );
    }
}
