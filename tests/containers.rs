//! Container attribution end to end: fixture cgroup trees (v1 cgroupfs and v2 systemd layouts)
//! with a kubelet answered by a local HTTP server serving a recorded pod list; a real podman
//! container; a real containerd container.

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::podman::Podman;
use common::*;

/// Serves the recorded kubelet pod list on `GET /pods` until the test ends.
fn fake_kubelet() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let body = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/kubelet/pods.json"),
    )
    .unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let mut conn = conn;
            let mut req = Vec::new();
            let mut buf = [0u8; 1024];
            while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                match conn.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => req.extend_from_slice(&buf[..n]),
                }
            }
            let req = String::from_utf8_lossy(&req);
            let resp = if req.starts_with("GET /pods ") {
                format!("HTTP/1.0 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len())
            } else {
                "HTTP/1.0 404 Not Found\r\n\r\n".to_string()
            };
            let _ = conn.write_all(resp.as_bytes());
        }
    });
    addr
}

fn containers(agent: &Agent) -> Vec<serde_json::Value> {
    let (code, body) = agent.get("/containers");
    assert_eq!(code, 200, "{body}");
    serde_json::from_str::<serde_json::Value>(&body).unwrap()["containers"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn fixture_agent(root: &str, kubelet: &str) -> Agent {
    fixture_agent_with(
        root,
        &format!("kubelet_read_only_address = \"{kubelet}\"\nkubelet_url = \"\"\n"),
    )
}

/// An agent on a fixture host root, metric tracers only, with these `[containers]` keys.
fn fixture_agent_with(root: &str, containers: &str) -> Agent {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(root);
    let mut args = vec![
        "--host-root".to_string(),
        root.to_str().unwrap().to_string(),
    ];
    for s in bianque::tracer::registry() {
        if s.mode != bianque::tracer::Mode::Metric {
            args.push("--disable".into());
            args.push(s.name.into());
        }
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Agent::start(
        &format!("[containers]\n{containers}engine_sockets = []\nresync_secs = 1\n"),
        &args,
    )
}

fn by_id(list: &[serde_json::Value], prefix: char) -> &serde_json::Value {
    list.iter()
        .find(|c| c["id"].as_str().unwrap().starts_with(prefix))
        .unwrap_or_else(|| panic!("no container {prefix}…: {list:?}"))
}

#[test]
fn kubelet_metadata_on_a_v1_cgroupfs_tree() {
    let agent = fixture_agent("containers-v1", &fake_kubelet());
    assert_v1_tree_with_kubelet_metadata(&agent);
}

/// What the containers-v1 tree with the recorded pod list gives, whichever kubelet port.
fn assert_v1_tree_with_kubelet_metadata(agent: &Agent) {
    assert!(
        wait_until(Duration::from_secs(5), || containers(agent).len() == 5
            && by_id(&containers(agent), '1')["pod"] == "web-7d9f"),
        "{:?}\nlog:\n{}",
        containers(agent),
        agent.log()
    );
    let list = containers(agent);
    let web = by_id(&list, '1');
    assert_eq!(web["name"], "web");
    assert_eq!(web["pod"], "web-7d9f");
    assert_eq!(web["namespace"], "shop");
    assert_eq!(web["qos"], "burstable");
    assert_eq!(web["type"], "normal");
    assert_eq!(web["pod_uid"], "9c9a7d39-0b1a-4e0e-8f0d-5b8a0c1d2e3f");
    assert_eq!(by_id(&list, '2')["type"], "sidecar");
    let ds = by_id(&list, '3');
    assert_eq!(
        (ds["type"].as_str(), ds["qos"].as_str()),
        (Some("daemonset"), Some("guaranteed"))
    );
    assert_eq!(by_id(&list, '4')["runtime"], "cri-o");
    assert_eq!(by_id(&list, '4')["qos"], "besteffort");
    // A plain docker container the kubelet does not know: found from its path, no pod fields.
    let plain = by_id(&list, '5');
    assert_eq!(
        (plain["runtime"].as_str(), plain["pod"].as_str()),
        (Some("docker"), Some(""))
    );
    // One container by id prefix; unknown → 404.
    assert_eq!(agent.get("/containers/1111").0, 200);
    assert_eq!(agent.get("/containers/9999").0, 404);
}

/// A throwaway PKI made with the openssl CLI: a CA, a server certificate for 127.0.0.1, a
/// client certificate in one file with its key (as the kubelet's `kubelet-client-current.pem`),
/// and a client certificate from another CA.
fn kubelet_pki() -> TempDir {
    let dir = TempDir::new("kubelet-pki");
    let ec = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes";
    sh(&format!(
        "cd {} && exec 2>/dev/null && \
         openssl req -x509 {ec} -days 2 -subj /CN=bq-kubelet-test-ca -keyout ca.key -out ca.pem && \
         openssl req -x509 {ec} -days 2 -subj /CN=bq-rogue-ca -keyout rogue-ca.key -out rogue-ca.pem && \
         printf 'subjectAltName=IP:127.0.0.1\\nextendedKeyUsage=serverAuth\\n' > server.ext && \
         printf 'extendedKeyUsage=clientAuth\\n' > client.ext && \
         for n in server client rogue; do openssl req -new {ec} -subj /CN=$n -keyout $n.key -out $n.csr; done && \
         openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 -extfile server.ext -out server.pem && \
         openssl x509 -req -in client.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 -extfile client.ext -out client.pem && \
         openssl x509 -req -in rogue.csr -CA rogue-ca.pem -CAkey rogue-ca.key -CAcreateserial -days 2 -extfile client.ext -out rogue.pem && \
         cat client.pem client.key > kubelet-client-current.pem && cat rogue.pem rogue.key > rogue-client.pem",
        dir.path().display()
    ));
    dir
}

/// A kubelet's authenticated port on loopback: TLS that requires a client certificate from
/// the PKI's CA, serving `body` on `GET /pods`. Handshake errors it saw are in `refused`.
struct TlsKubelet {
    url: String,
    refused: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

fn tls_kubelet(pki: &Path, body: String) -> TlsKubelet {
    tls_kubelet_with(pki, body, None)
}

/// With `token`: a client certificate is optional, and a request without one needs
/// `Authorization: Bearer <token>` (401 otherwise).
fn tls_kubelet_with(pki: &Path, body: String, token: Option<&str>) -> TlsKubelet {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    use std::sync::{Arc, Mutex};
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(pki.join("ca.pem")).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let mut verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    );
    if token.is_some() {
        verifier = verifier.allow_unauthenticated();
    }
    let verifier = verifier.build().unwrap();
    let bearer = token.map(|t| format!("authorization: bearer {t}\r\n"));
    let chain: Vec<_> = CertificateDer::pem_file_iter(pki.join("server.pem"))
        .unwrap()
        .map(|c| c.unwrap())
        .collect();
    let key = PrivateKeyDer::from_pem_file(pki.join("server.key")).unwrap();
    let config = Arc::new(
        rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)
            .unwrap(),
    );
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("https://{}/pods", listener.local_addr().unwrap());
    let refused = Arc::new(Mutex::new(Vec::new()));
    let seen = refused.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
            let Ok(tls) = rustls::ServerConnection::new(config.clone()) else {
                continue;
            };
            let mut s = rustls::StreamOwned::new(tls, conn);
            let mut req = Vec::new();
            let mut buf = [0u8; 1024];
            let mut failed = false;
            while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                match s.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => req.extend_from_slice(&buf[..n]),
                    Err(e) => {
                        seen.lock().unwrap().push(e.to_string());
                        failed = true;
                        break;
                    }
                }
            }
            if failed {
                continue;
            }
            let authorized = s.conn.peer_certificates().is_some()
                || bearer.as_ref().is_some_and(|b| {
                    String::from_utf8_lossy(&req)
                        .to_ascii_lowercase()
                        .contains(b.as_str())
                });
            let resp = if !authorized {
                "HTTP/1.1 401 Unauthorized\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
                    .to_string()
            } else if req.starts_with(b"GET /pods ") {
                format!("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}", body.len())
            } else {
                "HTTP/1.1 404 Not Found\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
                    .to_string()
            };
            let _ = s.write_all(resp.as_bytes());
            s.conn.send_close_notify();
            let _ = s.flush();
        }
    });
    TlsKubelet { url, refused }
}

