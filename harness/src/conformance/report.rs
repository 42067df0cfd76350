//! A run's verdicts written out: the console summary (summary.txt), summary.json, JUnit XML
//! (BROKEN is a <failure>, UNCHECKED an <error>) and the verdicts added to cucumber.json.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use serde::Serialize;

use super::verdict::Verdict;

/// One scenario's verdict and what it saw.
#[derive(Debug, Clone, Serialize)]
pub struct ScenarioResult {
    pub feature: String,
    /// The feature file, when known.
    pub file: Option<PathBuf>,
    pub scenario: String,
    pub line: usize,
    pub tags: Vec<String>,
    pub verdict: Verdict,
    /// Why it is BROKEN or UNCHECKED.
    pub message: Option<String>,
    /// What the steps observed, also when the promise held.
    pub evidence: Vec<String>,
    /// False-alarm rates of the statistical steps that ran.
    pub alphas: Vec<f64>,
    #[serde(serialize_with = "seconds")]
    pub duration: Duration,
}

fn seconds<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64((d.as_secs_f64() * 1000.0).round() / 1000.0)
}

#[derive(Debug, Clone)]
pub struct RunSummary {
    pub results: Vec<ScenarioResult>,
    pub report_dir: PathBuf,
    pub duration: Duration,
}

impl RunSummary {
    /// The run's verdict: BROKEN if a scenario is, else UNCHECKED if one is (or none ran).
    pub fn verdict(&self) -> Verdict {
        if self.results.is_empty() {
            return Verdict::Unchecked;
        }
        Verdict::combine(self.results.iter().map(|r| r.verdict))
    }

    pub fn exit_code(&self) -> u8 {
        self.verdict().exit_code()
    }

    pub fn passed(&self) -> bool {
        self.verdict() == Verdict::Holds
    }

    pub fn with(&self, verdict: Verdict) -> impl Iterator<Item = &ScenarioResult> {
        self.results.iter().filter(move |r| r.verdict == verdict)
    }

    /// The promises (features) in order, each with its combined verdict.
    pub fn promises(&self) -> Vec<(&str, Verdict)> {
        let mut out: Vec<(&str, Verdict)> = Vec::new();
        for r in &self.results {
            match out.iter_mut().find(|(f, _)| *f == r.feature) {
                Some((_, v)) => *v = Verdict::combine([*v, r.verdict]),
                None => out.push((&r.feature, r.verdict)),
            }
        }
        out
    }

    /// The promises with a BROKEN scenario, in order.
    pub fn broken_promises(&self) -> Vec<String> {
        self.promises()
            .into_iter()
            .filter(|(_, v)| *v == Verdict::Broken)
            .map(|(f, _)| f.to_string())
            .collect()
    }

    /// Sum of the statistical steps' false-alarm rates: the chance that an intact mesh fails
    /// this run by bad luck (a union bound).
    pub fn false_alarm_rate(&self) -> (f64, usize) {
        let alphas: Vec<f64> = self.results.iter().flat_map(|r| r.alphas.clone()).collect();
        (alphas.iter().fold(0.0, |a, b| a + b), alphas.len())
    }

    fn location(r: &ScenarioResult) -> String {
        match &r.file {
            Some(f) => format!("{}:{}", f.display(), r.line),
            None => format!("line {}", r.line),
        }
    }

    /// The console summary: each promise with its verdict, then each BROKEN and UNCHECKED
    /// scenario with its evidence.
    pub fn render(&self) -> String {
        let mut out = String::from("\nmeshtest conformance summary\n");
        for (feature, verdict) in self.promises() {
            let of: Vec<_> = self
                .results
                .iter()
                .filter(|r| r.feature == feature)
                .collect();
            let count = |v| of.iter().filter(|r| r.verdict == v).count();
            out.push_str(&format!(
                "  {:<9} {feature} ({} hold, {} broken, {} unchecked)\n",
                verdict.as_str(),
                count(Verdict::Holds),
                count(Verdict::Broken),
                count(Verdict::Unchecked)
            ));
        }
        for verdict in [Verdict::Broken, Verdict::Unchecked] {
            for r in self.with(verdict) {
                out.push_str(&format!(
                    "\n{verdict} promise \"{}\", scenario \"{}\" ({}):\n  {}\n",
                    r.feature,
                    r.scenario,
                    Self::location(r),
                    r.message.as_deref().unwrap_or("").replace('\n', "\n  ")
                ));
                for e in &r.evidence {
                    out.push_str(&format!("  evidence: {e}\n"));
                }
            }
        }
        let count = |v| self.with(v).count();
        out.push_str(&format!(
            "\n{} hold, {} broken, {} unchecked in {:.1}s\n",
            count(Verdict::Holds),
            count(Verdict::Broken),
            count(Verdict::Unchecked),
            self.duration.as_secs_f64()
        ));
        let (alpha, steps) = self.false_alarm_rate();
        out.push_str(&format!(
            "false-alarm rate of this run: {alpha:.4} (sum over {steps} statistical steps)\n"
        ));
        let verdict = self.verdict();
        out.push_str(&format!(
            "verdict: {verdict} (exit {})\n",
            verdict.exit_code()
        ));
        out.push_str(&format!("reports: {}\n", self.report_dir.display()));
        out
    }

