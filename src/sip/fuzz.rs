//! Fuzzing of the SIP framer, parser and transaction layer with proptest: a fixed number
//! of cases per run, so it is part of `cargo test` and costs about a second.
//!
//! ```text
//!   valid messages -> mutations (bit flips, cuts, CR/LF and bytes inserted, lines
//!   repeated or dropped, huge or conflicting Content-Length, non-UTF-8)
//!     -> message::parse (datagram and stream) -> SipCore (reject or message)
//!   random sequences of requests, responses, TU answers, CANCELs, transport errors
//!   and clock jumps -> SipCore -> every table empty once the timers have run out
//! ```
//!
//! What must hold: nothing panics; a request whose start line can be read is answered
//! or reaches the TU (a drop is only for responses and bytes that are not SIP, and is
//! logged by the driver); stream framing does not depend on where reads split; what
//! stox answers to a request it accepted parses again; and the core forgets every
//! transaction once its timers are done.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::sample::Index;
use rsipstack::sip::{Request, SipMessage};

use super::core::{Event, Local, ServerTxId, SipCore, Source, Transmit};
use super::locate::{Target, Transport};
use super::message::{self, parse, Framing, Parsed, Reject};
use super::transaction::Timers;

const MAX: usize = 4096;

const SEEDS: &[&str] = &[
    "MESSAGE sip:juliet@example.com SIP/2.0\r\n\
     Via: SIP/2.0/UDP 127.0.0.2:5070;branch=z9hG4bKa1;rport\r\n\
     Max-Forwards: 70\r\n\
     To: <sip:juliet@example.com>\r\n\
     From: \"Romeo\" <sip:romeo@example.net>;tag=r1\r\n\
     Call-ID: c1@example.net\r\n\
     CSeq: 1 MESSAGE\r\n\
     Content-Type: text/plain\r\n\
     Content-Length: 5\r\n\r\nhello",
    "INVITE sip:juliet@example.com SIP/2.0\r\n\
     Via: SIP/2.0/TCP [2001:db8::1]:5060;branch=z9hG4bKa2\r\n\
     Via: SIP/2.0/UDP proxy.example.net;branch=z9hG4bKp;received=192.0.2.9\r\n\
     Max-Forwards: 69\r\n\
     Record-Route: <sip:proxy.example.net;lr>\r\n\
     To: <sip:juliet@example.com>\r\n\
     From: <sip:romeo@example.net>;tag=r2\r\n\
     Call-ID: c2@example.net\r\n\
     CSeq: 10 INVITE\r\n\
     Contact: <sip:romeo@[2001:db8::1]:5060;transport=tcp>\r\n\
     Require: timer\r\n\
     Content-Type: application/sdp\r\n\
     Content-Length: 33\r\n\r\nv=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\n",
    "BYE sip:romeo@192.0.2.1 SIP/2.0\r\n\
     v: SIP/2.0/UDP 127.0.0.2:5070;branch=z9hG4bKa3\r\n\
     t: <sip:romeo@example.net>;tag=j1\r\n\
     f: <sip:juliet@example.com>\r\n  ;tag=r3\r\n\
     i: c3\r\n\
     CSeq: 2 BYE\r\n\
     l: 0\r\n\r\n",
    "OPTIONS sip:example.com SIP/2.0\n\
     Via: SIP/2.0/UDP 127.0.0.2:5070;branch=z9hG4bKa4\n\
     Max-Forwards: 0\n\
     To: <sip:example.com>\n\
     From: <sip:romeo@example.net>;tag=r4\n\
     Call-ID: c4\n\
     CSeq: 1 OPTIONS\n\
     Content-Length: 0\n\n",
    "SIP/2.0 180 Ringing\r\n\
     Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKa5\r\n\
     To: <sip:romeo@example.net>;tag=x\r\n\
     From: <sip:juliet@example.com>;tag=j\r\n\
     Call-ID: c5\r\n\
     CSeq: 1 INVITE\r\n\
     Content-Length: 0\r\n\r\n",
    "ACK sip:juliet@example.com SIP/2.0\r\n\
     Via: SIP/2.0/UDP 127.0.0.2:5070;branch=z9hG4bKa6\r\n\
     Max-Forwards: 70\r\n\
     To: <sip:juliet@example.com>;tag=t\r\n\
     From: <sip:romeo@example.net>;tag=r6\r\n\
     Call-ID: c6\r\n\
     CSeq: 1 ACK\r\n\
     Content-Length: 0\r\n\r\n",
];

