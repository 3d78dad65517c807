//! `rkube server`: the datastore and the apiserver (the scheduler, controllers and the
//! node agent join as they land).

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;
use rkube_apiserver::{ApiServer, Cidr, Config};
use rkube_store::{EmbeddedOptions, Endpoint};

#[derive(Args, Debug)]
pub struct ServerArgs {
    /// Where the server keeps its state (the embedded datastore lives in DIR/server/db,
    /// certificates in DIR/server/tls).
    #[arg(long, default_value_os_t = crate::default_data_dir())]
    pub data_dir: PathBuf,
    /// Address to listen on.
    #[arg(long, default_value = "0.0.0.0")]
    pub bind_address: IpAddr,
    /// HTTPS port of the API (0 picks a free port).
    #[arg(long, default_value_t = 6443)]
    pub https_listen_port: u16,
    /// Where to write the admin kubeconfig.
    #[arg(long, default_value = "/etc/rkube/rkube.yaml")]
    pub write_kubeconfig: PathBuf,
    /// Use an etcd cluster instead of the embedded datastore: http://HOST:PORT[,...].
    #[arg(long)]
    pub datastore_endpoint: Option<String>,
    /// Extra names or addresses for the serving certificate (repeatable).
    #[arg(long = "tls-san")]
    pub tls_san: Vec<String>,
    /// IP range for Service ClusterIPs.
    #[arg(long, default_value = "10.43.0.0/16")]
    pub service_cidr: Cidr,
    /// IP range for pod IPs (each node gets a /24 of it).
    #[arg(long, default_value = "10.42.0.0/16")]
    pub cluster_cidr: Cidr,
    /// Do not run the node agent in this process.
    #[arg(long)]
    pub disable_agent: bool,
    /// Do not run the scheduler in this server (another one schedules).
    #[arg(long)]
    pub disable_scheduler: bool,
    /// The scheduler's KubeSchedulerConfiguration (profiles, plugins, weights, args).
    #[arg(long)]
    pub scheduler_config: Option<PathBuf>,
    /// Read-only requests the API serves at once; more get 429 and Retry-After
    /// (members of system:masters are not limited).
    #[arg(long, default_value_t = 400)]
    pub max_requests_inflight: usize,
    /// Mutating requests the API serves at once; more get 429 and Retry-After.
    #[arg(long, default_value_t = 200)]
    pub max_mutating_requests_inflight: usize,
    /// Longest a request may run before it gets 504 (watches, logs, exec, attach and
    /// port-forward excepted), in seconds.
    #[arg(long, default_value_t = 60)]
    pub request_timeout: u64,
    /// Admission plugins to run besides the default ones (comma-separated, upstream's
    /// names; `rkube server --help` lists the defaults).
    #[arg(long, value_delimiter = ',', value_name = "PLUGINS")]
    pub enable_admission_plugins: Vec<String>,
    /// Admission plugins not to run, even if on by default (NamespaceLifecycle, Priority,
    /// DefaultTolerationSeconds, ...).
    #[arg(long, value_delimiter = ',', value_name = "PLUGINS")]
    pub disable_admission_plugins: Vec<String>,
    /// This machine as a node (the agent of the server).
    #[command(flatten)]
    pub node: crate::agent::NodeArgs,
    /// The secret agents join with (a full K10... token or its secret part; default: a
    /// random one, kept in DATA_DIR/server/token).
    #[arg(long, env = "RKUBE_TOKEN")]
    pub token: Option<String>,
    /// Configuration file: YAML whose keys are these flags' names (flags on the
    /// command line win).
    #[arg(long, default_value = "/etc/rkube/config.yaml")]
    pub config: PathBuf,
}

/// Turns a config file into `--flag value` arguments placed before the command line's.
pub fn config_args(path: &Path, explicit: bool) -> anyhow::Result<Vec<String>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => return Ok(Vec::new()),
        Err(e) => {
            return Err(e).with_context(|| format!("reading the config file {}", path.display()))
        }
    };
    let map: std::collections::BTreeMap<String, serde_json::Value> = serde_saphyr::from_str(&text)
        .with_context(|| {
            format!(
                "{}: expected a YAML map of flag names to values",
                path.display()
            )
        })?;
    let mut args = Vec::new();
    for (k, v) in map {
        let flag = format!("--{k}");
        match v {
            serde_json::Value::Bool(true) => args.push(flag),
            serde_json::Value::Bool(false) | serde_json::Value::Null => {}
            serde_json::Value::Array(items) => {
                for i in items {
                    args.push(flag.clone());
                    args.push(scalar(&i));
                }
            }
            other => {
                args.push(flag);
                args.push(scalar(&other));
            }
        }
    }
    Ok(args)
}

