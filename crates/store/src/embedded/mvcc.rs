//! The in-memory multi-version index: every retained version of every key, and which key
//! each revision changed. Writes are planned against the newest state and served to readers
//! only once durable (`visible`), so a read never sees what a crash could take back.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::ops::Bound;

use bytes::Bytes;

use super::record::Record;
use crate::{
    error::lossy, Event, EventType, KeySpan, KeyValue, RangeRequest, RangeResponse, Result,
    Revision, StoreError,
};

/// One write to a key; `value == None` is a deletion (tombstone).
#[derive(Clone, Debug)]
pub(crate) struct Version {
    pub mod_rev: Revision,
    pub create_rev: Revision,
    pub version: i64,
    pub value: Option<Bytes>,
    /// Expiry in Unix milliseconds (0: none); doubles as the key's lease id.
    pub expires: u64,
}

impl Version {
    /// When this version expires, if it is a live value with a TTL.
    fn expiry(&self) -> Option<u64> {
        (self.expires != 0 && self.value.is_some()).then_some(self.expires)
    }
}

/// A requested change, checked by [`Mvcc::plan`].
#[derive(Debug)]
pub(crate) enum Op {
    Create {
        key: Bytes,
        value: Bytes,
        expires: u64,
    },
    Update {
        key: Bytes,
        value: Bytes,
        expected: Option<Revision>,
        expires: u64,
    },
    Delete {
        key: Bytes,
        expected: Option<Revision>,
    },
    Compact {
        rev: Revision,
    },
}

/// What a successful [`Op`] answers.
#[derive(Debug)]
pub(crate) enum Outcome {
    Created(Revision),
    Updated(Revision, KeyValue),
    Deleted(Revision, KeyValue),
    Compacted,
}

/// The whole state of an embedded store.
#[derive(Clone, Default)]
pub(crate) struct Mvcc {
    pub keys: BTreeMap<Bytes, Vec<Version>>,
    /// Last applied revision (may not be durable yet).
    pub rev: Revision,
    /// Last durable revision: reads and watches are served here.
    pub visible: Revision,
    /// History before this revision is gone.
    pub compacted: Revision,
    /// The key each revision in `log_base..=rev` changed.
    log: VecDeque<Option<Bytes>>,
    log_base: Revision,
    /// Current versions that expire: (expiry ms, key).
    expiries: BTreeSet<(u64, Bytes)>,
    /// Bytes of the keys and values of the current versions: what the space quota counts.
    pub live_bytes: u64,
    /// Bytes of superseded versions still retained: what the history budget counts.
    pub history_bytes: u64,
    /// Aligned with `log`: the history bytes each revision made by superseding a version
    /// (compacting at a revision frees those of every revision up to it).
    superseded: VecDeque<u64>,
    /// Writes that would take `live_bytes` past this fail with NoSpace (0: no quota).
    pub quota: u64,
}

/// Memory a retained version costs besides its key and value (its record, map entry).
const VERSION_OVERHEAD: u64 = 64;

/// What a version of `key` costs in memory.
fn cost(key: &[u8], v: &Version) -> u64 {
    (key.len() + v.value.as_ref().map_or(0, Bytes::len)) as u64 + VERSION_OVERHEAD
}

fn to_kv(key: &Bytes, v: &Version) -> Option<KeyValue> {
    v.value.as_ref().map(|value| KeyValue {
        key: key.clone(),
        value: value.clone(),
        create_revision: v.create_rev,
        mod_revision: v.mod_rev,
        version: v.version,
        lease: v.expires as i64,
    })
}

/// The version of a key visible at `rev` (a tombstone counts as absent).
fn version_at(versions: &[Version], rev: Revision) -> Option<&Version> {
    let n = versions.partition_point(|v| v.mod_rev <= rev);
    versions[..n].last().filter(|v| v.value.is_some())
}

impl Mvcc {
    /// An empty store. As in etcd, its revision is 1 (no write has revision 1), so that
    /// revision 0 can mean "now".
    pub fn new() -> Self {
        Mvcc {
            rev: 1,
            visible: 1,
            log: VecDeque::from(vec![None]),
            superseded: VecDeque::from(vec![0]),
            log_base: 1,
            ..Default::default()
        }
    }

