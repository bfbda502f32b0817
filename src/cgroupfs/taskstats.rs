//! Task counts of a cgroup v1 directory by state, from the kernel's taskstats generic netlink
//! family (`CGROUPSTATS_CMD_GET` on an open directory fd; `linux/cgroupstats.h`), as HuaTuo's
//! container `loadavg` does. The kernel answers only for cgroup v1 directories (EINVAL on
//! cgroup2). One socket is kept open and the family id resolved once.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use netlink_packet_core::{
    DecodeError, Emitable, NetlinkMessage, NetlinkPayload, NlasIterator, ParseableParametrized,
    NLM_F_REQUEST,
};
use netlink_packet_generic::ctrl::nlas::GenlCtrlAttrs;
use netlink_packet_generic::ctrl::{GenlCtrl, GenlCtrlCmd};
use netlink_packet_generic::{GenlFamily, GenlHeader, GenlMessage};
use netlink_sys::{protocols::NETLINK_GENERIC, Socket, SocketAddr};

/// `TASKSTATS_GENL_NAME`, `TASKSTATS_GENL_VERSION`.
const FAMILY: &str = "TASKSTATS";
const VERSION: u8 = 1;
/// `CGROUPSTATS_CMD_GET` / `_NEW` (they follow `__TASKSTATS_CMD_MAX` = 3).
const CMD_GET: u8 = 4;
const CMD_NEW: u8 = 5;
/// `CGROUPSTATS_CMD_ATTR_FD` (u32) in requests, `CGROUPSTATS_TYPE_CGROUP_STATS` in replies.
const ATTR_FD: u16 = 1;
const TYPE_CGROUP_STATS: u16 = 1;
/// `struct cgroupstats`: five `__u64`.
const STATS_LEN: usize = 40;

/// `struct cgroupstats`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CgroupStats {
    pub nr_sleeping: u64,
    pub nr_running: u64,
    pub nr_stopped: u64,
    pub nr_uninterruptible: u64,
    pub nr_io_wait: u64,
}

impl CgroupStats {
    /// Parses the `struct cgroupstats` attribute value (native endian).
    pub fn parse(v: &[u8]) -> Result<CgroupStats, DecodeError> {
        if v.len() < STATS_LEN {
            return Err(DecodeError::from(format!(
                "cgroupstats is {} bytes, expected {STATS_LEN}",
                v.len()
            )));
        }
        let w = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&v[i * 8..i * 8 + 8]);
            u64::from_ne_bytes(b)
        };
        Ok(CgroupStats {
            nr_sleeping: w(0),
            nr_running: w(1),
            nr_stopped: w(2),
            nr_uninterruptible: w(3),
            nr_io_wait: w(4),
        })
    }
}

/// The taskstats family's cgroup messages: a request naming a directory fd, or the reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CgroupStatsMsg {
    Get { fd: u32, family_id: u16 },
    Stats(Option<CgroupStats>),
}

impl GenlFamily for CgroupStatsMsg {
    fn family_name() -> &'static str {
        FAMILY
    }
    fn family_id(&self) -> u16 {
        match self {
            CgroupStatsMsg::Get { family_id, .. } => *family_id,
            CgroupStatsMsg::Stats(_) => 0,
        }
    }
    fn command(&self) -> u8 {
        match self {
            CgroupStatsMsg::Get { .. } => CMD_GET,
            CgroupStatsMsg::Stats(_) => CMD_NEW,
        }
    }
    fn version(&self) -> u8 {
        VERSION
    }
}

impl Emitable for CgroupStatsMsg {
    fn buffer_len(&self) -> usize {
        match self {
            // One attribute: 4-byte header + u32.
            CgroupStatsMsg::Get { .. } => 8,
            CgroupStatsMsg::Stats(_) => 0,
        }
    }
    fn emit(&self, buffer: &mut [u8]) {
        if let CgroupStatsMsg::Get { fd, .. } = self {
            buffer[0..2].copy_from_slice(&8u16.to_ne_bytes());
            buffer[2..4].copy_from_slice(&ATTR_FD.to_ne_bytes());
            buffer[4..8].copy_from_slice(&fd.to_ne_bytes());
        }
    }
}

