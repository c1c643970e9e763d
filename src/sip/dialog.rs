//! Dialogs (RFC 3261 section 12), sans-IO: the state two user agents share, and the
//! requests built from it.
//!
//! ```text
//!   UAS: Dialog::as_uas(request, our tag)        UAC: Dialog::as_uac(request, 2xx/NOTIFY)
//!        remote target <- Contact, route set <- Record-Route (reversed for the UAC)
//!   request(method) -> Request-URI, To/From with tags, Call-ID, CSeq+1, Route (12.2.1.1)
//!   check_request(in-dialog request) -> CSeq order (12.2.2), target refresh
//! ```
//!
//! Header values are plain strings here: what matters is which parts are copied where.

use rsipstack::sip::headers::make_header;
use rsipstack::sip::{Header, Headers, Method, Request, Response, Uri, Version};

/// What identifies a dialog (12): Call-ID and the two tags, ours first.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct DialogId {
    pub call_id: String,
    pub local_tag: String,
    pub remote_tag: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DialogError {
    #[error("missing or malformed {0}")]
    Missing(&'static str),
    #[error("the remote target {0:?} is not a SIP URI")]
    BadTarget(String),
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Dialog {
    pub id: DialogId,
    /// Our address (name-addr, no tag): From of our requests.
    pub local_uri: String,
    /// The peer's address (name-addr, no tag): To of our requests.
    pub remote_uri: String,
    /// The peer's Contact URI: the Request-URI of our requests.
    pub remote_target: String,
    /// Route header values for our requests, in order.
    pub route_set: Vec<String>,
    pub local_seq: u32,
    pub remote_seq: Option<u32>,
}

/// Values of every header called `name`, with comma-separated lists split.
pub fn header_values(headers: &Headers, name: &str) -> Vec<String> {
    headers
        .iter()
        .filter(|h| h.name().eq_ignore_ascii_case(name))
        .flat_map(|h| split_list(h.value()))
        .collect()
}

/// The first value of a header.
pub fn header_value(headers: &Headers, name: &str) -> Option<String> {
    headers
        .iter()
        .find(|h| h.name().eq_ignore_ascii_case(name))
        .map(|h| h.value().trim().to_string())
}

/// Splits a header value at the commas that separate list elements (not those inside
/// `<...>` or quotes).
pub fn split_list(value: &str) -> Vec<String> {
    let mut out = Vec::new();
    let (mut angle, mut quote, mut escape) = (false, false, false);
    let mut cur = String::new();
    for c in value.chars() {
        if quote {
            if escape {
                escape = false;
            } else if c == '\\' {
                escape = true;
            } else if c == '"' {
                quote = false;
            }
        } else {
            match c {
                '"' => quote = true,
                '<' => angle = true,
                '>' => angle = false,
                ',' if !angle => {
                    let t = cur.trim();
                    if !t.is_empty() {
                        out.push(t.to_string());
                    }
                    cur.clear();
                    continue;
                }
                _ => {}
            }
        }
        cur.push(c);
    }
    let t = cur.trim();
    if !t.is_empty() {
        out.push(t.to_string());
    }
    out
}

/// The URI of a name-addr or addr-spec header value (inside `<>`, else up to the first `;`).
pub fn uri_of(value: &str) -> String {
    if let Some(start) = value.find('<') {
        let rest = &value[start + 1..];
        rest[..rest.find('>').unwrap_or(rest.len())]
            .trim()
            .to_string()
    } else {
        value.split(';').next().unwrap_or("").trim().to_string()
    }
}

/// The header parameters of a name-addr value: those after the `>` (or the URI).
fn header_params(value: &str) -> &str {
    match value.rfind('>') {
        Some(i) => &value[i + 1..],
        None => value.find(';').map(|i| &value[i..]).unwrap_or(""),
    }
}

/// A header parameter (`tag`, `expires`, ...) of a From/To/Contact value.
pub fn header_param(value: &str, name: &str) -> Option<String> {
    header_params(value).split(';').skip(1).find_map(|p| {
        let (k, v) = p.split_once('=').unwrap_or((p, ""));
        k.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().trim_matches('"').to_string())
    })
}

/// The value without its `tag` parameter.
pub fn without_tag(value: &str) -> String {
    let (head, params) = match value.rfind('>') {
        Some(i) => (&value[..=i], &value[i + 1..]),
        None => match value.find(';') {
            Some(i) => (&value[..i], &value[i..]),
            None => (value, ""),
        },
    };
    let kept: Vec<&str> = params
        .split(';')
        .skip(1)
        .filter(|p| !p.trim().to_ascii_lowercase().starts_with("tag="))
        .collect();
    let mut out = head.trim().to_string();
    for p in kept {
        out.push(';');
        out.push_str(p.trim());
    }
    out
}

pub fn cseq_number(headers: &Headers) -> Option<u32> {
    header_value(headers, "CSeq")?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn required(headers: &Headers, name: &'static str) -> Result<String, DialogError> {
    header_value(headers, name).ok_or(DialogError::Missing(name))
}

fn tag_of(headers: &Headers, name: &'static str) -> Result<String, DialogError> {
    header_param(&required(headers, name)?, "tag").ok_or(DialogError::Missing(name))
}

fn contact_uri(headers: &Headers) -> Result<String, DialogError> {
    let contact = header_values(headers, "Contact")
        .into_iter()
        .next()
        .ok_or(DialogError::Missing("Contact"))?;
    let uri = uri_of(&contact);
    let lower = uri.to_ascii_lowercase();
    if !(lower.starts_with("sip:") || lower.starts_with("sips:")) {
        return Err(DialogError::BadTarget(uri));
    }
    Ok(uri)
}

impl Dialog {
    /// 12.1.1: the dialog a UAS creates with its 2xx (or the first NOTIFY's 200 for a
    /// notifier) to `request`; `local_tag` is the To tag of our response.
    pub fn as_uas(request: &Request, local_tag: &str) -> Result<Dialog, DialogError> {
        let h = &request.headers;
        Ok(Dialog {
            id: DialogId {
                call_id: required(h, "Call-ID")?,
                local_tag: local_tag.to_string(),
                remote_tag: tag_of(h, "From")?,
            },
            local_uri: without_tag(&required(h, "To")?),
            remote_uri: without_tag(&required(h, "From")?),
            remote_target: contact_uri(h)?,
            route_set: header_values(h, "Record-Route"),
            // Our own requests start anywhere below 2**31 (8.1.1.5); 1 is as good as any.
            local_seq: 0,
            remote_seq: Some(cseq_number(h).ok_or(DialogError::Missing("CSeq"))?),
        })
    }

    /// 12.1.2: the dialog a UAC gets from a 2xx to its `request` (or from a NOTIFY for its
    /// SUBSCRIBE, RFC 6665 4.1.2.4: pass the NOTIFY's headers with From/To swapped by
    /// [`Dialog::as_subscriber`]).
    pub fn as_uac(request: &Request, response: &Response) -> Result<Dialog, DialogError> {
        let rq = &request.headers;
        let rs = &response.headers;
        let mut route_set = header_values(rs, "Record-Route");
        route_set.reverse();
        Ok(Dialog {
            id: DialogId {
                call_id: required(rq, "Call-ID")?,
                local_tag: tag_of(rq, "From")?,
                remote_tag: tag_of(rs, "To")?,
            },
            local_uri: without_tag(&required(rq, "From")?),
            remote_uri: without_tag(&required(rq, "To")?),
            remote_target: contact_uri(rs)?,
            route_set,
            local_seq: cseq_number(rq).ok_or(DialogError::Missing("CSeq"))?,
            remote_seq: None,
        })
    }

    /// RFC 6665 4.1.2.4: a NOTIFY for our SUBSCRIBE creates the subscriber's dialog; its
    /// From tag is the remote tag and its Record-Route is taken in reverse, as for a 2xx.
    pub fn as_subscriber(subscribe: &Request, notify: &Request) -> Result<Dialog, DialogError> {
        let rq = &subscribe.headers;
        let n = &notify.headers;
        let mut route_set = header_values(n, "Record-Route");
        route_set.reverse();
        Ok(Dialog {
            id: DialogId {
                call_id: required(rq, "Call-ID")?,
                local_tag: tag_of(rq, "From")?,
                remote_tag: tag_of(n, "From")?,
            },
            local_uri: without_tag(&required(rq, "From")?),
            remote_uri: without_tag(&required(rq, "To")?),
            remote_target: contact_uri(n)?,
            route_set,
            local_seq: cseq_number(rq).ok_or(DialogError::Missing("CSeq"))?,
            remote_seq: cseq_number(n),
        })
    }

    /// 12.2.1.1: a new request in this dialog (CSeq incremented). ACK uses [`Dialog::ack`].
    pub fn request(&mut self, method: Method) -> Result<Request, DialogError> {
        self.local_seq = self.local_seq.wrapping_add(1) % (1 << 31);
        let seq = self.local_seq;
        self.build(method, seq)
    }

    /// 13.2.2.4: the ACK for a 2xx to the INVITE with CSeq `invite_seq`.
    pub fn ack(&self, invite_seq: u32) -> Result<Request, DialogError> {
        self.build(Method::Ack, invite_seq)
    }

    fn build(&self, method: Method, seq: u32) -> Result<Request, DialogError> {
        let loose = self
            .route_set
            .first()
            .map(|r| uri_of(r).to_ascii_lowercase().contains(";lr"))
            .unwrap_or(true);
        let (target, routes): (String, Vec<String>) = if loose {
            (self.remote_target.clone(), self.route_set.clone())
        } else {
            // A strict router: it becomes the Request-URI, the remote target the last Route.
            let mut routes: Vec<String> = self.route_set[1..].to_vec();
            routes.push(format!("<{}>", self.remote_target));
            (uri_of(&self.route_set[0]), routes)
        };
        let uri: Uri = rsipstack::sip::parse_uri(&target)
            .map_err(|_| DialogError::BadTarget(target.clone()))?;
        let mut headers = Headers::default();
        headers.push(make_header(
            "To",
            format!("{};tag={}", self.remote_uri, self.id.remote_tag),
        ));
        headers.push(make_header(
            "From",
            format!("{};tag={}", self.local_uri, self.id.local_tag),
        ));
        headers.push(make_header("Call-ID", self.id.call_id.clone()));
        headers.push(make_header("CSeq", format!("{seq} {method}")));
        headers.push(make_header("Max-Forwards", "70".to_string()));
        for r in routes {
            headers.push(make_header("Route", r));
        }
        Ok(Request {
            method,
            uri,
            version: Version::V2,
            headers,
            body: Vec::new(),
        })
    }

    /// 12.2.2: checks an in-dialog request from the peer. A CSeq lower than the last one
    /// gets 500; target-refresh requests update the remote target.
    pub fn check_request(&mut self, request: &Request) -> Result<(), u16> {
        let seq = cseq_number(&request.headers).ok_or(400u16)?;
        let is_ack_or_cancel = matches!(request.method, Method::Ack | Method::Cancel);
        if let Some(last) = self.remote_seq {
            if seq < last || (seq == last && !is_ack_or_cancel) {
                return Err(500);
            }
        }
        if !is_ack_or_cancel {
            self.remote_seq = Some(seq);
        }
        if matches!(
            request.method,
            Method::Invite | Method::Update | Method::Subscribe | Method::Notify
        ) {
            if let Ok(target) = contact_uri(&request.headers) {
                self.remote_target = target;
            }
        }
        Ok(())
    }

    /// A 2xx to our target-refresh request (re-INVITE, SUBSCRIBE refresh) may move the peer.
    pub fn on_refresh_response(&mut self, response: &Response) {
        if let Ok(target) = contact_uri(&response.headers) {
            self.remote_target = target;
        }
    }

    /// Whether an incoming request belongs to this dialog (its To tag is ours, its From
    /// tag theirs, same Call-ID).
    pub fn matches(&self, request: &Request) -> bool {
        let h = &request.headers;
        header_value(h, "Call-ID").as_deref() == Some(self.id.call_id.as_str())
            && tag_of(h, "To").ok().as_deref() == Some(self.id.local_tag.as_str())
            && tag_of(h, "From").ok().as_deref() == Some(self.id.remote_tag.as_str())
    }
}

/// The dialog key of an incoming in-dialog request, as (Call-ID, our tag = its To tag,
/// their tag = its From tag).
pub fn incoming_key(request: &Request) -> Option<(String, String, String)> {
    let h = &request.headers;
    Some((
        header_value(h, "Call-ID")?,
        tag_of(h, "To").ok()?,
        tag_of(h, "From").ok()?,
    ))
}

/// Whether a header list names a header with this value among its comma-separated tokens.
pub fn has_token(headers: &Headers, name: &str, token: &str) -> bool {
    header_values(headers, name)
        .iter()
        .any(|v| v.eq_ignore_ascii_case(token))
}

/// For tests and builders: a header by name.
pub fn header(name: &str, value: impl Into<String>) -> Header {
    make_header(name, value.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::message::{parse, Framing};
    use rsipstack::sip::SipMessage;

    fn msg(text: &str) -> SipMessage {
        parse(text.as_bytes(), Framing::Datagram, 65535)
            .unwrap()
            .message
    }

    fn req(text: &str) -> Request {
        match msg(text) {
            SipMessage::Request(r) => r,
            _ => panic!(),
        }
    }

    fn resp(text: &str) -> Response {
        match msg(text) {
            SipMessage::Response(r) => r,
            _ => panic!(),
        }
    }

    const INVITE: &str = "INVITE sip:juliet@example.com SIP/2.0\r\n\
        Via: SIP/2.0/TCP p2.example.com;branch=z9hG4bKx2\r\n\
        Via: SIP/2.0/TCP client.example.net;branch=z9hG4bKx1\r\n\
        Max-Forwards: 69\r\n\
        Record-Route: <sip:p2.example.com;lr>\r\n\
        Record-Route: <sip:p1.example.net;lr>\r\n\
        From: \"Romeo\" <sip:romeo@example.net>;tag=r1\r\n\
        To: <sip:juliet@example.com>\r\n\
        Call-ID: a84b4c76e66710\r\n\
        CSeq: 314159 INVITE\r\n\
        Contact: <sip:romeo@client.example.net;transport=tcp>\r\n\
        Content-Length: 0\r\n\r\n";

    #[test]
    fn a_uas_dialog_keeps_the_record_route_order_and_targets_the_contact() {
        let mut d = Dialog::as_uas(&req(INVITE), "j1").unwrap();
        assert_eq!(d.id.remote_tag, "r1");
        assert_eq!(
            d.route_set,
            vec!["<sip:p2.example.com;lr>", "<sip:p1.example.net;lr>"]
        );
        let bye = d.request(Method::Bye).unwrap();
        let text = bye.to_string();
        // rsipstack writes transport values upper-case; they compare case-insensitively.
        assert!(
            text.to_ascii_lowercase()
                .starts_with("bye sip:romeo@client.example.net;transport=tcp sip/2.0\r\n"),
            "{text}"
        );
        assert!(
            text.contains("To: \"Romeo\" <sip:romeo@example.net>;tag=r1\r\n"),
            "{text}"
        );
        assert!(
            text.contains("From: <sip:juliet@example.com>;tag=j1\r\n"),
            "{text}"
        );
        assert!(text.contains("CSeq: 1 BYE\r\n"), "{text}");
        let routes: Vec<&str> = text.lines().filter(|l| l.starts_with("Route:")).collect();
        assert_eq!(
            routes,
            vec![
                "Route: <sip:p2.example.com;lr>",
                "Route: <sip:p1.example.net;lr>"
            ]
        );
    }

    #[test]
    fn a_uac_dialog_reverses_the_route_set_and_counts_from_the_invite() {
        let ok = resp(
            "SIP/2.0 200 OK\r\n\
             Via: SIP/2.0/TCP client.example.net;branch=z9hG4bKx1\r\n\
             Record-Route: <sip:p2.example.com;lr>, <sip:p1.example.net;lr>\r\n\
             From: \"Romeo\" <sip:romeo@example.net>;tag=r1\r\n\
             To: <sip:juliet@example.com>;tag=j1\r\n\
             Call-ID: a84b4c76e66710\r\n\
             CSeq: 314159 INVITE\r\n\
             Contact: <sip:juliet@192.0.2.4>\r\n\
             Content-Length: 0\r\n\r\n",
        );
        let mut d = Dialog::as_uac(&req(INVITE), &ok).unwrap();
        assert_eq!(d.id.local_tag, "r1");
        assert_eq!(d.id.remote_tag, "j1");
        assert_eq!(
            d.route_set,
            vec!["<sip:p1.example.net;lr>", "<sip:p2.example.com;lr>"]
        );
        let ack = d.ack(314159).unwrap().to_string();
        assert!(
            ack.starts_with("ACK sip:juliet@192.0.2.4 SIP/2.0\r\n"),
            "{ack}"
        );
        assert!(ack.contains("CSeq: 314159 ACK\r\n"), "{ack}");
        let bye = d.request(Method::Bye).unwrap().to_string();
        assert!(bye.contains("CSeq: 314160 BYE\r\n"), "{bye}");
    }

    #[test]
    fn a_strict_router_becomes_the_request_uri() {
        let mut d = Dialog::as_uas(&req(INVITE), "j1").unwrap();
        d.route_set = vec![
            "<sip:strict.example.com>".into(),
            "<sip:p1.example.net;lr>".into(),
        ];
        let bye = d.request(Method::Bye).unwrap().to_string();
        assert!(
            bye.starts_with("BYE sip:strict.example.com SIP/2.0\r\n"),
            "{bye}"
        );
        assert!(
            bye.contains("Route: <sip:romeo@client.example.net;transport=tcp>\r\n"),
            "{bye}"
        );
    }

    #[test]
    fn in_dialog_requests_must_count_up() {
        let mut d = Dialog::as_uas(&req(INVITE), "j1").unwrap();
        let bye = INVITE.replace("INVITE sip:", "BYE sip:").replace(
            "To: <sip:juliet@example.com>",
            "To: <sip:juliet@example.com>;tag=j1",
        );
        let next = req(&bye.replace("314159 INVITE", "314160 BYE"));
        assert!(d.matches(&next));
        assert_eq!(d.check_request(&next), Ok(()));
        assert_eq!(
            d.check_request(&req(&bye.replace("314159 INVITE", "314158 BYE"))),
            Err(500)
        );
    }

    #[test]
    fn lists_split_outside_brackets_and_quotes() {
        assert_eq!(
            split_list("\"a, b\" <sip:x;lr>, <sip:y,z>;p=1 ,<sip:w>"),
            vec!["\"a, b\" <sip:x;lr>", "<sip:y,z>;p=1", "<sip:w>"]
        );
        assert_eq!(
            header_param("<sip:a@b;tag=no>;tag=yes;expires=30", "tag").as_deref(),
            Some("yes")
        );
        assert_eq!(header_param("sip:a@b;tag=x", "tag").as_deref(), Some("x"));
        assert_eq!(without_tag("<sip:a@b>;x=1;tag=t"), "<sip:a@b>;x=1");
        assert_eq!(without_tag("sip:a@b;tag=t"), "sip:a@b");
        assert_eq!(
            uri_of("\"Romeo\" <sip:romeo@example.net>;tag=1"),
            "sip:romeo@example.net"
        );
        assert_eq!(
            uri_of("sip:romeo@example.net;tag=1"),
            "sip:romeo@example.net"
        );
        assert_eq!(
            uri_of("<sip:a;b@example.net;gr=x>"),
            "sip:a;b@example.net;gr=x"
        );
    }

    #[test]
    fn a_dialog_needs_tags_and_a_sip_contact() {
        let no_tag = INVITE.replace(";tag=r1", "");
        assert_eq!(
            Dialog::as_uas(&req(&no_tag), "j").unwrap_err(),
            DialogError::Missing("From")
        );
        let tel = INVITE.replace(
            "<sip:romeo@client.example.net;transport=tcp>",
            "<tel:+1555>",
        );
        assert!(matches!(
            Dialog::as_uas(&req(&tel), "j"),
            Err(DialogError::BadTarget(_))
        ));
    }
}
