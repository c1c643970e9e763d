//! One-to-one chat sessions (RFC 7573), sans-IO: XMPP type=chat messages <-> SIP INVITE
//! dialogs carrying MSRP sessions (RFC 4975), driven by inputs and a `now`.
//!
//! ```text
//!  XMPP <message type=chat/> ─ handle_xmpp ─────────┐                 ┌─ poll_action: Invite | Cancel | Ack | Bye
//!  SIP INVITE/BYE/ACK/CANCEL ─ handle_sip_request ──┤                 │   MsrpExpect | MsrpConnect | MsrpSend
//!    (returns the response)                         │    ChatCore     │   MsrpClose | MsrpDrop | Stanza | Pager
//!  INVITE responses ─ handle_invite_response/_failed┤                 │
//!  MSRP up / failed / events ─ handle_msrp_* ───────┤                 └─ poll_timeout
//!  timers ─ handle_timeout ─────────────────────────┘
//! ```
//!
//! XMPP -> SIP: the first message with a body from juliet to a SIP user opens a session:
//! an INVITE (Call-ID = the thread when there is one) with an `a=setup:actpass` MSRP offer;
//! messages wait in the session's queue, in order, until the dialog and the MSRP
//! connection are up, then go as SENDs (transaction id and Message-ID from the stanza id).
//! An INVITE refused with 405/415/488/606, or not set up within the setup timeout, turns the
//! conversation into pager mode (`Pager`: the queued messages, in order, then every later
//! one) for `fallback_for`; other refusals bounce the queued messages.
//! SIP -> XMPP: an INVITE with an acceptable MSRP offer for a local user gets 200 with the
//! answer; each SEND becomes a type=chat message (thread = Call-ID, id = transaction id).
//! Either side: `gone` or the idle timeout ends it with BYE; a BYE from SIP ends it quietly.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rsipstack::sip::headers::make_header;
use rsipstack::sip::{Headers, Method, Request, Response, Version};
use xmpp_parsers::chatstates::ChatState;
use xmpp_parsers::jid::Jid;
use xmpp_parsers::message::{Message, MessageType, Thread};
use xmpp_parsers::minidom::Element;
use xmpp_parsers::ns;
use xmpp_parsers::stanza_error::{DefinedCondition, StanzaError};

use crate::address::{AddressMap, SipAddress};
pub use crate::config::ChatAnswer;
use crate::mapping::error::{stanza_error, stanza_error_for_sip};
use crate::mapping::message::{sip_uri, thread_to_call_id, xml_safe};
use crate::msrp::cpim::{self, Cpim};
use crate::msrp::frame::{MessageId, TransactionId};
use crate::msrp::iscomposing::{self, IsComposing};
use crate::msrp::sdp::{self, LocalMedia, Negotiated};
use crate::msrp::session::{self as msrp, Event as MsrpEvent, Failure, Outgoing, Received};
use crate::msrp::uri::MsrpUri;
use crate::presence::Availability;
use crate::sip::core::random_token;
use crate::sip::dialog::{self, header_value, Dialog};
use crate::sip::message::{dialog_response_to, response_to};

pub type ChatId = u64;

/// XEP-0085 and XEP-0184 namespaces.
const NS_CHATSTATES: &str = ns::CHATSTATES;
const NS_RECEIPTS: &str = ns::RECEIPTS;
/// Outgoing messages whose receipt or error is still awaited, per session.
const MAX_TRACKED: usize = 4096;
/// How long the response to a SIP user's message waits for its stanza to be written to
/// the XMPP server before the session refuses it (403) on its own; well below the sender's
/// 30 s transaction timeout (RFC 4975 section 7.1.1).
pub const DELIVER_TIMEOUT: Duration = Duration::from_secs(10);
/// The MSRP answer to a message whose stanza could not be written (the XMPP link is down
/// or the write failed). RFC 4975 registers no "service unavailable" (503 is SIP's and
/// HTTP's, not MSRP's; 501 and 506 mean other things); 403 (the attempted action is not
/// allowed) is the registered refusal of a request, and a sender fails the whole message
/// on an error response to any chunk (section 7.1.1), so nothing is acknowledged and
/// lost. The final chunk's response is held until the write, so a failure REPORT after a
/// 200 is never needed.
pub const UNDELIVERED: (u16, &str) = (403, "XMPP server unreachable");
/// The MSRP answer to a message whose stanza the XMPP server refused with `error` (no such
/// user, not allowed). RFC 7573 defines no mapping; RFC 4975 section 10 registers few
/// codes, so the RFC 7247 section 8.1 SIP code is kept where MSRP has it with the same
/// meaning (400, 403, 415) and anything else is 403, the registered refusal; the comment
/// names the XMPP condition. 481 is not used: the MSRP session itself still exists.
pub fn msrp_answer_for_xmpp(error: &StanzaError) -> (u16, String) {
    let c = &error.defined_condition;
    let code = match crate::mapping::error::xmpp_to_sip(c) {
        code @ (400 | 403 | 415) => code,
        _ => 403,
    };
    (
        code,
        format!(
            "Refused by the XMPP server: {}",
            crate::mapping::error::condition_name(c)
        ),
    )
}

/// isComposing `refresh` for an `active` state (RFC 3994 section 4 recommends 60-120 s).
const COMPOSING_REFRESH: u32 = 60;

#[derive(Debug, Clone)]
pub struct ChatSettings {
    pub max_sessions: usize,
    pub max_per_user: usize,
    pub idle_timeout: Duration,
    pub setup_timeout: Duration,
    pub fallback_for: Duration,
    pub max_message_size: usize,
    pub chunk_size: usize,
    /// host[:port] of our SIP Contact.
    pub contact_host: String,
    /// The host in our a=path, and the MSRP listener's port.
    pub msrp_host: String,
    pub msrp_port: u16,
    /// The address in SDP o= and c=.
    pub msrp_ip: IpAddr,
    /// The msrps (TLS) listener's port, when `[msrp] tls_listen` is set; without it
    /// `TCP/TLS/MSRP` offers get 488 and stox offers plain MSRP only.
    pub msrps_port: Option<u16>,
    /// `[msrp] prefer_tls`: offer msrps to every SIP user, not only over a secure SIP leg.
    pub prefer_tls: bool,
    /// Domains whose INVITEs go over TLS (a `sips:` or `transport=tls` route); `"*"`: all
    /// of them (such an outbound proxy).
    pub tls_domains: Vec<String>,
    /// `chat.answer`: with `WhenAvailable`, an INVITE for a user not known to be available
    /// gets 480.
    pub answer: ChatAnswer,
}

