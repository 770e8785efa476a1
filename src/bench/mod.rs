//! Benchmarks that `azr bench ...` and `cargo bench` run. Each reports ratios against a
//! reference measured in the same process, so figures compare across machines.

pub mod generate;
pub mod propose;
pub mod sandbox;
pub mod update;

/// p-th percentile (0..=100) of durations in milliseconds, by nearest rank.
pub fn percentile(sorted_ms: &[f64], p: f64) -> f64 {
    if sorted_ms.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted_ms.len() as f64).ceil() as usize;
    sorted_ms[rank.clamp(1, sorted_ms.len()) - 1]
}

#[cfg(test)]
mod tests {
    #[test]
    fn percentile_by_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(super::percentile(&v, 50.0), 50.0);
        assert_eq!(super::percentile(&v, 99.0), 99.0);
        assert_eq!(super::percentile(&v, 100.0), 100.0);
        assert_eq!(super::percentile(&[3.0], 99.0), 3.0);
    }
}
