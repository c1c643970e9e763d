//! Fuzzing of the MSRP decoder, the session, and the payloads carried in chat sessions
//! (SDP offer/answer, message/cpim, isComposing), with proptest: a fixed number of cases
//! per run, plus the corpus in `tests/corpus/msrp-*` and `tests/corpus/{sdp,cpim,iscomposing}`.
//!
//! ```text
//!   valid frames -> mutations, split anywhere -> Decoder   same frames whole or split;
//!                                                           what decodes re-encodes to itself
//!   random SENDs (ours), peer chunks, responses, REPORTs,  -> Session   every request that wants
//!   aborts, garbage and clock jumps                                     an answer gets one; every
//!                                                                       SEND of ours ends once
//!   SDP / CPIM / isComposing: random and mutated documents -> parse, answer, re-parse
//! ```

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::sample::Index;
use rand::rngs::StdRng;
use rand::SeedableRng;

use super::cpim::{self, Address, Cpim};
use super::frame::{
    Decoded, Decoder, FailureReport, Frame, Limits, MessageId, Method, TransactionId,
};
use super::iscomposing::{IsComposing, State};
use super::sdp;
use super::session::{Config, Event, Failure, Outgoing, Session};
use super::uri::MsrpUri;
use crate::corpus;

const STOX: &str = "msrp://127.0.0.1:2855/s2x7weztas;tcp";
const PEER: &str = "msrp://127.0.0.2:7313/ansp71weztas;tcp";

fn uri(s: &str) -> MsrpUri {
    MsrpUri::parse(s).expect("test URI")
}

/// RFC 4975 section 7.1 and 7.1.2 examples, addressed to `STOX` from `PEER`.
fn seed_frames() -> Vec<String> {
    let head = |tid: &str, method: &str| {
        format!("MSRP {tid} {method}\r\nTo-Path: {STOX}\r\nFrom-Path: {PEER}\r\n")
    };
    vec![
        format!(
            "{}Message-ID: 87652491\r\nByte-Range: 1-25/25\r\nContent-Type: text/plain\r\n\r\nHey Bob, are you there?\r\n-------a786hjs2$\r\n",
            head("a786hjs2", "SEND")
        ),
        format!(
            "{}Message-ID: 12339sdqwer\r\nSuccess-Report: yes\r\nFailure-Report: partial\r\nByte-Range: 1-10/20\r\nContent-Type: text/plain\r\n\r\n0123456789\r\n-------d93kswow+\r\n",
            head("d93kswow", "SEND")
        ),
        format!(
            "{}Message-ID: 12339sdqwer\r\nByte-Range: 11-20/20\r\nContent-Type: text/plain\r\n\r\nabcdefghij\r\n-------d93kswox$\r\n",
            head("d93kswox", "SEND")
        ),
        format!(
            "{}Message-ID: 12339sdqwer\r\nByte-Range: 1-106/106\r\nStatus: 000 200 OK\r\n-------dkei38sd$\r\n",
            head("dkei38sd", "REPORT")
        ),
        format!("MSRP a786hjs2 200 OK\r\nTo-Path: {STOX}\r\nFrom-Path: {PEER}\r\n-------a786hjs2$\r\n"),
        format!(
            "{}Message-ID: msg3\r\nByte-Range: 1-*/*\r\nContent-Type: message/cpim\r\n\r\nFrom: <im:romeo@example.net>\r\nTo: <im:juliet@example.com>\r\n\r\nContent-Type: text/plain\r\n\r\nhi\r\n-------x1y2z3#\r\n",
            head("x1y2z3", "SEND")
        ),
        format!("{}Message-ID: msg4\r\nByte-Range: 1-0/0\r\n-------bind01$\r\n", head("bind01", "SEND")),
        format!("{}-------other1$\r\n", head("other1", "NICKNAME")),
    ]
}

const INSERTS: &[&[u8]] = &[
    b"\r\n",
    b"\r\n\r\n",
    b"-------",
    b"$",
    b"+",
    b"#",
    b":",
    b" ",
    b"\0",
    b"\xff",
    b"MSRP ",
    b"Byte-Range: 1-*/18446744073709551615\r\n",
    b"Byte-Range: 0-0/0\r\n",
    b"Failure-Report: no\r\n",
    b"Content-Type: \r\n",
    b"To-Path: msrp://[::1\r\n",
];

