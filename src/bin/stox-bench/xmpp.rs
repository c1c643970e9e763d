//! A raw c2s client (TCP, SASL PLAIN, no TLS) for the bench: a sink that counts and
//! timestamps `<message/>`s, and a paced flooder. Minimal framing: the sink only looks for
//! `</message>` and the flooder writes pre-formatted stanzas in batches, so both stay far
//! cheaper per stanza than Prosody.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::procs::now_ns;

fn base64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in data.chunks(3) {
        let b = [c[0], *c.get(1).unwrap_or(&0), *c.get(2).unwrap_or(&0)];
        let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        for i in 0..4 {
            if i <= c.len() {
                out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn read_until(s: &mut TcpStream, buf: &mut Vec<u8>, needles: &[&str]) -> anyhow::Result<String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = String::from_utf8_lossy(buf).into_owned();
        if let Some(n) = needles.iter().find(|n| text.contains(*n)) {
            if n.contains("failure") || n.contains("error") {
                anyhow::bail!("c2s login failed: {text}");
            }
            buf.clear();
            return Ok(text);
        }
        anyhow::ensure!(Instant::now() < deadline, "c2s: timed out; got {text}");
        let mut chunk = [0u8; 8192];
        let n = s.read(&mut chunk)?;
        anyhow::ensure!(n > 0, "c2s: connection closed; got {text}");
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Logs in as `user@localhost/bench`, sends initial presence (so messages to the bare JID
/// reach this session) and returns the stream.
pub fn login(port: u16, user: &str, password: &str) -> anyhow::Result<TcpStream> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(Duration::from_secs(20)))?;
    let header = "<?xml version='1.0'?><stream:stream to='localhost' xmlns='jabber:client' \
                  xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>";
    let mut buf = Vec::new();
    s.write_all(header.as_bytes())?;
    read_until(&mut s, &mut buf, &["</stream:features>"])?;
    let auth = base64(format!("\0{user}\0{password}").as_bytes());
    write!(
        s,
        "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{auth}</auth>"
    )?;
    read_until(&mut s, &mut buf, &["<success", "<failure"])?;
    s.write_all(header.as_bytes())?;
    read_until(&mut s, &mut buf, &["</stream:features>"])?;
    s.write_all(
        b"<iq type='set' id='bind'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>\
          <resource>bench</resource></bind></iq>",
    )?;
    read_until(&mut s, &mut buf, &["</iq>", "type='error'"])?;
    s.write_all(b"<presence/>")?;
    s.set_read_timeout(Some(Duration::from_millis(200)))?;
    Ok(s)
}

/// Counts what arrives on a c2s session: `</message>` closings, and error messages.
pub struct Counter {
    pub messages: AtomicU64,
    pub errors: AtomicU64,
    pub first_ns: AtomicU64,
    pub last_ns: AtomicU64,
    stop: AtomicBool,
}

impl Counter {
    pub fn reset(&self) {
        self.messages.store(0, Ordering::SeqCst);
        self.errors.store(0, Ordering::SeqCst);
        self.first_ns.store(0, Ordering::SeqCst);
        self.last_ns.store(0, Ordering::SeqCst);
    }
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// Reads `stream` on a thread until stopped, counting messages.
pub fn count(mut stream: TcpStream) -> Arc<Counter> {
    let c = Arc::new(Counter {
        messages: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        first_ns: AtomicU64::new(0),
        last_ns: AtomicU64::new(0),
        stop: AtomicBool::new(false),
    });
    let counter = c.clone();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 256 * 1024];
        // The last bytes of the previous read, so a needle split across reads is found.
        let mut carry: Vec<u8> = Vec::new();
        while !counter.stop.load(Ordering::Relaxed) {
            let n = match stream.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.kind() == std::io::ErrorKind::TimedOut =>
                {
                    continue
                }
                Err(_) => break,
            };
            let mut hay = std::mem::take(&mut carry);
            let skip = hay.len();
            hay.extend_from_slice(&buf[..n]);
            let msgs = occurrences(&hay, b"</message>", skip);
            let errs = occurrences(&hay, b"type='error'", skip)
                + occurrences(&hay, b"type=\"error\"", skip);
            if msgs > 0 {
                let now = now_ns();
                let _ =
                    counter
                        .first_ns
                        .compare_exchange(0, now, Ordering::SeqCst, Ordering::SeqCst);
                counter.last_ns.store(now, Ordering::SeqCst);
                counter.messages.fetch_add(msgs, Ordering::SeqCst);
            }
            counter.errors.fetch_add(errs, Ordering::SeqCst);
            let keep = hay.len().min(16);
            carry = hay[hay.len() - keep..].to_vec();
        }
    });
    c
}

