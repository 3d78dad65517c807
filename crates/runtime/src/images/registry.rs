//! Pulls from OCI / Docker v2 registries (the distribution spec): anonymous, basic and
//! bearer-token auth, multi-platform indexes resolved to this machine, every blob's digest
//! verified, interrupted layer downloads resumed with a range request.

use std::sync::Mutex;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use reqwest::header::{ACCEPT, RANGE, WWW_AUTHENTICATE};
use reqwest::StatusCode;

use super::oci::{self, Descriptor, Document, Manifest};
use super::reference::Reference;
use super::{Image, ImageStore, Progress, ProgressFn};
use crate::digest::Digest;
use crate::Error;

/// Manifests larger than this are refused (real ones are a few KiB).
const MAX_MANIFEST: usize = 4 << 20;
/// Layers fetched at once.
const PARALLEL_LAYERS: usize = 3;
/// Attempts per blob when the connection fails.
const ATTEMPTS: u32 = 4;

/// Credentials for a registry.
#[derive(Clone, Debug, Default)]
pub enum Auth {
    /// No credentials.
    #[default]
    Anonymous,
    /// Sent as HTTP basic auth, or to the token service when the registry wants tokens.
    /// A username and password.
    Basic {
        /// The user.
        username: String,
        /// The password.
        password: String,
    },
    /// A registry token given by the caller (CRI's `registry_token`).
    Bearer(String),
}

/// Pulls `reference` into `store` and names it so. Returns the image.
pub async fn pull(
    store: &ImageStore,
    reference: &Reference,
    auth: &Auth,
    progress: ProgressFn<'_>,
) -> Result<Image, Error> {
    let client = Client::new(reference, auth)?;
    progress(Progress::Step(format!("resolving {reference}")));
    let (bytes, media_type, digest) = client.manifest(&reference.object()).await?;
    if let Some(want) = &reference.digest {
        if &digest != want {
            return Err(Error::DigestMismatch {
                what: format!("manifest of {reference}"),
                expected: want.clone(),
                actual: digest,
            });
        }
    }
    let (index, manifest_digest, manifest_bytes) = match Document::parse(&media_type, &bytes)? {
        Document::Index(ix) => {
            let host = oci::Platform::host();
            let Some(d) = ix.for_host() else {
                let offered: Vec<String> = ix
                    .manifests
                    .iter()
                    .filter_map(|m| m.platform.as_ref())
                    .map(|p| format!("{}/{}", p.os, p.architecture))
                    .collect();
                return Err(Error::NotFound(format!(
                    "{reference} has no image for {}/{} (it has: {})",
                    host.os,
                    host.architecture,
                    offered.join(", ")
                )));
            };
            let (b, _, md) = client.manifest(d.digest.as_str()).await?;
            if md != d.digest {
                return Err(Error::DigestMismatch {
                    what: format!("platform manifest of {reference}"),
                    expected: d.digest.clone(),
                    actual: md,
                });
            }
            (Some((digest, bytes)), d.digest.clone(), b)
        }
        Document::Manifest(_) => (None, digest, bytes),
    };
    let manifest: Manifest = match Document::parse("", &manifest_bytes)? {
        Document::Manifest(m) => m,
        Document::Index(_) => return Err(Error::Format("an index inside an index".into())),
    };
    let mut held: Vec<Digest> = vec![manifest_digest.clone(), manifest.config.digest.clone()];
    held.extend(index.iter().map(|(d, _)| d.clone()));
    held.extend(manifest.layers.iter().map(|l| l.digest.clone()));
    let _lease = store.temp_lease(&held)?;
    let content = store.content();
    if let Some((d, b)) = &index {
        content.write(d, b)?;
    }
    content.write(&manifest_digest, &manifest_bytes)?;
    client.fetch_blob(store, &manifest.config, &|_| {}).await?;
    let missing: Vec<Descriptor> = manifest
        .layers
        .iter()
        .filter(|l| !content.has(&l.digest))
        .cloned()
        .collect();
    progress(Progress::Total(missing.iter().map(|l| l.size).sum()));
    let client = &client;
    futures::stream::iter(
        missing
            .into_iter()
            .map(|l| async move { client.fetch_blob(store, &l, progress).await }),
    )
    .buffer_unordered(PARALLEL_LAYERS)
    .try_collect::<Vec<()>>()
    .await?;
    progress(Progress::Step("unpacking layers".into()));
    let name = reference.to_string();
    let index_digest = index.map(|(d, _)| d);
    let store = store.clone();
    tokio::task::spawn_blocking(move || {
        store.register(&name, index_digest, &manifest_digest, &|_| {})
    })
    .await
    .map_err(|e| Error::Format(format!("unpacking failed: {e}")))?
}

/// One registry repository, with the token it handed out.
struct Client {
    http: reqwest::Client,
    /// `scheme://host/v2/path`
    base: String,
    host: String,
    path: String,
    auth: Auth,
    token: Mutex<Option<String>>,
    basic: Mutex<bool>,
}

