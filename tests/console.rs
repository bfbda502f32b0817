//! The console in a real headless Chromium (Debian's `chromium` + `chromium-driver`, driven
//! through WebDriver by fantoccini) against a running agent on the real kernel:
//! - reclaim pressure, then an OOM kill, in one small memory cgroup: the incidents view shows one
//!   incident for that cgroup, its explanation names the kill and the victim, and its evidence
//!   opens the oom record;
//! - a cpusys capture (syscall-bound dd loops): its flame graph is drawn in the page, with frames
//!   naming dd in the first screen;
//! - a drop flood to a closed port appears in the live tail within 2 s, sent from a thread whose
//!   comm carries HTML and a terminal escape: it reads as text and makes no element;
//! - the browser's console has no errors; each view's screenshot is written to target/console/.

mod common;

use std::os::unix::process::ExitStatusExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use fantoccini::{Client, ClientBuilder};
use serde_json::{json, Value};

/// chromedriver on a free port, killed on drop.
struct Driver {
    child: Child,
    addr: String,
}

impl Driver {
    fn start() -> Driver {
        let port = free_port();
        let child = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver (Debian chromium-driver; `make test-deps` installs it)");
        let d = Driver {
            child,
            addr: format!("127.0.0.1:{port}"),
        };
        assert!(
            wait_until(Duration::from_secs(20), || {
                std::net::TcpStream::connect(&d.addr).is_ok()
            }),
            "chromedriver did not answer on {}",
            d.addr
        );
        d
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One browser session, with blocking calls for the tests.
struct Browser {
    rt: tokio::runtime::Runtime,
    client: Option<Client>,
    driver: Driver,
    session: String,
    base: String,
}

impl Browser {
    fn open(agent: &Agent) -> Browser {
        let driver = Driver::start();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let caps = json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1400,1000"],
            },
            "goog:loggingPrefs": {"browser": "ALL"},
        });
        let client = rt
            .block_on(
                ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
                    .capabilities(caps.as_object().unwrap().clone())
                    .connect(&format!("http://{}", driver.addr)),
            )
            .expect("a Chromium session");
        let session = rt
            .block_on(client.session_id())
            .unwrap()
            .expect("session id");
        Browser {
            rt,
            client: Some(client),
            driver,
            session,
            base: format!("http://{}", agent.addr),
        }
    }

    fn client(&self) -> &Client {
        self.client.as_ref().unwrap()
    }

    fn goto(&self, hash: &str) {
        self.rt
            .block_on(self.client().goto(&format!("{}/{hash}", self.base)))
            .unwrap();
    }

    fn js(&self, script: &str) -> Value {
        self.rt
            .block_on(self.client().execute(script, vec![]))
            .unwrap_or_else(|e| panic!("script failed: {e}\n{script}"))
    }

    /// Waits until `expr` (a JS expression) is truthy; returns how long it took.
    fn wait(&self, expr: &str, timeout: Duration) -> Duration {
        let start = Instant::now();
        loop {
            let v = self.js(&format!("return !!({expr});"));
            if v == Value::Bool(true) {
                return start.elapsed();
            }
            if start.elapsed() > timeout {
                let body = self.js("return document.body.innerText;");
                panic!("not true after {timeout:?}: {expr}\npage text:\n{body}");
            }
            std::thread::sleep(Duration::from_millis(40));
        }
    }

    fn text(&self, selector: &str) -> String {
        self.js(&format!(
            "const e = document.querySelector({}); return e ? e.textContent : null;",
            Value::from(selector)
        ))
        .as_str()
        .unwrap_or_else(|| panic!("no element {selector}"))
        .to_string()
    }

    fn screenshot(&self, name: &str) {
        let png = self.rt.block_on(self.client().screenshot()).unwrap();
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/console");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
    }

    /// The browser console's entries since the last call (chromedriver's log endpoint).
    fn console(&self) -> Vec<Value> {
        // chromedriver keeps HTTP/1.0 connections open: ask with curl.
        let body = sh(&format!(
            "curl -sS -X POST -H 'Content-Type: application/json' -d '{{\"type\":\"browser\"}}' \
             http://{}/session/{}/se/log",
            self.driver.addr, self.session
        ));
        let v: Value = serde_json::from_str(&body).unwrap();
        v["value"].as_array().cloned().unwrap_or_default()
    }

    fn assert_no_console_errors(&self) {
        let errors: Vec<Value> = self
            .console()
            .into_iter()
            .filter(|e| e["level"] == "SEVERE" || e["level"] == "WARNING")
            .collect();
        assert!(errors.is_empty(), "browser console: {errors:#?}");
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if let Some(c) = self.client.take() {
            let _ = self
                .rt
                .block_on(async { tokio::time::timeout(Duration::from_secs(5), c.close()).await });
        }
    }
}

