//! dropwatch on the real kernel: real drops in, records and counters out.

mod common;

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// The storm test exhausts every agent's global rate limit (as a real storm would), so it runs
/// alone: it takes this lock for writing, the other tests for reading.
static STORM: std::sync::RwLock<()> = std::sync::RwLock::new(());

fn quiet() -> std::sync::RwLockReadGuard<'static, ()> {
    STORM.read().unwrap_or_else(|e| e.into_inner())
}

fn only_port(port: u16) -> String {
    format!("[events.dropwatch]\nports = [{port}]\n")
}

fn drops_to(agent: &Agent, port: u16) -> Vec<serde_json::Value> {
    agent
        .events("tracer=dropwatch&limit=10000")
        .into_iter()
        .filter(|e| e["tracer_data"]["dport"] == port)
        .collect()
}

#[test]
fn udp_to_a_closed_port_is_recorded_as_no_socket() {
    let _quiet = quiet();
    let port = closed_udp_port();
    // Only this test's port: other drops on the machine must not use up the rate limit.
    let agent = Agent::start(&only_port(port), &[]);
    send_udp_from_thread("bq-udp-sender", &format!("127.0.0.1:{port}"), 3);
    assert!(
        wait_until(Duration::from_secs(5), || drops_to(&agent, port).len() >= 3),
        "log:\n{}",
        agent.log()
    );
    let events = drops_to(&agent, port);
    for e in &events {
        let d = &e["tracer_data"];
        assert_eq!(e["tracer_name"], "dropwatch");
        assert_eq!(e["tracer_type"], "event");
        assert_eq!(d["drop_reason"], "NO_SOCKET", "{e}");
        assert_eq!(d["protocol"], "udp");
        assert_eq!(d["l3_protocol"], "ipv4");
        assert_eq!(d["saddr"], "127.0.0.1");
        assert_eq!(d["daddr"], "127.0.0.1");
        assert_eq!(d["comm"], "bq-udp-sender", "{e}");
        assert_eq!(d["pid"], std::process::id(), "pid is the sender's tgid");
        assert!(
            d["drop_location"]
                .as_str()
                .unwrap()
                .starts_with("__udp4_lib_rcv+0x"),
            "{e}"
        );
        assert_eq!(d["netdev_name"], "lo");
        assert!(d["net_namespace_inum"].as_u64().unwrap() > 0);
        assert!(d["packet_len_bytes"].as_u64().unwrap() > 0);
        assert!(
            d["memory_cgroup_path"].as_str().unwrap().starts_with('/'),
            "{e}"
        );
        assert!(e["tracer_time"].as_str().unwrap().ends_with('Z'));
    }
    // Counted by reason in /metrics too.
    assert!(
        agent
            .metric("bianque_dropwatch_events_total{reason=\"NO_SOCKET\"}")
            .unwrap()
            >= 3.0
    );
    // One record by id.
    let id = events[0]["tracer_id"].as_str().unwrap();
    let (code, body) = agent.get(&format!("/events/{id}"));
    assert_eq!(code, 200);
    assert!(body.contains(id));
}

#[test]
fn udp_over_ipv6_is_recorded() {
    let _quiet = quiet();
    let port = {
        let s = std::net::UdpSocket::bind("[::1]:0").expect("bind ::1");
        s.local_addr().unwrap().port()
    };
    let agent = Agent::start(&only_port(port), &[]);
    send_udp_from_thread("bq-udp6-sender", &format!("[::1]:{port}"), 2);
    assert!(
        wait_until(Duration::from_secs(5), || !drops_to(&agent, port)
            .is_empty()),
        "log:\n{}",
        agent.log()
    );
    // The closed port's drop. (Once in CI another UDP drop to the same port came first, with
    // reason NOT_SPECIFIED; all of them are printed if the one expected is missing.)
    let all = drops_to(&agent, port);
    let e = all
        .iter()
        .find(|e| e["tracer_data"]["drop_reason"] == "NO_SOCKET")
        .unwrap_or_else(|| panic!("no NO_SOCKET drop to [::1]:{port}: {all:#?}"));
    let d = &e["tracer_data"];
    assert_eq!(d["l3_protocol"], "ipv6", "{e}");
    assert_eq!(d["protocol"], "udp", "{e}");
    assert_eq!(d["daddr"], "::1", "{e}");
    assert_eq!(d["comm"], "bq-udp6-sender", "{e}");
}

