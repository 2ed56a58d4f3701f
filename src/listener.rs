//! The HTTP listener: our own accept loop in place of `axum::serve`.
//!
//! A gateway that holds calls for minutes keeps many connections open on
//! purpose, so it must bound what a connection that does *nothing* can cost.
//! `axum::serve` gives no say over that: no header timeout, no cap, accept
//! errors answered with a fixed 1 s sleep and an error line each time. Here:
//!
//! - **Cap.** A semaphore permit per connection (`[server] max_connections`).
//!   When all are taken the loop stops accepting and waits for one: new
//!   connections queue in the kernel's backlog instead of being accepted and
//!   dropped, and the process never needs more descriptors than the cap.
//!   The permit lives in the socket, so an upgraded websocket keeps its own.
//! - **Header timeout.** From accept, or from the first byte of the next
//!   request on a keep-alive connection, the headers must be complete within
//!   `header_timeout`. A slowloris client sending a line now and then is cut.
//!   Headers may take at most [`MAX_BUF`] bytes (hyper answers 431 beyond).
//! - **Body timeout.** Once its headers are in, a request's body must arrive
//!   within `body_timeout` ([`body`]); a client trickling it is cut.
//! - **Write timeout.** A write that takes no byte for `write_timeout` ends
//!   the connection: a client that stops reading a response is cut. Held
//!   calls and event streams write nothing while they wait, so they are not.
//! - **Idle timeout.** A keep-alive connection with no request in flight
//!   and no byte written for `idle_timeout` is closed. A request is in flight
//!   from its headers until its response body is finished, so held calls,
//!   event streams and websockets are never cut by it.
//! - **Open files.** At start the soft `RLIMIT_NOFILE` is raised to the hard
//!   limit and the cap kept below it ([`descriptors`]).
//! - **Accept errors** (EMFILE, ENFILE, ENOBUFS…) back off from 10 ms up to
//!   1 s and retry; the loop never ends on them, and they are logged once
//!   per episode, not once per retry.
//! - **A connection's wakes of itself** (hyper's body channel, when the
//!   handler takes the request body) are handled inside the connection's
//!   own poll rather than as a yield that wakes the other worker thread
//!   ([`inline_wake`]).
//! - **`TCP_NODELAY`** on every accepted socket: the last small write of an
//!   event stream must not wait for the client's delayed ACK (~40 ms).
//!   **`SO_KEEPALIVE`** too (probes after 60 s of silence): a client that
//!   vanished (laptop closed mid-websocket) gives back its permit.
//!
//! Why not hyper's own `header_read_timeout`: hyper 1.x starts it as soon as
//! a connection goes idle (its `State::idle` re-arms the read), so it is also
//! the idle timeout, and a keep-alive connection could not wait longer for
//! its next request than a slow client may take over its headers. The
//! watchdog below keeps the two apart, as Go's `ReadHeaderTimeout` and
//! `IdleTimeout` do.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::ServerConfig;
use crate::metrics::LISTENER;

mod body;
mod descriptors;
mod inline_wake;

use inline_wake::InlineWakes;

pub use body::is_body_timeout;

/// First pause after a failed accept; doubled per failure up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(10);
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// Least time between two log lines about one ongoing condition.
const LOG_EVERY: Duration = Duration::from_secs(60);
/// Most bytes hyper buffers per connection, and the most a request's
/// headers may take (hyper's default is about 400 KB; MCP headers, even
/// with `Mcp-Param-*`, are a few KB).
const MAX_BUF: usize = 64 * 1024;
/// Silence on a connection before the kernel's first keep-alive probe, and
/// between probes.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(60);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);

