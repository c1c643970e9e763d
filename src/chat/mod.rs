//! Chat sessions (RFC 7573): the sans-IO [`core`] and its tokio edge, which owns the MSRP
//! listener, runs INVITE transactions and MSRP connections, and feeds their results back.
//!
//! ```text
//!   gateway ─ ChatHandle::xmpp/sip ─> run loop ─ ChatCore ─ poll_action ─> SipHandle (INVITE, ACK, BYE)
//!                                        ^                             ─> msrp worker per session
//!                                        └── Internal (responses, MSRP up/events) ─> XmppLink / Im (pager)
//! ```

pub mod core;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::Instrument;
use xmpp_parsers::message::Message;

use self::core::{Action, ChatCore, ChatId, ChatSettings, UNDELIVERED};
use crate::address::AddressMap;
use crate::config::Config;
use crate::im::Im;
use crate::msrp::conn::{self, Answerer, MsrpListener, SessionHandle};
use crate::msrp::frame::MessageId;
use crate::msrp::session::{Event as MsrpEvent, Outgoing};
use crate::sip::endpoint::{ClientEvent, IncomingRequest, SipError, SipHandle};
use crate::xmpp::link::{Undelivered, XmppLink};

#[allow(clippy::large_enum_variant)] // one per stanza or request, short-lived
pub enum Input {
    Xmpp(Message),
    Sip(IncomingRequest),
}

/// The chat task's handle: cheap to clone, never blocks the caller.
#[derive(Clone)]
pub struct ChatHandle {
    tx: mpsc::Sender<Input>,
}

impl ChatHandle {
    /// Queues a chat message for the chat task. A message that cannot be queued (the
    /// queue is full, or the task is gone) is not dropped: the returned stanza bounces it
    /// to its sender with `resource-constraint` (type wait), for the caller to send.
    #[must_use = "a refused message must be bounced to its sender"]
    pub fn xmpp(&self, m: Message) -> Option<Message> {
        match self.tx.try_send(Input::Xmpp(m)) {
            Ok(()) => None,
            Err(
                mpsc::error::TrySendError::Full(Input::Xmpp(m))
                | mpsc::error::TrySendError::Closed(Input::Xmpp(m)),
            ) => {
                tracing::warn!(
                    "Chat queue full; a chat message was bounced with resource-constraint."
                );
                queue_full_bounce(&m)
            }
            Err(_) => None,
        }
    }

    pub fn sip(&self, incoming: IncomingRequest) {
        if let Err(
            mpsc::error::TrySendError::Full(Input::Sip(i))
            | mpsc::error::TrySendError::Closed(Input::Sip(i)),
        ) = self.tx.try_send(Input::Sip(incoming))
        {
            i.refuse_busy();
        }
    }
}

/// The error stanza for a chat message the chat queue could not take (RFC 6120 8.3.3.18:
/// resource-constraint, type wait: the sender may try again later). None for an error
/// stanza (never answered) or one without addresses.
fn queue_full_bounce(m: &Message) -> Option<Message> {
    if m.type_ == xmpp_parsers::message::MessageType::Error {
        return None;
    }
    self::core::bounce(
        m,
        crate::mapping::error::stanza_error(
            xmpp_parsers::stanza_error::DefinedCondition::ResourceConstraint,
            "the gateway's chat queue is full; try again later",
        ),
    )
}

enum Internal {
    InviteResponse(ChatId, rsipstack::sip::Response),
    InviteFailed(ChatId, bool),
    InviteEnded(ChatId),
    MsrpUp(ChatId, u64),
    MsrpFailed(ChatId, u64),
    MsrpEvent(ChatId, u64, MsrpEvent),
}

enum InviteCmd {
    Cancel,
    Ack(Box<rsipstack::sip::Request>),
}

/// Boxed payloads: a tokio channel allocates 32 slots of its item type when it is made,
/// and each session has one of these (unboxed, 7.7 KB per session).
enum MsrpCmd {
    Send(Box<Outgoing>),
    /// Write this stanza to XMPP, then answer the held MSRP message.
    Deliver(Box<Delivery>),
    Close,
}

/// A complete incoming MSRP message and its stanza (`None`: nothing to write).
type Delivery = (MessageId, Option<Message>);

