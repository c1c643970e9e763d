//! Configuration: `component.toml`, read once at start.
//!
//! Every problem is reported as one line that names the key, e.g.
//! `sip.listen[1]: "udp:1.2.3:5060" is not valid: expected udp:IP:PORT, tcp:IP:PORT or tls:IP:PORT`.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;

/// A config problem: the key it concerns and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {problem}")]
pub struct ConfigError {
    pub key: String,
    pub problem: String,
}

impl ConfigError {
    pub(crate) fn new(key: impl Into<String>, problem: impl Into<String>) -> Self {
        ConfigError {
            key: key.into(),
            problem: problem.into(),
        }
    }

    pub(crate) fn invalid(key: impl Into<String>, value: &str, why: impl fmt::Display) -> Self {
        ConfigError::new(key, format!("{value:?} is not valid: {why}"))
    }
}

/// A secret from the config: never printed, not even by `{:?}`.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ListenTransport {
    Udp,
    Tcp,
    Tls,
}

impl fmt::Display for ListenTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ListenTransport::Udp => "udp",
            ListenTransport::Tcp => "tcp",
            ListenTransport::Tls => "tls",
        })
    }
}

/// One SIP listener: `udp:IP:PORT`, `tcp:IP:PORT` or `tls:IP:PORT` (IPv6 as `tcp:[::1]:5060`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listen {
    pub transport: ListenTransport,
    pub addr: SocketAddr,
}

impl std::str::FromStr for Listen {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        const EXPECTED: &str = "expected udp:IP:PORT, tcp:IP:PORT or tls:IP:PORT";
        let (t, addr) = s.split_once(':').ok_or(EXPECTED)?;
        let transport = match t.to_ascii_lowercase().as_str() {
            "udp" => ListenTransport::Udp,
            "tcp" => ListenTransport::Tcp,
            "tls" => ListenTransport::Tls,
            other => return Err(format!("unknown transport {other:?} (udp, tcp or tls)")),
        };
        let addr: SocketAddr = addr
            .parse()
            .map_err(|_| format!("{EXPECTED} with a numeric IP"))?;
        Ok(Listen { transport, addr })
    }
}

/// RFC 3261 timers (section 17.1.1.1), configurable for networks with long round trips.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timers {
    pub t1_ms: u64,
    pub t2_ms: u64,
    pub t4_ms: u64,
}

impl Default for Timers {
    fn default() -> Self {
        Timers {
            t1_ms: 500,
            t2_ms: 4000,
            t4_ms: 5000,
        }
    }
}

/// `[sip.tls]`: the certificate stox presents and the roots it verifies peers with.
#[derive(Debug, Clone)]
pub struct TlsConfig {
    /// PEM: the certificate chain, leaf first.
    pub certificate: PathBuf,
    /// PEM: the leaf's private key (PKCS#8, PKCS#1 or SEC1).
    pub private_key: PathBuf,
    /// PEM: the roots peers' certificates must chain to; `None`: the system's roots.
    pub ca_file: Option<PathBuf>,
    /// Whether an outbound connection's certificate must name the host it was sent to.
    pub verify_peer_name: bool,
    /// The files above, loaded and checked when the config was read.
    pub context: Arc<crate::sip::tls::TlsContext>,
}

#[derive(Debug, Clone)]
pub struct XmppConfig {
    /// The component's domain, e.g. `sip.example.com`.
    pub jid: String,
    /// host:port of the XMPP server's component listener.
    pub server: String,
    pub secret: Secret,
    /// XMPP domains whose users may use the gateway.
    pub domains: Vec<String>,
    /// Upper bound of the reconnect backoff.
    pub reconnect_max_ms: u64,
    /// Stanzas waiting for the link; beyond this, new ones are refused at once.
    pub queue_limit: usize,
    /// Messages per second (and burst) per sending bare JID; 0 = no limit (the default).
    pub rate_limit_per_jid: u32,
    pub rate_burst_per_jid: u32,
}

#[derive(Debug, Clone)]
pub struct SipConfig {
    pub listen: Vec<Listen>,
    /// `domains[i]` stands for `xmpp.domains[i]` on the SIP side.
    pub domains: Vec<String>,
    pub outbound_proxy: Option<String>,
    /// SIP domain -> SIP URI of the next hop, consulted before DNS.
    pub routes: BTreeMap<String, String>,
    pub default_domain: Option<String>,
    /// host[:port] written in Via and Contact when the listen address is not reachable as is.
    pub advertise: Option<String>,
    pub timers: Timers,
    /// Largest SIP message accepted or sent, in bytes.
    pub max_message_size: usize,
    pub user_agent: String,
    /// Present when `[sip.tls]` is; required by a `tls:` listener.
    pub tls: Option<TlsConfig>,
    /// A TCP or TLS connection without traffic either way for this long is closed.
    pub idle_timeout_ms: u64,
    /// TCP and TLS connections accepted and open at once; outbound ones have as many again.
    pub max_connections: usize,
    /// Accepted TCP and TLS connections open at once from one IP address.
    pub max_connections_per_address: usize,
    /// A message begun on a TCP or TLS connection must be complete within this (slowloris).
    pub read_timeout_ms: u64,
    /// A message the peer has not taken (written and flushed) within this long closes its
    /// TCP or TLS connection.
    pub write_timeout_ms: u64,
    /// Server transactions held at once (answered ones included, until their timer J/H
    /// ends); a new request beyond it gets 503 with Retry-After.
    pub max_server_transactions: usize,
    /// Digest credentials, one per realm (`[[sip.credentials]]`).
    pub credentials: Vec<Credential>,
    /// Registration of stox at a registrar (`[sip.register]`).
    pub register: Option<RegisterConfig>,
    /// `sip.trusted_peers` and the limits for untrusted sources (issue 11).
    pub trust: crate::sip::trust::TrustConfig,
    /// Address blocks a remote party may make stox send to even when they are loopback,
    /// private or link-local, on SIP ports (`sip.allowed_destinations`; default none).
    pub allowed_destinations: Vec<crate::destination::Cidr>,
}

/// A username and password for one digest realm. The password never shows in `Debug`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credential {
    pub realm: String,
    pub username: String,
    pub password: Secret,
}

/// `[sip.register]`: stox registers `aor` at `registrar` and keeps it registered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegisterConfig {
    /// The REGISTER Request-URI: a sip:/sips: URI without a user part.
    pub registrar: String,
    /// The address-of-record: To and From of the REGISTER.
    pub aor: String,
    /// The expiry asked for, in seconds (the registrar may grant less).
    pub expires: u32,
}

#[derive(Debug, Clone, Default)]
pub struct DnsConfig {
    /// Empty: the system resolver.
    pub nameservers: Vec<SocketAddr>,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub xmpp: XmppConfig,
    pub sip: SipConfig,
    pub dns: DnsConfig,
    pub presence: PresenceConfig,
    pub store: StoreConfig,
    pub msrp: MsrpConfig,
    pub chat: ChatConfig,
    pub runtime: RuntimeConfig,
    pub log: crate::log::LogConfig,
}

/// `[runtime]`: the tokio runtime stox runs on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeConfig {
    /// Worker threads of the scheduler. One by default: the SIP stack runs in one task
    /// and each message crosses several tasks, so with more workers most of the time goes
    /// to waking parked threads (measured with stox-bench on 2 cores: one worker spends
    /// 25-30 % less CPU per message at 1k-5k messages/s).
    pub worker_threads: usize,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig { worker_threads: 1 }
    }
}

/// `[msrp]`: the MSRP (RFC 4975) listener of chat sessions. Chat sessions are on only
/// when `listen` is set; without it type=chat messages go as pager-mode MESSAGEs.
#[derive(Debug, Clone)]
pub struct MsrpConfig {
    pub listen: Option<SocketAddr>,
    /// The host written in a=path (and SDP c=) when the listen address is not reachable.
    pub advertise: Option<String>,
    /// The `msrps:` (MSRP over TLS, RFC 4975 section 14) listener, with the certificate of
    /// `[sip.tls]`; needs `listen` and `[sip.tls]`.
    pub tls_listen: Option<SocketAddr>,
    /// Offer msrps in every INVITE, not only when the SIP leg is secure.
    pub prefer_tls: bool,
    /// Accepted MSRP connections open at once (both listeners each), bound to a session or
    /// not; one beyond is closed at once.
    pub max_connections: usize,
    /// Of those, how many one source IP address may hold at once (per listener); one
    /// beyond is closed at once.
    pub max_connections_per_address: usize,
    /// An accepted connection without a complete, routable first request by then is
    /// closed.
    pub first_request_timeout_ms: u64,
}

