//! The image store: named images over a content store, each layer unpacked once into a
//! snapshot shared by every image that has it.
//!
//! Layout under the store's root:
//! - `content/blobs/sha256/<hex>`: manifests, configs, layers (as pulled: compressed)
//! - `snapshots/<chain-id hex>/`: each layer unpacked (overlay lower directories)
//! - `images.json`: name → image record, replaced atomically under `images.lock`
//! - `leases/<holder>`: snapshots in use by containers (kept by garbage collection)

pub mod content;
pub mod import;
pub mod oci;
pub mod reference;
pub mod registry;
pub mod unpack;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::{io_err, Error};
use content::ContentStore;
use oci::{Document, ImageConfig, Manifest};
use reference::Reference;

/// One name's record: what it points at and what unpacking it produced.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ImageRecord {
    /// The normalized reference (`docker.io/library/busybox:latest`), or the manifest
    /// digest for an image imported without a name.
    pub name: String,
    /// The index the manifest was chosen from, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<Digest>,
    /// The platform manifest.
    pub manifest: Digest,
    /// The config digest: the image ID.
    pub id: Digest,
    /// Compressed layer digests, bottom first.
    pub layers: Vec<Digest>,
    /// Snapshot chain IDs, bottom first.
    pub chain: Vec<Digest>,
    /// Sum of the layer blobs' sizes (what CRI reports as an image's size).
    pub size: u64,
}

/// An image as CRI shows it: one ID with all the names that point at it.
#[derive(Clone, Debug, PartialEq)]
pub struct Image {
    /// The image ID (its config's digest).
    pub id: Digest,
    /// `domain/path:tag`
    pub repo_tags: Vec<String>,
    /// `domain/path@manifest-digest`
    pub repo_digests: Vec<String>,
    /// Bytes of its layers.
    pub size: u64,
}

/// Progress of long work (pulls, imports), for progress bars.
#[derive(Clone, Debug)]
pub enum Progress {
    /// Bytes to fetch in total (layers not yet present), once known.
    Total(u64),
    /// More bytes arrived.
    Bytes(u64),
    /// A step, for the log line under the bar.
    Step(String),
}

/// Where progress goes; `&|_| {}` ignores it.
pub type ProgressFn<'a> = &'a (dyn Fn(Progress) + Send + Sync);

/// The image store (see the module docs for its layout).
#[derive(Clone, Debug)]
pub struct ImageStore {
    root: PathBuf,
    content: ContentStore,
}

type Records = BTreeMap<String, ImageRecord>;

impl ImageStore {
    /// Opens (creating) the store under `root`.
    pub fn open(root: &Path) -> Result<ImageStore, Error> {
        for d in ["snapshots", "leases"] {
            let p = root.join(d);
            fs::create_dir_all(&p).map_err(io_err(&p))?;
        }
        let content = ContentStore::open(&root.join("content"))?;
        let store = ImageStore {
            root: root.into(),
            content,
        };
        store.prune_dead();
        Ok(store)
    }

