//! Registration of stox at a registrar (RFC 3261 section 10), for SIP providers that only
//! serve registered users.
//!
//! [`Registration`] is the timing, sans-IO: when to send the next REGISTER, given what
//! the last one got. It refreshes before the granted expiry (at half of it, or 30 s before
//! it when that is sooner, but not sooner than a quarter of it), retries failures with
//! exponential backoff (or Retry-After), and follows 423 Min-Expires. [`spawn`] is the
//! tokio task that drives it through [`SipHandle::send`] (which answers the registrar's
//! digest challenge from `sip.credentials`), and unregisters on shutdown.

use std::time::{Duration, Instant};

use rsipstack::sip::headers::make_header;
use rsipstack::sip::prelude::HeadersExt;
use rsipstack::sip::{Header, Headers, Method, Request, Response, Version};
use tokio::sync::oneshot;
use tracing::Instrument;

use super::core::random_token;
use super::endpoint::{SipError, SipHandle};
use crate::config::{ListenTransport, RegisterConfig};

/// What a REGISTER got, as far as the timing is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A 2xx: the expiry granted to stox's contact, in seconds.
    Registered { granted: u32 },
    /// 423 Interval Too Brief, with the registrar's Min-Expires.
    TooBrief { min_expires: u32 },
    /// A failure response (with its Retry-After, if any), or no response at all.
    Failed { retry_after: Option<u32> },
}

/// First retry after a failure; doubles with each failure in a row.
const BACKOFF_START: Duration = Duration::from_secs(2);
/// Upper bound of the backoff.
const BACKOFF_MAX: Duration = Duration::from_secs(300);
/// Largest expiry stox asks for (a 423's Min-Expires beyond this is not followed).
const EXPIRES_MAX: u32 = 604_800;
/// Largest grant taken as is.
const GRANTED_MAX: u32 = 365 * 86_400;

/// The refresh timing of one registration. Inputs are `now` and outcomes; outputs are
/// when to send ([`Registration::poll_timeout`]) and what expiry to ask for.
#[derive(Debug, Clone)]
pub struct Registration {
    expires: u32,
    /// When the next REGISTER is due; `None` while one is in flight.
    next: Option<Instant>,
    registered_until: Option<Instant>,
    failures: u32,
}

impl Registration {
    /// A registration asking for `expires` seconds, due at once.
    pub fn new(now: Instant, expires: u32) -> Self {
        Registration {
            expires: expires.max(1),
            next: Some(now),
            registered_until: None,
            failures: 0,
        }
    }

    /// When the next REGISTER is due (`None` while one is in flight).
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.next
    }

    /// The expiry to ask for when a REGISTER is due at `now`; it is then in flight until
    /// [`Registration::handle_outcome`].
    pub fn poll_register(&mut self, now: Instant) -> Option<u32> {
        match self.next {
            Some(t) if t <= now => {
                self.next = None;
                Some(self.expires)
            }
            _ => None,
        }
    }

    /// Whether the registrar holds stox's contact at `now` (as far as stox knows).
    pub fn is_registered(&self, now: Instant) -> bool {
        self.registered_until.is_some_and(|u| u > now)
    }

    /// The expiry stox asks for (raised by a 423).
    pub fn expires(&self) -> u32 {
        self.expires
    }

    /// Takes what the REGISTER in flight got; returns how long until the next one.
    pub fn handle_outcome(&mut self, now: Instant, outcome: Outcome) -> Duration {
        let delay = match outcome {
            Outcome::Registered { granted } if granted > 0 => {
                // A registrar may grant more than asked; more than a year is not believed.
                let granted = granted.min(GRANTED_MAX);
                self.failures = 0;
                self.registered_until = Some(now + Duration::from_secs(granted.into()));
                refresh_after(granted)
            }
            Outcome::TooBrief { min_expires }
                if min_expires > self.expires && min_expires <= EXPIRES_MAX =>
            {
                self.expires = min_expires;
                Duration::ZERO
            }
            Outcome::Failed {
                retry_after: Some(s),
            } if s > 0 => {
                self.failures += 1;
                Duration::from_secs(s.min(3600).into())
            }
            // A failure, a 2xx that grants nothing, or a 423 that cannot be followed.
            _ => {
                self.failures += 1;
                backoff(self.failures)
            }
        };
        self.next = Some(now + delay);
        delay
    }
}

