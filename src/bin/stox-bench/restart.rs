//! The Prosody restart run: SIP -> XMPP MESSAGEs at a steady rate while Prosody is killed
//! (SIGKILL) and started again. Every message carries its SIPp call number; SIPp's message
//! trace says which calls were answered 200 and which were refused, and a c2s sink that
//! logs in again after the restart (offline storage on) says which arrived. A message
//! answered 200 that never arrives is lost: issue 6 measured Kamailio's xmpp module losing
//! 10.4 % of them.

use std::collections::HashSet;
use std::io::Read;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What one restart run saw.
pub struct Outcome {
    pub sent: u64,
    pub answered_200: usize,
    pub refused: usize,
    pub delivered: usize,
    /// Answered 200 and never delivered.
    pub lost: usize,
    /// Refused (503, ...) but delivered all the same: a duplicate when the sender retries.
    pub delivered_refused: usize,
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} sent, {} answered 200, {} refused; {} delivered; **{} answered 200 and lost ({:.2} %)**, {} refused but delivered",
            self.sent,
            self.answered_200,
            self.refused,
            self.delivered,
            self.lost,
            if self.answered_200 > 0 {
                100.0 * self.lost as f64 / self.answered_200 as f64
            } else {
                0.0
            },
            self.delivered_refused
        )
    }
}

/// A c2s session as `user` that collects the `n=` numbers of the bench bodies it receives,
/// logging in again whenever its connection drops, until stopped.
pub struct Collector {
    pub seen: Arc<Mutex<HashSet<u64>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Collector {
    pub fn start(c2s: u16, user: &str) -> Collector {
        let seen = Arc::new(Mutex::new(HashSet::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st, user) = (seen.clone(), stop.clone(), user.to_string());
        let thread = std::thread::spawn(move || {
            while !st.load(Ordering::SeqCst) {
                let Ok(mut stream) = super::xmpp::login(c2s, &user, "pw") else {
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                };
                let mut buf = vec![0u8; 64 * 1024];
                let mut carry = Vec::new();
                while !st.load(Ordering::SeqCst) {
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
                    hay.extend_from_slice(&buf[..n]);
                    let numbers = bench_numbers(&hay);
                    s.lock().unwrap().extend(numbers);
                    let keep = hay.len().min(32);
                    carry = hay[hay.len() - keep..].to_vec();
                }
            }
        });
        Collector {
            seen,
            stop,
            thread: Some(thread),
        }
    }

    pub fn count(&self) -> u64 {
        self.seen.lock().unwrap().len() as u64
    }

    pub fn finish(mut self) -> HashSet<u64> {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        std::mem::take(&mut *self.seen.lock().unwrap())
    }
}

/// The numbers after `bench n=` in `hay` (complete ones: followed by a non-digit).
fn bench_numbers(hay: &[u8]) -> Vec<u64> {
    const NEEDLE: &[u8] = b"bench n=";
    let mut out = Vec::new();
    let mut i = 0;
    while i + NEEDLE.len() <= hay.len() {
        if &hay[i..i + NEEDLE.len()] == NEEDLE {
            let digits: Vec<u8> = hay[i + NEEDLE.len()..]
                .iter()
                .take_while(|b| b.is_ascii_digit())
                .copied()
                .collect();
            let end = i + NEEDLE.len() + digits.len();
            if !digits.is_empty() && end < hay.len() {
                if let Ok(n) = std::str::from_utf8(&digits).unwrap_or("").parse() {
                    out.push(n);
                }
            }
            i = end;
        } else {
            i += 1;
        }
    }
    out
}

/// From SIPp's `-trace_msg` log: the call numbers answered 200, and those answered with
/// another final status. SIPp's Call-ID is `[call_number]-[pid]@[ip]`, and its bodies carry
/// `n=[call_number]`.
pub fn sipp_answers(log: &Path) -> (HashSet<u64>, HashSet<u64>) {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let (mut ok, mut refused) = (HashSet::new(), HashSet::new());
    for block in text.split("----------------------------------------------- ") {
        if !block.contains("message received") {
            continue;
        }
        let Some(status) = block
            .lines()
            .find_map(|l| l.strip_prefix("SIP/2.0 "))
            .and_then(|l| l.split(' ').next())
            .and_then(|c| c.parse::<u16>().ok())
        else {
            continue;
        };
        let Some(call) = block
            .lines()
            .find_map(|l| {
                l.strip_prefix("Call-ID: ")
                    .or_else(|| l.strip_prefix("i: "))
            })
            .and_then(|c| c.trim().split('-').next())
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        match status {
            200..=299 => {
                ok.insert(call);
            }
            300.. => {
                refused.insert(call);
            }
            _ => {}
        }
    }
    // A call refused on one retransmission and accepted on another counts as accepted.
    refused.retain(|c| !ok.contains(c));
    (ok, refused)
}

pub fn outcome(
    sent: u64,
    ok: &HashSet<u64>,
    refused: &HashSet<u64>,
    delivered: &HashSet<u64>,
) -> Outcome {
    Outcome {
        sent,
        answered_200: ok.len(),
        refused: refused.len(),
        delivered: delivered.len(),
        lost: ok.difference(delivered).count(),
        delivered_refused: refused.intersection(delivered).count(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_found_whole() {
        assert_eq!(
            bench_numbers(b"<body>bench n=12</body><body>bench n=7</body><body>bench n=3"),
            vec![12, 7]
        );
    }
}
