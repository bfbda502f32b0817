//! One `/metrics` scrape: every running tracer's `collect` on the blocking pool, a few at a time,
//! each under a timeout, then the framework's own families. A slow or failing collector reports
//! `success 0` and delays nobody: one that times out gives its slot to the next, and one still
//! busy from the previous scrape is not started again.
//!
//! Why a few at a time: the collectors mostly read procfs (CPU in the kernel), so on a small
//! machine running all ~40 at once is no faster, but it spreads their buffers over up to 40
//! threads and malloc arenas, which stayed resident (~5 MB) between scrapes.

use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::anyhow;
use tokio::sync::Semaphore;

use crate::exposition::{Kind, MetricSink, Naming};
use crate::server::watch::StreamStats;
use crate::store::shipper::ShipperStats;
use crate::store::Store;
use crate::tracer::{panic_message, Mode, Runner, ScrapeContext, Status, Tracer};

/// Clears a collector's busy flag when its run ends, however it ends.
struct BusyGuard(Arc<AtomicBool>);

impl Drop for BusyGuard {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

pub struct Scraper {
    naming: Arc<Naming>,
    timeout: Duration,
    slots: Arc<Semaphore>,
    busy: HashMap<&'static str, Arc<AtomicBool>>,
    shipper: Option<Arc<ShipperStats>>,
    stream: Option<Arc<StreamStats>>,
    /// When this process started, Unix seconds (boot time + start ticks; read once).
    start_time_seconds: Option<f64>,
}

struct Outcome {
    name: &'static str,
    body: String,
    seconds: f64,
    ok: bool,
}

impl Scraper {
    /// `concurrency` collectors run at once (at least one).
    pub fn new(
        naming: Arc<Naming>,
        timeout: Duration,
        concurrency: usize,
        runner: &Runner,
    ) -> Scraper {
        let busy = runner
            .entries()
            .iter()
            .map(|e| (e.spec.name, Arc::new(AtomicBool::new(false))))
            .collect();
        Scraper {
            naming,
            timeout,
            slots: Arc::new(Semaphore::new(concurrency.max(1))),
            busy,
            shipper: None,
            stream: None,
            start_time_seconds: process_start_time_seconds(),
        }
    }

    /// Exports the shipper's metrics (only when a shipper is configured).
    pub fn with_shipper(mut self, shipper: Option<Arc<ShipperStats>>) -> Scraper {
        self.shipper = shipper;
        self
    }

    /// Exports the live stream's metrics (once a client has connected).
    pub fn with_stream(mut self, stream: Arc<StreamStats>) -> Scraper {
        self.stream = Some(stream);
        self
    }

