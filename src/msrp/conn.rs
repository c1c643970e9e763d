//! The tokio edge of MSRP: one task per connection drives one [`Session`], and a listener
//! hands each accepted connection to the session named in its first request.
//!
//! ```text
//!   TcpStream --read--> Session::handle_data ... poll_transmit --write--> TcpStream
//!   SessionHandle::send/abort/close --commands--> task --events--> SessionHandle::next_event
//!   MsrpListener: accept -> read the first request -> To-Path session-id -> expected session
//!                 (481 for an unknown session, 506 for one already bound: RFC 4975 s7.3)
//! ```
//!
//! One code path serves `msrp:` over TCP and `msrps:` over TLS (RFC 4975 section 14): the
//! task, the router and the refusals are generic over the stream. [`MsrpListener::bind_tls`]
//! accepts with the certificate of `[sip.tls]`; [`connect_tls`] verifies the peer's
//! certificate against the host of the first URI of its path (section 14.2).
//!
//! The task keeps reading while it writes, so two peers sending large messages at each
//! other cannot block on full TCP buffers; session output is pulled only while less than
//! `HIGH_WATER` bytes wait, and reading stops while the application lags on events.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{ready, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_rustls::{TlsAcceptor, TlsConnector};

use super::frame::{
    Decoded, Decoder, FailureReport, Frame, Headers, Limits, MessageId, Response, TransactionId,
};
use super::session::{Event, Outgoing, SendError, Session};
use super::uri::MsrpUri;
use per_address::{AddressSlot, PerAddress};

mod per_address;

/// Session output held for the socket before the session is asked for more.
const HIGH_WATER: usize = 64 * 1024;
/// Events held for a slow application before reading stops.
const EVENT_BACKLOG: usize = 64;
/// How long a write may make no progress before the connection is closed.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a TLS handshake may take, either way.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections the kernel queues for accept (capped by net.core.somaxconn). The default of
/// `TcpListener::bind`, 128, overflowed under a burst of a few hundred connections while
/// the accept loop refused others: every dropped SYN cost a legitimate peer a 1 s
/// retransmission (measured in tests/msrp_bounds.rs).
const LISTEN_BACKLOG: u32 = 1024;
/// The most read from the socket at once (into a buffer on the stack).
const READ_CHUNK: usize = 16 * 1024;

/// What an accepted connection may cost before it is bound to a session, and how many
/// there may be (issue 11: one peer must not exhaust the listener).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenerLimits {
    /// Accepted connections open at once, routed or not (`msrp.max_connections`); one
    /// beyond is closed at once.
    pub max_connections: usize,
    /// Of those, how many one source IP address may hold at once
    /// (`msrp.max_connections_per_address`); one beyond is closed at once.
    pub max_connections_per_address: usize,
    /// A connection without a complete, routable first request by then is closed
    /// (`msrp.first_request_timeout_ms`).
    pub first_request_timeout: Duration,
    /// Bytes read before the first request: past them, a connection is closed unless the
    /// head of its first request names a session that waits (a long first chunk).
    pub first_request_max_bytes: usize,
    /// What all connections not yet bound to a session may hold together (each byte read
    /// counts twice: it is kept for the session and buffered by the decoder). A read
    /// beyond it closes the connection that made it: without this, `max_connections`
    /// first requests of 64 KiB each would hold 2048 x 128 KiB.
    pub unrouted_max_bytes: usize,
    /// A write without progress for this long closes the connection.
    pub write_timeout: Duration,
}

impl Default for ListenerLimits {
    fn default() -> ListenerLimits {
        ListenerLimits {
            max_connections: 2048,
            max_connections_per_address: 256,
            first_request_timeout: Duration::from_secs(5),
            first_request_max_bytes: 64 * 1024,
            unrouted_max_bytes: 2 * 1024 * 1024,
            write_timeout: WRITE_TIMEOUT,
        }
    }
}

/// One of `max_connections`, and the place of its source address in
/// `max_connections_per_address`; both given back when the connection's task ends.
struct Slot {
    count: Arc<AtomicUsize>,
    _address: Option<AddressSlot>,
}

impl Slot {
    fn take(count: &Arc<AtomicUsize>, max: usize) -> Option<Slot> {
        count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| Slot {
                count: count.clone(),
                _address: None,
            })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.count.fetch_sub(1, Ordering::AcqRel);
    }
}

/// How often a refusal is logged at warn; between, at debug (an attacker must not fill
/// the log).
const REFUSAL_WARN_EVERY: Duration = Duration::from_secs(10);

/// Logs a connection turned away by the cap `key`: a warning at most every
/// [`REFUSAL_WARN_EVERY`], debug otherwise.
fn log_refusal(warned: &mut Option<Instant>, key: &str, max: usize, peer: SocketAddr) {
    let now = Instant::now();
    if warned.is_none_or(|t| now.duration_since(t) >= REFUSAL_WARN_EVERY) {
        *warned = Some(now);
        tracing::warn!(%peer, max, "MSRP connection refused: {key} reached (further refusals are logged at debug for a while).");
    } else {
        tracing::debug!(%peer, max, "MSRP connection refused: {key} reached.");
    }
}

