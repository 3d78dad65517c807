//! Choosing a backend from the command line: a data directory or etcd URLs.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::{EmbeddedOptions, EmbeddedStore, EtcdStore, Result, Store, StoreError};

/// Where a datastore lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// An rkube data directory; the embedded store is in `DIR/server/db`.
    DataDir(PathBuf),
    /// An etcd cluster: `http://host:port` endpoints.
    Etcd(Vec<String>),
}

impl Endpoint {
    /// Parses `http://h:2379[,http://h2:2379...]` as etcd, anything else as a data dir.
    pub fn parse(s: &str) -> Result<Endpoint> {
        let s = s.trim();
        if s.is_empty() {
            return Err(StoreError::Invalid("empty datastore endpoint".into()));
        }
        if s.contains("://") {
            let urls: Vec<String> = s
                .split(',')
                .map(|u| u.trim().to_string())
                .filter(|u| !u.is_empty())
                .collect();
            for u in &urls {
                if !(u.starts_with("http://") || u.starts_with("https://")) {
                    return Err(StoreError::Invalid(format!(
                        "unsupported datastore endpoint {u}: use http://HOST:PORT for etcd, or a data directory"
                    )));
                }
            }
            return Ok(Endpoint::Etcd(urls));
        }
        Ok(Endpoint::DataDir(PathBuf::from(s)))
    }

    /// The embedded store's directory inside an rkube data directory.
    pub fn embedded_dir(data_dir: &Path) -> PathBuf {
        data_dir.join("server").join("db")
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::DataDir(d) => write!(
                f,
                "embedded store in {}",
                Endpoint::embedded_dir(d).display()
            ),
            Endpoint::Etcd(urls) => write!(f, "etcd at {}", urls.join(",")),
        }
    }
}

/// Opens the datastore at `endpoint`.
pub async fn open(endpoint: &Endpoint, options: EmbeddedOptions) -> Result<Arc<dyn Store>> {
    Ok(match endpoint {
        Endpoint::DataDir(dir) => {
            let dir = Endpoint::embedded_dir(dir);
            let store = tokio::task::spawn_blocking(move || EmbeddedStore::open(dir, options))
                .await
                .map_err(|e| {
                    StoreError::Invalid(format!("opening the datastore panicked: {e}"))
                })??;
            Arc::new(store)
        }
        Endpoint::Etcd(urls) => Arc::new(EtcdStore::connect(urls).await?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse() {
        assert_eq!(
            Endpoint::parse("http://127.0.0.1:2379, http://127.0.0.1:2380").unwrap(),
            Endpoint::Etcd(vec![
                "http://127.0.0.1:2379".into(),
                "http://127.0.0.1:2380".into()
            ])
        );
        assert_eq!(
            Endpoint::parse("/var/lib/rkube").unwrap(),
            Endpoint::DataDir("/var/lib/rkube".into())
        );
        assert!(Endpoint::parse("mysql://x").is_err());
        assert!(Endpoint::parse(" ").is_err());
    }
}
