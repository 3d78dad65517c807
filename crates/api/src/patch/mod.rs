//! Patches: JSON Patch (RFC 6902), JSON Merge Patch (RFC 7386) and Kubernetes strategic
//! merge patch with its directives.

use serde_json::{Map, Value};

/// The patch content types the apiserver accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchType {
    /// `application/json-patch+json` (RFC 6902).
    Json,
    /// `application/merge-patch+json` (RFC 7386).
    Merge,
    /// `application/strategic-merge-patch+json`.
    StrategicMerge,
    /// `application/apply-patch+yaml` (server-side apply).
    Apply,
}

impl PatchType {
    /// The content types, as a 415 lists them.
    pub const ACCEPTED: [&'static str; 4] = [
        "application/json-patch+json",
        "application/merge-patch+json",
        "application/strategic-merge-patch+json",
        "application/apply-patch+yaml",
    ];

    /// The patch type of a Content-Type header.
    pub fn from_content_type(ct: &str) -> Option<Self> {
        match ct.split(';').next().unwrap_or("").trim() {
            "application/json-patch+json" => Some(Self::Json),
            "application/merge-patch+json" => Some(Self::Merge),
            "application/strategic-merge-patch+json" => Some(Self::StrategicMerge),
            "application/apply-patch+yaml" | "application/apply-patch+cbor" => Some(Self::Apply),
            _ => None,
        }
    }
}

/// A patch that cannot be applied; the apiserver answers 422 (or 400 for a malformed patch).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PatchError {
    /// The patch document itself is not valid (400).
    #[error("{0}")]
    Malformed(String),
    /// The patch does not apply to the object (422).
    #[error("{0}")]
    Failed(String),
    /// A JSON Patch `test` operation did not match.
    #[error("{0}")]
    TestFailed(String),
    /// More operations than upstream allows (413 before any is applied).
    #[error(
        "The allowed maximum operations in a JSON patch is {MAX_JSON_PATCH_OPERATIONS}, got {0}"
    )]
    TooManyOperations(usize),
}

/// Upstream's cap on the operations of one JSON Patch.
pub const MAX_JSON_PATCH_OPERATIONS: usize = 10_000;

/// Upstream's cap (`JSONPatchMaxCopyBytes`, 3 MiB) on how much JSON Patch `copy`
/// operations may add to a document in total: without it, each copy may double the
/// document, and a 2 KB patch grows it to gigabytes.
pub const MAX_COPY_BYTES: usize = 3 * 1024 * 1024;

/// Counts the bytes of a value's JSON, giving up once they pass `budget`.
struct Counter {
    n: usize,
    budget: usize,
}

impl std::io::Write for Counter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.n += b.len();
        if self.n > self.budget {
            return Err(std::io::Error::other("over budget"));
        }
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The size of `v` as JSON, or `None` once it exceeds `budget` (never serializes more).
fn json_size_within(v: &Value, budget: usize) -> Option<usize> {
    let mut c = Counter { n: 0, budget };
    serde_json::to_writer(&mut c, v).ok().map(|_| c.n)
}

