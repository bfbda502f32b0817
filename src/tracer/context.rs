//! What a tracer gets from the framework: a running tracer its [`RunContext`] (the stop signal,
//! record saving through the [`Pipeline`], the shared services), a collector its
//! [`ScrapeContext`] at each scrape (the services and one view of the containers for the whole
//! scrape).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use crate::bpf::KernelSymbolizer;
use crate::container::view::{self, ContainerCgroups};
use crate::container::ContainerRegistry;
use crate::host::HostRoot;
use crate::record::{ContainerFields, Record, TracerType};
use crate::tracer::pipeline::Pipeline;
use crate::tracer::runner::TracerState;
use crate::tracer::{Mode, Status};

/// Shared by all tracers.
pub struct Services {
    pub host: HostRoot,
    pub hostname: String,
    pub region: String,
    /// Where tracers' records go (on to the store).
    pub records: Arc<Pipeline>,
    pub containers: Arc<ContainerRegistry>,
    pub symbolizer: KernelSymbolizer,
    /// What one tracer measures for others to read.
    pub shared: SharedMeasurements,
    /// The TCP port the agent's own HTTP server listens on (0: none), so tracers can leave the
    /// agent's own traffic out.
    pub agent_port: u16,
}

/// Measurements one tracer makes and others read, so that no tracer imports another: the
/// source publishes while it runs, readers get `None` when it does not.
#[derive(Default)]
pub struct SharedMeasurements {
    runqueue_wait: std::sync::RwLock<Option<Arc<dyn RunqueueWait>>>,
}

/// Per-container run-queue wait (runqlat measures it; waitrate reads it).
pub trait RunqueueWait: Send + Sync {
    /// Total run-queue wait (ns) per container id of `cgroups`, counted since the source
    /// started; a decrease means it restarted.
    fn wait_ns(&self, cgroups: &ContainerCgroups)
        -> Option<std::collections::HashMap<String, u64>>;
}

impl SharedMeasurements {
    pub fn publish_runqueue_wait(&self, source: Option<Arc<dyn RunqueueWait>>) {
        *self
            .runqueue_wait
            .write()
            .unwrap_or_else(|e| e.into_inner()) = source;
    }

