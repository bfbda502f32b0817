//! The `bianque` command: `run` the agent, read stored `events`, list `tracers`, `check` this
//! kernel.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use bianque::agent::{self, AgentError, RunOptions};
use bianque::config::ConfigError;
use bianque::host::HostRoot;
use bianque::store::DEFAULT_DATA_DIR;
use bianque::store::{self, Query, Store};
use bianque::tracer::{self, check};
use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "bianque",
    version,
    about = "Linux kernel observability agent: eBPF events, Prometheus metrics, autotracing"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent.
    Run(RunArgs),
    /// Show stored events, newest first.
    Events(EventsArgs),
    /// List tracers and their status (live from a running agent when one answers).
    Tracers(TracersArgs),
    /// Report which tracers can run on this kernel, and why not.
    Check(CheckArgs),
    /// List the containers a running agent knows.
    Containers(ContainersArgs),
}

#[derive(Args)]
struct ContainersArgs {
    #[arg(long)]
    config: Option<PathBuf>,
    /// Address of the running agent (default: the config's server.listen).
    #[arg(long)]
    listen: Option<String>,
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct RunArgs {
    /// TOML config file (every key optional).
    #[arg(long)]
    config: Option<PathBuf>,
    /// HTTP listen address (default 127.0.0.1:19704).
    #[arg(long)]
    listen: Option<String>,
    /// Directory of the local store (default /var/lib/bianque).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Region name carried by every record.
    #[arg(long)]
    region: Option<String>,
    /// A directory that stands for `/` (proc/, sys/, dev/ are read under it).
    #[arg(long)]
    host_root: Option<PathBuf>,
    /// Disable a tracer by name (repeatable).
    #[arg(long, value_name = "NAME")]
    disable: Vec<String>,
}

#[derive(Args)]
struct EventsArgs {
    #[arg(long, default_value = DEFAULT_DATA_DIR)]
    data_dir: PathBuf,
    /// Only this tracer's events.
    #[arg(long)]
    tracer: Option<String>,
    /// Only events since: a duration back (10m, 2h), an RFC 3339 time, or Unix seconds.
    #[arg(long)]
    since: Option<String>,
    /// Only events before this time (same forms as --since).
    #[arg(long)]
    until: Option<String>,
    /// Only events of this container (id or id prefix).
    #[arg(long)]
    container: Option<String>,
    /// Only events whose `tracer_data` field equals a value: `drop_reason=NO_SOCKET`
    /// (a `data.` prefix is allowed; dots reach into nested objects). Repeatable.
    #[arg(long = "data", value_name = "FIELD=VALUE")]
    data: Vec<String>,
    #[arg(long, default_value_t = 50)]
    limit: usize,
    /// Continue after this point: the `next` cursor printed with the previous page.
    #[arg(long)]
    cursor: Option<String>,
    /// One JSON record per line instead of a table.
    #[arg(long)]
    json: bool,
    /// Stream new events live from a running agent (its /v1/events/watch) until interrupted.
    #[arg(long)]
    follow: bool,
    /// The running agent's address for --follow (default: the config's server.listen).
    #[arg(long)]
    listen: Option<String>,
    /// Config file, for --follow to find the agent's address.
    #[arg(long)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    action: Option<EventsAction>,
}

#[derive(Subcommand)]
enum EventsAction {
    /// Show one stored event (pretty JSON); `--flamegraph FILE` writes its CPU flame graph.
    Show(ShowArgs),
}

#[derive(Args)]
struct ShowArgs {
    /// The event's tracer_id.
    id: String,
    #[arg(long, default_value = DEFAULT_DATA_DIR)]
    data_dir: PathBuf,
    /// Write the record's profile as an SVG flame graph to this file.
    #[arg(long, value_name = "FILE")]
    flamegraph: Option<PathBuf>,
}

#[derive(Args)]
struct TracersArgs {
    #[arg(long)]
    config: Option<PathBuf>,
    /// Address of a running agent (default: the config's server.listen).
    #[arg(long)]
    listen: Option<String>,
    #[arg(long)]
    host_root: Option<PathBuf>,
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct CheckArgs {
    #[arg(long)]
    config: Option<PathBuf>,
    #[arg(long)]
    host_root: Option<PathBuf>,
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(a) => agent::run(RunOptions {
            config: a.config,
            listen: a.listen,
            data_dir: a.data_dir,
            region: a.region,
            host_root: a.host_root,
            disable: a.disable,
        }),
        Command::Events(a) => events(a),
        Command::Tracers(a) => tracers(a),
        Command::Check(a) => check_cmd(a),
        Command::Containers(a) => containers_cmd(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(AgentError::Config(e)) => {
            eprintln!("bianque: config error: {e}");
            ExitCode::from(2)
        }
        Err(AgentError::Runtime(e)) => {
            eprintln!("bianque: error: {}", format!("{e:#}").replace('\n', " "));
            ExitCode::from(1)
        }
    }
}

fn events(a: EventsArgs) -> Result<(), AgentError> {
    if let Some(EventsAction::Show(s)) = a.action {
        return show_event(s);
    }
    let now = bianque::record::now_ns();
    let time = |key: &str, v: &Option<String>| -> Result<Option<i64>, AgentError> {
        v.as_deref()
            .map(|s| {
                bianque::record::parse_time_arg(s, now)
                    .map_err(|e| ConfigError(format!("--{key}: {e}")).into())
            })
            .transpose()
    };
    let mut data = Vec::new();
    for m in &a.data {
        let (k, v) = m
            .split_once('=')
            .ok_or_else(|| ConfigError(format!("--data: `{m}` is not FIELD=VALUE")))?;
        let k = k.strip_prefix("data.").unwrap_or(k);
        if !store::valid_data_path(k) {
            return Err(ConfigError(format!(
                "--data: `{k}` is not a field path (letters, digits, _ and dots)"
            ))
            .into());
        }
        data.push((k.to_string(), v.to_string()));
    }
    if a.follow {
        return follow(&a);
    }
    let q = Query {
        tracer: a.tracer.clone(),
        container: a.container.clone(),
        since_ns: time("since", &a.since)?,
        until_ns: time("until", &a.until)?,
        data,
        cursor: a.cursor.clone(),
        limit: a.limit.max(1),
    };
    let store = Store::open_read_only(&a.data_dir)?;
    let page = store.query_page(&q).map_err(anyhow::Error::from)?;
    let rows = &page.rows;
    let mut out = std::io::stdout().lock();
    if a.json {
        for r in rows {
            let _ = writeln!(out, "{r}");
        }
        if let Some(next) = &page.next {
            eprintln!("next page: --cursor {next}");
        }
        return Ok(());
    }
    let _ = writeln!(
        out,
        "{:<30}  {:<14}  {:<12}  DETAILS",
        "TIME", "TRACER", "CONTAINER"
    );
    for r in rows {
        let v: serde_json::Value = serde_json::from_str(r).unwrap_or_default();
        print_row(&mut out, &v);
    }
    if rows.is_empty() {
        let _ = writeln!(out, "(no events)");
    }
    if let Some(next) = &page.next {
        let _ = writeln!(out, "(more: --cursor {next})");
    }
    Ok(())
}

fn print_row(out: &mut impl Write, v: &serde_json::Value) {
    let container = v
        .get("container_id")
        .and_then(|c| c.as_str())
        .map(|c| &c[..c.len().min(12)])
        .unwrap_or("-");
    let _ = writeln!(
        out,
        "{:<30}  {:<14}  {:<12}  {}",
        v.get("tracer_time").and_then(|t| t.as_str()).unwrap_or("?"),
        v.get("tracer_name").and_then(|t| t.as_str()).unwrap_or("?"),
        container,
        summarize(
            v.get("tracer_data").unwrap_or(&serde_json::Value::Null),
            140
        )
    );
}

/// `bianque events --follow`: prints records from the agent's live stream as they come.
fn follow(a: &EventsArgs) -> Result<(), AgentError> {
    if a.since.is_some() || a.until.is_some() || a.cursor.is_some() || !a.data.is_empty() {
        return Err(ConfigError(
            "--follow takes --tracer and --container only (it shows new events as they come)"
                .into(),
        )
        .into());
    }
    let opts = RunOptions {
        config: a.config.clone(),
        listen: a.listen.clone(),
        ..Default::default()
    };
    let cfg = agent::load_config(&opts)?;
    let mut url = format!("http://{}/v1/events/watch", cfg.server.listen);
    let mut sep = '?';
    for (k, v) in [("tracer", &a.tracer), ("container", &a.container)] {
        if let Some(v) = v {
            url.push(sep);
            url.push_str(k);
            url.push('=');
            url.extend(percent_encoding::utf8_percent_encode(v, QUERY_VALUE));
            sep = '&';
        }
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(anyhow::Error::from)?;
    let json = a.json;
    rt.block_on(async move {
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(3))
            .build()?;
        let mut resp = client
            .get(&url)
            .header("Accept", "text/event-stream")
            .send()
            .await
            .map_err(|e| anyhow::anyhow!("no agent answers at {}: {e}", cfg.server.listen))?;
        if !resp.status().is_success() {
            let status = resp.status();
            let body = resp.text().await.unwrap_or_default();
            anyhow::bail!("the agent answered {status}: {body}");
        }
        let mut out = std::io::stdout();
        if !json {
            let _ = writeln!(
                out,
                "{:<30}  {:<14}  {:<12}  DETAILS",
                "TIME", "TRACER", "CONTAINER"
            );
        }
        let mut buf = String::new();
        let mut sse = SseParser::default();
        while let Some(chunk) = resp.chunk().await? {
            buf.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(at) = buf.find('\n') {
                let line: String = buf.drain(..=at).collect();
                let Some((event, data)) = sse.line(line.trim_end_matches(['\n', '\r'])) else {
                    continue;
                };
                if event == "dropped" {
                    anyhow::bail!("the agent dropped this stream: {data}");
                }
                let ce: serde_json::Value = serde_json::from_str(&data).unwrap_or_default();
                let record = ce.get("data").cloned().unwrap_or_default();
                if json {
                    let _ = writeln!(out, "{record}");
                } else {
                    print_row(&mut out, &record);
                }
                let _ = out.flush();
            }
        }
        anyhow::bail!("the agent closed the stream")
    })?;
    Ok(())
}

/// Server-sent events, line by line: yields `(event name, data)` at each blank line.
#[derive(Default)]
struct SseParser {
    event: String,
    data: String,
}

impl SseParser {
    fn line(&mut self, line: &str) -> Option<(String, String)> {
        if line.is_empty() {
            let event = std::mem::take(&mut self.event);
            let data = std::mem::take(&mut self.data);
            if data.is_empty() {
                return None;
            }
            return Some((
                if event.is_empty() {
                    "message".into()
                } else {
                    event
                },
                data,
            ));
        }
        if line.starts_with(':') {
            return None; // keep-alive comment
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "event" => self.event = value.to_string(),
            "data" => {
                if !self.data.is_empty() {
                    self.data.push('\n');
                }
                self.data.push_str(value);
            }
            _ => {}
        }
        None
    }
}

/// What a query value may hold unencoded: RFC 3986 unreserved characters.
const QUERY_VALUE: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// `key=value` pairs of a record's scalar fields, in the tracer's own order, cut to `width`.
fn show_event(a: ShowArgs) -> Result<(), AgentError> {
    let store = Store::open_read_only(&a.data_dir)?;
    let Some(row) = store.get(&a.id)? else {
        return Err(anyhow::anyhow!("no event with id {}", a.id).into());
    };
    let v: serde_json::Value =
        serde_json::from_str(&row).map_err(|e| anyhow::anyhow!("stored record: {e}"))?;
    if let Some(path) = &a.flamegraph {
        let folded = bianque::profiler::folded_of_record(&v)
            .ok_or_else(|| anyhow::anyhow!("event {} holds no profile", a.id))?;
        let svg = bianque::profiler::flamegraph_svg(&flamegraph_title(&v), &folded)?;
        std::fs::write(path, svg)
            .map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))?;
        eprintln!("flame graph written to {}", path.display());
        return Ok(());
    }
    let text = serde_json::to_string_pretty(&v).unwrap_or(row);
    let _ = writeln!(std::io::stdout().lock(), "{text}");
    Ok(())
}

