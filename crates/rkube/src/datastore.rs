//! `rkube datastore`: online snapshots of the embedded store and migration between
//! the embedded store and etcd, in both directions.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context};
use clap::Subcommand;
use indicatif::{ProgressBar, ProgressStyle};
use rkube_store::{EmbeddedOptions, EmbeddedStore, Endpoint};

#[derive(Subcommand, Debug)]
pub enum DatastoreCommand {
    /// Snapshots of the embedded datastore.
    Snapshot {
        #[command(subcommand)]
        command: SnapshotCommand,
    },
    /// Copy every key from one datastore into another (empty) one.
    ///
    /// Each side is an rkube data directory or etcd URLs (http://HOST:PORT[,...]); stop
    /// the servers using them first. Revisions restart on the destination, as after any
    /// etcd restore: clients re-list.
    Migrate {
        /// Source: a data directory or etcd URLs.
        #[arg(long)]
        from: String,
        /// Destination: a data directory or etcd URLs; must hold no keys.
        #[arg(long)]
        to: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum SnapshotCommand {
    /// Write a consistent snapshot of the embedded datastore to FILE; works while the
    /// server runs.
    Save {
        file: PathBuf,
        #[arg(long, default_value_os_t = crate::default_data_dir())]
        data_dir: PathBuf,
    },
    /// Replace the embedded datastore with the snapshot in FILE; the server must be
    /// stopped. The previous datastore is kept beside it.
    Restore {
        file: PathBuf,
        #[arg(long, default_value_os_t = crate::default_data_dir())]
        data_dir: PathBuf,
    },
}

pub async fn run(cmd: DatastoreCommand) -> anyhow::Result<()> {
    match cmd {
        DatastoreCommand::Snapshot {
            command: SnapshotCommand::Save { file, data_dir },
        } => {
            let dir = Endpoint::embedded_dir(&data_dir);
            let out = file.clone();
            let rev = tokio::task::spawn_blocking(move || EmbeddedStore::save_snapshot(&dir, &out))
                .await??;
            let size = std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
            println!(
                "saved snapshot at revision {rev} to {} ({size} bytes)",
                file.display()
            );
        }
        DatastoreCommand::Snapshot {
            command: SnapshotCommand::Restore { file, data_dir },
        } => {
            let dir = Endpoint::embedded_dir(&data_dir);
            let src = file.clone();
            let (rev, moved) =
                tokio::task::spawn_blocking(move || EmbeddedStore::restore_snapshot(&src, &dir))
                    .await??;
            println!(
                "restored {} (revision {rev}) into {}",
                file.display(),
                Endpoint::embedded_dir(&data_dir).display()
            );
            if let Some(moved) = moved {
                println!("the previous datastore was moved to {}", moved.display());
            }
        }
        DatastoreCommand::Migrate { from, to } => migrate(&from, &to).await?,
    }
    Ok(())
}

async fn migrate(from: &str, to: &str) -> anyhow::Result<()> {
    let (src_ep, dst_ep) = (Endpoint::parse(from)?, Endpoint::parse(to)?);
    if src_ep == dst_ep {
        bail!("--from and --to are the same datastore");
    }
    if let Endpoint::DataDir(d) = &src_ep {
        let dir = Endpoint::embedded_dir(d);
        if !dir.exists() {
            bail!(
                "{} holds no datastore (looked for {})",
                d.display(),
                dir.display()
            );
        }
    }
    // History is not copied, so the destination needs no automatic compaction tuning.
    let opts = EmbeddedOptions::default();
    let src = rkube_store::open(&src_ep, opts.clone())
        .await
        .with_context(|| format!("opening the source ({src_ep})"))?;
    let dst = rkube_store::open(&dst_ep, opts)
        .await
        .with_context(|| format!("opening the destination ({dst_ep})"))?;
    let bar = ProgressBar::new(0).with_style(
        ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} keys ({per_sec}, eta {eta})")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_message("migrating");
    let started = Instant::now();
    let report = rkube_store::migrate::migrate(&*src, &*dst, |done, total| {
        bar.set_length(total);
        bar.set_position(done);
    })
    .await
    .with_context(|| format!("migrating from {src_ep} to {dst_ep}"))?;
    bar.finish_and_clear();
    println!(
        "migrated {} keys ({} bytes) from {src_ep} at revision {} to {dst_ep} in {:.1}s{}",
        report.keys,
        report.bytes,
        report.source_revision,
        started.elapsed().as_secs_f64(),
        if report.expired > 0 {
            format!("; {} keys expired during the copy", report.expired)
        } else {
            String::new()
        }
    );
    Ok(())
}