/// Bytes worth inserting: line ends, separators, control and non-UTF-8 bytes.
const INSERTS: &[&[u8]] = &[
    b"\r",
    b"\n",
    b"\r\n",
    b"\r\n\r\n",
    b":",
    b" ",
    b"\t",
    b",",
    b";",
    b"<",
    b"\"",
    b"\0",
    b"\xff",
    b"\xc3",
    b"\xe2\x82",
    b"%",
    b"[",
];

const LENGTHS: &[&str] = &[
    "0",
    "1",
    "4097",
    "99999",
    "4294967296",
    "18446744073709551615",
    "18446744073709551616",
    "-1",
    "1 2",
    "",
    "0x10",
];

#[derive(Debug, Clone)]
enum Mutation {
    FlipBit(Index, u8),
    Truncate(Index),
    Insert(Index, Index),
    Delete(Index, u8),
    RepeatLine(Index, u8),
    DropLine(Index),
    ContentLength(Index),
    ExtraContentLength(Index),
    LongLine(Index, u16),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<Index>(), 0u8..8).prop_map(|(i, b)| Mutation::FlipBit(i, b)),
        any::<Index>().prop_map(Mutation::Truncate),
        (any::<Index>(), any::<Index>()).prop_map(|(i, j)| Mutation::Insert(i, j)),
        (any::<Index>(), 1u8..16).prop_map(|(i, n)| Mutation::Delete(i, n)),
        (any::<Index>(), 1u8..40).prop_map(|(i, n)| Mutation::RepeatLine(i, n)),
        any::<Index>().prop_map(Mutation::DropLine),
        any::<Index>().prop_map(Mutation::ContentLength),
        any::<Index>().prop_map(Mutation::ExtraContentLength),
        (any::<Index>(), 1u16..5000).prop_map(|(i, n)| Mutation::LongLine(i, n)),
    ]
}

/// Byte offsets where lines start.
fn line_starts(b: &[u8]) -> Vec<usize> {
    std::iter::once(0)
        .chain(
            b.iter()
                .enumerate()
                .filter(|(_, c)| **c == b'\n')
                .map(|(i, _)| i + 1),
        )
        .filter(|i| *i < b.len())
        .collect()
}

fn line_at(b: &[u8], i: &Index) -> (usize, usize) {
    let starts = line_starts(b);
    if starts.is_empty() {
        return (0, 0);
    }
    let start = starts[i.index(starts.len())];
    let end = b[start..]
        .iter()
        .position(|c| *c == b'\n')
        .map(|p| start + p + 1)
        .unwrap_or(b.len());
    (start, end)
}

