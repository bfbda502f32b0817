//! `netdev_events`: network interface link changes — administratively up/down (`IFF_UP`) and
//! carrier up/down (`IFF_LOWER_UP`) — from an rtnetlink subscription (no BPF).
//!
//! (The name follows HuaTuo's `netdev_events`; `netdev` is the interface-statistics collector.)
//! The tracer dumps the links once to learn their state (not recorded), then records every
//! RTM_NEWLINK that flips the admin or carrier state of a link matching `devices`. The driver
//! name comes from the ethtool GDRVINFO ioctl. Links in the agent's network namespace only.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::config::{parse_section, ConfigError, ConfigResult};
use crate::exposition::{Kind, MetricSink};
use crate::tracer::{
    BuildContext, EventTracer, Mode, RunContext, Tracer, TracerError, TracerSpec, TRACERS,
};

// rtnetlink / ethtool uapi (include/uapi/linux/{netlink,rtnetlink,if_link,if,ethtool}.h).
const NLMSG_HDRLEN: usize = 16;
const IFINFOMSG_LEN: usize = 16;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const RTM_NEWLINK: u16 = 16;
const RTM_DELLINK: u16 = 17;
const RTM_GETLINK: u16 = 18;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_DUMP: u16 = 0x300;
const IFLA_ADDRESS: u16 = 1;
const IFLA_IFNAME: u16 = 3;
const IFF_UP: u32 = 0x1;
const IFF_LOWER_UP: u32 = 0x1_0000;
const RTMGRP_LINK: u32 = 1;
const ETHTOOL_GDRVINFO: u32 = 3;
const SIOCETHTOOL: libc::c_ulong = 0x8946;

const CHANGES: [&str; 4] = ["admin_up", "admin_down", "carrier_up", "carrier_down"];

#[linkme::distributed_slice(TRACERS)]
static SPEC: TracerSpec = TracerSpec {
    name: "netdev_events",
    mode: Mode::Event,
    description:
        "network link changes (rtnetlink): admin and carrier up/down, with ifname, index, driver",
    requires: &[],
    default_enabled: true,
    build,
};

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NetdevEventsConfig {
    /// Interface names to watch: exact names, or a prefix ending in `*` (`eth*`); empty = all.
    pub devices: Vec<String>,
}

fn build(ctx: &BuildContext, table: &toml::Table) -> ConfigResult<Tracer> {
    let cfg: NetdevEventsConfig = parse_section(ctx.section, table)?;
    for d in &cfg.devices {
        let body = d.strip_suffix('*').unwrap_or(d);
        if body.is_empty() && !d.is_empty() {
            continue; // "*" matches everything
        }
        if body.is_empty() || body.len() > 15 || body.contains(['/', '*', ' ']) {
            return Err(ConfigError(format!(
                "{}.devices: `{d}` is not an interface name or a name prefix ending in `*`",
                ctx.section
            )));
        }
    }
    Ok(Tracer::Event(Box::new(NetdevEvents {
        cfg,
        changes: Default::default(),
        lost: AtomicU64::new(0),
    })))
}

pub struct NetdevEvents {
    cfg: NetdevEventsConfig,
    /// Per entry of CHANGES.
    changes: [AtomicU64; 4],
    /// Times the kernel dropped notifications (socket overrun); states are re-read then.
    lost: AtomicU64,
}

/// One link as an RTM_NEWLINK/RTM_DELLINK message describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkMsg {
    pub msg_type: u16,
    pub index: i32,
    pub flags: u32,
    pub ifname: String,
    pub mac: Option<String>,
}

