//! Digest authentication of the requests stox sends (RFC 3261 section 22, RFC 7616,
//! RFC 8760), sans-IO.
//!
//! - [`parse_challenges`] reads a WWW-Authenticate / Proxy-Authenticate value as written
//!   (rsipstack's typed parser fails on `qop="auth,auth-int"` and `algorithm=SHA-256`):
//!   several challenges in one value, quoted strings with escapes, unknown schemes skipped.
//! - [`Challenge`] is one usable Digest challenge; [`Challenge::authorization`] computes the
//!   Authorization / Proxy-Authorization value for MD5, SHA-256 and SHA-512-256 and their
//!   `-sess` variants, with qop=auth, qop=auth-int (when it is the only qop offered) or no
//!   qop (RFC 2069).
//! - [`DigestClient`] holds the configured credentials and the last challenge per realm, so
//!   later requests to the same next hop (407) or domain (401) are sent with credentials
//!   at once (nc counted per nonce), and decides whether a 401/407 is worth a retry.

use std::fmt;

use md5::Md5;
use rsipstack::sip::{Header, Request, Response};
use sha2::{Digest, Sha256, Sha512_256};

use crate::config::Credential;

/// The hash algorithms of RFC 7616 section 6.1 (RFC 8760 for SIP).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    Md5,
    Md5Sess,
    Sha256,
    Sha256Sess,
    Sha512_256,
    Sha512_256Sess,
}

impl Algorithm {
    /// The algorithm token of a challenge (case-insensitive); `None` for unknown ones.
    pub fn parse(s: &str) -> Option<Algorithm> {
        let s = s.trim();
        [
            Algorithm::Md5,
            Algorithm::Md5Sess,
            Algorithm::Sha256,
            Algorithm::Sha256Sess,
            Algorithm::Sha512_256,
            Algorithm::Sha512_256Sess,
        ]
        .into_iter()
        .find(|a| a.name().eq_ignore_ascii_case(s))
    }

    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Md5 => "MD5",
            Algorithm::Md5Sess => "MD5-sess",
            Algorithm::Sha256 => "SHA-256",
            Algorithm::Sha256Sess => "SHA-256-sess",
            Algorithm::Sha512_256 => "SHA-512-256",
            Algorithm::Sha512_256Sess => "SHA-512-256-sess",
        }
    }

    /// RFC 8760 section 2.4 order of preference: SHA-512-256, SHA-256, MD5.
    fn strength(self) -> u8 {
        match self {
            Algorithm::Sha512_256 | Algorithm::Sha512_256Sess => 3,
            Algorithm::Sha256 | Algorithm::Sha256Sess => 2,
            Algorithm::Md5 | Algorithm::Md5Sess => 1,
        }
    }

    fn is_sess(self) -> bool {
        matches!(
            self,
            Algorithm::Md5Sess | Algorithm::Sha256Sess | Algorithm::Sha512_256Sess
        )
    }

    /// H(data) as lowercase hex (RFC 7616 section 3.4.1).
    fn hash(self, data: &[u8]) -> String {
        match self {
            Algorithm::Md5 | Algorithm::Md5Sess => hex(&Md5::digest(data)),
            Algorithm::Sha256 | Algorithm::Sha256Sess => hex(&Sha256::digest(data)),
            Algorithm::Sha512_256 | Algorithm::Sha512_256Sess => hex(&Sha512_256::digest(data)),
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 0xf) as usize] as char);
    }
    s
}

/// The quality of protection stox answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Qop {
    Auth,
    AuthInt,
}

impl Qop {
    fn name(self) -> &'static str {
        match self {
            Qop::Auth => "auth",
            Qop::AuthInt => "auth-int",
        }
    }
}

/// One challenge as written: the auth-scheme and its parameters (names lowercased,
/// values unquoted and unescaped), in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawChallenge {
    pub scheme: String,
    pub params: Vec<(String, String)>,
}

impl RawChallenge {
    /// The first value of parameter `name` (lowercase).
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A header value that is not a list of challenges.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("at byte {at}: {why}")]
pub struct ParseError {
    pub at: usize,
    pub why: &'static str,
}

fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-.!%*_+`'~".contains(&b)
}

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && matches!(b[i], b' ' | b'\t' | b'\r' | b'\n') {
        i += 1;
    }
    i
}

/// Parses a WWW-Authenticate or Proxy-Authenticate value (RFC 3261 25.1 `challenge`, and
/// RFC 7235 section 4.1's list of challenges in one value):
/// `Digest realm="a", nonce="b", Digest realm="a", nonce="c", algorithm=SHA-256`.
pub fn parse_challenges(value: &str) -> Result<Vec<RawChallenge>, ParseError> {
    let b = value.as_bytes();
    let mut out: Vec<RawChallenge> = Vec::new();
    let mut i = 0;
    loop {
        while i < b.len() && (b[i] == b',' || matches!(b[i], b' ' | b'\t' | b'\r' | b'\n')) {
            i += 1;
        }
        if i >= b.len() {
            return Ok(out);
        }
        let start = i;
        while i < b.len() && is_token_byte(b[i]) {
            i += 1;
        }
        if i == start {
            return Err(ParseError {
                at: i,
                why: "expected an auth-scheme or a parameter name",
            });
        }
        let name = &value[start..i];
        let j = skip_ws(b, i);
        if j < b.len() && b[j] == b'=' {
            let Some(current) = out.last_mut() else {
                return Err(ParseError {
                    at: start,
                    why: "a parameter before any auth-scheme",
                });
            };
            i = skip_ws(b, j + 1);
            let v = if i < b.len() && b[i] == b'"' {
                let (v, end) = quoted_string(b, i)?;
                i = end;
                v
            } else {
                let vs = i;
                while i < b.len() && b[i] != b',' && !matches!(b[i], b' ' | b'\t' | b'\r' | b'\n') {
                    i += 1;
                }
                value[vs..i].to_string()
            };
            i = skip_ws(b, i);
            if i < b.len() && b[i] != b',' {
                return Err(ParseError {
                    at: i,
                    why: "expected a comma between parameters",
                });
            }
            current.params.push((name.to_ascii_lowercase(), v));
        } else {
            out.push(RawChallenge {
                scheme: name.to_string(),
                params: Vec::new(),
            });
            i = j;
        }
    }
}

/// A quoted-string starting at `b[start] == '"'`: its unescaped content and the index
/// after the closing quote.
fn quoted_string(b: &[u8], start: usize) -> Result<(String, usize), ParseError> {
    let mut out = Vec::new();
    let mut i = start + 1;
    while i < b.len() {
        match b[i] {
            b'"' => return Ok((String::from_utf8_lossy(&out).into_owned(), i + 1)),
            b'\\' if i + 1 < b.len() => {
                out.push(b[i + 1]);
                i += 2;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    Err(ParseError {
        at: start,
        why: "unterminated quoted string",
    })
}

/// Why a challenge cannot be answered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unusable {
    #[error("scheme {0:?} is not Digest")]
    Scheme(String),
    #[error("no {0} parameter")]
    Missing(&'static str),
    #[error("algorithm {0:?} is not supported")]
    Algorithm(String),
    #[error("qop {0:?} offers neither auth nor auth-int")]
    Qop(String),
    #[error("parameter {0} holds control characters")]
    Control(String),
}

/// A Digest challenge stox can answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    /// From Proxy-Authenticate (answered in Proxy-Authorization), else WWW-Authenticate.
    pub proxy: bool,
    pub realm: String,
    pub nonce: String,
    pub opaque: Option<String>,
    pub algorithm: Algorithm,
    /// Whether the challenge named its algorithm (absent means MD5 and is echoed as absent).
    pub algorithm_given: bool,
    /// auth when offered, else auth-int when offered, else none (RFC 2069).
    pub qop: Option<Qop>,
    pub stale: bool,
}

impl Challenge {
    pub fn from_raw(raw: &RawChallenge, proxy: bool) -> Result<Challenge, Unusable> {
        if !raw.scheme.eq_ignore_ascii_case("digest") {
            return Err(Unusable::Scheme(raw.scheme.clone()));
        }
        // Everything echoed goes back into a header of ours: no CR/LF injection.
        if let Some((n, _)) = raw
            .params
            .iter()
            .find(|(_, v)| v.chars().any(|c| c.is_control()))
        {
            return Err(Unusable::Control(n.clone()));
        }
        let realm = raw.param("realm").ok_or(Unusable::Missing("realm"))?;
        let nonce = raw.param("nonce").ok_or(Unusable::Missing("nonce"))?;
        let (algorithm, algorithm_given) = match raw.param("algorithm") {
            Some(a) => (
                Algorithm::parse(a).ok_or_else(|| Unusable::Algorithm(a.to_string()))?,
                true,
            ),
            None => (Algorithm::Md5, false),
        };
        let qop = match raw.param("qop") {
            None => None,
            Some(list) => {
                let offered: Vec<String> = list
                    .split(',')
                    .map(|q| q.trim().to_ascii_lowercase())
                    .collect();
                if offered.iter().any(|q| q == "auth") {
                    Some(Qop::Auth)
                } else if offered.iter().any(|q| q == "auth-int") {
                    Some(Qop::AuthInt)
                } else {
                    return Err(Unusable::Qop(list.to_string()));
                }
            }
        };
        Ok(Challenge {
            proxy,
            realm: realm.to_string(),
            nonce: nonce.to_string(),
            opaque: raw.param("opaque").map(str::to_string),
            algorithm,
            algorithm_given,
            qop,
            stale: raw
                .param("stale")
                .map(|s| s.trim().eq_ignore_ascii_case("true"))
                .unwrap_or(false),
        })
    }

    /// The `response` value (RFC 7616 section 3.4.1; RFC 2069 without qop).
    #[allow(clippy::too_many_arguments)]
    pub fn response(
        &self,
        username: &str,
        password: &str,
        method: &str,
        uri: &str,
        body: &[u8],
        nc: u32,
        cnonce: &str,
    ) -> String {
        let h = |s: &str| self.algorithm.hash(s.as_bytes());
        let mut ha1 = h(&format!("{username}:{}:{password}", self.realm));
        if self.algorithm.is_sess() {
            ha1 = h(&format!("{ha1}:{}:{cnonce}", self.nonce));
        }
        let ha2 = match self.qop {
            Some(Qop::AuthInt) => h(&format!("{method}:{uri}:{}", self.algorithm.hash(body))),
            _ => h(&format!("{method}:{uri}")),
        };
        match self.qop {
            Some(q) => h(&format!(
                "{ha1}:{}:{nc:08x}:{cnonce}:{}:{ha2}",
                self.nonce,
                q.name()
            )),
            None => h(&format!("{ha1}:{}:{ha2}", self.nonce)),
        }
    }

    /// The Authorization / Proxy-Authorization value answering this challenge. `uri` is the
    /// Request-URI as sent; `body` counts only for qop=auth-int.
    #[allow(clippy::too_many_arguments)]
    pub fn authorization(
        &self,
        username: &str,
        password: &str,
        method: &str,
        uri: &str,
        body: &[u8],
        nc: u32,
        cnonce: &str,
    ) -> String {
        let response = self.response(username, password, method, uri, body, nc, cnonce);
        let mut v = format!(
            "Digest username={}, realm={}, nonce={}, uri={}, response={}",
            quote(username),
            quote(&self.realm),
            quote(&self.nonce),
            quote(uri),
            quote(&response)
        );
        if self.algorithm_given {
            v.push_str(&format!(", algorithm={}", self.algorithm.name()));
        }
        // Without qop a -sess A1 still needs the cnonce, or the server cannot compute it.
        if self.qop.is_some() || self.algorithm.is_sess() {
            v.push_str(&format!(", cnonce={}", quote(cnonce)));
        }
        if let Some(o) = &self.opaque {
            v.push_str(&format!(", opaque={}", quote(o)));
        }
        if let Some(q) = self.qop {
            v.push_str(&format!(", qop={}, nc={nc:08x}", q.name()));
        }
        v
    }
}

/// A quoted-string with `"` and `\` escaped (RFC 3261 25.1 quoted-pair).
fn quote(s: &str) -> String {
    let mut o = String::with_capacity(s.len() + 2);
    o.push('"');
    for c in s.chars() {
        if c == '"' || c == '\\' {
            o.push('\\');
        }
        o.push(c);
    }
    o.push('"');
    o
}

