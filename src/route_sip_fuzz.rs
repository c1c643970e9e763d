//! Fuzzing of the interworking cores from the SIP side, as `gateway::route_sip` feeds
//! them: INVITE/ACK/BYE/CANCEL to `chat::core`, SUBSCRIBE/NOTIFY to `presence::core`.
//! proptest (a fixed number of cases) plus `tests/corpus/sip-requests` (one request per
//! file).
//!
//! What must hold: nothing panics; every SUBSCRIBE, NOTIFY, INVITE and BYE gets one
//! response, for its own transaction (Call-ID and CSeq copied), that parses again; a
//! stanza goes only to a local user, from a JID at the gateway; nothing is left once
//! every timer has run.

use std::sync::Arc;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::sample::Index;
use rsipstack::sip::{Method, Request, SipMessage};
use xmpp_parsers::jid::Jid;

use crate::address::AddressMap;
use crate::chat::core::{Action as ChatAction, ChatCore, ChatSettings};
use crate::corpus;
use crate::presence::core::{Action as PresenceAction, PresenceCore, PresenceSettings, SipResult};
use crate::sip::message::{self, parse, Framing, Parsed};

const COMPONENT: &str = "sip.example.com";
const XMPP_DOMAINS: [&str; 2] = ["example.com", "chat.example.org"];

fn map() -> AddressMap {
    AddressMap::new(
        COMPONENT,
        &XMPP_DOMAINS.map(String::from),
        &["example.com".into(), "example.org".into()],
        None,
    )
    .expect("test map")
}

fn local_user(j: Option<&Jid>) -> bool {
    j.is_some_and(|j| j.node().is_some() && XMPP_DOMAINS.contains(&j.domain().as_str()))
}

fn at_gateway(j: Option<&Jid>) -> bool {
    j.is_some_and(|j| j.domain().as_str() == COMPONENT)
}

fn to_local_from_gateway(m: &xmpp_parsers::message::Message) -> bool {
    local_user(m.to.as_ref()) && at_gateway(m.from.as_ref())
}

fn header<'a>(text: &'a str, name: &str) -> Option<&'a str> {
    text.split("\r\n").find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// A response stox gives must be for the request's transaction and must parse again.
fn check_response(req: &Request, resp: rsipstack::sip::Response) -> Result<(), String> {
    let code = resp.status_code.code();
    if !(100..700).contains(&code) {
        return Err(format!("status {code}"));
    }
    let mut msg = SipMessage::Response(resp);
    let wire = message::to_bytes(&mut msg);
    let back = parse(&wire, Framing::Datagram, usize::MAX).map_err(|e| {
        format!(
            "the response does not parse: {e:?}\n{}",
            String::from_utf8_lossy(&wire)
        )
    })?;
    let SipMessage::Response(_) = back.message else {
        return Err("the response parses as a request".into());
    };
    let (req_text, resp_text) = (req.to_string(), String::from_utf8_lossy(&wire).into_owned());
    for h in ["Call-ID", "CSeq"] {
        let (a, b) = (header(&req_text, h), header(&resp_text, h));
        let short = if h == "Call-ID" { "i" } else { h };
        let a = a.or_else(|| header(&req_text, short));
        let b = b.or_else(|| header(&resp_text, short));
        if a != b {
            return Err(format!("{h} {a:?} answered with {b:?}"));
        }
    }
    Ok(())
}

