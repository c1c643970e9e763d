//! The presence core on a virtual clock: literal SIP and XML in, actions out.

use std::str::FromStr;

use rsipstack::sip::SipMessage;
use xmpp_parsers::minidom::Element;

use super::*;
use crate::sip::message::{parse, Framing};

const T0: Millis = 1_800_000_000_000;

fn core(tweak: impl FnOnce(&mut PresenceSettings)) -> PresenceCore {
    let mut s = PresenceSettings {
        contact: "sip:stox@192.0.2.1:5060".into(),
        ..PresenceSettings::default()
    };
    tweak(&mut s);
    let map = AddressMap::new(
        "sip.example.com",
        &["example.com".into()],
        &["example.com".into()],
        None,
    )
    .unwrap();
    PresenceCore::new(s, Arc::new(map))
}

fn presence(xml: &str) -> Presence {
    Presence::try_from(Element::from_str(xml).unwrap()).unwrap()
}

fn sip(text: &str) -> SipMessage {
    parse(text.as_bytes(), Framing::Datagram, 65535)
        .unwrap()
        .message
}

fn req(text: &str) -> Request {
    match sip(text) {
        SipMessage::Request(r) => r,
        _ => panic!(),
    }
}

fn resp(text: &str) -> Response {
    match sip(text) {
        SipMessage::Response(r) => r,
        _ => panic!(),
    }
}

fn next_at(c: &PresenceCore) -> Millis {
    c.outbound("juliet@example.com", "sip:romeo@example.net")
        .unwrap()
        .next_at
}

