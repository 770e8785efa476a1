//! `azr selfplay`: the main job. Each step proposes tasks, validates them in the sandbox, solves
//! a batch of tasks, rewards both roles and updates the model (`step.rs`); this module runs the
//! steps, seeds the buffer, checkpoints, and resumes.
//!
//! Where azr departs from AZR (paper and code):
//! 1. All three task types are proposed and solved every step with the same batch sizes; AZR
//!    weights them by its own batch settings.
//! 2. The proposer's learnability comes from the same n solver samples the solver is trained
//!    on (new proposals are solved first each step), not from a separate Monte-Carlo pass.
//! 3. An unlearnable task earns 0 by default (the paper's rule); AZR's code gives -0.5
//!    (`reward.unlearnable`). A proposal duplicating a buffered task (same program and
//!    input) is not stored and earns the unlearnable reward; AZR keeps duplicates.
//! 4. Induction inputs must be distinct (AZR only requires them to run), and any number at
//!    least `min_induction_examples` is accepted (AZR takes exactly its N).
//! 5. The cold start seeds `selfplay.seed_tasks` per type (AZR: 256). Like AZR's seeding it
//!    reads the code and input blocks of the whole completion, frame or not.
//! 6. A completion that ends its turn (end-of-sequence) with `<answer>` open after `</think>`
//!    counts as closed there; AZR needs the closing tag.
//! 7. Steps run their phases one after another; validation runs concurrently within its phase
//!    but does not yet overlap generation.
//! 8. There is no RNG state to checkpoint: each step's draws are seeded by (seed, step), so a
//!    resumed run draws what an uninterrupted one would.
//! 9. A program proposer sees its K references as earlier turns of its conversation, each
//!    asked for and answered in the answer's form, where AZR lists them inside one prompt:
//!    Qwen2.5-Coder-0.5B's valid proposals rose from 10% to 35% of 48 that way (`azr bench
//!    propose`, BENCHMARKS.md), though more of them are variations of those references.

mod cold_start;
pub mod policy;
pub mod probe;
pub mod progress;
pub mod run_dir;
pub mod run_lock;
mod step;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use candle_core::DType;
use rand::{rngs::StdRng, SeedableRng};

pub use progress::{Phase, PhaseProgress, Progress};
pub use step::{group_of, StepMetrics, TypeMetrics, Validation};

use crate::buffer::{seed, Buffer, BufferError};
use crate::config::{Config, RunConfig};
use crate::model::{provision, DeviceSpec, Model, ModelError, TextTokenizer};
use crate::rl::checkpoint::{self, TokenizerFiles, TrainState};
use crate::rl::optim::AdamW;
use crate::sandbox::{Sandbox, SandboxError};
use policy::Policy;
use run_dir::{RunDir, RunDirError};

