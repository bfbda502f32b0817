//! The steps every BPF tracer takes around its own code, written once (the model is Rezolus's
//! `BpfBuilder`): open the object; set the rodata every bianque program has (`counter_slots`,
//! `container_filter_mode`) and then the tracer's own; size the per-CPU counters (reused by
//! every later run, so counts never go back) and the `events` ring buffer; share the agent's
//! container filter; load; attach every program left to autoload; mark the tracer attached;
//! then hand each ring-buffer record to the tracer until it is told to stop.
//!
//! ```ignore
//! let mut storage = MaybeUninit::uninit();
//! BpfProgram::new(ctx)
//!     .counters(&self.counters, Slot::COUNTER_SLOTS.0)
//!     .ring_buffer::<drop_event>(self.cfg.max_events_per_second)
//!     .load(DropwatchSkelBuilder::default(), &mut storage, |open| {
//!         let rodata = program::rodata(open.maps.rodata_data.as_deref_mut())?;
//!         rodata.max_events_per_second = self.cfg.max_events_per_second;
//!         Ok(())
//!     })?
//!     .attach(&[])?
//!     .poll(|e: &drop_event, clock| self.save(ctx, e, clock))
//! ```

use std::io::Write as _;
use std::mem::MaybeUninit;

use anyhow::{Context, Result};
use libbpf_rs::skel::{OpenSkel, Skel, SkelBuilder};
use libbpf_rs::{Link, MapCore, OpenObject};

use crate::bpf::counters::CountersCell;
use crate::bpf::{self, BootClock, Plain, SharedRodata};
use crate::exposition::{Kind, MetricSink};
use crate::tracer::RunContext;

/// The ring buffer every event program sends its records through (bpf/bianque.bpf.h
/// convention), the counters map, and the shared container filter map.
const EVENTS_MAP: &str = "events";
const COUNTERS_MAP: &str = "counters";
const CONTAINER_FILTER_MAP: &str = "container_filter";

/// With this variable set to a directory, each tracer appends the first raw records of every
/// run to `<dir>/<tracer>.hex` (one hex line each): captured bytes for decode unit tests.
pub const CAPTURE_ENV: &str = "BIANQUE_CAPTURE_DIR";
const CAPTURE_RECORDS: usize = 16;

/// A BPF tracer being set up: what to size before load.
pub struct BpfProgram<'t> {
    ctx: &'t RunContext,
    /// The program's per-CPU counters and their slots per CPU.
    counters: Option<(&'t CountersCell, u32)>,
    /// `(records per second at most, bytes per record)` of the `events` ring buffer.
    ring: Option<(u32, usize)>,
}

impl<'t> BpfProgram<'t> {
    pub fn new(ctx: &'t RunContext) -> BpfProgram<'t> {
        BpfProgram {
            ctx,
            counters: None,
            ring: None,
        }
    }

    /// `slots` counters per CPU in the program's `counters` map, kept in `cell` across runs.
    pub fn counters(mut self, cell: &'t CountersCell, slots: u32) -> BpfProgram<'t> {
        self.counters = Some((cell, slots));
        self
    }

    /// The `events` ring buffer carries records of `T`, at most `max_per_second` a second (0:
    /// no limit): sized by [`bpf::ring_buffer_bytes`]. Without this call the size in the C
    /// source stays.
    pub fn ring_buffer<T: Plain>(mut self, max_per_second: u32) -> BpfProgram<'t> {
        self.ring = Some((max_per_second, std::mem::size_of::<T>()));
        self
    }

    /// Opens the object, lets `configure` set the tracer's own rodata (and turn programs'
    /// autoload off), sets the shared rodata, sizes and shares the maps, and loads it.
    pub fn load<'obj, B>(
        self,
        builder: B,
        storage: &'obj mut MaybeUninit<OpenObject>,
        configure: impl FnOnce(&mut B::Output) -> Result<()>,
    ) -> Result<Loaded<'t, <B::Output as OpenSkel<'obj>>::Output>>
    where
        B: SkelBuilder<'obj>,
        B::Output: SharedRodata,
    {
        let mut open = builder.open(storage).context("opening the BPF object")?;
        configure(&mut open)?;
        let filter = self.ctx.containers().filter();
        {
            let (slots, filter_mode) = open.shared_rodata().context("BPF object has no .rodata")?;
            if let Some((_, n)) = self.counters {
                *slots = n;
            }
            *filter_mode = filter.program_mode();
        }
        for mut map in open.open_object_mut().maps_mut() {
            match map.name().to_str() {
                Some(COUNTERS_MAP) => {
                    if let Some((cell, n)) = self.counters {
                        cell.prepare(&mut map, n)?;
                    }
                }
                Some(EVENTS_MAP) => {
                    if let Some((rate, bytes)) = self.ring {
                        bpf::size_ring_buffer(&mut map, rate, bytes)?;
                    }
                }
                Some(CONTAINER_FILTER_MAP) if filter.map_fd().is_some() => {
                    filter.share_map(&mut map)?
                }
                // No filter configured: the program never looks in its own map (mode off), so
                // one entry instead of 16,384 preallocated (1.3 MiB of kernel memory a tracer).
                Some(CONTAINER_FILTER_MAP) => map
                    .set_max_entries(1)
                    .context("sizing the unused container filter map")?,
                _ => {}
            }
        }
        let skel = open.load().context("loading the BPF program")?;
        if let Some((cell, n)) = self.counters {
            cell.adopt(&find_map(skel.object(), COUNTERS_MAP)?, n)?;
        }
        Ok(Loaded {
            ctx: self.ctx,
            skel,
            links: Vec::new(),
        })
    }
}

