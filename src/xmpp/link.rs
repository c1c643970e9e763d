//! The component link to the XMPP server (XEP-0114), under a supervisor that reconnects.
//!
//! tokio-xmpp's own `Component` ends on the first stanza xmpp-parsers rejects, ends after a
//! quiet minute, and never reconnects. So stox logs in itself over tokio-xmpp's
//! `XmppStream` and runs its own loop:
//!
//! ```text
//!   connect -> stream header -> handshake -> Up
//!     read:  stanza -> inbound channel | invalid stanza -> error reply, link stays
//!            soft timeout -> XEP-0199 ping | stream error, EOF, I/O error -> Down
//!     write: batch of stanzas -> flush -> ack each delivery
//!   Down -> backoff (250 ms doubling to xmpp.reconnect_max_ms) -> connect ...
//! ```
//!
//! `deliver()` resolves only once the server has answered an XEP-0199 ping sent after the
//! stanza (a *receipt ping*: a server handles a connection's stanzas in order, so its pong
//! means every stanza before it was routed), and fails at once while the link is down or its
//! queue is full. So a SIP request is answered 200 only for a stanza the server has taken:
//! a write to the socket alone is lost when the server dies with it unread. One receipt
//! ping follows each batch of writes, up to four in flight; beyond that the deliveries
//! written meanwhile share the next one.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use tokio::io::BufStream;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_xmpp::xmlstream::{
    initiate_stream, FallibleStreamElement, ReadError, StreamElementError, StreamHeader, Timeouts,
    XmppStream, XmppStreamElement,
};
use xmpp_parsers::component::Handshake;
use xmpp_parsers::iq::Iq;
use xmpp_parsers::jid::Jid;
use xmpp_parsers::message::{Message, MessageType};
use xmpp_parsers::minidom::Element;
use xmpp_parsers::ping::Ping;
use xmpp_parsers::presence::{Presence, Type as PresenceType};
use xmpp_parsers::stanza::Stanza;
use xmpp_parsers::stanza_error::{DefinedCondition, StanzaError};

use crate::config::Secret;
use crate::mapping::error::stanza_error;

/// The link is down; the stanza was not handed to the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the XMPP component link is down")]
pub struct LinkDown;

/// Why [`XmppLink::deliver`] did not deliver a stanza.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Undelivered {
    /// Not handed to the server: the link is down, lost, or its queue is full.
    #[error("the XMPP component link is down")]
    LinkDown,
    /// The server answered the stanza with an error (its id, from its addressee or the
    /// addressee's server) before the receipt ping covering it: refused, not routed.
    #[error("the XMPP server refused the stanza: {}", crate::mapping::error::condition_name(&.0.defined_condition))]
    Refused(Box<StanzaError>),
}

impl From<LinkDown> for Undelivered {
    fn from(_: LinkDown) -> Self {
        Undelivered::LinkDown
    }
}

#[derive(Debug, Clone)]
pub struct LinkConfig {
    /// The component's domain.
    pub jid: String,
    /// host:port of the server's component listener.
    pub server: String,
    pub secret: Secret,
    /// Where keep-alive pings go (the server's domain).
    pub ping_to: String,
    pub reconnect_max: Duration,
    /// Best-effort stanzas kept while the link is down.
    pub queue_limit: usize,
}

struct Out {
    stanza: Stanza,
    ack: Option<Ack>,
}

/// A handle on the link. Cheap to clone.
#[derive(Clone)]
pub struct XmppLink {
    tx: mpsc::Sender<Out>,
    up: watch::Receiver<bool>,
    jid: Arc<str>,
}