impl Default for MsrpConfig {
    fn default() -> Self {
        MsrpConfig {
            listen: None,
            advertise: None,
            tls_listen: None,
            prefer_tls: false,
            max_connections: 2048,
            max_connections_per_address: 256,
            first_request_timeout_ms: 5_000,
        }
    }
}

/// `[chat]`: limits of chat sessions (RFC 7573).
#[derive(Debug, Clone)]
pub struct ChatConfig {
    pub max_sessions: usize,
    pub max_sessions_per_user: usize,
    /// A session without a message either way for this long is ended with BYE.
    pub idle_timeout_ms: u64,
    /// An INVITE without a 2xx and a connected MSRP session by then falls back to MESSAGE.
    pub setup_timeout_ms: u64,
    /// How long a conversation whose INVITE was refused stays in pager mode.
    pub fallback_ms: u64,
    /// Largest message taken from either side, in bytes (larger ones are refused, 413).
    pub max_message_size: usize,
    /// Largest MSRP chunk sent; longer messages are chunked, never truncated.
    pub chunk_size: usize,
    /// Whether an INVITE is answered for any user or only for one known to be available.
    pub answer: ChatAnswer,
}

/// `chat.answer`: when stox answers an INVITE with an MSRP offer on a user's behalf.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ChatAnswer {
    /// 200 for every local user (`"always"`).
    #[default]
    Always,
    /// 200 only for a user whose available presence the gateway has seen, 480 otherwise
    /// (`"when_available"`).
    WhenAvailable,
}

impl Default for ChatConfig {
    fn default() -> Self {
        ChatConfig {
            max_sessions: 1000,
            max_sessions_per_user: 20,
            idle_timeout_ms: 600_000,
            setup_timeout_ms: 32_000,
            fallback_ms: 3_600_000,
            max_message_size: 1024 * 1024,
            chunk_size: 16 * 1024,
            answer: ChatAnswer::Always,
        }
    }
}

/// `[presence]`: RFC 7248 subscriptions both ways.
#[derive(Debug, Clone)]
pub struct PresenceConfig {
    /// Expires (seconds) of the SUBSCRIBEs stox sends.
    pub expires: u32,
    /// The longest subscription a SIP watcher is granted, and the shortest it may ask.
    pub max_expires: u32,
    pub min_expires: u32,
    pub max_per_user: usize,
    pub max_total: usize,
    pub probe_timeout_ms: u64,
    /// XMPP domains refreshed without the probe of RFC 7248 section 6.
    pub probe_exempt_domains: Vec<String>,
    /// A user seen this recently (seconds) is refreshed even when the probe gets no answer.
    pub seen_window_s: u64,
    pub retry_ms: u64,
    /// The soonest stox sends another SUBSCRIBE for a subscription it holds (seconds).
    pub min_refresh_s: u32,
    /// What a SIP watcher's unsubscribe or expiry does to the XMPP subscription.
    pub on_sip_end: OnSipEnd,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnSipEnd {
    /// The XMPP subscription stays (RFC 7248 allows either); the watcher gets
    /// terminated;reason=timeout.
    Keep,
    /// The XMPP user gets `unsubscribe` from the watcher.
    Unsubscribe,
}

/// `[store]`: where subscriptions are kept across restarts.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    pub path: std::path::PathBuf,
}