fn apply(b: &mut Vec<u8>, m: &Mutation) {
    let pos = |i: &Index, len: usize| if len == 0 { 0 } else { i.index(len + 1) };
    match m {
        Mutation::FlipBit(i, bit) => {
            if !b.is_empty() {
                let p = i.index(b.len());
                b[p] ^= 1 << bit;
            }
        }
        Mutation::Truncate(i) => {
            let p = pos(i, b.len());
            b.truncate(p);
        }
        Mutation::Insert(i, what) => {
            let p = pos(i, b.len());
            let bytes = INSERTS[what.index(INSERTS.len())];
            b.splice(p..p, bytes.iter().copied());
        }
        Mutation::Delete(i, n) => {
            if !b.is_empty() {
                let p = i.index(b.len());
                let end = (p + *n as usize).min(b.len());
                b.drain(p..end);
            }
        }
        Mutation::RepeatLine(i, n) => {
            let (s, e) = line_at(b, i);
            let line = b[s..e].to_vec();
            for _ in 0..*n {
                b.splice(e..e, line.iter().copied());
            }
        }
        Mutation::DropLine(i) => {
            let (s, e) = line_at(b, i);
            b.drain(s..e);
        }
        Mutation::ContentLength(v) => {
            let text = String::from_utf8_lossy(b).into_owned();
            let value = LENGTHS[v.index(LENGTHS.len())];
            let mut out = String::new();
            for line in text.split_inclusive('\n') {
                let lower = line.to_ascii_lowercase();
                if lower.starts_with("content-length:") || lower.starts_with("l:") {
                    out.push_str(&format!("Content-Length: {value}\r\n"));
                } else {
                    out.push_str(line);
                }
            }
            *b = out.into_bytes();
        }
        Mutation::ExtraContentLength(v) => {
            // A second Content-Length, right after the start line.
            let at = b.iter().position(|c| *c == b'\n').map_or(0, |p| p + 1);
            let value = LENGTHS[v.index(LENGTHS.len())];
            let line = format!("Content-Length: {value}\r\n");
            b.splice(at..at, line.bytes());
        }
        Mutation::LongLine(i, n) => {
            let (s, _) = line_at(b, i);
            let line = format!("X-Long: {}\r\n", "a".repeat(*n as usize));
            b.splice(s..s, line.bytes());
        }
    }
}

fn mutated() -> impl Strategy<Value = Vec<u8>> {
    (0..SEEDS.len(), proptest::collection::vec(mutation(), 0..6)).prop_map(|(seed, muts)| {
        let mut b = SEEDS[seed].as_bytes().to_vec();
        for m in &muts {
            apply(&mut b, m);
        }
        b
    })
}

fn locals() -> Vec<Local> {
    ["udp", "tcp"]
        .iter()
        .map(|t| Local {
            transport: if *t == "udp" {
                Transport::Udp
            } else {
                Transport::Tcp
            },
            addr: "127.0.0.1:5060".parse().unwrap(),
            sent_by: "127.0.0.1:5060".into(),
        })
        .collect()
}

fn source(transport: Transport) -> Source {
    Source {
        transport,
        remote: "127.0.0.2:5070".parse().unwrap(),
        local: "127.0.0.1:5060".parse().unwrap(),
        conn: transport.is_reliable().then_some(super::core::ConnId(1)),
    }
}

