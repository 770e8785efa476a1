//! Run configuration: one serde struct per concern, read from a TOML file under `configs/`.
//!
//! Every field has a default, so an empty file is a valid config; unknown keys are an error so
//! that a typo never silently falls back to a default.

use std::fmt::Display;
use std::ops::Bound::{self, Excluded, Included, Unbounded};
use std::ops::RangeBounds;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::buffer::Weighting;
use crate::model::{DeviceSpec, Precision};
use crate::rl::optim::OptimConfig;
use crate::rl::update::UpdateConfig;
use crate::sandbox::Limits;
use crate::tasks::reward::RewardConfig;

/// The whole configuration of an `azr` command.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The run: model, seed, checkpoints, validation.
    pub run: RunConfig,
    /// Self-play batch sizes and sampling.
    pub selfplay: SelfplayConfig,
    /// The policy update (`[rl]`, `[rl.loss]`).
    pub rl: UpdateConfig,
    /// The optimiser and its schedule.
    pub optim: OptimConfig,
    /// Reward values.
    pub reward: RewardConfig,
    /// Limits and policy of the Python sandbox.
    pub sandbox: SandboxConfig,
}

/// `[run]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RunConfig {
    /// The model to start from: a known name (fetched on first use) or a Hugging Face folder.
    pub model: String,
    /// Where the model, generation and the update run: `cpu`, `cuda` or `cuda:N`.
    pub device: DeviceSpec,
    /// The weights' dtype: `auto` (f32 on the CPU, bf16 on a GPU), `f32` or `bf16`.
    pub dtype: Precision,
    /// Generation's decode steps multiply bf16 copies of the f32 weights (CPUs with
    /// AVX-512; prompt passes too on CPUs with AVX-512 BF16 or AMX), as RL trainers that
    /// sample with a bf16 engine do.
    pub bf16_decode: bool,
    /// Seeds every random choice of the run (sampling, buffer draws).
    pub seed: u64,
    /// Write a checkpoint every this many steps, or sooner when `save_every_minutes` have
    /// passed since the last one (and always at the end, and on Ctrl-C or SIGTERM).
    pub save_every: u64,
    /// Write a checkpoint once this many minutes have passed since the last one, whatever
    /// the step count: a kill loses at most about this much work; 0 = steps only.
    pub save_every_minutes: f64,
    /// Checkpoints kept; older ones are deleted.
    pub keep_checkpoints: usize,
    /// Measure CRUXEval-O/I accuracy every this many steps; 0 = never.
    pub validate_every: u64,
    /// CRUXEval problems in that measurement (a fixed subset: the first N).
    pub validate_tasks: usize,
}

impl Default for RunConfig {
    fn default() -> Self {
        Self {
            model: "qwen2.5-coder-0.5b-instruct".into(),
            device: DeviceSpec::Cpu,
            dtype: Precision::Auto,
            bf16_decode: true,
            seed: 0,
            save_every: 100,
            save_every_minutes: 15.0,
            keep_checkpoints: 2,
            validate_every: 0,
            validate_tasks: 32,
        }
    }
}

/// `[selfplay]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SelfplayConfig {
    /// Proposals per task type per step.
    pub propose_batch: usize,
    /// Tasks per type the solver meets per step (new proposals first); at least propose_batch.
    pub solve_batch: usize,
    /// Solver samples per task: the Monte-Carlo count that also estimates learnability.
    pub samples: usize,
    /// Reference tasks shown to each proposer (K).
    pub references: usize,
    /// How references are drawn from the buffer.
    pub reference_weighting: Weighting,
    /// Inputs an induction proposer is asked for (N).
    pub induction_inputs: usize,
    /// Inputs an induction proposal needs, all valid and distinct (half shown, half hidden);
    /// unset means `induction_inputs`, as in AZR.
    pub min_induction_examples: Option<usize>,
    /// Token limit of a proposal.
    pub propose_tokens: usize,
    /// Token limit of a solver answer.
    pub solve_tokens: usize,
    /// Sampling temperature of both roles (must be > 0: learnability needs sampled answers).
    pub temperature: f32,
    pub top_p: f32,
    /// Sequences decoding at once (finished rows take the phase's waiting prompts).
    pub generate_batch: usize,
    /// The cold start: tasks per type the buffer holds before step 1, the identity seeds
    /// included (1 or 0 = only the identity seed).
    pub seed_tasks: SeedTasks,
    /// The cold start's budget: proposals per type before it gives up with an error.
    pub seed_attempts: usize,
}

/// `selfplay.seed_tasks`: the cold start's target per task type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeedTasks {
    pub deduction: usize,
    pub abduction: usize,
    pub induction: usize,
}

