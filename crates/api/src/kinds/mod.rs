//! The built-in kinds rkube serves and their strategies.

mod convert;
mod core;
mod pod;
mod workloads;

use k8s_openapi::api::{
    apps::v1 as apps, autoscaling::v1 as autoscalingv1, autoscaling::v2 as autoscalingv2,
    batch::v1 as batch, certificates::v1 as certificates, coordination::v1 as coordination,
    core::v1 as corev1, discovery::v1 as discovery, events::v1 as events,
    networking::v1 as networking, node::v1 as node, policy::v1 as policy, rbac::v1 as rbac,
    scheduling::v1 as scheduling, storage::v1 as storage,
};

use crate::registry::{KindBuilder as K, ResourceInfo};
use crate::strategy::{Generic, PathSegmentNames, WithGeneration};

const STATUS: &[&str] = &["status"];
const SCALABLE: &[&str] = &["scale", "status"];
const ALL: &[&str] = &["all"];

pub use self::pod::pod_qos_class;

/// Every built-in resource, in the order discovery lists them.
pub fn all() -> Vec<ResourceInfo> {
    vec![
        // core/v1
        K::new::<corev1::Pod>(&pod::Pod)
            .short(&["po"])
            .categories(ALL)
            .subresources(&[
                "attach",
                "binding",
                "ephemeralcontainers",
                "eviction",
                "exec",
                "log",
                "portforward",
                "proxy",
                "resize",
                "status",
            ])
            .build(),
        K::new::<corev1::Namespace>(&core::Namespace)
            .short(&["ns"])
            .subresources(&["finalize", "status"])
            .build(),
        K::new::<corev1::Service>(&core::Service)
            .short(&["svc"])
            .categories(ALL)
            .subresources(&["proxy", "status"])
            .build(),
        K::new::<corev1::Endpoints>(&core::Endpoints)
            .short(&["ep"])
            .build(),
        K::new::<corev1::ConfigMap>(&core::ConfigMap)
            .short(&["cm"])
            .build(),
        K::new::<corev1::Secret>(&core::Secret).build(),
        K::new::<corev1::ServiceAccount>(&core::ServiceAccount)
            .short(&["sa"])
            .subresources(&["token"])
            .build(),
        K::new::<corev1::Node>(&core::Node)
            .short(&["no"])
            .subresources(&["proxy", "status"])
            .build(),
        K::new::<corev1::Event>(&core::Event).short(&["ev"]).build(),
        K::new::<corev1::LimitRange>(&Generic)
            .short(&["limits"])
            .build(),
        K::new::<corev1::ResourceQuota>(&Generic)
            .short(&["quota"])
            .subresources(STATUS)
            .build(),
        K::new::<corev1::PersistentVolume>(&core::PersistentVolume)
            .short(&["pv"])
            .subresources(STATUS)
            .build(),
        K::new::<corev1::PersistentVolumeClaim>(&core::PersistentVolumeClaim)
            .short(&["pvc"])
            .subresources(STATUS)
            .build(),
        K::new::<corev1::ReplicationController>(&workloads::ReplicationController)
            .short(&["rc"])
            .categories(ALL)
            .subresources(SCALABLE)
            .build(),
        K::new::<corev1::PodTemplate>(&Generic).build(),
        // apps/v1
        K::new::<apps::Deployment>(&workloads::Deployment)
            .short(&["deploy"])
            .categories(ALL)
            .subresources(SCALABLE)
            .build(),
        K::new::<apps::ReplicaSet>(&workloads::ReplicaSet)
            .short(&["rs"])
            .categories(ALL)
            .subresources(SCALABLE)
            .build(),
        K::new::<apps::StatefulSet>(&workloads::StatefulSet)
            .short(&["sts"])
            .categories(ALL)
            .subresources(SCALABLE)
            .build(),
        K::new::<apps::DaemonSet>(&workloads::DaemonSet)
            .short(&["ds"])
            .categories(ALL)
            .subresources(STATUS)
            .build(),
        K::new::<apps::ControllerRevision>(&Generic).build(),
        // batch/v1
        K::new::<batch::Job>(&workloads::Job)
            .categories(ALL)
            .subresources(STATUS)
            .build(),
        K::new::<batch::CronJob>(&workloads::CronJob)
            .short(&["cj"])
            .categories(ALL)
            .subresources(STATUS)
            .build(),
        // autoscaling
        K::new::<autoscalingv2::HorizontalPodAutoscaler>(&WithGeneration)
            .short(&["hpa"])
            .categories(ALL)
            .subresources(STATUS)
            .build(),
        K::new::<autoscalingv1::HorizontalPodAutoscaler>(&WithGeneration)
            .short(&["hpa"])
            .categories(ALL)
            .subresources(STATUS)
            .stored_as("autoscaling/horizontalpodautoscalers", &convert::HPA_V1)
            .build(),
        // policy/v1
        K::new::<policy::PodDisruptionBudget>(&WithGeneration)
            .short(&["pdb"])
            .subresources(STATUS)
            .build(),
        // rbac.authorization.k8s.io/v1
        K::new::<rbac::ClusterRole>(&PathSegmentNames).build(),
        K::new::<rbac::ClusterRoleBinding>(&PathSegmentNames).build(),
        K::new::<rbac::Role>(&PathSegmentNames).build(),
        K::new::<rbac::RoleBinding>(&PathSegmentNames).build(),
        // coordination.k8s.io/v1
        K::new::<coordination::Lease>(&Generic).build(),
        // discovery.k8s.io/v1
        K::new::<discovery::EndpointSlice>(&Generic).build(),
        // networking.k8s.io/v1
        K::new::<networking::Ingress>(&WithGeneration)
            .short(&["ing"])
            .subresources(STATUS)
            .build(),
        K::new::<networking::IngressClass>(&Generic).build(),
        K::new::<networking::NetworkPolicy>(&WithGeneration)
            .short(&["netpol"])
            .build(),
        K::new::<networking::IPAddress>(&Generic)
            .short(&["ip"])
            .build(),
        K::new::<networking::ServiceCIDR>(&Generic)
            .subresources(STATUS)
            .build(),
        // storage.k8s.io/v1
        K::new::<storage::StorageClass>(&Generic)
            .short(&["sc"])
            .build(),
        K::new::<storage::CSIDriver>(&Generic).build(),
        K::new::<storage::CSINode>(&Generic).build(),
        K::new::<storage::CSIStorageCapacity>(&Generic).build(),
        K::new::<storage::VolumeAttachment>(&Generic)
            .subresources(STATUS)
            .build(),
        // certificates.k8s.io/v1
        K::new::<certificates::CertificateSigningRequest>(&Generic)
            .short(&["csr"])
            .subresources(&["approval", "status"])
            .build(),
        // events.k8s.io/v1
        K::new::<events::Event>(&core::EventsV1)
            .short(&["ev"])
            .stored_as("events", &convert::EVENTS_V1)
            .build(),
        // scheduling.k8s.io/v1
        K::new::<scheduling::PriorityClass>(&Generic)
            .short(&["pc"])
            .build(),
        // node.k8s.io/v1
        K::new::<node::RuntimeClass>(&Generic).build(),
    ]
}

