//! Metric collectors, one file (or folder, with its BPF program) each, computed at scrape time.

pub mod arp;
pub mod cpu;
pub mod diskio;
pub mod iolatency;
pub mod loadavg;
pub mod memory_buddyinfo;
pub mod memory_events;
pub mod memory_meminfo;
pub mod memory_reclaim;
pub mod memory_vmstat;
pub mod mountpoint_perm;
pub mod netdev;
pub mod netdev_qdisc;
pub mod netstat;
pub mod pressure;
pub mod runqlat;
pub mod sockstat;
pub mod tcp_memory;
pub mod uptime;
pub mod xfs;
