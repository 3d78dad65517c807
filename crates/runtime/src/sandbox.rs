//! Pod sandboxes: the namespaces a pod's containers share (network, UTS, IPC), the pod's
//! network attachment, and its `resolv.conf` and `hostname`. The record lives in
//! `ROOT/sandboxes/<id>/sandbox.json`, so a restarted runtime reports the same sandboxes;
//! the namespace handles and the two files in `STATE/sandboxes/<id>/`.

use std::fs;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use k8s_cri::v1 as cri;
use serde::{Deserialize, Serialize};

use crate::cni::{Attachment, Network};
use crate::namespaces::{self, Kind};
use crate::{io_err, Error};

/// A sandbox's record.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Sandbox {
    /// The sandbox ID.
    pub id: String,
    /// The kubelet's configuration of it.
    pub config: cri::PodSandboxConfig,
    /// Nanoseconds since the epoch.
    pub created_at: i64,
    /// Whether it is up (not stopped).
    pub ready: bool,
    /// It uses the node's network.
    pub host_network: bool,
    /// Its CNI attachment, while it has one.
    #[serde(default)]
    pub attachment: Option<Attachment>,
    /// Namespace files containers join.
    #[serde(default)]
    pub netns: Option<PathBuf>,
    /// The UTS namespace file.
    #[serde(default)]
    pub utsns: Option<PathBuf>,
    /// The IPC namespace file.
    #[serde(default)]
    pub ipcns: Option<PathBuf>,
}

impl Sandbox {
    /// Its pod IP.
    pub fn ip(&self) -> Option<IpAddr> {
        self.attachment
            .as_ref()
            .and_then(|a| a.ips.first().copied())
    }

    /// Its CRI metadata.
    pub fn metadata(&self) -> cri::PodSandboxMetadata {
        self.config.metadata.clone().unwrap_or_default()
    }

    /// The key that makes a sandbox unique on a node: name, namespace, uid, attempt.
    pub fn key(config: &cri::PodSandboxConfig) -> String {
        let m = config.metadata.clone().unwrap_or_default();
        format!("{}_{}_{}_{}", m.name, m.namespace, m.uid, m.attempt)
    }

    fn cni_args(&self) -> String {
        let m = self.metadata();
        format!(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={};K8S_POD_INFRA_CONTAINER_ID={};K8S_POD_UID={}",
            m.namespace, m.name, self.id, m.uid
        )
    }
}

/// The sandboxes under `ROOT/sandboxes` and `STATE/sandboxes`.
#[derive(Clone, Debug)]
pub struct Sandboxes {
    records: crate::RecordDir<Sandbox>,
    state: PathBuf,
}

impl Sandboxes {
    /// Loads the sandbox records under `root`, with their volatile state under `state`.
    pub fn open(root: &Path, state: &Path) -> Result<Sandboxes, Error> {
        let state = state.join("sandboxes");
        fs::create_dir_all(&state).map_err(io_err(&state))?;
        Ok(Sandboxes {
            records: crate::RecordDir::open(root.join("sandboxes"), "sandbox.json", "pod sandbox")?,
            state,
        })
    }

    /// A sandbox's directory of volatile state: namespace handles, `hostname` and
    /// `resolv.conf`.
    pub fn dir(&self, id: &str) -> PathBuf {
        self.state.join(id)
    }

    fn save(&self, s: &Sandbox) -> Result<(), Error> {
        self.records.save(&s.id, s)
    }

    /// The sandbox with this ID (or unique ID prefix).
    pub fn get(&self, id: &str) -> Result<Sandbox, Error> {
        self.records.get(id)
    }

    /// Every sandbox.
    pub fn list(&self) -> Vec<Sandbox> {
        let mut v: Vec<Sandbox> = self.records.list();
        v.sort_by_key(|s| s.created_at);
        v
    }

