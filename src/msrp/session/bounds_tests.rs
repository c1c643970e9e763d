//! What a hostile peer can make a session hold (issue 11): reassembly memory follows the
//! bytes received, merging stays cheap however the chunks are sliced, and the responses
//! queued for a peer that does not read them are bounded.

use super::*;
use crate::msrp::frame::{Decoded, Decoder};

const ALICE: &str = "msrp://atlanta.example.com:7654/jshA7weztas;tcp";
const BOB: &str = "msrp://biloxi.example.com:12763/kjhd37s2s20w2a;tcp";

fn bob(config: Config) -> Session {
    Session::with_rng(
        MsrpUri::parse(BOB).unwrap(),
        vec![MsrpUri::parse(ALICE).unwrap()],
        config,
        StdRng::seed_from_u64(11),
    )
}

/// One SEND chunk of `body` at 1-based `start` of a message of `total` bytes.
fn chunk(tid: &str, id: &str, start: usize, total: &str, body: &[u8], flag: char) -> Vec<u8> {
    let end = start + body.len() - 1;
    let mut v = format!(
        "MSRP {tid} SEND\r\nTo-Path: {BOB}\r\nFrom-Path: {ALICE}\r\nMessage-ID: {id}\r\n\
         Byte-Range: {start}-{end}/{total}\r\nContent-Type: text/plain\r\n\r\n"
    )
    .into_bytes();
    v.extend_from_slice(body);
    v.extend_from_slice(format!("\r\n-------{tid}{flag}\r\n").as_bytes());
    v
}

/// Everything Bob writes now, decoded: the response codes.
fn drain_codes(b: &mut Session, now: Instant) -> Vec<u16> {
    let mut out = Vec::new();
    while let Some(bytes) = b.poll_transmit(now) {
        out.extend_from_slice(&bytes);
    }
    let mut d = Decoder::new(Limits::default());
    d.push(&out);
    let mut codes = Vec::new();
    while let Some(f) = d.decode().unwrap() {
        if let Decoded::Frame(Frame::Response(r)) = f {
            codes.push(r.code);
        }
    }
    codes
}

#[test]
fn sixteen_one_byte_chunks_announcing_a_mebibyte_each_hold_sixteen_bytes() {
    let mut b = bob(Config::default());
    let now = Instant::now();
    let total = 1024 * 1024;
    for i in 0..16 {
        let c = chunk(
            &format!("t{i:04}x"),
            &format!("m{i:04}x"),
            total,
            &total.to_string(),
            b"z",
            '+',
        );
        b.handle_data(now, &c);
    }
    assert_eq!(drain_codes(&mut b, now), vec![200; 16]);
    assert_eq!(b.incoming.len(), 16);
    let held: usize = b.incoming.values().map(|m| m.parts.held()).sum();
    assert_eq!(held, 16, "one byte each, not the announced totals");
    assert!(b.incoming_cost() <= 16 * (1 + crate::msrp::reassembly::PIECE_COST));
    // A seventeenth message is beyond max_incomplete.
    b.handle_data(now, &chunk("t0016x", "m0016x", total, "*", b"z", '+'));
    assert_eq!(drain_codes(&mut b, now), vec![413]);
}

