//! Range checks for every number a plan holds; each error names its flag.

use std::time::Duration;

use crate::duration::human;
use crate::error::{LoadError, Result};
use crate::plan::{
    MAX_CONNECTIONS, MAX_DURATION, MAX_RATE, MAX_REQUESTS, MAX_SEND_BATCH, MAX_THREADS,
    MAX_TIMEOUT, MAX_WARMUP, MIN_RATE, Mode, Stop,
};

/// A number for an error message: plain, or in e-notation when huge or tiny
/// (so `--rate 1e300` is not echoed as 301 digits).
fn num(x: f64) -> String {
    if x != 0.0 && x.is_finite() && !(1e-3..1e9).contains(&x.abs()) {
        format!("{x:e}")
    } else {
        format!("{x}")
    }
}

/// Checks every number of a plan against its range; each error names the flag.
pub(crate) fn check_numbers(
    mode: Mode,
    stop: Stop,
    warmup: Duration,
    timeout: Duration,
) -> Result<()> {
    match mode {
        Mode::Open {
            rate,
            max_connections,
        } => {
            if !(rate.is_finite() && (MIN_RATE..=MAX_RATE).contains(&rate)) {
                return Err(LoadError::input(format!(
                    "--rate {}: must be from {MIN_RATE} to {MAX_RATE} requests per second",
                    num(rate)
                )));
            }
            if !(1..=MAX_CONNECTIONS).contains(&max_connections) {
                return Err(LoadError::input(format!(
                    "--rate: the open loop's cap on requests in flight ({max_connections}) must be from 1 to {MAX_CONNECTIONS}"
                )));
            }
        }
        Mode::Closed { connections } => {
            if !(1..=MAX_CONNECTIONS).contains(&connections) {
                return Err(LoadError::input(format!(
                    "--connections {connections}: must be from 1 to {MAX_CONNECTIONS}"
                )));
            }
        }
    }
    match stop {
        Stop::Duration(d) if d.is_zero() => {
            return Err(LoadError::input("--duration: must be greater than zero"));
        }
        Stop::Duration(d) if d > MAX_DURATION => {
            return Err(LoadError::input(format!(
                "--duration {}: must be at most {} (30 days)",
                human(d),
                human(MAX_DURATION)
            )));
        }
        Stop::Requests(n) if !(1..=MAX_REQUESTS).contains(&n) => {
            return Err(LoadError::input(format!(
                "--requests {n}: must be from 1 to {MAX_REQUESTS}"
            )));
        }
        _ => {}
    }
    if warmup > MAX_WARMUP {
        return Err(LoadError::input(format!(
            "--warmup {}: must be at most {} (1 day)",
            human(warmup),
            human(MAX_WARMUP)
        )));
    }
    if timeout.is_zero() {
        return Err(LoadError::input("--timeout: must be greater than zero"));
    }
    if timeout > MAX_TIMEOUT {
        return Err(LoadError::input(format!(
            "--timeout {}: must be at most {}",
            human(timeout),
            human(MAX_TIMEOUT)
        )));
    }
    // The open loop schedules every request up front: bound their number and
    // how long sending them takes.
    if let Mode::Open { rate, .. } = mode {
        let warm = (warmup.as_secs_f64() * rate).ceil();
        let (measured, stop_flag) = match stop {
            Stop::Duration(d) => (
                (d.as_secs_f64() * rate).ceil(),
                format!("--duration {}", human(d)),
            ),
            Stop::Requests(n) => {
                let span = n as f64 / rate;
                if span > MAX_DURATION.as_secs_f64() {
                    return Err(LoadError::input(format!(
                        "--requests {n} at --rate {}: sending them takes {}s, longer than the {} limit of --duration; raise --rate or lower --requests",
                        num(rate),
                        num(span.round()),
                        human(MAX_DURATION)
                    )));
                }
                (n as f64, format!("--requests {n}"))
            }
        };
        let total = warm + measured;
        if total > MAX_REQUESTS as f64 {
            let flag = stop_flag.split(' ').next().unwrap_or_default();
            let (with, lower) = if warm > 0.0 {
                (
                    format!("{stop_flag} and --warmup {}", human(warmup)),
                    format!("--rate, {flag} or --warmup"),
                )
            } else {
                (stop_flag.clone(), format!("--rate or {flag}"))
            };
            return Err(LoadError::input(format!(
                "--rate {} with {with} schedules {} requests, more than the limit of {MAX_REQUESTS}: lower {lower}",
                num(rate),
                num(total)
            )));
        }
    }
    Ok(())
}

/// Checks `--threads` and `--send-batch`.
pub(crate) fn check_generator(threads: Option<usize>, send_batch: Duration) -> Result<()> {
    if let Some(t) = threads
        && !(1..=MAX_THREADS).contains(&t)
    {
        return Err(LoadError::input(format!(
            "--threads {t}: must be from 1 to {MAX_THREADS}"
        )));
    }
    if send_batch > MAX_SEND_BATCH {
        return Err(LoadError::input(format!(
            "--send-batch {}: must be at most {}",
            human(send_batch),
            human(MAX_SEND_BATCH)
        )));
    }
    Ok(())
}
