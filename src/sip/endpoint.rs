//! The tokio edge of the SIP stack: sockets, connections, the clock, and the typed handle
//! the interworking layer uses.
//!
//! One task owns the [`SipCore`]: every socket task feeds it parsed messages over one
//! channel, and it writes UDP datagrams itself and TCP/TLS bytes through each connection's
//! writer channel. The transaction user gets requests as [`IncomingRequest`]s and sends
//! requests with [`SipHandle::send`].
//!
//! TCP and TLS connections run the same code ([`run_conn`], generic over the stream):
//! Content-Length framing, CRLF keep-alive pongs (RFC 5626 4.4.1), an idle timeout, a
//! read timeout per message (`sip.read_timeout_ms`), a write timeout
//! (`sip.write_timeout_ms`), one slot each of `sip.max_connections`, and for accepted
//! ones a slot of `sip.max_connections_per_address`. A TLS connection is a TCP one after a rustls
//! handshake; an outbound one checks the certificate against the target's host name and
//! is reused only for requests to the same address and name.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use rsipstack::sip::{Header, Request, Response};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_rustls::{TlsAcceptor, TlsConnector};

use super::auth::{DigestClient, Exchange, Scope};
use super::core::{ConnId, Event, Failure, Local, ServerTxId, SipCore, Source, Transmit};
use super::locate::{Destination, LocateError, Locator, Target, Transport};
use super::message::{self, first_list_value, Framing, Reject};
use super::transaction::Timers;
use super::NextHop;
use crate::config::{Config, ListenTransport};
use crate::destination::{Chosen, Peers, Policy, Service};

/// How long a TCP connect may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a TLS handshake may take, either way.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// At most one warning this often that the connection limit turned connections away.
const LIMIT_WARNING_EVERY: Duration = Duration::from_secs(10);
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
    /// issue 11: a remote party chose a destination stox does not send to.
    #[error("not sending there: {0}")]
    Refused(#[from] crate::destination::Refused),
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
    #[error("sip.tls: a tls: listener ({0}) needs [sip.tls]")]
    NoTls(SocketAddr),
}

/// A request for the transaction user. Answer it with [`Responder::respond`]; a responder
/// dropped without an answer answers 500 so the peer is never left waiting.
pub struct IncomingRequest {
    pub request: Request,
    pub source: Source,
    pub responder: Responder,
}

impl IncomingRequest {
    /// Answers 503 with Retry-After: the part of stox it was meant for is saturated.
    pub fn refuse_busy(self) {
        self.refuse_for(5)
    }

    /// Answers 503 with `Retry-After: seconds` (a rate limit says how long).
    pub fn refuse_for(self, seconds: u32) {
        let mut r = message::response_to(&self.request, 503, None, "");
        r.headers
            .push(Header::RetryAfter(rsipstack::sip::RetryAfter::new(
                seconds.to_string(),
            )));
        self.responder.respond(r);
    }
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

    /// Sends a provisional (1xx) response and keeps the responder for the final one
    /// (180 Ringing before the 200 of an INVITE). Anything else is ignored here.
    pub fn provisional(&self, response: Response) {
        if response.status_code.code() >= 200 {
            tracing::debug!("Responder::provisional given a final response; ignored.");
            return;
        }
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
    /// The INVITE as last sent (without Via): after a digest challenge it carries the
    /// credentials and the next CSeq, so the dialog and the ACK are made from this one.
    pub request: Request,
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
        key: ConnKey,
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
    auth: std::sync::Mutex<DigestClient>,
    /// `sip.allowed_destinations` and the rules of crate::destination.
    policy: Policy,
    /// `sip.register.registrar` as a next hop: config vouches for it like for a route.
    registrar: Option<Destination>,
    peers: Arc<std::sync::Mutex<Peers>>,
}

/// Where a request goes, and who vouched for it (crate::destination).
struct Hop {
    destination: Destination,
    chosen: Chosen,
    /// The Request-URI names a host the admin configured (the registrar, a domain of
    /// `sip.routes`): only then is a 401 answered with credentials (issue 11 item 4).
    target_configured: bool,
    /// In a dialog the remote target and route set come from the SIP peer, whose own
    /// address vouches for itself (crate::destination::Peers); out of dialog the
    /// Request-URI comes from a JID, and an XMPP user's choice is vouched for by nobody.
    in_dialog: bool,
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
        let hop = self.next_hop(&mut request, false);
        self.send_to(request, hop).await
    }

    /// Sends a request inside a dialog (RFC 3261 12.2.1.1): to the top Route when the
    /// route set is not empty, else to the remote target in the Request-URI (`sip.routes`
    /// still apply to its domain; the outbound proxy does not).
    pub async fn send_in_dialog(&self, mut request: Request) -> Result<Response, SipError> {
        let hop = self.next_hop(&mut request, true);
        self.send_to(request, hop).await
    }

