//! Per-execution resource limits.

use serde::{Deserialize, Serialize};

use crate::config::in_range;

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
    /// Rejects limits no program could run under, and sizes that could wrap, naming the key.
    pub fn validate(&self) -> Result<(), String> {
        use std::ops::Bound::Included;
        in_range(
            "sandbox.limits.timeout_ms",
            self.timeout_ms,
            (Included(1), Included(3_600_000)),
        )?;
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
        // Output is held in memory, and the harness's reports come back on stdout.
        let bytes = (Included(1 << 10), Included(1 << 30));
        in_range("sandbox.limits.stdout_bytes", self.stdout_bytes, bytes)?;
        in_range("sandbox.limits.stderr_bytes", self.stderr_bytes, bytes)
    }

    pub(crate) fn memory_bytes(&self) -> usize {
        (self.memory_mb as usize) << 20
    }
}
