//! The `bianque` command's subcommands, one module each; what several share (finding and asking
//! the running agent) is here.

pub mod check;
pub mod completions;
pub mod containers;
pub mod events;
pub mod incidents;
pub mod run;
pub mod text;
pub mod tracers;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use bianque::agent::{self, Config, RunOptions};
use bianque::config::ConfigResult;

/// The config file (if any) with `--listen` applied: where a running agent listens.
fn load_config(config: &Option<PathBuf>, listen: &Option<String>) -> ConfigResult<Config> {
    agent::load_config(&RunOptions {
        config: config.clone(),
        listen: listen.clone(),
        ..Default::default()
    })
}

/// The running agent's address from the config.
fn agent_address(cfg: &Config) -> ConfigResult<SocketAddr> {
    cfg.server.client_addr()
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
