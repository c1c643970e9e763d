//! Interworking of single messages (RFC 7572), both directions.
//!
//! The rule both directions keep: a message that was accepted is delivered or bounced.
//! - SIP -> XMPP: the MESSAGE gets 200 only after the XMPP server has taken its stanza
//!   (`XmppLink::deliver`: a receipt ping after it was answered); while the link is down
//!   or backed up it gets 503 with Retry-After, so the sender retries. An error the server
//!   returns for the stanza before that (no such user) is the answer, mapped by RFC 7247
//!   section 8.1 (service-unavailable -> 503 without Retry-After, item-not-found -> 404).
//! - XMPP -> SIP: a MESSAGE that fails (a 3xx-6xx, a timeout, no route) comes back to the
//!   XMPP sender as an error stanza mapped by RFC 7247 section 8.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use rsipstack::sip::prelude::HeadersExt;
use rsipstack::sip::Header;
use tracing::Instrument;
use xmpp_parsers::message::{Message, MessageType};
use xmpp_parsers::minidom::Element;
use xmpp_parsers::stanza_error::{DefinedCondition, StanzaError};

use crate::address::{AddressMap, SipAddress};
use crate::mapping::error::{sip_answer_for_xmpp, stanza_error, stanza_error_for_sip};
use crate::mapping::message::{self as mm, MapError};
use crate::msrp::iscomposing::{self, IsComposing};
use crate::sip::core::random_token;
use crate::sip::dialog::uri_of;
use crate::sip::endpoint::{IncomingRequest, SipError, SipHandle};
use crate::sip::message::{raw_uri, response_to};
use crate::xmpp::link::{Undelivered, XmppLink};
use xmpp_parsers::chatstates::ChatState;

/// What both directions share.
pub struct Im {
    pub addresses: Arc<AddressMap>,
    pub sip: SipHandle,
    pub xmpp: XmppLink,
    cseq: AtomicU32,
    /// The methods stox serves, for Allow (INVITE and friends only with chat sessions).
    allow: &'static str,
}

impl Im {
    pub fn new(addresses: Arc<AddressMap>, sip: SipHandle, xmpp: XmppLink, chat: bool) -> Self {
        Im {
            addresses,
            sip,
            xmpp,
            allow: if chat {
                crate::sip::message::ALLOW_WITH_CHAT
            } else {
                crate::sip::message::ALLOW
            },
            // A CSeq only has to grow within a Call-ID; one counter for all keeps it simple.
            cseq: AtomicU32::new(1),
        }
    }

    fn next_cseq(&self) -> u32 {
        let n = self.cseq.fetch_add(1, Ordering::Relaxed);
        // RFC 3261 8.1.1.5: less than 2**31.
        n % (1 << 31) + 1
    }

    // ----- From XMPP to SIP -----

