//! `[server]`: where the HTTP API listens and its limits.

use serde::Deserialize;

use crate::config::{check_range, ConfigError, ConfigResult};

pub const DEFAULT_LISTEN: &str = "127.0.0.1:19704";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    pub listen: String,
    /// Bearer token for `POST /tracers/{name}/start|stop`; without one, control is off.
    pub token: Option<String>,
    pub request_timeout_ms: u64,
    pub max_body_bytes: usize,
    /// Live stream (`/v1/events/watch`) clients at most; more get 429.
    pub stream_max_clients: usize,
    /// Events queued for one stream client; a client that lets more wait is dropped.
    pub stream_client_buffer: usize,
    /// Seconds between keep-alive comments on an idle stream.
    pub stream_keepalive_secs: u64,
    /// Open HTTP connections at most (kept below the fd limit); at the cap a new connection
    /// closes the oldest idle one.
    pub max_connections: usize,
    /// A request head must arrive within this long of connecting or of the previous response
    /// (slow headers and idle keep-alive connections are closed).
    pub header_read_timeout_ms: u64,
    /// A response or stream the client reads nothing of for this long is cut.
    pub write_timeout_ms: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: DEFAULT_LISTEN.into(),
            token: None,
            request_timeout_ms: 30_000,
            max_body_bytes: 1 << 20,
            stream_max_clients: 32,
            stream_client_buffer: 256,
            stream_keepalive_secs: 15,
            max_connections: 1024,
            header_read_timeout_ms: 10_000,
            write_timeout_ms: 30_000,
        }
    }
}

impl ServerConfig {
    pub fn validate(&self) -> ConfigResult<()> {
        check_range(
            "server.request_timeout_ms",
            self.request_timeout_ms,
            100,
            600_000,
        )?;
        check_range(
            "server.max_body_bytes",
            self.max_body_bytes as u64,
            1024,
            1 << 30,
        )?;
        check_range(
            "server.stream_max_clients",
            self.stream_max_clients,
            1,
            10_000,
        )?;
        check_range(
            "server.stream_client_buffer",
            self.stream_client_buffer,
            1,
            100_000,
        )?;
        check_range(
            "server.stream_keepalive_secs",
            self.stream_keepalive_secs,
            1,
            3600,
        )?;
        check_range(
            "server.max_connections",
            self.max_connections,
            16,
            1_000_000,
        )?;
        check_range(
            "server.header_read_timeout_ms",
            self.header_read_timeout_ms,
            100,
            600_000,
        )?;
        check_range(
            "server.write_timeout_ms",
            self.write_timeout_ms,
            100,
            600_000,
        )?;
        if self.listen.parse::<std::net::SocketAddr>().is_err() {
            return Err(ConfigError(format!(
                "server.listen: `{}` is not an address like 127.0.0.1:19704",
                self.listen
            )));
        }
        if let Some(token) = &self.token {
            if token.len() < 16 {
                return Err(ConfigError(
                    "server.token: must be at least 16 characters".into(),
                ));
            }
        }
        Ok(())
    }
}
