//! Property tests over every parser of outside input: procfs and cgroup files, kmsg records,
//! cgroup paths, the config file, the `/events` query, the strftime index name. Whatever the
//! input, no parser panics (errors are fine). 10,000 cases per property by default (seconds);
//! `BIANQUE_FUZZ_CASES=1000000 cargo test --release --test fuzz` for a longer run.

use proptest::prelude::*;
use proptest::test_runner::{Config, FileFailurePersistence};

fn config() -> Config {
    let cases = std::env::var("BIANQUE_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    Config {
        cases,
        // Shrunk failures are printed; nothing is written into the source tree.
        failure_persistence: Some(Box::new(FileFailurePersistence::Off)),
        ..Config::default()
    }
}

/// Text shaped like kernel files: words, numbers (some huge or negative), separators and lines.
fn file_text() -> impl Strategy<Value = String> {
    let token = prop_oneof![
        "[a-zA-Z_][a-zA-Z0-9_()/.-]{0,12}",
        "-?[0-9]{1,25}",
        "[0-9]{1,4}\\.[0-9]{1,4}",
        Just(":".to_string()),
        Just("=".to_string()),
        Just("kB".to_string()),
        Just("cpu".to_string()),
        Just("some avg10=".to_string()),
        Just("full".to_string()),
        Just("nr_throttled".to_string()),
        Just("usage_usec".to_string()),
        Just("0::/".to_string()),
        Just(" - ".to_string()),
        Just("(".to_string()),
        Just(")".to_string()),
        Just("|".to_string()),
        Just("max".to_string()),
        ".",
    ];
    let sep = prop_oneof![
        Just(" "),
        Just("  "),
        Just("\t"),
        Just("\n"),
        Just(":"),
        Just(","),
        Just("")
    ];
    proptest::collection::vec((token, sep), 0..60).prop_map(|parts| {
        let mut s = String::new();
        for (t, sep) in parts {
            s.push_str(&t);
            s.push_str(sep);
        }
        s
    })
}

/// Anything at all, or kernel-shaped text.
fn any_text() -> impl Strategy<Value = String> {
    prop_oneof![any::<String>(), file_text()]
}

