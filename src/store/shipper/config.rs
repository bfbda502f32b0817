//! `[storage.elasticsearch]`: where records are shipped, with what credentials, in what batches.

use std::fmt;
use std::path::PathBuf;

use serde::Deserialize;

use crate::config::{check_range, Compat, ConfigError, ConfigResult};

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
    /// The top-level `compat` switch (not a key of this section): HuaTuo's document and mapping.
    #[serde(skip)]
    pub compat: Compat,
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
            compat: Compat::default(),
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