    pub async fn scrape(&self, runner: &Runner, store: &Store) -> String {
        // One context for every collector of this scrape: they share one view of the containers.
        let ctx = Arc::new(ScrapeContext::new(runner.services().clone()));
        let mut pending = Vec::new();
        for entry in runner.entries() {
            let (status, _) = entry.state.status();
            // Metric collectors run while active or failed (a failure may be transient); event
            // tracers and autotracers export counters whenever they ever ran.
            let wanted = match entry.spec.mode {
                Mode::Metric => matches!(status, Status::Active | Status::Failed),
                _ => {
                    status != Status::Disabled
                        || entry.state.restarts() > 0
                        || entry.state.hits() > 0
                }
            };
            if !wanted {
                continue;
            }
            let name = entry.spec.name;
            let Some(busy) = self.busy.get(name).cloned() else {
                continue;
            };
            if busy.swap(true, Ordering::AcqRel) {
                pending.push((name, None));
                continue;
            }
            let entry = entry.clone();
            let naming = self.naming.clone();
            let ctx = ctx.clone();
            let collect = move || {
                // Cleared however the collector ends, a panic included: the next scrape tries
                // it again.
                let _busy = BusyGuard(busy);
                let start = Instant::now();
                let mut sink = MetricSink::named(naming, entry.spec.name);
                let result =
                    catch_unwind(AssertUnwindSafe(|| entry.tracer.collect(&ctx, &mut sink)))
                        .unwrap_or_else(|p| {
                            Err(anyhow!("panicked: {}", panic_message(p.as_ref())))
                        });
                // A collector's status is its own unless it owns a program (the program's run
                // keeps that status).
                let owns_status =
                    matches!(entry.tracer.as_ref(), Tracer::Metric(c) if !c.owns_program());
                if owns_status {
                    match &result {
                        Ok(()) => {
                            if entry.state.status().0 == Status::Failed {
                                entry.state.set_status(Status::Active, "");
                            }
                        }
                        Err(e) => entry.state.set_status(Status::Failed, format!("{e:#}")),
                    }
                }
                if let Err(e) = &result {
                    tracing::warn!(collector = entry.spec.name, error = %format!("{e:#}"), "collector failed");
                    sink.clear();
                }
                // Success means the tracer works: a collector whose tracer is inactive or
                // failed (its program did not load) reports 0 even though its counters were read.
                let active = entry.state.status().0 == Status::Active;
                (
                    sink.into_string(),
                    result.is_ok() && active,
                    start.elapsed(),
                )
            };
            let slots = self.slots.clone();
            let timeout = self.timeout;
            // The timeout starts once the collector has a slot; on timeout the slot is given
            // back while the collector runs on (its busy flag keeps it out of later scrapes).
            let job = tokio::spawn(async move {
                let _slot = slots.acquire_owned().await;
                tokio::time::timeout(timeout, tokio::task::spawn_blocking(collect)).await
            });
            pending.push((name, Some(job)));
        }
        let mut outcomes = Vec::with_capacity(pending.len());
        for (name, job) in pending {
            let outcome = match job {
                None => Outcome {
                    name,
                    body: String::new(),
                    seconds: 0.0,
                    ok: false,
                },
                Some(job) => match job.await {
                    Ok(Ok(Ok((body, ok, took)))) => Outcome {
                        name,
                        body,
                        seconds: took.as_secs_f64(),
                        ok,
                    },
                    Ok(Ok(Err(_))) | Err(_) => Outcome {
                        name,
                        body: String::new(),
                        seconds: 0.0,
                        ok: false,
                    },
                    Ok(Err(_timeout)) => {
                        tracing::warn!(collector = name, "collector timed out");
                        Outcome {
                            name,
                            body: String::new(),
                            seconds: self.timeout.as_secs_f64(),
                            ok: false,
                        }
                    }
                },
            };
            outcomes.push(outcome);
        }
        let mut out =
            String::with_capacity(outcomes.iter().map(|o| o.body.len()).sum::<usize>() + 4096);
        for o in &outcomes {
            out.push_str(&o.body);
        }
        out.push_str(self.framework_metrics(runner, store, &outcomes).as_str());
        out
    }

