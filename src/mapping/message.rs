//! Single ("pager-mode") messages, RFC 7572: XMPP `<message/>` <-> SIP MESSAGE.
//!
//! Table 1 (XMPP -> SIP): body -> MESSAGE body, subject -> Subject, thread -> Call-ID,
//! from -> From (resource as GRUU), to -> To, xml:lang -> Content-Language.
//! Table 2 (SIP -> XMPP): Call-ID -> thread, Content-Language -> xml:lang, From -> from,
//! Subject -> subject, Request-URI -> to, body -> body; text/html also -> XHTML-IM (section 5).

use std::borrow::Cow;

use rsipstack::sip::headers::make_header;
use rsipstack::sip::prelude::HeadersExt;
use rsipstack::sip::uri::{Auth, HostWithPort, OtherParam, OtherParamValue, Param, Scheme, User};
use rsipstack::sip::{Header, Headers, Method, Request, Uri, Version};
use xmpp_parsers::jid::Jid;
use xmpp_parsers::message::{Message, MessageType, Thread};

use crate::address::{SipAddress, UriScheme};
use crate::mapping::xhtml;

/// Why a message could not be mapped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MapError {
    #[error("the message has no body to send")]
    NoBody,
    #[error("content type {0:?} is not supported")]
    UnsupportedMediaType(String),
    #[error("charset {0:?} is not supported")]
    UnsupportedCharset(String),
    #[error("the body is not valid {0}")]
    BadEncoding(&'static str),
    #[error("the address {0:?} cannot be written as a SIP URI")]
    BadUri(String),
}

impl MapError {
    /// The SIP status for a MESSAGE that could not be mapped.
    pub fn sip_status(&self) -> u16 {
        match self {
            MapError::UnsupportedMediaType(_) | MapError::UnsupportedCharset(_) => 415,
            _ => 400,
        }
    }
}

/// Content types accepted in a MESSAGE, for the Accept header of a 415.
pub const ACCEPT: &str = "text/plain, text/html";

/// Removes characters XML 1.0 cannot carry (most C0 controls, U+FFFE, U+FFFF): a single
/// one of them in a stanza would make the XMPP server close the component's stream.
pub fn xml_safe(s: &str) -> Cow<'_, str> {
    let ok = |c: char| {
        matches!(c, '\t' | '\n' | '\r') || (c >= ' ' && c != '\u{FFFE}' && c != '\u{FFFF}')
    };
    if s.chars().all(ok) {
        Cow::Borrowed(s)
    } else {
        Cow::Owned(s.chars().filter(|c| ok(*c)).collect())
    }
}

/// A header value must stay on one line and carry no control characters.
fn header_safe(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect::<String>()
        .trim()
        .to_string()
}

/// RFC 3261 25.1 `word`: the characters a Call-ID may hold.
fn is_call_id_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "-.!%*_+`'~()<>:\\\"/[]?{}@".contains(c)
}

/// An XMPP thread as a Call-ID: characters a Call-ID cannot hold are %-encoded.
pub fn thread_to_call_id(thread: &str) -> Option<String> {
    let mut out = String::with_capacity(thread.len());
    for c in thread.chars() {
        if is_call_id_char(c) {
            out.push(c);
        } else {
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                out.push_str(&format!("%{b:02X}"));
            }
        }
    }
    // More than one '@' is not a Call-ID (word [ "@" word ]).
    if out.matches('@').count() > 1 {
        let first = out.find('@').unwrap_or(0);
        let (head, tail) = out.split_at(first + 1);
        out = format!("{head}{}", tail.replace('@', "%40"));
    }
    (!out.is_empty() && out.len() <= 256).then_some(out)
}

/// A language tag usable in Content-Language (RFC 3261 20.13: primary-tag *( "-" subtag )).
pub(crate) fn language_tag(lang: &str) -> Option<&str> {
    let ok = !lang.is_empty()
        && lang.len() <= 35
        && lang
            .split('-')
            .all(|p| !p.is_empty() && p.len() <= 8 && p.chars().all(|c| c.is_ascii_alphanumeric()));
    ok.then_some(lang)
}