/// When to refresh a registration granted for `granted` seconds: at half of it, or 30 s
/// before expiry when that is sooner, but not sooner than a quarter of it.
pub fn refresh_after(granted: u32) -> Duration {
    let ms = u64::from(granted) * 1000;
    let half = ms / 2;
    let margin = ms.saturating_sub(30_000);
    Duration::from_millis(half.min(margin).max(ms / 4))
}

fn backoff(failures: u32) -> Duration {
    let exp = failures.saturating_sub(1).min(16);
    BACKOFF_START.saturating_mul(1u32 << exp).min(BACKOFF_MAX)
}

// ----- the tokio edge -----

/// The running registration task; [`RegisterHandle::unregister`] ends it.
pub struct RegisterHandle {
    stop: Option<oneshot::Sender<oneshot::Sender<()>>>,
}

impl RegisterHandle {
    /// Stops refreshing and, when registered, sends REGISTER with Expires: 0, waiting at
    /// most `timeout` for its answer.
    pub async fn unregister(mut self, timeout: Duration) {
        let Some(stop) = self.stop.take() else {
            return;
        };
        let (done_tx, done_rx) = oneshot::channel();
        if stop.send(done_tx).is_ok() {
            let _ = tokio::time::timeout(timeout, done_rx).await;
        }
    }
}

/// The requests of one registration: one Call-ID and From tag for its whole life, CSeq
/// counting up (RFC 3261 10.2).
struct Binding {
    registrar: String,
    aor: String,
    contact: String,
    call_id: String,
    from_tag: String,
    cseq: u32,
}

impl Binding {
    fn new(config: &RegisterConfig, sip: &SipHandle, transport: ListenTransport) -> Binding {
        let user = super::uri_user(&config.aor)
            .ok()
            .flatten()
            .unwrap_or_default();
        let host = sip.contact_host().unwrap_or("127.0.0.1").to_string();
        let contact = match transport {
            ListenTransport::Udp => format!("sip:{user}@{host}"),
            ListenTransport::Tcp => format!("sip:{user}@{host};transport=tcp"),
            ListenTransport::Tls => format!("sips:{user}@{host}"),
        };
        Binding {
            registrar: config.registrar.clone(),
            aor: config.aor.clone(),
            contact,
            call_id: format!("{}@{host}", random_token(20)),
            from_tag: random_token(10),
            cseq: 0,
        }
    }

    fn request(&mut self, expires: u32) -> Option<Request> {
        self.cseq += 1;
        let uri = rsipstack::sip::parse_uri(&self.registrar).ok()?;
        let mut headers = Headers::default();
        let mut push = |name: &str, value: String| headers.push(make_header(name, value));
        push("To", format!("<{}>", self.aor));
        push("From", format!("<{}>;tag={}", self.aor, self.from_tag));
        push("Call-ID", self.call_id.clone());
        push("CSeq", format!("{} REGISTER", self.cseq));
        push("Contact", format!("<{}>", self.contact));
        push("Expires", expires.to_string());
        Some(Request {
            method: Method::Register,
            uri,
            version: Version::V2,
            headers,
            body: Vec::new(),
        })
    }

    /// Keeps CSeq above what was sent: the digest layer may have re-sent the request with
    /// a higher one (the response echoes it); after a failure, skip what it might have used.
    fn sent(&mut self, result: &Result<Response, SipError>) {
        match result.as_ref().ok().and_then(response_cseq) {
            Some(n) => self.cseq = self.cseq.max(n),
            None => self.cseq += u32::from(super::auth::MAX_ROUNDS),
        }
        if self.cseq > (1 << 30) {
            // RFC 3261 8.1.1.5: below 2**31. A new Call-ID starts a new count.
            self.call_id = format!("{}@stox", random_token(20));
            self.cseq = 0;
        }
    }