    fn framework_metrics(&self, runner: &Runner, store: &Store, outcomes: &[Outcome]) -> String {
        let mut m = MetricSink::framework_named(self.naming.clone());
        m.family(
            "scrape_collector_duration_seconds",
            "Time each collector took in this scrape.",
            Kind::Gauge,
        );
        for o in outcomes {
            m.sample(&[("collector", o.name)], o.seconds);
        }
        m.family(
            "scrape_collector_success",
            "Whether each collector succeeded in this scrape (1) or failed or timed out (0).",
            Kind::Gauge,
        );
        for o in outcomes {
            m.sample(&[("collector", o.name)], if o.ok { 1.0 } else { 0.0 });
        }
        m.family(
            "tracer_status",
            "Tracer status: 1 for the current status, 0 for the others.",
            Kind::Gauge,
        );
        for e in runner.entries() {
            let (status, _) = e.state.status();
            for s in Status::ALL {
                m.sample(
                    &[
                        ("tracer", e.spec.name),
                        ("mode", e.spec.mode.as_str()),
                        ("status", s.as_str()),
                    ],
                    if s == status { 1.0 } else { 0.0 },
                );
            }
        }
        m.family(
            "tracer_hits_total",
            "Records each tracer produced.",
            Kind::Counter,
        );
        for e in runner.entries() {
            m.sample(&[("tracer", e.spec.name)], e.state.hits() as f64);
        }
        m.family(
            "tracer_restarts_total",
            "Times each tracer was restarted after it ended or failed.",
            Kind::Counter,
        );
        for e in runner.entries() {
            m.sample(&[("tracer", e.spec.name)], e.state.restarts() as f64);
        }
        // HuaTuo's tracing_status collector: records per tracer, and how many run.
        m.set_collector("tracing_status");
        m.family(
            "hitcount",
            "Records each tracer produced (HuaTuo's name).",
            Kind::Gauge,
        );
        for e in runner.entries() {
            m.sample(&[("tracing", e.spec.name)], e.state.hits() as f64);
        }
        let running = runner
            .entries()
            .iter()
            .filter(|e| e.state.status().0 == Status::Active)
            .count();
        m.single(
            "running",
            "Tracers running now (HuaTuo's name).",
            Kind::Gauge,
            running as f64,
        );
        m.set_framework();
        store.stats().write_metrics(&mut m);
        if let Some(sh) = &self.shipper {
            let n = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed) as f64;
            m.single(
                "shipper_shipped_total",
                "Records the Elasticsearch/OpenSearch server accepted.",
                Kind::Counter,
                n(&sh.shipped),
            );
            m.single(
                "shipper_retried_total",
                "Records sent again after a retryable error (429, 5xx, connection).",
                Kind::Counter,
                n(&sh.retried),
            );
            m.single(
                "shipper_failed_total",
                "Records the server refused for good (see GET /shipper for the reasons).",
                Kind::Counter,
                n(&sh.failed),
            );
            m.single(
                "shipper_expired_total",
                "Records that retention deleted before they could be shipped.",
                Kind::Counter,
                n(&sh.expired),
            );
            m.single(
                "shipper_malformed_answers_total",
                "Answers to _bulk with a 2xx status that were not bulk answers (no items, wrong count); the records were sent again.",
                Kind::Counter,
                n(&sh.malformed),
            );
            m.single(
                "shipper_backlog",
                "Records in the local store not shipped yet.",
                Kind::Gauge,
                n(&sh.backlog),
            );
        }
        if let Some(st) = self
            .stream
            .as_ref()
            .filter(|s| s.connected_total.load(Ordering::Relaxed) > 0)
        {
            m.single(
                "stream_clients",
                "Clients on the live stream (/v1/events/watch).",
                Kind::Gauge,
                st.clients.load(Ordering::Relaxed) as f64,
            );
            m.single(
                "stream_events_sent_total",
                "Events sent to live stream clients.",
                Kind::Counter,
                st.sent_total.load(Ordering::Relaxed) as f64,
            );
            m.single(
                "stream_dropped_clients_total",
                "Live stream clients dropped for not keeping up.",
                Kind::Counter,
                st.dropped_clients_total.load(Ordering::Relaxed) as f64,
            );
            m.single(
                "stream_rejected_total",
                "Live stream connections refused at the client cap.",
                Kind::Counter,
                st.rejected_total.load(Ordering::Relaxed) as f64,
            );
        }
        m.family("build_info", "Build of the running agent.", Kind::Gauge)
            .sample(&[("version", env!("CARGO_PKG_VERSION"))], 1.0);
        process_metrics(&mut m, self.start_time_seconds);
        m.into_string()
    }
}

