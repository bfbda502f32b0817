//! Latency histograms kept by BPF programs (`bpf/histogram.bpf.h`) and exported as Prometheus
//! histograms in seconds: host series from the mmapped per-CPU counters, keyed series (cgroups,
//! disks) from per-CPU hash maps, and the cgroup "wanted" list BPF filters on.

use std::collections::HashSet;

use anyhow::Result;
use libbpf_rs::{MapCore, MapFlags, MapHandle};

use crate::bpf::PerCpuCounters;
use crate::exposition::MetricSink;

/// Mirrors `HIST_MAX_BUCKETS` in bpf/histogram.bpf.h.
pub const MAX_BUCKETS: usize = 24;
/// Size of `struct hist` (u64 b[MAX_BUCKETS + 2]).
pub const HIST_VALUE_SIZE: usize = (MAX_BUCKETS + 2) * 8;

/// Upper bounds in seconds, increasing, at most [`MAX_BUCKETS`].
pub fn bounds_ns(bounds_s: &[f64]) -> [u64; MAX_BUCKETS] {
    let mut out = [0u64; MAX_BUCKETS];
    for (o, b) in out.iter_mut().zip(bounds_s) {
        *o = (b * 1e9).round() as u64;
    }
    out
}

/// Counter slots a tracer needs for `series` host histograms.
pub fn slots(series: usize, nbounds: usize) -> u32 {
    (series * (nbounds + 2)) as u32
}

/// One histogram's raw numbers: non-cumulative counts per bucket plus the overflow bucket,
/// and the sum in ns.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Hist {
    pub counts: Vec<u64>,
    pub sum_ns: u64,
}

impl Hist {
    pub fn new(nbounds: usize) -> Hist {
        Hist {
            counts: vec![0; nbounds + 1],
            sum_ns: 0,
        }
    }

    /// Series `series` summed over CPUs (or one CPU) from the per-CPU counters.
    pub fn from_counters(
        c: &PerCpuCounters,
        series: usize,
        nbounds: usize,
        cpu: Option<usize>,
    ) -> Hist {
        let base = series * (nbounds + 2);
        let get = |slot| match cpu {
            Some(cpu) => c.get_on_cpu(cpu, slot),
            None => c.get(slot),
        };
        Hist {
            counts: (0..=nbounds).map(|i| get(base + i)).collect(),
            sum_ns: get(base + nbounds + 1),
        }
    }

    /// A `struct hist` per CPU (from `lookup_percpu`), summed.
    pub fn from_percpu(values: &[Vec<u8>], nbounds: usize) -> Hist {
        let mut h = Hist::new(nbounds);
        for v in values {
            if v.len() < HIST_VALUE_SIZE {
                continue;
            }
            let word = |i: usize| {
                let mut b = [0u8; 8];
                b.copy_from_slice(&v[i * 8..i * 8 + 8]);
                u64::from_ne_bytes(b)
            };
            for (i, c) in h.counts.iter_mut().enumerate() {
                *c = c.wrapping_add(word(i));
            }
            h.sum_ns = h.sum_ns.wrapping_add(word(MAX_BUCKETS + 1));
        }
        h
    }

    /// Counts between consecutive `edges` (seconds, each one of `bounds_s`): HuaTuo's "zones"
    /// ([0, e0), [e0, e1), …, [e_last, ∞)). Bucket bounds are inclusive upper bounds, so a
    /// value exactly on an edge lands in the lower zone (HuaTuo: upper); close enough.
    pub fn zones(&self, bounds_s: &[f64], edges: &[f64]) -> Vec<u64> {
        let mut out = vec![0u64; edges.len() + 1];
        for (i, n) in self.counts.iter().enumerate() {
            let upper = bounds_s.get(i).copied().unwrap_or(f64::INFINITY);
            let zone = edges.iter().filter(|&&e| upper > e + 1e-12).count();
            out[zone] += n;
        }
        out
    }

    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Writes it as a Prometheus histogram in seconds. `keep` limits the `le` buckets written
    /// (a subset of `bounds_s`, to save series per container); cumulative counts stay exact.
    pub fn write(
        &self,
        out: &mut MetricSink,
        labels: &[(&str, &str)],
        more: &[(&str, &str)],
        bounds_s: &[f64],
        keep: Option<&[f64]>,
    ) {
        let mut cum = 0u64;
        let mut buckets = Vec::with_capacity(bounds_s.len());
        for (i, &b) in bounds_s.iter().enumerate() {
            cum += self.counts.get(i).copied().unwrap_or(0);
            if keep.is_none_or(|k| k.iter().any(|&x| (x - b).abs() < 1e-12)) {
                buckets.push((b, cum));
            }
        }
        let total = self.count();
        out.histogram(labels, more, &buckets, self.sum_ns as f64 / 1e9, total);
    }
}