fn check_requests(requests: &[Request]) -> Result<(), String> {
    let m = Arc::new(map());
    let mut chat = ChatCore::new(
        ChatSettings {
            msrp_host: "127.0.0.1".into(),
            contact_host: "127.0.0.1:5060".into(),
            max_sessions: 8,
            max_per_user: 4,
            ..ChatSettings::default()
        },
        m.clone(),
    );
    let mut presence = PresenceCore::new(
        PresenceSettings {
            contact: "sip:stox@127.0.0.1:5060".into(),
            max_per_user: 4,
            max_total: 8,
            ..PresenceSettings::default()
        },
        m,
    );
    let t0 = Instant::now();
    let ms0: u64 = 1_800_000_000_000;
    for (i, req) in requests.iter().enumerate() {
        let now = t0 + Duration::from_millis(i as u64 * 50);
        let now_ms = ms0 + i as u64 * 50;
        match req.method {
            Method::Invite | Method::Ack | Method::Bye | Method::Cancel => {
                let answer = chat.handle_sip_request(now, req);
                match (
                    answer,
                    req.method == Method::Invite || req.method == Method::Bye,
                ) {
                    (Some(r), _) => check_response(req, r)?,
                    (None, true) => return Err(format!("{} got no response", req.method)),
                    (None, false) => {}
                }
            }
            Method::Subscribe | Method::Notify => match presence.handle_sip_request(now_ms, req) {
                Some(r) => check_response(req, r)?,
                None => return Err(format!("{} got no response", req.method)),
            },
            _ => {}
        }
        drive(&mut chat, &mut presence, now, now_ms)?;
    }
    for step in 1..=4u64 {
        let (at, at_ms) = (
            t0 + Duration::from_secs(25_000 * step),
            ms0 + 25_000_000 * step,
        );
        chat.handle_timeout(at);
        presence.handle_timeout(at_ms);
        drive(&mut chat, &mut presence, at, at_ms)?;
    }
    if chat.sessions() != 0 {
        return Err(format!(
            "{} chat sessions left after every timer",
            chat.sessions()
        ));
    }
    Ok(())
}

fn drive(
    chat: &mut ChatCore,
    presence: &mut PresenceCore,
    now: Instant,
    now_ms: u64,
) -> Result<(), String> {
    for _ in 0..16 {
        let mut quiet = true;
        let mut failed_msrp = Vec::new();
        while let Some(a) = chat.poll_action() {
            quiet = false;
            match a {
                ChatAction::Stanza(s)
                | ChatAction::Deliver {
                    stanza: Some(s), ..
                } if !to_local_from_gateway(&s) => {
                    return Err(format!("chat stanza {:?} -> {:?}", s.from, s.to));
                }
                // The MSRP side never comes up.
                ChatAction::MsrpExpect { id, .. } | ChatAction::MsrpConnect { id, .. } => {
                    failed_msrp.push(id)
                }
                _ => {}
            }
        }
        for id in failed_msrp {
            chat.handle_msrp_failed(now, id);
        }
        let mut failed = Vec::new();
        while let Some(a) = presence.poll_action() {
            quiet = false;
            match a {
                PresenceAction::Stanza(p)
                    if !local_user(p.to.as_ref()) || !at_gateway(p.from.as_ref()) =>
                {
                    return Err(format!("presence {:?} -> {:?}", p.from, p.to));
                }
                PresenceAction::Sip { token, .. } => failed.push(token),
                _ => {}
            }
        }
        for token in failed {
            presence.handle_sip_result(now_ms, token, SipResult::Failed);
        }
        if quiet {
            break;
        }
    }
    Ok(())
}

fn with_length(head: &str, body: &str) -> String {
    format!("{head}Content-Length: {}\r\n\r\n{body}", body.len())
}

const SDP: &str = "v=0\r\no=- 1 1 IN IP4 127.0.0.2\r\ns=-\r\nc=IN IP4 127.0.0.2\r\nt=0 0\r\nm=message 7313 TCP/MSRP *\r\na=accept-types:text/plain message/cpim\r\na=path:msrp://127.0.0.2:7313/ansp71weztas;tcp\r\n";

const PIDF: &str = "<?xml version='1.0'?><presence xmlns='urn:ietf:params:xml:ns:pidf' entity='pres:romeo@example.net'><tuple id='t'><status><basic>open</basic></status></tuple></presence>";

