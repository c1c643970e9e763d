//! Chat sessions (RFC 7573) through a real Prosody, the slixmpp client and SIPp for
//! INVITE/ACK/BYE, with a small RFC 4975 peer built from stox::msrp on the MSRP side
//! (SIPp cannot speak MSRP). Loopback only.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use stox::msrp::conn::{MsrpListener, PendingSession, SessionHandle};
use stox::msrp::cpim::{self, Cpim};
use stox::msrp::frame::TransactionId;
use stox::msrp::iscomposing::{IsComposing, State, CONTENT_TYPE as ISCOMPOSING};
use stox::msrp::session::{Config, Event, Outgoing, Received, Session};
use stox::msrp::uri::MsrpUri;

const SECS10: Duration = Duration::from_secs(10);
const ROMEO: &str = "romeo\\40sip.test@sip.localhost";

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn stox_extra(uas_port: u16, msrp_port: u16) -> String {
    format!(
        "[sip.routes]\n\"sip.test\" = \"sip:127.0.0.1:{uas_port};transport=udp\"\n\
         [msrp]\nlisten = \"127.0.0.1:{msrp_port}\"\n[chat]\nchunk_size = 16384\n"
    )
}

/// The MSRP peer's listener and the session it waits for.
struct Peer {
    listener: MsrpListener,
    uri: MsrpUri,
}

impl Peer {
    fn new(rt: &tokio::runtime::Runtime, session_id: &str) -> Peer {
        let listener = rt
            .block_on(MsrpListener::bind("127.0.0.1:0".parse().unwrap()))
            .unwrap();
        let uri = MsrpUri::new("127.0.0.1", listener.local_addr().port(), session_id);
        Peer { listener, uri }
    }

    /// Registers the session stox will connect to (it is the active side); before anything
    /// makes stox connect, or its connection would be refused with 481.
    fn expect(&self) -> PendingSession {
        // The remote path is learnt from stox's first request (From-Path).
        let session = Session::new(self.uri.clone(), Vec::new(), Config::default());
        self.listener.expect(session).unwrap()
    }
}

impl Peer {
    /// An msrps peer: its listener presents `identity` (RFC 4975 section 14).
    fn new_tls(
        rt: &tokio::runtime::Runtime,
        session_id: &str,
        dir: &std::path::Path,
        pki: &TestPki,
        identity: &Leaf,
    ) -> Peer {
        let ctx = stox::sip::tls::TlsContext::load(
            &identity.cert,
            &identity.key,
            Some(&pki.ca_file(dir)),
            true,
        )
        .unwrap();
        let listener = rt
            .block_on(MsrpListener::bind_tls(
                "127.0.0.1:0".parse().unwrap(),
                ctx.acceptor(),
            ))
            .unwrap();
        let mut uri = MsrpUri::new("127.0.0.1", listener.local_addr().port(), session_id);
        uri.secure = true;
        Peer { listener, uri }
    }
}

/// stox with `[sip.tls]` (a certificate for localhost and 127.0.0.1, `pki` as its roots),
/// an msrp and an msrps listener, `prefer` in `[msrp]`.
fn stox_msrps(
    dir: &std::path::Path,
    prosody: &Prosody,
    pki: &TestPki,
    uas_port: u16,
    msrp: &str,
) -> Stox {
    let identity = pki.leaf(dir, "stox", &["localhost", "127.0.0.1"]);
    let extra = format!(
        "[sip.routes]\n\"sip.test\" = \"sip:127.0.0.1:{uas_port};transport=udp\"\n\
         [msrp]\nlisten = \"127.0.0.1:{}\"\ntls_listen = \"127.0.0.1:{}\"\n{msrp}\n",
        free_port(),
        free_port()
    );
    let stox = Stox::start_tls(dir, prosody.component_port, pki, &identity, &extra);
    stox.wait_online(1);
    stox
}

/// Waits for stox's connection.
fn accept(rt: &tokio::runtime::Runtime, pending: PendingSession) -> SessionHandle {
    rt.block_on(async { tokio::time::timeout(SECS10, pending.connected()).await })
        .expect("stox connects over MSRP in time")
        .unwrap()
}

