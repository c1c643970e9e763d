//! message/cpim (RFC 3862): the wrapper that carries From/To/DateTime around an IM.
//!
//! ```text
//!   MSRP body (Content-Type: message/cpim) -> Cpim::parse -> { headers, content_headers, body }
//!   wrap(from, to, datetime, content_type, body) -> MSRP body
//!
//!   From: Juliet <im:juliet@example.com>      message headers
//!   To: <im:romeo@example.net>
//!   DateTime: 2000-12-13T13:40:00-08:00
//!                                            blank line
//!   Content-Type: text/plain;charset=utf-8    headers of the wrapped content
//!                                            blank line
//!   Art thou not Romeo, and a Montague?       the content, to the end
//! ```

use bytes::Bytes;

/// Header lines taken from each of the two header blocks.
const MAX_HEADERS: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CpimError {
    #[error("no blank line after the message headers")]
    NoMessageHeaderEnd,
    #[error("no blank line after the content headers")]
    NoContentHeaderEnd,
    #[error("header line is not UTF-8")]
    NotUtf8,
    #[error("invalid header line {0:?}")]
    Header(String),
    #[error("more than {MAX_HEADERS} headers")]
    TooManyHeaders,
}

/// One CPIM message header: `Name` `;params` `: ` `value` (RFC 3862 section 3.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub name: String,
    /// Raw header parameters, such as `;lang=fr`; empty when none.
    pub params: String,
    pub value: String,
}

/// `[Formal-name] "<" URI ">"` of From and To.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Address {
    pub display: Option<String>,
    pub uri: String,
}

impl Address {
    pub fn new(display: Option<&str>, uri: &str) -> Address {
        Address {
            display: display.map(str::to_string),
            uri: uri.to_string(),
        }
    }

    fn parse(v: &str) -> Option<Address> {
        let v = v.trim();
        let open = v.rfind('<')?;
        let inner = v[open + 1..].strip_suffix('>')?;
        let name = v[..open].trim();
        let name = name
            .strip_prefix('"')
            .and_then(|n| n.strip_suffix('"'))
            .unwrap_or(name);
        Some(Address {
            display: (!name.is_empty()).then(|| name.to_string()),
            uri: inner.to_string(),
        })
    }

    fn render(&self) -> String {
        match &self.display {
            // A Formal-name with specials is quoted.
            Some(d) if d.chars().any(|c| "<>\"\\,;:@".contains(c)) => {
                format!(
                    "\"{}\" <{}>",
                    d.replace('\\', "\\\\").replace('"', "\\\""),
                    self.uri
                )
            }
            Some(d) => format!("{d} <{}>", self.uri),
            None => format!("<{}>", self.uri),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cpim {
    pub headers: Vec<Header>,
    /// MIME headers of the wrapped content (Content-Type, Content-ID, ...).
    pub content_headers: Vec<(String, String)>,
    pub body: Bytes,
}

impl Cpim {
    pub fn parse(data: &[u8]) -> Result<Cpim, CpimError> {
        let (msg_block, rest) = split_block(data).ok_or(CpimError::NoMessageHeaderEnd)?;
        let (content_block, body) = split_block(rest).ok_or(CpimError::NoContentHeaderEnd)?;
        let mut headers = Vec::new();
        for line in lines(msg_block)? {
            let (name_params, value) = line
                .split_once(':')
                .ok_or_else(|| CpimError::Header(line.to_string()))?;
            // "Subject:;lang=fr text": the parameters follow the colon.
            let (name, params, value) = if let Some(p) = value.strip_prefix(';') {
                let (params, v) = p.split_once(' ').unwrap_or((p, ""));
                (name_params, format!(";{params}"), v)
            } else {
                (
                    name_params,
                    String::new(),
                    value.strip_prefix(' ').unwrap_or(value),
                )
            };
            if name.is_empty() || name.contains([' ', '\t']) {
                return Err(CpimError::Header(line.to_string()));
            }
            headers.push(Header {
                name: name.to_string(),
                params,
                value: value.to_string(),
            });
        }
        let mut content_headers: Vec<(String, String)> = Vec::new();
        for line in lines(content_block)? {
            if line.starts_with([' ', '\t']) {
                // RFC 2045 folding.
                match content_headers.last_mut() {
                    Some((_, v)) => {
                        v.push(' ');
                        v.push_str(line.trim());
                        continue;
                    }
                    None => return Err(CpimError::Header(line.to_string())),
                }
            }
            let (n, v) = line
                .split_once(':')
                .ok_or_else(|| CpimError::Header(line.to_string()))?;
            if n.is_empty() || n.contains([' ', '\t']) {
                return Err(CpimError::Header(line.to_string()));
            }
            content_headers.push((n.to_string(), v.trim().to_string()));
        }
        if headers.len() > MAX_HEADERS || content_headers.len() > MAX_HEADERS {
            return Err(CpimError::TooManyHeaders);
        }
        Ok(Cpim {
            headers,
            content_headers,
            body: Bytes::copy_from_slice(body),
        })
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = String::new();
        for h in &self.headers {
            if h.params.is_empty() {
                out.push_str(&format!("{}: {}\r\n", h.name, h.value));
            } else {
                out.push_str(&format!("{}:{} {}\r\n", h.name, h.params, h.value));
            }
        }
        out.push_str("\r\n");
        for (n, v) in &self.content_headers {
            out.push_str(&format!("{n}: {v}\r\n"));
        }
        out.push_str("\r\n");
        let mut bytes = out.into_bytes();
        bytes.extend_from_slice(&self.body);
        bytes
    }

    /// A message header by name (names compared without case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value.as_str())
    }

    pub fn from(&self) -> Option<Address> {
        self.header("From").and_then(Address::parse)
    }

    /// Every To (there may be several).
    pub fn to(&self) -> Vec<Address> {
        self.headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case("To"))
            .filter_map(|h| Address::parse(&h.value))
            .collect()
    }

    pub fn datetime(&self) -> Option<&str> {
        self.header("DateTime")
    }

    /// `NS: prefix <uri>` declarations.
    pub fn namespaces(&self) -> Vec<(String, String)> {
        self.headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case("NS"))
            .filter_map(|h| {
                let a = Address::parse(&h.value)?;
                Some((a.display.unwrap_or_default(), a.uri))
            })
            .collect()
    }

