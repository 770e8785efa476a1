//! The policy loss: PPO's clipped surrogate on token-level importance ratios against the
//! log-probs recorded at sampling time, with DAPO's separate low/high clip ranges, aggregated
//! per token or per sequence. Written for micro-batches: the caller passes the normaliser of the
//! whole batch, so micro-batch losses add up to the batch loss.

use candle_core::{DType, Result, Tensor};
use serde::{Deserialize, Serialize};

/// How per-token losses become one number.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Aggregation {
    /// Every token of the batch weighs the same (DAPO).
    #[default]
    TokenMean,
    /// Every sequence weighs the same, its tokens averaged first (GRPO as published).
    SequenceMean,
}

/// `[rl.loss]`
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LossConfig {
    /// Ratio clip below 1: ratios under 1 - clip_low stop pushing down.
    pub clip_low: f32,
    /// Ratio clip above 1 (DAPO's clip-higher): ratios over 1 + clip_high stop pushing up.
    pub clip_high: f32,
    pub aggregation: Aggregation,
    /// Weight of the KL penalty to the frozen reference (0 = off, as in AZR). When on, rollouts
    /// must carry the reference's log-probs.
    pub kl_coef: f64,
}

impl Default for LossConfig {
    fn default() -> Self {
        Self {
            clip_low: 0.2,
            clip_high: 0.28,
            aggregation: Aggregation::TokenMean,
            kl_coef: 0.0,
        }
    }
}

/// Diagnostics of one loss evaluation (sums, so micro-batches add up; divide by `tokens`).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LossStats {
    pub tokens: usize,
    /// Tokens whose ratio was clipped from below (A < 0, ratio < 1 - clip_low).
    pub clipped_low: usize,
    /// Tokens whose ratio was clipped from above (A > 0, ratio > 1 + clip_high).
    pub clipped_high: usize,
    /// Sum over tokens of the k3 estimator of KL(old || new): (r - 1) - log r.
    pub approx_kl: f64,
}

impl std::ops::AddAssign for LossStats {
    fn add_assign(&mut self, o: Self) {
        self.tokens += o.tokens;
        self.clipped_low += o.clipped_low;
        self.clipped_high += o.clipped_high;
        self.approx_kl += o.approx_kl;
    }
}

/// The clipped surrogate for one micro-batch.
///
/// `logp` (n,) current log-probs (differentiable); `old_logp` (n,) from sampling; `advantages`
/// (n,) each token's sequence advantage; `lengths` the sequences' token counts (sum n);
/// `normaliser` the batch's token count (token-mean) or sequence count (sequence-mean).
pub fn clipped_surrogate(
    logp: &Tensor,
    old_logp: &[f32],
    advantages: &[f32],
    lengths: &[usize],
    normaliser: usize,
    config: &LossConfig,
) -> Result<(Tensor, LossStats)> {
    let device = logp.device();
    let n = old_logp.len();
    let old = Tensor::new(old_logp, device)?.to_dtype(logp.dtype())?;
    let adv = Tensor::new(advantages, device)?.to_dtype(logp.dtype())?;
    let ratio = (logp - &old)?.exp()?;
    let unclipped = (&ratio * &adv)?;
    let clipped =
        (ratio.clamp(1.0 - config.clip_low as f64, 1.0 + config.clip_high as f64)? * &adv)?;
    let per_token = unclipped.minimum(&clipped)?.neg()?;
    let loss = aggregate(&per_token, lengths, normaliser, config.aggregation)?;

    let r: Vec<f32> = ratio.to_dtype(DType::F32)?.to_vec1()?;
    let mut stats = LossStats {
        tokens: n,
        ..Default::default()
    };
    for (&r, &a) in r.iter().zip(advantages) {
        stats.clipped_low += usize::from(a < 0.0 && r < 1.0 - config.clip_low);
        stats.clipped_high += usize::from(a > 0.0 && r > 1.0 + config.clip_high);
        stats.approx_kl += (r as f64 - 1.0) - (r as f64).ln();
    }
    Ok((loss, stats))
}

