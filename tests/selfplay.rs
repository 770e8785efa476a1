//! `azr selfplay` end to end on the real SmolLM2-135M and the real sandbox (configs/smoke.toml):
//! a short run, its artefacts, resuming it, and killing it mid-step. The two tests take turns:
//! each run holds several GB while it updates the model.

use std::path::Path;
use std::process::{Command, Output};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use azr::buffer::Buffer;

static ONE_RUN_AT_A_TIME: Mutex<()> = Mutex::new(());

fn smoke() -> String {
    concat!(env!("CARGO_MANIFEST_DIR"), "/configs/smoke.toml").to_string()
}

/// The smoke config with every rollout trained: a (negligible) entropy bonus needs every
/// token, so the update runs forward and backward on the real model even when, as usual with
/// SmolLM2, every advantage is 0.
fn smoke_training_everything(dir: &Path) -> String {
    let text = std::fs::read_to_string(smoke()).unwrap();
    assert!(
        text.contains("\n[rl]\n"),
        "configs/smoke.toml has an [rl] table"
    );
    let path = dir.join("smoke-train-all.toml");
    std::fs::write(
        &path,
        text.replace("\n[rl]\n", "\n[rl]\nentropy_coef = 1e-12\n"),
    )
    .unwrap();
    path.to_str().unwrap().to_string()
}

/// `azr selfplay` on `config` for `steps` steps in `run`.
fn command(config: &str, run: &Path, steps: u64) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_azr"));
    cmd.args([
        "selfplay",
        "--config",
        config,
        "--run",
        run.to_str().unwrap(),
    ])
    .args(["--steps", &steps.to_string()]);
    cmd
}

