//! The watch cache: every resource's current objects and recent changes in memory, fed by
//! one store watch over the whole key space, so LIST and WATCH are served without the
//! store and each change is decoded and encoded once, however many clients see it.
//!
//! The cache is consistent at one revision for all resources at once (the store watch
//! delivers every change in revision order), so a consistent read only has to wait
//! until the cache has caught up with the store's current revision.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::ops::Bound;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use rkube_api::meta::ObjectMeta;
use rkube_api::strategy::Strategy;
use rkube_api::{ApiError, Registry};
use rkube_store::{EventType, KeySpan, KeyValue, RangeRequest, Store, StoreError, WatchResponse};
use serde_json::{Map, Value};
use tokio::sync::{broadcast, watch};

use crate::rest::Selectors;
use crate::storage;

/// Changes kept per resource for watchers that start behind the live stream.
const HISTORY: usize = 10_000;
/// Bytes those changes may hold per resource (objects and their encoded event lines):
/// a burst of large writes shortens the history instead of growing memory; a watcher
/// from before it gets 410 and re-lists, as upstream's.
const HISTORY_BYTES: u64 = 64 << 20;
/// Items a receiver may fall behind the live stream before it must re-watch.
const CHANNEL: usize = 16_384;
/// How long a read waits for the cache to reach the revision it needs (upstream: 3 s).
const WAIT: Duration = Duration::from_secs(3);
/// Keys read per page while loading.
const LOAD_PAGE: usize = 10_000;

/// One object as the cache keeps it: the stored bytes plus what selectors look at.
pub struct Entry {
    pub key: Bytes,
    /// The stored form (see `storage::encode`), without resourceVersion.
    pub value: Bytes,
    /// The object's resourceVersion (the key's mod revision).
    pub revision: i64,
    labels: Option<Map<String, Value>>,
    /// `metadata.name`, `metadata.namespace`, then the kind's field labels, in order.
    fields: Box<[Option<Box<str>>]>,
    field_labels: &'static [&'static str],
}

const META_FIELDS: [&str; 2] = ["metadata.name", "metadata.namespace"];

impl Entry {
    /// Extracts labels and selectable fields from a stored object.
    pub fn new(strategy: &'static dyn Strategy, kv: &KeyValue) -> Option<Entry> {
        let obj = crate::selectable::parse(&kv.value)?;
        Some(Self::from_object(strategy, kv, &obj))
    }

    fn from_object(strategy: &'static dyn Strategy, kv: &KeyValue, obj: &Value) -> Entry {
        let field_labels = strategy.field_labels();
        let fields = [obj.name().to_string(), obj.namespace().to_string()]
            .into_iter()
            .map(Some)
            .chain(field_labels.iter().map(|f| strategy.field(obj, f)))
            .map(|v| v.map(String::into_boxed_str))
            .collect();
        Entry {
            key: kv.key.clone(),
            value: kv.value.clone(),
            revision: kv.mod_revision,
            labels: obj.labels().filter(|l| !l.is_empty()).cloned(),
            fields,
            field_labels,
        }
    }

    /// The value of a field label, as field selectors see it.
    pub fn field(&self, label: &str) -> Option<String> {
        let i = META_FIELDS
            .iter()
            .chain(self.field_labels)
            .position(|f| *f == label)?;
        self.fields.get(i)?.as_deref().map(str::to_string)
    }

    pub fn matches(&self, sel: &Selectors) -> bool {
        sel.label.matches(self.labels.as_ref()) && sel.field.matches(|f| self.field(f))
    }

    /// The object as a client sees it, with resourceVersion `revision`.
    pub fn decode_at(&self, revision: i64) -> Result<Value, ApiError> {
        let mut v: Value = serde_json::from_slice(&self.value).map_err(|e| {
            ApiError::internal(format!(
                "object {} in storage does not decode: {e}",
                String::from_utf8_lossy(&self.key)
            ))
        })?;
        v.set_meta("resourceVersion", revision.to_string());
        Ok(v)
    }

