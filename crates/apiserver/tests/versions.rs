//! Several versions of one resource see the same objects: autoscaling/v1 and v2
//! HorizontalPodAutoscalers, core/v1 and events.k8s.io/v1 Events, through GET, LIST,
//! WATCH, updates and deletes.

mod common;

use common::TestServer;
use serde_json::{json, Value};

fn ok(r: reqwest::blocking::Response, code: u16) -> Value {
    let status = r.status().as_u16();
    let body: Value = r.json().unwrap();
    assert_eq!(status, code, "{body}");
    body
}

#[test]
fn hpa_versions_share_objects() {
    let srv = TestServer::start();
    let c = srv.client();
    let v1 = format!(
        "{}/apis/autoscaling/v1/namespaces/default/horizontalpodautoscalers",
        srv.url()
    );
    let v2 = format!(
        "{}/apis/autoscaling/v2/namespaces/default/horizontalpodautoscalers",
        srv.url()
    );
    // A v2 watch from now sees what v1 creates, in v2 form.
    let start = ok(c.get(&v2).send().unwrap(), 200)["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();
    let watch = {
        let (c, url) = (
            c.clone(),
            format!("{v2}?watch=1&resourceVersion={start}&timeoutSeconds=2"),
        );
        std::thread::spawn(move || c.get(url).send().unwrap().text().unwrap())
    };
    std::thread::sleep(std::time::Duration::from_millis(300));
    let created = ok(
        c.post(&v1)
            .json(&json!({"apiVersion": "autoscaling/v1", "kind": "HorizontalPodAutoscaler",
                "metadata": {"name": "web"},
                "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
                         "minReplicas": 1, "maxReplicas": 4, "targetCPUUtilizationPercentage": 50}}))
            .send()
            .unwrap(),
        201,
    );
    assert_eq!(created["apiVersion"], "autoscaling/v1");
    assert_eq!(created["spec"]["targetCPUUtilizationPercentage"], 50);

    let got = ok(c.get(format!("{v2}/web")).send().unwrap(), 200);
    assert_eq!(got["apiVersion"], "autoscaling/v2");
    assert_eq!(
        got["spec"]["metrics"],
        json!([{"type": "Resource", "resource": {"name": "cpu",
            "target": {"type": "Utilization", "averageUtilization": 50}}}])
    );
    assert!(got["spec"].get("targetCPUUtilizationPercentage").is_none());
    let listed = ok(c.get(&v2).send().unwrap(), 200);
    assert_eq!(
        listed["items"][0]["spec"]["metrics"],
        got["spec"]["metrics"]
    );
    assert_eq!(listed["items"][0]["apiVersion"], "autoscaling/v2");
    let events: Vec<Value> = watch
        .join()
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["object"]["apiVersion"], "autoscaling/v2");
    assert_eq!(
        events[0]["object"]["spec"]["metrics"],
        got["spec"]["metrics"]
    );

    // v2 adds a memory metric v1 cannot express; v1 keeps it through an update.
    let mut updated = got.clone();
    updated["spec"]["metrics"]
        .as_array_mut()
        .unwrap()
        .push(json!({"type": "Resource", "resource": {"name": "memory",
            "target": {"type": "AverageValue", "averageValue": "100Mi"}}}));
    ok(
        c.put(format!("{v2}/web")).json(&updated).send().unwrap(),
        200,
    );
    let mut old = ok(c.get(format!("{v1}/web")).send().unwrap(), 200);
    assert_eq!(old["spec"]["targetCPUUtilizationPercentage"], 50);
    old["spec"]["maxReplicas"] = json!(6);
    ok(c.put(format!("{v1}/web")).json(&old).send().unwrap(), 200);
    let now = ok(c.get(format!("{v2}/web")).send().unwrap(), 200);
    assert_eq!(now["spec"]["maxReplicas"], 6);
    assert_eq!(now["spec"]["metrics"], updated["spec"]["metrics"]);
    assert!(now["metadata"].get("annotations").is_none());

    // Deleted through v1, gone from v2.
    ok(c.delete(format!("{v1}/web")).send().unwrap(), 200);
    assert_eq!(
        c.get(format!("{v2}/web")).send().unwrap().status().as_u16(),
        404
    );
}

#[test]
fn events_api_events_are_core_events() {
    let srv = TestServer::start();
    let c = srv.client();
    let new = format!(
        "{}/apis/events.k8s.io/v1/namespaces/default/events",
        srv.url()
    );
    let core = format!("{}/api/v1/namespaces/default/events", srv.url());
    ok(
        c.post(&new)
            .json(&json!({"apiVersion": "events.k8s.io/v1", "kind": "Event",
                "metadata": {"name": "p.1"},
                "eventTime": "2026-11-22T10:00:00.000000Z",
                "regarding": {"apiVersion": "v1", "kind": "Pod", "name": "p", "namespace": "default"},
                "reason": "Pulled", "note": "Successfully pulled image", "type": "Normal",
                "action": "Pull", "reportingController": "kubelet", "reportingInstance": "node-1"}))
            .send()
            .unwrap(),
        201,
    );
    // What `kubectl describe pod p` asks for.
    let listed = ok(
        c.get(format!(
            "{core}?fieldSelector=involvedObject.name%3Dp,involvedObject.kind%3DPod"
        ))
        .send()
        .unwrap(),
        200,
    );
    let items = listed["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{listed}");
    assert_eq!(items[0]["apiVersion"], "v1");
    assert_eq!(items[0]["message"], "Successfully pulled image");
    assert_eq!(items[0]["reportingComponent"], "kubelet");
    // And back: a core event read through events.k8s.io.
    ok(
        c.post(&core)
            .json(&json!({"metadata": {"name": "p.2"},
                "involvedObject": {"kind": "Pod", "name": "p", "namespace": "default"},
                "reason": "Started", "message": "Started container", "type": "Normal",
                "source": {"component": "kubelet"}}))
            .send()
            .unwrap(),
        201,
    );
    let got = ok(c.get(format!("{new}/p.2")).send().unwrap(), 200);
    assert_eq!(got["apiVersion"], "events.k8s.io/v1");
    assert_eq!(got["note"], "Started container");
    assert_eq!(got["regarding"]["name"], "p");
    assert_eq!(got["deprecatedSource"]["component"], "kubelet");
    let all = ok(c.get(&new).send().unwrap(), 200);
    assert_eq!(all["items"].as_array().unwrap().len(), 2);
}