/// What a buffer of netlink messages held.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Parsed {
    pub links: Vec<LinkMsg>,
    pub done: bool,
    /// errno of an NLMSG_ERROR (0 is an ACK).
    pub error: Option<i32>,
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// Parses the netlink messages in one datagram (safe slicing only).
pub fn parse_messages(buf: &[u8]) -> Parsed {
    let mut out = Parsed::default();
    let mut off = 0;
    while off + NLMSG_HDRLEN <= buf.len() {
        let Some(len) = u32_at(buf, off).map(|l| l as usize) else {
            break;
        };
        let Some(ty) = u16_at(buf, off + 4) else {
            break;
        };
        if len < NLMSG_HDRLEN || off + len > buf.len() {
            break;
        }
        let body = &buf[off + NLMSG_HDRLEN..off + len];
        match ty {
            NLMSG_DONE => out.done = true,
            NLMSG_ERROR => out.error = u32_at(body, 0).map(|e| -(e as i32)),
            RTM_NEWLINK | RTM_DELLINK => {
                if let Some(link) = parse_link(ty, body) {
                    out.links.push(link);
                }
            }
            _ => {}
        }
        off += align4(len);
    }
    out
}

fn parse_link(msg_type: u16, body: &[u8]) -> Option<LinkMsg> {
    // struct ifinfomsg { u8 family; u8 pad; u16 type; i32 index; u32 flags; u32 change; }
    let index = u32_at(body, 4)? as i32;
    let flags = u32_at(body, 8)?;
    let mut ifname = String::new();
    let mut mac = None;
    let mut off = IFINFOMSG_LEN;
    while off + 4 <= body.len() {
        let alen = u16_at(body, off)? as usize;
        let aty = u16_at(body, off + 2)? & 0x3fff; // without NLA_F_NESTED/NET_BYTEORDER
        if alen < 4 || off + alen > body.len() {
            break;
        }
        let val = &body[off + 4..off + alen];
        match aty {
            IFLA_IFNAME => {
                let end = val.iter().position(|&b| b == 0).unwrap_or(val.len());
                ifname = String::from_utf8_lossy(&val[..end]).into_owned();
            }
            IFLA_ADDRESS if !val.is_empty() => {
                mac = Some(
                    val.iter()
                        .map(|b| format!("{b:02x}"))
                        .collect::<Vec<_>>()
                        .join(":"),
                );
            }
            _ => {}
        }
        off += align4(alen);
    }
    Some(LinkMsg {
        msg_type,
        index,
        flags,
        ifname,
        mac,
    })
}

/// The admin and carrier changes between two flag words, in CHANGES order.
pub fn link_changes(old: u32, new: u32) -> Vec<&'static str> {
    let mut out = Vec::new();
    if (old ^ new) & IFF_UP != 0 {
        out.push(if new & IFF_UP != 0 {
            CHANGES[0]
        } else {
            CHANGES[1]
        });
    }
    if (old ^ new) & IFF_LOWER_UP != 0 {
        out.push(if new & IFF_LOWER_UP != 0 {
            CHANGES[2]
        } else {
            CHANGES[3]
        });
    }
    out
}

fn device_matches(patterns: &[String], name: &str) -> bool {
    patterns.is_empty()
        || patterns.iter().any(|p| match p.strip_suffix('*') {
            Some(prefix) => name.starts_with(prefix),
            None => p == name,
        })
}

fn up_down(on: bool) -> &'static str {
    if on {
        "up"
    } else {
        "down"
    }
}

#[derive(Debug, Serialize)]
struct LinkState {
    admin: &'static str,
    carrier: &'static str,
}

impl LinkState {
    fn of(flags: u32) -> LinkState {
        LinkState {
            admin: up_down(flags & IFF_UP != 0),
            carrier: up_down(flags & IFF_LOWER_UP != 0),
        }
    }
}

#[derive(Debug, Serialize)]
struct NetdevData {
    ifname: String,
    index: i32,
    /// What changed: `admin_up`, `admin_down`, `carrier_up`, `carrier_down`.
    linkstatus: Vec<&'static str>,
    old_state: LinkState,
    new_state: LinkState,
    #[serde(skip_serializing_if = "Option::is_none")]
    mac: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    driver: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    driver_version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    firmware_version: Option<String>,
}

/// struct ethtool_drvinfo (uapi/linux/ethtool.h).
#[repr(C)]
struct EthtoolDrvinfo {
    cmd: u32,
    driver: [u8; 32],
    version: [u8; 32],
    fw_version: [u8; 32],
    bus_info: [u8; 32],
    erom_version: [u8; 32],
    reserved2: [u8; 12],
    n_priv_flags: u32,
    n_stats: u32,
    testinfo_len: u32,
    eedump_len: u32,
    regdump_len: u32,
}

