//! Rewards. The solver earns 1 for a correct answer, checked by running code: deduction when
//! its output equals the gold output as a Python value, abduction when `f(answer) == gold`
//! (any input that works counts), induction when its program reproduces every hidden output.
//! The proposer earns learnability: `1 - rate` when the solver's Monte-Carlo success rate is
//! strictly between 0 and 1, else `unlearnable` (0 in the paper; AZR's code uses -0.5).
//! A malformed completion or an invalid proposal earns `format_penalty` in either role, a
//! well-formatted wrong answer `wrong_answer` (-0.5, as in the paper's composite reward), and
//! a solver answer cut off by the token limit `truncated` (AZR: the format penalty).

use serde::{Deserialize, Serialize};

use super::parse::{self, ParseError};
use super::{Task, TaskType};
use crate::sandbox::{CallResult, CheckRequest, ProgramStatus, Sandbox};

/// `[reward]`: the reward values.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RewardConfig {
    /// Reward for a completion that breaks the format, in either role, and for an invalid
    /// proposal.
    pub format_penalty: f32,
    /// Solver reward for a well-formatted wrong answer: -0.5, the paper's composite reward
    /// (eq. 6) and AZR's code.
    pub wrong_answer: f32,
    /// Proposer reward for a valid task that the solver always or never solved. The paper's rule
    /// is 0; AZR's released code gives -0.5.
    pub unlearnable: f32,
    /// Solver reward for an answer the token limit cut off before it was complete. AZR counts
    /// it as a format failure (-1) under an 8k-token limit; under a CPU run's few hundred
    /// tokens that teaches the solver to stop reasoning, so a run may charge it as a wrong
    /// answer instead.
    pub truncated: f32,
}

impl Default for RewardConfig {
    fn default() -> Self {
        Self {
            format_penalty: -1.0,
            wrong_answer: -0.5,
            unlearnable: 0.0,
            truncated: -1.0,
        }
    }
}

/// The judgement of one solver answer.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "verdict", content = "detail", rename_all = "snake_case")]
pub enum Verdict {
    Correct,
    /// Well formed but wrong; says how.
    Wrong(String),
    Malformed(ParseError),
}

impl Verdict {
    pub fn is_correct(&self) -> bool {
        matches!(self, Verdict::Correct)
    }

    /// The solver's reward for this verdict; `cut_off` says the token limit ended the answer.
    pub fn reward(&self, config: &RewardConfig, cut_off: bool) -> f32 {
        match self {
            Verdict::Correct => 1.0,
            Verdict::Wrong(_) => config.wrong_answer,
            Verdict::Malformed(_) if cut_off => config.truncated,
            Verdict::Malformed(_) => config.format_penalty,
        }
    }
}

/// The solver's record on one task: `successes` of `samples` answers drawn at `temperature`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SolveRate {
    pub successes: usize,
    pub samples: usize,
    pub temperature: f32,
}

/// A solve rate that cannot estimate learnability.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RateError {
    #[error("learnability needs sampled solver answers, but they were drawn greedily (temperature {0}); greedy samples make every rate 0 or 1")]
    Greedy(f32),
    #[error("learnability needs at least one solver sample")]
    NoSamples,
}

/// The proposer's reward for a valid task, from the solver's Monte-Carlo success rate.
pub fn learnability(rate: &SolveRate, config: &RewardConfig) -> Result<f32, RateError> {
    if rate.temperature <= 0.0 {
        return Err(RateError::Greedy(rate.temperature));
    }
    if rate.samples == 0 {
        return Err(RateError::NoSamples);
    }
    let mean = rate.successes as f32 / rate.samples as f32;
    Ok(if mean > 0.0 && mean < 1.0 {
        1.0 - mean
    } else {
        config.unlearnable
    })
}

/// Judges several answers to one task: programs run in the sandbox, one interpreter per answer,
/// and every comparison with a gold value in one more interpreter that runs no model code.
pub async fn judge(sandbox: &Sandbox, task: &Task, answers: &[String]) -> Vec<Verdict> {
    let mut verdicts: Vec<Option<Verdict>> = vec![None; answers.len()];
    let parsed: Vec<(usize, String)> = answers
        .iter()
        .enumerate()
        .filter_map(|(i, text)| {
            let result = match task.task_type {
                TaskType::Induction => parse::program_answer(text),
                TaskType::Abduction => parse::input_answer(text),
                TaskType::Deduction => parse::value_answer(text),
            };
            match result {
                Ok(answer) => Some((i, answer)),
                Err(e) => {
                    verdicts[i] = Some(Verdict::Malformed(e));
                    None
                }
            }
        })
        .collect();
    let judged = match task.task_type {
        TaskType::Deduction => judge_outputs(sandbox, task, &parsed).await,
        TaskType::Abduction => judge_inputs(sandbox, task, &parsed).await,
        TaskType::Induction => judge_programs(sandbox, task, &parsed).await,
    };
    for ((i, _), verdict) in parsed.iter().zip(judged) {
        verdicts[*i] = Some(verdict);
    }
    verdicts
        .into_iter()
        .map(|v| v.unwrap_or_else(|| Verdict::Wrong("not judged".into())))
        .collect()
}

fn gold(task: &Task) -> &str {
    task.examples.first().map_or("", |e| e.output.as_str())
}

/// What an answer produced: pairs (got, wanted) of literal texts that must all be equal, or
/// why nothing comparable came out.
type Produced = Result<Vec<(String, String)>, String>;

