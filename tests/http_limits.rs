//! The HTTP server against a local user who holds connections: idle and slow-header
//! connections, a connection cap below the fd limit (raised at start), live-stream slots that
//! are connections, and a fast stream reader that a burst does not drop.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use common::*;

/// Starts the agent with RLIMIT_NOFILE `soft`/`hard` (set in the child before exec).
fn agent_with_nofile(soft: u64, hard: u64, config: &str, args: &[&str]) -> Agent {
    Agent::start_with(TempDir::new("agent"), config, args, |cmd| {
        use std::os::unix::process::CommandExt;
        let lim = libc::rlimit {
            rlim_cur: soft,
            rlim_max: hard,
        };
        // SAFETY: the hook runs in the forked child before exec and only calls setrlimit,
        // which is async-signal-safe, on a struct copied into the closure.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    })
}

/// (soft, hard) "Max open files" of a process.
fn nofile_of(pid: u32) -> (u64, u64) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let n: Vec<u64> = line
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    (n[0], n[1])
}

fn port_of(addr: &str) -> u16 {
    addr.rsplit(':').next().unwrap().parse().unwrap()
}

/// TCP connections the agent holds open on its port: its socket fds matched with
/// /proc/net/tcp, the listening socket left out.
fn agent_connections(pid: u32, port: u16) -> usize {
    let mut inodes = std::collections::HashSet::new();
    for fd in std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
    {
        if let Ok(target) = std::fs::read_link(fd.path()) {
            let t = target.to_string_lossy();
            if let Some(inode) = t.strip_prefix("socket:[").and_then(|r| r.strip_suffix(']')) {
                inodes.insert(inode.to_string());
            }
        }
    }
    let local = format!(":{port:04X}");
    std::fs::read_to_string("/proc/net/tcp")
        .unwrap()
        .lines()
        .skip(1)
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 9 && f[1].ends_with(&local) && f[3] != "0A" && inodes.contains(f[9])
        })
        .count()
}

fn shrink_receive_buffer(s: &TcpStream) {
    let size: libc::c_int = 4096;
    // SAFETY: setsockopt on a socket we own, with a pointer to a c_int and its size.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            &size as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

/// True once the peer closed `s` (EOF or reset), reading and discarding what it sent.
fn closed_by_peer(s: &mut TcpStream, within: Duration) -> bool {
    let end = Instant::now() + within;
    let mut buf = [0u8; 4096];
    while Instant::now() < end {
        let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return true,
        }
    }
    false
}

#[test]
fn the_soft_fd_limit_is_raised_to_the_hard_limit_at_start() {
    let agent = agent_with_nofile(512, 4096, "", &["--disable", "dropwatch"]);
    assert_eq!(nofile_of(agent.pid()), (4096, 4096));
    assert!(
        agent.log().contains("max_connections=1024"),
        "{}",
        agent.log()
    );
}

#[test]
fn two_thousand_idle_and_slow_header_connections_do_not_stop_healthz_or_metrics() {
    // A hard limit of 1024 fds, as a unit file or a container may set: the cap must stay below.
    let agent = agent_with_nofile(
        1024,
        1024,
        "[server]\nheader_read_timeout_ms = 3000\n",
        &["--disable", "dropwatch"],
    );
    let cap = 1024 - 512;
    assert!(
        agent.log().contains(&format!("max_connections={cap}")),
        "{}",
        agent.log()
    );
    let port = port_of(&agent.addr);
    // 1,000 connections that send nothing and 1,000 that send half a request head.
    let mut held = Vec::new();
    for i in 0..2000 {
        let mut s = TcpStream::connect(&agent.addr).expect("connect");
        if i % 2 == 1 {
            let _ = s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ");
        }
        held.push(s);
    }
    let start = Instant::now();
    let (code, body) = agent.get("/healthz");
    assert_eq!(code, 200, "{body}");
    let (code, body) = agent.get("/metrics");
    assert_eq!(code, 200);
    assert!(body.contains("bianque_scrape_collector_success"));
    let (code, _) = agent.get("/events?limit=1");
    assert_eq!(code, 200);
    let took = start.elapsed();
    assert!(took < Duration::from_secs(3), "answers took {took:?}");
    // Evicted connections close as new ones come: the agent never holds more than its cap.
    assert!(wait_until(Duration::from_secs(2), || agent_connections(
        agent.pid(),
        port
    ) <= cap));
    // No tracer ran out of fds.
    let (_, tracers) = agent.get("/tracers");
    assert!(!tracers.contains("\"failed\""), "{tracers}");
    assert!(
        !agent.log().contains("Too many open files"),
        "{}",
        agent.log()
    );
    // What is left is closed by the header timeout: idle and slow-header alike.
    for (i, s) in held.iter_mut().enumerate() {
        assert!(
            closed_by_peer(s, Duration::from_secs(8)),
            "connection {i} still open"
        );
    }
    assert!(wait_until(Duration::from_secs(2), || agent_connections(
        agent.pid(),
        port
    ) == 0));
    assert_eq!(agent.get("/healthz").0, 200);
}