fn cstr(b: &[u8]) -> Option<String> {
    let s = crate::bpf::c_str(b);
    (!s.is_empty()).then_some(s)
}

/// Driver, driver version and firmware version of an interface (ethtool GDRVINFO).
fn driver_info(ifname: &str) -> (Option<String>, Option<String>, Option<String>) {
    let none = (None, None, None);
    if ifname.is_empty() || ifname.len() >= libc::IFNAMSIZ {
        return none;
    }
    // SAFETY: plain socket(2); the fd is owned right below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return none;
    }
    // SAFETY: fd is fresh and owned by nothing else.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: both are plain-old-data C structs; all-zero is a valid value.
    let mut info: EthtoolDrvinfo = unsafe { std::mem::zeroed() };
    info.cmd = ETHTOOL_GDRVINFO;
    // SAFETY: as above.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in ifr.ifr_name.iter_mut().zip(ifname.bytes()) {
        *dst = src as libc::c_char;
    }
    ifr.ifr_ifru.ifru_data = (&mut info as *mut EthtoolDrvinfo).cast();
    // SAFETY: SIOCETHTOOL with an ifreq whose data points to a live ethtool_drvinfo, as the
    // ioctl expects; both outlive the call.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), SIOCETHTOOL as _, &mut ifr) };
    if rc != 0 {
        return none;
    }
    (
        cstr(&info.driver),
        cstr(&info.version),
        cstr(&info.fw_version),
    )
}

/// A NETLINK_ROUTE socket subscribed to link notifications.
fn open_rtnetlink() -> Result<OwnedFd> {
    // SAFETY: plain socket(2); the fd is owned right below.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            libc::NETLINK_ROUTE,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("netlink socket");
    }
    // SAFETY: fd is fresh and owned by nothing else.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: all-zero is a valid sockaddr_nl.
    let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    addr.nl_family = libc::AF_NETLINK as u16;
    addr.nl_groups = RTMGRP_LINK;
    // SAFETY: addr is a valid sockaddr_nl of the given length.
    let rc = unsafe {
        libc::bind(
            sock.as_raw_fd(),
            (&addr as *const libc::sockaddr_nl).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context("binding the netlink socket");
    }
    // A larger buffer rides out bursts (container churn); overruns are still handled.
    let size: libc::c_int = 1 << 20;
    // SAFETY: valid fd and a c_int option value.
    unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&size as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    Ok(sock)
}

fn request_dump(sock: &OwnedFd, seq: u32) -> Result<()> {
    let mut req = [0u8; NLMSG_HDRLEN + IFINFOMSG_LEN];
    let len = req.len() as u32;
    req[0..4].copy_from_slice(&len.to_ne_bytes());
    req[4..6].copy_from_slice(&RTM_GETLINK.to_ne_bytes());
    req[6..8].copy_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    req[8..12].copy_from_slice(&seq.to_ne_bytes());
    // ifinfomsg all zero: AF_UNSPEC, every link.
    // SAFETY: send(2) of a valid buffer on our socket (the kernel is the default destination).
    let rc = unsafe { libc::send(sock.as_raw_fd(), req.as_ptr().cast(), req.len(), 0) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error()).context("requesting the link dump");
    }
    Ok(())
}

enum Recv {
    Data(usize),
    Empty,
    Overrun,
}

fn recv(sock: &OwnedFd, buf: &mut [u8]) -> Result<Recv> {
    loop {
        // SAFETY: recv(2) into a buffer we own, within its length.
        let n = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n >= 0 {
            return Ok(Recv::Data(n as usize));
        }
        let err = std::io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EAGAIN) => return Ok(Recv::Empty),
            Some(libc::ENOBUFS) => return Ok(Recv::Overrun),
            _ => return Err(err).context("reading the netlink socket"),
        }
    }
}

