//! MSRP framing: requests and responses of RFC 4975 section 9, and the stream parser of
//! sections 6 and 7.1.
//!
//! ```text
//!   TCP bytes -> Decoder::push -> Decoder::decode -> Decoded::Frame(Request | Response)
//!                                              \-> Decoded::Invalid (delimited, answer 400/413)
//!                                              \-> Err(StreamError) (lost framing: close)
//!   Frame::encode -> bytes
//! ```
//!
//! MSRP has no Content-Length: a body ends at `CRLF "-------" transaction-id flag CRLF`,
//! and the sender picks a transaction id that the body does not contain. So the parser
//! needs the start line before it can find the end of a frame, and an error in the start
//! line (or a head larger than the limits) loses the framing for good, while an error
//! after it only spoils that one frame, which the session answers and the stream goes on.

use std::fmt;

use bytes::{Bytes, BytesMut};

use super::uri::{self, MsrpUri};

/// `ident = ALPHANUM 3*31ident-char` (RFC 4975 section 9): transaction ids and Message-IDs.
fn is_ident_max(s: &str, max: usize) -> bool {
    let b = s.as_bytes();
    (4..=max).contains(&b.len())
        && b[0].is_ascii_alphanumeric()
        && b[1..]
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'-' | b'+' | b'%' | b'='))
}

/// Makes a random ident of `len` (4..=32) alphanumerics.
pub fn random_ident(rng: &mut impl rand::Rng, len: usize) -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    (0..len.clamp(4, 32))
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

macro_rules! ident_type {
    ($(#[$m:meta])* $name:ident, $max:expr) => {
        $(#[$m])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);

        impl $name {
            /// Checks the `ident` syntax.
            pub fn new(s: impl Into<String>) -> Option<$name> {
                let s = s.into();
                is_ident_max(&s, $max).then_some($name(s))
            }

            pub fn random(rng: &mut impl rand::Rng) -> $name {
                $name(random_ident(rng, 16))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

ident_type!(
    /// A transaction identifier: names one request and its response, and ends its body.
    TransactionId,
    32
);
ident_type!(
    /// A Message-ID: shared by every chunk of one message and by the REPORTs about it.
    /// Up to 64 characters are accepted, not the 32 of `ident`: RFC 7573's own examples
    /// (and many clients) use 36-character UUIDs.
    MessageId,
    64
);

/// `method = mSEND / mREPORT / other-method`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Method {
    Send,
    Report,
    /// `1*UPALPHA`, answered 501 by an endpoint.
    Other(String),
}

impl Method {
    pub fn as_str(&self) -> &str {
        match self {
            Method::Send => "SEND",
            Method::Report => "REPORT",
            Method::Other(m) => m,
        }
    }
}

/// `continuation-flag`: the last byte before the end-line's CRLF.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Flag {
    /// `$`: the last chunk of the message.
    End,
    /// `+`: more chunks follow (also ends an interrupted chunk).
    More,
    /// `#`: the sender abandons the message.
    Abort,
}

impl Flag {
    fn from_byte(b: u8) -> Option<Flag> {
        match b {
            b'$' => Some(Flag::End),
            b'+' => Some(Flag::More),
            b'#' => Some(Flag::Abort),
            _ => None,
        }
    }

    pub fn as_byte(self) -> u8 {
        match self {
            Flag::End => b'$',
            Flag::More => b'+',
            Flag::Abort => b'#',
        }
    }
}

/// `Byte-Range: range-start "-" range-end "/" total`; 1-based and inclusive, `*` = `None`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ByteRange {
    pub start: u64,
    pub end: Option<u64>,
    pub total: Option<u64>,
}

impl ByteRange {
    /// Section 7.3.1: a request without Byte-Range carries the whole message.
    pub const WHOLE: ByteRange = ByteRange {
        start: 1,
        end: None,
        total: None,
    };

    fn parse(s: &str) -> Option<ByteRange> {
        let (start, rest) = s.split_once('-')?;
        let (end, total) = rest.split_once('/')?;
        let num = |t: &str| -> Option<u64> {
            if t.is_empty() || t.len() > 19 || !t.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            t.parse().ok()
        };
        let star = |t: &str| -> Option<Option<u64>> {
            if t == "*" {
                Some(None)
            } else {
                num(t).map(Some)
            }
        };
        let r = ByteRange {
            start: num(start)?,
            end: star(end)?,
            total: star(total)?,
        };
        // 1-based; an empty range is written start-(start-1), as in "1-0/0".
        if r.start == 0 {
            return None;
        }
        if let Some(e) = r.end {
            if e + 1 < r.start {
                return None;
            }
            if r.total.is_some_and(|t| e > t) {
                return None;
            }
        }
        if r.total.is_some_and(|t| r.start > t + 1) {
            return None;
        }
        Some(r)
    }
}

impl fmt::Display for ByteRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-", self.start)?;
        match self.end {
            Some(e) => write!(f, "{e}/")?,
            None => f.write_str("*/")?,
        }
        match self.total {
            Some(t) => write!(f, "{t}"),
            None => f.write_str("*"),
        }
    }
}

/// `Failure-Report: "yes" / "no" / "partial"` (section 7.1.1); absent means yes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum FailureReport {
    #[default]
    Yes,
    No,
    /// Only failures are reported, so a 200 response is not sent either.
    Partial,
}

impl FailureReport {
    pub fn as_str(self) -> &'static str {
        match self {
            FailureReport::Yes => "yes",
            FailureReport::No => "no",
            FailureReport::Partial => "partial",
        }
    }
}

/// `Status: namespace SP status-code [SP comment]` of a REPORT.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Status {
    /// `000` for the codes of RFC 4975.
    pub namespace: u16,
    pub code: u16,
    pub comment: Option<String>,
}

impl Status {
    pub fn new(code: u16, comment: &str) -> Status {
        Status {
            namespace: 0,
            code,
            comment: (!comment.is_empty()).then(|| comment.to_string()),
        }
    }

    fn parse(s: &str) -> Option<Status> {
        let b = s.as_bytes();
        let digits = |r: &[u8]| r.len() == 3 && r.iter().all(u8::is_ascii_digit);
        if b.len() < 7 || !digits(&b[..3]) || b[3] != b' ' || !digits(&b[4..7]) {
            return None;
        }
        let comment = match b.get(7) {
            None => None,
            Some(b' ') => Some(s[8..].to_string()),
            Some(_) => return None,
        };
        Some(Status {
            namespace: s[..3].parse().ok()?,
            code: s[4..7].parse().ok()?,
            comment,
        })
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:03} {:03}", self.namespace, self.code)?;
        if let Some(c) = &self.comment {
            write!(f, " {c}")?;
        }
        Ok(())
    }
}

/// One header line, typed where RFC 4975 defines it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Header {
    ToPath(Vec<MsrpUri>),
    FromPath(Vec<MsrpUri>),
    MessageId(MessageId),
    ByteRange(ByteRange),
    SuccessReport(bool),
    FailureReport(FailureReport),
    Status(Status),
    /// The media type as written, parameters included.
    ContentType(String),
    /// Any other header (MIME headers such as Content-ID, extensions), kept verbatim.
    Other(String, String),
}

