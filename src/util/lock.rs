//! Exclusive locks on folders that one process writes at a time (a store being prepared, a
//! run directory being trained into), so that a second process is refused with the holder's
//! pid and host instead of racing the first one.
//!
//! The lock is a file created with `O_EXCL` holding `pid host`; it is removed when the
//! [`FolderLock`] is dropped. A lock left by a process that died (same host, pid no longer
//! running) is stale and is taken over; a lock held from another host is never broken
//! automatically, since this host cannot tell whether that process still runs.

use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// The lock file's name inside the locked folder.
pub const LOCK_FILE: &str = ".vgg.lock";

/// Why a folder could not be locked.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("{dir} is in use by process {pid} on {host} ({what}); wait for it to finish, or remove {lock} if that process is gone")]
    Held {
        dir: PathBuf,
        what: String,
        pid: u32,
        host: String,
        lock: PathBuf,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A held lock; dropping it releases the folder.
#[derive(Debug)]
pub struct FolderLock {
    path: PathBuf,
}

fn host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".into())
}

/// Whether process `pid` runs on this host.
fn alive(pid: u32) -> bool {
    if pid == std::process::id() {
        return true;
    }
    Path::new("/proc").join(pid.to_string()).exists()
}

impl FolderLock {
    /// Locks `dir` (created if missing) for `what` (e.g. "vgg train"), or says who holds it.
    pub fn acquire(dir: &Path, what: &str) -> Result<FolderLock, LockError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| LockError::Io { path, source }
        };
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let path = dir.join(LOCK_FILE);
        let me = format!("{} {}\n{what}\n", std::process::id(), host());
        for _ in 0..2 {
            match OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(mut f) => {
                    f.write_all(me.as_bytes()).map_err(io(&path))?;
                    f.sync_all().map_err(io(&path))?;
                    return Ok(FolderLock { path });
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let mut text = String::new();
                    if let Ok(mut f) = std::fs::File::open(&path) {
                        let _ = f.read_to_string(&mut text);
                    }
                    let mut lines = text.lines();
                    let mut first = lines.next().unwrap_or("").split_whitespace();
                    let pid: u32 = first.next().and_then(|p| p.parse().ok()).unwrap_or(0);
                    let holder_host = first.next().unwrap_or("").to_string();
                    let holder_what = lines.next().unwrap_or("unknown").to_string();
                    let stale = pid == 0 || (holder_host == host() && !alive(pid));
                    if stale {
                        // The holder died (or the file is torn): take the folder over.
                        let _ = std::fs::remove_file(&path);
                        continue;
                    }
                    return Err(LockError::Held {
                        dir: dir.to_path_buf(),
                        what: holder_what,
                        pid,
                        host: holder_host,
                        lock: path,
                    });
                }
                Err(e) => return Err(io(&path)(e)),
            }
        }
        Err(io(&path)(std::io::Error::other(
            "the lock changed hands while it was being taken",
        )))
    }
}

impl Drop for FolderLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_with_the_first_ones_pid_and_the_lock_goes_with_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().join("run");
        let first = FolderLock::acquire(&run, "vgg train").unwrap();
        let e = FolderLock::acquire(&run, "vgg train")
            .unwrap_err()
            .to_string();
        assert!(e.contains(&std::process::id().to_string()), "{e}");
        assert!(e.contains("vgg train") && e.contains(&host()), "{e}");
        drop(first);
        assert!(!run.join(LOCK_FILE).exists());
        let _again = FolderLock::acquire(&run, "vgg train").unwrap();
    }

    #[test]
    fn a_lock_left_by_a_dead_process_is_taken_over_but_not_one_from_another_host() {
        let dir = tempfile::tempdir().unwrap();
        // A pid that has exited: a child that already ran.
        let child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        let mut child = child;
        child.wait().unwrap();
        std::fs::write(
            dir.path().join(LOCK_FILE),
            format!("{pid} {}\nvgg prepare\n", host()),
        )
        .unwrap();
        let lock = FolderLock::acquire(dir.path(), "vgg prepare").unwrap();
        drop(lock);
        std::fs::write(
            dir.path().join(LOCK_FILE),
            format!("{} another-host.example\nvgg train\n", std::process::id()),
        )
        .unwrap();
        let e = FolderLock::acquire(dir.path(), "vgg train")
            .unwrap_err()
            .to_string();
        assert!(e.contains("another-host.example"), "{e}");
    }
}
