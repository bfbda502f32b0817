//! Include/exclude regex filters for collector keys (vmstat keys, netstat fields, devices,
//! mount points), with HuaTuo's semantics: no rule = everything; exclude only = blacklist;
//! include only = whitelist; both = included and not excluded. Patterns are unanchored (as in
//! HuaTuo): use `^…$` to match whole names. An empty string means "no rule".

use regex::Regex;

use crate::config::{ConfigError, ConfigResult};

#[derive(Debug, Clone, Default)]
pub struct Filter {
    include: Option<Regex>,
    exclude: Option<Regex>,
}

impl Filter {
    /// Compiles the two patterns; errors name `<section>.<key>`.
    pub fn new(
        section: &str,
        include_key: &str,
        include: Option<&str>,
        exclude_key: &str,
        exclude: Option<&str>,
    ) -> ConfigResult<Filter> {
        let compile = |key: &str, pat: Option<&str>| -> ConfigResult<Option<Regex>> {
            match pat {
                None | Some("") => Ok(None),
                Some(p) => Regex::new(p).map(Some).map_err(|e| {
                    ConfigError(format!(
                        "{section}.{key}: `{p}` is not a valid regex: {}",
                        e.to_string().lines().last().unwrap_or("")
                    ))
                }),
            }
        };
        Ok(Filter {
            include: compile(include_key, include)?,
            exclude: compile(exclude_key, exclude)?,
        })
    }

    /// A filter that lets everything through.
    pub fn all() -> Filter {
        Filter::default()
    }

    pub fn matches(&self, s: &str) -> bool {
        if let Some(inc) = &self.include {
            if !inc.is_match(s) {
                return false;
            }
        }
        if let Some(exc) = &self.exclude {
            if exc.is_match(s) {
                return false;
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(inc: Option<&str>, exc: Option<&str>) -> Filter {
        Filter::new("metrics.x", "include", inc, "exclude", exc).unwrap()
    }

    #[test]
    fn four_cases() {
        let keys = ["eth0", "lo", "veth12", "docker0"];
        let pass = |flt: &Filter| -> Vec<&str> {
            keys.iter().copied().filter(|k| flt.matches(k)).collect()
        };
        assert_eq!(pass(&f(None, None)), keys);
        assert_eq!(pass(&f(Some(""), Some(""))), keys);
        assert_eq!(pass(&f(None, Some("^(lo|veth.*)$"))), ["eth0", "docker0"]);
        assert_eq!(pass(&f(Some("eth|veth"), None)), ["eth0", "veth12"]);
        assert_eq!(pass(&f(Some("eth"), Some("^veth"))), ["eth0"]);
    }

    #[test]
    fn bad_regex_names_the_key() {
        let err =
            Filter::new("metrics.netdev", "device_include", Some("("), "e", None).unwrap_err();
        assert!(err.0.contains("metrics.netdev.device_include"), "{err}");
    }
}
