//! `[server]`: where the HTTP API listens and its limits.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs};

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
    /// The address to bind: `IP:PORT`, `[IPv6]:PORT`, `:PORT` (every interface, as Go programs
    /// and HuaTuo write it) or `HOST:PORT` (resolved now; the first address wins).
    pub fn listen_addr(&self) -> ConfigResult<SocketAddr> {
        parse_listen(&self.listen)
    }

    /// Where a client on this machine reaches the agent: the listen address, with an
    /// every-interface address replaced by loopback.
    pub fn client_addr(&self) -> ConfigResult<SocketAddr> {
        let mut addr = self.listen_addr()?;
        if addr.ip().is_unspecified() {
            addr.set_ip(match addr.ip() {
                IpAddr::V4(_) => Ipv4Addr::LOCALHOST.into(),
                IpAddr::V6(_) => Ipv6Addr::LOCALHOST.into(),
            });
        }
        Ok(addr)
    }

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
        self.listen_addr()?;
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

/// See [`ServerConfig::listen_addr`].
pub fn parse_listen(listen: &str) -> ConfigResult<SocketAddr> {
    let bad = |why: &str| {
        ConfigError(format!(
            "server.listen: `{listen}` {why} (expected e.g. 127.0.0.1:19704, :19704, [::1]:19704 or localhost:19704)"
        ))
    };
    if let Ok(a) = listen.parse::<SocketAddr>() {
        return Ok(a);
    }
    if let Some(port) = listen.strip_prefix(':') {
        let port: u16 = port.parse().map_err(|_| bad("has no valid port"))?;
        return Ok(SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), port));
    }
    let (host, port) = listen.rsplit_once(':').ok_or_else(|| bad("has no port"))?;
    let port: u16 = port.parse().map_err(|_| bad("has no valid port"))?;
    if host.is_empty() || host.contains(':') {
        return Err(bad("is not an address"));
    }
    let mut addrs = (host, port)
        .to_socket_addrs()
        .map_err(|e| bad(&format!("does not resolve ({e})")))?;
    addrs.next().ok_or_else(|| bad("resolves to no address"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_forms() {
        assert_eq!(
            parse_listen("127.0.0.1:19704").unwrap(),
            "127.0.0.1:19704".parse().unwrap()
        );
        assert_eq!(
            parse_listen("[::1]:80").unwrap(),
            "[::1]:80".parse().unwrap()
        );
        assert_eq!(
            parse_listen(":19704").unwrap(),
            "0.0.0.0:19704".parse().unwrap()
        );
        assert!(parse_listen("localhost:19704").unwrap().ip().is_loopback());
        assert_eq!(parse_listen("localhost:19704").unwrap().port(), 19704);
        for bad in [
            "",
            ":",
            ":x",
            "19704",
            "localhost",
            "localhost:99999",
            "no-such-host.invalid:1",
            "a:b:c",
        ] {
            let err = parse_listen(bad).unwrap_err();
            assert!(err.0.starts_with("server.listen: "), "{bad}: {err}");
            assert!(!err.0.contains('\n'), "{err}");
        }
    }

    #[test]
    fn client_addr_turns_every_interface_into_loopback() {
        let cfg = ServerConfig {
            listen: ":19704".into(),
            ..Default::default()
        };
        assert_eq!(
            cfg.client_addr().unwrap(),
            "127.0.0.1:19704".parse().unwrap()
        );
        let cfg = ServerConfig {
            listen: "[::]:5".into(),
            ..Default::default()
        };
        assert_eq!(cfg.client_addr().unwrap(), "[::1]:5".parse().unwrap());
    }
}