    /// Appends the client JSON of the object with resourceVersion `revision`.
    pub fn write_json(&self, out: &mut Vec<u8>, revision: i64) -> Result<(), ApiError> {
        storage::write_client_json(out, &self.value, revision)
    }
}

/// One change of one resource.
pub struct Change {
    pub revision: i64,
    pub key: Bytes,
    /// The object after a put.
    pub object: Option<Arc<Entry>>,
    /// The object before the change.
    pub previous: Option<Arc<Entry>>,
    pub deleted: bool,
    /// What this change costs in memory (its object and, once encoded, event lines).
    pub cost: u64,
    /// The resource's bytes of changes sent to watchers up to and including this one:
    /// a watcher's backlog is the resource's total less the offset it has reached.
    pub offset: u64,
    /// Encoded event lines (ADDED, MODIFIED, DELETED) in the plain object form.
    lines: [OnceLock<Bytes>; 3],
}

impl Change {
    /// Builds a change from a store event, with `previous` from the caller when it has it.
    pub fn from_event(
        strategy: &'static dyn Strategy,
        ev: &rkube_store::Event,
        previous: Option<Arc<Entry>>,
    ) -> Option<Change> {
        let deleted = ev.kind == EventType::Delete;
        let object = if deleted {
            None
        } else {
            Some(Arc::new(Entry::new(strategy, &ev.kv)?))
        };
        let previous = previous.or_else(|| {
            let kv = ev.prev_kv.as_ref()?;
            Some(Arc::new(Entry::new(strategy, kv)?))
        });
        Some(Change {
            revision: ev.kv.mod_revision,
            key: ev.kv.key.clone(),
            cost: change_cost(&ev.kv.key, object.as_deref()),
            object,
            previous,
            deleted,
            offset: 0,
            lines: Default::default(),
        })
    }

    /// The event line for `index` (0 ADDED, 1 MODIFIED, 2 DELETED) in the plain object
    /// form, encoded by the first watcher that needs it.
    pub fn line(&self, index: usize, make: impl FnOnce() -> Bytes) -> Bytes {
        self.lines[index].get_or_init(make).clone()
    }
}

/// An object's bytes twice (stored, and one encoded event line) plus bookkeeping.
fn change_cost(key: &[u8], object: Option<&Entry>) -> u64 {
    (key.len() + 2 * object.map_or(0, |o| o.value.len()) + 256) as u64
}

/// What a watcher receives.
#[derive(Clone)]
pub enum Item {
    Change(Arc<Change>),
    /// Nothing changed up to this revision.
    Progress(i64),
}

/// A subscription: the backlog after the requested revision, then live items.
pub struct Subscription {
    pub backlog: VecDeque<Arc<Change>>,
    pub rx: broadcast::Receiver<Item>,
    /// The resource's running total of change bytes sent (see [`Change::offset`]).
    pub sent: Arc<AtomicU64>,
    /// That total when the subscription began: the broadcast holds for this watcher
    /// only what was sent after it.
    pub subscribed_at: u64,
}

/// A list served from the cache.
pub struct Listed {
    pub entries: Vec<Arc<Entry>>,
    /// The revision the list is consistent at.
    pub revision: i64,
    /// Where the next page starts, when the list was cut at its limit.
    pub next: Option<Vec<u8>>,
    /// Objects after this page (only counted without selectors).
    pub remaining: Option<i64>,
}

/// How fresh a read must be.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Freshness {
    /// resourceVersion "0": whatever the cache has.
    Any,
    /// At least this revision (the store's current one for a consistent read).
    NotOlderThan(i64),
}

struct ResourceState {
    objects: BTreeMap<Bytes, Arc<Entry>>,
    history: VecDeque<Arc<Change>>,
    /// The cost of the changes in `history`.
    history_bytes: u64,
    /// Changes after this revision are all in `history` or still to come.
    complete_after: i64,
    /// The revision of the last change applied here; it can be ahead of the cache's
    /// revision while a batch of changes is being applied.
    last_change: i64,
    /// Created with the first watcher, so idle resources cost no channel buffer.
    tx: Option<broadcast::Sender<Item>>,
}