#[derive(Default, Debug)]
struct Out {
    stanzas: Vec<String>,
    sip: Vec<(u64, Request, bool)>,
    saves: Vec<(String, &'static str, String)>,
    deletes: Vec<String>,
}

fn drain(c: &mut PresenceCore) -> Out {
    let mut o = Out::default();
    while let Some(a) = c.poll_action() {
        match a {
            Action::Stanza(p) => o.stanzas.push(String::from(&Element::from(p))),
            Action::Sip {
                token,
                request,
                in_dialog,
            } => o.sip.push((token, request, in_dialog)),
            Action::Save { id, kind, data, .. } => o.saves.push((id, kind, data)),
            Action::Delete(id) => o.deletes.push(id),
        }
    }
    o
}

const JULIET_SUBSCRIBES: &str = "<presence xmlns='jabber:component:accept' type='subscribe' \
    from='juliet@example.com/balcony' to='romeo\\40example.net@sip.example.com'/>";

fn pidf_open(note: &str) -> String {
    format!(
        "<?xml version='1.0' encoding='UTF-8'?><presence xmlns='urn:ietf:params:xml:ns:pidf' \
         entity='pres:romeo@example.net'><tuple id='ID-orchard'><status><basic>open</basic>\
         </status><contact>sip:romeo@example.net;gr=orchard</contact><note>{note}</note></tuple></presence>"
    )
}

/// A NOTIFY from romeo in the dialog of `subscribe`.
fn notify(subscribe: &Request, cseq: u32, state: &str, body: &str) -> Request {
    let h = &subscribe.headers;
    let from = header_value(h, "From").unwrap();
    let call_id = header_value(h, "Call-ID").unwrap();
    let ctype = if body.is_empty() {
        ""
    } else {
        "Content-Type: application/pidf+xml\r\n"
    };
    req(&format!(
        "NOTIFY sip:stox@192.0.2.1:5060 SIP/2.0\r\n\
         Via: SIP/2.0/UDP 198.51.100.7;branch=z9hG4bKn{cseq}\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:romeo@example.net>;tag=r9\r\n\
         To: {from}\r\n\
         Call-ID: {call_id}\r\n\
         CSeq: {cseq} NOTIFY\r\n\
         Contact: <sip:romeo@198.51.100.7>\r\n\
         Event: presence\r\n\
         Subscription-State: {state}\r\n\
         {ctype}Content-Length: {}\r\n\r\n{body}",
        body.len()
    ))
}

fn ok_for(r: &Request, extra: &str) -> Response {
    let h = &r.headers;
    resp(&format!(
        "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKx\r\n\
         From: {}\r\nTo: {};tag=r9\r\nCall-ID: {}\r\nCSeq: {}\r\n{extra}Content-Length: 0\r\n\r\n",
        header_value(h, "From").unwrap(),
        header_value(h, "To").unwrap(),
        header_value(h, "Call-ID").unwrap(),
        header_value(h, "CSeq").unwrap(),
    ))
}

/// juliet subscribes, the SUBSCRIBE gets 200, the first NOTIFY is active.
fn subscribed(c: &mut PresenceCore) -> Request {
    c.handle_xmpp(T0, presence(JULIET_SUBSCRIBES));
    let out = drain(c);
    let (token, subscribe, in_dialog) = out.sip.into_iter().next().expect("a SUBSCRIBE");
    assert!(!in_dialog);
    c.handle_sip_result(
        T0 + 50,
        token,
        SipResult::Response(ok_for(&subscribe, "Expires: 3600\r\n")),
    );
    let r = c
        .handle_sip_request(
            T0 + 60,
            &notify(
                &subscribe,
                1,
                "active;expires=3600",
                &pidf_open("In the orchard"),
            ),
        )
        .unwrap();
    assert_eq!(r.status_code.code(), 200);
    subscribe
}

#[test]
fn a_subscribe_goes_out_neutral_and_the_first_active_notify_says_subscribed() {
    let mut c = core(|_| {});
    c.handle_xmpp(T0, presence(JULIET_SUBSCRIBES));
    let out = drain(&mut c);
    assert!(
        out.stanzas.is_empty(),
        "neutral until the first NOTIFY: {:?}",
        out.stanzas
    );
    assert_eq!(out.saves.len(), 1, "written before it is sent");
    let (token, s, _) = &out.sip[0];
    let text = s.to_string();
    assert!(
        text.starts_with("SUBSCRIBE sip:romeo@example.net SIP/2.0\r\n"),
        "{text}"
    );
    for h in [
        "From: <sip:juliet@example.com>;tag=",
        "To: <sip:romeo@example.net>",
        "Event: presence",
        "Accept: application/pidf+xml",
        "Expires: 3600",
        "Contact: <sip:stox@192.0.2.1:5060>",
    ] {
        assert!(text.contains(h), "{h} missing in {text}");
    }
    c.handle_sip_result(
        T0 + 50,
        *token,
        SipResult::Response(ok_for(s, "Expires: 3600\r\n")),
    );
    assert!(drain(&mut c).stanzas.is_empty());
    let n = notify(s, 1, "active;expires=3600", &pidf_open("In the orchard"));
    assert_eq!(
        c.handle_sip_request(T0 + 60, &n)
            .unwrap()
            .status_code
            .code(),
        200
    );
    let out = drain(&mut c);
    assert!(
        out.stanzas[0].contains("type='subscribed'"),
        "{:?}",
        out.stanzas
    );
    assert!(
        out.stanzas[1].contains("from='romeo\\40example.net@sip.example.com/orchard'"),
        "{:?}",
        out.stanzas
    );
    assert!(
        out.stanzas[1].contains("In the orchard"),
        "{:?}",
        out.stanzas
    );
    // A second active NOTIFY does not say subscribed again.
    let n = notify(s, 2, "active;expires=3600", &pidf_open("Still here"));
    c.handle_sip_request(T0 + 70, &n).unwrap();
    let out = drain(&mut c);
    assert_eq!(out.stanzas.len(), 1);
    assert!(!out.stanzas[0].contains("subscribed"));
}

#[test]
fn the_refresh_comes_before_expiry_after_a_probe_and_goes_in_the_dialog() {
    let mut c = core(|s| s.seen_window_ms = 0);
    let s = subscribed(&mut c);
    drain(&mut c);
    let refresh_at = T0 + 60 + 3240 * 1000;
    assert_eq!(
        next_at(&c),
        refresh_at,
        "90% of the interval, from the NOTIFY's expires"
    );
    assert!(c.poll_timeout().unwrap() <= refresh_at);
    c.handle_timeout(refresh_at - 1);
    assert!(drain(&mut c).stanzas.is_empty());
    c.handle_timeout(refresh_at);
    let out = drain(&mut c);
    assert!(
        out.sip.is_empty(),
        "no refresh before the probe is answered"
    );
    assert_eq!(out.stanzas.len(), 1);
    assert!(
        out.stanzas[0].contains("type='probe'")
            && out.stanzas[0].contains("from='sip.example.com'")
            && out.stanzas[0].contains("to='juliet@example.com'"),
        "{:?}",
        out.stanzas
    );
    // The user's server answers: refresh inside the dialog.
    c.handle_xmpp(refresh_at + 5, presence("<presence xmlns='jabber:component:accept' from='juliet@example.com/balcony' to='sip.example.com'/>"));
    let out = drain(&mut c);
    let (_, r, in_dialog) = &out.sip[0];
    assert!(*in_dialog);
    let text = r.to_string();
    assert!(
        text.starts_with("SUBSCRIBE sip:romeo@198.51.100.7 SIP/2.0"),
        "{text}"
    );
    assert!(
        text.contains(";tag=r9")
            && text.contains("CSeq: 2 SUBSCRIBE")
            && text.contains("Expires: 3600"),
        "{text}"
    );
    assert_eq!(
        header_value(&r.headers, "Call-ID"),
        header_value(&s.headers, "Call-ID")
    );
}

#[test]
fn without_an_answer_to_the_probe_the_subscription_sleeps_until_the_users_next_login() {
    let mut c = core(|s| s.seen_window_ms = 0);
    subscribed(&mut c);
    drain(&mut c);
    let refresh_at = next_at(&c);
    c.handle_timeout(refresh_at);
    drain(&mut c);
    c.handle_timeout(refresh_at + 10_000);
    let out = drain(&mut c);
    let (_, r, _) = &out.sip[0];
    assert!(
        r.to_string().contains("Expires: 0"),
        "the SIP side is let go"
    );
    assert!(
        out.stanzas.iter().any(|s| s.contains("type='unavailable'")),
        "{:?}",
        out.stanzas
    );
    assert_eq!(
        c.outbound("juliet@example.com", "sip:romeo@example.net")
            .unwrap()
            .state,
        OutState::Dormant
    );
    // juliet logs in: her server probes the contact; stox subscribes again.
    c.handle_xmpp(
        refresh_at + 60_000,
        presence(
            "<presence xmlns='jabber:component:accept' type='probe' \
        from='juliet@example.com' to='romeo\\40example.net@sip.example.com'/>",
        ),
    );
    let out = drain(&mut c);
    assert!(
        out.stanzas.iter().any(|s| s.contains("type='unavailable'")),
        "the probe is answered"
    );
    assert!(
        out.sip[0].1.to_string().contains("Expires: 3600") && !out.sip[0].2,
        "a new SUBSCRIBE"
    );
}

#[test]
fn a_recently_seen_user_is_refreshed_without_waiting() {
    let mut c = core(|_| {});
    subscribed(&mut c);
    drain(&mut c);
    let refresh_at = next_at(&c);
    c.handle_timeout(refresh_at);
    let out = drain(&mut c);
    assert!(
        out.stanzas.iter().any(|s| s.contains("type='probe'")),
        "still probed"
    );
    assert!(out.sip[0].1.to_string().contains("Expires: 3600") && out.sip[0].2);
}

#[test]
fn unsubscribe_ends_the_sip_side_and_answers_unsubscribed() {
    let mut c = core(|_| {});
    subscribed(&mut c);
    drain(&mut c);
    c.handle_xmpp(
        T0 + 100,
        presence(
            "<presence xmlns='jabber:component:accept' type='unsubscribe' \
        from='juliet@example.com/balcony' to='romeo\\40example.net@sip.example.com'/>",
        ),
    );
    let out = drain(&mut c);
    assert!(out.sip[0].1.to_string().contains("Expires: 0"));
    assert!(out.stanzas[0].contains("type='unsubscribed'"));
    assert_eq!(out.deletes.len(), 1);
    assert_eq!(c.counts(), (0, 0));
}

#[test]
fn a_rejected_subscription_is_unsubscribed_and_a_timeout_one_is_renewed() {
    let mut c = core(|_| {});
    let s = subscribed(&mut c);
    drain(&mut c);
    c.handle_sip_request(T0 + 100, &notify(&s, 2, "terminated;reason=timeout", ""))
        .unwrap();
    let out = drain(&mut c);
    assert!(!out.sip[0].2, "a new SUBSCRIBE, outside the old dialog");
    let s2 = out.sip[0].1.clone();
    assert_ne!(
        header_value(&s2.headers, "Call-ID"),
        header_value(&s.headers, "Call-ID")
    );
    c.handle_sip_request(T0 + 200, &notify(&s2, 1, "terminated;reason=rejected", ""))
        .unwrap();
    let out = drain(&mut c);
    assert!(
        out.stanzas
            .iter()
            .any(|s| s.contains("type='unsubscribed'")),
        "{:?}",
        out.stanzas
    );
    assert_eq!(c.counts(), (0, 0));
}

#[test]
fn notifies_that_do_not_fit_are_refused() {
    let mut c = core(|_| {});
    let s = subscribed(&mut c);
    drain(&mut c);
    let bad = notify(&s, 3, "active;expires=3600", "<presence xmlns='nope'/>");
    assert_eq!(
        c.handle_sip_request(T0, &bad).unwrap().status_code.code(),
        400
    );
    assert!(
        drain(&mut c).stanzas.is_empty(),
        "no stanza for a malformed PIDF"
    );
    let stranger = notify(&s, 4, "active", "")
        .to_string()
        .replace("Call-ID: ", "Call-ID: x");
    assert_eq!(
        c.handle_sip_request(T0, &req(&stranger))
            .unwrap()
            .status_code
            .code(),
        481
    );
    let other_event = notify(&s, 5, "active", "")
        .to_string()
        .replace("Event: presence", "Event: dialog");
    assert_eq!(
        c.handle_sip_request(T0, &req(&other_event))
            .unwrap()
            .status_code
            .code(),
        489
    );
}

const ROMEO_WATCHES: &str = "SUBSCRIBE sip:juliet@example.com SIP/2.0\r\n\
    Via: SIP/2.0/UDP 198.51.100.7;branch=z9hG4bKw1\r\n\
    Max-Forwards: 70\r\n\
    From: <sip:romeo@example.net>;tag=w1\r\n\
    To: <sip:juliet@example.com>\r\n\
    Call-ID: watch1@example.net\r\n\
    CSeq: 1 SUBSCRIBE\r\n\
    Contact: <sip:romeo@198.51.100.7>\r\n\
    Event: presence\r\n\
    Accept: application/pidf+xml\r\n\
    Expires: 600\r\n\
    Content-Length: 0\r\n\r\n";

#[test]
fn a_sip_watcher_is_pending_until_juliet_approves_then_notified_and_expired() {
    let mut c = core(|_| {});
    let r = c.handle_sip_request(T0, &req(ROMEO_WATCHES)).unwrap();
    assert_eq!(r.status_code.code(), 200);
    assert_eq!(header_value(&r.headers, "Expires").as_deref(), Some("600"));
    let out = drain(&mut c);
    let (t1, n1, _) = &out.sip[0];
    assert!(n1
        .to_string()
        .contains("Subscription-State: pending;expires=600"));
    assert!(n1.body.is_empty(), "pending tells nothing of juliet");
    assert!(
        out.stanzas[0].contains("type='subscribe'")
            && out.stanzas[0].contains("from='romeo\\40example.net@sip.example.com'")
    );
    // juliet approves, then her presence follows at once: one NOTIFY after the first is answered.
    c.handle_xmpp(T0 + 10, presence("<presence xmlns='jabber:component:accept' type='subscribed' from='juliet@example.com' to='romeo\\40example.net@sip.example.com'/>"));
    c.handle_xmpp(T0 + 12, presence("<presence xmlns='jabber:component:accept' from='juliet@example.com/balcony' to='romeo\\40example.net@sip.example.com'><show>away</show><status>On the balcony</status></presence>"));
    c.handle_timeout(T0 + 200);
    assert!(drain(&mut c).sip.is_empty(), "one NOTIFY at a time");
    c.handle_sip_result(T0 + 300, *t1, SipResult::Response(ok_for(n1, "")));
    let out = drain(&mut c);
    let (t2, n2, _) = &out.sip[0];
    let text = String::from_utf8_lossy(&n2.body).into_owned();
    assert!(
        n2.to_string()
            .contains("Subscription-State: active;expires="),
        "{n2}"
    );
    assert!(
        text.contains("<basic>open</basic>")
            && text.contains("On the balcony")
            && text.contains("away"),
        "{text}"
    );
    c.handle_sip_result(T0 + 400, *t2, SipResult::Response(ok_for(n2, "")));
    // Expiry without refresh: terminated;reason=timeout, and the XMPP side is kept.
    c.handle_timeout(T0 + 600_000);
    let out = drain(&mut c);
    assert!(out.sip[0]
        .1
        .to_string()
        .contains("Subscription-State: terminated;reason=timeout"));
    assert!(
        out.stanzas.is_empty(),
        "the XMPP subscription stays by default"
    );
    assert_eq!(c.counts(), (0, 0));
}

#[test]
fn watchers_asking_for_the_wrong_thing_are_refused() {
    let mut c = core(|_| {});
    let dialog_event = ROMEO_WATCHES.replace("Event: presence", "Event: dialog");
    assert_eq!(
        c.handle_sip_request(T0, &req(&dialog_event))
            .unwrap()
            .status_code
            .code(),
        489
    );
    let short = ROMEO_WATCHES.replace("Expires: 600", "Expires: 5");
    assert_eq!(
        c.handle_sip_request(T0, &req(&short))
            .unwrap()
            .status_code
            .code(),
        423
    );
    let stranger =
        ROMEO_WATCHES.replace("sip:juliet@example.com SIP", "sip:juliet@elsewhere.org SIP");
    assert_eq!(
        c.handle_sip_request(T0, &req(&stranger))
            .unwrap()
            .status_code
            .code(),
        404
    );
    let lost = ROMEO_WATCHES.replace(
        "To: <sip:juliet@example.com>",
        "To: <sip:juliet@example.com>;tag=gone",
    );
    assert_eq!(
        c.handle_sip_request(T0, &req(&lost))
            .unwrap()
            .status_code
            .code(),
        481
    );
}

#[test]
fn limits_give_resource_constraint_and_503() {
    let mut c = core(|s| s.max_per_user = 1);
    subscribed(&mut c);
    drain(&mut c);
    c.handle_xmpp(
        T0,
        presence(
            "<presence xmlns='jabber:component:accept' type='subscribe' id='s2' \
        from='juliet@example.com/balcony' to='tybalt\\40example.net@sip.example.com'/>",
        ),
    );
    let out = drain(&mut c);
    assert!(out.sip.is_empty());
    assert!(
        out.stanzas[0].contains("type='error'") && out.stanzas[0].contains("resource-constraint"),
        "{:?}",
        out.stanzas
    );
    let r = c.handle_sip_request(T0, &req(ROMEO_WATCHES)).unwrap();
    assert_eq!(r.status_code.code(), 503);
    assert!(header_value(&r.headers, "Retry-After").is_some());
}

#[test]
fn after_a_restart_every_subscription_is_refreshed_from_the_store() {
    let mut c = core(|_| {});
    subscribed(&mut c);
    c.handle_sip_request(T0, &req(ROMEO_WATCHES)).unwrap();
    let saved = drain(&mut c).saves;
    // The last save of each row is what the store holds.
    let mut rows: HashMap<String, (&'static str, String)> = HashMap::new();
    for (id, kind, data) in saved {
        rows.insert(id, (kind, data));
    }
    let mut again = core(|_| {});
    let later = T0 + 300_000;
    for (kind, data) in rows.values() {
        again.restore(later, kind, data);
    }
    assert_eq!(again.counts(), (1, 1));
    let out = drain(&mut again);
    assert!(
        out.stanzas.iter().any(|s| s.contains("type='probe'")
            && s.contains("from='romeo\\40example.net@sip.example.com'")),
        "the watched user is probed for current presence: {:?}",
        out.stanzas
    );
    again.handle_timeout(later);
    let out = drain(&mut again);
    let (_, r, in_dialog) = out
        .sip
        .iter()
        .find(|(_, r, _)| r.method == Method::Subscribe)
        .expect("a refresh");
    assert!(
        *in_dialog && r.to_string().contains("SUBSCRIBE sip:romeo@198.51.100.7"),
        "{r}"
    );
}

mod fuzz {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Step {
        Subscribe(u8),
        Unsubscribe(u8),
        Probe(u8),
        Available(u8, u8),
        Unavailable(u8),
        Approve(u8),
        Deny(u8),
        Notify(u8, u8, Vec<u8>),
        Watch(u8, u32),
        Result(u16, bool),
        Wait(u32),
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            any::<u8>().prop_map(Step::Subscribe),
            any::<u8>().prop_map(Step::Unsubscribe),
            any::<u8>().prop_map(Step::Probe),
            (any::<u8>(), any::<u8>()).prop_map(|(a, b)| Step::Available(a, b)),
            any::<u8>().prop_map(Step::Unavailable),
            any::<u8>().prop_map(Step::Approve),
            any::<u8>().prop_map(Step::Deny),
            (
                any::<u8>(),
                any::<u8>(),
                proptest::collection::vec(any::<u8>(), 0..64)
            )
                .prop_map(|(a, b, c)| Step::Notify(a, b, c)),
            (any::<u8>(), 0u32..100_000).prop_map(|(a, e)| Step::Watch(a, e)),
            (100u16..700, any::<bool>()).prop_map(|(c, f)| Step::Result(c, f)),
            (0u32..4_000_000).prop_map(Step::Wait),
        ]
    }

    const STATES: [&str; 6] = [
        "active;expires=600",
        "pending",
        "terminated;reason=timeout",
        "terminated;reason=probation;retry-after=5",
        "terminated;reason=rejected",
        "bogus;;",
    ];

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]
        /// Any order of stanzas, requests, results and time: no panic, and the counts stay
        /// within the limits.
        #[test]
        fn any_sequence_is_survived(steps in proptest::collection::vec(step(), 1..40)) {
            let mut c = core(|s| { s.max_per_user = 3; s.max_total = 5; });
            let mut now = T0;
            let mut subscribes: Vec<Request> = Vec::new();
            let mut tokens: Vec<(u64, Request)> = Vec::new();
            for s in steps {
                let contact = |n: u8| format!("user{}\\40example.net@sip.example.com", n % 4);
                let p = |t: &str, n: u8| presence(&format!(
                    "<presence xmlns='jabber:component:accept' {t} from='juliet@example.com/r{}' to='{}'/>", n % 3, contact(n)));
                match s {
                    Step::Subscribe(n) => c.handle_xmpp(now, p("type='subscribe'", n)),
                    Step::Unsubscribe(n) => c.handle_xmpp(now, p("type='unsubscribe'", n)),
                    Step::Probe(n) => c.handle_xmpp(now, p("type='probe'", n)),
                    Step::Available(n, show) => {
                        let show = ["", "<show>away</show>", "<show>dnd</show>", "<status>x</status>"][show as usize % 4];
                        c.handle_xmpp(now, presence(&format!(
                            "<presence xmlns='jabber:component:accept' from='juliet@example.com/r{}' to='{}'>{show}</presence>",
                            n % 3,
                            contact(n)
                        )))
                    }
                    Step::Unavailable(n) => c.handle_xmpp(now, p("type='unavailable'", n)),
                    Step::Approve(n) => c.handle_xmpp(now, p("type='subscribed'", n)),
                    Step::Deny(n) => c.handle_xmpp(now, p("type='unsubscribed'", n)),
                    Step::Notify(n, st, body) => {
                        if let Some(s) = subscribes.get(n as usize % subscribes.len().max(1)) {
                            let body = String::from_utf8_lossy(&body).into_owned();
                            let state = STATES[st as usize % STATES.len()];
                            let n = notify(s, u32::from(st), state, &body);
                            let r = c.handle_sip_request(now, &n);
                            prop_assert!(r.is_some());
                        }
                    }
                    Step::Watch(n, e) => {
                        let w = ROMEO_WATCHES
                            .replace("romeo@", &format!("w{}@", n % 4))
                            .replace("Expires: 600", &format!("Expires: {e}"));
                        prop_assert!(c.handle_sip_request(now, &req(&w)).is_some());
                    }
                    Step::Result(code, failed) => {
                        if let Some((t, r)) = tokens.pop() {
                            let result = if failed {
                                SipResult::Failed
                            } else {
                                let mut ok = ok_for(&r, "Expires: 60\r\n");
                                ok.status_code = rsipstack::sip::StatusCode::from(code);
                                SipResult::Response(ok)
                            };
                            c.handle_sip_result(now, t, result);
                        }
                    }
                    Step::Wait(ms) => {
                        now += u64::from(ms);
                        c.handle_timeout(now);
                    }
                }
                let out = drain(&mut c);
                for (t, r, _) in out.sip {
                    if r.method == Method::Subscribe {
                        subscribes.push(r.clone());
                    }
                    tokens.push((t, r));
                }
                let (o, i) = c.counts();
                prop_assert!(o + i <= 5);
            }
        }
    }
}

