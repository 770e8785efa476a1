//! Generation: batched sampling from the decoder with a KV cache. Prompts of different lengths
//! are left-padded into one batch; each row stops at an end-of-sequence token, at a stop string,
//! or at the token limit, and a waiting prompt takes its place. Returns token ids, text and the
//! log-probability of every sampled token.

pub mod sample;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use candle_core::Tensor;
use rand::{rngs::StdRng, SeedableRng};
use rayon::prelude::*;
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
    /// where the CPU has AVX-512 (ignored elsewhere; prompt passes too where it multiplies
    /// bf16 pairs, with AVX-512 BF16 or AMX):
    /// about 1.3x the tokens per second, with log-probs within bf16 rounding of the f32
    /// model's.
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
    generate_batches(
        model,
        tokenizer,
        prompts,
        config,
        prompts.len(),
        |_, _| {},
        |_| {},
    )
}

/// Completions for `prompts`, decoding up to `batch` rows at once. When a row finishes, the
/// next waiting prompt is prefilled and takes its place (continuous batching), so the batch
/// runs at its width until the prompts run out rather than shrinking to its longest row.
/// Prompts start in order, and the rows share one set of bf16 decode copies. Completion `i`
/// samples from its own stream of `seed`, so what it writes does not depend on the batch
/// size or on which rows it decoded beside. `done(i, g)` sees each completion as it finishes (prompt `i`), so a
/// caller can start checking it while the rest generate; `sampled(n)` sees every sampling
/// step (n tokens, one per live row), for progress displays.
pub fn generate_batches(
    model: &Model,
    tokenizer: &dyn Vocabulary,
    prompts: &[Vec<u32>],
    config: &GenerateConfig,
    batch: usize,
    done: impl FnMut(usize, &Generation),
    mut sampled: impl FnMut(usize),
) -> Result<Vec<Generation>, ModelError> {
    let mut rows = Rows {
        tokenizer,
        config,
        sampling: Sampling {
            temperature: config.temperature,
            top_p: config.top_p,
        },
        streams: (0..prompts.len()).map(|i| stream(config.seed, i)).collect(),
        out: prompts.iter().map(|_| empty()).collect(),
        done,
    };
    // An empty prompt has nothing to condition on, and a zero limit nothing to write.
    let mut waiting = VecDeque::with_capacity(prompts.len());
    for (i, prompt) in prompts.iter().enumerate() {
        match prompt.is_empty() || config.max_new_tokens == 0 {
            true => rows.finish(i),
            false => waiting.push_back(i),
        }
    }
    if waiting.is_empty() {
        return Ok(rows.out);
    }
    let first: Vec<usize> = waiting.drain(..batch.clamp(1, waiting.len())).collect();
    let width = first.iter().map(|&i| prompts[i].len()).max().unwrap_or(0);
    let cache = KvCache::with_weights(decode_weights(model, config)?)
        .reserving(width + config.max_new_tokens);
    let pad = tokenizer.pad_id();
    let mut time = Timing::default();
    let (mut cache, mut logits) = prefill(model, prompts, &first, pad, cache, &mut time)?;
    // The prompt of each cache row.
    let mut live = first;
    loop {
        sampled(live.len());
        // The token each row feeds the next step; None once its completion has ended.
        let mut next = rows.sample(&live, &logits)?;
        // Rows that finished take waiting prompts, whose first tokens are sampled from their
        // own prompt pass (one may end at once and free its row again).
        loop {
            let free: Vec<usize> = (0..next.len())
                .filter(|&r| next[r].is_none())
                .take(waiting.len())
                .collect();
            if free.is_empty() {
                break;
            }
            let new: Vec<usize> = waiting.drain(..free.len()).collect();
            let (fresh, fresh_logits) =
                prefill(model, prompts, &new, pad, cache.empty_like(), &mut time)?;
            sampled(new.len());
            cache.make_room(fresh.len())?;
            let firsts = rows.sample(&new, &fresh_logits)?;
            for (j, (&slot, &i)) in free.iter().zip(&new).enumerate() {
                cache.splice(slot, &fresh, j)?;
                live[slot] = i;
                next[slot] = firsts[j];
            }
        }
        let keep: Vec<usize> = (0..next.len()).filter(|&r| next[r].is_some()).collect();
        if keep.is_empty() {
            break;
        }
        let started = std::time::Instant::now();
        if keep.len() < live.len() {
            cache.keep_rows(&keep)?;
            live = keep.iter().map(|&r| live[r]).collect();
        }
        cache.compact()?;
        let tokens: Vec<u32> = next.into_iter().flatten().collect();
        let input = Tensor::from_vec(tokens, (live.len(), 1), model.device())?;
        let hidden = model.forward(&input, None, Some(&mut cache), false)?;
        logits = model.next_token_logits(&hidden, &cache)?;
        time.decoded(started, live.len());
    }
    time.report(rows.out.len());
    Ok(rows.out)
}

/// Where a generation call's time went: prompt passes and decode steps (debug log).
#[derive(Default)]
struct Timing {
    prefills: usize,
    /// Cache columns the prompt passes computed, padding included (rows x width).
    prefill_columns: usize,
    prefill_seconds: f64,
    steps: usize,
    /// Rows decoded, summed over steps.
    step_rows: usize,
    step_seconds: f64,
}

impl Timing {
    fn prefilled(&mut self, started: std::time::Instant, columns: usize) {
        self.prefills += 1;
        self.prefill_columns += columns;
        self.prefill_seconds += started.elapsed().as_secs_f64();
    }

    fn decoded(&mut self, started: std::time::Instant, rows: usize) {
        self.steps += 1;
        self.step_rows += rows;
        self.step_seconds += started.elapsed().as_secs_f64();
    }