/// Whether bytes begin like a request a peer could be answered for: a readable start
/// line that is not a status line.
fn looks_like_a_request(b: &[u8]) -> bool {
    let b = &b[message::leading_crlf(b)..];
    let end = b.iter().position(|c| *c == b'\n').unwrap_or(b.len());
    let line = &b[..end];
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    !line.is_empty() && std::str::from_utf8(line).is_ok() && !line.starts_with(b"SIP/")
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

/// Everything the parser and the core do with one piece of bytes from the network.
fn check_bytes(bytes: &[u8]) {
    let t0 = Instant::now();
    // A datagram.
    let mut core = SipCore::new(Timers::default(), locals(), MAX);
    match parse(bytes, Framing::Datagram, MAX) {
        Ok(p) => {
            if let SipMessage::Request(req) = &p.message {
                // What stox answers to what it accepted must itself be SIP.
                let mut answer =
                    SipMessage::Response(message::response_to(req, 400, Some("Bad"), "t"));
                let wire = message::to_bytes(&mut answer);
                let back = parse(&wire, Framing::Datagram, usize::MAX);
                assert!(
                    matches!(
                        back,
                        Ok(Parsed {
                            message: SipMessage::Response(_),
                            ..
                        })
                    ),
                    "the answer to an accepted request does not parse: {back:?}\n{}",
                    String::from_utf8_lossy(&wire)
                );
            }
            let is_request = matches!(p.message, SipMessage::Request(_));
            let is_ack = matches!(&p.message, SipMessage::Request(r) if r.method == rsipstack::sip::Method::Ack);
            core.handle_message(t0, p.message, source(Transport::Udp));
            let (t, e) = drain(&mut core);
            if is_request && !is_ack {
                assert!(
                    !t.is_empty() || !e.is_empty(),
                    "a request was neither answered nor passed on"
                );
            }
            for ev in e {
                if let Event::Request { id, request, .. } = ev {
                    core.respond(t0, id, message::response_to(&request, 200, None, ""));
                }
            }
        }
        Err(reject) => match &reject {
            Reject::Incomplete => panic!("a datagram is never incomplete"),
            Reject::Drop { why, .. } => {
                assert!(!why.is_empty());
                assert!(
                    !looks_like_a_request(bytes),
                    "a request was dropped ({why}) instead of answered"
                );
            }
            Reject::Answer { status, echo, .. } => {
                assert!((400..600).contains(status), "{status}");
                core.handle_reject(&reject, source(Transport::Udp));
                let (t, _) = drain(&mut core);
                assert!(t.len() <= 1);
                if echo.top_via().is_some() {
                    assert_eq!(t.len(), 1, "an answerable request got no answer");
                }
            }
        },
    }
    drain(&mut core);

    // A stream: the frame does not depend on how much has arrived.
    let stream = &bytes[message::leading_crlf(bytes)..];
    match parse(stream, Framing::Stream, MAX) {
        Ok(p) => {
            assert!(p.len <= stream.len());
            for cut in [p.len / 2, p.len.saturating_sub(1)] {
                if cut < p.len && cut > 0 {
                    let r = parse(&stream[..cut], Framing::Stream, MAX);
                    assert!(
                        matches!(r, Err(Reject::Incomplete)),
                        "a prefix of {cut} of a {}-byte frame gave {r:?}",
                        p.len
                    );
                }
            }
            if let Some(n) = message::stream_frame_len(stream, MAX) {
                assert_eq!(n, p.len);
            }
        }
        Err(Reject::Answer { len: Some(len), .. } | Reject::Drop { len: Some(len), .. }) => {
            assert!(len <= stream.len().max(MAX + 1));
        }
        Err(_) => {}
    }
    let mut core = SipCore::new(Timers::default(), locals(), MAX);
    match parse(stream, Framing::Stream, MAX) {
        Ok(p) => core.handle_message(t0, p.message, source(Transport::Tcp)),
        Err(r) => core.handle_reject(&r, source(Transport::Tcp)),
    }
    drain(&mut core);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1500, ..ProptestConfig::default() })]

    #[test]
    fn mutated_messages_never_panic_and_requests_are_answered(bytes in mutated()) {
        check_bytes(&bytes);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        check_bytes(&bytes);
    }

    #[test]
    fn random_header_soup_never_panics(
        start in prop_oneof![
            Just("MESSAGE sip:a@b SIP/2.0".to_string()),
            Just("SIP/2.0 200 OK".to_string()),
            "[A-Z]{1,8} [ -~]{0,20} SIP/2.0",
        ],
        headers in proptest::collection::vec(
            (prop_oneof![
                Just("Via"), Just("v"), Just("From"), Just("f"), Just("To"), Just("t"),
                Just("Call-ID"), Just("i"), Just("CSeq"), Just("Contact"), Just("m"),
                Just("Max-Forwards"), Just("Require"), Just("Content-Length"), Just("l"),
                Just("Record-Route"), Just("Route"), Just("WWW-Authenticate"),
            ], "[ -~]{0,40}"),
            0..12,
        ),
        body in "[ -~]{0,20}",
    ) {
        let mut text = format!("{start}\r\n");
        for (n, v) in &headers {
            text.push_str(&format!("{n}: {v}\r\n"));
        }
        text.push_str("\r\n");
        text.push_str(&body);
        check_bytes(text.as_bytes());
    }
}

// ----- the core under random sequences -----

/// Keeps what the sequence may act on next: requests stox sent, requests the TU got.
fn take(core: &mut SipCore, requests: &mut Vec<(ServerTxId, Request)>, sent: &mut Vec<Transmit>) {
    let (t, e) = drain(core);
    sent.extend(t.into_iter().filter(|t| {
        t.client.is_some() || t.bytes.starts_with(b"CANCEL") || t.bytes.starts_with(b"ACK")
    }));
    for e in e {
        if let Event::Request { id, request, .. } = e {
            requests.push((id, request));
        }
    }
}

