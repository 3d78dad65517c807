//! Prometheus metrics: requests by verb, resource and code, request latency, open
//! watches and datastore latency, in the text exposition format at `/metrics`.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::time::Duration;

const BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

#[derive(Default, Clone)]
struct Histogram {
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn observe(&mut self, secs: f64) {
        if self.counts.is_empty() {
            self.counts = vec![0; BUCKETS.len()];
        }
        for (i, b) in BUCKETS.iter().enumerate() {
            if secs <= *b {
                self.counts[i] += 1;
            }
        }
        self.sum += secs;
        self.count += 1;
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        for (i, b) in BUCKETS.iter().enumerate() {
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{sep}le=\"{b}\"}} {}",
                self.counts.get(i).copied().unwrap_or(0)
            );
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}",
            self.count
        );
        let _ = writeln!(out, "{name}_sum{{{labels}}} {}", self.sum);
        let _ = writeln!(out, "{name}_count{{{labels}}} {}", self.count);
    }
}

#[derive(Default)]
struct Inner {
    requests: BTreeMap<(String, String, u16), u64>,
    latency: BTreeMap<(String, String), Histogram>,
    watches: BTreeMap<String, i64>,
    store: BTreeMap<&'static str, Histogram>,
}

/// The apiserver's metrics registry.
#[derive(Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
}

impl Metrics {
    pub fn request(&self, verb: &str, resource: &str, code: u16, elapsed: Duration) {
        let mut m = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        *m.requests
            .entry((verb.to_string(), resource.to_string(), code))
            .or_default() += 1;
        if verb != "WATCH" {
            m.latency
                .entry((verb.to_string(), resource.to_string()))
                .or_default()
                .observe(elapsed.as_secs_f64());
        }
    }

    pub fn watch_opened(&self, resource: &str) {
        let mut m = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        *m.watches.entry(resource.to_string()).or_default() += 1;
    }

    fn watch_closed(&self, resource: &str) {
        let mut m = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        *m.watches.entry(resource.to_string()).or_default() -= 1;
    }

    pub fn store_op(&self, op: &'static str, elapsed: Duration) {
        let mut m = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        m.store
            .entry(op)
            .or_default()
            .observe(elapsed.as_secs_f64());
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let m = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = String::new();
        out.push_str("# HELP apiserver_request_total Counter of apiserver requests broken out for each verb, resource and HTTP response code.\n# TYPE apiserver_request_total counter\n");
        for ((verb, resource, code), n) in &m.requests {
            let _ = writeln!(out, "apiserver_request_total{{code=\"{code}\",resource=\"{resource}\",verb=\"{verb}\"}} {n}");
        }
        out.push_str("# HELP apiserver_request_duration_seconds Response latency distribution in seconds for each verb and resource.\n# TYPE apiserver_request_duration_seconds histogram\n");
        for ((verb, resource), h) in &m.latency {
            h.render(
                &mut out,
                "apiserver_request_duration_seconds",
                &format!("resource=\"{resource}\",verb=\"{verb}\""),
            );
        }
        out.push_str("# HELP apiserver_registered_watchers Number of currently registered watchers for a given resource.\n# TYPE apiserver_registered_watchers gauge\n");
        for (resource, n) in &m.watches {
            let _ = writeln!(
                out,
                "apiserver_registered_watchers{{resource=\"{resource}\"}} {n}"
            );
        }
        out.push_str("# HELP rkube_store_request_duration_seconds Datastore request latency in seconds for each operation.\n# TYPE rkube_store_request_duration_seconds histogram\n");
        for (op, h) in &m.store {
            h.render(
                &mut out,
                "rkube_store_request_duration_seconds",
                &format!("operation=\"{op}\""),
            );
        }
        out
    }
}

/// Counts a watch as open until dropped.
pub struct WatchGuard<'a> {
    pub metrics: &'a Metrics,
    pub resource: &'a str,
}

impl Drop for WatchGuard<'_> {
    fn drop(&mut self) {
        self.metrics.watch_closed(self.resource);
    }
}
