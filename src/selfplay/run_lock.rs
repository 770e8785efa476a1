//! One writer per run directory: an exclusive `flock` on `azr.lock`, which names its holder
//! (pid, host, start time). The kernel releases the lock when the holder's process ends,
//! however it ends (kill -9 included), so a crash never leaves a directory locked.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// The lock on a run directory, held until dropped.
#[derive(Debug)]
pub struct RunLock {
    _file: File,
}

/// Why a run directory could not be locked.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("{0}: {1}")]
    Io(PathBuf, std::io::Error),
    #[error("run directory {dir} is in use by another azr ({holder}); wait for it to end or stop it, or choose another --run")]
    Held { dir: PathBuf, holder: String },
}

impl RunLock {
    /// Takes the lock on `dir` (which must exist), or names the process that holds it.
    pub fn acquire(dir: &Path) -> Result<Self, LockError> {
        let path = dir.join("azr.lock");
        let io = |e| LockError::Io(path.clone(), e);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io)?;
        // SAFETY: flock only reads the descriptor, which `file` keeps open.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let err = std::io::Error::last_os_error();
            if err.kind() != std::io::ErrorKind::WouldBlock {
                return Err(io(err));
            }
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = match holder.trim() {
                "" => "it has not yet said who it is".to_string(),
                named => named.to_string(),
            };
            return Err(LockError::Held {
                dir: dir.to_owned(),
                holder,
            });
        }
        let me = format!(
            "pid {} on host {}, started {}\n",
            std::process::id(),
            host(),
            utc(std::time::SystemTime::now())
        );
        file.set_len(0).map_err(io)?;
        file.rewind().map_err(io)?;
        file.write_all(me.as_bytes()).map_err(io)?;
        Ok(Self { _file: file })
    }
}

fn host() -> String {
    let mut name = [0u8; 256];
    // SAFETY: the buffer is writable for its whole length.
    let ok = unsafe { libc::gethostname(name.as_mut_ptr().cast(), name.len()) } == 0;
    let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
    match ok {
        true => String::from_utf8_lossy(&name[..end]).into_owned(),
        false => "unknown".into(),
    }
}

/// `time` as `YYYY-MM-DD HH:MM:SS UTC`.
fn utc(time: std::time::SystemTime) -> String {
    let secs = time
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rest) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's `civil_from_days`).
    let z = days + 719_468;
    let (era, doe) = (z / 146_097, z % 146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rest / 3600,
        rest / 60 % 60,
        rest % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 19: two `azr selfplay` on one directory raced and kept a step twice for good.
    #[test]
    fn a_second_writer_is_refused_with_the_holder_named_until_the_first_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        let first = RunLock::acquire(dir.path()).unwrap();
        // A second open of the file is a second lock, as in another process.
        let err = RunLock::acquire(dir.path()).unwrap_err().to_string();
        let pid = format!("pid {} on host {}", std::process::id(), host());
        assert!(err.contains(&pid) && err.contains("UTC"), "{err}");
        assert!(err.contains("another --run"), "{err}");
        drop(first);
        RunLock::acquire(dir.path()).unwrap();
    }

    #[test]
    fn utc_dates_are_civil() {
        let at = |secs| utc(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs));
        assert_eq!(at(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(at(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(at(1_700_000_000), "2023-11-14 22:13:20 UTC");
    }
}
