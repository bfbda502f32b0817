//! The tracer framework: the three kinds of tracer, how they register, and what they get.
//!
//! A tracer is one module that registers a [`TracerSpec`] in [`TRACERS`] (a link-time list, so
//! adding a tracer touches no central file). The spec names the tracer, its mode, what the kernel
//! must offer ([`Requirement`]), and a `build` function that parses the tracer's config section
//! into a [`Tracer`]. The [`runner`] starts what is enabled, restarts event tracers that end,
//! and keeps each tracer's [`Status`]; one tracer failing never stops the others.

pub mod check;
pub mod context;
pub mod detect;
pub mod pipeline;
pub mod program;
pub mod runner;

use std::collections::BTreeMap;
use std::time::Duration;

use crate::config::ConfigResult;
use crate::exposition::MetricSink;
use crate::host::HostRoot;

pub use check::{Capability, Requirement};
pub use context::{RunContext, ScrapeContext, Services, SharedMeasurements};
pub use pipeline::Pipeline;
pub use runner::{panic_message, Runner, TracerEntry};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Mode {
    /// Computed at scrape time.
    Metric,
    /// Runs continuously in the kernel and records events.
    Event,
    /// Watches a detector and captures context when an anomaly starts.
    Autotracing,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Metric => "metric",
            Mode::Event => "event",
            Mode::Autotracing => "autotracing",
        }
    }

    /// The config section holding this mode's tracers.
    pub fn section(self) -> &'static str {
        match self {
            Mode::Metric => "metrics",
            Mode::Event => "events",
            Mode::Autotracing => "autotracing",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Active,
    /// Cannot run on this machine (the reason says why).
    Inactive,
    /// Turned off by config or `--disable`.
    Disabled,
    /// Ran and failed; it is retried after its restart interval.
    Failed,
}

impl Status {
    pub const ALL: [Status; 4] = [
        Status::Active,
        Status::Inactive,
        Status::Disabled,
        Status::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Active => "active",
            Status::Inactive => "inactive",
            Status::Disabled => "disabled",
            Status::Failed => "failed",
        }
    }
}

/// What a tracer's `run` can end with besides success.
#[derive(Debug, thiserror::Error)]
pub enum TracerError {
    /// This machine cannot run the tracer (missing hook, no BTF…): status `inactive`, not retried.
    #[error("{0}")]
    Unsupported(String),
    /// Anything else: status `failed`, retried after the restart interval.
    #[error(transparent)]
    Failed(#[from] anyhow::Error),
}

/// A metric collector: appends its families to the sink at scrape time. A collector whose
/// numbers live in BPF maps owns its program: it keeps it loaded in `run`, on its own thread,
/// as an event tracer runs (and restarted like one).
pub trait Collector: Send + Sync + 'static {
    fn collect(&self, ctx: &ScrapeContext, out: &mut MetricSink) -> anyhow::Result<()>;

    /// True for a collector that owns a kernel program ([`Collector::run`]).
    fn owns_program(&self) -> bool {
        false
    }

    /// Loads and attaches the collector's program, then keeps it until
    /// [`RunContext::stopping`] (only called when [`Collector::owns_program`]).
    fn run(&self, _ctx: &RunContext) -> Result<(), TracerError> {
        Ok(())
    }
}

/// An always-on event tracer.
pub trait EventTracer: Send + Sync + 'static {
    /// Loads and attaches, then handles events until [`RunContext::stopping`]. Runs on its own
    /// thread; returning (with or without an error) ends this run, and the runner starts the
    /// tracer again after its restart interval.
    fn run(&self, ctx: &RunContext) -> Result<(), TracerError>;

    /// The tracer's counters for `/metrics` (read from atomics or mmapped BPF maps; cheap).
    fn collect(&self, _ctx: &ScrapeContext, _out: &mut MetricSink) -> anyhow::Result<()> {
        Ok(())
    }
}

/// What a detector found: the target it concerns and the numbers that made it fire.
#[derive(Debug, Clone)]
pub struct Anomaly {
    /// `host` or a container id: the cooldown is kept per target.
    pub target: String,
    pub container: Option<crate::record::ContainerFields>,
    /// Detector values (thresholds, deltas); merged into the record's `tracer_data`.
    pub data: serde_json::Value,
}

