//! `signal`: who sent a watched signal to whom — "what killed my process?" when it was not the
//! OOM killer. Hook: `tp_btf/signal_generate`; filtered to a signal set and rate-limited in BPF.
//!
//! The smallest complete BPF event tracer, used as the worked example in docs/custom-tracers.md.

use std::mem::MaybeUninit;
use std::sync::Mutex;

use anyhow::{Context, Result};
use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use serde::{Deserialize, Serialize};

use crate::bpf::btf::{self, EnumNames};
use crate::bpf::{self as bq_bpf};
use crate::config::{check_range, parse_section, ConfigError, ConfigResult};
use crate::exposition::{Kind, MetricSink};
use crate::tracer::{
    BuildContext, EventTracer, Mode, Requirement, RunContext, Tracer, TracerError, TracerSpec,
    TRACERS,
};

mod skel {
    #![allow(clippy::all, non_camel_case_types, dead_code, unused_imports)]
    crate::bpf_skeleton!("signal");
}
use skel::types::signal_event;
use skel::SignalSkelBuilder;

// Mirrors signal.h.
const SLOT_SUPPRESSED: usize = 64;
const SLOT_RINGBUF_FULL: usize = 65;
const COUNTER_SLOTS: u32 = 66;

#[linkme::distributed_slice(TRACERS)]
static SPEC: TracerSpec = TracerSpec {
    name: "signal",
    mode: Mode::Event,
    description: "fatal signals (SIGKILL, SIGSEGV…): sender and receiver task, container (tp_btf/signal_generate)",
    requires: &[Requirement::Root, Requirement::Btf, Requirement::BtfTracepoint("signal_generate")],
    default_enabled: true,
    build,
};

/// Signal numbers are part of the Linux user ABI (not kernel-internal), so a table is right here.
const SIGNALS: &[(&str, i32)] = &[
    ("SIGHUP", libc::SIGHUP),
    ("SIGINT", libc::SIGINT),
    ("SIGQUIT", libc::SIGQUIT),
    ("SIGILL", libc::SIGILL),
    ("SIGTRAP", libc::SIGTRAP),
    ("SIGABRT", libc::SIGABRT),
    ("SIGBUS", libc::SIGBUS),
    ("SIGFPE", libc::SIGFPE),
    ("SIGKILL", libc::SIGKILL),
    ("SIGUSR1", libc::SIGUSR1),
    ("SIGSEGV", libc::SIGSEGV),
    ("SIGUSR2", libc::SIGUSR2),
    ("SIGPIPE", libc::SIGPIPE),
    ("SIGALRM", libc::SIGALRM),
    ("SIGTERM", libc::SIGTERM),
    ("SIGSTKFLT", libc::SIGSTKFLT),
    ("SIGCHLD", libc::SIGCHLD),
    ("SIGCONT", libc::SIGCONT),
    ("SIGSTOP", libc::SIGSTOP),
    ("SIGTSTP", libc::SIGTSTP),
    ("SIGTTIN", libc::SIGTTIN),
    ("SIGTTOU", libc::SIGTTOU),
    ("SIGURG", libc::SIGURG),
    ("SIGXCPU", libc::SIGXCPU),
    ("SIGXFSZ", libc::SIGXFSZ),
    ("SIGVTALRM", libc::SIGVTALRM),
    ("SIGPROF", libc::SIGPROF),
    ("SIGWINCH", libc::SIGWINCH),
    ("SIGIO", libc::SIGIO),
    ("SIGPWR", libc::SIGPWR),
    ("SIGSYS", libc::SIGSYS),
];

