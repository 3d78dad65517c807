//! Test images built from Debian's `busybox-static` (there is no internet here), written as
//! OCI-layout and `docker save` tarballs, and a real registry (Debian's `docker-registry`)
//! on 127.0.0.1 to push them to.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::json;

/// The static busybox binary (`BUSYBOX_BIN`, else Debian's `busybox-static`).
pub fn busybox_binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("BUSYBOX_BIN") {
        return Some(PathBuf::from(p));
    }
    ["/bin/busybox", "/usr/bin/busybox"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

/// `sha256:<hex>` of `bytes`.
pub fn sha256(bytes: &[u8]) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, bytes);
    let hex: String = d.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// How a layer blob is compressed.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Compression {
    /// A plain tar.
    None,
    /// gzip, as most registries serve layers.
    Gzip,
    /// zstd.
    Zstd,
}

/// A layer: its blob as stored in registries and layouts, and its uncompressed digest.
#[derive(Clone, Debug)]
pub struct Layer {
    /// The OCI media type of the blob.
    pub media_type: &'static str,
    /// The compressed blob.
    pub blob: Vec<u8>,
    /// The blob's digest.
    pub digest: String,
    /// The uncompressed tar's digest.
    pub diff_id: String,
    /// The uncompressed tar (what `docker save` stores).
    pub tar: Vec<u8>,
}

/// An image: config, layers and the OCI manifest over them.
#[derive(Clone, Debug)]
pub struct TestImage {
    /// The image config JSON.
    pub config: Vec<u8>,
    /// Its digest.
    pub config_digest: String,
    /// The layers, bottom first.
    pub layers: Vec<Layer>,
    /// The OCI manifest JSON.
    pub manifest: Vec<u8>,
    /// Its digest.
    pub manifest_digest: String,
}

/// Applets linked in the busybox image's /bin.
const APPLETS: &[&str] = &[
    "sh", "ls", "cat", "echo", "sleep", "httpd", "wget", "hostname", "ip", "ps", "kill", "true",
    "false", "env", "mkdir", "rm", "id", "printf", "head", "tail", "test", "grep", "sed", "nc",
    "dd", "seq", "date", "uname", "mount", "nslookup", "touch", "stat", "wc", "tar", "tty", "stty",
];

struct TarBuilder(tar::Builder<Vec<u8>>);

impl TarBuilder {
    fn new() -> Self {
        TarBuilder(tar::Builder::new(Vec::new()))
    }
    fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(size);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        h
    }
    fn dir(&mut self, path: &str) {
        let mut h = Self::header(tar::EntryType::Directory, 0o755, 0);
        self.0.append_data(&mut h, path, &[][..]).expect("tar dir");
    }
    fn file(&mut self, path: &str, mode: u32, data: &[u8]) {
        let mut h = Self::header(tar::EntryType::Regular, mode, data.len() as u64);
        self.0.append_data(&mut h, path, data).expect("tar file");
    }
    fn symlink(&mut self, path: &str, target: &str) {
        let mut h = Self::header(tar::EntryType::Symlink, 0o777, 0);
        self.0
            .append_link(&mut h, path, target)
            .expect("tar symlink");
    }
    fn finish(self) -> Vec<u8> {
        self.0.into_inner().expect("tar finish")
    }
}

fn compress(tar: &[u8], c: Compression) -> (Vec<u8>, &'static str) {
    match c {
        Compression::None => (tar.to_vec(), "application/vnd.oci.image.layer.v1.tar"),
        Compression::Gzip => {
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            gz.write_all(tar).expect("gzip");
            (
                gz.finish().expect("gzip"),
                "application/vnd.oci.image.layer.v1.tar+gzip",
            )
        }
        Compression::Zstd => (
            zstd::encode_all(tar, 3).expect("zstd"),
            "application/vnd.oci.image.layer.v1.tar+zstd",
        ),
    }
}

fn layer(tar: Vec<u8>, c: Compression) -> Layer {
    let (blob, media_type) = compress(&tar, c);
    Layer {
        media_type,
        digest: sha256(&blob),
        diff_id: sha256(&tar),
        blob,
        tar,
    }
}

