use super::*;
use crate::generate::{generate, Digits, GenerateConfig};
use crate::model::config::{Architecture, ModelConfig};
use crate::rl::update::{update, Rollout, UpdateConfig};

const SEED: u64 = 77;

fn fresh(dtype: DType) -> (Model, AdamW) {
    let model = Model::random(
        ModelConfig::tiny(Architecture::Qwen2, false),
        5,
        &Device::Cpu,
        dtype,
    )
    .unwrap();
    let params = model
        .named_vars()
        .into_iter()
        .map(|(_, v)| v.clone())
        .collect();
    (model, AdamW::new(params, optim()).unwrap())
}

fn optim() -> OptimConfig {
    OptimConfig {
        lr: 0.02,
        ..Default::default()
    }
}

/// One self-play-like step: sample with the step's seed, reward token 3, update.
fn train_step(model: &Model, optimizer: &mut AdamW, step: u64) {
    let prompts: Vec<Vec<u32>> = (0..6).map(|i| vec![1 + i as u32, 2]).collect();
    let sampling = GenerateConfig {
        max_new_tokens: 3,
        temperature: 1.0,
        top_p: 1.0,
        seed: step_seed(SEED, step),
        stop: vec![],
        stop_after: None,
        bf16_decode: false,
    };
    let rollouts: Vec<Rollout> = generate(model, &Digits, &prompts, &sampling)
        .unwrap()
        .into_iter()
        .zip(&prompts)
        .map(|(g, p)| Rollout {
            reward: g.tokens.iter().filter(|&&t| t == 3).count() as f32,
            prompt: p.clone(),
            completion: g.tokens,
            logprobs: g.logprobs,
            ref_logprobs: vec![],
            task_group: 0,
            prompt_group: 0,
        })
        .collect();
    update(
        model,
        optimizer,
        &rollouts,
        &UpdateConfig {
            micro_batch: 2,
            temperature: sampling.temperature,
            ..Default::default()
        },
    )
    .unwrap();
}

fn weights(model: &Model) -> Vec<Vec<f32>> {
    model
        .named_vars()
        .iter()
        .map(|(_, v)| {
            let flat = v.as_tensor().flatten_all().unwrap();
            flat.to_dtype(DType::F32).unwrap().to_vec1().unwrap()
        })
        .collect()
}

fn state(step: u64, optimizer: &AdamW) -> TrainState {
    TrainState {
        step,
        optimizer_step: optimizer.step,
        seed: SEED,
        config: serde_json::json!({"lr": 0.02}),
    }
}

/// Also for bf16 weights, whose f32 master copies must come back exactly.
#[test]
fn a_resumed_run_matches_an_uninterrupted_one_exactly() {
    for dtype in [DType::F32, DType::BF16] {
        let (model, mut optimizer) = fresh(dtype);
        for step in 0..4 {
            train_step(&model, &mut optimizer, step);
        }
        let uninterrupted = weights(&model);

        let root = tempfile::tempdir().unwrap();
        let (model, mut optimizer) = fresh(dtype);
        for step in 0..3 {
            train_step(&model, &mut optimizer, step);
        }
        save(
            root.path(),
            &TokenizerFiles::default(),
            &model,
            &optimizer,
            &state(3, &optimizer),
            2,
        )
        .unwrap();
        drop((model, optimizer));

        let (model, mut optimizer, restored) =
            load(&latest(root.path()).unwrap(), &Device::Cpu, dtype, optim()).unwrap();
        assert_eq!(restored.step, 3);
        assert_eq!(optimizer.step, 3);
        train_step(&model, &mut optimizer, restored.step);
        assert_eq!(
            weights(&model),
            uninterrupted,
            "{dtype:?}: resumed weights differ from an uninterrupted run"
        );
    }
}

