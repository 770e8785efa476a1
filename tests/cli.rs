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
        vec!["buffer", "stats", "--help"],
        vec!["buffer", "list", "--help"],
        vec!["buffer", "show", "--help"],
        vec!["buffer", "export", "--help"],
        vec!["buffer", "seed", "--help"],
        vec!["model", "import", "--help"],
        vec!["model", "info", "--help"],
        vec!["generate", "--help"],
        vec!["selfplay", "--help"],
        vec!["report", "--help"],
    ] {
        let out = azr(&args);
        assert!(out.status.success(), "{args:?}: {}", text(&out));
        assert!(text(&out).contains("Usage:"), "{args:?}");
    }
    let top = text(&azr(&["--help"]));
    for command in [
        "selfplay", "report", "setup", "sandbox", "buffer", "model", "generate", "bench",
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