    /// Creates the namespaces and attaches the network; on any failure undoes it all.
    pub fn run(
        &self,
        config: cri::PodSandboxConfig,
        network: Option<&Network>,
    ) -> Result<Sandbox, Error> {
        let key = Sandbox::key(&config);
        if let Some(s) = self
            .records
            .filter(|s| Sandbox::key(&s.config) == key)
            .first()
        {
            return Err(Error::AlreadyExists(format!(
                "pod sandbox {key} exists as {}; remove it first",
                s.id
            )));
        }
        let opts = config
            .linux
            .as_ref()
            .and_then(|l| l.security_context.as_ref())
            .and_then(|s| s.namespace_options.clone())
            .unwrap_or_default();
        let host_network = opts.network == cri::NamespaceMode::Node as i32;
        let host_ipc = opts.ipc == cri::NamespaceMode::Node as i32;
        let id = crate::new_id();
        for dir in [self.records.dir.join(&id), self.dir(&id)] {
            fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        }
        let mut sb = Sandbox {
            id: id.clone(),
            config,
            created_at: crate::now_nanos(),
            ready: false,
            host_network,
            attachment: None,
            netns: None,
            utsns: None,
            ipcns: None,
        };
        let res = self.setup(&mut sb, network, host_ipc);
        if let Err(e) = res {
            let _ = self.teardown(&mut sb, network);
            let _ = self.records.remove(&id);
            let _ = fs::remove_dir_all(self.dir(&id));
            return Err(e);
        }
        sb.ready = true;
        self.save(&sb)?;
        Ok(sb)
    }

    fn setup(
        &self,
        sb: &mut Sandbox,
        network: Option<&Network>,
        host_ipc: bool,
    ) -> Result<(), Error> {
        let dir = self.dir(&sb.id);
        // resolv.conf and hostname, bind-mounted into every container.
        let hostname = if sb.host_network {
            fs::read_to_string("/proc/sys/kernel/hostname")
                .unwrap_or_default()
                .trim()
                .to_string()
        } else {
            sb.config.hostname.clone()
        };
        fs::write(dir.join("hostname"), format!("{hostname}\n")).map_err(io_err(&dir))?;
        let resolv = match &sb.config.dns_config {
            Some(d) if !d.servers.is_empty() || !d.searches.is_empty() => {
                let mut s = String::new();
                if !d.searches.is_empty() {
                    s.push_str(&format!("search {}\n", d.searches.join(" ")));
                }
                for n in &d.servers {
                    s.push_str(&format!("nameserver {n}\n"));
                }
                if !d.options.is_empty() {
                    s.push_str(&format!("options {}\n", d.options.join(" ")));
                }
                s
            }
            _ => fs::read_to_string("/etc/resolv.conf").unwrap_or_default(),
        };
        fs::write(dir.join("resolv.conf"), resolv).map_err(io_err(&dir))?;
        let sysctls: Vec<(String, String)> = sb
            .config
            .linux
            .as_ref()
            .map(|l| {
                l.sysctls
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect()
            })
            .unwrap_or_default();
        let mut kinds = Vec::new();
        if !sb.host_network {
            kinds.extend([Kind::Net, Kind::Uts]);
        }
        if !host_ipc {
            kinds.push(Kind::Ipc);
        }
        let made = namespaces::create(&dir.join("ns"), &kinds, &hostname, &sysctls)?;
        for (k, p) in made {
            match k {
                Kind::Net => sb.netns = Some(p),
                Kind::Uts => sb.utsns = Some(p),
                Kind::Ipc => sb.ipcns = Some(p),
            }
        }
        if let (Some(netns), false) = (&sb.netns, sb.host_network) {
            let net = network.ok_or_else(|| {
                Error::Network("pod network not configured: the kubelet has not set the pod CIDR yet (UpdateRuntimeConfig)".into())
            })?;
            // Saved before ADD, so a crash between the two still gets a DEL.
            self.save(sb)?;
            sb.attachment = Some(net.add(&sb.id, netns, "eth0", &sb.cni_args())?);
        }
        Ok(())
    }

    /// Detaches the network and removes the namespaces (idempotent).
    fn teardown(&self, sb: &mut Sandbox, network: Option<&Network>) -> Result<(), Error> {
        if let (Some(netns), Some(net)) = (&sb.netns, network) {
            if !sb.host_network {
                let prev = sb.attachment.as_ref().map(|a| &a.result);
                net.del(&sb.id, netns, "eth0", &sb.cni_args(), prev)?;
            }
        }
        sb.attachment = None;
        namespaces::remove(&self.dir(&sb.id).join("ns"));
        Ok(())
    }

    /// Stops a sandbox: its network and namespaces go (its containers must be stopped).
    pub fn stop(&self, id: &str, network: Option<&Network>) -> Result<(), Error> {
        let mut sb = self.get(id)?;
        self.teardown(&mut sb, network)?;
        sb.ready = false;
        self.save(&sb)
    }

    /// Removes a stopped sandbox's state.
    pub fn remove(&self, id: &str, network: Option<&Network>) -> Result<(), Error> {
        let Ok(mut sb) = self.get(id) else {
            return Ok(());
        };
        self.teardown(&mut sb, network)?;
        let dir = self.dir(&sb.id);
        match fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io_err(&dir)(e)),
            _ => {}
        }
        self.records.remove(&sb.id)
    }
}
