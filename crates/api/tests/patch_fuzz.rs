//! Property tests over the patch appliers: whatever the document and the patch, no
//! panic, and no patch makes a result larger than its inputs allow (JSON Patch copies
//! within their 3 MiB cap; merge and strategic merge patches at most add the patch).
//! `make fuzz` runs them with many more cases.

use proptest::prelude::*;
use rkube_api::patch::{
    builtin_list_strategy, json_patch, merge_patch, strategic_merge, MAX_COPY_BYTES,
};
use serde_json::{Map, Value};

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z]{1,2}",
        Just("name".to_string()),
        Just("containers".to_string()),
        Just("finalizers".to_string()),
        Just("spec".to_string()),
        Just("$patch".to_string()),
        Just("$retainKeys".to_string()),
        Just("$setElementOrder/containers".to_string()),
        Just("$deleteFromPrimitiveList/finalizers".to_string()),
    ]
}

fn json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        prop_oneof![
            "[a-z]{0,4}",
            Just("replace".into()),
            Just("delete".into()),
            Just("merge".into())
        ]
        .prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 48, 5, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::btree_map(key(), inner, 0..5)
                .prop_map(|m| Value::Object(m.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

fn pointer() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        Just("/a".to_string()),
        Just("/a/0".to_string()),
        Just("/a/-".to_string()),
        Just("/a/99".to_string()),
        Just("/spec/containers/0/name".to_string()),
        Just("/x~1y".to_string()),
        Just("/~2".to_string()),
        Just("nope".to_string()),
        "(/[a-z0-9-]{1,2}){1,3}",
    ]
}

fn op() -> impl Strategy<Value = Value> {
    (
        prop_oneof![
            Just("add"),
            Just("remove"),
            Just("replace"),
            Just("move"),
            Just("copy"),
            Just("test"),
            Just("bogus")
        ],
        pointer(),
        pointer(),
        json(),
        any::<u8>(),
    )
        .prop_map(|(op, path, from, value, drop)| {
            let mut m = Map::new();
            m.insert("op".into(), op.into());
            if drop % 7 != 0 {
                m.insert("path".into(), path.into());
            }
            if drop % 5 != 0 {
                m.insert("from".into(), from.into());
            }
            if drop % 3 != 0 {
                m.insert("value".into(), value);
            }
            Value::Object(m)
        })
}

fn size(v: &Value) -> usize {
    serde_json::to_vec(v).map(|b| b.len()).unwrap_or(0)
}

proptest! {
    #[test]
    fn json_patches_never_panic_or_grow_past_the_copy_cap(
        doc in json(),
        ops in prop::collection::vec(op(), 0..12),
    ) {
        let patch = Value::Array(ops);
        if let Ok(out) = json_patch(&doc, &patch) {
            prop_assert!(size(&out) <= size(&doc) + size(&patch) + MAX_COPY_BYTES);
        }
    }

    #[test]
    fn merge_patches_add_at_most_the_patch(doc in json(), patch in json()) {
        let out = merge_patch(&doc, &patch);
        prop_assert!(size(&out) <= size(&doc) + size(&patch));
        if let Ok(out) = strategic_merge(&doc, &patch, &builtin_list_strategy) {
            prop_assert!(size(&out) <= size(&doc) + size(&patch));
        }
    }
}

proptest! {
    // Each case copies up to the 3 MiB cap: a few cases cover the doubling depths.
    #![proptest_config(ProptestConfig::with_cases(12))]

    #[test]
    fn copies_that_double_the_document_stop_at_the_cap(doubling in 1usize..40) {
        let doc = serde_json::json!({"a": {"x": "y".repeat(4096)}});
        let ops: Vec<Value> = (0..doubling)
            .map(|i| serde_json::json!({"op": "copy", "from": "/a", "path": format!("/a/c{i}")}))
            .collect();
        if let Ok(out) = json_patch(&doc, &Value::Array(ops)) {
            prop_assert!(size(&out) <= size(&doc) + MAX_COPY_BYTES + 64 * doubling);
        }
    }
}
