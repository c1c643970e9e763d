//! The session state machine on a virtual clock: two sessions wired back to back.

use super::*;
use crate::msrp::frame::{Decoded, Decoder};

const ALICE: &str = "msrp://atlanta.example.com:7654/jshA7weztas;tcp";
const BOB: &str = "msrp://biloxi.example.com:12763/kjhd37s2s20w2a;tcp";

fn uri(s: &str) -> MsrpUri {
    MsrpUri::parse(s).unwrap()
}

fn session(local: &str, remote: &str, config: Config) -> Session {
    Session::with_rng(
        uri(local),
        vec![uri(remote)],
        config,
        StdRng::seed_from_u64(7),
    )
}

fn decode(bytes: &[u8]) -> Vec<Decoded> {
    let mut d = Decoder::new(Limits::default());
    d.push(bytes);
    let mut out = Vec::new();
    while let Some(f) = d.decode().unwrap() {
        out.push(f);
    }
    out
}

fn requests(bytes: &[u8]) -> Vec<Request> {
    decode(bytes)
        .into_iter()
        .filter_map(|d| match d {
            Decoded::Frame(Frame::Request(r)) => Some(r),
            _ => None,
        })
        .collect()
}

fn responses(bytes: &[u8]) -> Vec<Response> {
    decode(bytes)
        .into_iter()
        .filter_map(|d| match d {
            Decoded::Frame(Frame::Response(r)) => Some(r),
            _ => None,
        })
        .collect()
}

/// Alice and Bob on one virtual clock; `drive` carries bytes both ways until quiet.
struct Pair {
    a: Session,
    b: Session,
    now: Instant,
    a_to_b: Vec<u8>,
    b_to_a: Vec<u8>,
    a_events: Vec<Event>,
    b_events: Vec<Event>,
}

impl Pair {
    fn new(a: Config, b: Config) -> Pair {
        Pair {
            a: session(ALICE, BOB, a),
            b: session(BOB, ALICE, b),
            now: Instant::now(),
            a_to_b: Vec::new(),
            b_to_a: Vec::new(),
            a_events: Vec::new(),
            b_events: Vec::new(),
        }
    }

    fn drive(&mut self) {
        loop {
            let mut moved = false;
            while let Some(bytes) = self.a.poll_transmit(self.now) {
                self.a_to_b.extend_from_slice(&bytes);
                self.b.handle_data(self.now, &bytes);
                moved = true;
            }
            while let Some(bytes) = self.b.poll_transmit(self.now) {
                self.b_to_a.extend_from_slice(&bytes);
                self.a.handle_data(self.now, &bytes);
                moved = true;
            }
            if !moved {
                break;
            }
        }
        self.a_events
            .extend(std::iter::from_fn(|| self.a.poll_event()));
        self.b_events
            .extend(std::iter::from_fn(|| self.b.poll_event()));
    }

    fn advance(&mut self, d: Duration) {
        self.now += d;
        self.a.handle_timeout(self.now);
        self.b.handle_timeout(self.now);
        self.drive();
    }

    fn messages(&self) -> Vec<&Received> {
        self.b_events
            .iter()
            .filter_map(|e| match e {
                Event::Message(m) => Some(m),
                _ => None,
            })
            .collect()
    }
}

fn text(body: &str) -> Outgoing {
    Outgoing::new("text/plain", body.to_string())
}

/// Feeds Bob one request written by hand and returns what he writes back.
fn bob_answers(request: &str) -> (Session, Vec<u8>, Vec<Event>) {
    let mut b = session(BOB, ALICE, Config::default());
    let now = Instant::now();
    b.handle_data(now, request.replace('\n', "\r\n").as_bytes());
    let mut out = Vec::new();
    while let Some(bytes) = b.poll_transmit(now) {
        out.extend_from_slice(&bytes);
    }
    let events = std::iter::from_fn(|| b.poll_event()).collect();
    (b, out, events)
}

#[test]
fn a_message_is_sent_answered_and_delivered() {
    let mut p = Pair::new(Config::default(), Config::default());
    let mut m = text("Hey Bob, are you there?");
    m.transaction_id = TransactionId::new("a786hjs2");
    m.message_id = MessageId::new("87652491");
    let id = p.a.send(m).unwrap();
    p.drive();
    assert_eq!(
        String::from_utf8_lossy(&p.a_to_b),
        "MSRP a786hjs2 SEND\r\n\
         To-Path: msrp://biloxi.example.com:12763/kjhd37s2s20w2a;tcp\r\n\
         From-Path: msrp://atlanta.example.com:7654/jshA7weztas;tcp\r\n\
         Message-ID: 87652491\r\n\
         Byte-Range: 1-23/23\r\n\
         Content-Type: text/plain\r\n\
         \r\n\
         Hey Bob, are you there?\r\n\
         -------a786hjs2$\r\n"
    );
    assert_eq!(
        String::from_utf8_lossy(&p.b_to_a),
        "MSRP a786hjs2 200 OK\r\n\
         To-Path: msrp://atlanta.example.com:7654/jshA7weztas;tcp\r\n\
         From-Path: msrp://biloxi.example.com:12763/kjhd37s2s20w2a;tcp\r\n\
         -------a786hjs2$\r\n"
    );
    let got = p.messages();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].transaction_id.as_str(), "a786hjs2");
    assert_eq!(got[0].content_type, "text/plain");
    assert_eq!(&got[0].body[..], b"Hey Bob, are you there?");
    assert_eq!(p.a_events, vec![Event::Delivered { message_id: id }]);
    assert!(p.a.is_idle());
    assert_eq!(p.a.poll_timeout(), None);
}

