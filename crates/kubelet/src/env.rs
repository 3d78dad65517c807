//! Container environment: Service link variables, `envFrom`, `env` with `valueFrom`
//! (fieldRef, resourceFieldRef, configMapKeyRef, secretKeyRef), and `$(VAR)` expansion.

use std::collections::HashMap;

use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, Secret, Service};
use kube::api::Api;
use rkube_api::quantity;

use crate::error::EnvError;

/// An ordered environment: a later name replaces the earlier value in place.
#[derive(Default, Debug, Clone, PartialEq)]
pub struct Env(pub Vec<(String, String)>);

impl Env {
    /// Sets `k`, replacing an earlier value in place.
    pub fn set(&mut self, k: String, v: String) {
        match self.0.iter_mut().find(|(n, _)| *n == k) {
            Some(slot) => slot.1 = v,
            None => self.0.push((k, v)),
        }
    }
    /// The value of `k`.
    pub fn get(&self, k: &str) -> Option<&str> {
        self.0.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str())
    }
}

/// Expands `$(VAR)` from `env`; `$$` is a literal `$`; unknown references stay as written.
pub fn expand(s: &str, env: &Env) -> String {
    let mut out = String::with_capacity(s.len());
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'$' && i + 1 < b.len() {
            if b[i + 1] == b'$' {
                out.push('$');
                i += 2;
                continue;
            }
            if b[i + 1] == b'(' {
                if let Some(end) = s[i + 2..].find(')') {
                    let name = &s[i + 2..i + 2 + end];
                    match env.get(name) {
                        Some(v) => out.push_str(v),
                        None => out.push_str(&s[i..i + 3 + end]),
                    }
                    i += 3 + end;
                    continue;
                }
            }
        }
        let ch = s[i..].chars().next().unwrap_or('$');
        out.push(ch);
        i += ch.len_utf8();
    }
    out
}

/// What resolving an environment needs from outside the pod object.
pub struct Context<'a> {
    /// For ConfigMaps and Secrets the environment refers to.
    pub client: &'a kube::Client,
    /// Every Service, kept by a watch (for the Service link variables).
    pub services: &'a kube::runtime::reflector::Store<Service>,
    /// The pod's IP (`status.podIP`).
    pub pod_ip: &'a str,
    /// The node's IP (`status.hostIP`).
    pub host_ip: &'a str,
    /// The node's name (`spec.nodeName`).
    pub node_name: &'a str,
    /// Node allocatable cpu (millicores) and memory (bytes): the defaults for unset limits.
    pub node_cpu_milli: i64,
    /// Node allocatable memory in bytes.
    pub node_memory: i64,
}

/// The container's environment, or the CreateContainerConfigError message.
pub async fn resolve(ctx: &Context<'_>, pod: &Pod, c: &Container) -> Result<Env, EnvError> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let spec = pod.spec.as_ref();
    let mut env = Env::default();
    if spec.and_then(|s| s.enable_service_links).unwrap_or(true) {
        service_links(ctx.services, ns, &mut env);
    }
    let mut cms: HashMap<String, Option<ConfigMap>> = HashMap::new();
    let mut secrets: HashMap<String, Option<Secret>> = HashMap::new();
    for from in c.env_from.iter().flatten() {
        let prefix = from.prefix.clone().unwrap_or_default();
        if let Some(r) = &from.config_map_ref {
            let optional = r.optional.unwrap_or(false);
            match configmap(ctx.client, ns, &r.name, &mut cms).await? {
                Some(cm) => {
                    for (k, v) in cm.data.into_iter().flatten() {
                        env.set(format!("{prefix}{k}"), v);
                    }
                }
                None if optional => {}
                None => {
                    return Err(EnvError::NotFound {
                        kind: "configmap",
                        name: r.name.clone(),
                    })
                }
            }
        }
        if let Some(r) = &from.secret_ref {
            let optional = r.optional.unwrap_or(false);
            match secret(ctx.client, ns, &r.name, &mut secrets).await? {
                Some(s) => {
                    for (k, v) in s.data.into_iter().flatten() {
                        env.set(format!("{prefix}{k}"), String::from_utf8_lossy(&v.0).into());
                    }
                }
                None if optional => {}
                None => {
                    return Err(EnvError::NotFound {
                        kind: "secret",
                        name: r.name.clone(),
                    })
                }
            }
        }
    }
    for e in c.env.iter().flatten() {
        let value = match &e.value_from {
            None => expand(e.value.as_deref().unwrap_or(""), &env),
            Some(from) => {
                if let Some(f) = &from.field_ref {
                    field(pod, &f.field_path, ctx)?
                } else if let Some(r) = &from.resource_field_ref {
                    let target = match r.container_name.as_deref() {
                        Some(n) if !n.is_empty() => crate::pod::find_container(pod, n)
                            .ok_or_else(|| format!("container {n:?} not found"))?,
                        _ => c,
                    };
                    resource_field(
                        target,
                        &r.resource,
                        r.divisor.as_ref().map(|d| d.0.as_str()),
                        ctx,
                    )?
                } else if let Some(r) = &from.config_map_key_ref {
                    let optional = r.optional.unwrap_or(false);
                    let cm = configmap(ctx.client, ns, &r.name, &mut cms).await?;
                    match (cm, optional) {
                        (Some(cm), _) => match cm.data.as_ref().and_then(|d| d.get(&r.key)) {
                            Some(v) => v.clone(),
                            None if optional => continue,
                            None => {
                                return Err(format!(
                                    "couldn't find key {} in ConfigMap {ns}/{}",
                                    r.key, r.name
                                )
                                .into())
                            }
                        },
                        (None, true) => continue,
                        (None, false) => {
                            return Err(EnvError::NotFound {
                                kind: "configmap",
                                name: r.name.clone(),
                            })
                        }
                    }
                } else if let Some(r) = &from.secret_key_ref {
                    let optional = r.optional.unwrap_or(false);
                    let s = secret(ctx.client, ns, &r.name, &mut secrets).await?;
                    match (s, optional) {
                        (Some(s), _) => match s.data.as_ref().and_then(|d| d.get(&r.key)) {
                            Some(v) => String::from_utf8_lossy(&v.0).into_owned(),
                            None if optional => continue,
                            None => {
                                return Err(format!(
                                    "couldn't find key {} in Secret {ns}/{}",
                                    r.key, r.name
                                )
                                .into())
                            }
                        },
                        (None, true) => continue,
                        (None, false) => {
                            return Err(EnvError::NotFound {
                                kind: "secret",
                                name: r.name.clone(),
                            })
                        }
                    }
                } else {
                    String::new()
                }
            }
        };
        env.set(e.name.clone(), value);
    }
    Ok(env)
}

