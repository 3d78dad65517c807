//! A registry token service for tests (the Docker registry token protocol): it checks
//! basic credentials and hands out ES256 JWTs whose `x5c` header carries a self-signed
//! certificate that the registry is told to trust (`auth.token.rootcertbundle`).

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use base64::Engine;
use ring::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};

/// The `service` the registry names in its challenge and expects as the token audience.
pub const SERVICE: &str = "rkube-test-registry";
/// The token issuer the registry trusts.
pub const ISSUER: &str = "rkube-test-issuer";

/// A running token service.
pub struct TokenServer {
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// The certificate bundle (PEM) the registry verifies tokens with.
    pub root_pem: PathBuf,
    /// Token requests answered (granted or refused).
    pub requests: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

struct Signer {
    key: EcdsaKeyPair,
    cert_der: Vec<u8>,
    credentials: (String, String),
}

fn b64url(b: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

impl Signer {
    /// A JWT granting `scope` (`repository:NAME:ACTIONS`).
    fn token(&self, scope: &str) -> String {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let access: Vec<serde_json::Value> = scope
            .split(' ')
            .filter_map(|s| {
                let mut p = s.splitn(3, ':');
                let (kind, name, actions) = (p.next()?, p.next()?, p.next()?);
                Some(serde_json::json!({
                    "type": kind, "name": name, "actions": actions.split(',').collect::<Vec<_>>(),
                }))
            })
            .collect();
        let header = serde_json::json!({
            "typ": "JWT",
            "alg": "ES256",
            "x5c": [base64::engine::general_purpose::STANDARD.encode(&self.cert_der)],
        });
        let claims = serde_json::json!({
            "iss": ISSUER, "sub": self.credentials.0, "aud": SERVICE,
            "exp": now + 300, "nbf": now - 10, "iat": now,
            "jti": format!("{now}-{}", std::process::id()), "access": access,
        });
        let signing_input = format!(
            "{}.{}",
            b64url(header.to_string().as_bytes()),
            b64url(claims.to_string().as_bytes())
        );
        let sig = self
            .key
            .sign(&ring::rand::SystemRandom::new(), signing_input.as_bytes())
            .expect("signing");
        format!("{signing_input}.{}", b64url(sig.as_ref()))
    }

    fn answer(&self, conn: TcpStream) {
        let mut r = BufReader::new(&conn);
        let mut line = String::new();
        if r.read_line(&mut line).is_err() {
            return;
        }
        let target = line.split_whitespace().nth(1).unwrap_or("").to_string();
        let mut authorized = false;
        loop {
            let mut h = String::new();
            if r.read_line(&mut h).is_err() || h.trim().is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                if k.eq_ignore_ascii_case("authorization") {
                    let (u, p) = &self.credentials;
                    let want = base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"));
                    authorized = v.trim() == format!("Basic {want}");
                }
            }
        }
        let query = target.split_once('?').map(|x| x.1).unwrap_or("");
        let scope: Vec<String> = query
            .split('&')
            .filter_map(|kv| kv.strip_prefix("scope="))
            .map(|s| {
                s.replace("%3A", ":")
                    .replace("%2F", "/")
                    .replace("%2C", ",")
                    .replace('+', " ")
            })
            .collect();
        let (status, body) = if authorized {
            let t = self.token(&scope.join(" "));
            (
                "200 OK",
                serde_json::json!({"token": t, "access_token": t, "expires_in": 300}).to_string(),
            )
        } else {
            (
                "401 Unauthorized",
                r#"{"errors":[{"code":"UNAUTHORIZED","message":"bad credentials"}]}"#.to_string(),
            )
        };
        let mut w = &conn;
        let _ = write!(
            w,
            "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
    }
}

impl TokenServer {
    /// Starts a token service in `dir` for user `user` / `password`.
    pub fn start(dir: &Path, user: &str, password: &str) -> Result<TokenServer, String> {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .map_err(|e| e.to_string())?;
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .map_err(|e| e.to_string())?;
        let kp = rcgen::KeyPair::try_from(pkcs8.as_ref()).map_err(|e| e.to_string())?;
        let mut params = rcgen::CertificateParams::new(vec![]).map_err(|e| e.to_string())?;
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "rkube test token signer");
        let cert = params.self_signed(&kp).map_err(|e| e.to_string())?;
        let root_pem = dir.join("token-root.pem");
        std::fs::write(&root_pem, cert.pem()).map_err(|e| e.to_string())?;
        let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
        let port = listener.local_addr().map_err(|e| e.to_string())?.port();
        let signer = Signer {
            key,
            cert_der: cert.der().to_vec(),
            credentials: (user.into(), password.into()),
        };
        let requests = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (n, s) = (requests.clone(), stop.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                if s.load(Ordering::SeqCst) {
                    break;
                }
                n.fetch_add(1, Ordering::SeqCst);
                signer.answer(conn);
            }
        });
        Ok(TokenServer {
            port,
            root_pem,
            requests,
            stop,
        })
    }

    /// The realm the registry sends clients to.
    pub fn realm(&self) -> String {
        format!("http://127.0.0.1:{}/token", self.port)
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}
