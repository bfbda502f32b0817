//! bianque: a Linux kernel observability agent.
//!
//! Three kinds of tracer share one framework ([`tracer`]): metric collectors computed at scrape
//! time ([`metrics`]), always-on kernel event tracers ([`events`]) and anomaly-triggered
//! autotracers ([`autotracing`]). Records go to the local [`store`] first; [`server`] serves
//! `/metrics`, the tracer table and the stored events.

pub mod agent;
pub mod autotracing;
pub mod bpf;
pub mod cgroupfs;
pub mod config;
pub mod container;
pub mod events;
pub mod exposition;
pub mod host;
pub mod http;
pub mod incidents;
pub mod metrics;
pub mod procfs;
pub mod profiler;
pub mod record;
pub mod server;
pub mod store;
pub mod tracer;

/// Includes the libbpf-rs skeleton that build.rs generated from `<stem>.bpf.c`. With the name
/// of its open skeleton type (`OpenSignalSkel`), the skeleton also gets
/// [`bpf::SharedRodata`], so that [`tracer::program::BpfProgram`] can load it.
#[macro_export]
macro_rules! bpf_skeleton {
    ($stem:literal) => {
        include!(concat!(env!("OUT_DIR"), "/", $stem, ".skel.rs"));
    };
    ($stem:literal, $open:ident) => {
        include!(concat!(env!("OUT_DIR"), "/", $stem, ".skel.rs"));

        impl<'obj> $crate::bpf::SharedRodata for $open<'obj> {
            fn shared_rodata(&mut self) -> Option<(&mut u32, &mut u8)> {
                let r = self.maps.rodata_data.as_deref_mut()?;
                Some((&mut r.counter_slots, &mut r.container_filter_mode))
            }
        }
    };
}