/// Every usable Digest challenge of a response, in header order. Headers that do not
/// parse and challenges that cannot be answered are skipped (and logged).
pub fn challenges(response: &Response) -> Vec<Challenge> {
    let mut out = Vec::new();
    for h in response.headers.iter() {
        let (value, proxy) = match h {
            Header::WwwAuthenticate(v) => (v.value(), false),
            Header::ProxyAuthenticate(v) => (v.value(), true),
            _ => continue,
        };
        match parse_challenges(value) {
            Ok(raws) => {
                for raw in raws {
                    match Challenge::from_raw(&raw, proxy) {
                        Ok(c) => out.push(c),
                        Err(e) => tracing::debug!(error = %e, "Skipping a challenge."),
                    }
                }
            }
            Err(e) => tracing::debug!(error = %e, header = h.name(), "Unparsable challenge."),
        }
    }
    out
}

/// Where a cached challenge applies: a 407's to requests through the same next hop, a
/// 401's to requests for the same Request-URI domain (RFC 3261 22.2: "for that
/// destination").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    pub next_hop: String,
    pub domain: String,
}

impl Scope {
    fn of(&self, proxy: bool) -> &str {
        if proxy {
            &self.next_hop
        } else {
            &self.domain
        }
    }
}

struct Cached {
    challenge: Challenge,
    scope: String,
    /// The last nc sent with this nonce.
    nc: u32,
}

/// What one request's exchange has answered so far.
#[derive(Debug, Default)]
pub struct Exchange {
    answered: Vec<(bool, String)>,
    rounds: u8,
}

/// A request is re-sent at most this many times for challenges (stale nonces included).
pub const MAX_ROUNDS: u8 = 4;

/// The credentials from config and the last challenge per realm.
pub struct DigestClient {
    credentials: Vec<Credential>,
    /// At most one entry per (kind, realm) with credentials: bounded by the config.
    cache: Vec<Cached>,
}

impl fmt::Debug for DigestClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DigestClient")
            .field("credentials", &self.credentials)
            .field("cached", &self.cache.len())
            .finish()
    }
}

impl DigestClient {
    pub fn new(credentials: Vec<Credential>) -> Self {
        DigestClient {
            credentials,
            cache: Vec::new(),
        }
    }

    fn credential(&self, realm: &str) -> Option<&Credential> {
        self.credentials
            .iter()
            .find(|c| c.realm.eq_ignore_ascii_case(realm))
    }

    /// Sets the request's Authorization / Proxy-Authorization headers from the cache: one
    /// per cached challenge that applies to `scope`, each with its nc counted up.
    pub fn authorize(&mut self, request: &mut Request, scope: &Scope) {
        if self.cache.is_empty() {
            return;
        }
        request
            .headers
            .retain(|h| !matches!(h, Header::Authorization(_) | Header::ProxyAuthorization(_)));
        let method = request.method.to_string();
        let uri = request.uri.to_string();
        let mut headers = Vec::new();
        for entry in self.cache.iter_mut() {
            if entry.scope != scope.of(entry.challenge.proxy) {
                continue;
            }
            let Some(cred) = self
                .credentials
                .iter()
                .find(|c| c.realm.eq_ignore_ascii_case(&entry.challenge.realm))
            else {
                continue;
            };
            let Some(nc) = entry.nc.checked_add(1) else {
                continue;
            };
            entry.nc = nc;
            let cnonce = super::core::random_token(24);
            let value = entry.challenge.authorization(
                &cred.username,
                cred.password.expose(),
                &method,
                &uri,
                &request.body,
                nc,
                &cnonce,
            );
            headers.push(if entry.challenge.proxy {
                Header::ProxyAuthorization(rsipstack::sip::ProxyAuthorization::new(value))
            } else {
                Header::Authorization(rsipstack::sip::Authorization::new(value))
            });
        }
        for h in headers {
            request.headers.push(h);
        }
    }

