//! index.html: a self-contained page with hand-written inline SVG plots (no JS, no network).

use std::fmt::Write;

use hdrhistogram::Histogram;

use crate::summary::{Latency, Summary};

const W: f64 = 1000.0;
const H: f64 = 340.0;
const ML: f64 = 70.0; // left margin, room for y labels
const MR: f64 = 150.0; // right margin, room for the legend
const MT: f64 = 40.0;
const MB: f64 = 50.0;
const COLORS: [&str; 8] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
];

pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
    pub dashed: bool,
}

/// HTML-escapes text.
pub fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A "nice" tick step (1, 2 or 5 times a power of ten) giving about 5 ticks.
pub fn nice_step(max: f64) -> f64 {
    if max <= 0.0 {
        return 1.0;
    }
    let raw = max / 5.0;
    let mag = 10f64.powf(raw.log10().floor());
    let n = raw / mag;
    mag * if n <= 1.0 {
        1.0
    } else if n <= 2.0 {
        2.0
    } else if n <= 5.0 {
        5.0
    } else {
        10.0
    }
}

pub fn fmt_num(v: f64) -> String {
    if v == 0.0 || v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 1.0 {
        format!("{:.1}", v).trim_end_matches(".0").to_string()
    } else {
        format!("{v:.3}")
            .trim_end_matches('0')
            .trim_end_matches('.')
            .to_string()
    }
}

/// A shaded, labelled span of the x axis (a chaos fault's window).
pub struct Band {
    pub from: f64,
    pub to: f64,
    pub label: String,
}

/// One line chart. `x_ticks` are (position, label); the y axis is linear from 0.
pub fn chart(
    id: &str,
    title: &str,
    x_label: &str,
    y_label: &str,
    x_range: (f64, f64),
    x_ticks: &[(f64, String)],
    series: &[Series],
) -> String {
    chart_with_bands(id, title, x_label, y_label, x_range, x_ticks, series, &[])
}