fn recorded_pods() -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/kubelet/pods.json"),
    )
    .unwrap()
}

fn kubelet_keys(url: &str, client: &Path, ca: &Path) -> String {
    format!(
        "kubelet_read_only_address = \"\"\nkubelet_url = \"{url}\"\nkubelet_client_cert = \"{c}\"\nkubelet_client_key = \"{c}\"\nkubelet_ca_file = \"{}\"\n",
        ca.display(),
        c = client.display()
    )
}

#[test]
fn kubelet_authenticated_port_with_a_client_certificate() {
    let pki = kubelet_pki();
    let kubelet = tls_kubelet(pki.path(), recorded_pods());
    let agent = fixture_agent_with(
        "containers-v1",
        &kubelet_keys(
            &kubelet.url,
            &pki.path().join("kubelet-client-current.pem"),
            &pki.path().join("ca.pem"),
        ),
    );
    assert_v1_tree_with_kubelet_metadata(&agent);
    assert!(kubelet.refused.lock().unwrap().is_empty());
    assert!(
        !agent
            .log()
            .contains("kubelet pod list (authenticated port) failed"),
        "{}",
        agent.log()
    );
    drop(agent);

    // Without the CA the serving certificate is not trusted...
    let client = pki.path().join("kubelet-client-current.pem");
    let no_ca = kubelet_keys(&kubelet.url, &client, Path::new(""));
    let agent = fixture_agent_with("containers-v1", &no_ca);
    assert!(
        wait_until(Duration::from_secs(10), || agent
            .log()
            .contains("invalid peer certificate: UnknownIssuer")),
        "{}",
        agent.log()
    );
    assert_eq!(by_id(&containers(&agent), '1')["pod"], "");
    drop(agent);
    // ...unless verification is off (self-signed serving certificates).
    let agent = fixture_agent_with(
        "containers-v1",
        &format!("{no_ca}kubelet_insecure_skip_verify = true\n"),
    );
    assert_v1_tree_with_kubelet_metadata(&agent);
}