/// Serves `router` on `listener` until `shutdown`, then lets open
/// connections finish their in-flight requests (the caller bounds that wait).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ServerConfig,
    shutdown: CancellationToken,
) {
    let limits = ServerConfig {
        max_connections: descriptors::effective_cap(limits.max_connections),
        ..limits
    };
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let connections = TaskTracker::new();
    let mut failures = Failures::default();
    let mut full_logged: Option<Instant> = None;
    loop {
        let permit = match permits.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                LISTENER.limit_waits.fetch_add(1, Ordering::Relaxed);
                if full_logged.is_none_or(|at| at.elapsed() >= LOG_EVERY) {
                    full_logged = Some(Instant::now());
                    tracing::warn!(
                        "{} connections open (server.max_connections, or the open-file limit): new ones wait until one closes",
                        limits.max_connections
                    );
                }
                tokio::select! {
                    permit = permits.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
                    () = shutdown.cancelled() => break,
                }
            }
        };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = shutdown.cancelled() => break,
        };
        match accepted {
            Ok((stream, peer)) => {
                failures.recovered();
                let connection = Connection::new(stream, permit, router.clone(), limits);
                let served = Box::pin(connection.serve(peer, shutdown.clone()));
                connections.spawn(InlineWakes::new(served));
            }
            Err(e) => {
                drop(permit);
                if let Some(pause) = failures.failed(&e) {
                    tokio::select! {
                        () = tokio::time::sleep(pause) => {}
                        () = shutdown.cancelled() => break,
                    }
                }
            }
        }
    }
    drop(listener);
    connections.close();
    connections.wait().await;
}

/// The accept loop's run of failures, for backoff and for logging once.
#[derive(Default)]
struct Failures {
    /// Failures since the last successful accept.
    count: u64,
    next_pause: Option<Duration>,
    logged: Option<Instant>,
}

impl Failures {
    /// Counts a failed accept; returns how long to pause before the next.
    fn failed(&mut self, e: &std::io::Error) -> Option<Duration> {
        use std::io::ErrorKind;
        // The peer gave up before we took its connection: nothing is wrong here.
        if matches!(
            e.kind(),
            ErrorKind::ConnectionAborted
                | ErrorKind::ConnectionReset
                | ErrorKind::ConnectionRefused
        ) {
            return None;
        }
        LISTENER.accept_errors.fetch_add(1, Ordering::Relaxed);
        self.count += 1;
        if self.logged.is_none_or(|at| at.elapsed() >= LOG_EVERY) {
            self.logged = Some(Instant::now());
            tracing::warn!(
                "cannot accept connections: {e} ({} failure(s) so far); retrying with backoff up to {MAX_BACKOFF:?}",
                self.count
            );
        }
        let pause = self.next_pause.unwrap_or(MIN_BACKOFF);
        self.next_pause = Some((pause * 2).min(MAX_BACKOFF));
        Some(pause)
    }

    /// A connection was accepted: the run of failures, if any, is over.
    fn recovered(&mut self) {
        if self.count > 0 {
            tracing::info!(
                "accepting connections again after {} failure(s)",
                self.count
            );
            *self = Failures::default();
        }
    }
}

/// One accepted connection, before hyper takes it.
struct Connection {
    socket: Socket,
    activity: Arc<Activity>,
    router: Router,
    limits: ServerConfig,
}

/// Why the watchdog closed a connection.
#[derive(Debug, Clone, Copy)]
enum Cut {
    Header,
    Idle,
}