#[test]
fn a_large_message_is_chunked_each_chunk_its_own_transaction() {
    let config = Config {
        chunk_size: 1000,
        ..Config::default()
    };
    let mut p = Pair::new(config, Config::default());
    let body: Vec<u8> = (0..2500u32).map(|i| (i % 251) as u8).collect();
    let id = p.a.send(Outgoing::new("text/plain", body.clone())).unwrap();
    p.drive();
    let sent = requests(&p.a_to_b);
    let ranges: Vec<String> = sent
        .iter()
        .map(|r| r.headers.byte_range().unwrap().to_string())
        .collect();
    assert_eq!(ranges, ["1-1000/2500", "1001-2000/2500", "2001-2500/2500"]);
    let flags: Vec<Flag> = sent.iter().map(|r| r.flag).collect();
    assert_eq!(flags, [Flag::More, Flag::More, Flag::End]);
    let tids: HashSet<_> = sent.iter().map(|r| r.tid.clone()).collect();
    assert_eq!(tids.len(), 3);
    assert!(sent.iter().all(|r| r.headers.message_id() == Some(&id)));
    assert_eq!(responses(&p.b_to_a).len(), 3);
    assert_eq!(&p.messages()[0].body[..], &body[..]);
    assert_eq!(p.messages()[0].transaction_id, sent[0].tid);
    assert_eq!(p.a_events, vec![Event::Delivered { message_id: id }]);
}

#[test]
fn a_long_chunk_is_interrupted_for_a_waiting_message_and_resumed() {
    let config = Config {
        chunk_size: 100_000,
        write_unit: 1000,
        ..Config::default()
    };
    let mut p = Pair::new(config, Config::default());
    let big: Vec<u8> = vec![b'x'; 5000];
    let big_id = p.a.send(Outgoing::new("text/plain", big.clone())).unwrap();
    // The head and the first write unit go out...
    let first = p.a.poll_transmit(p.now).unwrap();
    p.a_to_b.extend_from_slice(&first);
    p.b.handle_data(p.now, &first);
    // ...then a chat line is queued: the chunk ends with "+" and the line goes next.
    let small_id = p.a.send(text("wherefore art thou")).unwrap();
    p.drive();

    let sent = requests(&p.a_to_b);
    assert_eq!(sent.len(), 3);
    assert_eq!(sent[0].headers.message_id(), Some(&big_id));
    assert_eq!(
        sent[0].headers.byte_range().unwrap().to_string(),
        "1-*/5000"
    );
    assert_eq!(sent[0].flag, Flag::More);
    assert_eq!(sent[0].body.as_ref().unwrap().len(), 1000);
    assert_eq!(sent[1].headers.message_id(), Some(&small_id));
    assert_eq!(sent[1].flag, Flag::End);
    assert_eq!(
        sent[2].headers.byte_range().unwrap().to_string(),
        "1001-*/5000"
    );
    assert_eq!(sent[2].flag, Flag::End);
    assert_eq!(sent[2].body.as_ref().unwrap().len(), 4000);

    let got = p.messages();
    assert_eq!(got.len(), 2);
    assert_eq!(&got[0].body[..], b"wherefore art thou");
    assert_eq!(&got[1].body[..], &big[..]);
    assert_eq!(
        p.a_events,
        vec![
            Event::Delivered {
                message_id: small_id
            },
            Event::Delivered { message_id: big_id }
        ]
    );
}