    pub fn runqueue_wait(&self) -> Option<Arc<dyn RunqueueWait>> {
        self.runqueue_wait
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// What a collector gets at one scrape. Every collector of the scrape shares it, so they all see
/// the same containers, walked at most once.
pub struct ScrapeContext {
    services: Arc<Services>,
    cgroups: OnceLock<Arc<ContainerCgroups>>,
}

impl ScrapeContext {
    pub fn new(services: Arc<Services>) -> ScrapeContext {
        ScrapeContext {
            services,
            cgroups: OnceLock::new(),
        }
    }

    pub fn host(&self) -> &HostRoot {
        &self.services.host
    }

    pub fn containers(&self) -> &ContainerRegistry {
        &self.services.containers
    }

    /// The live containers' cgroups, taken once per scrape (from a walk at most
    /// [`view::MAX_AGE`] old).
    pub fn cgroups(&self) -> &ContainerCgroups {
        self.cgroups
            .get_or_init(|| self.services.containers.cgroups(view::MAX_AGE))
    }

    pub fn shared(&self) -> &SharedMeasurements {
        &self.services.shared
    }
}

pub struct RunContext {
    name: &'static str,
    mode: Mode,
    services: Arc<Services>,
    state: Arc<TracerState>,
    shutdown: Arc<AtomicBool>,
}

impl RunContext {
    pub(crate) fn new(
        name: &'static str,
        mode: Mode,
        services: Arc<Services>,
        state: Arc<TracerState>,
        shutdown: Arc<AtomicBool>,
    ) -> RunContext {
        RunContext {
            name,
            mode,
            services,
            state,
            shutdown,
        }
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    /// True once the agent shuts down or this tracer was stopped; `run` should return soon
    /// (within ~100 ms) after this turns true.
    pub fn stopping(&self) -> bool {
        self.shutdown.load(Ordering::Relaxed) || self.state.stop_requested()
    }

    /// Readable once the tracer is told to stop, for a thread that sleeps in epoll/poll (None:
    /// no eventfd; poll [`RunContext::stopping`] instead).
    pub fn stop_fd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        self.state.stop_fd()
    }

    /// Sleeps until `fd` is readable, the tracer is told to stop, or `timeout`: a reader of a
    /// socket or device sleeps in the kernel instead of polling its stop flag. Without a stop
    /// fd, the wait is capped at 100 ms so that a stop is still seen soon.
    pub fn wait_readable(&self, fd: std::os::fd::BorrowedFd<'_>, timeout: Duration) {
        use std::os::fd::AsRawFd;
        let stop = self.stop_fd();
        let timeout = match stop {
            Some(_) => timeout,
            None => timeout.min(Duration::from_millis(100)),
        };
        let mut fds = [
            libc::pollfd {
                fd: fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: stop.map_or(-1, |s| s.as_raw_fd()),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
        // SAFETY: two valid pollfds for the duration of the call (poll skips a negative fd). An
        // error or a signal only ends the wait early; the caller reads and checks again.
        unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
    }

    /// Sleeps up to `d`, waking early when told to stop. Returns false if stopping.
    ///
    /// The runner wakes the thread when it stops the tracer or the agent (under the lock the
    /// sleeper checks the stop flags under, so no wake-up is missed), so an idle tracer costs no
    /// wake-ups; the wait is still cut into 60 s pieces as a bound.
    pub fn sleep(&self, d: Duration) -> bool {
        let end = Instant::now() + d;
        while !self.stopping() {
            let now = Instant::now();
            if now >= end {
                return true;
            }
            self.state
                .wait((end - now).min(Duration::from_secs(60)), || self.stopping());
        }
        false
    }

    /// Marks the tracer attached and running (status `active`); call once hooks are in place.
    pub fn attached(&self) {
        self.state.set_status(Status::Active, "");
        tracing::info!(tracer = self.name, "tracer attached");
    }

    /// Like [`RunContext::attached`], for a tracer running without some of its parts; the
    /// reason (what is not watched, and why) shows in its status.
    pub fn attached_partly(&self, reason: &str) {
        self.state.set_status(Status::Active, reason);
        tracing::warn!(tracer = self.name, reason, "tracer attached in part");
    }

    pub fn host(&self) -> &HostRoot {
        &self.services.host
    }

    pub fn containers(&self) -> &ContainerRegistry {
        &self.services.containers
    }

    /// The container fields of a record from a memory cgroup: the container registry first
    /// (full metadata), else the container id in the cgroup path (a container the registry no
    /// longer knows), else none (the host).
    pub fn container_of_memcg(&self, memcg_id: u64, path: Option<&str>) -> Option<ContainerFields> {
        if let Some(c) = self.containers().by_memcg(memcg_id) {
            return Some(c.fields());
        }
        let (_, id) = crate::container::container_of_cgroup_path(path?)?;
        Some(ContainerFields {
            id,
            ..Default::default()
        })
    }

    /// The container fields of a record from a network namespace inode.
    pub fn container_of_netns(&self, inum: u32) -> Option<ContainerFields> {
        self.containers().by_netns(inum as u64).map(|c| c.fields())
    }

    pub fn symbolizer(&self) -> &KernelSymbolizer {
        &self.services.symbolizer
    }

    /// The TCP port of the agent's own HTTP server (0: none).
    pub fn agent_port(&self) -> u16 {
        self.services.agent_port
    }

    /// The live containers' cgroups (a view at most [`view::MAX_AGE`] old).
    pub fn cgroups(&self) -> Arc<ContainerCgroups> {
        self.services.containers.cgroups(view::MAX_AGE)
    }

    pub fn shared(&self) -> &SharedMeasurements {
        &self.services.shared
    }

    /// Saves a record stamped now.
    pub fn save(&self, container: Option<ContainerFields>, data: serde_json::Value) {
        self.save_at(crate::record::now_ns(), container, data)
    }

    /// Saves a tracer's own record struct as `tracer_data` (see [`RunContext::save_at`]); a
    /// struct that cannot be encoded is logged, not saved.
    pub fn save_data_at<T: serde::Serialize>(
        &self,
        time_ns: i64,
        container: Option<ContainerFields>,
        data: &T,
    ) {
        match serde_json::to_value(data) {
            Ok(v) => self.save_at(time_ns, container, v),
            Err(err) => tracing::warn!(tracer = self.name, error = %err, "cannot encode record"),
        }
    }

    /// Saves a record with the event's own wall-clock time (ns since the epoch). Counts a hit.
    pub fn save_at(
        &self,
        time_ns: i64,
        container: Option<ContainerFields>,
        data: serde_json::Value,
    ) {
        let kind = match self.mode {
            Mode::Autotracing => TracerType::Autotracing,
            _ => TracerType::Event,
        };
        let record = Record::new(
            self.name,
            kind,
            time_ns,
            &self.services.hostname,
            &self.services.region,
            container,
            data,
        );
        self.state.add_hit();
        self.services.records.save(record);
    }
}
