//! A record as HuaTuo writes it (`compat = "huatuo"`): the document HuaTuo's Elasticsearch
//! indexes and its events dashboard reads. The store keeps bianque's own record; this is the
//! shape sent out (Elasticsearch, HuaTuo's watch route).
//!
//! - `uploaded_time` (RFC 3339, the dashboard's time field) and `time` (= `tracer_time`);
//! - `tracer_time` in HuaTuo's `2006-01-02 15:04:05.000 -0700` (local zone, milliseconds);
//! - HuaTuo's tracer names ([`TRACER_NAMES`], and softirq tick gaps as `sched_tick`);
//! - for the tracers both have, the `tracer_data` fields HuaTuo's dashboard shows, added next to
//!   bianque's own (which stay, so nothing is lost).

use serde_json::{Map, Value};

use super::{Record, TracerType};

/// bianque tracer name → HuaTuo's, where they differ. softirq tick gaps (`event = "tick_gap"`)
/// are HuaTuo's `sched_tick`, see [`tracer_name`].
pub const TRACER_NAMES: &[(&str, &str)] = &[
    ("netrecvlat", "net_rx_latency"),
    ("memreclaim", "memory_reclaim_events"),
    ("iotracer", "iotracing"),
];

/// HuaTuo's name for a record of `name` with this `tracer_data`.
pub fn tracer_name<'a>(name: &'a str, data: &Value) -> &'a str {
    if name == "softirq" && data.get("event").and_then(Value::as_str) == Some("tick_gap") {
        return "sched_tick";
    }
    TRACER_NAMES
        .iter()
        .find(|(ours, _)| *ours == name)
        .map_or(name, |(_, theirs)| theirs)
}

/// bianque's tracer for a HuaTuo name (`sched_tick` is softirq's tick gaps).
pub fn bianque_tracer_name(name: &str) -> &str {
    if name == "sched_tick" {
        return "softirq";
    }
    TRACER_NAMES
        .iter()
        .find(|(_, theirs)| *theirs == name)
        .map_or(name, |(ours, _)| ours)
}

/// HuaTuo's `tracer_time` format (Go `2006-01-02 15:04:05.000 -0700`), in the local zone.
pub fn format_time(time_ns: i64) -> String {
    let utc = chrono::DateTime::from_timestamp(
        time_ns.div_euclid(1_000_000_000),
        time_ns.rem_euclid(1_000_000_000) as u32,
    )
    .unwrap_or_default();
    utc.with_timezone(&chrono::Local)
        .format("%Y-%m-%d %H:%M:%S%.3f %z")
        .to_string()
}

/// HuaTuo's `container_type` values (`daemonSet` in camel case).
fn container_type(kind: &str) -> &str {
    match kind {
        "daemonset" => "daemonSet",
        other => other,
    }
}

/// The document HuaTuo would have indexed for `r`. `uploaded_time` is the record's own time, so
/// a document sent again (after an outage, with the same `_id`) is the same document.
pub fn document(r: &Record) -> Value {
    let name = tracer_name(&r.tracer_name, &r.tracer_data);
    let time = format_time(r.time_ns);
    let mut doc = Map::new();
    let mut put = |k: &str, v: Value| {
        doc.insert(k.to_string(), v);
    };
    put("hostname", r.hostname.as_str().into());
    put("region", r.region.as_str().into());
    put("uploaded_time", super::format_time_ns(r.time_ns).into());
    put("time", time.as_str().into());
    if let Some(c) = &r.container {
        put("container_id", c.id.as_str().into());
        for (k, v) in [
            ("container_name", &c.name),
            ("container_hostname", &c.hostname),
            ("container_host_namespace", &c.host_namespace),
            ("container_type", &container_type(&c.kind).to_string()),
            ("container_qos", &c.qos),
        ] {
            if !v.is_empty() {
                put(k, v.as_str().into());
            }
        }
    }
    put("tracer_name", name.into());
    put("tracer_id", r.tracer_id.as_str().into());
    put("tracer_time", time.into());
    put(
        "tracer_type",
        match r.tracer_type {
            TracerType::Event => "event",
            TracerType::Autotracing => "autotracing",
            TracerType::Incident => "incident",
        }
        .into(),
    );
    let victim_hostname = r.container.as_ref().map(|c| c.hostname.as_str());
    put(
        "tracer_data",
        tracer_data(name, &r.tracer_data, victim_hostname),
    );
    Value::Object(doc)
}

/// A kernel stack (bianque: one frame per array element) as HuaTuo's one string.
fn stack_text(v: Option<&Value>) -> Option<String> {
    let frames = v?.as_array()?;
    Some(
        frames
            .iter()
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
            .join("\n"),
    )
}

