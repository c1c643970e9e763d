//! SDP offer/answer for MSRP chat media (RFC 4975 section 8, RFC 3264, RFC 6135).
//!
//! ```text
//!   peer's SDP bytes -> parse -> Sdp { medias, msrp: RemoteMedia }
//!                                 -> accept_offer  -> Ok(Negotiated) | Err(Reject)  (488)
//!                                 -> accept_answer -> Ok(Negotiated) | Err(Reject)  (BYE)
//!   LocalMedia -> offer() / answer(&offer, ..) -> SDP text
//! ```
//!
//! MSRP ignores the c= and m= addresses: the peer is reached at the first URI of its
//! `a=path` (section 8.1), and the last URI of it is the peer's own, which its requests
//! carry in From-Path. Who opens the TCP connection is RFC 6135's `a=setup`; without it,
//! RFC 4975's rule holds: the offerer connects.
//!
//! `TCP/TLS/MSRP` is MSRP over TLS (RFC 4975 sections 8.1 and 14): its path starts with an
//! `msrps:` URI, ours is `msrps:` too, and it is only accepted where an msrps listener
//! (a certificate) exists. A proto that contradicts the scheme of the first hop is refused.

use std::net::IpAddr;

use sdp_types::{AddrType, Attribute, Connection, Media, NetType, Origin, Session};

use super::uri::{self, MsrpUri};

/// What stox accepts inside MSRP: CPIM-wrapped or bare text, and composing indications.
pub const ACCEPT_TYPES: &str = "message/cpim text/plain application/im-iscomposing+xml";
/// What stox accepts inside message/cpim.
pub const ACCEPT_WRAPPED_TYPES: &str = "text/plain application/im-iscomposing+xml";

/// RFC 6135 / RFC 4145 `a=setup`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Setup {
    Active,
    Passive,
    ActPass,
    HoldConn,
}

impl Setup {
    pub fn as_str(self) -> &'static str {
        match self {
            Setup::Active => "active",
            Setup::Passive => "passive",
            Setup::ActPass => "actpass",
            Setup::HoldConn => "holdconn",
        }
    }

    fn parse(s: &str) -> Option<Setup> {
        match s.trim().to_ascii_lowercase().as_str() {
            "active" => Some(Setup::Active),
            "passive" => Some(Setup::Passive),
            "actpass" => Some(Setup::ActPass),
            "holdconn" => Some(Setup::HoldConn),
            _ => None,
        }
    }
}

/// Our side of the media line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalMedia {
    /// Address for o= and c= (informational for MSRP, required by SDP).
    pub address: IpAddr,
    pub port: u16,
    /// Our MSRP URI, the whole of our a=path (stox uses no relay).
    pub uri: MsrpUri,
    /// o= session id and version.
    pub session_id: u64,
    pub session_version: u64,
}

/// The MSRP media line of a peer's SDP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteMedia {
    pub port: u16,
    /// `TCP/MSRP` or `TCP/TLS/MSRP`.
    pub proto: String,
    pub path: Vec<MsrpUri>,
    pub accept_types: Vec<String>,
    pub accept_wrapped_types: Vec<String>,
    pub setup: Option<Setup>,
    /// `a=max-size` (section 8.6).
    pub max_size: Option<u64>,
}

/// A parsed SDP and which of its m= lines is the MSRP one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sdp {
    pub session: Session,
    /// Index in `session.medias` of the first usable `m=message ... TCP/MSRP *` line.
    pub msrp_index: Option<usize>,
    pub msrp: Option<RemoteMedia>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SdpError {
    #[error("SDP does not parse: {0}")]
    Syntax(String),
    #[error("invalid a=path: {0}")]
    Path(uri::UriError),
}