struct ResourceCache {
    strategy: &'static dyn Strategy,
    state: RwLock<ResourceState>,
    /// Bytes of changes sent to this resource's watchers so far.
    sent: Arc<AtomicU64>,
}

impl ResourceCache {
    fn read(&self) -> RwLockReadGuard<'_, ResourceState> {
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }
    fn write(&self) -> RwLockWriteGuard<'_, ResourceState> {
        self.state.write().unwrap_or_else(|e| e.into_inner())
    }
}

/// The watch cache of all resources.
pub struct WatchCache {
    store: Arc<dyn Store>,
    /// By storage prefix (`pods`, `apps/deployments`, ...).
    resources: HashMap<&'static str, Arc<ResourceCache>>,
    /// The revision every resource's cache is consistent at.
    revision: watch::Sender<i64>,
    /// False while (re)loading: reads go to the store.
    ready: AtomicBool,
}

impl WatchCache {
    pub fn new(store: Arc<dyn Store>, registry: &Registry) -> Arc<WatchCache> {
        let mut resources = HashMap::new();
        // The stored version's strategy extracts the fields of a prefix's objects.
        let mut infos: Vec<_> = registry.all().iter().collect();
        infos.sort_by_key(|i| i.conversion.is_some());
        for info in infos {
            resources.entry(info.storage_prefix).or_insert_with(|| {
                Arc::new(ResourceCache {
                    strategy: info.strategy,
                    state: RwLock::new(ResourceState {
                        objects: BTreeMap::new(),
                        history: VecDeque::new(),
                        history_bytes: 0,
                        complete_after: 0,
                        last_change: 0,
                        tx: None,
                    }),
                    sent: Arc::new(AtomicU64::new(0)),
                })
            });
        }
        Arc::new(WatchCache {
            store,
            resources,
            revision: watch::channel(0).0,
            ready: AtomicBool::new(false),
        })
    }

    /// Loads every resource and starts following the store; returns once the cache
    /// can serve.
    pub async fn start(self: &Arc<Self>) -> Result<tokio::task::JoinHandle<()>, StoreError> {
        let rev = self.load().await?;
        let stream = self.store.watch(KeySpan::prefix(b""), rev).await?;
        let me = self.clone();
        Ok(tokio::spawn(async move { me.follow(stream).await }))
    }

    /// The revision the cache is consistent at.
    pub fn revision(&self) -> i64 {
        *self.revision.borrow()
    }

    /// The revision a resource's objects are at, under its lock: every change up to it
    /// is applied and none after it.
    fn snapshot_revision(&self, st: &ResourceState) -> i64 {
        self.revision().max(st.last_change)
    }

    /// Reads every key at one revision into the resource caches; returns the revision.
    async fn load(&self) -> Result<i64, StoreError> {
        self.ready.store(false, Ordering::SeqCst);
        let mut loaded: HashMap<&'static str, BTreeMap<Bytes, Arc<Entry>>> = HashMap::new();
        let mut revision = 0;
        let mut start: Option<Vec<u8>> = None;
        loop {
            let mut req = RangeRequest::prefix(b"/registry/").limit(LOAD_PAGE);
            if let Some(s) = &start {
                req = req.start_at(s);
            }
            if revision > 0 {
                req = req.at(revision);
            }
            let resp = self.store.range(req).await?;
            revision = resp.revision;
            for kv in &resp.kvs {
                let Some((prefix, rc)) = self.resource_with_prefix(&kv.key) else {
                    continue;
                };
                if let Some(e) = Entry::new(rc.strategy, kv) {
                    loaded
                        .entry(prefix)
                        .or_default()
                        .insert(kv.key.clone(), Arc::new(e));
                }
            }
            match (resp.more, resp.kvs.last()) {
                (true, Some(last)) => {
                    let mut next = last.key.to_vec();
                    next.push(0);
                    start = Some(next);
                }
                _ => break,
            }
        }
        for (prefix, rc) in &self.resources {
            let mut st = rc.write();
            st.objects = loaded.remove(prefix).unwrap_or_default();
            st.history.clear();
            st.history_bytes = 0;
            st.complete_after = revision;
            st.last_change = revision;
            // Watchers of the old state end; clients watch again.
            st.tx = None;
        }
        self.revision.send_replace(revision);
        self.ready.store(true, Ordering::SeqCst);
        Ok(revision)
    }

