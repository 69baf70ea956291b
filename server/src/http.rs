//! The HTTP port: accepts connections, bounds them, and serves the router on
//! each with hyper's HTTP/1 connection. `axum::serve` sets none of these
//! bounds, so the accept loop and the connections are ours.
//!
//! * **Connections** — at most `server.connections_max` at once (a
//!   semaphore). One over the cap is accepted and closed at once, nothing
//!   read (`tally_http_connections_refused_total`): its client learns at
//!   once instead of waiting in the kernel's backlog, and the backlog keeps
//!   draining.
//! * **Request heads** — a connection must send a whole request head within
//!   `server.header_read_timeout_ms` of being accepted or of the head's
//!   first byte: slowloris clients that trickle a request line, or connect
//!   and send nothing, are closed (`reason="header_timeout"`).
//! * **Heads** — at most `server.header_bytes_max` bytes (431 beyond),
//!   which is also the most a connection buffers while reading.
//! * **Keep-alive** — between requests a connection may stay silent for
//!   `server.keep_alive_timeout_ms` (`reason="idle_timeout"`).
//! * While a request is in flight (from its head to the last byte of its
//!   answer) neither timeout runs: the router's `request_timeout_ms` bounds
//!   the handler, body read included, and an event stream lives as long as
//!   its subscriber (bounded by `events.subscribers_max`).
//! * **TLS** — with `server.tls_cert` and `tls_key`, every connection is
//!   TLS (rustls on the `ring` provider, TLS 1.2 and 1.3, ALPN
//!   `http/1.1`); the handshake must finish within the header timeout
//!   (`reason="tls_handshake"` otherwise, or when it fails).
//! * **Shutdown** — when `stop` turns true: no more accepts; every
//!   connection finishes the request it is serving and closes (hyper's
//!   graceful shutdown, idle ones at once); `serve` returns when all are
//!   closed. The caller bounds the wait (`shutdown_grace_ms`).
//!
//! How the timeouts know where a connection is: `Phase`, shared by the
//! connection's reader (`Watched`: bytes arrived), the service (a request
//! started: `InFlight`) and the answer's body (`Tracked`: when it is
//! dropped, the answer is done). A task of its own per connection
//! (`watch_deadlines`) sleeps until the time it armed, at most the shorter
//! of the two timeouts ahead, then reads the phase: past its deadline, it
//! tells the connection's task to close; else it arms again. A phase
//! change wakes it only when it moves the deadline before the armed time,
//! so a busy keep-alive connection costs no timer and no wake-up per
//! request, and its serving task polls hyper's connection and one channel.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use bytes::Bytes;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::{Notify, Semaphore, watch};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tower::Service;

use crate::config::{HEADER_BYTES_MIN, ServerConfig};
use crate::metrics::{CloseReason, ClosedLabels, ConnectionMetrics};

/// How long the accept loop waits after an accept error that is not about
/// one connection (out of file descriptors): long enough not to spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// The port's bounds, from `[server]`.
#[derive(Clone, Copy, Debug)]
pub struct Bounds {
    pub header_read_timeout: Duration,
    pub keep_alive_timeout: Duration,
    pub connections_max: usize,
    pub header_bytes_max: usize,
}

impl Bounds {
    pub fn of(config: &ServerConfig) -> Self {
        Self {
            header_read_timeout: Duration::from_millis(config.header_read_timeout_ms),
            keep_alive_timeout: Duration::from_millis(config.keep_alive_timeout_ms),
            connections_max: config.connections_max,
            header_bytes_max: config.header_bytes_max.max(HEADER_BYTES_MIN),
        }
    }
}

/// Why the TLS settings cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("server.tls_cert {path}: {reason}")]
    Cert { path: PathBuf, reason: String },
    #[error("server.tls_key {path}: {reason}")]
    Key { path: PathBuf, reason: String },
    #[error("server.tls_cert and tls_key do not make a TLS server: {0}")]
    Config(String),
}