/// Sums per-token values (n,) with each token's aggregation weight: 1 / normaliser per token
/// (token-mean), or 1 / (length x normaliser) (sequence-mean).
fn aggregate(
    per_token: &Tensor,
    lengths: &[usize],
    normaliser: usize,
    aggregation: Aggregation,
) -> Result<Tensor> {
    let n = per_token.dim(0)?;
    let weights: Vec<f32> = match aggregation {
        Aggregation::TokenMean => vec![1.0 / normaliser as f32; n],
        Aggregation::SequenceMean => lengths
            .iter()
            .flat_map(|&len| std::iter::repeat_n(1.0 / (len as f32 * normaliser as f32), len))
            .collect(),
    };
    let weights =
        Tensor::new(weights.as_slice(), per_token.device())?.to_dtype(per_token.dtype())?;
    (per_token * weights)?.sum_all()
}

/// KL penalty to a frozen reference, aggregated like the surrogate: the k3 estimator of
/// KL(policy || reference) per token, exp(ref - logp) - (ref - logp) - 1 (non-negative,
/// unbiased; Schulman 2020). Returns the term and the sum of per-token KLs.
pub fn kl_penalty(
    logp: &Tensor,
    ref_logp: &[f32],
    lengths: &[usize],
    normaliser: usize,
    aggregation: Aggregation,
) -> Result<(Tensor, f64)> {
    let reference = Tensor::new(ref_logp, logp.device())?.to_dtype(logp.dtype())?;
    let diff = (reference - logp)?;
    let per_token = ((diff.exp()? - &diff)? - 1.0)?;
    let total = per_token
        .to_dtype(DType::F64)?
        .sum_all()?
        .to_scalar::<f64>()?;
    Ok((
        aggregate(&per_token, lengths, normaliser, aggregation)?,
        total,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn at_ratio_one_the_gradient_is_the_policy_gradient() {
        // d/dlogp of -(exp(logp - old) * A) / n at logp = old is -A / n.
        let logp = Var::new(&[-1.0f32, -2.0, -0.5], &Device::Cpu).unwrap();
        let old = [-1.0, -2.0, -0.5];
        let adv = [1.0, -2.0, 0.5];
        let (loss, stats) =
            clipped_surrogate(&logp, &old, &adv, &[3], 3, &LossConfig::default()).unwrap();
        let grad: Vec<f32> = loss
            .backward()
            .unwrap()
            .get(&logp)
            .unwrap()
            .to_vec1()
            .unwrap();
        for (g, a) in grad.iter().zip(adv) {
            assert!((g + a / 3.0).abs() < 1e-6, "{grad:?}");
        }
        assert_eq!((stats.clipped_low, stats.clipped_high), (0, 0));
        assert!(stats.approx_kl.abs() < 1e-9);
    }

    #[test]
    fn clipping_stops_the_gradient_outside_the_trust_region() {
        // Ratio e^0.5 > 1.28 with A > 0: clipped, no gradient. Ratio e^-0.5 < 0.8 with A > 0:
        // the unclipped term is smaller, so it still pushes up.
        let logp = Var::new(&[0.5f32, -0.5, 0.5], &Device::Cpu).unwrap();
        let old = [0.0, 0.0, 0.0];
        let adv = [1.0, 1.0, -1.0];
        let (loss, stats) =
            clipped_surrogate(&logp, &old, &adv, &[3], 3, &LossConfig::default()).unwrap();
        let grad: Vec<f32> = loss
            .backward()
            .unwrap()
            .get(&logp)
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(grad[0], 0.0);
        assert!(grad[1] < 0.0);
        // Ratio e^0.5 with A < 0: unclipped -e^0.5 is the minimum, so the gradient flows.
        assert!(grad[2] > 0.0);
        assert_eq!(stats.clipped_high, 1);
    }

    #[test]
    fn gradient_matches_finite_differences() {
        let config = LossConfig {
            aggregation: Aggregation::SequenceMean,
            ..Default::default()
        };
        let values = [-0.9f64, -1.3, -0.2, -2.0, -0.7];
        let old = [-1.0f32, -1.0, -0.1, -2.2, -0.5];
        let adv = [0.7f32, 0.7, -1.2, -1.2, -1.2];
        let lengths = [2, 3];
        let eval = |v: &[f64]| {
            let t = Tensor::new(v, &Device::Cpu).unwrap();
            clipped_surrogate(&t, &old, &adv, &lengths, 2, &config)
                .unwrap()
                .0
                .to_scalar::<f64>()
                .unwrap()
        };
        let var = Var::new(&values, &Device::Cpu).unwrap();
        let (loss, _) = clipped_surrogate(&var, &old, &adv, &lengths, 2, &config).unwrap();
        let grad: Vec<f64> = loss
            .backward()
            .unwrap()
            .get(&var)
            .unwrap()
            .to_vec1()
            .unwrap();
        for i in 0..values.len() {
            let h = 1e-6;
            let (mut up, mut down) = (values, values);
            up[i] += h;
            down[i] -= h;
            let numeric = (eval(&up) - eval(&down)) / (2.0 * h);
            assert!(
                (numeric - grad[i]).abs() < 1e-6,
                "{i}: {numeric} vs {}",
                grad[i]
            );
        }
    }

    #[test]
    fn micro_batch_losses_add_up_to_the_batch_loss() {
        let config = LossConfig::default();
        let logp = Tensor::new(&[-1.0f32, -0.3, -2.0, -0.1], &Device::Cpu).unwrap();
        let old = [-1.1, -0.2, -2.0, -0.3];
        let adv = [1.0, 1.0, -0.5, -0.5];
        let whole = clipped_surrogate(&logp, &old, &adv, &[2, 2], 4, &config)
            .unwrap()
            .0;
        let a = clipped_surrogate(
            &logp.narrow(0, 0, 2).unwrap(),
            &old[..2],
            &adv[..2],
            &[2],
            4,
            &config,
        )
        .unwrap()
        .0;
        let b = clipped_surrogate(
            &logp.narrow(0, 2, 2).unwrap(),
            &old[2..],
            &adv[2..],
            &[2],
            4,
            &config,
        )
        .unwrap()
        .0;
        let sum = (a + b).unwrap().to_scalar::<f32>().unwrap();
        assert!((sum - whole.to_scalar::<f32>().unwrap()).abs() < 1e-6);
    }

    #[test]
    fn kl_penalty_is_zero_at_the_reference_and_its_gradient_is_right() {
        let values = [-1.0f64, -0.5, -2.0];
        let reference = [-1.0f32, -0.5, -2.0];
        let t = Tensor::new(&values, &Device::Cpu).unwrap();
        let (term, total) = kl_penalty(&t, &reference, &[3], 3, Aggregation::TokenMean).unwrap();
        assert!(term.to_scalar::<f64>().unwrap().abs() < 1e-12 && total.abs() < 1e-12);
        // Away from the reference: positive, with d/dlogp = (1 - exp(ref - logp)) / n.
        let far = [-1.5f32, 0.0, -2.0];
        let var = Var::new(&values, &Device::Cpu).unwrap();
        let (term, total) = kl_penalty(&var, &far, &[3], 3, Aggregation::TokenMean).unwrap();
        assert!(total > 0.0);
        let grad: Vec<f64> = term
            .backward()
            .unwrap()
            .get(&var)
            .unwrap()
            .to_vec1()
            .unwrap();
        for ((g, v), r) in grad.iter().zip(values).zip(far) {
            let expected = (1.0 - (r as f64 - v).exp()) / 3.0;
            assert!((g - expected).abs() < 1e-6, "{g} vs {expected}");
        }
    }
}