/// The next message the peer receives, skipping reports and deliveries.
fn next_message(rt: &tokio::runtime::Runtime, h: &mut SessionHandle) -> Received {
    rt.block_on(async {
        loop {
            match tokio::time::timeout(SECS10, h.next_event()).await {
                Ok(Some(Event::Message(m))) => return m,
                Ok(Some(_)) => continue,
                Ok(None) => panic!("MSRP connection closed"),
                Err(_) => panic!("no MSRP message within 10 s"),
            }
        }
    })
}

fn send(rt: &tokio::runtime::Runtime, h: &SessionHandle, out: Outgoing) {
    rt.block_on(h.send(out)).unwrap();
}

/// Romeo's SDP: `TCP/TLS/MSRP` when `uri` is `msrps:`.
fn sdp(uri: &MsrpUri, setup: &str, types: &str) -> String {
    let proto = if uri.secure {
        "TCP/TLS/MSRP"
    } else {
        "TCP/MSRP"
    };
    format!(
        "v=0\r\no=romeo 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
         m=message {} {proto} *\r\na=accept-types:{types}\r\n\
         a=accept-wrapped-types:text/plain application/im-iscomposing+xml\r\n\
         a=path:{uri}\r\na=setup:{setup}\r\n",
        uri.port_or_default()
    )
}

/// SIPp as romeo's UA: takes the INVITE, answers 200 with our peer's SDP, waits for
/// the ACK and then for stox's BYE.
fn invite_uas(answer_sdp: &str) -> String {
    format!(
        r#"<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="chat-uas">
  <recv request="INVITE" />
  <send>
    <![CDATA[
SIP/2.0 200 OK
[last_Via:]
[last_From:]
[last_To:];tag=[pid]SIPpTag01[call_number]
[last_Call-ID:]
[last_CSeq:]
Contact: <sip:romeo@[local_ip]:[local_port]>
Content-Type: application/sdp
Content-Length: [len]

{answer_sdp}]]>
  </send>
  <recv request="ACK" />
  <recv request="BYE" />
  <send>
    <![CDATA[
SIP/2.0 200 OK
[last_Via:]
[last_From:]
[last_To:]
[last_Call-ID:]
[last_CSeq:]
Content-Length: 0

]]>
  </send>
</scenario>
"#
    )
}

/// SIPp as romeo's UA calling juliet: INVITE with `offer`, ACK the 200, then wait for
/// stox's BYE.
fn invite_uac(offer: &str) -> String {
    format!(
        r#"<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="chat-uac">
  <send retrans="500">
    <![CDATA[
INVITE sip:juliet@localhost SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
Max-Forwards: 70
From: <sip:romeo@sip.test>;tag=[pid]SIPpTag00[call_number]
To: <sip:juliet@localhost>
Call-ID: [call_id]
CSeq: 1 INVITE
Contact: <sip:romeo@[local_ip]:[local_port]>
Content-Type: application/sdp
Content-Length: [len]

{offer}]]>
  </send>
  <recv response="100" optional="true" />
  <recv response="200" rtd="true" />
  <send>
    <![CDATA[
ACK sip:juliet@localhost SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
Max-Forwards: 70
[last_From:]
[last_To:]
[last_Call-ID:]
CSeq: 1 ACK
Content-Length: 0

]]>
  </send>
  <recv request="BYE" />
  <send>
    <![CDATA[
SIP/2.0 200 OK
[last_Via:]
[last_From:]
[last_To:]
[last_Call-ID:]
[last_CSeq:]
Content-Length: 0

]]>
  </send>
</scenario>
"#
    )
}

/// SIPp refusing the INVITE with 488, then taking `n` MESSAGEs.
fn refuse_then_messages(n: usize) -> String {
    let mut s = String::from(
        r#"<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="chat-488">
  <recv request="INVITE" />
  <send>
    <![CDATA[
SIP/2.0 488 Not Acceptable Here
[last_Via:]
[last_From:]
[last_To:];tag=[pid]SIPpTag01[call_number]
[last_Call-ID:]
[last_CSeq:]
Content-Length: 0

]]>
  </send>
  <recv request="ACK" />
"#,
    );
    for _ in 0..n {
        s.push_str(
            r#"  <recv request="MESSAGE" />
  <send>
    <![CDATA[
SIP/2.0 200 OK
[last_Via:]
[last_From:]
[last_To:];tag=[pid]SIPpTag02[call_number]
[last_Call-ID:]
[last_CSeq:]
Content-Length: 0

]]>
  </send>
"#,
        );
    }
    s.push_str("</scenario>\n");
    s
}

