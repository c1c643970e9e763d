//! One MSRP session (RFC 4975) between our endpoint and one peer, sans-IO.
//!
//! ```text
//!   bytes from the connection -> handle_data(now, ..)  -+
//!   send(Outgoing) / abort(..) / bind()                 +-> [ Session ] -> poll_transmit(now): bytes to write
//!   handle_timeout(now)                                 -+                -> poll_event(): Message, Delivered,
//!                                                                             Report, Failed, Aborted, Expired,
//!                                                                             Refused, StreamError
//!                                                                         -> poll_timeout(): next deadline
//! ```
//!
//! The driver owns the socket and the clock: after every input it writes what
//! `poll_transmit` gives until `None`, drains `poll_event`, and sleeps until
//! `poll_timeout`. Messages are written lazily, `write_unit` body bytes at a time, so a
//! long chunk can be interrupted (ended with `+`, section 7.1.1) when another message is
//! queued, and resumed after it: a large transfer does not hold up a chat line.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::rngs::StdRng;
use rand::SeedableRng;

use super::frame::{
    body_allows_tid, ByteRange, Decoded, Decoder, FailureReport, Flag, Frame, FrameError, Header,
    Headers, Invalid, Limits, MessageId, Method, Request, Response, Status, StreamError,
    TransactionId,
};
use super::reassembly::Reassembly;
use super::uri::MsrpUri;

/// Knobs of a session; the defaults follow RFC 4975 where it names a number.
#[derive(Debug, Clone)]
pub struct Config {
    /// Largest body of one SEND; longer messages are chunked.
    pub chunk_size: usize,
    /// Body bytes handed out per `poll_transmit`; a chunk longer than this is written with
    /// `Byte-Range: n-*/total` and may be interrupted between two writes.
    pub write_unit: usize,
    /// Largest message we reassemble; larger ones are refused with 413.
    pub max_message_size: usize,
    /// Incoming messages being reassembled at once.
    pub max_incomplete: usize,
    /// What all messages being reassembled may hold together: their bytes plus
    /// [`PIECE_COST`](super::reassembly::PIECE_COST) per disjoint range. The message whose
    /// chunk goes beyond it is refused with 413.
    pub max_incoming_bytes: usize,
    /// Responses and REPORTs waiting for the socket, in bytes; while more wait,
    /// [`Session::wants_data`] is false and the edge stops reading (a peer that does not
    /// read its responses cannot make them pile up).
    pub max_queued_bytes: usize,
    /// Complete messages held for [`Session::answer`] (`defer_response`); while this many
    /// wait, [`Session::wants_data`] is false.
    pub max_deferred: usize,
    /// A message being reassembled is dropped when no chunk of it came for this long
    /// (RFC 4975 names no number; a sender that stalls this long has given up).
    pub incomplete_timeout: Duration,
    /// Section 7.1.1: a SEND without a response within 30 s has failed.
    pub transaction_timeout: Duration,
    /// Media types we take (415 otherwise); `*` and `type/*` are wildcards.
    pub accept_types: Vec<String>,
    pub limits: Limits,
    /// Finished outgoing messages remembered, so late REPORTs still find them.
    pub remember: usize,
    /// `None`: a SEND is answered as soon as it is parsed. `Some(t)`: the response to the
    /// chunk that completes a message (and its success REPORT) waits until the
    /// application calls [`Session::answer`], so that 200 means "handed on" (a gateway
    /// writes the message to the next network first); if nobody answers within `t`, the
    /// session answers 403 on its own (RFC 4975 section 10: 408 is never sent as a
    /// response, only reported; 403 refuses the request). `t` should stay well below the peer's 30 s
    /// transaction timeout (section 7.1.1). Earlier chunks are answered 200 at once: a
    /// 200 to a chunk only says the chunk arrived, and an error on the final chunk fails
    /// the whole message at the sender, so no failure REPORT is needed after them.
    pub defer_response: Option<Duration>,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            chunk_size: 16 * 1024,
            write_unit: 4096,
            max_message_size: 1024 * 1024,
            max_incomplete: 16,
            max_incoming_bytes: 2 * 1024 * 1024,
            max_queued_bytes: 64 * 1024,
            max_deferred: 64,
            incomplete_timeout: Duration::from_secs(120),
            transaction_timeout: Duration::from_secs(30),
            accept_types: vec![
                "message/cpim".into(),
                "text/plain".into(),
                "application/im-iscomposing+xml".into(),
            ],
            limits: Limits::default(),
            remember: 256,
            defer_response: None,
        }
    }
}

