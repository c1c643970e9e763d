//! Fuzzing of the address mapping (XEP-0106, RFC 7247 section 5) and of the PIDF and
//! message mappings, with proptest (a fixed number of cases per run) plus the corpus in
//! `tests/corpus/{address,pidf}`.
//!
//! ```text
//!   arbitrary strings as JIDs -> local_user_to_sip / gateway_jid_to_sip -> SIP address
//!   arbitrary strings as SIP URIs -> sip_to_local_user / sip_to_gateway_jid -> JID
//!     what maps stays in the configured domains, re-parses as itself, maps back
//!   random and mutated PIDF -> pidf_to_xmpp -> presences the XMPP server takes
//! ```

use std::str::FromStr;

use proptest::prelude::*;
use proptest::sample::Index;
use xmpp_parsers::jid::{BareJid, Jid};
use xmpp_parsers::message::{Message, MessageType};
use xmpp_parsers::minidom::Element;

use crate::address::{escape, unescape, AddressError, AddressMap, SipAddress, UriScheme};
use crate::corpus;
use crate::mapping::message as mm;
use crate::mapping::presence::{parse_pidf, pidf_to_xmpp};

const COMPONENT: &str = "sip.example.com";
const XMPP_DOMAINS: [&str; 2] = ["example.com", "chat.example.org"];
const SIP_DOMAINS: [&str; 2] = ["example.com", "example.org"];
const DEFAULT_DOMAIN: &str = "pstn.example.com";

fn map() -> AddressMap {
    AddressMap::new(
        COMPONENT,
        &XMPP_DOMAINS.map(String::from),
        &SIP_DOMAINS.map(String::from),
        Some(DEFAULT_DOMAIN),
    )
    .expect("test map")
}

/// A SIP address stox writes must read back as itself: no character of a user, host or
/// GRUU can end the URI, add a parameter or a header.
fn reparses(addr: &SipAddress) -> Result<(), String> {
    let s = addr.to_uri_string();
    match SipAddress::parse(&s) {
        Ok(a) if &a == addr => Ok(()),
        other => Err(format!(
            "{addr:?} writes as {s:?}, which reads as {other:?}"
        )),
    }
}

/// The JID side, for proptest and the corpus (one JID per input, as text).
fn check_jid(text: &str) -> Result<(), String> {
    let Ok(jid) = Jid::new(text) else {
        return Ok(());
    };
    let m = map();
    let domain = jid.domain().as_str().to_string();
    if let Ok(addr) = m.local_user_to_sip(&jid) {
        // Only a user of xmpp.domains, and always into its paired SIP domain.
        let i = XMPP_DOMAINS
            .iter()
            .position(|d| d.eq_ignore_ascii_case(&domain))
            .ok_or_else(|| format!("{jid} is no local user but mapped to {addr:?}"))?;
        if addr.host != SIP_DOMAINS[i] || addr.port.is_some() || addr.user_phone {
            return Err(format!("{jid} -> {addr:?} left its SIP domain"));
        }
        reparses(&addr)?;
        let back = m
            .sip_to_local_user(&addr)
            .map_err(|e| format!("{addr:?} back: {e}"))?;
        if back.domain().as_str() != XMPP_DOMAINS[i] {
            return Err(format!("{addr:?} maps back to {back}"));
        }
    }
    match m.gateway_jid_to_sip(&jid) {
        Ok(addr) => {
            if !domain.eq_ignore_ascii_case(COMPONENT) {
                return Err(format!(
                    "{jid} is not at the gateway but mapped to {addr:?}"
                ));
            }
            // Never one of stox's own SIP domains (that would loop back to stox), and a
            // phone number only at the configured default domain.
            if m.is_local_sip_domain(&addr.host) {
                return Err(format!("{jid} -> {addr:?}: a local SIP domain"));
            }
            if addr.user_phone && addr.host != DEFAULT_DOMAIN {
                return Err(format!(
                    "{jid} -> {addr:?}: a number outside the default domain"
                ));
            }
            if addr.scheme != UriScheme::Sip || addr.user.as_deref().is_none_or(str::is_empty) {
                return Err(format!("{jid} -> {addr:?}"));
            }
            reparses(&addr)?;
            // Mapped back to a JID and forward again: the same SIP address.
            if let Ok(j2) = m.sip_to_gateway_jid(&addr) {
                let again = m
                    .gateway_jid_to_sip(&j2)
                    .map_err(|e| format!("{j2}: {e}"))?;
                if again != addr {
                    return Err(format!("{jid} -> {addr:?} -> {j2} -> {again:?}"));
                }
            }
        }
        Err(AddressError::NotGatewayJid(_)) if domain.eq_ignore_ascii_case(COMPONENT) => {
            return Err(format!("{jid} is at the gateway but refused as not"));
        }
        Err(_) => {}
    }
    Ok(())
}

