//! The model's tokenizer (`tokenizer.json`) with what `tokenizer_config.json` adds: the chat
//! template and the end-of-sequence tokens.

use std::path::Path;

use tokenizers::Tokenizer;

use super::ModelError;

/// Tokenizer plus chat metadata.
pub struct TextTokenizer {
    inner: Tokenizer,
    chat_template: Option<String>,
    eos_ids: Vec<u32>,
    pad_id: u32,
}

impl TextTokenizer {
    /// Loads `tokenizer.json` and, if present, `tokenizer_config.json` from a model folder.
    /// `config_eos` are the ids `config.json` names as end of sequence.
    pub fn load(dir: &Path, config_eos: &[u32]) -> Result<Self, ModelError> {
        let path = dir.join("tokenizer.json");
        let inner = Tokenizer::from_file(&path).map_err(|e| ModelError::Invalid {
            path: path.clone(),
            detail: e.to_string(),
        })?;
        let config_path = dir.join("tokenizer_config.json");
        let config: serde_json::Value = match std::fs::read_to_string(&config_path) {
            Ok(text) => serde_json::from_str(&text).map_err(|e| ModelError::Invalid {
                path: config_path.clone(),
                detail: e.to_string(),
            })?,
            Err(_) => serde_json::Value::Null,
        };
        let token_id = |key: &str| {
            let token = match &config[key] {
                serde_json::Value::String(s) => Some(s.as_str()),
                serde_json::Value::Object(o) => o.get("content").and_then(|c| c.as_str()),
                _ => None,
            };
            token.and_then(|t| inner.token_to_id(t))
        };
        let mut eos_ids = config_eos.to_vec();
        eos_ids.extend(token_id("eos_token"));
        eos_ids.sort_unstable();
        eos_ids.dedup();
        let pad_id = token_id("pad_token")
            .or(eos_ids.first().copied())
            .unwrap_or(0);
        Ok(Self {
            chat_template: config["chat_template"].as_str().map(str::to_string),
            inner,
            eos_ids,
            pad_id,
        })
    }

    /// Token ids of `text`; special tokens written in the text (`<|im_start|>`) are recognised.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, ModelError> {
        let encoding = self
            .inner
            .encode(text, false)
            .map_err(|e| ModelError::Invalid {
                path: "<tokenizer>".into(),
                detail: e.to_string(),
            })?;
        Ok(encoding.get_ids().to_vec())
    }

    /// Text of `ids`, special tokens dropped.
    pub fn decode(&self, ids: &[u32]) -> String {
        self.inner.decode(ids, true).unwrap_or_default()
    }

    pub fn chat_template(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }

    pub fn eos_ids(&self) -> &[u32] {
        &self.eos_ids
    }

    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }
}
