//! The cold start, as AZR does it: before step 1, the base model proposes tasks of every type
//! (the identity seeds and the growing seed set as references) until each type has its
//! `selfplay.seed_tasks`, so the first steps draw on real references and induction
//! on real programs. Proposals are validated as in the steps, except that, as in AZR's
//! seeding, the code and input blocks count wherever they are (the frame is what training
//! teaches), and stored as seeds of step 0; a budget of `selfplay.seed_attempts` proposals per type ends it with a clear error.

use std::sync::atomic::{AtomicBool, Ordering};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rand::{rngs::StdRng, SeedableRng};

use super::step::{sampling_config, Proposed, Proposer};
use super::SelfplayError;
use crate::buffer::Origin;
use crate::rl::checkpoint::step_seed;
use crate::tasks::TaskType;

/// What the cold start did, per type in [`TaskType::ALL`] order.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ColdStart {
    pub proposals: [usize; 3],
    pub valid: [usize; 3],
}

/// Proposals per short type in a round: at the measured validity (3 of 8 deduction, 2 of 8
/// abduction for Qwen2.5-Coder-0.5B) one round fills the default seeds, without proposing far
/// past them when the generation batch is large.
const ROUND: usize = 8;

/// Seeds the buffer until every type holds `seed_tasks` tasks (a resumed cold start counts
/// what the buffer already has), or until `stop` is set between rounds (Ctrl-C: the seeds so
/// far stay, and `--resume` goes on from them). Returns what it proposed.
pub async fn seed(proposer: &Proposer<'_>, stop: &AtomicBool) -> Result<ColdStart, SelfplayError> {
    let c = &proposer.config.selfplay;
    let target = c.seed_tasks.per_type();
    let mut report = ColdStart::default();
    // Tasks per type in the buffer, counted up to the target.
    let held = || -> Result<[usize; 3], SelfplayError> {
        let mut have = [0; 3];
        for ((n, t), goal) in have.iter_mut().zip(TaskType::ALL).zip(target) {
            *n = proposer.buffer.count(t)?.min(goal);
        }
        Ok(have)
    };
    let mut have = held()?;
    if (0..3).all(|slot| have[slot] >= target[slot]) {
        return Ok(report);
    }
    let total: usize = target.iter().sum();
    let bar = ProgressBar::with_draw_target(Some(total as u64), ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template("cold start {bar:30} {pos}/{len} seed tasks, {elapsed} {msg}")
            .expect("valid template"),
    );
    let seed = proposer.config.run.seed;
    let mut rng = StdRng::seed_from_u64(step_seed(seed, 0));
    for round in 0u64.. {
        bar.set_position(have.iter().sum::<usize>() as u64);
        // Each short type asks for a round of proposals, within its budget.
        let mut counts = [0; 3];
        for slot in 0..3 {
            let left = c.seed_attempts.saturating_sub(report.proposals[slot]);
            if have[slot] < target[slot] {
                counts[slot] = left.min(ROUND);
            }
        }
        if counts.iter().all(|&n| n == 0) {
            break;
        }
        if stop.load(Ordering::Relaxed) {
            bar.finish_and_clear();
            return Ok(report);
        }
        let proposals = proposer.prompts(counts, &mut rng)?;
        let sampling = sampling_config(
            proposer.config,
            c.propose_tokens,
            step_seed(seed ^ 0xc01d, round),
        );
        let Proposed {
            proposals,
            completions,
            validated,
            ..
        } = proposer.propose(proposals, &sampling).await?;
        for ((p, g), result) in proposals.iter().zip(&completions).zip(validated) {
            let slot = p.task_type.index();
            report.proposals[slot] += 1;
            if proposer.store(0, Origin::Seed, p, g, result)?.is_ok() {
                report.valid[slot] += 1;
            }
        }
        have = held()?;
        let line = progress_line(&report);
        bar.set_message(line.clone());
        tracing::info!(round, "cold start: {line}");
    }
    bar.finish_and_clear();
    let short: Vec<String> = (0..3)
        .filter(|&slot| have[slot] < target[slot])
        .map(|slot| format!("{} {}/{}", TaskType::ALL[slot], have[slot], target[slot]))
        .collect();
    if !short.is_empty() {
        return Err(SelfplayError::Config(format!(
            "cold start: the model did not write enough valid tasks within selfplay.seed_attempts = {} proposals per type ({}; {}). See why with `azr buffer stats --run DIR` (rejection reasons); raise seed_attempts or propose_tokens, lower seed_tasks, or start from a stronger model",
            c.seed_attempts,
            short.join(", "),
            progress_line(&report),
        )));
    }
    Ok(report)
}

/// "valid d/a/i 3/8 1/8 0/0" over the proposals so far.
fn progress_line(r: &ColdStart) -> String {
    let parts: Vec<String> = (0..3)
        .map(|i| format!("{}/{}", r.valid[i], r.proposals[i]))
        .collect();
    format!("valid d/a/i {}", parts.join(" "))
}
