//! HdrHistogram percentile-distribution text (.hgrm), as the online plotter reads it.

use std::fmt::Write;

use hdrhistogram::Histogram;

/// Sub-buckets per bucket: HdrHistogram's `2 * 10^sigfig` rounded up to a power of two.
fn sub_bucket_count(h: &Histogram<u64>) -> u64 {
    (2 * 10u64.pow(u32::from(h.sigfig()))).next_power_of_two()
}

/// Renders `h` (values in µs) in the format of HdrHistogram's
/// `outputPercentileDistribution(out, 5, 1000.0)`: values in milliseconds,
/// five ticks per half distance, and a footer with mean, max and layout.
pub fn render(h: &Histogram<u64>) -> String {
    const SCALE: f64 = 1000.0;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:>12} {:>14} {:>10} {:>14}\n",
        "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
    );
    let mut cumulative = 0u64;
    if !h.is_empty() {
        for v in h.iter_quantiles(5) {
            cumulative += v.count_since_last_iteration();
            let q = v.quantile_iterated_to();
            let value = v.value_iterated_to() as f64 / SCALE;
            if q < 1.0 {
                let _ = writeln!(
                    out,
                    "{value:12.3} {q:2.12} {cumulative:10} {:14.2}",
                    1.0 / (1.0 - q)
                );
            } else {
                // The 100th percentile has no finite 1/(1-p); HdrHistogram omits it.
                let _ = writeln!(out, "{value:12.3} {q:2.12} {cumulative:10}");
            }
        }
    }
    let (mean, stdev, max) = if h.is_empty() {
        (0.0, 0.0, 0.0)
    } else {
        (h.mean() / SCALE, h.stdev() / SCALE, h.max() as f64 / SCALE)
    };
    let _ = writeln!(
        out,
        "#[Mean    = {mean:12.3}, StdDeviation   = {stdev:12.3}]"
    );
    let _ = writeln!(
        out,
        "#[Max     = {max:12.3}, Total count    = {:12}]",
        h.len()
    );
    let _ = writeln!(
        out,
        "#[Buckets = {:12}, SubBuckets     = {:12}]",
        h.buckets(),
        sub_bucket_count(h)
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::new_histogram;

    #[test]
    fn format_matches_hdrhistogram() {
        let mut h = new_histogram();
        for us in 1..=1000u64 {
            h.record(us * 10).unwrap();
        }
        let text = render(&h);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "       Value     Percentile TotalCount 1/(1-Percentile)"
        );
        assert_eq!(lines[1], "");
        // First row: the minimum at percentile 0.
        assert_eq!(
            lines[2],
            "       0.010 0.000000000000          1           1.00"
        );
        // Rows are value, percentile, cumulative count, 1/(1-p); the last has 3 columns.
        let rows: Vec<Vec<&str>> = lines[2..]
            .iter()
            .take_while(|l| !l.starts_with('#'))
            .map(|l| l.split_whitespace().collect())
            .collect();
        assert!(rows.len() > 20);
        for r in &rows[..rows.len() - 1] {
            assert_eq!(r.len(), 4, "{r:?}");
        }
        let last = rows.last().unwrap();
        assert_eq!(last.len(), 3);
        assert_eq!(last[1], "1.000000000000");
        assert_eq!(last[2], "1000");
        assert_eq!(last[0], "10.007");
        // Percentiles and counts never go down.
        let ps: Vec<f64> = rows.iter().map(|r| r[1].parse().unwrap()).collect();
        assert!(ps.windows(2).all(|w| w[0] <= w[1]));
        let footer: Vec<&&str> = lines.iter().filter(|l| l.starts_with("#[")).collect();
        assert_eq!(footer.len(), 3);
        assert!(
            footer[0].starts_with("#[Mean    =        5.00"),
            "{}",
            footer[0]
        );
        assert_eq!(
            *footer[1],
            "#[Max     =       10.007, Total count    =         1000]"
        );
        assert_eq!(
            *footer[2],
            format!(
                "#[Buckets = {:12}, SubBuckets     =         2048]",
                h.buckets()
            )
        );
    }

    #[test]
    fn empty_histogram_has_header_and_footer() {
        let text = render(&new_histogram());
        assert!(text.starts_with("       Value"));
        assert!(text.contains("Total count    =            0]"));
    }
}
