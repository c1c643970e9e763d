//! Issue 11 items 4 and 5 against the running stox, a real Prosody and real SIPp: where a
//! remote party may make stox send, and which challenges get credentials.
//!
//! Everything runs on loopback, so "remote-chosen and not vouched for" is a loopback
//! address nobody configured: 127.0.0.2 (and ::1) are never in config here, 127.0.0.3 is
//! in `sip.allowed_destinations` (a SIP host the admin lets remote parties reach, but no
//! hop configured for credentials), and 127.0.0.1 is where the configured routes point.

mod common;

use std::io::{ErrorKind, Read};
use std::net::{TcpListener, UdpSocket};
use std::time::{Duration, Instant};

use common::*;

const WAIT: Duration = Duration::from_secs(20);

/// A UDP socket and a TCP listener on the same address and port, non-blocking, so that
/// "nothing arrived" can be read off both after the error stanza came back.
struct Trap {
    udp: UdpSocket,
    tcp: TcpListener,
    port: u16,
}

impl Trap {
    fn bind(ip: &str) -> Trap {
        // A port free for both: take TCP's and bind UDP to it (retry on the rare clash).
        for _ in 0..50 {
            let tcp = TcpListener::bind((ip, 0)).unwrap();
            let port = tcp.local_addr().unwrap().port();
            if let Ok(udp) = UdpSocket::bind((ip, port)) {
                udp.set_nonblocking(true).unwrap();
                tcp.set_nonblocking(true).unwrap();
                return Trap { udp, tcp, port };
            }
        }
        panic!("no port free for both UDP and TCP on {ip}");
    }

    fn bind_port(ip: &str, port: u16) -> Trap {
        let tcp = TcpListener::bind((ip, port)).unwrap();
        let udp = UdpSocket::bind((ip, port)).unwrap();
        udp.set_nonblocking(true).unwrap();
        tcp.set_nonblocking(true).unwrap();
        Trap { udp, tcp, port }
    }

    /// Panics if a datagram or a connection reached the trap.
    fn assert_untouched(&self, what: &str) {
        let mut buf = [0u8; 65536];
        match self.udp.recv_from(&mut buf) {
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            Ok((n, from)) => panic!(
                "{what}: a datagram from {from} reached the trap: {:?}",
                String::from_utf8_lossy(&buf[..n])
            ),
            Err(e) => panic!("{what}: {e}"),
        }
        match self.tcp.accept() {
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            Ok((_, from)) => panic!("{what}: a TCP connection from {from} reached the trap"),
            Err(e) => panic!("{what}: {e}"),
        }
    }
}

/// A JID at the gateway for `sip:x@<hostport>` (XEP-0106: `\40` is @, `\3a` is :).
fn jid_for(hostport: &str) -> String {
    format!("x\\40{}@sip.localhost", hostport.replace(':', "\\3a"))
}

fn expect_error(juliet: &mut XmppClient, id: &str, condition: &str) -> String {
    let id_attr = format!("id=\"{id}\"");
    let err = juliet.expect_stanza(&["type=\"error\"", &id_attr], WAIT);
    assert!(err.contains(condition), "{id}: {err}");
    err
}

/// SIPp as a UAS on `ip:port` (Sipp::command binds 127.0.0.1; the later `-i` wins).
fn sipp_uas_at(dir: &std::path::Path, name: &str, scenario: &str, ip: &str, port: u16) -> Proc {
    let mut c = Sipp::command(dir, name, scenario, port);
    c.args(["-i", ip, "-m", "1"]);
    let p = Proc::spawn("sipp", &mut c);
    wait_for_udp(ip, port);
    p
}

/// Waits until something is bound to UDP `ip:port` (SIPp has started).
fn wait_for_udp(ip: &str, port: u16) {
    eventually(WAIT, "SIPp to bind its port", || {
        UdpSocket::bind((ip, port)).is_err()
    });
}

/// Waits for SIPp to end by itself and returns its trace of messages.
fn finish(mut p: Proc, dir: &std::path::Path, name: &str) -> String {
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Ok(Some(s)) = p.child.try_wait() {
            break s;
        }
        assert!(Instant::now() < deadline, "SIPp {name} did not finish");
        std::thread::sleep(Duration::from_millis(50));
    };
    let messages =
        std::fs::read_to_string(dir.join(format!("{name}.messages"))).unwrap_or_default();
    let mut stderr = String::new();
    if let Some(mut e) = p.child.stderr.take() {
        let _ = e.read_to_string(&mut stderr);
    }
    let errors = std::fs::read_to_string(dir.join(format!("{name}.errors"))).unwrap_or_default();
    assert!(
        status.success(),
        "SIPp {name} failed: {stderr}\n{errors}\n--- messages ---\n{messages}"
    );
    messages
}

