//! `azr bench propose`: the share of valid proposals per task type, and why the others were
//! rejected, for the config's model, prompts and sampling (see `selfplay::probe`).

use std::fmt;
use std::path::PathBuf;

use crate::selfplay::probe::ProposalReport;

/// Options of the proposal benchmark.
#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    /// A self-play run directory whose buffer gives the references (as a step after its cold
    /// start would see them); without it, a fresh buffer of the identity seeds.
    #[arg(long, value_name = "DIR")]
    pub run: Option<PathBuf>,
    /// Proposals per task type.
    #[arg(long, default_value_t = 16)]
    pub proposals: usize,
    /// Seeds the references drawn and the sampling.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Write every completion with its verdict here (JSON lines).
    #[arg(long, value_name = "FILE")]
    pub completions: Option<PathBuf>,
}

impl fmt::Display for ProposalReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "| type | proposals | valid | well framed |")?;
        writeln!(f, "| --- | ---: | ---: | ---: |")?;
        for (t, c) in &self.per_type {
            writeln!(
                f,
                "| {t} | {} | {} | {} |",
                c.proposals, c.valid, c.well_framed
            )?;
        }
        writeln!(
            f,
            "valid: {:.0}% of all proposals; {:.0} tokens per completion; {:.0} s",
            100.0 * self.valid_fraction(),
            self.mean_tokens,
            self.seconds
        )?;
        let mut reasons: Vec<_> = self.rejections.iter().collect();
        reasons.sort_by(|a, b| b.1.cmp(a.1));
        writeln!(f, "rejections:")?;
        for (reason, n) in reasons {
            writeln!(f, "  {n:>3}  {reason}")?;
        }
        Ok(())
    }
}
