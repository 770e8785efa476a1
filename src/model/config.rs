//! The decoder's hyper-parameters, read from (and written as) a Hugging Face `config.json`, so
//! folders azr writes load in `transformers` and folders from elsewhere load here.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::ModelError;

/// Most angles in each rotary table: 256 MiB of f32, enough for a million positions.
const MAX_ROTARY_ANGLES: usize = 1 << 26;

/// Most parameters a model may have: 2^36 (69 billion) f32 weights and two moments are 825 GB.
const MAX_PARAMETERS: usize = 1 << 36;

/// Supported architectures. A Llama model is a Qwen2 model without q/k/v biases.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Architecture {
    Qwen2,
    Llama,
}

/// `config.json` fields the decoder uses (others are kept on write by `extra`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    pub model_type: Architecture,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub vocab_size: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub max_position_embeddings: usize,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    /// Llama's switch for q/k/v biases; Qwen2 always has them.
    #[serde(default)]
    pub attention_bias: bool,
    #[serde(default)]
    pub bos_token_id: Option<u32>,
    #[serde(default)]
    pub eos_token_id: Option<EosIds>,
    /// Everything else in the file, written back unchanged.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

/// `eos_token_id` is one id or a list in HF configs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum EosIds {
    One(u32),
    Many(Vec<u32>),
}

impl ModelConfig {
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    /// Whether q/k/v projections carry biases.
    pub fn qkv_bias(&self) -> bool {
        self.model_type == Architecture::Qwen2 || self.attention_bias
    }

    pub fn eos_ids(&self) -> Vec<u32> {
        match &self.eos_token_id {
            Some(EosIds::One(id)) => vec![*id],
            Some(EosIds::Many(ids)) => ids.clone(),
            None => vec![],
        }
    }

    /// Reads `config.json` from a model folder.
    pub fn load(dir: &Path) -> Result<Self, ModelError> {
        let path = dir.join("config.json");
        let text = std::fs::read_to_string(&path).map_err(|e| ModelError::io(&path, e))?;
        let config: Self = serde_json::from_str(&text).map_err(|e| ModelError::Invalid {
            path: path.clone(),
            detail: format!("{e} (supported model_type: qwen2, llama)"),
        })?;
        config
            .validate()
            .map_err(|detail| ModelError::Invalid { path, detail })?;
        Ok(config)
    }

    /// Rejects shapes the decoder cannot run, and sizes too large to allocate, before anything
    /// is allocated from them.
    pub fn validate(&self) -> Result<(), String> {
        // (key, value, most allowed): far beyond any model azr can train, small enough that the
        // sizes computed from them cannot overflow.
        for (key, value, most) in [
            ("hidden_size", self.hidden_size, 1 << 20),
            ("intermediate_size", self.intermediate_size, 1 << 20),
            ("vocab_size", self.vocab_size, 1 << 22),
            ("num_hidden_layers", self.num_hidden_layers, 1 << 10),
            (
                "max_position_embeddings",
                self.max_position_embeddings,
                1 << 22,
            ),
        ] {
            if !(1..=most).contains(&value) {
                return Err(format!(
                    "{key} = {value} is out of range; it must be in [1, {most}]"
                ));
            }
        }
        for (key, value) in [
            ("rms_norm_eps", self.rms_norm_eps),
            ("rope_theta", self.rope_theta),
        ] {
            if !(value.is_finite() && value > 0.0) {
                return Err(format!("{key} = {value} must be a finite number > 0"));
            }
        }
        if self.num_attention_heads == 0
            || !self.hidden_size.is_multiple_of(self.num_attention_heads)
        {
            return Err(format!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            ));
        }
        if self.num_key_value_heads == 0
            || !self
                .num_attention_heads
                .is_multiple_of(self.num_key_value_heads)
        {
            return Err(format!(
                "num_attention_heads {} is not a multiple of num_key_value_heads {}",
                self.num_attention_heads, self.num_key_value_heads
            ));
        }
        if !self.head_dim().is_multiple_of(2) {
            return Err(format!(
                "head_dim {} must be even for RoPE",
                self.head_dim()
            ));
        }
        // The rotary tables hold max_position_embeddings x head_dim / 2 angles each.
        let angles = self.max_position_embeddings * self.head_dim() / 2;
        if angles > MAX_ROTARY_ANGLES {
            return Err(format!(
                "max_position_embeddings = {} with head_dim {} needs rotary tables of {angles} angles, more than {MAX_ROTARY_ANGLES}",
                self.max_position_embeddings,
                self.head_dim()
            ));
        }
        if self.parameter_count() > MAX_PARAMETERS {
            return Err(format!(
                "{} parameters is more than azr can hold ({MAX_PARAMETERS}: each takes 12 bytes in training)",
                self.parameter_count()
            ));
        }
        Ok(())
    }

    /// Parameter count implied by the shapes.
    pub fn parameter_count(&self) -> usize {
        let (h, i, kv) = (
            self.hidden_size,
            self.intermediate_size,
            self.num_key_value_heads * self.head_dim(),
        );
        let bias = if self.qkv_bias() { h + 2 * kv } else { 0 };
        let layer = h * h * 2 + h * kv * 2 + bias + 3 * h * i + 2 * h;
        let embed = self.vocab_size * h;
        let head = if self.tie_word_embeddings { 0 } else { embed };
        embed + head + self.num_hidden_layers * layer + h
    }

    /// The HF `architectures` entry for this model type.
    pub fn hf_architecture(&self) -> &'static str {
        match self.model_type {
            Architecture::Qwen2 => "Qwen2ForCausalLM",
            Architecture::Llama => "LlamaForCausalLM",
        }
    }
}

impl ModelConfig {
    /// A tiny configuration for tests with random weights.
    #[cfg(test)]
    pub(crate) fn tiny(model_type: Architecture, tie_word_embeddings: bool) -> Self {
        Self {
            model_type,
            hidden_size: 8,
            intermediate_size: 12,
            num_hidden_layers: 2,
            num_attention_heads: 2,
            num_key_value_heads: 1,
            vocab_size: 11,
            rms_norm_eps: 1e-6,
            rope_theta: 10_000.0,
            max_position_embeddings: 64,
            tie_word_embeddings,
            attention_bias: false,
            bos_token_id: None,
            eos_token_id: None,
            extra: Default::default(),
        }
    }
}