impl SeedTasks {
    /// The targets in [`crate::tasks::TaskType::ALL`] order.
    pub fn per_type(&self) -> [usize; 3] {
        [self.deduction, self.abduction, self.induction]
    }
}

impl SelfplayConfig {
    /// Inputs an induction proposal needs.
    pub fn induction_minimum(&self) -> usize {
        self.min_induction_examples.unwrap_or(self.induction_inputs)
    }
}

impl Default for SelfplayConfig {
    fn default() -> Self {
        Self {
            propose_batch: 2,
            solve_batch: 2,
            samples: 4,
            references: 3,
            reference_weighting: Weighting::Uniform,
            induction_inputs: 4,
            min_induction_examples: None,
            propose_tokens: 384,
            solve_tokens: 384,
            temperature: 0.7,
            top_p: 1.0,
            generate_batch: 32,
            seed_tasks: SeedTasks {
                deduction: 3,
                abduction: 3,
                induction: 3,
            },
            seed_attempts: 64,
        }
    }
}

/// `[sandbox]`: how model-written code is run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SandboxConfig {
    /// `[sandbox.limits]`: per-execution limits (time, memory, output).
    pub limits: Limits,
    /// Guest threads running executions at once; 0 means one per CPU core.
    pub workers: usize,
    /// Modules a task program may not import (checked on the AST before it runs).
    pub banned_modules: Vec<String>,
}

/// AZR's list: modules that give a program randomness, time, I/O or concurrency.
pub const DEFAULT_BANNED_MODULES: &[&str] = &[
    "logging",
    "random",
    "multiprocessing",
    "subprocess",
    "threading",
    "datetime",
    "time",
    "hashlib",
    "hmac",
    "calendar",
    "os",
    "sys",
    "socket",
    "pebble",
];

impl Default for SandboxConfig {
    fn default() -> Self {
        Self {
            limits: Limits::default(),
            workers: 0,
            banned_modules: DEFAULT_BANNED_MODULES
                .iter()
                .map(|s| s.to_string())
                .collect(),
        }
    }
}

/// A config file that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid: {message}\n(see configs/default.toml for every key and its default)")]
    Parse { path: PathBuf, message: String },
    #[error("config file {path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

