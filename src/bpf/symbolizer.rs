//! Kernel address → `symbol+0xoff`, from `/proc/kallsyms`.
//!
//! Answers are cached: drop locations and stack frames repeat, so after warm-up a lookup is a
//! hash probe. A few new addresses are resolved by one pass over kallsyms that keeps nothing but
//! their answers (~60 ms of CPU, no memory held). When new addresses keep coming (a profile,
//! many stacks), the symbolizer reads a table instead: the text symbols' addresses sorted and
//! their names in one string (~5 MB for ~120k symbols, where blazesym's kernel source kept about
//! 10 MB). The table is read again when an address falls outside every known symbol (a module
//! or BPF program loaded since), at most every [`RELOAD_EVERY`], and the agent drops it when it
//! has not been needed for a while ([`KernelSymbolizer::release_idle`]).

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

const CACHE_MAX: usize = 16 * 1024;
/// An offset past this is not inside the symbol found: the address belongs to code the table
/// does not know yet (kernel functions are far smaller).
const MAX_OFFSET: u64 = 1 << 20;
const RELOAD_EVERY: Duration = Duration::from_secs(10);
/// New addresses are resolved by a pass over kallsyms while there are at most this many at once
/// and at most [`SCANS_PER_WINDOW`] passes in [`SCAN_WINDOW`]; past either, the table is read.
const SCAN_MAX_ADDRS: usize = 256;
const SCANS_PER_WINDOW: usize = 3;
const SCAN_WINDOW: Duration = Duration::from_secs(60);

/// What stands for a kernel address when kallsyms shows this process no addresses: never the
/// raw address (a KASLR leak into the store, Elasticsearch and every reader of them).
pub const SYMBOLS_UNREADABLE: &str = "(kernel symbols unreadable)";

pub struct KernelSymbolizer {
    kallsyms: PathBuf,
    inner: Mutex<Inner>,
}

struct Inner {
    table: Option<Table>,
    loaded_at: Option<Instant>,
    /// When the table last answered a cache miss.
    used_at: Option<Instant>,
    /// Passes over kallsyms within the last [`SCAN_WINDOW`].
    scans: Vec<Instant>,
    scans_per_window: usize,
    cache: HashMap<u64, String>,
}

/// Text symbols sorted by address; `names[spans[2i]..spans[2i + 1]]` is symbol i's name, with
/// `\t[module]` for a module's.
#[derive(Default)]
struct Table {
    addrs: Vec<u64>,
    spans: Vec<u32>,
    names: String,
}

impl Default for KernelSymbolizer {
    fn default() -> Self {
        Self::new()
    }
}

impl KernelSymbolizer {
    pub fn new() -> KernelSymbolizer {
        Self::with_kallsyms("/proc/kallsyms")
    }

    /// A symbolizer reading another kallsyms-format file (tests).
    pub fn with_kallsyms(path: impl Into<PathBuf>) -> KernelSymbolizer {
        KernelSymbolizer {
            kallsyms: path.into(),
            inner: Mutex::new(Inner {
                table: None,
                loaded_at: None,
                used_at: None,
                scans: Vec::new(),
                scans_per_window: SCANS_PER_WINDOW,
                cache: HashMap::new(),
            }),
        }
    }

    /// `name+0xoff` (`name+0xoff [module]` in a module); the hex address when kallsyms was read
    /// and does not know it; [`SYMBOLS_UNREADABLE`] when kallsyms cannot be read or shows no
    /// addresses (no CAP_SYSLOG, `kernel.kptr_restrict`): the raw address is then exactly what
    /// the kernel hides from this reader, and a record must not carry it.
    pub fn symbolize(&self, addr: u64) -> String {
        self.symbolize_many(&[addr]).pop().unwrap_or_default()
    }

    /// [`Self::symbolize`] for many addresses, in their order, under one lock and with at most
    /// one read of kallsyms.
    pub fn symbolize_many(&self, addrs: &[u64]) -> Vec<String> {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.symbolize_many(&self.kallsyms, addrs)
    }

    /// Drops the symbol table if no cache miss needed it for `idle` (the cache of answers
    /// stays); the next miss reads kallsyms again. Returns whether it dropped one.
    pub fn release_idle(&self, idle: Duration) -> bool {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if inner.table.is_some() && inner.used_at.is_none_or(|t| t.elapsed() >= idle) {
            inner.table = None;
            inner.loaded_at = None;
            return true;
        }
        false
    }

    #[cfg(test)]
    fn has_table(&self) -> bool {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.table.is_some()
    }