#[test]
fn twenty_thousand_one_byte_chunks_in_reverse_order_make_the_message() {
    // Through the decoder and the session (msrp::reassembly's own test takes 100k; here
    // the debug-build parsing of each frame is what takes the time).
    let n = 20_000usize;
    let body: Vec<u8> = (0..n).map(|i| b'a' + (i % 26) as u8).collect();
    let mut b = bob(Config::default());
    let now = Instant::now();
    let mut codes = 0;
    let mut batch = Vec::new();
    for i in (0..n).rev() {
        // The chunk at byte 1 is the last one sent, and carries "$".
        let flag = if i == 0 { '$' } else { '+' };
        batch.extend_from_slice(&chunk(
            &format!("rev{i:06}"),
            "reversed",
            i + 1,
            &n.to_string(),
            &body[i..i + 1],
            flag,
        ));
        if batch.len() > 64 * 1024 || i == 0 {
            b.handle_data(now, &batch);
            batch.clear();
            let c = drain_codes(&mut b, now);
            assert!(c.iter().all(|&c| c == 200), "{c:?}");
            codes += c.len();
            if let Some(m) = b.incoming.values().next() {
                // Always one piece: memory is the bytes so far plus one range.
                assert_eq!(m.parts.pieces(), 1);
                assert_eq!(m.parts.held(), n - i);
            }
        }
    }
    assert_eq!(codes, n);
    let msg = std::iter::from_fn(|| b.poll_event())
        .find_map(|e| match e {
            Event::Message(m) => Some(m),
            _ => None,
        })
        .expect("the message");
    assert_eq!(msg.body.len(), n);
    assert!(msg.body[..] == body[..]);
    assert!(b.incoming.is_empty());
}

#[test]
fn gaps_after_every_byte_run_into_the_reassembly_budget() {
    let config = Config {
        max_incoming_bytes: 10_000,
        ..Config::default()
    };
    let mut b = bob(config);
    let now = Instant::now();
    let mut refused_at = None;
    for i in 0..1000usize {
        b.handle_data(
            now,
            &chunk(&format!("gap{i:06}"), "gappy", 2 * i + 1, "*", b"q", '+'),
        );
        let c = drain_codes(&mut b, now);
        if c == [413] {
            refused_at = Some(i);
            break;
        }
        assert_eq!(c, [200]);
        assert!(b.incoming_cost() <= 10_000);
    }
    // 65 bytes a range: the 154th range is over 10 000.
    let at = refused_at.expect("refused before 1000 ranges");
    assert_eq!(at, 10_000 / (1 + crate::msrp::reassembly::PIECE_COST));
    assert!(b.incoming.is_empty(), "the refused message is dropped");
    // And it stays refused (413 to its later chunks, section 7.1.1).
    b.handle_data(now, &chunk("gzzzx", "gappy", 1, "*", b"q", '+'));
    assert_eq!(drain_codes(&mut b, now), [413]);
    // Another message still goes through.
    b.handle_data(now, &chunk("okokx", "fine", 1, "2", b"ok", '$'));
    assert_eq!(drain_codes(&mut b, now), [200]);
}

#[test]
fn responses_for_a_peer_that_does_not_read_them_stop_the_reading() {
    let config = Config {
        max_queued_bytes: 4096,
        ..Config::default()
    };
    let mut b = bob(config);
    let now = Instant::now();
    let mut fed = 0;
    while b.wants_data() {
        b.handle_data(
            now,
            &chunk(
                &format!("tq{fed:06}"),
                &format!("mq{fed:06}"),
                1,
                "1",
                b"x",
                '$',
            ),
        );
        fed += 1;
        assert!(fed < 1000, "never stops reading");
    }
    // Each response is well under 200 bytes: it stopped within one request of the bound.
    assert!(b.control_bytes >= 4096 && b.control_bytes < 4096 + 200);
    assert_eq!(drain_codes(&mut b, now).len(), fed);
    assert!(b.wants_data());
}

#[test]
fn messages_held_for_the_application_stop_the_reading_at_max_deferred() {
    let config = Config {
        max_deferred: 3,
        defer_response: Some(Duration::from_secs(10)),
        ..Config::default()
    };
    let mut b = bob(config);
    let now = Instant::now();
    for i in 0..3 {
        assert!(b.wants_data());
        b.handle_data(
            now,
            &chunk(
                &format!("td{i:06}"),
                &format!("md{i:06}"),
                1,
                "1",
                b"x",
                '$',
            ),
        );
    }
    assert!(!b.wants_data());
    assert!(b.answer(&MessageId::new("md000000").unwrap(), 200, "OK"));
    assert!(b.wants_data());
}
