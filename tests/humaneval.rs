//! All 164 HumanEval canonical solutions pass their tests through the sandbox, and a wrong
//! solution (`return None`) for each fails: the sandbox neither breaks good code nor passes bad.

use std::io::Read;

use azr::config::SandboxConfig;
use azr::sandbox::{Outcome, Sandbox};

struct Problem {
    task_id: String,
    prompt: String,
    solution: String,
    test: String,
    entry_point: String,
}

fn problems() -> Vec<Problem> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/datasets/humaneval.jsonl.gz");
    let mut text = String::new();
    flate2::read::GzDecoder::new(std::fs::File::open(path).unwrap())
        .read_to_string(&mut text)
        .unwrap();
    text.lines()
        .map(|line| {
            let row: serde_json::Value = serde_json::from_str(line).unwrap();
            let field = |k: &str| row[k].as_str().unwrap().to_string();
            Problem {
                task_id: field("task_id"),
                prompt: field("prompt"),
                solution: field("canonical_solution"),
                test: field("test"),
                entry_point: field("entry_point"),
            }
        })
        .collect()
}

/// The official harness's program: prompt + completion, the test, then `check(entry_point)`.
fn program(p: &Problem, completion: &str) -> String {
    format!(
        "{}{}\n\n{}\n\ncheck({})\n",
        p.prompt, completion, p.test, p.entry_point
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canonical_solutions_pass_and_wrong_ones_fail() {
    let problems = problems();
    assert_eq!(problems.len(), 164);
    let sandbox = Sandbox::new(&SandboxConfig::default()).unwrap();
    let limits = sandbox.config().limits;
    let runs: Vec<_> = problems
        .iter()
        .flat_map(|p| {
            [
                (true, program(p, &p.solution)),
                (false, program(p, "    return None\n")),
            ]
            .map(|(good, source)| {
                let sandbox = sandbox.clone();
                let id = p.task_id.clone();
                tokio::spawn(async move { (id, good, sandbox.run_program(&source, limits).await) })
            })
        })
        .collect();
    let mut failures = Vec::new();
    for run in runs {
        let (id, good, exec) = run.await.unwrap();
        let passed = exec.outcome == Outcome::Exited(0);
        if passed != good {
            failures.push(format!(
                "{id} (canonical: {good}): {:?} {}",
                exec.outcome, exec.stderr
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} wrong verdicts:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
