//! The HTTP accept loop: what axum's `serve` leaves open to a local user holding connections.
//!
//! - A client must send a whole request head within `header_read_timeout` of connecting or of
//!   its previous response (hyper's header timer also runs while a keep-alive connection idles):
//!   idle and slow-header connections are closed.
//! - A response the client stops reading is cut once a write made no progress for
//!   `write_timeout` (a non-reading stream client, a scraper that went away).
//! - At most `max_connections` are open, below the fd limit; at the cap a new connection evicts
//!   the oldest one that has no request in flight, so idle holders cannot lock others out. When
//!   every connection is busy the new one is closed at once.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::Router;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tower::ServiceExt;

/// File descriptors kept for everything but HTTP connections (BPF maps and links, ring
/// buffers, the store, procfs files kept open, container runtime sockets): an idle agent with
/// every default tracer holds ~260 (108 BPF maps, 58 links and programs, 40 eventfds, 22 epoll
/// sets), and captures open perf events per CPU on top.
const RESERVED_FDS: u64 = 512;
/// The smallest connection cap whatever the fd limit (a scraper, the CLI, a few streams).
const MIN_CONNECTIONS: usize = 16;

/// Limits of the accept loop (`[server]` keys).
#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    pub write_timeout: Duration,
}

/// Connection gauges and counters (`…_http_*` metrics).
#[derive(Debug, Default)]
pub struct ConnStats {
    pub open: AtomicUsize,
    pub accepted_total: AtomicU64,
    /// Idle connections closed to make room for a new one at the cap.
    pub evicted_total: AtomicU64,
    /// New connections closed at once because every open one was busy.
    pub refused_total: AtomicU64,
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit and returns the soft limit in force.
pub fn raise_nofile_limit() -> io::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: setrlimit reads the struct we own; raising soft to hard needs no privilege.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
            return Err(io::Error::last_os_error());
        }
        lim.rlim_cur = lim.rlim_max;
    }
    Ok(lim.rlim_cur)
}

/// The connection cap in force: the configured one, kept [`RESERVED_FDS`] below the fd limit.
pub fn effective_max_connections(configured: usize, nofile: u64) -> usize {
    let room = nofile.saturating_sub(RESERVED_FDS);
    let room = usize::try_from(room).unwrap_or(usize::MAX);
    configured.min(room).max(MIN_CONNECTIONS)
}

/// One open connection, as the accept loop and the requests on it see it.
struct Conn {
    accepted: Instant,
    /// Requests whose response (body included) is not finished.
    in_flight: AtomicUsize,
    /// Set once the connection was picked for eviction (not picked twice).
    evicting: AtomicBool,
    /// Close now (evicted; the response may be cut).
    close: Notify,
    /// Close once the response in flight is written.
    finish: Notify,
    /// Things that live as long as the connection (a live-stream slot).
    held: Mutex<Vec<Box<dyn Send>>>,
}

/// The connection a request came on (a request extension).
#[derive(Clone)]
pub struct ConnHandle(Arc<Conn>);

impl ConnHandle {
    /// Keeps `guard` until the TCP connection closes (not just until this response ends).
    pub fn hold(&self, guard: impl Send + 'static) {
        self.0
            .held
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Box::new(guard));
    }

    /// Closes the connection once the response in flight is written (or the write timeout
    /// cuts it): no further request is read from it.
    pub fn close_when_done(&self) {
        self.0.finish.notify_one();
    }
}

/// Counts a request in flight on its connection until its response body is dropped.
struct InFlight(Arc<Conn>);

