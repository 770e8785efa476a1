//! One policy update from a batch of rollouts: advantages, then for each epoch the clipped loss
//! over micro-batches with gradients summed across them, then one clipped AdamW step.

use std::collections::HashMap;
use std::time::Instant;

use candle_core::backprop::GradStore;
use candle_core::{Result, Var};
use serde::{Deserialize, Serialize};

use super::advantage::{advantages, Estimator};
use super::loss::{clipped_surrogate, kl_penalty, Aggregation, LossConfig, LossStats};
use super::optim::AdamW;
use crate::model::logprobs::{pass_size, score, Entropy, Scored};
use crate::model::{Grad, Model, Products, WeightGrads};

/// One sampled completion and what it earned.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rollout {
    pub prompt: Vec<u32>,
    pub completion: Vec<u32>,
    /// log p of each completion token at sampling time.
    pub logprobs: Vec<f32>,
    /// log p of each completion token under the frozen reference; empty unless the KL
    /// penalty is on.
    #[serde(default)]
    pub ref_logprobs: Vec<f32>,
    pub reward: f32,
    /// The (task type x role) group, TRR++'s baseline key.
    pub task_group: u64,
    /// The prompt it answers, GRPO's baseline key.
    pub prompt_group: u64,
}

/// `[rl]`
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpdateConfig {
    pub estimator: Estimator,
    pub loss: LossConfig,
    /// Completions per forward/backward pass; bounds memory whatever the batch size.
    /// Completions of one prompt in a pass share its row (the prompt is computed once), so a
    /// micro-batch of `selfplay.samples` lets a task's samples share their prompt.
    pub micro_batch: usize,
    /// Positions per pass (rows x widest row, after that sharing), 0 for no limit: a pass
    /// closes before it would exceed this, unless it holds a single completion.
    pub pass_tokens: usize,
    /// Optimisation passes over each batch (each pass is one optimiser step).
    pub epochs: usize,
    /// Temperature the rollouts were sampled at (their log-probs are under logits / T).
    pub temperature: f32,
    /// Weight of the entropy bonus (0 = off, as in AZR); the loss subtracts coef x mean entropy.
    pub entropy_coef: f64,
    /// The large matrix products of an f32 update multiply bf16 roundings of their operands
    /// with f32 sums (bf16 autocast, as AZR's bf16 training does), where the CPU multiplies
    /// bf16 pairs (AMX tiles, AVX-512 BF16; the default); elsewhere, and with false, they stay
    /// exact f32. The weights,
    /// gradients' sums and optimiser state stay f32 either way.
    pub bf16_products: bool,
}

impl Default for UpdateConfig {
    fn default() -> Self {
        Self {
            estimator: Estimator::TrrPlusPlus,
            loss: LossConfig::default(),
            micro_batch: 4,
            pass_tokens: 1600,
            epochs: 1,
            temperature: 0.7,
            entropy_coef: 0.0,
            bf16_products: true,
        }
    }
}

/// What an update did.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct UpdateMetrics {
    pub loss: f64,
    pub grad_norm: f64,
    pub lr: f64,
    pub clip_frac_low: f64,
    pub clip_frac_high: f64,
    pub approx_kl: f64,
    pub reward_mean: f64,
    pub advantage_mean: f64,
    pub advantage_std: f64,
    /// Mean entropy of the policy over the tokens it was trained on (none: nothing trained).
    pub entropy: Option<f64>,
    /// Mean per-token KL(policy || reference), when the KL penalty is on.
    pub kl_to_reference: f64,
    /// Reward and advantage statistics per (task type x role) group.
    pub groups: Vec<GroupMetrics>,
    /// Completion tokens in the batch.
    pub tokens: usize,
    /// Of those, the tokens that went through forward and backward: rollouts whose advantage
    /// is 0 add nothing to the gradient and are left out (unless a KL or entropy term is on).
    pub trained_tokens: usize,
    /// Positions the forward/backward passes computed for them, prompts and padding included
    /// (rows x widest row of each pass, over every epoch): what the update's time follows.
    pub trained_positions: usize,
    /// Trained tokens per second of the update.
    pub tokens_per_sec: f64,
    /// Peak resident memory of the process so far, in MiB (Linux; 0 elsewhere).
    pub peak_rss_mb: f64,
}

