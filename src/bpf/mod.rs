//! BPF services every tracer uses: libbpf logging, tracefs, ring-buffer polling, per-CPU
//! counters read through mmap, BTF facts and kernel symbolization.

pub mod btf;
pub mod counters;
pub mod hist;
pub mod symbolizer;

use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use libbpf_rs::{MapCore, PrintLevel, RingBufferBuilder};

pub use counters::PerCpuCounters;
pub use symbolizer::{kallsyms_address, KernelSymbolizer};

/// How often a ring-buffer reader drains its ring while records are coming: the BPF side wakes
/// the reader for the first record after a quiet spell of this long (or for a backlog) and
/// submits the rest without wakeups (see `bpf/bianque.bpf.h`, `RINGBUF_WAKEUP_GAP_NS`).
pub const RING_POLL_INTERVAL: Duration = Duration::from_millis(100);

/// How long a reader with nothing to read sleeps in the kernel before it looks again (a bound,
/// not a tick: records and the stop signal wake it at once).
pub const RING_IDLE_TIMEOUT: Duration = Duration::from_secs(5);

/// Sizes an event tracer's ring buffer for two seconds of records at its rate limit (the reader
/// drains it at least every [`RING_POLL_INTERVAL`]), as a power of two within 64 KiB..16 MiB;
/// 4 MiB without a limit. A ring buffer is resident memory of the agent (its data pages are
/// mapped into it twice), so a tracer at the default 100 records/s should not hold megabytes.
pub fn ring_buffer_bytes(max_events_per_second: u32, record_bytes: usize) -> u32 {
    if max_events_per_second == 0 {
        return 4 << 20;
    }
    // Each record carries an 8-byte header and is 8-byte aligned.
    let per_record = (record_bytes as u64).div_ceil(8) * 8 + 8;
    let want = u64::from(max_events_per_second) * per_record * 2;
    want.clamp(64 << 10, 16 << 20)
        .next_power_of_two()
        .min(16 << 20) as u32
}

/// Sets the `events` ring buffer of an object being opened to [`ring_buffer_bytes`].
pub fn size_ring_buffer(
    map: &mut libbpf_rs::OpenMapMut<'_>,
    max_events_per_second: u32,
    record_bytes: usize,
) -> Result<()> {
    map.set_max_entries(ring_buffer_bytes(max_events_per_second, record_bytes))
        .context("sizing the ring buffer")
}

/// Routes libbpf's own messages into the agent's log at debug level.
pub fn route_libbpf_log() {
    fn print(level: PrintLevel, msg: String) {
        let msg = msg.trim_end();
        match level {
            PrintLevel::Warn => tracing::debug!(target: "libbpf", "warn: {msg}"),
            PrintLevel::Info => tracing::debug!(target: "libbpf", "{msg}"),
            PrintLevel::Debug => tracing::trace!(target: "libbpf", "{msg}"),
        }
    }
    libbpf_rs::set_print(Some((PrintLevel::Debug, print)));
}

