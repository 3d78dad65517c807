//! Response shapes a client can ask for with `Accept`: the object itself, a
//! `meta.k8s.io/v1` Table, or PartialObjectMetadata.

use http::{header, HeaderMap};
use rkube_api::table::column_definitions;
use rkube_api::ResourceInfo;
use serde_json::{json, Map, Value};

use crate::request::Query;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    Object,
    /// A Table; `include_object`: None, Metadata (default) or Object.
    Table(IncludeObject),
    PartialMetadata,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IncludeObject {
    None,
    Metadata,
    Object,
}

impl Output {
    pub fn negotiate(headers: &HeaderMap, query: &Query) -> Output {
        let accept = headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        // The first acceptable entry wins, as clients list their preference first.
        for entry in accept.split(',') {
            let params: Vec<&str> = entry.split(';').map(str::trim).collect();
            let media = params[0];
            if media != "application/json" && media != "*/*" && !media.is_empty() {
                continue;
            }
            let as_ = params.iter().find_map(|p| p.strip_prefix("as="));
            let group = params.iter().find_map(|p| p.strip_prefix("g="));
            match (as_, group) {
                (Some("Table"), Some("meta.k8s.io")) => {
                    let inc = match query.get("includeObject") {
                        Some("None") => IncludeObject::None,
                        Some("Object") => IncludeObject::Object,
                        _ => IncludeObject::Metadata,
                    };
                    return Output::Table(inc);
                }
                (
                    Some("PartialObjectMetadata" | "PartialObjectMetadataList"),
                    Some("meta.k8s.io"),
                ) => {
                    return Output::PartialMetadata;
                }
                (Some(_), _) => continue,
                (None, _) => return Output::Object,
            }
        }
        Output::Object
    }

    /// The Content-Type of an answer in this shape.
    pub fn content_type(&self, list: bool) -> &'static str {
        match self {
            Output::Object => "application/json",
            Output::Table(_) => "application/json;as=Table;v=v1;g=meta.k8s.io",
            Output::PartialMetadata if list => {
                "application/json;as=PartialObjectMetadataList;v=v1;g=meta.k8s.io"
            }
            Output::PartialMetadata => {
                "application/json;as=PartialObjectMetadata;v=v1;g=meta.k8s.io"
            }
        }
    }

    /// One object in this shape.
    pub fn object(&self, info: &ResourceInfo, obj: Value) -> Value {
        match self {
            Output::Object => obj,
            Output::PartialMetadata => partial(&obj),
            Output::Table(inc) => {
                let rv = obj
                    .pointer("/metadata/resourceVersion")
                    .cloned()
                    .unwrap_or(Value::Null);
                json!({
                    "kind": "Table",
                    "apiVersion": "meta.k8s.io/v1",
                    "metadata": {"resourceVersion": rv},
                    "columnDefinitions": column_definitions(info.strategy.columns()),
                    "rows": [row(info, obj, *inc)],
                })
            }
        }
    }

    /// A list in this shape; `meta` is the list metadata (resourceVersion, continue, ...).
    pub fn list(&self, info: &ResourceInfo, items: Vec<Value>, meta: Map<String, Value>) -> Value {
        match self {
            Output::Object => json!({
                "kind": info.list_kind,
                "apiVersion": info.api_version(),
                "metadata": meta,
                "items": items,
            }),
            Output::PartialMetadata => json!({
                "kind": "PartialObjectMetadataList",
                "apiVersion": "meta.k8s.io/v1",
                "metadata": meta,
                "items": items.iter().map(partial).collect::<Vec<_>>(),
            }),
            Output::Table(inc) => json!({
                "kind": "Table",
                "apiVersion": "meta.k8s.io/v1",
                "metadata": meta,
                "columnDefinitions": column_definitions(info.strategy.columns()),
                "rows": items.into_iter().map(|o| row(info, o, *inc)).collect::<Vec<_>>(),
            }),
        }
    }
}

fn row(info: &ResourceInfo, obj: Value, inc: IncludeObject) -> Value {
    let cells = info.strategy.cells(&obj);
    let object = match inc {
        IncludeObject::None => Value::Null,
        IncludeObject::Metadata => partial(&obj),
        IncludeObject::Object => obj,
    };
    json!({"cells": cells, "object": object})
}

/// PartialObjectMetadata of an object.
pub fn partial(obj: &Value) -> Value {
    json!({
        "kind": "PartialObjectMetadata",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": obj.get("metadata").cloned().unwrap_or(json!({})),
    })
}