impl Header {
    fn write(&self, out: &mut Vec<u8>) {
        use std::io::Write;
        // Writing to a Vec cannot fail.
        let _ = match self {
            Header::ToPath(p) => write!(out, "To-Path: {}", uri::path_to_string(p)),
            Header::FromPath(p) => write!(out, "From-Path: {}", uri::path_to_string(p)),
            Header::MessageId(m) => write!(out, "Message-ID: {m}"),
            Header::ByteRange(r) => write!(out, "Byte-Range: {r}"),
            Header::SuccessReport(b) => {
                write!(out, "Success-Report: {}", if *b { "yes" } else { "no" })
            }
            Header::FailureReport(f) => write!(out, "Failure-Report: {}", f.as_str()),
            Header::Status(s) => write!(out, "Status: {s}"),
            Header::ContentType(c) => write!(out, "Content-Type: {c}"),
            Header::Other(n, v) => write!(out, "{n}: {v}"),
        };
        out.extend_from_slice(b"\r\n");
    }
}

/// The headers of a frame in wire order, so that a frame re-serializes as it was read.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Headers(pub Vec<Header>);

macro_rules! getter {
    ($name:ident, $variant:ident, $ty:ty) => {
        pub fn $name(&self) -> Option<&$ty> {
            self.0.iter().find_map(|h| match h {
                Header::$variant(v) => Some(v),
                _ => None,
            })
        }
    };
}

impl Headers {
    getter!(to_path, ToPath, Vec<MsrpUri>);
    getter!(from_path, FromPath, Vec<MsrpUri>);
    getter!(message_id, MessageId, MessageId);
    getter!(byte_range, ByteRange, ByteRange);
    getter!(status, Status, Status);
    getter!(content_type, ContentType, String);

    pub fn success_report(&self) -> bool {
        self.0
            .iter()
            .any(|h| matches!(h, Header::SuccessReport(true)))
    }

    pub fn failure_report(&self) -> FailureReport {
        self.0
            .iter()
            .find_map(|h| match h {
                Header::FailureReport(f) => Some(*f),
                _ => None,
            })
            .unwrap_or_default()
    }

    /// An untyped header by name, case-insensitive.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.iter().find_map(|h| match h {
            Header::Other(n, v) if n.eq_ignore_ascii_case(name) => Some(v.as_str()),
            _ => None,
        })
    }

    pub fn push(&mut self, h: Header) {
        self.0.push(h);
    }
}

/// An MSRP request (SEND, REPORT or an unknown method).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub tid: TransactionId,
    pub method: Method,
    pub headers: Headers,
    /// `None`: no body (and no blank line); `Some(empty)`: an empty body.
    pub body: Option<Bytes>,
    pub flag: Flag,
}

/// An MSRP transaction response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub tid: TransactionId,
    pub code: u16,
    pub comment: Option<String>,
    pub headers: Headers,
    pub flag: Flag,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Request(Request),
    Response(Response),
}

impl Request {
    /// A request with its To-Path and From-Path, the two headers every request opens with.
    pub fn new(
        tid: TransactionId,
        method: Method,
        to: Vec<MsrpUri>,
        from: Vec<MsrpUri>,
    ) -> Request {
        Request {
            tid,
            method,
            headers: Headers(vec![Header::ToPath(to), Header::FromPath(from)]),
            body: None,
            flag: Flag::End,
        }
    }

    pub fn encode(&self, out: &mut Vec<u8>) {
        self.encode_start(out);
        if let Some(body) = &self.body {
            out.extend_from_slice(b"\r\n");
            out.extend_from_slice(body);
            out.extend_from_slice(b"\r\n");
        }
        write_end_line(out, &self.tid, self.flag);
    }

    /// Start line, headers and the blank line, for a body that is written afterwards,
    /// followed by CRLF and the end-line.
    pub fn encode_head(&self, out: &mut Vec<u8>) {
        self.encode_start(out);
        out.extend_from_slice(b"\r\n");
    }

    fn encode_start(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"MSRP ");
        out.extend_from_slice(self.tid.as_str().as_bytes());
        out.push(b' ');
        out.extend_from_slice(self.method.as_str().as_bytes());
        out.extend_from_slice(b"\r\n");
        for h in &self.headers.0 {
            h.write(out);
        }
    }
}

impl Response {
    /// A response to `req`: To-Path is the previous hop (the first From-Path URI), From-Path
    /// is us (section 7.2).
    pub fn to(req: &Request, code: u16, comment: Option<&str>, local: &MsrpUri) -> Response {
        let to = req
            .headers
            .from_path()
            .and_then(|p| p.first().cloned())
            .into_iter()
            .collect();
        Response::new(req.tid.clone(), code, comment, to, vec![local.clone()])
    }

    pub fn new(
        tid: TransactionId,
        code: u16,
        comment: Option<&str>,
        to: Vec<MsrpUri>,
        from: Vec<MsrpUri>,
    ) -> Response {
        Response {
            tid,
            code,
            comment: comment.map(str::to_string),
            headers: Headers(vec![Header::ToPath(to), Header::FromPath(from)]),
            flag: Flag::End,
        }
    }

    pub fn encode(&self, out: &mut Vec<u8>) {
        use std::io::Write;
        let _ = write!(out, "MSRP {} {:03}", self.tid, self.code);
        if let Some(c) = &self.comment {
            out.push(b' ');
            out.extend_from_slice(c.as_bytes());
        }
        out.extend_from_slice(b"\r\n");
        for h in &self.headers.0 {
            h.write(out);
        }
        write_end_line(out, &self.tid, self.flag);
    }
}

impl Frame {
    pub fn tid(&self) -> &TransactionId {
        match self {
            Frame::Request(r) => &r.tid,
            Frame::Response(r) => &r.tid,
        }
    }

    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Frame::Request(r) => r.encode(out),
            Frame::Response(r) => r.encode(out),
        }
    }

    pub fn to_bytes(&self) -> Bytes {
        let mut out = Vec::new();
        self.encode(&mut out);
        out.into()
    }
}

fn write_end_line(out: &mut Vec<u8>, tid: &TransactionId, flag: Flag) {
    out.extend_from_slice(b"-------");
    out.extend_from_slice(tid.as_str().as_bytes());
    out.push(flag.as_byte());
    out.extend_from_slice(b"\r\n");
}

/// Whether `body` can go in a request with `tid`: section 7.1 forbids a body that contains
/// the end-line (`CRLF "-------" tid flag`); the blank line before the body counts as CRLF.
pub fn body_allows_tid(body: &[u8], tid: &TransactionId) -> bool {
    let mut needle = b"-------".to_vec();
    needle.extend_from_slice(tid.as_str().as_bytes());
    let n = needle.len();
    let mut i = 0;
    while i + n < body.len() {
        if body[i..i + n] == needle[..]
            && Flag::from_byte(body[i + n]).is_some()
            && (i == 0 || (i >= 2 && &body[i - 2..i] == b"\r\n"))
        {
            return false;
        }
        i += 1;
    }
    true
}

