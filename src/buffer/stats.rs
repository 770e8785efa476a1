//! `azr buffer stats`: what the model has invented so far, in numbers.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::Serialize;

use super::{Buffer, BufferError, Origin};
use crate::tasks::TaskType;

/// Per-type summary.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TypeStats {
    pub task_type: TaskType,
    pub tasks: usize,
    pub seeds: usize,
    /// Tasks the solver has met at least once.
    pub attempted: usize,
    /// Mean over attempted tasks of each task's solve rate.
    pub mean_solve_rate: Option<f64>,
    pub mean_program_lines: f64,
    /// Distinct normalised programs: how many different programs, not tasks, there are.
    pub distinct_programs: usize,
}

/// The whole buffer in numbers.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Stats {
    pub types: Vec<TypeStats>,
    /// Attempted tasks by solve rate: (bucket label, count).
    pub solve_rate_histogram: Vec<(&'static str, usize)>,
    /// (step, tasks added at that step, total after it).
    pub growth: Vec<(i64, usize, usize)>,
    /// Rejected proposals by reason.
    pub rejections: Vec<(String, usize)>,
}

const BUCKETS: [&str; 6] = ["0", "(0, .25]", "(.25, .5]", "(.5, .75]", "(.75, 1)", "1"];

fn bucket(rate: f64) -> usize {
    match rate {
        r if r <= 0.0 => 0,
        r if r >= 1.0 => 5,
        r => 1 + ((r * 4.0).ceil() as usize - 1).min(3),
    }
}

impl Buffer {
    /// Computes the statistics of the whole buffer.
    pub fn stats(&self) -> Result<Stats, BufferError> {
        let tasks = self.tasks(None)?;
        let types = TaskType::ALL
            .iter()
            .map(|&ty| {
                let of: Vec<_> = tasks.iter().filter(|t| t.task.task_type == ty).collect();
                let rates: Vec<f64> = of.iter().filter_map(|t| t.solve_rate()).collect();
                let lines: usize = of.iter().map(|t| t.task.program.lines().count()).sum();
                TypeStats {
                    task_type: ty,
                    tasks: of.len(),
                    seeds: of.iter().filter(|t| t.origin == Origin::Seed).count(),
                    attempted: rates.len(),
                    mean_solve_rate: (!rates.is_empty())
                        .then(|| rates.iter().sum::<f64>() / rates.len() as f64),
                    mean_program_lines: lines as f64 / of.len().max(1) as f64,
                    distinct_programs: of
                        .iter()
                        .map(|t| t.task.normalized.as_str())
                        .collect::<BTreeSet<_>>()
                        .len(),
                }
            })
            .collect();
        let mut histogram = [0usize; 6];
        for rate in tasks.iter().filter_map(|t| t.solve_rate()) {
            histogram[bucket(rate)] += 1;
        }
        let mut per_step: BTreeMap<i64, usize> = BTreeMap::new();
        for t in &tasks {
            *per_step.entry(t.step).or_default() += 1;
        }
        let mut total = 0;
        let growth = per_step
            .into_iter()
            .map(|(step, added)| {
                total += added;
                (step, added, total)
            })
            .collect();
        Ok(Stats {
            types,
            solve_rate_histogram: BUCKETS.iter().copied().zip(histogram).collect(),
            growth,
            rejections: self.rejection_counts()?,
        })
    }

    fn rejection_counts(&self) -> Result<Vec<(String, usize)>, BufferError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT kind, COUNT(*) FROM rejections GROUP BY kind ORDER BY COUNT(*) DESC, kind",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as usize))
            })
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }
}

impl fmt::Display for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{:<10} {:>6} {:>6} {:>9} {:>11} {:>11} {:>9}",
            "type", "tasks", "seeds", "attempted", "solve rate", "mean lines", "distinct"
        )?;
        for t in &self.types {
            let rate = t
                .mean_solve_rate
                .map_or("-".to_string(), |r| format!("{r:.2}"));
            writeln!(
                f,
                "{:<10} {:>6} {:>6} {:>9} {:>11} {:>11.1} {:>9}",
                t.task_type.as_str(),
                t.tasks,
                t.seeds,
                t.attempted,
                rate,
                t.mean_program_lines,
                t.distinct_programs
            )?;
        }
        writeln!(f, "\nsolve rate of attempted tasks:")?;
        let most = self
            .solve_rate_histogram
            .iter()
            .map(|(_, n)| *n)
            .max()
            .unwrap_or(0)
            .max(1);
        for (label, n) in &self.solve_rate_histogram {
            writeln!(f, "  {label:>10} {n:>6} {}", "#".repeat(n * 40 / most))?;
        }
        writeln!(f, "\ngrowth (step: added, total):")?;
        for (step, added, total) in &self.growth {
            writeln!(f, "  {step:>6}: {added:>5} {total:>7}")?;
        }
        if !self.rejections.is_empty() {
            writeln!(f, "\nrejected proposals:")?;
            for (kind, n) in &self.rejections {
                writeln!(f, "  {kind:<18} {n:>6}")?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn buckets_split_the_unit_interval() {
        let b: Vec<usize> = [0.0, 0.1, 0.25, 0.3, 0.5, 0.74, 0.75, 0.9, 1.0]
            .iter()
            .map(|&r| super::bucket(r))
            .collect();
        assert_eq!(b, [0, 1, 1, 2, 2, 3, 3, 4, 5]);
    }
}
