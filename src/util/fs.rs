//! Files that are either wholly the old version or wholly the new one, whatever happens
//! mid-write (kill -9, power cut, full disk): the one atomic-write mechanism of the toolkit.
//!
//! Every output that a later run reads back (shards, manifests, checkpoints, metrics, plots,
//! generated images) goes through [`write_atomic_with`]: the bytes go to a hidden temporary file
//! in the destination's folder ([`temp_path`]), which is flushed to disk (`fsync`), renamed over
//! the destination (atomic within one filesystem), and the folder is synced so the rename itself
//! survives a crash ([`sync_dir`]). On any failure the temporary file is removed and the
//! destination is untouched.

use std::fs::{self, File};
use std::io::{self, BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// The temporary name a file is written under before it is renamed to `final_path`: hidden, in
/// the same folder (so the rename is atomic), and recognisable (`.NAME.tmp`) so a resumed run
/// can sweep leftovers of an interrupted one.
pub fn temp_path(final_path: &Path) -> PathBuf {
    let name = final_path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    final_path.with_file_name(format!(".{name}.tmp"))
}

/// Syncs the folder holding `path` so a rename into it survives a power cut. Best effort: some
/// filesystems refuse to open folders, and then there is nothing more to do.
pub fn sync_dir(path: &Path) {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

/// A file being written that appears at its destination only when [`AtomicFile::commit`]
/// succeeds; dropped uncommitted (an error, a panic, an interruption), it removes its temporary
/// file and the destination stays as it was. Buffered; seekable, for formats whose header is
/// written last.
pub struct AtomicFile {
    out: Option<BufWriter<File>>,
    tmp: PathBuf,
    path: PathBuf,
}

impl AtomicFile {
    /// Starts a file that will replace `path` on commit (written meanwhile at [`temp_path`]).
    /// A `path` that is a folder, or ends in `/`, is refused saying a file name is expected.
    pub fn create(path: &Path) -> io::Result<Self> {
        expect_file_path(path)?;
        let tmp = temp_path(path);
        let file = File::create(&tmp)?;
        Ok(AtomicFile {
            out: Some(BufWriter::with_capacity(1 << 20, file)),
            tmp,
            path: path.to_path_buf(),
        })
    }

    /// Where the bytes are written until the commit (for error messages).
    pub fn temp_path(&self) -> &Path {
        &self.tmp
    }

    /// Flushes, syncs the file to disk, renames it over the destination and syncs the folder.
    pub fn commit(mut self) -> io::Result<()> {
        let out = self.out.take().expect("open until commit");
        let file = out.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        drop(file);
        fs::rename(&self.tmp, &self.path)?;
        sync_dir(&self.path);
        Ok(())
    }

    fn out(&mut self) -> &mut BufWriter<File> {
        self.out.as_mut().expect("open until commit")
    }
}

impl Write for AtomicFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.out().write(buf)
    }
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.out().write_all(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.out().flush()
    }
}

impl Seek for AtomicFile {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        self.out().seek(pos)
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        // Committed: the temporary name no longer exists. Otherwise close, then remove it.
        self.out = None;
        let _ = fs::remove_file(&self.tmp);
    }
}

/// Refuses an output path that names a folder (an existing one, or one ending in `/`) where a
/// file is to be written, saying so, instead of the system's "Not a directory" or "File exists".
pub fn expect_file_path(path: &Path) -> io::Result<()> {
    let slash = path.as_os_str().as_encoded_bytes().ends_with(b"/");
    if slash || path.is_dir() {
        let what = if path.is_dir() {
            "is a folder"
        } else {
            "ends in `/`, so it names a folder"
        };
        return Err(io::Error::new(
            io::ErrorKind::IsADirectory,
            format!(
                "{} {what}; a file name is expected here (such as {}/FILE)",
                path.display(),
                path.display().to_string().trim_end_matches('/')
            ),
        ));
    }
    Ok(())
}

/// Writes `bytes` to `path` atomically (see the module documentation).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_atomic_with(path, |w| w.write_all(bytes))
}

/// Writes `path` atomically from a writer callback, streaming through an [`AtomicFile`], so
/// large outputs (checkpoints) need no copy in memory. The callback's error, or any error of the
/// sync or the rename, leaves `path` as it was and removes the temporary file.
pub fn write_atomic_with(
    path: &Path,
    write: impl FnOnce(&mut dyn Write) -> io::Result<()>,
) -> io::Result<()> {
    let mut f = AtomicFile::create(path)?;
    write(&mut f)?;
    f.commit()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_whole_file_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("out.bin");
        write_atomic(&p, b"first version").unwrap();
        write_atomic(&p, b"second").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"second");
        assert!(!temp_path(&p).exists());
    }

    #[test]
    fn failed_write_keeps_old_file_and_removes_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("out.bin");
        write_atomic(&p, b"good").unwrap();
        let err = write_atomic_with(&p, |w| {
            w.write_all(b"half of the new")?;
            Err(io::Error::other("disk full"))
        })
        .unwrap_err();
        assert_eq!(err.to_string(), "disk full");
        assert_eq!(fs::read(&p).unwrap(), b"good");
        assert!(!temp_path(&p).exists());
    }

    #[test]
    fn a_folder_given_for_a_file_is_named_as_such() {
        let dir = tempfile::tempdir().unwrap();
        let err = write_atomic(dir.path(), b"x").unwrap_err().to_string();
        assert!(
            err.contains("is a folder; a file name is expected"),
            "{err}"
        );
        let slash = dir.path().join("new/");
        let err = write_atomic(&slash, b"x").unwrap_err().to_string();
        assert!(err.contains("ends in `/`"), "{err}");
        assert!(!dir.path().join("new").exists());
    }

    #[test]
    fn failed_rename_removes_temporary() {
        let dir = tempfile::tempdir().unwrap();
        // A non-empty folder at the destination: the rename fails.
        let p = dir.path().join("taken");
        fs::create_dir(&p).unwrap();
        fs::write(p.join("x"), b"x").unwrap();
        assert!(write_atomic(&p, b"bytes").is_err());
        assert!(!temp_path(&p).exists());
        assert!(p.join("x").exists());
    }
}