fn chat_xml(id: &str, thread: &str, inner: &str) -> String {
    format!(
        "<message to='{ROMEO}' type='chat' id='{id}'>{inner}<thread>{thread}</thread></message>"
    )
}

fn text(r: &Received) -> String {
    String::from_utf8_lossy(&r.body).into_owned()
}

#[test]
fn juliet_opens_a_session_and_messages_flow_both_ways() {
    let dir = temp_dir();
    let rt = rt();
    let prosody = Prosody::start(dir.path(), &[("juliet", "pw")]);
    let (uas_port, msrp_port) = (free_port(), free_port());
    let stox = Stox::start(
        dir.path(),
        prosody.component_port,
        &stox_extra(uas_port, msrp_port),
    );
    stox.wait_online(1);
    let mut juliet = XmppClient::login("juliet", "pw", prosody.c2s_port);

    let peer = Peer::new(&rt, "romeo1peer");
    let pending = peer.expect();
    let uas = Sipp::spawn_uas(
        dir.path(),
        "uas",
        &invite_uas(&sdp(
            &peer.uri,
            "passive",
            "text/plain application/im-iscomposing+xml",
        )),
        uas_port,
        1,
    );
    // Two messages before any session exists: queued, then sent in order.
    let setup = std::time::Instant::now();
    juliet.send_raw(&chat_xml(
        "msg-0001",
        "th-1",
        "<body>Art thou not Romeo?</body><request xmlns='urn:xmpp:receipts'/>",
    ));
    juliet.send_raw(&chat_xml(
        "msg-0002",
        "th-1",
        "<body>and a Montague?</body>",
    ));
    let mut h = accept(&rt, pending);
    let m1 = next_message(&rt, &mut h);
    eprintln!("measured: first message at the MSRP peer {:?} after juliet sent it (INVITE, 200, ACK, MSRP connect)", setup.elapsed());
    assert_eq!(text(&m1), "Art thou not Romeo?");
    assert_eq!(m1.transaction_id.as_str(), "msg-0001");
    assert_eq!(m1.message_id.as_str(), "msg-0001");
    assert!(m1.reported, "Success-Report: yes was asked for");
    let m2 = next_message(&rt, &mut h);
    assert_eq!(text(&m2), "and a Montague?");
    // The peer's success REPORT comes back as a receipt.
    juliet.expect_stanza(&["<received", "urn:xmpp:receipts", "msg-0001"], SECS10);

    // Romeo answers twice, and composes.
    let mut reply = Outgoing::new("text/plain", Bytes::from_static(b"Neither, fair saint"));
    reply.transaction_id = TransactionId::new("romeotid1");
    send(&rt, &h, reply);
    send(
        &rt,
        &h,
        Outgoing::new(
            ISCOMPOSING,
            IsComposing::new(State::Active).to_xml().into_bytes(),
        ),
    );
    send(
        &rt,
        &h,
        Outgoing::new("text/plain", Bytes::from_static(b"if either thee dislike.")),
    );
    let s = juliet.expect_stanza(&["Neither, fair saint"], SECS10);
    assert!(s.contains("<thread>th-1</thread>"), "{s}");
    assert!(s.contains("id=\"romeotid1\""), "{s}");
    assert!(s.contains(ROMEO), "{s}");
    let s = juliet.expect_stanza(&["<composing"], SECS10);
    assert!(!s.contains("<body"), "{s}");
    juliet.expect_stanza(&["if either thee dislike."], SECS10);

    // Juliet composes: isComposing on the session.
    juliet.send_raw(&chat_xml(
        "cs-1",
        "th-1",
        "<composing xmlns='http://jabber.org/protocol/chatstates'/>",
    ));
    let c = next_message(&rt, &mut h);
    assert_eq!(c.content_type, ISCOMPOSING);
    assert_eq!(IsComposing::parse(&text(&c)).unwrap().state, State::Active);

    // A 100 KiB message goes chunked (16 KiB chunks) and arrives whole.
    let big: String = (0..100 * 1024)
        .map(|i| (b'a' + (i % 26) as u8) as char)
        .collect();
    let t = std::time::Instant::now();
    juliet.send_raw(&chat_xml(
        "msg-big1",
        "th-1",
        &format!("<body>{big}</body>"),
    ));
    let b = next_message(&rt, &mut h);
    eprintln!(
        "measured: 100 KiB message juliet -> MSRP peer in {:?}",
        t.elapsed()
    );
    assert_eq!(b.body.len(), 100 * 1024);
    assert_eq!(text(&b), big);

    // `gone` ends the session with BYE.
    juliet.send_raw(&chat_xml(
        "cs-2",
        "th-1",
        "<gone xmlns='http://jabber.org/protocol/chatstates'/>",
    ));
    let r = uas.finish(Duration::from_secs(20));
    r.assert_ok();
    assert!(r.messages.contains("Call-ID: th-1"), "{}", r.messages);
    assert!(
        r.messages.contains("m=message ") && r.messages.contains("a=setup:actpass"),
        "{}",
        r.messages
    );
    assert!(
        !juliet
            .stanzas_seen()
            .iter()
            .any(|s| s.contains("type=\"error\"")),
        "{:?}",
        juliet.stanzas_seen()
    );
}