#[derive(Debug, Clone)]
enum Mutation {
    Flip(Index, u8),
    Insert(Index, Index),
    Delete(Index, u8),
    Truncate(Index),
    Duplicate(Index, Index),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<Index>(), 0u8..8).prop_map(|(i, b)| Mutation::Flip(i, b)),
        (any::<Index>(), any::<Index>()).prop_map(|(i, j)| Mutation::Insert(i, j)),
        (any::<Index>(), 1u8..12).prop_map(|(i, n)| Mutation::Delete(i, n)),
        any::<Index>().prop_map(Mutation::Truncate),
        (any::<Index>(), any::<Index>()).prop_map(|(i, j)| Mutation::Duplicate(i, j)),
    ]
}

fn apply(b: &mut Vec<u8>, m: &Mutation) {
    match m {
        Mutation::Flip(i, bit) if !b.is_empty() => {
            let i = i.index(b.len());
            b[i] ^= 1 << bit;
        }
        Mutation::Insert(i, j) => {
            let at = i.index(b.len() + 1);
            let what = INSERTS[j.index(INSERTS.len())];
            b.splice(at..at, what.iter().copied());
        }
        Mutation::Delete(i, n) if !b.is_empty() => {
            let at = i.index(b.len());
            let end = (at + *n as usize).min(b.len());
            b.drain(at..end);
        }
        Mutation::Truncate(i) => {
            let at = i.index(b.len() + 1);
            b.truncate(at);
        }
        Mutation::Duplicate(i, j) if !b.is_empty() => {
            let (a, z) = (i.index(b.len()), j.index(b.len()));
            let (a, z) = (a.min(z), a.max(z).min(a.min(z) + 64));
            let part = b[a..z].to_vec();
            b.splice(z..z, part);
        }
        _ => {}
    }
}

/// A few seed frames back to back, mutated.
fn mutated_stream() -> impl Strategy<Value = Vec<u8>> {
    (
        proptest::collection::vec(any::<Index>(), 1..4),
        proptest::collection::vec(mutation(), 0..5),
    )
        .prop_map(|(picks, muts)| {
            let seeds = seed_frames();
            let mut b: Vec<u8> = picks
                .iter()
                .flat_map(|p| seeds[p.index(seeds.len())].clone().into_bytes())
                .collect();
            for m in &muts {
                apply(&mut b, m);
            }
            b
        })
}

const SMALL: Limits = Limits {
    max_head: 512,
    max_headers: 12,
    max_body: 256,
};

/// Decodes `parts` fed one after the other: the frames, and whether the stream failed.
fn decode_parts(parts: &[&[u8]], limits: Limits) -> (Vec<Decoded>, bool) {
    let mut d = Decoder::new(limits);
    let mut out = Vec::new();
    for p in parts {
        d.push(p);
        loop {
            match d.decode() {
                Ok(Some(f)) => out.push(f),
                Ok(None) => break,
                Err(_) => return (out, true),
            }
        }
    }
    (out, false)
}

/// Memory of the decoder: once it has taken what it can, it holds no more than one head
/// and one chunk body (plus the last read), however the bytes came.
fn check_decoder_memory(parts: &[&[u8]], limits: Limits) -> Result<(), String> {
    let mut d = Decoder::new(limits);
    for p in parts {
        d.push(p);
        loop {
            match d.decode() {
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(_) => return Ok(()),
            }
        }
        let bound = limits.max_head + limits.max_body + p.len() + 64;
        if d.buffered() > bound {
            return Err(format!(
                "the decoder holds {} bytes (bound {bound})",
                d.buffered()
            ));
        }
    }
    Ok(())
}

/// The decoder check, for proptest and the corpus: nothing panics, the frames do not
/// depend on where reads split the bytes, and every frame re-encodes to bytes that
/// decode to the same frame.
fn check_decoder(bytes: &[u8], cuts: &[usize]) -> Result<(), String> {
    for limits in [Limits::default(), SMALL] {
        let (whole, failed) = decode_parts(&[bytes], limits);
        let mut parts = Vec::new();
        let mut last = 0;
        for &c in cuts {
            let c = c.min(bytes.len()).max(last);
            parts.push(&bytes[last..c]);
            last = c;
        }
        parts.push(&bytes[last..]);
        let (split, split_failed) = decode_parts(&parts, limits);
        check_decoder_memory(&parts, limits)?;
        if failed == split_failed && whole != split {
            return Err(format!(
                "frames differ with cuts {cuts:?}:\n{whole:?}\n{split:?}"
            ));
        }
        if !failed && !split_failed && whole != split {
            return Err("frames differ".into());
        }
        for d in &whole {
            if let Decoded::Frame(f) = d {
                let again = f.to_bytes();
                let (re, re_failed) = decode_parts(&[&again], Limits::default());
                if re_failed || re.len() != 1 || re[0] != Decoded::Frame(f.clone()) {
                    return Err(format!(
                        "{f:?} re-encodes to {:?}, which decodes to {re:?}",
                        String::from_utf8_lossy(&again)
                    ));
                }
            }
        }
    }
    Ok(())
}

