//! Digest authentication on the wire: stox's SIP stack (in process) against a scripted UDP
//! peer on loopback that challenges with 401/407. What is checked is what the peer sees:
//! a retry with a new branch and the next CSeq, a response computed independently here,
//! nc counting per nonce, and which challenges are final.

use std::time::Duration;

use md5::Md5;
use sha2::{Digest, Sha256};
use stox::config::Config;
use stox::sip::endpoint::{self, SipHandle};
use stox::sip::message::{parse, Framing};
use stox::sip::{Request, SipMessage};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

/// A peer that answers the n-th request with `script[n]` (a status line plus extra header
/// lines) and reports each request it got.
async fn peer(script: Vec<String>) -> (u16, mpsc::UnboundedReceiver<String>) {
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let port = sock.local_addr().unwrap().port();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65536];
        let mut n = 0;
        let mut last_branch = String::new();
        loop {
            let Ok((len, from)) = sock.recv_from(&mut buf).await else {
                return;
            };
            let req = String::from_utf8_lossy(&buf[..len]).into_owned();
            let branch = header(&req, "Via").unwrap_or_default();
            if branch == last_branch {
                continue; // a retransmission
            }
            last_branch = branch;
            let Some(answer) = script.get(n) else {
                return;
            };
            n += 1;
            let mut resp = format!("SIP/2.0 {answer}\r\n");
            for name in ["Via", "From", "Call-ID", "CSeq"] {
                resp.push_str(&format!("{name}: {}\r\n", header(&req, name).unwrap()));
            }
            resp.push_str(&format!("To: {};tag=peer\r\n", header(&req, "To").unwrap()));
            resp.push_str("Content-Length: 0\r\n\r\n");
            let _ = sock.send_to(resp.as_bytes(), from).await;
            let _ = tx.send(req);
        }
    });
    (port, rx)
}

fn header(msg: &str, name: &str) -> Option<String> {
    msg.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}: ")))
        .map(|v| v.trim().to_string())
}

/// A digest parameter of an Authorization value (quoted or not; no escapes in these tests).
fn param(value: &str, name: &str) -> Option<String> {
    let i = value.find(&format!(" {name}="))? + name.len() + 2;
    let rest = &value[i..];
    Some(match rest.strip_prefix('"') {
        Some(q) => q[..q.find('"')?].to_string(),
        None => rest.split(',').next()?.trim().to_string(),
    })
}

async fn stack(port: u16, credentials: &str) -> SipHandle {
    let text = format!(
        r#"[xmpp]
jid = "sip.localhost"
server = "127.0.0.1:5347"
secret = "s"
domains = ["localhost"]

[sip]
listen = ["udp:127.0.0.1:0"]
routes = {{ "sip.test" = "sip:127.0.0.1:{port};transport=udp" }}
{credentials}
"#
    );
    let config = Config::parse(&text).unwrap();
    let (handle, _incoming) = endpoint::start(&config).await.unwrap();
    handle
}

const CREDS: &str = r#"
[[sip.credentials]]
realm = "sip.test"
username = "stox"
password = "secret pw"

[[sip.credentials]]
realm = "proxy.test"
username = "gw"
password = "proxy pw"
"#;

fn message(cseq: u32) -> Request {
    let text = format!(
        "MESSAGE sip:romeo@sip.test SIP/2.0\r\n\
         Via: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bKreplaced\r\nMax-Forwards: 70\r\n\
         From: <sip:juliet@localhost>;tag=jt\r\nTo: <sip:romeo@sip.test>\r\n\
         Call-ID: auth-wire-{cseq}\r\nCSeq: {cseq} MESSAGE\r\n\
         Content-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello"
    );
    match parse(text.as_bytes(), Framing::Datagram, 65535)
        .unwrap()
        .message
    {
        SipMessage::Request(r) => r,
        _ => unreachable!(),
    }
}

