//! Bounds on what one SIP peer can hold in stox over TCP: a message must arrive whole
//! within `sip.read_timeout_ms`, a peer that stops reading is dropped after
//! `sip.write_timeout_ms`, one source address gets `sip.max_connections_per_address`
//! connections, and the server-transaction table has `sip.max_server_transactions`
//! slots (503 with Retry-After beyond it). Real sockets against the stox binary, with a
//! real Prosody behind it.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::Duration;

use common::*;

const SECS30: Duration = Duration::from_secs(30);
const WRITE_TIMED_OUT: &str = "no progress within sip.write_timeout_ms";

fn started(extra: &str) -> (tempfile::TempDir, Prosody, Stox) {
    let dir = temp_dir();
    let prosody = Prosody::start(dir.path(), &[("juliet", "pw")]);
    let stox = Stox::start(dir.path(), prosody.component_port, extra);
    stox.wait_online(1);
    (dir, prosody, stox)
}

/// A TCP connection to stox from `ip` (any port).
fn connect_from(ip: &str, port: u16) -> TcpStream {
    let local: SocketAddr = format!("{ip}:0").parse().unwrap();
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.bind(&local.into()).unwrap();
    let to: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    sock.connect(&to.into()).unwrap();
    let tcp: TcpStream = sock.into();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    tcp
}

fn options_over(tcp: &TcpStream) -> String {
    let local = tcp.local_addr().unwrap().to_string();
    sip_request("OPTIONS", "sip:juliet@localhost", "TCP", "", "").replace("LOCAL", &local)
}

/// Sends OPTIONS on `tcp` and returns the answer, or `None` when stox closed it instead.
fn options(tcp: &mut TcpStream) -> Option<String> {
    let req = options_over(tcp);
    if tcp.write_all(req.as_bytes()).is_err() {
        return None;
    }
    read_sip_message(tcp, &mut Vec::new())
}

/// Whether stox has closed `tcp`: a read gives EOF or a reset (not a timeout).
fn closed_by_peer(tcp: &mut TcpStream) -> bool {
    let mut buf = [0u8; 4096];
    loop {
        match tcp.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue, // answers queued before the close
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return false
            }
            Err(_) => return true,
        }
    }
}

#[test]
fn a_message_trickled_slower_than_the_read_timeout_closes_the_connection() {
    let (_dir, _prosody, stox) = started("read_timeout_ms = 1000");
    // A message sent at once is answered on the same kind of connection.
    let mut quick = connect_from("127.0.0.1", stox.sip_port);
    let r = options(&mut quick).expect("an answer");
    assert!(status_line(&r).starts_with("SIP/2.0 200"), "{r}");

    // Slowloris: one byte every 100 ms is traffic well inside the idle timeout, but the
    // message as a whole takes ~30 s.
    let mut slow = connect_from("127.0.0.1", stox.sip_port);
    slow.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let req = options_over(&slow);
    let mut sent = 0;
    let mut closed = false;
    for b in req.as_bytes() {
        if slow.write_all(&[*b]).is_err() {
            closed = true;
            break;
        }
        sent += 1;
        // The read doubles as the pause between bytes: it waits up to 100 ms for the close.
        if closed_by_peer(&mut slow) {
            closed = true;
            break;
        }
    }
    assert!(
        closed,
        "stox kept a connection that sent {sent} bytes of one message"
    );
    assert!(
        sent < req.len(),
        "the whole message went out before the close"
    );
    stox.wait_log("did not arrive whole within sip.read_timeout_ms", 1, SECS30);
    // The quick connection is untouched.
    let r = options(&mut quick).expect("the quick connection still answers");
    assert!(status_line(&r).starts_with("SIP/2.0 200"), "{r}");
}

#[test]
fn one_address_gets_at_most_its_share_of_connections_and_others_still_get_in() {
    let (_dir, _prosody, stox) = started("max_connections_per_address = 2");
    let mut first = connect_from("127.0.0.1", stox.sip_port);
    let mut second = connect_from("127.0.0.1", stox.sip_port);
    for c in [&mut first, &mut second] {
        let r = options(c).expect("an answer");
        assert!(status_line(&r).starts_with("SIP/2.0 200"), "{r}");
    }
    // The third from the same address is closed at once, unanswered.
    let mut third = connect_from("127.0.0.1", stox.sip_port);
    assert_eq!(options(&mut third), None, "a third connection was served");
    stox.wait_log("sip.max_connections_per_address reached", 1, SECS30);
    // Another source address still gets in.
    let mut other = connect_from("127.0.0.2", stox.sip_port);
    let r = options(&mut other).expect("127.0.0.2 is served");
    assert!(status_line(&r).starts_with("SIP/2.0 200"), "{r}");
    // A closed connection gives its slot back.
    drop(first);
    eventually(SECS30, "a slot for 127.0.0.1 again", || {
        let mut again = connect_from("127.0.0.1", stox.sip_port);
        options(&mut again).is_some_and(|r| status_line(&r).starts_with("SIP/2.0 200"))
    });
}

