use candle_core::{DType, Device};

use super::*;
use crate::model::config::{Architecture, ModelConfig};
use crate::model::logprobs::{completion_logprobs, Scored};

/// Token i is the letter 'a' + i; token 10 ends a sequence; 0 pads.
struct Letters;

impl Vocabulary for Letters {
    fn decode(&self, ids: &[u32]) -> String {
        ids.iter()
            .filter(|&&i| i != 10)
            .map(|&i| (b'a' + i as u8) as char)
            .collect()
    }
    fn eos_ids(&self) -> &[u32] {
        &[10]
    }
    fn pad_id(&self) -> u32 {
        0
    }
}

fn model() -> Model {
    Model::random(
        ModelConfig::tiny(Architecture::Qwen2, false),
        11,
        &Device::Cpu,
        DType::F32,
    )
    .unwrap()
}

fn prompts() -> Vec<Vec<u32>> {
    vec![
        vec![1, 2, 3],
        vec![4],
        vec![5, 6, 7, 8, 9],
        vec![2, 2],
        vec![9, 8, 7, 6],
        vec![3],
        vec![1, 4, 1, 5, 9, 2],
        vec![6, 5],
    ]
}

fn greedy(n: usize) -> GenerateConfig {
    GenerateConfig {
        max_new_tokens: n,
        temperature: 0.0,
        ..GenerateConfig::default()
    }
}

/// Whether decode steps can multiply bf16 copies here (an AVX-512 CPU); tests of that path
/// say so and pass elsewhere.
fn bf16_decode_runs(model: &Model) -> bool {
    let runs = DecodeWeights::of_model(model).unwrap().is_some();
    if !runs {
        eprintln!("skipped the bf16 decode: this CPU lacks AVX-512");
    }
    runs
}

/// Batches of 8 and of 32 rows (past the 16 rows the decode kernel once stopped at).
#[test]
fn greedy_output_is_the_same_alone_and_in_a_batch() {
    let model = model();
    for bf16_decode in [false, true] {
        if bf16_decode && !bf16_decode_runs(&model) {
            continue;
        }
        let config = GenerateConfig {
            bf16_decode,
            ..greedy(12)
        };
        let alone: Vec<_> = prompts()
            .iter()
            .map(|p| {
                generate(&model, &Letters, std::slice::from_ref(p), &config)
                    .unwrap()
                    .remove(0)
            })
            .collect();
        for copies in [1, 4] {
            let prompts: Vec<_> = (0..copies).flat_map(|_| prompts()).collect();
            let batch = generate(&model, &Letters, &prompts, &config).unwrap();
            for (i, together) in batch.iter().enumerate() {
                let alone = &alone[i % alone.len()];
                assert_eq!(
                    alone.tokens,
                    together.tokens,
                    "prompt {:?} in a batch of {} ({bf16_decode})",
                    prompts[i],
                    prompts.len()
                );
                assert_eq!(alone.finish, together.finish);
            }
        }
    }
}

/// Rows that stop early leave the batch (their cache rows are dropped); the rest go on exactly
/// as they would alone.
#[test]
fn rows_that_finish_early_leave_the_others_unchanged() {
    let model = model();
    let config = GenerateConfig {
        // Picked from this model's greedy outputs so rows stop after 2 to 5 tokens, or never.
        stop: vec!["ec".into(), "fafa".into(), "gfg".into()],
        ..greedy(12)
    };
    let batch = generate(&model, &Letters, &prompts(), &config).unwrap();
    let lengths: std::collections::BTreeSet<_> = batch.iter().map(|g| g.tokens.len()).collect();
    assert!(
        lengths.len() > 2,
        "rows should finish at different steps: {lengths:?}"
    );
    for (prompt, together) in prompts().iter().zip(&batch) {
        let alone = generate(&model, &Letters, std::slice::from_ref(prompt), &config)
            .unwrap()
            .remove(0);
        assert_eq!(alone.tokens, together.tokens, "prompt {prompt:?}");
        assert_eq!(alone.finish, together.finish);
        for (a, b) in alone.logprobs.iter().zip(&together.logprobs) {
            assert!((a - b).abs() < 1e-4, "prompt {prompt:?}: {a} vs {b}");
        }
    }
}

/// With more prompts than rows, a finished row's place goes to the next waiting prompt (its
/// prompt pass spliced into the running cache, longer or shorter than what is cached): every
/// completion must come out as it does alone, the batch must stay full while prompts wait,
/// and `done` must see each completion once, as returned.
#[test]
fn waiting_prompts_take_finished_rows_and_decode_as_they_would_alone() {
    let config = GenerateConfig {
        stop: vec!["ec".into(), "fafa".into(), "gfg".into()],
        ..greedy(12)
    };
    assert_refilled_rows_decode_as_alone(&model(), &config);
}

