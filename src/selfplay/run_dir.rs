//! A run directory: `config.toml` (the resolved config), `buffer.sqlite`, `checkpoints/`,
//! `metrics.jsonl` (one JSON object per step), `azr.log` and `azr.lock` (its one writer).

use std::fs::OpenOptions;
use std::io::Write;
use std::path::PathBuf;

use super::run_lock::{LockError, RunLock};
use crate::config::Config;
use crate::durable;
use crate::model::DeviceSpec;
use crate::rl::checkpoint;

/// Paths of a run.
#[derive(Debug, Clone)]
pub struct RunDir {
    pub root: PathBuf,
}

/// A run directory that cannot be used as asked.
#[derive(Debug, thiserror::Error)]
pub enum RunDirError {
    #[error("{0}: {1}")]
    Io(PathBuf, std::io::Error),
    #[error(transparent)]
    Locked(#[from] LockError),
    #[error("run directory {dir} already holds a run{detail}; pass --resume to continue it, or choose another --run")]
    Exists { dir: PathBuf, detail: String },
    #[error("there is no run directory {0} to resume; drop --resume to start a new run there")]
    Missing(PathBuf),
    #[error("run directory {0} holds no checkpoint and no config.toml (or an empty one), so nothing says which config its run was started with; resume with that --config, or start a new run in another directory")]
    NoConfig(PathBuf),
    #[error("run directory {dir} was started with another config (differences: {diff}); resume with the same --config, or with none to reuse the run's own")]
    OtherConfig { dir: PathBuf, diff: String },
    #[error("{0}/config.toml is not a valid config: {1}")]
    BadConfig(PathBuf, String),
    #[error("the config of run {0} cannot run: {1}")]
    Invalid(PathBuf, String),
}

impl RunDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn config(&self) -> PathBuf {
        self.root.join("config.toml")
    }
    pub fn buffer(&self) -> PathBuf {
        self.root.join("buffer.sqlite")
    }
    pub fn checkpoints(&self) -> PathBuf {
        self.root.join("checkpoints")
    }
    pub fn metrics(&self) -> PathBuf {
        self.root.join("metrics.jsonl")
    }
    pub fn log(&self) -> PathBuf {
        self.root.join("azr.log")
    }

    /// Takes the directory for this process, refused while another holds it. A new run
    /// creates the directory; a resume needs it.
    pub fn lock(&self, resume: bool) -> Result<RunLock, RunDirError> {
        if resume && !self.root.is_dir() {
            return Err(RunDirError::Missing(self.root.clone()));
        }
        std::fs::create_dir_all(&self.root).map_err(|e| RunDirError::Io(self.root.clone(), e))?;
        Ok(RunLock::acquire(&self.root)?)
    }

    /// The config in `config.toml`, if any (an empty file, which only damage leaves since it
    /// is written atomically, counts as none).
    pub fn stored_config(&self) -> Result<Option<Config>, RunDirError> {
        match std::fs::read_to_string(self.config()) {
            Ok(text) if text.trim().is_empty() => Ok(None),
            Ok(text) => Config::from_toml(&text)
                .map(Some)
                .map_err(|e| RunDirError::BadConfig(self.root.clone(), e)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(RunDirError::Io(self.config(), e)),
        }
    }

    /// The config the run was started with: the newest checkpoint's (each stores its run's),
    /// else `config.toml`'s.
    fn started_config(&self) -> Result<Option<Config>, RunDirError> {
        let newest = checkpoint::list(&self.checkpoints())
            .into_iter()
            .rev()
            .find_map(|(_, dir)| {
                serde_json::from_value(checkpoint::read_state(&dir).ok()?.config).ok()
            });
        match newest {
            Some(config) => Ok(Some(config)),
            None => self.stored_config(),
        }
    }

    /// Whether an earlier start left work here.
    pub fn has_progress(&self) -> bool {
        self.buffer().exists() || self.checkpoints().exists()
    }

    /// Prepares the directory for a start (`resume = false`) or a resume, stores the run's
    /// config in `config.toml` and returns it. A start takes `given` (--config) or the
    /// defaults; a resume takes the config the run was started with, which `given` must match.
    /// `device` (--device) applies on top: where a run computes is not what it learns.
    pub fn prepare(
        &self,
        given: Option<&Config>,
        device: Option<DeviceSpec>,
        resume: bool,
    ) -> Result<Config, RunDirError> {
        if !resume && self.has_progress() {
            return Err(RunDirError::Exists {
                dir: self.root.clone(),
                detail: String::new(),
            });
        }
        let (stored, chosen) = match resume {
            true => (self.started_config()?, given.cloned()),
            false => (
                self.stored_config()?,
                Some(given.cloned().unwrap_or_default()),
            ),
        };
        let mut config = match (stored, chosen) {
            (Some(mut stored), Some(chosen)) => {
                stored.run.device = chosen.run.device;
                if stored != chosen {
                    return Err(RunDirError::OtherConfig {
                        dir: self.root.clone(),
                        diff: differences(&stored, &chosen),
                    });
                }
                chosen
            }
            (Some(config), None) | (None, Some(config)) => config,
            (None, None) => return Err(RunDirError::NoConfig(self.root.clone())),
        };
        if let Some(device) = device {
            config.run.device = device;
        }
        // Before it is stored: a stored config binds the directory.
        config
            .validate()
            .map_err(|e| RunDirError::Invalid(self.root.clone(), e))?;
        let text = toml::to_string_pretty(&config).expect("config serialises");
        durable::write(&self.config(), text.as_bytes())
            .map_err(|e| RunDirError::Io(self.config(), e))?;
        Ok(config)
    }

    /// Appends one line to `metrics.jsonl`.
    pub fn append_metrics(&self, line: &serde_json::Value) -> Result<(), RunDirError> {
        let path = self.metrics();
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| RunDirError::Io(path.clone(), e))?;
        writeln!(file, "{line}").map_err(|e| RunDirError::Io(path, e))
    }

