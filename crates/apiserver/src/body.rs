//! Reading request bodies: the 3 MiB limit, JSON and YAML, and malformed input as 400.

use bytes::Bytes;
use http_body_util::BodyExt;
use rkube_api::ApiError;
use serde_json::Value;

use crate::serve::RequestBody;

/// Upstream's request body limit (3 MiB).
pub const MAX_BODY: usize = 3 * 1024 * 1024;

/// Reads the whole body, refusing more than `MAX_BODY` bytes with 413.
pub async fn read(body: RequestBody) -> Result<Bytes, ApiError> {
    let limited = http_body_util::Limited::new(body, MAX_BODY);
    match limited.collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e)
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Err(ApiError::too_large(MAX_BODY))
        }
        Err(e) => Err(ApiError::bad_request(format!(
            "reading the request body: {e}"
        ))),
    }
}

/// The media type of a Content-Type header, without parameters.
pub fn media_type(ct: Option<&str>) -> String {
    ct.unwrap_or("application/json")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

/// Decodes a protobuf body into JSON (the apiserver knows the expected message).
pub type ProtoDecoder<'a> = &'a dyn Fn(&[u8]) -> Result<Value, ApiError>;

pub const PROTOBUF: &str = "application/vnd.kubernetes.protobuf";

/// Decodes an object body (JSON, YAML, or Kubernetes protobuf through `proto` with the
/// expected message); malformed input is 400 BadRequest.
pub fn decode_object(
    content_type: Option<&str>,
    bytes: &[u8],
    proto: Option<ProtoDecoder<'_>>,
) -> Result<Value, ApiError> {
    let mt = media_type(content_type);
    let v = match mt.as_str() {
        PROTOBUF if proto.is_some() => proto.expect("checked")(bytes)?,
        "application/json" | "" | "*/*" => parse_json(bytes)?,
        "application/yaml" | "application/x-yaml" | "text/yaml" => parse_yaml(bytes)?,
        other => {
            return Err(ApiError::unsupported_media_type(
                other,
                &["application/json", "application/yaml", PROTOBUF],
            ))
        }
    };
    if !v.is_object() {
        return Err(ApiError::bad_request(format!(
            "the request body must be a JSON object, got {}",
            kind_of(&v)
        )));
    }
    Ok(v)
}

pub fn parse_json(bytes: &[u8]) -> Result<Value, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request(
            "the request body is empty; send a JSON object",
        ));
    }
    serde_json::from_slice(bytes).map_err(|e| {
        ApiError::bad_request(format!("couldn't get version/kind; json parse error: {e}"))
    })
}

pub fn parse_yaml(bytes: &[u8]) -> Result<Value, ApiError> {
    let s = std::str::from_utf8(bytes)
        .map_err(|e| ApiError::bad_request(format!("the YAML body is not UTF-8: {e}")))?;
    serde_saphyr::from_str::<Value>(s)
        .map_err(|e| ApiError::bad_request(format!("error converting YAML to JSON: {e}")))
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}