impl InFlight {
    fn new(conn: Arc<Conn>) -> InFlight {
        conn.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(conn)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

#[derive(Default)]
struct Registry {
    next_id: AtomicU64,
    conns: Mutex<HashMap<u64, Arc<Conn>>>,
}

impl Registry {
    /// Picks the oldest connection with nothing in flight and tells it to close.
    fn evict_idle(&self) -> bool {
        let conns = self.conns.lock().unwrap_or_else(|e| e.into_inner());
        let victim = conns
            .values()
            .filter(|c| {
                c.in_flight.load(Ordering::Acquire) == 0 && !c.evicting.load(Ordering::Acquire)
            })
            .min_by_key(|c| c.accepted);
        match victim {
            Some(c) => {
                c.evicting.store(true, Ordering::Release);
                c.close.notify_one();
                true
            }
            None => false,
        }
    }
}

/// Removes a connection from the registry when its task ends.
struct Registered {
    registry: Arc<Registry>,
    stats: Arc<ConnStats>,
    id: u64,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.registry
            .conns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.id);
        self.stats.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Serves `app` on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    limits: ConnLimits,
    stats: Arc<ConnStats>,
    shutdown: impl Future<Output = ()>,
) {
    let registry = Arc::new(Registry::default());
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true);
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = &mut shutdown => return,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                // EMFILE and the like: the cap should prevent it; back off instead of spinning.
                tracing::warn!(error = %e, "http: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        stats.accepted_total.fetch_add(1, Ordering::Relaxed);
        if stats.open.load(Ordering::Acquire) >= limits.max_connections {
            if registry.evict_idle() {
                stats.evicted_total.fetch_add(1, Ordering::Relaxed);
            } else {
                stats.refused_total.fetch_add(1, Ordering::Relaxed);
                drop(stream);
                continue;
            }
        }
        let conn = Arc::new(Conn {
            accepted: Instant::now(),
            in_flight: AtomicUsize::new(0),
            evicting: AtomicBool::new(false),
            close: Notify::new(),
            finish: Notify::new(),
            held: Mutex::new(Vec::new()),
        });
        let id = registry.next_id.fetch_add(1, Ordering::Relaxed);
        registry
            .conns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, conn.clone());
        stats.open.fetch_add(1, Ordering::AcqRel);
        let registered = Registered {
            registry: registry.clone(),
            stats: stats.clone(),
            id,
        };
        let http = http.clone();
        let app = app.clone();
        tokio::spawn(async move {
            let _registered = registered;
            let svc_conn = conn.clone();
            let svc = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
                let app = app.clone();
                let conn = svc_conn.clone();
                async move {
                    req.extensions_mut().insert(ConnHandle(conn.clone()));
                    let in_flight = InFlight::new(conn);
                    let Ok(mut resp) = app.oneshot(req.map(Body::new)).await;
                    // A client refused for a cap (429) must not keep its connection instead.
                    if resp.status() == hyper::StatusCode::TOO_MANY_REQUESTS {
                        resp.headers_mut().insert(
                            hyper::header::CONNECTION,
                            hyper::header::HeaderValue::from_static("close"),
                        );
                    }
                    // The request counts as in flight until hyper drops the body (a stream
                    // lasts as long as its client).
                    Ok::<_, Infallible>(resp.map(|body| {
                        Body::new(body.map_frame(move |frame| {
                            let _in_flight = &in_flight;
                            frame
                        }))
                    }))
                }
            });
            let io = TokioIo::new(WriteTimeout::new(stream, limits.write_timeout));
            let served = http.serve_connection(io, svc);
            tokio::pin!(served);
            let mut finishing = false;
            loop {
                tokio::select! {
                    _ = served.as_mut() => break,
                    // Dropping the connection closes the socket.
                    _ = conn.close.notified() => break,
                    _ = conn.finish.notified(), if !finishing => finishing = true,
                }
                served.as_mut().graceful_shutdown();
            }
            // Release what the requests left with the connection (stream slots) with it.
            conn.held.lock().unwrap_or_else(|e| e.into_inner()).clear();
        });
    }
}

/// A socket whose writes fail once one made no progress for `limit` (the peer stopped reading).
struct WriteTimeout {
    inner: TcpStream,
    limit: Duration,
    stalled: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl WriteTimeout {
    fn new(inner: TcpStream, limit: Duration) -> WriteTimeout {
        WriteTimeout {
            inner,
            limit,
            stalled: None,
        }
    }

    fn on_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        let limit = self.limit;
        let sleep = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client read nothing for the write timeout",
            )),
            Poll::Pending => Poll::Pending,
        }
    }

    fn check<T>(&mut self, cx: &mut Context<'_>, r: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        match r {
            Poll::Ready(r) => {
                self.stalled = None;
                Poll::Ready(r)
            }
            Poll::Pending => self.on_pending(cx).map(Err),
        }
    }
}

impl AsyncRead for WriteTimeout {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for WriteTimeout {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.check(cx, r)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.check(cx, r)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_flush(cx);
        self.check(cx, r)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.check(cx, r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cap_stays_below_the_fd_limit() {
        assert_eq!(effective_max_connections(1024, 1_048_576), 1024);
        assert_eq!(effective_max_connections(1024, 1024), 512);
        assert_eq!(effective_max_connections(1024, 100), MIN_CONNECTIONS);
    }
}