fn selfplay(config: &str, run: &Path, steps: u64, extra: &[&str]) -> Output {
    command(config, run, steps)
        .args(extra)
        .output()
        .expect("running azr selfplay")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn metrics(run: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn checkpoint_steps(run: &Path) -> Vec<u64> {
    azr::rl::checkpoint::list(&run.join("checkpoints"))
        .iter()
        .map(|(s, _)| *s)
        .collect()
}

/// Waits until the run in `child` has written its first checkpoint (it is then into step 2).
fn wait_for_a_checkpoint(run: &Path, child: &mut std::process::Child) {
    let started = Instant::now();
    while checkpoint_steps(run).is_empty() {
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "no checkpoint after 10 minutes"
        );
        assert!(child.try_wait().unwrap().is_none(), "selfplay exited early");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn two_steps_then_resume_to_the_third() {
    let _turn = ONE_RUN_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let out = selfplay(&smoke(), &run, 2, &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("step     2 |"), "{}", text(&out));

    let lines = metrics(&run);
    assert_eq!(lines.len(), 2);
    for key in [
        "step",
        "seconds",
        "generate_seconds",
        "sandbox_seconds",
        "update_seconds",
        "tokens_generated",
        "buffer_size",
        "deduction",
        "abduction",
        "induction",
        "update",
        "rollout_peak_rss_mb",
        "update_peak_rss_mb",
        // smoke.toml saves every step, and the metrics say what it cost.
        "checkpoint_seconds",
    ] {
        assert!(
            lines[1].get(key).is_some(),
            "metrics lack {key}: {}",
            lines[1]
        );
    }
    for key in [
        "loss",
        "grad_norm",
        "entropy",
        "clip_frac_low",
        "approx_kl",
        "peak_rss_mb",
        "groups",
        "trained_tokens",
        "trained_positions",
    ] {
        assert!(
            lines[1]["update"].get(key).is_some(),
            "update metrics lack {key}"
        );
    }
    // The phases' peaks are each at most the process's, and the larger of them is it, up to
    // what the save between steps added.
    let (rollouts, updating, process) = (
        lines[1]["rollout_peak_rss_mb"].as_f64().unwrap(),
        lines[1]["update_peak_rss_mb"].as_f64().unwrap(),
        lines[1]["update"]["peak_rss_mb"].as_f64().unwrap(),
    );
    assert!(
        rollouts > 0.0 && updating > 0.0 && rollouts.max(updating) <= process + 1.0,
        "phase peaks {rollouts} and {updating} MiB against the process's {process}"
    );

    // Every proposal either became a task or left its reason in the buffer.
    let buffer = Buffer::open_existing(&run.join("buffer.sqlite")).unwrap();
    let stats = buffer.stats().unwrap();
    let proposed: u64 = lines
        .iter()
        .flat_map(|l| {
            ["deduction", "abduction", "induction"].map(|t| l[t]["proposals"].as_u64().unwrap())
        })
        .sum();
    let valid: u64 = lines
        .iter()
        .flat_map(|l| {
            ["deduction", "abduction", "induction"]
                .map(|t| l[t]["valid_proposals"].as_u64().unwrap())
        })
        .sum();
    let rejected: usize = stats.rejections.iter().map(|(_, n)| n).sum();
    let tasks: usize = stats.types.iter().map(|t| t.tasks).sum();
    assert_eq!(proposed, 6);
    assert_eq!(valid as usize + rejected, 6, "{stats:?}");
    assert_eq!(tasks, 3 + valid as usize);
    let stored: Vec<i64> = buffer.metrics().unwrap().iter().map(|(s, _)| *s).collect();
    assert_eq!(stored, [1, 2], "metrics are in the database too");
    drop(buffer);

    // The checkpoint is a model folder azr loads.
    assert_eq!(checkpoint_steps(&run), [1, 2]);
    let latest = azr::rl::checkpoint::latest(&run.join("checkpoints")).unwrap();
    for file in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "optimizer.safetensors",
        "state.json",
    ] {
        assert!(latest.join(file).is_file(), "{file} missing");
    }
    azr::model::Model::load(&latest, &candle_core::Device::Cpu, candle_core::DType::F32).unwrap();

    // The run's curves as PNGs.
    let report = Command::new(env!("CARGO_BIN_EXE_azr"))
        .args(["report", "--run", run.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(report.status.success(), "{}", text(&report));
    for chart in [
        "solver_accuracy.png",
        "valid_proposals.png",
        "learnability.png",
        "rewards.png",
        "buffer.png",
        "response_length.png",
        "throughput.png",
        "update.png",
    ] {
        assert!(run.join("report").join(chart).is_file(), "{chart} missing");
    }

    // Without --resume the directory is refused; with it the run goes on to step 3.
    let again = selfplay(&smoke(), &run, 3, &[]);
    assert_eq!(again.status.code(), Some(2));
    assert!(text(&again).contains("--resume"), "{}", text(&again));
    let out = selfplay(&smoke(), &run, 3, &["--resume"]);
    assert!(out.status.success(), "{}", text(&out));
    let steps: Vec<u64> = metrics(&run)
        .iter()
        .map(|l| l["step"].as_u64().unwrap())
        .collect();
    assert_eq!(steps, [1, 2, 3]);
    assert_eq!(checkpoint_steps(&run), [2, 3]);
}

/// The cold start proposes with the real model and sandbox until its budget; SmolLM2 at 64
/// tokens cannot write a whole task, so it ends with an error that says what to change, with
/// every attempt recorded and no step run.
#[test]
fn a_cold_start_that_cannot_fill_the_buffer_stops_with_a_clear_error() {
    let _turn = ONE_RUN_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("cold.toml");
    let text_of = std::fs::read_to_string(smoke()).unwrap();
    std::fs::write(
        &config,
        text_of.replace(
            "seed_tasks = { deduction = 0, abduction = 0, induction = 0 }",
            "seed_tasks = { deduction = 2, abduction = 2, induction = 2 }\nseed_attempts = 3",
        ),
    )
    .unwrap();
    let run = dir.path().join("run");
    let out = selfplay(config.to_str().unwrap(), &run, 1, &[]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let said = text(&out);
    assert!(
        said.contains("cold start") && said.contains("seed_attempts = 3"),
        "{said}"
    );
    assert!(metrics(&run).is_empty(), "no step may run");
    let buffer = Buffer::open_existing(&run.join("buffer.sqlite")).unwrap();
    let stats = buffer.stats().unwrap();
    let rejected: usize = stats.rejections.iter().map(|(_, n)| n).sum();
    let tasks: usize = stats.types.iter().map(|t| t.tasks).sum();
    // 3 attempts per type; identity seeds plus whatever was valid make up the rest.
    assert_eq!(rejected + (tasks - 3), 9, "{stats:?}");
}

#[test]
fn killed_mid_step_resumes_from_the_last_checkpoint() {
    let _turn = ONE_RUN_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let config = smoke_training_everything(dir.path());
    let mut child = command(&config, &run, 4)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_for_a_checkpoint(&run, &mut child);
    // Step 2 is under way: kill without warning.
    std::thread::sleep(Duration::from_secs(5));
    child.kill().unwrap();
    child.wait().unwrap();
    let done = *checkpoint_steps(&run).last().unwrap();

    let out = selfplay(&config, &run, done + 1, &["--resume"]);
    assert!(out.status.success(), "{}", text(&out));
    let steps: Vec<u64> = metrics(&run)
        .iter()
        .map(|l| l["step"].as_u64().unwrap())
        .collect();
    assert_eq!(steps, (1..=done + 1).collect::<Vec<_>>());
    // Every step trained the real model on all its rollouts.
    for line in metrics(&run) {
        let update = &line["update"];
        assert_eq!(update["trained_tokens"], update["tokens"], "{update}");
        assert!(update["tokens"].as_u64().unwrap() > 0 && update["entropy"].is_f64());
        assert!(update["grad_norm"].as_f64().unwrap() > 0.0, "{update}");
    }
    // No buffer row survives from the killed step beyond what the resumed step wrote.
    let buffer = Buffer::open_existing(&run.join("buffer.sqlite")).unwrap();
    assert!(buffer
        .tasks(None)
        .unwrap()
        .iter()
        .all(|t| t.step as u64 <= done + 1));
    let state: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            azr::rl::checkpoint::latest(&run.join("checkpoints"))
                .unwrap()
                .join("state.json"),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(state["step"], done + 1);
}

/// Issue 19: SIGTERM killed the run and lost the step in progress; it now saves and stops as
/// Ctrl-C does.
#[test]
fn sigterm_saves_the_step_in_progress_and_stops() {
    let _turn = ONE_RUN_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let mut child = command(&smoke(), &run, 4)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_a_checkpoint(&run, &mut child);
    // Step 2 is under way.
    // SAFETY: kill only sends a signal to our child.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("stopped: steps 1..="), "{}", text(&out));
    let steps: Vec<u64> = metrics(&run)
        .iter()
        .map(|l| l["step"].as_u64().unwrap())
        .collect();
    assert!(!steps.is_empty() && steps.len() < 4, "{steps:?}");
    assert_eq!(
        checkpoint_steps(&run).last(),
        steps.last(),
        "the last step is saved"
    );
}
