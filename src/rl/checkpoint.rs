//! Checkpoints: a Hugging Face folder (loadable by azr and by `transformers`) plus the optimiser
//! moments and f32 master weights (`optimizer.safetensors`) and the training state (`state.json`: step, optimiser step,
//! seed, the run's resolved config). Written to a temp folder, synced to disk and renamed into
//! place, so a crash or power cut mid-write never leaves a broken latest checkpoint; the last
//! `keep` are kept. A checkpoint damaged all the same is skipped on load for the newest intact one.
//!
//! There is no RNG state to save: every step draws from an RNG seeded by (run seed, step), so a
//! run resumed at step k samples exactly what an uninterrupted run would.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use super::optim::{AdamW, OptimConfig};
use crate::durable;
use crate::model::{Model, ModelError};

/// Files of the model folder a checkpoint carries over from the model it continues.
const TOKENIZER_FILES: &[&str] = &[
    "tokenizer.json",
    "tokenizer_config.json",
    "generation_config.json",
];

/// The tokenizer files every checkpoint of a run carries, read once at its start: the folder
/// they came from may be an older checkpoint that rotation deletes.
#[derive(Debug, Clone, Default)]
pub struct TokenizerFiles(Vec<(&'static str, Vec<u8>)>);

impl TokenizerFiles {
    /// Those of `TOKENIZER_FILES` that `dir` holds.
    pub fn read(dir: &Path) -> Result<Self, ModelError> {
        let mut files = Vec::new();
        for name in TOKENIZER_FILES {
            let path = dir.join(name);
            if path.is_file() {
                files.push((
                    *name,
                    std::fs::read(&path).map_err(|e| ModelError::io(&path, e))?,
                ));
            }
        }
        Ok(Self(files))
    }
}

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

/// Removes the temp folders of checkpoints whose writing a crash interrupted.
pub fn clear_unfinished(root: &Path) -> Result<(), ModelError> {
    for entry in std::fs::read_dir(root).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with(".step-") && name.ends_with(".tmp") {
            let path = entry.path();
            tracing::info!(folder = %path.display(), "removing an unfinished checkpoint");
            std::fs::remove_dir_all(&path).map_err(|e| ModelError::io(&path, e))?;
        }
    }
    Ok(())
}

/// Writes a checkpoint of `state.step` under `root`, with `tokenizer`'s files, and deletes all
/// but the newest `keep`.
pub fn save(
    root: &Path,
    tokenizer: &TokenizerFiles,
    model: &Model,
    optimizer: &AdamW,
    state: &TrainState,
    keep: usize,
) -> Result<PathBuf, ModelError> {
    let target = step_dir(root, state.step);
    let tmp = root.join(format!(".step-{:08}.tmp", state.step));
    let _ = std::fs::remove_dir_all(&tmp);
    model.save(&tmp)?;
    for (name, bytes) in &tokenizer.0 {
        let path = tmp.join(name);
        std::fs::write(&path, bytes).map_err(|e| ModelError::io(&path, e))?;
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
    // Without the syncs a power cut could publish the folder before its files' data.
    durable::sync_folder(&tmp).map_err(|e| ModelError::io(&tmp, e))?;
    let _ = std::fs::remove_dir_all(&target);
    std::fs::rename(&tmp, &target).map_err(|e| ModelError::io(&target, e))?;
    durable::sync_dir(root).map_err(|e| ModelError::io(root, e))?;
    let all = list(root);
    for (_, old) in all.iter().take(all.len().saturating_sub(keep.max(1))) {
        let _ = std::fs::remove_dir_all(old);
    }
    Ok(target)
}

/// Reads a checkpoint's `state.json`.
pub fn read_state(dir: &Path) -> Result<TrainState, ModelError> {
    let path = dir.join("state.json");
    let text = std::fs::read_to_string(&path).map_err(|e| ModelError::io(&path, e))?;
    serde_json::from_str(&text).map_err(|e| ModelError::Invalid {
        path,
        detail: e.to_string(),
    })
}

/// Loads a checkpoint folder: the model, an optimiser with its moments restored, and the state.
/// Every saved tensor must be one the model's parameters call for, with their shape, in f32.
pub fn load(
    dir: &Path,
    device: &Device,
    dtype: DType,
    optim: OptimConfig,
) -> Result<(Model, AdamW, TrainState), ModelError> {
    let model = Model::load(dir, device, dtype)?;
    let state = read_state(dir)?;
    let path = dir.join("optimizer.safetensors");
    let mut saved =
        candle_core::safetensors::load(&path, device).map_err(|e| ModelError::candle(&path, e))?;
    let named = model.named_vars();
    let mut moments = Vec::with_capacity(named.len());
    let mut masters = Vec::new();
    for (i, (name, var)) in named.iter().enumerate() {
        let mut take = |key| take_like(&mut saved, key, var.as_tensor(), &path);
        moments.push((take(format!("m.{name}"))?, take(format!("v.{name}"))?));
        // A bf16 model's exact f32 weights (absent when the model file is f32 itself).
        let master = format!("w.{name}");
        if saved.contains_key(&master) {
            masters.push((i, take_like(&mut saved, master, var.as_tensor(), &path)?));
        }
    }
    if let Some(extra) = saved.keys().min() {
        return Err(ModelError::Invalid {
            path,
            detail: format!("{extra} belongs to no parameter of the model beside it"),
        });
    }
    let params = named.iter().map(|(_, v)| (*v).clone()).collect();
    let mut optimizer = AdamW::new(params, optim)?;
    optimizer.set_moments(moments, state.optimizer_step)?;
    for (i, w) in masters {
        optimizer
            .set_master(i, w)
            .map_err(|e| ModelError::candle(&path, e))?;
    }
    Ok((model, optimizer, state))
}

/// Takes `key` from a checkpoint's optimiser tensors: f32 and shaped like its parameter, since a
/// moment of another shape would update only part of the parameter from then on.
fn take_like(
    saved: &mut HashMap<String, Tensor>,
    key: String,
    like: &Tensor,
    path: &Path,
) -> Result<Tensor, ModelError> {
    let detail = match saved.remove(&key) {
        Some(t) if t.dims() == like.dims() && t.dtype() == DType::F32 => return Ok(t),
        Some(t) => format!(
            "{key} is {:?} {:?} where its parameter needs F32 {:?}",
            t.dtype(),
            t.dims(),
            like.dims()
        ),
        None => format!("{key} is missing"),
    };
    Err(ModelError::Invalid {
        path: path.to_owned(),
        detail,
    })
}

/// [`load`] of the newest checkpoint under `root` that loads whole, with its folder: a damaged
/// newer one is skipped with a warning. None when there is none; when none loads, the newest's
/// error.
pub fn load_newest(
    root: &Path,
    device: &Device,
    dtype: DType,
    optim: OptimConfig,
) -> Result<Option<(PathBuf, Model, AdamW, TrainState)>, ModelError> {
    let mut newest_error = None;
    for (_, dir) in list(root).into_iter().rev() {
        match load(&dir, device, dtype, optim) {
            Ok((model, optimizer, state)) => return Ok(Some((dir, model, optimizer, state))),
            Err(e) => {
                tracing::warn!(checkpoint = %dir.display(), error = %e, "damaged checkpoint; trying the one before it");
                newest_error.get_or_insert(e);
            }
        }
    }
    newest_error.map_or(Ok(None), Err)
}

#[cfg(test)]
mod tests;
