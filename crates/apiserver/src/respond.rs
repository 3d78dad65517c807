//! Building responses: JSON objects, `Status` errors, streams.

use std::convert::Infallible;

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use rkube_api::ApiError;
use serde_json::Value;

pub type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;
pub type Resp = Response<Body>;

pub fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).boxed()
}

/// A JSON response.
pub fn json(code: u16, v: &Value) -> Resp {
    let body = serde_json::to_vec(v).unwrap_or_default();
    raw(code, "application/json", body)
}

/// A JSON response from bytes already encoded.
pub fn raw(code: u16, content_type: &str, body: impl Into<Bytes>) -> Resp {
    let mut r = Response::new(full(body));
    *r.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    if let Ok(v) = HeaderValue::from_str(content_type) {
        r.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    r
}

/// A 200 response whose body comes in chunks from `stream`.
pub fn stream(
    content_type: &'static str,
    stream: impl futures::Stream<Item = Bytes> + Send + Sync + 'static,
) -> Resp {
    use futures::StreamExt;
    let body = http_body_util::StreamBody::new(
        stream.map(|b| Ok::<_, Infallible>(hyper::body::Frame::data(b))),
    );
    let mut r = Response::new(BodyExt::boxed(body));
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

/// A `Status` error response.
pub fn error(e: &ApiError) -> Resp {
    if e.code >= 500 {
        tracing::warn!("{} {}: {}", e.code, e.reason, e.message);
    }
    let mut r = raw(e.code, "application/json", e.status_bytes());
    if e.code == 429 || e.code == 503 {
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    r
}

pub fn text(code: u16, s: impl Into<String>) -> Resp {
    raw(code, "text/plain; charset=utf-8", s.into())
}

/// Adds a `Warning: 299 - "..."` header, as upstream does for field validation warnings.
pub fn add_warning(r: &mut Resp, message: &str) {
    let escaped = message.replace('\\', "\\\\").replace('"', "\\\"");
    if let Ok(v) = HeaderValue::from_str(&format!("299 - \"{escaped}\"")) {
        r.headers_mut().append(header::WARNING, v);
    }
}
