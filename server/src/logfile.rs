//! `logging.file`: log lines appended to a file (M-FastGate's `logs/fastgate.log`).
//!
//! The file is created readable by its owner and group only (0640; a directory created for it
//! 0750): log lines hold no secret, but client addresses and key ids. An existing file open to
//! others is tightened; an existing directory is left as it is (it may be `/tmp` or `/var/log`). SIGHUP reopens it, so logrotate's
//! usual rename-and-create works. A failed write (a full disk) is dropped for the file only:
//! the same line has gone to stderr already, and logging must never stop the gateway. The first
//! failure of a run of failures is reported on stderr, and so is the first write that succeeds
//! after it, with the number of lines the file missed.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

/// An append-only log file that can be reopened at the same path.
#[derive(Debug)]
pub struct LogFile {
    path: PathBuf,
    file: Mutex<File>,
    /// Lines dropped since the last write that succeeded (0: the file is being written).
    missed: AtomicU64,
}

impl LogFile {
    /// Open (creating it and its missing directories, 0750) `path` for appending. Existing
    /// directories keep their permissions.
    pub fn open(path: &Path) -> io::Result<Arc<Self>> {
        create_dirs(path)?;
        Ok(Arc::new(Self {
            path: path.to_owned(),
            file: Mutex::new(open_append(path)?),
            missed: AtomicU64::new(0),
        }))
    }

    /// Open the path again (after logrotate moved the file away, or its directory); lines go
    /// to the new file. Missing directories are created as at start.
    pub fn reopen(&self) -> io::Result<()> {
        create_dirs(&self.path)?;
        let fresh = open_append(&self.path)?;
        *self.file.lock().unwrap_or_else(PoisonError::into_inner) = fresh;
        Ok(())
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Lines dropped since the last successful write.
    pub fn missed(&self) -> u64 {
        self.missed.load(Ordering::Relaxed)
    }

    /// Note how a write went; returns the notice for stderr when the file starts or stops failing.
    fn note(&self, result: io::Result<()>) -> Option<String> {
        match result {
            Ok(()) => {
                let missed = self.missed.swap(0, Ordering::Relaxed);
                (missed > 0).then(|| {
                    format!(
                        "fastgate: logging.file {}: writing again; {missed} line(s) were not written to it",
                        self.path.display()
                    )
                })
            }
            Err(e) => (self.missed.fetch_add(1, Ordering::Relaxed) == 0).then(|| {
                format!(
                    "fastgate: logging.file {}: write failed ({e}); lines go to stderr only until a write succeeds",
                    self.path.display()
                )
            }),
        }
    }
}

/// The missing directories of `path`, created 0750 (existing ones keep their permissions).
fn create_dirs(path: &Path) -> io::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o750)
            .create(dir)?;
    }
    Ok(())
}

fn open_append(path: &Path) -> io::Result<File> {
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .open(path)?;
    // A file left by an earlier build (or created by another tool) may be world-readable.
    private(&file)?;
    Ok(file)
}

/// Take group-write and every permission of others away from the log file.
fn private(file: &File) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    let mode = file.metadata()?.permissions().mode();
    if mode & 0o027 != 0 {
        file.set_permissions(std::fs::Permissions::from_mode(mode & 0o7750))?;
    }
    Ok(())
}

/// `tracing-subscriber` writes each event with one call: one lock per line.
impl Write for &LogFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let written = self
            .file
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .write_all(buf);
        // Dropped on failure (see the module docs): the line is on stderr already. Straight to
        // stderr, not through `tracing`, which would come back here.
        if let Some(notice) = self.note(written) {
            let _ = writeln!(io::stderr(), "{notice}");
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn appends_creates_private_and_reopens_after_a_rename() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("logs/fastgate.log");
        let log = LogFile::open(&path).unwrap();
        (&*log).write_all(b"one\n").unwrap();
        let shared = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o027;
        assert_eq!(shared(&path), 0, "group-writable or open to others");
        assert_eq!(
            shared(path.parent().unwrap()),
            0,
            "directory open to others"
        );
        drop(log);
        // A file left open by an earlier build is tightened when opened; an existing directory
        // (shared, like /tmp or /var/log) is left as it is.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
        let parent = path.parent().unwrap();
        std::fs::set_permissions(parent, std::fs::Permissions::from_mode(0o1777)).unwrap();
        let log = LogFile::open(&path).unwrap();
        assert_eq!(shared(&path), 0, "an existing file was left open");
        let mode = std::fs::metadata(parent).unwrap().permissions().mode() & 0o7777;
        assert_eq!(
            mode, 0o1777,
            "an existing directory's permissions were changed"
        );
        // logrotate: rename, then SIGHUP.
        let rotated = dir.path().join("logs/fastgate.log.1");
        std::fs::rename(&path, &rotated).unwrap();
        (&*log).write_all(b"two\n").unwrap();
        log.reopen().unwrap();
        (&*log).write_all(b"three\n").unwrap();
        assert_eq!(std::fs::read_to_string(&rotated).unwrap(), "one\ntwo\n");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "three\n");
        // The whole directory moved away: created again (0750), as at start.
        let moved = dir.path().join("logs.old");
        std::fs::rename(parent, &moved).unwrap();
        log.reopen().unwrap();
        (&*log).write_all(b"four\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "four\n");
        assert_eq!(shared(parent), 0, "directory open to others");
    }

    #[test]
    fn failed_writes_are_counted_and_reported_once_per_run_of_failures() {
        // /dev/full fails every write with ENOSPC, like a full disk.
        let log = LogFile {
            path: PathBuf::from("/dev/full"),
            file: Mutex::new(OpenOptions::new().append(true).open("/dev/full").unwrap()),
            missed: AtomicU64::new(0),
        };
        let failure = || Err(io::Error::from_raw_os_error(28));
        for _ in 0..3 {
            (&log).write_all(b"lost\n").unwrap();
        }
        assert_eq!(log.missed(), 3);
        let first = log.note(failure()).unwrap_or_default();
        assert_eq!(first, "", "only the first failure of a run is reported");
        assert_eq!(log.missed(), 4);
        let back = log.note(Ok(())).unwrap();
        assert!(back.contains("4 line(s)"), "{back}");
        assert_eq!(log.missed(), 0);
        assert_eq!(log.note(Ok(())), None);
        let again = log.note(failure()).unwrap();
        assert!(
            again.contains("write failed") && again.contains("/dev/full"),
            "{again}"
        );
    }
}
