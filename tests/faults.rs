//! Faults between stox and its peers (issue 12 item 4), each with real peers on loopback:
//! every message sent is counted, and none is acknowledged and then lost.
//! - the SIP peer silent: every XMPP -> SIP message is bounced by timer F, and every
//!   transaction ends (stox logs "No SIP transactions held." once its tables are empty);
//! - a TCP connection cut mid-message, both ways;
//! - the store read-only: SUBSCRIBE gets 503 and MESSAGEs still flow.

mod common;

use std::collections::HashMap;
use std::net::UdpSocket;
use std::sync::mpsc;
use std::time::Duration;

use common::*;

const SECS60: Duration = Duration::from_secs(60);

/// The last change stox logged between holding transactions and holding none says none:
/// every transaction (and every reply awaited by a sender) has ended.
fn wait_no_transactions(stox: &Stox, timeout: Duration) {
    eventually(timeout, "stox to hold no SIP transactions", || {
        let log = stox.log();
        let idle = log.matches("No SIP transactions held.").count();
        let busy = log.matches("SIP transactions held again.").count();
        busy > 0 && idle == busy
    });
}

/// A short T1 so that timer F (64*T1) ends a test in seconds.
const FAST_TIMERS: &str = "[sip.timers]\nt1_ms = 20\nt2_ms = 80\nt4_ms = 100\n";

/// Every datagram a bound UDP socket reads, as (Call-ID, CSeq) lines; it never answers.
fn silent_udp_peer() -> (u16, mpsc::Receiver<String>) {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = sock.local_addr().unwrap().port();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 65536];
        // Ends when the test drops the receiver.
        while let Ok((n, _)) = sock.recv_from(&mut buf) {
            if tx
                .send(String::from_utf8_lossy(&buf[..n]).into_owned())
                .is_err()
            {
                return;
            }
        }
    });
    (port, rx)
}

fn header<'a>(message: &'a str, name: &str) -> Option<&'a str> {
    message.split("\r\n").find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

#[test]
fn a_silent_sip_peer_gets_every_message_bounced_by_timer_f_and_no_transaction_leaks() {
    const N: usize = 20;
    let dir = temp_dir();
    let prosody = Prosody::start(dir.path(), &[("juliet", "pw")]);
    let (peer_port, datagrams) = silent_udp_peer();
    let extra = format!(
        "{FAST_TIMERS}[sip.routes]\n\"sip.test\" = \"sip:127.0.0.1:{peer_port};transport=udp\"\n"
    );
    let stox = Stox::start(dir.path(), prosody.component_port, &extra);
    stox.wait_online(1);
    let mut juliet = XmppClient::login("juliet", "pw", prosody.c2s_port);

    for i in 0..N {
        juliet.send(
            "romeo\\40sip.test@sip.localhost",
            &format!("silent {i}"),
            None,
            &format!("silent-{i}"),
        );
    }
    // RFC 7247 section 8: no answer within timer F is a 408: remote-server-timeout.
    for i in 0..N {
        let e = juliet.expect_stanza(&["type=\"error\"", &format!("id=\"silent-{i}\"")], SECS60);
        assert!(e.contains("remote-server-timeout"), "{e}");
    }
    wait_no_transactions(&stox, SECS60);

    // Every message was sent, and retransmitted (timer E) while unanswered.
    let mut sends: HashMap<String, usize> = HashMap::new();
    while let Ok(d) = datagrams.try_recv() {
        assert!(d.starts_with("MESSAGE sip:romeo@sip.test"), "{d}");
        let key = format!("{:?} {:?}", header(&d, "Call-ID"), header(&d, "CSeq"));
        *sends.entry(key).or_default() += 1;
    }
    assert_eq!(sends.len(), N, "{sends:?}");
    assert!(sends.values().all(|n| *n > 1), "{sends:?}");
    // Nothing but the bounces came back: no message was acknowledged.
    assert!(
        !juliet
            .stanzas_seen()
            .iter()
            .any(|s| s.contains("silent") && !s.contains("type=\"error\"")),
        "{:?}",
        juliet.stanzas_seen()
    );
}