/// Sends a stream request and never reads: a client that is slow by intent.
fn stuck_stream_client(addr: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).expect("connect");
    shrink_receive_buffer(&s);
    s.write_all(b"GET /v1/events/watch HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    s
}

#[test]
fn sixty_four_non_reading_stream_clients_leave_at_most_the_cap_of_connections_open() {
    let udp = closed_udp_port();
    let cap = 16;
    let agent = Agent::start(
        &format!(
            "[server]\nstream_max_clients = {cap}\nstream_client_buffer = 8\nwrite_timeout_ms = 2000\n[events.dropwatch]\nmax_events_per_second = 20000\nmax_events_per_second_per_source = 20000\nports = [{udp}]\n"
        ),
        &[],
    );
    let port = port_of(&agent.addr);
    for round in 1..=2 {
        let clients: Vec<TcpStream> = (0..64).map(|_| stuck_stream_client(&agent.addr)).collect();
        // The cap's worth get a stream; the rest get 429 and their connection closed.
        let settled = || {
            agent.metric("bianque_stream_clients") == Some(cap as f64)
                && agent_connections(agent.pid(), port) <= cap
        };
        assert!(
            wait_until(Duration::from_secs(10), settled),
            "round {round}: {} connections open, {:?} stream clients",
            agent_connections(agent.pid(), port),
            agent.metric("bianque_stream_clients")
        );
        assert_eq!(
            agent.metric("bianque_stream_rejected_total"),
            Some((round * (64 - cap)) as f64)
        );
        // Records until every stuck client fell behind and was dropped.
        let dropped_before = agent
            .metric("bianque_stream_dropped_clients_total")
            .unwrap_or(0.0);
        let all_dropped = || {
            agent
                .metric("bianque_stream_dropped_clients_total")
                .unwrap_or(0.0)
                >= dropped_before + cap as f64
        };
        let start = Instant::now();
        while !all_dropped() && start.elapsed() < Duration::from_secs(60) {
            send_udp_from_thread("bq-flood", &format!("127.0.0.1:{udp}"), 5000);
            std::thread::sleep(Duration::from_millis(200));
        }
        assert!(
            wait_until(Duration::from_secs(10), all_dropped),
            "round {round}: {}",
            agent.log()
        );
        // A dropped client that reads nothing has its connection cut by the write timeout.
        assert!(
            wait_until(Duration::from_secs(10), || agent_connections(
                agent.pid(),
                port
            ) == 0),
            "round {round}: {} connections still open",
            agent_connections(agent.pid(), port)
        );
        assert_eq!(agent.metric("bianque_stream_clients"), Some(0.0));
        drop(clients);
        // The flood's last records are still on their way to the stream; the next round's
        // clients must not start behind them (they would be dropped before being counted).
        assert!(wait_until(Duration::from_secs(10), || {
            agent.metric("bianque_store_queue_length") == Some(0.0)
        }));
        std::thread::sleep(Duration::from_secs(2));
    }
}

#[test]
fn a_fast_stream_reader_is_not_dropped_by_a_burst_larger_than_its_queue() {
    let udp = closed_udp_port();
    let agent = Agent::start(
        &format!(
            "[server]\nstream_client_buffer = 16\n[events.dropwatch]\nmax_events_per_second = 20000\nmax_events_per_second_per_source = 20000\nports = [{udp}]\n"
        ),
        &[],
    );
    let mut s = TcpStream::connect(&agent.addr).unwrap();
    s.write_all(b"GET /v1/events/watch?tracer=dropwatch HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let reader = std::thread::spawn(move || {
        let mut r = BufReader::new(s);
        let (mut events, mut dropped) = (0usize, false);
        let mut line = String::new();
        loop {
            line.clear();
            match r.read_line(&mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            if line.starts_with("data: {\"specversion\"") {
                events += 1;
            }
            if line.starts_with("event: dropped") {
                dropped = true;
            }
        }
        (events, dropped)
    });
    assert!(wait_until(Duration::from_secs(5), || agent
        .metric("bianque_stream_clients")
        == Some(1.0)));
    // One burst, far more than the client's queue at once (one store batch), less than the
    // shared ring.
    send_udp_from_thread("bq-burst", &format!("127.0.0.1:{udp}"), 800);
    let stored = || agent.events(&format!("data.dport={udp}&limit=10000")).len();
    assert!(wait_until(Duration::from_secs(10), || stored() >= 100));
    std::thread::sleep(Duration::from_secs(1));
    let stored = stored();
    // The reader stops 5 s after the last event.
    let (events, dropped) = reader.join().unwrap();
    assert!(!dropped, "a reader that kept up was dropped");
    assert_eq!(events, stored, "delivered {events} of {stored}");
    assert_eq!(
        agent.metric("bianque_stream_dropped_clients_total"),
        Some(0.0)
    );
}