/// The Request-URI (or any URI) of a SIP address as rsipstack's `Uri`, built field by field:
/// parsing a string would split a user part that contains `;` or `?`.
pub fn sip_uri(a: &SipAddress) -> Result<Uri, MapError> {
    let scheme = match a.scheme {
        UriScheme::Sips => Scheme::Sips,
        _ => Scheme::Sip,
    };
    let hostport = match a.port {
        Some(p) => format!("{}:{p}", a.host),
        None => a.host.clone(),
    };
    let host_with_port = HostWithPort::try_from(hostport.as_str())
        .map_err(|_| MapError::BadUri(a.to_uri_string()))?;
    let mut params = Vec::new();
    if a.user_phone {
        params.push(Param::User(User::new("phone")));
    }
    if a.gruu.is_some() {
        // The %-encoded value as the address module writes it.
        let s = a.to_uri_string();
        if let Some(v) = s.rsplit_once(";gr=").map(|(_, v)| v) {
            params.push(Param::Other(
                OtherParam::new("gr"),
                Some(OtherParamValue::new(v)),
            ));
        }
    }
    Ok(Uri {
        scheme: Some(scheme),
        auth: a.user.as_ref().map(|u| Auth {
            user: u.clone(),
            password: None,
        }),
        host_with_port,
        params,
        headers: Vec::new(),
    })
}

/// Table 1: an XMPP message from a local user (`from`) to a SIP user (`to`) as a MESSAGE.
/// Via, Max-Forwards and Content-Length are the transaction layer's to add.
pub fn xmpp_to_sip(
    msg: &Message,
    from: &SipAddress,
    to: &SipAddress,
    call_id: &str,
    cseq: u32,
    from_tag: &str,
) -> Result<Request, MapError> {
    let (lang, body) = msg
        .get_best_body(vec![])
        .map(|(l, b)| (l.clone(), b.clone()))
        .ok_or(MapError::NoBody)?;
    let uri = sip_uri(to)?;
    let mut headers = Headers::default();
    let mut push = |name: &str, value: String| headers.push(make_header(name, value));
    push("To", format!("<{}>", to.aor().to_uri_string()));
    push("From", format!("<{}>;tag={from_tag}", from.to_uri_string()));
    push("Call-ID", call_id.to_string());
    push("CSeq", format!("{cseq} MESSAGE"));
    if let Some((_, subject)) = msg.get_best_subject(vec![lang.as_str()]) {
        let s = header_safe(subject);
        if !s.is_empty() {
            push("Subject", s);
        }
    }
    push("Content-Type", "text/plain;charset=UTF-8".into());
    if let Some(tag) = language_tag(&lang) {
        push("Content-Language", tag.to_string());
    }
    Ok(Request {
        method: Method::Message,
        uri,
        version: Version::V2,
        headers,
        body: body.into_bytes(),
    })
}

/// A parsed Content-Type: `type/subtype` lowercased and the charset parameter.
fn content_type(req: &Request) -> (String, Option<String>) {
    let Some(value) = req.headers.iter().find_map(|h| match h {
        Header::ContentType(c) => Some(c.value().to_string()),
        _ => None,
    }) else {
        // RFC 3261 7.4.1: a body without Content-Type... treat an empty one as text.
        return ("text/plain".into(), None);
    };
    let mut parts = value.split(';');
    let mime = parts.next().unwrap_or("").trim().to_ascii_lowercase();
    let charset = parts.find_map(|p| {
        let (k, v) = p.split_once('=')?;
        k.trim()
            .eq_ignore_ascii_case("charset")
            .then(|| v.trim().trim_matches('"').to_ascii_lowercase())
    });
    (mime, charset)
}

fn decode_body(body: &[u8], charset: Option<&str>) -> Result<String, MapError> {
    match charset {
        None | Some("utf-8") | Some("utf8") | Some("us-ascii") => {
            String::from_utf8(body.to_vec()).map_err(|_| MapError::BadEncoding("UTF-8"))
        }
        Some("iso-8859-1") | Some("latin1") | Some("iso_8859-1") => {
            Ok(body.iter().map(|b| *b as char).collect())
        }
        Some(other) => Err(MapError::UnsupportedCharset(other.to_string())),
    }
}

fn header_value(req: &Request, name: &str) -> Option<String> {
    req.header_value(name)
}