    /// A state loaded from a checkpoint: its keys with all retained versions.
    pub fn from_parts(
        keys: BTreeMap<Bytes, Vec<Version>>,
        rev: Revision,
        compacted: Revision,
    ) -> Self {
        let mut m = Mvcc {
            keys,
            rev,
            visible: rev,
            compacted,
            log_base: compacted + 1,
            ..Default::default()
        };
        m.log = VecDeque::from(vec![None; (rev - compacted).max(0) as usize]);
        m.superseded = VecDeque::from(vec![0; m.log.len()]);
        for (key, versions) in &m.keys {
            for v in versions.iter().filter(|v| v.mod_rev > compacted) {
                m.log[(v.mod_rev - m.log_base) as usize] = Some(key.clone());
            }
            for (i, v) in versions.iter().enumerate() {
                match versions.get(i + 1) {
                    Some(next) => {
                        m.history_bytes += cost(key, v);
                        if let Some(slot) = usize::try_from(next.mod_rev - m.log_base)
                            .ok()
                            .and_then(|i| m.superseded.get_mut(i))
                        {
                            *slot += cost(key, v);
                        }
                    }
                    None if v.value.is_some() => m.live_bytes += cost(key, v),
                    None => {}
                }
            }
            if let Some(expires) = versions.last().and_then(Version::expiry) {
                m.expiries.insert((expires, key.clone()));
            }
        }
        m
    }

    fn latest(&self, key: &[u8]) -> Option<KeyValue> {
        let (k, versions) = self.keys.get_key_value(key)?;
        versions.last().and_then(|v| to_kv(k, v))
    }

    /// Checks `op` against the newest state and returns the record that performs it.
    pub fn plan(&self, op: &Op) -> Result<(Record, Outcome)> {
        let rev = self.rev + 1;
        match op {
            Op::Create {
                key,
                value,
                expires,
            } => {
                if let Some(current) = self.latest(key) {
                    return Err(StoreError::AlreadyExists { current });
                }
                self.check_quota(key.len() + value.len(), 0)?;
                let rec = Record::Put {
                    rev,
                    key: key.clone(),
                    value: value.clone(),
                    create_rev: rev,
                    version: 1,
                    expires: *expires,
                };
                Ok((rec, Outcome::Created(rev)))
            }
            Op::Update {
                key,
                value,
                expected,
                expires,
            } => {
                let current = self.existing(key, *expected)?;
                self.check_quota(key.len() + value.len(), key.len() + current.value.len())?;
                let rec = Record::Put {
                    rev,
                    key: key.clone(),
                    value: value.clone(),
                    create_rev: current.create_revision,
                    version: current.version + 1,
                    expires: *expires,
                };
                Ok((rec, Outcome::Updated(rev, current)))
            }
            Op::Delete { key, expected } => {
                let current = self.existing(key, *expected)?;
                Ok((
                    Record::Delete {
                        rev,
                        key: key.clone(),
                    },
                    Outcome::Deleted(rev, current),
                ))
            }
            Op::Compact { rev } => {
                if *rev > self.visible {
                    return Err(StoreError::FutureRevision {
                        requested: *rev,
                        current: self.visible,
                    });
                }
                if *rev <= self.compacted {
                    return Err(StoreError::Compacted {
                        requested: *rev,
                        compacted: self.compacted,
                    });
                }
                Ok((Record::Compact { rev: *rev }, Outcome::Compacted))
            }
        }
    }

    /// Refuses a write that grows the live data past the quota (shrinking is allowed).
    fn check_quota(&self, new: usize, old: usize) -> Result<()> {
        if self.quota > 0 && new > old && self.live_bytes + (new - old) as u64 > self.quota {
            return Err(StoreError::NoSpace {
                quota: self.quota,
                used: self.live_bytes,
            });
        }
        Ok(())
    }

    /// The oldest revision whose compaction brings retained history down to `target`
    /// bytes (at most the visible revision); None when it is already there.
    pub fn compaction_for(&self, target: u64) -> Option<Revision> {
        if self.history_bytes <= target || self.visible <= self.compacted {
            return None;
        }
        let need = self.history_bytes - target;
        let mut freed = 0;
        for (i, bytes) in self.superseded.iter().enumerate() {
            let rev = self.log_base + i as Revision;
            if rev > self.visible {
                break;
            }
            freed += bytes;
            if freed >= need && rev > self.compacted {
                return Some(rev);
            }
        }
        Some(self.visible)
    }

