//! Task checks: the host side of `sandbox/harness.py`. One interpreter start checks a batch of
//! inputs against ONE program; when a call is stopped (timeout, memory, flood), that call gets
//! the outcome and the remaining inputs continue in a fresh instance.
//!
//! The guest only reports what a call returned; verdicts are made here, by comparing reprs in
//! a fresh interpreter that runs no model code ([`Sandbox::compare`]), so no expected value
//! ever reaches the program being judged.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::json;

use std::future::Future;

use super::{Execution, Invocation, Limits, Outcome, Sandbox, HARNESS};

/// A program and inputs to check. Each input is the text between the parentheses of `f(...)`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckRequest {
    pub program: String,
    pub inputs: Vec<String>,
    /// Name of the function to call.
    pub entry: String,
    /// Call `f` a second time on each input, in the state the first call left, and report a
    /// different result as [`CallResult::Stateful`] (validation; judging leaves it off).
    pub repeat: bool,
}

impl CheckRequest {
    /// Calls `f` of `program` on each input.
    pub fn new(program: impl Into<String>, inputs: Vec<String>) -> Self {
        Self {
            program: program.into(),
            inputs,
            entry: "f".into(),
            repeat: false,
        }
    }

    /// Also call `f` twice per input in one program state and flag results that change.
    pub fn repeated(mut self) -> Self {
        self.repeat = true;
        self
    }
}

/// What became of the program before any call.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum ProgramStatus {
    /// Parsed, defined, and has the entry function with this many parameters. `normalized` is
    /// the program as `ast.unparse` prints it: no comments, canonical layout (for duplicates).
    Ok {
        arity: i32,
        normalized: String,
    },
    Syntax {
        error: String,
    },
    BannedImport {
        modules: Vec<String>,
    },
    /// Running the module body raised.
    Definition {
        error: String,
    },
    /// No callable with the entry name.
    Missing {
        error: String,
    },
    /// The run ended (timeout, memory, ...) before the program was defined.
    Stopped {
        outcome: Outcome,
        stderr: String,
    },
    /// Two runs disagreed on the status above.
    Nondeterministic {
        first: String,
        second: String,
    },
}

/// The result of one call `f(input)`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum CallResult {
    Value {
        /// `repr()` of the returned value when it is a plain literal, else the name of its
        /// type (no method of a non-literal value is ever called).
        repr: String,
        /// Built only of exact builtin literal types: only such a value can match anything.
        literal: bool,
        /// The call printed something (captured, not shown).
        printed: bool,
    },
    /// `f` raised: exception type and message.
    Raised {
        error: String,
    },
    /// The input is not a list of Python literals.
    BadInput {
        error: String,
    },
    ReprTooLong {
        length: usize,
    },
    /// Called again on the same input in the same program state, `f` returned another value:
    /// it keeps state between calls (a mutable default, a global).
    Stateful {
        first: String,
        second: String,
    },
    /// This call's run was stopped by a limit.
    Stopped {
        outcome: Outcome,
    },
    /// Two fresh runs gave different results.
    Nondeterministic {
        first: String,
        second: String,
    },
}

impl CallResult {
    /// The repr when the call returned a value.
    pub fn repr(&self) -> Option<&str> {
        match self {
            CallResult::Value { repr, .. } => Some(repr),
            _ => None,
        }
    }

    /// The repr when the call returned a plain literal (the only values that can match).
    pub fn literal(&self) -> Option<&str> {
        match self {
            CallResult::Value {
                repr,
                literal: true,
                ..
            } => Some(repr),
            _ => None,
        }
    }

    fn summary(&self) -> String {
        match self {
            CallResult::Value { repr, .. } => repr.clone(),
            other => serde_json::to_string(other).unwrap_or_default(),
        }
    }
}

/// Everything a check found.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CheckReport {
    pub program: ProgramStatus,
    /// One per input when the program is Ok, else empty.
    pub calls: Vec<CallResult>,
    /// Time spent in interpreter runs (not waiting for a guest thread).
    #[serde(skip)]
    pub elapsed: Duration,
}

#[derive(Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
enum Event {
    Program {
        status: String,
        #[serde(default)]
        arity: i32,
        #[serde(default)]
        normalized: String,
        #[serde(default)]
        error: String,
        /// Comma separated.
        #[serde(default)]
        modules: String,
    },
    Call {
        index: usize,
        status: String,
        #[serde(default)]
        repr: String,
        #[serde(default)]
        literal: bool,
        #[serde(default)]
        printed: bool,
        #[serde(default)]
        error: String,
        #[serde(default)]
        length: usize,
        #[serde(default)]
        first: String,
        #[serde(default)]
        second: String,
    },
    Compare {
        index: usize,
        equal: bool,
    },
    Run {
        status: String,
        #[serde(default)]
        error: String,
    },
}

