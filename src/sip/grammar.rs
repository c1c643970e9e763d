//! Checks of the RFC 3261 section 25.1 grammar that rsipstack's parser is lenient about.
//!
//! rsipstack accepts an unterminated quoted string in a To, a display name of non-token
//! characters, empty Via and Contact parameters, a second To or Call-ID, an IPv6 host
//! without brackets and a Request-URI in angle brackets; RFC 4475 (3.1.2.1, 3.1.2.6,
//! 3.1.2.7, 3.1.2.15, 3.3.8) and RFC 5118 (4.2) say each of those is answered 400. These
//! functions look at the header values as they arrived (after unfolding) and name the
//! problem in the reason phrase.

/// A request that breaks the grammar: the status and reason phrase to answer it with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub status: u16,
    pub reason: String,
}

fn bad(reason: impl Into<String>) -> Violation {
    Violation {
        status: 400,
        reason: reason.into(),
    }
}

fn is_name(name: &str, long: &str, compact: Option<&str>) -> bool {
    name.eq_ignore_ascii_case(long) || compact.is_some_and(|c| name.eq_ignore_ascii_case(c))
}

/// The headers that appear at most once (RFC 3261 7.3.1: only comma-list headers may
/// repeat), with their compact forms.
const SINGLE: &[(&str, Option<&str>)] = &[
    ("To", Some("t")),
    ("From", Some("f")),
    ("Call-ID", Some("i")),
    ("CSeq", None),
    ("Max-Forwards", None),
    ("Content-Type", Some("c")),
];

/// RFC 3261 25.1 `scheme = ALPHA *( ALPHA / DIGIT / "+" / "-" / "." )`.
fn is_scheme(s: &str) -> bool {
    let mut b = s.bytes();
    b.next().is_some_and(|c| c.is_ascii_alphabetic())
        && b.all(|c| c.is_ascii_alphanumeric() || matches!(c, b'+' | b'-' | b'.'))
}

/// The address inside an IPv6 reference's brackets. Besides RFC 4291's forms this takes the
/// one RFC 3261's ABNF admits by a bug inherited from RFC 2373, `hexseq ":::" IPv4address`
/// (`2001:db8:::192.0.2.1`): RFC 5118 4.10 says an implementation "must tolerate both".
pub fn ipv6_reference(inside: &str) -> Option<std::net::Ipv6Addr> {
    if let Ok(a) = inside.parse() {
        return Some(a);
    }
    let (hexseq, v4) = inside.split_once(":::")?;
    if hexseq.is_empty() || v4.contains(':') || v4.parse::<std::net::Ipv4Addr>().is_err() {
        return None;
    }
    format!("{hexseq}::{v4}").parse().ok()
}

/// `text` with every bracketed `hexseq ":::" IPv4address` reference written in its RFC 4291
/// form (two colons), which RFC 5118 4.10 allows ("may ... serialize"): rsipstack's URI
/// parser knows only that one.
pub fn two_colon_ipv6_references(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.contains(":::") {
        return text.into();
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(open) = rest.find('[') {
        let (before, from_open) = rest.split_at(open + 1);
        out.push_str(before);
        let Some(close) = from_open.find(']') else {
            rest = from_open;
            break;
        };
        let inside = &from_open[..close];
        if inside.contains(":::") && ipv6_reference(inside).is_some() {
            out.push_str(&inside.replacen(":::", "::", 1));
        } else {
            out.push_str(inside);
        }
        rest = &from_open[close..];
    }
    out.push_str(rest);
    out.into()
}

/// `hostport` of a SIP URI (RFC 3261 25.1; RFC 5118 4.2): an IPv6 reference must be in
/// brackets, and a port is digits.
fn check_hostport(hostport: &str) -> Result<(), &'static str> {
    let (host, port) = if let Some(rest) = hostport.strip_prefix('[') {
        let Some((inside, after)) = rest.split_once(']') else {
            return Err("unterminated IPv6 reference");
        };
        if ipv6_reference(inside).is_none() {
            return Err("invalid IPv6 reference");
        }
        match after {
            "" => ("", None),
            p => match p.strip_prefix(':') {
                Some(port) => ("", Some(port)),
                None => return Err("junk after the IPv6 reference"),
            },
        }
    } else {
        match hostport.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (hostport, None),
        }
    };
    if host.contains(':') || port.is_some_and(|p| p.contains(':')) {
        return Err("IPv6 address without brackets");
    }
    if let Some(port) = port {
        if port.is_empty() || port.len() > 5 || !port.bytes().all(|b| b.is_ascii_digit()) {
            return Err("invalid port");
        }
    }
    Ok(())
}

