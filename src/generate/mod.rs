//! Generation: batched sampling from the decoder with a KV cache. Prompts of different lengths
//! are left-padded into one batch; each row stops at an end-of-sequence token, at a stop string,
//! or at the token limit. Returns token ids, text and the log-probability of every sampled token.

pub mod sample;

use std::collections::HashMap;
use std::sync::Arc;

use candle_core::{Device, Tensor};
use rand::{rngs::StdRng, SeedableRng};
use serde::{Deserialize, Serialize};

pub use sample::Sampling;

use crate::model::{DecodeWeights, KvCache, Model, ModelError, TextTokenizer};

/// What generation needs from a tokenizer.
pub trait Vocabulary {
    /// Text of `ids`, special tokens dropped.
    fn decode(&self, ids: &[u32]) -> String;
    /// Tokens that end a completion.
    fn eos_ids(&self) -> &[u32];
    /// Token placed in padding columns (never attended to).
    fn pad_id(&self) -> u32;
}

impl Vocabulary for TextTokenizer {
    fn decode(&self, ids: &[u32]) -> String {
        TextTokenizer::decode(self, ids)
    }
    fn eos_ids(&self) -> &[u32] {
        TextTokenizer::eos_ids(self)
    }
    fn pad_id(&self) -> u32 {
        TextTokenizer::pad_id(self)
    }
}

/// What to generate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenerateConfig {
    pub max_new_tokens: usize,
    /// 0 for greedy.
    pub temperature: f32,
    pub top_p: f32,
    pub seed: u64,
    /// Text that ends a completion (kept out of the returned text).
    pub stop: Vec<String>,
    /// When set, a stop string counts only after the first occurrence of this text (self-play
    /// stops at `</answer>` only once the reasoning has closed with `</think>`).
    #[serde(default)]
    pub stop_after: Option<String>,
    /// Decode steps multiply bf16 copies of f32 weights, taken at the start of the call,
    /// where the CPU has AVX-512 (ignored elsewhere): about 1.3x the tokens per second, with
    /// log-probs within bf16 rounding of the f32 model's.
    #[serde(default)]
    pub bf16_decode: bool,
}

impl Default for GenerateConfig {
    fn default() -> Self {
        Self {
            max_new_tokens: 256,
            temperature: 1.0,
            top_p: 1.0,
            seed: 0,
            stop: Vec::new(),
            stop_after: None,
            bf16_decode: false,
        }
    }
}

/// Why a completion ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Finish {
    Eos,
    Stop,
    Length,
}

/// One completion.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Generation {
    /// Sampled tokens, the end-of-sequence token included when there was one.
    pub tokens: Vec<u32>,
    /// Decoded text, cut before a stop string.
    pub text: String,
    /// log p(token) under the sampling distribution (tempered), one per token.
    pub logprobs: Vec<f32>,
    pub finish: Finish,
}

/// Generates one completion per prompt, all in one batch.
pub fn generate(
    model: &Model,
    tokenizer: &dyn Vocabulary,
    prompts: &[Vec<u32>],
    config: &GenerateConfig,
) -> Result<Vec<Generation>, ModelError> {
    let weights = decode_weights(model, config)?;
    generate_using(model, weights, tokenizer, prompts, config, &mut |_| {})
}

/// Completions for `prompts`, `batch` at a time; batch k samples with seed `seed + k`. The
/// batches share one set of bf16 decode copies, as the weights do not change between them.
/// `done(start, batch)` sees each batch as it finishes (its first prompt's index, its
/// completions), so a caller can start checking them while the next batch generates;
/// `sampled(n)` sees every sampling step (n tokens, one per live row), for progress displays.
pub fn generate_batches(
    model: &Model,
    tokenizer: &dyn Vocabulary,
    prompts: &[Vec<u32>],
    config: &GenerateConfig,
    batch: usize,
    mut done: impl FnMut(usize, &[Generation]),
    mut sampled: impl FnMut(usize),
) -> Result<Vec<Generation>, ModelError> {
    let weights = decode_weights(model, config)?;
    let mut out = Vec::with_capacity(prompts.len());
    for (k, chunk) in prompts.chunks(batch.max(1)).enumerate() {
        let config = GenerateConfig {
            seed: config.seed.wrapping_add(k as u64),
            ..config.clone()
        };
        let generated = generate_using(
            model,
            weights.clone(),
            tokenizer,
            chunk,
            &config,
            &mut sampled,
        )?;
        done(out.len(), &generated);
        out.extend(generated);
    }
    Ok(out)
}

/// The bf16 decode copies `config` asks for, where the model and CPU can use them.
fn decode_weights(
    model: &Model,
    config: &GenerateConfig,
) -> Result<Option<Arc<DecodeWeights>>, ModelError> {
    Ok(match config.bf16_decode {
        true => DecodeWeights::of_model(model)?.map(Arc::new),
        false => None,
    })
}