    /// A 401/407 answered `request`. When there are credentials for a challenged realm and
    /// a retry can help, rewrites `request` for the retry (CSeq + 1, fresh credentials) and
    /// returns true; otherwise the response is final. A realm challenged again with
    /// stale=false after this exchange answered it means the credentials were refused.
    pub fn on_challenge(
        &mut self,
        request: &mut Request,
        response: &Response,
        scope: &Scope,
        exchange: &mut Exchange,
    ) -> bool {
        let code = response.status_code.code();
        if code != 401 && code != 407 {
            return false;
        }
        // The best challenge per realm with credentials (RFC 8760: strongest algorithm,
        // then the server's order).
        let mut chosen: Vec<Challenge> = Vec::new();
        for c in challenges(response) {
            if self.credential(&c.realm).is_none() {
                tracing::debug!(realm = %c.realm, "No credentials for this realm.");
                continue;
            }
            match chosen
                .iter_mut()
                .find(|k| k.proxy == c.proxy && k.realm == c.realm)
            {
                Some(k) if c.algorithm.strength() > k.algorithm.strength() => *k = c,
                Some(_) => {}
                None => chosen.push(c),
            }
        }
        if chosen.is_empty() || exchange.rounds >= MAX_ROUNDS {
            return false;
        }
        for c in &chosen {
            if !c.stale && exchange.answered.contains(&(c.proxy, c.realm.clone())) {
                tracing::info!(realm = %c.realm, status = code, "The credentials for this realm were refused.");
                return false;
            }
        }
        if !bump_cseq(request) {
            return false;
        }
        exchange.rounds += 1;
        for c in chosen {
            tracing::debug!(
                realm = %c.realm,
                algorithm = c.algorithm.name(),
                qop = c.qop.map(Qop::name).unwrap_or("none"),
                stale = c.stale,
                "Answering a digest challenge."
            );
            let key = (c.proxy, c.realm.clone());
            if !exchange.answered.contains(&key) {
                exchange.answered.push(key);
            }
            self.cache
                .retain(|e| !(e.challenge.proxy == c.proxy && e.challenge.realm == c.realm));
            self.cache.push(Cached {
                scope: scope.of(c.proxy).to_string(),
                challenge: c,
                nc: 0,
            });
        }
        self.authorize(request, scope);
        true
    }
}

