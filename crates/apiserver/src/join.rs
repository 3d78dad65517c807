//! Joining nodes, as k3s does: the join token `K10<sha256 of the CA>::server:<secret>`
//! lets an agent check the CA it downloads (`/cacerts`) before it sends the secret, and
//! `/v1-rkube/node-credentials` hands a node with the secret its client certificate
//! (`system:node:NAME`, group `system:nodes`) and its kubelet serving certificate.

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use serde_json::{json, Value};

use crate::pki::Pki;
use crate::respond::{full, Resp};

/// What the join endpoints need.
pub struct Join {
    /// The cluster CA that signs the agents' certificates.
    pub pki: Arc<Pki>,
    /// The shared secret agents present (the part of the token after `::server:`).
    pub secret: String,
}

/// Hex SHA-256 of the CA certificate as `/cacerts` serves it.
pub fn ca_hash(ca_pem: &str) -> String {
    ring::digest::digest(&ring::digest::SHA256, ca_pem.as_bytes())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The full join token.
pub fn token(ca_pem: &str, secret: &str) -> String {
    format!("K10{}::server:{secret}", ca_hash(ca_pem))
}

/// A token's CA hash (if it is a full token) and secret.
pub fn parse_token(t: &str) -> (Option<String>, String) {
    let t = t.trim();
    if let Some(rest) = t.strip_prefix("K10") {
        if let Some((hash, cred)) = rest.split_once("::") {
            let secret = cred.split_once(':').map(|(_, s)| s).unwrap_or(cred);
            return (Some(hash.to_string()), secret.to_string());
        }
    }
    (None, t.to_string())
}

fn text(code: StatusCode, msg: &str) -> Resp {
    http::Response::builder()
        .status(code)
        .header("content-type", "text/plain; charset=utf-8")
        .body(full(Bytes::from(format!("{msg}\n"))))
        .expect("static response")
}

/// `GET /cacerts`: the cluster CA (public; agents check it against the token's hash).
pub fn cacerts(pki: &Pki) -> Resp {
    http::Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/x-pem-file")
        .body(full(Bytes::from(pki.ca.cert_pem.clone())))
        .expect("static response")
}

/// `POST /v1-rkube/node-credentials` with `Authorization: Bearer SECRET` and
/// `{"nodeName": ..., "addresses": [...]}`.
pub fn node_credentials(join: &Join, headers: &HeaderMap, body: &[u8]) -> Resp {
    let given = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    let ok = given.len() == join.secret.len()
        && given
            .bytes()
            .zip(join.secret.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0;
    if !ok {
        return text(
            StatusCode::UNAUTHORIZED,
            "invalid join token: check the token (rkube token on the server prints it)",
        );
    }
    let req: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => return text(StatusCode::BAD_REQUEST, &format!("malformed request: {e}")),
    };
    let name = req.get("nodeName").and_then(Value::as_str).unwrap_or("");
    let valid = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        });
    if !valid {
        return text(
            StatusCode::BAD_REQUEST,
            &format!("invalid node name {name:?}: must be a lowercase DNS subdomain"),
        );
    }
    let mut sans = vec![name.to_string()];
    for a in req
        .get("addresses")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let Some(ip) = a.as_str().filter(|s| s.parse::<std::net::IpAddr>().is_ok()) {
            sans.push(ip.to_string());
        }
    }
    let client = join
        .pki
        .issue_client(&format!("system:node:{name}"), &["system:nodes"]);
    let serving = join.pki.issue_serving(name, &sans);
    match (client, serving) {
        (Ok(c), Ok(s)) => {
            let out = json!({
                "ca": join.pki.ca.cert_pem,
                "clientCert": c.cert_pem, "clientKey": c.key_pem,
                "servingCert": s.cert_pem, "servingKey": s.key_pem,
            });
            http::Response::builder()
                .status(StatusCode::OK)
                .header("content-type", "application/json")
                .body(full(Bytes::from(out.to_string())))
                .expect("static response")
        }
        (Err(e), _) | (_, Err(e)) => text(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_carry_the_ca_hash_and_the_secret() {
        let t = token("PEM", "s3cret");
        assert!(t.starts_with("K10") && t.ends_with("::server:s3cret"));
        let (hash, secret) = parse_token(&t);
        assert_eq!(hash.as_deref(), Some(ca_hash("PEM").as_str()));
        assert_eq!(hash.unwrap().len(), 64);
        assert_eq!(secret, "s3cret");
        assert_eq!(parse_token("plain"), (None, "plain".to_string()));
    }
}
