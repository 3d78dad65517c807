//! kube-scheduler as an API client: it watches nodes and pods, queues the pods that name
//! this scheduler and have no node, filters and scores the cached nodes through the
//! framework's plugins, assumes the pod on the best node and binds it through
//! `pods/binding`; when no node fits, it tries preemption (evicting lower-priority pods
//! and nominating the node), says why in the pod's `PodScheduled` condition and a
//! `FailedScheduling` event, and retries when the cluster changes.

pub mod cache;
pub mod config;
pub mod counts;
pub mod framework;
pub mod owners;
pub mod plugins;
pub mod preemption;
pub use rkube_api::quantity;
pub mod queue;
pub mod resources;
pub mod selector;
pub mod volumes;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{ReplicaSet, StatefulSet};
use k8s_openapi::api::core::v1::{
    Binding, Node, ObjectReference, PersistentVolume, PersistentVolumeClaim, Pod,
    ReplicationController, Service,
};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::storage::v1::{CSINode, StorageClass};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, Time};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::watcher;
use kube::{Api, Client};
use rkube_client::events;

use cache::{key, Cache, PodInfo};
use framework::Profile;
use queue::Queue;

/// How many bindings may be in flight at once.
const MAX_BINDS: usize = 64;

/// An object's namespace and name.
fn namespaced_name(m: &ObjectMeta) -> (&str, &str) {
    (
        m.namespace.as_deref().unwrap_or(""),
        m.name.as_deref().unwrap_or(""),
    )
}

/// Stores or forgets an object by name.
fn set<T>(m: &mut std::collections::HashMap<String, T>, name: String, o: T, gone: bool) {
    match gone {
        true => m.remove(&name),
        false => m.insert(name, o),
    };
}

