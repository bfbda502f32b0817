//! `bianque check`: for this kernel, which tracers can run and why not.

use std::io::Write;
use std::path::PathBuf;

use bianque::agent::AgentError;
use bianque::host::HostRoot;
use bianque::tracer::{self, check};
use clap::Args;

#[derive(Args)]
pub struct CheckArgs {
    #[arg(long)]
    pub config: Option<PathBuf>,
    #[arg(long)]
    pub host_root: Option<PathBuf>,
    #[arg(long)]
    pub json: bool,
}

/// `bianque check`: which tracers this kernel can run, and why not.
pub fn run(a: CheckArgs) -> Result<(), AgentError> {
    let cfg = super::load_config(&a.config, &None)?;
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
            super::text::escape(&r.err().unwrap_or_default())
        );
    }
    Ok(())
}