#[test]
fn chunks_out_of_order_and_unknown_totals_are_reassembled() {
    let head = |tid: &str, range: &str| {
        format!(
            "MSRP {tid} SEND\nTo-Path: {BOB}\nFrom-Path: {ALICE}\nMessage-ID: 4564dpWd\nByte-Range: {range}\nContent-Type: text/plain\n\n"
        )
    };
    // The second half first, then the first half with "$"; the total is known.
    let input = format!(
        "{}EFGH\n-------dkei38ia+\n{}abcd\n-------dkei38sd$\n",
        head("dkei38ia", "5-8/8"),
        head("dkei38sd", "1-4/8")
    );
    let (_, out, events) = bob_answers(&input);
    assert_eq!(
        responses(&out).iter().map(|r| r.code).collect::<Vec<_>>(),
        [200, 200]
    );
    let Some(Event::Message(m)) = events.first() else {
        panic!("{events:?}")
    };
    assert_eq!(&m.body[..], b"abcdEFGH");
    assert_eq!(m.transaction_id.as_str(), "dkei38sd", "the chunk at byte 1");

    // Total "*" everywhere: the "$" chunk says where the message ends.
    let input = format!(
        "{}abcd\n-------dkei38sd+\n{}EFGH\n-------dkei38ia$\n",
        head("dkei38sd", "1-*/*"),
        head("dkei38ia", "5-8/*")
    );
    let (_, _, events) = bob_answers(&input);
    let Some(Event::Message(m)) = events.first() else {
        panic!("{events:?}")
    };
    assert_eq!(&m.body[..], b"abcdEFGH");

    // A gap: nothing is delivered.
    let input = format!("{}EFGH\n-------dkei38ia$\n", head("dkei38ia", "5-8/8"));
    let (b, _, events) = bob_answers(&input);
    assert!(events.is_empty(), "{events:?}");
    assert_eq!(b.incoming.len(), 1);
}

#[test]
fn a_request_for_another_session_or_from_another_peer_gets_481() {
    let other = "msrp://biloxi.example.com:12763/someoneelse;tcp";
    for (to, from) in [
        (other, ALICE),
        (BOB, other),
        (&format!("{BOB} {BOB}")[..], ALICE),
    ] {
        let (_, out, _) = bob_answers(&format!(
            "MSRP a786hjs2 SEND\nTo-Path: {to}\nFrom-Path: {from}\nMessage-ID: 87652491\nContent-Type: text/plain\n\nhi\n-------a786hjs2$\n"
        ));
        let r = responses(&out);
        assert_eq!(r[0].code, 481, "{to} / {from}");
        assert_eq!(r[0].comment.as_deref(), Some("Session Does Not Exist"));
    }
}

#[test]
fn requests_are_refused_with_the_codes_of_the_rfc() {
    let cases = [
        // unknown method
        (format!("MSRP a786hjs2 AUTH\nTo-Path: {BOB}\nFrom-Path: {ALICE}\n-------a786hjs2$\n"), 501),
        // media type not accepted
        (format!("MSRP a786hjs2 SEND\nTo-Path: {BOB}\nFrom-Path: {ALICE}\nMessage-ID: 87652491\nContent-Type: image/png\n\nPNG\n-------a786hjs2$\n"), 415),
        // no Message-ID
        (format!("MSRP a786hjs2 SEND\nTo-Path: {BOB}\nFrom-Path: {ALICE}\nContent-Type: text/plain\n\nhi\n-------a786hjs2$\n"), 400),
        // malformed header
        (format!("MSRP a786hjs2 SEND\nTo-Path: {BOB}\nFrom-Path: {ALICE}\nByte-Range: 5-1/1\n-------a786hjs2$\n"), 400),
        // chunk beyond its total
        (format!("MSRP a786hjs2 SEND\nTo-Path: {BOB}\nFrom-Path: {ALICE}\nMessage-ID: 87652491\nByte-Range: 1-*/2\nContent-Type: text/plain\n\nhello\n-------a786hjs2$\n"), 400),
        // a total over the limit
        (format!("MSRP a786hjs2 SEND\nTo-Path: {BOB}\nFrom-Path: {ALICE}\nMessage-ID: 87652491\nByte-Range: 1-*/999999999\nContent-Type: text/plain\n\nhello\n-------a786hjs2+\n"), 413),
    ];
    for (input, code) in cases {
        let (_, out, events) = bob_answers(&input);
        let r = responses(&out);
        assert_eq!(r.len(), 1, "{input}");
        assert_eq!(r[0].code, code, "{input}");
        assert_eq!(r[0].tid.as_str(), "a786hjs2");
        assert_eq!(r[0].headers.to_path(), Some(&vec![uri(ALICE)]));
        assert_eq!(r[0].headers.from_path(), Some(&vec![uri(BOB)]));
        assert!(events
            .iter()
            .any(|e| matches!(e, Event::Refused { code: c, .. } if *c == code)));
    }
    // The 400 says what was wrong.
    let (_, out, _) = bob_answers(&format!(
        "MSRP a786hjs2 SEND\nTo-Path: {BOB}\nFrom-Path: {ALICE}\nByte-Range: 5-1/1\n-------a786hjs2$\n"
    ));
    assert_eq!(
        responses(&out)[0].comment.as_deref(),
        Some("Bad Request: invalid Byte-Range header")
    );
}

#[test]
fn an_oversized_message_gets_413_and_so_do_its_later_chunks() {
    let mut p = Pair::new(
        Config {
            chunk_size: 100,
            ..Config::default()
        },
        Config {
            max_message_size: 150,
            ..Config::default()
        },
    );
    let id =
        p.a.send(Outgoing::new("text/plain", vec![b'a'; 300]))
            .unwrap();
    // The declared total is over the limit, so the first chunk is refused already, and the
    // others, which Alice wrote before any answer came, as well.
    p.drive();
    let codes: Vec<u16> = responses(&p.b_to_a).iter().map(|r| r.code).collect();
    assert_eq!(codes, [413, 413, 413]);
    assert!(p.messages().is_empty());
    assert_eq!(
        p.a_events,
        vec![Event::Failed {
            message_id: id,
            failure: Failure::Response {
                code: 413,
                comment: Some("Stop Sending Message".into())
            }
        }]
    );
}

