//! Always-on kernel event tracers, one folder each (Rust + BPF C).

pub mod container_lifecycle;
pub mod dropwatch;
pub mod signal;
