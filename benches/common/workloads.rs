//! Workloads the overhead benchmarks time: each runs for `round` and returns operations per
//! second. Shared by `events_overhead` (one tracer at a time) and `hotpaths` (the whole agent).
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::Command;
use std::time::{Duration, Instant};

/// 1-byte UDP to a closed port on 127.0.0.1 (kfree_skb, NET_RX, ICMP): sends/s.
pub fn udp_drop(round: Duration) -> f64 {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < round {
        for _ in 0..256 {
            let _ = s.send_to(b"x", ("127.0.0.1", 9u16));
        }
        n += 256;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

/// 64-byte request/response over loopback TCP: round trips/s.
pub fn tcp_rr(round: Duration) -> f64 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let server = std::thread::spawn(move || {
        let (mut c, _) = l.accept().unwrap();
        c.set_nodelay(true).unwrap();
        let mut buf = [0u8; 64];
        while c.read_exact(&mut buf).is_ok() {
            if c.write_all(&buf).is_err() {
                break;
            }
        }
    });
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_nodelay(true).unwrap();
    let mut buf = [7u8; 64];
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < round {
        for _ in 0..64 {
            c.write_all(&buf).unwrap();
            c.read_exact(&mut buf).unwrap();
        }
        n += 64;
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    drop(c);
    let _ = server.join();
    rate
}

/// 64 KiB writes over loopback TCP: bytes/s.
pub fn tcp_stream(round: Duration) -> f64 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let server = std::thread::spawn(move || {
        let (mut c, _) = l.accept().unwrap();
        let mut buf = vec![0u8; 1 << 20];
        let mut total = 0u64;
        while let Ok(n) = c.read(&mut buf) {
            if n == 0 {
                break;
            }
            total += n as u64;
        }
        total
    });
    let mut c = TcpStream::connect(addr).unwrap();
    let buf = vec![b'x'; 1 << 16];
    let start = Instant::now();
    while start.elapsed() < round {
        c.write_all(&buf).unwrap();
    }
    drop(c);
    let total = server.join().unwrap();
    total as f64 / start.elapsed().as_secs_f64()
}

/// Pins the calling thread to `cpu`.
fn pin(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET writes within it;
    // sched_setaffinity(0) affects only the calling thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

fn pipe() -> (std::fs::File, std::fs::File) {
    let mut fds = [0i32; 2];
    // SAFETY: fds is a valid array of two ints for pipe2 to fill.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: both fds are fresh and owned by nothing else.
    unsafe {
        (
            std::fs::File::from(OwnedFd::from_raw_fd(fds[0])),
            std::fs::File::from(OwnedFd::from_raw_fd(fds[1])),
        )
    }
}

/// One byte back and forth over two pipes between two threads pinned to the same CPU (what
/// `perf bench sched pipe` does): every round trip is two context switches and two wakeups.
/// Round trips/s.
pub fn pipe_pingpong(round: Duration) -> f64 {
    let (mut a_rx, mut a_tx) = pipe();
    let (mut b_rx, mut b_tx) = pipe();
    let echo = std::thread::spawn(move || {
        pin(0);
        let mut b = [0u8; 1];
        while a_rx.read_exact(&mut b).is_ok() {
            if b_tx.write_all(&b).is_err() {
                break;
            }
        }
    });
    let timed = std::thread::spawn(move || {
        pin(0);
        let mut b = [1u8; 1];
        let start = Instant::now();
        let mut n = 0u64;
        while start.elapsed() < round {
            for _ in 0..256 {
                a_tx.write_all(&b).unwrap();
                b_rx.read_exact(&mut b).unwrap();
            }
            n += 256;
        }
        n as f64 / start.elapsed().as_secs_f64()
    });
    let rate = timed.join().unwrap();
    let _ = echo.join();
    rate
}

/// fork + exec + exit + wait of `/bin/true`: processes/s.
pub fn fork_exec_exit(round: Duration) -> f64 {
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < round {
        let ok = Command::new("/bin/true")
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "/bin/true failed");
        n += 1;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

/// Touches every page of a fresh 16 MiB anonymous mapping, then unmaps it: page faults/s.
pub fn page_faults(round: Duration) -> f64 {
    const LEN: usize = 16 << 20;
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < round {
        // SAFETY: a private anonymous mapping of LEN bytes; only its own pages are written,
        // and it is unmapped before the next one.
        unsafe {
            let p = libc::mmap(
                std::ptr::null_mut(),
                LEN,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            );
            assert_ne!(p, libc::MAP_FAILED, "mmap");
            let base = p.cast::<u8>();
            for off in (0..LEN).step_by(4096) {
                base.add(off).write_volatile(1);
            }
            libc::munmap(p, LEN);
        }
        n += (LEN / 4096) as u64;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

/// A loop device over a 64 MiB file, detached and removed on drop.
pub struct LoopDevice {
    pub dev: String,
    file: std::path::PathBuf,
}

impl LoopDevice {
    pub fn new(dir: &std::path::Path) -> LoopDevice {
        let file = dir.join("loop.img");
        let f = std::fs::File::create(&file).expect("loop backing file");
        f.set_len(64 << 20).expect("size the loop backing file");
        let out = Command::new("losetup")
            .args(["--show", "-f"])
            .arg(&file)
            .output()
            .expect("losetup (util-linux)");
        assert!(
            out.status.success(),
            "losetup: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        LoopDevice {
            dev: String::from_utf8_lossy(&out.stdout).trim().to_string(),
            file,
        }
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.dev]).status();
        let _ = std::fs::remove_file(&self.file);
    }
}

/// 4 KiB O_DIRECT reads at pseudo-random aligned offsets of `dev` (each one a block request
/// through the loop driver; the backing file stays in the page cache): reads/s.
pub fn direct_reads(dev: &str, round: Duration) -> f64 {
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(dev)
        .expect("open the loop device O_DIRECT");
    let layout = std::alloc::Layout::from_size_align(4096, 4096).unwrap();
    // SAFETY: a non-zero-sized layout; freed below with the same layout.
    let buf = unsafe { std::alloc::alloc(layout) };
    assert!(!buf.is_null());
    let blocks: u64 = (64 << 20) / 4096;
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < round {
        for _ in 0..64 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let off = ((x >> 33) % blocks) * 4096;
            // SAFETY: buf holds 4096 writable, 4096-aligned bytes; the fd is open.
            let r = unsafe { libc::pread(f.as_raw_fd(), buf.cast(), 4096, off as libc::off_t) };
            assert_eq!(r, 4096, "direct read: {}", std::io::Error::last_os_error());
        }
        n += 64;
    }
    // SAFETY: buf came from alloc with this layout.
    unsafe { std::alloc::dealloc(buf, layout) };
    n as f64 / start.elapsed().as_secs_f64()
}