    fn existing(&self, key: &Bytes, expected: Option<Revision>) -> Result<KeyValue> {
        let current = self
            .latest(key)
            .ok_or_else(|| StoreError::NotFound { key: lossy(key) })?;
        match expected {
            Some(expected) if expected != current.mod_revision => {
                Err(StoreError::Conflict { expected, current })
            }
            _ => Ok(current),
        }
    }

    /// Applies a record (a live write or one replayed from the log).
    pub fn apply(&mut self, rec: &Record) {
        match rec {
            Record::Put {
                rev,
                key,
                value,
                create_rev,
                version,
                expires,
            } => {
                self.push(
                    *rev,
                    key,
                    Version {
                        mod_rev: *rev,
                        create_rev: *create_rev,
                        version: *version,
                        value: Some(value.clone()),
                        expires: *expires,
                    },
                );
            }
            Record::Delete { rev, key } => {
                let v = Version {
                    mod_rev: *rev,
                    create_rev: 0,
                    version: 0,
                    value: None,
                    expires: 0,
                };
                self.push(*rev, key, v);
            }
            Record::Compact { rev } => self.compact(*rev),
        }
    }

    fn push(&mut self, rev: Revision, key: &Bytes, v: Version) {
        debug_assert_eq!(rev, self.rev + 1, "revisions are applied in order");
        let versions = self.keys.entry(key.clone()).or_default();
        if let Some(expires) = versions.last().and_then(Version::expiry) {
            self.expiries.remove(&(expires, key.clone()));
        }
        if let Some(expires) = v.expiry() {
            self.expiries.insert((expires, key.clone()));
        }
        let mut moved = 0;
        if let Some(last) = versions.last() {
            moved = cost(key, last);
            if last.value.is_some() {
                self.live_bytes = self.live_bytes.saturating_sub(moved);
            }
        }
        if v.value.is_some() {
            self.live_bytes += cost(key, &v);
        }
        self.history_bytes += moved;
        versions.push(v);
        self.rev = rev;
        self.log.push_back(Some(key.clone()));
        self.superseded.push_back(moved);
    }

    /// Takes back every revision after `to` (their write could not be made durable).
    pub fn rollback(&mut self, to: Revision) {
        while self.rev > to {
            let key = self.log.pop_back().flatten();
            let moved = self.superseded.pop_back().unwrap_or(0);
            self.history_bytes = self.history_bytes.saturating_sub(moved);
            if let Some(key) = key {
                if let Some(versions) = self.keys.get_mut(&key) {
                    if let Some(undone) = versions.pop() {
                        if undone.value.is_some() {
                            self.live_bytes = self.live_bytes.saturating_sub(cost(&key, &undone));
                        }
                        if let Some(expires) = undone.expiry() {
                            self.expiries.remove(&(expires, key.clone()));
                        }
                    }
                    match versions.last() {
                        None => {
                            self.keys.remove(&key);
                        }
                        Some(v) => {
                            if v.value.is_some() {
                                self.live_bytes += cost(&key, v);
                            }
                            if let Some(expires) = v.expiry() {
                                self.expiries.insert((expires, key.clone()));
                            }
                        }
                    }
                }
            }
            self.rev -= 1;
        }
    }

    /// Drops every version that no read at or after `rev` can see.
    fn compact(&mut self, rev: Revision) {
        if rev <= self.compacted {
            return;
        }
        let mut freed = 0;
        let mut later = Vec::new();
        self.keys.retain(|key, versions| {
            let n = versions.partition_point(|v| v.mod_rev <= rev);
            if n > 0 {
                let keep_from = if versions[n - 1].value.is_none() {
                    n
                } else {
                    n - 1
                };
                // Versions with a successor were counted as history, at the revision of
                // the successor (past `rev` only for a tombstone dropped here).
                for i in 0..keep_from.min(versions.len() - 1) {
                    let c = cost(key, &versions[i]);
                    freed += c;
                    let successor = versions[i + 1].mod_rev;
                    if successor > rev {
                        later.push((successor, c));
                    }
                }
                versions.drain(..keep_from);
            }
            !versions.is_empty()
        });
        self.history_bytes = self.history_bytes.saturating_sub(freed);
        while self.log_base <= rev && !self.log.is_empty() {
            self.log.pop_front();
            self.superseded.pop_front();
            self.log_base += 1;
        }
        self.log_base = self.log_base.max(rev + 1);
        for (successor, c) in later {
            if let Some(slot) = usize::try_from(successor - self.log_base)
                .ok()
                .and_then(|i| self.superseded.get_mut(i))
            {
                *slot = slot.saturating_sub(c);
            }
        }
        self.compacted = rev;
    }

