//! The chat core on a virtual clock: literal SIP and XML in, actions out.

use std::str::FromStr;

use rsipstack::sip::SipMessage;
use xmpp_parsers::minidom::Element;

use super::*;
use crate::sip::message::{parse, Framing};

fn core() -> ChatCore {
    let addresses = AddressMap::new(
        "sip.example.com",
        &["example.com".to_string()],
        &["example.com".to_string()],
        None,
    )
    .unwrap();
    ChatCore::new(
        ChatSettings {
            msrp_host: "gw.example.com".into(),
            msrp_port: 2855,
            contact_host: "gw.example.com:5060".into(),
            ..ChatSettings::default()
        },
        Arc::new(addresses),
    )
}

fn xml(s: &str) -> Message {
    Message::try_from(Element::from_str(s).unwrap()).unwrap()
}

fn chat(id: &str, body: &str, extra: &str) -> Message {
    xml(&format!(
        "<message xmlns='jabber:component:accept' type='chat' id='{id}' \
         from='juliet@example.com/balcony' to='romeo\\40example.net@sip.example.com'>\
         <body>{body}</body>{extra}</message>"
    ))
}

fn state(name: &str) -> Message {
    xml(&format!(
        "<message xmlns='jabber:component:accept' type='chat' \
         from='juliet@example.com/balcony' to='romeo\\40example.net@sip.example.com'>\
         <{name} xmlns='http://jabber.org/protocol/chatstates'/></message>"
    ))
}

fn actions(c: &mut ChatCore) -> Vec<Action> {
    std::iter::from_fn(|| c.poll_action()).collect()
}

fn request(text: &str) -> Request {
    match parse(text.as_bytes(), Framing::Datagram, 65535)
        .unwrap()
        .message
    {
        SipMessage::Request(r) => r,
        _ => panic!("not a request"),
    }
}

fn response(text: &str) -> Response {
    match parse(text.as_bytes(), Framing::Datagram, 65535)
        .unwrap()
        .message
    {
        SipMessage::Response(r) => r,
        _ => panic!("not a response"),
    }
}

fn with_length(head: &str, body: &str) -> String {
    format!("{head}Content-Length: {}\r\n\r\n{body}", body.len())
}

fn romeo_sdp(setup: &str, types: &str) -> String {
    format!(
        "v=0\r\no=romeo 1 1 IN IP4 192.0.2.7\r\ns=-\r\nc=IN IP4 192.0.2.7\r\nt=0 0\r\n\
         m=message 7313 TCP/MSRP *\r\na=accept-types:{types}\r\n\
         a=path:msrp://192.0.2.7:7313/ansp71weztas;tcp\r\n{setup}"
    )
}

/// The 200 for our INVITE, from romeo's UA.
fn ok_for(invite: &Request, sdp: &str) -> Response {
    let h = |n| header_value(&invite.headers, n).unwrap();
    response(&with_length(
        &format!(
            "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP gw.example.com;branch=z9hG4bK1\r\n\
             From: {}\r\nTo: {};tag=r1\r\nCall-ID: {}\r\nCSeq: {}\r\n\
             Contact: <sip:romeo@192.0.2.7:5070>\r\nContent-Type: application/sdp\r\n",
            h("From"),
            h("To"),
            h("Call-ID"),
            h("CSeq")
        ),
        sdp,
    ))
}

fn status_for(invite: &Request, code: u16) -> Response {
    let h = |n| header_value(&invite.headers, n).unwrap();
    response(&with_length(
        &format!(
            "SIP/2.0 {code} Whatever\r\nVia: SIP/2.0/UDP gw.example.com;branch=z9hG4bK1\r\n\
             From: {}\r\nTo: {};tag=r1\r\nCall-ID: {}\r\nCSeq: {}\r\n",
            h("From"),
            h("To"),
            h("Call-ID"),
            h("CSeq")
        ),
        "",
    ))
}

