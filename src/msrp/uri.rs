//! MSRP URIs (RFC 4975 section 6 and the `MSRP-URI` rule of section 9).
//!
//! ```text
//!   "msrp://bob.example.com:8888/9di4eae923wzd;tcp"
//!        -> MsrpUri::parse -> { secure: false, host, port: Some(8888), session_id, transport }
//!        <- Display        <- (written back as it was read)
//! ```
//!
//! Equality of two URIs is the comparison of section 6.1 ([`MsrpUri::matches`]), not string
//! equality: an endpoint compares the To-Path of every request with its own URI this way.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr};

/// Port of an MSRP URI without one (RFC 4975 section 15.5, used by relays).
pub const DEFAULT_PORT: u16 = 2855;

/// Why a string is not an MSRP URI.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UriError {
    #[error("scheme is not msrp: or msrps:")]
    Scheme,
    #[error("no host")]
    NoHost,
    #[error("invalid host")]
    Host,
    #[error("invalid port")]
    Port,
    #[error("invalid userinfo")]
    UserInfo,
    #[error("invalid session-id")]
    SessionId,
    #[error("no transport parameter")]
    NoTransport,
    #[error("invalid transport")]
    Transport,
    #[error("invalid URI parameter")]
    Param,
}

/// `msrp-scheme "://" authority ["/" session-id] ";" transport *( ";" URI-parameter)`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MsrpUri {
    /// `msrps:` (TLS).
    pub secure: bool,
    pub userinfo: Option<String>,
    /// As written; an IPv6 literal keeps its brackets.
    pub host: String,
    pub port: Option<u16>,
    pub session_id: Option<String>,
    /// `tcp` in practice; kept as written.
    pub transport: String,
    /// `token ["=" token]`, in order.
    pub params: Vec<(String, Option<String>)>,
}

impl MsrpUri {
    /// An endpoint URI `msrp://host:port/session_id;tcp`.
    pub fn new(host: impl Into<String>, port: u16, session_id: impl Into<String>) -> MsrpUri {
        MsrpUri {
            secure: false,
            userinfo: None,
            host: host.into(),
            port: Some(port),
            session_id: Some(session_id.into()),
            transport: "tcp".to_string(),
            params: Vec::new(),
        }
    }

    pub fn parse(s: &str) -> Result<MsrpUri, UriError> {
        let (secure, rest) = if let Some(r) = strip_prefix_ci(s, "msrps://") {
            (true, r)
        } else if let Some(r) = strip_prefix_ci(s, "msrp://") {
            (false, r)
        } else {
            return Err(UriError::Scheme);
        };
        // The authority ends at the first "/" (session-id) or ";" (transport). Userinfo may
        // not contain either, which RFC 3986 would allow but no MSRP URI uses.
        let auth_end = rest.find(['/', ';']).ok_or(UriError::NoTransport)?;
        let (authority, rest) = rest.split_at(auth_end);
        let (userinfo, hostport) = match authority.rfind('@') {
            Some(i) => (Some(&authority[..i]), &authority[i + 1..]),
            None => (None, authority),
        };
        if let Some(u) = userinfo {
            if u.is_empty() || !u.bytes().all(is_userinfo_char) || !pct_ok(u) {
                return Err(UriError::UserInfo);
            }
        }
        let (host, port) = split_host_port(hostport)?;

        let (session_id, rest) = if let Some(r) = rest.strip_prefix('/') {
            let end = r.find(';').ok_or(UriError::NoTransport)?;
            let sid = &r[..end];
            if sid.is_empty() || !sid.bytes().all(is_session_char) || !pct_ok(sid) {
                return Err(UriError::SessionId);
            }
            (Some(sid.to_string()), &r[end..])
        } else {
            (None, rest)
        };
        let rest = rest.strip_prefix(';').ok_or(UriError::NoTransport)?;
        let mut parts = rest.split(';');
        let transport = parts.next().unwrap_or_default();
        if transport.is_empty() || !transport.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(UriError::Transport);
        }
        let mut params = Vec::new();
        for p in parts {
            let (name, value) = match p.split_once('=') {
                Some((n, v)) => (n, Some(v)),
                None => (p, None),
            };
            if !is_token(name) || value.is_some_and(|v| !is_token(v)) {
                return Err(UriError::Param);
            }
            params.push((name.to_string(), value.map(str::to_string)));
        }
        Ok(MsrpUri {
            secure,
            userinfo: userinfo.map(str::to_string),
            host: host.to_string(),
            port,
            session_id,
            transport: transport.to_string(),
            params,
        })
    }

    /// RFC 4975 section 6.1: scheme and transport case-insensitive; host case-insensitive,
    /// or by address when it is an IP literal; an explicit port only equals the same
    /// explicit port; session-id case-sensitive, and present on both or neither; URI
    /// parameters ignored; percent-encoding normalized everywhere.
    pub fn matches(&self, other: &MsrpUri) -> bool {
        self.secure == other.secure
            && self.port == other.port
            && self.transport.eq_ignore_ascii_case(&other.transport)
            && same_host(&self.host, &other.host)
            && match (&self.userinfo, &other.userinfo) {
                (None, None) => true,
                (Some(a), Some(b)) => pct_decode(a).eq_ignore_ascii_case(&pct_decode(b)),
                _ => false,
            }
            && match (&self.session_id, &other.session_id) {
                (None, None) => true,
                (Some(a), Some(b)) => pct_decode(a) == pct_decode(b),
                _ => false,
            }
    }

    /// The port to connect to.
    pub fn port_or_default(&self) -> u16 {
        self.port.unwrap_or(DEFAULT_PORT)
    }

    /// The host without IPv6 brackets, for connecting.
    pub fn host_for_connect(&self) -> &str {
        self.host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(&self.host)
    }
}