/// Why an offer (answered 488) or an answer (ended with BYE) is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Reject {
    #[error("no m=message line with TCP/MSRP")]
    NoMsrpMedia,
    #[error("the MSRP media is disabled (port 0)")]
    PortZero,
    #[error("MSRP over TLS (TCP/TLS/MSRP) is offered but no msrps listener is configured")]
    Tls,
    #[error("the proto {0} does not match the scheme of the first a=path URI")]
    ProtoMismatch(String),
    #[error("the answer's proto {0} is not the offered one")]
    AnswerProto(String),
    #[error("no a=path")]
    NoPath,
    #[error("the peer accepts neither text/plain nor message/cpim")]
    NoCommonType,
    #[error("a=setup:{0} cannot be answered")]
    Setup(&'static str),
}

/// The outcome of offer/answer, for the connection and the session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiated {
    /// Our role; `Active` means we open the TCP connection.
    pub setup: Setup,
    /// `TCP/TLS/MSRP`: the connection is TLS, our a=path is `msrps:`.
    pub tls: bool,
    pub remote_path: Vec<MsrpUri>,
    /// Where to connect when active: the authority of the first URI of the peer's path.
    pub connect_to: (String, u16),
    /// The peer takes message/cpim.
    pub cpim: bool,
    /// The peer takes text/plain unwrapped.
    pub plain: bool,
    /// The peer takes isComposing (bare or wrapped).
    pub iscomposing: bool,
    pub max_size: Option<u64>,
}

impl Negotiated {
    pub fn connects(&self) -> bool {
        self.setup == Setup::Active
    }
}

pub fn parse(sdp: &[u8]) -> Result<Sdp, SdpError> {
    let session = Session::parse(sdp).map_err(|e| SdpError::Syntax(e.to_string()))?;
    let mut found = None;
    for (i, m) in session.medias.iter().enumerate() {
        if !m.media.eq_ignore_ascii_case("message") {
            continue;
        }
        let proto = m.proto.to_ascii_uppercase();
        if proto != "TCP/MSRP" && proto != "TCP/TLS/MSRP" {
            continue;
        }
        let attr = |name: &str| {
            m.attributes
                .iter()
                .find(|a| a.attribute.eq_ignore_ascii_case(name))
                .and_then(|a| a.value.as_deref())
        };
        let list = |name: &str| -> Vec<String> {
            attr(name)
                .map(|v| v.split_whitespace().map(str::to_string).collect())
                .unwrap_or_default()
        };
        let path = match attr("path") {
            Some(p) => uri::parse_path(p).map_err(SdpError::Path)?,
            None => Vec::new(),
        };
        found = Some((
            i,
            RemoteMedia {
                port: m.port,
                proto: m.proto.clone(),
                path,
                accept_types: list("accept-types"),
                accept_wrapped_types: list("accept-wrapped-types"),
                setup: attr("setup").and_then(Setup::parse),
                max_size: attr("max-size").and_then(|v| v.trim().parse().ok()),
            },
        ));
        break;
    }
    let (msrp_index, msrp) = match found {
        Some((i, m)) => (Some(i), Some(m)),
        None => (None, None),
    };
    Ok(Sdp {
        session,
        msrp_index,
        msrp,
    })
}

/// We are the answerer: is the offer acceptable, and who connects (RFC 6135 section 4.2:
/// to `actpass` the answerer should say `active`). `tls_available`: an msrps listener and
/// certificate exist, so a `TCP/TLS/MSRP` offer can be taken.
pub fn accept_offer(offer: &Sdp, tls_available: bool) -> Result<Negotiated, Reject> {
    let m = usable(offer)?;
    if is_tls(m) && !tls_available {
        return Err(Reject::Tls);
    }
    let setup = match m.setup {
        // RFC 4975: the offerer connects.
        None | Some(Setup::Active) => Setup::Passive,
        Some(Setup::Passive) | Some(Setup::ActPass) => Setup::Active,
        Some(Setup::HoldConn) => return Err(Reject::Setup("holdconn")),
    };
    Ok(negotiated(m, setup))
}

