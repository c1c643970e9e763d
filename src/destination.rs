//! Where stox may send (issue 11, items 4 and 5): a pure check over a resolved address,
//! its port, and who chose it.
//!
//! ```text
//!   (SocketAddr, Chosen, Service) ──▶ Policy::check ──▶ Ok(()) | Err(Refused)
//! ```
//!
//! * `Chosen::Config`: `sip.routes`, `sip.outbound_proxy`, `sip.register.registrar`. The
//!   admin vouches for these; anything goes.
//! * `Chosen::Peer`: in a dialog (a Contact, a Record-Route, an a=path), an address that
//!   SIP came from lately ([`Peers`]). That host already speaks SIP to stox, so its
//!   address class is no reason to refuse; the port rule still applies. An XMPP user's
//!   choice (the host in a JID) is never raised to `Peer`.
//! * `Chosen::Remote`: what a remote party wrote (an IP literal in a JID, a Contact, a
//!   Record-Route, an a=path, a DNS name it made resolve somewhere). Refused when the
//!   address is loopback, link-local, private, unspecified, multicast, broadcast
//!   (unless inside `sip.allowed_destinations`), or the port fails the port rule.
//!
//! The port rule: SIP's own ports (5060, 5061) and MSRP's ephemeral a=path ports are all
//! at or above 1024, while most services a cross-protocol request could abuse by
//! line-oriented parsing (SMTP 25, HTTP 80, POP 110, IMAP 143, ...) sit below 1024; the
//! few well-known ones above it that read lines or commands from a TCP stream (Redis
//! 6379, memcached 11211, the databases, Docker, etcd, ...) are in [`NON_SIP_PORTS`]. A
//! body in a SIP request is the sender's text, so on such a port it would be commands
//! (that is why a UDP request that switches to TCP, RFC 3261 18.1.1, is judged on the same
//! address and port). These ports are reached only through config.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

/// Who picked a destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chosen {
    Config,
    Peer,
    Remote,
}

/// What would be sent there (for the log line only: both share the rules).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    Sip,
    Msrp,
}

/// The lowest port a remote party may pick.
pub const MIN_REMOTE_PORT: u16 = 1024;

/// Well-known TCP services at or above 1024 that take commands line by line (or whose
/// text protocol a SIP body could speak): never a remote party's choice.
pub const NON_SIP_PORTS: &[u16] = &[
    1080,  // SOCKS
    1433,  // MS SQL
    1521,  // Oracle
    2049,  // NFS
    2375,  // Docker API
    2376,  // Docker API (TLS)
    2379,  // etcd
    3128,  // HTTP proxy
    3306,  // MySQL
    5432,  // PostgreSQL
    5984,  // CouchDB
    6379,  // Redis
    6443,  // Kubernetes API
    6667,  // IRC
    8080,  // HTTP
    8443,  // HTTPS
    9200,  // Elasticsearch
    11211, // memcached
    27017, // MongoDB
];

/// Why a destination is not used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("{0} is a {1} address chosen by a remote party (not in sip.allowed_destinations)")]
    Address(IpAddr, &'static str),
    #[error("port {0} is not a SIP port (below {MIN_REMOTE_PORT} or a well-known service) and was chosen by a remote party")]
    Port(u16),
}

/// An address block of `sip.allowed_destinations` (CIDR notation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// `10.0.0.0/8`, `fd00::/8`, or a bare address (a /32 or /128).
    pub fn parse(s: &str) -> Result<Cidr, String> {
        let s = s.trim();
        let (a, p) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = a
            .parse()
            .map_err(|_| "not an IP address or CIDR block, e.g. 127.0.0.0/8".to_string())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match p {
            None => max,
            Some(p) => match p.parse::<u8>() {
                Ok(n) if n <= max => n,
                _ => return Err(format!("the prefix length must be 0..={max}")),
            },
        };
        Ok(Cidr { addr, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, canonical(ip)) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                prefix_eq(&net.octets(), &ip.octets(), self.prefix)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                prefix_eq(&net.octets(), &ip.octets(), self.prefix)
            }
            _ => false,
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

fn prefix_eq(a: &[u8], b: &[u8], bits: u8) -> bool {
    let bits = bits as usize;
    let whole = bits / 8;
    if a[..whole] != b[..whole] {
        return false;
    }
    let rest = bits % 8;
    rest == 0 || {
        let mask = 0xffu8 << (8 - rest);
        a[whole] & mask == b[whole] & mask
    }
}

/// An IPv4-mapped IPv6 address (`::ffff:127.0.0.1`) is judged as the IPv4 one it is.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => ip,
        },
        v4 => v4,
    }
}