#[test]
fn availability_follows_presence_to_contacts_and_to_the_gateway_domain() {
    let mut c = core(|_| {});
    let user = "juliet@example.com";
    assert!(!c.is_available(user));
    // Directed presence to the gateway's domain, per resource.
    c.handle_xmpp(T0, presence("<presence xmlns='jabber:component:accept' from='juliet@example.com/balcony' to='sip.example.com'/>"));
    assert!(c.is_available(user));
    c.handle_xmpp(T0 + 1, presence("<presence xmlns='jabber:component:accept' from='juliet@example.com/garden' to='sip.example.com'/>"));
    c.handle_xmpp(T0 + 2, presence("<presence xmlns='jabber:component:accept' type='unavailable' from='juliet@example.com/balcony' to='sip.example.com'/>"));
    assert!(c.is_available(user), "the garden resource is still there");
    c.handle_xmpp(T0 + 3, presence("<presence xmlns='jabber:component:accept' type='unavailable' from='juliet@example.com/garden' to='sip.example.com'/>"));
    assert!(!c.is_available(user));
    // Presence to a contact JID at the gateway.
    c.handle_xmpp(T0 + 4, presence("<presence xmlns='jabber:component:accept' from='juliet@example.com/balcony' to='romeo\\40example.net@sip.example.com'><show>away</show></presence>"));
    assert!(c.is_available(user));
    c.handle_xmpp(T0 + 5, presence("<presence xmlns='jabber:component:accept' type='unavailable' from='juliet@example.com/balcony' to='romeo\\40example.net@sip.example.com'/>"));
    assert!(!c.is_available(user));
    assert!(!c.is_available("romeo@example.com"));
}

