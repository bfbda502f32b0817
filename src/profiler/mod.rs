//! The built-in CPU profiler the autotracers capture with: a BPF `perf_event` program on the
//! software CPU clock of every online CPU (default 99 Hz), optionally restricted to one memory
//! cgroup, takes kernel and user stacks and counts them per (pid, kernel stack, user stack) in a
//! BPF hash map: no message per sample reaches user space. After the window the map is read once,
//! kernel frames are symbolized from kallsyms and user frames from each process's own ELF files
//! (through `/proc/<pid>/map_files`, so containers' binaries resolve), and the result is folded
//! stacks (`comm;outer;…;inner count`), the top N by count, and totals.

use std::collections::HashMap;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use blazesym::symbolize::source::{Process, Source};
use blazesym::symbolize::{Input, Symbolized, Symbolizer};
use blazesym::Pid;
use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use libbpf_rs::{MapCore, MapFlags};
use perf_event_open_sys::bindings as perf;
use serde::Serialize;

use crate::bpf::KernelSymbolizer;

mod skel {
    #![allow(clippy::all, non_camel_case_types, dead_code, unused_imports)]
    crate::bpf_skeleton!("profiler");
}
use skel::ProfilerSkelBuilder;

// Mirrors profiler.h.
const MAX_DEPTH: usize = 127;
const STAT_SAMPLES: u32 = 0;
const STAT_FILTERED: u32 = 1;
const STAT_IDLE: u32 = 2;
const STAT_MAP_FULL: u32 = 3;
const STAT_KSTACK_ERR: u32 = 4;
const STAT_USTACK_ERR: u32 = 5;
const KEY_SIZE: usize = 40;

/// What to profile and for how long.
#[derive(Debug, Clone)]
pub struct ProfileOptions {
    pub frequency_hz: u64,
    pub duration: Duration,
    /// Only tasks in this memory cgroup (its kernfs inode, as `Container::memory_cgroup_id`).
    pub memcg_id: Option<u64>,
    /// How many folded stacks (by count) the result keeps.
    pub top_stacks: usize,
}

impl Default for ProfileOptions {
    fn default() -> Self {
        ProfileOptions {
            frequency_hz: 99,
            duration: Duration::from_secs(10),
            memcg_id: None,
            top_stacks: 200,
        }
    }
}

