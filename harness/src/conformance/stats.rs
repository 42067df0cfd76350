//! Verdicts on random behaviour: exact (Clopper-Pearson) binomial confidence intervals, so a
//! weighted split passes or fails at a stated false-alarm rate instead of a fixed tolerance.

use statrs::distribution::{Beta, ContinuousCDF};

/// The two-sided Clopper-Pearson interval for `k` successes in `n` trials at confidence
/// `1 - alpha`: if the true share is p, the interval misses p with probability at most alpha.
pub fn clopper_pearson(k: u64, n: u64, alpha: f64) -> (f64, f64) {
    assert!(
        n > 0 && k <= n && alpha > 0.0 && alpha < 1.0,
        "k={k} n={n} alpha={alpha}"
    );
    let (k, n) = (k as f64, n as f64);
    let lower = if k == 0.0 {
        0.0
    } else {
        Beta::new(k, n - k + 1.0)
            .expect("valid beta")
            .inverse_cdf(alpha / 2.0)
    };
    let upper = if k == n {
        1.0
    } else {
        Beta::new(k + 1.0, n - k)
            .expect("valid beta")
            .inverse_cdf(1.0 - alpha / 2.0)
    };
    (lower, upper)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_intervals() {
        // Reference values from R's binom.test(10, 100, conf.level = 0.95).
        let (lo, hi) = clopper_pearson(10, 100, 0.05);
        assert!(
            (lo - 0.04900469).abs() < 1e-6 && (hi - 0.17622260).abs() < 1e-6,
            "{lo} {hi}"
        );
        assert_eq!(clopper_pearson(0, 10, 0.05).0, 0.0);
        assert_eq!(clopper_pearson(10, 10, 0.05).1, 1.0);
    }

    #[test]
    fn a_fifty_fifty_split_is_far_from_ninety_ten() {
        let (lo, _) = clopper_pearson(200, 400, 0.001);
        assert!(lo > 0.10);
        let (lo, hi) = clopper_pearson(40, 400, 0.001);
        assert!(lo < 0.10 && hi > 0.10);
    }
}