/// [`chart`] with shaded spans of the x axis drawn under the lines.
#[allow(clippy::too_many_arguments)]
pub fn chart_with_bands(
    id: &str,
    title: &str,
    x_label: &str,
    y_label: &str,
    x_range: (f64, f64),
    x_ticks: &[(f64, String)],
    series: &[Series],
    bands: &[Band],
) -> String {
    let y_data_max = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .fold(0.0f64, f64::max);
    let step = nice_step(y_data_max);
    let y_max = ((y_data_max / step).ceil() * step).max(step);
    let (x0, x1) = x_range;
    let span = if x1 > x0 { x1 - x0 } else { 1.0 };
    let pw = W - ML - MR;
    let ph = H - MT - MB;
    let sx = |x: f64| ML + (x - x0) / span * pw;
    let sy = |y: f64| MT + ph - y / y_max * ph;

    let mut s = String::new();
    let _ = write!(
        s,
        r##"<svg id="{id}" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {W} {H}" width="{W}" height="{H}" font-family="sans-serif" font-size="12">"##
    );
    let _ = write!(
        s,
        r##"<rect x="0" y="0" width="{W}" height="{H}" fill="#fff"/>"##
    );
    let _ = write!(
        s,
        r##"<text x="{}" y="22" text-anchor="middle" font-size="15" font-weight="bold">{}</text>"##,
        ML + pw / 2.0,
        esc(title)
    );
    // Grid and y ticks.
    let mut y = 0.0;
    while y <= y_max + step / 2.0 {
        let py = sy(y);
        let _ = write!(
            s,
            r##"<line x1="{ML}" y1="{py:.1}" x2="{:.1}" y2="{py:.1}" stroke="#e0e0e0"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
            ML + pw,
            ML - 6.0,
            py + 4.0,
            fmt_num(y)
        );
        y += step;
    }
    for (x, label) in x_ticks {
        let px = sx(*x);
        let _ = write!(
            s,
            r##"<line x1="{px:.1}" y1="{MT}" x2="{px:.1}" y2="{:.1}" stroke="#e0e0e0"/><text x="{px:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
            MT + ph,
            MT + ph + 18.0,
            esc(label)
        );
    }
    for (i, b) in bands.iter().enumerate() {
        let (b0, b1) = (sx(b.from.max(x0)), sx(b.to.min(x1)));
        if b1 <= b0 {
            continue;
        }
        let _ = write!(
            s,
            r##"<rect class="band" x="{b0:.1}" y="{MT}" width="{:.1}" height="{ph}" fill="#f4a582" fill-opacity="0.3"/><text x="{:.1}" y="{:.1}" font-size="11">{}</text>"##,
            b1 - b0,
            b0 + 3.0,
            MT + 12.0 + (i % 3) as f64 * 13.0,
            esc(&b.label)
        );
    }
    let _ = write!(
        s,
        r##"<rect x="{ML}" y="{MT}" width="{pw}" height="{ph}" fill="none" stroke="#333"/>"##
    );
    let _ = write!(
        s,
        r##"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
        ML + pw / 2.0,
        H - 10.0,
        esc(x_label)
    );
    let _ = write!(
        s,
        r##"<text transform="translate(16 {:.1}) rotate(-90)" text-anchor="middle">{}</text>"##,
        MT + ph / 2.0,
        esc(y_label)
    );
    for (i, ser) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let dash = if ser.dashed {
            r#" stroke-dasharray="6 4""#
        } else {
            ""
        };
        if !ser.points.is_empty() {
            let pts: Vec<String> = ser
                .points
                .iter()
                .map(|(x, y)| format!("{:.1},{:.1}", sx(*x), sy(*y)))
                .collect();
            let _ = write!(
                s,
                r##"<polyline fill="none" stroke="{color}" stroke-width="2"{dash} points="{}"/>"##,
                pts.join(" ")
            );
            // Markers keep short series (a few seconds) readable.
            if !ser.dashed && ser.points.len() <= 60 {
                for (x, y) in &ser.points {
                    let _ = write!(
                        s,
                        r##"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{color}"/>"##,
                        sx(*x),
                        sy(*y)
                    );
                }
            }
        }
        let ly = MT + 10.0 + i as f64 * 18.0;
        let lx = ML + pw + 12.0;
        let _ = write!(
            s,
            r##"<line x1="{lx}" y1="{ly}" x2="{}" y2="{ly}" stroke="{color}" stroke-width="3"{dash}/><text x="{}" y="{}">{}</text>"##,
            lx + 20.0,
            lx + 26.0,
            ly + 4.0,
            esc(&ser.name)
        );
    }
    s.push_str("</svg>");
    s
}

/// HdrHistogram's percentile plot: x = log10(1/(1-p)), so 90%, 99%, 99.9% ... are evenly spaced.
pub fn percentile_points(h: &Histogram<u64>, x_max: f64) -> Vec<(f64, f64)> {
    if h.is_empty() {
        return Vec::new();
    }
    h.iter_quantiles(5)
        .map(|v| {
            let q = v.quantile_iterated_to();
            let x = if q >= 1.0 {
                x_max
            } else {
                (1.0 / (1.0 - q)).log10().min(x_max)
            };
            (x, v.value_iterated_to() as f64 / 1000.0)
        })
        .collect()
}

fn percentile_ticks(x_max: f64) -> Vec<(f64, String)> {
    let labels = ["0%", "90%", "99%", "99.9%", "99.99%", "99.999%", "99.9999%"];
    labels
        .iter()
        .enumerate()
        .take_while(|(i, _)| (*i as f64) <= x_max)
        .map(|(i, l)| (i as f64, l.to_string()))
        .collect()
}

