//! `rkube agent` (join a server's cluster as a node) and `rkube token`.

use std::net::IpAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use serde_json::{json, Value};

#[derive(Args, Debug)]
pub struct AgentArgs {
    /// The server to join: https://HOST:PORT.
    #[arg(long, env = "RKUBE_URL")]
    pub server: String,
    /// The join token (`rkube token` on the server prints it).
    #[arg(long, env = "RKUBE_TOKEN")]
    pub token: String,
    /// Where the agent keeps its state (images, pods, credentials under DIR/agent).
    #[arg(long, default_value_os_t = crate::default_data_dir())]
    pub data_dir: PathBuf,
    /// This machine as a node.
    #[command(flatten)]
    pub node: crate::agent::NodeArgs,
    /// The cluster DNS Service IP written into pods' resolv.conf.
    #[arg(long, default_value = "10.43.0.10")]
    pub cluster_dns: String,
}

#[derive(Args, Debug)]
pub struct TokenArgs {
    /// The server's data directory.
    #[arg(long, default_value_os_t = crate::default_data_dir())]
    pub data_dir: PathBuf,
}

/// `rkube token`: prints the join token of the server on this data dir.
pub fn token(args: TokenArgs) -> anyhow::Result<()> {
    let p = args.data_dir.join("server/token");
    let t = std::fs::read_to_string(&p).with_context(|| {
        format!(
            "reading {} (has `rkube server --data-dir {}` run?)",
            p.display(),
            args.data_dir.display()
        )
    })?;
    println!("{}", t.trim());
    Ok(())
}

/// The credentials a server hands a joining node.
struct Credentials {
    ca: String,
    client: (String, String),
    serving: (String, String),
}

/// Checks the server's CA against the token, then asks for node credentials.
async fn fetch_credentials(
    server: &str,
    token: &str,
    node: &str,
    addresses: &[IpAddr],
) -> anyhow::Result<Credentials> {
    let (hash, secret) = rkube_apiserver::join::parse_token(token);
    let hash = hash.context(
        "the token carries no CA hash: use the full token that `rkube token` prints on the server (K10...)",
    )?;
    let server = server.trim_end_matches('/');
    // The CA is fetched without trusting anyone, then checked against the token's hash
    // before anything secret is sent.
    let insecure = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .timeout(std::time::Duration::from_secs(15))
        .build()?;
    let ca = insecure
        .get(format!("{server}/cacerts"))
        .send()
        .await
        .with_context(|| format!("contacting the server at {server}"))?
        .error_for_status()
        .with_context(|| format!("fetching the CA from {server}/cacerts"))?
        .text()
        .await?;
    let got = rkube_apiserver::join::ca_hash(&ca);
    if got != hash {
        anyhow::bail!(
            "the CA certificate of {server} does not match the token (the token expects sha256 {hash}, the server has {got}): is this the right server and token?"
        );
    }
    let client = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca.as_bytes())?)
        .timeout(std::time::Duration::from_secs(15))
        .build()?;
    let resp = client
        .post(format!("{server}/v1-rkube/node-credentials"))
        .bearer_auth(&secret)
        .json(&json!({"nodeName": node, "addresses": addresses.iter().map(|a| a.to_string()).collect::<Vec<_>>()}))
        .send()
        .await
        .with_context(|| format!("asking {server} for node credentials"))?;
    let status = resp.status();
    let body = resp.text().await.unwrap_or_default();
    if !status.is_success() {
        anyhow::bail!(
            "the server refused to join this node ({status}): {}",
            body.trim()
        );
    }
    let v: Value = serde_json::from_str(&body).context("the server's answer")?;
    let s = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or("").to_string();
    Ok(Credentials {
        ca: s("ca"),
        client: (s("clientCert"), s("clientKey")),
        serving: (s("servingCert"), s("servingKey")),
    })
}

/// `rkube agent`: joins the server's cluster and runs this node until SIGINT or SIGTERM.
pub async fn agent(args: AgentArgs) -> anyhow::Result<()> {
    crate::raise_fd_limit();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        anyhow::bail!("the agent runs containers: run it as root");
    }
    let node_name = args.node.name();
    let node_ip = args.node.ip();
    let creds = fetch_credentials(&args.server, &args.token, &node_name, &[node_ip]).await?;
    let pair = rkube_apiserver::pki::CertPair {
        cert_pem: creds.client.0,
        key_pem: creds.client.1,
    };
    let kubeconfig =
        rkube_apiserver::pki::kubeconfig(args.server.trim_end_matches('/'), &creds.ca, &pair);
    let agent_dir = crate::agent::agent_dir(&args.data_dir);
    std::fs::create_dir_all(&agent_dir)?;
    rkube_apiserver::pki::write_private(&agent_dir.join("kubelet.kubeconfig"), &kubeconfig)?;
    let tls = rkube_kubelet::server::Tls {
        cert_pem: creds.serving.0,
        key_pem: creds.serving.1,
        client_ca_pem: creds.ca,
    };
    let _tasks = crate::agent::start(crate::agent::LocalAgent {
        data_dir: &args.data_dir,
        node: &args.node,
        cluster_dns: args.cluster_dns.clone(),
        kubeconfig,
        tls,
    })
    .await
    .context("starting the node agent")?;
    eprintln!(
        "rkube agent: node {node_name} ({node_ip}) joined {}",
        args.server
    );
    crate::shutdown_signal().await;
    eprintln!("rkube agent: stopping (containers keep running)");
    Ok(())
}
