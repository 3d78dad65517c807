//! The etcd backend: the [`Store`] trait mapped onto a real etcd v3 cluster. Conditional
//! writes are etcd transactions (compare revisions, else read the current value), TTLs are
//! etcd leases, and watches are etcd watches with progress requests.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use etcd_client::{
    BalancedChannelBuilder, Channel, Client, Compare, CompareOp, ConnectOptions, DeleteOptions,
    GetOptions, PutOptions, Txn, TxnOp, TxnOpResponse, WatchOptions, WatchRequestSender,
    WatchResponseStream,
};
use futures::stream;
use tokio::sync::mpsc::Sender;
use tonic::codegen::http::Uri;
use tonic::transport::channel::Change;
use tonic::transport::Endpoint;

use crate::error::lossy;
use crate::{
    Event, EventType, KeySpan, KeyValue, RangeRequest, RangeResponse, Result, Revision, Store,
    StoreError, WatchResponse, WatchStream,
};

/// A store on an etcd v3 cluster.
pub struct EtcdStore {
    client: Client,
    endpoints: Vec<String>,
    progress_interval: Duration,
    /// Leases handed out recently, by TTL in seconds: (id, granted at), reused for a while
    /// so that many short-lived keys (Events) do not each cost a lease.
    leases: Mutex<HashMap<i64, (i64, Instant)>>,
}

fn etcd_err(e: etcd_client::Error) -> StoreError {
    let msg = e.to_string();
    if msg.contains("required revision has been compacted") {
        return StoreError::Compacted {
            requested: 0,
            compacted: 0,
        };
    }
    if msg.contains("database space exceeded") {
        return StoreError::NoSpace { quota: 0, used: 0 };
    }
    if msg.contains("request is too large") {
        return StoreError::TooLarge {
            size: 0,
            limit: crate::MAX_WRITE_BYTES,
        };
    }
    if msg.contains("required revision is a future revision") {
        return StoreError::FutureRevision {
            requested: 0,
            current: 0,
        };
    }
    StoreError::Etcd(msg)
}

/// [`etcd_err`] for a request at `requested` (etcd's message does not name the revision).
fn etcd_err_at(e: etcd_client::Error, requested: Revision) -> StoreError {
    match etcd_err(e) {
        StoreError::Compacted { .. } => StoreError::Compacted {
            requested,
            compacted: 0,
        },
        StoreError::FutureRevision { .. } => StoreError::FutureRevision {
            requested,
            current: 0,
        },
        other => other,
    }
}

fn to_kv(kv: &etcd_client::KeyValue) -> KeyValue {
    KeyValue {
        key: Bytes::copy_from_slice(kv.key()),
        value: Bytes::copy_from_slice(kv.value()),
        create_revision: kv.create_revision(),
        mod_revision: kv.mod_revision(),
        version: kv.version(),
        lease: kv.lease(),
    }
}

/// etcd has no empty key: a span that starts at "" starts at "\0" instead.
fn start_key(span: &KeySpan) -> Vec<u8> {
    if span.start.is_empty() {
        b"\0".to_vec()
    } else {
        span.start.to_vec()
    }
}

fn header_rev(h: Option<&etcd_client::ResponseHeader>) -> Revision {
    h.map_or(0, |h| h.revision())
}

/// The first value a transaction's `or_else` read found.
fn txn_get(resp: &etcd_client::TxnResponse) -> Option<KeyValue> {
    resp.op_responses().iter().find_map(|r| match r {
        TxnOpResponse::Get(g) => g.kvs().first().map(to_kv),
        _ => None,
    })
}

/// The previous value a transaction's put or delete returned.
fn txn_prev(resp: &etcd_client::TxnResponse) -> Option<KeyValue> {
    resp.op_responses().iter().find_map(|r| match r {
        TxnOpResponse::Put(p) => p.prev_key().map(to_kv),
        TxnOpResponse::Delete(d) => d.prev_kvs().first().map(to_kv),
        _ => None,
    })
}

