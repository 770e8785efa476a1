//! Tasks: the three AZR task types, the prompts for both roles, parsing of what the model wrote,
//! validation of proposals in the sandbox, and the rewards. Driven by text alone (no model), so
//! everything here is tested with hand-written model outputs.

pub mod chat;
pub mod parse;
pub mod prompts;
pub mod reward;
pub mod validate;

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The three ways a program, an input and an output make a question.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskType {
    /// Program + input -> predict the output.
    Deduction,
    /// Program + output -> find an input that produces it.
    Abduction,
    /// Input/output pairs + a message -> write the program.
    Induction,
}

impl TaskType {
    pub const ALL: [TaskType; 3] = [
        TaskType::Deduction,
        TaskType::Abduction,
        TaskType::Induction,
    ];

    /// Position in [`TaskType::ALL`]: the slot of per-type arrays and group keys.
    pub fn index(self) -> usize {
        self as usize
    }

    pub fn as_str(self) -> &'static str {
        match self {
            TaskType::Deduction => "deduction",
            TaskType::Abduction => "abduction",
            TaskType::Induction => "induction",
        }
    }
}

impl fmt::Display for TaskType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for TaskType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        TaskType::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| {
                format!("unknown task type `{s}`: use deduction, abduction or induction")
            })
    }
}

/// Which side of self-play produced a completion.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Proposer,
    Solver,
}

/// One input/output example: the input as argument text for `f(...)`, the output as the repr
/// the sandbox computed (never what the model claimed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Example {
    pub input: String,
    pub output: String,
}

/// A validated task, ready for the buffer and for solver prompts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Task {
    pub task_type: TaskType,
    /// The program defining `f`, as proposed.
    pub program: String,
    /// The program after `ast.unparse`: the key for duplicates.
    pub normalized: String,
    /// Deduction/abduction: exactly one. Induction: the shown pairs then the hidden ones.
    pub examples: Vec<Example>,
    /// Induction: how many leading examples the solver sees; the rest are hidden tests.
    pub shown: usize,
    /// Induction: the proposer's hint about what `f` does.
    pub message: Option<String>,
}

impl Task {
    /// Examples the solver sees.
    pub fn shown_examples(&self) -> &[Example] {
        &self.examples[..self.shown.min(self.examples.len())]
    }

    /// Induction's hidden tests (empty for the other types).
    pub fn hidden_examples(&self) -> &[Example] {
        &self.examples[self.shown.min(self.examples.len())..]
    }

    /// The key duplicates are found by: the normalised program and its inputs. One program
    /// makes different tasks with different inputs, in every type.
    pub fn dedupe_key(&self) -> String {
        let inputs: Vec<&str> = self.examples.iter().map(|e| e.input.trim()).collect();
        format!("{}\n#inputs {}", self.normalized, inputs.join(" | "))
    }
}

#[cfg(test)]
mod tests {
    use super::TaskType;

    #[test]
    fn index_is_the_position_in_all() {
        for (i, t) in TaskType::ALL.into_iter().enumerate() {
            assert_eq!(t.index(), i, "{t}");
        }
    }
}