/// The class that makes `ip` off limits for a remote party, if any.
pub fn restricted_class(ip: IpAddr) -> Option<&'static str> {
    match canonical(ip) {
        IpAddr::V4(v4) => v4_class(v4),
        IpAddr::V6(v6) => v6_class(v6),
    }
}

fn v4_class(ip: Ipv4Addr) -> Option<&'static str> {
    let o = ip.octets();
    if ip.is_unspecified() || o[0] == 0 {
        Some("unspecified")
    } else if ip.is_loopback() {
        Some("loopback")
    } else if ip.is_link_local() {
        Some("link-local")
    } else if ip.is_private() || (o[0] == 100 && (o[1] & 0xc0) == 64) {
        // RFC 1918, and RFC 6598 shared address space (carrier-grade NAT).
        Some("private")
    } else if ip.is_multicast() {
        Some("multicast")
    } else if ip.is_broadcast() || o[0] >= 240 {
        Some("broadcast or reserved")
    } else {
        None
    }
}

fn v6_class(ip: Ipv6Addr) -> Option<&'static str> {
    let s = ip.segments();
    if ip.is_unspecified() {
        Some("unspecified")
    } else if ip.is_loopback() {
        Some("loopback")
    } else if (s[0] & 0xffc0) == 0xfe80 {
        Some("link-local")
    } else if (s[0] & 0xfe00) == 0xfc00 || (s[0] & 0xffc0) == 0xfec0 {
        // RFC 4193 unique local, and the deprecated site-local block.
        Some("private")
    } else if ip.is_multicast() {
        Some("multicast")
    } else if let Some(v4) = ip.to_ipv4() {
        // IPv4-compatible (::a.b.c.d) and NAT64-less embeddings judged by the IPv4 part.
        if s[..6] == [0; 6] {
            v4_class(v4)
        } else {
            None
        }
    } else {
        None
    }
}

/// `sip.allowed_destinations` and the rules above.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    pub allowed: Vec<Cidr>,
}

impl Policy {
    pub fn new(allowed: Vec<Cidr>) -> Policy {
        Policy { allowed }
    }

    /// Whether stox may send to `to` for `service`, chosen as `chosen`.
    pub fn check(&self, to: SocketAddr, chosen: Chosen, _service: Service) -> Result<(), Refused> {
        if chosen == Chosen::Config {
            return Ok(());
        }
        let ip = to.ip();
        // The port rule holds inside sip.allowed_destinations too: naming a block of SIP
        // servers is not naming every service on them.
        if to.port() < MIN_REMOTE_PORT || NON_SIP_PORTS.contains(&to.port()) {
            return Err(Refused::Port(to.port()));
        }
        if self.allowed.iter().any(|c| c.contains(ip)) {
            return Ok(());
        }
        if chosen == Chosen::Remote {
            if let Some(class) = restricted_class(ip) {
                return Err(Refused::Address(canonical(ip), class));
            }
        }
        Ok(())
    }
}

/// The addresses SIP peers spoke from lately (a request stox took, an answer to a
/// request stox sent): `Chosen::Peer` for what goes back there. Bounded; the oldest entry
/// makes room. A UDP source can be forged, which is why a peer keeps the port rule.
#[derive(Debug, Default)]
pub struct Peers {
    seen: HashMap<IpAddr, Instant>,
}

/// How long an address counts as a peer's after its last message.
pub const PEER_TTL: Duration = Duration::from_secs(3600);
/// Addresses remembered at once.
pub const MAX_PEERS: usize = 4096;

