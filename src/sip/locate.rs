//! RFC 3263 server location: which transport, address and port a request goes to.
//!
//! Given the next hop's URI as a [`Destination`], RFC 3263 section 4 picks the targets:
//!
//! 1. The host is an IP literal (`192.0.2.1`, `[2001:db8::1]`): the transport is the URI's
//!    `transport` parameter, else UDP (TLS for `sips:`); the port is the URI's, else the
//!    transport's default. No DNS.
//! 2. The host is a name with an explicit port: A/AAAA lookups only, transport as in 1.
//! 3. A `transport` parameter but no port: SRV for that transport (`_sip._udp`,
//!    `_sip._tcp`, `_sips._tcp`), else A/AAAA at the default port.
//! 4. Otherwise NAPTR on the domain: records with flag `s` and service `SIP+D2U`,
//!    `SIP+D2T` or `SIPS+D2T` (only `SIPS+D2T` for `sips:`) whose transport we support,
//!    ordered by order then preference, each replacement looked up as SRV (section 4.1).
//! 5. No usable NAPTR: SRV for each transport we support (only `_sips._tcp` for `sips:`).
//! 6. No SRV records at all: A/AAAA at the default port, over UDP (TCP if we have no UDP,
//!    TLS for `sips:`) (section 4.2).
//!
//! SRV records are ordered by priority and, within a priority, by the weighted random
//! selection of RFC 2782; every SRV target expands to all its addresses (A before AAAA),
//! and the caller tries the resulting [`Target`]s in turn (failover, section 4.3).
//!
//! The selection is pure functions over plain records ([`NaptrRecord`], [`SrvRecord`]) with
//! the randomness injected, and the procedure itself runs against a small private `Dns`
//! trait, so both are unit-tested against fixed answers; [`Locator`] plugs hickory-resolver
//! (with its TTL cache) into it.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;
use std::time::Duration;

use futures::future::{join, join_all};
use hickory_resolver::config::{
    ConnectionConfig, LookupIpStrategy, NameServerConfig, ResolverConfig, ResolverOpts,
};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::{Name, RData, RecordType};
use hickory_resolver::TokioResolver;
use rand::{Rng, SeedableRng};

/// One DNS query attempt; hickory's own per-request timeout (resolv.conf may ask for more).
const QUERY_TIMEOUT: Duration = Duration::from_secs(2);
/// Hard bound on one lookup (retries across name servers included), whatever hickory does.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(3);
/// Hard bound on a whole [`Locator::locate`]. Lookups run in rounds (NAPTR with the
/// fallback SRV, SRV of the NAPTR replacements, addresses; a fallback adds one more), each
/// bounded by [`LOOKUP_TIMEOUT`]; a dead name server costs two rounds, and whatever DNS
/// does, a message is not held longer than this.
const LOCATE_TIMEOUT: Duration = Duration::from_secs(8);
/// NAPTR records considered per domain: a hostile zone cannot make us query without end.
const MAX_NAPTR: usize = 16;
/// SRV records considered per owner name; also keeps RFC 2782 weight sums far from u32::MAX.
const MAX_SRV: usize = 32;
/// Distinct SRV target names resolved to addresses per `locate`.
const MAX_SRV_HOSTS: usize = 16;
/// Targets handed back: beyond this, failover would take longer than anyone waits anyway.
const MAX_TARGETS: usize = 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    Udp,
    Tcp,
    Tls,
}

impl Transport {
    pub fn default_port(self) -> u16 {
        match self {
            Transport::Tls => 5061,
            _ => 5060,
        }
    }

    pub fn is_reliable(self) -> bool {
        !matches!(self, Transport::Udp)
    }

    pub fn via_name(self) -> &'static str {
        match self {
            Transport::Udp => "UDP",
            Transport::Tcp => "TCP",
            Transport::Tls => "TLS",
        }
    }

    /// The URI `transport` parameter (case-insensitive).
    pub fn from_param(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "udp" => Some(Transport::Udp),
            "tcp" => Some(Transport::Tcp),
            "tls" => Some(Transport::Tls),
            _ => None,
        }
    }

    /// The SRV service and protocol labels (RFC 3263 section 4.1): TLS is `_sips._tcp`.
    pub fn srv_prefix(self) -> &'static str {
        match self {
            Transport::Udp => "_sip._udp",
            Transport::Tcp => "_sip._tcp",
            Transport::Tls => "_sips._tcp",
        }
    }

    /// The NAPTR service field of RFC 3263 section 4.1 (case-insensitive, RFC 3403).
    pub fn from_naptr_service(s: &str) -> Option<Self> {
        match s.to_ascii_uppercase().as_str() {
            "SIP+D2U" => Some(Transport::Udp),
            "SIP+D2T" => Some(Transport::Tcp),
            "SIPS+D2T" => Some(Transport::Tls),
            _ => None,
        }
    }
}

/// One place to send a request: the caller tries [`Locator::locate`]'s targets in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub transport: Transport,
    pub addr: SocketAddr,
    /// The host of the URI, not the SRV target: RFC 5922 section 4 has TLS check the
    /// certificate against the domain the user asked for.
    pub server_name: String,
}

/// What RFC 3263 needs of a SIP URI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    /// A domain name or an IP literal (IPv6 with or without brackets).
    pub host: String,
    pub port: Option<u16>,
    pub transport: Option<Transport>,
    /// A `sips:` URI: only TLS may be used.
    pub secure: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum LocateError {
    /// DNS answered, and nothing in the answers is a target.
    #[error("no records for {host}")]
    NoRecords { host: String },
    /// Every lookup failed (timeouts, SERVFAIL, unreachable name servers): DNS could not
    /// say whether the host exists.
    #[error("DNS lookups for {host} failed: {reason}")]
    Dns { host: String, reason: String },
    #[error("DNS lookups for {host} took longer than {}s", LOCATE_TIMEOUT.as_secs())]
    Timeout { host: String },
    #[error("{host:?} is not a valid host name")]
    InvalidHost { host: String },
    /// RFC 3261 section 26.2.2: a `sips:` URI is never sent unencrypted.
    #[error("sips: URI for {host} with transport=udp")]
    InsecureTransport { host: String },
    #[error("cannot set up the DNS resolver: {reason}")]
    Resolver { reason: String },
}