/// The same where prompt passes multiply the bf16 copies too (AVX-512 BF16, AMX tiles): a
/// prompt that joins a running batch must be prefilled as one that starts it (a model whose
/// matrices are whole tiles).
#[test]
fn waiting_prompts_in_bf16_decode_as_they_would_alone() {
    let config = ModelConfig {
        hidden_size: 32,
        intermediate_size: 64,
        vocab_size: 16,
        ..ModelConfig::tiny(Architecture::Qwen2, false)
    };
    let model = Model::random(config, 11, &Device::Cpu, DType::F32).unwrap();
    if !(bf16_decode_runs(&model) && crate::kernels::matvec::prefill_in_bf16()) {
        eprintln!("skipped: this CPU multiplies no bf16 pairs (no AVX-512 BF16)");
        return;
    }
    let config = GenerateConfig {
        bf16_decode: true,
        stop: vec!["ec".into(), "fafa".into(), "gfg".into(), "jj".into()],
        ..greedy(12)
    };
    assert_refilled_rows_decode_as_alone(&model, &config);
}

fn assert_refilled_rows_decode_as_alone(model: &Model, config: &GenerateConfig) {
    // Short rows first, then the longest prompts: some splices need room in front.
    let mut prompts: Vec<Vec<u32>> = prompts().into_iter().chain(prompts()).collect();
    prompts.sort_by_key(Vec::len);
    let mut seen = vec![0; prompts.len()];
    let mut widths = Vec::new();
    let batch = 3;
    let out = generate_batches(
        model,
        &Letters,
        &prompts,
        config,
        batch,
        |i, g| {
            seen[i] += 1;
            assert_eq!(g.tokens.len(), g.logprobs.len());
        },
        |n| widths.push(n),
    )
    .unwrap();
    assert_eq!(seen, vec![1; prompts.len()]);
    for (prompt, together) in prompts.iter().zip(&out) {
        let alone = generate(model, &Letters, std::slice::from_ref(prompt), config)
            .unwrap()
            .remove(0);
        assert_eq!(alone.tokens, together.tokens, "prompt {prompt:?}");
        assert_eq!(
            (&alone.text, alone.finish),
            (&together.text, together.finish)
        );
        for (a, b) in alone.logprobs.iter().zip(&together.logprobs) {
            assert!((a - b).abs() < 1e-4, "prompt {prompt:?}: {a} vs {b}");
        }
    }
    // Decode steps sample every live row; refills sample only the new ones. Until the last
    // prompt has started, no decode step ran with fewer than `batch` rows.
    let decode_steps = out.iter().map(|g| g.tokens.len()).sum::<usize>();
    assert_eq!(widths.iter().sum::<usize>(), decode_steps);
    assert!(widths.iter().all(|&n| n <= batch), "{widths:?}");
    let steps_one_batch_at_a_time: usize = out
        .chunks(batch)
        .map(|c| c.iter().map(|g| g.tokens.len()).max().unwrap_or(0))
        .sum();
    assert!(
        widths.len() < steps_one_batch_at_a_time,
        "{} sampling calls, batches one at a time need {steps_one_batch_at_a_time}",
        widths.len()
    );
}

/// Each completion samples from its own stream: the same seed writes the same completions
/// whether they decode alone, three at a time or all together.
#[test]
fn sampled_completions_do_not_depend_on_the_batch() {
    let model = model();
    let config = GenerateConfig {
        temperature: 1.0,
        seed: 5,
        ..greedy(12)
    };
    let prompts = prompts();
    let run = |batch| {
        generate_batches(
            &model,
            &Letters,
            &prompts,
            &config,
            batch,
            |_, _| {},
            |_| {},
        )
        .unwrap()
    };
    let together = run(prompts.len());
    for batch in [1, 3] {
        let tokens = |out: &[Generation]| out.iter().map(|g| g.tokens.clone()).collect::<Vec<_>>();
        assert_eq!(tokens(&run(batch)), tokens(&together), "batch {batch}");
    }
    let reseeded = generate(
        &model,
        &Letters,
        &prompts,
        &GenerateConfig { seed: 6, ..config },
    )
    .unwrap();
    assert_ne!(reseeded, together, "another seed, the same samples");
}

/// Sampled log-probs of every row equal the teacher-forced ones of a full forward pass (f32),
/// to f32's tolerance, or to bf16's when the decode steps multiply bf16 weights.
fn assert_sampled_log_probs_match_a_full_forward_pass(prompts: &[Vec<u32>], bf16_decode: bool) {
    let model = model();
    if bf16_decode && !bf16_decode_runs(&model) {
        return;
    }
    let config = GenerateConfig {
        max_new_tokens: 10,
        temperature: 0.7,
        top_p: 0.9,
        seed: 3,
        stop: vec![],
        stop_after: None,
        bf16_decode,
    };
    let tolerance = if bf16_decode { 3e-2 } else { 1e-4 };
    let out = generate(&model, &Letters, prompts, &config).unwrap();
    let scored: Vec<Scored> = prompts
        .iter()
        .zip(&out)
        .map(|(p, g)| Scored {
            prompt: p,
            completion: &g.tokens,
        })
        .collect();
    let sampled: Vec<f32> = out
        .iter()
        .flat_map(|g| g.logprobs.iter().copied())
        .collect();
    for grad in [false, true] {
        let full: Vec<f32> = completion_logprobs(&model, &scored, 0.7, grad)
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(full.len(), sampled.len());
        for (i, (a, b)) in sampled.iter().zip(&full).enumerate() {
            assert!(
                (a - b).abs() < tolerance,
                "token {i}: generation {a} vs forward {b} (grad {grad}, bf16 decode {bf16_decode})"
            );
        }
        // The bf16 copies are really used: their rounding shows.
        if bf16_decode {
            assert!(sampled.iter().zip(&full).any(|(a, b)| (a - b).abs() > 1e-6));
        }
    }
}

