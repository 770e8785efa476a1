//! What a step is doing right now: its phase, how far along that phase is and how fast tokens
//! come, for a live display (`azr selfplay` on a terminal) or plain log lines.

use std::sync::{Arc, Mutex};
use std::time::Instant;

/// The phases of a step, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Generating proposals (their checks start as batches finish).
    Proposing,
    /// Waiting for the last proposals' sandbox checks.
    Validating,
    /// Generating solver answers (judging starts as tasks' answers finish).
    Solving,
    /// Waiting for the last answers' verdicts.
    Judging,
    /// The policy update.
    Updating,
}

impl Phase {
    pub fn name(self) -> &'static str {
        match self {
            Phase::Proposing => "proposing",
            Phase::Validating => "validating",
            Phase::Solving => "solving",
            Phase::Judging => "judging",
            Phase::Updating => "updating",
        }
    }
}

/// Where a phase stands.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PhaseProgress {
    pub step: u64,
    pub phase: Phase,
    /// Units finished, of `total`: sequences while generating, else checks or rollouts.
    pub done: usize,
    pub total: usize,
    /// Sequences still generating in the current batch.
    pub live: usize,
    /// Tokens sampled in this phase so far.
    pub tokens: usize,
    /// Seconds since the phase started.
    pub seconds: f64,
}

impl PhaseProgress {
    pub fn tokens_per_second(&self) -> f64 {
        self.tokens as f64 / self.seconds.max(1e-9)
    }
}

type Sink = Arc<dyn Fn(&PhaseProgress) + Send + Sync>;

/// The handle a step reports through; cheap to clone. The default reports nowhere.
#[derive(Clone, Default)]
pub struct Progress {
    sink: Option<Sink>,
    state: Arc<Mutex<Option<(PhaseProgress, Instant)>>>,
    step: Arc<Mutex<u64>>,
}

impl Progress {
    /// Reports every change to `sink`.
    pub fn to(sink: impl Fn(&PhaseProgress) + Send + Sync + 'static) -> Self {
        Self {
            sink: Some(Arc::new(sink)),
            ..Self::default()
        }
    }

    /// The step the next phases belong to.
    pub fn step(&self, step: u64) {
        *self.step.lock().unwrap_or_else(|e| e.into_inner()) = step;
    }

    /// A phase begins, with `total` units to do.
    pub fn start(&self, phase: Phase, total: usize) {
        let Some(sink) = &self.sink else { return };
        let now = PhaseProgress {
            step: *self.step.lock().unwrap_or_else(|e| e.into_inner()),
            phase,
            done: 0,
            total,
            live: 0,
            tokens: 0,
            seconds: 0.0,
        };
        *self.state.lock().unwrap_or_else(|e| e.into_inner()) = Some((now, Instant::now()));
        sink(&now);
    }

    /// A sampling step drew one token for each of `live` sequences.
    pub fn sampled(&self, live: usize) {
        self.update(|p| {
            p.live = live;
            p.tokens += live;
        });
    }

    /// `n` more units are finished.
    pub fn finished(&self, n: usize) {
        self.update(|p| {
            p.done = (p.done + n).min(p.total);
            p.live = 0;
        });
    }

    fn update(&self, change: impl FnOnce(&mut PhaseProgress)) {
        let Some(sink) = &self.sink else { return };
        let snapshot = {
            let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            let Some((progress, since)) = state.as_mut() else {
                return;
            };
            change(progress);
            progress.seconds = since.elapsed().as_secs_f64();
            *progress
        };
        sink(&snapshot);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_a_phase_as_it_goes() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let progress = Progress::to(move |p| log.lock().unwrap().push(*p));
        progress.step(3);
        progress.start(Phase::Solving, 8);
        progress.sampled(8);
        progress.sampled(5);
        progress.finished(8);
        let seen = seen.lock().unwrap();
        let last = seen.last().unwrap();
        assert_eq!(seen.len(), 4);
        assert_eq!((last.step, last.phase), (3, Phase::Solving));
        assert_eq!((last.done, last.total, last.tokens), (8, 8, 13));
        // Without a sink nothing is kept or called.
        let silent = Progress::default();
        silent.start(Phase::Updating, 1);
        silent.finished(1);
    }
}
