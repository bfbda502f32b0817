//! Metric collectors and the Prometheus text writer they share.
//!
//! A collector appends families to a [`MetricSink`], which writes the text exposition format
//! (version 0.0.4) straight into a reusable buffer: a scrape allocates nothing per series.
//! Names are `<prefix>_<collector>_<metric>`; the sink adds the `<prefix>_<collector>_` part.

pub mod loadavg;
pub mod uptime;

use std::fmt::Write as _;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
        }
    }
}

/// Writes one collector's metric families in Prometheus text format.
pub struct MetricSink {
    buf: String,
    /// `<prefix>_<collector>_`
    name_prefix: String,
    /// Base of a family being written, so samples need not repeat it.
    family: String,
}

impl MetricSink {
    /// `prefix` is the configured metric prefix, `collector` the tracer's name.
    pub fn new(prefix: &str, collector: &str) -> MetricSink {
        MetricSink {
            buf: String::with_capacity(1024),
            name_prefix: format!("{prefix}_{collector}_"),
            family: String::new(),
        }
    }

    /// A sink for the framework's own families (`<prefix>_<name>`).
    pub fn framework(prefix: &str) -> MetricSink {
        MetricSink {
            buf: String::with_capacity(1024),
            name_prefix: format!("{prefix}_"),
            family: String::new(),
        }
    }

    /// Starts a family: writes HELP and TYPE. Follow with [`MetricSink::sample`] calls.
    pub fn family(&mut self, name: &str, help: &str, kind: Kind) -> &mut Self {
        self.family.clear();
        self.family.push_str(&self.name_prefix);
        self.family.push_str(name);
        let _ = write!(self.buf, "# HELP {} ", self.family);
        escape_help(&mut self.buf, help);
        let _ = writeln!(self.buf, "\n# TYPE {} {}", self.family, kind.as_str());
        self
    }

    /// One sample of the current family.
    pub fn sample(&mut self, labels: &[(&str, &str)], value: f64) -> &mut Self {
        self.buf.push_str(&self.family);
        if !labels.is_empty() {
            self.buf.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.buf.push(',');
                }
                self.buf.push_str(k);
                self.buf.push_str("=\"");
                escape_label(&mut self.buf, v);
                self.buf.push('"');
            }
            self.buf.push('}');
        }
        self.buf.push(' ');
        write_value(&mut self.buf, value);
        self.buf.push('\n');
        self
    }

    /// A family with one unlabelled sample.
    pub fn single(&mut self, name: &str, help: &str, kind: Kind, value: f64) {
        self.family(name, help, kind).sample(&[], value);
    }

    pub fn as_str(&self) -> &str {
        &self.buf
    }

    /// Drops what was written (a collector that failed half-way must not emit half a family).
    pub fn clear(&mut self) {
        self.buf.clear();
    }

    pub fn into_string(self) -> String {
        self.buf
    }
}

fn write_value(buf: &mut String, v: f64) {
    if v.is_nan() {
        buf.push_str("NaN");
    } else if v.is_infinite() {
        buf.push_str(if v > 0.0 { "+Inf" } else { "-Inf" });
    } else if v.fract() == 0.0 && v.abs() < 1e15 {
        let _ = write!(buf, "{}", v as i64);
    } else {
        let _ = write!(buf, "{v}");
    }
}

fn escape_label(buf: &mut String, v: &str) {
    for c in v.chars() {
        match c {
            '\\' => buf.push_str("\\\\"),
            '"' => buf.push_str("\\\""),
            '\n' => buf.push_str("\\n"),
            c => buf.push(c),
        }
    }
}

fn escape_help(buf: &mut String, v: &str) {
    for c in v.chars() {
        match c {
            '\\' => buf.push_str("\\\\"),
            '\n' => buf.push_str("\\n"),
            c => buf.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_text_format() {
        let mut s = MetricSink::new("bianque", "dropwatch");
        s.family("events_total", "Packet drops by reason.", Kind::Counter)
            .sample(&[("reason", "NO_SOCKET")], 3.0)
            .sample(&[("reason", "a\"b\\c\nd")], 1.5);
        s.single("up", "x", Kind::Gauge, f64::INFINITY);
        assert_eq!(
            s.as_str(),
            "# HELP bianque_dropwatch_events_total Packet drops by reason.\n\
             # TYPE bianque_dropwatch_events_total counter\n\
             bianque_dropwatch_events_total{reason=\"NO_SOCKET\"} 3\n\
             bianque_dropwatch_events_total{reason=\"a\\\"b\\\\c\\nd\"} 1.5\n\
             # HELP bianque_dropwatch_up x\n\
             # TYPE bianque_dropwatch_up gauge\n\
             bianque_dropwatch_up +Inf\n"
        );
    }

    #[test]
    fn large_and_fractional_values() {
        let mut buf = String::new();
        write_value(&mut buf, 1e20);
        buf.push(' ');
        write_value(&mut buf, 0.25);
        buf.push(' ');
        write_value(&mut buf, -2.0);
        assert_eq!(buf, "100000000000000000000 0.25 -2");
    }
}