    /// Content-Type of the wrapped content.
    pub fn content_type(&self) -> Option<&str> {
        self.content_headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("Content-Type"))
            .map(|(_, v)| v.as_str())
    }
}

/// Wraps `body` for sending as message/cpim.
pub fn wrap(
    from: &Address,
    to: &Address,
    datetime: Option<&str>,
    content_type: &str,
    body: &[u8],
) -> Vec<u8> {
    let mut headers = vec![
        Header {
            name: "From".into(),
            params: String::new(),
            value: from.render(),
        },
        Header {
            name: "To".into(),
            params: String::new(),
            value: to.render(),
        },
    ];
    if let Some(dt) = datetime {
        headers.push(Header {
            name: "DateTime".into(),
            params: String::new(),
            value: dt.to_string(),
        });
    }
    Cpim {
        headers,
        content_headers: vec![("Content-Type".into(), content_type.to_string())],
        body: Bytes::copy_from_slice(body),
    }
    .to_bytes()
}

/// Splits at the first blank line (CRLF CRLF, or a bare LF LF).
fn split_block(data: &[u8]) -> Option<(&[u8], &[u8])> {
    if let Some(rest) = data
        .strip_prefix(b"\r\n")
        .or_else(|| data.strip_prefix(b"\n"))
    {
        return Some((&[], rest));
    }
    let mut i = 0;
    while i < data.len() {
        if data[i] == b'\n' {
            let next = &data[i + 1..];
            if let Some(rest) = next
                .strip_prefix(b"\r\n")
                .or_else(|| next.strip_prefix(b"\n"))
            {
                return Some((&data[..=i], rest));
            }
        }
        i += 1;
    }
    None
}