/// Small helpers the strategies share.
pub(crate) mod util {
    use serde_json::{Map, Value};

    /// The object at `obj[key]`, created empty if missing or not an object.
    pub fn obj_mut<'a>(obj: &'a mut Value, key: &str) -> &'a mut Map<String, Value> {
        if !obj.is_object() {
            *obj = Value::Object(Map::new());
        }
        let m = obj.as_object_mut().expect("object");
        let e = m.entry(key).or_insert_with(|| Value::Object(Map::new()));
        if !e.is_object() {
            *e = Value::Object(Map::new());
        }
        e.as_object_mut().expect("object")
    }

    /// Sets `m[key] = v` unless it is already there (and not null).
    pub fn default_to(m: &mut Map<String, Value>, key: &str, v: impl Into<Value>) {
        match m.get(key) {
            Some(x) if !x.is_null() => {}
            _ => {
                m.insert(key.to_string(), v.into());
            }
        }
    }

    pub fn str_at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
        path.iter().try_fold(v, |v, k| v.get(k))?.as_str()
    }

    pub fn i64_at(v: &Value, path: &[&str]) -> Option<i64> {
        path.iter().try_fold(v, |v, k| v.get(k))?.as_i64()
    }

    pub fn arr_at<'a>(v: &'a Value, path: &[&str]) -> &'a [Value] {
        path.iter()
            .try_fold(v, |v, k| v.get(k))
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }

    /// An integer cell (0 when absent).
    pub fn int_cell(v: &Value, path: &[&str]) -> Value {
        Value::from(i64_at(v, path).unwrap_or(0))
    }
}