fn uas_200() -> String {
    message_uas(200, "OK")
}

/// Receives a MESSAGE, challenges it with a 401 for realm `sip.test`, and expects nothing
/// more in that call.
fn uas_401_only() -> String {
    r#"<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="challenge-only">
  <recv request="MESSAGE" />
  <send>
    <![CDATA[
SIP/2.0 401 Unauthorized
[last_Via:]
[last_From:]
[last_To:];tag=[pid]SIPpTag01[call_number]
[last_Call-ID:]
[last_CSeq:]
WWW-Authenticate: Digest realm="sip.test", nonce="n0nce4711", algorithm=MD5, qop="auth"
Content-Length: 0

]]>
  </send>
</scenario>
"#
    .to_string()
}

/// Challenges with a 401 for realm `sip.test`, then takes the retry with 200.
fn uas_401_then_200() -> String {
    r#"<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="challenge-then-ok">
  <recv request="MESSAGE" />
  <send>
    <![CDATA[
SIP/2.0 401 Unauthorized
[last_Via:]
[last_From:]
[last_To:];tag=[pid]SIPpTag01[call_number]
[last_Call-ID:]
[last_CSeq:]
WWW-Authenticate: Digest realm="sip.test", nonce="n0nce0815", algorithm=MD5, qop="auth"
Content-Length: 0

]]>
  </send>
  <recv request="MESSAGE" />
  <send>
    <![CDATA[
SIP/2.0 200 OK
[last_Via:]
[last_From:]
[last_To:];tag=[pid]SIPpTag01[call_number]
[last_Call-ID:]
[last_CSeq:]
Content-Length: 0

]]>
  </send>
</scenario>
"#
    .to_string()
}

const CREDENTIALS: &str = r#"
[[sip.credentials]]
realm = "sip.test"
username = "gwuser"
password = "s3cret-pw"
"#;

#[test]
fn jids_naming_loopback_literals_or_non_sip_ports_are_refused_and_nothing_is_sent() {
    let dir = temp_dir();
    let prosody = Prosody::start(dir.path(), &[("juliet", "pw")]);
    let stox = Stox::start(
        dir.path(),
        prosody.component_port,
        "allowed_destinations = [\"127.0.0.3\"]\n",
    );
    stox.wait_online(1);
    let mut juliet = XmppClient::login("juliet", "pw", prosody.c2s_port);

    // The control first: inside sip.allowed_destinations, on a SIP port, the request goes out.
    let port = free_port();
    let uas = sipp_uas_at(dir.path(), "allowed", &uas_200(), "127.0.0.3", port);
    juliet.send(
        &jid_for(&format!("127.0.0.3:{port}")),
        "To an allowed host",
        None,
        "ok",
    );
    let messages = finish(uas, dir.path(), "allowed");
    assert!(messages.contains("To an allowed host"), "{messages}");

    let v4 = Trap::bind("127.0.0.2");
    let v6 = Trap::bind("::1");
    // A non-SIP port inside sip.allowed_destinations: the port rule still holds there.
    let redis = Trap::bind_port("127.0.0.3", 6379);
    let big = "x".repeat(3000);
    // Only loopback targets here: were the check broken, a private or link-local literal
    // would send traffic off this host. Those classes are proven in destination's unit
    // tests (remote_chosen_loopback_private_link_local_and_the_like_are_refused).
    let cases: Vec<(String, &str, &str)> = vec![
        (format!("127.0.0.2:{}", v4.port), "small", "lo"),
        (format!("127.0.0.2:{}", v4.port), big.as_str(), "lo-big"),
        (format!("[::1]:{}", v6.port), "small", "v6"),
        (format!("[::ffff:127.0.0.2]:{}", v4.port), "small", "mapped"),
        ("127.0.0.3:6379".to_string(), big.as_str(), "redis"),
    ];
    for (hostport, body, id) in &cases {
        juliet.send(&jid_for(hostport), body, None, id);
    }
    for (hostport, _, id) in &cases {
        let err = expect_error(&mut juliet, id, "not-allowed");
        assert!(err.contains("not sending there"), "{hostport}: {err}");
    }
    // The errors came back; a request stox had sent anyway would be there by now.
    v4.assert_untouched("127.0.0.2");
    v6.assert_untouched("::1");
    redis.assert_untouched("127.0.0.3:6379");
}

