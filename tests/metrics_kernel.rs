//! Metrics on the real kernel, provoked for real: CPU burners raise run-queue latency, direct
//! I/O to a loop device moves block latency, a loopback UDP flood counts NET_RX softirq latency,
//! page cache in a small memory cgroup counts memcg reclaim stalls, huge page allocations beyond
//! the free order-9 blocks count direct compaction stalls, busy tasks in a test cgroup
//! show in its taskstats `nr_running` and a writer blocked on a frozen filesystem in its
//! `nr_disk_sleep`, a throttled veth's root qdisc counters match `tc -s`; a
//! real Prometheus scrapes
//! the agent and answers PromQL for the host and for a test cgroup. Everything the tests create
//! (cgroups, loop devices, processes, temp files) is removed by Drop guards, also on failure.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use common::*;

/// `<name>_count{labels}` (labels without braces, or "" for none).
fn count(text: &str, name: &str, labels: &str) -> f64 {
    let series = if labels.is_empty() {
        format!("{name}_count")
    } else {
        format!("{name}_count{{{labels}}}")
    };
    metric_value(text, &series).unwrap_or(0.0)
}

/// Cumulative `_bucket` value at `le`.
fn bucket(text: &str, name: &str, labels: &str, le: &str) -> f64 {
    let sep = if labels.is_empty() { "" } else { "," };
    metric_value(text, &format!("{name}_bucket{{{labels}{sep}le=\"{le}\"}}")).unwrap_or(0.0)
}

fn container_labels(id: &str) -> String {
    format!("container_id=\"{id}\",container_name=\"\",container_host_namespace=\"\",container_type=\"normal\",container_qos=\"\"")
}

/// A cgroup that looks like a container (`/bqtest-<pid>-<n>/docker-<64 hex>.scope`, the systemd
/// driver's form) in some v1 hierarchies.
/// Drop kills what runs in it and removes the directories.
struct TestCgroup {
    id: String,
    parents: Vec<PathBuf>,
}

impl TestCgroup {
    fn new(controllers: &[&str]) -> TestCgroup {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let seed = format!("{:08x}{:08x}", std::process::id(), n);
        let id = seed.repeat(4);
        let mut cg = TestCgroup {
            id: id.clone(),
            parents: Vec::new(),
        };
        for c in controllers {
            let parent = cgroup_mount(c)
                .unwrap_or_else(|| panic!("no cgroup hierarchy for {c}"))
                .join(format!("bqtest-{}-{n}", std::process::id()));
            std::fs::create_dir_all(parent.join(format!("docker-{id}.scope")))
                .unwrap_or_else(|e| panic!("mkdir in {c}: {e}"));
            cg.parents.push(parent);
        }
        cg
    }

    fn dir(&self, i: usize) -> PathBuf {
        self.parents[i].join(format!("docker-{}.scope", self.id))
    }

