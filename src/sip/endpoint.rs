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

use super::core::{ConnId, Event, Failure, Local, ServerTxId, SipCore, Source, Transmit};
use super::locate::{Destination, LocateError, Locator, Target, Transport};
use super::message::{self, first_list_value, Framing, Reject};
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
    /// None for what gets no response (an ACK, a CANCEL the core already answered).
    id: Option<ServerTxId>,
    fallback: Option<Response>,
    tx: mpsc::UnboundedSender<Input>,
}

impl Responder {
    pub fn respond(mut self, response: Response) {
        self.fallback = None;
        if let Some(id) = self.id {
            let _ = self.tx.send(Input::Respond { id, response });
        }
    }

    /// Whether this request expects a response at all.
    pub fn expects_response(&self) -> bool {
        self.id.is_some()
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        if let (Some(id), Some(response)) = (self.id, self.fallback.take()) {
            tracing::warn!("A SIP request was left unanswered; answering 500.");
            let _ = self.tx.send(Input::Respond { id, response });
        }
    }
}

/// What a request sent with [`SipHandle::invite`] reports: every response (provisional,
/// each 2xx of each fork) until the transaction ends, or why it failed.
#[derive(Debug)]
pub enum ClientEvent {
    Response(Response),
    Failed(SipError),
}

/// An INVITE in progress.
pub struct InviteClient {
    pub events: mpsc::UnboundedReceiver<ClientEvent>,
    /// The target it went to: its ACKs for 2xx responses go there too when no Route says
    /// otherwise.
    pub target: Target,
    token: u64,
    tx: mpsc::UnboundedSender<Input>,
}

impl InviteClient {
    /// CANCEL (RFC 3261 9.1); the INVITE then ends with 487 (or a 2xx that raced it).
    pub fn cancel(&self) {
        let _ = self.tx.send(Input::Cancel { token: self.token });
    }
}

