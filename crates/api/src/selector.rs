//! Label selectors (equality- and set-based) and field selectors, parsed from query
//! strings as upstream's `labels.Parse` and `fields.ParseSelector` accept them.

use serde_json::{Map, Value};

/// One requirement of a label selector.
#[derive(Debug, Clone, PartialEq)]
pub enum Requirement {
    /// `key=value` or `key==value`.
    Eq(String, String),
    /// `key!=value`.
    NotEq(String, String),
    /// `key in (a,b)`.
    In(String, Vec<String>),
    /// `key notin (a,b)`.
    NotIn(String, Vec<String>),
    /// `key`.
    Exists(String),
    /// `!key`.
    DoesNotExist(String),
    /// `key>n` (node affinity's Gt).
    Gt(String, i64),
    /// `key<n` (node affinity's Lt).
    Lt(String, i64),
}

/// A parsed label selector; the empty selector matches everything.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LabelSelector(pub Vec<Requirement>);

impl LabelSelector {
    /// Parses `app=web,tier in (a,b),!legacy`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut p = Lexer {
            s: s.as_bytes(),
            i: 0,
        };
        let mut reqs = Vec::new();
        p.ws();
        if p.eof() {
            return Ok(Self(reqs));
        }
        loop {
            reqs.push(
                p.requirement()
                    .map_err(|e| format!("unable to parse requirement: {e}"))?,
            );
            p.ws();
            if p.eof() {
                break;
            }
            if !p.eat(b",") {
                return Err(format!(
                    "found '{}', expected: ',' or 'end of string'",
                    p.rest_token()
                ));
            }
        }
        Ok(Self(reqs))
    }

    /// Builds a selector from a `metav1.LabelSelector` object (matchLabels and
    /// matchExpressions); `None` or `{}` selects everything.
    pub fn from_object(sel: &Value) -> Result<Self, String> {
        let mut reqs = Vec::new();
        if let Some(m) = sel.get("matchLabels").and_then(Value::as_object) {
            for (k, v) in m {
                reqs.push(Requirement::Eq(
                    k.clone(),
                    v.as_str().unwrap_or("").to_string(),
                ));
            }
        }
        if let Some(exprs) = sel.get("matchExpressions").and_then(Value::as_array) {
            for e in exprs {
                let key = e
                    .get("key")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string();
                let values: Vec<String> = e
                    .get("values")
                    .and_then(Value::as_array)
                    .map(|a| {
                        a.iter()
                            .filter_map(|v| v.as_str().map(String::from))
                            .collect()
                    })
                    .unwrap_or_default();
                let op = e.get("operator").and_then(Value::as_str).unwrap_or("");
                reqs.push(match op {
                    "In" => Requirement::In(key, values),
                    "NotIn" => Requirement::NotIn(key, values),
                    "Exists" => Requirement::Exists(key),
                    "DoesNotExist" => Requirement::DoesNotExist(key),
                    other => {
                        return Err(format!("{other:?} is not a valid label selector operator"))
                    }
                });
            }
        }
        Ok(Self(reqs))
    }

    /// Whether it selects everything.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `labels` (an object of strings, or absent) satisfy every requirement.
    pub fn matches(&self, labels: Option<&Map<String, Value>>) -> bool {
        let get = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
        self.0.iter().all(|r| match r {
            Requirement::Eq(k, v) => get(k) == Some(v.as_str()),
            Requirement::NotEq(k, v) => get(k) != Some(v.as_str()),
            Requirement::In(k, vs) => get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
            Requirement::NotIn(k, vs) => get(k).is_none_or(|x| vs.iter().all(|v| v != x)),
            Requirement::Exists(k) => get(k).is_some(),
            Requirement::DoesNotExist(k) => get(k).is_none(),
            Requirement::Gt(k, n) => get(k)
                .and_then(|x| x.parse::<i64>().ok())
                .is_some_and(|x| x > *n),
            Requirement::Lt(k, n) => get(k)
                .and_then(|x| x.parse::<i64>().ok())
                .is_some_and(|x| x < *n),
        })
    }
}

