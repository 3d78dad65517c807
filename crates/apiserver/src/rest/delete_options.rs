//! `DeleteOptions`, as upstream decodes them: from the body (meta.k8s.io/v1 or v1, no
//! other kind), from the query, validated before anything is deleted.

use rkube_api::status::Cause;
use rkube_api::ApiError;
use serde_json::Value;

use crate::request::Query;

/// The options of a DELETE, a DELETECOLLECTION or an eviction.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct DeleteOptions {
    pub grace_period: Option<i64>,
    pub propagation: Option<String>,
    pub orphan_dependents: Option<bool>,
    pub precondition_uid: Option<String>,
    pub precondition_rv: Option<String>,
    /// `dryRun: ["All"]`: validate and answer, write nothing.
    pub dry_run: Vec<String>,
}

/// The group-versions whose `DeleteOptions` a body may name: meta.k8s.io/v1, the legacy
/// core v1, and (for old clients) the group-version of the resource itself.
fn known_version(api_version: &str, resource_gv: &str) -> bool {
    matches!(api_version, "" | "v1" | "meta.k8s.io/v1") || api_version == resource_gv
}

impl DeleteOptions {
    /// Whether nothing may be written.
    pub fn is_dry_run(&self) -> bool {
        !self.dry_run.is_empty()
    }

    /// Reads a decoded `DeleteOptions` object. With `resource_gv` (a request body), any
    /// other kind or group-version is 400 as upstream's decoder answers; without (options
    /// nested in another object, e.g. an Eviction) kind and apiVersion are not read. A
    /// field of the wrong type is 400 either way.
    pub fn from_object(v: &Value, resource_gv: Option<&str>) -> Result<Self, ApiError> {
        let Some(m) = v.as_object() else {
            return Err(ApiError::bad_request(
                "decoded object cannot be converted to DeleteOptions",
            ));
        };
        if let Some(gv) = resource_gv {
            check_type_meta(m, gv)?;
        }
        let mut o = DeleteOptions {
            grace_period: match m.get("gracePeriodSeconds") {
                None | Some(Value::Null) => None,
                Some(g) => Some(
                    g.as_i64()
                        .ok_or_else(|| type_error("gracePeriodSeconds", "int64", g))?,
                ),
            },
            propagation: str_field(m.get("propagationPolicy"), "propagationPolicy")?,
            orphan_dependents: match m.get("orphanDependents") {
                None | Some(Value::Null) => None,
                Some(b) => Some(
                    b.as_bool()
                        .ok_or_else(|| type_error("orphanDependents", "bool", b))?,
                ),
            },
            ..Default::default()
        };
        match m.get("preconditions") {
            None | Some(Value::Null) => {}
            Some(Value::Object(p)) => {
                o.precondition_uid = str_field(p.get("uid"), "preconditions.uid")?;
                o.precondition_rv =
                    str_field(p.get("resourceVersion"), "preconditions.resourceVersion")?;
            }
            Some(other) => return Err(type_error("preconditions", "v1.Preconditions", other)),
        }
        match m.get("dryRun") {
            None | Some(Value::Null) => {}
            Some(Value::Array(items)) => {
                for d in items {
                    let s = d
                        .as_str()
                        .ok_or_else(|| type_error("dryRun", "string", d))?;
                    o.dry_run.push(s.to_string());
                }
            }
            Some(other) => return Err(type_error("dryRun", "[]string", other)),
        }
        Ok(o)
    }

