//! `bianque run`: config → tracers → store → HTTP, then wait for SIGINT/SIGTERM and shut down
//! in order (tracers detach, held records are saved, the store flushes, the server stops).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;

pub mod config;

use crate::bpf::KernelSymbolizer;
use crate::config::ConfigError;
use crate::container::ContainerRegistry;
use crate::host::{self, HostRoot};
use crate::server::watch::{StreamLimits, StreamStats};
use crate::server::{self, scrape::Scraper, AppState};
use crate::store::shipper::Shipper;
use crate::store::{Retention, Store};
use crate::tracer::{runner, Pipeline, Runner, Services};

pub use config::Config;

/// Options of `bianque run` that override the config file.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    pub config: Option<PathBuf>,
    pub listen: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub region: Option<String>,
    pub host_root: Option<PathBuf>,
    pub disable: Vec<String>,
}

/// Why the agent stopped: a configuration problem (exit 2) or anything else (exit 1).
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("{0}")]
    Config(#[from] ConfigError),
    /// A bad command-line flag value (exit 2, like a config error, but not called one).
    #[error("{0}")]
    Usage(String),
    #[error("{0:#}")]
    Runtime(#[from] anyhow::Error),
}

/// Loads the config file (if any) and applies CLI overrides.
pub fn load_config(opts: &RunOptions) -> Result<Config, ConfigError> {
    let mut cfg = match &opts.config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    if let Some(listen) = &opts.listen {
        cfg.server.listen = listen.clone();
    }
    if let Some(dir) = &opts.data_dir {
        cfg.store.data_dir = dir.clone();
    }
    if let Some(region) = &opts.region {
        cfg.region = region.clone();
    }
    huatuo_storage(&mut cfg);
    cfg.validate()?;
    Ok(cfg)
}

/// `compat = "huatuo"` reaches the shipper through its section (HuaTuo's document and
/// mapping); the default index becomes HuaTuo's `huatuo_bamai`, the index its Grafana datasource
/// reads (`huatuo_bamai*`).
fn huatuo_storage(cfg: &mut Config) {
    let es = &mut cfg.storage.elasticsearch;
    es.compat = cfg.compat;
    if cfg.compat.is_huatuo() && es.index == crate::store::shipper::config::DEFAULT_ES_INDEX {
        es.index = HUATUO_ES_INDEX.into();
    }
}

/// HuaTuo's Elasticsearch index.
pub const HUATUO_ES_INDEX: &str = "huatuo_bamai";

pub fn init_logging(cfg: &Config) {
    use tracing_subscriber::EnvFilter;
    let filter = match std::env::var("RUST_LOG") {
        Ok(v) if !v.is_empty() => EnvFilter::new(v),
        _ => EnvFilter::new(cfg.log.level.as_deref().unwrap_or("info")),
    };
    use std::io::IsTerminal;
    let _ = match cfg.log.format {
        config::LogFormat::Text => tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
        config::LogFormat::Json => tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .try_init(),
    };
    // A panic is logged as one line; tracer threads catch their own and carry on.
    std::panic::set_hook(Box::new(|info| {
        let thread = std::thread::current();
        tracing::error!(thread = thread.name().unwrap_or("?"), "panic: {info}");
    }));
}

pub fn run(opts: RunOptions) -> Result<(), AgentError> {
    let started = Instant::now();
    // Collectors run on blocking-pool threads; glibc gives each thread its own malloc arena
    // (up to 8 × cores), which alone added ~6 MiB of RSS under steady scraping. One arena is
    // plenty: a second still cost ~0.8 MiB after 1,000 scrapes, and allocation is not contended.
    // A fixed mmap threshold stops glibc's dynamic one from climbing (up to 32 MiB) after the
    // first large scrape buffer is freed, which also raised the trim threshold and left freed
    // scrape buffers in the heap: buffers ≥ 256 KiB are mmapped and unmapped on free, and free
    // memory above 256 KiB at the top of the heap goes back to the kernel.
    // SAFETY: mallopt only tunes the allocator; called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 * 1024);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 256 * 1024);
    }
    let cfg = load_config(&opts)?;
    init_logging(&cfg);
    let host_root = HostRoot::new(opts.host_root.clone().unwrap_or_else(|| PathBuf::from("/")));
    let entries = runner::build_tracers(cfg.tracer_sections(), &opts.disable, &host_root)?;

    // Every connection, BPF object and open file is an fd: take the whole hard limit.
    let nofile = match server::listen::raise_nofile_limit() {
        Ok(n) => n,
        Err(e) => {
            tracing::warn!(error = %e, "cannot raise RLIMIT_NOFILE");
            1024
        }
    };
    let conn_limits = server::listen::ConnLimits {
        max_connections: server::listen::effective_max_connections(
            cfg.server.max_connections,
            nofile,
        ),
        header_read_timeout: Duration::from_millis(cfg.server.header_read_timeout_ms),
        write_timeout: Duration::from_millis(cfg.server.write_timeout_ms),
    };
    let addr: SocketAddr = cfg.server.listen_addr()?;
    let listener =
        std::net::TcpListener::bind(addr).with_context(|| format!("cannot listen on {addr}"))?;
    listener
        .set_nonblocking(true)
        .context("configuring the listening socket")?;

    let retention = Retention {
        max_age: Duration::from_secs(cfg.store.retention_max_age_hours * 3600),
        max_size_bytes: cfg.store.retention_max_size_bytes,
    };
    let store = Arc::new(Store::open(&cfg.store.data_dir, retention)?);
    // The shipper reads what the store wrote; an unreachable server is retried in the
    // background, so only local problems (CA file) stop the start.
    let shipper = if cfg.storage.elasticsearch.enabled() {
        Some(Shipper::start(&cfg.storage.elasticsearch, store.path())?)
    } else {
        None
    };
    let shipper_stats = shipper.as_ref().map(|s| s.stats().clone());
    let stream_stats = Arc::new(StreamStats::default());

    crate::bpf::route_libbpf_log();
    let patterns = crate::container::filter::Patterns::from_config(&cfg.containers)?;
    let filter = crate::container::filter::ContainerFilter::new(patterns)?;
    let containers = Arc::new(
        ContainerRegistry::with_filter(host_root.clone(), cfg.containers.clone(), filter)
            .with_labels(cfg.compat),
    );
    // One walk before anything scrapes or traces, so the first metrics and events are attributed.
    containers.resync();
    let containers_stop = Arc::new(AtomicBool::new(false));
    let containers_thread = containers
        .keep_current(containers_stop.clone())
        .context("starting the container registry thread")?;
    let sink = store.clone();
    let records = Arc::new(Pipeline::new(
        containers.clone(),
        Arc::new(move |r| sink.save(r)),
    ));
    records
        .start()
        .context("starting the record pipeline thread")?;
    let hostname = cfg.hostname.clone().unwrap_or_else(host::hostname);
    let naming = Arc::new(cfg.naming(&hostname));
    let services = Arc::new(Services {
        host: host_root.clone(),
        hostname,
        region: cfg.region.clone(),
        records: records.clone(),
        containers: containers.clone(),
        symbolizer: KernelSymbolizer::new(),
        shared: Default::default(),
        agent_port: listener
            .local_addr()
            .map(|a| a.port())
            .unwrap_or(addr.port()),
    });
    let runner = Arc::new(Runner::new(entries, services));
    let state = Arc::new(AppState {
        scraper: Scraper::new(
            naming,
            Duration::from_millis(cfg.metrics.collector_timeout_ms),
            cfg.metrics.collector_concurrency as usize,
            &runner,
        )
        .with_shipper(shipper_stats.clone())
        .with_stream(stream_stats.clone()),
        runner: runner.clone(),
        store: store.clone(),
        token: cfg.server.token.clone(),
        ready: AtomicBool::new(false),
        shipper: shipper_stats,
        stream: stream_stats,
        connections: Default::default(),
        readers: server::readers::ReadPool::new(store.path()),
        stream_limits: StreamLimits {
            max_clients: cfg.server.stream_max_clients,
            client_buffer: cfg.server.stream_client_buffer,
            keepalive: Duration::from_secs(cfg.server.stream_keepalive_secs),
        },
        compat: cfg.compat,
    });

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(32)
        .thread_name("bianque-rt")
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async {
        // First, so that a SIGHUP during start-up is a reload, not the default exit.
        let mut signals = Signals::install()?;
        let listener = tokio::net::TcpListener::from_std(listener)
            .context("configuring the listening socket")?;
        let app = server::router(
            state.clone(),
            Duration::from_millis(cfg.server.request_timeout_ms),
            cfg.server.max_body_bytes,
        );
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let conn_stats = state.connections.clone();
        let http = tokio::spawn(server::listen::serve(
            listener,
            app,
            conn_limits,
            conn_stats,
            async {
                let _ = stop_rx.await;
            },
        ));
        tracing::info!(
            listen = %addr,
            data_dir = %cfg.store.data_dir.display(),
            max_connections = conn_limits.max_connections,
            nofile,
            "bianque started"
        );

        let start_runner = runner.clone();
        let start_state = state.clone();
        tokio::task::spawn_blocking(move || {
            start_runner.start_all();
            start_runner.wait_started(Duration::from_secs(10));
            start_state.ready.store(true, Ordering::Relaxed);
            // Start-up parses kernel BTF and symbol tables (megabytes, then freed): hand the
            // freed heap back to the OS.
            // SAFETY: malloc_trim only releases free memory of the allocator.
            unsafe { libc::malloc_trim(0) };
            tracing::info!(
                elapsed_ms = started.elapsed().as_millis() as u64,
                "all tracers started"
            );
        });

        // Housekeeping: the kernel symbol table (~5 MB) is only needed for new addresses.
        let idle_runner = runner.clone();
        let housekeeping = tokio::spawn(async move {
            let mut tick = tokio::time::interval(SYMBOL_TABLE_IDLE / 2);
            loop {
                tick.tick().await;
                let services = idle_runner.services().clone();
                let released = tokio::task::spawn_blocking(move || {
                    services.symbolizer.release_idle(SYMBOL_TABLE_IDLE)
                })
                .await
                .unwrap_or(false);
                if released {
                    tracing::debug!("kernel symbol table released (idle)");
                }
            }
        });

        // Closed incidents become records (shipped and streamed like any other); the store
        // ignores an id it has, so each is written once, across restarts too.
        let incident_store = store.clone();
        let incident_host = runner.services().hostname.clone();
        let incident_region = cfg.region.clone();
        let incident_writer = tokio::spawn(async move {
            let mut tick = tokio::time::interval(INCIDENT_WRITE_EVERY);
            loop {
                tick.tick().await;
                let (s, h, r) = (
                    incident_store.clone(),
                    incident_host.clone(),
                    incident_region.clone(),
                );
                let written = tokio::task::spawn_blocking(move || {
                    crate::incidents::write_closed(
                        &s,
                        &h,
                        &r,
                        INCIDENT_WRITE_WINDOW_NS,
                        crate::record::now_ns(),
                    )
                })
                .await;
                if let Ok(Err(e)) = written {
                    tracing::warn!(error = %format!("{e:#}"), "writing closed incidents");
                }
            }
        });

        // SIGHUP re-reads the config file; SIGINT/SIGTERM end the loop.
        let mut current = cfg.clone();
        while signals.next().await == Signal::Reload {
            let reload_runner = runner.clone();
            let opts = opts.clone();
            let host = host_root.clone();
            let old = current.clone();
            let outcome =
                tokio::task::spawn_blocking(move || reload(&reload_runner, &opts, &host, &old))
                    .await
                    .context("reloading the config")?;
            if let Some(new) = outcome {
                current = new;
            }
        }
        housekeeping.abort();
        incident_writer.abort();
        tracing::info!("shutting down");
        // The shipper stops at once: whatever it had not confirmed is sent on the next start.
        if let Some(s) = &shipper {
            s.request_stop();
        }
        let stop_runner = runner.clone();
        let stop_store = store.clone();
        let stop_containers = containers_stop.clone();
        let stop_registry = containers.clone();
        tokio::task::spawn_blocking(move || {
            stop_runner.shutdown(Duration::from_millis(1500));
            // Records held for a container's name are saved before the store closes.
            records.stop();
            stop_containers.store(true, Ordering::Relaxed);
            stop_registry.stop_keeping_current();
            let _ = containers_thread.join();
            stop_store.close();
            if let Some(s) = shipper {
                s.stop(Duration::from_millis(300));
            }
        })
        .await
        .context("shutting down tracers")?;
        let _ = stop_tx.send(());
        // Open keep-alive connections must not hold the exit.
        let _ = tokio::time::timeout(Duration::from_millis(300), http).await;
        anyhow::Ok(())
    })?;
    rt.shutdown_timeout(Duration::from_millis(200));
    tracing::info!("bianque stopped");
    Ok(())
}

