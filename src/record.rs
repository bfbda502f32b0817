//! The record every tracer produces: the same JSON in the store, in Elasticsearch and on the
//! live stream. Field names follow HuaTuo's documents so existing queries keep working.

use serde::{Deserialize, Serialize};

pub mod huatuo;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TracerType {
    Event,
    Autotracing,
    /// A closed incident (src/incidents): records about one target grouped and explained.
    Incident,
}

/// The container a record belongs to; absent for the host.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerFields {
    #[serde(rename = "container_id")]
    pub id: String,
    #[serde(
        rename = "container_name",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub name: String,
    #[serde(
        rename = "container_hostname",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub hostname: String,
    #[serde(
        rename = "container_host_namespace",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub host_namespace: String,
    #[serde(
        rename = "container_type",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub kind: String,
    #[serde(
        rename = "container_qos",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub qos: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Unique and time-ordered (UUIDv7); also the Elasticsearch `_id`.
    pub tracer_id: String,
    pub tracer_name: String,
    pub tracer_type: TracerType,
    /// RFC 3339, UTC, nanoseconds.
    pub tracer_time: String,
    pub hostname: String,
    pub region: String,
    #[serde(flatten, default, skip_serializing_if = "Option::is_none")]
    pub container: Option<ContainerFields>,
    pub tracer_data: serde_json::Value,
    /// Wall-clock nanoseconds since the epoch; indexes the store, not part of the JSON.
    #[serde(skip)]
    pub time_ns: i64,
}

impl Record {
    pub fn new(
        tracer_name: &str,
        tracer_type: TracerType,
        time_ns: i64,
        hostname: &str,
        region: &str,
        container: Option<ContainerFields>,
        tracer_data: serde_json::Value,
    ) -> Record {
        Record {
            tracer_id: uuid::Uuid::now_v7().simple().to_string(),
            tracer_name: tracer_name.to_string(),
            tracer_type,
            tracer_time: format_time_ns(time_ns),
            hostname: hostname.to_string(),
            region: region.to_string(),
            container,
            tracer_data,
            time_ns,
        }
    }
}

/// RFC 3339 in UTC with nanoseconds, e.g. `2026-11-28T05:03:00.123456789Z`.
pub fn format_time_ns(time_ns: i64) -> String {
    let secs = time_ns.div_euclid(1_000_000_000);
    let nanos = time_ns.rem_euclid(1_000_000_000) as u32;
    chrono::DateTime::from_timestamp(secs, nanos)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
}

/// Wall-clock now in nanoseconds since the epoch.
pub fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

/// A time given on the command line or in a query: a duration back from now (`10m`, `2h`,
/// `1d`), an RFC 3339 instant, or Unix seconds. Returns ns since the epoch.
pub fn parse_time_arg(s: &str, now_ns: i64) -> Result<i64, String> {
    let s = s.trim();
    if let Ok(secs) = s.parse::<i64>() {
        return Ok(secs.saturating_mul(1_000_000_000));
    }
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return t
            .timestamp_nanos_opt()
            .ok_or_else(|| format!("`{s}` is out of range"));
    }
    match humantime::parse_duration(s) {
        Ok(d) => Ok(now_ns - d.as_nanos().min(i64::MAX as u128) as i64),
        Err(_) => Err(format!(
            "`{s}` is not a duration (10m, 2h), an RFC 3339 time, or Unix seconds"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_args() {
        let now = 1_000_000_000_000;
        assert_eq!(parse_time_arg("10m", now), Ok(now - 600_000_000_000));
        assert_eq!(
            parse_time_arg("1700000000", now),
            Ok(1_700_000_000_000_000_000)
        );
        assert_eq!(
            parse_time_arg("2023-11-14T22:13:20Z", now),
            Ok(1_700_000_000_000_000_000)
        );
        assert!(parse_time_arg("yesterday", now)
            .unwrap_err()
            .contains("yesterday"));
    }

    #[test]
    fn json_shape_matches_contract() {
        let rec = Record::new(
            "dropwatch",
            TracerType::Event,
            1_700_000_000_123_456_789,
            "h1",
            "r1",
            Some(ContainerFields {
                id: "abc".into(),
                name: "web".into(),
                ..Default::default()
            }),
            serde_json::json!({"pid": 7}),
        );
        let v: serde_json::Value = serde_json::to_value(&rec).unwrap();
        assert_eq!(v["tracer_name"], "dropwatch");
        assert_eq!(v["tracer_type"], "event");
        assert_eq!(v["tracer_time"], "2023-11-14T22:13:20.123456789Z");
        assert_eq!(v["container_id"], "abc");
        assert_eq!(v["container_name"], "web");
        assert!(v.get("container_qos").is_none());
        assert!(v.get("time_ns").is_none());
        assert_eq!(v["tracer_data"]["pid"], 7);
        assert_eq!(rec.tracer_id.len(), 32);
    }

    #[test]
    fn host_record_has_no_container_fields() {
        let rec = Record::new(
            "x",
            TracerType::Autotracing,
            0,
            "h",
            "r",
            None,
            serde_json::json!({}),
        );
        let v: serde_json::Value = serde_json::to_value(&rec).unwrap();
        assert!(v.get("container_id").is_none());
        assert_eq!(v["tracer_type"], "autotracing");
    }
}
