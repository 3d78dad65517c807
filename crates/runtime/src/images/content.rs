//! The content store: blobs named by their sha256, written through an ingest file that is
//! checked against the expected digest before it becomes visible. Partial downloads stay
//! in `ingest/` so an interrupted pull resumes where it stopped.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::digest::{Digest, Hasher};
use crate::{io_err, Error};

/// Blobs under `ROOT/blobs/sha256/<hex>`, partial writes under `ROOT/ingest/<hex>`.
#[derive(Clone, Debug)]
pub struct ContentStore {
    root: PathBuf,
}

impl ContentStore {
    /// Opens (or creates) the store under `root`.
    pub fn open(root: &Path) -> Result<ContentStore, Error> {
        for d in ["blobs/sha256", "ingest"] {
            let p = root.join(d);
            fs::create_dir_all(&p).map_err(io_err(&p))?;
        }
        Ok(ContentStore { root: root.into() })
    }

    /// Where the blob with digest `d` is kept.
    pub fn path(&self, d: &Digest) -> PathBuf {
        self.root.join("blobs/sha256").join(d.hex())
    }

    /// Whether the blob is there.
    pub fn has(&self, d: &Digest) -> bool {
        self.path(d).exists()
    }

    /// Reads a (small) blob whole, checking its digest: manifests and configs are read
    /// this way, so a blob altered on disk is noticed.
    pub fn read(&self, d: &Digest) -> Result<Vec<u8>, Error> {
        let p = self.path(d);
        let bytes = fs::read(&p).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => Error::NotFound(format!("blob {d}")),
            _ => Error::Io(p.display().to_string(), e),
        })?;
        let actual = Digest::of(&bytes);
        if &actual != d {
            return Err(Error::DigestMismatch {
                what: format!("blob {}", p.display()),
                expected: d.clone(),
                actual,
            });
        }
        Ok(bytes)
    }

    /// Writes a blob held in memory after checking it has digest `d`.
    pub fn write(&self, d: &Digest, bytes: &[u8]) -> Result<(), Error> {
        if self.has(d) {
            return Ok(());
        }
        let mut w = self.ingest(d)?;
        w.reset()?;
        w.write_all(bytes).map_err(io_err(&w.path))?;
        w.commit(d)
    }

    /// Opens (or resumes) the ingest file for `d`: the writer's `offset` says how many
    /// bytes are already there.
    pub fn ingest(&self, d: &Digest) -> Result<Ingest, Error> {
        let path = self.root.join("ingest").join(d.hex());
        self.open_ingest(path)
    }

    /// A fresh ingest file for content whose digest is not yet known (a layer inside a
    /// `docker save` tarball); commit it with `commit_computed`.
    pub fn ingest_unknown(&self) -> Result<Ingest, Error> {
        let path =
            self.root
                .join("ingest")
                .join(format!("tmp-{}-{}", std::process::id(), unique()));
        let mut w = self.open_ingest(path)?;
        w.reset()?;
        Ok(w)
    }

    fn open_ingest(&self, path: PathBuf) -> Result<Ingest, Error> {
        let mut file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(&path)
            .map_err(io_err(&path))?;
        // One writer per blob: a second pull of the same layer waits for the first.
        use std::os::fd::AsRawFd;
        // SAFETY: flock on a descriptor we own; released when the file closes.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            return Err(Error::Busy(path.display().to_string()));
        }
        // Hash what an earlier attempt left, so the digest covers the whole blob.
        let mut hasher = Hasher::new();
        let mut buf = vec![0u8; 1 << 16];
        let mut offset = 0u64;
        file.seek(SeekFrom::Start(0)).map_err(io_err(&path))?;
        loop {
            let n = file.read(&mut buf).map_err(io_err(&path))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            offset += n as u64;
        }
        Ok(Ingest {
            file,
            hasher,
            offset,
            path,
            blobs: self.root.join("blobs/sha256"),
        })
    }

    /// Removes a blob.
    pub fn remove(&self, d: &Digest) {
        let _ = fs::remove_file(self.path(d));
    }

    /// Every blob present.
    pub fn list(&self) -> Vec<Digest> {
        let Ok(rd) = fs::read_dir(self.root.join("blobs/sha256")) else {
            return Vec::new();
        };
        rd.flatten()
            .filter_map(|e| {
                Digest::parse(&format!("sha256:{}", e.file_name().to_string_lossy())).ok()
            })
            .collect()
    }

    /// Removes ingest files older than `age` (abandoned pulls).
    pub fn prune_ingest(&self, age: std::time::Duration) {
        let Ok(rd) = fs::read_dir(self.root.join("ingest")) else {
            return;
        };
        for e in rd.flatten() {
            let old = e
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|el| el > age);
            if old {
                let _ = fs::remove_file(e.path());
            }
        }
    }
}