impl EtcdStore {
    /// Connects to the cluster and checks that it answers.
    pub async fn connect(endpoints: &[String]) -> Result<EtcdStore> {
        for e in endpoints {
            if e.starts_with("https://") {
                return Err(StoreError::Invalid(format!(
                    "{e}: TLS to etcd is not supported yet; use an http:// endpoint on a trusted network"
                )));
            }
        }
        let opts = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(5))
            .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5));
        let unreachable = |e: etcd_client::Error| {
            StoreError::Etcd(format!("cannot reach etcd at {}: {e}", endpoints.join(",")))
        };
        let mut client = Client::connect_with_balanced_channel(endpoints, Some(opts), WideWindow)
            .await
            .map_err(unreachable)?;
        tokio::time::timeout(Duration::from_secs(10), client.status())
            .await
            .map_err(|_| {
                StoreError::Etcd(format!(
                    "etcd at {} did not answer in 10s",
                    endpoints.join(",")
                ))
            })?
            .map_err(unreachable)?;
        Ok(EtcdStore {
            client,
            endpoints: endpoints.to_vec(),
            progress_interval: Duration::from_secs(5),
            leases: Mutex::new(HashMap::new()),
        })
    }

    /// A KV client that accepts answers of any size (a list of every pod can exceed gRPC's
    /// default 4 MiB), as the apiserver's etcd client does.
    fn kv(&self) -> etcd_client::KvClient {
        self.client
            .kv_client()
            .max_decoding_message_size(usize::MAX)
    }

    fn watcher(&self) -> etcd_client::WatchClient {
        self.client
            .watch_client()
            .max_decoding_message_size(usize::MAX)
    }

    /// Sets how often a quiet watch asks etcd for a progress notification.
    pub fn with_progress_interval(mut self, interval: Duration) -> Self {
        self.progress_interval = interval;
        self
    }

    /// The endpoints this store talks to.
    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    /// A lease that expires `ttl` from now (reused within a tenth of the TTL, up to a
    /// minute, as the apiserver's lease manager does).
    async fn lease(&self, ttl: Option<Duration>) -> Result<PutOptions> {
        let opts = PutOptions::new().with_prev_key();
        let Some(ttl) = ttl else { return Ok(opts) };
        let secs = (ttl.as_millis().div_ceil(1000) as i64).max(1);
        let reuse = Duration::from_secs((secs / 10).min(60) as u64);
        if !reuse.is_zero() {
            let cached = self.leases.lock().ok().and_then(|m| m.get(&secs).copied());
            if let Some((id, _)) = cached.filter(|(_, at)| at.elapsed() < reuse) {
                return Ok(opts.with_lease(id));
            }
        }
        let granted = self
            .client
            .lease_client()
            .grant(secs + reuse.as_secs() as i64, None)
            .await
            .map_err(etcd_err)?;
        if !reuse.is_zero() {
            if let Ok(mut m) = self.leases.lock() {
                m.insert(secs, (granted.id(), Instant::now()));
            }
        }
        Ok(opts.with_lease(granted.id()))
    }

    /// Checks that `after` can still be watched from (not behind the compaction point).
    async fn check_not_compacted(&self, span: &KeySpan, after: Revision) -> Result<()> {
        let opts = GetOptions::new().with_revision(after).with_count_only();
        match self.kv().get(start_key(span), Some(opts)).await {
            Ok(_) => Ok(()),
            Err(e) => match etcd_err(e) {
                StoreError::Compacted { .. } => {
                    let compacted = self.compacted_hint().await;
                    Err(StoreError::Compacted {
                        requested: after + 1,
                        compacted,
                    })
                }
                StoreError::FutureRevision { .. } => Ok(()),
                other => Err(other),
            },
        }
    }

    /// etcd does not report its compaction point directly; a watch from revision 1 does.
    async fn compacted_hint(&self) -> Revision {
        let Ok(mut s) = self
            .watcher()
            .watch(
                b"\0".to_vec(),
                Some(WatchOptions::new().with_start_revision(1)),
            )
            .await
        else {
            return 0;
        };
        for _ in 0..2 {
            match tokio::time::timeout(Duration::from_secs(2), s.message()).await {
                Ok(Ok(Some(r))) if r.compact_revision() != 0 => return r.compact_revision(),
                Ok(Ok(Some(_))) => continue,
                _ => break,
            }
        }
        0
    }
}

