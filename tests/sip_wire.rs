//! What stox answers on the wire: malformed requests, unknown methods, TCP framing.
//! Real sockets against the stox binary, with a real Prosody behind it.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::*;

fn started() -> (tempfile::TempDir, Prosody, Stox) {
    let dir = temp_dir();
    let prosody = Prosody::start(dir.path(), &[("juliet", "pw")]);
    let stox = Stox::start(dir.path(), prosody.component_port, "");
    stox.wait_online(1);
    (dir, prosody, stox)
}

#[test]
fn malformed_requests_get_400_with_a_reason_that_names_the_problem() {
    let (_dir, _prosody, stox) = started();
    let juliet = "sip:juliet@localhost";

    let no_colon = sip_request("MESSAGE", juliet, "UDP", "This line has no colon\r\n", "hi");
    let r = udp_exchange(stox.sip_port, &no_colon);
    assert!(status_line(&r).starts_with("SIP/2.0 400 "), "{r}");

    let short = sip_request(
        "MESSAGE",
        juliet,
        "UDP",
        "Content-Type: text/plain\r\n",
        "hi",
    )
    .replace("Content-Length: 2", "Content-Length: 20");
    let r = udp_exchange(stox.sip_port, &short);
    assert_eq!(
        status_line(&r),
        "SIP/2.0 400 Body shorter than Content-Length",
        "{r}"
    );

    let no_cseq = sip_request("MESSAGE", juliet, "UDP", "", "").replace("CSeq: 1 MESSAGE\r\n", "");
    let r = udp_exchange(stox.sip_port, &no_cseq);
    assert!(
        status_line(&r).starts_with("SIP/2.0 400 ") && status_line(&r).contains("CSeq"),
        "{r}"
    );
}

#[test]
fn unknown_and_unserved_methods_are_answered_with_allow() {
    let (_dir, _prosody, stox) = started();
    let r = udp_exchange(
        stox.sip_port,
        &sip_request("FROBNICATE", "sip:juliet@localhost", "UDP", "", ""),
    );
    assert!(status_line(&r).starts_with("SIP/2.0 501"), "{r}");
    assert!(r.contains("\r\nAllow: "), "{r}");

    let r = udp_exchange(
        stox.sip_port,
        &sip_request("OPTIONS", "sip:juliet@localhost", "UDP", "", ""),
    );
    assert!(status_line(&r).starts_with("SIP/2.0 200"), "{r}");
    assert!(r.contains("MESSAGE"), "{r}");
}

#[test]
fn tcp_frames_by_content_length_across_partial_and_joined_writes() {
    let (_dir, prosody, stox) = started();
    let mut juliet = XmppClient::login("juliet", "pw", prosody.c2s_port);
    let mut tcp = TcpStream::connect(("127.0.0.1", stox.sip_port)).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let local = tcp.local_addr().unwrap().to_string();
    let msg = |body: &str| {
        sip_request(
            "MESSAGE",
            "sip:juliet@localhost",
            "TCP",
            "Content-Type: text/plain\r\n",
            body,
        )
        .replace("LOCAL", &local)
    };
    // Two messages in one write, then one in three pieces.
    let joined = msg("one") + &msg("two");
    tcp.write_all(joined.as_bytes()).unwrap();
    let third = msg("three");
    let (a, rest) = third.as_bytes().split_at(7);
    let (b, c) = rest.split_at(rest.len() - 2);
    for part in [a, b, c] {
        tcp.write_all(part).unwrap();
        tcp.flush().unwrap();
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut got = String::new();
    let mut buf = [0u8; 8192];
    while got.matches("SIP/2.0 200").count() < 3 {
        let n = tcp
            .read(&mut buf)
            .expect("responses on the same connection");
        assert!(n > 0, "connection closed; got {got}");
        got.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    for body in ["one", "two", "three"] {
        juliet.expect_stanza(&[&format!("<body>{body}</body>")], Duration::from_secs(10));
    }
}

#[test]
fn users_of_other_xmpp_domains_may_not_use_the_gateway() {
    let dir = temp_dir();
    let prosody = Prosody::start(
        dir.path(),
        &[("juliet", "pw"), ("mallory@other.localhost", "pw")],
    );
    let stox = Stox::start(dir.path(), prosody.component_port, "");
    stox.wait_online(1);
    let mut mallory = XmppClient::login("mallory@other.localhost", "pw", prosody.c2s_port);
    mallory.send("romeo\\40sip.test@sip.localhost", "relay me", None, "f1");
    let err = mallory.expect_stanza(&["type=\"error\"", "id=\"f1\""], Duration::from_secs(10));
    assert!(err.contains("forbidden"), "{err}");
}
