//! One self-play step, in order: propose, validate, solve, reward, update. Returns the step's
//! metrics; the caller logs them and checkpoints.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use rand::rngs::StdRng;
use serde::Serialize;

use super::policy::Policy;
use super::progress::{Phase, Progress};
use super::SelfplayError;
use crate::buffer::{Attempt, Buffer, Inserted, Origin, StoredTask};
use crate::config::Config;
use crate::generate::{Finish, GenerateConfig, Generation};
use crate::rl::optim::AdamW;
use crate::rl::update::{self, Rollout, UpdateMetrics};
use crate::sandbox::Sandbox;
use crate::tasks::reward::{self, learnability, RateError, RewardConfig, SolveRate, Verdict};
use crate::tasks::validate::{self, Rejection};
use crate::tasks::{parse, prompts, Role, Task, TaskType};

/// Both roles end their answer with this tag; generation stops at the first one after
/// `</think>`.
pub(crate) const STOP: &str = parse::ANSWER_END;

/// Everything a step needs.
pub struct Step<'a> {
    pub config: &'a Config,
    pub progress: &'a Progress,
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
    /// Valid proposals whose completion broke the R1 frame: stored, paid the format penalty.
    pub valid_unframed: usize,
    pub solver_answers: usize,
    pub solver_correct: usize,
    /// Mean learnability of the valid proposals (what they earn if well framed).
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
    /// Invalid proposals of the step by reason (`Rejection::kind`), all types together.
    pub rejections: std::collections::BTreeMap<String, usize>,
    pub deduction: TypeMetrics,
    pub abduction: TypeMetrics,
    pub induction: TypeMetrics,
    pub update: UpdateMetrics,
    /// Peak resident memory (MiB) from the step's start to its update (generation, the
    /// sandbox), and during the update (sampled: `memory.rs`). What a phase frees stays with
    /// malloc for the next, so once a step has run both include the heap it keeps.
    pub rollout_peak_rss_mb: f64,
    pub update_peak_rss_mb: f64,
    /// CRUXEval accuracy, on the steps that measure it (`run.validate_every`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub validation: Option<Validation>,
    /// Seconds spent writing the checkpoint of this step, on the steps that save one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checkpoint_seconds: Option<f64>,
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
    task_type.index() as u64 * 2 + u64::from(role == Role::Solver)
}

/// The proposer's reward: learnability for a new task (from its solve rate), the unlearnable
/// reward for a duplicate (a valid task the buffer already holds teaches nothing new, but it
/// is not broken), the format penalty for anything invalid and for a completion that breaks
/// the R1 frame (its task, if valid, is kept all the same, as in AZR).
fn proposer_reward(
    outcome: &Result<i64, Rejection>,
    learnable: Option<f32>,
    well_framed: bool,
    rewards: &RewardConfig,
) -> Result<f32, RateError> {
    match (outcome, learnable) {
        _ if !well_framed => Ok(rewards.format_penalty),
        (Ok(_), Some(l)) => Ok(l),
        (Ok(_), None) => Err(RateError::NoSamples),
        (Err(Rejection::Duplicate), _) => Ok(rewards.unlearnable),
        (Err(_), _) => Ok(rewards.format_penalty),
    }
}

/// The solver's reward for a judged answer; the generation says whether the token limit cut
/// it off.
fn solver_reward(verdict: &Verdict, answer: &Generation, rewards: &RewardConfig) -> f32 {
    verdict.reward(rewards, answer.finish == Finish::Length)
}

/// The GRPO group of a proposer rollout. Solver rollouts are grouped by task (0..tasks, the
/// n samples of one prompt); each proposer prompt is sampled once, so a group per prompt would
/// give every proposer advantage 0. Proposers of one type share a group instead: a per-type
/// baseline, as TRR++ has.
pub(crate) fn proposer_prompt_group(solver_groups: usize, task_type: TaskType) -> u64 {
    (solver_groups + group_of(task_type, Role::Proposer) as usize) as u64
}

#[derive(Clone)]
pub(crate) struct Proposal {
    pub task_type: TaskType,
    prompt: Vec<u32>,
    parents: Vec<i64>,
    /// Induction: the buffer program the inputs are for.
    program: Option<String>,
}

