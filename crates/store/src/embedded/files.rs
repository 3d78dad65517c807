//! The files of an embedded store's directory and how they are read back.
//!
//! ```text
//! LOCK                      flock held by the one process that owns the directory
//! snap-<rev>.snap           checkpoint: every retained version at <rev>, CRC-checked
//! wal-<first rev>.log       write-ahead log segments: CRC-framed batches of records
//! ```
//! A state is the newest checkpoint plus the records after it. A checkpoint is written
//! beside the log (`.tmp`, fsync, rename), and only then are older files removed, so a
//! crash at any point leaves a readable directory.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes};

use super::mvcc::{Mvcc, Version};
use super::record::{put_bytes, Cursor, Record};
use crate::{Result, Revision, StoreError};

const SNAP_MAGIC: &[u8; 8] = b"RKUBESNP";
const SNAP_END: &[u8; 8] = b"RKUBEEND";
const WAL_MAGIC: &[u8; 8] = b"RKUBEWAL";
const FORMAT: u32 = 1;
/// magic, format, first revision, CRC of those.
pub(crate) const WAL_HEADER_LEN: u64 = 24;
/// length and CRC of a frame's payload.
const FRAME_HEADER_LEN: usize = 8;

fn snap_name(rev: Revision) -> String {
    format!("snap-{rev:020}.snap")
}

fn wal_name(first_rev: Revision) -> String {
    format!("wal-{first_rev:020}.log")
}

fn parse_name(name: &str, prefix: &str, suffix: &str) -> Option<Revision> {
    name.strip_prefix(prefix)?
        .strip_suffix(suffix)?
        .parse()
        .ok()
}

/// The store files of a directory, each list sorted by revision.
#[derive(Default, Debug)]
pub(crate) struct Listing {
    pub snaps: Vec<(Revision, PathBuf)>,
    pub wals: Vec<(Revision, PathBuf)>,
    pub tmps: Vec<PathBuf>,
}

pub(crate) fn list(dir: &Path) -> Result<Listing> {
    let mut l = Listing::default();
    let entries = fs::read_dir(dir).map_err(|e| StoreError::io(dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| StoreError::io(dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(rev) = parse_name(&name, "snap-", ".snap") {
            l.snaps.push((rev, entry.path()));
        } else if let Some(rev) = parse_name(&name, "wal-", ".log") {
            l.wals.push((rev, entry.path()));
        } else if name.ends_with(".tmp") {
            l.tmps.push(entry.path());
        }
    }
    l.snaps.sort();
    l.wals.sort();
    Ok(l)
}

/// Makes directory entries (created, renamed, removed files) durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StoreError::io(dir, e))
}

/// The exclusive hold on a data directory, released when dropped (or the process dies).
pub(crate) struct DirLock {
    _file: File,
}

/// How long [`lock_dir`] waits for a lock held by someone else.
const LOCK_WAIT: Duration = Duration::from_secs(2);

pub(crate) fn lock_dir(dir: &Path) -> Result<DirLock> {
    let path = dir.join("LOCK");
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| StoreError::io(&path, e))?;
    // A lock can be held for a moment after its owner let go: a child forked by the owner
    // shares the descriptor until it execs (descriptors are close-on-exec), and an owner
    // that is shutting down may still be closing. So wait briefly before calling it taken.
    let deadline = Instant::now() + LOCK_WAIT;
    loop {
        // SAFETY: flock on a file descriptor we own; no memory is involved.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            break;
        }
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EWOULDBLOCK) {
            return Err(StoreError::io(&path, err));
        }
        if Instant::now() >= deadline {
            let mut s = String::new();
            let _ = file.read_to_string(&mut s);
            return Err(StoreError::Locked {
                path: dir.to_path_buf(),
                pid: s.trim().parse().ok(),
            });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let pid = std::process::id().to_string();
    file.set_len(0)
        .and_then(|_| file.seek(SeekFrom::Start(0)))
        .and_then(|_| file.write_all(pid.as_bytes()))
        .map_err(|e| StoreError::io(&path, e))?;
    Ok(DirLock { _file: file })
}

