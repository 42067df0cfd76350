//! reports/RUN/chaos/: summary.json (schema: harness/schema/chaos-summary.schema.json), one .hgrm
//! per phase, index.html (throughput, error rate, p50/p99 and versions over time with each
//! fault window shaded and labelled, verdicts on top) and retro.md for the game day's review.
//! timeline.jsonl is written as the run goes ([`super::timeline`]).

use std::fmt::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};
use meshtest_load::html::{Band, Series, chart_with_bands, esc, fmt_num, nice_step};
use serde_json::{Value, json};

use super::run::{ChaosVerdict, Experiment, Record};
use super::timeline::Timeline;
use super::traffic::{Traffic, Window};

pub const SCHEMA_VERSION: u32 = 1;

/// A phase of the run and its seconds of load.
struct Phase {
    name: String,
    from: u64,
    to: u64,
}

fn phases(x: &Experiment, r: &Record) -> Vec<Phase> {
    let mut out = vec![Phase {
        name: "before".into(),
        from: 0,
        to: x.plan.before.as_secs(),
    }];
    for (f, run) in x.plan.faults.iter().zip(&r.faults) {
        if let (Some(v), Some(rv)) = (run.verified_at_s.or(run.applied_at_s), run.reverted_at_s) {
            out.push(Phase {
                name: f.id.clone(),
                from: v.ceil() as u64,
                to: (rv.floor() as u64).max(v.ceil() as u64),
            });
        }
    }
    if let Some((from, to)) = r.after {
        out.push(Phase {
            name: "after".into(),
            from,
            to,
        });
    }
    out
}

fn ms(d: Option<std::time::Duration>) -> Value {
    d.map_or(Value::Null, |d| {
        json!((d.as_secs_f64() * 1000.0 * 1000.0).round() / 1000.0)
    })
}

fn window_json(w: &Window) -> Value {
    json!({
        "requests": w.requests,
        "failures": w.failures,
        "error_rate": w.error_rate(),
        "p50_ms": ms(w.quantile(0.5)),
        "p99_ms": ms(w.quantile(0.99)),
        "max_ms": ms(w.quantile(1.0)),
        "status": w.status.iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
        "errors": w.errors,
        "versions": w.versions,
    })
}

/// The summary as a JSON value.
pub fn summary(
    x: &Experiment,
    traffic: &Traffic,
    r: &Record,
    timeline: &Timeline,
    verdict: ChaosVerdict,
) -> Value {
    let faults: Vec<Value> = x
        .plan
        .faults
        .iter()
        .zip(&r.faults)
        .map(|(f, run)| {
            json!({
                "id": f.id,
                "name": f.name,
                "kind": f.kind,
                "target": f.target(),
                "injections": f.injections.iter().map(|(id, i)| json!({"id": id, "injection": i, "inverse": i.inverse()})).collect::<Vec<_>>(),
                "lease_ms": f.lease.as_millis() as u64,
                "planned_start_s": f.start.as_secs_f64(),
                "planned_duration_s": f.duration.as_secs_f64(),
                "applied_at_s": run.applied_at_s,
                "verified_at_s": run.verified_at_s,
                "reverted_at_s": run.reverted_at_s,
                "verified": run.verified_at_s.is_some(),
                "verification": run.verification,
                "reverted": run.reverted,
                "apply_ms": run.apply_ms,
                "verify_ms": run.verify_ms,
                "revert_ms": run.revert_ms,
                "errors": run.errors,
            })
        })
        .collect();
    let seconds = traffic.complete_seconds().max(r.end_s.floor() as u64);
    let per_second: Vec<Value> = traffic
        .per_second(seconds, &[])
        .into_iter()
        .map(|(t, w)| {
            let mut v = window_json(&w);
            v["t"] = json!(t);
            v
        })
        .collect();
    let ss = &x.profile.steady_state;
    json!({
        "schema_version": SCHEMA_VERSION,
        "kind": "meshtest-chaos",
        "profile": x.profile.name,
        "profile_file": x.profile.file,
        "description": x.profile.description,
        "hypothesis": x.profile.hypothesis,
        "run_id": x.plan.run_id,
        "seed": x.plan.seed,
        "target": x.target.kind(),
        "duration_s": (r.end_s * 1000.0).round() / 1000.0,
        "verdict": verdict.as_str(),
        "exit_code": verdict.exit_code(),
        "steady_state": {
            "error_rate_below": ss.error_rate_below.fraction(),
            "p99_below_ms": ss.p99_below.0.as_millis() as u64,
            "recover_within_ms": ss.recover_within.0.as_millis() as u64,
        },
        "hypotheses": r.judgements.iter().map(|(phase, j)| json!({"phase": phase, "hypothesis": j.hypothesis, "verdict": j.verdict.as_str(), "evidence": j.evidence})).collect::<Vec<_>>(),
        "faults": faults,
        "abort": r.abort,
        "recovery": r.recovery,
        "alerts": super::alerts::summary(&x.profile.alerts, r),
        "left_behind": r.left_behind,
        "interrupted": r.interrupted,
        "error": r.error,
        "skipped": r.skipped_faults,
        "phases": phases(x, r).iter().map(|p| {
            let mut v = window_json(&traffic.window(p.from, p.to, &[]));
            v["name"] = json!(p.name);
            v["from_s"] = json!(p.from);
            v["to_s"] = json!(p.to);
            v["hgrm"] = json!(format!("{}.hgrm", p.name));
            v
        }).collect::<Vec<_>>(),
        "routes": traffic.routes(),
        "questions": x.profile.questions,
        "notes": timeline.notes().into_iter().map(|(t, text)| json!({"t_s": t, "text": text})).collect::<Vec<_>>(),
        "seconds": per_second,
    })
}