    /// Starts `sh -c script` inside the cgroup (all its hierarchies).
    fn spawn(&self, script: &str) -> Child {
        let mut join = String::new();
        for i in 0..self.parents.len() {
            join.push_str(&format!(
                "echo $$ > {}/cgroup.procs; ",
                self.dir(i).display()
            ));
        }
        Command::new("sh")
            .arg("-c")
            .arg(format!("{join}exec {script}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn")
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        for i in 0..self.parents.len() {
            let procs =
                std::fs::read_to_string(self.dir(i).join("cgroup.procs")).unwrap_or_default();
            for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                // SAFETY: kill(2) on pids in our test cgroup; ESRCH at worst.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        for i in 0..self.parents.len() {
            let leaf = self.dir(i);
            let end = Instant::now() + Duration::from_secs(5);
            while std::fs::remove_dir(&leaf).is_err() && leaf.exists() && Instant::now() < end {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = std::fs::remove_dir(&self.parents[i]);
        }
    }
}

/// Child processes killed on drop.
struct Kids(Vec<Child>);

impl Drop for Kids {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn start_agent() -> Agent {
    let agent = Agent::start(
        "[events.softirq]\nlatency_histogram = true\n",
        &["--disable", "dropwatch"],
    );
    // The BPF tracers are attached once `/readyz` answers; their families show up then.
    assert!(
        wait_until(Duration::from_secs(20), || {
            let m = agent.metrics();
            m.contains("# TYPE bianque_runqlat_latency_seconds histogram")
                && m.contains("# TYPE bianque_iolatency_d2c_seconds histogram")
                && m.contains("# TYPE bianque_softirq_latency_seconds histogram")
                && m.contains("# TYPE bianque_memory_reclaim_memcg_stall_seconds histogram")
        }),
        "BPF histogram tracers did not start; log:\n{}",
        agent.log()
    );
    agent
}

/// Scrapes until the container shows up in per-container series (the tree walk is cached for
/// a couple of seconds), then once more so that BPF filters list it.
fn wait_for_container(agent: &Agent, id: &str) {
    let needle = format!("container_id=\"{id}\"");
    assert!(
        wait_until(Duration::from_secs(10), || agent
            .metrics()
            .contains(&needle)),
        "container {id} never appeared in /metrics"
    );
    agent.metrics();
}

#[test]
fn runqlat_rises_with_more_cpu_burners_than_cores() {
    let agent = start_agent();
    let cg = TestCgroup::new(&["memory", "cpu", "cpuacct"]);
    let labels = container_labels(&cg.id);
    let mut kids = Kids(vec![cg.spawn("sleep 60")]);
    wait_for_container(&agent, &cg.id);

    let before = agent.metrics();
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2);
    for _ in 0..(2 * cores + 2) {
        kids.0.push(cg.spawn("sh -c 'while :; do :; done'"));
    }
    std::thread::sleep(Duration::from_secs(3));
    let after = agent.metrics();
    drop(kids);

    let name = "bianque_runqlat_latency_seconds";
    let slow = |t: &str| count(t, name, "") - bucket(t, name, "", "0.005");
    let d_count = count(&after, name, "") - count(&before, name, "");
    let d_slow = slow(&after) - slow(&before);
    assert!(d_count > 100.0, "run-queue events: {d_count}");
    assert!(
        d_slow >= 10.0,
        "waits over 5 ms with {} burners on {cores} cores: {d_slow}",
        2 * cores + 2
    );
    // The burners' cgroup has its own histogram, and their waits are long.
    let cname = "bianque_runqlat_container_latency_seconds";
    let c_count = count(&after, cname, &labels);
    let c_slow = c_count - bucket(&after, cname, &labels, "0.01");
    assert!(
        c_count > 10.0,
        "container run-queue events: {c_count}\n{after}"
    );
    assert!(c_slow >= 1.0, "container waits over 10 ms: {c_slow}");
    // CPU usage of the burners' cgroup is visible too.
    assert!(
        metric_value(
            &after,
            &format!("bianque_cpu_util_container_busy{{{labels}}}")
        )
        .unwrap_or(0.0)
            > 10.0,
        "container CPU usage not seen"
    );
}

#[test]
fn block_latency_counts_direct_io_to_a_loop_device() {
    let dir = TempDir::new("loop");
    let img = dir.path().join("disk.img");
    sh(&format!("truncate -s 64M {}", img.display()));
    let dev = sh(&format!("losetup --show -f {}", img.display()))
        .trim()
        .to_string();
    let _detach = Cleanup(format!("losetup -d {dev}"));
    let name = Path::new(&dev)
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    let agent = start_agent();
    // The writer runs in a test container's blkio cgroup: its requests count there too.
    let cg = TestCgroup::new(&["memory", "blkio"]);
    let clabels = container_labels(&cg.id);
    let _idle = Kids(vec![cg.spawn("sleep 60")]);
    wait_for_container(&agent, &cg.id);
    let labels = format!("device=\"{name}\"");
    let before = count(&agent.metrics(), "bianque_iolatency_d2c_seconds", &labels);
    let cname = "bianque_iolatency_container_d2c_seconds";
    let c_before = count(&agent.metrics(), cname, &clabels);
    let mut dd = cg.spawn(&format!(
        "dd if=/dev/zero of={dev} bs=1M count=20 oflag=direct"
    ));
    let status = dd.wait().unwrap();
    assert!(status.success(), "dd in the test cgroup failed: {status}");
    let (mut last, mut c_last) = (0.0, 0.0);
    let ok = wait_until(Duration::from_secs(10), || {
        let m = agent.metrics();
        last = count(&m, "bianque_iolatency_d2c_seconds", &labels);
        c_last = count(&m, cname, &clabels);
        last - before >= 20.0 && c_last - c_before >= 20.0
    });
    assert!(
        ok,
        "issue→complete count for {name}: {before} → {last}; for the container: {c_before} → {c_last}"
    );
    let m = agent.metrics();
    assert!(
        metric_value(
            &m,
            &format!("bianque_iolatency_d2c_seconds_sum{{{labels}}}")
        )
        .unwrap_or(0.0)
            > 0.0
    );
    assert!(metric_value(&m, &format!("{cname}_sum{{{clabels}}}")).unwrap_or(0.0) > 0.0);
    // Few buckets per container (cardinality budget).
    let buckets = m
        .lines()
        .filter(|l| l.starts_with(&format!("{cname}_bucket{{{clabels}")))
        .count();
    assert_eq!(buckets, 7, "le buckets per container\n{m}");
}

#[test]
fn softirq_latency_counts_net_rx_under_a_loopback_flood() {
    let agent = start_agent();
    let labels = "type=\"NET_RX\"";
    let name = "bianque_softirq_latency_seconds";
    let before = count(&agent.metrics(), name, labels);
    let rx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    rx.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let target = rx.local_addr().unwrap();
    let sender = std::thread::spawn(move || {
        let tx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        for _ in 0..50_000 {
            let _ = tx.send_to(&[0u8; 64], target);
        }
    });
    let mut buf = [0u8; 128];
    while rx.recv(&mut buf).is_ok() {}
    sender.join().unwrap();
    let mut after = before;
    let ok = wait_until(Duration::from_secs(5), || {
        after = count(&agent.metrics(), name, labels);
        after - before >= 100.0
    });
    assert!(ok, "NET_RX raise→entry count: {before} → {after}");
}

#[test]
fn memcg_reclaim_stalls_count_in_a_small_memory_cgroup() {
    let agent = start_agent();
    let cg = TestCgroup::new(&["memory"]);
    std::fs::write(cg.dir(0).join("memory.limit_in_bytes"), "33554432").unwrap();
    let labels = container_labels(&cg.id);
    let _idle = Kids(vec![cg.spawn("sleep 60")]);
    wait_for_container(&agent, &cg.id);
    let name = "bianque_memory_reclaim_memcg_stall_seconds";
    let before = count(&agent.metrics(), name, "");
    let file = TempDir::new("memcg");
    let out = file.path().join("fill");
    // 128 MiB of page cache through a 32 MiB limit: the cgroup must reclaim to go on.
    let mut dd = cg.spawn(&format!(
        "dd if=/dev/zero of={} bs=1M count=128",
        out.display()
    ));
    let status = dd.wait().unwrap();
    assert!(status.success(), "dd in the memory cgroup failed: {status}");
    let mut m = String::new();
    let ok = wait_until(Duration::from_secs(5), || {
        m = agent.metrics();
        count(&m, name, "") > before
            && count(
                &m,
                "bianque_memory_reclaim_container_memcg_stall_seconds",
                &labels,
            ) >= 1.0
    });
    assert!(
        ok,
        "memcg reclaim: host {before} → {}, container {}",
        count(&m, name, ""),
        count(
            &m,
            "bianque_memory_reclaim_container_memcg_stall_seconds",
            &labels
        )
    );
    // The limit shows in the container's memory series.
    assert_eq!(
        metric_value(
            &m,
            &format!("bianque_memory_vmstat_container_limit_bytes{{{labels}}}")
        ),
        Some(33554432.0)
    );
}

#[test]
fn container_nr_running_counts_busy_tasks_via_taskstats() {
    let agent = start_agent();
    let cg = TestCgroup::new(&["memory", "cpu", "cpuacct"]);
    let labels = container_labels(&cg.id);
    let mut kids = Kids(vec![cg.spawn("sleep 60")]);
    wait_for_container(&agent, &cg.id);
    let series = format!("bianque_loadavg_container_nr_running{{{labels}}}");
    // Idle: the sleeper is not running.
    assert_eq!(
        metric_value(&agent.metrics(), &series),
        Some(0.0),
        "idle container"
    );
    const BUSY: usize = 3;
    for _ in 0..BUSY {
        kids.0.push(cg.spawn("sh -c 'while :; do :; done'"));
    }
    let mut last = None;
    let ok = wait_until(Duration::from_secs(10), || {
        last = metric_value(&agent.metrics(), &series);
        last.is_some_and(|v| v >= BUSY as f64)
    });
    assert!(ok, "nr_running with {BUSY} burners: {last:?}");
    let m = agent.metrics();
    assert_eq!(
        metric_value(
            &m,
            &format!("bianque_loadavg_container_nr_uninterruptible{{{labels}}}")
        ),
        Some(0.0)
    );
}

/// A task of the container blocked on a frozen filesystem (D state in `ps`) counts in its
/// `nr_disk_sleep`, and leaves it once the filesystem thaws. Taskstats' `nr_uninterruptible`
/// (HuaTuo's) stays 0: the wait is TASK_UNINTERRUPTIBLE|TASK_FREEZABLE, and the kernel's
/// cgroupstats counts only the exact state.
#[test]
fn container_nr_disk_sleep_counts_a_task_blocked_on_a_frozen_filesystem() {
    let fs = LoopFs::new("nr-disk-sleep", 64);
    let mnt = &fs.mnt;
    let agent = start_agent();
    let cg = TestCgroup::new(&["memory", "cpu", "cpuacct"]);
    let labels = container_labels(&cg.id);
    let mut kids = Kids(vec![cg.spawn("sleep 60")]);
    wait_for_container(&agent, &cg.id);
    let series = format!("bianque_loadavg_container_nr_disk_sleep{{{labels}}}");
    let taskstats = format!("bianque_loadavg_container_nr_uninterruptible{{{labels}}}");
    assert_eq!(metric_value(&agent.metrics(), &series), Some(0.0), "idle");
    // Dropped first (declared last): thawing lets the blocked writer die before Kids reaps it.
    sh(&format!("fsfreeze -f {}", mnt.display()));
    let thaw = Cleanup(format!("fsfreeze -u {}", mnt.display()));
    kids.0
        .push(cg.spawn(&format!("touch {}/blocked", mnt.display())));
    let mut last = None;
    let ok = wait_until(Duration::from_secs(10), || {
        last = metric_value(&agent.metrics(), &series);
        last == Some(1.0)
    });
    assert!(ok, "nr_disk_sleep with one task in D state: {last:?}");
    assert_eq!(metric_value(&agent.metrics(), &taskstats), Some(0.0));
    drop(thaw);
    let ok = wait_until(Duration::from_secs(10), || {
        last = metric_value(&agent.metrics(), &series);
        last == Some(0.0)
    });
    assert!(ok, "nr_disk_sleep after the thaw: {last:?}");
}

/// Free blocks that could serve a 2 MiB huge page (order ≥ 9, in order-9 units), all zones.
fn free_huge_blocks() -> u64 {
    let text = std::fs::read_to_string("/proc/buddyinfo").unwrap();
    let mut n = 0u64;
    for line in text.lines() {
        let counts: Vec<u64> = line
            .split_whitespace()
            .skip(4)
            .filter_map(|c| c.parse().ok())
            .collect();
        for (order, c) in counts.iter().enumerate().skip(9) {
            n += c << (order - 9);
        }
    }
    n
}

/// A counter of /proc/vmstat.
fn vmstat(key: &str) -> u64 {
    let text = std::fs::read_to_string("/proc/vmstat").unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {key} in /proc/vmstat"))
}

/// `key` of /proc/meminfo, bytes.
fn meminfo_bytes(key: &str) -> u64 {
    let text = std::fs::read_to_string("/proc/meminfo").unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .unwrap_or_else(|| panic!("no {key} in /proc/meminfo"))
        * 1024
}

const PAGE: usize = 4096;
/// Pages in a 2 MiB (order-9) block.
const BLOCK_PAGES: u64 = 512;

/// Free memory cut into pieces no huge page fits in, whatever state the machine is in: a
/// mapping of `bytes` in 4 KiB pages of which one page per physical 2 MiB block stays allocated
/// (the physical frames are read from /proc/self/pagemap) and the rest is freed again. The
/// memory is free but fragmented: an order-9 allocation can only be served from it once
/// compaction has moved the kept (movable, anonymous) pages. Unmapped on drop.
struct FragmentedMemory {
    ptr: *mut libc::c_void,
    len: usize,
    blocks: usize,
}

impl FragmentedMemory {
    fn new(bytes: u64) -> FragmentedMemory {
        use std::io::{Read, Seek, SeekFrom};
        let len = (bytes as usize / PAGE) * PAGE;
        // SAFETY: a fresh private anonymous mapping; the pointer is checked below.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        assert_ne!(ptr, libc::MAP_FAILED, "mmap of {len} bytes");
        let mut frag = FragmentedMemory {
            ptr,
            len,
            blocks: 0,
        };
        // 4 KiB pages (no transparent huge pages), all allocated now.
        // SAFETY: ptr/len is the mapping made above.
        unsafe {
            assert_eq!(libc::madvise(ptr, len, libc::MADV_NOHUGEPAGE), 0);
            assert_eq!(
                libc::madvise(ptr, len, libc::MADV_POPULATE_WRITE),
                0,
                "populating {len} bytes: {}",
                std::io::Error::last_os_error()
            );
        }
        let pages = len / PAGE;
        let mut pagemap = std::fs::File::open("/proc/self/pagemap").unwrap();
        pagemap
            .seek(SeekFrom::Start((ptr as u64 / PAGE as u64) * 8))
            .unwrap();
        let mut seen = std::collections::HashSet::new();
        let mut buf = vec![0u8; 8 * 65536];
        let mut free_from: Option<usize> = None;
        let mut page = 0;
        while page < pages {
            let n = (pages - page).min(65536);
            pagemap.read_exact(&mut buf[..n * 8]).unwrap();
            for i in 0..n {
                let entry = u64::from_le_bytes(buf[i * 8..i * 8 + 8].try_into().unwrap());
                let pfn = entry & ((1 << 55) - 1);
                assert!(
                    entry >> 63 == 1 && pfn != 0,
                    "pagemap shows no frame (not root?)"
                );
                let keep = seen.insert(pfn / BLOCK_PAGES);
                match (keep, free_from) {
                    (true, Some(from)) => {
                        frag.free_pages(from, page + i);
                        free_from = None;
                    }
                    (false, None) => free_from = Some(page + i),
                    _ => {}
                }
            }
            page += n;
        }
        if let Some(from) = free_from {
            frag.free_pages(from, pages);
        }
        frag.blocks = seen.len();
        frag
    }

    /// Gives pages `from..to` of the mapping back to the kernel.
    fn free_pages(&self, from: usize, to: usize) {
        // SAFETY: the range lies inside the mapping; nothing reads those pages.
        let rc = unsafe {
            libc::madvise(
                self.ptr.cast::<u8>().add(from * PAGE).cast(),
                (to - from) * PAGE,
                libc::MADV_DONTNEED,
            )
        };
        assert_eq!(rc, 0, "madvise DONTNEED");
    }
}

impl Drop for FragmentedMemory {
    fn drop(&mut self) {
        // SAFETY: ptr/len is exactly the mapping made in new().
        unsafe { libc::munmap(self.ptr, self.len) };
    }
}

#[test]
fn direct_compaction_and_reclaim_stall_on_huge_page_allocation() {
    let agent = start_agent();
    let compact = "bianque_memory_reclaim_compaction_stall_seconds";
    let direct = "bianque_memory_reclaim_direct_stall_seconds";
    let m = agent.metrics();
    assert!(m.contains(&format!("# TYPE {compact} histogram")), "{m}");
    let (c0, d0) = (count(&m, compact, ""), count(&m, direct, ""));
    // No background compaction while the test sets up what only direct compaction can solve.
    let proactive = "/proc/sys/vm/compaction_proactiveness";
    let proactive_orig = std::fs::read_to_string(proactive).unwrap();
    let _proactive = Cleanup(format!("echo {} > {proactive}", proactive_orig.trim()));
    sh(&format!("echo 0 > {proactive}"));
    // Free memory fragmented: all the free memory already in pieces smaller than a huge page
    // (the allocator hands those out first) and 1 GiB more, taken from whole blocks (a fresh
    // machine has nearly all its memory in order-10 blocks). Then more huge pages are asked for
    // than there are free order-9 blocks: the last ones can only come from direct compaction in
    // the writer's own context, a real allocation stall. Freed huge pages may wait on per-CPU
    // lists that /proc/buddyinfo does not show, so the request grows until /proc/vmstat counts
    // a direct compaction. Transient: the pages and the mapping are given back right after
    // (also on failure).
    // Clean page cache first: reclaiming it frees whole blocks, which would hand out the extra
    // huge pages without any compaction (a machine fresh from a build holds gigabytes of it).
    sh("sync; echo 3 > /proc/sys/vm/drop_caches");
    let spare = 512 << 20;
    let in_pieces = meminfo_bytes("MemFree").saturating_sub(free_huge_blocks() * (2 << 20));
    let frag = FragmentedMemory::new(
        (in_pieces + (1 << 30)).min(meminfo_bytes("MemFree").saturating_sub(spare)),
    );
    let path = "/proc/sys/vm/nr_hugepages";
    let orig: u64 = std::fs::read_to_string(path)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let _restore = Cleanup(format!("echo {orig} > {path}"));
    let stalls = || vmstat("compact_stall");
    let (stalls0, unfragmented) = (stalls(), free_huge_blocks());
    let mut want = orig + unfragmented;
    let mut got = String::new();
    // Grows until the kernel compacts or can give no more (a failed request compacted first).
    let mut last = 0u64;
    for _ in 0..32 {
        want += 256;
        sh(&format!("echo {want} > {path}"));
        got = std::fs::read_to_string(path).unwrap();
        let now: u64 = got.trim().parse().unwrap_or(0);
        if stalls() > stalls0 || now == last {
            break;
        }
        last = now;
    }
    sh(&format!("echo {orig} > {path}"));
    let blocks = frag.blocks;
    drop(frag);
    assert!(
        stalls() > stalls0,
        "no direct compaction in /proc/vmstat after asking for {want} huge pages \
         ({unfragmented} free blocks, {blocks} fragmented), got {}: the test did not provoke it",
        got.trim()
    );
    let mut m = String::new();
    let ok = wait_until(Duration::from_secs(5), || {
        m = agent.metrics();
        count(&m, compact, "") > c0
    });
    let (c1, d1) = (count(&m, compact, ""), count(&m, direct, ""));
    assert!(
        ok,
        "direct compaction runs {c0} → {c1} (direct reclaim {d0} → {d1}) after asking for {want} huge pages \
         ({unfragmented} free blocks, {blocks} fragmented), got {}",
        got.trim()
    );
    assert!(metric_value(&m, &format!("{compact}_sum")).unwrap_or(0.0) > 0.0);
    eprintln!(
        "{blocks} blocks fragmented, {unfragmented} left whole; asked for {want} huge pages, got {}; \
         compaction stalls {c0} → {c1}, direct reclaim stalls {d0} → {d1}",
        got.trim()
    );
}

#[test]
fn qdisc_counters_match_tc_on_a_throttled_veth() {
    let pair = NetnsPair::new("metrics2-qdisc");
    let dev = pair.host_if.clone();
    // No IPv6 chatter (router solicitations, MLD) through the qdisc while we compare.
    sh(&format!("sysctl -qw net.ipv6.conf.{dev}.disable_ipv6=1"));
    // A slow token bucket with a short queue: a burst overflows it (drops, overlimits).
    sh(&format!(
        "tc qdisc replace dev {dev} root tbf rate 1mbit burst 5kb limit 10kb"
    ));
    let agent = Agent::start("", &["--disable", "dropwatch"]);
    let target = format!("{}:9", pair.ns_addr);
    let tx = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
    for _ in 0..2000 {
        let _ = tx.send_to(&[0u8; 1000], &target);
    }
    let labels = format!("device=\"{dev}\",kind=\"tbf\"");
    let tc = || -> serde_json::Value {
        let out = sh(&format!("tc -j -s qdisc show dev {dev} root"));
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        v[0].clone()
    };
    let fields = [
        ("bytes_total", "bytes"),
        ("packets_total", "packets"),
        ("drops_total", "drops"),
        ("overlimits_total", "overlimits"),
        ("requeues_total", "requeues"),
        ("backlog", "backlog"),
        ("current_queue_length", "qlen"),
    ];
    let mut report = String::new();
    // Once the queue has drained the numbers stand still: equal before and after the scrape.
    let ok = wait_until(Duration::from_secs(15), || {
        let before = tc();
        let m = agent.metrics();
        let after = tc();
        report = format!("tc: {after}\n");
        if before != after {
            return false;
        }
        fields.iter().all(|(metric, key)| {
            let ours = metric_value(&m, &format!("bianque_netdev_qdisc_{metric}{{{labels}}}"));
            report.push_str(&format!("{metric}: {ours:?} vs {}\n", after[key]));
            ours.is_some() && ours == after[key].as_f64()
        })
    });
    assert!(ok, "qdisc counters differ from tc:\n{report}");
    let t = tc();
    // The bucket lets a few packets through and drops most of the burst.
    assert!(t["packets"].as_f64().unwrap() >= 5.0, "{t}");
    assert!(t["drops"].as_f64().unwrap() >= 1000.0, "drops: {t}");
    assert!(
        t["overlimits"].as_f64().unwrap() > 0.0,
        "no overlimits: {t}"
    );
}

#[test]
fn prometheus_scrapes_the_agent_and_answers_for_host_and_cgroup() {
    let agent = Agent::start("", &["--disable", "dropwatch"]);
    let cg = TestCgroup::new(&["memory", "cpu", "cpuacct"]);
    // Its own network namespace, so the per-container network collectors have something.
    let _idle = Kids(vec![cg.spawn("unshare -n sleep 120")]);
    wait_for_container(&agent, &cg.id);
    let labels = container_labels(&cg.id);
    let wanted = [
        format!("bianque_sockstat_container_sockets_used{{{labels}}}"),
        format!("bianque_arp_container_entries{{{labels}}}"),
        format!("bianque_netstat_container_tcp_activeopens_total{{{labels}}}"),
    ];
    // The shell enters the cgroup before `unshare` gives it its namespace: wait for that.
    let mut m = String::new();
    let ok = wait_until(Duration::from_secs(10), || {
        m = agent.metrics();
        wanted.iter().all(|s| metric_value(&m, s) == Some(0.0))
    });
    assert!(ok, "container network series missing: {wanted:?}");
    let per_container = m
        .lines()
        .filter(|l| !l.starts_with('#') && l.contains(&format!("container_id=\"{}\"", cg.id)))
        .count();
    assert!(
        (30..=150).contains(&per_container),
        "series for one idle container: {per_container} (budget 150)"
    );

    let prom = common::prometheus::Prometheus::scrape("bianque", &agent.addr);

    let query = |q: &str| -> serde_json::Value {
        let (code, body) = prom.query_raw(q);
        assert_eq!(code, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    };
    let mut host = serde_json::Value::Null;
    let mut cgroup = serde_json::Value::Null;
    let ok = wait_until(Duration::from_secs(20), || {
        host = query("bianque_memory_meminfo_mem_total_bytes");
        cgroup = query(&format!(
            "bianque_memory_vmstat_container_usage_bytes{{container_id=\"{}\"}}",
            cg.id
        ));
        host["data"]["result"]
            .as_array()
            .is_some_and(|r| !r.is_empty())
            && cgroup["data"]["result"]
                .as_array()
                .is_some_and(|r| !r.is_empty())
    });
    assert!(ok, "PromQL answers: host {host}, cgroup {cgroup}");
    let total: f64 = host["data"]["result"][0]["value"][1]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
    let kb: f64 = meminfo
        .lines()
        .next()
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(total, kb * 1024.0);
    let used: f64 = cgroup["data"]["result"][0]["value"][1]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(used > 0.0, "{cgroup}");
    assert_eq!(cgroup["data"]["result"][0]["metric"]["job"], "bianque");
}
