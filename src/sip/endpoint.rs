//! The tokio edge of the SIP stack: sockets, connections, the clock, and the typed handle
//! the interworking layer uses.
//!
//! One task owns the [`SipCore`]: every socket task feeds it parsed messages over one
//! channel, and it writes UDP datagrams itself and TCP bytes through each connection's
//! writer channel. The transaction user gets requests as [`IncomingRequest`]s and sends
//! requests with [`SipHandle::send`].

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use rsipstack::sip::{Header, Request, Response};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::auth::{DigestClient, Exchange, Scope};
use super::core::{ConnId, Event, Failure, Local, ServerTxId, SipCore, Source, Transmit};
use super::locate::{Destination, LocateError, Locator, Target, Transport};
use super::message::{self, Framing, Reject};
use super::transaction::Timers;
use super::NextHop;
use crate::config::{Config, ListenTransport};

/// How long an idle TCP connection is kept.
const IDLE_TIMEOUT: Duration = Duration::from_secs(600);
/// Requests waiting for the transaction user; beyond this, new ones get 503.
const TU_QUEUE: usize = 8192;

#[derive(Debug, thiserror::Error)]
pub enum SipError {
    #[error("no final response within 64*T1")]
    Timeout,
    #[error("the transport failed to deliver the request")]
    Transport,
    #[error("cannot locate the next hop: {0}")]
    Locate(#[from] LocateError),
    #[error("no listener can send over {0:?}")]
    NoListener(Transport),
    #[error("the SIP stack has stopped")]
    Stopped,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot bind {transport}:{addr}: {source}")]
    Bind {
        transport: ListenTransport,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{0}")]
    Locate(#[from] LocateError),
}

/// A request for the transaction user. Answer it with [`Responder::respond`]; a responder
/// dropped without an answer answers 500 so the peer is never left waiting.
pub struct IncomingRequest {
    pub request: Request,
    pub source: Source,
    pub responder: Responder,
}

pub struct Responder {
    id: ServerTxId,
    fallback: Option<Response>,
    tx: mpsc::UnboundedSender<Input>,
}

impl Responder {
    pub fn respond(mut self, response: Response) {
        self.fallback = None;
        let _ = self.tx.send(Input::Respond {
            id: self.id,
            response,
        });
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        if let Some(response) = self.fallback.take() {
            tracing::warn!("A SIP request was left unanswered; answering 500.");
            let _ = self.tx.send(Input::Respond {
                id: self.id,
                response,
            });
        }
    }
}

enum Input {
    Message {
        message: rsipstack::sip::SipMessage,
        source: Source,
    },
    Reject {
        reject: Reject,
        source: Source,
    },
    ConnOpened {
        id: ConnId,
        remote: SocketAddr,
        writer: mpsc::Sender<(Bytes, Option<u64>)>,
    },
    ConnClosed {
        id: ConnId,
    },
    TransportError {
        client: u64,
    },
    Send {
        request: Request,
        target: Target,
        reply: oneshot::Sender<Result<Response, SipError>>,
    },
    Respond {
        id: ServerTxId,
        response: Response,
    },
}

/// The interworking layer's handle on the SIP stack. Cheap to clone.
#[derive(Clone)]
pub struct SipHandle {
    inner: Arc<HandleInner>,
}

struct HandleInner {
    /// Commands from the transaction user: unbounded so that an answer is never lost to a
    /// full queue (the TU's own intake is bounded by TU_QUEUE).
    tx: mpsc::UnboundedSender<Input>,
    locator: Locator,
    routes: HashMap<String, NextHop>,
    outbound_proxy: Option<NextHop>,
    locals: Vec<Local>,
    user_agent: String,
    auth: std::sync::Mutex<DigestClient>,
}

impl SipHandle {
    /// The SIP URI stox puts in Contact headers for this transport.
    pub fn contact_host(&self) -> Option<&str> {
        self.inner.locals.first().map(|l| l.sent_by.as_str())
    }

    pub fn user_agent(&self) -> &str {
        &self.inner.user_agent
    }

    /// Sends an out-of-dialog request: next hop from `sip.routes` (by the Request-URI's
    /// domain), else `sip.outbound_proxy` (with a loose Route), else the Request-URI itself;
    /// located by RFC 3263, trying each target in turn on timeout, transport error or 503.
    /// Returns the final response.
    pub async fn send(&self, mut request: Request) -> Result<Response, SipError> {
        let host = request
            .uri
            .host_with_port
            .host
            .to_string()
            .to_ascii_lowercase();
        let destination = if let Some(hop) = self.inner.routes.get(&host) {
            hop.destination.clone()
        } else if let Some(proxy) = &self.inner.outbound_proxy {
            let route = if proxy.uri.contains(";lr") {
                format!("<{}>", proxy.uri)
            } else {
                format!("<{};lr>", proxy.uri)
            };
            request
                .headers
                .push_front(Header::Route(rsipstack::sip::Route::new(route)));
            proxy.destination.clone()
        } else {
            let secure = matches!(request.uri.scheme, Some(rsipstack::sip::Scheme::Sips));
            let mut transport = None;
            for p in &request.uri.params {
                if let rsipstack::sip::Param::Transport(t) = p {
                    transport = Transport::from_param(&t.to_string());
                }
            }
            Destination {
                host: request.uri.host_with_port.host.to_string(),
                port: request.uri.host_with_port.port.as_ref().map(|p| p.value()),
                transport,
                secure,
            }
        };
        request
            .headers
            .push(Header::UserAgent(rsipstack::sip::UserAgent::new(
                self.inner.user_agent.clone(),
            )));
        let scope = auth_scope(&request, &destination);
        self.digest().authorize(&mut request, &scope);
        let targets = self.inner.locator.locate(&destination).await?;
        let mut last = Err(SipError::Locate(LocateError::NoRecords {
            host: destination.host.clone(),
        }));
        for target in targets {
            let (reply, rx) = oneshot::channel();
            self.inner
                .tx
                .send(Input::Send {
                    request: request.clone(),
                    target: target.clone(),
                    reply,
                })
                .map_err(|_| SipError::Stopped)?;
            let outcome = rx.await.map_err(|_| SipError::Stopped)?;
            let outcome = self
                .answer_challenges(outcome, &mut request, &target, &scope)
                .await;
            match outcome {
                Ok(r) if r.status_code.code() == 503 => {
                    tracing::debug!(target = %target.addr, "503 from a target; trying the next one.");
                    last = Ok(r);
                }
                Err(e @ (SipError::Timeout | SipError::Transport)) => {
                    tracing::debug!(target = %target.addr, error = %e, "Target failed; trying the next one.");
                    last = Err(e);
                }
                other => return other,
            }
        }
        last
    }
}

// Digest authentication (sip::auth) of what `send` sends: kept apart from `send` itself.
impl SipHandle {
    fn digest(&self) -> std::sync::MutexGuard<'_, DigestClient> {
        // The client holds no invariant a panic elsewhere could break half-way.
        self.inner.auth.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// While `outcome` is a 401/407 that credentials from config can answer, re-sends the
    /// request to the same target (new branch, CSeq + 1, Authorization); returns the first
    /// answer that is not worth a retry.
    async fn answer_challenges(
        &self,
        mut outcome: Result<Response, SipError>,
        request: &mut Request,
        target: &Target,
        scope: &Scope,
    ) -> Result<Response, SipError> {
        let mut exchange = Exchange::default();
        loop {
            let retry = match &outcome {
                Ok(r) => self.digest().on_challenge(request, r, scope, &mut exchange),
                Err(_) => false,
            };
            if !retry {
                return outcome;
            }
            outcome = self.transact(request.clone(), target).await;
        }
    }

    /// One client transaction to one target.
    async fn transact(&self, request: Request, target: &Target) -> Result<Response, SipError> {
        let (reply, rx) = oneshot::channel();
        self.inner
            .tx
            .send(Input::Send {
                request,
                target: target.clone(),
                reply,
            })
            .map_err(|_| SipError::Stopped)?;
        rx.await.map_err(|_| SipError::Stopped)?
    }
}

/// Where cached challenges apply (sip::auth::Scope): the next hop, and the Request-URI's
/// domain.
fn auth_scope(request: &Request, destination: &Destination) -> Scope {
    Scope {
        next_hop: format!(
            "{}:{}",
            destination.host.to_ascii_lowercase(),
            destination.port.unwrap_or(0)
        ),
        domain: request
            .uri
            .host_with_port
            .host
            .to_string()
            .to_ascii_lowercase(),
    }
}

/// Binds every listener in `config.sip.listen` and starts the stack.
pub async fn start(
    config: &Config,
) -> Result<(SipHandle, mpsc::Receiver<IncomingRequest>), StartError> {
    let (tx, rx) = mpsc::channel::<Input>(16384);
    let (cmd_tx, cmd_rx) = mpsc::unbounded_channel::<Input>();
    let (tu_tx, tu_rx) = mpsc::channel::<IncomingRequest>(TU_QUEUE);
    let conn_ids = Arc::new(AtomicU64::new(1));
    let max = config.sip.max_message_size;
    let mut locals = Vec::new();
    let mut udp_sockets: Vec<(SocketAddr, Arc<UdpSocket>)> = Vec::new();
    for l in &config.sip.listen {
        let bind_err = |source| StartError::Bind {
            transport: l.transport,
            addr: l.addr,
            source,
        };
        let (transport, addr) = match l.transport {
            ListenTransport::Udp => {
                let sock = UdpSocket::bind(l.addr).await.map_err(bind_err)?;
                let addr = sock.local_addr().map_err(bind_err)?;
                let sock = Arc::new(sock);
                udp_sockets.push((addr, sock.clone()));
                tokio::spawn(udp_reader(sock, addr, max, tx.clone()));
                (Transport::Udp, addr)
            }
            ListenTransport::Tcp => {
                let listener = TcpListener::bind(l.addr).await.map_err(bind_err)?;
                let addr = listener.local_addr().map_err(bind_err)?;
                tokio::spawn(tcp_acceptor(
                    listener,
                    addr,
                    max,
                    tx.clone(),
                    conn_ids.clone(),
                ));
                (Transport::Tcp, addr)
            }
        };
        let sent_by = match &config.sip.advertise {
            Some(a) => sent_by_with_port(a, addr.port()),
            None => addr.to_string(),
        };
        tracing::info!(transport = transport.via_name(), %addr, "SIP listening.");
        locals.push(Local {
            transport,
            addr,
            sent_by,
        });
    }
    let supported: Vec<Transport> = {
        let mut s: Vec<Transport> = locals.iter().map(|l| l.transport).collect();
        s.dedup();
        s
    };
    let locator = Locator::new(&config.dns.nameservers, &supported)?;
    let mut routes = HashMap::new();
    for (domain, uri) in &config.sip.routes {
        if let Ok(hop) = NextHop::parse(uri) {
            routes.insert(domain.clone(), hop);
        }
    }
    let outbound_proxy = config
        .sip
        .outbound_proxy
        .as_deref()
        .and_then(|p| NextHop::parse(p).ok());
    let core = SipCore::new(Timers::from(config.sip.timers), locals.clone(), max);
    let driver = Driver {
        core,
        udp: udp_sockets,
        conns: HashMap::new(),
        conn_by_remote: HashMap::new(),
        conn_ids,
        pending: HashMap::new(),
        tu: tu_tx,
        tx: tx.clone(),
        cmd_tx: cmd_tx.clone(),
        max,
    };
    tokio::spawn(driver.run(rx, cmd_rx));
    Ok((
        SipHandle {
            inner: Arc::new(HandleInner {
                tx: cmd_tx,
                locator,
                routes,
                outbound_proxy,
                locals,
                user_agent: config.sip.user_agent.clone(),
                auth: std::sync::Mutex::new(DigestClient::new(config.sip.credentials.clone())),
            }),
        },
        tu_rx,
    ))
}

struct Conn {
    remote: SocketAddr,
    writer: mpsc::Sender<(Bytes, Option<u64>)>,
}

struct Driver {
    core: SipCore,
    udp: Vec<(SocketAddr, Arc<UdpSocket>)>,
    conns: HashMap<ConnId, Conn>,
    conn_by_remote: HashMap<SocketAddr, ConnId>,
    conn_ids: Arc<AtomicU64>,
    pending: HashMap<u64, oneshot::Sender<Result<Response, SipError>>>,
    tu: mpsc::Sender<IncomingRequest>,
    tx: mpsc::Sender<Input>,
    cmd_tx: mpsc::UnboundedSender<Input>,
    max: usize,
}

impl Driver {
    async fn run(
        mut self,
        mut rx: mpsc::Receiver<Input>,
        mut cmds: mpsc::UnboundedReceiver<Input>,
    ) {
        let mut next_token: u64 = 1;
        loop {
            let deadline = self.core.poll_timeout().map(Instant::from_std);
            tokio::select! {
                biased;
                cmd = cmds.recv() => {
                    let Some(cmd) = cmd else { return };
                    self.input(cmd, &mut next_token);
                    self.flush();
                    for _ in 0..256 {
                        match cmds.try_recv() {
                            Ok(cmd) => {
                                self.input(cmd, &mut next_token);
                                self.flush();
                            }
                            Err(_) => break,
                        }
                    }
                }
                input = rx.recv() => {
                    let Some(input) = input else { return };
                    self.input(input, &mut next_token);
                    self.flush();
                    // Take what else is queued without going back to the scheduler.
                    for _ in 0..256 {
                        match rx.try_recv() {
                            Ok(input) => {
                                self.input(input, &mut next_token);
                                self.flush();
                            }
                            Err(_) => break,
                        }
                    }
                }
                _ = sleep_until_opt(deadline) => {
                    self.core.handle_timeout(std::time::Instant::now());
                }
            }
            self.flush();
        }
    }

    fn input(&mut self, input: Input, next_token: &mut u64) {
        let now = std::time::Instant::now();
        match input {
            Input::Message { message, source } => self.core.handle_message(now, message, source),
            Input::Reject { reject, source } => {
                if let Reject::Drop { why, .. } = &reject {
                    tracing::debug!(remote = %source.remote, %why, "Dropped unusable SIP bytes.");
                }
                self.core.handle_reject(&reject, source)
            }
            Input::ConnOpened { id, remote, writer } => {
                self.conn_by_remote.insert(remote, id);
                self.conns.insert(id, Conn { remote, writer });
            }
            Input::ConnClosed { id } => {
                if let Some(c) = self.conns.remove(&id) {
                    if self.conn_by_remote.get(&c.remote) == Some(&id) {
                        self.conn_by_remote.remove(&c.remote);
                    }
                }
            }
            Input::TransportError { client } => self.core.handle_transport_error(client),
            Input::Send {
                request,
                target,
                reply,
            } => {
                let token = *next_token;
                *next_token += 1;
                let transport = target.transport;
                if self.core.send_request(now, request, target, token) {
                    self.pending.insert(token, reply);
                } else {
                    let _ = reply.send(Err(SipError::NoListener(transport)));
                }
            }
            Input::Respond { id, response } => self.core.respond(now, id, response),
        }
    }

    fn flush(&mut self) {
        while let Some(t) = self.core.poll_transmit() {
            self.transmit(t);
        }
        while let Some(event) = self.core.poll_event() {
            match event {
                Event::Request {
                    id,
                    request,
                    source,
                } => self.deliver(id, request, source),
                Event::Response { token, response } => {
                    if response.status_code.code() >= 200 {
                        if let Some(reply) = self.pending.remove(&token) {
                            let _ = reply.send(Ok(response));
                        }
                    }
                }
                Event::Failed { token, failure } => {
                    if let Some(reply) = self.pending.remove(&token) {
                        let _ = reply.send(Err(match failure {
                            Failure::Timeout => SipError::Timeout,
                            Failure::Transport => SipError::Transport,
                        }));
                    }
                }
            }
        }
    }

    fn deliver(&mut self, id: ServerTxId, request: Request, source: Source) {
        let fallback = message::response_to(&request, 500, None, "");
        let overload = message::response_to(&request, 503, None, "");
        let incoming = IncomingRequest {
            request,
            source,
            responder: Responder {
                id,
                fallback: Some(fallback),
                tx: self.cmd_tx.clone(),
            },
        };
        if let Err(e) = self.tu.try_send(incoming) {
            let mut incoming = match e {
                mpsc::error::TrySendError::Full(i) | mpsc::error::TrySendError::Closed(i) => i,
            };
            // The TU is saturated: say so now instead of letting the client time out.
            incoming.responder.fallback = None;
            let mut overload = overload;
            overload
                .headers
                .push(Header::RetryAfter(rsipstack::sip::RetryAfter::new("5")));
            tracing::warn!(
                "SIP requests are arriving faster than they can be handled; answering 503."
            );
            self.core.respond(std::time::Instant::now(), id, overload);
        }
    }

    fn transmit(&mut self, t: Transmit) {
        match t.transport {
            Transport::Udp => {
                let sock = t
                    .from
                    .and_then(|f| self.udp.iter().find(|(a, _)| *a == f))
                    .or_else(|| self.udp.iter().find(|(a, _)| a.is_ipv4() == t.to.is_ipv4()))
                    .or_else(|| self.udp.first());
                match sock {
                    Some((_, s)) => {
                        if let Err(e) = s.try_send_to(&t.bytes, t.to) {
                            // UDP may drop; the transaction layer retransmits.
                            tracing::debug!(to = %t.to, error = %e, "UDP send failed.");
                            if e.kind() != std::io::ErrorKind::WouldBlock {
                                if let Some(c) = t.client {
                                    self.core.handle_transport_error(c);
                                }
                            }
                        }
                    }
                    None => {
                        if let Some(c) = t.client {
                            self.core.handle_transport_error(c);
                        }
                    }
                }
            }
            Transport::Tcp | Transport::Tls => {
                if let Some(c) = t.conn {
                    if !self.conns.contains_key(&c) && t.client.is_none() {
                        // The peer closed the connection its request came on; a reply
                        // cannot reach its ephemeral port any other way.
                        tracing::debug!(to = %t.to, "Reply for a closed TCP connection dropped.");
                        return;
                    }
                }
                let conn = t
                    .conn
                    .filter(|c| self.conns.contains_key(c))
                    .or_else(|| self.conn_by_remote.get(&t.to).copied());
                let conn = match conn {
                    Some(c) => c,
                    None => {
                        if t.transport == Transport::Tls {
                            if let Some(c) = t.client {
                                self.core.handle_transport_error(c);
                            }
                            return;
                        }
                        self.connect(t.to)
                    }
                };
                let Some(c) = self.conns.get(&conn) else {
                    return;
                };
                if c.writer.try_send((t.bytes, t.client)).is_err() {
                    tracing::debug!(to = %t.to, "TCP connection is backed up or closed.");
                    if let Some(client) = t.client {
                        self.core.handle_transport_error(client);
                    }
                }
            }
        }
    }

    /// Opens an outbound TCP connection; writes queue until it is up.
    fn connect(&mut self, remote: SocketAddr) -> ConnId {
        let id = ConnId(self.conn_ids.fetch_add(1, Ordering::Relaxed));
        let (writer, writes) = mpsc::channel(1024);
        self.conns.insert(id, Conn { remote, writer });
        self.conn_by_remote.insert(remote, id);
        let tx = self.tx.clone();
        let max = self.max;
        tokio::spawn(async move {
            let connected =
                tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(remote)).await;
            match connected {
                Ok(Ok(stream)) => {
                    let _ = stream.set_nodelay(true);
                    let local = stream.local_addr().unwrap_or(remote);
                    run_conn(stream, id, remote, local, writes, tx, max).await
                }
                Ok(Err(e)) => fail_conn(id, remote, &e.to_string(), writes, tx).await,
                Err(_) => fail_conn(id, remote, "connect timed out", writes, tx).await,
            }
        });
        id
    }
}

/// `host`, `host:port`, `[v6]`, `[v6]:port` or a bare IPv6 literal -> a Via sent-by with a port.
fn sent_by_with_port(advertise: &str, port: u16) -> String {
    if let Some(rest) = advertise.strip_prefix('[') {
        if rest.contains("]:") {
            advertise.to_string()
        } else {
            format!("{advertise}:{port}")
        }
    } else if advertise.parse::<std::net::Ipv6Addr>().is_ok() {
        format!("[{advertise}]:{port}")
    } else if advertise.contains(':') {
        advertise.to_string()
    } else {
        format!("{advertise}:{port}")
    }
}

async fn fail_conn(
    id: ConnId,
    remote: SocketAddr,
    why: &str,
    mut writes: mpsc::Receiver<(Bytes, Option<u64>)>,
    tx: mpsc::Sender<Input>,
) {
    tracing::info!(%remote, %why, "TCP connect failed.");
    let _ = tx.send(Input::ConnClosed { id }).await;
    writes.close();
    while let Some((_, client)) = writes.recv().await {
        if let Some(client) = client {
            let _ = tx.send(Input::TransportError { client }).await;
        }
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

async fn udp_reader(sock: Arc<UdpSocket>, local: SocketAddr, max: usize, tx: mpsc::Sender<Input>) {
    // One byte more than the limit tells an oversized datagram from one that just fits.
    let mut buf = vec![0u8; max.max(65535) + 1];
    loop {
        let (len, remote) = match sock.recv_from(&mut buf).await {
            Ok(x) => x,
            Err(e) => {
                // ICMP errors surface here on some systems; they are not fatal.
                tracing::debug!(error = %e, "UDP receive error.");
                continue;
            }
        };
        let data = &buf[..len];
        if data.iter().all(|b| matches!(b, b'\r' | b'\n' | 0)) {
            continue; // keep-alive
        }
        let source = Source {
            transport: Transport::Udp,
            remote,
            local,
            conn: None,
        };
        let span = tracing::trace_span!("udp", %remote);
        let _g = span.enter();
        let input = match message::parse(data, Framing::Datagram, max) {
            Ok(p) => Input::Message {
                message: p.message,
                source,
            },
            Err(reject) => Input::Reject { reject, source },
        };
        if tx.send(input).await.is_err() {
            return;
        }
    }
}

async fn tcp_acceptor(
    listener: TcpListener,
    local: SocketAddr,
    max: usize,
    tx: mpsc::Sender<Input>,
    ids: Arc<AtomicU64>,
) {
    loop {
        let (stream, remote) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "TCP accept failed.");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let id = ConnId(ids.fetch_add(1, Ordering::Relaxed));
        let (writer, writes) = mpsc::channel(1024);
        if tx
            .send(Input::ConnOpened { id, remote, writer })
            .await
            .is_err()
        {
            return;
        }
        tokio::spawn(run_conn(stream, id, remote, local, writes, tx.clone(), max));
    }
}

/// One TCP connection: frames what it reads by Content-Length, writes what it is given.
async fn run_conn(
    stream: TcpStream,
    id: ConnId,
    remote: SocketAddr,
    local: SocketAddr,
    mut writes: mpsc::Receiver<(Bytes, Option<u64>)>,
    tx: mpsc::Sender<Input>,
    max: usize,
) {
    let (mut rd, mut wr) = stream.into_split();
    let source = Source {
        transport: Transport::Tcp,
        remote,
        local,
        conn: Some(id),
    };
    let writer_tx = tx.clone();
    let (pong_tx, mut pong_rx) = mpsc::channel::<()>(4);
    let writer = tokio::spawn(async move {
        loop {
            tokio::select! {
                w = writes.recv() => {
                    let Some((bytes, client)) = w else { break };
                    if wr.write_all(&bytes).await.is_err() {
                        if let Some(client) = client {
                            let _ = writer_tx.send(Input::TransportError { client }).await;
                        }
                        break;
                    }
                }
                p = pong_rx.recv() => {
                    if p.is_none() || wr.write_all(b"\r\n").await.is_err() { break; }
                }
            }
        }
        // Anything still queued cannot go out: fail its transactions now.
        writes.close();
        while let Some((_, client)) = writes.recv().await {
            if let Some(client) = client {
                let _ = writer_tx.send(Input::TransportError { client }).await;
            }
        }
        let _ = wr.shutdown().await;
    });

    let mut buf = BytesMut::with_capacity(8192);
    'read: loop {
        let n = match tokio::time::timeout(IDLE_TIMEOUT, rd.read_buf(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => n,
            Err(_) => {
                tracing::debug!(%remote, "Closing an idle TCP connection.");
                break;
            }
        };
        let _ = n;
        loop {
            let skip = message::leading_crlf(&buf);
            if skip > 0 {
                // RFC 5626 4.4.1: a double-CRLF ping gets a single-CRLF pong.
                if buf[..skip].windows(4).any(|w| w == b"\r\n\r\n") {
                    let _ = pong_tx.try_send(());
                }
                let _ = buf.split_to(skip);
            }
            if buf.is_empty() {
                break;
            }
            match message::parse(&buf, Framing::Stream, max) {
                Ok(p) => {
                    let _ = buf.split_to(p.len);
                    if tx
                        .send(Input::Message {
                            message: p.message,
                            source,
                        })
                        .await
                        .is_err()
                    {
                        break 'read;
                    }
                }
                Err(Reject::Incomplete) => break,
                Err(reject) => {
                    let len = match &reject {
                        Reject::Answer { len, .. } | Reject::Drop { len, .. } => *len,
                        Reject::Incomplete => None,
                    };
                    let _ = tx.send(Input::Reject { reject, source }).await;
                    match len {
                        Some(len) if len <= buf.len() => {
                            let _ = buf.split_to(len);
                        }
                        // Framing is lost: the stream cannot be read any further.
                        _ => break 'read,
                    }
                }
            }
        }
    }
    drop(pong_tx);
    let _ = tx.send(Input::ConnClosed { id }).await;
    // Let queued answers (e.g. a 400 for what broke the framing) go out before closing.
    let _ = tokio::time::timeout(Duration::from_secs(2), writer).await;
}