/// A SUBSCRIBE from `who`@example.net for juliet, through a Record-Routing proxy.
fn watches(who: &str) -> String {
    ROMEO_WATCHES
        .replace("romeo", who)
        .replace("watch1@", &format!("watch-{who}@"))
        .replace(
            "Content-Length: 0",
            "Record-Route: <sip:p1.example.com;lr>\r\nContent-Length: 0",
        )
}

/// Every NOTIFY stox sends is answered at once; returns them.
fn answer_notifies(c: &mut PresenceCore, now: Millis) -> Vec<Request> {
    let mut seen = Vec::new();
    loop {
        c.handle_timeout(now);
        let out = drain(c);
        if out.sip.is_empty() {
            return seen;
        }
        for (t, r, in_dialog) in out.sip {
            assert!(in_dialog && r.method == Method::Notify, "{r}");
            c.handle_sip_result(now, t, SipResult::Response(ok_for(&r, "")));
            seen.push(r);
        }
    }
}

#[test]
fn the_2xx_to_a_watchers_subscribe_keeps_the_record_route_and_notifies_follow_it() {
    let mut c = core(|_| {});
    let r = c.handle_sip_request(T0, &req(&watches("romeo"))).unwrap();
    assert_eq!(r.status_code.code(), 200);
    assert_eq!(
        header_value(&r.headers, "Record-Route").as_deref(),
        Some("<sip:p1.example.com;lr>")
    );
    let notifies = answer_notifies(&mut c, T0 + 1);
    assert_eq!(
        header_value(&notifies[0].headers, "Route").as_deref(),
        Some("<sip:p1.example.com;lr>")
    );
    assert_eq!(notifies[0].uri.to_string(), "sip:romeo@198.51.100.7");
}

