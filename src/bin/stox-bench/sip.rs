//! SIP over UDP on loopback for the bench: a UAS sink that answers every request 200 and
//! timestamps MESSAGEs against the send time in their body (SIPp cannot: it does not know
//! when the stanza was sent), and a SUBSCRIBE generator for the memory figures.

use std::collections::HashSet;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::procs::now_ns;

/// The value of the first header named `name` (case-insensitive), or with compact `short`.
pub fn header<'a>(msg: &'a str, name: &str, short: Option<&str>) -> Option<&'a str> {
    let head = msg.split("\r\n\r\n").next()?;
    head.split("\r\n").skip(1).find_map(|l| {
        let (n, v) = l.split_once(':')?;
        let n = n.trim();
        (n.eq_ignore_ascii_case(name) || short.is_some_and(|s| n == s)).then(|| v.trim())
    })
}

/// A response to `req` with its Via(s), From, To (tagged), Call-ID and CSeq.
pub fn response(req: &str, status: &str, extra: &str) -> String {
    let mut r = format!("SIP/2.0 {status}\r\n");
    let head = req.split("\r\n\r\n").next().unwrap_or("");
    for line in head.split("\r\n").skip(1) {
        let name = line
            .split(':')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        match name.as_str() {
            "via" | "v" | "from" | "f" | "call-id" | "i" | "cseq" => {
                r.push_str(line);
                r.push_str("\r\n");
            }
            "to" | "t" => {
                r.push_str(line);
                if !line.contains("tag=") {
                    r.push_str(";tag=sink1");
                }
                r.push_str("\r\n");
            }
            _ => {}
        }
    }
    r.push_str(extra);
    r.push_str("Content-Length: 0\r\n\r\n");
    r
}

fn body(msg: &str) -> &str {
    msg.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("")
}

/// `key=<u64>` in `text`.
fn field(text: &str, key: &str) -> Option<u64> {
    let at = text.find(key)? + key.len();
    let digits: String = text[at..]
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    digits.parse().ok()
}

/// Asks for a 4 MB receive buffer (capped by net.core.rmem_max), so a sink thread that the
/// shared machine's scheduler holds up for a moment drops nothing.
pub fn big_receive_buffer(sock: &UdpSocket) {
    let _ = socket2::SockRef::from(sock).set_recv_buffer_size(4 << 20);
}

/// What the sink saw since the last `take`.
#[derive(Default)]
pub struct SinkRun {
    /// MESSAGE latencies (stanza sent -> MESSAGE received), microseconds, first copies only.
    pub latencies_us: Vec<u32>,
    pub seen: HashSet<u64>,
    pub duplicates: u64,
    pub first_ns: u64,
    pub last_ns: u64,
    /// SUBSCRIBEs answered (distinct Call-IDs) and NOTIFYs they were sent.
    pub subscribes: HashSet<String>,
    /// 2xx answers to those NOTIFYs (distinct Call-IDs): stox took the subscription as active.
    pub notify_ok: HashSet<String>,
    /// When the last request came in (bench clock, ns).
    pub last_request_ns: u64,
}

pub struct Sink {
    pub port: u16,
    run: Arc<Mutex<SinkRun>>,
    stop: Arc<AtomicBool>,
}

