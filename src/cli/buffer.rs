//! `azr buffer ...`: look at the tasks a run's model proposed.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Subcommand, ValueEnum};
use serde_json::json;

use azr::buffer::{seed, Buffer, StoredTask};
use azr::config::Config;
use azr::sandbox::Sandbox;
use azr::tasks::TaskType;

#[derive(Debug, Subcommand)]
pub enum BufferCommand {
    /// Counts per type, solve-rate histogram, growth per step, program length and diversity,
    /// and why proposals were rejected.
    Stats {
        #[command(flatten)]
        run: RunArg,
        /// Print JSON instead of tables.
        #[arg(long)]
        json: bool,
    },
    /// One line per task.
    List {
        #[command(flatten)]
        run: RunArg,
        /// Only tasks of this type (deduction, abduction, induction).
        #[arg(long = "type", value_name = "TYPE")]
        task_type: Option<TaskType>,
        /// At most this many lines.
        #[arg(long, default_value_t = 20)]
        limit: usize,
        /// Order of the lines.
        #[arg(long, value_enum, default_value_t = Sort::Id)]
        sort: Sort,
    },
    /// One task in full, with its solve history and lineage.
    Show {
        #[command(flatten)]
        run: RunArg,
        /// The task's id (from `azr buffer list`).
        id: i64,
    },
    /// Every task, one JSON object a line (ready for a Hugging Face dataset).
    Export {
        #[command(flatten)]
        run: RunArg,
        #[arg(long, value_enum, default_value_t = Format::Jsonl)]
        format: Format,
        /// Write here instead of stdout.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// Create the run's buffer if needed and add AZR's seed tasks (the identity program).
    Seed {
        #[command(flatten)]
        run: RunArg,
    },
}

#[derive(Debug, clap::Args)]
pub struct RunArg {
    /// The run directory (holds buffer.sqlite).
    #[arg(long, value_name = "DIR")]
    run: PathBuf,
}

impl RunArg {
    fn database(&self) -> PathBuf {
        self.run.join("buffer.sqlite")
    }

    fn open(&self) -> anyhow::Result<Buffer> {
        Ok(Buffer::open_existing(&self.database())?)
    }
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Sort {
    /// Oldest first.
    Id,
    /// Newest step first.
    Step,
    /// Hardest first (lowest solve rate; unattempted last).
    SolveRate,
    /// Longest program first.
    Length,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Format {
    Jsonl,
}

pub fn run(cmd: BufferCommand, config: &Config) -> anyhow::Result<ExitCode> {
    match cmd {
        BufferCommand::Stats { run, json } => {
            let stats = run.open()?.stats()?;
            match json {
                true => println!("{}", serde_json::to_string_pretty(&stats)?),
                false => print!("{stats}"),
            }
        }
        BufferCommand::List {
            run,
            task_type,
            limit,
            sort,
        } => list(&run.open()?, task_type, limit, sort)?,
        BufferCommand::Show { run, id } => show(&run.open()?, id)?,
        BufferCommand::Export { run, out, .. } => export(&run.open()?, out.as_deref())?,
        BufferCommand::Seed { run } => {
            let buffer = Buffer::open(&run.database())?;
            let sandbox = Sandbox::new(&config.sandbox)?;
            let runtime = tokio::runtime::Builder::new_current_thread().build()?;
            let added = runtime.block_on(seed::seed(&buffer, &sandbox))?;
            println!("added {added} seed task(s) to {}", buffer.path().display());
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn first_line(text: &str, width: usize) -> String {
    let line = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
    match line.char_indices().nth(width) {
        Some((cut, _)) => format!("{}…", &line[..cut]),
        None => line.to_string(),
    }
}

fn rate_text(task: &StoredTask) -> String {
    task.solve_rate().map_or("-".into(), |r| {
        format!("{r:.2} ({}/{})", task.successes, task.samples)
    })
}

fn list(
    buffer: &Buffer,
    task_type: Option<TaskType>,
    limit: usize,
    sort: Sort,
) -> anyhow::Result<()> {
    let mut tasks = buffer.tasks(task_type)?;
    match sort {
        Sort::Id => {}
        Sort::Step => tasks.sort_by_key(|t| std::cmp::Reverse(t.step)),
        Sort::SolveRate => tasks.sort_by(|a, b| {
            let key = |t: &StoredTask| t.solve_rate().unwrap_or(f64::INFINITY);
            key(a).total_cmp(&key(b))
        }),
        Sort::Length => tasks.sort_by_key(|t| std::cmp::Reverse(t.task.program.len())),
    }
    println!(
        "{:>6} {:<10} {:>5} {:<8} {:<14} program",
        "id", "type", "step", "origin", "solve rate"
    );
    for t in tasks.iter().take(limit) {
        let origin = serde_json::to_value(t.origin)?;
        println!(
            "{:>6} {:<10} {:>5} {:<8} {:<14} {}",
            t.id,
            t.task.task_type.as_str(),
            t.step,
            origin.as_str().unwrap_or(""),
            rate_text(t),
            first_line(&t.task.program, 60)
        );
    }
    if tasks.len() > limit {
        println!("({} more; raise --limit)", tasks.len() - limit);
    }
    Ok(())
}

fn show(buffer: &Buffer, id: i64) -> anyhow::Result<()> {
    let lineage = buffer.lineage(id)?;
    let task = lineage.first().with_context(|| {
        format!(
            "no task {id} in {}; `azr buffer list` shows the ids",
            buffer.path().display()
        )
    })?;
    println!(
        "task {} ({}), step {}, {:?}",
        task.id, task.task.task_type, task.step, task.origin
    );
    println!("\n```python\n{}\n```", task.task.program);
    if let Some(message) = &task.task.message {
        println!("\nmessage: {message}");
    }
    for (i, e) in task.task.examples.iter().enumerate() {
        let hidden = if i >= task.task.shown {
            " (hidden)"
        } else {
            ""
        };
        println!("\nf({}) == {}{hidden}", e.input, e.output);
    }
    println!("\nsolve rate: {}", rate_text(task));
    for a in buffer.attempts(id)? {
        println!("  step {:>5}: {}/{}", a.step, a.successes, a.samples);
    }
    if lineage.len() > 1 {
        println!("\nlineage:");
        for ancestor in &lineage[1..] {
            println!(
                "  {} ({}, step {}): {}",
                ancestor.id,
                ancestor.task.task_type,
                ancestor.step,
                first_line(&ancestor.task.program, 60)
            );
        }
    }
    Ok(())
}

fn export(buffer: &Buffer, out: Option<&Path>) -> anyhow::Result<()> {
    let mut writer: Box<dyn Write> = match out {
        Some(path) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(path)
                .with_context(|| format!("cannot create {}", path.display()))?,
        )),
        None => Box::new(std::io::stdout().lock()),
    };
    for t in buffer.tasks(None)? {
        let row = json!({
            "id": t.id,
            "task_type": t.task.task_type,
            "program": t.task.program,
            "inputs": t.task.examples.iter().map(|e| &e.input).collect::<Vec<_>>(),
            "outputs": t.task.examples.iter().map(|e| &e.output).collect::<Vec<_>>(),
            "shown": t.task.shown,
            "message": t.task.message,
            "step": t.step,
            "origin": t.origin,
            "parents": t.parents,
            "solve_rate": t.solve_rate(),
            "samples": t.samples,
        });
        writeln!(writer, "{row}")?;
    }
    writer.flush()?;
    Ok(())
}
