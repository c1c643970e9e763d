//! Single messages (RFC 7572) both ways through a real Prosody and real SIPp, on loopback.

mod common;

use std::time::Duration;

use common::*;

const SECS10: Duration = Duration::from_secs(10);

fn call_id(messages: &str) -> String {
    messages
        .lines()
        .find_map(|l| l.strip_prefix("Call-ID: "))
        .expect("a Call-ID in SIPp's trace")
        .trim()
        .to_string()
}

fn routes_to(port: u16) -> String {
    format!("[sip.routes]\n\"sip.test\" = \"sip:127.0.0.1:{port};transport=udp\"\n")
}

#[test]
fn a_sip_message_reaches_juliet_with_the_call_id_as_thread() {
    let dir = temp_dir();
    let prosody = Prosody::start(dir.path(), &[("juliet", "pw")]);
    let stox = Stox::start(dir.path(), prosody.component_port, "");
    stox.wait_online(1);
    let mut juliet = XmppClient::login("juliet", "pw", prosody.c2s_port);

    let r = Sipp::run_uac(
        dir.path(),
        "uac",
        &message_uac(
            "sip:juliet@localhost",
            "Neither, fair saint, if either thee dislike.",
            200,
        ),
        &format!("127.0.0.1:{}", stox.sip_port),
        &[],
    );
    r.assert_ok();
    let stanza = juliet.expect_stanza(&["Neither, fair saint"], SECS10);
    assert!(
        stanza.contains("romeo\\40sip.test@sip.localhost"),
        "{stanza}"
    );
    let thread = format!("<thread>{}</thread>", call_id(&r.messages));
    assert!(stanza.contains(&thread), "{stanza} lacks {thread}");
}