/// What an MSRP connection can run on: a `TcpStream` or a tokio-rustls stream.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Stream for T {}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnError {
    #[error(transparent)]
    Io(#[from] io::Error),
    #[error(transparent)]
    Send(#[from] SendError),
    #[error("the connection is closed")]
    Closed,
    #[error("a session with session-id {0:?} is expected already")]
    AlreadyExpected(String),
    #[error("the local URI has no session-id")]
    NoSessionId,
    #[error("{0:?} is neither a DNS name nor an IP address to verify a certificate against")]
    ServerName(String),
    #[error("TLS handshake did not complete in time")]
    HandshakeTimeout,
    /// issue 11 item 5: the a=path the SIP peer chose names a destination not allowed.
    #[error("not connecting there: {0}")]
    Refused(#[from] crate::destination::Refused),
    #[error("no complete first request within {0:?}")]
    FirstRequestTimeout(Duration),
    #[error("more than {0} bytes before a routable first request")]
    FirstRequestTooLarge(usize),
    #[error("the {0} bytes for connections not yet bound to a session are taken")]
    UnroutedBudget(usize),
}

/// Boxed payloads: the channel allocates 32 slots of this when a connection starts.
enum Command {
    Send(Box<Outgoing>, oneshot::Sender<Result<MessageId, SendError>>),
    Abort(MessageId),
    Answer(Box<(MessageId, u16, String)>),
    Close,
}

/// Answers messages held by `Config::defer_response` ([`Session::answer`]); cheap to
/// clone, usable while the [`SessionHandle`] is busy or closing.
#[derive(Clone)]
pub struct Answerer {
    commands: mpsc::Sender<Command>,
}

impl Answerer {
    /// `code` 200: delivered; anything else is the error response. Ignored once the
    /// connection has ended.
    pub async fn answer(&self, id: MessageId, code: u16, comment: &str) {
        let _ = self
            .commands
            .send(Command::Answer(Box::new((id, code, comment.to_string()))))
            .await;
    }
}

/// The application's side of a running session.
pub struct SessionHandle {
    commands: mpsc::Sender<Command>,
    events: mpsc::Receiver<Event>,
    task: JoinHandle<Result<(), io::Error>>,
}

impl SessionHandle {
    pub async fn send(&self, msg: Outgoing) -> Result<MessageId, ConnError> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(Command::Send(Box::new(msg), tx))
            .await
            .map_err(|_| ConnError::Closed)?;
        Ok(rx.await.map_err(|_| ConnError::Closed)??)
    }

    pub fn answerer(&self) -> Answerer {
        Answerer {
            commands: self.commands.clone(),
        }
    }

    pub async fn abort(&self, id: MessageId) -> Result<(), ConnError> {
        self.commands
            .send(Command::Abort(id))
            .await
            .map_err(|_| ConnError::Closed)
    }

    /// The next event; `None` once the connection has ended.
    pub async fn next_event(&mut self) -> Option<Event> {
        self.events.recv().await
    }

    /// Finishes what is queued, then closes the connection (at BYE).
    pub async fn close(self) -> Result<(), ConnError> {
        let _ = self.commands.send(Command::Close).await;
        drop(self.events);
        match self.task.await {
            Ok(r) => Ok(r?),
            Err(_) => Err(ConnError::Closed),
        }
    }
}

/// Runs `session` on `stream`; `initial` holds bytes already read from it.
pub fn spawn<S: Stream>(stream: S, initial: Bytes, session: Session) -> SessionHandle {
    spawn_bound(stream, initial, session, None, WRITE_TIMEOUT)
}

/// A connection accepted by a listener: its session-id and its slot.
struct Bound {
    id: String,
    registry: Arc<Mutex<Registry>>,
    _slot: Option<Slot>,
}

/// Like [`spawn`]; when the task ends, the session-id is released from the listener.
fn spawn_bound<S: Stream>(
    stream: S,
    initial: Bytes,
    session: Session,
    bound: Option<Bound>,
    write_timeout: Duration,
) -> SessionHandle {
    let (cmd_tx, cmd_rx) = mpsc::channel(16);
    let (ev_tx, ev_rx) = mpsc::channel(EVENT_BACKLOG);
    let task = tokio::spawn(async move {
        let r = drive(stream, initial, session, cmd_rx, ev_tx, write_timeout).await;
        if let Some(b) = bound {
            if let Ok(mut reg) = b.registry.lock() {
                reg.bound.remove(&b.id);
            }
        }
        r
    });
    SessionHandle {
        commands: cmd_tx,
        events: ev_rx,
        task,
    }
}

/// The active side (RFC 6135 `a=setup:active`, or RFC 4975's offerer): connects to the
/// first hop of the peer's path and sends the binding SEND at once (section 7.1).
pub async fn connect(
    host: &str,
    port: u16,
    mut session: Session,
) -> Result<SessionHandle, ConnError> {
    let stream = TcpStream::connect((host, port)).await?;
    let _ = stream.set_nodelay(true);
    session.bind();
    Ok(spawn(stream, Bytes::new(), session))
}

/// [`connect`] or [`connect_tls`] (with `tls`), to the first of `host`'s addresses that
/// `vet` allows (crate::destination): a=path is chosen by the SIP peer, so its host is
/// resolved here and checked before anything connects.
pub async fn connect_vetted(
    host: &str,
    port: u16,
    session: Session,
    tls: Option<TlsConnector>,
    vet: impl Fn(std::net::SocketAddr) -> Result<(), crate::destination::Refused>,
) -> Result<SessionHandle, ConnError> {
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let mut refused = None;
    let mut allowed = Vec::new();
    for addr in tokio::net::lookup_host((bare, port)).await? {
        match vet(addr) {
            Ok(()) => allowed.push(addr),
            Err(e) => {
                tracing::info!(%addr, error = %e, "Not connecting MSRP there.");
                refused.get_or_insert(e);
            }
        }
    }
    if allowed.is_empty() {
        return Err(match refused {
            Some(e) => ConnError::Refused(e),
            None => ConnError::Io(io::Error::new(
                io::ErrorKind::NotFound,
                "the a=path host has no address",
            )),
        });
    }
    match tls {
        None => connect_addrs(&allowed[..], session).await,
        Some(c) => connect_tls_addrs(host, &allowed[..], session, c).await,
    }
}

async fn connect_addrs(
    addrs: &[std::net::SocketAddr],
    mut session: Session,
) -> Result<SessionHandle, ConnError> {
    let stream = TcpStream::connect(addrs).await?;
    let _ = stream.set_nodelay(true);
    session.bind();
    Ok(spawn(stream, Bytes::new(), session))
}

async fn connect_tls_addrs(
    host: &str,
    addrs: &[std::net::SocketAddr],
    mut session: Session,
    connector: TlsConnector,
) -> Result<SessionHandle, ConnError> {
    let name =
        crate::sip::tls::server_name(host).ok_or_else(|| ConnError::ServerName(host.into()))?;
    let tcp = TcpStream::connect(addrs).await?;
    let _ = tcp.set_nodelay(true);
    let stream = tokio::time::timeout(HANDSHAKE_TIMEOUT, connector.connect(name, tcp))
        .await
        .map_err(|_| ConnError::HandshakeTimeout)??;
    session.bind();
    Ok(spawn(stream, Bytes::new(), session))
}

/// [`connect`] over TLS (an `msrps:` first hop): the peer's certificate must name `host`,
/// the host of that URI (RFC 4975 section 14.2), checked by `connector` (the client
/// configuration of `[sip.tls]`: its roots, and its `verify_peer_name`).
pub async fn connect_tls(
    host: &str,
    port: u16,
    mut session: Session,
    connector: TlsConnector,
) -> Result<SessionHandle, ConnError> {
    let name =
        crate::sip::tls::server_name(host).ok_or_else(|| ConnError::ServerName(host.into()))?;
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let tcp = TcpStream::connect((bare, port)).await?;
    let _ = tcp.set_nodelay(true);
    let stream = tokio::time::timeout(HANDSHAKE_TIMEOUT, connector.connect(name, tcp))
        .await
        .map_err(|_| ConnError::HandshakeTimeout)??;
    session.bind();
    Ok(spawn(stream, Bytes::new(), session))
}

fn now() -> std::time::Instant {
    Instant::now().into_std()
}

async fn drive<S: Stream>(
    stream: S,
    initial: Bytes,
    mut session: Session,
    mut commands: mpsc::Receiver<Command>,
    events: mpsc::Sender<Event>,
    write_timeout: Duration,
) -> Result<(), io::Error> {
    let (mut rd, mut wr) = tokio::io::split(stream);
    let mut out = BytesMut::new();
    let mut backlog: VecDeque<Event> = VecDeque::new();
    let mut closing = false;
    let mut commands_done = false;
    let mut broken = false;
    let mut eof = false;
    // Since when `out` has waited without a byte written.
    let mut stalled: Option<Instant> = None;
    if !initial.is_empty() {
        session.handle_data(now(), &initial);
    }
    // Not kept for the life of the connection (an argument lives as long as the task).
    drop(initial);
    loop {
        while out.len() < HIGH_WATER {
            match session.poll_transmit(now()) {
                Some(b) => out.extend_from_slice(&b),
                None => break,
            }
        }
        while let Some(e) = session.poll_event() {
            broken |= matches!(e, Event::StreamError(_));
            backlog.push_back(e);
        }
        if out.is_empty() && ((closing && session.is_idle()) || broken || eof) {
            break;
        }
        let deadline = session.poll_timeout().map(Instant::from_std);
        if out.is_empty() {
            stalled = None;
        } else if stalled.is_none() {
            stalled = Some(Instant::now());
        }
        // A peer that does not read its responses stops our reading (the session bounds
        // what it queues), and then the write timeout ends the connection.
        let can_read = !eof && !broken && backlog.len() < EVENT_BACKLOG && session.wants_data();
        tokio::select! {
            r = read_into(&mut rd, &mut session), if can_read => {
                eof = r? == 0;
            }
            r = wr.write(&out), if !out.is_empty() => {
                let n = r?;
                out.advance(n);
                if n > 0 {
                    stalled = None;
                }
            }
            _ = sleep_until(stalled.map(|t| t + write_timeout)), if stalled.is_some() => {
                return Err(io::Error::new(io::ErrorKind::TimedOut, "MSRP write timed out"));
            }
            permit = events.reserve(), if !backlog.is_empty() => match permit {
                Ok(p) => {
                    if let Some(e) = backlog.pop_front() {
                        p.send(e);
                    }
                }
                // Nobody listens any more: drop events, keep the session going.
                Err(_) => backlog.clear(),
            },
            // Read while closing too: answers to held messages still come.
            cmd = commands.recv(), if !commands_done => match cmd {
                Some(Command::Send(m, reply)) => {
                    let r = if closing { Err(SendError::Closed) } else { session.send(*m) };
                    let _ = reply.send(r);
                }
                Some(Command::Abort(id)) => {
                    session.abort(&id);
                }
                Some(Command::Answer(a)) => {
                    let (id, code, comment) = *a;
                    session.answer(&id, code, &comment);
                }
                Some(Command::Close) => closing = true,
                None => {
                    closing = true;
                    commands_done = true;
                }
            },
            _ = sleep_until(deadline), if deadline.is_some() => session.handle_timeout(now()),
        }
    }
    // Hand over what is left for the application, then close our side.
    for e in backlog {
        if events.send(e).await.is_err() {
            break;
        }
    }
    let _ = tokio::time::timeout(write_timeout, wr.shutdown()).await;
    Ok(())
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Reads what `rd` has and hands it to `session`; the byte count, 0 at end of stream.
/// The buffer lives on the stack for one poll only (`poll_read` keeps no hold on it), so
/// an idle connection holds no read buffer: a 16 KiB one per connection was most of the
/// memory of an open chat session.
fn read_into<'a, R: AsyncRead + Unpin>(
    rd: &'a mut R,
    session: &'a mut Session,
) -> impl std::future::Future<Output = io::Result<usize>> + 'a {
    std::future::poll_fn(move |cx| {
        let mut space = [0u8; READ_CHUNK];
        let mut rb = ReadBuf::new(&mut space);
        ready!(Pin::new(&mut *rd).poll_read(cx, &mut rb))?;
        let n = rb.filled().len();
        if n > 0 {
            session.handle_data(now(), rb.filled());
        }
        Poll::Ready(Ok(n))
    })
}

