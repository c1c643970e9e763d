//! The listener's bounds (issue 11) on real loopback sockets, and the connection task's
//! on an in-memory pipe: connection cap, first-request timeout and byte bound, a long
//! first chunk still routed, reading stopped for a peer that does not read, write timeout.

use super::*;
use crate::msrp::session::Config;
use tokio::io::AsyncReadExt;

fn uri(s: &str) -> MsrpUri {
    MsrpUri::parse(s).unwrap()
}

const PEER: &str = "msrp://127.0.0.1:9/p33rs3ss;tcp";

fn send_to(port: u16, sid: &str, tid: &str, body: &str) -> String {
    format!(
        "MSRP {tid} SEND\r\nTo-Path: msrp://127.0.0.1:{port}/{sid};tcp\r\nFrom-Path: {PEER}\r\n\
         Message-ID: m{tid}\r\nByte-Range: 1-{}/{}\r\nContent-Type: text/plain\r\n\r\n{body}\r\n-------{tid}$\r\n",
        body.len(),
        body.len()
    )
}

/// Reads until the peer closes; what it sent. Panics if it stays open for 20 s.
async fn until_closed(s: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(20), async {
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .map_err(|_| panic!("the connection stayed open"));
    out
}

async fn listener(limits: ListenerLimits) -> (MsrpListener, u16) {
    let l = MsrpListener::bind_with("127.0.0.1:0".parse().unwrap(), None, limits)
        .await
        .unwrap();
    let port = l.local_addr().port();
    (l, port)
}

#[tokio::test]
async fn connections_beyond_max_connections_are_closed_at_once_and_slots_come_back() {
    let limits = ListenerLimits {
        max_connections: 3,
        first_request_timeout: Duration::from_secs(600),
        ..ListenerLimits::default()
    };
    let (l, port) = listener(limits).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(TcpStream::connect(("127.0.0.1", port)).await.unwrap());
    }
    // The three are accepted and wait (the timeout is far off); the next ones are closed.
    for _ in 0..5 {
        let mut extra = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        assert!(until_closed(&mut extra).await.is_empty());
    }
    // A held one closing gives its slot back: a session can be routed again.
    drop(held.pop());
    let me = uri(&format!("msrp://127.0.0.1:{port}/sl0tback;tcp"));
    let pending = l
        .expect(Session::new(me, vec![uri(PEER)], Config::default()))
        .unwrap();
    let handle = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            // Until the listener has seen the drop, a new connection may still be refused.
            let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
            s.write_all(send_to(port, "sl0tback", "tsl0t1", "hi").as_bytes())
                .await
                .unwrap();
            let mut buf = [0u8; 256];
            if let Ok(n) = s.read(&mut buf).await {
                if n > 0 {
                    assert!(buf[..n].starts_with(b"MSRP tsl0t1 200 OK"));
                    return s;
                }
            }
        }
    })
    .await
    .expect("routed once a slot is free");
    let _bound = pending.connected().await.unwrap();
    drop(handle);
}

#[tokio::test]
async fn a_connection_without_a_first_request_in_time_is_closed() {
    let limits = ListenerLimits {
        first_request_timeout: Duration::from_millis(300),
        ..ListenerLimits::default()
    };
    let (_l, port) = listener(limits).await;
    let t0 = std::time::Instant::now();
    let mut idle = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    // Half a request, then nothing.
    idle.write_all(b"MSRP abcd SEND\r\nTo-Path: msrp://127.0.0.1/")
        .await
        .unwrap();
    assert!(until_closed(&mut idle).await.is_empty());
    // Not before the timeout: a timer does not fire early.
    assert!(t0.elapsed() >= Duration::from_millis(300));
}