#[test]
fn a_wrong_client_certificate_is_refused_and_the_agent_keeps_running() {
    let pki = kubelet_pki();
    let kubelet = tls_kubelet(pki.path(), recorded_pods());
    let agent = fixture_agent_with(
        "containers-v1",
        &kubelet_keys(
            &kubelet.url,
            &pki.path().join("rogue-client.pem"),
            &pki.path().join("ca.pem"),
        ),
    );
    let failed = "kubelet pod list (authenticated port) failed";
    assert!(
        wait_until(Duration::from_secs(10), || agent.log().contains(failed)),
        "no error logged:\n{}",
        agent.log()
    );
    assert!(
        wait_until(Duration::from_secs(5), || !kubelet
            .refused
            .lock()
            .unwrap()
            .is_empty()),
        "the server did not refuse the certificate"
    );
    let line = agent
        .log()
        .lines()
        .find(|l| l.contains(failed))
        .unwrap()
        .to_string();
    assert!(line.contains(&kubelet.url), "{line}");
    assert!(line.contains("WARN"), "{line}");
    // The TLS alert the kubelet sent says why.
    assert!(line.to_lowercase().contains("alert"), "{line}");
    // Still running, containers still found from their cgroup paths, without pod fields.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(agent.get("/readyz").0, 200);
    let list = containers(&agent);
    assert_eq!(list.len(), 5, "{list:?}");
    assert_eq!(by_id(&list, '1')["pod"], "");
    assert_eq!(
        by_id(&list, '1')["qos"],
        "burstable",
        "from the cgroup path"
    );
    // Logged once, not once per resync.
    assert_eq!(agent.log().matches(failed).count(), 1, "{}", agent.log());
}

#[test]
fn kubelet_authenticated_port_with_a_token_file() {
    let pki = kubelet_pki();
    let kubelet = tls_kubelet_with(pki.path(), recorded_pods(), Some("bq-sa-token-1"));
    let token = pki.path().join("token");
    std::fs::write(&token, "bq-wrong-token\n").unwrap();
    let keys = format!(
        "kubelet_read_only_address = \"\"\nkubelet_url = \"{}\"\nkubelet_client_cert = \"\"\nkubelet_token_file = \"{}\"\nkubelet_ca_file = \"{}\"\n",
        kubelet.url,
        token.display(),
        pki.path().join("ca.pem").display()
    );
    let agent = fixture_agent_with("containers-v1", &keys);
    // A token the kubelet does not accept: its answer is logged.
    assert!(
        wait_until(Duration::from_secs(10), || agent
            .log()
            .contains("HTTP status 401 Unauthorized")),
        "{}",
        agent.log()
    );
    // The token file is re-read on every request (projected tokens rotate).
    std::fs::write(&token, "bq-sa-token-1\n").unwrap();
    assert_v1_tree_with_kubelet_metadata(&agent);
    assert!(
        agent.log().contains("kubelet pod list answers again"),
        "{}",
        agent.log()
    );
}

