//! The image manager: the pull policy, pulls with the pod's registry credentials
//! (imagePullSecrets), and the pull back-off.

use super::*;

impl Worker {
    /// The image reference to create the container from, once present per the pull
    /// policy; None (with the waiting reason set) when it is not.
    pub(super) async fn ensure_image(&mut self, pod: &Pod, c: &Container) -> Option<String> {
        let k = self.k.clone();
        let image = c.image.clone().unwrap_or_default();
        let policy = c
            .image_pull_policy
            .clone()
            .unwrap_or_else(|| "IfNotPresent".into());
        let present = k.cri.image_present(&image).await.ok().flatten();
        let pull = match policy.as_str() {
            "Always" => true,
            "Never" => {
                if present.is_none() {
                    let msg = format!(
                        "Container image {image:?} is not present with pull policy of Never"
                    );
                    k.recorder
                        .pod(pod, Some(&c.name), Warning, "ErrImageNeverPull", &msg)
                        .await;
                    self.waiting
                        .insert(c.name.clone(), ("ErrImageNeverPull".into(), msg));
                    return None;
                }
                false
            }
            _ => present.is_none(),
        };
        if !pull {
            let msg = format!("Container image {image:?} already present on machine");
            k.recorder
                .pod(pod, Some(&c.name), Normal, "Pulled", &msg)
                .await;
            return Some(image);
        }
        let now = Instant::now();
        if let Some(b) = self.pull_backoff.get(&c.name).copied() {
            if now < b.until {
                let msg = format!("Back-off pulling image {image:?}");
                k.recorder
                    .pod(pod, Some(&c.name), Normal, "BackOff", &msg)
                    .await;
                self.waiting
                    .insert(c.name.clone(), ("ImagePullBackOff".into(), msg));
                return None;
            }
        }
        k.recorder
            .pod(
                pod,
                Some(&c.name),
                Normal,
                "Pulling",
                &format!("Pulling image {image:?}"),
            )
            .await;
        let auth = self.pull_auth(pod, &image).await;
        let t0 = Instant::now();
        match k.cri.pull(&image, auth).await {
            Ok(_) => {
                self.pull_backoff.remove(&c.name);
                let took = go_duration_ms(t0.elapsed());
                let msg = format!(
                    "Successfully pulled image {image:?} in {took} ({took} including waiting)"
                );
                k.recorder
                    .pod(pod, Some(&c.name), Normal, "Pulled", &msg)
                    .await;
                Some(image)
            }
            Err(e) => {
                let delay = match self.pull_backoff.get(&c.name) {
                    Some(b) => (b.delay * 2).min(BACKOFF_MAX),
                    None => BACKOFF_START,
                };
                self.pull_backoff.insert(
                    c.name.clone(),
                    Backoff {
                        until: now + delay,
                        delay,
                    },
                );
                let msg = format!("Failed to pull image {image:?}: {}", e.message());
                k.recorder
                    .pod(pod, Some(&c.name), Warning, "Failed", &msg)
                    .await;
                k.recorder
                    .pod(pod, Some(&c.name), Warning, "Failed", "Error: ErrImagePull")
                    .await;
                self.waiting
                    .insert(c.name.clone(), ("ErrImagePull".into(), msg));
                None
            }
        }
    }

    /// Credentials for `image` from the pod's imagePullSecrets (docker config JSON).
    pub(super) async fn pull_auth(&self, pod: &Pod, image: &str) -> Option<cri::AuthConfig> {
        let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
        let names: Vec<String> = pod
            .spec
            .as_ref()?
            .image_pull_secrets
            .iter()
            .flatten()
            .map(|r| r.name.clone())
            .collect();
        let host = registry_host(image);
        let api: Api<Secret> = Api::namespaced(self.k.client.clone(), ns);
        for name in names {
            let Ok(Some(s)) = api.get_opt(&name).await else {
                continue;
            };
            let data = s.data.unwrap_or_default();
            let (auths, nested) = if let Some(b) = data.get(".dockerconfigjson") {
                (serde_json::from_slice::<Value>(&b.0).ok(), true)
            } else if let Some(b) = data.get(".dockercfg") {
                (serde_json::from_slice::<Value>(&b.0).ok(), false)
            } else {
                continue;
            };
            let Some(auths) = auths else { continue };
            let map = if nested {
                auths.get("auths").cloned()
            } else {
                Some(auths)
            };
            for (key, entry) in map
                .and_then(|m| m.as_object().cloned())
                .into_iter()
                .flatten()
            {
                if registry_key_host(&key) != host {
                    continue;
                }
                let s = |f: &str| {
                    entry
                        .get(f)
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_string()
                };
                return Some(cri::AuthConfig {
                    username: s("username"),
                    password: s("password"),
                    auth: s("auth"),
                    server_address: host.clone(),
                    identity_token: s("identitytoken"),
                    registry_token: s("registrytoken"),
                });
            }
        }
        None
    }
}

/// The registry host an image reference pulls from (docker.io for bare names).
pub(super) fn registry_host(image: &str) -> String {
    match image.split_once('/') {
        Some((first, _)) if first.contains('.') || first.contains(':') || first == "localhost" => {
            first.to_string()
        }
        _ => "docker.io".into(),
    }
}

/// The host of a docker config key ("https://index.docker.io/v1/" → docker.io).
pub(super) fn registry_key_host(key: &str) -> String {
    let k = key
        .trim_start_matches("https://")
        .trim_start_matches("http://");
    let host = k.split('/').next().unwrap_or(k);
    match host {
        "index.docker.io" | "registry-1.docker.io" => "docker.io".into(),
        h => h.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_hosts() {
        assert_eq!(registry_host("busybox"), "docker.io");
        assert_eq!(registry_host("library/busybox:1"), "docker.io");
        assert_eq!(registry_host("127.0.0.1:5000/busybox:1"), "127.0.0.1:5000");
        assert_eq!(registry_host("localhost/x"), "localhost");
        assert_eq!(
            registry_key_host("https://index.docker.io/v1/"),
            "docker.io"
        );
        assert_eq!(registry_key_host("127.0.0.1:5000"), "127.0.0.1:5000");
    }
}
