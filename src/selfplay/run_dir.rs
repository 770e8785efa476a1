//! A run directory: `config.toml` (the resolved config), `buffer.sqlite`, `checkpoints/`,
//! `metrics.jsonl` (one JSON object per step) and `azr.log`.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::PathBuf;

use crate::config::Config;

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
    #[error("run directory {dir} already holds a run{detail}; pass --resume to continue it, or choose another --run")]
    Exists { dir: PathBuf, detail: String },
    #[error("run directory {dir} was started with another config (differences: {diff}); resume with the same --config, or with none to reuse {dir}/config.toml")]
    OtherConfig { dir: PathBuf, diff: String },
    #[error("{0}/config.toml is not a valid config: {1}")]
    BadConfig(PathBuf, String),
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

    /// The config stored by an earlier start, if any.
    pub fn stored_config(&self) -> Result<Option<Config>, RunDirError> {
        match std::fs::read_to_string(self.config()) {
            Ok(text) => Config::from_toml(&text)
                .map(Some)
                .map_err(|e| RunDirError::BadConfig(self.root.clone(), e)),
            Err(_) => Ok(None),
        }
    }

    /// Whether an earlier start left work here.
    pub fn has_progress(&self) -> bool {
        self.buffer().exists() || self.checkpoints().exists()
    }

    /// Prepares the directory for a start (`resume = false`) or a resume, checking that it
    /// belongs to `config`, and stores the config.
    pub fn prepare(&self, config: &Config, resume: bool) -> Result<(), RunDirError> {
        std::fs::create_dir_all(&self.root).map_err(|e| RunDirError::Io(self.root.clone(), e))?;
        if !resume && self.has_progress() {
            return Err(RunDirError::Exists {
                dir: self.root.clone(),
                detail: String::new(),
            });
        }
        if let Some(mut stored) = self.stored_config()? {
            // Where a run computes is not what it learns: it may resume on another device.
            stored.run.device = config.run.device;
            if &stored != config {
                return Err(RunDirError::OtherConfig {
                    dir: self.root.clone(),
                    diff: differences(&stored, config),
                });
            }
        }
        let text = toml::to_string_pretty(config).expect("config serialises");
        std::fs::write(self.config(), text).map_err(|e| RunDirError::Io(self.config(), e))
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
        std::fs::write(&path, body).map_err(|e| RunDirError::Io(path, e))
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
    use crate::model::DeviceSpec;

    #[test]
    fn a_resume_under_another_config_is_refused_but_another_device_is_not() {
        let root = tempfile::tempdir().unwrap();
        let dir = RunDir::new(root.path());
        let config = Config::default();
        dir.prepare(&config, false).unwrap();

        let mut other = config.clone();
        other.selfplay.samples += 1;
        let err = dir.prepare(&other, true).unwrap_err().to_string();
        assert!(err.contains("selfplay.samples: 4 -> 5"), "{err}");

        let mut moved = config.clone();
        moved.run.device = DeviceSpec::Cuda(1);
        dir.prepare(&moved, true).unwrap();
    }
}
