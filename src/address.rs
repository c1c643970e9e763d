//! Address mapping between JIDs and SIP URIs: XEP-0106 escaping and RFC 7247 section 5.
//!
//! ```text
//!   XMPP user   juliet@example.com/balcony           <-> sip:juliet@example.com;gr=balcony
//!   SIP user    romeo\40example.net@sip.example.com  <-> sip:romeo@example.net
//!   phone       +15551234567@sip.example.com         <-> sip:+15551234567@<default_domain>;user=phone
//! ```
//!
//! JID localparts are case-folded by the XMPP server (nodeprep), so a SIP user part
//! survives the round trip through XMPP modulo case; everything else round-trips exactly.

use std::fmt;

use xmpp_parsers::jid::{BareJid, Jid};
use xmpp_parsers::stanza_error::DefinedCondition;

/// Why an address cannot be mapped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    #[error("malformed address: {0}")]
    Malformed(String),
    #[error("unsupported URI scheme {0:?}")]
    UnsupportedScheme(String),
    #[error("{0} is not a domain served by this gateway")]
    ForeignXmppDomain(String),
    #[error("{0} is not at this gateway")]
    NotGatewayJid(String),
    #[error("the JID has no localpart naming a SIP user")]
    NoLocalpart,
    #[error("{0:?} is neither an escaped SIP address (user\\40host) nor a phone number")]
    NotASipAddress(String),
    #[error("phone numbers need sip.default_domain to be configured")]
    PhoneWithoutDefaultDomain,
    #[error("{0} is served by this gateway: write to the XMPP user directly")]
    OwnDomain(String),
    #[error("{0} is not a SIP domain served by this gateway")]
    ForeignSipDomain(String),
    #[error("the SIP URI has no user part")]
    NoUser,
    #[error("not a valid JID: {0}")]
    InvalidJid(String),
}

impl AddressError {
    /// SIP status for a request whose address cannot map.
    pub fn sip_status(&self) -> u16 {
        match self {
            AddressError::Malformed(_) | AddressError::NotASipAddress(_) => 400,
            AddressError::UnsupportedScheme(_) => 416,
            AddressError::ForeignXmppDomain(_) => 403,
            AddressError::NoLocalpart | AddressError::NoUser => 484,
            AddressError::NotGatewayJid(_)
            | AddressError::PhoneWithoutDefaultDomain
            | AddressError::OwnDomain(_)
            | AddressError::ForeignSipDomain(_)
            | AddressError::InvalidJid(_) => 404,
        }
    }

    /// XMPP condition for a stanza whose address cannot map.
    pub fn xmpp_condition(&self) -> DefinedCondition {
        match self {
            AddressError::ForeignXmppDomain(_) => DefinedCondition::Forbidden,
            AddressError::NotGatewayJid(_)
            | AddressError::PhoneWithoutDefaultDomain
            | AddressError::OwnDomain(_)
            | AddressError::ForeignSipDomain(_) => DefinedCondition::ItemNotFound,
            AddressError::Malformed(_)
            | AddressError::UnsupportedScheme(_)
            | AddressError::NoLocalpart
            | AddressError::NotASipAddress(_)
            | AddressError::NoUser
            | AddressError::InvalidJid(_) => DefinedCondition::JidMalformed,
        }
    }
}

// ---------- XEP-0106 ----------

/// The XEP-0106 table: character and its escape code (lowercase hex).
const ESCAPES: [(char, &str); 10] = [
    (' ', "20"),
    ('"', "22"),
    ('&', "26"),
    ('\'', "27"),
    ('/', "2f"),
    (':', "3a"),
    ('<', "3c"),
    ('>', "3e"),
    ('@', "40"),
    ('\\', "5c"),
];