/// A NAPTR record (RFC 3403), with the name fields as text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NaptrRecord {
    pub order: u16,
    pub preference: u16,
    pub flags: String,
    pub services: String,
    pub regexp: String,
    /// A domain name; `.` (or empty) means none.
    pub replacement: String,
}

/// An SRV record (RFC 2782).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SrvRecord {
    pub priority: u16,
    pub weight: u16,
    pub port: u16,
    /// A domain name; `.` means the service is decidedly not offered.
    pub target: String,
}

/// The NAPTR step of RFC 3263 section 4.1: the (transport, SRV name) pairs to try, best
/// first. Keeps terminal (`s`) records for the SIP services whose transport is in
/// `supported`; for `sips:` only `SIPS+D2T`. Regexp rewriting is not used by SIP
/// (RFC 3263 requires the replacement field), so records without a replacement are dropped.
pub fn select_naptr(
    records: &[NaptrRecord],
    supported: &[Transport],
    secure: bool,
) -> Vec<(Transport, String)> {
    let mut usable: Vec<(u16, u16, Transport, String)> = records
        .iter()
        .take(MAX_NAPTR)
        .filter_map(|r| {
            if !r.flags.trim().eq_ignore_ascii_case("s") {
                return None;
            }
            let transport = Transport::from_naptr_service(r.services.trim())?;
            if (secure && transport != Transport::Tls) || !supported.contains(&transport) {
                return None;
            }
            let replacement = normalize_name(&r.replacement);
            if is_root(&replacement) {
                return None;
            }
            Some((r.order, r.preference, transport, replacement))
        })
        .collect();
    // Stable: records equal in order and preference keep the order DNS gave them.
    usable.sort_by_key(|u| (u.0, u.1));
    let mut seen = HashSet::new();
    usable
        .into_iter()
        .map(|(_, _, t, name)| (t, name))
        .filter(|pair| seen.insert(pair.clone()))
        .collect()
}

/// RFC 2782 ordering of one SRV RRset: priority ascending, and within a priority the
/// weighted random selection (weight-0 records first in the running sum, so they are
/// picked only when the random number is 0 or nothing else is left). Records whose target
/// is `.` are dropped. `rng(max)` must return a uniform value in `0..=max`; values out of
/// range are clamped rather than trusted.
///
/// The RFC draws from `0..=sum`; with no weight-0 record left to absorb the draw 0, that
/// would give the first record an extra `1/(sum+1)` share, so then the draw is `1..=sum`
/// and every record's share is exactly its weight over the sum.
pub fn order_srv(records: &[SrvRecord], mut rng: impl FnMut(u32) -> u32) -> Vec<SrvRecord> {
    let mut live: Vec<&SrvRecord> = records
        .iter()
        .filter(|r| !is_root(&r.target))
        .take(MAX_SRV)
        .collect();
    live.sort_by_key(|r| r.priority);
    let mut out = Vec::with_capacity(live.len());
    for group in live.chunk_by(|a, b| a.priority == b.priority) {
        let mut pending: Vec<&SrvRecord> =
            group.iter().copied().filter(|r| r.weight == 0).collect();
        pending.extend(group.iter().copied().filter(|r| r.weight != 0));
        while !pending.is_empty() {
            let total: u32 = pending.iter().map(|r| u32::from(r.weight)).sum();
            let pick = if total == 0 || pending[0].weight == 0 {
                rng(total).min(total)
            } else {
                1 + rng(total - 1).min(total - 1)
            };
            let mut running = 0u32;
            let index = pending
                .iter()
                .position(|r| {
                    running += u32::from(r.weight);
                    running >= pick
                })
                .unwrap_or(0);
            out.push(pending.remove(index).clone());
        }
    }
    out
}

/// The transports to query SRV for when NAPTR gave nothing (RFC 3263 section 4.1): for
/// `sips:` only TLS; otherwise UDP then TCP, those we support.
pub fn srv_transports(supported: &[Transport], secure: bool) -> Vec<Transport> {
    if secure {
        return vec![Transport::Tls];
    }
    [Transport::Udp, Transport::Tcp]
        .into_iter()
        .filter(|t| supported.contains(t))
        .collect()
}

/// The transport when neither the URI nor DNS names one (RFC 3263 sections 4.1, 4.2):
/// TLS for `sips:`, else UDP, else whatever we have (TCP first).
pub fn default_transport(supported: &[Transport], secure: bool) -> Transport {
    if secure {
        Transport::Tls
    } else if supported.is_empty() || supported.contains(&Transport::Udp) {
        Transport::Udp
    } else if supported.contains(&Transport::Tcp) {
        Transport::Tcp
    } else {
        Transport::Tls
    }
}

/// The transport a URI's own `transport` parameter asks for: for `sips:` TCP means TLS
/// (RFC 3261 section 26.2.2) and UDP is refused.
fn explicit_transport(dest: &Destination) -> Result<Option<Transport>, LocateError> {
    match (dest.transport, dest.secure) {
        (Some(Transport::Udp), true) => Err(LocateError::InsecureTransport {
            host: dest.host.clone(),
        }),
        (Some(_), true) => Ok(Some(Transport::Tls)),
        (t, _) => Ok(t),
    }
}

/// An IP literal as a SIP URI writes it: `192.0.2.1`, `[2001:db8::1]` (or unbracketed).
pub fn ip_literal(host: &str) -> Option<IpAddr> {
    let host = host.trim();
    if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return Ipv6Addr::from_str(inner).ok().map(IpAddr::V6);
    }
    if let Ok(v4) = Ipv4Addr::from_str(host) {
        return Some(IpAddr::V4(v4));
    }
    Ipv6Addr::from_str(host).ok().map(IpAddr::V6)
}

/// Lower case, no trailing dot (`.` itself stays `.`): names compare and deduplicate as text.
fn normalize_name(name: &str) -> String {
    let name = name.trim();
    if name.is_empty() || name == "." {
        return ".".to_string();
    }
    name.trim_end_matches('.').to_ascii_lowercase()
}

fn is_root(name: &str) -> bool {
    let name = name.trim();
    name.is_empty() || name == "."
}

