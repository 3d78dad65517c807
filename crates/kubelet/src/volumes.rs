//! Pod volumes on the node: emptyDir (disk, or tmpfs for `medium: Memory`), hostPath with
//! its type checks, and configMap, secret, downwardAPI and projected volumes written with
//! upstream's atomic writer (`..data` symlink swap), so running pods see updates whole.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::error::{IoError, VolumeError};

use k8s_openapi::api::core::v1::{
    ConfigMap, DownwardAPIVolumeFile, KeyToPath, Pod, Secret, Volume,
};
use kube::api::Api;

use crate::env;

/// The directory holding volume `name` of kind `plugin` for the pod (upstream:
/// `pods/UID/volumes/kubernetes.io~PLUGIN/NAME`).
pub fn volume_dir(pod_dir: &Path, plugin: &str, name: &str) -> PathBuf {
    pod_dir
        .join("volumes")
        .join(format!("kubernetes.io~{plugin}"))
        .join(name)
}

/// The plugin name of a volume, or None for unsupported sources.
pub fn plugin(v: &Volume) -> Option<&'static str> {
    Some(if v.empty_dir.is_some() {
        "empty-dir"
    } else if v.host_path.is_some() {
        "host-path"
    } else if v.config_map.is_some() {
        "configmap"
    } else if v.secret.is_some() {
        "secret"
    } else if v.downward_api.is_some() {
        "downward-api"
    } else if v.projected.is_some() {
        "projected"
    } else {
        return None;
    })
}

/// Where a volume is on the host (after `set_up`).
pub fn host_path(pod_dir: &Path, v: &Volume) -> Option<PathBuf> {
    if let Some(h) = &v.host_path {
        return Some(PathBuf::from(&h.path));
    }
    plugin(v).map(|p| volume_dir(pod_dir, p, &v.name))
}

/// Sets up (or refreshes) every volume of the pod; the error is the FailedMount message.
pub async fn set_up(ctx: &env::Context<'_>, pod_dir: &Path, pod: &Pod) -> Result<(), VolumeError> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    for v in pod
        .spec
        .as_ref()
        .and_then(|s| s.volumes.as_ref())
        .into_iter()
        .flatten()
    {
        set_up_one(ctx, pod_dir, ns, pod, v)
            .await
            .map_err(|e| VolumeError::SetUp {
                volume: v.name.clone(),
                source: Box::new(e),
            })?;
    }
    Ok(())
}

async fn set_up_one(
    ctx: &env::Context<'_>,
    pod_dir: &Path,
    ns: &str,
    pod: &Pod,
    v: &Volume,
) -> Result<(), VolumeError> {
    let Some(kind) = plugin(v) else {
        return Err("this volume type is not supported by rkube's kubelet yet".into());
    };
    let dir = volume_dir(pod_dir, kind, &v.name);
    if let Some(e) = &v.empty_dir {
        std::fs::create_dir_all(&dir).map_err(IoError::at("creating", &dir))?;
        if e.medium.as_deref() == Some("Memory") && !is_mount_point(&dir) {
            let size = e
                .size_limit
                .as_ref()
                .and_then(|q| rkube_api::quantity::parse_units(&q.0))
                .map(|b| format!(",size={b}"))
                .unwrap_or_default();
            mount_tmpfs(&dir, &format!("mode=0777{size}"))?;
        }
        let _ = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777));
        return Ok(());
    }
    if let Some(h) = &v.host_path {
        return host_path_check(Path::new(&h.path), h.type_.as_deref().unwrap_or(""));
    }
    let files = contents(ctx, ns, pod, v).await?;
    let Some((files, mode)) = files else {
        return Ok(());
    };
    write_atomic(&dir, &files, mode)
}

/// A file of a projected volume: relative path, bytes and mode.
type Files = BTreeMap<String, (Vec<u8>, u32)>;