    /// Sends an INVITE (out of dialog, or a re-INVITE with `in_dialog`) and returns once a
    /// target took it (answered anything); every response follows on `events`. Targets
    /// that time out or fail before any response are skipped (RFC 3263 failover). A
    /// 401/407 that is the first answer is met from `sip.credentials` like for `send`
    /// (a challenge after a provisional response reaches the caller as it is).
    pub async fn invite(
        &self,
        mut request: Request,
        in_dialog: bool,
    ) -> Result<(InviteClient, Response), SipError> {
        let hop = self.next_hop(&mut request, in_dialog);
        let destination = &hop.destination;
        self.add_user_agent(&mut request);
        let scope = auth_scope(&request, destination);
        if hop.chosen == Chosen::Config {
            self.digest().authorize(&mut request, &scope);
        }
        let targets = self.vet(self.inner.locator.locate(destination).await?, &hop)?;
        let mut last = SipError::Locate(LocateError::NoRecords {
            host: destination.host.clone(),
        });
        let mut exchange = Exchange::default();
        let mut targets = targets.into_iter();
        let mut target = targets.next();
        while let Some(to) = target.clone() {
            let (events_tx, mut events) = mpsc::unbounded_channel();
            let token = self.inner.tokens.fetch_add(1, Ordering::Relaxed);
            self.inner
                .tx
                .send(Input::Send {
                    request: request.clone(),
                    target: to.clone(),
                    token,
                    reply: Pending::Stream(events_tx),
                })
                .map_err(|_| SipError::Stopped)?;
            match events.recv().await {
                // A 401/407 as the first answer (the core has ACKed it): once per realm,
                // the INVITE again to the same target with credentials and the next CSeq.
                Some(ClientEvent::Response(r))
                    if self.may_answer(&r, &hop)
                        && self
                            .digest()
                            .on_challenge(&mut request, &r, &scope, &mut exchange) =>
                {
                    tracing::debug!(
                        status = r.status_code.code(),
                        "INVITE challenged; sent again with credentials."
                    );
                    continue;
                }
                Some(ClientEvent::Response(r)) => {
                    self.note_peer(&to);
                    let client = InviteClient {
                        events,
                        target: to,
                        request,
                        token,
                        tx: self.inner.tx.clone(),
                    };
                    return Ok((client, r));
                }
                Some(ClientEvent::Failed(e)) => {
                    tracing::debug!(target = %to.addr, error = %e, "INVITE target failed; trying the next one.");
                    last = e;
                }
                None => return Err(SipError::Stopped),
            }
            target = targets.next();
        }
        Err(last)
    }