/// The character an escape code stands for. Case-insensitive because the XMPP server
/// case-folds localparts (nodeprep), turning `\2F` into `\2f` on its way.
fn code_char(a: char, b: char) -> Option<char> {
    let code = [a.to_ascii_lowercase(), b.to_ascii_lowercase()];
    ESCAPES.iter().find_map(|(c, hex)| {
        let mut h = hex.chars();
        (h.next() == Some(code[0]) && h.next() == Some(code[1])).then_some(*c)
    })
}

/// XEP-0106 escaping of an arbitrary string into a JID localpart: one left-to-right pass.
/// A `\` is escaped only where it would otherwise start an escape sequence.
pub fn escape(s: &str) -> String {
    let chars: Vec<char> = s.chars().collect();
    let mut out = String::with_capacity(s.len() + 8);
    for (i, &c) in chars.iter().enumerate() {
        if c == '\\' {
            let starts_code = match (chars.get(i + 1), chars.get(i + 2)) {
                (Some(&a), Some(&b)) => code_char(a, b).is_some(),
                _ => false,
            };
            if starts_code {
                out.push_str("\\5c");
            } else {
                out.push('\\');
            }
        } else if let Some((_, hex)) = ESCAPES.iter().find(|(e, _)| *e == c) {
            out.push('\\');
            out.push_str(hex);
        } else {
            out.push(c);
        }
    }
    out
}

/// Inverse of [`escape`]: one left-to-right pass; anything that is not an escape sequence
/// (a trailing `\`, `\z`, `\zz`) stays as it is. Never panics.
pub fn unescape(s: &str) -> String {
    let chars: Vec<char> = s.chars().collect();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '\\' {
            if let (Some(&a), Some(&b)) = (chars.get(i + 1), chars.get(i + 2)) {
                if let Some(ch) = code_char(a, b) {
                    out.push(ch);
                    i += 3;
                    continue;
                }
            }
        }
        out.push(c);
        i += 1;
    }
    out
}

// ---------- SIP URIs ----------

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UriScheme {
    Sip,
    Sips,
    Tel,
}

/// The parts of a SIP/SIPS/TEL/IM/PRES URI that address mapping needs, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SipAddress {
    pub scheme: UriScheme,
    /// %-decoded user part (for tel: the number).
    pub user: Option<String>,
    /// Lowercased domain, or an IP literal (IPv6 in brackets); empty for tel:.
    pub host: String,
    pub port: Option<u16>,
    /// %-decoded value of the `gr` URI parameter (RFC 5627).
    pub gruu: Option<String>,
    /// `;user=phone`
    pub user_phone: bool,
}

/// RFC 3261 `unreserved`.
fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-_.!~*'()".contains(&b)
}

fn percent_encode(s: &str, keep: impl Fn(u8) -> bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if keep(b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// RFC 3261 `user`: unreserved / user-unreserved, everything else escaped.
fn encode_user(s: &str) -> String {
    percent_encode(s, |b| is_unreserved(b) || b"&=+$,;?/".contains(&b))
}

/// RFC 3966 `telephone-subscriber` digits and separators; everything else escaped.
fn encode_tel(s: &str) -> String {
    percent_encode(s, |b| is_unreserved(b) || b"+&=$,/:".contains(&b))
}

/// RFC 3261 `paramchar`: param-unreserved / unreserved.
fn encode_param(s: &str) -> String {
    percent_encode(s, |b| is_unreserved(b) || b"[]/:&+$".contains(&b))
}

fn percent_decode(s: &str) -> Result<String, AddressError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| AddressError::Malformed(format!("bad %-escape in {s:?}")))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| AddressError::Malformed(format!("{s:?} is not UTF-8")))
}