/// Writes every file; returns the summary's path.
pub fn write(
    x: &Experiment,
    traffic: &Traffic,
    r: &Record,
    timeline: &Timeline,
    verdict: ChaosVerdict,
) -> Result<PathBuf> {
    let dir = &x.report_dir;
    let s = summary(x, traffic, r, timeline, verdict);
    let path = dir.join("summary.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&s)?)
        .with_context(|| format!("writing {}", path.display()))?;
    for p in phases(x, r) {
        let w = traffic.window(p.from, p.to, &[]);
        std::fs::write(
            dir.join(format!("{}.hgrm", p.name)),
            meshtest_load::hgrm::render(&w.latency),
        )?;
    }
    std::fs::write(dir.join("index.html"), html(&s))?;
    std::fs::write(dir.join("retro.md"), retro(&s))?;
    Ok(path)
}

/// index.html from the summary (so the page shows exactly what summary.json says).
pub fn html(s: &Value) -> String {
    let seconds = s["seconds"].as_array().cloned().unwrap_or_default();
    let t_max = (seconds.len() as f64).max(1.0);
    let step = nice_step(t_max);
    let mut ticks = Vec::new();
    let mut t = 0.0;
    while t <= t_max + 1e-9 {
        ticks.push((t, fmt_num(t)));
        t += step;
    }
    let bands: Vec<Band> = s["faults"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|f| {
            Some(Band {
                from: f["applied_at_s"].as_f64()?,
                to: f["reverted_at_s"].as_f64()?,
                label: format!("{} {}", f["id"].as_str()?, f["name"].as_str()?),
            })
        })
        .chain(
            s["alerts"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|a| {
                    Some(Band {
                        from: a["fired_at_s"].as_f64()?,
                        to: a["resolved_at_s"].as_f64().unwrap_or(t_max),
                        label: format!("alert {} firing", a["name"].as_str()?),
                    })
                }),
        )
        .collect();
    let point = |sec: &Value, key: &str, scale: f64| -> Option<(f64, f64)> {
        Some((sec["t"].as_f64()? + 0.5, sec[key].as_f64()? * scale))
    };
    let series = |name: &str, key: &str, scale: f64, dashed: bool| Series {
        name: name.into(),
        points: seconds
            .iter()
            .filter_map(|sec| point(sec, key, scale))
            .collect(),
        dashed,
    };
    let chart = |id: &str, title: &str, y: &str, ser: &[Series]| {
        chart_with_bands(id, title, "seconds", y, (0.0, t_max), &ticks, ser, &bands)
    };
    let mut versions: Vec<String> = seconds
        .iter()
        .flat_map(|sec| {
            sec["versions"]
                .as_object()
                .map(|o| o.keys().cloned().collect::<Vec<_>>())
                .unwrap_or_default()
        })
        .collect();
    versions.sort();
    versions.dedup();
    let mut thr = vec![series("requests/s", "requests", 1.0, false)];
    for v in &versions {
        thr.push(Series {
            name: format!("version {v}"),
            points: seconds
                .iter()
                .filter_map(|sec| {
                    Some((
                        sec["t"].as_f64()? + 0.5,
                        sec["versions"][v].as_f64().unwrap_or(0.0),
                    ))
                })
                .collect(),
            dashed: true,
        });
    }
    let throughput = chart(
        "throughput",
        "Throughput (by send second)",
        "requests/s",
        &thr,
    );
    let errors = chart(
        "error-rate",
        "Error rate",
        "% failed",
        &[series("error rate", "error_rate", 100.0, false)],
    );
    let latency = chart(
        "latency",
        "Latency",
        "ms",
        &[
            series("p99", "p99_ms", 1.0, false),
            series("p50", "p50_ms", 1.0, true),
        ],
    );
    let mut verdicts = String::new();
    for h in s["hypotheses"].as_array().into_iter().flatten() {
        let v = h["verdict"].as_str().unwrap_or("");
        let _ = writeln!(
            verdicts,
            r#"<tr class="{}"><td>{}</td><td>{}</td><td><b>{v}</b></td><td>{}</td></tr>"#,
            v.to_lowercase(),
            esc(h["phase"].as_str().unwrap_or("")),
            esc(h["hypothesis"].as_str().unwrap_or("")),
            esc(h["evidence"].as_str().unwrap_or(""))
        );
    }
    let mut faults = String::new();
    for f in s["faults"].as_array().into_iter().flatten() {
        let num = |k: &str| f[k].as_u64().map_or("-".to_string(), |v| v.to_string());
        let _ = writeln!(
            faults,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(f["id"].as_str().unwrap_or("")),
            esc(f["name"].as_str().unwrap_or("")),
            esc(f["kind"].as_str().unwrap_or("")),
            esc(f["target"].as_str().unwrap_or("")),
            f["verified"],
            f["reverted"],
            num("apply_ms"),
            num("verify_ms"),
            num("revert_ms")
        );
    }
    let verdict = s["verdict"].as_str().unwrap_or("");
    format!(
        r#"<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>meshtest chaos: {name}</title>
<style>body{{font-family:sans-serif;margin:24px;color:#222}}table{{border-collapse:collapse;margin:8px 0 16px}}td,th{{border:1px solid #ccc;padding:3px 8px;text-align:left;vertical-align:top}}tr.broken td{{background:#fdd}}tr.unchecked td{{background:#ffd}}tr.holds td:nth-child(3){{color:#070}}.verdict{{font-size:1.4em}}svg{{display:block;margin:12px 0}}</style>
</head><body>
<h1>meshtest chaos: {name}</h1>
<p class="verdict">verdict: <b id="verdict">{verdict}</b> (exit {exit}) · run {run} · seed {seed} · {dur:.1} s</p>
<p>{desc}</p>
<table><tr><th>phase</th><th>hypothesis</th><th>verdict</th><th>evidence</th></tr>
{verdicts}</table>
<table><tr><th>fault</th><th>name</th><th>kind</th><th>target</th><th>verified</th><th>reverted</th><th>apply ms</th><th>apply to verified ms</th><th>revert ms</th></tr>
{faults}</table>
{throughput}
{errors}
{latency}
<p>Each request is counted in the second it was sent (open loop; latency from its intended send time). Shaded: each fault from applied to reverted. Files: summary.json, timeline.jsonl, retro.md, one .hgrm per phase.</p>
</body></html>
"#,
        name = esc(s["profile"].as_str().unwrap_or("")),
        exit = s["exit_code"],
        run = esc(s["run_id"].as_str().unwrap_or("")),
        seed = s["seed"],
        dur = s["duration_s"].as_f64().unwrap_or(0.0),
        desc = esc(s["description"].as_str().unwrap_or("")),
    )
}

/// retro.md: what happened, what held and broke, SLO impact per fault, notes and questions.
pub fn retro(s: &Value) -> String {
    let mut out = String::new();
    let str_of = |v: &Value| v.as_str().unwrap_or("").to_string();
    let _ = writeln!(
        out,
        "# Retro: {} ({})\n",
        str_of(&s["profile"]),
        str_of(&s["run_id"])
    );
    let _ = writeln!(
        out,
        "**Verdict: {}** (exit {}). Seed {} (rerun with `--seed {}`).\n",
        str_of(&s["verdict"]),
        s["exit_code"],
        s["seed"],
        s["seed"]
    );
    if !str_of(&s["hypothesis"]).is_empty() {
        let _ = writeln!(out, "Hypothesis: {}\n", str_of(&s["hypothesis"]));
    }
    let _ = writeln!(out, "## Timeline\n");
    let _ = writeln!(out, "| t (s) | what |\n|---|---|");
    for f in s["faults"].as_array().into_iter().flatten() {
        let at = |k: &str| f[k].as_f64().map_or("-".to_string(), |v| format!("{v:.1}"));
        let _ = writeln!(
            out,
            "| {} | {} `{}` ({}) applied to {} |",
            at("applied_at_s"),
            str_of(&f["id"]),
            str_of(&f["name"]),
            str_of(&f["kind"]),
            str_of(&f["target"])
        );
        let _ = writeln!(
            out,
            "| {} | {}: {} |",
            at("verified_at_s"),
            str_of(&f["id"]),
            if f["verified"] == true {
                format!("verified: {}", str_of(&f["verification"]))
            } else {
                str_of(&f["verification"])
            }
        );
        let _ = writeln!(
            out,
            "| {} | {} reverted ({}) |",
            at("reverted_at_s"),
            str_of(&f["id"]),
            if f["reverted"] == true {
                "ok"
            } else {
                "NOT REVERTED"
            }
        );
    }
    for n in s["notes"].as_array().into_iter().flatten() {
        let _ = writeln!(
            out,
            "| {:.1} | note: {} |",
            n["t_s"].as_f64().unwrap_or(0.0),
            str_of(&n["text"])
        );
    }
    if let Some(a) = s["abort"].as_object() {
        let _ = writeln!(
            out,
            "| {:.1} | ABORT: {} (all reverted in {} ms) |",
            a["tripped_at_s"].as_f64().unwrap_or(0.0),
            a["rule"].as_str().unwrap_or(""),
            a["trip_to_reverted_ms"]
        );
    }
    let _ = writeln!(out, "\n## SLO impact per phase\n");
    let _ = writeln!(
        out,
        "| phase | requests | failed | error rate | p50 ms | p99 ms |\n|---|---|---|---|---|---|"
    );
    for p in s["phases"].as_array().into_iter().flatten() {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} |",
            str_of(&p["name"]),
            p["requests"],
            p["failures"],
            p["error_rate"]
                .as_f64()
                .map_or("-".into(), |r| format!("{:.2}%", r * 100.0)),
            p["p50_ms"]
                .as_f64()
                .map_or("-".into(), |v| format!("{v:.1}")),
            p["p99_ms"]
                .as_f64()
                .map_or("-".into(), |v| format!("{v:.1}"))
        );
    }
    for (title, want) in [
        ("What held", "HOLDS"),
        ("What broke", "BROKEN"),
        ("What we could not check", "UNCHECKED"),
    ] {
        let rows: Vec<String> = s["hypotheses"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|h| h["verdict"] == want)
            .map(|h| {
                format!(
                    "- {}: {} ({})",
                    str_of(&h["phase"]),
                    str_of(&h["hypothesis"]),
                    str_of(&h["evidence"])
                )
            })
            .collect();
        let _ = writeln!(
            out,
            "\n## {title}\n\n{}",
            if rows.is_empty() {
                "- nothing".to_string()
            } else {
                rows.join("\n")
            }
        );
    }
    let _ = writeln!(out, "\n## Open questions\n");
    let questions: Vec<String> = s["questions"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|q| format!("- {}", str_of(q)))
        .collect();
    let _ = writeln!(
        out,
        "{}",
        if questions.is_empty() {
            "- (add the team's questions here)".to_string()
        } else {
            questions.join("\n")
        }
    );
    out
}