fn flamegraph_title(v: &serde_json::Value) -> String {
    bianque::profiler::flamegraph_title(v)
}

fn summarize(data: &serde_json::Value, width: usize) -> String {
    let mut s = String::new();
    if let Some(obj) = data.as_object() {
        for (k, v) in obj {
            let text = match v {
                serde_json::Value::String(x) => x.clone(),
                serde_json::Value::Number(n) => n.to_string(),
                serde_json::Value::Bool(b) => b.to_string(),
                _ => continue,
            };
            if !s.is_empty() {
                s.push(' ');
            }
            s.push_str(k);
            s.push('=');
            s.push_str(&text);
            if s.len() >= width {
                break;
            }
        }
    }
    if s.len() > width {
        let mut cut = width;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push('…');
    }
    s
}

/// `GET path` from a running agent; None when nothing answers (or not with 200).
fn http_get(addr: SocketAddr, path: &str) -> Option<String> {
    bianque::http::PlainGet::tcp(
        &addr.to_string(),
        Duration::from_millis(500),
        Duration::from_secs(5),
    )
    .ok()?
    .get(path)
    .ok()
}

fn tracers(a: TracersArgs) -> Result<(), AgentError> {
    let opts = RunOptions {
        config: a.config.clone(),
        listen: a.listen.clone(),
        ..Default::default()
    };
    let cfg = agent::load_config(&opts)?;
    let addr: SocketAddr = cfg
        .server
        .listen
        .parse()
        .map_err(|_| ConfigError(format!("bad address {}", cfg.server.listen)))?;
    let rows: Vec<serde_json::Value> = match http_get(addr, "/tracers") {
        Some(body) => {
            let v: serde_json::Value = serde_json::from_str(&body)
                .map_err(|e| anyhow::anyhow!("bad /tracers answer: {e}"))?;
            v.get("tracers")
                .and_then(|t| t.as_array())
                .cloned()
                .unwrap_or_default()
        }
        None => {
            eprintln!("no agent answers at {addr}; showing what would run here");
            let host = HostRoot::new(a.host_root.clone().unwrap_or_else(|| PathBuf::from("/")));
            let entries = tracer::runner::build_tracers(cfg.tracer_sections(), &[], &host)?;
            entries
                .iter()
                .map(|e| {
                    // Not live statuses: the agent is not running. "ready" = would start here.
                    let (status, reason) = match e.state.status() {
                        (tracer::Status::Disabled, reason) => ("disabled", reason),
                        _ => match check::check_all(e.spec.requires, &host) {
                            Ok(()) => ("ready", "agent not running".to_string()),
                            Err(r) => ("inactive", r),
                        },
                    };
                    serde_json::json!({"name": e.spec.name, "mode": e.spec.mode.as_str(), "status": status,
                        "reason": reason, "hits": 0, "restarts": 0, "description": e.spec.description})
                })
                .collect()
        }
    };
    let mut out = std::io::stdout().lock();
    if a.json {
        let _ = writeln!(out, "{}", serde_json::json!({"tracers": rows}));
        return Ok(());
    }
    let _ = writeln!(
        out,
        "{:<16}  {:<11}  {:<8}  {:>8}  {:>8}  REASON",
        "NAME", "MODE", "STATUS", "HITS", "RESTARTS"
    );
    for r in rows {
        let s = |k: &str| r.get(k).and_then(|v| v.as_str()).unwrap_or("").to_string();
        let n = |k: &str| r.get(k).and_then(|v| v.as_u64()).unwrap_or(0);
        let _ = writeln!(
            out,
            "{:<16}  {:<11}  {:<8}  {:>8}  {:>8}  {}",
            s("name"),
            s("mode"),
            s("status"),
            n("hits"),
            n("restarts"),
            s("reason")
        );
    }
    Ok(())
}