fn scalar(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

pub async fn run(args: ServerArgs) -> anyhow::Result<()> {
    crate::raise_fd_limit();
    let endpoint = match &args.datastore_endpoint {
        Some(url) => Endpoint::parse(url)?,
        None => Endpoint::DataDir(args.data_dir.clone()),
    };
    let store = rkube_store::open(&endpoint, EmbeddedOptions::default())
        .await
        .with_context(|| format!("opening the datastore ({endpoint})"))?;
    let mut config = Config::new(args.data_dir.join("server"));
    config.bind_address = args.bind_address;
    config.port = args.https_listen_port;
    config.tls_sans = args.tls_san.clone();
    config.service_cidr = args.service_cidr;
    config.limits.max_requests_inflight = args.max_requests_inflight;
    config.limits.max_mutating_requests_inflight = args.max_mutating_requests_inflight;
    config.limits.request_timeout = std::time::Duration::from_secs(args.request_timeout.max(1));
    config.admission = rkube_apiserver::AdmissionConfig {
        enable: args.enable_admission_plugins.clone(),
        disable: args.disable_admission_plugins.clone(),
    };
    let token_file = args.data_dir.join("server/token");
    let secret = match &args.token {
        Some(t) => rkube_apiserver::join::parse_token(t).1,
        None => match std::fs::read_to_string(&token_file) {
            Ok(t) => rkube_apiserver::join::parse_token(&t).1,
            Err(_) => rkube_runtime::new_id()[..32].to_string(),
        },
    };
    config.join_secret = Some(secret.clone());
    let server = ApiServer::start(config, store).await?;
    let token = rkube_apiserver::join::token(&server.pki.ca.cert_pem, &secret);
    rkube_apiserver::pki::write_private(&token_file, &format!("{token}\n"))
        .context("writing the join token")?;
    let kubeconfig = &args.write_kubeconfig;
    rkube_apiserver::pki::write_private(kubeconfig, &server.admin_kubeconfig())
        .with_context(|| "writing the kubeconfig (choose another path with --write-kubeconfig)")?;
    eprintln!(
        "rkube server: API at {} (datastore: {endpoint})",
        server.url()
    );
    eprintln!(
        "rkube server: kubeconfig written to {}",
        kubeconfig.display()
    );
    eprintln!(
        "rkube server: try: kubectl --kubeconfig {} get namespaces",
        kubeconfig.display()
    );
    let _scheduler = if args.disable_scheduler {
        None
    } else {
        let kc = kube::config::Kubeconfig::from_yaml(&server.admin_kubeconfig())?;
        // A stable identity: a restarted server renews its own lease at once.
        let identity = args.node.name();
        let lock = rkube_client::leader::LeaseLock::for_component("kube-scheduler", identity);
        let task = scheduling(kc, args.scheduler_config.as_deref(), Some(lock)).await?;
        Some(AbortOnDrop(tokio::spawn(task)))
    };
    let admin = kube::config::Kubeconfig::from_yaml(&server.admin_kubeconfig())?;
    let admin = kube::Client::try_from(
        kube::Config::from_custom_kubeconfig(admin, &Default::default()).await?,
    )?;
    let ranges = rkube_controllers::node_ipam::Ranges {
        base: args.cluster_cidr.base,
        prefix: args.cluster_cidr.prefix,
        node_prefix: 24.max(args.cluster_cidr.prefix),
    };
    let _ipam = AbortOnDrop(tokio::spawn(rkube_controllers::node_ipam::run(
        admin, ranges,
    )));
    let _agent = if args.disable_agent {
        Vec::new()
    } else if !rkube_runtime_root() {
        eprintln!("rkube server: not root, so no node agent (containers need root); running the control plane only");
        Vec::new()
    } else {
        let node_name = args.node.name();
        let node = server
            .pki
            .issue_client(&format!("system:node:{node_name}"), &["system:nodes"])?;
        let kubeconfig =
            rkube_apiserver::pki::kubeconfig(&server.url(), &server.pki.ca.cert_pem, &node);
        let node_ip = args.node.ip();
        let serving = server.pki.issue_serving(
            &node_name,
            &[
                node_ip.to_string(),
                node_name.clone(),
                "localhost".into(),
                "127.0.0.1".into(),
            ],
        )?;
        let tls = rkube_kubelet::server::Tls {
            cert_pem: serving.cert_pem,
            key_pem: serving.key_pem,
            client_ca_pem: server.pki.ca.cert_pem.clone(),
        };
        let agent_dir = crate::agent::agent_dir(&args.data_dir);
        std::fs::create_dir_all(&agent_dir)?;
        rkube_apiserver::pki::write_private(&agent_dir.join("kubelet.kubeconfig"), &kubeconfig)?;
        let tasks = crate::agent::start(crate::agent::LocalAgent {
            data_dir: &args.data_dir,
            node: &args.node,
            cluster_dns: args.service_cidr.nth(9).to_string(),
            kubeconfig,
            tls,
        })
        .await
        .context("starting the node agent")?;
        eprintln!("rkube server: node {node_name} is joining (kubectl get nodes)");
        tasks
    };
    crate::shutdown_signal().await;
    eprintln!("rkube server: stopping");
    drop(_agent);
    drop(_ipam);
    drop(_scheduler);
    drop(server);
    Ok(())
}

/// A background task that ends with its owner.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Scheduling as a task: the profiles of `scheduler_config` (default: the default
/// profile), each leadership term with a fresh scheduler when `lock` is given.
async fn scheduling(
    kc: kube::config::Kubeconfig,
    scheduler_config: Option<&Path>,
    lock: Option<rkube_client::leader::LeaseLock>,
) -> anyhow::Result<impl std::future::Future<Output = ()>> {
    let profiles = match scheduler_config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading the scheduler config {}", path.display()))?;
            let value: serde_json::Value = serde_saphyr::from_str(&text)
                .with_context(|| format!("parsing the scheduler config {}", path.display()))?;
            rkube_scheduler::config::profiles(&value)?
        }
        None => vec![rkube_scheduler::plugins::default_profile()],
    };
    let config = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?;
    let client = kube::Client::try_from(config)?;
    Ok(async move {
        let term = || rkube_scheduler::Scheduler::new(client.clone(), profiles.clone()).run();
        match lock {
            Some(lock) => lock.run(client.clone(), term).await,
            None => term().await,
        }
    })
}