/// The rodata of an open skeleton, for a tracer's `configure` step.
pub fn rodata<T>(rodata: Option<&mut T>) -> Result<&mut T> {
    rodata.context("BPF object has no .rodata")
}

fn find_map<'o>(obj: &'o libbpf_rs::Object, name: &str) -> Result<libbpf_rs::Map<'o>> {
    obj.maps()
        .find(|m| m.name() == name)
        .with_context(|| format!("BPF object has no `{name}` map"))
}

/// A loaded BPF tracer. Its programs stay attached as long as it lives.
pub struct Loaded<'t, S> {
    ctx: &'t RunContext,
    /// The skeleton, for what is the tracer's own (its maps, .bss).
    pub skel: S,
    links: Vec<Link>,
}

impl<'t, 'obj, S: Skel<'obj>> Loaded<'t, S> {
    /// Attaches every program left to autoload (the programs named in `first` before the
    /// others, in that order: the end of a span before its start, so that no start waits for
    /// an end that is not watched yet) and marks the tracer attached.
    pub fn attach(self, first: &[&str]) -> Result<Loaded<'t, S>> {
        let loaded = self.attach_quietly(first)?;
        loaded.ctx.attached();
        Ok(loaded)
    }

    /// [`Loaded::attach`] for a tracer running without some of its parts: the reason shows in
    /// its status.
    pub fn attach_partly(self, first: &[&str], reason: &str) -> Result<Loaded<'t, S>> {
        let loaded = self.attach_quietly(first)?;
        loaded.ctx.attached_partly(reason);
        Ok(loaded)
    }

    fn attach_quietly(mut self, first: &[&str]) -> Result<Loaded<'t, S>> {
        let mut progs: Vec<_> = self
            .skel
            .object()
            .progs_mut()
            .filter(|p| p.autoload())
            .collect();
        // Named ones first, in the order given; the rest keep the object's order.
        progs.sort_by_key(|p| {
            first
                .iter()
                .position(|n| p.name() == *n)
                .unwrap_or(first.len())
        });
        let mut links = Vec::with_capacity(progs.len());
        for prog in progs {
            let link = prog.attach().with_context(|| {
                format!(
                    "attaching {} ({})",
                    prog.name().to_string_lossy(),
                    prog.section().to_string_lossy()
                )
            })?;
            links.push(link);
        }
        self.links = links;
        Ok(self)
    }

    /// Hands each record of the `events` ring buffer, read as `T`, to `handle` (with the clock
    /// that turns its CLOCK_BOOTTIME stamp into wall-clock time) until the tracer is told to
    /// stop. A record shorter than `T` is skipped.
    pub fn poll<T: Plain>(&self, handle: impl FnMut(&T, &BootClock)) -> Result<()> {
        self.poll_with_tick(handle, || {})
    }

    /// [`Loaded::poll`], calling `tick` once per poll round (every [`bpf::RING_POLL_INTERVAL`]
    /// while records come, at least every [`bpf::RING_IDLE_TIMEOUT`] when idle).
    pub fn poll_with_tick<T: Plain>(
        &self,
        mut handle: impl FnMut(&T, &BootClock),
        tick: impl FnMut(),
    ) -> Result<()> {
        let events = find_map(self.skel.object(), EVENTS_MAP)?;
        let clock = BootClock::now();
        let mut capture = Capture::open(self.ctx.name());
        bpf::poll_ring_buffer_with_tick(
            &|| self.ctx.stopping(),
            self.ctx.stop_fd(),
            &events as &dyn MapCore,
            |data| {
                if let Some(c) = capture.as_mut() {
                    c.write(data);
                }
                if let Some(e) = bpf::read_record::<T>(data) {
                    handle(&e, &clock);
                }
                0
            },
            tick,
        )
    }

    /// Keeps the programs attached until the tracer is told to stop (a tracer whose programs
    /// only count, read at scrape time).
    pub fn wait_for_stop(&self) {
        while self.ctx.sleep(std::time::Duration::from_secs(3600)) {}
    }
}