/// We offered `actpass` (over TLS when `offered_tls`): read the answer's choice.
pub fn accept_answer(answer: &Sdp, offered_tls: bool) -> Result<Negotiated, Reject> {
    let m = usable(answer)?;
    if is_tls(m) != offered_tls {
        return Err(Reject::AnswerProto(m.proto.clone()));
    }
    let setup = match m.setup {
        None | Some(Setup::Passive) => Setup::Active,
        Some(Setup::Active) => Setup::Passive,
        Some(Setup::ActPass) => return Err(Reject::Setup("actpass")),
        Some(Setup::HoldConn) => return Err(Reject::Setup("holdconn")),
    };
    Ok(negotiated(m, setup))
}

fn usable(sdp: &Sdp) -> Result<&RemoteMedia, Reject> {
    let m = sdp.msrp.as_ref().ok_or(Reject::NoMsrpMedia)?;
    if m.port == 0 {
        return Err(Reject::PortZero);
    }
    let Some(first) = m.path.first() else {
        return Err(Reject::NoPath);
    };
    if first.secure != is_tls(m) {
        return Err(Reject::ProtoMismatch(m.proto.clone()));
    }
    let n = negotiated(m, Setup::Passive);
    if !n.cpim && !n.plain {
        return Err(Reject::NoCommonType);
    }
    Ok(m)
}

fn is_tls(m: &RemoteMedia) -> bool {
    m.proto.eq_ignore_ascii_case("TCP/TLS/MSRP")
}

fn negotiated(m: &RemoteMedia, setup: Setup) -> Negotiated {
    let takes = |list: &[String], t: &str| {
        list.iter().any(|a| {
            a == "*"
                || a.eq_ignore_ascii_case(t)
                || a.strip_suffix("/*").is_some_and(|p| {
                    t.split('/')
                        .next()
                        .is_some_and(|tp| tp.eq_ignore_ascii_case(p))
                })
        })
    };
    let cpim = takes(&m.accept_types, "message/cpim");
    let iscomposing = takes(&m.accept_types, "application/im-iscomposing+xml")
        || (cpim && takes(&m.accept_wrapped_types, "application/im-iscomposing+xml"));
    let first = m.path.first();
    Negotiated {
        setup,
        tls: is_tls(m),
        remote_path: m.path.clone(),
        connect_to: first
            .map(|u| (u.host_for_connect().to_string(), u.port_or_default()))
            .unwrap_or_default(),
        cpim,
        plain: takes(&m.accept_types, "text/plain"),
        iscomposing,
        max_size: m.max_size,
    }
}

fn session(local: &LocalMedia) -> Session {
    let addrtype = if local.address.is_ipv4() {
        AddrType::Ip4
    } else {
        AddrType::Ip6
    };
    Session {
        origin: Origin {
            username: Some("-".to_string()),
            sess_id: local.session_id.to_string(),
            sess_version: local.session_version,
            nettype: NetType::In,
            addrtype: addrtype.clone(),
            unicast_address: local.address.to_string(),
        },
        session_name: "-".to_string(),
        session_description: None,
        uri: None,
        emails: Vec::new(),
        phones: Vec::new(),
        connection: Some(Connection {
            nettype: NetType::In,
            addrtype,
            connection_address: local.address.to_string(),
        }),
        bandwidths: Vec::new(),
        times: Vec::new(),
        time_zones: Vec::new(),
        key: None,
        attributes: Vec::new(),
        medias: Vec::new(),
    }
}

fn msrp_media(local: &LocalMedia, setup: Setup) -> Media {
    let attr = |name: &str, value: &str| Attribute {
        attribute: name.to_string(),
        value: Some(value.to_string()),
    };
    Media {
        media: "message".to_string(),
        port: local.port,
        num_ports: None,
        proto: if local.uri.secure {
            "TCP/TLS/MSRP"
        } else {
            "TCP/MSRP"
        }
        .to_string(),
        fmt: "*".to_string(),
        media_title: None,
        connections: Vec::new(),
        bandwidths: Vec::new(),
        key: None,
        attributes: vec![
            attr("accept-types", ACCEPT_TYPES),
            attr("accept-wrapped-types", ACCEPT_WRAPPED_TYPES),
            attr("path", &local.uri.to_string()),
            attr("setup", setup.as_str()),
        ],
    }
}

