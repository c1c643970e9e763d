//! "Delivered, not just routed" (issue 12 item 1): a SIP MESSAGE is answered 200 only for a
//! stanza the XMPP server took; an error the server returns for it first decides the answer
//! (RFC 7247 section 8.1). The same test body runs against Prosody and ejabberd.

mod common;

use std::time::Duration;

use common::*;

/// What each server answers, run through the same steps.
fn messages_to_missing_and_existing_users(
    component_port: u16,
    c2s_port: u16,
    dir: &std::path::Path,
) {
    let stox = Stox::start(dir, component_port, "");
    stox.wait_online(1);
    let mut juliet = XmppClient::login("juliet", "pw", c2s_port);

    // No such account: the server's bounce decides, mapped by RFC 7247 Table 3.
    let body = "Is there no pity sitting in the clouds";
    let r = udp_exchange(
        stox.sip_port,
        &sip_request(
            "MESSAGE",
            "sip:nobody@localhost",
            "UDP",
            "Content-Type: text/plain\r\n",
            body,
        ),
    );
    let status = status_line(&r);
    assert!(
        status.starts_with("SIP/2.0 503 Refused by the XMPP server: service-unavailable"),
        "{r}"
    );
    assert!(!r.contains("Retry-After"), "a retry would not help: {r}");

    // An existing user still gets it, and the MESSAGE 200.
    let body = "Neither, fair saint, if either thee dislike";
    let r = udp_exchange(
        stox.sip_port,
        &sip_request(
            "MESSAGE",
            "sip:juliet@localhost",
            "UDP",
            "Content-Type: text/plain\r\n",
            body,
        ),
    );
    assert_eq!(status_line(&r), "SIP/2.0 200 OK", "{r}");
    juliet.expect_stanza(&[body], Duration::from_secs(10));
    stox.wait_log(
        "The XMPP server refused the message.",
        1,
        Duration::from_secs(5),
    );
}

#[test]
fn a_message_to_a_missing_user_is_refused_with_the_mapped_code_prosody() {
    let dir = temp_dir();
    let prosody = Prosody::start(dir.path(), &[("juliet", "pw")]);
    messages_to_missing_and_existing_users(prosody.component_port, prosody.c2s_port, dir.path());
}

#[test]
fn a_message_to_a_missing_user_is_refused_with_the_mapped_code_ejabberd() {
    let dir = temp_dir();
    let ejabberd = Ejabberd::start(dir.path(), &[("juliet", "pw")]);
    messages_to_missing_and_existing_users(ejabberd.component_port, ejabberd.c2s_port, dir.path());
}
