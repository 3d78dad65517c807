//! `rkube`: Kubernetes in one binary. This file only parses flags and wires crates together.

mod agent;
mod datastore;
mod images;
mod join;
mod server;

use std::path::PathBuf;

/// mimalloc: the API server's request path allocates many small, short-lived JSON
/// values, and glibc's malloc took ~18% of its CPU under load (docs/benchmarks.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's `arena_eager_commit` option (index 4 of `mi_option_e`).
const MI_OPTION_ARENA_EAGER_COMMIT: libmimalloc_sys::mi_option_t = 4;

/// Commits arena memory as it is used rather than up front: with eager commit an idle
/// server held ~18 MiB more resident memory. It runs as an ELF constructor because the
/// first arena is made by the first allocation, before `main`.
extern "C" fn tune_allocator() {
    // SAFETY: mi_option_set only stores the value; options may be set at any time.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_ARENA_EAGER_COMMIT, 0) };
}

#[used]
#[unsafe(link_section = ".init_array")]
static TUNE_ALLOCATOR: extern "C" fn() = tune_allocator;

use clap::{Parser, Subcommand};

/// Kubernetes, rewritten in Rust, in one binary.
#[derive(Parser)]
#[command(
    name = "rkube",
    version,
    about,
    propagate_version = true,
    args_override_self = true
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a server: datastore and API server (scheduler, controllers and agent as they land).
    Server(server::ServerArgs),
    /// Join a server's cluster as a node: the container runtime and the kubelet.
    Agent(join::AgentArgs),
    /// Print the join token agents use (`rkube agent --token`).
    Token(join::TokenArgs),
    /// Run the system kubectl with this machine's rkube kubeconfig.
    #[command(disable_help_flag = true)]
    Kubectl {
        /// Arguments for kubectl.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Operate on a datastore: snapshots and migration between backends.
    Datastore {
        #[command(subcommand)]
        command: datastore::DatastoreCommand,
    },
    /// Manage this machine's container images (the built-in runtime's image store).
    Images(images::ImagesArgs),
    /// Run the built-in container runtime: serve CRI on a unix socket.
    Runtime(images::RuntimeArgs),
    /// Run the scheduler against a cluster (it also runs inside `rkube server`).
    Scheduler(server::SchedulerArgs),
}

/// The data directory, as k3s: `/var/lib/rkube` unless told otherwise.
pub fn default_data_dir() -> PathBuf {
    PathBuf::from("/var/lib/rkube")
}

// `rkube shim` is parsed on its own, before anything else: a shim starts for every
// container, and building the whole command tree and the log subscriber first costs it
// ~0.2 ms of CPU and 60 page faults (`perf stat -r 100 rkube shim --help`).
#[derive(Parser)]
#[command(
    name = "rkube shim",
    about = "Runs one container under the OCI runtime (started by `rkube runtime`; not for people)"
)]
struct ShimCli {
    #[command(flatten)]
    args: images::ShimArgs,
}

fn main() -> anyhow::Result<()> {
    let mut argv = std::env::args();
    if argv.nth(1).as_deref() == Some("shim") {
        let cli = ShimCli::parse_from(std::iter::once("rkube shim".to_string()).chain(argv));
        std::process::exit(images::shim(cli.args));
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("RKUBE_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse_from(with_config_file(std::env::args().collect())?);
    if let Command::Kubectl { args } = &cli.command {
        return kubectl(args);
    }
    if let Command::Token(args) = cli.command {
        return join::token(args);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        match cli.command {
            Command::Server(args) => server::run(args).await,
            Command::Kubectl { .. } | Command::Token(_) => {
                unreachable!("handled above")
            }
            Command::Agent(args) => join::agent(args).await,
            Command::Datastore { command } => datastore::run(command).await,
            Command::Images(args) => images::run(args).await,
            Command::Runtime(args) => images::serve(args).await,
            Command::Scheduler(args) => server::scheduler(args).await,
        }
    })
}

/// For `rkube server`, inserts the config file's flags before the command line's (the
/// command line wins: later flags override earlier ones).
fn with_config_file(argv: Vec<String>) -> anyhow::Result<Vec<String>> {
    if argv.get(1).map(String::as_str) != Some("server") {
        return Ok(argv);
    }
    let mut path = PathBuf::from("/etc/rkube/config.yaml");
    let mut explicit = false;
    for (i, a) in argv.iter().enumerate() {
        if let Some(p) = a.strip_prefix("--config=") {
            path = p.into();
            explicit = true;
        } else if a == "--config" {
            if let Some(p) = argv.get(i + 1) {
                path = p.into();
                explicit = true;
            }
        }
    }
    let extra = server::config_args(&path, explicit)?;
    let mut out = argv[..2].to_vec();
    out.extend(extra);
    out.extend(argv[2..].iter().cloned());
    Ok(out)
}

/// `rkube kubectl ARGS`: the system kubectl with `/etc/rkube/rkube.yaml` (or
/// `$KUBECONFIG` when set).
fn kubectl(args: &[String]) -> anyhow::Result<()> {
    use std::os::unix::process::CommandExt;
    let mut cmd = std::process::Command::new("kubectl");
    if std::env::var_os("KUBECONFIG").is_none() {
        cmd.env("KUBECONFIG", "/etc/rkube/rkube.yaml");
    }
    let err = cmd.args(args).exec();
    Err(anyhow::anyhow!(
        "running kubectl: {err} (is kubectl installed and on PATH?)"
    ))
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// Raises the open-files soft limit to the hard limit (watchers and clients need sockets).
pub fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit write and read the struct we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}