/// Parser limits. Exceeding the head limits loses the framing; an oversized body is
/// skipped up to its end-line and reported as [`FrameError::BodyTooLarge`] (answered 413).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Start line, headers and the blank line, in bytes.
    pub max_head: usize,
    pub max_headers: usize,
    /// Body bytes of one chunk.
    pub max_body: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_head: 16 * 1024,
            max_headers: 32,
            max_body: 1024 * 1024,
        }
    }
}

/// The framing is lost: the connection has to be closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StreamError {
    #[error("data does not start with an MSRP start line")]
    NotMsrp,
    #[error("invalid transaction id in the start line")]
    TransactionId,
    #[error("head larger than {0} bytes")]
    HeadTooLarge(usize),
    #[error("more than {0} header lines")]
    TooManyHeaders(usize),
    #[error("end-line that does not match the transaction id")]
    EndLine,
    #[error("decoder already failed")]
    Failed,
}

/// One frame is spoiled, but it was delimited; the stream goes on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    #[error("invalid method")]
    Method,
    #[error("invalid status line")]
    StatusLine,
    #[error("header line is not UTF-8")]
    NotUtf8,
    #[error("header line without a colon")]
    NoColon,
    #[error("invalid header name")]
    HeaderName,
    #[error("control character in a header value")]
    HeaderValue,
    #[error("invalid {0} header")]
    BadValue(&'static str),
    #[error("more than one {0} header")]
    Duplicate(&'static str),
    #[error("no To-Path header")]
    MissingToPath,
    #[error("no From-Path header")]
    MissingFromPath,
    #[error("a response with a body")]
    BodyInResponse,
    #[error("a body without Content-Type")]
    BodyWithoutContentType,
    #[error("body larger than {0} bytes")]
    BodyTooLarge(usize),
}

/// What is known about a frame that failed to parse, enough to answer it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    pub tid: TransactionId,
    /// `None` for a response.
    pub method: Option<Method>,
    pub headers: Headers,
    pub error: FrameError,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    Frame(Frame),
    Invalid(Invalid),
}

enum Kind {
    Request(Method),
    Response(u16, Option<String>),
}

struct Head {
    tid: TransactionId,
    kind: Result<Kind, FrameError>,
    /// Offset of the first header line.
    headers_at: usize,
}

enum State {
    /// Waiting for a start line at the front of the buffer.
    Start,
    /// Looking for the end of the head; `scan` is the next line to look at.
    Head {
        head: Head,
        scan: usize,
        lines: usize,
    },
    /// Looking for the end-line; headers are parsed already.
    Body {
        head: Head,
        headers: Result<Headers, (Headers, FrameError)>,
        body_at: usize,
        scan: usize,
    },
    /// The body outgrew `max_body`: dropping bytes until its end-line.
    Discard {
        head: Head,
        headers: Result<Headers, (Headers, FrameError)>,
    },
    Failed,
}

/// The incremental parser: bytes in ([`Decoder::push`]), frames out ([`Decoder::decode`]).
pub struct Decoder {
    limits: Limits,
    buf: BytesMut,
    state: State,
}

impl Decoder {
    pub fn new(limits: Limits) -> Decoder {
        Decoder {
            limits,
            buf: BytesMut::new(),
            state: State::Start,
        }
    }

    pub fn push(&mut self, data: &[u8]) {
        if !matches!(self.state, State::Failed) {
            self.buf.extend_from_slice(data);
        }
    }

    /// Bytes held, waiting for the rest of a frame.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The next frame, `None` when more input is needed. After an `Err` the decoder only
    /// returns `Err(StreamError::Failed)`.
    pub fn decode(&mut self) -> Result<Option<Decoded>, StreamError> {
        let r = self.step();
        if r.is_err() {
            self.state = State::Failed;
            self.buf = BytesMut::new();
        }
        r
    }

    fn step(&mut self) -> Result<Option<Decoded>, StreamError> {
        loop {
            match std::mem::replace(&mut self.state, State::Failed) {
                State::Failed => return Err(StreamError::Failed),
                State::Start => {
                    let Some(end) = find_crlf(&self.buf, 0) else {
                        self.check_start_prefix()?;
                        if self.buf.len() > self.limits.max_head {
                            return Err(StreamError::HeadTooLarge(self.limits.max_head));
                        }
                        self.state = State::Start;
                        return Ok(None);
                    };
                    let head = parse_start_line(&self.buf[..end], end + 2)?;
                    self.state = State::Head {
                        head,
                        scan: end + 2,
                        lines: 0,
                    };
                }
                State::Head {
                    head,
                    mut scan,
                    mut lines,
                } => loop {
                    let Some(end) = find_crlf(&self.buf, scan) else {
                        if self.buf.len() > self.limits.max_head {
                            return Err(StreamError::HeadTooLarge(self.limits.max_head));
                        }
                        self.state = State::Head { head, scan, lines };
                        return Ok(None);
                    };
                    if end + 2 > self.limits.max_head {
                        return Err(StreamError::HeadTooLarge(self.limits.max_head));
                    }
                    let line = &self.buf[scan..end];
                    if line.is_empty() {
                        // Blank line: a body follows.
                        let headers = parse_headers(&self.buf[head.headers_at..scan]);
                        self.state = State::Body {
                            head,
                            headers,
                            body_at: end + 2,
                            // The end-line of an empty body may follow the blank line
                            // directly; accept that too.
                            scan: end,
                        };
                        break;
                    }
                    if line.starts_with(b"-------") {
                        let flag = end_line_flag(line, &head.tid).ok_or(StreamError::EndLine)?;
                        let headers = parse_headers(&self.buf[head.headers_at..scan]);
                        let decoded = finish(head, headers, None, flag);
                        let _ = self.buf.split_to(end + 2);
                        self.state = State::Start;
                        return Ok(Some(decoded));
                    }
                    lines += 1;
                    if lines > self.limits.max_headers {
                        return Err(StreamError::TooManyHeaders(self.limits.max_headers));
                    }
                    scan = end + 2;
                },
                State::Body {
                    head,
                    headers,
                    body_at,
                    scan,
                } => match find_end_line(&self.buf, scan, &head.tid) {
                    Found::At { at, flag, next } => {
                        let body = if at > body_at {
                            self.buf[body_at..at].to_vec()
                        } else {
                            Vec::new()
                        };
                        let headers = if body.len() > self.limits.max_body {
                            let h = match headers {
                                Ok(h) | Err((h, _)) => h,
                            };
                            Err((h, FrameError::BodyTooLarge(self.limits.max_body)))
                        } else {
                            headers
                        };
                        let decoded = finish(head, headers, Some(Bytes::from(body)), flag);
                        let _ = self.buf.split_to(next);
                        self.state = State::Start;
                        return Ok(Some(decoded));
                    }
                    Found::NotYet(scan) => {
                        let needle = 7 + head.tid.as_str().len() + 5;
                        if self.buf.len() > body_at + self.limits.max_body + needle {
                            let keep = needle;
                            let _ = self.buf.split_to(self.buf.len() - keep);
                            self.state = State::Discard { head, headers };
                            continue;
                        }
                        self.state = State::Body {
                            head,
                            headers,
                            body_at,
                            scan,
                        };
                        return Ok(None);
                    }
                },
                State::Discard { head, headers } => match find_end_line(&self.buf, 0, &head.tid) {
                    Found::At { flag, next, .. } => {
                        let h = match headers {
                            Ok(h) | Err((h, _)) => h,
                        };
                        let err = Err((h, FrameError::BodyTooLarge(self.limits.max_body)));
                        let decoded = finish(head, err, Some(Bytes::new()), flag);
                        let _ = self.buf.split_to(next);
                        self.state = State::Start;
                        return Ok(Some(decoded));
                    }
                    Found::NotYet(_) => {
                        let keep = 7 + head.tid.as_str().len() + 5;
                        if self.buf.len() > keep {
                            let _ = self.buf.split_to(self.buf.len() - keep);
                        }
                        self.state = State::Discard { head, headers };
                        return Ok(None);
                    }
                },
            }
        }
    }

