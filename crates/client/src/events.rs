//! Events through events.k8s.io/v1, as upstream's event recorder writes them. A repeat
//! of an event (same object, reason, action, reporter and related object: upstream's
//! "isomorphic" events) within six minutes joins a series on the first event instead of
//! adding an object, so `kubectl describe` shows "(x5 over 2m)" for a pod that keeps
//! failing. The series is written at its second occurrence, then at most every `FLUSH`.
//! Writes run off the caller's path, each in its own task.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::Client;

/// How long a series stays open after its last occurrence (upstream: 6 minutes).
const SERIES_TTL: SignedDuration = SignedDuration::from_mins(6);
/// How often open series' counts are written (upstream: every 30 minutes; sooner here so
/// `kubectl describe` is current).
const FLUSH: Duration = Duration::from_secs(10);

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Key {
    uid: String,
    reason: String,
    action: String,
    reporter: String,
    /// The related object's uid, if any.
    related: String,
}

/// An event already written, and its repeats.
#[derive(Debug)]
struct Series {
    ns: String,
    name: String,
    count: i32,
    /// The count the API has.
    written: i32,
    last: Timestamp,
}

/// What to write for one occurrence.
#[derive(Debug, PartialEq)]
enum Write {
    Create,
    /// The series' count, on the event named (namespace, name).
    Count(String, String, i32),
    Nothing,
}

#[derive(Default)]
struct Book(HashMap<Key, Series>);

impl Book {
    /// Books an occurrence of `key` at `now`; a new event is named `name`.
    fn occur(&mut self, key: Key, ns: &str, name: &str, now: Timestamp) -> Write {
        if let Some(s) = self.0.get_mut(&key) {
            if now.duration_since(s.last) < SERIES_TTL {
                s.count += 1;
                s.last = now;
                if s.count == 2 {
                    s.written = 2;
                    return Write::Count(s.ns.clone(), s.name.clone(), 2);
                }
                return Write::Nothing;
            }
        }
        self.0.insert(
            key,
            Series {
                ns: ns.to_string(),
                name: name.to_string(),
                count: 1,
                written: 1,
                last: now,
            },
        );
        Write::Create
    }

    /// The series whose counts are ahead of the API (marked written), and forgets those
    /// that ended.
    fn due(&mut self, now: Timestamp) -> Vec<(String, String, i32, Timestamp)> {
        let mut out = Vec::new();
        for s in self.0.values_mut().filter(|s| s.count > s.written) {
            s.written = s.count;
            out.push((s.ns.clone(), s.name.clone(), s.count, s.last));
        }
        self.0
            .retain(|_, s| now.duration_since(s.last) < SERIES_TTL);
        out
    }

    /// Forgets an event that could not be written, so its next occurrence creates it.
    fn forget(&mut self, name: &str) {
        self.0.retain(|_, s| s.name != name);
    }
}

/// One occurrence of an event.
pub struct Occurrence<'a> {
    /// Normal or Warning.
    pub type_: &'a str,
    /// Why (`FailedScheduling`, `ScalingReplicaSet`): a short UpperCamelCase word.
    pub reason: &'a str,
    /// What was done or failed (`Scheduling`, `Binding`).
    pub action: &'a str,
    /// The human-readable message.
    pub note: &'a str,
    /// The reporting controller (`default-scheduler`, `deployment-controller`).
    pub reporter: &'a str,
}

/// Records one component's events.
pub struct Recorder {
    client: Client,
    book: Mutex<Book>,
}

impl Recorder {
    /// A recorder, and its task that writes series counts until the recorder is dropped.
    pub fn new(client: Client) -> Arc<Recorder> {
        let r = Arc::new(Recorder {
            client,
            book: Mutex::default(),
        });
        let weak = Arc::downgrade(&r);
        tokio::spawn(flush(weak));
        r
    }