/// A busybox image with two layers: the base (busybox, its applets, /etc/passwd, files
/// for the whiteout checks) and a top layer that deletes `/etc/removed` (a whiteout),
/// replaces `/etc/opq` (an opaque directory) and adds `/hello.txt` with `marker`.
pub fn busybox_image(marker: &str, compression: Compression) -> Result<TestImage, String> {
    let bin = busybox_binary()
        .ok_or("busybox is not installed (apt-get install busybox-static, or `make deps`)")?;
    let busybox = std::fs::read(&bin).map_err(|e| format!("{}: {e}", bin.display()))?;
    let mut base = TarBuilder::new();
    for d in [
        "bin/", "etc/", "etc/opq/", "tmp/", "proc/", "sys/", "dev/", "var/", "var/www/", "root/",
    ] {
        base.dir(d);
    }
    base.file("bin/busybox", 0o755, &busybox);
    for a in APPLETS {
        base.symlink(&format!("bin/{a}"), "busybox");
    }
    base.file(
        "etc/passwd",
        0o644,
        b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n",
    );
    base.file("etc/group", 0o644, b"root:x:0:\nnobody:x:65534:\n");
    base.file(
        "etc/removed",
        0o644,
        b"this file is deleted by the top layer\n",
    );
    base.file(
        "etc/opq/old",
        0o644,
        b"hidden by the opaque directory above\n",
    );
    let mut top = TarBuilder::new();
    top.dir("etc/");
    top.file("etc/.wh.removed", 0o644, b"");
    top.dir("etc/opq/");
    top.file("etc/opq/.wh..wh..opq", 0o644, b"");
    top.file("etc/opq/new", 0o644, b"new\n");
    top.file("hello.txt", 0o644, format!("{marker}\n").as_bytes());
    let layers = vec![
        layer(base.finish(), compression),
        layer(top.finish(), compression),
    ];
    Ok(image_of(layers, "amd64"))
}

/// An image over `layers` for `arch`.
pub fn image_of(layers: Vec<Layer>, arch: &str) -> TestImage {
    image_with_cmd(layers, arch, &["sh"])
}

/// The busybox image whose default command sleeps forever: a pod sandbox ("pause")
/// image for CRI runtimes that run one (containerd).
pub fn pause_image() -> Result<TestImage, String> {
    let bb = busybox_image("pause", Compression::Gzip)?;
    Ok(image_with_cmd(bb.layers, "amd64", &["sleep", "2147483647"]))
}

/// An image over `layers` for `arch` whose default command is `cmd`.
pub fn image_with_cmd(layers: Vec<Layer>, arch: &str, cmd: &[&str]) -> TestImage {
    let config = serde_json::to_vec(&json!({
        "architecture": arch,
        "os": "linux",
        "config": {"Env": ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"], "Cmd": cmd},
        "rootfs": {"type": "layers", "diff_ids": layers.iter().map(|l| l.diff_id.clone()).collect::<Vec<_>>()},
    }))
    .expect("json");
    let config_digest = sha256(&config);
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config.len()},
        "layers": layers.iter().map(|l| json!({"mediaType": l.media_type, "digest": l.digest, "size": l.blob.len()})).collect::<Vec<_>>(),
    }))
    .expect("json");
    TestImage {
        manifest_digest: sha256(&manifest),
        config,
        config_digest,
        layers,
        manifest,
    }
}

fn append(b: &mut tar::Builder<std::fs::File>, path: &str, data: &[u8]) {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mode(0o644);
    h.set_size(data.len() as u64);
    b.append_data(&mut h, path, data).expect("tar append");
}

fn hex(d: &str) -> &str {
    d.trim_start_matches("sha256:")
}

/// Writes `img` as an OCI image layout tarball naming it `name` (a full reference).
pub fn write_oci_layout(img: &TestImage, name: &str, path: &Path) {
    let mut b = tar::Builder::new(std::fs::File::create(path).expect("create tarball"));
    append(&mut b, "oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#);
    let tag = name.rsplit_once(':').map(|(_, t)| t).unwrap_or("latest");
    let index = json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": img.manifest_digest, "size": img.manifest.len(),
            "annotations": {"io.containerd.image.name": name, "org.opencontainers.image.ref.name": tag},
        }],
    });
    append(
        &mut b,
        "index.json",
        &serde_json::to_vec(&index).expect("json"),
    );
    append(
        &mut b,
        &format!("blobs/sha256/{}", hex(&img.manifest_digest)),
        &img.manifest,
    );
    append(
        &mut b,
        &format!("blobs/sha256/{}", hex(&img.config_digest)),
        &img.config,
    );
    for l in &img.layers {
        append(&mut b, &format!("blobs/sha256/{}", hex(&l.digest)), &l.blob);
    }
    b.finish().expect("tar finish");
}