/// Statistics of one (task type x role) group of a batch.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct GroupMetrics {
    pub group: u64,
    pub count: usize,
    pub reward_mean: f64,
    pub reward_std: f64,
    pub advantage_mean: f64,
    pub advantage_std: f64,
}

fn group_metrics(rewards: &[f32], adv: &[f32], groups: &[u64]) -> Vec<GroupMetrics> {
    let mut ids: Vec<u64> = groups.to_vec();
    ids.sort_unstable();
    ids.dedup();
    ids.into_iter()
        .map(|group| {
            let pick = |xs: &[f32]| -> Vec<f32> {
                xs.iter()
                    .zip(groups)
                    .filter(|(_, g)| **g == group)
                    .map(|(x, _)| *x)
                    .collect()
            };
            let (reward_mean, reward_std) = mean_std(&pick(rewards));
            let (advantage_mean, advantage_std) = mean_std(&pick(adv));
            GroupMetrics {
                group,
                count: groups.iter().filter(|g| **g == group).count(),
                reward_mean,
                reward_std,
                advantage_mean,
                advantage_std,
            }
        })
        .collect()
}

fn mean_std(xs: &[f32]) -> (f64, f64) {
    let n = xs.len().max(1) as f64;
    let mean = xs.iter().map(|&x| x as f64).sum::<f64>() / n;
    let var = xs.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n;
    (mean, var.sqrt())
}

/// Indices of the rollouts that carry tokens (empty completions have nothing to score).
fn with_tokens(rollouts: &[Rollout]) -> Vec<usize> {
    (0..rollouts.len())
        .filter(|&i| !rollouts[i].completion.is_empty())
        .collect()
}

/// The (prompt, completion) pairs of some rollouts, for scoring.
fn scored<'a>(rollouts: &'a [Rollout], indices: &[usize]) -> Vec<Scored<'a>> {
    indices
        .iter()
        .map(|&i| Scored {
            prompt: &rollouts[i].prompt,
            completion: &rollouts[i].completion,
        })
        .collect()
}

/// The forward/backward passes over the rollouts at `live`: those of one prompt next to each
/// other (in order of first appearance), cut into passes of at most `micro_batch` completions
/// and `pass_tokens` positions.
pub fn passes(rollouts: &[Rollout], live: &[usize], config: &UpdateConfig) -> Vec<Vec<usize>> {
    let mut first: HashMap<&[u32], usize> = HashMap::new();
    for (k, &i) in live.iter().enumerate() {
        first.entry(&rollouts[i].prompt).or_insert(k);
    }
    let mut order = live.to_vec();
    order.sort_by_key(|&i| first[rollouts[i].prompt.as_slice()]);
    let mut passes = Vec::new();
    let mut pass: Vec<usize> = Vec::new();
    for i in order {
        pass.push(i);
        let too_big = pass.len() > config.micro_batch.max(1)
            || (config.pass_tokens > 0 && pass_size(&scored(rollouts, &pass)) > config.pass_tokens);
        if too_big && pass.len() > 1 {
            pass.pop();
            passes.push(std::mem::replace(&mut pass, vec![i]));
        }
    }
    if !pass.is_empty() {
        passes.push(pass);
    }
    passes
}

/// Fills each rollout's `ref_logprobs` from a frozen reference model (no gradients, in
/// micro-batches). Load the reference in bf16 to hold it in half the policy's f32 memory.
pub fn reference_logprobs(
    reference: &Model,
    rollouts: &mut [Rollout],
    config: &UpdateConfig,
) -> Result<()> {
    let live = with_tokens(rollouts);
    for chunk in &passes(rollouts, &live, config) {
        let batch = scored(rollouts, chunk);
        let logp: Vec<f32> = score(
            reference,
            &batch,
            config.temperature,
            Grad::Off,
            Entropy::Skip,
        )?
        .logprobs
        .to_dtype(candle_core::DType::F32)?
        .to_vec1()?;
        let mut offset = 0;
        for &i in chunk.iter() {
            let n = rollouts[i].completion.len();
            rollouts[i].ref_logprobs = logp[offset..offset + n].to_vec();
            offset += n;
        }
    }
    Ok(())
}