#[test]
fn an_nftables_drop_rule_is_recorded_as_netfilter_drop() {
    let _quiet = quiet();
    let port = closed_udp_port();
    let agent = Agent::start(&only_port(port), &[]);
    let table = format!("bq_test_{}", std::process::id());
    let _cleanup = Cleanup(format!("nft delete table inet {table}"));
    sh(&format!(
        "nft add table inet {table} && \
         nft add chain inet {table} input '{{ type filter hook input priority -10; policy accept; }}' && \
         nft add rule inet {table} input iif lo udp dport {port} drop"
    ));
    send_udp_from_thread("bq-nft-sender", &format!("127.0.0.1:{port}"), 2);
    assert!(
        wait_until(Duration::from_secs(5), || !drops_to(&agent, port)
            .is_empty()),
        "log:\n{}",
        agent.log()
    );
    let e = &drops_to(&agent, port)[0];
    assert_eq!(e["tracer_data"]["drop_reason"], "NETFILTER_DROP", "{e}");
    assert_eq!(e["tracer_data"]["comm"], "bq-nft-sender");
}

#[test]
fn the_rate_limit_holds_and_every_drop_is_accounted_for() {
    let _alone = STORM.write().unwrap_or_else(|e| e.into_inner());
    let port = closed_udp_port();
    let agent = Agent::start(
        // One source here: its share is the whole limit.
        &format!("[events.dropwatch]\nmax_events_per_second = 10\nmax_events_per_second_per_source = 10\nports = [{port}]\n"),
        &[],
    );
    let secs = 3.0;
    let sent = std::thread::Builder::new()
        .name("bq-storm".into())
        .spawn(move || {
            let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            let start = Instant::now();
            let mut n = 0u64;
            while start.elapsed().as_secs_f64() < secs {
                if s.send_to(b"x", ("127.0.0.1", port)).is_ok() {
                    n += 1;
                }
            }
            n
        })
        .unwrap()
        .join()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500)); // reader poll + store batch
    let recorded = drops_to(&agent, port).len() as f64;
    let suppressed = agent.metric("bianque_dropwatch_suppressed_total").unwrap();
    let lost = agent
        .metric("bianque_dropwatch_ringbuf_lost_total")
        .unwrap();
    println!("sent {sent}, recorded {recorded}, suppressed {suppressed}, lost {lost}");
    assert!(sent > 1000, "the storm was too small: {sent}");
    // 3 s of storm spans 3 or 4 one-second windows of 10; a racy window reset may add a few.
    assert!((20.0..=50.0).contains(&recorded), "recorded {recorded}");
    assert_eq!(
        recorded + suppressed + lost,
        sent as f64,
        "every matching drop is recorded or counted"
    );
    assert!(agent.metric("bianque_dropwatch_filtered_total").is_some());
}