/// Table 2 and section 5: a SIP MESSAGE as an XMPP message from `from` (the SIP user's
/// JID at the gateway) to `to` (the local user).
pub fn sip_to_xmpp(req: &Request, from: Jid, to: Jid, id: String) -> Result<Message, MapError> {
    let (mime, charset) = content_type(req);
    let text = decode_body(&req.body, charset.as_deref())?;
    let lang = header_value(req, "Content-Language")
        .and_then(|l| {
            l.split(',')
                .next()
                .map(|t| t.trim().to_string())
                .filter(|t| language_tag(t).is_some())
        })
        .unwrap_or_default();
    let mut msg = Message::new(Some(to));
    msg.type_ = MessageType::Normal;
    msg.from = Some(from);
    msg.id = Some(xmpp_parsers::message::Id(id));
    match mime.as_str() {
        "text/plain" => {
            msg.bodies
                .insert(lang.clone().into(), xml_safe(&text).into_owned());
        }
        "text/html" => {
            let x = xhtml::html_to_xhtml_im(&text);
            msg.bodies
                .insert(lang.clone().into(), xml_safe(&x.plain).into_owned());
            msg.payloads.push(x.html);
        }
        other => return Err(MapError::UnsupportedMediaType(other.to_string())),
    }
    if let Some(subject) = header_value(req, "Subject").or_else(|| header_value(req, "s")) {
        let subject = xml_safe(&subject).into_owned();
        if !subject.is_empty() {
            msg.subjects.insert(lang.into(), subject);
        }
    }
    if let Ok(call_id) = req.call_id_header() {
        msg.thread = Some(Thread {
            parent: None,
            id: xml_safe(call_id.value()).into_owned(),
        });
    }
    Ok(msg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::message::{parse, Framing};
    use rsipstack::sip::SipMessage;
    use std::str::FromStr;
    use xmpp_parsers::minidom::Element;

    fn romeo() -> SipAddress {
        SipAddress::parse("sip:romeo@example.net").unwrap()
    }

    fn juliet_balcony() -> SipAddress {
        SipAddress::parse("sip:juliet@example.com;gr=balcony").unwrap()
    }

    fn xml(s: &str) -> Message {
        Message::try_from(Element::from_str(s).unwrap()).unwrap()
    }

    #[test]
    fn table_1_the_documents_example() {
        let m = xml(
            "<message xmlns='jabber:component:accept' from='juliet@example.com/balcony' \
             to='romeo\\40example.net@sip.example.com'>\
             <body>Art thou not Romeo, and a Montague?</body></message>",
        );
        let req = xmpp_to_sip(
            &m,
            &juliet_balcony(),
            &romeo(),
            "Hr0zny9l3@example.com",
            1,
            "t1",
        )
        .unwrap();
        let mut msg = SipMessage::Request(req);
        let text = String::from_utf8(crate::sip::message::to_bytes(&mut msg)).unwrap();
        assert_eq!(
            text,
            "MESSAGE sip:romeo@example.net SIP/2.0\r\n\
             To: <sip:romeo@example.net>\r\n\
             From: <sip:juliet@example.com;gr=balcony>;tag=t1\r\n\
             Call-ID: Hr0zny9l3@example.com\r\n\
             CSeq: 1 MESSAGE\r\n\
             Content-Type: text/plain;charset=UTF-8\r\n\
             Content-Length: 35\r\n\r\n\
             Art thou not Romeo, and a Montague?"
        );
    }

    #[test]
    fn table_1_subject_and_language() {
        let m = xml(
            "<message xmlns='jabber:component:accept' xml:lang='en' to='romeo\\40example.net@sip.example.com'>\
             <subject>Hi\nthere</subject><body>Wherefore?</body></message>",
        );
        let req = xmpp_to_sip(&m, &juliet_balcony(), &romeo(), "c", 2, "t").unwrap();
        assert_eq!(req.header_value("Subject").as_deref(), Some("Hi there"));
        assert_eq!(req.header_value("Content-Language").as_deref(), Some("en"));
    }

    #[test]
    fn a_message_without_a_body_has_nothing_to_send() {
        let m = xml(
            "<message xmlns='jabber:component:accept' to='romeo\\40example.net@sip.example.com'/>",
        );
        assert_eq!(
            xmpp_to_sip(&m, &juliet_balcony(), &romeo(), "c", 1, "t").unwrap_err(),
            MapError::NoBody
        );
    }

    #[test]
    fn threads_become_call_ids() {
        assert_eq!(
            thread_to_call_id("e0ffe42b28561960c6b12b944a092794b9683a38").unwrap(),
            "e0ffe42b28561960c6b12b944a092794b9683a38"
        );
        assert_eq!(thread_to_call_id("a b").unwrap(), "a%20b");
        assert_eq!(thread_to_call_id("x@y@z").unwrap(), "x@y%40z");
        assert_eq!(thread_to_call_id(""), None);
    }

    fn sip(text: &str) -> Request {
        match parse(text.as_bytes(), Framing::Datagram, 65535)
            .unwrap()
            .message
        {
            SipMessage::Request(r) => r,
            _ => panic!(),
        }
    }

    fn romeo_message(ctype: &str, extra: &str, body: &str) -> Request {
        sip(&format!(
            "MESSAGE sip:juliet@example.com SIP/2.0\r\n\
             Via: SIP/2.0/TCP s2x.example.net;branch=z9hG4bKeskdgs677\r\n\
             Max-Forwards: 70\r\n\
             To: sip:juliet@example.com\r\n\
             From: sip:romeo@example.net;tag=1\r\n\
             Call-ID: M4spr4vdu@example.net\r\n\
             CSeq: 1 MESSAGE\r\n\
             Content-Type: {ctype}\r\n{extra}\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        ))
    }

    fn jids() -> (Jid, Jid) {
        (
            Jid::new("romeo\\40example.net@sip.example.com").unwrap(),
            Jid::new("juliet@example.com").unwrap(),
        )
    }

    #[test]
    fn table_2_the_documents_example() {
        let req = romeo_message(
            "text/plain",
            "",
            "Neither, fair saint, if either thee dislike.",
        );
        let (from, to) = jids();
        let m = sip_to_xmpp(&req, from, to, "id1".into()).unwrap();
        let el = Element::from(m);
        let mut out = String::new();
        out.push_str(&String::from(&el));
        assert_eq!(
            out,
            "<message xmlns='jabber:component:accept' from='romeo\\40example.net@sip.example.com' \
             id='id1' to='juliet@example.com'>\
             <body>Neither, fair saint, if either thee dislike.</body>\
             <thread>M4spr4vdu@example.net</thread></message>"
        );
    }

    #[test]
    fn table_2_subject_and_content_language() {
        let req = romeo_message(
            "text/plain; charset=\"UTF-8\"",
            "Subject: Verona\r\nContent-Language: it\r\n",
            "Ciao",
        );
        let (from, to) = jids();
        let m = sip_to_xmpp(&req, from, to, "id".into()).unwrap();
        assert_eq!(m.bodies.get("it").map(String::as_str), Some("Ciao"));
        assert_eq!(m.subjects.get("it").map(String::as_str), Some("Verona"));
    }

    #[test]
    fn html_becomes_xhtml_im_beside_a_plain_body() {
        let req = romeo_message("text/html", "", "<p>Hello <b>Juliet</b></p>");
        let (from, to) = jids();
        let m = sip_to_xmpp(&req, from, to, "id".into()).unwrap();
        assert_eq!(m.bodies.get("").map(String::as_str), Some("Hello Juliet"));
        assert!(m
            .payloads
            .iter()
            .any(|p| p.is("html", "http://jabber.org/protocol/xhtml-im")));
    }

    #[test]
    fn unsupported_types_and_bad_bytes_are_refused() {
        let (from, to) = jids();
        let req = romeo_message("application/octet-stream", "", "x");
        assert_eq!(
            sip_to_xmpp(&req, from.clone(), to.clone(), "i".into())
                .unwrap_err()
                .sip_status(),
            415
        );
        let mut req = romeo_message("text/plain", "", "xx");
        req.body = vec![0xff, 0xfe];
        assert_eq!(
            sip_to_xmpp(&req, from.clone(), to.clone(), "i".into()).unwrap_err(),
            MapError::BadEncoding("UTF-8")
        );
        let mut req = romeo_message("text/plain;charset=iso-8859-1", "", "xx");
        req.body = vec![b'J', 0xfc];
        let m = sip_to_xmpp(&req, from, to, "i".into()).unwrap();
        assert_eq!(m.bodies.get("").map(String::as_str), Some("Jü"));
    }

    #[test]
    fn control_characters_never_reach_the_xml_stream() {
        let req = romeo_message("text/plain", "", "a\u{1}b\u{8}c\td");
        let (from, to) = jids();
        let m = sip_to_xmpp(&req, from, to, "i".into()).unwrap();
        assert_eq!(m.bodies.get("").map(String::as_str), Some("abc\td"));
    }

    #[test]
    fn a_user_part_with_a_semicolon_survives_the_request_uri() {
        let to = SipAddress::parse("sip:a;b@example.net").unwrap();
        let m = xml("<message xmlns='jabber:component:accept'><body>x</body></message>");
        let req = xmpp_to_sip(&m, &juliet_balcony(), &to, "c", 1, "t").unwrap();
        assert_eq!(req.uri.to_string(), "sip:a;b@example.net");
    }
}