/// The SIP side, for proptest and the corpus (one URI per input, as text).
fn check_uri(text: &str) -> Result<(), String> {
    let Ok(addr) = SipAddress::parse(text) else {
        return Ok(());
    };
    reparses(&addr)?;
    let m = map();
    if let Ok(jid) = m.sip_to_local_user(&addr) {
        if !XMPP_DOMAINS.contains(&jid.domain().as_str()) {
            return Err(format!("{text} -> {jid}: outside xmpp.domains"));
        }
        if !m.is_local_sip_domain(&addr.host) {
            return Err(format!("{text} -> {jid}: not a local SIP user"));
        }
    }
    if let Ok(jid) = m.sip_to_gateway_jid(&addr) {
        if jid.domain().as_str() != COMPONENT {
            return Err(format!("{text} -> {jid}: not at the gateway"));
        }
        // Some JIDs are normalized by the XMPP stack (case of a resource, say): compare
        // what the JID maps to with what it maps to after one more round.
        if let Ok(a2) = m.gateway_jid_to_sip(&jid) {
            let j2 = m
                .sip_to_gateway_jid(&a2)
                .map_err(|e| format!("{a2:?}: {e}"))?;
            if j2 != jid {
                return Err(format!("{text} -> {jid} -> {a2:?} -> {j2}"));
            }
        }
    }
    Ok(())
}

fn check_address_input(bytes: &[u8]) -> Result<(), String> {
    let text = String::from_utf8_lossy(bytes);
    let text = text.trim_end_matches(['\r', '\n']);
    check_jid(text)?;
    check_uri(text)?;
    let _ = unescape(text);
    if unescape(&escape(text)) != text {
        return Err(format!("escape does not round-trip {text:?}"));
    }
    Ok(())
}

fn check_pidf(body: &[u8]) -> Result<(), String> {
    let from = BareJid::new("romeo\\40example.net@sip.example.com").map_err(|e| e.to_string())?;
    let to = Jid::new("juliet@example.com").map_err(|e| e.to_string())?;
    let _ = parse_pidf(body, Some("en"));
    if let Ok(out) = pidf_to_xmpp(body, None, &from, &to) {
        for p in out {
            // Whatever comes out is a stanza the XMPP server will take, from the gateway
            // JID of the SIP user to the watcher.
            if p.to.as_ref() != Some(&to)
                || p.from.as_ref().map(|f| f.to_bare()) != Some(from.clone())
            {
                return Err(format!("presence {:?} -> {:?}", p.from, p.to));
            }
            let xml = String::from(&Element::from(p));
            Element::from_str(&xml).map_err(|e| format!("{e}: {xml}"))?;
        }
    }
    Ok(())
}

