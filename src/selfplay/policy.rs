//! The model in its self-play role: rendering chat prompts into tokens and sampling
//! completions in batches.

use std::path::PathBuf;

use crate::generate::{self, GenerateConfig, Generation};
use crate::model::{Model, ModelError, TextTokenizer};
use crate::tasks::chat;
use crate::tasks::prompts::ChatPrompt;

/// The model being trained, with its tokenizer.
pub struct Policy {
    pub model: Model,
    pub tokenizer: TextTokenizer,
    /// Folder the tokenizer was loaded from: the base model, or the checkpoint resumed.
    pub dir: PathBuf,
}

impl Policy {
    /// Tokens of a prompt: the model's chat template when it has one, else AZR's plain frame,
    /// opened at `<think>`.
    pub fn render(&self, prompt: &ChatPrompt) -> Result<Vec<u32>, ModelError> {
        let text = chat::selfplay(self.tokenizer.chat_template(), prompt).map_err(|e| {
            ModelError::Invalid {
                path: self.dir.clone(),
                detail: format!("the chat template failed: {e}"),
            }
        })?;
        self.tokenizer.encode(&text)
    }

    /// Completions for `prompts`, up to `batch` rows decoding at once.
    pub fn sample(
        &self,
        prompts: &[Vec<u32>],
        config: &GenerateConfig,
        batch: usize,
    ) -> Result<Vec<Generation>, ModelError> {
        self.sample_with(prompts, config, batch, |_, _| {}, |_| {})
    }

    /// [`Policy::sample`], calling `done(i, g)` as each completion finishes (prompt `i`), so a
    /// caller can start checking it while the rest generate, and `sampled(n)` after every
    /// sampling step (n tokens).
    pub fn sample_with(
        &self,
        prompts: &[Vec<u32>],
        config: &GenerateConfig,
        batch: usize,
        done: impl FnMut(usize, &Generation),
        sampled: impl FnMut(usize),
    ) -> Result<Vec<Generation>, ModelError> {
        generate::generate_batches(
            &self.model,
            &self.tokenizer,
            prompts,
            config,
            batch,
            done,
            sampled,
        )
    }
}
