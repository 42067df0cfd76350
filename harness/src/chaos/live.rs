//! The live view of a game day: one line a second with the last complete second's rate,
//! errors and p99, the faults in force and their time left, and failing probes.

use std::time::Instant;

use super::ledger::Ledger;
use super::observe::ProbeResult;
use super::run::Experiment;
use super::traffic::Traffic;

pub fn line(
    x: &Experiment,
    traffic: &Traffic,
    ledger: &Ledger,
    probes: &[ProbeResult],
    start: Instant,
) -> String {
    let t = start.elapsed();
    let load = match traffic.last_complete() {
        Some(k) => {
            let w = traffic.window(k, k + 1, &[]);
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
    let live = ledger.live();
    let faults: Vec<String> = x
        .plan
        .faults
        .iter()
        .filter(|f| {
            live.iter()
                .any(|(id, _)| f.injections.iter().any(|(i, _)| i == id))
        })
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