impl ParseableParametrized<[u8], GenlHeader> for CgroupStatsMsg {
    fn parse_with_param(buf: &[u8], header: GenlHeader) -> Result<Self, DecodeError> {
        if header.cmd != CMD_NEW {
            return Err(DecodeError::from(format!(
                "unexpected taskstats command {}",
                header.cmd
            )));
        }
        let mut stats = None;
        for nla in NlasIterator::new(buf) {
            let nla = nla?;
            if nla.kind() == TYPE_CGROUP_STATS {
                stats = Some(CgroupStats::parse(nla.value())?);
            }
        }
        Ok(CgroupStatsMsg::Stats(stats))
    }
}

/// A taskstats netlink client.
pub struct TaskStats {
    socket: Socket,
    family_id: u16,
    seq: u32,
    buf: Vec<u8>,
}

const RECV_TIMEOUT: Duration = Duration::from_secs(1);

fn open_socket() -> Result<Socket> {
    let mut socket = Socket::new(NETLINK_GENERIC).context("opening a generic netlink socket")?;
    socket.bind_auto().context("binding the netlink socket")?;
    socket
        .connect(&SocketAddr::new(0, 0))
        .context("connecting the netlink socket")?;
    let tv = libc::timeval {
        tv_sec: RECV_TIMEOUT.as_secs() as libc::time_t,
        tv_usec: 0,
    };
    // SAFETY: setsockopt on a socket we own, with a valid timeval of the size passed.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            &tv as *const libc::timeval as *const libc::c_void,
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context("setting SO_RCVTIMEO");
    }
    Ok(socket)
}

impl TaskStats {
    /// Opens a socket and resolves the TASKSTATS family (absent without
    /// CONFIG_TASKSTATS).
    pub fn new() -> Result<TaskStats> {
        let socket = open_socket()?;
        let mut ts = TaskStats {
            socket,
            family_id: 0,
            seq: 0,
            buf: Vec::with_capacity(4096),
        };
        let mut req = GenlMessage::from_payload(GenlCtrl {
            cmd: GenlCtrlCmd::GetFamily,
            nlas: vec![GenlCtrlAttrs::FamilyName(FAMILY.to_string())],
        });
        req.finalize();
        let reply: GenlMessage<GenlCtrl> = ts
            .round_trip(req)
            .context("resolving the TASKSTATS generic netlink family")?;
        ts.family_id = reply
            .payload
            .nlas
            .iter()
            .find_map(|a| match a {
                GenlCtrlAttrs::FamilyId(id) => Some(*id),
                _ => None,
            })
            .context("the TASKSTATS family reply has no family id")?;
        Ok(ts)
    }

    /// Task counts of the cgroup v1 directory `dir` (only tasks directly in it).
    pub fn cgroup(&mut self, dir: &Path) -> Result<CgroupStats> {
        let f = File::open(dir).with_context(|| format!("opening {}", dir.display()))?;
        let mut req = GenlMessage::from_payload(CgroupStatsMsg::Get {
            fd: f.as_raw_fd() as u32,
            family_id: self.family_id,
        });
        req.finalize();
        let reply: GenlMessage<CgroupStatsMsg> = self
            .round_trip(req)
            .with_context(|| format!("CGROUPSTATS_CMD_GET on {}", dir.display()))?;
        drop(f);
        match reply.payload {
            CgroupStatsMsg::Stats(Some(s)) => Ok(s),
            _ => bail!("taskstats reply without cgroup stats"),
        }
    }

