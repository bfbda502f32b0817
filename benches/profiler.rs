//! Profiler overhead during a capture, measured side by side in one run (the machine is shared
//! and noisy): a CPU-bound workload runs fixed work units while rounds with and without a
//! capture alternate; reported as ratios. The capture's own user-space CPU (reading the maps,
//! symbolizing) is its thread's CPU time as a share of one core over the window.
//!
//! `cargo bench --bench profiler` (root). Targets: workload slowdown ≤ 1 %, agent ≤ 2 % of a core.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bianque::autotracing::profiler::{profile, ProfileOptions};
use bianque::bpf::KernelSymbolizer;

fn thread_cpu() -> Duration {
    // SAFETY: getrusage writes into the zeroed struct we pass; RUSAGE_THREAD is valid on Linux.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above; ru outlives the call.
    unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut ru) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

fn main() {
    let round = Duration::from_secs(
        std::env::var("BQ_BENCH_ROUND_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(3),
    );
    let rounds: usize = std::env::var("BQ_BENCH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(6);
    // The workload: one thread counting work units as fast as it can.
    let units = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let (u2, s2) = (units.clone(), stop.clone());
    let worker = std::thread::spawn(move || {
        let mut x = 0u64;
        while !s2.load(Ordering::Relaxed) {
            for i in 0..100_000u64 {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
            }
            u2.fetch_add(1, Ordering::Relaxed);
        }
        x
    });
    let ksyms = KernelSymbolizer::new();
    let mut ratios = Vec::new();
    let mut agent_pct = Vec::new();
    for r in 0..rounds {
        // Baseline window.
        let u0 = units.load(Ordering::Relaxed);
        let t0 = Instant::now();
        std::thread::sleep(round);
        let base = (units.load(Ordering::Relaxed) - u0) as f64 / t0.elapsed().as_secs_f64();
        // Capture window.
        let opts = ProfileOptions {
            duration: round,
            ..Default::default()
        };
        let c0 = thread_cpu();
        let u1 = units.load(Ordering::Relaxed);
        let t1 = Instant::now();
        let p = profile(&opts, &ksyms, |d| {
            std::thread::sleep(d);
            true
        })
        .expect("profile (needs root)");
        let wall = t1.elapsed().as_secs_f64();
        let with = (units.load(Ordering::Relaxed) - u1) as f64 / wall;
        let cpu = (thread_cpu() - c0).as_secs_f64();
        ratios.push(with / base);
        agent_pct.push(cpu / wall * 100.0);
        eprintln!(
            "round {r}: workload {:.4} of baseline, capture CPU {:.2}% of a core, {} samples, {} stacks",
            with / base,
            cpu / wall * 100.0,
            p.samples,
            p.stacks_total
        );
    }
    stop.store(true, Ordering::Relaxed);
    let _ = worker.join();
    let median = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    let ratio = median(&mut ratios);
    let agent = median(&mut agent_pct);
    println!(
        "profiler: workload throughput during capture = {ratio:.4} × without (slowdown {:.2}%, target ≤ 1%); \
         capture CPU = {agent:.2}% of one core (target ≤ 2%); 99 Hz, {rounds} rounds of {round:?}",
        (1.0 - ratio) * 100.0
    );
}
