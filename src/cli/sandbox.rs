//! `azr sandbox run|eval`: run Python in the sandbox from the shell.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Subcommand;

use azr::config::Config;
use azr::sandbox::{CallResult, CheckRequest, Limits, Outcome, ProgramStatus, Sandbox};

/// Exit codes of `azr sandbox run` when a limit, not the program, ended the run.
pub const EXIT_TIMEOUT: u8 = 124;
pub const EXIT_MEMORY: u8 = 125;
pub const EXIT_OUTPUT: u8 = 123;
pub const EXIT_TRAP: u8 = 122;

#[derive(Debug, Subcommand)]
pub enum SandboxCommand {
    /// Run a whole Python file; print its stdout/stderr and exit with its exit code
    /// (124 timeout, 125 memory limit, 123 output limit, 122 trap, 2 host error).
    Run {
        /// The Python file to run.
        file: PathBuf,
        #[command(flatten)]
        limits: LimitArgs,
    },
    /// Print repr(f(INPUT)) for the function `f` in a program, as task checks compute it (a
    /// value that is not a plain literal prints as its type: none of its methods is run).
    Eval {
        /// Python file defining `f`.
        #[arg(long)]
        program: PathBuf,
        /// Arguments for f, as Python literals: '"abc", 3' calls f("abc", 3).
        #[arg(long)]
        input: String,
        #[command(flatten)]
        limits: LimitArgs,
    },
}

/// Overrides of the configured limits.
#[derive(Debug, clap::Args)]
pub struct LimitArgs {
    /// Wall-clock limit in milliseconds.
    #[arg(long, value_name = "N")]
    timeout_ms: Option<u64>,
    /// Memory limit in MiB.
    #[arg(long, value_name = "N")]
    memory_mb: Option<u64>,
}

impl LimitArgs {
    fn apply(&self, mut limits: Limits) -> anyhow::Result<Limits> {
        limits.timeout_ms = self.timeout_ms.unwrap_or(limits.timeout_ms);
        limits.memory_mb = self.memory_mb.unwrap_or(limits.memory_mb);
        limits.validate().map_err(anyhow::Error::msg)?;
        Ok(limits)
    }
}

fn read(path: &PathBuf) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
}

pub fn run(cmd: SandboxCommand, config: &Config) -> anyhow::Result<ExitCode> {
    let mut sandbox_config = config.sandbox.clone();
    match cmd {
        SandboxCommand::Run { file, limits } => {
            let source = read(&file)?;
            let limits = limits.apply(sandbox_config.limits)?;
            let sandbox = Sandbox::new(&sandbox_config)?;
            let run = sandbox.run_program_blocking(&source, limits);
            std::io::stdout().write_all(run.stdout.as_bytes())?;
            std::io::stderr().write_all(run.stderr.as_bytes())?;
            let code = match run.outcome {
                Outcome::Exited(code) => (code & 0xff) as u8,
                Outcome::Timeout => EXIT_TIMEOUT,
                Outcome::MemoryLimit => EXIT_MEMORY,
                Outcome::OutputLimit => EXIT_OUTPUT,
                Outcome::Trap(_) => EXIT_TRAP,
                Outcome::HostError(_) => 2,
            };
            if !matches!(run.outcome, Outcome::Exited(_)) {
                eprintln!("azr: {:?} after {:?}", run.outcome, run.elapsed);
            }
            Ok(ExitCode::from(code))
        }
        SandboxCommand::Eval {
            program,
            input,
            limits,
        } => {
            let source = read(&program)?;
            sandbox_config.limits = limits.apply(sandbox_config.limits)?;
            let sandbox = Sandbox::new(&sandbox_config)?;
            let runtime = tokio::runtime::Builder::new_current_thread().build()?;
            let report = runtime.block_on(sandbox.check(&CheckRequest::new(source, vec![input])));
            match (&report.program, report.calls.first()) {
                (ProgramStatus::Ok { .. }, Some(CallResult::Value { repr, .. })) => {
                    println!("{repr}");
                    Ok(ExitCode::SUCCESS)
                }
                (ProgramStatus::Ok { .. }, Some(call)) => {
                    eprintln!("{}", serde_json::to_string(call)?);
                    Ok(ExitCode::from(1))
                }
                (status, _) => {
                    eprintln!("{}", serde_json::to_string(status)?);
                    Ok(ExitCode::from(1))
                }
            }
        }
    }
}