    /// Always reads the table, never scans (tests of the table path).
    #[cfg(test)]
    fn table_only(self) -> KernelSymbolizer {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .scans_per_window = 0;
        self
    }

    /// Symbolizes a kernel stack (innermost first), skipping zero frames and the frames of the
    /// BPF program that took it (`bpf_prog_*`, `bpf_trace_run*`, `__traceiter_*`: `bpf_get_stack`
    /// from a tracepoint starts inside them).
    pub fn stack(&self, addrs: &[u64]) -> Vec<String> {
        let n = addrs.iter().take_while(|&&a| a != 0).count();
        let mut frames = self.symbolize_many(&addrs[..n]);
        // A stack of markers says no more than one.
        if frames.iter().all(|f| f == SYMBOLS_UNREADABLE) {
            frames.truncate(1);
            return frames;
        }
        let bpf = frames
            .iter()
            .take_while(|f| {
                f.starts_with("bpf_prog_")
                    || f.starts_with("bpf_trace_run")
                    || f.starts_with("__traceiter_")
            })
            .count();
        frames.drain(..bpf);
        frames
    }
}

impl Inner {
    fn symbolize_many(&mut self, path: &Path, addrs: &[u64]) -> Vec<String> {
        // Hits are taken before anything is resolved: reading a new table clears the cache.
        let mut out: Vec<Option<String>> =
            addrs.iter().map(|a| self.cache.get(a).cloned()).collect();
        let mut misses: Vec<u64> = addrs
            .iter()
            .zip(&out)
            .filter(|(_, hit)| hit.is_none())
            .map(|(&a, _)| a)
            .collect();
        let mut read_ok = true;
        if !misses.is_empty() {
            misses.sort_unstable();
            misses.dedup();
            let answers;
            (answers, read_ok) = self.resolve(path, &misses);
            if self.cache.len() + misses.len() > CACHE_MAX {
                self.cache.clear();
            }
            for (slot, addr) in out.iter_mut().zip(addrs) {
                if slot.is_none() {
                    if let Ok(i) = misses.binary_search(addr) {
                        slot.clone_from(&answers[i]);
                    }
                }
            }
            // An address that a good read of kallsyms does not know stays a hex address (it is
            // not looked up at every record); after a failed read it is asked again next time.
            for (addr, answer) in misses.into_iter().zip(answers) {
                match answer {
                    Some(answer) => {
                        self.cache.insert(addr, answer);
                    }
                    None if read_ok => {
                        self.cache.insert(addr, format!("{addr:#x}"));
                    }
                    None => {}
                }
            }
        }
        out.into_iter()
            .zip(addrs)
            .map(|(s, a)| match s {
                Some(s) => s,
                None if read_ok => format!("{a:#x}"),
                None => SYMBOLS_UNREADABLE.to_string(),
            })
            .collect()
    }

    /// Answers for `misses` (sorted, distinct): by a pass over kallsyms while new addresses are
    /// few, else from the table; and whether a good read of kallsyms backs them.
    fn resolve(&mut self, path: &Path, misses: &[u64]) -> (Vec<Option<String>>, bool) {
        let now = Instant::now();
        self.used_at = Some(now);
        self.scans.retain(|t| now.duration_since(*t) < SCAN_WINDOW);
        if self.table.is_none()
            && misses.len() <= SCAN_MAX_ADDRS
            && self.scans.len() < self.scans_per_window
        {
            self.scans.push(now);
            match scan(path, misses) {
                Ok(answers) => return (answers, true),
                Err(e) => {
                    tracing::warn!("kernel symbols: reading {}: {e}", path.display());
                    return (vec![None; misses.len()], false);
                }
            }
        }
        let lookup = |t: &Option<Table>| -> Vec<Option<String>> {
            misses
                .iter()
                .map(|&a| t.as_ref().and_then(|t| t.lookup(a)))
                .collect()
        };
        let mut answers = lookup(&self.table);
        let stale = self.loaded_at.is_none_or(|t| t.elapsed() >= RELOAD_EVERY);
        if answers.iter().any(Option::is_none) && stale {
            self.loaded_at = Some(now);
            match Table::read(path) {
                Ok(t) => {
                    // Answers from the old table may be wrong for code that moved.
                    self.cache.clear();
                    self.table = Some(t);
                }
                Err(e) => tracing::warn!("kernel symbols: reading {}: {e}", path.display()),
            }
            answers = lookup(&self.table);
        }
        let read_ok = self.table.is_some();
        (answers, read_ok)
    }
}