impl XmppLink {
    /// Hands a stanza to the server: resolves once the server has taken it (a receipt
    /// ping after it was answered). Fails at once while the link is down, and while
    /// `xmpp.queue_limit` stanzas are already waiting (the server is not keeping up), so a
    /// SIP peer gets 503 instead of no answer. An error the server returns for the stanza
    /// before that answer (no such user, refused) is [`Undelivered::Refused`]. The link
    /// gives the stanza an id of its own when it has none, or one that another delivery
    /// waiting for its receipt already has, so an error names exactly one delivery.
    pub async fn deliver(&self, stanza: impl Into<Stanza>) -> Result<(), Undelivered> {
        if !self.is_up() {
            return Err(Undelivered::LinkDown);
        }
        let (ack, rx) = oneshot::channel();
        match self.tx.try_send(Out {
            stanza: stanza.into(),
            ack: Some(ack),
        }) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                tracing::debug!("XMPP send queue is full; delivery refused.");
                return Err(Undelivered::LinkDown);
            }
            Err(mpsc::error::TrySendError::Closed(_)) => return Err(Undelivered::LinkDown),
        }
        rx.await.unwrap_or(Err(Undelivered::LinkDown))
    }

    /// Sends a stanza without waiting; while the link is down it is kept (up to
    /// `queue_limit`) and sent after the reconnect. Used for errors and replies.
    pub fn send(&self, stanza: impl Into<Stanza>) {
        if self
            .tx
            .try_send(Out {
                stanza: stanza.into(),
                ack: None,
            })
            .is_err()
        {
            tracing::warn!("XMPP send queue is full; a stanza was dropped.");
        }
    }

    pub fn is_up(&self) -> bool {
        *self.up.borrow()
    }

    /// Waits until the link is up (tests, startup logs).
    pub async fn wait_up(&self) {
        let mut up = self.up.clone();
        let _ = up.wait_for(|u| *u).await;
    }

    /// The component's own domain.
    pub fn jid(&self) -> &str {
        &self.jid
    }
}

/// Starts the supervisor. Stanzas from the server go to `inbound`.
pub fn spawn(config: LinkConfig, inbound: mpsc::Sender<Stanza>) -> XmppLink {
    let (tx, rx) = mpsc::channel(config.queue_limit.max(16));
    let (up_tx, up) = watch::channel(false);
    let jid: Arc<str> = Arc::from(config.jid.as_str());
    tokio::spawn(supervise(config, rx, inbound, up_tx));
    XmppLink { tx, up, jid }
}

type Stream = XmppStream<BufStream<TcpStream>>;

#[derive(Debug, thiserror::Error)]
enum ConnectError {
    #[error("cannot connect to {server}: {source}")]
    Tcp {
        server: String,
        source: std::io::Error,
    },
    #[error("stream setup failed: {0}")]
    Stream(String),
    #[error("the server refused the handshake ({0}); check xmpp.secret and the component's name in the server config")]
    Refused(String),
    #[error("timed out")]
    Timeout,
}

async fn connect(config: &LinkConfig, timeouts: Timeouts) -> Result<Stream, ConnectError> {
    let tcp = TcpStream::connect(&config.server)
        .await
        .map_err(|source| ConnectError::Tcp {
            server: config.server.clone(),
            source,
        })?;
    // Stanzas are small and latency matters more than segment count.
    let _ = tcp.set_nodelay(true);
    let mut pending = initiate_stream(
        BufStream::new(tcp),
        xmpp_parsers::ns::COMPONENT,
        StreamHeader {
            to: Some(config.jid.clone().into()),
            from: None,
            id: None,
        },
        timeouts,
    )
    .await
    .map_err(|e| ConnectError::Stream(e.to_string()))?;
    let id = pending
        .take_header()
        .id
        .ok_or_else(|| ConnectError::Stream("the server sent no stream id".into()))?
        .into_owned();
    let mut stream: Stream = pending.skip_features();
    let handshake = Handshake::from_stream_id_and_password(id, config.secret.expose());
    stream
        .send(&XmppStreamElement::ComponentHandshake(handshake))
        .await
        .map_err(|e| ConnectError::Stream(e.to_string()))?;
    loop {
        match stream.next().await {
            Some(Ok(FallibleStreamElement::Ok(XmppStreamElement::ComponentHandshake(_)))) => {
                return Ok(stream)
            }
            Some(Ok(FallibleStreamElement::Ok(XmppStreamElement::StreamError(e)))) => {
                return Err(ConnectError::Refused(e.to_string()))
            }
            Some(Ok(_)) => continue,
            Some(Err(ReadError::SoftTimeout)) => continue,
            Some(Err(e)) => return Err(ConnectError::Refused(e.to_string())),
            None => return Err(ConnectError::Refused("stream closed".into())),
        }
    }
}