fn write(s: &Session) -> String {
    let mut out = Vec::new();
    // Writing to a Vec cannot fail, and every field written is a String.
    let _ = s.write(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// An offer with `a=setup:actpass` (RFC 6135 section 4.1); `TCP/TLS/MSRP` when our URI is
/// `msrps:`.
pub fn offer(local: &LocalMedia) -> String {
    let mut s = session(local);
    s.medias.push(msrp_media(local, Setup::ActPass));
    write(&s)
}

/// The answer to an accepted offer: our MSRP line in place of the offer's, every other
/// m= line refused with port 0 (RFC 3264 section 6).
pub fn answer(offer: &Sdp, local: &LocalMedia, negotiated: &Negotiated) -> String {
    let mut s = session(local);
    for (i, m) in offer.session.medias.iter().enumerate() {
        if Some(i) == offer.msrp_index {
            s.medias.push(msrp_media(local, negotiated.setup));
        } else {
            s.medias.push(Media {
                media: m.media.clone(),
                port: 0,
                num_ports: None,
                proto: m.proto.clone(),
                fmt: m.fmt.clone(),
                media_title: None,
                connections: Vec::new(),
                bandwidths: Vec::new(),
                key: None,
                attributes: Vec::new(),
            });
        }
    }
    write(&s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local() -> LocalMedia {
        LocalMedia {
            address: "192.0.2.10".parse().unwrap(),
            port: 7654,
            uri: MsrpUri::parse("msrp://x2s.example.com:7654/jshA7weztas;tcp").unwrap(),
            session_id: 2890844526,
            session_version: 1,
        }
    }

    /// RFC 7573 example 10 with the v=/o=/s=/t= lines SDP requires.
    const ROMEO_OFFER: &str = "v=0\r
o=romeo 2890844527 2890844527 IN IP4 s2x.example.net\r
s=-\r
c=IN IP4 s2x.example.net\r
t=0 0\r
m=message 7313 TCP/MSRP *\r
a=accept-types:text/plain\r
a=path:msrp://s2x.example.net:7313/ansp71weztas;tcp\r
";

    #[test]
    fn our_offer_is_exact() {
        assert_eq!(
            offer(&local()),
            "v=0\r
o=- 2890844526 1 IN IP4 192.0.2.10\r
s=-\r
c=IN IP4 192.0.2.10\r
t=0 0\r
m=message 7654 TCP/MSRP *\r
a=accept-types:message/cpim text/plain application/im-iscomposing+xml\r
a=accept-wrapped-types:text/plain application/im-iscomposing+xml\r
a=path:msrp://x2s.example.com:7654/jshA7weztas;tcp\r
a=setup:actpass\r
"
        );
    }

    #[test]
    fn our_offer_parses_back() {
        let sdp = parse(offer(&local()).as_bytes()).unwrap();
        let m = sdp.msrp.unwrap();
        assert_eq!(m.port, 7654);
        assert_eq!(m.path, vec![local().uri]);
        assert_eq!(m.accept_types.len(), 3);
        assert_eq!(
            m.accept_wrapped_types,
            ["text/plain", "application/im-iscomposing+xml"]
        );
        assert_eq!(m.setup, Some(Setup::ActPass));
    }

    #[test]
    fn an_offer_without_setup_makes_the_offerer_active() {
        let sdp = parse(ROMEO_OFFER.as_bytes()).unwrap();
        let n = accept_offer(&sdp, false).unwrap();
        assert_eq!(n.setup, Setup::Passive);
        assert!(!n.connects());
        assert!(n.plain && !n.cpim && !n.iscomposing);
        assert_eq!(n.connect_to, ("s2x.example.net".to_string(), 7313));
        let ans = answer(&sdp, &local(), &n);
        assert!(ans.contains("m=message 7654 TCP/MSRP *\r\n"), "{ans}");
        assert!(ans.contains("a=setup:passive\r\n"));
    }

    #[test]
    fn setup_roles_follow_rfc_6135() {
        let with = |setup: &str| ROMEO_OFFER.to_string() + &format!("a=setup:{setup}\r\n");
        let role = |setup: &str| {
            accept_offer(&parse(with(setup).as_bytes()).unwrap(), false).map(|n| n.setup)
        };
        assert_eq!(role("actpass"), Ok(Setup::Active));
        assert_eq!(role("active"), Ok(Setup::Passive));
        assert_eq!(role("passive"), Ok(Setup::Active));
        assert_eq!(role("holdconn"), Err(Reject::Setup("holdconn")));
        let answered = |setup: &str| {
            accept_answer(&parse(with(setup).as_bytes()).unwrap(), false).map(|n| n.setup)
        };
        assert_eq!(answered("active"), Ok(Setup::Passive));
        assert_eq!(answered("passive"), Ok(Setup::Active));
        assert_eq!(answered("actpass"), Err(Reject::Setup("actpass")));
        // No a=setup in the answer: RFC 4975, the offerer (we) connects.
        assert_eq!(
            accept_answer(&parse(ROMEO_OFFER.as_bytes()).unwrap(), false)
                .unwrap()
                .setup,
            Setup::Active
        );
    }

    #[test]
    fn unacceptable_offers_say_why() {
        let base = "v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n";
        let cases = [
            ("m=audio 49170 RTP/AVP 0\r\n", Reject::NoMsrpMedia),
            ("m=message 0 TCP/MSRP *\r\na=accept-types:text/plain\r\na=path:msrp://h:1/s;tcp\r\n", Reject::PortZero),
            ("m=message 1 TCP/TLS/MSRP *\r\na=accept-types:text/plain\r\na=path:msrps://h:1/s;tcp\r\n", Reject::Tls),
            ("m=message 1 TCP/TLS/MSRP *\r\na=accept-types:text/plain\r\na=path:msrp://h:1/s;tcp\r\n", Reject::ProtoMismatch("TCP/TLS/MSRP".into())),
            ("m=message 1 TCP/MSRP *\r\na=accept-types:text/plain\r\na=path:msrps://h:1/s;tcp\r\n", Reject::ProtoMismatch("TCP/MSRP".into())),
            ("m=message 1 TCP/MSRP *\r\na=accept-types:text/plain\r\n", Reject::NoPath),
            ("m=message 1 TCP/MSRP *\r\na=accept-types:image/png\r\na=path:msrp://h:1/s;tcp\r\n", Reject::NoCommonType),
            ("m=message 1 TCP/MSRP *\r\na=path:msrp://h:1/s;tcp\r\n", Reject::NoCommonType),
        ];
        for (m, want) in cases {
            let sdp = parse(format!("{base}{m}").as_bytes()).unwrap();
            assert_eq!(accept_offer(&sdp, false), Err(want), "{m}");
        }
        assert!(matches!(parse(b"not sdp"), Err(SdpError::Syntax(_))));
        let bad_path = format!("{base}m=message 1 TCP/MSRP *\r\na=path:http://x\r\n");
        assert!(matches!(parse(bad_path.as_bytes()), Err(SdpError::Path(_))));
    }

    #[test]
    fn wildcards_cpim_and_relay_paths() {
        let sdp = "v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n\
             m=audio 49170 RTP/AVP 0\r\n\
             m=message 2855 TCP/MSRP *\r\na=accept-types:message/cpim\r\n\
             a=accept-wrapped-types:*\r\na=max-size:65536\r\n\
             a=path:msrp://relay.example.net:2855/r1;tcp msrp://bob.example.com:8888/9di4eae923wzd;tcp\r\n";
        let sdp = parse(sdp.as_bytes()).unwrap();
        assert_eq!(sdp.msrp_index, Some(1));
        let n = accept_offer(&sdp, false).unwrap();
        assert!(n.cpim && !n.plain && n.iscomposing);
        assert_eq!(n.max_size, Some(65536));
        // Connect to the first hop; the peer is the last.
        assert_eq!(n.connect_to, ("relay.example.net".to_string(), 2855));
        assert_eq!(n.remote_path.len(), 2);
        // The audio line is refused in the answer, the message line kept in its place.
        let ans = answer(&sdp, &local(), &n);
        let m_lines: Vec<&str> = ans.lines().filter(|l| l.starts_with("m=")).collect();
        assert_eq!(
            m_lines,
            ["m=audio 0 RTP/AVP 0", "m=message 7654 TCP/MSRP *"]
        );
    }

    fn secure_local() -> LocalMedia {
        LocalMedia {
            port: 7655,
            uri: MsrpUri::parse("msrps://x2s.example.com:7655/jshA7weztas;tcp").unwrap(),
            ..local()
        }
    }

    #[test]
    fn an_msrps_offer_says_tcp_tls_msrp_and_is_accepted_only_with_a_listener() {
        let text = offer(&secure_local());
        assert!(text.contains("m=message 7655 TCP/TLS/MSRP *\r\n"), "{text}");
        assert!(
            text.contains("a=path:msrps://x2s.example.com:7655/jshA7weztas;tcp\r\n"),
            "{text}"
        );
        let sdp = parse(text.as_bytes()).unwrap();
        assert_eq!(sdp.msrp.as_ref().unwrap().proto, "TCP/TLS/MSRP");
        assert_eq!(accept_offer(&sdp, false), Err(Reject::Tls));
        let n = accept_offer(&sdp, true).unwrap();
        assert!(n.tls);
        assert_eq!(n.setup, Setup::Active);
        assert_eq!(n.connect_to, ("x2s.example.com".to_string(), 7655));
        assert!(n.remote_path[0].secure);
        // The answer is TLS too, with our msrps: path.
        let ans = answer(&sdp, &secure_local(), &n);
        assert!(ans.contains("m=message 7655 TCP/TLS/MSRP *\r\n"), "{ans}");
        assert!(ans.contains("a=path:msrps://"), "{ans}");
        assert!(ans.contains("a=setup:active\r\n"), "{ans}");
        // A plain offer stays plain where TLS is available.
        let plain = parse(ROMEO_OFFER.as_bytes()).unwrap();
        assert!(!accept_offer(&plain, true).unwrap().tls);
    }

    #[test]
    fn an_answer_must_keep_the_offered_proto() {
        let tls_answer = parse(
            offer(&secure_local())
                .replace("actpass", "passive")
                .as_bytes(),
        )
        .unwrap();
        let plain_answer = parse(ROMEO_OFFER.as_bytes()).unwrap();
        let n = accept_answer(&tls_answer, true).unwrap();
        assert!(n.tls && n.connects());
        assert_eq!(
            accept_answer(&tls_answer, false),
            Err(Reject::AnswerProto("TCP/TLS/MSRP".into()))
        );
        assert_eq!(
            accept_answer(&plain_answer, true),
            Err(Reject::AnswerProto("TCP/MSRP".into()))
        );
        assert!(!accept_answer(&plain_answer, false).unwrap().tls);
    }

    #[test]
    fn an_ipv6_msrps_path_connects_to_the_bare_address() {
        let sdp = "v=0\r\no=- 1 1 IN IP6 ::1\r\ns=-\r\nc=IN IP6 ::1\r\nt=0 0\r\n\
             m=message 2856 TCP/TLS/MSRP *\r\na=accept-types:text/plain\r\n\
             a=path:msrps://[::1]:2856/s1d;tcp\r\n";
        let n = accept_offer(&parse(sdp.as_bytes()).unwrap(), true).unwrap();
        assert_eq!(n.connect_to, ("::1".to_string(), 2856));
        assert!(crate::sip::tls::server_name(&n.connect_to.0).is_some());
    }

    #[test]
    fn msrp_sdp_round_trips_through_sdp_types() {
        let text = offer(&local());
        let sdp = parse(text.as_bytes()).unwrap();
        assert_eq!(write(&sdp.session), text);
    }
}
