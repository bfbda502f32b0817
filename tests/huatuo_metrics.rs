//! HuaTuo's dashboards on bianque: a real Prometheus scrapes an agent running with
//! `compat = "huatuo"` while a real podman container runs, and one PromQL query per HuaTuo
//! dashboard panel family (written from HuaTuo's metric names, selecting on `region`/`host` as
//! its dashboards do) must return data.

mod common;

use std::path::Path;
use std::time::Duration;

use common::podman::Podman;
use common::*;

const REGION: &str = "bq-region";
const HOST: &str = "bq-host";

#[test]
fn huatuo_dashboard_queries_answer_from_a_real_prometheus() {
    // The xfs collector reads /proc/fs/xfs/stat, there once the module is loaded.
    sh_quiet("modprobe xfs");
    assert!(
        Path::new("/proc/fs/xfs/stat").exists(),
        "modprobe xfs gives /proc/fs/xfs/stat"
    );
    let mut podman = Podman::new();
    // The container has its own network namespace with only `lo`: the netdev collector keeps
    // `lo` here so the container's netdev panels have a device to show.
    let agent = Agent::start(
        &format!(
            "compat = \"huatuo\"\nregion = \"{REGION}\"\nhostname = \"{HOST}\"\n\
             [containers]\nengine_sockets = [\"{}\"]\nkubelet_read_only_address = \"\"\nresync_secs = 1\n\
             [metrics.netdev]\ndevice_exclude = \"^(docker|veth)\"\n\
             [metrics.netdev_hw]\nenabled = true\n",
            podman.socket()
        ),
        &["--disable", "dropwatch"],
    );
    let name = format!("bq-ht-{}", std::process::id());
    // Its `tail` (comm `busybox`, the applet's binary) runs out of the container's 32 MiB: a
    // real OOM kill. The shell and the container stay, so oom_container_total has a live
    // container to be about.
    podman.run(
        &name,
        "--memory=32m",
        "/bin/busybox sh -c '/bin/busybox tail /dev/zero; exec /bin/busybox sleep 300'",
    );
    let container = format!("container_name=\"{name}\"");
    assert!(
        wait_until(Duration::from_secs(15), || {
            agent
            .metrics()
            .contains(&format!("huatuo_bamai_cpu_util_container_usr{{region=\"{REGION}\",host=\"{HOST}\",container_host=\"\",{container}"))
        }),
        "the container's series under HuaTuo's labels:\n{}",
        agent.metrics()
    );

    let prom = common::prometheus::Prometheus::scrape("huatuo", &agent.addr);

    let query = |q: &str| -> Vec<serde_json::Value> {
        let (code, body) = prom.query_raw(q);
        assert_eq!(code, 200, "{q}: {body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        v["data"]["result"].as_array().cloned().unwrap_or_default()
    };

    // As HuaTuo's dashboards select: template variables from label_values(…, region/host),
    // then `{region=~"$region",host=~"$host"}` on every host panel and the container labels on
    // the container panels. Rates need two samples: they come after a few scrapes.
    let h = format!("region=~\"{REGION}\",host=~\"{HOST}\"");
    let c = format!("{h},container_hostnamespace=~\".*\",container_host=~\".*\",{container}");
    let queries: Vec<(&str, String)> = vec![
        // Template variables.
        (
            "variable region",
            "count by (region) (huatuo_bamai_cpu_util_usr)".into(),
        ),
        (
            "variable host",
            format!("count by (host) (huatuo_bamai_cpu_util_usr{{region=~\"{REGION}\"}})"),
        ),
        (
            "variable container",
            format!("count by (container_name) (huatuo_bamai_cpu_util_container_usr{{{h}}})"),
        ),
        // Host dashboard.
        (
            "cpu_util",
            format!("huatuo_bamai_cpu_util_sys{{{h}}} + huatuo_bamai_cpu_util_usr{{{h}}}"),
        ),
        ("loadavg", format!("huatuo_bamai_loadavg_load1{{{h}}}")),
        (
            "memory_vmstat",
            format!("rate(huatuo_bamai_memory_vmstat_pgfault{{{h}}}[1m])"),
        ),
        (
            "memory_buddyinfo",
            format!("sum by (order) (huatuo_bamai_memory_buddyinfo_blocks{{{h}}})"),
        ),
        (
            "diskio",
            format!("rate(huatuo_bamai_diskio_read_bytes_total{{{h}}}[1m])"),
        ),
        (
            "netdev",
            format!("rate(huatuo_bamai_netdev_receive_bytes_total{{{h}}}[1m])"),
        ),
        (
            "netdev_qdisc",
            format!("huatuo_bamai_netdev_qdisc_backlog{{{h}}}"),
        ),
        (
            "netdev_hw",
            format!("rate(huatuo_bamai_netdev_hw_rx_dropped_total{{{h},device=\"lo\"}}[1m])"),
        ),
        (
            "iolatency zones",
            format!("sum by (disk) (huatuo_bamai_iolatency_blkdisk_d2c{{{h},zone=~\"[0-5]\"}}) + sum by (disk) (huatuo_bamai_iolatency_blkdisk_q2c{{{h}}})"),
        ),
        (
            "netstat",
            format!("rate(huatuo_bamai_netstat_TcpExt_ListenDrops{{{h}}}[1m])"),
        ),
        (
            "netstat tcp",
            format!("huatuo_bamai_netstat_Tcp_CurrEstab{{{h}}}"),
        ),
        (
            "sockstat",
            format!("huatuo_bamai_sockstat_TCP_inuse{{{h}}}"),
        ),
        (
            "tcp_memory",
            format!("huatuo_bamai_tcp_memory_usage_bytes{{{h}}}"),
        ),
        ("arp", format!("huatuo_bamai_arp_entries{{{h}}}")),
        ("runqlat", format!("huatuo_bamai_runqlat_latency{{{h}}}")),
        (
            "scrape",
            format!("huatuo_bamai_scrape_collector_success{{{h}}}"),
        ),
        (
            "tracing_status",
            format!("huatuo_bamai_tracing_status_running{{{h}}}"),
        ),
        (
            "process",
            format!("rate(huatuo_bamai_process_cpu_seconds_total{{{h}}}[1m])"),
        ),
        (
            "process memory",
            format!("huatuo_bamai_process_resident_memory_bytes{{{h}}}"),
        ),
        (
            "process fds",
            format!("huatuo_bamai_process_open_fds{{{h}}}"),
        ),
        ("xfs fragmentation", format!("increase(huatuo_bamai_xfs_alloc_blocks_total{{{h}}}[5m]) / clamp_min(increase(huatuo_bamai_xfs_alloc_extents_total{{{h}}}[5m]), 1e-6)")),
        ("xfs inode cache", format!("increase(huatuo_bamai_xfs_inode_attempts_total{{{h}}}[5m]) - increase(huatuo_bamai_xfs_inode_missed_total{{{h}}}[5m])")),
        ("xfs locks", format!("rate(huatuo_bamai_xfs_buf_locked_waited_total{{{h}}}[30s]) + rate(huatuo_bamai_xfs_buf_busy_locked_total{{{h}}}[30s])")),
        ("xfs log", format!("rate(huatuo_bamai_xfs_log_space_sleep_total{{{h}}}[30s])")),
        // Container dashboard.
        (
            "container cpu_util",
            format!("huatuo_bamai_cpu_util_container_usr{{{c}}}"),
        ),
        (
            "container cpu_stat",
            format!("huatuo_bamai_cpu_stat_container_nr_throttled{{{c}}}"),
        ),
        (
            "container memory",
            format!("huatuo_bamai_memory_vmstat_container_usage_bytes{{{c}}}"),
        ),
        (
            "container netdev",
            format!("rate(huatuo_bamai_netdev_container_receive_bytes_total{{{c}}}[1m])"),
        ),
        (
            "container netstat",
            format!("huatuo_bamai_netstat_container_Tcp_CurrEstab{{{c}}}"),
        ),
        (
            "container sockstat",
            format!("huatuo_bamai_sockstat_container_sockets_used{{{c}}}"),
        ),
        (
            "container arp",
            format!("huatuo_bamai_arp_container_entries{{{c}}}"),
        ),
        (
            "container oom",
            format!("huatuo_bamai_oom_container_total{{{c},latest_victim_comm=\"busybox\"}} >= 1"),
        ),
    ];
    let mut missing = Vec::new();
    let ok = wait_until(Duration::from_secs(30), || {
        missing = queries
            .iter()
            .filter(|(_, q)| query(q).is_empty())
            .map(|(what, q)| format!("{what}: {q}"))
            .collect();
        missing.is_empty()
    });
    assert!(
        ok,
        "HuaTuo dashboard queries without data:\n{}\nprometheus log:\n{}",
        missing.join("\n"),
        prom.log()
    );
    // The container series carry HuaTuo's labels, not bianque's.
    let series = query(&format!("huatuo_bamai_cpu_util_container_usr{{{c}}}"));
    let labels = &series[0]["metric"];
    assert_eq!(labels["container_type"], "normal", "{labels}");
    assert!(labels.get("container_id").is_none(), "{labels}");
}