/// The agent's own process (the real /proc, not the host root), as every Prometheus exporter
/// reports itself: unprefixed `process_*` names; under HuaTuo's names `<prefix>_process_*`, as
/// HuaTuo registers its process collector and its dashboards chart it. A file that cannot be
/// read leaves its families out.
fn process_metrics(m: &mut MetricSink, start_time_seconds: Option<f64>) {
    let prefixed = m.huatuo_names();
    let family = |m: &mut MetricSink, name: &str, help: &str, kind: Kind| {
        if prefixed {
            m.family(name, help, kind);
        } else {
            m.family_unprefixed(name, help, kind);
        }
    };
    use crate::procfs::{clk_tck, limits, netstat, page_size, pid_stat};
    let ticks = clk_tck() as f64;
    if let Some(st) = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|t| pid_stat::parse_process(&t).ok())
    {
        family(
            m,
            "process_cpu_seconds_total",
            "Total user and system CPU time spent in seconds.",
            Kind::Counter,
        );
        m.sample(&[], (st.utime + st.stime) as f64 / ticks);
        family(
            m,
            "process_virtual_memory_bytes",
            "Virtual memory size in bytes.",
            Kind::Gauge,
        );
        m.sample(&[], st.vsize as f64);
        family(
            m,
            "process_resident_memory_bytes",
            "Resident memory size in bytes.",
            Kind::Gauge,
        );
        m.sample(&[], (st.rss_pages * page_size()) as f64);
    }
    if let Some(t) = start_time_seconds {
        family(
            m,
            "process_start_time_seconds",
            "Start time of the process since unix epoch in seconds.",
            Kind::Gauge,
        );
        m.sample(&[], t);
    }
    if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
        family(
            m,
            "process_open_fds",
            "Number of open file descriptors.",
            Kind::Gauge,
        );
        m.sample(&[], dir.count() as f64);
    }
    if let Ok(text) = std::fs::read_to_string("/proc/self/limits") {
        let value = |l: limits::Limit| match l {
            limits::Limit::Value(n) => n as f64,
            // As Go's client reports an unlimited resource.
            limits::Limit::Unlimited => u64::MAX as f64,
        };
        if let Some((soft, _)) = limits::find(&text, "Max open files") {
            family(
                m,
                "process_max_fds",
                "Maximum number of open file descriptors.",
                Kind::Gauge,
            );
            m.sample(&[], value(soft));
        }
        if let Some((soft, _)) = limits::find(&text, "Max address space") {
            family(
                m,
                "process_virtual_memory_max_bytes",
                "Maximum amount of virtual memory available in bytes.",
                Kind::Gauge,
            );
            m.sample(&[], value(soft));
        }
    }
    if let Ok(text) = std::fs::read_to_string("/proc/self/net/netstat") {
        if let Ok(entries) = netstat::parse(&text) {
            let octets = |name: &str| {
                entries
                    .iter()
                    .find(|e| e.proto == "IpExt" && e.name == name)
                    .map(|e| e.value as f64)
            };
            for (name, field, help) in [
                (
                    "process_network_receive_bytes_total",
                    "InOctets",
                    "Number of bytes received by the process over the network.",
                ),
                (
                    "process_network_transmit_bytes_total",
                    "OutOctets",
                    "Number of bytes sent by the process over the network.",
                ),
            ] {
                if let Some(v) = octets(field) {
                    family(m, name, help, Kind::Counter);
                    m.sample(&[], v);
                }
            }
        }
    }
}

