//! `azr tasks validate|judge`: proposals and answers checked by hand, exactly as self-play
//! checks them, so a user can see why a proposal was rejected and test reward rules without a
//! model. One JSON line in, one JSON line out; a bad line gets an `error` line, not an abort.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::Subcommand;
use serde::Deserialize;
use serde_json::{json, Value};

use azr::config::Config;
use azr::sandbox::Sandbox;
use azr::tasks::parse::{InputsProposal, ProgramProposal};
use azr::tasks::reward::{self, Verdict};
use azr::tasks::{validate, Example, Task, TaskType};

#[derive(Debug, Subcommand)]
pub enum TasksCommand {
    /// Validate proposals as self-play does. Each line of FILE is {"type": "deduction" |
    /// "abduction", "program", "input"} or {"type": "induction", "program", "inputs": [...],
    /// "message"}; each prints {"valid": true, "output"} (induction: "examples", "shown") or
    /// {"valid": false, "kind", "reason"}.
    Validate {
        /// JSON lines, one proposal each.
        file: PathBuf,
    },
    /// Judge solver answers as self-play does. Each line of FILE is {"type", "program",
    /// "input", "output", "answer"}; for induction "examples": [{"input", "output"}] (the first
    /// "shown" are shown, default half rounded down; the rest are the hidden tests) and
    /// "answer" the written program. An answer holding <answer> is read as a whole completion
    /// (frame checked), else as the answer's content. Each prints {"correct", "reason"}.
    Judge {
        /// JSON lines, one answer each.
        file: PathBuf,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    #[serde(rename = "type")]
    task_type: TaskType,
    program: String,
    input: Option<String>,
    inputs: Option<Vec<String>>,
    message: Option<String>,
    output: Option<String>,
    examples: Option<Vec<Example>>,
    shown: Option<usize>,
    answer: Option<String>,
}

pub fn run(cmd: TasksCommand, config: &Config) -> anyhow::Result<ExitCode> {
    let (file, judging) = match &cmd {
        TasksCommand::Validate { file } => (file, false),
        TasksCommand::Judge { file } => (file, true),
    };
    let text = read(file)?;
    let sandbox = Sandbox::new(&config.sandbox)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    for raw in text.lines().filter(|l| !l.trim().is_empty()) {
        let result = match serde_json::from_str::<Line>(raw) {
            Ok(line) if judging => runtime.block_on(judge(&sandbox, line)),
            Ok(line) => runtime.block_on(validate(&sandbox, config, line)),
            Err(e) => Err(format!("not a valid line: {e}")),
        };
        println!(
            "{}",
            result.unwrap_or_else(|error| json!({ "error": error }))
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn read(file: &Path) -> anyhow::Result<String> {
    let bytes = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

fn field<T>(value: Option<T>, name: &str, kind: TaskType) -> Result<T, String> {
    value.ok_or_else(|| format!("a {kind} line needs \"{name}\""))
}

async fn validate(sandbox: &Sandbox, config: &Config, line: Line) -> Result<Value, String> {
    let task = match line.task_type {
        TaskType::Induction => {
            let proposal = InputsProposal {
                inputs: field(line.inputs, "inputs", line.task_type)?,
                message: line.message.unwrap_or_default(),
            };
            let min = config.selfplay.induction_minimum();
            validate::induction_task(sandbox, &line.program, &proposal, min).await
        }
        t => {
            let proposal = ProgramProposal {
                program: line.program,
                input: field(line.input, "input", t)?.trim().to_string(),
            };
            validate::program_task(sandbox, t, &proposal).await
        }
    };
    Ok(match task {
        Ok(task) if task.task_type == TaskType::Induction => json!({
            "valid": true, "examples": task.examples, "shown": task.shown,
        }),
        Ok(task) => json!({ "valid": true, "output": task.examples[0].output }),
        Err(rejection) => json!({
            "valid": false, "kind": rejection.kind(), "reason": rejection.to_string(),
        }),
    })
}

async fn judge(sandbox: &Sandbox, line: Line) -> Result<Value, String> {
    let kind = line.task_type;
    let examples = match kind {
        TaskType::Induction => field(line.examples, "examples", kind)?,
        _ => vec![Example {
            input: field(line.input, "input", kind)?,
            output: field(line.output, "output", kind)?,
        }],
    };
    let shown = match kind {
        TaskType::Induction => line.shown.unwrap_or(examples.len() / 2),
        _ => 1,
    };
    let task = Task {
        task_type: kind,
        normalized: line.program.clone(),
        program: line.program,
        examples,
        shown,
        message: line.message,
    };
    let answer = field(line.answer, "answer", kind)?;
    let completion = match answer.contains("<answer>") {
        true => answer,
        false => format!("<think></think><answer>{answer}</answer>"),
    };
    let verdict = reward::judge(sandbox, &task, &[completion]).await.remove(0);
    let reason = match &verdict {
        Verdict::Correct => Value::Null,
        Verdict::Wrong(why) => json!(why),
        Verdict::Malformed(e) => json!(format!("format: {e}")),
    };
    Ok(json!({ "correct": verdict.is_correct(), "reason": reason }))
}
