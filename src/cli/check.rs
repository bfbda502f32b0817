//! `bianque check`: for this kernel and these privileges, which tracers can run and why not.
//! Exits non-zero when an enabled tracer cannot run, so a service manager or a config-management
//! tool can act on it (`--json` for the same as one JSON object).

use std::io::Write;
use std::path::PathBuf;

use bianque::agent::AgentError;
use bianque::host::HostRoot;
use bianque::tracer::{self, check};
use clap::Args;

#[derive(Args)]
pub struct CheckArgs {
    /// TOML config file (what is enabled).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// A directory that stands for `/`.
    #[arg(long)]
    pub host_root: Option<PathBuf>,
    /// One JSON object: `{"ok", "tracers": [{name, mode, enabled, supported, reason,
    /// missing_capabilities, degraded}]}`.
    #[arg(long)]
    pub json: bool,
}

struct Row {
    name: &'static str,
    mode: &'static str,
    enabled: bool,
    supported: Result<(), String>,
    missing: Vec<&'static str>,
    degraded: Vec<String>,
}

/// `bianque check`. `Ok(false)`: an enabled tracer cannot run here.
pub fn run(a: CheckArgs) -> Result<bool, AgentError> {
    let cfg = super::load_config(&a.config, &None)?;
    let host = HostRoot::new(a.host_root.clone().unwrap_or_else(|| PathBuf::from("/")));
    let entries = tracer::runner::build_tracers(cfg.tracer_sections(), &[], &host)?;
    let rows: Vec<Row> = entries
        .iter()
        .map(|e| Row {
            name: e.spec.name,
            mode: e.spec.mode.as_str(),
            enabled: e.state.status().0 != tracer::Status::Disabled,
            supported: check::check_all(e.spec.requires, &host),
            missing: check::missing_capabilities(e.spec.requires)
                .into_iter()
                .map(|c| c.name())
                .collect(),
            degraded: check::degraded(e.spec.requires),
        })
        .collect();
    let ok = rows.iter().all(|r| !r.enabled || r.supported.is_ok());
    let mut out = std::io::stdout().lock();
    if a.json {
        let v: Vec<_> = rows
            .iter()
            .map(|r| {
                serde_json::json!({
                    "name": r.name,
                    "mode": r.mode,
                    "enabled": r.enabled,
                    "supported": r.supported.is_ok(),
                    "reason": r.supported.as_ref().err(),
                    "missing_capabilities": r.missing,
                    "degraded": r.degraded,
                })
            })
            .collect();
        let _ = writeln!(out, "{}", serde_json::json!({"ok": ok, "tracers": v}));
        return Ok(ok);
    }
    // Columns as wide as their longest entry, so long tracer names keep them aligned.
    let name_w = rows.iter().map(|r| r.name.len()).max().unwrap_or(0).max(4);
    let mode_w = rows.iter().map(|r| r.mode.len()).max().unwrap_or(0).max(4);
    let _ = writeln!(
        out,
        "{:<name_w$}  {:<mode_w$}  {:<9}  {:<7}  REASON",
        "NAME", "MODE", "SUPPORTED", "ENABLED"
    );
    for r in &rows {
        let mut reason = r.supported.clone().err().unwrap_or_default();
        if r.supported.is_ok() && !r.degraded.is_empty() {
            reason = format!("degraded without {}", r.degraded.join("; "));
        }
        let _ = writeln!(
            out,
            "{:<name_w$}  {:<mode_w$}  {:<9}  {:<7}  {}",
            r.name,
            r.mode,
            if r.supported.is_ok() { "yes" } else { "no" },
            if r.enabled { "yes" } else { "no" },
            super::text::escape(&reason)
        );
    }
    if !ok {
        let _ = writeln!(
            out,
            "bianque: an enabled tracer cannot run here (see REASON; disable it or grant what it names)"
        );
    }
    Ok(ok)
}