/// The TLS side of the port from a PEM certificate chain and its key.
pub fn tls_acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, TlsError> {
    let cert_error = |reason: String| TlsError::Cert { path: cert.to_owned(), reason };
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(|e| cert_error(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| cert_error(e.to_string()))?;
    if chain.is_empty() {
        return Err(cert_error("no certificate in the file".into()));
    }
    let key =
        PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::Key { path: key.to_owned(), reason: e.to_string() })?;
    // ring, not aws-lc-rs: the build needs no cmake or C toolchain. rustls
    // deprecates it for having no post-quantum key exchange (X25519MLKEM768),
    // which docs/SECURITY.md lists as not protected.
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Serves `router` on `listener` (TLS on each connection with `tls`) until
/// `stop` turns true, then waits for the open connections to finish (see
/// the module docs).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    bounds: Bounds,
    metrics: Arc<ConnectionMetrics>,
    tls: Option<TlsAcceptor>,
    mut stop: watch::Receiver<bool>,
) {
    let permits = Arc::new(Semaphore::new(bounds.connections_max));
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.wait_for(|stop| *stop) => break,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) if is_connection_error(&error) => continue,
            Err(error) => {
                tracing::warn!(%error, "accepting an HTTP connection failed; pausing");
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
            metrics.refused.inc();
            tracing::debug!(%peer, "connection over server.connections_max: closed");
            drop(stream);
            continue;
        };
        metrics.accepted.inc();
        let connection =
            Connection { peer, router: router.clone(), bounds, metrics: Arc::clone(&metrics), stop: stop.clone() };
        let tls = tls.clone();
        tokio::spawn(async move {
            let metrics = Arc::clone(&connection.metrics);
            metrics.open.inc();
            match tls {
                None => connection.run(stream).await,
                Some(acceptor) => {
                    let handshake = tokio::time::timeout(bounds.header_read_timeout, acceptor.accept(stream)).await;
                    match handshake {
                        Ok(Ok(stream)) => connection.run(stream).await,
                        Ok(Err(error)) => connection.handshake_failed(&error.to_string()),
                        Err(_) => connection.handshake_failed("not done within server.header_read_timeout_ms"),
                    }
                }
            }
            metrics.open.dec();
            drop(permit);
        });
    }
    // No more accepts: a new client is refused instead of waiting in the
    // backlog. Every connection holds a permit until it closes.
    drop(listener);
    let all = u32::try_from(bounds.connections_max).unwrap_or(u32::MAX);
    let _closed = permits.acquire_many(all).await;
}

/// Errors of `accept` that concern the one connection being accepted.
fn is_connection_error(error: &std::io::Error) -> bool {
    use std::io::ErrorKind;
    matches!(error.kind(), ErrorKind::ConnectionRefused | ErrorKind::ConnectionAborted | ErrorKind::ConnectionReset)
}

/// One accepted connection and what serving it needs.
struct Connection {
    peer: SocketAddr,
    router: Router,
    bounds: Bounds,
    metrics: Arc<ConnectionMetrics>,
    stop: watch::Receiver<bool>,
}

impl Connection {
    fn handshake_failed(&self, why: &str) {
        self.metrics.closed.get_or_create(&ClosedLabels { reason: CloseReason::tls_handshake }).inc();
        tracing::debug!(peer = %self.peer, why, "TLS handshake failed; connection closed");
    }

    /// Serves HTTP/1 on `io` until the client closes, a deadline passes, or
    /// shutdown ends it.
    async fn run<T>(self, io: T)
    where
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let watch = Arc::new(Watch::new(&self.bounds));
        let io = TokioIo::new(Watched { inner: io, watch: Arc::clone(&watch) });
        let service = Serve { router: self.router.clone(), peer: self.peer, watch: Arc::clone(&watch) };
        let mut builder = http1::Builder::new();
        // Ours (the `Watch`) replaces hyper's header timeout, which would
        // also end idle keep-alive connections at the same deadline.
        builder
            .header_read_timeout(None)
            .keep_alive(true)
            .max_buf_size(self.bounds.header_bytes_max)
            .max_header_size(self.bounds.header_bytes_max);
        let connection = builder.serve_connection(io, service);
        tokio::pin!(connection);
        let (ends_tx, mut ends) = tokio::sync::mpsc::channel(2);
        let _watchdog = AbortOnDrop(tokio::spawn(watch_deadlines(watch, self.stop.clone(), ends_tx)));
        loop {
            tokio::select! {
                biased;
                result = connection.as_mut() => {
                    if let Err(error) = result {
                        tracing::debug!(peer = %self.peer, %error, "HTTP connection ended with an error");
                    }
                    return;
                }
                end = ends.recv() => match end {
                    Some(End::Stop) => connection.as_mut().graceful_shutdown(),
                    Some(End::TooSlow(reason)) => {
                        self.metrics.closed.get_or_create(&ClosedLabels { reason }).inc();
                        tracing::debug!(peer = %self.peer, ?reason, "HTTP connection closed: too slow");
                        // Dropping the connection closes the socket.
                        return;
                    }
                    // The watchdog ended without a word (it cannot): serve on.
                    None => {
                        if let Err(error) = connection.as_mut().await {
                            tracing::debug!(peer = %self.peer, %error, "HTTP connection ended with an error");
                        }
                        return;
                    }
                },
            }
        }
    }
}

/// What ends a connection from outside hyper.
#[derive(Debug)]
enum End {
    /// Shutdown: finish the request being served, then close.
    Stop,
    /// Its phase's deadline passed.
    TooSlow(CloseReason),
}

