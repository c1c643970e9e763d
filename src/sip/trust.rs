//! Who may talk to stox (issue 11 items 3 and 6; draft-mierla section 8's allow-list).
//!
//! ```text
//!   IncomingRequest (source address, From, Contact, Record-Route)
//!     -> source in sip.trusted_peers?            yes: Pass, never limited
//!     -> per-source token bucket                 empty: 503 + Retry-After
//!     -> From in stox's own sip.domains?         yes: 403 (only a trusted peer speaks for them)
//!     -> SUBSCRIBE whose NOTIFYs would go to another host than the source: 403
//!     -> new SUBSCRIBE: per-watcher-domain bucket empty: 503 + Retry-After
//! ```
//!
//! Sans-IO: `now` is passed in; the maps are bounded so a stranger cannot grow them.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::str::FromStr;
use std::time::{Duration, Instant};

use rsipstack::sip::{Method, Request};

use crate::address::SipAddress;
use crate::sip::dialog::{header_param, header_value, header_values, uri_of};

/// An IP address or a CIDR range (`192.0.2.0/24`, `2001:db8::/32`, `127.0.0.1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    net: IpAddr,
    prefix: u8,
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Cidr, String> {
        let s = s.trim();
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let net: IpAddr = addr
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse()
            .map_err(|_| "not an IP address or CIDR range".to_string())?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => match p.parse::<u8>() {
                Ok(p) if p <= max => p,
                _ => return Err(format!("the prefix length must be 0 to {max}")),
            },
        };
        let cidr = Cidr { net, prefix };
        if cidr.masked(net) != net {
            return Err("has bits set beyond the prefix length".into());
        }
        Ok(cidr)
    }
}

impl Cidr {
    fn masked(&self, ip: IpAddr) -> IpAddr {
        match ip {
            IpAddr::V4(a) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                IpAddr::V4((u32::from(a) & mask).into())
            }
            IpAddr::V6(a) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                IpAddr::V6((u128::from(a) & mask).into())
            }
        }
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        // A v4-mapped IPv6 source (dual-stack socket) is the IPv4 peer it maps.
        let ip = match ip {
            IpAddr::V6(a) => a.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        ip.is_ipv4() == self.net.is_ipv4() && self.masked(ip) == self.net
    }
}

/// Token buckets keyed by `K`, at most `max_keys` of them.
#[derive(Debug)]
pub struct Buckets<K> {
    /// Tokens added per second.
    rate: f64,
    burst: f64,
    max_keys: usize,
    map: HashMap<K, Bucket>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl<K: Hash + Eq + Clone> Buckets<K> {
    pub fn new(rate: u32, burst: u32, max_keys: usize) -> Buckets<K> {
        Buckets {
            rate: f64::from(rate.max(1)),
            burst: f64::from(burst.max(1)),
            max_keys: max_keys.max(2),
            map: HashMap::new(),
        }
    }

    /// Takes one token for `key`; when there is none, the whole seconds until there is.
    pub fn take(&mut self, key: &K, now: Instant) -> Result<(), u32> {
        if !self.map.contains_key(key) && self.map.len() >= self.max_keys {
            self.evict(now);
        }
        let (rate, burst) = (self.rate, self.burst);
        let b = self.map.entry(key.clone()).or_insert(Bucket {
            tokens: burst,
            at: now,
        });
        let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
        b.tokens = (b.tokens + elapsed * rate).min(burst);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            Err(((1.0 - b.tokens) / rate).ceil().max(1.0) as u32)
        }
    }