#[test]
fn every_watcher_learns_juliets_presence_whichever_contact_the_stanza_is_addressed_to() {
    let mut c = core(|_| {});
    for who in ["romeo", "mercutio"] {
        c.handle_sip_request(T0, &req(&watches(who))).unwrap();
        let approve = format!("<presence xmlns='jabber:component:accept' type='subscribed' from='juliet@example.com' to='{who}\\40example.net@sip.example.com'/>");
        c.handle_xmpp(T0 + 1, presence(&approve));
    }
    answer_notifies(&mut c, T0 + 500);
    // Her server fans her presence out: one stanza per contact, one after the other.
    let mut now = T0 + 1000;
    for (kind, basic) in [("", "open"), (" type='unavailable'", "closed")] {
        for who in ["romeo", "mercutio"] {
            c.handle_xmpp(now, presence(&format!("<presence xmlns='jabber:component:accept'{kind} from='juliet@example.com/balcony' to='{who}\\40example.net@sip.example.com'/>")));
        }
        now += 500;
        let notifies = answer_notifies(&mut c, now);
        let mut to: Vec<String> = notifies
            .iter()
            .map(|n| {
                assert!(
                    String::from_utf8_lossy(&n.body).contains(&format!("<basic>{basic}</basic>")),
                    "{n}"
                );
                n.uri.to_string()
            })
            .collect();
        to.sort();
        assert_eq!(
            to,
            ["sip:mercutio@198.51.100.7", "sip:romeo@198.51.100.7"],
            "{basic}"
        );
    }
    // Nothing changed: no NOTIFY.
    c.handle_xmpp(now, presence("<presence xmlns='jabber:component:accept' type='unavailable' from='juliet@example.com/balcony' to='romeo\\40example.net@sip.example.com'/>"));
    assert!(answer_notifies(&mut c, now + 500).is_empty());
}