/// Boot time (`/proc/stat` btime) plus this process's start (`/proc/self/stat` starttime).
fn process_start_time_seconds() -> Option<f64> {
    let boot = crate::procfs::stat::parse(&std::fs::read_to_string("/proc/stat").ok()?)
        .ok()?
        .btime?;
    let st =
        crate::procfs::pid_stat::parse_process(&std::fs::read_to_string("/proc/self/stat").ok()?)
            .ok()?;
    Some(boot as f64 + st.starttime as f64 / crate::procfs::clk_tck() as f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tracer::runner::testing::{entry, services_and_store};
    use crate::tracer::{BuildContext, Collector, Tracer, TracerSpec};
    use std::sync::atomic::AtomicU32;

    /// Panics on its first scrape, then writes one family.
    struct PanicsOnce(AtomicU32);

    impl Collector for PanicsOnce {
        fn collect(&self, _ctx: &ScrapeContext, out: &mut MetricSink) -> anyhow::Result<()> {
            if self.0.fetch_add(1, Ordering::SeqCst) == 0 {
                panic!("first scrape panics");
            }
            out.single("up", "x", Kind::Gauge, 1.0);
            Ok(())
        }
    }

    fn never_build(_: &BuildContext, _: &toml::Table) -> crate::config::ConfigResult<Tracer> {
        Err(crate::config::ConfigError("test spec".into()))
    }

    static PANICS_SPEC: TracerSpec = TracerSpec {
        name: "panics_once",
        mode: Mode::Metric,
        description: "test",
        requires: &[],
        default_enabled: true,
        build: never_build,
    };

    /// Owns a program that cannot run here; its counters can still be read.
    struct UnsupportedProgram;

    impl Collector for UnsupportedProgram {
        fn collect(&self, _ctx: &ScrapeContext, out: &mut MetricSink) -> anyhow::Result<()> {
            out.single("lost", "x", Kind::Counter, 0.0);
            Ok(())
        }

        fn owns_program(&self) -> bool {
            true
        }

        fn run(&self, _ctx: &crate::tracer::RunContext) -> Result<(), crate::tracer::TracerError> {
            Err(crate::tracer::TracerError::Failed(anyhow!("no such hook")))
        }
    }

    static UNSUPPORTED_SPEC: TracerSpec = TracerSpec {
        name: "unsupported_program",
        mode: Mode::Metric,
        description: "test",
        requires: &[],
        default_enabled: true,
        build: never_build,
    };

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_tracer_that_is_not_active_does_not_report_success() {
        let (services, store, dir) = services_and_store("scrape-inactive");
        let e = entry(
            &UNSUPPORTED_SPEC,
            Tracer::Metric(Box::new(UnsupportedProgram)),
            Duration::from_secs(60),
        );
        let runner = Runner::new(vec![e.clone()], services);
        runner.start_all();
        runner.wait_started(Duration::from_secs(5));
        assert_eq!(e.state.status().0, Status::Failed);
        let scraper = Scraper::new(
            Arc::new(Naming::plain("bq")),
            Duration::from_secs(5),
            2,
            &runner,
        );
        let text = scraper.scrape(&runner, &store).await;
        assert!(
            text.contains("bq_scrape_collector_success{collector=\"unsupported_program\"} 0"),
            "{text}"
        );
        runner.shutdown(Duration::from_secs(1));
        store.close();
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_panicking_collector_reports_failure_and_is_tried_again() {
        let (services, store, dir) = services_and_store("scrape-panic");
        let e = entry(
            &PANICS_SPEC,
            Tracer::Metric(Box::new(PanicsOnce(AtomicU32::new(0)))),
            Duration::from_secs(1),
        );
        let runner = Runner::new(vec![e.clone()], services);
        runner.start_all();
        let scraper = Scraper::new(
            Arc::new(Naming::plain("bq")),
            Duration::from_secs(5),
            2,
            &runner,
        );
        let first = scraper.scrape(&runner, &store).await;
        assert!(
            first.contains("bq_scrape_collector_success{collector=\"panics_once\"} 0"),
            "{first}"
        );
        let (status, reason) = e.state.status();
        assert_eq!(status, Status::Failed);
        assert!(reason.contains("panicked: first scrape panics"), "{reason}");
        let second = scraper.scrape(&runner, &store).await;
        assert!(
            second.contains("bq_scrape_collector_success{collector=\"panics_once\"} 1"),
            "{second}"
        );
        assert!(second.contains("\nbq_panics_once_up 1\n"), "{second}");
        // The agent's own process, unprefixed.
        for family in [
            "process_cpu_seconds_total",
            "process_resident_memory_bytes",
            "process_virtual_memory_bytes",
            "process_open_fds",
            "process_max_fds",
            "process_start_time_seconds",
        ] {
            assert!(second.contains(&format!("\n# TYPE {family} ")), "{family}");
            let value: f64 = second
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{family} ")))
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{family} has a value"));
            // CPU time may still be below one tick.
            assert!(
                value > 0.0 || family == "process_cpu_seconds_total",
                "{family} {value}"
            );
        }
        assert_eq!(e.state.status().0, Status::Active);
        store.close();
        let _ = std::fs::remove_dir_all(dir);
    }
}