fn is_domain(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// `host[:port]`: a domain, an IPv4 address or a bracketed IPv6 address.
fn parse_hostport(s: &str) -> Result<(String, Option<u16>), AddressError> {
    let bad = || AddressError::Malformed(format!("bad host {s:?}"));
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let end = rest.find(']').ok_or_else(bad)?;
        let v6 = &rest[..end];
        v6.parse::<std::net::Ipv6Addr>().map_err(|_| bad())?;
        let after = &rest[end + 1..];
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p),
            None if after.is_empty() => None,
            None => return Err(bad()),
        };
        (format!("[{}]", v6.to_ascii_lowercase()), port)
    } else {
        match s.split_once(':') {
            Some((h, p)) => (h.to_ascii_lowercase(), Some(p)),
            None => (s.to_ascii_lowercase(), None),
        }
    };
    if !host.starts_with('[') && host.parse::<std::net::Ipv4Addr>().is_err() && !is_domain(&host) {
        return Err(bad());
    }
    let port = match port {
        Some(p) => Some(
            p.parse::<u16>()
                .ok()
                .filter(|p| *p > 0 && !p.to_string().is_empty())
                .ok_or_else(bad)?,
        ),
        None => None,
    };
    Ok((host, port))
}

/// RFC 3966 global number: "+" then digits, visual separators allowed.
fn is_global_number(s: &str) -> bool {
    match s.strip_prefix('+') {
        Some(rest) => {
            rest.bytes().any(|b| b.is_ascii_digit())
                && rest
                    .bytes()
                    .all(|b| b.is_ascii_digit() || b"-.()".contains(&b))
        }
        None => false,
    }
}

impl SipAddress {
    /// Parses `sip:`, `sips:`, `im:`, `pres:` and `tel:` URIs, with or without `<>`.
    /// Other URI parameters and `?headers` are ignored. A SIP user part may hold `;` and
    /// `?`, so the userinfo ends at the last `@`.
    pub fn parse(uri: &str) -> Result<Self, AddressError> {
        let s = uri.trim();
        let s = s.strip_prefix('<').unwrap_or(s);
        let s = s.strip_suffix('>').unwrap_or(s).trim();
        let (scheme, rest) = s
            .split_once(':')
            .ok_or_else(|| AddressError::Malformed(format!("{uri:?} has no scheme")))?;
        let scheme = match scheme.to_ascii_lowercase().as_str() {
            "sip" | "im" | "pres" => UriScheme::Sip,
            "sips" => UriScheme::Sips,
            "tel" => UriScheme::Tel,
            other => return Err(AddressError::UnsupportedScheme(other.to_string())),
        };
        if scheme == UriScheme::Tel {
            let number = rest.split(';').next().unwrap_or("");
            let number = percent_decode(number)?;
            if number.is_empty() {
                return Err(AddressError::Malformed(format!("{uri:?} has no number")));
            }
            return Ok(SipAddress {
                scheme,
                user: Some(number),
                host: String::new(),
                port: None,
                gruu: None,
                user_phone: false,
            });
        }
        let (userinfo, hostpart) = match rest.rfind('@') {
            Some(at) => (Some(&rest[..at]), &rest[at + 1..]),
            None => (None, rest),
        };
        let user = match userinfo {
            Some(u) => {
                // user:password — the password is never used.
                let u = u.split_once(':').map(|(u, _)| u).unwrap_or(u);
                if u.is_empty() {
                    return Err(AddressError::Malformed(format!(
                        "{uri:?} has an empty user"
                    )));
                }
                Some(percent_decode(u)?)
            }
            None => None,
        };
        let hostpart = hostpart.split('?').next().unwrap_or("");
        let mut parts = hostpart.split(';');
        let (host, port) = parse_hostport(parts.next().unwrap_or(""))?;
        let mut gruu = None;
        let mut user_phone = false;
        for p in parts {
            let (name, value) = match p.split_once('=') {
                Some((n, v)) => (n.trim(), Some(v.trim())),
                None => (p.trim(), None),
            };
            if name.eq_ignore_ascii_case("gr") {
                // A valueless `gr` marks a temporary GRUU: the URI itself is the instance.
                gruu = match value {
                    Some(v) if !v.is_empty() => Some(percent_decode(v)?),
                    _ => None,
                };
            } else if name.eq_ignore_ascii_case("user") {
                user_phone = value.is_some_and(|v| v.eq_ignore_ascii_case("phone"));
            }
        }
        Ok(SipAddress {
            scheme,
            user,
            host,
            port,
            gruu,
            user_phone,
        })
    }

