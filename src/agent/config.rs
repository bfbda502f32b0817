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

use crate::config::{
    check_range, closest, did_you_mean, one_line, Compat, ConfigError, ConfigResult,
};
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
    /// Metric name prefix: `bianque`, or `huatuo_bamai` under `compat = "huatuo"`.
    pub prefix: String,
    /// The file set `prefix` (the compat switch then leaves it alone).
    prefix_set: bool,
    /// `[metrics] const_labels`: labels put on every series, in the file's order.
    pub const_labels: Vec<(String, String)>,
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
            prefix_set: false,
            const_labels: Vec::new(),
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
        cfg.prefix_set = true;
    }
    if let Some(labels) = table.remove("const_labels") {
        let toml::Value::Table(labels) = labels else {
            return Err(D::Error::custom(format!(
                "metrics.const_labels: expected a table of label = \"value\", found {}",
                labels.type_str()
            )));
        };
        for (name, value) in labels {
            let toml::Value::String(value) = value else {
                return Err(D::Error::custom(format!(
                    "metrics.const_labels.{name}: expected a string, found {}",
                    value.type_str()
                )));
            };
            cfg.const_labels.push((name, value));
        }
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
                    "unknown key `metrics.{name}` ({}): expected `prefix`, `const_labels`, `collector_timeout_ms`, `collector_concurrency` or a `[metrics.<collector>]` section",
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
            let msg = did_you_mean(&one_line(&inner.to_string()));
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
        let mut cfg = cfg;
        if cfg.compat.is_huatuo() && !cfg.metrics.prefix_set {
            cfg.metrics.prefix = crate::exposition::HUATUO_PREFIX.into();
        }
        cfg.validate()?;
        Ok(cfg)
    }

    /// How series are named and labelled: the prefix, and the const labels; under
    /// `compat = "huatuo"` HuaTuo's names and `host`/`region` on every series (the file's
    /// `const_labels` of those names win). `hostname` is the agent's resolved hostname.
    pub fn naming(&self, hostname: &str) -> crate::exposition::Naming {
        let mut labels = self.metrics.const_labels.clone();
        if self.compat.is_huatuo() {
            for (name, value) in [("region", self.region.as_str()), ("host", hostname)] {
                if !labels.iter().any(|(k, _)| k == name) {
                    labels.push((name.to_string(), value.to_string()));
                }
            }
        }
        crate::exposition::Naming::new(&self.metrics.prefix, self.compat.is_huatuo(), labels)
    }

    /// Checks the framework's own keys (each section checks its own); tracer sections are
    /// checked when tracers are built.
    pub fn validate(&self) -> ConfigResult<()> {
        check_prefix(&self.metrics.prefix)?;
        check_name("region", &self.region)?;
        if let Some(hostname) = &self.hostname {
            check_name("hostname", hostname)?;
        }
        if let Some(level) = &self.log.level {
            check_log_level(level)?;
        }
        self.check_tracer_section_names()?;
        check_elasticsearch(&self.storage.elasticsearch)?;
        for (name, _) in &self.metrics.const_labels {
            check_label_name(name)?;
        }
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

impl Config {
    /// A tracer section whose name is a likely typo of a tracer's gets "did you mean"; other
    /// unknown names are left to the runner, which lists the known ones.
    fn check_tracer_section_names(&self) -> ConfigResult<()> {
        let specs = crate::tracer::registry();
        for (mode, sections) in [
            (crate::tracer::Mode::Metric, &self.metrics.collectors),
            (crate::tracer::Mode::Event, &self.events),
            (crate::tracer::Mode::Autotracing, &self.autotracing),
        ] {
            for name in sections.keys() {
                if specs.iter().any(|s| s.name == name) {
                    continue;
                }
                let same_mode = specs.iter().filter(|s| s.mode == mode).map(|s| s.name);
                if let Some(near) = closest(name, same_mode) {
                    return Err(ConfigError(format!(
                        "[{}.{name}]: unknown tracer; did you mean [{}.{near}]?",
                        mode.section(),
                        mode.section()
                    )));
                }
            }
        }
        Ok(())
    }
}

/// `region` and `hostname` go into every record: not empty, no control characters.
fn check_name(key: &str, value: &str) -> ConfigResult<()> {
    if value.trim().is_empty() {
        return Err(ConfigError(format!("{key}: must not be empty")));
    }
    if value.chars().any(char::is_control) {
        return Err(ConfigError(format!(
            "{key}: `{}` holds a control character",
            value.escape_debug()
        )));
    }
    Ok(())
}

const LOG_LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];