/// The first raw records of a run, written as hex lines (see [`CAPTURE_ENV`]).
struct Capture {
    file: std::fs::File,
    left: usize,
}

impl Capture {
    fn open(tracer: &str) -> Option<Capture> {
        let dir = std::env::var_os(CAPTURE_ENV)?;
        let path = std::path::Path::new(&dir).join(format!("{tracer}.hex"));
        match std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
        {
            Ok(file) => Some(Capture {
                file,
                left: CAPTURE_RECORDS,
            }),
            Err(e) => {
                tracing::warn!(tracer, path = %path.display(), error = %e, "cannot capture records");
                None
            }
        }
    }

    fn write(&mut self, data: &[u8]) {
        if self.left == 0 {
            return;
        }
        self.left -= 1;
        let mut line = String::with_capacity(data.len() * 2 + 1);
        for b in data {
            line.push_str(&format!("{b:02x}"));
        }
        line.push('\n');
        let _ = self.file.write_all(line.as_bytes());
    }
}

/// Parses one captured hex line back into bytes (decode tests).
#[cfg(test)]
pub fn hex_record(line: &str) -> Vec<u8> {
    (0..line.trim().len() / 2)
        .filter_map(|i| u8::from_str_radix(&line.trim()[2 * i..2 * i + 2], 16).ok())
        .collect()
}

/// Line `n` of captured hex lines (a tracer's `records.hex`) read as a `T` (decode tests).
#[cfg(test)]
pub fn captured_record<T: Plain>(lines: &str, n: usize) -> T {
    let line = lines.lines().nth(n).expect("a captured line");
    bpf::read_record(&hex_record(line)).expect("a whole record")
}

/// The records a program had to refuse, exported alike by every event tracer from its
/// counters: `suppressed_total` (the rate limit), `ringbuf_lost_total` (the ring buffer was
/// full) and, for a program with a filter, `filtered_total`. The slots come from the tracer's
/// C enum through its skeleton.
pub struct Refused<'a> {
    /// What a record is about, plural and capitalised: `Signals`, `OOM victims`.
    what: &'a str,
    /// None for a program without a rate limit.
    suppressed: Option<u32>,
    /// Records user space held back too, counted with the rate limit's, and why.
    also_suppressed: Option<(u64, &'a str)>,
    ringbuf_full: u32,
    /// The slot of the filter's refusals and what the filter matches on.
    filtered: Option<(u32, &'a str)>,
}

impl<'a> Refused<'a> {
    /// A rate-limited program: `suppressed` counts what the limit refused, `ringbuf_full` what
    /// passed it and found the ring buffer full.
    pub fn new(what: &'a str, suppressed: u32, ringbuf_full: u32) -> Refused<'a> {
        Refused {
            what,
            suppressed: Some(suppressed),
            also_suppressed: None,
            ringbuf_full,
            filtered: None,
        }
    }

    /// A program without a rate limit: only `ringbuf_lost_total`.
    pub fn unlimited(what: &'a str, ringbuf_full: u32) -> Refused<'a> {
        Refused {
            what,
            suppressed: None,
            also_suppressed: None,
            ringbuf_full,
            filtered: None,
        }
    }

    /// Adds `filtered_total`: the slot of the filter's refusals and what the filter matches on.
    pub fn filtered(mut self, slot: u32, on: &'a str) -> Refused<'a> {
        self.filtered = Some((slot, on));
        self
    }

    /// `suppressed_total` also counts `n` records user space held back, for `why` (`a repeat
    /// within repeat_interval_secs`).
    pub fn also_suppressed(mut self, n: u64, why: &'a str) -> Refused<'a> {
        self.also_suppressed = Some((n, why));
        self
    }

    pub fn write(&self, counters: &bpf::PerCpuCounters, out: &mut MetricSink) {
        let what = self.what;
        if let Some(slot) = self.suppressed {
            let (extra, help) = match self.also_suppressed {
                Some((n, why)) => (
                    n,
                    format!("{what} not recorded because of the rate limit, or {why}."),
                ),
                None => (0, format!("{what} not recorded because of the rate limit.")),
            };
            out.single(
                "suppressed_total",
                &help,
                Kind::Counter,
                (counters.get(slot as usize) + extra) as f64,
            );
        }
        let ringbuf_help = if self.suppressed.is_some() {
            format!("{what} that passed the rate limit but found the ring buffer full.")
        } else {
            format!("{what} that found the ring buffer full.")
        };
        out.single(
            "ringbuf_lost_total",
            &ringbuf_help,
            Kind::Counter,
            counters.get(self.ringbuf_full as usize) as f64,
        );
        if let Some((slot, on)) = self.filtered {
            out.single(
                "filtered_total",
                &format!("{what} that did not match the configured {on} filter."),
                Kind::Counter,
                counters.get(slot as usize) as f64,
            );
        }
    }
}
