//! Property tests over the request decoders: bodies (JSON, YAML), DeleteOptions, paths,
//! queries, selectors and resourceVersions. Whatever the input, the answer is a value or
//! a client error (400, 413, 415, 422), never a panic. `make fuzz` runs more cases.

use http::Method;
use proptest::prelude::*;
use rkube_api::selector::{FieldSelector, LabelSelector};
use serde_json::Value;

use crate::request::{self, Query};
use crate::rest::delete_options::DeleteOptions;
use crate::rest::parse_resource_version;
use crate::validation::{decode_typed, FieldValidation};
use crate::{body, rest};

/// Bytes that are often almost JSON: fragments of objects, strings, escapes, numbers.
fn jsonish() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(
        prop_oneof![
            Just(&b"{"[..]),
            Just(&b"}"[..]),
            Just(&b"["[..]),
            Just(&b"]"[..]),
            Just(&b"\"metadata\":"[..]),
            Just(&b"\"name\""[..]),
            Just(&b"\"dryRun\":[\"All\"]"[..]),
            Just(&b"\"kind\":\"DeleteOptions\""[..]),
            Just(&b"\"apiVersion\":\"v1\""[..]),
            Just(&b","[..]),
            Just(&b":"[..]),
            Just(&b"1e999"[..]),
            Just(&b"-0"[..]),
            Just(&b"\"\\ud800\""[..]),
            Just(&b"null"[..]),
            Just(&b"&a [*a]"[..]),
            Just(&b"\xff"[..]),
        ],
        0..40,
    )
    .prop_map(|parts| parts.concat())
}

/// Cases per property: 512, or PROPTEST_CASES (`make fuzz`).
fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(512)
}

fn client_error(code: u16) -> bool {
    matches!(code, 400 | 413 | 415 | 422)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    #[test]
    fn bodies_decode_or_are_refused(
        bytes in prop_oneof![jsonish(), prop::collection::vec(any::<u8>(), 0..64)],
        ct in prop_oneof![
            Just("application/json"),
            Just("application/yaml"),
            Just("text/plain"),
            Just(""),
        ],
    ) {
        match body::decode_object(Some(ct), &bytes, None) {
            Ok(v) => {
                prop_assert!(v.is_object());
                // Typed decoding of whatever came out: a value or a 400.
                let reg = rkube_api::Registry::builtin();
                let info = reg.get("", "v1", "configmaps").expect("registered");
                if let Err(e) = decode_typed(info, v, Some(&bytes), FieldValidation::Strict) {
                    prop_assert!(client_error(e.code), "{e:?}");
                }
            }
            Err(e) => prop_assert!(client_error(e.code), "{e:?}"),
        }
    }

    #[test]
    fn delete_options_decode_or_are_refused(bytes in jsonish(), query in "[a-zA-Z=&%.0-9-]{0,40}") {
        let body = body::parse_json(&bytes).ok();
        match DeleteOptions::from_request(body.as_ref(), &Query::parse(Some(&query)), Some("v1")) {
            Ok(o) => prop_assert!(o.dry_run.iter().all(|d| d == "All")),
            Err(e) => prop_assert!(client_error(e.code), "{e:?}"),
        }
    }

    #[test]
    fn paths_queries_selectors_and_versions(
        path in "(/[a-z0-9.%-]{0,12}){0,8}",
        query in "[a-zA-Z=&%.,!()0-9 -]{0,40}",
        sel in "[a-z0-9=!,(). -]{0,30}",
        rv in "[0-9a-z-]{0,22}",
    ) {
        let q = Query::parse(Some(&query));
        for m in [Method::GET, Method::POST, Method::DELETE, Method::PATCH] {
            let _ = request::parse(&m, &path, &q);
        }
        let _ = LabelSelector::parse(&sel);
        let _ = FieldSelector::parse(&sel);
        if let Err(e) = parse_resource_version(&rv) {
            prop_assert_eq!(e.code, 400);
        }
        let _ = rest::field_value(
            rkube_api::Registry::builtin().get("", "v1", "pods").expect("registered"),
            &Value::Null,
            &sel,
        );
    }
}