#[test]
fn a_sip_user_opens_a_session_to_juliet_with_cpim() {
    let dir = temp_dir();
    let rt = rt();
    let prosody = Prosody::start(dir.path(), &[("juliet", "pw")]);
    let msrp_port = free_port();
    let stox = Stox::start(
        dir.path(),
        prosody.component_port,
        &stox_extra(free_port(), msrp_port),
    );
    stox.wait_online(1);
    let mut juliet = XmppClient::login("juliet", "pw", prosody.c2s_port);

    let peer = Peer::new(&rt, "romeo2peer");
    let pending = peer.expect();
    // Romeo's UA takes only message/cpim: stox must wrap what it sends.
    let uac = Sipp::spawn_uac(
        dir.path(),
        "uac",
        &invite_uac(&sdp(&peer.uri, "passive", "message/cpim")),
        &format!("127.0.0.1:{}", stox.sip_port),
        &[],
    );
    let mut h = accept(&rt, pending);
    let wrapped = cpim::wrap(
        &cpim::Address::new(Some("Romeo"), "im:romeo@sip.test"),
        &cpim::Address::new(None, "im:juliet@localhost"),
        Some("2000-12-13T13:40:00-08:00"),
        "text/plain;charset=utf-8",
        "Neither, fair saint".as_bytes(),
    );
    let mut m = Outgoing::new("message/cpim", wrapped);
    m.transaction_id = TransactionId::new("romeotid2");
    send(&rt, &h, m);
    let s = juliet.expect_stanza(&["Neither, fair saint"], SECS10);
    assert!(
        s.contains("type=\"chat\"") && s.contains("id=\"romeotid2\""),
        "{s}"
    );
    let thread = s
        .split("<thread>")
        .nth(1)
        .and_then(|t| t.split("</thread>").next())
        .expect("a thread")
        .to_string();

    // Juliet's replies on that thread go back on the session, wrapped in CPIM.
    juliet.send(ROMEO, "What's in a name?", Some(&thread), "jr-0001");
    juliet.send(ROMEO, "That which we call a rose", Some(&thread), "jr-0002");
    for expected in ["What's in a name?", "That which we call a rose"] {
        let r = next_message(&rt, &mut h);
        assert_eq!(r.content_type, "message/cpim");
        let c = Cpim::parse(&r.body).unwrap();
        assert_eq!(String::from_utf8_lossy(&c.body), expected);
        assert_eq!(c.from().unwrap().uri, "im:juliet@localhost");
    }
    juliet.send_raw(&chat_xml(
        "cs-9",
        &thread,
        "<gone xmlns='http://jabber.org/protocol/chatstates'/>",
    ));
    let r = uac.finish(Duration::from_secs(20));
    r.assert_ok();
    assert!(
        r.messages.contains(&format!("Call-ID: {thread}")),
        "{}",
        r.messages
    );
    assert!(r.messages.contains("a=setup:active"), "{}", r.messages);
}

