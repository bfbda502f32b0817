use super::*;

const S: i64 = 1_000_000_000;
const T0: i64 = 1_790_000_000 * S;

fn rec(id: &str, tracer: &str, t: i64, container: Option<&str>, data: serde_json::Value) -> String {
    let mut v = serde_json::json!({
        "tracer_id": id,
        "tracer_name": tracer,
        "tracer_type": "event",
        "tracer_time": format_time_ns(t),
        "hostname": "h",
        "region": "r",
        "tracer_data": data,
    });
    if let Some(c) = container {
        v["container_id"] = c.into();
        v["container_name"] = "web".into();
    }
    v.to_string()
}

fn items(rows: &[String]) -> Vec<Item> {
    rows.iter().filter_map(|r| Item::parse(r)).collect()
}

fn reclaim(id: &str, t: i64, cg: &str) -> String {
    rec(
        id,
        "memreclaim",
        t,
        None,
        serde_json::json!({"kind": "memcg", "comm": "dd", "pid": 7, "duration_ns": 3_500_000,
                           "memory_cgroup_path": cg}),
    )
}

fn oom(id: &str, t: i64, cg: &str) -> String {
    rec(
        id,
        "oom",
        t,
        None,
        serde_json::json!({"constraint": "memcg", "victim": {"comm": "tail", "pid": 42,
            "memory_cgroup_path": cg,
            "memory_cgroup": {"path": cg, "usage_bytes": 64u64 << 20, "limit_bytes": 64u64 << 20}}}),
    )
}

#[test]
fn reclaim_then_oom_in_one_cgroup_is_one_memory_incident_naming_the_victim() {
    let rows = vec![
        reclaim("a1", T0, "/bq-oom"),
        reclaim("a2", T0 + S, "/bq-oom"),
        oom("a3", T0 + 3 * S, "/bq-oom"),
        // Another cgroup at the same time: its own incident.
        reclaim("b1", T0 + 2 * S, "/other"),
    ];
    let got = group(&items(&rows), &Options::default(), T0 + 10 * S);
    assert_eq!(got.len(), 2, "{got:#?}");
    let i = got.iter().find(|i| i.target.id == "/bq-oom").unwrap();
    assert_eq!(i.target.kind, "cgroup");
    assert_eq!(i.kind, "memory");
    assert_eq!(i.severity, "critical");
    assert!(i.open);
    assert_eq!(i.records, 3);
    assert_eq!(
        i.evidence
            .iter()
            .map(|e| e.tracer_id.as_str())
            .collect::<Vec<_>>(),
        ["a1", "a2", "a3"]
    );
    assert_eq!(i.start_ns, T0);
    assert_eq!(i.end_ns, T0 + 3 * S);
    let x = &i.explanation;
    assert!(
        x.starts_with("Memory cgroup /bq-oom: critical memory incident from"),
        "{x}"
    );
    assert!(
        x.contains("Direct reclaim stalled tasks 2 times (longest 3.5 ms; dd ×2)"),
        "{x}"
    );
    assert!(x.contains("the OOM killer killed tail (pid 42)"), "{x}");
    assert!(x.contains("64 MiB of its 64 MiB limit"), "{x}");
    assert!(x.contains("Reclaim could not free enough"), "{x}");
    assert_eq!(
        i.evidence[2].summary,
        "OOM kill of tail (pid 42) in memory cgroup /bq-oom (64 MiB used of a 64 MiB limit)"
    );
}

#[test]
fn a_gap_longer_than_the_option_starts_a_new_incident_and_closes_the_old() {
    let opts = Options {
        gap_ns: 60 * S,
        ..Default::default()
    };
    let rows = vec![
        reclaim("a1", T0, "/x"),
        reclaim("a2", T0 + 50 * S, "/x"),
        reclaim("a3", T0 + 200 * S, "/x"),
    ];
    let got = group(&items(&rows), &opts, T0 + 230 * S);
    assert_eq!(got.len(), 2);
    // Newest first.
    assert_eq!(got[0].records, 1);
    assert!(got[0].open);
    assert_eq!(got[1].records, 2);
    assert!(!got[1].open);
    assert_ne!(got[0].id, got[1].id);
}

#[test]
fn ids_are_stable_whatever_the_order_and_are_uuids_of_the_first_records_time() {
    let mut rows = vec![reclaim("a1", T0, "/x"), oom("a2", T0 + S, "/x")];
    let one = group(&items(&rows), &Options::default(), T0 + 2 * S);
    rows.reverse();
    let two = group(&items(&rows), &Options::default(), T0 + 2 * S);
    assert_eq!(one[0].id, two[0].id);
    let u = uuid::Uuid::try_parse(&one[0].id).unwrap();
    let (secs, _) = u.get_timestamp().unwrap().to_unix();
    assert_eq!(secs as i64, T0 / S);
}