/// What proposing needs; shared by the steps and the cold start.
#[derive(Clone, Copy)]
pub(crate) struct Proposer<'a> {
    pub config: &'a Config,
    pub policy: &'a Policy,
    pub sandbox: &'a Sandbox,
    pub buffer: &'a Buffer,
    /// Whether a proposal's blocks are read from its answer (after the last `<answer>`, as AZR
    /// reads training proposals) or from the whole completion (AZR's seeding).
    pub framed: bool,
    pub progress: &'a Progress,
}

/// Proposals generated and validated.
pub(crate) struct Proposed {
    pub proposals: Vec<Proposal>,
    pub completions: Vec<Generation>,
    pub validated: Vec<Result<Task, Rejection>>,
    pub generate_seconds: f64,
    /// Waiting for validation after the last batch was generated.
    pub sandbox_seconds: f64,
}

impl Proposer<'_> {
    /// `counts[t]` prompts for each type t (in [`TaskType::ALL`] order), each with references
    /// drawn from the buffer, or for induction a program from it; the lineage is kept.
    pub fn prompts(
        &self,
        counts: [usize; 3],
        rng: &mut StdRng,
    ) -> Result<Vec<Proposal>, SelfplayError> {
        let c = &self.config.selfplay;
        let banned = &self.config.sandbox.banned_modules;
        let mut out = Vec::new();
        // Each type's tasks are read from the buffer once per call, not once per proposal.
        let mut pools = HashMap::new();
        for t in [TaskType::Deduction, TaskType::Abduction] {
            pools.insert(t, self.buffer.references(t)?);
        }
        for (task_type, count) in TaskType::ALL.into_iter().zip(counts) {
            for i in 0..count {
                let proposal = match task_type {
                    TaskType::Induction => {
                        // The program comes from the deduction/abduction buffers, alternately.
                        let source = [TaskType::Deduction, TaskType::Abduction][i % 2];
                        let picked = pools[&source].draw(1, c.reference_weighting, rng);
                        let Some(from) = picked.first() else { continue };
                        Proposal {
                            task_type,
                            prompt: self.policy.render(&prompts::propose_inputs(
                                &from.task.program,
                                c.induction_inputs,
                            ))?,
                            parents: vec![from.id],
                            program: Some(from.task.program.clone()),
                        }
                    }
                    _ => {
                        let refs = pools[&task_type].draw(c.references, c.reference_weighting, rng);
                        let tasks: Vec<Task> = refs.iter().map(|r| r.task.clone()).collect();
                        Proposal {
                            task_type,
                            prompt: self
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

    /// Generates a completion per proposal and validates each batch in the sandbox while the
    /// next one generates.
    pub async fn propose(
        &self,
        proposals: Vec<Proposal>,
        sampling: &GenerateConfig,
    ) -> Result<Proposed, SelfplayError> {
        let t = Instant::now();
        let prompt_tokens: Vec<Vec<u32>> = proposals.iter().map(|p| p.prompt.clone()).collect();
        let shared = Arc::new(self.config.clone());
        let mut checks: Vec<_> = proposals.iter().map(|_| None).collect();
        self.progress.start(Phase::Proposing, proposals.len());
        let completions = self.policy.sample_with(
            &prompt_tokens,
            sampling,
            self.config.selfplay.generate_batch,
            |i, g| {
                self.progress.finished(1);
                let (sandbox, config) = (self.sandbox.clone(), shared.clone());
                let (p, text, framed) = (proposals[i].clone(), with_stop(g), self.framed);
                checks[i] = Some(tokio::spawn(async move {
                    validate_one(&sandbox, &config, &p, &text, framed).await
                }));
            },
            |live| self.progress.sampled(live),
        )?;
        let generate_seconds = t.elapsed().as_secs_f64();
        let t = Instant::now();
        self.progress.start(Phase::Validating, checks.len());
        let validated = joined(every(checks)?, self.progress).await?;
        Ok(Proposed {
            proposals,
            completions,
            validated,
            generate_seconds,
            sandbox_seconds: t.elapsed().as_secs_f64(),
        })
    }

    /// Stores a validated proposal: its new task's id, or why it made none (recorded).
    pub fn store(
        &self,
        step: i64,
        origin: Origin,
        p: &Proposal,
        completion: &Generation,
        validated: Result<Task, Rejection>,
    ) -> Result<Result<i64, Rejection>, SelfplayError> {
        let outcome =
            validated.and_then(
                |task| match self.buffer.insert(&task, step, origin, &p.parents) {
                    Ok(Inserted::New(id)) => Ok(id),
                    Ok(Inserted::Duplicate(_)) => Err(Rejection::Duplicate),
                    Err(e) => Err(Rejection::Definition(format!("buffer: {e}"))),
                },
            );
        if let Err(rejection) = &outcome {
            self.buffer
                .record_rejection(step, p.task_type, rejection, &with_stop(completion))?;
        }
        Ok(outcome)
    }
}

async fn validate_one(
    sandbox: &Sandbox,
    config: &Config,
    p: &Proposal,
    text: &str,
    framed: bool,
) -> Result<Task, Rejection> {
    let body = if framed {
        parse::proposal_answer(text)?
    } else {
        parse::frame(text).map_or(text, |f| f.answer)
    };
    match &p.program {
        Some(program) => {
            let parsed = parse::inputs_blocks(body)?;
            validate::induction_task(
                sandbox,
                program,
                &parsed,
                config.selfplay.induction_minimum(),
            )
            .await
        }
        None => {
            let parsed = parse::program_blocks(body)?;
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

/// Sampling for either role: the configured temperature and top-p, stopping at the first
/// `</answer>` after `</think>`.
pub(crate) fn sampling_config(config: &Config, max_new_tokens: usize, seed: u64) -> GenerateConfig {
    GenerateConfig {
        max_new_tokens,
        temperature: config.selfplay.temperature,
        top_p: config.selfplay.top_p,
        seed,
        stop: vec![STOP.into()],
        stop_after: Some(parse::THINK_END.into()),
        bf16_decode: config.run.bf16_decode,
    }
}

/// The results of spawned checks, in order.
/// The checks started as completions finished, in prompt order; each completion starts one.
fn every<T>(started: Vec<Option<T>>) -> Result<Vec<T>, SelfplayError> {
    started
        .into_iter()
        .collect::<Option<Vec<T>>>()
        .ok_or_else(|| SelfplayError::Check("a completion finished without its check".into()))
}

async fn joined<T>(
    tasks: Vec<tokio::task::JoinHandle<T>>,
    progress: &Progress,
) -> Result<Vec<T>, SelfplayError> {
    let mut out = Vec::with_capacity(tasks.len());
    for task in tasks {
        out.push(
            task.await
                .map_err(|e| SelfplayError::Check(e.to_string()))?,
        );
        progress.finished(1);
    }
    Ok(out)
}

/// Runs the step.
pub async fn run(s: &mut Step<'_>) -> Result<StepMetrics, SelfplayError> {
    let started = Instant::now();
    crate::memory::start_phase();
    let (sandbox, config) = (s.sandbox, s.config);
    let c = s.config.selfplay.clone();
    let rewards = s.config.reward;
    let mut m = StepMetrics {
        step: s.step,
        ..Default::default()
    };

    // 1. Propose, and 2. validate in the sandbox; valid tasks go into the buffer.
    let proposer = Proposer {
        config,
        policy: s.policy,
        sandbox,
        buffer: s.buffer,
        framed: true,
        progress: s.progress,
    };
    s.progress.step(s.step);
    let proposals = proposer.prompts([c.propose_batch; 3], s.rng)?;
    let Proposed {
        proposals,
        completions: proposed,
        validated,
        generate_seconds,
        sandbox_seconds,
    } = proposer
        .propose(proposals, &sampling(s, c.propose_tokens, 1))
        .await?;
    m.generate_seconds += generate_seconds;
    let t = Instant::now();
    let mut new_task: Vec<Result<i64, Rejection>> = Vec::with_capacity(proposals.len());
    for ((p, g), result) in proposals.iter().zip(&proposed).zip(validated) {
        m.of(p.task_type).proposals += 1;
        let outcome = proposer.store(s.step as i64, Origin::Proposer, p, g, result)?;
        match &outcome {
            Ok(_) => m.of(p.task_type).valid_proposals += 1,
            Err(rejection) => *m.rejections.entry(rejection.kind().into()).or_default() += 1,
        }
        new_task.push(outcome);
    }
    m.sandbox_seconds += sandbox_seconds + t.elapsed().as_secs_f64();

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
    let mut texts: Vec<String> = vec![String::new(); solve_prompts.len()];
    let mut left = vec![c.samples; tasks.len()];
    let mut judging: Vec<_> = tasks.iter().map(|_| None).collect();
    let progress = s.progress;
    progress.start(Phase::Solving, solve_prompts.len());
    let answers = s.policy.sample_with(
        &solve_prompts,
        &sampling(s, c.solve_tokens, 2),
        c.generate_batch,
        |i, g| {
            progress.finished(1);
            texts[i] = with_stop(g);
            let k = i / c.samples;
            left[k] -= 1;
            if left[k] == 0 {
                let answers = texts[k * c.samples..(k + 1) * c.samples].to_vec();
                let (sandbox, task) = (sandbox.clone(), tasks[k].task.clone());
                judging[k] = Some(tokio::spawn(async move {
                    reward::judge(&sandbox, &task, &answers).await
                }));
            }
        },
        |live| progress.sampled(live),
    )?;
    m.generate_seconds += t.elapsed().as_secs_f64();
    let t = Instant::now();
    progress.start(Phase::Judging, judging.len());
    let judged = joined(every(judging)?, progress).await?;
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
                solver_reward(verdict, &answers[i], &rewards),
                task.task.task_type,
                Role::Solver,
                k as u64,
            ));
        }
    }
    let mut learn_sum: HashMap<TaskType, f64> = HashMap::new();
    for ((p, g), outcome) in proposals.iter().zip(&proposed).zip(&new_task) {
        let rate_error = |e: RateError| SelfplayError::Config(e.to_string());
        let learnable = match outcome {
            Ok(id) => Some(
                learnability(
                    &SolveRate {
                        successes: solved.get(id).copied().unwrap_or(0),
                        samples: c.samples,
                        temperature: c.temperature,
                    },
                    &rewards,
                )
                .map_err(rate_error)?,
            ),
            Err(_) => None,
        };
        let well_framed = parse::frame(&with_stop(g)).is_ok();
        if let Some(l) = learnable {
            *learn_sum.entry(p.task_type).or_default() += l as f64;
            if !well_framed {
                m.of(p.task_type).valid_unframed += 1;
            }
        }
        let reward =
            proposer_reward(outcome, learnable, well_framed, &rewards).map_err(rate_error)?;
        rollouts.push(rollout(
            &p.prompt,
            g,
            reward,
            p.task_type,
            Role::Proposer,
            proposer_prompt_group(tasks.len(), p.task_type),
        ));
    }
    for task_type in TaskType::ALL {
        let tm = m.of(task_type);
        tm.mean_learnability =
            learn_sum.get(&task_type).copied().unwrap_or(0.0) / tm.valid_proposals.max(1) as f64;
    }

    // 5. Advantages and the policy update.
    m.rollout_peak_rss_mb = crate::memory::phase_peak_mb();
    crate::memory::start_phase();
    let t = Instant::now();
    progress.start(Phase::Updating, rollouts.len());
    if let Some(reference) = s.reference {
        update::reference_logprobs(reference, &mut rollouts, &s.config.rl)?;
    }
    m.update = update::update(&s.policy.model, s.optimizer, &rollouts, &s.config.rl)?;
    m.update_seconds = t.elapsed().as_secs_f64();
    m.update_peak_rss_mb = crate::memory::phase_peak_mb();

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

/// The completion as the format check reads it: generation stops at `</answer>` and cuts the
/// stop string off, so it is put back; a turn the model ends (end-of-sequence) with its answer
/// open is closed there too. Small instruct models end their turn right after the answer's
/// last block about as often as they write the tag.
pub(crate) fn with_stop(g: &Generation) -> String {
    let open_answer = || {
        g.text.find(parse::THINK_END).is_some_and(|end| {
            let after = &g.text[end..];
            after.contains("<answer>") && !after.contains(STOP)
        })
    };
    match g.finish {
        Finish::Stop => format!("{}{STOP}", g.text),
        Finish::Eos if open_answer() => format!("{}{STOP}", g.text),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rl::advantage::{advantages, Estimator};

    fn generation(text: &str, finish: Finish) -> Generation {
        Generation {
            tokens: Vec::new(),
            text: text.into(),
            logprobs: Vec::new(),
            finish,
        }
    }

    #[test]
    fn the_end_of_the_turn_closes_an_open_answer() {
        let open = "plan</think>\n<answer>\n```input\n1\n```\n";
        let closed = format!("{open}</answer>");
        assert_eq!(with_stop(&generation(open, Finish::Stop)), closed);
        assert_eq!(with_stop(&generation(open, Finish::Eos)), closed);
        // Cut off by the token limit, or never opened: left as written (a format failure).
        assert_eq!(with_stop(&generation(open, Finish::Length)), open);
        let unopened = "plan</think> and then";
        assert_eq!(with_stop(&generation(unopened, Finish::Eos)), unopened);
        assert!(
            parse::value_answer(&with_stop(&generation("t</think><answer>42", Finish::Eos)))
                .is_ok()
        );
    }

    #[test]
    fn a_duplicate_earns_the_unlearnable_reward_and_a_broken_frame_the_format_penalty() {
        let rewards = RewardConfig {
            unlearnable: -0.5,
            ..RewardConfig::default()
        };
        let rate = SolveRate {
            successes: 1,
            samples: 4,
            temperature: 1.0,
        };
        let l = learnability(&rate, &rewards).unwrap();
        let reward = |outcome: Result<i64, Rejection>, framed| {
            let learnable = outcome.is_ok().then_some(l);
            proposer_reward(&outcome, learnable, framed, &rewards).unwrap()
        };
        assert_eq!(reward(Ok(7), true), 0.75);
        assert_eq!(reward(Err(Rejection::Duplicate), true), -0.5);
        assert_eq!(reward(Err(Rejection::MissingFunction), true), -1.0);
        // A valid task from a completion that broke the frame: kept, but paid as AZR pays it.
        assert_eq!(reward(Ok(7), false), -1.0);
        assert_eq!(reward(Err(Rejection::Duplicate), false), -1.0);
    }

    #[test]
    fn a_cut_off_answer_earns_the_truncation_reward() {
        let rewards = RewardConfig {
            truncated: -0.25,
            ..RewardConfig::default()
        };
        let open = "plan</think>\n<answer>\n4";
        let malformed = Verdict::Malformed(parse::value_answer(open).unwrap_err());
        let reward = |finish| solver_reward(&malformed, &generation(open, finish), &rewards);
        assert_eq!(reward(Finish::Length), -0.25);
        assert_eq!(reward(Finish::Eos), -1.0);
        assert_eq!(reward(Finish::Stop), -1.0);
    }

    #[test]
    fn proposers_learn_under_every_estimator() {
        // Two solver tasks of 2 samples each, then 2 proposals per type.
        let mut rewards = vec![1.0, -0.5, -0.5, -0.5];
        let mut prompts = vec![0, 0, 1, 1];
        let mut types = vec![group_of(TaskType::Deduction, Role::Solver); 4];
        for t in TaskType::ALL {
            rewards.extend([-1.0, 0.5]);
            prompts.extend([proposer_prompt_group(2, t); 2]);
            types.extend([group_of(t, Role::Proposer); 2]);
        }
        let solver_groups: std::collections::HashSet<u64> = prompts[..4].iter().copied().collect();
        assert!(prompts[4..].iter().all(|g| !solver_groups.contains(g)));
        for estimator in [Estimator::TrrPlusPlus, Estimator::Grpo, Estimator::DrGrpo] {
            let a = advantages(estimator, &rewards, &types, &prompts);
            for (i, pair) in a[4..].chunks(2).enumerate() {
                assert!(
                    pair[0] < 0.0 && pair[1] > 0.0,
                    "{estimator:?}, type {i}: {pair:?}"
                );
            }
        }
    }
}
