//! Index names: the strftime pattern applied to each record's time, and the composable index
//! template the shipper installs for them.

use chrono::format::{Item, StrftimeItems};

/// The index name pattern, parsed once; strftime on the record's time (UTC).
pub struct IndexName {
    items: Vec<Item<'static>>,
    fixed: Option<String>,
}

impl IndexName {
    /// `pattern` was checked by the config (no invalid escape).
    pub fn new(pattern: &str) -> IndexName {
        let items: Vec<Item<'static>> = StrftimeItems::new(pattern).map(|i| i.to_owned()).collect();
        let fixed = (!pattern.contains('%')).then(|| pattern.to_string());
        IndexName { items, fixed }
    }

    pub fn for_time(&self, time_ns: i64) -> String {
        if let Some(f) = &self.fixed {
            return f.clone();
        }
        let t = chrono::DateTime::from_timestamp(
            time_ns.div_euclid(1_000_000_000),
            time_ns.rem_euclid(1_000_000_000) as u32,
        )
        .unwrap_or_default();
        use std::fmt::Write;
        let mut s = String::new();
        // An invalid escape would make Display fail; the config rejects those.
        let _ = write!(s, "{}", t.format_with_items(self.items.iter()));
        s
    }
}

/// The template's `index_patterns` for an index name pattern: its fixed part then `*`.
pub fn template_patterns(index: &str) -> String {
    match index.find('%') {
        Some(at) => format!("{}*", &index[..at]),
        None => index.to_string(),
    }
}

/// The template's name, derived from the index pattern's fixed part.
pub fn template_name(index: &str) -> String {
    let fixed = index.split('%').next().unwrap_or("");
    let fixed = fixed.trim_end_matches(['-', '_', '.']);
    if fixed == "bianque" || fixed.is_empty() {
        "bianque".into()
    } else {
        format!("bianque-{fixed}")
    }
}

/// The composable index template: the record's fields with their types.
pub fn index_template(index: &str) -> serde_json::Value {
    let kw = serde_json::json!({"type": "keyword"});
    serde_json::json!({
        "index_patterns": [template_patterns(index)],
        "priority": 200,
        "_meta": {"managed_by": "bianque", "version": env!("CARGO_PKG_VERSION")},
        "template": {
            "mappings": {
                "dynamic_templates": [
                    {"tracer_data_ns": {"path_match": "tracer_data.*_ns", "mapping": {"type": "long"}}},
                    {"tracer_data_bytes": {"path_match": "tracer_data.*_bytes", "mapping": {"type": "long"}}},
                    {"tracer_data_percent": {"path_match": "tracer_data.*_percent", "mapping": {"type": "double"}}},
                    {"tracer_data_pid": {"path_match": "tracer_data.*pid", "mapping": {"type": "long"}}},
                    {"strings": {"match_mapping_type": "string", "mapping": {"type": "keyword", "ignore_above": 1024}}}
                ],
                "properties": {
                    "tracer_id": kw,
                    "tracer_name": kw,
                    "tracer_type": kw,
                    "tracer_time": {"type": "date"},
                    "hostname": kw,
                    "region": kw,
                    "container_id": kw,
                    "container_name": kw,
                    "container_hostname": kw,
                    "container_host_namespace": kw,
                    "container_type": kw,
                    "container_qos": kw,
                    "tracer_data": {"type": "object", "dynamic": true}
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_names_follow_the_record_time() {
        let t = 1_700_000_000_123_456_789; // 2023-11-14T22:13:20Z
        assert_eq!(
            IndexName::new("bianque-%Y.%m.%d").for_time(t),
            "bianque-2023.11.14"
        );
        assert_eq!(IndexName::new("huatuo_bamai").for_time(t), "huatuo_bamai");
        assert_eq!(template_patterns("bianque-%Y.%m.%d"), "bianque-*");
        assert_eq!(template_patterns("huatuo_bamai"), "huatuo_bamai");
        assert_eq!(template_name("bianque-%Y.%m.%d"), "bianque");
        assert_eq!(template_name("huatuo_bamai"), "bianque-huatuo_bamai");
        let tpl = index_template("bianque-%Y.%m.%d");
        assert_eq!(tpl["index_patterns"][0], "bianque-*");
        assert_eq!(
            tpl["template"]["mappings"]["properties"]["tracer_time"]["type"],
            "date"
        );
    }
}
