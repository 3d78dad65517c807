//! `rkube images` (the image store of this machine's runtime, used directly: it works
//! whether or not the runtime is running) and `rkube runtime` (serve CRI).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use rkube_runtime::images::registry::{self, Auth};
use rkube_runtime::images::{import, reference::Reference, ImageStore, Progress};
use rkube_runtime::Paths;

#[derive(Args, Debug)]
pub struct ImagesArgs {
    /// The data directory whose images to work on.
    #[arg(long, global = true, default_value_os_t = crate::default_data_dir())]
    pub data_dir: PathBuf,
    #[command(subcommand)]
    pub command: ImagesCommand,
}

#[derive(Subcommand, Debug)]
pub enum ImagesCommand {
    /// Import image tarballs: OCI image layouts or `docker save` archives (plain, .gz, .zst).
    Import {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Pull an image from a registry (credentials from docker's config.json, as written
    /// by `docker login`; `--username`/`--password` override).
    Pull {
        reference: String,
        #[arg(long, env = "RKUBE_REGISTRY_USERNAME")]
        username: Option<String>,
        #[arg(long, env = "RKUBE_REGISTRY_PASSWORD", hide_env_values = true)]
        password: Option<String>,
    },
    /// List images.
    #[command(alias = "ls")]
    List,
    /// Remove images (by name, name@digest or image ID) and the layers no other image uses.
    #[command(alias = "remove")]
    Rm {
        #[arg(required = true)]
        references: Vec<String>,
    },
}

#[derive(Args, Debug)]
pub struct RuntimeArgs {
    /// Where the runtime keeps images, sandboxes and containers (DIR/agent/runtime).
    #[arg(long, default_value_os_t = crate::default_data_dir())]
    pub data_dir: PathBuf,
    /// The CRI socket (default /run/rkube/cri.sock, or DIR/agent/runtime/cri.sock for a
    /// non-default data dir).
    #[arg(long)]
    pub socket: Option<PathBuf>,
    /// The OCI runtime binary (runc, or crun).
    #[arg(long, default_value = "runc")]
    pub runc: PathBuf,
    /// The Linux bridge pods are attached to.
    #[arg(long, default_value = "rkube0")]
    pub bridge: String,
    /// Where the streaming server for exec, attach and port-forward listens (the kubelet
    /// connects to it; port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub stream_address: String,
    /// Where CNI plugin binaries are looked for (repeatable; Debian's are in /usr/lib/cni).
    /// Without it, rkube's built-in bridge and host-local plugins run in-process (same
    /// configuration, results and allocation files, no process per pod).
    #[arg(long = "cni-bin-dir")]
    pub cni_bin_dirs: Vec<PathBuf>,
}

/// `rkube shim` (started by the runtime, one per container; not for people).
#[derive(Args, Debug)]
pub struct ShimArgs {
    #[arg(long)]
    pub id: String,
    #[arg(long)]
    pub dir: PathBuf,
    #[arg(long)]
    pub record_dir: PathBuf,
    #[arg(long)]
    pub runc: PathBuf,
    #[arg(long)]
    pub runc_image: Option<PathBuf>,
    #[arg(long)]
    pub runc_root: PathBuf,
    #[arg(long)]
    pub log: Option<PathBuf>,
    #[arg(long, default_value = "")]
    pub cgroup: String,
}

/// Runs the shim (no async runtime: it must stay small and single-threaded).
pub fn shim(a: ShimArgs) -> i32 {
    rkube_runtime::shim::run(rkube_runtime::shim::ShimArgs {
        id: a.id,
        dir: a.dir,
        record_dir: a.record_dir,
        runc: a.runc,
        runc_image: a.runc_image,
        runc_root: a.runc_root,
        log: a.log,
        cgroup: a.cgroup,
    })
}

/// The CRI socket for a data dir.
pub fn default_socket(data_dir: &Path) -> PathBuf {
    if data_dir == crate::default_data_dir() {
        PathBuf::from("/run/rkube/cri.sock")
    } else {
        Paths::under(data_dir).root.join("cri.sock")
    }
}

/// `rkube runtime`: serves CRI until SIGINT or SIGTERM.
pub async fn serve(args: RuntimeArgs) -> anyhow::Result<()> {
    let socket = args
        .socket
        .unwrap_or_else(|| default_socket(&args.data_dir));
    let defaults = rkube_runtime::cri::Options::default();
    let options = rkube_runtime::cri::Options {
        bridge: args.bridge,
        stream_address: args.stream_address,
        cni_dirs: args.cni_bin_dirs,
        ..defaults
    };
    let rt = crate::agent::open_runtime(&args.data_dir, &args.runc, options).await?;
    rkube_runtime::cri::serve(rt, &socket, crate::shutdown_signal()).await?;
    Ok(())
}

pub async fn run(args: ImagesArgs) -> anyhow::Result<()> {
    let root = Paths::under(&args.data_dir).images();
    let store = ImageStore::open(&root)
        .with_context(|| format!("opening the image store in {}", root.display()))?;
    match args.command {
        ImagesCommand::Import { files } => {
            for f in files {
                let bar = bar(&format!("importing {}", f.display()));
                let progress = progress_to(&bar);
                let store = store.clone();
                let file = f.clone();
                let res =
                    tokio::task::spawn_blocking(move || import::import(&store, &file, &progress))
                        .await?;
                bar.finish_and_clear();
                let imported = res.with_context(|| format!("importing {}", f.display()))?;
                for (name, img) in imported {
                    println!("imported {name} ({})", short(img.id.as_str()));
                }
            }
        }
        ImagesCommand::Pull {
            reference,
            username,
            password,
        } => {
            let r = Reference::parse(&reference)?;
            let auth = match (username, password) {
                (Some(username), password) => Auth::Basic {
                    username,
                    password: password.unwrap_or_default(),
                },
                _ => docker_config_auth(&r.domain)?,
            };
            let bar = bar(&format!("pulling {r}"));
            let progress = progress_to(&bar);
            let res = registry::pull(&store, &r, &auth, &progress).await;
            bar.finish_and_clear();
            let img = res.with_context(|| format!("pulling {r}"))?;
            println!("pulled {r} ({})", short(img.id.as_str()));
        }
        ImagesCommand::List => {
            let images = store.list()?;
            println!(
                "{:<50} {:<20} {:<13} {:>10}",
                "IMAGE", "TAG", "IMAGE ID", "SIZE"
            );
            for img in images {
                let names: Vec<(String, String)> = if img.repo_tags.is_empty() {
                    vec![("<none>".into(), "<none>".into())]
                } else {
                    img.repo_tags
                        .iter()
                        .map(|t| match t.rsplit_once(':') {
                            Some((n, tag)) => (n.to_string(), tag.to_string()),
                            None => (t.clone(), String::new()),
                        })
                        .collect()
                };
                for (name, tag) in names {
                    println!(
                        "{name:<50} {tag:<20} {:<13} {:>10}",
                        short(img.id.as_str()),
                        human(img.size)
                    );
                }
            }
        }
        ImagesCommand::Rm { references } => {
            let mut missing = Vec::new();
            for r in references {
                if store.remove(&r)? {
                    println!("removed {r}");
                } else {
                    missing.push(r);
                }
            }
            if !missing.is_empty() {
                anyhow::bail!("no such image: {}", missing.join(", "));
            }
        }
    }
    Ok(())
}

fn bar(msg: &str) -> ProgressBar {
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template(
            "{msg}\n{wide_bar} {bytes}/{total_bytes} {bytes_per_sec} {eta}",
        )
        .expect("static template"),
    );
    bar.set_message(msg.to_string());
    bar
}

fn progress_to(bar: &ProgressBar) -> impl Fn(Progress) + Send + Sync + 'static {
    let bar = bar.clone();
    let base = Arc::new(bar.message());
    move |p| match p {
        Progress::Total(n) => bar.set_length(n),
        Progress::Bytes(n) => bar.inc(n),
        Progress::Step(s) => bar.set_message(format!("{base}: {s}")),
    }
}

