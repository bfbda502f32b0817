//! Per-CPU counters that BPF programs bump with `counter_add()` (bpf/bianque.bpf.h) and that
//! user space reads through mmap: a scrape costs no syscall, and the map outlives the program,
//! so counts survive a tracer restart.

use std::os::fd::{AsFd, OwnedFd};
use std::ptr::NonNull;

use anyhow::{bail, Context, Result};
use libbpf_rs::{MapCore, OpenMapMut};

/// Sizes the `counters` map for `slots` counters on every possible CPU. Call on the open
/// skeleton, and set the program's `counter_slots` rodata to the same `slots`.
pub fn size_counters_map(map: &mut OpenMapMut<'_>, slots: u32) -> Result<()> {
    let cpus = libbpf_rs::num_possible_cpus().context("counting possible CPUs")? as u32;
    map.set_max_entries(cpus * slots)
        .context("sizing the counters map")?;
    Ok(())
}

/// A tracer's counters across its runs: the map is sized on the first load and reused by every
/// later one (`reuse_fd`), so counters never go back when a tracer restarts.
#[derive(Default)]
pub struct CountersCell(std::sync::Mutex<Option<std::sync::Arc<PerCpuCounters>>>);

impl CountersCell {
    /// Before load: points the program's `counters` map at the existing one, or sizes a new one.
    pub fn prepare(&self, map: &mut OpenMapMut<'_>, slots: u32) -> Result<()> {
        match self.get() {
            Some(c) => map.reuse_fd(c.fd()).context("reusing the counters map"),
            None => size_counters_map(map, slots),
        }
    }

    /// After load: maps the counters the first time.
    pub fn adopt(&self, map: &dyn MapCore, slots: u32) -> Result<()> {
        let mut cell = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if cell.is_none() {
            *cell = Some(std::sync::Arc::new(PerCpuCounters::map(map, slots)?));
        }
        Ok(())
    }

    /// The counters, once a run has loaded them.
    pub fn get(&self) -> Option<std::sync::Arc<PerCpuCounters>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

pub struct PerCpuCounters {
    ptr: NonNull<u64>,
    len: usize,
    map_bytes: usize,
    slots: usize,
    // Keeps the map alive for as long as the mapping is used.
    _fd: OwnedFd,
}

// SAFETY: the mapping is plain shared memory; we only do volatile reads of u64 words.
unsafe impl Send for PerCpuCounters {}
// SAFETY: as above; concurrent readers only read.
unsafe impl Sync for PerCpuCounters {}

impl PerCpuCounters {
    /// Maps the loaded `counters` map (created with BPF_F_MMAPABLE).
    pub fn map(map: &dyn MapCore, slots: u32) -> Result<PerCpuCounters> {
        let fd = map
            .as_fd()
            .try_clone_to_owned()
            .context("duplicating the counters map fd")?;
        let entries = map.max_entries() as usize;
        let slots = slots as usize;
        if slots == 0 || entries % slots != 0 || map.value_size() != 8 {
            bail!("counters map has {entries} entries of {} bytes, not a multiple of {slots} u64 slots", map.value_size());
        }
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
        let map_bytes = (entries * 8).div_ceil(page) * page;
        // SAFETY: mapping a BPF array map fd read-only and shared is how the kernel exposes
        // BPF_F_MMAPABLE maps; the length is rounded up to whole pages as required.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_bytes,
                libc::PROT_READ,
                libc::MAP_SHARED,
                std::os::fd::AsRawFd::as_raw_fd(&fd),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error()).context("mmap of the counters map");
        }
        let ptr = NonNull::new(ptr.cast::<u64>()).context("mmap returned NULL")?;
        Ok(PerCpuCounters {
            ptr,
            len: entries,
            map_bytes,
            slots,
            _fd: fd,
        })
    }

    /// The sum over all CPUs of one slot.
    pub fn get(&self, slot: usize) -> u64 {
        if slot >= self.slots {
            return 0;
        }
        let mut sum = 0u64;
        let mut idx = slot;
        while idx < self.len {
            // SAFETY: idx < len, the number of u64 entries in the live mapping; the kernel
            // updates these words atomically, a volatile read sees a whole value.
            sum = sum.wrapping_add(unsafe { std::ptr::read_volatile(self.ptr.as_ptr().add(idx)) });
            idx += self.slots;
        }
        sum
    }

    /// One CPU's value of a slot (rows are CPUs in `0..cpus()`).
    pub fn get_on_cpu(&self, cpu: usize, slot: usize) -> u64 {
        let idx = cpu * self.slots + slot;
        if slot >= self.slots || idx >= self.len {
            return 0;
        }
        // SAFETY: idx < len, the number of u64 entries in the live mapping.
        unsafe { std::ptr::read_volatile(self.ptr.as_ptr().add(idx)) }
    }

    /// Number of CPU rows.
    pub fn cpus(&self) -> usize {
        self.len / self.slots
    }

    /// The map's fd, for `OpenMapMut::reuse_fd` when the tracer is loaded again.
    pub fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self._fd.as_fd()
    }

    pub fn slots(&self) -> usize {
        self.slots
    }
}

impl Drop for PerCpuCounters {
    fn drop(&mut self) {
        // SAFETY: ptr/map_bytes are exactly what mmap returned; nothing uses the mapping after.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.map_bytes) };
    }
}
