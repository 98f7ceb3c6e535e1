//! `logging.file`: log lines appended to a file (M-FastGate's `logs/fastgate.log`).
//!
//! The file is created readable by its owner and group only (0640, its directory 0750): log
//! lines hold no secret, but client addresses and key ids. SIGHUP reopens it, so logrotate's
//! usual rename-and-create works. A failed write (a full disk) is dropped for the file only:
//! the same line has gone to stderr already, and logging must never stop the gateway.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

/// An append-only log file that can be reopened at the same path.
#[derive(Debug)]
pub struct LogFile {
    path: PathBuf,
    file: Mutex<File>,
}

impl LogFile {
    /// Open (creating it and its directory) `path` for appending.
    pub fn open(path: &Path) -> io::Result<Arc<Self>> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o750)
                .create(dir)?;
            private(&File::open(dir)?)?;
        }
        Ok(Arc::new(Self {
            path: path.to_owned(),
            file: Mutex::new(open_append(path)?),
        }))
    }

    /// Open the path again (after logrotate moved the file away); lines go to the new file.
    pub fn reopen(&self) -> io::Result<()> {
        let fresh = open_append(&self.path)?;
        *self.file.lock().unwrap_or_else(PoisonError::into_inner) = fresh;
        Ok(())
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
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

/// Take group-write and every permission of others away from `file` (a file or a directory).
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
        let mut file = self.file.lock().unwrap_or_else(PoisonError::into_inner);
        // Dropped on failure (see the module docs): the line is on stderr already.
        let _ = file.write_all(buf);
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
        // Left open by an earlier build: tightened when opened.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
        let parent = path.parent().unwrap();
        std::fs::set_permissions(parent, std::fs::Permissions::from_mode(0o777)).unwrap();
        let log = LogFile::open(&path).unwrap();
        assert_eq!(shared(&path), 0, "an existing file was left open");
        assert_eq!(shared(parent), 0, "an existing directory was left open");
        // logrotate: rename, then SIGHUP.
        let rotated = dir.path().join("logs/fastgate.log.1");
        std::fs::rename(&path, &rotated).unwrap();
        (&*log).write_all(b"two\n").unwrap();
        log.reopen().unwrap();
        (&*log).write_all(b"three\n").unwrap();
        assert_eq!(std::fs::read_to_string(&rotated).unwrap(), "one\ntwo\n");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "three\n");
    }
}
