//! Always-on kernel event tracers, one folder each (Rust + BPF C).

pub mod container_lifecycle;
pub mod dropwatch;
pub mod hungtask;
pub mod memreclaim;
pub mod netdev_events;
pub mod netrecvlat;
pub mod oom;
pub mod signal;
pub mod softirq;
pub mod softlockup;
pub mod tcp_retransmit;