enum Pending {
    Final(oneshot::Sender<Result<Response, SipError>>),
    Stream(mpsc::UnboundedSender<ClientEvent>),
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
        token: u64,
        reply: Pending,
    },
    Cancel {
        token: u64,
    },
    Stateless {
        request: Request,
        target: Target,
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
    tokens: AtomicU64,
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
        let destination = self.next_hop(&mut request, false);
        self.send_to(request, destination).await
    }

    /// Sends a request inside a dialog (RFC 3261 12.2.1.1): to the top Route when the
    /// route set is not empty, else to the remote target in the Request-URI (`sip.routes`
    /// still apply to its domain; the outbound proxy does not).
    pub async fn send_in_dialog(&self, mut request: Request) -> Result<Response, SipError> {
        let destination = self.next_hop(&mut request, true);
        self.send_to(request, destination).await
    }

    /// Sends an INVITE (out of dialog, or a re-INVITE with `in_dialog`) and returns once a
    /// target took it (answered anything); every response follows on `events`. Targets
    /// that time out or fail before any response are skipped (RFC 3263 failover).
    pub async fn invite(
        &self,
        mut request: Request,
        in_dialog: bool,
    ) -> Result<(InviteClient, Response), SipError> {
        let destination = self.next_hop(&mut request, in_dialog);
        self.add_user_agent(&mut request);
        let targets = self.inner.locator.locate(&destination).await?;
        let mut last = SipError::Locate(LocateError::NoRecords {
            host: destination.host.clone(),
        });
        for target in targets {
            let (events_tx, mut events) = mpsc::unbounded_channel();
            let token = self.inner.tokens.fetch_add(1, Ordering::Relaxed);
            self.inner
                .tx
                .send(Input::Send {
                    request: request.clone(),
                    target: target.clone(),
                    token,
                    reply: Pending::Stream(events_tx),
                })
                .map_err(|_| SipError::Stopped)?;
            match events.recv().await {
                Some(ClientEvent::Response(r)) => {
                    let client = InviteClient {
                        events,
                        target,
                        token,
                        tx: self.inner.tx.clone(),
                    };
                    return Ok((client, r));
                }
                Some(ClientEvent::Failed(e)) => {
                    tracing::debug!(target = %target.addr, error = %e, "INVITE target failed; trying the next one.");
                    last = e;
                }
                None => return Err(SipError::Stopped),
            }
        }
        Err(last)
    }

    /// Sends the ACK for a 2xx (RFC 3261 13.2.2.4): outside any transaction, to the top
    /// Route or the remote target, or to `fallback` (where the INVITE went) when neither
    /// can be located.
    pub async fn ack(&self, mut request: Request, fallback: &Target) {
        let destination = self.next_hop(&mut request, true);
        let target = match self.inner.locator.locate(&destination).await {
            Ok(t) if !t.is_empty() => t[0].clone(),
            _ => fallback.clone(),
        };
        let _ = self.inner.tx.send(Input::Stateless { request, target });
    }

    fn add_user_agent(&self, request: &mut Request) {
        request
            .headers
            .push(Header::UserAgent(rsipstack::sip::UserAgent::new(
                self.inner.user_agent.clone(),
            )));
    }

    /// The next hop of a request: a top Route (a dialog's route set), else `sip.routes` by
    /// the Request-URI's domain, else (out of dialog) the outbound proxy with a loose
    /// Route, else the Request-URI itself.
    fn next_hop(&self, request: &mut Request, in_dialog: bool) -> Destination {
        if let Some(route) = request.headers.iter().find_map(|h| match h {
            Header::Route(r) => Some(r.value().to_string()),
            _ => None,
        }) {
            let uri = crate::im::addr_spec(first_list_value(&route));
            if let Ok(hop) = NextHop::parse(&uri) {
                return hop.destination;
            }
        }
        let host = request
            .uri
            .host_with_port
            .host
            .to_string()
            .to_ascii_lowercase();
        if let Some(hop) = self.inner.routes.get(&host) {
            hop.destination.clone()
        } else if let (Some(proxy), false) = (&self.inner.outbound_proxy, in_dialog) {
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
        }
    }

    async fn send_to(
        &self,
        mut request: Request,
        destination: Destination,
    ) -> Result<Response, SipError> {
        self.add_user_agent(&mut request);
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
                    token: self.inner.tokens.fetch_add(1, Ordering::Relaxed),
                    reply: Pending::Final(reply),
                })
                .map_err(|_| SipError::Stopped)?;
            let outcome = rx.await.map_err(|_| SipError::Stopped)?;
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
                // 0 is the core's own (the CANCELs it sends).
                tokens: AtomicU64::new(1),
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
    pending: HashMap<u64, Pending>,
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
        loop {
            let deadline = self.core.poll_timeout().map(Instant::from_std);
            tokio::select! {
                biased;
                cmd = cmds.recv() => {
                    let Some(cmd) = cmd else { return };
                    self.input(cmd);
                    self.flush();
                    for _ in 0..256 {
                        match cmds.try_recv() {
                            Ok(cmd) => {
                                self.input(cmd);
                                self.flush();
                            }
                            Err(_) => break,
                        }
                    }
                }
                input = rx.recv() => {
                    let Some(input) = input else { return };
                    self.input(input);
                    self.flush();
                    // Take what else is queued without going back to the scheduler.
                    for _ in 0..256 {
                        match rx.try_recv() {
                            Ok(input) => {
                                self.input(input);
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

    fn input(&mut self, input: Input) {
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
                token,
                reply,
            } => {
                let transport = target.transport;
                if self.core.send_request(now, request, target, token) {
                    self.pending.insert(token, reply);
                } else {
                    reply.fail(SipError::NoListener(transport));
                }
            }
            Input::Cancel { token } => self.core.cancel(now, token),
            Input::Stateless { request, target } => {
                if !self.core.send_stateless(request, target) {
                    tracing::debug!("No listener to send an ACK from.");
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
                    let code = response.status_code.code();
                    match self.pending.remove(&token) {
                        Some(Pending::Final(reply)) if code >= 200 => {
                            let _ = reply.send(Ok(response));
                        }
                        Some(Pending::Stream(events)) => {
                            // A 2xx may be followed by more (forks); a failure ends it.
                            let open = events.send(ClientEvent::Response(response)).is_ok();
                            if open && code < 300 {
                                self.pending.insert(token, Pending::Stream(events));
                            }
                        }
                        Some(p) => {
                            self.pending.insert(token, p);
                        }
                        None => {}
                    }
                }
                Event::Failed { token, failure } => {
                    if let Some(reply) = self.pending.remove(&token) {
                        reply.fail(match failure {
                            Failure::Timeout => SipError::Timeout,
                            Failure::Transport => SipError::Transport,
                        });
                    }
                }
                Event::Ended { token } => {
                    self.pending.remove(&token);
                }
                Event::Ack { request, source } => self.deliver_unanswered(request, source),
                Event::Cancelled {
                    request, source, ..
                } => self.deliver_unanswered(request, source),
                Event::AckTimeout { call_id } => {
                    tracing::info!(%call_id, "A 2xx to INVITE got no ACK within 64*T1.");
                }
            }
        }
    }

    /// An ACK, or a CANCEL the core answered: the TU hears of it but answers nothing.
    fn deliver_unanswered(&mut self, request: Request, source: Source) {
        let incoming = IncomingRequest {
            request,
            source,
            responder: Responder {
                id: None,
                fallback: None,
                tx: self.cmd_tx.clone(),
            },
        };
        if self.tu.try_send(incoming).is_err() {
            tracing::warn!(
                "The transaction user is saturated; an ACK or CANCEL was not passed on."
            );
        }
    }

    fn deliver(&mut self, id: ServerTxId, request: Request, source: Source) {
        let fallback = message::response_to(&request, 500, None, "");
        let overload = message::response_to(&request, 503, None, "");
        let incoming = IncomingRequest {
            request,
            source,
            responder: Responder {
                id: Some(id),
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

impl Pending {
    fn fail(self, e: SipError) {
        match self {
            Pending::Final(reply) => {
                let _ = reply.send(Err(e));
            }
            Pending::Stream(events) => {
                let _ = events.send(ClientEvent::Failed(e));
            }
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
