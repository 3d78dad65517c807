//! Reading and writing `metadata` of objects held as JSON.

use serde_json::{Map, Value};

/// Borrowed view of an object's metadata strings.
pub trait ObjectMeta {
    /// `metadata`, if the object has one.
    fn meta(&self) -> Option<&Map<String, Value>>;
    /// `metadata`, created empty if missing.
    fn meta_mut(&mut self) -> &mut Map<String, Value>;

    /// A string field of `metadata`.
    fn meta_str(&self, field: &str) -> Option<&str> {
        self.meta()?.get(field)?.as_str()
    }
    /// `metadata.name` ("" if unset).
    fn name(&self) -> &str {
        self.meta_str("name").unwrap_or("")
    }
    /// `metadata.namespace` ("" if unset).
    fn namespace(&self) -> &str {
        self.meta_str("namespace").unwrap_or("")
    }
    /// `metadata.resourceVersion` ("" if unset).
    fn resource_version(&self) -> &str {
        self.meta_str("resourceVersion").unwrap_or("")
    }
    /// `metadata.uid` ("" if unset).
    fn uid(&self) -> &str {
        self.meta_str("uid").unwrap_or("")
    }
    /// `metadata.labels`.
    fn labels(&self) -> Option<&Map<String, Value>> {
        self.meta()?.get("labels")?.as_object()
    }
    /// `metadata.finalizers`.
    fn finalizers(&self) -> Vec<String> {
        self.meta()
            .and_then(|m| m.get("finalizers"))
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    }
    /// Whether `metadata.deletionTimestamp` is set.
    fn is_deleting(&self) -> bool {
        self.meta()
            .is_some_and(|m| m.get("deletionTimestamp").is_some_and(|v| !v.is_null()))
    }
    /// Sets a field of `metadata`.
    fn set_meta(&mut self, field: &str, value: impl Into<Value>) {
        self.meta_mut().insert(field.to_string(), value.into());
    }
    /// Removes a field of `metadata`; its value.
    fn remove_meta(&mut self, field: &str) -> Option<Value> {
        self.meta_mut().remove(field)
    }
}

impl ObjectMeta for Value {
    fn meta(&self) -> Option<&Map<String, Value>> {
        self.get("metadata")?.as_object()
    }
    fn meta_mut(&mut self) -> &mut Map<String, Value> {
        if !self.is_object() {
            *self = Value::Object(Map::new());
        }
        let obj = self.as_object_mut().expect("object");
        let m = obj
            .entry("metadata")
            .or_insert_with(|| Value::Object(Map::new()));
        if !m.is_object() {
            *m = Value::Object(Map::new());
        }
        m.as_object_mut().expect("object")
    }
}

/// The current time as the API writes it (RFC 3339, seconds, UTC).
pub fn now_rfc3339() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// The current time with microseconds (`metav1.MicroTime`, used by Leases and events.k8s.io).
pub fn now_micro() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%S%.6fZ")
        .to_string()
}

/// Parses an RFC 3339 timestamp.
pub fn parse_time(s: &str) -> Option<jiff::Timestamp> {
    s.parse().ok()
}

/// The value at a dotted path (`spec.nodeName`), if present.
pub fn lookup<'a>(obj: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(obj, |v, k| v.get(k))
}

/// A fresh UID.
pub fn new_uid() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// Lower-case alphanumerics upstream uses for generateName suffixes (no vowels, no
/// confusable characters).
const SUFFIX_ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

/// `generateName` + 5 random characters, as upstream's SimpleNameGenerator.
pub fn generate_name(prefix: &str) -> String {
    let max_prefix = 63 - 5;
    let prefix = if prefix.len() > max_prefix {
        &prefix[..max_prefix]
    } else {
        prefix
    };
    let bytes = uuid::Uuid::new_v4().into_bytes();
    let suffix: String = bytes[..5]
        .iter()
        .map(|b| SUFFIX_ALPHABET[*b as usize % SUFFIX_ALPHABET.len()] as char)
        .collect();
    format!("{prefix}{suffix}")
}