impl Default for ChatSettings {
    fn default() -> Self {
        ChatSettings {
            max_sessions: 1000,
            max_per_user: 20,
            idle_timeout: Duration::from_secs(600),
            setup_timeout: Duration::from_secs(32),
            fallback_for: Duration::from_secs(3600),
            max_message_size: 1024 * 1024,
            chunk_size: 16 * 1024,
            contact_host: "127.0.0.1:5060".into(),
            msrp_host: "127.0.0.1".into(),
            msrp_port: 2855,
            msrp_ip: IpAddr::from([127, 0, 0, 1]),
            msrps_port: None,
            prefer_tls: false,
            tls_domains: Vec::new(),
            answer: ChatAnswer::Always,
        }
    }
}

/// What the edge is asked to do.
pub enum Action {
    /// Send this INVITE; its responses come back through `handle_invite_*`.
    Invite {
        id: ChatId,
        request: Request,
    },
    /// CANCEL the INVITE of this session.
    Cancel {
        id: ChatId,
    },
    /// The ACK for the 2xx of this session's INVITE, to where the INVITE went.
    Ack {
        id: ChatId,
        request: Request,
    },
    /// A BYE in the session's dialog; its answer does not matter.
    Bye {
        id: ChatId,
        request: Request,
    },
    /// Wait on the MSRP listener for the peer to connect to this session.
    MsrpExpect {
        id: ChatId,
        session: msrp::Session,
    },
    /// Connect to the peer (we are the active side); over TLS verifying `host` when `tls`.
    MsrpConnect {
        id: ChatId,
        session: msrp::Session,
        host: String,
        port: u16,
        tls: bool,
    },
    MsrpSend {
        id: ChatId,
        message: Outgoing,
    },
    /// Finish what is queued on the connection, then close it.
    MsrpClose {
        id: ChatId,
    },
    /// Abandon the connection being set up (an expectation, a connect) without a word.
    MsrpDrop {
        id: ChatId,
    },
    Stanza(Message),
    /// An MSRP message from the SIP user, complete: write `stanza` to the XMPP server
    /// (acknowledged, `XmppLink::deliver`) and only then answer the held final chunk
    /// through `msrp::Session::answer` with `message_id`: 200 once written, else an error
    /// (see [`UNDELIVERED`]). `None`: nothing is carried to XMPP (content stox does not
    /// map); answer 200 at once, the message was taken. Deliveries of one session must
    /// be done one after the other, in the order of these actions.
    Deliver {
        id: ChatId,
        message_id: MessageId,
        stanza: Option<Message>,
    },
    /// Send as a pager-mode MESSAGE (the `im` path, which bounces failures); messages
    /// with the same key must go one after the other.
    Pager {
        key: String,
        message: Message,
    },
}

impl std::fmt::Debug for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Action::Invite { id, request } => write!(f, "Invite({id}, {})", request.uri),
            Action::Cancel { id } => write!(f, "Cancel({id})"),
            Action::Ack { id, .. } => write!(f, "Ack({id})"),
            Action::Bye { id, .. } => write!(f, "Bye({id})"),
            Action::MsrpExpect { id, session } => {
                write!(f, "MsrpExpect({id}, {})", session.local())
            }
            Action::MsrpConnect {
                id,
                host,
                port,
                tls,
                ..
            } => {
                let scheme = if *tls { "msrps" } else { "msrp" };
                write!(f, "MsrpConnect({id}, {scheme}://{host}:{port})")
            }
            Action::MsrpSend { id, message } => {
                write!(f, "MsrpSend({id}, {:?})", message.message_id)
            }
            Action::MsrpClose { id } => write!(f, "MsrpClose({id})"),
            Action::MsrpDrop { id } => write!(f, "MsrpDrop({id})"),
            Action::Stanza(m) => write!(f, "Stanza({:?})", m.id),
            Action::Deliver { id, message_id, .. } => write!(f, "Deliver({id}, {message_id})"),
            Action::Pager { key, message } => write!(f, "Pager({key}, {:?})", message.id),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Our INVITE is out, no 2xx yet.
    Inviting,
    /// The dialog is up (or our 200 is sent), the MSRP connection not yet.
    Connecting,
    Active,
    /// Cancelled by us: a 2xx that races the CANCEL gets ACK and BYE.
    Abandoned,
}

#[derive(Debug, Clone)]
enum Item {
    Text(String),
    State(ChatState),
}

#[derive(Debug)]
struct Queued {
    stanza: Message,
    item: Item,
    receipt: bool,
}

#[derive(Debug)]
struct Sent {
    stanza: Message,
    receipt: bool,
}

#[derive(Debug)]
struct Chat {
    /// The local user: bare, or the full JID that wrote last.
    user: Jid,
    user_bare: String,
    /// The SIP user's JID at the gateway.
    peer: Jid,
    peer_bare: String,
    user_sip: SipAddress,
    peer_sip: SipAddress,
    call_id: String,
    thread: String,
    state: State,
    /// Our INVITE (UAC sessions), for the dialog and the ACK.
    invite: Option<Request>,
    dialog: Option<Dialog>,
    local_uri: MsrpUri,
    local_sdp: String,
    negotiated: Option<Negotiated>,
    msrp_up: bool,
    queue: VecDeque<Queued>,
    bye_after_flush: bool,
    sent: HashMap<MessageId, Sent>,
    used_ids: HashSet<String>,
    last_activity: Instant,
    /// Setup deadline (Inviting, Connecting).
    deadline: Instant,
}

impl Chat {
    fn msrp_session_id(&self) -> &str {
        self.local_uri.session_id.as_deref().unwrap_or("")
    }

    fn key(&self) -> String {
        pair_key(&self.user_bare, &self.peer_bare)
    }

    fn next_deadline(&self, idle: Duration) -> Instant {
        match self.state {
            State::Inviting | State::Connecting => self.deadline,
            State::Active => self.last_activity + idle,
            State::Abandoned => self.deadline,
        }
    }
}

/// What an XMPP message carries, for a chat session.
#[derive(Debug, Default)]
struct Contents {
    body: Option<String>,
    state: Option<ChatState>,
    receipt_request: bool,
}

