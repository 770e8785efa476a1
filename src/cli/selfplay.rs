//! `azr selfplay`: the main job, with a progress bar, a line per step, and Ctrl-C and SIGTERM
//! handling.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use tokio::signal::unix::{signal, SignalKind};

use azr::config::Config;
use azr::model::DeviceSpec;
use azr::selfplay::{self, run_dir::RunDir, PhaseProgress, Progress, StepMetrics, TypeMetrics};

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

/// The live phase of the step: on a terminal a line under the steps bar, redrawn as tokens
/// come; otherwise a plain line as each phase starts.
fn phase_display(bars: &MultiProgress) -> Progress {
    if std::io::stderr().is_terminal() {
        let line = bars.add(ProgressBar::new_spinner());
        line.set_style(ProgressStyle::with_template("{spinner} {msg}").expect("valid template"));
        return Progress::to(move |p| {
            line.set_message(phase_line(p));
            line.tick();
        });
    }
    let current = Mutex::new(None);
    Progress::to(move |p| {
        let mut current = current.lock().unwrap_or_else(|e| e.into_inner());
        if *current != Some((p.step, p.phase)) {
            *current = Some((p.step, p.phase));
            eprintln!("{}", phase_line(p));
        }
    })
}

/// `step 3 · solving 8/24 · 16 live · 5120 tokens, 85 tok/s · 60 s`
fn phase_line(p: &PhaseProgress) -> String {
    let mut line = format!(
        "step {} · {} {}/{}",
        p.step,
        p.phase.name(),
        p.done,
        p.total
    );
    if p.tokens > 0 {
        line += &format!(
            " · {} live · {} tokens, {:.0} tok/s",
            p.live,
            p.tokens,
            p.tokens_per_second()
        );
    }
    line + &format!(" · {:.0} s", p.seconds)
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
    let bars = MultiProgress::new();
    let bar = bars.add(ProgressBar::new(args.steps));
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} steps, {elapsed} elapsed, eta {eta}")
            .expect("valid template"),
    );
    let progress = phase_display(&bars);
    let opts = selfplay::Options {
        run: args.run.clone(),
        steps: args.steps,
        resume: args.resume,
        config,
        device: args.device,
    };
    let summary = runtime.block_on(selfplay::run(&opts, stop, &progress, |m| {
        bar.set_position(m.step);
        bars.suspend(|| println!("{}", line(m)));
    }))?;
    bars.clear()?;
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