/// How often closed incidents are looked for, and how far back.
const INCIDENT_WRITE_EVERY: Duration = Duration::from_secs(30);
const INCIDENT_WRITE_WINDOW_NS: i64 = 6 * 3600 * 1_000_000_000;

/// The kernel symbol table is dropped after this long without a new address to resolve.
const SYMBOL_TABLE_IDLE: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Signal {
    Stop,
    Reload,
}

/// The signals the agent acts on, installed once (a SIGHUP while reloading is kept for the
/// next wait, not fatal).
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> anyhow::Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            term: signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
            int: signal(SignalKind::interrupt()).context("installing the SIGINT handler")?,
            hup: signal(SignalKind::hangup()).context("installing the SIGHUP handler")?,
        })
    }

    async fn next(&mut self) -> Signal {
        tokio::select! {
            _ = self.term.recv() => Signal::Stop,
            _ = self.int.recv() => Signal::Stop,
            _ = self.hup.recv() => Signal::Reload,
        }
    }
}

/// SIGHUP: reads the config file again (with the same CLI overrides) and hands the tracers
/// built from it to the runner, which restarts only those whose section changed. A config that
/// does not load or build is logged with its error and the running one kept. Returns the new
/// config when it was applied.
fn reload(runner: &Runner, opts: &RunOptions, host: &HostRoot, old: &Config) -> Option<Config> {
    tracing::info!("SIGHUP: reloading the config");
    let built = load_config(opts).and_then(|cfg| {
        let entries = runner::build_tracers(cfg.tracer_sections(), &opts.disable, host)?;
        Ok((cfg, entries))
    });
    let (cfg, entries) = match built {
        Ok(b) => b,
        Err(e) => {
            tracing::error!(error = %e, "config reload failed; the running config is kept");
            return None;
        }
    };
    let replaced = runner.reload(entries);
    let needs_restart = restart_only_changes(old, &cfg);
    if !needs_restart.is_empty() {
        tracing::warn!(
            settings = %needs_restart.join(", "),
            "changed settings outside the tracer sections take effect on restart"
        );
    }
    tracing::info!(
        reconfigured = %if replaced.is_empty() { "none".to_string() } else { replaced.join(", ") },
        "config reloaded"
    );
    Some(cfg)
}

/// The settings a reload does not apply (only tracer sections are), by name, that differ.
fn restart_only_changes(old: &Config, new: &Config) -> Vec<&'static str> {
    let differs =
        |a: &dyn std::fmt::Debug, b: &dyn std::fmt::Debug| format!("{a:?}") != format!("{b:?}");
    let mut out = Vec::new();
    for (name, changed) in [
        ("compat", differs(&old.compat, &new.compat)),
        ("region", differs(&old.region, &new.region)),
        ("hostname", differs(&old.hostname, &new.hostname)),
        ("log", differs(&old.log, &new.log)),
        ("server", differs(&old.server, &new.server)),
        ("store", differs(&old.store, &new.store)),
        ("storage", differs(&old.storage, &new.storage)),
        ("containers", differs(&old.containers, &new.containers)),
        (
            "metrics",
            differs(
                &(
                    &old.metrics.prefix,
                    old.metrics.collector_timeout_ms,
                    old.metrics.collector_concurrency,
                ),
                &(
                    &new.metrics.prefix,
                    new.metrics.collector_timeout_ms,
                    new.metrics.collector_concurrency,
                ),
            ),
        ),
    ] {
        if changed {
            out.push(name);
        }
    }
    out
}
