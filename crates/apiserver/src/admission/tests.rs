//! Unit tests of the admission chain and of each plugin, on a real (embedded) store.

use serde_json::json;

use super::*;
use crate::test_state;

fn admin() -> User {
    User {
        name: "admin".into(),
        groups: vec!["system:masters".into()],
    }
}

fn attrs<'a>(
    state: &'a State,
    user: &'a User,
    resource: (&str, &str),
    operation: Operation,
    namespace: &'a str,
    object: Option<&'a mut Value>,
    old: Option<&'a Value>,
) -> Attributes<'a> {
    let info = state
        .registry
        .get(resource.0, "v1", resource.1)
        .expect("served");
    Attributes {
        user,
        operation,
        info,
        subresource: "",
        namespace,
        name: "",
        object,
        old,
        dry_run: false,
    }
}

#[test]
fn the_default_chain_is_upstreams_order_of_what_we_have() {
    let chain = Chain::new(&AdmissionConfig::default()).unwrap();
    assert_eq!(
        chain.names(),
        ["NamespaceLifecycle", "Priority", "DefaultTolerationSeconds"]
    );
    let chain = Chain::new(&AdmissionConfig {
        enable: vec!["DenyServiceExternalIPs".into(), "AlwaysPullImages".into()],
        disable: vec!["Priority".into()],
    })
    .unwrap();
    assert_eq!(
        chain.names(),
        [
            "NamespaceLifecycle",
            "AlwaysPullImages",
            "DefaultTolerationSeconds",
            "DenyServiceExternalIPs"
        ]
    );
}

#[test]
fn bad_flags_are_refused_with_upstreams_words() {
    let e = Chain::new(&AdmissionConfig {
        enable: vec!["Nope".into()],
        disable: vec![],
    })
    .err()
    .unwrap();
    assert_eq!(
        e.to_string(),
        "enable-admission-plugins plugin \"Nope\" is unknown"
    );
    let e = Chain::new(&AdmissionConfig {
        enable: vec!["Priority".into()],
        disable: vec!["Priority".into()],
    })
    .err()
    .unwrap();
    assert!(matches!(e, AdmissionConfigError::Both(_)), "{e}");
    // Known upstream but not here yet: an error, not a silent no-op.
    let e = Chain::new(&AdmissionConfig {
        enable: vec!["NodeRestriction".into()],
        disable: vec![],
    })
    .err()
    .unwrap();
    assert_eq!(
        e,
        AdmissionConfigError::NotAvailable("NodeRestriction".into())
    );
    // Disabling one we do not have is fine.
    assert!(Chain::new(&AdmissionConfig {
        enable: vec![],
        disable: vec!["ResourceQuota".into(), "ServiceAccount".into()],
    })
    .is_ok());
}

