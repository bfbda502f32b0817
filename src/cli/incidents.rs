//! `bianque incidents`: incidents found in the local store (works on a stopped agent too), as a
//! table with each explanation, or one JSON object per line.

use std::io::Write;
use std::path::PathBuf;

use bianque::agent::AgentError;
use bianque::config::ConfigError;
use bianque::incidents::{self, IncidentQuery, Options};
use bianque::store::{Store, DEFAULT_DATA_DIR};
use clap::Args;

#[derive(Args)]
pub struct IncidentsArgs {
    #[arg(long, default_value = DEFAULT_DATA_DIR)]
    pub data_dir: PathBuf,
    /// Only incidents since: a duration back (10m, 2h), an RFC 3339 time, or Unix seconds.
    #[arg(long, default_value = "24h")]
    pub since: String,
    /// Only incidents of this target: a container id (or prefix), a memory cgroup path, `host`.
    #[arg(long)]
    pub container: Option<String>,
    /// Only incidents still open.
    #[arg(long)]
    pub open: bool,
    #[arg(long, default_value_t = 50)]
    pub limit: usize,
    /// One JSON incident per line instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Control characters (a comm may carry terminal escapes) printed as `\xNN`.
fn printable(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_control() {
                format!("\\x{:02x}", c as u32)
            } else {
                c.to_string()
            }
        })
        .collect()
}

pub fn run(a: IncidentsArgs) -> Result<(), AgentError> {
    let now = bianque::record::now_ns();
    let since = bianque::record::parse_time_arg(&a.since, now)
        .map_err(|e| ConfigError(format!("--since: {e}")))?;
    let store = Store::open_read_only(&a.data_dir)?;
    let q = IncidentQuery {
        since_ns: Some(since),
        target: a.container.clone(),
        open_only: a.open,
        limit: a.limit.max(1),
        ..Default::default()
    };
    let list = incidents::load(&store, &q, &Options::default(), now)?;
    let mut out = std::io::stdout().lock();
    if a.json {
        for i in &list {
            let _ = writeln!(out, "{}", serde_json::to_string(i).unwrap_or_default());
        }
        return Ok(());
    }
    if list.is_empty() {
        let _ = writeln!(out, "no incidents since {}", a.since);
        return Ok(());
    }
    let _ = writeln!(
        out,
        "{:<32}  {:<8}  {:<7}  {:<6}  {:<24}  {:<20}  {:>7}  TARGET",
        "ID", "SEVERITY", "KIND", "STATE", "START", "END", "RECORDS"
    );
    for i in &list {
        let _ = writeln!(
            out,
            "{:<32}  {:<8}  {:<7}  {:<6}  {:<24}  {:<20}  {:>7}  {}",
            i.id,
            i.severity,
            i.kind,
            if i.open { "open" } else { "closed" },
            i.start.get(..19).unwrap_or(&i.start),
            i.end.get(..19).unwrap_or(&i.end),
            i.records,
            printable(&i.target.name)
        );
        let _ = writeln!(out, "    {}", printable(&i.explanation));
    }
    Ok(())
}
