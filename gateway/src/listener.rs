//! Serves the MCP listener's connections: TLS when configured, a cap on connections per client
//! address, and a bound on how long a connection may take to send a request's headers and how
//! long it may sit idle, so slow or silent clients cannot hold connections open.
//!
//! The clocks follow the usual server semantics: a new connection must complete its TLS
//! handshake, then send a complete request head, each within `header_read_timeout`. Between
//! requests (no request in flight) a connection may stay silent for `idle_timeout`; once the
//! first byte of the next request arrives, its head must be complete within
//! `header_read_timeout` of that byte. A request in flight is never cut off by these clocks
//! (a `job wait` may legitimately send nothing for minutes). The checks hold for HTTP/1.1 and
//! HTTP/2 alike; on HTTP/2 any frame from an idle client starts the header clock.

use std::collections::HashMap;
use std::convert::Infallible;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use bytes::Bytes;
use http_body::{Body as HttpBody, Frame};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt as _;
use tracing::debug;

use crate::config::Config;

/// How long a connection told to close (idle, too slow, shutting down with nothing in flight)
/// may take to do so before it is dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(1);
/// Bounds of how often a connection's clocks are checked.
const TICK_MIN: Duration = Duration::from_millis(50);
const TICK_MAX: Duration = Duration::from_secs(1);

/// The bounds a connection lives under (see the module docs).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// TLS handshake, and a request's head from its first byte (or the connection's start).
    pub header_read_timeout: Duration,
    /// Silence between requests.
    pub idle_timeout: Duration,
    /// Connections one client address may hold at once; 0: no cap.
    pub max_per_address: usize,
}

impl Limits {
    /// The limits `config` sets.
    pub fn of(config: &Config) -> Self {
        Self {
            header_read_timeout: config.header_read_timeout,
            idle_timeout: config.idle_timeout,
            max_per_address: config.max_connections_per_address,
        }
    }

    /// How often a connection's clocks are looked at: often enough to close within a quarter
    /// of the shorter bound.
    fn tick(&self) -> Duration {
        (self.header_read_timeout.min(self.idle_timeout) / 4).clamp(TICK_MIN, TICK_MAX)
    }
}

/// Serves `app` on `listener` until `shutdown` is cancelled, then stops accepting and waits for
/// the connections to finish their requests in flight. With `tls` every connection is a TLS
/// connection.
pub async fn serve(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    app: Router,
    limits: Limits,
    shutdown: CancellationToken,
) {
    let acceptor = tls.map(TlsAcceptor::from);
    let per_address = Arc::new(PerAddress::new(limits.max_per_address));
    let connections = TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (tcp, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                debug!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Some(slot) = per_address.acquire(peer.ip()) else {
            // Dropping the socket closes it: the client sees the connection end at once.
            debug!(peer = %peer, max = limits.max_per_address, "connection refused: too many from this address");
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let app = app.clone();
        let acceptor = acceptor.clone();
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            let _slot = slot;
            match acceptor {
                None => connection(tcp, peer, app, limits, shutdown).await,
                Some(acceptor) => {
                    match handshake(&acceptor, tcp, limits.header_read_timeout).await {
                        Ok(tls) => connection(tls, peer, app, limits, shutdown).await,
                        Err(e) => debug!(peer = %peer, error = %e, "TLS handshake failed"),
                    }
                }
            }
        });
    }
    // Free the port before waiting for the connections.
    drop(listener);
    connections.close();
    connections.wait().await;
}

async fn handshake(
    acceptor: &TlsAcceptor,
    tcp: TcpStream,
    within: Duration,
) -> io::Result<tokio_rustls::server::TlsStream<TcpStream>> {
    match tokio::time::timeout(within, acceptor.accept(tcp)).await {
        Ok(result) => result,
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("not completed within {within:?} (header_read_timeout_secs)"),
        )),
    }
}