/// The tracefs mount, mounting it at /sys/kernel/tracing if nothing is mounted (classic
/// tracepoints are attached through it).
pub fn tracefs_dir() -> Result<PathBuf, String> {
    for dir in ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"] {
        if Path::new(dir).join("events").is_dir() {
            return Ok(PathBuf::from(dir));
        }
    }
    let target = c"/sys/kernel/tracing";
    // SAFETY: all pointers are valid NUL-terminated strings; data is NULL as tracefs takes none.
    let rc = unsafe {
        libc::mount(
            c"tracefs".as_ptr(),
            target.as_ptr(),
            c"tracefs".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc == 0 {
        Ok(PathBuf::from("/sys/kernel/tracing"))
    } else {
        Err(format!(
            "tracefs is not mounted and mounting it failed: {}",
            std::io::Error::last_os_error()
        ))
    }
}

/// Polls the ring buffer in `map` and hands each record to `handle` until `stopping` turns
/// true, calling `tick` once per poll round: for tracers that refresh something the BPF side
/// reads.
///
/// While records come, the ring is drained every [`RING_POLL_INTERVAL`] (producers submit
/// without wakeups for that long after one that woke the reader). Once a round finds nothing
/// for twice that long, the reader sleeps in the kernel on the ring's epoll fd and `stop_fd`
/// (readable when the tracer is told to stop) for up to [`RING_IDLE_TIMEOUT`]: an idle tracer
/// wakes once per timeout instead of ten times a second. Without a `stop_fd` it polls on the
/// short interval throughout.
pub fn poll_ring_buffer_with_tick<F, T>(
    stopping: &dyn Fn() -> bool,
    stop_fd: Option<BorrowedFd<'_>>,
    map: &dyn MapCore,
    handle: F,
    mut tick: T,
) -> Result<()>
where
    F: FnMut(&[u8]) -> i32,
    T: FnMut(),
{
    let mut builder = RingBufferBuilder::new();
    builder
        .add(map, handle)
        .context("setting up the ring buffer reader")?;
    let ring = builder
        .build()
        .context("setting up the ring buffer reader")?;
    // SAFETY: the ring's epoll fd stays open as long as `ring`, which outlives `ring_fd`.
    let ring_fd = unsafe { BorrowedFd::borrow_raw(ring.epoll_fd()) };
    let waiter = Waiter::new(ring_fd, stop_fd).context("setting up the ring buffer reader")?;
    // Records came within this long: keep draining on the short interval.
    let quiet_after = RING_POLL_INTERVAL * 2;
    let mut last_record = Instant::now();
    while !stopping() {
        let idle = last_record.elapsed() >= quiet_after && waiter.has_stop_fd();
        waiter.wait(if idle {
            RING_IDLE_TIMEOUT
        } else {
            RING_POLL_INTERVAL
        })?;
        // Always consume after a wait: records submitted without a wakeup do not make the
        // epoll fd ready.
        let n = ring.consume_raw();
        if n < 0 {
            return Err(std::io::Error::from_raw_os_error(-n)).context("reading the ring buffer");
        }
        if n > 0 {
            last_record = Instant::now();
        }
        tick();
    }
    // Whatever the kernel queued before detaching is still delivered.
    ring.consume().context("reading the ring buffer")?;
    Ok(())
}

/// An epoll set of a ring buffer's epoll fd and, optionally, a stop fd.
struct Waiter {
    epoll: OwnedFd,
    has_stop: bool,
}

impl Waiter {
    fn new(ring: BorrowedFd<'_>, stop: Option<BorrowedFd<'_>>) -> std::io::Result<Waiter> {
        // SAFETY: epoll_create1 has no memory preconditions; a valid fd is owned below.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh epoll fd that nothing else owns.
        let epoll = unsafe { OwnedFd::from_raw_fd(fd) };
        let waiter = Waiter {
            epoll,
            has_stop: stop.is_some(),
        };
        waiter.add(ring)?;
        if let Some(stop) = stop {
            waiter.add(stop)?;
        }
        Ok(waiter)
    }

    fn add(&self, fd: BorrowedFd<'_>) -> std::io::Result<()> {
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: fd.as_raw_fd() as u64,
        };
        // SAFETY: both fds are open for the call; ev is a valid epoll_event.
        let rc = unsafe {
            libc::epoll_ctl(
                self.epoll.as_raw_fd(),
                libc::EPOLL_CTL_ADD,
                fd.as_raw_fd(),
                &mut ev,
            )
        };
        if rc < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }

    fn has_stop_fd(&self) -> bool {
        self.has_stop
    }

    /// Sleeps until a member is readable or `timeout`; a signal ends the wait early.
    fn wait(&self, timeout: Duration) -> Result<()> {
        let mut events = [libc::epoll_event { events: 0, u64: 0 }; 2];
        let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
        // SAFETY: events is a valid, writable array of the length passed.
        let rc = unsafe {
            libc::epoll_wait(
                self.epoll.as_raw_fd(),
                events.as_mut_ptr(),
                events.len() as i32,
                ms,
            )
        };
        if rc < 0 {
            let err = std::io::Error::last_os_error();
            // A signal (a debugger attaching, SIGSTOP/SIGCONT) interrupts the wait; not a fault.
            if err.kind() != std::io::ErrorKind::Interrupted {
                return Err(err).context("waiting on the ring buffer");
            }
        }
        Ok(())
    }
}

/// Turns CLOCK_BOOTTIME nanoseconds (`bpf_ktime_get_boot_ns`, what the programs stamp records
/// with) into wall-clock nanoseconds since the epoch; the offset is taken once per run.
#[derive(Debug, Clone, Copy)]
pub struct BootClock {
    offset_ns: i64,
}

impl BootClock {
    pub fn now() -> BootClock {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: ts is a valid, writable timespec.
        unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
        let boot = ts.tv_sec * 1_000_000_000 + ts.tv_nsec;
        BootClock {
            offset_ns: crate::record::now_ns() - boot,
        }
    }

    /// The wall-clock time of a CLOCK_BOOTTIME stamp.
    pub fn wall_ns(&self, boot_ns: u64) -> i64 {
        boot_ns as i64 + self.offset_ns
    }
}

/// The rodata every bianque program has (bpf/bianque.bpf.h): `counter_slots` and
/// `container_filter_mode`. Implemented for a skeleton by `bpf_skeleton!("stem", OpenStemSkel)`.
pub trait SharedRodata {
    /// `(counter_slots, container_filter_mode)`; None if the object has no .rodata.
    fn shared_rodata(&mut self) -> Option<(&mut u32, &mut u8)>;
}