#[tokio::test]
async fn more_than_the_byte_bound_before_a_routable_first_request_closes_the_connection() {
    let (_l, port) = listener(ListenerLimits::default()).await;
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    // A head for a session nobody expects, then a body that never ends.
    s.write_all(
        format!("MSRP g4rb4ge SEND\r\nTo-Path: msrp://127.0.0.1:{port}/n0b0dy;tcp\r\nFrom-Path: {PEER}\r\nMessage-ID: x1y2z3\r\nContent-Type: text/plain\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    let junk = vec![b'j'; 16 * 1024];
    let mut written = 0usize;
    let closed = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            if s.write_all(&junk).await.is_err() {
                return;
            }
            written += junk.len();
            assert!(written < 64 * 1024 * 1024, "64 MB taken without closing");
        }
    })
    .await;
    assert!(closed.is_ok(), "still open after {written} bytes");
    // What got in is bounded by the socket buffers, far below 64 MB.
    assert!(written < 32 * 1024 * 1024, "{written}");
}

#[tokio::test]
async fn a_long_first_chunk_for_an_expected_session_is_still_routed() {
    let (l, port) = listener(ListenerLimits::default()).await;
    let me = uri(&format!("msrp://127.0.0.1:{port}/l0ngf1rst;tcp"));
    let config = Config {
        accept_types: vec!["*".into()],
        ..Config::default()
    };
    let pending = l.expect(Session::new(me, vec![uri(PEER)], config)).unwrap();
    let body: String = (0..100 * 1024)
        .map(|i| (b'a' + (i % 26) as u8) as char)
        .collect();
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let req = send_to(port, "l0ngf1rst", "tl0ng1", &body);
    let (mut rd, mut wr) = s.split();
    let write = async { wr.write_all(req.as_bytes()).await.unwrap() };
    let route = async {
        let mut h = tokio::time::timeout(Duration::from_secs(10), pending.connected())
            .await
            .unwrap()
            .unwrap();
        loop {
            match h.next_event().await {
                Some(Event::Message(m)) => return m,
                Some(_) => continue,
                None => panic!("connection ended"),
            }
        }
    };
    let ((), m) = tokio::join!(write, route);
    assert_eq!(m.body.len(), body.len());
    let mut buf = [0u8; 256];
    let n = rd.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"MSRP tl0ng1 200 OK"));
}

#[tokio::test]
async fn a_peer_that_does_not_read_is_stopped_and_then_timed_out() {
    // A pipe of 1 KiB each way: our writes block as soon as the peer stops reading.
    let (ours, mut theirs) = tokio::io::duplex(1024);
    let me = uri("msrp://127.0.0.1:2855/n0tr3ad1ng;tcp");
    let session = Session::new(me, vec![uri(PEER)], Config::default());
    let mut h = spawn_bound(ours, Bytes::new(), session, None, Duration::from_secs(2));
    // Events are taken as they come: only the responses back up.
    let events = tokio::spawn(async move { while h.next_event().await.is_some() {} });
    let mut written = 0usize;
    let mut i = 0u32;
    let blocked = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let req = send_to(2855, "n0tr3ad1ng", &format!("tq{i:06}"), "x");
            i += 1;
            let w = theirs.write_all(req.as_bytes());
            match tokio::time::timeout(Duration::from_millis(300), w).await {
                Ok(Ok(())) => written += req.len(),
                // Blocked: the session stopped reading.
                Err(_) => return true,
                // Closed by the write timeout while we could still write: it never
                // stopped reading.
                Ok(Err(_)) => return false,
            }
            assert!(written < 4 * 1024 * 1024, "reading never stopped");
        }
    })
    .await
    .unwrap();
    assert!(blocked, "the session kept reading until the write timeout");
    // Responses queued: 64 KiB in the session, 64 KiB for the socket, and the pipe;
    // requests read: what produced them, and one read more.
    assert!(written < 512 * 1024, "{written}");
    // The write made no progress for 2 s: the connection ends.
    tokio::time::timeout(Duration::from_secs(20), events)
        .await
        .expect("the connection ended after the write timeout")
        .unwrap();
}