/// The splits used for a corpus input: every eighth of it, and one byte at a time for
/// short inputs.
fn corpus_cuts(len: usize) -> Vec<Vec<usize>> {
    let mut all = vec![(1..8).map(|k| len * k / 8).collect()];
    if len <= 512 {
        all.push((1..len).collect());
    }
    all
}

fn session(config: Config) -> Session {
    Session::with_rng(
        uri(STOX),
        vec![uri(PEER)],
        config,
        StdRng::seed_from_u64(11),
    )
}

fn small_config() -> Config {
    Config {
        chunk_size: 64,
        write_unit: 32,
        max_message_size: 512,
        max_incomplete: 3,
        max_incoming_bytes: 1024,
        limits: SMALL,
        remember: 8,
        ..Config::default()
    }
}

/// The transaction ids of what `out` carries: responses, and the SENDs of ours with the
/// Failure-Report each asked for.
struct Wire {
    decoder: Decoder,
    responses: HashSet<TransactionId>,
    sends: Vec<(TransactionId, MessageId, FailureReport)>,
    broken: bool,
}

impl Wire {
    fn new() -> Wire {
        Wire {
            decoder: Decoder::new(Limits::default()),
            responses: HashSet::new(),
            sends: Vec::new(),
            broken: false,
        }
    }
}

/// Reads what stox wrote since the last call.
fn read_wire(out: &[u8], wire: &mut Wire) {
    wire.decoder.push(out);
    let mut frames = Vec::new();
    loop {
        match wire.decoder.decode() {
            Ok(Some(f)) => frames.push(f),
            Ok(None) => break,
            Err(_) => {
                wire.broken = true;
                break;
            }
        }
    }
    for d in frames {
        match d {
            Decoded::Frame(Frame::Response(r)) => {
                wire.responses.insert(r.tid);
            }
            Decoded::Frame(Frame::Request(r)) if r.method == Method::Send => {
                if let Some(id) = r.headers.message_id() {
                    wire.sends
                        .push((r.tid.clone(), id.clone(), r.headers.failure_report()));
                }
            }
            Decoded::Frame(Frame::Request(_)) => {}
            // stox never writes a frame its own decoder refuses.
            Decoded::Invalid(_) => wire.broken = true,
        }
    }
}

/// The requests in `input` that the session must answer: every request but a REPORT,
/// as the session's own decoder delimits them, unless its Failure-Report says `no`
/// (section 7.1.1) or `partial` (only errors come back, which the caller cannot know).
fn wanting_answers(input: &[u8], limits: Limits) -> HashSet<TransactionId> {
    let (frames, _) = decode_parts(&[input], limits);
    frames
        .into_iter()
        .filter_map(|d| match d {
            Decoded::Frame(Frame::Request(r)) if r.method != Method::Report => {
                (r.headers.failure_report() == FailureReport::Yes).then_some(r.tid)
            }
            Decoded::Invalid(i) if i.method.is_some() && i.method != Some(Method::Report) => {
                (i.headers.failure_report() == FailureReport::Yes).then_some(i.tid)
            }
            _ => None,
        })
        .collect()
}

fn drain(s: &mut Session, now: Instant, out: &mut Vec<u8>, events: &mut Vec<Event>) {
    // Bounded: a session hands out a finite amount per input.
    for _ in 0..100_000 {
        match s.poll_transmit(now) {
            Some(b) => out.extend_from_slice(&b),
            None => break,
        }
    }
    while let Some(e) = s.poll_event() {
        events.push(e);
    }
}

