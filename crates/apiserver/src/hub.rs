//! Watch fan-out: one store watch per resource, shared by all of that resource's
//! watchers. Each change is decoded once and each event line encoded once (per event
//! type), however many watchers receive it. Recent events are kept so a watcher
//! starting from a slightly older resourceVersion is served from memory; older ones
//! fall back to their own store watch.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, OnceLock};

use bytes::Bytes;
use futures::StreamExt;
use rkube_store::{EventType, KeySpan, Store, WatchResponse};
use serde_json::Value;
use tokio::sync::broadcast;

use crate::storage;

/// Events kept per resource for watchers that start behind the live stream.
const HISTORY: usize = 10_000;
/// Events a receiver may fall behind the live stream before it must re-watch.
const CHANNEL: usize = 16_384;

/// One change, decoded once.
pub struct HubEvent {
    pub revision: i64,
    pub key: Bytes,
    /// The object after a put.
    pub object: Option<Value>,
    /// The object before the change (with the deletion's revision for a delete).
    pub previous: Option<Value>,
    pub deleted: bool,
    /// Encoded `{"type":..,"object":..}` lines for ADDED, MODIFIED, DELETED.
    lines: [OnceLock<Bytes>; 3],
}

impl HubEvent {
    /// The event line for `index` (0 ADDED, 1 MODIFIED, 2 DELETED) in the plain object
    /// form, encoded by the first watcher that needs it.
    pub fn line(&self, index: usize, make: impl FnOnce() -> Bytes) -> Bytes {
        self.lines[index].get_or_init(make).clone()
    }
}

/// What a subscriber receives.
#[derive(Clone)]
pub enum HubItem {
    Event(Arc<HubEvent>),
    /// Nothing changed up to this revision.
    Progress(i64),
}

struct Inner {
    history: VecDeque<Arc<HubEvent>>,
    /// Events after this revision are all in `history` or still to come.
    complete_after: i64,
    tx: broadcast::Sender<HubItem>,
    alive: bool,
}

struct Hub {
    inner: Mutex<Inner>,
}

/// The hubs of all resources, created on first watch.
#[derive(Default)]
pub struct Hubs {
    hubs: Mutex<HashMap<String, Arc<Hub>>>,
}

/// A subscription: the backlog after the requested revision, then live items.
pub struct Subscription {
    pub backlog: VecDeque<Arc<HubEvent>>,
    pub rx: broadcast::Receiver<HubItem>,
}

impl Hubs {
    /// Subscribes to the changes under `prefix` after revision `after`; None when the
    /// hub cannot serve that revision (the caller watches the store itself).
    pub async fn subscribe(
        &self,
        store: &Arc<dyn Store>,
        prefix: &str,
        after: i64,
    ) -> Option<Subscription> {
        let hub = self.hub(store, prefix).await?;
        let inner = hub.inner.lock().unwrap_or_else(|e| e.into_inner());
        if !inner.alive || after < inner.complete_after {
            return None;
        }
        let backlog = inner
            .history
            .iter()
            .filter(|e| e.revision > after)
            .cloned()
            .collect();
        Some(Subscription {
            backlog,
            rx: inner.tx.subscribe(),
        })
    }

    async fn hub(&self, store: &Arc<dyn Store>, prefix: &str) -> Option<Arc<Hub>> {
        if let Some(h) = self
            .hubs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(prefix)
        {
            if h.inner.lock().unwrap_or_else(|e| e.into_inner()).alive {
                return Some(h.clone());
            }
        }
        let start = store.current_revision().await.ok()?;
        let stream = store
            .watch(KeySpan::prefix(prefix.as_bytes()), start)
            .await
            .ok()?;
        let mut hubs = self.hubs.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(h) = hubs.get(prefix) {
            if h.inner.lock().unwrap_or_else(|e| e.into_inner()).alive {
                return Some(h.clone());
            }
        }
        let (tx, _) = broadcast::channel(CHANNEL);
        let hub = Arc::new(Hub {
            inner: Mutex::new(Inner {
                history: VecDeque::new(),
                complete_after: start,
                tx,
                alive: true,
            }),
        });
        hubs.insert(prefix.to_string(), hub.clone());
        tokio::spawn(run(hub.clone(), stream));
        Some(hub)
    }
}

async fn run(hub: Arc<Hub>, mut stream: rkube_store::WatchStream) {
    while let Some(item) = stream.next().await {
        let items: Vec<HubItem> = match item {
            Ok(WatchResponse::Progress(rev)) => vec![HubItem::Progress(rev)],
            Ok(WatchResponse::Events(events)) => events
                .into_iter()
                .filter_map(decode_event)
                .map(|e| HubItem::Event(Arc::new(e)))
                .collect(),
            Err(e) => {
                tracing::warn!("watch fan-out stopped: {e}");
                break;
            }
        };
        let mut inner = hub.inner.lock().unwrap_or_else(|e| e.into_inner());
        for it in items {
            if let HubItem::Event(e) = &it {
                inner.history.push_back(e.clone());
                if inner.history.len() > HISTORY {
                    if let Some(old) = inner.history.pop_front() {
                        inner.complete_after = old.revision;
                    }
                }
            }
            let _ = inner.tx.send(it);
        }
    }
    // Receivers see the channel close and end their watches; clients re-watch.
    let mut inner = hub.inner.lock().unwrap_or_else(|e| e.into_inner());
    inner.alive = false;
    let (tx, _) = broadcast::channel(1);
    inner.tx = tx;
}

/// Decodes one store change.
pub fn decode_event(ev: rkube_store::Event) -> Option<HubEvent> {
    let previous = ev.prev_kv.as_ref().and_then(|kv| storage::decode(kv).ok());
    let deleted = ev.kind == EventType::Delete;
    let object = if deleted {
        None
    } else {
        Some(storage::decode(&ev.kv).ok()?)
    };
    let previous = match (deleted, previous) {
        (true, Some(mut p)) => {
            rkube_api::meta::ObjectMeta::set_meta(
                &mut p,
                "resourceVersion",
                ev.kv.mod_revision.to_string(),
            );
            Some(p)
        }
        (_, p) => p,
    };
    Some(HubEvent {
        revision: ev.kv.mod_revision,
        key: ev.kv.key,
        object,
        previous,
        deleted,
        lines: Default::default(),
    })
}