/// A `metav1.LabelSelector` object in the query-string form (`a=b,c in (d)`), as the
/// Scale subresource and `kubectl get -o wide` show it.
pub fn selector_string(sel: &Value) -> String {
    let mut parts: Vec<String> = sel
        .get("matchLabels")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
        .collect();
    for e in sel
        .get("matchExpressions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let key = e.get("key").and_then(Value::as_str).unwrap_or("");
        let vals: Vec<&str> = e
            .get("values")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        parts.push(
            match e.get("operator").and_then(Value::as_str).unwrap_or("") {
                "In" => format!("{key} in ({})", vals.join(",")),
                "NotIn" => format!("{key} notin ({})", vals.join(",")),
                "Exists" => key.to_string(),
                _ => format!("!{key}"),
            },
        );
    }
    parts.join(",")
}

struct Lexer<'a> {
    s: &'a [u8],
    i: usize,
}

impl Lexer<'_> {
    fn ws(&mut self) {
        while self.i < self.s.len() && self.s[self.i].is_ascii_whitespace() {
            self.i += 1;
        }
    }
    fn eof(&self) -> bool {
        self.i >= self.s.len()
    }
    fn eat(&mut self, tok: &[u8]) -> bool {
        self.ws();
        if self.s[self.i..].starts_with(tok) {
            self.i += tok.len();
            true
        } else {
            false
        }
    }
    fn word(&mut self) -> String {
        self.ws();
        let start = self.i;
        while self.i < self.s.len() && !b" \t\n,()=!<>".contains(&self.s[self.i]) {
            self.i += 1;
        }
        String::from_utf8_lossy(&self.s[start..self.i]).into_owned()
    }
    fn rest_token(&self) -> String {
        let rest = &self.s[self.i..];
        let end = rest
            .iter()
            .position(|c| c.is_ascii_whitespace() || *c == b',')
            .unwrap_or(rest.len());
        String::from_utf8_lossy(&rest[..end.max(1).min(rest.len())]).into_owned()
    }
    fn key(&mut self) -> Result<String, String> {
        let k = self.word();
        if k.is_empty() {
            return Err(format!(
                "found '{}', expected: identifier",
                self.rest_token()
            ));
        }
        let errs = crate::names::qualified_name(&k);
        if !errs.is_empty() {
            return Err(format!("key: Invalid value: {k:?}: {}", errs.join("; ")));
        }
        Ok(k)
    }
    fn value(&mut self) -> Result<String, String> {
        let v = self.word();
        let errs = crate::names::label_value(&v);
        if !errs.is_empty() {
            return Err(format!(
                "values[0]: Invalid value: {v:?}: {}",
                errs.join("; ")
            ));
        }
        Ok(v)
    }
    fn set(&mut self) -> Result<Vec<String>, String> {
        if !self.eat(b"(") {
            return Err(format!("found '{}', expected: '('", self.rest_token()));
        }
        let mut vals = Vec::new();
        loop {
            vals.push(self.value()?);
            if self.eat(b")") {
                return Ok(vals);
            }
            if !self.eat(b",") {
                return Err(format!(
                    "found '{}', expected: ',' or ')'",
                    self.rest_token()
                ));
            }
        }
    }
    fn requirement(&mut self) -> Result<Requirement, String> {
        if self.eat(b"!") {
            return Ok(Requirement::DoesNotExist(self.key()?));
        }
        let key = self.key()?;
        self.ws();
        if self.eof() || self.s[self.i] == b',' {
            return Ok(Requirement::Exists(key));
        }
        if self.eat(b"==") || self.eat(b"=") {
            return Ok(Requirement::Eq(key, self.value()?));
        }
        if self.eat(b"!=") {
            return Ok(Requirement::NotEq(key, self.value()?));
        }
        for (op, gt) in [(&b">"[..], true), (&b"<"[..], false)] {
            if self.eat(op) {
                let w = self.word();
                let n: i64 = w.parse().map_err(|_| {
                    format!("for 'Gt', 'Lt' operators, the value must be an integer, got {w:?}")
                })?;
                return Ok(if gt {
                    Requirement::Gt(key, n)
                } else {
                    Requirement::Lt(key, n)
                });
            }
        }
        let save = self.i;
        match self.word().as_str() {
            "in" => Ok(Requirement::In(key, self.set()?)),
            "notin" => Ok(Requirement::NotIn(key, self.set()?)),
            _ => {
                self.i = save;
                Err(format!(
                    "found '{}', expected: in, notin, =, ==, !=, gt, lt",
                    self.rest_token()
                ))
            }
        }
    }
}