/// Many idle c2s sessions read by one thread (a thread each would wake thousands of times
/// a second), counting the presences of SIP contacts their users get. Dropping it closes them.
pub struct Sessions {
    streams: Arc<std::sync::Mutex<Vec<TcpStream>>>,
    pub presences: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl Sessions {
    pub fn new() -> Sessions {
        let s = Sessions {
            streams: Arc::default(),
            presences: Arc::default(),
            stop: Arc::default(),
        };
        let (streams, presences, stop) = (s.streams.clone(), s.presences.clone(), s.stop.clone());
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 64 * 1024];
            let mut carry: Vec<Vec<u8>> = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let mut idle = true;
                let mut streams = streams.lock().unwrap();
                carry.resize(streams.len(), Vec::new());
                for (s, carry) in streams.iter_mut().zip(carry.iter_mut()) {
                    // Bounded per pass, so one busy session does not starve the others.
                    for _ in 0..16 {
                        let n = match s.read(&mut buf) {
                            Ok(n) if n > 0 => n,
                            _ => break,
                        };
                        idle = false;
                        let mut hay = std::mem::take(carry);
                        let skip = hay.len();
                        hay.extend_from_slice(&buf[..n]);
                        // Prosody forwards a contact's presence, not `subscribed` (that only
                        // becomes a roster push, which these sessions did not ask for).
                        let n = occurrences(&hay, b"\\40sip.test@sip.localhost'", skip);
                        presences.fetch_add(n, Ordering::SeqCst);
                        let keep = hay.len().min(24);
                        *carry = hay[hay.len() - keep..].to_vec();
                    }
                }
                drop(streams);
                if idle {
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        });
        s
    }

    pub fn add(&self, stream: TcpStream) -> anyhow::Result<()> {
        stream.set_nonblocking(true)?;
        self.streams.lock().unwrap().push(stream);
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.streams.lock().unwrap().len()
    }
}

impl Drop for Sessions {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.streams.lock().unwrap().clear();
    }
}

/// Occurrences of `needle` in `hay` that end after byte `skip` (those before were counted).
fn occurrences(hay: &[u8], needle: &[u8], skip: usize) -> u64 {
    if hay.len() < needle.len() {
        return 0;
    }
    hay.windows(needle.len())
        .enumerate()
        .filter(|(i, w)| *w == needle && i + needle.len() > skip)
        .count() as u64
}

/// What a flood sent.
pub struct Flood {
    pub sent: u64,
    pub first_ns: u64,
    pub last_ns: u64,
}

/// Sends `count` messages to `to` at `rate`/s, paced per millisecond, each body carrying its
/// send time (`t=`, ns on the bench clock) and sequence number (`n=`). Stops at `max_time`.
pub fn flood(
    stream: &mut TcpStream,
    to: &str,
    rate: u64,
    count: u64,
    max_time: Duration,
) -> anyhow::Result<Flood> {
    let start = Instant::now();
    let first_ns = now_ns();
    let mut sent = 0u64;
    let mut batch = String::with_capacity(1 << 20);
    let mut last_ns = first_ns;
    while sent < count && start.elapsed() < max_time {
        let due = ((start.elapsed().as_secs_f64() * rate as f64) as u64 + 1).min(count);
        if due > sent {
            batch.clear();
            let t = now_ns();
            for n in sent..due {
                use std::fmt::Write as _;
                let _ = write!(
                    batch,
                    "<message to='{to}' type='chat' id='b{n}'><body>bench t={t} n={n}</body></message>"
                );
            }
            stream.write_all(batch.as_bytes())?;
            last_ns = t;
            sent = due;
        }
        std::thread::sleep(Duration::from_micros(500));
    }
    Ok(Flood {
        sent,
        first_ns,
        last_ns,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn base64_matches_rfc4648() {
        assert_eq!(super::base64(b"\0u\0p"), "AHUAcA==");
        assert_eq!(super::base64(b"foobar"), "Zm9vYmFy");
        assert_eq!(super::base64(b"fo"), "Zm8=");
    }
}