#[test]
fn sigterm_exits_zero_fast_and_leaves_no_bpf_program() {
    let _quiet = quiet();
    let mut agent = Agent::start("", &[]);
    let pid = agent.pid();
    // The BPF programs the agent holds, by id, from its fds (prog and link fds name them).
    let ours: Vec<u64> = std::fs::read_dir(format!("/proc/{pid}/fdinfo"))
        .unwrap()
        .flatten()
        .filter_map(|f| std::fs::read_to_string(f.path()).ok())
        .flat_map(|info| {
            info.lines()
                .filter_map(|l| {
                    l.strip_prefix("prog_id:")
                        .and_then(|v| v.trim().parse().ok())
                })
                .collect::<Vec<u64>>()
        })
        .collect();
    assert!(
        !ours.is_empty(),
        "the agent holds BPF programs while running"
    );
    let start = Instant::now();
    let status = agent
        .terminate(Duration::from_secs(5))
        .expect("agent exited");
    let took = start.elapsed();
    assert!(
        status.success(),
        "exit status {status:?}; log:\n{}",
        agent.log()
    );
    assert!(took < Duration::from_secs(2), "shutdown took {took:?}");
    // The kernel frees a program shortly after its last fd closes (RCU): allow it a moment.
    let loaded = || -> Vec<u64> {
        let left: serde_json::Value = serde_json::from_str(&sh("bpftool prog show -j")).unwrap();
        left.as_array()
            .unwrap()
            .iter()
            .filter_map(|p| p["id"].as_u64())
            .filter(|id| ours.contains(id))
            .collect()
    };
    assert!(
        wait_until(Duration::from_secs(2), || loaded().is_empty()),
        "programs {:?} still loaded after exit",
        loaded()
    );
    assert!(agent.log().contains("bianque stopped"));
}

#[test]
fn a_dropped_icmp_port_unreachable_is_recorded_with_type_names() {
    let _quiet = quiet();
    let port = closed_udp_port();
    // Only ICMP drops count against the rate limit here.
    let agent = Agent::start("[events.dropwatch]\nprotocols = [\"icmp\"]\n", &[]);
    let table = format!("bq_icmp_{}", std::process::id());
    let _cleanup = Cleanup(format!("nft delete table inet {table}"));
    // Drop the kernel's port-unreachable answer whose quoted UDP header names our port
    // (at bit 64 + 160 + 16: past the ICMP header, the quoted IPv4 header and source port).
    sh(&format!(
        "nft add table inet {table} && \
         nft add chain inet {table} input '{{ type filter hook input priority -10; policy accept; }}' && \
         nft add rule inet {table} input iif lo icmp type destination-unreachable @th,240,16 {port} drop"
    ));
    let icmp = || {
        agent
            .events("tracer=dropwatch&limit=10000")
            .into_iter()
            .find(|e| {
                let d = &e["tracer_data"];
                d["protocol"] == "icmp" && d["drop_reason"] == "NETFILTER_DROP"
            })
    };
    // One datagram per poll: the kernel's ICMP rate limit may hold back a single answer.
    assert!(
        wait_until(Duration::from_secs(5), || {
            send_udp_from_thread("bq-icmp-sender", &format!("127.0.0.1:{port}"), 1);
            icmp().is_some()
        }),
        "log:\n{}",
        agent.log()
    );
    let e = icmp().unwrap();
    let d = &e["tracer_data"];
    assert_eq!(d["icmp_type"], 3, "{e}");
    assert_eq!(d["icmp_code"], 3);
    assert_eq!(d["icmp_type_name"], "destination-unreachable");
    assert_eq!(d["icmp_code_name"], "port-unreachable");
    assert_eq!(d["saddr"], "127.0.0.1");
    assert!(d.get("dport").is_none());
}

/// `sh -c '<join the memory cgroup>; exec setpriv <as nobody> python3 -c <code>'`, stdout piped.
fn python_in(cg: &MemCgroup, as_nobody: bool, code: &str) -> std::process::Child {
    let user = if as_nobody {
        "setpriv --reuid=65534 --regid=65534 --clear-groups"
    } else {
        ""
    };
    Command::new("sh")
        .arg("-c")
        .arg(format!(
            "echo $$ > {}/cgroup.procs && exec {user} /usr/bin/python3 -c \"$0\"",
            cg.dir.display()
        ))
        .arg(code)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn python3 in a cgroup")
}

