//! Imports image tarballs: OCI image layouts (`index.json` + `blobs/`) and `docker save`
//! archives (`manifest.json` + layer tars), plain or gzip/zstd compressed, in one pass over
//! the archive. Every blob is checked against its digest before any name is written.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::oci::{self, Descriptor, Document, Index, Manifest};
use super::reference::Reference;
use super::unpack::decompress;
use super::{Image, ImageStore, Progress, ProgressFn};
use crate::digest::Digest;
use crate::{io_err, Error};

/// Small JSON files kept in memory while reading the archive.
const MAX_JSON: u64 = 16 << 20;

/// One entry of `docker save`'s `manifest.json`.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerSaveEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

/// Imports every image in the tarball at `path`; returns each name with its image.
pub fn import(
    store: &ImageStore,
    path: &Path,
    progress: ProgressFn,
) -> Result<Vec<(String, Image)>, Error> {
    let file = fs::File::open(path).map_err(io_err(path))?;
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    progress(Progress::Total(len));
    let counted = Counting {
        inner: file,
        progress,
    };
    let reader = decompress(counted).map_err(io_err(path))?;
    let mut archive = tar::Archive::new(reader);
    let what = path.display().to_string();
    let bad = |e: io::Error| Error::Format(format!("{what}: not a readable tar archive: {e}"));
    // Archive path → blob digest, for every file stored as a blob.
    let mut files: BTreeMap<String, (Digest, u64)> = BTreeMap::new();
    let mut json: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let content = store.content();
    let mut lease = store.temp_lease(&[])?;
    for entry in archive.entries().map_err(bad)? {
        let mut entry = entry.map_err(bad)?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let name = entry
            .path()
            .map_err(bad)?
            .to_string_lossy()
            .trim_start_matches("./")
            .to_string();
        let size = entry.size();
        if matches!(
            name.as_str(),
            "index.json" | "manifest.json" | "oci-layout" | "repositories"
        ) {
            if size > MAX_JSON {
                return Err(Error::Format(format!("{what}: {name} is too large")));
            }
            let mut b = Vec::with_capacity(size as usize);
            entry.read_to_end(&mut b).map_err(bad)?;
            json.insert(name, b);
            continue;
        }
        let expected = name
            .strip_prefix("blobs/sha256/")
            .map(|hex| Digest::parse(&format!("sha256:{hex}")))
            .transpose()?;
        let digest = match expected {
            Some(d) if content.has(&d) => d,
            Some(d) => {
                let mut w = content.ingest(&d)?;
                w.reset()?;
                io::copy(&mut entry, &mut w).map_err(bad)?;
                w.commit(&d).map_err(|e| match e {
                    Error::DigestMismatch {
                        expected, actual, ..
                    } => Error::DigestMismatch {
                        what: format!("{name} in {what}"),
                        expected,
                        actual,
                    },
                    e => e,
                })?;
                d
            }
            None => {
                let mut w = content.ingest_unknown()?;
                io::copy(&mut entry, &mut w).map_err(bad)?;
                w.commit_computed()?.0
            }
        };
        lease.hold(digest.clone())?;
        files.insert(name, (digest, size));
    }
    let mut out = Vec::new();
    if let Some(ix) = json.get("index.json") {
        let index: Index = serde_json::from_slice(ix)
            .map_err(|e| Error::Format(format!("{what}: index.json: {e}")))?;
        for desc in &index.manifests {
            let (index_digest, manifest) = resolve_platform(store, desc)?;
            let name = image_name(desc).unwrap_or_else(|| manifest.to_string());
            progress(Progress::Step(format!("unpacking {name}")));
            out.push((
                name.clone(),
                store.register(&name, index_digest, &manifest, progress)?,
            ));
        }
    } else if let Some(m) = json.get("manifest.json") {
        let entries: Vec<DockerSaveEntry> = serde_json::from_slice(m)
            .map_err(|e| Error::Format(format!("{what}: manifest.json: {e}")))?;
        for e in entries {
            let manifest = docker_manifest(store, &files, &e, &what)?;
            let names: Vec<String> = match &e.repo_tags {
                Some(tags) if !tags.is_empty() => tags
                    .iter()
                    .map(|t| Reference::parse(t).map(|r| r.to_string()))
                    .collect::<Result<_, _>>()?,
                _ => vec![manifest.to_string()],
            };
            for name in names {
                progress(Progress::Step(format!("unpacking {name}")));
                out.push((
                    name.clone(),
                    store.register(&name, None, &manifest, progress)?,
                ));
            }
        }
    } else {
        return Err(Error::Format(format!(
            "{what} is neither an OCI image layout (index.json) nor a docker save archive (manifest.json)"
        )));
    }
    Ok(out)
}