fn juliet_unsubscribes(c: &mut PresenceCore, now: Millis) -> Request {
    c.handle_xmpp(
        now,
        presence(
            "<presence xmlns='jabber:component:accept' type='unsubscribe' \
        from='juliet@example.com/balcony' to='romeo\\40example.net@sip.example.com'/>",
        ),
    );
    let out = drain(c);
    let (token, unsubscribe, _) = out.sip.into_iter().next().expect("SUBSCRIBE Expires: 0");
    assert!(unsubscribe.to_string().contains("Expires: 0"));
    c.handle_sip_result(
        now + 10,
        token,
        SipResult::Response(ok_for(&unsubscribe, "")),
    );
    unsubscribe
}

#[test]
fn the_terminated_notify_after_an_unsubscribe_gets_200_and_ends_it() {
    let mut c = core(|_| {});
    let subscribe = subscribed(&mut c);
    drain(&mut c);
    juliet_unsubscribes(&mut c, T0 + 100);
    assert_eq!(c.counts(), (0, 0));
    // A NOTIFY crossing the unsubscribe, then the terminated one: both 200.
    let active = notify(&subscribe, 2, "active;expires=10", &pidf_open("Still here"));
    let r = c.handle_sip_request(T0 + 120, &active).unwrap();
    assert_eq!(r.status_code.code(), 200);
    let terminated = notify(&subscribe, 3, "terminated;reason=timeout", "");
    let r = c.handle_sip_request(T0 + 150, &terminated).unwrap();
    assert_eq!(r.status_code.code(), 200);
    assert!(
        drain(&mut c).stanzas.is_empty(),
        "juliet hears nothing more"
    );
    // Over: anything later in that dialog is 481.
    let late = notify(&subscribe, 4, "terminated;reason=timeout", "");
    assert_eq!(
        c.handle_sip_request(T0 + 200, &late)
            .unwrap()
            .status_code
            .code(),
        481
    );
}

