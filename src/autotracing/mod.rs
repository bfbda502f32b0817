//! Anomaly-triggered tracers, one folder each: a detector over metrics and a capture.

pub mod cpu_pressure;
pub mod cpuidle;
pub mod cpusys;
pub mod dload;
pub mod iotracer;
pub mod memburst;
pub mod waitrate;