impl Connection {
    fn new(
        stream: TcpStream,
        permit: OwnedSemaphorePermit,
        router: Router,
        limits: ServerConfig,
    ) -> Connection {
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!("cannot set TCP_NODELAY: {e}");
        }
        let keepalive = socket2::TcpKeepalive::new()
            .with_time(KEEPALIVE_IDLE)
            .with_interval(KEEPALIVE_INTERVAL);
        if let Err(e) = socket2::SockRef::from(&stream).set_tcp_keepalive(&keepalive) {
            tracing::debug!("cannot set SO_KEEPALIVE: {e}");
        }
        let activity = Arc::new(Activity::new());
        LISTENER.open.fetch_add(1, Ordering::Relaxed);
        let socket = Socket {
            stream,
            activity: activity.clone(),
            write_timeout: limits.write_timeout,
            write_stall: None,
            _permit: permit,
        };
        Connection {
            socket,
            activity,
            router,
            limits,
        }
    }

    async fn serve(self, peer: SocketAddr, shutdown: CancellationToken) {
        let Connection {
            socket,
            activity,
            router,
            limits,
        } = self;
        let busy = activity.clone();
        let body_timeout = limits.body_timeout;
        let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
            let mut request =
                request.map(|body| axum::body::Body::new(body::TimedBody::new(body, body_timeout)));
            // What `into_make_service_with_connect_info` did: handlers read the peer.
            request.extensions_mut().insert(ConnectInfo(peer));
            let in_flight = busy.begin();
            let mut router = router.clone();
            async move {
                // `Router::poll_ready` is always ready, so `call` needs no `ready()`.
                let response = tower_service::Service::call(&mut router, request).await;
                // The request stays in flight until hyper drops the body
                // (finished or abandoned): the closure owns the guard.
                response.map(|r| {
                    r.map(move |body| {
                        body.map_frame(move |frame| {
                            // Mentioned, so the `move` closure owns it.
                            let _ = &in_flight;
                            frame
                        })
                    })
                })
            }
        });
        let mut conn = pin!(
            hyper::server::conn::http1::Builder::new()
                .keep_alive(true)
                // The watchdog times headers (see the module doc).
                .header_read_timeout(None)
                .max_buf_size(MAX_BUF)
                // A read can overshoot `max_buf_size`; this bounds what is parsed.
                .max_header_size(MAX_BUF)
                .serve_connection(TokioIo::new(socket), service)
                .with_upgrades()
        );
        let mut watchdog = pin!(Watchdog::new(&activity, limits));
        // Biased: the watchdog is polled after the connection, so it reads
        // the state the connection's poll has just changed (see `Watchdog`).
        tokio::select! {
            biased;
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(%peer, "connection ended: {e}");
                }
            }
            cut = &mut watchdog => {
                let counter = match cut {
                    Cut::Header => &LISTENER.header_timeouts,
                    Cut::Idle => &LISTENER.idle_timeouts,
                };
                counter.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%peer, "connection closed: {cut:?} timeout");
            }
            () = shutdown.cancelled() => {
                // Idle connections close now; busy ones after their response.
                conn.as_mut().graceful_shutdown();
                tokio::select! {
                    _ = conn.as_mut() => {}
                    _ = &mut watchdog => {}
                }
            }
        }
    }
}

/// The accepted socket as hyper sees it. Reads tell [`Activity`] that a
/// request has started, writes that the connection is not idle; a write
/// blocked for `write_timeout` fails. Dropping it (connection closed, or
/// the websocket it was upgraded to ended) gives back the permit.
struct Socket {
    stream: TcpStream,
    activity: Arc<Activity>,
    write_timeout: Duration,
    /// Set while a write is blocked: when it began to be, as a timer.
    write_stall: Option<Pin<Box<Sleep>>>,
    _permit: OwnedSemaphorePermit,
}

impl Socket {
    /// Accounts for one polled write (or flush): progress clears the stall
    /// timer; a write blocked longer than `write_timeout` becomes an error.
    fn written<T>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<std::io::Result<T>>,
    ) -> Poll<std::io::Result<T>> {
        if polled.is_ready() {
            self.write_stall = None;
            self.activity.bytes_written();
            return polled;
        }
        let timeout = self.write_timeout;
        let stall = self
            .write_stall
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        if stall.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        LISTENER.write_timeouts.fetch_add(1, Ordering::Relaxed);
        Poll::Ready(Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("no byte written for {timeout:?} (server.write_timeout)"),
        )))
    }
}

impl Drop for Socket {
    fn drop(&mut self) {
        LISTENER.open.fetch_sub(1, Ordering::Relaxed);
    }
}

impl AsyncRead for Socket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.stream).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.activity.bytes_read();
        }
        polled
    }
}

impl AsyncWrite for Socket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.stream).poll_write(cx, buf);
        this.written(cx, polled)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.stream).poll_write_vectored(cx, bufs);
        this.written(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

/// Milliseconds since the connection was accepted; `NONE` for "not yet".
const NONE: u64 = u64::MAX;

/// What a connection is doing, shared by its socket, its requests and its
/// watchdog. Atomics rather than a lock: every read touches it.
struct Activity {
    accepted: Instant,
    /// Requests whose response is not finished.
    in_flight: AtomicUsize,
    /// When the connection last became idle (accept, or a response finished).
    idle_since: AtomicU64,
    /// When a write last made progress: a response still being flushed
    /// after hyper let go of its body keeps the connection from being idle.
    last_write: AtomicU64,
    /// When bytes of a request whose headers are not complete began to arrive.
    request_started: AtomicU64,
}

/// Ends one request's time in flight when dropped.
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let activity = &self.0;
        if activity.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            activity.idle_since.store(activity.now(), Ordering::Release);
        }
    }
}

