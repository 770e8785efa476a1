//! Drawing from the buffer, deterministically under a seeded RNG: reference tasks for proposer
//! prompts, and batches of tasks for the solver (unseen tasks first, as AZR does).

use rand::seq::{IndexedRandom, SliceRandom};
use rand::Rng;
use serde::{Deserialize, Serialize};

use super::{Buffer, BufferError, StoredTask};
use crate::tasks::TaskType;

/// How reference tasks are weighted when drawn for a proposer prompt.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Weighting {
    /// Every task equally likely (AZR).
    #[default]
    Uniform,
    /// Linearly more likely the later its step.
    Recent,
    /// Tasks the solver sometimes but not always solves, then unseen ones, then the rest.
    Learnable,
}

impl Weighting {
    fn weight(self, task: &StoredTask, newest: i64) -> f64 {
        match self {
            Weighting::Uniform => 1.0,
            Weighting::Recent => 1.0 + (task.step.max(0) as f64) / (newest.max(1) as f64) * 4.0,
            Weighting::Learnable => match task.solve_rate() {
                Some(r) if r > 0.0 && r < 1.0 => 1.0,
                None => 0.5,
                Some(_) => 0.1,
            },
        }
    }
}

/// The tasks of one type, loaded once and drawn from many times (one draw per proposal).
pub struct References {
    tasks: Vec<StoredTask>,
    newest: i64,
}

impl References {
    /// Up to `k` distinct tasks, drawn with `weighting`.
    pub fn draw<R: Rng + ?Sized>(
        &self,
        k: usize,
        weighting: Weighting,
        rng: &mut R,
    ) -> Vec<StoredTask> {
        self.tasks
            .sample_weighted(rng, k, |t| weighting.weight(t, self.newest))
            .map(|it| it.cloned().collect())
            .unwrap_or_default()
    }
}

impl Buffer {
    /// Every task of `task_type`, to draw proposal references from.
    pub fn references(&self, task_type: TaskType) -> Result<References, BufferError> {
        let tasks = self.tasks(Some(task_type))?;
        let newest = tasks.iter().map(|t| t.step).max().unwrap_or(0);
        Ok(References { tasks, newest })
    }

    /// Up to `n` distinct tasks of `task_type` for the solver: tasks it has never met first,
    /// newest first among them, then a uniform draw from the rest.
    pub fn sample_for_solving<R: Rng + ?Sized>(
        &self,
        task_type: TaskType,
        n: usize,
        rng: &mut R,
    ) -> Result<Vec<StoredTask>, BufferError> {
        let (mut unseen, mut seen): (Vec<StoredTask>, Vec<StoredTask>) = self
            .tasks(Some(task_type))?
            .into_iter()
            .partition(|t| t.samples == 0);
        unseen.sort_by_key(|t| std::cmp::Reverse(t.id));
        unseen.truncate(n);
        seen.shuffle(rng);
        let rest = n - unseen.len();
        unseen.extend(seen.into_iter().take(rest));
        Ok(unseen)
    }
}