    /// Removes temporary leases and half-unpacked snapshots of processes that died.
    fn prune_dead(&self) {
        for dir in ["leases", "snapshots"] {
            let Ok(rd) = fs::read_dir(self.root.join(dir)) else {
                continue;
            };
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let Some(pid) = name.strip_prefix("tmp-").and_then(|r| r.split('-').next()) else {
                    continue;
                };
                if !Path::new("/proc").join(pid).exists() {
                    let _ = fs::remove_dir_all(e.path());
                    let _ = fs::remove_file(e.path());
                }
            }
        }
    }

    /// The store's directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The blobs.
    pub fn content(&self) -> &ContentStore {
        &self.content
    }

    fn records(&self) -> Result<Records, Error> {
        let p = self.root.join("images.json");
        match fs::read(&p) {
            Ok(b) => serde_json::from_slice(&b)
                .map_err(|e| Error::Format(format!("{}: {e}", p.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Records::new()),
            Err(e) => Err(Error::Io(p.display().to_string(), e)),
        }
    }

    /// Runs `f` on the records under the store's lock and saves them atomically.
    fn update<T>(&self, f: impl FnOnce(&mut Records) -> Result<T, Error>) -> Result<T, Error> {
        let lock_path = self.root.join("images.lock");
        let lock = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_err(&lock_path))?;
        // SAFETY: flock on a descriptor we own; released when `lock` closes.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(Error::Io(
                lock_path.display().to_string(),
                std::io::Error::last_os_error(),
            ));
        }
        let mut records = self.records()?;
        let out = f(&mut records)?;
        let p = self.root.join("images.json");
        let tmp = self.root.join("images.json.tmp");
        let bytes = serde_json::to_vec_pretty(&records).expect("records serialize");
        fs::write(&tmp, bytes).map_err(io_err(&tmp))?;
        fs::File::open(&tmp)
            .and_then(|f| f.sync_all())
            .map_err(io_err(&tmp))?;
        fs::rename(&tmp, &p).map_err(io_err(&p))?;
        Ok(out)
    }

    /// Names `name` the image whose manifest (and config and layers) are in the content
    /// store, unpacking its layers into snapshots first. The one path by which pulls and
    /// imports make an image visible.
    pub fn register(
        &self,
        name: &str,
        index: Option<Digest>,
        manifest_digest: &Digest,
        progress: ProgressFn,
    ) -> Result<Image, Error> {
        let manifest = self.manifest(manifest_digest)?;
        let config = self.config_of(&manifest)?;
        if config.rootfs.diff_ids.len() != manifest.layers.len() {
            return Err(Error::Format(format!(
                "image {name}: config lists {} layers, manifest {}",
                config.rootfs.diff_ids.len(),
                manifest.layers.len()
            )));
        }
        let chain = oci::chain_ids(&config.rootfs.diff_ids);
        let mut held = chain.clone();
        held.extend(index.iter().cloned());
        held.extend([manifest_digest.clone(), manifest.config.digest.clone()]);
        held.extend(manifest.layers.iter().map(|l| l.digest.clone()));
        let _lease = self.temp_lease(&held)?;
        for ((layer, diff_id), chain_id) in manifest
            .layers
            .iter()
            .zip(&config.rootfs.diff_ids)
            .zip(&chain)
        {
            let dir = self.snapshot_dir(chain_id);
            if dir.exists() {
                continue;
            }
            progress(Progress::Step(format!("unpacking {}", layer.digest)));
            let tmp = self.root.join("snapshots").join(format!(
                "tmp-{}-{}",
                std::process::id(),
                chain_id.hex()
            ));
            let _ = fs::remove_dir_all(&tmp);
            let res = unpack::unpack_layer(&self.content.path(&layer.digest), diff_id, &tmp);
            if let Err(e) = res {
                let _ = fs::remove_dir_all(&tmp);
                return Err(e);
            }
            if let Err(e) = fs::rename(&tmp, &dir) {
                let _ = fs::remove_dir_all(&tmp);
                if !dir.exists() {
                    return Err(Error::Io(dir.display().to_string(), e));
                }
            }
        }
        let record = ImageRecord {
            name: name.to_string(),
            index,
            manifest: manifest_digest.clone(),
            id: manifest.config.digest.clone(),
            layers: manifest.layers.iter().map(|l| l.digest.clone()).collect(),
            chain,
            size: manifest.layers.iter().map(|l| l.size).sum(),
        };
        let id = record.id.clone();
        self.update(|records| {
            records.insert(name.to_string(), record);
            Ok(())
        })?;
        self.status(id.as_str())?
            .ok_or_else(|| Error::NotFound(format!("image {name} vanished")))
    }

    /// Reads a manifest blob (an index here is an error: callers resolve it first).
    pub fn manifest(&self, d: &Digest) -> Result<Manifest, Error> {
        match Document::parse("", &self.content.read(d)?)? {
            Document::Manifest(m) => Ok(m),
            Document::Index(_) => Err(Error::Format(format!("{d} is an index, not a manifest"))),
        }
    }

    fn config_of(&self, m: &Manifest) -> Result<ImageConfig, Error> {
        let bytes = self.content.read(&m.config.digest)?;
        serde_json::from_slice(&bytes)
            .map_err(|e| Error::Format(format!("image config {}: {e}", m.config.digest)))
    }

    /// The image config of an image ID.
    pub fn config(&self, id: &Digest) -> Result<ImageConfig, Error> {
        let bytes = self.content.read(id)?;
        serde_json::from_slice(&bytes).map_err(|e| Error::Format(format!("image config {id}: {e}")))
    }

    fn snapshot_dir(&self, chain_id: &Digest) -> PathBuf {
        self.root.join("snapshots").join(chain_id.hex())
    }

    /// Every image, one entry per ID.
    pub fn list(&self) -> Result<Vec<Image>, Error> {
        let records = self.records()?;
        let mut by_id: BTreeMap<Digest, Image> = BTreeMap::new();
        for r in records.values() {
            let img = by_id.entry(r.id.clone()).or_insert_with(|| Image {
                id: r.id.clone(),
                repo_tags: Vec::new(),
                repo_digests: Vec::new(),
                size: r.size,
            });
            if let Ok(reference) = Reference::parse(&r.name) {
                if let Some(t) = reference.tagged() {
                    img.repo_tags.push(t);
                }
                let d = reference.with_digest(&r.manifest);
                if !img.repo_digests.contains(&d) {
                    img.repo_digests.push(d);
                }
            }
        }
        Ok(by_id.into_values().collect())
    }

    /// The record a reference or image ID names: an exact name, a normalized reference,
    /// `repo@digest` by manifest digest, or an image ID (`sha256:…`, or a unique hex
    /// prefix of at least 12 characters).
    pub fn resolve(&self, s: &str) -> Result<Option<ImageRecord>, Error> {
        let records = self.records()?;
        Ok(Self::find(&records, s).map(|n| records[&n].clone()))
    }

    fn find(records: &Records, s: &str) -> Option<String> {
        if records.contains_key(s) {
            return Some(s.to_string());
        }
        let hex = s.strip_prefix("sha256:").unwrap_or(s);
        if hex.len() >= 12 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            let mut hits = records.values().filter(|r| r.id.hex().starts_with(hex));
            if let Some(r) = hits.next() {
                let id = r.id.clone();
                if hits.all(|o| o.id == id) {
                    return Some(r.name.clone());
                }
            }
        }
        let reference = Reference::parse(s).ok()?;
        if records.contains_key(&reference.to_string()) {
            return Some(reference.to_string());
        }
        if let Some(d) = &reference.digest {
            let repo = reference.repository();
            return records
                .values()
                .find(|r| &r.manifest == d && r.name.starts_with(&repo))
                .map(|r| r.name.clone());
        }
        None
    }

    /// The image a reference or ID names.
    pub fn status(&self, s: &str) -> Result<Option<Image>, Error> {
        let Some(r) = self.resolve(s)? else {
            return Ok(None);
        };
        Ok(self.list()?.into_iter().find(|i| i.id == r.id))
    }

    /// Removes the image `s` names, with all its names (as CRI's RemoveImage), then its
    /// blobs and snapshots unless another image or a container still uses them. Returns
    /// whether there was such an image.
    pub fn remove(&self, s: &str) -> Result<bool, Error> {
        let removed = self.update(|records| {
            let Some(name) = Self::find(records, s) else {
                return Ok(false);
            };
            let id = records[&name].id.clone();
            records.retain(|_, r| r.id != id);
            Ok(true)
        })?;
        if removed {
            self.gc()?;
        }
        Ok(removed)
    }

    /// Keeps blobs and snapshots (by digest or chain ID) from garbage collection while
    /// `holder` (a container) uses them.
    pub fn lease(&self, holder: &str, digests: &[Digest]) -> Result<(), Error> {
        let p = self.root.join("leases").join(holder);
        let list: Vec<&str> = digests.iter().map(|d| d.as_str()).collect();
        fs::write(&p, serde_json::to_vec(&list).expect("json")).map_err(io_err(&p))
    }

    /// Drops `holder`'s lease.
    pub fn release(&self, holder: &str) {
        let _ = fs::remove_file(self.root.join("leases").join(holder));
    }

    /// A lease for the length of a pull or import, released on drop.
    pub fn temp_lease(&self, digests: &[Digest]) -> Result<TempLease, Error> {
        use std::sync::atomic::{AtomicU64, Ordering};
        static N: AtomicU64 = AtomicU64::new(0);
        let holder = format!(
            "tmp-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        self.lease(&holder, digests)?;
        Ok(TempLease {
            store: self.clone(),
            holder,
            digests: digests.to_vec(),
        })
    }

    /// The snapshot directories of an image, top layer first (overlay's lowerdir order).
    pub fn lower_dirs(&self, record: &ImageRecord) -> Vec<PathBuf> {
        record
            .chain
            .iter()
            .rev()
            .map(|c| self.snapshot_dir(c))
            .collect()
    }

    /// Deletes blobs and snapshots that no image or lease refers to.
    pub fn gc(&self) -> Result<(), Error> {
        self.update(|records| {
            let mut blobs: BTreeSet<Digest> = BTreeSet::new();
            let mut snaps: BTreeSet<Digest> = BTreeSet::new();
            for r in records.values() {
                blobs.extend(r.index.iter().cloned());
                blobs.insert(r.manifest.clone());
                blobs.insert(r.id.clone());
                blobs.extend(r.layers.iter().cloned());
                snaps.extend(r.chain.iter().cloned());
            }
            if let Ok(rd) = fs::read_dir(self.root.join("leases")) {
                for e in rd.flatten() {
                    let held: Vec<Digest> = fs::read(e.path())
                        .ok()
                        .and_then(|b| serde_json::from_slice(&b).ok())
                        .unwrap_or_default();
                    blobs.extend(held.iter().cloned());
                    snaps.extend(held);
                }
            }
            for d in self.content.list() {
                if !blobs.contains(&d) {
                    self.content.remove(&d);
                }
            }
            if let Ok(rd) = fs::read_dir(self.root.join("snapshots")) {
                for e in rd.flatten() {
                    let name = e.file_name().to_string_lossy().into_owned();
                    // tmp-* are layers being unpacked right now.
                    let keep = name.starts_with("tmp-")
                        || Digest::parse(&format!("sha256:{name}"))
                            .is_ok_and(|d| snaps.contains(&d));
                    if !keep {
                        let _ = fs::remove_dir_all(e.path());
                    }
                }
            }
            Ok(())
        })
    }

    /// Bytes and inodes the store uses (the kubelet's image GC reads this).
    pub fn usage(&self) -> (u64, u64) {
        fn walk(p: &Path, acc: &mut (u64, u64)) {
            let Ok(rd) = fs::read_dir(p) else { return };
            for e in rd.flatten() {
                let Ok(m) = e.path().symlink_metadata() else {
                    continue;
                };
                acc.1 += 1;
                if m.is_dir() {
                    walk(&e.path(), acc);
                } else {
                    use std::os::unix::fs::MetadataExt;
                    acc.0 += m.blocks() * 512;
                }
            }
        }
        let mut acc = (0, 0);
        walk(&self.root, &mut acc);
        acc
    }
}

/// A lease released when dropped.
pub struct TempLease {
    store: ImageStore,
    holder: String,
    digests: Vec<Digest>,
}

impl TempLease {
    /// Adds a digest to the lease.
    pub fn hold(&mut self, d: Digest) -> Result<(), Error> {
        self.digests.push(d);
        self.store.lease(&self.holder, &self.digests)
    }
}

impl Drop for TempLease {
    fn drop(&mut self) {
        self.store.release(&self.holder);
    }
}