#[test]
fn context_tracers_join_but_never_start_and_incident_records_are_never_evidence() {
    let rows = vec![
        rec(
            "s0",
            "signal",
            T0,
            Some("c1"),
            serde_json::json!({"sig": 9}),
        ),
        rec(
            "d1",
            "dropwatch",
            T0 + S,
            Some("c1"),
            serde_json::json!({"drop_reason": "NO_SOCKET", "drop_location": "udp_queue_rcv_skb",
                               "protocol": "udp", "daddr": "127.0.0.1", "dport": 9}),
        ),
        rec(
            "s1",
            "signal",
            T0 + 2 * S,
            Some("c1"),
            serde_json::json!({"sig": 9}),
        ),
        rec(
            "i1",
            "incident",
            T0 + 3 * S,
            Some("c1"),
            serde_json::json!({}),
        ),
    ];
    let got = group(&items(&rows), &Options::default(), T0 + 4 * S);
    assert_eq!(got.len(), 1);
    let i = &got[0];
    assert_eq!(i.target.kind, "container");
    assert_eq!(i.target.name, "web");
    assert_eq!(i.kind, "network");
    assert_eq!(i.severity, "info");
    assert_eq!(
        i.evidence
            .iter()
            .map(|e| e.tracer_id.as_str())
            .collect::<Vec<_>>(),
        ["d1", "s1"]
    );
    assert!(
        i.explanation
            .starts_with("Container web: info network incident"),
        "{}",
        i.explanation
    );
    assert!(
        i.explanation
            .contains("dropped 1 packet (NO_SOCKET ×1; at udp_queue_rcv_skb ×1)"),
        "{}",
        i.explanation
    );
}

#[test]
fn a_lockup_outranks_the_network_noise_around_it() {
    let mut rows: Vec<String> = (0..150)
        .map(|n| {
            rec(
                &format!("d{n:03}"),
                "dropwatch",
                T0 + n,
                None,
                serde_json::json!({"drop_reason": "NO_SOCKET"}),
            )
        })
        .collect();
    rows.push(rec(
        "l1",
        "softlockup",
        T0 + S,
        None,
        serde_json::json!({"cpu": 1, "comm": "spin", "pid": 5, "stuck_seconds": 22}),
    ));
    let opts = Options {
        max_evidence: 10,
        ..Default::default()
    };
    let got = group(&items(&rows), &opts, T0 + 2 * S);
    assert_eq!(got.len(), 1);
    let i = &got[0];
    assert_eq!(i.target.kind, "host");
    assert_eq!(i.kind, "lockup");
    assert_eq!(i.severity, "critical");
    assert_eq!(i.records, 151);
    assert_eq!(i.evidence.len(), 10);
    assert_eq!(i.tracers["dropwatch"], 150);
    assert!(
        i.explanation
            .contains("soft lockup on CPU 1: spin (pid 5) stuck for 22 s"),
        "{}",
        i.explanation
    );
    assert!(
        i.explanation.contains("dropped 150 packets"),
        "{}",
        i.explanation
    );
}

#[test]
fn a_closed_incident_becomes_an_incident_record_with_its_id() {
    let rows = vec![oom("a1", T0, "/x")];
    let got = group(&items(&rows), &Options::default(), T0 + 3600 * S);
    let i = &got[0];
    assert!(!i.open);
    let r = to_record(i, "h", "r");
    assert_eq!(r.tracer_id, i.id);
    assert_eq!(r.tracer_name, "incident");
    let v = serde_json::to_value(&r).unwrap();
    assert_eq!(v["tracer_type"], "incident");
    assert_eq!(v["tracer_data"]["evidence"][0], "a1");
    assert_eq!(v["tracer_data"]["kind"], "memory");
    // Read back, it is not evidence of anything.
    assert!(Item::parse(&v.to_string()).is_none());
}

#[test]
fn the_store_round_trip_finds_and_writes_once() {
    let dir = std::env::temp_dir().join(format!("bq-incidents-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let store = Store::open(
        &dir,
        crate::store::Retention {
            max_age: std::time::Duration::from_secs(3600 * 24 * 365 * 10),
            max_size_bytes: 1 << 30,
        },
    )
    .unwrap();
    let now = crate::record::now_ns();
    for (n, body) in [
        reclaim("x", now - 900 * S, "/y"),
        oom("x", now - 899 * S, "/y"),
    ]
    .iter()
    .enumerate()
    {
        let mut r: Record = serde_json::from_str(body).unwrap();
        r.tracer_id = uuid::Uuid::now_v7().simple().to_string();
        r.time_ns = now - (900 - n as i64) * S;
        store.save(r);
    }
    // The writer thread commits asynchronously.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while store
        .query(&Query {
            limit: 10,
            ..Default::default()
        })
        .unwrap()
        .len()
        < 2
    {
        assert!(std::time::Instant::now() < deadline);
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let opts = Options::default();
    let q = IncidentQuery::default();
    let all = load(&store, &q, &opts, now).unwrap();
    assert_eq!(all.len(), 1);
    let found = find(&store, &all[0].id, &opts, now).unwrap().unwrap();
    assert_eq!(found.records, 2);
    assert_eq!(write_closed(&store, "h", "r", 3600 * S, now).unwrap(), 1);
    while store.get(&all[0].id).unwrap().is_none() {
        assert!(std::time::Instant::now() < deadline);
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(write_closed(&store, "h", "r", 3600 * S, now).unwrap(), 0);
    // The incident record does not change the incidents.
    assert_eq!(load(&store, &q, &opts, now).unwrap().len(), 1);
    store.close();
    let _ = std::fs::remove_dir_all(&dir);
}
