//! What `bianque events` prints: a hostile process name cannot drive the terminal, ids are
//! shown and accepted by prefix, flag errors are clear, and `--follow | head -1` ends.

mod common;

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// Runs `bianque events …`: (exit code, stdout, stderr).
fn events(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(BIN).arg("events").args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A store with `n` dropwatch records, written through the library (no agent, no kernel).
fn seeded_store(dir: &std::path::Path, n: i64) -> Vec<String> {
    let store = bianque::store::Store::open(
        dir,
        bianque::store::Retention {
            max_age: Duration::from_secs(86_400),
            max_size_bytes: 1 << 30,
        },
    )
    .unwrap();
    let now = bianque::record::now_ns();
    let mut ids = Vec::new();
    for i in 0..n {
        let r = bianque::record::Record::new(
            "dropwatch",
            bianque::record::TracerType::Event,
            now - i * 1_000_000,
            "h",
            "r",
            None,
            serde_json::json!({"dport": i, "comm": "bq-seed"}),
        );
        ids.push(r.tracer_id.clone());
        store.save(r);
    }
    store.close();
    ids
}

#[test]
fn flag_errors_are_one_clear_line_and_not_config_errors() {
    for (args, needle) in [
        (&["--limit", "-1"][..], "--limit"),
        (&["--limit", "0"][..], "1..=10000"),
        (&["--tracer", "nosuch"][..], "dropwatch"),
        (&["--since", "yesterday"][..], "--since"),
        (&["--data", "novalue"][..], "FIELD=VALUE"),
    ] {
        let (code, _, err) = events(&[&["--data-dir", "/nonexistent"][..], args].concat());
        assert_eq!(code, 2, "{args:?}: {err}");
        // One line (clap adds its `--help` hint on a line of its own).
        let lines: Vec<&str> = err
            .lines()
            .filter(|l| !l.trim().is_empty() && !l.starts_with("For more information"))
            .collect();
        assert_eq!(lines.len(), 1, "{args:?}: {err}");
        assert!(lines[0].contains(needle), "{args:?}: {err}");
        assert!(!err.contains("config error"), "{args:?}: {err}");
    }
    let (_, _, err) = events(&["--tracer", "nosuch"]);
    assert!(err.contains("nosuch") && err.contains("signal"), "{err}");
}

#[test]
fn the_table_shows_ids_show_takes_a_unique_prefix_and_config_names_the_data_dir() {
    let dir = TempDir::new("cli-events");
    let data = dir.path().join("store");
    let ids = seeded_store(&data, 3);
    // `--config` alone: its store.data_dir is where the records are.
    let cfg = dir.path().join("c.toml");
    std::fs::write(
        &cfg,
        format!("[store]\ndata_dir = \"{}\"\n", data.display()),
    )
    .unwrap();
    let (code, out, err) = events(&["--config", cfg.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.lines().next().unwrap().starts_with("ID "), "{out}");
    for id in &ids {
        assert!(out.contains(id.as_str()), "{id} not in:\n{out}");
    }
    // A unique prefix finds the record; the whole id of course too.
    let id = &ids[1];
    let unique = (8..=id.len())
        .map(|n| &id[..n])
        .find(|p| ids.iter().filter(|i| i.starts_with(p)).count() == 1)
        .unwrap();
    let (code, out, err) = events(&["show", unique, "--config", cfg.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["tracer_id"], id.as_str());
    // A prefix they all share is refused, naming why.
    let (code, _, err) = events(&["show", &id[..4], "--data-dir", data.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(err.contains("more than one"), "{err}");
    let (code, _, err) = events(&["show", "zzzz", "--data-dir", data.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains("no event"), "{err}");
}

/// Sends one UDP datagram to `port` from a thread whose comm is set with prctl(PR_SET_NAME).
fn drop_udp_as(comm: &'static [u8], port: u16) {
    std::thread::spawn(move || {
        let mut name = comm.to_vec();
        name.truncate(15);
        name.push(0);
        // SAFETY: PR_SET_NAME reads a NUL-terminated string of at most 16 bytes we own.
        let rc = unsafe { libc::prctl(libc::PR_SET_NAME, name.as_ptr() as libc::c_ulong, 0, 0, 0) };
        assert_eq!(rc, 0, "prctl");
        let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        s.send_to(b"x", ("127.0.0.1", port)).unwrap();
    })
    .join()
    .unwrap();
}

const HOSTILE: [(&[u8], &str); 3] = [
    (b"\x1b[2J", "\\x1b[2J"),
    (b"x\r\nFAKE", "x\\r\\nFAKE"),
    (b"\x1b]0;pwn\x07", "\\x1b]0;pwn\\x07"),
];

fn assert_no_raw_controls(what: &str, text: &str) {
    for (i, c) in text.char_indices() {
        assert!(
            !c.is_control() || c == '\n',
            "{what}: raw control {c:?} at {i} in {text:?}"
        );
    }
}

#[test]
fn a_comm_set_to_terminal_escapes_prints_as_visible_escapes() {
    let port = closed_udp_port();
    let agent = Agent::start(&format!("[events.dropwatch]\nports = [{port}]\n"), &[]);
    // --follow first, so the stream sees the records too.
    let mut follow = Command::new(BIN)
        .args(["events", "--follow", "--tracer", "dropwatch", "--listen"])
        .arg(&agent.addr)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _kill = Cleanup(format!("kill {} 2>/dev/null", follow.id()));
    let mut followed = BufReader::new(follow.stdout.take().unwrap());
    let mut header = String::new();
    followed.read_line(&mut header).unwrap();
    assert!(wait_until(Duration::from_secs(5), || agent
        .metric("bianque_stream_clients")
        == Some(1.0)));
    for (comm, _) in HOSTILE {
        drop_udp_as(comm, port);
    }
    let query = format!("data.dport={port}");
    assert!(wait_until(Duration::from_secs(10), || agent
        .events(&query)
        .len()
        == HOSTILE.len()));
    let data_dir = agent.data_dir();
    let data_dir = data_dir.to_str().unwrap();
    let (code, table, err) = events(&["--data-dir", data_dir, "--data", &format!("dport={port}")]);
    assert_eq!(code, 0, "{err}");
    assert_no_raw_controls("table", &table);
    // One line per record plus the header: no record's name broke a line.
    assert_eq!(table.lines().count(), 1 + HOSTILE.len(), "{table}");
    let mut live = String::new();
    for _ in HOSTILE {
        let mut line = String::new();
        followed.read_line(&mut line).unwrap();
        live.push_str(&line);
    }
    assert_no_raw_controls("--follow", &live);
    for (_, shown) in HOSTILE {
        assert!(
            table.contains(&format!("comm={shown}")),
            "{shown} not in:\n{table}"
        );
        assert!(
            live.contains(&format!("comm={shown}")),
            "{shown} not in:\n{live}"
        );
    }
    // JSON lines keep the value, as JSON escapes.
    let (code, json, _) = events(&[
        "--data-dir",
        data_dir,
        "--data",
        &format!("dport={port}"),
        "--json",
    ]);
    assert_eq!(code, 0);
    assert_no_raw_controls("--json", &json);
    let comms: Vec<String> = json
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .map(|v| v["tracer_data"]["comm"].as_str().unwrap().to_string())
        .collect();
    for (comm, _) in HOSTILE {
        assert!(
            comms.contains(&String::from_utf8_lossy(comm).into_owned()),
            "{comms:?}"
        );
    }
    let _ = follow.kill();
    let _ = follow.wait();
}

#[test]
fn follow_into_head_exits_once_the_pipe_closes() {
    let port = closed_udp_port();
    let agent = Agent::start(&format!("[events.dropwatch]\nports = [{port}]\n"), &[]);
    let mut pipeline = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "{BIN} events --follow --json --tracer dropwatch --listen {} | head -1",
            agent.addr
        ))
        .stdout(Stdio::piped())
        .process_group(0)
        .spawn()
        .unwrap();
    // The shell, bianque and head share the group the shell leads.
    let _kill = Cleanup(format!("kill -- -{} 2>/dev/null", pipeline.id()));
    assert!(wait_until(Duration::from_secs(5), || agent
        .metric("bianque_stream_clients")
        == Some(1.0)));
    // The first record goes to head, which exits; the next write meets the closed pipe.
    let start = Instant::now();
    let exited = loop {
        send_udp_from_thread("bq-head", &format!("127.0.0.1:{port}"), 1);
        if let Ok(Some(status)) = pipeline.try_wait() {
            break Some(status);
        }
        if start.elapsed() > Duration::from_secs(15) {
            let _ = pipeline.kill();
            let _ = pipeline.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(300));
    };
    let status = exited.expect("`events --follow | head -1` still running after 15 s");
    assert!(status.success(), "{status}");
    assert!(wait_until(Duration::from_secs(5), || agent
        .metric("bianque_stream_clients")
        == Some(0.0)));
}
