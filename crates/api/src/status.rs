//! `metav1.Status` errors with the codes, reasons and messages the upstream apiserver sends.

use serde_json::{json, Value};

/// One field-level cause of an error (`details.causes[]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cause {
    /// Upstream's cause type, e.g. `FieldValueRequired`, `FieldValueInvalid`.
    pub reason: &'static str,
    /// The human-readable message.
    pub message: String,
    /// The JSON path of the field, e.g. `spec.containers[0].name`.
    pub field: String,
}

impl Cause {
    /// `field.Required`.
    pub fn required(field: impl Into<String>) -> Self {
        Self::new("FieldValueRequired", field, "Required value".to_string())
    }

    /// `field.Invalid`.
    pub fn invalid(field: impl Into<String>, value: &Value, detail: impl AsRef<str>) -> Self {
        let shown = match value {
            Value::String(s) => format!("{s:?}"),
            other => other.to_string(),
        };
        Self::new(
            "FieldValueInvalid",
            field,
            format!("Invalid value: {shown}: {}", detail.as_ref()),
        )
    }

    /// `field.NotSupported`.
    pub fn unsupported(field: impl Into<String>, value: &Value, supported: &[&str]) -> Self {
        let list: Vec<String> = supported.iter().map(|s| format!("\"{s}\"")).collect();
        Self::new(
            "FieldValueNotSupported",
            field,
            format!(
                "Unsupported value: {value}: supported values: {}",
                list.join(", ")
            ),
        )
    }

    /// `field.Forbidden`.
    pub fn forbidden(field: impl Into<String>, detail: impl Into<String>) -> Self {
        Self::new(
            "FieldValueForbidden",
            field,
            format!("Forbidden: {}", detail.into()),
        )
    }

    /// `field.Duplicate`.
    pub fn duplicate(field: impl Into<String>, value: &Value) -> Self {
        Self::new(
            "FieldValueDuplicate",
            field,
            format!("Duplicate value: {value}"),
        )
    }

    /// Upstream's `field.TooLong` (1.32+ wording).
    pub fn too_long(field: impl Into<String>, max_bytes: usize) -> Self {
        Self::new(
            "FieldValueTooLong",
            field,
            format!("Too long: may not be more than {max_bytes} bytes"),
        )
    }

    /// `field is immutable`, as upstream's ValidateImmutableField says it.
    pub fn immutable(field: impl Into<String>) -> Self {
        Self::new("FieldValueInvalid", field, "field is immutable".to_string())
    }

    /// A cause with this reason, field and message.
    pub fn new(reason: &'static str, field: impl Into<String>, message: String) -> Self {
        Cause {
            reason,
            message,
            field: field.into(),
        }
    }

    /// `field: message`, as upstream joins causes into the Status message.
    pub fn render(&self) -> String {
        if self.field.is_empty() {
            self.message.clone()
        } else {
            format!("{}: {}", self.field, self.message)
        }
    }
}

/// An API error: becomes a `Status` object with this HTTP code.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{code} {reason}: {message}")]
pub struct ApiError {
    /// The HTTP status code.
    pub code: u16,
    /// The Status reason (`NotFound`).
    pub reason: &'static str,
    /// The Status message.
    pub message: String,
    /// `details` of the Status (name, group, kind, causes), or Null.
    pub details: Value,
}

/// The group-qualified resource name used in messages: `pods`, `deployments.apps`.
pub fn qualified(group: &str, resource: &str) -> String {
    if group.is_empty() {
        resource.to_string()
    } else {
        format!("{resource}.{group}")
    }
}