#[test]
fn an_error_response_stops_the_rest_of_the_message() {
    let mut a = session(
        ALICE,
        BOB,
        Config {
            chunk_size: 100,
            ..Config::default()
        },
    );
    let now = Instant::now();
    let id = a
        .send(Outgoing::new("text/plain", vec![b'a'; 300]))
        .unwrap();
    let first = a.poll_transmit(now).unwrap();
    let tid = requests(&first)[0].tid.clone();
    let resp = Response::new(tid, 413, None, vec![uri(ALICE)], vec![uri(BOB)]);
    a.handle_data(now, &Frame::Response(resp).to_bytes());
    assert_eq!(
        a.poll_transmit(now),
        None,
        "the remaining chunks are not sent"
    );
    assert!(matches!(a.poll_event(), Some(Event::Failed { message_id, .. }) if message_id == id));
}

#[test]
fn failure_report_no_and_partial_limit_the_responses() {
    let send = |fr: &str, ct: &str| {
        format!(
            "MSRP di2fs53v SEND\nTo-Path: {BOB}\nFrom-Path: {ALICE}\nMessage-ID: 6480C096\nByte-Range: 1-2/2\nFailure-Report: {fr}\nContent-Type: {ct}\n\nhi\n-------di2fs53v$\n"
        )
    };
    let (_, out, events) = bob_answers(&send("no", "text/plain"));
    assert!(out.is_empty());
    assert!(matches!(events[0], Event::Message(_)));
    let (_, out, _) = bob_answers(&send("no", "image/png"));
    assert!(out.is_empty(), "not even an error response");
    let (_, out, _) = bob_answers(&send("partial", "text/plain"));
    assert!(out.is_empty(), "no 200 with partial");
    let (_, out, _) = bob_answers(&send("partial", "image/png"));
    assert_eq!(responses(&out)[0].code, 415);
}

#[test]
fn failure_report_partial_counts_silence_as_success() {
    let mut p = Pair::new(Config::default(), Config::default());
    let mut m = text("hi");
    m.failure_report = FailureReport::Partial;
    let id = p.a.send(m).unwrap();
    p.drive();
    assert!(p.b_to_a.is_empty());
    assert!(p.a_events.is_empty());
    p.advance(Duration::from_secs(30));
    assert_eq!(p.a_events, vec![Event::Delivered { message_id: id }]);
}

#[test]
fn success_report_yes_brings_a_report_back_to_the_sender() {
    let mut p = Pair::new(Config::default(), Config::default());
    let mut m = text("What man art thou ...?");
    m.success_report = true;
    m.message_id = MessageId::new("6187CF9B");
    let id = p.a.send(m).unwrap();
    p.drive();
    let report = requests(&p.b_to_a);
    assert_eq!(report.len(), 1);
    let r = &report[0];
    assert_eq!(r.method, Method::Report);
    assert_eq!(r.headers.to_path(), Some(&vec![uri(ALICE)]));
    assert_eq!(r.headers.from_path(), Some(&vec![uri(BOB)]));
    assert_eq!(r.headers.byte_range().unwrap().to_string(), "1-22/22");
    assert_eq!(r.headers.status().unwrap().to_string(), "000 200 OK");
    assert!(p.messages()[0].reported);
    assert_eq!(
        p.a_events,
        vec![
            Event::Delivered {
                message_id: id.clone()
            },
            Event::Report {
                message_id: id,
                status: Status::new(200, "OK"),
                byte_range: ByteRange {
                    start: 1,
                    end: Some(22),
                    total: Some(22)
                }
            }
        ]
    );
    // REPORTs are not answered.
    assert_eq!(responses(&p.a_to_b).len(), 0);
}

#[test]
fn a_failure_report_is_an_event_for_its_message() {
    let mut a = session(ALICE, BOB, Config::default());
    let now = Instant::now();
    let id = a.send(text("hi")).unwrap();
    while a.poll_transmit(now).is_some() {}
    let report = format!(
        "MSRP hx74g336 REPORT\nTo-Path: {ALICE}\nFrom-Path: {BOB}\nMessage-ID: {id}\nByte-Range: 1-2/2\nStatus: 000 408 Request Timeout\n-------hx74g336$\n"
    );
    a.handle_data(now, report.replace('\n', "\r\n").as_bytes());
    let Some(Event::Report {
        message_id, status, ..
    }) = a.poll_event()
    else {
        panic!()
    };
    assert_eq!((message_id, status.code), (id, 408));
    // A REPORT about a message we never sent is dropped.
    let stray = report.replace(message_id_of(&report), "zzzzzzzz");
    a.handle_data(now, stray.replace('\n', "\r\n").as_bytes());
    assert_eq!(a.poll_event(), None);
    assert_eq!(a.poll_transmit(now), None, "REPORTs are not answered");
}

