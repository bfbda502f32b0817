//! What every config section's parser shares: the error type (a message that names the key and
//! what is allowed), range checks, and parsing a tracer's own section into its type.
//!
//! Each layer owns its sections (`[containers]` in `container`, `[store]` in `store`, a tracer's
//! `[events.<name>]` in the tracer); `agent::config` puts the file together.

pub mod compat;
pub mod filter;

pub use compat::Compat;

use std::fmt;

use serde::de::DeserializeOwned;

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

/// `key` must lie in `min..=max` (NaN never does).
pub fn check_range<T: PartialOrd + fmt::Display>(
    key: &str,
    value: T,
    min: T,
    max: T,
) -> ConfigResult<()> {
    use std::cmp::Ordering::{Equal, Greater, Less};
    // NaN compares as None with everything, so it is out.
    let inside = matches!(value.partial_cmp(&min), Some(Greater | Equal))
        && matches!(value.partial_cmp(&max), Some(Less | Equal));
    if !inside {
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
        let msg = did_you_mean(&one_line(&e.into_inner().to_string()));
        if path.is_empty() || path == "." {
            ConfigError(format!("{section}: {msg}"))
        } else {
            ConfigError(format!("{section}.{path}: {msg}"))
        }
    })
}

/// The candidate closest to `word` if it is close enough to be a likely typo.
pub fn closest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| (strsim::jaro_winkler(word, c), c))
        .filter(|(score, _)| *score >= 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}

/// serde's "unknown field `lisen`, expected one of `listen`, `token`" (or "expected `x`") with
/// "; did you mean `listen`?" appended when one of them is close.
pub fn did_you_mean(msg: &str) -> String {
    let Some(rest) = msg.split("unknown field `").nth(1) else {
        return msg.to_string();
    };
    let Some((unknown, expected)) = rest.split_once('`') else {
        return msg.to_string();
    };
    let candidates: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
    match closest(unknown, candidates) {
        Some(c) => format!("{msg}; did you mean `{c}`?"),
        None => msg.to_string(),
    }
}

/// A regex error on one line: the regex crate's message spans several (pattern, caret, error).
pub fn regex_error_line(e: &regex::Error) -> String {
    let text = e.to_string();
    let last = text.lines().map(str::trim).rfind(|l| !l.is_empty());
    last.unwrap_or("invalid regex")
        .trim_start_matches("error: ")
        .to_string()
}

/// toml's messages span several lines (source excerpt); keep the first meaningful line plus
/// the line/column so the error fits on one line.
pub fn one_line(msg: &str) -> String {
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
    fn unknown_fields_get_a_suggestion_when_one_is_close() {
        let m = did_you_mean("unknown field `lisen`, expected one of `listen`, `token`");
        assert!(m.ends_with("; did you mean `listen`?"), "{m}");
        let m = did_you_mean("unknown field `zzz`, expected one of `listen`, `token`");
        assert!(!m.contains("did you mean"), "{m}");
        assert_eq!(closest("dropwach", ["dropwatch", "oom"]), Some("dropwatch"));
        assert_eq!(did_you_mean("other message"), "other message");
    }

    #[test]
    fn regex_errors_fit_on_one_line() {
        let unclosed = String::from("(") + "abc";
        let e = regex::Regex::new(&unclosed).unwrap_err();
        let line = regex_error_line(&e);
        assert!(!line.contains('\n') && line.contains("unclosed"), "{line}");
    }

    #[test]
    fn range_errors_name_the_key_and_the_range() {
        assert_eq!(check_range("a.b", 5, 1, 10), Ok(()));
        let err = check_range("a.b", 0, 1, 10).unwrap_err();
        assert_eq!(err.0, "a.b: 0 is out of range, allowed 1..=10");
        assert!(check_range("f", f64::NAN, 0.0, 1.0).is_err());
        assert!(check_range("f", f64::INFINITY, 0.0, 1e9).is_err());
        assert!(check_range("f", 0.5, 0.0, 1.0).is_ok());
    }

    #[test]
    fn section_errors_name_the_section_and_key() {
        #[derive(Debug, Default, serde::Deserialize)]
        #[serde(deny_unknown_fields, default)]
        struct S {
            #[allow(dead_code)]
            n: u32,
        }
        let t: toml::Table = toml::from_str("m = 1").unwrap();
        let err = parse_section::<S>("events.x", &t).unwrap_err();
        assert!(err.0.starts_with("events.x.m: unknown field `m`"), "{err}");
        let t: toml::Table = toml::from_str("n = \"x\"").unwrap();
        let err = parse_section::<S>("events.x", &t).unwrap_err();
        assert!(err.0.starts_with("events.x.n: "), "{err}");
        assert!(!err.0.contains('\n'), "{err}");
    }
}
