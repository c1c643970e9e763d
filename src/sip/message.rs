//! Framing and validation of SIP messages in front of rsipstack's codec.
//!
//! ```text
//!   bytes (datagram, or a TCP byte stream)
//!     -> lex(): start line, header lines, Content-Length framing   [stox]
//!     -> checks: UTF-8, colons, token names, known method, version [stox]
//!     -> rsipstack::sip::{Request, Response} via make_header        [rsipstack]
//!     -> checks: mandatory headers, Via branch, CSeq method         [stox]
//! ```
//!
//! rsipstack's own parser drops a header line without a colon (or with non-UTF-8 bytes),
//! accepts a datagram shorter than its Content-Length, and fails on extension methods
//! without saying which request it was. stox lexes first, so every malformed request gets
//! a 400 whose reason phrase names the problem, and unknown methods get 501 with Allow.

use std::borrow::Cow;

use rsipstack::sip::headers::make_header;
use rsipstack::sip::prelude::HeadersExt;
use rsipstack::sip::{
    typed, Header, Headers, Method, Request, Response, SipMessage, StatusCode, Uri, Version,
};

/// How the bytes arrived: a datagram holds exactly one message; a stream needs Content-Length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    Datagram,
    Stream,
}

/// The methods stox implements as a UAS; everything else gets 405 (known) or 501 (unknown).
pub const ALLOW: &str = "MESSAGE, OPTIONS, SUBSCRIBE, NOTIFY";
/// The same with chat sessions (RFC 7573) on.
pub const ALLOW_WITH_CHAT: &str = "MESSAGE, OPTIONS, SUBSCRIBE, NOTIFY, INVITE, ACK, BYE, CANCEL";

/// The option tags (RFC 3261 19.2) stox implements; a request that requires any other gets
/// 420 with Unsupported (8.2.2.3).
pub const SUPPORTED: &[&str] = &[];

/// A well-formed message and the number of bytes it took (for streams).
#[derive(Debug)]
pub struct Parsed {
    pub message: SipMessage,
    pub len: usize,
}

/// The headers of a rejected request that a response must copy (RFC 3261 8.2.6.2).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Echo {
    pub vias: Vec<String>,
    pub from: Option<String>,
    pub to: Option<String>,
    pub call_id: Option<String>,
    pub cseq: Option<String>,
}

impl Echo {
    /// The top Via value, if it parses, for routing the response.
    pub fn top_via(&self) -> Option<typed::Via> {
        let first = self.vias.first()?;
        typed::Via::parse(first_list_value(first)).ok()
    }
}

/// Why bytes were not accepted as a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reject {
    /// Stream framing: not enough bytes yet.
    Incomplete,
    /// A request that can be answered with this status and reason phrase.
    Answer {
        status: u16,
        reason: String,
        echo: Box<Echo>,
        /// How many stream bytes to skip (the message's length, when framing worked).
        len: Option<usize>,
    },
    /// Nothing can be answered (a malformed response, garbage, or no way to frame a stream).
    Drop { why: String, len: Option<usize> },
}

impl Reject {
    fn bad(reason: impl Into<String>, echo: &Echo, len: Option<usize>) -> Reject {
        Reject::Answer {
            status: 400,
            reason: reason.into(),
            echo: Box::new(echo.clone()),
            len,
        }
    }
}

const TOKEN_EXTRA: &[u8] = b"-.!%*_+`'~";

fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || TOKEN_EXTRA.contains(&b))
}

fn known_method(m: &str) -> Option<Method> {
    // Method names are case-sensitive (RFC 3261 7.1); rsipstack's FromStr is not.
    Some(match m {
        "ACK" => Method::Ack,
        "BYE" => Method::Bye,
        "CANCEL" => Method::Cancel,
        "INFO" => Method::Info,
        "INVITE" => Method::Invite,
        "MESSAGE" => Method::Message,
        "NOTIFY" => Method::Notify,
        "OPTIONS" => Method::Options,
        "PRACK" => Method::PRack,
        "PUBLISH" => Method::Publish,
        "REFER" => Method::Refer,
        "REGISTER" => Method::Register,
        "SUBSCRIBE" => Method::Subscribe,
        "UPDATE" => Method::Update,
        _ => return None,
    })
}

/// The first element of a comma-separated header value (Via: a, b).
pub fn first_list_value(v: &str) -> &str {
    // A Via has no quoted strings in practice except in rare params; split on the first comma
    // outside quotes and angle brackets.
    let mut depth = 0i32;
    let mut quoted = false;
    for (i, c) in v.char_indices() {
        match c {
            '"' => quoted = !quoted,
            '<' if !quoted => depth += 1,
            '>' if !quoted => depth -= 1,
            ',' if !quoted && depth <= 0 => return v[..i].trim(),
            _ => {}
        }
    }
    v.trim()
}

/// Skips CRLF keep-alives (RFC 5626 4.4.1) at the start of a stream buffer; returns how many bytes.
pub fn leading_crlf(buf: &[u8]) -> usize {
    buf.iter()
        .take_while(|b| **b == b'\r' || **b == b'\n')
        .count()
}

struct Lexed<'a> {
    start: &'a str,
    headers: Vec<(&'a str, Cow<'a, str>)>,
    body_start: usize,
}

