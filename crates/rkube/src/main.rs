//! `rkube`: Kubernetes in one binary. This file only parses flags and wires crates together.

mod bench;
mod datastore;
mod server;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Kubernetes, rewritten in Rust, in one binary.
#[derive(Parser)]
#[command(name = "rkube", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a server: the datastore now; the apiserver, scheduler and controllers as they land.
    Server(server::ServerArgs),
    /// Operate on a datastore: snapshots and migration between backends.
    Datastore {
        #[command(subcommand)]
        command: datastore::DatastoreCommand,
    },
    /// Measure the components and print the figures.
    Bench {
        #[command(subcommand)]
        command: bench::BenchCommand,
    },
}

/// The data directory, as k3s: `/var/lib/rkube` unless told otherwise.
pub fn default_data_dir() -> PathBuf {
    PathBuf::from("/var/lib/rkube")
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("RKUBE_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        match cli.command {
            Command::Server(args) => server::run(args).await,
            Command::Datastore { command } => datastore::run(command).await,
            Command::Bench { command } => bench::run(command).await,
        }
    })
}
