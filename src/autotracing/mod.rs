//! Anomaly-triggered tracers, one folder each: a detector over metrics and a capture.

pub mod cpu_pressure;
pub mod profiler;
