//! The sandbox: model-written Python runs in CPython compiled to WASI, inside wasmtime, in
//! process. Every execution gets a fresh instance, so nothing leaks from one run to the next.
//!
//! # Threat model
//! Contained: the guest sees no host files except the standard library, read-only at
//! `/usr/local/lib`; it has no sockets, no subprocesses, no environment variables; its wall-clock
//! time (epoch interruption), linear memory (a resource limiter) and stdout/stderr (capped pipes)
//! are bounded; a trap, a timeout or a stack overflow ends the instance, never the host, because
//! guest code runs only on pool threads with 16 MiB native stacks. Randomness is seeded per
//! execution and the wall clock starts at 2000-01-01, so the host's date and entropy do not leak.
//!
//! Not contained: CPU time of the host thread up to the timeout (a guest burns a core until then);
//! timing side channels; bugs in wasmtime or in the CPython build. Determinism is checked, not
//! enforced: the `check` module runs a program twice with different seeds and heap layouts.
//!
//! Three ways in: [`Sandbox::run_program`] runs a whole program as `python -c` (`azr sandbox
//! run`); [`Sandbox::run_to_end`] runs one under the guest harness (`sandbox/harness.py`) and
//! says whether it reached its end (benchmarks); [`Sandbox::check`] drives the harness for task
//! checks. Model code under the harness cannot reach the harness's verdicts (see harness.py).

mod check;
mod exec;
mod limits;
mod pool;
mod runtime;

use std::future::Future;
use std::path::Path;
use std::sync::Arc;

pub use check::{CallResult, CheckReport, CheckRequest, ProgramRun, ProgramStatus};
pub use exec::{Execution, Invocation, Outcome};
pub use limits::Limits;

use crate::assets::{self, AssetError};
use crate::config::SandboxConfig;

/// The guest-side harness for task checks, shipped inside the binary.
pub const HARNESS: &str = include_str!("../../sandbox/harness.py");

/// Why the sandbox could not be built. (Failures of guest code are [`Outcome`]s, not errors.)
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error(transparent)]
    Asset(#[from] AssetError),
    #[error("wasmtime could not load the interpreter: {0}\n(if the cached .cwasm is damaged, delete $AZR_HOME/python and run `azr setup`)")]
    Engine(String),
    #[error("cannot start sandbox threads: {0}")]
    Threads(std::io::Error),
    #[error("invalid sandbox limits: {0}")]
    Limits(String),
}

impl SandboxError {
    fn engine(e: wasmtime::Error) -> Self {
        SandboxError::Engine(format!("{e:#}"))
    }
}

/// A ready sandbox: cheap to clone, safe to share between tasks and threads.
#[derive(Clone)]
pub struct Sandbox {
    inner: Arc<Inner>,
}

struct Inner {
    runtime: Arc<runtime::Runtime>,
    pool: pool::Pool,
    config: SandboxConfig,
}

impl Sandbox {
    /// Builds a sandbox from `$AZR_HOME`, provisioning the interpreter on first use.
    pub fn new(config: &SandboxConfig) -> Result<Self, SandboxError> {
        Self::with_home(&assets::home(), config)
    }

    /// Builds a sandbox from the assets under `home`.
    pub fn with_home(home: &Path, config: &SandboxConfig) -> Result<Self, SandboxError> {
        config.limits.validate().map_err(SandboxError::Limits)?;
        let python = assets::python::ensure(home)?;
        let threads = match config.workers {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        // Instances live only on pool threads, one per thread at a time; slots are freed a
        // little after a store drops, so leave headroom.
        let runtime = Arc::new(runtime::Runtime::new(
            &python,
            2 * threads as u32 + 2,
            limits::MAX_MEMORY_MB << 20,
        )?);
        let pool = pool::Pool::new(threads).map_err(SandboxError::Threads)?;
        Ok(Self {
            inner: Arc::new(Inner {
                runtime,
                pool,
                config: config.clone(),
            }),
        })
    }

    /// The configuration this sandbox was built with.
    pub fn config(&self) -> &SandboxConfig {
        &self.inner.config
    }

    /// Number of guest threads (executions that can run at once).
    pub fn workers(&self) -> usize {
        self.inner.pool.threads()
    }

    /// Runs one interpreter invocation on a guest thread. The run is queued at the call, so
    /// starting many and awaiting them later overlaps them with the caller's own work.
    pub fn execute(&self, inv: Invocation) -> impl Future<Output = Execution> + Send + 'static {
        let runtime = self.inner.runtime.clone();
        let started = std::time::Instant::now();
        let run = self.inner.pool.run(move || exec::execute(&runtime, &inv));
        async move {
            run.await
                .unwrap_or_else(|message| host_failure(message, started))
        }
    }

    /// [`Sandbox::execute`] for callers outside an async runtime.
    pub fn execute_blocking(&self, inv: Invocation) -> Execution {
        let runtime = self.inner.runtime.clone();
        let started = std::time::Instant::now();
        self.inner
            .pool
            .run_blocking(move || exec::execute(&runtime, &inv))
            .unwrap_or_else(|message| host_failure(message, started))
    }

    /// Runs a whole Python program (any standard-library module allowed) under `limits`.
    /// Its exit status is the program's to choose: judge with [`Sandbox::run_to_end`].
    ///
    /// Queued at the call, like [`Sandbox::execute`].
    pub fn run_program(
        &self,
        source: &str,
        limits: Limits,
    ) -> impl Future<Output = Execution> + Send + 'static {
        self.execute(program_invocation(source, limits))
    }

    /// [`Sandbox::run_program`] for callers outside an async runtime.
    pub fn run_program_blocking(&self, source: &str, limits: Limits) -> Execution {
        self.execute_blocking(program_invocation(source, limits))
    }
}

fn program_invocation(source: &str, limits: Limits) -> Invocation {
    Invocation {
        args: vec!["-c".into(), source.into()],
        stdin: Vec::new(),
        limits,
        seed: 0,
    }
}

fn host_failure(message: String, started: std::time::Instant) -> Execution {
    Execution {
        outcome: Outcome::HostError(message),
        stdout: String::new(),
        stderr: String::new(),
        elapsed: started.elapsed(),
    }
}
