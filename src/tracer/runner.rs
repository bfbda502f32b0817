//! Builds every registered tracer from the config, starts the enabled ones, restarts event
//! tracers that end, and keeps each tracer's status, hits and restarts.

use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::config::{check_range, ConfigError, ConfigResult};
use crate::host::HostRoot;
use crate::tracer::{
    check, registry, AutoTracer, BuildContext, Mode, RunContext, Services, Status, Tracer,
    TracerError, TracerSections, TracerSpec,
};

const DEFAULT_RESTART_INTERVAL: Duration = Duration::from_secs(10);

/// A tracer's live state, shared by its thread, the HTTP server and `/metrics`.
#[derive(Debug)]
pub struct TracerState {
    status: Mutex<(Status, String)>,
    hits: AtomicU64,
    restarts: AtomicU64,
    stop: AtomicBool,
    /// Wakes the tracer's [`RunContext::sleep`] when it is told to stop (no polling).
    wake: (Mutex<()>, Condvar),
    /// Readable once the tracer is told to stop: ring-buffer readers sleep in epoll on it.
    stop_event: Option<StopEvent>,
}

/// An eventfd that turns readable on [`StopEvent::signal`] until [`StopEvent::clear`].
#[derive(Debug)]
struct StopEvent(std::os::fd::OwnedFd);

impl StopEvent {
    fn new() -> Option<StopEvent> {
        use std::os::fd::FromRawFd;
        // SAFETY: eventfd has no memory preconditions; a valid fd is owned below.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            tracing::warn!(error = %std::io::Error::last_os_error(), "no eventfd: ring-buffer readers poll");
            return None;
        }
        // SAFETY: fd is a fresh eventfd that nothing else owns.
        Some(StopEvent(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) }))
    }

    fn signal(&self) {
        use std::os::fd::AsRawFd;
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a valid u64 to an eventfd we own. A full counter
        // (EAGAIN) is already readable.
        let _ = unsafe { libc::write(self.0.as_raw_fd(), (&one as *const u64).cast(), 8) };
    }

    fn clear(&self) {
        use std::os::fd::AsRawFd;
        let mut n: u64 = 0;
        // SAFETY: reads 8 bytes into a valid u64 from a non-blocking eventfd we own; EAGAIN
        // means it was clear.
        let _ = unsafe { libc::read(self.0.as_raw_fd(), (&mut n as *mut u64).cast(), 8) };
    }
}

impl TracerState {
    fn new(status: Status, reason: String) -> TracerState {
        TracerState {
            status: Mutex::new((status, reason)),
            hits: AtomicU64::new(0),
            restarts: AtomicU64::new(0),
            stop: AtomicBool::new(false),
            wake: (Mutex::new(()), Condvar::new()),
            stop_event: StopEvent::new(),
        }
    }

    /// Readable once the tracer is told to stop (None: no eventfd, poll instead).
    pub(crate) fn stop_fd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        use std::os::fd::AsFd;
        self.stop_event.as_ref().map(|e| e.0.as_fd())
    }

    /// Wakes a sleeping tracer thread so that it sees a stop request at once.
    pub(crate) fn wake(&self) {
        // Taking the lock orders this after a sleeper's check of the stop flags.
        let _g = self.wake.0.lock().unwrap_or_else(|e| e.into_inner());
        self.wake.1.notify_all();
        if let Some(e) = &self.stop_event {
            e.signal();
        }
    }

    /// Waits up to `d` or until [`TracerState::wake`]; `check` (under the lock) ends the wait
    /// early when true.
    pub(crate) fn wait(&self, d: Duration, check: impl Fn() -> bool) {
        let g = self.wake.0.lock().unwrap_or_else(|e| e.into_inner());
        if check() {
            return;
        }
        let _ = self.wake.1.wait_timeout(g, d);
    }

    pub fn status(&self) -> (Status, String) {
        self.status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn set_status(&self, status: Status, reason: impl Into<String>) {
        *self.status.lock().unwrap_or_else(|e| e.into_inner()) = (status, reason.into());
    }

    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }

    pub fn add_hit(&self) {
        self.hits.fetch_add(1, Ordering::Relaxed);
    }

    pub fn restarts(&self) -> u64 {
        self.restarts.load(Ordering::Relaxed)
    }

    pub(crate) fn stop_requested(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }
}