// The file's shape. Unknown keys are errors, so a typo never silently falls back to a default.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    xmpp: RawXmpp,
    #[serde(default)]
    sip: RawSip,
    #[serde(default)]
    dns: RawDns,
    #[serde(default)]
    presence: RawPresence,
    #[serde(default)]
    store: RawStore,
    #[serde(default)]
    msrp: RawMsrp,
    #[serde(default)]
    chat: RawChat,
    #[serde(default)]
    runtime: RawRuntime,
    #[serde(default)]
    log: crate::log::RawLog,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawRuntime {
    worker_threads: Option<usize>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawMsrp {
    listen: Option<String>,
    advertise: Option<String>,
    tls_listen: Option<String>,
    #[serde(default)]
    prefer_tls: bool,
    max_connections: Option<usize>,
    max_connections_per_address: Option<usize>,
    first_request_timeout_ms: Option<u64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawChat {
    max_sessions: Option<usize>,
    max_sessions_per_user: Option<usize>,
    idle_timeout_ms: Option<u64>,
    setup_timeout_ms: Option<u64>,
    fallback_ms: Option<u64>,
    max_message_size: Option<usize>,
    chunk_size: Option<usize>,
    answer: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawPresence {
    expires: Option<u32>,
    max_expires: Option<u32>,
    min_expires: Option<u32>,
    max_per_user: Option<usize>,
    max_total: Option<usize>,
    probe_timeout_ms: Option<u64>,
    #[serde(default)]
    probe_exempt_domains: Vec<String>,
    seen_window_s: Option<u64>,
    retry_ms: Option<u64>,
    min_refresh_s: Option<u32>,
    on_sip_end: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawStore {
    path: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawXmpp {
    jid: String,
    server: String,
    secret: Secret,
    domains: Vec<String>,
    #[serde(default = "default_reconnect_max_ms")]
    reconnect_max_ms: u64,
    #[serde(default = "default_queue_limit")]
    queue_limit: usize,
    rate_limit_per_jid: Option<u32>,
    rate_burst_per_jid: Option<u32>,
}

fn default_reconnect_max_ms() -> u64 {
    30_000
}

fn default_queue_limit() -> usize {
    4096
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawSip {
    #[serde(default)]
    listen: Option<Vec<String>>,
    #[serde(default)]
    domains: Option<Vec<String>>,
    #[serde(default)]
    outbound_proxy: Option<String>,
    #[serde(default)]
    routes: BTreeMap<String, String>,
    #[serde(default)]
    default_domain: Option<String>,
    #[serde(default)]
    advertise: Option<String>,
    #[serde(default)]
    timers: RawTimers,
    #[serde(default)]
    max_message_size: Option<usize>,
    #[serde(default)]
    user_agent: Option<String>,
    #[serde(default)]
    tls: Option<RawTls>,
    #[serde(default)]
    idle_timeout_ms: Option<u64>,
    #[serde(default)]
    max_connections: Option<usize>,
    #[serde(default)]
    max_connections_per_address: Option<usize>,
    #[serde(default)]
    read_timeout_ms: Option<u64>,
    #[serde(default)]
    write_timeout_ms: Option<u64>,
    #[serde(default)]
    max_server_transactions: Option<usize>,
    #[serde(default)]
    credentials: Vec<RawCredential>,
    #[serde(default)]
    register: Option<RawRegister>,
    #[serde(default)]
    trusted_peers: Vec<String>,
    #[serde(default)]
    rate_limit: Option<u32>,
    #[serde(default)]
    rate_burst: Option<u32>,
    #[serde(default)]
    subscribe_rate_per_domain: Option<u32>,
    #[serde(default)]
    subscribe_burst_per_domain: Option<u32>,
    #[serde(default)]
    allowed_destinations: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    certificate: PathBuf,
    private_key: PathBuf,
    #[serde(default)]
    ca_file: Option<PathBuf>,
    #[serde(default = "default_verify_peer_name")]
    verify_peer_name: bool,
}

fn default_verify_peer_name() -> bool {
    true
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCredential {
    realm: String,
    username: String,
    password: Secret,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRegister {
    registrar: String,
    aor: String,
    #[serde(default = "default_register_expires")]
    expires: u32,
}

fn default_register_expires() -> u32 {
    3600
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawTimers {
    t1_ms: Option<u64>,
    t2_ms: Option<u64>,
    t4_ms: Option<u64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawDns {
    #[serde(default)]
    nameservers: Vec<String>,
}

impl Config {
    /// Reads and validates the file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigError::new(
                path.display().to_string(),
                format!("cannot read the config file: {e}"),
            )
        })?;
        Config::parse(&text)
    }

    /// Parses and validates config text.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let raw = parse_raw(text)?;
        validate(raw)
    }
}

fn parse_raw(text: &str) -> Result<RawConfig, ConfigError> {
    let de = toml::Deserializer::parse(text).map_err(|e| toml_syntax_error(text, &e))?;
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        serde_error(text, &path, &inner)
    })
}

fn line_of(text: &str, span: Option<std::ops::Range<usize>>) -> String {
    match span {
        Some(span) => {
            let before = text.get(..span.start).unwrap_or(text);
            format!("line {}", before.lines().count().max(1))
        }
        None => "config".into(),
    }
}

fn toml_syntax_error(text: &str, e: &toml::de::Error) -> ConfigError {
    ConfigError::new(
        line_of(text, e.span()),
        format!("invalid TOML: {}", one_line(e.message())),
    )
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

// serde's messages name the field but the path points at its parent: make them name the key.
fn serde_error(text: &str, path: &str, e: &toml::de::Error) -> ConfigError {
    let msg = one_line(e.message());
    let join = |field: &str| {
        if path.is_empty() || path == "." {
            field.to_string()
        } else {
            format!("{path}.{field}")
        }
    };
    if let Some(rest) = msg.strip_prefix("missing field `") {
        if let Some((field, _)) = rest.split_once('`') {
            return ConfigError::new(join(field), "is missing");
        }
    }
    if let Some(rest) = msg.strip_prefix("unknown field `") {
        if let Some((field, expected)) = rest.split_once('`') {
            let expected = expected.trim_start_matches(',').trim();
            // The path already ends at the unknown key.
            let key = if path.ends_with(field) {
                path.to_string()
            } else {
                join(field)
            };
            return ConfigError::new(key, format!("is not a known key ({expected})"));
        }
    }
    let key = if path.is_empty() || path == "." {
        line_of(text, e.span())
    } else {
        path.to_string()
    };
    // serde quotes the offending value ("invalid type: integer `12345`"): not for secrets.
    if key == "xmpp.secret" || key.ends_with(".password") {
        return ConfigError::new(key, "must be a string (the value is not shown)");
    }
    ConfigError::new(key, msg)
}

fn validate(raw: RawConfig) -> Result<Config, ConfigError> {
    let jid = raw.xmpp.jid.trim().to_ascii_lowercase();
    check_domain("xmpp.jid", &jid)?;
    let server = raw.xmpp.server.trim().to_string();
    check_host_port("xmpp.server", &server)?;
    if raw.xmpp.secret.expose().is_empty() {
        return Err(ConfigError::new("xmpp.secret", "is empty"));
    }
    if raw.xmpp.domains.is_empty() {
        return Err(ConfigError::new(
            "xmpp.domains",
            "is empty: name at least one XMPP domain whose users may use the gateway",
        ));
    }
    let mut xmpp_domains = Vec::new();
    for (i, d) in raw.xmpp.domains.iter().enumerate() {
        let d = d.trim().to_ascii_lowercase();
        check_domain(&format!("xmpp.domains[{i}]"), &d)?;
        if d == jid {
            return Err(ConfigError::invalid(
                format!("xmpp.domains[{i}]"),
                &d,
                "it is the component's own domain (xmpp.jid)",
            ));
        }
        xmpp_domains.push(d);
    }
    if raw.xmpp.queue_limit == 0 {
        return Err(ConfigError::new("xmpp.queue_limit", "must be at least 1"));
    }

    let listen_raw = raw
        .sip
        .listen
        .unwrap_or_else(|| vec!["udp:127.0.0.1:5060".into(), "tcp:127.0.0.1:5060".into()]);
    if listen_raw.is_empty() {
        return Err(ConfigError::new("sip.listen", "is empty"));
    }
    let mut listen = Vec::new();
    for (i, l) in listen_raw.iter().enumerate() {
        let parsed: Listen = l
            .trim()
            .parse()
            .map_err(|e: String| ConfigError::invalid(format!("sip.listen[{i}]"), l, e))?;
        if listen.contains(&parsed) {
            return Err(ConfigError::invalid(
                format!("sip.listen[{i}]"),
                l,
                "listed twice",
            ));
        }
        listen.push(parsed);
    }

    let sip_domains = match raw.sip.domains {
        None => xmpp_domains.clone(),
        Some(ds) => {
            if ds.len() != xmpp_domains.len() {
                return Err(ConfigError::new(
                    "sip.domains",
                    format!(
                        "has {} entries but xmpp.domains has {}: sip.domains[i] stands for xmpp.domains[i]",
                        ds.len(),
                        xmpp_domains.len()
                    ),
                ));
            }
            let mut out = Vec::new();
            for (i, d) in ds.iter().enumerate() {
                let d = d.trim().to_ascii_lowercase();
                check_domain(&format!("sip.domains[{i}]"), &d)?;
                out.push(d);
            }
            out
        }
    };

    let outbound_proxy = match raw.sip.outbound_proxy {
        Some(p) => {
            check_next_hop("sip.outbound_proxy", &p)?;
            Some(p.trim().to_string())
        }
        None => None,
    };
    let mut routes = BTreeMap::new();
    for (domain, uri) in raw.sip.routes {
        let d = domain.trim().to_ascii_lowercase();
        check_domain(&format!("sip.routes.{domain}"), &d).map_err(|_| {
            ConfigError::invalid(format!("sip.routes.{domain}"), &domain, "not a domain name")
        })?;
        check_next_hop(&format!("sip.routes.{domain}"), &uri)?;
        routes.insert(d, uri.trim().to_string());
    }
    let default_domain = match raw.sip.default_domain {
        Some(d) => {
            let d = d.trim().to_ascii_lowercase();
            check_domain("sip.default_domain", &d)?;
            Some(d)
        }
        None => None,
    };
    let advertise = match raw.sip.advertise {
        Some(a) => {
            let a = a.trim().to_string();
            check_host_port_optional("sip.advertise", &a)?;
            Some(a)
        }
        None => {
            if let Some(l) = listen.iter().find(|l| l.addr.ip().is_unspecified()) {
                return Err(ConfigError::new(
                    "sip.advertise",
                    format!(
                        "is required when a listener binds the unspecified address ({}:{}): name the host peers should reach",
                        l.transport, l.addr
                    ),
                ));
            }
            None
        }
    };
    let d = Timers::default();
    let timers = Timers {
        t1_ms: raw.sip.timers.t1_ms.unwrap_or(d.t1_ms),
        t2_ms: raw.sip.timers.t2_ms.unwrap_or(d.t2_ms),
        t4_ms: raw.sip.timers.t4_ms.unwrap_or(d.t4_ms),
    };
    if timers.t1_ms == 0 || timers.t1_ms > 60_000 {
        return Err(ConfigError::new(
            "sip.timers.t1_ms",
            "must be between 1 and 60000",
        ));
    }
    if timers.t2_ms < timers.t1_ms || timers.t2_ms > 600_000 {
        return Err(ConfigError::new(
            "sip.timers.t2_ms",
            "must be at least t1_ms and at most 600000",
        ));
    }
    if timers.t4_ms > 600_000 {
        return Err(ConfigError::new(
            "sip.timers.t4_ms",
            "must be at most 600000",
        ));
    }
    let max_message_size = raw.sip.max_message_size.unwrap_or(65_535);
    if !(1024..=16 * 1024 * 1024).contains(&max_message_size) {
        return Err(ConfigError::new(
            "sip.max_message_size",
            "must be between 1024 and 16777216 bytes",
        ));
    }
    let user_agent = raw
        .sip
        .user_agent
        .unwrap_or_else(|| format!("stox/{}", env!("CARGO_PKG_VERSION")));
    if user_agent.chars().any(|c| c.is_control()) {
        return Err(ConfigError::new(
            "sip.user_agent",
            "must not contain control characters",
        ));
    }

    let idle_timeout_ms = raw.sip.idle_timeout_ms.unwrap_or(300_000);
    if !(1_000..=86_400_000).contains(&idle_timeout_ms) {
        return Err(ConfigError::new(
            "sip.idle_timeout_ms",
            "must be between 1000 and 86400000",
        ));
    }
    let max_connections = raw.sip.max_connections.unwrap_or(1000);
    if !(1..=1_000_000).contains(&max_connections) {
        return Err(ConfigError::new(
            "sip.max_connections",
            "must be between 1 and 1000000",
        ));
    }
    let max_connections_per_address = raw.sip.max_connections_per_address.unwrap_or(100);
    if !(1..=1_000_000).contains(&max_connections_per_address) {
        return Err(ConfigError::new(
            "sip.max_connections_per_address",
            "must be between 1 and 1000000",
        ));
    }
    let read_timeout_ms = raw.sip.read_timeout_ms.unwrap_or(30_000);
    if !(100..=3_600_000).contains(&read_timeout_ms) {
        return Err(ConfigError::new(
            "sip.read_timeout_ms",
            "must be between 100 and 3600000",
        ));
    }
    let write_timeout_ms = raw.sip.write_timeout_ms.unwrap_or(10_000);
    if !(100..=3_600_000).contains(&write_timeout_ms) {
        return Err(ConfigError::new(
            "sip.write_timeout_ms",
            "must be between 100 and 3600000",
        ));
    }
    let max_server_transactions = raw.sip.max_server_transactions.unwrap_or(1_000_000);
    if !(1..=100_000_000).contains(&max_server_transactions) {
        return Err(ConfigError::new(
            "sip.max_server_transactions",
            "must be between 1 and 100000000",
        ));
    }
    let tls = match raw.sip.tls {
        Some(t) => {
            let context = crate::sip::tls::TlsContext::load(
                &t.certificate,
                &t.private_key,
                t.ca_file.as_deref(),
                t.verify_peer_name,
            )?;
            Some(TlsConfig {
                certificate: t.certificate,
                private_key: t.private_key,
                ca_file: t.ca_file,
                verify_peer_name: t.verify_peer_name,
                context: Arc::new(context),
            })
        }
        None => {
            if let Some(i) = listen
                .iter()
                .position(|l| l.transport == ListenTransport::Tls)
            {
                return Err(ConfigError::new(
                    "sip.tls.certificate",
                    format!("is missing: sip.listen[{i}] is a tls: listener, which needs [sip.tls] with a certificate and private_key"),
                ));
            }
            None
        }
    };
    let (rate_limit_per_jid, rate_burst_per_jid) =
        validate_jid_limit(raw.xmpp.rate_limit_per_jid, raw.xmpp.rate_burst_per_jid)?;
    let mut trust = validate_trust(
        &raw.sip.trusted_peers,
        [
            raw.sip.rate_limit,
            raw.sip.rate_burst,
            raw.sip.subscribe_rate_per_domain,
            raw.sip.subscribe_burst_per_domain,
        ],
    )?;
    trust.own_domains = sip_domains.clone();
    let credentials = validate_credentials(raw.sip.credentials)?;
    let mut allowed_destinations = Vec::new();
    for (i, c) in raw.sip.allowed_destinations.iter().enumerate() {
        let cidr = crate::destination::Cidr::parse(c).map_err(|why| {
            ConfigError::invalid(format!("sip.allowed_destinations[{i}]"), c, why)
        })?;
        allowed_destinations.push(cidr);
    }
    let register = match raw.sip.register {
        Some(r) => Some(validate_register(r)?),
        None => None,
    };

    let mut nameservers = Vec::new();
    for (i, n) in raw.dns.nameservers.iter().enumerate() {
        let addr: SocketAddr = n.trim().parse().map_err(|_| {
            ConfigError::invalid(
                format!("dns.nameservers[{i}]"),
                n,
                "expected IP:PORT, e.g. 127.0.0.1:53 or [::1]:53",
            )
        })?;
        nameservers.push(addr);
    }

    let msrp = validate_msrp(raw.msrp, tls.is_some())?;
    Ok(Config {
        xmpp: XmppConfig {
            jid,
            server,
            secret: raw.xmpp.secret,
            domains: xmpp_domains,
            reconnect_max_ms: raw.xmpp.reconnect_max_ms.max(100),
            queue_limit: raw.xmpp.queue_limit,
            rate_limit_per_jid,
            rate_burst_per_jid,
        },
        sip: SipConfig {
            listen,
            domains: sip_domains,
            outbound_proxy,
            routes,
            default_domain,
            advertise,
            timers,
            max_message_size,
            user_agent,
            tls,
            idle_timeout_ms,
            max_connections,
            max_connections_per_address,
            read_timeout_ms,
            write_timeout_ms,
            max_server_transactions,
            credentials,
            register,
            trust,
            allowed_destinations,
        },
        dns: DnsConfig { nameservers },
        presence: validate_presence(raw.presence)?,
        msrp,
        chat: validate_chat(raw.chat)?,
        runtime: validate_runtime(raw.runtime)?,
        log: crate::log::validate_log(raw.log)?,
        store: StoreConfig {
            path: std::path::PathBuf::from(
                raw.store
                    .path
                    .map(|p| p.trim().to_string())
                    .filter(|p| !p.is_empty())
                    .unwrap_or_else(|| "stox.db".into()),
            ),
        },
    })
}

/// `xmpp.rate_limit_per_jid` (off by default) and its burst (default 4 times the rate).
fn validate_jid_limit(rate: Option<u32>, burst: Option<u32>) -> Result<(u32, u32), ConfigError> {
    let rate = rate.unwrap_or(0);
    if rate > 1_000_000 {
        return Err(ConfigError::new(
            "xmpp.rate_limit_per_jid",
            "must be at most 1000000 (0 = no limit)",
        ));
    }
    let burst = burst.unwrap_or(rate.saturating_mul(4));
    if rate > 0 && burst < rate {
        return Err(ConfigError::new(
            "xmpp.rate_burst_per_jid",
            format!("must be at least xmpp.rate_limit_per_jid ({rate})"),
        ));
    }
    Ok((rate, burst.min(10_000_000)))
}

/// `sip.trusted_peers` and the per-source limits. A rate of 0 turns that limit off; a
/// burst below the rate would refuse an ordinary peer's first second, so it is refused.
fn validate_trust(
    peers: &[String],
    [rate_limit, rate_burst, subscribe_rate, subscribe_burst]: [Option<u32>; 4],
) -> Result<crate::sip::trust::TrustConfig, ConfigError> {
    let mut trusted_peers = Vec::new();
    for (i, p) in peers.iter().enumerate() {
        let c = p
            .parse()
            .map_err(|e: String| ConfigError::invalid(format!("sip.trusted_peers[{i}]"), p, e))?;
        trusted_peers.push(c);
    }
    let pair =
        |rate_key: &str, burst_key: &str, rate: Option<u32>, burst: Option<u32>, d: (u32, u32)| {
            let rate = rate.unwrap_or(d.0);
            let burst = burst.unwrap_or(if rate == 0 { 0 } else { d.1.max(rate) });
            if rate > 1_000_000 {
                return Err(ConfigError::new(
                    rate_key,
                    "must be at most 1000000 (0 = no limit)",
                ));
            }
            if rate > 0 && burst < rate {
                return Err(ConfigError::new(
                    burst_key,
                    format!("must be at least {rate_key} ({rate})"),
                ));
            }
            Ok((rate, burst.min(10_000_000)))
        };
    let (rate, burst) = pair(
        "sip.rate_limit",
        "sip.rate_burst",
        rate_limit,
        rate_burst,
        (100, 400),
    )?;
    let (subscribe_rate, subscribe_burst) = pair(
        "sip.subscribe_rate_per_domain",
        "sip.subscribe_burst_per_domain",
        subscribe_rate,
        subscribe_burst,
        (10, 50),
    )?;
    Ok(crate::sip::trust::TrustConfig {
        trusted_peers,
        own_domains: Vec::new(),
        rate,
        burst,
        subscribe_rate,
        subscribe_burst,
    })
}

fn validate_msrp(raw: RawMsrp, have_tls: bool) -> Result<MsrpConfig, ConfigError> {
    let addr = |key: &str, v: Option<&str>, example: &str| match v.map(str::trim) {
        None => Ok(None),
        Some(l) => l.parse::<SocketAddr>().map(Some).map_err(|_| {
            ConfigError::invalid(key, l, format!("expected IP:PORT, e.g. \"{example}\""))
        }),
    };
    let listen = addr("msrp.listen", raw.listen.as_deref(), "192.0.2.1:2855")?;
    let tls_listen = addr(
        "msrp.tls_listen",
        raw.tls_listen.as_deref(),
        "192.0.2.1:2856",
    )?;
    if let Some(t) = tls_listen {
        if listen.is_none() {
            return Err(ConfigError::new(
                "msrp.tls_listen",
                "needs msrp.listen (chat sessions are on only with it)",
            ));
        }
        if !have_tls {
            return Err(ConfigError::new(
                "msrp.tls_listen",
                "needs [sip.tls] with a certificate and private_key (the msrps listener presents it)",
            ));
        }
        if listen == Some(t) {
            return Err(ConfigError::invalid(
                "msrp.tls_listen",
                &t.to_string(),
                "is msrp.listen too",
            ));
        }
    }
    if raw.prefer_tls && tls_listen.is_none() {
        return Err(ConfigError::new("msrp.prefer_tls", "needs msrp.tls_listen"));
    }
    let advertise = match raw.advertise.map(|a| a.trim().to_string()) {
        None => None,
        Some(a) => {
            let ipv6 = a.parse::<std::net::Ipv6Addr>().is_ok();
            if a.is_empty() || a.contains([' ', '\t', '/', ';', '@']) || (a.contains(':') && !ipv6)
            {
                return Err(ConfigError::invalid(
                    "msrp.advertise",
                    &a,
                    "expected a host name or IP address",
                ));
            }
            Some(a)
        }
    };
    for (key, l) in [("msrp.listen", listen), ("msrp.tls_listen", tls_listen)] {
        if l.is_some_and(|l| l.ip().is_unspecified()) && advertise.is_none() {
            return Err(ConfigError::new(
                "msrp.advertise",
                format!("is required when {key} is an unspecified address (0.0.0.0 or [::])"),
            ));
        }
    }
    let d = MsrpConfig::default();
    let max_connections = raw.max_connections.unwrap_or(d.max_connections);
    if !(1..=1_000_000).contains(&max_connections) {
        return Err(ConfigError::new(
            "msrp.max_connections",
            "must be between 1 and 1000000",
        ));
    }
    let max_connections_per_address = raw
        .max_connections_per_address
        .unwrap_or(d.max_connections_per_address);
    if !(1..=1_000_000).contains(&max_connections_per_address) {
        return Err(ConfigError::new(
            "msrp.max_connections_per_address",
            "must be between 1 and 1000000",
        ));
    }
    let first_request_timeout_ms = raw
        .first_request_timeout_ms
        .unwrap_or(d.first_request_timeout_ms);
    if !(100..=600_000).contains(&first_request_timeout_ms) {
        return Err(ConfigError::new(
            "msrp.first_request_timeout_ms",
            "must be between 100 and 600000",
        ));
    }
    Ok(MsrpConfig {
        listen,
        advertise,
        tls_listen,
        prefer_tls: raw.prefer_tls,
        max_connections,
        max_connections_per_address,
        first_request_timeout_ms,
    })
}

fn validate_runtime(raw: RawRuntime) -> Result<RuntimeConfig, ConfigError> {
    let worker_threads = raw
        .worker_threads
        .unwrap_or(RuntimeConfig::default().worker_threads);
    if !(1..=1024).contains(&worker_threads) {
        return Err(ConfigError::new(
            "runtime.worker_threads",
            "must be between 1 and 1024",
        ));
    }
    Ok(RuntimeConfig { worker_threads })
}

fn validate_chat(raw: RawChat) -> Result<ChatConfig, ConfigError> {
    let d = ChatConfig::default();
    let at_least = |key: &str, v: u64, min: u64| -> Result<u64, ConfigError> {
        if v < min {
            Err(ConfigError::new(key, format!("must be at least {min}")))
        } else {
            Ok(v)
        }
    };
    let max_sessions = at_least(
        "chat.max_sessions",
        raw.max_sessions.unwrap_or(d.max_sessions) as u64,
        1,
    )? as usize;
    let per_user = at_least(
        "chat.max_sessions_per_user",
        raw.max_sessions_per_user.unwrap_or(d.max_sessions_per_user) as u64,
        1,
    )? as usize;
    let chunk_size = raw.chunk_size.unwrap_or(d.chunk_size);
    if !(64..=1024 * 1024).contains(&chunk_size) {
        return Err(ConfigError::new(
            "chat.chunk_size",
            "must be between 64 and 1048576 bytes",
        ));
    }
    let answer = match raw.answer.as_deref().map(str::trim) {
        None | Some("always") => ChatAnswer::Always,
        Some("when_available") => ChatAnswer::WhenAvailable,
        Some(other) => {
            return Err(ConfigError::invalid(
                "chat.answer",
                other,
                "expected \"always\" or \"when_available\"",
            ))
        }
    };
    Ok(ChatConfig {
        answer,
        max_sessions,
        max_sessions_per_user: per_user,
        idle_timeout_ms: at_least(
            "chat.idle_timeout_ms",
            raw.idle_timeout_ms.unwrap_or(d.idle_timeout_ms),
            1000,
        )?,
        setup_timeout_ms: at_least(
            "chat.setup_timeout_ms",
            raw.setup_timeout_ms.unwrap_or(d.setup_timeout_ms),
            1000,
        )?,
        fallback_ms: raw.fallback_ms.unwrap_or(d.fallback_ms),
        max_message_size: at_least(
            "chat.max_message_size",
            raw.max_message_size.unwrap_or(d.max_message_size) as u64,
            1024,
        )? as usize,
        chunk_size,
    })
}

fn validate_presence(raw: RawPresence) -> Result<PresenceConfig, ConfigError> {
    let expires = raw.expires.unwrap_or(3600);
    if !(60..=604_800).contains(&expires) {
        return Err(ConfigError::new(
            "presence.expires",
            "must be between 60 and 604800 seconds",
        ));
    }
    let min_expires = raw.min_expires.unwrap_or(60);
    let max_expires = raw.max_expires.unwrap_or(86_400);
    if min_expires == 0 || min_expires > max_expires {
        return Err(ConfigError::new(
            "presence.min_expires",
            "must be at least 1 and at most presence.max_expires",
        ));
    }
    let mut exempt = Vec::new();
    for (i, d) in raw.probe_exempt_domains.iter().enumerate() {
        let d = d.trim().to_ascii_lowercase();
        check_domain(&format!("presence.probe_exempt_domains[{i}]"), &d)?;
        exempt.push(d);
    }
    let on_sip_end = match raw.on_sip_end.as_deref().map(str::trim) {
        None | Some("keep") => OnSipEnd::Keep,
        Some("unsubscribe") => OnSipEnd::Unsubscribe,
        Some(other) => {
            return Err(ConfigError::invalid(
                "presence.on_sip_end",
                other,
                "expected \"keep\" or \"unsubscribe\"",
            ))
        }
    };
    let probe_timeout_ms = raw.probe_timeout_ms.unwrap_or(10_000);
    if !(100..=300_000).contains(&probe_timeout_ms) {
        return Err(ConfigError::new(
            "presence.probe_timeout_ms",
            "must be between 100 and 300000",
        ));
    }
    let min_refresh_s = raw.min_refresh_s.unwrap_or(60);
    if min_refresh_s == 0 || min_refresh_s > expires {
        return Err(ConfigError::new(
            "presence.min_refresh_s",
            "must be at least 1 and at most presence.expires",
        ));
    }
    Ok(PresenceConfig {
        expires,
        max_expires,
        min_expires,
        max_per_user: raw.max_per_user.unwrap_or(1000),
        max_total: raw.max_total.unwrap_or(200_000),
        probe_timeout_ms,
        probe_exempt_domains: exempt,
        seen_window_s: raw.seen_window_s.unwrap_or(7 * 86_400),
        retry_ms: raw.retry_ms.unwrap_or(60_000).max(100),
        min_refresh_s,
        on_sip_end,
    })
}

fn validate_credentials(raw: Vec<RawCredential>) -> Result<Vec<Credential>, ConfigError> {
    let mut out: Vec<Credential> = Vec::new();
    for (i, c) in raw.into_iter().enumerate() {
        let key = |field: &str| format!("sip.credentials[{i}].{field}");
        let realm = c.realm.trim().to_string();
        if realm.is_empty() {
            return Err(ConfigError::new(key("realm"), "is empty"));
        }
        if realm.chars().any(|c| c.is_control()) {
            return Err(ConfigError::new(
                key("realm"),
                "must not contain control characters",
            ));
        }
        if out.iter().any(|o| o.realm.eq_ignore_ascii_case(&realm)) {
            return Err(ConfigError::invalid(key("realm"), &realm, "listed twice"));
        }
        if c.username.is_empty() {
            return Err(ConfigError::new(key("username"), "is empty"));
        }
        if c.username.chars().any(|c| c.is_control()) {
            return Err(ConfigError::new(
                key("username"),
                "must not contain control characters",
            ));
        }
        if c.password.expose().is_empty() {
            return Err(ConfigError::new(key("password"), "is empty"));
        }
        out.push(Credential {
            realm,
            username: c.username,
            password: c.password,
        });
    }
    Ok(out)
}

fn validate_register(r: RawRegister) -> Result<RegisterConfig, ConfigError> {
    let registrar = r.registrar.trim().to_string();
    check_next_hop("sip.register.registrar", &registrar)?;
    if matches!(crate::sip::uri_user(&registrar), Ok(Some(_))) {
        return Err(ConfigError::invalid(
            "sip.register.registrar",
            &registrar,
            "a registrar URI has no user part (RFC 3261 10.2), e.g. sip:registrar.example.net",
        ));
    }
    let aor = r.aor.trim().to_string();
    let has_user = matches!(crate::sip::uri_user(&aor), Ok(Some(u)) if !u.is_empty());
    if !has_user || aor.chars().any(|c| c.is_control() || c == '<' || c == '>') {
        return Err(ConfigError::invalid(
            "sip.register.aor",
            &aor,
            "expected a SIP URI with a user part, e.g. sip:gateway@example.net",
        ));
    }
    if !(1..=604_800).contains(&r.expires) {
        return Err(ConfigError::new(
            "sip.register.expires",
            "must be between 1 and 604800 seconds",
        ));
    }
    Ok(RegisterConfig {
        registrar,
        aor,
        expires: r.expires,
    })
}

fn check_domain(key: &str, d: &str) -> Result<(), ConfigError> {
    let ok = !d.is_empty()
        && d.len() <= 253
        && d.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        });
    if ok {
        Ok(())
    } else {
        Err(ConfigError::invalid(key, d, "not a domain name"))
    }
}

fn check_host_port(key: &str, s: &str) -> Result<(), ConfigError> {
    if s.parse::<SocketAddr>().is_ok() {
        return Ok(());
    }
    match s.rsplit_once(':') {
        Some((host, port)) if port.parse::<u16>().map(|p| p > 0).unwrap_or(false) => {
            check_domain(key, host).map_err(|_| ConfigError::invalid(key, s, "expected host:port"))
        }
        _ => Err(ConfigError::invalid(key, s, "expected host:port")),
    }
}

fn check_host_port_optional(key: &str, s: &str) -> Result<(), ConfigError> {
    if s.parse::<std::net::IpAddr>().is_ok() || check_domain(key, s).is_ok() {
        return Ok(());
    }
    if let Some(inner) = s.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
        if inner.parse::<std::net::Ipv6Addr>().is_ok() {
            return Ok(());
        }
    }
    check_host_port(key, s).map_err(|_| ConfigError::invalid(key, s, "expected host or host:port"))
}

fn check_next_hop(key: &str, uri: &str) -> Result<(), ConfigError> {
    crate::sip::NextHop::parse(uri)
        .map(|_| ())
        .map_err(|e| ConfigError::invalid(key, uri, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
[xmpp]
jid = "sip.example.com"
server = "127.0.0.1:5347"
secret = "s3cret"
domains = ["example.com"]
"#;

    fn err(text: &str) -> String {
        Config::parse(text).unwrap_err().to_string()
    }

    #[test]
    fn a_minimal_config_takes_the_defaults() {
        let c = Config::parse(MINIMAL).unwrap();
        assert_eq!(c.xmpp.jid, "sip.example.com");
        assert_eq!(c.sip.domains, vec!["example.com"]);
        assert_eq!(c.sip.listen.len(), 2);
        assert_eq!(c.sip.timers, Timers::default());
        assert!(c.dns.nameservers.is_empty());
    }

    #[test]
    fn the_secret_never_shows_in_debug_output() {
        let c = Config::parse(MINIMAL).unwrap();
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("s3cret"), "{dbg}");
        assert!(dbg.contains("<redacted>"));
    }

    #[test]
    fn a_missing_secret_names_the_key() {
        let text = MINIMAL.replace("secret = \"s3cret\"\n", "");
        assert_eq!(err(&text), "xmpp.secret: is missing");
    }

    #[test]
    fn an_unknown_key_names_the_key() {
        let text = format!("{MINIMAL}colour = 1\n");
        let e = err(&text);
        assert!(e.starts_with("xmpp.colour: is not a known key"), "{e}");
        let e = err(&format!("{MINIMAL}[sip]\nlisten_on = []\n"));
        assert!(e.starts_with("sip.listen_on: is not a known key"), "{e}");
    }

    #[test]
    fn an_unparsable_listen_address_names_the_key() {
        let text =
            format!("{MINIMAL}[sip]\nlisten = [\"udp:127.0.0.1:5060\", \"udp:1.2.3:5060\"]\n");
        let e = err(&text);
        assert!(
            e.starts_with("sip.listen[1]: \"udp:1.2.3:5060\" is not valid"),
            "{e}"
        );
        let e = err(&format!(
            "{MINIMAL}[sip]\nlisten = [\"sctp:127.0.0.1:5060\"]\n"
        ));
        assert!(e.contains("unknown transport"), "{e}");
    }

    #[test]
    fn a_wrong_type_names_the_key() {
        let text = MINIMAL.replace("domains = [\"example.com\"]", "domains = \"example.com\"");
        let e = err(&text);
        assert!(e.starts_with("xmpp.domains: "), "{e}");
    }

    #[test]
    fn invalid_toml_is_one_line_with_the_line_number() {
        let e = err("[xmpp]\njid = \n");
        assert!(e.starts_with("line 2: invalid TOML"), "{e}");
        assert!(!e.contains('\n'));
    }

    #[test]
    fn every_error_is_a_single_line() {
        for text in [
            "",
            "[xmpp]",
            "x",
            "[xmpp]\njid=1",
            &MINIMAL.replace("127.0.0.1:5347", "nope"),
            &format!("{MINIMAL}[dns]\nnameservers = [\"127.0.0.1\"]\n"),
            &format!("{MINIMAL}[sip]\ndomains = [\"a.example\", \"b.example\"]\n"),
            &format!("{MINIMAL}[sip]\nroutes = {{ \"sip.test\" = \"http://x\" }}\n"),
            &format!("{MINIMAL}[sip]\nlisten = [\"udp:0.0.0.0:5060\"]\n"),
        ] {
            let e = err(text);
            assert!(!e.contains('\n'), "{e}");
            assert!(e.contains(": "), "{e}");
        }
    }

    #[test]
    fn sip_domains_must_pair_with_xmpp_domains() {
        let e = err(&format!(
            "{MINIMAL}[sip]\ndomains = [\"a.example\", \"b.example\"]\n"
        ));
        assert!(e.starts_with("sip.domains: has 2 entries"), "{e}");
    }

    #[test]
    fn routes_and_proxy_are_checked() {
        let c = Config::parse(&format!(
            "{MINIMAL}[sip]\noutbound_proxy = \"sip:proxy.example.net;transport=tcp\"\nroutes = {{ \"Sip.Test\" = \"sip:127.0.0.1:5070\" }}\n"
        ))
        .unwrap();
        assert_eq!(c.sip.routes.get("sip.test").unwrap(), "sip:127.0.0.1:5070");
        let e = err(&format!(
            "{MINIMAL}[sip]\nroutes = {{ \"sip.test\" = \"mailto:x@y\" }}\n"
        ));
        assert!(e.starts_with("sip.routes.sip.test: "), "{e}");
    }

    #[test]
    fn the_unspecified_address_needs_advertise() {
        let e = err(&format!(
            "{MINIMAL}[sip]\nlisten = [\"udp:0.0.0.0:5060\"]\n"
        ));
        assert!(e.starts_with("sip.advertise: is required"), "{e}");
        Config::parse(&format!(
            "{MINIMAL}[sip]\nlisten = [\"udp:0.0.0.0:5060\"]\nadvertise = \"gw.example.com\"\n"
        ))
        .unwrap();
    }

    fn tls_table(dir: &Path) -> String {
        let pki = crate::sip::tls::test_pki::Pki::new("stox test CA");
        let leaf = pki.leaf(dir, "leaf", &["localhost", "127.0.0.1"]);
        let ca = pki.write_ca(dir);
        format!(
            "[sip.tls]\ncertificate = {:?}\nprivate_key = {:?}\nca_file = {:?}\n",
            leaf.cert, leaf.key, ca
        )
    }

    #[test]
    fn a_tls_listener_takes_its_certificate_from_sip_tls() {
        let dir = tempfile::tempdir().unwrap();
        let c = Config::parse(&format!(
            "{MINIMAL}[sip]\nlisten = [\"tls:127.0.0.1:5061\", \"tcp:[::1]:5060\"]\n{}",
            tls_table(dir.path())
        ))
        .unwrap();
        assert_eq!(c.sip.listen[0].transport, ListenTransport::Tls);
        let tls = c.sip.tls.unwrap();
        assert!(tls.verify_peer_name);
        assert!(tls.ca_file.is_some());
        assert_eq!(c.sip.idle_timeout_ms, 300_000);
        assert_eq!(c.sip.max_connections, 1000);
    }

    #[test]
    fn an_msrps_listener_takes_the_certificate_of_sip_tls() {
        let dir = tempfile::tempdir().unwrap();
        let c = Config::parse(&format!(
            "{MINIMAL}[msrp]\nlisten = \"127.0.0.1:2855\"\ntls_listen = \"[::1]:2856\"\nprefer_tls = true\n{}",
            tls_table(dir.path())
        ))
        .unwrap();
        assert_eq!(c.msrp.tls_listen, Some("[::1]:2856".parse().unwrap()));
        assert!(c.msrp.prefer_tls);
        let e = Config::parse(&format!(
            "{MINIMAL}[msrp]\ntls_listen = \"127.0.0.1:2856\"\n{}",
            tls_table(dir.path())
        ))
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("msrp.tls_listen: needs msrp.listen"), "{e}");
    }

    #[test]
    fn a_tls_listener_without_a_certificate_names_sip_tls_certificate() {
        let e = err(&format!(
            "{MINIMAL}[sip]\nlisten = [\"udp:127.0.0.1:5060\", \"tls:127.0.0.1:5061\"]\n"
        ));
        assert!(e.starts_with("sip.tls.certificate: is missing"), "{e}");
        assert!(e.contains("sip.listen[1]"), "{e}");
        let e = err(&format!(
            "{MINIMAL}[sip.tls]\nprivate_key = \"/etc/stox/key.pem\"\n"
        ));
        assert_eq!(e, "sip.tls.certificate: is missing");
        let e = err(&format!(
            "{MINIMAL}[sip.tls]\ncertificate = \"/c\"\nprivate_key = \"/k\"\nca = \"/x\"\n"
        ));
        assert!(e.starts_with("sip.tls.ca: is not a known key"), "{e}");
    }

    #[test]
    fn an_unreadable_certificate_names_the_key_and_the_path() {
        let e = err(&format!(
            "{MINIMAL}[sip.tls]\ncertificate = \"/nonexistent/cert.pem\"\nprivate_key = \"/nonexistent/key.pem\"\n"
        ));
        assert!(
            e.starts_with(
                "sip.tls.certificate: \"/nonexistent/cert.pem\" is not valid: cannot read it"
            ),
            "{e}"
        );
        assert!(!e.contains('\n'), "{e}");
    }

    #[test]
    fn connection_limits_are_checked() {
        let c = Config::parse(&format!(
            "{MINIMAL}[sip]\nidle_timeout_ms = 5000\nmax_connections = 10\n"
        ))
        .unwrap();
        assert_eq!((c.sip.idle_timeout_ms, c.sip.max_connections), (5000, 10));
        let e = err(&format!("{MINIMAL}[sip]\nidle_timeout_ms = 10\n"));
        assert!(e.starts_with("sip.idle_timeout_ms: "), "{e}");
        let e = err(&format!("{MINIMAL}[sip]\nmax_connections = 0\n"));
        assert!(e.starts_with("sip.max_connections: "), "{e}");
    }

    #[test]
    fn stream_and_transaction_bounds_have_safe_defaults_and_are_checked() {
        let c = Config::parse(MINIMAL).unwrap();
        assert_eq!(c.sip.max_connections_per_address, 100);
        assert_eq!(c.sip.read_timeout_ms, 30_000);
        assert_eq!(c.sip.write_timeout_ms, 10_000);
        assert_eq!(c.sip.max_server_transactions, 1_000_000);
        let c = Config::parse(&format!(
            "{MINIMAL}[sip]\nmax_connections_per_address = 3\nread_timeout_ms = 2000\nwrite_timeout_ms = 1000\nmax_server_transactions = 10\n"
        ))
        .unwrap();
        assert_eq!(
            (
                c.sip.max_connections_per_address,
                c.sip.read_timeout_ms,
                c.sip.write_timeout_ms,
                c.sip.max_server_transactions
            ),
            (3, 2000, 1000, 10)
        );
        for (key, value) in [
            ("max_connections_per_address", "0"),
            ("read_timeout_ms", "10"),
            ("write_timeout_ms", "0"),
            ("max_server_transactions", "0"),
        ] {
            let e = err(&format!("{MINIMAL}[sip]\n{key} = {value}\n"));
            assert!(e.starts_with(&format!("sip.{key}: ")), "{e}");
        }
    }

    #[test]
    fn runtime_worker_threads_defaults_to_one_and_is_checked() {
        let base = "[xmpp]\njid = \"sip.example.com\"\nserver = \"127.0.0.1:5347\"\nsecret = \"s\"\ndomains = [\"example.com\"]\n";
        assert_eq!(Config::parse(base).unwrap().runtime.worker_threads, 1);
        let c = Config::parse(&format!("{base}[runtime]\nworker_threads = 2\n")).unwrap();
        assert_eq!(c.runtime.worker_threads, 2);
        let e = Config::parse(&format!("{base}[runtime]\nworker_threads = 0\n"))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("runtime.worker_threads: "), "{e}");
        let e = Config::parse(&format!("{base}[runtime]\nworkers = 2\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("workers"), "{e}");
    }

    #[test]
    fn msrp_listener_bounds_have_safe_defaults_and_are_checked() {
        let base = "[xmpp]\njid = \"sip.example.com\"\nserver = \"127.0.0.1:5347\"\nsecret = \"s\"\ndomains = [\"example.com\"]\n";
        let c = Config::parse(base).unwrap();
        assert_eq!(c.msrp.max_connections, 2048);
        assert_eq!(c.msrp.max_connections_per_address, 256);
        assert_eq!(c.msrp.first_request_timeout_ms, 5000);
        let c = Config::parse(&format!(
            "{base}[msrp]\nmax_connections = 16\nmax_connections_per_address = 4\nfirst_request_timeout_ms = 1500\n"
        ))
        .unwrap();
        assert_eq!(c.msrp.max_connections, 16);
        assert_eq!(c.msrp.max_connections_per_address, 4);
        assert_eq!(c.msrp.first_request_timeout_ms, 1500);
        for (bad, key) in [
            ("max_connections = 0", "msrp.max_connections: "),
            (
                "max_connections_per_address = 0",
                "msrp.max_connections_per_address: ",
            ),
            (
                "first_request_timeout_ms = 10",
                "msrp.first_request_timeout_ms: ",
            ),
        ] {
            let e = Config::parse(&format!("{base}[msrp]\n{bad}\n"))
                .unwrap_err()
                .to_string();
            assert!(e.starts_with(key), "{e}");
        }
    }

    #[test]
    fn msrp_and_chat_keys_are_checked() {
        let base = "[xmpp]\njid = \"sip.example.com\"\nserver = \"127.0.0.1:5347\"\nsecret = \"s\"\ndomains = [\"example.com\"]\n";
        let c = Config::parse(base).unwrap();
        assert!(c.msrp.listen.is_none());
        assert_eq!(c.chat.chunk_size, 16384);
        assert_eq!(c.chat.answer, ChatAnswer::Always);
        let c = Config::parse(&format!(
            "{base}[msrp]\nlisten = \"127.0.0.1:2855\"\n[chat]\nidle_timeout_ms = 5000\n"
        ))
        .unwrap();
        assert_eq!(c.msrp.listen, Some("127.0.0.1:2855".parse().unwrap()));
        assert_eq!(c.chat.idle_timeout_ms, 5000);
        let e = Config::parse(&format!("{base}[msrp]\nlisten = \"nowhere\"\n"))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("msrp.listen: "), "{e}");
        let e = Config::parse(&format!("{base}[msrp]\nlisten = \"0.0.0.0:2855\"\n"))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("msrp.advertise: "), "{e}");
        let e = Config::parse(&format!(
            "{base}[msrp]\nlisten = \"127.0.0.1:2855\"\ntls_listen = \"127.0.0.1:2856\"\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("msrp.tls_listen: needs [sip.tls]"), "{e}");
        let e = Config::parse(&format!("{base}[msrp]\ntls_listen = \"x\"\n"))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("msrp.tls_listen: \"x\" is not valid"), "{e}");
        let e = Config::parse(&format!(
            "{base}[msrp]\nlisten = \"127.0.0.1:2855\"\nprefer_tls = true\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("msrp.prefer_tls: needs msrp.tls_listen"),
            "{e}"
        );
        let e = Config::parse(&format!("{base}[chat]\nchunk_size = 1\n"))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("chat.chunk_size: "), "{e}");
        let e = Config::parse(&format!("{base}[chat]\nanswer = \"sometimes\"\n"))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("chat.answer"), "{e}");
        let c = Config::parse(&format!("{base}[chat]\nanswer = \"when_available\"\n")).unwrap();
        assert_eq!(c.chat.answer, ChatAnswer::WhenAvailable);
        let e = Config::parse(&format!("{base}[chat]\nmax_session = 1\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("chat.max_session"), "{e}");
    }

    #[test]
    fn trust_keys_default_safe_and_name_the_bad_key() {
        let base = "[xmpp]\njid = \"sip.example.com\"\nserver = \"127.0.0.1:5347\"\nsecret = \"s\"\ndomains = [\"example.com\"]\n";
        let t = Config::parse(base).unwrap().sip.trust;
        assert!(t.trusted_peers.is_empty(), "nobody trusted by default");
        assert_eq!((t.rate, t.burst), (100, 400));
        assert_eq!((t.subscribe_rate, t.subscribe_burst), (10, 50));
        assert_eq!(t.own_domains, vec!["example.com".to_string()]);
        let x = Config::parse(base).unwrap().xmpp;
        assert_eq!(
            x.rate_limit_per_jid, 0,
            "the per-JID limit is off by default"
        );
        let x = Config::parse(&base.replace("domains = ", "rate_limit_per_jid = 5\ndomains = "))
            .unwrap()
            .xmpp;
        assert_eq!((x.rate_limit_per_jid, x.rate_burst_per_jid), (5, 20));
        let e = Config::parse(&base.replace(
            "domains = ",
            "rate_limit_per_jid = 5\nrate_burst_per_jid = 1\ndomains = ",
        ))
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("xmpp.rate_burst_per_jid: "), "{e}");
        let t = Config::parse(&format!(
            "{base}[sip]\ntrusted_peers = [\"10.0.0.0/8\", \"::1\"]\nrate_limit = 0\n"
        ))
        .unwrap()
        .sip
        .trust;
        assert_eq!(t.trusted_peers.len(), 2);
        assert_eq!(t.rate, 0, "0 turns the limit off");
        for (extra, key) in [
            ("trusted_peers = [\"10.0.0.1/8\"]", "sip.trusted_peers[0]: "),
            (
                "trusted_peers = [\"proxy.example.net\"]",
                "sip.trusted_peers[0]: ",
            ),
            ("rate_limit = 10\nrate_burst = 5", "sip.rate_burst: "),
            (
                "subscribe_rate_per_domain = 2000000",
                "sip.subscribe_rate_per_domain: ",
            ),
        ] {
            let e = Config::parse(&format!("{base}[sip]\n{extra}\n"))
                .unwrap_err()
                .to_string();
            assert!(e.starts_with(key), "{extra}: {e}");
        }
    }

    #[test]
    fn presence_and_store_keys_are_checked() {
        let base = "[xmpp]\njid = \"sip.example.com\"\nserver = \"127.0.0.1:5347\"\nsecret = \"s\"\ndomains = [\"example.com\"]\n";
        let c = Config::parse(base).unwrap();
        assert_eq!(c.presence.expires, 3600);
        assert_eq!(c.store.path, std::path::PathBuf::from("stox.db"));
        let e = Config::parse(&format!("{base}[presence]\nexpires = 5\n"))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("presence.expires: "), "{e}");
        assert_eq!(c.presence.min_refresh_s, 60);
        let e = Config::parse(&format!("{base}[presence]\nmin_refresh_s = 0\n"))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("presence.min_refresh_s: "), "{e}");
        let e = Config::parse(&format!("{base}[presence]\non_sip_end = \"drop\"\n"))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("presence.on_sip_end"), "{e}");
        let e = Config::parse(&format!("{base}[store]\nfile = \"x\"\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("store.file"), "{e}");
    }

    const CREDENTIALS: &str = r#"
[[sip.credentials]]
realm = "proxy.example.net"
username = "stox"
password = "pr0xy-pw"

[[sip.credentials]]
realm = "registrar.example.net"
username = "gw"
password = "reg-pw"
"#;

    #[test]
    fn allowed_destinations_are_cidr_blocks_and_none_by_default() {
        assert!(Config::parse(MINIMAL)
            .unwrap()
            .sip
            .allowed_destinations
            .is_empty());
        let c = Config::parse(&format!(
            "{MINIMAL}[sip]\nallowed_destinations = [\"127.0.0.0/8\", \"::1\"]\n"
        ))
        .unwrap();
        let shown: Vec<String> = c
            .sip
            .allowed_destinations
            .iter()
            .map(|c| c.to_string())
            .collect();
        assert_eq!(shown, ["127.0.0.0/8", "::1/128"]);
        let e = err(&format!(
            "{MINIMAL}[sip]\nallowed_destinations = [\"10.0.0.0/8\", \"10.0.0.0/40\"]\n"
        ));
        assert!(
            e.starts_with("sip.allowed_destinations[1]: \"10.0.0.0/40\" is not valid: "),
            "{e}"
        );
    }

    #[test]
    fn credentials_are_read_per_realm_and_the_password_is_redacted() {
        let c = Config::parse(&format!("{MINIMAL}{CREDENTIALS}")).unwrap();
        assert_eq!(c.sip.credentials.len(), 2);
        assert_eq!(c.sip.credentials[1].realm, "registrar.example.net");
        assert_eq!(c.sip.credentials[1].username, "gw");
        assert_eq!(c.sip.credentials[1].password.expose(), "reg-pw");
        let dbg = format!("{c:?}");
        assert!(
            !dbg.contains("pr0xy-pw") && !dbg.contains("reg-pw"),
            "{dbg}"
        );
        assert!(Config::parse(MINIMAL).unwrap().sip.credentials.is_empty());
    }

    #[test]
    fn credential_errors_name_the_key() {
        let e = err(&format!(
            "{MINIMAL}[[sip.credentials]]\nrealm = \"r\"\nusername = \"u\"\n"
        ));
        assert_eq!(e, "sip.credentials[0].password: is missing");
        let e = err(&format!(
            "{MINIMAL}[[sip.credentials]]\nrealm = \"r\"\nusername = \"u\"\npassword = \"\"\n"
        ));
        assert_eq!(e, "sip.credentials[0].password: is empty");
        let e = err(&format!(
            "{MINIMAL}{CREDENTIALS}\n[[sip.credentials]]\nrealm = \"Proxy.example.net\"\nusername = \"u\"\npassword = \"p\"\n"
        ));
        assert_eq!(
            e,
            "sip.credentials[2].realm: \"Proxy.example.net\" is not valid: listed twice"
        );
        let e = err(&format!(
            "{MINIMAL}[[sip.credentials]]\nrealm = \"r\"\nusername = \"u\"\npassword = \"p\"\nuser = \"x\"\n"
        ));
        assert!(
            e.starts_with("sip.credentials[0].user: is not a known key"),
            "{e}"
        );
        // An error about a password never quotes it.
        let e = err(&format!(
            "{MINIMAL}[[sip.credentials]]\nrealm = \"r\"\nusername = \"u\"\npassword = 5\n"
        ));
        assert_eq!(
            e,
            "sip.credentials[0].password: must be a string (the value is not shown)"
        );
        let e = err(&MINIMAL.replace("\"s3cret\"", "31337"));
        assert!(!e.contains("31337"), "{e}");
    }

    #[test]
    fn register_takes_a_registrar_an_aor_and_a_default_expiry() {
        let c = Config::parse(&format!(
            "{MINIMAL}[sip.register]\nregistrar = \"sip:registrar.example.net;transport=tcp\"\naor = \"sip:gw@example.net\"\n"
        ))
        .unwrap();
        let r = c.sip.register.unwrap();
        assert_eq!(r.registrar, "sip:registrar.example.net;transport=tcp");
        assert_eq!(r.aor, "sip:gw@example.net");
        assert_eq!(r.expires, 3600);
        assert!(Config::parse(MINIMAL).unwrap().sip.register.is_none());
    }

    #[test]
    fn register_errors_name_the_key() {
        let reg = |body: &str| err(&format!("{MINIMAL}[sip.register]\n{body}"));
        assert_eq!(
            reg("aor = \"sip:gw@example.net\"\n"),
            "sip.register.registrar: is missing"
        );
        let e = reg("registrar = \"sip:gw@example.net\"\naor = \"sip:gw@example.net\"\n");
        assert!(e.starts_with("sip.register.registrar: \"sip:gw@example.net\" is not valid: a registrar URI has no user part"), "{e}");
        let e = reg("registrar = \"http://example.net\"\naor = \"sip:gw@example.net\"\n");
        assert!(e.starts_with("sip.register.registrar: "), "{e}");
        let e = reg("registrar = \"sip:example.net\"\naor = \"sip:example.net\"\n");
        assert!(
            e.starts_with("sip.register.aor: \"sip:example.net\" is not valid"),
            "{e}"
        );
        let e = reg("registrar = \"sip:example.net\"\naor = \"sip:gw@example.net\"\nexpires = 0\n");
        assert_eq!(
            e,
            "sip.register.expires: must be between 1 and 604800 seconds"
        );
        let e = reg("registrar = \"sip:example.net\"\naor = \"sip:gw@example.net\"\nexpire = 60\n");
        assert!(
            e.starts_with("sip.register.expire: is not a known key"),
            "{e}"
        );
    }

    #[test]
    fn an_unreadable_file_names_the_path() {
        let e = Config::load(Path::new("/nonexistent/stox.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("/nonexistent/stox.toml: cannot read"), "{e}");
    }
}

#[cfg(test)]
mod example_tests {
    #[test]
    fn the_shipped_component_toml_is_valid() {
        let text = include_str!("../component.toml");
        let c = super::Config::parse(text).unwrap();
        assert_eq!(c.xmpp.jid, "sip.localhost");
        assert_eq!(c.xmpp.domains, vec!["localhost"]);
    }
}
