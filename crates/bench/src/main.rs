//! `rkube-bench`: the figures of docs/benchmarks.md, printed as tables. Kept out of the
//! shipped `rkube` binary; it drives a `rkube` built beside it (or `--rkube PATH`).

mod api;
mod datastore;
mod kubelet;
mod runtime;
mod scheduler;

use std::path::PathBuf;
use std::sync::OnceLock;

use clap::{Parser, Subcommand};

/// The same allocator as `rkube`, so in-process figures (the datastore's) compare.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "rkube-bench",
    about = "Measure rkube's components and print the figures"
)]
struct Cli {
    /// The rkube binary to measure (default: the one beside this program).
    #[arg(long, global = true, env = "RKUBE_BIN")]
    rkube: Option<PathBuf>,
    #[command(subcommand)]
    command: BenchCommand,
}

static RKUBE: OnceLock<PathBuf> = OnceLock::new();

/// The `rkube` binary the benchmarks start (servers, agents, the scheduler).
pub fn rkube_binary() -> PathBuf {
    RKUBE
        .get()
        .cloned()
        .unwrap_or_else(|| PathBuf::from("rkube"))
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let rkube = match cli.rkube {
        Some(p) => p,
        None => std::env::current_exe()?
            .parent()
            .map(|d| d.join("rkube"))
            .ok_or_else(|| anyhow::anyhow!("cannot tell where rkube-bench is"))?,
    };
    if !rkube.is_file() {
        anyhow::bail!(
            "{} not found: build it first (cargo build --release -p rkube) or pass --rkube PATH",
            rkube.display()
        );
    }
    let _ = RKUBE.set(rkube);
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run(cli.command))
}

/// What to measure.
#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// Datastore: durable 1 KiB puts/s (1 and 64 writers), a 10,000-key range, and watch
    /// delivery latency with 1,000 watchers, for the embedded store and a real etcd on the
    /// same disk.
    Datastore {
        /// Parent directory of both stores (the same disk for both).
        #[arg(long, default_value_os_t = std::env::temp_dir())]
        dir: PathBuf,
        /// Use this etcd instead of starting one (its disk may differ).
        #[arg(long)]
        etcd_endpoint: Option<String>,
        /// Scale the number of operations (1.0 = the figures in docs/benchmarks.md).
        #[arg(long, default_value_t = 1.0)]
        scale: f64,
    },
    /// API server: creates/s and gets/s with 64 clients, mutating latency at 1,000
    /// writes/s, watch fan-out to 1,000 watchers, LIST of 100,000 pods, and server RSS
    /// idle and holding them; through the real API against a server process.
    Apiserver {
        /// Where the server's data directory goes.
        #[arg(long, default_value_os_t = std::env::temp_dir())]
        dir: PathBuf,
        /// Scale the number of operations (1.0 = the figures in docs/benchmarks.md).
        #[arg(long, default_value_t = 1.0)]
        scale: f64,
    },
    /// Scheduler: upstream's scheduler_perf shapes (fake nodes, pods placed first, then the
    /// measured pods), from the first measured pod created to the last bound, with the
    /// scheduler's and the API server's CPU and RSS.
    Scheduler {
        /// Where the server's data directory goes.
        #[arg(long, default_value_os_t = std::env::temp_dir())]
        dir: PathBuf,
        /// The workload: basic (SchedulingBasic), topology-spreading, anti-affinity
        /// (SchedulingPodAntiAffinity) or preemption (PreemptionBasic).
        #[arg(long, value_enum, default_value = "basic")]
        shape: crate::scheduler::Shape,
        /// Nodes (default: upstream's, 5,000; 500 for preemption).
        #[arg(long)]
        nodes: Option<usize>,
        /// Measured pods (default: 10,000 for basic, 5,000 for spreading, 1,000 for
        /// anti-affinity, 500 for preemption).
        #[arg(long)]
        pods: Option<usize>,
        /// Then also time the scheduler alone: it is paused (SIGSTOP) while as many pods
        /// again are created, then resumed; timed from the resume to the last pod bound
        /// (not for preemption).
        #[arg(long)]
        backlog: bool,
    },
    /// Container runtime (root): pod sandbox setup, sandbox + first container running,
    /// container create+start+stop+remove beside bare `runc run` of the same bundle
    /// (p50/p99), and 20 pods started at once; through CRI against the built-in runtime.
    Runtime {
        /// Where the runtime's data directory goes.
        #[arg(long, default_value_os_t = std::env::temp_dir())]
        dir: PathBuf,
        /// Runs per figure.
        #[arg(long, default_value_t = 100)]
        runs: usize,
    },
    /// Node agent (root): pod startup latency (create → Running seen through a watch) for
    /// pods created at once on one node, and the agent's memory holding them.
    Kubelet {
        /// Where the server's data directory goes: by default beside rkube's own
        /// (/var/lib/rkube), on the filesystem a node keeps its state on.
        #[arg(long, default_value = "/var/lib")]
        dir: PathBuf,
        /// Pods created at once per round.
        #[arg(long, default_value_t = 20)]
        pods: usize,
        /// Batches of `pods`, one after the other (each deleted before the next).
        #[arg(long, default_value_t = 3)]
        rounds: usize,
    },
}

/// Runs one benchmark and prints its figures.
pub async fn run(cmd: BenchCommand) -> anyhow::Result<()> {
    match cmd {
        BenchCommand::Datastore {
            dir,
            etcd_endpoint,
            scale,
        } => crate::datastore::datastore(dir, etcd_endpoint, scale).await,
        BenchCommand::Apiserver { dir, scale } => crate::api::apiserver(dir, scale).await,
        BenchCommand::Scheduler {
            dir,
            shape,
            nodes,
            pods,
            backlog,
        } => crate::scheduler::scheduler(dir, shape, nodes, pods, backlog).await,
        BenchCommand::Runtime { dir, runs } => crate::runtime::runtime(dir, runs).await,
        BenchCommand::Kubelet { dir, pods, rounds } => {
            crate::kubelet::kubelet(dir, pods, rounds.max(1)).await
        }
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