/// A message to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    pub content_type: String,
    pub body: Bytes,
    /// Chosen at random when `None`.
    pub message_id: Option<MessageId>,
    /// Transaction id of the first chunk (RFC 7573 maps the stanza id to it); replaced by
    /// a random one when the body contains its end-line.
    pub transaction_id: Option<TransactionId>,
    pub success_report: bool,
    pub failure_report: FailureReport,
}

impl Outgoing {
    pub fn new(content_type: impl Into<String>, body: impl Into<Bytes>) -> Outgoing {
        Outgoing {
            content_type: content_type.into(),
            body: body.into(),
            message_id: None,
            transaction_id: None,
            success_report: false,
            failure_report: FailureReport::Yes,
        }
    }
}

/// A complete message from the peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    pub message_id: MessageId,
    /// Transaction id of the chunk that starts at byte 1 (RFC 7573: the stanza id).
    pub transaction_id: TransactionId,
    pub content_type: String,
    pub body: Bytes,
    /// A success REPORT was sent for it (with `defer_response`: will be sent with the 200).
    pub reported: bool,
}

/// Why one of our messages failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// An error response to one of its chunks.
    Response { code: u16, comment: Option<String> },
    /// No response within the transaction timeout (reported as 408, section 7.1.1).
    Timeout,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Message(Received),
    /// Every chunk of the message got a 200 (only with `Failure-Report: yes`).
    Delivered {
        message_id: MessageId,
    },
    /// A REPORT about one of our messages: a success report, or a failure report.
    Report {
        message_id: MessageId,
        status: Status,
        byte_range: ByteRange,
    },
    Failed {
        message_id: MessageId,
        failure: Failure,
    },
    /// The peer abandoned a message (`#`).
    Aborted {
        message_id: MessageId,
    },
    /// A message being reassembled got no chunk for `incomplete_timeout` and was dropped.
    Expired {
        message_id: MessageId,
    },
    /// A request we answered with an error, for the log.
    Refused {
        transaction_id: TransactionId,
        code: u16,
        reason: String,
    },
    /// The peer broke the framing; the connection has to be closed.
    StreamError(StreamError),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    #[error("a message with this Message-ID is still being sent")]
    DuplicateMessageId,
    #[error("invalid content type")]
    ContentType,
    #[error("the session's stream failed")]
    Closed,
}

struct OutMsg {
    content_type: String,
    body: Bytes,
    /// Offset of the first byte not yet put in a chunk.
    next: usize,
    first_tid: Option<TransactionId>,
    success_report: bool,
    failure_report: FailureReport,
    /// Chunks waiting for a 200.
    unacked: usize,
    failed: bool,
    /// Ours (the binding SEND): no events about it.
    silent: bool,
}

impl OutMsg {
    fn written(&self) -> bool {
        self.next >= self.body.len()
    }
}

struct Writing {
    id: MessageId,
    tid: TransactionId,
    pos: usize,
    end: usize,
}

struct Pending {
    id: MessageId,
    deadline: Instant,
    /// `Failure-Report: partial`: only an error response can come, so silence until the
    /// deadline counts as a 200.
    partial: bool,
}

struct Incoming {
    content_type: String,
    first_tid: Option<TransactionId>,
    total: Option<u64>,
    /// The bytes received so far: memory follows them, not the announced total.
    parts: Reassembly,
    max_end: usize,
    end_seen: bool,
    success_report: bool,
    from_path: Vec<MsrpUri>,
    /// Dropped unless another chunk comes by then.
    deadline: Instant,
}

impl Incoming {
    /// The length once complete. Chunks of a connection arrive in the order they were
    /// sent and `$` marks the last one, so at `$` the message is whole if the bytes from 1
    /// on are contiguous. The declared total is not trusted for this: RFC 4975's own
    /// examples count their bodies wrong (`1-25/25` on 23 bytes), and so do peers.
    fn complete_len(&self) -> Option<usize> {
        if !self.end_seen {
            return None;
        }
        let len = self.max_end;
        self.parts.is_whole(len).then_some(len)
    }
}

/// The response to the final chunk of a complete message, held for [`Session::answer`].
struct Deferred {
    tid: TransactionId,
    headers: Headers,
    /// Answered 403 by the session itself then.
    deadline: Instant,
    /// A success REPORT is due once the message is answered 200.
    report: Option<(Vec<MsrpUri>, usize)>,
}