    /// `sip:user@host[:port][;user=phone][;gr=...]`, %-encoded per RFC 3261.
    pub fn to_uri_string(&self) -> String {
        if self.scheme == UriScheme::Tel {
            // %-encoded like a SIP user, `;` included: a number read from `tel:%3B...`
            // must not come back out with a parameter (or a `>`) it did not have.
            return format!("tel:{}", encode_tel(self.user.as_deref().unwrap_or("")));
        }
        let mut s = String::from(match self.scheme {
            UriScheme::Sips => "sips:",
            _ => "sip:",
        });
        if let Some(u) = &self.user {
            s.push_str(&encode_user(u));
            s.push('@');
        }
        s.push_str(&self.host);
        if let Some(p) = self.port {
            s.push_str(&format!(":{p}"));
        }
        if self.user_phone {
            s.push_str(";user=phone");
        }
        if let Some(g) = &self.gruu {
            s.push_str(";gr=");
            s.push_str(&encode_param(g));
        }
        s
    }

    /// The address-of-record: the same without the GRUU.
    pub fn aor(&self) -> SipAddress {
        SipAddress {
            gruu: None,
            ..self.clone()
        }
    }
}

impl fmt::Display for SipAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_uri_string())
    }
}

// ---------- The mapping ----------

/// The mapping of one gateway, built from config.
#[derive(Debug, Clone)]
pub struct AddressMap {
    component: String,
    /// (xmpp domain, sip domain), pairwise.
    domains: Vec<(String, String)>,
    default_domain: Option<String>,
}

fn jid(localpart: &str, domain: &str, resource: Option<&str>) -> Result<Jid, AddressError> {
    let bare = BareJid::new(&format!("{localpart}@{domain}"))
        .map_err(|e| AddressError::InvalidJid(format!("{localpart}@{domain}: {e}")))?;
    match resource {
        Some(r) => bare
            .with_resource_str(r)
            .map(Jid::from)
            .map_err(|e| AddressError::InvalidJid(format!("resource {r:?}: {e}"))),
        None => Ok(Jid::from(bare)),
    }
}

impl AddressMap {
    pub fn new(
        component: &str,
        xmpp_domains: &[String],
        sip_domains: &[String],
        default_domain: Option<&str>,
    ) -> Result<Self, AddressError> {
        if xmpp_domains.len() != sip_domains.len() {
            return Err(AddressError::Malformed(
                "xmpp and sip domain lists differ in length".into(),
            ));
        }
        Ok(AddressMap {
            component: component.to_ascii_lowercase(),
            domains: xmpp_domains
                .iter()
                .zip(sip_domains)
                .map(|(x, s)| (x.to_ascii_lowercase(), s.to_ascii_lowercase()))
                .collect(),
            default_domain: default_domain.map(str::to_ascii_lowercase),
        })
    }

    pub fn component(&self) -> &str {
        &self.component
    }

    pub fn is_local_xmpp_domain(&self, domain: &str) -> bool {
        self.domains
            .iter()
            .any(|(x, _)| x.eq_ignore_ascii_case(domain))
    }

    pub fn is_local_sip_domain(&self, domain: &str) -> bool {
        self.domains
            .iter()
            .any(|(_, s)| s.eq_ignore_ascii_case(domain))
    }