/// The files a configMap/secret/downwardAPI/projected volume holds (None when an optional
/// source is missing and nothing should be written yet).
async fn contents(
    ctx: &env::Context<'_>,
    ns: &str,
    pod: &Pod,
    v: &Volume,
) -> Result<Option<(Files, u32)>, VolumeError> {
    let mut files = Files::new();
    if let Some(c) = &v.config_map {
        let mode = c.default_mode.unwrap_or(0o644) as u32;
        let optional = c.optional.unwrap_or(false);
        add_source(
            &mut files,
            ctx,
            ns,
            "configmap",
            &c.name,
            c.items.as_deref(),
            mode,
            optional,
        )
        .await?;
        return Ok(Some((files, mode)));
    }
    if let Some(s) = &v.secret {
        let mode = s.default_mode.unwrap_or(0o644) as u32;
        let name = s.secret_name.clone().unwrap_or_default();
        let optional = s.optional.unwrap_or(false);
        add_source(
            &mut files,
            ctx,
            ns,
            "secret",
            &name,
            s.items.as_deref(),
            mode,
            optional,
        )
        .await?;
        return Ok(Some((files, mode)));
    }
    if let Some(d) = &v.downward_api {
        let mode = d.default_mode.unwrap_or(0o644) as u32;
        add_downward(
            &mut files,
            ctx,
            pod,
            d.items.as_deref().unwrap_or(&[]),
            mode,
        )?;
        return Ok(Some((files, mode)));
    }
    if let Some(p) = &v.projected {
        let mode = p.default_mode.unwrap_or(0o644) as u32;
        for src in p.sources.iter().flatten() {
            if let Some(c) = &src.config_map {
                let optional = c.optional.unwrap_or(false);
                add_source(
                    &mut files,
                    ctx,
                    ns,
                    "configmap",
                    &c.name,
                    c.items.as_deref(),
                    mode,
                    optional,
                )
                .await?;
            }
            if let Some(s) = &src.secret {
                let optional = s.optional.unwrap_or(false);
                add_source(
                    &mut files,
                    ctx,
                    ns,
                    "secret",
                    &s.name,
                    s.items.as_deref(),
                    mode,
                    optional,
                )
                .await?;
            }
            if let Some(d) = &src.downward_api {
                add_downward(
                    &mut files,
                    ctx,
                    pod,
                    d.items.as_deref().unwrap_or(&[]),
                    mode,
                )?;
            }
            if src.service_account_token.is_some() {
                return Err(
                    "serviceAccountToken projections are not supported by rkube's kubelet yet"
                        .into(),
                );
            }
        }
        return Ok(Some((files, mode)));
    }
    Ok(None)
}

/// Adds the keys of the configMap or secret `name` (`kind` says which); a missing one is
/// an error unless optional.
#[allow(clippy::too_many_arguments)]
async fn add_source(
    files: &mut Files,
    ctx: &env::Context<'_>,
    ns: &str,
    kind: &str,
    name: &str,
    items: Option<&[KeyToPath]>,
    mode: u32,
    optional: bool,
) -> Result<(), VolumeError> {
    let data = if kind == "secret" {
        get::<Secret>(ctx.client, ns, name)
            .await?
            .map(|s| secret_data(&s))
    } else {
        get::<ConfigMap>(ctx.client, ns, name)
            .await?
            .map(|c| cm_data(&c))
    };
    match data {
        Some(d) => add_keys(files, d, items, mode, optional, name, kind),
        None if optional => Ok(()),
        None => Err(format!("{kind} {name:?} not found").into()),
    }
}

async fn get<K>(client: &kube::Client, ns: &str, name: &str) -> Result<Option<K>, VolumeError>
where
    K: kube::Resource<Scope = kube::core::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
    K::DynamicType: Default,
{
    Api::<K>::namespaced(client.clone(), ns)
        .get_opt(name)
        .await
        .map_err(|source| VolumeError::Read {
            name: name.into(),
            source,
        })
}

fn cm_data(cm: &ConfigMap) -> BTreeMap<String, Vec<u8>> {
    let mut m: BTreeMap<String, Vec<u8>> = cm
        .data
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.clone().into_bytes()))
        .collect();
    m.extend(
        cm.binary_data
            .iter()
            .flatten()
            .map(|(k, v)| (k.clone(), v.0.clone())),
    );
    m
}

fn secret_data(s: &Secret) -> BTreeMap<String, Vec<u8>> {
    let mut m: BTreeMap<String, Vec<u8>> = s
        .data
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.0.clone()))
        .collect();
    m.extend(
        s.string_data
            .iter()
            .flatten()
            .map(|(k, v)| (k.clone(), v.clone().into_bytes())),
    );
    m
}

