//! Fuzzing of the XMPP stanza handlers as the gateway routes to them
//! (`gateway::route_xmpp`): iq -> `service::handle_iq`, `<message type='chat'/>` ->
//! `chat::core`, `<presence/>` -> `presence::core`. proptest, a fixed number of cases per
//! run, plus the corpus in `tests/corpus/xmpp-stanzas` (one stanza sequence per file, one
//! stanza per line).
//!
//! ```text
//!   random and mutated stanzas (JIDs with escapes, IP literals, foreign domains; bodies,
//!   chat states, receipts, disco/ping/version/gateway queries, subscriptions)
//!     -> handlers -> actions; SIP results fail, every timer runs out
//! ```
//!
//! What must hold: nothing panics; every iq get/set gets one result or error, to its
//! sender, with its id; a SIP request goes only to the address the mapping gives for the
//! `to` of a stanza a local user sent; a stanza goes only to a local user or back to the
//! sender; every chat message with a body that a local user sent to a SIP user ends as a
//! pager-mode message or an error back to its sender; nothing is left once the timers ran.

use std::collections::HashSet;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::sample::Index;
use xmpp_parsers::iq::Iq;
use xmpp_parsers::jid::Jid;
use xmpp_parsers::message::{Message, MessageType};
use xmpp_parsers::minidom::Element;
use xmpp_parsers::presence::Presence;

use crate::address::{AddressMap, SipAddress};
use crate::chat::core::{Action as ChatAction, ChatCore, ChatSettings};
use crate::corpus;
use crate::presence::core::{Action as PresenceAction, PresenceCore, PresenceSettings, SipResult};

use super::service;

const COMPONENT: &str = "sip.example.com";
const XMPP_DOMAINS: [&str; 2] = ["example.com", "chat.example.org"];
const SIP_DOMAINS: [&str; 2] = ["example.com", "example.org"];

fn map() -> AddressMap {
    AddressMap::new(
        COMPONENT,
        &XMPP_DOMAINS.map(String::from),
        &SIP_DOMAINS.map(String::from),
        Some("pstn.example.com"),
    )
    .expect("test map")
}

fn at_gateway(j: Option<&Jid>) -> bool {
    j.is_some_and(|j| j.domain().as_str() == COMPONENT)
}

fn is_local_user(j: &Jid) -> bool {
    j.node().is_some() && XMPP_DOMAINS.contains(&j.domain().as_str())
}

/// The SIP address a request went to, as user, host and port.
fn target_of(uri: &str) -> Option<(Option<String>, String, Option<u16>)> {
    SipAddress::parse(uri)
        .ok()
        .map(|a| (a.user, a.host.to_ascii_lowercase(), a.port))
}

