//! Serving the OpenAPI documents: `/openapi/v3` (index and per group version, with
//! content hashes for client caching) and `/openapi/v2`.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Mutex, OnceLock};

use bytes::Bytes;
use rkube_api::openapi::{self, Schemas};
use rkube_api::protobuf::ProtoCodec;
use rkube_api::{ApiError, Registry};
use serde_json::{json, Map};

/// Generated documents, built on first use.
#[derive(Default)]
pub struct OpenApi {
    schemas: OnceLock<Schemas>,
    /// "api/v1" / "apis/apps/v1" -> (encoded document, hash).
    v3: Mutex<HashMap<String, (Bytes, String)>>,
    v2: OnceLock<Bytes>,
    v2_pb: OnceLock<Bytes>,
    codec: OnceLock<ProtoCodec>,
}

fn hash(b: &[u8]) -> String {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    b.hash(&mut h);
    format!("{:016X}", h.finish())
}

impl OpenApi {
    fn schemas(&self, reg: &Registry) -> &Schemas {
        self.schemas.get_or_init(|| Schemas::generate(reg))
    }

    fn group_version(&self, reg: &Registry, gv: &str) -> Option<(Bytes, String)> {
        if let Some(hit) = self.v3.lock().unwrap_or_else(|e| e.into_inner()).get(gv) {
            return Some(hit.clone());
        }
        let (group, version) = match gv.split('/').collect::<Vec<_>>().as_slice() {
            ["api", v] => ("", *v),
            ["apis", g, v] => (*g, *v),
            _ => return None,
        };
        let doc = openapi::v3_group_version(reg, self.schemas(reg), group, version)?;
        let bytes = Bytes::from(serde_json::to_vec(&doc).unwrap_or_default());
        let entry = (bytes.clone(), hash(&bytes));
        self.v3
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(gv.to_string(), entry.clone());
        Some(entry)
    }

    /// `/openapi/v3`: the group versions and where their documents are.
    pub fn v3_index(&self, reg: &Registry) -> Bytes {
        let mut gvs: Vec<String> = reg
            .all()
            .iter()
            .map(|r| {
                if r.group.is_empty() {
                    format!("api/{}", r.version)
                } else {
                    format!("apis/{}/{}", r.group, r.version)
                }
            })
            .collect();
        gvs.dedup();
        let mut paths = Map::new();
        for gv in gvs {
            if let Some((_, h)) = self.group_version(reg, &gv) {
                paths.insert(
                    gv.clone(),
                    json!({"serverRelativeURL": format!("/openapi/v3/{gv}?hash={h}")}),
                );
            }
        }
        Bytes::from(serde_json::to_vec(&json!({"paths": paths})).unwrap_or_default())
    }

    /// `/openapi/v3/<gv>`.
    pub fn v3_document(&self, reg: &Registry, gv: &str) -> Result<Bytes, ApiError> {
        self.group_version(reg, gv)
            .map(|(b, _)| b)
            .ok_or_else(ApiError::path_not_found)
    }

    /// Decodes a protobuf body holding the message `message` (a definition name), or the
    /// root message of `info` when None.
    pub fn decode_protobuf(
        &self,
        reg: &Registry,
        info: &rkube_api::ResourceInfo,
        message: Option<&str>,
        body: &[u8],
    ) -> Result<serde_json::Value, ApiError> {
        let schemas = self.schemas(reg);
        let root = match message {
            Some(m) => m.to_string(),
            None => schemas
                .roots
                .get(&(
                    info.group.to_string(),
                    info.version.to_string(),
                    info.plural.to_string(),
                ))
                .cloned()
                .unwrap_or_default(),
        };
        let codec = self.codec.get_or_init(|| ProtoCodec::new(schemas));
        codec.decode_object(body, &root).map_err(|e| {
            ApiError::bad_request(format!("the protobuf body does not decode as {root}: {e}"))
        })
    }

    /// `/openapi/v2` as protobuf (`application/com.github.proto-openapi.spec.v2@v1.0+protobuf`).
    pub fn v2_protobuf(&self, reg: &Registry) -> Bytes {
        self.v2_pb
            .get_or_init(|| {
                let doc: serde_json::Value =
                    serde_json::from_slice(&self.v2(reg)).unwrap_or_default();
                Bytes::from(rkube_api::openapi_pb::encode_v2(&doc))
            })
            .clone()
    }

    /// `/openapi/v2` (JSON).
    pub fn v2(&self, reg: &Registry) -> Bytes {
        self.v2
            .get_or_init(|| {
                Bytes::from(
                    serde_json::to_vec(&openapi::v2(reg, self.schemas(reg))).unwrap_or_default(),
                )
            })
            .clone()
    }
}
