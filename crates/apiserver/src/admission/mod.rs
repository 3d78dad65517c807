//! The admission chain: after authentication and before storage, every write passes the
//! enabled plugins' mutating phase (before the kind's strategy), then their validating
//! phase (after it), in upstream's order. Plugins carry upstream's names and are
//! switched with `--enable-admission-plugins` / `--disable-admission-plugins`.

mod always_pull_images;
mod default_toleration_seconds;
mod deny_service_external_ips;
mod namespace_lifecycle;
pub mod priority;

use std::sync::Arc;

use rkube_api::{ApiError, ResourceInfo};
use serde_json::Value;

use crate::auth::User;
use crate::State;

/// What a request does to an object (upstream's admission.Operation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// A new object (POST, and server-side apply of an absent one).
    Create,
    /// A changed object (PUT, PATCH, and the status subresource).
    Update,
    /// A deletion (DELETE, and each object of a DELETECOLLECTION).
    Delete,
}

/// Everything a plugin may look at: who asks, what for, the object before and after.
pub struct Attributes<'a> {
    /// The authenticated user.
    pub user: &'a User,
    /// What the request does.
    pub operation: Operation,
    /// The resource (its group, version, kind and plural).
    pub info: &'a ResourceInfo,
    /// "" for the main resource.
    pub subresource: &'a str,
    /// "" for cluster-scoped resources.
    pub namespace: &'a str,
    /// The object's name ("" for a create: see the object's).
    pub name: &'a str,
    /// The object being written (None for a delete).
    pub object: Option<&'a mut Value>,
    /// The stored object (None for a create).
    pub old: Option<&'a Value>,
    /// Whether nothing will be written (plugins must not have side effects then).
    pub dry_run: bool,
}

impl Attributes<'_> {
    /// Whether the request is for `group`/`resource` itself (not a subresource).
    pub fn is(&self, group: &str, resource: &str) -> bool {
        self.info.group == group && self.info.plural == resource && self.subresource.is_empty()
    }

    /// The object being written, for reading.
    pub fn object(&self) -> Option<&Value> {
        self.object.as_deref()
    }
}

/// One admission plugin: it may mutate in the first phase and refuse in either.
#[async_trait::async_trait]
pub trait Plugin: Send + Sync {
    /// Upstream's name, as the flags spell it.
    fn name(&self) -> &'static str;

    /// The mutating phase: runs before the kind's defaults and validation.
    async fn admit(&self, _state: &Arc<State>, _a: &mut Attributes<'_>) -> Result<(), ApiError> {
        Ok(())
    }

    /// The validating phase: runs on the object as it will be stored.
    async fn validate(&self, _state: &Arc<State>, _a: &Attributes<'_>) -> Result<(), ApiError> {
        Ok(())
    }
}

/// A plugin of upstream's list: its name, whether upstream enables it by default, and
/// our implementation (None: not available here yet).
struct Known {
    name: &'static str,
    default_on: bool,
    plugin: Option<&'static dyn Plugin>,
}

const fn known(name: &'static str, default_on: bool, plugin: Option<&'static dyn Plugin>) -> Known {
    Known {
        name,
        default_on,
        plugin,
    }
}

/// Upstream's plugins in upstream's order (kube-apiserver's AllOrderedPlugins), with
/// its default set.
static PLUGINS: &[Known] = &[
    known("AlwaysAdmit", false, None),
    known("NamespaceAutoProvision", false, None),
    known(
        "NamespaceLifecycle",
        true,
        Some(&namespace_lifecycle::NamespaceLifecycle),
    ),
    known("NamespaceExists", false, None),
    known("LimitPodHardAntiAffinityTopology", false, None),
    known("LimitRanger", true, None),
    known("ServiceAccount", true, None),
    known("NodeRestriction", false, None),
    known("TaintNodesByCondition", true, None),
    known(
        "AlwaysPullImages",
        false,
        Some(&always_pull_images::AlwaysPullImages),
    ),
    known("ImagePolicyWebhook", false, None),
    known("PodSecurity", true, None),
    known("PodNodeSelector", false, None),
    known("Priority", true, Some(&priority::Priority)),
    known(
        "DefaultTolerationSeconds",
        true,
        Some(&default_toleration_seconds::DefaultTolerationSeconds),
    ),
    known("PodTolerationRestriction", false, None),
    known("EventRateLimit", false, None),
    known("ExtendedResourceToleration", false, None),
    known("DefaultStorageClass", true, None),
    known("StorageObjectInUseProtection", true, None),
    known("OwnerReferencesPermissionEnforcement", false, None),
    known("PersistentVolumeClaimResize", true, None),
    known("RuntimeClass", true, None),
    known("CertificateApproval", true, None),
    known("CertificateSigning", true, None),
    known("ClusterTrustBundleAttest", true, None),
    known("CertificateSubjectRestriction", true, None),
    known("DefaultIngressClass", true, None),
    known(
        "DenyServiceExternalIPs",
        false,
        Some(&deny_service_external_ips::DenyServiceExternalIPs),
    ),
    known("PodTopologyLabels", false, None),
    known("MutatingAdmissionWebhook", true, None),
    known("ValidatingAdmissionPolicy", true, None),
    known("ValidatingAdmissionWebhook", true, None),
    known("ResourceQuota", true, None),
    known("AlwaysDeny", false, None),
];