/// What a checkpoint holds: every retained version at one revision.
pub(crate) struct Checkpoint {
    pub keys: BTreeMap<Bytes, Vec<Version>>,
    pub rev: Revision,
    pub compacted: Revision,
}

impl Mvcc {
    /// A copy of the durable state to checkpoint (values are shared, not copied).
    pub fn checkpoint(&self) -> Checkpoint {
        debug_assert_eq!(
            self.rev, self.visible,
            "checkpoints are taken between batches"
        );
        Checkpoint {
            keys: self.keys.clone(),
            rev: self.rev,
            compacted: self.compacted,
        }
    }
}

/// Writes a checkpoint file at `path` (not renamed, not synced by the directory).
pub(crate) fn write_snapshot(path: &Path, cp: &Checkpoint) -> Result<u64> {
    let io_err = |e| StoreError::io(path, e);
    let file = File::create(path).map_err(io_err)?;
    let mut w = BufWriter::with_capacity(1 << 20, file);
    let mut crc = crc32fast::Hasher::new();
    let mut buf = Vec::with_capacity(64 << 10);
    buf.put_slice(SNAP_MAGIC);
    buf.put_u32_le(FORMAT);
    buf.put_i64_le(cp.rev);
    buf.put_i64_le(cp.compacted);
    buf.put_u64_le(cp.keys.len() as u64);
    let mut size = 0u64;
    // Small fields gather in `buf`; values of 32 KiB or more go straight to the writer,
    // so a key with many large versions never makes a buffer of all of them.
    let mut out = |bytes: &[u8], size: &mut u64| -> Result<()> {
        crc.update(bytes);
        w.write_all(bytes).map_err(io_err)?;
        *size += bytes.len() as u64;
        Ok(())
    };
    for (key, versions) in &cp.keys {
        put_bytes(&mut buf, key);
        buf.put_u32_le(versions.len() as u32);
        for v in versions {
            buf.put_i64_le(v.mod_rev);
            buf.put_i64_le(v.create_rev);
            buf.put_i64_le(v.version);
            buf.put_u64_le(v.expires);
            match &v.value {
                Some(value) if value.len() >= 32 << 10 => {
                    buf.put_u8(1);
                    buf.put_u32_le(value.len() as u32);
                    out(&buf, &mut size)?;
                    buf.clear();
                    out(value, &mut size)?;
                }
                Some(value) => {
                    buf.put_u8(1);
                    put_bytes(&mut buf, value);
                }
                None => buf.put_u8(0),
            }
            if buf.len() >= 32 << 10 {
                out(&buf, &mut size)?;
                buf.clear();
            }
        }
    }
    out(&buf, &mut size)?;
    buf.clear();
    let sum = crc.finalize();
    buf.put_u32_le(sum);
    buf.put_slice(SNAP_END);
    w.write_all(&buf).map_err(io_err)?;
    size += buf.len() as u64;
    let file = w.into_inner().map_err(|e| io_err(e.into_error()))?;
    file.sync_all().map_err(io_err)?;
    Ok(size)
}

/// Reads and verifies a checkpoint file.
pub(crate) fn read_snapshot(path: &Path, mut file: File) -> Result<Mvcc> {
    let mut data = Vec::new();
    file.read_to_end(&mut data)
        .map_err(|e| StoreError::io(path, e))?;
    parse_snapshot(&data).map_err(|detail| StoreError::corrupt(path, detail))
}

