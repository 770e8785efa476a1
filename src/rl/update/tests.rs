use candle_core::{DType, Device};

use super::*;
use crate::generate::{generate, GenerateConfig, Vocabulary};
use crate::model::config::{Architecture, ModelConfig};
use crate::rl::optim::OptimConfig;

struct Digits;

impl Vocabulary for Digits {
    fn decode(&self, ids: &[u32]) -> String {
        ids.iter().map(|i| i.to_string()).collect()
    }
    fn eos_ids(&self) -> &[u32] {
        &[10]
    }
    fn pad_id(&self) -> u32 {
        0
    }
}

const TARGET: u32 = 7;

/// Mean reward over the first and the last five steps of a run.
fn learn(estimator: Estimator) -> (f32, f32) {
    let model = Model::random(
        ModelConfig::tiny(Architecture::Qwen2, false),
        21,
        &Device::Cpu,
        DType::F32,
    )
    .unwrap();
    let params = model
        .named_vars()
        .into_iter()
        .map(|(_, v)| v.clone())
        .collect();
    let mut optimizer = AdamW::new(
        params,
        OptimConfig {
            lr: 0.03,
            ..Default::default()
        },
    )
    .unwrap();
    let config = UpdateConfig {
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
    let run = |micro_batch| {
        let model = Model::random(
            ModelConfig::tiny(Architecture::Llama, true),
            4,
            &Device::Cpu,
            DType::F64,
        )
        .unwrap();
        let params = model
            .named_vars()
            .into_iter()
            .map(|(_, v)| v.clone())
            .collect();
        let mut optimizer = AdamW::new(
            params,
            OptimConfig {
                lr: 0.01,
                ..Default::default()
            },
        )
        .unwrap();
        let rollouts: Vec<Rollout> = (0..6)
            .map(|i| Rollout {
                prompt: vec![1, 2 + i as u32],
                completion: vec![3, 4, 5][..1 + i % 3].to_vec(),
                logprobs: vec![-2.0; 1 + i % 3],
                reward: (i % 2) as f32,
                task_group: 0,
                prompt_group: 0,
            })
            .collect();
        let config = UpdateConfig {
            micro_batch,
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
    let (whole, split) = (run(6), run(2));
    for (a, b) in whole.iter().zip(&split) {
        assert!((a - b).abs() < 1e-9, "{a} vs {b}");
    }
}