/// Verdicts from what the answers produced. Every comparison runs in one fresh interpreter that
/// parses literals and runs no model code, so no program can reach its own verdict.
async fn decide(sandbox: &Sandbox, produced: Vec<Produced>) -> Vec<Verdict> {
    let pairs: Vec<(String, String)> = produced
        .iter()
        .flat_map(|p| p.iter().flatten().cloned())
        .collect();
    let mut equal = sandbox.compare(&pairs).await.into_iter();
    produced
        .into_iter()
        .map(|p| {
            let pairs = p?;
            let results: Vec<bool> = equal.by_ref().take(pairs.len()).collect();
            match pairs.iter().zip(results).find(|(_, eq)| !eq) {
                Some(((got, wanted), _)) => Err(format!("{got} is not {wanted}")),
                None if pairs.is_empty() => Err("nothing to compare".into()),
                None => Ok(()),
            }
        })
        .map(|result: Result<(), String>| match result {
            Ok(()) => Verdict::Correct,
            Err(why) => Verdict::Wrong(why),
        })
        .collect()
}

/// The literal a call returned, or why it gave nothing comparable. A call repeated in the same
/// state (as validation repeats it) is judged on its first result, from a fresh program state.
fn returned(call: &CallResult) -> Result<String, String> {
    match call {
        CallResult::Stateful { first, .. } => Ok(first.clone()),
        other => other
            .literal()
            .map(str::to_string)
            .ok_or_else(|| format!("f(answer) gave {other:?}")),
    }
}

async fn judge_outputs(
    sandbox: &Sandbox,
    task: &Task,
    answers: &[(usize, String)],
) -> Vec<Verdict> {
    let produced = answers
        .iter()
        .map(|(_, answer)| Ok(vec![(answer.clone(), gold(task).to_string())]))
        .collect();
    decide(sandbox, produced).await
}

/// Each answer runs in an interpreter of its own, called exactly as validation called the
/// program (so the program cannot tell judging from validation), and nothing one answer makes
/// the program do reaches another's run.
async fn judge_inputs(sandbox: &Sandbox, task: &Task, answers: &[(usize, String)]) -> Vec<Verdict> {
    let runs = answers.iter().map(|(_, answer)| {
        let request = CheckRequest::new(task.program.clone(), vec![answer.clone()]).repeated();
        async move { sandbox.check(&request).await }
    });
    let produced = futures::future::join_all(runs)
        .await
        .into_iter()
        .map(|report| match report.program {
            ProgramStatus::Ok { .. } => {
                let call = report.calls.first().ok_or("no call was made")?;
                Ok(vec![(returned(call)?, gold(task).to_string())])
            }
            other => Err(format!("the task's program failed: {other:?}")),
        })
        .collect();
    decide(sandbox, produced).await
}

async fn judge_programs(
    sandbox: &Sandbox,
    task: &Task,
    answers: &[(usize, String)],
) -> Vec<Verdict> {
    let hidden = task.hidden_examples();
    let inputs: Vec<String> = hidden.iter().map(|e| e.input.clone()).collect();
    let runs = answers.iter().map(|(_, program)| {
        let request = CheckRequest::new(program.clone(), inputs.clone());
        async move { sandbox.check(&request).await }
    });
    let produced = futures::future::join_all(runs)
        .await
        .into_iter()
        .map(|report| match report.program {
            ProgramStatus::Ok { .. } => report
                .calls
                .iter()
                .zip(hidden)
                .map(|(call, example)| Ok((returned(call)?, example.output.clone())))
                .collect(),
            other => Err(format!("the program failed: {other:?}")),
        })
        .collect();
    decide(sandbox, produced).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rate(successes: usize, samples: usize) -> SolveRate {
        SolveRate {
            successes,
            samples,
            temperature: 1.0,
        }
    }

    #[test]
    fn learnability_at_the_edges() {
        let config = RewardConfig::default();
        assert_eq!(learnability(&rate(0, 8), &config), Ok(0.0));
        assert_eq!(learnability(&rate(8, 8), &config), Ok(0.0));
        assert_eq!(learnability(&rate(2, 8), &config), Ok(0.75));
        assert_eq!(learnability(&rate(7, 8), &config), Ok(0.125));
        let azr_code = RewardConfig {
            unlearnable: -0.5,
            ..config
        };
        assert_eq!(learnability(&rate(8, 8), &azr_code), Ok(-0.5));
    }

    #[test]
    fn greedy_samples_cannot_estimate_learnability() {
        let greedy = SolveRate {
            temperature: 0.0,
            ..rate(1, 2)
        };
        assert!(matches!(
            learnability(&greedy, &RewardConfig::default()),
            Err(RateError::Greedy(_))
        ));
        assert_eq!(
            learnability(&rate(0, 0), &RewardConfig::default()),
            Err(RateError::NoSamples)
        );
    }

    #[test]
    fn verdict_rewards() {
        let config = RewardConfig {
            truncated: -0.25,
            ..RewardConfig::default()
        };
        assert_eq!(Verdict::Correct.reward(&config, false), 1.0);
        assert_eq!(Verdict::Wrong(String::new()).reward(&config, true), -0.5);
        let malformed = Verdict::Malformed(ParseError::NoThinkEnd);
        assert_eq!(malformed.reward(&config, false), -1.0);
        assert_eq!(malformed.reward(&config, true), -0.25);
    }
}