pub fn settings(
    config: &Config,
    contact_host: String,
    msrp: SocketAddr,
    msrps: Option<SocketAddr>,
) -> ChatSettings {
    let c = &config.chat;
    let secure_hop = |uri: &str| {
        let u = uri.trim().to_ascii_lowercase();
        u.starts_with("sips:") || u.contains(";transport=tls")
    };
    let mut tls_domains: Vec<String> = config
        .sip
        .routes
        .iter()
        .filter(|(_, uri)| secure_hop(uri))
        .map(|(d, _)| d.clone())
        .collect();
    if config.sip.outbound_proxy.as_deref().is_some_and(secure_hop) {
        tls_domains.push("*".into());
    }
    ChatSettings {
        max_sessions: c.max_sessions,
        max_per_user: c.max_sessions_per_user,
        idle_timeout: Duration::from_millis(c.idle_timeout_ms),
        setup_timeout: Duration::from_millis(c.setup_timeout_ms),
        fallback_for: Duration::from_millis(c.fallback_ms),
        max_message_size: c.max_message_size,
        chunk_size: c.chunk_size,
        contact_host,
        msrp_host: config
            .msrp
            .advertise
            .clone()
            .unwrap_or_else(|| match msrp.ip() {
                std::net::IpAddr::V6(a) => format!("[{a}]"),
                a => a.to_string(),
            }),
        msrp_port: msrp.port(),
        msrp_ip: config
            .msrp
            .advertise
            .as_deref()
            .and_then(|a| a.trim_matches(['[', ']']).parse().ok())
            .unwrap_or(msrp.ip()),
        msrps_port: msrps.map(|a| a.port()),
        prefer_tls: config.msrp.prefer_tls,
        tls_domains,
        answer: c.answer,
    }
}

/// Binds `[msrp] listen` and starts the chat task; `None` when chat sessions are off.
pub async fn start(
    config: &Config,
    addresses: Arc<AddressMap>,
    sip: SipHandle,
    xmpp: XmppLink,
    im: Arc<Im>,
    availability: crate::presence::Availability,
) -> std::io::Result<Option<ChatHandle>> {
    let Some(addr) = config.msrp.listen else {
        return Ok(None);
    };
    let limits = conn::ListenerLimits {
        max_connections: config.msrp.max_connections,
        max_connections_per_address: config.msrp.max_connections_per_address,
        first_request_timeout: Duration::from_millis(config.msrp.first_request_timeout_ms),
        ..conn::ListenerLimits::default()
    };
    let listener = MsrpListener::bind_with(addr, None, limits).await?;
    let local = listener.local_addr();
    tracing::info!(%local, "MSRP listening.");
    let tls = config.sip.tls.as_ref().map(|t| t.context.clone());
    let tls_listener = match (config.msrp.tls_listen, &tls) {
        (Some(a), Some(ctx)) => {
            let l = MsrpListener::bind_with(a, Some(ctx.acceptor()), limits).await?;
            tracing::info!(local = %l.local_addr(), "MSRP over TLS (msrps) listening.");
            Some(l)
        }
        _ => None,
    };
    crate::xmpp::service::enable_receipts();
    let contact = sip.contact_host().unwrap_or("127.0.0.1").to_string();
    let msrps = tls_listener.as_ref().map(MsrpListener::local_addr);
    let mut core = ChatCore::new(settings(config, contact, local, msrps), addresses);
    core.set_availability(availability);
    let (tx, rx) = mpsc::channel(8192);
    tokio::spawn(
        Edge {
            core,
            listener,
            tls_listener,
            connector: tls.map(|t| t.connector()),
            sip,
            xmpp,
            im,
            invites: HashMap::new(),
            msrp: HashMap::new(),
            pagers: HashMap::new(),
            generation: 0,
        }
        .run(rx),
    );
    Ok(Some(ChatHandle { tx }))
}

fn now() -> std::time::Instant {
    Instant::now().into_std()
}

