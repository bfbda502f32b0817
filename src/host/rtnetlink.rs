//! A route netlink (rtnetlink) socket in the host's network namespace, for collectors that
//! dump kernel tables (qdiscs, links) at scrape time.

use std::collections::HashMap;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use netlink_packet_core::{NetlinkMessage, NetlinkPayload, NLM_F_DUMP, NLM_F_REQUEST};
use netlink_packet_route::link::{LinkAttribute, LinkMessage};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

use super::HostRoot;

/// A route netlink socket in the host's network namespace.
pub struct RouteConn {
    socket: Socket,
    seq: u32,
    buf: Vec<u8>,
}

fn set_recv_timeout(socket: &Socket, t: Duration) -> Result<()> {
    let tv = libc::timeval {
        tv_sec: t.as_secs() as libc::time_t,
        tv_usec: t.subsec_micros() as libc::suseconds_t,
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
    Ok(())
}

/// The file is a namespace (on nsfs), not a plain file standing in for one.
fn is_nsfs(path: &std::path::Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    const NSFS_MAGIC: i64 = 0x6e73_6673;
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    let mut st = std::mem::MaybeUninit::<libc::statfs>::uninit();
    // SAFETY: statfs with a NUL-terminated path and a buffer of the right type; read only on
    // success, when the kernel filled it.
    let rc = unsafe { libc::statfs(c.as_ptr(), st.as_mut_ptr()) };
    // SAFETY: rc == 0: the kernel wrote the whole struct. (`f_type`'s width varies by arch.)
    #[allow(clippy::unnecessary_cast)]
    let nsfs = rc == 0 && unsafe { st.assume_init() }.f_type as i64 == NSFS_MAGIC;
    nsfs
}

fn new_socket() -> Result<Socket> {
    let mut socket = Socket::new(NETLINK_ROUTE).context("opening a route netlink socket")?;
    socket.bind_auto().context("binding the netlink socket")?;
    socket
        .connect(&SocketAddr::new(0, 0))
        .context("connecting the netlink socket")?;
    set_recv_timeout(&socket, Duration::from_secs(1))?;
    Ok(socket)
}

impl RouteConn {
    /// A socket in the network namespace of `host`'s pid 1: ours if it is the same (or pid 1
    /// is out of reach on the real root), else created by a short-lived thread that first
    /// enters it (a socket keeps its namespace). None: a host root with no pid 1 to ask.
    pub fn open(host: &HostRoot) -> Result<Option<RouteConn>> {
        use std::os::unix::fs::MetadataExt;
        let target = host.proc("1/ns/net");
        let theirs = match std::fs::metadata(&target) {
            Ok(m) if is_nsfs(&target) => Some(m),
            // A fixture tree's stand-in file is no namespace.
            Ok(_) if !host.is_real_root() => return Ok(None),
            Ok(_) => None,
            Err(_) if host.is_real_root() => None,
            Err(_) => return Ok(None),
        };
        let ours = std::fs::metadata("/proc/self/ns/net").context("reading /proc/self/ns/net")?;
        let socket = if theirs.is_none_or(|t| t.ino() == ours.ino() && t.dev() == ours.dev()) {
            new_socket()?
        } else {
            let ns =
                File::open(&target).with_context(|| format!("opening {}", target.display()))?;
            std::thread::spawn(move || -> Result<Socket> {
                // SAFETY: setns(CLONE_NEWNET) moves only this short-lived thread, which ends
                // right after creating the socket; `ns` is an open namespace file.
                let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
                if rc != 0 {
                    return Err(std::io::Error::last_os_error())
                        .context("entering the host network namespace");
                }
                new_socket()
            })
            .join()
            .map_err(|_| anyhow::anyhow!("the netns thread panicked"))??
        };
        Ok(Some(RouteConn {
            socket,
            seq: 0,
            buf: Vec::with_capacity(32 * 1024),
        }))
    }

    /// Sends a dump request and hands every reply message to `each`.
    pub fn dump(
        &mut self,
        req: RouteNetlinkMessage,
        mut each: impl FnMut(RouteNetlinkMessage),
    ) -> Result<()> {
        self.seq = self.seq.wrapping_add(1);
        let mut msg = NetlinkMessage::from(req);
        msg.header.flags = NLM_F_REQUEST | NLM_F_DUMP;
        msg.header.sequence_number = self.seq;
        msg.finalize();
        self.buf.clear();
        self.buf.resize(msg.buffer_len(), 0);
        msg.serialize(&mut self.buf);
        self.socket
            .send(&self.buf, 0)
            .context("sending the dump request")?;
        // A dump of a few thousand devices fits in far fewer datagrams than this.
        for _ in 0..10_000 {
            self.buf.clear();
            self.buf.reserve(32 * 1024);
            let n = self
                .socket
                .recv(&mut self.buf, 0)
                .context("receiving the dump")?;
            let mut off = 0;
            while off < n.min(self.buf.len()) {
                let m = match NetlinkMessage::<RouteNetlinkMessage>::deserialize(&self.buf[off..]) {
                    Ok(m) => m,
                    Err(e) => bail!("decoding a netlink message: {e}"),
                };
                let len = m.header.length as usize;
                if m.header.sequence_number == self.seq {
                    match m.payload {
                        NetlinkPayload::Done(_) => return Ok(()),
                        NetlinkPayload::Error(e) => {
                            return Err(e.to_io()).context("the kernel refused the dump")
                        }
                        NetlinkPayload::InnerMessage(inner) => each(inner),
                        _ => {}
                    }
                }
                if len == 0 {
                    break;
                }
                off += (len + 3) & !3;
            }
        }
        bail!("netlink dump did not end")
    }

    pub fn links(&mut self) -> Result<HashMap<u32, String>> {
        let mut names = HashMap::new();
        self.dump(RouteNetlinkMessage::GetLink(LinkMessage::default()), |m| {
            if let RouteNetlinkMessage::NewLink(l) = m {
                for a in &l.attributes {
                    if let LinkAttribute::IfName(n) = a {
                        names.insert(l.header.index, n.clone());
                    }
                }
            }
        })?;
        Ok(names)
    }
}