fn contents(msg: &Message) -> Contents {
    let mut c = Contents {
        body: msg.get_best_body(vec![]).map(|(_, b)| b.clone()),
        ..Contents::default()
    };
    for p in &msg.payloads {
        if p.ns() == NS_CHATSTATES {
            if let Ok(s) = ChatState::try_from(p.clone()) {
                c.state = Some(s);
            }
        } else if p.is("request", NS_RECEIPTS) {
            c.receipt_request = true;
        }
    }
    c
}

fn bare(j: &Jid) -> String {
    j.to_bare().to_string().to_lowercase()
}

fn pair_key(user: &str, peer: &str) -> String {
    format!("{user} {peer}")
}

/// A message returned to its sender as an error (RFC 6120 8.3).
pub fn bounce(original: &Message, error: StanzaError) -> Option<Message> {
    let mut m = Message::new(Some(original.from.clone()?));
    m.from = Some(original.to.clone()?);
    m.type_ = MessageType::Error;
    m.id = original.id.clone();
    m.bodies = original.bodies.clone();
    m.thread = original.thread.clone();
    m.payloads.push(Element::from(error));
    Some(m)
}

/// The stanza error for an MSRP failure of one of the user's messages.
fn msrp_error(failure: &Failure) -> StanzaError {
    match failure {
        Failure::Timeout => stanza_error(
            DefinedCondition::RemoteServerTimeout,
            "no MSRP response within 30 s",
        ),
        Failure::Response { code, comment } => {
            stanza_error_for_sip(*code, comment.as_deref().unwrap_or("MSRP error"))
        }
    }
}

pub struct ChatCore {
    settings: ChatSettings,
    addresses: Arc<AddressMap>,
    chats: HashMap<ChatId, Chat>,
    by_call_id: HashMap<String, ChatId>,
    /// Conversations in pager mode after a refused INVITE, until then.
    fallback: HashMap<String, Instant>,
    actions: VecDeque<Action>,
    next_id: ChatId,
    cseq: u32,
    /// What the presence task knows of the users' availability (`chat.answer`).
    availability: Availability,
}

impl ChatCore {
    pub fn new(settings: ChatSettings, addresses: Arc<AddressMap>) -> ChatCore {
        ChatCore {
            settings,
            addresses,
            chats: HashMap::new(),
            by_call_id: HashMap::new(),
            fallback: HashMap::new(),
            actions: VecDeque::new(),
            next_id: 1,
            cseq: 0,
            availability: Availability::new(),
        }
    }

    /// The users' availability as the presence task sees it; only read with
    /// `ChatAnswer::WhenAvailable` (nobody is available without it).
    pub fn set_availability(&mut self, availability: Availability) {
        self.availability = availability;
    }

    // ---- getters ----

    pub fn sessions(&self) -> usize {
        self.chats.len()
    }

    /// The Call-ID and MSRP session-id of a session, for log spans.
    pub fn ids(&self, id: ChatId) -> Option<(String, String)> {
        self.chats
            .get(&id)
            .map(|c| (c.call_id.clone(), c.msrp_session_id().to_string()))
    }

    pub fn in_fallback(&self, now: Instant, user: &Jid, peer: &Jid) -> bool {
        self.fallback
            .get(&pair_key(&bare(user), &bare(peer)))
            .is_some_and(|until| *until > now)
    }

