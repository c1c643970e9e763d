//! RFC 3261 timers of the running stack on tokio's paused clock: the UDP retransmission
//! schedule a real socket sees (timer E), and the timeout (timer F) reaching the caller.
//! The driver reads tokio's clock, so paused time is the stack's time.

use std::time::Duration;

use stox::config::Config;
use stox::sip::endpoint::{self, SipError};
use stox::sip::message::{parse, Framing};
use stox::sip::SipMessage;
use tokio::net::UdpSocket;
use tokio::time::Instant;

fn message() -> stox::sip::Request {
    let text = "MESSAGE sip:romeo@sip.test SIP/2.0\r\n\
         Via: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bKreplaced\r\nMax-Forwards: 70\r\n\
         From: <sip:juliet@localhost>;tag=jt\r\nTo: <sip:romeo@sip.test>\r\n\
         Call-ID: timers-1\r\nCSeq: 1 MESSAGE\r\n\
         Content-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello";
    match parse(text.as_bytes(), Framing::Datagram, 65535)
        .unwrap()
        .message
    {
        SipMessage::Request(r) => r,
        _ => unreachable!(),
    }
}

#[tokio::test(start_paused = true)]
async fn an_unanswered_udp_request_follows_timer_e_then_fails_with_timer_f() {
    // A peer that reads and never answers.
    let silent = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let port = silent.local_addr().unwrap().port();
    let text = format!(
        "[xmpp]\njid = \"sip.localhost\"\nserver = \"127.0.0.1:5347\"\nsecret = \"s\"\n\
         domains = [\"localhost\"]\n[sip]\nlisten = [\"udp:127.0.0.1:0\"]\n\
         routes = {{ \"sip.test\" = \"sip:127.0.0.1:{port};transport=udp\" }}\n"
    );
    let config = Config::parse(&text).unwrap();
    let (sip, _incoming) = endpoint::start(&config).await.unwrap();
    let t0 = Instant::now();
    let send = tokio::spawn(async move { sip.send(message()).await });
    let mut arrivals = Vec::new();
    let mut buf = vec![0u8; 65536];
    // Bounded: timer F ends it at 32 s of (paused) time.
    while let Ok(Ok((n, _))) =
        tokio::time::timeout(Duration::from_secs(40), silent.recv_from(&mut buf)).await
    {
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("MESSAGE sip:romeo@sip.test"));
        arrivals.push((Instant::now() - t0).as_millis() as u64);
        if arrivals.len() > 20 {
            break;
        }
    }
    let outcome = send.await.unwrap();
    assert!(matches!(outcome, Err(SipError::Timeout)), "{outcome:?}");
    // The first send, then E: T1, 2T1, 4T1, then every T2 (4 s) until F at 64*T1.
    let expected = [
        0, 500, 1500, 3500, 7500, 11500, 15500, 19500, 23500, 27500, 31500,
    ];
    assert_eq!(arrivals.len(), expected.len(), "{arrivals:?}");
    for (got, want) in arrivals.iter().zip(expected) {
        assert!(got.abs_diff(want) <= 20, "{arrivals:?}");
    }
}
