//! Chat sessions for the memory figure: SIP users INVITE XMPP users with an MSRP offer
//! (RFC 4975 section 8, `a=setup:active`: the generator connects, stox answers passive),
//! ACK the 200, connect to the first hop of stox's a=path and send one SEND, whose 200 stox
//! gives only once the stanza is written to the XMPP server. The connections are then kept
//! open and idle. Built from stox's own MSRP framing (`stox::msrp::frame`) on a raw TCP
//! stream per session: the bench only needs to write one request and read one response.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use stox::msrp::frame::{
    Decoded, Decoder, Frame, Header, Limits, MessageId, Method, Request, TransactionId,
};
use stox::msrp::uri::{self, MsrpUri};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

use crate::sip::{header, response};

/// INVITEs sent and not yet finished (refused, or SEND answered or failed).
const WINDOW: u64 = 500;

#[derive(Default)]
struct Counts {
    invited: AtomicU64,
    answered: AtomicU64,
    refused: AtomicU64,
    sends_ok: AtomicU64,
    sends_failed: AtomicU64,
    byes: AtomicU64,
}

/// What a run opened; `streams` keeps the MSRP connections open until dropped.
pub struct Opened {
    pub streams: Vec<std::net::TcpStream>,
    pub invited: u64,
    /// INVITEs answered 200 (distinct Call-IDs).
    pub answered: u64,
    /// Final responses other than 2xx, by status.
    pub refused: HashMap<u16, u64>,
    /// SENDs answered 200 (the stanza was written to the XMPP server).
    pub sends_ok: u64,
    /// SENDs answered otherwise, connections refused or closed, no answer within 30 s.
    pub sends_failed: u64,
    /// Why they failed, with counts.
    pub why_failed: HashMap<String, u64>,
    /// BYEs from stox (none is expected while the sessions are idle).
    pub byes: u64,
    pub secs: f64,
}

/// Opens `count` sessions from `r<i>@sip.test` to `c<i % users>@localhost` at `rate`/s
/// through stox's SIP listener `target`; stops at `max_time`.
pub fn open(
    target: SocketAddr,
    count: u64,
    users: u64,
    rate: u64,
    max_time: Duration,
) -> anyhow::Result<Opened> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(run(target, count, users.max(1), rate, max_time))
}