/// `[log] level`: a level, or comma-separated `target=level` directives (RUST_LOG syntax
/// without span filters). A target alone, as RUST_LOG allows, is refused: `"%"` or a typo of a
/// level would silently log nothing of the agent.
fn check_log_level(level: &str) -> ConfigResult<()> {
    let bad = |why: String| {
        Err(ConfigError(format!(
            "log.level: `{}` {why}; use one of {} or target=level directives",
            level.escape_debug(),
            LOG_LEVELS.join(", ")
        )))
    };
    if level.trim().is_empty() {
        return bad("is empty".into());
    }
    let is_level = |l: &str| LOG_LEVELS.contains(&l.to_ascii_lowercase().as_str());
    for directive in level.split(',').map(str::trim) {
        let ok = match directive.split_once('=') {
            None => is_level(directive),
            Some((target, l)) => {
                !target.is_empty()
                    && target
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':' || c == '-')
                    && is_level(l)
            }
        };
        if !ok {
            let near = closest(directive, LOG_LEVELS)
                .map(|l| format!(" (did you mean `{l}`?)"))
                .unwrap_or_default();
            return bad(format!(
                "has an invalid directive `{}`{near}",
                directive.escape_debug()
            ));
        }
    }
    if let Err(e) = tracing_subscriber::EnvFilter::try_new(level) {
        return bad(format!("is not a valid filter: {e}"));
    }
    Ok(())
}

/// What `[storage.elasticsearch]`'s own check does not catch (it is the shipper's): an index
/// pattern that cannot be formatted or holds control characters, address ports out of range.
fn check_elasticsearch(es: &ElasticsearchConfig) -> ConfigResult<()> {
    const S: &str = "storage.elasticsearch";
    if es.index.chars().any(char::is_control) {
        return Err(ConfigError(format!(
            "{S}.index: `{}` holds a control character",
            es.index.escape_debug()
        )));
    }
    index_pattern_formats(&es.index).map_err(|e| ConfigError(format!("{S}.index: {e}")))?;
    for a in &es.addresses {
        if let Some(port) = url_port(a) {
            let valid = port.parse::<u32>().is_ok_and(|p| (1..=65535).contains(&p));
            if !valid {
                return Err(ConfigError(format!(
                    "{S}.addresses: `{a}` has port {port}, allowed 1..=65535"
                )));
            }
        }
    }
    Ok(())
}

/// A strftime pattern that chrono parses may still fail to format (`%#z`); formatting it into
/// a String through `write!` reports that instead of panicking.
pub fn index_pattern_formats(pattern: &str) -> Result<(), String> {
    use chrono::format::{Item, StrftimeItems};
    use std::fmt::Write;
    let items: Vec<Item<'_>> = StrftimeItems::new(pattern).collect();
    if items.iter().any(|i| matches!(i, Item::Error)) {
        return Err(format!(
            "`{}` has an invalid strftime escape",
            pattern.escape_debug()
        ));
    }
    let sample = chrono::DateTime::from_timestamp(0, 0).unwrap_or_default();
    let mut out = String::new();
    if write!(out, "{}", sample.format_with_items(items.iter())).is_err() {
        return Err(format!(
            "`{}` has a strftime escape that cannot be formatted here",
            pattern.escape_debug()
        ));
    }
    Ok(())
}

/// The port text of an `http(s)://host:port/…` URL, if it names one.
fn url_port(url: &str) -> Option<&str> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split(['/', '?', '#']).next()?;
    let host_port = authority.rsplit('@').next()?;
    let after_host = match host_port.strip_prefix('[') {
        Some(v6) => v6.split_once(']')?.1,
        None => host_port.find(':').map(|i| &host_port[i..])?,
    };
    after_host.strip_prefix(':')
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