/// Events of one run, in order, ignoring anything not prefixed by this run's nonce.
fn events(stdout: &str, nonce: &str) -> Vec<Event> {
    stdout
        .lines()
        .filter_map(|line| line.strip_prefix(nonce)?.strip_prefix(' '))
        .filter_map(|json| serde_json::from_str(json).ok())
        .collect()
}

fn program_status(
    status: String,
    arity: i32,
    normalized: String,
    error: String,
    modules: String,
) -> ProgramStatus {
    match status.as_str() {
        "ok" => ProgramStatus::Ok { arity, normalized },
        "syntax" => ProgramStatus::Syntax { error },
        "banned" => ProgramStatus::BannedImport {
            modules: modules.split(", ").map(String::from).collect(),
        },
        "missing" => ProgramStatus::Missing { error },
        _ => ProgramStatus::Definition { error },
    }
}

fn call_result(event: Event) -> Option<(usize, CallResult)> {
    let Event::Call {
        index,
        status,
        repr,
        literal,
        printed,
        error,
        length,
        first,
        second,
    } = event
    else {
        return None;
    };
    let result = match status.as_str() {
        "value" => CallResult::Value {
            repr,
            literal,
            printed,
        },
        "raised" => CallResult::Raised { error },
        "bad_input" => CallResult::BadInput { error },
        "stateful" => CallResult::Stateful { first, second },
        _ => CallResult::ReprTooLong { length },
    };
    Some((index, result))
}

/// A whole program run by [`Sandbox::run_to_end`].
#[derive(Debug, Clone)]
pub struct ProgramRun {
    pub execution: Execution,
    /// `Ok` when the program's last line ran; else why it ended early.
    pub finished: Result<(), String>,
}

/// Seed and heap shift of the two runs of a determinism check.
const RUNS: [(u64, u32); 2] = [(1, 0), (2, 37)];

impl Sandbox {
    /// Checks a program against its inputs in one fresh run (restarting after a stopped call).
    pub async fn check(&self, req: &CheckRequest) -> CheckReport {
        self.check_run(req, RUNS[0]).await
    }

    /// Checks twice in two fresh instances with different seeds and heap layouts, and marks
    /// every call whose results differ as `Nondeterministic`.
    pub async fn check_deterministic(&self, req: &CheckRequest) -> CheckReport {
        let (mut first, second) =
            tokio::join!(self.check_run(req, RUNS[0]), self.check_run(req, RUNS[1]));
        first.elapsed = first.elapsed.max(second.elapsed);
        if first.program != second.program {
            first.program = ProgramStatus::Nondeterministic {
                first: format!("{:?}", first.program),
                second: format!("{:?}", second.program),
            };
            first.calls.clear();
            return first;
        }
        for (a, b) in first.calls.iter_mut().zip(&second.calls) {
            if a != b {
                *a = CallResult::Nondeterministic {
                    first: a.summary(),
                    second: b.summary(),
                };
            }
        }
        first
    }

    /// Compares pairs of Python literal expressions as values: equal when both parse as plain
    /// literals (no names, attributes or calls beyond set()/frozenset()/float() and the like)
    /// and `a == b`. A comparison that cannot finish within the limits counts as unequal.
    pub async fn compare(&self, pairs: &[(String, String)]) -> Vec<bool> {
        let mut equal = Vec::with_capacity(pairs.len());
        while equal.len() < pairs.len() {
            let start = equal.len();
            let nonce = new_nonce();
            let request = json!({"op": "compare", "nonce": nonce, "pairs": &pairs[start..]});
            let run = self.execute(self.harness_invocation(&request, 0)).await;
            for event in events(&run.stdout, &nonce) {
                if let Event::Compare { index, equal: e } = event {
                    if start + index == equal.len() {
                        equal.push(e);
                    }
                }
            }
            if equal.len() < pairs.len() && !run.outcome.is_success() {
                equal.push(false);
            } else if equal.len() == start {
                // The harness answered nothing and exited normally: never loop.
                equal.resize(pairs.len(), false);
            }
        }
        equal
    }