/// Runs one update of `model` on `rollouts`. Rollouts with empty completions carry no tokens
/// and are skipped (their rewards still shape the advantages of the others), and so are those
/// whose advantage is 0 when the loss has no KL or entropy term: every term of the clipped
/// surrogate is a multiple of the advantage, so they change neither the loss nor its gradient
/// (the normaliser still counts their tokens). With nothing left, AdamW steps on a zero
/// gradient, as it would have on the whole batch.
pub fn update(
    model: &Model,
    optimizer: &mut AdamW,
    rollouts: &[Rollout],
    config: &UpdateConfig,
) -> Result<UpdateMetrics> {
    let started = Instant::now();
    let rewards: Vec<f32> = rollouts.iter().map(|r| r.reward).collect();
    let task_groups: Vec<u64> = rollouts.iter().map(|r| r.task_group).collect();
    let prompt_groups: Vec<u64> = rollouts.iter().map(|r| r.prompt_group).collect();
    let adv = advantages(config.estimator, &rewards, &task_groups, &prompt_groups);
    let live = with_tokens(rollouts);
    let tokens: usize = live.iter().map(|&i| rollouts[i].completion.len()).sum();
    let normaliser = match config.loss.aggregation {
        Aggregation::TokenMean => tokens,
        Aggregation::SequenceMean => live.len(),
    };
    let named = model.named_vars();
    let params: Vec<&Var> = named.iter().map(|(_, v)| *v).collect();
    let (reward_mean, _) = mean_std(&rewards);
    let (advantage_mean, advantage_std) = mean_std(&adv);
    let mut metrics = UpdateMetrics {
        reward_mean,
        advantage_mean,
        advantage_std,
        groups: group_metrics(&rewards, &adv, &task_groups),
        tokens,
        ..Default::default()
    };
    if live.is_empty() {
        return Ok(metrics);
    }
    let regularised = config.loss.kl_coef != 0.0 || config.entropy_coef != 0.0;
    let trained: Vec<usize> = live
        .iter()
        .copied()
        .filter(|&i| regularised || adv[i] != 0.0)
        .collect();
    metrics.trained_tokens = trained.iter().map(|&i| rollouts[i].completion.len()).sum();
    let mut stats = LossStats::default();
    let mut entropy_sum = 0f64;
    let mut kl_sum = 0f64;
    if config.loss.kl_coef != 0.0 {
        if let Some(&i) = live
            .iter()
            .find(|&&i| rollouts[i].ref_logprobs.len() != rollouts[i].completion.len())
        {
            candle_core::bail!(
                "the KL penalty is on (rl.loss.kl_coef = {}) but rollout {i} has {} reference log-probs for {} tokens",
                config.loss.kl_coef,
                rollouts[i].ref_logprobs.len(),
                rollouts[i].completion.len()
            );
        }
    }
    let passes = passes(rollouts, &trained, config);
    metrics.trained_positions = passes
        .iter()
        .map(|p| pass_size(&scored(rollouts, p)))
        .sum::<usize>()
        * config.epochs.max(1);
    for _ in 0..config.epochs.max(1) {
        let mut grads: Option<GradStore> = None;
        // Matrices' gradients summed in place over the passes, where the device allows it.
        let products = match config.bf16_products {
            true => Products::Bf16,
            false => Products::F32,
        };
        let sinks = match optimizer.accumulators.take() {
            Some(kept) => Some(kept.reset(products)?),
            None => WeightGrads::new(&params, products)?,
        };
        let grad = sinks.as_ref().map_or(Grad::Graph, Grad::Into);
        let mut loss_sum = 0f64;
        for chunk in &passes {
            let pass_started = Instant::now();
            let batch = scored(rollouts, chunk);
            // The entropy is a metric; it needs a gradient only as a bonus in the loss.
            let entropy_mode = match config.entropy_coef == 0.0 {
                true => Entropy::Value,
                false => Entropy::WithGrad,
            };
            let scores = score(model, &batch, config.temperature, grad, entropy_mode)?;
            let logp = scores.logprobs;
            let entropy = scores.entropy.expect("entropy was asked for");
            let old: Vec<f32> = chunk
                .iter()
                .flat_map(|&i| rollouts[i].logprobs.iter().copied())
                .collect();
            let token_adv: Vec<f32> = chunk
                .iter()
                .flat_map(|&i| std::iter::repeat_n(adv[i], rollouts[i].completion.len()))
                .collect();
            let lengths: Vec<usize> = chunk
                .iter()
                .map(|&i| rollouts[i].completion.len())
                .collect();
            let (mut loss, s) =
                clipped_surrogate(&logp, &old, &token_adv, &lengths, normaliser, &config.loss)?;
            entropy_sum += entropy
                .to_dtype(candle_core::DType::F64)?
                .sum_all()?
                .to_scalar::<f64>()?;
            if config.loss.kl_coef != 0.0 {
                let reference: Vec<f32> = chunk
                    .iter()
                    .flat_map(|&i| rollouts[i].ref_logprobs.iter().copied())
                    .collect();
                let (kl, total) = kl_penalty(
                    &logp,
                    &reference,
                    &lengths,
                    normaliser,
                    config.loss.aggregation,
                )?;
                kl_sum += total;
                loss = (&loss + (kl * config.loss.kl_coef)?)?;
            }
            if config.entropy_coef != 0.0 {
                let bonus = (entropy.sum_all()? * (config.entropy_coef / tokens as f64))?;
                loss = (&loss - bonus.to_dtype(loss.dtype())?)?;
            }
            loss_sum += loss.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()?;
            stats += s;
            // Backward per micro-batch frees its graph before the next forward.
            let step_grads = crate::kernels::on_workers(loss.device(), || loss.backward())?;
            match &mut grads {
                Some(total) => crate::rl::optim::accumulate(total, &step_grads, &params)?,
                None => grads = Some(step_grads),
            }
            tracing::debug!(
                completions = chunk.len(),
                positions = pass_size(&batch),
                seconds = pass_started.elapsed().as_secs_f64(),
                rss_mb = crate::memory::rss_mb(),
                "update pass"
            );
        }
        metrics.lr = optimizer.config.lr_at(optimizer.step);
        let mut grads = match grads {
            Some(g) => g,
            None => zero_gradients(&params)?,
        };
        if let Some(sinks) = &sinks {
            sinks.add_to(&mut grads)?;
        }
        metrics.grad_norm = optimizer.step(&grads)?;
        drop(grads);
        optimizer.accumulators = sinks.map(WeightGrads::without_packs);
        tracing::debug!(rss_mb = crate::memory::rss_mb(), "optimizer step");
        metrics.loss = loss_sum;
    }
    let counted = stats.tokens.max(1) as f64;
    metrics.clip_frac_low = stats.clipped_low as f64 / counted;
    metrics.clip_frac_high = stats.clipped_high as f64 / counted;
    metrics.approx_kl = stats.approx_kl / counted;
    metrics.entropy = (stats.tokens > 0).then(|| entropy_sum / counted);
    metrics.kl_to_reference = kl_sum / counted;
    metrics.peak_rss_mb = crate::memory::peak_rss_mb();
    metrics.tokens_per_sec =
        (metrics.trained_tokens * config.epochs.max(1)) as f64 / started.elapsed().as_secs_f64();
    Ok(metrics)
}

/// A gradient of zeros for every parameter.
fn zero_gradients(params: &[&Var]) -> Result<GradStore> {
    let mut grads = GradStore::default();
    for p in params {
        grads.insert(p.as_tensor(), p.zeros_like()?);
    }
    Ok(grads)
}

#[cfg(test)]
mod tests;