/// One pass over kallsyms for `addrs` (sorted, distinct): the text symbol at or below each,
/// within [`MAX_OFFSET`].
fn scan(path: &Path, addrs: &[u64]) -> std::io::Result<Vec<Option<String>>> {
    // best[i]: the highest symbol start seen so far at or below addrs[i], and its name. Nothing
    // promises the file is sorted by address (this kernel's is, modules included), so every
    // address within MAX_OFFSET above a symbol is checked, not just a prefix of them.
    let mut best: Vec<(u64, String)> = vec![(0, String::new()); addrs.len()];
    let mut symbols = 0usize;
    for_each_text_symbol(path, |sym, name| {
        symbols += 1;
        let first = addrs.partition_point(|&a| a < sym);
        for (addr, slot) in addrs[first..].iter().zip(&mut best[first..]) {
            if addr - sym >= MAX_OFFSET {
                break;
            }
            // Among aliases at one address the last in the file wins, as in the table.
            if slot.0 <= sym {
                slot.0 = sym;
                slot.1.clear();
                slot.1.push_str(name);
            }
        }
        true
    })?;
    if symbols == 0 {
        // All addresses read as 0 (no CAP_SYSLOG, kptr_restrict) or an empty file.
        return Err(std::io::Error::other("no text symbols with addresses"));
    }
    Ok(addrs
        .iter()
        .zip(best)
        .map(|(&addr, (sym, name))| (sym != 0).then(|| render(&name, addr - sym)))
        .collect())
}

/// `name+0xoff`, or `name+0xoff [module]` for kallsyms' `name\t[module]`.
fn render(name: &str, off: u64) -> String {
    match name.split_once('\t') {
        Some((name, module)) => format!("{name}+{off:#x} {module}"),
        None => format!("{name}+{off:#x}"),
    }
}

impl Table {
    fn read(path: &Path) -> std::io::Result<Table> {
        let mut entries: Vec<(u64, u32, u32)> = Vec::with_capacity(160_000);
        let mut names = String::with_capacity(4 << 20);
        for_each_text_symbol(path, |addr, name| {
            if names.len() + name.len() <= u32::MAX as usize {
                let start = names.len() as u32;
                names.push_str(name);
                entries.push((addr, start, names.len() as u32));
            }
            true
        })?;
        if entries.is_empty() {
            return Err(std::io::Error::other("no text symbols with addresses"));
        }
        // Stable: among aliases at one address, lookups pick the last in the file.
        entries.sort_by_key(|e| e.0);
        // Names stay in file order; `spans` maps each sorted symbol to its name's range.
        let mut table = Table {
            addrs: Vec::with_capacity(entries.len()),
            spans: Vec::with_capacity(entries.len() * 2),
            names,
        };
        for (addr, start, end) in entries {
            table.addrs.push(addr);
            table.spans.push(start);
            table.spans.push(end);
        }
        table.names.shrink_to_fit();
        Ok(table)
    }

    fn lookup(&self, addr: u64) -> Option<String> {
        let i = self.addrs.partition_point(|&a| a <= addr).checked_sub(1)?;
        let off = addr - self.addrs[i];
        if off >= MAX_OFFSET {
            return None;
        }
        let name = self
            .names
            .get(self.spans[2 * i] as usize..self.spans[2 * i + 1] as usize)?;
        Some(render(name, off))
    }
}

/// The address of text symbol `name` in the core kernel (not a module) in the kallsyms file at
/// `path`.
pub fn kallsyms_address(path: &Path, name: &str) -> Option<u64> {
    let mut found = None;
    for_each_text_symbol(path, |addr, sym| {
        if sym == name {
            found = Some(addr);
        }
        found.is_none()
    })
    .ok()?;
    found
}

/// Calls `f(address, name)` for each code symbol of the kallsyms-format file at `path` (nonzero
/// address; `name\t[module]` in a module), in file order, while `f` returns `true`.
fn for_each_text_symbol(path: &Path, mut f: impl FnMut(u64, &str) -> bool) -> std::io::Result<()> {
    let mut reader = BufReader::with_capacity(64 * 1024, File::open(path)?);
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        if let Some((addr, kind, name)) = parse_line(&line) {
            if addr != 0 && is_text(kind) && !f(addr, name) {
                return Ok(());
            }
        }
    }
}

/// One kallsyms line: address, type letter, name (`name\t[module]` in a module).
fn parse_line(line: &str) -> Option<(u64, u8, &str)> {
    let (addr, rest) = line.split_once(' ')?;
    let (kind, name) = rest.split_once(' ')?;
    let addr = u64::from_str_radix(addr, 16).ok()?;
    Some((addr, *kind.as_bytes().first()?, name.trim_end()))
}