    /// An XMPP `<message/>` addressed to a JID at the gateway.
    pub async fn from_xmpp(self: Arc<Self>, msg: Message) {
        let span = tracing::debug_span!(
            "xmpp_message",
            id = msg.id.as_ref().map(|i| i.0.as_str()).unwrap_or(""),
            from = msg.from.as_ref().map(|j| j.to_string()).unwrap_or_default(),
            to = msg.to.as_ref().map(|j| j.to_string()).unwrap_or_default(),
        );
        async move {
            if msg.type_ == MessageType::Error {
                tracing::debug!("Error message from XMPP ignored.");
                return;
            }
            let (Some(from), Some(to)) = (msg.from.clone(), msg.to.clone()) else {
                return;
            };
            if msg.type_ == MessageType::Groupchat {
                self.bounce(&msg, stanza_error(DefinedCondition::FeatureNotImplemented, "Groupchat is not supported by this gateway"));
                return;
            }
            let sender = match self.addresses.local_user_to_sip(&from) {
                Ok(a) => a,
                Err(e) => {
                    tracing::info!(error = %e, "Refused a message from outside the served domains.");
                    self.bounce(&msg, stanza_error(e.xmpp_condition(), e.to_string()));
                    return;
                }
            };
            let target = match self.addresses.gateway_jid_to_sip(&to) {
                Ok(a) => a,
                Err(e) => {
                    self.bounce(&msg, stanza_error(e.xmpp_condition(), e.to_string()));
                    return;
                }
            };
            let call_id = msg
                .thread
                .as_ref()
                .and_then(|t| mm::thread_to_call_id(&t.id))
                .unwrap_or_else(|| format!("{}@{}", random_token(20), self.addresses.component()));
            let mapped = match composing_to_sip(&msg) {
                // RFC 7573 section 5 in pager mode: a body-less chat state as isComposing.
                Some(xml) => mm::xmpp_to_sip(&with_body(&msg, xml), &sender, &target, &call_id, self.next_cseq(), &random_token(10))
                    .map(|mut r| {
                        for h in r.headers.iter_mut() {
                            if let Header::ContentType(c) = h {
                                *c = rsipstack::sip::ContentType::new(iscomposing::CONTENT_TYPE);
                            }
                        }
                        r
                    }),
                None => mm::xmpp_to_sip(&msg, &sender, &target, &call_id, self.next_cseq(), &random_token(10)),
            };
            let request = match mapped {
                Ok(r) => r,
                Err(MapError::NoBody) => {
                    tracing::debug!("Message without a body; nothing to send in pager mode.");
                    return;
                }
                Err(e) => {
                    self.bounce(&msg, stanza_error(DefinedCondition::JidMalformed, e.to_string()));
                    return;
                }
            };
            let span = tracing::debug_span!("sip_client", call_id = %call_id);
            let result = self.sip.send(request).instrument(span).await;
            match result {
                Ok(r) if r.status_code.code() < 300 => {
                    tracing::debug!(status = r.status_code.code(), "Delivered to SIP.");
                }
                Ok(r) => {
                    let code = r.status_code.code();
                    tracing::info!(status = code, "SIP refused the message; bouncing it.");
                    self.bounce(&msg, stanza_error_for_sip(code, r.status_code.text()));
                }
                Err(e) => {
                    tracing::info!(error = %e, "SIP delivery failed; bouncing the message.");
                    let cond = match e {
                        SipError::Timeout => DefinedCondition::RemoteServerTimeout,
                        SipError::Locate(_) => DefinedCondition::RemoteServerNotFound,
                        SipError::Transport | SipError::NoListener(_) | SipError::Stopped => {
                            DefinedCondition::ServiceUnavailable
                        }
                        SipError::Refused(_) => DefinedCondition::NotAllowed,
                    };
                    self.bounce(&msg, stanza_error(cond, e.to_string()));
                }
            }
        }
        .instrument(span)
        .await
    }

    /// Returns a message to its sender as an error (RFC 6120 8.3), with its body for context.
    fn bounce(&self, original: &Message, error: StanzaError) {
        let (Some(from), Some(to)) = (original.from.clone(), original.to.clone()) else {
            return;
        };
        let mut m = Message::new(Some(from));
        m.from = Some(to);
        m.type_ = MessageType::Error;
        m.id = original.id.clone();
        m.bodies = original.bodies.clone();
        m.thread = original.thread.clone();
        m.payloads.push(Element::from(error));
        self.xmpp.send(m);
    }

    // ----- From SIP to XMPP -----