/// A plausible DNS name (RFC 1035 lengths; `_` for SRV owners; non-ASCII for IDN), checked
/// before any lookup so a broken URI host is reported as such.
fn valid_domain(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || !c.is_ascii())
        })
}

/// A lookup's outcome: `Ok(vec![])` is NXDOMAIN or no data (a real answer, not an error),
/// `Err` is a lookup that got no answer (timeout, SERVFAIL, unreachable server, ...).
type Answer<T> = Result<Vec<T>, String>;

/// The DNS the procedure needs; hickory in [`Locator`], fixed answers in the tests.
trait Dns {
    async fn naptr(&self, name: &str) -> Answer<NaptrRecord>;
    async fn srv(&self, name: &str) -> Answer<SrvRecord>;
    /// A and AAAA, A first.
    async fn ips(&self, name: &str) -> Answer<IpAddr>;
}

/// Tracks whether DNS ever answered, to tell "no such host" from "DNS is down".
#[derive(Default)]
struct Outcome {
    answered: bool,
    last_failure: Option<String>,
}

impl Outcome {
    fn note<T>(&mut self, answer: Answer<T>) -> Vec<T> {
        match answer {
            Ok(v) => {
                self.answered = true;
                v
            }
            Err(e) => {
                self.last_failure = Some(e);
                Vec::new()
            }
        }
    }
}

/// Appends `target` unless an equal (transport, address) is already there.
fn push_target(out: &mut Vec<Target>, target: Target) {
    if out.len() < MAX_TARGETS
        && !out
            .iter()
            .any(|t| t.transport == target.transport && t.addr == target.addr)
    {
        out.push(target);
    }
}

/// The whole of RFC 3263 section 4 over `dns`. See the module documentation.
async fn resolve<D: Dns>(
    dns: &D,
    dest: &Destination,
    supported: &[Transport],
    rng: &mut impl FnMut(u32) -> u32,
) -> Result<Vec<Target>, LocateError> {
    let explicit = explicit_transport(dest)?;
    if let Some(ip) = ip_literal(&dest.host) {
        let transport = explicit.unwrap_or_else(|| default_transport(supported, dest.secure));
        let port = dest.port.unwrap_or(transport.default_port());
        return Ok(vec![Target {
            transport,
            addr: SocketAddr::new(ip, port),
            server_name: ip.to_string(),
        }]);
    }
    let domain = normalize_name(&dest.host);
    if !valid_domain(&domain) {
        return Err(LocateError::InvalidHost {
            host: dest.host.clone(),
        });
    }
    let mut outcome = Outcome::default();
    let mut targets = Vec::new();

    if let Some(port) = dest.port {
        let transport = explicit.unwrap_or_else(|| default_transport(supported, dest.secure));
        address_targets(dns, &domain, transport, port, &mut outcome, &mut targets).await;
    } else if let Some(transport) = explicit {
        let queries = [(transport, format!("{}.{domain}", transport.srv_prefix()))];
        let answers = srv_answers(dns, &queries).await;
        let found = srv_targets(
            dns,
            &queries,
            answers,
            &domain,
            rng,
            &mut outcome,
            &mut targets,
        )
        .await;
        if !found {
            let port = transport.default_port();
            address_targets(dns, &domain, transport, port, &mut outcome, &mut targets).await;
        }
    } else {
        // Section 4.1 asks SRV only when NAPTR gives nothing usable, but both are asked at
        // once: the SRV answers are used only in that case, so the selection is the same,
        // and a slow or dead name server costs one timeout instead of two.
        let queries: Vec<(Transport, String)> = srv_transports(supported, dest.secure)
            .into_iter()
            .map(|t| (t, format!("{}.{domain}", t.srv_prefix())))
            .collect();
        let (naptr, fallback) = join(dns.naptr(&domain), srv_answers(dns, &queries)).await;
        let chosen = select_naptr(&outcome.note(naptr), supported, dest.secure);
        if !chosen.is_empty() {
            let answers = srv_answers(dns, &chosen).await;
            srv_targets(
                dns,
                &chosen,
                answers,
                &domain,
                rng,
                &mut outcome,
                &mut targets,
            )
            .await;
        }
        if targets.is_empty() {
            let found = srv_targets(
                dns,
                &queries,
                fallback,
                &domain,
                rng,
                &mut outcome,
                &mut targets,
            )
            .await;
            if !found {
                let transport = default_transport(supported, dest.secure);
                let port = transport.default_port();
                address_targets(dns, &domain, transport, port, &mut outcome, &mut targets).await;
            }
        }
    }

    if !targets.is_empty() {
        return Ok(targets);
    }
    match outcome.last_failure {
        Some(reason) if !outcome.answered => Err(LocateError::Dns {
            host: dest.host.clone(),
            reason,
        }),
        _ => Err(LocateError::NoRecords {
            host: dest.host.clone(),
        }),
    }
}

/// The SRV RRsets of the names in `queries`, looked up concurrently.
async fn srv_answers<D: Dns>(dns: &D, queries: &[(Transport, String)]) -> Vec<Answer<SrvRecord>> {
    join_all(queries.iter().map(|(_, name)| dns.srv(name))).await
}

/// Orders each SRV RRset in `answers` (one per query), resolves the targets and appends
/// them in order. Returns whether any SRV record existed at all, even a `.` one: only then
/// is the A/AAAA fallback of section 4.2 ruled out.
async fn srv_targets<D: Dns>(
    dns: &D,
    queries: &[(Transport, String)],
    answers: Vec<Answer<SrvRecord>>,
    server_name: &str,
    rng: &mut impl FnMut(u32) -> u32,
    outcome: &mut Outcome,
    out: &mut Vec<Target>,
) -> bool {
    let mut found = false;
    let mut ordered: Vec<(Transport, SrvRecord)> = Vec::new();
    for ((transport, _), answer) in queries.iter().zip(answers) {
        let records = outcome.note(answer);
        found |= !records.is_empty();
        for record in order_srv(&records, &mut *rng) {
            ordered.push((*transport, record));
        }
    }
    let mut hosts: Vec<String> = Vec::new();
    for (_, r) in &ordered {
        let host = normalize_name(&r.target);
        if !hosts.contains(&host) && hosts.len() < MAX_SRV_HOSTS {
            hosts.push(host);
        }
    }
    let addresses = join_all(hosts.iter().map(|h| host_addresses(dns, h))).await;
    let addresses: Vec<Vec<IpAddr>> = addresses.into_iter().map(|a| outcome.note(a)).collect();
    for (transport, record) in ordered {
        let host = normalize_name(&record.target);
        let Some(index) = hosts.iter().position(|h| *h == host) else {
            continue;
        };
        for ip in &addresses[index] {
            push_target(
                out,
                Target {
                    transport,
                    addr: SocketAddr::new(*ip, record.port),
                    server_name: server_name.to_string(),
                },
            );
        }
    }
    found
}