/// Tasks that end with their owner.
struct AbortOnDrop(Vec<tokio::task::JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

/// The scheduler's shared state.
pub struct Scheduler {
    client: Client,
    cache: Mutex<Cache>,
    queue: Queue,
    /// Profiles by schedulerName.
    profiles: Vec<Profile>,
    /// Where the next filter pass starts (upstream rotates through the nodes).
    next_start: AtomicUsize,
    binds: Arc<tokio::sync::Semaphore>,
    /// PodDisruptionBudgets by `namespace/name`, which preemption tries not to break.
    pdbs: Mutex<std::collections::BTreeMap<String, PodDisruptionBudget>>,
    events: Arc<events::Recorder>,
}

impl Scheduler {
    /// A scheduler with these profiles; `run` starts it.
    pub fn new(client: Client, profiles: Vec<Profile>) -> Arc<Scheduler> {
        Arc::new(Scheduler {
            events: events::Recorder::new(client.clone()),
            client,
            cache: Mutex::new(Cache::default()),
            queue: Queue::default(),
            profiles,
            next_start: AtomicUsize::new(0),
            binds: Arc::new(tokio::sync::Semaphore::new(MAX_BINDS)),
            pdbs: Mutex::default(),
        })
    }

    /// Watches and schedules until this future is dropped.
    pub async fn run(self: Arc<Self>) {
        let _watches = AbortOnDrop(vec![
            self.watch(Scheduler::node_seen),
            self.watch(Scheduler::pod_event),
            self.watch(Scheduler::pdb_seen),
            self.watch(Scheduler::service_seen),
            self.watch(|s, rc: ReplicationController, gone| {
                let sel = rc.spec.as_ref().and_then(|s| s.selector.clone());
                let sel = sel.map(|m| LabelSelector {
                    match_labels: Some(m),
                    ..Default::default()
                });
                s.controller_seen(rc, gone, sel)
            }),
            self.watch(|s, rs: ReplicaSet, gone| {
                let sel = rs.spec.as_ref().map(|s| s.selector.clone());
                s.controller_seen(rs, gone, sel)
            }),
            self.watch(|s, ss: StatefulSet, gone| {
                let sel = ss.spec.as_ref().map(|s| s.selector.clone());
                s.controller_seen(ss, gone, sel)
            }),
            self.watch(|s, c: PersistentVolumeClaim, gone| {
                let (ns, name) = namespaced_name(&c.metadata);
                let key = format!("{ns}/{name}");
                s.storage_changed(|v| v.set_claim(key, (!gone).then_some(c)))
            }),
            self.watch(|s, pv: PersistentVolume, gone| {
                let name = pv.metadata.name.clone().unwrap_or_default();
                s.storage_changed(|v| set(&mut v.volumes, name, pv, gone))
            }),
            self.watch(|s, sc: StorageClass, gone| {
                let name = sc.metadata.name.clone().unwrap_or_default();
                s.storage_changed(|v| set(&mut v.classes, name, sc, gone))
            }),
            self.watch(|s, n: CSINode, gone| {
                let name = n.metadata.name.clone().unwrap_or_default();
                s.storage_changed(|v| set(&mut v.csi_nodes, name, n, gone))
            }),
        ]);
        loop {
            let pod = self.queue.pop().await;
            self.schedule_one(pod).await;
        }
    }

    /// Feeds every object of kind `K` the watch shows to `on` (`true`: deleted), for as
    /// long as the scheduler runs.
    fn watch<K>(self: &Arc<Self>, on: fn(&Scheduler, K, bool)) -> tokio::task::JoinHandle<()>
    where
        K: kube::Resource<DynamicType = ()>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug
            + Send
            + 'static,
    {
        let me = self.clone();
        tokio::spawn(async move {
            let api: Api<K> = Api::all(me.client.clone());
            let mut w = watcher(api, watcher::Config::default()).boxed();
            while let Some(ev) = w.next().await {
                match ev {
                    Ok(watcher::Event::Apply(o)) | Ok(watcher::Event::InitApply(o)) => {
                        on(&me, o, false)
                    }
                    Ok(watcher::Event::Delete(o)) => on(&me, o, true),
                    Ok(_) => {}
                    Err(e) => {
                        tracing::debug!(kind = %K::kind(&()), error = %e, "watch");
                        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                    }
                }
            }
        })
    }

    fn node_seen(&self, n: Node, deleted: bool) {
        let mut cache = self.cache.lock().expect("cache lock");
        if deleted {
            cache.remove_node(n.metadata.name.as_deref().unwrap_or_default());
        } else if cache.set_node(n) {
            drop(cache);
            self.queue.move_all();
        }
    }

    fn pod_event(&self, p: Pod, deleted: bool) {
        if !deleted {
            return self.pod_seen(p);
        }
        self.pod_gone(&key(&p));
    }

    /// A pod deleted or finished: its room is free (pods waiting for room are retried),
    /// its nomination ends, and a preemptor whose last victim it was is retried.
    fn pod_gone(&self, k: &str) {
        let mut cache = self.cache.lock().expect("cache lock");
        cache.remove_pod(k);
        cache.nominate(k, None);
        let preemptor = cache.preempted(k);
        drop(cache);
        self.queue.remove(k);
        self.queue.move_all();
        if let Some(p) = preemptor {
            self.queue.release(&p);
        }
    }

    fn pdb_seen(&self, b: PodDisruptionBudget, deleted: bool) {
        let (ns, name) = namespaced_name(&b.metadata);
        let key = format!("{ns}/{name}");
        let mut pdbs = self.pdbs.lock().expect("pdb lock");
        match deleted {
            true => pdbs.remove(&key),
            false => pdbs.insert(key, b),
        };
    }

    fn service_seen(&self, s: Service, deleted: bool) {
        let sel = s.spec.and_then(|s| s.selector).filter(|_| !deleted);
        let (ns, name) = namespaced_name(&s.metadata);
        let mut cache = self.cache.lock().expect("cache lock");
        cache.owners.set_service(ns, name, sel);
    }

    /// A storage object changed: pods waiting for volumes may fit now.
    fn storage_changed(&self, change: impl FnOnce(&mut volumes::Volumes)) {
        change(self.cache.lock().expect("cache lock").volumes_mut());
        self.queue.move_all();
    }

    /// A ReplicationController's, ReplicaSet's or StatefulSet's selector.
    fn controller_seen<K>(&self, o: K, deleted: bool, sel: Option<LabelSelector>)
    where
        K: kube::Resource<DynamicType = ()>,
    {
        let (ns, name) = namespaced_name(o.meta());
        let kind = K::kind(&());
        let sel = sel.filter(|_| !deleted);
        let mut cache = self.cache.lock().expect("cache lock");
        cache.owners.set_controller(&kind, ns, name, sel);
    }

    /// A pod as the watch shows it: counted on its node, queued, or forgotten.
    fn pod_seen(&self, pod: Pod) {
        let k = key(&pod);
        let spec = pod.spec.as_ref();
        let node = spec
            .and_then(|s| s.node_name.clone())
            .filter(|n| !n.is_empty());
        let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
        let finished = matches!(phase, Some("Succeeded") | Some("Failed"));
        let nominated = pod
            .status
            .as_ref()
            .and_then(|s| s.nominated_node_name.clone())
            .filter(|n| !n.is_empty());
        {
            // A nomination ends when the pod is bound, finished or deleted; an event
            // without one (older than this scheduler's own write) does not end it.
            let mut cache = self.cache.lock().expect("cache lock");
            match &nominated {
                _ if node.is_some() || finished => cache.nominate(&k, None),
                Some(n) => {
                    let info = Arc::new(PodInfo::new(Arc::new(pod.clone())));
                    cache.nominate(&k, Some((info, n)));
                }
                None => {}
            }
        }
        if finished {
            return self.pod_gone(&k);
        }
        if let Some(node) = node {
            let info = Arc::new(PodInfo::new(Arc::new(pod)));
            self.cache
                .lock()
                .expect("cache lock")
                .add_pod(info, &node, false);
            self.queue.remove(&k);
            return;
        }
        let ours = self.profile_of(&pod).is_some();
        let gated = spec
            .and_then(|s| s.scheduling_gates.as_ref())
            .is_some_and(|g| !g.is_empty());
        let deleting = pod.metadata.deletion_timestamp.is_some();
        if !ours || deleting {
            return;
        }
        if gated {
            self.queue.remove(&k);
            return;
        }
        if self.cache.lock().expect("cache lock").is_placed(&k) {
            // Assumed; the binding is on its way.
            return;
        }
        self.queue.add(Arc::new(pod), &k);
    }

    /// The profile that schedules this pod (by its schedulerName), if any.
    fn profile_of(&self, pod: &Pod) -> Option<&Profile> {
        let name = pod
            .spec
            .as_ref()
            .and_then(|s| s.scheduler_name.as_deref())
            .unwrap_or("default-scheduler");
        self.profiles.iter().find(|p| p.scheduler_name == name)
    }

    /// One scheduling cycle for one pod.
    async fn schedule_one(self: &Arc<Self>, pod: Arc<Pod>) {
        let Some(profile) = self.profile_of(&pod) else {
            self.queue.remove(&cache::key(&pod));
            return;
        };
        let info = Arc::new(PodInfo::new(pod.clone()));
        let decision = {
            let mut cache = self.cache.lock().expect("cache lock");
            cache.track_wanted();
            let start = self.next_start.load(Ordering::Relaxed);
            let mut state = profile.pre_filter(&info, &cache.snapshot());
            match profile.find_feasible(&info, cache.all(), cache.nominated(), start, &state) {
                Err(d) if cache.all().is_empty() || profile.preemption.is_none() => {
                    Err((d, Err(String::new())))
                }
                Err(d) => {
                    // PostFilter: DefaultPreemption.
                    let preemption = preemption::eligible(&info, &cache)
                        .map_err(String::from)
                        .and_then(|()| {
                            let pdbs: Vec<PodDisruptionBudget> = self
                                .pdbs
                                .lock()
                                .expect("pdb lock")
                                .values()
                                .cloned()
                                .collect();
                            preemption::select(profile, &info, &cache, &state, &pdbs)
                        });
                    let preemption = preemption.map(|mut c| {
                        // Less important nominations there end; this pod's room is held
                        // from now on, before the nomination is written.
                        let mine = preemption::priority(&info);
                        c.cleared = cache
                            .nominated()
                            .get(&c.node)
                            .into_iter()
                            .flatten()
                            .filter(|p| p.key != info.key && preemption::priority(p) < mine)
                            .cloned()
                            .collect();
                        for p in &c.cleared {
                            cache.nominate(&p.key, None);
                        }
                        cache.nominate(&info.key, Some((info.clone(), &c.node)));
                        cache.preempting(c.victims.iter().map(|v| v.key.as_str()), &info.key);
                        c
                    });
                    Err((d, preemption))
                }
                Ok(feasible) => {
                    let n = cache.all().len().max(1);
                    self.next_start
                        .store((start + feasible.len()) % n, Ordering::Relaxed);
                    let scores = profile.score(&info, &feasible, &cache.snapshot(), &mut state);
                    let best = scores.iter().copied().max().unwrap_or(0);
                    let ties: Vec<usize> =
                        (0..scores.len()).filter(|i| scores[*i] == best).collect();
                    let pick = ties[start % ties.len()];
                    let node = feasible[pick].name.clone();
                    let binds = plugins::volume_binding::reserve(&state, feasible[pick]);
                    for (claim, pv) in &binds {
                        if let Some(pv) = pv {
                            cache.volumes_mut().assume(claim, pv);
                        }
                    }
                    cache.add_pod(info.clone(), &node, true);
                    Ok((node, binds))
                }
            }
        };
        match decision {
            Ok((node, binds)) => {
                self.queue.remove(&info.key);
                let permit = self.binds.clone().acquire_owned().await;
                let me = self.clone();
                tokio::spawn(async move {
                    let _permit = permit;
                    if me.bind_volumes(&node, &binds).await {
                        me.bind(info, node).await;
                    } else {
                        me.cache.lock().expect("cache lock").remove_pod(&info.key);
                        me.queue.backoff(info.pod.clone(), &info.key);
                    }
                });
            }
            Err((diagnosis, preemption)) => {
                if preemption.is_ok() {
                    self.queue.hold(&info.key);
                }
                self.queue.unschedulable(&info.key);
                let mut msg = diagnosis.message();
                let me = self.clone();
                tokio::spawn(async move {
                    match preemption {
                        Ok(candidate) => {
                            let node = candidate.node.clone();
                            if me.report_unschedulable(&pod, &msg, Some(&node)).await {
                                me.preempt(&pod, candidate).await;
                            } else {
                                let mut cache = me.cache.lock().expect("cache lock");
                                for v in &candidate.victims {
                                    cache.preempted(&v.key);
                                }
                            }
                            // Retried once its victims are gone from the cache (each
                            // deletion seen releases it when it is the last).
                            let waits = me
                                .cache
                                .lock()
                                .expect("cache lock")
                                .awaits_victims(&info.key);
                            if !waits {
                                me.queue.release(&info.key);
                            }
                        }
                        Err(why) => {
                            if !why.is_empty() {
                                msg = format!("{msg} preemption: {why}");
                            }
                            me.report_unschedulable(&pod, &msg, None).await;
                        }
                    }
                });
            }
        }
    }

    /// VolumeBinding's PreBind: each chosen volume gets the claim in its `claimRef`; each
    /// claim left to its provisioner gets the node in `volume.kubernetes.io/selected-node`.
    /// Whether all of it was written (if not, the choices are forgotten).
    async fn bind_volumes(
        &self,
        node: &str,
        binds: &[(PersistentVolumeClaim, Option<String>)],
    ) -> bool {
        for (claim, pv) in binds {
            let (ns, name) = namespaced_name(&claim.metadata);
            let res = match pv {
                Some(pv) => {
                    let rv = {
                        let cache = self.cache.lock().expect("cache lock");
                        let v = cache.snapshot().volumes.volumes.get(pv).cloned();
                        v.and_then(|v| v.metadata.resource_version)
                    };
                    let patch = serde_json::json!({
                        "metadata": {"resourceVersion": rv,
                                     "annotations": {"pv.kubernetes.io/bound-by-controller": "yes"}},
                        "spec": {"claimRef": {"kind": "PersistentVolumeClaim", "apiVersion": "v1",
                            "namespace": ns, "name": name, "uid": claim.metadata.uid,
                            "resourceVersion": claim.metadata.resource_version}},
                    });
                    Api::<PersistentVolume>::all(self.client.clone())
                        .patch(pv, &PatchParams::default(), &Patch::Merge(patch))
                        .await
                        .map(|_| ())
                }
                None => {
                    let patch = serde_json::json!({"metadata": {"annotations": {
                        "volume.kubernetes.io/selected-node": node}}});
                    Api::<PersistentVolumeClaim>::namespaced(self.client.clone(), ns)
                        .patch(name, &PatchParams::default(), &Patch::Merge(patch))
                        .await
                        .map(|_| ())
                }
            };
            if let Err(e) = res {
                tracing::warn!(claim = %name, error = %e, "binding a volume");
                let mut cache = self.cache.lock().expect("cache lock");
                for (c, _) in binds {
                    cache.volumes_mut().unassume(c);
                }
                return false;
            }
        }
        true
    }

    async fn bind(&self, info: Arc<PodInfo>, node: String) {
        let pod = &info.pod;
        let (ns, name) = (
            pod.metadata.namespace.clone().unwrap_or_default(),
            pod.metadata.name.clone().unwrap_or_default(),
        );
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &ns);
        let binding = Binding {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: Some(ns.clone()),
                uid: pod.metadata.uid.clone(),
                ..Default::default()
            },
            target: ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Node".into()),
                name: Some(node.clone()),
                ..Default::default()
            },
        };
        let res: Result<serde_json::Value, kube::Error> = api
            .create_subresource("binding", &name, &PostParams::default(), &binding)
            .await;
        match res {
            Ok(_) => {
                let msg = format!("Successfully assigned {ns}/{name} to {node}");
                self.event(pod, None, "Normal", "Scheduled", &msg);
            }
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {
                // Gone, or bound by someone else: the watch brings the truth.
                self.cache.lock().expect("cache lock").remove_pod(&info.key);
            }
            Err(e) => {
                tracing::warn!(pod = %info.key, %node, error = %e, "binding failed");
                self.cache.lock().expect("cache lock").remove_pod(&info.key);
                self.queue.backoff(pod.clone(), &info.key);
            }
        }
    }

    /// Evicts the victims on the candidate's node (nominated for `pod` already): less
    /// important nominations there end, and each victim gets the `DisruptionTarget`
    /// condition, a `Preempted` event, and is deleted.
    async fn preempt(&self, pod: &Pod, c: preemption::Candidate) {
        for p in &c.cleared {
            let (pns, pname) = namespaced_name(&p.pod.metadata);
            let clear = serde_json::json!({"status": {"nominatedNodeName": null}});
            if let Err(e) = Api::<Pod>::namespaced(self.client.clone(), pns)
                .patch_status(pname, &PatchParams::default(), &Patch::Merge(clear))
                .await
            {
                tracing::debug!(pod = %pname, error = %e, "clearing a nomination");
            }
        }
        let scheduler = self
            .profile_of(pod)
            .map(|p| p.scheduler_name.clone())
            .unwrap_or_else(|| "default-scheduler".into());
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        // The victims at once, as upstream's parallel eviction.
        let evict = |v: &Arc<PodInfo>| {
            let (victim, scheduler, uid, node) = (v.clone(), &scheduler, &uid, &c.node);
            async move {
                let meta = &victim.pod.metadata;
                let (vns, vname) = namespaced_name(meta);
                let vapi: Api<Pod> = Api::namespaced(self.client.clone(), vns);
                let condition = serde_json::json!({"status": {"conditions": [{
                    "type": "DisruptionTarget", "status": "True", "reason": "PreemptionByScheduler",
                    "message": format!("{scheduler}: preempting to accommodate a higher priority pod"),
                    "lastTransitionTime": Time(jiff::Timestamp::now()),
                }]}});
                let _ = vapi
                    .patch_status(vname, &PatchParams::default(), &Patch::Strategic(condition))
                    .await;
                let dp = DeleteParams {
                    preconditions: Some(Preconditions {
                        uid: meta.uid.clone(),
                        resource_version: None,
                    }),
                    ..Default::default()
                };
                match vapi.delete(vname, &dp).await {
                    Ok(_) => {
                        let msg = format!("Preempted by pod {uid} on node {node}");
                        self.event(&victim.pod, Some(pod), "Normal", "Preempted", &msg);
                    }
                    // Gone already: its deletion is on its way to the cache.
                    Err(kube::Error::Api(e)) if e.code == 404 => {}
                    Err(e) => {
                        tracing::warn!(pod = %vname, error = %e, "deleting a victim");
                        self.cache
                            .lock()
                            .expect("cache lock")
                            .preempted(&victim.key);
                    }
                }
            }
        };
        futures::future::join_all(c.victims.iter().map(evict)).await;
    }

    /// The `PodScheduled=False` condition, and the node preemption nominated, in one
    /// status patch (as upstream's), and a `FailedScheduling` event. Whether the pod
    /// could be written (false: it is gone).
    async fn report_unschedulable(&self, pod: &Pod, msg: &str, nominate: Option<&str>) -> bool {
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let name = pod.metadata.name.clone().unwrap_or_default();
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &ns);
        let now = Time(jiff::Timestamp::now());
        let already = pod
            .status
            .iter()
            .flat_map(|s| s.conditions.iter().flatten())
            .any(|c| {
                c.type_ == "PodScheduled"
                    && c.status == "False"
                    && c.message.as_deref() == Some(msg)
            });
        if !already || nominate.is_some() {
            let mut patch = serde_json::json!({"status": {"conditions": [{
                "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                "message": msg, "lastTransitionTime": now, "lastProbeTime": null,
            }]}});
            if let Some(node) = nominate {
                patch["status"]["nominatedNodeName"] = node.into();
            }
            if let Err(e) = api
                .patch_status(&name, &PatchParams::default(), &Patch::Strategic(patch))
                .await
            {
                tracing::debug!(pod = %name, error = %e, "setting PodScheduled");
                if nominate.is_some() {
                    return false;
                }
            }
        }
        self.event(pod, None, "Warning", "FailedScheduling", msg);
        true
    }

    /// Records an event about `pod` as its profile's scheduler.
    /// The action is upstream's for the reason: Binding for Scheduled, Preempting for
    /// Preempted (with the preemptor as the related object), else Scheduling.
    fn event(&self, pod: &Pod, related: Option<&Pod>, kind: &str, reason: &str, msg: &str) {
        let reporter = self
            .profile_of(pod)
            .map(|p| p.scheduler_name.as_str())
            .unwrap_or("default-scheduler");
        let action = match reason {
            "Scheduled" => "Binding",
            "Preempted" => "Preempting",
            _ => "Scheduling",
        };
        let o = events::Occurrence {
            type_: kind,
            reason,
            action,
            note: msg,
            reporter,
        };
        self.events
            .record(events::object_ref(pod), related.map(events::object_ref), o);
    }
}