struct Edge {
    core: ChatCore,
    listener: MsrpListener,
    /// The msrps listener (`[msrp] tls_listen`).
    tls_listener: Option<MsrpListener>,
    /// Outbound msrps: the client configuration of `[sip.tls]`.
    connector: Option<tokio_rustls::TlsConnector>,
    sip: SipHandle,
    xmpp: XmppLink,
    im: Arc<Im>,
    invites: HashMap<ChatId, mpsc::UnboundedSender<InviteCmd>>,
    /// The MSRP worker of each session, with its generation (a reconnect replaces it).
    msrp: HashMap<ChatId, (u64, mpsc::UnboundedSender<MsrpCmd>)>,
    /// One sequential sender per conversation in pager mode, so nothing is reordered.
    pagers: HashMap<String, mpsc::UnboundedSender<Message>>,
    generation: u64,
}

impl Edge {
    async fn run(mut self, mut rx: mpsc::Receiver<Input>) {
        let (itx, mut irx) = mpsc::unbounded_channel::<Internal>();
        loop {
            self.drain(&itx);
            let deadline = self.core.poll_timeout().map(Instant::from_std);
            tokio::select! {
                input = rx.recv() => {
                    let Some(input) = input else { return };
                    match input {
                        Input::Xmpp(m) => self.core.handle_xmpp(now(), m),
                        Input::Sip(i) => {
                            let call_id = crate::sip::dialog::header_value(&i.request.headers, "Call-ID").unwrap_or_default();
                            let span = tracing::info_span!("chat_sip", %call_id, method = %i.request.method);
                            let _g = span.enter();
                            // A new session while the XMPP link is down could only
                            // answer 200 for messages it cannot hand on: refuse it, as a
                            // MESSAGE would be (the peer retries or falls back).
                            let new_invite = i.request.method == rsipstack::sip::Method::Invite
                                && crate::sip::dialog::incoming_key(&i.request).is_none();
                            if new_invite && !self.xmpp.is_up() {
                                tracing::info!("XMPP link down; refusing a new chat session.");
                                i.refuse_busy();
                                continue;
                            }
                            let response = self.core.handle_sip_request(now(), &i.request);
                            // The MSRP expectation is registered before the 200 goes out.
                            self.drain(&itx);
                            if let Some(r) = response {
                                i.responder.respond(r);
                            }
                        }
                    }
                }
                Some(ev) = irx.recv() => self.internal(ev),
                _ = sleep_until(deadline), if deadline.is_some() => self.core.handle_timeout(now()),
            }
        }
    }

    fn internal(&mut self, ev: Internal) {
        let current =
            |s: &Self, id: ChatId, gen: u64| s.msrp.get(&id).is_some_and(|(g, _)| *g == gen);
        match ev {
            Internal::InviteResponse(id, r) => self.core.handle_invite_response(now(), id, &r),
            Internal::InviteFailed(id, timeout) => {
                self.invites.remove(&id);
                self.core.handle_invite_failed(now(), id, timeout)
            }
            Internal::InviteEnded(id) => {
                self.invites.remove(&id);
                self.core.handle_invite_ended(id)
            }
            Internal::MsrpUp(id, gen) if current(self, id, gen) => {
                self.core.handle_msrp_up(now(), id)
            }
            Internal::MsrpFailed(id, gen) if current(self, id, gen) => {
                self.msrp.remove(&id);
                self.core.handle_msrp_failed(now(), id)
            }
            Internal::MsrpEvent(id, gen, e) if current(self, id, gen) => {
                self.core.handle_msrp_event(now(), id, e)
            }
            _ => {}
        }
    }

    fn span(&self, id: ChatId) -> tracing::Span {
        let (call_id, msrp_session) = self.core.ids(id).unwrap_or_default();
        tracing::info_span!("chat", %call_id, %msrp_session)
    }