    // ---- outputs ----

    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        let idle = self.settings.idle_timeout;
        self.chats
            .values()
            .map(|c| c.next_deadline(idle))
            .chain(self.fallback.values().copied())
            .min()
    }

    // ---- XMPP -> SIP ----

    /// A type=chat message from a local user to a JID at the gateway.
    pub fn handle_xmpp(&mut self, now: Instant, msg: Message) {
        if msg.type_ == MessageType::Error {
            tracing::debug!("Error message from XMPP ignored.");
            return;
        }
        let (Some(from), Some(to)) = (msg.from.clone(), msg.to.clone()) else {
            return;
        };
        let c = contents(&msg);
        let (user_bare, peer_bare) = (bare(&from), bare(&to));
        let key = pair_key(&user_bare, &peer_bare);
        let thread = msg.thread.as_ref().map(|t| t.id.clone());
        if let Some(id) = self.find(&user_bare, &peer_bare, thread.as_deref()) {
            self.user_message(now, id, from, msg, c);
            return;
        }
        if self.fallback.get(&key).is_some_and(|until| *until > now) {
            self.actions.push_back(Action::Pager { key, message: msg });
            return;
        }
        let Some(body) = c.body.clone() else {
            // A chat state or receipt outside any session opens nothing.
            tracing::debug!("Body-less chat message outside a session; dropped.");
            return;
        };
        let (user_sip, peer_sip) = match (
            self.addresses.local_user_to_sip(&from),
            self.addresses.gateway_jid_to_sip(&to),
        ) {
            (Ok(u), Ok(p)) => (u, p),
            // The pager path refuses it with the right error.
            _ => {
                self.actions.push_back(Action::Pager { key, message: msg });
                return;
            }
        };
        if body.len() > self.settings.max_message_size {
            self.bounce_msg(
                &msg,
                stanza_error(DefinedCondition::NotAcceptable, "message too large"),
            );
            return;
        }
        if self.chats.len() >= self.settings.max_sessions
            || self.count_user(&user_bare) >= self.settings.max_per_user
        {
            tracing::info!(user = %user_bare, "Chat session limit reached; sending as MESSAGE.");
            self.actions.push_back(Action::Pager { key, message: msg });
            return;
        }
        self.open(now, from, to, user_sip, peer_sip, msg, c, thread);
    }

    fn count_user(&self, user_bare: &str) -> usize {
        self.chats
            .values()
            .filter(|c| c.user_bare == user_bare)
            .count()
    }

    /// The session of this conversation: the one with this thread, or without a thread
    /// the most recent one of the pair.
    fn find(&self, user_bare: &str, peer_bare: &str, thread: Option<&str>) -> Option<ChatId> {
        self.chats
            .iter()
            .filter(|(_, c)| {
                c.state != State::Abandoned && c.user_bare == user_bare && c.peer_bare == peer_bare
            })
            .filter(|(_, c)| thread.is_none_or(|t| c.thread == t || c.call_id == t))
            .map(|(id, _)| *id)
            .max()
    }

    /// Our URI and media line: `msrps:` on the TLS listener when `tls` (and it exists).
    fn local_media(&self, tls: bool) -> (MsrpUri, LocalMedia) {
        let port = match self.settings.msrps_port {
            Some(p) if tls => p,
            _ => self.settings.msrp_port,
        };
        let mut uri = MsrpUri::new(self.settings.msrp_host.clone(), port, random_token(20));
        uri.secure = tls && self.settings.msrps_port.is_some();
        let media = LocalMedia {
            address: self.settings.msrp_ip,
            port,
            uri: uri.clone(),
            session_id: rand::random::<u32>() as u64,
            session_version: 1,
        };
        (uri, media)
    }

    fn msrp_config(&self) -> msrp::Config {
        msrp::Config {
            chunk_size: self.settings.chunk_size,
            max_message_size: self.settings.max_message_size,
            // Room for one whole message being reassembled while another begins.
            max_incoming_bytes: self.settings.max_message_size.saturating_mul(2),
            defer_response: Some(DELIVER_TIMEOUT),
            ..msrp::Config::default()
        }
    }

    /// Whether an INVITE to `peer` offers msrps: with a TLS listener, when the SIP leg is
    /// secure (a `sips:` URI, or a TLS route for its domain) or `prefer_tls` says so.
    fn offer_tls(&self, peer: &SipAddress) -> bool {
        if self.settings.msrps_port.is_none() {
            return false;
        }
        let domain = peer.host.trim_end_matches('.');
        self.settings.prefer_tls
            || peer.scheme == crate::address::UriScheme::Sips
            || self
                .settings
                .tls_domains
                .iter()
                .any(|d| d == "*" || d.eq_ignore_ascii_case(domain))
    }

    fn contact(&self) -> String {
        format!("<sip:stox@{}>", self.settings.contact_host)
    }

    #[allow(clippy::too_many_arguments)]
    fn open(
        &mut self,
        now: Instant,
        from: Jid,
        to: Jid,
        user_sip: SipAddress,
        peer_sip: SipAddress,
        msg: Message,
        c: Contents,
        thread: Option<String>,
    ) {
        let call_id = thread
            .as_deref()
            .and_then(thread_to_call_id)
            .filter(|c| !self.by_call_id.contains_key(c))
            .unwrap_or_else(|| format!("{}@{}", random_token(20), self.addresses.component()));
        let uri = match sip_uri(&peer_sip) {
            Ok(u) => u,
            Err(_) => {
                self.actions.push_back(Action::Pager {
                    key: pair_key(&bare(&from), &bare(&to)),
                    message: msg,
                });
                return;
            }
        };
        let (local_uri, media) = self.local_media(self.offer_tls(&peer_sip));
        let offer = sdp::offer(&media);
        self.cseq = self.cseq % (1 << 30) + 1;
        let mut headers = Headers::default();
        headers.push(make_header(
            "To",
            format!("<{}>", peer_sip.aor().to_uri_string()),
        ));
        headers.push(make_header(
            "From",
            format!("<{}>;tag={}", user_sip.to_uri_string(), random_token(10)),
        ));
        headers.push(make_header("Call-ID", call_id.clone()));
        headers.push(make_header("CSeq", format!("{} INVITE", self.cseq)));
        headers.push(make_header("Contact", self.contact()));
        headers.push(make_header("Content-Type", "application/sdp".to_string()));
        let request = Request {
            method: Method::Invite,
            uri,
            version: Version::V2,
            headers,
            body: offer.clone().into_bytes(),
        };
        let id = self.next_id;
        self.next_id += 1;
        let session = msrp::Session::new(local_uri.clone(), Vec::new(), self.msrp_config());
        let thread = thread.unwrap_or_else(|| call_id.clone());
        let mut chat = Chat {
            user: from.clone(),
            user_bare: bare(&from),
            peer: Jid::from(to.to_bare()),
            peer_bare: bare(&to),
            user_sip,
            peer_sip,
            call_id: call_id.clone(),
            thread,
            state: State::Inviting,
            invite: Some(request.clone()),
            dialog: None,
            local_uri,
            local_sdp: offer,
            negotiated: None,
            msrp_up: false,
            queue: VecDeque::new(),
            bye_after_flush: false,
            sent: HashMap::new(),
            used_ids: HashSet::new(),
            last_activity: now,
            deadline: now + self.settings.setup_timeout,
        };
        tracing::info!(%call_id, msrp_session = chat.msrp_session_id(), "Opening a chat session to SIP.");
        enqueue(&mut chat, msg, c);
        self.chats.insert(id, chat);
        self.by_call_id.insert(call_id, id);
        self.actions.push_back(Action::MsrpExpect { id, session });
        self.actions.push_back(Action::Invite { id, request });
    }

    fn user_message(&mut self, now: Instant, id: ChatId, from: Jid, msg: Message, c: Contents) {
        let max = self.settings.max_message_size;
        let Some(chat) = self.chats.get_mut(&id) else {
            return;
        };
        if c.body.as_ref().is_some_and(|b| b.len() > max) {
            self.bounce_msg(
                &msg,
                stanza_error(DefinedCondition::NotAcceptable, "message too large"),
            );
            return;
        }
        chat.user = from;
        chat.last_activity = now;
        let gone = c.state == Some(ChatState::Gone);
        match chat.state {
            State::Active => {
                let out = outgoing_items(chat, msg, c);
                for m in out {
                    self.actions.push_back(Action::MsrpSend { id, message: m });
                }
                if gone {
                    self.end(id, "The XMPP user has gone.");
                }
            }
            State::Inviting | State::Connecting => {
                enqueue(chat, msg, c);
                if gone {
                    chat.bye_after_flush = true;
                }
            }
            State::Abandoned => {}
        }
    }

    /// Ends a session from our side: BYE (when there is a dialog) and close MSRP.
    fn end(&mut self, id: ChatId, why: &str) {
        let Some(mut chat) = self.remove(id) else {
            return;
        };
        tracing::info!(call_id = %chat.call_id, msrp_session = chat.msrp_session_id(), "{why} Ending the chat session.");
        if let Some(d) = chat.dialog.as_mut() {
            if let Ok(request) = d.request(Method::Bye) {
                self.actions.push_back(Action::Bye { id, request });
            }
        }
        self.actions.push_back(Action::MsrpClose { id });
    }

    fn remove(&mut self, id: ChatId) -> Option<Chat> {
        let chat = self.chats.remove(&id)?;
        if self.by_call_id.get(&chat.call_id) == Some(&id) {
            self.by_call_id.remove(&chat.call_id);
        }
        Some(chat)
    }

    /// The queued messages go as pager MESSAGEs, in order; with `remember`, so do later
    /// ones for `fallback_for`.
    fn fall_back(&mut self, now: Instant, chat: Chat, remember: bool) {
        let key = chat.key();
        tracing::info!(call_id = %chat.call_id, remember, queued = chat.queue.len(), "Chat session not set up; falling back to MESSAGE.");
        if remember {
            self.fallback
                .insert(key.clone(), now + self.settings.fallback_for);
        }
        for q in chat.queue {
            if matches!(q.item, Item::Text(_)) {
                self.actions.push_back(Action::Pager {
                    key: key.clone(),
                    message: q.stanza,
                });
            }
        }
    }

    fn bounce_msg(&mut self, msg: &Message, err: StanzaError) {
        if let Some(m) = bounce(msg, err) {
            self.actions.push_back(Action::Stanza(m));
        }
    }

    // ---- INVITE results (XMPP-initiated sessions) ----

    pub fn handle_invite_response(&mut self, now: Instant, id: ChatId, response: &Response) {
        let code = response.status_code.code();
        if code < 200 {
            return;
        }
        let msrp_config = self.msrp_config();
        let Some(chat) = self.chats.get_mut(&id) else {
            return;
        };
        let Some(invite) = chat.invite.clone() else {
            return;
        };
        let invite_seq = dialog::cseq_number(&invite.headers).unwrap_or(1);
        if code >= 300 {
            if chat.state != State::Inviting {
                if chat.state == State::Abandoned {
                    self.remove(id);
                }
                return;
            }
            let Some(chat) = self.remove(id) else { return };
            self.actions.push_back(Action::MsrpDrop { id });
            if matches!(code, 405 | 415 | 488 | 606) {
                self.fall_back(now, chat, true);
            } else {
                tracing::info!(call_id = %chat.call_id, status = code, "SIP refused the chat session; bouncing its messages.");
                let err = stanza_error_for_sip(code, response.status_code.text());
                for q in chat.queue {
                    if matches!(q.item, Item::Text(_)) {
                        self.bounce_msg(&q.stanza, err.clone());
                    }
                }
            }
            return;
        }
        // A 2xx: ACK it whatever happens next (RFC 3261 13.2.2.4).
        let mut d = match Dialog::as_uac(&invite, response) {
            Ok(d) => d,
            Err(e) => {
                tracing::info!(call_id = %chat.call_id, error = %e, "A 2xx without a usable dialog; falling back.");
                if chat.state == State::Inviting {
                    if let Some(chat) = self.remove(id) {
                        self.actions.push_back(Action::MsrpDrop { id });
                        self.fall_back(now, chat, false);
                    }
                }
                return;
            }
        };
        if let Ok(ack) = d.ack(invite_seq) {
            self.actions.push_back(Action::Ack { id, request: ack });
        }
        if chat.state != State::Inviting {
            // Cancelled meanwhile, or a second fork answered: that dialog is ended at once.
            let same = chat.dialog.as_ref().is_some_and(|x| x.id == d.id);
            if !same {
                if let Ok(bye) = d.request(Method::Bye) {
                    self.actions.push_back(Action::Bye { id, request: bye });
                }
            }
            if chat.state == State::Abandoned {
                self.remove(id);
            }
            return;
        }
        let negotiated = sdp::parse(&response.body)
            .map_err(|e| e.to_string())
            .and_then(|s| sdp::accept_answer(&s, chat.local_uri.secure).map_err(|e| e.to_string()));
        let neg = match negotiated {
            Ok(n) => n,
            Err(e) => {
                tracing::info!(call_id = %chat.call_id, error = %e, "The SDP answer is not usable; BYE and fallback.");
                if let Ok(bye) = d.request(Method::Bye) {
                    self.actions.push_back(Action::Bye { id, request: bye });
                }
                if let Some(chat) = self.remove(id) {
                    self.actions.push_back(Action::MsrpDrop { id });
                    self.fall_back(now, chat, true);
                }
                return;
            }
        };
        chat.dialog = Some(d);
        chat.state = State::Connecting;
        chat.deadline = now + self.settings.setup_timeout;
        if neg.connects() && !chat.msrp_up {
            let session =
                msrp::Session::new(chat.local_uri.clone(), neg.remote_path.clone(), msrp_config);
            let (host, port) = neg.connect_to.clone();
            self.actions.push_back(Action::MsrpDrop { id });
            self.actions.push_back(Action::MsrpConnect {
                id,
                session,
                host,
                port,
                tls: neg.tls,
            });
        }
        let chat_up = chat.msrp_up;
        chat.negotiated = Some(neg);
        if chat_up {
            self.activate(now, id);
        }
    }

    /// The INVITE got no response at all (timeout, no route) or failed in transport.
    pub fn handle_invite_failed(&mut self, now: Instant, id: ChatId, timeout: bool) {
        let Some(chat) = self.chats.get(&id) else {
            return;
        };
        match chat.state {
            State::Inviting => {
                if let Some(chat) = self.remove(id) {
                    self.actions.push_back(Action::MsrpDrop { id });
                    self.fall_back(now, chat, timeout);
                }
            }
            State::Abandoned => {
                self.remove(id);
            }
            _ => {}
        }
    }

    /// The INVITE transaction has ended (no more 2xx can come).
    pub fn handle_invite_ended(&mut self, id: ChatId) {
        if self
            .chats
            .get(&id)
            .is_some_and(|c| c.state == State::Abandoned)
        {
            self.remove(id);
        }
    }

    // ---- MSRP ----

    pub fn handle_msrp_up(&mut self, now: Instant, id: ChatId) {
        let Some(chat) = self.chats.get_mut(&id) else {
            return;
        };
        chat.msrp_up = true;
        if chat.state == State::Connecting && chat.negotiated.is_some() {
            self.activate(now, id);
        }
    }

    fn activate(&mut self, now: Instant, id: ChatId) {
        let Some(chat) = self.chats.get_mut(&id) else {
            return;
        };
        chat.state = State::Active;
        chat.last_activity = now;
        tracing::info!(call_id = %chat.call_id, msrp_session = chat.msrp_session_id(), queued = chat.queue.len(), "Chat session up.");
        let queued: Vec<Queued> = chat.queue.drain(..).collect();
        let mut out = Vec::new();
        for q in queued {
            let c = Contents {
                body: match &q.item {
                    Item::Text(t) => Some(t.clone()),
                    Item::State(_) => None,
                },
                state: match &q.item {
                    Item::State(s) => Some(s.clone()),
                    Item::Text(_) => None,
                },
                receipt_request: q.receipt,
            };
            out.extend(outgoing_items(chat, q.stanza, c));
        }
        let bye = chat.bye_after_flush;
        for m in out {
            self.actions.push_back(Action::MsrpSend { id, message: m });
        }
        if bye {
            self.end(id, "The XMPP user has gone.");
        }
    }

    /// The MSRP connection could not be set up, or it broke.
    pub fn handle_msrp_failed(&mut self, now: Instant, id: ChatId) {
        let Some(chat) = self.chats.get(&id) else {
            return;
        };
        match chat.state {
            State::Active => self.end(id, "The MSRP connection ended."),
            State::Inviting | State::Connecting => {
                let Some(mut chat) = self.remove(id) else {
                    return;
                };
                if let Some(d) = chat.dialog.as_mut() {
                    if let Ok(bye) = d.request(Method::Bye) {
                        self.actions.push_back(Action::Bye { id, request: bye });
                    }
                } else if chat.state == State::Inviting {
                    self.actions.push_back(Action::Cancel { id });
                }
                self.actions.push_back(Action::MsrpDrop { id });
                self.fall_back(now, chat, false);
            }
            State::Abandoned => {}
        }
    }

    pub fn handle_msrp_event(&mut self, now: Instant, id: ChatId, event: MsrpEvent) {
        let Some(chat) = self.chats.get_mut(&id) else {
            return;
        };
        match event {
            MsrpEvent::Message(r) => {
                chat.last_activity = now;
                let message_id = r.message_id.clone();
                let stanza = incoming_stanza(chat, r);
                self.actions.push_back(Action::Deliver {
                    id,
                    message_id,
                    stanza,
                });
            }
            MsrpEvent::Delivered { message_id } => {
                if chat.sent.get(&message_id).is_some_and(|s| !s.receipt) {
                    chat.sent.remove(&message_id);
                }
            }
            MsrpEvent::Report {
                message_id, status, ..
            } => {
                let Some(sent) = chat.sent.remove(&message_id) else {
                    return;
                };
                if status.code == 200 {
                    if sent.receipt {
                        let m = receipt(chat, &sent.stanza);
                        self.actions.push_back(Action::Stanza(m));
                    }
                } else {
                    let err = stanza_error_for_sip(status.code, "MSRP failure report");
                    self.bounce_msg(&sent.stanza, err);
                }
            }
            MsrpEvent::Failed {
                message_id,
                failure,
            } => {
                if let Some(sent) = chat.sent.remove(&message_id) {
                    tracing::info!(call_id = %chat.call_id, ?failure, "An MSRP SEND failed; bouncing the message.");
                    self.bounce_msg(&sent.stanza, msrp_error(&failure));
                }
            }
            MsrpEvent::StreamError(e) => {
                tracing::info!(call_id = %chat.call_id, error = %e, "MSRP stream error.");
            }
            other => {
                tracing::debug!(call_id = %chat.call_id, event = ?other, "MSRP event.");
            }
        }
    }

    // ---- SIP -> XMPP ----

    /// An INVITE, BYE, ACK or CANCEL. Returns the response, or `None` for what gets none
    /// (ACK, CANCEL: the transaction layer answered it).
    pub fn handle_sip_request(&mut self, now: Instant, request: &Request) -> Option<Response> {
        let in_dialog = dialog::incoming_key(request).is_some();
        match request.method {
            Method::Invite if !in_dialog => Some(self.incoming_invite(now, request)),
            Method::Invite => Some(self.reinvite(request)),
            Method::Bye => Some(self.incoming_bye(request)),
            Method::Ack => {
                if let Some(id) = self.dialog_of(request) {
                    tracing::debug!(call_id = ?self.ids(id).map(|i| i.0), "ACK for our 200.");
                }
                None
            }
            Method::Cancel => {
                // Our 200 went out at once: nothing is left to cancel (RFC 3261 9.2).
                tracing::debug!("CANCEL after the INVITE was answered; nothing to do.");
                None
            }
            _ => Some(response_to(request, 405, None, "")),
        }
    }

    fn dialog_of(&self, request: &Request) -> Option<ChatId> {
        let call_id = header_value(&request.headers, "Call-ID")?;
        let id = *self.by_call_id.get(&call_id)?;
        self.chats
            .get(&id)?
            .dialog
            .as_ref()?
            .matches(request)
            .then_some(id)
    }

    fn incoming_bye(&mut self, request: &Request) -> Response {
        let Some(id) = self.dialog_of(request) else {
            return response_to(request, 481, None, "");
        };
        if let Some(chat) = self.remove(id) {
            tracing::info!(call_id = %chat.call_id, msrp_session = chat.msrp_session_id(), "BYE from SIP; chat session ended.");
        }
        self.actions.push_back(Action::MsrpClose { id });
        response_to(request, 200, None, "")
    }

    fn reinvite(&mut self, request: &Request) -> Response {
        let Some(id) = self.dialog_of(request) else {
            return response_to(request, 481, None, "");
        };
        let contact = self.contact();
        let Some(chat) = self.chats.get_mut(&id) else {
            return response_to(request, 481, None, "");
        };
        if let Some(d) = chat.dialog.as_mut() {
            if let Err(code) = d.check_request(request) {
                return response_to(request, code, None, "");
            }
        }
        // RFC 3264 8: an offer that keeps an acceptable MSRP line gets our SDP unchanged;
        // anything else (a changed path would need a new connection) gets 488.
        if !request.body.is_empty() {
            let ok = sdp::parse(&request.body)
                .ok()
                .and_then(|s| sdp::accept_offer(&s, chat.local_uri.secure).ok())
                .is_some_and(|n| {
                    chat.negotiated
                        .as_ref()
                        .is_none_or(|old| old.remote_path == n.remote_path)
                });
            if !ok {
                return response_to(request, 488, None, "");
            }
        }
        let mut r = response_to(request, 200, None, "");
        r.headers.push(make_header("Contact", contact));
        r.headers
            .push(make_header("Content-Type", "application/sdp".to_string()));
        r.body = chat.local_sdp.clone().into_bytes();
        r
    }

    fn incoming_invite(&mut self, now: Instant, request: &Request) -> Response {
        let answer = |code: u16| response_to(request, code, None, "");
        let target = match SipAddress::parse(&crate::sip::message::raw_uri(&request.uri))
            .and_then(|a| self.addresses.sip_to_local_user(&a))
        {
            Ok(j) => j,
            Err(e) => {
                tracing::info!(error = %e, "INVITE for an address stox does not serve.");
                return answer(e.sip_status());
            }
        };
        let peer = match header_value(&request.headers, "From")
            .map(|f| dialog::uri_of(&f))
            .ok_or(crate::address::AddressError::Malformed("no From".into()))
            .and_then(|s| SipAddress::parse(&s))
            .and_then(|a| Ok((self.addresses.sip_to_gateway_jid(&a)?, a)))
        {
            Ok(p) => p,
            Err(e) => {
                tracing::info!(error = %e, "INVITE from an address that cannot be mapped.");
                return response_to(request, 400, Some("From cannot be mapped to XMPP"), "");
            }
        };
        let (peer_jid, peer_sip) = peer;
        // RFC 3261 8.2.3: a body of a type stox does not understand gets 415 with the
        // types it does (RFC 4475 3.3.6, invut), not a 488 for an SDP it never saw.
        let content_type = header_value(&request.headers, "Content-Type")
            .or_else(|| header_value(&request.headers, "c"));
        if let Some(ct) = content_type.filter(|_| !request.body.is_empty()) {
            let essence = ct.split(';').next().unwrap_or("").trim();
            if !essence.eq_ignore_ascii_case("application/sdp") {
                tracing::info!(content_type = %ct, "INVITE with a body stox does not understand; 415.");
                let mut r = answer(415);
                r.headers
                    .push(make_header("Accept", "application/sdp".to_string()));
                return r;
            }
        }
        let offer = match sdp::parse(&request.body) {
            Ok(o) => o,
            Err(e) => {
                tracing::info!(error = %e, "INVITE with an SDP that does not parse.");
                return answer(488);
            }
        };
        let neg = match sdp::accept_offer(&offer, self.settings.msrps_port.is_some()) {
            Ok(n) => n,
            Err(e) => {
                tracing::info!(error = %e, "INVITE without acceptable MSRP media; 488.");
                return answer(488);
            }
        };
        let user_bare = bare(&target);
        if self.settings.answer == ChatAnswer::WhenAvailable
            && !self.availability.is_available(&user_bare)
        {
            // RFC 3261 21.4.18: the callee's end system was reached but the callee is not
            // available now; the SIP side falls back to MESSAGE, which goes through the
            // user's server (offline storage included).
            tracing::info!(user = %user_bare, "INVITE for a user not known to be available; 480.");
            return response_to(request, 480, Some("Temporarily Unavailable"), "");
        }
        if self.chats.len() >= self.settings.max_sessions {
            let mut r = answer(503);
            r.headers.push(make_header("Retry-After", "60".to_string()));
            return r;
        }
        if self.count_user(&user_bare) >= self.settings.max_per_user {
            return answer(486);
        }
        let Some(call_id) = header_value(&request.headers, "Call-ID") else {
            return answer(400);
        };
        if self.by_call_id.contains_key(&call_id) {
            return response_to(request, 482, None, "");
        }
        let tag = random_token(10);
        let d = match Dialog::as_uas(request, &tag) {
            Ok(d) => d,
            Err(e) => {
                tracing::info!(error = %e, "INVITE without what a dialog needs.");
                return answer(400);
            }
        };
        let user_sip = match self.addresses.local_user_to_sip(&target) {
            Ok(u) => u,
            Err(e) => return answer(e.sip_status()),
        };
        let (local_uri, media) = self.local_media(neg.tls);
        let local_sdp = sdp::answer(&offer, &media, &neg);
        let session = msrp::Session::new(
            local_uri.clone(),
            neg.remote_path.clone(),
            self.msrp_config(),
        );
        let id = self.next_id;
        self.next_id += 1;
        if neg.connects() {
            let (host, port) = neg.connect_to.clone();
            self.actions.push_back(Action::MsrpConnect {
                id,
                session,
                host,
                port,
                tls: neg.tls,
            });
        } else {
            self.actions.push_back(Action::MsrpExpect { id, session });
        }
        let chat = Chat {
            user: target.clone(),
            user_bare,
            peer: Jid::from(peer_jid.to_bare()),
            peer_bare: bare(&peer_jid),
            user_sip,
            peer_sip,
            call_id: call_id.clone(),
            thread: call_id.clone(),
            state: State::Connecting,
            invite: None,
            dialog: Some(d),
            local_uri,
            local_sdp: local_sdp.clone(),
            negotiated: Some(neg),
            msrp_up: false,
            queue: VecDeque::new(),
            bye_after_flush: false,
            sent: HashMap::new(),
            used_ids: HashSet::new(),
            last_activity: now,
            deadline: now + self.settings.setup_timeout,
        };
        tracing::info!(%call_id, msrp_session = chat.msrp_session_id(), "Chat session from SIP accepted.");
        self.chats.insert(id, chat);
        self.by_call_id.insert(call_id, id);
        // RFC 3261 12.1.1: the 2xx carries the Record-Route, or the ACK and BYE bypass the
        // proxies.
        let mut r = dialog_response_to(request, 200, None, &tag);
        r.headers.push(make_header("Contact", self.contact()));
        r.headers
            .push(make_header("Content-Type", "application/sdp".to_string()));
        r.body = local_sdp.into_bytes();
        r
    }

    // ---- timers ----

    pub fn handle_timeout(&mut self, now: Instant) {
        self.fallback.retain(|_, until| *until > now);
        let idle = self.settings.idle_timeout;
        let due: Vec<(ChatId, State)> = self
            .chats
            .iter()
            .filter(|(_, c)| c.next_deadline(idle) <= now)
            .map(|(id, c)| (*id, c.state))
            .collect();
        for (id, state) in due {
            match state {
                State::Active => self.end(id, "Idle timeout."),
                State::Inviting => {
                    // Keep it until the INVITE ends, so a racing 2xx gets ACK and BYE.
                    let Some(chat) = self.chats.get_mut(&id) else {
                        continue;
                    };
                    tracing::info!(call_id = %chat.call_id, "INVITE not answered in time; CANCEL.");
                    chat.state = State::Abandoned;
                    chat.deadline = now + Duration::from_secs(64);
                    let queue = std::mem::take(&mut chat.queue);
                    let key = chat.key();
                    self.actions.push_back(Action::Cancel { id });
                    self.actions.push_back(Action::MsrpDrop { id });
                    self.fallback
                        .insert(key.clone(), now + self.settings.fallback_for);
                    for q in queue {
                        if matches!(q.item, Item::Text(_)) {
                            self.actions.push_back(Action::Pager {
                                key: key.clone(),
                                message: q.stanza,
                            });
                        }
                    }
                }
                State::Connecting => {
                    let Some(mut chat) = self.remove(id) else {
                        continue;
                    };
                    tracing::info!(call_id = %chat.call_id, "MSRP connection not up in time.");
                    if let Some(d) = chat.dialog.as_mut() {
                        if let Ok(bye) = d.request(Method::Bye) {
                            self.actions.push_back(Action::Bye { id, request: bye });
                        }
                    }
                    self.actions.push_back(Action::MsrpDrop { id });
                    self.fall_back(now, chat, true);
                }
                State::Abandoned => {
                    self.remove(id);
                }
            }
        }
    }
}