#[test]
fn a_body_that_switches_to_tcp_reaches_only_a_configured_destination_as_one_sip_request() {
    let dir = temp_dir();
    let prosody = Prosody::start(dir.path(), &[("juliet", "pw")]);
    let routed = Trap::bind("127.0.0.1");
    let stox = Stox::start(
        dir.path(),
        prosody.component_port,
        &format!(
            "[sip.timers]\nt1_ms = 50\nt2_ms = 400\n[sip.routes]\n\"sip.test\" = \"sip:127.0.0.1:{};transport=udp\"\n",
            routed.port
        ),
    );
    stox.wait_online(1);
    let mut juliet = XmppClient::login("juliet", "pw", prosody.c2s_port);

    // A body of text lines, as if to speak Redis' inline protocol to whatever listens.
    let lines = "SET pwned 1\r\n".repeat(150);
    let trap = Trap::bind("127.0.0.2");
    juliet.send(
        &jid_for(&format!("127.0.0.2:{}", trap.port)),
        &lines,
        None,
        "raw",
    );
    expect_error(&mut juliet, "raw", "not-allowed");
    trap.assert_untouched("127.0.0.2 (TCP switch)");

    // Through the configured route the same body goes over TCP (RFC 3261 18.1.1) as one
    // well-formed request with its Content-Length: the lines are a SIP body, no more.
    juliet.send("romeo\\40sip.test@sip.localhost", &lines, None, "routed");
    let deadline = Instant::now() + WAIT;
    let mut conn = loop {
        match routed.tcp.accept() {
            Ok((c, _)) => break c,
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                assert!(Instant::now() < deadline, "no TCP connection to the route");
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("{e}"),
        }
    };
    conn.set_nonblocking(false).unwrap();
    conn.set_read_timeout(Some(WAIT)).unwrap();
    let mut buf = Vec::new();
    let request = read_sip_message(&mut conn, &mut buf).expect("one SIP request over TCP");
    assert!(
        request.starts_with("MESSAGE sip:romeo@sip.test SIP/2.0\r\n"),
        "{request}"
    );
    let (head, body) = request.split_once("\r\n\r\n").unwrap();
    assert!(head.contains("Via: SIP/2.0/TCP "), "{head}");
    let length = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .expect("a Content-Length")
        .trim()
        .parse::<usize>()
        .unwrap();
    assert_eq!(length, body.len(), "{head}");
    assert!(body.contains("SET pwned 1"));
}

#[test]
fn credentials_answer_the_configured_routes_challenge_but_not_a_jid_chosen_hosts() {
    let dir = temp_dir();
    let prosody = Prosody::start(dir.path(), &[("juliet", "pw")]);
    let route_port = free_port();
    let stox = Stox::start(
        dir.path(),
        prosody.component_port,
        &format!(
            "allowed_destinations = [\"127.0.0.3\"]\n{CREDENTIALS}\n[sip.routes]\n\"sip.test\" = \"sip:127.0.0.1:{route_port};transport=udp\"\n"
        ),
    );
    stox.wait_online(1);
    let mut juliet = XmppClient::login("juliet", "pw", prosody.c2s_port);

    // The configured route challenges for realm sip.test: answered, and delivered.
    let routed = sipp_uas_at(
        dir.path(),
        "routed",
        &uas_401_then_200(),
        "127.0.0.1",
        route_port,
    );
    juliet.send(
        "romeo\\40sip.test@sip.localhost",
        "Through the route",
        None,
        "r",
    );
    let messages = finish(routed, dir.path(), "routed");
    assert!(
        messages.contains("Authorization: Digest username=\"gwuser\""),
        "{messages}"
    );

    // A host the JID names (reachable: it is in allowed_destinations) challenges for the
    // same realm: not answered; juliet gets the 401 as an error, and the host never sees
    // the credentials.
    let port = free_port();
    let chosen = sipp_uas_at(dir.path(), "chosen", &uas_401_only(), "127.0.0.3", port);
    juliet.send(
        &jid_for(&format!("127.0.0.3:{port}")),
        "To a host of my choice",
        None,
        "c",
    );
    expect_error(&mut juliet, "c", "not-authorized");
    let messages = finish(chosen, dir.path(), "chosen");
    assert_eq!(
        messages.matches("MESSAGE sip:x@127.0.0.3").count(),
        1,
        "{messages}"
    );
    assert!(!messages.contains("Authorization"), "{messages}");
    assert!(!messages.contains("gwuser"), "{messages}");
    stox.wait_log("Challenge from a destination not configured", 1, WAIT);
}

