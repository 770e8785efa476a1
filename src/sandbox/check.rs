//! Task checks: the host side of `sandbox/harness.py`. One interpreter start checks a batch of
//! inputs against ONE program; when a call is stopped (timeout, memory, flood), that call gets
//! the outcome and the remaining inputs continue in a fresh instance.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{Invocation, Outcome, Sandbox, HARNESS};

/// A program and inputs to check. Each input is the text between the parentheses of `f(...)`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckRequest {
    pub program: String,
    pub inputs: Vec<String>,
    /// Per input, an expression the result must equal (abduction/induction answers).
    pub expected: Option<Vec<String>>,
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
            expected: None,
            entry: "f".into(),
            repeat: false,
        }
    }

    /// Also call `f` twice per input in one program state and flag results that change.
    pub fn repeated(mut self) -> Self {
        self.repeat = true;
        self
    }

    /// Also compare each result with an expected expression.
    pub fn expecting(mut self, expected: Vec<String>) -> Self {
        self.expected = Some(expected);
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
        /// `repr()` of the returned value.
        repr: String,
        /// `eval(repr(v)) == v`.
        roundtrips: bool,
        /// The call printed something (captured, not shown).
        printed: bool,
        /// Equality with the expected expression, when one was given.
        matches: Option<bool>,
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

    /// True when the call returned a value equal to its expected expression.
    pub fn matched(&self) -> bool {
        matches!(
            self,
            CallResult::Value {
                matches: Some(true),
                ..
            }
        )
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
        #[serde(default)]
        modules: Vec<String>,
    },
    Call {
        index: usize,
        status: String,
        #[serde(default)]
        repr: String,
        #[serde(default)]
        roundtrips: bool,
        #[serde(default)]
        printed: bool,
        matches: Option<bool>,
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
    modules: Vec<String>,
) -> ProgramStatus {
    match status.as_str() {
        "ok" => ProgramStatus::Ok { arity, normalized },
        "syntax" => ProgramStatus::Syntax { error },
        "banned" => ProgramStatus::BannedImport { modules },
        "missing" => ProgramStatus::Missing { error },
        _ => ProgramStatus::Definition { error },
    }
}

fn call_result(event: Event) -> Option<(usize, CallResult)> {
    let Event::Call {
        index,
        status,
        repr,
        roundtrips,
        printed,
        matches,
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
            roundtrips,
            printed,
            matches,
        },
        "raised" => CallResult::Raised { error },
        "bad_input" => CallResult::BadInput { error },
        "stateful" => CallResult::Stateful { first, second },
        _ => CallResult::ReprTooLong { length },
    };
    Some((index, result))
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
                "expected": req.expected.as_ref().map(|e| &e[start.min(e.len())..]),
                "banned": self.config().banned_modules,
                "perturb": perturb,
                "repeat": req.repeat,
            });
            let run = self.execute(self.harness_invocation(&request, seed)).await;
            elapsed += run.elapsed;
            for event in events(&run.stdout, &nonce) {
                match event {
                    Event::Program {
                        status,
                        arity,
                        normalized,
                        error,
                        modules,
                    } => {
                        program.get_or_insert_with(|| {
                            program_status(status, arity, normalized, error, modules)
                        });
                    }
                    other => {
                        if let Some((index, result)) = call_result(other) {
                            if start + index == calls.len() {
                                calls.push(result);
                            }
                        }
                    }
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

    fn harness_invocation(&self, request: &serde_json::Value, seed: u64) -> Invocation {
        Invocation {
            args: vec!["-c".into(), HARNESS.into()],
            stdin: request.to_string().into_bytes(),
            limits: self.config().limits,
            seed,
        }
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
