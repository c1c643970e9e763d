//! Who may talk to stox (issue 11 items 3 and 6): sip.trusted_peers, the 403 for the
//! gateway's own domains from elsewhere, the per-source and per-watcher-domain limits
//! (503 + Retry-After), and no NOTIFY aimed at an address the SUBSCRIBE's source is not.
//!
//! All of 127.0.0.0/8 is loopback on Linux: 127.0.0.1 is the trusted peer, 127.0.0.2 an
//! untrusted source and 127.0.0.3 the "victim" a forged Contact names.

mod common;

use std::net::UdpSocket;
use std::time::{Duration, Instant};

use common::*;

const SECS10: Duration = Duration::from_secs(10);
const TRUSTED: &str = "trusted_peers = [\"127.0.0.1\"]\n";

/// A UDP SIP peer bound at `ip`; reads answers and requests stox sends it.
struct Peer {
    sock: UdpSocket,
    stox: u16,
    /// Requests stox sent us (e.g. NOTIFYs) while we waited for responses.
    requests: Vec<String>,
}

impl Peer {
    fn bind(ip: &str, stox: u16) -> Peer {
        let sock = UdpSocket::bind((ip, 0)).unwrap();
        sock.set_read_timeout(Some(SECS10)).unwrap();
        Peer {
            sock,
            stox,
            requests: Vec::new(),
        }
    }

    fn local(&self) -> String {
        self.sock.local_addr().unwrap().to_string()
    }

    fn send(&self, request: &str) {
        let request = request.replace("LOCAL", &self.local());
        self.sock
            .send_to(request.as_bytes(), ("127.0.0.1", self.stox))
            .unwrap();
    }

    /// The next datagram, or None after the read timeout.
    fn recv(&self) -> Option<String> {
        let mut buf = [0u8; 65536];
        let (n, _) = self.sock.recv_from(&mut buf).ok()?;
        Some(String::from_utf8_lossy(&buf[..n]).into_owned())
    }

    /// The next final response; requests arriving meanwhile are kept in `requests` and
    /// answered 200 (a NOTIFY must not be retransmitted at us forever).
    fn response(&mut self) -> String {
        let deadline = Instant::now() + SECS10;
        while Instant::now() < deadline {
            let Some(m) = self.recv() else { break };
            if m.starts_with("SIP/2.0 1") {
                continue;
            }
            if m.starts_with("SIP/2.0 ") {
                return m;
            }
            let ok = ok_response(&m);
            self.sock
                .send_to(ok.as_bytes(), ("127.0.0.1", self.stox))
                .unwrap();
            self.requests.push(m);
        }
        panic!("no final response from stox within {SECS10:?}");
    }

    /// Waits for a request from stox whose text contains `needle`.
    fn request(&mut self, needle: &str) -> String {
        if let Some(i) = self.requests.iter().position(|r| r.contains(needle)) {
            return self.requests.remove(i);
        }
        let deadline = Instant::now() + SECS10;
        while Instant::now() < deadline {
            let Some(m) = self.recv() else { break };
            if m.starts_with("SIP/2.0 ") {
                continue;
            }
            let ok = ok_response(&m);
            self.sock
                .send_to(ok.as_bytes(), ("127.0.0.1", self.stox))
                .unwrap();
            if m.contains(needle) {
                return m;
            }
            self.requests.push(m);
        }
        panic!("no request with {needle:?} from stox within {SECS10:?}");
    }
}

fn message_from(from: &str, body: &str) -> String {
    sip_request(
        "MESSAGE",
        "sip:juliet@localhost",
        "UDP",
        "Content-Type: text/plain\r\n",
        body,
    )
    .replace("From: <sip:romeo@sip.test>", &format!("From: <{from}>"))
}

fn options() -> String {
    sip_request("OPTIONS", "sip:juliet@localhost", "UDP", "", "")
}

fn subscribe(from: &str, contact: &str) -> String {
    sip_request(
        "SUBSCRIBE",
        "sip:juliet@localhost",
        "UDP",
        &format!("Contact: <{contact}>\r\nEvent: presence\r\nExpires: 600\r\n"),
        "",
    )
    .replace("From: <sip:romeo@sip.test>", &format!("From: <{from}>"))
}