    /// Forgets the buckets that have filled up again (a new one starts full, so nothing is
    /// lost); if that frees too little, the older half by last use.
    fn evict(&mut self, now: Instant) {
        let (rate, burst) = (self.rate, self.burst);
        let full = Duration::from_secs_f64(burst / rate);
        self.map.retain(|_, b| {
            now.saturating_duration_since(b.at) < full
                && b.tokens + now.saturating_duration_since(b.at).as_secs_f64() * rate < burst
        });
        if self.map.len() >= self.max_keys / 2 {
            let mut ats: Vec<Instant> = self.map.values().map(|b| b.at).collect();
            let mid = ats.len() / 2;
            let (_, cut, _) = ats.select_nth_unstable(mid);
            let cut = *cut;
            self.map.retain(|_, b| b.at > cut);
        }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

/// `sip.trusted_peers` and the limits for everyone else.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustConfig {
    pub trusted_peers: Vec<Cidr>,
    /// stox's own `sip.domains`: only a trusted peer may send requests From them.
    pub own_domains: Vec<String>,
    /// Requests per second (and burst) per untrusted source address; 0 = no limit.
    pub rate: u32,
    pub burst: u32,
    /// New SUBSCRIBEs per second (and burst) per watcher domain from untrusted sources;
    /// 0 = no limit.
    pub subscribe_rate: u32,
    pub subscribe_burst: u32,
}

/// What to do with a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    /// 403 with this reason phrase.
    Forbidden(&'static str),
    /// 503 with Retry-After (seconds).
    Limited(u32),
}

/// Most sources (and watcher domains) remembered at once.
const MAX_KEYS: usize = 16_384;

#[derive(Debug)]
pub struct Trust {
    trusted_peers: Vec<Cidr>,
    own_domains: Vec<String>,
    per_source: Option<Buckets<IpAddr>>,
    per_domain: Option<Buckets<String>>,
}

impl Trust {
    pub fn new(c: &TrustConfig) -> Trust {
        Trust {
            trusted_peers: c.trusted_peers.clone(),
            own_domains: c
                .own_domains
                .iter()
                .map(|d| d.to_ascii_lowercase())
                .collect(),
            per_source: (c.rate > 0).then(|| Buckets::new(c.rate, c.burst, MAX_KEYS)),
            per_domain: (c.subscribe_rate > 0)
                .then(|| Buckets::new(c.subscribe_rate, c.subscribe_burst, MAX_KEYS)),
        }
    }

    pub fn is_trusted(&self, ip: IpAddr) -> bool {
        self.trusted_peers.iter().any(|c| c.contains(ip))
    }