fn h<D: Digest>(s: &str) -> String {
    D::digest(s.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// RFC 7616 3.4.1 with qop=auth, computed here without stox's code.
fn expected<D: Digest>(user: &str, realm: &str, pw: &str, auth: &str, uri: &str) -> String {
    let nonce = param(auth, "nonce").unwrap();
    let nc = param(auth, "nc").unwrap();
    let cnonce = param(auth, "cnonce").unwrap();
    let ha1 = h::<D>(&format!("{user}:{realm}:{pw}"));
    let ha2 = h::<D>(&format!("MESSAGE:{uri}"));
    h::<D>(&format!("{ha1}:{nonce}:{nc}:{cnonce}:auth:{ha2}"))
}

async fn next(rx: &mut mpsc::UnboundedReceiver<String>) -> String {
    tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("the peer got a request")
        .expect("the peer is running")
}

#[tokio::test]
async fn a_401_is_answered_once_with_a_new_branch_the_next_cseq_and_a_valid_response() {
    let (port, mut seen) = peer(vec![
        "401 Unauthorized\r\nWWW-Authenticate: Digest realm=\"sip.test\", nonce=\"n-1\", qop=\"auth,auth-int\", opaque=\"op\"".into(),
        "200 OK".into(),
        "200 OK".into(),
    ])
    .await;
    let sip = stack(port, CREDS).await;
    let r = sip.send(message(7)).await.unwrap();
    assert_eq!(r.status_code.code(), 200);

    let first = next(&mut seen).await;
    let retry = next(&mut seen).await;
    assert!(header(&first, "Authorization").is_none(), "{first}");
    assert_eq!(header(&retry, "CSeq").as_deref(), Some("8 MESSAGE"));
    assert_eq!(header(&retry, "Call-ID"), header(&first, "Call-ID"));
    assert_eq!(header(&retry, "From"), header(&first, "From"));
    assert_ne!(header(&retry, "Via"), header(&first, "Via"), "a new branch");
    let auth = header(&retry, "Authorization").expect("Authorization on the retry");
    assert!(auth.starts_with("Digest "), "{auth}");
    assert_eq!(param(&auth, "username").as_deref(), Some("stox"));
    assert_eq!(param(&auth, "uri").as_deref(), Some("sip:romeo@sip.test"));
    assert_eq!(param(&auth, "qop").as_deref(), Some("auth"));
    assert_eq!(param(&auth, "nc").as_deref(), Some("00000001"));
    assert_eq!(param(&auth, "opaque").as_deref(), Some("op"));
    assert_eq!(
        param(&auth, "response").unwrap(),
        expected::<Md5>("stox", "sip.test", "secret pw", &auth, "sip:romeo@sip.test")
    );

    // The next request to the domain carries credentials at once, nc counted up.
    let r = sip.send(message(20)).await.unwrap();
    assert_eq!(r.status_code.code(), 200);
    let third = next(&mut seen).await;
    let auth = header(&third, "Authorization").expect("pre-authenticated");
    assert_eq!(param(&auth, "nonce").as_deref(), Some("n-1"));
    assert_eq!(param(&auth, "nc").as_deref(), Some("00000002"));
    assert_eq!(header(&third, "CSeq").as_deref(), Some("20 MESSAGE"));
    assert_eq!(
        param(&auth, "response").unwrap(),
        expected::<Md5>("stox", "sip.test", "secret pw", &auth, "sip:romeo@sip.test")
    );
}

#[tokio::test]
async fn a_second_challenge_for_the_same_realm_is_final() {
    let challenge =
        "401 Unauthorized\r\nWWW-Authenticate: Digest realm=\"sip.test\", nonce=\"n\", qop=auth";
    let (port, mut seen) = peer(vec![challenge.into(), challenge.into(), "200 OK".into()]).await;
    let sip = stack(port, CREDS).await;
    let r = sip.send(message(1)).await.unwrap();
    assert_eq!(r.status_code.code(), 401);
    next(&mut seen).await;
    next(&mut seen).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(seen.try_recv().is_err(), "no third attempt");
}

#[tokio::test]
async fn a_stale_407_is_answered_again_with_the_new_nonce() {
    let (port, mut seen) = peer(vec![
        "407 Proxy Authentication Required\r\nProxy-Authenticate: Digest realm=\"proxy.test\", nonce=\"p1\", qop=\"auth\"".into(),
        "407 Proxy Authentication Required\r\nProxy-Authenticate: Digest realm=\"proxy.test\", nonce=\"p2\", qop=\"auth\", stale=true".into(),
        "200 OK".into(),
    ])
    .await;
    let sip = stack(port, CREDS).await;
    let r = sip.send(message(1)).await.unwrap();
    assert_eq!(r.status_code.code(), 200);
    next(&mut seen).await;
    let second = next(&mut seen).await;
    let third = next(&mut seen).await;
    assert!(header(&second, "Authorization").is_none());
    let a2 = header(&second, "Proxy-Authorization").unwrap();
    let a3 = header(&third, "Proxy-Authorization").unwrap();
    assert_eq!(param(&a2, "nonce").as_deref(), Some("p1"));
    assert_eq!(param(&a3, "nonce").as_deref(), Some("p2"));
    assert_eq!(param(&a3, "nc").as_deref(), Some("00000001"));
    assert_eq!(header(&third, "CSeq").as_deref(), Some("3 MESSAGE"));
    assert_eq!(
        param(&a3, "response").unwrap(),
        expected::<Md5>("gw", "proxy.test", "proxy pw", &a3, "sip:romeo@sip.test")
    );
}

#[tokio::test]
async fn sha256_is_chosen_over_md5_from_one_challenge_per_algorithm() {
    let (port, mut seen) = peer(vec![
        "401 Unauthorized\r\n\
         WWW-Authenticate: Digest realm=\"sip.test\", nonce=\"m\", algorithm=MD5, qop=\"auth\"\r\n\
         WWW-Authenticate: Digest realm=\"sip.test\", nonce=\"s\", algorithm=SHA-256, qop=\"auth\""
            .into(),
        "200 OK".into(),
    ])
    .await;
    let sip = stack(port, CREDS).await;
    assert_eq!(sip.send(message(1)).await.unwrap().status_code.code(), 200);
    next(&mut seen).await;
    let retry = next(&mut seen).await;
    let auths: Vec<_> = retry
        .lines()
        .filter(|l| l.starts_with("Authorization: "))
        .collect();
    assert_eq!(auths.len(), 1, "{retry}");
    let auth = header(&retry, "Authorization").unwrap();
    assert_eq!(param(&auth, "algorithm").as_deref(), Some("SHA-256"));
    assert_eq!(param(&auth, "nonce").as_deref(), Some("s"));
    assert_eq!(
        param(&auth, "response").unwrap(),
        expected::<Sha256>("stox", "sip.test", "secret pw", &auth, "sip:romeo@sip.test")
    );
}

#[tokio::test]
async fn without_credentials_for_the_realm_the_401_is_returned() {
    let (port, mut seen) = peer(vec![
        "401 Unauthorized\r\nWWW-Authenticate: Digest realm=\"elsewhere.test\", nonce=\"n\"".into(),
        "200 OK".into(),
    ])
    .await;
    let sip = stack(port, CREDS).await;
    assert_eq!(sip.send(message(1)).await.unwrap().status_code.code(), 401);
    next(&mut seen).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(seen.try_recv().is_err(), "not re-sent");
    // And without any credentials at all.
    let (port, _seen) = peer(vec![
        "401 Unauthorized\r\nWWW-Authenticate: Digest realm=\"sip.test\", nonce=\"n\"".into(),
    ])
    .await;
    let sip = stack(port, "").await;
    assert_eq!(sip.send(message(1)).await.unwrap().status_code.code(), 401);
}
