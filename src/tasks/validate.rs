//! Validation of proposals in the sandbox. A proposal becomes a [`Task`] only when its program
//! parses, defines `f` with at least one argument, imports nothing banned, runs within limits,
//! returns a plain literal other than None whose repr round-trips, prints nothing, gives the
//! same result in two fresh runs, and gives it again when called a second time in the same
//! process (no state kept between calls). Outputs are always computed by running the program,
//! never taken from the model.

use serde::Serialize;

use super::parse::{InputsProposal, ParseError, ProgramProposal};
use super::{Example, Task, TaskType};
use crate::sandbox::{CallResult, CheckRequest, Outcome, ProgramStatus, Sandbox};

/// Why a proposal did not become a task.
#[derive(Debug, Clone, PartialEq, Serialize, thiserror::Error)]
#[serde(tag = "reason", content = "detail", rename_all = "snake_case")]
pub enum Rejection {
    #[error("format: {0}")]
    Format(ParseError),
    #[error("syntax error: {0}")]
    Syntax(String),
    #[error("imports banned module(s): {}", .0.join(", "))]
    BannedImport(Vec<String>),
    #[error("defining the program failed: {0}")]
    Definition(String),
    #[error("no function `f`")]
    MissingFunction,
    #[error("`f` takes no arguments")]
    NoArguments,
    #[error("input is not valid: {0}")]
    BadInput(String),
    #[error("f raised {0}")]
    Raised(String),
    #[error("stopped by a sandbox limit: {0:?}")]
    Stopped(Outcome),
    #[error("results differ between two runs: {0}")]
    Nondeterministic(String),
    #[error("f keeps state between calls: called twice on the same input it returned {0}")]
    Stateful(String),
    #[error("the output {0} is not a plain literal that survives eval(repr(x)) == x")]
    NotRoundTrip(String),
    #[error("the output's repr is {0} characters long")]
    OutputTooLong(usize),
    #[error("f prints")]
    Prints,
    #[error("f returns None: nothing to reason about")]
    ReturnsNone,
    #[error("{given} inputs, {needed} needed")]
    TooFewExamples { given: usize, needed: usize },
    #[error("the input {0} is given more than once")]
    RepeatedInput(String),
    #[error("the message is empty")]
    EmptyMessage,
    #[error("duplicate of an existing task")]
    Duplicate,
}

impl Rejection {
    /// A short label for counting rejections by kind.
    pub fn kind(&self) -> &'static str {
        match self {
            Rejection::Format(_) => "format",
            Rejection::Syntax(_) => "syntax",
            Rejection::BannedImport(_) => "banned_import",
            Rejection::Definition(_) => "definition",
            Rejection::MissingFunction => "missing_function",
            Rejection::NoArguments => "no_arguments",
            Rejection::BadInput(_) => "bad_input",
            Rejection::Raised(_) => "raised",
            Rejection::Stopped(_) => "stopped",
            Rejection::Nondeterministic(_) => "nondeterministic",
            Rejection::Stateful(_) => "stateful",
            Rejection::NotRoundTrip(_) => "not_round_trip",
            Rejection::OutputTooLong(_) => "output_too_long",
            Rejection::Prints => "prints",
            Rejection::ReturnsNone => "returns_none",
            Rejection::TooFewExamples { .. } => "too_few_examples",
            Rejection::RepeatedInput(_) => "repeated_input",
            Rejection::EmptyMessage => "empty_message",
            Rejection::Duplicate => "duplicate",
        }
    }
}

impl From<ParseError> for Rejection {
    fn from(e: ParseError) -> Self {
        Rejection::Format(e)
    }
}

/// Maps a failed program status to its rejection; Ok gives the arity and normalised text.
fn program_ok(status: ProgramStatus) -> Result<(i32, String), Rejection> {
    match status {
        ProgramStatus::Ok { arity, normalized } => Ok((arity, normalized)),
        ProgramStatus::Syntax { error } => Err(Rejection::Syntax(error)),
        ProgramStatus::BannedImport { modules } => Err(Rejection::BannedImport(modules)),
        ProgramStatus::Definition { error } => Err(Rejection::Definition(error)),
        ProgramStatus::Missing { .. } => Err(Rejection::MissingFunction),
        ProgramStatus::Stopped { outcome, .. } => Err(Rejection::Stopped(outcome)),
        ProgramStatus::Nondeterministic { first, second } => {
            Err(Rejection::Nondeterministic(format!("{first} vs {second}")))
        }
    }
}