    /// summary.json: the run's verdict, counts and every scenario with its evidence.
    pub fn to_json(&self) -> serde_json::Value {
        let (alpha, steps) = self.false_alarm_rate();
        let count = |v| self.with(v).count();
        serde_json::json!({
            "schema_version": 1,
            "tool": "meshtest",
            "tool_version": env!("CARGO_PKG_VERSION"),
            "verdict": self.verdict(),
            "exit_code": self.exit_code(),
            "duration_s": (self.duration.as_secs_f64() * 1000.0).round() / 1000.0,
            "counts": {"holds": count(Verdict::Holds), "broken": count(Verdict::Broken), "unchecked": count(Verdict::Unchecked)},
            "false_alarm_rate": alpha,
            "statistical_steps": steps,
            "promises": self.promises().into_iter().map(|(f, v)| serde_json::json!({"name": f, "verdict": v})).collect::<Vec<_>>(),
            "scenarios": self.results,
        })
    }

    /// JUnit XML: one testsuite per feature; BROKEN is a <failure>, UNCHECKED an <error>.
    pub fn to_junit(&self) -> String {
        let mut xml = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
        let count = |v| self.with(v).count();
        xml.push_str(&format!(
            "<testsuites name=\"meshtest\" tests=\"{}\" failures=\"{}\" errors=\"{}\" time=\"{:.3}\">\n",
            self.results.len(),
            count(Verdict::Broken),
            count(Verdict::Unchecked),
            self.duration.as_secs_f64()
        ));
        for (feature, _) in self.promises() {
            let of: Vec<_> = self
                .results
                .iter()
                .filter(|r| r.feature == feature)
                .collect();
            let n = |v| of.iter().filter(|r| r.verdict == v).count();
            let time: f64 = of.iter().map(|r| r.duration.as_secs_f64()).sum();
            xml.push_str(&format!(
                "  <testsuite name=\"{}\" tests=\"{}\" failures=\"{}\" errors=\"{}\" time=\"{time:.3}\">\n",
                escape(feature),
                of.len(),
                n(Verdict::Broken),
                n(Verdict::Unchecked)
            ));
            for r in of {
                xml.push_str(&format!(
                    "    <testcase classname=\"{}\" name=\"{}\" file=\"{}\" line=\"{}\" time=\"{:.3}\">\n",
                    escape(feature),
                    escape(&r.scenario),
                    escape(&r.file.as_ref().map(|f| f.display().to_string()).unwrap_or_default()),
                    r.line,
                    r.duration.as_secs_f64()
                ));
                let message = r.message.as_deref().unwrap_or("");
                match r.verdict {
                    Verdict::Broken => xml.push_str(&format!(
                        "      <failure type=\"BROKEN\" message=\"{}\">{}</failure>\n",
                        escape(first_line(message)),
                        escape(message)
                    )),
                    Verdict::Unchecked => xml.push_str(&format!(
                        "      <error type=\"UNCHECKED\" message=\"{}\">{}</error>\n",
                        escape(first_line(message)),
                        escape(message)
                    )),
                    Verdict::Holds => {}
                }
                if !r.evidence.is_empty() {
                    xml.push_str(&format!(
                        "      <system-out>{}</system-out>\n",
                        escape(&r.evidence.join("\n"))
                    ));
                }
                xml.push_str("    </testcase>\n");
            }
            xml.push_str("  </testsuite>\n");
        }
        xml.push_str("</testsuites>\n");
        xml
    }