/// Aborts the task when dropped (the connection's watchdog ends with it).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A connection's watchdog: sleeps until the armed time (the phase's
/// deadline, at most the shorter timeout ahead), wakes early only for a
/// deadline moved before it, and says `TooSlow` once the phase's deadline
/// has passed, `Stop` when shutdown begins (then goes on watching: a
/// stopping connection still closes when too slow).
async fn watch_deadlines(watch: Arc<Watch>, mut stop: watch::Receiver<bool>, ends: tokio::sync::mpsc::Sender<End>) {
    let mut stopping = false;
    loop {
        // Created before the phase is read: a change in between is not
        // lost (`Notify` keeps one permit).
        let changed = watch.changed.notified();
        let now = Instant::now();
        let armed = match watch.arm(now) {
            Ok(armed) => armed,
            Err(reason) => {
                let _ = ends.send(End::TooSlow(reason)).await;
                return;
            }
        };
        let stopped = tokio::select! {
            () = changed => false,
            () = tokio::time::sleep_until(armed) => false,
            _ = stop.wait_for(|stop| *stop), if !stopping => true,
        };
        if stopped {
            stopping = true;
            if ends.send(End::Stop).await.is_err() {
                return;
            }
        }
    }
}

/// Where a connection is, for its deadline.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Waiting for a request head, or the rest of one, since `since`.
    Head { since: Instant },
    /// Between requests since `since`: no byte of the next one yet.
    Idle { since: Instant },
    /// Requests in flight, from their head to their answer's last byte.
    Busy { in_flight: usize },
}

/// A connection's phase, the time its watchdog armed, and a wake-up for
/// the watchdog when a change moves the deadline before that time.
struct Watch {
    state: Mutex<WatchState>,
    changed: Notify,
    header_read_timeout: Duration,
    keep_alive_timeout: Duration,
}

struct WatchState {
    phase: Phase,
    /// When the watchdog wakes next; `None` before it first armed.
    armed: Option<Instant>,
}

impl Watch {
    fn new(bounds: &Bounds) -> Self {
        Self {
            state: Mutex::new(WatchState { phase: Phase::Head { since: Instant::now() }, armed: None }),
            changed: Notify::new(),
            header_read_timeout: bounds.header_read_timeout,
            keep_alive_timeout: bounds.keep_alive_timeout,
        }
    }

    /// When `phase` times out, and why; `None` while busy.
    fn deadline_of(&self, phase: Phase) -> Option<(Instant, CloseReason)> {
        match phase {
            Phase::Head { since } => Some((since + self.header_read_timeout, CloseReason::header_timeout)),
            Phase::Idle { since } => Some((since + self.keep_alive_timeout, CloseReason::idle_timeout)),
            Phase::Busy { .. } => None,
        }
    }

    /// When the current phase times out, and why; `None` while busy.
    #[cfg(test)]
    fn deadline(&self) -> Option<(Instant, CloseReason)> {
        self.deadline_of(self.state.lock().phase)
    }

    /// For the watchdog at `now`: why to close if the phase's deadline has
    /// passed, else the time to wake next (the deadline, or sooner: at
    /// most the shorter timeout ahead, so a later phase's deadline is never
    /// before it and needs no wake-up).
    fn arm(&self, now: Instant) -> Result<Instant, CloseReason> {
        let mut state = self.state.lock();
        let recheck = now + self.header_read_timeout.min(self.keep_alive_timeout);
        let armed = match self.deadline_of(state.phase) {
            Some((at, reason)) if at <= now => return Err(reason),
            Some((at, _)) => at.min(recheck),
            None => recheck,
        };
        state.armed = Some(armed);
        Ok(armed)
    }

    /// Moves to the phase `change` makes of the current one, and wakes the
    /// watchdog if the new deadline falls before the time it armed.
    fn change(&self, change: impl FnOnce(Phase) -> Phase) {
        let wake = {
            let mut state = self.state.lock();
            state.phase = change(state.phase);
            match (self.deadline_of(state.phase), state.armed) {
                (None, _) => false,
                (Some(_), None) => true,
                (Some((at, _)), Some(armed)) => at < armed,
            }
        };
        if wake {
            self.changed.notify_one();
        }
    }

    /// Bytes arrived: the first ones after an idle spell start a head.
    fn bytes_read(&self) {
        self.change(|phase| match phase {
            Phase::Idle { .. } => Phase::Head { since: Instant::now() },
            other => other,
        });
    }

    /// A request's head is in: no deadline until its answer is done.
    fn request_started(self: &Arc<Self>) -> InFlight {
        self.change(|phase| match phase {
            Phase::Busy { in_flight } => Phase::Busy { in_flight: in_flight + 1 },
            Phase::Head { .. } | Phase::Idle { .. } => Phase::Busy { in_flight: 1 },
        });
        InFlight(Arc::clone(self))
    }