#[test]
fn a_peer_that_never_reads_is_dropped_after_the_write_timeout() {
    let (_dir, _prosody, stox) = started("write_timeout_ms = 1000");
    // Settle: the link and the store are open before the count is taken.
    let r = udp_exchange(
        stox.sip_port,
        &sip_request("OPTIONS", "sip:juliet@localhost", "UDP", "", ""),
    );
    assert!(status_line(&r).starts_with("SIP/2.0 200"), "{r}");
    let baseline = stox.open_fds();

    // A small receive window, and answers of ~8 KB each (From and Call-ID are echoed):
    // stox's send buffer fills long before the requests run out.
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let to: SocketAddr = format!("127.0.0.1:{}", stox.sip_port).parse().unwrap();
    sock.connect(&to.into()).unwrap();
    let mut tcp: TcpStream = sock.into();
    tcp.set_write_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let local = tcp.local_addr().unwrap().to_string();
    let name = "r".repeat(4000);
    let mut dropped = false;
    for i in 0..4000 {
        let req = sip_request("OPTIONS", "sip:juliet@localhost", "TCP", "", "")
            .replace("LOCAL", &local)
            .replace("From: <", &format!("From: \"{name}\" <"))
            .replace("@sip.test\r\nCSeq", &format!("{i}{name}@sip.test\r\nCSeq"));
        if tcp.write_all(req.as_bytes()).is_err()
            || (i % 100 == 99 && stox.log().contains(WRITE_TIMED_OUT))
        {
            dropped = true;
            break;
        }
    }
    assert!(dropped, "stox kept a connection whose peer never read");
    stox.wait_log(WRITE_TIMED_OUT, 1, SECS30);
    // Stox has closed it: what it had written drains, then the stream ends (EOF or reset).
    tcp.set_read_timeout(Some(SECS30)).unwrap();
    let mut buf = vec![0u8; 65536];
    let mut drained = 0usize;
    loop {
        match tcp.read(&mut buf) {
            Ok(0) => break,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                panic!("stox did not close the connection after the write timeout")
            }
            Err(_) => break,
            Ok(n) => drained += n,
        }
        assert!(
            drained < 64 << 20,
            "more than 64 MB read from one connection"
        );
    }
    // No task or descriptor outlives the connection.
    eventually(
        SECS30,
        "stox's descriptors back to their count before",
        || stox.open_fds() <= baseline,
    );
    let mut fresh = connect_from("127.0.0.1", stox.sip_port);
    let r = options(&mut fresh).expect("new connections are served");
    assert!(status_line(&r).starts_with("SIP/2.0 200"), "{r}");
}

#[test]
fn beyond_the_server_transaction_cap_messages_get_503_with_retry_after() {
    // T1 of 100 ms: answered UDP transactions are held for timer J, 6.4 s.
    let (_dir, prosody, stox) = started("max_server_transactions = 5\n[sip.timers]\nt1_ms = 100\n");
    let mut juliet = XmppClient::login("juliet", "pw", prosody.c2s_port);
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let local = sock.local_addr().unwrap().to_string();
    let message = |body: &str| {
        sip_request(
            "MESSAGE",
            "sip:juliet@localhost",
            "UDP",
            "Content-Type: text/plain\r\n",
            body,
        )
        .replace("LOCAL", &local)
    };
    let exchange = |req: &str| {
        sock.send_to(req.as_bytes(), ("127.0.0.1", stox.sip_port))
            .unwrap();
        let mut buf = [0u8; 65536];
        let (n, _) = sock.recv_from(&mut buf).expect("an answer");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    for i in 0..5 {
        let r = exchange(&message(&format!("held {i}")));
        assert!(status_line(&r).starts_with("SIP/2.0 200"), "{r}");
    }
    // A flood of distinct MESSAGEs while the five are held: every one refused, none
    // delivered.
    for i in 0..50 {
        let r = exchange(&message(&format!("flood {i}")));
        assert!(status_line(&r).starts_with("SIP/2.0 503"), "{r}");
        assert!(r.contains("\r\nRetry-After: 6\r\n"), "{r}");
    }
    for i in 0..5 {
        juliet.expect_stanza(&[&format!("<body>held {i}</body>")], SECS30);
    }
    // Once timer J has freed the slots, messages get through again.
    eventually(SECS30, "a MESSAGE accepted after timer J", || {
        status_line(&exchange(&message("after"))).starts_with("SIP/2.0 200")
    });
    juliet.expect_stanza(&["<body>after</body>"], SECS30);
    assert!(
        !juliet.stanzas_seen().iter().any(|s| s.contains("flood")),
        "a refused MESSAGE was delivered"
    );
}