struct Expected {
    session: Session,
    reply: oneshot::Sender<SessionHandle>,
}

#[derive(Default)]
struct Registry {
    expected: HashMap<String, Expected>,
    bound: HashSet<String>,
}

/// Accepts MSRP connections (the passive side) and routes each to its session.
pub struct MsrpListener {
    addr: SocketAddr,
    registry: Arc<Mutex<Registry>>,
    task: JoinHandle<()>,
}

/// A session waiting for its connection.
pub struct PendingSession {
    id: String,
    rx: oneshot::Receiver<SessionHandle>,
    registry: Arc<Mutex<Registry>>,
}

impl PendingSession {
    /// Resolves once the peer has connected and sent its first request.
    pub async fn connected(mut self) -> Result<SessionHandle, ConnError> {
        (&mut self.rx).await.map_err(|_| ConnError::Closed)
    }
}

impl Drop for PendingSession {
    fn drop(&mut self) {
        if let Ok(mut r) = self.registry.lock() {
            r.expected.remove(&self.id);
        }
    }
}

impl MsrpListener {
    /// An `msrp:` (TCP) listener with the default [`ListenerLimits`].
    pub async fn bind(addr: SocketAddr) -> io::Result<MsrpListener> {
        MsrpListener::bind_with(addr, None, ListenerLimits::default()).await
    }

