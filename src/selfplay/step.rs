//! One self-play step, in order: propose, validate, solve, reward, update. Returns the step's
//! metrics; the caller logs them and checkpoints.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use rand::rngs::StdRng;
use serde::Serialize;

use super::policy::Policy;
use super::SelfplayError;
use crate::buffer::{Attempt, Buffer, Inserted, Origin, StoredTask};
use crate::config::Config;
use crate::generate::{Finish, GenerateConfig, Generation};
use crate::rl::optim::AdamW;
use crate::rl::update::{self, Rollout, UpdateMetrics};
use crate::sandbox::Sandbox;
use crate::tasks::reward::{self, learnability, SolveRate};
use crate::tasks::validate::{self, Rejection};
use crate::tasks::{parse, prompts, Role, Task, TaskType};

/// Both roles end their answer with this tag; generation stops there.
pub(crate) const STOP: &str = "</answer>";

/// Everything a step needs.
pub struct Step<'a> {
    pub config: &'a Config,
    pub policy: &'a Policy,
    pub optimizer: &'a mut AdamW,
    pub sandbox: &'a Sandbox,
    pub buffer: &'a Buffer,
    pub reference: Option<&'a crate::model::Model>,
    pub step: u64,
    pub seed: u64,
    pub rng: &'a mut StdRng,
}

/// Per task type numbers of a step.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct TypeMetrics {
    pub proposals: usize,
    pub valid_proposals: usize,
    pub solver_answers: usize,
    pub solver_correct: usize,
    /// Mean proposer reward over valid proposals.
    pub mean_learnability: f64,
}

/// What a step did.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct StepMetrics {
    pub step: u64,
    pub seconds: f64,
    pub generate_seconds: f64,
    pub sandbox_seconds: f64,
    pub update_seconds: f64,
    pub tokens_generated: usize,
    pub generate_tokens_per_sec: f64,
    pub mean_proposal_tokens: f64,
    pub mean_answer_tokens: f64,
    pub buffer_size: usize,
    pub deduction: TypeMetrics,
    pub abduction: TypeMetrics,
    pub induction: TypeMetrics,
    pub update: UpdateMetrics,
    /// CRUXEval accuracy, on the steps that measure it (`run.validate_every`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub validation: Option<Validation>,
}

/// Greedy accuracy on a fixed CRUXEval subset.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Validation {
    pub problems: usize,
    pub cruxeval_o: f64,
    pub cruxeval_i: f64,
}

impl StepMetrics {
    fn of(&mut self, t: TaskType) -> &mut TypeMetrics {
        match t {
            TaskType::Deduction => &mut self.deduction,
            TaskType::Abduction => &mut self.abduction,
            TaskType::Induction => &mut self.induction,
        }
    }
}

/// TRR++'s group key: one baseline per (task type x role).
pub fn group_of(task_type: TaskType, role: Role) -> u64 {
    let t = TaskType::ALL
        .iter()
        .position(|x| *x == task_type)
        .unwrap_or(0) as u64;
    t * 2 + u64::from(role == Role::Solver)
}

#[derive(Clone)]
struct Proposal {
    task_type: TaskType,
    prompt: Vec<u32>,
    parents: Vec<i64>,
    /// Induction: the buffer program the inputs are for.
    program: Option<String>,
}

/// A prompt's tokens for a proposal, with its lineage.
fn proposal_prompts(s: &mut Step) -> Result<Vec<Proposal>, SelfplayError> {
    let c = &s.config.selfplay;
    let banned = &s.config.sandbox.banned_modules;
    let mut out = Vec::new();
    // Each type's tasks are read from the buffer once per step, not once per proposal.
    let mut pools = HashMap::new();
    for t in [TaskType::Deduction, TaskType::Abduction] {
        pools.insert(t, s.buffer.references(t)?);
    }
    for task_type in TaskType::ALL {
        for i in 0..c.propose_batch {
            let proposal = match task_type {
                TaskType::Induction => {
                    // The program comes from the deduction/abduction buffers, alternately.
                    let source = [TaskType::Deduction, TaskType::Abduction][i % 2];
                    let picked = pools[&source].draw(1, c.reference_weighting, s.rng);
                    let Some(from) = picked.first() else { continue };
                    Proposal {
                        task_type,
                        prompt: s.policy.render(&prompts::propose_inputs(
                            &from.task.program,
                            c.induction_inputs,
                            banned,
                        ))?,
                        parents: vec![from.id],
                        program: Some(from.task.program.clone()),
                    }
                }
                _ => {
                    let refs = pools[&task_type].draw(c.references, c.reference_weighting, s.rng);
                    let tasks: Vec<Task> = refs.iter().map(|r| r.task.clone()).collect();
                    Proposal {
                        task_type,
                        prompt: s
                            .policy
                            .render(&prompts::propose_program(task_type, &tasks, banned))?,
                        parents: refs.iter().map(|r| r.id).collect(),
                        program: None,
                    }
                }
            };
            out.push(proposal);
        }
    }
    Ok(out)
}