/// `sha256:0123456789ab…` → `0123456789ab`.
fn short(id: &str) -> String {
    id.trim_start_matches("sha256:").chars().take(12).collect()
}

fn human(n: u64) -> String {
    let units = ["B", "KB", "MB", "GB", "TB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1000.0 && i + 1 < units.len() {
        v /= 1000.0;
        i += 1;
    }
    if i == 0 {
        format!("{n}B")
    } else {
        format!("{v:.1}{}", units[i])
    }
}

/// Credentials for `host` from docker's `config.json` (`$DOCKER_CONFIG`, else
/// `~/.docker`), as `docker login` writes them.
fn docker_config_auth(host: &str) -> anyhow::Result<Auth> {
    let dir = std::env::var_os("DOCKER_CONFIG")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker")));
    let Some(path) = dir.map(|d| d.join("config.json")) else {
        return Ok(Auth::Anonymous);
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Auth::Anonymous),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let cfg: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("{} is not valid JSON", path.display()))?;
    let keys: Vec<String> = if host == "docker.io" {
        vec![
            "https://index.docker.io/v1/".into(),
            "docker.io".into(),
            "index.docker.io".into(),
        ]
    } else {
        vec![
            host.into(),
            format!("https://{host}"),
            format!("http://{host}"),
        ]
    };
    let Some(entry) = keys
        .iter()
        .find_map(|k| cfg.get("auths").and_then(|a| a.get(k)))
    else {
        return Ok(Auth::Anonymous);
    };
    if let Some(auth) = entry.get("auth").and_then(|a| a.as_str()) {
        use base64::Engine;
        let raw = base64::engine::general_purpose::STANDARD
            .decode(auth.trim())
            .with_context(|| format!("{}: auths.{host}.auth is not base64", path.display()))?;
        let s = String::from_utf8(raw)?;
        if let Some((u, p)) = s.split_once(':') {
            return Ok(Auth::Basic {
                username: u.into(),
                password: p.into(),
            });
        }
    }
    match (
        entry.get("username").and_then(|u| u.as_str()),
        entry.get("password").and_then(|p| p.as_str()),
    ) {
        (Some(u), Some(p)) => Ok(Auth::Basic {
            username: u.into(),
            password: p.into(),
        }),
        _ => Ok(Auth::Anonymous),
    }
}
