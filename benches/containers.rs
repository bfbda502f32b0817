//! Container attribution cost: per event (a cache hit: memory cgroup id → container) and a full
//! resync over 1,000 fixture containers. Targets: ≤ 1 µs per event, ≤ 50 ms per resync.
//! Run: `cargo bench --bench containers` (no root needed: the cgroup tree is a fixture).

use std::os::unix::fs::MetadataExt;
use std::time::Instant;

use bianque::container::{ContainerRegistry, ContainersConfig};
use bianque::host::HostRoot;

fn main() {
    let root =
        std::env::temp_dir().join(format!("bianque-bench-containers-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(root.join("proc/self")).unwrap();
    std::fs::write(
        root.join("proc/self/mountinfo"),
        "40 30 0:36 / /sys/fs/cgroup/memory rw,nosuid - cgroup cgroup rw,memory\n",
    )
    .unwrap();
    let mem = root.join("sys/fs/cgroup/memory");
    let mut inos = Vec::new();
    for i in 0..1000u32 {
        let qos = ["burstable", "besteffort"][(i % 2) as usize];
        let dir = mem.join(format!(
            "kubepods/{qos}/pod{:08x}-0000-0000-0000-{:012x}/{:064x}",
            i,
            i,
            i + 1
        ));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("cgroup.procs"), "").unwrap();
        inos.push(std::fs::metadata(&dir).unwrap().ino());
    }
    for i in 0..200 {
        std::fs::create_dir_all(mem.join(format!("system.slice/svc-{i}.service"))).unwrap();
    }
    let cfg = ContainersConfig {
        engine_sockets: vec![],
        kubelet_read_only_address: String::new(),
        kubelet_url: String::new(),
        containerd_state_dirs: vec![],
        ..Default::default()
    };
    let reg = ContainerRegistry::new(HostRoot::new(&root), cfg);

    let mut resyncs = Vec::new();
    for _ in 0..11 {
        let t = Instant::now();
        reg.resync();
        resyncs.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    resyncs.sort_by(|a, b| a.total_cmp(b));
    assert_eq!(reg.list().len(), 1000);

    let n = 2_000_000u64;
    let t = Instant::now();
    let mut hits = 0u64;
    for k in 0..n {
        let ino = inos[(k % inos.len() as u64) as usize];
        if let (_, Some(c)) = reg.attribute_memcg(ino) {
            hits += c.id.len() as u64 / 64;
        }
    }
    let per_event_ns = t.elapsed().as_nanos() as f64 / n as f64;
    assert_eq!(hits, n);
    let t = Instant::now();
    for k in 0..n {
        std::hint::black_box(reg.by_memcg(inos[(k % inos.len() as u64) as usize]));
    }
    let lookup_ns = t.elapsed().as_nanos() as f64 / n as f64;
    println!("container attribution, 1,000 containers + 200 host cgroups");
    println!("  per event, record fields (path + container fields): {per_event_ns:.0} ns (target <= 1000 ns)");
    println!("  per event, container lookup only:                   {lookup_ns:.0} ns");
    println!(
        "  full resync (cgroup walk + rebuild): median {:.1} ms, max {:.1} ms (target <= 50 ms)",
        resyncs[5], resyncs[10]
    );
    let _ = std::fs::remove_dir_all(&root);
}