/// SIPp as romeo's UA: takes the INVITE and answers 200 whose Contact (and, with
/// `record_route`, Record-Route) and a=path name `trap` (127.0.0.2, in no config), then
/// takes the ACK and the MESSAGE stox falls back to (RFC 7573: no session, pager mode).
fn invite_uas_pointing_at(trap: u16, record_route: bool) -> String {
    let sdp = format!(
        "v=0\r\no=romeo 1 1 IN IP4 127.0.0.2\r\ns=-\r\nc=IN IP4 127.0.0.2\r\nt=0 0\r\n\
         m=message {trap} TCP/MSRP *\r\na=accept-types:text/plain\r\n\
         a=path:msrp://127.0.0.2:{trap}/romeo9;tcp\r\na=setup:passive\r\n"
    );
    let rr = if record_route {
        format!("Record-Route: <sip:127.0.0.2:{trap};lr>\n")
    } else {
        String::new()
    };
    format!(
        r#"<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="chat-uas-elsewhere">
  <recv request="INVITE" />
  <send>
    <![CDATA[
SIP/2.0 200 OK
[last_Via:]
[last_From:]
[last_To:];tag=[pid]SIPpTag01[call_number]
[last_Call-ID:]
[last_CSeq:]
{rr}Contact: <sip:romeo@127.0.0.2:{trap}>
Content-Type: application/sdp
Content-Length: [len]

{sdp}]]>
  </send>
  <recv request="ACK" />
  <recv request="MESSAGE" />
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
</scenario>
"#
    )
}

fn contact_and_a_path_elsewhere(record_route: bool) {
    let dir = temp_dir();
    let prosody = Prosody::start(dir.path(), &[("juliet", "pw")]);
    let (uas_port, msrp_port) = (free_port(), free_port());
    let stox = Stox::start(
        dir.path(),
        prosody.component_port,
        &format!(
            "[sip.routes]\n\"sip.test\" = \"sip:127.0.0.1:{uas_port};transport=udp\"\n\
             [msrp]\nlisten = \"127.0.0.1:{msrp_port}\"\n"
        ),
    );
    stox.wait_online(1);
    let mut juliet = XmppClient::login("juliet", "pw", prosody.c2s_port);
    let trap = Trap::bind("127.0.0.2");
    let uas = sipp_uas_at(
        dir.path(),
        "uas",
        &invite_uas_pointing_at(trap.port, record_route),
        "127.0.0.1",
        uas_port,
    );
    juliet.send_raw(
        "<message to='romeo\\40sip.test@sip.localhost' type='chat' id='c1'>\
         <body>Wherefore art thou?</body><thread>th-9</thread></message>",
    );
    // The ACK is not sent to the Contact (or Route) the answer named, but where the
    // INVITE went: the configured route, where SIPp takes it. The a=path is not
    // connected to, the BYE not sent, and the message goes as MESSAGE through the route.
    let messages = finish(uas, dir.path(), "uas");
    assert!(messages.contains("ACK sip:romeo@127.0.0.2"), "{messages}");
    assert!(
        messages.contains("MESSAGE sip:romeo@sip.test SIP/2.0"),
        "{messages}"
    );
    assert!(messages.contains("Wherefore art thou?"), "{messages}");
    stox.wait_log("Not connecting MSRP there.", 1, WAIT);
    stox.wait_log("BYE failed. error=not sending there", 1, WAIT);
    let refused = format!("target=127.0.0.2:{}", trap.port);
    stox.wait_log(&refused, 2, WAIT);
    assert!(
        !juliet
            .stanzas_seen()
            .iter()
            .any(|s| s.contains("type=\"error\"")),
        "{:?}",
        juliet.stanzas_seen()
    );
    trap.assert_untouched("127.0.0.2 (Contact, Record-Route, a=path)");
}

#[test]
fn a_contact_and_a_path_naming_an_unvouched_loopback_address_are_not_followed() {
    contact_and_a_path_elsewhere(false);
}

#[test]
fn a_record_route_naming_an_unvouched_loopback_address_is_not_followed() {
    contact_and_a_path_elsewhere(true);
}

