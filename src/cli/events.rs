//! `bianque events`: stored records from the local store (a table, or JSON lines), one record
//! with `events show ID` (and its flame graph), or the live stream from a running agent with
//! `--follow`.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use bianque::agent::AgentError;
use bianque::store::{self, Query, Store};
use clap::{Args, Subcommand};

use super::text::{escape, escape_cut, escape_prefix, json_safe};

#[derive(Args)]
pub struct EventsArgs {
    /// The store's directory (default: the config's store.data_dir, else /var/lib/bianque).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Only this tracer's events.
    #[arg(long)]
    pub tracer: Option<String>,
    /// Only events since: a duration back (10m, 2h), an RFC 3339 time, or Unix seconds.
    #[arg(long)]
    pub since: Option<String>,
    /// Only events before this time (same forms as --since).
    #[arg(long)]
    pub until: Option<String>,
    /// Only events of this container (id or id prefix).
    #[arg(long)]
    pub container: Option<String>,
    /// Only events whose `tracer_data` field equals a value: `drop_reason=NO_SOCKET`
    /// (a `data.` prefix is allowed; dots reach into nested objects). Repeatable.
    #[arg(long = "data", value_name = "FIELD=VALUE")]
    pub data: Vec<String>,
    /// Records at most, 1..=10000.
    #[arg(long, default_value_t = 50, allow_hyphen_values = true, value_parser = parse_limit)]
    pub limit: usize,
    /// Continue after this point: the `next` cursor printed with the previous page.
    #[arg(long)]
    pub cursor: Option<String>,
    /// One JSON record per line instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Stream new events live from a running agent (its /v1/events/watch) until interrupted.
    #[arg(long)]
    pub follow: bool,
    /// The running agent's address for --follow (default: the config's server.listen).
    #[arg(long)]
    pub listen: Option<String>,
    /// Config file: its store.data_dir, and for --follow the agent's address.
    #[arg(long)]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub action: Option<EventsAction>,
}

#[derive(Subcommand)]
pub enum EventsAction {
    /// Show one stored event (pretty JSON); `--flamegraph FILE` writes its CPU flame graph.
    Show(ShowArgs),
}

#[derive(Args)]
pub struct ShowArgs {
    /// The event's tracer_id, or a prefix of it that only one event has.
    pub id: String,
    /// The store's directory (default: the config's store.data_dir, else /var/lib/bianque).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Config file, for its store.data_dir.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Write the record's profile as an SVG flame graph to this file.
    #[arg(long, value_name = "FILE")]
    pub flamegraph: Option<PathBuf>,
}

/// `--limit`: a count in 1..=10000 (a negative one is an error naming the flag, not a flag).
fn parse_limit(v: &str) -> Result<usize, String> {
    let max = bianque::server::EVENTS_MAX_LIMIT;
    match v.parse::<i64>() {
        Ok(n) if (1..=max as i64).contains(&n) => Ok(n as usize),
        Ok(n) => Err(format!("{n} is out of range, allowed 1..={max}")),
        Err(_) => Err(format!("`{v}` is not a number")),
    }
}

/// The store directory: `--data-dir`, else the config file's `store.data_dir`, else the default.
fn data_dir(flag: &Option<PathBuf>, config: &Option<PathBuf>) -> Result<PathBuf, AgentError> {
    if let Some(dir) = flag {
        return Ok(dir.clone());
    }
    Ok(super::load_config(config, &None)?.store.data_dir)
}

fn usage(msg: String) -> AgentError {
    AgentError::Usage(msg)
}

/// `--tracer` must name a tracer this build has.
fn check_tracer(name: &Option<String>) -> Result<(), AgentError> {
    let Some(name) = name else { return Ok(()) };
    let known: Vec<&str> = bianque::tracer::registry().iter().map(|t| t.name).collect();
    if known.contains(&name.as_str()) {
        return Ok(());
    }
    Err(usage(format!(
        "--tracer: unknown tracer `{name}`; known: {}",
        known.join(", ")
    )))
}