    /// An `msrps:` (TLS) listener presenting the certificate of `acceptor`.
    pub async fn bind_tls(addr: SocketAddr, acceptor: TlsAcceptor) -> io::Result<MsrpListener> {
        MsrpListener::bind_with(addr, Some(acceptor), ListenerLimits::default()).await
    }

    /// An `msrp:` listener, or `msrps:` with `tls`, under `limits`.
    pub async fn bind_with(
        addr: SocketAddr,
        tls: Option<TlsAcceptor>,
        limits: ListenerLimits,
    ) -> io::Result<MsrpListener> {
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        let listener = socket.listen(LISTEN_BACKLOG)?;
        let addr = listener.local_addr()?;
        let registry = Arc::new(Mutex::new(Registry::default()));
        let task = tokio::spawn(accept_loop(listener, tls, registry.clone(), limits));
        Ok(MsrpListener {
            addr,
            registry,
            task,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Registers a session under the session-id of its local URI.
    pub fn expect(&self, session: Session) -> Result<PendingSession, ConnError> {
        let id = session
            .local()
            .session_id
            .clone()
            .ok_or(ConnError::NoSessionId)?;
        let (tx, rx) = oneshot::channel();
        let mut r = self.registry.lock().map_err(|_| ConnError::Closed)?;
        if r.expected.contains_key(&id) || r.bound.contains(&id) {
            return Err(ConnError::AlreadyExpected(id));
        }
        r.expected
            .insert(id.clone(), Expected { session, reply: tx });
        Ok(PendingSession {
            id,
            rx,
            registry: self.registry.clone(),
        })
    }
}

impl Drop for MsrpListener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn accept_loop(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    registry: Arc<Mutex<Registry>>,
    limits: ListenerLimits,
) {
    let open = Arc::new(AtomicUsize::new(0));
    let unrouted = Arc::new(AtomicUsize::new(0));
    let per_address = PerAddress::new(limits.max_connections_per_address);
    let (mut warned_total, mut warned_address) = (None, None);
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                // Dropped unread when refused: closed at once, nothing allocated for it.
                let Some(mut slot) = Slot::take(&open, limits.max_connections) else {
                    let max = limits.max_connections;
                    log_refusal(&mut warned_total, "msrp.max_connections", max, peer);
                    continue;
                };
                let Some(address) = per_address.acquire(peer.ip()) else {
                    let max = limits.max_connections_per_address;
                    let key = "msrp.max_connections_per_address";
                    log_refusal(&mut warned_address, key, max, peer);
                    continue;
                };
                slot._address = Some(address);
                let _ = stream.set_nodelay(true);
                let registry = registry.clone();
                let tls = tls.clone();
                let charge = Charge::new(&unrouted);
                tokio::spawn(async move {
                    let r = match tls {
                        None => route(stream, registry, limits, slot, charge).await,
                        Some(acceptor) => {
                            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream))
                                .await
                            {
                                Ok(Ok(s)) => route(s, registry, limits, slot, charge).await,
                                Ok(Err(e)) => Err(ConnError::Io(e)),
                                Err(_) => Err(ConnError::HandshakeTimeout),
                            }
                        }
                    };
                    if let Err(e) = r {
                        tracing::debug!(%peer, error = %e, "MSRP connection not routed.");
                    }
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "MSRP accept failed.");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// One unrouted connection's share of `unrouted_max_bytes`, given back when dropped (the
/// connection is bound to its session, refused or closed).
struct Charge {
    total: Arc<AtomicUsize>,
    mine: usize,
}

impl Charge {
    fn new(total: &Arc<AtomicUsize>) -> Charge {
        Charge {
            total: total.clone(),
            mine: 0,
        }
    }

    /// Takes `n` more bytes, or none when that would pass `max` in all.
    fn take(&mut self, n: usize, max: usize) -> bool {
        let ok = self
            .total
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |t| {
                t.checked_add(n).filter(|&t| t <= max)
            })
            .is_ok();
        if ok {
            self.mine += n;
        }
        ok
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.total.fetch_sub(self.mine, Ordering::AcqRel);
    }
}

/// How the first request came: complete, or (a long first chunk) only its head.
enum First {
    Complete(Decoded),
    Head(Headers),
}

/// Reads up to the first request and hands the connection to the session it names, as
/// soon as its head does (a long first chunk goes on in the session, under its budgets).
/// A connection that sends no complete request in time, more than the byte bound before
/// one, or a byte beyond what all unrouted connections may hold, is closed.
async fn route<S: Stream>(
    mut stream: S,
    registry: Arc<Mutex<Registry>>,
    limits: ListenerLimits,
    slot: Slot,
    mut charge: Charge,
) -> Result<(), ConnError> {
    let mut decoder = Decoder::new(Limits::default());
    // What is handed on to the session; nothing is allocated before bytes come.
    let mut seen = BytesMut::new();
    let max = limits.first_request_max_bytes;
    let first = tokio::time::timeout(limits.first_request_timeout, async {
        loop {
            let n = read_some(&mut stream, &mut seen, max).await?;
            if n == 0 {
                return Err(ConnError::Closed);
            }
            // Kept in `seen` and in the decoder's buffer.
            if !charge.take(2 * n, limits.unrouted_max_bytes) {
                return Err(ConnError::UnroutedBudget(limits.unrouted_max_bytes));
            }
            decoder.push(&seen[seen.len() - n..]);
            match decoder.decode() {
                Ok(Some(d)) => return Ok(First::Complete(d)),
                Ok(None) => {
                    let routable = decoder.pending_request_headers().filter(|h| {
                        first_session_id(h).is_some_and(|id| {
                            registry.lock().is_ok_and(|r| r.expected.contains_key(&id))
                        })
                    });
                    if let Some(h) = routable {
                        return Ok(First::Head(h.clone()));
                    }
                    if seen.len() >= max {
                        return Err(ConnError::FirstRequestTooLarge(max));
                    }
                }
                Err(_) => return Err(ConnError::Closed),
            }
        }
    })
    .await
    .map_err(|_| ConnError::FirstRequestTimeout(limits.first_request_timeout))??;
    drop(decoder);

    // The transaction to answer a refusal on: none for a response, a REPORT or a head.
    let (answer, headers) = match first {
        First::Head(h) => (None, h),
        First::Complete(Decoded::Frame(Frame::Request(r))) => (Some(r.tid), r.headers),
        First::Complete(Decoded::Invalid(i)) => (i.method.is_some().then_some(i.tid), i.headers),
        First::Complete(Decoded::Frame(Frame::Response(_))) => return Err(ConnError::Closed),
    };
    let session_id = first_session_id(&headers);
    let claimed = {
        let mut r = registry.lock().map_err(|_| ConnError::Closed)?;
        match session_id {
            Some(id) => match r.expected.remove(&id) {
                Some(e) => {
                    r.bound.insert(id.clone());
                    Ok((id, e))
                }
                None if r.bound.contains(&id) => Err(506),
                None => Err(481),
            },
            None => Err(481),
        }
    };
    match claimed {
        Ok((id, mut e)) => {
            // An offerer that lets the answerer connect (a=setup:actpass answered active)
            // may see the connection before the answer's a=path reaches it: the first
            // request, sent to our unguessable session-id, names the peer's path.
            if e.session.remote().is_empty() {
                if let Some(path) = headers.from_path() {
                    e.session.set_remote(path.clone());
                }
            }
            let bound = Bound {
                id,
                registry: registry.clone(),
                _slot: Some(slot),
            };
            let handle = spawn_bound(
                stream,
                seen.freeze(),
                e.session,
                Some(bound),
                limits.write_timeout,
            );
            // If nobody waits any more, dropping the handle closes the connection.
            let _ = e.reply.send(handle);
            Ok(())
        }
        Err(code) => {
            if let Some(tid) = answer {
                let refusal = refuse(&mut stream, &tid, &headers, code);
                tokio::time::timeout(limits.write_timeout, refusal)
                    .await
                    .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))??;
            }
            Ok(())
        }
    }
}