fn check_cmd(a: CheckArgs) -> Result<(), AgentError> {
    let opts = RunOptions {
        config: a.config.clone(),
        ..Default::default()
    };
    let cfg = agent::load_config(&opts)?;
    let host = HostRoot::new(a.host_root.clone().unwrap_or_else(|| PathBuf::from("/")));
    let entries = tracer::runner::build_tracers(cfg.tracer_sections(), &[], &host)?;
    let rows: Vec<(&str, &str, Result<(), String>, bool)> = entries
        .iter()
        .map(|e| {
            let enabled = e.state.status().0 != tracer::Status::Disabled;
            (
                e.spec.name,
                e.spec.mode.as_str(),
                check::check_all(e.spec.requires, &host),
                enabled,
            )
        })
        .collect();
    let mut out = std::io::stdout().lock();
    if a.json {
        let v: Vec<_> = rows
            .iter()
            .map(|(n, m, r, en)| serde_json::json!({"name": n, "mode": m, "supported": r.is_ok(), "enabled": en, "reason": r.as_ref().err()}))
            .collect();
        let _ = writeln!(out, "{}", serde_json::json!({"tracers": v}));
        return Ok(());
    }
    let _ = writeln!(
        out,
        "{:<16}  {:<11}  {:<9}  {:<8}  REASON",
        "NAME", "MODE", "SUPPORTED", "ENABLED"
    );
    for (name, mode, r, en) in rows {
        let _ = writeln!(
            out,
            "{:<16}  {:<11}  {:<9}  {:<8}  {}",
            name,
            mode,
            if r.is_ok() { "yes" } else { "no" },
            if en { "yes" } else { "no" },
            r.err().unwrap_or_default()
        );
    }
    Ok(())
}