fn lines(block: &[u8]) -> Result<Vec<&str>, CpimError> {
    let text = std::str::from_utf8(block).map_err(|_| CpimError::NotUtf8)?;
    let lines: Vec<&str> = text
        .split('\n')
        .map(|l| l.strip_suffix('\r').unwrap_or(l))
        .filter(|l| !l.is_empty())
        .collect();
    if lines.len() > MAX_HEADERS {
        return Err(CpimError::TooManyHeaders);
    }
    Ok(lines)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 3862 section 6.1, the example message.
    const RFC3862_EXAMPLE: &str = "From: MR SANDERS <im:piglet@100akerwood.com>\r
To: Depressed Donkey <im:eeyore@100akerwood.com>\r
DateTime: 2000-12-13T13:40:00-08:00\r
Subject: the weather will be fine today\r
Subject:;lang=fr beau temps prevu pour aujourd'hui\r
NS: MyFeatures <mid:MessageFeatures@id.foo.com>\r
Require: MyFeatures.VitalMessageOption\r
MyFeatures.VitalMessageOption: Confirmation-requested\r
MyFeatures.WackyMessageOption: Use-silly-font\r
\r
Content-Type: text/xml; charset=utf-8\r
Content-ID: <1234567890@foo.com>\r
\r
<body>\r
Here is the text of my message.\r
</body>\r
";

    #[test]
    fn the_rfc3862_example_parses_and_round_trips() {
        let c = Cpim::parse(RFC3862_EXAMPLE.as_bytes()).unwrap();
        assert_eq!(
            c.from(),
            Some(Address::new(
                Some("MR SANDERS"),
                "im:piglet@100akerwood.com"
            ))
        );
        assert_eq!(
            c.to(),
            vec![Address::new(
                Some("Depressed Donkey"),
                "im:eeyore@100akerwood.com"
            )]
        );
        assert_eq!(c.datetime(), Some("2000-12-13T13:40:00-08:00"));
        assert_eq!(c.headers[4].params, ";lang=fr");
        assert_eq!(c.headers[4].value, "beau temps prevu pour aujourd'hui");
        assert_eq!(
            c.namespaces(),
            vec![(
                "MyFeatures".to_string(),
                "mid:MessageFeatures@id.foo.com".to_string()
            )]
        );
        assert_eq!(
            c.header("myfeatures.wackymessageoption"),
            Some("Use-silly-font")
        );
        assert_eq!(c.content_type(), Some("text/xml; charset=utf-8"));
        assert_eq!(
            &c.body[..],
            b"<body>\r\nHere is the text of my message.\r\n</body>\r\n"
        );
        assert_eq!(String::from_utf8(c.to_bytes()).unwrap(), RFC3862_EXAMPLE);
    }

    #[test]
    fn wrap_and_unwrap() {
        let from = Address::new(Some("Juliet"), "im:juliet@example.com");
        let to = Address::new(None, "im:romeo@example.net");
        let bytes = wrap(
            &from,
            &to,
            Some("2014-01-23T10:00:00Z"),
            "text/plain;charset=utf-8",
            "Art thou not Romeo?".as_bytes(),
        );
        assert_eq!(
            String::from_utf8_lossy(&bytes),
            "From: Juliet <im:juliet@example.com>\r\nTo: <im:romeo@example.net>\r\nDateTime: 2014-01-23T10:00:00Z\r\n\r\nContent-Type: text/plain;charset=utf-8\r\n\r\nArt thou not Romeo?"
        );
        let c = Cpim::parse(&bytes).unwrap();
        assert_eq!(c.from(), Some(from));
        assert_eq!(c.to(), vec![to]);
        assert_eq!(&c.body[..], b"Art thou not Romeo?");
        // Names with specials are quoted and come back unquoted.
        let odd = Address::new(Some("Montague, Romeo"), "im:romeo@example.net");
        let c = Cpim::parse(&wrap(&odd, &odd, None, "text/plain", b"")).unwrap();
        assert_eq!(c.from(), Some(odd));
    }

    #[test]
    fn bare_lf_and_folded_content_headers_are_read() {
        let c = Cpim::parse(b"From: <im:a@b>\n\nContent-Type: text/plain;\n charset=utf-8\n\nhi")
            .unwrap();
        assert_eq!(c.content_type(), Some("text/plain; charset=utf-8"));
        assert_eq!(&c.body[..], b"hi");
    }

    #[test]
    fn malformed_cpim_is_refused() {
        assert_eq!(
            Cpim::parse(b"From: <im:a@b>\r\n"),
            Err(CpimError::NoMessageHeaderEnd)
        );
        assert_eq!(
            Cpim::parse(b"From: <im:a@b>\r\n\r\nContent-Type: text/plain\r\n"),
            Err(CpimError::NoContentHeaderEnd)
        );
        assert!(matches!(
            Cpim::parse(b"no colon\r\n\r\n\r\n"),
            Err(CpimError::Header(_))
        ));
        assert_eq!(
            Cpim::parse(b"From: \xff\r\n\r\n\r\n"),
            Err(CpimError::NotUtf8)
        );
        let many = "X: y\r\n".repeat(65) + "\r\n\r\n";
        assert_eq!(Cpim::parse(many.as_bytes()), Err(CpimError::TooManyHeaders));
    }
}