impl ApiError {
    /// An error with this code, reason and message.
    pub fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            code,
            reason,
            message: message.into(),
            details: Value::Null,
        }
    }

    fn with_details(mut self, group: &str, kind: &str, name: &str) -> Self {
        let mut d = serde_json::Map::new();
        if !name.is_empty() {
            d.insert("name".into(), name.into());
        }
        if !group.is_empty() {
            d.insert("group".into(), group.into());
        }
        d.insert("kind".into(), kind.into());
        self.details = Value::Object(d);
        self
    }

    /// 404: `<resource> "<name>" not found`.
    pub fn not_found(group: &str, resource: &str, name: &str) -> Self {
        Self::new(
            404,
            "NotFound",
            format!("{} \"{name}\" not found", qualified(group, resource)),
        )
        .with_details(group, resource, name)
    }

    /// 404 for a path that names no resource the server knows.
    pub fn path_not_found() -> Self {
        Self::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        )
        .with_details("", "", "")
        .without_details()
    }

    fn without_details(mut self) -> Self {
        self.details = json!({});
        self
    }

    /// 409: `<resource> "<name>" already exists`.
    pub fn already_exists(group: &str, resource: &str, name: &str) -> Self {
        Self::new(
            409,
            "AlreadyExists",
            format!("{} \"{name}\" already exists", qualified(group, resource)),
        )
        .with_details(group, resource, name)
    }

    /// 409: `Operation cannot be fulfilled on <resource> "<name>": <why>`.
    pub fn conflict(group: &str, resource: &str, name: &str, why: &str) -> Self {
        Self::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} \"{name}\": {why}",
                qualified(group, resource)
            ),
        )
        .with_details(group, resource, name)
    }

    /// The conflict of an update with a stale resourceVersion.
    pub fn stale(group: &str, resource: &str, name: &str) -> Self {
        Self::conflict(
            group,
            resource,
            name,
            "the object has been modified; please apply your changes to the latest version and try again",
        )
    }

    /// 422 Invalid: `Kind "name" is invalid: [causes]`.
    pub fn invalid(group: &str, kind: &str, name: &str, causes: Vec<Cause>) -> Self {
        let rendered: Vec<String> = causes.iter().map(Cause::render).collect();
        let joined = if rendered.len() == 1 {
            rendered[0].clone()
        } else {
            format!("[{}]", rendered.join(", "))
        };
        let mut e = Self::new(
            422,
            "Invalid",
            format!("{kind}.{} \"{name}\" is invalid: {joined}", group),
        )
        .with_details(group, kind, name);
        if group.is_empty() {
            e.message = format!("{kind} \"{name}\" is invalid: {joined}");
        }
        e.details["causes"] = causes
            .iter()
            .map(|c| json!({"reason": c.reason, "message": c.message, "field": c.field}))
            .collect();
        e
    }

    /// Appends to the message (keeps code, reason and details).
    pub fn with_message_suffix(mut self, suffix: &str) -> Self {
        self.message.push_str(suffix);
        self
    }

    /// 400 BadRequest.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }

    /// 403: `<resource> "<name>" is forbidden: <why>`.
    pub fn forbidden(group: &str, resource: &str, name: &str, why: &str) -> Self {
        let what = if name.is_empty() {
            qualified(group, resource)
        } else {
            format!("{} \"{name}\"", qualified(group, resource))
        };
        Self::new(403, "Forbidden", format!("{what} is forbidden: {why}"))
            .with_details(group, resource, name)
    }

    /// 410 Expired, for a resourceVersion behind the compaction point.
    pub fn expired(message: impl Into<String>) -> Self {
        Self::new(410, "Expired", message)
    }

    /// 405 MethodNotAllowed.
    pub fn method_not_supported(resource: &str, verb: &str) -> Self {
        Self::new(
            405,
            "MethodNotAllowed",
            format!("{verb} is not supported on resources of kind \"{resource}\""),
        )
    }

    /// 415 UnsupportedMediaType.
    pub fn unsupported_media_type(got: &str, accepted: &[&str]) -> Self {
        Self::new(
            415,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format - accepted media types include: {}{}",
                accepted.join(", "),
                if got.is_empty() { String::new() } else { format!(" (got {got:?})") }
            ),
        )
    }

    /// 413 RequestEntityTooLarge.
    pub fn too_large(limit: usize) -> Self {
        Self::new(
            413,
            "RequestEntityTooLarge",
            format!("Request entity too large: limit is {limit}"),
        )
    }

    /// 401 Unauthorized.
    pub fn unauthorized() -> Self {
        Self::new(401, "Unauthorized", "Unauthorized")
    }

    /// 504 Timeout.
    pub fn timeout(message: impl Into<String>) -> Self {
        Self::new(504, "Timeout", message)
    }

    /// 503 ServiceUnavailable.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(503, "ServiceUnavailable", message)
    }

    /// 500 InternalError.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(
            500,
            "InternalError",
            format!("Internal error occurred: {}", message.into()),
        )
    }

    /// The `Status` object.
    pub fn to_status(&self) -> Value {
        let mut s = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if !self.details.is_null() {
            s["details"] = self.details.clone();
        }
        s
    }
}

/// The wire form of a failure `Status`: upstream's field order (the Go struct's) and
/// its `omitempty`s, so a body compares equal byte for byte.
#[derive(serde::Serialize)]
struct StatusWire<'a> {
    kind: &'static str,
    #[serde(rename = "apiVersion")]
    api_version: &'static str,
    metadata: Empty,
    status: &'static str,
    #[serde(skip_serializing_if = "str::is_empty")]
    message: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    reason: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    details: Option<DetailsWire<'a>>,
    code: u16,
}