    /// Reads the body of a DELETE (empty: none; `resource_gv` as for
    /// [`DeleteOptions::from_object`]) and fills what it leaves unset from the query.
    /// Upstream reads the query only without a body; a `dryRun` in either is honoured
    /// here, so a dry run is never turned into a real deletion.
    pub fn from_request(
        body: Option<&Value>,
        query: &Query,
        resource_gv: Option<&str>,
    ) -> Result<Self, ApiError> {
        let mut o = match body {
            Some(v) => Self::from_object(v, resource_gv)?,
            None => DeleteOptions::default(),
        };
        if o.grace_period.is_none() {
            if let Some(g) = query.get("gracePeriodSeconds") {
                o.grace_period = Some(g.parse().map_err(|_| {
                    ApiError::bad_request(format!(
                        "gracePeriodSeconds: Invalid value: {g:?}: strconv.ParseInt: parsing {g:?}: invalid syntax"
                    ))
                })?);
            }
        }
        if o.propagation.is_none() {
            o.propagation = query.get("propagationPolicy").map(String::from);
        }
        if o.orphan_dependents.is_none() {
            if let Some(b) = query.get("orphanDependents") {
                o.orphan_dependents = Some(b.parse().map_err(|_| {
                    ApiError::bad_request(format!(
                        "orphanDependents: Invalid value: {b:?}: strconv.ParseBool: parsing {b:?}: invalid syntax"
                    ))
                })?);
            }
        }
        if o.precondition_uid.is_none() {
            o.precondition_uid = query.get("preconditions.uid").map(String::from);
        }
        if o.precondition_rv.is_none() {
            o.precondition_rv = query.get("preconditions.resourceVersion").map(String::from);
        }
        for d in query.all("dryRun") {
            if !o.dry_run.iter().any(|x| x == d) {
                o.dry_run.push(d.to_string());
            }
        }
        o.validate()?;
        Ok(o)
    }

    /// Upstream's ValidateDeleteOptions: 422 on an unsupported dryRun or propagationPolicy,
    /// or both orphanDependents and propagationPolicy set.
    pub fn validate(&self) -> Result<(), ApiError> {
        let mut causes = Vec::new();
        if self.orphan_dependents.is_some() && self.propagation.is_some() {
            causes.push(Cause::invalid(
                "propagationPolicy",
                &Value::from(self.propagation.clone()),
                "orphanDependents and deletionPropagation cannot be both set",
            ));
        }
        if let Some(p) = &self.propagation {
            if !matches!(p.as_str(), "Orphan" | "Background" | "Foreground") {
                causes.push(Cause::unsupported(
                    "propagationPolicy",
                    &Value::from(p.as_str()),
                    &["Background", "Foreground", "Orphan"],
                ));
            }
        }
        for d in &self.dry_run {
            if d != "All" {
                causes.push(Cause::unsupported(
                    "dryRun",
                    &Value::from(self.dry_run.clone()),
                    &["All"],
                ));
                break;
            }
        }
        if causes.is_empty() {
            Ok(())
        } else {
            Err(ApiError::invalid(
                "meta.k8s.io",
                "DeleteOptions",
                "",
                causes,
            ))
        }
    }

    /// The propagation policy in effect: `orphanDependents: true` means Orphan.
    pub fn policy(&self) -> Option<&str> {
        match (&self.propagation, self.orphan_dependents) {
            (Some(p), _) => Some(p.as_str()),
            (None, Some(true)) => Some("Orphan"),
            (None, Some(false)) => Some("Background"),
            (None, None) => None,
        }
    }
}

/// Refuses a body that is not a `DeleteOptions` of a group-version this request takes.
fn check_type_meta(m: &serde_json::Map<String, Value>, resource_gv: &str) -> Result<(), ApiError> {
    let api_version = str_field(m.get("apiVersion"), "apiVersion")?.unwrap_or_default();
    let kind = str_field(m.get("kind"), "kind")?.unwrap_or_default();
    if !known_version(&api_version, resource_gv) {
        let kind = if kind.is_empty() {
            "DeleteOptions"
        } else {
            &kind
        };
        return Err(ApiError::bad_request(format!(
                "no kind {kind:?} is registered for version {api_version:?} in scheme \"k8s.io/apimachinery/pkg/apis/meta/internalversion/scheme/register.go:28\""
            )));
    }
    match kind.as_str() {
            "" | "DeleteOptions" => {}
            // Kinds the meta scheme knows decode, but are not DeleteOptions.
            "Status" | "ListOptions" | "GetOptions" | "CreateOptions" | "UpdateOptions"
            | "PatchOptions" | "WatchEvent" => {
                return Err(ApiError::bad_request(
                    "decoded object cannot be converted to DeleteOptions",
                ))
            }
            other => {
                return Err(ApiError::bad_request(format!(
                    "no kind {other:?} is registered for version {:?} in scheme \"k8s.io/apimachinery/pkg/apis/meta/internalversion/scheme/register.go:28\"",
                    if api_version.is_empty() { "meta.k8s.io/v1" } else { &api_version }
                )))
            }
        }
    Ok(())
}