/// Feeds `stanzas` to the handlers as `gateway::route_xmpp` does, drives every timer
/// out, and checks the invariants of the module docs.
fn check_stanzas(stanzas: &[Element]) -> Result<(), String> {
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
        m.clone(),
    );
    let t0 = Instant::now();
    let ms0: u64 = 1_800_000_000_000;
    // Where a SIP request may go: the mapping of the `to` of a stanza from a local user.
    let mut allowed = HashSet::new();
    let mut senders: HashSet<Jid> = HashSet::new();
    // Chat messages with a body, from a local user to a SIP user: (id, sender).
    let mut owed: Vec<(String, Jid)> = Vec::new();
    for (i, el) in stanzas.iter().enumerate() {
        let now = t0 + Duration::from_millis(i as u64 * 50);
        let now_ms = ms0 + i as u64 * 50;
        let (from, to) = (el.attr("from"), el.attr("to"));
        let from = from.and_then(|f| Jid::new(f).ok());
        let to = to.and_then(|t| Jid::new(t).ok());
        // The XMPP server routes to the component only what is addressed to its domain.
        if !at_gateway(to.as_ref()) {
            continue;
        }
        if let Some(f) = &from {
            senders.insert(f.clone());
            if is_local_user(f) {
                if let Some(a) = to.as_ref().and_then(|t| m.gateway_jid_to_sip(t).ok()) {
                    allowed.insert((a.user.clone(), a.host.to_ascii_lowercase(), a.port));
                }
            }
        }
        match el.name() {
            "iq" => {
                let Ok(iq) = Iq::try_from(el.clone()) else {
                    continue;
                };
                let (id, wants_answer, iq_from) = match &iq {
                    Iq::Get { id, from, .. } | Iq::Set { id, from, .. } => {
                        (id.clone(), true, from.clone())
                    }
                    Iq::Result { id, from, .. } | Iq::Error { id, from, .. } => {
                        (id.clone(), false, from.clone())
                    }
                };
                let answer = service::handle_iq(iq, &m);
                match (answer, wants_answer && iq_from.is_some()) {
                    (Some(a), true) => {
                        let (aid, ato) = match &a {
                            Iq::Result { id, to, .. } | Iq::Error { id, to, .. } => {
                                (id.clone(), to.clone())
                            }
                            other => {
                                return Err(format!("an iq answered with a request: {other:?}"))
                            }
                        };
                        if aid != id || ato != iq_from {
                            return Err(format!(
                                "iq {id} from {iq_from:?} answered as {aid} to {ato:?}"
                            ));
                        }
                        // The answer is a stanza the server takes.
                        let xml = String::from(&Element::from(a));
                        Element::from_str(&xml).map_err(|e| format!("{e}: {xml}"))?;
                    }
                    (None, true) => return Err(format!("iq get/set {id} got no answer")),
                    (Some(a), false) => {
                        return Err(format!("iq result/error {id} answered: {a:?}"))
                    }
                    (None, false) => {}
                }
            }
            "message" => {
                let Ok(msg) = Message::try_from(el.clone()) else {
                    continue;
                };
                if msg.type_ != MessageType::Chat {
                    // The pager path (`im`) is async glue over `mapping::message`, which
                    // `mapping::fuzz` covers.
                    continue;
                }
                let has_body = !msg.bodies.is_empty();
                if let (true, Some(f), Some(t), Some(id)) = (has_body, &from, &to, &msg.id) {
                    if is_local_user(f) && m.gateway_jid_to_sip(t).is_ok() {
                        owed.push((id.0.clone(), f.clone()));
                    }
                }
                chat.handle_xmpp(now, msg);
            }
            "presence" => {
                let Ok(p) = Presence::try_from(el.clone()) else {
                    continue;
                };
                presence.handle_xmpp(now_ms, p);
            }
            _ => {}
        }
        drive_chat(&mut chat, now, &allowed, &senders, &mut owed)?;
        drive_presence(&mut presence, now_ms, &allowed, &senders)?;
    }
    // Every timer runs out.
    for step in 1..=4u64 {
        let at = t0 + Duration::from_secs(25_000 * step);
        chat.handle_timeout(at);
        drive_chat(&mut chat, at, &allowed, &senders, &mut owed)?;
        let at_ms = ms0 + 25_000_000 * step;
        presence.handle_timeout(at_ms);
        drive_presence(&mut presence, at_ms, &allowed, &senders)?;
    }
    if !owed.is_empty() {
        return Err(format!("chat messages neither sent nor bounced: {owed:?}"));
    }
    if chat.sessions() != 0 {
        return Err(format!(
            "{} chat sessions left after every timer",
            chat.sessions()
        ));
    }
    Ok(())
}

fn drive_chat(
    chat: &mut ChatCore,
    now: Instant,
    allowed: &HashSet<(Option<String>, String, Option<u16>)>,
    senders: &HashSet<Jid>,
    owed: &mut Vec<(String, Jid)>,
) -> Result<(), String> {
    // Bounded: each round answers the INVITEs of the one before.
    for _ in 0..16 {
        let mut failed = Vec::new();
        let mut any = false;
        while let Some(a) = chat.poll_action() {
            any = true;
            match a {
                ChatAction::Invite { id, request } => {
                    let uri = request.uri.to_string();
                    if !target_of(&uri).is_some_and(|t| allowed.contains(&t)) {
                        return Err(format!("INVITE to {uri}, which no stanza's mapping gives"));
                    }
                    // The SIP side never answers.
                    failed.push(id);
                }
                ChatAction::Ack { request, .. } | ChatAction::Bye { request, .. } => {
                    let uri = request.uri.to_string();
                    if !target_of(&uri).is_some_and(|t| allowed.contains(&t)) {
                        return Err(format!("in-dialog request to {uri}"));
                    }
                }
                ChatAction::MsrpConnect { host, port, .. } => {
                    return Err(format!("MSRP connect to {host}:{port} without an answer"));
                }
                ChatAction::Stanza(s) => {
                    let to = s.to.clone();
                    let ok = to
                        .as_ref()
                        .is_some_and(|t| is_local_user(t) || senders.contains(t));
                    if !ok {
                        return Err(format!(
                            "stanza to {to:?}, neither a local user nor a sender"
                        ));
                    }
                    if s.type_ == MessageType::Error {
                        if let Some(id) = &s.id {
                            owed.retain(|(i, f)| !(i == &id.0 && Some(f) == to.as_ref()));
                        }
                    }
                }
                ChatAction::Pager { message, .. } => {
                    let to = message.to.clone();
                    if !at_gateway(to.as_ref()) {
                        return Err(format!("pager message to {to:?}"));
                    }
                    if let Some(id) = &message.id {
                        owed.retain(|(i, _)| i != &id.0);
                    }
                }
                ChatAction::Deliver { .. } => {
                    return Err("a delivery to XMPP with no MSRP session up".into());
                }
                ChatAction::Cancel { .. }
                | ChatAction::MsrpExpect { .. }
                | ChatAction::MsrpSend { .. }
                | ChatAction::MsrpClose { .. }
                | ChatAction::MsrpDrop { .. } => {}
            }
        }
        for id in failed {
            chat.handle_invite_failed(now, id, true);
        }
        if !any {
            break;
        }
    }
    Ok(())
}