/// The addresses of an SRV target: an IP literal needs no lookup (RFC 2782 forbids it, but
/// it costs nothing to accept), a malformed name has none.
async fn host_addresses<D: Dns>(dns: &D, host: &str) -> Answer<IpAddr> {
    if let Some(ip) = ip_literal(host) {
        return Ok(vec![ip]);
    }
    if !valid_domain(host) {
        return Ok(Vec::new());
    }
    dns.ips(host).await
}

/// Section 4.2 without SRV: every address of `host` at `port`.
async fn address_targets<D: Dns>(
    dns: &D,
    host: &str,
    transport: Transport,
    port: u16,
    outcome: &mut Outcome,
    out: &mut Vec<Target>,
) {
    for ip in outcome.note(dns.ips(host).await) {
        push_target(
            out,
            Target {
                transport,
                addr: SocketAddr::new(ip, port),
                server_name: host.to_string(),
            },
        );
    }
}

/// RFC 3263 location over hickory-resolver. Its cache honours TTLs, so repeated lookups
/// for one domain cost nothing until the records expire.
#[derive(Debug)]
pub struct Locator {
    dns: HickoryDns,
    supported: Vec<Transport>,
}

impl Locator {
    /// `nameservers` are IP:port pairs, each asked over UDP and TCP; empty means the system
    /// configuration (/etc/resolv.conf), or the local name server on 127.0.0.1 and ::1 port
    /// 53 if that is unusable (what the C resolver does without a `nameserver` line).
    /// `supported` are the transports we can send over.
    pub fn new(nameservers: &[SocketAddr], supported: &[Transport]) -> Result<Self, LocateError> {
        let (config, opts) = resolver_config(nameservers, || {
            hickory_resolver::system_conf::read_system_conf().map_err(|e| e.to_string())
        });
        let resolver = TokioResolver::builder_with_config(config, TokioRuntimeProvider::default())
            .with_options(opts)
            .build()
            .map_err(|e| LocateError::Resolver {
                reason: e.to_string(),
            })?;
        Ok(Locator {
            dns: HickoryDns { resolver },
            supported: supported.to_vec(),
        })
    }

    /// The transports this locator picks among.
    pub fn supported(&self) -> &[Transport] {
        &self.supported
    }

    /// Every target for `dest`, in the order to try them (RFC 3263 section 4.3). Takes at
    /// most a few seconds, whatever the name servers do.
    pub async fn locate(&self, dest: &Destination) -> Result<Vec<Target>, LocateError> {
        // An IP literal (a static route, a Contact) asks no DNS: no timer, no RNG.
        if ip_literal(&dest.host).is_some() {
            return resolve(&self.dns, dest, &self.supported, &mut |_| 0).await;
        }
        let mut random = rand::rngs::StdRng::from_rng(&mut rand::rng());
        let mut rng = move |max: u32| random.random_range(0..=max);
        let work = resolve(&self.dns, dest, &self.supported, &mut rng);
        match tokio::time::timeout(LOCATE_TIMEOUT, work).await {
            Ok(result) => {
                if let Ok(targets) = &result {
                    tracing::debug!(host = %dest.host, ?targets, "Located.");
                }
                result
            }
            Err(_) => Err(LocateError::Timeout {
                host: dest.host.clone(),
            }),
        }
    }
}

/// The resolver configuration: the given name servers, else the system's, else loopback;
/// always with short timeouts and A before AAAA (an IPv4 listener is the common case, and
/// failover reaches the AAAA targets anyway).
fn resolver_config(
    nameservers: &[SocketAddr],
    system: impl FnOnce() -> Result<(ResolverConfig, ResolverOpts), String>,
) -> (ResolverConfig, ResolverOpts) {
    let (config, mut opts) = if nameservers.is_empty() {
        match system() {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "No usable system DNS configuration; asking 127.0.0.1 and ::1 port 53.");
                let local = [
                    SocketAddr::from((Ipv4Addr::LOCALHOST, 53)),
                    SocketAddr::from((Ipv6Addr::LOCALHOST, 53)),
                ];
                (custom_config(&local), ResolverOpts::default())
            }
        }
    } else {
        (custom_config(nameservers), ResolverOpts::default())
    };
    opts.timeout = opts.timeout.min(QUERY_TIMEOUT);
    opts.attempts = opts.attempts.min(1);
    opts.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
    (config, opts)
}

fn custom_config(nameservers: &[SocketAddr]) -> ResolverConfig {
    let servers = nameservers
        .iter()
        .map(|addr| {
            let mut udp = ConnectionConfig::udp();
            udp.port = addr.port();
            let mut tcp = ConnectionConfig::tcp();
            tcp.port = addr.port();
            NameServerConfig::new(addr.ip(), true, vec![udp, tcp])
        })
        .collect();
    ResolverConfig::from_name_servers(servers)
}

#[derive(Debug)]
struct HickoryDns {
    resolver: TokioResolver,
}

impl HickoryDns {
    /// One bounded lookup; "no records" (NXDOMAIN or NODATA) is an empty answer.
    async fn lookup(&self, name: &str, record_type: RecordType) -> Answer<RData> {
        let name = fqdn(name)?;
        match tokio::time::timeout(LOOKUP_TIMEOUT, self.resolver.lookup(name, record_type)).await {
            Err(_) => Err(format!("{record_type} lookup timed out")),
            Ok(Ok(lookup)) => Ok(lookup.answers().iter().map(|r| r.data.clone()).collect()),
            Ok(Err(e)) if e.is_no_records_found() => Ok(Vec::new()),
            Ok(Err(e)) => Err(format!("{record_type} lookup: {e}")),
        }
    }
}

