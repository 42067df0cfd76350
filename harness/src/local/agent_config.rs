//! The agent each pod runs, configured from its container (or as a stand-in) and placed
//! behind its sidecar's sockets.

use std::path::Path;

use anyhow::{Result, anyhow};
use clap::Parser;

use crate::agent::{AgentArgs, Listen, Outbound};
use crate::model::{MeshModel, Pod};
use crate::translate::proxy::SidecarPlacement;

/// The agent of `pod` as its container args declare it (a stand-in when the container is not
/// `meshtest agent`), placed behind its sidecar's sockets.
pub(super) fn agent_config(
    model: &MeshModel,
    pod: &Pod,
    placement: &SidecarPlacement,
    control: &Path,
    jwks: &str,
) -> Result<crate::agent::AgentConfig> {
    #[derive(Parser)]
    struct Wrapper {
        #[command(flatten)]
        args: AgentArgs,
    }
    // An unmodified application container gets a stand-in: the agent with no forwards, on
    // every port the pod serves (the listeners are placed below either way).
    let argv: &[String] = if pod.stand_in { &[] } else { &pod.args[1..] };
    let args =
        Wrapper::try_parse_from(std::iter::once("agent".to_string()).chain(argv.iter().cloned()))
            .map_err(|e| anyhow!("pod {}: bad agent args: {e}", pod.name))?
            .args;
    let mut config = args.into_config()?;
    // Locally the agent sits behind its sidecar's Unix sockets instead of the pod's ports.
    config.listen = pod
        .ports
        .iter()
        .map(|&port| (port, Listen::Unix(placement.app_socket(port))))
        .collect();
    config.control = Listen::Unix(control.to_path_buf());
    config.outbound = Outbound::Sidecar(placement.outbound.clone());
    config.service = pod.service.clone();
    config.version = pod.version.clone();
    config.pod = pod.name.clone();
    config.namespace = pod.namespace.clone();
    config.service_ports = model
        .services
        .iter()
        .map(|s| (s.name.clone(), s.default_port().port))
        .collect();
    config.jwks = Some(jwks.to_string());
    config.tcp_ports = pod
        .ports
        .iter()
        .copied()
        .filter(|&p| !model.pod_port_protocol(pod, p).is_http())
        .collect();
    for (i, s) in model.services.iter().enumerate() {
        for p in &s.ports {
            if p.protocol.is_http() {
                continue;
            }
            let socket = placement.tcp_outbound_socket(i, p.port);
            config
                .tcp_outbound
                .insert(format!("{}:{}", s.name, p.port), socket);
        }
    }
    Ok(config)
}