/// One term of a field selector.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldTerm {
    /// The field (`spec.nodeName`).
    pub field: String,
    /// The value it is compared with.
    pub value: String,
    /// `!=` rather than `=`.
    pub negate: bool,
}

/// A parsed field selector: `metadata.name=x,status.phase!=Running`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FieldSelector(pub Vec<FieldTerm>);

impl FieldSelector {
    /// Parses `a=b,c!=d`; the error is upstream's message.
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut terms = Vec::new();
        for part in split_unescaped(s) {
            let part = part.trim();
            if part.is_empty() {
                continue;
            }
            let (field, value, negate) = if let Some((f, v)) = part.split_once("!=") {
                (f, v, true)
            } else if let Some((f, v)) = part.split_once("==") {
                (f, v, false)
            } else if let Some((f, v)) = part.split_once('=') {
                (f, v, false)
            } else {
                return Err(format!(
                    "invalid selector: '{part}'; can't understand '{part}'"
                ));
            };
            terms.push(FieldTerm {
                field: field.trim().to_string(),
                value: unescape(value.trim()),
                negate,
            });
        }
        Ok(Self(terms))
    }

    /// Whether it selects everything.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The fields named by the selector, to check against the kind's supported ones.
    pub fn fields(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|t| t.field.as_str())
    }

    /// The value an exact `field=value` term requires, if any (lets callers narrow a
    /// scan, e.g. `metadata.name`).
    pub fn exact(&self, field: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|t| t.field == field && !t.negate)
            .map(|t| t.value.as_str())
    }

    /// Whether the object's field values (looked up by `get`) satisfy every term. A field
    /// that is absent reads as "".
    pub fn matches(&self, get: impl Fn(&str) -> Option<String>) -> bool {
        self.0.iter().all(|t| {
            let v = get(&t.field).unwrap_or_default();
            (v == t.value) != t.negate
        })
    }
}

fn split_unescaped(s: &str) -> Vec<String> {
    let mut parts = vec![String::new()];
    let mut esc = false;
    for c in s.chars() {
        if esc {
            parts.last_mut().unwrap().push('\\');
            parts.last_mut().unwrap().push(c);
            esc = false;
        } else if c == '\\' {
            esc = true;
        } else if c == ',' {
            parts.push(String::new());
        } else {
            parts.last_mut().unwrap().push(c);
        }
    }
    parts
}

fn unescape(s: &str) -> String {
    let mut out = String::new();
    let mut esc = false;
    for c in s.chars() {
        if esc {
            out.push(c);
            esc = false;
        } else if c == '\\' {
            esc = true;
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn labels(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn label_selectors() {
        let l = labels(json!({"app": "web", "tier": "front", "n": "5"}));
        let m = |s: &str| LabelSelector::parse(s).unwrap().matches(Some(&l));
        assert!(m(""));
        assert!(m("app=web"));
        assert!(m("app==web,tier"));
        assert!(!m("app!=web"));
        assert!(m("tier in (front, back)"));
        assert!(!m("tier notin (front)"));
        assert!(m("!legacy"));
        assert!(!m("legacy"));
        assert!(m("n>4,n<6"));
        assert!(LabelSelector::parse("app in web").is_err());
        assert!(LabelSelector::parse("a b").is_err());
        assert!(LabelSelector::parse("=x").is_err());
        assert!(LabelSelector::parse("app=-bad").is_err());
    }

    #[test]
    fn field_selectors() {
        let f = FieldSelector::parse("metadata.name=a,status.phase!=Running").unwrap();
        assert!(f.matches(|k| Some(if k == "metadata.name" { "a" } else { "Pending" }.into())));
        assert!(!f.matches(|k| Some(if k == "metadata.name" { "a" } else { "Running" }.into())));
        assert!(FieldSelector::parse("nonsense").is_err());
        assert_eq!(f.exact("metadata.name"), Some("a"));
    }

    #[test]
    fn object_selectors() {
        let s = LabelSelector::from_object(&json!({"matchLabels": {"a": "1"},
            "matchExpressions": [{"key": "b", "operator": "In", "values": ["2"]}]}))
        .unwrap();
        assert!(s.matches(Some(&labels(json!({"a": "1", "b": "2"})))));
        assert!(!s.matches(Some(&labels(json!({"a": "1"})))));
    }
}