fn enqueue(chat: &mut Chat, msg: Message, c: Contents) {
    let item = match (c.body, c.state) {
        (Some(b), _) => Item::Text(b),
        (None, Some(s)) if s != ChatState::Gone => Item::State(s),
        _ => return,
    };
    chat.queue.push_back(Queued {
        stanza: msg,
        item,
        receipt: c.receipt_request,
    });
}

/// A unique MSRP id from the stanza id when it is a usable one (RFC 7573 section 7).
fn ids_for(chat: &mut Chat, stanza_id: Option<&str>) -> (MessageId, Option<TransactionId>) {
    if let Some(s) = stanza_id {
        if !chat.used_ids.contains(s) {
            if let Some(mid) = MessageId::new(s) {
                if chat.used_ids.len() < MAX_TRACKED {
                    chat.used_ids.insert(s.to_string());
                }
                return (mid, TransactionId::new(s));
            }
        }
    }
    loop {
        if let Some(mid) = MessageId::new(random_token(16)) {
            return (mid, None);
        }
    }
}

/// The SENDs for one of the user's messages: its body, then its chat state when the
/// message has no body (a state with a body is implied by the message, XEP-0085 5.2).
fn outgoing_items(chat: &mut Chat, stanza: Message, c: Contents) -> Vec<Outgoing> {
    let Some(neg) = chat.negotiated.clone() else {
        return Vec::new();
    };
    let wrap = !neg.plain;
    let (payload_type, payload): (&str, Vec<u8>) = match (&c.body, &c.state) {
        (Some(b), _) => ("text/plain;charset=UTF-8", b.clone().into_bytes()),
        (None, Some(s)) => {
            if !neg.iscomposing {
                return Vec::new();
            }
            let Some(st) = iscomposing::xmpp_to_sip(s) else {
                return Vec::new();
            };
            let mut ic = IsComposing::new(st);
            if st == iscomposing::State::Active {
                ic.refresh = Some(COMPOSING_REFRESH);
                ic.contenttype = Some("text/plain".into());
            }
            (iscomposing::CONTENT_TYPE, ic.to_xml().into_bytes())
        }
        (None, None) => return Vec::new(),
    };
    let (content_type, body) = if wrap {
        let from = cpim::Address::new(None, &im_uri(&chat.user_sip));
        let to = cpim::Address::new(None, &im_uri(&chat.peer_sip));
        (
            "message/cpim".to_string(),
            cpim::wrap(&from, &to, None, payload_type, &payload),
        )
    } else {
        (payload_type.to_string(), payload)
    };
    let is_text = c.body.is_some();
    let (mid, tid) = ids_for(chat, stanza.id.as_ref().map(|i| i.0.as_str()));
    let mut out = Outgoing::new(content_type, Bytes::from(body));
    out.message_id = Some(mid.clone());
    out.transaction_id = tid;
    out.success_report = is_text && c.receipt_request;
    if is_text && chat.sent.len() < MAX_TRACKED {
        chat.sent.insert(
            mid,
            Sent {
                stanza,
                receipt: c.receipt_request,
            },
        );
    }
    vec![out]
}

