//! One writer per run folder: an exclusive `flock` on `.langevin.lock`. The kernel drops the
//! lock when its process dies (even by `kill -9`), so a stale lock from a killed run never
//! blocks the next one; the file keeps the last holder's pid for the message.
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// The lock file's name inside a run folder.
pub const LOCK_FILE: &str = ".langevin.lock";

/// Held while a process writes a run folder; released when dropped or when the process ends.
#[derive(Debug)]
pub struct RunLock {
    _file: File,
    pub dir: PathBuf,
    /// Temporary files of killed writers that were removed when the lock was taken.
    pub cleaned: Vec<PathBuf>,
    /// The pid recorded by the previous holder, if it died without releasing (now stale).
    pub stale_pid: Option<String>,
}

/// Is `name` one of our temporary files (`.NAME.tmp-PID`, see `io::atomic`)?
pub fn is_temp_name(name: &str) -> bool {
    name.starts_with('.')
        && name
            .rsplit_once(".tmp-")
            .is_some_and(|(_, pid)| !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()))
}

impl RunLock {
    /// Create `dir` if needed and lock it for writing. Fails with [`Error::Locked`] if another
    /// live process holds it, and with an I/O error naming the folder if it is not writable.
    /// Temporary files left by killed writers are removed.
    pub fn acquire(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let path = dir.join(LOCK_FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        let mut previous = String::new();
        let _ = file.read_to_string(&mut previous);
        let previous = previous.trim().to_string();
        if !try_lock(&file).map_err(|e| Error::io(&path, e))? {
            return Err(Error::Locked {
                dir: dir.to_path_buf(),
                pid: if previous.is_empty() {
                    "unknown".into()
                } else {
                    previous
                },
            });
        }
        let write_pid = |f: &mut File| -> std::io::Result<()> {
            f.set_len(0)?;
            f.seek(SeekFrom::Start(0))?;
            writeln!(f, "{}", std::process::id())?;
            f.sync_all()
        };
        write_pid(&mut file).map_err(|e| Error::io(&path, e))?;
        let mut cleaned = vec![];
        for entry in std::fs::read_dir(dir)
            .map_err(|e| Error::io(dir, e))?
            .flatten()
        {
            let name = entry.file_name();
            if is_temp_name(&name.to_string_lossy()) && std::fs::remove_file(entry.path()).is_ok() {
                cleaned.push(entry.path());
            }
        }
        Ok(Self {
            _file: file,
            dir: dir.to_path_buf(),
            cleaned,
            stale_pid: (!previous.is_empty()).then_some(previous),
        })
    }
}

#[cfg(unix)]
fn try_lock(f: &File) -> std::io::Result<bool> {
    use std::os::unix::io::AsRawFd;
    // SAFETY: flock on a file descriptor we own; no memory is shared with the kernel.
    let r = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if r == 0 {
        return Ok(true);
    }
    let e = std::io::Error::last_os_error();
    if e.kind() == std::io::ErrorKind::WouldBlock {
        Ok(false)
    } else {
        Err(e)
    }
}

#[cfg(not(unix))]
fn try_lock(_f: &File) -> std::io::Result<bool> {
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_writer_is_refused_until_the_first_drops_and_temps_are_cleaned() {
        let dir = std::env::temp_dir().join(format!("langevin-lock-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(".train_state.safetensors.tmp-999999"), b"partial").unwrap();
        std::fs::write(dir.join("keep.tmp-notapid"), b"user file").unwrap();
        let first = RunLock::acquire(&dir).unwrap();
        assert_eq!(first.cleaned.len(), 1);
        assert!(dir.join("keep.tmp-notapid").exists());
        // flock locks are per open file description, so a second open in this process conflicts.
        match RunLock::acquire(&dir) {
            Err(Error::Locked { pid, .. }) => assert_eq!(pid, std::process::id().to_string()),
            other => panic!("expected Locked, got {other:?}"),
        }
        drop(first);
        let again = RunLock::acquire(&dir).unwrap();
        assert_eq!(
            again.stale_pid.as_deref(),
            Some(&*std::process::id().to_string())
        );
        drop(again);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn temp_names_are_recognised_exactly() {
        assert!(is_temp_name(".config.json.tmp-123"));
        assert!(!is_temp_name("config.json.tmp-123"));
        assert!(!is_temp_name(".x.tmp-"));
        assert!(!is_temp_name(".x.tmp-12a"));
    }
}