fn header<'a>(m: &'a str, name: &str) -> Option<&'a str> {
    m.lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

#[test]
fn a_gateway_user_claimed_from_an_untrusted_source_gets_403_and_from_a_trusted_peer_reaches_juliet()
{
    let dir = temp_dir();
    let prosody = Prosody::start(dir.path(), &[("juliet", "pw")]);
    let stox = Stox::start(dir.path(), prosody.component_port, TRUSTED);
    stox.wait_online(1);
    let mut juliet = XmppClient::login("juliet", "pw", prosody.c2s_port);

    let mut stranger = Peer::bind("127.0.0.2", stox.sip_port);
    stranger.send(&message_from(
        "sip:nurse@localhost",
        "Forged by a stranger.",
    ));
    let r = stranger.response();
    assert!(status_line(&r).starts_with("SIP/2.0 403"), "{r}");

    // A stranger speaking for its own domain is fine.
    stranger.send(&message_from("sip:tybalt@sip.test", "From the street."));
    let r = stranger.response();
    assert!(status_line(&r).starts_with("SIP/2.0 200"), "{r}");
    juliet.expect_stanza(&["From the street."], SECS10);

    let mut proxy = Peer::bind("127.0.0.1", stox.sip_port);
    proxy.send(&message_from(
        "sip:nurse@localhost",
        "Relayed by the proxy.",
    ));
    let r = proxy.response();
    assert!(status_line(&r).starts_with("SIP/2.0 200"), "{r}");
    let stanza = juliet.expect_stanza(&["Relayed by the proxy."], SECS10);
    assert!(
        stanza.contains("nurse\\40localhost@sip.localhost"),
        "{stanza}"
    );
    assert!(
        !juliet
            .stanzas_seen()
            .iter()
            .any(|s| s.contains("Forged by a stranger.")),
        "the forged message went through: {:#?}",
        juliet.stanzas_seen()
    );
}

/// Sends `n` OPTIONS at once from `peer` and returns their final responses.
fn burst(peer: &mut Peer, n: usize) -> Vec<String> {
    for _ in 0..n {
        peer.send(&options());
    }
    (0..n).map(|_| peer.response()).collect()
}

#[test]
fn an_untrusted_source_beyond_its_burst_gets_503_with_retry_after_a_trusted_peer_never() {
    let dir = temp_dir();
    let prosody = Prosody::start(dir.path(), &[]);
    // 1/s after a burst of 10: 40 requests sent at once exceed it however slowly stox runs
    // (refilling 30 tokens would take 30 s).
    let stox = Stox::start(
        dir.path(),
        prosody.component_port,
        &format!("{TRUSTED}rate_limit = 1\nrate_burst = 10\n"),
    );
    stox.wait_online(1);

    let mut stranger = Peer::bind("127.0.0.2", stox.sip_port);
    let answers = burst(&mut stranger, 40);
    let limited: Vec<&String> = answers
        .iter()
        .filter(|r| status_line(r).starts_with("SIP/2.0 503"))
        .collect();
    assert!(
        limited.len() >= 20,
        "{} of 40 limited: {answers:#?}",
        limited.len()
    );
    assert!(
        answers
            .iter()
            .filter(|r| status_line(r).starts_with("SIP/2.0 200"))
            .count()
            >= 10,
        "the burst is served: {answers:#?}"
    );
    for r in &limited {
        let retry: u32 = header(r, "Retry-After")
            .unwrap_or_else(|| panic!("no Retry-After: {r}"))
            .parse()
            .unwrap();
        assert!(retry >= 1, "{r}");
    }

    let mut proxy = Peer::bind("127.0.0.1", stox.sip_port);
    for r in burst(&mut proxy, 40) {
        assert!(status_line(&r).starts_with("SIP/2.0 200"), "{r}");
    }
}

