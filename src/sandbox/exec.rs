//! One execution: a fresh `Store` and instance of the interpreter, run to completion under the
//! limits, with its outcome classified. Must run on a thread with a large native stack (the
//! worker pool's), because wasm executes on the host's stack.

use std::time::{Duration, Instant};

use rand::{rngs::StdRng, SeedableRng};
use serde::Serialize;
use wasmtime::{Store, Trap};
use wasmtime_wasi::p2::pipe::{MemoryInputPipe, MemoryOutputPipe};
use wasmtime_wasi::{FsPerms, HostMonotonicClock, HostWallClock, I32Exit, WasiCtxBuilder};

use super::runtime::{GuestState, MemoryCap, Runtime, TICK};
use super::Limits;

/// How an execution ended. Guest failures are data, never an `Err` of the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", content = "detail", rename_all = "snake_case")]
pub enum Outcome {
    /// The interpreter exited with this status (0 = success, 1 = uncaught exception, ...).
    Exited(i32),
    /// The wall-clock limit stopped it.
    Timeout,
    /// It failed after its memory growth was refused at the limit.
    MemoryLimit,
    /// It wrote more than the stdout or stderr limit.
    OutputLimit,
    /// The wasm machine trapped (stack overflow, unreachable, ...).
    Trap(String),
    /// The host could not set up or run the instance.
    HostError(String),
}

impl Outcome {
    pub fn is_success(&self) -> bool {
        matches!(self, Outcome::Exited(0))
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outcome::Exited(code) => write!(f, "exited with status {code}"),
            Outcome::Timeout => f.write_str("timed out"),
            Outcome::MemoryLimit => f.write_str("memory limit"),
            Outcome::OutputLimit => f.write_str("output limit"),
            Outcome::Trap(m) => write!(f, "trap: {m}"),
            Outcome::HostError(m) => write!(f, "sandbox error: {m}"),
        }
    }
}

/// An interpreter run to perform: `python ARGS`, with `stdin`.
#[derive(Debug, Clone)]
pub struct Invocation {
    /// Arguments after the program name, as for `python` (`["-c", code]`).
    pub args: Vec<String>,
    pub stdin: Vec<u8>,
    pub limits: Limits,
    /// Seeds the guest's randomness (`os.urandom`, `random`); two runs with different seeds
    /// expose programs that depend on it.
    pub seed: u64,
}

/// What an execution produced.
#[derive(Debug, Clone)]
pub struct Execution {
    pub outcome: Outcome,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

/// A clock that starts at a fixed date and advances with real time, so programs can measure
/// durations but never learn the host's date.
struct SandboxClock {
    origin: Instant,
}

/// 2000-01-01T00:00:00Z, seconds since the Unix epoch.
const FIXED_EPOCH: Duration = Duration::from_secs(946_684_800);

impl HostWallClock for SandboxClock {
    fn resolution(&self) -> Duration {
        Duration::from_micros(1)
    }
    fn now(&self) -> Duration {
        FIXED_EPOCH + self.origin.elapsed()
    }
}

impl HostMonotonicClock for SandboxClock {
    fn resolution(&self) -> u64 {
        1_000
    }
    fn now(&self) -> u64 {
        self.origin.elapsed().as_nanos() as u64
    }
}

/// Path the interpreter believes it was started from; its prefix locates the stdlib.
const ARGV0: &str = "/usr/local/bin/python.wasm";

/// Runs one invocation in a fresh instance.
pub(crate) fn execute(runtime: &Runtime, inv: &Invocation) -> Execution {
    let started = Instant::now();
    // One extra byte of capacity tells "wrote exactly the limit" from "wanted to write more".
    let stdout = MemoryOutputPipe::new(inv.limits.stdout_bytes + 1);
    let stderr = MemoryOutputPipe::new(inv.limits.stderr_bytes + 1);
    let result = run_instance(runtime, inv, &stdout, &stderr);
    let out = stdout.contents();
    let err = stderr.contents();
    let flooded = out.len() > inv.limits.stdout_bytes || err.len() > inv.limits.stderr_bytes;
    let outcome = match result {
        _ if flooded => Outcome::OutputLimit,
        Ok((code, memory_denied)) if code != 0 && memory_denied => Outcome::MemoryLimit,
        Ok((code, _)) => Outcome::Exited(code),
        Err(outcome) => outcome,
    };
    let keep = |bytes: &[u8], limit: usize| {
        String::from_utf8_lossy(&bytes[..bytes.len().min(limit)]).into_owned()
    };
    Execution {
        outcome,
        stdout: keep(&out, inv.limits.stdout_bytes),
        stderr: keep(&err, inv.limits.stderr_bytes),
        elapsed: started.elapsed(),
    }
}

/// Ok((exit code, whether memory growth was refused)), or the outcome of an abnormal end.
fn run_instance(
    runtime: &Runtime,
    inv: &Invocation,
    stdout: &MemoryOutputPipe,
    stderr: &MemoryOutputPipe,
) -> Result<(i32, bool), Outcome> {
    let host = |what: &str, e: wasmtime::Error| Outcome::HostError(format!("{what}: {e:#}"));
    let mut wasi = WasiCtxBuilder::new();
    wasi.arg(ARGV0)
        .args(&inv.args)
        .stdin(MemoryInputPipe::new(inv.stdin.clone()))
        .stdout(stdout.clone())
        .stderr(stderr.clone())
        .secure_random(StdRng::seed_from_u64(inv.seed))
        .insecure_random(StdRng::seed_from_u64(inv.seed ^ 0x9e37_79b9_7f4a_7c15))
        .insecure_random_seed(u128::from(inv.seed))
        .wall_clock(SandboxClock {
            origin: Instant::now(),
        })
        .monotonic_clock(SandboxClock {
            origin: Instant::now(),
        });
    wasi.preopened_dir(&runtime.stdlib_dir, "/usr/local/lib", FsPerms::ReadOnly)
        .map_err(|e| host("opening the stdlib folder", e))?;
    let state = GuestState {
        wasi: wasi.build_p1(),
        memory: MemoryCap {
            max_bytes: inv.limits.memory_bytes(),
            denied: false,
        },
    };
    let mut store = Store::new(&runtime.engine, state);
    store.limiter(|s| &mut s.memory);
    let ticks = inv.limits.timeout_ms.div_ceil(TICK.as_millis() as u64) + 1;
    store.set_epoch_deadline(ticks);
    store.epoch_deadline_trap();

    let instance = runtime
        .pre
        .instantiate(&mut store)
        .map_err(|e| classify(e, &store))?;
    if let Ok(init) = instance.get_typed_func::<(), ()>(&mut store, "_initialize") {
        init.call(&mut store, ()).map_err(|e| classify(e, &store))?;
    }
    let run = instance
        .get_typed_func::<(), i32>(&mut store, "run")
        .map_err(|e| host("the interpreter has no `run` export", e))?;
    let code = match run.call(&mut store, ()) {
        Ok(code) => code,
        Err(e) => match e.downcast_ref::<I32Exit>() {
            Some(exit) => exit.0,
            None => return Err(classify(e, &store)),
        },
    };
    Ok((code, store.data().memory.denied))
}

fn classify(e: wasmtime::Error, store: &Store<GuestState>) -> Outcome {
    match e.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => Outcome::Timeout,
        Some(_) if store.data().memory.denied => Outcome::MemoryLimit,
        Some(trap) => Outcome::Trap(trap.to_string()),
        None if store.data().memory.denied => Outcome::MemoryLimit,
        None => Outcome::Trap(format!("{e:#}")),
    }
}
