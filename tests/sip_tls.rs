//! SIP over TLS (RFC 3261 26, RFC 5630) and the stream transport limits, against the stox
//! binary with a real Prosody behind it. The CA and certificates are made by each test;
//! the TLS peers are rustls on loopback.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;

const SECS10: Duration = Duration::from_secs(10);

/// Prosody with juliet, and stox with a `tls:` listener whose certificate names localhost
/// and 127.0.0.1; `extra` goes into `[sip]`.
fn started(dir: &tempfile::TempDir, pki: &TestPki, extra: &str) -> (Prosody, Stox) {
    let identity = pki.leaf(dir.path(), "stox", &["localhost", "127.0.0.1"]);
    let prosody = Prosody::start(dir.path(), &[("juliet", "pw")]);
    let stox = Stox::start_tls(dir.path(), prosody.component_port, pki, &identity, extra);
    stox.wait_online(1);
    (prosody, stox)
}

fn tls_route(port: u16) -> String {
    format!("[sip.routes]\n\"sip.test\" = \"sip:127.0.0.1:{port};transport=tls\"\n")
}

fn message_to_juliet(via: &str, uri: &str, body: &str) -> String {
    sip_request("MESSAGE", uri, "TLS", "Content-Type: text/plain\r\n", body).replace("LOCAL", via)
}

#[test]
fn a_message_over_tls_reaches_juliet_and_the_200_comes_back_on_the_same_connection() {
    let dir = temp_dir();
    let pki = TestPki::new();
    let (prosody, stox) = started(&dir, &pki, "");
    let mut juliet = XmppClient::login("juliet", "pw", prosody.c2s_port);

    let mut tls = TlsSipClient::connect(stox.tls_port.unwrap(), &pki, "localhost");
    let local = tls.local_addr();
    for (uri, body) in [
        ("sips:juliet@localhost", "Wherefore art thou Romeo?"),
        (
            "sip:juliet@localhost",
            "Deny thy father and refuse thy name.",
        ),
    ] {
        tls.send(message_to_juliet(&local, uri, body).as_bytes());
        let response = tls
            .read_message()
            .expect("a response on the TLS connection");
        assert!(
            status_line(&response).starts_with("SIP/2.0 200"),
            "{response}"
        );
        assert!(response.contains("Via: SIP/2.0/TLS "), "{response}");
        juliet.expect_stanza(&[&format!("<body>{body}</body>")], SECS10);
    }
}

#[test]
fn juliet_reaches_a_sip_user_over_tls_through_a_route() {
    let dir = temp_dir();
    let pki = TestPki::new();
    let uas = TlsUas::spawn(&pki.leaf(dir.path(), "uas", &["127.0.0.1"]));
    let (prosody, _stox) = started(&dir, &pki, &tls_route(uas.port));
    let mut juliet = XmppClient::login("juliet", "pw", prosody.c2s_port);

    for (i, body) in ["Art thou not Romeo?", "And a Montague?"]
        .iter()
        .enumerate()
    {
        juliet.send(
            "romeo\\40sip.test@sip.localhost",
            body,
            Some(&format!("tls-{i}")),
            &format!("m{i}"),
        );
        let request = match uas.next_event(SECS10) {
            Some(UasEvent::Request(r)) => r,
            other => panic!("expected a MESSAGE over TLS, got {other:?}"),
        };
        assert!(
            request.starts_with("MESSAGE sip:romeo@sip.test SIP/2.0\r\n"),
            "{request}"
        );
        assert!(
            request.contains("\r\nVia: SIP/2.0/TLS 127.0.0.1:"),
            "{request}"
        );
        assert!(request.contains(body), "{request}");
    }
    // Delivered: no error comes back, and both went over one connection.
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !juliet
            .stanzas_seen()
            .iter()
            .any(|s| s.contains("type=\"error\"")),
        "{:?}",
        juliet.stanzas_seen()
    );
    assert!(uas.next_event(Duration::from_millis(100)).is_none());
    assert_eq!(uas.connections(), 1, "the TLS connection should be reused");
}