fn message_id_of(report: &str) -> &str {
    report
        .lines()
        .find_map(|l| l.strip_prefix("Message-ID: "))
        .unwrap()
}

#[test]
fn a_missing_response_fails_the_message_after_30_seconds() {
    let mut a = session(ALICE, BOB, Config::default());
    let t0 = Instant::now();
    let id = a.send(text("hello?")).unwrap();
    assert!(a.poll_transmit(t0).is_some());
    assert_eq!(a.poll_timeout(), Some(t0 + Duration::from_secs(30)));
    a.handle_timeout(t0 + Duration::from_secs(29));
    assert_eq!(a.poll_event(), None);
    a.handle_timeout(t0 + Duration::from_secs(30));
    assert_eq!(
        a.poll_event(),
        Some(Event::Failed {
            message_id: id,
            failure: Failure::Timeout
        })
    );
    assert_eq!(a.poll_timeout(), None);
    assert!(a.is_idle());
}

#[test]
fn a_late_response_after_the_timeout_is_ignored() {
    let mut a = session(ALICE, BOB, Config::default());
    let t0 = Instant::now();
    a.send(text("hello?")).unwrap();
    let sent = a.poll_transmit(t0).unwrap();
    a.handle_timeout(t0 + Duration::from_secs(31));
    assert!(matches!(a.poll_event(), Some(Event::Failed { .. })));
    let tid = requests(&sent)[0].tid.clone();
    let resp = Response::new(tid, 200, Some("OK"), vec![uri(ALICE)], vec![uri(BOB)]);
    a.handle_data(t0, &Frame::Response(resp).to_bytes());
    assert_eq!(a.poll_event(), None);
}

#[test]
fn aborting_mid_chunk_ends_it_with_hash_and_the_peer_drops_the_message() {
    let config = Config {
        write_unit: 100,
        ..Config::default()
    };
    let mut p = Pair::new(config, Config::default());
    let id =
        p.a.send(Outgoing::new("text/plain", vec![b'z'; 1000]))
            .unwrap();
    let first = p.a.poll_transmit(p.now).unwrap();
    p.a_to_b.extend_from_slice(&first);
    p.b.handle_data(p.now, &first);
    assert!(p.a.abort(&id));
    p.drive();
    let sent = requests(&p.a_to_b);
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].flag, Flag::Abort);
    assert!(p.b_events.contains(&Event::Aborted {
        message_id: id.clone()
    }));
    assert!(p.messages().is_empty());
    assert!(!p.a.abort(&id));
    assert!(p.b.incoming.is_empty());
}

#[test]
fn a_broken_stream_is_reported_and_the_session_stops() {
    let mut b = session(BOB, ALICE, Config::default());
    let now = Instant::now();
    b.handle_data(now, b"GET / HTTP/1.1\r\n\r\n");
    assert!(matches!(
        b.poll_event(),
        Some(Event::StreamError(StreamError::NotMsrp))
    ));
    assert_eq!(b.send(text("x")), Err(SendError::Closed));
    b.handle_data(now, b"MSRP abcd1234 SEND\r\n");
    assert_eq!(b.poll_event(), None);
}

#[test]
fn the_stanza_id_becomes_the_transaction_id_unless_the_body_contains_its_end_line() {
    let mut a = session(ALICE, BOB, Config::default());
    let now = Instant::now();
    let mut m = text("plain");
    m.transaction_id = TransactionId::new("ms53b7z9");
    a.send(m).unwrap();
    assert_eq!(
        requests(&a.poll_transmit(now).unwrap())[0].tid.as_str(),
        "ms53b7z9"
    );
    let mut m = text("quoting:\r\n-------bf9m36d5$\r\n");
    m.transaction_id = TransactionId::new("bf9m36d5");
    a.send(m).unwrap();
    let sent = a.poll_transmit(now).unwrap();
    let r = &requests(&sent)[0];
    assert_ne!(r.tid.as_str(), "bf9m36d5");
    assert_eq!(
        &r.body.as_ref().unwrap()[..],
        b"quoting:\r\n-------bf9m36d5$\r\n"
    );
}

#[test]
fn bind_sends_an_empty_send_that_is_answered_but_not_delivered() {
    let mut p = Pair::new(Config::default(), Config::default());
    let id = p.a.bind().unwrap();
    p.drive();
    let sent = requests(&p.a_to_b);
    assert_eq!(sent[0].body, None);
    assert_eq!(sent[0].headers.message_id(), Some(&id));
    assert_eq!(sent[0].headers.byte_range().unwrap().to_string(), "1-0/0");
    assert_eq!(responses(&p.b_to_a)[0].code, 200);
    assert!(p.messages().is_empty());
    assert!(p.a_events.is_empty(), "{:?}", p.a_events);
    assert!(p.a.is_idle());
    // Nothing to bind with when a message is queued already.
    p.a.send(text("x")).unwrap();
    assert_eq!(p.a.bind(), None);
}