#[derive(serde::Serialize)]
struct Empty {}

#[derive(serde::Serialize)]
struct DetailsWire<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    group: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    kind: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    uid: Option<&'a str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    causes: Vec<CauseWire<'a>>,
    #[serde(rename = "retryAfterSeconds", skip_serializing_if = "Option::is_none")]
    retry_after_seconds: Option<i64>,
}

#[derive(serde::Serialize)]
struct CauseWire<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<&'a str>,
}

/// A non-empty string member of `v`.
fn text<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str).filter(|s| !s.is_empty())
}

impl ApiError {
    /// The `Status` as upstream writes it: its field order, then a newline (Go's JSON
    /// encoder ends every document with one).
    pub fn status_bytes(&self) -> Vec<u8> {
        let details = (!self.details.is_null()).then(|| DetailsWire {
            name: text(&self.details, "name"),
            group: text(&self.details, "group"),
            kind: text(&self.details, "kind"),
            uid: text(&self.details, "uid"),
            causes: self
                .details
                .get("causes")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .map(|c| CauseWire {
                    reason: text(c, "reason"),
                    message: text(c, "message"),
                    field: text(c, "field"),
                })
                .collect(),
            retry_after_seconds: self
                .details
                .get("retryAfterSeconds")
                .and_then(Value::as_i64)
                .filter(|s| *s != 0),
        });
        let wire = StatusWire {
            kind: "Status",
            api_version: "v1",
            metadata: Empty {},
            status: "Failure",
            message: &self.message,
            reason: self.reason,
            details,
            code: self.code,
        };
        let mut out = serde_json::to_vec(&wire).unwrap_or_default();
        out.push(b'\n');
        out
    }
}

/// A `Status` of success, as DELETE of a collection or some subresources answer.
pub fn success_status(details: Value) -> Value {
    let mut s = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"});
    if !details.is_null() {
        s["details"] = details;
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_bodies_match_upstream_byte_for_byte() {
        let body = ApiError::already_exists("", "configmaps", "x").status_bytes();
        assert_eq!(
            String::from_utf8(body).unwrap(),
            "{\"kind\":\"Status\",\"apiVersion\":\"v1\",\"metadata\":{},\"status\":\"Failure\",\"message\":\"configmaps \\\"x\\\" already exists\",\"reason\":\"AlreadyExists\",\"details\":{\"name\":\"x\",\"kind\":\"configmaps\"},\"code\":409}\n"
        );
        let body = ApiError::path_not_found().status_bytes();
        assert_eq!(
            String::from_utf8(body).unwrap(),
            "{\"kind\":\"Status\",\"apiVersion\":\"v1\",\"metadata\":{},\"status\":\"Failure\",\"message\":\"the server could not find the requested resource\",\"reason\":\"NotFound\",\"details\":{},\"code\":404}\n"
        );
        let invalid = ApiError::invalid(
            "apps",
            "Deployment",
            "web",
            vec![Cause::required("spec.selector")],
        );
        let v: Value = serde_json::from_slice(&invalid.status_bytes()).unwrap();
        assert_eq!(v, invalid.to_status());
        let text = String::from_utf8(invalid.status_bytes()).unwrap();
        assert!(
            text.contains("\"details\":{\"name\":\"web\",\"group\":\"apps\",\"kind\":\"Deployment\",\"causes\":[{\"reason\":\"FieldValueRequired\",\"message\":\"Required value\",\"field\":\"spec.selector\"}]}"),
            "{text}"
        );
    }

    #[test]
    fn messages_match_upstream() {
        assert_eq!(
            ApiError::not_found("", "pods", "x").message,
            "pods \"x\" not found"
        );
        assert_eq!(
            ApiError::not_found("apps", "deployments", "d").message,
            "deployments.apps \"d\" not found"
        );
        let e = ApiError::invalid("", "Pod", "p", vec![Cause::required("spec.containers")]);
        assert_eq!(
            e.message,
            "Pod \"p\" is invalid: spec.containers: Required value"
        );
        assert_eq!(e.code, 422);
        assert_eq!(e.details["causes"][0]["field"], "spec.containers");
        let s = ApiError::stale("", "configmaps", "c").to_status();
        assert_eq!(s["code"], 409);
        assert_eq!(s["reason"], "Conflict");
    }
}