/// The session check for a peer byte stream (proptest and the corpus): nothing panics,
/// what goes out is well-formed, reassembly stays within its bound, and every request
/// that wants an answer gets one.
fn check_session_input(input: &[u8]) -> Result<(), String> {
    let config = small_config();
    let limits = config.limits;
    let max_bytes = config.max_incoming_bytes;
    let mut s = session(config);
    let now = Instant::now();
    let (mut out, mut events) = (Vec::new(), Vec::new());
    for part in input.chunks(97) {
        s.handle_data(now, part);
        if s.incoming_cost() > max_bytes {
            return Err(format!("reassembly holds {} bytes", s.incoming_cost()));
        }
        drain(&mut s, now, &mut out, &mut events);
    }
    let mut wire = Wire::new();
    read_wire(&out, &mut wire);
    if wire.broken {
        return Err(format!(
            "stox wrote malformed MSRP: {:?}",
            String::from_utf8_lossy(&out)
        ));
    }
    let stream_failed = events.iter().any(|e| matches!(e, Event::StreamError(_)));
    if !stream_failed {
        for tid in wanting_answers(input, limits) {
            if !wire.responses.contains(&tid) {
                return Err(format!("request {tid} got no response"));
            }
        }
    }
    s.handle_timeout(now + Duration::from_secs(3600));
    drain(&mut s, now, &mut out, &mut events);
    if s.incoming_cost() != 0 || s.poll_timeout().is_some() {
        return Err("state left after every deadline passed".into());
    }
    Ok(())
}

/// One step of the session sequence test.
#[derive(Debug, Clone)]
enum Op {
    /// stox sends a message of this many bytes.
    Send {
        len: u16,
        success: bool,
        failure: u8,
    },
    /// The peer sends a chunk of one of a few messages.
    PeerChunk {
        mid: u8,
        start: u16,
        len: u8,
        total: Option<u16>,
        flag: u8,
        failure: u8,
        content_type: u8,
    },
    /// The peer answers one of our SENDs seen on the wire.
    Respond {
        which: Index,
        code: u8,
    },
    /// The peer sends a REPORT about one of our messages.
    Report {
        which: Index,
        code: u8,
    },
    Abort {
        which: Index,
    },
    Garbage(Vec<u8>),
    Mutated(Vec<u8>),
    Advance {
        secs: u8,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0u16..300, any::<bool>(), 0u8..3).prop_map(|(len, success, failure)| Op::Send { len, success, failure }),
        4 => (0u8..4, 1u16..600, 0u8..80, prop::option::of(0u16..600), 0u8..3, 0u8..3, 0u8..3)
            .prop_map(|(mid, start, len, total, flag, failure, content_type)| Op::PeerChunk { mid, start, len, total, flag, failure, content_type }),
        4 => (any::<Index>(), 0u8..5).prop_map(|(which, code)| Op::Respond { which, code }),
        1 => (any::<Index>(), 0u8..3).prop_map(|(which, code)| Op::Report { which, code }),
        1 => any::<Index>().prop_map(|which| Op::Abort { which }),
        1 => proptest::collection::vec(any::<u8>(), 0..64).prop_map(Op::Garbage),
        1 => mutated_stream().prop_map(Op::Mutated),
        2 => (0u8..70).prop_map(|secs| Op::Advance { secs }),
    ]
}

const FAILURE: [FailureReport; 3] = [
    FailureReport::Yes,
    FailureReport::Partial,
    FailureReport::No,
];

fn peer_chunk(op: &Op) -> String {
    let Op::PeerChunk {
        mid,
        start,
        len,
        total,
        flag,
        failure,
        content_type,
    } = op
    else {
        return String::new();
    };
    let tid = format!("p{mid}s{start}l{len}");
    let end = u32::from(*start) + u32::from(*len) - u32::from(*len > 0);
    let total = total.map(|t| t.to_string()).unwrap_or_else(|| "*".into());
    let mut s = format!(
        "MSRP {tid} SEND\r\nTo-Path: {STOX}\r\nFrom-Path: {PEER}\r\nMessage-ID: pm{mid}\r\nByte-Range: {start}-{end}/{total}\r\n"
    );
    match failure {
        1 => s += "Failure-Report: partial\r\nSuccess-Report: yes\r\n",
        2 => s += "Failure-Report: no\r\n",
        _ => {}
    }
    let ct = ["text/plain", "message/cpim", "image/jpeg"][*content_type as usize % 3];
    let body: String = (0..*len).map(|i| (b'a' + i % 26) as char).collect();
    s += &format!("Content-Type: {ct}\r\n\r\n{body}\r\n-------{tid}");
    s.push(['$', '+', '#'][*flag as usize % 3]);
    s + "\r\n"
}