/// A finished profile, as stored in a record's `tracer_data.profile`.
#[derive(Debug, Clone, Serialize)]
pub struct Profile {
    pub frequency_hz: u64,
    pub duration_ms: u64,
    pub cpus: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_cgroup_id: Option<u64>,
    /// Samples counted (not idle, inside the filter).
    pub samples: u64,
    /// Samples of the idle task, not counted.
    pub idle_samples: u64,
    /// Samples of tasks outside the cgroup filter.
    pub filtered_samples: u64,
    /// Samples lost because the count map was full.
    pub lost_samples: u64,
    pub kernel_stack_errors: u64,
    pub user_stack_errors: u64,
    /// Distinct folded stacks seen; `folded` holds the top `stacks_shown` of them.
    pub stacks_total: usize,
    pub stacks_shown: usize,
    /// Samples in the shown stacks.
    pub samples_shown: u64,
    /// `comm;user frames outermost first;kernel frames count`, most frequent first.
    pub folded: Vec<String>,
    /// Processes by samples, most first (at most 20).
    pub top_processes: Vec<ProfiledProcess>,
    /// Samples per memory cgroup (the task's, at sample time), most first (at most 50): the
    /// per-container attribution of a host profile.
    pub cgroups: Vec<ProfiledCgroup>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ProfiledProcess {
    pub pid: u32,
    pub comm: String,
    pub samples: u64,
    /// Memory cgroup id of the process (kernfs inode; 0 without a memory controller).
    pub memory_cgroup_id: u64,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ProfiledCgroup {
    pub memory_cgroup_id: u64,
    pub samples: u64,
}

/// One sampled stack before symbolization.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct RawKey {
    pid: u32,
    kstack: i32,
    ustack: i32,
    memcg_id: u64,
    comm: String,
}

fn parse_key(b: &[u8]) -> Option<RawKey> {
    if b.len() < KEY_SIZE {
        return None;
    }
    let u32_at = |i: usize| u32::from_ne_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
    let comm = &b[24..40];
    let end = comm.iter().position(|&c| c == 0).unwrap_or(comm.len());
    Some(RawKey {
        pid: u32_at(0),
        kstack: u32_at(4) as i32,
        ustack: u32_at(8) as i32,
        memcg_id: parse_u64(&b[16..24]),
        comm: String::from_utf8_lossy(&comm[..end]).into_owned(),
    })
}

fn parse_u64(b: &[u8]) -> u64 {
    b.get(..8)
        .and_then(|s| s.try_into().ok())
        .map(u64::from_ne_bytes)
        .unwrap_or(0)
}

fn parse_stack(b: &[u8]) -> Vec<u64> {
    b.chunks_exact(8)
        .take(MAX_DEPTH)
        .map(parse_u64)
        .take_while(|&a| a != 0)
        .collect()
}

/// Opens a software CPU-clock sampling event on `cpu` for all tasks.
fn open_cpu_clock(cpu: u32, frequency_hz: u64) -> Result<OwnedFd> {
    // SAFETY: perf_event_attr is a plain C struct for which all-zero is a valid value.
    let mut attr: perf::perf_event_attr = unsafe { std::mem::zeroed() };
    attr.type_ = perf::PERF_TYPE_SOFTWARE;
    attr.size = std::mem::size_of::<perf::perf_event_attr>() as u32;
    attr.config = perf::PERF_COUNT_SW_CPU_CLOCK as u64;
    attr.__bindgen_anon_1.sample_freq = frequency_hz;
    attr.set_freq(1);
    // SAFETY: attr is a valid, initialised perf_event_attr that outlives the call; pid -1 with a
    // cpu samples every task on that CPU; the returned fd is checked before it is owned.
    let fd = unsafe {
        perf_event_open_sys::perf_event_open(
            &mut attr,
            -1,
            cpu as i32,
            -1,
            perf::PERF_FLAG_FD_CLOEXEC as libc::c_ulong,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("perf_event_open(cpu clock, cpu {cpu})"));
    }
    // SAFETY: fd is a fresh descriptor returned by the kernel and owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Profiles for `opts.duration` (or until `sleep` returns false, e.g. the agent stops) and
/// returns the symbolized, folded result. `sleep` is handed the window to wait out.
pub fn profile(
    opts: &ProfileOptions,
    ksyms: &KernelSymbolizer,
    mut sleep: impl FnMut(Duration) -> bool,
) -> Result<Profile> {
    if opts.frequency_hz == 0 {
        bail!("profiler frequency must be above 0 Hz");
    }
    let cpus = crate::procfs::cpulist::parse(
        &std::fs::read_to_string("/sys/devices/system/cpu/online")
            .context("reading /sys/devices/system/cpu/online")?,
    )
    .unwrap_or_default();
    if cpus.is_empty() {
        bail!("no online CPUs listed");
    }
    crate::bpf::route_libbpf_log();
    let mut storage = MaybeUninit::uninit();
    let mut open = ProfilerSkelBuilder::default()
        .open(&mut storage)
        .context("opening the profiler BPF object")?;
    let rodata = open
        .maps
        .rodata_data
        .as_deref_mut()
        .context("profiler BPF object has no .rodata")?;
    rodata.filter_memcg_id = opts.memcg_id.unwrap_or(0);
    let skel = open.load().context("loading the profiler BPF object")?;
    let mut links = Vec::with_capacity(cpus.len());
    let start = Instant::now();
    for &cpu in &cpus {
        let fd = open_cpu_clock(cpu, opts.frequency_hz)?;
        let link = skel
            .progs
            .bq_profile
            .attach_perf_event(fd.as_raw_fd())
            .with_context(|| format!("attaching the profiler on cpu {cpu}"))?;
        // libbpf's perf-event link closes the event fd when it is destroyed: hand ownership
        // over to it (on an attach error, `fd` was dropped above and closed by us).
        let _ = fd.into_raw_fd();
        links.push(link);
    }
    // A process that exits before the window ends takes its maps along: its frames would stay
    // addresses (one short-lived python3 made a 128-frame stack of numbers). Name the frames of
    // the processes seen so far every SYMBOLIZE_EVERY, while they still exist.
    let mut users = UserSymbolizer::new();
    let mut stack_cache: HashMap<i32, Vec<u64>> = HashMap::new();
    let deadline = start + opts.duration;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || !sleep(left.min(SYMBOLIZE_EVERY)) {
            break;
        }
        for k in skel.maps.counts.keys() {
            if let Some(key) = parse_key(&k) {
                let addrs = map_stack(&skel, &mut stack_cache, key.ustack);
                users.stack(key.pid, &addrs);
            }
        }
    }
    // Detach first so the maps stop changing while they are read.
    drop(links);
    let duration = start.elapsed();

    let stat = |slot: u32| -> u64 {
        skel.maps
            .stats
            .lookup(&slot.to_ne_bytes(), MapFlags::ANY)
            .ok()
            .flatten()
            .map(|v| parse_u64(&v))
            .unwrap_or(0)
    };
    let mut raw: Vec<(RawKey, u64)> = Vec::new();
    for k in skel.maps.counts.keys() {
        let Some(key) = parse_key(&k) else { continue };
        if let Ok(Some(v)) = skel.maps.counts.lookup(&k, MapFlags::ANY) {
            raw.push((key, parse_u64(&v)));
        }
    }
    let mut stack = |id: i32| -> Vec<u64> { map_stack(&skel, &mut stack_cache, id) };
    // Every kernel frame in one kallsyms scan (a profile holds thousands).
    let mut kaddrs: Vec<u64> = raw.iter().flat_map(|(k, _)| stack(k.kstack)).collect();
    kaddrs.sort_unstable();
    kaddrs.dedup();
    let knames: HashMap<u64, String> = kaddrs
        .iter()
        .copied()
        .zip(ksyms.symbolize_many(&kaddrs))
        .map(|(a, s)| (a, function_name(&s)))
        .collect();
    let mut folded: HashMap<String, u64> = HashMap::new();
    let mut per_process: HashMap<u32, (String, u64, u64)> = HashMap::new();
    let mut per_cgroup: HashMap<u64, u64> = HashMap::new();
    for (key, count) in &raw {
        let kernel: Vec<String> = stack(key.kstack)
            .iter()
            .map(|a| knames.get(a).cloned().unwrap_or_else(|| format!("{a:#x}")))
            .collect();
        let user = users.stack(key.pid, &stack(key.ustack));
        let line = fold(&key.comm, &user, &kernel);
        *folded.entry(line).or_default() += count;
        let p = per_process
            .entry(key.pid)
            .or_insert_with(|| (key.comm.clone(), 0, key.memcg_id));
        p.1 += count;
        *per_cgroup.entry(key.memcg_id).or_default() += count;
    }
    let stacks_total = folded.len();
    let mut sorted: Vec<(String, u64)> = folded.into_iter().collect();
    sorted.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    sorted.truncate(opts.top_stacks);
    let mut top_processes: Vec<ProfiledProcess> = per_process
        .into_iter()
        .map(|(pid, (comm, samples, memory_cgroup_id))| ProfiledProcess {
            pid,
            comm,
            samples,
            memory_cgroup_id,
        })
        .collect();
    top_processes.sort_by(|a, b| b.samples.cmp(&a.samples).then(a.pid.cmp(&b.pid)));
    top_processes.truncate(20);
    let mut cgroups: Vec<ProfiledCgroup> = per_cgroup
        .into_iter()
        .map(|(memory_cgroup_id, samples)| ProfiledCgroup {
            memory_cgroup_id,
            samples,
        })
        .collect();
    cgroups.sort_by(|a, b| {
        b.samples
            .cmp(&a.samples)
            .then(a.memory_cgroup_id.cmp(&b.memory_cgroup_id))
    });
    cgroups.truncate(50);
    Ok(Profile {
        frequency_hz: opts.frequency_hz,
        duration_ms: duration.as_millis() as u64,
        cpus: cpus.len(),
        memory_cgroup_id: opts.memcg_id,
        samples: stat(STAT_SAMPLES),
        idle_samples: stat(STAT_IDLE),
        filtered_samples: stat(STAT_FILTERED),
        lost_samples: stat(STAT_MAP_FULL),
        kernel_stack_errors: stat(STAT_KSTACK_ERR),
        user_stack_errors: stat(STAT_USTACK_ERR),
        stacks_total,
        stacks_shown: sorted.len(),
        samples_shown: sorted.iter().map(|(_, c)| c).sum(),
        folded: sorted
            .into_iter()
            .map(|(s, c)| format!("{s} {c}"))
            .collect(),
        top_processes,
        cgroups,
    })
}

/// How often a running profile names the user frames of the processes it has seen.
const SYMBOLIZE_EVERY: Duration = Duration::from_secs(1);

/// The addresses of stack `id` (kernel or user) from the stack map, read once per id.
fn map_stack(
    skel: &skel::ProfilerSkel<'_>,
    cache: &mut HashMap<i32, Vec<u64>>,
    id: i32,
) -> Vec<u64> {
    if id < 0 {
        return Vec::new();
    }
    cache
        .entry(id)
        .or_insert_with(|| {
            skel.maps
                .stacks
                .lookup(&(id as u32).to_ne_bytes(), MapFlags::ANY)
                .ok()
                .flatten()
                .map(|b| parse_stack(&b))
                .unwrap_or_default()
        })
        .clone()
}

/// `name+0x1f` → `name` (flame graphs merge frames by function).
pub fn function_name(sym: &str) -> String {
    // A module symbol is `name+0xoff [module]`: keep the module, drop the offset.
    if let Some((sym, module)) = sym.split_once(" [") {
        return format!("{} [{module}", function_name(sym));
    }
    match sym.rsplit_once("+0x") {
        Some((name, off)) if !name.is_empty() && off.chars().all(|c| c.is_ascii_hexdigit()) => {
            name.to_string()
        }
        _ => sym.to_string(),
    }
}

/// One folded line without its count: comm, then user frames and kernel frames, each given
/// innermost first (as the stack map holds them) and written outermost first. Frame names lose
/// the characters the folded format reserves (`;` separates frames, the last space the count).
pub fn fold(comm: &str, user: &[String], kernel: &[String]) -> String {
    let clean = |s: &str| -> String {
        s.chars()
            .map(|c| {
                if c == ';' || c.is_whitespace() {
                    '_'
                } else {
                    c
                }
            })
            .collect()
    };
    let mut parts = vec![if comm.is_empty() {
        "[unknown]".to_string()
    } else {
        clean(comm)
    }];
    parts.extend(user.iter().rev().map(|f| clean(f)));
    parts.extend(kernel.iter().rev().map(|f| format!("{}_[k]", clean(f))));
    parts.join(";")
}

/// User-space symbolization per process (blazesym reads the ELF files through
/// `/proc/<pid>/map_files`, which reach into containers' mount namespaces).
struct UserSymbolizer {
    symbolizer: Symbolizer,
    cache: HashMap<(u32, u64), String>,
}

impl UserSymbolizer {
    fn new() -> UserSymbolizer {
        UserSymbolizer {
            symbolizer: Symbolizer::new(),
            cache: HashMap::new(),
        }
    }