    fn report(&self, completions: usize) {
        tracing::debug!(
            completions,
            prefills = self.prefills,
            prefill_columns = self.prefill_columns,
            prefill_seconds = self.prefill_seconds,
            decode_steps = self.steps,
            mean_rows = self.step_rows as f64 / self.steps.max(1) as f64,
            decode_seconds = self.step_seconds,
            "generated"
        );
    }
}

/// The completions under way and how their tokens are chosen.
struct Rows<'a, F> {
    tokenizer: &'a dyn Vocabulary,
    config: &'a GenerateConfig,
    sampling: Sampling,
    /// Each completion's own random stream.
    streams: Vec<StdRng>,
    out: Vec<Generation>,
    done: F,
}

impl<F: FnMut(usize, &Generation)> Rows<'_, F> {
    /// Samples the next token of completions `which` (distinct), completion `which[r]` from
    /// row r of `logits` (rows, vocab), the rows in parallel: for each, the token to feed the
    /// next step, or None when the completion has ended with it.
    fn sample(
        &mut self,
        which: &[usize],
        logits: &Tensor,
    ) -> candle_core::Result<Vec<Option<u32>>> {
        let vocab = logits.dim(1)?;
        // One copy of the whole batch's logits, read a row at a time.
        let logits: Vec<f32> = logits.flatten_all()?.to_vec1()?;
        let mut streams: Vec<Option<&mut StdRng>> = self.streams.iter_mut().map(Some).collect();
        let mine: Vec<&mut StdRng> = which
            .iter()
            .map(|&i| {
                streams[i]
                    .take()
                    .expect("each completion sampled once a step")
            })
            .collect();
        let sampling = self.sampling;
        let picks: Vec<(u32, f32)> = mine
            .into_par_iter()
            .zip(logits.par_chunks(vocab.max(1)))
            .map(|(rng, row)| sample::choose(row, sampling, rng))
            .collect();
        Ok(which
            .iter()
            .zip(picks)
            .map(|(&i, (token, logprob))| self.accept(i, token, logprob))
            .collect())
    }

    /// Appends `token` to completion `i`: the token to feed the next step, or None when the
    /// completion has ended with it.
    fn accept(&mut self, i: usize, token: u32, logprob: f32) -> Option<u32> {
        let g = &mut self.out[i];
        g.tokens.push(token);
        g.logprobs.push(logprob);
        g.finish = if self.tokenizer.eos_ids().contains(&token) {
            Finish::Eos
        } else if stop_at(&self.tokenizer.decode(&g.tokens), self.config).is_some() {
            Finish::Stop
        } else if g.tokens.len() >= self.config.max_new_tokens {
            Finish::Length
        } else {
            return Some(token);
        };
        self.finish(i);
        None
    }

    /// Writes completion `i`'s text and hands it to `done`.
    fn finish(&mut self, i: usize) {
        let g = &mut self.out[i];
        let text = self.tokenizer.decode(&g.tokens);
        g.text = match stop_at(&text, self.config) {
            Some(cut) if g.finish == Finish::Stop => text[..cut].to_string(),
            _ => text,
        };
        (self.done)(i, g);
    }
}

/// Completion `i`'s random stream under `seed`: ChaCha keyed by both, so no two (seed, i)
/// pairs share one.
fn stream(seed: u64, i: usize) -> StdRng {
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&seed.to_le_bytes());
    key[8..16].copy_from_slice(&(i as u64).to_le_bytes());
    StdRng::from_seed(key)
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

/// Runs prompts `which` through the model into `cache` (empty), left-padded to the longest,
/// and returns the cache and each row's next-token logits (rows, vocab). Identical prompts
/// (the n samples of one solver prompt) are computed once and their cache rows copied, so n
/// samples cost one prompt's prefill.
fn prefill(
    model: &Model,
    prompts: &[Vec<u32>],
    which: &[usize],
    pad: u32,
    cache: KvCache,
    time: &mut Timing,
) -> Result<(KvCache, Tensor), ModelError> {
    let started = std::time::Instant::now();
    let device = model.device();
    let mut distinct: Vec<&[u32]> = Vec::new();
    let mut first: HashMap<&[u32], usize> = HashMap::new();
    let source: Vec<usize> = which
        .iter()
        .map(|&i| {
            let p = prompts[i].as_slice();
            *first.entry(p).or_insert_with(|| {
                distinct.push(p);
                distinct.len() - 1
            })
        })
        .collect();
    let width = distinct.iter().map(|p| p.len()).max().unwrap_or(0);
    let ids: Vec<u32> = distinct
        .iter()
        .flat_map(|p| std::iter::repeat_n(pad, width - p.len()).chain(p.iter().copied()))
        .collect();
    let mut cache = cache.starting_at(distinct.iter().map(|p| width - p.len()).collect());
    let input = Tensor::from_vec(ids, (distinct.len(), width), device)?;
    let hidden = model.forward(&input, None, Some(&mut cache), false)?;
    let logits = model.next_token_logits(&hidden, &cache)?;
    time.prefilled(started, distinct.len() * width);
    if distinct.len() == which.len() {
        return Ok((cache, logits));
    }
    cache.keep_rows(&source)?;
    let rows: Vec<u32> = source.iter().map(|&r| r as u32).collect();
    let logits = logits.index_select(&Tensor::new(rows.as_slice(), device)?, 0)?;
    Ok((cache, logits))
}

fn empty() -> Generation {
    Generation {
        tokens: Vec::new(),
        text: String::new(),
        logprobs: Vec::new(),
        finish: Finish::Length,
    }
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