/// Every key of a per-CPU hash of `struct hist`, with its summed histogram.
pub fn read_keyed(map: &MapHandle, nbounds: usize) -> Result<Vec<(u64, Hist)>> {
    let mut out = Vec::new();
    for key in map.keys() {
        if key.len() != 8 {
            continue;
        }
        if let Some(values) = map.lookup_percpu(&key, MapFlags::ANY)? {
            let mut k = [0u8; 8];
            k.copy_from_slice(&key);
            out.push((u64::from_ne_bytes(k), Hist::from_percpu(&values, nbounds)));
        }
    }
    Ok(out)
}

/// Makes the BPF `cg_wanted` set equal `want`; histograms of cgroups no longer wanted are
/// dropped from `hist` (their containers are gone).
pub fn sync_wanted(
    wanted: &MapHandle,
    hist: &MapHandle,
    current: &mut HashSet<u64>,
    want: &HashSet<u64>,
) -> Result<()> {
    sync_wanted_with(wanted, current, want, |id| {
        let _ = hist.delete(&id.to_ne_bytes());
    })
}

/// [`sync_wanted`] for histograms keyed otherwise: `gone` is called with each cgroup id no
/// longer wanted, to drop its histograms.
pub fn sync_wanted_with(
    wanted: &MapHandle,
    current: &mut HashSet<u64>,
    want: &HashSet<u64>,
    mut gone: impl FnMut(u64),
) -> Result<()> {
    for id in want.difference(&current.clone()) {
        wanted.update(&id.to_ne_bytes(), &[1u8], MapFlags::ANY)?;
        current.insert(*id);
    }
    let stale: Vec<u64> = current.difference(want).copied().collect();
    for id in stale {
        let _ = wanted.delete(&id.to_ne_bytes());
        gone(id);
        current.remove(&id);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_cumulative_buckets_and_subsets() {
        let h = Hist {
            counts: vec![1, 2, 3, 4],
            sum_ns: 2_500_000_000,
        };
        let bounds = [0.001, 0.01, 0.1];
        let mut s = MetricSink::new("bianque", "x");
        s.family("lat_seconds", "h", crate::exposition::Kind::Histogram);
        h.write(&mut s, &[], &[], &bounds, Some(&[0.01]));
        assert_eq!(
            s.as_str().lines().skip(2).collect::<Vec<_>>(),
            [
                "bianque_x_lat_seconds_bucket{le=\"0.01\"} 3",
                "bianque_x_lat_seconds_bucket{le=\"+Inf\"} 10",
                "bianque_x_lat_seconds_sum 2.5",
                "bianque_x_lat_seconds_count 10"
            ]
        );
    }

    #[test]
    fn sums_percpu_values() {
        let mut v = vec![0u8; HIST_VALUE_SIZE];
        v[8..16].copy_from_slice(&3u64.to_ne_bytes());
        v[(MAX_BUCKETS + 1) * 8..].copy_from_slice(&100u64.to_ne_bytes());
        let h = Hist::from_percpu(&[v.clone(), v, vec![1, 2]], 2);
        assert_eq!(h.counts, vec![0, 6, 0]);
        assert_eq!(h.sum_ns, 200);
        assert_eq!(bounds_ns(&[0.000001, 1.0])[..3], [1000, 1_000_000_000, 0]);
    }
}