#[tokio::test]
async fn namespace_lifecycle() {
    let (state, _dir) = test_state(&AdmissionConfig::default()).await;
    let user = admin();
    let p = namespace_lifecycle::NamespaceLifecycle;
    let mut cm = json!({"metadata": {"name": "c"}});
    // A namespace that does not exist: 404 for the namespace.
    let mut a = attrs(
        &state,
        &user,
        ("", "configmaps"),
        Operation::Create,
        "nope",
        Some(&mut cm),
        None,
    );
    let e = p.admit(&state, &mut a).await.unwrap_err();
    assert_eq!(
        (e.code, e.message.as_str()),
        (404, "namespaces \"nope\" not found")
    );
    let mut a = attrs(
        &state,
        &user,
        ("", "configmaps"),
        Operation::Create,
        "default",
        Some(&mut cm),
        None,
    );
    p.admit(&state, &mut a).await.unwrap();
    // A terminating namespace takes nothing new.
    let ns_info = state.registry.get("", "v1", "namespaces").unwrap();
    let key = crate::storage::key(ns_info, "", "default");
    let (mut ns, rev) = crate::storage::get(&state.store, ns_info, "", "default")
        .await
        .unwrap();
    ns["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
    state
        .store
        .update(key.as_bytes(), crate::storage::encode(&ns), Some(rev), None)
        .await
        .unwrap();
    let mut a = attrs(
        &state,
        &user,
        ("", "configmaps"),
        Operation::Create,
        "default",
        Some(&mut cm),
        None,
    );
    let e = p.admit(&state, &mut a).await.unwrap_err();
    assert_eq!(e.code, 403);
    assert_eq!(
        e.message,
        "configmaps \"c\" is forbidden: unable to create new content in namespace default because it is being terminated"
    );
    assert_eq!(e.details["causes"][0]["reason"], "NamespaceTerminating");
    // Updates and deletes there still pass.
    let old = cm.clone();
    let mut a = attrs(
        &state,
        &user,
        ("", "configmaps"),
        Operation::Update,
        "default",
        Some(&mut cm),
        Some(&old),
    );
    p.admit(&state, &mut a).await.unwrap();
    // The system namespaces are never deleted.
    let mut a = attrs(
        &state,
        &user,
        ("", "namespaces"),
        Operation::Delete,
        "",
        None,
        Some(&ns),
    );
    a.name = "kube-system";
    let e = p.admit(&state, &mut a).await.unwrap_err();
    assert_eq!(
        e.message,
        "namespaces \"kube-system\" is forbidden: this namespace may not be deleted"
    );
    a.name = "team-a";
    p.admit(&state, &mut a).await.unwrap();
}

#[tokio::test]
async fn priority() {
    let (state, _dir) = test_state(&AdmissionConfig::default()).await;
    let user = admin();
    let p = priority::Priority;
    let mut pod =
        json!({"metadata": {"name": "p"}, "spec": {"priorityClassName": "system-node-critical"}});
    let mut a = attrs(
        &state,
        &user,
        ("", "pods"),
        Operation::Create,
        "default",
        Some(&mut pod),
        None,
    );
    p.admit(&state, &mut a).await.unwrap();
    assert_eq!(pod["spec"]["priority"], 2_000_001_000);
    assert_eq!(pod["spec"]["preemptionPolicy"], "PreemptLowerPriority");
    // An update that leaves them out keeps them.
    let old = pod.clone();
    let mut new = json!({"metadata": {"name": "p"}, "spec": {}});
    let mut a = attrs(
        &state,
        &user,
        ("", "pods"),
        Operation::Update,
        "default",
        Some(&mut new),
        Some(&old),
    );
    p.admit(&state, &mut a).await.unwrap();
    assert_eq!(new["spec"]["priority"], 2_000_001_000);
    // An unknown class and a contradicting priority are refused.
    let mut bad = json!({"metadata": {"name": "p"}, "spec": {"priorityClassName": "gold"}});
    let mut a = attrs(
        &state,
        &user,
        ("", "pods"),
        Operation::Create,
        "default",
        Some(&mut bad),
        None,
    );
    let e = p.admit(&state, &mut a).await.unwrap_err();
    assert_eq!(
        e.message,
        "pods \"p\" is forbidden: no PriorityClass with name gold was found"
    );
    let mut bad = json!({"metadata": {"name": "p"}, "spec": {"priority": 7}});
    let mut a = attrs(
        &state,
        &user,
        ("", "pods"),
        Operation::Create,
        "default",
        Some(&mut bad),
        None,
    );
    assert_eq!(p.admit(&state, &mut a).await.unwrap_err().code, 403);
    // One global default only.
    let info = state
        .registry
        .get("scheduling.k8s.io", "v1", "priorityclasses")
        .unwrap();
    let class = json!({"metadata": {"name": "first"}, "value": 5, "globalDefault": true});
    let key = crate::storage::key(info, "", "first");
    state
        .store
        .create(key.as_bytes(), crate::storage::encode(&class), None)
        .await
        .unwrap();
    let mut second = json!({"metadata": {"name": "second"}, "value": 6, "globalDefault": true});
    let a = Attributes {
        info,
        ..attrs(
            &state,
            &user,
            ("", "pods"),
            Operation::Create,
            "",
            Some(&mut second),
            None,
        )
    };
    let e = p.validate(&state, &a).await.unwrap_err();
    assert_eq!(
        e.message,
        "priorityclasses.scheduling.k8s.io \"second\" is forbidden: PriorityClass first is already marked as default. Only one default can exist"
    );
    // The default now applies to pods without a class.
    let mut plain = json!({"metadata": {"name": "q"}, "spec": {}});
    let mut a = attrs(
        &state,
        &user,
        ("", "pods"),
        Operation::Create,
        "default",
        Some(&mut plain),
        None,
    );
    p.admit(&state, &mut a).await.unwrap();
    assert_eq!(plain["spec"]["priority"], 5);
    assert_eq!(plain["spec"]["priorityClassName"], "first");
}

#[tokio::test]
async fn default_toleration_seconds() {
    let (state, _dir) = test_state(&AdmissionConfig::default()).await;
    let user = admin();
    let p = default_toleration_seconds::DefaultTolerationSeconds;
    let mut pod = json!({"spec": {"tolerations": [
        {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 5}
    ]}});
    let mut a = attrs(
        &state,
        &user,
        ("", "pods"),
        Operation::Create,
        "default",
        Some(&mut pod),
        None,
    );
    p.admit(&state, &mut a).await.unwrap();
    assert_eq!(
        pod["spec"]["tolerations"],
        json!([
            {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 5},
            {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}
        ])
    );
    // A toleration of everything covers both.
    let mut pod = json!({"spec": {"tolerations": [{"operator": "Exists"}]}});
    let mut a = attrs(
        &state,
        &user,
        ("", "pods"),
        Operation::Create,
        "default",
        Some(&mut pod),
        None,
    );
    p.admit(&state, &mut a).await.unwrap();
    assert_eq!(pod["spec"]["tolerations"].as_array().unwrap().len(), 1);
    // Other resources are left alone.
    let mut cm = json!({"spec": {}});
    let mut a = attrs(
        &state,
        &user,
        ("", "configmaps"),
        Operation::Create,
        "default",
        Some(&mut cm),
        None,
    );
    p.admit(&state, &mut a).await.unwrap();
    assert_eq!(cm, json!({"spec": {}}));
}

#[tokio::test]
async fn always_pull_images_and_deny_external_ips() {
    let (state, _dir) = test_state(&AdmissionConfig::default()).await;
    let user = admin();
    let mut pod = json!({"spec": {"containers": [{"name": "a", "image": "x", "imagePullPolicy": "Never"}],
        "initContainers": [{"name": "i", "image": "y"}]}});
    let mut a = attrs(
        &state,
        &user,
        ("", "pods"),
        Operation::Create,
        "default",
        Some(&mut pod),
        None,
    );
    always_pull_images::AlwaysPullImages
        .admit(&state, &mut a)
        .await
        .unwrap();
    assert_eq!(pod["spec"]["containers"][0]["imagePullPolicy"], "Always");
    assert_eq!(
        pod["spec"]["initContainers"][0]["imagePullPolicy"],
        "Always"
    );

    let p = deny_service_external_ips::DenyServiceExternalIPs;
    let old = json!({"metadata": {"name": "s"}, "spec": {"externalIPs": ["192.0.2.1"]}});
    let mut same = old.clone();
    let a = attrs(
        &state,
        &user,
        ("", "services"),
        Operation::Update,
        "default",
        Some(&mut same),
        Some(&old),
    );
    p.validate(&state, &a).await.unwrap();
    let mut more =
        json!({"metadata": {"name": "s"}, "spec": {"externalIPs": ["192.0.2.1", "192.0.2.2"]}});
    let a = attrs(
        &state,
        &user,
        ("", "services"),
        Operation::Update,
        "default",
        Some(&mut more),
        Some(&old),
    );
    let e = p.validate(&state, &a).await.unwrap_err();
    assert_eq!(
        e.message,
        "services \"s\" is forbidden: Use of external IPs is denied by admission control"
    );
}