    /// Drops metric lines of steps after `step` (work a resume redoes).
    pub fn truncate_metrics(&self, step: u64) -> Result<(), RunDirError> {
        let path = self.metrics();
        let Ok(text) = std::fs::read_to_string(&path) else {
            return Ok(());
        };
        let kept: Vec<&str> = text
            .lines()
            .filter(|l| {
                serde_json::from_str::<serde_json::Value>(l)
                    .ok()
                    .and_then(|v| v["step"].as_u64())
                    .is_some_and(|s| s <= step)
            })
            .collect();
        let body = kept.iter().map(|l| format!("{l}\n")).collect::<String>();
        durable::write(&path, body.as_bytes()).map_err(|e| RunDirError::Io(path, e))
    }
}

/// Dotted keys whose values differ between two configs.
fn differences(a: &Config, b: &Config) -> String {
    fn walk(prefix: &str, a: &toml::Value, b: &toml::Value, out: &mut Vec<String>) {
        match (a, b) {
            (toml::Value::Table(x), toml::Value::Table(y)) => {
                let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
                for k in keys {
                    let key = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    match (x.get(k), y.get(k)) {
                        (Some(va), Some(vb)) => walk(&key, va, vb, out),
                        _ => out.push(key),
                    }
                }
            }
            _ if a != b => out.push(format!("{prefix}: {a} -> {b}")),
            _ => {}
        }
    }
    let to_value = |c: &Config| toml::Value::try_from(c).expect("config serialises");
    let mut out = Vec::new();
    walk("", &to_value(a), &to_value(b), &mut out);
    out.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn a_resume_under_another_config_is_refused_but_another_device_is_not() {
        let root = tempfile::tempdir().unwrap();
        let dir = RunDir::new(root.path());
        let config = Config::default();
        dir.prepare(Some(&config), None, false).unwrap();

        let mut other = config.clone();
        other.selfplay.samples += 1;
        let err = dir.prepare(Some(&other), None, true).unwrap_err();
        assert!(
            err.to_string().contains("selfplay.samples: 4 -> 5"),
            "{err}"
        );

        let mut moved = config.clone();
        moved.run.device = DeviceSpec::Cuda(1);
        dir.prepare(Some(&moved), None, true).unwrap();
        let resumed = dir.prepare(None, Some(DeviceSpec::Cuda(2)), true).unwrap();
        assert_eq!(resumed.run.device, DeviceSpec::Cuda(2));
    }

    /// Issue 19: an empty config.toml resumed the run under the default config.
    #[test]
    fn a_resume_takes_the_config_its_checkpoint_stores() {
        let root = tempfile::tempdir().unwrap();
        let dir = RunDir::new(root.path());
        let mut config = Config::default();
        config.run.model = "smollm2-135m-instruct".into();
        dir.prepare(Some(&config), None, false).unwrap();
        std::fs::write(dir.config(), "").unwrap();
        let err = dir.prepare(None, None, true).unwrap_err();
        assert!(matches!(err, RunDirError::NoConfig(_)), "{err}");

        let state = checkpoint::TrainState {
            step: 2,
            optimizer_step: 2,
            seed: 0,
            config: serde_json::to_value(&config).unwrap(),
        };
        let step = dir.checkpoints().join("step-00000002");
        std::fs::create_dir_all(&step).unwrap();
        std::fs::write(
            step.join("state.json"),
            serde_json::to_string(&state).unwrap(),
        )
        .unwrap();
        assert_eq!(dir.prepare(None, None, true).unwrap(), config);
        assert_eq!(
            dir.stored_config().unwrap(),
            Some(config),
            "config.toml repaired"
        );
    }

    #[test]
    fn resuming_a_directory_that_does_not_exist_is_refused() {
        let root = tempfile::tempdir().unwrap();
        let dir = RunDir::new(root.path().join("typo"));
        let err = dir.lock(true).unwrap_err().to_string();
        assert!(err.contains("drop --resume"), "{err}");
        assert!(!dir.root.exists());
        let _lock = dir.lock(false).unwrap();
        assert!(dir.root.is_dir());
    }

    /// Issue 19: config.toml was truncated and rewritten in place, so a crash could leave it
    /// empty. A rename gives the new file a new inode and never truncates the old one.
    #[test]
    fn config_toml_is_replaced_by_a_rename_never_rewritten_in_place() {
        let root = tempfile::tempdir().unwrap();
        let dir = RunDir::new(root.path());
        dir.prepare(None, None, false).unwrap();
        let before = std::fs::metadata(dir.config()).unwrap().ino();
        dir.prepare(None, None, false).unwrap();
        assert_ne!(std::fs::metadata(dir.config()).unwrap().ino(), before);
    }
}