/// Serves one connection until it ends, the gateway shuts down, or a clock runs out.
async fn connection<I>(
    io: I,
    peer: SocketAddr,
    app: Router,
    limits: Limits,
    shutdown: CancellationToken,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let activity = Arc::new(Activity::new());
    let io = TokioIo::new(Watched {
        inner: io,
        activity: activity.clone(),
    });
    let service = {
        let activity = activity.clone();
        hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
            // Handlers read the client's address like axum's `into_make_service_with_connect_info`.
            request.extensions_mut().insert(ConnectInfo(peer));
            let busy = activity.begin();
            let app = app.clone();
            async move {
                let response = app.oneshot(request.map(Body::new)).await?;
                Ok::<_, Infallible>(response.map(|body| Body::new(Tracked { body, _busy: busy })))
            }
        })
    };
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // The clocks below bound headers; hyper's own header timer would also cut idle kept-alive
    // connections at the header bound.
    builder.http1().header_read_timeout(None).keep_alive(true);
    let conn = builder.serve_connection(io, service);
    tokio::pin!(conn);
    let mut ticks = tokio::time::interval(limits.tick());
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // When set, the connection was told to close and is dropped at this instant if it has not.
    let mut closing: Option<Instant> = None;
    loop {
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    debug!(peer = %peer, error = %e, "connection ended with an error");
                }
                return;
            }
            _ = shutdown.cancelled(), if closing.is_none() => {
                conn.as_mut().graceful_shutdown();
                closing = Some(Instant::now() + CLOSE_GRACE);
            }
            _ = ticks.tick() => {
                if let Some(deadline) = closing {
                    // Requests in flight finish; a connection with none is dropped.
                    if Instant::now() >= deadline && activity.in_flight() == 0 {
                        debug!(peer = %peer, "connection dropped after it was told to close");
                        return;
                    }
                } else if let Some(why) = activity.expired(&limits) {
                    debug!(peer = %peer, reason = why, "closing connection");
                    conn.as_mut().graceful_shutdown();
                    closing = Some(Instant::now() + CLOSE_GRACE);
                }
            }
        }
    }
}

// === Activity ===

/// What a connection's clocks look at. Times are milliseconds since the connection started.
struct Activity {
    started: Instant,
    /// Requests whose response has not been sent in full.
    in_flight: AtomicUsize,
    /// When the connection last had no request in flight (start, or the end of a response).
    idle_since: AtomicU64,
    /// One more than when the next request's first byte arrived; 0 while none has. A new
    /// connection's clock starts at once (1): it must send a request, not wait.
    head_started: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Self {
            started: Instant::now(),
            in_flight: AtomicUsize::new(0),
            idle_since: AtomicU64::new(0),
            head_started: AtomicU64::new(1),
        }
    }

    fn now(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    /// A request arrived (its head is read): its clocks stop until its response is sent.
    fn begin(self: &Arc<Self>) -> Busy {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.head_started.store(0, Ordering::Release);
        Busy {
            activity: self.clone(),
        }
    }

    /// Bytes were read: while no request is in flight they start the next request's head.
    fn read(&self) {
        if self.in_flight() == 0 {
            let _ = self.head_started.compare_exchange(
                0,
                self.now() + 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            );
        }
    }

    /// Why the connection should close now, if it should.
    fn expired(&self, limits: &Limits) -> Option<&'static str> {
        if self.in_flight() > 0 {
            return None;
        }
        let now = self.now();
        match self.head_started.load(Ordering::Acquire) {
            0 => {
                let idle = now.saturating_sub(self.idle_since.load(Ordering::Acquire));
                (idle >= limits.idle_timeout.as_millis() as u64).then_some("idle_timeout")
            }
            started => {
                let waited = now.saturating_sub(started - 1);
                (waited >= limits.header_read_timeout.as_millis() as u64)
                    .then_some("header_read_timeout")
            }
        }
    }
}

/// Held while a request is in flight: from its head until its response body is sent (or the
/// connection drops it).
struct Busy {
    activity: Arc<Activity>,
}