fn romeo_invite(call_id: &str, sdp: &str) -> Request {
    request(&with_length(
        &format!(
            "INVITE sip:juliet@example.com SIP/2.0\r\n\
             Via: SIP/2.0/UDP 192.0.2.7:5070;branch=z9hG4bKr1\r\nMax-Forwards: 70\r\n\
             From: <sip:romeo@example.net>;tag=rt\r\nTo: <sip:juliet@example.com>\r\n\
             Call-ID: {call_id}\r\nCSeq: 1 INVITE\r\nContact: <sip:romeo@192.0.2.7:5070>\r\n\
             Content-Type: application/sdp\r\n"
        ),
        sdp,
    ))
}

fn in_dialog(method: &str, call_id: &str, to_tag: &str, cseq: u32, body: &str) -> Request {
    request(&with_length(
        &format!(
            "{method} sip:stox@gw.example.com:5060 SIP/2.0\r\n\
             Via: SIP/2.0/UDP 192.0.2.7:5070;branch=z9hG4bKr{cseq}\r\nMax-Forwards: 70\r\n\
             From: <sip:romeo@example.net>;tag=rt\r\nTo: <sip:juliet@example.com>;tag={to_tag}\r\n\
             Call-ID: {call_id}\r\nCSeq: {cseq} {method}\r\nContact: <sip:romeo@192.0.2.7:5070>\r\n{}",
            if body.is_empty() { "" } else { "Content-Type: application/sdp\r\n" }
        ),
        body,
    ))
}

fn to_tag(r: &Response) -> String {
    dialog::header_param(&header_value(&r.headers, "To").unwrap(), "tag").unwrap()
}

fn received(tid: &str, ct: &str, body: &str) -> MsrpEvent {
    MsrpEvent::Message(Received {
        message_id: MessageId::new("m-".to_string() + tid).unwrap(),
        transaction_id: TransactionId::new(tid).unwrap(),
        content_type: ct.into(),
        body: Bytes::from(body.to_string()),
        reported: false,
    })
}

/// Juliet writes twice; romeo's UA answers a=setup:passive; stox connects and sends both.
fn xmpp_session_up(c: &mut ChatCore, t0: Instant, types: &str) -> (ChatId, Vec<Outgoing>) {
    c.handle_xmpp(
        t0,
        chat("mid-1", "Art thou not Romeo?", "<thread>th-1</thread>"),
    );
    let a = actions(c);
    assert!(matches!(&a[0], Action::MsrpExpect { .. }), "{a:?}");
    let Action::Invite { id, request } = &a[1] else {
        panic!("{a:?}")
    };
    let (id, invite) = (*id, request.clone());
    assert_eq!(header_value(&invite.headers, "Call-ID").unwrap(), "th-1");
    let offer = String::from_utf8(invite.body.clone()).unwrap();
    assert!(offer.contains("a=setup:actpass"), "{offer}");
    assert!(
        offer.contains("a=path:msrp://gw.example.com:2855/"),
        "{offer}"
    );
    c.handle_xmpp(
        t0,
        chat("mid-2", "and a Montague?", "<thread>th-1</thread>"),
    );
    assert!(actions(c).is_empty(), "queued while the INVITE is out");
    c.handle_invite_response(
        t0,
        id,
        &ok_for(&invite, &romeo_sdp("a=setup:passive\r\n", types)),
    );
    let a = actions(c);
    assert!(matches!(a[0], Action::Ack { .. }), "{a:?}");
    assert!(matches!(a[1], Action::MsrpDrop { .. }), "{a:?}");
    let Action::MsrpConnect {
        host,
        port,
        session,
        ..
    } = &a[2]
    else {
        panic!("{a:?}")
    };
    assert_eq!((host.as_str(), *port), ("192.0.2.7", 7313));
    assert_eq!(
        session.remote()[0].to_string(),
        "msrp://192.0.2.7:7313/ansp71weztas;tcp"
    );
    c.handle_msrp_up(t0, id);
    let sends = actions(c)
        .into_iter()
        .map(|a| match a {
            Action::MsrpSend { message, .. } => message,
            other => panic!("{other:?}"),
        })
        .collect();
    (id, sends)
}