/// Runs one sequence against a session and checks, at every step and at the end:
/// reassembly within its bound; every peer request wanting an answer answered; every
/// message of ours with Failure-Report yes or partial (not aborted, written whole or in
/// part) ends exactly once, as Delivered or Failed, once its deadlines have passed;
/// nothing ends twice; and nothing is left once every deadline has passed.
fn check_sequence(ops: &[Op]) -> Result<(), String> {
    let config = small_config();
    let limits = config.limits;
    let max_bytes = config.max_incoming_bytes;
    let mut s = session(config);
    let start = Instant::now();
    let mut now = start;
    let (mut out, mut events) = (Vec::new(), Vec::new());
    let mut fed = Vec::new();
    let mut ours: Vec<(MessageId, FailureReport, usize)> = Vec::new();
    let mut aborted = HashSet::new();
    let mut wire = Wire::new();
    for op in ops {
        let mut input = Vec::new();
        match op {
            Op::Send {
                len,
                success,
                failure,
            } => {
                let body: Vec<u8> = (0..*len).map(|i| b'A' + (i % 26) as u8).collect();
                let mut m = Outgoing::new("text/plain", body);
                m.success_report = *success;
                m.failure_report = FAILURE[*failure as usize];
                if let Ok(id) = s.send(m) {
                    ours.push((id, FAILURE[*failure as usize], *len as usize));
                }
            }
            Op::PeerChunk { .. } => input = peer_chunk(op).into_bytes(),
            Op::Respond { which, code } if !wire.sends.is_empty() => {
                let (tid, _, _) = &wire.sends[which.index(wire.sends.len())];
                let (code, text) = [
                    (200, "OK"),
                    (400, "Bad"),
                    (413, "Stop"),
                    (481, "Gone"),
                    (408, "Timeout"),
                ][*code as usize];
                input = format!("MSRP {tid} {code} {text}\r\nTo-Path: {STOX}\r\nFrom-Path: {PEER}\r\n-------{tid}$\r\n").into_bytes();
            }
            Op::Report { which, code } if !ours.is_empty() => {
                let (id, _, len) = &ours[which.index(ours.len())];
                let code = [200, 413, 408][*code as usize];
                input = format!("MSRP rep{code} REPORT\r\nTo-Path: {STOX}\r\nFrom-Path: {PEER}\r\nMessage-ID: {id}\r\nByte-Range: 1-{len}/{len}\r\nStatus: 000 {code} X\r\n-------rep{code}$\r\n").into_bytes();
            }
            Op::Abort { which } if !ours.is_empty() => {
                let (id, _, _) = &ours[which.index(ours.len())];
                if s.abort(id) {
                    aborted.insert(id.clone());
                }
            }
            Op::Garbage(g) | Op::Mutated(g) => input = g.clone(),
            Op::Advance { secs } => {
                now += Duration::from_secs(u64::from(*secs));
                s.handle_timeout(now);
            }
            _ => {}
        }
        if !input.is_empty() {
            s.handle_data(now, &input);
            fed.extend_from_slice(&input);
        }
        if s.incoming_cost() > max_bytes {
            return Err(format!("reassembly holds {} bytes", s.incoming_cost()));
        }
        let seen = out.len();
        drain(&mut s, now, &mut out, &mut events);
        read_wire(&out[seen..], &mut wire);
    }
    // Every deadline passes.
    now += Duration::from_secs(3600);
    s.handle_timeout(now);
    let seen = out.len();
    drain(&mut s, now, &mut out, &mut events);
    read_wire(&out[seen..], &mut wire);
    if wire.broken {
        return Err(format!(
            "stox wrote malformed MSRP: {:?}",
            String::from_utf8_lossy(&out)
        ));
    }
    if s.incoming_cost() != 0 || s.poll_timeout().is_some() {
        return Err("state left after every deadline passed".into());
    }
    let stream_failed = events.iter().any(|e| matches!(e, Event::StreamError(_)));
    if !stream_failed {
        for tid in wanting_answers(&fed, limits) {
            // Our own SENDs' tids are not the peer's; a peer tid that collides with a
            // response we sent ourselves cannot happen (ours are random 16 characters).
            if !wire.responses.contains(&tid) {
                return Err(format!("peer request {tid} got no response"));
            }
        }
    }
    let mut ends: HashMap<MessageId, usize> = HashMap::new();
    for e in &events {
        match e {
            Event::Delivered { message_id } | Event::Failed { message_id, .. } => {
                *ends.entry(message_id.clone()).or_default() += 1;
            }
            _ => {}
        }
    }
    let on_wire: HashSet<&MessageId> = wire.sends.iter().map(|(_, id, _)| id).collect();
    for (id, failure, _) in &ours {
        let n = ends.get(id).copied().unwrap_or(0);
        if n > 1 {
            return Err(format!("message {id} ended {n} times"));
        }
        let accounted = aborted.contains(id) || !on_wire.contains(id) && stream_failed;
        match failure {
            FailureReport::No
                if events
                    .iter()
                    .any(|e| matches!(e, Event::Delivered { message_id } if message_id == id)) =>
            {
                return Err(format!(
                    "message {id} with Failure-Report: no was reported delivered"
                ));
            }
            FailureReport::Yes | FailureReport::Partial if n == 0 && !accounted => {
                return Err(format!(
                    "message {id} ({failure:?}) never ended: {events:?}"
                ));
            }
            _ => {}
        }
        let failed_by_timeout = events.iter().any(|e| matches!(e, Event::Failed { message_id, failure: Failure::Timeout } if message_id == id));
        if *failure == FailureReport::Partial && failed_by_timeout {
            return Err(format!(
                "message {id} with Failure-Report: partial timed out"
            ));
        }
    }
    Ok(())
}

