//! `rkube server`: opens the datastore and serves until interrupted.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use rkube_store::{EmbeddedOptions, Endpoint};

#[derive(Args, Debug)]
pub struct ServerArgs {
    /// Where the server keeps its state (the embedded datastore lives in DIR/server/db).
    #[arg(long, default_value_os_t = crate::default_data_dir())]
    pub data_dir: PathBuf,
    /// Use an etcd cluster instead of the embedded datastore: http://HOST:PORT[,...].
    #[arg(long)]
    pub datastore_endpoint: Option<String>,
}

pub async fn run(args: ServerArgs) -> anyhow::Result<()> {
    let endpoint = match &args.datastore_endpoint {
        Some(url) => Endpoint::parse(url)?,
        None => Endpoint::DataDir(args.data_dir.clone()),
    };
    let store = rkube_store::open(&endpoint, EmbeddedOptions::default())
        .await
        .with_context(|| format!("opening the datastore ({endpoint})"))?;
    let rev = store.current_revision().await?;
    let keys = store
        .range(rkube_store::RangeRequest::prefix("").count_only())
        .await?
        .count;
    eprintln!("rkube server: datastore ready: {endpoint}, revision {rev}, {keys} keys");
    eprintln!("rkube server: the API server is not part of this build yet; press Ctrl-C to stop");
    tokio::signal::ctrl_c().await?;
    eprintln!("rkube server: stopping");
    Ok(())
}
