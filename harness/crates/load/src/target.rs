//! The target URL and request headers, parsed and checked once.

use http::{HeaderName, HeaderValue, Uri};

use crate::error::{LoadError, Result};

/// Where requests go: parsed once, used for every connection.
#[derive(Debug, Clone)]
pub struct Target {
    pub uri: Uri,
    pub https: bool,
    pub host: String,
    pub port: u16,
    /// "host:port" as sent in Host / :authority.
    pub authority: String,
}

/// Parses "name: value" as given to -H.
pub fn parse_header(text: &str) -> Result<(HeaderName, HeaderValue)> {
    let (name, value) = text
        .split_once(':')
        .ok_or_else(|| LoadError::input(format!("-H '{text}': expected 'name: value'")))?;
    let name = HeaderName::from_bytes(name.trim().as_bytes())
        .map_err(|_| LoadError::input(format!("-H '{text}': invalid header name")))?;
    let value = HeaderValue::from_str(value.trim())
        .map_err(|_| LoadError::input(format!("-H '{text}': invalid header value")))?;
    Ok((name, value))
}

/// Parses and checks the target URL: http:// or https://, a host, and an
/// explicit port (if any) from 1 to 65535.
pub fn parse_target(url: &str) -> Result<Target> {
    let bad = |why: &str| LoadError::input(format!("URL '{url}': {why}"));
    let uri: Uri = url.parse().map_err(|e| bad(&format!("{e}")))?;
    let https = match uri.scheme_str() {
        Some("http") => false,
        Some("https") => true,
        Some(other) => return Err(bad(&format!("unsupported scheme '{other}'"))),
        None => return Err(bad("missing scheme (http:// or https://)")),
    };
    let authority = uri
        .authority()
        .map(|a| a.as_str().to_string())
        .unwrap_or_default();
    if authority.contains('@') {
        return Err(bad(
            "user info in the URL is not supported (send credentials with -H 'authorization: ...')",
        ));
    }
    let host = uri
        .host()
        .filter(|h| !h.is_empty())
        .ok_or_else(|| bad("missing host"))?;
    // `Uri::port_u16` is None for a port that is not a u16, which would
    // silently mean the default port: check the text after the host.
    let port = match authority.strip_prefix(host) {
        Some("") => {
            if https {
                443
            } else {
                80
            }
        }
        Some(p) => {
            let digits = p.strip_prefix(':').unwrap_or(p);
            digits
                .parse::<u16>()
                .ok()
                .filter(|n| *n >= 1 && digits.bytes().all(|b| b.is_ascii_digit()))
                .ok_or_else(|| bad(&format!("port '{digits}' is not a number from 1 to 65535")))?
        }
        None => return Err(bad("cannot tell the host from the port")),
    };
    // Strip IPv6 brackets for connecting; keep them in the authority.
    let bare = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    if bare.is_empty() {
        return Err(bad("missing host"));
    }
    // Always carry a path so HTTP/1 origin-form and HTTP/2 :path are valid.
    let uri = if uri.path_and_query().is_none() {
        Uri::builder()
            .scheme(uri.scheme_str().unwrap_or("http"))
            .authority(authority.as_str())
            .path_and_query("/")
            .build()
            .map_err(|e| bad(&format!("{e}")))?
    } else {
        uri
    };
    Ok(Target {
        uri,
        https,
        host: bare,
        port,
        authority,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input_err(url: &str) -> String {
        let mut a = crate::cli::LoadArgs::for_url(url);
        a.no_progress = true;
        match crate::LoadPlan::from_args(&a) {
            Err(LoadError::Input(m)) => m,
            other => panic!("expected input error, got {other:?}"),
        }
    }

    #[test]
    fn empty_brackets_are_no_host() {
        for bad in ["http://[]", "http://[]:8080/"] {
            assert!(
                matches!(parse_target(bad), Err(LoadError::Input(m)) if m.contains("missing host")),
                "{bad}"
            );
        }
    }

    #[test]
    fn explicit_ports_must_be_real_ports() {
        for bad in [
            "http://127.0.0.1:99999/",
            "http://127.0.0.1:65536/",
            "http://127.0.0.1:0/",
            "http://127.0.0.1:/",
            "http://[::1]:70000/",
            "https://h:123456789012345678901234567890/",
        ] {
            let e = match parse_target(bad) {
                Err(LoadError::Input(m)) => m,
                other => panic!("{bad}: {other:?}"),
            };
            assert!(e.starts_with(&format!("URL '{bad}': port")), "{e}");
        }
        let t = parse_target("http://127.0.0.1:65535").unwrap();
        assert_eq!((t.port, t.authority.as_str()), (65535, "127.0.0.1:65535"));
        let t = parse_target("http://127.0.0.1:00080/x").unwrap();
        assert_eq!(t.port, 80);
        let t = parse_target("https://[::1]:8443/").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("::1", 8443));
        assert_eq!(parse_target("https://[::1]/").unwrap().port, 443);
        assert_eq!(parse_target("http://example.test").unwrap().port, 80);
        assert!(input_err("http://u:p@127.0.0.1/").contains("user info"));
    }

    #[test]
    fn headers_parse() {
        let (n, v) = parse_header("Authorization:  Bearer abc ").unwrap();
        assert_eq!(n, "authorization");
        assert_eq!(v, "Bearer abc");
    }
}