impl Client {
    fn new(reference: &Reference, auth: &Auth) -> Result<Client, Error> {
        let host = match reference.domain.as_str() {
            "docker.io" => "registry-1.docker.io".to_string(),
            h => h.to_string(),
        };
        let scheme = if reference.is_loopback() {
            "http"
        } else {
            "https"
        };
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(30))
            .read_timeout(Duration::from_secs(120))
            .user_agent(concat!("rkube/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| Error::Network(format!("HTTP client: {e}")))?;
        let token = match auth {
            Auth::Bearer(t) => Some(t.clone()),
            _ => None,
        };
        Ok(Client {
            http,
            base: format!("{scheme}://{host}/v2/{}", reference.path),
            host,
            path: reference.path.clone(),
            auth: auth.clone(),
            token: Mutex::new(token),
            basic: Mutex::new(false),
        })
    }

    /// GETs `url`, answering one auth challenge.
    async fn get(
        &self,
        url: &str,
        accept: Option<&str>,
        from: Option<u64>,
    ) -> Result<reqwest::Response, Error> {
        for attempt in 0..2 {
            let mut req = self.http.get(url);
            if let Some(a) = accept {
                req = req.header(ACCEPT, a);
            }
            if let Some(off) = from {
                req = req.header(RANGE, format!("bytes={off}-"));
            }
            let token = self.token.lock().expect("token lock").clone();
            if let Some(t) = token {
                req = req.bearer_auth(t);
            } else if let (Auth::Basic { username, password }, true) =
                (&self.auth, *self.basic.lock().expect("basic lock"))
            {
                req = req.basic_auth(username, Some(password));
            }
            let resp = req.send().await.map_err(|e| net(&self.host, e))?;
            if resp.status() == StatusCode::UNAUTHORIZED && attempt == 0 {
                let challenge = resp
                    .headers()
                    .get(WWW_AUTHENTICATE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_string();
                self.authenticate(&challenge).await?;
                continue;
            }
            return match resp.status() {
                s if s.is_success() => Ok(resp),
                StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                    Err(Error::Unauthorized(format!(
                        "{} refused access to {} ({}); check the credentials",
                        self.host,
                        self.path,
                        resp.status()
                    )))
                }
                StatusCode::NOT_FOUND => Err(Error::NotFound(format!(
                    "{url} (no such image or blob in the registry)"
                ))),
                s => {
                    let body = resp.text().await.unwrap_or_default();
                    Err(Error::Registry(format!(
                        "{s} from {url}: {}",
                        body.chars().take(300).collect::<String>()
                    )))
                }
            };
        }
        unreachable!("the loop returns on its second pass")
    }

    /// Answers a `WWW-Authenticate` challenge: basic credentials, or a bearer token from
    /// the realm it names.
    async fn authenticate(&self, challenge: &str) -> Result<(), Error> {
        let (scheme, params) = parse_challenge(challenge);
        match scheme.to_ascii_lowercase().as_str() {
            "basic" => {
                if matches!(self.auth, Auth::Basic { .. }) && !*self.basic.lock().expect("lock") {
                    *self.basic.lock().expect("lock") = true;
                    Ok(())
                } else {
                    Err(self.needs_credentials())
                }
            }
            "bearer" => {
                let get = |k: &str| {
                    params
                        .iter()
                        .find(|(n, _)| n.eq_ignore_ascii_case(k))
                        .map(|(_, v)| v.clone())
                };
                let realm = get("realm").ok_or_else(|| {
                    Error::Registry(format!("{}: token challenge without realm", self.host))
                })?;
                let mut query: Vec<(String, String)> = Vec::new();
                if let Some(s) = get("service") {
                    query.push(("service".into(), s));
                }
                query.push((
                    "scope".into(),
                    get("scope").unwrap_or_else(|| format!("repository:{}:pull", self.path)),
                ));
                let mut req = self.http.get(&realm).query(&query);
                if let Auth::Basic { username, password } = &self.auth {
                    req = req.basic_auth(username, Some(password));
                }
                let resp = req.send().await.map_err(|e| net(&self.host, e))?;
                if !resp.status().is_success() {
                    return Err(if matches!(self.auth, Auth::Anonymous) {
                        self.needs_credentials()
                    } else {
                        Error::Unauthorized(format!(
                            "token service {realm} refused the credentials ({})",
                            resp.status()
                        ))
                    });
                }
                let body: serde_json::Value = resp
                    .json()
                    .await
                    .map_err(|e| Error::Registry(format!("token service {realm}: {e}")))?;
                let token = body
                    .get("token")
                    .or_else(|| body.get("access_token"))
                    .and_then(|t| t.as_str())
                    .ok_or_else(|| {
                        Error::Registry(format!("token service {realm} sent no token"))
                    })?;
                *self.token.lock().expect("lock") = Some(token.to_string());
                Ok(())
            }
            _ => Err(self.needs_credentials()),
        }
    }

    fn needs_credentials(&self) -> Error {
        Error::Unauthorized(format!(
            "{} requires authentication to pull {}: give credentials (imagePullSecrets, or docker login's config.json for `rkube images pull`)",
            self.host, self.path
        ))
    }

    /// Fetches a manifest or index by tag or digest: its bytes, media type and digest.
    async fn manifest(&self, object: &str) -> Result<(Vec<u8>, String, Digest), Error> {
        let accept = [
            oci::OCI_INDEX,
            oci::DOCKER_LIST,
            oci::OCI_MANIFEST,
            oci::DOCKER_MANIFEST,
        ]
        .join(", ");
        let resp = self
            .get(
                &format!("{}/manifests/{object}", self.base),
                Some(&accept),
                None,
            )
            .await?;
        let media_type = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let claimed = resp
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .and_then(|d| Digest::parse(d).ok());
        let mut resp = resp;
        let mut bytes = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| net(&self.host, e))? {
            bytes.extend_from_slice(&chunk);
            if bytes.len() > MAX_MANIFEST {
                return Err(Error::Format(format!("manifest {object} is over 4 MiB")));
            }
        }
        let digest = Digest::of(&bytes);
        if let Some(c) = claimed {
            if c != digest {
                return Err(Error::DigestMismatch {
                    what: format!("manifest {object}"),
                    expected: c,
                    actual: digest,
                });
            }
        }
        Ok((bytes, media_type, digest))
    }