/// The session-id of the last To-Path URI: the session a connection is for.
fn first_session_id(headers: &Headers) -> Option<String> {
    headers
        .to_path()
        .and_then(|p| p.last())
        .and_then(|u| u.session_id.clone())
}

/// Reads what `stream` has, at most up to `max` bytes in `seen` (at least one byte), into
/// `seen` through a stack buffer: an idle connection holds no read buffer.
async fn read_some<S: Stream>(
    stream: &mut S,
    seen: &mut BytesMut,
    max: usize,
) -> io::Result<usize> {
    let room = max.saturating_sub(seen.len()).clamp(1, READ_CHUNK);
    std::future::poll_fn(|cx| {
        let mut space = [0u8; READ_CHUNK];
        let mut rb = ReadBuf::new(&mut space[..room]);
        ready!(Pin::new(&mut *stream).poll_read(cx, &mut rb))?;
        seen.extend_from_slice(rb.filled());
        Poll::Ready(Ok(rb.filled().len()))
    })
    .await
}

async fn refuse<S: Stream>(
    stream: &mut S,
    tid: &TransactionId,
    headers: &Headers,
    code: u16,
) -> Result<(), ConnError> {
    let comment = if code == 506 {
        "Session Already Bound"
    } else {
        "Session Does Not Exist"
    };
    let to: Vec<MsrpUri> = headers
        .from_path()
        .and_then(|p| p.first().cloned())
        .into_iter()
        .collect();
    let from: Vec<MsrpUri> = headers
        .to_path()
        .and_then(|p| p.first().cloned())
        .into_iter()
        .collect();
    if headers.failure_report() != FailureReport::No && !to.is_empty() && !from.is_empty() {
        let resp = Response::new(tid.clone(), code, Some(comment), to, from);
        stream.write_all(&Frame::Response(resp).to_bytes()).await?;
    }
    let _ = stream.shutdown().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::msrp::session::Config;
    use tokio::io::AsyncReadExt;

    fn uri(s: &str) -> MsrpUri {
        MsrpUri::parse(s).unwrap()
    }

    async fn next_matching(h: &mut SessionHandle, f: impl Fn(&Event) -> bool) -> Event {
        tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match h.next_event().await {
                    Some(e) if f(&e) => return e,
                    Some(_) => continue,
                    None => panic!("connection ended"),
                }
            }
        })
        .await
        .expect("event in time")
    }

    #[tokio::test]
    async fn a_chunked_100_kib_message_crosses_a_real_tcp_connection_with_reports() {
        let listener = MsrpListener::bind("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let port = listener.local_addr().port();
        let bob_uri = uri(&format!("msrp://127.0.0.1:{port}/bobs3ss10n;tcp"));
        let alice_uri = uri("msrp://127.0.0.1:9/al1ces3ss10n;tcp");
        let config = Config {
            chunk_size: 8 * 1024,
            write_unit: 2048,
            accept_types: vec!["*".into()],
            ..Config::default()
        };
        let bob = Session::new(bob_uri.clone(), vec![alice_uri.clone()], config.clone());
        let pending = listener.expect(bob).unwrap();
        let alice = Session::new(alice_uri, vec![bob_uri], config);
        let mut alice = connect("127.0.0.1", port, alice).await.unwrap();
        let mut bob = tokio::time::timeout(Duration::from_secs(10), pending.connected())
            .await
            .unwrap()
            .unwrap();

        let body: Vec<u8> = (0..100 * 1024u32).map(|i| (i * 31 % 251) as u8).collect();
        let mut big = Outgoing::new("application/octet-stream", body.clone());
        big.success_report = true;
        let big_id = alice.send(big).await.unwrap();
        // A chat line queued behind it (it may overtake it: how far the big one got by then
        // depends on the sockets).
        let line_id = alice
            .send(Outgoing::new("text/plain", "Art thou not Romeo?"))
            .await
            .unwrap();

        let mut got = Vec::new();
        while got.len() < 2 {
            if let Event::Message(m) =
                next_matching(&mut bob, |e| matches!(e, Event::Message(_))).await
            {
                got.push(m);
            }
        }
        got.sort_by_key(|m| m.body.len());
        assert_eq!(&got[0].body[..], b"Art thou not Romeo?");
        assert_eq!(got[1].message_id, big_id);
        assert_eq!(got[1].body.len(), body.len());
        assert!(got[1].body[..] == body[..], "the 100 KiB body differs");
        assert!(got[1].reported);

        let mut delivered = HashSet::new();
        let mut reported = false;
        while delivered.len() < 2 || !reported {
            match next_matching(&mut alice, |_| true).await {
                Event::Delivered { message_id } => {
                    delivered.insert(message_id);
                }
                Event::Report {
                    message_id,
                    status,
                    byte_range,
                } => {
                    assert_eq!(message_id, big_id);
                    assert_eq!(status.code, 200);
                    assert_eq!(byte_range.to_string(), format!("1-{0}/{0}", body.len()));
                    reported = true;
                }
                e => panic!("unexpected {e:?}"),
            }
        }
        assert!(delivered.contains(&big_id) && delivered.contains(&line_id));

        // And back the other way on the same connection.
        bob.send(Outgoing::new("text/plain", "Neither, fair saint"))
            .await
            .unwrap();
        let Event::Message(m) = next_matching(&mut alice, |e| matches!(e, Event::Message(_))).await
        else {
            unreachable!()
        };
        assert_eq!(&m.body[..], b"Neither, fair saint");

        alice.close().await.unwrap();
        // Bob sees the connection end.
        tokio::time::timeout(Duration::from_secs(10), async {
            while bob.next_event().await.is_some() {}
        })
        .await
        .unwrap();
    }

    fn tls_context(
        dir: &std::path::Path,
        pki: &crate::sip::tls::test_pki::Pki,
        names: &[&str],
    ) -> crate::sip::tls::TlsContext {
        let leaf = pki.leaf(dir, &names.join("_"), names);
        crate::sip::tls::TlsContext::load(&leaf.cert, &leaf.key, Some(&pki.write_ca(dir)), true)
            .unwrap()
    }

    #[tokio::test]
    async fn msrps_sessions_run_over_tls_and_the_certificate_must_name_the_path_host() {
        let dir = tempfile::tempdir().unwrap();
        let pki = crate::sip::tls::test_pki::Pki::new("stox test CA");
        let server = tls_context(dir.path(), &pki, &["127.0.0.1"]);
        let client = tls_context(dir.path(), &pki, &["client.example"]);
        let listener = MsrpListener::bind_tls("127.0.0.1:0".parse().unwrap(), server.acceptor())
            .await
            .unwrap();
        let port = listener.local_addr().port();
        let bob_uri = uri(&format!("msrps://127.0.0.1:{port}/bobs3ss10n;tcp"));
        let alice_uri = uri("msrps://127.0.0.1:9/al1ces3ss10n;tcp");
        let pending = listener
            .expect(Session::new(
                bob_uri.clone(),
                vec![alice_uri.clone()],
                Config::default(),
            ))
            .unwrap();
        let alice = Session::new(alice_uri.clone(), vec![bob_uri.clone()], Config::default());
        let mut alice = connect_tls("127.0.0.1", port, alice, client.connector())
            .await
            .unwrap();
        let mut bob = tokio::time::timeout(Duration::from_secs(10), pending.connected())
            .await
            .unwrap()
            .unwrap();
        alice
            .send(Outgoing::new("text/plain", "over TLS"))
            .await
            .unwrap();
        let Event::Message(m) = next_matching(&mut bob, |e| matches!(e, Event::Message(_))).await
        else {
            unreachable!()
        };
        assert_eq!(&m.body[..], b"over TLS");
        bob.send(Outgoing::new("text/plain", "and back"))
            .await
            .unwrap();
        let Event::Message(m) = next_matching(&mut alice, |e| matches!(e, Event::Message(_))).await
        else {
            unreachable!()
        };
        assert_eq!(&m.body[..], b"and back");

        // A path host the certificate does not name: the handshake fails (RFC 4975 14.2).
        let s = Session::new(alice_uri.clone(), vec![bob_uri.clone()], Config::default());
        let e = connect_tls("localhost", port, s, client.connector()).await;
        assert!(matches!(e, Err(ConnError::Io(_))), "{:?}", e.err());
        let s = Session::new(alice_uri.clone(), vec![bob_uri.clone()], Config::default());
        let e = connect_tls("not a host!", port, s, client.connector()).await;
        assert!(matches!(e, Err(ConnError::ServerName(_))), "{:?}", e.err());
        // A plaintext client on the TLS listener gets nothing routed.
        let mut plain = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let _ = plain.write_all(b"MSRP x SEND\r\n").await;
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), plain.read_to_end(&mut out)).await;
        assert!(!out.starts_with(b"MSRP"), "{out:?}");
    }

    #[tokio::test]
    async fn a_session_expected_without_the_peers_path_learns_it_from_the_first_request() {
        // An offerer whose actpass was answered active sees the connection before the
        // answer: its session has no remote path yet.
        let listener = MsrpListener::bind("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let port = listener.local_addr().port();
        let bob_uri = uri(&format!("msrp://127.0.0.1:{port}/bobs3ss10n;tcp"));
        let alice_uri = uri("msrp://127.0.0.1:9/al1ces3ss10n;tcp");
        let pending = listener
            .expect(Session::new(bob_uri.clone(), Vec::new(), Config::default()))
            .unwrap();
        let alice = Session::new(alice_uri, vec![bob_uri], Config::default());
        let mut alice = connect("127.0.0.1", port, alice).await.unwrap();
        let bob = tokio::time::timeout(Duration::from_secs(10), pending.connected())
            .await
            .unwrap()
            .unwrap();
        bob.send(Outgoing::new("text/plain", "hello alice"))
            .await
            .unwrap();
        let got = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                if let Some(Event::Message(m)) = alice.next_event().await {
                    return m;
                }
            }
        })
        .await
        .unwrap();
        assert_eq!(&got.body[..], b"hello alice");
    }

    #[tokio::test]
    async fn a_connection_for_an_unknown_or_bound_session_is_refused() {
        let listener = MsrpListener::bind("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let port = listener.local_addr().port();
        let send = |sid: &str| {
            format!(
                "MSRP a786hjs2 SEND\r\nTo-Path: msrp://127.0.0.1:{port}/{sid};tcp\r\nFrom-Path: msrp://127.0.0.1:9/x1y2z3;tcp\r\nMessage-ID: 87652491\r\n-------a786hjs2$\r\n"
            )
        };
        async fn answer(port: u16, req: String) -> String {
            let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
            s.write_all(req.as_bytes()).await.unwrap();
            let mut out = String::new();
            tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut out))
                .await
                .unwrap()
                .unwrap();
            out
        }
        let out = answer(port, send("nobody")).await;
        assert!(
            out.starts_with("MSRP a786hjs2 481 Session Does Not Exist\r\n"),
            "{out}"
        );
        assert!(out.contains("To-Path: msrp://127.0.0.1:9/x1y2z3;tcp\r\n"));

        let me = uri(&format!("msrp://127.0.0.1:{port}/s0mebody;tcp"));
        let s = Session::new(
            me,
            vec![uri("msrp://127.0.0.1:9/x1y2z3;tcp")],
            Config::default(),
        );
        let pending = listener.expect(s).unwrap();
        let mut first = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        first.write_all(send("s0mebody").as_bytes()).await.unwrap();
        let _handle = pending.connected().await.unwrap();
        let mut resp = vec![0u8; 200];
        let n = first.read(&mut resp).await.unwrap();
        assert!(resp[..n].starts_with(b"MSRP a786hjs2 200 OK\r\n"));
        let out = answer(port, send("s0mebody")).await;
        assert!(
            out.starts_with("MSRP a786hjs2 506 Session Already Bound\r\n"),
            "{out}"
        );
    }

    #[tokio::test]
    async fn a_missing_response_fails_the_message_on_tokio_time() {
        // A peer that reads but never answers.
        let server = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = server.local_addr().unwrap().port();
        let sink = tokio::spawn(async move {
            let (mut s, _) = server.accept().await.unwrap();
            let mut buf = vec![0u8; 4096];
            while s.read(&mut buf).await.map(|n| n > 0).unwrap_or(false) {}
        });
        let me = uri("msrp://127.0.0.1:9/al1ce123;tcp");
        let peer = uri(&format!("msrp://127.0.0.1:{port}/b0b12345;tcp"));
        let config = Config {
            transaction_timeout: Duration::from_millis(200),
            ..Config::default()
        };
        let mut h = connect("127.0.0.1", port, Session::new(me, vec![peer], config))
            .await
            .unwrap();
        let id = h.send(Outgoing::new("text/plain", "hello?")).await.unwrap();
        let e = next_matching(
            &mut h,
            |e| matches!(e, Event::Failed { message_id, .. } if *message_id == id),
        )
        .await;
        assert!(matches!(
            e,
            Event::Failed {
                failure: crate::msrp::session::Failure::Timeout,
                ..
            }
        ));
        drop(h);
        sink.abort();
    }
}

#[cfg(test)]
mod bounds_tests;