    /// Adds `meshtest_verdict` to every scenario of cucumber's JSON report, and marks the failed
    /// step of an UNCHECKED scenario "pending" (it could not be checked, it did not fail).
    pub fn annotate_cucumber_json(&self, path: &Path) -> Result<()> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let mut doc: serde_json::Value = match serde_json::from_str(&text) {
            Ok(d) => d,
            // Nothing ran (cucumber wrote no document): leave it as it is.
            Err(_) => return Ok(()),
        };
        for feature in doc.as_array_mut().into_iter().flatten() {
            let name = feature["name"].as_str().unwrap_or_default().to_string();
            for element in feature["elements"].as_array_mut().into_iter().flatten() {
                let line = element["line"].as_u64().unwrap_or(0) as usize;
                let Some(r) = self
                    .results
                    .iter()
                    .find(|r| r.feature == name && r.line == line)
                else {
                    continue;
                };
                element["meshtest_verdict"] = serde_json::json!(r.verdict);
                if r.verdict == Verdict::Unchecked {
                    for step in element["steps"].as_array_mut().into_iter().flatten() {
                        if step["result"]["status"] == "failed" {
                            step["result"]["status"] = "pending".into();
                        }
                    }
                }
            }
        }
        std::fs::write(path, serde_json::to_vec_pretty(&doc)?)
            .with_context(|| format!("writing {}", path.display()))
    }

    /// Writes summary.txt, summary.json and junit.xml into the report directory.
    pub fn write(&self) -> Result<()> {
        let dir = &self.report_dir;
        std::fs::write(dir.join("summary.txt"), self.render()).context("writing summary.txt")?;
        std::fs::write(
            dir.join("summary.json"),
            serde_json::to_vec_pretty(&self.to_json())?,
        )
        .context("writing summary.json")?;
        std::fs::write(dir.join("junit.xml"), self.to_junit()).context("writing junit.xml")?;
        self.annotate_cucumber_json(&dir.join("cucumber.json"))
    }
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or("")
}

/// XML text and attribute escaping (also drops control characters XML 1.0 forbids).
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\n' | '\t' | '\r' => out.push(c),
            c if (c as u32) < 0x20 => {}
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(scenario: &str, verdict: Verdict, alpha: Option<f64>) -> ScenarioResult {
        ScenarioResult {
            feature: "F <1>".into(),
            file: Some("features/f.feature".into()),
            scenario: scenario.into(),
            line: 3,
            tags: vec![],
            verdict,
            message: (verdict != Verdict::Holds).then(|| format!("{verdict} because \"x\"")),
            evidence: vec!["n=3".into()],
            alphas: alpha.into_iter().collect(),
            duration: Duration::from_millis(1500),
        }
    }

    fn summary(results: Vec<ScenarioResult>) -> RunSummary {
        RunSummary {
            results,
            report_dir: "reports/x".into(),
            duration: Duration::from_secs(2),
        }
    }

    #[test]
    fn verdicts_exit_codes_and_false_alarm_rate() {
        let s = summary(vec![
            result("a", Verdict::Holds, Some(0.001)),
            result("b", Verdict::Unchecked, Some(0.001)),
        ]);
        assert_eq!(s.exit_code(), 3);
        assert_eq!(s.false_alarm_rate(), (0.002, 2));
        assert!(s.render().contains("false-alarm rate of this run: 0.0020"));
        assert!(
            s.render()
                .contains("UNCHECKED promise \"F <1>\", scenario \"b\"")
        );
        let s = summary(vec![
            result("a", Verdict::Broken, None),
            result("b", Verdict::Unchecked, None),
        ]);
        assert_eq!(s.exit_code(), 1);
        assert_eq!(s.broken_promises(), ["F <1>"]);
        assert_eq!(summary(vec![]).exit_code(), 3);
    }

    #[test]
    fn junit_tells_failures_from_errors() {
        let s = summary(vec![
            result("a", Verdict::Holds, None),
            result("b", Verdict::Broken, None),
            result("c", Verdict::Unchecked, None),
        ]);
        let xml = s.to_junit();
        assert!(xml.contains("tests=\"3\" failures=\"1\" errors=\"1\""));
        assert!(xml.contains("<failure type=\"BROKEN\" message=\"BROKEN because &quot;x&quot;\">"));
        assert!(xml.contains("<error type=\"UNCHECKED\""));
        assert!(xml.contains("name=\"F &lt;1&gt;\""));
        assert_eq!(s.to_json()["counts"]["unchecked"], 1);
        assert_eq!(s.to_json()["scenarios"][1]["verdict"], "BROKEN");
    }
}