/// A C struct that is valid for any bit pattern: integers and arrays of them, no pointers,
/// references, bools, enums or padding-sensitive invariants (what the skeleton generates from
/// a record's BTF).
///
/// # Safety
/// Implement only for `#[repr(C)]` types made of integers and arrays of integers.
pub unsafe trait Plain: Copy {}

/// Reads a C struct out of a ring-buffer record (records are not aligned for `T`).
pub fn read_record<T: Plain>(data: &[u8]) -> Option<T> {
    if data.len() < std::mem::size_of::<T>() {
        return None;
    }
    // SAFETY: the length was checked; T: Plain is valid for any bit pattern;
    // read_unaligned handles alignment.
    Some(unsafe { std::ptr::read_unaligned(data.as_ptr().cast::<T>()) })
}

/// A NUL-terminated C string from a fixed byte array.
pub fn c_str(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

/// The cgroup path (`/a/b`, `/` for the root) from the leaf-first directory names that
/// `read_cgroup_path()` (bpf/bianque.bpf.h) fills; `/…` marks a path cut at the depth limit.
/// Pass the names as `path.names.iter().map(|n| &n.s[..])`.
pub fn cgroup_path_from_names<'a>(
    depth: u32,
    truncated: bool,
    names: impl IntoIterator<Item = &'a [i8]>,
) -> String {
    let names: Vec<&[i8]> = names.into_iter().take(depth as usize).collect();
    let mut path = String::new();
    if truncated {
        path.push_str("/…");
    }
    for name in names.iter().rev() {
        let bytes: Vec<u8> = name.iter().map(|&c| c as u8).collect();
        path.push('/');
        path.push_str(&c_str(&bytes));
    }
    if path.is_empty() {
        path.push('/');
    }
    path
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_buffers_hold_two_seconds_at_the_limit() {
        assert_eq!(ring_buffer_bytes(100, 200), 64 << 10);
        assert_eq!(ring_buffer_bytes(1000, 200), 512 << 10);
        assert_eq!(ring_buffer_bytes(0, 200), 4 << 20);
        assert_eq!(ring_buffer_bytes(u32::MAX, 200), 16 << 20);
        assert!(ring_buffer_bytes(333, 97).is_power_of_two());
    }

    fn eventfd() -> OwnedFd {
        // SAFETY: eventfd has no memory preconditions; the fd is owned at once.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        assert!(fd >= 0);
        // SAFETY: a fresh fd nothing else owns.
        unsafe { OwnedFd::from_raw_fd(fd) }
    }

    fn signal(fd: &OwnedFd) {
        let one: u64 = 1;
        // SAFETY: 8 bytes from a valid u64 to an eventfd.
        assert_eq!(
            unsafe { libc::write(fd.as_raw_fd(), (&one as *const u64).cast(), 8) },
            8
        );
    }

    #[test]
    fn an_idle_reader_sleeps_until_the_stop_fd_or_its_ring_turns_readable() {
        use std::os::fd::AsFd;
        let (ring, stop) = (eventfd(), eventfd());
        let waiter = Waiter::new(ring.as_fd(), Some(stop.as_fd())).unwrap();
        assert!(waiter.has_stop_fd());
        // Nothing readable: the whole timeout passes.
        let t0 = Instant::now();
        waiter.wait(Duration::from_millis(50)).unwrap();
        assert!(t0.elapsed() >= Duration::from_millis(50));
        // The stop fd ends a long wait at once.
        signal(&stop);
        let t0 = Instant::now();
        waiter.wait(Duration::from_secs(30)).unwrap();
        assert!(t0.elapsed() < Duration::from_secs(5));
        // So does the ring.
        let waiter = Waiter::new(ring.as_fd(), None).unwrap();
        assert!(!waiter.has_stop_fd());
        signal(&ring);
        let t0 = Instant::now();
        waiter.wait(Duration::from_secs(30)).unwrap();
        assert!(t0.elapsed() < Duration::from_secs(5));
    }

    fn name(s: &str) -> [i8; 8] {
        let mut out = [0i8; 8];
        for (o, b) in out.iter_mut().zip(s.bytes()) {
            *o = b as i8;
        }
        out
    }

    #[test]
    fn cgroup_paths_are_joined_root_first() {
        let names = [name("leaf"), name("mid"), name("top"), name("")];
        let it = |n: usize| names[..n].iter().map(|n| &n[..]);
        assert_eq!(cgroup_path_from_names(3, false, it(4)), "/top/mid/leaf");
        assert_eq!(cgroup_path_from_names(1, true, it(4)), "/…/leaf");
        assert_eq!(cgroup_path_from_names(0, false, it(4)), "/");
        assert_eq!(cgroup_path_from_names(99, false, it(2)), "/mid/leaf");
    }
}
