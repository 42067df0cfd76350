//! A Prometheus process beside the embedded mesh: its config and rules written into the run
//! directory, started supervised (it dies with the mesh), ready when its API says so.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use super::api::PrometheusApi;
use super::config;
use super::install::Binaries;
use crate::error::InputError;
use crate::local::process::Supervised;
use crate::local::runtime::MeshThread;
use crate::manifest::Resource;
use crate::manifest::observability::PrometheusRuleSpec;

const READY_DEADLINE: Duration = Duration::from_secs(30);

/// Port Prometheus listens on, at the mesh's ingress address.
pub const PROMETHEUS_PORT: u16 = 9090;

/// Checks every PrometheusRule with promtool (the rule syntax and PromQL), naming the
/// resource's file:line when one is refused: bad input, before anything starts.
pub fn check_rules(
    promtool: &Path,
    rules: &[Resource<PrometheusRuleSpec>],
) -> Result<(), InputError> {
    let dir = crate::envoy::cache_dir()
        .join("prometheus")
        .join(format!(".check.{}", std::process::id()));
    let dir = dir.as_path();
    std::fs::create_dir_all(dir)
        .map_err(|e| InputError::new(dir, format!("creating a scratch directory: {e}")))?;
    let result = check_each(promtool, rules, dir);
    let _ = std::fs::remove_dir_all(dir);
    result
}

fn check_each(
    promtool: &Path,
    rules: &[Resource<PrometheusRuleSpec>],
    dir: &Path,
) -> Result<(), InputError> {
    for r in rules {
        let files = config::write_rule_files(std::slice::from_ref(r), dir)
            .map_err(|e| InputError::new(dir, format!("writing rule files: {e}")))?;
        let out = Command::new(promtool)
            .arg("check")
            .arg("rules")
            .args(&files)
            .output()
            .map_err(|e| InputError::new(promtool, format!("running promtool: {e}")))?;
        for f in &files {
            let _ = std::fs::remove_file(f);
        }
        if !out.status.success() {
            let text = String::from_utf8_lossy(&out.stdout).to_string()
                + &String::from_utf8_lossy(&out.stderr);
            return Err(refusal(r, &text));
        }
    }
    Ok(())
}

/// promtool's complaint about `r`, at the line of the rule it names when the file shows it.
fn refusal(r: &Resource<PrometheusRuleSpec>, promtool: &str) -> InputError {
    // "  /path/rules.yml: 36:19: group "g", rule 1, "Name": could not parse ..." -> from `group`.
    let detail: Vec<&str> = promtool
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("Checking") && *l != "FAILED:")
        .map(|l| l.find("group \"").map_or(l, |i| &l[i..]))
        .collect();
    let detail = detail.join("; ");
    let rule_line = detail
        .split('"')
        .nth(3)
        .map(|name| crate::manifest::observability::rule_line(r, name));
    let mut e = r.origin.error(
        "spec.groups",
        format!("Prometheus refuses these rules: {detail}"),
    );
    if let Some(line) = rule_line {
        e = e.at_line(line);
    }
    e
}

/// The running Prometheus (killed with its process group when dropped, and with the mesh
/// thread that spawned it).
pub struct Prometheus {
    child: Mutex<Supervised>,
    pub url: String,
    pub dir: PathBuf,
}

impl Prometheus {
    /// Writes prometheus.yml (`scrape`, with the rule files added) and the rule files into
    /// `dir`, starts Prometheus on `listen` from the mesh's thread and waits (bounded) until
    /// it is ready.
    pub async fn start(
        thread: &MeshThread,
        binaries: &Binaries,
        dir: &Path,
        listen: SocketAddr,
        scrape: Value,
        rules: &[Resource<PrometheusRuleSpec>],
    ) -> Result<Prometheus> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let rule_files = config::write_rule_files(rules, dir)?;
        let mut yml = scrape;
        yml["rule_files"] = serde_json::json!(rule_files);
        std::fs::write(dir.join("prometheus.yml"), serde_json::to_vec_pretty(&yml)?)?;
        let mut cmd = Command::new(&binaries.prometheus);
        cmd.arg(format!(
            "--config.file={}",
            dir.join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address={listen}"))
        .args(["--storage.tsdb.retention.time=1d", "--log.level=warn"]);
        let log = dir.join("prometheus.log");
        let child = thread
            .run(async move { Supervised::spawn("prometheus", cmd, &log) })
            .await??;
        let p = Prometheus {
            child: Mutex::new(child),
            url: format!("http://{listen}"),
            dir: dir.to_path_buf(),
        };
        p.wait_ready().await?;
        Ok(p)
    }

    async fn wait_ready(&self) -> Result<()> {
        let api = PrometheusApi::new(&self.url)?;
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.lock().expect("prometheus lock").exited() {
                bail!(
                    "Prometheus exited during start-up ({status}); its log:\n{}",
                    self.log_tail()
                );
            }
            if api.ready().await {
                return Ok(());
            }
            if started.elapsed() > READY_DEADLINE {
                bail!(
                    "Prometheus was not ready within {READY_DEADLINE:?}; its log:\n{}",
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }
}