#[test]
fn the_page_is_served_with_a_csp_that_forbids_inline_script() {
    let agent = Agent::start(
        "[events.dropwatch]\nenabled = false\n",
        &["--disable", "cpusys", "--disable", "cpuidle"],
    );
    let raw = common::http_client::request(&agent.addr, "GET", "/", &[], "");
    assert_eq!(raw.0, 200);
    assert!(raw.1.contains("<script src=\"/console/app.js\""));
    // Headers: ask with curl, which prints them.
    let head = sh(&format!(
        "curl -sS -D - -o /dev/null http://{}/",
        agent.addr
    ));
    let csp = head
        .lines()
        .find_map(|l| l.strip_prefix("content-security-policy: "))
        .unwrap_or_else(|| panic!("no CSP: {head}"));
    assert!(
        csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"),
        "{csp}"
    );
    assert!(csp.contains("default-src 'none'"), "{csp}");
    for p in [
        "/console/app.js",
        "/console/app.css",
        "/incidents",
        "/console/vitals",
    ] {
        assert_eq!(agent.get(p).0, 200, "{p}");
    }
    let (code, body) = agent.get("/incidents?open=maybe");
    assert_eq!(code, 400);
    assert!(
        body.contains("open: `maybe` is not true or false"),
        "{body}"
    );
    assert_eq!(
        agent.get("/incidents/0190000000007000800000000000000a").0,
        404
    );
}

