//! TOML configuration. Every key is optional; unknown keys are errors that name the key.
//!
//! The framework owns the top-level sections. Each tracer owns its own section
//! (`[metrics.<name>]`, `[events.<name>]`, `[autotracing.<name>]`): the framework takes the keys
//! common to all tracers (`enabled`, `restart_interval_secs`) and hands the rest to the tracer,
//! which parses it with [`parse_section`] into its own `deny_unknown_fields` struct.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Deserialize;

/// A configuration problem: the message names the key and what is allowed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

pub type ConfigResult<T> = Result<T, ConfigError>;

pub const DEFAULT_LISTEN: &str = "127.0.0.1:19704";
pub const DEFAULT_DATA_DIR: &str = "/var/lib/bianque";
pub const DEFAULT_PREFIX: &str = "bianque";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Free-form region name carried by every record.
    pub region: String,
    /// Overrides the machine's hostname in records.
    pub hostname: Option<String>,
    pub log: LogConfig,
    pub server: ServerConfig,
    pub store: StoreConfig,
    /// `[storage.elasticsearch]`: shipping records to Elasticsearch/OpenSearch.
    pub storage: StorageConfig,
    #[serde(deserialize_with = "deserialize_metrics")]
    pub metrics: MetricsConfig,
    /// `[events.<tracer>]` sections, checked against the registry by [`crate::tracer::registry`].
    pub events: BTreeMap<String, toml::Table>,
    /// `[autotracing.<tracer>]` sections.
    pub autotracing: BTreeMap<String, toml::Table>,
    pub containers: crate::container::ContainersConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            region: "default".into(),
            hostname: None,
            log: LogConfig::default(),
            server: ServerConfig::default(),
            store: StoreConfig::default(),
            storage: StorageConfig::default(),
            metrics: MetricsConfig::default(),
            events: BTreeMap::new(),
            autotracing: BTreeMap::new(),
            containers: crate::container::ContainersConfig::default(),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `error`, `warn`, `info`, `debug` or `trace`, or a full `RUST_LOG`-style filter.
    /// `RUST_LOG` in the environment wins.
    pub level: Option<String>,
}

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
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    pub data_dir: PathBuf,
    /// Records older than this are deleted.
    pub retention_max_age_hours: u64,
    /// The store is trimmed, oldest first, to stay under this size.
    pub retention_max_size_bytes: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            data_dir: PathBuf::from(DEFAULT_DATA_DIR),
            retention_max_age_hours: 7 * 24,
            retention_max_size_bytes: 1 << 30,
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    pub elasticsearch: ElasticsearchConfig,
}

/// `[storage.elasticsearch]`: the shipper is on when `addresses` is not empty.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ElasticsearchConfig {
    /// Base URLs (`http://` or `https://`), tried in order with fail-over.
    pub addresses: Vec<String>,
    /// Index name; strftime escapes (`%Y.%m.%d`) take the record's time (UTC).
    pub index: String,
    pub username: Option<String>,
    pub password: Option<String>,
    /// Sent as `Authorization: ApiKey <api_key>` (the base64 `id:key` form).
    pub api_key: Option<String>,
    /// PEM file of a CA that signs the servers' certificates (besides the built-in roots).
    pub ca_file: Option<PathBuf>,
    /// Install the index template (field types) at start.
    pub install_template: bool,
    /// Records per `_bulk` request at most.
    pub batch_max_records: usize,
    /// Uncompressed bytes per `_bulk` request at most.
    pub batch_max_bytes: u64,
    /// A partial batch is sent once its oldest record waited this long.
    pub flush_interval_ms: u64,
    pub connect_timeout_ms: u64,
    pub request_timeout_ms: u64,
    /// Retry back-off: starts here, doubles, capped at `retry_max_backoff_ms`, with jitter.
    pub retry_initial_backoff_ms: u64,
    pub retry_max_backoff_ms: u64,
    /// gzip the `_bulk` body (`Content-Encoding: gzip`).
    pub gzip: bool,
}

pub const DEFAULT_ES_INDEX: &str = "bianque-%Y.%m.%d";

impl Default for ElasticsearchConfig {
    fn default() -> Self {
        ElasticsearchConfig {
            addresses: Vec::new(),
            index: DEFAULT_ES_INDEX.into(),
            username: None,
            password: None,
            api_key: None,
            ca_file: None,
            install_template: true,
            batch_max_records: 1000,
            batch_max_bytes: 5 << 20,
            flush_interval_ms: 1000,
            connect_timeout_ms: 5000,
            request_timeout_ms: 30_000,
            retry_initial_backoff_ms: 200,
            retry_max_backoff_ms: 30_000,
            gzip: true,
        }
    }
}

