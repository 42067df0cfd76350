//! Writes a run's report directory: summary.json, NAME.hgrm and index.html.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::engine::LoadResult;
use crate::error::{LoadError, Result};
use crate::summary::Summary;
use crate::{hgrm, html};

/// Writes the three report files into `dir` (created if needed) and returns the
/// path of summary.json.
pub fn write_report(dir: &Path, name: &str, result: &LoadResult) -> Result<PathBuf> {
    write_report_with(dir, name, result, &Summary::from_result(name, result))
}

/// [`write_report`] with a summary the caller built from `result` (e.g. with
/// its thresholds judged).
pub fn write_report_with(
    dir: &Path,
    name: &str,
    result: &LoadResult,
    summary: &Summary,
) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).map_err(|e| LoadError::io("creating report dir", dir, e))?;
    let json = serde_json::to_string_pretty(summary).map_err(|e| LoadError::Json {
        path: dir.join("summary.json"),
        source: e,
    })?;
    let summary_path = dir.join("summary.json");
    write(&summary_path, json + "\n")?;
    write(
        &dir.join(format!("{name}.hgrm")),
        hgrm::render(&result.recorder.latency),
    )?;
    let mut versions: Vec<(&str, &hdrhistogram::Histogram<u64>)> = result
        .recorder
        .by_version
        .iter()
        .map(|(v, h)| (v.as_str(), h))
        .collect();
    versions.sort_by(|a, b| a.0.cmp(b.0));
    let page = html::render(summary, &result.recorder.latency, &versions);
    write(&dir.join("index.html"), page)?;
    Ok(summary_path)
}

fn write(path: &Path, content: String) -> Result<()> {
    std::fs::write(path, content).map_err(|e| LoadError::io("writing", path, e))
}

/// Default report directory for a run started at `t`: `reports/20261127T204501Z`.
pub fn default_dir(t: SystemTime) -> PathBuf {
    Path::new("reports").join(run_id(t))
}

/// Compact UTC timestamp id, e.g. 20261127T204501Z.
pub fn run_id(t: SystemTime) -> String {
    let (y, mo, d, h, mi, s) = utc(t);
    format!("{y:04}{mo:02}{d:02}T{h:02}{mi:02}{s:02}Z")
}

/// RFC 3339 UTC, e.g. 2026-11-27T20:45:01Z.
pub fn rfc3339(t: SystemTime) -> String {
    let (y, mo, d, h, mi, s) = utc(t);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z")
}

fn utc(t: SystemTime) -> (i64, u32, u32, u32, u32, u32) {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()) as i64;
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    (
        y,
        m,
        d,
        (rem / 3600) as u32,
        (rem % 3600 / 60) as u32,
        (rem % 60) as u32,
    )
}

/// Days since 1970-01-01 to (year, month, day), Howard Hinnant's algorithm.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn timestamps() {
        let t = UNIX_EPOCH + Duration::from_secs(1_795_812_301); // 2026-11-27T20:45:01Z
        assert_eq!(run_id(t), "20261127T204501Z");
        assert_eq!(rfc3339(t), "2026-11-27T20:45:01Z");
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(951_782_400)),
            "2000-02-29T00:00:00Z"
        );
    }
}