/// Localparts worth combining: escapes, IP literals, ports, phone numbers, separators.
fn localpart() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("romeo".to_string()),
        Just("\\40".to_string()),
        Just("\\5c".to_string()),
        Just("\\3a".to_string()),
        Just("\\2f".to_string()),
        Just("\\20".to_string()),
        Just("\\".to_string()),
        Just("example.net".to_string()),
        Just("example.com".to_string()),
        Just("example.org".to_string()),
        Just("[::1]".to_string()),
        Just("127.0.0.1".to_string()),
        Just(":5060".to_string()),
        Just(":0".to_string()),
        Just(":99999".to_string()),
        Just("+15551234".to_string()),
        Just("%0d%0a".to_string()),
        Just(";transport=tcp".to_string()),
        Just("?Route=x".to_string()),
        Just(">".to_string()),
        "[a-zA-Z0-9%;?=&+.\\-]{1,6}",
        "\\PC{1,3}",
    ];
    proptest::collection::vec(piece, 1..6).prop_map(|v| v.concat())
}

fn jid_text() -> impl Strategy<Value = String> {
    let domain = prop_oneof![
        Just(COMPONENT.to_string()),
        Just("SIP.Example.COM".to_string()),
        Just(XMPP_DOMAINS[0].to_string()),
        Just(XMPP_DOMAINS[1].to_string()),
        Just("example.org".to_string()),
        Just("evil.example".to_string()),
        Just("[::1]".to_string()),
        Just("127.0.0.1".to_string()),
    ];
    (
        proptest::option::of(localpart()),
        domain,
        proptest::option::of("\\PC{1,12}"),
    )
        .prop_map(|(node, domain, resource)| {
            let mut s = String::new();
            if let Some(n) = node {
                s += &n;
                s.push('@');
            }
            s += &domain;
            if let Some(r) = resource {
                s.push('/');
                s += &r;
            }
            s
        })
}

fn uri_text() -> impl Strategy<Value = String> {
    (
        prop::sample::select(vec![
            "sip:", "sips:", "tel:", "im:", "pres:", "SIP:", "xmpp:", "",
        ]),
        proptest::option::of("[a-zA-Z0-9%;?=&+.:@\\\\/ -]{1,16}"),
        prop::sample::select(vec![
            "example.com",
            "EXAMPLE.org",
            "example.net",
            "pstn.example.com",
            "[2001:db8::1]",
            "[::1",
            "127.0.0.1",
            "",
        ]),
        proptest::option::of(prop::sample::select(vec![
            ":5060", ":0", ":65536", ":", ":x",
        ])),
        proptest::collection::vec(
            prop::sample::select(vec![
                ";gr=balcony",
                ";gr",
                ";user=phone",
                ";transport=tcp",
                ";lr",
                "?Subject=x",
                ">",
                ";gr=%0d%0a",
            ]),
            0..3,
        ),
    )
        .prop_map(|(scheme, user, host, port, params)| {
            let mut s = scheme.to_string();
            if let Some(u) = user {
                s += &u;
                s.push('@');
            }
            s += host;
            if let Some(p) = port {
                s += p;
            }
            s + &params.concat()
        })
}

/// Byte-level mutations of a text.
fn mutate(seed: String, edits: Vec<(u8, Index, u8)>) -> Vec<u8> {
    let mut b = seed.into_bytes();
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
}