/// Writes `img` as a classic `docker save` tarball (uncompressed layer tars) tagged `tag`.
pub fn write_docker_save(img: &TestImage, tag: &str, path: &Path) {
    let mut b = tar::Builder::new(std::fs::File::create(path).expect("create tarball"));
    let config_name = format!("{}.json", hex(&img.config_digest));
    append(&mut b, &config_name, &img.config);
    let mut layer_names = Vec::new();
    for l in &img.layers {
        let n = format!("{}/layer.tar", hex(&l.diff_id));
        append(&mut b, &n, &l.tar);
        layer_names.push(n);
    }
    let manifest = json!([{"Config": config_name, "RepoTags": [tag], "Layers": layer_names}]);
    append(
        &mut b,
        "manifest.json",
        &serde_json::to_vec(&manifest).expect("json"),
    );
    b.finish().expect("tar finish");
}

/// A real registry (Debian's `docker-registry`) on 127.0.0.1, optionally with htpasswd
/// basic auth; killed on drop.
pub struct Registry {
    child: Child,
    /// Its port on 127.0.0.1.
    pub port: u16,
    dir: tempfile::TempDir,
    /// `(user, password)` when auth is on.
    pub credentials: Option<(String, String)>,
}

impl Registry {
    /// Starts a registry; with `auth`, user `tester` / password `s3cret-pw`.
    pub fn start(auth: bool) -> Result<Registry, String> {
        let dir = tempfile::Builder::new()
            .prefix("registry-")
            .tempdir()
            .map_err(|e| e.to_string())?;
        let credentials = auth.then(|| ("tester".to_string(), "s3cret-pw".to_string()));
        let mut auth_cfg = String::new();
        if let Some((u, p)) = &credentials {
            let out = Command::new("htpasswd")
                .args(["-Bbn", u, p])
                .output()
                .map_err(|e| format!("htpasswd (apt-get install apache2-utils): {e}"))?;
            let htpasswd = dir.path().join("htpasswd");
            std::fs::write(&htpasswd, &out.stdout).map_err(|e| e.to_string())?;
            auth_cfg = format!(
                "auth:\n  htpasswd:\n    realm: test-realm\n    path: {}\n",
                htpasswd.display()
            );
        }
        let storage = dir.path().join("data");
        Registry::spawn(dir, &storage, &auth_cfg, credentials)
    }

    /// A second registry over `other`'s storage that wants bearer tokens from a token
    /// service (user `tester` / password `s3cret-pw`); push through `other`.
    pub fn start_token(other: &Registry) -> Result<(Registry, crate::token::TokenServer), String> {
        let dir = tempfile::Builder::new()
            .prefix("registry-")
            .tempdir()
            .map_err(|e| e.to_string())?;
        let (u, p) = ("tester", "s3cret-pw");
        let tokens = crate::token::TokenServer::start(dir.path(), u, p)?;
        let auth_cfg = format!(
            "auth:\n  token:\n    realm: {}\n    service: {}\n    issuer: {}\n    rootcertbundle: {}\n",
            tokens.realm(),
            crate::token::SERVICE,
            crate::token::ISSUER,
            tokens.root_pem.display()
        );
        let storage = other.dir.path().join("data");
        let reg = Registry::spawn(dir, &storage, &auth_cfg, Some((u.into(), p.into())))?;
        Ok((reg, tokens))
    }