impl Config {
    /// Reads and validates a TOML config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml(&text)
            .map_err(|message| ConfigError::Parse {
                path: path.to_owned(),
                message,
            })?
            .validated(path)
    }

    /// Parses TOML text; the error is the parser's message (it names the key and line).
    pub fn from_toml(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    /// Checks values that parse but cannot work.
    fn validated(self, path: &Path) -> Result<Self, ConfigError> {
        self.validate().map_err(|message| ConfigError::Invalid {
            path: path.to_owned(),
            message,
        })?;
        Ok(self)
    }

    /// Every value in its range, and the values that must agree agreeing; the error names the
    /// key and what it may be.
    pub fn validate(&self) -> Result<(), String> {
        self.sandbox.limits.validate()?;
        self.check_combinations()?;
        self.check_ranges()
    }

    /// Values that parse but cannot work together.
    fn check_combinations(&self) -> Result<(), String> {
        let s = &self.selfplay;
        if s.temperature <= 0.0 {
            return Err("selfplay.temperature must be > 0: learnability is estimated from sampled solver answers, never greedy ones".into());
        }
        if !(s.top_p > 0.0 && s.top_p <= 1.0) {
            return Err(format!("selfplay.top_p = {} must be in (0, 1]", s.top_p));
        }
        if s.top_p < 1.0 {
            return Err(format!("selfplay.top_p = {} cannot train: the update scores every token under the full distribution, but nucleus samples come from a renormalised one, which biases the importance ratio. Use top_p = 1.0", s.top_p));
        }
        if s.samples < 2 {
            return Err(format!("selfplay.samples = {} cannot estimate learnability: a success rate strictly between 0 and 1 needs at least 2 samples", s.samples));
        }
        if s.solve_batch < s.propose_batch {
            return Err(format!(
                "selfplay.solve_batch ({}) is smaller than selfplay.propose_batch ({}): every new proposal must be solved in its step to earn a reward",
                s.solve_batch, s.propose_batch
            ));
        }
        if s.induction_minimum() < 2 || s.induction_inputs < s.induction_minimum() {
            return Err(format!(
                "selfplay.induction_inputs ({}) must be at least min_induction_examples ({}), which must be at least 2 (one shown, one hidden)",
                s.induction_inputs, s.induction_minimum()
            ));
        }
        if self.run.save_every == 0 {
            return Err("run.save_every must be at least 1".into());
        }
        if (self.rl.temperature - s.temperature).abs() > 1e-6 {
            return Err(format!(
                "rl.temperature ({}) must equal selfplay.temperature ({}): the loss compares log-probs under the sampling temperature",
                self.rl.temperature, s.temperature
            ));
        }
        Ok(())
    }

    /// Each number within what azr can run: floats finite, counts small enough that no size
    /// computed from them overflows.
    fn check_ranges(&self) -> Result<(), String> {
        let (r, s, rl, o, w) = (
            &self.run,
            &self.selfplay,
            &self.rl,
            &self.optim,
            &self.reward,
        );
        // (key, value, least allowed); at most MAX_COUNT.
        let counts = [
            ("run.keep_checkpoints", r.keep_checkpoints, 1),
            ("run.validate_tasks", r.validate_tasks, 1),
            ("selfplay.propose_batch", s.propose_batch, 1),
            ("selfplay.solve_batch", s.solve_batch, 1),
            ("selfplay.samples", s.samples, 2),
            ("selfplay.references", s.references, 0),
            ("selfplay.induction_inputs", s.induction_inputs, 2),
            ("selfplay.propose_tokens", s.propose_tokens, 1),
            ("selfplay.solve_tokens", s.solve_tokens, 1),
            ("selfplay.generate_batch", s.generate_batch, 1),
            ("selfplay.seed_tasks.deduction", s.seed_tasks.deduction, 0),
            ("selfplay.seed_tasks.abduction", s.seed_tasks.abduction, 0),
            ("selfplay.seed_tasks.induction", s.seed_tasks.induction, 0),
            ("selfplay.seed_attempts", s.seed_attempts, 0),
            ("rl.micro_batch", rl.micro_batch, 1),
            ("rl.pass_tokens", rl.pass_tokens, 0),
            ("rl.epochs", rl.epochs, 1),
            ("optim.warmup_steps", o.warmup_steps, 0),
            ("optim.total_steps", o.total_steps, 0),
        ];
        for (key, value, min) in counts {
            in_range(key, value, (Included(min), Included(MAX_COUNT)))?;
        }
        let temperature = (Excluded(0.0), Included(10.0));
        let non_negative = (Included(0.0), Unbounded);
        let below_one = (Included(0.0), Excluded(1.0));
        let up_to_one = (Excluded(0.0), Included(1.0));
        let zero_to_one = (Included(0.0), Included(1.0));
        // A correct answer earns 1; the other rewards are on the same scale.
        let reward = (Included(-1.0), Included(1.0));
        let reals: [(&str, f64, Interval<f64>); 18] = [
            ("selfplay.temperature", s.temperature.into(), temperature),
            ("rl.temperature", rl.temperature.into(), temperature),
            ("rl.entropy_coef", rl.entropy_coef, non_negative),
            ("rl.loss.clip_low", rl.loss.clip_low.into(), below_one),
            ("rl.loss.clip_high", rl.loss.clip_high.into(), non_negative),
            ("rl.loss.kl_coef", rl.loss.kl_coef, non_negative),
            ("optim.lr", o.lr, up_to_one),
            ("optim.beta1", o.beta1, below_one),
            ("optim.beta2", o.beta2, below_one),
            ("optim.eps", o.eps, up_to_one),
            ("optim.weight_decay", o.weight_decay, zero_to_one),
            ("optim.max_grad_norm", o.max_grad_norm, non_negative),
            ("optim.min_lr_ratio", o.min_lr_ratio, zero_to_one),
            ("reward.format_penalty", w.format_penalty.into(), reward),
            ("reward.wrong_answer", w.wrong_answer.into(), reward),
            ("reward.unlearnable", w.unlearnable.into(), reward),
            ("reward.truncated", w.truncated.into(), reward),
            (
                "run.save_every_minutes",
                r.save_every_minutes,
                (Included(0.0), Included(1e6)),
            ),
        ];
        for (key, value, (low, high)) in reals {
            if !value.is_finite() {
                return Err(format!(
                    "{key} = {value} is not a finite number; it must be in {}",
                    interval(low, high)
                ));
            }
            in_range(key, value, (low, high))?;
        }
        // The sandbox's limits are checked by `Limits::validate`.
        in_range(
            "sandbox.workers",
            self.sandbox.workers,
            (Included(0), Included(1024)),
        )
    }
}

/// The values a key may take: `(low, high)`.
type Interval<T> = (Bound<T>, Bound<T>);

/// The largest count or token limit a config may give: far beyond any run, and small enough
/// that sizes computed from it cannot overflow.
const MAX_COUNT: usize = 1 << 24;

pub(crate) fn in_range<T: PartialOrd + Display>(
    key: &str,
    value: T,
    (low, high): Interval<T>,
) -> Result<(), String> {
    match (low.as_ref(), high.as_ref()).contains(&value) {
        true => Ok(()),
        false => Err(format!(
            "{key} = {value} is out of range; it must be in {}",
            interval(low, high)
        )),
    }
}

