//! The image service through a real CRI gRPC client, against real registries
//! (Debian's docker-registry on 127.0.0.1, with and without basic auth) and test images
//! built from busybox-static. Unpacking layers writes overlay whiteouts, so these need root.

use std::sync::Arc;

use k8s_cri::v1 as cri;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use rkube_runtime::cri::Runtime;
use rkube_runtime::Paths;
use rkube_testkit::images::{
    busybox_image, image_of, write_docker_save, write_oci_layout, Compression, Registry,
};
use tonic::Code;

fn root_or_skip(test: &str) -> bool {
    rkube_testkit::root_or_skip(test, "unpacking layers creates overlay whiteouts")
}

struct Cri {
    _dir: tempfile::TempDir,
    rt: Arc<Runtime>,
    images: ImageServiceClient<tonic::transport::Channel>,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl Drop for Cri {
    fn drop(&mut self) {
        // The runtime's (empty) volatile state under /run.
        let _ = std::fs::remove_dir_all(Paths::under(self._dir.path()).state);
    }
}

async fn start_cri() -> Cri {
    let dir = tempfile::tempdir().unwrap();
    let rt = Runtime::open(Paths::under(dir.path()), Default::default()).unwrap();
    let socket = dir.path().join("cri.sock");
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let (rt2, sock2) = (rt.clone(), socket.clone());
    tokio::spawn(async move {
        rkube_runtime::cri::serve(rt2, &sock2, async {
            let _ = rx.await;
        })
        .await
        .unwrap()
    });
    for _ in 0..100 {
        if socket.exists() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let channel = rkube_runtime::cri::connect(&socket).await.unwrap();
    Cri {
        _dir: dir,
        rt,
        images: ImageServiceClient::new(channel),
        _stop: tx,
    }
}

fn spec(image: &str) -> Option<cri::ImageSpec> {
    Some(cri::ImageSpec {
        image: image.into(),
        ..Default::default()
    })
}

async fn pull(
    c: &mut ImageServiceClient<tonic::transport::Channel>,
    image: &str,
    auth: Option<cri::AuthConfig>,
) -> Result<String, tonic::Status> {
    c.pull_image(cri::PullImageRequest {
        image: spec(image),
        auth,
        sandbox_config: None,
    })
    .await
    .map(|r| r.into_inner().image_ref)
}

async fn list(c: &mut ImageServiceClient<tonic::transport::Channel>) -> Vec<cri::Image> {
    c.list_images(cri::ListImagesRequest { filter: None })
        .await
        .unwrap()
        .into_inner()
        .images
}

/// The unpacked top layer has the image's marker and overlay whiteouts for the deletions.
fn check_snapshots(rt: &Runtime, name: &str, marker: &str) {
    use std::os::unix::fs::FileTypeExt;
    let rec = rt.images.resolve(name).unwrap().expect("image recorded");
    let lowers = rt.images.lower_dirs(&rec);
    assert_eq!(lowers.len(), 2);
    let top = &lowers[0];
    assert_eq!(
        std::fs::read_to_string(top.join("hello.txt")).unwrap(),
        format!("{marker}\n")
    );
    let wh = std::fs::symlink_metadata(top.join("etc/removed")).unwrap();
    assert!(
        wh.file_type().is_char_device(),
        "whiteout is a 0:0 char device"
    );
    let mut v = [0u8; 4];
    let p = std::ffi::CString::new(top.join("etc/opq").as_os_str().as_encoded_bytes()).unwrap();
    let n = unsafe {
        libc::lgetxattr(
            p.as_ptr(),
            c"trusted.overlay.opaque".as_ptr(),
            v.as_mut_ptr().cast(),
            v.len(),
        )
    };
    assert_eq!(&v[..n.max(0) as usize], b"y", "opaque directory marked");
    assert!(lowers[1].join("bin/busybox").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_anonymous_multiarch_zstd_and_corrupted() {
    if !root_or_skip("pull_anonymous_multiarch_zstd_and_corrupted") {
        return;
    }
    let reg = Registry::start(false).unwrap();
    let mut c = start_cri().await;
    let img = busybox_image("anonymous", Compression::Gzip).unwrap();
    reg.push("tests/busybox", "1.0", &img).unwrap();
    let name = format!("{}/tests/busybox:1.0", reg.host());

    // Not there yet: ImageStatus answers with no image, not an error.
    let st = c
        .images
        .image_status(cri::ImageStatusRequest {
            image: spec(&name),
            verbose: false,
        })
        .await
        .unwrap();
    assert!(st.into_inner().image.is_none());

    let id = pull(&mut c.images, &name, None).await.unwrap();
    assert_eq!(id, img.config_digest);
    let images = list(&mut c.images).await;
    assert_eq!(images.len(), 1);
    assert_eq!(images[0].repo_tags, vec![name.clone()]);
    assert_eq!(
        images[0].repo_digests,
        vec![format!(
            "{}/tests/busybox@{}",
            reg.host(),
            img.manifest_digest
        )]
    );
    let size: usize = img.layers.iter().map(|l| l.blob.len()).sum();
    assert_eq!(images[0].size, size as u64);
    check_snapshots(&c.rt, &name, "anonymous");
    // By digest and by ID prefix.
    let by_digest = format!("{}/tests/busybox@{}", reg.host(), img.manifest_digest);
    let st = c
        .images
        .image_status(cri::ImageStatusRequest {
            image: spec(&by_digest),
            verbose: false,
        })
        .await
        .unwrap();
    assert_eq!(st.into_inner().image.unwrap().id, img.config_digest);
    let st = c
        .images
        .image_status(cri::ImageStatusRequest {
            image: spec(&img.config_digest[7..20]),
            verbose: false,
        })
        .await
        .unwrap();
    assert_eq!(st.into_inner().image.unwrap().id, img.config_digest);

    // A multi-platform index resolves to this machine's image; zstd layers unpack.
    let arm = busybox_image("arm", Compression::Gzip).unwrap();
    let arm = image_of(arm.layers, "arm64");
    let amd = busybox_image("zstd", Compression::Zstd).unwrap();
    reg.push_index("tests/multi", "2.0", &[("arm64", &arm), ("amd64", &amd)])
        .unwrap();
    let multi = format!("{}/tests/multi:2.0", reg.host());
    assert_eq!(
        pull(&mut c.images, &multi, None).await.unwrap(),
        amd.config_digest
    );
    check_snapshots(&c.rt, &multi, "zstd");
    // The shared base layer is stored once: busybox is in both images but the gzip and
    // zstd blobs differ, while the unpacked base snapshot (same diff ID) is shared.
    let a = c.rt.images.resolve(&name).unwrap().unwrap();
    let b = c.rt.images.resolve(&multi).unwrap().unwrap();
    assert_eq!(a.chain[0], b.chain[0]);

    // A registry that serves a corrupted layer: refused by digest, nothing recorded.
    let bad = busybox_image("corrupt", Compression::Gzip).unwrap();
    reg.push("tests/bad", "1", &bad).unwrap();
    let blob = reg.blob_file(&bad.layers[1].digest);
    let mut bytes = std::fs::read(&blob).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&blob, bytes).unwrap();
    let err = pull(&mut c.images, &format!("{}/tests/bad:1", reg.host()), None)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::DataLoss, "{err:?}");
    assert!(
        err.message().contains("digest mismatch"),
        "{}",
        err.message()
    );
    assert_eq!(list(&mut c.images).await.len(), 2);

    // Unknown image: NotFound with the URL.
    let err = pull(&mut c.images, &format!("{}/tests/none:1", reg.host()), None)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");

    // Remove: the image, its names and its own layers go; the shared snapshot stays.
    c.images
        .remove_image(cri::RemoveImageRequest { image: spec(&name) })
        .await
        .unwrap();
    assert_eq!(list(&mut c.images).await.len(), 1);
    let snaps = c.rt.paths.images().join("snapshots");
    assert!(snaps.join(b.chain[0].hex()).exists());
    assert!(!snaps.join(a.chain[1].hex()).exists());
    assert!(!c.rt.images.content().has(&a.layers[1]));
    // Removing again is fine (CRI: idempotent).
    c.images
        .remove_image(cri::RemoveImageRequest { image: spec(&name) })
        .await
        .unwrap();
    let fs = c
        .images
        .image_fs_info(cri::ImageFsInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(fs.image_filesystems[0].used_bytes.as_ref().unwrap().value > 500_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_with_basic_auth() {
    if !root_or_skip("pull_with_basic_auth") {
        return;
    }
    let reg = Registry::start(true).unwrap();
    let mut c = start_cri().await;
    let img = busybox_image("private", Compression::Gzip).unwrap();
    reg.push("team/private", "v1", &img).unwrap();
    let name = format!("{}/team/private:v1", reg.host());
    let err = pull(&mut c.images, &name, None).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    assert!(
        err.message().contains("requires authentication"),
        "{}",
        err.message()
    );
    let wrong = cri::AuthConfig {
        username: "tester".into(),
        password: "wrong".into(),
        ..Default::default()
    };
    let err = pull(&mut c.images, &name, Some(wrong)).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    assert!(list(&mut c.images).await.is_empty());
    let (u, p) = reg.credentials.clone().unwrap();
    let ok = cri::AuthConfig {
        username: u.clone(),
        password: p.clone(),
        ..Default::default()
    };
    assert_eq!(
        pull(&mut c.images, &name, Some(ok)).await.unwrap(),
        img.config_digest
    );
    // The `auth` field (base64 user:password) works too.
    c.images
        .remove_image(cri::RemoveImageRequest { image: spec(&name) })
        .await
        .unwrap();
    use base64::Engine;
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"));
    let ok = cri::AuthConfig {
        auth,
        ..Default::default()
    };
    assert_eq!(
        pull(&mut c.images, &name, Some(ok)).await.unwrap(),
        img.config_digest
    );
    check_snapshots(&c.rt, &name, "private");
}

/// A registry that wants bearer tokens: the pull follows its challenge to the token
/// service with the credentials, then pulls with the token.
#[tokio::test]
async fn pull_with_token_auth() {
    if !root_or_skip("pull_with_token_auth") {
        return;
    }
    let open = Registry::start(false).unwrap();
    let img = busybox_image("tokened", Compression::Gzip).unwrap();
    open.push("team/tokened", "v1", &img).unwrap();
    let (reg, tokens) = Registry::start_token(&open).unwrap();
    let mut c = start_cri().await;
    let name = format!("{}/team/tokened:v1", reg.host());
    let err = pull(&mut c.images, &name, None).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    let wrong = cri::AuthConfig {
        username: "tester".into(),
        password: "wrong".into(),
        ..Default::default()
    };
    let err = pull(&mut c.images, &name, Some(wrong)).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    let asked = tokens.requests.load(std::sync::atomic::Ordering::SeqCst);
    assert!(asked >= 1, "the token service was asked");
    let (u, p) = reg.credentials.clone().unwrap();
    let ok = cri::AuthConfig {
        username: u,
        password: p,
        ..Default::default()
    };
    let got = pull(&mut c.images, &name, Some(ok)).await;
    assert_eq!(
        got.unwrap(),
        img.config_digest,
        "registry log: {}",
        reg.log()
    );
    assert!(tokens.requests.load(std::sync::atomic::Ordering::SeqCst) > asked);
    check_snapshots(&c.rt, &name, "tokened");
}

#[test]
fn import_layouts_and_reject_corruption() {
    if !root_or_skip("import_layouts_and_reject_corruption") {
        return;
    }
    use rkube_runtime::images::{import::import, ImageStore};
    let dir = tempfile::tempdir().unwrap();
    let store = ImageStore::open(&dir.path().join("store")).unwrap();
    let img = busybox_image("oci", Compression::Gzip).unwrap();
    let oci = dir.path().join("oci.tar");
    write_oci_layout(&img, "registry.example/app:1", &oci);
    let got = import(&store, &oci, &|_| {}).unwrap();
    assert_eq!(got[0].0, "registry.example/app:1");
    assert_eq!(got[0].1.id.as_str(), img.config_digest);

    let saved = busybox_image("docker", Compression::None).unwrap();
    let docker = dir.path().join("docker.tar");
    write_docker_save(&saved, "busybox:saved", &docker);
    let got = import(&store, &docker, &|_| {}).unwrap();
    assert_eq!(got[0].0, "docker.io/library/busybox:saved");
    assert_eq!(got[0].1.id.as_str(), saved.config_digest);
    assert_eq!(store.list().unwrap().len(), 2);
    assert_eq!(
        std::fs::read_to_string(
            store.lower_dirs(&store.resolve("busybox:saved").unwrap().unwrap())[0]
                .join("hello.txt")
        )
        .unwrap(),
        "docker\n"
    );

    // A compressed tarball (as k3s's air-gap directory takes them) imports the same.
    let gz_path = dir.path().join("images");
    std::fs::create_dir_all(&gz_path).unwrap();
    let other = busybox_image("gz", Compression::Gzip).unwrap();
    let plain = dir.path().join("plain.tar");
    write_oci_layout(&other, "registry.example/gz:1", &plain);
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut enc, &std::fs::read(&plain).unwrap()).unwrap();
    std::fs::write(gz_path.join("gz.tar.gz"), enc.finish().unwrap()).unwrap();
    let names = rkube_runtime::images::import::import_dir(&store, &gz_path).unwrap();
    assert_eq!(names, vec!["registry.example/gz:1".to_string()]);
    // Not imported twice.
    assert!(rkube_runtime::images::import::import_dir(&store, &gz_path)
        .unwrap()
        .is_empty());

    // A layout whose layer blob does not match its digest is refused, and names nothing.
    let bad = busybox_image("bad", Compression::Gzip).unwrap();
    let mut tampered = bad.clone();
    let n = tampered.layers[1].blob.len();
    tampered.layers[1].blob[n - 1] ^= 0xff; // the digest in the manifest stays the old one
    let bad_path = dir.path().join("bad.tar");
    write_oci_layout(&tampered, "registry.example/bad:1", &bad_path);
    let err = import(&store, &bad_path, &|_| {}).unwrap_err();
    assert!(err.to_string().contains("digest mismatch"), "{err}");
    assert!(store.resolve("registry.example/bad:1").unwrap().is_none());
    assert_eq!(store.list().unwrap().len(), 3);
    // Garbage in: a clear error, not a panic.
    let junk = dir.path().join("junk.tar");
    std::fs::write(&junk, b"this is not a tarball at all").unwrap();
    assert!(import(&store, &junk, &|_| {}).is_err());
}