/// RFC 3261 22.2: a request re-sent with credentials takes the next CSeq.
fn bump_cseq(request: &mut Request) -> bool {
    for h in request.headers.iter_mut() {
        if let Header::CSeq(c) = h {
            let mut parts = c.value().split_whitespace();
            let (Some(n), Some(method)) = (parts.next(), parts.next()) else {
                return false;
            };
            let Ok(n) = n.parse::<u32>() else {
                return false;
            };
            // RFC 3261 8.1.1.5: below 2**31.
            if n >= (1 << 31) - 1 {
                return false;
            }
            *c = rsipstack::sip::CSeq::new(format!("{} {method}", n + 1));
            return true;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;
    use crate::sip::message::{parse, Framing};
    use rsipstack::sip::prelude::HeadersExt;
    use rsipstack::sip::SipMessage;

    fn raw(value: &str) -> Vec<RawChallenge> {
        parse_challenges(value).unwrap()
    }

    fn one(value: &str) -> Challenge {
        let r = raw(value);
        assert_eq!(r.len(), 1, "{r:?}");
        Challenge::from_raw(&r[0], false).unwrap()
    }

    // ----- parsing -----

    #[test]
    fn the_rfc_3261_example_challenges_parse() {
        // RFC 3261 20.44 and 22.4 (Proxy-Authenticate in 20.27 has the same shape).
        let c = one(
            "Digest realm=\"atlanta.com\",\r\n domain=\"sip:boxesbybob.com\", qop=\"auth\",\r\n \
             nonce=\"f84f1cec41e6cbe5aea9c8e88d359\",\r\n opaque=\"\", stale=FALSE, algorithm=MD5",
        );
        assert_eq!(c.realm, "atlanta.com");
        assert_eq!(c.nonce, "f84f1cec41e6cbe5aea9c8e88d359");
        assert_eq!(c.opaque.as_deref(), Some(""));
        assert_eq!(c.algorithm, Algorithm::Md5);
        assert!(c.algorithm_given);
        assert_eq!(c.qop, Some(Qop::Auth));
        assert!(!c.stale);
        // RFC 3261 22.2's 401 example: both qops offered; stox picks auth.
        let c = one(
            "Digest realm=\"biloxi.com\", qop=\"auth,auth-int\", \
             nonce=\"dcd98b7102dd2f0e8b11d0f600bfb0c093\", opaque=\"5ccc069c403ebaf9f0171e9517f40e41\"",
        );
        assert_eq!(c.realm, "biloxi.com");
        assert_eq!(c.qop, Some(Qop::Auth));
        assert!(!c.algorithm_given);
        assert_eq!(
            c.opaque.as_deref(),
            Some("5ccc069c403ebaf9f0171e9517f40e41")
        );
    }

    #[test]
    fn quoted_strings_keep_commas_and_lose_their_escapes() {
        let c = one(r#"Digest realm="a \"quoted\", realm\\x", nonce="n,1", stale=true"#);
        assert_eq!(c.realm, r#"a "quoted", realm\x"#);
        assert_eq!(c.nonce, "n,1");
        assert!(c.stale);
        assert!(one("Digest realm=r, nonce=n, stale=\"TRUE\"").stale);
    }

    #[test]
    fn several_challenges_in_one_value() {
        let r = raw(
            "Digest realm=\"r\", nonce=\"1\", algorithm=SHA-256, qop=\"auth\", \
             Digest realm=\"r\", nonce=\"2\", algorithm=MD5, Basic realm=\"b\", \
             Negotiate, Bearer abc==",
        );
        let schemes: Vec<_> = r.iter().map(|c| c.scheme.as_str()).collect();
        assert_eq!(
            schemes,
            ["Digest", "Digest", "Basic", "Negotiate", "Bearer"]
        );
        assert_eq!(r[0].param("algorithm"), Some("SHA-256"));
        assert_eq!(r[1].param("nonce"), Some("2"));
        assert!(Challenge::from_raw(&r[2], false).is_err());
    }

    #[test]
    fn malformed_values_are_errors_not_panics() {
        for bad in [
            "realm=\"r\"",
            "Digest realm=\"unterminated",
            "Digest realm=\"r\" nonce=\"n\"",
            "Digest @",
            "Digest realm=\"\\",
        ] {
            assert!(parse_challenges(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_challenges("").unwrap(), vec![]);
        assert_eq!(parse_challenges(" , ,").unwrap(), vec![]);
    }

    #[test]
    fn unanswerable_challenges_say_why() {
        let c = |v: &str| Challenge::from_raw(&raw(v)[0], false);
        assert_eq!(c("Digest nonce=\"n\""), Err(Unusable::Missing("realm")));
        assert_eq!(
            c("Digest realm=\"r\", nonce=\"n\", algorithm=SHA-1"),
            Err(Unusable::Algorithm("SHA-1".into()))
        );
        assert_eq!(
            c("Digest realm=\"r\", nonce=\"n\", qop=\"auth-conf\""),
            Err(Unusable::Qop("auth-conf".into()))
        );
        assert_eq!(
            c("Digest realm=\"r\\\r\nX-Injected: 1\", nonce=\"n\""),
            Err(Unusable::Control("realm".into()))
        );
        assert_eq!(
            one("Digest realm=r, nonce=n, qop=\"auth-int\"").qop,
            Some(Qop::AuthInt)
        );
        assert_eq!(
            one("digest REALM=r, Nonce=n, Algorithm=sha-256-SESS").algorithm,
            Algorithm::Sha256Sess
        );
    }

    // ----- responses: published vectors -----

    /// RFC 7616 section 3.9.1 (with erratum 4495: "Circle of Life").
    fn rfc7616(algorithm: &str) -> Challenge {
        one(&format!(
            "Digest realm=\"http-auth@example.org\", qop=\"auth, auth-int\", \
             algorithm={algorithm}, nonce=\"7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v\", \
             opaque=\"FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS\""
        ))
    }

    const CNONCE_7616: &str = "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ";

    #[test]
    fn rfc_7616_md5_vector() {
        let c = rfc7616("MD5");
        let v = c.authorization(
            "Mufasa",
            "Circle of Life",
            "GET",
            "/dir/index.html",
            b"",
            1,
            CNONCE_7616,
        );
        assert_eq!(
            v,
            "Digest username=\"Mufasa\", realm=\"http-auth@example.org\", \
             nonce=\"7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v\", uri=\"/dir/index.html\", \
             response=\"8ca523f5e9506fed4657c9700eebdbec\", algorithm=MD5, \
             cnonce=\"f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ\", \
             opaque=\"FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS\", qop=auth, nc=00000001"
        );
    }

    #[test]
    fn rfc_7616_sha256_vector() {
        let c = rfc7616("SHA-256");
        assert_eq!(
            c.response(
                "Mufasa",
                "Circle of Life",
                "GET",
                "/dir/index.html",
                b"",
                1,
                CNONCE_7616
            ),
            "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"
        );
    }

    /// RFC 2617 section 3.5 (qop=auth) and RFC 2069 section 2.4 (no qop).
    #[test]
    fn rfc_2617_and_2069_vectors() {
        let c = one(
            "Digest realm=\"testrealm@host.com\", qop=\"auth,auth-int\", \
             nonce=\"dcd98b7102dd2f0e8b11d0f600bfb0c093\", opaque=\"5ccc069c403ebaf9f0171e9517f40e41\"",
        );
        assert_eq!(
            c.response(
                "Mufasa",
                "Circle Of Life",
                "GET",
                "/dir/index.html",
                b"",
                1,
                "0a4f113b"
            ),
            "6629fae49393a05397450978507c4ef1"
        );
        let c = one(
            "Digest realm=\"testrealm@host.com\", nonce=\"dcd98b7102dd2f0e8b11d0f600bfb0c093\", \
             opaque=\"5ccc069c403ebaf9f0171e9517f40e41\"",
        );
        let v = c.authorization(
            "Mufasa",
            "CircleOfLife",
            "GET",
            "/dir/index.html",
            b"",
            1,
            "x",
        );
        assert_eq!(
            v,
            "Digest username=\"Mufasa\", realm=\"testrealm@host.com\", \
             nonce=\"dcd98b7102dd2f0e8b11d0f600bfb0c093\", uri=\"/dir/index.html\", \
             response=\"1949323746fe6a43ef61f9606e7febea\", \
             opaque=\"5ccc069c403ebaf9f0171e9517f40e41\""
        );
    }

    /// -sess, auth-int and SHA-512-256 have no published vector with these inputs; the
    /// expected values were computed independently with Python's hashlib:
    /// `H(H(H(u:r:p):nonce:cnonce):nonce:nc:cnonce:qop:H(method:uri:H(body))`.
    #[test]
    fn sess_auth_int_and_sha512_256_match_an_independent_computation() {
        let ch = |alg: &str, qop: &str| {
            one(&format!(
                "Digest realm=\"stox.test\", nonce=\"abc\", algorithm={alg}, qop=\"{qop}\""
            ))
        };
        let r = |c: &Challenge| {
            c.response(
                "stox",
                "pw",
                "MESSAGE",
                "sip:romeo@sip.test",
                b"hello",
                2,
                "cn",
            )
        };
        assert_eq!(
            r(&ch("MD5-sess", "auth")),
            "0e58c5ad80be3f29103727de128f07ab"
        );
        assert_eq!(
            r(&ch("SHA-256-sess", "auth-int")),
            "e1501481cf948be932e550197e52faad57a9d284931bff9fb4e42ddcab1a8589"
        );
        assert_eq!(
            r(&ch("SHA-512-256", "auth")),
            "d717bebce1d1eca3211a8f25354de7ff9feed3d7d7783c4688a29f4b86ac4657"
        );
    }

    #[test]
    fn quotes_and_backslashes_are_escaped_in_what_stox_writes() {
        let c = one(r#"Digest realm="say \"hi\"", nonce="n""#);
        let v = c.authorization("a\\b", "p", "MESSAGE", "sip:x@y", b"", 1, "c");
        assert!(
            v.starts_with(r#"Digest username="a\\b", realm="say \"hi\"", "#),
            "{v}"
        );
        // What stox writes parses back to the same values.
        let back = &raw(&v)[0];
        assert_eq!(back.param("username"), Some("a\\b"));
        assert_eq!(back.param("realm"), Some("say \"hi\""));
    }

    // ----- the client: realms, nc, retries -----

    fn cred(realm: &str) -> Credential {
        Credential {
            realm: realm.into(),
            username: "stox".into(),
            password: Secret::new("pw"),
        }
    }

    fn request(cseq: u32) -> Request {
        let text = format!(
            "MESSAGE sip:romeo@sip.test SIP/2.0\r\n\
             Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKx\r\n\
             Max-Forwards: 70\r\nFrom: <sip:juliet@localhost>;tag=1\r\n\
             To: <sip:romeo@sip.test>\r\nCall-ID: c1\r\nCSeq: {cseq} MESSAGE\r\n\
             Content-Length: 2\r\n\r\nhi"
        );
        match parse(text.as_bytes(), Framing::Datagram, 65535)
            .unwrap()
            .message
        {
            SipMessage::Request(r) => r,
            _ => unreachable!(),
        }
    }

    fn challenge_response(status: u16, headers: &[&str]) -> Response {
        let name = if status == 407 {
            "Proxy-Authenticate"
        } else {
            "WWW-Authenticate"
        };
        let mut text = format!(
            "SIP/2.0 {status} Challenge\r\n\
             Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKx\r\n\
             From: <sip:juliet@localhost>;tag=1\r\nTo: <sip:romeo@sip.test>;tag=2\r\n\
             Call-ID: c1\r\nCSeq: 1 MESSAGE\r\n"
        );
        for h in headers {
            text.push_str(&format!("{name}: {h}\r\n"));
        }
        text.push_str("Content-Length: 0\r\n\r\n");
        match parse(text.as_bytes(), Framing::Datagram, 65535)
            .unwrap()
            .message
        {
            SipMessage::Response(r) => r,
            _ => unreachable!(),
        }
    }

    fn scope() -> Scope {
        Scope {
            next_hop: "proxy.test:5060".into(),
            domain: "sip.test".into(),
        }
    }

    fn auth_values(r: &Request, proxy: bool) -> Vec<RawChallenge> {
        r.headers
            .iter()
            .filter_map(|h| match h {
                Header::Authorization(a) if !proxy => Some(raw(a.value()).remove(0)),
                Header::ProxyAuthorization(a) if proxy => Some(raw(a.value()).remove(0)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_challenge_for_a_realm_with_credentials_is_answered_once() {
        let mut client = DigestClient::new(vec![cred("proxy.test")]);
        let mut req = request(7);
        let mut ex = Exchange::default();
        let resp = challenge_response(
            407,
            &["Digest realm=\"proxy.test\", nonce=\"n1\", qop=\"auth,auth-int\", opaque=\"o\""],
        );
        assert!(client.on_challenge(&mut req, &resp, &scope(), &mut ex));
        assert_eq!(req.cseq_header().unwrap().value(), "8 MESSAGE");
        let a = auth_values(&req, true);
        assert_eq!(a.len(), 1);
        assert_eq!(a[0].param("realm"), Some("proxy.test"));
        assert_eq!(a[0].param("nc"), Some("00000001"));
        assert_eq!(a[0].param("qop"), Some("auth"));
        assert_eq!(a[0].param("opaque"), Some("o"));
        assert_eq!(a[0].param("uri"), Some("sip:romeo@sip.test"));
        let cnonce = a[0].param("cnonce").unwrap().to_string();
        assert!(cnonce.len() >= 16);
        let expected = Challenge::from_raw(
            &raw("Digest realm=\"proxy.test\", nonce=\"n1\", qop=\"auth\", opaque=\"o\"")[0],
            true,
        )
        .unwrap()
        .response(
            "stox",
            "pw",
            "MESSAGE",
            "sip:romeo@sip.test",
            b"hi",
            1,
            &cnonce,
        );
        assert_eq!(a[0].param("response"), Some(expected.as_str()));
        assert!(auth_values(&req, false).is_empty());

        // The same realm again, not stale: the credentials were refused; final.
        let again = challenge_response(407, &["Digest realm=\"proxy.test\", nonce=\"n2\""]);
        assert!(!client.on_challenge(&mut req, &again, &scope(), &mut ex));
        assert_eq!(req.cseq_header().unwrap().value(), "8 MESSAGE");
    }

    #[test]
    fn a_stale_nonce_is_answered_again_with_the_new_one() {
        let mut client = DigestClient::new(vec![cred("r")]);
        let mut req = request(1);
        let mut ex = Exchange::default();
        let first = challenge_response(401, &["Digest realm=\"r\", nonce=\"n1\", qop=auth"]);
        assert!(client.on_challenge(&mut req, &first, &scope(), &mut ex));
        let stale = challenge_response(
            401,
            &["Digest realm=\"r\", nonce=\"n2\", qop=auth, stale=true"],
        );
        assert!(client.on_challenge(&mut req, &stale, &scope(), &mut ex));
        let a = auth_values(&req, false);
        assert_eq!(a.len(), 1);
        assert_eq!(a[0].param("nonce"), Some("n2"));
        assert_eq!(a[0].param("nc"), Some("00000001"));
        assert_eq!(req.cseq_header().unwrap().value(), "3 MESSAGE");
        // A server that keeps saying stale is not followed for ever.
        let mut rounds = 2;
        while client.on_challenge(&mut req, &stale, &scope(), &mut ex) {
            rounds += 1;
        }
        assert_eq!(rounds, MAX_ROUNDS);
    }

    #[test]
    fn without_credentials_for_the_realm_the_challenge_is_final() {
        let mut client = DigestClient::new(vec![cred("other")]);
        let mut req = request(1);
        let resp = challenge_response(401, &["Digest realm=\"r\", nonce=\"n\""]);
        assert!(!client.on_challenge(&mut req, &resp, &scope(), &mut Exchange::default()));
        assert!(auth_values(&req, false).is_empty());
        let mut none = DigestClient::new(vec![]);
        assert!(!none.on_challenge(&mut req, &resp, &scope(), &mut Exchange::default()));
    }

    #[test]
    fn sha256_is_preferred_over_md5_whatever_the_order() {
        for headers in [
            [
                "Digest realm=\"r\", nonce=\"md5\", algorithm=MD5, qop=\"auth\"",
                "Digest realm=\"r\", nonce=\"sha\", algorithm=SHA-256, qop=\"auth\"",
            ],
            [
                "Digest realm=\"r\", nonce=\"sha\", algorithm=SHA-256, qop=\"auth\"",
                "Digest realm=\"r\", nonce=\"md5\", algorithm=MD5, qop=\"auth\"",
            ],
        ] {
            let mut client = DigestClient::new(vec![cred("r")]);
            let mut req = request(1);
            let resp = challenge_response(401, &headers);
            assert!(client.on_challenge(&mut req, &resp, &scope(), &mut Exchange::default()));
            let a = auth_values(&req, false);
            assert_eq!(a.len(), 1, "one answer per realm");
            assert_eq!(a[0].param("algorithm"), Some("SHA-256"));
            assert_eq!(a[0].param("nonce"), Some("sha"));
            assert_eq!(a[0].param("response").map(str::len), Some(64));
        }
        // Unknown algorithms are skipped, not fatal.
        let mut client = DigestClient::new(vec![cred("r")]);
        let mut req = request(1);
        let resp = challenge_response(
            401,
            &[
                "Digest realm=\"r\", nonce=\"x\", algorithm=SHA-1024, qop=\"auth\"",
                "Digest realm=\"r\", nonce=\"md5\", qop=\"auth\"",
            ],
        );
        assert!(client.on_challenge(&mut req, &resp, &scope(), &mut Exchange::default()));
        assert_eq!(auth_values(&req, false)[0].param("nonce"), Some("md5"));
        assert_eq!(auth_values(&req, false)[0].param("algorithm"), None);
    }

    #[test]
    fn later_requests_pre_authenticate_with_nc_counting_up() {
        let mut client = DigestClient::new(vec![cred("proxy.test")]);
        let mut req = request(1);
        let resp = challenge_response(
            407,
            &["Digest realm=\"proxy.test\", nonce=\"n1\", qop=auth"],
        );
        assert!(client.on_challenge(&mut req, &resp, &scope(), &mut Exchange::default()));
        for nc in ["00000002", "00000003"] {
            let mut next = request(5);
            client.authorize(&mut next, &scope());
            let a = auth_values(&next, true);
            assert_eq!(a.len(), 1);
            assert_eq!(a[0].param("nonce"), Some("n1"));
            assert_eq!(a[0].param("nc"), Some(nc));
            assert_eq!(next.cseq_header().unwrap().value(), "5 MESSAGE");
        }
        // Through another next hop the proxy's nonce is not sent.
        let mut elsewhere = request(1);
        let other = Scope {
            next_hop: "other.test:5060".into(),
            domain: "sip.test".into(),
        };
        client.authorize(&mut elsewhere, &other);
        assert!(auth_values(&elsewhere, true).is_empty());
    }

    #[test]
    fn a_pre_authenticated_request_refused_once_is_still_answered() {
        // The cached nonce may have expired on a server that does not say stale: the
        // fresh challenge has not been answered in this exchange yet.
        let mut client = DigestClient::new(vec![cred("r")]);
        let mut req = request(1);
        let resp = challenge_response(401, &["Digest realm=\"r\", nonce=\"n1\""]);
        assert!(client.on_challenge(&mut req, &resp, &scope(), &mut Exchange::default()));
        let mut next = request(2);
        client.authorize(&mut next, &scope());
        let fresh = challenge_response(401, &["Digest realm=\"r\", nonce=\"n2\""]);
        let mut ex = Exchange::default();
        assert!(client.on_challenge(&mut next, &fresh, &scope(), &mut ex));
        assert_eq!(auth_values(&next, false)[0].param("nonce"), Some("n2"));
        assert!(!client.on_challenge(&mut next, &fresh, &scope(), &mut ex));
    }

    #[test]
    fn a_proxy_and_a_uas_challenge_in_turn() {
        let mut client = DigestClient::new(vec![cred("proxy.test"), cred("sip.test")]);
        let mut req = request(1);
        let mut ex = Exchange::default();
        let p = challenge_response(407, &["Digest realm=\"proxy.test\", nonce=\"p\", qop=auth"]);
        assert!(client.on_challenge(&mut req, &p, &scope(), &mut ex));
        let w = challenge_response(401, &["Digest realm=\"sip.test\", nonce=\"w\", qop=auth"]);
        assert!(client.on_challenge(&mut req, &w, &scope(), &mut ex));
        let pa = auth_values(&req, true);
        let wa = auth_values(&req, false);
        assert_eq!(pa[0].param("nc"), Some("00000002"));
        assert_eq!(wa[0].param("realm"), Some("sip.test"));
        assert_eq!(req.cseq_header().unwrap().value(), "3 MESSAGE");
    }

    #[test]
    fn a_cseq_that_cannot_grow_ends_the_retries() {
        let mut client = DigestClient::new(vec![cred("r")]);
        let resp = challenge_response(401, &["Digest realm=\"r\", nonce=\"n\""]);
        for cseq in [2147483647u32, 4294967295] {
            let mut req = request(1);
            for h in req.headers.iter_mut() {
                if let Header::CSeq(c) = h {
                    *c = rsipstack::sip::CSeq::new(format!("{cseq} MESSAGE"));
                }
            }
            assert!(!client.on_challenge(&mut req, &resp, &scope(), &mut Exchange::default()));
        }
    }

    #[test]
    fn the_digest_uri_is_the_request_line_as_sent() {
        let mut client = DigestClient::new(vec![cred("r")]);
        let mut req = request(1);
        req.uri = rsipstack::sip::parse_uri("sip:romeo%40home@sip.test;user=phone").unwrap();
        let resp = challenge_response(401, &["Digest realm=\"r\", nonce=\"n\""]);
        assert!(client.on_challenge(&mut req, &resp, &scope(), &mut Exchange::default()));
        let uri = auth_values(&req, false)[0]
            .param("uri")
            .unwrap()
            .to_string();
        let mut msg = SipMessage::Request(req);
        let wire = String::from_utf8(crate::sip::message::to_bytes(&mut msg)).unwrap();
        let line = wire.lines().next().unwrap();
        assert_eq!(line, format!("MESSAGE {uri} SIP/2.0"));
    }

    proptest::proptest! {
        #[test]
        fn parsing_any_value_never_panics(v in "\\PC*") {
            let _ = parse_challenges(&v);
        }

        #[test]
        fn quoted_values_round_trip(realm in "[ -~]{0,40}", nonce in "[!-~]{1,40}") {
            let v = format!("Digest realm={}, nonce={}", quote(&realm), quote(&nonce));
            let c = one(&v);
            proptest::prop_assert_eq!(c.realm, realm);
            proptest::prop_assert_eq!(c.nonce, nonce);
        }
    }

    #[test]
    fn the_password_stays_out_of_debug_output() {
        let client = DigestClient::new(vec![cred("r")]);
        let dbg = format!("{client:?}");
        assert!(!dbg.contains("\"pw\""), "{dbg}");
    }
}