fn containers_cmd(a: ContainersArgs) -> Result<(), AgentError> {
    let opts = RunOptions {
        config: a.config.clone(),
        listen: a.listen.clone(),
        ..Default::default()
    };
    let cfg = agent::load_config(&opts)?;
    let addr: SocketAddr = cfg
        .server
        .listen
        .parse()
        .map_err(|_| ConfigError(format!("bad address {}", cfg.server.listen)))?;
    let body = http_get(addr, "/containers")
        .ok_or_else(|| anyhow::anyhow!("no agent answers at {addr}"))?;
    let mut out = std::io::stdout().lock();
    if a.json {
        let _ = writeln!(out, "{body}");
        return Ok(());
    }
    let v: serde_json::Value =
        serde_json::from_str(&body).map_err(|e| anyhow::anyhow!("bad /containers answer: {e}"))?;
    let _ = writeln!(
        out,
        "{:<12}  {:<10}  {:<24}  {:<16}  {:<10}  {:>7}  POD",
        "ID", "RUNTIME", "NAME", "NAMESPACE", "QOS", "PID"
    );
    for c in v["containers"].as_array().into_iter().flatten() {
        let s = |k: &str| c[k].as_str().unwrap_or("").to_string();
        let id = s("id");
        let _ = writeln!(
            out,
            "{:<12}  {:<10}  {:<24}  {:<16}  {:<10}  {:>7}  {}",
            &id[..id.len().min(12)],
            s("runtime"),
            s("name"),
            s("namespace"),
            s("qos"),
            c["init_pid"].as_u64().unwrap_or(0),
            s("pod")
        );
    }
    Ok(())
}