#[test]
fn an_invite_refused_with_488_falls_back_to_message_in_order() {
    let dir = temp_dir();
    let prosody = Prosody::start(dir.path(), &[("juliet", "pw")]);
    let (uas_port, msrp_port) = (free_port(), free_port());
    let stox = Stox::start(
        dir.path(),
        prosody.component_port,
        &stox_extra(uas_port, msrp_port),
    );
    stox.wait_online(1);
    let mut juliet = XmppClient::login("juliet", "pw", prosody.c2s_port);
    let uas = Sipp::spawn_uas(dir.path(), "uas", &refuse_then_messages(3), uas_port, 1);
    for (i, body) in ["one", "two", "three"].iter().enumerate() {
        juliet.send(
            ROMEO,
            &format!("fallback {body}"),
            Some("fb-1"),
            &format!("fb-{i}"),
        );
    }
    let r = uas.finish(Duration::from_secs(20));
    r.assert_ok();
    let pos = |s: &str| {
        r.messages
            .find(s)
            .unwrap_or_else(|| panic!("{s}: {}", r.messages))
    };
    assert!(pos("INVITE sip:romeo@sip.test") < pos("fallback one"));
    assert!(pos("fallback one") < pos("fallback two"));
    assert!(pos("fallback two") < pos("fallback three"));
    assert_eq!(
        r.messages.matches("INVITE sip:").count(),
        1,
        "{}",
        r.messages
    );
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !juliet
            .stanzas_seen()
            .iter()
            .any(|s| s.contains("type=\"error\"")),
        "{:?}",
        juliet.stanzas_seen()
    );
}

#[test]
fn a_sip_user_opens_an_msrps_session_to_juliet_and_stox_connects_over_tls() {
    let dir = temp_dir();
    let rt = rt();
    let pki = TestPki::new();
    let prosody = Prosody::start(dir.path(), &[("juliet", "pw")]);
    let stox = stox_msrps(dir.path(), &prosody, &pki, free_port(), "");
    let mut juliet = XmppClient::login("juliet", "pw", prosody.c2s_port);

    // Romeo's MSRP peer listens with TLS; its certificate names 127.0.0.1, the host of its
    // msrps: path, which stox must check (RFC 4975 14.2).
    let identity = pki.leaf(dir.path(), "romeo", &["127.0.0.1"]);
    let peer = Peer::new_tls(&rt, "romeotls1", dir.path(), &pki, &identity);
    let pending = peer.expect();
    let uac = Sipp::spawn_uac(
        dir.path(),
        "uac",
        &invite_uac(&sdp(&peer.uri, "passive", "text/plain message/cpim")),
        &format!("127.0.0.1:{}", stox.sip_port),
        &[],
    );
    let mut h = accept(&rt, pending);
    let mut m = Outgoing::new(
        "text/plain",
        "But soft, what light through yonder window breaks?",
    );
    m.transaction_id = TransactionId::new("romeotls01");
    send(&rt, &h, m);
    let s = juliet.expect_stanza(&["yonder window"], SECS10);
    assert!(
        s.contains("type=\"chat\"") && s.contains("id=\"romeotls01\""),
        "{s}"
    );
    let thread = s
        .split("<thread>")
        .nth(1)
        .and_then(|t| t.split("</thread>").next())
        .expect("a thread")
        .to_string();
    juliet.send(ROMEO, "Romeo, Romeo!", Some(&thread), "jtls-1");
    juliet.send(ROMEO, "Wherefore art thou", Some(&thread), "jtls-2");
    for expected in ["Romeo, Romeo!", "Wherefore art thou"] {
        let r = next_message(&rt, &mut h);
        assert!(
            r.content_type.starts_with("text/plain"),
            "{}",
            r.content_type
        );
        assert_eq!(text(&r), expected);
    }
    juliet.send_raw(&chat_xml(
        "cs-tls",
        &thread,
        "<gone xmlns='http://jabber.org/protocol/chatstates'/>",
    ));
    let r = uac.finish(Duration::from_secs(20));
    r.assert_ok();
    // stox's answer is MSRP over TLS with an msrps: path on its tls_listen port.
    assert!(
        r.messages.contains("m=message ") && r.messages.contains(" TCP/TLS/MSRP *"),
        "{}",
        r.messages
    );
    assert!(
        r.messages.contains("a=path:msrps://127.0.0.1:"),
        "{}",
        r.messages
    );
    assert!(r.messages.contains("a=setup:active"), "{}", r.messages);
    assert!(
        !juliet
            .stanzas_seen()
            .iter()
            .any(|s| s.contains("type=\"error\"")),
        "{:?}",
        juliet.stanzas_seen()
    );
}