/// Frees an emptied map's table: a session sits idle most of its life, and the tables its
/// first message left behind were about 2 KB of an idle chat session.
fn release_if_empty<K, V>(map: &mut HashMap<K, V>) {
    if map.is_empty() && map.capacity() > 0 {
        *map = HashMap::new();
    }
}

/// The session state machine. See the module docs for the driving loop.
pub struct Session {
    config: Config,
    local: MsrpUri,
    remote: Vec<MsrpUri>,
    decoder: Decoder,
    rng: StdRng,
    control: VecDeque<Bytes>,
    /// Bytes in `control`.
    control_bytes: usize,
    events: VecDeque<Event>,
    msgs: HashMap<MessageId, OutMsg>,
    queue: VecDeque<MessageId>,
    writing: Option<Writing>,
    pending: HashMap<TransactionId, Pending>,
    finished: VecDeque<MessageId>,
    finished_set: HashSet<MessageId>,
    incoming: HashMap<MessageId, Incoming>,
    refused: VecDeque<MessageId>,
    deferred: HashMap<MessageId, Deferred>,
    failed: bool,
}

impl Session {
    /// `local` is our URI (the last of our a=path); `remote` the peer's a=path.
    pub fn new(local: MsrpUri, remote: Vec<MsrpUri>, config: Config) -> Session {
        Session::with_rng(local, remote, config, StdRng::from_rng(&mut rand::rng()))
    }

    /// With a seeded generator, for reproducible ids in tests.
    pub fn with_rng(local: MsrpUri, remote: Vec<MsrpUri>, config: Config, rng: StdRng) -> Session {
        Session {
            decoder: Decoder::new(config.limits),
            config,
            local,
            remote,
            rng,
            control: VecDeque::new(),
            control_bytes: 0,
            events: VecDeque::new(),
            msgs: HashMap::new(),
            queue: VecDeque::new(),
            writing: None,
            pending: HashMap::new(),
            finished: VecDeque::new(),
            finished_set: HashSet::new(),
            incoming: HashMap::new(),
            refused: VecDeque::new(),
            deferred: HashMap::new(),
            failed: false,
        }
    }

    pub fn local(&self) -> &MsrpUri {
        &self.local
    }

    pub fn remote(&self) -> &[MsrpUri] {
        &self.remote
    }

    /// A re-INVITE may change the peer's path.
    pub fn set_remote(&mut self, remote: Vec<MsrpUri>) {
        self.remote = remote;
    }

    /// Nothing to write and no response awaited.
    pub fn is_idle(&self) -> bool {
        self.control.is_empty()
            && self.queue.is_empty()
            && self.writing.is_none()
            && self.pending.is_empty()
            && self.deferred.is_empty()
    }

    /// Whether the edge should read more from the connection: false while the responses
    /// queued for the peer or the messages held for the application are at their bounds
    /// (`max_queued_bytes`, `max_deferred`). The decoder holds at most one read beyond.
    pub fn wants_data(&self) -> bool {
        self.control_bytes < self.config.max_queued_bytes
            && self.deferred.len() < self.config.max_deferred
    }

    /// Bytes held for messages being reassembled (with the per-range cost).
    pub fn incoming_cost(&self) -> usize {
        self.incoming.values().map(|m| m.parts.cost()).sum()
    }

    fn push_control(&mut self, b: Bytes) {
        self.control_bytes += b.len();
        self.control.push_back(b);
    }

    /// Answers the final chunk of a complete message held by `defer_response`: `200`
    /// sends the 200 (unless Failure-Report forbids) and the success REPORT if one was
    /// asked for; any other code is an error response to that chunk (section 7.1.1: the
    /// sender fails the whole message) and no REPORT. Returns false when nothing is held
    /// for `id` (answered already, or answered 403 by the timeout).
    pub fn answer(&mut self, id: &MessageId, code: u16, comment: &str) -> bool {
        let Some(d) = self.deferred.remove(id) else {
            return false;
        };
        release_if_empty(&mut self.deferred);
        self.respond(&d.tid, &d.headers, code, comment, None);
        if code == 200 {
            if let Some((from_path, len)) = d.report {
                self.report(id, &from_path, len);
            }
        }
        true
    }

    // ---- inputs ----