    /// The headers of a SEND (or other request) whose body is still arriving, once its
    /// head is parsed: a listener can route a connection on its To-Path before a long
    /// first chunk has ended.
    pub fn pending_request_headers(&self) -> Option<&Headers> {
        let (head, headers) = match &self.state {
            State::Body { head, headers, .. } | State::Discard { head, headers } => (head, headers),
            _ => return None,
        };
        match (&head.kind, headers) {
            (Ok(Kind::Request(_)), Ok(h)) => Some(h),
            _ => None,
        }
    }

    /// Fails early on bytes that cannot become `MSRP SP`, instead of buffering up to the limit.
    fn check_start_prefix(&self) -> Result<(), StreamError> {
        let n = self.buf.len().min(5);
        if self.buf[..n] != b"MSRP "[..n] {
            return Err(StreamError::NotMsrp);
        }
        Ok(())
    }
}

fn find_crlf(buf: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    while i + 1 < buf.len() {
        match buf[i + 1] {
            b'\n' if buf[i] == b'\r' => return Some(i),
            b'\r' => i += 1,
            _ => i += 2,
        }
    }
    None
}

enum Found {
    /// The end-line's CRLF starts at `at`; the frame ends before `next`.
    At { at: usize, flag: Flag, next: usize },
    /// Not found; resume the search at this offset.
    NotYet(usize),
}

/// Looks for `CRLF "-------" tid flag CRLF` from `from` on.
fn find_end_line(buf: &[u8], from: usize, tid: &TransactionId) -> Found {
    let tid = tid.as_str().as_bytes();
    let n = 2 + 7 + tid.len();
    let full = n + 3;
    let mut i = from;
    while i + n <= buf.len() {
        if buf[i] == b'\r'
            && buf[i + 1] == b'\n'
            && &buf[i + 2..i + 9] == b"-------"
            && &buf[i + 9..i + n] == tid
        {
            if i + full > buf.len() {
                return Found::NotYet(i);
            }
            if let Some(flag) = Flag::from_byte(buf[i + n]) {
                if &buf[i + n + 1..i + full] == b"\r\n" {
                    return Found::At {
                        at: i,
                        flag,
                        next: i + full,
                    };
                }
            }
        }
        i += 1;
    }
    Found::NotYet(i.max(from))
}

fn end_line_flag(line: &[u8], tid: &TransactionId) -> Option<Flag> {
    let tid = tid.as_str().as_bytes();
    if line.len() != 7 + tid.len() + 1 || &line[7..7 + tid.len()] != tid {
        return None;
    }
    Flag::from_byte(line[line.len() - 1])
}

fn parse_start_line(line: &[u8], headers_at: usize) -> Result<Head, StreamError> {
    let rest = line.strip_prefix(b"MSRP ").ok_or(StreamError::NotMsrp)?;
    let sp = rest
        .iter()
        .position(|&b| b == b' ')
        .ok_or(StreamError::TransactionId)?;
    let tid = std::str::from_utf8(&rest[..sp])
        .ok()
        .and_then(TransactionId::new)
        .ok_or(StreamError::TransactionId)?;
    let rest = &rest[sp + 1..];
    let is_code = rest.len() >= 3
        && rest[..3].iter().all(u8::is_ascii_digit)
        && (rest.len() == 3 || rest[3] == b' ');
    let kind = if is_code {
        let code =
            (rest[0] - b'0') as u16 * 100 + (rest[1] - b'0') as u16 * 10 + (rest[2] - b'0') as u16;
        match rest.get(4..) {
            None => Ok(Kind::Response(code, None)),
            Some(c) => match std::str::from_utf8(c) {
                Ok(c) if is_utf8text(c) => Ok(Kind::Response(code, Some(c.to_string()))),
                _ => Err(FrameError::StatusLine),
            },
        }
    } else if !rest.is_empty() && rest.iter().all(u8::is_ascii_uppercase) {
        // Only ASCII uppercase here, so from_utf8 cannot fail.
        let m = String::from_utf8_lossy(rest).into_owned();
        Ok(match m.as_str() {
            "SEND" => Kind::Request(Method::Send),
            "REPORT" => Kind::Request(Method::Report),
            _ => Kind::Request(Method::Other(m)),
        })
    } else if rest.first().is_some_and(u8::is_ascii_digit) {
        Err(FrameError::StatusLine)
    } else {
        Err(FrameError::Method)
    };
    Ok(Head {
        tid,
        kind,
        headers_at,
    })
}

/// `utf8text = *(HTAB / %x20-7E / UTF8-NONASCII)`.
fn is_utf8text(s: &str) -> bool {
    s.chars()
        .all(|c| c == '\t' || (' '..='~').contains(&c) || !c.is_ascii())
}