impl Sink {
    pub fn spawn(port: u16) -> anyhow::Result<Sink> {
        let sock = UdpSocket::bind(("127.0.0.1", port))?;
        big_receive_buffer(&sock);
        sock.set_read_timeout(Some(Duration::from_millis(100)))?;
        let run = Arc::new(Mutex::new(SinkRun::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (r, s) = (run.clone(), stop.clone());
        std::thread::spawn(move || sink_loop(sock, port, r, s));
        Ok(Sink { port, run, stop })
    }

    pub fn take(&self) -> SinkRun {
        std::mem::take(&mut *self.run.lock().unwrap())
    }

    pub fn count(&self) -> u64 {
        self.run.lock().unwrap().seen.len() as u64
    }

    /// (SUBSCRIBEs, 2xx to their NOTIFYs, last request's time) since the last `take`.
    pub fn subscription_counts(&self) -> (u64, u64, u64) {
        let r = self.run.lock().unwrap();
        (
            r.subscribes.len() as u64,
            r.notify_ok.len() as u64,
            r.last_request_ns,
        )
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn sink_loop(sock: UdpSocket, port: u16, run: Arc<Mutex<SinkRun>>, stop: Arc<AtomicBool>) {
    let mut buf = vec![0u8; 65536];
    let mut notify_n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let (n, from) = match sock.recv_from(&mut buf) {
            Ok(x) => x,
            Err(_) => continue,
        };
        let now = now_ns();
        let msg = String::from_utf8_lossy(&buf[..n]);
        if let Some(status) = msg.strip_prefix("SIP/2.0 ") {
            // A response to one of our NOTIFYs.
            let cseq = header(&msg, "CSeq", None).unwrap_or("");
            if status.starts_with('2') && cseq.ends_with("NOTIFY") {
                if let Some(c) = header(&msg, "Call-ID", Some("i")) {
                    run.lock().unwrap().notify_ok.insert(c.to_string());
                }
            }
            continue;
        }
        run.lock().unwrap().last_request_ns = now;
        let method = msg.split(' ').next().unwrap_or("");
        match method {
            "MESSAGE" => {
                let _ = sock.send_to(response(&msg, "200 OK", "").as_bytes(), from);
                let b = body(&msg);
                let mut r = run.lock().unwrap();
                match (field(b, "t="), field(b, "n=")) {
                    (Some(t), Some(seq)) => {
                        if r.seen.insert(seq) {
                            r.latencies_us.push((now.saturating_sub(t) / 1000) as u32);
                            if r.first_ns == 0 {
                                r.first_ns = now;
                            }
                            r.last_ns = now;
                        } else {
                            r.duplicates += 1;
                        }
                    }
                    _ => r.duplicates += 1,
                }
            }
            "SUBSCRIBE" => {
                let call_id = header(&msg, "Call-ID", Some("i")).unwrap_or("").to_string();
                let tag = format!("sub{}", call_id.len() as u64 * 31 + notify_n);
                let contact = format!("Contact: <sip:sink@127.0.0.1:{port}>\r\nExpires: 3600\r\n");
                let ok = response(&msg, "200 OK", &contact)
                    .replace(";tag=sink1", &format!(";tag={tag}"));
                let _ = sock.send_to(ok.as_bytes(), from);
                let fresh = run.lock().unwrap().subscribes.insert(call_id.clone());
                let expires_zero = header(&msg, "Expires", None) == Some("0");
                if fresh && !expires_zero {
                    notify_n += 1;
                    let notify = notify_for(&msg, &tag, port, notify_n);
                    let _ = sock.send_to(notify.as_bytes(), from);
                }
            }
            _ => {
                let _ = sock.send_to(response(&msg, "200 OK", "").as_bytes(), from);
            }
        }
    }
}

/// The NOTIFY that activates the subscription `sub` created (its dialog, an open PIDF).
fn notify_for(sub: &str, tag: &str, port: u16, n: u64) -> String {
    let uri = header(sub, "Contact", Some("m"))
        .and_then(|c| Some(c[c.find('<')? + 1..c.find('>')?].to_string()))
        .unwrap_or_else(|| "sip:stox@127.0.0.1".into());
    let to_value = header(sub, "To", Some("t")).unwrap_or("");
    let from_value = header(sub, "From", Some("f")).unwrap_or("");
    let call_id = header(sub, "Call-ID", Some("i")).unwrap_or("");
    let entity = to_value
        .find("sip:")
        .map(|i| {
            let rest = &to_value[i + 4..];
            rest[..rest.find(['>', ';']).unwrap_or(rest.len())].to_string()
        })
        .unwrap_or_default();
    let pidf = format!(
        "<?xml version='1.0' encoding='UTF-8'?>\n<presence xmlns='urn:ietf:params:xml:ns:pidf' \
         entity='pres:{entity}'><tuple id='t1'><status><basic>open</basic></status></tuple></presence>"
    );
    format!(
        "NOTIFY {uri} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bKn{n}\r\n\
         Max-Forwards: 70\r\nFrom: {to_value};tag={tag}\r\nTo: {from_value}\r\nCall-ID: {call_id}\r\n\
         CSeq: 1 NOTIFY\r\nContact: <sip:sink@127.0.0.1:{port}>\r\nEvent: presence\r\n\
         Subscription-State: active;expires=3600\r\nContent-Type: application/pidf+xml\r\n\
         Content-Length: {}\r\n\r\n{pidf}",
        pidf.len()
    )
}

/// What [`subscribe_watchers`] saw: distinct Call-IDs.
pub struct Watchers {
    /// SUBSCRIBEs that got a 2xx.
    pub ok: u64,
    /// Subscriptions that got their first NOTIFY (answered 200).
    pub notified: u64,
}

/// SIP watchers: `count` SUBSCRIBEs from `w<i>@sip.test` to `u<i % users>@localhost` at
/// `rate`/s, answering the NOTIFYs that come back. Stops once each has its 2xx and its
/// NOTIFY (an unanswered NOTIFY would end the subscription), or at `max_time`.
pub fn subscribe_watchers(
    target: SocketAddr,
    count: u64,
    users: u64,
    rate: u64,
    max_time: Duration,
) -> anyhow::Result<Watchers> {
    let sock = UdpSocket::bind("127.0.0.1:0")?;
    big_receive_buffer(&sock);
    sock.set_read_timeout(Some(Duration::from_millis(1)))?;
    let local = sock.local_addr()?;
    let start = Instant::now();
    let mut sent = 0u64;
    let mut ok: HashSet<String> = HashSet::new();
    let mut notified: HashSet<String> = HashSet::new();
    let mut buf = vec![0u8; 65536];
    let mut quiet_since: Option<Instant> = None;
    while start.elapsed() < max_time {
        let due = ((start.elapsed().as_secs_f64() * rate as f64) as u64 + 1).min(count);
        // Keep at most 2000 unanswered, so a slow gateway is not flooded with retries.
        while sent < due && sent - ok.len() as u64 <= 2000 {
            let i = sent;
            let u = i % users.max(1);
            let req = format!(
                "SUBSCRIBE sip:u{u}@localhost SIP/2.0\r\n\
                 Via: SIP/2.0/UDP {local};branch=z9hG4bKs{i};rport\r\nMax-Forwards: 70\r\n\
                 From: <sip:w{i}@sip.test>;tag=w{i}\r\nTo: <sip:u{u}@localhost>\r\n\
                 Call-ID: w{i}@bench\r\nCSeq: 1 SUBSCRIBE\r\nContact: <sip:w{i}@{local}>\r\n\
                 Event: presence\r\nAccept: application/pidf+xml\r\nExpires: 3600\r\n\
                 Content-Length: 0\r\n\r\n"
            );
            sock.send_to(req.as_bytes(), target)?;
            sent += 1;
        }
        match sock.recv_from(&mut buf) {
            Ok((n, from)) => {
                quiet_since = None;
                let msg = String::from_utf8_lossy(&buf[..n]);
                if let Some(status) = msg.strip_prefix("SIP/2.0 ") {
                    if status.starts_with('2') {
                        if let Some(c) = header(&msg, "Call-ID", Some("i")) {
                            ok.insert(c.to_string());
                        }
                    }
                } else {
                    let _ = sock.send_to(response(&msg, "200 OK", "").as_bytes(), from);
                    if msg.starts_with("NOTIFY ") {
                        if let Some(c) = header(&msg, "Call-ID", Some("i")) {
                            notified.insert(c.to_string());
                        }
                    }
                }
            }
            Err(_) => {
                if sent == count && ok.len() as u64 >= count && notified.len() as u64 >= count {
                    // Answer the NOTIFYs still coming for a moment, then stop.
                    let q = *quiet_since.get_or_insert_with(Instant::now);
                    if q.elapsed() > Duration::from_millis(500) {
                        break;
                    }
                }
            }
        }
    }
    Ok(Watchers {
        ok: ok.len() as u64,
        notified: notified.len() as u64,
    })
}
