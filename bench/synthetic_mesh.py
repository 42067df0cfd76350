#!/usr/bin/env python3
"""Writes a synthetic mesh: N services x R replicas in namespace `synth`, unmodified images (run
as stand-ins), a chain of calls each service allows from the one before it, STRICT mTLS, a
DestinationRule with a pool and outlier detection per service, and a gateway route to the
first. With --sidecars, each service also gets a Sidecar whose egress hosts are the next service
of the chain only (Istio's advice for large meshes: each proxy then carries one service's
clusters and routes, not every service's); --registry-only also sets their
outboundTrafficPolicy to REGISTRY_ONLY (with Istio's default ALLOW_ANY each proxy keeps a
passthrough route per other service, to one PassthroughCluster).
Usage: synthetic_mesh.py SERVICES REPLICAS OUT_DIR [--sidecars [--registry-only]]"""
import os
import sys


def main():
    flags = sys.argv[4:]
    if len(sys.argv) < 4 or flags not in ([], ["--sidecars"], ["--sidecars", "--registry-only"]):
        sys.exit(__doc__)
    n, r, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    sidecars = "--sidecars" in flags
    policy = "  outboundTrafficPolicy: {mode: REGISTRY_ONLY}\n" if "--registry-only" in flags else ""
    if not (1 <= n <= 250 and 1 <= r <= 250):
        sys.exit("SERVICES and REPLICAS must be 1-250")
    os.makedirs(out, exist_ok=True)
    docs = [
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: synth, labels: {istio-injection: enabled}}\n",
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: default, namespace: synth}\nspec: {mtls: {mode: STRICT}}\n",
        "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: edge, namespace: synth}\nspec:\n  selector: {istio: ingressgateway}\n  servers: [{port: {number: 80, name: http, protocol: HTTP}, hosts: [synth.example.com]}]\n",
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: edge, namespace: synth}\nspec:\n  hosts: [synth.example.com]\n  gateways: [edge]\n  http: [{route: [{destination: {host: svc-0}}]}]\n",
    ]
    for i in range(n):
        name = f"svc-{i}"
        caller = "istio-system/sa/istio-ingressgateway-service-account" if i == 0 else f"synth/sa/svc-{i - 1}"
        docs.append(f"apiVersion: v1\nkind: ServiceAccount\nmetadata: {{name: {name}, namespace: synth}}\n")
        docs.append(
            f"apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: synth}}\nspec:\n"
            f"  selector: {{app: {name}}}\n  ports: [{{name: http, port: 8080}}]\n"
        )
        docs.append(
            f"apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: {name}, namespace: synth}}\nspec:\n"
            f"  replicas: {r}\n  selector: {{matchLabels: {{app: {name}}}}}\n  template:\n"
            f"    metadata: {{labels: {{app: {name}, version: v1}}}}\n"
            f"    spec:\n      serviceAccountName: {name}\n"
            f"      containers: [{{name: app, image: example/app:1.0, ports: [{{containerPort: 8080}}]}}]\n"
        )
        docs.append(
            f"apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: {name}, namespace: synth}}\nspec:\n"
            f"  selector: {{matchLabels: {{app: {name}}}}}\n"
            f"  rules: [{{from: [{{source: {{principals: [cluster.local/ns/{caller}]}}}}]}}]\n"
        )
        docs.append(
            f"apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: {name}, namespace: synth}}\nspec:\n"
            f"  host: {name}\n  trafficPolicy:\n    connectionPool: {{tcp: {{maxConnections: 50}}, http: {{http1MaxPendingRequests: 50}}}}\n"
            f"    outlierDetection: {{consecutiveGatewayErrors: 3, interval: 30s, baseEjectionTime: 30s, maxEjectionPercent: 50}}\n"
        )
        if sidecars:
            egress = f"./svc-{i + 1}.synth.svc.cluster.local" if i + 1 < n else "~/*"
            docs.append(
                f"apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {{name: {name}, namespace: synth}}\nspec:\n"
                f"  workloadSelector: {{labels: {{app: {name}}}}}\n  egress: [{{hosts: ['{egress}']}}]\n{policy}"
            )
    with open(os.path.join(out, "mesh.yaml"), "w") as f:
        f.write("---\n".join(docs))


if __name__ == "__main__":
    main()
