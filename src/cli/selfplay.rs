//! `azr selfplay`: the main job, with a progress bar, a line per step, and Ctrl-C and SIGTERM
//! handling.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use indicatif::{ProgressBar, ProgressStyle};
use tokio::signal::unix::{signal, SignalKind};

use azr::config::Config;
use azr::model::DeviceSpec;
use azr::selfplay::{self, run_dir::RunDir, StepMetrics, TypeMetrics};

/// Run self-play: propose tasks, validate them in the sandbox, solve them, update the model.
#[derive(Debug, clap::Args)]
pub struct SelfplayArgs {
    /// Run until this many steps are done.
    #[arg(long)]
    pub steps: u64,
    /// The run directory: buffer, checkpoints, metrics and log.
    #[arg(long, value_name = "DIR", default_value = "runs/selfplay")]
    pub run: PathBuf,
    /// Continue the run in --run from its newest intact checkpoint, under the config that
    /// checkpoint stores (a --config given must match it).
    #[arg(long)]
    pub resume: bool,
    /// Run on this device (`cpu`, `cuda`, `cuda:N`) instead of the config's `run.device`.
    #[arg(long, value_name = "DEVICE")]
    pub device: Option<DeviceSpec>,
}

fn rate(n: usize, d: usize) -> String {
    if d == 0 {
        "-".into()
    } else {
        format!("{:.2}", n as f64 / d as f64)
    }
}

fn line(m: &StepMetrics) -> String {
    let validation = m.validation.map_or(String::new(), |v| {
        format!(
            " | cruxeval o/i {:.2}/{:.2} (n={})",
            v.cruxeval_o, v.cruxeval_i, v.problems
        )
    });
    format!("{}{validation}", step_line(m))
}

fn step_line(m: &StepMetrics) -> String {
    let types: [&TypeMetrics; 3] = [&m.deduction, &m.abduction, &m.induction];
    let valid: Vec<String> = types
        .iter()
        .map(|t| rate(t.valid_proposals, t.proposals))
        .collect();
    let solved: Vec<String> = types
        .iter()
        .map(|t| rate(t.solver_correct, t.solver_answers))
        .collect();
    let learn: f64 = types.iter().map(|t| t.mean_learnability).sum::<f64>() / 3.0;
    format!(
        "step {:>5} | valid d/a/i {} | solved d/a/i {} | learnability {:.2} | buffer {} | {:.0} tok/s | {:.1}s (gen {:.1}, sandbox {:.1}, update {:.1})",
        m.step,
        valid.join("/"),
        solved.join("/"),
        learn,
        m.buffer_size,
        m.generate_tokens_per_sec,
        m.seconds,
        m.generate_seconds,
        m.sandbox_seconds,
        m.update_seconds
    )
}

/// `config` is the one given with --config, if any.
pub fn run(args: SelfplayArgs, config: Option<Config>) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    // Registered before the run starts, so no signal finds the default action (death).
    let (mut interrupt, mut terminate) = {
        let _runtime = runtime.enter();
        (
            signal(SignalKind::interrupt())?,
            signal(SignalKind::terminate())?,
        )
    };
    runtime.spawn(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
        eprintln!(
            "\nazr: stopping after saving a checkpoint (a second Ctrl-C or SIGTERM aborts at once)"
        );
        flag.store(true, Ordering::Relaxed);
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
        std::process::exit(130);
    });
    let bar = ProgressBar::new(args.steps);
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} steps, {elapsed} elapsed, eta {eta}")
            .expect("valid template"),
    );
    let opts = selfplay::Options {
        run: args.run.clone(),
        steps: args.steps,
        resume: args.resume,
        config,
        device: args.device,
    };
    let summary = runtime.block_on(selfplay::run(&opts, stop, |m| {
        bar.set_position(m.step);
        bar.suspend(|| println!("{}", line(m)));
    }))?;
    bar.finish_and_clear();
    let how = if summary.stopped { "stopped" } else { "done" };
    println!(
        "{how}: steps {}..={} in {} (metrics: {}, buffer: `azr buffer stats --run {}`)",
        summary.first_step,
        summary.last_step,
        args.run.display(),
        RunDir::new(&args.run).metrics().display(),
        args.run.display()
    );
    Ok(ExitCode::SUCCESS)
}
