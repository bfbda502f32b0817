//! Profiler overhead during a capture, measured side by side in one run (the machine is shared
//! and noisy): a CPU-bound workload runs fixed work units while windows without and with a
//! capture alternate (B C B C … B); each capture window is compared with the mean of the two
//! baseline windows around it, and the medians of those ratios are reported.
//!
//! - workload slowdown, two ways: work units per wall second (what a user sees, but it also
//!   moves with every other job on the machine) and work units per second of the worker
//!   thread's own CPU time (from `/proc/self/task/<tid>/schedstat`): the profiler's BPF program
//!   runs in the sampled task's context and is charged to it, so this ratio keeps the
//!   profiler's cost and drops the time other jobs took the CPU away;
//! - capture CPU: the CPU time of the thread that runs the capture (perf events, map reads,
//!   symbolization, folding) over the window, in % of one core, vs the same thread in the
//!   baseline window (asleep). This is what the agent spends on a capture; its other threads do
//!   the same work with or without one.
//!
//! `cargo bench --bench profiler` (root). Targets: workload slowdown ≤ 1 %, capture ≤ 2 % of a
//! core. `BQ_BENCH_ROUND_SECS` (default 5) and `BQ_BENCH_ROUNDS` (default 6) size the run.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;

use bianque::bpf::KernelSymbolizer;
use bianque::profiler::{profile, ProfileOptions};
use common::median;

/// Run time (ns) of one thread of this process from its schedstat (first field).
fn thread_ns(tid: i64) -> u64 {
    std::fs::read_to_string(format!("/proc/self/task/{tid}/schedstat"))
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn own_tid() -> i64 {
    // SAFETY: gettid has no preconditions.
    unsafe { libc::gettid() as i64 }
}

struct Window {
    units: u64,
    wall: f64,
    worker_cpu: f64,
    main_cpu: f64,
}

impl Window {
    fn per_wall(&self) -> f64 {
        self.units as f64 / self.wall
    }
    fn per_cpu(&self) -> f64 {
        self.units as f64 / self.worker_cpu.max(1e-9)
    }
    fn main_pct(&self) -> f64 {
        self.main_cpu / self.wall * 100.0
    }
}

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let round = Duration::from_secs(env("BQ_BENCH_ROUND_SECS", 5));
    let rounds = env("BQ_BENCH_ROUNDS", 6) as usize;
    // The workload: one thread counting work units as fast as it can.
    let units = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let worker_tid = Arc::new(AtomicI64::new(0));
    let (u2, s2, t2) = (units.clone(), stop.clone(), worker_tid.clone());
    let worker = std::thread::spawn(move || {
        t2.store(own_tid(), Ordering::Relaxed);
        let mut x = 0u64;
        while !s2.load(Ordering::Relaxed) {
            for i in 0..100_000u64 {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
            }
            u2.fetch_add(1, Ordering::Relaxed);
        }
        x
    });
    while worker_tid.load(Ordering::Relaxed) == 0 {
        std::thread::sleep(Duration::from_millis(1));
    }
    let wtid = worker_tid.load(Ordering::Relaxed);
    let main_tid = own_tid();
    let ksyms = KernelSymbolizer::new();
    // Warm the kernel symbol table so the first capture does not pay for loading it.
    let _ = ksyms.symbolize(0);

    let measure = |f: &mut dyn FnMut()| -> Window {
        let (u0, w0, m0, t0) = (
            units.load(Ordering::Relaxed),
            thread_ns(wtid),
            thread_ns(main_tid),
            Instant::now(),
        );
        f();
        Window {
            units: units.load(Ordering::Relaxed) - u0,
            wall: t0.elapsed().as_secs_f64(),
            worker_cpu: (thread_ns(wtid) - w0) as f64 / 1e9,
            main_cpu: (thread_ns(main_tid) - m0) as f64 / 1e9,
        }
    };
    let baseline = || measure(&mut || std::thread::sleep(round));
    // (samples, distinct stacks) of the last capture, and the capture thread's CPU (ns) in
    // set-up (load, attach), during the window, and after it (read, symbolize, fold).
    let last = std::cell::Cell::new((0u64, 0usize));
    let phases = std::cell::Cell::new([0u64; 3]);
    let capture = || {
        measure(&mut || {
            let opts = ProfileOptions {
                duration: round,
                ..Default::default()
            };
            let c0 = thread_ns(main_tid);
            let mut marks = [0u64; 2];
            let p = profile(&opts, &ksyms, |d| {
                marks[0] = thread_ns(main_tid);
                std::thread::sleep(d);
                marks[1] = thread_ns(main_tid);
                true
            })
            .expect("profile (needs root)");
            let c3 = thread_ns(main_tid);
            phases.set([marks[0] - c0, marks[1] - marks[0], c3 - marks[1]]);
            last.set((p.samples, p.stacks_total));
        })
    };

    let mut prev = baseline();
    let (mut r_wall, mut r_cpu, mut cap_pct, mut base_pct) = (vec![], vec![], vec![], vec![]);
    for r in 0..rounds {
        let c = capture();
        let (samples, stacks) = last.get();
        let ph = phases.get();
        let next = baseline();
        let base_wall = (prev.per_wall() + next.per_wall()) / 2.0;
        let base_cpu = (prev.per_cpu() + next.per_cpu()) / 2.0;
        r_wall.push(c.per_wall() / base_wall);
        r_cpu.push(c.per_cpu() / base_cpu);
        cap_pct.push(c.main_pct());
        base_pct.push((prev.main_pct() + next.main_pct()) / 2.0);
        eprintln!(
            "round {r}: workload/wall {:.4}, workload/CPU-s {:.4} of baseline; worker got {:.0}% of a core \
             (baseline {:.0}%); capture thread {:.3}% of a core (baseline {:.3}%); its CPU in set-up {:.1} ms, window {:.1} ms, \
             read+symbolize {:.1} ms; {samples} samples, {stacks} stacks",
            r_wall[r],
            r_cpu[r],
            c.worker_cpu / c.wall * 100.0,
            prev.worker_cpu / prev.wall * 100.0,
            cap_pct[r],
            base_pct[r],
            ph[0] as f64 / 1e6,
            ph[1] as f64 / 1e6,
            ph[2] as f64 / 1e6,
        );
        prev = next;
    }
    stop.store(true, Ordering::Relaxed);
    let _ = worker.join();
    let (rw, rc) = (median(r_wall), median(r_cpu));
    let (cp, bp) = (median(cap_pct), median(base_pct));
    println!(
        "profiler (99 Hz, all CPUs, {rounds} captures of {round:?} alternating with baselines):\n  \
         workload throughput per CPU-second during capture = {rc:.4} × without (slowdown {:.2}%, target ≤ 1%)\n  \
         workload throughput per wall second during capture = {rw:.4} × without (slowdown {:.2}%; includes other jobs' noise)\n  \
         capture CPU = {cp:.3}% of one core vs {bp:.3}% without (+{:.3} points, target ≤ 2%)",
        (1.0 - rc) * 100.0,
        (1.0 - rw) * 100.0,
        cp - bp
    );
}