    /// The expiry granted to this binding by a 2xx (RFC 3261 10.2.4): the expires
    /// parameter of its Contact, else the Expires header, else what was asked for.
    fn granted(&self, response: &Response, asked: u32) -> u32 {
        let mut contacts = Vec::new();
        for h in response.headers.iter() {
            if let Header::Contact(c) = h {
                contacts.extend(split_list(c.value()));
            }
        }
        let ours = contacts
            .iter()
            .find(|c| super::dialog::uri_of(c).eq_ignore_ascii_case(&self.contact))
            .or(if contacts.len() == 1 {
                contacts.first()
            } else {
                None
            });
        if let Some(e) = ours.and_then(|c| header_param(c, "expires")) {
            return e;
        }
        response
            .expires_header()
            .and_then(|e| e.value().trim().parse::<u32>().ok())
            .unwrap_or(asked)
    }
}

fn response_cseq(r: &Response) -> Option<u32> {
    r.cseq_header()
        .ok()?
        .value()
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Splits a header value on commas outside quotes and angle brackets.
fn split_list(v: &str) -> Vec<String> {
    let mut out = Vec::new();
    let (mut depth, mut quoted, mut start) = (0i32, false, 0);
    let mut escaped = false;
    for (i, c) in v.char_indices() {
        if escaped {
            escaped = false;
            continue;
        }
        match c {
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            '<' if !quoted => depth += 1,
            '>' if !quoted => depth -= 1,
            ',' if !quoted && depth <= 0 => {
                out.push(v[start..i].trim().to_string());
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(v[start..].trim().to_string());
    out.retain(|s| !s.is_empty());
    out
}

/// A numeric header parameter (after the `>` of a name-addr).
fn header_param(value: &str, name: &str) -> Option<u32> {
    let params = match value.rfind('>') {
        Some(i) => &value[i + 1..],
        None => value,
    };
    params.split(';').skip(1).find_map(|p| {
        let (k, v) = p.split_once('=')?;
        if k.trim().eq_ignore_ascii_case(name) {
            // Longer than a u32 holds: as long as stox asks for at most.
            Some(v.trim().parse::<u64>().ok()?.min(u64::from(u32::MAX)) as u32)
        } else {
            None
        }
    })
}

fn outcome_of(binding: &Binding, asked: u32, result: &Result<Response, SipError>) -> Outcome {
    match result {
        Ok(r) if (200..300).contains(&r.status_code.code()) => Outcome::Registered {
            granted: binding.granted(r, asked),
        },
        Ok(r) if r.status_code.code() == 423 => Outcome::TooBrief {
            min_expires: r
                .min_expires_header()
                .and_then(|m| m.value().trim().parse().ok())
                .unwrap_or(0),
        },
        Ok(r) => Outcome::Failed {
            retry_after: r.headers.iter().find_map(|h| match h {
                Header::RetryAfter(v) => v.value().split([';', ' ']).next()?.parse().ok(),
                _ => None,
            }),
        },
        Err(_) => Outcome::Failed { retry_after: None },
    }
}

/// Starts the registration task: it registers at once and keeps the binding alive.
/// `transport` is that of the listener whose address is the Contact.
pub fn spawn(
    config: &RegisterConfig,
    sip: SipHandle,
    transport: ListenTransport,
) -> RegisterHandle {
    let (stop_tx, stop_rx) = oneshot::channel();
    let binding = Binding::new(config, &sip, transport);
    let reg = Registration::new(Instant::now(), config.expires);
    let span = tracing::info_span!("register", aor = %config.aor, registrar = %config.registrar);
    tokio::spawn(run(binding, reg, sip, stop_rx).instrument(span));
    RegisterHandle {
        stop: Some(stop_tx),
    }
}

async fn run(
    mut binding: Binding,
    mut reg: Registration,
    sip: SipHandle,
    mut stop: oneshot::Receiver<oneshot::Sender<()>>,
) {
    let done = loop {
        let now = Instant::now();
        if let Some(asked) = reg.poll_register(now) {
            let Some(request) = binding.request(asked) else {
                tracing::warn!("The registrar URI cannot be used; not registering.");
                break None;
            };
            let result = tokio::select! {
                r = sip.send(request) => r,
                done = &mut stop => break done.ok(),
            };
            binding.sent(&result);
            let outcome = outcome_of(&binding, asked, &result);
            let delay = reg.handle_outcome(Instant::now(), outcome);
            log_outcome(&binding, &result, outcome, delay, reg.expires());
            continue;
        }
        let Some(at) = reg.poll_timeout() else {
            break None;
        };
        tokio::select! {
            _ = tokio::time::sleep_until(tokio::time::Instant::from_std(at)) => {}
            done = &mut stop => break done.ok(),
        }
    };
    if reg.is_registered(Instant::now()) {
        if let Some(request) = binding.request(0) {
            match sip.send(request).await {
                Ok(r) if (200..300).contains(&r.status_code.code()) => {
                    tracing::info!("Unregistered.")
                }
                Ok(r) => {
                    tracing::info!(status = r.status_code.code(), "Unregistering was refused.")
                }
                Err(e) => tracing::info!(error = %e, "Unregistering failed."),
            }
        }
    }
    if let Some(done) = done {
        let _ = done.send(());
    }
}

fn log_outcome(
    binding: &Binding,
    result: &Result<Response, SipError>,
    outcome: Outcome,
    next: Duration,
    expires: u32,
) {
    let next_s = next.as_secs_f32();
    match (outcome, result) {
        (Outcome::Registered { granted }, _) if granted > 0 => tracing::info!(
            contact = %binding.contact, granted, refresh_in_s = next_s, "Registered."
        ),
        (Outcome::TooBrief { .. }, _) if next.is_zero() => tracing::info!(
            expires,
            "The registrar wants a longer expiry; registering again."
        ),
        (_, Ok(r)) => tracing::info!(
            status = r.status_code.code(), reason = %r.status_code.text(),
            retry_in_s = next_s, "Registration refused; retrying."
        ),
        (_, Err(e)) => tracing::info!(
            error = %e, retry_in_s = next_s, "Registration failed; retrying."
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    /// A virtual clock: every instant is `t0 + offset`.
    struct Clock(Instant);

    impl Clock {
        fn at(&self, secs: f64) -> Instant {
            self.0 + Duration::from_secs_f64(secs)
        }
    }

    #[test]
    fn refresh_comes_at_half_the_expiry_or_30_s_before_it_never_before_a_quarter() {
        assert_eq!(refresh_after(3600), 1800 * S);
        assert_eq!(refresh_after(60), 30 * S);
        assert_eq!(refresh_after(50), 20 * S);
        assert_eq!(refresh_after(40), 10 * S);
        assert_eq!(refresh_after(10), Duration::from_millis(2500));
        assert_eq!(refresh_after(1), Duration::from_millis(250));
    }

    #[test]
    fn registers_at_once_then_refreshes_before_the_granted_expiry() {
        let c = Clock(Instant::now());
        let mut r = Registration::new(c.at(0.0), 3600);
        assert_eq!(r.poll_timeout(), Some(c.at(0.0)));
        assert_eq!(r.poll_register(c.at(0.0)), Some(3600));
        // In flight: nothing is due, however late.
        assert_eq!(r.poll_timeout(), None);
        assert_eq!(r.poll_register(c.at(1e6)), None);
        // The registrar grants less than asked: the grant counts.
        assert_eq!(
            r.handle_outcome(c.at(0.2), Outcome::Registered { granted: 600 }),
            300 * S
        );
        assert!(r.is_registered(c.at(599.0)));
        assert!(!r.is_registered(c.at(600.3)));
        assert_eq!(r.poll_timeout(), Some(c.at(300.2)));
        assert_eq!(r.poll_register(c.at(300.1)), None);
        assert_eq!(r.poll_register(c.at(300.2)), Some(3600));
        r.handle_outcome(c.at(300.5), Outcome::Registered { granted: 3600 });
        assert_eq!(r.poll_timeout(), Some(c.at(2100.5)));
    }

    #[test]
    fn failures_back_off_exponentially_up_to_five_minutes_and_success_resets() {
        let c = Clock(Instant::now());
        let mut r = Registration::new(c.at(0.0), 3600);
        let mut t = 0.0;
        let mut delays = Vec::new();
        for _ in 0..10 {
            assert!(r.poll_register(c.at(t)).is_some());
            let d = r.handle_outcome(c.at(t), Outcome::Failed { retry_after: None });
            delays.push(d.as_secs());
            t += d.as_secs_f64();
        }
        assert_eq!(delays, [2, 4, 8, 16, 32, 64, 128, 256, 300, 300]);
        assert!(!r.is_registered(c.at(t)));
        r.poll_register(c.at(t));
        r.handle_outcome(c.at(t), Outcome::Registered { granted: 100 });
        r.poll_register(c.at(t + 50.0));
        assert_eq!(
            r.handle_outcome(c.at(t + 50.0), Outcome::Failed { retry_after: None }),
            2 * S
        );
        // Still registered while the retries run.
        assert!(r.is_registered(c.at(t + 99.0)));
    }

    #[test]
    fn retry_after_is_honoured_and_bounded() {
        let c = Clock(Instant::now());
        let mut r = Registration::new(c.at(0.0), 3600);
        r.poll_register(c.at(0.0));
        assert_eq!(
            r.handle_outcome(
                c.at(0.0),
                Outcome::Failed {
                    retry_after: Some(120)
                }
            ),
            120 * S
        );
        r.poll_register(c.at(120.0));
        assert_eq!(
            r.handle_outcome(
                c.at(120.0),
                Outcome::Failed {
                    retry_after: Some(1_000_000)
                }
            ),
            3600 * S
        );
    }

    #[test]
    fn a_423_raises_the_expiry_and_registers_again_at_once() {
        let c = Clock(Instant::now());
        let mut r = Registration::new(c.at(0.0), 30);
        r.poll_register(c.at(0.0));
        assert_eq!(
            r.handle_outcome(c.at(0.1), Outcome::TooBrief { min_expires: 60 }),
            Duration::ZERO
        );
        assert_eq!(r.poll_register(c.at(0.1)), Some(60));
        // A 423 that asks for no more than stox asked for is a failure, not a loop.
        assert_eq!(
            r.handle_outcome(c.at(0.2), Outcome::TooBrief { min_expires: 60 }),
            2 * S
        );
        assert_eq!(r.poll_register(c.at(2.2)), Some(60));
        r.handle_outcome(c.at(2.2), Outcome::TooBrief { min_expires: 0 });
        assert_eq!(r.expires(), 60);
    }

    #[test]
    fn a_huge_grant_is_capped_not_a_panic() {
        let c = Clock(Instant::now());
        let mut r = Registration::new(c.at(0.0), 3600);
        r.poll_register(c.at(0.0));
        let d = r.handle_outcome(c.at(0.0), Outcome::Registered { granted: u32::MAX });
        assert_eq!(d, refresh_after(GRANTED_MAX));
    }

    #[test]
    fn a_2xx_that_grants_nothing_is_a_failure() {
        let c = Clock(Instant::now());
        let mut r = Registration::new(c.at(0.0), 3600);
        r.poll_register(c.at(0.0));
        assert_eq!(
            r.handle_outcome(c.at(0.0), Outcome::Registered { granted: 0 }),
            2 * S
        );
        assert!(!r.is_registered(c.at(0.0)));
    }

    fn response(text: &str) -> Response {
        match super::super::message::parse(
            text.as_bytes(),
            super::super::message::Framing::Datagram,
            65535,
        )
        .unwrap()
        .message
        {
            rsipstack::sip::SipMessage::Response(r) => r,
            _ => unreachable!(),
        }
    }

    fn binding() -> Binding {
        Binding {
            registrar: "sip:registrar.test".into(),
            aor: "sip:gw@registrar.test".into(),
            contact: "sip:gw@192.0.2.1:5060".into(),
            call_id: "c".into(),
            from_tag: "t".into(),
            cseq: 0,
        }
    }

    const OK: &str = "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKx\r\n\
        From: <sip:gw@registrar.test>;tag=t\r\nTo: <sip:gw@registrar.test>;tag=r\r\n\
        Call-ID: c\r\nCSeq: 3 REGISTER\r\n";

    #[test]
    fn the_granted_expiry_is_our_contacts_then_the_expires_header() {
        let b = binding();
        let r = response(&format!(
            "{OK}Contact: <sip:gw@198.51.100.7:5060>;expires=3600, \
             <sip:GW@192.0.2.1:5060>;expires=120\r\nExpires: 999\r\nContent-Length: 0\r\n\r\n"
        ));
        assert_eq!(b.granted(&r, 3600), 120);
        let r = response(&format!(
            "{OK}Contact: <sip:gw@192.0.2.1:5060>;q=0.5;expires=10\r\nContent-Length: 0\r\n\r\n"
        ));
        assert_eq!(b.granted(&r, 3600), 10);
        let r = response(&format!("{OK}Expires: 90\r\nContent-Length: 0\r\n\r\n"));
        assert_eq!(b.granted(&r, 3600), 90);
        let r = response(&format!("{OK}Content-Length: 0\r\n\r\n"));
        assert_eq!(b.granted(&r, 3600), 3600);
    }

    #[test]
    fn cseq_stays_above_what_the_digest_layer_sent() {
        let mut b = binding();
        let req = b.request(3600).unwrap();
        assert_eq!(req.cseq_header().unwrap().value(), "1 REGISTER");
        assert_eq!(req.header_value("Expires").as_deref(), Some("3600"));
        assert_eq!(
            req.header_value("Contact").as_deref(),
            Some("<sip:gw@192.0.2.1:5060>")
        );
        // Answered after a challenge: CSeq 3 came back.
        b.sent(&Ok(response(&format!("{OK}Content-Length: 0\r\n\r\n"))));
        assert_eq!(
            b.request(3600).unwrap().cseq_header().unwrap().value(),
            "4 REGISTER"
        );
        b.sent(&Err(SipError::Timeout));
        let next = b.request(0).unwrap();
        assert_eq!(next.cseq_header().unwrap().value(), "9 REGISTER");
        assert_eq!(next.header_value("Expires").as_deref(), Some("0"));
        assert_eq!(next.call_id_header().unwrap().value(), "c");
    }

    #[test]
    fn outcomes_are_read_from_responses() {
        let b = binding();
        let r423 = Ok(response(
            "SIP/2.0 423 Interval Too Brief\r\nVia: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKx\r\n\
             From: <sip:gw@registrar.test>;tag=t\r\nTo: <sip:gw@registrar.test>;tag=r\r\n\
             Call-ID: c\r\nCSeq: 3 REGISTER\r\nMin-Expires: 300\r\nContent-Length: 0\r\n\r\n",
        ));
        assert_eq!(
            outcome_of(&b, 60, &r423),
            Outcome::TooBrief { min_expires: 300 }
        );
        let r503 = Ok(response(
            "SIP/2.0 503 Busy\r\nVia: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKx\r\n\
             From: <sip:gw@registrar.test>;tag=t\r\nTo: <sip:gw@registrar.test>;tag=r\r\n\
             Call-ID: c\r\nCSeq: 3 REGISTER\r\nRetry-After: 30 (maintenance)\r\nContent-Length: 0\r\n\r\n",
        ));
        assert_eq!(
            outcome_of(&b, 60, &r503),
            Outcome::Failed {
                retry_after: Some(30)
            }
        );
        assert_eq!(
            outcome_of(&b, 60, &Err(SipError::Timeout)),
            Outcome::Failed { retry_after: None }
        );
    }

    #[test]
    fn lists_split_outside_quotes_and_brackets() {
        assert_eq!(
            split_list("\"a, b\" <sip:x@y;p=1,2>;expires=3, <sip:z@w>"),
            ["\"a, b\" <sip:x@y;p=1,2>;expires=3", "<sip:z@w>"]
        );
        assert_eq!(
            header_param("<sip:x@y;expires=5>;expires=7", "expires"),
            Some(7)
        );
        assert_eq!(header_param("<sip:x@y;expires=5>", "expires"), None);
    }
}