/// Applies an RFC 6902 JSON Patch document.
pub fn json_patch(doc: &Value, patch: &Value) -> Result<Value, PatchError> {
    let ops = patch
        .as_array()
        .ok_or_else(|| PatchError::Malformed("json patch must be an array of operations".into()))?;
    if ops.len() > MAX_JSON_PATCH_OPERATIONS {
        return Err(PatchError::TooManyOperations(ops.len()));
    }
    let mut doc = doc.clone();
    let mut copied = 0usize;
    for op in ops {
        let kind = op.get("op").and_then(Value::as_str).ok_or_else(|| {
            PatchError::Malformed(format!("invalid JSON Patch: operation has no 'op': {op}"))
        })?;
        let path = op.get("path").and_then(Value::as_str).ok_or_else(|| {
            PatchError::Malformed(format!("invalid JSON Patch: operation has no 'path': {op}"))
        })?;
        let value = || {
            op.get("value").cloned().ok_or_else(|| {
                PatchError::Malformed(format!("missing value for operation {kind:?} at {path}"))
            })
        };
        let from = || {
            op.get("from").and_then(Value::as_str).ok_or_else(|| {
                PatchError::Malformed(format!("missing from for operation {kind:?}"))
            })
        };
        match kind {
            "add" => add(&mut doc, path, value()?)?,
            "remove" => {
                remove(&mut doc, path)?;
            }
            "replace" => {
                remove(&mut doc, path)?;
                add(&mut doc, path, value()?)?;
            }
            "move" => {
                let v = remove(&mut doc, from()?)?;
                add(&mut doc, path, v)?;
            }
            "copy" => {
                let src = doc.pointer(&pointer(from()?)?).ok_or_else(|| {
                    PatchError::Failed(format!(
                        "copy from {} failed: not found",
                        from().unwrap_or("")
                    ))
                })?;
                // Measured before the value is cloned, so the document never grows past
                // the cap.
                let budget = MAX_COPY_BYTES - copied;
                copied += json_size_within(src, budget).ok_or_else(|| {
                    let size = serde_json::to_vec(src).map(|b| b.len()).unwrap_or(usize::MAX);
                    PatchError::Failed(format!(
                        "Unable to complete the copy, the accumulated size increase of copy is {}, exceeding the limit {MAX_COPY_BYTES}",
                        copied.saturating_add(size)
                    ))
                })?;
                let v = src.clone();
                add(&mut doc, path, v)?;
            }
            "test" => {
                let want = value()?;
                if doc.pointer(&pointer(path)?) != Some(&want) {
                    return Err(PatchError::TestFailed(format!(
                        "testing value {path} failed: test failed"
                    )));
                }
            }
            other => return Err(PatchError::Malformed(format!("Unexpected kind: {other}"))),
        }
    }
    Ok(doc)
}

fn pointer(path: &str) -> Result<String, PatchError> {
    if !path.is_empty() && !path.starts_with('/') {
        return Err(PatchError::Malformed(format!(
            "invalid JSON pointer {path:?}"
        )));
    }
    Ok(path.to_string())
}

fn split_parent(path: &str) -> Result<(String, String), PatchError> {
    let p = pointer(path)?;
    let idx = p
        .rfind('/')
        .ok_or_else(|| PatchError::Failed("cannot operate on the whole document".into()))?;
    let last = p[idx + 1..].replace("~1", "/").replace("~0", "~");
    Ok((p[..idx].to_string(), last))
}

fn add(doc: &mut Value, path: &str, v: Value) -> Result<(), PatchError> {
    if path.is_empty() {
        *doc = v;
        return Ok(());
    }
    let (parent, last) = split_parent(path)?;
    let target = doc.pointer_mut(&parent).ok_or_else(|| {
        PatchError::Failed(format!(
            "add operation does not apply: doc is missing path: {path:?}"
        ))
    })?;
    match target {
        Value::Object(m) => {
            m.insert(last, v);
        }
        Value::Array(a) => {
            let i = if last == "-" {
                a.len()
            } else {
                last.parse::<usize>()
                    .ok()
                    .filter(|i| *i <= a.len())
                    .ok_or_else(|| {
                        PatchError::Failed(format!(
                            "add operation does not apply: index out of range: {path:?}"
                        ))
                    })?
            };
            a.insert(i, v);
        }
        _ => {
            return Err(PatchError::Failed(format!(
                "add operation does not apply: doc is missing path: {path:?}"
            )))
        }
    }
    Ok(())
}

fn remove(doc: &mut Value, path: &str) -> Result<Value, PatchError> {
    let (parent, last) = split_parent(path)?;
    let missing = || {
        PatchError::Failed(format!(
            "remove operation does not apply: doc is missing path: {path:?}"
        ))
    };
    match doc.pointer_mut(&parent).ok_or_else(missing)? {
        Value::Object(m) => m.remove(&last).ok_or_else(missing),
        Value::Array(a) => {
            let i = last
                .parse::<usize>()
                .ok()
                .filter(|i| *i < a.len())
                .ok_or_else(missing)?;
            Ok(a.remove(i))
        }
        _ => Err(missing()),
    }
}