    /// A SIP MESSAGE for a user of a served domain.
    pub async fn from_sip(self: Arc<Self>, incoming: IncomingRequest) {
        let IncomingRequest {
            request,
            source,
            responder,
        } = incoming;
        let call_id = request
            .call_id_header()
            .map(|c| c.value().to_string())
            .unwrap_or_default();
        let span = tracing::debug_span!(
            "sip_message",
            %call_id,
            cseq = request.cseq_header().map(|c| c.value().to_string()).unwrap_or_default(),
            remote = %source.remote,
        );
        async move {
            let answer =
                |status: u16, reason: Option<&str>| response_to(&request, status, reason, "");
            let target = match SipAddress::parse(&raw_uri(&request.uri))
                .and_then(|a| self.addresses.sip_to_local_user(&a))
            {
                Ok(j) => j,
                Err(e) => {
                    tracing::info!(error = %e, "MESSAGE for an address stox does not serve.");
                    responder.respond(answer(e.sip_status(), None));
                    return;
                }
            };
            let sender = match request
                .from_header()
                .ok()
                .map(|f| uri_of(f.value()))
                .ok_or(crate::address::AddressError::Malformed("no From".into()))
                .and_then(|s| SipAddress::parse(&s))
                .and_then(|a| self.addresses.sip_to_gateway_jid(&a))
            {
                Ok(j) => j,
                Err(e) => {
                    tracing::info!(error = %e, "MESSAGE from an address that cannot be mapped.");
                    responder.respond(answer(400, Some("From cannot be mapped to XMPP")));
                    return;
                }
            };
            let id = random_token(16);
            let msg = match composing_to_xmpp(&request, sender.clone(), target.clone()) {
                Some(m) => Ok(m),
                None => mm::sip_to_xmpp(&request, sender, target, id.clone()),
            };
            let msg = match msg {
                Ok(m) => m,
                Err(e) => {
                    tracing::info!(error = %e, "MESSAGE body cannot be carried to XMPP.");
                    let mut r = answer(e.sip_status(), None);
                    if e.sip_status() == 415 {
                        r.headers
                            .push(Header::Accept(rsipstack::sip::Accept::new(mm::ACCEPT)));
                    }
                    responder.respond(r);
                    return;
                }
            };
            match self.xmpp.deliver(msg).await {
                Ok(()) => {
                    tracing::debug!(stanza_id = %id, "Handed to the XMPP server.");
                    responder.respond(answer(200, None));
                }
                Err(Undelivered::Refused(error)) => {
                    // RFC 7247 section 8.1: the server's bounce decides the answer.
                    let (code, reason) = sip_answer_for_xmpp(&error);
                    tracing::info!(stanza_id = %id, status = code, %reason, "The XMPP server refused the message.");
                    responder.respond(answer(code, Some(&reason)));
                }
                Err(e @ Undelivered::LinkDown) => {
                    tracing::info!(error = %e, "XMPP link down; answering 503.");
                    let mut r = answer(503, None);
                    r.headers
                        .push(Header::RetryAfter(rsipstack::sip::RetryAfter::new("5")));
                    responder.respond(r);
                }
            }
        }
        .instrument(span)
        .await
    }

    /// OPTIONS (RFC 3261 11.2): what stox accepts.
    pub fn options(&self, incoming: IncomingRequest) {
        let mut r = response_to(&incoming.request, 200, None, "");
        r.headers
            .push(Header::Allow(rsipstack::sip::Allow::new(self.allow)));
        r.headers
            .push(Header::Accept(rsipstack::sip::Accept::new(mm::ACCEPT)));
        incoming.responder.respond(r);
    }

    /// Requests stox knows but does not serve yet.
    pub fn unsupported(&self, incoming: IncomingRequest) {
        let in_dialog = incoming
            .request
            .to_header()
            .map(|t| t.value().to_ascii_lowercase().contains("tag="))
            .unwrap_or(false);
        let r = if in_dialog {
            // stox holds no dialogs: any in-dialog request is for one that does not exist.
            response_to(&incoming.request, 481, None, "")
        } else {
            let mut r = response_to(&incoming.request, 405, None, "");
            r.headers
                .push(Header::Allow(rsipstack::sip::Allow::new(self.allow)));
            r
        };
        incoming.responder.respond(r);
    }
}

/// A body-less message with a chat state other than `gone` as an isComposing document
/// (RFC 7573 Table 4); `None` for anything else.
fn composing_to_sip(msg: &Message) -> Option<String> {
    if msg.get_best_body(vec![]).is_some() {
        return None;
    }
    let state = msg
        .payloads
        .iter()
        .find_map(|p| ChatState::try_from(p.clone()).ok())?;
    let s = iscomposing::xmpp_to_sip(&state)?;
    let mut ic = IsComposing::new(s);
    if s == iscomposing::State::Active {
        ic.refresh = Some(60);
        ic.contenttype = Some("text/plain".into());
    }
    Some(ic.to_xml())
}