    fn request_done(&self) {
        self.change(|phase| match phase {
            Phase::Busy { in_flight } if in_flight > 1 => Phase::Busy { in_flight: in_flight - 1 },
            Phase::Busy { .. } => Phase::Idle { since: Instant::now() },
            other => {
                debug_assert!(false, "a request ended on a connection in {other:?}");
                other
            }
        });
    }
}

/// A request in flight; done when dropped (with its answer's body, or with
/// the handler's future if the connection goes first).
struct InFlight(Arc<Watch>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.request_done();
    }
}

/// The connection's stream, telling its `Watch` when bytes arrive.
struct Watched<T> {
    inner: T,
    watch: Arc<Watch>,
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.watch.bytes_read();
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// The router as hyper's service: each request carries its client's
/// address (`ConnectInfo`, for `auth`'s failure limit) and is in flight
/// until its answer's body is dropped.
#[derive(Clone)]
struct Serve {
    router: Router,
    peer: SocketAddr,
    watch: Arc<Watch>,
}

impl hyper::service::Service<hyper::Request<Incoming>> for Serve {
    type Response = hyper::Response<Tracked>;
    type Error = std::convert::Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn call(&self, request: hyper::Request<Incoming>) -> Self::Future {
        let in_flight = self.watch.request_started();
        let mut request = request.map(Body::new);
        request.extensions_mut().insert(ConnectInfo(self.peer));
        let mut router = self.router.clone();
        Box::pin(async move {
            std::future::poll_fn(|cx| <Router as Service<axum::extract::Request>>::poll_ready(&mut router, cx)).await?;
            let response = router.call(request).await?;
            Ok(response.map(|body| Tracked { body, _in_flight: in_flight }))
        })
    }
}

/// An answer's body that keeps its request in flight until it is dropped:
/// after hyper wrote its last byte, or when the connection closes.
struct Tracked {
    body: Body,
    _in_flight: InFlight,
}

impl hyper::body::Body for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bounds() -> Bounds {
        Bounds {
            header_read_timeout: Duration::from_secs(1),
            keep_alive_timeout: Duration::from_secs(60),
            connections_max: 1,
            header_bytes_max: HEADER_BYTES_MIN,
        }
    }

    #[test]
    fn a_connection_has_the_header_deadline_then_none_while_busy_then_the_idle_one() {
        let watch = Arc::new(Watch::new(&bounds()));
        let reason = |watch: &Watch| watch.deadline().map(|(_, reason)| reason);
        assert_eq!(reason(&watch), Some(CloseReason::header_timeout), "accepted: a head is due");
        watch.bytes_read();
        assert_eq!(reason(&watch), Some(CloseReason::header_timeout), "bytes of a head keep its first deadline");
        let first = watch.request_started();
        let pipelined = watch.request_started();
        assert_eq!(reason(&watch), None, "no deadline while requests are in flight");
        drop(first);
        assert_eq!(reason(&watch), None, "one is still in flight");
        drop(pipelined);
        assert_eq!(reason(&watch), Some(CloseReason::idle_timeout), "answered: keep-alive");
        watch.bytes_read();
        assert_eq!(reason(&watch), Some(CloseReason::header_timeout), "a new head's first byte");
    }

    /// Whether the watchdog was woken (a permit is waiting), consuming it.
    fn woken(watch: &Watch) -> bool {
        use futures_util::FutureExt;
        watch.changed.notified().now_or_never().is_some()
    }

    #[test]
    fn the_watchdog_wakes_only_for_a_deadline_before_the_time_it_armed() {
        let watch = Arc::new(Watch::new(&bounds()));
        let start = Instant::now();
        // Armed at the head deadline (accepted before `start`, 1 s allowed).
        let head = watch.deadline().map(|(at, _)| at);
        assert!(head.is_some_and(|at| at <= start + Duration::from_secs(1)), "{head:?}");
        assert_eq!(watch.arm(start).ok(), head);
        let request = watch.request_started();
        assert!(!woken(&watch), "busy: no deadline, nothing to wake for");
        drop(request);
        assert!(!woken(&watch), "idle: its deadline (60 s) is after the armed time");
        watch.bytes_read();
        assert!(!woken(&watch), "a new head: its deadline is not before the armed time");
        // Re-armed while busy: 1 s ahead of then, at most.
        let request = watch.request_started();
        let later = start + Duration::from_millis(1500);
        assert_eq!(watch.arm(later), Ok(later + Duration::from_secs(1)));
        drop(request);
        assert!(!woken(&watch));
        // A head already past its deadline is closed at the next arming.
        watch.bytes_read();
        let head_started = Instant::now();
        assert_eq!(watch.arm(head_started + Duration::from_secs(2)), Err(CloseReason::header_timeout));
        // Before the watchdog first armed, every change with a deadline wakes it.
        let fresh = Watch::new(&bounds());
        fresh.bytes_read();
        assert!(woken(&fresh));
    }
}
