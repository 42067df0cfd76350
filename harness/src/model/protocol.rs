//! A Service port's protocol, selected the way Istio selects it.

/// A port's protocol as Istio selects it: `appProtocol`, else the port name's prefix
/// (`grpc-catalog`, `tcp-redis`), else detected from the traffic (HTTP here: what the harness
/// sends is HTTP).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Http,
    /// HTTP/2 to the application (http2, h2c).
    Http2,
    Grpc,
    /// Opaque bytes (tcp, tls, https passthrough, mongo, mysql, redis).
    Tcp,
    /// Unnamed: Istio sniffs it; the embedded mesh serves it as HTTP.
    Detected,
}

impl Protocol {
    /// None for UDP and SCTP, which Istio does not proxy.
    pub fn select(name: Option<&str>, app_protocol: Option<&str>) -> Option<Protocol> {
        let of = |p: &str| match p.to_ascii_lowercase().as_str() {
            "http" | "grpc-web" | "kubernetes.io/ws" | "kubernetes.io/wss" => Some(Protocol::Http),
            "http2" | "kubernetes.io/h2c" => Some(Protocol::Http2),
            "grpc" => Some(Protocol::Grpc),
            "tcp" | "tls" | "https" | "mongo" | "mysql" | "redis" => Some(Protocol::Tcp),
            _ => None,
        };
        if let Some(p) = app_protocol.and_then(of) {
            return Some(p);
        }
        let name = name.unwrap_or_default();
        let prefix = match name.to_ascii_lowercase() {
            n if n.starts_with("grpc-web") => "grpc-web".to_string(),
            n => n.split('-').next().unwrap_or_default().to_string(),
        };
        Some(of(&prefix).unwrap_or(Protocol::Detected))
    }

    pub fn is_http(self) -> bool {
        self != Protocol::Tcp
    }

    /// Does the sidecar speak HTTP/2 to the application (and to the peer sidecar)?
    pub fn h2(self) -> bool {
        matches!(self, Protocol::Http2 | Protocol::Grpc)
    }
}