impl Peers {
    pub fn note(&mut self, ip: IpAddr, now: Instant) {
        let ip = canonical(ip);
        if self.seen.len() >= MAX_PEERS && !self.seen.contains_key(&ip) {
            self.seen
                .retain(|_, t| now.saturating_duration_since(*t) < PEER_TTL);
            if self.seen.len() >= MAX_PEERS {
                if let Some(oldest) = self.seen.iter().min_by_key(|(_, t)| **t).map(|(a, _)| *a) {
                    self.seen.remove(&oldest);
                }
            }
        }
        self.seen.insert(ip, now);
    }

    pub fn contains(&self, ip: IpAddr, now: Instant) -> bool {
        self.seen
            .get(&canonical(ip))
            .is_some_and(|t| now.saturating_duration_since(*t) < PEER_TTL)
    }

    /// `chosen`, raised to `Peer` when a remote party chose a peer's own address.
    pub fn vouch(&self, ip: IpAddr, chosen: Chosen, now: Instant) -> Chosen {
        if chosen == Chosen::Remote && self.contains(ip, now) {
            Chosen::Peer
        } else {
            chosen
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn remote_chosen_loopback_private_link_local_and_the_like_are_refused() {
        let p = Policy::default();
        for (addr, class) in [
            ("127.0.0.1:5060", "loopback"),
            ("127.45.6.7:5060", "loopback"),
            ("10.1.2.3:5060", "private"),
            ("172.16.0.1:5060", "private"),
            ("172.31.255.255:5060", "private"),
            ("192.168.1.1:5060", "private"),
            ("100.64.0.1:5060", "private"),
            ("169.254.169.254:5060", "link-local"),
            ("0.0.0.0:5060", "unspecified"),
            ("224.0.0.1:5060", "multicast"),
            ("255.255.255.255:5060", "broadcast or reserved"),
            ("[::1]:5060", "loopback"),
            ("[::]:5060", "unspecified"),
            ("[fe80::1]:5060", "link-local"),
            ("[fd12:3456::1]:5060", "private"),
            ("[ff02::1]:5060", "multicast"),
            ("[::ffff:127.0.0.1]:5060", "loopback"),
            ("[::ffff:10.0.0.1]:5060", "private"),
        ] {
            match p.check(sa(addr), Chosen::Remote, Service::Sip) {
                Err(Refused::Address(_, c)) => assert_eq!(c, class, "{addr}"),
                other => panic!("{addr}: {other:?}"),
            }
        }
    }

    #[test]
    fn public_addresses_on_high_ports_are_fine_for_a_remote_party() {
        let p = Policy::default();
        for addr in [
            "192.0.2.10:5060",
            "198.51.100.1:5061",
            "172.32.0.1:5060",
            "100.128.0.1:1024",
            "[2001:db8::1]:5060",
            "203.0.113.5:49152",
        ] {
            assert_eq!(
                p.check(sa(addr), Chosen::Remote, Service::Sip),
                Ok(()),
                "{addr}"
            );
        }
    }

    #[test]
    fn well_known_ports_are_refused_to_a_remote_party_and_to_a_peer() {
        let p = Policy::default();
        for port in [0u16, 22, 25, 80, 110, 143, 443, 1023, 3306, 6379, 11211] {
            let to = SocketAddr::new("192.0.2.10".parse().unwrap(), port);
            assert_eq!(
                p.check(to, Chosen::Remote, Service::Sip),
                Err(Refused::Port(port))
            );
            assert_eq!(
                p.check(to, Chosen::Peer, Service::Msrp),
                Err(Refused::Port(port))
            );
        }
    }

    #[test]
    fn config_vouches_for_anything() {
        let p = Policy::default();
        for addr in ["127.0.0.1:25", "10.0.0.1:5060", "[::1]:80"] {
            assert_eq!(p.check(sa(addr), Chosen::Config, Service::Sip), Ok(()));
        }
    }

    #[test]
    fn a_peers_own_address_is_fine_on_a_high_port() {
        let p = Policy::default();
        assert_eq!(
            p.check(sa("10.0.0.7:2855"), Chosen::Peer, Service::Msrp),
            Ok(())
        );
        assert_eq!(
            p.check(sa("127.0.0.1:5060"), Chosen::Peer, Service::Sip),
            Ok(())
        );
    }

    #[test]
    fn allowed_destinations_lift_the_address_rule_inside_their_blocks_only() {
        let p = Policy::new(vec![
            Cidr::parse("127.0.0.0/8").unwrap(),
            Cidr::parse("fd00::/8").unwrap(),
            Cidr::parse("192.168.7.9").unwrap(),
        ]);
        for addr in ["127.0.0.1:25", "127.0.0.1:6379", "[fd00::5]:80"] {
            assert!(
                matches!(
                    p.check(sa(addr), Chosen::Remote, Service::Sip),
                    Err(Refused::Port(_))
                ),
                "{addr}"
            );
        }
        for addr in [
            "127.0.0.1:5060",
            "127.9.9.9:5060",
            "[::ffff:127.0.0.1]:5060",
            "[fd00::5]:5060",
            "192.168.7.9:5060",
        ] {
            assert_eq!(
                p.check(sa(addr), Chosen::Remote, Service::Sip),
                Ok(()),
                "{addr}"
            );
        }
        for addr in [
            "192.168.7.8:5060",
            "10.0.0.1:5060",
            "[::1]:5060",
            "[fe80::1]:5060",
        ] {
            assert!(
                p.check(sa(addr), Chosen::Remote, Service::Sip).is_err(),
                "{addr}"
            );
        }
    }

    #[test]
    fn cidr_blocks_parse_and_bad_ones_say_why() {
        assert_eq!(
            Cidr::parse(" 10.0.0.0/8 ").unwrap().to_string(),
            "10.0.0.0/8"
        );
        assert_eq!(Cidr::parse("::1").unwrap().to_string(), "::1/128");
        assert!(Cidr::parse("10.0.0.0/33").unwrap_err().contains("0..=32"));
        assert!(Cidr::parse("fd00::/129").unwrap_err().contains("0..=128"));
        assert!(Cidr::parse("example.net").is_err());
        assert!(Cidr::parse("10.0.0.0/x").is_err());
        assert!(Cidr::parse("").is_err());
        let any = Cidr::parse("0.0.0.0/0").unwrap();
        assert!(any.contains("8.8.8.8".parse().unwrap()));
        assert!(!any.contains("::1".parse().unwrap()));
        let odd = Cidr::parse("172.16.0.0/12").unwrap();
        assert!(odd.contains("172.31.1.1".parse().unwrap()));
        assert!(!odd.contains("172.32.0.1".parse().unwrap()));
    }

    #[test]
    fn a_peer_address_counts_for_a_while_and_the_set_stays_bounded() {
        let t0 = Instant::now();
        let mut peers = Peers::default();
        let ip: IpAddr = "10.0.0.7".parse().unwrap();
        assert_eq!(peers.vouch(ip, Chosen::Remote, t0), Chosen::Remote);
        peers.note("::ffff:10.0.0.7".parse().unwrap(), t0);
        assert_eq!(peers.vouch(ip, Chosen::Remote, t0), Chosen::Peer);
        assert_eq!(peers.vouch(ip, Chosen::Config, t0), Chosen::Config);
        assert!(!peers.contains(ip, t0 + PEER_TTL));
        for i in 0..(MAX_PEERS as u32 + 10) {
            peers.note(
                IpAddr::V4(Ipv4Addr::from(0x0b00_0000 + i)),
                t0 + Duration::from_millis(i as u64 + 1),
            );
        }
        assert_eq!(peers.seen.len(), MAX_PEERS);
        // The oldest went first; the newest is there.
        assert!(!peers.contains(ip, t0 + Duration::from_secs(5)));
        assert!(peers.contains(
            IpAddr::V4(Ipv4Addr::from(0x0b00_0000 + MAX_PEERS as u32 + 9)),
            t0 + Duration::from_secs(5)
        ));
    }
}