async fn supervise(
    config: LinkConfig,
    mut rx: mpsc::Receiver<Out>,
    inbound: mpsc::Sender<Stanza>,
    up: watch::Sender<bool>,
) {
    let timeouts = Timeouts {
        read_timeout: Duration::from_secs(30),
        response_timeout: Duration::from_secs(20),
    };
    let mut backlog: VecDeque<Stanza> = VecDeque::new();
    let mut backoff = Duration::from_millis(250);
    let mut attempt: u64 = 0;
    loop {
        attempt += 1;
        tracing::info!(server = %config.server, component = %config.jid, attempt, "Connecting to the XMPP server.");
        let connected = tokio::select! {
            r = tokio::time::timeout(Duration::from_secs(10), connect(&config, timeouts)) => {
                r.unwrap_or(Err(ConnectError::Timeout))
            }
            // Keep taking stanzas while connecting, so nobody waits on a dead link.
            _ = drain_while_down(&mut rx, &mut backlog, config.queue_limit) => return,
        };
        match connected {
            Ok(stream) => {
                tracing::info!(component = %config.jid, "Component online.");
                attempt = 0;
                backoff = Duration::from_millis(250);
                let _ = up.send(true);
                let why = run(&config, stream, &mut rx, &inbound, &mut backlog).await;
                let _ = up.send(false);
                match why {
                    Ended::Shutdown => return,
                    Ended::Lost(why) => {
                        tracing::warn!(reason = %why, "XMPP link lost; reconnecting.")
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "XMPP connect failed.");
                let sleep = tokio::time::sleep(backoff);
                tokio::pin!(sleep);
                tokio::select! {
                    _ = &mut sleep => {}
                    _ = drain_while_down(&mut rx, &mut backlog, config.queue_limit) => return,
                }
                backoff = (backoff * 2).min(config.reconnect_max);
            }
        }
    }
}

/// While down: deliveries fail at once, best-effort stanzas wait in the backlog.
/// Returns only when every handle is gone (shutdown).
async fn drain_while_down(
    rx: &mut mpsc::Receiver<Out>,
    backlog: &mut VecDeque<Stanza>,
    limit: usize,
) {
    while let Some(out) = rx.recv().await {
        match out.ack {
            Some(ack) => {
                let _ = ack.send(Err(Undelivered::LinkDown));
            }
            None => {
                if backlog.len() >= limit {
                    backlog.pop_front();
                    tracing::warn!(
                        "XMPP backlog full while the link is down; the oldest stanza was dropped."
                    );
                }
                backlog.push_back(out.stanza);
            }
        }
    }
}

enum Ended {
    Shutdown,
    Lost(String),
}

async fn run(
    config: &LinkConfig,
    mut stream: Stream,
    rx: &mut mpsc::Receiver<Out>,
    inbound: &mpsc::Sender<Stanza>,
    backlog: &mut VecDeque<Stanza>,
) -> Ended {
    while let Some(stanza) = backlog.pop_front() {
        if let Err(e) = stream.feed(&XmppStreamElement::Stanza(stanza)).await {
            return Ended::Lost(e.to_string());
        }
    }
    if let Err(e) = SinkExt::<&XmppStreamElement>::flush(&mut stream).await {
        return Ended::Lost(e.to_string());
    }
    let mut receipts = Receipts::new(&config.jid, &config.ping_to);
    let ended = run_loop(config, &mut stream, rx, inbound, &mut receipts).await;
    receipts.fail_all();
    ended
}

type Ack = oneshot::Sender<Result<(), Undelivered>>;

/// Deliveries written to the server and waiting for a receipt ping's answer, by stanza id:
/// the ping's answer delivers them, an error stanza for one of them before it refuses that
/// one. Each written stanza and each stanza read costs one map operation.
struct Receipts {
    /// The component and the server, parsed once: a ping goes out per batch of writes.
    pinger: Option<(Jid, Jid)>,
    /// Every delivery written and not yet confirmed or refused, by its stanza id.
    waiting: HashMap<String, Waiting>,
    /// Ids written since the last ping was sent: they wait for the next one.
    unconfirmed: Vec<String>,
    /// Pings in flight, oldest first: id, when sent, and the delivery ids each confirms.
    in_flight: VecDeque<(String, tokio::time::Instant, Vec<String>)>,
}

struct Waiting {
    ack: Ack,
    /// The stanza's addressee: an error for it counts only from there or its server.
    to: Option<Jid>,
}

/// Receipt pings in flight at once. More than one, so a delivery waits for its own ping's
/// round trip and not also for the one before; few, so a slow server gets few pings.
const RECEIPT_PINGS: usize = 4;

impl Receipts {
    fn new(component: &str, server: &str) -> Receipts {
        Receipts {
            pinger: Jid::new(component).ok().zip(Jid::new(server).ok()),
            waiting: HashMap::new(),
            unconfirmed: Vec::new(),
            in_flight: VecDeque::new(),
        }
    }

    /// Registers a delivery about to be written. Gives the stanza a fresh id when it has
    /// none or one already waiting (an error must name one delivery only).
    fn track(&mut self, stanza: &mut Stanza, ack: Ack) {
        let fresh = || format!("stox-{}", crate::sip::core::random_token(12));
        let (id, to) = match stanza {
            Stanza::Message(m) => {
                let id = match &m.id {
                    Some(i) if !self.waiting.contains_key(&i.0) => i.0.clone(),
                    _ => {
                        let id = fresh();
                        m.id = Some(xmpp_parsers::message::Id(id.clone()));
                        id
                    }
                };
                (id, m.to.clone())
            }
            Stanza::Presence(p) => {
                let id = match &p.id {
                    Some(i) if !self.waiting.contains_key(i) => i.clone(),
                    _ => {
                        let id = fresh();
                        p.id = Some(id.clone());
                        id
                    }
                };
                (id, p.to.clone())
            }
            // An iq's answer is its own business; never matched by an error here.
            Stanza::Iq(_) => (format!("iq {}", fresh()), None),
        };
        self.waiting.insert(id.clone(), Waiting { ack, to });
        self.unconfirmed.push(id);
    }

    /// Whether `stanza` is an error for a delivery still waiting; if so that delivery is
    /// refused with it. An error from anyone but the addressee or its server is not.
    fn refused(&mut self, stanza: &Stanza) -> bool {
        let (id, from, error) = match stanza {
            Stanza::Message(m) if m.type_ == MessageType::Error => (
                m.id.as_ref().map(|i| i.0.as_str()),
                m.from.as_ref(),
                m.payloads.iter().find(|p| p.name() == "error"),
            ),
            Stanza::Presence(p) if p.type_ == PresenceType::Error => (
                p.id.as_deref(),
                p.from.as_ref(),
                p.payloads.iter().find(|p| p.name() == "error"),
            ),
            _ => return false,
        };
        let Some(id) = id else { return false };
        let Some(w) = self.waiting.get(id) else {
            return false;
        };
        if let (Some(to), Some(from)) = (&w.to, from) {
            let from_addressee = from.to_bare() == to.to_bare();
            let from_its_server =
                from.node().is_none() && from.resource().is_none() && from.domain() == to.domain();
            if !from_addressee && !from_its_server {
                return false;
            }
        }
        let error = error
            .and_then(|e| StanzaError::try_from(e.clone()).ok())
            .unwrap_or_else(|| {
                stanza_error(
                    DefinedCondition::UndefinedCondition,
                    "an error without a valid condition",
                )
            });
        if let Some(w) = self.waiting.remove(id) {
            let _ = w.ack.send(Err(Undelivered::Refused(Box::new(error))));
        }
        true
    }

    /// A receipt ping to send now, if deliveries wait and fewer than [`RECEIPT_PINGS`] are
    /// in flight (else the next answer sends it). Without addresses to ping between, the
    /// waiting deliveries fail rather than wait for an answer that cannot come.
    fn next_ping(&mut self) -> Option<Stanza> {
        if self.in_flight.len() >= RECEIPT_PINGS || self.unconfirmed.is_empty() {
            return None;
        }
        let Some((from, to)) = &self.pinger else {
            for id in self.unconfirmed.drain(..) {
                if let Some(w) = self.waiting.remove(&id) {
                    let _ = w.ack.send(Err(Undelivered::LinkDown));
                }
            }
            return None;
        };
        let id = format!("rcpt-{}", crate::sip::core::random_token(12));
        let ping = ping_iq(&id, from.clone(), to.clone());
        self.in_flight.push_back((
            id,
            tokio::time::Instant::now(),
            std::mem::take(&mut self.unconfirmed),
        ));
        Some(ping)
    }

    /// Whether `iq` answers a ping in flight; if so its deliveries, and those of every
    /// ping sent before it (the server handled them first), succeed, but for those an
    /// error refused meanwhile.
    fn answered(&mut self, iq: &Iq) -> bool {
        if !matches!(iq, Iq::Result { .. } | Iq::Error { .. }) {
            return false;
        }
        let Some(at) = self.in_flight.iter().position(|(id, _, _)| iq.id() == id) else {
            return false;
        };
        for (_, _, ids) in self.in_flight.drain(..=at) {
            for id in ids {
                if let Some(w) = self.waiting.remove(&id) {
                    let _ = w.ack.send(Ok(()));
                }
            }
        }
        true
    }

    fn deadline(&self, wait: Duration) -> Option<tokio::time::Instant> {
        self.in_flight.front().map(|(_, sent, _)| *sent + wait)
    }

    fn fail_all(&mut self) {
        self.in_flight.clear();
        self.unconfirmed.clear();
        for (_, w) in self.waiting.drain() {
            let _ = w.ack.send(Err(Undelivered::LinkDown));
        }
    }
}

/// How long the server may take to answer a receipt ping before the link counts as dead.
const RECEIPT_WAIT: Duration = Duration::from_secs(20);

async fn run_loop(
    config: &LinkConfig,
    stream: &mut Stream,
    rx: &mut mpsc::Receiver<Out>,
    inbound: &mpsc::Sender<Stanza>,
    receipts: &mut Receipts,
) -> Ended {
    loop {
        let receipt_deadline = receipts.deadline(RECEIPT_WAIT);
        tokio::select! {
            _ = async {
                match receipt_deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            } => {
                return Ended::Lost("the server did not answer a receipt ping".into());
            }
            item = stream.next() => {
                match item {
                    Some(Ok(FallibleStreamElement::Ok(XmppStreamElement::Stanza(Stanza::Iq(iq)))))
                        if receipts.answered(&iq) =>
                    {
                        if let Some(ping) = receipts.next_ping() {
                            if let Err(e) = stream.send(&XmppStreamElement::Stanza(ping)).await {
                                return Ended::Lost(e.to_string());
                            }
                        }
                    }
                    Some(Ok(FallibleStreamElement::Ok(XmppStreamElement::Stanza(s)))) => {
                        if receipts.refused(&s) {
                            tracing::debug!("The XMPP server refused a delivery.");
                            continue;
                        }
                        if inbound.send(s).await.is_err() {
                            return Ended::Shutdown;
                        }
                    }
                    Some(Ok(FallibleStreamElement::Ok(XmppStreamElement::StreamError(e)))) => {
                        return Ended::Lost(format!("stream error from the server: {e}"));
                    }
                    Some(Ok(FallibleStreamElement::Ok(_))) => {}
                    Some(Ok(FallibleStreamElement::Err(e))) => {
                        if let Some(reply) = invalid_stanza_reply(&e, &config.jid) {
                            if let Err(e) = stream.send(&XmppStreamElement::Stanza(reply)).await {
                                return Ended::Lost(e.to_string());
                            }
                        }
                    }
                    Some(Err(ReadError::SoftTimeout)) => {
                        // Prosody sends components no keep-alives: ping so a dead peer is noticed.
                        let id = format!("ping-{}", crate::sip::core::random_token(8));
                        if let Some(ping) = receipts.pinger.clone().map(|(from, to)| ping_iq(&id, from, to)) {
                            if let Err(e) = stream.send(&XmppStreamElement::Stanza(ping)).await {
                                return Ended::Lost(e.to_string());
                            }
                        }
                    }
                    Some(Err(ReadError::ParseError(e))) => {
                        tracing::warn!(error = %e, "Unparsable element from the XMPP server; ignored.");
                    }
                    Some(Err(ReadError::HardError(e))) => return Ended::Lost(e.to_string()),
                    Some(Err(ReadError::StreamFooterReceived)) => return Ended::Lost("the server closed the stream".into()),
                    None => return Ended::Lost("connection closed".into()),
                }
            }
            out = rx.recv() => {
                let Some(out) = out else { return Ended::Shutdown };
                // Batch what is queued into one flush.
                let mut next = Some(out);
                let mut n = 0;
                while let Some(mut out) = next.take() {
                    if let Some(ack) = out.ack {
                        receipts.track(&mut out.stanza, ack);
                    }
                    if let Err(e) = stream.feed(&XmppStreamElement::Stanza(out.stanza)).await {
                        return Ended::Lost(e.to_string());
                    }
                    n += 1;
                    if n < 256 {
                        next = rx.try_recv().ok();
                    }
                }
                if let Some(ping) = receipts.next_ping() {
                    if let Err(e) = stream.feed(&XmppStreamElement::Stanza(ping)).await {
                        return Ended::Lost(e.to_string());
                    }
                }
                if let Err(e) = SinkExt::<&XmppStreamElement>::flush(stream).await {
                    return Ended::Lost(e.to_string());
                }
            }
        }
    }
}

fn ping_iq(id: &str, from: Jid, to: Jid) -> Stanza {
    Stanza::Iq(
        Iq::from_get(id.to_string(), Ping)
            .with_from(from)
            .with_to(to),
    )
}

/// An error answer to a stanza xmpp-parsers rejected, so its sender learns it was not taken.
/// Errors are never answered (RFC 6120 8.3.1), nor is anything without a sender.
fn invalid_stanza_reply(e: &StreamElementError, component: &str) -> Option<Stanza> {
    let StreamElementError::InvalidStanza {
        name,
        header,
        error,
        ..
    } = e
    else {
        tracing::warn!(error = %e, "Invalid element from the XMPP server; ignored.");
        return None;
    };
    tracing::info!(
        stanza = %name,
        from = header.from.as_deref().unwrap_or(""),
        id = header.id.as_deref().unwrap_or(""),
        error = %error,
        "Invalid stanza; answered bad-request."
    );
    if header.type_.as_deref() == Some("error") {
        return None;
    }
    let sender = Jid::new(header.from.as_deref()?).ok()?;
    let me = header
        .to
        .as_deref()
        .and_then(|t| Jid::new(t).ok())
        .or_else(|| Jid::new(component).ok())?;
    let err = stanza_error(
        DefinedCondition::BadRequest,
        format!("Invalid stanza: {error}"),
    );
    let id = header.id.clone();
    // The stanza kind's type is not exported by tokio-xmpp; its name is.
    Some(match name.to_string().as_str() {
        "message" => {
            let mut m = Message::new(Some(sender));
            m.type_ = MessageType::Error;
            m.from = Some(me);
            m.id = id.map(xmpp_parsers::message::Id);
            m.payloads.push(Element::from(err));
            Stanza::Message(m)
        }
        "presence" => {
            let mut p = Presence::new(PresenceType::Error);
            p.to = Some(sender);
            p.from = Some(me);
            p.id = id;
            p.payloads.push(Element::from(err));
            Stanza::Presence(p)
        }
        _ => {
            // A request iq must be answered; results and errors must not.
            if !matches!(header.type_.as_deref(), Some("get") | Some("set")) {
                return None;
            }
            Stanza::Iq(
                Iq::from_error(id.unwrap_or_default(), err)
                    .with_from(me)
                    .with_to(sender),
            )
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    fn ack() -> (Ack, oneshot::Receiver<Result<(), Undelivered>>) {
        oneshot::channel()
    }

    fn pong(ping: &Stanza) -> Iq {
        let Stanza::Iq(iq) = ping else {
            panic!("not an iq")
        };
        Iq::empty_result(Jid::new("sip.example.com").unwrap(), iq.id().to_string())
    }

    fn message(to: &str, id: Option<&str>) -> Stanza {
        let mut m = Message::new(Some(Jid::new(to).unwrap()));
        m.from = Some(Jid::new("romeo\\40example.net@sip.example.com").unwrap());
        m.id = id.map(|i| xmpp_parsers::message::Id(i.into()));
        Stanza::Message(m)
    }

    fn id_of(s: &Stanza) -> String {
        match s {
            Stanza::Message(m) => m.id.as_ref().unwrap().0.clone(),
            _ => panic!("not a message"),
        }
    }

    fn bounce(xml: &str) -> Stanza {
        Stanza::Message(Message::try_from(Element::from_str(xml).unwrap()).unwrap())
    }

    fn track(r: &mut Receipts, s: &mut Stanza) -> oneshot::Receiver<Result<(), Undelivered>> {
        let (a, rx) = ack();
        r.track(s, a);
        rx
    }

    #[test]
    fn an_answer_confirms_its_ping_and_every_earlier_one() {
        let mut r = Receipts::new("sip.example.com", "example.com");
        let mut r1 = track(&mut r, &mut message("juliet@example.com", Some("m1")));
        let p1 = r.next_ping().unwrap();
        let mut r2 = track(&mut r, &mut message("juliet@example.com", Some("m2")));
        let p2 = r.next_ping().unwrap();
        assert!(r.next_ping().is_none(), "nothing waits");
        assert!(
            r1.try_recv().is_err() && r2.try_recv().is_err(),
            "not before an answer"
        );
        // Another iq, or a get with the same id, confirms nothing.
        assert!(!r.answered(&Iq::from_get("other", xmpp_parsers::ping::Ping)));
        assert!(r.answered(&pong(&p2)));
        assert_eq!(r1.try_recv().unwrap(), Ok(()));
        assert_eq!(r2.try_recv().unwrap(), Ok(()));
        assert!(!r.answered(&pong(&p1)), "already confirmed");
        assert!(r.deadline(RECEIPT_WAIT).is_none());
        assert!(r.waiting.is_empty(), "nothing left behind");
    }

    #[test]
    fn past_the_pings_in_flight_deliveries_share_the_next_and_a_lost_link_fails_all() {
        let mut r = Receipts::new("sip.example.com", "example.com");
        let mut pings = Vec::new();
        let mut rxs = Vec::new();
        for i in 0..RECEIPT_PINGS + 2 {
            let id = format!("m{i}");
            rxs.push(track(&mut r, &mut message("juliet@example.com", Some(&id))));
            if let Some(p) = r.next_ping() {
                pings.push(p);
            }
        }
        assert_eq!(pings.len(), RECEIPT_PINGS);
        assert_eq!(r.unconfirmed.len(), 2, "waiting for the next ping");
        assert!(r.answered(&pong(&pings[0])));
        let next = r.next_ping();
        assert!(
            next.is_some(),
            "the answer frees a slot for the waiting two"
        );
        r.fail_all();
        assert_eq!(rxs[0].try_recv().unwrap(), Ok(()));
        for rx in &mut rxs[1..] {
            assert_eq!(rx.try_recv().unwrap(), Err(Undelivered::LinkDown));
        }
        assert!(r.waiting.is_empty());
    }

    #[test]
    fn an_error_before_the_ping_answer_refuses_that_delivery_only() {
        let mut r = Receipts::new("sip.example.com", "example.com");
        let mut r1 = track(&mut r, &mut message("nobody@example.com", Some("m1")));
        let mut r2 = track(&mut r, &mut message("juliet@example.com", Some("m2")));
        let ping = r.next_ping().unwrap();
        // Prosody's bounce: from the addressee, the original id, the condition.
        let e = bounce(
            "<message xmlns='jabber:component:accept' type='error' id='m1' \
             from='nobody@example.com' to='romeo\\40example.net@sip.example.com'>\
             <error type='cancel'><service-unavailable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></message>",
        );
        assert!(r.refused(&e));
        match r1.try_recv().unwrap() {
            Err(Undelivered::Refused(err)) => {
                assert_eq!(err.defined_condition, DefinedCondition::ServiceUnavailable)
            }
            other => panic!("{other:?}"),
        }
        assert!(
            !r.refused(&e),
            "an error decides once; a repeat goes on inbound"
        );
        assert!(r.answered(&pong(&ping)));
        assert_eq!(r2.try_recv().unwrap(), Ok(()));
        assert!(r.waiting.is_empty());
    }

    #[test]
    fn an_error_from_a_third_party_or_after_the_answer_refuses_nothing() {
        let mut r = Receipts::new("sip.example.com", "example.com");
        let mut r1 = track(&mut r, &mut message("juliet@example.com", Some("m1")));
        let ping = r.next_ping().unwrap();
        let forged = bounce(
            "<message xmlns='jabber:component:accept' type='error' id='m1' from='mallory@example.com'>\
             <error type='cancel'><item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></message>",
        );
        assert!(!r.refused(&forged));
        // The addressee's server may bounce it too (from its domain).
        let late = bounce(
            "<message xmlns='jabber:component:accept' type='error' id='m1' from='example.com'>\
             <error type='cancel'><item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></message>",
        );
        assert!(r.answered(&pong(&ping)));
        assert_eq!(r1.try_recv().unwrap(), Ok(()));
        assert!(!r.refused(&late), "delivered already");
        // A normal message with a waiting id is no error.
        let mut _r2 = track(&mut r, &mut message("juliet@example.com", Some("m2")));
        assert!(!r.refused(&message("juliet@example.com", Some("m2"))));
    }

    #[test]
    fn a_missing_or_waiting_id_is_replaced_by_a_fresh_one() {
        let mut r = Receipts::new("sip.example.com", "example.com");
        let mut a = message("juliet@example.com", Some("same"));
        let mut b = message("juliet@example.com", Some("same"));
        let mut c = message("juliet@example.com", None);
        let _ra = track(&mut r, &mut a);
        let _rb = track(&mut r, &mut b);
        let _rc = track(&mut r, &mut c);
        assert_eq!(id_of(&a), "same");
        assert_ne!(id_of(&b), "same");
        assert!(id_of(&c).starts_with("stox-"));
        assert_eq!(r.waiting.len(), 3);
    }
}