/// Which plugins to run: upstream's default set, plus `enable`, minus `disable`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AdmissionConfig {
    /// Plugins to run besides the default ones.
    pub enable: Vec<String>,
    /// Plugins not to run.
    pub disable: Vec<String>,
}

/// A bad `--enable-admission-plugins` / `--disable-admission-plugins`.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AdmissionConfigError {
    /// A name that is not one of upstream's plugins.
    #[error("{flag} plugin {name:?} is unknown")]
    Unknown {
        /// Which flag named it.
        flag: &'static str,
        /// The name.
        name: String,
    },
    /// Names in both flags.
    #[error(
        "{0:?} are plugins both in --enable-admission-plugins and --disable-admission-plugins"
    )]
    Both(Vec<String>),
    /// One of upstream's plugins that rkube does not have yet, asked for by name.
    #[error("admission plugin {0:?} is not available in rkube yet; leave it out of --enable-admission-plugins")]
    NotAvailable(String),
}

/// The enabled plugins, in order.
pub struct Chain {
    plugins: Vec<&'static dyn Plugin>,
}

impl Chain {
    /// Builds the chain a configuration asks for.
    pub fn new(config: &AdmissionConfig) -> Result<Chain, AdmissionConfigError> {
        for (flag, names) in [
            ("enable-admission-plugins", &config.enable),
            ("disable-admission-plugins", &config.disable),
        ] {
            if let Some(n) = names.iter().find(|n| !PLUGINS.iter().any(|k| k.name == *n)) {
                return Err(AdmissionConfigError::Unknown {
                    flag,
                    name: n.clone(),
                });
            }
        }
        let both: Vec<String> = config
            .enable
            .iter()
            .filter(|n| config.disable.contains(n))
            .cloned()
            .collect();
        if !both.is_empty() {
            return Err(AdmissionConfigError::Both(both));
        }
        let mut plugins = Vec::new();
        for k in PLUGINS {
            let asked = config.enable.iter().any(|n| n == k.name);
            let on = (k.default_on || asked) && !config.disable.iter().any(|n| n == k.name);
            match (on, k.plugin) {
                (true, Some(p)) => plugins.push(p),
                (true, None) if asked => {
                    return Err(AdmissionConfigError::NotAvailable(k.name.to_string()))
                }
                _ => {}
            }
        }
        Ok(Chain { plugins })
    }

    /// The names of the enabled plugins, in order (as upstream logs them at start).
    pub fn names(&self) -> Vec<&'static str> {
        self.plugins.iter().map(|p| p.name()).collect()
    }

    /// The mutating phase of every enabled plugin.
    pub async fn admit(&self, state: &Arc<State>, a: &mut Attributes<'_>) -> Result<(), ApiError> {
        for p in &self.plugins {
            p.admit(state, a).await?;
        }
        Ok(())
    }

    /// The validating phase of every enabled plugin.
    pub async fn validate(&self, state: &Arc<State>, a: &Attributes<'_>) -> Result<(), ApiError> {
        for p in &self.plugins {
            p.validate(state, a).await?;
        }
        Ok(())
    }
}

/// Upstream's admission.NewForbidden: `<resource> "<name>" is forbidden: <why>`, the
/// name taken from the object when the request has none (a create).
pub fn forbidden(a: &Attributes<'_>, why: &str) -> ApiError {
    use rkube_api::meta::ObjectMeta;
    let name = match a.name {
        "" => a.object().map(|o| o.name()).unwrap_or(""),
        n => n,
    };
    ApiError::forbidden(a.info.group, a.info.plural, name, why)
}

#[cfg(test)]
mod tests;