#[test]
fn a_notifier_that_never_sends_the_terminated_notify_is_forgotten_after_64_t1() {
    let mut c = core(|_| {});
    let subscribe = subscribed(&mut c);
    drain(&mut c);
    juliet_unsubscribes(&mut c, T0 + 100);
    let terminated = notify(&subscribe, 2, "terminated", "");
    c.handle_timeout(T0 + 100 + UNSUBSCRIBE_WAIT_MS - 1);
    let r = c.handle_sip_request(T0 + 100 + UNSUBSCRIBE_WAIT_MS - 1, &terminated.clone());
    assert_eq!(r.unwrap().status_code.code(), 200, "still waiting");
    // Another one: the first ended it; a second subscription's wait runs out instead.
    let subscribe = subscribed(&mut c);
    drain(&mut c);
    juliet_unsubscribes(&mut c, T0 + 1000);
    c.handle_timeout(T0 + 1000 + UNSUBSCRIBE_WAIT_MS);
    let terminated = notify(&subscribe, 2, "terminated", "");
    let r = c.handle_sip_request(T0 + 1000 + UNSUBSCRIBE_WAIT_MS, &terminated);
    assert_eq!(r.unwrap().status_code.code(), 481);
}

#[test]
fn a_subscription_whose_dialog_came_from_the_2xx_takes_its_route_set_from_the_first_notify() {
    let mut c = core(|_| {});
    c.handle_xmpp(T0, presence(JULIET_SUBSCRIBES));
    let (token, subscribe, _) = drain(&mut c).sip.into_iter().next().unwrap();
    // The 2xx has one route set, the NOTIFY another (RFC 6665 4.4.1: the NOTIFY's counts).
    c.handle_sip_result(
        T0 + 50,
        token,
        SipResult::Response(ok_for(
            &subscribe,
            "Expires: 3600\r\nRecord-Route: <sip:wrong.example.com;lr>\r\nContact: <sip:romeo@198.51.100.7>\r\n",
        )),
    );
    let mut n = notify(&subscribe, 1, "active;expires=3600", &pidf_open("Here"));
    n.headers.push(make_header(
        "Record-Route",
        "<sip:p2.example.net;lr>, <sip:p1.example.com;lr>".into(),
    ));
    let r = c.handle_sip_request(T0 + 60, &n).unwrap();
    assert_eq!(r.status_code.code(), 200);
    assert!(
        header_value(&r.headers, "Record-Route").is_some(),
        "the 200 that makes the dialog keeps the Record-Route"
    );
    drain(&mut c);
    let unsubscribe = juliet_unsubscribes(&mut c, T0 + 100);
    let routes = dialog::header_values(&unsubscribe.headers, "Route");
    assert_eq!(
        routes,
        ["<sip:p1.example.com;lr>", "<sip:p2.example.net;lr>"],
        "{unsubscribe}"
    );
}