/// Secrets stay out of logs and debug output.
impl fmt::Debug for ElasticsearchConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hidden = |o: &Option<String>| o.as_ref().map(|_| "<hidden>");
        f.debug_struct("ElasticsearchConfig")
            .field("addresses", &self.addresses)
            .field("index", &self.index)
            .field("username", &self.username)
            .field("password", &hidden(&self.password))
            .field("api_key", &hidden(&self.api_key))
            .field("ca_file", &self.ca_file)
            .field("batch_max_records", &self.batch_max_records)
            .field("batch_max_bytes", &self.batch_max_bytes)
            .field("flush_interval_ms", &self.flush_interval_ms)
            .finish_non_exhaustive()
    }
}

impl ElasticsearchConfig {
    pub fn enabled(&self) -> bool {
        !self.addresses.is_empty()
    }

    pub fn validate(&self) -> ConfigResult<()> {
        const S: &str = "storage.elasticsearch";
        for a in &self.addresses {
            let ok = (a.starts_with("http://") || a.starts_with("https://"))
                && a.split_once("://")
                    .is_some_and(|(_, rest)| !rest.is_empty());
            if !ok {
                return Err(ConfigError(format!(
                    "{S}.addresses: `{a}` is not an http:// or https:// URL"
                )));
            }
            let authority = a
                .split_once("://")
                .map(|(_, rest)| rest.split('/').next().unwrap_or(""))
                .unwrap_or("");
            if authority.contains('@') {
                return Err(ConfigError(format!(
                    "{S}.addresses: put credentials in `username`/`password`, not in the URL"
                )));
            }
        }
        check_index_pattern(&self.index).map_err(|e| ConfigError(format!("{S}.index: {e}")))?;
        if self.password.is_some() && self.username.is_none() {
            return Err(ConfigError(format!(
                "{S}.password: set `username` too (basic auth)"
            )));
        }
        if self.api_key.is_some() && self.username.is_some() {
            return Err(ConfigError(format!(
                "{S}.api_key: use either `api_key` or `username`/`password`, not both"
            )));
        }
        check_range(
            &format!("{S}.batch_max_records"),
            self.batch_max_records,
            1,
            100_000,
        )?;
        check_range(
            &format!("{S}.batch_max_bytes"),
            self.batch_max_bytes,
            1024,
            1 << 30,
        )?;
        check_range(
            &format!("{S}.flush_interval_ms"),
            self.flush_interval_ms,
            10,
            600_000,
        )?;
        check_range(
            &format!("{S}.connect_timeout_ms"),
            self.connect_timeout_ms,
            100,
            600_000,
        )?;
        check_range(
            &format!("{S}.request_timeout_ms"),
            self.request_timeout_ms,
            100,
            600_000,
        )?;
        check_range(
            &format!("{S}.retry_initial_backoff_ms"),
            self.retry_initial_backoff_ms,
            1,
            60_000,
        )?;
        check_range(
            &format!("{S}.retry_max_backoff_ms"),
            self.retry_max_backoff_ms,
            self.retry_initial_backoff_ms,
            3_600_000,
        )?;
        Ok(())
    }
}

/// An index name pattern: valid strftime escapes and, once formatted, a valid index name.
fn check_index_pattern(pattern: &str) -> Result<(), String> {
    use chrono::format::{Item, StrftimeItems};
    if pattern.is_empty() {
        return Err("must not be empty".into());
    }
    if pattern.starts_with('%') {
        return Err(format!(
            "`{pattern}` must start with a fixed name (the index template matches on it)"
        ));
    }
    if StrftimeItems::new(pattern).any(|i| matches!(i, Item::Error)) {
        return Err(format!("`{pattern}` has an invalid strftime escape"));
    }
    let sample = chrono::DateTime::from_timestamp(0, 0)
        .unwrap_or_default()
        .format(pattern)
        .to_string();
    let bad = sample.starts_with(['-', '_', '+', '.'])
        || sample
            .chars()
            .any(|c| c.is_ascii_uppercase() || c.is_whitespace() || "\\/*?\"<>|,#:".contains(c));
    if bad {
        return Err(format!(
            "`{pattern}` gives `{sample}`, not a valid index name (lowercase, no \\/*?\"<>|,#: or spaces, not starting with -_+.)"
        ));
    }
    Ok(())
}