fn check_sdp(body: &[u8]) -> Result<(), String> {
    let Ok(offer) = sdp::parse(body) else {
        return Ok(());
    };
    let local = sdp::LocalMedia {
        address: "127.0.0.1".parse().map_err(|_| "address")?,
        port: 2855,
        uri: uri(STOX),
        session_id: 1,
        session_version: 1,
    };
    for tls in [false, true] {
        let _ = sdp::accept_answer(&offer, tls);
        let Ok(negotiated) = sdp::accept_offer(&offer, tls) else {
            continue;
        };
        if negotiated.remote_path.is_empty() {
            return Err("accepted an offer without a=path".into());
        }
        // Our answer is an SDP the peer (and we) can read, with our path on its MSRP line.
        let answer = sdp::answer(&offer, &local, &negotiated);
        let parsed = sdp::parse(answer.as_bytes()).map_err(|e| format!("{e}: {answer}"))?;
        let m = parsed
            .msrp
            .ok_or_else(|| format!("no MSRP line in {answer}"))?;
        if m.path != vec![uri(STOX)] {
            return Err(format!("answer path {:?}", m.path));
        }
        if parsed.session.medias.len() != offer.session.medias.len() {
            return Err("answer has another number of m= lines".into());
        }
    }
    Ok(())
}

fn check_cpim(body: &[u8]) -> Result<(), String> {
    let Ok(c) = Cpim::parse(body) else {
        return Ok(());
    };
    let _ = (
        c.from(),
        c.to(),
        c.datetime(),
        c.namespaces(),
        c.content_type(),
    );
    // What we parsed serializes into a message that parses to the same thing.
    let again = Cpim::parse(&c.to_bytes()).map_err(|e| format!("re-parse: {e}"))?;
    if again != c {
        return Err(format!("{c:?} re-parses as {again:?}"));
    }
    Ok(())
}

fn check_iscomposing(body: &[u8]) -> Result<(), String> {
    let Ok(text) = std::str::from_utf8(body) else {
        return Ok(());
    };
    let Ok(doc) = IsComposing::parse(text) else {
        return Ok(());
    };
    let again = IsComposing::parse(&doc.to_xml()).map_err(|e| format!("re-parse: {e}"))?;
    if again != doc {
        return Err(format!("{doc:?} re-parses as {again:?}"));
    }
    Ok(())
}

/// Byte-level mutations of a seed document.
fn mutated_doc(seeds: &'static [&'static str]) -> impl Strategy<Value = Vec<u8>> {
    (
        any::<Index>(),
        proptest::collection::vec((any::<u8>(), any::<Index>(), 0u8..4), 0..6),
    )
        .prop_map(move |(which, edits)| {
            let mut b = seeds[which.index(seeds.len())].as_bytes().to_vec();
            for (byte, at, op) in edits {
                let i = at.index(b.len() + 1);
                match op {
                    0 if i < b.len() => b[i] = byte,
                    1 => b.insert(i, byte),
                    2 if i < b.len() => {
                        b.remove(i);
                    }
                    3 => b.truncate(i),
                    _ => {}
                }
            }
            b
        })
}

