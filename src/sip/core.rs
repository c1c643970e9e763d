//! The transaction layer of stox's SIP user agent, sans-IO.
//!
//! ```text
//!            handle_message / handle_reject / handle_timeout / handle_transport_error
//!   bytes ->  [ SipCore: transaction tables (RFC 3261 17), Via/rport (18, RFC 3581) ] -> poll_output()
//!            send_request / respond (from the transaction user)       Transmit | Event
//! ```
//!
//! The driver (`endpoint`) owns the sockets and the clock: after every input it drains
//! `poll_output()` and sleeps until `poll_timeout()`. Tests drive it with a virtual clock.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};

/// The transaction tables: foldhash with a per-process random seed, several times cheaper
/// than SipHash on these short keys and still seeded against chosen-key collisions.
type Map<K, V> = HashMap<K, V, foldhash::fast::RandomState>;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::Rng;
use rsipstack::sip::prelude::HeadersExt;
use rsipstack::sip::{typed, Header, Method, Request, Response, SipMessage};

use super::locate::{Target, Transport};
use super::message::{self, first_list_value, Echo, Reject};
use super::transaction::{
    ClientInvite, ClientNonInvite, ClientState, ClientTimer, InviteResponse, ServerInvite,
    ServerInviteTimer, ServerNonInvite, ServerState, Timers,
};

/// RFC 3261 18.1.1: a request within 200 bytes of a 1500-byte MTU goes over TCP.
pub const UDP_REQUEST_LIMIT: usize = 1300;

/// A stream connection, as numbered by the driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

/// Where a message came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Source {
    pub transport: Transport,
    pub remote: SocketAddr,
    pub local: SocketAddr,
    /// The connection it came on (stream transports).
    pub conn: Option<ConnId>,
}

/// A listener of ours, and the sent-by we write in Via for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Local {
    pub transport: Transport,
    pub addr: SocketAddr,
    pub sent_by: String,
}

/// Bytes to put on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    pub transport: Transport,
    pub to: SocketAddr,
    /// Send on this connection if it is still open; otherwise connect to `to`.
    pub conn: Option<ConnId>,
    /// The local address to send from (UDP), when it matters.
    pub from: Option<SocketAddr>,
    pub bytes: Bytes,
    /// The client transaction this carries, so a failure to connect can be reported.
    pub client: Option<u64>,
    /// The target's host name (`Target::server_name`), for the certificate check of a new
    /// TLS connection; `None` for responses, which only go back on their connection.
    pub server_name: Option<String>,
}

/// Identifies a server transaction to the transaction user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ServerTxId(u64);

/// Why a client transaction failed without a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Timer F (or B): no final response in 64*T1.
    Timeout,
    /// The transport could not deliver the request.
    Transport,
}

#[derive(Debug)]
pub enum Event {
    /// A new request for the transaction user; answer it with `respond(id, ..)`.
    Request {
        id: ServerTxId,
        request: Request,
        source: Source,
    },
    /// A response to the request the TU sent with this token.
    Response { token: u64, response: Response },
    /// The request sent with this token got no final response.
    Failed { token: u64, failure: Failure },
    /// The ACK for a 2xx to an INVITE (end to end, so it is matched by dialog, not branch).
    Ack { request: Request, source: Source },
    /// The peer cancelled an INVITE before its final response; the INVITE got 487.
    /// `id` is the INVITE's server transaction (a later `respond` on it is ignored).
    Cancelled {
        id: ServerTxId,
        request: Request,
        source: Source,
    },
    /// A 2xx to an INVITE never got its ACK (64*T1): the dialog should end with BYE
    /// (RFC 3261 13.3.1.4).
    AckTimeout { call_id: String },
    /// The client INVITE transaction sent with this token has ended (no more 2xx).
    Ended { token: u64 },
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct ServerKey {
    branch: String,
    sent_by: String,
    method: Method,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct ClientKey {
    branch: String,
    method: String,
}

enum ServerMachine {
    NonInvite(ServerNonInvite),
    Invite(ServerInvite),
}

/// What RFC 3261 8.2.2.2 compares to find a merged request: From tag, Call-ID, CSeq.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct MergeKey {
    from_tag: String,
    call_id: String,
    cseq: u32,
    method: Method,
}

struct ServerTx {
    key: ServerKey,
    /// Out-of-dialog requests only: how a copy of this request on another path is found.
    merge: Option<MergeKey>,
    machine: ServerMachine,
    /// INVITE with a 2xx sent: (Call-ID, CSeq number), how its ACK is found.
    accepted: Option<(String, u32)>,
    /// Where responses go (RFC 3261 18.2.2, RFC 3581).
    reply: Transmit,
    to_tag: String,
    scheduled: Option<Instant>,
}

enum ClientMachine {
    NonInvite(ClientNonInvite),
    Invite(ClientInvite),
}

impl ClientMachine {
    fn is_terminated(&self) -> bool {
        match self {
            ClientMachine::NonInvite(m) => m.is_terminated(),
            ClientMachine::Invite(m) => m.is_terminated(),
        }
    }

    fn state(&self) -> ClientState {
        match self {
            ClientMachine::NonInvite(m) => m.state(),
            ClientMachine::Invite(m) => m.state(),
        }
    }

    fn deadline(&self) -> Option<Instant> {
        match self {
            ClientMachine::NonInvite(m) => m.deadline(),
            ClientMachine::Invite(m) => m.deadline(),
        }
    }

    fn on_timer(&mut self, now: Instant) -> ClientTimer {
        match self {
            ClientMachine::NonInvite(m) => m.on_timer(now),
            ClientMachine::Invite(m) => m.on_timer(now),
        }
    }

