//! The live view of a game day: one line a second with the last complete second's rate,
//! errors and p99, the faults in force and their time left, and failing probes.

use std::time::Instant;

use super::ledger::Ledger;
use super::observe::ProbeResult;
use super::run::Experiment;
use super::traffic::Traffic;

/// The planned faults with an injection in force now.
fn in_force<'a>(x: &'a Experiment, ledger: &Ledger) -> Vec<&'a super::plan::PlannedFault> {
    let live = ledger.live();
    x.plan
        .faults
        .iter()
        .filter(|f| {
            live.iter()
                .any(|(id, _)| f.injections.iter().any(|(i, _)| i == id))
        })
        .collect()
}

pub fn line(
    x: &Experiment,
    traffic: &Traffic,
    ledger: &Ledger,
    probes: &[ProbeResult],
    start: Instant,
) -> String {
    let t = start.elapsed();
    let load = match traffic.last_second() {
        Some(w) => {
            format!(
                "{:>5} req/s  err {:>5.1}%  p99 {:>8}",
                w.requests,
                w.error_rate().unwrap_or(0.0) * 100.0,
                w.quantile(0.99).map_or("-".into(), |d| format!(
                    "{:.1} ms",
                    d.as_secs_f64() * 1000.0
                ))
            )
        }
        None => "load starting".into(),
    };
    let faults: Vec<String> = in_force(x, ledger)
        .into_iter()
        .map(|f| {
            let left = f.end().saturating_sub(t);
            format!("{} {} ({}s left)", f.id, f.name, left.as_secs())
        })
        .collect();
    let failing: Vec<&str> = probes
        .iter()
        .filter(|p| !p.ok)
        .map(|p| p.name.as_str())
        .collect();
    format!(
        "[{:>4}s] {load} | {}{}",
        t.as_secs(),
        if faults.is_empty() {
            "no fault".to_string()
        } else {
            faults.join(", ")
        },
        if failing.is_empty() {
            String::new()
        } else {
            format!(" | failing: {}", failing.join(", "))
        }
    )
}

/// The same view in Prometheus' text format (`meshtest chaos --metrics-listen`).
pub fn metrics(
    x: &Experiment,
    traffic: &Traffic,
    ledger: &Ledger,
    probes: &[ProbeResult],
    start: Instant,
) -> String {
    use meshtest_load::metrics::{family, label_value};
    let profile = format!("profile=\"{}\"", label_value(&x.profile.name));
    let mut out = family(
        "gauge",
        "meshtest_chaos_elapsed_seconds",
        "Time since the experiment started.",
        &[format!(
            "meshtest_chaos_elapsed_seconds{{{profile}}} {}",
            start.elapsed().as_secs_f64()
        )],
    );
    if let Some(w) = traffic.last_second() {
        out += &family(
            "gauge",
            "meshtest_chaos_requests_per_second",
            "Requests sent in the last complete second.",
            &[format!(
                "meshtest_chaos_requests_per_second{{{profile}}} {}",
                w.requests
            )],
        );
        out += &family(
            "gauge",
            "meshtest_chaos_error_ratio",
            "Share of the last complete second's requests that failed.",
            &[format!(
                "meshtest_chaos_error_ratio{{{profile}}} {}",
                w.error_rate().unwrap_or(0.0)
            )],
        );
        if let Some(p99) = w.quantile(0.99) {
            out += &family(
                "gauge",
                "meshtest_chaos_latency_p99_seconds",
                "p99 latency of the last complete second, from intended send times.",
                &[format!(
                    "meshtest_chaos_latency_p99_seconds{{{profile}}} {}",
                    p99.as_secs_f64()
                )],
            );
        }
    }
    let active: Vec<String> = in_force(x, ledger)
        .into_iter()
        .map(|f| {
            format!(
                "meshtest_chaos_fault_active{{{profile},fault=\"{}\",name=\"{}\"}} 1",
                label_value(&f.id),
                label_value(&f.name)
            )
        })
        .collect();
    out += &family(
        "gauge",
        "meshtest_chaos_faults_active",
        "Faults in force now.",
        &[format!(
            "meshtest_chaos_faults_active{{{profile}}} {}",
            active.len()
        )],
    );
    if !active.is_empty() {
        out += &family(
            "gauge",
            "meshtest_chaos_fault_active",
            "Each fault in force now.",
            &active,
        );
    }
    out += &family(
        "gauge",
        "meshtest_chaos_probes_failing",
        "Probes failing now.",
        &[format!(
            "meshtest_chaos_probes_failing{{{profile}}} {}",
            probes.iter().filter(|p| !p.ok).count()
        )],
    );
    out
}