/// Applies an RFC 7386 JSON Merge Patch.
pub fn merge_patch(doc: &Value, patch: &Value) -> Value {
    let Value::Object(p) = patch else {
        return patch.clone();
    };
    let mut out = match doc {
        Value::Object(m) => m.clone(),
        _ => Map::new(),
    };
    for (k, v) in p {
        if v.is_null() {
            out.remove(k);
        } else {
            let merged = merge_patch(out.get(k).unwrap_or(&Value::Null), v);
            out.insert(k.clone(), merged);
        }
    }
    Value::Object(out)
}

mod strategic;

pub use strategic::{builtin_list_strategy, strategic_merge, ListStrategy};

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn json_patch_ops() {
        let doc = json!({"a": {"b": [1, 2]}, "c": 1});
        let out = json_patch(
            &doc,
            &json!([
                {"op": "add", "path": "/a/b/-", "value": 3},
                {"op": "replace", "path": "/c", "value": 2},
                {"op": "remove", "path": "/a/b/0"},
                {"op": "copy", "from": "/c", "path": "/d"},
                {"op": "test", "path": "/d", "value": 2}
            ]),
        )
        .unwrap();
        assert_eq!(out, json!({"a": {"b": [2, 3]}, "c": 2, "d": 2}));
        assert!(json_patch(&doc, &json!([{"op": "remove", "path": "/x"}])).is_err());
        assert!(matches!(
            json_patch(&doc, &json!([{"op": "test", "path": "/c", "value": 9}])),
            Err(PatchError::TestFailed(_))
        ));
        assert!(json_patch(&doc, &json!({"op": "add"})).is_err());
    }

    #[test]
    fn merge_patch_nulls_delete() {
        let out = merge_patch(
            &json!({"a": 1, "b": {"c": 2, "d": 3}}),
            &json!({"a": null, "b": {"c": 5}}),
        );
        assert_eq!(out, json!({"b": {"c": 5, "d": 3}}));
    }

    #[test]
    fn copy_amplification_is_refused_before_the_document_grows() {
        let doc = json!({"data": {}});
        let mut ops = vec![json!({"op": "add", "path": "/data/a", "value": "x".repeat(1024)})];
        // Each copy doubles the document: 30 of them would make 1 TiB.
        ops.push(json!({"op": "add", "path": "/data/b", "value": {}}));
        ops.push(json!({"op": "copy", "from": "/data/a", "path": "/data/b/a"}));
        for i in 0..30 {
            ops.push(json!({"op": "copy", "from": "/data/b", "path": format!("/data/b/c{i}")}));
        }
        let e = json_patch(&doc, &Value::Array(ops)).unwrap_err();
        match e {
            PatchError::Failed(m) => assert!(
                m.starts_with(
                    "Unable to complete the copy, the accumulated size increase of copy is "
                ) && m.ends_with(&format!("exceeding the limit {MAX_COPY_BYTES}")),
                "{m}"
            ),
            other => panic!("{other:?}"),
        }
        // Copies within the budget still apply.
        let ops = json!([
            {"op": "add", "path": "/data/a", "value": "x".repeat(1024)},
            {"op": "copy", "from": "/data/a", "path": "/data/b"},
        ]);
        let out = json_patch(&doc, &ops).unwrap();
        assert_eq!(out["data"]["a"], out["data"]["b"]);
    }

    #[test]
    fn at_most_ten_thousand_operations() {
        let doc = json!({"a": 1});
        let op = json!({"op": "test", "path": "/a", "value": 1});
        let ok = Value::Array(vec![op.clone(); MAX_JSON_PATCH_OPERATIONS]);
        assert!(json_patch(&doc, &ok).is_ok());
        let over = Value::Array(vec![op; MAX_JSON_PATCH_OPERATIONS + 1]);
        let e = json_patch(&doc, &over).unwrap_err();
        assert_eq!(e, PatchError::TooManyOperations(10_001));
        assert_eq!(
            e.to_string(),
            "The allowed maximum operations in a JSON patch is 10000, got 10001"
        );
    }
}