/// [`generate`] with the decode copies already taken.
fn generate_using(
    model: &Model,
    weights: Option<Arc<DecodeWeights>>,
    tokenizer: &dyn Vocabulary,
    prompts: &[Vec<u32>],
    config: &GenerateConfig,
    sampled: &mut dyn FnMut(usize),
) -> Result<Vec<Generation>, ModelError> {
    let device = model.device().clone();
    let sampling = Sampling {
        temperature: config.temperature,
        top_p: config.top_p,
    };
    let mut rng = StdRng::seed_from_u64(config.seed);
    let b = prompts.len();
    let width = prompts.iter().map(Vec::len).max().unwrap_or(0);
    if b == 0 || width == 0 || config.max_new_tokens == 0 {
        return Ok(prompts.iter().map(|_| empty()).collect());
    }
    let padded = prompts.iter().any(|p| p.len() < width);
    let pad = tokenizer.pad_id();
    let mut mask: Vec<Vec<u32>> = prompts.iter().map(|p| key_row(p.len(), width)).collect();
    let mut cache = KvCache::with_weights(weights).reserving(width + config.max_new_tokens);
    let mut logits = prefill(model, prompts, pad, width, &mut cache)?;
    let mut out: Vec<Generation> = prompts.iter().map(|_| empty()).collect();
    // The prompt row of each batch position; rows leave the batch when they finish.
    let mut live: Vec<usize> = (0..b).collect();
    for step in 0..config.max_new_tokens {
        let logits_rows: Vec<Vec<f32>> = logits.to_vec2()?;
        sampled(logits_rows.len());
        let mut next = Vec::with_capacity(live.len());
        let mut keep = Vec::with_capacity(live.len());
        for (pos, row) in logits_rows.iter().enumerate() {
            let (token, logprob) = sample::choose(row, sampling, &mut rng);
            let g = &mut out[live[pos]];
            g.tokens.push(token);
            g.logprobs.push(logprob);
            if tokenizer.eos_ids().contains(&token) {
                g.finish = Finish::Eos;
                continue;
            }
            if stop_at(&tokenizer.decode(&g.tokens), config).is_some() {
                g.finish = Finish::Stop;
                continue;
            }
            keep.push(pos);
            next.push(token);
        }
        if keep.is_empty() {
            break;
        }
        if keep.len() < live.len() {
            let rows: Vec<u32> = keep.iter().map(|&p| p as u32).collect();
            cache.keep_rows(&Tensor::new(rows.as_slice(), &device)?)?;
            live = keep.iter().map(|&p| live[p]).collect();
            mask = keep.iter().map(|&p| std::mem::take(&mut mask[p])).collect();
        }
        // The next column holds a real token for every live row.
        for m in &mut mask {
            m.push(1);
        }
        if step + 1 == config.max_new_tokens {
            break;
        }
        let key_mask = mask_tensor(&mask, padded, &device)?;
        let input = Tensor::from_vec(next, (live.len(), 1), &device)?;
        let hidden = model.forward(&input, key_mask.as_ref(), Some(&mut cache), false)?;
        logits = model.next_token_logits(&hidden, &cache)?;
    }
    for g in &mut out {
        let text = tokenizer.decode(&g.tokens);
        g.text = match stop_at(&text, config) {
            Some(cut) if g.finish == Finish::Stop => text[..cut].to_string(),
            _ => text,
        };
    }
    Ok(out)
}

/// Where `text` ends: the start of the first stop string (after `stop_after`, when set).
fn stop_at(text: &str, config: &GenerateConfig) -> Option<usize> {
    let from = match &config.stop_after {
        Some(marker) => text.find(marker.as_str())? + marker.len(),
        None => 0,
    };
    let rest = &text[from..];
    let cut = config
        .stop
        .iter()
        .filter_map(|s| rest.find(s.as_str()))
        .min()?;
    Some(from + cut)
}

/// Runs the prompts through the model into `cache` and returns each row's next-token logits
/// (b, vocab). Identical prompts (the n samples of one solver prompt) are computed once and
/// their cache rows copied, so n samples cost one prompt's prefill.
fn prefill(
    model: &Model,
    prompts: &[Vec<u32>],
    pad: u32,
    width: usize,
    cache: &mut KvCache,
) -> Result<Tensor, ModelError> {
    let device = model.device();
    let mut distinct: Vec<&[u32]> = Vec::new();
    let mut first: HashMap<&[u32], u32> = HashMap::new();
    let source: Vec<u32> = prompts
        .iter()
        .map(|p| {
            *first.entry(p.as_slice()).or_insert_with(|| {
                distinct.push(p);
                distinct.len() as u32 - 1
            })
        })
        .collect();
    let ids: Vec<u32> = distinct
        .iter()
        .flat_map(|p| std::iter::repeat_n(pad, width - p.len()).chain(p.iter().copied()))
        .collect();
    let mask: Vec<Vec<u32>> = distinct.iter().map(|p| key_row(p.len(), width)).collect();
    let padded = distinct.iter().any(|p| p.len() < width);
    let key_mask = mask_tensor(&mask, padded, device)?;
    let input = Tensor::from_vec(ids, (distinct.len(), width), device)?;
    let hidden = model.forward(&input, key_mask.as_ref(), Some(cache), false)?;
    let logits = model.next_token_logits(&hidden, cache)?;
    if distinct.len() == prompts.len() {
        return Ok(logits);
    }
    let rows = Tensor::new(source.as_slice(), device)?;
    cache.keep_rows(&rows)?;
    Ok(logits.index_select(&rows, 0)?)
}

fn empty() -> Generation {
    Generation {
        tokens: Vec::new(),
        text: String::new(),
        logprobs: Vec::new(),
        finish: Finish::Length,
    }
}

/// A left-padded row's key mask: 0 for the padding, 1 for its `len` tokens.
fn key_row(len: usize, width: usize) -> Vec<u32> {
    [vec![0; width - len], vec![1; len]].concat()
}

/// The key mask of every row, or None when nothing is padded.
fn mask_tensor(
    mask: &[Vec<u32>],
    padded: bool,
    device: &Device,
) -> candle_core::Result<Option<Tensor>> {
    if !padded {
        return Ok(None);
    }
    let cols = mask[0].len();
    Tensor::from_vec(mask.concat(), (mask.len(), cols), device).map(Some)
}

#[cfg(test)]
mod tests;

/// A vocabulary for tests with tiny random models: token i reads as its number, 10 ends a
/// sequence and 0 pads.
#[cfg(test)]
pub(crate) struct Digits;

#[cfg(test)]
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