impl Activity {
    fn new() -> Activity {
        Activity {
            accepted: Instant::now(),
            in_flight: AtomicUsize::new(0),
            idle_since: AtomicU64::new(0),
            last_write: AtomicU64::new(0),
            // A new connection owes its first request's headers from the start.
            request_started: AtomicU64::new(0),
        }
    }

    fn now(&self) -> u64 {
        self.accepted.elapsed().as_millis() as u64
    }

    fn at(&self, millis: u64) -> Instant {
        self.accepted + Duration::from_millis(millis)
    }

    /// Bytes arrived. With no request in flight they start the next one's
    /// headers. (Bytes hyper buffered during the previous request are not
    /// seen here; such a request waits under the idle timeout instead.)
    fn bytes_read(&self) {
        if self.in_flight.load(Ordering::Acquire) == 0
            && self.request_started.load(Ordering::Acquire) == NONE
        {
            self.request_started.store(self.now(), Ordering::Release);
        }
    }

    /// A write made progress. No wake-up: the watchdog re-reads the
    /// deadline when its timer fires.
    fn bytes_written(&self) {
        self.last_write.store(self.now(), Ordering::Relaxed);
    }

    /// Hyper has a request's headers: it is in flight until the guard drops.
    fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.request_started.store(NONE, Ordering::Release);
        InFlight(self.clone())
    }

    /// The current deadline and its kind; None while a request is in flight.
    fn deadline(&self, limits: ServerConfig) -> Option<(Instant, Cut)> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        match self.request_started.load(Ordering::Acquire) {
            NONE => {
                let idle_since = self.idle_since.load(Ordering::Acquire);
                let last_write = self.last_write.load(Ordering::Relaxed);
                Some((
                    self.at(idle_since.max(last_write)) + limits.idle_timeout,
                    Cut::Idle,
                ))
            }
            started => Some((self.at(started) + limits.header_timeout, Cut::Header)),
        }
    }
}

/// Resolves when the connection has overrun a deadline.
///
/// Every change to [`Activity`] happens inside the connection's own poll
/// (reads, writes, the service call, hyper dropping a response body), and
/// the watchdog is polled right after it in the same task: it re-reads the
/// deadline on each poll and needs no wake-up of its own. (It used to be
/// woken by a `Notify` three times per request, from inside the task's own
/// poll; tokio then re-queued the task and woke the other worker thread,
/// a futex call and often a move to the other core per request.) The timer
/// is moved only when the deadline comes earlier; a later deadline is read
/// when the armed timer fires.
struct Watchdog<'a> {
    activity: &'a Activity,
    limits: ServerConfig,
    timer: Pin<Box<Sleep>>,
    armed: Option<Instant>,
}

impl<'a> Watchdog<'a> {
    fn new(activity: &'a Activity, limits: ServerConfig) -> Watchdog<'a> {
        Watchdog {
            activity,
            limits,
            timer: Box::pin(tokio::time::sleep_until(activity.accepted)),
            armed: None,
        }
    }
}

impl Future for Watchdog<'_> {
    type Output = Cut;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Cut> {
        let this = self.get_mut();
        loop {
            // In flight: nothing to time until the connection's poll ends it.
            let Some((at, cut)) = this.activity.deadline(this.limits) else {
                return Poll::Pending;
            };
            if at <= Instant::now() {
                return Poll::Ready(cut);
            }
            if this.armed.is_none_or(|armed| at < armed) {
                this.timer.as_mut().reset(at);
                this.armed = Some(at);
            }
            match this.timer.as_mut().poll(cx) {
                Poll::Pending => return Poll::Pending,
                // Fired: read the deadline again (it may have moved later).
                Poll::Ready(()) => this.armed = None,
            }
        }
    }
}

#[cfg(test)]
mod tests;
