//! The config file: TOML, every key optional; unknown keys are errors that name the key.
//!
//! The top-level sections belong to the layers that use them (`[server]`, `[store]`,
//! `[storage.elasticsearch]`, `[containers]`); each tracer owns its own section
//! (`[metrics.<name>]`, `[events.<name>]`, `[autotracing.<name>]`): the runner takes the keys
//! common to all tracers (`enabled`, `restart_interval_secs`) and hands the rest to the tracer,
//! which parses it with [`crate::config::parse_section`] into its own `deny_unknown_fields`
//! struct.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use crate::config::{check_range, one_line, Compat, ConfigError, ConfigResult};
use crate::container::ContainersConfig;
use crate::server::ServerConfig;
use crate::store::shipper::ElasticsearchConfig;
use crate::store::StoreConfig;
use crate::tracer::TracerSections;

pub const DEFAULT_PREFIX: &str = "bianque";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// `compat = "huatuo"`: HuaTuo's metric names and labels, record fields and routes.
    pub compat: Compat,
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
    pub containers: ContainersConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            compat: Compat::default(),
            region: "default".into(),
            hostname: None,
            log: LogConfig::default(),
            server: ServerConfig::default(),
            store: StoreConfig::default(),
            storage: StorageConfig::default(),
            metrics: MetricsConfig::default(),
            events: BTreeMap::new(),
            autotracing: BTreeMap::new(),
            containers: ContainersConfig::default(),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `error`, `warn`, `info`, `debug` or `trace`, or a full `RUST_LOG`-style filter.
    /// `RUST_LOG` in the environment wins.
    pub level: Option<String>,
    /// `text` (default) or `json`: one JSON object per line (timestamp, level, target,
    /// message and the event's fields at the top level), for log shippers.
    pub format: LogFormat,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
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

    /// Checks the framework's own keys (each section checks its own); tracer sections are
    /// checked when tracers are built.
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
        self.store.validate()?;
        self.server.validate()?;
        self.containers.validate()?;
        self.storage.elasticsearch.validate()?;
        Ok(())
    }

    /// The tracers' own sections, for [`crate::tracer::runner::build_tracers`].
    pub fn tracer_sections(&self) -> TracerSections<'_> {
        TracerSections {
            metrics: &self.metrics.collectors,
            events: &self.events,
            autotracing: &self.autotracing,
        }
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

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    pub elasticsearch: ElasticsearchConfig,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_config_is_all_defaults() {
        let cfg = Config::parse("").unwrap();
        assert_eq!(cfg.server.listen, crate::server::config::DEFAULT_LISTEN);
        assert_eq!(cfg.metrics.prefix, "bianque");
        assert_eq!(cfg.store.retention_max_age_hours, 168);
    }

    #[test]
    fn log_format_parses_and_rejects_unknown_values() {
        assert_eq!(Config::parse("").unwrap().log.format, LogFormat::Text);
        let cfg = Config::parse("[log]\nformat = \"json\"\n").unwrap();
        assert_eq!(cfg.log.format, LogFormat::Json);
        let err = Config::parse("[log]\nformat = \"xml\"\n").unwrap_err();
        assert!(err.0.contains("log.format"), "{err}");
        assert!(err.0.contains("xml"), "{err}");
    }

    #[test]
    fn compat_switch_parses_and_rejects_unknown_values() {
        assert_eq!(Config::parse("").unwrap().compat, Compat::Bianque);
        assert!(Config::parse("compat = \"huatuo\"\n")
            .unwrap()
            .compat
            .is_huatuo());
        let err = Config::parse("compat = \"huatou\"\n").unwrap_err();
        assert!(err.0.contains("huatou"), "{err}");
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