#[derive(Debug, Clone)]
enum Op {
    /// A request from the peer, built from small pools so that keys collide.
    Request {
        method: u8,
        branch: u8,
        call: u8,
        cseq: u8,
        to_tag: bool,
        tcp: bool,
        max_forwards: u8,
    },
    /// Mutated bytes from the peer.
    Bytes(Vec<u8>),
    /// The TU answers the n-th request it was given.
    Respond {
        which: Index,
        status: u16,
    },
    /// The TU sends a request.
    Send {
        invite: bool,
        tcp: bool,
    },
    /// The peer answers the n-th request stox sent (or one of its retransmissions).
    Answer {
        which: Index,
        status: u16,
    },
    Cancel(Index),
    TransportError(Index),
    Advance(u32),
}

fn op() -> impl Strategy<Value = Op> {
    let status = prop_oneof![
        Just(100u16),
        Just(180),
        Just(200),
        Just(202),
        Just(401),
        Just(486),
        Just(487),
        Just(503)
    ];
    prop_oneof![
        4 => (0u8..6, 0u8..3, 0u8..2, 1u8..3, any::<bool>(), any::<bool>(), prop_oneof![Just(70u8), Just(0)])
            .prop_map(|(method, branch, call, cseq, to_tag, tcp, max_forwards)| Op::Request {
                method, branch, call, cseq, to_tag, tcp, max_forwards
            }),
        1 => mutated().prop_map(Op::Bytes),
        3 => (any::<Index>(), status.clone()).prop_map(|(which, status)| Op::Respond { which, status }),
        2 => (any::<bool>(), any::<bool>()).prop_map(|(invite, tcp)| Op::Send { invite, tcp }),
        3 => (any::<Index>(), status).prop_map(|(which, status)| Op::Answer { which, status }),
        1 => any::<Index>().prop_map(Op::Cancel),
        1 => any::<Index>().prop_map(Op::TransportError),
        3 => prop_oneof![0u32..600, 0u32..40_000].prop_map(Op::Advance),
    ]
}

const METHODS: &[&str] = &["MESSAGE", "INVITE", "ACK", "CANCEL", "BYE", "OPTIONS"];

fn peer_request(method: u8, branch: u8, call: u8, cseq: u8, to_tag: bool, mf: u8) -> String {
    let m = METHODS[method as usize % METHODS.len()];
    // CANCEL and ACK share the INVITE's CSeq number and (for CANCEL and a failure's ACK)
    // its branch, which the pools make likely.
    let tag = if to_tag { ";tag=tt" } else { "" };
    format!(
        "{m} sip:juliet@example.com SIP/2.0\r\n\
         Via: SIP/2.0/UDP 127.0.0.2:5070;branch=z9hG4bKf{branch}\r\n\
         Max-Forwards: {mf}\r\n\
         To: <sip:juliet@example.com>{tag}\r\n\
         From: <sip:romeo@example.net>;tag=rf\r\n\
         Call-ID: fuzz-{call}\r\n\
         CSeq: {cseq} {m}\r\n\
         Contact: <sip:romeo@127.0.0.2:5070>\r\n\
         Content-Length: 0\r\n\r\n"
    )
}

fn our_request(invite: bool, n: usize) -> Request {
    let m = if invite { "INVITE" } else { "MESSAGE" };
    let text = format!(
        "{m} sip:romeo@example.net SIP/2.0\r\n\
         Via: SIP/2.0/UDP x;branch=z9hG4bKx\r\n\
         To: <sip:romeo@example.net>\r\n\
         From: <sip:juliet@example.com>;tag=j{n}\r\n\
         Call-ID: out-{n}\r\n\
         CSeq: 1 {m}\r\n\
         Contact: <sip:juliet@127.0.0.1:5060>\r\n\
         Content-Length: 0\r\n\r\n"
    );
    match parse(text.as_bytes(), Framing::Datagram, MAX).map(|p| p.message) {
        Ok(SipMessage::Request(r)) => r,
        other => panic!("{other:?}"),
    }
}

