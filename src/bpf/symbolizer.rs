//! Kernel address → `symbol+0xoff`, with a cache: drop locations and stack frames repeat, so
//! after warm-up a lookup is a hash probe.

use std::collections::HashMap;
use std::sync::Mutex;

use blazesym::symbolize::source::{Kernel, Source};
use blazesym::symbolize::{Input, Symbolized, Symbolizer};
use blazesym::MaybeDefault;

const CACHE_MAX: usize = 16 * 1024;

pub struct KernelSymbolizer {
    inner: Mutex<Inner>,
}

struct Inner {
    symbolizer: Symbolizer,
    cache: HashMap<u64, String>,
}

// SAFETY: blazesym's Symbolizer is !Send only because it keeps `Rc`s in its internal caches.
// Those `Rc`s never leave it: every call happens under the Mutex, and each result is turned into
// an owned String before the lock is released, so no two threads ever touch the same `Rc`.
unsafe impl Send for Inner {}

impl Default for KernelSymbolizer {
    fn default() -> Self {
        Self::new()
    }
}

impl KernelSymbolizer {
    pub fn new() -> KernelSymbolizer {
        KernelSymbolizer {
            inner: Mutex::new(Inner {
                symbolizer: Symbolizer::new(),
                cache: HashMap::new(),
            }),
        }
    }

    /// `name+0xoff`, or the hex address when it cannot be resolved.
    pub fn symbolize(&self, addr: u64) -> String {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = inner.cache.get(&addr) {
            return s.clone();
        }
        let src = Source::Kernel(Kernel {
            kallsyms: MaybeDefault::Default,
            vmlinux: MaybeDefault::None,
            debug_syms: false,
            ..Default::default()
        });
        let text = match inner
            .symbolizer
            .symbolize_single(&src, Input::AbsAddr(addr))
        {
            Ok(Symbolized::Sym(sym)) => format!("{}+{:#x}", sym.name, sym.offset),
            _ => format!("{addr:#x}"),
        };
        if inner.cache.len() >= CACHE_MAX {
            inner.cache.clear();
        }
        inner.cache.insert(addr, text.clone());
        text
    }

    /// Symbolizes a kernel stack (innermost first), skipping zero frames and the frames of the
    /// BPF program that took it (`bpf_prog_*`, `bpf_trace_run*`: `bpf_get_stack` from a
    /// tracepoint starts inside them).
    pub fn stack(&self, addrs: &[u64]) -> Vec<String> {
        let mut frames: Vec<String> = addrs
            .iter()
            .take_while(|&&a| a != 0)
            .map(|&a| self.symbolize(a))
            .collect();
        let bpf = frames
            .iter()
            .take_while(|f| f.starts_with("bpf_prog_") || f.starts_with("bpf_trace_run"))
            .count();
        frames.drain(..bpf);
        frames
    }
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
}