    /// Checks that `rev` (0: visible) can be read, and resolves it.
    pub fn readable(&self, rev: Revision) -> Result<Revision> {
        let rev = if rev <= 0 { self.visible } else { rev };
        if rev > self.visible {
            return Err(StoreError::FutureRevision {
                requested: rev,
                current: self.visible,
            });
        }
        if rev < self.compacted {
            return Err(StoreError::Compacted {
                requested: rev,
                compacted: self.compacted,
            });
        }
        Ok(rev)
    }

    /// Serves a range read at the visible revision or a past one.
    pub fn range(&self, req: &RangeRequest) -> Result<RangeResponse> {
        let rev = self.readable(req.revision)?;
        let mut resp = RangeResponse {
            revision: rev,
            ..Default::default()
        };
        let span = &req.span;
        let upper = if span.end.is_empty() {
            Bound::Included(span.start.clone())
        } else if span.unbounded() {
            Bound::Unbounded
        } else if span.end <= span.start {
            return Ok(resp);
        } else {
            Bound::Excluded(span.end.clone())
        };
        for (key, versions) in self
            .keys
            .range((Bound::Included(span.start.clone()), upper))
        {
            let Some(v) = version_at(versions, rev) else {
                continue;
            };
            resp.count += 1;
            if req.count_only {
                continue;
            }
            if req.limit == 0 || resp.kvs.len() < req.limit {
                resp.kvs.extend(to_kv(key, v));
            } else {
                resp.more = true;
            }
        }
        Ok(resp)
    }

    /// The changes in `span` in `(after, upto]`, at most `max` of them, and the revision
    /// they reach (every revision up to it has been looked at).
    pub fn events(
        &self,
        span: &KeySpan,
        after: Revision,
        upto: Revision,
        max: usize,
    ) -> Result<(Vec<Event>, Revision)> {
        if after < self.compacted {
            return Err(StoreError::Compacted {
                requested: after + 1,
                compacted: self.compacted,
            });
        }
        let mut events = Vec::new();
        let mut reached = after;
        for rev in (after + 1)..=upto.min(self.rev) {
            if events.len() >= max {
                break;
            }
            reached = rev;
            let Some(Some(key)) = self.log.get((rev - self.log_base) as usize) else {
                continue;
            };
            if !span.contains(key) {
                continue;
            }
            let Some(versions) = self.keys.get(key) else {
                continue;
            };
            let Ok(i) = versions.binary_search_by_key(&rev, |v| v.mod_rev) else {
                continue;
            };
            let prev_kv = i.checked_sub(1).and_then(|p| to_kv(key, &versions[p]));
            let event = match to_kv(key, &versions[i]) {
                Some(kv) => Event {
                    kind: EventType::Put,
                    kv,
                    prev_kv,
                },
                None => Event {
                    kind: EventType::Delete,
                    kv: KeyValue {
                        key: key.clone(),
                        value: Bytes::new(),
                        create_revision: 0,
                        mod_revision: rev,
                        version: 0,
                        lease: 0,
                    },
                    prev_kv,
                },
            };
            events.push(event);
        }
        Ok((events, reached))
    }

    /// Keys whose TTL ran out by `now_ms`, with the revision to delete them at.
    pub fn expired(&self, now_ms: u64) -> Vec<(Bytes, Revision)> {
        self.expiries
            .range(..(now_ms + 1, Bytes::new()))
            .filter_map(|(_, key)| {
                let v = self.keys.get(key)?.last()?;
                Some((key.clone(), v.mod_rev))
            })
            .collect()
    }
}

#[cfg(test)]
#[path = "mvcc_tests.rs"]
mod tests;