    fn spawn(
        dir: tempfile::TempDir,
        storage: &Path,
        auth_cfg: &str,
        credentials: Option<(String, String)>,
    ) -> Result<Registry, String> {
        let bin = ["/usr/bin/docker-registry", "/usr/bin/registry"]
            .iter()
            .map(PathBuf::from)
            .find(|p| p.exists())
            .ok_or(
                "the registry is not installed (apt-get install docker-registry, or `make deps`)",
            )?;
        let port = crate::free_port();
        let config = format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n{auth_cfg}",
            storage.display()
        );
        let cfg_path = dir.path().join("config.yml");
        std::fs::write(&cfg_path, config).map_err(|e| e.to_string())?;
        let log =
            std::fs::File::create(dir.path().join("registry.log")).map_err(|e| e.to_string())?;
        let child = Command::new(&bin)
            .arg("serve")
            .arg(&cfg_path)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
        let mut reg = Registry {
            child,
            port,
            dir,
            credentials,
        };
        crate::wait_for_port(port, &mut reg.child, "registry", Duration::from_secs(20))
            .map_err(|e| format!("{e}: {}", reg.log()))?;
        Ok(reg)
    }

    /// `127.0.0.1:PORT`, the host part of image references.
    /// `127.0.0.1:PORT`, as image references name it.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// What the registry logged.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// Runs blocking HTTP on a thread of its own, so tests may push from async code.
    fn http<T: Send>(&self, f: impl FnOnce(&Client) -> T + Send) -> T {
        std::thread::scope(|s| {
            s.spawn(|| {
                f(&Client {
                    http: reqwest::blocking::Client::new(),
                    credentials: self.credentials.clone(),
                })
            })
            .join()
            .expect("HTTP thread")
        })
    }

    /// Uploads a blob (monolithic upload), unless it is there.
    pub fn push_blob(&self, repo: &str, digest: &str, data: &[u8]) -> Result<(), String> {
        let host = self.host();
        self.http(|c| c.push_blob(&host, repo, digest, data))
    }

    /// Puts a manifest or index under `reference` (a tag or digest).
    pub fn push_manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        body: &[u8],
    ) -> Result<(), String> {
        let host = self.host();
        self.http(|c| c.push_manifest(&host, repo, reference, media_type, body))
    }

    /// Pushes an image's blobs and manifest as `repo:tag`.
    pub fn push(&self, repo: &str, tag: &str, img: &TestImage) -> Result<(), String> {
        self.push_blob(repo, &img.config_digest, &img.config)?;
        for l in &img.layers {
            self.push_blob(repo, &l.digest, &l.blob)?;
        }
        self.push_manifest(
            repo,
            tag,
            "application/vnd.oci.image.manifest.v1+json",
            &img.manifest,
        )
    }

    /// Pushes a multi-platform index over `(architecture, image)` pairs as `repo:tag`.
    pub fn push_index(
        &self,
        repo: &str,
        tag: &str,
        images: &[(&str, &TestImage)],
    ) -> Result<String, String> {
        let mut manifests = Vec::new();
        for (arch, img) in images {
            self.push(repo, &img.manifest_digest, img)?;
            manifests.push(json!({
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": img.manifest_digest, "size": img.manifest.len(),
                "platform": {"architecture": arch, "os": "linux"},
            }));
        }
        let index = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": manifests,
        }))
        .expect("json");
        self.push_manifest(repo, tag, "application/vnd.oci.image.index.v1+json", &index)?;
        Ok(sha256(&index))
    }

    /// The file the registry keeps a blob's bytes in (to corrupt it in tests).
    pub fn blob_file(&self, digest: &str) -> PathBuf {
        let h = hex(digest);
        self.dir
            .path()
            .join("data/docker/registry/v2/blobs/sha256")
            .join(&h[..2])
            .join(h)
            .join("data")
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The pushing side of the distribution API.
struct Client {
    http: reqwest::blocking::Client,
    credentials: Option<(String, String)>,
}

impl Client {
    fn req(&self, method: reqwest::Method, url: &str) -> reqwest::blocking::RequestBuilder {
        let r = self.http.request(method, url);
        match &self.credentials {
            Some((u, p)) => r.basic_auth(u, Some(p)),
            None => r,
        }
    }

    fn push_blob(&self, host: &str, repo: &str, digest: &str, data: &[u8]) -> Result<(), String> {
        let base = format!("http://{host}");
        let head = self
            .req(
                reqwest::Method::HEAD,
                &format!("{base}/v2/{repo}/blobs/{digest}"),
            )
            .send()
            .map_err(|e| e.to_string())?;
        if head.status().is_success() {
            return Ok(());
        }
        let start = self
            .req(
                reqwest::Method::POST,
                &format!("{base}/v2/{repo}/blobs/uploads/"),
            )
            .send()
            .map_err(|e| e.to_string())?;
        if start.status().as_u16() != 202 {
            return Err(format!("starting upload: {}", start.status()));
        }
        let loc = start
            .headers()
            .get("location")
            .and_then(|l| l.to_str().ok())
            .ok_or("upload without Location")?
            .to_string();
        let loc = if loc.starts_with('/') {
            format!("{base}{loc}")
        } else {
            loc
        };
        let sep = if loc.contains('?') { '&' } else { '?' };
        let put = self
            .req(reqwest::Method::PUT, &format!("{loc}{sep}digest={digest}"))
            .header("content-type", "application/octet-stream")
            .body(data.to_vec())
            .send()
            .map_err(|e| e.to_string())?;
        if put.status().as_u16() != 201 {
            return Err(format!(
                "uploading {digest}: {} {}",
                put.status(),
                put.text().unwrap_or_default()
            ));
        }
        Ok(())
    }

    /// Puts a manifest or index under `reference` (a tag or digest).
    fn push_manifest(
        &self,
        host: &str,
        repo: &str,
        reference: &str,
        media_type: &str,
        body: &[u8],
    ) -> Result<(), String> {
        let url = format!("http://{host}/v2/{repo}/manifests/{reference}");
        let put = self
            .req(reqwest::Method::PUT, &url)
            .header("content-type", media_type)
            .body(body.to_vec())
            .send()
            .map_err(|e| e.to_string())?;
        if put.status().as_u16() != 201 {
            return Err(format!(
                "pushing manifest: {} {}",
                put.status(),
                put.text().unwrap_or_default()
            ));
        }
        Ok(())
    }
}