/// Whether this process may run containers.
fn rkube_runtime_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// This machine's host name.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "localhost".into())
}

#[derive(Args, Debug)]
pub struct SchedulerArgs {
    /// The cluster's kubeconfig.
    #[arg(long, default_value = "/etc/rkube/rkube.yaml")]
    pub kubeconfig: PathBuf,
    /// A KubeSchedulerConfiguration file (profiles, plugins, weights, args).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Take the kube-system/kube-scheduler Lease before scheduling, so that one of several
    /// schedulers works at a time.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_elect: bool,
    /// Seconds a lease lasts without renewal.
    #[arg(long, default_value_t = 15)]
    pub leader_elect_lease_duration: u64,
    /// Milliseconds between attempts to take or renew the lease.
    #[arg(long, default_value_t = 2000)]
    pub leader_elect_retry_period: u64,
}

/// `rkube scheduler`: schedules until SIGINT or SIGTERM.
pub async fn scheduler(args: SchedulerArgs) -> anyhow::Result<()> {
    let kc = kube::config::Kubeconfig::read_from(&args.kubeconfig)
        .with_context(|| format!("reading {}", args.kubeconfig.display()))?;
    let lock = args.leader_elect.then(|| {
        let mut id = [0u8; 4];
        let _ = std::fs::File::open("/dev/urandom")
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut id));
        let suffix: String = id.iter().map(|b| format!("{b:02x}")).collect();
        let mut lock = rkube_client::leader::LeaseLock::for_component(
            "kube-scheduler",
            format!("{}_{suffix}", hostname()),
        );
        lock.duration = std::time::Duration::from_secs(args.leader_elect_lease_duration.max(1));
        lock.retry = std::time::Duration::from_millis(args.leader_elect_retry_period.max(10));
        lock
    });
    let task = scheduling(kc, args.config.as_deref(), lock).await?;
    tokio::select! {
        _ = task => {}
        _ = crate::shutdown_signal() => {}
    }
    Ok(())
}