    fn on_transport_error(&mut self) {
        match self {
            ClientMachine::NonInvite(m) => m.on_transport_error(),
            ClientMachine::Invite(m) => m.on_transport_error(),
        }
    }
}

struct ClientTx {
    key: ClientKey,
    token: u64,
    machine: ClientMachine,
    transmit: Transmit,
    scheduled: Option<Instant>,
    /// INVITE only: the request as sent (our Via on top), for its ACK and CANCEL.
    invite: Option<Request>,
    /// INVITE only: the ACK for a non-2xx final, sent again on its retransmissions.
    ack: Option<Bytes>,
    /// INVITE only: the TU cancelled before any provisional response (RFC 3261 9.1).
    cancel_pending: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum TxRef {
    Server(u64),
    Client(u64),
}

/// Counts for the operator and the benchmarks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    pub server_transactions: usize,
    pub client_transactions: usize,
}

pub struct SipCore {
    timers: Timers,
    locals: Vec<Local>,
    max_message_size: usize,
    /// Server transactions held at once; beyond it a new request gets a stateless 503.
    max_servers: usize,
    next_id: u64,
    /// Boxed: a map entry of its own size would leave ~40 % of a 500-byte struct unused
    /// per slot at the map's usual load, for the 32 s of timer J.
    servers: Map<u64, Box<ServerTx>>,
    server_keys: Map<ServerKey, u64>,
    /// Boxed like `servers`: a table that doubles under a burst keeps its room, and empty
    /// slots then cost a pointer, not a whole transaction.
    clients: Map<u64, Box<ClientTx>>,
    client_keys: Map<ClientKey, u64>,
    /// INVITE server transactions whose 2xx awaits (or got) its ACK, by (Call-ID, CSeq).
    accepted: Map<(String, u32), u64>,
    /// Live server transactions of out-of-dialog requests, for loop detection (8.2.2.2).
    merged: Map<MergeKey, u64>,
    wakeups: BinaryHeap<Reverse<(Instant, TxRef)>>,
    /// Origin of the [`LINGER_GRID`].
    epoch: Instant,
    transmits: VecDeque<Transmit>,
    events: VecDeque<Event>,
}

/// Cleanup timers (J, K, D, I: a finished transaction only waits to be forgotten) are
/// rounded up to this grid, so one wakeup ends many transactions instead of one wakeup
/// each. They are minimum lifetimes, so ending a few ms later keeps RFC 3261.
const LINGER_GRID: Duration = Duration::from_millis(100);

/// `at` rounded up to the next multiple of [`LINGER_GRID`] after `epoch`.
fn on_grid(epoch: Instant, at: Instant) -> Instant {
    let grid = LINGER_GRID.as_nanos();
    let since = at.saturating_duration_since(epoch).as_nanos();
    let steps = since.div_ceil(grid);
    epoch + Duration::from_nanos((steps * grid) as u64)
}

/// RFC 3261 8.1.1.7: the magic cookie marks an RFC 3261 branch.
const MAGIC_COOKIE: &str = "z9hG4bK";

pub fn random_token(len: usize) -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    (0..len)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

impl SipCore {
    pub fn new(timers: Timers, locals: Vec<Local>, max_message_size: usize) -> Self {
        SipCore {
            timers,
            locals,
            max_message_size,
            max_servers: usize::MAX,
            next_id: 1,
            servers: Map::default(),
            server_keys: Map::default(),
            clients: Map::default(),
            client_keys: Map::default(),
            accepted: Map::default(),
            merged: Map::default(),
            wakeups: BinaryHeap::new(),
            epoch: Instant::now(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    /// Caps the server-transaction table (`sip.max_server_transactions`). Answered
    /// transactions count until their last timer ends: over UDP they hold their answer for
    /// timer J (64*T1), and that is what a flood fills.
    pub fn with_max_server_transactions(mut self, max: usize) -> Self {
        self.max_servers = max.max(1);
        self
    }

    pub fn stats(&self) -> Stats {
        Stats {
            server_transactions: self.servers.len(),
            client_transactions: self.clients.len(),
        }
    }

    /// Entries in every table and queue the core keeps (transactions, their indexes,
    /// pending wakeups, undrained output): all zero once every timer has fired and the
    /// output was drained, however many transactions went through.
    pub fn held(&self) -> usize {
        self.servers.len()
            + self.server_keys.len()
            + self.clients.len()
            + self.client_keys.len()
            + self.accepted.len()
            + self.merged.len()
            + self.wakeups.len()
            + self.transmits.len()
            + self.events.len()
    }

    pub fn locals(&self) -> &[Local] {
        &self.locals
    }

    pub fn timers(&self) -> Timers {
        self.timers
    }

    fn id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    // ----- inputs -----

    /// A parsed message from the network.
    pub fn handle_message(&mut self, now: Instant, message: SipMessage, source: Source) {
        match message {
            SipMessage::Request(r) => self.handle_request(now, r, source),
            SipMessage::Response(r) => self.handle_response(now, r),
        }
    }

    /// Bytes that did not parse: answer them when they were a request we can route a reply to.
    pub fn handle_reject(&mut self, reject: &Reject, source: Source) {
        let Reject::Answer {
            status,
            reason,
            echo,
            ..
        } = reject
        else {
            return;
        };
        let Some(reply) = reply_route(echo, &source) else {
            tracing::debug!(remote = %source.remote, %status, %reason, "Cannot answer a malformed request: no usable Via.");
            return;
        };
        let extra: &[(&str, &str)] = if matches!(status, 405 | 501) {
            &[("Allow", message::ALLOW)]
        } else {
            &[]
        };
        let bytes = message::raw_response(echo, *status, reason, &random_token(10), extra);
        self.transmits.push_back(Transmit {
            bytes: Bytes::from(bytes),
            ..reply
        });
    }

    fn handle_request(&mut self, now: Instant, mut request: Request, source: Source) {
        let Some(top) = request
            .via_header()
            .ok()
            .and_then(|v| typed::Via::parse(first_list_value(v.value())).ok())
        else {
            return; // checked by message::parse; unreachable for parsed requests
        };
        let branch = top.branch().map(|b| b.to_string()).unwrap_or_default();
        let sent_by = top.sent_by().to_string();
        stamp_received(&mut request, &source);
        let reply = match reply_route_for(&request, &source) {
            Some(r) => r,
            None => return,
        };

        if request.method == Method::Ack {
            let key = ServerKey {
                branch,
                sent_by,
                method: Method::Invite,
            };
            // The ACK for a non-2xx shares the INVITE's branch (17.2.3); the ACK for a 2xx
            // is its own transaction and is found by Call-ID and CSeq (some peers reuse
            // the branch anyway, so Accepted is checked either way).
            let id = self
                .server_keys
                .get(&key)
                .copied()
                .filter(|id| {
                    self.servers.get(id).is_some_and(|tx| {
                        matches!(&tx.machine, ServerMachine::Invite(m) if m.state() != ServerState::Accepted)
                    })
                });
            if let Some(id) = id {
                if let Some(ServerTx {
                    machine: ServerMachine::Invite(m),
                    ..
                }) = self.servers.get_mut(&id).map(|t| &mut **t)
                {
                    m.on_ack(now);
                }
                self.reschedule(TxRef::Server(id));
                return;
            }
            let Some(dialog_key) = call_id_and_cseq(&request) else {
                return;
            };
            let Some(id) = self.accepted.get(&dialog_key).copied() else {
                tracing::debug!(call_id = %dialog_key.0, "ACK for no pending 2xx; dropped.");
                return;
            };
            let fresh = match self.servers.get_mut(&id).map(|t| &mut **t) {
                Some(ServerTx {
                    machine: ServerMachine::Invite(m),
                    ..
                }) => m.on_ack_2xx(),
                _ => false,
            };
            self.reschedule(TxRef::Server(id));
            if fresh {
                self.events.push_back(Event::Ack { request, source });
            }
            return;
        }

        let key = ServerKey {
            branch: branch.clone(),
            sent_by,
            method: request.method,
        };
        // Requests from RFC 2543 peers have no usable branch: they get no retransmission
        // matching, but are still answered.
        let matchable = branch.starts_with(MAGIC_COOKIE);
        if matchable {
            if let Some(id) = self.server_keys.get(&key).copied() {
                if let Some(tx) = self.servers.get(&id) {
                    let again = match &tx.machine {
                        ServerMachine::NonInvite(m) => m.on_retransmission(),
                        ServerMachine::Invite(m) => m.on_retransmission(),
                    };
                    if let Some(bytes) = again {
                        self.transmits.push_back(Transmit {
                            bytes,
                            ..tx.reply.clone()
                        });
                    }
                }
                return;
            }
        }

        if self.servers.len() >= self.max_servers {
            // The table is full: 503 with Retry-After (RFC 3261 21.5.4), stateless, so the
            // refusal itself holds nothing. Its retransmissions are refused again.
            self.refuse_full(&request, reply);
            return;
        }

        if request.method == Method::Cancel {
            // RFC 3261 9.2: the CANCEL gets 200 when its INVITE is known (481 otherwise) in
            // a transaction of its own; an INVITE still without a final response gets 487.
            let invite = ServerKey {
                method: Method::Invite,
                ..key.clone()
            };
            let invite_id = self.server_keys.get(&invite).copied();
            let status = if invite_id.is_some() { 200 } else { 481 };
            let id = self.id();
            let reliable = source.transport.is_reliable();
            if matchable {
                self.server_keys.insert(key.clone(), id);
            }
            self.servers.insert(
                id,
                Box::new(ServerTx {
                    key,
                    merge: None,
                    machine: ServerMachine::NonInvite(ServerNonInvite::new(
                        now,
                        reliable,
                        self.timers,
                    )),
                    accepted: None,
                    reply,
                    to_tag: random_token(10),
                    scheduled: None,
                }),
            );
            let answer = message::response_to(&request, status, None, "");
            self.respond(now, ServerTxId(id), answer);
            if let Some(invite_id) = invite_id {
                let pending = matches!(
                    self.servers.get(&invite_id).map(|t| &t.machine),
                    Some(ServerMachine::Invite(m)) if m.state() == ServerState::Proceeding
                );
                if pending {
                    let terminated = message::response_to(&request, 487, None, "");
                    let mut terminated = terminated;
                    for h in terminated.headers.iter_mut() {
                        if let Header::CSeq(c) = h {
                            let n = c
                                .value()
                                .split_whitespace()
                                .next()
                                .unwrap_or("1")
                                .to_string();
                            *c = rsipstack::sip::CSeq::new(format!("{n} INVITE"));
                        }
                    }
                    self.respond(now, ServerTxId(invite_id), terminated);
                    self.events.push_back(Event::Cancelled {
                        id: ServerTxId(invite_id),
                        request,
                        source,
                    });
                }
            }
            return;
        }

        let reliable = source.transport.is_reliable();
        let machine = if request.method == Method::Invite {
            ServerMachine::Invite(ServerInvite::new(now, reliable, self.timers))
        } else {
            ServerMachine::NonInvite(ServerNonInvite::new(now, reliable, self.timers))
        };
        let is_invite = request.method == Method::Invite;
        // 8.2.2.2: only requests outside a dialog (no To tag) can be merged, and only
        // RFC 3261 branches tell a copy on another path from a retransmission.
        let merge = merge_key(&request).filter(|_| matchable);
        let looped = merge.as_ref().is_some_and(|m| self.merged.contains_key(m));
        let id = self.id();
        if matchable {
            self.server_keys.insert(key.clone(), id);
        }
        let merge = match merge {
            Some(m) if !looped => {
                self.merged.insert(m.clone(), id);
                Some(m)
            }
            _ => None,
        };
        self.servers.insert(
            id,
            Box::new(ServerTx {
                key,
                merge,
                machine,
                accepted: None,
                reply,
                to_tag: random_token(10),
                scheduled: None,
            }),
        );
        if is_invite {
            // 17.2.1: 100 Trying at once, so the client stops retransmitting (timer A).
            let trying = message::response_to(&request, 100, None, "");
            self.respond(now, ServerTxId(id), trying);
        }
        self.reschedule(TxRef::Server(id));
        if let Some(answer) = screen(&request, looped) {
            // Answered in its own transaction, so its retransmissions get the same answer.
            tracing::debug!(method = %request.method, status = answer.status_code.code(), "Request refused by the UAS core checks.");
            self.respond(now, ServerTxId(id), answer);
            return;
        }
        self.events.push_back(Event::Request {
            id: ServerTxId(id),
            request,
            source,
        });
    }

    fn refuse_full(&mut self, request: &Request, reply: Transmit) {
        tracing::debug!(method = %request.method, held = self.servers.len(), "sip.max_server_transactions reached: answering 503.");
        let mut answer = message::response_to(request, 503, None, &random_token(10));
        // About when timer J (64*T1) has freed the slots a burst took.
        let retry = (self.timers.t1 * 64).as_secs().max(1);
        answer
            .headers
            .push(Header::RetryAfter(rsipstack::sip::RetryAfter::new(
                retry.to_string(),
            )));
        let mut msg = SipMessage::Response(answer);
        let bytes = Bytes::from(message::to_bytes(&mut msg));
        self.transmits.push_back(Transmit { bytes, ..reply });
    }

    fn handle_response(&mut self, now: Instant, response: Response) {
        let Some(branch) = response
            .via_header()
            .ok()
            .and_then(|v| typed::Via::parse(first_list_value(v.value())).ok())
            .and_then(|v| v.branch().map(|b| b.to_string()))
        else {
            return;
        };
        let Some(method) = response
            .cseq_header()
            .ok()
            .and_then(|c| c.value().split_whitespace().nth(1).map(str::to_string))
        else {
            return;
        };
        let key = ClientKey { branch, method };
        let Some(id) = self.client_keys.get(&key).copied() else {
            tracing::debug!(branch = %key.branch, "Stray response: no matching client transaction.");
            return;
        };
        let status = response.status_code.code();
        let Some(tx) = self.clients.get_mut(&id) else {
            return;
        };
        let mut send_cancel = None;
        match &mut tx.machine {
            ClientMachine::NonInvite(m) => {
                if m.on_response(now, status) {
                    self.events.push_back(Event::Response {
                        token: tx.token,
                        response,
                    });
                }
            }
            ClientMachine::Invite(m) => match m.on_response(now, status) {
                InviteResponse::Pass => {
                    if status < 200 && tx.cancel_pending {
                        tx.cancel_pending = false;
                        send_cancel = tx.invite.clone().map(|i| (i, tx.transmit.clone()));
                    }
                    self.events.push_back(Event::Response {
                        token: tx.token,
                        response,
                    });
                }
                InviteResponse::PassAndAck => {
                    if let Some(invite) = &tx.invite {
                        let mut ack = SipMessage::Request(ack_for_failure(invite, &response));
                        let bytes = Bytes::from(message::to_bytes(&mut ack));
                        tx.ack = Some(bytes.clone());
                        self.transmits.push_back(Transmit {
                            bytes,
                            client: None,
                            ..tx.transmit.clone()
                        });
                    }
                    self.events.push_back(Event::Response {
                        token: tx.token,
                        response,
                    });
                }
                InviteResponse::Ack => {
                    if let Some(bytes) = &tx.ack {
                        self.transmits.push_back(Transmit {
                            bytes: bytes.clone(),
                            client: None,
                            ..tx.transmit.clone()
                        });
                    }
                }
                InviteResponse::Absorb => {}
            },
        }
        self.reschedule(TxRef::Client(id));
        if let Some((invite, transmit)) = send_cancel {
            self.start_cancel(now, &invite, transmit);
        }
    }

    /// Cancels the INVITE sent with `token` (RFC 3261 9.1): at once if a provisional
    /// response came, else as soon as one does. A final response makes it moot.
    pub fn cancel(&mut self, now: Instant, token: u64) {
        let Some(tx) = self.clients.values_mut().find(|t| t.token == token) else {
            return;
        };
        let ClientMachine::Invite(m) = &tx.machine else {
            return;
        };
        if m.is_proceeding() {
            if let Some(invite) = tx.invite.clone() {
                let transmit = tx.transmit.clone();
                self.start_cancel(now, &invite, transmit);
            }
        } else if m.state() == ClientState::Trying {
            tx.cancel_pending = true;
        }
    }

    fn start_cancel(&mut self, now: Instant, invite: &Request, transmit: Transmit) {
        let mut cancel = SipMessage::Request(cancel_for(invite));
        let bytes = Bytes::from(message::to_bytes(&mut cancel));
        let SipMessage::Request(cancel) = cancel else {
            return;
        };
        let branch = top_branch(&cancel).unwrap_or_default();
        // Its responses are the core's own: token 0 reaches no TU.
        let target = Target {
            transport: transmit.transport,
            addr: transmit.to,
            server_name: transmit.server_name.unwrap_or_default(),
        };
        self.start_client(now, cancel, branch, bytes, target, 0);
    }

    /// Sends a request outside any transaction (the ACK for a 2xx, RFC 3261 13.2.2.4):
    /// a new branch, no retransmission.
    pub fn send_stateless(&mut self, mut request: Request, target: Target) -> bool {
        let Some(local) = self.local_for(target.transport, target.addr) else {
            return false;
        };
        let branch = format!("{MAGIC_COOKIE}{}", random_token(16));
        stamp_via(&mut request, target.transport, &local.sent_by, &branch);
        let from = Some(local.addr);
        let mut msg = SipMessage::Request(request);
        self.transmits.push_back(Transmit {
            transport: target.transport,
            to: target.addr,
            conn: None,
            from,
            bytes: Bytes::from(message::to_bytes(&mut msg)),
            client: None,
            server_name: Some(target.server_name),
        });
        true
    }

    /// The driver could not deliver bytes for this client transaction (connect or write failed).
    /// Whether the client transaction `client` is still held.
    pub fn has_client(&self, client: u64) -> bool {
        self.clients.contains_key(&client)
    }

    pub fn handle_transport_error(&mut self, client: u64) {
        if let Some(tx) = self.clients.get_mut(&client) {
            if !tx.machine.is_terminated() && tx.machine.state() != ClientState::Completed {
                tx.machine.on_transport_error();
                self.events.push_back(Event::Failed {
                    token: tx.token,
                    failure: Failure::Transport,
                });
            }
            self.reschedule(TxRef::Client(client));
        }
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(Reverse((at, r))) = self.wakeups.peek().copied() {
            if at > now {
                break;
            }
            self.wakeups.pop();
            match r {
                TxRef::Server(id) => {
                    let Some(tx) = self.servers.get_mut(&id) else {
                        continue;
                    };
                    if tx.scheduled != Some(at) {
                        continue; // superseded
                    }
                    tx.scheduled = None;
                    match &mut tx.machine {
                        ServerMachine::NonInvite(m) => m.on_timer(now),
                        ServerMachine::Invite(m) => match m.on_timer(now) {
                            ServerInviteTimer::Retransmit(bytes) => {
                                self.transmits.push_back(Transmit {
                                    bytes,
                                    ..tx.reply.clone()
                                })
                            }
                            ServerInviteTimer::NoAck => {
                                tracing::debug!(branch = %tx.key.branch, "No ACK for a final response to INVITE (timer H or L).");
                                if let Some((call_id, _)) = &tx.accepted {
                                    self.events.push_back(Event::AckTimeout {
                                        call_id: call_id.clone(),
                                    });
                                }
                            }
                            ServerInviteTimer::Idle => {}
                        },
                    }
                }
                TxRef::Client(id) => {
                    let Some(tx) = self.clients.get_mut(&id) else {
                        continue;
                    };
                    if tx.scheduled != Some(at) {
                        continue;
                    }
                    tx.scheduled = None;
                    match tx.machine.on_timer(now) {
                        ClientTimer::Retransmit => self.transmits.push_back(tx.transmit.clone()),
                        ClientTimer::Timeout => self.events.push_back(Event::Failed {
                            token: tx.token,
                            failure: Failure::Timeout,
                        }),
                        ClientTimer::Idle => {}
                    }
                }
            }
            self.reschedule(r);
        }
        self.compact();
    }

    /// Gives back table space after a burst: a map keeps its capacity when emptied, so
    /// without this a peak of transactions would stay allocated for good.
    fn compact(&mut self) {
        fn shrink<K: std::hash::Hash + Eq, V>(m: &mut Map<K, V>) {
            if m.capacity() > 1024 && m.len() * 4 < m.capacity() {
                m.shrink_to(m.len() * 2);
            }
        }
        shrink(&mut self.servers);
        shrink(&mut self.server_keys);
        shrink(&mut self.clients);
        shrink(&mut self.client_keys);
        shrink(&mut self.accepted);
        shrink(&mut self.merged);
        if self.wakeups.capacity() > 1024 && self.wakeups.len() * 4 < self.wakeups.capacity() {
            self.wakeups.shrink_to(self.wakeups.len() * 2);
        }
    }

    // ----- from the transaction user -----

    /// Sends `request` (without a Via of ours) to `target` in a new client transaction.
    /// Events for it carry `token`. Returns false when no listener can send it.
    pub fn send_request(
        &mut self,
        now: Instant,
        mut request: Request,
        mut target: Target,
        token: u64,
    ) -> bool {
        let has_tcp = self.locals.iter().any(|l| l.transport == Transport::Tcp);
        let mut bytes = Vec::new();
        let mut branch = String::new();
        for attempt in 0..2 {
            let Some(local) = self.local_for(target.transport, target.addr) else {
                return false;
            };
            branch = format!("{MAGIC_COOKIE}{}", random_token(16));
            let sent_by = local.sent_by.clone();
            stamp_via(&mut request, target.transport, &sent_by, &branch);
            let mut msg = SipMessage::Request(request.clone());
            bytes = message::to_bytes(&mut msg);
            if attempt == 0
                && target.transport == Transport::Udp
                && bytes.len() > UDP_REQUEST_LIMIT
                && has_tcp
            {
                target.transport = Transport::Tcp;
                continue;
            }
            break;
        }
        self.start_client(now, request, branch, Bytes::from(bytes), target, token);
        true
    }

    /// Opens the client transaction of a request that already carries its Via.
    fn start_client(
        &mut self,
        now: Instant,
        request: Request,
        branch: String,
        bytes: Bytes,
        target: Target,
        token: u64,
    ) {
        let (to, transport) = (target.addr, target.transport);
        let from = self.local_for(transport, to).map(|l| l.addr);
        let id = self.id();
        let transmit = Transmit {
            transport,
            to,
            conn: None,
            from,
            bytes,
            client: Some(id),
            server_name: Some(target.server_name),
        };
        let key = ClientKey {
            branch,
            method: request.method.to_string(),
        };
        let reliable = transport.is_reliable();
        let (machine, invite) = if request.method == Method::Invite {
            (
                ClientMachine::Invite(ClientInvite::new(now, reliable, self.timers)),
                Some(request),
            )
        } else {
            (
                ClientMachine::NonInvite(ClientNonInvite::new(now, reliable, self.timers)),
                None,
            )
        };
        self.client_keys.insert(key.clone(), id);
        self.clients.insert(
            id,
            Box::new(ClientTx {
                key,
                token,
                machine,
                transmit: transmit.clone(),
                scheduled: None,
                invite,
                ack: None,
                cancel_pending: false,
            }),
        );
        self.transmits.push_back(transmit);
        self.reschedule(TxRef::Client(id));
    }

    /// Answers the request of server transaction `id`. A missing To tag is added.
    pub fn respond(&mut self, now: Instant, id: ServerTxId, mut response: Response) {
        let Some(tx) = self.servers.get_mut(&id.0) else {
            tracing::debug!("Response for a transaction that has ended; dropped.");
            return;
        };
        let status = response.status_code.code();
        for h in response.headers.iter_mut() {
            if let Header::To(t) = h {
                if status == 100 {
                    continue; // 8.2.6.2: a 100 needs no tag, and makes no dialog
                }
                // A tag the TU chose is the transaction's from then on, so what the core
                // answers itself later (487 after CANCEL) is in the same (early) dialog.
                match super::dialog::header_param(t.value(), "tag") {
                    Some(tag) if !tag.is_empty() => tx.to_tag = tag,
                    _ => *t = rsipstack::sip::To::new(message::to_with_tag(t.value(), &tx.to_tag)),
                }
            }
        }
        let accepted = match (&tx.machine, status) {
            (ServerMachine::Invite(m), 200..=299) if m.state() == ServerState::Proceeding => {
                call_id_and_cseq_of(&response.headers)
            }
            _ => None,
        };
        let mut msg = SipMessage::Response(response);
        let mut bytes = message::to_bytes(&mut msg);
        // The transaction keeps these bytes until timer J (32 s over UDP): no spare capacity.
        bytes.shrink_to_fit();
        let bytes = Bytes::from(bytes);
        if bytes.len() > self.max_message_size {
            tracing::warn!(len = bytes.len(), "Response over the size limit; not sent.");
            return;
        }
        let ok = match &mut tx.machine {
            ServerMachine::NonInvite(m) => m.on_respond(now, status, bytes.clone()),
            ServerMachine::Invite(m) => m.on_respond(now, status, bytes.clone()),
        };
        if ok {
            if status >= 200 && matches!(tx.machine, ServerMachine::NonInvite(_)) {
                // Completed: only retransmissions of the stored response go out from now
                // on, so the tag is not needed for the rest of timer J.
                tx.to_tag = String::new();
            }
            self.transmits.push_back(Transmit {
                bytes,
                ..tx.reply.clone()
            });
            if let Some(k) = accepted {
                tx.accepted = Some(k.clone());
                self.accepted.insert(k, id.0);
            }
        }
        self.reschedule(TxRef::Server(id.0));
    }

    /// The To tag this server transaction puts in its responses.
    pub fn to_tag(&self, id: ServerTxId) -> Option<&str> {
        self.servers.get(&id.0).map(|t| t.to_tag.as_str())
    }

    // ----- outputs -----

    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// The next real deadline. Superseded wakeups at the head of the heap (a timer E whose
    /// response came) are dropped here, so the driver never wakes for them.
    pub fn poll_timeout(&mut self) -> Option<Instant> {
        while let Some(Reverse((at, r))) = self.wakeups.peek().copied() {
            let scheduled = match r {
                TxRef::Server(id) => self.servers.get(&id).and_then(|t| t.scheduled),
                TxRef::Client(id) => self.clients.get(&id).and_then(|t| t.scheduled),
            };
            if scheduled == Some(at) {
                return Some(at);
            }
            self.wakeups.pop();
        }
        None
    }

    // ----- internals -----

    fn local_for(&self, transport: Transport, to: SocketAddr) -> Option<&Local> {
        self.locals
            .iter()
            .find(|l| l.transport == transport && l.addr.is_ipv4() == to.is_ipv4())
            .or_else(|| self.locals.iter().find(|l| l.transport == transport))
    }

    /// Re-arms the wakeup of a transaction after a state change; drops ended ones.
    fn reschedule(&mut self, r: TxRef) {
        match r {
            TxRef::Server(id) => {
                let Some(tx) = self.servers.get_mut(&id) else {
                    return;
                };
                let (terminated, lingering, deadline) = match &tx.machine {
                    ServerMachine::NonInvite(m) => (
                        m.is_terminated(),
                        m.state() == ServerState::Completed,
                        m.deadline(),
                    ),
                    ServerMachine::Invite(m) => (
                        m.is_terminated(),
                        m.state() == ServerState::Confirmed,
                        m.deadline(),
                    ),
                };
                let deadline = match deadline {
                    Some(d) if lingering => Some(on_grid(self.epoch, d)),
                    d => d,
                };
                if terminated {
                    let key = tx.key.clone();
                    if let Some(k) = tx.accepted.take() {
                        if self.accepted.get(&k) == Some(&id) {
                            self.accepted.remove(&k);
                        }
                    }
                    if let Some(m) = tx.merge.take() {
                        if self.merged.get(&m) == Some(&id) {
                            self.merged.remove(&m);
                        }
                    }
                    self.servers.remove(&id);
                    if self.server_keys.get(&key) == Some(&id) {
                        self.server_keys.remove(&key);
                    }
                    return;
                }
                if deadline != tx.scheduled {
                    tx.scheduled = deadline;
                    if let Some(d) = deadline {
                        self.wakeups.push(Reverse((d, r)));
                    }
                }
            }
            TxRef::Client(id) => {
                let Some(tx) = self.clients.get_mut(&id) else {
                    return;
                };
                if tx.machine.is_terminated() {
                    let key = tx.key.clone();
                    if matches!(tx.machine, ClientMachine::Invite(_)) {
                        self.events.push_back(Event::Ended { token: tx.token });
                    }
                    self.clients.remove(&id);
                    self.client_keys.remove(&key);
                    return;
                }
                let deadline = match tx.machine.deadline() {
                    Some(d) if tx.machine.state() == ClientState::Completed => {
                        Some(on_grid(self.epoch, d))
                    }
                    d => d,
                };
                if deadline != tx.scheduled {
                    tx.scheduled = deadline;
                    if let Some(d) = deadline {
                        self.wakeups.push(Reverse((d, r)));
                    }
                }
            }
        }
    }
}

/// Puts our Via on top (replacing any) and a Max-Forwards when missing.
fn stamp_via(request: &mut Request, transport: Transport, sent_by: &str, branch: &str) {
    let via = format!(
        "SIP/2.0/{} {sent_by};branch={branch};rport",
        transport.via_name()
    );
    request.headers.retain(|h| !matches!(h, Header::Via(_)));
    request
        .headers
        .push_front(Header::Via(rsipstack::sip::Via::new(via)));
    if request.max_forwards_header().is_err() {
        request
            .headers
            .push(Header::MaxForwards(rsipstack::sip::MaxForwards::new("70")));
    }
}

fn top_branch(request: &Request) -> Option<String> {
    let via = request.via_header().ok()?;
    let top = typed::Via::parse(first_list_value(via.value())).ok()?;
    top.branch().map(|b| b.to_string())
}

fn call_id_and_cseq_of(headers: &rsipstack::sip::Headers) -> Option<(String, u32)> {
    let mut call_id = None;
    let mut cseq = None;
    for h in headers.iter() {
        match h {
            Header::CallId(c) => call_id = Some(c.value().to_string()),
            Header::CSeq(c) => {
                cseq = c
                    .value()
                    .split_whitespace()
                    .next()
                    .and_then(|n| n.parse().ok())
            }
            _ => {}
        }
    }
    Some((call_id?, cseq?))
}

/// The merge key of a request outside any dialog (no To tag), when it has a From tag.
fn merge_key(request: &Request) -> Option<MergeKey> {
    let to = request.to_header().ok()?;
    if super::dialog::header_param(to.value(), "tag").is_some() {
        return None;
    }
    let from = request.from_header().ok()?;
    let from_tag = super::dialog::header_param(from.value(), "tag")?;
    let (call_id, cseq) = call_id_and_cseq(request)?;
    Some(MergeKey {
        from_tag,
        call_id,
        cseq,
        method: request.method,
    })
}

/// The UAS core's checks before the TU sees a request (RFC 3261 8.2.2, 16.3 item 3):
/// the answer when it fails one.
fn screen(request: &Request, looped: bool) -> Option<Response> {
    // Max-Forwards 0: the request has gone as far as it may. OPTIONS may still be answered
    // (11: a "traceroute" to this hop), so it goes on to the TU.
    let hops = request
        .max_forwards_header()
        .ok()
        .and_then(|m| m.value().trim().parse::<u32>().ok());
    if hops == Some(0) && request.method != Method::Options {
        return Some(message::response_to(request, 483, None, ""));
    }
    if looped {
        return Some(message::response_to(request, 482, None, ""));
    }
    let unknown: Vec<String> = super::dialog::header_values(&request.headers, "Require")
        .into_iter()
        .filter(|tag| {
            !message::SUPPORTED
                .iter()
                .any(|s| s.eq_ignore_ascii_case(tag))
        })
        .collect();
    if !unknown.is_empty() {
        let mut answer = message::response_to(request, 420, None, "");
        answer.headers.push(rsipstack::sip::headers::make_header(
            "Unsupported",
            unknown.join(", "),
        ));
        return Some(answer);
    }
    None
}

fn call_id_and_cseq(request: &Request) -> Option<(String, u32)> {
    call_id_and_cseq_of(&request.headers)
}

/// The headers an ACK or CANCEL copies from its INVITE (RFC 3261 9.1, 17.1.1.3).
fn copied_from_invite(invite: &Request, method: &str, to: Option<Header>) -> Request {
    let mut headers = rsipstack::sip::Headers::default();
    let mut cseq = 1;
    for h in invite.headers.iter() {
        match h {
            // Only our own, top Via.
            Header::Via(v) if !headers.iter().any(|h| matches!(h, Header::Via(_))) => {
                headers.push(Header::Via(rsipstack::sip::Via::new(
                    first_list_value(v.value()).to_string(),
                )))
            }
            Header::Route(_) | Header::From(_) | Header::CallId(_) | Header::MaxForwards(_) => {
                headers.push(h.clone())
            }
            Header::To(_) => headers.push(to.clone().unwrap_or_else(|| h.clone())),
            Header::CSeq(c) => {
                cseq = c
                    .value()
                    .split_whitespace()
                    .next()
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(1)
            }
            _ => {}
        }
    }
    headers.push(Header::CSeq(rsipstack::sip::CSeq::new(format!(
        "{cseq} {method}"
    ))));
    Request {
        method: if method == "ACK" {
            Method::Ack
        } else {
            Method::Cancel
        },
        uri: invite.uri.clone(),
        version: invite.version,
        headers,
        body: Vec::new(),
    }
}

/// 17.1.1.3: the ACK a client INVITE transaction sends for a non-2xx final response.
fn ack_for_failure(invite: &Request, response: &Response) -> Request {
    let to = response
        .headers
        .iter()
        .find(|h| matches!(h, Header::To(_)))
        .cloned();
    copied_from_invite(invite, "ACK", to)
}

/// 9.1: a CANCEL for an INVITE, in the INVITE's own branch.
fn cancel_for(invite: &Request) -> Request {
    copied_from_invite(invite, "CANCEL", None)
}

/// RFC 3261 18.2.1 and RFC 3581 4: record where the request really came from in its top Via.
fn stamp_received(request: &mut Request, source: &Source) {
    for h in request.headers.iter_mut() {
        if let Header::Via(via) = h {
            let value = via.value().to_string();
            let top = first_list_value(&value);
            let rest = value[value
                .find(top)
                .map(|i| i + top.len())
                .unwrap_or(value.len())..]
                .to_string();
            let Ok(parsed) = typed::Via::parse(top) else {
                return;
            };
            let ip = source.remote.ip();
            let host_is_ip = parsed
                .sent_by()
                .host
                .to_string()
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<std::net::IpAddr>()
                .map(|h| h == ip)
                .unwrap_or(false);
            let wants_rport = parsed.rport().is_some();
            let mut params: Vec<String> = top.split(';').map(|s| s.trim().to_string()).collect();
            let mut changed = false;
            if wants_rport {
                for p in params.iter_mut().skip(1) {
                    if p.eq_ignore_ascii_case("rport") {
                        *p = format!("rport={}", source.remote.port());
                        changed = true;
                    }
                }
            }
            if !host_is_ip || wants_rport {
                params.retain(|p| !p.to_ascii_lowercase().starts_with("received="));
                params.push(format!("received={ip}"));
                changed = true;
            }
            if changed {
                *via = rsipstack::sip::Via::new(format!("{}{}", params.join(";"), rest));
            }
            return;
        }
    }
}

/// RFC 3261 18.2.2 (with RFC 3581): where a response to this request goes.
fn reply_route_for(request: &Request, source: &Source) -> Option<Transmit> {
    let via = request.via_header().ok()?;
    let top = typed::Via::parse(first_list_value(via.value())).ok()?;
    Some(route_from_via(&top, source))
}

fn reply_route(echo: &Echo, source: &Source) -> Option<Transmit> {
    if source.transport.is_reliable() {
        // On a stream the answer goes back on the connection, Via or not.
        return Some(Transmit {
            transport: source.transport,
            to: source.remote,
            conn: source.conn,
            from: Some(source.local),
            bytes: Bytes::new(),
            client: None,
            server_name: None,
        });
    }
    let top = echo.top_via()?;
    Some(route_from_via(&top, source))
}

fn route_from_via(top: &typed::Via, source: &Source) -> Transmit {
    let mut to = source.remote;
    if !source.transport.is_reliable() {
        // With rport the reply goes to the source port; without it, to the sent-by port
        // at the received address.
        let rport = top.rport();
        if rport.is_none() {
            let port = top
                .sent_by()
                .port
                .as_ref()
                .map(|p| p.value())
                .unwrap_or(5060);
            to = SocketAddr::new(source.remote.ip(), port);
        }
    }
    Transmit {
        transport: source.transport,
        to,
        conn: source.conn,
        from: Some(source.local),
        bytes: Bytes::new(),
        client: None,
        server_name: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::message::{parse, Framing};
    use std::time::Duration;

    fn local() -> Vec<Local> {
        vec![
            Local {
                transport: Transport::Udp,
                addr: "127.0.0.1:5060".parse().unwrap(),
                sent_by: "127.0.0.1:5060".into(),
            },
            Local {
                transport: Transport::Tcp,
                addr: "127.0.0.1:5060".parse().unwrap(),
                sent_by: "127.0.0.1:5060".into(),
            },
        ]
    }

    fn udp_source() -> Source {
        Source {
            transport: Transport::Udp,
            remote: "127.0.0.2:5070".parse().unwrap(),
            local: "127.0.0.1:5060".parse().unwrap(),
            conn: None,
        }
    }

    fn romeo_message(branch: &str, via_extra: &str) -> SipMessage {
        let text = format!(
            "MESSAGE sip:juliet@example.com SIP/2.0\r\n\
             Via: SIP/2.0/UDP 127.0.0.2:5070;branch={branch}{via_extra}\r\n\
             Max-Forwards: 70\r\n\
             To: sip:juliet@example.com\r\n\
             From: sip:romeo@example.net;tag=r1\r\n\
             Call-ID: M4spr4vdu@example.net\r\n\
             CSeq: 1 MESSAGE\r\n\
             Content-Type: text/plain\r\n\
             Content-Length: 2\r\n\r\nhi"
        );
        parse(text.as_bytes(), Framing::Datagram, 65535)
            .unwrap()
            .message
    }

    fn drain(core: &mut SipCore) -> (Vec<Transmit>, Vec<Event>) {
        let mut t = Vec::new();
        let mut e = Vec::new();
        while let Some(x) = core.poll_transmit() {
            t.push(x);
        }
        while let Some(x) = core.poll_event() {
            e.push(x);
        }
        (t, e)
    }

    #[test]
    fn a_request_reaches_the_tu_once_and_retransmissions_get_the_same_answer() {
        let t0 = Instant::now();
        let mut core = SipCore::new(Timers::default(), local(), 65535);
        core.handle_message(t0, romeo_message("z9hG4bK1", ""), udp_source());
        let (t, e) = drain(&mut core);
        assert!(t.is_empty());
        let [Event::Request { id, request, .. }] = &e[..] else {
            panic!("{e:?}")
        };
        // A retransmission before the answer is absorbed.
        core.handle_message(t0, romeo_message("z9hG4bK1", ""), udp_source());
        assert!(drain(&mut core).1.is_empty());
        core.respond(t0, *id, message::response_to(request, 200, None, "ignored"));
        let (t, _) = drain(&mut core);
        assert_eq!(t.len(), 1);
        assert_eq!(t[0].to, "127.0.0.2:5070".parse().unwrap());
        let first = t[0].bytes.clone();
        core.handle_message(
            t0 + Duration::from_secs(1),
            romeo_message("z9hG4bK1", ""),
            udp_source(),
        );
        let (t, e) = drain(&mut core);
        assert!(e.is_empty());
        assert_eq!(t[0].bytes, first, "the same 200, same To tag");
        // Timer J (on the cleanup grid) ends it; the same branch is then a new request.
        core.handle_timeout(t0 + Duration::from_secs(32) + LINGER_GRID);
        assert_eq!(core.stats().server_transactions, 0);
    }

    #[test]
    fn rport_and_received_are_stamped_and_used() {
        let t0 = Instant::now();
        let mut core = SipCore::new(Timers::default(), local(), 65535);
        let mut src = udp_source();
        src.remote = "10.0.0.9:40000".parse().unwrap();
        core.handle_message(t0, romeo_message("z9hG4bK2", ";rport"), src);
        let (_, e) = drain(&mut core);
        let Event::Request { id, request, .. } = &e[0] else {
            panic!()
        };
        let via = request.via_header().unwrap().value().to_string();
        assert_eq!(
            via,
            "SIP/2.0/UDP 127.0.0.2:5070;branch=z9hG4bK2;rport=40000;received=10.0.0.9"
        );
        core.respond(t0, *id, message::response_to(request, 200, None, "x"));
        let (t, _) = drain(&mut core);
        assert_eq!(t[0].to, "10.0.0.9:40000".parse().unwrap());
        let text = String::from_utf8_lossy(&t[0].bytes);
        assert!(text.contains("rport=40000;received=10.0.0.9"), "{text}");
    }

    #[test]
    fn without_rport_udp_replies_go_to_the_sent_by_port() {
        let t0 = Instant::now();
        let mut core = SipCore::new(Timers::default(), local(), 65535);
        let mut src = udp_source();
        src.remote = "127.0.0.2:40000".parse().unwrap();
        core.handle_message(t0, romeo_message("z9hG4bK3", ""), src);
        let (_, e) = drain(&mut core);
        let Event::Request { id, request, .. } = &e[0] else {
            panic!()
        };
        core.respond(t0, *id, message::response_to(request, 200, None, "x"));
        let (t, _) = drain(&mut core);
        assert_eq!(t[0].to, "127.0.0.2:5070".parse().unwrap());
    }

    fn outgoing() -> Request {
        let text = "MESSAGE sip:romeo@example.net SIP/2.0\r\n\
                    To: <sip:romeo@example.net>\r\n\
                    From: <sip:juliet@example.com;gr=balcony>;tag=j1\r\n\
                    Call-ID: Hr0zny9l3@example.com\r\n\
                    CSeq: 1 MESSAGE\r\n\
                    Content-Type: text/plain\r\n\
                    Content-Length: 35\r\n\r\nArt thou not Romeo, and a Montague?";
        // Parse needs a Via; add one and let send_request replace it.
        let text = text.replacen("\r\n", "\r\nVia: SIP/2.0/UDP x;branch=z9hG4bKx\r\n", 1);
        match parse(text.as_bytes(), Framing::Datagram, 65535)
            .unwrap()
            .message
        {
            SipMessage::Request(r) => r,
            _ => unreachable!(),
        }
    }

    fn target(t: Transport) -> Target {
        Target {
            transport: t,
            addr: "127.0.0.3:5080".parse().unwrap(),
            server_name: "example.net".into(),
        }
    }

    fn response_for(t: &Transmit, status: &str) -> SipMessage {
        let sent = parse(&t.bytes, Framing::Datagram, 65535).unwrap().message;
        let SipMessage::Request(req) = sent else {
            panic!()
        };
        let via = req.via_header().unwrap().value().to_string();
        let text = format!(
            "SIP/2.0 {status}\r\nVia: {via}\r\nFrom: <sip:juliet@example.com>;tag=j1\r\n\
             To: <sip:romeo@example.net>;tag=r9\r\nCall-ID: Hr0zny9l3@example.com\r\n\
             CSeq: 1 MESSAGE\r\nContent-Length: 0\r\n\r\n"
        );
        parse(text.as_bytes(), Framing::Datagram, 65535)
            .unwrap()
            .message
    }

    #[test]
    fn a_sent_request_gets_our_via_and_its_response_reaches_the_tu() {
        let t0 = Instant::now();
        let mut core = SipCore::new(Timers::default(), local(), 65535);
        assert!(core.send_request(t0, outgoing(), target(Transport::Udp), 7));
        let (t, _) = drain(&mut core);
        let text = String::from_utf8_lossy(&t[0].bytes).to_string();
        assert!(
            text.contains("\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK"),
            "{text}"
        );
        assert!(text.contains(";rport\r\n"), "{text}");
        assert!(text.contains("Max-Forwards: 70\r\n"), "{text}");
        assert_eq!(text.matches("Via:").count(), 1);
        core.handle_message(t0, response_for(&t[0], "200 OK"), udp_source());
        let (_, e) = drain(&mut core);
        assert!(
            matches!(&e[..], [Event::Response { token: 7, response }] if response.status_code.code() == 200)
        );
        // A retransmitted 200 is absorbed.
        core.handle_message(t0, response_for(&t[0], "200 OK"), udp_source());
        assert!(drain(&mut core).1.is_empty());
    }

    #[test]
    fn an_unanswered_request_is_retransmitted_then_fails_with_timeout() {
        let t0 = Instant::now();
        let mut core = SipCore::new(Timers::default(), local(), 65535);
        core.send_request(t0, outgoing(), target(Transport::Udp), 9);
        drain(&mut core);
        let mut sends = 0;
        let mut failed = false;
        while let Some(at) = core.poll_timeout() {
            core.handle_timeout(at);
            let (t, e) = drain(&mut core);
            sends += t.len();
            if e.iter().any(|e| {
                matches!(
                    e,
                    Event::Failed {
                        token: 9,
                        failure: Failure::Timeout
                    }
                )
            }) {
                assert_eq!(at, t0 + Duration::from_secs(32));
                failed = true;
            }
        }
        assert!(failed);
        assert_eq!(sends, 10);
        assert_eq!(core.stats().client_transactions, 0);
    }

    #[test]
    fn a_big_request_switches_from_udp_to_tcp() {
        let t0 = Instant::now();
        let mut core = SipCore::new(Timers::default(), local(), 65535);
        let mut req = outgoing();
        req.body = vec![b'x'; 1400];
        core.send_request(t0, req, target(Transport::Udp), 1);
        let (t, _) = drain(&mut core);
        assert_eq!(t[0].transport, Transport::Tcp);
        assert!(String::from_utf8_lossy(&t[0].bytes).contains("Via: SIP/2.0/TCP "));
    }

    #[test]
    fn a_transport_error_fails_the_request() {
        let t0 = Instant::now();
        let mut core = SipCore::new(Timers::default(), local(), 65535);
        core.send_request(t0, outgoing(), target(Transport::Tcp), 4);
        let (t, _) = drain(&mut core);
        core.handle_transport_error(t[0].client.unwrap());
        let (_, e) = drain(&mut core);
        assert!(matches!(
            &e[..],
            [Event::Failed {
                token: 4,
                failure: Failure::Transport
            }]
        ));
        assert_eq!(core.stats().client_transactions, 0);
    }

    #[test]
    fn malformed_requests_are_answered_on_the_via_route() {
        let mut core = SipCore::new(Timers::default(), local(), 65535);
        let text = "MESSAGE sip:juliet@example.com SIP/2.0\r\n\
                    Via: SIP/2.0/UDP 127.0.0.2:5070;branch=z9hG4bK5\r\n\
                    From: <sip:romeo@example.net>;tag=1\r\nTo: <sip:juliet@example.com>\r\n\
                    CSeq: 1 MESSAGE\r\nContent-Length: 0\r\n\r\n";
        let reject = parse(text.as_bytes(), Framing::Datagram, 65535).unwrap_err();
        core.handle_reject(&reject, udp_source());
        let (t, _) = drain(&mut core);
        let out = String::from_utf8_lossy(&t[0].bytes);
        assert!(
            out.starts_with("SIP/2.0 400 Missing Call-ID header\r\n"),
            "{out}"
        );
        assert_eq!(t[0].to, "127.0.0.2:5070".parse().unwrap());
    }

    #[test]
    fn an_invite_failure_is_retransmitted_until_the_ack() {
        let t0 = Instant::now();
        let mut core = SipCore::new(Timers::default(), local(), 65535);
        let text = "INVITE sip:juliet@example.com SIP/2.0\r\n\
                    Via: SIP/2.0/UDP 127.0.0.2:5070;branch=z9hG4bK6\r\n\
                    From: <sip:romeo@example.net>;tag=1\r\nTo: <sip:juliet@example.com>\r\n\
                    Call-ID: inv1\r\nCSeq: 1 INVITE\r\nContact: <sip:romeo@127.0.0.2:5070>\r\n\
                    Content-Length: 0\r\n\r\n";
        let msg = parse(text.as_bytes(), Framing::Datagram, 65535)
            .unwrap()
            .message;
        core.handle_message(t0, msg, udp_source());
        let (_, e) = drain(&mut core);
        let Event::Request { id, request, .. } = &e[0] else {
            panic!()
        };
        core.respond(t0, *id, message::response_to(request, 405, None, "x"));
        assert_eq!(drain(&mut core).0.len(), 1);
        core.handle_timeout(t0 + Duration::from_millis(500));
        assert_eq!(drain(&mut core).0.len(), 1, "timer G");
        let ack = text
            .replace("INVITE sip:", "ACK sip:")
            .replace("1 INVITE", "1 ACK");
        let msg = parse(ack.as_bytes(), Framing::Datagram, 65535)
            .unwrap()
            .message;
        core.handle_message(t0 + Duration::from_millis(600), msg, udp_source());
        core.handle_timeout(t0 + Duration::from_millis(1500));
        assert!(
            drain(&mut core).0.is_empty(),
            "no more retransmissions after ACK"
        );
        core.handle_timeout(t0 + Duration::from_millis(5600) + LINGER_GRID);
        assert_eq!(core.stats().server_transactions, 0);
    }

    fn request_text(method: &str, branch: &str, extra: &str) -> String {
        format!(
            "{method} sip:juliet@example.com SIP/2.0\r\n\
             Via: SIP/2.0/UDP 127.0.0.2:5070;branch={branch}\r\n\
             Max-Forwards: 70\r\n\
             To: <sip:juliet@example.com>\r\n\
             From: <sip:romeo@example.net>;tag=r1\r\n\
             Call-ID: screen@example.net\r\n\
             CSeq: 1 {method}\r\n\
             Contact: <sip:romeo@127.0.0.2:5070>\r\n\
             {extra}Content-Length: 0\r\n\r\n"
        )
    }

    fn msg(text: &str) -> SipMessage {
        parse(text.as_bytes(), Framing::Datagram, 65535)
            .unwrap()
            .message
    }

    fn status_lines(t: &[Transmit]) -> Vec<String> {
        t.iter()
            .map(|t| {
                String::from_utf8_lossy(&t.bytes)
                    .lines()
                    .next()
                    .unwrap_or("")
                    .to_string()
            })
            .collect()
    }

    #[test]
    fn max_forwards_zero_gets_483_but_options_reaches_the_tu() {
        let t0 = Instant::now();
        let mut core = SipCore::new(Timers::default(), local(), 65535);
        let text = request_text("MESSAGE", "z9hG4bKmf1", "")
            .replace("Max-Forwards: 70", "Max-Forwards: 0");
        core.handle_message(t0, msg(&text), udp_source());
        let (t, e) = drain(&mut core);
        assert!(e.is_empty(), "{e:?}");
        assert_eq!(status_lines(&t), ["SIP/2.0 483 Too Many Hops"]);
        // Its retransmission gets the same answer from the transaction.
        core.handle_message(t0, msg(&text), udp_source());
        assert_eq!(drain(&mut core).0[0].bytes, t[0].bytes);

        let invite = request_text("INVITE", "z9hG4bKmf2", "")
            .replace("Max-Forwards: 70", "Max-Forwards: 0")
            .replace("Call-ID: screen", "Call-ID: screen-inv");
        core.handle_message(t0, msg(&invite), udp_source());
        let (t, e) = drain(&mut core);
        assert!(e.is_empty());
        assert_eq!(
            status_lines(&t),
            ["SIP/2.0 100 Trying", "SIP/2.0 483 Too Many Hops"]
        );

        let options = request_text("OPTIONS", "z9hG4bKmf3", "")
            .replace("Max-Forwards: 70", "Max-Forwards: 0")
            .replace("Call-ID: screen", "Call-ID: screen-opt");
        core.handle_message(t0, msg(&options), udp_source());
        assert!(matches!(&drain(&mut core).1[..], [Event::Request { .. }]));
    }

    #[test]
    fn a_merged_request_gets_482_and_a_retransmission_does_not() {
        let t0 = Instant::now();
        let mut core = SipCore::new(Timers::default(), local(), 65535);
        let first = request_text("MESSAGE", "z9hG4bKpath1", "");
        core.handle_message(t0, msg(&first), udp_source());
        let (_, e) = drain(&mut core);
        assert_eq!(e.len(), 1);
        // The same request on another path (another branch) while the first is alive.
        let copy = request_text("MESSAGE", "z9hG4bKpath2", "");
        core.handle_message(t0, msg(&copy), udp_source());
        let (t, e) = drain(&mut core);
        assert!(e.is_empty());
        assert_eq!(status_lines(&t), ["SIP/2.0 482 Loop Detected"]);
        // A retransmission of the first is not a loop.
        core.handle_message(t0, msg(&first), udp_source());
        let (t, e) = drain(&mut core);
        assert!(t.is_empty() && e.is_empty());
        // The next CSeq is a new request; and in a dialog (To tag) nothing is merged.
        let next = request_text("MESSAGE", "z9hG4bKpath3", "").replace("1 MESSAGE", "2 MESSAGE");
        core.handle_message(t0, msg(&next), udp_source());
        assert_eq!(drain(&mut core).1.len(), 1);
        // Once the first transaction has ended (unanswered: 64*T1), the key is free again.
        core.handle_timeout(t0 + Duration::from_secs(64));
        assert_eq!(core.held(), 0);
        core.handle_message(t0 + Duration::from_secs(64), msg(&copy), udp_source());
        assert_eq!(drain(&mut core).1.len(), 1);
    }

    #[test]
    fn an_unknown_require_gets_420_naming_it_in_unsupported() {
        let t0 = Instant::now();
        let mut core = SipCore::new(Timers::default(), local(), 65535);
        let text = request_text("MESSAGE", "z9hG4bKreq1", "Require: 100rel, foo\r\n");
        core.handle_message(t0, msg(&text), udp_source());
        let (t, e) = drain(&mut core);
        assert!(e.is_empty());
        let out = String::from_utf8_lossy(&t[0].bytes);
        assert!(out.starts_with("SIP/2.0 420 Bad Extension\r\n"), "{out}");
        assert!(out.contains("\r\nUnsupported: 100rel, foo\r\n"), "{out}");
        // Proxy-Require is for proxies; a UAS ignores it.
        let text = request_text("MESSAGE", "z9hG4bKreq2", "Proxy-Require: foo\r\n")
            .replace("1 MESSAGE", "2 MESSAGE");
        core.handle_message(t0, msg(&text), udp_source());
        assert_eq!(drain(&mut core).1.len(), 1);
    }

    #[test]
    fn the_487_after_a_cancel_carries_the_tag_of_the_tus_provisional_response() {
        let t0 = Instant::now();
        let mut core = SipCore::new(Timers::default(), local(), 65535);
        let invite = request_text("INVITE", "z9hG4bKc1", "");
        core.handle_message(t0, msg(&invite), udp_source());
        let (_, e) = drain(&mut core);
        let Event::Request { id, request, .. } = &e[0] else {
            panic!()
        };
        core.respond(t0, *id, message::response_to(request, 180, None, "tu-tag"));
        drain(&mut core);
        let cancel = invite
            .replace("INVITE sip:", "CANCEL sip:")
            .replace("1 INVITE", "1 CANCEL");
        core.handle_message(t0, msg(&cancel), udp_source());
        let (t, e) = drain(&mut core);
        assert_eq!(
            status_lines(&t),
            ["SIP/2.0 200 OK", "SIP/2.0 487 Request Terminated"]
        );
        let terminated = String::from_utf8_lossy(&t[1].bytes);
        assert!(terminated.contains(";tag=tu-tag\r\n"), "{terminated}");
        assert!(terminated.contains("CSeq: 1 INVITE\r\n"), "{terminated}");
        assert!(matches!(&e[..], [Event::Cancelled { .. }]));
    }

    /// Pushes `n` MESSAGE transactions through the core at `now`, each answered 200.
    fn push_messages(core: &mut SipCore, now: Instant, n: usize, offset: usize) {
        for i in offset..offset + n {
            let text = request_text("MESSAGE", &format!("z9hG4bKmem{i}"), "")
                .replace("Call-ID: screen", &format!("Call-ID: mem{i}"));
            core.handle_message(now, msg(&text), udp_source());
            let (_, e) = drain(core);
            let Some(Event::Request { id, request, .. }) = e.into_iter().next() else {
                panic!("no request")
            };
            core.respond(now, id, message::response_to(&request, 200, None, ""));
            drain(core);
        }
    }

    #[test]
    fn finished_transactions_leave_nothing_behind() {
        let t0 = Instant::now();
        let mut core = SipCore::new(Timers::default(), local(), 65535);
        push_messages(&mut core, t0, 2000, 0);
        // Each waits out timer J (64*T1 over UDP) holding its 200 for retransmissions.
        assert_eq!(core.stats().server_transactions, 2000);
        core.handle_timeout(t0 + Duration::from_secs(32) + LINGER_GRID);
        assert_eq!(core.held(), 0);
        assert_eq!(core.poll_timeout(), None);
        // Client side too: 2000 MESSAGEs answered, then timer K.
        for token in 0..2000 {
            core.send_request(t0, outgoing(), target(Transport::Udp), token);
            let (t, _) = drain(&mut core);
            core.handle_message(t0, response_for(&t[0], "200 OK"), udp_source());
            drain(&mut core);
        }
        assert_eq!(core.stats().client_transactions, 2000);
        core.handle_timeout(t0 + Duration::from_secs(5) + LINGER_GRID);
        assert_eq!(core.held(), 0);
    }

    #[test]
    fn cleanup_timers_share_wakeups_and_answered_retransmit_timers_wake_nobody() {
        let t0 = Instant::now();
        let mut core = SipCore::new(Timers::default(), local(), 65535);
        // 50 MESSAGEs sent 1 ms apart and answered at once: their timers E are superseded
        // and their timers K fall on at most two points of the grid.
        for token in 0..50u64 {
            let at = t0 + Duration::from_millis(token);
            core.send_request(at, outgoing(), target(Transport::Udp), token);
            let (t, _) = drain(&mut core);
            core.handle_message(at, response_for(&t[0], "200 OK"), udp_source());
            drain(&mut core);
        }
        let mut wakeups = Vec::new();
        while let Some(at) = core.poll_timeout() {
            wakeups.push(at);
            core.handle_timeout(at);
        }
        assert!(wakeups.len() <= 2, "{wakeups:?}");
        let last_k = t0 + Duration::from_millis(49) + Timers::default().t4;
        assert!(wakeups[0] >= t0 + Timers::default().t4, "never early");
        assert!(*wakeups.last().unwrap() >= last_k);
        assert!(*wakeups.last().unwrap() <= last_k + LINGER_GRID);
        assert_eq!(core.held(), 0);
    }

    fn rss_kib() -> u64 {
        std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("VmRSS:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            })
            .unwrap_or(0)
    }

    /// The figure for the record (RSS is per process, so run it alone):
    /// `cargo test --lib memory_held_by_40k_transactions -- --ignored --nocapture`
    #[test]
    #[ignore]
    fn memory_held_by_40k_transactions() {
        let t0 = Instant::now();
        let mut core = SipCore::new(Timers::default(), local(), 65535);
        let before = rss_kib();
        push_messages(&mut core, t0, 40_000, 0);
        let alive = rss_kib();
        core.handle_timeout(t0 + Duration::from_secs(32));
        let after = rss_kib();
        assert_eq!(core.held(), 0);
        // A second burst reuses what the first left.
        push_messages(&mut core, t0 + Duration::from_secs(33), 40_000, 40_000);
        core.handle_timeout(t0 + Duration::from_secs(66));
        let again = rss_kib();
        eprintln!(
            "RSS before {before} KiB; 40k in timer J {alive} KiB (+{} B per transaction); \
             after timer J {after} KiB; after a second 40k {again} KiB",
            (alive.saturating_sub(before)) * 1024 / 40_000
        );
    }

    #[test]
    fn beyond_the_server_transaction_cap_a_new_request_gets_a_stateless_503() {
        let t0 = Instant::now();
        let mut core =
            SipCore::new(Timers::default(), local(), 65535).with_max_server_transactions(2);
        for b in ["z9hG4bKcap1", "z9hG4bKcap2"] {
            core.handle_message(t0, romeo_message(b, ""), udp_source());
        }
        // (The second is a merged copy of the first, answered 482: it holds a slot too.)
        drain(&mut core);
        assert_eq!(core.stats().server_transactions, 2);
        core.handle_message(t0, romeo_message("z9hG4bKcap3", ""), udp_source());
        let (t, e) = drain(&mut core);
        assert!(e.is_empty(), "{e:?}");
        let text = String::from_utf8_lossy(&t[0].bytes).into_owned();
        assert!(text.starts_with("SIP/2.0 503 "), "{text}");
        assert!(text.contains("\r\nRetry-After: 32\r\n"), "{text}");
        assert_eq!(
            core.stats().server_transactions,
            2,
            "the refusal holds nothing"
        );
        // A retransmission of a held one is still matched, not refused.
        core.handle_message(t0, romeo_message("z9hG4bKcap1", ""), udp_source());
        assert!(drain(&mut core).0.is_empty());
    }
}