    fn stack(&mut self, pid: u32, addrs: &[u64]) -> Vec<String> {
        if addrs.is_empty() || pid == 0 {
            return Vec::new();
        }
        let missing: Vec<u64> = addrs
            .iter()
            .copied()
            .filter(|a| !self.cache.contains_key(&(pid, *a)))
            .collect();
        if !missing.is_empty() {
            let mut src = Process::new(Pid::from(pid));
            src.perf_map = false;
            let src = Source::Process(src);
            let names: Vec<String> = match self.symbolizer.symbolize(&src, Input::AbsAddr(&missing))
            {
                Ok(syms) => syms
                    .iter()
                    .zip(&missing)
                    .map(|(s, a)| match s {
                        Symbolized::Sym(sym) => sym.name.to_string(),
                        Symbolized::Unknown(_) => format!("{a:#x}"),
                    })
                    .collect(),
                // The process exited: its addresses stay as numbers.
                Err(_) => missing.iter().map(|a| format!("{a:#x}")).collect(),
            };
            for (a, n) in missing.iter().zip(names) {
                self.cache.insert((pid, *a), n);
            }
        }
        addrs
            .iter()
            .map(|a| {
                self.cache
                    .get(&(pid, *a))
                    .cloned()
                    .unwrap_or_else(|| format!("{a:#x}"))
            })
            .collect()
    }
}

/// Stacks drawn deeper than this are cut in the middle (outermost and innermost frames kept).
pub const FLAME_MAX_DEPTH: usize = 40;
const FLAME_KEEP_OUTER: usize = 12;

/// Folded stacks made fit to draw, and what was changed to get there.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct TidyFolded {
    /// `frames count`, merged where tidying made two stacks equal, most samples first.
    pub folded: Vec<String>,
    /// Stacks deeper than the limit whose middle frames became one `[N frames folded]` frame.
    pub capped_stacks: usize,
    /// Unsymbolized frames (bare addresses) that became `[N unsymbolized frames]` frames.
    pub unsymbolized_frames: usize,
    pub max_depth: usize,
}