fn all_text_parsers(t: &str) {
    use bianque::cgroupfs;
    use bianque::procfs::*;
    let _ = arp::count(t);
    let _ = arp_cache::entries(t);
    let _ = buddyinfo::parse(t);
    let _ = cpulist::parse(t);
    let _ = diskstats::parse(t);
    let _ = diskstats::devices(t).count();
    let _ = loadavg::parse(t);
    let _ = meminfo::parse(t);
    let _ = meminfo::bytes(t, "MemTotal");
    let _ = mountinfo::parse(t);
    let _ = mountinfo::parse_lenient(t);
    let _ = mountinfo::lines(t).count();
    let _ = netdev::parse(t);
    let _ = netstat::parse(t);
    let _ = pid_cgroup::parse(t).count();
    let _ = pid_cgroup::path_of(t, "memory");
    let _ = pid_cgroup::path_of(t, "");
    let _ = pid_ns::inode(t, "net");
    let _ = pid_stack::frames(t).map(pid_stack::without_size).count();
    let _ = pid_stat::comm_state(t);
    let _ = pid_stat::parse(t);
    let _ = pid_statm::resident_pages(t);
    let _ = pressure::parse(t);
    let _ = pressure::find(t, "some");
    let _ = sockstat::parse(t);
    let _ = softirqs::parse(t);
    let _ = stat::parse(t);
    let _ = stat::parse_total(t);
    let _ = tcp_mem::parse(t);
    let _ = uptime::parse(t);
    let _ = for_each_kv(t, |_, _| {});
    let _ = cgroupfs::cpu::parse_cpu_stat(t);
    let _ = cgroupfs::cpu::parse_cpuacct_usage(t);
    let _ = cgroupfs::cpu::parse_cpuacct_stat(t, 100);
    let _ = cgroupfs::cpu::parse_cpuacct_stat(t, 0);
    let _ = cgroupfs::cpu::quota_cores_v1(t, t);
    let _ = cgroupfs::cpu::quota_cores_v1(t, "0");
    let _ = cgroupfs::cpu::quota_cores_v2(t);
    let _ = cgroupfs::tree::lowest_pid(t);
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn procfs_and_cgroup_file_parsers_never_panic(t in any_text()) {
        all_text_parsers(&t);
    }

    #[test]
    fn cgroup_stats_and_kmsg_records_never_panic(raw in proptest::collection::vec(any::<u8>(), 0..300)) {
        let _ = bianque::cgroupfs::taskstats::CgroupStats::parse(&raw);
        let _ = bianque::events::softlockup::kmsg::parse_record(&raw);
    }

    #[test]
    fn kmsg_lines_never_panic(
        prio in 0u32..300,
        seq in any::<u64>(),
        ts in any::<u64>(),
        flags in "[-c+]{0,2}",
        messages in proptest::collection::vec(prop_oneof![
            any::<String>(),
            "watchdog: BUG: soft lockup - CPU#[0-9]{1,4} stuck for [0-9]{1,6}s! \\[[a-z:/0-9]{0,16}:[0-9]{1,7}\\]",
            "(RIP: |Call Trace:| \\? )?[a-z_]{1,20}\\+0x[0-9a-f]{1,6}/0x[0-9a-f]{1,6}( \\[[a-z_]{1,8}\\])?",
            "CPU: [0-9]{1,3} PID: [0-9]{1,7} Comm: [a-z]{0,16}.*",
        ], 1..12),
    ) {
        let mut parser = bianque::events::softlockup::kmsg::LockupParser::default();
        for m in &messages {
            let record = format!("{prio},{seq},{ts},{flags};{m}\n");
            let _ = bianque::events::softlockup::kmsg::parse_record(record.as_bytes());
            let _ = bianque::events::softlockup::kmsg::parse_lockup_header(m);
            let _ = parser.feed(m, ts);
            let _ = parser.pending();
        }
        let _ = parser.flush();
    }

    #[test]
    fn cgroup_paths_never_panic(
        path in prop_oneof![
            any::<String>(),
            proptest::collection::vec(prop_oneof![
                "docker-[0-9a-f]{0,70}\\.scope",
                "cri-containerd-[0-9a-f]{0,70}\\.scope",
                "libpod-[0-9a-f]{0,70}(\\.scope)?",
                "kubepods(-besteffort|-burstable)?(\\.slice)?",
                "kubepods-pod[0-9a-f_]{0,40}\\.slice",
                "pod[0-9a-f-]{0,40}",
                "[0-9a-f]{0,70}",
                "[a-z.-]{0,12}",
            ], 0..8).prop_map(|s| format!("/{}", s.join("/"))),
        ],
    ) {
        let _ = bianque::container::cgroup_path::parse(&path);
        let _ = bianque::container::container_of_cgroup_path(&path);
    }

    #[test]
    fn the_config_parser_never_panics(
        text in prop_oneof![
            any::<String>(),
            proptest::collection::vec((
                prop_oneof![
                    Just("[server]"), Just("[store]"), Just("[log]"), Just("[metrics]"),
                    Just("[storage.elasticsearch]"), Just("[containers]"), Just("[events.dropwatch]"),
                    Just("[autotracing.cpuidle]"), Just("[autotracing.dload]"), Just("[metrics.loadavg]"),
                    Just(""),
                ],
                prop_oneof![
                    proptest::sample::select(vec![
                        "listen", "index", "addresses", "level", "hostname", "region", "prefix",
                        "threshold_load", "max_connections", "user_threshold_percent",
                        "retention_max_size_bytes", "enabled", "filter_include_names", "token",
                        "ports",
                    ]).prop_map(String::from),
                    "[a-z_]{1,12}",
                ],
                prop_oneof![
                    Just("nan".to_string()), Just("inf".to_string()), Just("-1".to_string()),
                    Just("99999999999999999999".to_string()), Just("true".to_string()),
                    "-?[0-9]{1,12}(\\.[0-9]{1,6})?",
                    any::<String>().prop_map(|s| toml_string(&s)),
                    "%[-_0#^]?[a-zA-Z%:.+#]{0,3}".prop_map(|s| toml_string(&format!("x-{s}"))),
                    "\\[\"[ -~]{0,20}\"\\]",
                ],
            ), 0..8).prop_map(|lines| lines.into_iter()
                .map(|(section, key, value)| format!("{section}\n{key} = {value}\n"))
                .collect::<String>()),
        ],
    ) {
        if let Ok(cfg) = bianque::agent::Config::parse(&text) {
            let host = bianque::host::HostRoot::new(std::path::PathBuf::from("/nonexistent"));
            let _ = bianque::tracer::runner::build_tracers(cfg.tracer_sections(), &[], &host);
        }
    }

    #[test]
    fn strftime_index_names_never_panic(
        pattern in prop_oneof![
            any::<String>(),
            proptest::collection::vec(prop_oneof![
                "[a-z0-9_.-]{0,6}",
                "%[-_0#^]?[0-9]{0,2}[a-zA-Z%:.+#]",
                Just("%#z".to_string()),
                Just("%:z".to_string()),
                Just("%.3f".to_string()),
            ], 0..6).prop_map(|p| p.concat()),
        ],
    ) {
        let _ = bianque::agent::config::index_pattern_formats(&pattern);
        let text = format!(
            "[storage.elasticsearch]\naddresses = [\"http://127.0.0.1:9200\"]\nindex = {}\n",
            toml_string(&pattern)
        );
        let _ = bianque::agent::Config::parse(&text);
    }

    #[test]
    fn the_events_query_never_panics(
        pairs in proptest::collection::vec((
            prop_oneof![
                Just("tracer".to_string()), Just("since".to_string()), Just("until".to_string()),
                Just("container".to_string()), Just("limit".to_string()), Just("cursor".to_string()),
                "data\\.[a-z_.]{0,12}", any::<String>(),
            ],
            prop_oneof![
                any::<String>(), "-?[0-9]{1,22}", "[0-9]{1,4}[smhdw]",
                "20[0-9]{2}-[01][0-9]-[0-3][0-9]T[0-2][0-9]:[0-5][0-9]:[0-5][0-9](\\.[0-9]{1,12})?(Z|[+-][0-9]{2}:[0-9]{2})",
                "[A-Za-z0-9_-]{0,30}",
            ],
        ), 0..40),
    ) {
        let _ = bianque::server::events_query(pairs);
    }

    #[test]
    fn time_arguments_never_panic(s in any_text(), now in any::<i64>()) {
        let _ = bianque::record::parse_time_arg(&s, now);
    }
}

/// A TOML basic string holding `s`.
fn toml_string(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}