pub struct TracerEntry {
    pub spec: &'static TracerSpec,
    pub tracer: Arc<Tracer>,
    pub state: Arc<TracerState>,
    pub restart_interval: Duration,
    thread: Mutex<Option<JoinHandle<()>>>,
    /// What it was built from (its config section as written, and whether `--disable` named
    /// it): a reload restarts it only when this changed.
    source: (toml::Table, bool),
}

impl TracerEntry {
    pub fn name(&self) -> &'static str {
        self.spec.name
    }
}

/// The common keys every tracer section may hold, taken out before the tracer sees its section.
struct CommonKeys {
    enabled: Option<bool>,
    restart_interval: Duration,
}

fn take_common_keys(section: &str, table: &mut toml::Table) -> ConfigResult<CommonKeys> {
    let enabled = match table.remove("enabled") {
        None => None,
        Some(toml::Value::Boolean(b)) => Some(b),
        Some(v) => {
            return Err(ConfigError(format!(
                "{section}.enabled: expected true or false, found {}",
                v.type_str()
            )))
        }
    };
    let restart_interval = match table.remove("restart_interval_secs") {
        None => DEFAULT_RESTART_INTERVAL,
        Some(toml::Value::Integer(n)) => {
            check_range(&format!("{section}.restart_interval_secs"), n, 1, 3600)?;
            Duration::from_secs(n as u64)
        }
        Some(v) => {
            return Err(ConfigError(format!(
                "{section}.restart_interval_secs: expected an integer, found {}",
                v.type_str()
            )))
        }
    };
    Ok(CommonKeys {
        enabled,
        restart_interval,
    })
}

/// Builds all registered tracers. Fails on any config error: unknown tracer sections, unknown
/// names in `--disable`, or a tracer rejecting its section.
pub fn build_tracers(
    sections: TracerSections<'_>,
    disabled: &[String],
    host: &HostRoot,
) -> ConfigResult<Vec<Arc<TracerEntry>>> {
    let specs = registry();
    let known = || specs.iter().map(|s| s.name).collect::<Vec<_>>().join(", ");
    for name in disabled {
        if !specs.iter().any(|s| s.name == name) {
            return Err(ConfigError(format!(
                "--disable {name}: unknown tracer (known: {})",
                known()
            )));
        }
    }
    // Every section must name a registered tracer of that section's mode.
    for mode in [Mode::Metric, Mode::Event, Mode::Autotracing] {
        for name in sections.of(mode).keys() {
            match specs.iter().find(|s| s.name == name) {
                None => {
                    return Err(ConfigError(format!(
                        "[{}.{name}]: unknown tracer (known: {})",
                        mode.section(),
                        known()
                    )))
                }
                Some(s) if s.mode != mode => {
                    return Err(ConfigError(format!(
                        "[{}.{name}]: {name} is a {} tracer; configure it under [{}.{name}]",
                        mode.section(),
                        s.mode.as_str(),
                        s.mode.section()
                    )))
                }
                Some(_) => {}
            }
        }
    }
    let mut entries = Vec::with_capacity(specs.len());
    for spec in specs {
        let section_name = format!("{}.{}", spec.mode.section(), spec.name);
        let mut table = sections
            .of(spec.mode)
            .get(spec.name)
            .cloned()
            .unwrap_or_default();
        let source = (table.clone(), disabled.iter().any(|d| d == spec.name));
        let common = take_common_keys(&section_name, &mut table)?;
        let tracer = (spec.build)(
            &BuildContext {
                host,
                section: &section_name,
            },
            &table,
        )?;
        let (status, reason) = if disabled.iter().any(|d| d == spec.name) {
            (Status::Disabled, "disabled by --disable".to_string())
        } else if !common.enabled.unwrap_or(spec.default_enabled) {
            (
                Status::Disabled,
                format!("disabled by config ({section_name}.enabled)"),
            )
        } else {
            (Status::Inactive, "not started".to_string())
        };
        entries.push(Arc::new(TracerEntry {
            spec,
            tracer: Arc::new(tracer),
            state: Arc::new(TracerState::new(status, reason)),
            restart_interval: common.restart_interval,
            thread: Mutex::new(None),
            source,
        }));
    }
    Ok(entries)
}