#[derive(Debug, Clone)]
pub struct MetricsConfig {
    /// Metric name prefix; `huatuo_bamai` makes HuaTuo dashboards work.
    pub prefix: String,
    /// A collector that takes longer than this in a scrape reports `success 0`.
    pub collector_timeout_ms: u64,
    /// Collectors running at once in a scrape; one that times out frees its slot. Default: the
    /// CPU count, within 2..=4 (they mostly wait on the kernel's procfs code; more at once only
    /// spread their buffers over more threads).
    pub collector_concurrency: u64,
    /// `[metrics.<collector>]` sections.
    pub collectors: BTreeMap<String, toml::Table>,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            prefix: DEFAULT_PREFIX.into(),
            collector_timeout_ms: 5000,
            collector_concurrency: std::thread::available_parallelism()
                .map_or(2, |n| n.get() as u64)
                .clamp(2, 4),
            collectors: BTreeMap::new(),
        }
    }
}

fn deserialize_metrics<'de, D: serde::Deserializer<'de>>(d: D) -> Result<MetricsConfig, D::Error> {
    use serde::de::Error;
    let mut table = toml::Table::deserialize(d)?;
    let mut cfg = MetricsConfig::default();
    if let Some(prefix) = table.remove("prefix") {
        cfg.prefix = match prefix {
            toml::Value::String(s) => s,
            other => {
                return Err(D::Error::custom(format!(
                    "metrics.prefix: expected a string, found {}",
                    other.type_str()
                )))
            }
        };
    }
    for (key, slot) in [
        ("collector_timeout_ms", &mut cfg.collector_timeout_ms),
        ("collector_concurrency", &mut cfg.collector_concurrency),
    ] {
        if let Some(value) = table.remove(key) {
            *slot = match value {
                toml::Value::Integer(n) if n >= 0 => n as u64,
                other => {
                    return Err(D::Error::custom(format!(
                        "metrics.{key}: expected a non-negative integer, found {other}"
                    )))
                }
            };
        }
    }
    for (name, value) in table {
        match value {
            toml::Value::Table(t) => {
                cfg.collectors.insert(name, t);
            }
            other => {
                return Err(D::Error::custom(format!(
                    "unknown key `metrics.{name}` ({}): expected `prefix`, `collector_timeout_ms`, `collector_concurrency` or a `[metrics.<collector>]` section",
                    other.type_str()
                )))
            }
        }
    }
    Ok(cfg)
}

impl Config {
    /// Reads and validates a config file. Errors name the file and the key.
    pub fn load(path: &Path) -> ConfigResult<Config> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(format!("cannot read config file {}: {e}", path.display())))?;
        Config::parse(&text)
            .map_err(|e| ConfigError(format!("config file {}: {e}", path.display())))
    }

    pub fn parse(text: &str) -> ConfigResult<Config> {
        let de = toml::Deserializer::new(text);
        let cfg: Config = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            let msg = one_line(&inner.to_string());
            // toml reports type errors with a source position but no key: name it from the text.
            let key = if path.is_empty() || path == "." {
                inner
                    .span()
                    .map(|span| span.start)
                    .or_else(|| line_offset(text, &msg))
                    .and_then(|at| key_at(text, at))
            } else {
                Some(path)
            };
            match key {
                Some(k) => ConfigError(format!("{k}: {msg}")),
                None => ConfigError(msg),
            }
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks the framework's own keys; tracer sections are checked when tracers are built.
    pub fn validate(&self) -> ConfigResult<()> {
        check_prefix(&self.metrics.prefix)?;
        check_range(
            "metrics.collector_timeout_ms",
            self.metrics.collector_timeout_ms,
            10,
            60_000,
        )?;
        check_range(
            "metrics.collector_concurrency",
            self.metrics.collector_concurrency,
            1,
            64,
        )?;
        check_range(
            "store.retention_max_age_hours",
            self.store.retention_max_age_hours,
            1,
            24 * 3650,
        )?;
        check_range(
            "store.retention_max_size_bytes",
            self.store.retention_max_size_bytes,
            1 << 20,
            1 << 44,
        )?;
        check_range(
            "server.request_timeout_ms",
            self.server.request_timeout_ms,
            100,
            600_000,
        )?;
        check_range(
            "server.max_body_bytes",
            self.server.max_body_bytes as u64,
            1024,
            1 << 30,
        )?;
        check_range(
            "server.stream_max_clients",
            self.server.stream_max_clients,
            1,
            10_000,
        )?;
        check_range(
            "server.stream_client_buffer",
            self.server.stream_client_buffer,
            1,
            100_000,
        )?;
        check_range(
            "server.stream_keepalive_secs",
            self.server.stream_keepalive_secs,
            1,
            3600,
        )?;
        if self.server.listen.parse::<std::net::SocketAddr>().is_err() {
            return Err(ConfigError(format!(
                "server.listen: `{}` is not an address like 127.0.0.1:19704",
                self.server.listen
            )));
        }
        self.containers.validate()?;
        self.storage.elasticsearch.validate()?;
        if let Some(token) = &self.server.token {
            if token.len() < 16 {
                return Err(ConfigError(
                    "server.token: must be at least 16 characters".into(),
                ));
            }
        }
        Ok(())
    }
}