/// A fully qualified name, so no search domain is ever appended.
fn fqdn(name: &str) -> Result<Name, String> {
    let mut name = Name::from_utf8(name).map_err(|e| format!("{name:?}: {e}"))?;
    name.set_fqdn(true);
    Ok(name)
}

fn name_text(name: &Name) -> String {
    if name.is_root() {
        ".".to_string()
    } else {
        normalize_name(&name.to_ascii())
    }
}

impl Dns for HickoryDns {
    async fn naptr(&self, name: &str) -> Answer<NaptrRecord> {
        let data = self.lookup(name, RecordType::NAPTR).await?;
        Ok(data
            .into_iter()
            .filter_map(|d| match d {
                RData::NAPTR(n) => Some(NaptrRecord {
                    order: n.order,
                    preference: n.preference,
                    flags: String::from_utf8_lossy(&n.flags).into_owned(),
                    services: String::from_utf8_lossy(&n.services).into_owned(),
                    regexp: String::from_utf8_lossy(&n.regexp).into_owned(),
                    replacement: name_text(&n.replacement),
                }),
                _ => None,
            })
            .collect())
    }

    async fn srv(&self, name: &str) -> Answer<SrvRecord> {
        let data = self.lookup(name, RecordType::SRV).await?;
        Ok(data
            .into_iter()
            .filter_map(|d| match d {
                RData::SRV(s) => Some(SrvRecord {
                    priority: s.priority,
                    weight: s.weight,
                    port: s.port,
                    target: name_text(&s.target),
                }),
                _ => None,
            })
            .collect())
    }