    /// Queues a message. It is chunked as needed, never truncated.
    pub fn send(&mut self, msg: Outgoing) -> Result<MessageId, SendError> {
        if self.failed {
            return Err(SendError::Closed);
        }
        if !msg.body.is_empty() && !super::frame::is_media_type_str(&msg.content_type) {
            return Err(SendError::ContentType);
        }
        let id = match msg.message_id {
            Some(id) => {
                if self.msgs.contains_key(&id) {
                    return Err(SendError::DuplicateMessageId);
                }
                id
            }
            None => loop {
                let id = MessageId::random(&mut self.rng);
                if !self.msgs.contains_key(&id) {
                    break id;
                }
            },
        };
        self.forget_finished(&id);
        self.msgs.insert(
            id.clone(),
            OutMsg {
                content_type: msg.content_type,
                body: msg.body,
                next: 0,
                first_tid: msg.transaction_id,
                success_report: msg.success_report,
                failure_report: msg.failure_report,
                unacked: 0,
                failed: false,
                silent: false,
            },
        );
        self.queue.push_back(id.clone());
        Ok(id)
    }

    /// Section 7.1: the endpoint that opened the connection sends a SEND at once so that
    /// the other side can bind the connection to the session; an empty one (which raises
    /// no events) if nothing is queued.
    pub fn bind(&mut self) -> Option<MessageId> {
        if self.queue.is_empty() && self.writing.is_none() {
            let id = self.send(Outgoing::new("text/plain", Bytes::new())).ok()?;
            if let Some(m) = self.msgs.get_mut(&id) {
                m.silent = true;
            }
            return Some(id);
        }
        None
    }

    /// Stops sending a message (section 7.1.1): a chunk being written ends with `#`; between
    /// chunks, an empty chunk with `#` tells the peer. Returns false when the message is
    /// unknown or fully written already.
    pub fn abort(&mut self, id: &MessageId) -> bool {
        let in_chunk = self.writing.as_ref().is_some_and(|w| &w.id == id);
        let Some(m) = self.msgs.get_mut(id) else {
            return false;
        };
        if m.written() && !in_chunk {
            return false;
        }
        m.failed = true;
        if !in_chunk && m.next > 0 {
            let (next, total, content_type) =
                (m.next as u64, m.body.len() as u64, m.content_type.clone());
            let tid = self.fresh_tid(&[]);
            let mut req = Request::new(
                tid,
                Method::Send,
                self.remote.clone(),
                vec![self.local.clone()],
            );
            req.headers.push(Header::MessageId(id.clone()));
            req.headers.push(Header::ByteRange(ByteRange {
                start: next + 1,
                end: Some(next),
                total: Some(total),
            }));
            req.headers.push(Header::ContentType(content_type));
            req.body = Some(Bytes::new());
            req.flag = Flag::Abort;
            let mut out = Vec::new();
            req.encode(&mut out);
            self.push_control(out.into());
        }
        self.stop_message(id);
        true
    }

    pub fn handle_data(&mut self, now: Instant, data: &[u8]) {
        if self.failed {
            return;
        }
        self.decoder.push(data);
        loop {
            match self.decoder.decode() {
                Ok(None) => break,
                Ok(Some(Decoded::Frame(Frame::Request(req)))) => self.on_request(now, req),
                Ok(Some(Decoded::Frame(Frame::Response(resp)))) => self.on_response(now, resp),
                Ok(Some(Decoded::Invalid(inv))) => self.on_invalid(inv),
                Err(e) => {
                    self.failed = true;
                    self.events.push_back(Event::StreamError(e));
                    break;
                }
            }
        }
    }

    /// Fails the transactions whose response is overdue, and drops stalled incoming messages.
    pub fn handle_timeout(&mut self, now: Instant) {
        let stalled: Vec<MessageId> = self
            .incoming
            .iter()
            .filter(|(_, m)| m.deadline <= now)
            .map(|(id, _)| id.clone())
            .collect();
        for id in stalled {
            self.incoming.remove(&id);
            self.events.push_back(Event::Expired { message_id: id });
        }
        let overdue: Vec<MessageId> = self
            .deferred
            .iter()
            .filter(|(_, d)| d.deadline <= now)
            .map(|(id, _)| id.clone())
            .collect();
        for id in overdue {
            self.answer(&id, 403, "Not handed on in time");
        }
        let expired: Vec<TransactionId> = self
            .pending
            .iter()
            .filter(|(_, p)| p.deadline <= now)
            .map(|(t, _)| t.clone())
            .collect();
        for tid in expired {
            if let Some(p) = self.pending.remove(&tid) {
                if p.partial {
                    self.acked(&p.id);
                } else {
                    self.fail(&p.id, Failure::Timeout);
                }
            }
        }
    }

    // ---- outputs ----