/// All keys, or the listed items (a missing listed key fails unless optional).
fn add_keys(
    files: &mut Files,
    data: BTreeMap<String, Vec<u8>>,
    items: Option<&[KeyToPath]>,
    mode: u32,
    optional: bool,
    name: &str,
    what: &str,
) -> Result<(), VolumeError> {
    match items {
        None | Some([]) => {
            for (k, v) in data {
                files.insert(k, (v, mode));
            }
        }
        Some(items) => {
            for it in items {
                match data.get(&it.key) {
                    Some(v) => {
                        files.insert(
                            it.path.clone(),
                            (v.clone(), it.mode.map(|m| m as u32).unwrap_or(mode)),
                        );
                    }
                    None if optional => {}
                    None => {
                        return Err(format!(
                            "configuration error: key {:?} not found in {what} {name:?}",
                            it.key
                        )
                        .into())
                    }
                }
            }
        }
    }
    Ok(())
}

fn add_downward(
    files: &mut Files,
    ctx: &env::Context<'_>,
    pod: &Pod,
    items: &[DownwardAPIVolumeFile],
    mode: u32,
) -> Result<(), VolumeError> {
    for it in items {
        let value = if let Some(f) = &it.field_ref {
            env::field(pod, &f.field_path, ctx)?
        } else if let Some(r) = &it.resource_field_ref {
            let name = r.container_name.clone().unwrap_or_default();
            let c = crate::pod::find_container(pod, &name)
                .ok_or_else(|| format!("container {name:?} not found"))?;
            env::resource_field(
                c,
                &r.resource,
                r.divisor.as_ref().map(|d| d.0.as_str()),
                ctx,
            )?
        } else {
            continue;
        };
        files.insert(
            it.path.clone(),
            (
                value.into_bytes(),
                it.mode.map(|m| m as u32).unwrap_or(mode),
            ),
        );
    }
    Ok(())
}

/// Writes `files` into `dir` as upstream's atomic writer: a timestamped directory, the
/// `..data` symlink swapped to it in one rename, and one top-level symlink per path.
/// Nothing is rewritten when the content is unchanged.
pub fn write_atomic(dir: &Path, files: &Files, _mode: u32) -> Result<(), VolumeError> {
    let err = |what: &'static str, p: &Path, e: std::io::Error| IoError::at(what, p)(e);
    for path in files.keys() {
        if path.is_empty()
            || path.starts_with('/')
            || path.split('/').any(|c| c == ".." || c.is_empty())
            || path.starts_with("..")
        {
            return Err(format!("invalid path {path:?} in the volume").into());
        }
    }
    std::fs::create_dir_all(dir).map_err(|e| err("creating", dir, e))?;
    let data_link = dir.join("..data");
    let current = std::fs::read_link(&data_link).ok().map(|t| dir.join(t));
    if let Some(cur) = &current {
        if same_content(cur, files) {
            return Ok(());
        }
    }
    let stamp = format!(
        "..{}",
        jiff::Timestamp::now().strftime("%Y_%m_%d_%H_%M_%S.%f")
    );
    let ts_dir = dir.join(&stamp);
    std::fs::create_dir_all(&ts_dir).map_err(|e| err("creating", &ts_dir, e))?;
    let _ = std::fs::set_permissions(&ts_dir, std::fs::Permissions::from_mode(0o755));
    for (path, (bytes, mode)) in files {
        let p = ts_dir.join(path);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).map_err(|e| err("creating", parent, e))?;
        }
        std::fs::write(&p, bytes).map_err(|e| err("writing", &p, e))?;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(*mode & 0o7777))
            .map_err(|e| err("chmod", &p, e))?;
    }
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(&stamp, &tmp).map_err(|e| err("linking", &tmp, e))?;
    std::fs::rename(&tmp, &data_link).map_err(|e| err("renaming", &data_link, e))?;
    // Top-level names point through ..data; names no longer present go away.
    let tops: std::collections::BTreeSet<&str> = files
        .keys()
        .map(|p| p.split('/').next().unwrap_or(p))
        .collect();
    for top in &tops {
        let link = dir.join(top);
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(Path::new("..data").join(top), &link)
                .map_err(|e| err("linking", &link, e))?;
        }
    }
    for entry in std::fs::read_dir(dir)
        .map_err(|e| err("reading", dir, e))?
        .flatten()
    {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with("..") && !tops.contains(name.as_str()) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    if let Some(old) = current {
        if old != ts_dir {
            let _ = std::fs::remove_dir_all(old);
        }
    }
    Ok(())
}