#[async_trait]
impl Store for EtcdStore {
    async fn range(&self, req: RangeRequest) -> Result<RangeResponse> {
        let mut opts = GetOptions::new();
        if !req.span.end.is_empty() {
            if req.span.end <= req.span.start && !req.span.unbounded() {
                return Ok(RangeResponse {
                    revision: self.current_revision().await?,
                    ..Default::default()
                });
            }
            opts = opts.with_range(req.span.end.to_vec());
        }
        if req.limit > 0 {
            opts = opts.with_limit(req.limit as i64);
        }
        if req.revision > 0 {
            opts = opts.with_revision(req.revision);
        }
        if req.count_only {
            opts = opts.with_count_only();
        }
        let resp = self
            .kv()
            .get(start_key(&req.span), Some(opts))
            .await
            .map_err(|e| etcd_err_at(e, req.revision))?;
        let current = header_rev(resp.header());
        Ok(RangeResponse {
            kvs: resp.kvs().iter().map(to_kv).collect(),
            more: resp.more(),
            count: resp.count(),
            revision: if req.revision > 0 {
                req.revision
            } else {
                current
            },
        })
    }

    async fn create(&self, key: &[u8], value: Bytes, ttl: Option<Duration>) -> Result<Revision> {
        crate::check_request_size(key, &value)?;
        let put = self.lease(ttl).await?;
        let txn = Txn::new()
            .when([Compare::create_revision(key.to_vec(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key.to_vec(), value.to_vec(), Some(put))])
            .or_else([TxnOp::get(key.to_vec(), None)]);
        let resp = self.kv().txn(txn).await.map_err(etcd_err)?;
        if resp.succeeded() {
            return Ok(header_rev(resp.header()));
        }
        match txn_get(&resp) {
            Some(current) => Err(StoreError::AlreadyExists { current }),
            None => Err(StoreError::Etcd(format!(
                "create of {} failed without a current value",
                lossy(key)
            ))),
        }
    }

    async fn update(
        &self,
        key: &[u8],
        value: Bytes,
        expected: Option<Revision>,
        ttl: Option<Duration>,
    ) -> Result<(Revision, KeyValue)> {
        crate::check_request_size(key, &value)?;
        let put = self.lease(ttl).await?;
        self.guarded(
            key,
            expected,
            TxnOp::put(key.to_vec(), value.to_vec(), Some(put)),
        )
        .await
    }

    async fn delete(&self, key: &[u8], expected: Option<Revision>) -> Result<(Revision, KeyValue)> {
        let op = TxnOp::delete(key.to_vec(), Some(DeleteOptions::new().with_prev_key()));
        self.guarded(key, expected, op).await
    }

    async fn watch(&self, span: KeySpan, after: Revision) -> Result<WatchStream> {
        if after < 0 {
            return Err(StoreError::Invalid(format!("negative revision {after}")));
        }
        if after > 0 {
            self.check_not_compacted(&span, after).await?;
        }
        let mut opts = WatchOptions::new().with_prev_key().with_progress_notify();
        if !span.end.is_empty() {
            opts = opts.with_range(span.end.to_vec());
        }
        if after > 0 {
            opts = opts.with_start_revision(after + 1);
        }
        let ws = self
            .watcher()
            .watch(start_key(&span), Some(opts))
            .await
            .map_err(etcd_err)?;
        let (sender, responses) = ws.split();
        let cursor = EtcdCursor {
            sender,
            responses,
            interval: self.progress_interval,
            last: Instant::now(),
            after,
            done: false,
        };
        Ok(Box::pin(stream::unfold(cursor, next)))
    }

    async fn compact(&self, revision: Revision) -> Result<()> {
        self.kv()
            .compact(revision, None)
            .await
            .map(|_| ())
            .map_err(|e| etcd_err_at(e, revision))
    }

    async fn current_revision(&self) -> Result<Revision> {
        let opts = GetOptions::new().with_count_only();
        let resp = self
            .kv()
            .get(b"\0".to_vec(), Some(opts))
            .await
            .map_err(etcd_err)?;
        Ok(header_rev(resp.header()))
    }

    async fn remaining_ttl(&self, kv: &KeyValue) -> Result<Option<Duration>> {
        if kv.lease == 0 {
            return Ok(None);
        }
        let resp = self
            .client
            .lease_client()
            .time_to_live(kv.lease, None)
            .await
            .map_err(etcd_err)?;
        Ok((resp.ttl() > 0).then(|| Duration::from_secs(resp.ttl() as u64)))
    }
}

impl EtcdStore {
    /// Runs `op` on `key` if it exists (with mod_revision `expected`, when given).
    async fn guarded(
        &self,
        key: &[u8],
        expected: Option<Revision>,
        op: TxnOp,
    ) -> Result<(Revision, KeyValue)> {
        let cmp = match expected {
            Some(rev) => Compare::mod_revision(key.to_vec(), CompareOp::Equal, rev),
            None => Compare::create_revision(key.to_vec(), CompareOp::Greater, 0),
        };
        let txn = Txn::new()
            .when([cmp])
            .and_then([op])
            .or_else([TxnOp::get(key.to_vec(), None)]);
        let resp = self.kv().txn(txn).await.map_err(etcd_err)?;
        if resp.succeeded() {
            let prev = txn_prev(&resp).ok_or_else(|| {
                StoreError::Etcd(format!(
                    "write to {} returned no previous value",
                    lossy(key)
                ))
            })?;
            return Ok((header_rev(resp.header()), prev));
        }
        match (txn_get(&resp), expected) {
            (None, _) => Err(StoreError::NotFound { key: lossy(key) }),
            (Some(current), Some(expected)) => Err(StoreError::Conflict { expected, current }),
            (Some(_), None) => Err(StoreError::Etcd(format!(
                "write to {} failed its guard",
                lossy(key)
            ))),
        }
    }
}

/// Makes the client's channel with the largest HTTP/2 connection window.
///
/// h2 closes a whole connection (`GOAWAY ENHANCE_YOUR_CALM "too_many_data_frames"`) once
/// the small DATA frames it holds unread cost more than half the connection window. Watch
/// events are small frames and every watch shares the client's connection, so one slow
/// watcher used to end every watch and request on it. With the window at its maximum, what
/// is held stays bounded by each stream's own window (hyper's 2 MiB), as gRPC intends.
struct WideWindow;

impl BalancedChannelBuilder for WideWindow {
    type Error = tonic::transport::Error;

