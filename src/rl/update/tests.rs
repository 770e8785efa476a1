use candle_core::{DType, Device};

use super::*;

/// The temperature these tests sample rollouts at (and so train at).
const SAMPLED_AT: f32 = 1.0;
use crate::generate::{generate, Digits, GenerateConfig};
use crate::model::config::{Architecture, ModelConfig};
use crate::rl::advantage::advantages;
use crate::rl::loss::clipped_surrogate;
use crate::rl::optim::OptimConfig;

const TARGET: u32 = 7;

/// A tiny random model and an AdamW over all its weights.
fn policy(
    arch: Architecture,
    tied: bool,
    seed: u64,
    dtype: DType,
    optim: OptimConfig,
) -> (Model, AdamW) {
    let model = Model::random(ModelConfig::tiny(arch, tied), seed, &Device::Cpu, dtype).unwrap();
    let params = model
        .named_vars()
        .into_iter()
        .map(|(_, v)| v.clone())
        .collect();
    let optimizer = AdamW::new(params, optim).unwrap();
    (model, optimizer)
}

/// Mean reward over the first and the last five steps of a run.
fn learn(estimator: Estimator) -> (f32, f32) {
    let (model, mut optimizer) = policy(
        Architecture::Qwen2,
        false,
        21,
        DType::F32,
        OptimConfig {
            lr: 0.03,
            ..Default::default()
        },
    );
    let config = UpdateConfig {
        temperature: SAMPLED_AT,
        estimator,
        micro_batch: 5,
        ..Default::default()
    };
    let prompts: Vec<Vec<u32>> = (0..16).map(|i| vec![1 + (i % 4) as u32, 2, 3]).collect();
    let mut history = Vec::new();
    for step in 0..40 {
        let sampling = GenerateConfig {
            max_new_tokens: 2,
            temperature: 1.0,
            top_p: 1.0,
            seed: step,
            stop: vec![],
            stop_after: None,
            bf16_decode: false,
        };
        let out = generate(&model, &Digits, &prompts, &sampling).unwrap();
        let rollouts: Vec<Rollout> = prompts
            .iter()
            .zip(out)
            .enumerate()
            .map(|(i, (p, g))| Rollout {
                reward: f32::from(g.tokens.first() == Some(&TARGET)),
                prompt: p.clone(),
                completion: g.tokens,
                logprobs: g.logprobs,
                ref_logprobs: vec![],
                task_group: 0,
                prompt_group: (i % 4) as u64,
            })
            .collect();
        let metrics = update(&model, &mut optimizer, &rollouts, &config).unwrap();
        assert!(metrics.loss.is_finite() && metrics.grad_norm.is_finite());
        history.push(metrics.reward_mean as f32);
    }
    let mean = |xs: &[f32]| xs.iter().sum::<f32>() / xs.len() as f32;
    (mean(&history[..5]), mean(&history[35..]))
}

#[test]
fn trr_plus_plus_learns_a_toy_verifiable_reward() {
    let (start, end) = learn(Estimator::TrrPlusPlus);
    assert!(
        start < 0.3,
        "started at {start}, expected near chance (1/11)"
    );
    assert!(end > 0.9, "ended at {end}");
}

#[test]
fn grpo_learns_a_toy_verifiable_reward() {
    let (start, end) = learn(Estimator::Grpo);
    assert!(start < 0.3, "started at {start}");
    assert!(end > 0.9, "ended at {end}");
}

#[test]
fn micro_batching_does_not_change_the_update() {
    let run = |micro_batch, pass_tokens| {
        let (model, mut optimizer) = policy(
            Architecture::Llama,
            true,
            4,
            DType::F64,
            OptimConfig {
                lr: 0.01,
                ..Default::default()
            },
        );
        // Rollouts 0 and 3, 1 and 4, 2 and 5 share a prompt (and so a row when in one pass).
        let rollouts: Vec<Rollout> = (0..6)
            .map(|i| Rollout {
                prompt: vec![1, 2 + (i % 3) as u32],
                completion: vec![3, 4, 5, 6][..1 + (i * 3) % 4].to_vec(),
                logprobs: vec![-2.0; 1 + (i * 3) % 4],
                ref_logprobs: vec![],
                reward: (i % 2) as f32,
                task_group: 0,
                prompt_group: 0,
            })
            .collect();
        let config = UpdateConfig {
            temperature: SAMPLED_AT,
            micro_batch,
            pass_tokens,
            ..Default::default()
        };
        update(&model, &mut optimizer, &rollouts, &config).unwrap();
        model.named_vars()[1]
            .1
            .as_tensor()
            .flatten_all()
            .unwrap()
            .to_vec1::<f64>()
            .unwrap()
    };
    let whole = run(6, 0);
    for split in [run(1, 0), run(2, 0), run(6, 5)] {
        for (a, b) in whole.iter().zip(&split) {
            assert!((a - b).abs() < 1e-9, "{a} vs {b}");
        }
    }
}