#[test]
fn a_sips_route_goes_over_tls() {
    let dir = temp_dir();
    let pki = TestPki::new();
    let uas = TlsUas::spawn(&pki.leaf(dir.path(), "uas", &["127.0.0.1"]));
    let route = format!(
        "[sip.routes]\n\"sip.test\" = \"sips:127.0.0.1:{}\"\n",
        uas.port
    );
    let (prosody, _stox) = started(&dir, &pki, &route);
    let mut juliet = XmppClient::login("juliet", "pw", prosody.c2s_port);
    juliet.send(
        "romeo\\40sip.test@sip.localhost",
        "Secure, I hope.",
        None,
        "s1",
    );
    match uas.next_event(SECS10) {
        Some(UasEvent::Request(r)) => assert!(r.contains("Via: SIP/2.0/TLS "), "{r}"),
        other => panic!("expected a MESSAGE over TLS, got {other:?}"),
    }
}

#[test]
fn a_certificate_for_another_name_is_refused_and_juliet_gets_an_error() {
    let dir = temp_dir();
    let pki = TestPki::new();
    let uas = TlsUas::spawn(&pki.leaf(dir.path(), "uas", &["wrong.example"]));
    let (prosody, stox) = started(&dir, &pki, &tls_route(uas.port));
    let mut juliet = XmppClient::login("juliet", "pw", prosody.c2s_port);

    juliet.send(
        "romeo\\40sip.test@sip.localhost",
        "Is this thee?",
        None,
        "wrong1",
    );
    let err = juliet.expect_stanza(&["type=\"error\"", "wrong1"], SECS10);
    assert!(
        err.contains("service-unavailable") || err.contains("remote-server-not-found"),
        "{err}"
    );
    match uas.next_event(SECS10) {
        Some(UasEvent::HandshakeFailed(_)) => {}
        other => panic!("stox should have aborted the handshake, got {other:?}"),
    }
    stox.wait_log("not valid for name", 1, SECS10);
}

#[test]
fn plaintext_sip_on_the_tls_port_is_closed_and_tls_still_works() {
    let dir = temp_dir();
    let pki = TestPki::new();
    let (_prosody, stox) = started(&dir, &pki, "");
    let port = stox.tls_port.unwrap();

    let mut plain = TcpStream::connect(("127.0.0.1", port)).unwrap();
    plain.set_read_timeout(Some(SECS10)).unwrap();
    let local = plain.local_addr().unwrap().to_string();
    let _ = plain.write_all(message_to_juliet(&local, "sip:juliet@localhost", "hi").as_bytes());
    let mut got = Vec::new();
    let _ = plain.read_to_end(&mut got);
    assert!(
        !String::from_utf8_lossy(&got).contains("SIP/2.0"),
        "{got:?}"
    );
    // Garbage of every kind, then a clean TLS exchange.
    for junk in [
        &b"\x16\x03\x01\x00\x05hello"[..],
        b"\x00\x00\x00",
        b"\x16\x03\x03\xff\xff",
    ] {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(SECS10)).unwrap();
        let _ = s.write_all(junk);
        let _ = s.read_to_end(&mut Vec::new());
    }
    stox.wait_log("TLS handshake failed; connection closed.", 1, SECS10);
    let mut tls = TlsSipClient::connect(port, &pki, "localhost");
    let local = tls.local_addr();
    tls.send(
        sip_request("OPTIONS", "sip:juliet@localhost", "TLS", "", "")
            .replace("LOCAL", &local)
            .as_bytes(),
    );
    let r = tls.read_message().expect("an answer");
    assert!(status_line(&r).starts_with("SIP/2.0 200"), "{r}");
    assert!(!stox.log().contains("panicked"), "{}", stox.log());
}