#[test]
fn a_hundred_kib_message_crosses_in_chunks() {
    let mut p = Pair::new(
        Config {
            chunk_size: 4096,
            ..Config::default()
        },
        Config::default(),
    );
    let body: Vec<u8> = (0..100 * 1024u32).map(|i| (i * 7 % 256) as u8).collect();
    let mut m = Outgoing::new("application/octet-stream", body.clone());
    m.success_report = true;
    let mut b_config_types = p.b.config.accept_types.clone();
    b_config_types.push("application/*".into());
    p.b.config.accept_types = b_config_types;
    let id = p.a.send(m).unwrap();
    p.drive();
    assert_eq!(requests(&p.a_to_b).len(), 25);
    assert_eq!(&p.messages()[0].body[..], &body[..]);
    assert!(p.a_events.contains(&Event::Delivered {
        message_id: id.clone()
    }));
    assert!(p
        .a_events
        .iter()
        .any(|e| matches!(e, Event::Report { message_id, .. } if *message_id == id)));
}

#[test]
fn duplicate_message_ids_and_bad_content_types_are_refused() {
    let mut a = session(ALICE, BOB, Config::default());
    let mut m = text("one");
    m.message_id = MessageId::new("same-id");
    a.send(m.clone()).unwrap();
    assert_eq!(a.send(m), Err(SendError::DuplicateMessageId));
    assert_eq!(
        a.send(Outgoing::new("not a type", "x")),
        Err(SendError::ContentType)
    );
}

#[test]
fn responses_wait_for_a_chunk_boundary() {
    let config = Config {
        chunk_size: 100_000,
        write_unit: 1000,
        ..Config::default()
    };
    let mut p = Pair::new(config.clone(), config);
    let big = vec![b'y'; 3000];
    let big_id = p.a.send(Outgoing::new("text/plain", big.clone())).unwrap();
    let first = p.a.poll_transmit(p.now).unwrap();
    p.a_to_b.extend_from_slice(&first);
    p.b.handle_data(p.now, &first);
    // Bob talks while Alice is inside a chunk: her 200 must not land inside the body.
    p.b.send(text("a word")).unwrap();
    let line = p.b.poll_transmit(p.now).unwrap();
    p.b_to_a.extend_from_slice(&line);
    p.a.handle_data(p.now, &line);
    p.drive();
    let from_alice = decode(&p.a_to_b);
    assert!(
        from_alice.iter().all(|d| matches!(d, Decoded::Frame(_))),
        "{from_alice:?}"
    );
    assert_eq!(responses(&p.a_to_b).len(), 1);
    assert_eq!(&p.messages()[0].body[..], &big[..]);
    assert!(p
        .a_events
        .iter()
        .any(|e| matches!(e, Event::Message(m) if &m.body[..] == b"a word")));
    assert!(p
        .a_events
        .contains(&Event::Delivered { message_id: big_id }));
}

#[test]
fn a_stalled_incoming_message_expires() {
    let mut b = session(BOB, ALICE, Config::default());
    let t0 = Instant::now();
    let chunk = format!(
        "MSRP dkei38sd SEND\r\nTo-Path: {BOB}\r\nFrom-Path: {ALICE}\r\nMessage-ID: 4564dpWd\r\nByte-Range: 1-4/8\r\nContent-Type: text/plain\r\n\r\nabcd\r\n-------dkei38sd+\r\n"
    );
    b.handle_data(t0, chunk.as_bytes());
    assert_eq!(b.poll_timeout(), Some(t0 + Duration::from_secs(120)));
    b.handle_timeout(t0 + Duration::from_secs(119));
    assert_eq!(b.incoming.len(), 1);
    b.handle_timeout(t0 + Duration::from_secs(120));
    assert!(b.incoming.is_empty());
    assert_eq!(
        b.poll_event(),
        Some(Event::Expired {
            message_id: MessageId::new("4564dpWd").unwrap()
        })
    );
    assert_eq!(b.poll_timeout(), None);
}

mod fuzz {
    use super::*;
    use proptest::prelude::*;