/// Lines end in CRLF; bare LF is tolerated (RFC 3261 7.5 robustness).
fn lex_head(buf: &[u8], max: usize) -> Result<Lexed<'_>, Reject> {
    let mut lines: Vec<&[u8]> = Vec::new();
    let mut pos = 0;
    let body_start = loop {
        let Some(nl) = buf[pos..].iter().position(|b| *b == b'\n') else {
            if buf.len() > max {
                return Err(Reject::Drop {
                    why: format!("no end of headers within {max} bytes"),
                    len: None,
                });
            }
            return Err(Reject::Incomplete);
        };
        let mut line = &buf[pos..pos + nl];
        if let Some(stripped) = line.strip_suffix(b"\r") {
            line = stripped;
        }
        pos += nl + 1;
        if line.is_empty() {
            break pos;
        }
        lines.push(line);
        if pos > max {
            return Err(Reject::Drop {
                why: format!("headers longer than {max} bytes"),
                len: None,
            });
        }
    };
    let Some((start, rest)) = lines.split_first() else {
        return Err(Reject::Drop {
            why: "empty message".into(),
            len: None,
        });
    };
    let start = std::str::from_utf8(start).map_err(|_| Reject::Drop {
        why: "start line is not UTF-8".into(),
        len: None,
    })?;
    let mut headers: Vec<(&str, Cow<'_, str>)> = Vec::with_capacity(rest.len());
    let mut bad: Option<String> = None;
    for line in rest {
        let Ok(line) = std::str::from_utf8(line) else {
            bad.get_or_insert_with(|| "Header line is not UTF-8".into());
            continue;
        };
        if line.starts_with([' ', '\t']) {
            match headers.last_mut() {
                Some((_, v)) => {
                    let v = v.to_mut();
                    v.push(' ');
                    v.push_str(line.trim());
                }
                None => {
                    bad.get_or_insert_with(|| "Continuation line before any header".into());
                }
            }
            continue;
        }
        let Some(colon) = line.find(':') else {
            bad.get_or_insert_with(|| "Header line without a colon".into());
            continue;
        };
        let name = line[..colon].trim_end_matches([' ', '\t']);
        if !is_token(name) {
            bad.get_or_insert_with(|| "Invalid header name".into());
            continue;
        }
        headers.push((name, Cow::Borrowed(line[colon + 1..].trim())));
    }
    if let Some(why) = bad {
        // Still a request we can answer, if we can find what to echo.
        let echo = echo_of(&headers);
        return Err(Reject::Answer {
            status: 400,
            reason: why,
            echo: Box::new(echo),
            len: None,
        });
    }
    Ok(Lexed {
        start,
        headers,
        body_start,
    })
}

fn is_name(name: &str, long: &str, compact: Option<&str>) -> bool {
    name.eq_ignore_ascii_case(long) || compact.is_some_and(|c| name.eq_ignore_ascii_case(c))
}