#[test]
fn an_msrps_offer_gets_488_without_an_msrps_listener() {
    let dir = temp_dir();
    let rt = rt();
    let pki = TestPki::new();
    let prosody = Prosody::start(dir.path(), &[("juliet", "pw")]);
    let stox = Stox::start(
        dir.path(),
        prosody.component_port,
        &stox_extra(free_port(), free_port()),
    );
    stox.wait_online(1);
    let identity = pki.leaf(dir.path(), "romeo", &["127.0.0.1"]);
    let peer = Peer::new_tls(&rt, "romeotls2", dir.path(), &pki, &identity);
    let scenario = invite_uac(&sdp(&peer.uri, "passive", "text/plain")).replace(
        r#"<recv response="200" rtd="true" />"#,
        r#"<recv response="488" />"#,
    );
    // After the 488: ACK it (same branch, as a non-2xx ACK is hop by hop) and end there.
    let scenario = match scenario.find("<recv request=\"BYE\" />") {
        Some(i) => format!("{}</scenario>\n", &scenario[..i]),
        None => scenario,
    };
    let r = Sipp::run_uac(
        dir.path(),
        "uac488",
        &scenario,
        &format!("127.0.0.1:{}", stox.sip_port),
        &[],
    );
    assert!(r.messages.contains("SIP/2.0 488"), "{}", r.messages);
}

/// A header's value in a SIP message (full names, case-insensitive).
fn header<'a>(msg: &'a str, name: &str) -> &'a str {
    msg.lines()
        .find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim().eq_ignore_ascii_case(name).then_some(v.trim())
        })
        .unwrap_or_else(|| panic!("no {name} in {msg}"))
}

/// The next SIP request of `method` on `sock`, skipping others (retransmissions).
fn recv_request(sock: &std::net::UdpSocket, method: &str) -> (String, std::net::SocketAddr) {
    let deadline = std::time::Instant::now() + SECS10;
    let mut buf = vec![0u8; 65536];
    loop {
        assert!(std::time::Instant::now() < deadline, "no {method} in time");
        let Ok((n, from)) = sock.recv_from(&mut buf) else {
            continue;
        };
        let m = String::from_utf8_lossy(&buf[..n]).into_owned();
        if m.starts_with(&format!("{method} ")) {
            return (m, from);
        }
    }
}

fn response_for(request: &str, to_tag: Option<&str>, extra: &str, body: &str) -> String {
    let to = match to_tag {
        Some(t) => format!("{};tag={t}", header(request, "To")),
        None => header(request, "To").to_string(),
    };
    format!(
        "SIP/2.0 200 OK\r\nVia: {}\r\nFrom: {}\r\nTo: {to}\r\nCall-ID: {}\r\nCSeq: {}\r\n{extra}Content-Length: {}\r\n\r\n{body}",
        header(request, "Via"),
        header(request, "From"),
        header(request, "Call-ID"),
        header(request, "CSeq"),
        body.len()
    )
}

#[test]
fn juliet_opens_an_msrps_session_and_the_sip_peer_connects_over_tls() {
    let dir = temp_dir();
    let rt = rt();
    let pki = TestPki::new();
    let prosody = Prosody::start(dir.path(), &[("juliet", "pw")]);
    // Romeo's UA: a UDP socket of the test, so that the peer can read stox's a=path.
    let uas = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    uas.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let uas_port = uas.local_addr().unwrap().port();
    let _stox = stox_msrps(dir.path(), &prosody, &pki, uas_port, "prefer_tls = true");
    let mut juliet = XmppClient::login("juliet", "pw", prosody.c2s_port);

    juliet.send(ROMEO, "Good night, good night!", Some("tls-x1"), "jx-0001");
    juliet.send(
        ROMEO,
        "Parting is such sweet sorrow",
        Some("tls-x1"),
        "jx-0002",
    );
    let (invite, from) = recv_request(&uas, "INVITE");
    assert!(invite.contains(" TCP/TLS/MSRP *\r\n"), "{invite}");
    let path = invite
        .lines()
        .find_map(|l| l.strip_prefix("a=path:"))
        .unwrap_or_else(|| panic!("no a=path in {invite}"));
    let stox_path = stox::msrp::uri::parse_path(path).unwrap();
    assert!(stox_path[0].secure, "{path}");

    // Answer active: the peer connects to stox's msrps: listener.
    let mut me = MsrpUri::new("127.0.0.1", 9, "romeotls3");
    me.secure = true;
    let answer = sdp(&me, "active", "text/plain");
    let ok = response_for(
        &invite,
        Some("romeotag"),
        &format!("Contact: <sip:romeo@127.0.0.1:{uas_port}>\r\nContent-Type: application/sdp\r\n"),
        &answer,
    );
    uas.send_to(ok.as_bytes(), from).unwrap();
    recv_request(&uas, "ACK");

    let connector = tokio_rustls::TlsConnector::from(pki.client_config());
    let first = &stox_path[0];
    let session = Session::new(me, stox_path.clone(), Config::default());
    let mut h = rt
        .block_on(async {
            tokio::time::timeout(
                SECS10,
                stox::msrp::conn::connect_tls(
                    first.host_for_connect(),
                    first.port_or_default(),
                    session,
                    connector,
                ),
            )
            .await
        })
        .expect("connected in time")
        .expect("stox's certificate verifies for the host of its msrps: path");
    for expected in ["Good night, good night!", "Parting is such sweet sorrow"] {
        let r = next_message(&rt, &mut h);
        assert_eq!(text(&r), expected);
    }
    let mut m = Outgoing::new("text/plain", "Sleep dwell upon thine eyes");
    m.transaction_id = TransactionId::new("romeotls04");
    send(&rt, &h, m);
    let s = juliet.expect_stanza(&["Sleep dwell upon thine eyes"], SECS10);
    assert!(s.contains("<thread>tls-x1</thread>"), "{s}");

    juliet.send_raw(&chat_xml(
        "cs-tlsx",
        "tls-x1",
        "<gone xmlns='http://jabber.org/protocol/chatstates'/>",
    ));
    let (bye, from) = recv_request(&uas, "BYE");
    uas.send_to(response_for(&bye, None, "", "").as_bytes(), from)
        .unwrap();
    assert!(
        !juliet
            .stanzas_seen()
            .iter()
            .any(|s| s.contains("type=\"error\"")),
        "{:?}",
        juliet.stanzas_seen()
    );
}