    fn drain(&mut self, itx: &mpsc::UnboundedSender<Internal>) {
        while let Some(action) = self.core.poll_action() {
            match action {
                Action::Stanza(m) => self.xmpp.send(m),
                Action::Deliver {
                    id,
                    message_id,
                    stanza,
                } => {
                    // No worker: the session is gone and its connection with it.
                    if let Some((_, c)) = self.msrp.get(&id) {
                        let _ = c.send(MsrpCmd::Deliver(Box::new((message_id, stanza))));
                    }
                }
                Action::Pager { key, message } => self.pager(key, message),
                Action::Invite { id, request } => {
                    let (ctx, crx) = mpsc::unbounded_channel();
                    self.invites.insert(id, ctx);
                    let span = self.span(id);
                    tokio::spawn(
                        invite(self.sip.clone(), id, request, crx, itx.clone()).instrument(span),
                    );
                }
                Action::Cancel { id } => {
                    if let Some(c) = self.invites.get(&id) {
                        let _ = c.send(InviteCmd::Cancel);
                    }
                }
                Action::Ack { id, request } => {
                    if let Some(c) = self.invites.get(&id) {
                        let _ = c.send(InviteCmd::Ack(Box::new(request)));
                    }
                }
                Action::Bye { id, request } => {
                    let sip = self.sip.clone();
                    // The session is gone from the core by now: its ids come with the BYE.
                    let call_id = crate::sip::dialog::header_value(&request.headers, "Call-ID")
                        .unwrap_or_default();
                    let span = tracing::info_span!("chat_bye", %call_id, chat = id);
                    tokio::spawn(
                        async move {
                            match sip.send_in_dialog(request).await {
                                Ok(r) => {
                                    tracing::debug!(status = r.status_code.code(), "BYE answered.")
                                }
                                Err(e) => tracing::debug!(error = %e, "BYE failed."),
                            }
                        }
                        .instrument(span),
                    );
                }
                Action::MsrpExpect { id, session } => {
                    let session_id = session.local().session_id.clone().unwrap_or_default();
                    let listener = if session.local().secure {
                        self.tls_listener.as_ref()
                    } else {
                        Some(&self.listener)
                    };
                    let expected = match listener {
                        Some(l) => l.expect(session),
                        None => Err(conn::ConnError::Closed),
                    };
                    match expected {
                        Ok(pending) => {
                            self.worker(
                                id,
                                itx,
                                session_id,
                                async move { pending.connected().await },
                            )
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "MSRP session not registered.");
                            self.core.handle_msrp_failed(now(), id);
                        }
                    }
                }
                Action::MsrpConnect {
                    id,
                    session,
                    host,
                    port,
                    tls,
                } => {
                    let session_id = session.local().session_id.clone().unwrap_or_default();
                    let connector = self.connector.clone();
                    let sip = self.sip.clone();
                    // issue 11 item 5: a=path is the SIP peer's choice; the destination
                    // policy (or the peer's own address) decides where stox connects.
                    let vet = move |to| sip.msrp_destination(to);
                    self.worker(id, itx, session_id, async move {
                        match (tls, connector) {
                            (false, _) => {
                                conn::connect_vetted(&host, port, session, None, vet).await
                            }
                            (true, Some(c)) => {
                                conn::connect_vetted(&host, port, session, Some(c), vet).await
                            }
                            (true, None) => Err(conn::ConnError::Closed),
                        }
                    });
                }
                Action::MsrpSend { id, message } => {
                    if let Some((_, c)) = self.msrp.get(&id) {
                        let _ = c.send(MsrpCmd::Send(Box::new(message)));
                    }
                }
                Action::MsrpClose { id } => {
                    if let Some((_, c)) = self.msrp.remove(&id) {
                        let _ = c.send(MsrpCmd::Close);
                    }
                }
                Action::MsrpDrop { id } => {
                    self.msrp.remove(&id);
                }
            }
        }
    }

    fn worker<F>(
        &mut self,
        id: ChatId,
        itx: &mpsc::UnboundedSender<Internal>,
        msrp_session: String,
        setup: F,
    ) where
        F: std::future::Future<Output = Result<SessionHandle, conn::ConnError>> + Send + 'static,
    {
        self.generation += 1;
        let gen = self.generation;
        let (ctx, crx) = mpsc::unbounded_channel();
        self.msrp.insert(id, (gen, ctx));
        let (call_id, _) = self.core.ids(id).unwrap_or_default();
        let span = tracing::info_span!("chat_msrp", %call_id, %msrp_session);
        let xmpp = self.xmpp.clone();
        tokio::spawn(msrp_worker(id, gen, setup, crx, itx.clone(), xmpp).instrument(span));
    }

    fn pager(&mut self, key: String, message: Message) {
        let message = match self.pagers.get(&key) {
            Some(tx) => match tx.send(message) {
                Ok(()) => return,
                Err(mpsc::error::SendError(m)) => m,
            },
            None => message,
        };
        let (tx, mut rx) = mpsc::unbounded_channel::<Message>();
        let _ = tx.send(message);
        self.pagers.insert(key, tx);
        self.pagers.retain(|_, t| !t.is_closed());
        let im = self.im.clone();
        tokio::spawn(async move {
            // One after the other; the worker ends after a quiet minute.
            while let Ok(Some(m)) = tokio::time::timeout(Duration::from_secs(60), rx.recv()).await {
                im.clone().from_xmpp(m).await;
            }
        });
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

async fn invite(
    sip: SipHandle,
    id: ChatId,
    request: rsipstack::sip::Request,
    mut commands: mpsc::UnboundedReceiver<InviteCmd>,
    itx: mpsc::UnboundedSender<Internal>,
) {
    let (mut client, first) = match sip.invite(request, false).await {
        Ok(x) => x,
        Err(e) => {
            tracing::info!(error = %e, "INVITE failed.");
            let _ = itx.send(Internal::InviteFailed(id, matches!(e, SipError::Timeout)));
            return;
        }
    };
    let _ = itx.send(Internal::InviteResponse(id, first));
    let mut cancelled = false;
    loop {
        tokio::select! {
            ev = client.events.recv() => match ev {
                Some(ClientEvent::Response(r)) => { let _ = itx.send(Internal::InviteResponse(id, r)); }
                Some(ClientEvent::Failed(e)) => {
                    tracing::info!(error = %e, "INVITE failed.");
                    let _ = itx.send(Internal::InviteFailed(id, matches!(e, SipError::Timeout)));
                    break;
                }
                None => {
                    let _ = itx.send(Internal::InviteEnded(id));
                    break;
                }
            },
            cmd = commands.recv(), if !cancelled => match cmd {
                Some(InviteCmd::Cancel) => client.cancel(),
                Some(InviteCmd::Ack(ack)) => sip.ack(*ack, &client.target).await,
                None => cancelled = true,
            },
        }
    }
    // ACKs for 2xx that came with the last events.
    while let Ok(InviteCmd::Ack(ack)) = commands.try_recv() {
        sip.ack(*ack, &client.target).await;
    }
}

async fn msrp_worker<F>(
    id: ChatId,
    gen: u64,
    setup: F,
    mut commands: mpsc::UnboundedReceiver<MsrpCmd>,
    itx: mpsc::UnboundedSender<Internal>,
    xmpp: XmppLink,
) where
    F: std::future::Future<Output = Result<SessionHandle, conn::ConnError>>,
{
    // Dropped by the core (or replaced): stop waiting; dropping the future unregisters.
    let handle = tokio::select! {
        r = setup => r,
        _ = wait_closed(&mut commands) => return,
    };
    let mut handle = match handle {
        Ok(h) => h,
        Err(e) => {
            tracing::info!(error = %e, "MSRP connection not set up.");
            let _ = itx.send(Internal::MsrpFailed(id, gen));
            return;
        }
    };
    tracing::debug!("MSRP connection up.");
    let _ = itx.send(Internal::MsrpUp(id, gen));
    let (dtx, drx) = mpsc::unbounded_channel();
    tokio::spawn(deliverer(xmpp, handle.answerer(), drx).in_current_span());
    loop {
        tokio::select! {
            cmd = commands.recv() => match cmd {
                Some(MsrpCmd::Send(m)) => {
                    if let Err(e) = handle.send(*m).await {
                        tracing::info!(error = %e, "MSRP send refused.");
                    }
                }
                Some(MsrpCmd::Deliver(d)) => {
                    let _ = dtx.send(d);
                }
                Some(MsrpCmd::Close) | None => {
                    // The deliverer finishes what it has; the connection waits for its
                    // answers (bounded by the deferral timeout).
                    drop(dtx);
                    let _ = tokio::time::timeout(Duration::from_secs(30), handle.close()).await;
                    return;
                }
            },
            ev = handle.next_event() => match ev {
                Some(e) => { let _ = itx.send(Internal::MsrpEvent(id, gen, e)); }
                None => {
                    tracing::info!("MSRP connection ended.");
                    let _ = itx.send(Internal::MsrpFailed(id, gen));
                    return;
                }
            },
        }
    }
}

/// Writes a session's incoming messages to XMPP one after the other (so they keep their
/// order) and answers each held MSRP message after its write: 200 when the server has
/// it, [`UNDELIVERED`] when the link is down or the write failed, the mapped refusal when
/// the server returned an error for the stanza.
async fn deliverer(
    xmpp: XmppLink,
    answerer: Answerer,
    mut rx: mpsc::UnboundedReceiver<Box<Delivery>>,
) {
    while let Some(d) = rx.recv().await {
        let (message_id, stanza) = *d;
        let delivered = match stanza {
            None => Ok(()),
            Some(m) => xmpp.deliver(m).await,
        };
        match delivered {
            Ok(()) => answerer.answer(message_id, 200, "OK").await,
            Err(Undelivered::Refused(error)) => {
                let (code, comment) = self::core::msrp_answer_for_xmpp(&error);
                tracing::info!(%message_id, code, %comment, "The XMPP server refused the MSRP message.");
                answerer.answer(message_id, code, &comment).await;
            }
            Err(Undelivered::LinkDown) => {
                tracing::info!(%message_id, "XMPP link down; the MSRP message is refused.");
                answerer
                    .answer(message_id, UNDELIVERED.0, UNDELIVERED.1)
                    .await;
            }
        }
    }
}

/// Resolves when the channel is closed, keeping any commands sent before the session is up.
async fn wait_closed(commands: &mut mpsc::UnboundedReceiver<MsrpCmd>) {
    // Commands only come once the core saw the session up, so none is lost here; a
    // Close before that is as good as a drop.
    while let Some(cmd) = commands.recv().await {
        if matches!(cmd, MsrpCmd::Close) {
            return;
        }
    }
}

#[cfg(test)]
mod queue_tests {
    use super::*;
    use std::str::FromStr;
    use xmpp_parsers::jid::Jid;
    use xmpp_parsers::message::MessageType;
    use xmpp_parsers::stanza_error::{DefinedCondition, ErrorType, StanzaError};

    fn chat(from: &str, to: &str) -> Message {
        let mut m = Message::new(Some(Jid::from_str(to).unwrap()));
        m.from = Some(Jid::from_str(from).unwrap());
        m.type_ = MessageType::Chat;
        m.id = Some(xmpp_parsers::message::Id("m1".into()));
        m
    }

    #[tokio::test]
    async fn a_full_chat_queue_bounces_with_resource_constraint_wait() {
        let (tx, mut rx) = mpsc::channel(1);
        let h = ChatHandle { tx };
        let first = chat(
            "romeo@example.net/a",
            "juliet\\40example.com@sip.example.net",
        );
        assert!(h.xmpp(first).is_none(), "the first fits");
        let second = chat(
            "romeo@example.net/a",
            "juliet\\40example.com@sip.example.net",
        );
        let b = h
            .xmpp(second.clone())
            .expect("the second is bounced, not dropped");
        assert_eq!(b.type_, MessageType::Error);
        assert_eq!(b.to, second.from);
        assert_eq!(b.from, second.to);
        assert_eq!(b.id, second.id);
        let err = b
            .payloads
            .iter()
            .find_map(|p| StanzaError::try_from(p.clone()).ok())
            .expect("a stanza error");
        assert_eq!(err.defined_condition, DefinedCondition::ResourceConstraint);
        assert_eq!(err.type_, ErrorType::Wait);
        // The queued one is still there; once the task is gone, a message is bounced too.
        assert!(matches!(rx.recv().await, Some(Input::Xmpp(_))));
        drop(rx);
        assert!(h
            .xmpp(chat("romeo@example.net/a", "x@sip.example.net"))
            .is_some());
        // An error stanza is never answered.
        let mut e = chat("romeo@example.net/a", "x@sip.example.net");
        e.type_ = MessageType::Error;
        assert!(h.xmpp(e).is_none());
    }
}
