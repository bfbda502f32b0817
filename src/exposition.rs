//! The Prometheus text exposition format (version 0.0.4), written straight into a reusable
//! buffer: a scrape allocates nothing per series. Every tracer that exports metrics writes
//! through a [`MetricSink`]; names are `<prefix>_<collector>_<metric>`, and the sink adds the
//! `<prefix>_<collector>_` part.

use std::fmt::Write as _;
use std::sync::Arc;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    /// Written with [`MetricSink::histogram`]: `_bucket{le}`, `_sum`, `_count`.
    Histogram,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// How every series of the agent is named and labelled: the prefix, HuaTuo's names, and the
/// const labels (`[metrics] const_labels`; `host` and `region` under `compat = "huatuo"`)
/// written into every series. Built once; each sink of a scrape shares it.
#[derive(Debug, Clone)]
pub struct Naming {
    prefix: String,
    huatuo: bool,
    /// The const labels as written into a series (`name="value"`, comma separated, escaped
    /// once here so a scrape does not escape them per series).
    const_text: String,
    /// The const labels' names, to leave one out where a series sets that label itself.
    const_labels: Vec<(String, String)>,
}

impl Naming {
    /// `huatuo`: emit HuaTuo's exact series names (see [`MetricSink::huatuo_names`]); also
    /// true whenever the prefix is HuaTuo's. `const_labels` are (name, value), names valid.
    pub fn new(prefix: &str, huatuo: bool, const_labels: Vec<(String, String)>) -> Naming {
        let mut const_text = String::new();
        for (i, (k, v)) in const_labels.iter().enumerate() {
            if i > 0 {
                const_text.push(',');
            }
            const_text.push_str(k);
            const_text.push_str("=\"");
            escape_label(&mut const_text, v);
            const_text.push('"');
        }
        Naming {
            prefix: prefix.to_string(),
            huatuo: huatuo || prefix == HUATUO_PREFIX,
            const_text,
            const_labels,
        }
    }

    /// Just a prefix: no const labels, HuaTuo's names only under its prefix.
    pub fn plain(prefix: &str) -> Naming {
        Naming::new(prefix, false, Vec::new())
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn huatuo_names(&self) -> bool {
        self.huatuo
    }

    pub fn const_labels(&self) -> &[(String, String)] {
        &self.const_labels
    }
}

/// Writes one collector's metric families in Prometheus text format.
pub struct MetricSink {
    buf: String,
    /// `<prefix>_<collector>_`
    name_prefix: String,
    /// Base of a family being written, so samples need not repeat it.
    family: String,
    naming: Arc<Naming>,
    /// Length of `<prefix>_` at the start of `name_prefix`.
    prefix_len: usize,
}

/// The prefix that asks for HuaTuo's exact series names.
pub const HUATUO_PREFIX: &str = "huatuo_bamai";

impl MetricSink {
    /// `prefix` is the configured metric prefix, `collector` the tracer's name.
    pub fn new(prefix: &str, collector: &str) -> MetricSink {
        MetricSink::named(Arc::new(Naming::plain(prefix)), collector)
    }

    /// A sink for `collector` under the agent's naming.
    pub fn named(naming: Arc<Naming>, collector: &str) -> MetricSink {
        let prefix = naming.prefix.as_str();
        MetricSink {
            buf: String::with_capacity(1024),
            name_prefix: format!("{prefix}_{collector}_"),
            family: String::new(),
            prefix_len: prefix.len() + 1,
            naming,
        }
    }

    /// A sink for the framework's own families (`<prefix>_<name>`).
    pub fn framework(prefix: &str) -> MetricSink {
        MetricSink::framework_named(Arc::new(Naming::plain(prefix)))
    }

