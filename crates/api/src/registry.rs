//! The kind registry: every served resource with its group, version, kind, plural, scope,
//! subresources, short names and strategy.

use std::collections::BTreeMap;

use serde::{de::DeserializeOwned, Serialize};
use serde_json::Value;

use crate::strategy::Strategy;

/// Decodes a JSON object as the kind's typed struct and encodes it back: checks types and
/// drops unknown fields. The error names the path of the bad field.
pub type Roundtrip = fn(&Value) -> Result<Value, String>;

/// One served resource.
pub struct ResourceInfo {
    /// The API group ("" for core).
    pub group: &'static str,
    /// The version (`v1`).
    pub version: &'static str,
    /// The kind (`Pod`).
    pub kind: &'static str,
    /// The kind of its lists (`PodList`).
    pub list_kind: &'static str,
    /// The plural name in URLs (`pods`).
    pub plural: &'static str,
    /// Whether objects live in namespaces.
    pub namespaced: bool,
    /// Short names kubectl accepts (`po`).
    pub short_names: &'static [&'static str],
    /// Categories it belongs to (`all`).
    pub categories: &'static [&'static str],
    /// Subresources this resource serves (`status`, `scale`, `binding`, ...).
    pub subresources: &'static [&'static str],
    /// What is special about the kind.
    pub strategy: &'static dyn Strategy,
    /// The typed decode and encode of its objects.
    pub roundtrip: Roundtrip,
    /// Adds the kind's OpenAPI schema (and what it references) to a generator.
    pub schema: fn(&mut schemars::SchemaGenerator) -> schemars::Schema,
    /// Where objects of this resource live in the store: `/registry/<prefix>/`.
    pub storage_prefix: &'static str,
    /// For a version stored as another one: how its objects convert.
    pub conversion: Option<&'static Conversion>,
}

/// Converts objects between a served version and the version they are stored in.
pub struct Conversion {
    /// This version to the stored one.
    pub to_storage: fn(Value) -> Value,
    /// The stored version to this one.
    pub from_storage: fn(Value) -> Value,
}

impl ResourceInfo {
    /// An object of this version as it is stored.
    pub fn to_storage(&self, obj: Value) -> Value {
        match self.conversion {
            Some(c) => (c.to_storage)(obj),
            None => obj,
        }
    }

    /// A stored object as this version serves it.
    pub fn from_storage(&self, obj: Value) -> Value {
        match self.conversion {
            Some(c) => (c.from_storage)(obj),
            None => obj,
        }
    }
}

impl ResourceInfo {
    /// `v1` or `apps/v1`.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// The lower-case singular name (`pod`), as discovery reports it.
    pub fn singular(&self) -> String {
        self.kind.to_ascii_lowercase()
    }

    /// Whether the resource serves subresource `name`.
    pub fn has_subresource(&self, name: &str) -> bool {
        self.subresources.contains(&name)
    }

    /// Whether the resource has a `status` subresource.
    pub fn has_status(&self) -> bool {
        self.has_subresource("status")
    }
}

/// Builds a `ResourceInfo` from a k8s-openapi type.
pub struct KindBuilder {
    info: ResourceInfo,
}

