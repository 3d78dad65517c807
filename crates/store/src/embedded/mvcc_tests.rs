//! Unit tests of the multi-version index.

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

/// Live and history bytes as kept incrementally equal a recount from scratch.
fn assert_accounting(m: &Mvcc) {
    let recount = Mvcc::from_parts(m.keys.clone(), m.rev, m.compacted);
    assert_eq!(m.live_bytes, recount.live_bytes, "live bytes");
    assert_eq!(m.history_bytes, recount.history_bytes, "history bytes");
    assert_eq!(m.superseded, recount.superseded, "history by revision");
}

#[test]
fn history_and_live_bytes_are_accounted_through_every_change() {
    let mut m = Mvcc::new();
    let v = |n: usize| Bytes::from(vec![b'v'; n]);
    for round in 0..5usize {
        for k in 0..20usize {
            let key = Bytes::from(format!("k{k}"));
            let op = match (round + k) % 4 {
                _ if m.latest(&key).is_none() => Op::Create {
                    key,
                    value: v(100 + k),
                    expires: 0,
                },
                0 => Op::Delete {
                    key,
                    expected: None,
                },
                _ => Op::Update {
                    key,
                    value: v(10 * round + k),
                    expected: None,
                    expires: 0,
                },
            };
            put(&mut m, op);
            assert_accounting(&m);
        }
        let base = m.rev;
        let (rec, _) = m
            .plan(&Op::Update {
                key: b("k1"),
                value: v(5000),
                expected: None,
                expires: 0,
            })
            .or_else(|_| {
                m.plan(&Op::Create {
                    key: b("k1"),
                    value: v(5000),
                    expires: 0,
                })
            })
            .unwrap();
        m.apply(&rec);
        m.rollback(base);
        assert_accounting(&m);
        if m.history_bytes == 0 {
            continue;
        }
        let target = m.compaction_for(m.history_bytes / 2).unwrap();
        let before = m.history_bytes;
        put(&mut m, Op::Compact { rev: target });
        assert!(
            m.history_bytes <= before / 2,
            "{} of {before}",
            m.history_bytes
        );
        assert_accounting(&m);
    }
    assert_eq!(m.compaction_for(u64::MAX), None);
}

#[test]
fn writes_past_the_quota_get_no_space() {
    let mut m = Mvcc::new();
    m.quota = 1000;
    put(
        &mut m,
        Op::Create {
            key: b("a"),
            value: Bytes::from(vec![0; 600]),
            expires: 0,
        },
    );
    let e = m
        .plan(&Op::Create {
            key: b("b"),
            value: Bytes::from(vec![0; 600]),
            expires: 0,
        })
        .unwrap_err();
    assert!(matches!(e, StoreError::NoSpace { .. }), "{e}");
    assert_eq!(e.to_string(), "etcdserver: mvcc: database space exceeded");
    // Shrinking and deleting still work, and make room again.
    put(
        &mut m,
        Op::Update {
            key: b("a"),
            value: Bytes::from(vec![0; 10]),
            expected: None,
            expires: 0,
        },
    );
    put(
        &mut m,
        Op::Create {
            key: b("b"),
            value: Bytes::from(vec![0; 600]),
            expires: 0,
        },
    );
}
