//! Command-line interface: one clap struct per subcommand, each with `--help` text.

mod buffer;
mod eval;
mod model;
mod sandbox;
mod selfplay;
mod tasks;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

use azr::config::Config;

/// azr: Absolute Zero self-play reasoning trainer.
///
/// A model proposes Python tasks and solves them; every task and answer is checked by running
/// the code in a WASI sandbox. Big assets are cached under $AZR_HOME (default ~/.cache/azr).
#[derive(Debug, Parser)]
#[command(name = "azr", version, propagate_version = true)]
pub struct Cli {
    /// TOML config file (see configs/default.toml); built-in defaults when omitted.
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// More log output (-v info, -vv debug); RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// The main job: self-play training (propose, validate, solve, update) in a run directory.
    Selfplay(selfplay::SelfplayArgs),
    /// Fetch and verify everything azr needs (the sandbox's Python, a model) into $AZR_HOME.
    Setup(SetupArgs),
    /// Import GGUF files and inspect models.
    #[command(subcommand)]
    Model(model::ModelCommand),
    /// Generate text from a model, for a quick look.
    Generate(model::GenerateArgs),
    /// Run Python in the sandbox.
    #[command(subcommand)]
    Sandbox(sandbox::SandboxCommand),
    /// Plot a run's metrics (accuracy, validity, learnability, rewards, buffer, lengths,
    /// throughput, update health) as PNG files.
    Report(ReportArgs),
    /// Score a model (or a samples file) on HumanEval, MBPP, CRUXEval-O or CRUXEval-I.
    Eval(eval::EvalArgs),
    /// Look at the tasks a run proposed: stats, list, show, export.
    #[command(subcommand)]
    Buffer(buffer::BufferCommand),
    /// Check proposals and answers by hand, exactly as self-play does: validate, judge.
    #[command(subcommand)]
    Tasks(tasks::TasksCommand),
    /// Measure performance.
    #[command(subcommand)]
    Bench(BenchCommand),
}

#[derive(Debug, clap::Args)]
pub struct SetupArgs {
    /// Re-hash every installed file against its pinned sha256.
    #[arg(long)]
    pub verify: bool,
    /// Also provision this named model (e.g. smollm2-135m-instruct, qwen2.5-coder-0.5b-instruct).
    #[arg(long, value_name = "NAME")]
    pub model: Option<String>,
}

#[derive(Debug, clap::Args)]
pub struct ReportArgs {
    /// The run directory (holds metrics.jsonl).
    #[arg(long, value_name = "DIR")]
    pub run: PathBuf,
    /// Where to write the PNGs (default: DIR/report).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// One point per N steps, pooling their counts (accuracy = correct / answers over the N
    /// steps); 1 plots every step.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub every: usize,
}

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Task checks per second and latency, sandbox vs a native python3 subprocess per check.
    Sandbox(azr::bench::sandbox::Options),
    /// Prefill and decode tokens per second of a model, per batch size, vs batch 1.
    Generate(azr::bench::generate::Options),
    /// Share of valid proposals per task type, and why the others were rejected.
    Propose(azr::bench::propose::Options),
    /// One policy update (forward, loss, backward, AdamW) against a plain forward.
    Update(azr::bench::update::Options),
}

/// A benchmark's model folder: with random weights only its config.json is read, so it need
/// not be a provisioned model.
fn bench_model(model: &str, random_weights: bool) -> anyhow::Result<PathBuf> {
    match random_weights {
        true => Ok(PathBuf::from(model)),
        false => Ok(azr::model::provision::resolve(&azr::assets::home(), model)?),
    }
}

impl Cli {
    /// Where this command also logs (at info level): `azr.log` in a self-play run directory.
    pub fn log_file(&self) -> Option<PathBuf> {
        match &self.command {
            // A resume of a missing directory is refused; logging must not create it first.
            Command::Selfplay(args) if args.resume && !args.run.is_dir() => None,
            Command::Selfplay(args) => Some(args.run.join("azr.log")),
            _ => None,
        }
    }
}