#[test]
fn an_oom_kill_after_reclaim_is_one_incident_whose_evidence_opens_the_oom_record() {
    let agent = Agent::start(
        "[events.memreclaim]\nthreshold_ms = 1\n[events.dropwatch]\nenabled = false\n",
        &["--disable", "cpusys", "--disable", "cpuidle"],
    );
    let cg = MemCgroup::new("console-oom", 64 << 20);
    // Reclaim pressure first (as tests/memreclaim.rs): page cache twice the limit on a loop
    // device whose writeback is throttled, so the cgroup's own reclaim waits for it.
    let fs = LoopFs::new("console-oom", 512);
    let dev = sh(&format!("lsblk -dno MAJ:MIN {}", fs.dev))
        .trim()
        .to_string();
    let throttle = memcg_mount()
        .parent()
        .expect("cgroup v1 root")
        .join("blkio/blkio.throttle.write_bps_device");
    let _unthrottle = Cleanup(format!("echo '{dev} 0' > {}", throttle.display()));
    sh(&format!(
        "echo '{dev} {}' > {}",
        8 << 20,
        throttle.display()
    ));
    let reclaims = || {
        agent
            .events("tracer=memreclaim&limit=10000")
            .into_iter()
            .filter(|e| e["tracer_data"]["memory_cgroup_path"] == cg.path.as_str())
            .count()
    };
    for _ in 0..3 {
        let mut dd = cg.spawn(&format!(
            "dd if=/dev/zero of={} bs=1M count=128",
            fs.mnt.join("fill").display()
        ));
        assert!(wait_child(&mut dd, Duration::from_secs(120)).is_some_and(|s| s.success()));
        if wait_until(Duration::from_secs(1), || reclaims() > 0) {
            break;
        }
    }
    assert!(
        reclaims() > 0,
        "no memreclaim record; log:\n{}",
        agent.log()
    );
    // Then the OOM kill, in the same cgroup.
    let mut tail = cg.spawn("tail /dev/zero");
    let pid = tail.id();
    let status = wait_child(&mut tail, Duration::from_secs(60)).expect("tail was not killed");
    assert_eq!(status.signal(), Some(libc::SIGKILL));
    assert!(
        wait_until(Duration::from_secs(5), || !agent
            .events("tracer=oom")
            .is_empty()),
        "no oom record; log:\n{}",
        agent.log()
    );
    let oom = agent.events("tracer=oom").remove(0);
    let oom_id = oom["tracer_id"].as_str().unwrap().to_string();

    // The API: exactly one incident for that cgroup, naming the kill and the victim.
    let (_, body) = agent.get(&format!("/incidents?container={}", cg.path));
    let list: Value = serde_json::from_str(&body).unwrap();
    let mine: Vec<&Value> = list["incidents"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["target"]["id"] == cg.path.as_str())
        .collect();
    assert_eq!(mine.len(), 1, "{body}");
    let incident = mine[0];
    println!("{}", serde_json::to_string_pretty(incident).unwrap());
    assert_eq!(incident["kind"], "memory");
    assert_eq!(incident["severity"], "critical");
    let id = incident["id"].as_str().unwrap().to_string();
    let explanation = incident["explanation"].as_str().unwrap();
    assert!(
        explanation.contains(&format!("the OOM killer killed tail (pid {pid})")),
        "{explanation}"
    );
    assert!(
        explanation.contains("Direct reclaim stalled tasks"),
        "{explanation}"
    );
    // The CLI finds the same incident in the store.
    let cli = sh(&format!(
        "{} incidents --data-dir {} --container {} --json",
        env!("CARGO_BIN_EXE_bianque"),
        agent.data_dir().display(),
        cg.path
    ));
    assert!(cli.contains(&id), "{cli}");

    let b = Browser::open(&agent);
    b.goto("#/");
    b.wait(
        "document.querySelector('#open-incidents li')",
        Duration::from_secs(10),
    );
    b.wait(
        "document.querySelector('#activity rect')",
        Duration::from_secs(5),
    );
    b.screenshot("overview");
    b.goto("#/incidents");
    let row = format!("tr[data-id='{id}']");
    b.wait(
        &format!("document.querySelector(\"{row}\")"),
        Duration::from_secs(10),
    );
    assert!(b.text(&row).contains(&cg.path));
    b.screenshot("incidents");
    // Open it as a person would: a click on its row.
    b.js(&format!(
        "document.querySelector(\"{row}\").click(); return null;"
    ));
    b.wait(
        "document.querySelector('#explanation')",
        Duration::from_secs(10),
    );
    let shown = b.text("#explanation");
    assert!(
        shown.contains(&format!("killed tail (pid {pid})")),
        "{shown}"
    );
    b.wait(
        "document.querySelector('#timeline circle')",
        Duration::from_secs(5),
    );
    b.screenshot("incident");
    // Its evidence opens the oom record.
    let evidence = format!("#evidence a[href='#/events/{oom_id}']");
    b.wait(
        &format!("document.querySelector(\"{evidence}\")"),
        Duration::from_secs(5),
    );
    b.js(&format!(
        "document.querySelector(\"{evidence}\").click(); return null;"
    ));
    b.wait(
        "document.querySelector('#tracer-data')",
        Duration::from_secs(10),
    );
    let record = b.text("#record");
    assert!(
        record.contains(&oom_id) && record.contains("oom"),
        "{record}"
    );
    let data = b.text("#tracer-data");
    assert!(
        data.contains("victim") && data.contains("tail") && data.contains(&cg.path),
        "{data}"
    );
    b.screenshot("record-oom");
    b.goto("#/containers");
    b.wait(
        "document.body.dataset.view === 'containers'",
        Duration::from_secs(10),
    );
    b.screenshot("containers");
    b.assert_no_console_errors();
}

