//! `mountpoint_perm`: whether each mount point is read-only (`ro{mountpoint}`, 1 = read-only),
//! from `/proc/self/mountinfo`. Mount points filtered by include/exclude regexes; by default the
//! kernel's virtual trees and container runtimes' own mounts are left out.

use anyhow::Result;

use crate::config::filter::Filter;
use crate::config::ConfigResult;
use crate::exposition::{Kind, MetricSink};
use crate::host::file::ProcFile;
use crate::procfs::mountinfo;
use crate::tracer::{
    BuildContext, Collector, Mode, Requirement, ScrapeContext, Tracer, TracerSpec, TRACERS,
};

#[linkme::distributed_slice(TRACERS)]
static SPEC: TracerSpec = TracerSpec {
    name: "mountpoint_perm",
    mode: Mode::Metric,
    description: "read-only state of mount points (/proc/self/mountinfo)",
    requires: &[Requirement::HostFile("proc/self/mountinfo")],
    default_enabled: true,
    build,
};

pub const DEFAULT_EXCLUDE: &str =
    r"^/(proc|sys|dev|run)(/|$)|^/var/lib/(docker|containers|kubelet|containerd)/";

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
struct MountConfig {
    include: Option<String>,
    exclude: Option<String>,
}

impl Default for MountConfig {
    fn default() -> Self {
        MountConfig {
            include: None,
            exclude: Some(DEFAULT_EXCLUDE.into()),
        }
    }
}

fn build(ctx: &BuildContext, table: &toml::Table) -> ConfigResult<Tracer> {
    let cfg: MountConfig = crate::config::parse_section(ctx.section, table)?;
    Ok(Tracer::Metric(Box::new(MountPoints {
        file: ProcFile::new(ctx.host.proc("self/mountinfo")),
        filter: Filter::new(
            ctx.section,
            "include",
            cfg.include.as_deref(),
            "exclude",
            cfg.exclude.as_deref(),
        )?,
    })))
}

struct MountPoints {
    file: ProcFile,
    filter: Filter,
}

/// (mount point, read-only) per mountinfo line; a later mount on the same point wins (it is
/// the one visible). Strict: a malformed line is an error.
pub fn parse_mountinfo(text: &str) -> Result<Vec<(String, bool)>> {
    let mut out: Vec<(String, bool)> = Vec::new();
    for line in mountinfo::lines(text) {
        let line = line?;
        let mp = line.mount_point();
        let ro = line.read_only();
        match out.iter_mut().find(|(m, _)| *m == mp) {
            Some(e) => e.1 = ro,
            None => out.push((mp.into_owned(), ro)),
        }
    }
    Ok(out)
}

impl Collector for MountPoints {
    fn collect(&self, _ctx: &ScrapeContext, out: &mut MetricSink) -> Result<()> {
        self.file.with(|text| {
            let mounts = parse_mountinfo(text)?;
            out.family("ro", "whether mountpoint is readonly or not", Kind::Gauge);
            for (mp, ro) in &mounts {
                if self.filter.matches(mp) {
                    out.sample(&[("mountpoint", mp)], if *ro { 1.0 } else { 0.0 });
                }
            }
            Ok(())
        })?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses() {
        let m = parse_mountinfo(
            "27 1 254:0 / / rw,relatime - ext4 /dev/vda rw\n\
             28 27 0:25 / /mnt/a\\040b ro,nosuid shared:1 - tmpfs x ro\n\
             29 27 0:26 / /mnt/a\\040b rw - tmpfs x rw\n",
        )
        .unwrap();
        assert_eq!(
            m,
            vec![("/".to_string(), false), ("/mnt/a b".to_string(), false)]
        );
        let f = Filter::new("s", "i", None, "e", Some(DEFAULT_EXCLUDE)).unwrap();
        assert!(f.matches("/"));
        assert!(f.matches("/home"));
        assert!(f.matches("/sysroot"));
        assert!(!f.matches("/sys/fs/cgroup"));
        assert!(!f.matches("/dev"));
        assert!(!f.matches("/var/lib/kubelet/pods/x/volumes"));
    }

    #[test]
    fn malformed_lines_are_errors() {
        // The line checks are procfs::mountinfo's; this collector stays strict.
        let good = "27 1 254:0 / / rw - ext4 /dev/vda rw\n";
        assert!(parse_mountinfo(&format!("{good}27 1 254:0 / / rw - ext4\n")).is_err());
        assert!(parse_mountinfo(&format!("{good}\n{good}")).is_ok());
    }
}
