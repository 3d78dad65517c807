//! Unpacks a layer into its own snapshot directory in overlayfs's format: files as they
//! are, `.wh.NAME` whiteouts as 0:0 character devices, `.wh..wh..opq` as the
//! `trusted.overlay.opaque` attribute. A container's root is then these directories
//! stacked as overlay lower layers.

use std::ffi::CString;
use std::fs;
use std::io::{self, BufRead, BufReader, Read};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use crate::digest::{Digest, HashingReader};
use crate::{io_err, Error};

const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE: &str = ".wh..wh..opq";

/// Wraps `r` in the right decompressor by its magic bytes (gzip, zstd, or plain tar), so
/// mislabelled media types still unpack.
pub fn decompress<'a, R: Read + 'a>(r: R) -> io::Result<Box<dyn Read + 'a>> {
    let mut r = BufReader::with_capacity(1 << 16, r);
    let head = r.fill_buf()?;
    Ok(if head.starts_with(&[0x1f, 0x8b]) {
        Box::new(flate2::bufread::MultiGzDecoder::new(r))
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Box::new(zstd::stream::read::Decoder::with_buffer(r)?)
    } else {
        Box::new(r)
    })
}

/// Unpacks the layer blob at `blob` into `dst` (created), checking that the uncompressed
/// stream has digest `diff_id`. Returns the uncompressed size.
pub fn unpack_layer(blob: &Path, diff_id: &Digest, dst: &Path) -> Result<u64, Error> {
    let file = fs::File::open(blob).map_err(io_err(blob))?;
    let reader = decompress(file).map_err(io_err(blob))?;
    let mut hashing = HashingReader::new(reader);
    fs::create_dir_all(dst).map_err(io_err(dst))?;
    {
        let mut archive = tar::Archive::new(&mut hashing);
        archive.set_preserve_permissions(true);
        archive.set_preserve_ownerships(true);
        archive.set_preserve_mtime(true);
        archive.set_unpack_xattrs(true);
        archive.set_overwrite(true);
        let entries = archive
            .entries()
            .map_err(|e| Error::Format(format!("layer {diff_id}: {e}")))?;
        for entry in entries {
            let mut entry = entry.map_err(|e| Error::Format(format!("layer {diff_id}: {e}")))?;
            let path = entry
                .path()
                .map_err(|e| Error::Format(format!("layer {diff_id}: {e}")))?
                .into_owned();
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
            match name.as_deref() {
                Some(OPAQUE) => {
                    let dir = safe_join(dst, path.parent().unwrap_or(Path::new("")))?;
                    fs::create_dir_all(&dir).map_err(io_err(&dir))?;
                    set_xattr(&dir, "trusted.overlay.opaque", b"y")?;
                }
                Some(n) if n.starts_with(WHITEOUT_PREFIX) => {
                    let parent = safe_join(dst, path.parent().unwrap_or(Path::new("")))?;
                    fs::create_dir_all(&parent).map_err(io_err(&parent))?;
                    whiteout(&parent.join(&n[WHITEOUT_PREFIX.len()..]))?;
                }
                _ => {
                    safe_join(dst, path.parent().unwrap_or(Path::new("")))?;
                    entry.unpack_in(dst).map_err(|e| {
                        Error::Format(format!(
                            "layer {diff_id}: unpacking {}: {}",
                            path.display(),
                            chain(&e)
                        ))
                    })?;
                }
            }
        }
    }
    let (actual, size) = hashing.finish().map_err(io_err(blob))?;
    if &actual != diff_id {
        return Err(Error::DigestMismatch {
            what: format!("uncompressed layer {}", blob.display()),
            expected: diff_id.clone(),
            actual,
        });
    }
    Ok(size)
}