#[test]
fn a_cpusys_capture_draws_its_flame_graph_with_dd_in_the_first_screen() {
    let baseline = {
        let read = || {
            bianque::procfs::stat::parse_total(&std::fs::read_to_string("/proc/stat").unwrap())
                .unwrap()
                .without_guest()
        };
        let a = read();
        std::thread::sleep(Duration::from_secs(1));
        bianque::autotracing::cpusys::sys_percent(&a, &read()).unwrap_or(0.0)
    };
    let threshold = (baseline + 15.0).clamp(15.0, 60.0);
    let agent = Agent::start_only_autotracer(
        &format!(
            "[autotracing.cpusys]\ninterval_secs = 1\nsys_threshold_percent = {threshold:.1}\n\
             sys_delta_threshold_percent = 10\nprofile_secs = 2\n"
        ),
        "cpusys",
    );
    std::thread::sleep(Duration::from_millis(2500));
    struct Kids(Vec<Child>);
    impl Drop for Kids {
        fn drop(&mut self) {
            for c in &mut self.0 {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
    let dd = Kids(
        (0..2)
            .map(|_| {
                Command::new("dd")
                    .args(["if=/dev/zero", "of=/dev/null", "bs=1M"])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .unwrap()
            })
            .collect(),
    );
    assert!(
        wait_until(Duration::from_secs(40), || !agent
            .events("tracer=cpusys")
            .is_empty()),
        "no cpusys record (threshold {threshold:.1}%); log:\n{}",
        agent.log()
    );
    drop(dd);
    let e = agent.events("tracer=cpusys").remove(0);
    let id = e["tracer_id"].as_str().unwrap().to_string();
    let b = Browser::open(&agent);
    b.goto(&format!("#/events/{id}"));
    b.wait(
        "document.querySelector('#flamegraph g.frame')",
        Duration::from_secs(10),
    );
    // A frame named dd, drawn and visible without scrolling.
    let dd_frame = b.js(
        "for (const t of document.querySelectorAll('#flamegraph g.frame title')) {\n\
           if (/^dd /.test(t.textContent)) {\n\
             const r = t.parentNode.querySelector('rect').getBoundingClientRect();\n\
             return {top: r.top, width: r.width, title: t.textContent, vh: window.innerHeight};\n\
           }\n\
         }\n\
         return null;",
    );
    assert!(dd_frame.is_object(), "no dd frame in the flame graph");
    assert!(dd_frame["width"].as_f64().unwrap() > 10.0, "{dd_frame}");
    // The flame graph sits below the record's fields: scroll to it and the dd frame is in view.
    b.js("document.querySelector('.flame-wrap').scrollIntoView(); return null;");
    let in_view = b.js(
        "for (const t of document.querySelectorAll('#flamegraph g.frame title')) {\n\
           if (/^dd /.test(t.textContent)) {\n\
             const r = t.parentNode.querySelector('rect').getBoundingClientRect();\n\
             return r.top >= 0 && r.bottom <= window.innerHeight;\n\
           }\n\
         }\n\
         return false;",
    );
    assert_eq!(in_view, Value::Bool(true), "dd frame: {dd_frame}");
    b.screenshot("flamegraph");
    b.assert_no_console_errors();
}

#[test]
fn a_drop_flood_shows_in_the_live_tail_within_2s_and_an_html_comm_stays_text() {
    let agent = Agent::start("", &["--disable", "cpusys", "--disable", "cpuidle"]);
    let b = Browser::open(&agent);
    b.goto("#/events?tracer=dropwatch");
    b.wait(
        "document.querySelector('#tail-toggle')",
        Duration::from_secs(10),
    );
    b.js("document.querySelector('#tail-toggle').click(); return null;");
    b.wait(
        "document.querySelector('#tail-state').textContent === 'live'",
        Duration::from_secs(5),
    );
    // 15 bytes, the most a comm holds: markup that would make an element, and an escape.
    let comm = "<img src=x>\u{1b}[1m";
    assert_eq!(comm.len(), 15);
    let port = closed_udp_port();
    let sent = Instant::now();
    send_udp_from_thread(comm, &format!("127.0.0.1:{port}"), 2000);
    let shown = "<img src=x>\\x1b[1m";
    b.wait(
        &format!(
            "[...document.querySelectorAll('#tail-rows tr')].some(r => r.textContent.includes({}))",
            Value::from(format!("dport={port}"))
        ),
        Duration::from_secs(5),
    );
    let took = sent.elapsed();
    println!("the flood reached the live tail {took:?} after it began");
    assert!(took <= Duration::from_secs(2), "{took:?}");
    let rows = b.text("#tail-rows");
    assert!(rows.contains(shown), "{rows}");
    // The markup made no element, anywhere in the page.
    assert_eq!(
        b.js("return document.querySelectorAll('main img').length;"),
        json!(0)
    );
    b.screenshot("events-live-tail");
    // The record view shows the comm as text too.
    let drop = agent
        .events(&format!("tracer=dropwatch&data.dport={port}&limit=1"))
        .remove(0);
    b.goto(&format!("#/events/{}", drop["tracer_id"].as_str().unwrap()));
    b.wait(
        "document.querySelector('#tracer-data')",
        Duration::from_secs(10),
    );
    assert!(b.text("#tracer-data").contains(shown));
    assert_eq!(
        b.js("return document.querySelectorAll('main img').length;"),
        json!(0)
    );
    b.screenshot("record-drop");
    b.assert_no_console_errors();
}