    /// The verdict on `request` from `remote` at `now`.
    pub fn check(&mut self, now: Instant, request: &Request, remote: IpAddr) -> Verdict {
        if self.is_trusted(remote) {
            return Verdict::Pass;
        }
        if let Some(b) = &mut self.per_source {
            if let Err(retry) = b.take(&remote, now) {
                return Verdict::Limited(retry);
            }
        }
        let from_host = header_value(&request.headers, "From")
            .and_then(|f| SipAddress::parse(&uri_of(&f)).ok())
            .map(|a| a.host);
        if let Some(host) = &from_host {
            if self.own_domains.iter().any(|d| d == host) {
                return Verdict::Forbidden("From is a user of this gateway");
            }
        }
        if request.method == Method::Subscribe {
            // RFC 6665 sends NOTIFYs to the dialog's first hop: the top Record-Route, else
            // the Contact. An untrusted source may only name itself, or stox becomes an
            // amplifier aimed at whatever host the SUBSCRIBE names.
            if notify_host(request) != Some(remote) {
                return Verdict::Forbidden("Contact is not the address the request came from");
            }
            let new = header_value(&request.headers, "To")
                .and_then(|t| header_param(&t, "tag"))
                .is_none();
            if let (true, Some(b), Some(host)) = (new, &mut self.per_domain, from_host) {
                if let Err(retry) = b.take(&host, now) {
                    return Verdict::Limited(retry);
                }
            }
        }
        Verdict::Pass
    }
}

/// The IP literal NOTIFYs for this SUBSCRIBE would be sent to; None for a host name (it
/// cannot be checked against the source without DNS) or no Contact.
fn notify_host(request: &Request) -> Option<IpAddr> {
    let first = header_values(&request.headers, "Record-Route")
        .into_iter()
        .next()
        .or_else(|| {
            header_values(&request.headers, "Contact")
                .into_iter()
                .next()
        })?;
    let addr = SipAddress::parse(&uri_of(&first)).ok()?;
    let host = addr.host.trim_start_matches('[').trim_end_matches(']');
    let ip: IpAddr = host.parse().ok()?;
    Some(match ip {
        IpAddr::V6(a) => a.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::message::{parse, Framing};
    use rsipstack::sip::SipMessage;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn cidr_ranges_contain_their_addresses_only() {
        let c: Cidr = "192.0.2.0/24".parse().unwrap();
        assert!(c.contains(ip("192.0.2.77")));
        assert!(!c.contains(ip("192.0.3.1")));
        assert!(c.contains(ip("::ffff:192.0.2.1")), "v4-mapped");
        let one: Cidr = "127.0.0.1".parse().unwrap();
        assert!(one.contains(ip("127.0.0.1")) && !one.contains(ip("127.0.0.2")));
        let v6: Cidr = "2001:db8::/32".parse().unwrap();
        assert!(v6.contains(ip("2001:db8:1::5")) && !v6.contains(ip("2001:db9::1")));
        assert!(!v6.contains(ip("192.0.2.1")));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(ip("203.0.113.9")));
        for bad in [
            "10.0.0.0/33",
            "10.0.0.1/8",
            "example.com",
            "::/129",
            "1.2.3.4/x",
        ] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn a_bucket_gives_its_burst_then_its_rate() {
        let t0 = Instant::now();
        let mut b: Buckets<u8> = Buckets::new(10, 5, 100);
        for _ in 0..5 {
            assert_eq!(b.take(&1, t0), Ok(()));
        }
        assert_eq!(b.take(&1, t0), Err(1));
        assert_eq!(b.take(&2, t0), Ok(()), "another key has its own bucket");
        assert_eq!(b.take(&1, t0 + Duration::from_millis(100)), Ok(()));
        assert!(b.take(&1, t0 + Duration::from_millis(100)).is_err());
    }

    #[test]
    fn the_bucket_map_stays_bounded_however_many_sources_come() {
        let t0 = Instant::now();
        let mut b: Buckets<u32> = Buckets::new(1, 10, 64);
        for i in 0..10_000u32 {
            let _ = b.take(&i, t0 + Duration::from_millis(u64::from(i)));
            assert!(b.len() <= 64);
        }
    }

    fn request(text: &str) -> Request {
        let text = text.replace('\n', "\r\n");
        match parse(text.as_bytes(), Framing::Datagram, 65535)
            .unwrap()
            .message
        {
            SipMessage::Request(r) => r,
            _ => panic!("not a request"),
        }
    }

    fn message_from(from: &str) -> Request {
        request(&format!(
            "MESSAGE sip:juliet@localhost SIP/2.0\n\
             Via: SIP/2.0/UDP 127.0.0.2:5060;branch=z9hG4bK1\n\
             Max-Forwards: 70\n\
             From: <{from}>;tag=a\n\
             To: <sip:juliet@localhost>\n\
             Call-ID: c1\n\
             CSeq: 1 MESSAGE\n\
             Content-Length: 0\n\n"
        ))
    }

    fn subscribe(contact: &str, record_route: Option<&str>, to_tag: bool) -> Request {
        let rr = record_route
            .map(|r| format!("Record-Route: <{r}>\n"))
            .unwrap_or_default();
        let tag = if to_tag { ";tag=x" } else { "" };
        request(&format!(
            "SUBSCRIBE sip:juliet@localhost SIP/2.0\n\
             Via: SIP/2.0/UDP 127.0.0.2:5060;branch=z9hG4bK1\n\
             Max-Forwards: 70\n\
             From: <sip:romeo@sip.test>;tag=a\n\
             To: <sip:juliet@localhost>{tag}\n\
             Call-ID: c1\n\
             CSeq: 1 SUBSCRIBE\n\
             {rr}Contact: <{contact}>\n\
             Event: presence\n\
             Content-Length: 0\n\n"
        ))
    }

    fn trust() -> Trust {
        Trust::new(&TrustConfig {
            trusted_peers: vec!["127.0.0.1".parse().unwrap()],
            own_domains: vec!["localhost".into()],
            rate: 10,
            burst: 3,
            subscribe_rate: 1,
            subscribe_burst: 2,
        })
    }

    #[test]
    fn only_a_trusted_peer_may_speak_for_the_gateways_own_domains() {
        let mut t = trust();
        let now = Instant::now();
        let r = message_from("sip:x@localhost");
        assert_eq!(
            t.check(now, &r, ip("127.0.0.2")),
            Verdict::Forbidden("From is a user of this gateway")
        );
        assert_eq!(t.check(now, &r, ip("127.0.0.1")), Verdict::Pass);
        let r = message_from("sip:romeo@sip.test");
        assert_eq!(t.check(now, &r, ip("127.0.0.2")), Verdict::Pass);
    }

    #[test]
    fn untrusted_sources_are_limited_and_trusted_ones_are_not() {
        let mut t = trust();
        let now = Instant::now();
        let r = message_from("sip:romeo@sip.test");
        for _ in 0..3 {
            assert_eq!(t.check(now, &r, ip("127.0.0.2")), Verdict::Pass);
        }
        assert_eq!(t.check(now, &r, ip("127.0.0.2")), Verdict::Limited(1));
        for _ in 0..100 {
            assert_eq!(t.check(now, &r, ip("127.0.0.1")), Verdict::Pass);
        }
        assert_eq!(t.check(now, &r, ip("127.0.0.3")), Verdict::Pass);
    }

    #[test]
    fn a_subscribe_may_only_ask_for_notifies_to_its_own_source() {
        let mut t = trust();
        let now = Instant::now();
        let elsewhere = subscribe("sip:romeo@127.0.0.9:5060", None, false);
        assert_eq!(
            t.check(now, &elsewhere, ip("127.0.0.2")),
            Verdict::Forbidden("Contact is not the address the request came from")
        );
        assert_eq!(t.check(now, &elsewhere, ip("127.0.0.1")), Verdict::Pass);
        let named = subscribe("sip:romeo@client.sip.test", None, false);
        assert!(matches!(
            t.check(now, &named, ip("127.0.0.2")),
            Verdict::Forbidden(_)
        ));
        // Another port of the same host is still the sender's own.
        let own = subscribe("sip:romeo@127.0.0.2:5099", None, false);
        assert_eq!(t.check(now, &own, ip("127.0.0.2")), Verdict::Pass);
        // With a Record-Route the first hop is the proxy, which must be the source.
        let proxied = subscribe("sip:romeo@127.0.0.9", Some("sip:127.0.0.2;lr"), false);
        assert_eq!(trust().check(now, &proxied, ip("127.0.0.2")), Verdict::Pass);
        let proxied_elsewhere = subscribe("sip:romeo@127.0.0.2", Some("sip:127.0.0.9;lr"), false);
        assert!(matches!(
            trust().check(now, &proxied_elsewhere, ip("127.0.0.2")),
            Verdict::Forbidden(_)
        ));
    }

    #[test]
    fn new_subscriptions_per_watcher_domain_are_limited_refreshes_are_not() {
        let mut t = trust();
        let now = Instant::now();
        let fresh = subscribe("sip:romeo@127.0.0.2", None, false);
        assert_eq!(t.check(now, &fresh, ip("127.0.0.2")), Verdict::Pass);
        let fresh3 = subscribe("sip:romeo@127.0.0.3", None, false);
        assert_eq!(t.check(now, &fresh3, ip("127.0.0.3")), Verdict::Pass);
        let fresh4 = subscribe("sip:romeo@127.0.0.4", None, false);
        assert_eq!(
            t.check(now, &fresh4, ip("127.0.0.4")),
            Verdict::Limited(1),
            "a third new subscription from sip.test in the same instant"
        );
        let refresh = subscribe("sip:romeo@127.0.0.4", None, true);
        assert_eq!(t.check(now, &refresh, ip("127.0.0.4")), Verdict::Pass);
    }
}