#[test]
fn xmpp_messages_wait_for_the_session_then_go_in_order_with_their_ids() {
    let mut c = core();
    let t0 = Instant::now();
    let (_, sends) = xmpp_session_up(&mut c, t0, "text/plain");
    assert_eq!(sends.len(), 2);
    assert_eq!(&sends[0].body[..], b"Art thou not Romeo?");
    assert_eq!(sends[0].content_type, "text/plain;charset=UTF-8");
    assert_eq!(sends[0].message_id.as_ref().unwrap().as_str(), "mid-1");
    assert_eq!(sends[0].transaction_id.as_ref().unwrap().as_str(), "mid-1");
    assert_eq!(&sends[1].body[..], b"and a Montague?");
    assert!(!sends[0].success_report);
    // Later messages (without a thread too) go straight on the session.
    c.handle_xmpp(t0, chat("mid-3", "Deny thy father", ""));
    let a = actions(&mut c);
    assert!(
        matches!(&a[..], [Action::MsrpSend { message, .. }] if &message.body[..] == b"Deny thy father"),
        "{a:?}"
    );
}

#[test]
fn a_peer_that_takes_only_cpim_gets_cpim() {
    let mut c = core();
    let (_, sends) = xmpp_session_up(&mut c, Instant::now(), "message/cpim");
    assert_eq!(sends[0].content_type, "message/cpim");
    let cpim = Cpim::parse(&sends[0].body).unwrap();
    assert_eq!(cpim.content_type(), Some("text/plain;charset=UTF-8"));
    assert_eq!(&cpim.body[..], b"Art thou not Romeo?");
    assert_eq!(cpim.from().unwrap().uri, "im:juliet@example.com");
    assert_eq!(cpim.to()[0].uri, "im:romeo@example.net");
}