    async fn check_run(&self, req: &CheckRequest, (seed, perturb): (u64, u32)) -> CheckReport {
        let mut elapsed = Duration::ZERO;
        let mut program = None;
        let mut calls: Vec<CallResult> = Vec::with_capacity(req.inputs.len());
        loop {
            let start = calls.len();
            let nonce = new_nonce();
            let request = json!({
                "op": "call",
                "nonce": nonce,
                "program": req.program,
                "entry": req.entry,
                "inputs": &req.inputs[start..],
                "banned": self.config().banned_modules,
                "perturb": perturb,
                "repeat": req.repeat,
            });
            let run = self.execute(self.harness_invocation(&request, seed)).await;
            elapsed += run.elapsed;
            // The harness writes one program event, then calls in order. Anything else means
            // the program wrote in the harness's name: nothing of this run can be trusted.
            let mut defined = false;
            for event in events(&run.stdout, &nonce) {
                match event {
                    Event::Program { .. } if defined => return forged(elapsed),
                    Event::Program {
                        status,
                        arity,
                        normalized,
                        error,
                        modules,
                    } => {
                        defined = true;
                        program.get_or_insert_with(|| {
                            program_status(status, arity, normalized, error, modules)
                        });
                    }
                    other => match call_result(other) {
                        Some((index, result)) if defined && start + index == calls.len() => {
                            calls.push(result)
                        }
                        _ => return forged(elapsed),
                    },
                }
            }
            let status = match &program {
                None => ProgramStatus::Stopped {
                    outcome: run.outcome,
                    stderr: tail(&run.stderr),
                },
                Some(ProgramStatus::Ok { .. }) if calls.len() < req.inputs.len() => {
                    // The call in progress was stopped; the rest go on in a fresh instance.
                    let outcome = match run.outcome {
                        Outcome::Exited(code) => Outcome::HostError(format!(
                            "harness exited with {code} mid-batch: {}",
                            tail(&run.stderr)
                        )),
                        other => other,
                    };
                    calls.push(CallResult::Stopped { outcome });
                    continue;
                }
                Some(status) => status.clone(),
            };
            if !matches!(status, ProgramStatus::Ok { .. }) {
                calls.clear();
            }
            return CheckReport {
                program: status,
                calls,
                elapsed,
            };
        }
    }

    /// Runs a whole program (a benchmark check) under `limits` and reports whether it ran to
    /// its end. A program that exits early in any way (`sys.exit`, `exit()`, `os._exit`, a
    /// closed stdout) has not finished, whatever its exit status.
    ///
    /// Queued at the call, like [`Sandbox::execute`].
    pub fn run_to_end(
        &self,
        source: &str,
        limits: Limits,
    ) -> impl Future<Output = ProgramRun> + Send + 'static {
        let nonce = new_nonce();
        let request = json!({"op": "run", "nonce": nonce, "source": source});
        let run = self.execute(Invocation {
            limits,
            ..self.harness_invocation(&request, 0)
        });
        async move {
            let execution = run.await;
            let mut reports = events(&execution.stdout, &nonce).into_iter();
            let finished = match (reports.next(), reports.next()) {
                (Some(Event::Run { status, .. }), None)
                    if status == "finished" && execution.outcome.is_success() =>
                {
                    Ok(())
                }
                (Some(Event::Run { error, .. }), None) if !error.is_empty() => Err(error),
                (Some(_), Some(_)) => Err("the program forged a harness event".into()),
                _ => Err(match &execution.outcome {
                    Outcome::Exited(_) => "ended before its last line".into(),
                    other => other.to_string(),
                }),
            };
            ProgramRun {
                execution,
                finished,
            }
        }
    }

    fn harness_invocation(&self, request: &serde_json::Value, seed: u64) -> Invocation {
        Invocation {
            args: vec!["-c".into(), HARNESS.into()],
            stdin: request.to_string().into_bytes(),
            limits: self.config().limits,
            seed,
        }
    }
}

fn forged(elapsed: Duration) -> CheckReport {
    CheckReport {
        program: ProgramStatus::Stopped {
            outcome: Outcome::HostError(
                "harness events out of order: the program forged one".into(),
            ),
            stderr: String::new(),
        },
        calls: Vec::new(),
        elapsed,
    }
}

fn new_nonce() -> String {
    format!("azr-{:016x}", rand::random::<u64>())
}

fn tail(text: &str) -> String {
    let start = text.len().saturating_sub(2000);
    let start = (start..text.len())
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(text.len());
    text[start..].to_string()
}
