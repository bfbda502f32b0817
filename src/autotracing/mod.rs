//! Anomaly-triggered tracers, one folder each: a detector over metrics and a capture.
