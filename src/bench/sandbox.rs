//! `azr bench sandbox`: task checks per second and latency through the sandbox, (a) one input
//! per instance and (b) a batch of 8 inputs per instance, against the same harness and requests
//! run by the host's native `python3` in a fresh subprocess per check.

use std::fmt;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;

use super::percentile;
use crate::config::SandboxConfig;
use crate::sandbox::{CheckRequest, ProgramStatus, Sandbox, HARNESS};

/// Options of the sandbox benchmark.
#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    /// Checks (program, input pairs) per sandbox workload.
    #[arg(long, default_value_t = 800)]
    pub checks: usize,
    /// Checks run by the native-subprocess reference (slow: about 30/s).
    #[arg(long, default_value_t = 120)]
    pub native_checks: usize,
    /// Guest threads (and concurrent native subprocesses).
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
}

/// Programs in the style of AZR tasks, each with inputs.
const PROGRAMS: &[(&str, &[&str])] = &[
    (
        "def f(s):\n    return ''.join(sorted(set(s), key=s.index))[::-1]",
        &["'hello world'", "'abracadabra'", "'mississippi'", "''"],
    ),
    (
        "def f(xs):\n    out = []\n    for i, x in enumerate(xs):\n        if x % 2 == i % 2:\n            out.append(x * i)\n    return out",
        &["[1, 2, 3, 4, 5]", "[0, 0, 7, 9]", "[3, 1, 4, 1, 5, 9, 2, 6, 5, 3]", "[]"],
    ),
    (
        "def f(d, k):\n    counts = {}\n    for w in d.split():\n        counts[w[:k]] = counts.get(w[:k], 0) + 1\n    return sorted(counts.items())",
        &["'the cat the dog then', 2", "'a b c a', 1", "'', 3", "'xyz xy x', 5"],
    ),
    (
        "def f(n):\n    def fib(k):\n        return k if k < 2 else fib(k - 1) + fib(k - 2)\n    return [fib(i) for i in range(n)]",
        &["10", "15", "1", "0"],
    ),
];

fn workload(checks: usize, batch: usize) -> Vec<CheckRequest> {
    (0..checks.div_ceil(batch))
        .map(|i| {
            let (program, inputs) = PROGRAMS[i % PROGRAMS.len()];
            let inputs = (0..batch)
                .map(|j| inputs[(i + j) % inputs.len()].to_string())
                .collect();
            CheckRequest::new(program, inputs)
        })
        .collect()
}

/// Throughput and latency of one workload.
#[derive(Debug, Clone)]
pub struct Measurement {
    pub name: String,
    pub checks: usize,
    pub wall: Duration,
    /// Latency of one request (one instance or subprocess), sorted, in ms.
    pub latencies_ms: Vec<f64>,
}

impl Measurement {
    pub fn checks_per_sec(&self) -> f64 {
        self.checks as f64 / self.wall.as_secs_f64()
    }
}

/// The benchmark's result, printed as a Markdown table.
#[derive(Debug, Clone)]
pub struct Report {
    pub threads: usize,
    pub rows: Vec<Measurement>,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let reference = self
            .rows
            .last()
            .map_or(f64::NAN, Measurement::checks_per_sec);
        writeln!(f, "threads: {}", self.threads)?;
        writeln!(
            f,
            "| workload | checks | checks/s | p50 ms | p99 ms | vs native |"
        )?;
        writeln!(f, "| --- | ---: | ---: | ---: | ---: | ---: |")?;
        for row in &self.rows {
            writeln!(
                f,
                "| {} | {} | {:.0} | {:.1} | {:.1} | {:.1}x |",
                row.name,
                row.checks,
                row.checks_per_sec(),
                percentile(&row.latencies_ms, 50.0),
                percentile(&row.latencies_ms, 99.0),
                row.checks_per_sec() / reference
            )?;
        }
        Ok(())
    }
}

/// Runs the three workloads and returns the report.
pub fn run(opts: &Options, config: &SandboxConfig) -> anyhow::Result<Report> {
    let config = SandboxConfig {
        workers: opts.threads,
        ..config.clone()
    };
    let sandbox = Sandbox::new(&config)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(opts.threads)
        .enable_all()
        .build()?;
    // Warm-up: page in the compiled interpreter.
    runtime.block_on(measure_sandbox(&sandbox, "warm-up", workload(8, 1)))?;
    let rows = vec![
        runtime.block_on(measure_floor(&sandbox, opts.checks))?,
        runtime.block_on(measure_sandbox(
            &sandbox,
            "sandbox, 1 input per instance",
            workload(opts.checks, 1),
        ))?,
        runtime.block_on(measure_sandbox(
            &sandbox,
            "sandbox, 8 inputs per instance",
            workload(opts.checks, 8),
        ))?,
        measure_native(workload(opts.native_checks, 1), opts.threads)?,
    ];
    Ok(Report {
        threads: opts.threads,
        rows,
    })
}

