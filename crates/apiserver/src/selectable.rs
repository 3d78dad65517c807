//! The part of a stored object that label and field selectors read, parsed without
//! building the rest: `metadata.name`, `.namespace` and `.labels`, and every scalar at
//! most two levels deep (`spec.nodeName`, `status.phase`, `type`, `source.component`).
//! Containers, managed fields and other nested values are skipped by the parser, which
//! still checks that they are well-formed JSON. Field labels (`Strategy::field`) only
//! read such scalars.

use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::{Map, Value};

/// Parses `json` into an object holding only what selectors read; None if it is not
/// a JSON object.
pub fn parse(json: &[u8]) -> Option<Value> {
    let mut de = serde_json::Deserializer::from_slice(json);
    let v = Level::Top.deserialize(&mut de).ok()?;
    de.end().ok()?;
    v.is_object().then_some(v)
}

/// Where in the object a value sits, which decides what of it is kept.
#[derive(Clone, Copy)]
enum Level {
    /// The object itself.
    Top,
    /// `metadata`: name, namespace and labels.
    Metadata,
    /// A top-level field other than metadata: its scalars, or its members' scalars.
    Field,
    /// A member of a top-level object: kept only if a scalar.
    Member,
    /// `metadata.labels`, and the values of the members kept whole.
    Whole,
}

impl Level {
    /// What a member `key` of an object at this level is parsed as; None: skipped.
    fn member(self, key: &str) -> Option<Level> {
        match (self, key) {
            (Level::Top, "metadata") => Some(Level::Metadata),
            (Level::Top, _) => Some(Level::Field),
            (Level::Metadata, "name" | "namespace") => Some(Level::Member),
            (Level::Metadata, "labels") => Some(Level::Whole),
            (Level::Metadata, _) => None,
            (Level::Field, _) => Some(Level::Member),
            (Level::Member | Level::Whole, _) => None,
        }
    }
}

impl<'de> DeserializeSeed<'de> for Level {
    type Value = Value;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        match self {
            Level::Whole => Value::deserialize(d),
            _ => d.deserialize_any(self),
        }
    }
}

impl<'de> Visitor<'de> for Level {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        // No selectable field is a list: skipped.
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Value::Null)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        if let Level::Member = self {
            // Two levels down: not read by any field label.
            while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
            return Ok(Value::Null);
        }
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            match self.member(&key) {
                Some(level) => {
                    let v = map.next_value_seed(level)?;
                    if !v.is_null() {
                        out.insert(key, v);
                    }
                }
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(Value::Object(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rkube_api::Registry;
    use serde_json::json;

    /// Every built-in kind's field labels read the same from the pruned object as from
    /// the whole one.
    #[test]
    fn field_labels_read_the_same_from_the_pruned_object() {
        let objects = [
            json!({"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": "p", "namespace": "ns", "labels": {"app": "a", "x": ""},
                    "managedFields": [{"manager": "m"}], "annotations": {"k": "v"}},
                "spec": {"nodeName": "n1", "restartPolicy": "Never", "schedulerName": "s",
                    "serviceAccountName": "sa", "hostNetwork": true,
                    "containers": [{"name": "c", "image": "i"}],
                    "affinity": {"nodeAffinity": {}}},
                "status": {"phase": "Running", "podIP": "10.0.0.1",
                    "podIPs": [{"ip": "10.0.0.1"}], "nominatedNodeName": "n2"}}),
            json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"},
                "type": "Opaque", "data": {"a": "Yg=="}}),
            json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n"},
                "spec": {"unschedulable": true, "taints": [{"key": "k"}]}}),
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "n"},
                "status": {"phase": "Terminating"}}),
            json!({"apiVersion": "v1", "kind": "Event", "metadata": {"name": "e", "namespace": "d"},
                "involvedObject": {"kind": "Pod", "name": "p", "namespace": "d", "uid": "u",
                    "fieldPath": "spec.containers{c}", "resourceVersion": "3", "apiVersion": "v1"},
                "reason": "Started", "type": "Normal", "reportingComponent": "kubelet",
                "source": {"component": "kubelet", "host": "n"}, "count": 2}),
        ];
        let reg = Registry::builtin();
        for obj in objects {
            let kind = obj["kind"].as_str().unwrap();
            let info = reg
                .all()
                .iter()
                .find(|i| i.kind == kind && i.group.is_empty())
                .unwrap();
            let pruned = parse(&serde_json::to_vec(&obj).unwrap()).unwrap();
            assert_eq!(pruned["metadata"]["labels"], obj["metadata"]["labels"]);
            assert_eq!(pruned["metadata"]["name"], obj["metadata"]["name"]);
            assert!(pruned["metadata"].get("managedFields").is_none());
            let strategy = info.strategy;
            for f in strategy.field_labels() {
                assert_eq!(
                    strategy.field(&pruned, f),
                    strategy.field(&obj, f),
                    "{kind} {f}"
                );
            }
        }
    }

    #[test]
    fn nested_values_are_skipped_but_must_be_well_formed() {
        let v = parse(br#"{"metadata":{"name":"a"},"spec":{"x":"y","deep":{"a":[1,{"b":2}]},"list":[1]},"n":1}"#)
            .unwrap();
        assert_eq!(
            v,
            json!({"metadata": {"name": "a"}, "spec": {"x": "y"}, "n": 1})
        );
        assert!(parse(br#"{"spec":{"deep":{"a":[1,}}}"#).is_none());
        assert!(parse(b"[1]").is_none());
        assert!(parse(br#"{"a":1} x"#).is_none());
        assert_eq!(parse(br#"{"s":"\u00e9\n"}"#).unwrap()["s"], "é\n");
    }
}
