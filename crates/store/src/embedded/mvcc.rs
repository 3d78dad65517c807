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
        for (key, versions) in &m.keys {
            for v in versions.iter().filter(|v| v.mod_rev > compacted) {
                m.log[(v.mod_rev - m.log_base) as usize] = Some(key.clone());
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
        versions.push(v);
        self.rev = rev;
        self.log.push_back(Some(key.clone()));
    }

    /// Takes back every revision after `to` (their write could not be made durable).
    pub fn rollback(&mut self, to: Revision) {
        while self.rev > to {
            let key = self.log.pop_back().flatten();
            if let Some(key) = key {
                if let Some(versions) = self.keys.get_mut(&key) {
                    if let Some(expires) = versions.pop().and_then(|v| v.expiry()) {
                        self.expiries.remove(&(expires, key.clone()));
                    }
                    match versions.last() {
                        None => {
                            self.keys.remove(&key);
                        }
                        Some(v) => {
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
        self.keys.retain(|_, versions| {
            let n = versions.partition_point(|v| v.mod_rev <= rev);
            if n > 0 {
                let keep_from = if versions[n - 1].value.is_none() {
                    n
                } else {
                    n - 1
                };
                versions.drain(..keep_from);
            }
            !versions.is_empty()
        });
        while self.log_base <= rev && !self.log.is_empty() {
            self.log.pop_front();
            self.log_base += 1;
        }
        self.log_base = self.log_base.max(rev + 1);
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
mod tests {
    use super::*;

    fn put(m: &mut Mvcc, op: Op) -> Outcome {
        let (rec, out) = m.plan(&op).unwrap();
        m.apply(&rec);
        m.visible = m.rev;
        out
    }

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    #[test]
    fn rollback_restores_previous_state() {
        let mut m = Mvcc::new();
        put(
            &mut m,
            Op::Create {
                key: b("a"),
                value: b("1"),
                expires: 5,
            },
        );
        let before = m.range(&RangeRequest::prefix("")).unwrap().kvs;
        let (r1, _) = m
            .plan(&Op::Update {
                key: b("a"),
                value: b("2"),
                expected: None,
                expires: 0,
            })
            .unwrap();
        m.apply(&r1);
        let (r2, _) = m
            .plan(&Op::Create {
                key: b("b"),
                value: b("x"),
                expires: 9,
            })
            .unwrap();
        m.apply(&r2);
        m.rollback(2);
        assert_eq!(m.rev, 2);
        assert_eq!(m.range(&RangeRequest::prefix("")).unwrap().kvs, before);
        assert!(!m.keys.contains_key(&b("b")));
        assert_eq!(m.expired(100), vec![(b("a"), 2)]);
    }

    #[test]
    fn compaction_keeps_the_version_visible_at_the_point() {
        let mut m = Mvcc::new();
        put(
            &mut m,
            Op::Create {
                key: b("a"),
                value: b("1"),
                expires: 0,
            },
        );
        put(
            &mut m,
            Op::Update {
                key: b("a"),
                value: b("2"),
                expected: Some(2),
                expires: 0,
            },
        );
        put(
            &mut m,
            Op::Create {
                key: b("d"),
                value: b("x"),
                expires: 0,
            },
        );
        put(
            &mut m,
            Op::Delete {
                key: b("d"),
                expected: None,
            },
        );
        put(
            &mut m,
            Op::Update {
                key: b("a"),
                value: b("3"),
                expected: Some(3),
                expires: 0,
            },
        );
        put(&mut m, Op::Compact { rev: 5 });
        assert_eq!(m.keys[&b("a")].len(), 2);
        assert!(!m.keys.contains_key(&b("d")));
        let at5 = m.range(&RangeRequest::key("a").at(5)).unwrap();
        assert_eq!(at5.kvs[0].value, b("2"));
        assert!(matches!(
            m.range(&RangeRequest::key("a").at(4)),
            Err(StoreError::Compacted { .. })
        ));
        let (ev, reached) = m.events(&KeySpan::prefix(""), 5, 6, 10).unwrap();
        assert_eq!(reached, 6);
        assert_eq!(ev[0].prev_kv.as_ref().unwrap().value, b("2"));
        let rebuilt = Mvcc::from_parts(m.keys.clone(), m.rev, m.compacted);
        assert_eq!(
            rebuilt.events(&KeySpan::prefix(""), 5, 6, 10).unwrap().0,
            ev
        );
    }
}
