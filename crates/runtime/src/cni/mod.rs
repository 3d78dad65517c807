//! Pod networking by the CNI spec: a network configuration list run through the plugin
//! binaries (Debian's `containernetworking-plugins`), ADD when a sandbox starts, DEL (in
//! reverse order, with the cached result) when it stops.
//!
//! The default network is a bridge with host-local IPAM on the node's pod CIDR, the
//! bridge being the pods' gateway. Unless plugin directories are given, a built-in
//! implementation of those two plugins runs in-process: the same configuration, result
//! and on-disk allocations, without two Go processes per pod.

mod builtin;
mod routes;

use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::{json, Value};

use crate::Error;

/// A network configuration list and the plugin directories.
#[derive(Clone, Debug)]
pub struct Network {
    /// The `.conflist` document.
    pub conflist: Value,
    /// Where the plugin binaries are looked up.
    pub plugin_dirs: Vec<PathBuf>,
}

/// What ADD gave: the pod's addresses and the raw result DEL needs.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Attachment {
    /// The pod's addresses.
    pub ips: Vec<IpAddr>,
    /// The plugins' result, as DEL wants it back.
    pub result: Value,
}

impl Network {
    /// rkube's default: bridge `bridge` with host-local addresses from `pod_cidr`
    /// (allocations kept in `state/networks`), run by the built-in plugins.
    pub fn default_bridge(bridge: &str, pod_cidr: &str, state: &Path) -> Network {
        Network {
            conflist: json!({
                "cniVersion": "1.0.0",
                "name": "rkube",
                "plugins": [{
                    "type": "bridge",
                    "bridge": bridge,
                    "isGateway": true,
                    "ipMasq": false,
                    "hairpinMode": true,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": pod_cidr}]],
                        "routes": [{"dst": "0.0.0.0/0"}],
                        "dataDir": state.join("networks"),
                    },
                }],
            }),
            plugin_dirs: Vec::new(),
        }
    }

    /// The plugin binary for `kind`, if installed.
    fn binary(&self, kind: &str) -> Option<PathBuf> {
        self.plugin_dirs
            .iter()
            .map(|d| d.join(kind))
            .find(|p| p.exists())
    }

    /// Whether `kind` can run: its binary, or a built-in one.
    fn available(&self, kind: &str) -> Result<(), Error> {
        if self.binary(kind).is_some() || builtin::supports(kind) {
            return Ok(());
        }
        Err(Error::HostMissing(format!(
            "CNI plugin {kind:?} is neither built in nor found in the plugin directories ({}): install Debian's containernetworking-plugins package and pass --cni-bin-dir /usr/lib/cni",
            self.dirs()
        )))
    }

    fn dirs(&self) -> String {
        self.plugin_dirs
            .iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(":")
    }

    /// Whether every plugin of the list is installed.
    pub fn ready(&self) -> Result<(), Error> {
        for p in self.plugins() {
            let kind = p["type"].as_str().unwrap_or("");
            self.available(kind)?;
            if kind == "bridge" {
                builtin::check_routes(&self.plugin_conf(&p, None))?;
            }
            // A plugin binary runs its IPAM plugin's binary; a built-in one its own.
            if let (Some(ipam), Some(_)) = (p["ipam"]["type"].as_str(), self.binary(kind)) {
                if self.binary(ipam).is_none() {
                    return Err(Error::HostMissing(format!(
                        "CNI IPAM plugin {ipam:?} not found in {}: install Debian's containernetworking-plugins package",
                        self.dirs()
                    )));
                }
            }
        }
        Ok(())
    }

    fn plugins(&self) -> Vec<Value> {
        self.conflist["plugins"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// The config a plugin is given: its own section plus the list's name and version.
    fn plugin_conf(&self, plugin: &Value, prev: Option<&Value>) -> Value {
        let mut conf = plugin.clone();
        conf["cniVersion"] = self.conflist["cniVersion"].clone();
        conf["name"] = self.conflist["name"].clone();
        if let Some(p) = prev {
            conf["prevResult"] = p.clone();
        }
        conf
    }

    /// Attaches the netns at `netns` as interface `ifname`.
    pub fn add(
        &self,
        id: &str,
        netns: &Path,
        ifname: &str,
        args: &str,
    ) -> Result<Attachment, Error> {
        let mut prev: Option<Value> = None;
        for plugin in self.plugins() {
            let conf = self.plugin_conf(&plugin, prev.as_ref());
            let out = self.exec("ADD", &plugin, &conf, id, netns, ifname, args)?;
            prev = Some(out);
        }
        let result = prev.unwrap_or(Value::Null);
        let ips = result["ips"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|ip| ip["address"].as_str())
            .filter_map(|a| a.split('/').next()?.parse().ok())
            .collect();
        Ok(Attachment { ips, result })
    }

    /// Detaches (idempotent: plugins succeed on what is already gone).
    pub fn del(
        &self,
        id: &str,
        netns: &Path,
        ifname: &str,
        args: &str,
        prev: Option<&Value>,
    ) -> Result<(), Error> {
        for plugin in self.plugins().iter().rev() {
            let conf = self.plugin_conf(plugin, prev);
            self.exec("DEL", plugin, &conf, id, netns, ifname, args)?;
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn exec(
        &self,
        command: &str,
        plugin: &Value,
        conf: &Value,
        id: &str,
        netns: &Path,
        ifname: &str,
        args: &str,
    ) -> Result<Value, Error> {
        let kind = plugin["type"].as_str().unwrap_or("");
        let Some(bin) = self.binary(kind) else {
            self.available(kind)?;
            return match command {
                "ADD" => builtin::add(conf, id, netns, ifname),
                _ => builtin::del(conf, id, netns, ifname).map(|_| Value::Null),
            };
        };
        let mut child = Command::new(&bin)
            .env_clear()
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", id)
            .env("CNI_NETNS", netns)
            .env("CNI_IFNAME", ifname)
            .env("CNI_ARGS", args)
            .env("CNI_PATH", self.dirs())
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| Error::Io(format!("running CNI plugin {}", bin.display()), e))?;
        let body = serde_json::to_vec(conf).expect("json");
        if let Some(mut stdin) = child.stdin.take() {
            let _ = stdin.write_all(&body);
        }
        let out = child
            .wait_with_output()
            .map_err(|e| Error::Io(format!("running CNI plugin {}", bin.display()), e))?;
        let stdout: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        if !out.status.success() {
            let msg = stdout["msg"].as_str().unwrap_or("");
            let details = stdout["details"].as_str().unwrap_or("");
            return Err(Error::Network(format!(
                "CNI {command} with plugin {kind} failed: {msg} {details} {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(stdout)
    }
}
