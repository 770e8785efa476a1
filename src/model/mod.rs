//! The model: one Qwen2/Llama decoder whose weights are trainable candle `Var`s, loaded from and
//! saved to Hugging Face folders (`config.json`, `model.safetensors`, `tokenizer.json`).
//! `gguf` imports GGUF files into that layout; `provision` fetches the named models. The CPU
//! kernels its ops run on live in `crate::kernels`.

mod attention;
pub mod config;
pub mod decoder;
pub mod device;
pub mod gguf;
mod kv_cache;
pub mod logprobs;
mod ops;
pub mod provision;
pub mod tokenizer;
pub mod weight_grads;

use std::path::{Path, PathBuf};

pub use config::{Architecture, ModelConfig};
pub use decoder::{DecodeWeights, Grad, KvCache, Model};
pub use device::{DeviceSpec, Precision};
pub use tokenizer::TextTokenizer;
pub use weight_grads::{Products, WeightGrads};

/// Why a model could not be loaded, imported or run.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a usable model: {detail}")]
    Invalid { path: PathBuf, detail: String },
    #[error("{path}: {detail}")]
    Candle { path: PathBuf, detail: String },
    #[error("cannot use device {0}")]
    Device(String),
    #[error("model computation failed: {0}")]
    Compute(#[from] candle_core::Error),
    #[error(transparent)]
    Asset(#[from] crate::assets::AssetError),
}

impl ModelError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        ModelError::Io {
            path: path.to_owned(),
            source,
        }
    }

    pub(crate) fn candle(path: &Path, e: candle_core::Error) -> Self {
        ModelError::Candle {
            path: path.to_owned(),
            detail: e.to_string(),
        }
    }
}