    /// The next bytes to write, or `None` when there is nothing to write now.
    pub fn poll_transmit(&mut self, now: Instant) -> Option<Bytes> {
        // A chunk being written comes first: anything else would land inside its body. It
        // ends early (interrupted) when responses or other messages are waiting.
        if let Some(w) = self.writing.take() {
            return Some(self.continue_chunk(now, w));
        }
        if let Some(b) = self.control.pop_front() {
            self.control_bytes -= b.len();
            return Some(b);
        }
        if self.failed {
            return None;
        }
        loop {
            let id = self.queue.pop_front()?;
            if self.msgs.get(&id).is_some_and(|m| !m.failed) {
                return Some(self.start_chunk(now, id));
            }
        }
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When `handle_timeout` should be called next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let pending = self.pending.values().map(|p| p.deadline);
        pending
            .chain(self.incoming.values().map(|m| m.deadline))
            .chain(self.deferred.values().map(|d| d.deadline))
            .min()
    }

    // ---- sending ----

    fn start_chunk(&mut self, now: Instant, id: MessageId) -> Bytes {
        let (start, end, total, first, body) = {
            let Some(m) = self.msgs.get(&id) else {
                return Bytes::new();
            };
            let end = (m.next + self.config.chunk_size.max(1)).min(m.body.len());
            (m.next, end, m.body.len(), m.next == 0, m.body.clone())
        };
        let data = &body[start..end];
        let wanted = if first {
            self.msgs.get_mut(&id).and_then(|m| m.first_tid.take())
        } else {
            None
        };
        let tid = match wanted.filter(|t| body_allows_tid(data, t) && !self.pending.contains_key(t))
        {
            Some(t) => t,
            None => self.fresh_tid(data),
        };
        let Some(m) = self.msgs.get(&id) else {
            return Bytes::new();
        };
        let exact = end - start <= self.config.write_unit.max(1);
        let mut req = Request::new(
            tid.clone(),
            Method::Send,
            self.remote.clone(),
            vec![self.local.clone()],
        );
        req.headers.push(Header::MessageId(id.clone()));
        req.headers.push(Header::ByteRange(ByteRange {
            start: start as u64 + 1,
            end: if exact { Some(end as u64) } else { None },
            total: Some(total as u64),
        }));
        if m.success_report {
            req.headers.push(Header::SuccessReport(true));
        }
        if m.failure_report != FailureReport::Yes {
            req.headers.push(Header::FailureReport(m.failure_report));
        }
        if total == 0 {
            // A bodiless SEND (section 7.1: binding a connection, or an empty message).
            req.flag = Flag::End;
            let mut out = Vec::new();
            req.encode(&mut out);
            self.chunk_written(now, &id, &tid, 0, true);
            return out.into();
        }
        req.headers
            .push(Header::ContentType(m.content_type.clone()));
        if exact {
            req.body = Some(Bytes::copy_from_slice(data));
            req.flag = if end == total { Flag::End } else { Flag::More };
            let mut out = Vec::new();
            req.encode(&mut out);
            self.chunk_written(now, &id, &tid, end, end == total);
            return out.into();
        }
        // Head now, body in write units.
        let mut out = Vec::new();
        req.encode_head(&mut out);
        let w = Writing {
            id,
            tid,
            pos: start,
            end,
        };
        let more = self.continue_chunk(now, w);
        out.extend_from_slice(&more);
        out.into()
    }

    fn continue_chunk(&mut self, now: Instant, mut w: Writing) -> Bytes {
        let Some(m) = self.msgs.get(&w.id) else {
            return Bytes::new();
        };
        let total = m.body.len();
        let mut out = Vec::new();
        // Interrupt for a waiting message or response once this chunk carries some data.
        let waiting = !self.queue.is_empty() || !self.control.is_empty();
        let interrupt = waiting && w.pos > m.next;
        if !interrupt {
            let n = (w.end - w.pos).min(self.config.write_unit.max(1));
            out.extend_from_slice(&m.body[w.pos..w.pos + n]);
            w.pos += n;
        }
        if interrupt || w.pos == w.end {
            let last = w.pos == total;
            out.extend_from_slice(b"\r\n");
            end_line(&mut out, &w.tid, if last { Flag::End } else { Flag::More });
            self.chunk_written(now, &w.id, &w.tid, w.pos, last);
        } else {
            self.writing = Some(w);
        }
        out.into()
    }