impl fmt::Display for MsrpUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.secure { "msrps://" } else { "msrp://" })?;
        if let Some(u) = &self.userinfo {
            write!(f, "{u}@")?;
        }
        f.write_str(&self.host)?;
        if let Some(p) = self.port {
            write!(f, ":{p}")?;
        }
        if let Some(s) = &self.session_id {
            write!(f, "/{s}")?;
        }
        write!(f, ";{}", self.transport)?;
        for (n, v) in &self.params {
            match v {
                Some(v) => write!(f, ";{n}={v}")?,
                None => write!(f, ";{n}")?,
            }
        }
        Ok(())
    }
}

impl std::str::FromStr for MsrpUri {
    type Err = UriError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        MsrpUri::parse(s)
    }
}

/// Parses a space-separated list of URIs (To-Path, From-Path, a=path).
pub fn parse_path(s: &str) -> Result<Vec<MsrpUri>, UriError> {
    let uris = s
        .split([' ', '\t'])
        .filter(|p| !p.is_empty())
        .map(MsrpUri::parse)
        .collect::<Result<Vec<_>, _>>()?;
    if uris.is_empty() {
        return Err(UriError::Scheme);
    }
    Ok(uris)
}

/// Writes a path as a space-separated list.
pub fn path_to_string(path: &[MsrpUri]) -> String {
    let mut out = String::new();
    for (i, u) in path.iter().enumerate() {
        if i > 0 {
            out.push(' ');
        }
        out.push_str(&u.to_string());
    }
    out
}

fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

fn split_host_port(hostport: &str) -> Result<(&str, Option<u16>), UriError> {
    let (host, port) = if hostport.starts_with('[') {
        let close = hostport.find(']').ok_or(UriError::Host)?;
        let inner = &hostport[1..close];
        if inner.parse::<Ipv6Addr>().is_err() {
            return Err(UriError::Host);
        }
        let after = &hostport[close + 1..];
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p),
            None if after.is_empty() => None,
            None => return Err(UriError::Host),
        };
        (&hostport[..=close], port)
    } else {
        match hostport.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (hostport, None),
        }
    };
    if host.is_empty() {
        return Err(UriError::NoHost);
    }
    if !host.starts_with('[') && !host.bytes().all(is_reg_name_char) || !pct_ok(host) {
        return Err(UriError::Host);
    }
    let port = match port {
        None => None,
        Some(p) => {
            if p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()) {
                return Err(UriError::Port);
            }
            Some(p.parse::<u16>().map_err(|_| UriError::Port)?)
        }
    };
    Ok((host, port))
}

fn same_host(a: &str, b: &str) -> bool {
    let ip = |h: &str| -> Option<IpAddr> {
        let h = h
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(h);
        h.parse().ok()
    };
    match (ip(a), ip(b)) {
        (Some(x), Some(y)) => x == y,
        (None, None) => pct_decode(a).eq_ignore_ascii_case(&pct_decode(b)),
        _ => false,
    }
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn is_sub_delim(b: u8) -> bool {
    matches!(
        b,
        b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b'=' | b';'
    )
}

fn is_reg_name_char(b: u8) -> bool {
    (is_unreserved(b) || is_sub_delim(b) || b == b'%') && b != b';'
}

fn is_userinfo_char(b: u8) -> bool {
    (is_unreserved(b) || is_sub_delim(b) || b == b'%' || b == b':') && b != b';'
}

/// `session-id = 1*( unreserved / "+" / "=" / "/" )`, plus percent-encoding (6.1 normalizes it).
fn is_session_char(b: u8) -> bool {
    is_unreserved(b) || matches!(b, b'+' | b'=' | b'/' | b'%')
}

/// RFC 4975 `token`.
pub(crate) fn is_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(is_token_char)
}

pub(crate) fn is_token_char(b: u8) -> bool {
    matches!(b, 0x21 | 0x23..=0x27 | 0x2A..=0x2B | 0x2D..=0x2E | 0x30..=0x39 | 0x41..=0x5A | 0x5E..=0x7E)
}