/// Why a run could not start or go on.
#[derive(Debug, thiserror::Error)]
pub enum SelfplayError {
    #[error(transparent)]
    RunDir(#[from] RunDirError),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Buffer(#[from] BufferError),
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
    #[error(transparent)]
    Seed(#[from] seed::SeedError),
    #[error("model computation failed: {0}")]
    Compute(#[from] candle_core::Error),
    #[error("{0}")]
    Config(String),
    /// A spawned check panicked or was cancelled: a bug, not bad model output.
    #[error("a sandbox check did not finish: {0} (please report this)")]
    Check(String),
}

/// How to run.
#[derive(Debug, Clone)]
pub struct Options {
    pub run: PathBuf,
    /// Run until this step is done.
    pub steps: u64,
    pub resume: bool,
    /// The config given (--config): a new run's (the defaults when none), or the one a resumed
    /// run must have been started with (its own when none).
    pub config: Option<Config>,
    /// Where to compute, over the config's `run.device` (--device).
    pub device: Option<DeviceSpec>,
}

/// What a run did.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    pub first_step: u64,
    pub last_step: u64,
    /// True when a stop request ended the run early.
    pub stopped: bool,
}

/// Runs self-play. `stop` is polled between steps and phases (Ctrl-C and SIGTERM set it): the
/// run then saves a checkpoint of its last finished step and returns. `progress` hears each
/// step's phases as they go, `on_step` sees every step's metrics.
pub async fn run(
    opts: &Options,
    stop: Arc<AtomicBool>,
    progress: &Progress,
    mut on_step: impl FnMut(&StepMetrics),
) -> Result<Summary, SelfplayError> {
    let dir = RunDir::new(&opts.run);
    let _lock = dir.lock(opts.resume)?;
    let config = &dir.prepare(opts.config.as_ref(), opts.device, opts.resume)?;
    checkpoint::clear_unfinished(&dir.checkpoints())?;
    let device = config.run.device.open()?;
    let dtype = config.run.dtype.dtype(&device);
    let sandbox = Sandbox::new(&config.sandbox)?;
    let buffer = Buffer::open(&dir.buffer())?;
    let home = crate::assets::home();
    let base = provision::resolve(&home, &config.run.model)?;

    let resumed = match opts.resume {
        true => checkpoint::load_newest(&dir.checkpoints(), &device, dtype, config.optim)?,
        false => None,
    };
    // A resumed run continues its checkpoint: its weights, moments and tokenizer.
    let (model, mut optimizer, done, from) = match resumed {
        Some((path, model, optimizer, state)) => {
            tracing::info!(checkpoint = %path.display(), step = state.step, "resuming");
            (model, optimizer, state.step, path)
        }
        None => {
            let model = Model::load(&base, &device, dtype)?;
            let params = model
                .named_vars()
                .into_iter()
                .map(|(_, v)| v.clone())
                .collect();
            (model, AdamW::new(params, config.optim)?, 0, base.clone())
        }
    };
    // Rows and metrics of steps after the checkpoint belong to work that is redone.
    buffer.truncate_after(done as i64)?;
    dir.truncate_metrics(done)?;
    let tokenizer = TextTokenizer::load(&from, &model.config.eos_ids())?;
    let tokenizer_files = TokenizerFiles::read(&from)?;
    let policy = Policy {
        model,
        tokenizer,
        dir: from,
    };
    if done == 0 {
        seed_buffer(config, &policy, &sandbox, &buffer, &stop).await?;
    }
    // The KL reference is the starting model, held in bf16 (half the policy's memory).
    let reference = match config.rl.loss.kl_coef != 0.0 {
        true => Some(Model::load(&base, &device, DType::BF16)?),
        false => None,
    };

    let mut last_saved = done;
    let mut saved_at = Instant::now();
    let mut last = done;
    let mut stopped = false;
    for step_no in done + 1..=opts.steps {
        if stop.load(Ordering::Relaxed) {
            stopped = true;
            break;
        }
        let mut rng = StdRng::seed_from_u64(checkpoint::step_seed(config.run.seed, step_no));
        let mut step = step::Step {
            config,
            progress,
            policy: &policy,
            optimizer: &mut optimizer,
            sandbox: &sandbox,
            buffer: &buffer,
            reference: reference.as_ref(),
            step: step_no,
            seed: config.run.seed,
            rng: &mut rng,
        };
        let mut metrics = step::run(&mut step).await?;
        let every = config.run.validate_every;
        if every > 0 && step_no % every == 0 {
            metrics.validation = Some(validate(config, &policy, &sandbox).await?);
        }
        last = step_no;
        // Saved before the step's metrics are recorded, so they can say what saving cost; a
        // kill in between loses that one metrics line, never a step of training.
        let last_one = step_no == opts.steps || stop.load(Ordering::Relaxed);
        if last_one || save_due(&config.run, step_no - last_saved, saved_at.elapsed()) {
            let started = Instant::now();
            save(&dir, &policy, &tokenizer_files, &optimizer, config, step_no)?;
            metrics.checkpoint_seconds = Some(started.elapsed().as_secs_f64());
            (last_saved, saved_at) = (step_no, Instant::now());
        }
        let json = serde_json::to_value(&metrics).expect("metrics serialise");
        buffer.record_metrics(step_no as i64, &json)?;
        dir.append_metrics(&json)?;
        on_step(&metrics);
    }
    if last > last_saved {
        save(&dir, &policy, &tokenizer_files, &optimizer, config, last)?;
    }
    Ok(Summary {
        first_step: done + 1,
        last_step: last,
        stopped,
    })
}

/// The checkpoint policy: every `save_every` steps, or once `save_every_minutes` have passed
/// since the last save, whichever comes first.
fn save_due(run: &RunConfig, steps_since: u64, since: Duration) -> bool {
    let minutes = run.save_every_minutes;
    steps_since >= run.save_every || (minutes > 0.0 && since.as_secs_f64() >= 60.0 * minutes)
}

fn save(
    dir: &RunDir,
    policy: &Policy,
    tokenizer: &TokenizerFiles,
    optimizer: &AdamW,
    config: &Config,
    step: u64,
) -> Result<(), SelfplayError> {
    let state = TrainState {
        step,
        optimizer_step: optimizer.step,
        seed: config.run.seed,
        config: serde_json::to_value(config).expect("config serialises"),
    };
    let path = checkpoint::save(
        &dir.checkpoints(),
        tokenizer,
        &policy.model,
        optimizer,
        &state,
        config.run.keep_checkpoints,
    )?;
    tracing::info!(step, checkpoint = %path.display(), "saved");
    Ok(())
}

/// Greedy CRUXEval-O and -I accuracy on the first `run.validate_tasks` problems, with the
/// solver prompts of self-play.
async fn validate(
    config: &Config,
    policy: &Policy,
    sandbox: &Sandbox,
) -> Result<Validation, SelfplayError> {
    use crate::eval::cruxeval::{self, Mode};
    let problems: Vec<_> = cruxeval::problems()
        .into_iter()
        .take(config.run.validate_tasks)
        .collect();
    let greedy = crate::generate::GenerateConfig {
        temperature: 0.0,
        ..step::sampling_config(config, config.selfplay.solve_tokens, 0)
    };
    let mut accuracy = [0.0; 2];
    for (slot, mode) in [Mode::Output, Mode::Input].into_iter().enumerate() {
        let prompts = problems
            .iter()
            .map(|p| {
                policy.render(&crate::tasks::prompts::solve(
                    &p.task(mode),
                    &config.sandbox.banned_modules,
                ))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let answers: Vec<String> = policy
            .sample(&prompts, &greedy, config.selfplay.generate_batch)?
            .iter()
            .map(step::with_stop)
            .collect();
        accuracy[slot] = cruxeval::score(sandbox, &problems, mode, &answers).await;
    }
    Ok(Validation {
        problems: problems.len(),
        cruxeval_o: accuracy[0],
        cruxeval_i: accuracy[1],
    })
}

/// AZR's identity seeds, then the cold start's base-model seed tasks.
async fn seed_buffer(
    config: &Config,
    policy: &Policy,
    sandbox: &Sandbox,
    buffer: &Buffer,
    stop: &AtomicBool,
) -> Result<(), SelfplayError> {
    seed::seed(buffer, sandbox).await?;
    let proposer = step::Proposer {
        config,
        policy,
        sandbox,
        buffer,
        framed: false,
        // The cold start shows its own progress bar.
        progress: &Progress::default(),
    };
    let report = cold_start::seed(&proposer, stop).await?;
    if report.proposals.iter().sum::<usize>() > 0 {
        tracing::info!(
            proposals = ?report.proposals,
            valid = ?report.valid,
            "cold start done: the buffer holds selfplay.seed_tasks"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoints_follow_steps_or_time_whichever_comes_first() {
        let run = RunConfig {
            save_every: 100,
            save_every_minutes: 15.0,
            ..RunConfig::default()
        };
        let minutes = |m: u64| Duration::from_secs(60 * m);
        assert!(!save_due(&run, 1, minutes(14)));
        assert!(save_due(&run, 1, minutes(15)));
        assert!(save_due(&run, 100, minutes(0)));
        let steps_only = RunConfig {
            save_every_minutes: 0.0,
            ..run
        };
        assert!(!save_due(&steps_only, 99, minutes(600)));
    }
}
