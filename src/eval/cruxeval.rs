//! CRUXEval (Gu et al., 2024): 800 short Python functions with an input and its output.
//! CRUXEval-O asks for the output (a deduction task), CRUXEval-I for an input that gives the
//! output (an abduction task). The data ships in `datasets/cruxeval.jsonl` and is compiled in.

use serde::Deserialize;

use super::Check;
use crate::sandbox::Sandbox;
use crate::tasks::reward;
use crate::tasks::{Example, Task, TaskType};

const DATA: &str = include_str!("../../datasets/cruxeval.jsonl");

/// One problem.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Problem {
    pub id: String,
    pub code: String,
    pub input: String,
    pub output: String,
}

/// Which half of the benchmark.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Predict the output (deduction).
    Output,
    /// Find an input (abduction).
    Input,
}

/// Every problem, in dataset order.
pub fn problems() -> Vec<Problem> {
    DATA.lines()
        .map(|l| serde_json::from_str(l).expect("datasets/cruxeval.jsonl is valid JSON lines"))
        .collect()
}

impl Problem {
    /// The problem as a self-play task of the matching type.
    pub fn task(&self, mode: Mode) -> Task {
        Task {
            task_type: match mode {
                Mode::Output => TaskType::Deduction,
                Mode::Input => TaskType::Abduction,
            },
            program: self.code.clone(),
            normalized: self.code.clone(),
            examples: vec![Example {
                input: self.input.clone(),
                output: self.output.clone(),
            }],
            shown: 1,
            message: None,
        }
    }
}

/// CRUXEval-O as an eval problem: complete `assert f(input) == ` with the output.
pub(super) fn output(p: &Problem) -> super::Problem {
    super::Problem {
        task_id: p.id.clone(),
        instruction: format!(
            "Here is a Python function and an assertion with an input to it. Complete the \
             assertion with the output of the function on that input, as a Python literal, even \
             if the function is incorrect or incomplete.\n\n```python\n{}\nassert f({}) == ??\n```",
            p.code, p.input
        ),
        prefix: format!("```python\nassert f({}) == ", p.input),
        check: Check::Output {
            code: p.code.clone(),
            output: p.output.clone(),
        },
    }
}

/// CRUXEval-I as an eval problem: complete `assert f(` with arguments that give the output.
pub(super) fn input(p: &Problem) -> super::Problem {
    super::Problem {
        task_id: p.id.clone(),
        instruction: format!(
            "Here is a Python function and an assertion about its output. Find any input on \
             which the function returns that output, and complete the assertion with it.\n\n\
             ```python\n{}\nassert f(??) == {}\n```",
            p.code, p.output
        ),
        prefix: "```python\nassert f(".into(),
        check: Check::Input {
            code: p.code.clone(),
            output: p.output.clone(),
        },
    }
}

/// Fraction of `problems` whose one answer in `answers` (same order) is correct.
pub async fn score(sandbox: &Sandbox, problems: &[Problem], mode: Mode, answers: &[String]) -> f64 {
    let verdicts = futures::future::join_all(problems.iter().zip(answers).map(|(p, a)| {
        let task = p.task(mode);
        async move { reward::judge(sandbox, &task, std::slice::from_ref(a)).await }
    }))
    .await;
    let correct = verdicts.iter().filter(|v| v[0].is_correct()).count();
    correct as f64 / problems.len().max(1) as f64
}

#[cfg(test)]
mod tests {
    #[test]
    fn all_800_problems_load() {
        let p = super::problems();
        assert_eq!(p.len(), 800);
        assert!(p[0].code.contains("def f("));
    }
}