    fn chunk() -> impl Strategy<Value = String> {
        (
            "[a-z0-9]{4,8}",
            prop_oneof![
                Just("m1m1".to_string()),
                Just("m2m2".to_string()),
                Just("".to_string())
            ],
            (
                1u64..40,
                prop_oneof![Just(None), (0u64..40).prop_map(Some)],
                prop_oneof![Just(None), (0u64..60).prop_map(Some)],
            ),
            "[a-z]{0,12}",
            prop_oneof![Just('$'), Just('+'), Just('#')],
            prop_oneof![Just("SEND"), Just("REPORT"), Just("FOO")],
            any::<bool>(),
        )
            .prop_map(
                |(tid, mid, (start, end, total), body, flag, method, with_body)| {
                    let star =
                        |v: Option<u64>| v.map(|v| v.to_string()).unwrap_or_else(|| "*".into());
                    let mut s =
                        format!("MSRP {tid} {method}\r\nTo-Path: {BOB}\r\nFrom-Path: {ALICE}\r\n");
                    if !mid.is_empty() {
                        s += &format!("Message-ID: {mid}\r\n");
                    }
                    s += &format!("Byte-Range: {start}-{}/{}\r\n", star(end), star(total));
                    if method == "REPORT" {
                        s += "Status: 000 200 OK\r\n";
                    }
                    if with_body {
                        s += &format!("Content-Type: text/plain\r\n\r\n{body}\r\n");
                    }
                    s + &format!("-------{tid}{flag}\r\n")
                },
            )
    }

    proptest! {
        #[test]
        fn any_sequence_of_chunks_is_answered_without_panic(chunks in proptest::collection::vec(chunk(), 0..20)) {
            let mut b = session(BOB, ALICE, Config { max_message_size: 50, max_incomplete: 2, ..Config::default() });
            let now = Instant::now();
            for c in &chunks {
                b.handle_data(now, c.as_bytes());
            }
            let mut out = Vec::new();
            while let Some(bytes) = b.poll_transmit(now) {
                out.extend_from_slice(&bytes);
            }
            // Whatever came in, what goes out is well-formed MSRP.
            for d in decode(&out) {
                prop_assert!(matches!(d, Decoded::Frame(_)));
            }
            prop_assert!(b.incoming.len() <= 2);
            b.handle_timeout(now + Duration::from_secs(3600));
            prop_assert!(b.incoming.is_empty());
        }

        #[test]
        fn random_bytes_into_a_session_never_panic(data in proptest::collection::vec(any::<u8>(), 0..1000)) {
            let mut b = session(BOB, ALICE, Config::default());
            let now = Instant::now();
            b.handle_data(now, &data);
            while b.poll_transmit(now).is_some() {}
            while b.poll_event().is_some() {}
        }

        #[test]
        fn sent_messages_arrive_whole(
            bodies in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..3000), 1..5),
            chunk_size in 1usize..2000,
            write_unit in 1usize..2000,
        ) {
            let config = Config { chunk_size, write_unit, accept_types: vec!["*".into()], ..Config::default() };
            let mut p = Pair::new(config.clone(), config);
            for b in &bodies {
                p.a.send(Outgoing::new("application/octet-stream", b.clone())).unwrap();
            }
            p.drive();
            let mut got: Vec<Vec<u8>> = p.messages().iter().map(|m| m.body.to_vec()).collect();
            let mut want: Vec<Vec<u8>> = bodies.iter().filter(|b| !b.is_empty()).cloned().collect();
            got.sort();
            want.sort();
            prop_assert_eq!(got, want);
            prop_assert!(p.a.is_idle());
        }
    }
}

#[test]
fn aborting_between_chunks_sends_an_empty_hash_chunk() {
    let config = Config {
        chunk_size: 100,
        ..Config::default()
    };
    let mut p = Pair::new(config, Config::default());
    let id =
        p.a.send(Outgoing::new("text/plain", vec![b'q'; 300]))
            .unwrap();
    let first = p.a.poll_transmit(p.now).unwrap();
    p.a_to_b.extend_from_slice(&first);
    p.b.handle_data(p.now, &first);
    assert_eq!(p.b.incoming.len(), 1);
    assert!(p.a.abort(&id));
    p.drive();
    let sent = requests(&p.a_to_b);
    assert_eq!(sent.len(), 2);
    assert_eq!(sent[1].flag, Flag::Abort);
    assert_eq!(
        sent[1].headers.byte_range().unwrap().to_string(),
        "101-100/300"
    );
    assert!(p.b_events.contains(&Event::Aborted { message_id: id }));
    assert!(p.b.incoming.is_empty());
    assert!(p.a_events.is_empty(), "{:?}", p.a_events);
}

#[test]
fn a_byte_range_that_miscounts_the_body_is_still_delivered() {
    // RFC 4975 section 7.1 / RFC 7573 example 6: the Byte-Range counts more than the body.
    let (_, out, events) = bob_answers(&format!(
        "MSRP a786hjs2 SEND\nTo-Path: {BOB}\nFrom-Path: {ALICE}\nMessage-ID: 87652491\nByte-Range: 1-25/25\nContent-Type: text/plain\n\nHey Bob, are you there?\n-------a786hjs2$\n"
    ));
    assert_eq!(responses(&out)[0].code, 200);
    let Some(Event::Message(m)) = events.first() else {
        panic!("{events:?}")
    };
    assert_eq!(&m.body[..], b"Hey Bob, are you there?");
}

fn deferring() -> Config {
    Config {
        defer_response: Some(Duration::from_secs(10)),
        ..Config::default()
    }
}

