//! Finding the pinned Prometheus, or installing Debian's package into meshtest's cache without
//! touching the system (`apt-get download` + `dpkg-deb -x`), the way Envoy comes from PyPI.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::envoy::{cache_dir, install_once};

/// The Debian package version meshtest's rules and scrape config are tested against.
pub const PROMETHEUS_DEB: &str = "2.42.0+ds-5+deb12u1";
/// The version `prometheus --version` reports for it.
pub const PROMETHEUS_VERSION: &str = "2.42.0";

fn install_dir() -> PathBuf {
    cache_dir().join("prometheus").join(PROMETHEUS_DEB)
}

/// The pinned `prometheus` and `promtool`.
#[derive(Debug, Clone)]
pub struct Binaries {
    pub prometheus: PathBuf,
    pub promtool: Option<PathBuf>,
}

/// $MESHTEST_PROMETHEUS (used as given; promtool beside it if there is one), else the cache,
/// installing the pinned package into it on first use.
pub fn ensure() -> Result<Binaries> {
    if let Some(path) = std::env::var_os("MESHTEST_PROMETHEUS") {
        let path = PathBuf::from(path);
        if !path.is_file() {
            bail!(
                "MESHTEST_PROMETHEUS={} is not a file; unset it to let meshtest install Prometheus {PROMETHEUS_VERSION}",
                path.display()
            );
        }
        let promtool = path.with_file_name("promtool");
        return Ok(Binaries {
            promtool: promtool.is_file().then_some(promtool),
            prometheus: path,
        });
    }
    let bin = install_dir().join("usr/bin");
    install_once("prometheus", &bin.join("prometheus"), install)?;
    Ok(Binaries {
        prometheus: bin.join("prometheus"),
        promtool: Some(bin.join("promtool")),
    })
}

/// Downloads the package (updating apt's lists once if they do not know it) and unpacks it
/// into a staging directory renamed into place, so an interrupted install leaves nothing.
fn install() -> Result<()> {
    let final_dir = install_dir();
    let staging = cache_dir()
        .join("prometheus")
        .join(format!(".{PROMETHEUS_DEB}.{}", std::process::id()));
    std::fs::create_dir_all(&staging).with_context(|| format!("creating {}", staging.display()))?;
    eprintln!(
        "meshtest: Prometheus {PROMETHEUS_VERSION} not found; installing Debian package prometheus={PROMETHEUS_DEB} into {}",
        final_dir.display()
    );
    let result = download_and_unpack(&staging);
    if let Err(e) = result {
        let _ = std::fs::remove_dir_all(&staging);
        return Err(e);
    }
    match std::fs::rename(&staging, &final_dir) {
        Ok(()) => {}
        Err(_) if final_dir.join("usr/bin/prometheus").is_file() => {
            let _ = std::fs::remove_dir_all(&staging);
        }
        Err(e) => bail!("moving Prometheus into {}: {e}", final_dir.display()),
    }
    let v = version_of(&final_dir.join("usr/bin/prometheus"))?;
    if v != PROMETHEUS_VERSION {
        bail!("installed Prometheus reports version {v}, expected {PROMETHEUS_VERSION}");
    }
    eprintln!("meshtest: installed Prometheus {v}");
    Ok(())
}

fn download_and_unpack(staging: &Path) -> Result<()> {
    let package = format!("prometheus={PROMETHEUS_DEB}");
    let download = || {
        Command::new("apt-get")
            .args(["download", "-q", &package])
            .current_dir(staging)
            .output()
    };
    let mut out = download().context(
        "cannot run apt-get to download Prometheus; set MESHTEST_PROMETHEUS to a Prometheus 2.42 binary",
    )?;
    if !out.status.success() {
        // A fresh machine may have no package lists yet.
        let update = Command::new("apt-get").args(["update", "-q"]).output();
        if update.is_ok_and(|u| u.status.success()) {
            out = download()?;
        }
    }
    if !out.status.success() {
        bail!(
            "apt-get download {package} failed: {}. Check access to the Debian mirror (apt-get update may need root), or set MESHTEST_PROMETHEUS to a Prometheus {PROMETHEUS_VERSION} binary",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let deb = std::fs::read_dir(staging)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .context("apt-get download left no .deb")?;
    let status = Command::new("dpkg-deb")
        .arg("-x")
        .arg(&deb)
        .arg(staging)
        .status()
        .context("running dpkg-deb")?;
    if !status.success() {
        bail!("dpkg-deb -x {} failed ({status})", deb.display());
    }
    std::fs::remove_file(&deb)?;
    // Only the two binaries are needed; the package's docs, units and web assets are not.
    for extra in ["etc", "lib", "usr/share"] {
        let _ = std::fs::remove_dir_all(staging.join(extra));
    }
    Ok(())
}

/// "prometheus, version 2.42.0+ds (branch: ...)" -> "2.42.0".
pub fn version_of(binary: &Path) -> Result<String> {
    let out = Command::new(binary)
        .arg("--version")
        .output()
        .with_context(|| format!("running {} --version", binary.display()))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    parse_version(&text).with_context(|| {
        format!(
            "{} --version printed no version: {text:?}",
            binary.display()
        )
    })
}

fn parse_version(text: &str) -> Option<String> {
    let after = text.split("version ").nth(1)?;
    let v: String = after
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    (!v.is_empty()).then_some(v)
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_the_version_line() {
        let out =
            "prometheus, version 2.42.0+ds (branch: debian/sid, revision: 2.42.0+ds-5+deb12u1)\n";
        assert_eq!(super::parse_version(out).as_deref(), Some("2.42.0"));
        assert_eq!(super::parse_version("nothing"), None);
    }
}