async fn measure_sandbox(
    sandbox: &Sandbox,
    name: &str,
    requests: Vec<CheckRequest>,
) -> anyhow::Result<Measurement> {
    let started = Instant::now();
    let tasks: Vec<_> = requests
        .into_iter()
        .map(|req| {
            let sandbox = sandbox.clone();
            tokio::spawn(async move {
                let report = sandbox.check(&req).await;
                (report, req.inputs.len())
            })
        })
        .collect();
    let mut latencies_ms = Vec::with_capacity(tasks.len());
    let mut checks = 0;
    for task in tasks {
        let (report, n) = task.await?;
        anyhow::ensure!(
            matches!(report.program, ProgramStatus::Ok { .. })
                && report.calls.iter().all(|c| c.repr().is_some()),
            "benchmark check failed: {report:?}"
        );
        latencies_ms.push(report.elapsed.as_secs_f64() * 1e3);
        checks += n;
    }
    Ok(finish(name, checks, started.elapsed(), latencies_ms))
}

/// The floor: an empty program per instance, no harness.
async fn measure_floor(sandbox: &Sandbox, runs: usize) -> anyhow::Result<Measurement> {
    let started = Instant::now();
    let limits = sandbox.config().limits;
    let tasks: Vec<_> = (0..runs)
        .map(|_| {
            let sandbox = sandbox.clone();
            tokio::spawn(async move { sandbox.run_program("pass", limits).await })
        })
        .collect();
    let mut latencies_ms = Vec::with_capacity(runs);
    for task in tasks {
        let run = task.await?;
        anyhow::ensure!(run.outcome.is_success(), "empty program failed: {run:?}");
        latencies_ms.push(run.elapsed.as_secs_f64() * 1e3);
    }
    Ok(finish(
        "sandbox, empty program per instance (floor)",
        runs,
        started.elapsed(),
        latencies_ms,
    ))
}

fn finish(name: &str, checks: usize, wall: Duration, mut latencies_ms: Vec<f64>) -> Measurement {
    latencies_ms.sort_by(f64::total_cmp);
    Measurement {
        name: name.to_string(),
        checks,
        wall,
        latencies_ms,
    }
}

/// The reference: `python3 -c HARNESS` per check, `threads` at a time.
fn measure_native(requests: Vec<CheckRequest>, threads: usize) -> anyhow::Result<Measurement> {
    let banned = SandboxConfig::default().banned_modules;
    let started = Instant::now();
    let chunks: Vec<Vec<CheckRequest>> = (0..threads)
        .map(|t| requests.iter().skip(t).step_by(threads).cloned().collect())
        .collect();
    let results = std::thread::scope(|scope| {
        let handles: Vec<_> = chunks
            .iter()
            .map(|chunk| {
                scope.spawn(|| {
                    chunk
                        .iter()
                        .map(|r| native_check(r, &banned))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("native bench thread panicked"))
            .collect::<anyhow::Result<Vec<f64>>>()
    })?;
    Ok(finish(
        "native python3, fresh subprocess per check",
        results.len(),
        started.elapsed(),
        results,
    ))
}

fn native_check(req: &CheckRequest, banned: &[String]) -> anyhow::Result<f64> {
    let request = serde_json::json!({
        "op": "call", "nonce": "n", "program": req.program, "entry": req.entry,
        "inputs": req.inputs, "banned": banned,
    });
    let started = Instant::now();
    let mut child = Command::new("python3")
        .args(["-I", "-c", HARNESS])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("starting python3 for the native reference")?;
    child
        .stdin
        .take()
        .context("python3 stdin")?
        .write_all(request.to_string().as_bytes())?;
    let output = child.wait_with_output()?;
    anyhow::ensure!(
        output.status.success() && String::from_utf8_lossy(&output.stdout).contains("\"value\""),
        "native python3 check failed"
    );
    Ok(started.elapsed().as_secs_f64() * 1e3)
}