#[test]
fn a_deferred_message_is_answered_only_when_the_application_says_so() {
    let mut p = Pair::new(Config::default(), deferring());
    let mut m = text("What man art thou ...?");
    m.success_report = true;
    let id = p.a.send(m).unwrap();
    p.drive();
    // Bob has the message, Alice has neither a response nor a REPORT yet.
    assert_eq!(p.messages().len(), 1);
    assert_eq!(p.b_to_a, b"");
    assert!(p.a_events.is_empty());
    assert!(!p.b.is_idle());
    assert_eq!(p.b.poll_timeout(), Some(p.now + Duration::from_secs(10)));
    p.advance(Duration::from_secs(3));
    assert_eq!(p.b_to_a, b"");
    assert!(p.b.answer(&id, 200, "OK"));
    p.drive();
    let r = responses(&p.b_to_a);
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].code, 200);
    assert_eq!(requests(&p.b_to_a)[0].method, Method::Report);
    assert!(matches!(&p.a_events[0], Event::Delivered { message_id } if *message_id == id));
    assert!(matches!(&p.a_events[1], Event::Report { status, .. } if status.code == 200));
    // Once only.
    assert!(!p.b.answer(&id, 200, "OK"));
    assert!(p.b.is_idle());
    assert_eq!(p.b.poll_timeout(), None);
}

#[test]
fn a_deferred_message_refused_gets_the_error_and_no_report() {
    let mut p = Pair::new(Config::default(), deferring());
    let mut m = text("Deny thy father");
    m.success_report = true;
    let id = p.a.send(m).unwrap();
    p.drive();
    assert!(p.b.answer(&id, 403, "XMPP server unreachable"));
    p.drive();
    let r = responses(&p.b_to_a);
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].code, 403);
    assert!(requests(&p.b_to_a).is_empty());
    assert_eq!(
        p.a_events,
        vec![Event::Failed {
            message_id: id,
            failure: Failure::Response {
                code: 403,
                comment: Some("XMPP server unreachable".into())
            }
        }]
    );
}

#[test]
fn a_deferred_message_nobody_answers_gets_403_at_the_timeout() {
    let mut p = Pair::new(Config::default(), deferring());
    let id = p.a.send(text("Wherefore art thou")).unwrap();
    p.drive();
    p.advance(Duration::from_millis(9_999));
    assert_eq!(p.b_to_a, b"");
    p.advance(Duration::from_millis(1));
    let r = responses(&p.b_to_a);
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].code, 403);
    assert!(matches!(&p.a_events[..], [Event::Failed { message_id, .. }] if *message_id == id));
    // The late answer finds nothing.
    assert!(!p.b.answer(&id, 200, "OK"));
    assert!(p.b.is_idle());
}

#[test]
fn only_the_final_chunk_of_a_deferred_message_waits_and_answers_keep_their_order() {
    let config = Config {
        chunk_size: 1000,
        ..Config::default()
    };
    let mut p = Pair::new(config, deferring());
    let body: Vec<u8> = (0..2500u32).map(|i| (i % 251) as u8).collect();
    let big = p.a.send(Outgoing::new("text/plain", body)).unwrap();
    let small = p.a.send(text("and then")).unwrap();
    p.drive();
    let sent = requests(&p.a_to_b);
    assert_eq!(sent.len(), 4);
    // The chunks that do not complete a message are answered at once; the final chunk
    // of the big one and the small one are held.
    let finals: Vec<TransactionId> = sent
        .iter()
        .filter(|r| r.flag == Flag::End)
        .map(|r| r.tid.clone())
        .collect();
    assert_eq!(finals.len(), 2);
    let r = responses(&p.b_to_a);
    assert_eq!(r.len(), 2);
    assert!(r.iter().all(|r| !finals.contains(&r.tid) && r.code == 200));
    let got: Vec<MessageId> = p.messages().iter().map(|m| m.message_id.clone()).collect();
    assert_eq!(got.len(), 2);
    assert!(got.contains(&big) && got.contains(&small));
    assert!(p.b.answer(&small, 200, "OK"));
    assert!(p.b.answer(&big, 200, "OK"));
    p.drive();
    // The answers go in the order they are given.
    let r = responses(&p.b_to_a);
    assert_eq!(r.len(), 4);
    let small_tid = sent
        .iter()
        .find(|q| q.headers.message_id() == Some(&small))
        .map(|q| q.tid.clone());
    assert_eq!(Some(r[2].tid.clone()), small_tid);
    assert!(finals.contains(&r[3].tid));
    assert_eq!(
        p.a_events,
        vec![
            Event::Delivered { message_id: small },
            Event::Delivered { message_id: big }
        ]
    );
}

#[test]
fn failure_report_no_is_never_answered_even_when_deferred() {
    let mut p = Pair::new(Config::default(), deferring());
    let mut m = text("silence");
    m.failure_report = FailureReport::No;
    let id = p.a.send(m).unwrap();
    p.drive();
    assert!(p.b.answer(&id, 403, "XMPP server unreachable"));
    p.drive();
    assert_eq!(p.b_to_a, b"");
}