/// An anomaly-triggered tracer: a detector sampled every `interval`, and a capture that runs
/// when the detector fires, at most once per `cooldown` for a target.
pub trait AutoTracer: Send + Sync + 'static {
    fn interval(&self) -> Duration;
    fn cooldown(&self) -> Duration;
    /// One detector sample. Returns the anomalies that started with this sample.
    fn detect(&self, ctx: &RunContext) -> anyhow::Result<Vec<Anomaly>>;
    /// Captures context for an anomaly; the result is merged into `tracer_data`.
    fn capture(&self, anomaly: &Anomaly, ctx: &RunContext) -> anyhow::Result<serde_json::Value>;
    fn collect(&self, _ctx: &ScrapeContext, _out: &mut MetricSink) -> anyhow::Result<()> {
        Ok(())
    }
}

pub enum Tracer {
    Metric(Box<dyn Collector>),
    Event(Box<dyn EventTracer>),
    Autotracing(Box<dyn AutoTracer>),
}

impl Tracer {
    pub fn mode(&self) -> Mode {
        match self {
            Tracer::Metric(_) => Mode::Metric,
            Tracer::Event(_) => Mode::Event,
            Tracer::Autotracing(_) => Mode::Autotracing,
        }
    }

    /// Metrics of any kind of tracer.
    pub fn collect(&self, ctx: &ScrapeContext, out: &mut MetricSink) -> anyhow::Result<()> {
        match self {
            Tracer::Metric(c) => c.collect(ctx, out),
            Tracer::Event(e) => e.collect(ctx, out),
            Tracer::Autotracing(a) => a.collect(ctx, out),
        }
    }
}

/// The tracers' own config sections by mode (`[metrics.<name>]`, `[events.<name>]`,
/// `[autotracing.<name>]`), each a TOML table the tracer parses itself.
#[derive(Debug, Clone, Copy)]
pub struct TracerSections<'a> {
    pub metrics: &'a BTreeMap<String, toml::Table>,
    pub events: &'a BTreeMap<String, toml::Table>,
    pub autotracing: &'a BTreeMap<String, toml::Table>,
}

impl TracerSections<'_> {
    /// The sections of one mode.
    pub fn of(&self, mode: Mode) -> &BTreeMap<String, toml::Table> {
        match mode {
            Mode::Metric => self.metrics,
            Mode::Event => self.events,
            Mode::Autotracing => self.autotracing,
        }
    }
}

/// What `build` gets besides the tracer's own config section.
pub struct BuildContext<'a> {
    pub host: &'a HostRoot,
    /// `events.dropwatch` etc., to prefix config errors.
    pub section: &'a str,
}

/// A tracer's registration.
pub struct TracerSpec {
    pub name: &'static str,
    pub mode: Mode,
    /// One line for `bianque tracers` and `bianque check`.
    pub description: &'static str,
    pub requires: &'static [Requirement],
    pub default_enabled: bool,
    /// Parses the tracer's config section (without the common keys) and builds it. Must be
    /// cheap and must not touch the kernel: every registered tracer is built at start-up so that
    /// config errors stop the agent before anything runs.
    pub build: fn(&BuildContext, &toml::Table) -> ConfigResult<Tracer>,
}

/// Every tracer compiled into the binary.
#[linkme::distributed_slice]
pub static TRACERS: [TracerSpec];

/// Names the framework uses for its own metric families; no tracer may take them.
pub const RESERVED_NAMES: &[&str] = &["scrape", "tracer", "store", "build", "process"];

/// All registered tracers, sorted by name.
pub fn registry() -> Vec<&'static TracerSpec> {
    let mut specs: Vec<&'static TracerSpec> = TRACERS.iter().collect();
    specs.sort_by_key(|s| s.name);
    specs
}

pub fn find(name: &str) -> Option<&'static TracerSpec> {
    TRACERS.iter().find(|s| s.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_well_formed() {
        let specs = registry();
        assert!(!specs.is_empty());
        for pair in specs.windows(2) {
            assert_ne!(pair[0].name, pair[1].name, "duplicate tracer name");
        }
        for s in &specs {
            assert!(!RESERVED_NAMES.contains(&s.name), "{} is reserved", s.name);
            assert!(
                s.name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
                "{}",
                s.name
            );
        }
    }

    #[test]
    fn every_tracer_builds_with_defaults() {
        let host = HostRoot::default();
        for s in registry() {
            let section = format!("{}.{}", s.mode.section(), s.name);
            let t = (s.build)(
                &BuildContext {
                    host: &host,
                    section: &section,
                },
                &toml::Table::new(),
            )
            .unwrap_or_else(|e| panic!("{}: {e}", s.name));
            assert_eq!(t.mode(), s.mode, "{}", s.name);
        }
    }
}
