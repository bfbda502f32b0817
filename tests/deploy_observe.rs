//! deploy/: the alert rules, the example config and the Grafana dashboards, each exercised for
//! real: promtool checks and unit-tests the rules; the example config goes through the agent's
//! own parser and must equal the built-in defaults; a real Prometheus scrapes a running agent
//! (shipping to a real OpenSearch-API server) and every query of every dashboard must answer.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use bianque::agent::config::Config;
use bianque::host::HostRoot;
use bianque::tracer::{self, BuildContext, Mode};
use common::osmem::Osmem;
use common::podman::Podman;
use common::*;

fn deploy(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy")
        .join(path)
}

fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| {
        panic!("{cmd:?}: {e} (promtool: Debian package prometheus, installed by `make test`)")
    });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd:?} failed:\n{text}");
    text
}

// ---------------------------------------------------------------------------------------------
// Alert rules

/// `- alert: Name` lines of the rules file.
fn alert_names(rules: &str) -> Vec<String> {
    rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
        .map(|n| n.trim().to_string())
        .collect()
}

#[test]
fn alert_rules_pass_promtool_check_and_their_unit_tests() {
    let rules_path = deploy("prometheus/alerts.yml");
    let out = run_ok(
        Command::new("promtool")
            .arg("check")
            .arg("rules")
            .arg(&rules_path),
    );
    let rules = std::fs::read_to_string(&rules_path).unwrap();
    let names = alert_names(&rules);
    assert!(
        out.contains(&format!("SUCCESS: {} rules found", names.len())),
        "{out}"
    );

    let mut tests: Vec<PathBuf> = std::fs::read_dir(deploy("prometheus/tests"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yml"))
        .collect();
    tests.sort();
    let out = run_ok(
        Command::new("promtool")
            .current_dir(deploy("prometheus"))
            .args(["test", "rules"])
            .args(&tests),
    );
    assert_eq!(
        out.matches("SUCCESS").count(),
        tests.len(),
        "every test file passes:\n{out}"
    );

    // Each alert has a case where it fires and one where it must stay silent.
    let texts: Vec<String> = tests
        .iter()
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect();
    for name in &names {
        let mut fires = false;
        let mut silent = false;
        for text in &texts {
            let mut lines = text.lines().peekable();
            while let Some(line) = lines.next() {
                if line.trim() == format!("alertname: {name}") {
                    match lines.peek().map(|l| l.trim()) {
                        Some("exp_alerts: []") => silent = true,
                        Some("exp_alerts:") => fires = true,
                        other => panic!("{name}: unexpected line after alertname: {other:?}"),
                    }
                }
            }
        }
        assert!(fires, "{name}: no promtool test case where it fires");
        assert!(
            silent,
            "{name}: no promtool test case where it does not fire"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// The example config

/// The field names a tracer's own section accepts, from its parser's "unknown field" error
/// (serde lists every expected field).
fn section_fields(spec: &tracer::TracerSpec, host: &HostRoot) -> BTreeSet<String> {
    let section = format!("{}.{}", spec.mode.section(), spec.name);
    let probe: toml::Table = toml::from_str("bq_no_such_key = 1").unwrap();
    let err = match (spec.build)(
        &BuildContext {
            host,
            section: &section,
        },
        &probe,
    ) {
        Ok(_) => panic!("{section}: an unknown key was accepted"),
        Err(e) => e.0,
    };
    assert!(err.contains("bq_no_such_key"), "{section}: {err}");
    // serde: "expected one of `a`, `b`", "expected `a` or `b`", or "there are no fields".
    let list = err
        .split_once("expected one of ")
        .or_else(|| err.split_once("expected "))
        .map_or("", |(_, list)| list);
    list.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect()
}

/// `key =` (set) and `# key =` (shown commented out) keys of one `[section]` of the example.
fn example_keys(text: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut keys: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut section = String::new();
    for line in text.lines() {
        let t = line.trim();
        if let Some(rest) = t.strip_prefix('[') {
            section = rest.split(']').next().unwrap().to_string();
            keys.entry(section.clone()).or_default();
            continue;
        }
        let body = t.strip_prefix("# ").unwrap_or(t);
        if let Some((k, _)) = body.split_once(" = ") {
            let k = k.trim();
            if k.chars().all(|c| c.is_ascii_lowercase() || c == '_') {
                keys.entry(section.clone())
                    .or_default()
                    .insert(k.to_string());
            }
        }
    }
    keys
}

/// Field names in a `Debug` rendering (`Name { a: 1, b: Inner { c: 2 } }` → a, b, c).
fn debug_fields(debug: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for part in debug.split(['{', ',']) {
        if let Some((k, _)) = part.split_once(": ") {
            let k = k.trim();
            if !k.is_empty() && k.chars().all(|c| c.is_ascii_lowercase() || c == '_') {
                out.insert(k.to_string());
            }
        }
    }
    out
}

#[test]
fn example_config_parses_and_every_value_is_the_default() {
    let path = deploy("bianque.example.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    // Through the agent's own parser, as `bianque run --config` reads it.
    let example = Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
    let empty = Config::parse("").unwrap();

    // The agent's own sections: every value equals the default (Debug shows every field; the
    // tracer sections are compared below, one tracer at a time).
    let framework = |c: &Config| {
        let mut c = c.clone();
        c.events.clear();
        c.autotracing.clear();
        c.metrics.collectors.clear();
        format!("{c:#?}")
    };
    assert_eq!(
        framework(&example),
        framework(&empty),
        "deploy/bianque.example.toml differs from the built-in defaults"
    );
    assert_eq!(
        framework(&Config::default()),
        framework(&empty),
        "an empty config is Config::default()"
    );
    // The shipper's Debug hides some fields (it holds credentials): compare those one by one.
    let (es, es_default) = (&example.storage.elasticsearch, &empty.storage.elasticsearch);
    assert_eq!(
        es.install_template, es_default.install_template,
        "install_template"
    );
    assert_eq!(
        es.connect_timeout_ms, es_default.connect_timeout_ms,
        "connect_timeout_ms"
    );
    assert_eq!(
        es.request_timeout_ms, es_default.request_timeout_ms,
        "request_timeout_ms"
    );
    assert_eq!(
        es.retry_initial_backoff_ms, es_default.retry_initial_backoff_ms,
        "retry_initial_backoff_ms"
    );
    assert_eq!(
        es.retry_max_backoff_ms, es_default.retry_max_backoff_ms,
        "retry_max_backoff_ms"
    );
    assert_eq!(es.gzip, es_default.gzip, "gzip");
    // Every key of those sections is in the file (set, or commented out when it has no value).
    let keys = example_keys(&text);
    let mentioned: BTreeSet<String> = keys.values().flatten().cloned().collect();
    for key in [
        "install_template",
        "connect_timeout_ms",
        "retry_initial_backoff_ms",
        "retry_max_backoff_ms",
        "gzip",
    ] {
        assert!(
            mentioned.contains(key),
            "key `{key}` is missing from the example"
        );
    }
    // Section names, and internal state that is not a key.
    let skip = [
        "prefix_set",
        "events",
        "autotracing",
        "collectors",
        "metrics",
        "storage",
        "elasticsearch",
        "log",
        "server",
        "store",
        "containers",
    ];
    for field in debug_fields(&framework(&empty)) {
        if skip.contains(&field.as_str()) {
            continue;
        }
        assert!(
            mentioned.contains(&field),
            "key `{field}` is missing from deploy/bianque.example.toml"
        );
    }

    // Every tracer has its section, with every key its parser knows, and builds from it.
    let host = HostRoot::new("/");
    let mut seen = BTreeSet::new();
    let mut key_errors = Vec::new();
    for spec in tracer::registry() {
        let section = format!("{}.{}", spec.mode.section(), spec.name);
        seen.insert(section.clone());
        let table = example
            .tracer_sections()
            .of(spec.mode)
            .get(spec.name)
            .cloned()
            .unwrap_or_else(|| panic!("[{section}] is missing from the example"));
        let mut wanted = section_fields(spec, &host);
        wanted.insert("enabled".into());
        if spec.mode == Mode::Event {
            wanted.insert("restart_interval_secs".into());
        }
        let have = keys.get(&section).cloned().unwrap_or_default();
        if have != wanted {
            key_errors.push(format!(
                "[{section}]: missing {:?}, unknown {:?}",
                wanted.difference(&have).collect::<Vec<_>>(),
                have.difference(&wanted).collect::<Vec<_>>()
            ));
        }
        // The common keys are the framework's: their defaults are known here.
        assert_eq!(
            table.get("enabled").and_then(|v| v.as_bool()),
            Some(spec.default_enabled),
            "[{section}] enabled"
        );
        if spec.mode == Mode::Event {
            assert_eq!(
                table
                    .get("restart_interval_secs")
                    .and_then(|v| v.as_integer()),
                Some(10),
                "[{section}] restart_interval_secs"
            );
        }
    }
    assert!(
        key_errors.is_empty(),
        "tracer keys of the example:\n{}",
        key_errors.join("\n")
    );
    let in_file: BTreeSet<String> = keys
        .keys()
        .filter(|s| {
            ["metrics.", "events.", "autotracing."]
                .iter()
                .any(|p| s.starts_with(p))
        })
        .cloned()
        .collect();
    assert_eq!(
        in_file, seen,
        "tracer sections of the example vs the registry"
    );
    let entries = tracer::runner::build_tracers(example.tracer_sections(), &[], &host)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(entries.len(), tracer::registry().len());

    // And the CLI accepts it.
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Exit code 2 is a configuration error (others say which tracers cannot run here).
    assert_ne!(
        out.status.code(),
        Some(2),
        "bianque check --config deploy/bianque.example.toml: {stderr}"
    );
}

// ---------------------------------------------------------------------------------------------
// Dashboards

/// Every panel of a dashboard, rows' nested panels included.
fn panels(dash: &serde_json::Value) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    for p in dash["panels"].as_array().unwrap() {
        if let Some(inner) = p["panels"].as_array() {
            out.extend(inner.iter().cloned());
        }
        out.push(p.clone());
    }
    out
}

fn datasource_type(target: &serde_json::Value, panel: &serde_json::Value) -> String {
    target["datasource"]["type"]
        .as_str()
        .or(panel["datasource"]["type"].as_str())
        .unwrap_or("")
        .to_string()
}

/// What Grafana would send: `$__rate_interval` and the template variables substituted (label
/// variables by `.*` for PromQL, as "All" does; Elasticsearch variables by their "All" value).
fn substitute(text: &str, vars: &[(String, String)]) -> String {
    let mut s = text
        .replace("$__rate_interval", "1m")
        .replace("$__interval", "15s")
        .replace("$__range", "1h");
    // Longest names first so `$instance` does not eat `$instances`.
    let mut vars = vars.to_vec();
    vars.sort_by_key(|(n, _)| std::cmp::Reverse(n.len()));
    for (name, value) in &vars {
        s = s
            .replace(&format!("${{{name}}}"), value)
            .replace(&format!("${name}"), value);
    }
    s
}

struct Dashboards {
    /// (dashboard file, panel title, PromQL with variables substituted)
    promql: Vec<(String, String, String)>,
    /// (dashboard file, panel title, Grafana Elasticsearch target, ES variables substituted)
    elasticsearch: Vec<(String, String, serde_json::Value)>,
}

fn load_dashboards() -> Dashboards {
    let mut d = Dashboards {
        promql: Vec::new(),
        elasticsearch: Vec::new(),
    };
    let mut files: Vec<PathBuf> = std::fs::read_dir(deploy("grafana"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    assert!(
        files.len() >= 4,
        "host, containers, events, agent: {files:?}"
    );
    for file in files {
        let name = file.file_name().unwrap().to_string_lossy().to_string();
        let dash: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&file).unwrap())
                .unwrap_or_else(|e| panic!("{name}: {e}"));
        let vars = dash["templating"]["list"].as_array().unwrap();
        let prom_vars: Vec<(String, String)> = vars
            .iter()
            .map(|v| (v["name"].as_str().unwrap().to_string(), ".*".to_string()))
            .collect();
        let es_vars: Vec<(String, String)> = vars
            .iter()
            .map(|v| {
                let all = v["allValue"].as_str().unwrap_or("*");
                (v["name"].as_str().unwrap().to_string(), all.to_string())
            })
            .collect();
        // A query variable's own query: label_values(selector, label) must find the label.
        for v in vars.iter().filter(|v| v["type"] == "query") {
            let def = v["definition"].as_str().unwrap();
            if v["datasource"]["type"] == "prometheus" {
                let inner = def
                    .strip_prefix("label_values(")
                    .and_then(|r| r.strip_suffix(')'))
                    .unwrap_or_else(|| panic!("{name}: variable query {def}"));
                let (selector, label) = inner.rsplit_once(", ").unwrap();
                d.promql.push((
                    name.clone(),
                    format!("variable ${}", v["name"].as_str().unwrap()),
                    format!("count by ({label}) ({})", substitute(selector, &prom_vars)),
                ));
            } else {
                let q: serde_json::Value = serde_json::from_str(def).unwrap();
                d.elasticsearch.push((
                    name.clone(),
                    format!("variable ${}", v["name"].as_str().unwrap()),
                    serde_json::json!({"query": "*", "metrics": [{"type": "count"}],
                        "bucketAggs": [{"type": "terms", "field": q["field"], "id": "1", "settings": {"size": "10"}}]}),
                ));
            }
        }
        for p in panels(&dash) {
            let title = p["title"].as_str().unwrap_or("").to_string();
            for t in p["targets"].as_array().into_iter().flatten() {
                match datasource_type(t, &p).as_str() {
                    "prometheus" => d.promql.push((
                        name.clone(),
                        title.clone(),
                        substitute(t["expr"].as_str().unwrap(), &prom_vars),
                    )),
                    "elasticsearch" => {
                        let mut t = t.clone();
                        t["query"] = substitute(t["query"].as_str().unwrap(), &es_vars).into();
                        d.elasticsearch.push((name.clone(), title.clone(), t));
                    }
                    other => panic!("{name} / {title}: datasource type {other:?}"),
                }
            }
        }
    }
    d
}

/// A Grafana Elasticsearch target as the `_search` body Grafana sends: the Lucene query over
/// the last hour, its bucket aggregations nested in order, or raw documents.
fn es_search_body(target: &serde_json::Value) -> serde_json::Value {
    let query = serde_json::json!({"bool": {"filter": [
        {"query_string": {"query": target["query"], "analyze_wildcard": true}},
        {"range": {"tracer_time": {"gte": "now-1h", "lte": "now"}}}
    ]}});
    let metric = target["metrics"][0]["type"].as_str().unwrap_or("count");
    if metric == "raw_data" || metric == "logs" {
        return serde_json::json!({"query": query, "size": 100, "sort": [{"tracer_time": "desc"}]});
    }
    let mut aggs = serde_json::Value::Null;
    for b in target["bucketAggs"].as_array().unwrap().iter().rev() {
        let id = b["id"].as_str().unwrap_or("1").to_string();
        let mut agg = match b["type"].as_str().unwrap() {
            "terms" => serde_json::json!({"terms": {"field": b["field"],
                "size": b["settings"]["size"].as_str().unwrap_or("10").parse::<u64>().unwrap()}}),
            "date_histogram" => {
                serde_json::json!({"date_histogram": {"field": b["field"], "fixed_interval": "1m"}})
            }
            other => panic!("bucket aggregation {other} not checked here"),
        };
        if !aggs.is_null() {
            agg["aggs"] = aggs;
        }
        aggs = serde_json::json!({ id: agg });
    }
    serde_json::json!({"query": query, "size": 0, "aggs": aggs})
}

/// Dashboard panels whose data needs what a machine may lack: (dashboard / panel, why). A
/// panel is excused only where its need is really absent.
fn needs_absent_here() -> Vec<(&'static str, &'static str)> {
    let schedstats =
        std::fs::read_to_string("/proc/sys/kernel/sched_schedstats").is_ok_and(|v| v.trim() == "1");
    let mut out = Vec::new();
    if !schedstats {
        out.push((
            "bianque-containers.json / Run-queue wait (schedstats)",
            "cpu.stat wait_sum needs a kernel with CONFIG_SCHEDSTATS and kernel.sched_schedstats=1 (absent here)",
        ));
    }
    out
}

#[test]
fn every_dashboard_query_answers_on_a_real_prometheus_scraping_the_agent() {
    let dash = load_dashboards();
    let os = Osmem::start();
    let mut podman = Podman::new();
    // oom's host_meminfo stays on: its `memory_snapshot.host_meminfo_bytes` is an object, which
    // the index template once mapped to long, so Elasticsearch refused every OOM record.
    let config = format!(
        "[storage.elasticsearch]\naddresses = [\"{}\"]\nflush_interval_ms = 200\n\
         [containers]\nengine_sockets = [\"{}\"]\nkubelet_read_only_address = \"\"\nkubelet_url = \"\"\nresync_secs = 1\n",
        os.url(),
        podman.socket()
    );
    let agent = Agent::start(&config, &[]);

    // Containers: one nearly idle (it wakes 5 times a second: run-queue latency samples) with a
    // CPU quota, a memory limit and an interface of its own; one
    // that runs out of memory (a real OOM kill: the OOM panels and records).
    let tag = std::process::id();
    let idle_name = format!("bq-dash-idle-{tag}");
    let idle = podman.run(
        &idle_name,
        "--cpus=0.5 --memory=64m",
        "/bin/busybox sh -c 'while true; do /bin/busybox sleep 0.2; done'",
    );
    let pid = sh(&format!("podman inspect -f '{{{{.State.Pid}}}}' {idle}"));
    // A veth pair, one end in the container (no `dummy` module in this kernel); removed with
    // the container's namespace, or by the guard.
    let host_end = format!("bqdh{}", tag % 100_000);
    let _veth = Cleanup(format!("ip link del {host_end}"));
    sh(&format!(
        "ip link add {host_end} type veth peer name bqdash0 netns {pid} && ip link set {host_end} up && \
         nsenter -t {pid} -n sh -c 'ip link set bqdash0 up && ip addr add 10.201.0.2/24 dev bqdash0'",
        pid = pid.trim()
    ));
    let oom_name = format!("bq-dash-oom-{tag}");
    podman.run(&oom_name, "--memory=32m", "/bin/busybox tail /dev/zero");
    // Packet drops: UDP to a closed port (NO_SOCKET).
    let port = closed_udp_port();
    send_udp_from_thread("bq-dash-udp", &format!("127.0.0.1:{port}"), 50);

    let prom = common::prometheus::Prometheus::scrape("bianque", &agent.addr);

    // The OOM kill must have happened, and been recorded and shipped, before the checks.
    let oomed = wait_until(Duration::from_secs(30), || {
        !agent.events("tracer=oom").is_empty()
    });
    assert!(oomed, "no OOM record; agent log:\n{}", agent.log());
    send_udp_from_thread("bq-dash-udp", &format!("127.0.0.1:{port}"), 50);

    let query = |q: &str| -> Result<usize, String> {
        let (code, body) = prom.query_raw(q);
        if code != 200 {
            return Err(format!("HTTP {code}: {body}"));
        }
        let v: serde_json::Value = serde_json::from_str(&body).map_err(|e| e.to_string())?;
        Ok(v["data"]["result"].as_array().map_or(0, |r| r.len()))
    };
    let excused = needs_absent_here();
    for (panel, why) in &excused {
        println!("not checked here: {panel}: {why}");
    }
    // Rates need two samples in their window: retry until every query answers (or time is up).
    let mut failures: Vec<String> = Vec::new();
    wait_until(Duration::from_secs(60), || {
        failures = dash
            .promql
            .iter()
            .filter(|(file, title, _)| {
                !excused
                    .iter()
                    .any(|(t, _)| *t == format!("{file} / {title}"))
            })
            .filter_map(|(file, title, q)| match query(q) {
                Ok(n) if n > 0 => None,
                Ok(_) => Some(format!("{file} / {title}: no data for {q}")),
                Err(e) => Some(format!("{file} / {title}: {q}: {e}")),
            })
            .collect();
        failures.is_empty()
    });
    assert!(
        failures.is_empty(),
        "{} of {} dashboard queries without data:\n{}",
        failures.len(),
        dash.promql.len(),
        failures.join("\n")
    );
    assert!(
        dash.promql.len() > 60,
        "{} PromQL targets",
        dash.promql.len()
    );

    // The events dashboard's Elasticsearch queries, on the records the agent shipped.
    let shipped = wait_until(Duration::from_secs(30), || {
        let (code, v) = os.json(
            "POST",
            "/bianque-*/_search",
            r#"{"query":{"query_string":{"query":"tracer_name:oom"}},"size":1}"#,
        );
        code == 200 && v["hits"]["hits"].as_array().is_some_and(|h| !h.is_empty())
    });
    assert!(
        shipped,
        "the OOM record never reached osmem-server; agent log:\n{}",
        agent.log()
    );
    let mut es_failures = Vec::new();
    for (file, title, target) in &dash.elasticsearch {
        let body = es_search_body(target);
        let (code, v) = os.json("POST", "/bianque-*/_search", &body.to_string());
        let answered = code == 200
            && if body["size"] == 0 {
                let first = body["aggs"]
                    .as_object()
                    .unwrap()
                    .keys()
                    .next()
                    .unwrap()
                    .clone();
                v["aggregations"][&first]["buckets"]
                    .as_array()
                    .is_some_and(|b| !b.is_empty())
            } else {
                v["hits"]["hits"].as_array().is_some_and(|h| !h.is_empty())
            };
        if !answered {
            es_failures.push(format!("{file} / {title}: {body} -> {code} {v}"));
        }
    }
    assert!(
        es_failures.is_empty(),
        "Elasticsearch queries without data:\n{}",
        es_failures.join("\n")
    );
    assert!(
        dash.elasticsearch.len() >= 6,
        "{} ES targets",
        dash.elasticsearch.len()
    );
    drop(podman);
}