/// Every "%" is followed by two hex digits.
fn pct_ok(s: &str) -> bool {
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            match (b.get(i + 1), b.get(i + 2)) {
                (Some(x), Some(y)) if x.is_ascii_hexdigit() && y.is_ascii_hexdigit() => i += 3,
                _ => return false,
            }
        } else {
            i += 1;
        }
    }
    true
}

/// Percent-decoding for comparison; bytes that are not valid UTF-8 compare as themselves.
fn pct_decode(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = |c: u8| (c as char).to_digit(16);
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u(s: &str) -> MsrpUri {
        MsrpUri::parse(s).unwrap()
    }

    #[test]
    fn rfc4975_uris_round_trip() {
        for s in [
            "msrp://atlanta.example.com:7654/jshA7weztas;tcp",
            "msrp://biloxi.example.com:12763/kjhd37s2s20w2a;tcp",
            "msrps://bob.example.com:8888/9di4eae923wzd;tcp",
            "msrp://relay.example.net;tcp",
            "msrps://alice@intra.example.com;tcp",
            "msrp://[2001:db8::1]:2855/s1d=+/x;tcp;foo=bar;baz",
            "msrp://192.0.2.1:9/a%2Fb;tcp",
        ] {
            assert_eq!(u(s).to_string(), s);
        }
    }

    #[test]
    fn parts_are_split() {
        let x = u("msrp://bob.example.com:8888/9di4eae923wzd;tcp");
        assert!(!x.secure);
        assert_eq!(x.host, "bob.example.com");
        assert_eq!(x.port, Some(8888));
        assert_eq!(x.session_id.as_deref(), Some("9di4eae923wzd"));
        assert_eq!(x.transport, "tcp");
        let r = u("msrps://relay.example.net;tcp");
        assert_eq!(
            (r.port, r.session_id.as_deref(), r.port_or_default()),
            (None, None, 2855)
        );
        assert_eq!(u("msrp://[::1]:7/a;tcp").host_for_connect(), "::1");
    }

    #[test]
    fn invalid_uris_are_refused() {
        for (s, e) in [
            ("sip:bob@example.com", UriError::Scheme),
            ("msrp://bob.example.com:8888/abc", UriError::NoTransport),
            ("msrp://bob.example.com:8888/abc;", UriError::Transport),
            ("msrp://bob.example.com:99999/abc;tcp", UriError::Port),
            ("msrp://bob.example.com:/abc;tcp", UriError::Port),
            ("msrp://:80/abc;tcp", UriError::NoHost),
            ("msrp://bob example/abc;tcp", UriError::Host),
            ("msrp://[zz::1]/abc;tcp", UriError::Host),
            ("msrp://h/a b;tcp", UriError::SessionId),
            ("msrp://h/;tcp", UriError::SessionId),
            ("msrp://h/a%zz;tcp", UriError::SessionId),
            ("msrp://h/a;tcp;x=\"y\"", UriError::Param),
            ("msrp://h/a;t-cp", UriError::Transport),
        ] {
            assert_eq!(MsrpUri::parse(s), Err(e), "{s}");
        }
    }

    #[test]
    fn comparison_follows_section_6_1() {
        let a = u("msrp://Atlanta.Example.COM:7654/jshA7weztas;TCP");
        assert!(a.matches(&u("MSRP://atlanta.example.com:7654/jshA7weztas;tcp")));
        // session-id is case-sensitive
        assert!(!a.matches(&u("msrp://atlanta.example.com:7654/JSHA7WEZTAS;tcp")));
        // explicit port never equals an absent one, even the default
        assert!(!u("msrp://h:2855/a;tcp").matches(&u("msrp://h/a;tcp")));
        // scheme matters
        assert!(!u("msrps://h:1/a;tcp").matches(&u("msrp://h:1/a;tcp")));
        // session-id on one side only
        assert!(!u("msrp://h:1/a;tcp").matches(&u("msrp://h:1;tcp")));
        // parameters are ignored
        assert!(u("msrp://h:1/a;tcp;x=1").matches(&u("msrp://h:1/a;tcp")));
        // percent-encoding is normalized
        assert!(u("msrp://h:1/a%62c;tcp").matches(&u("msrp://h:1/abc;tcp")));
        // IP literals compare by address
        assert!(u("msrp://[2001:db8::1]:1/a;tcp").matches(&u("msrp://[2001:DB8:0::1]:1/a;tcp")));
        assert!(!u("msrp://127.0.0.1:1/a;tcp").matches(&u("msrp://localhost:1/a;tcp")));
    }

    #[test]
    fn paths_are_space_separated() {
        let p = parse_path("msrp://r.example.net:2855/x;tcp msrp://b.example.com:1/y;tcp").unwrap();
        assert_eq!(p.len(), 2);
        assert_eq!(
            path_to_string(&p),
            "msrp://r.example.net:2855/x;tcp msrp://b.example.com:1/y;tcp"
        );
        assert!(parse_path("").is_err());
    }
}