    /// The XMPP sender, a user of `xmpp.domains`: juliet@example.com/balcony ->
    /// sip:juliet@example.com;gr=balcony (the domain replaced by its paired SIP domain).
    pub fn local_user_to_sip(&self, jid: &Jid) -> Result<SipAddress, AddressError> {
        let domain = jid.domain().as_str();
        let (_, sip_domain) = self
            .domains
            .iter()
            .find(|(x, _)| x.eq_ignore_ascii_case(domain))
            .ok_or_else(|| AddressError::ForeignXmppDomain(domain.to_string()))?;
        let node = jid.node().ok_or(AddressError::NoLocalpart)?;
        Ok(SipAddress {
            scheme: UriScheme::Sip,
            user: Some(unescape(node.as_str())),
            host: sip_domain.clone(),
            port: None,
            gruu: jid.resource().map(|r| r.as_str().to_string()),
            user_phone: false,
        })
    }

    /// The XMPP recipient, a JID at the component -> the SIP user it stands for.
    pub fn gateway_jid_to_sip(&self, jid: &Jid) -> Result<SipAddress, AddressError> {
        if !jid.domain().as_str().eq_ignore_ascii_case(&self.component) {
            return Err(AddressError::NotGatewayJid(jid.to_string()));
        }
        let node = jid.node().ok_or(AddressError::NoLocalpart)?;
        let gruu = jid.resource().map(|r| r.as_str().to_string());
        let raw = unescape(node.as_str());
        if let Some(at) = raw.rfind('@') {
            let (user, hostport) = (&raw[..at], &raw[at + 1..]);
            if user.is_empty() {
                return Err(AddressError::NotASipAddress(raw.clone()));
            }
            let (host, port) = parse_hostport(hostport)?;
            if self.is_local_sip_domain(&host) {
                return Err(AddressError::OwnDomain(host));
            }
            return Ok(SipAddress {
                scheme: UriScheme::Sip,
                user: Some(user.to_string()),
                host,
                port,
                gruu,
                user_phone: false,
            });
        }
        if is_global_number(&raw) {
            let host = self
                .default_domain
                .clone()
                .ok_or(AddressError::PhoneWithoutDefaultDomain)?;
            return Ok(SipAddress {
                scheme: UriScheme::Sip,
                user: Some(raw),
                host,
                port: None,
                gruu,
                user_phone: true,
            });
        }
        Err(AddressError::NotASipAddress(raw))
    }

    /// The Request-URI (or To) for a local user: sip:juliet@example.com;gr=balcony ->
    /// juliet@example.com/balcony. The %-decoded user is XEP-0106-escaped into the localpart.
    pub fn sip_to_local_user(&self, addr: &SipAddress) -> Result<Jid, AddressError> {
        if addr.scheme == UriScheme::Tel {
            return Err(AddressError::ForeignSipDomain("tel:".into()));
        }
        let (xmpp_domain, _) = self
            .domains
            .iter()
            .find(|(_, s)| s.eq_ignore_ascii_case(&addr.host))
            .ok_or_else(|| AddressError::ForeignSipDomain(addr.host.clone()))?;
        let user = addr.user.as_deref().ok_or(AddressError::NoUser)?;
        jid(&escape(user), xmpp_domain, addr.gruu.as_deref())
    }