async fn validate_one(
    sandbox: &Sandbox,
    config: &Config,
    p: &Proposal,
    text: &str,
) -> Result<Task, Rejection> {
    match &p.program {
        Some(program) => {
            let parsed = parse::inputs_proposal(text)?;
            validate::induction_task(
                sandbox,
                program,
                &parsed,
                config.selfplay.min_induction_examples,
            )
            .await
        }
        None => {
            let parsed = parse::program_proposal(text)?;
            validate::program_task(sandbox, p.task_type, &parsed).await
        }
    }
}

fn sampling(s: &Step, max_new_tokens: usize, salt: u64) -> GenerateConfig {
    sampling_config(
        s.config,
        max_new_tokens,
        crate::rl::checkpoint::step_seed(s.seed ^ salt, s.step),
    )
}

/// Sampling for either role: the configured temperature and top-p, stopping at `</answer>`.
pub(crate) fn sampling_config(config: &Config, max_new_tokens: usize, seed: u64) -> GenerateConfig {
    GenerateConfig {
        max_new_tokens,
        temperature: config.selfplay.temperature,
        top_p: config.selfplay.top_p,
        seed,
        stop: vec![STOP.into()],
        bf16_decode: config.run.bf16_decode,
    }
}

/// The results of spawned checks, in order.
async fn joined<T>(tasks: Vec<tokio::task::JoinHandle<T>>) -> Result<Vec<T>, SelfplayError> {
    let mut out = Vec::with_capacity(tasks.len());
    for task in tasks {
        out.push(
            task.await
                .map_err(|e| SelfplayError::Check(e.to_string()))?,
        );
    }
    Ok(out)
}