fn parse_snapshot(data: &[u8]) -> Result<Mvcc, String> {
    if data.len() < 8 || &data[..8] != SNAP_MAGIC {
        return Err("not an rkube snapshot (bad magic)".into());
    }
    if data.len() < 48 || &data[data.len() - 8..] != SNAP_END {
        return Err("truncated snapshot (no end marker)".into());
    }
    let body = &data[..data.len() - 12];
    let stored = u32::from_le_bytes(
        data[data.len() - 12..data.len() - 8]
            .try_into()
            .unwrap_or_default(),
    );
    if crc32fast::hash(body) != stored {
        return Err("checksum mismatch".into());
    }
    let mut c = Cursor::new(body);
    c.take(8)?;
    let format = c.u32()?;
    if format != FORMAT {
        return Err(format!("unsupported snapshot format {format}"));
    }
    let rev = c.i64()?;
    let compacted = c.i64()?;
    let nkeys = c.u64()?;
    let mut keys = BTreeMap::new();
    for _ in 0..nkeys {
        let key = c.bytes()?;
        let n = c.u32()?;
        let mut versions = Vec::with_capacity(n.min(1 << 16) as usize);
        for _ in 0..n {
            let mod_rev = c.i64()?;
            let create_rev = c.i64()?;
            let version = c.i64()?;
            let expires = c.u64()?;
            let value = if c.u8()? == 1 { Some(c.bytes()?) } else { None };
            if mod_rev > rev
                || versions
                    .last()
                    .is_some_and(|p: &Version| p.mod_rev >= mod_rev)
            {
                return Err(format!("version {mod_rev} out of order"));
            }
            versions.push(Version {
                mod_rev,
                create_rev,
                version,
                value,
                expires,
            });
        }
        keys.insert(key, versions);
    }
    if !c.is_empty() {
        return Err("trailing bytes after the last key".into());
    }
    if compacted > rev || compacted < 0 {
        return Err(format!(
            "compaction point {compacted} beyond revision {rev}"
        ));
    }
    Ok(Mvcc::from_parts(keys, rev, compacted))
}

/// An open log segment being appended to.
pub(crate) struct Segment {
    file: File,
    pub path: PathBuf,
    pub len: u64,
}

/// Why an append failed: a failed write can be undone, a failed sync cannot be trusted.
pub(crate) enum AppendError {
    Write(StoreError),
    Sync(StoreError),
}

impl Segment {
    /// Creates a new, empty segment whose first record will be `first_rev`.
    pub fn create(dir: &Path, first_rev: Revision) -> Result<Segment> {
        let path = dir.join(wal_name(first_rev));
        let io_err = |e| StoreError::io(&path, e);
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .map_err(io_err)?;
        let mut header = Vec::with_capacity(WAL_HEADER_LEN as usize);
        header.put_slice(WAL_MAGIC);
        header.put_u32_le(FORMAT);
        header.put_i64_le(first_rev);
        header.put_u32_le(crc32fast::hash(&header));
        file.write_all(&header)
            .and_then(|_| file.sync_all())
            .map_err(io_err)?;
        sync_dir(dir)?;
        Ok(Segment {
            file,
            path,
            len: WAL_HEADER_LEN,
        })
    }

    /// Reopens the last segment for appending after `valid_len` bytes (cutting a torn tail).
    pub fn reopen(path: &Path, valid_len: u64) -> Result<Segment> {
        let io_err = |e| StoreError::io(path, e);
        let file = OpenOptions::new().write(true).open(path).map_err(io_err)?;
        if file.metadata().map_err(io_err)?.len() != valid_len {
            tracing::warn!(path = %path.display(), valid_len, "cutting a torn write at the end of the log");
            file.set_len(valid_len)
                .and_then(|_| file.sync_all())
                .map_err(io_err)?;
        }
        Ok(Segment {
            file,
            path: path.to_path_buf(),
            len: valid_len,
        })
    }

    /// Appends one frame and makes it durable.
    pub fn append(&mut self, payload: &[u8]) -> Result<(), AppendError> {
        let mut frame = Vec::with_capacity(payload.len() + FRAME_HEADER_LEN);
        frame.put_u32_le(payload.len() as u32);
        frame.put_u32_le(crc32fast::hash(payload));
        frame.put_slice(payload);
        let io_err = |e| StoreError::io(&self.path, e);
        let written = self
            .file
            .seek(SeekFrom::Start(self.len))
            .and_then(|_| self.file.write_all(&frame));
        if let Err(e) = written {
            // Take the partial frame back so the log stays a clean sequence of frames.
            return match self.file.set_len(self.len) {
                Ok(()) => Err(AppendError::Write(io_err(e))),
                Err(_) => Err(AppendError::Sync(io_err(e))),
            };
        }
        self.file
            .sync_data()
            .map_err(|e| AppendError::Sync(io_err(e)))?;
        self.len += frame.len() as u64;
        Ok(())
    }
}

