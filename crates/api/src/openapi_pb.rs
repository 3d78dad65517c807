//! The OpenAPI v2 document in its protobuf form (gnostic's `openapi.v2.Document`), which
//! kubectl before 1.30 downloads to validate and to check for `fieldValidation`.

use serde_json::Value;

/// A protobuf message being written.
#[derive(Default)]
struct Msg(Vec<u8>);

impl Msg {
    fn varint(&mut self, mut v: u64) {
        loop {
            let b = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                self.0.push(b);
                return;
            }
            self.0.push(b | 0x80);
        }
    }
    fn bytes(&mut self, tag: u64, b: &[u8]) {
        self.varint(tag << 3 | 2);
        self.varint(b.len() as u64);
        self.0.extend_from_slice(b);
    }
    fn string(&mut self, tag: u64, s: &str) {
        if !s.is_empty() {
            self.bytes(tag, s.as_bytes());
        }
    }
    fn opt_str(&mut self, tag: u64, v: Option<&Value>) {
        if let Some(s) = v.and_then(Value::as_str) {
            self.string(tag, s);
        }
    }
    fn bool(&mut self, tag: u64, b: bool) {
        if b {
            self.varint(tag << 3);
            self.varint(1);
        }
    }
    fn msg(&mut self, tag: u64, m: Msg) {
        self.bytes(tag, &m.0);
    }
}

/// `NamedAny` vendor extensions (`x-*` keys) of a JSON object, values as YAML (JSON is
/// valid YAML).
fn extensions(m: &mut Msg, tag: u64, obj: &Value) {
    for (k, v) in obj
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(k, _)| k.starts_with("x-"))
    {
        let mut any = Msg::default();
        any.string(2, &v.to_string());
        let mut named = Msg::default();
        named.string(1, k);
        named.msg(2, any);
        m.msg(tag, named);
    }
}

fn schema(s: &Value) -> Msg {
    let mut m = Msg::default();
    m.opt_str(1, s.get("$ref"));
    m.opt_str(2, s.get("format"));
    m.opt_str(3, s.get("title"));
    m.opt_str(4, s.get("description"));
    for r in s
        .get("required")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        m.string(19, r.as_str().unwrap_or(""));
    }
    for e in s
        .get("enum")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let mut any = Msg::default();
        any.string(2, &e.to_string());
        m.msg(20, any);
    }
    match s.get("additionalProperties") {
        Some(Value::Bool(b)) => {
            let mut a = Msg::default();
            a.bool(2, *b);
            m.msg(21, a);
        }
        Some(ap @ Value::Object(_)) => {
            let mut a = Msg::default();
            a.msg(1, schema(ap));
            m.msg(21, a);
        }
        _ => {}
    }
    let types: Vec<&str> = match s.get("type") {
        Some(Value::String(t)) => vec![t.as_str()],
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(Value::as_str)
            .filter(|t| *t != "null")
            .collect(),
        _ => Vec::new(),
    };
    if !types.is_empty() {
        let mut t = Msg::default();
        for ty in types {
            t.string(1, ty);
        }
        m.msg(22, t);
    }
    if let Some(items) = s.get("items") {
        let mut i = Msg::default();
        i.msg(1, schema(items));
        m.msg(23, i);
    }
    for a in s
        .get("allOf")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        m.msg(24, schema(a));
    }
    if let Some(props) = s.get("properties").and_then(Value::as_object) {
        let mut p = Msg::default();
        for (name, ps) in props {
            let mut named = Msg::default();
            named.string(1, name);
            named.msg(2, schema(ps));
            p.msg(1, named);
        }
        m.msg(25, p);
    }
    extensions(&mut m, 31, s);
    m
}

fn parameter(p: &Value) -> Msg {
    let mut param = Msg::default();
    if p.get("in").and_then(Value::as_str) == Some("body") {
        let mut b = Msg::default();
        b.opt_str(1, p.get("description"));
        b.opt_str(2, p.get("name"));
        b.string(3, "body");
        b.bool(4, p.get("required") == Some(&Value::Bool(true)));
        if let Some(s) = p.get("schema") {
            b.msg(5, schema(s));
        }
        param.msg(1, b);
    } else {
        let path = p.get("in").and_then(Value::as_str) == Some("path");
        let mut q = Msg::default();
        q.bool(1, p.get("required") == Some(&Value::Bool(true)));
        q.opt_str(2, p.get("in"));
        q.opt_str(3, p.get("description"));
        q.opt_str(4, p.get("name"));
        q.opt_str(if path { 5 } else { 6 }, p.get("type"));
        let mut nb = Msg::default();
        nb.msg(if path { 4 } else { 3 }, q);
        param.msg(2, nb);
    }
    let mut item = Msg::default();
    item.msg(1, param);
    item
}

fn operation(op: &Value) -> Msg {
    let mut m = Msg::default();
    for t in op
        .get("tags")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        m.string(1, t.as_str().unwrap_or(""));
    }
    m.opt_str(3, op.get("description"));
    m.opt_str(5, op.get("operationId"));
    for p in op
        .get("parameters")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        m.msg(8, parameter(p));
    }
    let mut responses = Msg::default();
    for (code, r) in op
        .get("responses")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
    {
        let mut resp = Msg::default();
        resp.opt_str(1, r.get("description"));
        if let Some(s) = r.get("schema") {
            let mut si = Msg::default();
            si.msg(1, schema(s));
            resp.msg(2, si);
        }
        let mut rv = Msg::default();
        rv.msg(1, resp);
        let mut named = Msg::default();
        named.string(1, code);
        named.msg(2, rv);
        responses.msg(1, named);
    }
    m.msg(9, responses);
    extensions(&mut m, 13, op);
    m
}

/// Encodes a Swagger 2.0 JSON document as `openapi.v2.Document`.
pub fn encode_v2(doc: &Value) -> Vec<u8> {
    let mut d = Msg::default();
    d.opt_str(1, doc.get("swagger"));
    let mut info = Msg::default();
    info.opt_str(1, doc.pointer("/info/title"));
    info.opt_str(2, doc.pointer("/info/version"));
    d.msg(2, info);
    let mut paths = Msg::default();
    for (p, item) in doc
        .get("paths")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
    {
        let mut pi = Msg::default();
        for (verb, tag) in [
            ("get", 2),
            ("put", 3),
            ("post", 4),
            ("delete", 5),
            ("patch", 8),
        ] {
            if let Some(op) = item.get(verb) {
                pi.msg(tag, operation(op));
            }
        }
        for par in item
            .get("parameters")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            pi.msg(9, parameter(par));
        }
        let mut named = Msg::default();
        named.string(1, p);
        named.msg(2, pi);
        paths.msg(2, named);
    }
    d.msg(8, paths);
    let mut defs = Msg::default();
    for (name, s) in doc
        .get("definitions")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
    {
        let mut named = Msg::default();
        named.string(1, name);
        named.msg(2, schema(s));
        defs.msg(1, named);
    }
    d.msg(9, defs);
    d.0
}