#[test]
fn sampled_log_probs_match_a_full_forward_pass() {
    assert_sampled_log_probs_match_a_full_forward_pass(&prompts(), false);
}

#[test]
fn sampled_log_probs_with_bf16_decode_weights_match_the_f32_forward_within_bf16_rounding() {
    assert_sampled_log_probs_match_a_full_forward_pass(&prompts(), true);
}

/// Repeated prompts are prefilled once and their cache rows copied: each copy must continue
/// exactly as its own prompt would.
#[test]
fn repeated_prompts_share_a_prefill_and_still_sample_apart() {
    let p = prompts();
    let repeated = vec![
        p[0].clone(),
        p[1].clone(),
        p[0].clone(),
        p[0].clone(),
        p[1].clone(),
    ];
    assert_sampled_log_probs_match_a_full_forward_pass(&repeated, false);
    let model = model();
    let alone = generate(&model, &Letters, &p[..1], &greedy(12)).unwrap();
    let batch = generate(&model, &Letters, &repeated, &greedy(12)).unwrap();
    for row in [0, 2, 3] {
        assert_eq!(batch[row].tokens, alone[0].tokens, "row {row}");
    }
    let sampled = GenerateConfig {
        temperature: 1.0,
        ..greedy(12)
    };
    let batch = generate(&model, &Letters, &repeated, &sampled).unwrap();
    assert!(
        batch[0].tokens != batch[2].tokens || batch[2].tokens != batch[3].tokens,
        "three samples of one prompt came out identical"
    );
}

#[test]
fn generation_stops_at_eos_stop_strings_and_the_limit() {
    let model = model();
    let out = generate(&model, &Letters, &prompts(), &greedy(30)).unwrap();
    for g in &out {
        match g.finish {
            Finish::Eos => assert_eq!(g.tokens.last(), Some(&10)),
            Finish::Length => assert_eq!(g.tokens.len(), 30),
            Finish::Stop => unreachable!("no stop strings given"),
        }
        assert_eq!(g.tokens.len(), g.logprobs.len());
    }
    // Stop at the first letter the first completion writes: its text is then empty.
    let first = out[0].text.chars().next().expect("some text").to_string();
    let stopped = generate(
        &model,
        &Letters,
        &prompts()[..1],
        &GenerateConfig {
            stop: vec![first],
            ..greedy(30)
        },
    )
    .unwrap();
    assert_eq!(stopped[0].finish, Finish::Stop);
    assert_eq!(stopped[0].text, "");
    assert_eq!(stopped[0].tokens.len(), 1);
}

#[test]
fn same_seed_same_samples() {
    let model = model();
    let config = GenerateConfig {
        max_new_tokens: 8,
        temperature: 1.0,
        top_p: 1.0,
        seed: 9,
        ..GenerateConfig::default()
    };
    let a = generate(&model, &Letters, &prompts(), &config).unwrap();
    let b = generate(&model, &Letters, &prompts(), &config).unwrap();
    assert_eq!(a, b);
}

/// Greedy generation on the GPU writes what the CPU writes, with the same log-probs.
#[cfg(feature = "cuda")]
#[test]
fn greedy_generation_on_the_gpu_matches_the_cpu() {
    let gpu = Device::new_cuda(0).expect("this test needs an NVIDIA GPU");
    let on_gpu = Model::random(
        ModelConfig::tiny(Architecture::Qwen2, false),
        11,
        &gpu,
        DType::F32,
    )
    .unwrap();
    let cpu = generate(&model(), &Letters, &prompts(), &greedy(12)).unwrap();
    let got = generate(&on_gpu, &Letters, &prompts(), &greedy(12)).unwrap();
    for (c, g) in cpu.iter().zip(&got) {
        assert_eq!(c.tokens, g.tokens);
        for (a, b) in c.logprobs.iter().zip(&g.logprobs) {
            assert!((a - b).abs() < 1e-4, "{:?} vs {:?}", c.logprobs, g.logprobs);
        }
    }
}

#[test]
fn stop_strings_count_only_after_the_marker() {
    let config = GenerateConfig {
        stop: vec!["</answer>".into()],
        stop_after: Some("</think>".into()),
        ..GenerateConfig::default()
    };
    // Reasoning that mentions the closing tag goes on; the first one after </think> ends it.
    assert_eq!(stop_at("I'll write </answer> later", &config), None);
    let text = "says </answer></think><answer>1</answer> more</answer>";
    assert_eq!(
        &text[..stop_at(text, &config).unwrap()],
        "says </answer></think><answer>1"
    );
    let anywhere = GenerateConfig {
        stop_after: None,
        ..config
    };
    assert_eq!(stop_at("a </answer>", &anywhere), Some(2));
}