fn im_uri(a: &SipAddress) -> String {
    match &a.user {
        Some(u) => format!("im:{u}@{}", a.host),
        None => format!("im:{}", a.host),
    }
}

/// An MSRP message from the SIP user as a type=chat stanza (RFC 7573 section 6).
fn incoming_stanza(chat: &Chat, r: Received) -> Option<Message> {
    let essence = |ct: &str| {
        ct.split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase()
    };
    let (ct, body) = if essence(&r.content_type) == "message/cpim" {
        match Cpim::parse(&r.body) {
            Ok(c) => (
                c.content_type().unwrap_or("text/plain").to_string(),
                c.body.clone(),
            ),
            Err(e) => {
                tracing::info!(call_id = %chat.call_id, error = %e, "CPIM that does not parse; dropped.");
                return None;
            }
        }
    } else {
        (r.content_type.clone(), r.body.clone())
    };
    let mut m = Message::new(Some(chat.user.clone()));
    m.from = Some(chat.peer.clone());
    m.type_ = MessageType::Chat;
    m.id = Some(xmpp_parsers::message::Id(r.transaction_id.to_string()));
    m.thread = Some(Thread {
        parent: None,
        id: xml_safe(&chat.thread).into_owned(),
    });
    match essence(&ct).as_str() {
        "text/plain" => {
            let text = String::from_utf8_lossy(&body);
            m.bodies
                .insert(String::new().into(), xml_safe(&text).into_owned());
            m.payloads.push(ChatState::Active.into());
        }
        iscomposing::CONTENT_TYPE => {
            let ic = IsComposing::parse(&String::from_utf8_lossy(&body)).ok()?;
            m.id = None;
            m.payloads.push(iscomposing::sip_to_xmpp(ic.state).into());
        }
        other => {
            tracing::debug!(call_id = %chat.call_id, content_type = other, "MSRP content not carried to XMPP.");
            return None;
        }
    }
    Some(m)
}

/// XEP-0184: `<received id=.../>` for the stanza the peer reported delivered.
fn receipt(chat: &Chat, original: &Message) -> Message {
    let mut m = Message::new(Some(original.from.clone().unwrap_or(chat.user.clone())));
    m.from = Some(original.to.clone().unwrap_or(chat.peer.clone()));
    m.type_ = MessageType::Chat;
    m.payloads.push(
        xmpp_parsers::receipts::Received {
            id: original
                .id
                .as_ref()
                .map(|i| i.0.clone())
                .unwrap_or_default(),
        }
        .into(),
    );
    m
}

#[cfg(test)]
mod tests;
