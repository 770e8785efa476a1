//! `azr bench update`: one policy update (forward, clipped policy-gradient loss, backward,
//! AdamW) on a batch of fixed sequences, against a no-gradient forward over the same batch in
//! the same process: the ratio says what training costs per token beyond reading it.

use std::fmt;
use std::time::Instant;

use candle_core::DType;

use crate::memory::peak_rss_mb;
use crate::model::logprobs::{completion_logprobs, Scored};
use crate::model::{DeviceSpec, Model, ModelConfig};
use crate::rl::optim::{AdamW, OptimConfig};
use crate::rl::update::{passes, update, Rollout, UpdateConfig};

/// Options of the update benchmark.
#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    /// A model folder or a known model name.
    #[arg(long, default_value = "smollm2-135m-instruct")]
    pub model: String,
    /// Sequences in the batch.
    #[arg(long, default_value_t = 8)]
    pub sequences: usize,
    /// Prompt tokens per sequence (scored as context, no loss).
    #[arg(long, default_value_t = 128)]
    pub prompt_tokens: usize,
    /// Completion tokens per sequence (the loss's tokens).
    #[arg(long, default_value_t = 128)]
    pub completion_tokens: usize,
    /// Sequences per prompt: consecutive sequences share their prompt, as a task's solver
    /// samples do (the update then computes each prompt once per pass).
    #[arg(long, default_value_t = 1)]
    pub samples: usize,
    /// Sequences per forward/backward pass.
    #[arg(long, default_value_t = 1)]
    pub micro_batch: usize,
    /// Timed updates (after one untimed warm-up); the median is reported.
    #[arg(long, default_value_t = 3)]
    pub repeats: usize,
    /// Weight dtype: f32, or bf16 (with f32 master copies in the optimiser).
    #[arg(long, default_value = "f32", value_parser = ["f32", "bf16"])]
    pub dtype: String,
    /// `cpu`, `cuda` or `cuda:N`.
    #[arg(long, value_name = "DEVICE", default_value = "cpu")]
    pub device: DeviceSpec,
    /// Draw the weights at random in the shapes of --model's config.json.
    #[arg(long)]
    pub random_weights: bool,
    /// The update's large matrix products multiply bf16 roundings where the CPU multiplies
    /// bf16 pairs (AMX, AVX-512 BF16; `rl.bf16_products = true`); f32 without it.
    #[arg(long)]
    pub bf16_products: bool,
}

pub struct Report {
    pub model: String,
    pub options: Options,
    pub parameters: usize,
    /// Median seconds of a no-gradient forward (log-probs) over the batch.
    pub forward_secs: f64,
    /// Median minor page faults of a timed update: fresh pages the kernel had to zero.
    pub update_faults: u64,
    /// Median seconds of one update.
    pub update_secs: f64,
    pub peak_rss_mb: f64,
}

