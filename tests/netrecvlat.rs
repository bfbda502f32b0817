//! netrecvlat on the real kernel: a TCP receiver in a network namespace (joined to this one by
//! a veth pair) sleeps before its first read, so the data waits in its socket; with the thresholds at
//! 1 ms the copy to the reader is recorded with the right addresses, ports, namespace and reader.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use common::*;

const SLEEP: Duration = Duration::from_millis(100);

/// A TCP listener on the namespace's address.
fn listener_in(ns: &NetnsPair) -> TcpListener {
    let addr = ns.ns_addr;
    ns.run_in(move || TcpListener::bind((addr, 0)).expect("bind in netns"))
}

#[test]
fn a_receiver_that_sleeps_before_reading_is_recorded_at_the_usercopy_stage() {
    let agent = Agent::start(
        "[events.netrecvlat]\nnetif_threshold_ms = 1\ntcp_threshold_ms = 1\nusercopy_threshold_ms = 1\n\
         max_events_per_second = 1000\n[events.dropwatch]\nenabled = false\n",
        &[],
    );
    let ns = NetnsPair::new("nrl");
    let ifindex: u64 = ns
        .exec(&format!("cat /sys/class/net/{}/ifindex", ns.ns_if))
        .trim()
        .parse()
        .unwrap();
    let listener = listener_in(&ns);
    let port = listener.local_addr().unwrap().port();
    // The reader thread lives in the namespace; sleeping before it reads lets data queue.
    let receiver = ns.spawn_in("bq-nrl-rx", move || {
        let (mut c, _) = listener.accept().unwrap();
        // Everything the client sends meanwhile waits in the socket.
        std::thread::sleep(SLEEP);
        c.read_to_end(&mut Vec::new()).expect("read in netns")
    });
    let mut client = TcpStream::connect((ns.ns_addr, port)).unwrap();
    let sport = client.local_addr().unwrap().port();
    for _ in 0..5 {
        client.write_all(&[b'n'; 2000]).unwrap();
        std::thread::sleep(Duration::from_millis(2));
    }
    client.shutdown(std::net::Shutdown::Write).unwrap();
    assert_eq!(receiver.join().unwrap(), 10_000);

    let ours = || -> Vec<serde_json::Value> {
        agent
            .events("tracer=netrecvlat&limit=10000")
            .into_iter()
            .filter(|e| {
                let d = &e["tracer_data"];
                d["latency_stage"] == "usercopy" && d["dport"] == port
            })
            .collect()
    };
    assert!(
        wait_until(Duration::from_secs(5), || !ours().is_empty()),
        "no usercopy record for port {port}: {:?}; metrics:\n{}\nlog:\n{}",
        agent
            .events("tracer=netrecvlat&limit=10000")
            .into_iter()
            .filter(|e| e["tracer_data"]["saddr"] != "127.0.0.1")
            .collect::<Vec<_>>(),
        agent.metrics(),
        agent.log()
    );
    let records = ours();
    println!("{} records; first: {}", records.len(), records[0]);
    for e in &records {
        let d = &e["tracer_data"];
        assert_eq!(d["protocol"], "tcp");
        assert_eq!(d["l3_protocol"], "ipv4");
        assert_eq!(d["saddr"], ns.host_addr.to_string(), "the sender: {d}");
        assert_eq!(d["daddr"], ns.ns_addr.to_string());
        assert_eq!(d["sport"], sport);
        assert_eq!(d["dport"], port);
        assert_eq!(d["net_namespace_inum"], ns.inum(), "{d}");
        assert_eq!(d["netdev_ifindex"], ifindex, "{d}");
        assert_eq!(d["comm"], "bq-nrl-rx");
        assert_eq!(d["pid"], std::process::id());
        assert_eq!(d["latency_threshold_ns"], 1_000_000);
        let lat = d["latency_ns"].as_u64().unwrap();
        // The data waited in the socket for (most of) the reader's sleep; not for seconds.
        assert!(
            (1_000_000..10_000_000_000).contains(&lat),
            "latency {lat}: {d}"
        );
        assert!(d["packet_len_bytes"].as_u64().unwrap() > 0);
    }
    let max = records
        .iter()
        .map(|e| e["tracer_data"]["latency_ns"].as_u64().unwrap())
        .max()
        .unwrap();
    assert!(
        max >= 10_000_000,
        "some data waited most of {SLEEP:?}: {max}"
    );
    // A netns created by `ip netns add` holds no container.
    assert!(records[0].get("container_id").is_none());
    assert!(
        agent
            .metric("bianque_netrecvlat_events_total{stage=\"usercopy\"}")
            .unwrap()
            >= records.len() as f64
    );
}

/// At the default thresholds (5 / 10 / 115 ms) most packets are settled without a clock read:
/// data read at once is not recorded, data that waited 300 ms in the socket is, at usercopy.
#[test]
fn at_the_default_thresholds_only_data_that_waited_past_115_ms_is_recorded() {
    let agent = Agent::start(
        "[events.netrecvlat]\nmax_events_per_second = 1000\n[events.dropwatch]\nenabled = false\n",
        &[],
    );
    let ns = NetnsPair::new("nrld");
    let listener = listener_in(&ns);
    let port = listener.local_addr().unwrap().port();
    let receiver = ns.spawn_in("bq-nrl-late", move || {
        let (mut c, _) = listener.accept().unwrap();
        let mut buf = [0u8; 100];
        // A ping-pong read at once, then data left waiting.
        for _ in 0..200 {
            c.read_exact(&mut buf).unwrap();
            c.write_all(&buf).unwrap();
        }
        std::thread::sleep(Duration::from_millis(300));
        c.read_to_end(&mut Vec::new()).expect("read in netns")
    });
    let mut client = TcpStream::connect((ns.ns_addr, port)).unwrap();
    let mut buf = [b'p'; 100];
    for _ in 0..200 {
        client.write_all(&buf).unwrap();
        client.read_exact(&mut buf).unwrap();
    }
    client.write_all(&[b'n'; 5000]).unwrap();
    client.shutdown(std::net::Shutdown::Write).unwrap();
    assert_eq!(receiver.join().unwrap(), 5000);

    let ours = || -> Vec<serde_json::Value> {
        agent
            .events("tracer=netrecvlat&limit=10000")
            .into_iter()
            .filter(|e| e["tracer_data"]["dport"] == port || e["tracer_data"]["sport"] == port)
            .collect()
    };
    assert!(
        wait_until(Duration::from_secs(5), || !ours().is_empty()),
        "no record for port {port}; metrics:\n{}\nlog:\n{}",
        agent.metrics(),
        agent.log()
    );
    for e in ours() {
        let d = &e["tracer_data"];
        assert_eq!(d["latency_stage"], "usercopy", "{d}");
        assert_eq!(d["dport"], port, "{d}");
        assert_eq!(d["latency_threshold_ns"], 115_000_000u64, "{d}");
        let lat = d["latency_ns"].as_u64().unwrap();
        assert!((115_000_000..10_000_000_000).contains(&lat), "{d}");
    }
}
