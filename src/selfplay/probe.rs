//! `azr bench propose`: how often a model writes valid tasks, measured the way a step judges
//! its proposals (framed, validated in the sandbox, duplicates refused) against a run's buffer,
//! without training or touching that buffer. It answers "can this model play?" before a long
//! run, and is how prompt and sampling changes are compared.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use rand::{rngs::StdRng, SeedableRng};
use serde::Serialize;

use super::policy::Policy;
use super::progress::Progress;
use super::step::{sampling_config, with_stop, Proposed, Proposer};
use super::SelfplayError;
use crate::buffer::{seed, Buffer, Origin};
use crate::config::Config;
use crate::model::{provision, Model, TextTokenizer};
use crate::sandbox::Sandbox;
use crate::tasks::{parse, TaskType};

/// One task type's proposals.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct TypeCounts {
    pub proposals: usize,
    /// New valid tasks (what a step stores).
    pub valid: usize,
    /// Of those, completions that also keep the R1 frame (what earns learnability).
    pub well_framed: usize,
}

/// What the proposals came to.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ProposalReport {
    pub per_type: BTreeMap<String, TypeCounts>,
    /// Invalid proposals by reason: format failures by what was missing, others by kind.
    pub rejections: BTreeMap<String, usize>,
    pub mean_tokens: f64,
    pub seconds: f64,
}

impl ProposalReport {
    pub fn valid_fraction(&self) -> f64 {
        let (valid, all) = self
            .per_type
            .values()
            .fold((0, 0), |(v, a), c| (v + c.valid, a + c.proposals));
        valid as f64 / all.max(1) as f64
    }
}

/// Proposes `per_type` tasks of each type with the config's model, prompts and sampling,
/// drawing references from a copy of the buffer at `buffer` (a run's `buffer.sqlite`; None: a
/// fresh buffer of AZR's identity seeds). Each completion is written to `completions` when
/// given (JSON lines: type, verdict, text).
pub async fn propose_only(
    config: &Config,
    buffer: Option<&Path>,
    per_type: usize,
    seed: u64,
    mut completions: Option<&mut dyn std::io::Write>,
) -> Result<ProposalReport, SelfplayError> {
    let device = config.run.device.open()?;
    let dtype = config.run.dtype.dtype(&device);
    let sandbox = Sandbox::new(&config.sandbox)?;
    let scratch = tempfile::tempdir().map_err(|e| SelfplayError::Config(e.to_string()))?;
    let copy = scratch.path().join("buffer.sqlite");
    if let Some(path) = buffer {
        Buffer::open_existing(path)?.copy_to(&copy)?;
    }
    let buf = Buffer::open(&copy)?;
    if buffer.is_none() {
        seed::seed(&buf, &sandbox).await?;
    }
    let dir = provision::resolve(&crate::assets::home(), &config.run.model)?;
    let model = Model::load(&dir, &device, dtype)?;
    let tokenizer = TextTokenizer::load(&dir, &model.config.eos_ids())?;
    let policy = Policy {
        model,
        tokenizer,
        dir,
    };
    let progress = Progress::default();
    let proposer = Proposer {
        config,
        policy: &policy,
        sandbox: &sandbox,
        buffer: &buf,
        framed: true,
        progress: &progress,
    };
    let started = Instant::now();
    let mut rng = StdRng::seed_from_u64(seed);
    let prompts = proposer.prompts([per_type; 3], &mut rng)?;
    let sampling = sampling_config(config, config.selfplay.propose_tokens, seed);
    let Proposed {
        proposals,
        completions: generated,
        validated,
        ..
    } = proposer.propose(prompts, &sampling).await?;
    let mut report = ProposalReport::default();
    let mut tokens = 0;
    for ((p, g), result) in proposals.iter().zip(&generated).zip(validated) {
        tokens += g.tokens.len();
        let counts = report.per_type.entry(p.task_type.to_string()).or_default();
        counts.proposals += 1;
        let text = with_stop(g);
        let verdict = match proposer.store(1, Origin::Proposer, p, g, result)? {
            Ok(_) => {
                counts.valid += 1;
                let framed = parse::frame(&text).is_ok();
                counts.well_framed += usize::from(framed);
                match framed {
                    true => "valid".to_string(),
                    false => "valid, frame broken".to_string(),
                }
            }
            Err(rejection) => {
                let reason = match rejection.kind() {
                    "format" => rejection.to_string(),
                    kind => kind.to_string(),
                };
                *report.rejections.entry(reason.clone()).or_default() += 1;
                reason
            }
        };
        if let Some(out) = completions.as_mut() {
            let line = serde_json::json!({"type": p.task_type.to_string(), "verdict": verdict, "text": text});
            writeln!(out, "{line}").map_err(|e| SelfplayError::Config(e.to_string()))?;
        }
    }
    for t in TaskType::ALL {
        report.per_type.entry(t.to_string()).or_default();
    }
    report.mean_tokens = tokens as f64 / generated.len().max(1) as f64;
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}