    /// Downloads a blob into the content store, retrying broken connections from where
    /// they stopped.
    async fn fetch_blob(
        &self,
        store: &ImageStore,
        desc: &Descriptor,
        progress: ProgressFn<'_>,
    ) -> Result<(), Error> {
        let mut attempt = 0;
        loop {
            match self.try_fetch_blob(store, desc, progress).await {
                Err(Error::Network(e)) if attempt + 1 < ATTEMPTS => {
                    attempt += 1;
                    tracing::warn!(blob = %desc.digest, "download interrupted ({e}); resuming");
                    tokio::time::sleep(Duration::from_millis(500 << attempt)).await;
                }
                other => return other,
            }
        }
    }

    async fn try_fetch_blob(
        &self,
        store: &ImageStore,
        desc: &Descriptor,
        progress: ProgressFn<'_>,
    ) -> Result<(), Error> {
        use std::io::Write;
        let content = store.content();
        let mut ingest = loop {
            if content.has(&desc.digest) {
                return Ok(());
            }
            match content.ingest(&desc.digest) {
                Ok(w) => break w,
                // Another pull is fetching the same blob: wait for it.
                Err(Error::Busy(_)) => tokio::time::sleep(Duration::from_millis(100)).await,
                Err(e) => return Err(e),
            }
        };
        if content.has(&desc.digest) {
            return Ok(());
        }
        if ingest.offset >= desc.size {
            ingest.reset()?;
        }
        let from = (ingest.offset > 0).then_some(ingest.offset);
        let url = format!("{}/blobs/{}", self.base, desc.digest);
        let mut resp = self.get(&url, None, from).await?;
        if from.is_some() && resp.status() == StatusCode::PARTIAL_CONTENT {
            progress(Progress::Bytes(ingest.offset));
        } else {
            ingest.reset()?;
        }
        while let Some(chunk) = resp.chunk().await.map_err(|e| net(&self.host, e))? {
            ingest
                .write_all(&chunk)
                .map_err(|e| Error::Io(format!("writing blob {}", desc.digest), e))?;
            progress(Progress::Bytes(chunk.len() as u64));
            if ingest.offset > desc.size {
                ingest.reset()?;
                return Err(Error::Format(format!(
                    "blob {} is larger than the {} bytes its manifest says",
                    desc.digest, desc.size
                )));
            }
        }
        ingest.commit(&desc.digest)
    }
}

fn net(host: &str, e: reqwest::Error) -> Error {
    Error::Network(format!("{host}: {e}"))
}

/// Splits `Bearer realm="…",service="…",scope="a:b:pull,push"` into the scheme and its
/// parameters (commas inside quotes stay).
pub fn parse_challenge(s: &str) -> (String, Vec<(String, String)>) {
    let s = s.trim();
    let (scheme, rest) = s.split_once(' ').unwrap_or((s, ""));
    let mut params = Vec::new();
    let mut chars = rest.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if key.is_empty() {
            break;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => value.extend(chars.next()),
                    '"' => break,
                    c => value.push(c),
                }
            }
        } else {
            while let Some(c) = chars.peek() {
                if *c == ',' {
                    break;
                }
                value.push(*c);
                chars.next();
            }
        }
        params.push((key.trim().to_string(), value));
    }
    (scheme.to_string(), params)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges() {
        let (s, p) = parse_challenge(
            r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull,push""#,
        );
        assert_eq!(s, "Bearer");
        assert_eq!(p[0], ("realm".into(), "https://auth.example/token".into()));
        assert_eq!(p[2], ("scope".into(), "repository:a/b:pull,push".into()));
        let (s, p) = parse_challenge(r#"Basic realm="Registry Realm""#);
        assert_eq!((s.as_str(), p.len()), ("Basic", 1));
    }
}
