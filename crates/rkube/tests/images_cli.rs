//! `rkube images` and `rkube runtime`, run as a user would: imports of both tarball
//! formats, a pull with `docker login` credentials from a real registry, list and rm, and
//! the CRI runtime process keeping its images across a kill -9.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use k8s_cri::v1 as cri;
use rkube_testkit::images::{
    busybox_image, write_docker_save, write_oci_layout, Compression, Registry,
};

fn rkube(args: &[&str], env: &[(&str, &Path)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_rkube"));
    cmd.args(args).env("RKUBE_LOG", "warn");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    eprintln!(
        "rkube {}: {}\n{}{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn root_or_skip(test: &str) -> bool {
    rkube_testkit::root_or_skip(test, "unpacking layers creates overlay whiteouts")
}

#[test]
fn images_import_pull_list_rm() {
    if !root_or_skip("images_import_pull_list_rm") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let d = data.to_str().unwrap();
    let oci = dir.path().join("oci.tar");
    let saved = dir.path().join("saved.tar");
    write_oci_layout(
        &busybox_image("oci", Compression::Gzip).unwrap(),
        "example.com/tools/oci:1",
        &oci,
    );
    let docker_img = busybox_image("docker", Compression::None).unwrap();
    write_docker_save(&docker_img, "saved:2", &saved);
    let out = rkube(
        &[
            "images",
            "import",
            oci.to_str().unwrap(),
            saved.to_str().unwrap(),
            "--data-dir",
            d,
        ],
        &[],
    );
    assert!(out.status.success());
    assert!(stdout(&out).contains("imported example.com/tools/oci:1"));
    assert!(stdout(&out).contains("imported docker.io/library/saved:2"));

    // A pull with the credentials `docker login` would have written.
    let reg = Registry::start(true).unwrap();
    let img = busybox_image("pulled", Compression::Gzip).unwrap();
    reg.push("team/app", "3", &img).unwrap();
    let name = format!("{}/team/app:3", reg.host());
    let home = dir.path().join("home");
    std::fs::create_dir_all(home.join(".docker")).unwrap();
    let out = rkube(
        &["images", "pull", &name, "--data-dir", d],
        &[("HOME", &home)],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("requires authentication"));
    let (u, p) = reg.credentials.clone().unwrap();
    use base64::Engine;
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"));
    let cfg = serde_json::json!({"auths": {reg.host(): {"auth": auth}}});
    std::fs::write(home.join(".docker/config.json"), cfg.to_string()).unwrap();
    let out = rkube(
        &["images", "pull", &name, "--data-dir", d],
        &[("HOME", &home)],
    );
    assert!(out.status.success());
    assert!(stdout(&out).contains(&format!("pulled {name}")));

    let out = rkube(&["images", "list", "--data-dir", d], &[]);
    let listing = stdout(&out);
    let short = &img.config_digest[7..19];
    assert!(
        listing
            .lines()
            .any(|l| l.starts_with(&format!("{}/team/app ", reg.host()))
                && l.contains(" 3 ")
                && l.contains(short)),
        "{listing}"
    );
    assert!(listing.contains("docker.io/library/saved"), "{listing}");
    assert!(listing.contains("example.com/tools/oci"), "{listing}");

    let out = rkube(&["images", "rm", "saved:2", "--data-dir", d], &[]);
    assert!(out.status.success());
    let out = rkube(&["images", "rm", "saved:2", "--data-dir", d], &[]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no such image: saved:2"));
    let listing = stdout(&rkube(&["images", "list", "--data-dir", d], &[]));
    assert!(!listing.contains("saved"), "{listing}");
    assert_eq!(listing.lines().count(), 3, "{listing}");

    // Bad input: clear errors, no panic.
    let out = rkube(
        &["images", "pull", "Not/A/Valid:ref!", "--data-dir", d],
        &[],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid image reference"));
    let out = rkube(
        &["images", "import", "/nonexistent.tar", "--data-dir", d],
        &[],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent.tar"));
}

/// `rkube runtime` serves CRI; after kill -9 a new process serves the same images, and
/// tarballs dropped into DATA_DIR/agent/images are imported at start.
#[test]
fn runtime_process_survives_kill() {
    if !root_or_skip("runtime_process_survives_kill") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let airgap = data.join("agent/images");
    std::fs::create_dir_all(&airgap).unwrap();
    let img = busybox_image("airgap", Compression::Gzip).unwrap();
    write_oci_layout(&img, "example.com/airgap:1", &airgap.join("airgap.tar"));
    let socket = dir.path().join("cri.sock");
    let start = || {
        Command::new(env!("CARGO_BIN_EXE_rkube"))
            .args([
                "runtime",
                "--data-dir",
                data.to_str().unwrap(),
                "--socket",
                socket.to_str().unwrap(),
            ])
            .env("RKUBE_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .unwrap()
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let images = |rt: &tokio::runtime::Runtime| {
        rt.block_on(async {
            let mut ch = None;
            for _ in 0..200 {
                if let Ok(c) = rkube_runtime::cri::connect(&socket).await {
                    let mut v =
                        k8s_cri::v1::runtime_service_client::RuntimeServiceClient::new(c.clone());
                    if let Ok(r) = v.version(cri::VersionRequest::default()).await {
                        assert_eq!(r.into_inner().runtime_name, "rkube");
                        ch = Some(c);
                        break;
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let mut c = k8s_cri::v1::image_service_client::ImageServiceClient::new(
                ch.expect("runtime answers on its socket"),
            );
            let list = c
                .list_images(cri::ListImagesRequest { filter: None })
                .await
                .unwrap()
                .into_inner()
                .images;
            list.into_iter()
                .flat_map(|i| i.repo_tags)
                .collect::<Vec<_>>()
        })
    };
    let mut child = start();
    assert_eq!(images(&rt), vec!["example.com/airgap:1".to_string()]);
    // kill -9, then a new process.
    child.kill().unwrap();
    child.wait().unwrap();
    let mut child = start();
    assert_eq!(images(&rt), vec!["example.com/airgap:1".to_string()]);
    // SIGTERM stops it cleanly.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
}
