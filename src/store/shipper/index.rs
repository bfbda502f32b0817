//! Index names: the strftime pattern applied to each record's time, and the composable index
//! template the shipper installs for them.

use chrono::format::{Item, StrftimeItems};

use crate::config::Compat;

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

/// The composable index template: the record's fields with their types. Under
/// `compat = "huatuo"` the fields of HuaTuo's document, strings typed the way a default
/// Elasticsearch dynamic mapping types them (`text` with a `.keyword` sub-field), which HuaTuo's
/// dashboard queries (`region.keyword`, `hostname.keyword`) rely on.
pub fn index_template(index: &str, compat: Compat) -> serde_json::Value {
    let kw = serde_json::json!({"type": "keyword"});
    let (strings, properties) = if compat.is_huatuo() {
        let text = serde_json::json!({
            "type": "text",
            "fields": {"keyword": {"type": "keyword", "ignore_above": 256}}
        });
        let properties = serde_json::json!({
            "uploaded_time": {"type": "date"},
            "tracer_id": text,
            "tracer_name": text,
            "tracer_type": text,
            "tracer_time": text,
            "time": text,
            "hostname": text,
            "region": text,
            "container_id": text,
            "container_name": text,
            "container_hostname": text,
            "container_host_namespace": text,
            "container_type": text,
            "container_qos": text,
            "tracer_data": {"type": "object", "dynamic": true}
        });
        (text, properties)
    } else {
        let properties = serde_json::json!({
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
        });
        (
            serde_json::json!({"type": "keyword", "ignore_above": 1024}),
            properties,
        )
    };
    serde_json::json!({
        "index_patterns": [template_patterns(index)],
        "priority": 200,
        "_meta": {"managed_by": "bianque", "version": env!("CARGO_PKG_VERSION")},
        "template": {
            "mappings": {
                // Numbers only: a field named like a number that holds an object (oom's
                // `memory_snapshot.host_meminfo_bytes`) stays an object instead of making
                // Elasticsearch refuse the whole document.
                "dynamic_templates": [
                    {"tracer_data_ns": {"path_match": "tracer_data.*_ns", "match_mapping_type": "long", "mapping": {"type": "long"}}},
                    {"tracer_data_bytes": {"path_match": "tracer_data.*_bytes", "match_mapping_type": "long", "mapping": {"type": "long"}}},
                    {"tracer_data_percent": {"path_match": "tracer_data.*_percent", "mapping": {"type": "double"}}},
                    {"tracer_data_pid": {"path_match": "tracer_data.*pid", "match_mapping_type": "long", "mapping": {"type": "long"}}},
                    {"strings": {"match_mapping_type": "string", "mapping": strings}}
                ],
                "properties": properties
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
        let tpl = index_template("bianque-%Y.%m.%d", Compat::Bianque);
        assert_eq!(tpl["index_patterns"][0], "bianque-*");
        let props = &tpl["template"]["mappings"]["properties"];
        assert_eq!(props["tracer_time"]["type"], "date");
        assert_eq!(props["hostname"]["type"], "keyword");
    }

    #[test]
    fn huatuo_template_types_strings_as_text_with_keyword() {
        let tpl = index_template("huatuo_bamai", Compat::Huatuo);
        assert_eq!(tpl["index_patterns"][0], "huatuo_bamai");
        let props = &tpl["template"]["mappings"]["properties"];
        assert_eq!(props["uploaded_time"]["type"], "date");
        for f in [
            "hostname",
            "region",
            "tracer_name",
            "tracer_time",
            "container_hostname",
        ] {
            assert_eq!(props[f]["type"], "text", "{f}");
            assert_eq!(props[f]["fields"]["keyword"]["type"], "keyword", "{f}");
        }
        let dynamic = &tpl["template"]["mappings"]["dynamic_templates"];
        let strings = dynamic
            .as_array()
            .unwrap()
            .iter()
            .find_map(|t| t.get("strings"))
            .unwrap();
        assert_eq!(strings["mapping"]["type"], "text");
    }
}
