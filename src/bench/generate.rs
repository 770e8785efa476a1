//! `azr bench generate`: how fast the model reads a prompt (prefill) and writes tokens (decode
//! with the KV cache), per batch size, against batch 1 in the same process. Tokens are fixed,
//! not sampled, so every run does the same work.

use std::fmt;
use std::time::Instant;

use candle_core::{DType, Tensor};

use crate::model::{DecodeWeights, DeviceSpec, KvCache, Model, ModelConfig};

/// Options of the generation benchmark.
#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    /// A model folder or a known model name.
    #[arg(long, default_value = "smollm2-135m-instruct")]
    pub model: String,
    /// Batch sizes to measure (the first is the reference).
    #[arg(long, value_delimiter = ',', default_value = "1,8")]
    pub batch: Vec<usize>,
    /// Prompt length in tokens.
    #[arg(long, default_value_t = 128)]
    pub prompt_tokens: usize,
    /// Tokens decoded after the prompt.
    #[arg(long, default_value_t = 32)]
    pub new_tokens: usize,
    /// Weight dtype: f32, or bf16 (half the memory traffic).
    #[arg(long, default_value = "f32", value_parser = ["f32", "bf16"])]
    pub dtype: String,
    /// Decode steps multiply bf16 copies of f32 weights (as generation does with
    /// `run.bf16_decode`); the copies are taken per batch size, and timed.
    #[arg(long)]
    pub bf16_decode: bool,
    /// `cpu`, `cuda` or `cuda:N`.
    #[arg(long, value_name = "DEVICE", default_value = "cpu")]
    pub device: DeviceSpec,
    /// Draw the weights at random in the shapes of --model's config.json (the folder needs
    /// nothing else): measures architectures whose weights are not on the machine.
    #[arg(long)]
    pub random_weights: bool,
}

/// One batch size's figures.
#[derive(Debug, Clone)]
pub struct Row {
    pub batch: usize,
    pub prefill_tokens_per_sec: f64,
    pub decode_tokens_per_sec: f64,
    pub ms_per_decode_step: f64,
    /// Time to take the bf16 copies of the weights, if taken.
    pub copy_ms: Option<f64>,
}

pub struct Report {
    pub model: String,
    pub options: Options,
    pub rows: Vec<Row>,
}

/// Runs the benchmark on the model in `dir`.
pub fn run(opts: &Options, dir: &std::path::Path) -> anyhow::Result<Report> {
    anyhow::ensure!(!opts.batch.is_empty(), "--batch needs at least one size");
    anyhow::ensure!(
        opts.prompt_tokens >= 1 && opts.new_tokens >= 1,
        "--prompt-tokens and --new-tokens must be at least 1"
    );
    let dtype = match opts.dtype.as_str() {
        "bf16" => DType::BF16,
        _ => DType::F32,
    };
    let device = opts.device.open()?;
    let model = match opts.random_weights {
        true => Model::random(ModelConfig::load(dir)?, 0, &device, dtype)?,
        false => Model::load(dir, &device, dtype)?,
    };
    let vocab = model.config.vocab_size as u32;
    // Warm-up: first calls allocate and page in the weights.
    measure(&model, 1, 8, 2, vocab, opts.bf16_decode)?;
    let rows = opts
        .batch
        .iter()
        .map(|&b| {
            let (p, n) = (opts.prompt_tokens, opts.new_tokens);
            measure(&model, b, p, n, vocab, opts.bf16_decode)
        })
        .collect::<anyhow::Result<_>>()?;
    Ok(Report {
        model: dir.display().to_string(),
        options: opts.clone(),
        rows,
    })
}

fn measure(
    model: &Model,
    b: usize,
    prompt: usize,
    new: usize,
    vocab: u32,
    bf16_decode: bool,
) -> anyhow::Result<Row> {
    let device = model.device();
    let ids: Vec<u32> = (0..b * prompt).map(|i| (i as u32 * 7919) % vocab).collect();
    let started = Instant::now();
    let weights = match bf16_decode {
        true => Some(DecodeWeights::of_model(model)?.ok_or_else(|| {
            anyhow::anyhow!("--bf16-decode needs f32 weights on a CPU with AVX-512")
        })?),
        false => None,
    };
    let copy_ms = weights
        .as_ref()
        .map(|_| 1e3 * started.elapsed().as_secs_f64());
    let mut cache = KvCache::with_weights(weights.map(std::sync::Arc::new)).reserving(prompt + new);
    let started = Instant::now();
    let hidden = model.forward(
        &Tensor::from_vec(ids, (b, prompt), device)?,
        None,
        Some(&mut cache),
        false,
    )?;
    model.next_token_logits(&hidden, &cache)?;
    // A GPU queues work: time it done, not launched.
    device.synchronize()?;
    let prefill = started.elapsed().as_secs_f64();
    let started = Instant::now();
    for step in 0..new {
        let next: Vec<u32> = (0..b).map(|r| (r * 31 + step) as u32 % vocab).collect();
        let hidden = model.forward(
            &Tensor::from_vec(next, (b, 1), device)?,
            None,
            Some(&mut cache),
            false,
        )?;
        model.next_token_logits(&hidden, &cache)?;
    }
    device.synchronize()?;
    let decode = started.elapsed().as_secs_f64();
    Ok(Row {
        batch: b,
        prefill_tokens_per_sec: (b * prompt) as f64 / prefill,
        decode_tokens_per_sec: (b * new) as f64 / decode,
        ms_per_decode_step: 1e3 * decode / new as f64,
        copy_ms,
    })
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let o = &self.options;
        writeln!(
            f,
            "model {}{} ({}{} on {}), prompt {} tokens, {} decoded, {} threads",
            self.model,
            if o.random_weights {
                ", random weights"
            } else {
                ""
            },
            o.dtype,
            if o.bf16_decode { ", bf16 decode" } else { "" },
            o.device,
            o.prompt_tokens,
            o.new_tokens,
            rayon::current_num_threads()
        )?;
        writeln!(
            f,
            "| batch | prefill tok/s | decode tok/s | ms / decode step | decode vs batch {} |",
            self.rows[0].batch
        )?;
        writeln!(f, "| ---: | ---: | ---: | ---: | ---: |")?;
        let reference = self.rows[0].decode_tokens_per_sec;
        for r in &self.rows {
            writeln!(
                f,
                "| {} | {:.0} | {:.1} | {:.0} | {:.2}x |",
                r.batch,
                r.prefill_tokens_per_sec,
                r.decode_tokens_per_sec,
                r.ms_per_decode_step,
                r.decode_tokens_per_sec / reference
            )?;
        }
        if let Some(ms) = self.rows.iter().filter_map(|r| r.copy_ms).reduce(f64::max) {
            writeln!(
                f,
                "bf16 copies of the weights: {ms:.0} ms (slowest of the batch sizes)"
            )?;
        }
        Ok(())
    }
}