fn check_prefix(prefix: &str) -> ConfigResult<()> {
    let ok = !prefix.is_empty()
        && prefix
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && prefix
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(ConfigError(format!(
            "metrics.prefix: `{prefix}` is not a valid metric name prefix ([a-zA-Z_][a-zA-Z0-9_]*)"
        )))
    }
}

/// Byte offset of the line named in a message like `... (at line 3, column 27)`.
fn line_offset(text: &str, msg: &str) -> Option<usize> {
    let line: usize = msg
        .split("at line ")
        .nth(1)?
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()?;
    let skipped: usize = text
        .split_inclusive('\n')
        .take(line.checked_sub(1)?)
        .map(str::len)
        .sum();
    Some(skipped)
}

/// The dotted key (`section.key`) whose value sits at byte `offset` of a TOML text.
fn key_at(text: &str, offset: usize) -> Option<String> {
    let mut section = String::new();
    let mut pos = 0;
    for line in text.split_inclusive('\n') {
        let trimmed = line.trim();
        if trimmed.starts_with('[') && !trimmed.starts_with("[[") {
            section = trimmed
                .trim_matches(|c| c == '[' || c == ']')
                .trim()
                .to_string();
        }
        if offset < pos + line.len() {
            let key = trimmed.split_once('=')?.0.trim().trim_matches('"');
            return Some(if section.is_empty() {
                key.to_string()
            } else {
                format!("{section}.{key}")
            });
        }
        pos += line.len();
    }
    None
}

/// `key` must lie in `min..=max`.
pub fn check_range<T: PartialOrd + fmt::Display>(
    key: &str,
    value: T,
    min: T,
    max: T,
) -> ConfigResult<()> {
    if value < min || value > max {
        Err(ConfigError(format!(
            "{key}: {value} is out of range, allowed {min}..={max}"
        )))
    } else {
        Ok(())
    }
}

/// Parses a tracer's own section into its config type; errors are prefixed with the section
/// name (`events.dropwatch: unknown field ...`).
pub fn parse_section<T: DeserializeOwned + Default>(
    section: &str,
    table: &toml::Table,
) -> ConfigResult<T> {
    if table.is_empty() {
        return Ok(T::default());
    }
    serde_path_to_error::deserialize(toml::Value::Table(table.clone())).map_err(|e| {
        let path = e.path().to_string();
        let msg = one_line(&e.into_inner().to_string());
        if path.is_empty() || path == "." {
            ConfigError(format!("{section}: {msg}"))
        } else {
            ConfigError(format!("{section}.{path}: {msg}"))
        }
    })
}

