//! Include/exclude regex filters for collector keys (vmstat keys, netstat fields, devices,
//! mount points), with HuaTuo's semantics: no rule = everything; exclude only = blacklist;
//! include only = whitelist; both = included and not excluded. Patterns are unanchored (as in
//! HuaTuo): use `^…$` to match whole names. An empty string means "no rule".

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use regex::Regex;

use crate::config::{ConfigError, ConfigResult};

/// Answers remembered at most; past this the memo starts over (device names can churn).
const SEEN_MAX: usize = 4096;

#[derive(Debug, Clone, Default)]
pub struct Filter {
    include: Option<Regex>,
    exclude: Option<Regex>,
    /// Answers so far. The same keys come at every scrape, and a regex keeps a match cache for
    /// each thread that runs it (lazy DFA states, up to megabytes), which stayed resident
    /// across the scrape threads; remembered answers run each regex once per key.
    seen: Arc<Mutex<HashMap<Box<str>, bool>>>,
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
                        super::regex_error_line(&e)
                    ))
                }),
            }
        };
        Ok(Filter {
            include: compile(include_key, include)?,
            exclude: compile(exclude_key, exclude)?,
            seen: Arc::default(),
        })
    }

    /// A filter that lets everything through.
    pub fn all() -> Filter {
        Filter::default()
    }

    pub fn matches(&self, s: &str) -> bool {
        if self.include.is_none() && self.exclude.is_none() {
            return true;
        }
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(&pass) = seen.get(s) {
            return pass;
        }
        let pass = self.include.as_ref().is_none_or(|inc| inc.is_match(s))
            && !self.exclude.as_ref().is_some_and(|exc| exc.is_match(s));
        if seen.len() >= SEEN_MAX {
            seen.clear();
        }
        seen.insert(s.into(), pass);
        pass
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
    fn remembered_answers_stay_right() {
        let flt = f(Some("eth|veth"), Some("^veth"));
        for _ in 0..3 {
            assert!(flt.matches("eth0"));
            assert!(!flt.matches("veth1"));
            assert!(!flt.matches("lo"));
        }
        for i in 0..SEEN_MAX + 10 {
            assert!(flt.matches(&format!("eth{i}")));
        }
        assert!(flt.seen.lock().unwrap().len() <= SEEN_MAX);
        assert!(!flt.matches("veth1"), "after the memo started over");
    }

    #[test]
    fn bad_regex_names_the_key() {
        let err =
            Filter::new("metrics.netdev", "device_include", Some("("), "e", None).unwrap_err();
        assert!(err.0.contains("metrics.netdev.device_include"), "{err}");
    }
}