/// `tracer_data` with the fields HuaTuo's events dashboard shows for tracer `huatuo_name`.
/// `container_hostname` is the record's container's (for oom, the victim's).
pub fn tracer_data(huatuo_name: &str, data: &Value, container_hostname: Option<&str>) -> Value {
    let Some(src) = data.as_object() else {
        return data.clone();
    };
    let mut out = src.clone();
    let get = |k: &str| src.get(k).cloned();
    match huatuo_name {
        "dropwatch" => {
            if let Some(reason) = src.get("drop_reason").and_then(Value::as_str) {
                if !reason.starts_with("SKB_DROP_REASON_") {
                    out.insert(
                        "drop_reason".into(),
                        format!("SKB_DROP_REASON_{reason}").into(),
                    );
                }
            }
        }
        "net_rx_latency" => {
            if let Some(ns) = src.get("latency_ns").and_then(Value::as_u64) {
                // HuaTuo: a float of milliseconds.
                out.insert("latency_ms".into(), (ns as f64 / 1e6).into());
            }
            // HuaTuo's stage names.
            let stage = match src.get("latency_stage").and_then(Value::as_str) {
                Some("netif") => Some("RX_STAGE_NETIF"),
                Some("tcp") => Some("RX_STAGE_TCPV4"),
                Some("usercopy") => Some("RX_STAGE_USERCOPY"),
                _ => None,
            };
            if let Some(stage) = stage {
                out.insert("latency_stage".into(), stage.into());
            }
            if let Some(ns) = src.get("latency_threshold_ns").and_then(Value::as_u64) {
                out.insert("latency_threshold_ms".into(), (ns / 1_000_000).into());
            }
            for (ours, theirs) in [
                ("saddr", "tcp_saddr"),
                ("daddr", "tcp_daddr"),
                ("sport", "tcp_sport"),
                ("dport", "tcp_dport"),
            ] {
                if let Some(v) = get(ours) {
                    out.insert(theirs.into(), v);
                }
            }
        }
        "memory_reclaim_events" => {
            if let Some(v) = get("duration_ns") {
                out.insert("reclaim_duration_ns".into(), v);
            }
        }
        "sched_tick" => {
            if let Some(v) = get("duration_ns") {
                out.insert("tick_interval_ns".into(), v);
            }
            if let Some(v) = get("threshold_ns") {
                out.insert("tick_interval_threshold_ns".into(), v);
            }
            if let Some(s) = stack_text(src.get("stack")) {
                out.insert("stack".into(), s.into());
            }
        }
        "softlockup" if src.get("kind").and_then(Value::as_str) == Some("soft_lockup") => {
            if let Some(s) = stack_text(src.get("stack")) {
                out.insert("cpus_stack".into(), s.into());
            }
            if let Some(v) = get("pid") {
                out.insert("tid".into(), v);
            }
        }
        "hungtask" => {
            if let Some(s) = stack_text(src.get("stack")) {
                out.insert("cpus_stack".into(), s.into());
            }
            if let Some(tasks) = src.get("blocked_tasks").and_then(Value::as_array) {
                let text: Vec<String> = tasks
                    .iter()
                    .map(|t| {
                        format!(
                            "{} {}\n{}",
                            t.get("comm").and_then(Value::as_str).unwrap_or(""),
                            t.get("pid").and_then(Value::as_u64).unwrap_or(0),
                            stack_text(t.get("stack")).unwrap_or_default()
                        )
                    })
                    .collect();
                out.insert("blocked_processes_stack".into(), text.join("\n\n").into());
            }
        }
        "oom" => {
            for role in ["trigger", "victim"] {
                let Some(task) = src.get(role) else { continue };
                if let Some(v) = task.get("pid") {
                    out.insert(format!("{role}_pid"), v.clone());
                }
                if let Some(v) = task.get("comm") {
                    out.insert(format!("{role}_process_name"), v.clone());
                }
                if let Some(v) = task.get("container_id") {
                    out.insert(format!("{role}_container_id"), v.clone());
                }
            }
            if let Some(h) = container_hostname.filter(|h| !h.is_empty()) {
                out.insert("victim_container_hostname".into(), h.into());
            }
        }
        "netdev_events" => {
            // HuaTuo: one string, `linkstatus_carrierdown, linkstatus_adminup`.
            if let Some(list) = src.get("linkstatus").and_then(Value::as_array) {
                let text: Vec<String> = list
                    .iter()
                    .filter_map(Value::as_str)
                    .map(|s| format!("linkstatus_{}", s.replace('_', "")))
                    .collect();
                out.insert("linkstatus".into(), text.join(", ").into());
            }
            out.insert("start".into(), false.into());
        }
        "iotracing" => {
            if let Some(snap) = src.get("reason_snapshot") {
                if let Some(v) = snap.get("device") {
                    out.insert("dev".into(), v.clone());
                }
                // HuaTuo's spelling.
                if let Some(v) = snap.get("type") {
                    out.insert("triger_type".into(), v.clone());
                }
                if let Some(v) = snap.get("summary") {
                    out.insert("reason".into(), v.clone());
                }
                if let Some(io) = snap.get("iostatus") {
                    let mut status = Map::new();
                    for (ours, theirs) in [
                        ("io_util_percent", "io_util"),
                        ("queue_size", "queue_size"),
                        ("read_bps", "read_bps"),
                        ("read_iops", "read_iops"),
                        ("read_await_ms", "read_iowait"),
                        ("write_bps", "write_bps"),
                        ("write_iops", "write_iops"),
                        ("write_await_ms", "write_iowait"),
                    ] {
                        if let Some(v) = io.get(ours) {
                            status.insert(theirs.into(), v.clone());
                        }
                    }
                    out.insert("status".into(), Value::Object(status));
                }
            }
        }
        "cpusys" | "cpuidle" => {
            let mut meta = Map::new();
            for (ours, theirs) in [
                ("user_percent", "user"),
                ("system_percent", "sys"),
                ("total_percent", "usage"),
                ("user_percent_delta", "deltauser"),
                ("system_percent_delta", "deltasys"),
                ("total_percent_delta", "deltausage"),
            ] {
                if let Some(v) = get(ours) {
                    meta.insert(theirs.into(), v);
                }
                if let Some(v) = get(&format!("{ours}_threshold")) {
                    meta.insert(format!("{theirs}_threshold"), v);
                }
            }
            out.insert("metadata".into(), Value::Object(meta));
        }
        "dload" => {
            if let Some(tasks) = src.get("d_state_tasks").and_then(Value::as_array) {
                let text: Vec<String> = tasks
                    .iter()
                    .map(|t| {
                        format!(
                            "{} {}\n{}",
                            t.get("comm").and_then(Value::as_str).unwrap_or(""),
                            t.get("pid").and_then(Value::as_u64).unwrap_or(0),
                            stack_text(t.get("stack")).unwrap_or_default()
                        )
                    })
                    .collect();
                out.insert("stack".into(), text.join("\n\n").into());
            }
        }
        "waitrate" => {
            if let Some(v) = get("wait_percent") {
                out.insert("curr_waitrate".into(), v);
            }
            if let Some(v) = get("wait_percent_threshold") {
                out.insert("rel_waitrate_thres".into(), v);
            }
        }
        _ => {}
    }
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::ContainerFields;
    use serde_json::json;

    fn rec(name: &str, data: Value, container: Option<ContainerFields>) -> Record {
        Record::new(
            name,
            TracerType::Event,
            1_700_000_000_123_456_789,
            "h1",
            "r1",
            container,
            data,
        )
    }

    #[test]
    fn names_map_both_ways() {
        assert_eq!(tracer_name("netrecvlat", &json!({})), "net_rx_latency");
        assert_eq!(
            tracer_name("memreclaim", &json!({})),
            "memory_reclaim_events"
        );
        assert_eq!(tracer_name("iotracer", &json!({})), "iotracing");
        assert_eq!(
            tracer_name("softirq", &json!({"event": "tick_gap"})),
            "sched_tick"
        );
        assert_eq!(
            tracer_name("softirq", &json!({"event": "long_softirq"})),
            "softirq"
        );
        assert_eq!(tracer_name("dropwatch", &json!({})), "dropwatch");
        for (ours, theirs) in TRACER_NAMES {
            assert_eq!(bianque_tracer_name(theirs), *ours);
        }
        assert_eq!(bianque_tracer_name("sched_tick"), "softirq");
        assert_eq!(bianque_tracer_name("oom"), "oom");
    }

    #[test]
    fn time_is_go_layout_with_millis_and_offset() {
        let t = format_time(1_700_000_000_123_456_789);
        // `2023-11-14 22:13:20.123 +0000` in UTC; the zone is the host's.
        let re = regex::Regex::new(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} [+-]\d{4}$").unwrap();
        assert!(re.is_match(&t), "{t}");
        let parsed = chrono::DateTime::parse_from_str(&t, "%Y-%m-%d %H:%M:%S%.3f %z").unwrap();
        assert_eq!(parsed.timestamp_millis(), 1_700_000_000_123);
    }

    #[test]
    fn document_has_huatuo_fields() {
        let r = rec(
            "netrecvlat",
            json!({"latency_ns": 7_500_000u64, "latency_threshold_ns": 5_000_000u64,
                   "latency_stage": "netif", "saddr": "10.0.0.1", "sport": 80, "daddr": "10.0.0.2", "dport": 5555}),
            Some(ContainerFields {
                id: "abc".into(),
                kind: "daemonset".into(),
                hostname: "pod-1".into(),
                ..Default::default()
            }),
        );
        let d = document(&r);
        assert_eq!(d["tracer_name"], "net_rx_latency");
        assert_eq!(d["uploaded_time"], "2023-11-14T22:13:20.123456789Z");
        assert_eq!(d["time"], d["tracer_time"]);
        assert_eq!(d["container_type"], "daemonSet");
        assert_eq!(d["container_hostname"], "pod-1");
        assert!(d.get("container_qos").is_none());
        assert_eq!(d["tracer_type"], "event");
        assert_eq!(d["tracer_id"], r.tracer_id.as_str());
        let td = &d["tracer_data"];
        assert_eq!(td["latency_ms"], 7.5);
        assert_eq!(td["latency_stage"], "RX_STAGE_NETIF");
        assert_eq!(td["latency_threshold_ms"], 5);
        assert_eq!(td["tcp_saddr"], "10.0.0.1");
        assert_eq!(td["tcp_dport"], 5555);
        // bianque's own fields stay.
        assert_eq!(td["latency_ns"], 7_500_000);
    }

    #[test]
    fn tracer_data_per_tracer() {
        let td = tracer_data("dropwatch", &json!({"drop_reason": "NO_SOCKET"}), None);
        assert_eq!(td["drop_reason"], "SKB_DROP_REASON_NO_SOCKET");
        let td = tracer_data("memory_reclaim_events", &json!({"duration_ns": 9}), None);
        assert_eq!(td["reclaim_duration_ns"], 9);
        let td = tracer_data(
            "sched_tick",
            &json!({"duration_ns": 12, "threshold_ns": 10, "stack": ["a+0x1", "b+0x2"]}),
            None,
        );
        assert_eq!(td["tick_interval_ns"], 12);
        assert_eq!(td["tick_interval_threshold_ns"], 10);
        assert_eq!(td["stack"], "a+0x1\nb+0x2");
        let td = tracer_data(
            "hungtask",
            &json!({"stack": ["x"], "blocked_tasks": [{"comm": "cat", "pid": 3, "stack": ["y", "z"]}]}),
            None,
        );
        assert_eq!(td["cpus_stack"], "x");
        assert_eq!(td["blocked_processes_stack"], "cat 3\ny\nz");
        let td = tracer_data(
            "oom",
            &json!({"victim": {"pid": 5, "comm": "hog", "container_id": "c1"}, "trigger": {"pid": 6, "comm": "t"}}),
            Some("pod-x"),
        );
        assert_eq!(td["victim_pid"], 5);
        assert_eq!(td["victim_process_name"], "hog");
        assert_eq!(td["victim_container_id"], "c1");
        assert_eq!(td["victim_container_hostname"], "pod-x");
        assert_eq!(td["trigger_process_name"], "t");
        let td = tracer_data(
            "netdev_events",
            &json!({"linkstatus": ["carrier_down", "admin_down"]}),
            None,
        );
        assert_eq!(
            td["linkstatus"],
            "linkstatus_carrierdown, linkstatus_admindown"
        );
        let td = tracer_data(
            "iotracing",
            &json!({"reason_snapshot": {"type": "ioutil", "device": "sda", "summary": "s",
                     "iostatus": {"io_util_percent": 99.0, "read_await_ms": 3.0}}}),
            None,
        );
        assert_eq!(td["dev"], "sda");
        assert_eq!(td["triger_type"], "ioutil");
        assert_eq!(td["status"]["io_util"], 99.0);
        assert_eq!(td["status"]["read_iowait"], 3.0);
        let td = tracer_data(
            "cpusys",
            &json!({"system_percent": 40.0, "system_percent_threshold": 30}),
            None,
        );
        assert_eq!(td["metadata"]["sys"], 40.0);
        assert_eq!(td["metadata"]["sys_threshold"], 30);
        // A tracer HuaTuo does not have is left as it is.
        let td = tracer_data("signal", &json!({"signal": "SIGKILL"}), None);
        assert_eq!(td, json!({"signal": "SIGKILL"}));
    }
}