fn child_output(mut child: std::process::Child, timeout: Duration) -> String {
    let status = wait_child(&mut child, timeout);
    let mut out = String::new();
    if let Some(mut o) = child.stdout.take() {
        let _ = o.read_to_string(&mut out);
    }
    assert!(status.is_some_and(|s| s.success()), "{status:?}: {out}");
    out
}

/// Issue 14 item 9: with the default limits (100/s, 25/s per source), a `nobody` UDP flood from
/// one memory cgroup uses up its own share only; every TCP drop provoked meanwhile from another
/// cgroup (a SYN to a closed port: NO_SOCKET) is recorded.
#[test]
fn a_nobody_flood_from_one_cgroup_does_not_hide_tcp_drops_from_another() {
    let _alone = STORM.write().unwrap_or_else(|e| e.into_inner());
    let udp_port = closed_udp_port();
    let tcp_port = free_port();
    let agent = Agent::start("", &[]);
    let flood_cg = MemCgroup::new("flood", 1 << 30);
    let victim_cg = MemCgroup::new("victim", 1 << 30);
    let secs = 6;
    let flood = python_in(
        &flood_cg,
        true,
        &format!(
            "import socket,time\n\
             s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n\
             end=time.monotonic()+{secs}\nn=0\n\
             while time.monotonic()<end:\n\
             \x20for _ in range(100): s.sendto(b'x',('127.0.0.1',{udp_port}))\n\
             \x20n+=100\n\
             print(n)\n"
        ),
    );
    std::thread::sleep(Duration::from_secs(1)); // the flood is on
    let connects = 20;
    let victim = python_in(
        &victim_cg,
        false,
        &format!(
            "import socket,time\nrefused=0\n\
             for i in range({connects}):\n\
             \x20s=socket.socket()\n\
             \x20try: s.connect(('127.0.0.1',{tcp_port}))\n\
             \x20except ConnectionRefusedError: refused+=1\n\
             \x20s.close(); time.sleep(0.2)\n\
             print(refused)\n"
        ),
    );
    let refused: u32 = child_output(victim, Duration::from_secs(20))
        .trim()
        .parse()
        .expect("refused count");
    let sent: u64 = child_output(flood, Duration::from_secs(secs + 10))
        .trim()
        .parse()
        .expect("flood count");
    assert_eq!(refused, connects, "every connect met a closed port");
    let rate = sent / secs;
    assert!(rate >= 20_000, "the flood was {rate}/s, not >= 20k/s");

    let tcp_drops = || -> Vec<serde_json::Value> {
        agent
            .events("tracer=dropwatch&limit=10000")
            .into_iter()
            .filter(|e| {
                let d = &e["tracer_data"];
                d["protocol"] == "tcp" && d["dport"] == tcp_port
            })
            .collect()
    };
    assert!(
        wait_until(Duration::from_secs(5), || tcp_drops().len()
            >= connects as usize),
        "{} of {connects} TCP drops recorded under a {rate}/s flood; metrics:\n{}",
        tcp_drops().len(),
        agent
            .metrics()
            .lines()
            .filter(|l| l.contains("dropwatch"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    for e in tcp_drops() {
        let d = &e["tracer_data"];
        assert_eq!(d["drop_reason"], "NO_SOCKET", "{e}");
        assert_eq!(d["memory_cgroup_path"], victim_cg.path.as_str(), "{e}");
    }
    // The flood got its share and no more; the per-source limit refused the rest.
    let flood_records = drops_to(&agent, udp_port).len() as u64;
    assert!(flood_records > 0, "the flood's own drops are recorded too");
    assert!(
        flood_records <= 25 * (secs + 2),
        "{flood_records} flood records"
    );
    let by_source = agent
        .metric("bianque_dropwatch_suppressed_by_limit_total{limit=\"source\"}")
        .expect("suppressed_by_limit_total{limit=source}");
    assert!(
        by_source >= (sent / 2) as f64,
        "source limit refused {by_source} of {sent}"
    );
    assert!(agent.metric("bianque_dropwatch_suppressed_total").unwrap() >= by_source);
}