async fn configmap(
    client: &kube::Client,
    ns: &str,
    name: &str,
    cache: &mut HashMap<String, Option<ConfigMap>>,
) -> Result<Option<ConfigMap>, EnvError> {
    if let Some(v) = cache.get(name) {
        return Ok(v.clone());
    }
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let v = api.get_opt(name).await.map_err(|source| EnvError::Read {
        kind: "configmap",
        name: name.into(),
        source,
    })?;
    cache.insert(name.into(), v.clone());
    Ok(v)
}

async fn secret(
    client: &kube::Client,
    ns: &str,
    name: &str,
    cache: &mut HashMap<String, Option<Secret>>,
) -> Result<Option<Secret>, EnvError> {
    if let Some(v) = cache.get(name) {
        return Ok(v.clone());
    }
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    let v = api.get_opt(name).await.map_err(|source| EnvError::Read {
        kind: "secret",
        name: name.into(),
        source,
    })?;
    cache.insert(name.into(), v.clone());
    Ok(v)
}

/// A downward-API field of the pod (`metadata.name`, `metadata.labels['app']`, …).
pub fn field(pod: &Pod, path: &str, ctx: &Context<'_>) -> Result<String, EnvError> {
    let m = &pod.metadata;
    let key_of = |prefix: &str| {
        path.strip_prefix(prefix)
            .and_then(|r| r.strip_prefix("['"))
            .and_then(|r| r.strip_suffix("']"))
            .map(String::from)
    };
    Ok(match path {
        "metadata.name" => m.name.clone().unwrap_or_default(),
        "metadata.namespace" => m.namespace.clone().unwrap_or_default(),
        "metadata.uid" => m.uid.clone().unwrap_or_default(),
        "spec.nodeName" => ctx.node_name.to_string(),
        "spec.serviceAccountName" => pod
            .spec
            .as_ref()
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_default(),
        "status.hostIP" | "status.hostIPs" => ctx.host_ip.to_string(),
        "status.podIP" | "status.podIPs" => ctx.pod_ip.to_string(),
        "metadata.labels" => map_lines(m.labels.as_ref()),
        "metadata.annotations" => map_lines(m.annotations.as_ref()),
        _ => {
            if let Some(k) = key_of("metadata.labels") {
                m.labels
                    .as_ref()
                    .and_then(|l| l.get(&k))
                    .cloned()
                    .unwrap_or_default()
            } else if let Some(k) = key_of("metadata.annotations") {
                m.annotations
                    .as_ref()
                    .and_then(|l| l.get(&k))
                    .cloned()
                    .unwrap_or_default()
            } else {
                return Err(format!("unsupported fieldPath: {path}").into());
            }
        }
    })
}

/// `k="v"` lines, sorted, as the downward API writes label and annotation files.
fn map_lines(m: Option<&std::collections::BTreeMap<String, String>>) -> String {
    m.into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}", serde_json::Value::String(v.clone())))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A container resource (`limits.memory`, `requests.cpu`) divided by `divisor`, rounded up;