fn with_body(msg: &Message, body: String) -> Message {
    let mut m = msg.clone();
    m.bodies.clear();
    m.bodies.insert(String::new().into(), body);
    m
}

/// A MESSAGE carrying isComposing (RFC 3994) as a body-less chat-state message
/// (RFC 7573 Table 3); `None` for other content types or a document that does not parse.
fn composing_to_xmpp(
    request: &rsipstack::sip::Request,
    from: xmpp_parsers::jid::Jid,
    to: xmpp_parsers::jid::Jid,
) -> Option<Message> {
    let ct = crate::sip::dialog::header_value(&request.headers, "Content-Type")?;
    let essence = ct.split(';').next()?.trim();
    if !essence.eq_ignore_ascii_case(iscomposing::CONTENT_TYPE) {
        return None;
    }
    let ic = IsComposing::parse(std::str::from_utf8(&request.body).ok()?).ok()?;
    let mut m = Message::new(Some(to));
    m.from = Some(from);
    m.type_ = MessageType::Chat;
    if let Ok(call_id) = request.call_id_header() {
        m.thread = Some(xmpp_parsers::message::Thread {
            parent: None,
            id: mm::xml_safe(call_id.value()).into_owned(),
        });
    }
    m.payloads.push(iscomposing::sip_to_xmpp(ic.state).into());
    Some(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chat_states_and_iscomposing_map_in_pager_mode() {
        use std::str::FromStr;
        let m = Message::try_from(
            Element::from_str(
                "<message xmlns='jabber:component:accept' type='chat' to='romeo\\40example.net@sip.example.com'>\
                 <composing xmlns='http://jabber.org/protocol/chatstates'/></message>",
            )
            .unwrap(),
        )
        .unwrap();
        let xml = composing_to_sip(&m).unwrap();
        assert_eq!(
            IsComposing::parse(&xml).unwrap().state,
            iscomposing::State::Active
        );
        let mut gone = m.clone();
        gone.payloads = vec![ChatState::Gone.into()];
        assert!(composing_to_sip(&gone).is_none());

        let body = IsComposing::new(iscomposing::State::Idle).to_xml();
        let text = format!(
            "MESSAGE sip:juliet@example.com SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.7;branch=z9hG4bK1\r\n\
             Max-Forwards: 70\r\nFrom: <sip:romeo@example.net>;tag=1\r\nTo: <sip:juliet@example.com>\r\n\
             Call-ID: c1\r\nCSeq: 1 MESSAGE\r\nContent-Type: application/im-iscomposing+xml\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let rsipstack::sip::SipMessage::Request(req) = crate::sip::message::parse(
            text.as_bytes(),
            crate::sip::message::Framing::Datagram,
            65535,
        )
        .unwrap()
        .message
        else {
            panic!()
        };
        let to = xmpp_parsers::jid::Jid::from_str("juliet@example.com").unwrap();
        let from =
            xmpp_parsers::jid::Jid::from_str("romeo\\40example.net@sip.example.com").unwrap();
        let m = composing_to_xmpp(&req, from, to).unwrap();
        let x = String::from(&Element::from(m));
        assert!(
            x.contains("<active xmlns='http://jabber.org/protocol/chatstates'/>"),
            "{x}"
        );
        assert!(
            x.contains("<thread>c1</thread>") && !x.contains("<body"),
            "{x}"
        );
    }

    #[test]
    fn the_raw_request_uri_keeps_its_escapes() {
        let uri = rsipstack::sip::parse_uri("sip:romeo%40home@example.net;user=phone").unwrap();
        assert_eq!(raw_uri(&uri), "sip:romeo%40home@example.net;user=phone");
    }
}
