//! Parsing a resource request: which resource, namespace, name, subresource and verb,
//! and its query options (as upstream's RequestInfoFactory and ListOptions).

use http::Method;

/// What a request under `/api/v1` or `/apis/GROUP/VERSION` asks for.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RequestInfo {
    pub group: String,
    pub version: String,
    /// Empty for the group-version's resource list (discovery).
    pub resource: String,
    pub namespace: String,
    pub name: String,
    pub subresource: String,
    /// get, list, watch, create, update, patch, delete, deletecollection.
    pub verb: &'static str,
}

/// Parses a path under /api or /apis; `None` if it is not a resource path.
pub fn parse(method: &Method, path: &str, query: &Query) -> Option<RequestInfo> {
    let parts: Vec<&str> = path
        .trim_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    let (group, version, mut rest) = match parts.as_slice() {
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return None,
    };
    let mut info = RequestInfo {
        group: group.into(),
        version: version.into(),
        ..Default::default()
    };
    let mut watch = query.flag("watch");
    if rest.first() == Some(&"watch") {
        watch = true;
        rest = &rest[1..];
    }
    if rest.first() == Some(&"namespaces") && rest.len() > 1 {
        info.namespace = rest[1].to_string();
        if rest.len() > 2 && !matches!(rest[2], "status" | "finalize") {
            rest = &rest[2..];
        }
    }
    info.resource = rest.first().map(|s| s.to_string()).unwrap_or_default();
    info.name = rest.get(1).map(|s| s.to_string()).unwrap_or_default();
    info.subresource = rest.get(2).map(|s| s.to_string()).unwrap_or_default();
    if rest.len() > 3 && info.subresource != "proxy" {
        return Some(RequestInfo {
            resource: "\0invalid".into(),
            ..info
        });
    }
    if info.resource == "namespaces" {
        // /api/v1/namespaces/NAME names the namespace itself, not a scope.
        info.namespace.clear();
    }
    info.verb = match *method {
        Method::GET | Method::HEAD if watch => "watch",
        Method::GET | Method::HEAD if info.name.is_empty() => "list",
        Method::GET | Method::HEAD => "get",
        Method::POST => "create",
        Method::PUT => "update",
        Method::PATCH => "patch",
        Method::DELETE if info.name.is_empty() => "deletecollection",
        Method::DELETE => "delete",
        _ => "unknown",
    };
    Some(info)
}

/// The query parameters of a request.
#[derive(Debug, Clone, Default)]
pub struct Query(Vec<(String, String)>);

impl Query {
    pub fn parse(q: Option<&str>) -> Self {
        Query(
            form_urlencoded::parse(q.unwrap_or("").as_bytes())
                .into_owned()
                .collect(),
        )
    }
    /// Every pair, in order (repeated keys kept).
    pub fn pairs(&self) -> &[(String, String)] {
        &self.0
    }
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
    /// All values of a repeated parameter (`dryRun=All&dryRun=All`).
    pub fn all(&self, key: &str) -> Vec<&str> {
        self.0
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .collect()
    }
    /// A boolean parameter: `true`, `1` (and a bare key) are true.
    pub fn flag(&self, key: &str) -> bool {
        matches!(self.get(key), Some("true" | "1" | ""))
    }
    /// Drops parameters (to reuse a request's query for an internal list).
    pub fn remove(&mut self, keys: &[&str]) {
        self.0.retain(|(k, _)| !keys.contains(&k.as_str()));
    }
    pub fn has(&self, key: &str) -> bool {
        self.0.iter().any(|(k, _)| k == key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(method: Method, path: &str, q: &str) -> RequestInfo {
        parse(&method, path, &Query::parse(Some(q))).unwrap()
    }

    #[test]
    fn paths() {
        let r = p(Method::GET, "/api/v1/namespaces/default/pods/web/log", "");
        assert_eq!(
            (
                r.namespace.as_str(),
                r.resource.as_str(),
                r.name.as_str(),
                r.subresource.as_str(),
                r.verb
            ),
            ("default", "pods", "web", "log", "get")
        );
        let r = p(Method::GET, "/apis/apps/v1/deployments", "watch=true");
        assert_eq!(
            (r.group.as_str(), r.resource.as_str(), r.verb),
            ("apps", "deployments", "watch")
        );
        let r = p(Method::GET, "/api/v1/namespaces/kube-system", "");
        assert_eq!(
            (r.resource.as_str(), r.name.as_str(), r.namespace.as_str()),
            ("namespaces", "kube-system", "")
        );
        let r = p(Method::PUT, "/api/v1/namespaces/x/finalize", "");
        assert_eq!(
            (r.resource.as_str(), r.name.as_str(), r.subresource.as_str()),
            ("namespaces", "x", "finalize")
        );
        let r = p(Method::GET, "/api/v1/watch/namespaces/default/pods", "");
        assert_eq!((r.resource.as_str(), r.verb), ("pods", "watch"));
        let r = p(Method::DELETE, "/api/v1/namespaces/default/configmaps", "");
        assert_eq!(r.verb, "deletecollection");
        assert!(parse(&Method::GET, "/version", &Query::default()).is_none());
    }
}