/// Runs the benchmark on the model in `dir`.
pub fn run(opts: &Options, dir: &std::path::Path) -> anyhow::Result<Report> {
    anyhow::ensure!(
        opts.sequences >= 1 && opts.samples >= 1 && opts.micro_batch >= 1 && opts.repeats >= 1,
        "--sequences, --samples, --micro-batch and --repeats must be at least 1"
    );
    anyhow::ensure!(
        opts.prompt_tokens >= 1 && opts.completion_tokens >= 1,
        "--prompt-tokens and --completion-tokens must be at least 1"
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
    let tokens = |row: usize, n: usize, salt: usize| -> Vec<u32> {
        (0..n)
            .map(|i| ((row * 7919 + i * 104_729 + salt) as u32) % vocab)
            .collect()
    };
    let mut rollouts: Vec<Rollout> = (0..opts.sequences)
        .map(|row| Rollout {
            prompt: tokens(row / opts.samples, opts.prompt_tokens, 1),
            completion: tokens(row, opts.completion_tokens, 2),
            logprobs: vec![],
            ref_logprobs: vec![],
            // Half rewarded, so every sequence has a non-zero advantage.
            reward: (row % 2) as f32,
            task_group: 0,
            prompt_group: (row / opts.samples) as u64,
        })
        .collect();
    let config = UpdateConfig {
        micro_batch: opts.micro_batch,
        pass_tokens: 0,
        bf16_products: opts.bf16_products,
        ..Default::default()
    };
    let all: Vec<usize> = (0..rollouts.len()).collect();
    let plan = passes(&rollouts, &all, &config);

    // The sampling-time log-probs are the current policy's, as right after generation.
    let forward = || -> anyhow::Result<Vec<Vec<f32>>> {
        let mut out = vec![Vec::new(); rollouts.len()];
        for pass in &plan {
            let batch: Vec<Scored> = pass
                .iter()
                .map(|&i| Scored {
                    prompt: &rollouts[i].prompt,
                    completion: &rollouts[i].completion,
                })
                .collect();
            let flat: Vec<f32> = completion_logprobs(&model, &batch, 1.0, false)?
                .to_dtype(DType::F32)?
                .to_vec1()?;
            for (&i, lp) in pass.iter().zip(flat.chunks(opts.completion_tokens)) {
                out[i] = lp.to_vec();
            }
        }
        Ok(out)
    };
    let mut forward_secs = Vec::new();
    let mut logprobs = forward()?;
    for _ in 0..opts.repeats {
        let started = Instant::now();
        logprobs = forward()?;
        forward_secs.push(started.elapsed().as_secs_f64());
    }
    for (r, lp) in rollouts.iter_mut().zip(logprobs) {
        r.logprobs = lp;
    }

    let params = model
        .named_vars()
        .into_iter()
        .map(|(_, v)| v.clone())
        .collect();
    // A learning rate of 0 keeps every timed update on the same weights and the same work.
    let mut optimizer = AdamW::new(
        params,
        OptimConfig {
            lr: 0.0,
            ..Default::default()
        },
    )?;
    update(&model, &mut optimizer, &rollouts, &config)?;
    let mut update_secs = Vec::new();
    let mut update_faults = Vec::new();
    for _ in 0..opts.repeats {
        let (started, faults) = (Instant::now(), minor_faults());
        update(&model, &mut optimizer, &rollouts, &config)?;
        device.synchronize()?;
        update_secs.push(started.elapsed().as_secs_f64());
        update_faults.push(minor_faults() - faults);
    }
    Ok(Report {
        model: dir.display().to_string(),
        options: opts.clone(),
        parameters: model.config.parameter_count(),
        forward_secs: median(forward_secs),
        update_secs: median(update_secs),
        update_faults: median(update_faults),
        peak_rss_mb: peak_rss_mb(),
    })
}

fn median<T: PartialOrd>(mut xs: Vec<T>) -> T {
    xs.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    xs.swap_remove(xs.len() / 2)
}

/// Minor page faults of this process so far.
fn minor_faults() -> u64 {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage fills the struct it is given; on failure it stays zeroed.
    unsafe {
        libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr());
        usage.assume_init().ru_minflt as u64
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let o = &self.options;
        let tokens = (o.sequences * (o.prompt_tokens + o.completion_tokens)) as f64;
        writeln!(
            f,
            "model {}{} ({:.0} M parameters, {} on {}, {} products), {} x ({} + {}) tokens, {} per prompt, micro-batch {}, {} threads",
            self.model,
            if o.random_weights { ", random weights" } else { "" },
            self.parameters as f64 / 1e6,
            o.dtype,
            o.device,
            if o.bf16_products { "bf16" } else { "f32" },
            o.sequences,
            o.prompt_tokens,
            o.completion_tokens,
            o.samples,
            o.micro_batch,
            rayon::current_num_threads()
        )?;
        writeln!(f, "| work | seconds | tokens/s | vs forward |")?;
        writeln!(f, "| --- | ---: | ---: | ---: |")?;
        for (name, secs) in [
            ("forward, no gradients", self.forward_secs),
            ("update: forward, backward, AdamW", self.update_secs),
        ] {
            writeln!(
                f,
                "| {name} | {secs:.2} | {:.0} | {:.2}x |",
                tokens / secs,
                secs / self.forward_secs
            )?;
        }
        writeln!(
            f,
            "minor page faults per update {} ({:.1} GB of fresh pages)",
            self.update_faults,
            self.update_faults as f64 * 4096.0 / 1e9
        )?;
        write!(f, "peak RSS {:.0} MiB", self.peak_rss_mb)
    }
}
