//! `signal`: who sent a watched signal to whom — "what killed my process?" when it was not the
//! OOM killer. Hook: `tp_btf/signal_generate`; filtered to a signal set and rate-limited in BPF.
//!
//! The smallest complete BPF event tracer, used as the worked example in docs/custom-tracers.md.

use std::mem::MaybeUninit;
use std::sync::Mutex;

use anyhow::Result;
use serde::{Deserialize, Serialize};

use crate::bpf::btf::{self, EnumNames};
use crate::bpf::{self as bq_bpf, BootClock, Plain};
use crate::config::{check_range, parse_section, ConfigError, ConfigResult};
use crate::exposition::{Kind, MetricSink};
use crate::tracer::program::{self, BpfProgram, Refused};
use crate::tracer::{
    BuildContext, EventTracer, Mode, Requirement, RunContext, Tracer, TracerError, TracerSpec,
    TRACERS,
};

mod skel {
    #![allow(clippy::all, non_camel_case_types, dead_code, unused_imports)]
    crate::bpf_skeleton!("signal", OpenSignalSkel);
}
use skel::types::{counter_slot as Slot, signal_event};
use skel::SignalSkelBuilder;

// SAFETY: generated from signal.h: integers and arrays of integers only.
unsafe impl Plain for signal_event {}

#[linkme::distributed_slice(TRACERS)]
static SPEC: TracerSpec = TracerSpec {
    name: "signal",
    mode: Mode::Event,
    description: "fatal signals (SIGKILL, SIGSEGV…): sender and receiver task, container (tp_btf/signal_generate)",
    requires: &[Requirement::BPF, Requirement::Btf, Requirement::BtfTracepoint("signal_generate")],
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
        BpfProgram::new(ctx)
            .counters(&self.counters, Slot::COUNTER_SLOTS.0)
            // The ring buffer keeps its size in signal.bpf.c (128 KiB: a rare-event tracer).
            .load(SignalSkelBuilder::default(), &mut storage, |open| {
                let rodata = program::rodata(open.maps.rodata_data.as_deref_mut())?;
                rodata.watched_signals = self.mask;
                rodata.max_events_per_second = self.cfg.max_events_per_second;
                Ok(())
            })?
            .attach(&[])?
            .poll(|e: &signal_event, clock| self.save(ctx, e, clock))?;
        Ok(())
    }

    fn collect(&self, _ctx: &crate::tracer::ScrapeContext, out: &mut MetricSink) -> Result<()> {
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
        Refused::new(
            "Signals",
            Slot::SLOT_SUPPRESSED.0,
            Slot::SLOT_RINGBUF_FULL.0,
        )
        .write(&c, out);
        Ok(())
    }
}

/// One signal as the kernel reported it, with names (no lookups: what the record says alone).
fn decode(e: &signal_event, results: &EnumNames) -> SignalData {
    SignalData {
        signal: signal_name(e.sig),
        signal_number: e.sig,
        result: results.name(e.result as u32).to_ascii_lowercase(),
        sender_pid: e.sender_pid,
        sender_comm: bq_bpf::c_str(&e.sender_comm.map(|c| c as u8)),
        target_pid: e.target_pid,
        target_tid: e.target_tid,
        target_comm: bq_bpf::c_str(&e.target_comm.map(|c| c as u8)),
        si_code: e.code,
        group: e.group != 0,
        sender_tid: e.sender_tid,
        target_memory_cgroup_path: (e.target_memcg_id != 0).then(|| {
            bq_bpf::cgroup_path_from_names(
                e.target_memcg_path.depth,
                e.target_memcg_path.truncated != 0,
                e.target_memcg_path.names.iter().map(|n| &n.s[..]),
            )
        }),
    }
}

impl SignalTracer {
    /// Saves one signal, attributed to the receiver's container.
    fn save(&self, ctx: &RunContext, e: &signal_event, clock: &BootClock) {
        let mut data = decode(e, &self.results.lock().unwrap_or_else(|e| e.into_inner()));
        // By id when the registry knows the cgroup, else from the path the kernel saw: the
        // container may be gone already (killed right at its start).
        let container =
            ctx.container_of_memcg(e.target_memcg_id, data.target_memory_cgroup_path.as_deref());
        // The registry's path is whole; the kernel's stops at CGROUP_PATH_DEPTH levels.
        if let Some(p) = ctx.containers().memcg_path(e.target_memcg_id) {
            data.target_memory_cgroup_path = Some(p.to_string());
        }
        ctx.save_data_at(clock.wall_ns(e.time_ns), container, &data);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A SIGKILL that tests/signal.rs sent (`bq-killer` → `sleep`), captured with
    /// `BIANQUE_CAPTURE_DIR` (tracer/program.rs).
    const SIGKILL: &str = include_str!("records.hex");

    #[test]
    fn decodes_a_captured_sigkill() {
        let bytes = program::hex_record(SIGKILL);
        let e = bq_bpf::read_record::<signal_event>(&bytes).expect("a whole record");
        let results = EnumNames::from_members(&[(0, "DELIVERED".into()), (1, "IGNORED".into())]);
        let d = serde_json::to_value(decode(&e, &results)).unwrap();
        assert_eq!(d["signal"], "SIGKILL");
        assert_eq!(d["signal_number"], 9);
        assert_eq!(d["result"], "delivered");
        assert_eq!(d["sender_comm"], "bq-killer");
        assert_eq!(
            (&d["target_comm"], &d["target_pid"]),
            (&"sleep".into(), &24233.into())
        );
        assert_eq!(d["group"], true);
        assert_eq!(
            d["target_memory_cgroup_path"],
            "/process_api/d61e9f7de34dda485d7ef3b2dbfb9e17"
        );
        assert!(bq_bpf::read_record::<signal_event>(&bytes[..bytes.len() - 1]).is_none());
    }

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
