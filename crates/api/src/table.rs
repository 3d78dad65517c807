//! `meta.k8s.io/v1` Table output: column definitions and cell helpers.

use serde_json::{json, Value};

use crate::meta::{parse_time, ObjectMeta};

/// A `&'static [Column]` from column expressions (const-evaluated).
#[macro_export]
macro_rules! columns {
    ($($c:expr),* $(,)?) => {{
        const COLUMNS: &[$crate::table::Column] = &[$($c),*];
        COLUMNS
    }};
}

/// One column definition of a Table.
#[derive(Debug, Clone, Copy)]
pub struct Column {
    /// The column's header (`NAME`).
    pub name: &'static str,
    /// `string`, `integer`, `date`, ...
    pub kind: &'static str,
    /// `name`, or empty.
    pub format: &'static str,
    /// What the column shows.
    pub description: &'static str,
    /// 0 = always shown; 1 = only with `-o wide`.
    pub priority: u8,
}

/// A column shown always.
pub const fn col(name: &'static str, kind: &'static str, description: &'static str) -> Column {
    Column {
        name,
        kind,
        format: "",
        description,
        priority: 0,
    }
}

/// A column shown only with `-o wide`.
pub const fn wide(name: &'static str, kind: &'static str, description: &'static str) -> Column {
    Column {
        name,
        kind,
        format: "",
        description,
        priority: 1,
    }
}

/// The NAME column.
pub const NAME: Column = Column {
    name: "Name",
    kind: "string",
    format: "name",
    description: "Name must be unique within a namespace. Is required when creating resources, although some resources may allow a client to request the generation of an appropriate name automatically. Name is primarily intended for creation idempotence and configuration definition. Cannot be updated. More info: https://kubernetes.io/docs/concepts/overview/working-with-objects/names#names",
    priority: 0,
};

/// The AGE column.
pub const AGE: Column = col(
    "Age",
    "date",
    "CreationTimestamp is a timestamp representing the server time when this object was created.",
);

/// The columns of kinds without printers upstream.
pub const DEFAULT_COLUMNS: &[Column] = &[NAME, AGE];

/// NAME and AGE of an object (the columns of kinds without their own).
pub fn default_cells(obj: &Value) -> Vec<Value> {
    vec![name(obj), age(obj)]
}

/// The object's name as a cell.
pub fn name(obj: &Value) -> Value {
    Value::String(obj.name().to_string())
}

/// The age of an object as kubectl prints it (`5s`, `3m2s`, `4h`, `12d`).
pub fn age(obj: &Value) -> Value {
    match obj.meta_str("creationTimestamp").and_then(parse_time) {
        Some(t) => Value::String(human_duration(
            jiff::Timestamp::now().duration_since(t).as_secs(),
        )),
        None => Value::String("<unknown>".into()),
    }
}

/// Upstream's `duration.HumanDuration`.
pub fn human_duration(secs: i64) -> String {
    let s = secs.max(0);
    if s < 120 {
        return format!("{s}s");
    }
    let m = s / 60;
    if m < 10 {
        let rem = s % 60;
        return if rem == 0 {
            format!("{m}m")
        } else {
            format!("{m}m{rem}s")
        };
    }
    if m < 180 {
        return format!("{m}m");
    }
    let h = s / 3600;
    if h < 8 {
        let rm = (s % 3600) / 60;
        return if rm == 0 {
            format!("{h}h")
        } else {
            format!("{h}h{rm}m")
        };
    }
    if h < 48 {
        return format!("{h}h");
    }
    let d = h / 24;
    if h < 24 * 8 {
        let rh = h % 24;
        return if rh == 0 {
            format!("{d}d")
        } else {
            format!("{d}d{rh}h")
        };
    }
    if h < 24 * 365 * 2 {
        return format!("{d}d");
    }
    let y = d / 365;
    if h < 24 * 365 * 8 {
        let rd = d % 365;
        return if rd == 0 {
            format!("{y}y")
        } else {
            format!("{y}y{rd}d")
        };
    }
    format!("{y}y")
}

/// The column definitions of a Table.
pub fn column_definitions(columns: &[Column]) -> Value {
    columns
        .iter()
        .map(|c| {
            json!({"name": c.name, "type": c.kind, "format": c.format,
                   "description": c.description, "priority": c.priority})
        })
        .collect()
}

/// A string cell, "<none>" when empty, as kubectl prints.
pub fn or_none(s: Option<&str>) -> Value {
    match s {
        Some(s) if !s.is_empty() => Value::String(s.to_string()),
        _ => Value::String("<none>".into()),
    }
}

/// A comma-joined list cell, "<none>" when empty.
pub fn joined(items: impl IntoIterator<Item = String>) -> Value {
    let v: Vec<String> = items.into_iter().collect();
    or_none(Some(&v.join(",")))
}

/// `key=value,...` of a string map, "<none>" when empty.
pub fn map_cell(m: Option<&Value>) -> Value {
    joined(
        m.and_then(Value::as_object)
            .into_iter()
            .flatten()
            .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or(""))),
    )
}

#[cfg(test)]
mod tests {
    use super::human_duration;

    #[test]
    fn durations_as_kubectl_prints() {
        assert_eq!(human_duration(5), "5s");
        assert_eq!(human_duration(125), "2m5s");
        assert_eq!(human_duration(600), "10m");
        assert_eq!(human_duration(3 * 3600 + 60), "3h1m");
        assert_eq!(human_duration(30 * 3600), "30h");
        assert_eq!(human_duration(3 * 86400), "3d");
    }
}