#[test]
fn a_488_falls_back_to_message_in_order_and_is_remembered() {
    let mut c = core();
    let t0 = Instant::now();
    c.handle_xmpp(t0, chat("mid-1", "one", ""));
    let a = actions(&mut c);
    let Action::Invite { id, request } = &a[1] else {
        panic!("{a:?}")
    };
    let (id, invite) = (*id, request.clone());
    c.handle_xmpp(t0, chat("mid-2", "two", ""));
    c.handle_invite_response(t0, id, &status_for(&invite, 488));
    let ids: Vec<String> = actions(&mut c)
        .into_iter()
        .filter_map(|a| match a {
            Action::Pager { message, .. } => Some(message.id.unwrap().0),
            Action::MsrpDrop { .. } => None,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(ids, ["mid-1", "mid-2"]);
    assert_eq!(c.sessions(), 0);
    // Remembered: the next message goes as MESSAGE at once...
    c.handle_xmpp(t0 + Duration::from_secs(60), chat("mid-3", "three", ""));
    assert!(matches!(&actions(&mut c)[..], [Action::Pager { .. }]));
    // ...until the fallback is forgotten.
    let later = t0 + Duration::from_secs(3601);
    c.handle_timeout(later);
    c.handle_xmpp(later, chat("mid-4", "four", ""));
    assert!(matches!(
        &actions(&mut c)[..],
        [Action::MsrpExpect { .. }, Action::Invite { .. }]
    ));
}

#[test]
fn other_refusals_bounce_the_queued_messages() {
    let mut c = core();
    let t0 = Instant::now();
    c.handle_xmpp(t0, chat("mid-1", "one", ""));
    let a = actions(&mut c);
    let Action::Invite { id, request } = &a[1] else {
        panic!("{a:?}")
    };
    c.handle_invite_response(t0, *id, &status_for(request, 404));
    let a = actions(&mut c);
    let bounced: Vec<String> = a
        .iter()
        .filter_map(|a| match a {
            Action::Stanza(m) => Some(String::from(&Element::from(m.clone()))),
            _ => None,
        })
        .collect();
    assert_eq!(bounced.len(), 1, "{a:?}");
    assert!(
        bounced[0].contains("type='error'") && bounced[0].contains("item-not-found"),
        "{}",
        bounced[0]
    );
    assert!(!c.in_fallback(
        t0,
        &Jid::from_str("juliet@example.com").unwrap(),
        &Jid::from_str("romeo\\40example.net@sip.example.com").unwrap()
    ));
}

#[test]
fn an_unanswered_invite_is_cancelled_and_its_messages_go_as_message() {
    let mut c = core();
    let t0 = Instant::now();
    c.handle_xmpp(t0, chat("mid-1", "one", ""));
    let a = actions(&mut c);
    let Action::Invite { id, request } = &a[1] else {
        panic!("{a:?}")
    };
    let (id, invite) = (*id, request.clone());
    assert_eq!(c.poll_timeout(), Some(t0 + Duration::from_secs(32)));
    c.handle_timeout(t0 + Duration::from_secs(32));
    let a = actions(&mut c);
    assert!(
        matches!(
            &a[..],
            [
                Action::Cancel { .. },
                Action::MsrpDrop { .. },
                Action::Pager { .. }
            ]
        ),
        "{a:?}"
    );
    // A 200 that raced the CANCEL is acknowledged and ended.
    c.handle_invite_response(
        t0 + Duration::from_secs(33),
        id,
        &ok_for(&invite, &romeo_sdp("", "text/plain")),
    );
    let a = actions(&mut c);
    assert!(
        matches!(&a[..], [Action::Ack { .. }, Action::Bye { .. }]),
        "{a:?}"
    );
    assert_eq!(c.sessions(), 0);
}

#[test]
fn receipts_come_from_success_reports_and_errors_from_failures() {
    let mut c = core();
    let t0 = Instant::now();
    c.handle_xmpp(
        t0,
        chat(
            "mid-1",
            "Art thou not Romeo?",
            "<request xmlns='urn:xmpp:receipts'/>",
        ),
    );
    let a = actions(&mut c);
    let Action::Invite { id, request } = &a[1] else {
        panic!("{a:?}")
    };
    let (id, invite) = (*id, request.clone());
    c.handle_invite_response(
        t0,
        id,
        &ok_for(&invite, &romeo_sdp("a=setup:active\r\n", "text/plain")),
    );
    let a = actions(&mut c);
    assert!(
        matches!(&a[..], [Action::Ack { .. }]),
        "the peer connects to us: {a:?}"
    );
    c.handle_msrp_up(t0, id);
    let a = actions(&mut c);
    let [Action::MsrpSend { message, .. }] = &a[..] else {
        panic!("{a:?}")
    };
    assert!(message.success_report);
    let mid = message.message_id.clone().unwrap();
    c.handle_msrp_event(
        t0,
        id,
        MsrpEvent::Delivered {
            message_id: mid.clone(),
        },
    );
    c.handle_msrp_event(
        t0,
        id,
        MsrpEvent::Report {
            message_id: mid,
            status: crate::msrp::frame::Status::new(200, "OK"),
            byte_range: crate::msrp::frame::ByteRange::WHOLE,
        },
    );
    let a = actions(&mut c);
    let [Action::Stanza(m)] = &a[..] else {
        panic!("{a:?}")
    };
    let x = String::from(&Element::from(m.clone()));
    assert!(
        x.contains("<received xmlns='urn:xmpp:receipts' id='mid-1'/>"),
        "{x}"
    );
    assert!(x.contains("to='juliet@example.com/balcony'"), "{x}");

    c.handle_xmpp(t0, chat("mid-2", "Deny thy father", ""));
    let a = actions(&mut c);
    let [Action::MsrpSend { message, .. }] = &a[..] else {
        panic!("{a:?}")
    };
    let mid = message.message_id.clone().unwrap();
    c.handle_msrp_event(
        t0,
        id,
        MsrpEvent::Failed {
            message_id: mid,
            failure: Failure::Response {
                code: 413,
                comment: None,
            },
        },
    );
    let a = actions(&mut c);
    let [Action::Stanza(m)] = &a[..] else {
        panic!("{a:?}")
    };
    assert_eq!(m.type_, MessageType::Error);
    assert_eq!(m.id.as_ref().unwrap().0, "mid-2");
}

#[test]
fn chat_states_become_iscomposing_and_gone_ends_the_session() {
    let mut c = core();
    let t0 = Instant::now();
    let (id, _) = xmpp_session_up(&mut c, t0, "text/plain application/im-iscomposing+xml");
    c.handle_xmpp(t0, state("composing"));
    let a = actions(&mut c);
    let [Action::MsrpSend { message, .. }] = &a[..] else {
        panic!("{a:?}")
    };
    assert_eq!(message.content_type, "application/im-iscomposing+xml");
    let ic = IsComposing::parse(std::str::from_utf8(&message.body).unwrap()).unwrap();
    assert_eq!(ic.state, iscomposing::State::Active);
    assert_eq!(ic.refresh, Some(60));
    c.handle_msrp_event(
        t0,
        id,
        received(
            "tid1",
            "application/im-iscomposing+xml",
            &IsComposing::new(iscomposing::State::Active).to_xml(),
        ),
    );
    let a = actions(&mut c);
    let [Action::Deliver {
        stanza: Some(m), ..
    }] = &a[..]
    else {
        panic!("{a:?}")
    };
    let x = String::from(&Element::from(m.clone()));
    assert!(
        x.contains("<composing xmlns='http://jabber.org/protocol/chatstates'/>")
            && !x.contains("<body"),
        "{x}"
    );
    c.handle_xmpp(t0, state("gone"));
    let a = actions(&mut c);
    assert!(
        matches!(&a[..], [Action::Bye { .. }, Action::MsrpClose { .. }]),
        "{a:?}"
    );
    assert_eq!(c.sessions(), 0);
}

#[test]
fn an_idle_session_is_ended_with_bye() {
    let mut c = core();
    let t0 = Instant::now();
    let (_, _) = xmpp_session_up(&mut c, t0, "text/plain");
    assert_eq!(c.poll_timeout(), Some(t0 + Duration::from_secs(600)));
    c.handle_timeout(t0 + Duration::from_secs(599));
    assert!(actions(&mut c).is_empty());
    c.handle_timeout(t0 + Duration::from_secs(600));
    let a = actions(&mut c);
    let [Action::Bye { request, .. }, Action::MsrpClose { .. }] = &a[..] else {
        panic!("{a:?}")
    };
    assert_eq!(request.uri.to_string(), "sip:romeo@192.0.2.7:5070");
    assert_eq!(header_value(&request.headers, "Call-ID").unwrap(), "th-1");
}

#[test]
fn a_sip_invite_is_answered_and_its_sends_become_chat_messages() {
    let mut c = core();
    let t0 = Instant::now();
    let invite = romeo_invite("c1@example.net", &romeo_sdp("", "message/cpim text/plain"));
    let r = c.handle_sip_request(t0, &invite).unwrap();
    assert_eq!(r.status_code.code(), 200);
    let answer = String::from_utf8(r.body.clone()).unwrap();
    assert!(
        answer.contains("a=setup:passive") && answer.contains("a=path:msrp://gw.example.com:2855/"),
        "{answer}"
    );
    let tag = to_tag(&r);
    let a = actions(&mut c);
    let [Action::MsrpExpect { id, session }] = &a[..] else {
        panic!("{a:?}")
    };
    let id = *id;
    assert_eq!(
        session.remote()[0].to_string(),
        "msrp://192.0.2.7:7313/ansp71weztas;tcp"
    );
    assert!(c
        .handle_sip_request(t0, &in_dialog("ACK", "c1@example.net", &tag, 1, ""))
        .is_none());
    c.handle_msrp_up(t0, id);
    assert!(actions(&mut c).is_empty());

    let wrapped = cpim::wrap(
        &cpim::Address::new(None, "im:romeo@example.net"),
        &cpim::Address::new(None, "im:juliet@example.com"),
        None,
        "text/plain",
        b"Neither, fair saint",
    );
    c.handle_msrp_event(
        t0,
        id,
        received(
            "tid7",
            "message/cpim",
            std::str::from_utf8(&wrapped).unwrap(),
        ),
    );
    let a = actions(&mut c);
    let [Action::Deliver {
        stanza: Some(m), ..
    }] = &a[..]
    else {
        panic!("{a:?}")
    };
    let x = String::from(&Element::from(m.clone()));
    assert!(x.contains("type='chat'") && x.contains("id='tid7'"), "{x}");
    assert!(x.contains("<thread>c1@example.net</thread>"), "{x}");
    assert!(x.contains("<body>Neither, fair saint</body>"), "{x}");
    assert!(
        x.contains("from='romeo\\40example.net@sip.example.com'")
            && x.contains("to='juliet@example.com'"),
        "{x}"
    );

    // Juliet's reply on that thread goes back on the session (plain: romeo takes it).
    c.handle_xmpp(
        t0,
        chat("r1", "What's in a name?", "<thread>c1@example.net</thread>"),
    );
    let a = actions(&mut c);
    let [Action::MsrpSend { message, .. }] = &a[..] else {
        panic!("{a:?}")
    };
    assert_eq!(message.content_type, "text/plain;charset=UTF-8");

    // Re-INVITE: the same offer gets our SDP unchanged; another path gets 488.
    let re = c
        .handle_sip_request(
            t0,
            &in_dialog(
                "INVITE",
                "c1@example.net",
                &tag,
                2,
                &romeo_sdp("", "text/plain"),
            ),
        )
        .unwrap();
    assert_eq!(re.status_code.code(), 200);
    assert_eq!(String::from_utf8(re.body.clone()).unwrap(), answer);
    let moved = romeo_sdp("", "text/plain").replace("ansp71weztas", "elsewhere");
    let re = c
        .handle_sip_request(t0, &in_dialog("INVITE", "c1@example.net", &tag, 3, &moved))
        .unwrap();
    assert_eq!(re.status_code.code(), 488);

    // BYE from SIP ends it quietly; a BYE for no dialog gets 481.
    let bye = c
        .handle_sip_request(t0, &in_dialog("BYE", "c1@example.net", &tag, 4, ""))
        .unwrap();
    assert_eq!(bye.status_code.code(), 200);
    let a = actions(&mut c);
    assert!(matches!(&a[..], [Action::MsrpClose { .. }]), "{a:?}");
    let again = c
        .handle_sip_request(t0, &in_dialog("BYE", "c1@example.net", &tag, 5, ""))
        .unwrap();
    assert_eq!(again.status_code.code(), 481);
}

#[test]
fn invites_without_msrp_or_beyond_the_limits_are_refused() {
    let mut c = core();
    let t0 = Instant::now();
    let audio = "v=0\r\no=- 1 1 IN IP4 192.0.2.7\r\ns=-\r\nc=IN IP4 192.0.2.7\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n";
    let r = c
        .handle_sip_request(t0, &romeo_invite("a1", audio))
        .unwrap();
    assert_eq!(r.status_code.code(), 488);
    let r = c
        .handle_sip_request(
            t0,
            &romeo_invite("a2", &romeo_sdp("", "text/plain")).clone(),
        )
        .unwrap();
    assert_eq!(r.status_code.code(), 200);
    let mut one = core();
    one.settings.max_per_user = 1;
    assert_eq!(
        one.handle_sip_request(t0, &romeo_invite("b1", &romeo_sdp("", "text/plain")))
            .unwrap()
            .status_code
            .code(),
        200
    );
    assert_eq!(
        one.handle_sip_request(t0, &romeo_invite("b2", &romeo_sdp("", "text/plain")))
            .unwrap()
            .status_code
            .code(),
        486
    );
    actions(&mut one);
    // Beyond the limit, juliet's new conversations go as MESSAGE rather than being lost.
    one.handle_xmpp(t0, chat("mid-1", "hello", "<thread>another</thread>"));
    let a = actions(&mut one);
    assert!(matches!(a.last(), Some(Action::Pager { .. })), "{a:?}");
}

#[test]
fn a_session_whose_msrp_never_connects_falls_back() {
    let mut c = core();
    let t0 = Instant::now();
    c.handle_xmpp(t0, chat("mid-1", "one", ""));
    let a = actions(&mut c);
    let Action::Invite { id, request } = &a[1] else {
        panic!("{a:?}")
    };
    let (id, invite) = (*id, request.clone());
    let t1 = t0 + Duration::from_secs(1);
    c.handle_invite_response(
        t1,
        id,
        &ok_for(&invite, &romeo_sdp("a=setup:active\r\n", "text/plain")),
    );
    actions(&mut c);
    c.handle_timeout(t1 + Duration::from_secs(32));
    let a = actions(&mut c);
    assert!(
        matches!(
            &a[..],
            [
                Action::Bye { .. },
                Action::MsrpDrop { .. },
                Action::Pager { .. }
            ]
        ),
        "{a:?}"
    );
}

#[test]
fn with_when_available_an_invite_for_a_user_not_known_available_gets_480() {
    let addresses = AddressMap::new(
        "sip.example.com",
        &["example.com".to_string()],
        &["example.com".to_string()],
        None,
    )
    .unwrap();
    let mut c = ChatCore::new(
        ChatSettings {
            msrp_host: "gw.example.com".into(),
            contact_host: "gw.example.com:5060".into(),
            answer: ChatAnswer::WhenAvailable,
            ..ChatSettings::default()
        },
        Arc::new(addresses),
    );
    let availability = crate::presence::Availability::new();
    c.set_availability(availability.clone());
    let t0 = Instant::now();
    let sdp = romeo_sdp("", "text/plain");
    let r = c.handle_sip_request(t0, &romeo_invite("w1", &sdp)).unwrap();
    assert_eq!(r.status_code.code(), 480);
    assert_eq!(c.sessions(), 0);
    assert!(actions(&mut c).is_empty());
    // Someone else being available does not help juliet.
    availability.set("romeo@example.com", true);
    let r = c.handle_sip_request(t0, &romeo_invite("w2", &sdp)).unwrap();
    assert_eq!(r.status_code.code(), 480);
    availability.set("juliet@example.com", true);
    let r = c.handle_sip_request(t0, &romeo_invite("w3", &sdp)).unwrap();
    assert_eq!(r.status_code.code(), 200);
    assert_eq!(c.sessions(), 1);
    availability.set("juliet@example.com", false);
    let r = c.handle_sip_request(t0, &romeo_invite("w4", &sdp)).unwrap();
    assert_eq!(r.status_code.code(), 480);
}

#[test]
fn by_default_an_invite_is_answered_without_looking_at_availability() {
    let mut c = core();
    let r = c
        .handle_sip_request(
            Instant::now(),
            &romeo_invite("a1", &romeo_sdp("", "text/plain")),
        )
        .unwrap();
    assert_eq!(r.status_code.code(), 200);
}

#[test]
fn an_invite_with_a_body_of_an_unknown_type_gets_415_naming_sdp() {
    // RFC 3261 8.2.3 and RFC 4475 3.3.6 (invut).
    let mut c = core();
    let t0 = Instant::now();
    let invite = romeo_invite("u1", "<audio>\r\n <pcmu port=\"443\"/>\r\n</audio>\r\n");
    let text = invite.to_string().replace(
        "Content-Type: application/sdp",
        "Content-Type: application/unknownformat",
    );
    let r = c.handle_sip_request(t0, &request(&text)).unwrap();
    assert_eq!(r.status_code.code(), 415);
    assert_eq!(
        header_value(&r.headers, "Accept").as_deref(),
        Some("application/sdp")
    );
    // With parameters the type is still SDP: it gets past this check to the offer.
    let text = invite.to_string().replace(
        "Content-Type: application/sdp",
        "Content-Type: Application/SDP; x=1",
    );
    let r = c.handle_sip_request(t0, &request(&text)).unwrap();
    assert_eq!(r.status_code.code(), 488);
}