/// One request of romeo@example.net to juliet@example.com, by kind.
fn seed(kind: usize, call: u8, cseq: u8, to_tag: bool, to: &str) -> String {
    let tag = if to_tag { ";tag=st1" } else { "" };
    let common = |method: &str, uri: &str| {
        format!(
            "{method} {uri} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.2:5070;branch=z9hG4bK{call}x{cseq}\r\nMax-Forwards: 70\r\n\
             From: <sip:romeo@example.net>;tag=r{call}\r\nTo: <{to}>{tag}\r\nCall-ID: c{call}@example.net\r\nCSeq: {cseq} {method}\r\n\
             Contact: <sip:romeo@127.0.0.2:5070>\r\n"
        )
    };
    match kind {
        0 => with_length(&(common("INVITE", to) + "Content-Type: application/sdp\r\n"), SDP),
        1 => with_length(&common("BYE", "sip:stox@127.0.0.1:5060"), ""),
        2 => with_length(&common("ACK", "sip:stox@127.0.0.1:5060"), ""),
        3 => with_length(&common("CANCEL", to), ""),
        4 => with_length(&(common("SUBSCRIBE", to) + "Event: presence\r\nAccept: application/pidf+xml\r\nExpires: 600\r\n"), ""),
        5 => with_length(&(common("SUBSCRIBE", to) + "Event: presence\r\nExpires: 0\r\n"), ""),
        _ => with_length(
            &(common("NOTIFY", "sip:stox@127.0.0.1:5060")
                + "Event: presence\r\nSubscription-State: active;expires=600\r\nContent-Type: application/pidf+xml\r\n"),
            PIDF,
        ),
    }
}

fn request() -> impl Strategy<Value = Vec<u8>> {
    (
        0usize..7,
        0u8..3,
        1u8..4,
        any::<bool>(),
        prop::sample::select(vec![
            "sip:juliet@example.com",
            "sip:juliet@example.org",
            "sip:nurse@example.com;gr=x",
            "sip:nobody@evil.example",
            "sip:juliet%40example.com@example.com",
            "sips:juliet@example.com",
            "tel:+15551234",
        ]),
        proptest::collection::vec((any::<u8>(), any::<Index>(), 0u8..4), 0..4),
    )
        .prop_map(|(kind, call, cseq, to_tag, to, edits)| {
            let mut b = seed(kind, call, cseq, to_tag, to).into_bytes();
            for (byte, at, op) in edits {
                let i = at.index(b.len() + 1);
                match op {
                    0 if i < b.len() => b[i] = byte,
                    1 => b.insert(i, byte),
                    2 if i < b.len() => {
                        b.remove(i);
                    }
                    _ => {}
                }
            }
            b
        })
}

fn parse_requests(inputs: &[Vec<u8>]) -> Vec<Request> {
    inputs
        .iter()
        .filter_map(|b| match parse(b, Framing::Datagram, 65535) {
            Ok(Parsed {
                message: SipMessage::Request(r),
                ..
            }) => Some(r),
            _ => None,
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn any_sip_request_sequence_is_answered_and_stays_in_the_mapping(
        inputs in proptest::collection::vec(request(), 1..10),
    ) {
        check_requests(&parse_requests(&inputs)).map_err(TestCaseError::fail)?;
    }
}

#[test]
fn corpus_sip_requests() {
    corpus::replay("sip-requests", |b| {
        let requests = parse_requests(&[b.to_vec()]);
        if requests.is_empty() {
            // Not a request stox parses: the framer's own corpus covers it.
            return Ok(());
        }
        check_requests(&requests)
    });
}

#[test]
fn the_seeds_parse_and_are_answered() {
    let all: Vec<Vec<u8>> = (0..7)
        .map(|k| seed(k, 1, 1, false, "sip:juliet@example.com").into_bytes())
        .collect();
    let requests = parse_requests(&all);
    assert_eq!(requests.len(), 7);
    check_requests(&requests).unwrap();
}