fn same_content(dir: &Path, files: &Files) -> bool {
    let mut count = 0;
    for entry in walk(dir) {
        count += 1;
        let rel = entry
            .strip_prefix(dir)
            .map(|p| p.to_string_lossy().into_owned());
        let Ok(rel) = rel else { return false };
        let Some((bytes, mode)) = files.get(&rel) else {
            return false;
        };
        let same_mode = std::fs::metadata(&entry)
            .map(|m| m.permissions().mode() & 0o7777 == mode & 0o7777)
            .unwrap_or(false);
        if !same_mode || std::fs::read(&entry).ok().as_deref() != Some(bytes.as_slice()) {
            return false;
        }
    }
    count == files.len()
}

/// Regular files under `dir`, recursively.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        match e.file_type() {
            Ok(t) if t.is_dir() => out.extend(walk(&p)),
            Ok(_) => out.push(p),
            Err(_) => {}
        }
    }
    out
}

/// hostPath `type` checks (creating for DirectoryOrCreate and FileOrCreate).
fn host_path_check(p: &Path, kind: &str) -> Result<(), VolumeError> {
    use std::os::unix::fs::FileTypeExt;
    let meta = std::fs::metadata(p);
    let bad = |what: &str| {
        Err(format!(
            "hostPath type check failed: {} is not a {what}",
            p.display()
        )
        .into())
    };
    match kind {
        "" => Ok(()),
        "DirectoryOrCreate" => {
            if meta.is_err() {
                std::fs::create_dir_all(p).map_err(IoError::at("creating", p))?;
                let _ = std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755));
                return Ok(());
            }
            if meta.map(|m| m.is_dir()).unwrap_or(false) {
                Ok(())
            } else {
                bad("directory")
            }
        }
        "FileOrCreate" => {
            if meta.is_err() {
                if let Some(parent) = p.parent() {
                    let _ = std::fs::create_dir_all(parent);
                }
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .map_err(IoError::at("creating", p))?;
                let _ = std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o644));
                return Ok(());
            }
            if meta.map(|m| m.is_file()).unwrap_or(false) {
                Ok(())
            } else {
                bad("file")
            }
        }
        "Directory" => match meta {
            Ok(m) if m.is_dir() => Ok(()),
            Ok(_) => bad("directory"),
            Err(_) => Err(format!(
                "hostPath type check failed: {} is not a directory",
                p.display()
            )
            .into()),
        },
        "File" => match meta {
            Ok(m) if m.is_file() => Ok(()),
            _ => bad("file"),
        },
        "Socket" => match meta {
            Ok(m) if m.file_type().is_socket() => Ok(()),
            _ => bad("socket"),
        },
        "CharDevice" => match meta {
            Ok(m) if m.file_type().is_char_device() => Ok(()),
            _ => bad("character device"),
        },
        "BlockDevice" => match meta {
            Ok(m) if m.file_type().is_block_device() => Ok(()),
            _ => bad("block device"),
        },
        other => Err(format!("invalid hostPath type {other:?}").into()),
    }
}

/// Whether `p` is a mount point (its device differs from its parent's).
fn is_mount_point(p: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(p), p.parent().map(std::fs::metadata)) {
        (Ok(a), Some(Ok(b))) => a.dev() != b.dev(),
        _ => false,
    }
}

fn mount_tmpfs(dir: &Path, options: &str) -> Result<(), VolumeError> {
    use std::os::unix::ffi::OsStrExt;
    let target = std::ffi::CString::new(dir.as_os_str().as_bytes()).map_err(|e| e.to_string())?;
    let opts = std::ffi::CString::new(options).map_err(|e| e.to_string())?;
    // SAFETY: all pointers are NUL-terminated strings that outlive the call.
    let rc = unsafe {
        libc::mount(
            c"tmpfs".as_ptr(),
            target.as_ptr(),
            c"tmpfs".as_ptr(),
            0,
            opts.as_ptr() as *const libc::c_void,
        )
    };
    if rc != 0 {
        return Err(format!(
            "mounting tmpfs on {}: {}",
            dir.display(),
            std::io::Error::last_os_error()
        )
        .into());
    }
    Ok(())
}