const SDP_SEEDS: &[&str] = &[
    "v=0\r\no=romeo 2890844527 2890844527 IN IP4 s2x.example.net\r\ns=-\r\nc=IN IP4 s2x.example.net\r\nt=0 0\r\nm=message 7313 TCP/MSRP *\r\na=accept-types:text/plain\r\na=path:msrp://s2x.example.net:7313/ansp71weztas;tcp\r\n",
    "v=0\r\no=- 1 1 IN IP6 ::1\r\ns=-\r\nc=IN IP6 ::1\r\nt=0 0\r\nm=audio 49170 RTP/AVP 0\r\nm=message 2855 TCP/TLS/MSRP *\r\na=accept-types:message/cpim text/plain\r\na=accept-wrapped-types:*\r\na=setup:actpass\r\na=max-size:1024\r\na=path:msrps://[::1]:2855/abc;tcp msrps://127.0.0.3:9/def;tcp\r\n",
    "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=message 0 TCP/MSRP *\r\na=setup:holdconn\r\na=path:msrp://127.0.0.1:1/x;tcp\r\n",
];

const CPIM_SEEDS: &[&str] = &[
    "From: MR SANDERS <im:piglet@100akerwood.com>\r\nTo: Depressed Donkey <im:eeyore@100akerwood.com>\r\nDateTime: 2000-12-13T13:40:00-08:00\r\nSubject: the weather will be fine today\r\nSubject:;lang=fr beau temps prevu pour aujourd'hui\r\nNS: MyFeatures <mid:MessageFeatures@id.foo.com>\r\nRequire: MyFeatures.VitalMessageOption\r\nMyFeatures.VitalMessageOption: Confirmation-requested\r\n\r\nContent-type: text/xml; charset=utf-8\r\nContent-ID: <1234567890@foo.com>\r\n\r\n<body>Here is the text of my message.</body>",
    "From: \"Romeo\" <xmpp:romeo@example.net>\r\nTo: <sip:juliet@example.com>\r\n\r\nContent-Type: text/plain\r\n  ;charset=utf-8\r\n\r\nhi",
    "\n\nbody only",
];