/// A memory cgroup laid out as a Kubernetes container's, for one test:
/// `/kubepods-bq-kubelet-<pid>/burstable/pod<uid>/<id>`. Emptied and removed on drop.
struct KubeCgroup {
    dirs: Vec<std::path::PathBuf>,
}

impl KubeCgroup {
    fn new(uid: &str, id: &str) -> KubeCgroup {
        let top = memcg_mount().join(format!("kubepods-bq-kubelet-{}", std::process::id()));
        let dirs = vec![
            top.join(format!("burstable/pod{uid}/{id}")),
            top.join(format!("burstable/pod{uid}")),
            top.join("burstable"),
            top,
        ];
        let cg = KubeCgroup { dirs };
        std::fs::create_dir_all(&cg.dirs[0]).unwrap();
        cg
    }

    /// Runs `cmd` in the cgroup; returns once the process is in it (on a loaded machine the
    /// shell may take a while to move itself).
    fn spawn(&self, cmd: &str) -> Child {
        let child = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "echo $$ > {}/cgroup.procs && exec {cmd}",
                self.dirs[0].display()
            ))
            .spawn()
            .unwrap();
        let pid = child.id().to_string();
        let procs = self.dirs[0].join("cgroup.procs");
        assert!(
            wait_until(Duration::from_secs(10), || std::fs::read_to_string(&procs)
                .unwrap_or_default()
                .lines()
                .any(|l| l.trim() == pid)),
            "pid {pid} never joined {}",
            procs.display()
        );
        child
    }
}

