//! Field validation shared by every kind: decoding into the typed struct (type errors),
//! unknown and duplicate fields under `fieldValidation`, and ObjectMeta rules.

use std::borrow::Cow;
use std::collections::HashSet;

use rkube_api::meta::ObjectMeta;
use rkube_api::names;
use rkube_api::{ApiError, Cause, ResourceInfo};
use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{json, Value};

/// `fieldValidation`: what to do with unknown or duplicate fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldValidation {
    Strict,
    Warn,
    Ignore,
}

impl FieldValidation {
    pub fn parse(v: Option<&str>) -> Result<Self, ApiError> {
        match v {
            None | Some("") | Some("Warn") => Ok(Self::Warn),
            Some("Strict") => Ok(Self::Strict),
            Some("Ignore") => Ok(Self::Ignore),
            Some(other) => Err(ApiError::bad_request(format!(
                "fieldValidation must be one of \"Ignore\", \"Warn\", or \"Strict\", got {other:?}"
            ))),
        }
    }
}

/// Decodes `obj` as the kind's type: type errors are 400; unknown fields are dropped and,
/// per `mode`, reported as warnings or a 400. Returns the pruned object and warnings.
pub fn decode_typed(
    info: &ResourceInfo,
    obj: Value,
    raw: Option<&[u8]>,
    mode: FieldValidation,
) -> Result<(Value, Vec<String>), ApiError> {
    let mut problems = Vec::new();
    if let (Some(raw), true) = (raw, mode != FieldValidation::Ignore) {
        duplicate_fields(raw, &mut problems);
    }
    let out = (info.roundtrip)(&obj).map_err(|e| {
        ApiError::bad_request(format!(
            "{} in version \"{}\" cannot be handled as a {}: {e}",
            info.kind, info.version, info.kind
        ))
    })?;
    if mode != FieldValidation::Ignore {
        let mut unknown = Vec::new();
        unknown_fields(&obj, &out, &mut String::new(), &mut unknown);
        problems.extend(
            unknown
                .into_iter()
                .map(|f| format!("unknown field \"{f}\"")),
        );
    }
    if mode == FieldValidation::Strict && !problems.is_empty() {
        return Err(ApiError::bad_request(format!(
            "strict decoding error: {}",
            problems.join(", ")
        )));
    }
    Ok((out, problems))
}

/// Paths present (and not null) in `input` but missing from the typed round trip.
fn unknown_fields(input: &Value, typed: &Value, path: &mut String, out: &mut Vec<String>) {
    match (input, typed) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in a {
                if v.is_null() {
                    continue;
                }
                let len = path.len();
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(k);
                match b.get(k) {
                    Some(t) => unknown_fields(v, t, path, out),
                    None => out.push(path.clone()),
                }
                path.truncate(len);
            }
        }
        (Value::Array(a), Value::Array(b)) => {
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                unknown_fields(x, y, path, out);
                path.truncate(len);
            }
        }
        _ => {}
    }
}

/// Finds keys repeated within one JSON object of `raw`.
fn duplicate_fields(raw: &[u8], out: &mut Vec<String>) {
    let mut de = serde_json::Deserializer::from_slice(raw);
    let _ = DupSeed {
        path: &mut Vec::new(),
        out,
    }
    .deserialize(&mut de);
}

/// One step of a path into the body: a member's key or a list index.
enum Step<'de> {
    Key(Cow<'de, str>),
    Index(usize),
}

/// The dotted path of `steps` (`spec.containers[0].name`).
fn path_of(steps: &[Step<'_>]) -> String {
    let mut p = String::new();
    for s in steps {
        match s {
            Step::Key(k) => {
                if !p.is_empty() {
                    p.push('.');
                }
                p.push_str(k);
            }
            Step::Index(i) => p.push_str(&format!("[{i}]")),
        }
    }
    p
}

/// Walks the body without building it; the path is kept as a stack of borrowed keys and
/// only written out for a duplicate.
struct DupSeed<'a, 'de> {
    path: &'a mut Vec<Step<'de>>,
    out: &'a mut Vec<String>,
}

impl<'de> DeserializeSeed<'de> for DupSeed<'_, 'de> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

/// A member key, borrowed from the body unless it has escapes.
struct Key;

impl<'de> DeserializeSeed<'de> for Key {
    type Value = Cow<'de, str>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Cow<'de, str>, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for Key {
    type Value = Cow<'de, str>;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a key")
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Borrowed(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Owned(v.to_string()))
    }
}

impl<'de> Visitor<'de> for DupSeed<'_, 'de> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let DupSeed { path, out } = self;
        // Keys seen so far: most objects have a few, so a list; a set past 16.
        let mut seen: Vec<Cow<'de, str>> = Vec::new();
        let mut many: Option<HashSet<Cow<'de, str>>> = None;
        while let Some(k) = map.next_key_seed(Key)? {
            let dup = match &mut many {
                Some(set) => !set.insert(k.clone()),
                None if seen.contains(&k) => true,
                None => {
                    seen.push(k.clone());
                    if seen.len() > 16 {
                        many = Some(std::mem::take(&mut seen).into_iter().collect());
                    }
                    false
                }
            };
            path.push(Step::Key(k));
            if dup {
                out.push(format!("duplicate field \"{}\"", path_of(path)));
            }
            let r = map.next_value_seed(DupSeed {
                path: &mut *path,
                out: &mut *out,
            });
            path.pop();
            r?;
        }
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let DupSeed { path, out } = self;
        let mut i = 0;
        loop {
            path.push(Step::Index(i));
            let r = seq.next_element_seed(DupSeed {
                path: &mut *path,
                out: &mut *out,
            });
            path.pop();
            if r?.is_none() {
                return Ok(());
            }
            i += 1;
        }
    }
    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }
}