/// A blob being written; `commit` moves it into place only if its digest matches.
pub struct Ingest {
    file: File,
    hasher: Hasher,
    /// Bytes written so far (also by earlier attempts).
    pub offset: u64,
    path: PathBuf,
    blobs: PathBuf,
}

impl Ingest {
    /// Drops what was written (the server would not resume, or the content was wrong).
    pub fn reset(&mut self) -> Result<(), Error> {
        self.file.set_len(0).map_err(io_err(&self.path))?;
        self.hasher = Hasher::new();
        self.offset = 0;
        Ok(())
    }

    /// Checks the digest, syncs and moves the blob into the store.
    pub fn commit(mut self, expected: &Digest) -> Result<(), Error> {
        let actual = std::mem::take(&mut self.hasher).finish();
        if &actual != expected {
            let _ = fs::remove_file(&self.path);
            return Err(Error::DigestMismatch {
                what: "blob".into(),
                expected: expected.clone(),
                actual,
            });
        }
        self.file.sync_all().map_err(io_err(&self.path))?;
        let dst = self.blobs.join(expected.hex());
        fs::rename(&self.path, &dst).map_err(io_err(&dst))
    }

    /// Moves the blob into the store under the digest of what was written.
    pub fn commit_computed(mut self) -> Result<(Digest, u64), Error> {
        let size = self.offset;
        let actual = std::mem::take(&mut self.hasher).finish();
        self.file.sync_all().map_err(io_err(&self.path))?;
        let dst = self.blobs.join(actual.hex());
        fs::rename(&self.path, &dst).map_err(io_err(&dst))?;
        Ok((actual, size))
    }
}

impl Write for Ingest {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.offset += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

impl Drop for Ingest {
    fn drop(&mut self) {
        // An uncommitted unknown-digest ingest can never be resumed: remove it.
        if self
            .path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("tmp-"))
        {
            let _ = fs::remove_file(&self.path);
        }
    }
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ingest_verifies_and_resumes() {
        let dir = tempfile::tempdir().unwrap();
        let cs = ContentStore::open(dir.path()).unwrap();
        let data = vec![7u8; 200_000];
        let d = Digest::of(&data);
        // A first attempt stops halfway.
        let mut w = cs.ingest(&d).unwrap();
        w.write_all(&data[..90_000]).unwrap();
        drop(w);
        // The second resumes from the partial file.
        let mut w = cs.ingest(&d).unwrap();
        assert_eq!(w.offset, 90_000);
        w.write_all(&data[90_000..]).unwrap();
        w.commit(&d).unwrap();
        assert_eq!(cs.read(&d).unwrap(), data);
        // Wrong content is refused and leaves nothing behind.
        let other = Digest::of(b"other");
        let mut w = cs.ingest(&other).unwrap();
        w.write_all(b"not other").unwrap();
        assert!(matches!(
            w.commit(&other),
            Err(Error::DigestMismatch { .. })
        ));
        assert!(!cs.has(&other));
        assert_eq!(fs::read_dir(dir.path().join("ingest")).unwrap().count(), 0);
        // A blob altered on disk is noticed when read.
        fs::write(cs.path(&d), b"tampered").unwrap();
        assert!(matches!(cs.read(&d), Err(Error::DigestMismatch { .. })));
    }
}
