//! Shared informers, as client-go's SharedInformerFactory: one watch per resource type
//! for the whole process, feeding one cache (a kube-runtime reflector store) that every
//! controller reads, and a broadcast of changes each controller subscribes to.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use tokio::sync::broadcast;

/// Changes a subscriber may fall behind by before it is told to re-read the cache.
const CHANGE_BUFFER: usize = 4096;

/// One change an informer saw.
#[derive(Debug)]
pub enum Change<K> {
    /// Added or modified (also every object of a re-list).
    Applied(Arc<K>),
    /// Deleted (its last known state).
    Deleted(Arc<K>),
}

impl<K> Clone for Change<K> {
    fn clone(&self) -> Self {
        match self {
            Change::Applied(o) => Change::Applied(o.clone()),
            Change::Deleted(o) => Change::Deleted(o.clone()),
        }
    }
}

/// The cache and change feed of one resource type, cluster-wide.
pub struct Informer<K: Resource<DynamicType = ()> + 'static> {
    store: Store<K>,
    changes: broadcast::Sender<Change<K>>,
    task: tokio::task::JoinHandle<()>,
}

impl<K> Informer<K>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    /// Starts watching every object of `K` with `client`.
    pub fn start(client: Client) -> Arc<Self> {
        let (store, mut writer) = reflector::store::<K>();
        let (changes, _) = broadcast::channel(CHANGE_BUFFER);
        let tx = changes.clone();
        let api: Api<K> = Api::all(client);
        let task = tokio::spawn(async move {
            let events = watcher(api, watcher::Config::default()).default_backoff();
            futures::pin_mut!(events);
            while let Some(ev) = events.next().await {
                let ev = match ev {
                    Ok(ev) => ev,
                    Err(e) => {
                        tracing::debug!(kind = %K::kind(&()), error = %e, "informer watch");
                        continue;
                    }
                };
                // What the store held before a delete is what subscribers get.
                let change = match &ev {
                    watcher::Event::Apply(o) | watcher::Event::InitApply(o) => {
                        Some(Change::Applied(Arc::new(o.clone())))
                    }
                    watcher::Event::Delete(o) => Some(Change::Deleted(Arc::new(o.clone()))),
                    watcher::Event::Init | watcher::Event::InitDone => None,
                };
                writer.apply_watcher_event(&ev);
                if let Some(c) = change {
                    let _ = tx.send(c);
                }
            }
        });
        Arc::new(Informer {
            store,
            changes,
            task,
        })
    }

    /// The cache: every object as last seen (empty until the first list is in).
    pub fn store(&self) -> Store<K> {
        self.store.clone()
    }

    /// Waits until the first list is in the cache (client-go's WaitForCacheSync).
    pub async fn synced(&self) {
        let _ = self.store.wait_until_ready().await;
    }

    /// The changes from now on. A subscriber that falls more than 4,096 changes behind
    /// gets `RecvError::Lagged` and should re-read the cache.
    pub fn subscribe(&self) -> broadcast::Receiver<Change<K>> {
        self.changes.subscribe()
    }
}

impl<K: Resource<DynamicType = ()> + 'static> Drop for Informer<K> {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One informer per resource type for the whole process.
pub struct SharedInformerFactory {
    client: Client,
    informers: Mutex<HashMap<TypeId, Arc<dyn Any + Send + Sync>>>,
}

impl SharedInformerFactory {
    /// A factory whose informers use `client`.
    pub fn new(client: Client) -> Self {
        SharedInformerFactory {
            client,
            informers: Mutex::default(),
        }
    }

    /// The informer of `K`, started on first use.
    pub fn informer<K>(&self) -> Arc<Informer<K>>
    where
        K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    {
        let mut map = self.informers.lock().unwrap_or_else(|e| e.into_inner());
        let entry = map.entry(TypeId::of::<K>()).or_insert_with(|| {
            Informer::<K>::start(self.client.clone()) as Arc<dyn Any + Send + Sync>
        });
        entry
            .clone()
            .downcast::<Informer<K>>()
            .unwrap_or_else(|_| unreachable!("keyed by the type"))
    }

    /// How many resource types are watched.
    pub fn len(&self) -> usize {
        self.informers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }

    /// Whether nothing is watched yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