/// ObjectMeta validation every kind shares: name (by the kind's rule), namespace
/// presence, labels, annotations, finalizers.
pub fn validate_meta(info: &ResourceInfo, obj: &Value) -> Vec<Cause> {
    let mut errs = Vec::new();
    let name = obj.name();
    if name.is_empty() {
        errs.push(Cause::new(
            "FieldValueRequired",
            "metadata.name",
            "Required value: name or generateName is required".into(),
        ));
    } else {
        errs.extend(
            info.strategy
                .validate_name(name)
                .into_iter()
                .map(|e| Cause::invalid("metadata.name", &json!(name), e)),
        );
    }
    if info.namespaced && obj.namespace().is_empty() {
        errs.push(Cause::required("metadata.namespace"));
    }
    if let Some(labels) = obj.labels() {
        for (k, v) in labels {
            for e in names::qualified_name(k) {
                errs.push(Cause::invalid("metadata.labels", &json!(k), e));
            }
            match v.as_str() {
                Some(s) => errs.extend(
                    names::label_value(s)
                        .into_iter()
                        .map(|e| Cause::invalid("metadata.labels", v, e)),
                ),
                None => errs.push(Cause::invalid("metadata.labels", v, "must be a string")),
            }
        }
    }
    if let Some(ann) = obj
        .meta()
        .and_then(|m| m.get("annotations"))
        .and_then(Value::as_object)
    {
        let mut total = 0;
        for (k, v) in ann {
            total += k.len() + v.as_str().map_or(0, str::len);
            for e in names::qualified_name(k) {
                errs.push(Cause::invalid("metadata.annotations", &json!(k), e));
            }
        }
        if total > 256 * 1024 {
            errs.push(Cause::too_long("metadata.annotations", 256 * 1024));
        }
    }
    for (i, f) in obj.finalizers().iter().enumerate() {
        if !names::qualified_name(f).is_empty() {
            errs.push(Cause::invalid(
                format!("metadata.finalizers[{i}]"),
                &json!(f),
                "name part must consist of alphanumeric characters, '-', '_' or '.'",
            ));
        }
    }
    errs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicates_are_found() {
        let mut out = Vec::new();
        duplicate_fields(
            br#"{"a": 1, "b": {"c": 1, "c": 2}, "a": 3, "l": [{"x": 1, "x": 1}]}"#,
            &mut out,
        );
        assert_eq!(
            out,
            vec![
                "duplicate field \"b.c\"",
                "duplicate field \"a\"",
                "duplicate field \"l[0].x\""
            ]
        );
        // Past 16 keys (a set), and keys spelt with escapes.
        let keys: Vec<String> = (0..40).map(|i| format!("\"k{i}\": {i}")).collect();
        let body = format!(
            r#"{{"m": {{{}, "k3": 0, "k39": 0}}, "e": {{"\u0061": 1, "a": 2}}}}"#,
            keys.join(", ")
        );
        let mut out = Vec::new();
        duplicate_fields(body.as_bytes(), &mut out);
        assert_eq!(
            out,
            vec![
                "duplicate field \"m.k3\"",
                "duplicate field \"m.k39\"",
                "duplicate field \"e.a\""
            ]
        );
    }

    #[test]
    fn unknown_paths() {
        let mut out = Vec::new();
        unknown_fields(
            &json!({"spec": {"a": 1, "bogus": 2, "n": null, "l": [{"x": 1, "y": 2}]}}),
            &json!({"spec": {"a": 1, "l": [{"x": 1}]}}),
            &mut String::new(),
            &mut out,
        );
        assert_eq!(out, vec!["spec.bogus", "spec.l[0].y"]);
    }
}