/// The manifest for this platform behind a descriptor (which may be an index).
fn resolve_platform(
    store: &ImageStore,
    desc: &Descriptor,
) -> Result<(Option<Digest>, Digest), Error> {
    let bytes = store.content().read(&desc.digest)?;
    match Document::parse(&desc.media_type, &bytes)? {
        Document::Manifest(_) => Ok((None, desc.digest.clone())),
        Document::Index(ix) => {
            let d = ix.for_host().ok_or_else(|| {
                Error::NotFound(format!(
                    "index {} has no image for this platform",
                    desc.digest
                ))
            })?;
            Ok((Some(desc.digest.clone()), d.digest.clone()))
        }
    }
}

/// The name an OCI layout gives a manifest: containerd's full-name annotation, else the
/// OCI ref name when it is a whole reference (a bare tag names nothing).
fn image_name(desc: &Descriptor) -> Option<String> {
    if let Some(n) = desc.annotations.get(oci::ANNOTATION_IMAGE_NAME) {
        return Reference::parse(n).ok().map(|r| r.to_string());
    }
    let n = desc.annotations.get(oci::ANNOTATION_REF_NAME)?;
    if n.contains('/') || n.contains(':') {
        Reference::parse(n).ok().map(|r| r.to_string())
    } else {
        None
    }
}

/// Writes an OCI manifest for a `docker save` entry (whose layers are plain files in the
/// archive) and returns its digest.
fn docker_manifest(
    store: &ImageStore,
    files: &BTreeMap<String, (Digest, u64)>,
    e: &DockerSaveEntry,
    what: &str,
) -> Result<Digest, Error> {
    let find = |p: &str| {
        files
            .get(p.trim_start_matches("./"))
            .cloned()
            .ok_or_else(|| {
                Error::Format(format!(
                    "{what}: manifest.json names {p}, which is not in the archive"
                ))
            })
    };
    let (config, config_size) = find(&e.config)?;
    let mut layers = Vec::new();
    for l in &e.layers {
        let (digest, size) = find(l)?;
        let mut head = [0u8; 4];
        let n = fs::File::open(store.content().path(&digest))
            .and_then(|mut f| f.read(&mut head))
            .unwrap_or(0);
        let media_type = if n >= 2 && head[..2] == [0x1f, 0x8b] {
            oci::DOCKER_LAYER_GZIP
        } else if n == 4 && head == [0x28, 0xb5, 0x2f, 0xfd] {
            oci::OCI_LAYER_ZSTD
        } else {
            oci::DOCKER_LAYER
        };
        layers.push(Descriptor {
            media_type: media_type.into(),
            digest,
            size,
            platform: None,
            annotations: Default::default(),
        });
    }
    let manifest = Manifest {
        schema_version: 2,
        media_type: Some(oci::DOCKER_MANIFEST.into()),
        config: Descriptor {
            media_type: oci::DOCKER_CONFIG.into(),
            digest: config,
            size: config_size,
            platform: None,
            annotations: Default::default(),
        },
        layers,
    };
    let bytes = serde_json::to_vec(&manifest).expect("manifest serializes");
    let d = Digest::of(&bytes);
    store.content().write(&d, &bytes)?;
    Ok(d)
}

/// Imports every image tarball in `dir` not imported before (k3s's air-gap directory):
/// files ending in .tar, .tar.gz, .tgz, .tar.zst. Remembers what it did by file name,
/// size and modification time. Returns the names imported.
pub fn import_dir(store: &ImageStore, dir: &Path) -> Result<Vec<String>, Error> {
    let Ok(rd) = fs::read_dir(dir) else {
        return Ok(Vec::new());
    };
    let seen_path = store.root().join("imported.json");
    let mut seen: BTreeMap<String, String> = fs::read(&seen_path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    let mut paths: Vec<PathBuf> = rd
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            let n = p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            [".tar", ".tar.gz", ".tgz", ".tar.zst"]
                .iter()
                .any(|s| n.ends_with(s))
        })
        .collect();
    paths.sort();
    let mut names = Vec::new();
    for p in paths {
        let stamp = fs::metadata(&p)
            .map(|m| {
                use std::os::unix::fs::MetadataExt;
                format!("{}:{}", m.len(), m.mtime())
            })
            .unwrap_or_default();
        let key = p.display().to_string();
        if seen.get(&key) == Some(&stamp) {
            continue;
        }
        match import(store, &p, &|_| {}) {
            Ok(imported) => {
                tracing::info!(file = %key, images = imported.len(), "imported image tarball");
                names.extend(imported.into_iter().map(|(n, _)| n));
                seen.insert(key, stamp);
            }
            Err(e) => tracing::warn!(file = %key, "cannot import image tarball: {e}"),
        }
    }
    let _ = fs::write(&seen_path, serde_json::to_vec_pretty(&seen).expect("json"));
    Ok(names)
}

/// Reports bytes read from the (compressed) file.
struct Counting<'a, R> {
    inner: R,
    progress: ProgressFn<'a>,
}

impl<R: Read> Read for Counting<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        (self.progress)(Progress::Bytes(n as u64));
        Ok(n)
    }
}