#[test]
fn keeps_the_last_n_and_ignores_half_written_ones() {
    let (model, optimizer) = fresh(DType::F32);
    let root = tempfile::tempdir().unwrap();
    let base = tempfile::tempdir().unwrap();
    std::fs::write(base.path().join("tokenizer.json"), "{}").unwrap();
    let tokenizer = TokenizerFiles::read(base.path()).unwrap();
    // The folder the files came from may be a checkpoint that rotation deletes.
    drop(base);
    for step in [1, 2, 3] {
        save(
            root.path(),
            &tokenizer,
            &model,
            &optimizer,
            &state(step, &optimizer),
            2,
        )
        .unwrap();
    }
    let steps: Vec<u64> = list(root.path()).iter().map(|(s, _)| *s).collect();
    assert_eq!(steps, [2, 3]);
    assert!(latest(root.path())
        .unwrap()
        .join("tokenizer.json")
        .is_file());
    // A crash mid-write leaves a temp folder (and maybe a step folder without state.json).
    std::fs::create_dir_all(root.path().join(".step-00000004.tmp")).unwrap();
    std::fs::create_dir_all(root.path().join("step-00000005")).unwrap();
    assert!(latest(root.path()).unwrap().ends_with("step-00000003"));
}

/// Three checkpoints of a tiny model under a temp folder.
fn three_checkpoints() -> tempfile::TempDir {
    let (model, optimizer) = fresh(DType::F32);
    let root = tempfile::tempdir().unwrap();
    for step in [1, 2, 3] {
        let state = state(step, &optimizer);
        save(
            root.path(),
            &TokenizerFiles::default(),
            &model,
            &optimizer,
            &state,
            3,
        )
        .unwrap();
    }
    root
}

/// Issue 19: only the number of moments was checked, so a moment of the wrong shape loaded
/// and updated part of its parameter from then on.
#[test]
fn a_moment_of_the_wrong_shape_is_an_error_naming_it() {
    let root = three_checkpoints();
    let dir = latest(root.path()).unwrap();
    let path = dir.join("optimizer.safetensors");
    let mut saved = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
    let key = "v.model.layers.1.mlp.up_proj.weight";
    let narrowed = saved[key].narrow(0, 0, 3).unwrap();
    saved.insert(key.into(), narrowed);
    candle_core::safetensors::save(&saved, &path).unwrap();
    let err = match load(&dir, &Device::Cpu, DType::F32, optim()) {
        Ok(_) => panic!("a narrowed moment loaded"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains(key) && err.contains("[3, 8]"), "{err}");
}

/// Issue 19: a damaged newest checkpoint was an error that did not point to the intact one.
#[test]
fn a_damaged_newest_checkpoint_falls_back_to_the_newest_intact_one() {
    let root = three_checkpoints();
    let steps = list(root.path());
    std::fs::write(steps[2].1.join("model.safetensors"), b"torn").unwrap();
    std::fs::write(steps[1].1.join("state.json"), b"{").unwrap();
    let (dir, _, optimizer, state) = load_newest(root.path(), &Device::Cpu, DType::F32, optim())
        .unwrap()
        .unwrap();
    assert_eq!(
        (dir, state.step, optimizer.step),
        (steps[0].1.clone(), 1, 0)
    );

    std::fs::write(steps[0].1.join("optimizer.safetensors"), b"").unwrap();
    let err = match load_newest(root.path(), &Device::Cpu, DType::F32, optim()) {
        Ok(_) => panic!("nothing intact, yet something loaded"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("step-00000003"), "the newest's error: {err}");
    let empty = tempfile::tempdir().unwrap();
    assert!(load_newest(empty.path(), &Device::Cpu, DType::F32, optim())
        .unwrap()
        .is_none());
}

#[test]
fn unfinished_checkpoints_are_cleared_and_finished_ones_kept() {
    let root = three_checkpoints();
    let torn = root.path().join(".step-00000004.tmp");
    std::fs::create_dir_all(&torn).unwrap();
    std::fs::write(torn.join("model.safetensors"), b"half").unwrap();
    clear_unfinished(root.path()).unwrap();
    assert!(!torn.exists());
    let steps: Vec<u64> = list(root.path()).iter().map(|(s, _)| *s).collect();
    assert_eq!(steps, [1, 2, 3]);
}

#[test]
fn step_seeds_differ_and_are_stable() {
    assert_ne!(step_seed(1, 0), step_seed(1, 1));
    assert_ne!(step_seed(1, 0), step_seed(2, 0));
    assert_eq!(step_seed(1, 5), step_seed(1, 5));
}