/// `[a, b)` and the like.
fn interval<T: Display>(low: Bound<T>, high: Bound<T>) -> String {
    let low = match low {
        Included(a) => format!("[{a}"),
        Excluded(a) => format!("({a}"),
        Unbounded => "(-inf".into(),
    };
    let high = match high {
        Included(b) => format!("{b}]"),
        Excluded(b) => format!("{b})"),
        Unbounded => "inf)".into(),
    };
    format!("{low}, {high}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_gives_defaults() {
        assert_eq!(Config::from_toml("").unwrap(), Config::default());
    }

    #[test]
    fn unknown_key_is_an_error_naming_it() {
        let err = Config::from_toml("[sandbox]\ntimeout_msec = 5\n").unwrap_err();
        assert!(err.contains("timeout_msec"), "{err}");
    }

    #[test]
    fn shipped_default_config_matches_serde_defaults() {
        let text = include_str!("../configs/default.toml");
        assert_eq!(Config::from_toml(text).unwrap(), Config::default());
    }

    #[test]
    fn shipped_configs_are_valid() {
        for name in ["default", "smoke", "gpu", "cpu-learn"] {
            let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join(format!("configs/{name}.toml"));
            Config::load(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }

    #[test]
    fn greedy_self_play_is_refused() {
        let mut config = Config::default();
        config.selfplay.temperature = 0.0;
        assert!(config.validate().unwrap_err().contains("never greedy"));
        let mut config = Config::default();
        config.selfplay.solve_batch = 1;
        assert!(config.validate().unwrap_err().contains("solve_batch"));
    }

    #[test]
    fn nucleus_sampling_is_refused_for_training() {
        for top_p in [0.9, 0.0, 1.5, f32::NAN] {
            let mut config = Config::default();
            config.selfplay.top_p = top_p;
            let err = config.validate().unwrap_err();
            assert!(err.contains("top_p"), "{top_p}: {err}");
        }
    }

    /// Issue 19: NaN ran as temperature 1.0, and a byte limit of u64::MAX wrapped to 0.
    #[test]
    fn every_number_out_of_range_is_refused_naming_the_key_and_range() {
        type Case = (&'static str, fn(&mut Config), &'static str);
        let cases: [Case; 12] = [
            (
                "selfplay.temperature",
                |c| c.selfplay.temperature = f32::NAN,
                "(0, 10]",
            ),
            ("rl.temperature", |c| c.rl.temperature = f32::NAN, "(0, 10]"),
            ("optim.lr", |c| c.optim.lr = -1e-6, "(0, 1]"),
            ("optim.beta1", |c| c.optim.beta1 = 1.0, "[0, 1)"),
            ("optim.beta2", |c| c.optim.beta2 = f64::NAN, "[0, 1)"),
            ("optim.eps", |c| c.optim.eps = 0.0, "(0, 1]"),
            (
                "reward.wrong_answer",
                |c| c.reward.wrong_answer = f32::NAN,
                "[-1, 1]",
            ),
            (
                "reward.format_penalty",
                |c| c.reward.format_penalty = -5.0,
                "[-1, 1]",
            ),
            (
                "rl.loss.kl_coef",
                |c| c.rl.loss.kl_coef = f64::INFINITY,
                "[0, inf)",
            ),
            (
                "selfplay.samples",
                |c| c.selfplay.samples = usize::MAX,
                "[2, 16777216]",
            ),
            (
                "sandbox.limits.stdout_bytes",
                |c| c.sandbox.limits.stdout_bytes = usize::MAX,
                "[1024, 1073741824]",
            ),
            (
                "sandbox.workers",
                |c| c.sandbox.workers = 1 << 40,
                "[0, 1024]",
            ),
        ];
        for (key, set, range) in cases {
            let mut config = Config::default();
            set(&mut config);
            let err = config.validate().unwrap_err();
            assert!(err.contains(key) && err.contains(range), "{key}: {err}");
        }
        Config::default().validate().unwrap();
    }

    #[test]
    fn a_wrapping_byte_limit_in_a_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "[sandbox.limits]\nstdout_bytes = 18446744073709551615\n",
        )
        .unwrap();
        let err = Config::load(&path).unwrap_err().to_string();
        assert!(err.contains("sandbox.limits.stdout_bytes"), "{err}");
    }

    #[test]
    fn zero_timeout_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "[sandbox]\ntimeout_ms = 0\n").unwrap();
        let err = Config::load(&path).unwrap_err().to_string();
        assert!(err.contains("timeout_ms"), "{err}");
    }
}