/// SIPp at the configured route: answers the INVITE 200 with a Contact (or, with
/// `record_route`, a Record-Route) at `elsewhere` (127.0.0.3, allowed but configured for
/// no credentials) and an a=path nobody may connect to, then takes the MESSAGE stox falls
/// back to.
fn invite_uas_dialog_at(elsewhere: u16, dead_path: u16, record_route: bool) -> String {
    let sdp = format!(
        "v=0\r\no=romeo 1 1 IN IP4 127.0.0.2\r\ns=-\r\nc=IN IP4 127.0.0.2\r\nt=0 0\r\n\
         m=message {dead_path} TCP/MSRP *\r\na=accept-types:text/plain\r\n\
         a=path:msrp://127.0.0.2:{dead_path}/romeo7;tcp\r\na=setup:passive\r\n"
    );
    let (rr, contact) = if record_route {
        (
            format!("Record-Route: <sip:127.0.0.3:{elsewhere};lr>\n"),
            format!("<sip:romeo@127.0.0.2:{dead_path}>"),
        )
    } else {
        (String::new(), format!("<sip:romeo@127.0.0.3:{elsewhere}>"))
    };
    format!(
        r#"<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="dialog-elsewhere">
  <recv request="INVITE" />
  <send>
    <![CDATA[
SIP/2.0 200 OK
[last_Via:]
[last_From:]
[last_To:];tag=[pid]SIPpTag01[call_number]
[last_Call-ID:]
[last_CSeq:]
{rr}Contact: {contact}
Content-Type: application/sdp
Content-Length: [len]

{sdp}]]>
  </send>
  <recv request="MESSAGE" />
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
</scenario>
"#
    )
}

/// SIPp at the dialog's remote target or Route: takes the ACK, challenges the BYE with a
/// 401 for the realm stox has credentials for, and expects nothing more.
fn bye_challenger() -> String {
    r#"<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="bye-challenger">
  <recv request="ACK" />
  <recv request="BYE" />
  <send>
    <![CDATA[
SIP/2.0 401 Unauthorized
[last_Via:]
[last_From:]
[last_To:]
[last_Call-ID:]
[last_CSeq:]
WWW-Authenticate: Digest realm="sip.test", nonce="n0nce1234", algorithm=MD5, qop="auth"
Content-Length: 0

]]>
  </send>
</scenario>
"#
    .to_string()
}

fn dialog_challenge_gets_no_credentials(record_route: bool) {
    let dir = temp_dir();
    let prosody = Prosody::start(dir.path(), &[("juliet", "pw")]);
    let (uas_port, msrp_port) = (free_port(), free_port());
    let stox = Stox::start(
        dir.path(),
        prosody.component_port,
        &format!(
            "allowed_destinations = [\"127.0.0.3\"]\n{CREDENTIALS}\n\
             [sip.routes]\n\"sip.test\" = \"sip:127.0.0.1:{uas_port};transport=udp\"\n\
             [msrp]\nlisten = \"127.0.0.1:{msrp_port}\"\n"
        ),
    );
    stox.wait_online(1);
    let mut juliet = XmppClient::login("juliet", "pw", prosody.c2s_port);
    let trap = Trap::bind("127.0.0.2");
    let elsewhere = free_port();
    let challenger = sipp_uas_at(dir.path(), "bye", &bye_challenger(), "127.0.0.3", elsewhere);
    let uas = sipp_uas_at(
        dir.path(),
        "uas",
        &invite_uas_dialog_at(elsewhere, trap.port, record_route),
        "127.0.0.1",
        uas_port,
    );
    juliet.send_raw(
        "<message to='romeo\\40sip.test@sip.localhost' type='chat' id='d1'>\
         <body>Good night, good night!</body><thread>th-7</thread></message>",
    );
    let routed = finish(uas, dir.path(), "uas");
    assert!(routed.contains("Good night, good night!"), "{routed}");
    // The BYE went to the dialog's remote target (or Route), was challenged for realm
    // sip.test, and that challenge was not answered: one BYE, no credentials.
    let messages = finish(challenger, dir.path(), "bye");
    stox.wait_log("Challenge from a destination not configured", 1, WAIT);
    assert_eq!(messages.matches("BYE sip:romeo@").count(), 1, "{messages}");
    assert!(!messages.contains("Authorization"), "{messages}");
    assert!(!messages.contains("gwuser"), "{messages}");
    trap.assert_untouched("127.0.0.2 (a=path)");
}

#[test]
fn a_challenge_from_a_dialogs_contact_gets_no_credentials() {
    dialog_challenge_gets_no_credentials(false);
}

#[test]
fn a_challenge_from_a_record_route_gets_no_credentials() {
    dialog_challenge_gets_no_credentials(true);
}