fn signal_name(sig: i32) -> String {
    SIGNALS
        .iter()
        .find(|(_, n)| *n == sig)
        .map(|(name, _)| name.to_string())
        .unwrap_or_else(|| format!("SIG{sig}"))
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SignalConfig {
    /// Signals to record, by name.
    pub signals: Vec<String>,
    pub max_events_per_second: u32,
}

impl Default for SignalConfig {
    fn default() -> Self {
        SignalConfig {
            signals: [
                "SIGKILL", "SIGSEGV", "SIGABRT", "SIGBUS", "SIGILL", "SIGFPE", "SIGSYS",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect(),
            max_events_per_second: 100,
        }
    }
}

fn build(ctx: &BuildContext, table: &toml::Table) -> ConfigResult<Tracer> {
    let cfg: SignalConfig = parse_section(ctx.section, table)?;
    check_range(
        &format!("{}.max_events_per_second", ctx.section),
        cfg.max_events_per_second,
        0,
        1_000_000,
    )?;
    let mut mask = 0u64;
    for name in &cfg.signals {
        let upper = name.to_ascii_uppercase();
        let full = if upper.starts_with("SIG") {
            upper
        } else {
            format!("SIG{upper}")
        };
        let (_, num) = SIGNALS.iter().find(|(n, _)| *n == full).ok_or_else(|| {
            ConfigError(format!(
                "{}.signals: unknown signal `{name}` (e.g. SIGKILL, SIGSEGV)",
                ctx.section
            ))
        })?;
        mask |= 1u64 << num;
    }
    Ok(Tracer::Event(Box::new(SignalTracer {
        cfg,
        mask,
        results: Mutex::new(EnumNames::default()),
        counters: Default::default(),
    })))
}

pub struct SignalTracer {
    cfg: SignalConfig,
    mask: u64,
    /// Names of the tracepoint's `result` values, from kernel BTF.
    results: Mutex<EnumNames>,
    counters: crate::bpf::counters::CountersCell,
}

#[derive(Serialize)]
struct SignalData {
    signal: String,
    signal_number: i32,
    result: String,
    sender_pid: u32,
    sender_comm: String,
    target_pid: u32,
    target_tid: u32,
    target_comm: String,
    si_code: i32,
    group: bool,
    sender_tid: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    target_memory_cgroup_path: Option<String>,
}

impl EventTracer for SignalTracer {
    fn run(&self, ctx: &RunContext) -> Result<(), TracerError> {
        // The result values are an anonymous kernel enum: find it by a member name.
        if let Ok(m) = btf::enum_members_with("TRACE_SIGNAL_DELIVERED", "TRACE_SIGNAL_") {
            *self.results.lock().unwrap_or_else(|e| e.into_inner()) = EnumNames::from_members(&m);
        }
        let mut storage = MaybeUninit::uninit();
        let mut open = SignalSkelBuilder::default()
            .open(&mut storage)
            .context("opening the BPF object")?;
        let rodata = open
            .maps
            .rodata_data
            .as_deref_mut()
            .context("BPF object has no .rodata")?;
        rodata.watched_signals = self.mask;
        rodata.max_events_per_second = self.cfg.max_events_per_second;
        rodata.counter_slots = COUNTER_SLOTS;
        ctx.containers().filter().share_with(
            &mut open.maps.container_filter,
            &mut rodata.container_filter_mode,
        )?;
        self.counters
            .prepare(&mut open.maps.counters, COUNTER_SLOTS)?;
        let skel = open.load().context("loading the BPF program")?;
        self.counters.adopt(&skel.maps.counters, COUNTER_SLOTS)?;
        let _link = skel
            .progs
            .bq_signal_generate
            .attach()
            .context("attaching to tp_btf/signal_generate")?;
        ctx.attached();
        let clock_offset = bq_bpf::boottime_to_wall_offset_ns();
        bq_bpf::poll_ring_buffer(&|| ctx.stopping(), &skel.maps.events, |data| {
            if let Some(e) = bq_bpf::read_record::<signal_event>(data) {
                self.record(ctx, &e, clock_offset);
            }
            0
        })?;
        Ok(())
    }

    fn collect(&self, out: &mut MetricSink) -> Result<()> {
        let Some(c) = self.counters.get() else {
            return Ok(());
        };
        out.family(
            "events_total",
            "Watched signals generated, by signal (before the rate limit).",
            Kind::Counter,
        );
        for (name, num) in SIGNALS {
            if self.mask & (1u64 << num) != 0 {
                out.sample(&[("signal", name)], c.get(*num as usize) as f64);
            }
        }
        out.single(
            "suppressed_total",
            "Signals not recorded because of the rate limit.",
            Kind::Counter,
            c.get(SLOT_SUPPRESSED) as f64,
        );
        out.single(
            "ringbuf_lost_total",
            "Signals that found the ring buffer full.",
            Kind::Counter,
            c.get(SLOT_RINGBUF_FULL) as f64,
        );
        Ok(())
    }
}

impl SignalTracer {
    fn record(&self, ctx: &RunContext, e: &signal_event, clock_offset: i64) {
        let kernel_path = bq_bpf::cgroup_path_from_names(
            e.target_memcg_path.depth,
            e.target_memcg_path.truncated != 0,
            e.target_memcg_path.names.iter().map(|n| &n.s[..]),
        );
        let (path, _) = ctx.containers().attribute_memcg(e.target_memcg_id);
        let path = path.or_else(|| (e.target_memcg_id != 0).then(|| kernel_path.clone()));
        // By id when the registry knows the cgroup, else from the path the kernel saw: the
        // container may be gone already (killed right at its start).
        let container = ctx.container_of_memcg(e.target_memcg_id, Some(&kernel_path));
        let result = self
            .results
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .name(e.result as u32)
            .to_ascii_lowercase();
        let data = SignalData {
            signal: signal_name(e.sig),
            signal_number: e.sig,
            result,
            sender_pid: e.sender_pid,
            sender_comm: bq_bpf::c_str(&e.sender_comm.map(|c| c as u8)),
            target_pid: e.target_pid,
            target_tid: e.target_tid,
            target_comm: bq_bpf::c_str(&e.target_comm.map(|c| c as u8)),
            si_code: e.code,
            group: e.group != 0,
            sender_tid: e.sender_tid,
            target_memory_cgroup_path: path,
        };
        ctx.save_data_at(e.time_ns as i64 + clock_offset, container, &data);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signal_names_and_config() {
        assert_eq!(signal_name(9), "SIGKILL");
        assert_eq!(signal_name(40), "SIG40");
        let host = crate::host::HostRoot::default();
        let bctx = BuildContext {
            host: &host,
            section: "events.signal",
        };
        let t: toml::Table = toml::from_str("signals = [\"kill\", \"SIGTERM\"]").unwrap();
        assert!(build(&bctx, &t).is_ok());
        let t: toml::Table = toml::from_str("signals = [\"SIGNOPE\"]").unwrap();
        let err = build(&bctx, &t).err().unwrap();
        assert!(
            err.0.contains("events.signal.signals") && err.0.contains("SIGNOPE"),
            "{err}"
        );
    }
}