/// Runs the step.
pub async fn run(s: &mut Step<'_>) -> Result<StepMetrics, SelfplayError> {
    let started = Instant::now();
    let (sandbox, config) = (s.sandbox, s.config);
    let c = s.config.selfplay.clone();
    let rewards = s.config.reward;
    let mut m = StepMetrics {
        step: s.step,
        ..Default::default()
    };

    // 1. Propose.
    let proposals = proposal_prompts(s)?;
    // 2. Validate in the sandbox, each batch while the next one generates; valid tasks go
    // into the buffer. `sandbox_seconds` counts only the wait after generation.
    let t = Instant::now();
    let prompt_tokens: Vec<Vec<u32>> = proposals.iter().map(|p| p.prompt.clone()).collect();
    let shared = Arc::new(config.clone());
    let mut checks = Vec::with_capacity(proposals.len());
    let proposed = s.policy.sample_with(
        &prompt_tokens,
        &sampling(s, c.propose_tokens, 1),
        c.generate_batch,
        |start, batch| {
            for (p, g) in proposals[start..].iter().zip(batch) {
                let (sandbox, config, p) = (sandbox.clone(), shared.clone(), p.clone());
                let text = with_stop(g);
                checks.push(tokio::spawn(async move {
                    validate_one(&sandbox, &config, &p, &text).await
                }));
            }
        },
    )?;
    m.generate_seconds += t.elapsed().as_secs_f64();
    let t = Instant::now();
    let validated = joined(checks).await?;
    let mut new_task: Vec<Option<i64>> = Vec::with_capacity(proposals.len());
    for ((p, g), result) in proposals.iter().zip(&proposed).zip(validated) {
        m.of(p.task_type).proposals += 1;
        let outcome = result.and_then(|task| {
            match s
                .buffer
                .insert(&task, s.step as i64, Origin::Proposer, &p.parents)
            {
                Ok(Inserted::New(id)) => Ok(id),
                Ok(Inserted::Duplicate(_)) => Err(Rejection::Duplicate),
                Err(e) => Err(Rejection::Definition(format!("buffer: {e}"))),
            }
        });
        match outcome {
            Ok(id) => {
                m.of(p.task_type).valid_proposals += 1;
                new_task.push(Some(id));
            }
            Err(rejection) => {
                s.buffer
                    .record_rejection(s.step as i64, p.task_type, &rejection, &with_stop(g))?;
                new_task.push(None);
            }
        }
    }
    m.sandbox_seconds += t.elapsed().as_secs_f64();

    // 3. Solve: a batch of tasks per type, unseen (so this step's new ones) first, n samples each.
    let mut tasks: Vec<StoredTask> = Vec::new();
    for task_type in TaskType::ALL {
        tasks.extend(
            s.buffer
                .sample_for_solving(task_type, c.solve_batch, s.rng)?,
        );
    }
    let banned = &s.config.sandbox.banned_modules;
    let mut solve_prompts = Vec::with_capacity(tasks.len() * c.samples);
    for task in &tasks {
        let prompt = s.policy.render(&prompts::solve(&task.task, banned))?;
        solve_prompts.extend(std::iter::repeat_n(prompt, c.samples));
    }
    // A task's answers are judged as soon as its last sample is generated.
    let t = Instant::now();
    let mut texts: Vec<String> = Vec::with_capacity(solve_prompts.len());
    let mut judging = Vec::with_capacity(tasks.len());
    let answers = s.policy.sample_with(
        &solve_prompts,
        &sampling(s, c.solve_tokens, 2),
        c.generate_batch,
        |_, batch| {
            texts.extend(batch.iter().map(with_stop));
            while (judging.len() + 1) * c.samples <= texts.len() {
                let k = judging.len();
                let answers = texts[k * c.samples..(k + 1) * c.samples].to_vec();
                let (sandbox, task) = (sandbox.clone(), tasks[k].task.clone());
                judging.push(tokio::spawn(async move {
                    reward::judge(&sandbox, &task, &answers).await
                }));
            }
        },
    )?;
    m.generate_seconds += t.elapsed().as_secs_f64();
    let t = Instant::now();
    let judged = joined(judging).await?;
    m.sandbox_seconds += t.elapsed().as_secs_f64();

    // 4. Reward both roles.
    let mut rollouts = Vec::new();
    let mut solved: HashMap<i64, usize> = HashMap::new();
    for (k, (task, verdicts)) in tasks.iter().zip(&judged).enumerate() {
        let successes = verdicts.iter().filter(|v| v.is_correct()).count();
        solved.insert(task.id, successes);
        s.buffer.record_attempt(
            task.id,
            Attempt {
                step: s.step as i64,
                samples: c.samples as i64,
                successes: successes as i64,
            },
        )?;
        let tm = m.of(task.task.task_type);
        tm.solver_answers += verdicts.len();
        tm.solver_correct += successes;
        for (j, verdict) in verdicts.iter().enumerate() {
            let i = k * c.samples + j;
            rollouts.push(rollout(
                &solve_prompts[i],
                &answers[i],
                verdict.reward(&rewards),
                task.task.task_type,
                Role::Solver,
                k as u64,
            ));
        }
    }
    let mut learn_sum: HashMap<TaskType, f64> = HashMap::new();
    for (k, ((p, g), id)) in proposals.iter().zip(&proposed).zip(&new_task).enumerate() {
        let reward = match id {
            Some(id) => {
                let rate = SolveRate {
                    successes: solved.get(id).copied().unwrap_or(0),
                    samples: c.samples,
                    temperature: c.temperature,
                };
                let r = learnability(&rate, &rewards)
                    .map_err(|e| SelfplayError::Config(e.to_string()))?;
                *learn_sum.entry(p.task_type).or_default() += r as f64;
                r
            }
            None => rewards.format_penalty,
        };
        rollouts.push(rollout(
            &p.prompt,
            g,
            reward,
            p.task_type,
            Role::Proposer,
            (tasks.len() + k) as u64,
        ));
    }
    for task_type in TaskType::ALL {
        let tm = m.of(task_type);
        tm.mean_learnability =
            learn_sum.get(&task_type).copied().unwrap_or(0.0) / tm.valid_proposals.max(1) as f64;
    }

    // 5. Advantages and the policy update.
    let t = Instant::now();
    if let Some(reference) = s.reference {
        update::reference_logprobs(reference, &mut rollouts, &s.config.rl)?;
    }
    m.update = update::update(&s.policy.model, s.optimizer, &rollouts, &s.config.rl)?;
    m.update_seconds = t.elapsed().as_secs_f64();

    let proposal_tokens: usize = proposed.iter().map(|g| g.tokens.len()).sum();
    let answer_tokens: usize = answers.iter().map(|g| g.tokens.len()).sum();
    m.tokens_generated = proposal_tokens + answer_tokens;
    m.generate_tokens_per_sec = m.tokens_generated as f64 / m.generate_seconds.max(1e-9);
    m.mean_proposal_tokens = proposal_tokens as f64 / proposed.len().max(1) as f64;
    m.mean_answer_tokens = answer_tokens as f64 / answers.len().max(1) as f64;
    m.buffer_size = TaskType::ALL
        .iter()
        .map(|t| s.buffer.count(*t).unwrap_or(0))
        .sum();
    m.seconds = started.elapsed().as_secs_f64();
    Ok(m)
}

/// The completion as the model wrote it: generation stops at `</answer>` and cuts the stop
/// string off, so it is put back for the format check.
pub(crate) fn with_stop(g: &Generation) -> String {
    match g.finish {
        Finish::Stop => format!("{}{STOP}", g.text),
        _ => g.text.clone(),
    }
}

fn rollout(
    prompt: &[u32],
    g: &Generation,
    reward: f32,
    task_type: TaskType,
    role: Role,
    prompt_group: u64,
) -> Rollout {
    Rollout {
        prompt: prompt.to_vec(),
        completion: g.tokens.clone(),
        logprobs: g.logprobs.clone(),
        ref_logprobs: Vec::new(),
        reward,
        task_group: group_of(task_type, role),
        prompt_group,
    }
}