fn latency_row(name: &str, count: u64, l: &Latency) -> String {
    format!(
        "<tr><td>{}</td><td>{count}</td><td>{:.3}</td><td>{:.3}</td><td>{:.3}</td><td>{:.3}</td><td>{:.3}</td></tr>",
        esc(name),
        l.p50,
        l.p90,
        l.p99,
        l.p99_9,
        l.max
    )
}

/// The whole page. `versions` are (name, histogram) pairs plotted next to the total.
pub fn render(
    summary: &Summary,
    total: &Histogram<u64>,
    versions: &[(&str, &Histogram<u64>)],
) -> String {
    // Show up to 99.99%, or further when the run has enough samples to mean it.
    let x_max = (total.len().max(1) as f64).log10().ceil().clamp(4.0, 6.0);
    let mut lat = vec![Series {
        name: "all".into(),
        points: percentile_points(total, x_max),
        dashed: false,
    }];
    for (name, h) in versions {
        lat.push(Series {
            name: format!("version {name}"),
            points: percentile_points(h, x_max),
            dashed: false,
        });
    }
    let lat_svg = chart(
        "latency-by-percentile",
        "Latency by percentile",
        "percentile",
        "latency (ms)",
        (0.0, x_max),
        &percentile_ticks(x_max),
        &lat,
    );

    let b = &summary.timeline.buckets;
    let width = summary.timeline.bucket_s as f64;
    let t_max = b.last().map_or(1.0, |l| l.t_s as f64 + width);
    let step = nice_step(t_max);
    let mut t_ticks = Vec::new();
    let mut t = 0.0;
    while t <= t_max + 1e-9 {
        t_ticks.push((t, fmt_num(t)));
        t += step;
    }
    // Plot each bucket at its midpoint.
    let mid = |t_s: u64| t_s as f64 + width / 2.0;
    let mut thr = vec![Series {
        name: "achieved".into(),
        // A trailing sliver of a bucket (the last completions) gives a
        // meaningless rate; plot only buckets at least half covered (same below).
        points: b
            .iter()
            .filter(|x| x.span_s >= width / 2.0)
            .map(|x| (mid(x.t_s), x.rps))
            .collect(),
        dashed: false,
    }];
    if let Some(asked) = summary.rate.asked {
        // Drawn first so the achieved line stays visible on top of it.
        thr.insert(
            0,
            Series {
                name: "asked".into(),
                points: vec![(0.0, asked), (t_max, asked)],
                dashed: true,
            },
        );
    }
    let thr_svg = chart(
        "throughput",
        "Throughput over time",
        "seconds",
        "requests/s",
        (0.0, t_max),
        &t_ticks,
        &thr,
    );
    let p99 = vec![
        Series {
            name: "p99".into(),
            points: b
                .iter()
                .filter(|x| x.requests > x.errors && x.span_s >= width / 2.0)
                .map(|x| (mid(x.t_s), x.p99_ms))
                .collect(),
            dashed: false,
        },
        Series {
            name: "p50".into(),
            points: b
                .iter()
                .filter(|x| x.requests > x.errors && x.span_s >= width / 2.0)
                .map(|x| (mid(x.t_s), x.p50_ms))
                .collect(),
            dashed: true,
        },
    ];
    let p99_svg = chart(
        "p99-over-time",
        "Latency over time",
        "seconds",
        "latency (ms)",
        (0.0, t_max),
        &t_ticks,
        &p99,
    );

    let s = summary;
    let asked = s
        .rate
        .asked
        .map_or("— (closed loop)".to_string(), |a| format!("{a:.1}"));
    let mut rows = latency_row(
        "all",
        s.requests.total - s.requests.transport_errors,
        &s.latency_ms,
    );
    for (class, g) in &s.status_classes {
        rows.push_str(&latency_row(class, g.count, &g.latency_ms));
    }
    for (v, g) in &s.versions {
        rows.push_str(&latency_row(
            &format!("version {v}"),
            g.count,
            &g.latency_ms,
        ));
    }
    let errors: Vec<String> = s
        .error_counts
        .iter()
        .map(|(k, n)| format!("{k}: {n}"))
        .chain(
            s.status_counts
                .iter()
                .map(|(k, n)| format!("HTTP {k}: {n}")),
        )
        .collect();
    let thresholds = if s.thresholds.is_empty() {
        String::new()
    } else {
        let rows: String = s
            .thresholds
            .iter()
            .map(|t| {
                format!(
                    "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}{}</td></tr>\n",
                    esc(&t.expression),
                    esc(&t.observed_text()),
                    esc(&t.limit_text()),
                    t.verdict,
                    t.reason
                        .as_ref()
                        .filter(|_| t.observed.is_some())
                        .map(|r| format!(" ({})", esc(r)))
                        .unwrap_or_default()
                )
            })
            .collect();
        format!(
            "<table><tr><th>threshold</th><th>observed</th><th>limit</th><th>verdict</th></tr>\n{rows}</table>\n"
        )
    };
    format!(
        r#"<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>meshtest load: {name}</title>
<style>body{{font-family:sans-serif;margin:24px;color:#222}}table{{border-collapse:collapse;margin:8px 0 16px}}td,th{{border:1px solid #ccc;padding:3px 10px;text-align:right}}td:first-child,th:first-child{{text-align:left}}svg{{display:block;margin:12px 0}}</style>
</head><body>
<h1>meshtest load: {name}</h1>
<p>{mode} loop · {method} <code>{url}</code>{http2} · started {started} · measured {dur:.2} s · connections {conns} ({used} used) · threads {threads}</p>
{saturated}<table><tr><th>rate asked (req/s)</th><th>rate achieved (req/s)</th><th>requests</th><th>ok</th><th>errors</th></tr>
<tr><td>{asked}</td><td>{achieved:.1}</td><td>{total}</td><td>{ok}</td><td>{errs}</td></tr></table>
<table><tr><th>latency (ms)</th><th>count</th><th>p50</th><th>p90</th><th>p99</th><th>p99.9</th><th>max</th></tr>
{rows}</table>
<p>{errors}</p>
{thresholds}{lat_svg}
{thr_svg}
{p99_svg}
<p>Open-loop latency is measured from each request's intended send time (coordinated omission corrected). Timeline buckets are {bucket}s wide.</p>
</body></html>
"#,
        name = esc(&s.name),
        mode = s.mode,
        method = esc(&s.method),
        url = esc(&s.url),
        http2 = if s.http2 { " (HTTP/2)" } else { "" },
        started = esc(&s.started_at),
        dur = s.duration_s,
        conns = s.connections,
        used = s.connections_used,
        threads = s.threads,
        saturated = s
            .saturation
            .message()
            .map(|m| format!(
                "<p><strong>{}: the latencies below are the generator's own queue, not the target's; every threshold is UNCHECKED.</strong></p>\n",
                esc(&m)
            ))
            .unwrap_or_default(),
        achieved = s.rate.achieved,
        total = s.requests.total,
        ok = s.requests.ok,
        errs = s.requests.errors,
        errors = esc(&errors.join(" · ")),
        bucket = s.timeline.bucket_s,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nice_steps() {
        assert_eq!(nice_step(10.0), 2.0);
        assert_eq!(nice_step(2000.0), 500.0);
        assert_eq!(nice_step(0.0), 1.0);
    }

    #[test]
    fn chart_escapes_and_draws() {
        let svg = chart(
            "c",
            "a<b",
            "x",
            "y",
            (0.0, 1.0),
            &[(0.0, "0".into())],
            &[Series {
                name: "s".into(),
                points: vec![(0.0, 1.0), (1.0, 2.0)],
                dashed: false,
            }],
        );
        assert!(svg.contains("a&lt;b"));
        assert!(svg.contains("<polyline"));
    }
}