    /// Bookkeeping once a chunk's end-line is out: the transaction starts now.
    fn chunk_written(
        &mut self,
        now: Instant,
        id: &MessageId,
        tid: &TransactionId,
        next: usize,
        last: bool,
    ) {
        let timeout = self.config.transaction_timeout;
        let Some(m) = self.msgs.get_mut(id) else {
            return;
        };
        m.next = next;
        let no_responses = m.failure_report == FailureReport::No;
        if !no_responses {
            m.unacked += 1;
            self.pending.insert(
                tid.clone(),
                Pending {
                    id: id.clone(),
                    deadline: now + timeout,
                    partial: m.failure_report == FailureReport::Partial,
                },
            );
        }
        if !last {
            self.queue.push_back(id.clone());
        } else if no_responses {
            // Nothing more will come for it but REPORTs.
            self.finish(id);
        }
    }

    fn fresh_tid(&mut self, data: &[u8]) -> TransactionId {
        loop {
            let t = TransactionId::random(&mut self.rng);
            if body_allows_tid(data, &t) && !self.pending.contains_key(&t) {
                return t;
            }
        }
    }

    /// Stops writing a message; a chunk being written ends with `#`.
    fn stop_message(&mut self, id: &MessageId) {
        self.queue.retain(|q| q != id);
        if self.writing.as_ref().is_some_and(|w| &w.id == id) {
            if let Some(w) = self.writing.take() {
                let mut out = b"\r\n".to_vec();
                end_line(&mut out, &w.tid, Flag::Abort);
                // Before anything else queued: it closes the body on the wire.
                self.control_bytes += out.len();
                self.control.push_front(out.into());
            }
        }
        self.pending.retain(|_, p| &p.id != id);
        self.finish(id);
    }

    fn fail(&mut self, id: &MessageId, failure: Failure) {
        let Some(m) = self.msgs.get_mut(id) else {
            return;
        };
        if m.failed {
            return;
        }
        m.failed = true;
        if !m.silent {
            self.events.push_back(Event::Failed {
                message_id: id.clone(),
                failure,
            });
        }
        self.stop_message(id);
    }

    /// Moves a message to the finished list, where REPORTs still find it.
    fn finish(&mut self, id: &MessageId) {
        if self.msgs.remove(id).is_none() {
            return;
        }
        if self.finished_set.insert(id.clone()) {
            self.finished.push_back(id.clone());
        }
        while self.finished.len() > self.config.remember {
            if let Some(old) = self.finished.pop_front() {
                self.finished_set.remove(&old);
            }
        }
    }

    fn forget_finished(&mut self, id: &MessageId) {
        if self.finished_set.remove(id) {
            self.finished.retain(|f| f != id);
        }
    }

    fn on_response(&mut self, _now: Instant, resp: Response) {
        // A response whose To-Path is not us is not for this session; ignore it.
        if !resp
            .headers
            .to_path()
            .is_some_and(|p| p.len() == 1 && p[0].matches(&self.local))
        {
            return;
        }
        let removed = self.pending.remove(&resp.tid);
        release_if_empty(&mut self.pending);
        let Some(p) = removed else {
            return;
        };
        if resp.code == 200 {
            self.acked(&p.id);
        } else {
            self.fail(
                &p.id,
                Failure::Response {
                    code: resp.code,
                    comment: resp.comment,
                },
            );
        }
    }

    /// One chunk of `id` succeeded; the message is delivered once all of them did.
    fn acked(&mut self, id: &MessageId) {
        let (done, silent) = match self.msgs.get_mut(id) {
            Some(m) => {
                m.unacked = m.unacked.saturating_sub(1);
                (m.unacked == 0 && m.written() && !m.failed, m.silent)
            }
            None => (false, false),
        };
        if done && self.writing.as_ref().is_none_or(|w| &w.id != id) {
            if !silent {
                self.events.push_back(Event::Delivered {
                    message_id: id.clone(),
                });
            }
            self.finish(id);
        }
    }

    // ---- receiving ----

    fn to_us(&self, headers: &Headers) -> bool {
        headers
            .to_path()
            .is_some_and(|p| p.len() == 1 && p[0].matches(&self.local))
    }

    fn sent_by_peer(&self, headers: &Headers) -> bool {
        match (
            headers.from_path().and_then(|p| p.last()),
            self.remote.last(),
        ) {
            (Some(a), Some(b)) => a.matches(b),
            _ => false,
        }
    }

    fn on_request(&mut self, now: Instant, req: Request) {
        if req.method == Method::Report {
            return self.on_report(req);
        }
        if !self.to_us(&req.headers) || !self.sent_by_peer(&req.headers) {
            return self.respond(&req.tid, &req.headers, 481, "Session Does Not Exist", None);
        }
        match req.method {
            Method::Send => self.on_send(now, req),
            _ => self.respond(&req.tid, &req.headers, 501, "Unknown Method", None),
        }
    }