/// The peer's response to a request stox sent (as it went on the wire).
fn peer_response(sent: &[u8], status: u16) -> Option<SipMessage> {
    let SipMessage::Request(req) = parse(sent, Framing::Datagram, MAX).ok()?.message else {
        return None;
    };
    let mut r = SipMessage::Response(message::response_to(&req, status, None, "peer"));
    parse(&message::to_bytes(&mut r), Framing::Datagram, MAX)
        .ok()
        .map(|p| p.message)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 250, ..ProptestConfig::default() })]

    #[test]
    fn the_core_survives_any_sequence_and_forgets_everything_after_its_timers(
        ops in proptest::collection::vec(op(), 1..40)
    ) {
        let t0 = Instant::now();
        let mut now = t0;
        let mut core = SipCore::new(Timers::default(), locals(), MAX);
        let mut requests: Vec<(ServerTxId, Request)> = Vec::new();
        let mut sent: Vec<Transmit> = Vec::new();
        let mut tokens: Vec<u64> = Vec::new();
        let mut next_token = 1u64;
        let peer: SocketAddr = "127.0.0.3:5080".parse().unwrap();
        for op in &ops {
            match op {
                Op::Request { method, branch, call, cseq, to_tag, tcp, max_forwards } => {
                    let text = peer_request(*method, *branch, *call, *cseq, *to_tag, *max_forwards);
                    let transport = if *tcp { Transport::Tcp } else { Transport::Udp };
                    match parse(text.as_bytes(), Framing::Datagram, MAX) {
                        Ok(p) => core.handle_message(now, p.message, source(transport)),
                        Err(r) => core.handle_reject(&r, source(transport)),
                    }
                }
                Op::Bytes(b) => match parse(b, Framing::Datagram, MAX) {
                    Ok(p) => core.handle_message(now, p.message, source(Transport::Udp)),
                    Err(r) => core.handle_reject(&r, source(Transport::Udp)),
                },
                Op::Respond { which, status } => {
                    if !requests.is_empty() {
                        let (id, req) = &requests[which.index(requests.len())];
                        let tag = if *status == 100 { "" } else { "tu" };
                        core.respond(now, *id, message::response_to(req, *status, None, tag));
                    }
                }
                Op::Send { invite, tcp } => {
                    let target = Target {
                        transport: if *tcp { Transport::Tcp } else { Transport::Udp },
                        addr: peer,
                        server_name: "example.net".into(),
                    };
                    let token = next_token;
                    next_token += 1;
                    prop_assert!(core.send_request(now, our_request(*invite, token as usize), target, token));
                    tokens.push(token);
                }
                Op::Answer { which, status } => {
                    if !sent.is_empty() {
                        let t = &sent[which.index(sent.len())];
                        if let Some(r) = peer_response(&t.bytes, *status) {
                            core.handle_message(now, r, source(t.transport));
                        }
                    }
                }
                Op::Cancel(i) => {
                    if !tokens.is_empty() {
                        core.cancel(now, tokens[i.index(tokens.len())]);
                    }
                }
                Op::TransportError(i) => {
                    let clients: Vec<u64> = sent.iter().filter_map(|t| t.client).collect();
                    if !clients.is_empty() {
                        core.handle_transport_error(clients[i.index(clients.len())]);
                    }
                }
                Op::Advance(ms) => {
                    now += Duration::from_millis(u64::from(*ms));
                    core.handle_timeout(now);
                }
            }
            take(&mut core, &mut requests, &mut sent);
        }
        // Let every timer run out; the answers the TU never gave do not pin anything.
        let mut rounds = 0;
        while let Some(at) = core.poll_timeout() {
            now = now.max(at);
            core.handle_timeout(now);
            drain(&mut core);
            rounds += 1;
            prop_assert!(rounds < 100_000, "timers never run out");
        }
        drain(&mut core);
        prop_assert_eq!(core.held(), 0);
        prop_assert!(now <= t0 + Duration::from_secs(40 * 40 + 120));
    }
}

/// `tests/corpus/sip/`: the seeds and every input that broke the framer or the core,
/// through the same checks as the mutated messages.
#[test]
fn corpus_sip() {
    crate::corpus::replay("sip", |b| {
        check_bytes(b);
        Ok(())
    });
}