fn wait_readable(sock: &OwnedFd, timeout_ms: i32) {
    let mut pfd = libc::pollfd {
        fd: sock.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd for the duration of the call.
    unsafe { libc::poll(&mut pfd, 1, timeout_ms) };
}

impl NetdevEvents {
    /// Dumps all links into `states` (no records); notifications that interleave update too.
    fn load_states(
        &self,
        ctx: &RunContext,
        sock: &OwnedFd,
        buf: &mut [u8],
        seq: u32,
        states: &mut HashMap<i32, u32>,
    ) -> Result<()> {
        request_dump(sock, seq)?;
        states.clear();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            if std::time::Instant::now() > deadline || ctx.stopping() {
                anyhow::bail!("the link dump did not finish");
            }
            match recv(sock, buf)? {
                Recv::Data(n) => {
                    let p = parse_messages(&buf[..n]);
                    for l in p.links {
                        if l.msg_type == RTM_NEWLINK {
                            states.insert(l.index, l.flags);
                        } else {
                            states.remove(&l.index);
                        }
                    }
                    if let Some(e) = p.error.filter(|&e| e != 0) {
                        return Err(std::io::Error::from_raw_os_error(e))
                            .context("the link dump failed");
                    }
                    if p.done {
                        return Ok(());
                    }
                }
                Recv::Empty => wait_readable(sock, 100),
                // Lost notifications while dumping: start the dump over.
                Recv::Overrun => {
                    self.lost.fetch_add(1, Ordering::Relaxed);
                    request_dump(sock, seq.wrapping_add(1))?;
                    states.clear();
                }
            }
        }
    }

    fn handle(&self, ctx: &RunContext, link: LinkMsg, states: &mut HashMap<i32, u32>) {
        if link.msg_type == RTM_DELLINK {
            states.remove(&link.index);
            return;
        }
        let old = states.insert(link.index, link.flags);
        // A new link: its state is learned, not reported.
        let Some(old) = old else { return };
        let changes = link_changes(old, link.flags);
        if changes.is_empty() || !device_matches(&self.cfg.devices, &link.ifname) {
            return;
        }
        for c in &changes {
            if let Some(i) = CHANGES.iter().position(|x| x == c) {
                self.changes[i].fetch_add(1, Ordering::Relaxed);
            }
        }
        let (driver, driver_version, firmware_version) = driver_info(&link.ifname);
        let data = NetdevData {
            ifname: link.ifname,
            index: link.index,
            linkstatus: changes,
            old_state: LinkState::of(old),
            new_state: LinkState::of(link.flags),
            mac: link.mac,
            driver,
            driver_version,
            firmware_version,
        };
        ctx.save_data_at(crate::record::now_ns(), None, &data);
    }
}

impl EventTracer for NetdevEvents {
    fn run(&self, ctx: &RunContext) -> Result<(), TracerError> {
        let sock = open_rtnetlink()?;
        let mut buf = vec![0u8; 64 * 1024];
        let mut states: HashMap<i32, u32> = HashMap::new();
        let mut seq: u32 = 1;
        self.load_states(ctx, &sock, &mut buf, seq, &mut states)?;
        ctx.attached();
        while !ctx.stopping() {
            match recv(&sock, &mut buf)? {
                Recv::Data(n) => {
                    for link in parse_messages(&buf[..n]).links {
                        self.handle(ctx, link, &mut states);
                    }
                }
                Recv::Empty => wait_readable(&sock, 100),
                Recv::Overrun => {
                    // Changes in the lost notifications cannot be told; re-learn the states.
                    self.lost.fetch_add(1, Ordering::Relaxed);
                    seq = seq.wrapping_add(2);
                    self.load_states(ctx, &sock, &mut buf, seq, &mut states)?;
                }
            }
        }
        Ok(())
    }