pub struct Runner {
    /// Replaced one by one on a config reload ([`Runner::reload`]).
    entries: RwLock<Vec<Arc<TracerEntry>>>,
    services: Arc<Services>,
    shutdown: Arc<AtomicBool>,
}

impl Runner {
    pub fn new(entries: Vec<Arc<TracerEntry>>, services: Arc<Services>) -> Runner {
        Runner {
            entries: RwLock::new(entries),
            services,
            shutdown: Arc::new(AtomicBool::new(false)),
        }
    }

    /// The tracers now, sorted by name (a reload may replace some later).
    pub fn entries(&self) -> Vec<Arc<TracerEntry>> {
        self.entries
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn find(&self, name: &str) -> Option<Arc<TracerEntry>> {
        self.entries
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .find(|e| e.spec.name == name)
            .cloned()
    }

    /// A config reload: `fresh` is every tracer built from the new config. A tracer whose
    /// section (and `--disable`) is unchanged keeps running untouched; a changed one is stopped
    /// (its ring buffer drained into the store first), replaced and started again if enabled.
    /// Its hits and restarts carry over. Returns the names of the tracers replaced.
    pub fn reload(&self, fresh: Vec<Arc<TracerEntry>>) -> Vec<&'static str> {
        let mut replaced = Vec::new();
        for new in fresh {
            let Some(old) = self.find(new.spec.name) else {
                continue;
            };
            if old.source == new.source {
                continue;
            }
            self.stop_thread(&old);
            let (status, reason) = new.state.status();
            old.state.set_status(status, reason);
            let entry = Arc::new(TracerEntry {
                spec: new.spec,
                tracer: new.tracer.clone(),
                state: old.state.clone(),
                restart_interval: new.restart_interval,
                thread: Mutex::new(None),
                source: new.source.clone(),
            });
            {
                let mut entries = self.entries.write().unwrap_or_else(|e| e.into_inner());
                if let Some(slot) = entries.iter_mut().find(|e| e.spec.name == new.spec.name) {
                    *slot = entry.clone();
                }
            }
            if status != Status::Disabled && !self.shutdown.load(Ordering::Relaxed) {
                self.start_entry(&entry);
            }
            tracing::info!(
                tracer = new.spec.name,
                status = entry.state.status().0.as_str(),
                "tracer reconfigured"
            );
            replaced.push(new.spec.name);
        }
        replaced
    }

    /// Tells one tracer's thread to stop and waits for it (programs detach, the ring buffer
    /// is drained).
    fn stop_thread(&self, entry: &TracerEntry) {
        entry.state.stop.store(true, Ordering::Relaxed);
        entry.state.wake();
        let handle = entry
            .thread
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(h) = handle {
            let _ = h.join();
        }
    }

    pub fn services(&self) -> &Arc<Services> {
        &self.services
    }

    /// Starts every tracer not disabled. Returns when event tracers' threads are spawned (they
    /// attach concurrently); see [`Runner::wait_started`].
    pub fn start_all(&self) {
        for entry in &self.entries() {
            if entry.state.status().0 != Status::Disabled {
                self.start_entry(entry);
            }
        }
    }

