//! `bianque containers`: the containers a running agent knows, from its `/containers`.

use std::io::Write;
use std::path::PathBuf;

use bianque::agent::AgentError;
use clap::Args;

#[derive(Args)]
pub struct ContainersArgs {
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Address of the running agent (default: the config's server.listen).
    #[arg(long)]
    pub listen: Option<String>,
    #[arg(long)]
    pub json: bool,
}

/// `bianque containers`: the containers a running agent knows.
pub fn run(a: ContainersArgs) -> Result<(), AgentError> {
    let cfg = super::load_config(&a.config, &a.listen)?;
    let addr = super::agent_address(&cfg)?;
    let body = super::http_get(addr, "/containers")
        .ok_or_else(|| anyhow::anyhow!("no agent answers at {addr}"))?;
    let mut out = std::io::stdout().lock();
    if a.json {
        let _ = writeln!(out, "{}", super::text::json_safe(&body));
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
        // Names come from the runtimes and the kubelet: escaped.
        let s = |k: &str| super::text::escape(c[k].as_str().unwrap_or(""));
        let _ = writeln!(
            out,
            "{:<12}  {:<10}  {:<24}  {:<16}  {:<10}  {:>7}  {}",
            super::text::escape_prefix(c["id"].as_str().unwrap_or(""), 12),
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