/// Unmounts tmpfs volumes and removes the pod's directory.
pub fn tear_down(pod_dir: &Path) {
    let empty = pod_dir.join("volumes/kubernetes.io~empty-dir");
    for e in std::fs::read_dir(&empty).into_iter().flatten().flatten() {
        if is_mount_point(&e.path()) {
            use std::os::unix::ffi::OsStrExt;
            if let Ok(c) = std::ffi::CString::new(e.path().as_os_str().as_bytes()) {
                // SAFETY: a NUL-terminated path.
                unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
            }
        }
    }
    if let Err(e) = std::fs::remove_dir_all(pod_dir) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(dir = %pod_dir.display(), error = %e, "removing the pod directory");
        }
    }
}

/// The host path a volumeMount's `subPath` names inside the volume, refusing escapes.
pub fn sub_path(base: &Path, sub: &str) -> Result<PathBuf, VolumeError> {
    if sub.starts_with('/') || sub.split('/').any(|c| c == "..") {
        return Err(
            format!("invalid subPath {sub:?}: must be a relative path without '..'").into(),
        );
    }
    let p = base.join(sub);
    if std::fs::symlink_metadata(&p).is_err() {
        std::fs::create_dir_all(&p)
            .map_err(|e| format!("creating subPath {}: {e}", p.display()))?;
    }
    // A symlink inside the volume (configMap keys are) is resolved, but must stay in it.
    let real = std::fs::canonicalize(&p).map_err(|e| format!("subPath {sub:?}: {e}"))?;
    let root =
        std::fs::canonicalize(base).map_err(|e| format!("volume {}: {e}", base.display()))?;
    if !real.starts_with(&root) {
        return Err(format!("subPath {sub:?} leaves its volume").into());
    }
    Ok(real)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(pairs: &[(&str, &str)]) -> Files {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), (v.as_bytes().to_vec(), 0o644)))
            .collect()
    }

    #[test]
    fn atomic_writer_swaps_data_and_prunes_old_keys() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path().join("v");
        write_atomic(&d, &files(&[("a", "1"), ("dir/b", "2")]), 0o644).unwrap();
        assert_eq!(std::fs::read_to_string(d.join("a")).unwrap(), "1");
        assert_eq!(std::fs::read_to_string(d.join("dir/b")).unwrap(), "2");
        assert!(std::fs::symlink_metadata(d.join("a"))
            .unwrap()
            .file_type()
            .is_symlink());
        let first = std::fs::read_link(d.join("..data")).unwrap();
        // Unchanged content: no new generation.
        write_atomic(&d, &files(&[("a", "1"), ("dir/b", "2")]), 0o644).unwrap();
        assert_eq!(std::fs::read_link(d.join("..data")).unwrap(), first);
        write_atomic(&d, &files(&[("a", "3")]), 0o644).unwrap();
        assert_eq!(std::fs::read_to_string(d.join("a")).unwrap(), "3");
        assert!(
            std::fs::symlink_metadata(d.join("dir")).is_err(),
            "removed key pruned"
        );
        assert!(!d.join(&first).exists(), "the old generation is removed");
        assert!(write_atomic(&d, &files(&[("../x", "1")]), 0o644).is_err());
    }

    #[test]
    fn sub_paths_stay_inside_their_volume() {
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path().join("vol");
        std::fs::create_dir_all(&base).unwrap();
        assert!(sub_path(&base, "a/b").unwrap().ends_with("vol/a/b"));
        assert!(sub_path(&base, "../x").is_err());
        assert!(sub_path(&base, "/etc").is_err());
        std::os::unix::fs::symlink("/etc", base.join("out")).unwrap();
        assert!(sub_path(&base, "out").is_err());
    }

    #[test]
    fn host_path_types() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path().join("made");
        host_path_check(&d, "DirectoryOrCreate").unwrap();
        assert!(d.is_dir());
        let f = tmp.path().join("f");
        host_path_check(&f, "FileOrCreate").unwrap();
        assert!(f.is_file());
        assert!(host_path_check(&f, "Directory")
            .unwrap_err()
            .to_string()
            .contains("is not a directory"));
        assert!(host_path_check(&d, "File").is_err());
        assert!(host_path_check(&tmp.path().join("none"), "Directory").is_err());
        assert!(host_path_check(&d, "Weird").is_err());
    }
}