#[test]
fn an_ordinary_peer_is_not_limited_by_the_default_sizing() {
    let dir = temp_dir();
    let prosody = Prosody::start(dir.path(), &[]);
    // Nobody trusted; rate_limit and rate_burst at their defaults.
    let stox = Stox::start(dir.path(), prosody.component_port, "trusted_peers = []\n");
    stox.wait_online(1);
    let mut peer = Peer::bind("127.0.0.2", stox.sip_port);
    // 100 requests at once: a peer's busiest second.
    for r in burst(&mut peer, 100) {
        assert!(status_line(&r).starts_with("SIP/2.0 200"), "{r}");
    }
}

#[test]
fn a_subscribe_naming_another_host_as_contact_gets_no_notify_there() {
    let dir = temp_dir();
    let prosody = Prosody::start(dir.path(), &[("juliet", "pw")]);
    let stox = Stox::start(dir.path(), prosody.component_port, TRUSTED);
    stox.wait_online(1);

    let victim = UdpSocket::bind(("127.0.0.3", 0)).unwrap();
    let victim_addr = victim.local_addr().unwrap();
    let mut stranger = Peer::bind("127.0.0.2", stox.sip_port);

    stranger.send(&subscribe(
        "sip:romeo@sip.test",
        &format!("sip:romeo@{victim_addr}"),
    ));
    let r = stranger.response();
    assert!(status_line(&r).starts_with("SIP/2.0 403"), "{r}");

    // The legitimate path: the same stranger naming itself gets its answer and the
    // pending NOTIFY. Both come after the forged SUBSCRIBE was handled, so a NOTIFY for it
    // would have been sent by now.
    let me = format!("sip:benvolio@{}", stranger.local());
    stranger.send(&subscribe("sip:benvolio@sip.test", &me));
    let r = stranger.response();
    assert!(status_line(&r).starts_with("SIP/2.0 2"), "{r}");
    let notify = stranger.request("NOTIFY ");
    assert!(notify.contains("Subscription-State:"), "{notify}");

    victim.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 65536];
    match victim.recv_from(&mut buf) {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        Ok((n, from)) => panic!(
            "stox sent the victim {from}: {}",
            String::from_utf8_lossy(&buf[..n])
        ),
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn new_subscribes_per_watcher_domain_are_limited() {
    let dir = temp_dir();
    let prosody = Prosody::start(dir.path(), &[("juliet", "pw")]);
    let stox = Stox::start(
        dir.path(),
        prosody.component_port,
        &format!("{TRUSTED}subscribe_rate_per_domain = 1\nsubscribe_burst_per_domain = 3\n"),
    );
    stox.wait_online(1);

    // Two sources, one watcher domain: the limit is the domain's, not the address's. Ten
    // sent at once against 1/s after a burst of 3: at most 3 + (seconds stox takes) pass.
    let mut a = Peer::bind("127.0.0.2", stox.sip_port);
    let mut b = Peer::bind("127.0.0.4", stox.sip_port);
    for i in 0..10 {
        let p = if i % 2 == 0 { &a } else { &b };
        let contact = format!("sip:w{i}@{}", p.local());
        p.send(&subscribe(&format!("sip:w{i}@sip.test"), &contact));
    }
    let mut answers: Vec<String> = (0..5).map(|_| a.response()).collect();
    answers.extend((0..5).map(|_| b.response()));
    let codes: Vec<&str> = answers.iter().map(|r| status_line(r)).collect();
    let passed = codes.iter().filter(|c| c.starts_with("SIP/2.0 2")).count();
    assert!((3..=6).contains(&passed), "{codes:?}");
    let limited: Vec<&String> = answers
        .iter()
        .filter(|r| status_line(r).starts_with("SIP/2.0 503"))
        .collect();
    assert_eq!(limited.len(), 10 - passed, "{codes:?}");
    assert!(
        header(limited[0], "Retry-After").is_some(),
        "{}",
        limited[0]
    );

    // Another watcher domain has its own allowance.
    let contact = format!("sip:mercutio@{}", a.local());
    a.send(&subscribe("sip:mercutio@verona.test", &contact));
    let r = a.response();
    assert!(status_line(&r).starts_with("SIP/2.0 2"), "{r}");
    // A trusted peer's SUBSCRIBEs are not counted.
    let mut proxy = Peer::bind("127.0.0.1", stox.sip_port);
    let contact = format!("sip:w9@{}", proxy.local());
    proxy.send(&subscribe("sip:w9@sip.test", &contact));
    let r = proxy.response();
    assert!(status_line(&r).starts_with("SIP/2.0 2"), "{r}");
}

/// A notifier that answers a SUBSCRIBE asking less than 7200 s with 423 Min-Expires: 7200
/// and one asking 7200 with 200 and an active NOTIFY. stox's retry after 423 is a new
/// SUBSCRIBE (new Call-ID), so every SUBSCRIBE is a call of its own here.
fn notifier_423() -> String {
    r#"<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="notifier-423">
  <recv request="SUBSCRIBE">
    <action>
      <ereg regexp="&lt;([^&gt;]*)&gt;" search_in="hdr" header="Contact:" assign_to="dummy,contact" />
      <ereg regexp=".*" search_in="hdr" header="From:" assign_to="from" />
      <ereg regexp="^[[:space:]]*7200" search_in="hdr" header="Expires:" assign_to="long" />
      <ereg regexp="sip:([a-z]+)@" search_in="hdr" header="To:" assign_to="dummy2,user" />
    </action>
  </recv>
  <nop next="grant" test="long" />
  <send>
    <![CDATA[
SIP/2.0 423 Interval Too Brief
[last_Via:]
[last_From:]
[last_To:];tag=[pid]SIPpTag01[call_number]
[last_Call-ID:]
[last_CSeq:]
Min-Expires: 7200
Content-Length: 0

]]>
  </send>
  <nop next="end" />
  <label id="grant" />
  <send>
    <![CDATA[
SIP/2.0 200 OK
[last_Via:]
[last_From:]
[last_To:];tag=[pid]SIPpTag01[call_number]
[last_Call-ID:]
[last_CSeq:]
Contact: <sip:[$user]@[local_ip]:[local_port]>
Expires: 7200
Content-Length: 0

]]>
  </send>
  <send>
    <![CDATA[
NOTIFY [$contact] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
Max-Forwards: 70
From: <sip:[$user]@sip.test>;tag=[pid]SIPpTag01[call_number]
To: [$from]
Call-ID: [call_id]
CSeq: 1 NOTIFY
Contact: <sip:[$user]@[local_ip]:[local_port]>
Event: presence
Subscription-State: active;expires=7200
Content-Type: application/pidf+xml
Content-Length: [len]

<?xml version='1.0' encoding='UTF-8'?>
<presence xmlns='urn:ietf:params:xml:ns:pidf' entity='pres:[$user]@sip.test'><tuple id='t1'><status><basic>open</basic></status><note>[$user] granted 7200</note></tuple></presence>
]]>
  </send>
  <recv response="200" />
  <label id="end" />
  <Reference variables="dummy,dummy2" />
</scenario>
"#
    .to_string()
}

#[test]
fn a_notifiers_423_raises_the_expiry_of_that_subscription_only() {
    let dir = temp_dir();
    let prosody = Prosody::start(dir.path(), &[("juliet", "pw")]);
    let uas_port = free_port();
    let stox = Stox::start(
        dir.path(),
        prosody.component_port,
        &format!("[sip.routes]\n\"sip.test\" = \"sip:127.0.0.1:{uas_port};transport=udp\"\n"),
    );
    stox.wait_online(1);
    let mut juliet = XmppClient::login("juliet", "pw", prosody.c2s_port);
    // Two subscriptions, each: SUBSCRIBE (3600) -> 423, SUBSCRIBE (7200) -> 200 + NOTIFY.
    let uas = Sipp::spawn_uas(dir.path(), "notifier", &notifier_423(), uas_port, 4);

    juliet.send_raw("<presence to='romeo\\40sip.test@sip.localhost' type='subscribe'/>");
    juliet.expect_stanza(&["romeo granted 7200"], Duration::from_secs(20));
    // The second subscription starts after the first's 423 was handled.
    juliet.send_raw("<presence to='mercutio\\40sip.test@sip.localhost' type='subscribe'/>");
    juliet.expect_stanza(&["mercutio granted 7200"], Duration::from_secs(20));

    let r = uas.finish(Duration::from_secs(30));
    r.assert_ok();
    // Each SUBSCRIBE's head: up to its blank line (the responses after it say Min-Expires).
    let subscribes: Vec<&str> = r
        .messages
        .split("SUBSCRIBE sip:")
        .skip(1)
        .map(|s| s.split("\n\n").next().unwrap_or(s))
        .collect();
    let asked = |who: &str, expires: &str| {
        subscribes
            .iter()
            .filter(|s| {
                s.starts_with(who)
                    && s.lines()
                        .any(|l| l.trim_end() == format!("Expires: {expires}"))
            })
            .count()
    };
    assert_eq!(
        (asked("romeo@", "3600"), asked("romeo@", "7200")),
        (1, 1),
        "{}",
        r.messages
    );
    assert_eq!(
        (asked("mercutio@", "3600"), asked("mercutio@", "7200")),
        (1, 1),
        "romeo's 423 must not change mercutio's first SUBSCRIBE:\n{}",
        r.messages
    );
}

#[test]
fn a_jid_over_xmpp_rate_limit_per_jid_gets_resource_constraint_instead_of_sip() {
    let dir = temp_dir();
    let prosody = Prosody::start(dir.path(), &[("juliet", "pw")]);
    // The SIP side: a UDP UAS in the test answering 200 to every MESSAGE, reporting bodies.
    let uas = UdpSocket::bind("127.0.0.1:0").unwrap();
    let uas_port = uas.local_addr().unwrap().port();
    let (tx, delivered) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        let mut buf = [0u8; 65536];
        while let Ok((n, from)) = uas.recv_from(&mut buf) {
            let m = String::from_utf8_lossy(&buf[..n]).into_owned();
            if m.starts_with("MESSAGE ") {
                let _ = uas.send_to(ok_response(&m).as_bytes(), from);
                if tx.send(m).is_err() {
                    break;
                }
            }
        }
    });
    let sip_port = free_port();
    let routes =
        format!("[sip.routes]\n\"sip.test\" = \"sip:127.0.0.1:{uas_port};transport=udp\"\n");
    // 1/s after a burst of 3: 8 sent at once exceed it unless stox took 5 s for them.
    let stox = Stox::launch(dir.path(), sip_port, None, |d| {
        Stox::config_text(d, prosody.component_port, sip_port, &routes).replace(
            "reconnect_max_ms = 500\n",
            "reconnect_max_ms = 500\nrate_limit_per_jid = 1\nrate_burst_per_jid = 3\n",
        )
    });
    stox.wait_online(1);
    let mut juliet = XmppClient::login("juliet", "pw", prosody.c2s_port);

    const N: usize = 8;
    for i in 0..N {
        juliet.send(
            "romeo\\40sip.test@sip.localhost",
            &format!("word-{i}-end"),
            None,
            &format!("m{i}"),
        );
    }
    // Every message ends one way or the other: a SIP MESSAGE, or an error back.
    let (mut sent_on, mut bounced) = (Vec::new(), Vec::new());
    let deadline = Instant::now() + Duration::from_secs(30);
    while sent_on.len() + bounced.len() < N {
        assert!(
            Instant::now() < deadline,
            "delivered {sent_on:?}, bounced {bounced:?}"
        );
        while let Ok(m) = delivered.try_recv() {
            sent_on.extend((0..N).filter(|i| m.contains(&format!("word-{i}-end"))));
        }
        if let Some(e) = juliet.try_stanza(&["resource-constraint"], Duration::from_millis(200)) {
            assert!(
                e.contains("type=\"error\"") || e.contains("type='error'"),
                "{e}"
            );
            assert!(e.contains("wait"), "a wait-type error: {e}");
            bounced.extend((0..N).filter(|i| e.contains(&format!("word-{i}-end"))));
        }
    }
    assert!(
        bounced.len() >= 3,
        "delivered {sent_on:?}, bounced {bounced:?}"
    );
    assert!(sent_on.len() >= 3, "the burst goes through: {sent_on:?}");
    assert!(
        !bounced.iter().any(|b| sent_on.contains(b)),
        "a bounced message reached SIP: delivered {sent_on:?}, bounced {bounced:?}"
    );
}
