//! Verdicts on random behaviour: exact (Clopper-Pearson) binomial confidence intervals, so a
//! weighted split passes or fails at a stated false-alarm rate instead of a fixed tolerance.

use statrs::distribution::{Beta, Binomial, ContinuousCDF, DiscreteCDF};

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

/// The two-sided exact binomial test of "the share is p0" at false-alarm rate `alpha`: the
/// counts of successes in `n` trials it accepts, `lo..=hi` (each tail holds at most alpha/2).
pub fn acceptance(n: u64, p0: f64, alpha: f64) -> (u64, u64) {
    if p0 <= 0.0 {
        return (0, 0);
    }
    if p0 >= 1.0 {
        return (n, n);
    }
    let b = Binomial::new(p0, n).expect("valid binomial");
    // lo: the smallest k with P(X < k) <= alpha/2 < P(X <= k)... i.e. P(X <= k-1) <= alpha/2.
    let mean = (n as f64 * p0) as u64;
    let mut lo = mean;
    while lo > 0 && b.cdf(lo - 1) > alpha / 2.0 {
        lo -= 1;
    }
    let mut hi = mean;
    // P(X >= hi + 1) = 1 - cdf(hi) must be <= alpha/2.
    while hi < n && 1.0 - b.cdf(hi) > alpha / 2.0 {
        hi += 1;
    }
    (lo, hi)
}

/// The chance the test of `p0` rejects when the true share is `p1`.
pub fn power(n: u64, p0: f64, alpha: f64, p1: f64) -> f64 {
    let (lo, hi) = acceptance(n, p0, alpha);
    let p1 = p1.clamp(0.0, 1.0);
    let b = Binomial::new(p1, n).expect("valid binomial");
    let below = if lo == 0 { 0.0 } else { b.cdf(lo - 1) };
    let above = 1.0 - b.cdf(hi);
    (below + above).clamp(0.0, 1.0)
}

/// The smallest n (to within 1%) at which the test of `p0` reaches `target` power against every
/// alternative; None past `max_n`.
pub fn sample_size(
    p0: f64,
    alpha: f64,
    alternatives: &[f64],
    target: f64,
    max_n: u64,
) -> Option<u64> {
    let enough = |n: u64| {
        alternatives
            .iter()
            .all(|&p1| power(n, p0, alpha, p1) >= target)
    };
    let mut n = 10;
    while !enough(n) {
        if n > max_n {
            return None;
        }
        n = (n as f64 * 1.01).ceil() as u64 + 1;
    }
    Some(n)
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
    fn acceptance_and_power_of_the_canary_test() {
        let n = sample_size(0.10, 0.001, &[0.05, 0.15], 0.99, 100_000).unwrap();
        assert!((1200..1700).contains(&n), "{n}");
        assert!(power(n, 0.10, 0.001, 0.15) >= 0.99);
        assert!(power(n, 0.10, 0.001, 0.05) >= 0.99);
        // At the null the rejection rate is at most alpha.
        assert!(power(n, 0.10, 0.001, 0.10) <= 0.001);
        let (lo, hi) = acceptance(n, 0.10, 0.001);
        let (cl, ch) = clopper_pearson(lo, n, 0.001);
        assert!(cl <= 0.10 && 0.10 <= ch);
        assert_eq!(acceptance(100, 0.0, 0.001), (0, 0));
        assert!(hi > lo);
    }

    #[test]
    fn a_fifty_fifty_split_is_far_from_ninety_ten() {
        let (lo, _) = clopper_pearson(200, 400, 0.001);
        assert!(lo > 0.10);
        let (lo, hi) = clopper_pearson(40, 400, 0.001);
        assert!(lo < 0.10 && hi > 0.10);
    }
}