fn echo_of(headers: &[(&str, Cow<'_, str>)]) -> Echo {
    let mut echo = Echo::default();
    for (name, value) in headers {
        if is_name(name, "Via", Some("v")) {
            echo.vias.push(value.to_string());
        } else if is_name(name, "From", Some("f")) {
            echo.from.get_or_insert_with(|| value.to_string());
        } else if is_name(name, "To", Some("t")) {
            echo.to.get_or_insert_with(|| value.to_string());
        } else if is_name(name, "Call-ID", Some("i")) {
            echo.call_id.get_or_insert_with(|| value.to_string());
        } else if is_name(name, "CSeq", None) {
            echo.cseq.get_or_insert_with(|| value.to_string());
        }
    }
    echo
}

/// For a stream buffer that `parse` found `Incomplete`: the length the whole message will
/// have once its headers are in (head plus Content-Length), so a reader can wait for that
/// many bytes instead of parsing again on every read. `None` while the headers are not
/// complete, or when they give no usable length (then `parse` decides).
pub fn stream_frame_len(buf: &[u8], max: usize) -> Option<usize> {
    let lexed = lex_head(buf, max).ok()?;
    let (_, value) = lexed
        .headers
        .iter()
        .find(|(name, _)| is_name(name, "Content-Length", Some("l")))?;
    let n = value.trim().parse::<usize>().ok()?;
    lexed.body_start.checked_add(n)
}

/// Frames and validates one message from `buf`.
///
/// `max` bounds the whole message; a larger request is answered 513.
pub fn parse(buf: &[u8], framing: Framing, max: usize) -> Result<Parsed, Reject> {
    // RFC 3261 7.5: CRLFs before the start line are ignored (a stream reader skips them
    // itself, as keep-alives; in a datagram they are part of the datagram's length).
    let skip = leading_crlf(buf);
    if skip > 0 && framing == Framing::Datagram {
        return parse(&buf[skip..], framing, max).map(|p| Parsed {
            len: p.len + skip,
            ..p
        });
    }
    // A datagram is bounded by the socket's buffer: lex all of it, so that one over the
    // limit is still answered (513) rather than dropped.
    let lex_max = match framing {
        Framing::Datagram => usize::MAX,
        Framing::Stream => max,
    };
    let lexed = match lex_head(buf, lex_max) {
        Err(Reject::Incomplete) if framing == Framing::Datagram => {
            return Err(truncated_datagram(buf))
        }
        other => other?,
    };
    let echo = echo_of(&lexed.headers);
    let is_request = !lexed.start.starts_with("SIP/");

    // Content-Length framing (RFC 3261 18.3): mandatory on streams; in a datagram the body
    // may not be shorter than it, and bytes beyond it are discarded.
    let mut content_length: Option<usize> = None;
    for (name, value) in &lexed.headers {
        if is_name(name, "Content-Length", Some("l")) {
            let n = value
                .trim()
                .parse::<usize>()
                .ok()
                .filter(|_| value.trim().bytes().all(|b| b.is_ascii_digit()));
            let fail = |why: &str| -> Reject {
                if is_request {
                    Reject::bad(why, &echo, None)
                } else {
                    Reject::Drop {
                        why: why.into(),
                        len: None,
                    }
                }
            };
            match (n, content_length) {
                (None, _) => return Err(fail("Invalid Content-Length")),
                (Some(n), Some(prev)) if n != prev => {
                    return Err(fail("Conflicting Content-Length headers"))
                }
                (Some(n), _) => content_length = Some(n),
            }
        }
    }
    let available = buf.len() - lexed.body_start;
    let body_len = match (framing, content_length) {
        (Framing::Stream, None) => {
            // Without a length the stream cannot be framed any further.
            return Err(if is_request {
                Reject::bad("Missing Content-Length on a stream transport", &echo, None)
            } else {
                Reject::Drop {
                    why: "response without Content-Length on a stream".into(),
                    len: None,
                }
            });
        }
        (Framing::Stream, Some(n)) => {
            // A Content-Length near usize::MAX must not overflow the sum.
            if lexed.body_start.saturating_add(n) > max {
                return Err(if is_request {
                    Reject::Answer {
                        status: 513,
                        reason: "Message Too Large".into(),
                        echo: Box::new(echo),
                        len: None,
                    }
                } else {
                    Reject::Drop {
                        why: format!("response of {} bytes is over the limit", n),
                        len: None,
                    }
                });
            }
            if available < n {
                return Err(Reject::Incomplete);
            }
            n
        }
        (Framing::Datagram, None) => available,
        (Framing::Datagram, Some(n)) => {
            if available < n {
                return Err(if is_request {
                    Reject::bad("Body shorter than Content-Length", &echo, None)
                } else {
                    Reject::Drop {
                        why: "response body shorter than Content-Length".into(),
                        len: None,
                    }
                });
            }
            n
        }
    };
    let len = lexed.body_start + body_len;
    if len > max {
        return Err(if is_request {
            Reject::Answer {
                status: 513,
                reason: "Message Too Large".into(),
                echo: Box::new(echo),
                len: Some(len),
            }
        } else {
            Reject::Drop {
                why: "response over the size limit".into(),
                len: Some(len),
            }
        });
    }
    let body = buf[lexed.body_start..len].to_vec();
    let frame_len = Some(len);

    let mut headers = Headers::default();
    for (name, value) in lexed.headers {
        headers.push(make_header(name, value.into_owned()));
    }

    if is_request {
        let request = build_request(lexed.start, headers, body, &echo, frame_len)?;
        Ok(Parsed {
            message: SipMessage::Request(request),
            len,
        })
    } else {
        let response = build_response(lexed.start, headers, body).map_err(|why| Reject::Drop {
            why,
            len: frame_len,
        })?;
        Ok(Parsed {
            message: SipMessage::Response(response),
            len,
        })
    }
}

/// A datagram is the whole message: one whose headers never end was cut short (or is
/// not SIP). A request among those is answered 400 when its headers give a route back.
fn truncated_datagram(buf: &[u8]) -> Reject {
    let mut closed = buf.to_vec();
    closed.extend_from_slice(b"\r\n\r\n");
    let why = "Message ends before the end of its headers";
    match lex_head(&closed, usize::MAX) {
        Ok(lexed) if !lexed.start.starts_with("SIP/") => {
            Reject::bad(why, &echo_of(&lexed.headers), None)
        }
        Err(Reject::Answer { echo, .. }) => Reject::bad(why, &echo, None),
        _ => Reject::Drop {
            why: why.to_ascii_lowercase(),
            len: None,
        },
    }
}

fn build_request(
    start: &str,
    headers: Headers,
    body: Vec<u8>,
    echo: &Echo,
    len: Option<usize>,
) -> Result<Request, Reject> {
    let mut parts = start.split(' ');
    let (Some(method), Some(uri), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Reject::bad("Malformed Request-Line", echo, len));
    };
    if !is_token(method) {
        return Err(Reject::bad("Malformed Request-Line", echo, len));
    }
    if version != "SIP/2.0" {
        return Err(Reject::Answer {
            status: 505,
            reason: "Version Not Supported".into(),
            echo: Box::new(echo.clone()),
            len,
        });
    }
    let Some(method) = known_method(method) else {
        return Err(Reject::Answer {
            status: 501,
            reason: "Not Implemented".into(),
            echo: Box::new(echo.clone()),
            len,
        });
    };
    let scheme = uri.split(':').next().unwrap_or("").to_ascii_lowercase();
    if !matches!(scheme.as_str(), "sip" | "sips" | "tel" | "im" | "pres") {
        return Err(Reject::Answer {
            status: 416,
            reason: "Unsupported URI Scheme".into(),
            echo: Box::new(echo.clone()),
            len,
        });
    }
    let uri: Uri = rsipstack::sip::parse_uri(uri)
        .map_err(|_| Reject::bad("Malformed Request-URI", echo, len))?;
    let request = Request {
        method,
        uri,
        version: Version::V2,
        headers,
        body,
    };
    check_request(&request, echo, len)?;
    Ok(request)
}

/// The mandatory-header checks of RFC 3261 8.1.1 / 8.2, each failure with its own reason phrase.
fn check_request(req: &Request, echo: &Echo, len: Option<usize>) -> Result<(), Reject> {
    let bad = |why: &str| Reject::bad(why, echo, len);
    let via = req.via_header().map_err(|_| bad("Missing Via header"))?;
    typed::Via::parse(first_list_value(via.value())).map_err(|_| bad("Malformed Via header"))?;
    let from = req.from_header().map_err(|_| bad("Missing From header"))?;
    typed::From::parse(from.value()).map_err(|_| bad("Malformed From header"))?;
    let to = req.to_header().map_err(|_| bad("Missing To header"))?;
    typed::To::parse(to.value()).map_err(|_| bad("Malformed To header"))?;
    let call_id = req
        .call_id_header()
        .map_err(|_| bad("Missing Call-ID header"))?;
    if call_id.value().trim().is_empty() || call_id.value().contains(char::is_whitespace) {
        return Err(bad("Malformed Call-ID header"));
    }
    let cseq = req.cseq_header().map_err(|_| bad("Missing CSeq header"))?;
    let mut cs = cseq.value().split_whitespace();
    let (Some(num), Some(m), None) = (cs.next(), cs.next(), cs.next()) else {
        return Err(bad("Malformed CSeq header"));
    };
    if num.len() > 10 || num.parse::<u32>().map(|n| n >= 1 << 31).unwrap_or(true) {
        return Err(bad("Malformed CSeq header"));
    }
    if m != req.method.to_string() {
        return Err(bad("CSeq method does not match the Request-Line"));
    }
    // 8.1.1.8 (RFC 6665 4.1.2.1 for SUBSCRIBE): a request that can make a dialog names
    // the remote target; without it no in-dialog request could reach the peer.
    if matches!(req.method, Method::Invite | Method::Subscribe)
        && !req.headers.iter().any(|h| matches!(h, Header::Contact(_)))
    {
        return Err(bad("Missing Contact header"));
    }
    if let Ok(mf) = req.max_forwards_header() {
        if mf.value().trim().parse::<u8>().is_err() {
            return Err(bad("Malformed Max-Forwards header"));
        }
    }
    Ok(())
}

fn build_response(start: &str, headers: Headers, body: Vec<u8>) -> Result<Response, String> {
    let mut parts = start.splitn(3, ' ');
    let (Some(version), Some(code)) = (parts.next(), parts.next()) else {
        return Err("malformed Status-Line".into());
    };
    if version != "SIP/2.0" {
        return Err(format!("unsupported version {version:?}"));
    }
    let code: u16 = code
        .parse()
        .ok()
        .filter(|c| (100..700).contains(c) && code.len() == 3)
        .ok_or("malformed status code")?;
    let reason = parts.next().unwrap_or("").trim();
    let response = Response {
        status_code: StatusCode::try_from((code, reason)).map_err(|e| e.to_string())?,
        wire_reason: None,
        version: Version::V2,
        headers,
        body,
    };
    let via = response.via_header().map_err(|_| "response without Via")?;
    typed::Via::parse(first_list_value(via.value()))
        .map_err(|_| "response with a malformed Via")?;
    response
        .call_id_header()
        .map_err(|_| "response without Call-ID")?;
    let cseq = response
        .cseq_header()
        .map_err(|_| "response without CSeq")?;
    let mut cs = cseq.value().split_whitespace();
    match (cs.next().map(|n| n.parse::<u32>()), cs.next()) {
        (Some(Ok(_)), Some(m)) if is_token(m) => {}
        _ => return Err("response with a malformed CSeq".into()),
    }
    Ok(response)
}

/// Adds a To tag when the request had none (RFC 3261 8.2.6.2); an empty `tag` adds none.
pub fn to_with_tag(to: &str, tag: &str) -> String {
    if tag.is_empty() || has_tag_param(to) {
        to.to_string()
    } else {
        format!("{to};tag={tag}")
    }
}

fn has_tag_param(header_value: &str) -> bool {
    // Parameters of the header (not of the URI) come after the closing '>' when there is one.
    let params = match header_value.rfind('>') {
        Some(i) => &header_value[i + 1..],
        None => header_value,
    };
    params
        .split(';')
        .skip(1)
        .any(|p| p.trim().to_ascii_lowercase().starts_with("tag="))
}

/// A response built straight from the copied headers of a request that could not be parsed.
pub fn raw_response(
    echo: &Echo,
    status: u16,
    reason: &str,
    to_tag: &str,
    extra: &[(&str, &str)],
) -> Vec<u8> {
    let reason: String = reason
        .chars()
        .filter(|c| !c.is_control())
        .collect::<String>();
    let mut out = format!("SIP/2.0 {status} {reason}\r\n");
    for v in &echo.vias {
        out.push_str("Via: ");
        out.push_str(v);
        out.push_str("\r\n");
    }
    if let Some(f) = &echo.from {
        out.push_str(&format!("From: {f}\r\n"));
    }
    if let Some(t) = &echo.to {
        out.push_str(&format!("To: {}\r\n", to_with_tag(t, to_tag)));
    }
    if let Some(c) = &echo.call_id {
        out.push_str(&format!("Call-ID: {c}\r\n"));
    }
    if let Some(c) = &echo.cseq {
        out.push_str(&format!("CSeq: {c}\r\n"));
    }
    for (n, v) in extra {
        out.push_str(&format!("{n}: {v}\r\n"));
    }
    out.push_str("Content-Length: 0\r\n\r\n");
    out.into_bytes()
}

/// Builds a response to a parsed request: copies Via, From, To (+ tag), Call-ID, CSeq.
pub fn response_to(req: &Request, status: u16, reason: Option<&str>, to_tag: &str) -> Response {
    let mut headers = Headers::default();
    for h in req.headers.iter() {
        match h {
            Header::Via(_) | Header::From(_) | Header::CallId(_) | Header::CSeq(_) => {
                headers.push(h.clone())
            }
            Header::To(t) => headers.push(Header::To(rsipstack::sip::To::new(to_with_tag(
                t.value(),
                to_tag,
            )))),
            _ => {}
        }
    }
    let status_code = match reason {
        Some(r) => StatusCode::Other(status, r.to_string()),
        None => StatusCode::from(status),
    };
    Response {
        status_code,
        wire_reason: None,
        version: Version::V2,
        headers,
        body: Vec::new(),
    }
}

/// Builds a dialog-creating response (a 2xx to INVITE or SUBSCRIBE, a 1xx other than 100
/// to INVITE, the 200 to the NOTIFY that makes a subscriber's dialog): as
/// [`response_to`], plus every Record-Route of the request in order (RFC 3261 12.1.1),
/// so the peer's ACK, BYE and other in-dialog requests keep going through the proxies
/// that asked to stay in the path.
pub fn dialog_response_to(
    req: &Request,
    status: u16,
    reason: Option<&str>,
    to_tag: &str,
) -> Response {
    let mut r = response_to(req, status, reason, to_tag);
    for h in req.headers.iter() {
        if h.name().eq_ignore_ascii_case("Record-Route") {
            r.headers.push(h.clone());
        }
    }
    r
}

/// The Request-URI as received: rsipstack keeps the user part as written (still %-encoded)
/// but re-encodes it on display, which would turn `%40` into `%2540`.
pub fn raw_uri(uri: &rsipstack::sip::Uri) -> String {
    let mut s = String::new();
    if let Some(scheme) = &uri.scheme {
        s.push_str(&scheme.to_string());
        s.push(':');
    }
    if let Some(auth) = &uri.auth {
        s.push_str(&auth.user);
        s.push('@');
    }
    s.push_str(&uri.host_with_port.to_string());
    for p in &uri.params {
        s.push_str(&p.to_string());
    }
    s
}

/// Serializes with a correct Content-Length, replacing any the message carried.
pub fn to_bytes(msg: &mut SipMessage) -> Vec<u8> {
    let (headers, body_len) = match msg {
        SipMessage::Request(r) => (&mut r.headers, r.body.len()),
        SipMessage::Response(r) => (&mut r.headers, r.body.len()),
    };
    headers.retain(|h| !matches!(h, Header::ContentLength(_)));
    headers.push(Header::ContentLength(rsipstack::sip::ContentLength::new(
        body_len.to_string(),
    )));
    // What rsipstack's `to_bytes` writes, into one buffer: its Headers Display makes a
    // String per header, a Vec of them and a joined copy, for every message sent.
    use std::io::Write as _;
    let mut buf = Vec::with_capacity(512 + body_len);
    let (headers, body) = match msg {
        SipMessage::Request(r) => {
            let _ = write!(buf, "{} {} {}\r\n", r.method, r.uri, r.version);
            (&r.headers, &r.body)
        }
        SipMessage::Response(r) => {
            let _ = write!(
                buf,
                "{} {} {}\r\n",
                r.version,
                r.status_code.code(),
                r.status_code.text()
            );
            (&r.headers, &r.body)
        }
    };
    for h in headers.iter() {
        let _ = write!(buf, "{h}\r\n");
    }
    buf.extend_from_slice(b"\r\n");
    buf.extend_from_slice(body);
    buf
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn to_bytes_writes_what_rsipstack_writes() {
        let texts = [
            "MESSAGE sip:bob@example.net SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKa\r\nFrom: <sip:a@example.com>;tag=1\r\nTo: <sip:bob@example.net>\r\nCall-ID: c1\r\nCSeq: 1 MESSAGE\r\nMax-Forwards: 70\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello",
            "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKa\r\nFrom: <sip:a@example.com>;tag=1\r\nTo: <sip:bob@example.net>;tag=2\r\nCall-ID: c1\r\nCSeq: 1 MESSAGE\r\nContent-Length: 0\r\n\r\n",
        ];
        for text in texts {
            let mut msg = rsipstack::sip::SipMessage::try_from(text.as_bytes().to_vec()).unwrap();
            let ours = to_bytes(&mut msg);
            assert_eq!(ours, msg.to_bytes(), "{text}");
        }
    }

    const MAX: usize = 65535;

    #[test]
    fn the_raw_request_uri_keeps_its_escapes() {
        let uri = rsipstack::sip::parse_uri("sip:romeo%40home@example.net;user=phone").unwrap();
        assert_eq!(raw_uri(&uri), "sip:romeo%40home@example.net;user=phone");
    }

    fn romeo_message(extra: &str, body: &str) -> String {
        format!(
            "MESSAGE sip:juliet@example.com SIP/2.0\r\n\
             Via: SIP/2.0/UDP s2x.example.net;branch=z9hG4bKeskdgs677\r\n\
             Max-Forwards: 70\r\n\
             To: sip:juliet@example.com\r\n\
             From: sip:romeo@example.net;tag=r1\r\n\
             Call-ID: M4spr4vdu@example.net\r\n\
             CSeq: 1 MESSAGE\r\n\
             Content-Type: text/plain\r\n\
             {extra}Content-Length: {}\r\n\r\n{body}",
            body.len()
        )
    }

    fn answer(r: Result<Parsed, Reject>) -> (u16, String) {
        match r {
            Err(Reject::Answer { status, reason, .. }) => (status, reason),
            other => panic!("expected an answer, got {other:?}"),
        }
    }

    #[test]
    fn the_documents_example_parses() {
        let text = romeo_message("", "Neither, fair saint, if either thee dislike.");
        let p = parse(text.as_bytes(), Framing::Datagram, MAX).unwrap();
        assert_eq!(p.len, text.len());
        let SipMessage::Request(r) = p.message else {
            panic!()
        };
        assert_eq!(r.method, Method::Message);
        assert_eq!(r.body, b"Neither, fair saint, if either thee dislike.");
        assert_eq!(r.call_id_header().unwrap().value(), "M4spr4vdu@example.net");
    }

    #[test]
    fn compact_and_folded_headers_parse() {
        let text = "MESSAGE sip:juliet@example.com SIP/2.0\r\n\
                    v: SIP/2.0/TCP s2x.example.net;branch=z9hG4bK1\r\n\
                    t: <sip:juliet@example.com>\r\n\
                    f: <sip:romeo@example.net>;tag=1\r\n\
                    i: abc\r\n\
                    CSeq: 7\r\n  MESSAGE\r\n\
                    c: text/plain\r\n\
                    l: 2\r\n\r\nhi";
        let p = parse(text.as_bytes(), Framing::Stream, MAX).unwrap();
        let SipMessage::Request(r) = p.message else {
            panic!()
        };
        assert_eq!(r.cseq_header().unwrap().value(), "7 MESSAGE");
        assert_eq!(r.body, b"hi");
    }

    #[test]
    fn a_header_line_without_a_colon_gets_400() {
        let text = romeo_message("Bogus header line\r\n", "hi");
        let (s, why) = answer(parse(text.as_bytes(), Framing::Datagram, MAX));
        assert_eq!((s, why.as_str()), (400, "Header line without a colon"));
    }

    #[test]
    fn a_non_utf8_header_gets_400_and_keeps_the_echo() {
        let mut bytes = romeo_message("", "hi").into_bytes();
        let pos = bytes.windows(7).position(|w| w == b"Max-For").unwrap();
        bytes.splice(pos..pos, b"X-Junk: \xff\xfe\r\n".iter().copied());
        match parse(&bytes, Framing::Datagram, MAX) {
            Err(Reject::Answer {
                status: 400,
                reason,
                echo,
                ..
            }) => {
                assert_eq!(reason, "Header line is not UTF-8");
                assert_eq!(echo.call_id.as_deref(), Some("M4spr4vdu@example.net"));
                assert_eq!(echo.vias.len(), 1);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_datagram_shorter_than_its_content_length_gets_400() {
        let text = romeo_message("", "hello");
        let cut = &text.as_bytes()[..text.len() - 2];
        let (s, why) = answer(parse(cut, Framing::Datagram, MAX));
        assert_eq!((s, why.as_str()), (400, "Body shorter than Content-Length"));
    }

    #[test]
    fn extra_datagram_bytes_beyond_content_length_are_discarded() {
        let text = romeo_message("", "hello") + "trailing";
        let p = parse(text.as_bytes(), Framing::Datagram, MAX).unwrap();
        let SipMessage::Request(r) = p.message else {
            panic!()
        };
        assert_eq!(r.body, b"hello");
    }

    #[test]
    fn a_stream_frames_by_content_length_and_waits_for_more() {
        let one = romeo_message("", "hello");
        let two = format!("{one}{one}");
        let p = parse(two.as_bytes(), Framing::Stream, MAX).unwrap();
        assert_eq!(p.len, one.len());
        let rest = &two.as_bytes()[p.len..];
        assert_eq!(parse(rest, Framing::Stream, MAX).unwrap().len, one.len());
        for cut in [5, 40, one.len() - 1] {
            assert_eq!(
                parse(&one.as_bytes()[..cut], Framing::Stream, MAX).unwrap_err(),
                Reject::Incomplete
            );
        }
    }

    #[test]
    fn a_stream_request_without_content_length_gets_400() {
        let text = romeo_message("", "").replace("Content-Length: 0\r\n", "");
        let (s, why) = answer(parse(text.as_bytes(), Framing::Stream, MAX));
        assert_eq!(
            (s, why.as_str()),
            (400, "Missing Content-Length on a stream transport")
        );
    }

    #[test]
    fn missing_mandatory_headers_are_named() {
        for (line, why) in [
            (
                "Call-ID: M4spr4vdu@example.net\r\n",
                "Missing Call-ID header",
            ),
            ("CSeq: 1 MESSAGE\r\n", "Missing CSeq header"),
            (
                "From: sip:romeo@example.net;tag=r1\r\n",
                "Missing From header",
            ),
            ("To: sip:juliet@example.com\r\n", "Missing To header"),
        ] {
            let text = romeo_message("", "hi").replace(line, "");
            let (s, got) = answer(parse(text.as_bytes(), Framing::Datagram, MAX));
            assert_eq!((s, got.as_str()), (400, why));
        }
        let text = romeo_message("", "hi").replace(
            "Via: SIP/2.0/UDP s2x.example.net;branch=z9hG4bKeskdgs677\r\n",
            "",
        );
        assert_eq!(
            answer(parse(text.as_bytes(), Framing::Datagram, MAX)).1,
            "Missing Via header"
        );
    }

    #[test]
    fn a_cseq_method_mismatch_gets_400() {
        let text = romeo_message("", "hi").replace("CSeq: 1 MESSAGE", "CSeq: 1 INVITE");
        assert_eq!(
            answer(parse(text.as_bytes(), Framing::Datagram, MAX)).1,
            "CSeq method does not match the Request-Line"
        );
    }

    #[test]
    fn an_unknown_method_gets_501_and_the_echo_survives() {
        let text = romeo_message("", "hi")
            .replace("MESSAGE sip:", "FROBNICATE sip:")
            .replace("CSeq: 1 MESSAGE", "CSeq: 1 FROBNICATE");
        match parse(text.as_bytes(), Framing::Datagram, MAX) {
            Err(Reject::Answer {
                status: 501, echo, ..
            }) => {
                let bytes = raw_response(&echo, 501, "Not Implemented", "t1", &[("Allow", ALLOW)]);
                let p = parse(&bytes, Framing::Datagram, MAX).unwrap();
                let SipMessage::Response(r) = p.message else {
                    panic!()
                };
                assert_eq!(r.status_code.code(), 501);
                assert!(r.to_header().unwrap().value().ends_with(";tag=t1"));
                assert!(String::from_utf8_lossy(&bytes).contains("CSeq: 1 FROBNICATE\r\n"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn lowercase_methods_are_unknown() {
        let text = romeo_message("", "hi").replace("MESSAGE sip:", "message sip:");
        assert_eq!(
            answer(parse(text.as_bytes(), Framing::Datagram, MAX)).0,
            501
        );
    }

    #[test]
    fn other_versions_get_505_and_other_schemes_416() {
        let text = romeo_message("", "hi").replace("SIP/2.0\r\nVia", "SIP/3.0\r\nVia");
        assert_eq!(
            answer(parse(text.as_bytes(), Framing::Datagram, MAX)).0,
            505
        );
        let text = romeo_message("", "hi").replace("MESSAGE sip:juliet", "MESSAGE http:juliet");
        assert_eq!(
            answer(parse(text.as_bytes(), Framing::Datagram, MAX)).0,
            416
        );
    }

    #[test]
    fn the_frame_length_is_known_once_the_headers_are_in() {
        let text = "MESSAGE sip:juliet@example.com SIP/2.0\r\nl: 5\r\n\r\nhel";
        assert_eq!(
            stream_frame_len(text.as_bytes(), 65535),
            Some(text.len() + 2)
        );
        assert_eq!(
            stream_frame_len(b"MESSAGE sip:juliet@example.com SIP/2.0\r\nl: 5\r\n", 65535),
            None
        );
        assert_eq!(
            stream_frame_len(b"MESSAGE sip:j@x SIP/2.0\r\n\r\n", 65535),
            None
        );
    }

    #[test]
    fn an_oversized_request_gets_513() {
        let text = romeo_message("", &"x".repeat(2000));
        assert_eq!(
            answer(parse(text.as_bytes(), Framing::Datagram, 1024)).0,
            513
        );
        assert_eq!(answer(parse(text.as_bytes(), Framing::Stream, 1024)).0, 513);
        // Headers alone over the limit: a datagram is still answered, a stream cannot be.
        let text = romeo_message(&format!("Subject: {}\r\n", "s".repeat(2000)), "");
        assert_eq!(
            answer(parse(text.as_bytes(), Framing::Datagram, 1024)).0,
            513
        );
        assert!(matches!(
            parse(text.as_bytes(), Framing::Stream, 1024),
            Err(Reject::Drop { .. })
        ));
    }

    #[test]
    fn malformed_responses_are_dropped_not_answered() {
        let text = "SIP/2.0 abc OK\r\nVia: SIP/2.0/UDP a;branch=z9hG4bK1\r\n\r\n";
        assert!(matches!(
            parse(text.as_bytes(), Framing::Datagram, MAX),
            Err(Reject::Drop { .. })
        ));
    }

    #[test]
    fn a_response_parses_with_its_reason_phrase() {
        let text = "SIP/2.0 404 Not Here\r\nVia: SIP/2.0/UDP a;branch=z9hG4bK1\r\n\
                    From: <sip:a@b>;tag=1\r\nTo: <sip:c@d>;tag=2\r\nCall-ID: x\r\n\
                    CSeq: 1 MESSAGE\r\nContent-Length: 0\r\n\r\n";
        let p = parse(text.as_bytes(), Framing::Datagram, MAX).unwrap();
        let SipMessage::Response(r) = p.message else {
            panic!()
        };
        assert_eq!(r.status_code.code(), 404);
    }

    #[test]
    fn response_to_copies_the_dialog_headers_and_tags_to() {
        let text = romeo_message("", "hi");
        let SipMessage::Request(req) = parse(text.as_bytes(), Framing::Datagram, MAX)
            .unwrap()
            .message
        else {
            panic!()
        };
        let mut resp = SipMessage::Response(response_to(&req, 200, None, "x1"));
        let bytes = to_bytes(&mut resp);
        let s = String::from_utf8(bytes).unwrap();
        assert!(s.starts_with("SIP/2.0 200 OK\r\n"), "{s}");
        assert!(s.contains("To: sip:juliet@example.com;tag=x1\r\n"), "{s}");
        assert!(s.contains("Call-ID: M4spr4vdu@example.net\r\n"), "{s}");
        assert!(s.contains("Content-Length: 0\r\n"), "{s}");
        let mut resp = SipMessage::Response(response_to(&req, 400, Some("Missing Thing"), "x1"));
        assert!(String::from_utf8(to_bytes(&mut resp))
            .unwrap()
            .starts_with("SIP/2.0 400 Missing Thing\r\n"));
    }

    #[test]
    fn a_dialog_creating_response_keeps_every_record_route_in_order() {
        let text = romeo_message(
            "Record-Route: <sip:p2.example.com;lr>, <sip:p1.example.net;lr>\r\n\
             Record-Route: <sip:p0.example.org;lr>\r\n",
            "hi",
        );
        let SipMessage::Request(req) = parse(text.as_bytes(), Framing::Datagram, MAX)
            .unwrap()
            .message
        else {
            panic!()
        };
        let mut resp = SipMessage::Response(dialog_response_to(&req, 200, None, "x1"));
        let s = String::from_utf8(to_bytes(&mut resp)).unwrap();
        let rr: Vec<&str> = s
            .lines()
            .filter(|l| l.to_ascii_lowercase().starts_with("record-route:"))
            .collect();
        let all = rr.join(",");
        let (p2, p1, p0) = (
            all.find("p2.example.com"),
            all.find("p1.example.net"),
            all.find("p0.example.org"),
        );
        assert!(p2.is_some() && p1.is_some() && p0.is_some(), "{s}");
        assert!(p2 < p1 && p1 < p0, "order kept: {s}");
        // Other responses do not carry it.
        let mut plain = SipMessage::Response(response_to(&req, 200, None, "x1"));
        let s = String::from_utf8(to_bytes(&mut plain)).unwrap();
        assert!(!s.to_ascii_lowercase().contains("record-route"), "{s}");
    }

    #[test]
    fn to_tags_are_detected_outside_the_uri() {
        assert!(has_tag_param("<sip:a@b>;tag=1"));
        assert!(!has_tag_param("<sip:a@b;tag=1>"));
        assert!(has_tag_param("sip:a@b;tag=1"));
        assert!(!has_tag_param("\"Tag;tag=x\" <sip:a@b>"));
    }

    #[test]
    fn garbage_never_panics() {
        for junk in [
            &b""[..],
            b"\r\n\r\n",
            b"\xff\xff\r\n\r\n",
            b"SIP/2.0\r\n\r\n",
            b"INVITE\r\n\r\n",
            b" \r\n\r\n",
            b"MESSAGE sip:a SIP/2.0\r\n : x\r\n\r\n",
            b"MESSAGE sip:a SIP/2.0\r\nl: 99999999999999999999999\r\n\r\n",
        ] {
            let _ = parse(junk, Framing::Datagram, MAX);
            let _ = parse(junk, Framing::Stream, MAX);
        }
    }

    #[test]
    fn a_datagram_cut_inside_its_headers_gets_400() {
        let text = romeo_message("", "hi");
        let cut = &text.as_bytes()[..text.find("Content-Type").unwrap()];
        match parse(cut, Framing::Datagram, MAX) {
            Err(Reject::Answer {
                status: 400,
                reason,
                echo,
                ..
            }) => {
                assert_eq!(reason, "Message ends before the end of its headers");
                assert_eq!(echo.call_id.as_deref(), Some("M4spr4vdu@example.net"));
            }
            other => panic!("{other:?}"),
        }
        // On a stream the same bytes just wait for more.
        assert_eq!(
            parse(cut, Framing::Stream, MAX).unwrap_err(),
            Reject::Incomplete
        );
        // A response cut short has no one to answer.
        assert!(matches!(
            parse(
                b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP a",
                Framing::Datagram,
                MAX
            ),
            Err(Reject::Drop { .. })
        ));
    }

    #[test]
    fn a_content_length_near_usize_max_is_refused_on_a_stream() {
        let text = romeo_message("", "").replace(
            "Content-Length: 0",
            &format!("Content-Length: {}", usize::MAX),
        );
        assert_eq!(answer(parse(text.as_bytes(), Framing::Stream, MAX)).0, 513);
        assert_eq!(
            answer(parse(text.as_bytes(), Framing::Datagram, MAX)).1,
            "Body shorter than Content-Length"
        );
        assert_eq!(stream_frame_len(text.as_bytes(), MAX), None);
    }

    #[test]
    fn an_invite_or_subscribe_without_contact_gets_400_naming_it() {
        for method in ["INVITE", "SUBSCRIBE"] {
            let text = romeo_message("", "")
                .replace("MESSAGE sip:", &format!("{method} sip:"))
                .replace("1 MESSAGE", &format!("1 {method}"));
            assert_eq!(
                answer(parse(text.as_bytes(), Framing::Datagram, MAX)),
                (400, "Missing Contact header".into())
            );
            let with = text.replace("Max-Forwards", "m: <sip:romeo@192.0.2.1>\r\nMax-Forwards");
            assert!(parse(with.as_bytes(), Framing::Datagram, MAX).is_ok());
        }
    }
}