impl Drop for KubeCgroup {
    fn drop(&mut self) {
        let procs = std::fs::read_to_string(self.dirs[0].join("cgroup.procs")).unwrap_or_default();
        for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
            // SAFETY: kill(2) on pids in this test's own cgroup; at worst ESRCH.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        for d in &self.dirs {
            for _ in 0..50 {
                if std::fs::remove_dir(d).is_ok() || !d.exists() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

#[test]
fn kubelet_metadata_over_the_authenticated_port_lands_on_records_and_metrics() {
    // A real memory cgroup of a "pod" container; the recorded pod list names it (its
    // container id swapped for one unique to this run).
    let uid = "9c9a7d39-0b1a-4e0e-8f0d-5b8a0c1d2e3f";
    let id = format!("{:064x}", 0xb9_0000_0000u64 + std::process::id() as u64);
    let pods = recorded_pods().replace(
        "1111111111111111111111111111111111111111111111111111111111111111",
        &id,
    );
    let pki = kubelet_pki();
    let kubelet = tls_kubelet(pki.path(), pods);
    let agent = Agent::start(
        &format!(
            "[containers]\nengine_sockets = []\nresync_secs = 1\n{}",
            kubelet_keys(
                &kubelet.url,
                &pki.path().join("kubelet-client-current.pem"),
                &pki.path().join("ca.pem"),
            )
        ),
        &[],
    );
    let cg = KubeCgroup::new(uid, &id);
    let mut child = cg.spawn("sleep 60");
    let ours = |a: &Agent| containers(a).into_iter().find(|c| c["id"] == id.as_str());
    assert!(
        wait_until(Duration::from_secs(10), || ours(&agent)
            .is_some_and(|c| c["pod"] == "web-7d9f")),
        "{:?}\nlog:\n{}",
        ours(&agent),
        agent.log()
    );
    let c = ours(&agent).unwrap();
    assert_eq!(
        (
            c["name"].as_str(),
            c["namespace"].as_str(),
            c["qos"].as_str()
        ),
        (Some("web"), Some("shop"), Some("burstable"))
    );
    // Metrics of the container's cgroup carry its labels.
    let labelled = format!("container_id=\"{id}\",container_name=\"web\",container_host_namespace=\"shop\",container_type=\"normal\",container_qos=\"burstable\"");
    assert!(
        wait_until(Duration::from_secs(10), || agent
            .metrics()
            .contains(&labelled)),
        "no series labelled {labelled}"
    );
    // A SIGKILL to the process in it: the record names the pod's container.
    let target = child.id();
    // SAFETY: kill(2) on the child we spawned.
    unsafe { libc::kill(target as i32, libc::SIGKILL) };
    let _ = child.wait();
    let found = |a: &Agent| {
        a.events("tracer=signal&limit=1000")
            .into_iter()
            .find(|e| e["tracer_data"]["target_pid"] == target)
    };
    assert!(
        wait_until(Duration::from_secs(10), || found(&agent).is_some()),
        "log:\n{}",
        agent.log()
    );
    let e = found(&agent).unwrap();
    assert_eq!(e["container_id"], id.as_str(), "{e}");
    assert_eq!(e["container_name"], "web");
    assert_eq!(e["container_host_namespace"], "shop");
    assert_eq!(e["container_qos"], "burstable");
    assert_eq!(e["container_hostname"], "web-7d9f");
}

#[test]
fn systemd_driver_on_a_v2_tree_without_a_kubelet() {
    // Nothing listens on this kubelet address: metadata comes from the cgroup paths alone.
    let agent = fixture_agent("containers-v2", &format!("127.0.0.1:{}", free_port()));
    assert!(
        wait_until(Duration::from_secs(5), || containers(&agent).len() == 3),
        "{:?}",
        containers(&agent)
    );
    let list = containers(&agent);
    let web = by_id(&list, '1');
    assert_eq!(
        (web["runtime"].as_str(), web["qos"].as_str()),
        (Some("containerd"), Some("burstable"))
    );
    assert_eq!(web["pod_uid"], "9c9a7d39-0b1a-4e0e-8f0d-5b8a0c1d2e3f");
    assert_eq!(by_id(&list, '3')["qos"], "guaranteed");
    let podman = by_id(&list, '6');
    assert_eq!(podman["runtime"], "podman");
    assert!(
        podman["cgroup_path"].as_str().unwrap().ends_with(".scope"),
        "{podman}"
    );
}

#[test]
fn a_real_podman_container_gets_its_events_and_leaves_when_removed() {
    let mut podman = Podman::new();
    let agent = Agent::start(
        &format!(
            "[containers]\nengine_sockets = [\"{}\"]\nkubelet_read_only_address = \"\"\nresync_secs = 1\n",
            podman.socket()
        ),
        &[],
    );
    // A second agent that excludes this container by name: the filter works in BPF.
    let filtered = Agent::start(
        &format!(
            "[containers]\nengine_sockets = [\"{}\"]\nkubelet_read_only_address = \"\"\nresync_secs = 1\nfilter_exclude_names = [\"bq-web-.*\"]\n",
            podman.socket()
        ),
        &[],
    );
    let name = format!("bq-web-{}", std::process::id());
    let id = podman.run(&name, "", "/bin/busybox sleep 120");
    assert!(
        wait_until(Duration::from_secs(10), || containers(&filtered)
            .iter()
            .any(|c| c["name"] == name.as_str())),
        "filtering agent does not know the container"
    );
    assert!(
        wait_until(Duration::from_secs(10), || containers(&agent)
            .iter()
            .any(|c| c["id"] == id.as_str() && c["name"] == name.as_str())),
        "container not listed with its name: {:?}",
        containers(&agent)
    );
    // A packet drop inside it: DNS to a closed port on the container's own loopback.
    sh_quiet(&format!(
        "podman exec {name} /bin/busybox nslookup -retry=1 -timeout=1 x.test 127.0.0.1"
    ));
    let drop_in_container = |a: &Agent| {
        a.events(&format!(
            "tracer=dropwatch&container={}&limit=100",
            &id[..12]
        ))
        .into_iter()
        .find(|e| e["tracer_data"]["dport"] == 53)
    };
    assert!(
        wait_until(Duration::from_secs(10), || drop_in_container(&agent)
            .is_some()),
        "log:\n{}",
        agent.log()
    );
    let e = drop_in_container(&agent).unwrap();
    assert_eq!(e["container_id"], id.as_str());
    assert_eq!(e["container_name"], name.as_str());
    assert_eq!(e["container_type"], "normal");
    assert_eq!(e["tracer_data"]["drop_reason"], "NO_SOCKET");
    assert_eq!(e["tracer_data"]["comm"], "busybox");
    // (Events from before the agent knew the container's name, e.g. runc setting it up, cannot
    // be filtered by name; the drop provoked after that must be.)
    let leaked: Vec<_> = filtered
        .events(&format!(
            "tracer=dropwatch&container={}&limit=100",
            &id[..12]
        ))
        .into_iter()
        .filter(|e| e["tracer_data"]["dport"] == 53)
        .collect();
    assert!(
        leaked.is_empty(),
        "the excluded container's drop was recorded: {leaked:?}"
    );
    assert!(filtered.metric("bianque_dropwatch_filtered_total").unwrap() >= 1.0);

    // An OOM kill inside a second container: the kernel's SIGKILL names the container.
    let oom_name = format!("bq-oom-{}", std::process::id());
    // Killed right at its start, before the agent had its metadata: the records wait for it.
    let oom_id = podman.run(&oom_name, "--memory 32m", "/bin/busybox tail /dev/zero");
    let killed = |a: &Agent| {
        a.events(&format!(
            "tracer=signal&container={}&limit=100",
            &oom_id[..12]
        ))
        .into_iter()
        .find(|e| e["container_id"] == oom_id.as_str() && e["tracer_data"]["signal"] == "SIGKILL")
    };
    assert!(
        wait_until(Duration::from_secs(20), || killed(&agent).is_some()),
        "no SIGKILL in the OOM container; log:\n{}",
        agent.log()
    );
    let k = killed(&agent).unwrap();
    assert_eq!(k["container_name"], oom_name.as_str());
    assert_eq!(
        k["tracer_data"]["target_comm"], "busybox",
        "busybox runs the tail applet"
    );
    // The oom tracer's record of the same kill belongs to the container too.
    let oom = |a: &Agent| {
        a.events(&format!("tracer=oom&container={}&limit=100", &oom_id[..12]))
            .into_iter()
            .find(|e| e["container_id"] == oom_id.as_str())
    };
    assert!(
        wait_until(Duration::from_secs(10), || oom(&agent).is_some()),
        "no oom record in the container; log:\n{}",
        agent.log()
    );
    let o = oom(&agent).unwrap();
    assert_eq!(o["tracer_data"]["constraint"], "memcg");
    assert_eq!(o["tracer_data"]["victim"]["container_id"], oom_id.as_str());
    assert_eq!(
        o["tracer_data"]["victim"]["memory_cgroup"]["limit_bytes"],
        32u64 << 20
    );

    // Its metrics carry its labels from the registry (name and type, not only the id).
    let labelled = format!("container_id=\"{id}\",container_name=\"{name}\",container_host_namespace=\"\",container_type=\"normal\"");
    assert!(
        wait_until(Duration::from_secs(10), || agent
            .metrics()
            .contains(&labelled)),
        "no series labelled {labelled}"
    );

    // Its start was recorded when its cgroup appeared.
    let lifecycle = |a: &Agent, event: &str| {
        a.events("tracer=container_lifecycle&limit=100")
            .into_iter()
            .find(|e| e["container_id"] == id.as_str() && e["tracer_data"]["event"] == event)
    };
    let started = lifecycle(&agent, "started").expect("container start recorded");
    assert_eq!(started["tracer_data"]["runtime"], "podman");

    // Removed → recorded as stopped (with its name) and no longer listed.
    sh(&format!("podman rm -f -t 0 {name}"));
    assert!(
        wait_until(Duration::from_secs(30), || !containers(&agent)
            .iter()
            .any(|c| c["id"] == id.as_str())),
        "removed container still listed"
    );
    assert!(
        wait_until(Duration::from_secs(5), || lifecycle(&agent, "stopped")
            .is_some()),
        "stop not recorded"
    );
    assert_eq!(
        lifecycle(&agent, "stopped").unwrap()["container_name"],
        name.as_str()
    );
}

#[test]
fn a_real_containerd_container_gets_its_events() {
    // containerd started by the test without systemd, image imported with ctr.
    let podman = Podman::new();
    let dir = TempDir::new("containerd");
    let sock = dir.path().join("containerd.sock");
    let state = dir.path().join("state");
    let mut containerd = Command::new("containerd")
        .arg("--root")
        .arg(dir.path().join("root"))
        .arg("--state")
        .arg(&state)
        .arg("--address")
        .arg(&sock)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    struct Kill<'a>(&'a mut Child, String);
    impl Drop for Kill<'_> {
        fn drop(&mut self) {
            sh_quiet(&format!("ctr -a {} task kill -s KILL bqc1; sleep 0.5; ctr -a {} task delete bqc1; ctr -a {} container delete bqc1", self.1, self.1, self.1));
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let sock_s = sock.display().to_string();
    let _guard = Kill(&mut containerd, sock_s.clone());
    assert!(
        wait_until(Duration::from_secs(10), || sock.exists()),
        "containerd socket"
    );
    let archive = dir.path().join("bb.tar");
    sh(&format!(
        "podman save --format oci-archive -o {} {}",
        archive.display(),
        podman.tag
    ));
    sh(&format!(
        "ctr -a {sock_s} image import --base-name localhost/bq-bb {} >/dev/null",
        archive.display()
    ));
    let agent = Agent::start(
        &format!(
            "[containers]\nengine_sockets = []\nkubelet_read_only_address = \"\"\ncontainerd_state_dirs = [\"{}\"]\nresync_secs = 1\n",
            state.display()
        ),
        &[],
    );
    sh(&format!(
        "ctr -a {sock_s} run -d {} bqc1 /bin/busybox sleep 120 >/dev/null",
        podman.tag
    ));
    assert!(
        wait_until(Duration::from_secs(10), || containers(&agent)
            .iter()
            .any(|c| c["id"] == "bqc1")),
        "containerd container not listed: {:?}",
        containers(&agent)
    );
    sh_quiet(&format!("ctr -a {sock_s} task exec --exec-id dns bqc1 /bin/busybox nslookup -retry=1 -timeout=1 x.test 127.0.0.1"));
    let found = |a: &Agent| {
        a.events("tracer=dropwatch&container=bqc1&limit=100")
            .into_iter()
            .find(|e| e["tracer_data"]["dport"] == 53)
    };
    assert!(
        wait_until(Duration::from_secs(10), || found(&agent).is_some()),
        "log:\n{}",
        agent.log()
    );
    let e = found(&agent).unwrap();
    assert_eq!(e["container_id"], "bqc1");
    assert_eq!(e["container_type"], "normal");
}

#[test]
fn containers_oom_killed_right_at_start_are_named_on_their_records() {
    // Without container_lifecycle nothing resyncs when the cgroup appears: the first event of
    // each container is the first the agent hears of it, and its metadata comes after.
    let mut podman = Podman::new();
    let agent = Agent::start(
        &format!(
            "[containers]\nengine_sockets = [\"{}\"]\nkubelet_read_only_address = \"\"\nkubelet_url = \"\"\nresync_secs = 30\n",
            podman.socket()
        ),
        &["--disable", "container_lifecycle"],
    );
    for n in 0..3 {
        let name = format!("bq-oomstart-{}-{n}", std::process::id());
        let id = podman.run(&name, "--memory 32m", "/bin/busybox tail /dev/zero");
        for tracer in ["signal", "oom"] {
            let record = |a: &Agent| {
                a.events(&format!(
                    "tracer={tracer}&container={}&limit=100",
                    &id[..12]
                ))
                .into_iter()
                .find(|e| {
                    e["container_id"] == id.as_str()
                        && (tracer == "oom" || e["tracer_data"]["signal"] == "SIGKILL")
                })
            };
            assert!(
                wait_until(Duration::from_secs(20), || record(&agent).is_some()),
                "no {tracer} record of {name} ({id}); its records: {:#?}\npodman: {}\nlog:\n{}",
                agent
                    .events(&format!("tracer={tracer}&limit=1000"))
                    .into_iter()
                    .filter(|e| e["tracer_data"]["signal"] == "SIGKILL")
                    .collect::<Vec<_>>(),
                sh(&format!("podman inspect --format '{{{{.State.Status}}}} {{{{.State.OOMKilled}}}} {{{{.State.ExitCode}}}}' {name}")),
                agent.log()
            );
            let r = record(&agent).unwrap();
            assert_eq!(r["container_name"], name.as_str(), "{tracer}: {r}");
            assert_eq!(r["container_type"], "normal", "{tracer}: {r}");
        }
    }
}