/// The output of one valid call, or why the call makes the task invalid.
fn valid_output(call: CallResult) -> Result<String, Rejection> {
    match call {
        CallResult::Value { printed: true, .. } => Err(Rejection::Prints),
        CallResult::Value {
            repr,
            literal: false,
            ..
        } => Err(Rejection::NotRoundTrip(repr)),
        CallResult::Value { repr, .. } => Ok(repr),
        CallResult::Raised { error } => Err(Rejection::Raised(error)),
        CallResult::BadInput { error } => Err(Rejection::BadInput(error)),
        CallResult::ReprTooLong { length } => Err(Rejection::OutputTooLong(length)),
        CallResult::Stopped { outcome } => Err(Rejection::Stopped(outcome)),
        CallResult::Stateful { first, second } => {
            Err(Rejection::Stateful(format!("{first} then {second}")))
        }
        CallResult::Nondeterministic { first, second } => {
            Err(Rejection::Nondeterministic(format!("{first} vs {second}")))
        }
    }
}

/// The repr of None. A program that returns it for the task's input (an empty body, a `...`
/// copied from the format's example, a function that only mutates) leaves the solver nothing
/// to work out: any input answers its abduction task.
const NONE: &str = "None";

/// Outputs must equal themselves read back as literals (NaN does not); compared where no model
/// code runs, like every verdict.
async fn round_trip(sandbox: &Sandbox, outputs: &[String]) -> Result<(), Rejection> {
    let pairs: Vec<(String, String)> = outputs.iter().map(|o| (o.clone(), o.clone())).collect();
    let equal = sandbox.compare(&pairs).await;
    match outputs.iter().zip(equal).find(|(_, eq)| !eq) {
        Some((output, _)) => Err(Rejection::NotRoundTrip(output.clone())),
        None => Ok(()),
    }
}

/// Validates a deduction or abduction proposal into a task with one example.
pub async fn program_task(
    sandbox: &Sandbox,
    task_type: TaskType,
    proposal: &ProgramProposal,
) -> Result<Task, Rejection> {
    let request =
        CheckRequest::new(proposal.program.clone(), vec![proposal.input.clone()]).repeated();
    let report = sandbox.check_deterministic(&request).await;
    let (arity, normalized) = program_ok(report.program)?;
    if arity < 1 {
        return Err(Rejection::NoArguments);
    }
    let call = report
        .calls
        .into_iter()
        .next()
        .ok_or(Rejection::MissingFunction)?;
    let output = valid_output(call)?;
    if output == NONE {
        return Err(Rejection::ReturnsNone);
    }
    round_trip(sandbox, std::slice::from_ref(&output)).await?;
    Ok(Task {
        task_type,
        program: proposal.program.clone(),
        normalized,
        examples: vec![Example {
            input: proposal.input.clone(),
            output,
        }],
        shown: 1,
        message: None,
    })
}

/// Validates an induction proposal for `program` (taken from the buffer), as AZR does: every
/// input must be distinct and give a valid output, and there must be at least `min_examples`
/// of them. The first floor(n/2) examples are shown to the solver, the rest are hidden tests.
pub async fn induction_task(
    sandbox: &Sandbox,
    program: &str,
    proposal: &InputsProposal,
    min_examples: usize,
) -> Result<Task, Rejection> {
    if proposal.message.trim().is_empty() {
        return Err(Rejection::EmptyMessage);
    }
    let inputs: Vec<String> = proposal
        .inputs
        .iter()
        .map(|i| i.trim().to_string())
        .collect();
    for (i, input) in inputs.iter().enumerate() {
        if inputs[..i].contains(input) {
            return Err(Rejection::RepeatedInput(input.clone()));
        }
    }
    let needed = min_examples.max(2);
    if inputs.len() < needed {
        return Err(Rejection::TooFewExamples {
            given: inputs.len(),
            needed,
        });
    }
    let request = CheckRequest::new(program, inputs.clone()).repeated();
    let report = sandbox.check_deterministic(&request).await;
    let (_, normalized) = program_ok(report.program)?;
    let examples = inputs
        .into_iter()
        .zip(report.calls)
        .map(|(input, call)| {
            Ok(Example {
                input,
                output: valid_output(call)?,
            })
        })
        .collect::<Result<Vec<Example>, Rejection>>()?;
    if examples.iter().all(|e| e.output == NONE) {
        return Err(Rejection::ReturnsNone);
    }
    let outputs: Vec<String> = examples.iter().map(|e| e.output.clone()).collect();
    round_trip(sandbox, &outputs).await?;
    Ok(Task {
        task_type: TaskType::Induction,
        program: program.to_string(),
        normalized,
        shown: examples.len() / 2,
        examples,
        message: Some(proposal.message.trim().to_string()),
    })
}
