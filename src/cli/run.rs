//! `bianque run`: the agent (see `bianque::agent`), with flags that override the config file.

use std::path::PathBuf;

use bianque::agent::{self, AgentError, RunOptions};
use clap::Args;

#[derive(Args)]
pub struct RunArgs {
    /// TOML config file (every key optional).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// HTTP listen address (default 127.0.0.1:19704).
    #[arg(long)]
    pub listen: Option<String>,
    /// Directory of the local store (default /var/lib/bianque).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Region name carried by every record.
    #[arg(long)]
    pub region: Option<String>,
    /// A directory that stands for `/` (proc/, sys/, dev/ are read under it).
    #[arg(long)]
    pub host_root: Option<PathBuf>,
    /// Disable a tracer by name (repeatable).
    #[arg(long, value_name = "NAME")]
    pub disable: Vec<String>,
}

/// Runs the agent until SIGINT/SIGTERM.
pub fn run(a: RunArgs) -> Result<(), AgentError> {
    agent::run(RunOptions {
        config: a.config,
        listen: a.listen,
        data_dir: a.data_dir,
        region: a.region,
        host_root: a.host_root,
        disable: a.disable,
    })
}