    fn collect(&self, out: &mut MetricSink) -> Result<()> {
        out.family(
            "events_total",
            "Link state changes recorded, by change (admin_up, admin_down, carrier_up, carrier_down).",
            Kind::Counter,
        );
        for (i, c) in CHANGES.iter().enumerate() {
            out.sample(
                &[("change", c)],
                self.changes[i].load(Ordering::Relaxed) as f64,
            );
        }
        out.single(
            "lost_total",
            "Times link notifications were lost (socket overrun) and link states were re-read.",
            Kind::Counter,
            self.lost.load(Ordering::Relaxed) as f64,
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An RTM_NEWLINK as the kernel sends it: header, ifinfomsg, IFLA_IFNAME, IFLA_ADDRESS.
    fn newlink(index: i32, flags: u32, name: &str) -> Vec<u8> {
        let mut body = Vec::new();
        body.extend_from_slice(&[0, 0]); // family, pad
        body.extend_from_slice(&1u16.to_ne_bytes()); // ARPHRD_ETHER
        body.extend_from_slice(&index.to_ne_bytes());
        body.extend_from_slice(&flags.to_ne_bytes());
        body.extend_from_slice(&0xffff_ffffu32.to_ne_bytes());
        let mut attr = |ty: u16, val: &[u8]| {
            body.extend_from_slice(&((4 + val.len()) as u16).to_ne_bytes());
            body.extend_from_slice(&ty.to_ne_bytes());
            body.extend_from_slice(val);
            while body.len() % 4 != 0 {
                body.push(0);
            }
        };
        let mut n = name.as_bytes().to_vec();
        n.push(0);
        attr(IFLA_IFNAME, &n);
        attr(IFLA_ADDRESS, &[0x02, 0, 0, 0, 0, 0x2a]);
        let mut msg = Vec::new();
        msg.extend_from_slice(&((16 + body.len()) as u32).to_ne_bytes());
        msg.extend_from_slice(&RTM_NEWLINK.to_ne_bytes());
        msg.extend_from_slice(&0u16.to_ne_bytes());
        msg.extend_from_slice(&0u32.to_ne_bytes());
        msg.extend_from_slice(&0u32.to_ne_bytes());
        msg.extend_from_slice(&body);
        msg
    }

    #[test]
    fn messages_parse() {
        let mut buf = newlink(7, IFF_UP | IFF_LOWER_UP, "veth0");
        buf.extend(newlink(8, 0, "eth1"));
        let mut done = vec![0u8; 20];
        done[0..4].copy_from_slice(&20u32.to_ne_bytes());
        done[4..6].copy_from_slice(&NLMSG_DONE.to_ne_bytes());
        buf.extend(done);
        let p = parse_messages(&buf);
        assert!(p.done);
        assert_eq!(p.links.len(), 2);
        assert_eq!(p.links[0].ifname, "veth0");
        assert_eq!(p.links[0].index, 7);
        assert_eq!(p.links[0].flags, IFF_UP | IFF_LOWER_UP);
        assert_eq!(p.links[0].mac.as_deref(), Some("02:00:00:00:00:2a"));
        assert_eq!(p.links[1].ifname, "eth1");
        // Truncated input stops cleanly.
        assert_eq!(parse_messages(&buf[..30]).links.len(), 0);
    }

    #[test]
    fn changes_are_named() {
        assert_eq!(link_changes(IFF_UP, 0), vec!["admin_down"]);
        assert_eq!(
            link_changes(0, IFF_UP | IFF_LOWER_UP),
            vec!["admin_up", "carrier_up"]
        );
        assert_eq!(
            link_changes(IFF_UP | IFF_LOWER_UP, IFF_UP),
            vec!["carrier_down"]
        );
        assert!(link_changes(IFF_UP, IFF_UP | 0x1000).is_empty());
    }

    #[test]
    fn device_patterns() {
        let p = vec!["eth*".to_string(), "bond0".to_string()];
        assert!(device_matches(&p, "eth0"));
        assert!(device_matches(&p, "bond0"));
        assert!(!device_matches(&p, "bond1"));
        assert!(device_matches(&[], "anything"));
        let host = crate::host::HostRoot::default();
        let bctx = BuildContext {
            host: &host,
            section: "events.netdev_events",
        };
        let t: toml::Table = toml::from_str("devices = [\"a/b\"]").unwrap();
        let err = build(&bctx, &t).err().unwrap();
        assert!(err.0.contains("events.netdev_events.devices"), "{err}");
    }
}