fn str_field(v: Option<&Value>, field: &str) -> Result<Option<String>, ApiError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(type_error(field, "string", other)),
    }
}

fn type_error(field: &str, want: &str, got: &Value) -> ApiError {
    let what = match got {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    };
    ApiError::bad_request(format!(
        "json: cannot unmarshal {what} into Go struct field DeleteOptions.{field} of type {want}"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn q(s: &str) -> Query {
        Query::parse(Some(s))
    }

    #[test]
    fn kubectl_dry_run_body() {
        let body = json!({"propagationPolicy": "Background", "dryRun": ["All"]});
        let o = DeleteOptions::from_request(Some(&body), &q(""), Some("v1")).unwrap();
        assert!(o.is_dry_run());
        assert_eq!(o.policy(), Some("Background"));
    }

    #[test]
    fn query_dry_run_survives_a_body_without_one() {
        let body = json!({"kind": "DeleteOptions", "apiVersion": "v1"});
        let o = DeleteOptions::from_request(Some(&body), &q("dryRun=All"), Some("v1")).unwrap();
        assert!(o.is_dry_run());
    }

    #[test]
    fn wrong_kinds_and_versions_are_refused() {
        for body in [
            json!({"kind": "Widget", "apiVersion": "v1"}),
            json!({"kind": "Status", "apiVersion": "v1"}),
            json!({"kind": "DeleteOptions", "apiVersion": "evil/v9"}),
            json!({"apiVersion": "apps/v1"}),
            json!({"gracePeriodSeconds": "soon"}),
            json!({"dryRun": "All"}),
            json!({"preconditions": []}),
        ] {
            let e = DeleteOptions::from_request(Some(&body), &q(""), Some("v1")).unwrap_err();
            assert_eq!(e.code, 400, "{body}: {}", e.message);
        }
        let ok = json!({"kind": "DeleteOptions", "apiVersion": "apps/v1"});
        assert!(DeleteOptions::from_request(Some(&ok), &q(""), Some("apps/v1")).is_ok());
        let ok = json!({"kind": "DeleteOptions", "apiVersion": "meta.k8s.io/v1"});
        assert!(DeleteOptions::from_request(Some(&ok), &q(""), Some("apps/v1")).is_ok());
    }

    #[test]
    fn validation() {
        let e = DeleteOptions::from_request(None, &q("dryRun=Some"), Some("v1")).unwrap_err();
        assert_eq!(e.code, 422);
        assert!(
            e.message.contains("dryRun: Unsupported value"),
            "{}",
            e.message
        );
        let body = json!({"orphanDependents": true, "propagationPolicy": "Orphan"});
        let e = DeleteOptions::from_request(Some(&body), &q(""), Some("v1")).unwrap_err();
        assert_eq!(e.code, 422);
        let e =
            DeleteOptions::from_request(None, &q("propagationPolicy=Now"), Some("v1")).unwrap_err();
        assert_eq!(e.code, 422);
        let body = json!({"preconditions": {"uid": "u", "resourceVersion": "7"}});
        let o = DeleteOptions::from_request(Some(&body), &q(""), Some("v1")).unwrap();
        assert_eq!(o.precondition_uid.as_deref(), Some("u"));
        assert_eq!(o.precondition_rv.as_deref(), Some("7"));
    }
}