/// An error with its causes (tar wraps the useful part).
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// `root/rel`, refusing `..`, and any symlink on the way (a layer must not reach outside
/// its directory through a link it created itself).
fn safe_join(root: &Path, rel: &Path) -> Result<PathBuf, Error> {
    let mut out = root.to_path_buf();
    for c in rel.components() {
        match c {
            Component::Normal(part) => {
                out.push(part);
                if fs::symlink_metadata(&out).is_ok_and(|m| m.file_type().is_symlink()) {
                    return Err(Error::Format(format!(
                        "layer entry {} goes through a symbolic link",
                        rel.display()
                    )));
                }
            }
            Component::CurDir | Component::RootDir => {}
            Component::ParentDir | Component::Prefix(_) => {
                return Err(Error::Format(format!(
                    "layer entry {} leaves the layer",
                    rel.display()
                )))
            }
        }
    }
    Ok(out)
}

fn cpath(p: &Path) -> Result<CString, Error> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| Error::Format(format!("path with NUL: {}", p.display())))
}

/// An overlayfs whiteout: a character device 0:0 hiding `path` in lower layers.
fn whiteout(path: &Path) -> Result<(), Error> {
    let _ = fs::remove_file(path);
    let _ = fs::remove_dir_all(path);
    let c = cpath(path)?;
    // SAFETY: mknod with a valid NUL-terminated path.
    if unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR, 0) } != 0 {
        return Err(Error::Io(
            format!("whiteout {} (unpacking layers needs root)", path.display()),
            io::Error::last_os_error(),
        ));
    }
    Ok(())
}

fn set_xattr(path: &Path, name: &str, value: &[u8]) -> Result<(), Error> {
    let c = cpath(path)?;
    let n = CString::new(name).expect("static name");
    // SAFETY: valid C strings and a value buffer of the given length.
    let rc = unsafe {
        libc::lsetxattr(
            c.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if rc != 0 {
        return Err(Error::Io(
            format!("setting {name} on {}", path.display()),
            io::Error::last_os_error(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileTypeExt;

    fn layer(entries: &[(&str, Option<&[u8]>)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, data) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(0);
            match data {
                Some(d) => {
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_size(d.len() as u64);
                    h.set_mode(0o644);
                    b.append_data(&mut h, path, *d).unwrap();
                }
                None => {
                    h.set_entry_type(tar::EntryType::Directory);
                    h.set_size(0);
                    h.set_mode(0o755);
                    b.append_data(&mut h, path, &[][..]).unwrap();
                }
            }
        }
        b.into_inner().unwrap()
    }

    #[test]
    fn whiteouts_and_digest() {
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("SKIPPED whiteouts_and_digest: needs root (mknod of whiteouts)");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let tar = layer(&[
            ("etc/", None),
            ("etc/keep", Some(b"k")),
            ("etc/.wh.gone", Some(b"")),
            ("var/.wh..wh..opq", Some(b"")),
        ]);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &tar).unwrap();
        let blob = dir.path().join("blob");
        fs::write(&blob, gz.finish().unwrap()).unwrap();
        let dst = dir.path().join("fs");
        unpack_layer(&blob, &Digest::of(&tar), &dst).unwrap();
        assert_eq!(fs::read(dst.join("etc/keep")).unwrap(), b"k");
        let wh = fs::symlink_metadata(dst.join("etc/gone")).unwrap();
        assert!(wh.file_type().is_char_device());
        assert!(!dst.join("etc/.wh.gone").exists());
        // A wrong diff ID is refused.
        let err = unpack_layer(&blob, &Digest::of(b"x"), &dir.path().join("fs2")).unwrap_err();
        assert!(matches!(err, Error::DigestMismatch { .. }), "{err}");
    }

    #[test]
    fn refuses_escapes() {
        let root = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("/etc", root.path().join("link")).unwrap();
        assert!(safe_join(root.path(), Path::new("link/x")).is_err());
        assert!(safe_join(root.path(), Path::new("../x")).is_err());
        assert!(safe_join(root.path(), Path::new("/a/b")).is_ok());
    }
}