const PIDF_SEEDS: &[&str] = &[
    "<?xml version='1.0' encoding='UTF-8'?><presence xmlns='urn:ietf:params:xml:ns:pidf' entity='pres:romeo@example.net'><tuple id='ID-orchard'><status><basic>open</basic></status><contact priority='0.5'>sip:romeo@example.net;gr=orchard</contact><note xml:lang='en'>In the orchard</note></tuple></presence>",
    "<presence xmlns='urn:ietf:params:xml:ns:pidf' xmlns:dm='urn:ietf:params:xml:ns:pidf:data-model' xmlns:rpid='urn:ietf:params:xml:ns:pidf:rpid' entity='sip:romeo@example.net'><tuple id='t1'><status><basic>open</basic></status></tuple><dm:person id='p1'><rpid:activities><rpid:away/></rpid:activities></dm:person><tuple id='t2'><status><basic>closed</basic></status></tuple></presence>",
    "<presence xmlns='urn:ietf:params:xml:ns:pidf' entity='pres:romeo@example.net'><tuple id='x'><status><basic>closed</basic></status><show xmlns='jabber:client'>dnd</show></tuple></presence>",
];

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_jids_map_only_into_the_configured_domains(text in jid_text()) {
        check_jid(&text).map_err(TestCaseError::fail)?;
    }

    #[test]
    fn arbitrary_sip_uris_map_only_into_the_configured_domains(text in uri_text()) {
        check_uri(&text).map_err(TestCaseError::fail)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn any_string_is_no_panic_as_jid_or_uri(text in "\\PC{0,40}") {
        check_address_input(text.as_bytes()).map_err(TestCaseError::fail)?;
    }

    #[test]
    fn mutated_pidf_maps_to_valid_presences(
        which in any::<Index>(),
        edits in proptest::collection::vec((any::<u8>(), any::<Index>(), 0u8..4), 0..8),
    ) {
        let seed = PIDF_SEEDS[which.index(PIDF_SEEDS.len())].to_string();
        check_pidf(&mutate(seed, edits)).map_err(TestCaseError::fail)?;
    }

    /// RFC 7572 Table 1 on any message between mapped addresses: the MESSAGE goes to the
    /// mapped target and to nothing else, and no text of the stanza becomes a header.
    #[test]
    fn xmpp_messages_map_to_a_message_for_the_mapped_target_only(
        to in jid_text(),
        resource in proptest::option::of("\\PC{1,10}"),
        body in "\\PC{0,40}",
        subject in proptest::option::of("[ -~\r\n\t]{0,20}"),
        lang in proptest::option::of("[a-zA-Z0-9\r\n -]{0,8}"),
        thread in proptest::option::of("[ -~]{0,20}"),
    ) {
        let m = map();
        let Ok(to) = Jid::new(&to) else { return Ok(()) };
        let from = match &resource {
            Some(r) => BareJid::new("juliet@example.com").unwrap().with_resource_str(r).map(Jid::from),
            None => Ok(Jid::new("juliet@example.com").unwrap()),
        };
        let Ok(from) = from else { return Ok(()) };
        let (Ok(sender), Ok(target)) = (m.local_user_to_sip(&from), m.gateway_jid_to_sip(&to)) else {
            return Ok(());
        };
        let mut msg = Message::new(Some(to.clone()));
        msg.from = Some(from);
        msg.type_ = MessageType::Normal;
        msg.bodies.insert(lang.clone().unwrap_or_default().into(), body.clone());
        if let Some(s) = &subject {
            msg.subjects.insert(String::new().into(), s.clone());
        }
        let call_id = thread.as_deref().and_then(mm::thread_to_call_id).unwrap_or_else(|| "c1@sip.example.com".into());
        let Ok(req) = mm::xmpp_to_sip(&msg, &sender, &target, &call_id, 1, "tag1") else { return Ok(()) };
        let uri = req.uri.to_string();
        let parsed = SipAddress::parse(&uri).map_err(|e| TestCaseError::fail(format!("{uri}: {e}")))?;
        prop_assert_eq!(&parsed.host, &target.host);
        prop_assert_eq!(&parsed.user, &target.user);
        prop_assert!(!m.is_local_sip_domain(&parsed.host));
        // One line per header: nothing the stanza carried started another.
        let text = req.to_string();
        let head = text.split("\r\n\r\n").next().unwrap_or_default();
        prop_assert_eq!(head.split("\r\n").count(), 1 + req.headers.iter().count(), "{}", text);
        prop_assert!(!head.contains('\n') || head.matches('\n').count() == req.headers.iter().count(), "{}", text);
    }
}

#[test]
fn corpus_address() {
    corpus::replay("address", check_address_input);
}

#[test]
fn corpus_pidf() {
    corpus::replay("pidf", check_pidf);
}

#[test]
fn the_pidf_seeds_map() {
    let from = BareJid::new("romeo\\40example.net@sip.example.com").unwrap();
    let to = Jid::new("juliet@example.com").unwrap();
    for s in PIDF_SEEDS {
        let out = pidf_to_xmpp(s.as_bytes(), None, &from, &to).unwrap();
        assert!(!out.is_empty(), "{s}");
    }
}