fn drive_presence(
    presence: &mut PresenceCore,
    now: u64,
    allowed: &HashSet<(Option<String>, String, Option<u16>)>,
    senders: &HashSet<Jid>,
) -> Result<(), String> {
    for _ in 0..16 {
        let mut failed = Vec::new();
        while let Some(a) = presence.poll_action() {
            match a {
                PresenceAction::Sip {
                    token,
                    request,
                    in_dialog,
                } => {
                    let uri = request.uri.to_string();
                    // No dialog exists without a SIP answer, and none is ever given here.
                    if in_dialog || !target_of(&uri).is_some_and(|t| allowed.contains(&t)) {
                        return Err(format!("SIP request to {uri} (in dialog: {in_dialog})"));
                    }
                    failed.push(token);
                }
                PresenceAction::Stanza(p) => {
                    let to = p.to.clone();
                    // A foreign sender hears back (an error, `unsubscribed`), nobody else.
                    let ok = to
                        .as_ref()
                        .is_some_and(|t| is_local_user(t) || senders.contains(t));
                    if !ok {
                        return Err(format!(
                            "presence to {to:?}, neither a local user nor a sender"
                        ));
                    }
                    let from = p.from.clone();
                    if !at_gateway(from.as_ref()) {
                        return Err(format!("presence from {from:?}, not a gateway JID"));
                    }
                }
                PresenceAction::Save { .. } | PresenceAction::Delete(_) => {}
            }
        }
        if failed.is_empty() {
            break;
        }
        for token in failed {
            presence.handle_sip_result(now, token, SipResult::Failed);
        }
    }
    Ok(())
}

// ---------- stanza generation ----------

fn xml_attr(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('\'', "&apos;")
        .replace('<', "&lt;")
        .replace('"', "&quot;")
}

fn jid_pool() -> impl Strategy<Value = String> {
    prop::sample::select(vec![
        "juliet@example.com/balcony",
        "juliet@example.com",
        "Juliet@Example.COM/a",
        "nurse@chat.example.org/x",
        "mallory@evil.example/r",
        "example.com",
        "sip.example.com",
        "romeo\\40example.net@sip.example.com",
        "romeo\\40example.net@sip.example.com/orchard",
        "romeo\\40example.net:5070@sip.example.com",
        "romeo\\40127.0.0.1:22@sip.example.com",
        "a\\40[::1]@sip.example.com",
        "a\\40[::1@sip.example.com",
        "juliet\\40example.com@sip.example.com",
        "juliet\\40example.org@sip.example.com",
        "+15551234@sip.example.com",
        "+@sip.example.com",
        "\\40example.net@sip.example.com",
        "x\\40y\\5c40z@sip.example.com",
        "bad\\40host%0d%0a@sip.example.com",
        "nobody@sip.example.com",
        "",
    ])
    .prop_map(String::from)
}

fn payload(kind: u8) -> impl Strategy<Value = String> {
    let message = prop::sample::select(vec![
        "<body>hello</body>",
        "<body xml:lang='it'>ciao</body><body>hi</body>",
        "<body></body>",
        "<subject>s</subject>",
        "<thread>t1</thread>",
        "<composing xmlns='http://jabber.org/protocol/chatstates'/>",
        "<active xmlns='http://jabber.org/protocol/chatstates'/>",
        "<gone xmlns='http://jabber.org/protocol/chatstates'/>",
        "<paused xmlns='http://jabber.org/protocol/chatstates'/>",
        "<request xmlns='urn:xmpp:receipts'/>",
        "<received xmlns='urn:xmpp:receipts' id='m1'/>",
        "<html xmlns='http://jabber.org/protocol/xhtml-im'><body xmlns='http://www.w3.org/1999/xhtml'><p>hi</p></body></html>",
        "<x xmlns='jabber:x:conference' jid='room@conf.example.com'/>",
        "<error type='cancel'><item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error>",
        "<unknown xmlns='urn:example:x'/>",
    ]);
    let presence = prop::sample::select(vec![
        "<show>away</show>",
        "<show>dnd</show>",
        "<show>bogus</show>",
        "<status>on the balcony</status>",
        "<priority>5</priority>",
        "<priority>-129</priority>",
        "<c xmlns='http://jabber.org/protocol/caps' hash='sha-1' node='n' ver='v'/>",
        "<unknown xmlns='urn:example:x'/>",
    ]);
    let iq = prop::sample::select(vec![
        "<query xmlns='http://jabber.org/protocol/disco#info'/>",
        "<query xmlns='http://jabber.org/protocol/disco#info' node='n'/>",
        "<query xmlns='http://jabber.org/protocol/disco#items'/>",
        "<ping xmlns='urn:xmpp:ping'/>",
        "<query xmlns='jabber:iq:version'/>",
        "<query xmlns='jabber:iq:gateway'/>",
        "<query xmlns='jabber:iq:gateway'><prompt>romeo@example.net</prompt></query>",
        "<query xmlns='jabber:iq:gateway'><prompt>juliet@example.com</prompt></query>",
        "<query xmlns='jabber:iq:gateway'><prompt>a@[::1]:5060</prompt></query>",
        "<query xmlns='jabber:iq:roster'/>",
        "<vCard xmlns='vcard-temp'/>",
    ]);
    match kind {
        0 => message.prop_map(String::from).boxed(),
        1 => presence.prop_map(String::from).boxed(),
        _ => iq.prop_map(String::from).boxed(),
    }
}

