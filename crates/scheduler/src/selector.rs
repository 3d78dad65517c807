//! Label selectors (`matchLabels` and `matchExpressions`) against label maps.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

/// Whether `labels` satisfy the selector (an empty selector matches everything; a missing
/// one, nothing — callers decide which applies).
pub fn matches(sel: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let by_labels = sel
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    by_labels
        && sel.match_expressions.iter().flatten().all(|e| {
            let values = e.values.as_deref().unwrap_or(&[]);
            let v = labels.get(&e.key);
            match e.operator.as_str() {
                "In" => v.is_some_and(|v| values.contains(v)),
                "NotIn" => v.is_none_or(|v| !values.contains(v)),
                "Exists" => v.is_some(),
                "DoesNotExist" => v.is_none(),
                _ => false,
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn labels_and_expressions() {
        let labels: BTreeMap<String, String> = [
            ("app".to_string(), "web".to_string()),
            ("tier".to_string(), "fe".to_string()),
        ]
        .into();
        let sel = |v: serde_json::Value| -> LabelSelector { serde_json::from_value(v).unwrap() };
        assert!(matches(&sel(json!({})), &labels));
        assert!(matches(
            &sel(json!({"matchLabels": {"app": "web"}})),
            &labels
        ));
        assert!(!matches(
            &sel(json!({"matchLabels": {"app": "db"}})),
            &labels
        ));
        assert!(matches(
            &sel(
                json!({"matchExpressions": [{"key": "tier", "operator": "In", "values": ["fe", "be"]}]})
            ),
            &labels
        ));
        assert!(!matches(
            &sel(
                json!({"matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["fe"]}]})
            ),
            &labels
        ));
        assert!(matches(
            &sel(json!({"matchExpressions": [{"key": "x", "operator": "DoesNotExist"}]})),
            &labels
        ));
    }
}
