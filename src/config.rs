//! Run configuration: one serde struct per concern, read from a TOML file under `configs/`.
//!
//! Every field has a default, so an empty file is a valid config; unknown keys are an error so
//! that a typo never silently falls back to a default.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::sandbox::Limits;

/// The whole configuration of an `azr` command.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Limits and policy of the Python sandbox.
    pub sandbox: SandboxConfig,
}

/// `[sandbox]`: how model-written code is run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SandboxConfig {
    /// `[sandbox.limits]`: per-execution limits (time, memory, output).
    pub limits: Limits,
    /// Guest threads running executions at once; 0 means one per CPU core.
    pub workers: usize,
    /// Modules a task program may not import (checked on the AST before it runs).
    pub banned_modules: Vec<String>,
}

/// AZR's list: modules that give a program randomness, time, I/O or concurrency.
pub const DEFAULT_BANNED_MODULES: &[&str] = &[
    "logging",
    "random",
    "multiprocessing",
    "subprocess",
    "threading",
    "datetime",
    "time",
    "hashlib",
    "hmac",
    "calendar",
    "os",
    "sys",
    "socket",
    "pebble",
];

impl Default for SandboxConfig {
    fn default() -> Self {
        Self {
            limits: Limits::default(),
            workers: 0,
            banned_modules: DEFAULT_BANNED_MODULES
                .iter()
                .map(|s| s.to_string())
                .collect(),
        }
    }
}

/// A config file that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid: {message}\n(see configs/default.toml for every key and its default)")]
    Parse { path: PathBuf, message: String },
    #[error("config file {path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

impl Config {
    /// Reads and validates a TOML config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml(&text)
            .map_err(|message| ConfigError::Parse {
                path: path.to_owned(),
                message,
            })?
            .validated(path)
    }

    /// Parses TOML text; the error is the parser's message (it names the key and line).
    pub fn from_toml(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    /// Checks values that parse but cannot work.
    fn validated(self, path: &Path) -> Result<Self, ConfigError> {
        let invalid = |message: String| ConfigError::Invalid {
            path: path.to_owned(),
            message,
        };
        self.sandbox.limits.validate().map_err(invalid)?;
        Ok(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_gives_defaults() {
        assert_eq!(Config::from_toml("").unwrap(), Config::default());
    }

    #[test]
    fn unknown_key_is_an_error_naming_it() {
        let err = Config::from_toml("[sandbox]\ntimeout_msec = 5\n").unwrap_err();
        assert!(err.contains("timeout_msec"), "{err}");
    }

    #[test]
    fn shipped_default_config_matches_serde_defaults() {
        let text = include_str!("../configs/default.toml");
        assert_eq!(Config::from_toml(text).unwrap(), Config::default());
    }

    #[test]
    fn zero_timeout_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "[sandbox]\ntimeout_ms = 0\n").unwrap();
        let err = Config::load(&path).unwrap_err().to_string();
        assert!(err.contains("timeout_ms"), "{err}");
    }
}