    fn on_send(&mut self, now: Instant, req: Request) {
        let Some(id) = req.headers.message_id().cloned() else {
            return self.respond(
                &req.tid,
                &req.headers,
                400,
                "Bad Request",
                Some("no Message-ID"),
            );
        };
        let Some(body) = req.body.clone() else {
            // A bodiless SEND binds the connection or keeps it alive (section 7.1).
            return self.respond(&req.tid, &req.headers, 200, "OK", None);
        };
        let content_type = req.headers.content_type().cloned().unwrap_or_default();
        if !self.accepts(&content_type) {
            return self.respond(&req.tid, &req.headers, 415, "Unsupported Media Type", None);
        }
        if self.refused.contains(&id) {
            return self.respond(&req.tid, &req.headers, 413, "Stop Sending Message", None);
        }
        let range = req
            .headers
            .byte_range()
            .copied()
            .unwrap_or(ByteRange::WHOLE);
        let max = self.config.max_message_size;
        let start = usize::try_from(range.start - 1).unwrap_or(usize::MAX);
        let end = start.saturating_add(body.len());
        if range.total.is_some_and(|t| end as u64 > t) {
            return self.respond(
                &req.tid,
                &req.headers,
                400,
                "Bad Request",
                Some("chunk beyond the total"),
            );
        }
        if end > max || range.total.is_some_and(|t| t > max as u64) {
            return self.refuse(&id, &req.tid, &req.headers);
        }
        if req.flag == Flag::Abort {
            self.incoming.remove(&id);
            self.respond(&req.tid, &req.headers, 200, "OK", None);
            self.events.push_back(Event::Aborted { message_id: id });
            return;
        }
        if !self.incoming.contains_key(&id) {
            if self.incoming.len() >= self.config.max_incomplete {
                return self.refuse(&id, &req.tid, &req.headers);
            }
            self.incoming.insert(
                id.clone(),
                Incoming {
                    content_type: content_type.clone(),
                    first_tid: None,
                    total: range.total,
                    parts: Reassembly::new(),
                    max_end: 0,
                    end_seen: false,
                    success_report: false,
                    from_path: Vec::new(),
                    deadline: now,
                },
            );
        }
        let Some(inc) = self.incoming.get_mut(&id) else {
            return;
        };
        if inc.total.is_none() {
            inc.total = range.total;
        }
        if inc.total.is_some_and(|t| end as u64 > t) {
            return self.respond(
                &req.tid,
                &req.headers,
                400,
                "Bad Request",
                Some("chunk beyond the total"),
            );
        }
        if start == 0 {
            inc.first_tid = Some(req.tid.clone());
            inc.content_type = content_type;
        }
        inc.parts.insert(start, &body);
        inc.max_end = inc.max_end.max(end);
        if self.incoming_cost() > self.config.max_incoming_bytes {
            return self.refuse(&id, &req.tid, &req.headers);
        }
        let Some(inc) = self.incoming.get_mut(&id) else {
            return;
        };
        inc.end_seen |= req.flag == Flag::End;
        inc.deadline = now + self.config.incomplete_timeout;
        inc.success_report |= req.headers.success_report();
        if let Some(p) = req.headers.from_path() {
            inc.from_path = p.clone();
        }
        let complete = inc.complete_len();
        let defer = self.config.defer_response.filter(|_| complete.is_some());
        if defer.is_none() {
            self.respond(&req.tid, &req.headers, 200, "OK", None);
        }
        if let Some(len) = complete {
            if let Some(inc) = self.incoming.remove(&id) {
                release_if_empty(&mut self.incoming);
                if let Some(wait) = defer {
                    let held = Deferred {
                        tid: req.tid.clone(),
                        headers: req.headers.clone(),
                        deadline: now + wait,
                        report: inc.success_report.then(|| (inc.from_path.clone(), len)),
                    };
                    // The same Message-ID complete again before the first was answered:
                    // the earlier one will not be, so it is refused now.
                    if self.deferred.contains_key(&id) {
                        self.answer(&id, 403, "Superseded");
                    }
                    self.deferred.insert(id.clone(), held);
                } else if inc.success_report {
                    self.report(&id, &inc.from_path, len);
                }
                self.events.push_back(Event::Message(Received {
                    message_id: id,
                    transaction_id: inc.first_tid.unwrap_or(req.tid),
                    content_type: inc.content_type,
                    body: inc.parts.into_vec().into(),
                    reported: inc.success_report,
                }));
            }
        }
    }