#[test]
fn idle_connections_are_closed_and_keepalive_pings_answered() {
    let dir = temp_dir();
    let pki = TestPki::new();
    let (_prosody, stox) = started(&dir, &pki, "idle_timeout_ms = 1500");

    let mut tls = TlsSipClient::connect(stox.tls_port.unwrap(), &pki, "localhost");
    let mut tcp = TcpStream::connect(("127.0.0.1", stox.sip_port)).unwrap();
    tcp.set_read_timeout(Some(SECS10)).unwrap();
    // Pings inside the timeout keep the connection and get a pong (RFC 5626 4.4.1).
    for _ in 0..3 {
        std::thread::sleep(Duration::from_millis(700));
        tls.send(b"\r\n\r\n");
        assert_eq!(tls.read_raw(), b"\r\n");
    }
    // Then silence: both are closed after about 1.5 s.
    let start = Instant::now();
    assert!(
        tls.read_raw().is_empty(),
        "the TLS connection should be closed"
    );
    let mut buf = [0u8; 16];
    assert_eq!(
        tcp.read(&mut buf).unwrap_or(0),
        0,
        "the TCP connection should be closed"
    );
    let waited = start.elapsed();
    assert!(waited < Duration::from_secs(5), "{waited:?}");
    stox.wait_log("Closing an idle connection.", 2, SECS10);
}

#[test]
fn the_connection_limit_turns_away_connections_beyond_it() {
    let dir = temp_dir();
    let pki = TestPki::new();
    let (_prosody, stox) = started(&dir, &pki, "max_connections = 2");

    let mut first = TlsSipClient::connect(stox.tls_port.unwrap(), &pki, "localhost");
    let second = TcpStream::connect(("127.0.0.1", stox.sip_port)).unwrap();
    let mut third = TcpStream::connect(("127.0.0.1", stox.sip_port)).unwrap();
    third.set_read_timeout(Some(SECS10)).unwrap();
    assert_eq!(
        third.read(&mut [0u8; 16]).unwrap_or(0),
        0,
        "the third should be closed"
    );
    stox.wait_log("sip.max_connections reached", 1, SECS10);

    // The first two still work; closing one frees a slot.
    let local = first.local_addr();
    first.send(
        sip_request("OPTIONS", "sip:juliet@localhost", "TLS", "", "")
            .replace("LOCAL", &local)
            .as_bytes(),
    );
    assert!(status_line(&first.read_message().unwrap()).starts_with("SIP/2.0 200"));
    drop(second);
    std::thread::sleep(Duration::from_millis(300));
    let mut fourth = TcpStream::connect(("127.0.0.1", stox.sip_port)).unwrap();
    fourth.set_read_timeout(Some(SECS10)).unwrap();
    let local = fourth.local_addr().unwrap().to_string();
    fourth
        .write_all(
            sip_request("OPTIONS", "sip:juliet@localhost", "TCP", "", "")
                .replace("LOCAL", &local)
                .as_bytes(),
        )
        .unwrap();
    let r = read_sip_message(&mut fourth, &mut Vec::new()).expect("an answer once a slot is free");
    assert!(status_line(&r).starts_with("SIP/2.0 200"), "{r}");
}

#[test]
fn a_request_over_the_size_limit_gets_513_and_the_connection_closes() {
    let dir = temp_dir();
    let pki = TestPki::new();
    let (_prosody, stox) = started(&dir, &pki, "max_message_size = 2048");

    let mut tls = TlsSipClient::connect(stox.tls_port.unwrap(), &pki, "localhost");
    let local = tls.local_addr();
    let big = "x".repeat(4000);
    tls.send(message_to_juliet(&local, "sip:juliet@localhost", &big).as_bytes());
    let r = tls.read_message().expect("an answer");
    assert!(status_line(&r).starts_with("SIP/2.0 513"), "{r}");
    assert!(
        tls.read_message().is_none(),
        "the connection should be closed"
    );
    stox.wait_log("Request over sip.max_message_size", 1, SECS10);
}