/// The next Delivered or Failed event of the peer's session: what its SEND was answered.
fn next_outcome(rt: &tokio::runtime::Runtime, h: &mut SessionHandle) -> Event {
    rt.block_on(async {
        loop {
            match tokio::time::timeout(Duration::from_secs(20), h.next_event()).await {
                Ok(Some(e @ (Event::Delivered { .. } | Event::Failed { .. }))) => return e,
                Ok(Some(_)) => continue,
                Ok(None) => panic!("MSRP connection closed"),
                Err(_) => panic!("no answer to the SEND within 20 s"),
            }
        }
    })
}

fn thread_of(stanza: &str) -> String {
    stanza
        .split("<thread>")
        .nth(1)
        .and_then(|t| t.split("</thread>").next())
        .expect("a thread")
        .to_string()
}

#[test]
fn a_send_is_answered_200_only_once_its_stanza_is_written_and_refused_while_prosody_is_down() {
    let dir = temp_dir();
    let rt = rt();
    let mut prosody = Prosody::start(dir.path(), &[("juliet", "pw")]);
    let stox = Stox::start(
        dir.path(),
        prosody.component_port,
        &stox_extra(free_port(), free_port()),
    );
    stox.wait_online(1);
    let mut juliet = XmppClient::login("juliet", "pw", prosody.c2s_port);
    let peer = Peer::new(&rt, "romeo3peer");
    let pending = peer.expect();
    let uac = Sipp::spawn_uac(
        dir.path(),
        "uac",
        &invite_uac(&sdp(&peer.uri, "passive", "text/plain")),
        &format!("127.0.0.1:{}", stox.sip_port),
        &[],
    );
    let mut h = accept(&rt, pending);

    send(&rt, &h, Outgoing::new("text/plain", "before the storm"));
    assert!(matches!(next_outcome(&rt, &mut h), Event::Delivered { .. }));
    let s = juliet.expect_stanza(&["before the storm"], SECS10);
    let thread = thread_of(&s);

    // Prosody goes away mid-session: the next SEND is refused, not acknowledged and lost.
    prosody.stop();
    stox.wait_log("XMPP link lost; reconnecting.", 1, SECS10);
    let mut m = Outgoing::new("text/plain", "into the void");
    m.success_report = true;
    send(&rt, &h, m);
    match next_outcome(&rt, &mut h) {
        Event::Failed {
            failure: stox::msrp::session::Failure::Response { code, .. },
            ..
        } => assert_eq!(code, 403),
        other => panic!("{other:?}"),
    }

    // Prosody is back: messages flow again on the same session.
    prosody.start_again();
    stox.wait_online(2);
    let mut juliet = XmppClient::login("juliet", "pw", prosody.c2s_port);
    send(&rt, &h, Outgoing::new("text/plain", "after the storm"));
    assert!(matches!(next_outcome(&rt, &mut h), Event::Delivered { .. }));
    juliet.expect_stanza(&["after the storm"], SECS10);
    assert!(
        !juliet
            .stanzas_seen()
            .iter()
            .any(|s| s.contains("into the void")),
        "{:?}",
        juliet.stanzas_seen()
    );
    juliet.send_raw(&chat_xml(
        "cs-3",
        &thread,
        "<gone xmlns='http://jabber.org/protocol/chatstates'/>",
    ));
    uac.finish(Duration::from_secs(20)).assert_ok();
}