fn stanza() -> impl Strategy<Value = String> {
    (0u8..3).prop_flat_map(|kind| {
        let types: Vec<&str> = match kind {
            0 => vec![
                "chat",
                "chat",
                "chat",
                "normal",
                "error",
                "groupchat",
                "headline",
                "",
            ],
            1 => vec![
                "",
                "unavailable",
                "subscribe",
                "subscribed",
                "unsubscribe",
                "unsubscribed",
                "probe",
                "error",
            ],
            _ => vec!["get", "get", "set", "result", "error"],
        };
        (
            Just(kind),
            jid_pool(),
            jid_pool(),
            prop::sample::select(types),
            prop::option::of(prop::sample::select(vec!["m1", "m2", "m3", "i&apos;d", ""])),
            proptest::collection::vec(payload(kind), 0..3),
        )
            .prop_map(|(kind, from, to, type_, id, payloads)| {
                let name = ["message", "presence", "iq"][kind as usize];
                let mut s = format!("<{name} xmlns='jabber:component:accept'");
                if !from.is_empty() {
                    s += &format!(" from='{}'", xml_attr(&from));
                }
                if !to.is_empty() {
                    s += &format!(" to='{}'", xml_attr(&to));
                }
                if !type_.is_empty() {
                    s += &format!(" type='{type_}'");
                }
                if let Some(id) = id {
                    s += &format!(" id='{id}'");
                }
                // An iq carries exactly one payload (RFC 6120 8.2.3).
                let payloads = if kind == 2 {
                    payloads.into_iter().take(1).collect()
                } else {
                    payloads
                };
                s + ">" + &payloads.concat() + &format!("</{name}>")
            })
    })
}

/// A stanza text with a few byte edits; most still parse, some no longer do.
fn mutated_stanza() -> impl Strategy<Value = String> {
    (
        stanza(),
        proptest::collection::vec((any::<Index>(), any::<Index>(), 0u8..3), 1..4),
    )
        .prop_map(|(s, edits)| {
            const BYTES: &[u8] = b"<>/'\"=&;\\@:[] x";
            let mut b = s.into_bytes();
            for (at, what, op) in edits {
                let i = at.index(b.len() + 1);
                let c = BYTES[what.index(BYTES.len())];
                match op {
                    0 if i < b.len() => b[i] = c,
                    1 => b.insert(i, c),
                    _ if i < b.len() => {
                        b.remove(i);
                    }
                    _ => {}
                }
            }
            String::from_utf8_lossy(&b).into_owned()
        })
}

fn parse_all(texts: &[String]) -> Vec<Element> {
    texts
        .iter()
        .filter_map(|t| Element::from_str(t).ok())
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 250, ..ProptestConfig::default() })]

    #[test]
    fn any_stanza_sequence_keeps_the_handlers_invariants(
        stanzas in proptest::collection::vec(prop_oneof![4 => stanza(), 1 => mutated_stanza()], 1..16),
    ) {
        check_stanzas(&parse_all(&stanzas)).map_err(TestCaseError::fail)?;
    }
}

/// The corpus: each file one sequence, one stanza per line.
fn check_corpus_input(bytes: &[u8]) -> Result<(), String> {
    let text = String::from_utf8_lossy(bytes);
    let lines: Vec<String> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(String::from)
        .collect();
    let parsed = parse_all(&lines);
    if parsed.is_empty() {
        return Err("no stanza in the file parses".into());
    }
    check_stanzas(&parsed)
}

#[test]
fn corpus_xmpp_stanzas() {
    corpus::replay("xmpp-stanzas", check_corpus_input);
}
