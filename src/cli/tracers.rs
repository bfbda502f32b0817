//! `bianque tracers`: every tracer with its mode, status and reason, live from a running agent.

use std::io::Write;
use std::path::PathBuf;

use bianque::agent::AgentError;
use bianque::host::HostRoot;
use bianque::tracer::{self, check};
use clap::Args;

#[derive(Args)]
pub struct TracersArgs {
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Address of a running agent (default: the config's server.listen).
    #[arg(long)]
    pub listen: Option<String>,
    #[arg(long)]
    pub host_root: Option<PathBuf>,
    #[arg(long)]
    pub json: bool,
}

/// `bianque tracers`: the tracers of a running agent, or what would run here when none answers.
pub fn run(a: TracersArgs) -> Result<(), AgentError> {
    let cfg = super::load_config(&a.config, &a.listen)?;
    let addr = super::agent_address(&cfg)?;
    let rows: Vec<serde_json::Value> = match super::http_get(addr, "/tracers") {
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
        let json = serde_json::json!({"tracers": rows}).to_string();
        let _ = writeln!(out, "{}", super::text::json_safe(&json));
        return Ok(());
    }
    let _ = writeln!(
        out,
        "{:<16}  {:<11}  {:<8}  {:>8}  {:>8}  REASON",
        "NAME", "MODE", "STATUS", "HITS", "RESTARTS"
    );
    for r in rows {
        // The agent's answer is text from the kernel and the tracers: escaped.
        let s = |k: &str| super::text::escape(r.get(k).and_then(|v| v.as_str()).unwrap_or(""));
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