    /// A remote SIP user (From) -> romeo\40example.net@sip.example.com (GRUU as resource).
    pub fn sip_to_gateway_jid(&self, addr: &SipAddress) -> Result<Jid, AddressError> {
        let user = addr.user.as_deref().ok_or(AddressError::NoUser)?;
        let localpart = match addr.scheme {
            UriScheme::Tel => {
                if !is_global_number(user) {
                    return Err(AddressError::NotASipAddress(user.to_string()));
                }
                user.to_string()
            }
            _ if addr.user_phone
                && is_global_number(user)
                && self.default_domain.as_deref() == Some(addr.host.as_str())
                && addr.port.is_none() =>
            {
                user.to_string()
            }
            _ => {
                let mut s = format!("{user}@{}", addr.host);
                if let Some(p) = addr.port {
                    s.push_str(&format!(":{p}"));
                }
                escape(&s)
            }
        };
        jid(&localpart, &self.component, addr.gruu.as_deref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn map() -> AddressMap {
        AddressMap::new(
            "sip.example.com",
            &["example.com".into(), "chat.example.org".into()],
            &["example.com".into(), "example.org".into()],
            Some("pstn.example.com"),
        )
        .unwrap()
    }

    fn j(s: &str) -> Jid {
        Jid::new(s).unwrap()
    }

    fn a(s: &str) -> SipAddress {
        SipAddress::parse(s).unwrap()
    }

    #[test]
    fn the_escape_table_both_ways() {
        for (c, code) in [
            (' ', "\\20"),
            ('"', "\\22"),
            ('&', "\\26"),
            ('\'', "\\27"),
            ('/', "\\2f"),
            (':', "\\3a"),
            ('<', "\\3c"),
            ('>', "\\3e"),
            ('@', "\\40"),
        ] {
            let s = format!("a{c}b");
            let e = format!("a{code}b");
            assert_eq!(escape(&s), e);
            assert_eq!(unescape(&e), s);
        }
        // A backslash is escaped only where it would start an escape sequence.
        assert_eq!(escape("a\\b"), "a\\b");
        assert_eq!(escape("a\\5c"), "a\\5c5c");
        assert_eq!(escape("\\40"), "\\5c40");
        assert_eq!(unescape("\\5c40"), "\\40");
        assert_eq!(unescape("a\\5c5c"), "a\\5c");
    }

    #[test]
    fn stray_backslashes_stay_literal() {
        assert_eq!(unescape("foo\\"), "foo\\");
        assert_eq!(unescape("\\"), "\\");
        assert_eq!(unescape("\\4"), "\\4");
        assert_eq!(unescape("\\zz"), "\\zz");
        assert_eq!(unescape("\\\\"), "\\\\");
        assert_eq!(escape("foo\\"), "foo\\");
        assert_eq!(unescape("\\5c"), "\\");
    }

    #[test]
    fn upper_case_codes_unescape_because_servers_case_fold() {
        assert_eq!(unescape("romeo\\40Example.net"), "romeo@Example.net");
        assert_eq!(unescape("a\\2Fb"), "a/b");
        assert_eq!(escape("a\\2Fb"), "a\\5c2Fb");
    }

    #[test]
    fn a_sip_user_at_the_gateway() {
        let m = map();
        assert_eq!(
            m.gateway_jid_to_sip(&j("romeo\\40example.net@sip.example.com"))
                .unwrap()
                .to_uri_string(),
            "sip:romeo@example.net"
        );
        assert_eq!(
            m.gateway_jid_to_sip(&j("romeo\\40example.net@sip.example.com/orchard"))
                .unwrap()
                .to_uri_string(),
            "sip:romeo@example.net;gr=orchard"
        );
        assert_eq!(
            m.sip_to_gateway_jid(&a("sip:romeo@example.net")).unwrap(),
            j("romeo\\40example.net@sip.example.com")
        );
        assert_eq!(
            m.sip_to_gateway_jid(&a("sip:romeo@example.net;gr=orchard"))
                .unwrap(),
            j("romeo\\40example.net@sip.example.com/orchard")
        );
    }

    #[test]
    fn an_xmpp_user_in_sip() {
        let m = map();
        assert_eq!(
            m.local_user_to_sip(&j("juliet@example.com/balcony"))
                .unwrap()
                .to_uri_string(),
            "sip:juliet@example.com;gr=balcony"
        );
        assert_eq!(
            m.local_user_to_sip(&j("nurse@chat.example.org"))
                .unwrap()
                .to_uri_string(),
            "sip:nurse@example.org"
        );
        assert_eq!(
            m.sip_to_local_user(&a("sip:juliet@example.com")).unwrap(),
            j("juliet@example.com")
        );
        assert_eq!(
            m.sip_to_local_user(&a("sip:juliet@example.com;gr=balcony"))
                .unwrap(),
            j("juliet@example.com/balcony")
        );
        assert_eq!(
            m.sip_to_local_user(&a("sip:nurse@EXAMPLE.org")).unwrap(),
            j("nurse@chat.example.org")
        );
    }

    #[test]
    fn schemes_and_forms_parse() {
        for s in [
            "sip:romeo@example.net",
            "im:romeo@example.net",
            "pres:romeo@example.net",
            "<sip:romeo@example.net;transport=tcp>",
            "sip:romeo:secret@example.net",
            "sip:romeo@example.net?subject=hi",
        ] {
            let x = a(s);
            assert_eq!(
                (x.user.as_deref(), x.host.as_str()),
                (Some("romeo"), "example.net"),
                "{s}"
            );
            assert_eq!(x.scheme, UriScheme::Sip);
        }
        assert_eq!(a("sips:romeo@example.net").scheme, UriScheme::Sips);
        assert_eq!(
            a("sips:romeo@example.net").to_uri_string(),
            "sips:romeo@example.net"
        );
        assert_eq!(
            SipAddress::parse("http://example.net").unwrap_err(),
            AddressError::UnsupportedScheme("http".into())
        );
    }

    #[test]
    fn user_parts_are_percent_decoded() {
        let m = map();
        let x = a("sip:romeo%40home@example.net");
        assert_eq!(x.user.as_deref(), Some("romeo@home"));
        assert_eq!(x.to_uri_string(), "sip:romeo%40home@example.net");
        let jid = m.sip_to_gateway_jid(&x).unwrap();
        assert_eq!(jid, j("romeo\\40home\\40example.net@sip.example.com"));
        assert_eq!(m.gateway_jid_to_sip(&jid).unwrap(), x);
        assert_eq!(
            m.sip_to_local_user(&a("sip:d%27artagnan@example.com"))
                .unwrap(),
            j("d\\27artagnan@example.com")
        );
        assert_eq!(
            m.local_user_to_sip(&j("d\\27artagnan@example.com"))
                .unwrap()
                .to_uri_string(),
            "sip:d'artagnan@example.com"
        );
        let semi = a("sip:a;b@example.net");
        assert_eq!(semi.user.as_deref(), Some("a;b"));
        assert_eq!(semi.to_uri_string(), "sip:a;b@example.net");
    }

    #[test]
    fn phone_numbers() {
        let m = map();
        assert_eq!(
            m.gateway_jid_to_sip(&j("+15551234567@sip.example.com"))
                .unwrap()
                .to_uri_string(),
            "sip:+15551234567@pstn.example.com;user=phone"
        );
        assert_eq!(
            m.sip_to_gateway_jid(&a("sip:+15551234567@pstn.example.com;user=phone"))
                .unwrap(),
            j("+15551234567@sip.example.com")
        );
        assert_eq!(
            m.sip_to_gateway_jid(&a("tel:+1-555-123-4567")).unwrap(),
            j("+1-555-123-4567@sip.example.com")
        );
        let no_default = AddressMap::new("sip.example.com", &[], &[], None).unwrap();
        assert_eq!(
            no_default
                .gateway_jid_to_sip(&j("+15551234567@sip.example.com"))
                .unwrap_err(),
            AddressError::PhoneWithoutDefaultDomain
        );
    }

    #[test]
    fn ipv6_hosts_and_ports() {
        let m = map();
        let x = a("sip:romeo@[2001:db8::1]:5070");
        assert_eq!(x.host, "[2001:db8::1]");
        assert_eq!(x.port, Some(5070));
        let jid = m.sip_to_gateway_jid(&x).unwrap();
        assert_eq!(
            jid.node().unwrap().as_str(),
            "romeo\\40[2001\\3adb8\\3a\\3a1]\\3a5070"
        );
        assert_eq!(m.gateway_jid_to_sip(&jid).unwrap(), x);
    }

    #[test]
    fn addresses_that_cannot_map() {
        let m = map();
        let e = m.local_user_to_sip(&j("mallory@evil.example")).unwrap_err();
        assert_eq!(e.xmpp_condition(), DefinedCondition::Forbidden);
        let e = m
            .gateway_jid_to_sip(&j("romeo@sip.example.com"))
            .unwrap_err();
        assert_eq!(e.xmpp_condition(), DefinedCondition::JidMalformed);
        let e = m.gateway_jid_to_sip(&j("sip.example.com")).unwrap_err();
        assert_eq!(e, AddressError::NoLocalpart);
        let e = m
            .gateway_jid_to_sip(&j("juliet\\40example.com@sip.example.com"))
            .unwrap_err();
        assert_eq!(e.xmpp_condition(), DefinedCondition::ItemNotFound);
        let e = m
            .sip_to_local_user(&a("sip:juliet@example.net"))
            .unwrap_err();
        assert_eq!(e.sip_status(), 404);
        let e = m.sip_to_local_user(&a("sip:example.com")).unwrap_err();
        assert_eq!(e.sip_status(), 484);
        let e = m
            .gateway_jid_to_sip(&j("foo\\@sip.example.com"))
            .unwrap_err();
        assert_eq!(e.xmpp_condition(), DefinedCondition::JidMalformed);
        let e = m
            .gateway_jid_to_sip(&j("a\\40b\\40@sip.example.com"))
            .unwrap_err();
        assert_eq!(e.xmpp_condition(), DefinedCondition::JidMalformed);
        assert!(SipAddress::parse("sip:%zz@example.net").is_err());
        assert!(SipAddress::parse("sip:a@exa mple.net").is_err());
        assert!(SipAddress::parse("sip:a@example.net:99999").is_err());
    }

    proptest! {
        #[test]
        fn escape_round_trips(s in "\\PC*") {
            prop_assert_eq!(unescape(&escape(&s)), s);
        }

        #[test]
        fn escape_round_trips_tricky_sequences(s in "[\\\\25cf4a03 @/:]{0,24}") {
            prop_assert_eq!(unescape(&escape(&s)), s);
        }

        #[test]
        fn unescape_never_panics(s in "\\PC*") {
            let _ = unescape(&s);
        }

        #[test]
        fn parse_never_panics(s in "\\PC{0,64}") {
            let _ = SipAddress::parse(&s);
        }

        /// SIP user -> gateway JID -> SIP user, for users the XMPP server will not case-fold.
        #[test]
        fn remote_sip_users_round_trip(
            user in "[a-z0-9@;?/:%'\"&<>\\\\ .+éü-]{1,16}",
            host in "[a-z0-9-]{1,10}(\\.[a-z0-9-]{1,10}){0,3}",
            port in proptest::option::of(1u16..),
            gruu in proptest::option::of("[a-z0-9:.-]{1,12}"),
        ) {
            let m = map();
            prop_assume!(!m.is_local_sip_domain(&host));
            let addr = SipAddress { scheme: UriScheme::Sip, user: Some(user), host, port, gruu, user_phone: false };
            if let Ok(jid) = m.sip_to_gateway_jid(&addr) {
                prop_assert_eq!(m.gateway_jid_to_sip(&jid).unwrap(), addr.clone());
            }
            prop_assert_eq!(SipAddress::parse(&addr.to_uri_string()).unwrap(), addr);
        }

        #[test]
        fn local_users_round_trip(
            user in "[a-z0-9'&/:. -]{1,16}",
            pair in 0usize..2,
            gruu in proptest::option::of("[a-z0-9-]{1,12}"),
        ) {
            prop_assume!(!user.starts_with(' ') && !user.ends_with(' '));
            let m = map();
            let host = ["example.com", "example.org"][pair].to_string();
            let addr = SipAddress { scheme: UriScheme::Sip, user: Some(user), host, port: None, gruu, user_phone: false };
            let jid = m.sip_to_local_user(&addr).unwrap();
            prop_assert_eq!(m.local_user_to_sip(&jid).unwrap(), addr);
        }
    }
}