/// Parses the header lines (each ending in CRLF). On error the headers parsed so far are
/// kept, so that the answer can still be routed.
fn parse_headers(block: &[u8]) -> Result<Headers, (Headers, FrameError)> {
    let mut headers = Headers::default();
    let mut first_err = None;
    let mut start = 0;
    while start < block.len() {
        let end = find_crlf(block, start).unwrap_or(block.len());
        match parse_header(&block[start..end]) {
            Ok(h) => {
                let dup = match &h {
                    Header::ToPath(_) => headers.to_path().is_some().then_some("To-Path"),
                    Header::FromPath(_) => headers.from_path().is_some().then_some("From-Path"),
                    Header::MessageId(_) => headers.message_id().is_some().then_some("Message-ID"),
                    Header::ByteRange(_) => headers.byte_range().is_some().then_some("Byte-Range"),
                    Header::Status(_) => headers.status().is_some().then_some("Status"),
                    Header::ContentType(_) => {
                        headers.content_type().is_some().then_some("Content-Type")
                    }
                    Header::SuccessReport(_) => {
                        has(&headers, |h| matches!(h, Header::SuccessReport(_)))
                            .then_some("Success-Report")
                    }
                    Header::FailureReport(_) => {
                        has(&headers, |h| matches!(h, Header::FailureReport(_)))
                            .then_some("Failure-Report")
                    }
                    Header::Other(..) => None,
                };
                if let Some(name) = dup {
                    first_err.get_or_insert(FrameError::Duplicate(name));
                } else {
                    headers.push(h);
                }
            }
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
        start = end + 2;
    }
    if first_err.is_none() {
        if headers.to_path().is_none() {
            first_err = Some(FrameError::MissingToPath);
        } else if headers.from_path().is_none() {
            first_err = Some(FrameError::MissingFromPath);
        }
    }
    match first_err {
        None => Ok(headers),
        Some(e) => Err((headers, e)),
    }
}

fn has(headers: &Headers, f: impl Fn(&Header) -> bool) -> bool {
    headers.0.iter().any(f)
}

fn parse_header(line: &[u8]) -> Result<Header, FrameError> {
    let line = std::str::from_utf8(line).map_err(|_| FrameError::NotUtf8)?;
    let (name, value) = line.split_once(':').ok_or(FrameError::NoColon)?;
    // hname = ALPHA *token
    if !name.as_bytes().first().is_some_and(u8::is_ascii_alphabetic) || !uri::is_token(name) {
        return Err(FrameError::HeaderName);
    }
    let value = value.trim_start_matches([' ', '\t']);
    if !is_utf8text(value) {
        return Err(FrameError::HeaderValue);
    }
    let typed = |n: &'static str| FrameError::BadValue(n);
    let lower = name.to_ascii_lowercase();
    Ok(match lower.as_str() {
        "to-path" => Header::ToPath(uri::parse_path(value).map_err(|_| typed("To-Path"))?),
        "from-path" => Header::FromPath(uri::parse_path(value).map_err(|_| typed("From-Path"))?),
        "message-id" => {
            Header::MessageId(MessageId::new(value.trim_end()).ok_or(typed("Message-ID"))?)
        }
        "byte-range" => {
            Header::ByteRange(ByteRange::parse(value.trim_end()).ok_or(typed("Byte-Range"))?)
        }
        "success-report" => match value.trim_end().to_ascii_lowercase().as_str() {
            "yes" => Header::SuccessReport(true),
            "no" => Header::SuccessReport(false),
            _ => return Err(typed("Success-Report")),
        },
        "failure-report" => match value.trim_end().to_ascii_lowercase().as_str() {
            "yes" => Header::FailureReport(FailureReport::Yes),
            "no" => Header::FailureReport(FailureReport::No),
            "partial" => Header::FailureReport(FailureReport::Partial),
            _ => return Err(typed("Failure-Report")),
        },
        "status" => Header::Status(Status::parse(value).ok_or(typed("Status"))?),
        "content-type" => {
            if !is_media_type(value) {
                return Err(typed("Content-Type"));
            }
            Header::ContentType(value.to_string())
        }
        _ => Header::Other(name.to_string(), value.to_string()),
    })
}

pub(crate) fn is_media_type_str(v: &str) -> bool {
    is_media_type(v)
}

/// `type "/" subtype *( ";" gen-param )`; parameters are checked for tokens only loosely,
/// since quoted strings may contain ";".
fn is_media_type(v: &str) -> bool {
    let essence = v.split(';').next().unwrap_or_default().trim();
    match essence.split_once('/') {
        Some((t, s)) => uri::is_token(t) && uri::is_token(s),
        None => false,
    }
}

fn finish(
    head: Head,
    headers: Result<Headers, (Headers, FrameError)>,
    body: Option<Bytes>,
    flag: Flag,
) -> Decoded {
    let invalid = |method, headers, error| {
        Decoded::Invalid(Invalid {
            tid: head.tid.clone(),
            method,
            headers,
            error,
        })
    };
    match (head.kind, headers) {
        (Ok(Kind::Request(m)), Err((h, e))) => invalid(Some(m), h, e),
        (Ok(Kind::Response(..)), Err((h, e))) => invalid(None, h, e),
        (Err(e), Ok(h) | Err((h, _))) => invalid(None, h, e),
        (Ok(Kind::Request(m)), Ok(h)) => {
            if body.is_some() && h.content_type().is_none() {
                return invalid(Some(m), h, FrameError::BodyWithoutContentType);
            }
            Decoded::Frame(Frame::Request(Request {
                tid: head.tid,
                method: m,
                headers: h,
                body,
                flag,
            }))
        }
        (Ok(Kind::Response(code, comment)), Ok(h)) => {
            if body.is_some() {
                return invalid(None, h, FrameError::BodyInResponse);
            }
            Decoded::Frame(Frame::Response(Response {
                tid: head.tid,
                code,
                comment,
                headers: h,
                flag,
            }))
        }
    }
}

/// Decodes one complete frame from `bytes` (tests, tools).
pub fn decode_one(bytes: &[u8], limits: Limits) -> Result<Option<Decoded>, StreamError> {
    let mut d = Decoder::new(limits);
    d.push(bytes);
    d.decode()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// RFC 4975 examples, with the line breaks of the text turned into CRLF.
    fn wire(s: &str) -> Vec<u8> {
        s.replace('\n', "\r\n").into_bytes()
    }

    fn decode_all(bytes: &[u8]) -> Vec<Decoded> {
        let mut d = Decoder::new(Limits::default());
        d.push(bytes);
        let mut out = Vec::new();
        while let Some(f) = d.decode().unwrap() {
            out.push(f);
        }
        assert_eq!(d.buffered(), 0, "bytes left over");
        out
    }

    fn frame(d: &Decoded) -> &Frame {
        match d {
            Decoded::Frame(f) => f,
            Decoded::Invalid(i) => panic!("invalid: {i:?}"),
        }
    }

    fn assert_round_trip(text: &str) -> Vec<Frame> {
        let bytes = wire(text);
        let frames: Vec<Frame> = decode_all(&bytes)
            .iter()
            .map(|d| frame(d).clone())
            .collect();
        let mut out = Vec::new();
        for f in &frames {
            f.encode(&mut out);
        }
        assert_eq!(
            String::from_utf8_lossy(&out),
            String::from_utf8_lossy(&bytes)
        );
        frames
    }

    /// Section 7.1 (and 4): a SEND and its 200.
    const RFC_SEND_AND_200: &str = "MSRP a786hjs2 SEND
To-Path: msrp://biloxi.example.com:12763/kjhd37s2s20w2a;tcp
From-Path: msrp://atlanta.example.com:7654/jshA7weztas;tcp
Message-ID: 87652491
Byte-Range: 1-25/25
Content-Type: text/plain

Hey Bob, are you there?
-------a786hjs2$
MSRP a786hjs2 200 OK
To-Path: msrp://atlanta.example.com:7654/jshA7weztas;tcp
From-Path: msrp://biloxi.example.com:12763/kjhd37s2s20w2a;tcp
-------a786hjs2$
";

    /// Section 7.1.2 / 7.3: a success REPORT.
    const RFC_REPORT: &str = "MSRP dkei38sd REPORT
To-Path: msrp://alicepc.example.com:7777/iau39soe2843z;tcp
From-Path: msrp://bob.example.com:8888/9di4eae923wzd;tcp
Message-ID: 12339sdqwer
Byte-Range: 1-106/106
Status: 000 200 OK
-------dkei38sd$
";

    /// The chunked example (section 7.1.1), with the To-Path and From-Path that the RFC
    /// leaves out of it and the ABNF requires.
    const RFC_CHUNKED: &str = "MSRP dkei38sd SEND
To-Path: msrp://alicepc.example.com:7777/iau39soe2843z;tcp
From-Path: msrp://bob.example.com:8888/9di4eae923wzd;tcp
Message-ID: 4564dpWd
Byte-Range: 1-*/8
Content-Type: text/plain

abcd
-------dkei38sd+
MSRP dkei38ia SEND
To-Path: msrp://alicepc.example.com:7777/iau39soe2843z;tcp
From-Path: msrp://bob.example.com:8888/9di4eae923wzd;tcp
Message-ID: 4564dpWd
Byte-Range: 5-8/8
Content-Type: text/plain

EFGH
-------dkei38ia$
";

    /// RFC 7573 example 6, with its headers in the RFC 4975 order.
    const RFC7573_FAILURE_REPORT_NO: &str = "MSRP di2fs53v SEND
To-Path: msrp://x2s.example.com:7654/jshA7weztas;tcp
From-Path: msrp://s2x.example.net:12763/kjhd37s2s20w2a;tcp
Message-ID: 6480C096-937A-46E7-BF9D-1353706B60AA
Byte-Range: 1-25/25
Failure-Report: no
Content-Type: text/plain

Neither, fair saint, if either thee dislike.
-------di2fs53v$
";

    #[test]
    fn rfc4975_send_and_response_round_trip() {
        let frames = assert_round_trip(RFC_SEND_AND_200);
        let Frame::Request(req) = &frames[0] else {
            panic!()
        };
        assert_eq!(req.method, Method::Send);
        assert_eq!(req.tid.as_str(), "a786hjs2");
        assert_eq!(req.flag, Flag::End);
        assert_eq!(req.headers.message_id().unwrap().as_str(), "87652491");
        assert_eq!(
            req.headers.byte_range(),
            Some(&ByteRange {
                start: 1,
                end: Some(25),
                total: Some(25)
            })
        );
        assert_eq!(req.headers.content_type().unwrap(), "text/plain");
        assert_eq!(req.body.as_deref(), Some(&b"Hey Bob, are you there?"[..]));
        assert_eq!(req.headers.to_path().unwrap()[0].port, Some(12763));
        let Frame::Response(resp) = &frames[1] else {
            panic!()
        };
        assert_eq!((resp.code, resp.comment.as_deref()), (200, Some("OK")));
    }

    #[test]
    fn rfc4975_report_round_trip() {
        let frames = assert_round_trip(RFC_REPORT);
        let Frame::Request(req) = &frames[0] else {
            panic!()
        };
        assert_eq!(req.method, Method::Report);
        assert_eq!(req.body, None);
        let st = req.headers.status().unwrap();
        assert_eq!(
            (st.namespace, st.code, st.comment.as_deref()),
            (0, 200, Some("OK"))
        );
    }

    #[test]
    fn rfc4975_chunked_example_round_trip() {
        let frames = assert_round_trip(RFC_CHUNKED);
        let Frame::Request(a) = &frames[0] else {
            panic!()
        };
        let Frame::Request(b) = &frames[1] else {
            panic!()
        };
        assert_eq!(a.flag, Flag::More);
        assert_eq!(b.flag, Flag::End);
        assert_eq!(a.headers.byte_range().unwrap().end, None);
        assert_eq!(a.headers.message_id(), b.headers.message_id());
        assert_eq!(a.body.as_deref(), Some(&b"abcd"[..]));
        assert_eq!(b.body.as_deref(), Some(&b"EFGH"[..]));
    }

    #[test]
    fn rfc7573_send_with_failure_report_no_round_trips() {
        let frames = assert_round_trip(RFC7573_FAILURE_REPORT_NO);
        let Frame::Request(r) = &frames[0] else {
            panic!()
        };
        assert_eq!(r.headers.failure_report(), FailureReport::No);
        assert!(!r.headers.success_report());
    }

    #[test]
    fn headers_keep_their_order_and_unknown_headers() {
        let text = "MSRP abcd1234 SEND
From-Path: msrp://b.example.com:1/x;tcp
To-Path: msrp://a.example.com:2/y;tcp
Message-ID: m1234
X-Extension: some value
Content-ID: <1234@example.com>
Content-Type: text/plain; charset=utf-8

hi
-------abcd1234$
";
        let frames = assert_round_trip(text);
        let Frame::Request(r) = &frames[0] else {
            panic!()
        };
        assert_eq!(r.headers.get("x-extension"), Some("some value"));
        assert_eq!(
            r.headers.content_type().unwrap(),
            "text/plain; charset=utf-8"
        );
    }

    #[test]
    fn empty_body_and_no_body_differ() {
        let no_body = "MSRP abcd1234 SEND
To-Path: msrp://a.example.com:2/y;tcp
From-Path: msrp://b.example.com:1/x;tcp
Message-ID: m1234
Byte-Range: 1-0/0
-------abcd1234$
";
        let frames = assert_round_trip(no_body);
        let Frame::Request(r) = &frames[0] else {
            panic!()
        };
        assert_eq!(r.body, None);
        let empty = "MSRP abcd1234 SEND
To-Path: msrp://a.example.com:2/y;tcp
From-Path: msrp://b.example.com:1/x;tcp
Message-ID: m1234
Content-Type: text/plain


-------abcd1234$
";
        let frames = assert_round_trip(empty);
        let Frame::Request(r) = &frames[0] else {
            panic!()
        };
        assert_eq!(r.body.as_deref(), Some(&b""[..]));
        // An end-line right after the blank line is read as an empty body as well.
        let lenient = wire(
            "MSRP abcd1234 SEND
To-Path: msrp://a.example.com:2/y;tcp
From-Path: msrp://b.example.com:1/x;tcp
Content-Type: text/plain

-------abcd1234$
",
        );
        let Decoded::Frame(Frame::Request(r)) = &decode_all(&lenient)[0] else {
            panic!()
        };
        assert_eq!(r.body.as_deref(), Some(&b""[..]));
    }

    #[test]
    fn body_may_contain_lookalike_end_lines() {
        let body = "line\r\n-------abcd1234x\r\n-------abcd123$\r\n-------abcd1234$ no crlf";
        let mut req = Request::new(
            TransactionId::new("abcd1234").unwrap(),
            Method::Send,
            vec![MsrpUri::parse("msrp://a:1/s;tcp").unwrap()],
            vec![MsrpUri::parse("msrp://b:1/s;tcp").unwrap()],
        );
        req.headers.push(Header::ContentType("text/plain".into()));
        req.body = Some(Bytes::from(body));
        let f = Frame::Request(req.clone());
        let bytes = f.to_bytes();
        assert_eq!(decode_all(&bytes), vec![Decoded::Frame(f)]);
        // That body does contain CRLF + "-------abcd1234$", so a sender must not use the tid.
        assert!(!body_allows_tid(body.as_bytes(), &req.tid));
        assert!(body_allows_tid(
            body.as_bytes(),
            &TransactionId::new("zzzz9999").unwrap()
        ));
        assert!(!body_allows_tid(
            b"-------zzzz9999+ at the start",
            &TransactionId::new("zzzz9999").unwrap()
        ));
    }

    #[test]
    fn every_split_of_the_examples_decodes_the_same() {
        for text in [RFC_SEND_AND_200, RFC_REPORT, RFC_CHUNKED] {
            let bytes = wire(text);
            let whole = decode_all(&bytes);
            for split in 0..=bytes.len() {
                let mut d = Decoder::new(Limits::default());
                let mut got = Vec::new();
                d.push(&bytes[..split]);
                while let Some(f) = d.decode().unwrap() {
                    got.push(f);
                }
                d.push(&bytes[split..]);
                while let Some(f) = d.decode().unwrap() {
                    got.push(f);
                }
                assert_eq!(got, whole, "split at {split}");
            }
            // and byte by byte
            let mut d = Decoder::new(Limits::default());
            let mut got = Vec::new();
            for b in &bytes {
                d.push(std::slice::from_ref(b));
                while let Some(f) = d.decode().unwrap() {
                    got.push(f);
                }
            }
            assert_eq!(got, whole);
        }
    }

    fn invalid_error(text: &str) -> FrameError {
        match decode_all(&wire(text)).remove(0) {
            Decoded::Invalid(i) => i.error,
            Decoded::Frame(f) => panic!("parsed: {f:?}"),
        }
    }

    #[test]
    fn malformed_frames_are_delimited_and_typed() {
        let head =
            "To-Path: msrp://a.example.com:2/y;tcp\nFrom-Path: msrp://b.example.com:1/x;tcp\n";
        let cases: Vec<(String, FrameError)> = vec![
            (format!("MSRP abcd1234 send\n{head}-------abcd1234$\n"), FrameError::Method),
            (format!("MSRP abcd1234 20 OK\n{head}-------abcd1234$\n"), FrameError::StatusLine),
            (format!("MSRP abcd1234 SEND\n{head}NoColonHere\n-------abcd1234$\n"), FrameError::NoColon),
            (format!("MSRP abcd1234 SEND\n{head}-bad: x\n-------abcd1234$\n"), FrameError::HeaderName),
            (format!("MSRP abcd1234 SEND\n{head}Byte-Range: 0-1/1\n-------abcd1234$\n"), FrameError::BadValue("Byte-Range")),
            (format!("MSRP abcd1234 SEND\n{head}Byte-Range: 1-9/5\n-------abcd1234$\n"), FrameError::BadValue("Byte-Range")),
            (format!("MSRP abcd1234 SEND\n{head}Byte-Range: 1-18446744073709551616/*\n-------abcd1234$\n"), FrameError::BadValue("Byte-Range")),
            (format!("MSRP abcd1234 SEND\n{head}Message-ID: a\n-------abcd1234$\n"), FrameError::BadValue("Message-ID")),
            (format!("MSRP abcd1234 SEND\n{head}Success-Report: maybe\n-------abcd1234$\n"), FrameError::BadValue("Success-Report")),
            (format!("MSRP abcd1234 SEND\n{head}Failure-Report: sometimes\n-------abcd1234$\n"), FrameError::BadValue("Failure-Report")),
            (format!("MSRP abcd1234 REPORT\n{head}Status: 200 OK\n-------abcd1234$\n"), FrameError::BadValue("Status")),
            (format!("MSRP abcd1234 SEND\n{head}Content-Type: textplain\n\nx\n-------abcd1234$\n"), FrameError::BadValue("Content-Type")),
            (format!("MSRP abcd1234 SEND\n{head}Message-ID: abcd\nMessage-ID: efgh\n-------abcd1234$\n"), FrameError::Duplicate("Message-ID")),
            ("MSRP abcd1234 SEND\nFrom-Path: msrp://b.example.com:1/x;tcp\n-------abcd1234$\n".to_string(), FrameError::MissingToPath),
            ("MSRP abcd1234 SEND\nTo-Path: msrp://b.example.com:1/x;tcp\n-------abcd1234$\n".to_string(), FrameError::MissingFromPath),
            ("MSRP abcd1234 SEND\nTo-Path: http://x/;tcp\nFrom-Path: msrp://b.example.com:1/x;tcp\n-------abcd1234$\n".to_string(), FrameError::BadValue("To-Path")),
            (format!("MSRP abcd1234 SEND\n{head}\nbody\n-------abcd1234$\n"), FrameError::BodyWithoutContentType),
            (format!("MSRP abcd1234 200 OK\n{head}Content-Type: text/plain\n\nbody\n-------abcd1234$\n"), FrameError::BodyInResponse),
            (format!("MSRP abcd1234 SEND\n{head}X: a\u{7f}b\n-------abcd1234$\n"), FrameError::HeaderValue),
        ];
        for (text, want) in cases {
            assert_eq!(invalid_error(&text), want, "{text}");
        }
        // Not UTF-8.
        let mut bytes = wire(&format!("MSRP abcd1234 SEND\n{head}"));
        bytes.extend_from_slice(b"X: \xff\r\n-------abcd1234$\r\n");
        let Decoded::Invalid(i) = decode_all(&bytes).remove(0) else {
            panic!()
        };
        assert_eq!(i.error, FrameError::NotUtf8);
        // The paths parsed before the error are kept, to route the 400.
        assert!(i.headers.from_path().is_some());
    }

    #[test]
    fn the_stream_goes_on_after_an_invalid_frame() {
        let text = format!(
            "MSRP abcd1234 SEND\nTo-Path: msrp://a:1/s;tcp\nFrom-Path: msrp://b:1/s;tcp\nBroken\n-------abcd1234$\n{RFC_REPORT}"
        );
        let out = decode_all(&wire(&text));
        assert!(matches!(out[0], Decoded::Invalid(_)));
        assert!(matches!(out[1], Decoded::Frame(Frame::Request(_))));
    }

    #[test]
    fn lost_framing_is_fatal() {
        for (bytes, want) in [
            (&b"HTTP/1.1 200 OK\r\n"[..], StreamError::NotMsrp),
            (&b"GET"[..], StreamError::NotMsrp),
            (&b"MSRP abc SEND\r\n"[..], StreamError::TransactionId),
            (&b"MSRP a786hjs2\r\n"[..], StreamError::TransactionId),
            (
                &b"MSRP abcd1234 SEND\r\nTo-Path: msrp://a:1/s;tcp\r\n-------zzzz$\r\n"[..],
                StreamError::EndLine,
            ),
        ] {
            let mut d = Decoder::new(Limits::default());
            d.push(bytes);
            assert_eq!(
                d.decode(),
                Err(want),
                "{:?}",
                String::from_utf8_lossy(bytes)
            );
            assert_eq!(d.decode(), Err(StreamError::Failed));
        }
    }

    #[test]
    fn head_limits_are_enforced() {
        let limits = Limits {
            max_head: 200,
            max_headers: 3,
            max_body: 16,
        };
        let mut d = Decoder::new(limits);
        d.push(b"MSRP abcd1234 SEND\r\n");
        d.push(&[b'X'; 300]);
        assert_eq!(d.decode(), Err(StreamError::HeadTooLarge(200)));

        let mut d = Decoder::new(limits);
        d.push(b"MSRP abcd1234 SEND\r\nA: 1\r\nB: 2\r\nC: 3\r\nD: 4\r\n");
        assert_eq!(d.decode(), Err(StreamError::TooManyHeaders(3)));
    }

    #[test]
    fn an_oversized_body_is_skipped_and_reported() {
        let limits = Limits {
            max_body: 16,
            ..Limits::default()
        };
        let mut d = Decoder::new(limits);
        d.push(&wire("MSRP abcd1234 SEND\nTo-Path: msrp://a:1/s;tcp\nFrom-Path: msrp://b:1/s;tcp\nMessage-ID: m1234\nContent-Type: text/plain\n\n"));
        for _ in 0..100 {
            d.push(&[b'x'; 1000]);
            assert_eq!(d.decode(), Ok(None));
            assert!(d.buffered() < 200, "{}", d.buffered());
        }
        d.push(b"\r\n-------abcd");
        assert_eq!(d.decode(), Ok(None));
        d.push(b"1234$\r\n");
        d.push(&wire(RFC_REPORT));
        let Some(Decoded::Invalid(i)) = d.decode().unwrap() else {
            panic!()
        };
        assert_eq!(i.error, FrameError::BodyTooLarge(16));
        assert_eq!(i.headers.message_id().unwrap().as_str(), "m1234");
        assert!(matches!(d.decode(), Ok(Some(Decoded::Frame(_)))));
        // Just over the limit, found in one go.
        let mut d = Decoder::new(limits);
        d.push(&wire("MSRP abcd1234 SEND\nTo-Path: msrp://a:1/s;tcp\nFrom-Path: msrp://b:1/s;tcp\nContent-Type: text/plain\n\n01234567890123456\n-------abcd1234$\n"));
        let Some(Decoded::Invalid(i)) = d.decode().unwrap() else {
            panic!()
        };
        assert_eq!(i.error, FrameError::BodyTooLarge(16));
    }

    #[test]
    fn unknown_methods_parse_for_a_501() {
        let text = "MSRP abcd1234 AUTH\nTo-Path: msrp://a:1/s;tcp\nFrom-Path: msrp://b:1/s;tcp\n-------abcd1234$\n";
        let frames = assert_round_trip(text);
        let Frame::Request(r) = &frames[0] else {
            panic!()
        };
        assert_eq!(r.method, Method::Other("AUTH".into()));
    }

    #[test]
    fn idents_follow_the_abnf() {
        assert!(TransactionId::new("a786hjs2").is_some());
        assert!(TransactionId::new("a1.-+%=").is_some());
        assert!(TransactionId::new("abc").is_none());
        assert!(TransactionId::new("a".repeat(33)).is_none());
        assert!(TransactionId::new(".abcd").is_none());
        assert!(TransactionId::new("54C6F4F1-A39C-47D6-8718-FA65B3D0414A").is_none());
        assert!(MessageId::new("54C6F4F1-A39C-47D6-8718-FA65B3D0414A").is_some());
        assert!(MessageId::new("a".repeat(65)).is_none());
        let mut rng = rand::rng();
        assert!(is_ident_max(TransactionId::random(&mut rng).as_str(), 32));
    }

    fn valid_frames() -> impl Strategy<Value = Vec<u8>> {
        (
            "[a-z0-9]{4,12}",
            proptest::collection::vec(any::<u8>(), 0..300),
            prop_oneof![Just(Flag::End), Just(Flag::More), Just(Flag::Abort)],
            any::<bool>(),
        )
            .prop_map(|(tid, body, flag, response)| {
                let tid = TransactionId::new(tid).unwrap();
                let to = vec![MsrpUri::parse("msrp://a.example.com:1/s1;tcp").unwrap()];
                let from = vec![MsrpUri::parse("msrp://b.example.com:2/s2;tcp").unwrap()];
                if response {
                    return Frame::Response(Response::new(tid, 200, Some("OK"), to, from))
                        .to_bytes()
                        .to_vec();
                }
                let mut r = Request::new(tid, Method::Send, to, from);
                r.flag = flag;
                if body_allows_tid(&body, &r.tid) {
                    r.headers
                        .push(Header::ContentType("application/octet-stream".into()));
                    r.body = Some(body.into());
                }
                Frame::Request(r).to_bytes().to_vec()
            })
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..2000), cut in 0usize..2000) {
            let mut d = Decoder::new(Limits { max_head: 512, max_headers: 8, max_body: 256 });
            let cut = cut.min(data.len());
            for part in [&data[..cut], &data[cut..]] {
                d.push(part);
                while let Ok(Some(_)) = d.decode() {}
            }
        }

        #[test]
        fn random_msrp_like_bytes_never_panic(lines in proptest::collection::vec(
            prop_oneof![
                Just("MSRP abcd1234 SEND".to_string()),
                Just("MSRP abcd1234 200 OK".to_string()),
                Just("To-Path: msrp://a:1/s;tcp".to_string()),
                Just("From-Path: msrp://b:1/s;tcp".to_string()),
                Just("Byte-Range: 1-*/*".to_string()),
                Just("Content-Type: text/plain".to_string()),
                Just("".to_string()),
                Just("-------abcd1234$".to_string()),
                Just("-------abcd1234+".to_string()),
                "[ -~]{0,20}",
            ], 0..30)) {
            let mut d = Decoder::new(Limits::default());
            d.push(lines.join("\r\n").as_bytes());
            while let Ok(Some(_)) = d.decode() {}
        }

        #[test]
        fn valid_frames_survive_any_split(frames in proptest::collection::vec(valid_frames(), 1..5),
                                          splits in proptest::collection::vec(any::<prop::sample::Index>(), 0..6)) {
            let bytes: Vec<u8> = frames.concat();
            let whole = decode_all(&bytes);
            prop_assert_eq!(whole.len(), frames.len());
            for (f, d) in frames.iter().zip(&whole) {
                let Decoded::Frame(fr) = d else { return Err(TestCaseError::fail("invalid")) };
                prop_assert_eq!(&fr.to_bytes()[..], &f[..]);
            }
            let mut cuts: Vec<usize> = splits.iter().map(|i| i.index(bytes.len() + 1)).collect();
            cuts.sort_unstable();
            let mut d = Decoder::new(Limits::default());
            let mut got = Vec::new();
            let mut last = 0;
            for c in cuts.into_iter().chain(std::iter::once(bytes.len())) {
                d.push(&bytes[last..c]);
                last = c;
                while let Some(f) = d.decode().unwrap() {
                    got.push(f);
                }
            }
            prop_assert_eq!(got, whole);
        }
    }
}