    /// Sends one request and returns the reply with its sequence number.
    fn round_trip<F>(&mut self, req: GenlMessage<F>) -> Result<GenlMessage<F>>
    where
        F: GenlFamily + Emitable + ParseableParametrized<[u8], GenlHeader> + std::fmt::Debug,
    {
        self.seq = self.seq.wrapping_add(1);
        let mut msg = NetlinkMessage::from(req);
        msg.header.flags = NLM_F_REQUEST;
        msg.header.sequence_number = self.seq;
        msg.finalize();
        self.buf.clear();
        self.buf.resize(msg.buffer_len(), 0);
        msg.serialize(&mut self.buf);
        self.socket
            .send(&self.buf, 0)
            .context("sending the netlink request")?;
        // Replies to earlier, timed-out requests may still be queued: skip other sequences.
        for _ in 0..16 {
            self.buf.clear();
            self.buf.reserve(4096);
            let n = self
                .socket
                .recv(&mut self.buf, 0)
                .context("receiving the netlink reply")?;
            let mut off = 0;
            while off < n.min(self.buf.len()) {
                let m = NetlinkMessage::<GenlMessage<F>>::deserialize(&self.buf[off..])
                    .map_err(|e| anyhow::anyhow!("decoding the netlink reply: {e}"))?;
                let len = m.header.length as usize;
                if m.header.sequence_number == self.seq {
                    match m.payload {
                        NetlinkPayload::InnerMessage(g) => return Ok(g),
                        NetlinkPayload::Error(e) => {
                            return Err(e.to_io()).context("the kernel refused the request")
                        }
                        other => bail!("unexpected netlink reply {other:?}"),
                    }
                }
                if len == 0 {
                    break;
                }
                off += (len + 3) & !3;
            }
        }
        bail!("no netlink reply with sequence {}", self.seq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_the_request_the_kernel_expects() {
        let mut g = GenlMessage::from_payload(CgroupStatsMsg::Get {
            fd: 7,
            family_id: 0x17,
        });
        g.finalize();
        let mut m = NetlinkMessage::from(g);
        m.header.flags = NLM_F_REQUEST;
        m.header.sequence_number = 3;
        m.finalize();
        let mut buf = vec![0; m.buffer_len()];
        m.serialize(&mut buf);
        let mut want = Vec::new();
        want.extend_from_slice(&28u32.to_ne_bytes()); // nlmsg_len: 16 + 4 + 8
        want.extend_from_slice(&0x17u16.to_ne_bytes()); // family id
        want.extend_from_slice(&NLM_F_REQUEST.to_ne_bytes());
        want.extend_from_slice(&3u32.to_ne_bytes()); // seq
        want.extend_from_slice(&0u32.to_ne_bytes()); // port
        want.extend_from_slice(&[CMD_GET, VERSION, 0, 0]); // genlmsghdr
        want.extend_from_slice(&8u16.to_ne_bytes());
        want.extend_from_slice(&ATTR_FD.to_ne_bytes());
        want.extend_from_slice(&7u32.to_ne_bytes());
        assert_eq!(buf, want);
    }

    fn reply(cmd: u8, attr: u16, value: &[u8]) -> Vec<u8> {
        let mut b = vec![cmd, VERSION, 0, 0];
        b.extend_from_slice(&((4 + value.len()) as u16).to_ne_bytes());
        b.extend_from_slice(&attr.to_ne_bytes());
        b.extend_from_slice(value);
        b
    }

    #[test]
    fn parses_cgroupstats_replies() {
        let mut v = Vec::new();
        for x in [5u64, 2, 0, 1, 0] {
            v.extend_from_slice(&x.to_ne_bytes());
        }
        let b = reply(CMD_NEW, TYPE_CGROUP_STATS, &v);
        let g = GenlMessage::<CgroupStatsMsg>::parse_with_param(&b, 0x17).unwrap();
        assert_eq!(
            g.payload,
            CgroupStatsMsg::Stats(Some(CgroupStats {
                nr_sleeping: 5,
                nr_running: 2,
                nr_stopped: 0,
                nr_uninterruptible: 1,
                nr_io_wait: 0
            }))
        );
    }

    #[test]
    fn malformed_replies_are_errors() {
        // Truncated struct, wrong command, an attribute longer than the buffer.
        let short = reply(CMD_NEW, TYPE_CGROUP_STATS, &[0u8; 16]);
        assert!(GenlMessage::<CgroupStatsMsg>::parse_with_param(&short, 1).is_err());
        let wrong = reply(CMD_GET, TYPE_CGROUP_STATS, &[0u8; 40]);
        assert!(GenlMessage::<CgroupStatsMsg>::parse_with_param(&wrong, 1).is_err());
        let mut bad = reply(CMD_NEW, TYPE_CGROUP_STATS, &[0u8; 40]);
        bad[4..6].copy_from_slice(&200u16.to_ne_bytes());
        assert!(GenlMessage::<CgroupStatsMsg>::parse_with_param(&bad, 1).is_err());
        assert!(GenlMessage::<CgroupStatsMsg>::parse_with_param(&[1, 2], 1).is_err());
    }
}