/// toml's messages span several lines (source excerpt); keep the first meaningful line plus
/// the line/column so the error fits on one line.
fn one_line(msg: &str) -> String {
    let lines: Vec<&str> = msg
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    match lines.as_slice() {
        [] => msg.to_string(),
        [only] => only.to_string(),
        [first, rest @ ..] => {
            // toml-rs: "TOML parse error at line 3, column 1" then the excerpt, then the message.
            let message = rest.iter().rev().find(|l| {
                !l.starts_with('|') && !l.chars().next().is_some_and(|c| c.is_ascii_digit())
            });
            match message {
                Some(m) => format!(
                    "{m} ({})",
                    first
                        .trim_start_matches("TOML parse error ")
                        .trim_end_matches(':')
                ),
                None => first.to_string(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_config_is_all_defaults() {
        let cfg = Config::parse("").unwrap();
        assert_eq!(cfg.server.listen, DEFAULT_LISTEN);
        assert_eq!(cfg.metrics.prefix, "bianque");
        assert_eq!(cfg.store.retention_max_age_hours, 168);
    }

    #[test]
    fn unknown_top_level_key_is_named() {
        let err = Config::parse("regoin = \"x\"\n").unwrap_err();
        assert!(err.0.contains("regoin"), "{err}");
        assert!(!err.0.contains('\n'), "{err}");
    }

    #[test]
    fn unknown_nested_key_is_named() {
        let err = Config::parse("[server]\nlisten = \"127.0.0.1:1\"\ntokn = \"x\"\n").unwrap_err();
        assert!(err.0.contains("tokn"), "{err}");
    }

    #[test]
    fn wrong_type_is_reported() {
        let err = Config::parse("[store]\nretention_max_age_hours = \"week\"\n").unwrap_err();
        assert!(
            err.0.contains("retention_max_age_hours") || err.0.contains("line 2"),
            "{err}"
        );
    }

    #[test]
    fn type_error_names_the_dotted_key() {
        let err =
            Config::parse("region = \"x\"\n[store]\nretention_max_age_hours = -1\n").unwrap_err();
        assert!(
            err.0.starts_with("store.retention_max_age_hours: "),
            "{err}"
        );
    }

    #[test]
    fn out_of_range_names_key_and_range() {
        let err = Config::parse("[store]\nretention_max_age_hours = 0\n").unwrap_err();
        assert!(err.0.contains("store.retention_max_age_hours"), "{err}");
        assert!(err.0.contains("1..="), "{err}");
    }

    #[test]
    fn metrics_sections_are_collected() {
        let cfg = Config::parse(
            "[metrics]\nprefix = \"huatuo_bamai\"\n[metrics.loadavg]\nenabled = false\n",
        )
        .unwrap();
        assert_eq!(cfg.metrics.prefix, "huatuo_bamai");
        assert!(cfg.metrics.collectors.contains_key("loadavg"));
        let err = Config::parse("[metrics]\nprefx = 3\n").unwrap_err();
        assert!(err.0.contains("metrics.prefx"), "{err}");
    }

    #[test]
    fn collector_concurrency_defaults_to_the_cpus_and_is_checked() {
        let cfg = Config::parse("").unwrap();
        assert!((2..=4).contains(&cfg.metrics.collector_concurrency));
        let cfg = Config::parse("[metrics]\ncollector_concurrency = 1\n").unwrap();
        assert_eq!(cfg.metrics.collector_concurrency, 1);
        let err = Config::parse("[metrics]\ncollector_concurrency = 0\n").unwrap_err();
        assert!(err.0.contains("metrics.collector_concurrency"), "{err}");
        assert!(err.0.contains("1..=64"), "{err}");
        let err = Config::parse("[metrics]\ncollector_concurrency = \"2\"\n").unwrap_err();
        assert!(err.0.contains("metrics.collector_concurrency"), "{err}");
    }

    #[test]
    fn elasticsearch_section() {
        let cfg = Config::parse(
            "[storage.elasticsearch]\naddresses = [\"http://127.0.0.1:9200\"]\nindex = \"huatuo_bamai\"\nusername = \"u\"\npassword = \"secret-pw\"\n",
        )
        .unwrap();
        let es = &cfg.storage.elasticsearch;
        assert!(es.enabled());
        assert_eq!(es.index, "huatuo_bamai");
        assert!(!format!("{es:?}").contains("secret-pw"), "password hidden");
        assert!(!Config::parse("").unwrap().storage.elasticsearch.enabled());
        let err = Config::parse("[storage.elasticsearch]\nadresses = []\n").unwrap_err();
        assert!(err.0.contains("adresses"), "{err}");
        let err = Config::parse("[storage.elasticsearch]\nindex = \"Bad-%Y\"\n").unwrap_err();
        assert!(err.0.contains("storage.elasticsearch.index"), "{err}");
        let err = Config::parse("[storage.elasticsearch]\nindex = \"x-%Q\"\n").unwrap_err();
        assert!(err.0.contains("strftime"), "{err}");
        let err =
            Config::parse("[storage.elasticsearch]\naddresses = [\"es:9200\"]\n").unwrap_err();
        assert!(err.0.contains("addresses"), "{err}");
        let err = Config::parse("[storage.elasticsearch]\nbatch_max_records = 0\n").unwrap_err();
        assert!(
            err.0.contains("storage.elasticsearch.batch_max_records"),
            "{err}"
        );
        let err = Config::parse("[storage]\nelastic = {}\n").unwrap_err();
        assert!(err.0.contains("elastic"), "{err}");
    }

    #[test]
    fn bad_prefix_rejected() {
        assert!(Config::parse("[metrics]\nprefix = \"9x\"\n").is_err());
    }
}