impl Drop for Busy {
    fn drop(&mut self) {
        let activity = &self.activity;
        if activity.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            activity.idle_since.store(activity.now(), Ordering::Release);
            activity.head_started.store(0, Ordering::Release);
        }
    }
}

/// A response body that keeps its request counted as in flight until it is dropped.
struct Tracked {
    body: Body,
    _busy: Busy,
}

impl HttpBody for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// The connection's socket, telling its [`Activity`] when bytes arrive.
struct Watched<I> {
    inner: I,
    activity: Arc<Activity>,
}

impl<I: AsyncRead + Unpin> AsyncRead for Watched<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.activity.read();
        }
        polled
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Watched<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

// === PerAddress ===

/// Open connections per client address, capped.
struct PerAddress {
    /// 0: no cap.
    max: usize,
    counts: Mutex<HashMap<IpAddr, usize>>,
}

/// One counted connection; dropping it frees its place.
struct Slot {
    owner: Option<(Arc<PerAddress>, IpAddr)>,
}

impl PerAddress {
    fn new(max: usize) -> Self {
        Self {
            max,
            counts: Mutex::new(HashMap::new()),
        }
    }

    /// A place for one more connection from `ip`, or `None` when it holds `max` already.
    fn acquire(self: &Arc<Self>, ip: IpAddr) -> Option<Slot> {
        if self.max == 0 {
            return Some(Slot { owner: None });
        }
        // `::ffff:10.0.0.1` and `10.0.0.1` are one client.
        let ip = ip.to_canonical();
        let mut counts = match self.counts.lock() {
            Ok(counts) => counts,
            Err(poisoned) => poisoned.into_inner(),
        };
        let count = counts.entry(ip).or_insert(0);
        if *count >= self.max {
            return None;
        }
        *count += 1;
        Some(Slot {
            owner: Some((self.clone(), ip)),
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let Some((per_address, ip)) = self.owner.take() else {
            return;
        };
        let mut counts = match per_address.counts.lock() {
            Ok(counts) => counts,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some(count) = counts.get_mut(&ip) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                counts.remove(&ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_gets_at_most_its_cap_and_others_are_not_affected() {
        let per = Arc::new(PerAddress::new(2));
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let first = per.acquire(a).unwrap();
        let _second = per.acquire(mapped).unwrap();
        assert!(per.acquire(a).is_none(), "a third from the same address");
        let _other = per.acquire(b).unwrap();
        drop(first);
        assert!(per.acquire(a).is_some(), "a freed place is reused");
        let unlimited = Arc::new(PerAddress::new(0));
        let held: Vec<_> = (0..1000).map(|_| unlimited.acquire(a).unwrap()).collect();
        assert_eq!(held.len(), 1000);
    }

    #[test]
    fn clocks_run_only_while_no_request_is_in_flight() {
        let limits = Limits {
            header_read_timeout: Duration::from_millis(0),
            idle_timeout: Duration::from_secs(3600),
            max_per_address: 0,
        };
        let activity = Arc::new(Activity::new());
        // A fresh connection must send its request within the header bound.
        assert_eq!(activity.expired(&limits), Some("header_read_timeout"));
        let busy = activity.begin();
        assert_eq!(activity.expired(&limits), None, "a request in flight");
        activity.read();
        assert_eq!(
            activity.expired(&limits),
            None,
            "its body is not a new head"
        );
        drop(busy);
        // Idle between requests: the idle bound, not the header bound.
        assert_eq!(activity.expired(&limits), None);
        activity.read();
        assert_eq!(activity.expired(&limits), Some("header_read_timeout"));
        let idle = Limits {
            header_read_timeout: Duration::from_secs(3600),
            idle_timeout: Duration::from_millis(0),
            max_per_address: 0,
        };
        let activity = Arc::new(Activity::new());
        drop(activity.begin());
        assert_eq!(activity.expired(&idle), Some("idle_timeout"));
    }
}