    /// Sends the ACK for a 2xx (RFC 3261 13.2.2.4): outside any transaction, to the top
    /// Route or the remote target, or to `fallback` (where the INVITE went) when neither
    /// can be located.
    pub async fn ack(&self, mut request: Request, fallback: &Target) {
        let hop = self.next_hop(&mut request, true);
        let located = match self.inner.locator.locate(&hop.destination).await {
            Ok(t) => self.vet(t, &hop),
            Err(e) => Err(e.into()),
        };
        let target = match located {
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
    fn next_hop(&self, request: &mut Request, in_dialog: bool) -> Hop {
        let host = request
            .uri
            .host_with_port
            .host
            .to_string()
            .to_ascii_lowercase();
        let ruri = Destination {
            host: host.clone(),
            port: request.uri.host_with_port.port.as_ref().map(|p| p.value()),
            transport: None,
            secure: matches!(request.uri.scheme, Some(rsipstack::sip::Scheme::Sips)),
        };
        let target_configured = self.inner.routes.contains_key(&host)
            || self
                .inner
                .registrar
                .as_ref()
                .is_some_and(|r| same_hop(r, &ruri));
        let destination = self.next_destination(request, in_dialog, &host);
        // A Route from a Record-Route, or the Request-URI from a JID or a Contact: a
        // remote party chose it, unless it is a hop the admin configured.
        let chosen = if self.configured(&destination) {
            Chosen::Config
        } else {
            Chosen::Remote
        };
        Hop {
            destination,
            chosen,
            target_configured,
            in_dialog,
        }
    }

    /// Whether `d` is a next hop from config: the outbound proxy, a route, the registrar.
    fn configured(&self, d: &Destination) -> bool {
        let inner = &self.inner;
        inner
            .outbound_proxy
            .iter()
            .chain(inner.routes.values())
            .any(|h| same_hop(&h.destination, d))
            || inner.registrar.as_ref().is_some_and(|r| same_hop(r, d))
    }

    fn next_destination(&self, request: &mut Request, in_dialog: bool, host: &str) -> Destination {
        if let Some(route) = request.headers.iter().find_map(|h| match h {
            Header::Route(r) => Some(r.value().to_string()),
            _ => None,
        }) {
            let uri = super::dialog::uri_of(first_list_value(&route));
            if let Ok(hop) = NextHop::parse(&uri) {
                return hop.destination;
            }
        }
        if let Some(hop) = self.inner.routes.get(host) {
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

    async fn send_to(&self, mut request: Request, hop: Hop) -> Result<Response, SipError> {
        let destination = &hop.destination;
        self.add_user_agent(&mut request);
        let scope = auth_scope(&request, destination);
        if hop.chosen == Chosen::Config {
            self.digest().authorize(&mut request, &scope);
        }
        let mut targets = self.locator_targets(destination).await?;
        if destination.secure {
            // RFC 5630 4.1: a sips: next hop is reached over TLS, never in the clear.
            targets.retain(|t| t.transport == Transport::Tls);
        }
        let targets = self.vet(targets, &hop)?;
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
            if outcome.is_ok() {
                self.note_peer(&target);
            }
            let outcome = self
                .answer_challenges(outcome, &mut request, &target, &scope, &hop)
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

// Where stox may send (crate::destination): kept apart from `send` itself.
impl SipHandle {
    fn peers(&self) -> std::sync::MutexGuard<'_, Peers> {
        self.inner.peers.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn locator_targets(&self, destination: &Destination) -> Result<Vec<Target>, SipError> {
        Ok(self.inner.locator.locate(destination).await?)
    }

    /// The located targets the policy lets stox send to, or why there is none. It is
    /// checked on the address and port, so the TCP a big UDP request switches to
    /// (RFC 3261 18.1.1, same address and port) is covered too.
    fn vet(&self, targets: Vec<Target>, hop: &Hop) -> Result<Vec<Target>, SipError> {
        let now = std::time::Instant::now();
        let mut refused = None;
        let allowed: Vec<Target> = targets
            .into_iter()
            .filter(|t| {
                let chosen = if hop.in_dialog {
                    self.peers().vouch(t.addr.ip(), hop.chosen, now)
                } else {
                    hop.chosen
                };
                match self.inner.policy.check(t.addr, chosen, Service::Sip) {
                    Ok(()) => true,
                    Err(e) => {
                        tracing::info!(target = %t.addr, error = %e, "Not sending a SIP request there.");
                        refused.get_or_insert(e);
                        false
                    }
                }
            })
            .collect();
        match refused {
            Some(e) if allowed.is_empty() => Err(SipError::Refused(e)),
            _ => Ok(allowed),
        }
    }

    /// A target that answered speaks SIP from that address (the dialog's peer).
    fn note_peer(&self, target: &Target) {
        self.peers()
            .note(target.addr.ip(), std::time::Instant::now());
    }

    /// Whether an MSRP connection to `to` (a=path, chosen by the SIP peer) is allowed:
    /// a SIP peer's own address, or the policy's rules for a remote party's choice.
    pub fn msrp_destination(&self, to: SocketAddr) -> Result<(), crate::destination::Refused> {
        let chosen = self
            .peers()
            .vouch(to.ip(), Chosen::Remote, std::time::Instant::now());
        self.inner.policy.check(to, chosen, Service::Msrp)
    }
}

/// The same host and port (the default port of the scheme when none is given).
fn same_hop(a: &Destination, b: &Destination) -> bool {
    let port = |d: &Destination| d.port.unwrap_or(if d.secure { 5061 } else { 5060 });
    a.host.eq_ignore_ascii_case(&b.host) && port(a) == port(b)
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
        hop: &Hop,
    ) -> Result<Response, SipError> {
        let mut exchange = Exchange::default();
        loop {
            let retry = match &outcome {
                Ok(r) if self.may_answer(r, hop) => {
                    self.digest().on_challenge(request, r, scope, &mut exchange)
                }
                Ok(_) => false,
                Err(_) => false,
            };
            if !retry {
                return outcome;
            }
            outcome = self.transact(request.clone(), target).await;
        }
    }

    /// Issue 11 item 4: credentials go only to hops the admin configured. A 407 comes
    /// from the next hop, so it is answered when that hop is configured; a 401 comes from
    /// the target, so it is answered only when the Request-URI names a configured host
    /// (through a configured hop): never for a Contact, a Record-Route or a JID's choice.
    fn may_answer(&self, response: &Response, hop: &Hop) -> bool {
        let answer = match response.status_code.code() {
            407 => hop.chosen == Chosen::Config,
            401 => hop.chosen == Chosen::Config && hop.target_configured,
            _ => return false,
        };
        if !answer {
            tracing::info!(
                status = response.status_code.code(),
                next_hop = %hop.destination.host,
                "Challenge from a destination not configured for credentials; not answered."
            );
        }
        answer
    }

    /// One client transaction to one target.
    async fn transact(&self, request: Request, target: &Target) -> Result<Response, SipError> {
        let (reply, rx) = oneshot::channel();
        self.inner
            .tx
            .send(Input::Send {
                request,
                target: target.clone(),
                token: self.inner.tokens.fetch_add(1, Ordering::Relaxed),
                reply: Pending::Final(reply),
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
/// SO_RCVBUF asked for on each UDP listener.
const UDP_RECV_BUFFER: usize = 4 << 20;

pub async fn start(
    config: &Config,
) -> Result<(SipHandle, mpsc::Receiver<IncomingRequest>), StartError> {
    let (tx, rx) = mpsc::channel::<Input>(16384);
    let (cmd_tx, cmd_rx) = mpsc::unbounded_channel::<Input>();
    let (tu_tx, tu_rx) = mpsc::channel::<IncomingRequest>(TU_QUEUE);
    let conn_ids = Arc::new(AtomicU64::new(1));
    let max = config.sip.max_message_size;
    let limits = StreamLimits {
        max,
        idle: Duration::from_millis(config.sip.idle_timeout_ms),
        read: Duration::from_millis(config.sip.read_timeout_ms),
        write: Duration::from_millis(config.sip.write_timeout_ms),
        slots: Arc::new(Semaphore::new(config.sip.max_connections)),
        per_address: Arc::new(PerAddress::new(config.sip.max_connections_per_address)),
    };
    let tls = config.sip.tls.as_ref().map(|t| t.context.clone());
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
                // The default (~200 KB, ~170 datagrams) overflows when the runtime is busy
                // for ~30 ms at 5k messages/s, and every drop costs a 500 ms retransmission.
                // The kernel caps it at net.core.rmem_max.
                let _ = socket2::SockRef::from(&sock).set_recv_buffer_size(UDP_RECV_BUFFER);
                let addr = sock.local_addr().map_err(bind_err)?;
                let sock = Arc::new(sock);
                udp_sockets.push((addr, sock.clone()));
                tokio::spawn(udp_reader(sock, addr, max, tx.clone()));
                (Transport::Udp, addr)
            }
            ListenTransport::Tcp | ListenTransport::Tls => {
                let acceptor = match l.transport {
                    ListenTransport::Tls => match &tls {
                        Some(t) => Some(t.acceptor()),
                        None => return Err(StartError::NoTls(l.addr)),
                    },
                    _ => None,
                };
                let listener = TcpListener::bind(l.addr).await.map_err(bind_err)?;
                let addr = listener.local_addr().map_err(bind_err)?;
                let transport = if acceptor.is_some() {
                    Transport::Tls
                } else {
                    Transport::Tcp
                };
                tokio::spawn(stream_acceptor(
                    listener,
                    addr,
                    acceptor,
                    limits.clone(),
                    tx.clone(),
                    conn_ids.clone(),
                ));
                (transport, addr)
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
    let registrar = config
        .sip
        .register
        .as_ref()
        .and_then(|r| NextHop::parse(&r.registrar).ok())
        .map(|h| h.destination);
    let peers = Arc::new(std::sync::Mutex::new(Peers::default()));
    let core = SipCore::new(Timers::from(config.sip.timers), locals.clone(), max)
        .with_max_server_transactions(config.sip.max_server_transactions);
    let driver = Driver {
        core,
        udp: udp_sockets,
        conns: HashMap::new(),
        conn_by_key: HashMap::new(),
        conn_ids,
        pending: HashMap::default(),
        tu: tu_tx,
        tx: tx.clone(),
        cmd_tx: cmd_tx.clone(),
        connector: tls.map(|t| t.connector()),
        // Outbound connections have slots of their own: peers connecting in cannot use
        // them all up and leave stox unable to send.
        limits: StreamLimits {
            slots: Arc::new(Semaphore::new(config.sip.max_connections)),
            ..limits
        },
        limit_warned: None,
        peers: peers.clone(),
        busy: false,
        sent_on: HashMap::new(),
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
                auth: std::sync::Mutex::new(DigestClient::new(config.sip.credentials.clone())),
                policy: Policy::new(config.sip.allowed_destinations.clone()),
                registrar,
                peers,
            }),
        },
        tu_rx,
    ))
}

/// Which requests may reuse a stream connection: same transport and peer address, and for
/// TLS the same host name the peer's certificate was verified for (a connection accepted
/// from a peer has none, so it carries only the responses to its own requests and
/// requests to exactly that address over TCP).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct ConnKey {
    transport: Transport,
    remote: SocketAddr,
    server_name: Option<String>,
}

impl ConnKey {
    fn new(transport: Transport, remote: SocketAddr, server_name: Option<&str>) -> ConnKey {
        ConnKey {
            transport,
            remote,
            server_name: match transport {
                Transport::Tls => server_name.map(|n| n.to_ascii_lowercase()),
                _ => None,
            },
        }
    }
}

/// What TCP and TLS connections share: the limits, and the slots of `sip.max_connections`
/// (one set for accepted connections, one for outbound ones).
#[derive(Clone)]
struct StreamLimits {
    /// `sip.max_message_size`.
    max: usize,
    /// `sip.idle_timeout_ms`.
    idle: Duration,
    /// `sip.read_timeout_ms`: a message begun must be complete within this.
    read: Duration,
    /// `sip.write_timeout_ms`: a message the peer has not taken within this long ends
    /// the connection.
    write: Duration,
    slots: Arc<Semaphore>,
    /// Accepted connections per source address (`sip.max_connections_per_address`).
    per_address: Arc<PerAddress>,
}

/// Counts accepted connections per source IP address.
struct PerAddress {
    max: usize,
    open: std::sync::Mutex<HashMap<IpAddr, usize>>,
}

impl PerAddress {
    fn new(max: usize) -> Self {
        PerAddress {
            max,
            open: std::sync::Mutex::new(HashMap::new()),
        }
    }

    /// A slot for one more connection from `ip`, or `None` when it has `max` already.
    fn acquire(self: &Arc<Self>, ip: IpAddr) -> Option<AddressSlot> {
        // The counts hold no invariant a panic elsewhere could break half-way.
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let n = open.entry(ip).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(AddressSlot {
            counts: self.clone(),
            ip,
        })
    }
}

/// One connection's place in [`PerAddress`]; given back when dropped.
struct AddressSlot {
    counts: Arc<PerAddress>,
    ip: IpAddr,
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut open = self.counts.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = open.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

struct Conn {
    key: ConnKey,
    writer: mpsc::Sender<(Bytes, Option<u64>)>,
}

struct Driver {
    core: SipCore,
    udp: Vec<(SocketAddr, Arc<UdpSocket>)>,
    conns: HashMap<ConnId, Conn>,
    conn_by_key: HashMap<ConnKey, ConnId>,
    conn_ids: Arc<AtomicU64>,
    pending: HashMap<u64, Pending, foldhash::fast::RandomState>,
    tu: mpsc::Sender<IncomingRequest>,
    tx: mpsc::Sender<Input>,
    cmd_tx: mpsc::UnboundedSender<Input>,
    /// Outbound TLS, when `[sip.tls]` is configured.
    connector: Option<TlsConnector>,
    limits: StreamLimits,
    limit_warned: Option<Instant>,
    /// Sources of requests taken (crate::destination::Peers), shared with the handle.
    peers: Arc<std::sync::Mutex<Peers>>,
    /// Whether any transaction or awaited reply was held at the last check: its changes
    /// are logged, so a leak shows as a last "held again" with no "No SIP transactions".
    busy: bool,
    /// Client transactions whose request went out on each stream connection: a
    /// connection that ends before their answer fails them (RFC 3261 17.1.4) instead of
    /// leaving them to timer F.
    sent_on: HashMap<ConnId, Vec<u64>>,
}

impl Driver {
    async fn run(
        mut self,
        mut rx: mpsc::Receiver<Input>,
        mut cmds: mpsc::UnboundedReceiver<Input>,
    ) {
        // One timer entry, moved only when the deadline moves: a new Sleep per loop would
        // register and cancel a timer for every batch of input.
        let far = || Instant::now() + Duration::from_secs(86400);
        let sleep = tokio::time::sleep_until(far());
        tokio::pin!(sleep);
        let mut armed: Option<Instant> = None;
        loop {
            // After poll_timeout, which drops the wakeups of ended transactions.
            let deadline = self.core.poll_timeout().map(Instant::from_std);
            self.note_busy();
            if deadline != armed {
                sleep.as_mut().reset(deadline.unwrap_or_else(far));
                armed = deadline;
            }
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
                _ = &mut sleep, if armed.is_some() => {
                    armed = None;
                    self.core.handle_timeout(tokio::time::Instant::now().into_std());
                }
            }
            self.flush();
        }
    }

    /// Logs each change between holding nothing and holding something: rare under load,
    /// and what the fault tests count to see that every transaction ended.
    fn note_busy(&mut self) {
        let busy = self.core.held() + self.pending.len() > 0;
        if busy != self.busy {
            self.busy = busy;
            let stats = self.core.stats();
            if busy {
                tracing::debug!(
                    server = stats.server_transactions,
                    client = stats.client_transactions,
                    "SIP transactions held again."
                );
            } else {
                tracing::debug!("No SIP transactions held.");
            }
        }
    }

    fn input(&mut self, input: Input) {
        let now = tokio::time::Instant::now().into_std();
        match input {
            Input::Message { message, source } => self.core.handle_message(now, message, source),
            Input::Reject { reject, source } => {
                if let Reject::Drop { why, .. } = &reject {
                    tracing::debug!(remote = %source.remote, %why, "Dropped unusable SIP bytes.");
                }
                self.core.handle_reject(&reject, source)
            }
            Input::ConnOpened { id, key, writer } => {
                self.conn_by_key.insert(key.clone(), id);
                self.conns.insert(id, Conn { key, writer });
            }
            Input::ConnClosed { id } => {
                if let Some(c) = self.conns.remove(&id) {
                    if self.conn_by_key.get(&c.key) == Some(&id) {
                        self.conn_by_key.remove(&c.key);
                    }
                }
                // Those already answered (or ended) are left as they are by the core.
                for client in self.sent_on.remove(&id).unwrap_or_default() {
                    self.core.handle_transport_error(client);
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
        self.note_source(&source);
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

    fn note_source(&self, source: &Source) {
        self.peers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .note(source.remote.ip(), std::time::Instant::now());
    }

    fn deliver(&mut self, id: ServerTxId, request: Request, source: Source) {
        self.note_source(&source);
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
            self.core
                .respond(tokio::time::Instant::now().into_std(), id, overload);
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
                        let sent = match s.try_send_to(&t.bytes, t.to) {
                            // tokio tries only once it has seen the socket writable: just
                            // after start (no readiness event yet) it says WouldBlock without
                            // trying. Ask the kernel itself; WouldBlock then means full.
                            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                                socket2::SockRef::from(&**s).send_to(&t.bytes, &t.to.into())
                            }
                            r => r,
                        };
                        if let Err(e) = sent {
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
            Transport::Tcp | Transport::Tls => self.transmit_stream(t),
        }
    }

    /// On the connection the message belongs to (a response: the one its request came on),
    /// else on an open one to the same peer, else on a new one.
    fn transmit_stream(&mut self, t: Transmit) {
        let conn = match t.conn {
            Some(c) if self.conns.contains_key(&c) => Some(c),
            Some(_) if t.client.is_none() => {
                // The peer closed the connection its request came on; a reply cannot reach
                // its ephemeral port any other way.
                tracing::debug!(to = %t.to, transport = t.transport.via_name(), "Reply for a closed connection dropped.");
                return;
            }
            _ => None,
        };
        let key = ConnKey::new(t.transport, t.to, t.server_name.as_deref());
        let conn = conn
            .or_else(|| self.conn_by_key.get(&key).copied())
            .or_else(|| self.connect(key));
        let Some((id, c)) = conn.and_then(|id| self.conns.get(&id).map(|c| (id, c))) else {
            if let Some(client) = t.client {
                self.core.handle_transport_error(client);
            }
            return;
        };
        if c.writer.try_send((t.bytes, t.client)).is_err() {
            tracing::debug!(to = %t.to, "Connection is backed up or closed.");
            if let Some(client) = t.client {
                self.core.handle_transport_error(client);
            }
        } else if let Some(client) = t.client {
            let sent = self.sent_on.entry(id).or_default();
            // Bounded by the transactions alive: the ended are dropped as the list doubles.
            if sent.len() >= 64 && sent.len().is_power_of_two() {
                let core = &self.core;
                sent.retain(|c| core.has_client(*c));
            }
            sent.push(client);
        }
    }

    /// Opens an outbound TCP or TLS connection; writes queue until it is up. `None` when it
    /// cannot be tried at all (connection limit, no TLS config, no usable server name).
    fn connect(&mut self, key: ConnKey) -> Option<ConnId> {
        let remote = key.remote;
        let tls = match key.transport {
            Transport::Tls => {
                let name = key.server_name.as_deref().and_then(super::tls::server_name);
                match (self.connector.clone(), name) {
                    (Some(c), Some(n)) => Some((c, n)),
                    (None, _) => {
                        tracing::info!(%remote, "Cannot connect over TLS: no [sip.tls] configured.");
                        return None;
                    }
                    (_, None) => {
                        tracing::info!(%remote, name = ?key.server_name, "Cannot connect over TLS: the target has no usable host name.");
                        return None;
                    }
                }
            }
            _ => None,
        };
        let Ok(permit) = self.limits.slots.clone().try_acquire_owned() else {
            warn_limit(&mut self.limit_warned, &remote);
            return None;
        };
        let id = ConnId(self.conn_ids.fetch_add(1, Ordering::Relaxed));
        let (writer, writes) = mpsc::channel(1024);
        self.conn_by_key.insert(key.clone(), id);
        self.conns.insert(id, Conn { key, writer });
        let tx = self.tx.clone();
        let limits = self.limits.clone();
        let transport = if tls.is_some() {
            Transport::Tls
        } else {
            Transport::Tcp
        };
        tokio::spawn(async move {
            let stream =
                match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(remote)).await {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => return fail_conn(id, remote, &e.to_string(), writes, tx).await,
                    Err(_) => return fail_conn(id, remote, "connect timed out", writes, tx).await,
                };
            let _ = stream.set_nodelay(true);
            let ctx = ConnCtx {
                id,
                transport,
                remote,
                local: stream.local_addr().unwrap_or(remote),
                limits,
                _slot: permit,
                // Stox's own connections are not counted against the peer's address.
                _address_slot: None,
            };
            let Some((connector, name)) = tls else {
                return run_conn(stream, ctx, writes, tx).await;
            };
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, connector.connect(name, stream)).await {
                Ok(Ok(stream)) => run_conn(stream, ctx, writes, tx).await,
                Ok(Err(e)) => {
                    fail_conn(
                        id,
                        remote,
                        &format!("TLS handshake failed: {e}"),
                        writes,
                        tx,
                    )
                    .await
                }
                Err(_) => fail_conn(id, remote, "TLS handshake timed out", writes, tx).await,
            }
        });
        Some(id)
    }
}

/// Logs that the connection limit turned a connection away, at most every few seconds.
fn warn_limit(last: &mut Option<Instant>, remote: &SocketAddr) {
    let now = Instant::now();
    if last.is_none_or(|t| now.duration_since(t) >= LIMIT_WARNING_EVERY) {
        *last = Some(now);
        tracing::warn!(%remote, "sip.max_connections reached: connection refused (further refusals are logged at debug for a while).");
    } else {
        tracing::debug!(%remote, "sip.max_connections reached: connection refused.");
    }
}

/// Logs that `sip.max_connections_per_address` turned a connection away, at most every
/// few seconds.
fn warn_address_limit(last: &mut Option<Instant>, remote: &SocketAddr) {
    let now = Instant::now();
    if last.is_none_or(|t| now.duration_since(t) >= LIMIT_WARNING_EVERY) {
        *last = Some(now);
        tracing::warn!(%remote, "sip.max_connections_per_address reached: connection refused (further refusals are logged at debug for a while).");
    } else {
        tracing::debug!(%remote, "sip.max_connections_per_address reached: connection refused.");
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
    tracing::info!(%remote, %why, "Outbound connection failed.");
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

/// Accepts TCP connections, with a TLS handshake first when `tls` is set.
async fn stream_acceptor(
    listener: TcpListener,
    local: SocketAddr,
    tls: Option<TlsAcceptor>,
    limits: StreamLimits,
    tx: mpsc::Sender<Input>,
    ids: Arc<AtomicU64>,
) {
    let transport = if tls.is_some() {
        Transport::Tls
    } else {
        Transport::Tcp
    };
    let mut limit_warned = None;
    let mut address_warned = None;
    loop {
        let (stream, remote) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                // EMFILE and the like: back off instead of spinning.
                tracing::warn!(error = %e, transport = transport.via_name(), "Accept failed.");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = limits.slots.clone().try_acquire_owned() else {
            warn_limit(&mut limit_warned, &remote);
            drop(stream);
            continue;
        };
        let Some(address_slot) = limits.per_address.acquire(remote.ip()) else {
            warn_address_limit(&mut address_warned, &remote);
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let ctx = ConnCtx {
            id: ConnId(ids.fetch_add(1, Ordering::Relaxed)),
            transport,
            remote,
            local,
            limits: limits.clone(),
            _slot: slot,
            _address_slot: Some(address_slot),
        };
        let tx = tx.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let (writer, writes) = mpsc::channel(1024);
            let opened = Input::ConnOpened {
                id: ctx.id,
                key: ConnKey::new(transport, remote, None),
                writer,
            };
            match tls {
                None => {
                    if tx.send(opened).await.is_ok() {
                        run_conn(stream, ctx, writes, tx).await;
                    }
                }
                Some(acceptor) => {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(stream)) => {
                            if tx.send(opened).await.is_ok() {
                                run_conn(stream, ctx, writes, tx).await;
                            }
                        }
                        // Port scanners, plaintext SIP on the TLS port, bad certificates:
                        // nothing to answer, nothing for the operator to do.
                        Ok(Err(e)) => {
                            tracing::debug!(%remote, error = %e, "TLS handshake failed; connection closed.")
                        }
                        Err(_) => {
                            tracing::debug!(%remote, "TLS handshake timed out; connection closed.")
                        }
                    }
                }
            }
        });
    }
}

/// Writes and flushes `bytes`, failing when the peer has not taken them within `limit`.
async fn write_within<W: AsyncWrite + Unpin>(
    wr: &mut W,
    bytes: &[u8],
    limit: Duration,
) -> Result<(), String> {
    let write = async {
        wr.write_all(bytes).await?;
        wr.flush().await
    };
    match tokio::time::timeout(limit, write).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!(
            "no progress within sip.write_timeout_ms ({} ms)",
            limit.as_millis()
        )),
    }
}

/// When a stream buffer is worth framing again after [`Reject::Incomplete`]: once the new
/// bytes may end the headers, or once the body can be complete. A message trickled in a
/// byte per read then costs linear work, not a full parse per byte.
#[derive(Debug, Default)]
struct Reassembly {
    /// How far the buffer has been searched for the end of the headers.
    scanned: usize,
    /// The message's whole length, once its headers are in.
    want: Option<usize>,
}

impl Reassembly {
    fn worth_parsing(&mut self, buf: &[u8], max: usize) -> bool {
        if let Some(want) = self.want {
            return buf.len() >= want;
        }
        if buf.len() > max {
            return true; // parse rejects it
        }
        // The headers end at an empty line (as `message::parse` lexes it: LF, or CR LF).
        let from = self.scanned.saturating_sub(2);
        let ended = headers_end_in(&buf[from..]);
        self.scanned = buf.len();
        ended
    }

    fn incomplete(&mut self, buf: &[u8], max: usize) {
        // Headers in: wait for the rest of the body. Otherwise keep scanning new bytes.
        self.want = message::stream_frame_len(buf, max).map(|n| n.max(buf.len() + 1));
    }
}

/// Whether `bytes` hold an empty line after a line end: "\n\n" or "\n\r\n".
fn headers_end_in(bytes: &[u8]) -> bool {
    bytes.windows(2).enumerate().any(|(i, w)| {
        w[0] == b'\n' && (w[1] == b'\n' || (w[1] == b'\r' && bytes.get(i + 2) == Some(&b'\n')))
    })
}

/// One stream connection: who it is and the slot it holds until it ends.
struct ConnCtx {
    id: ConnId,
    transport: Transport,
    remote: SocketAddr,
    local: SocketAddr,
    limits: StreamLimits,
    _slot: OwnedSemaphorePermit,
    /// Accepted connections only: the place in `sip.max_connections_per_address`.
    _address_slot: Option<AddressSlot>,
}

/// One TCP or TLS connection: frames what it reads by Content-Length, writes what it is
/// given, answers CRLF pings, and closes after `sip.idle_timeout_ms` without traffic.
async fn run_conn<S>(
    stream: S,
    ctx: ConnCtx,
    mut writes: mpsc::Receiver<(Bytes, Option<u64>)>,
    tx: mpsc::Sender<Input>,
) where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let ConnCtx {
        id,
        transport,
        remote,
        local,
        limits,
        _slot,
        _address_slot,
    } = ctx;
    let (mut rd, mut wr) = tokio::io::split(stream);
    let source = Source {
        transport,
        remote,
        local,
        conn: Some(id),
    };
    // Traffic either way keeps the connection: the time of the last read or write.
    let epoch = Instant::now();
    let activity = Arc::new(AtomicU64::new(0));
    let touch = move |a: &AtomicU64| a.store(epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    let writer_activity = activity.clone();
    let writer_tx = tx.clone();
    let (pong_tx, mut pong_rx) = mpsc::channel::<()>(4);
    // Fired (or dropped) when the writer gives up, so the reader ends too: a peer that
    // stopped reading must not keep the connection and its descriptor by still sending.
    let (write_failed_tx, mut write_failed) = oneshot::channel::<()>();
    let write_timeout = limits.write;
    let writer = tokio::spawn(async move {
        let mut pongs = true;
        loop {
            tokio::select! {
                w = writes.recv() => {
                    let Some((bytes, client)) = w else { break };
                    if let Err(why) = write_within(&mut wr, &bytes, write_timeout).await {
                        tracing::debug!(%remote, transport = transport.via_name(), %why, "Connection write failed; closing the connection.");
                        if let Some(client) = client {
                            let _ = writer_tx.send(Input::TransportError { client }).await;
                        }
                        break;
                    }
                }
                p = pong_rx.recv(), if pongs => {
                    // The reader has ended: keep writing until the driver drops its sender,
                    // so that answers it queued (a 400 or 513 for what broke the framing)
                    // still go out.
                    if p.is_none() {
                        pongs = false;
                        continue;
                    }
                    if let Err(why) = write_within(&mut wr, b"\r\n", write_timeout).await {
                        tracing::debug!(%remote, transport = transport.via_name(), %why, "Connection write failed; closing the connection.");
                        break;
                    }
                }
            }
            touch(&writer_activity);
        }
        let _ = write_failed_tx.send(());
        // Anything still queued cannot go out: fail its transactions now.
        writes.close();
        while let Some((_, client)) = writes.recv().await {
            if let Some(client) = client {
                let _ = writer_tx.send(Input::TransportError { client }).await;
            }
        }
        // A TLS close_notify is a write too: it may not block on a peer that never reads.
        let _ = tokio::time::timeout(write_timeout, wr.shutdown()).await;
    });

    let kind = transport.via_name();
    let mut buf = BytesMut::with_capacity(8192);
    let mut pending = Reassembly::default();
    // When the first byte of the message now in `buf` arrived: all of it must follow
    // within `sip.read_timeout_ms`, however slowly it trickles (slowloris).
    let mut begun: Option<Instant> = None;
    'read: loop {
        let idle_since = epoch + Duration::from_millis(activity.load(Ordering::Relaxed));
        let read_by = begun.map(|t| t + limits.read);
        tokio::select! {
            r = rd.read_buf(&mut buf) => match r {
                Ok(0) => break,
                Ok(_) => {
                    touch(&activity);
                    if begun.is_none() {
                        begun = Some(Instant::now());
                    }
                }
                Err(e) => {
                    tracing::debug!(%remote, transport = kind, error = %e, "Connection read failed.");
                    break;
                }
            },
            _ = tokio::time::sleep_until(read_by.unwrap_or(idle_since)), if read_by.is_some() => {
                tracing::debug!(%remote, transport = kind, limit_ms = limits.read.as_millis() as u64, "A message did not arrive whole within sip.read_timeout_ms; closing the connection.");
                break;
            }
            _ = &mut write_failed => break,
            _ = tokio::time::sleep_until(idle_since + limits.idle) => {
                if idle_since == epoch + Duration::from_millis(activity.load(Ordering::Relaxed)) {
                    tracing::debug!(%remote, transport = kind, "Closing an idle connection.");
                    break;
                }
                continue; // written to meanwhile
            }
        }
        loop {
            let skip = message::leading_crlf(&buf);
            if skip > 0 {
                // RFC 5626 4.4.1: a double-CRLF ping gets a single-CRLF pong.
                if buf[..skip].windows(4).any(|w| w == b"\r\n\r\n") {
                    let _ = pong_tx.try_send(());
                }
                let _ = buf.split_to(skip);
                pending = Reassembly::default();
            }
            if buf.is_empty() {
                begun = None;
                break;
            }
            if !pending.worth_parsing(&buf, limits.max) {
                break;
            }
            match message::parse(&buf, Framing::Stream, limits.max) {
                Ok(p) => {
                    let _ = buf.split_to(p.len);
                    pending = Reassembly::default();
                    // What follows in the buffer is the start of the next message.
                    begun = Some(Instant::now());
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
                Err(Reject::Incomplete) => {
                    pending.incomplete(&buf, limits.max);
                    break;
                }
                Err(reject) => {
                    let len = match &reject {
                        Reject::Answer { len, .. } | Reject::Drop { len, .. } => *len,
                        Reject::Incomplete => None,
                    };
                    let framed = match len {
                        Some(len) if len <= buf.len() => {
                            let _ = buf.split_to(len);
                            pending = Reassembly::default();
                            begun = Some(Instant::now());
                            true
                        }
                        _ => false,
                    };
                    if !framed {
                        // Framing is lost: the stream cannot be read any further. A request
                        // over the size limit is the operator's business (513 answered);
                        // garbage is not.
                        match &reject {
                            Reject::Answer { status: 513, .. } => {
                                tracing::info!(%remote, transport = kind, limit = limits.max, "Request over sip.max_message_size: answered 513, closing the connection.")
                            }
                            Reject::Answer { status, reason, .. } => {
                                tracing::debug!(%remote, transport = kind, %status, %reason, "Unframeable request answered; closing the connection.")
                            }
                            Reject::Drop { why, .. } => {
                                tracing::debug!(%remote, transport = kind, %why, "Unframeable bytes; closing the connection.")
                            }
                            Reject::Incomplete => {}
                        }
                    }
                    let _ = tx.send(Input::Reject { reject, source }).await;
                    if !framed {
                        break 'read;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_connections_are_reused_only_for_the_name_they_were_verified_for() {
        let addr: SocketAddr = "192.0.2.1:5061".parse().unwrap();
        let a = ConnKey::new(Transport::Tls, addr, Some("Proxy.Example.NET"));
        assert_eq!(
            a,
            ConnKey::new(Transport::Tls, addr, Some("proxy.example.net"))
        );
        assert_ne!(
            a,
            ConnKey::new(Transport::Tls, addr, Some("other.example.net"))
        );
        // An accepted connection carries no verified name.
        assert_ne!(a, ConnKey::new(Transport::Tls, addr, None));
        assert_ne!(
            a,
            ConnKey::new(Transport::Tcp, addr, Some("proxy.example.net"))
        );
        // TCP reuse is by address alone.
        assert_eq!(
            ConnKey::new(Transport::Tcp, addr, Some("a.example")),
            ConnKey::new(Transport::Tcp, addr, None)
        );
    }

    /// Feeds `text` in pieces of `step` bytes; returns how often it was worth parsing and
    /// whether the last piece was.
    fn feed(text: &[u8], step: usize) -> (usize, bool) {
        let mut r = Reassembly::default();
        let mut tries = 0;
        let mut last = false;
        for end in (step..text.len() + step).step_by(step) {
            let buf = &text[..end.min(text.len())];
            last = r.worth_parsing(buf, 65535);
            if last {
                tries += 1;
                match message::parse(buf, Framing::Stream, 65535) {
                    Err(Reject::Incomplete) => r.incomplete(buf, 65535),
                    Ok(_) => {}
                    Err(e) => panic!("{e:?}"),
                }
            }
        }
        (tries, last)
    }

    #[test]
    fn a_trickled_message_is_parsed_when_its_headers_end_and_when_its_body_is_complete() {
        let long = format!(
            "MESSAGE sip:juliet@example.com SIP/2.0\r\n\
             Via: SIP/2.0/TCP 192.0.2.1:5060;branch=z9hG4bKx\r\n\
             From: <sip:romeo@example.net>;tag=a\r\nTo: <sip:juliet@example.com>\r\n\
             Call-ID: c\r\nCSeq: 1 MESSAGE\r\nMax-Forwards: 70\r\n\
             Subject: {}\r\nContent-Length: 300\r\n\r\n{}",
            "s".repeat(2000),
            "b".repeat(300)
        );
        assert_eq!(feed(long.as_bytes(), 1), (2, true));
        assert_eq!(feed(long.as_bytes(), 7), (2, true));
        assert_eq!(feed(long.as_bytes(), long.len()), (1, true));
        // Bare LF line ends, and an empty body: one parse, at the empty line.
        let lf = "OPTIONS sip:juliet@example.com SIP/2.0\nVia: SIP/2.0/TCP h;branch=z9hG4bKy\n\
                  From: <sip:r@x>;tag=a\nTo: <sip:j@y>\nCall-ID: d\nCSeq: 1 OPTIONS\n\
                  Max-Forwards: 70\nContent-Length: 0\n\n";
        assert_eq!(feed(lf.as_bytes(), 1), (1, true));
    }

    #[test]
    fn headers_end_at_an_empty_line() {
        assert!(headers_end_in(b"a\r\n\r\n"));
        assert!(headers_end_in(b"a\n\n"));
        assert!(headers_end_in(b"\n\r\n"));
        assert!(!headers_end_in(b"a\r\nb\r\n"));
        assert!(!headers_end_in(b"a\r\n\r"));
    }

    #[test]
    fn sent_by_gets_the_listener_port_when_advertise_has_none() {
        assert_eq!(
            sent_by_with_port("gw.example.com", 5061),
            "gw.example.com:5061"
        );
        assert_eq!(
            sent_by_with_port("gw.example.com:5071", 5061),
            "gw.example.com:5071"
        );
        assert_eq!(sent_by_with_port("::1", 5061), "[::1]:5061");
        assert_eq!(sent_by_with_port("[::1]:5071", 5061), "[::1]:5071");
    }
}