/// Code symbols only: data symbols would swallow addresses past the end of the text.
fn is_text(kind: u8) -> bool {
    matches!(kind, b't' | b'T' | b'w' | b'W')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_a_kallsyms_address() {
        let kallsyms = std::fs::read_to_string("/proc/kallsyms").unwrap();
        let line = kallsyms
            .lines()
            .find(|l| l.ends_with(" __udp4_lib_rcv"))
            .expect("symbol in kallsyms");
        let addr = u64::from_str_radix(line.split_whitespace().next().unwrap(), 16).unwrap();
        let s = KernelSymbolizer::new();
        assert_eq!(s.symbolize(addr + 0x10), "__udp4_lib_rcv+0x10");
        assert_eq!(s.symbolize(addr + 0x10), "__udp4_lib_rcv+0x10", "cached");
    }

    #[test]
    fn batch_picks_the_symbol_below_each_address() {
        let path = std::env::temp_dir().join(format!("bianque-kallsyms-{}", std::process::id()));
        // Unsorted like the real file (modules after the core), with a data symbol to ignore
        // and a module suffix to keep.
        std::fs::write(
            &path,
            "ffffffff81000000 T _stext\n\
             ffffffff81000100 t helper\n\
             ffffffffc0000000 t mod_fn\t[nf_tables]\n\
             ffffffff81000080 D some_data\n\
             ffffffff81000200 T other\n",
        )
        .unwrap();
        for s in [
            KernelSymbolizer::with_kallsyms(&path),
            KernelSymbolizer::with_kallsyms(&path).table_only(),
        ] {
            let got = s.symbolize_many(&[
                0xffffffff81000210,
                0xffffffff81000090,
                0xffffffffc0000004,
                0x10,
                0xffffffff81000090,
                0xffffffff81000000 + MAX_OFFSET + 0x300,
            ]);
            assert_eq!(
                got,
                [
                    "other+0x10",
                    "_stext+0x90",
                    "mod_fn+0x4 [nf_tables]",
                    "0x10",
                    "_stext+0x90",
                    "0xffffffff81100300",
                ]
            );
            assert_eq!(s.stack(&[0xffffffff81000100, 0, 5]), ["helper+0x0"]);
        }
        std::fs::remove_file(&path).unwrap();
    }

    /// The pass over kallsyms and the table agree on real addresses from all over the kernel,
    /// in one batch (the file is not sorted by address).
    #[test]
    fn a_pass_and_the_table_agree_on_the_real_kallsyms() {
        let t = Table::read(Path::new("/proc/kallsyms")).unwrap();
        let n = t.addrs.len();
        let mut addrs: Vec<u64> = (0..SCAN_MAX_ADDRS)
            .map(|i| t.addrs[i * (n - 1) / (SCAN_MAX_ADDRS - 1)] + (i as u64 % 7) * 3)
            .collect();
        addrs.sort_unstable();
        addrs.dedup();
        let want: Vec<Option<String>> = addrs.iter().map(|&a| t.lookup(a)).collect();
        let got = scan(Path::new("/proc/kallsyms"), &addrs).unwrap();
        for ((a, w), g) in addrs.iter().zip(&want).zip(&got) {
            assert!(w.is_some(), "{a:#x} not in the table");
            assert_eq!(g, w, "{a:#x}");
        }
    }

    #[test]
    fn reads_the_real_kallsyms_compactly() {
        let t = Table::read(Path::new("/proc/kallsyms")).unwrap();
        assert!(t.addrs.len() > 10_000, "{}", t.addrs.len());
        assert!(t.addrs.windows(2).all(|w| w[0] <= w[1]));
        let bytes = t.addrs.capacity() * 8 + t.spans.capacity() * 4 + t.names.capacity();
        assert!(bytes < 8 << 20, "{bytes} bytes");
    }

    #[test]
    fn finds_a_core_symbol_address() {
        let addr = kallsyms_address(Path::new("/proc/kallsyms"), "__udp4_lib_rcv").unwrap();
        assert_eq!(
            KernelSymbolizer::new().symbolize(addr),
            "__udp4_lib_rcv+0x0"
        );
        assert_eq!(
            kallsyms_address(Path::new("/proc/kallsyms"), "no_such_symbol_xyz"),
            None
        );
    }

    #[test]
    fn an_idle_table_is_released_and_read_again() {
        let s = KernelSymbolizer::new().table_only();
        let addr = kallsyms_address(Path::new("/proc/kallsyms"), "__udp4_lib_rcv").unwrap();
        assert_eq!(s.symbolize(addr + 1), "__udp4_lib_rcv+0x1");
        assert!(!s.release_idle(Duration::from_secs(60)), "just used");
        assert!(s.release_idle(Duration::ZERO));
        assert!(!s.release_idle(Duration::ZERO), "already released");
        assert_eq!(s.symbolize(addr + 1), "__udp4_lib_rcv+0x1", "cached answer");
        assert_eq!(s.symbolize(addr + 2), "__udp4_lib_rcv+0x2", "read again");
    }

    #[test]
    fn few_new_addresses_hold_no_table_until_they_keep_coming() {
        let s = KernelSymbolizer::new();
        let addr = kallsyms_address(Path::new("/proc/kallsyms"), "__udp4_lib_rcv").unwrap();
        for i in 0..SCANS_PER_WINDOW as u64 {
            assert_eq!(s.symbolize(addr + i), format!("__udp4_lib_rcv+{i:#x}"));
            assert!(!s.has_table(), "pass {i} kept no table");
        }
        let many: Vec<u64> = (0..SCAN_MAX_ADDRS as u64 + 1)
            .map(|i| addr + 0x10 + i)
            .collect();
        let fresh = KernelSymbolizer::new();
        assert_eq!(fresh.symbolize_many(&many)[0], "__udp4_lib_rcv+0x10");
        assert!(fresh.has_table(), "a large batch reads the table");
        let n = SCANS_PER_WINDOW as u64;
        assert_eq!(s.symbolize(addr + n), format!("__udp4_lib_rcv+{n:#x}"));
        assert!(
            s.has_table(),
            "a steady stream of new addresses reads the table"
        );
    }

    #[test]
    fn a_kallsyms_without_addresses_answers_nothing_and_caches_nothing() {
        let path = std::env::temp_dir().join(format!("bianque-zeros-{}", std::process::id()));
        std::fs::write(
            &path,
            "0000000000000000 T _stext\n0000000000000000 t helper\n",
        )
        .unwrap();
        let s = KernelSymbolizer::with_kallsyms(&path);
        assert_eq!(s.symbolize(0xffffffff81000010), SYMBOLS_UNREADABLE);
        assert_eq!(
            s.stack(&[0xffffffff81000010, 0xffffffff81000020, 0]),
            [SYMBOLS_UNREADABLE],
            "one marker for a whole stack"
        );
        std::fs::write(&path, "ffffffff81000000 T _stext\n").unwrap();
        assert_eq!(
            s.symbolize(0xffffffff81000010),
            "_stext+0x10",
            "asked again"
        );
        std::fs::remove_file(&path).unwrap();
    }

    /// Reading a new table clears the cache; the cached frames of the same stack must still be
    /// answered (they came back as hex addresses once).
    #[test]
    fn cached_frames_survive_a_table_read_in_the_same_stack() {
        let s = KernelSymbolizer::new().table_only();
        let a = kallsyms_address(Path::new("/proc/kallsyms"), "__udp4_lib_rcv").unwrap();
        let b = kallsyms_address(Path::new("/proc/kallsyms"), "handle_softirqs").unwrap();
        assert_eq!(s.symbolize(a + 1), "__udp4_lib_rcv+0x1");
        assert!(s.release_idle(Duration::ZERO));
        assert_eq!(
            s.stack(&[a + 1, b + 2]),
            ["__udp4_lib_rcv+0x1", "handle_softirqs+0x2"]
        );
    }

    #[test]
    fn unreadable_kallsyms_gives_no_address() {
        let s = KernelSymbolizer::with_kallsyms("/nonexistent/kallsyms");
        assert_eq!(s.symbolize(0x1234), SYMBOLS_UNREADABLE);
    }

    #[test]
    fn an_address_a_readable_kallsyms_does_not_know_stays_hex() {
        let path = std::env::temp_dir().join(format!("bianque-known-{}", std::process::id()));
        std::fs::write(&path, "ffffffff81000000 T _stext\n").unwrap();
        let s = KernelSymbolizer::with_kallsyms(&path);
        assert_eq!(s.symbolize(0xffffffff81000010), "_stext+0x10");
        // Below every symbol: the reader may see addresses, so this one is no secret to it.
        assert_eq!(s.symbolize(0x1000), "0x1000");
        std::fs::remove_file(&path).unwrap();
    }
}