    /// Waits until no enabled tracer is still `not started`, or the timeout.
    pub fn wait_started(&self, timeout: Duration) -> bool {
        let end = Instant::now() + timeout;
        loop {
            let pending = self.entries().iter().any(|e| {
                let (s, r) = e.state.status();
                s == Status::Inactive && r == "not started"
                    || s == Status::Active && r == "starting"
            });
            if !pending {
                return true;
            }
            if Instant::now() >= end {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn start_entry(&self, entry: &Arc<TracerEntry>) {
        let name = entry.spec.name;
        if let Err(reason) = check::check_all(entry.spec.requires, &self.services.host) {
            tracing::warn!(tracer = name, %reason, "tracer inactive");
            entry.state.set_status(Status::Inactive, reason);
            return;
        }
        entry.state.stop.store(false, Ordering::Relaxed);
        if let Some(e) = &entry.state.stop_event {
            e.clear();
        }
        match entry.tracer.as_ref() {
            Tracer::Metric(c) if !c.owns_program() => {
                entry.state.set_status(Status::Active, "");
                tracing::info!(tracer = name, mode = "metric", "tracer started");
            }
            _ => {
                entry.state.set_status(Status::Active, "starting");
                let ctx = RunContext::new(
                    name,
                    entry.spec.mode,
                    self.services.clone(),
                    entry.state.clone(),
                    self.shutdown.clone(),
                );
                let thread_entry = entry.clone();
                let spawned = std::thread::Builder::new()
                    .name(format!("tracer-{name}"))
                    .spawn(move || run_loop(&thread_entry, &ctx));
                match spawned {
                    Ok(handle) => {
                        *entry.thread.lock().unwrap_or_else(|e| e.into_inner()) = Some(handle)
                    }
                    Err(e) => entry
                        .state
                        .set_status(Status::Failed, format!("cannot start thread: {e}")),
                }
            }
        }
    }

    /// Starts one tracer by name (HTTP control). Err names what is wrong.
    pub fn start(&self, name: &str) -> Result<(), String> {
        let entry = self
            .find(name)
            .ok_or_else(|| format!("unknown tracer {name}"))?;
        let running = entry
            .thread
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .is_some_and(|h| !h.is_finished());
        let threadless = matches!(entry.tracer.as_ref(), Tracer::Metric(c) if !c.owns_program());
        if running || (threadless && entry.state.status().0 == Status::Active) {
            return Err(format!("tracer {name} is already running"));
        }
        self.start_entry(&entry);
        Ok(())
    }

    /// Stops one tracer by name and waits for it to detach.
    pub fn stop(&self, name: &str) -> Result<(), String> {
        let entry = self
            .find(name)
            .ok_or_else(|| format!("unknown tracer {name}"))?;
        if entry.state.status().0 == Status::Disabled {
            return Err(format!("tracer {name} is not running"));
        }
        self.stop_thread(&entry);
        entry
            .state
            .set_status(Status::Disabled, "stopped through the API");
        tracing::info!(tracer = name, "tracer stopped through the API");
        Ok(())
    }

    /// Tells every tracer to stop and waits for their threads (BPF links are dropped, so
    /// programs detach) up to `timeout`.
    pub fn shutdown(&self, timeout: Duration) {
        self.shutdown.store(true, Ordering::Relaxed);
        let entries = self.entries();
        for entry in &entries {
            entry.state.wake();
        }
        let end = Instant::now() + timeout;
        for entry in &entries {
            let handle = entry
                .thread
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take();
            if let Some(h) = handle {
                while !h.is_finished() && Instant::now() < end {
                    std::thread::sleep(Duration::from_millis(5));
                }
                if h.is_finished() {
                    let _ = h.join();
                } else {
                    tracing::warn!(tracer = entry.spec.name, "tracer did not stop in time");
                }
            }
        }
    }
}

/// The message of a caught panic.
pub fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

fn run_loop(entry: &TracerEntry, ctx: &RunContext) {
    let name = entry.spec.name;
    match entry.tracer.as_ref() {
        Tracer::Event(t) => run_program_loop(entry, ctx, &|ctx| t.run(ctx)),
        Tracer::Metric(c) => run_program_loop(entry, ctx, &|ctx| c.run(ctx)),
        Tracer::Autotracing(t) => run_autotracing_loop(entry, t.as_ref(), ctx),
    }
    tracing::info!(tracer = name, "tracer stopped");
}

/// Runs an event tracer (or a collector's program) until it is stopped, starting it again after
/// its restart interval whenever it ends or fails.
fn run_program_loop(
    entry: &TracerEntry,
    ctx: &RunContext,
    run: &dyn Fn(&RunContext) -> Result<(), TracerError>,
) {
    let name = entry.spec.name;
    let state = &entry.state;
    loop {
        tracing::info!(
            tracer = name,
            mode = entry.spec.mode.as_str(),
            "tracer starting"
        );
        let outcome = catch_unwind(AssertUnwindSafe(|| run(ctx)));
        if ctx.stopping() {
            return;
        }
        match outcome {
            Ok(Ok(())) => {
                tracing::warn!(
                    tracer = name,
                    "tracer ended; restarting after {:?}",
                    entry.restart_interval
                );
                state.set_status(Status::Failed, "ended unexpectedly; restarting");
            }
            Ok(Err(TracerError::Unsupported(reason))) => {
                tracing::warn!(tracer = name, %reason, "tracer inactive");
                state.set_status(Status::Inactive, reason);
                return;
            }
            Ok(Err(TracerError::Failed(e))) => {
                let msg = format!("{e:#}");
                tracing::error!(tracer = name, error = %msg, "tracer failed; restarting after {:?}", entry.restart_interval);
                state.set_status(Status::Failed, msg);
            }
            Err(p) => {
                let msg = format!("panicked: {}", panic_message(p.as_ref()));
                tracing::error!(tracer = name, error = %msg, "tracer failed; restarting after {:?}", entry.restart_interval);
                state.set_status(Status::Failed, msg);
            }
        }
        state.restarts.fetch_add(1, Ordering::Relaxed);
        if !ctx.sleep(entry.restart_interval) {
            return;
        }
    }
}

fn run_autotracing_loop(entry: &TracerEntry, tracer: &dyn AutoTracer, ctx: &RunContext) {
    let name = entry.spec.name;
    let state = &entry.state;
    let mut last_fired: HashMap<String, Instant> = HashMap::new();
    state.set_status(Status::Active, "");
    tracing::info!(tracer = name, mode = "autotracing", "tracer started");
    while !ctx.stopping() {
        match catch_unwind(AssertUnwindSafe(|| tracer.detect(ctx))) {
            Ok(Ok(anomalies)) => {
                if state.status().0 == Status::Failed {
                    state.set_status(Status::Active, "");
                }
                for anomaly in anomalies {
                    if last_fired
                        .get(&anomaly.target)
                        .is_some_and(|t| t.elapsed() < tracer.cooldown())
                    {
                        continue;
                    }
                    last_fired.insert(anomaly.target.clone(), Instant::now());
                    tracing::info!(tracer = name, target = %anomaly.target, "anomaly detected; capturing");
                    match catch_unwind(AssertUnwindSafe(|| tracer.capture(&anomaly, ctx))) {
                        Ok(Ok(captured)) => {
                            ctx.save(anomaly.container.clone(), merge(anomaly.data, captured))
                        }
                        Ok(Err(e)) => {
                            tracing::warn!(tracer = name, error = %format!("{e:#}"), "capture failed")
                        }
                        Err(p) => {
                            tracing::error!(tracer = name, error = %panic_message(p.as_ref()), "capture panicked")
                        }
                    }
                }
            }
            Ok(Err(e)) => {
                let msg = format!("{e:#}");
                tracing::warn!(tracer = name, error = %msg, "detector failed");
                state.set_status(Status::Failed, msg);
            }
            Err(p) => state.set_status(
                Status::Failed,
                format!("panicked: {}", panic_message(p.as_ref())),
            ),
        }
        // Forget targets whose cooldown is over, so the map stays bounded by live anomalies.
        last_fired.retain(|_, t| t.elapsed() < tracer.cooldown());
        if !ctx.sleep(tracer.interval()) {
            break;
        }
    }
}

/// Detector values and captured context in one object (capture wins on a clash).
fn merge(detector: serde_json::Value, captured: serde_json::Value) -> serde_json::Value {
    match (detector, captured) {
        (serde_json::Value::Object(mut a), serde_json::Value::Object(b)) => {
            a.extend(b);
            serde_json::Value::Object(a)
        }
        (serde_json::Value::Null, c) => c,
        (d, serde_json::Value::Null) => d,
        (d, c) => serde_json::json!({"detector": d, "capture": c}),
    }
}

/// Pieces for tests of the framework and of what sits on it (the scraper).
#[cfg(test)]
pub(crate) mod testing {
    use super::*;

    /// Services on a store in a fresh temp dir (returned for removal).
    pub fn services(tag: &str) -> (Arc<Services>, std::path::PathBuf) {
        let (services, _, dir) = services_and_store(tag);
        (services, dir)
    }

    /// [`services`], and the store their record pipeline saves to.
    pub fn services_and_store(
        tag: &str,
    ) -> (Arc<Services>, Arc<crate::store::Store>, std::path::PathBuf) {
        let dir = std::env::temp_dir().join(format!("bianque-runner-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = crate::store::Store::open(
            &dir,
            crate::store::Retention {
                max_age: Duration::from_secs(3600),
                max_size_bytes: 1 << 30,
            },
        )
        .unwrap();
        let store = Arc::new(store);
        let containers = Arc::new(crate::container::ContainerRegistry::new(
            HostRoot::default(),
            Default::default(),
        ));
        let sink = store.clone();
        let services = Arc::new(Services {
            host: HostRoot::default(),
            hostname: "h".into(),
            region: "r".into(),
            records: Arc::new(crate::tracer::Pipeline::new(
                containers.clone(),
                Arc::new(move |r| sink.save(r)),
            )),
            containers,
            symbolizer: crate::bpf::KernelSymbolizer::new(),
            shared: Default::default(),
            agent_port: 0,
        });
        (services, store, dir)
    }

    pub fn entry(spec: &'static TracerSpec, tracer: Tracer, restart: Duration) -> Arc<TracerEntry> {
        Arc::new(TracerEntry {
            spec,
            tracer: Arc::new(tracer),
            state: Arc::new(TracerState::new(Status::Inactive, "not started".into())),
            restart_interval: restart,
            thread: Mutex::new(None),
            source: Default::default(),
        })
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_stop_makes_the_stop_fd_readable_until_the_tracer_starts_again() {
        use std::os::fd::AsRawFd;
        let readable = |st: &TracerState| {
            let mut p = libc::pollfd {
                fd: st.stop_fd().expect("an eventfd").as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd; a zero timeout does not block.
            unsafe { libc::poll(&mut p, 1, 0) == 1 }
        };
        let st = TracerState::new(Status::Active, String::new());
        assert!(!readable(&st));
        st.wake();
        assert!(readable(&st));
        assert!(
            readable(&st),
            "stays readable: every later wait sees the stop"
        );
        if let Some(e) = &st.stop_event {
            e.clear();
        }
        assert!(!readable(&st));
    }

    use super::*;

    /// Builds every tracer from a config file's tracer sections.
    fn build_from(
        text: &str,
        disabled: &[String],
        host: &HostRoot,
    ) -> ConfigResult<Vec<Arc<TracerEntry>>> {
        let mut file: toml::Table = toml::from_str(text).unwrap();
        let mut section = |name: &str| -> std::collections::BTreeMap<String, toml::Table> {
            match file.remove(name) {
                Some(toml::Value::Table(t)) => t
                    .into_iter()
                    .map(|(k, v)| (k, v.as_table().cloned().unwrap_or_default()))
                    .collect(),
                _ => Default::default(),
            }
        };
        let (metrics, events, autotracing) = (
            section("metrics"),
            section("events"),
            section("autotracing"),
        );
        build_tracers(
            TracerSections {
                metrics: &metrics,
                events: &events,
                autotracing: &autotracing,
            },
            disabled,
            host,
        )
    }

    #[test]
    fn unknown_section_and_disable_are_rejected() {
        let host = HostRoot::default();
        let err = build_from("[events.nosuch]\nenabled = true\n", &[], &host)
            .err()
            .unwrap();
        assert!(
            err.0.contains("events.nosuch") && err.0.contains("unknown tracer"),
            "{err}"
        );
        let err = build_from("", &["bogus".into()], &host).err().unwrap();
        assert!(err.0.contains("--disable bogus"), "{err}");
    }

    #[test]
    fn section_in_the_wrong_mode_is_explained() {
        let host = HostRoot::default();
        let err = build_from("[events.loadavg]\nenabled = true\n", &[], &host)
            .err()
            .unwrap();
        assert!(err.0.contains("[metrics.loadavg]"), "{err}");
    }

    #[test]
    fn common_keys_are_validated() {
        let host = HostRoot::default();
        let err = build_from("[metrics.loadavg]\nenabled = \"yes\"\n", &[], &host)
            .err()
            .unwrap();
        assert!(err.0.contains("metrics.loadavg.enabled"), "{err}");
        let err = build_from(
            "[events.dropwatch]\nrestart_interval_secs = 0\n",
            &[],
            &host,
        )
        .err()
        .unwrap();
        assert!(
            err.0.contains("events.dropwatch.restart_interval_secs"),
            "{err}"
        );
    }

    #[test]
    fn disabled_by_flag_and_config() {
        let host = HostRoot::default();
        let entries = build_from(
            "[metrics.loadavg]\nenabled = false\n",
            &["dropwatch".into()],
            &host,
        )
        .unwrap();
        let status = |n: &str| {
            entries
                .iter()
                .find(|e| e.name() == n)
                .unwrap()
                .state
                .status()
        };
        assert_eq!(status("dropwatch").0, Status::Disabled);
        assert_eq!(status("loadavg").0, Status::Disabled);
        assert!(status("loadavg").1.contains("metrics.loadavg.enabled"));
    }

    use crate::tracer::{Anomaly, AutoTracer, EventTracer, TracerError};
    use std::sync::atomic::AtomicU32;

    use testing::{entry, services};

    fn never_build(_: &BuildContext, _: &toml::Table) -> ConfigResult<Tracer> {
        Err(ConfigError("test spec".into()))
    }

    /// Fails on its first run, panics on its second, then runs until stopped.
    struct Flaky(AtomicU32);

    impl EventTracer for Flaky {
        fn run(&self, ctx: &RunContext) -> Result<(), TracerError> {
            match self.0.fetch_add(1, Ordering::SeqCst) {
                0 => Err(TracerError::Failed(anyhow::anyhow!("first run fails"))),
                1 => panic!("second run panics"),
                _ => {
                    ctx.attached();
                    while !ctx.stopping() {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Ok(())
                }
            }
        }
    }

    static FLAKY_SPEC: TracerSpec = TracerSpec {
        name: "flaky",
        mode: Mode::Event,
        description: "test",
        requires: &[],
        default_enabled: true,
        build: never_build,
    };

    #[test]
    fn failed_and_panicking_event_tracers_are_restarted() {
        let (services, dir) = services("flaky");
        let e = entry(
            &FLAKY_SPEC,
            Tracer::Event(Box::new(Flaky(AtomicU32::new(0)))),
            Duration::from_millis(50),
        );
        let runner = Runner::new(vec![e.clone()], services);
        runner.start_all();
        let end = Instant::now() + Duration::from_secs(5);
        while !(e.state.status() == (Status::Active, String::new()) && e.state.restarts() == 2)
            && Instant::now() < end
        {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(e.state.status(), (Status::Active, String::new()));
        assert_eq!(e.state.restarts(), 2);
        runner.stop("flaky").unwrap();
        assert_eq!(e.state.status().0, Status::Disabled);
        assert!(runner.stop("flaky").is_err(), "already stopped");
        runner.start("flaky").unwrap();
        assert!(runner.wait_started(Duration::from_secs(2)));
        assert_eq!(e.state.status().0, Status::Active);
        runner.shutdown(Duration::from_secs(2));
        let _ = std::fs::remove_dir_all(dir);
    }

    struct Unsupported;

    impl EventTracer for Unsupported {
        fn run(&self, _ctx: &RunContext) -> Result<(), TracerError> {
            Err(TracerError::Unsupported("hook missing".into()))
        }
    }

    static UNSUPPORTED_SPEC: TracerSpec = TracerSpec {
        name: "unsupported",
        mode: Mode::Event,
        description: "test",
        requires: &[],
        default_enabled: true,
        build: never_build,
    };

    static MISSING_FILE_SPEC: TracerSpec = TracerSpec {
        name: "missing_file",
        mode: Mode::Event,
        description: "test",
        requires: &[crate::tracer::Requirement::HostFile("proc/no-such-file")],
        default_enabled: true,
        build: never_build,
    };

    #[test]
    fn unsupported_tracers_are_inactive_with_the_reason_and_others_run() {
        let (services, dir) = services("unsupported");
        let a = entry(
            &UNSUPPORTED_SPEC,
            Tracer::Event(Box::new(Unsupported)),
            Duration::from_millis(10),
        );
        let b = entry(
            &MISSING_FILE_SPEC,
            Tracer::Event(Box::new(Unsupported)),
            Duration::from_millis(10),
        );
        let c = entry(
            &FLAKY_SPEC,
            Tracer::Event(Box::new(Flaky(AtomicU32::new(2)))),
            Duration::from_millis(10),
        );
        let runner = Runner::new(vec![a.clone(), b.clone(), c.clone()], services);
        runner.start_all();
        assert!(runner.wait_started(Duration::from_secs(2)));
        assert_eq!(
            a.state.status(),
            (Status::Inactive, "hook missing".to_string())
        );
        assert_eq!(a.state.restarts(), 0, "not retried");
        assert_eq!(b.state.status().0, Status::Inactive);
        assert!(b.state.status().1.contains("proc/no-such-file"));
        assert_eq!(c.state.status().0, Status::Active);
        runner.shutdown(Duration::from_secs(2));
        let _ = std::fs::remove_dir_all(dir);
    }

    /// Fires for target "t" on every sample.
    struct Always(AtomicU32);

    impl AutoTracer for Always {
        fn interval(&self) -> Duration {
            Duration::from_millis(10)
        }
        fn cooldown(&self) -> Duration {
            Duration::from_secs(60)
        }
        fn detect(&self, _ctx: &RunContext) -> anyhow::Result<Vec<Anomaly>> {
            Ok(vec![Anomaly {
                target: "t".into(),
                container: None,
                data: serde_json::json!({"value": 1}),
            }])
        }
        fn capture(&self, _a: &Anomaly, _ctx: &RunContext) -> anyhow::Result<serde_json::Value> {
            self.0.fetch_add(1, Ordering::SeqCst);
            Ok(serde_json::json!({"captured": true}))
        }
    }

    static ALWAYS_SPEC: TracerSpec = TracerSpec {
        name: "always",
        mode: Mode::Autotracing,
        description: "test",
        requires: &[],
        default_enabled: true,
        build: never_build,
    };

    #[test]
    fn autotracer_captures_once_per_cooldown_and_records_merged_data() {
        let (services, store, dir) = testing::services_and_store("always");
        let always = Arc::new(Always(AtomicU32::new(0)));
        struct Shared(Arc<Always>);
        impl AutoTracer for Shared {
            fn interval(&self) -> Duration {
                self.0.interval()
            }
            fn cooldown(&self) -> Duration {
                self.0.cooldown()
            }
            fn detect(&self, ctx: &RunContext) -> anyhow::Result<Vec<Anomaly>> {
                self.0.detect(ctx)
            }
            fn capture(&self, a: &Anomaly, ctx: &RunContext) -> anyhow::Result<serde_json::Value> {
                self.0.capture(a, ctx)
            }
        }
        let e = entry(
            &ALWAYS_SPEC,
            Tracer::Autotracing(Box::new(Shared(always.clone()))),
            Duration::from_millis(10),
        );
        let runner = Runner::new(vec![e.clone()], services);
        runner.start_all();
        std::thread::sleep(Duration::from_millis(200));
        runner.shutdown(Duration::from_secs(2));
        assert_eq!(
            always.0.load(Ordering::SeqCst),
            1,
            "~20 samples, one capture"
        );
        assert_eq!(e.state.hits(), 1);
        store.close();
        let rows = store
            .query(&crate::store::Query {
                limit: 10,
                ..Default::default()
            })
            .unwrap();
        assert_eq!(rows.len(), 1);
        let v: serde_json::Value = serde_json::from_str(&rows[0]).unwrap();
        assert_eq!(v["tracer_type"], "autotracing");
        assert_eq!(
            v["tracer_data"],
            serde_json::json!({"value": 1, "captured": true})
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn merge_combines_objects() {
        let m = merge(
            serde_json::json!({"a": 1, "b": 1}),
            serde_json::json!({"b": 2, "c": 3}),
        );
        assert_eq!(m, serde_json::json!({"a": 1, "b": 2, "c": 3}));
    }
}
