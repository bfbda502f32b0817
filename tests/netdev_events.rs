//! netdev_events on the real kernel: a veth set down and up gives two records (admin down,
//! admin up); bringing its peer up then gives a carrier-up record. The device filter keeps the
//! peer's own changes out.

mod common;

use std::time::Duration;

use common::*;

#[test]
fn a_veth_set_down_and_up_gives_two_records_then_carrier_up() {
    let pid = std::process::id() % 100_000;
    let a = format!("bqva{pid}");
    let b = format!("bqvb{pid}");
    let _cleanup = Cleanup(format!("ip link del {a}"));
    // The peer stays down for now, so `a` has no carrier: only admin changes below.
    sh(&format!(
        "ip link add {a} type veth peer name {b} && ip link set {a} up"
    ));
    let agent = Agent::start(
        &format!(
            "[events.netdev_events]\ndevices = [\"{a}\"]\n[events.dropwatch]\nenabled = false\n"
        ),
        &[],
    );
    let records = |name: &str| -> Vec<serde_json::Value> {
        let mut v: Vec<serde_json::Value> = agent
            .events("tracer=netdev_events&limit=1000")
            .into_iter()
            .filter(|e| e["tracer_data"]["ifname"] == name)
            .collect();
        v.reverse(); // oldest first
        v
    };
    sh(&format!("ip link set {a} down"));
    assert!(wait_until(Duration::from_secs(5), || records(&a).len() == 1));
    sh(&format!("ip link set {a} up"));
    assert!(
        wait_until(Duration::from_secs(5), || records(&a).len() == 2),
        "{:?}\nlog:\n{}",
        records(&a),
        agent.log()
    );
    std::thread::sleep(Duration::from_millis(300));
    let r = records(&a);
    assert_eq!(r.len(), 2, "exactly two: {r:?}");
    let index: u64 = std::fs::read_to_string(format!("/sys/class/net/{a}/ifindex"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let mac = std::fs::read_to_string(format!("/sys/class/net/{a}/address")).unwrap();
    let (down, up) = (&r[0]["tracer_data"], &r[1]["tracer_data"]);
    println!("{down}\n{up}");
    assert_eq!(down["linkstatus"], serde_json::json!(["admin_down"]));
    assert_eq!(down["old_state"]["admin"], "up");
    assert_eq!(down["new_state"]["admin"], "down");
    assert_eq!(down["new_state"]["carrier"], "down");
    assert_eq!(up["linkstatus"], serde_json::json!(["admin_up"]));
    assert_eq!(up["new_state"]["admin"], "up");
    for d in [down, up] {
        assert_eq!(d["index"], index);
        assert_eq!(d["driver"], "veth");
        assert_eq!(d["mac"], mac.trim());
    }

    // The peer comes up: `a` gets its carrier; the peer's own changes are filtered out.
    sh(&format!("ip link set {b} up"));
    assert!(
        wait_until(Duration::from_secs(5), || records(&a).len() == 3),
        "{:?}",
        records(&a)
    );
    let carrier = &records(&a)[2]["tracer_data"];
    assert_eq!(carrier["linkstatus"], serde_json::json!(["carrier_up"]));
    assert_eq!(carrier["new_state"]["carrier"], "up");
    assert!(records(&b).is_empty());
    assert_eq!(
        agent.metric("bianque_netdev_events_events_total{change=\"admin_down\"}"),
        Some(1.0)
    );
    assert_eq!(
        agent.metric("bianque_netdev_events_events_total{change=\"carrier_up\"}"),
        Some(1.0)
    );
    // HuaTuo's per-device counters.
    let text = agent.metrics();
    for (family, n) in [
        ("admindown", "1"),
        ("adminup", "1"),
        ("carrierup", "1"),
        ("carrierdown", "0"),
    ] {
        let head = format!(
            "bianque_netdev_events_linkstatus_{family}_total{{device=\"{a}\",driver=\"veth\","
        );
        assert!(
            text.lines()
                .any(|l| l.starts_with(&head) && l.ends_with(&format!("}} {n}"))),
            "{head}… {n} in\n{text}"
        );
    }
}