    async fn ips(&self, name: &str) -> Answer<IpAddr> {
        let name = fqdn(name)?;
        match tokio::time::timeout(LOOKUP_TIMEOUT, self.resolver.lookup_ip(name)).await {
            Err(_) => Err("A/AAAA lookup timed out".to_string()),
            Ok(Ok(lookup)) => Ok(lookup.iter().collect()),
            Ok(Err(e)) if e.is_no_records_found() => Ok(Vec::new()),
            Ok(Err(e)) => Err(format!("A/AAAA lookup: {e}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::sync::Mutex;

    use Transport::{Tcp, Tls, Udp};

    /// splitmix64: a seeded `rng(max)` returning `0..=max`.
    fn seeded(seed: u64) -> impl FnMut(u32) -> u32 {
        let mut state = seed;
        move |max| {
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^= z >> 31;
            (z % (u64::from(max) + 1)) as u32
        }
    }

    fn naptr(order: u16, pref: u16, flags: &str, services: &str, repl: &str) -> NaptrRecord {
        NaptrRecord {
            order,
            preference: pref,
            flags: flags.into(),
            services: services.into(),
            regexp: String::new(),
            replacement: repl.into(),
        }
    }

    fn srv(priority: u16, weight: u16, port: u16, target: &str) -> SrvRecord {
        SrvRecord {
            priority,
            weight,
            port,
            target: target.into(),
        }
    }

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn dest(host: &str) -> Destination {
        Destination {
            host: host.into(),
            port: None,
            transport: None,
            secure: false,
        }
    }

    /// Fixed answers; a name not listed is NXDOMAIN. Records every query.
    #[derive(Default)]
    struct FakeDns {
        naptr: HashMap<String, Answer<NaptrRecord>>,
        srv: HashMap<String, Answer<SrvRecord>>,
        ips: HashMap<String, Answer<IpAddr>>,
        queries: Mutex<Vec<String>>,
    }

    impl FakeDns {
        fn naptr(mut self, name: &str, records: Vec<NaptrRecord>) -> Self {
            self.naptr.insert(name.into(), Ok(records));
            self
        }
        fn srv(mut self, name: &str, records: Vec<SrvRecord>) -> Self {
            self.srv.insert(name.into(), Ok(records));
            self
        }
        fn host(mut self, name: &str, ips: &[&str]) -> Self {
            let ips = ips.iter().map(|s| s.parse().unwrap()).collect();
            self.ips.insert(name.into(), Ok(ips));
            self
        }
        fn queried(&self) -> Vec<String> {
            self.queries.lock().unwrap().clone()
        }
        fn log(&self, q: String) {
            self.queries.lock().unwrap().push(q);
        }
    }

    impl Dns for FakeDns {
        async fn naptr(&self, name: &str) -> Answer<NaptrRecord> {
            self.log(format!("NAPTR {name}"));
            self.naptr.get(name).cloned().unwrap_or(Ok(Vec::new()))
        }
        async fn srv(&self, name: &str) -> Answer<SrvRecord> {
            self.log(format!("SRV {name}"));
            self.srv.get(name).cloned().unwrap_or(Ok(Vec::new()))
        }
        async fn ips(&self, name: &str) -> Answer<IpAddr> {
            self.log(format!("A {name}"));
            self.ips.get(name).cloned().unwrap_or(Ok(Vec::new()))
        }
    }

    async fn run(
        dns: &FakeDns,
        d: &Destination,
        supported: &[Transport],
    ) -> Result<Vec<(Transport, SocketAddr)>, LocateError> {
        resolve(dns, d, supported, &mut seeded(7))
            .await
            .map(|ts| ts.into_iter().map(|t| (t.transport, t.addr)).collect())
    }

    // ----- pure selection -----

    #[test]
    fn naptr_sorted_by_order_then_preference() {
        let records = vec![
            naptr(20, 10, "s", "SIP+D2U", "_sip._udp.example.com"),
            naptr(10, 50, "s", "SIP+D2T", "_sip._tcp.b.example.com"),
            naptr(10, 20, "S", "sip+d2t", "_sip._tcp.a.example.com."),
        ];
        assert_eq!(
            select_naptr(&records, &[Udp, Tcp], false),
            vec![
                (Tcp, "_sip._tcp.a.example.com".to_string()),
                (Tcp, "_sip._tcp.b.example.com".to_string()),
                (Udp, "_sip._udp.example.com".to_string()),
            ]
        );
    }

    #[test]
    fn naptr_filters_supported_flags_and_services() {
        let records = vec![
            naptr(1, 1, "s", "SIPS+D2T", "_sips._tcp.example.com"),
            naptr(2, 1, "u", "SIP+D2U", "_sip._udp.example.com"),
            naptr(3, 1, "s", "SIP+D2S", "_sip._sctp.example.com"),
            naptr(4, 1, "s", "E2U+sip", "_sip._udp.example.com"),
            naptr(5, 1, "s", "SIP+D2U", "."),
            naptr(6, 1, "s", "SIP+D2U", "_sip._udp.example.com"),
            naptr(7, 1, "s", "SIP+D2T", "_sip._tcp.example.com"),
        ];
        assert_eq!(
            select_naptr(&records, &[Udp], false),
            vec![(Udp, "_sip._udp.example.com".to_string())]
        );
        assert_eq!(
            select_naptr(&records, &[Udp, Tcp, Tls], false),
            vec![
                (Tls, "_sips._tcp.example.com".to_string()),
                (Udp, "_sip._udp.example.com".to_string()),
                (Tcp, "_sip._tcp.example.com".to_string()),
            ]
        );
    }

    #[test]
    fn naptr_secure_keeps_only_sips() {
        let records = vec![
            naptr(1, 1, "s", "SIP+D2U", "_sip._udp.example.com"),
            naptr(2, 1, "s", "SIPS+D2T", "_sips._tcp.example.com"),
        ];
        assert_eq!(
            select_naptr(&records, &[Udp, Tcp, Tls], true),
            vec![(Tls, "_sips._tcp.example.com".to_string())]
        );
        assert!(select_naptr(&records, &[Udp, Tcp], true).is_empty());
    }

    #[test]
    fn srv_priority_ascending() {
        let records = vec![
            srv(20, 0, 3, "c.example.com"),
            srv(10, 0, 1, "a.example.com"),
            srv(15, 0, 2, "b.example.com"),
        ];
        let ports: Vec<u16> = order_srv(&records, seeded(1))
            .iter()
            .map(|r| r.port)
            .collect();
        assert_eq!(ports, vec![1, 2, 3]);
    }

    #[test]
    fn srv_weight_zero_only_on_zero_draw() {
        let records = vec![srv(10, 10, 1, "heavy"), srv(10, 0, 2, "zero")];
        // A zero draw selects the weight-0 record, which sits first in the running sum.
        let ports: Vec<u16> = order_srv(&records, |_| 0).iter().map(|r| r.port).collect();
        assert_eq!(ports, vec![2, 1]);
        let ports: Vec<u16> = order_srv(&records, |max| max)
            .iter()
            .map(|r| r.port)
            .collect();
        assert_eq!(ports, vec![1, 2]);
        // All weight 0: the order DNS gave.
        let zeros = vec![srv(1, 0, 1, "a"), srv(1, 0, 2, "b"), srv(1, 0, 3, "c")];
        let ports: Vec<u16> = order_srv(&zeros, seeded(3))
            .iter()
            .map(|r| r.port)
            .collect();
        assert_eq!(ports, vec![1, 2, 3]);
    }

    #[test]
    fn srv_rng_out_of_range_is_clamped() {
        let records = vec![srv(1, 5, 1, "a"), srv(1, 5, 2, "b")];
        let ports: Vec<u16> = order_srv(&records, |_| u32::MAX)
            .iter()
            .map(|r| r.port)
            .collect();
        assert_eq!(ports, vec![2, 1]);
    }

    #[test]
    fn srv_weight_distribution() {
        // Weights 1:3 at one priority: the heavy one comes first about 3/4 of the time; the
        // lower priority is always last.
        let records = vec![
            srv(10, 1, 1, "light"),
            srv(10, 3, 2, "heavy"),
            srv(20, 50, 3, "backup"),
        ];
        let mut rng = seeded(42);
        let mut heavy_first = 0;
        let rounds = 4000;
        for _ in 0..rounds {
            let order = order_srv(&records, &mut rng);
            assert_eq!(order.len(), 3);
            assert_eq!(order[2].port, 3);
            if order[0].port == 2 {
                heavy_first += 1;
            }
        }
        let share = f64::from(heavy_first) / f64::from(rounds);
        assert!((0.70..0.80).contains(&share), "heavy first {share}");
    }

    #[test]
    fn srv_dot_means_not_offered() {
        let records = vec![srv(0, 0, 0, ".")];
        assert!(order_srv(&records, seeded(1)).is_empty());
    }

    #[test]
    fn transports_for_srv_and_default() {
        assert_eq!(srv_transports(&[Udp, Tcp], false), vec![Udp, Tcp]);
        assert_eq!(srv_transports(&[Tcp, Udp, Tls], false), vec![Udp, Tcp]);
        assert_eq!(srv_transports(&[Udp, Tcp], true), vec![Tls]);
        assert_eq!(default_transport(&[Udp, Tcp], false), Udp);
        assert_eq!(default_transport(&[Tcp], false), Tcp);
        assert_eq!(default_transport(&[Udp], true), Tls);
    }

    #[test]
    fn ip_literals() {
        assert_eq!(ip_literal("192.0.2.1"), Some("192.0.2.1".parse().unwrap()));
        assert_eq!(
            ip_literal("[2001:db8::1]"),
            Some("2001:db8::1".parse().unwrap())
        );
        assert_eq!(
            ip_literal("2001:db8::1"),
            Some("2001:db8::1".parse().unwrap())
        );
        assert_eq!(ip_literal("[192.0.2.1]"), None);
        assert_eq!(ip_literal("example.com"), None);
        assert_eq!(ip_literal("[::1"), None);
    }

    #[test]
    fn transport_names() {
        assert_eq!(Transport::from_param("TCP"), Some(Tcp));
        assert_eq!(Transport::from_param("sctp"), None);
        assert_eq!(Tls.srv_prefix(), "_sips._tcp");
        assert_eq!(Transport::from_naptr_service("sips+d2t"), Some(Tls));
        assert_eq!(Tls.default_port(), 5061);
        assert!(!Udp.is_reliable());
    }

    // ----- the procedure over fixed answers -----

    #[tokio::test]
    async fn ip_literal_needs_no_dns() {
        let dns = FakeDns::default();
        assert_eq!(
            run(&dns, &dest("192.0.2.1"), &[Udp, Tcp]).await.unwrap(),
            vec![(Udp, sa("192.0.2.1:5060"))]
        );
        let mut d = dest("[2001:db8::1]");
        d.port = Some(5080);
        d.transport = Some(Tcp);
        assert_eq!(
            run(&dns, &d, &[Udp, Tcp]).await.unwrap(),
            vec![(Tcp, sa("[2001:db8::1]:5080"))]
        );
        let mut d = dest("::1");
        d.secure = true;
        assert_eq!(
            run(&dns, &d, &[Udp]).await.unwrap(),
            vec![(Tls, sa("[::1]:5061"))]
        );
        let mut d = dest("192.0.2.1");
        d.transport = Some(Tls);
        assert_eq!(
            run(&dns, &d, &[Udp]).await.unwrap(),
            vec![(Tls, sa("192.0.2.1:5061"))]
        );
        assert!(dns.queried().is_empty());
    }

    #[tokio::test]
    async fn explicit_port_uses_address_records_only() {
        let dns = FakeDns::default()
            .naptr(
                "example.com",
                vec![naptr(1, 1, "s", "SIP+D2T", "_sip._tcp.example.com")],
            )
            .host("example.com", &["192.0.2.1", "2001:db8::1"]);
        let mut d = dest("Example.COM.");
        d.port = Some(5070);
        assert_eq!(
            run(&dns, &d, &[Udp, Tcp]).await.unwrap(),
            vec![(Udp, sa("192.0.2.1:5070")), (Udp, sa("[2001:db8::1]:5070"))]
        );
        d.transport = Some(Tcp);
        assert_eq!(run(&dns, &d, &[Udp, Tcp]).await.unwrap()[0].0, Tcp);
        assert!(dns.queried().iter().all(|q| q == "A example.com"));
    }

    #[tokio::test]
    async fn transport_param_queries_its_srv_then_address() {
        let dns = FakeDns::default()
            .srv(
                "_sip._tcp.example.com",
                vec![srv(1, 0, 5090, "sip.example.com")],
            )
            .host("sip.example.com", &["192.0.2.9"])
            .host("example.com", &["192.0.2.1"]);
        let mut d = dest("example.com");
        d.transport = Some(Tcp);
        assert_eq!(
            run(&dns, &d, &[Udp, Tcp]).await.unwrap(),
            vec![(Tcp, sa("192.0.2.9:5090"))]
        );
        assert!(!dns.queried().iter().any(|q| q.starts_with("NAPTR")));

        // No SRV: the address at the transport's default port.
        d.transport = Some(Udp);
        assert_eq!(
            run(&dns, &d, &[Udp, Tcp]).await.unwrap(),
            vec![(Udp, sa("192.0.2.1:5060"))]
        );
        // sips: with transport=tcp is TLS, looked up as _sips._tcp.
        d.transport = Some(Tcp);
        d.secure = true;
        assert_eq!(
            run(&dns, &d, &[Udp, Tcp, Tls]).await.unwrap(),
            vec![(Tls, sa("192.0.2.1:5061"))]
        );
        assert!(dns
            .queried()
            .contains(&"SRV _sips._tcp.example.com".to_string()));
        d.transport = Some(Udp);
        assert!(matches!(
            run(&dns, &d, &[Udp]).await,
            Err(LocateError::InsecureTransport { .. })
        ));
    }

    #[tokio::test]
    async fn naptr_then_srv_then_addresses() {
        let dns = FakeDns::default()
            .naptr(
                "example.com",
                vec![
                    naptr(50, 50, "s", "SIP+D2U", "_sip._udp.example.com"),
                    naptr(10, 50, "s", "SIP+D2T", "_sip._tcp.example.com"),
                    naptr(5, 50, "s", "SIPS+D2T", "_sips._tcp.example.com"),
                ],
            )
            .srv(
                "_sip._tcp.example.com",
                vec![srv(1, 0, 5070, "tcp.example.com")],
            )
            .srv(
                "_sip._udp.example.com",
                vec![srv(1, 0, 5072, "udp.example.com")],
            )
            .srv(
                "_sips._tcp.example.com",
                vec![srv(1, 0, 5071, "tls.example.com")],
            )
            .host("tcp.example.com", &["192.0.2.2", "2001:db8::2"])
            .host("udp.example.com", &["192.0.2.3"])
            .host("tls.example.com", &["192.0.2.4"])
            .host("example.com", &["192.0.2.1"]);
        assert_eq!(
            run(&dns, &dest("example.com"), &[Udp, Tcp]).await.unwrap(),
            vec![
                (Tcp, sa("192.0.2.2:5070")),
                (Tcp, sa("[2001:db8::2]:5070")),
                (Udp, sa("192.0.2.3:5072")),
            ]
        );
        assert!(!dns
            .queried()
            .contains(&"SRV _sips._tcp.example.com".to_string()));
        assert_eq!(
            run(&dns, &dest("example.com"), &[Udp]).await.unwrap(),
            vec![(Udp, sa("192.0.2.3:5072"))]
        );
        let mut d = dest("example.com");
        d.secure = true;
        assert_eq!(
            run(&dns, &d, &[Udp, Tcp, Tls]).await.unwrap(),
            vec![(Tls, sa("192.0.2.4:5071"))]
        );
    }

    #[tokio::test]
    async fn no_naptr_queries_srv_per_supported_transport() {
        let dns = FakeDns::default()
            .srv(
                "_sip._udp.example.com",
                vec![srv(1, 0, 5080, "sip.example.com")],
            )
            .srv(
                "_sip._tcp.example.com",
                vec![srv(1, 0, 5081, "sip.example.com")],
            )
            .host("sip.example.com", &["192.0.2.5"])
            .host("example.com", &["192.0.2.1"]);
        assert_eq!(
            run(&dns, &dest("example.com"), &[Udp, Tcp]).await.unwrap(),
            vec![(Udp, sa("192.0.2.5:5080")), (Tcp, sa("192.0.2.5:5081"))]
        );
        assert_eq!(
            run(&dns, &dest("example.com"), &[Tcp]).await.unwrap(),
            vec![(Tcp, sa("192.0.2.5:5081"))]
        );
        let q = dns.queried();
        assert!(!q.contains(&"A example.com".to_string()));
        assert!(!q.contains(&"SRV _sips._tcp.example.com".to_string()));
    }

    #[tokio::test]
    async fn naptr_without_srv_falls_back_to_srv_then_address() {
        // The NAPTR points at an SRV name that does not exist.
        let dns = FakeDns::default()
            .naptr(
                "example.com",
                vec![naptr(1, 1, "s", "SIP+D2U", "_sip._udp.elsewhere.com")],
            )
            .srv(
                "_sip._tcp.example.com",
                vec![srv(1, 0, 5081, "sip.example.com")],
            )
            .host("sip.example.com", &["192.0.2.5"]);
        assert_eq!(
            run(&dns, &dest("example.com"), &[Udp, Tcp]).await.unwrap(),
            vec![(Tcp, sa("192.0.2.5:5081"))]
        );
    }

    #[tokio::test]
    async fn no_naptr_no_srv_uses_address_records() {
        let dns = FakeDns::default().host("example.com", &["192.0.2.1", "2001:db8::1"]);
        assert_eq!(
            run(&dns, &dest("example.com"), &[Udp, Tcp]).await.unwrap(),
            vec![(Udp, sa("192.0.2.1:5060")), (Udp, sa("[2001:db8::1]:5060"))]
        );
        assert_eq!(
            run(&dns, &dest("example.com"), &[Tcp]).await.unwrap()[0],
            (Tcp, sa("192.0.2.1:5060"))
        );
        let mut d = dest("example.com");
        d.secure = true;
        assert_eq!(
            run(&dns, &d, &[Udp, Tcp]).await.unwrap()[0],
            (Tls, sa("192.0.2.1:5061"))
        );
    }

    #[tokio::test]
    async fn srv_dot_rules_out_address_fallback() {
        let dns = FakeDns::default()
            .srv("_sip._udp.example.com", vec![srv(0, 0, 0, ".")])
            .host("example.com", &["192.0.2.1"]);
        assert!(matches!(
            run(&dns, &dest("example.com"), &[Udp]).await,
            Err(LocateError::NoRecords { .. })
        ));
    }

    #[tokio::test]
    async fn srv_failover_order_and_dedup() {
        let dns = FakeDns::default()
            .srv(
                "_sip._udp.example.com",
                vec![
                    srv(20, 0, 5091, "backup.example.com"),
                    srv(10, 0, 5090, "primary.example.com"),
                    srv(30, 0, 5090, "alias.example.com"),
                ],
            )
            .host("primary.example.com", &["192.0.2.7"])
            .host("backup.example.com", &["192.0.2.8"])
            .host("alias.example.com", &["192.0.2.7"]);
        assert_eq!(
            run(&dns, &dest("example.com"), &[Udp]).await.unwrap(),
            vec![(Udp, sa("192.0.2.7:5090")), (Udp, sa("192.0.2.8:5091"))]
        );
    }

    #[tokio::test]
    async fn failures_are_not_fatal_midway() {
        let mut dns = FakeDns::default().host("example.com", &["192.0.2.1"]);
        dns.naptr
            .insert("example.com".into(), Err("SERVFAIL".into()));
        dns.srv
            .insert("_sip._udp.example.com".into(), Err("timed out".into()));
        assert_eq!(
            run(&dns, &dest("example.com"), &[Udp]).await.unwrap(),
            vec![(Udp, sa("192.0.2.1:5060"))]
        );
    }

    #[tokio::test]
    async fn nothing_found_is_no_records_and_dns_down_is_dns() {
        let dns = FakeDns::default();
        assert!(matches!(
            run(&dns, &dest("missing.example.com"), &[Udp, Tcp]).await,
            Err(LocateError::NoRecords { host }) if host == "missing.example.com"
        ));
        let mut dns = FakeDns::default();
        dns.naptr
            .insert("example.com".into(), Err("timed out".into()));
        dns.srv
            .insert("_sip._udp.example.com".into(), Err("timed out".into()));
        dns.ips
            .insert("example.com".into(), Err("timed out".into()));
        assert!(matches!(
            run(&dns, &dest("example.com"), &[Udp]).await,
            Err(LocateError::Dns { .. })
        ));
    }

    #[tokio::test]
    async fn invalid_hosts_are_refused_before_dns() {
        let dns = FakeDns::default();
        for host in ["", "a..b", "exa mple.com", &"x".repeat(64)] {
            assert!(
                matches!(
                    run(&dns, &dest(host), &[Udp]).await,
                    Err(LocateError::InvalidHost { .. })
                ),
                "{host:?}"
            );
        }
        assert!(dns.queried().is_empty());
    }

    #[test]
    fn unusable_system_config_falls_back_to_loopback() {
        let (config, opts) = resolver_config(&[], || Err("no nameservers".into()));
        let servers: Vec<IpAddr> = config.name_servers().iter().map(|s| s.ip).collect();
        assert_eq!(
            servers,
            vec![
                IpAddr::from(Ipv4Addr::LOCALHOST),
                IpAddr::from(Ipv6Addr::LOCALHOST)
            ]
        );
        assert!(opts.timeout <= QUERY_TIMEOUT);
        let (config, _) = resolver_config(&[sa("127.0.0.1:5353")], || unreachable!());
        let ns = &config.name_servers()[0];
        assert!(ns.connections.iter().all(|c| c.port == 5353));
        assert_eq!(ns.connections.len(), 2);
    }

    #[test]
    fn locate_future_is_send() {
        // SipHandle::send awaits it inside spawned tasks.
        fn assert_send<T: Send>(_: &T) {}
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _guard = runtime.enter();
        let locator = Locator::new(&[sa("127.0.0.1:53")], &[Udp]).unwrap();
        let d = dest("192.0.2.1");
        let future = locator.locate(&d);
        assert_send(&future);
    }

    #[tokio::test]
    async fn locator_builds_with_system_config() {
        let locator = Locator::new(&[], &[Udp, Tcp]).unwrap();
        assert_eq!(locator.supported(), &[Udp, Tcp]);
        let targets = locator.locate(&dest("127.0.0.1")).await.unwrap();
        assert_eq!(targets[0].addr, sa("127.0.0.1:5060"));
    }
}