    /// The cache a key belongs to, with its storage prefix.
    fn resource_with_prefix(&self, key: &[u8]) -> Option<(&'static str, &Arc<ResourceCache>)> {
        let rest = std::str::from_utf8(key.strip_prefix(b"/registry/")?).ok()?;
        rest.match_indices('/').find_map(|(i, _)| {
            self.resources
                .get_key_value(&rest[..i])
                .map(|(k, v)| (*k, v))
        })
    }

    /// Applies the store's changes as they come; reloads when the watch fails.
    async fn follow(self: Arc<Self>, mut stream: rkube_store::WatchStream) {
        loop {
            match stream.next().await {
                Some(Ok(WatchResponse::Events(events))) => {
                    let mut last = 0;
                    for ev in &events {
                        last = ev.kv.mod_revision;
                        if let Some((_, rc)) = self.resource_with_prefix(&ev.kv.key) {
                            apply(rc, ev);
                        }
                    }
                    if last > 0 {
                        self.revision.send_replace(last);
                    }
                }
                Some(Ok(WatchResponse::Progress(rev))) => {
                    self.revision.send_replace(rev.max(self.revision()));
                    for rc in self.resources.values() {
                        let st = rc.read();
                        if let Some(tx) = &st.tx {
                            let _ = tx.send(Item::Progress(rev));
                        }
                    }
                }
                other => {
                    match other {
                        Some(Err(e)) => tracing::warn!("watch cache: store watch failed: {e}"),
                        _ => tracing::warn!("watch cache: store watch ended"),
                    }
                    stream = self.restart().await;
                }
            }
        }
    }