/// The Request-URI as it appears in the Request-Line.
pub fn check_request_uri(uri: &str) -> Result<(), Violation> {
    let Some((scheme, rest)) = uri.split_once(':') else {
        return Err(bad("Malformed Request-URI: no scheme"));
    };
    if !is_scheme(scheme) {
        // RFC 4475 3.1.2.7: "<sip:...>" is not a URI with an odd scheme but no URI at all.
        return Err(bad("Malformed Request-URI"));
    }
    if scheme.eq_ignore_ascii_case("sip") || scheme.eq_ignore_ascii_case("sips") {
        let end = rest.find([';', '?']).unwrap_or(rest.len());
        let userhost = &rest[..end];
        // The user part may hold ':' (user:password) but never an unescaped '@'.
        let hostport = userhost.rsplit_once('@').map_or(userhost, |(_, h)| h);
        check_hostport(hostport).map_err(|why| bad(format!("Malformed Request-URI: {why}")))?;
    }
    Ok(())
}

/// Splits a header value at the commas that separate list elements (outside quotes and
/// angle brackets).
fn split_list(v: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut quoted = false;
    let mut escaped = false;
    let mut angle = false;
    let mut start = 0;
    for (i, c) in v.char_indices() {
        if escaped {
            escaped = false;
            continue;
        }
        match c {
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            '<' if !quoted => angle = true,
            '>' if !quoted => angle = false,
            ',' if !quoted && !angle => {
                out.push(&v[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&v[start..]);
    out
}

/// `*( SEMI generic-param )` after the main part of a value: no empty parameter
/// (RFC 4475 3.1.2.1: `;;,;,,`).
fn check_params(params: &str) -> Result<(), &'static str> {
    if params.trim().is_empty() {
        return Ok(());
    }
    let Some(params) = params.trim().strip_prefix(';') else {
        return Err("junk after the value");
    };
    // Quoted parameter values may hold ';'; split outside quotes.
    let mut quoted = false;
    let mut start = 0;
    let mut pieces = Vec::new();
    for (i, c) in params.char_indices() {
        match c {
            '"' => quoted = !quoted,
            ';' if !quoted => {
                pieces.push(&params[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if quoted {
        return Err("unterminated quoted string");
    }
    pieces.push(&params[start..]);
    if pieces
        .iter()
        .any(|p| p.split('=').next().unwrap_or("").trim().is_empty())
    {
        return Err("empty parameter");
    }
    Ok(())
}

const TOKEN_EXTRA: &[u8] = b"-.!%*_+`'~";

fn is_token_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || (c.is_ascii() && TOKEN_EXTRA.contains(&(c as u8)))
}

/// `name-addr / addr-spec` followed by params (To, From, Contact, Route, ...): balanced
/// quotes, a display name of tokens or one quoted string, and no empty parameter.
fn check_name_addr(v: &str) -> Result<(), &'static str> {
    let v = v.trim();
    if v == "*" {
        return Ok(());
    }
    // Find the end of the display name and URI part.
    let mut quoted = false;
    let mut escaped = false;
    let mut lt = None;
    for (i, c) in v.char_indices() {
        if escaped {
            escaped = false;
            continue;
        }
        match c {
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            '<' if !quoted => {
                lt = Some(i);
                break;
            }
            _ => {}
        }
    }
    if quoted {
        return Err("unterminated quoted string");
    }
    let params = match lt {
        Some(lt) => {
            let display = v[..lt].trim();
            if !display.is_empty() && !display.starts_with('"') {
                // RFC 3261 25.1 `display-name = *(token LWS) / quoted-string`.
                if !display
                    .chars()
                    .all(|c| is_token_char(c) || c == ' ' || c == '\t')
                {
                    return Err("display name is neither tokens nor a quoted string");
                }
            } else if display.starts_with('"') && !display.ends_with('"') {
                return Err("junk after the quoted display name");
            }
            let Some(gt) = v[lt..].find('>') else {
                return Err("no closing >");
            };
            &v[lt + gt + 1..]
        }
        // addr-spec: its parameters are the header's (RFC 3261 20.10).
        None => match v.find(';') {
            Some(semi) => &v[semi..],
            None => "",
        },
    };
    check_params(params)
}

/// `sent-protocol LWS sent-by *( SEMI via-params )`, for each comma-separated Via value.
fn check_via(v: &str) -> Result<(), &'static str> {
    for value in split_list(v) {
        let value = value.trim();
        if value.is_empty() {
            return Err("empty value");
        }
        let params = value.find(';').map_or("", |semi| &value[semi..]);
        check_params(params)?;
    }
    Ok(())
}

/// The checks on a request's header fields, in the order they arrived. `headers` are
/// (name, unfolded value) pairs as lexed.
pub fn check_request_headers<S: AsRef<str>>(headers: &[(&str, S)]) -> Result<(), Violation> {
    for (long, compact) in SINGLE {
        let n = headers
            .iter()
            .filter(|(name, _)| is_name(name, long, *compact))
            .count();
        if n > 1 {
            // RFC 4475 3.3.8.
            return Err(bad(format!("Multiple {long} headers")));
        }
    }
    for (name, value) in headers {
        let value = value.as_ref();
        if is_name(name, "Via", Some("v")) {
            check_via(value).map_err(|why| bad(format!("Malformed Via header: {why}")))?;
        }
        for (long, compact) in [("To", Some("t")), ("From", Some("f"))] {
            if is_name(name, long, compact) {
                check_name_addr(value)
                    .map_err(|why| bad(format!("Malformed {long} header: {why}")))?;
            }
        }
        if is_name(name, "Contact", Some("m")) {
            for element in split_list(value) {
                check_name_addr(element)
                    .map_err(|why| bad(format!("Malformed Contact header: {why}")))?;
            }
        }
    }
    Ok(())
}

/// RFC 3261 21.4.7 / RFC 4475 3.3.15: an INVITE whose Accept rules out application/sdp
/// cannot be answered with the only body stox would send.
pub fn check_accept_for_invite<S: AsRef<str>>(headers: &[(&str, S)]) -> Result<(), Violation> {
    let accepts: Vec<&str> = headers
        .iter()
        .filter(|(name, _)| is_name(name, "Accept", None))
        .flat_map(|(_, v)| split_list(v.as_ref()))
        .map(|range| range.split(';').next().unwrap_or("").trim())
        .filter(|range| !range.is_empty())
        .collect();
    // No Accept (or an empty one) means application/sdp (RFC 3261 20.1).
    if accepts.is_empty() {
        return Ok(());
    }
    let ok = accepts.iter().any(|r| {
        r.eq_ignore_ascii_case("application/sdp")
            || r.eq_ignore_ascii_case("application/*")
            || *r == "*/*"
    });
    if ok {
        Ok(())
    } else {
        Err(Violation {
            status: 406,
            reason: "Not Acceptable: Accept excludes application/sdp".into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&'static str, &'static str)]) -> Vec<(&'static str, &'static str)> {
        pairs.to_vec()
    }

    #[test]
    fn badinv01_empty_via_and_contact_params_are_malformed() {
        let e = check_request_headers(&h(&[("Via", "SIP/2.0/UDP 192.0.2.15;;,;,,")])).unwrap_err();
        assert_eq!(e.reason, "Malformed Via header: empty parameter");
        let e = check_request_headers(&h(&[("Contact", "\"Joe\" <sip:joe@example.org>;;;;")]))
            .unwrap_err();
        assert_eq!(e.reason, "Malformed Contact header: empty parameter");
    }

    #[test]
    fn quotbal_an_unterminated_display_name_is_malformed() {
        let e = check_request_headers(&h(&[("To", "\"Mr. J. User <sip:j.user@example.com>")]))
            .unwrap_err();
        assert_eq!(e.reason, "Malformed To header: unterminated quoted string");
    }

    #[test]
    fn baddn_a_display_name_with_a_comma_must_be_quoted() {
        let e = check_request_headers(&h(&[(
            "From",
            "Bell, Alexander <sip:a.g.bell@example.com>;tag=43",
        )]))
        .unwrap_err();
        assert_eq!(
            e.reason,
            "Malformed From header: display name is neither tokens nor a quoted string"
        );
        assert!(check_request_headers(&h(&[(
            "From",
            "token1~` token2'+_ token3*%!.- <sip:mundane@example.com>;tag=_token~1'+`*%!-."
        )]))
        .is_ok());
        assert!(check_request_headers(&h(&[(
            "From",
            "\"J Rosenberg \\\\\\\"\"       <sip:jdrosen@example.com>;tag = 98asjd8"
        )]))
        .is_ok());
    }

    #[test]
    fn multi01_a_second_to_or_call_id_is_refused() {
        let e = check_request_headers(&h(&[
            ("To", "sip:user@example.com"),
            ("t", "sip:other@example.net"),
        ]))
        .unwrap_err();
        assert_eq!(e.reason, "Multiple To headers");
        assert!(check_request_headers(&h(&[
            ("Via", "SIP/2.0/UDP a.example.com;branch=z9hG4bK1"),
            (
                "v",
                "SIP/2.0/UDP b.example.com;branch=z9hG4bK2, SIP/2.0/TCP c;branch=z9hG4bK3"
            ),
            (
                "Contact",
                "<sip:a@example.com>, sip:b@example.com;expires=3"
            ),
            ("Contact", "<sip:c@example.com>"),
        ]))
        .is_ok());
    }

    #[test]
    fn ipv6_bad_an_unbracketed_ipv6_request_uri_is_malformed() {
        let e = check_request_uri("sip:2001:db8::10").unwrap_err();
        assert_eq!(
            e.reason,
            "Malformed Request-URI: IPv6 address without brackets"
        );
        for good in [
            "sip:[2001:db8::10]",
            "sip:[2001:db8::10:5070]",
            "sip:[2001:db8::10]:5070",
            "sip:user;par=u%40example.net@example.com",
            "sip:user:pass@example.com:5060;transport=tcp?h=v",
            "soap.beep://192.0.2.103:3002",
            "tel:+1-201-555-0123",
        ] {
            assert!(check_request_uri(good).is_ok(), "{good}");
        }
    }

    #[test]
    fn ltgtruri_a_request_uri_in_angle_brackets_is_malformed() {
        assert_eq!(
            check_request_uri("<sip:user@example.com>")
                .unwrap_err()
                .reason,
            "Malformed Request-URI"
        );
    }

    #[test]
    fn sdp01_an_invite_accepting_no_sdp_gets_406() {
        let e = check_accept_for_invite(&h(&[("Accept", "text/nobodyKnowsThis")])).unwrap_err();
        assert_eq!(e.status, 406);
        assert!(
            check_accept_for_invite(&h(&[("Accept", "text/plain, application/sdp;q=0.5")])).is_ok()
        );
        assert!(check_accept_for_invite(&h(&[("Accept", "")])).is_ok());
        assert!(check_accept_for_invite::<&str>(&[]).is_ok());
    }

    #[test]
    fn rfc5118_4_10_the_three_colon_ipv6_reference_is_tolerated_and_nothing_more() {
        use std::net::Ipv6Addr;
        let two: Ipv6Addr = "2001:db8::192.0.2.1".parse().unwrap();
        assert_eq!(ipv6_reference("2001:db8::192.0.2.1"), Some(two));
        assert_eq!(ipv6_reference("2001:db8:::192.0.2.1"), Some(two));
        assert!(check_hostport("[2001:db8:::192.0.2.1]").is_ok());
        assert_eq!(
            two_colon_ipv6_references("sip:u@[2001:db8:::192.0.2.1]:5060;x=[a:::b]"),
            "sip:u@[2001:db8::192.0.2.1]:5060;x=[a:::b]"
        );
        assert_eq!(two_colon_ipv6_references("a:::b [::1] ["), "a:::b [::1] [");
        for bad in [
            ":::192.0.2.1",
            "2001:db8:::1",
            "2001:db8::::192.0.2.1",
            "2001:db8:::192.0.2",
            "2001:::db8:::192.0.2.1",
            "2001:db8:::192.0.2.1:5060",
        ] {
            assert_eq!(ipv6_reference(bad), None, "{bad}");
        }
    }
}