impl TidyFolded {
    /// What the picture should say about the tidying; empty when nothing changed.
    pub fn note(&self) -> String {
        let mut parts = Vec::new();
        if self.unsymbolized_frames > 0 {
            parts.push(format!(
                "{} unsymbolized frames folded into [N unsymbolized frames]",
                self.unsymbolized_frames
            ));
        }
        if self.capped_stacks > 0 {
            parts.push(format!(
                "{} stacks deeper than {} frames cut to their outer and inner frames",
                self.capped_stacks, self.max_depth
            ));
        }
        parts.join("; ")
    }
}

/// A frame that is a bare address (`0xffff…` or `0x…_[k]`): the process was gone, or the
/// binary has no symbols.
fn unsymbolized(frame: &str) -> bool {
    let f = frame.strip_suffix("_[k]").unwrap_or(frame);
    f.strip_prefix("0x")
        .is_some_and(|h| !h.is_empty() && h.chars().all(|c| c.is_ascii_hexdigit()))
}

/// Folds each run of unsymbolized frames into one frame and cuts stacks deeper than
/// `max_depth` (≥ 16) in the middle, so a runaway stack no longer sets the picture's height and
/// the busy frames stay in the first screen.
pub fn tidy_folded(folded: &[String], max_depth: usize) -> TidyFolded {
    let max_depth = max_depth.max(16);
    let mut out = TidyFolded {
        max_depth,
        ..Default::default()
    };
    let mut merged: Vec<(String, u64)> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    for line in folded {
        let Some((stack, count)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(count) = count.parse::<u64>() else {
            continue;
        };
        let mut frames: Vec<String> = Vec::new();
        let mut run = 0usize;
        let flush = |run: &mut usize, frames: &mut Vec<String>| {
            if *run > 0 {
                frames.push(format!("[{run}_unsymbolized_frames]"));
                *run = 0;
            }
        };
        for (i, f) in stack.split(';').enumerate() {
            // The first part is the comm, whatever it looks like.
            if i > 0 && unsymbolized(f) {
                run += 1;
                out.unsymbolized_frames += 1;
            } else {
                flush(&mut run, &mut frames);
                frames.push(f.to_string());
            }
        }
        flush(&mut run, &mut frames);
        if frames.len() > max_depth {
            let inner = max_depth - FLAME_KEEP_OUTER - 1;
            let cut = frames.len() - FLAME_KEEP_OUTER - inner;
            frames.splice(
                FLAME_KEEP_OUTER..frames.len() - inner,
                [format!("[{cut}_frames_folded]")],
            );
            out.capped_stacks += 1;
        }
        let key = frames.join(";");
        match index.get(&key) {
            Some(&i) => merged[i].1 += count,
            None => {
                index.insert(key.clone(), merged.len());
                merged.push((key, count));
            }
        }
    }
    merged.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    out.folded = merged
        .into_iter()
        .map(|(s, c)| format!("{s} {c}"))
        .collect();
    out
}

/// Renders folded lines (`a;b;c count`) as an interactive SVG flame graph, tidied first
/// ([`tidy_folded`]); what tidying changed is said under the title.
pub fn flamegraph_svg(title: &str, folded: &[String]) -> Result<Vec<u8>> {
    let tidy = tidy_folded(folded, FLAME_MAX_DEPTH);
    let mut opts = inferno::flamegraph::Options::default();
    opts.title = title.to_string();
    opts.count_name = "samples".to_string();
    let note = tidy.note();
    if !note.is_empty() {
        opts.subtitle = Some(note);
    }
    let mut out = Vec::new();
    let lines: Vec<&str> = tidy.folded.iter().map(String::as_str).collect();
    if lines.is_empty() {
        bail!("the record holds no stacks");
    }
    inferno::flamegraph::from_lines(&mut opts, lines, &mut out)
        .context("rendering the flame graph")?;
    Ok(out)
}

/// A flame graph title for a record: tracer, time and container.
pub fn flamegraph_title(record: &serde_json::Value) -> String {
    let field = |k: &str| record.get(k).and_then(|v| v.as_str()).unwrap_or("");
    let mut t = format!("{} {}", field("tracer_name"), field("tracer_time"));
    let c = field("container_name");
    let id = field("container_id");
    if !id.is_empty() {
        t.push_str(&format!(
            " container {} ({})",
            if c.is_empty() { "" } else { c },
            &id[..id.len().min(12)]
        ));
    }
    t
}

/// The folded stacks stored in a record's `tracer_data` (`profile.folded`).
pub fn folded_of_record(record: &serde_json::Value) -> Option<Vec<String>> {
    let data = record.get("tracer_data").unwrap_or(record);
    data.get("profile")?.get("folded")?.as_array().map(|a| {
        a.iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folds_outermost_first_and_strips_offsets() {
        let user = vec!["burn".to_string(), "main".to_string()];
        let kernel = vec![
            function_name("do_syscall_64+0x5a"),
            function_name("entry_SYSCALL_64+0x7"),
        ];
        assert_eq!(
            fold("my app", &user, &kernel),
            "my_app;main;burn;entry_SYSCALL_64_[k];do_syscall_64_[k]"
        );
        assert_eq!(function_name("0xffffffff81000000"), "0xffffffff81000000");
        assert_eq!(
            function_name("nft_do_chain+0x9c [nf_tables]"),
            "nft_do_chain [nf_tables]"
        );
        assert_eq!(fold("", &[], &[]), "[unknown]");
    }

    #[test]
    fn renders_a_flame_graph() {
        let svg = flamegraph_svg("t", &["a;b;bq_burn 10".into(), "a;c 3".into()]).unwrap();
        let s = String::from_utf8(svg).unwrap();
        assert!(s.contains("<svg") && s.contains("bq_burn"));
        assert!(flamegraph_svg("t", &[]).is_err());
    }

    #[test]
    fn tidying_folds_address_runs_and_caps_runaway_stacks() {
        let mut runaway = vec!["python3".to_string()];
        runaway.extend((0..128).map(|i| format!("0x7f00{i:04x}")));
        let deep: Vec<String> = (0..60).map(|i| format!("f{i}")).collect();
        let folded = vec![
            "dd;main;write;ksys_write_[k] 90".to_string(),
            format!("{} 3", runaway.join(";")),
            format!("dd;{} 2", deep.join(";")),
            "dd;main;0xdead;0xbeef_[k] 1".to_string(),
            "dd;main;0x1;0x2 1".to_string(),
        ];
        let t = tidy_folded(&folded, FLAME_MAX_DEPTH);
        assert_eq!(t.unsymbolized_frames, 132);
        assert_eq!(t.capped_stacks, 1);
        assert_eq!(t.folded[0], "dd;main;write;ksys_write_[k] 90");
        assert!(t
            .folded
            .contains(&"python3;[128_unsymbolized_frames] 3".to_string()));
        // Two stacks that differ only in their addresses merge.
        assert!(t
            .folded
            .contains(&"dd;main;[2_unsymbolized_frames] 2".to_string()));
        let capped = t
            .folded
            .iter()
            .find(|l| l.contains("frames_folded"))
            .unwrap();
        let frames: Vec<&str> = capped.rsplit_once(' ').unwrap().0.split(';').collect();
        assert_eq!(frames.len(), FLAME_MAX_DEPTH);
        assert_eq!(frames[1], "f0");
        assert_eq!(frames[FLAME_KEEP_OUTER], "[22_frames_folded]");
        assert_eq!(*frames.last().unwrap(), "f59");
        assert!(t.note().contains("132 unsymbolized frames"), "{}", t.note());
        let svg = String::from_utf8(flamegraph_svg("t", &folded).unwrap()).unwrap();
        assert!(svg.contains("128_unsymbolized_frames") && svg.contains("stacks deeper than 40"));
        // The SVG's height follows the tidied depth, not the runaway one (16 px a frame).
        let height: f64 = svg
            .split("height=\"")
            .nth(1)
            .and_then(|h| h.split('"').next())
            .and_then(|h| h.parse().ok())
            .unwrap();
        assert!(height < 1000.0, "{height}");
    }

    #[test]
    fn parses_a_key() {
        let mut b = vec![0u8; KEY_SIZE];
        b[0..4].copy_from_slice(&42u32.to_ne_bytes());
        b[4..8].copy_from_slice(&(-14i32).to_ne_bytes());
        b[8..12].copy_from_slice(&7i32.to_ne_bytes());
        b[16..24].copy_from_slice(&4242u64.to_ne_bytes());
        b[24..28].copy_from_slice(b"yes\0");
        assert_eq!(
            parse_key(&b).unwrap(),
            RawKey {
                pid: 42,
                kstack: -14,
                ustack: 7,
                memcg_id: 4242,
                comm: "yes".into()
            }
        );
    }

    #[test]
    fn profiles_this_process_on_the_real_kernel() {
        // Root and a real kernel: a busy thread of this test shows up with its own frames.
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let s2 = stop.clone();
        let t = std::thread::Builder::new()
            .name("bq-prof-test".into())
            .spawn(move || {
                let mut x = 0u64;
                while !s2.load(std::sync::atomic::Ordering::Relaxed) {
                    x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
                }
                x
            })
            .unwrap();
        let opts = ProfileOptions {
            duration: Duration::from_millis(1500),
            ..Default::default()
        };
        let p = profile(&opts, &KernelSymbolizer::new(), |d| {
            std::thread::sleep(d);
            true
        })
        .unwrap();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let _ = t.join();
        assert!(p.samples > 50, "{p:?}");
        assert!(
            p.folded.iter().any(|l| l.starts_with("bq-prof-test;")
                && l.contains("profiles_this_process_on_the_real_kernel")),
            "{:?}",
            p.folded
        );
    }
}