/// The result of reading a directory back.
pub(crate) struct Loaded {
    pub state: Mvcc,
    /// The last segment and the length of its valid part.
    pub tail: Option<(PathBuf, u64)>,
    /// Size of the checkpoint the state started from.
    pub snapshot_bytes: u64,
}

/// Reads the state of a directory: newest checkpoint, then the log after it. Files removed
/// by a concurrent checkpoint while this runs make it start over, so it works on a live
/// store too (for online snapshots).
pub(crate) fn load(dir: &Path) -> Result<Loaded> {
    let mut attempts = 0;
    loop {
        match try_load(dir) {
            Err(StoreError::Io { source, .. })
                if source.kind() == io::ErrorKind::NotFound && attempts < 20 =>
            {
                attempts += 1;
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => return other,
        }
    }
}

fn open_file(path: &Path) -> Result<File> {
    File::open(path).map_err(|e| StoreError::io(path, e))
}

fn try_load(dir: &Path) -> Result<Loaded> {
    let listing = list(dir)?;
    let (mut state, snapshot_bytes) = match listing.snaps.last() {
        Some((rev, path)) => {
            let file = open_file(path)?;
            let size = file.metadata().map(|m| m.len()).unwrap_or(0);
            let state = read_snapshot(path, file)?;
            if state.rev != *rev {
                return Err(StoreError::corrupt(
                    path,
                    format!("holds revision {} but is named for {rev}", state.rev),
                ));
            }
            (state, size)
        }
        None => (Mvcc::new(), 0),
    };
    // Open every segment that may hold records after the checkpoint before reading any.
    let wals = &listing.wals;
    let needed: Vec<_> = wals
        .iter()
        .enumerate()
        .filter(|(i, _)| wals.get(i + 1).is_none_or(|(next, _)| next - 1 > state.rev))
        .map(|(_, (first, path))| Ok((*first, path.clone(), open_file(path)?)))
        .collect::<Result<_>>()?;
    let mut tail = None;
    let count = needed.len();
    for (i, (first, path, mut file)) in needed.into_iter().enumerate() {
        let last = i + 1 == count;
        let mut data = Vec::new();
        file.read_to_end(&mut data)
            .map_err(|e| StoreError::io(&path, e))?;
        let valid = replay_segment(&path, &data, first, last, &mut state)?;
        if last {
            tail = Some((path, valid));
        }
    }
    state.visible = state.rev;
    Ok(Loaded {
        state,
        tail,
        snapshot_bytes,
    })
}

/// Applies a segment's records after the state's revision; returns the valid length. A
/// damaged frame at the very end of the last segment is a write that was never
/// acknowledged; anywhere else it is corruption.
fn replay_segment(
    path: &Path,
    data: &[u8],
    first: Revision,
    last: bool,
    state: &mut Mvcc,
) -> Result<u64> {
    let corrupt = |detail: String| StoreError::corrupt(path, detail);
    if data.len() < WAL_HEADER_LEN as usize {
        // A segment whose creation was cut short: nothing in it was ever acknowledged.
        let partial_header =
            data.iter().all(|&b| b == 0) || WAL_MAGIC.starts_with(&data[..data.len().min(8)]);
        if last && partial_header {
            return Ok(0);
        }
        return Err(corrupt("shorter than a log header".into()));
    }
    let mut c = Cursor::new(&data[..WAL_HEADER_LEN as usize]);
    let magic = c.take(8).map_err(&corrupt)?;
    if magic != WAL_MAGIC {
        return Err(corrupt("not an rkube log segment (bad magic)".into()));
    }
    let format = c.u32().map_err(&corrupt)?;
    let header_first = c.i64().map_err(&corrupt)?;
    let crc = c.u32().map_err(&corrupt)?;
    if crc != crc32fast::hash(&data[..20]) || header_first != first || format != FORMAT {
        return Err(corrupt("bad log header".into()));
    }
    let mut pos = WAL_HEADER_LEN as usize;
    while pos < data.len() {
        let rest = &data[pos..];
        let frame = (rest.len() >= FRAME_HEADER_LEN)
            .then(|| {
                let len = u32::from_le_bytes(rest[..4].try_into().unwrap_or_default()) as usize;
                let crc = u32::from_le_bytes(rest[4..8].try_into().unwrap_or_default());
                let payload = rest.get(FRAME_HEADER_LEN..FRAME_HEADER_LEN + len)?;
                (len > 0 && crc32fast::hash(payload) == crc).then_some(payload)
            })
            .flatten();
        let Some(payload) = frame else {
            let torn = last && torn_tail(rest);
            if torn {
                return Ok(pos as u64);
            }
            return Err(corrupt(format!("damaged log frame at byte {pos}")));
        };
        let mut c = Cursor::new(payload);
        while !c.is_empty() {
            let rec =
                Record::decode(&mut c).map_err(|e| corrupt(format!("frame at byte {pos}: {e}")))?;
            match &rec {
                Record::Put { rev, .. } | Record::Delete { rev, .. } => {
                    if *rev <= state.rev {
                        continue;
                    }
                    if *rev != state.rev + 1 {
                        return Err(corrupt(format!(
                            "revisions {}..{} are missing (a log segment was lost)",
                            state.rev + 1,
                            rev - 1
                        )));
                    }
                }
                Record::Compact { rev } if *rev <= state.compacted || *rev > state.rev => continue,
                Record::Compact { .. } => {}
            }
            state.apply(&rec);
        }
        pos += FRAME_HEADER_LEN + payload.len();
    }
    Ok(pos as u64)
}

/// Whether the unreadable end of a log is the torn last write: its frame runs past the end
/// of the file, or nothing but zeros follows it.
fn torn_tail(rest: &[u8]) -> bool {
    if rest.len() < FRAME_HEADER_LEN {
        return true;
    }
    let len = u32::from_le_bytes(rest[..4].try_into().unwrap_or_default()) as usize;
    let end = FRAME_HEADER_LEN.saturating_add(len);
    end >= rest.len() || rest[end..].iter().all(|&b| b == 0) || rest.iter().all(|&b| b == 0)
}

/// Writes checkpoint `cp` into `dir` and removes the files it makes obsolete (the current
/// segment must start after `cp.rev`). Returns the checkpoint's size.
pub(crate) fn write_checkpoint(dir: &Path, cp: &Checkpoint) -> Result<u64> {
    let final_path = dir.join(snap_name(cp.rev));
    let tmp = dir.join(format!("{}.tmp", snap_name(cp.rev)));
    let size = write_snapshot(&tmp, cp)?;
    fs::rename(&tmp, &final_path).map_err(|e| StoreError::io(&final_path, e))?;
    sync_dir(dir)?;
    let listing = list(dir)?;
    let old_wals = listing.wals.iter().filter(|(first, _)| *first <= cp.rev);
    let old_snaps = listing.snaps.iter().filter(|(rev, _)| *rev < cp.rev);
    for (_, path) in old_wals.chain(old_snaps) {
        fs::remove_file(path).map_err(|e| StoreError::io(path, e))?;
    }
    sync_dir(dir)?;
    Ok(size)
}

/// Reads a standalone snapshot file (as written by `snapshot save`).
pub(crate) fn read_snapshot_file(path: &Path) -> Result<Mvcc> {
    read_snapshot(path, open_file(path)?)
}

/// The name a checkpoint at `rev` has inside a store directory.
pub(crate) fn checkpoint_path(dir: &Path, rev: Revision) -> PathBuf {
    dir.join(snap_name(rev))
}
