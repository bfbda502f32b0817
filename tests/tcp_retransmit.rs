//! tcp_retransmit on the real kernel, across a veth pair into a network namespace:
//! - a firewall rule in the namespace drops SYNs: the client's SYN is retransmitted by the
//!   retransmission timer (phase connect, reason RTO);
//! - a rule drops one data segment of an established connection: it is retransmitted
//!   (phase data, reason fast retransmit: the segments after it are SACKed) with its exact
//!   sequence range.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use common::*;

fn agent() -> Agent {
    Agent::start(
        "[events.tcp_retransmit]\nmax_events_per_second = 1000\n[events.dropwatch]\nenabled = false\n",
        &[],
    )
}

fn records_to(agent: &Agent, daddr: &str, dport: u16) -> Vec<serde_json::Value> {
    agent
        .events("tracer=tcp_retransmit&limit=10000")
        .into_iter()
        .filter(|e| {
            e["tracer_data"]["tcp_daddr"] == daddr && e["tracer_data"]["tcp_dport"] == dport
        })
        .collect()
}

#[test]
fn a_dropped_syn_is_retransmitted_in_the_connect_phase_by_rto() {
    let agent = agent();
    let ns = NetnsPair::new("rtsyn");
    let listener = ns.run_in({
        let addr = ns.ns_addr;
        move || TcpListener::bind((addr, 0)).expect("bind in netns")
    });
    let port = listener.local_addr().unwrap().port();
    ns.exec(&format!(
        "iptables -A INPUT -p tcp --dport {port} --syn -j DROP"
    ));
    let target = SocketAddr::from((ns.ns_addr, port));
    // The first retransmission comes after the initial RTO (1 s).
    let r = TcpStream::connect_timeout(&target, Duration::from_millis(2500));
    assert!(r.is_err(), "the SYN should have been dropped");
    let daddr = ns.ns_addr.to_string();
    assert!(
        wait_until(Duration::from_secs(5), || !records_to(&agent, &daddr, port)
            .is_empty()),
        "no record; log:\n{}",
        agent.log()
    );
    let e = &records_to(&agent, &daddr, port)[0];
    println!("{e}");
    let d = &e["tracer_data"];
    assert_eq!(d["phase"], "connect", "{d}");
    assert_eq!(d["tcp_reason"], "RTO", "{d}");
    assert_eq!(d["tcp_state"], "SYN_SENT");
    assert_eq!(d["ca_state"], "Loss");
    assert_eq!(d["event_type"], "tcp_retransmit_skb");
    assert_eq!(d["l3_protocol"], "ipv4");
    assert_eq!(d["tcp_saddr"], ns.host_addr.to_string());
    assert!(d["tcp_flags"].as_str().unwrap().contains("SYN"), "{d}");
    assert_eq!(
        d["tcp_end_seq"].as_u64().unwrap(),
        d["tcp_seq"].as_u64().unwrap() + 1
    );
    // The client socket lives in this process's namespace, the host's: no container.
    assert_eq!(d["net_namespace_inum"], own_netns_inum());
    assert!(e.get("container_id").is_none(), "{e}");
    assert!(
        agent
            .metric("bianque_tcp_retransmit_events_total{event=\"tcp_retransmit_skb\"}")
            .unwrap()
            >= 1.0
    );
}

#[test]
fn a_dropped_data_segment_is_retransmitted_in_the_data_phase() {
    let agent = agent();
    let ns = NetnsPair::new("rtdata");
    let listener = ns.run_in({
        let addr = ns.ns_addr;
        move || TcpListener::bind((addr, 0)).expect("bind in netns")
    });
    let port = listener.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        let (mut c, _) = listener.accept().unwrap();
        let mut buf = vec![0u8; 65536];
        let mut total = 0;
        while let Ok(n) = c.read(&mut buf) {
            if n == 0 {
                break;
            }
            total += n;
        }
        total
    });
    let mut client = TcpStream::connect((ns.ns_addr, port)).unwrap();
    client.set_nodelay(true).unwrap();
    let sport = client.local_addr().unwrap().port();
    // Drop exactly one segment carrying data (1000 payload bytes + 52 bytes of headers): the
    // 6th one after the rule is in place.
    ns.exec(&format!(
        "iptables -A INPUT -p tcp --dport {port} -m length --length 1052 \
         -m statistic --mode nth --every 100000 --packet 5 -j DROP"
    ));
    let chunk = [b'd'; 1000];
    for _ in 0..40 {
        client.write_all(&chunk).unwrap();
        std::thread::sleep(Duration::from_millis(2));
    }
    client.shutdown(std::net::Shutdown::Write).unwrap();
    assert_eq!(
        server.join().unwrap(),
        40_000,
        "every byte arrives in the end"
    );
    let daddr = ns.ns_addr.to_string();
    let data_records = || -> Vec<serde_json::Value> {
        records_to(&agent, &daddr, port)
            .into_iter()
            .filter(|e| e["tracer_data"]["phase"] == "data")
            .collect()
    };
    assert!(
        wait_until(Duration::from_secs(5), || !data_records().is_empty()),
        "no data-phase record; all: {:?}; log:\n{}",
        records_to(&agent, &daddr, port),
        agent.log()
    );
    let records = data_records();
    println!("{records:?}");
    let d = &records[0]["tracer_data"];
    assert_eq!(d["tcp_sport"], sport);
    assert_eq!(d["tcp_state"], "ESTABLISHED");
    assert_eq!(d["tcp_saddr"], ns.host_addr.to_string());
    let (seq, end) = (
        d["tcp_seq"].as_u64().unwrap(),
        d["tcp_end_seq"].as_u64().unwrap(),
    );
    assert_eq!(
        (end + (1 << 32) - seq) % (1 << 32),
        1000,
        "one segment: {d}"
    );
    // Later segments arrive, so SACKs start recovery before the timer would fire.
    assert_eq!(d["tcp_reason"], "fast_retransmit", "{d}");
    assert_eq!(d["ca_state"], "Recovery");
    assert_eq!(d["net_namespace_inum"], own_netns_inum());
    assert!(records[0].get("container_id").is_none());
}