    fn refuse(&mut self, id: &MessageId, tid: &TransactionId, headers: &Headers) {
        self.incoming.remove(id);
        if !self.refused.contains(id) {
            self.refused.push_back(id.clone());
            if self.refused.len() > self.config.remember {
                self.refused.pop_front();
            }
        }
        self.respond(tid, headers, 413, "Stop Sending Message", None);
    }

    fn on_report(&mut self, req: Request) {
        // REPORTs are never answered (section 7.1.2); one not for us is dropped.
        if !self.to_us(&req.headers) {
            return;
        }
        let (Some(id), Some(status)) = (req.headers.message_id(), req.headers.status()) else {
            return;
        };
        if !self.msgs.contains_key(id) && !self.finished_set.contains(id) {
            return;
        }
        self.events.push_back(Event::Report {
            message_id: id.clone(),
            status: status.clone(),
            byte_range: req
                .headers
                .byte_range()
                .copied()
                .unwrap_or(ByteRange::WHOLE),
        });
    }

    fn on_invalid(&mut self, inv: Invalid) {
        match inv.method {
            // Neither a response nor a REPORT is answered.
            None | Some(Method::Report) => {}
            Some(_) => {
                if inv.headers.to_path().is_some() && !self.to_us(&inv.headers) {
                    return self.respond(
                        &inv.tid,
                        &inv.headers,
                        481,
                        "Session Does Not Exist",
                        None,
                    );
                }
                if let FrameError::BodyTooLarge(_) = inv.error {
                    if let Some(id) = inv.headers.message_id().cloned() {
                        return self.refuse(&id, &inv.tid, &inv.headers);
                    }
                    return self.respond(&inv.tid, &inv.headers, 413, "Stop Sending Message", None);
                }
                let reason = inv.error.to_string();
                self.respond(&inv.tid, &inv.headers, 400, "Bad Request", Some(&reason));
            }
        }
    }

    fn accepts(&self, content_type: &str) -> bool {
        let essence = content_type.split(';').next().unwrap_or_default().trim();
        let (t, _) = essence.split_once('/').unwrap_or((essence, ""));
        self.config.accept_types.iter().any(|a| {
            a == "*"
                || a.eq_ignore_ascii_case(essence)
                || a.strip_suffix("/*")
                    .is_some_and(|at| at.eq_ignore_ascii_case(t))
        })
    }

    /// Answers a request, unless its Failure-Report forbids (section 7.1.1: `no` means no
    /// response at all, `partial` no 200). `detail` goes in the comment of a 400.
    fn respond(
        &mut self,
        tid: &TransactionId,
        headers: &Headers,
        code: u16,
        comment: &str,
        detail: Option<&str>,
    ) {
        if code != 200 {
            self.events.push_back(Event::Refused {
                transaction_id: tid.clone(),
                code,
                reason: detail.unwrap_or(comment).to_string(),
            });
        }
        match headers.failure_report() {
            FailureReport::No => return,
            FailureReport::Partial if code == 200 => return,
            _ => {}
        }
        let to = headers
            .from_path()
            .and_then(|p| p.first())
            .or_else(|| self.remote.first())
            .cloned()
            .into_iter()
            .collect();
        let comment = match detail {
            Some(d) => format!("{comment}: {d}"),
            None => comment.to_string(),
        };
        let resp = Response::new(
            tid.clone(),
            code,
            Some(&comment),
            to,
            vec![self.local.clone()],
        );
        let mut out = Vec::new();
        resp.encode(&mut out);
        self.push_control(out.into());
    }

    /// A success REPORT for a whole message (section 7.1.2), back along the From-Path.
    fn report(&mut self, id: &MessageId, from_path: &[MsrpUri], len: usize) {
        let tid = self.fresh_tid(&[]);
        let to = if from_path.is_empty() {
            self.remote.clone()
        } else {
            from_path.to_vec()
        };
        let mut req = Request::new(tid, Method::Report, to, vec![self.local.clone()]);
        req.headers.push(Header::MessageId(id.clone()));
        req.headers.push(Header::ByteRange(ByteRange {
            start: 1,
            end: Some(len as u64),
            total: Some(len as u64),
        }));
        req.headers.push(Header::Status(Status::new(200, "OK")));
        let mut out = Vec::new();
        req.encode(&mut out);
        self.push_control(out.into());
    }
}

fn end_line(out: &mut Vec<u8>, tid: &TransactionId, flag: Flag) {
    out.extend_from_slice(b"-------");
    out.extend_from_slice(tid.as_str().as_bytes());
    out.push(flag.as_byte());
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod bounds_tests;