/// `bianque events`: stored records, newest first (or the live stream with `--follow`).
pub fn run(a: EventsArgs) -> Result<(), AgentError> {
    if let Some(EventsAction::Show(s)) = a.action {
        return show_event(s);
    }
    check_tracer(&a.tracer)?;
    let now = bianque::record::now_ns();
    let time = |key: &str, v: &Option<String>| -> Result<Option<i64>, AgentError> {
        v.as_deref()
            .map(|s| {
                bianque::record::parse_time_arg(s, now).map_err(|e| usage(format!("--{key}: {e}")))
            })
            .transpose()
    };
    let mut data = Vec::new();
    for m in &a.data {
        let (k, v) = m
            .split_once('=')
            .ok_or_else(|| usage(format!("--data: `{m}` is not FIELD=VALUE")))?;
        let k = k.strip_prefix("data.").unwrap_or(k);
        if !store::valid_data_path(k) {
            return Err(usage(format!(
                "--data: `{k}` is not a field path (letters, digits, _ and dots)"
            )));
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
    let store = Store::open_read_only(&data_dir(&a.data_dir, &a.config)?)?;
    let page = store.query_page(&q).map_err(anyhow::Error::from)?;
    // A closed pipe (`| head`) ends the listing quietly.
    let _ = print_page(&mut std::io::stdout().lock(), &page, a.json);
    Ok(())
}

fn print_page(out: &mut impl Write, page: &store::Page, json: bool) -> std::io::Result<()> {
    if json {
        for r in &page.rows {
            writeln!(out, "{}", json_safe(r))?;
        }
        if let Some(next) = &page.next {
            eprintln!("next page: --cursor {}", escape(next));
        }
        return Ok(());
    }
    print_header(out)?;
    for r in &page.rows {
        let v: serde_json::Value = serde_json::from_str(r).unwrap_or_default();
        print_row(out, &v)?;
    }
    if page.rows.is_empty() {
        writeln!(out, "(no events)")?;
    }
    if let Some(next) = &page.next {
        writeln!(out, "(more: --cursor {})", escape(next))?;
    }
    Ok(())
}

fn print_header(out: &mut impl Write) -> std::io::Result<()> {
    writeln!(
        out,
        "{:<32}  {:<30}  {:<14}  {:<12}  DETAILS",
        "ID", "TIME", "TRACER", "CONTAINER"
    )
}

/// One record as a table row; every field is escaped (they come from the kernel and runtimes).
fn print_row(out: &mut impl Write, v: &serde_json::Value) -> std::io::Result<()> {
    let text = |k: &str| v.get(k).and_then(|t| t.as_str());
    let container = text("container_id").map_or("-".to_string(), |c| escape_prefix(c, 12));
    writeln!(
        out,
        "{:<32}  {:<30}  {:<14}  {:<12}  {}",
        escape_cut(text("tracer_id").unwrap_or("?"), 40),
        escape_cut(text("tracer_time").unwrap_or("?"), 40),
        escape_cut(text("tracer_name").unwrap_or("?"), 40),
        container,
        summarize(
            v.get("tracer_data").unwrap_or(&serde_json::Value::Null),
            140
        )
    )
}

/// `bianque events --follow`: prints records from the agent's live stream as they come.
fn follow(a: &EventsArgs) -> Result<(), AgentError> {
    if a.since.is_some() || a.until.is_some() || a.cursor.is_some() || !a.data.is_empty() {
        return Err(usage(
            "--follow takes --tracer and --container only (it shows new events as they come)"
                .into(),
        ));
    }
    let cfg = super::load_config(&a.config, &a.listen)?;
    let mut url = format!("http://{}/v1/events/watch", cfg.server.client_addr()?);
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
        // A closed pipe (`| head -1`) ends the stream quietly.
        if !json && print_header(&mut out).is_err() {
            return Ok(());
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
                    anyhow::bail!("the agent dropped this stream: {}", escape(&data));
                }
                let ce: serde_json::Value = serde_json::from_str(&data).unwrap_or_default();
                let record = ce.get("data").cloned().unwrap_or_default();
                let written = if json {
                    writeln!(out, "{}", json_safe(&record.to_string()))
                } else {
                    print_row(&mut out, &record)
                };
                if written.and_then(|()| out.flush()).is_err() {
                    return Ok(());
                }
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

fn show_event(a: ShowArgs) -> Result<(), AgentError> {
    let store = Store::open_read_only(&data_dir(&a.data_dir, &a.config)?)?;
    let id = match store.get(&a.id)? {
        Some(_) => a.id.clone(),
        None => {
            let ids = if a.id.is_empty() {
                Vec::new()
            } else {
                store.ids_with_prefix(&a.id, 2)?
            };
            match ids.as_slice() {
                [one] => one.clone(),
                [] => return Err(anyhow::anyhow!("no event with id {}", escape(&a.id)).into()),
                _ => {
                    return Err(usage(format!(
                        "id prefix `{}` matches more than one event: give more of it",
                        escape(&a.id)
                    )))
                }
            }
        }
    };
    let Some(row) = store.get(&id)? else {
        return Err(anyhow::anyhow!("no event with id {}", escape(&id)).into());
    };
    let v: serde_json::Value =
        serde_json::from_str(&row).map_err(|e| anyhow::anyhow!("stored record: {e}"))?;
    if let Some(path) = &a.flamegraph {
        let folded = bianque::profiler::folded_of_record(&v)
            .ok_or_else(|| anyhow::anyhow!("event {} holds no profile", escape(&id)))?;
        let svg = bianque::profiler::flamegraph_svg(&flamegraph_title(&v), &folded)?;
        std::fs::write(path, svg)
            .map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))?;
        eprintln!("flame graph written to {}", path.display());
        return Ok(());
    }
    let text = serde_json::to_string_pretty(&v).unwrap_or(row);
    let _ = writeln!(std::io::stdout().lock(), "{}", json_safe(&text));
    Ok(())
}

fn flamegraph_title(v: &serde_json::Value) -> String {
    bianque::profiler::flamegraph_title(v)
}

/// `key=value` pairs of a record's scalar fields, in the tracer's own order, escaped and cut to
/// `width`.
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
    escape_cut(&s, width)
}