    /// Records an event about `regarding`, and optionally another object it concerns
    /// (`related`: the preemptor of a Preempted pod). Its namespace is the regarded
    /// object's (`default` for cluster-scoped ones, as upstream).
    pub fn record(
        self: &Arc<Self>,
        regarding: ObjectReference,
        related: Option<ObjectReference>,
        o: Occurrence<'_>,
    ) {
        let Occurrence {
            type_,
            reason,
            action,
            note,
            reporter,
        } = o;
        let ns = regarding
            .namespace
            .clone()
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| "default".into());
        let object_name = regarding.name.clone().unwrap_or_default();
        let now = Timestamp::now();
        let name = format!("{object_name}.{:x}", now.as_nanosecond());
        let key = Key {
            uid: regarding.uid.clone().unwrap_or_default(),
            reason: reason.into(),
            action: action.into(),
            reporter: reporter.into(),
            related: related
                .as_ref()
                .and_then(|r| r.uid.clone())
                .unwrap_or_default(),
        };
        // A pod is bound once, so its Scheduled event never repeats: not kept (in bulk
        // scheduling the book would otherwise hold one entry per pod for six minutes).
        let write = if action == "Binding" {
            Write::Create
        } else {
            let mut book = self.book.lock().expect("event book");
            book.occur(key, &ns, &name, now)
        };
        let ev = match write {
            Write::Nothing => return,
            Write::Count(ns, name, n) => {
                let me = self.clone();
                tokio::spawn(async move { me.write_count(&ns, &name, n, now).await });
                return;
            }
            Write::Create => Event {
                metadata: ObjectMeta {
                    name: Some(name),
                    namespace: Some(ns.clone()),
                    ..Default::default()
                },
                event_time: Some(MicroTime(now)),
                action: Some(action.into()),
                reason: Some(reason.into()),
                note: Some(note.into()),
                type_: Some(type_.into()),
                regarding: Some(regarding),
                related,
                reporting_controller: Some(reporter.into()),
                reporting_instance: Some(format!("{reporter}-rkube")),
                ..Default::default()
            },
        };
        let me = self.clone();
        tokio::spawn(async move {
            let api: Api<Event> = Api::namespaced(me.client.clone(), &ns);
            if let Err(e) = api.create(&PostParams::default(), &ev).await {
                tracing::debug!(error = %e, "recording an event");
                let name = ev.metadata.name.unwrap_or_default();
                me.book.lock().expect("event book").forget(&name);
            }
        });
    }

    async fn write_count(&self, ns: &str, name: &str, count: i32, last: Timestamp) {
        let api: Api<Event> = Api::namespaced(self.client.clone(), ns);
        let patch =
            serde_json::json!({"series": {"count": count, "lastObservedTime": MicroTime(last)}});
        if let Err(e) = api
            .patch(name, &PatchParams::default(), &Patch::Merge(patch))
            .await
        {
            tracing::debug!(error = %e, event = name, "updating an event series");
            self.book.lock().expect("event book").forget(name);
        }
    }
}

/// A reference to an object, as events name it.
pub fn object_ref<K>(obj: &K) -> ObjectReference
where
    K: kube::Resource<DynamicType = ()>,
{
    let m = obj.meta();
    ObjectReference {
        api_version: Some(K::api_version(&()).into_owned()),
        kind: Some(K::kind(&()).into_owned()),
        name: m.name.clone(),
        namespace: m.namespace.clone(),
        uid: m.uid.clone(),
        resource_version: m.resource_version.clone(),
        ..Default::default()
    }
}

/// Writes the counts of series that grew, every `FLUSH`, while the recorder lives.
async fn flush(recorder: Weak<Recorder>) {
    loop {
        tokio::time::sleep(FLUSH).await;
        let Some(r) = recorder.upgrade() else {
            return;
        };
        let due = r.book.lock().expect("event book").due(Timestamp::now());
        for (ns, name, count, last) in due {
            r.write_count(&ns, &name, count, last).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(uid: &str, reason: &str) -> Key {
        Key {
            uid: uid.into(),
            reason: reason.into(),
            action: "Scheduling".into(),
            reporter: "default-scheduler".into(),
            related: String::new(),
        }
    }

    #[test]
    fn repeats_join_a_series_until_it_ends() {
        let mut b = Book::default();
        let t0 = Timestamp::now();
        let at = |s: i64| t0 + SignedDuration::from_secs(s);
        let k = key("u1", "FailedScheduling");
        assert_eq!(b.occur(k.clone(), "ns", "p.1", at(0)), Write::Create);
        // Another pod, or another reason: events of their own.
        assert_eq!(
            b.occur(key("u2", "FailedScheduling"), "ns", "q.1", at(0)),
            Write::Create
        );
        assert_eq!(
            b.occur(key("u1", "Scheduled"), "ns", "p.2", at(1)),
            Write::Create
        );
        // The second occurrence is written at once, the next ones by the flush.
        assert_eq!(
            b.occur(k.clone(), "ns", "p.3", at(10)),
            Write::Count("ns".into(), "p.1".into(), 2)
        );
        assert_eq!(b.occur(k.clone(), "ns", "p.4", at(20)), Write::Nothing);
        assert_eq!(b.occur(k.clone(), "ns", "p.5", at(30)), Write::Nothing);
        let due = b.due(at(31));
        assert_eq!(due, vec![("ns".into(), "p.1".into(), 4, at(30))]);
        assert!(b.due(at(32)).is_empty());
        // Six minutes after its last occurrence the series has ended: a new event.
        assert_eq!(b.occur(k.clone(), "ns", "p.6", at(30 + 361)), Write::Create);
        b.due(at(30 + 361));
        assert!(
            !b.0.values().any(|s| s.name == "q.1"),
            "ended series are forgotten"
        );
        // An event that could not be written is forgotten.
        b.forget("p.6");
        assert_eq!(b.occur(k, "ns", "p.7", at(30 + 362)), Write::Create);
    }
}