/// A Prometheus label name that is not reserved (`__…`) and not one the agent writes itself.
fn check_label_name(name: &str) -> ConfigResult<()> {
    let valid = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !name.starts_with("__");
    if !valid {
        return Err(ConfigError(format!(
            "metrics.const_labels: `{name}` is not a valid label name ([a-zA-Z_][a-zA-Z0-9_]*, not starting with __)"
        )));
    }
    Ok(())
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
    fn what_the_probe_found_is_rejected_on_one_line() {
        for (text, needle) in [
            (
                "[storage.elasticsearch]\nindex = \"x-%#z\"\n",
                "storage.elasticsearch.index",
            ),
            (
                "[storage.elasticsearch]\nindex = \"x-\\u0007-%Y\"\n",
                "control character",
            ),
            (
                "[storage.elasticsearch]\naddresses = [\"http://es:99999\"]\n",
                "1..=65535",
            ),
            (
                "[storage.elasticsearch]\naddresses = [\"http://es:0/\"]\n",
                "port 0",
            ),
            ("hostname = \"\"\n", "hostname: must not be empty"),
            ("hostname = \"a\\nb\"\n", "hostname"),
            ("region = \"\"\n", "region"),
            ("[log]\nlevel = \"\"\n", "log.level"),
            ("[log]\nlevel = \"%\"\n", "log.level"),
            ("[log]\nlevel = \"inf\"\n", "did you mean `info`"),
            ("[server]\nlisen = \"x\"\n", "did you mean `listen`"),
            ("[sever]\nlisten = \"x\"\n", "did you mean `server`"),
            (
                "[events.dropwach]\nenabled = true\n",
                "did you mean [events.dropwatch]",
            ),
        ] {
            let err = Config::parse(text).expect_err(text);
            assert!(err.0.contains(needle), "{text:?}: {err}");
            assert!(!err.0.contains('\n'), "{text:?}: {err}");
        }
        for ok in [
            "[log]\nlevel = \"debug\"\n",
            "[log]\nlevel = \"info,bianque::store=debug\"\n",
            "[storage.elasticsearch]\naddresses = [\"http://es:9200\", \"https://[::1]:9201/x\", \"http://es\"]\n",
        ] {
            Config::parse(ok).unwrap_or_else(|e| panic!("{ok:?}: {e}"));
        }
    }

    #[test]
    fn every_float_key_rejects_nan_and_infinity() {
        let keys = [
            ("autotracing.cpu_pressure", "threshold_percent"),
            ("autotracing.cpuidle", "user_threshold_percent"),
            ("autotracing.cpuidle", "user_delta_threshold_percent"),
            ("autotracing.cpuidle", "sys_threshold_percent"),
            ("autotracing.cpuidle", "sys_delta_threshold_percent"),
            ("autotracing.cpuidle", "usage_threshold_percent"),
            ("autotracing.cpuidle", "usage_delta_threshold_percent"),
            ("autotracing.cpusys", "sys_threshold_percent"),
            ("autotracing.cpusys", "sys_delta_threshold_percent"),
            ("autotracing.dload", "threshold_load"),
            ("autotracing.iotracer", "util_threshold_percent"),
            ("autotracing.iotracer", "await_threshold_ms"),
            ("autotracing.iotracer", "nvme_read_threshold_mib_per_sec"),
            ("autotracing.iotracer", "nvme_write_threshold_mib_per_sec"),
            ("autotracing.memburst", "burst_percent"),
            ("autotracing.memburst", "anon_threshold_percent"),
            ("autotracing.waitrate", "wait_threshold_percent"),
            ("autotracing.waitrate", "wait_delta_threshold_percent"),
            ("autotracing.waitrate", "throttled_threshold_percent"),
            ("autotracing.waitrate", "throttled_delta_threshold_percent"),
        ];
        let host = crate::host::HostRoot::new(std::path::PathBuf::from("/"));
        for (section, key) in keys {
            for value in ["nan", "inf", "-inf"] {
                let text = format!("[{section}]\n{key} = {value}\n");
                let cfg = Config::parse(&text).unwrap_or_else(|e| panic!("{text}: {e}"));
                let built = crate::tracer::runner::build_tracers(cfg.tracer_sections(), &[], &host);
                let err = built.err().unwrap_or_else(|| panic!("{text}: accepted"));
                assert!(err.0.contains(key), "{text}: {err}");
            }
        }
    }

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
    fn const_labels_and_the_compat_switch_make_the_naming() {
        let cfg =
            Config::parse("[metrics]\nconst_labels = { dc = \"x\", host = \"h1\" }\n").unwrap();
        assert_eq!(
            cfg.naming("me").const_labels(),
            [("dc".into(), "x".into()), ("host".into(), "h1".into())]
        );
        assert_eq!(cfg.naming("me").prefix(), "bianque");
        assert!(!cfg.naming("me").huatuo_names());
        let cfg = Config::parse("compat = \"huatuo\"\nregion = \"r1\"\n").unwrap();
        let n = cfg.naming("me");
        assert_eq!(n.prefix(), "huatuo_bamai");
        assert!(n.huatuo_names());
        assert_eq!(
            n.const_labels(),
            [("region".into(), "r1".into()), ("host".into(), "me".into())]
        );
        let cfg = Config::parse(
            "compat = \"huatuo\"\n[metrics]\nprefix = \"site\"\nconst_labels = { host = \"h\" }\n",
        )
        .unwrap();
        let n = cfg.naming("me");
        assert_eq!(n.prefix(), "site");
        assert!(n.huatuo_names());
        assert_eq!(
            n.const_labels(),
            [
                ("host".into(), "h".into()),
                ("region".into(), "default".into())
            ]
        );
        assert!(Config::parse("")
            .unwrap()
            .naming("me")
            .const_labels()
            .is_empty());
        let err = Config::parse("[metrics]\nconst_labels = { __x = \"1\" }\n").unwrap_err();
        assert!(err.0.contains("metrics.const_labels: `__x`"), "{err}");
        let err = Config::parse("[metrics]\nconst_labels = { a = 1 }\n").unwrap_err();
        assert!(
            err.0.contains("metrics.const_labels.a: expected a string"),
            "{err}"
        );
        let err = Config::parse("[metrics]\nconst_labels = \"a\"\n").unwrap_err();
        assert!(err.0.contains("metrics.const_labels"), "{err}");
    }

    #[test]
    fn bad_prefix_rejected() {
        assert!(Config::parse("[metrics]\nprefix = \"9x\"\n").is_err());
    }
}
