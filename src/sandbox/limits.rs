//! Per-execution resource limits.

use serde::{Deserialize, Serialize};

/// What one execution of guest code may use. Every execution gets all four.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Wall-clock limit of one interpreter run, in milliseconds (enforced by epoch interruption).
    pub timeout_ms: u64,
    /// Linear-memory limit of the guest, in MiB; growth past it fails inside Python as a
    /// `MemoryError`. The interpreter itself starts at about 60 MiB.
    pub memory_mb: u64,
    /// Bytes of stdout a run may write; writing more ends it as an output flood.
    pub stdout_bytes: usize,
    /// Bytes of stderr a run may write; writing more ends it as an output flood.
    pub stderr_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            timeout_ms: 5_000,
            memory_mb: 512,
            stdout_bytes: 1 << 20,
            stderr_bytes: 64 << 10,
        }
    }
}

/// The most memory any execution may be given (wasm32's whole address space).
pub(crate) const MAX_MEMORY_MB: usize = 4096;

impl Limits {
    /// Rejects limits no program could run under, naming the key.
    pub fn validate(&self) -> Result<(), String> {
        if self.timeout_ms == 0 {
            return Err("sandbox.limits.timeout_ms must be at least 1".into());
        }
        if self.memory_mb < 128 {
            return Err(format!(
                "sandbox.limits.memory_mb = {} is too small: the interpreter alone needs about 64 MiB; use at least 128",
                self.memory_mb
            ));
        }
        if self.memory_mb as usize > MAX_MEMORY_MB {
            return Err(format!(
                "sandbox.limits.memory_mb = {} exceeds wasm32's {MAX_MEMORY_MB} MiB address space",
                self.memory_mb
            ));
        }
        Ok(())
    }

    pub(crate) fn memory_bytes(&self) -> usize {
        (self.memory_mb as usize) << 20
    }
}