const ISCOMPOSING_SEEDS: &[&str] = &[
    "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<isComposing xmlns=\"urn:ietf:params:xml:ns:im-iscomposing\"><state>active</state><contenttype>text/plain</contenttype><refresh>90</refresh></isComposing>",
    "<isComposing xmlns='urn:ietf:params:xml:ns:im-iscomposing'><state>idle</state><lastactive>2003-01-27T10:43:00Z</lastactive><contenttype>audio</contenttype></isComposing>",
];

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn mutated_frames_decode_the_same_however_reads_split_them(
        bytes in mutated_stream(),
        cuts in proptest::collection::vec(any::<Index>(), 0..5),
    ) {
        let mut cuts: Vec<usize> = cuts.iter().map(|i| i.index(bytes.len() + 1)).collect();
        cuts.sort_unstable();
        check_decoder(&bytes, &cuts).map_err(TestCaseError::fail)?;
    }

    #[test]
    fn mutated_frames_into_a_session_are_answered(bytes in mutated_stream()) {
        check_session_input(&bytes).map_err(TestCaseError::fail)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn long_bodies_heads_and_garbage_stay_within_the_decoder_bound(
        kind in 0u8..3,
        len in 1usize..65536,
        read in 1usize..4096,
    ) {
        let head = format!("MSRP big1 SEND\r\nTo-Path: {STOX}\r\nFrom-Path: {PEER}\r\nMessage-ID: big1\r\nByte-Range: 1-*/*\r\nContent-Type: text/plain\r\n\r\n");
        let bytes: Vec<u8> = match kind {
            0 => [head.as_bytes(), &vec![b'a'; len], b"\r\n-------big1$\r\n"].concat(),
            1 => [b"MSRP big2 SEND\r\n".as_slice(), &b"X-Pad: 0123456789\r\n".repeat(len / 19 + 1)].concat(),
            _ => (0..len).map(|i| (i * 7919 % 251) as u8).collect(),
        };
        let parts: Vec<&[u8]> = bytes.chunks(read).collect();
        check_decoder_memory(&parts, SMALL).map_err(TestCaseError::fail)?;
        check_decoder_memory(&parts, Limits::default()).map_err(TestCaseError::fail)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn any_sequence_of_sends_chunks_responses_reports_and_timeouts_keeps_the_invariants(
        ops in proptest::collection::vec(op(), 0..24),
    ) {
        check_sequence(&ops).map_err(TestCaseError::fail)?;
    }

    #[test]
    fn mutated_and_random_sdp_never_panics_and_answers_parse(
        body in prop_oneof![mutated_doc(SDP_SEEDS), proptest::collection::vec(any::<u8>(), 0..200)],
    ) {
        check_sdp(&body).map_err(TestCaseError::fail)?;
    }

    #[test]
    fn mutated_and_random_cpim_never_panics_and_re_parses(
        body in prop_oneof![mutated_doc(CPIM_SEEDS), proptest::collection::vec(any::<u8>(), 0..200)],
    ) {
        check_cpim(&body).map_err(TestCaseError::fail)?;
    }

    #[test]
    fn cpim_wrap_round_trips(
        display in prop::option::of("[a-zA-Z0-9 .,;:@<>\"\\\\'-]{1,20}"),
        user in "[a-z0-9.+-]{1,12}",
        datetime in prop::option::of("[0-9T:Z.+-]{1,25}"),
        body in proptest::collection::vec(any::<u8>(), 0..64),
    ) {
        let from = Address::new(display.as_deref(), &format!("xmpp:{user}@example.net"));
        let to = Address::new(None, "sip:juliet@example.com");
        let bytes = cpim::wrap(&from, &to, datetime.as_deref(), "text/plain", &body);
        let c = Cpim::parse(&bytes).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(c.from().map(|a| a.uri), Some(from.uri.clone()));
        prop_assert_eq!(c.to(), vec![to]);
        prop_assert_eq!(c.content_type(), Some("text/plain"));
        prop_assert_eq!(&c.body[..], &body[..]);
        check_cpim(&bytes).map_err(TestCaseError::fail)?;
    }

    #[test]
    fn mutated_and_random_iscomposing_never_panics_and_re_parses(
        body in prop_oneof![mutated_doc(ISCOMPOSING_SEEDS), "[<>/='\" a-zA-Z:!?&#;-]{0,120}".prop_map(String::into_bytes)],
    ) {
        check_iscomposing(&body).map_err(TestCaseError::fail)?;
    }

    #[test]
    fn iscomposing_round_trips(
        active in any::<bool>(),
        lastactive in prop::option::of("[ -~]{1,30}"),
        contenttype in prop::option::of("[ -~]{1,30}"),
        refresh in prop::option::of(1u32..),
    ) {
        let doc = IsComposing {
            state: if active { State::Active } else { State::Idle },
            // Parsing trims, so text with outer blanks is not what comes back.
            lastactive: lastactive.map(|s| s.trim().to_string()).filter(|s| !s.is_empty()),
            contenttype: contenttype.map(|s| s.trim().to_string()).filter(|s| !s.is_empty()),
            refresh,
        };
        let again = IsComposing::parse(&doc.to_xml()).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(again, doc);
    }
}

#[test]
fn corpus_msrp_frames() {
    corpus::replay("msrp-frame", |b| {
        for cuts in corpus_cuts(b.len()) {
            check_decoder(b, &cuts)?;
        }
        Ok(())
    });
}

#[test]
fn corpus_msrp_session() {
    corpus::replay("msrp-session", check_session_input);
}

#[test]
fn corpus_sdp() {
    corpus::replay("sdp", check_sdp);
}

#[test]
fn corpus_cpim() {
    corpus::replay("cpim", check_cpim);
}

#[test]
fn corpus_iscomposing() {
    corpus::replay("iscomposing", check_iscomposing);
}

#[test]
fn the_seeds_are_valid() {
    // A seed that does not decode would make the mutations test little.
    for f in seed_frames() {
        let (frames, failed) = decode_parts(&[f.as_bytes()], Limits::default());
        assert!(!failed && frames.len() == 1, "{f}");
        assert!(
            matches!(frames[0], Decoded::Frame(_)),
            "{f}: {:?}",
            frames[0]
        );
    }
    for s in SDP_SEEDS {
        assert!(sdp::parse(s.as_bytes()).is_ok(), "{s}");
    }
    for s in CPIM_SEEDS {
        assert!(Cpim::parse(s.as_bytes()).is_ok(), "{s}");
    }
    for s in ISCOMPOSING_SEEDS {
        assert!(IsComposing::parse(s).is_ok(), "{s}");
    }
}
