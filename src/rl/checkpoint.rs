//! Checkpoints: a Hugging Face folder (loadable by azr and by `transformers`) plus the optimiser
//! moments and f32 master weights (`optimizer.safetensors`) and the training state (`state.json`: step, optimiser step,
//! seed, the run's resolved config). Written to a temp folder and renamed into place, so a crash
//! mid-write never leaves a broken latest checkpoint; the last `keep` are kept.
//!
//! There is no RNG state to save: every step draws from an RNG seeded by (run seed, step), so a
//! run resumed at step k samples exactly what an uninterrupted run would.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use super::optim::{AdamW, OptimConfig};
use crate::model::{Model, ModelError};

/// Files of the model folder a checkpoint carries over from the base model.
const TOKENIZER_FILES: &[&str] = &[
    "tokenizer.json",
    "tokenizer_config.json",
    "generation_config.json",
];

/// What `state.json` holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// Self-play steps completed.
    pub step: u64,
    /// Optimiser updates taken.
    pub optimizer_step: usize,
    pub seed: u64,
    /// The run's resolved configuration, to detect a resume under another config.
    pub config: serde_json::Value,
}

/// The RNG seed of `step` in a run seeded with `seed`.
pub fn step_seed(seed: u64, step: u64) -> u64 {
    // SplitMix64 of (seed, step): well-mixed, stable across versions.
    let mut z = seed ^ step.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn step_dir(root: &Path, step: u64) -> PathBuf {
    root.join(format!("step-{step:08}"))
}

/// Checkpoint folders under `root`, oldest first.
pub fn list(root: &Path) -> Vec<(u64, PathBuf)> {
    let mut found: Vec<(u64, PathBuf)> = std::fs::read_dir(root)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let step = name.strip_prefix("step-")?.parse().ok()?;
            e.path()
                .join("state.json")
                .is_file()
                .then(|| (step, e.path()))
        })
        .collect();
    found.sort();
    found
}

/// The newest complete checkpoint under `root`.
pub fn latest(root: &Path) -> Option<PathBuf> {
    list(root).pop().map(|(_, p)| p)
}

/// Writes a checkpoint of `state.step` under `root`, copying the tokenizer files from
/// `base_model`, and deletes all but the newest `keep`.
pub fn save(
    root: &Path,
    base_model: &Path,
    model: &Model,
    optimizer: &AdamW,
    state: &TrainState,
    keep: usize,
) -> Result<PathBuf, ModelError> {
    let target = step_dir(root, state.step);
    let tmp = root.join(format!(".step-{:08}.tmp", state.step));
    let _ = std::fs::remove_dir_all(&tmp);
    model.save(&tmp)?;
    for file in TOKENIZER_FILES {
        let from = base_model.join(file);
        if from.is_file() {
            std::fs::copy(&from, tmp.join(file)).map_err(|e| ModelError::io(&from, e))?;
        }
    }
    let mut moments = HashMap::new();
    let state_of = optimizer.moments().iter().zip(optimizer.masters());
    for ((name, _), ((m, v), master)) in model.named_vars().iter().zip(state_of) {
        moments.insert(format!("m.{name}"), m.clone());
        moments.insert(format!("v.{name}"), v.clone());
        if let Some(w) = master {
            moments.insert(format!("w.{name}"), w.clone());
        }
    }
    let path = tmp.join("optimizer.safetensors");
    candle_core::safetensors::save(&moments, &path).map_err(|e| ModelError::candle(&path, e))?;
    let path = tmp.join("state.json");
    std::fs::write(
        &path,
        serde_json::to_string_pretty(state).expect("state serialises"),
    )
    .map_err(|e| ModelError::io(&path, e))?;
    let _ = std::fs::remove_dir_all(&target);
    std::fs::rename(&tmp, &target).map_err(|e| ModelError::io(&target, e))?;
    let all = list(root);
    for (_, old) in all.iter().take(all.len().saturating_sub(keep.max(1))) {
        let _ = std::fs::remove_dir_all(old);
    }
    Ok(target)
}

/// Loads a checkpoint folder: the model, an optimiser with its moments restored, and the state.
pub fn load(
    dir: &Path,
    device: &Device,
    dtype: DType,
    optim: OptimConfig,
) -> Result<(Model, AdamW, TrainState), ModelError> {
    let model = Model::load(dir, device, dtype)?;
    let path = dir.join("state.json");
    let text = std::fs::read_to_string(&path).map_err(|e| ModelError::io(&path, e))?;
    let state: TrainState = serde_json::from_str(&text).map_err(|e| ModelError::Invalid {
        path: path.clone(),
        detail: e.to_string(),
    })?;
    let path = dir.join("optimizer.safetensors");
    let mut saved =
        candle_core::safetensors::load(&path, device).map_err(|e| ModelError::candle(&path, e))?;
    let named = model.named_vars();
    let mut moments: Vec<(Tensor, Tensor)> = Vec::with_capacity(named.len());
    for (name, _) in &named {
        let mut take = |key: String| {
            saved.remove(&key).ok_or_else(|| ModelError::Invalid {
                path: path.clone(),
                detail: format!("{key} is missing"),
            })
        };
        moments.push((take(format!("m.{name}"))?, take(format!("v.{name}"))?));
    }
    let params = named.iter().map(|(_, v)| (*v).clone()).collect();
    let mut optimizer = AdamW::new(params, optim)?;
    optimizer.set_moments(moments, state.optimizer_step)?;
    // A bf16 model's exact f32 weights (absent when the model file is f32 itself).
    for (i, (name, _)) in named.iter().enumerate() {
        if let Some(w) = saved.remove(&format!("w.{name}")) {
            optimizer
                .set_master(i, w)
                .map_err(|e| ModelError::candle(&path, e))?;
        }
    }
    Ok((model, optimizer, state))
}

#[cfg(test)]
mod tests;
