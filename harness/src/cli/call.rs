//! `meshtest call`: one call against the mesh `meshtest up` runs.

use std::time::Duration;

use anyhow::Result;

use crate::error::{InputError, exit};
use crate::outcome::Outcome;
use crate::target::local::LocalTarget;
use crate::target::{Call, From, Target, Transport};

#[derive(clap::Args)]
pub struct CallArgs {
    /// Call from this workload (service or pod name), through its sidecar.
    #[arg(long, conflicts_with_all = ["outside", "via_ingress"])]
    from: Option<String>,
    /// Call from outside the mesh straight to a pod (TLS without a client certificate, unless --plaintext).
    #[arg(long)]
    outside: bool,
    /// With --outside: plain HTTP.
    #[arg(long, requires = "outside")]
    plaintext: bool,
    /// With --outside: TLS presenting a certificate from a CA the mesh does not trust.
    #[arg(long, requires = "outside", conflicts_with = "plaintext")]
    foreign_cert: bool,
    /// Through the ingress gateway (which routes by its VirtualService; --to is not needed).
    #[arg(long, conflicts_with = "outside")]
    via_ingress: bool,
    /// With --via-ingress: use the HTTPS port.
    #[arg(long, requires = "via_ingress")]
    https: bool,
    /// Service (or pod) to call, optionally SERVICE:PORT.
    #[arg(long, required_unless_present = "via_ingress")]
    to: Option<String>,
    /// Request path, e.g. /health.
    path: String,
    /// Request header 'name: value' (repeatable).
    #[arg(short = 'H', long = "header")]
    headers: Vec<String>,
    /// HTTP method.
    #[arg(short = 'X', long, default_value = "GET")]
    method: String,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 10.0)]
    timeout: f64,
}

pub async fn run(a: CallArgs) -> Result<u8> {
    if !a.path.starts_with('/') {
        return Err(InputError::new("PATH", format!("`{}` must start with /", a.path)).into());
    }
    let from = match (&a.from, a.outside, a.via_ingress) {
        (Some(w), _, _) => From::Workload(w.clone()),
        (None, true, _) if a.plaintext => From::Outside(Transport::Plaintext),
        (None, true, _) if a.foreign_cert => From::Outside(Transport::TlsForeignCert),
        (None, true, _) => From::Outside(Transport::TlsNoCert),
        (None, false, true) => From::Ingress { https: a.https },
        (None, false, false) => {
            return Err(InputError::new(
                "--from",
                "say where the call starts: --from WORKLOAD, --outside, or --via-ingress",
            )
            .into());
        }
    };
    let mut headers = Vec::new();
    for h in &a.headers {
        let Some((k, v)) = h.split_once(':') else {
            return Err(InputError::new("-H", format!("`{h}` is not 'name: value'")).into());
        };
        headers.push((k.trim().to_string(), v.trim().to_string()));
    }
    if !(a.timeout > 0.0 && a.timeout <= 600.0) {
        return Err(InputError::new("--timeout", "must be between 0 and 600 seconds").into());
    }
    let state = super::mesh::read_running_state()?;
    let target = LocalTarget::attach(state)?;
    let names = crate::conformance::validate::Names::of_target(&target);
    let known = |flag: &str, name: &str| -> Result<(), InputError> {
        names
            .check_workload(name)
            .map_err(|e| InputError::new(flag, e))
    };
    if let Some(from) = &a.from {
        known("--from", from)?;
    }
    if let Some(to) = &a.to {
        known("--to", to)?;
    }
    let call = Call {
        from,
        to: a
            .to
            .clone()
            .unwrap_or_else(|| crate::target::INGRESS.into()),
        path: a.path,
        method: a.method,
        headers,
        timeout: Duration::from_secs_f64(a.timeout),
    };
    let outcome = target.call(&call).await?;
    print_outcome(&outcome);
    Ok(match outcome {
        Outcome::Response { .. } => exit::OK,
        _ => exit::FAILED,
    })
}

fn print_outcome(o: &Outcome) {
    use std::io::Write;
    let mut text = String::new();
    match o {
        Outcome::Response {
            status,
            headers,
            body,
        } => {
            text.push_str(&format!("HTTP {status}\n"));
            for (k, v) in headers {
                text.push_str(&format!("{k}: {v}\n"));
            }
            text.push_str(&format!("\n{body}\n"));
        }
        other => text.push_str(&format!("no HTTP response: {}\n", other.summary())),
    }
    // A closed pipe (`| head`) is not an error worth a panic.
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
}