    fn balanced_channel(
        self,
        buffer: usize,
    ) -> std::result::Result<(Channel, Sender<Change<Uri, Endpoint>>), Self::Error> {
        let (channel, inner) = tonic::transport::Channel::balance_channel(buffer);
        let (updates, mut rx) = tokio::sync::mpsc::channel::<Change<Uri, Endpoint>>(buffer);
        tokio::spawn(async move {
            while let Some(change) = rx.recv().await {
                let change = match change {
                    Change::Insert(uri, endpoint) => {
                        Change::Insert(uri, endpoint.initial_connection_window_size(MAX_WINDOW))
                    }
                    other => other,
                };
                if inner.send(change).await.is_err() {
                    break;
                }
            }
        });
        Ok((Channel::Tonic(channel), updates))
    }
}

/// HTTP/2's largest flow-control window (2^31 - 1).
const MAX_WINDOW: u32 = (1 << 31) - 1;

struct EtcdCursor {
    sender: WatchRequestSender,
    responses: WatchResponseStream,
    interval: Duration,
    last: Instant,
    after: Revision,
    done: bool,
}

async fn next(mut c: EtcdCursor) -> Option<(Result<WatchResponse>, EtcdCursor)> {
    if c.done {
        return None;
    }
    loop {
        let wait = c.interval.saturating_sub(c.last.elapsed());
        let msg = match tokio::time::timeout(wait, c.responses.message()).await {
            Err(_) => {
                c.last = Instant::now();
                if let Err(e) = c.sender.request_progress().await {
                    c.done = true;
                    return Some((Err(etcd_err(e)), c));
                }
                continue;
            }
            Ok(Err(e)) => {
                c.done = true;
                return Some((Err(etcd_err(e)), c));
            }
            Ok(Ok(None)) => return None,
            Ok(Ok(Some(msg))) => msg,
        };
        if msg.compact_revision() != 0 {
            c.done = true;
            let err = StoreError::Compacted {
                requested: c.after + 1,
                compacted: msg.compact_revision(),
            };
            return Some((Err(err), c));
        }
        if msg.canceled() {
            c.done = true;
            return Some((
                Err(StoreError::Etcd(format!(
                    "watch canceled: {}",
                    msg.cancel_reason()
                ))),
                c,
            ));
        }
        if msg.events().is_empty() {
            if msg.created() {
                continue;
            }
            c.last = Instant::now();
            return Some((Ok(WatchResponse::Progress(header_rev(msg.header()))), c));
        }
        let events = msg
            .events()
            .iter()
            .filter_map(|e| {
                let kind = match e.event_type() {
                    etcd_client::EventType::Put => EventType::Put,
                    etcd_client::EventType::Delete => EventType::Delete,
                };
                Some(Event {
                    kind,
                    kv: to_kv(e.kv()?),
                    prev_kv: e.prev_kv().map(to_kv),
                })
            })
            .collect();
        c.last = Instant::now();
        return Some((Ok(WatchResponse::Events(events)), c));
    }
}