impl KindBuilder {
    /// A resource for the k8s-openapi type `T`, with its strategy.
    pub fn new<T>(strategy: &'static dyn Strategy) -> Self
    where
        T: k8s_openapi::Resource
            + k8s_openapi::ListableResource
            + DeserializeOwned
            + Serialize
            + schemars::JsonSchema,
    {
        let namespaced = std::any::type_name::<T::Scope>().ends_with("NamespaceResourceScope");
        KindBuilder {
            info: ResourceInfo {
                group: T::GROUP,
                version: T::VERSION,
                kind: T::KIND,
                list_kind: T::LIST_KIND,
                plural: T::URL_PATH_SEGMENT,
                namespaced,
                short_names: &[],
                categories: &[],
                subresources: &[],
                strategy,
                roundtrip: roundtrip::<T>,
                schema: |g| g.subschema_for::<T>(),
                storage_prefix: "",
                conversion: None,
            },
        }
    }
    /// Its short names.
    pub fn short(mut self, names: &'static [&'static str]) -> Self {
        self.info.short_names = names;
        self
    }
    /// Its categories.
    pub fn categories(mut self, c: &'static [&'static str]) -> Self {
        self.info.categories = c;
        self
    }
    /// Its subresources.
    pub fn subresources(mut self, s: &'static [&'static str]) -> Self {
        self.info.subresources = s;
        self
    }
    /// Stored as another version's objects under that version's prefix (`events.k8s.io`
    /// events live with core events), converted on the way in and out.
    pub fn stored_as(mut self, prefix: &'static str, conversion: &'static Conversion) -> Self {
        self.info.storage_prefix = prefix;
        self.info.conversion = Some(conversion);
        self
    }
    /// The finished resource.
    pub fn build(mut self) -> ResourceInfo {
        if self.info.storage_prefix.is_empty() {
            let p = if self.info.group.is_empty() {
                self.info.plural.to_string()
            } else {
                format!("{}/{}", self.info.group, self.info.plural)
            };
            self.info.storage_prefix = Box::leak(p.into_boxed_str());
        }
        self.info
    }
}

fn roundtrip<T: DeserializeOwned + Serialize>(v: &Value) -> Result<Value, String> {
    let typed: T = serde_path_to_error::deserialize(v).map_err(|e| {
        let path = e.path().to_string();
        if path == "." || path.is_empty() {
            e.inner().to_string()
        } else {
            format!("{path}: {}", e.inner())
        }
    })?;
    serde_json::to_value(typed).map_err(|e| e.to_string())
}

/// All served resources, looked up by group, version and plural.
pub struct Registry {
    resources: Vec<ResourceInfo>,
    by_path: BTreeMap<(&'static str, &'static str, &'static str), usize>,
}

/// One API group with its versions, the preferred first.
pub struct GroupInfo {
    /// The group's name.
    pub name: &'static str,
    /// Its served versions, preferred first.
    pub versions: Vec<&'static str>,
}

impl Registry {
    /// A registry of these resources.
    pub fn new(resources: Vec<ResourceInfo>) -> Self {
        let by_path = resources
            .iter()
            .enumerate()
            .map(|(i, r)| ((r.group, r.version, r.plural), i))
            .collect();
        Registry { resources, by_path }
    }

    /// Every built-in resource rkube serves.
    pub fn builtin() -> Self {
        Self::new(crate::kinds::all())
    }

    /// The resource `plural` of `group`/`version`.
    pub fn get(&self, group: &str, version: &str, plural: &str) -> Option<&ResourceInfo> {
        self.by_path
            .get(&(group, version, plural))
            .map(|i| &self.resources[*i])
    }

    /// The resource for an object's apiVersion and kind.
    pub fn by_kind(&self, api_version: &str, kind: &str) -> Option<&ResourceInfo> {
        self.resources
            .iter()
            .find(|r| r.kind == kind && r.api_version() == api_version)
    }

    /// Every resource, in discovery order.
    pub fn all(&self) -> &[ResourceInfo] {
        &self.resources
    }

    /// The resources of one group version, in registration order.
    pub fn group_version(&self, group: &str, version: &str) -> Vec<&ResourceInfo> {
        self.resources
            .iter()
            .filter(|r| r.group == group && r.version == version)
            .collect()
    }

    /// Named groups (not core) in registration order, versions preferred-first.
    pub fn groups(&self) -> Vec<GroupInfo> {
        let mut out: Vec<GroupInfo> = Vec::new();
        for r in self.resources.iter().filter(|r| !r.group.is_empty()) {
            match out.iter_mut().find(|g| g.name == r.group) {
                Some(g) if !g.versions.contains(&r.version) => g.versions.push(r.version),
                Some(_) => {}
                None => out.push(GroupInfo {
                    name: r.group,
                    versions: vec![r.version],
                }),
            }
        }
        out
    }
}
