//! Leader election on a `coordination.k8s.io/v1` Lease (upstream's leaderelection with a
//! LeaseLock), so several copies of a component can run and one works. Taking and
//! renewing the lease are compare-and-swap writes (the Lease's resourceVersion).

use std::future::Future;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::PostParams;
use kube::{Api, Client};

/// Who competes for which lease, and how fast.
#[derive(Clone, Debug)]
pub struct LeaseLock {
    /// The Lease's namespace (`kube-system` for the control plane's components).
    pub namespace: String,
    /// The Lease's name (the component's: `kube-scheduler`, `kube-controller-manager`).
    pub name: String,
    /// This process (upstream: hostname and a random suffix).
    pub identity: String,
    /// How long a lease lasts without renewal (upstream's default: 15 s).
    pub duration: Duration,
    /// How often to try to take or renew it (upstream's default: 2 s).
    pub retry: Duration,
}

impl LeaseLock {
    /// The lease `kube-system/<component>` with upstream's timings (15 s, retried every
    /// 2 s).
    pub fn for_component(component: &str, identity: String) -> LeaseLock {
        LeaseLock {
            namespace: "kube-system".into(),
            name: component.into(),
            identity,
            duration: Duration::from_secs(15),
            retry: Duration::from_secs(2),
        }
    }

    /// One attempt to take or renew the lease; whether we hold it now.
    pub async fn try_hold(&self, api: &Api<Lease>) -> Result<bool, kube::Error> {
        let now = jiff::Timestamp::now();
        let secs = self.duration.as_secs().max(1) as i32;
        let conflict = |e: &kube::Error| matches!(e, kube::Error::Api(s) if s.code == 409);
        let Some(mut lease) = api.get_opt(&self.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    namespace: Some(self.namespace.clone()),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.identity.clone()),
                    lease_duration_seconds: Some(secs),
                    acquire_time: Some(MicroTime(now)),
                    renew_time: Some(MicroTime(now)),
                    lease_transitions: Some(0),
                    ..Default::default()
                }),
            };
            return match api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(e) if conflict(&e) => Ok(false),
                Err(e) => Err(e),
            };
        };
        let spec = lease.spec.get_or_insert_with(Default::default);
        let mine = spec.holder_identity.as_deref() == Some(self.identity.as_str());
        let held_until = spec.renew_time.as_ref().map(|t| {
            t.0.as_millisecond() + 1000 * spec.lease_duration_seconds.unwrap_or(secs) as i64
        });
        let free = spec.holder_identity.as_deref().is_none_or(str::is_empty)
            || held_until.is_none_or(|t| t < now.as_millisecond());
        if !mine && !free {
            return Ok(false);
        }
        if !mine {
            spec.acquire_time = Some(MicroTime(now));
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
            spec.holder_identity = Some(self.identity.clone());
        }
        spec.renew_time = Some(MicroTime(now));
        spec.lease_duration_seconds = Some(secs);
        match api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if conflict(&e) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Runs `work()` whenever this process holds the lease: it waits for the lease, runs
    /// the work while renewing, and drops it (and tries again) when a renewal has not
    /// succeeded for two thirds of the lease's duration.
    pub async fn run<F, Fut>(&self, client: Client, work: F)
    where
        F: Fn() -> Fut,
        Fut: Future<Output = ()>,
    {
        let api: Api<Lease> = Api::namespaced(client, &self.namespace);
        loop {
            while !self.try_hold(&api).await.unwrap_or(false) {
                tokio::time::sleep(self.retry).await;
            }
            tracing::info!(identity = %self.identity, lease = %self.name, "leading");
            let job = work();
            tokio::pin!(job);
            let mut renewed = Instant::now();
            loop {
                tokio::select! {
                    _ = &mut job => return,
                    _ = tokio::time::sleep(self.retry) => {
                        if self.try_hold(&api).await.unwrap_or(false) {
                            renewed = Instant::now();
                        } else if renewed.elapsed() > self.duration * 2 / 3 {
                            tracing::warn!(identity = %self.identity, "lost the lease; stopping");
                            break;
                        }
                    }
                }
            }
        }
    }
}
