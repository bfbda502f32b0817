//! Issue 14 item 17 on the real kernel: a podman container gets its name with no podman API
//! socket anywhere (podman is daemonless); the agent reads podman's own storage.

mod common;

use std::time::Duration;

use common::podman::Podman;
use common::*;

#[test]
fn a_podman_container_without_the_api_socket_is_named_in_containers_and_on_its_records() {
    let mut podman = Podman::without_api();
    // The default engine sockets: none of them exists here.
    for sock in [
        "/run/docker.sock",
        "/run/podman/podman.sock",
        "/run/containerd/docker.sock",
    ] {
        assert!(!std::path::Path::new(sock).exists(), "{sock} exists");
    }
    let agent = Agent::start(
        "[containers]\nkubelet_read_only_address = \"\"\nkubelet_url = \"\"\nresync_secs = 1\n",
        &[],
    );
    let name = format!("bq-noapi-{}", std::process::id());
    let id = podman.run(&name, "", "/bin/busybox sleep 120");
    let listed = || -> Option<serde_json::Value> {
        let (code, body) = agent.get("/containers");
        assert_eq!(code, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).expect("containers json");
        v["containers"]
            .as_array()?
            .iter()
            .find(|c| c["id"] == id.as_str())
            .cloned()
    };
    assert!(
        wait_until(Duration::from_secs(10), || listed()
            .is_some_and(|c| c["name"] == name.as_str())),
        "not listed with its name: {:?}\nlog:\n{}",
        listed(),
        agent.log()
    );
    assert_eq!(listed().unwrap()["runtime"], "podman");

    // A packet drop inside it: DNS to a closed port on the container's own loopback.
    let drop_in_container = || {
        agent
            .events(&format!(
                "tracer=dropwatch&container={}&limit=100",
                &id[..12]
            ))
            .into_iter()
            .find(|e| e["tracer_data"]["dport"] == 53)
    };
    assert!(
        wait_until(Duration::from_secs(10), || {
            sh_quiet(&format!(
                "podman exec {name} /bin/busybox nslookup -retry=1 -timeout=1 x.test 127.0.0.1"
            ));
            drop_in_container().is_some()
        }),
        "no drop recorded in the container; log:\n{}",
        agent.log()
    );
    let e = drop_in_container().unwrap();
    assert_eq!(e["container_id"], id.as_str(), "{e}");
    assert_eq!(e["container_name"], name.as_str(), "{e}");
    assert_eq!(e["tracer_data"]["drop_reason"], "NO_SOCKET", "{e}");
}
