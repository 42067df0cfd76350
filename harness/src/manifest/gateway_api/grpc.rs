//! GRPCRoute: an HTTPRoute on gRPC's paths (`/SERVICE/METHOD`), as istiod converts it.

use serde::{Deserialize, Serialize};

use super::{
    BackendRef, HeaderMatch, HttpRouteSpec, ObjectRef, PathMatch, RouteMatch, RouteRule, http_route,
};
use crate::error::InputError;
use crate::manifest::Resource;
use crate::manifest::istio::VirtualServiceSpec;

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GrpcRouteSpec {
    #[serde(default)]
    pub parent_refs: Vec<ObjectRef>,
    #[serde(default)]
    pub hostnames: Vec<String>,
    #[serde(default)]
    pub rules: Vec<GrpcRule>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GrpcRule {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub matches: Vec<GrpcMatch>,
    #[serde(default)]
    pub backend_refs: Vec<BackendRef>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GrpcMatch {
    #[serde(default)]
    pub method: Option<GrpcMethod>,
    #[serde(default)]
    pub headers: Vec<HeaderMatch>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GrpcMethod {
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    #[serde(default)]
    pub service: Option<String>,
    #[serde(default)]
    pub method: Option<String>,
}

pub fn grpc_route(
    route: &Resource<GrpcRouteSpec>,
) -> Result<Resource<VirtualServiceSpec>, InputError> {
    let mut rules = Vec::new();
    for (i, r) in route.spec.rules.iter().enumerate() {
        let mut matches = Vec::new();
        for (j, m) in r.matches.iter().enumerate() {
            let path = match &m.method {
                None => None,
                Some(g) => Some(grpc_path(g).ok_or_else(|| {
                    route.origin.error(
                        &format!("spec.rules[{i}].matches[{j}].method"),
                        "a method match needs a service or a method, and type Exact or RegularExpression",
                    )
                })?),
            };
            matches.push(RouteMatch {
                path,
                headers: m.headers.clone(),
                method: None,
            });
        }
        rules.push(RouteRule {
            name: r.name.clone(),
            matches,
            backend_refs: r.backend_refs.clone(),
            timeouts: None,
        });
    }
    http_route(&Resource {
        metadata: route.metadata.clone(),
        spec: HttpRouteSpec {
            parent_refs: route.spec.parent_refs.clone(),
            hostnames: route.spec.hostnames.clone(),
            rules,
        },
        origin: route.origin.clone(),
    })
}

fn grpc_path(g: &GrpcMethod) -> Option<PathMatch> {
    let (service, method) = (g.service.as_deref(), g.method.as_deref());
    match g.kind.as_deref().unwrap_or("Exact") {
        "Exact" => match (service, method) {
            (Some(s), Some(m)) => Some(PathMatch {
                kind: "Exact".into(),
                value: format!("/{s}/{m}"),
            }),
            (Some(s), None) => Some(PathMatch {
                kind: "PathPrefix".into(),
                value: format!("/{s}/"),
            }),
            (None, Some(m)) => Some(PathMatch {
                kind: "RegularExpression".into(),
                value: format!("/[^/]+/{}", crate::regex_literal::escape(m)),
            }),
            (None, None) => None,
        },
        "RegularExpression" if service.is_some() || method.is_some() => Some(PathMatch {
            kind: "RegularExpression".into(),
            value: format!(
                "/{}/{}",
                service.unwrap_or("[^/]+"),
                method.unwrap_or("[^/]+")
            ),
        }),
        _ => None,
    }
}