async fn run(
    target: SocketAddr,
    count: u64,
    users: u64,
    rate: u64,
    max_time: Duration,
) -> anyhow::Result<Opened> {
    let sock = Arc::new(UdpSocket::bind("127.0.0.1:0").await?);
    big_receive_buffer_tokio(&sock);
    let local = sock.local_addr()?;
    let counts = Arc::new(Counts::default());
    let streams = Arc::new(Mutex::new(Vec::<TcpStream>::new()));
    let refused = Arc::new(Mutex::new(HashMap::<u16, u64>::new()));
    let why_failed = Arc::new(Mutex::new(HashMap::<String, u64>::new()));
    let start = Instant::now();
    let receiver = tokio::spawn(receive(
        sock.clone(),
        local,
        users,
        counts.clone(),
        streams.clone(),
        refused.clone(),
        why_failed.clone(),
    ));
    let mut sent = 0u64;
    let finished = |c: &Counts| {
        c.refused.load(Ordering::SeqCst)
            + c.sends_ok.load(Ordering::SeqCst)
            + c.sends_failed.load(Ordering::SeqCst)
    };
    while start.elapsed() < max_time {
        if sent == count && finished(&counts) >= count {
            break;
        }
        let due = ((start.elapsed().as_secs_f64() * rate as f64) as u64 + 1).min(count);
        while sent < due && sent - finished(&counts) < WINDOW {
            let req = invite(sent, sent % users, local);
            sock.send_to(req.as_bytes(), target).await?;
            sent += 1;
            counts.invited.store(sent, Ordering::SeqCst);
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    // Late 200 retransmissions still get their ACK for a moment.
    tokio::time::sleep(Duration::from_millis(500)).await;
    receiver.abort();
    let streams = std::mem::take(&mut *streams.lock().unwrap())
        .into_iter()
        .filter_map(|s| s.into_std().ok())
        .collect();
    let refused = refused.lock().unwrap().clone();
    let why_failed = why_failed.lock().unwrap().clone();
    Ok(Opened {
        why_failed,
        streams,
        invited: sent,
        answered: counts.answered.load(Ordering::SeqCst),
        refused,
        sends_ok: counts.sends_ok.load(Ordering::SeqCst),
        sends_failed: counts.sends_failed.load(Ordering::SeqCst),
        byes: counts.byes.load(Ordering::SeqCst),
        secs: start.elapsed().as_secs_f64(),
    })
}

/// As `sip::big_receive_buffer`, for a tokio socket.
fn big_receive_buffer_tokio(sock: &UdpSocket) {
    let _ = socket2::SockRef::from(sock).set_recv_buffer_size(4 << 20);
}

/// Our MSRP URI for session `i`: as the active side we are never connected to, so the
/// authority only names us (port 9, as RFC 4145 writes for an active endpoint).
fn our_uri(i: u64) -> MsrpUri {
    MsrpUri::new("127.0.0.1", 9, format!("bench{i}s"))
}

fn invite(i: u64, u: u64, local: SocketAddr) -> String {
    let sdp = format!(
        "v=0\r\no=r{i} 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
         m=message 9 TCP/MSRP *\r\na=accept-types:message/cpim text/plain\r\n\
         a=accept-wrapped-types:text/plain\r\na=path:{}\r\na=setup:active\r\n",
        our_uri(i)
    );
    format!(
        "INVITE sip:c{u}@localhost SIP/2.0\r\n\
         Via: SIP/2.0/UDP {local};branch=z9hG4bKc{i};rport\r\nMax-Forwards: 70\r\n\
         From: <sip:r{i}@sip.test>;tag=r{i}\r\nTo: <sip:c{u}@localhost>\r\n\
         Call-ID: c{i}@bench\r\nCSeq: 1 INVITE\r\nContact: <sip:r{i}@{local}>\r\n\
         Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
        sdp.len()
    )
}

/// The session number in Call-ID `c<i>@bench`.
fn session_of(msg: &str) -> Option<u64> {
    header(msg, "Call-ID", Some("i"))?
        .strip_prefix('c')?
        .strip_suffix("@bench")?
        .parse()
        .ok()
}

/// Answers stox's requests, ACKs its 200s and starts the MSRP side of each new session.
async fn receive(
    sock: Arc<UdpSocket>,
    local: SocketAddr,
    users: u64,
    counts: Arc<Counts>,
    streams: Arc<Mutex<Vec<TcpStream>>>,
    refused: Arc<Mutex<HashMap<u16, u64>>>,
    why_failed: Arc<Mutex<HashMap<String, u64>>>,
) {
    let mut buf = vec![0u8; 65536];
    let mut answered: HashSet<u64> = HashSet::new();
    let mut failed: HashSet<u64> = HashSet::new();
    loop {
        let Ok((n, from)) = sock.recv_from(&mut buf).await else {
            continue;
        };
        let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
        let Some(status) = msg.strip_prefix("SIP/2.0 ") else {
            if msg.starts_with("BYE ") {
                counts.byes.fetch_add(1, Ordering::SeqCst);
            }
            let _ = sock
                .send_to(response(&msg, "200 OK", "").as_bytes(), from)
                .await;
            continue;
        };
        let code: u16 = status.get(..3).and_then(|c| c.parse().ok()).unwrap_or(0);
        let Some(i) = session_of(&msg) else { continue };
        if code < 200 {
            continue;
        }
        if code >= 300 {
            // The client transaction's ACK (RFC 3261 17.1.1.3: the INVITE's branch and
            // Request-URI), so stox stops retransmitting.
            let to = header(&msg, "To", Some("t")).unwrap_or("");
            let ack = format!(
                "ACK sip:c{}@localhost SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bKc{i};rport\r\n\
                 Max-Forwards: 70\r\nFrom: <sip:r{i}@sip.test>;tag=r{i}\r\nTo: {to}\r\n\
                 Call-ID: c{i}@bench\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n",
                i % users
            );
            let _ = sock.send_to(ack.as_bytes(), from).await;
            if failed.insert(i) {
                *refused.lock().unwrap().entry(code).or_default() += 1;
                counts.refused.fetch_add(1, Ordering::SeqCst);
            }
            continue;
        }
        // 2xx: ACK it (again, for a retransmission) to its Contact, a new transaction.
        let to = header(&msg, "To", Some("t")).unwrap_or("");
        let contact = header(&msg, "Contact", Some("m"))
            .and_then(|c| Some(c[c.find('<')? + 1..c.find('>')?].to_string()))
            .unwrap_or_else(|| "sip:stox@127.0.0.1".into());
        let ack = format!(
            "ACK {contact} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bKa{i};rport\r\n\
             Max-Forwards: 70\r\nFrom: <sip:r{i}@sip.test>;tag=r{i}\r\nTo: {to}\r\n\
             Call-ID: c{i}@bench\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n"
        );
        let _ = sock.send_to(ack.as_bytes(), from).await;
        if !answered.insert(i) {
            continue;
        }
        counts.answered.fetch_add(1, Ordering::SeqCst);
        let path = msg
            .split_once("\r\n\r\n")
            .map(|(_, b)| b)
            .unwrap_or("")
            .lines()
            .find_map(|l| l.trim().strip_prefix("a=path:"))
            .and_then(|p| uri::parse_path(p.trim()).ok());
        let (counts, streams, why_failed) = (counts.clone(), streams.clone(), why_failed.clone());
        tokio::spawn(async move {
            let r = match path {
                Some(p) => tokio::time::timeout(Duration::from_secs(30), send_one(i, p))
                    .await
                    .unwrap_or_else(|_| Err("no response within 30 s".into())),
                None => Err("no a=path in the 200".into()),
            };
            match r {
                Ok(s) => {
                    streams.lock().unwrap().push(s);
                    counts.sends_ok.fetch_add(1, Ordering::SeqCst);
                }
                Err(why) => {
                    let mut w = why_failed.lock().unwrap();
                    *w.entry(why).or_default() += 1;
                    counts.sends_failed.fetch_add(1, Ordering::SeqCst);
                }
            }
        });
    }
}

/// Connects to the first hop of `path` and sends one text/plain SEND (it also binds the
/// connection to the session, RFC 4975 section 7.1); Ok with the stream on its 200.
async fn send_one(i: u64, path: Vec<MsrpUri>) -> Result<TcpStream, String> {
    let hop = path.first().ok_or("empty a=path")?.clone();
    let mut s = TcpStream::connect((hop.host_for_connect(), hop.port_or_default()))
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let _ = s.set_nodelay(true);
    let tid = TransactionId::new(format!("bench{i}t")).ok_or("tid")?;
    let mut req = Request::new(tid.clone(), Method::Send, path, vec![our_uri(i)]);
    req.headers.push(Header::MessageId(
        MessageId::new(format!("bench{i}m")).ok_or("message-id")?,
    ));
    req.headers.push(Header::ContentType("text/plain".into()));
    req.body = Some(format!("bench chat n={i}").into());
    let mut out = Vec::new();
    Frame::Request(req).encode(&mut out);
    s.write_all(&out).await.map_err(|e| format!("write: {e}"))?;
    let mut decoder = Decoder::new(Limits::default());
    let mut buf = [0u8; 2048];
    loop {
        let n = s.read(&mut buf).await.map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err("closed before the response".into());
        }
        decoder.push(&buf[..n]);
        while let Ok(Some(d)) = decoder.decode() {
            if let Decoded::Frame(Frame::Response(r)) = d {
                if r.tid == tid {
                    return if r.code == 200 {
                        Ok(s)
                    } else {
                        Err(format!("SEND answered {}", r.code))
                    };
                }
            }
        }
    }
}