    /// A sink for the framework's own families under the agent's naming.
    pub fn framework_named(naming: Arc<Naming>) -> MetricSink {
        MetricSink {
            buf: String::with_capacity(1024),
            name_prefix: format!("{}_", naming.prefix),
            family: String::new(),
            prefix_len: naming.prefix.len() + 1,
            naming,
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

    /// True when the configured prefix is HuaTuo's (`huatuo_bamai`). A few HuaTuo series break
    /// Prometheus conventions (camelCase netstat names, counters typed as gauges without
    /// `_total`); collectors emit those exactly as HuaTuo does under its prefix, so existing
    /// dashboards work, and lint-clean names under any other prefix.
    pub fn huatuo_names(&self) -> bool {
        self.naming.huatuo
    }

    /// A family named `name` exactly (no prefix, no collector): the standard process metrics
    /// every exporter writes unprefixed.
    pub fn family_unprefixed(&mut self, name: &str, help: &str, kind: Kind) -> &mut Self {
        self.family.clear();
        self.family.push_str(name);
        let _ = write!(self.buf, "# HELP {} ", self.family);
        escape_help(&mut self.buf, help);
        let _ = writeln!(self.buf, "\n# TYPE {} {}", self.family, kind.as_str());
        self
    }

    /// Families from here on are named `<prefix>_<collector>_…`: for a tracer that also
    /// exports a HuaTuo collector's families under that collector's name (HuaTuo's
    /// `memory_free` from `memory_reclaim`).
    pub fn set_collector(&mut self, collector: &str) {
        self.name_prefix.truncate(self.prefix_len);
        self.name_prefix.push_str(collector);
        self.name_prefix.push('_');
    }

    /// Back to the framework's own names (`<prefix>_…`) after [`MetricSink::set_collector`].
    pub fn set_framework(&mut self) {
        self.name_prefix.truncate(self.prefix_len);
    }

    /// One sample of the current family.
    pub fn sample(&mut self, labels: &[(&str, &str)], value: f64) -> &mut Self {
        self.series("", labels, &[], value);
        self
    }

    /// One sample with two label sets (e.g. container labels, then the family's own).
    pub fn sample2(
        &mut self,
        labels: &[(&str, &str)],
        more: &[(&str, &str)],
        value: f64,
    ) -> &mut Self {
        self.series("", labels, more, value);
        self
    }

    /// One histogram of the current family (started with [`Kind::Histogram`]). `buckets` are
    /// `(upper bound, cumulative count)` in increasing order, without `+Inf`; `count` is the
    /// `+Inf` bucket.
    pub fn histogram(
        &mut self,
        labels: &[(&str, &str)],
        more: &[(&str, &str)],
        buckets: &[(f64, u64)],
        sum: f64,
        count: u64,
    ) -> &mut Self {
        let mut le = String::with_capacity(16);
        for &(bound, n) in buckets {
            le.clear();
            write_value(&mut le, bound);
            let mut all: Vec<(&str, &str)> = Vec::with_capacity(more.len() + 1);
            all.extend_from_slice(more);
            all.push(("le", le.as_str()));
            self.series("_bucket", labels, &all, n as f64);
        }
        let mut all: Vec<(&str, &str)> = Vec::with_capacity(more.len() + 1);
        all.extend_from_slice(more);
        all.push(("le", "+Inf"));
        self.series("_bucket", labels, &all, count as f64);
        self.series("_sum", labels, more, sum);
        self.series("_count", labels, more, count as f64);
        self
    }

    fn series(&mut self, suffix: &str, labels: &[(&str, &str)], more: &[(&str, &str)], value: f64) {
        self.buf.push_str(&self.family);
        self.buf.push_str(suffix);
        let naming = &*self.naming;
        let has_const = !naming.const_labels.is_empty();
        if has_const || !labels.is_empty() || !more.is_empty() {
            self.buf.push('{');
            let mut first = true;
            if has_const {
                // A label the series sets itself wins over a const label of that name.
                let own = |name: &str| labels.iter().chain(more.iter()).any(|(k, _)| *k == name);
                if naming.const_labels.iter().any(|(k, _)| own(k)) {
                    for (k, v) in naming.const_labels.iter().filter(|(k, _)| !own(k)) {
                        write_label(&mut self.buf, &mut first, k, v);
                    }
                } else {
                    self.buf.push_str(&naming.const_text);
                    first = false;
                }
            }
            for (k, v) in labels.iter().chain(more.iter()) {
                write_label(&mut self.buf, &mut first, k, v);
            }
            self.buf.push('}');
        }
        self.buf.push(' ');
        write_value(&mut self.buf, value);
        self.buf.push('\n');
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

/// Rewrites name tokens that `promtool check metrics` reads as abbreviated units (`sec`,
/// as in the kernel's `nr_sec_page_table_pages`) into words.
pub fn expand_unit_tokens(name: &mut String) {
    if !name.split('_').any(|t| t == "sec") {
        return;
    }
    let fixed: Vec<&str> = name
        .split('_')
        .map(|t| if t == "sec" { "secondary" } else { t })
        .collect();
    *name = fixed.join("_");
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

fn write_label(buf: &mut String, first: &mut bool, k: &str, v: &str) {
    if !*first {
        buf.push(',');
    }
    *first = false;
    buf.push_str(k);
    buf.push_str("=\"");
    escape_label(buf, v);
    buf.push('"');
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
    fn writes_histograms() {
        let mut s = MetricSink::new("bianque", "runqlat");
        s.family("latency_seconds", "Run-queue latency.", Kind::Histogram)
            .histogram(
                &[("a", "1")],
                &[("b", "2")],
                &[(0.001, 3), (0.01, 5)],
                0.02,
                6,
            );
        assert_eq!(
            s.as_str(),
            "# HELP bianque_runqlat_latency_seconds Run-queue latency.\n\
             # TYPE bianque_runqlat_latency_seconds histogram\n\
             bianque_runqlat_latency_seconds_bucket{a=\"1\",b=\"2\",le=\"0.001\"} 3\n\
             bianque_runqlat_latency_seconds_bucket{a=\"1\",b=\"2\",le=\"0.01\"} 5\n\
             bianque_runqlat_latency_seconds_bucket{a=\"1\",b=\"2\",le=\"+Inf\"} 6\n\
             bianque_runqlat_latency_seconds_sum{a=\"1\",b=\"2\"} 0.02\n\
             bianque_runqlat_latency_seconds_count{a=\"1\",b=\"2\"} 6\n"
        );
        assert!(!s.huatuo_names());
        assert!(MetricSink::new("huatuo_bamai", "x").huatuo_names());
        let mut h = MetricSink::new("huatuo_bamai", "memory_reclaim");
        h.set_collector("memory_free");
        h.single("allocpages_stall", "x", Kind::Gauge, 1.0);
        assert!(h
            .as_str()
            .contains("\nhuatuo_bamai_memory_free_allocpages_stall 1\n"));
    }

    #[test]
    fn const_labels_go_on_every_series_unless_the_series_sets_them() {
        let naming = Naming::new(
            "bq",
            false,
            vec![
                ("region".into(), "r\"1".into()),
                ("host".into(), "h".into()),
            ],
        );
        let naming = Arc::new(naming);
        let mut s = MetricSink::named(naming.clone(), "c");
        s.family("x", "x", Kind::Gauge)
            .sample(&[], 1.0)
            .sample(&[("a", "1")], 2.0)
            .sample(&[("host", "other")], 3.0);
        s.family("h", "h", Kind::Histogram)
            .histogram(&[], &[], &[(1.0, 1)], 1.0, 1);
        s.family_unprefixed("process_open_fds", "fds", Kind::Gauge)
            .sample(&[], 4.0);
        let text = s.as_str();
        for line in [
            "\nbq_c_x{region=\"r\\\"1\",host=\"h\"} 1\n",
            "\nbq_c_x{region=\"r\\\"1\",host=\"h\",a=\"1\"} 2\n",
            "\nbq_c_x{region=\"r\\\"1\",host=\"other\"} 3\n",
            "\nbq_c_h_bucket{region=\"r\\\"1\",host=\"h\",le=\"1\"} 1\n",
            "\nbq_c_h_count{region=\"r\\\"1\",host=\"h\"} 1\n",
            "\nprocess_open_fds{region=\"r\\\"1\",host=\"h\"} 4\n",
        ] {
            assert!(text.contains(line), "{line} in\n{text}");
        }
        assert!(!s.huatuo_names());
        assert!(MetricSink::named(Arc::new(Naming::new("x", true, vec![])), "c").huatuo_names());
        let mut f = MetricSink::framework_named(naming);
        f.single("up", "x", Kind::Gauge, 1.0);
        assert!(f
            .as_str()
            .contains("\nbq_up{region=\"r\\\"1\",host=\"h\"} 1\n"));
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
