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

use std::collections::VecDeque;
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
use xmpp_parsers::stanza_error::DefinedCondition;

use crate::config::Secret;
use crate::mapping::error::stanza_error;

/// The link is down; the stanza was not handed to the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the XMPP component link is down")]
pub struct LinkDown;

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
    ack: Option<oneshot::Sender<Result<(), LinkDown>>>,
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
    /// SIP peer gets 503 instead of no answer.
    pub async fn deliver(&self, stanza: impl Into<Stanza>) -> Result<(), LinkDown> {
        if !self.is_up() {
            return Err(LinkDown);
        }
        let (ack, rx) = oneshot::channel();
        match self.tx.try_send(Out {
            stanza: stanza.into(),
            ack: Some(ack),
        }) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                tracing::debug!("XMPP send queue is full; delivery refused.");
                return Err(LinkDown);
            }
            Err(mpsc::error::TrySendError::Closed(_)) => return Err(LinkDown),
        }
        rx.await.unwrap_or(Err(LinkDown))
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
                let _ = ack.send(Err(LinkDown));
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
    let mut acks: Vec<Ack> = Vec::new();
    let mut receipts = Receipts::new(&config.jid, &config.ping_to);
    let ended = run_loop(config, &mut stream, rx, inbound, &mut acks, &mut receipts).await;
    for ack in acks.drain(..) {
        let _ = ack.send(Err(LinkDown));
    }
    receipts.fail_all();
    ended
}

type Ack = oneshot::Sender<Result<(), LinkDown>>;

/// Deliveries written to the server and waiting for a receipt ping's answer.
struct Receipts {
    /// The component and the server, parsed once: a ping goes out per batch of writes.
    pinger: Option<(Jid, Jid)>,
    /// Written since the last ping was sent: they wait for the next one.
    unconfirmed: Vec<Ack>,
    /// Pings in flight, oldest first: id, when sent, and the deliveries each confirms.
    in_flight: VecDeque<(String, tokio::time::Instant, Vec<Ack>)>,
}

/// Receipt pings in flight at once. More than one, so a delivery waits for its own ping's
/// round trip and not also for the one before; few, so a slow server gets few pings.
const RECEIPT_PINGS: usize = 4;

impl Receipts {
    fn new(component: &str, server: &str) -> Receipts {
        Receipts {
            pinger: Jid::new(component).ok().zip(Jid::new(server).ok()),
            unconfirmed: Vec::new(),
            in_flight: VecDeque::new(),
        }
    }

    /// A receipt ping to send now, if deliveries wait and fewer than [`RECEIPT_PINGS`] are
    /// in flight (else the next answer sends it). Without addresses to ping between, the
    /// waiting deliveries fail rather than wait for an answer that cannot come.
    fn next_ping(&mut self) -> Option<Stanza> {
        if self.in_flight.len() >= RECEIPT_PINGS || self.unconfirmed.is_empty() {
            return None;
        }
        let Some((from, to)) = &self.pinger else {
            for ack in self.unconfirmed.drain(..) {
                let _ = ack.send(Err(LinkDown));
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
    /// ping sent before it (the server handled them first), succeed.
    fn answered(&mut self, iq: &Iq) -> bool {
        if !matches!(iq, Iq::Result { .. } | Iq::Error { .. }) {
            return false;
        }
        let Some(at) = self.in_flight.iter().position(|(id, _, _)| iq.id() == id) else {
            return false;
        };
        for (_, _, acks) in self.in_flight.drain(..=at) {
            for ack in acks {
                let _ = ack.send(Ok(()));
            }
        }
        true
    }

    fn deadline(&self, wait: Duration) -> Option<tokio::time::Instant> {
        self.in_flight.front().map(|(_, sent, _)| *sent + wait)
    }

    fn fail_all(&mut self) {
        let in_flight = self.in_flight.drain(..).flat_map(|(_, _, a)| a);
        for ack in in_flight.chain(self.unconfirmed.drain(..)) {
            let _ = ack.send(Err(LinkDown));
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
    acks: &mut Vec<Ack>,
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
                while let Some(out) = next.take() {
                    if let Some(ack) = out.ack {
                        acks.push(ack);
                    }
                    if let Err(e) = stream.feed(&XmppStreamElement::Stanza(out.stanza)).await {
                        return Ended::Lost(e.to_string());
                    }
                    n += 1;
                    if n < 256 {
                        next = rx.try_recv().ok();
                    }
                }
                receipts.unconfirmed.append(acks);
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

    fn ack() -> (Ack, oneshot::Receiver<Result<(), LinkDown>>) {
        oneshot::channel()
    }

    fn pong(ping: &Stanza) -> Iq {
        let Stanza::Iq(iq) = ping else {
            panic!("not an iq")
        };
        Iq::empty_result(Jid::new("sip.example.com").unwrap(), iq.id().to_string())
    }

    #[test]
    fn an_answer_confirms_its_ping_and_every_earlier_one() {
        let mut r = Receipts::new("sip.example.com", "example.com");
        let (a1, mut r1) = ack();
        r.unconfirmed.push(a1);
        let p1 = r.next_ping().unwrap();
        let (a2, mut r2) = ack();
        r.unconfirmed.push(a2);
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
    }

    #[test]
    fn past_the_pings_in_flight_deliveries_share_the_next_and_a_lost_link_fails_all() {
        let mut r = Receipts::new("sip.example.com", "example.com");
        let mut pings = Vec::new();
        let mut rxs = Vec::new();
        for _ in 0..RECEIPT_PINGS + 2 {
            let (a, rx) = ack();
            rxs.push(rx);
            r.unconfirmed.push(a);
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
            assert_eq!(rx.try_recv().unwrap(), Err(LinkDown));
        }
    }
}
