//! Advantage estimators: pure functions from rewards (and group labels) to one advantage per
//! completion. Every completion's tokens share its advantage (outcome reward, no critic).

use serde::{Deserialize, Serialize};

/// Which estimator turns rewards into advantages.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Estimator {
    /// AZR's Task-Relative REINFORCE++: normalise within each (task type x role) group of the
    /// batch, A = (r - mean) / (std + eps). Six baselines, one per group.
    #[default]
    #[serde(rename = "trr++")]
    TrrPlusPlus,
    /// GRPO: normalise within the completions that share a prompt.
    Grpo,
    /// Dr. GRPO: like GRPO without the division by the std (Liu et al., 2025).
    DrGrpo,
}

/// Added to the std so groups with (almost) equal rewards give finite advantages.
pub const EPS: f32 = 1e-6;

/// A = (r - mean_g) / (std_g + eps) within each group g (population std), or r - mean_g when
/// `scale` is false. A group of one, or of equal rewards, gets advantage 0, never NaN.
pub fn group_normalised(rewards: &[f32], groups: &[u64], scale: bool) -> Vec<f32> {
    assert_eq!(rewards.len(), groups.len(), "one group label per reward");
    let mut stats: std::collections::HashMap<u64, (f64, f64, usize)> = Default::default();
    for (&r, &g) in rewards.iter().zip(groups) {
        let e = stats.entry(g).or_default();
        e.0 += r as f64;
        e.1 += (r as f64) * (r as f64);
        e.2 += 1;
    }
    rewards
        .iter()
        .zip(groups)
        .map(|(&r, g)| {
            let (sum, sq, n) = stats[g];
            let mean = sum / n as f64;
            let centred = r as f64 - mean;
            if !scale {
                return centred as f32;
            }
            let var = (sq / n as f64 - mean * mean).max(0.0);
            (centred / (var.sqrt() + EPS as f64)) as f32
        })
        .collect()
}

/// Advantages for a batch: `task_groups` label each completion's (type x role) for TRR++,
/// `prompt_groups` its prompt for GRPO.
pub fn advantages(
    estimator: Estimator,
    rewards: &[f32],
    task_groups: &[u64],
    prompt_groups: &[u64],
) -> Vec<f32> {
    match estimator {
        Estimator::TrrPlusPlus => group_normalised(rewards, task_groups, true),
        Estimator::Grpo => group_normalised(rewards, prompt_groups, true),
        Estimator::DrGrpo => group_normalised(rewards, prompt_groups, false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: &[f32], b: &[f32]) -> bool {
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-4)
    }

    #[test]
    fn grpo_by_hand() {
        // Group 0: rewards 1, 0, 1, 0 -> mean 0.5, std 0.5 -> +-1. Group 1: 2, 4 -> mean 3, std 1.
        let a = advantages(
            Estimator::Grpo,
            &[1., 0., 1., 0., 2., 4.],
            &[0; 6],
            &[0, 0, 0, 0, 1, 1],
        );
        assert!(close(&a, &[1., -1., 1., -1., -1., 1.]), "{a:?}");
    }

    #[test]
    fn dr_grpo_only_centres() {
        let a = advantages(Estimator::DrGrpo, &[1., 0., 0., 0.], &[0; 4], &[0; 4]);
        assert!(close(&a, &[0.75, -0.25, -0.25, -0.25]), "{a:?}");
    }

    #[test]
    fn trr_uses_one_baseline_per_task_group_not_per_prompt() {
        // Two prompts in one (type x role) group: TRR++ pools them; GRPO would not.
        let rewards = [1., 1., 0., 0.];
        let trr = advantages(Estimator::TrrPlusPlus, &rewards, &[7; 4], &[0, 0, 1, 1]);
        assert!(close(&trr, &[1., 1., -1., -1.]), "{trr:?}");
        let grpo = advantages(Estimator::Grpo, &rewards, &[7; 4], &[0, 0, 1, 1]);
        assert!(close(&grpo, &[0.; 4]), "{grpo:?}");
    }

    #[test]
    fn equal_rewards_and_singletons_give_zero_not_nan() {
        for estimator in [Estimator::TrrPlusPlus, Estimator::Grpo, Estimator::DrGrpo] {
            let a = advantages(
                estimator,
                &[0.5, 0.5, 0.5, -1.0],
                &[0, 0, 0, 1],
                &[0, 0, 0, 1],
            );
            assert!(
                a.iter().all(|x| x.is_finite() && x.abs() < 1e-6),
                "{estimator:?}: {a:?}"
            );
        }
    }

    #[test]
    fn estimator_names_in_config() {
        let e: Estimator = serde_json::from_str("\"trr++\"").unwrap();
        assert_eq!(e, Estimator::TrrPlusPlus);
        let e: Estimator = serde_json::from_str("\"dr-grpo\"").unwrap();
        assert_eq!(e, Estimator::DrGrpo);
    }
}