    /// Reloads and watches again, retrying until the store answers.
    async fn restart(&self) -> rkube_store::WatchStream {
        loop {
            self.ready.store(false, Ordering::SeqCst);
            let attempt = async {
                let rev = self.load().await?;
                self.store.watch(KeySpan::prefix(b""), rev).await
            };
            match attempt.await {
                Ok(s) => return s,
                Err(e) => {
                    tracing::warn!("watch cache: reload failed: {e}; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    /// Waits until the cache is at `freshness`; false when it cannot serve in time.
    async fn wait(&self, freshness: Freshness) -> bool {
        if !self.ready.load(Ordering::SeqCst) {
            return false;
        }
        let Freshness::NotOlderThan(min) = freshness else {
            return true;
        };
        let mut rx = self.revision.subscribe();
        matches!(
            tokio::time::timeout(WAIT, rx.wait_for(|r| *r >= min)).await,
            Ok(Ok(_))
        ) && self.ready.load(Ordering::SeqCst)
    }

    /// The objects under `prefix` (a resource, or one namespace of it) that match `sel`,
    /// from `start`, at most `limit` (0: all). None when the cache cannot serve.
    pub async fn list(
        &self,
        resource: &str,
        prefix: &str,
        sel: &Selectors,
        freshness: Freshness,
        limit: usize,
    ) -> Option<Listed> {
        let rc = self.resources.get(resource)?;
        if !self.wait(freshness).await {
            return None;
        }
        let st = rc.read();
        let revision = self.snapshot_revision(&st);
        let start = Bytes::copy_from_slice(prefix.as_bytes());
        let mut entries = Vec::new();
        let mut iter = st
            .objects
            .range::<Bytes, _>((Bound::Included(&start), Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(prefix.as_bytes()))
            .map(|(_, e)| e);
        let mut next = None;
        for e in iter.by_ref() {
            if !e.matches(sel) {
                continue;
            }
            if limit > 0 && entries.len() == limit {
                let mut k = entries
                    .last()
                    .map(|l: &Arc<Entry>| l.key.to_vec())
                    .unwrap_or_default();
                k.push(0);
                next = Some((k, 1 + iter.count()));
                break;
            }
            entries.push(e.clone());
        }
        let remaining = match &next {
            Some((_, n)) if sel.is_empty() => Some(*n as i64),
            _ => None,
        };
        Some(Listed {
            entries,
            revision,
            next: next.map(|(k, _)| k),
            remaining,
        })
    }

    /// Subscribes to a resource's changes after `after`; with `initial`, first the
    /// objects under that prefix matching the selectors (consistent at `freshness`),
    /// returned with the revision they are at. None when the cache cannot serve.
    pub async fn watch(
        &self,
        resource: &str,
        after: i64,
        initial: Option<(&str, &Selectors, Freshness)>,
    ) -> Option<(Subscription, Vec<Arc<Entry>>, i64)> {
        let rc = self.resources.get(resource)?;
        let freshness = match initial {
            Some((_, _, f)) => f,
            None => Freshness::NotOlderThan(after),
        };
        if !self.wait(freshness).await {
            return None;
        }
        let mut st = rc.write();
        let (objects, after) = match initial {
            Some((prefix, sel, _)) => {
                let start = Bytes::copy_from_slice(prefix.as_bytes());
                let objects = st
                    .objects
                    .range::<Bytes, _>((Bound::Included(&start), Bound::Unbounded))
                    .take_while(|(k, _)| k.starts_with(prefix.as_bytes()))
                    .map(|(_, e)| e)
                    .filter(|e| e.matches(sel))
                    .cloned()
                    .collect();
                (objects, self.snapshot_revision(&st))
            }
            None => (Vec::new(), after),
        };
        if after < st.complete_after {
            return None;
        }
        let backlog = st
            .history
            .iter()
            .filter(|c| c.revision > after)
            .cloned()
            .collect();
        let rx = st
            .tx
            .get_or_insert_with(|| broadcast::channel(CHANNEL).0)
            .subscribe();
        Some((
            Subscription {
                backlog,
                rx,
                sent: rc.sent.clone(),
                subscribed_at: rc.sent.load(Ordering::Relaxed),
            },
            objects,
            after,
        ))
    }
}

/// Applies one store event to its resource's cache and tells its watchers.
fn apply(rc: &ResourceCache, ev: &rkube_store::Event) {
    // Decoding happens before the lock; the previous entry comes from the cache.
    let object = if ev.kind == EventType::Delete {
        None
    } else {
        match Entry::new(rc.strategy, &ev.kv) {
            Some(e) => Some(Arc::new(e)),
            None => {
                tracing::warn!(
                    "watch cache: {} does not decode; skipped",
                    String::from_utf8_lossy(&ev.kv.key)
                );
                return;
            }
        }
    };
    let mut st = rc.write();
    st.last_change = ev.kv.mod_revision;
    let previous = match &object {
        Some(o) => st.objects.insert(ev.kv.key.clone(), o.clone()),
        None => st.objects.remove(&ev.kv.key),
    };
    let cost = change_cost(&ev.kv.key, object.as_deref());
    let offset = rc.sent.fetch_add(cost, Ordering::Relaxed) + cost;
    let change = Arc::new(Change {
        revision: ev.kv.mod_revision,
        key: ev.kv.key.clone(),
        object,
        previous,
        deleted: ev.kind == EventType::Delete,
        cost,
        offset,
        lines: Default::default(),
    });
    st.history.push_back(change.clone());
    st.history_bytes += cost;
    while st.history.len() > HISTORY || st.history_bytes > HISTORY_BYTES {
        let Some(old) = st.history.pop_front() else {
            break;
        };
        st.history_bytes -= old.cost;
        st.complete_after = old.revision;
    }
    if let Some(tx) = &st.tx {
        if tx.receiver_count() == 0 {
            st.tx = None;
        } else {
            let _ = tx.send(Item::Change(change));
        }
    }
}

#[cfg(test)]
#[path = "cache_tests.rs"]
mod tests;
