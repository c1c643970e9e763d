//! Single messages both ways through a real ejabberd (an `ejabberd_service` listener).

mod common;

use std::time::Duration;

use common::*;

#[test]
fn messages_cross_ejabberd_both_ways() {
    let dir = temp_dir();
    let ejabberd = Ejabberd::start(dir.path(), &[("juliet", "pw")]);
    let uas_port = free_port();
    let stox = Stox::start(
        dir.path(),
        ejabberd.component_port,
        &format!("[sip.routes]\n\"sip.test\" = \"sip:127.0.0.1:{uas_port};transport=udp\"\n"),
    );
    stox.wait_online(1);
    let mut juliet = XmppClient::login("juliet", "pw", ejabberd.c2s_port);

    // (a) SIP -> XMPP.
    let r = Sipp::run_uac(
        dir.path(),
        "uac",
        &message_uac("sip:juliet@localhost", "Neither, fair saint", 200),
        &format!("127.0.0.1:{}", stox.sip_port),
        &[],
    );
    r.assert_ok();
    let stanza = juliet.expect_stanza(&["Neither, fair saint"], Duration::from_secs(10));
    assert!(
        stanza.contains("romeo\\40sip.test@sip.localhost"),
        "{stanza}"
    );

    // (b) XMPP -> SIP.
    let uas = Sipp::spawn_uas(dir.path(), "uas", &message_uas(200, "OK"), uas_port, 1);
    juliet.send(
        "romeo\\40sip.test@sip.localhost",
        "Art thou not Romeo",
        None,
        "e1",
    );
    let r = uas.finish(Duration::from_secs(20));
    r.assert_ok();
    assert!(
        r.messages.contains("From: <sip:juliet@localhost;gr=test>"),
        "{}",
        r.messages
    );
    assert!(r.messages.contains("Art thou not Romeo"), "{}", r.messages);
}
