//! What the component answers itself: service discovery (XEP-0030), ping (XEP-0199),
//! software version (XEP-0092) and the gateway address prompt (XEP-0100 `jabber:iq:gateway`).

use std::collections::BTreeSet;

use xmpp_parsers::disco::{DiscoInfoResult, DiscoItemsResult, Identity};
use xmpp_parsers::iq::Iq;
use xmpp_parsers::jid::Jid;
use xmpp_parsers::minidom::Element;
use xmpp_parsers::ns;
use xmpp_parsers::stanza_error::DefinedCondition;
use xmpp_parsers::version::VersionResult;

use crate::address::{AddressMap, SipAddress};
use crate::mapping::error::stanza_error;

/// XEP-0100's namespace for translating legacy addresses into JIDs.
pub const NS_GATEWAY: &str = "jabber:iq:gateway";

/// Set once chat sessions (RFC 7573) run: delivery receipts (XEP-0184) are then real.
static RECEIPTS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Chat sessions are on: advertise XEP-0184 receipts from now on.
pub fn enable_receipts() {
    RECEIPTS.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// The features the component really supports, as advertised in disco#info. Chat states
/// (XEP-0085) map to isComposing both in pager mode and in chat sessions; receipts only
/// in chat sessions (MSRP success reports). XHTML-IM is not taken from XMPP, so it is not
/// advertised.
pub fn features() -> BTreeSet<String> {
    let mut f: BTreeSet<String> = [
        ns::DISCO_INFO,
        ns::DISCO_ITEMS,
        ns::PING,
        ns::VERSION,
        NS_GATEWAY,
        ns::CHATSTATES,
    ]
    .into_iter()
    .map(String::from)
    .collect();
    if RECEIPTS.load(std::sync::atomic::Ordering::Relaxed) {
        f.insert(ns::RECEIPTS.to_string());
    }
    f
}

/// The answer to an iq addressed to the component or one of its JIDs, if one is due.
pub fn handle_iq(iq: Iq, addresses: &AddressMap) -> Option<Iq> {
    let (from, to, id, payload, is_get) = match iq {
        Iq::Get {
            from,
            to,
            id,
            payload,
        } => (from, to, id, payload, true),
        Iq::Set {
            from,
            to,
            id,
            payload,
        } => (from, to, id, payload, false),
        // Results (e.g. pongs) and errors need no answer.
        Iq::Result { .. } | Iq::Error { .. } => return None,
    };
    let from = from?;
    let to = to?;
    let to_component = to.node().is_none() && to.resource().is_none();
    let reply = |result: Result<Option<Element>, (DefinedCondition, &str)>| -> Iq {
        match result {
            Ok(payload) => Iq::Result {
                from: Some(to.clone()),
                to: Some(from.clone()),
                id: id.clone(),
                payload,
            },
            Err((cond, text)) => Iq::from_error(id.clone(), stanza_error(cond, text))
                .with_from(to.clone())
                .with_to(from.clone()),
        }
    };
    let ns = payload.ns();
    let name = payload.name();
    let unsupported = (DefinedCondition::ServiceUnavailable, "");
    Some(match (is_get, ns.as_str(), name) {
        (true, ns::DISCO_INFO, "query") => {
            if to_component && payload.attr("node").is_none() {
                reply(Ok(Some(Element::from(disco_info()))))
            } else if !to_component {
                // A SIP user behind the gateway: an IM-capable contact.
                let info = DiscoInfoResult {
                    node: payload.attr("node").map(String::from),
                    identities: vec![Identity::new_anonymous::<_, _, String, String>("client", "pc")],
                    features: [ns::DISCO_INFO].into_iter().map(String::from).collect(),
                    extensions: vec![],
                };
                reply(Ok(Some(Element::from(info))))
            } else {
                reply(Err((DefinedCondition::ItemNotFound, "")))
            }
        }
        (true, ns::DISCO_ITEMS, "query") => reply(Ok(Some(Element::from(DiscoItemsResult {
            node: payload.attr("node").map(String::from),
            items: vec![],
            rsm: None,
        })))),
        (true, ns::PING, "ping") => reply(Ok(None)),
        (true, ns::VERSION, "query") if to_component => {
            reply(Ok(Some(Element::from(VersionResult {
                name: "stox".into(),
                version: env!("CARGO_PKG_VERSION").into(),
                os: None,
            }))))
        }
        (true, NS_GATEWAY, "query") if to_component => reply(Ok(Some(
            Element::builder("query", NS_GATEWAY)
                .append(
                    Element::builder("desc", NS_GATEWAY)
                        .append("Enter the SIP address of the contact (e.g. sip:romeo@example.net or a phone number +15551234567).")
                        .build(),
                )
                .append(Element::builder("prompt", NS_GATEWAY).append("SIP address").build())
                .build(),
        ))),
        (false, NS_GATEWAY, "query") if to_component => {
            let prompt = payload
                .get_child("prompt", NS_GATEWAY)
                .map(|p| p.text())
                .unwrap_or_default();
            match translate(prompt.trim(), addresses) {
                Some(jid) => reply(Ok(Some(
                    Element::builder("query", NS_GATEWAY)
                        .append(
                            Element::builder("jid", NS_GATEWAY)
                                .append(jid.to_string())
                                .build(),
                        )
                        .build(),
                ))),
                None => reply(Err((
                    DefinedCondition::BadRequest,
                    "Not a SIP address or phone number stox can map",
                ))),
            }
        }
        _ => reply(Err(unsupported)),
    })
}

fn disco_info() -> DiscoInfoResult {
    DiscoInfoResult {
        node: None,
        // The XMPP registrar's type for SIP/SIMPLE gateways.
        identities: vec![Identity::new("gateway", "simple", "en", "SIP gateway")],
        features: features(),
        extensions: vec![],
    }
}

/// XEP-0100 6.3: a SIP URI, a bare `user@host`, or a phone number -> the JID to write to.
fn translate(prompt: &str, addresses: &AddressMap) -> Option<Jid> {
    let candidates = [
        prompt.to_string(),
        format!("sip:{prompt}"),
        format!("tel:{prompt}"),
    ];
    candidates
        .iter()
        .filter_map(|c| SipAddress::parse(c).ok())
        .find_map(|a| addresses.sip_to_gateway_jid(&a).ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    fn addresses() -> AddressMap {
        AddressMap::new(
            "sip.example.com",
            &["example.com".to_string()],
            &["example.com".to_string()],
            Some("example.com"),
        )
        .unwrap()
    }

    fn iq(xml: &str) -> Iq {
        Iq::try_from(Element::from_str(xml).unwrap()).unwrap()
    }

    fn answer(xml: &str) -> String {
        String::from(&Element::from(handle_iq(iq(xml), &addresses()).unwrap()))
    }

    #[test]
    fn disco_info_names_a_simple_gateway_and_only_real_features() {
        let out = answer(
            "<iq xmlns='jabber:component:accept' type='get' id='d1' from='juliet@example.com/balcony' to='sip.example.com'>\
             <query xmlns='http://jabber.org/protocol/disco#info'/></iq>",
        );
        assert!(
            out.contains("<identity category='gateway'") && out.contains("type='simple'"),
            "{out}"
        );
        for f in features() {
            assert!(out.contains(&format!("var='{f}'")), "{out}");
        }
        assert!(!out.contains("xhtml"), "{out}");
        assert!(out.contains("type='result'"), "{out}");
    }

    #[test]
    fn ping_gets_an_empty_result() {
        let out = answer(
            "<iq xmlns='jabber:component:accept' type='get' id='p1' from='juliet@example.com/b' to='sip.example.com'>\
             <ping xmlns='urn:xmpp:ping'/></iq>",
        );
        assert!(
            out.contains("type='result'") && out.contains("id='p1'"),
            "{out}"
        );
    }

    #[test]
    fn the_gateway_prompt_translates_sip_addresses() {
        let out = answer(
            "<iq xmlns='jabber:component:accept' type='set' id='g1' from='juliet@example.com/b' to='sip.example.com'>\
             <query xmlns='jabber:iq:gateway'><prompt>romeo@example.net</prompt></query></iq>",
        );
        assert!(
            out.contains("<jid>romeo\\40example.net@sip.example.com</jid>"),
            "{out}"
        );
        let out = answer(
            "<iq xmlns='jabber:component:accept' type='set' id='g2' from='juliet@example.com/b' to='sip.example.com'>\
             <query xmlns='jabber:iq:gateway'><prompt>+15551234567</prompt></query></iq>",
        );
        assert!(
            out.contains("<jid>+15551234567@sip.example.com</jid>"),
            "{out}"
        );
    }

    #[test]
    fn unknown_requests_get_service_unavailable_and_results_nothing() {
        let out = answer(
            "<iq xmlns='jabber:component:accept' type='get' id='x' from='juliet@example.com/b' to='sip.example.com'>\
             <query xmlns='jabber:iq:roster'/></iq>",
        );
        assert!(
            out.contains("service-unavailable") && out.contains("type='error'"),
            "{out}"
        );
        let result = iq("<iq xmlns='jabber:component:accept' type='result' id='x' from='example.com' to='sip.example.com'/>");
        assert!(handle_iq(result, &addresses()).is_none());
    }
}