#[test]
fn juliet_reaches_a_sip_user_through_a_configured_route() {
    let dir = temp_dir();
    let prosody = Prosody::start(dir.path(), &[("juliet", "pw")]);
    let uas_port = free_port();
    let stox = Stox::start(dir.path(), prosody.component_port, &routes_to(uas_port));
    stox.wait_online(1);
    let mut juliet = XmppClient::login("juliet", "pw", prosody.c2s_port);

    let uas = Sipp::spawn_uas(dir.path(), "uas", &message_uas(200, "OK"), uas_port, 1);
    juliet.send(
        "romeo\\40sip.test@sip.localhost",
        "Art thou not Romeo, and a Montague?",
        Some("th-1"),
        "m1",
    );
    let r = uas.finish(Duration::from_secs(20));
    r.assert_ok();
    assert!(
        r.messages.contains("MESSAGE sip:romeo@sip.test SIP/2.0"),
        "{}",
        r.messages
    );
    assert!(
        r.messages
            .contains("From: <sip:juliet@localhost;gr=test>;tag="),
        "{}",
        r.messages
    );
    assert!(r.messages.contains("Call-ID: th-1"), "{}", r.messages);
    assert!(
        r.messages.contains("Art thou not Romeo, and a Montague?"),
        "{}",
        r.messages
    );
    // Delivered: no error comes back.
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
fn a_404_from_sip_comes_back_as_item_not_found() {
    let dir = temp_dir();
    let prosody = Prosody::start(dir.path(), &[("juliet", "pw")]);
    let uas_port = free_port();
    let stox = Stox::start(dir.path(), prosody.component_port, &routes_to(uas_port));
    stox.wait_online(1);
    let mut juliet = XmppClient::login("juliet", "pw", prosody.c2s_port);

    let uas = Sipp::spawn_uas(
        dir.path(),
        "uas",
        &message_uas(404, "Not Found"),
        uas_port,
        1,
    );
    juliet.send(
        "nobody\\40sip.test@sip.localhost",
        "Is anyone there?",
        None,
        "m404",
    );
    uas.finish(Duration::from_secs(20)).assert_ok();
    let err = juliet.expect_stanza(&["type=\"error\"", "id=\"m404\""], SECS10);
    assert!(err.contains("item-not-found"), "{err}");
}

#[test]
fn stox_waits_for_prosody_and_survives_its_restart() {
    let dir = temp_dir();
    let mut prosody = Prosody::configure(dir.path(), &[("juliet", "pw")]);
    let stox = Stox::start(dir.path(), prosody.component_port, "");
    stox.wait_log("XMPP connect failed.", 2, SECS10);
    let target = format!("127.0.0.1:{}", stox.sip_port);

    // Not connected yet: refused with 503, never a 200 for a message that would be lost.
    Sipp::run_uac(
        dir.path(),
        "early",
        &message_uac("sip:juliet@localhost", "too early", 503),
        &target,
        &[],
    )
    .assert_ok();

    prosody.start_again();
    stox.wait_online(1);
    let mut juliet = XmppClient::login("juliet", "pw", prosody.c2s_port);
    Sipp::run_uac(
        dir.path(),
        "first",
        &message_uac("sip:juliet@localhost", "first light", 200),
        &target,
        &[],
    )
    .assert_ok();
    juliet.expect_stanza(&["first light"], SECS10);

    prosody.stop();
    stox.wait_log("XMPP link lost; reconnecting.", 1, SECS10);
    Sipp::run_uac(
        dir.path(),
        "down",
        &message_uac("sip:juliet@localhost", "while down", 503),
        &target,
        &[],
    )
    .assert_ok();

    prosody.start_again();
    stox.wait_online(2);
    let mut juliet = XmppClient::login("juliet", "pw", prosody.c2s_port);
    Sipp::run_uac(
        dir.path(),
        "again",
        &message_uac("sip:juliet@localhost", "second light", 200),
        &target,
        &[],
    )
    .assert_ok();
    juliet.expect_stanza(&["second light"], SECS10);
    // What was refused with 503 is the sender's to retry; stox did not keep and replay it.
    assert!(!juliet
        .stanzas_seen()
        .iter()
        .any(|s| s.contains("while down")));
}

#[test]
fn invalid_stanzas_relayed_by_prosody_do_not_end_the_link() {
    let dir = temp_dir();
    let prosody = Prosody::start(dir.path(), &[("juliet", "pw")]);
    let stox = Stox::start(dir.path(), prosody.component_port, "");
    stox.wait_online(1);
    let mut juliet = XmppClient::login("juliet", "pw", prosody.c2s_port);
    for xml in [
        "<presence to='romeo\\40sip.test@sip.localhost'><show>bogus</show></presence>",
        "<presence to='romeo\\40sip.test@sip.localhost'><priority>abc</priority></presence>",
        "<message to='romeo\\40sip.test@sip.localhost' type='bogus' id='b1'><body>x</body></message>",
        "<message to='romeo\\40sip.test@sip.localhost' id='b2'><thread>a</thread><thread>b</thread><body>x</body></message>",
        "<message to='foo\\@sip.localhost' id='b3'><body>trailing backslash</body></message>",
        "<iq to='sip.localhost' type='get' id='disco-after-junk'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>",
    ] {
        juliet.send_raw(xml);
    }
    // The link answers the disco query after all the junk: it is still up.
    let info = juliet.expect_stanza(&["id=\"disco-after-junk\"", "type=\"result\""], SECS10);
    assert!(
        info.contains("category=\"gateway\"") && info.contains("type=\"simple\""),
        "{info}"
    );
    let r = Sipp::run_uac(
        dir.path(),
        "after",
        &message_uac("sip:juliet@localhost", "still here", 200),
        &format!("127.0.0.1:{}", stox.sip_port),
        &[],
    );
    r.assert_ok();
    juliet.expect_stanza(&["still here"], SECS10);
    assert_eq!(
        stox.log().matches("Component online.").count(),
        1,
        "{}",
        stox.log()
    );
}

#[test]
fn sip_requests_for_other_domains_are_not_relayed() {
    let dir = temp_dir();
    let prosody = Prosody::start(dir.path(), &[("juliet", "pw")]);
    let stox = Stox::start(dir.path(), prosody.component_port, "");
    stox.wait_online(1);
    let r = Sipp::run_uac(
        dir.path(),
        "relay",
        &message_uac("sip:juliet@elsewhere.example", "relay me", 404),
        &format!("127.0.0.1:{}", stox.sip_port),
        &[],
    );
    r.assert_ok();
}

/// A 200 means Prosody has taken the stanza, not that stox wrote it to a socket: while
/// Prosody is frozen (SIGSTOP) the MESSAGE waits unanswered; once it runs again the 200
/// comes and juliet has the message. Frozen and then killed, the MESSAGE gets 503.
#[test]
fn a_message_is_answered_200_only_once_prosody_has_taken_it() {
    let dir = temp_dir();
    let mut prosody = Prosody::start(dir.path(), &[("juliet", "pw")]);
    let stox = Stox::start(dir.path(), prosody.component_port, "");
    stox.wait_online(1);
    let mut juliet = XmppClient::login("juliet", "pw", prosody.c2s_port);

    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let local = sock.local_addr().unwrap().to_string();
    let exchange = |body: &str, wait: Duration| -> Option<String> {
        let request = sip_request(
            "MESSAGE",
            "sip:juliet@localhost",
            "UDP",
            "Content-Type: text/plain\r\n",
            body,
        )
        .replace("LOCAL", &local);
        sock.send_to(request.as_bytes(), ("127.0.0.1", stox.sip_port))
            .unwrap();
        sock.set_read_timeout(Some(wait)).unwrap();
        let mut buf = [0u8; 65536];
        loop {
            let (n, _) = sock.recv_from(&mut buf).ok()?;
            let text = String::from_utf8_lossy(&buf[..n]).into_owned();
            if !status_line(&text).contains(" 100 ") {
                return Some(text);
            }
        }
    };

    prosody.signal("STOP");
    assert_eq!(
        exchange("frozen then thawed", Duration::from_millis(1500)),
        None,
        "answered while Prosody was frozen"
    );
    prosody.signal("CONT");
    let mut buf = [0u8; 65536];
    sock.set_read_timeout(Some(SECS10)).unwrap();
    let (n, _) = sock
        .recv_from(&mut buf)
        .expect("the 200 once Prosody runs again");
    let answer = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(status_line(&answer).contains(" 200 "), "{answer}");
    juliet.expect_stanza(&["frozen then thawed"], SECS10);

    prosody.signal("STOP");
    assert_eq!(
        exchange("frozen then killed", Duration::from_millis(1000)),
        None
    );
    prosody.signal("KILL");
    sock.set_read_timeout(Some(SECS10)).unwrap();
    let (n, _) = sock
        .recv_from(&mut buf)
        .expect("an answer once the link is lost");
    let answer = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(status_line(&answer).contains(" 503 "), "{answer}");
}