/// Logs to stderr (warn, or what -v / RUST_LOG say) and, when given, to a file at info level.
pub fn init_logging(verbose: u8, file: Option<PathBuf>) {
    use tracing_subscriber::{
        fmt, layer::SubscriberExt, util::SubscriberInitExt, EnvFilter, Layer,
    };
    let default = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = || EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let stderr = fmt::layer()
        .with_writer(std::io::stderr)
        .with_filter(filter());
    let file = file.and_then(|path| {
        std::fs::create_dir_all(path.parent()?).ok()?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .ok()?;
        Some(
            fmt::layer()
                .with_ansi(false)
                .with_writer(std::sync::Mutex::new(log))
                .with_filter(EnvFilter::new(if verbose > 1 { "debug" } else { "info" })),
        )
    });
    tracing_subscriber::registry()
        .with(stderr)
        .with(file)
        .init();
}

fn load_config(path: Option<&PathBuf>) -> anyhow::Result<Config> {
    match path {
        Some(path) => Ok(Config::load(path)?),
        None => Ok(Config::default()),
    }
}

pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    if let Command::Selfplay(args) = cli.command {
        let given = cli
            .config
            .as_ref()
            .map(|p| load_config(Some(p)))
            .transpose()?;
        return selfplay::run(args, given);
    }
    let config = load_config(cli.config.as_ref())?;
    match cli.command {
        Command::Selfplay(_) => unreachable!("handled above"),
        Command::Setup(args) => setup(&args),
        Command::Sandbox(cmd) => sandbox::run(cmd, &config),
        Command::Model(cmd) => model::run(cmd),
        Command::Report(args) => {
            let out = args.out.clone().unwrap_or_else(|| args.run.join("report"));
            for file in azr::report::write(&args.run, &out, args.every)? {
                println!("{}", file.display());
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Generate(args) => model::generate(args),
        Command::Buffer(cmd) => buffer::run(cmd, &config),
        Command::Tasks(cmd) => tasks::run(cmd, &config),
        Command::Eval(args) => eval::run(args, &config),
        Command::Bench(BenchCommand::Generate(opts)) => {
            let dir = bench_model(&opts.model, opts.random_weights)?;
            println!("{}", azr::bench::generate::run(&opts, &dir)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench(BenchCommand::Update(opts)) => {
            let dir = bench_model(&opts.model, opts.random_weights)?;
            println!("{}", azr::bench::update::run(&opts, &dir)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench(BenchCommand::Propose(opts)) => {
            let buffer = opts.run.as_ref().map(|dir| dir.join("buffer.sqlite"));
            let mut file = match &opts.completions {
                Some(path) => Some(
                    std::fs::File::create(path)
                        .with_context(|| format!("creating {}", path.display()))?,
                ),
                None => None,
            };
            let out = file.as_mut().map(|f| f as &mut dyn std::io::Write);
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            let report = runtime.block_on(azr::selfplay::probe::propose_only(
                &config,
                buffer.as_deref(),
                opts.proposals,
                opts.seed,
                out,
            ))?;
            println!("{report}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench(BenchCommand::Sandbox(opts)) => {
            let report = azr::bench::sandbox::run(&opts, &config.sandbox)?;
            println!("{report}");
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn setup(args: &SetupArgs) -> anyhow::Result<ExitCode> {
    let home = azr::assets::home();
    println!("AZR_HOME = {}", home.display());
    let python = azr::assets::python::ensure(&home).context("provisioning the sandbox's Python")?;
    if args.verify {
        python.verify().context("verifying the sandbox's Python")?;
        println!("python: every file matches its pinned sha256");
    }
    // Building the sandbox compiles and caches the interpreter, and proves it starts.
    let sandbox = azr::sandbox::Sandbox::with_home(&home, &Default::default())?;
    let run = sandbox.run_program_blocking(
        "import sys; print(sys.version.split()[0])",
        Default::default(),
    );
    anyhow::ensure!(
        run.outcome.is_success(),
        "the sandbox's Python did not start: {:?}\n{}",
        run.outcome,
        run.stderr
    );
    println!(
        "python {} ready in the sandbox ({})",
        run.stdout.trim(),
        python.snapshot().display()
    );
    if let Some(name) = &args.model {
        let model = azr::model::provision::find(name)?;
        let dir = azr::model::provision::ensure(&home, model)?;
        println!(
            "model {name} ready in {} ({})",
            dir.display(),
            model.license
        );
    }
    Ok(ExitCode::SUCCESS)
}