/// Sends an INVITE from a fresh UDP socket and returns the final response's status code.
fn invite_status(stox_sip_port: u16, offer: &str) -> u16 {
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(SECS10)).unwrap();
    let local = sock.local_addr().unwrap().to_string();
    let request = sip_request(
        "INVITE",
        "sip:juliet@localhost",
        "UDP",
        &format!("Contact: <sip:romeo@{local}>\r\nContent-Type: application/sdp\r\n"),
        offer,
    )
    .replace("LOCAL", &local);
    sock.send_to(request.as_bytes(), ("127.0.0.1", stox_sip_port))
        .unwrap();
    let mut buf = [0u8; 65536];
    loop {
        let (n, _) = sock.recv_from(&mut buf).expect("an answer to the INVITE");
        let r = String::from_utf8_lossy(&buf[..n]).into_owned();
        let code: u16 = status_line(&r)
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        if code >= 200 {
            return code;
        }
    }
}

#[test]
fn with_answer_when_available_juliet_gets_sessions_only_after_giving_presence_to_the_gateway() {
    let dir = temp_dir();
    let prosody = Prosody::start(dir.path(), &[("juliet", "pw")]);
    let extra = format!(
        "{}answer = \"when_available\"\n",
        stox_extra(free_port(), free_port())
    );
    let stox = Stox::start(dir.path(), prosody.component_port, &extra);
    stox.wait_online(1);
    let mut juliet = XmppClient::login("juliet", "pw", prosody.c2s_port);
    let uri = MsrpUri::new("127.0.0.1", 9, "romeo4peer");
    let offer = sdp(&uri, "active", "text/plain");
    // Logged in, but nothing of her presence reaches the gateway: 480.
    assert_eq!(invite_status(stox.sip_port, &offer), 480);
    juliet.send_raw("<presence to='sip.localhost'/>");
    let mut code = 0;
    eventually(SECS10, "an INVITE answered 200", || {
        code = invite_status(stox.sip_port, &offer);
        code == 200
    });
    assert_eq!(code, 200);
    // She goes away from the gateway: 480 again.
    juliet.send_raw("<presence type='unavailable' to='sip.localhost'/>");
    eventually(SECS10, "an INVITE answered 480", || {
        invite_status(stox.sip_port, &offer) == 480
    });
}

#[test]
fn a_send_to_a_user_the_xmpp_server_does_not_know_gets_the_mapped_refusal_not_200() {
    let dir = temp_dir();
    let rt = rt();
    let prosody = Prosody::start(dir.path(), &[("juliet", "pw")]);
    let stox = Stox::start(
        dir.path(),
        prosody.component_port,
        &stox_extra(free_port(), free_port()),
    );
    stox.wait_online(1);
    let peer = Peer::new(&rt, "romeo4peer");
    let pending = peer.expect();
    // chat.answer = "always": the INVITE is answered on nobody's behalf, the SEND is not.
    let uac = Sipp::spawn_uac(
        dir.path(),
        "uac",
        &invite_uac(&sdp(&peer.uri, "passive", "text/plain")).replace("juliet@", "nobody@"),
        &format!("127.0.0.1:{}", stox.sip_port),
        &[],
    );
    let mut h = accept(&rt, pending);
    send(&rt, &h, Outgoing::new("text/plain", "is anybody there"));
    match next_outcome(&rt, &mut h) {
        // Prosody bounces it with service-unavailable (RFC 7247: 503), which MSRP lacks.
        Event::Failed {
            failure: stox::msrp::session::Failure::Response { code, .. },
            ..
        } => assert_eq!(code, 403),
        other => panic!("{other:?}"),
    }
    stox.wait_log("The XMPP server refused the MSRP message.", 1, SECS10);
    drop(uac);
}