#[test]
fn an_update_on_kept_accumulators_equals_one_on_fresh_ones() {
    // Two updates in a row: the second on the accumulators the first left (reset), or on
    // new ones. Left unzeroed, the first update's gradient would leak into the second.
    let run = |drop_between: bool| {
        let (model, mut optimizer) = policy(
            Architecture::Llama,
            true,
            4,
            DType::F64,
            OptimConfig {
                lr: 0.01,
                ..Default::default()
            },
        );
        let rollouts = fixed_rollouts();
        let config = UpdateConfig {
            temperature: SAMPLED_AT,
            ..Default::default()
        };
        update(&model, &mut optimizer, &rollouts, &config).unwrap();
        assert!(
            optimizer.accumulators.is_some(),
            "the update keeps its accumulators"
        );
        if drop_between {
            optimizer.accumulators = None;
        }
        update(&model, &mut optimizer, &rollouts, &config).unwrap();
        model
            .named_vars()
            .iter()
            .map(|(_, v)| {
                v.as_tensor()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f64>()
                    .unwrap()
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(run(false), run(true));
}

#[test]
fn passes_keep_a_prompts_completions_together_within_their_limits() {
    let rollout = |prompt: &[u32], n: usize| Rollout {
        prompt: prompt.to_vec(),
        completion: vec![9; n],
        logprobs: vec![-1.0; n],
        ref_logprobs: vec![],
        reward: 0.0,
        task_group: 0,
        prompt_group: 0,
    };
    // Prompts a (3 tokens) x3, b (2 tokens) x2, interleaved.
    let (a, b): (&[u32], &[u32]) = (&[1, 2, 3], &[4, 5]);
    let rollouts = [
        rollout(a, 2),
        rollout(b, 1),
        rollout(a, 1),
        rollout(b, 4),
        rollout(a, 3),
    ];
    let live = [0, 1, 2, 3, 4];
    let plan = |micro_batch, pass_tokens| {
        let config = UpdateConfig {
            temperature: SAMPLED_AT,
            micro_batch,
            pass_tokens,
            ..Default::default()
        };
        passes(&rollouts, &live, &config)
    };
    assert_eq!(
        plan(1, 0),
        vec![vec![0], vec![2], vec![4], vec![1], vec![3]]
    );
    assert_eq!(plan(3, 0), vec![vec![0, 2, 4], vec![1, 3]]);
    assert_eq!(plan(2, 0), vec![vec![0, 2], vec![4, 1], vec![3]]);
    // a's three completions in one row are 3 + 6 = 9 positions; 8 splits them.
    assert_eq!(plan(5, 9), vec![vec![0, 2, 4], vec![1, 3]]);
    assert_eq!(plan(5, 8), vec![vec![0, 2], vec![4], vec![1, 3]]);
    // A completion too long for the limit still gets a pass of its own.
    assert_eq!(
        plan(5, 2),
        vec![vec![0], vec![2], vec![4], vec![1], vec![3]]
    );
}

/// Two groups of three, each with one rewarded rollout, so every advantage is non-zero.
fn fixed_rollouts() -> Vec<Rollout> {
    (0..6)
        .map(|i| Rollout {
            prompt: vec![1, 2 + i as u32],
            completion: [3, 4, 5][..1 + i % 3].to_vec(),
            logprobs: vec![-2.3; 1 + i % 3],
            ref_logprobs: vec![],
            reward: f32::from(i % 3 == 0),
            task_group: (i % 2) as u64,
            prompt_group: 0,
        })
        .collect()
}

/// The loss `update` minimises, for one micro-batch holding the whole batch.
fn batch_loss(model: &Model, rollouts: &[Rollout], config: &UpdateConfig) -> candle_core::Tensor {
    let rewards: Vec<f32> = rollouts.iter().map(|r| r.reward).collect();
    let groups: Vec<u64> = rollouts.iter().map(|r| r.task_group).collect();
    let adv = advantages(config.estimator, &rewards, &groups, &groups);
    let batch: Vec<Scored> = rollouts
        .iter()
        .map(|r| Scored {
            prompt: &r.prompt,
            completion: &r.completion,
        })
        .collect();
    let logp = score(model, &batch, 1.0, Grad::Graph, Entropy::Skip)
        .unwrap()
        .logprobs;
    let old: Vec<f32> = rollouts.iter().flat_map(|r| r.logprobs.clone()).collect();
    let token_adv: Vec<f32> = rollouts
        .iter()
        .zip(&adv)
        .flat_map(|(r, a)| vec![*a; r.completion.len()])
        .collect();
    let lengths: Vec<usize> = rollouts.iter().map(|r| r.completion.len()).collect();
    let tokens = lengths.iter().sum();
    clipped_surrogate(&logp, &old, &token_adv, &lengths, tokens, &config.loss)
        .unwrap()
        .0
}

#[test]
fn clipped_loss_gradient_matches_finite_differences_through_the_model() {
    let model = Model::random(
        ModelConfig::tiny(Architecture::Qwen2, false),
        8,
        &Device::Cpu,
        DType::F64,
    )
    .unwrap();
    let rollouts = fixed_rollouts();
    let config = UpdateConfig {
        temperature: SAMPLED_AT,
        ..Default::default()
    };
    let grads = batch_loss(&model, &rollouts, &config).backward().unwrap();
    let eval = || {
        batch_loss(&model, &rollouts, &config)
            .to_scalar::<f64>()
            .unwrap()
    };
    for (name, var) in model.named_vars().into_iter().step_by(3) {
        let grad: Vec<f64> = grads
            .get(var)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let original = var.as_tensor().copy().unwrap();
        let mut values: Vec<f64> = original.flatten_all().unwrap().to_vec1().unwrap();
        let i = values.len() / 2;
        let h = 1e-6;
        values[i] += h;
        var.set(
            &candle_core::Tensor::from_vec(values.clone(), original.shape(), &Device::Cpu).unwrap(),
        )
        .unwrap();
        let up = eval();
        values[i] -= 2.0 * h;
        var.set(&candle_core::Tensor::from_vec(values, original.shape(), &Device::Cpu).unwrap())
            .unwrap();
        let down = eval();
        var.set(&original).unwrap();
        let numeric = (up - down) / (2.0 * h);
        let err = (numeric - grad[i]).abs() / numeric.abs().max(grad[i].abs()).max(1e-3);
        assert!(
            err < 1e-5,
            "{name}: analytic {} vs numeric {numeric}",
            grad[i]
        );
    }
}

#[test]
fn metrics_cover_groups_entropy_and_memory() {
    let (model, mut optimizer) = policy(
        Architecture::Qwen2,
        false,
        8,
        DType::F32,
        OptimConfig::default(),
    );
    let m = update(
        &model,
        &mut optimizer,
        &fixed_rollouts(),
        &UpdateConfig {
            temperature: SAMPLED_AT,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(m.groups.len(), 2);
    for g in &m.groups {
        assert_eq!(g.count, 3);
        assert!((g.reward_mean - 1.0 / 3.0).abs() < 1e-6, "{g:?}");
        // TRR++ normalises each group: mean 0, std 1.
        assert!(g.advantage_mean.abs() < 1e-6 && (g.advantage_std - 1.0).abs() < 1e-4);
    }
    let entropy = m.entropy.expect("every rollout was trained");
    assert!(entropy > 0.0 && entropy <= (11f64).ln() + 1e-6, "{entropy}");
    assert!(m.peak_rss_mb > 1.0);
    assert_eq!((m.tokens, m.trained_tokens), (12, 12));
    // Passes of micro_batch 4 (distinct prompts of 2 tokens, completions of 1-3): rollouts
    // 0-3 as 4 rows of up to 5 positions, then 4-5 as 2 rows of up to 5.
    assert_eq!(m.trained_positions, 4 * 5 + 2 * 5);
}

fn start() -> (Model, AdamW) {
    let optim = OptimConfig {
        lr: 0.01,
        weight_decay: 0.1,
        ..Default::default()
    };
    policy(Architecture::Qwen2, false, 8, DType::F64, optim)
}

fn weights(model: &Model) -> Vec<f64> {
    model
        .named_vars()
        .iter()
        .flat_map(|(_, v)| {
            v.as_tensor()
                .flatten_all()
                .unwrap()
                .to_vec1::<f64>()
                .unwrap()
        })
        .collect()
}

/// Weights, loss and gradient norm after `update`, and after one AdamW step on the gradient of
/// the whole batch's loss (zero-advantage rollouts included), from the same start.
fn updated_both_ways(rollouts: &[Rollout]) -> [(Vec<f64>, f64, f64); 2] {
    let config = UpdateConfig {
        temperature: SAMPLED_AT,
        ..Default::default()
    };
    let (model, mut optimizer) = start();
    let m = update(&model, &mut optimizer, rollouts, &config).unwrap();
    let (reference, mut reference_optimizer) = start();
    let loss = batch_loss(&reference, rollouts, &config);
    let grads = loss.backward().unwrap();
    let norm = reference_optimizer.step(&grads).unwrap();
    [
        (weights(&model), m.loss, m.grad_norm),
        (weights(&reference), loss.to_scalar().unwrap(), norm),
    ]
}

fn assert_same(skipped: &(Vec<f64>, f64, f64), whole: &(Vec<f64>, f64, f64)) {
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-12 * a.abs().max(1.0);
    assert!(
        close(skipped.1, whole.1),
        "loss {} vs {}",
        skipped.1,
        whole.1
    );
    assert!(
        close(skipped.2, whole.2),
        "grad norm {} vs {}",
        skipped.2,
        whole.2
    );
    assert!(skipped.0.iter().zip(&whole.0).all(|(a, b)| close(*a, *b)));
}

#[test]
fn zero_advantage_rollouts_are_left_out_without_changing_the_update() {
    // Group 1's rewards are all 0, so its advantages are 0; group 0 keeps +-.
    let mut rollouts = fixed_rollouts();
    rollouts[3].reward = 0.0;
    let config = UpdateConfig {
        temperature: SAMPLED_AT,
        ..Default::default()
    };
    let (model, mut optimizer) = start();
    let m = update(&model, &mut optimizer, &rollouts, &config).unwrap();
    assert_eq!((m.tokens, m.trained_tokens), (12, 6));
    let [skipped, whole] = updated_both_ways(&rollouts);
    assert!(whole.2 > 0.0);
    assert_same(&skipped, &whole);
    // Nothing left to train: AdamW still steps (weight decay) on a zero gradient.
    rollouts[0].reward = 0.0;
    let (model, mut optimizer) = start();
    let m = update(&model, &mut optimizer, &rollouts, &config).unwrap();
    assert_eq!((m.trained_tokens, m.entropy), (0, None));
    let [skipped, whole] = updated_both_ways(&rollouts);
    assert_same(&skipped, &whole);
    let untouched = weights(&start().0);
    assert!(
        skipped.0.iter().zip(&untouched).any(|(a, b)| a != b),
        "weight decay moves the weights"
    );
}

#[test]
fn the_entropy_bonus_pushes_entropy_the_way_its_sign_says() {
    // A random model starts near the maximum, ln 11: compare a bonus with a penalty (the
    // advantages move the entropy too, so "none" is not the start).
    let after = |coef: f64| {
        let (model, mut optimizer) = policy(
            Architecture::Qwen2,
            false,
            8,
            DType::F32,
            OptimConfig {
                lr: 0.01,
                ..Default::default()
            },
        );
        let config = UpdateConfig {
            temperature: SAMPLED_AT,
            entropy_coef: coef,
            ..Default::default()
        };
        (0..10)
            .map(|_| {
                update(&model, &mut optimizer, &fixed_rollouts(), &config)
                    .unwrap()
                    .entropy
                    .expect("every rollout is trained")
            })
            .last()
            .unwrap()
    };
    let (bonus, none, penalty) = (after(1.0), after(0.0), after(-1.0));
    assert!(
        bonus > none + 0.01 && none > penalty + 0.05,
        "bonus {bonus}, none {none}, penalty {penalty}"
    );
}

#[test]
fn the_kl_penalty_needs_reference_log_probs_and_holds_the_policy_near_the_reference() {
    let config = |kl_coef| UpdateConfig {
        temperature: SAMPLED_AT,
        loss: crate::rl::loss::LossConfig {
            kl_coef,
            ..Default::default()
        },
        ..Default::default()
    };
    let reference = Model::random(
        ModelConfig::tiny(Architecture::Qwen2, false),
        8,
        &Device::Cpu,
        DType::BF16,
    )
    .unwrap();
    let (model, mut optimizer) = policy(
        Architecture::Qwen2,
        false,
        8,
        DType::F32,
        OptimConfig {
            lr: 0.02,
            ..Default::default()
        },
    );
    let err = update(&model, &mut optimizer, &fixed_rollouts(), &config(0.5)).unwrap_err();
    assert!(err.to_string().contains("reference log-probs"), "{err}");

    let drift = |kl_coef: f64| {
        let (model, mut optimizer) = policy(
            Architecture::Qwen2,
            false,
            8,
            DType::F32,
            OptimConfig {
                lr: 0.02,
                ..Default::default()
            },
        );
        // One group, alternating rewards: advantages of +-1 pull the policy away.
        let mut rollouts = fixed_rollouts();
        rollouts.iter_mut().for_each(|r| r.task_group = 0);
        reference_logprobs(&reference, &mut rollouts, &config(kl_coef)).unwrap();
        let mut kl = 0.0;
        for _ in 0..15 {
            kl = update(&model, &mut optimizer, &rollouts, &config(kl_coef))
                .unwrap()
                .kl_to_reference;
        }
        kl
    };
    // kl_to_reference is only measured when the penalty is on: compare a weak and a strong one.
    let (weak, strong) = (drift(1e-6), drift(5.0));
    assert!(
        strong < weak * 0.7,
        "KL with a strong penalty {strong} vs weak {weak}"
    );
}

/// One policy update on the GPU (composed AdamW, f32) moves the weights as the CPU's (in-place
/// AdamW) does. A large eps keeps Adam from turning rounding-level gradients into full steps.
#[cfg(feature = "cuda")]
#[test]
fn an_update_on_the_gpu_matches_the_cpu() {
    let gpu = Device::new_cuda(0).expect("this test needs an NVIDIA GPU");
    let optim = OptimConfig {
        lr: 1e-2,
        eps: 1e-3,
        ..Default::default()
    };
    let (cpu_model, mut cpu_optimizer) = policy(Architecture::Qwen2, false, 5, DType::F32, optim);
    let prompts: Vec<Vec<u32>> = (0..6).map(|i| vec![1 + i as u32, 2, 3]).collect();
    let sampling = GenerateConfig {
        max_new_tokens: 4,
        temperature: 1.0,
        top_p: 1.0,
        seed: 9,
        stop: vec![],
        stop_after: None,
        bf16_decode: false,
    };
    let rollouts: Vec<Rollout> = generate(&cpu_model, &Digits, &prompts, &sampling)
        .unwrap()
        .into_iter()
        .zip(&prompts)
        .map(|(g, p)| Rollout {
            reward: g.tokens.iter().filter(|&&t| t == TARGET).count() as f32,
            prompt: p.clone(),
            completion: g.tokens,
            logprobs: g.logprobs,
            ref_logprobs: vec![],
            task_group: 0,
            prompt_group: 0,
        })
        .collect();
    let config = UpdateConfig {
        temperature: SAMPLED_AT,
        micro_batch: 2,
        ..Default::default()
    };
    let gpu_model = Model::random(
        ModelConfig::tiny(Architecture::Qwen2, false),
        5,
        &gpu,
        DType::F32,
    )
    .unwrap();
    let params = gpu_model
        .named_vars()
        .into_iter()
        .map(|(_, v)| v.clone())
        .collect();
    let mut gpu_optimizer = AdamW::new(params, optim).unwrap();
    let on_cpu = update(&cpu_model, &mut cpu_optimizer, &rollouts, &config).unwrap();
    let on_gpu = update(&gpu_model, &mut gpu_optimizer, &rollouts, &config).unwrap();
    assert!(
        (on_cpu.loss - on_gpu.loss).abs() < 1e-5,
        "{on_cpu:?} vs {on_gpu:?}"
    );
    assert!((on_cpu.grad_norm - on_gpu.grad_norm).abs() < 1e-4 * on_cpu.grad_norm.max(1.0));
    for ((name, c), (_, g)) in cpu_model.named_vars().iter().zip(gpu_model.named_vars()) {
        let g = g.as_tensor().to_device(&Device::Cpu).unwrap();
        let diff = crate::kernels::max_abs_diff(c.as_tensor(), &g);
        assert!(
            diff < 1e-5,
            "{name}: weights differ by {diff:.2e} after one update"
        );
    }
}