/// unset limits are the node's allocatable.
pub fn resource_field(
    c: &Container,
    resource: &str,
    divisor: Option<&str>,
    ctx: &Context<'_>,
) -> Result<String, EnvError> {
    let res = c.resources.as_ref();
    let (which, name) = resource
        .split_once('.')
        .ok_or_else(|| format!("unsupported resource: {resource}"))?;
    let set = match which {
        "limits" => res.and_then(|r| r.limits.as_ref()),
        "requests" => res.and_then(|r| r.requests.as_ref()),
        _ => return Err(format!("unsupported resource: {resource}").into()),
    };
    let given = set.and_then(|m| m.get(name)).map(|q| q.0.clone());
    // Requests default to limits; limits to the node's allocatable.
    let given = given.or_else(|| {
        (which == "requests")
            .then(|| {
                res.and_then(|r| r.limits.as_ref())
                    .and_then(|m| m.get(name))
                    .map(|q| q.0.clone())
            })
            .flatten()
    });
    let cpu = name == "cpu";
    let value_milli = match given {
        Some(q) => quantity::parse_milli(&q).ok_or_else(|| format!("bad quantity {q:?}"))?,
        None if which == "requests" => 0,
        None if cpu => ctx.node_cpu_milli,
        None if name == "memory" => ctx.node_memory.saturating_mul(1000),
        None => 0,
    };
    let divisor = divisor.unwrap_or("1");
    let d = quantity::parse_milli(divisor)
        .filter(|d| *d > 0)
        .ok_or_else(|| format!("bad divisor {divisor:?}"))?;
    // Ceiling division, at least 1 for cpu (as upstream rounds up to 1 core).
    let v = (value_milli + d - 1) / d;
    Ok(if cpu { v.max(1) } else { v }.to_string())
}

/// `{SVC}_SERVICE_HOST`, `_SERVICE_PORT`, `_PORT_…` for every Service with a ClusterIP in
/// the namespace (and the `kubernetes` Service), as docker links did.
fn service_links(store: &kube::runtime::reflector::Store<Service>, ns: &str, env: &mut Env) {
    let mut services: Vec<std::sync::Arc<Service>> = store
        .state()
        .into_iter()
        .filter(|s| {
            let n = s.metadata.namespace.as_deref().unwrap_or("");
            n == ns || (n == "default" && s.metadata.name.as_deref() == Some("kubernetes"))
        })
        .collect();
    // Deterministic order (as upstream sorts by name) so an environment is reproducible.
    services.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    for s in services {
        let Some(spec) = &s.spec else { continue };
        let ip = spec.cluster_ip.clone().unwrap_or_default();
        if ip.is_empty() || ip == "None" {
            continue;
        }
        let name = s
            .metadata
            .name
            .clone()
            .unwrap_or_default()
            .to_uppercase()
            .replace('-', "_");
        let ports = spec.ports.clone().unwrap_or_default();
        env.set(format!("{name}_SERVICE_HOST"), ip.clone());
        if let Some(first) = ports.first() {
            env.set(format!("{name}_SERVICE_PORT"), first.port.to_string());
            let proto = first
                .protocol
                .clone()
                .unwrap_or_else(|| "TCP".into())
                .to_lowercase();
            env.set(
                format!("{name}_PORT"),
                format!("{proto}://{ip}:{}", first.port),
            );
        }
        for p in &ports {
            if let Some(pn) = &p.name {
                env.set(
                    format!(
                        "{name}_SERVICE_PORT_{}",
                        pn.to_uppercase().replace('-', "_")
                    ),
                    p.port.to_string(),
                );
            }
            let proto = p.protocol.clone().unwrap_or_else(|| "TCP".into());
            let base = format!("{name}_PORT_{}_{}", p.port, proto.to_uppercase());
            env.set(
                base.clone(),
                format!("{}://{ip}:{}", proto.to_lowercase(), p.port),
            );
            env.set(format!("{base}_PROTO"), proto.to_lowercase());
            env.set(format!("{base}_PORT"), p.port.to_string());
            env.set(format!("{base}_ADDR"), ip.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Env {
        Env(pairs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect())
    }

    #[test]
    fn expansion_follows_upstream() {
        let e = env(&[("A", "1"), ("B", "two")]);
        assert_eq!(expand("$(A)-$(B)", &e), "1-two");
        assert_eq!(expand("$(MISSING)", &e), "$(MISSING)");
        assert_eq!(expand("$$(A)", &e), "$(A)");
        assert_eq!(expand("a$$b", &e), "a$b");
        assert_eq!(expand("$(A", &e), "$(A");
        assert_eq!(expand("ünï$(A)", &e), "ünï1");
        assert_eq!(expand("$", &e), "$");
    }

    #[test]
    fn later_values_replace_earlier_ones_in_place() {
        let mut e = env(&[("A", "1"), ("B", "2")]);
        e.set("A".into(), "3".into());
        assert_eq!(e.0, env(&[("A", "3"), ("B", "2")]).0);
    }
}
