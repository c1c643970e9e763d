//! Presence, RFC 7248 section 4: XMPP `<presence/>` <-> PIDF (RFC 3863, `application/pidf+xml`).
//!
//! ```text
//!  XMPP (Table 6 ->, Table 7 <-)             PIDF
//!  from='juliet@example.com/balcony'         entity='pres:juliet@example.com'
//!    resource 'balcony'                 <->  <tuple id='ID-balcony'>, <contact>sip:...;gr=balcony
//!    no type / type='unavailable'       <->  <status><basic>open / closed</basic>
//!    <show>away</show>                  <->  <show xmlns='jabber:client'>away</show> in <status>
//!                                       <-   RPID <activities>/<user-input> when there is no <show>
//!    <status xml:lang='en'>...</status> <->  <note xml:lang='en'>...</note>
//!    <priority>-128..127</priority>     <->  <contact priority='0..1'>
//!    xml:lang                           <->  Content-Language (one language for the document)
//! ```
//!
//! The SIP headers of Tables 6 and 7 (From, To, CSeq, Event) are the subscription layer's;
//! this module maps bodies only and does no I/O. Both directions keep a little state,
//! because a NOTIFY carries the whole presence of a user: [`UserPresence`] renders every
//! resource of an XMPP user in one document, and [`RemotePresence`] turns successive
//! documents from SIP into what XMPP needs (changed tuples, `unavailable` for tuples gone).
//!
//! Choices where RFC 7248 leaves room:
//! - Tuple ids: `ID-` + the resource, every byte outside `[A-Za-z0-9.-]` written as `_XX`
//!   (upper-case hex of its UTF-8 bytes, `_` itself as `_5F`): always an xs:ID, ASCII-only,
//!   one-to-one ([`tuple_id`], [`resource_from_tuple_id`]). A bare JID is the tuple `ID`.
//! - Priority: XMPP's -128..=127 and PIDF's qvalue 0..=1 meet at the ends and XMPP's default
//!   0 is the middle 0.5, piecewise linear: -128 -> 0, -1 -> 0.496, 0 -> 0.5, 1 -> 0.504,
//!   127 -> 1. Three decimals carry every XMPP value exactly ([`priority_to_qvalue`],
//!   [`qvalue_to_priority`]); a tuple without a priority is XMPP priority 0.
//! - The resource of a SIP tuple: the `gr` parameter of its `<contact>`, else the decoded
//!   `ID-` tuple id, else none (the presence comes from the bare JID).
//! - `<show/>` from SIP: the `jabber:client` `<show>` of the tuple; without one, RPID
//!   (RFC 4480) `<activities>` of the tuple or of the document's `<dm:person>`: busy,
//!   on-the-phone, meeting, performance, presentation, worship -> dnd; vacation, holiday,
//!   sleeping, permanent-absence -> xa; away, appointment, breakfast, dinner, lunch, meal,
//!   shopping, travel, in-transit, steering -> away; then `<user-input>idle</user-input>` ->
//!   away. Other activities give no `<show/>`.
//! - `<status/>` from SIP: the tuple's `<note>`s, else the document's, else the person's
//!   `<dm:note>`s; one status per language (the first note of a language wins), trimmed.
//! - A tuple without `<basic/>` says nothing XMPP can carry and is skipped.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use xmpp_parsers::jid::{BareJid, Jid, ResourcePart};
use xmpp_parsers::message::Lang;
use xmpp_parsers::minidom::rxml::{self, Namespace, RawEvent};
use xmpp_parsers::minidom::tree_builder::TreeBuilder;
use xmpp_parsers::minidom::Element;
use xmpp_parsers::presence::{Presence, Priority, Show, Type};

use crate::address::{SipAddress, UriScheme};
use crate::mapping::message::{language_tag, xml_safe};

/// The media type of a PIDF body (RFC 3863), for Content-Type and Accept.
pub const CONTENT_TYPE: &str = "application/pidf+xml";
/// The PIDF namespace.
pub const NS_PIDF: &str = "urn:ietf:params:xml:ns:pidf";
/// The namespace `<show/>` is carried in inside PIDF (RFC 7248 Table 6, note 5).
pub const NS_JABBER_CLIENT: &str = "jabber:client";
/// RPID, RFC 4480.
pub const NS_RPID: &str = "urn:ietf:params:xml:ns:pidf:rpid";
/// The PIDF data model, RFC 4479 (`<dm:person>`, `<dm:note>`).
pub const NS_DATA_MODEL: &str = "urn:ietf:params:xml:ns:pidf:data-model";

/// The largest PIDF body accepted from SIP.
pub const MAX_PIDF_BYTES: usize = 64 * 1024;
/// The deepest element nesting accepted (presence/tuple/status/show is 4).
pub const MAX_DEPTH: usize = 32;
/// The most elements a PIDF document may hold.
pub const MAX_ELEMENTS: usize = 2048;
/// The most tuples read from a document, and the most resources kept for one user.
pub const MAX_TUPLES: usize = 64;

/// Why an XMPP presence cannot be written as PIDF.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PresenceError {
    /// Table 6 note 1: only available and unavailable presence are notifications.
    #[error("presence of type {0:?} is not a notification")]
    NotANotification(String),
    #[error("{0} is not the user of this presence document")]
    OtherUser(String),
    #[error("more than {MAX_TUPLES} resources")]
    TooManyResources,
}

/// Why a PIDF body was refused; the NOTIFY (or PUBLISH) gets [`PidfError::sip_status`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PidfError {
    #[error("the PIDF body has {0} bytes, more than {MAX_PIDF_BYTES}")]
    TooLarge(usize),
    #[error("the PIDF body nests elements deeper than {MAX_DEPTH}")]
    TooDeep,
    #[error("the PIDF body has more than {MAX_ELEMENTS} elements")]
    TooManyElements,
    #[error("the PIDF body has more than {MAX_TUPLES} tuples")]
    TooManyTuples,
    #[error("the PIDF body is not well-formed XML: {0}")]
    NotXml(String),
    #[error("the PIDF body has a document type declaration")]
    Dtd,
    #[error("the root element is {{{namespace}}}{name}, not a PIDF <presence/>")]
    NotPidf { namespace: String, name: String },
    #[error("the PIDF document has no tuple with a basic status")]
    NoTuples,
    #[error("basic status {0:?} is neither open nor closed")]
    BadBasic(String),
}

impl PidfError {
    /// The SIP status to answer a request carrying this body with.
    pub fn sip_status(&self) -> u16 {
        match self {
            PidfError::TooLarge(_) => 413,
            _ => 400,
        }
    }
}

/// What XMPP and PIDF both say about one resource (one tuple).
#[derive(Debug, Clone, PartialEq)]
pub struct ResourceState {
    /// The XMPP resource; `None` for the bare JID.
    pub resource: Option<String>,
    /// Available (basic open) or unavailable (basic closed).
    pub available: bool,
    /// Meaningful only when available.
    pub show: Option<Show>,
    /// Status texts by language (`""` = no language).
    pub statuses: BTreeMap<String, String>,
    /// XMPP priority, -128..=127.
    pub priority: i8,
}

impl ResourceState {
    /// The state an XMPP presence announces for `resource`. Table 6 note 1: only presence
    /// without a type (available) or of type unavailable maps.
    pub fn from_xmpp(resource: Option<&str>, presence: &Presence) -> Result<Self, PresenceError> {
        let available = match presence.type_ {
            Type::None => true,
            Type::Unavailable => false,
            ref other => return Err(PresenceError::NotANotification(type_name(other).into())),
        };
        let statuses = presence
            .statuses
            .iter()
            .filter(|(_, text)| !text.trim().is_empty())
            .map(|(lang, text)| (lang.0.clone(), text.clone()))
            .collect();
        Ok(ResourceState {
            resource: resource.map(str::to_string),
            available,
            show: if available {
                presence.show.clone()
            } else {
                None
            },
            statuses,
            priority: presence.priority.0,
        })
    }

    /// Table 7: this state as a presence from `from` (with the resource, if it is a valid
    /// resourcepart) to `to`.
    pub fn to_xmpp(&self, from: &BareJid, to: &Jid) -> Presence {
        let from: Jid = match self
            .resource
            .as_deref()
            .and_then(|r| from.with_resource_str(r).ok())
        {
            Some(full) => full.into(),
            None => from.clone().into(),
        };
        let mut p = if self.available {
            Presence::available()
        } else {
            Presence::unavailable()
        };
        p.from = Some(from);
        p.to = Some(to.clone());
        if self.available {
            p.show = self.show.clone();
            p.priority = Priority(self.priority);
        }
        for (lang, text) in &self.statuses {
            p.statuses
                .insert(Lang(lang.clone()), xml_safe(text).into_owned());
        }
        p
    }
}

fn type_name(t: &Type) -> &'static str {
    match t {
        Type::None => "available",
        Type::Error => "error",
        Type::Probe => "probe",
        Type::Subscribe => "subscribe",
        Type::Subscribed => "subscribed",
        Type::Unavailable => "unavailable",
        Type::Unsubscribe => "unsubscribe",
        Type::Unsubscribed => "unsubscribed",
    }
}

fn show_text(s: &Show) -> &'static str {
    match s {
        Show::Away => "away",
        Show::Chat => "chat",
        Show::Dnd => "dnd",
        Show::Xa => "xa",
    }
}

fn parse_show(s: &str) -> Option<Show> {
    match s.trim() {
        "away" => Some(Show::Away),
        "chat" => Some(Show::Chat),
        "dnd" => Some(Show::Dnd),
        "xa" => Some(Show::Xa),
        _ => None,
    }
}

// ---------- tuple ids ----------

/// Table 6 note 2: the tuple id of a resource, `ID-` + the resource with every byte outside
/// `[A-Za-z0-9.-]` as `_XX` (upper-case hex); `ID` for the bare JID. Always an xs:ID, and
/// different resources never share an id.
pub fn tuple_id(resource: Option<&str>) -> String {
    let Some(resource) = resource else {
        return "ID".to_string();
    };
    let mut id = String::with_capacity(resource.len() + 3);
    id.push_str("ID-");
    for b in resource.bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' || b == b'.' {
            id.push(b as char);
        } else {
            id.push_str(&format!("_{b:02X}"));
        }
    }
    id
}

/// The resource a tuple id of the [`tuple_id`] form stands for. Other ids (and `ID`, the
/// bare JID) give `None`. A `_` not followed by two hex digits stays literal, so ids written
/// by others as `ID-` + a plain resource decode too.
pub fn resource_from_tuple_id(id: &str) -> Option<String> {
    let rest = id.strip_prefix("ID-")?;
    let bytes = rest.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'_' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .filter(|h| h.bytes().all(|c| c.is_ascii_hexdigit()))
                .and_then(|h| u8::from_str_radix(h, 16).ok());
            if let Some(b) = hex {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8(out).ok().filter(|s| !s.is_empty())
}

// ---------- priority ----------

/// XMPP priority -> PIDF contact priority (an RFC 3261 qvalue): -128 -> "0", 0 -> "0.5",
/// 127 -> "1", linear in between on each side of 0, three decimals at most.
pub fn priority_to_qvalue(priority: i8) -> String {
    let p = f64::from(priority);
    let step = if priority < 0 { 256.0 } else { 254.0 };
    let millis = (500.0 + (p * 1000.0 / step).round()).clamp(0.0, 1000.0) as u32;
    match millis {
        1000 => "1".to_string(),
        0 => "0".to_string(),
        m => {
            let s = format!("0.{m:03}");
            s.trim_end_matches('0').to_string()
        }
    }
}

/// The inverse of [`priority_to_qvalue`] for any qvalue a SIP peer writes ("0.8", "1.000",
/// ".5" is refused); `None` for anything that is not a number from 0 to 1.
pub fn qvalue_to_priority(q: &str) -> Option<i8> {
    let q = q.trim();
    let (int, frac) = q.split_once('.').unwrap_or((q, ""));
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if int.is_empty() || int.len() > 3 || frac.len() > 6 || !digits(int) || !digits(frac) {
        return None;
    }
    let value: f64 = q.parse().ok()?;
    if !(0.0..=1.0).contains(&value) {
        return None;
    }
    let delta = (value * 1000.0).round() - 500.0;
    let step = if delta < 0.0 { 256.0 } else { 254.0 };
    Some((delta * step / 1000.0).round().clamp(-128.0, 127.0) as i8)
}

// ---------- XMPP -> PIDF ----------

/// A PIDF body ready for a NOTIFY or PUBLISH.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pidf {
    /// The document, UTF-8, with its XML declaration.
    pub body: String,
    /// For Content-Language: the language of the notes, when they all have the same one.
    pub content_language: Option<String>,
}

/// The presence of one XMPP user as the SIP watchers see it: the latest presence of every
/// available resource, one tuple each. An unavailable resource is removed; with none left,
/// the document is one closed tuple (the resource that left last, with its status).
#[derive(Debug, Clone, PartialEq)]
pub struct UserPresence {
    user: SipAddress,
    resources: BTreeMap<Option<String>, (ResourceState, Option<SystemTime>)>,
    last_gone: Option<(ResourceState, Option<SystemTime>)>,
}

impl UserPresence {
    /// No presence known yet for `user` (its GRUU, if any, is dropped).
    pub fn new(user: &SipAddress) -> Self {
        UserPresence {
            user: user.aor(),
            resources: BTreeMap::new(),
            last_gone: None,
        }
    }

    /// The user's address-of-record.
    pub fn user(&self) -> &SipAddress {
        &self.user
    }

    /// True if any resource is available.
    pub fn is_available(&self) -> bool {
        !self.resources.is_empty()
    }

    /// The tuples the document shows, in tuple order.
    pub fn tuples(&self) -> Vec<&ResourceState> {
        if self.resources.is_empty() {
            return vec![self.last_gone.as_ref().map_or(&CLOSED, |(s, _)| s)];
        }
        self.resources.values().map(|(s, _)| s).collect()
    }

    /// Takes a presence from `from` (the sender's SIP address, its GRUU the resource, as
    /// `AddressMap::local_user_to_sip` gives it), received at `now` (`None`: no timestamp).
    /// Returns whether the document changed, timestamps aside: a watcher needs a NOTIFY only
    /// then. An unavailable presence from the bare JID ends every resource (RFC 6121 4.3.2).
    pub fn update(
        &mut self,
        from: &SipAddress,
        presence: &Presence,
        now: Option<SystemTime>,
    ) -> Result<bool, PresenceError> {
        if from.aor() != self.user {
            return Err(PresenceError::OtherUser(from.aor().to_uri_string()));
        }
        let state = ResourceState::from_xmpp(from.gruu.as_deref(), presence)?;
        let key = state.resource.clone();
        if state.available
            && !self.resources.contains_key(&key)
            && self.resources.len() >= MAX_TUPLES
        {
            return Err(PresenceError::TooManyResources);
        }
        let before: Vec<ResourceState> = self.tuples().into_iter().cloned().collect();
        if state.available {
            self.resources.insert(key, (state, now));
        } else {
            if key.is_none() {
                self.resources.clear();
            } else {
                self.resources.remove(&key);
            }
            self.last_gone = Some((state, now));
        }
        let after: Vec<&ResourceState> = self.tuples();
        Ok(before.iter().ne(after))
    }

    /// The document with every tuple: what a NOTIFY to a watcher carries.
    pub fn to_pidf(&self) -> Pidf {
        let tuples: Vec<(&ResourceState, Option<SystemTime>)> = if self.resources.is_empty() {
            vec![self
                .last_gone
                .as_ref()
                .map_or((&CLOSED, None), |(s, t)| (s, *t))]
        } else {
            self.resources.values().map(|(s, t)| (s, *t)).collect()
        };
        render(&self.user, &tuples)
    }
}

/// A user nothing is known of: closed, from the bare JID.
static CLOSED: ResourceState = ResourceState {
    resource: None,
    available: false,
    show: None,
    statuses: BTreeMap::new(),
    priority: 0,
};

/// Table 6 for one presence: a document with the one tuple of its resource. `from` is the
/// sender's SIP address (GRUU = resource); `now` adds a `<timestamp>` when given.
pub fn xmpp_to_pidf(
    presence: &Presence,
    from: &SipAddress,
    now: Option<SystemTime>,
) -> Result<Pidf, PresenceError> {
    let state = ResourceState::from_xmpp(from.gruu.as_deref(), presence)?;
    Ok(render(&from.aor(), &[(&state, now)]))
}

/// `pres:user@host` for the entity attribute (RFC 3863 4.1.1, RFC 7248 examples).
fn pres_uri(aor: &SipAddress) -> String {
    let s = aor.to_uri_string();
    match s.split_once(':') {
        Some((_, rest)) if aor.scheme != UriScheme::Tel => format!("pres:{rest}"),
        _ => s,
    }
}

/// XML-escapes text or an attribute value (quoted with `'`), dropping what XML cannot hold.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in xml_safe(s).chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\'' => out.push_str("&apos;"),
            '"' => out.push_str("&quot;"),
            '\r' => out.push_str("&#xD;"),
            c => out.push(c),
        }
    }
    out
}

fn render(user: &SipAddress, tuples: &[(&ResourceState, Option<SystemTime>)]) -> Pidf {
    let mut x = String::with_capacity(512);
    x.push_str("<?xml version='1.0' encoding='UTF-8'?>\n");
    x.push_str(&format!(
        "<presence xmlns='{NS_PIDF}' entity='{}'>\n",
        esc(&pres_uri(user))
    ));
    let mut langs = std::collections::BTreeSet::new();
    for (state, when) in tuples {
        let contact = SipAddress {
            gruu: state.resource.clone(),
            ..user.clone()
        };
        x.push_str(&format!(
            "  <tuple id='{}'>\n",
            tuple_id(state.resource.as_deref())
        ));
        x.push_str("    <status>\n");
        x.push_str(if state.available {
            "      <basic>open</basic>\n"
        } else {
            "      <basic>closed</basic>\n"
        });
        if let (true, Some(show)) = (state.available, &state.show) {
            x.push_str(&format!(
                "      <show xmlns='{NS_JABBER_CLIENT}'>{}</show>\n",
                show_text(show)
            ));
        }
        x.push_str("    </status>\n");
        x.push_str(&format!(
            "    <contact priority='{}'>{}</contact>\n",
            priority_to_qvalue(state.priority),
            esc(&contact.to_uri_string())
        ));
        for (lang, text) in &state.statuses {
            let text = esc(text);
            if text.trim().is_empty() {
                continue;
            }
            match language_tag(lang) {
                Some(tag) => {
                    langs.insert(tag.to_string());
                    x.push_str(&format!("    <note xml:lang='{tag}'>{text}</note>\n"));
                }
                None => {
                    langs.insert(String::new());
                    x.push_str(&format!("    <note>{text}</note>\n"));
                }
            }
        }
        if let Some(ts) = when.and_then(rfc3339) {
            x.push_str(&format!("    <timestamp>{ts}</timestamp>\n"));
        }
        x.push_str("  </tuple>\n");
    }
    x.push_str("</presence>\n");
    let content_language = match (langs.len(), langs.into_iter().next()) {
        (1, Some(l)) if !l.is_empty() => Some(l),
        _ => None,
    };
    Pidf {
        body: x,
        content_language,
    }
}

/// `2014-05-01T12:00:00Z` (xs:dateTime, UTC, whole seconds); `None` before 1970.
fn rfc3339(t: SystemTime) -> Option<String> {
    let secs = i64::try_from(t.duration_since(UNIX_EPOCH).ok()?.as_secs()).ok()?;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's civil_from_days.
    let z = days.checked_add(719_468)?;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe.checked_add(era.checked_mul(400)?)? + i64::from(month <= 2);
    Some(format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    ))
}

// ---------- PIDF -> XMPP ----------

/// A PIDF document reduced to what XMPP can carry.
#[derive(Debug, Clone, PartialEq)]
pub struct PidfDocument {
    /// The `entity` attribute, as written.
    pub entity: Option<String>,
    /// One per tuple with a basic status, in document order.
    pub tuples: Vec<ResourceState>,
}

/// Table 7: a PIDF body (with the NOTIFY's Content-Language) as one presence per tuple from
/// the SIP user's JID at the gateway (`from`, the resource added per tuple) to `to`.
pub fn pidf_to_xmpp(
    body: &[u8],
    content_language: Option<&str>,
    from: &BareJid,
    to: &Jid,
) -> Result<Vec<Presence>, PidfError> {
    let doc = parse_pidf(body, content_language)?;
    Ok(doc.tuples.iter().map(|t| t.to_xmpp(from, to)).collect())
}

/// What the XMPP user was last told of one SIP presentity. A NOTIFY carries the full state,
/// so a resource whose tuple is gone from the next document has left: XMPP must hear
/// `unavailable` for it, and nothing again for tuples that did not change.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RemotePresence {
    /// Sorted by resource, one each: a Vec, since a BTreeMap's first node holds room for
    /// eleven and an idle subscription usually has one.
    last: Vec<ResourceState>,
}

impl RemotePresence {
    pub fn new() -> Self {
        Self::default()
    }

    /// True if any resource was open in the last document.
    pub fn is_available(&self) -> bool {
        self.last.iter().any(|s| s.available)
    }

    /// The resources the last document showed, as [`ResourceState::to_xmpp`] presences:
    /// what the XMPP user was last told is available (for answering probes).
    pub fn shown(&self, from: &BareJid, to: &Jid) -> Vec<Presence> {
        self.last
            .iter()
            .filter(|s| s.available)
            .map(|s| s.to_xmpp(from, to))
            .collect()
    }

    fn get(&self, resource: &Option<String>) -> Option<&ResourceState> {
        self.last
            .binary_search_by(|s| s.resource.cmp(resource))
            .ok()
            .map(|i| &self.last[i])
    }

    /// Takes the next document and returns what to send, each as
    /// [`ResourceState::to_xmpp`]: new or changed tuples (of several with one resource, the
    /// last), then `unavailable` for open resources the document no longer has.
    pub fn update(&mut self, doc: PidfDocument) -> Vec<ResourceState> {
        let mut next = BTreeMap::new();
        for state in doc.tuples {
            next.insert(state.resource.clone(), state);
        }
        let mut out: Vec<ResourceState> = next
            .values()
            .filter(|s| self.get(&s.resource) != Some(*s))
            .cloned()
            .collect();
        for old in &self.last {
            if old.available && !next.contains_key(&old.resource) {
                out.push(ResourceState {
                    resource: old.resource.clone(),
                    available: false,
                    show: None,
                    statuses: BTreeMap::new(),
                    priority: 0,
                });
            }
        }
        // In key order, so `get` can search it.
        self.last = next.into_values().collect();
        out
    }
}

/// Parses and checks a PIDF body: size, depth and element count limits first, then
/// well-formed XML (no DTD), the PIDF namespace, at least one tuple with a basic status.
/// Unknown extension elements are ignored.
pub fn parse_pidf(body: &[u8], content_language: Option<&str>) -> Result<PidfDocument, PidfError> {
    let root = parse_xml(body)?;
    if !root.is("presence", NS_PIDF) {
        return Err(PidfError::NotPidf {
            namespace: clip(&root.ns()),
            name: clip(root.name()),
        });
    }
    let header_lang = content_language
        .and_then(|l| l.split(',').next())
        .map(str::trim)
        .and_then(language_tag)
        .unwrap_or("");
    let doc_lang = lang_of(&root).unwrap_or(header_lang);
    let doc_notes = notes(&root, NS_PIDF, doc_lang);
    let person = root.children().find(|c| c.is("person", NS_DATA_MODEL));
    let person_lang = person.and_then(lang_of).unwrap_or(doc_lang);
    let person_notes = person.map(|p| notes(p, NS_DATA_MODEL, person_lang));
    let person_show = person.and_then(rpid_show);

    let mut tuples = Vec::new();
    for tuple in root.children().filter(|c| c.is("tuple", NS_PIDF)) {
        if tuples.len() == MAX_TUPLES {
            return Err(PidfError::TooManyTuples);
        }
        let status = tuple.get_child("status", NS_PIDF);
        let Some(basic) = status.and_then(|s| s.get_child("basic", NS_PIDF)) else {
            continue;
        };
        let available = match basic.text().trim() {
            "open" => true,
            "closed" => false,
            other => return Err(PidfError::BadBasic(clip(other))),
        };
        let tuple_lang = lang_of(tuple).unwrap_or(doc_lang);
        let contact = tuple.get_child("contact", NS_PIDF);
        let resource = contact
            .and_then(|c| SipAddress::parse(c.text().trim()).ok())
            .and_then(|a| a.gruu)
            .or_else(|| tuple.attr("id").and_then(resource_from_tuple_id))
            .and_then(|r| ResourcePart::new(&r).ok().map(|r| r.to_string()));
        let priority = contact
            .and_then(|c| c.attr("priority"))
            .and_then(qvalue_to_priority)
            .unwrap_or(0);
        let show = if available {
            let jabber = status
                .into_iter()
                .chain(std::iter::once(tuple))
                .flat_map(|e| e.children())
                .find(|c| c.is("show", NS_JABBER_CLIENT))
                .and_then(|s| parse_show(&s.text()));
            jabber
                .or_else(|| status.and_then(rpid_show))
                .or_else(|| rpid_show(tuple))
                .or_else(|| person_show.clone())
        } else {
            None
        };
        let mut statuses = notes(tuple, NS_PIDF, tuple_lang);
        if statuses.is_empty() {
            statuses = doc_notes.clone();
        }
        if statuses.is_empty() {
            statuses = person_notes.clone().unwrap_or_default();
        }
        tuples.push(ResourceState {
            resource,
            available,
            show,
            statuses,
            priority,
        });
    }
    if tuples.is_empty() {
        return Err(PidfError::NoTuples);
    }
    Ok(PidfDocument {
        entity: root.attr("entity").map(str::to_string),
        tuples,
    })
}

/// Well-formed XML within the limits, as one element. minidom's tree is built here event by
/// event so that depth and size are checked before anything deep exists (dropping a deep
/// tree recurses).
fn parse_xml(body: &[u8]) -> Result<Element, PidfError> {
    if body.len() > MAX_PIDF_BYTES {
        return Err(PidfError::TooLarge(body.len()));
    }
    let body = body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(body);
    let options = rxml::Options {
        comments: rxml::parser::CommentMode::Discard,
        ..Default::default()
    };
    let mut reader = rxml::RawReader::with_options(body, options);
    let mut tree = TreeBuilder::new();
    let mut elements = 0usize;
    let mut root = None;
    loop {
        let event = match reader.read() {
            Ok(Some(event)) => event,
            Ok(None) => break,
            // Before the root element, only a DOCTYPE can hold these bytes.
            Err(_) if elements == 0 && body.windows(9).any(|w| w == b"<!DOCTYPE") => {
                return Err(PidfError::Dtd)
            }
            Err(e) => return Err(PidfError::NotXml(e.to_string())),
        };
        if let RawEvent::ElementHeadOpen(..) = event {
            if root.is_some() {
                return Err(PidfError::NotXml("content after the root element".into()));
            }
            elements += 1;
            if elements > MAX_ELEMENTS {
                return Err(PidfError::TooManyElements);
            }
            if tree.depth() >= MAX_DEPTH {
                return Err(PidfError::TooDeep);
            }
        }
        tree.process_event(event)
            .map_err(|e| PidfError::NotXml(e.to_string()))?;
        if let Some(done) = tree.root.take() {
            root = Some(done);
        }
    }
    root.ok_or_else(|| PidfError::NotXml("no root element".into()))
}

/// Peer text fit for an error message (and a reason phrase): one line, 64 characters.
fn clip(s: &str) -> String {
    s.chars()
        .take(64)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// The element's own valid xml:lang, if any.
fn lang_of(e: &Element) -> Option<&str> {
    e.attr_ns(Namespace::xml(), "lang").and_then(language_tag)
}

/// The `<note>` children (in `ns`) by language; the first note of a language wins.
fn notes(parent: &Element, ns: &str, inherited: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for note in parent.children().filter(|c| c.is("note", ns)) {
        let text = note.text();
        let text = text.trim();
        if text.is_empty() {
            continue;
        }
        let lang = lang_of(note).unwrap_or(inherited).to_string();
        out.entry(lang).or_insert_with(|| text.to_string());
    }
    out
}

/// `<show/>` from RPID (RFC 4480) children of `e`: activities first, then user-input idle.
fn rpid_show(e: &Element) -> Option<Show> {
    let activity = e
        .children()
        .filter(|c| c.is("activities", NS_RPID))
        .flat_map(|a| a.children())
        .find_map(|a| {
            if !a.has_ns(NS_RPID) {
                return None;
            }
            match a.name() {
                "busy" | "on-the-phone" | "meeting" | "performance" | "presentation"
                | "worship" => Some(Show::Dnd),
                "vacation" | "holiday" | "sleeping" | "permanent-absence" => Some(Show::Xa),
                "away" | "appointment" | "breakfast" | "dinner" | "lunch" | "meal" | "shopping"
                | "travel" | "in-transit" | "steering" => Some(Show::Away),
                _ => None,
            }
        });
    activity.or_else(|| {
        e.children()
            .filter(|c| c.is("user-input", NS_RPID))
            .find(|u| u.text().trim() == "idle")
            .map(|_| Show::Away)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::address::AddressMap;
    use proptest::prelude::*;
    use std::str::FromStr;
    use std::time::Duration;

    fn map() -> AddressMap {
        AddressMap::new(
            "sip.example.com",
            &["example.com".into()],
            &["example.com".into()],
            None,
        )
        .unwrap()
    }

    /// juliet@example.com/<resource> as the address module writes her in SIP.
    fn juliet(resource: Option<&str>) -> SipAddress {
        let jid = match resource {
            Some(r) => format!("juliet@example.com/{r}"),
            None => "juliet@example.com".into(),
        };
        map().local_user_to_sip(&Jid::new(&jid).unwrap()).unwrap()
    }

    fn romeo() -> BareJid {
        BareJid::new("romeo\\40example.net@sip.example.com").unwrap()
    }

    fn juliet_jid() -> Jid {
        Jid::new("juliet@example.com").unwrap()
    }

    fn stanza(s: &str) -> Presence {
        Presence::try_from(Element::from_str(s).unwrap()).unwrap()
    }

    fn to_xml(p: Presence) -> String {
        String::from(&Element::from(p))
    }

    fn from_sip(body: &str) -> Vec<Presence> {
        pidf_to_xmpp(body.as_bytes(), None, &romeo(), &juliet_jid()).unwrap()
    }

    fn one_tuple(body: &str) -> ResourceState {
        let mut doc = parse_pidf(body.as_bytes(), None).unwrap();
        assert_eq!(doc.tuples.len(), 1, "{body}");
        doc.tuples.remove(0)
    }

    fn err(body: &[u8]) -> PidfError {
        parse_pidf(body, None).unwrap_err()
    }

    /// A PIDF document around `tuples` (and anything after them).
    fn pidf(tuples: &str) -> String {
        format!(
            "<?xml version='1.0' encoding='UTF-8'?>\
             <presence xmlns='urn:ietf:params:xml:ns:pidf' entity='pres:romeo@example.net'>\
             {tuples}</presence>"
        )
    }

    // ---------- Table 6: XMPP -> SIP ----------

    #[test]
    fn table_6_the_documents_example() {
        // RFC 7248 4.2: Juliet's away presence, with the tuple's contact added (her GRUU).
        let p = stanza(
            "<presence xmlns='jabber:component:accept' from='juliet@example.com/balcony'>\
             <show>away</show></presence>",
        );
        let pidf = xmpp_to_pidf(&p, &juliet(Some("balcony")), None).unwrap();
        assert_eq!(
            pidf.body,
            "<?xml version='1.0' encoding='UTF-8'?>\n\
             <presence xmlns='urn:ietf:params:xml:ns:pidf' entity='pres:juliet@example.com'>\n\
             \x20 <tuple id='ID-balcony'>\n\
             \x20   <status>\n\
             \x20     <basic>open</basic>\n\
             \x20     <show xmlns='jabber:client'>away</show>\n\
             \x20   </status>\n\
             \x20   <contact priority='0.5'>sip:juliet@example.com;gr=balcony</contact>\n\
             \x20 </tuple>\n\
             </presence>\n"
        );
        assert_eq!(pidf.content_language, None);
    }

    #[test]
    fn table_6_unavailable_is_basic_closed() {
        // RFC 7248 3.3.x: the closed tuple of the balcony resource.
        let p = stanza(
            "<presence xmlns='jabber:component:accept' from='juliet@example.com/balcony' \
             type='unavailable'/>",
        );
        let pidf = xmpp_to_pidf(&p, &juliet(Some("balcony")), None).unwrap();
        assert_eq!(
            pidf.body,
            "<?xml version='1.0' encoding='UTF-8'?>\n\
             <presence xmlns='urn:ietf:params:xml:ns:pidf' entity='pres:juliet@example.com'>\n\
             \x20 <tuple id='ID-balcony'>\n\
             \x20   <status>\n\
             \x20     <basic>closed</basic>\n\
             \x20   </status>\n\
             \x20   <contact priority='0.5'>sip:juliet@example.com;gr=balcony</contact>\n\
             \x20 </tuple>\n\
             </presence>\n"
        );
    }

    #[test]
    fn table_6_status_becomes_a_note_in_the_stanzas_language() {
        let p = stanza(
            "<presence xmlns='jabber:component:accept' xml:lang='en' \
             from='juliet@example.com/balcony'><show>dnd</show>\
             <status>Wherefore art thou?</status><priority>5</priority></presence>",
        );
        let pidf = xmpp_to_pidf(&p, &juliet(Some("balcony")), None).unwrap();
        assert!(pidf.body.contains(
            "    <contact priority='0.52'>sip:juliet@example.com;gr=balcony</contact>\n\
             \x20   <note xml:lang='en'>Wherefore art thou?</note>\n  </tuple>"
        ));
        assert!(pidf.body.contains("<show xmlns='jabber:client'>dnd</show>"));
        assert_eq!(pidf.content_language.as_deref(), Some("en"));
    }

    #[test]
    fn table_6_a_status_per_language_is_a_note_each() {
        let p = stanza(
            "<presence xmlns='jabber:component:accept' from='juliet@example.com/balcony'>\
             <status xml:lang='en'>Good night</status>\
             <status xml:lang='it'>Buona notte</status><status>  </status></presence>",
        );
        let pidf = xmpp_to_pidf(&p, &juliet(Some("balcony")), None).unwrap();
        assert!(pidf.body.contains(
            "    <note xml:lang='en'>Good night</note>\n\
             \x20   <note xml:lang='it'>Buona notte</note>\n"
        ));
        assert_eq!(pidf.body.matches("<note").count(), 2);
        // Two languages: no single Content-Language.
        assert_eq!(pidf.content_language, None);
    }

    #[test]
    fn table_6_text_is_escaped_and_unicode_kept() {
        let p = stanza(
            "<presence xmlns='jabber:component:accept' from='juliet@example.com/balcony'>\
             <status>&lt;3 &amp; 'Romeo' — ロミオ 🌹</status></presence>",
        );
        let pidf = xmpp_to_pidf(&p, &juliet(Some("balcony")), None).unwrap();
        assert!(pidf
            .body
            .contains("<note>&lt;3 &amp; &apos;Romeo&apos; — ロミオ 🌹</note>"));
        let back = one_tuple(&pidf.body);
        assert_eq!(back.statuses[""], "<3 & 'Romeo' — ロミオ 🌹");
    }

    #[test]
    fn only_notifications_map() {
        for t in [
            "subscribe",
            "subscribed",
            "unsubscribe",
            "unsubscribed",
            "probe",
        ] {
            let p = stanza(&format!(
                "<presence xmlns='jabber:component:accept' type='{t}'/>"
            ));
            assert_eq!(
                xmpp_to_pidf(&p, &juliet(Some("balcony")), None).unwrap_err(),
                PresenceError::NotANotification(t.into())
            );
        }
    }

    #[test]
    fn a_timestamp_only_when_now_is_given() {
        let p = stanza("<presence xmlns='jabber:component:accept'/>");
        let now = UNIX_EPOCH + Duration::from_secs(1_398_945_600);
        let pidf = xmpp_to_pidf(&p, &juliet(Some("balcony")), Some(now)).unwrap();
        assert!(pidf
            .body
            .contains("</contact>\n    <timestamp>2014-05-01T12:00:00Z</timestamp>\n  </tuple>"));
        assert!(!xmpp_to_pidf(&p, &juliet(Some("balcony")), None)
            .unwrap()
            .body
            .contains("timestamp"));
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(951_782_400 + 86_399)).as_deref(),
            Some("2000-02-29T23:59:59Z")
        );
        assert_eq!(rfc3339(UNIX_EPOCH).as_deref(), Some("1970-01-01T00:00:00Z"));
    }

    #[test]
    fn tuple_ids_are_xs_ids_and_one_to_one() {
        for (resource, id) in [
            (Some("balcony"), "ID-balcony"),
            (Some("1"), "ID-1"),
            (Some("a b"), "ID-a_20b"),
            (Some("a_b"), "ID-a_5Fb"),
            (Some("a_20b"), "ID-a_5F20b"),
            (Some("x:y/z"), "ID-x_3Ay_2Fz"),
            (Some("é"), "ID-_C3_A9"),
            (Some("v1.2-rc"), "ID-v1.2-rc"),
            (None, "ID"),
        ] {
            assert_eq!(tuple_id(resource), id);
            assert_eq!(resource_from_tuple_id(id).as_deref(), resource, "{id}");
        }
        // Written by others: plain resources after ID- decode too.
        assert_eq!(
            resource_from_tuple_id("ID-my_phone").as_deref(),
            Some("my_phone")
        );
        assert_eq!(resource_from_tuple_id("ID-a_zz_"), Some("a_zz_".into()));
        assert_eq!(resource_from_tuple_id("ID-_FF"), None);
        assert_eq!(resource_from_tuple_id("ID-"), None);
        assert_eq!(resource_from_tuple_id("t8a7s6"), None);
        assert_eq!(resource_from_tuple_id("pidf-ID-x"), None);
    }

    #[test]
    fn priorities_map_to_qvalues_and_back() {
        for (p, q) in [
            (-128, "0"),
            (-64, "0.25"),
            (-1, "0.496"),
            (0, "0.5"),
            (1, "0.504"),
            (5, "0.52"),
            (127, "1"),
        ] {
            assert_eq!(priority_to_qvalue(p), q);
            assert_eq!(qvalue_to_priority(q), Some(p), "{q}");
        }
        for p in i8::MIN..=i8::MAX {
            assert_eq!(qvalue_to_priority(&priority_to_qvalue(p)), Some(p));
        }
        assert_eq!(qvalue_to_priority("1.000"), Some(127));
        assert_eq!(qvalue_to_priority("0.8"), Some(76));
        assert_eq!(qvalue_to_priority(" 0.0 "), Some(-128));
        for bad in [
            "", ".5", "1.5", "-0.1", "NaN", "inf", "1e-3", "0.5x", "0..5", "2",
        ] {
            assert_eq!(qvalue_to_priority(bad), None, "{bad}");
        }
    }

    // ---------- UserPresence: every resource in one document ----------

    fn available(resource: &str, inner: &str) -> Presence {
        stanza(&format!(
            "<presence xmlns='jabber:component:accept' from='juliet@example.com/{resource}'>\
             {inner}</presence>"
        ))
    }

    fn unavailable(inner: &str) -> Presence {
        stanza(&format!(
            "<presence xmlns='jabber:component:accept' type='unavailable'>{inner}</presence>"
        ))
    }

    #[test]
    fn several_resources_give_a_tuple_each() {
        let mut view = UserPresence::new(&juliet(None));
        assert!(view
            .update(
                &juliet(Some("balcony")),
                &available("balcony", "<show>away</show>"),
                None
            )
            .unwrap());
        assert!(view
            .update(
                &juliet(Some("chamber")),
                &available("chamber", "<priority>-1</priority><status>Asleep</status>"),
                None
            )
            .unwrap());
        let body = view.to_pidf().body;
        assert_eq!(
            body,
            "<?xml version='1.0' encoding='UTF-8'?>\n\
             <presence xmlns='urn:ietf:params:xml:ns:pidf' entity='pres:juliet@example.com'>\n\
             \x20 <tuple id='ID-balcony'>\n\
             \x20   <status>\n\
             \x20     <basic>open</basic>\n\
             \x20     <show xmlns='jabber:client'>away</show>\n\
             \x20   </status>\n\
             \x20   <contact priority='0.5'>sip:juliet@example.com;gr=balcony</contact>\n\
             \x20 </tuple>\n\
             \x20 <tuple id='ID-chamber'>\n\
             \x20   <status>\n\
             \x20     <basic>open</basic>\n\
             \x20   </status>\n\
             \x20   <contact priority='0.496'>sip:juliet@example.com;gr=chamber</contact>\n\
             \x20   <note>Asleep</note>\n\
             \x20 </tuple>\n\
             </presence>\n"
        );
        assert!(view.is_available());
        // And back, as a SIP->XMPP gateway would read it.
        let back = pidf_to_xmpp(body.as_bytes(), None, &romeo(), &juliet_jid()).unwrap();
        assert_eq!(back.len(), 2);
        assert_eq!(back[0].show, Some(Show::Away));
        assert_eq!(back[1].priority, Priority(-1));
        assert_eq!(
            back[1].from.as_ref().unwrap().to_string(),
            "romeo\\40example.net@sip.example.com/chamber"
        );
    }

    #[test]
    fn the_latest_presence_of_a_resource_replaces_the_last() {
        let mut view = UserPresence::new(&juliet(None));
        let balcony = juliet(Some("balcony"));
        view.update(&balcony, &available("balcony", "<show>away</show>"), None)
            .unwrap();
        view.update(&balcony, &available("balcony", "<show>chat</show>"), None)
            .unwrap();
        assert_eq!(view.tuples().len(), 1);
        assert_eq!(view.tuples()[0].show, Some(Show::Chat));
    }

    #[test]
    fn an_unavailable_resource_is_removed() {
        let mut view = UserPresence::new(&juliet(None));
        view.update(&juliet(Some("balcony")), &available("balcony", ""), None)
            .unwrap();
        view.update(&juliet(Some("chamber")), &available("chamber", ""), None)
            .unwrap();
        assert!(view
            .update(&juliet(Some("balcony")), &unavailable(""), None)
            .unwrap());
        let body = view.to_pidf().body;
        assert!(!body.contains("ID-balcony"));
        assert!(body.contains("<tuple id='ID-chamber'>"));
        assert_eq!(body.matches("<tuple").count(), 1);
    }

    #[test]
    fn with_no_resource_left_one_closed_tuple_remains() {
        let mut view = UserPresence::new(&juliet(None));
        view.update(&juliet(Some("balcony")), &available("balcony", ""), None)
            .unwrap();
        let then = UNIX_EPOCH + Duration::from_secs(1_398_945_600);
        assert!(view
            .update(
                &juliet(Some("balcony")),
                &unavailable("<status>Parting is such sweet sorrow</status>"),
                Some(then)
            )
            .unwrap());
        assert!(!view.is_available());
        assert_eq!(
            view.to_pidf().body,
            "<?xml version='1.0' encoding='UTF-8'?>\n\
             <presence xmlns='urn:ietf:params:xml:ns:pidf' entity='pres:juliet@example.com'>\n\
             \x20 <tuple id='ID-balcony'>\n\
             \x20   <status>\n\
             \x20     <basic>closed</basic>\n\
             \x20   </status>\n\
             \x20   <contact priority='0.5'>sip:juliet@example.com;gr=balcony</contact>\n\
             \x20   <note>Parting is such sweet sorrow</note>\n\
             \x20   <timestamp>2014-05-01T12:00:00Z</timestamp>\n\
             \x20 </tuple>\n\
             </presence>\n"
        );
    }

    #[test]
    fn a_user_with_no_presence_yet_is_one_closed_tuple() {
        let view = UserPresence::new(&juliet(Some("balcony")));
        assert_eq!(view.user().to_uri_string(), "sip:juliet@example.com");
        let body = view.to_pidf().body;
        assert!(body.contains(
            "  <tuple id='ID'>\n    <status>\n      <basic>closed</basic>\n    </status>\n\
             \x20   <contact priority='0.5'>sip:juliet@example.com</contact>\n  </tuple>\n"
        ));
        let back = from_sip(&body);
        assert_eq!(
            to_xml(back[0].clone()),
            "<presence xmlns='jabber:component:accept' \
             from='romeo\\40example.net@sip.example.com' to='juliet@example.com' \
             type='unavailable'><priority>0</priority></presence>"
        );
    }

    #[test]
    fn unavailable_from_the_bare_jid_ends_every_resource() {
        // RFC 6121 4.3.2: the server answers a probe so when no resource is available.
        let mut view = UserPresence::new(&juliet(None));
        view.update(&juliet(Some("balcony")), &available("balcony", ""), None)
            .unwrap();
        view.update(&juliet(Some("chamber")), &available("chamber", ""), None)
            .unwrap();
        assert!(view.update(&juliet(None), &unavailable(""), None).unwrap());
        let body = view.to_pidf().body;
        assert_eq!(body.matches("<tuple").count(), 1);
        assert!(body.contains("<tuple id='ID'>") && body.contains("<basic>closed</basic>"));
    }

    #[test]
    fn update_says_whether_a_watcher_needs_a_notify() {
        let mut view = UserPresence::new(&juliet(None));
        let balcony = juliet(Some("balcony"));
        let p = available("balcony", "<show>away</show>");
        let t1 = UNIX_EPOCH + Duration::from_secs(1);
        let t2 = UNIX_EPOCH + Duration::from_secs(2);
        assert!(view.update(&balcony, &p, Some(t1)).unwrap());
        // The same presence again (a re-broadcast): only the timestamp moved.
        assert!(!view.update(&balcony, &p, Some(t2)).unwrap());
        // Unavailable for a resource never seen, while another is on: nothing shows.
        assert!(!view
            .update(&juliet(Some("hall")), &unavailable(""), None)
            .unwrap());
        assert!(view.update(&balcony, &unavailable(""), None).unwrap());
        assert!(!view.update(&balcony, &unavailable(""), None).unwrap());
    }

    #[test]
    fn another_users_presence_and_too_many_resources_are_refused() {
        let mut view = UserPresence::new(&juliet(None));
        let nurse = map()
            .local_user_to_sip(&Jid::new("nurse@example.com/hall").unwrap())
            .unwrap();
        assert_eq!(
            view.update(&nurse, &available("hall", ""), None)
                .unwrap_err(),
            PresenceError::OtherUser("sip:nurse@example.com".into())
        );
        for i in 0..MAX_TUPLES {
            let r = format!("r{i}");
            view.update(&juliet(Some(&r)), &available(&r, ""), None)
                .unwrap();
        }
        assert_eq!(
            view.update(&juliet(Some("one-more")), &available("one-more", ""), None)
                .unwrap_err(),
            PresenceError::TooManyResources
        );
        // A known resource still updates, and leaving makes room.
        assert!(view
            .update(
                &juliet(Some("r0")),
                &available("r0", "<show>xa</show>"),
                None
            )
            .unwrap());
        view.update(&juliet(Some("r1")), &unavailable(""), None)
            .unwrap();
        view.update(&juliet(Some("one-more")), &available("one-more", ""), None)
            .unwrap();
    }

    // ---------- Table 7: SIP -> XMPP ----------

    #[test]
    fn table_7_the_documents_example() {
        // RFC 7248 4.3: Romeo's closed tuple becomes unavailable presence from his resource.
        let body = "<?xml version='1.0' encoding='UTF-8'?>\n\
                    <presence xmlns='urn:ietf:params:xml:ns:pidf'\n    \
                    entity='pres:romeo@example.net'>\n  \
                    <tuple id='ID-orchard'>\n    <status>\n      \
                    <basic>closed</basic>\n    </status>\n  </tuple>\n</presence>";
        let out = from_sip(body);
        assert_eq!(out.len(), 1);
        assert_eq!(
            to_xml(out[0].clone()),
            "<presence xmlns='jabber:component:accept' \
             from='romeo\\40example.net@sip.example.com/orchard' to='juliet@example.com' \
             type='unavailable'><priority>0</priority></presence>"
        );
        let doc = parse_pidf(body.as_bytes(), None).unwrap();
        assert_eq!(doc.entity.as_deref(), Some("pres:romeo@example.net"));
    }

    #[test]
    fn table_7_open_with_a_jabber_client_show() {
        // RFC 7248 3.2.1: Romeo's first NOTIFY.
        let body = "<?xml version='1.0' encoding='UTF-8'?>\n\
                    <presence xmlns='urn:ietf:params:xml:ns:pidf'\n          \
                    entity='pres:romeo@example.net'>\n  <tuple id='ID-orchard'>\n    \
                    <status>\n      <basic>open</basic>\n      \
                    <show xmlns='jabber:client'>away</show>\n    </status>\n  \
                    </tuple>\n</presence>";
        let out = from_sip(body);
        assert_eq!(
            to_xml(out[0].clone()),
            "<presence xmlns='jabber:component:accept' \
             from='romeo\\40example.net@sip.example.com/orchard' to='juliet@example.com'>\
             <show>away</show><priority>0</priority></presence>"
        );
    }

    #[test]
    fn table_7_note_priority_and_content_language() {
        let body = pidf(
            "<tuple id='t1'><status><basic>open</basic></status>\
             <contact priority='0.8'>sip:romeo@example.net;gr=orchard</contact>\
             <note>Under the window</note></tuple>",
        );
        let out = pidf_to_xmpp(body.as_bytes(), Some("en"), &romeo(), &juliet_jid()).unwrap();
        assert_eq!(
            to_xml(out[0].clone()),
            "<presence xmlns='jabber:component:accept' \
             from='romeo\\40example.net@sip.example.com/orchard' to='juliet@example.com'>\
             <status xml:lang='en'>Under the window</status><priority>76</priority></presence>"
        );
    }

    #[test]
    fn xml_lang_of_a_note_beats_the_tuple_the_document_and_the_header() {
        let body = "<presence xmlns='urn:ietf:params:xml:ns:pidf' xml:lang='fr' \
                    entity='pres:romeo@example.net'>\
                    <tuple id='a'><status><basic>open</basic></status>\
                    <note xml:lang='it'>Ciao</note><note>Salut</note><note>Encore</note></tuple>\
                    <tuple id='b' xml:lang='de'><status><basic>open</basic></status>\
                    <note>Hallo</note></tuple></presence>";
        let doc = parse_pidf(body.as_bytes(), Some("en")).unwrap();
        let langs = |i: usize| -> Vec<(String, String)> {
            doc.tuples[i]
                .statuses
                .iter()
                .map(|(l, t)| (l.clone(), t.clone()))
                .collect()
        };
        assert_eq!(
            langs(0),
            [("fr".into(), "Salut".into()), ("it".into(), "Ciao".into())]
        );
        assert_eq!(langs(1), [("de".into(), "Hallo".into())]);
        // A Content-Language list: its first language; junk is no language.
        let t = parse_pidf(
            pidf("<tuple id='a'><status><basic>open</basic></status><note>x</note></tuple>")
                .as_bytes(),
            Some("da, en-gb"),
        )
        .unwrap();
        assert_eq!(t.tuples[0].statuses.keys().collect::<Vec<_>>(), ["da"]);
        let t = parse_pidf(
            pidf("<tuple id='a'><status><basic>open</basic></status><note>x</note></tuple>")
                .as_bytes(),
            Some("<junk>"),
        )
        .unwrap();
        assert_eq!(t.tuples[0].statuses.keys().collect::<Vec<_>>(), [""]);
    }

    #[test]
    fn tuple_notes_before_document_notes_before_person_notes() {
        let t = one_tuple(&pidf(
            "<tuple id='a'><status><basic>open</basic></status><note>mine</note></tuple>\
             <note>everyone's</note>",
        ));
        assert_eq!(t.statuses[""], "mine");
        let t = one_tuple(&pidf(
            "<tuple id='a'><status><basic>open</basic></status></tuple>\
             <note> everyone's </note>",
        ));
        assert_eq!(t.statuses[""], "everyone's");
        let t = one_tuple(&pidf(
            "<tuple id='a'><status><basic>open</basic></status></tuple>\
             <dm:person xmlns:dm='urn:ietf:params:xml:ns:pidf:data-model' id='p'>\
             <dm:note>In Mantua</dm:note></dm:person>",
        ));
        assert_eq!(t.statuses[""], "In Mantua");
    }

    #[test]
    fn the_contact_gruu_names_the_resource_before_the_tuple_id() {
        let t = one_tuple(&pidf(
            "<tuple id='ID-orchard'><status><basic>open</basic></status>\
             <contact>sip:romeo@example.net;gr=urn:uuid:f81d4fae</contact></tuple>",
        ));
        assert_eq!(t.resource.as_deref(), Some("urn:uuid:f81d4fae"));
        let t = one_tuple(&pidf(
            "<tuple id='ID-orchard'><status><basic>open</basic></status>\
             <contact>sip:romeo@192.0.2.4:5060</contact></tuple>",
        ));
        assert_eq!(t.resource.as_deref(), Some("orchard"));
        // A foreign tuple id and no GRUU: the bare JID.
        let out = from_sip(&pidf(
            "<tuple id='pidf-x7s6'><status><basic>open</basic></status></tuple>",
        ));
        assert_eq!(
            out[0].from.as_ref().unwrap().to_string(),
            "romeo\\40example.net@sip.example.com"
        );
        // A resource XMPP cannot hold (a resourcepart is at most 1023 bytes): the bare JID.
        let long = "x".repeat(1100);
        let out = from_sip(&pidf(&format!(
            "<tuple id='ID-{long}'><status><basic>open</basic></status></tuple>"
        )));
        assert_eq!(
            out[0].from.as_ref().unwrap().to_string(),
            "romeo\\40example.net@sip.example.com"
        );
    }

    #[test]
    fn one_presence_per_tuple_and_tuples_without_basic_are_skipped() {
        let out = from_sip(&pidf(
            "<tuple id='ID-orchard'><status><basic>open</basic></status></tuple>\
             <tuple id='ID-nowhere'><status/></tuple>\
             <tuple id='ID-mantua'><status><basic> closed </basic></status></tuple>",
        ));
        let from: Vec<String> = out
            .iter()
            .map(|p| p.from.as_ref().unwrap().resource().unwrap().to_string())
            .collect();
        assert_eq!(from, ["orchard", "mantua"]);
        assert_eq!(out[0].type_, Type::None);
        assert_eq!(out[1].type_, Type::Unavailable);
    }

    #[test]
    fn rpid_activities_give_a_show_when_there_is_no_jabber_show() {
        let rpid = |tuple_extra: &str, after: &str| {
            one_tuple(&pidf(&format!(
                "<tuple id='ID-a'><status><basic>open</basic>{tuple_extra}</status></tuple>{after}"
            )))
            .show
        };
        let person = |activity: &str| {
            format!(
                "<dm:person xmlns:dm='urn:ietf:params:xml:ns:pidf:data-model' \
                 xmlns:rpid='urn:ietf:params:xml:ns:pidf:rpid' id='p1'>\
                 <rpid:activities><rpid:{activity}/></rpid:activities></dm:person>"
            )
        };
        assert_eq!(rpid("", &person("busy")), Some(Show::Dnd));
        assert_eq!(rpid("", &person("on-the-phone")), Some(Show::Dnd));
        assert_eq!(rpid("", &person("vacation")), Some(Show::Xa));
        assert_eq!(rpid("", &person("away")), Some(Show::Away));
        assert_eq!(rpid("", &person("lunch")), Some(Show::Away));
        assert_eq!(rpid("", &person("unknown")), None);
        assert_eq!(rpid("", &person("working")), None);
        // The RFC 7248 form wins over RPID.
        assert_eq!(
            rpid("<show xmlns='jabber:client'>chat</show>", &person("busy")),
            Some(Show::Chat)
        );
        // Activities in the tuple's status (pre-RFC 4479 documents), and idle user input.
        assert_eq!(
            rpid(
                "<activities xmlns='urn:ietf:params:xml:ns:pidf:rpid'><meeting/></activities>",
                ""
            ),
            Some(Show::Dnd)
        );
        assert_eq!(
            rpid(
                "<user-input xmlns='urn:ietf:params:xml:ns:pidf:rpid'>idle</user-input>",
                ""
            ),
            Some(Show::Away)
        );
        // A bad <show> is ignored; closed tuples have no show.
        assert_eq!(rpid("<show xmlns='jabber:client'>online</show>", ""), None);
        let closed = one_tuple(&pidf(&format!(
            "<tuple id='ID-a'><status><basic>closed</basic>\
             <show xmlns='jabber:client'>away</show></status></tuple>{}",
            person("busy")
        )));
        assert_eq!(closed.show, None);
    }

    #[test]
    fn unknown_extensions_and_comments_are_ignored() {
        let t = one_tuple(
            "<?xml version='1.0' encoding='UTF-8'?>\
             <!-- written by some phone -->\
             <p:presence xmlns:p='urn:ietf:params:xml:ns:pidf' \
             xmlns:gp='urn:ietf:params:xml:ns:pidf:geopriv10' \
             xmlns:c='urn:ietf:params:xml:ns:pidf:caps' entity='pres:romeo@example.net'>\
             <p:tuple id='ID-orchard'><p:status><p:basic>open</p:basic>\
             <gp:geopriv><gp:location-info><x xmlns='urn:example'><y><z/></y></x>\
             </gp:location-info></gp:geopriv></p:status>\
             <c:servcaps><c:audio>true</c:audio></c:servcaps>\
             <show xmlns='jabber:client'>xa</show>\
             <p:contact priority='1'>sip:romeo@example.net</p:contact>\
             <p:note>Gone to Mantua</p:note>\
             <p:timestamp>2014-05-01T12:00:00Z</p:timestamp></p:tuple>\
             <foo xmlns='urn:example:unknown'><bar/></foo></p:presence>",
        );
        assert_eq!(
            t,
            ResourceState {
                resource: Some("orchard".into()),
                available: true,
                show: Some(Show::Xa),
                statuses: [(String::new(), "Gone to Mantua".into())].into(),
                priority: 127,
            }
        );
    }

    #[test]
    fn malformed_documents_are_refused_with_400() {
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("empty", b"".to_vec()),
            ("not xml", b"open".to_vec()),
            (
                "unclosed",
                pidf("<tuple id='a'><status><basic>open</basic>").into_bytes(),
            ),
            ("truncated", {
                let d = pidf("<tuple id='a'><status><basic>open</basic></status></tuple>");
                d.as_bytes()[..d.len() / 2].to_vec()
            }),
            (
                "mismatched tags",
                pidf("<tuple id='a'><status><basic>open</status></basic></tuple>").into_bytes(),
            ),
            (
                "undeclared prefix",
                pidf("<tuple id='a'><x:status><basic>open</basic></x:status></tuple>").into_bytes(),
            ),
            (
                "undefined entity",
                pidf("<tuple id='a'><status><basic>&a;</basic></status></tuple>").into_bytes(),
            ),
            (
                "processing instruction",
                pidf("<?php echo 1; ?><tuple id='a'><status><basic>open</basic></status></tuple>")
                    .into_bytes(),
            ),
            (
                "two roots",
                format!(
                    "{}<presence/>",
                    pidf("<tuple id='a'><status><basic>open</basic></status></tuple>")
                )
                .into_bytes(),
            ),
            ("latin-1", {
                let mut b = b"<?xml version='1.0' encoding='ISO-8859-1'?>\
                  <presence xmlns='urn:ietf:params:xml:ns:pidf' entity='pres:r@example.net'>\
                  <tuple id='a'><status><basic>open</basic></status><note>J"
                    .to_vec();
                b.extend_from_slice(b"\xfcliet</note></tuple></presence>");
                b
            }),
            ("NUL", pidf("<tuple id='a'>\0</tuple>").into_bytes()),
        ];
        for (what, body) in cases {
            let e = err(&body);
            assert!(matches!(e, PidfError::NotXml(_)), "{what}: {e:?}");
            assert_eq!(e.sip_status(), 400, "{what}");
        }
        // Entities from a DTD (billion laughs, external files) never get a chance.
        let dtd = b"<?xml version='1.0'?><!DOCTYPE presence [<!ENTITY a 'open'>]>\
              <presence xmlns='urn:ietf:params:xml:ns:pidf' entity='pres:r@example.net'>\
              <tuple id='a'><status><basic>&a;</basic></status></tuple></presence>";
        assert_eq!(err(dtd), PidfError::Dtd);
        assert_eq!(
            err(b"<!DOCTYPE p SYSTEM 'file:///etc/passwd'><presence/>"),
            PidfError::Dtd
        );
        assert_eq!(PidfError::Dtd.sip_status(), 400);
        assert_eq!(
            err(b"<presence xmlns='jabber:client'><show>away</show></presence>"),
            PidfError::NotPidf {
                namespace: "jabber:client".into(),
                name: "presence".into()
            }
        );
        // minidom wants a namespace on every element.
        assert!(matches!(
            err(b"<presence entity='pres:r@example.net'><tuple/></presence>"),
            PidfError::NotXml(_)
        ));
        assert_eq!(err(pidf("").as_bytes()), PidfError::NoTuples);
        assert_eq!(err(pidf("<note>hi</note>").as_bytes()), PidfError::NoTuples);
        assert_eq!(
            err(pidf("<tuple id='a'><status><basic>busy</basic></status></tuple>").as_bytes()),
            PidfError::BadBasic("busy".into())
        );
        assert_eq!(PidfError::NoTuples.sip_status(), 400);
        // What the peer wrote is one short line in the error.
        let e =
            err(pidf("<tuple id='a'><status><basic>o\r\npen</basic></status></tuple>").as_bytes());
        assert_eq!(e, PidfError::BadBasic("o pen".into()));
        let long_ns = format!("<presence xmlns='urn:x&#10;{}'/>", "y".repeat(200));
        match err(long_ns.as_bytes()) {
            PidfError::NotPidf { namespace, .. } => {
                assert_eq!(namespace.chars().count(), 64);
                assert!(namespace.starts_with("urn:x y"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn hostile_sizes_are_refused_before_they_cost_anything() {
        let huge = pidf(&format!(
            "<tuple id='a'><status><basic>open</basic></status><note>{}</note></tuple>",
            "x".repeat(MAX_PIDF_BYTES)
        ));
        let e = err(huge.as_bytes());
        assert_eq!(e, PidfError::TooLarge(huge.len()));
        assert_eq!(e.sip_status(), 413);
        // 9000 nested elements (63 kB) would overflow the stack when the tree is dropped.
        let deep = pidf(&format!("{}{}", "<x>".repeat(9000), "</x>".repeat(9000)));
        assert!(deep.len() < MAX_PIDF_BYTES);
        assert_eq!(err(deep.as_bytes()), PidfError::TooDeep);
        let unclosed = pidf(&"<x>".repeat(20_000));
        assert_eq!(err(unclosed.as_bytes()), PidfError::TooDeep);
        let wide = pidf(&format!(
            "<tuple id='a'><status><basic>open</basic></status></tuple>{}",
            "<x/>".repeat(MAX_ELEMENTS)
        ));
        assert_eq!(err(wide.as_bytes()), PidfError::TooManyElements);
        let many = pidf(
            &"<tuple id='a'><status><basic>open</basic></status></tuple>".repeat(MAX_TUPLES + 1),
        );
        assert_eq!(err(many.as_bytes()), PidfError::TooManyTuples);
        let enough =
            pidf(&"<tuple id='a'><status><basic>open</basic></status></tuple>".repeat(MAX_TUPLES));
        assert_eq!(
            parse_pidf(enough.as_bytes(), None).unwrap().tuples.len(),
            MAX_TUPLES
        );
        // A UTF-8 byte order mark is allowed.
        let bom = format!(
            "\u{FEFF}{}",
            pidf("<tuple id='a'><status><basic>open</basic></status></tuple>")
        );
        assert!(parse_pidf(bom.as_bytes(), None).is_ok());
    }

    // ---------- RemotePresence: what changed between two NOTIFYs ----------

    #[test]
    fn a_tuple_gone_from_the_next_notify_is_unavailable() {
        let mut remote = RemotePresence::new();
        let doc = |tuples: &str| parse_pidf(pidf(tuples).as_bytes(), None).unwrap();
        let open = |r: &str, show: &str| {
            format!(
                "<tuple id='ID-{r}'><status><basic>open</basic>\
                 <show xmlns='jabber:client'>{show}</show></status></tuple>"
            )
        };
        let first = remote.update(doc(&format!(
            "{}{}",
            open("orchard", "away"),
            open("mantua", "dnd")
        )));
        assert_eq!(first.len(), 2);
        assert!(remote.is_available());
        // The same state again (a refresh NOTIFY): nothing to tell.
        let again = remote.update(doc(&format!(
            "{}{}",
            open("orchard", "away"),
            open("mantua", "dnd")
        )));
        assert!(again.is_empty());
        // Orchard changes, Mantua is no longer in the document.
        let next = remote.update(doc(&open("orchard", "chat")));
        let sent: Vec<Presence> = next
            .iter()
            .map(|s| s.to_xmpp(&romeo(), &juliet_jid()))
            .collect();
        assert_eq!(
            sent.iter().map(|p| to_xml(p.clone())).collect::<Vec<_>>(),
            [
                "<presence xmlns='jabber:component:accept' \
                 from='romeo\\40example.net@sip.example.com/orchard' to='juliet@example.com'>\
                 <show>chat</show><priority>0</priority></presence>",
                "<presence xmlns='jabber:component:accept' \
                 from='romeo\\40example.net@sip.example.com/mantua' to='juliet@example.com' \
                 type='unavailable'><priority>0</priority></presence>",
            ]
        );
        // Closed, then gone: unavailable once only.
        let closed = remote.update(doc(
            "<tuple id='ID-orchard'><status><basic>closed</basic></status></tuple>",
        ));
        assert_eq!(closed.len(), 1);
        assert!(!closed[0].available);
        assert!(!remote.is_available());
        let gone = remote.update(doc(
            "<tuple id='ID-mantua'><status><basic>closed</basic></status></tuple>",
        ));
        assert_eq!(
            gone.len(),
            1,
            "mantua's closed tuple is new; orchard was closed already"
        );
    }

    // ---------- round trips ----------

    fn round_trip(resource: &str, inner: &str) -> Presence {
        let sent = available(resource, inner);
        let from = map()
            .local_user_to_sip(sent.from.as_ref().unwrap())
            .unwrap();
        let pidf = xmpp_to_pidf(&sent, &from, None).unwrap();
        let back = pidf_to_xmpp(
            pidf.body.as_bytes(),
            pidf.content_language.as_deref(),
            &BareJid::new("juliet@example.com").unwrap(),
            &Jid::new("romeo@example.net").unwrap(),
        )
        .unwrap();
        assert_eq!(back.len(), 1);
        let got = back.into_iter().next().unwrap();
        assert_eq!(got.from, sent.from, "{}", pidf.body);
        assert_eq!(
            (&got.show, &got.statuses, &got.priority),
            (&sent.show, &sent.statuses, &sent.priority),
            "{}",
            pidf.body
        );
        got
    }

    #[test]
    fn xmpp_to_pidf_to_xmpp_keeps_show_status_priority_and_resource() {
        round_trip("balcony", "<show>away</show>");
        round_trip("balcony", "<show>chat</show><priority>127</priority>");
        round_trip(
            "chamber",
            "<show>dnd</show><status>Busy</status><priority>-128</priority>",
        );
        round_trip("x_y z", "<show>xa</show><priority>-7</priority>");
        round_trip("テラス", "<status xml:lang='ja'>おやすみなさい</status>");
        round_trip(
            "balcony",
            "<status xml:lang='en'>Good night</status><status xml:lang='it'>Buona notte</status>",
        );
        round_trip("balcony", "<status>line one\nline two\r\n\tend</status>");
        round_trip(
            "a&apos;b&quot;c&lt;d&gt;&amp;e",
            "<status>&lt;&amp;&gt;'\"</status>",
        );
    }

    fn valid_documents() -> Vec<String> {
        let mut docs = vec![
            pidf(
                "<tuple id='ID-orchard'><status><basic>open</basic>\
                 <show xmlns='jabber:client'>away</show></status>\
                 <contact priority='0.8'>sip:romeo@example.net;gr=orchard</contact>\
                 <note xml:lang='en'>Hi</note></tuple>\
                 <dm:person xmlns:dm='urn:ietf:params:xml:ns:pidf:data-model' \
                 xmlns:rpid='urn:ietf:params:xml:ns:pidf:rpid' id='p'>\
                 <rpid:activities><rpid:busy/></rpid:activities></dm:person>",
            ),
            pidf("<tuple id='t'><status><basic>closed</basic></status></tuple><note>x</note>"),
        ];
        let mut view = UserPresence::new(&juliet(None));
        view.update(
            &juliet(Some("balcony")),
            &available("balcony", "<show>dnd</show><status>Ω</status>"),
            Some(UNIX_EPOCH),
        )
        .unwrap();
        docs.push(view.to_pidf().body);
        docs
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(body in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = pidf_to_xmpp(&body, Some("en"), &romeo(), &juliet_jid());
        }

        #[test]
        fn random_xmlish_text_never_panics(body in "[<>/='\" a-z:!?&#;\\[\\]-]{0,200}") {
            let _ = parse_pidf(body.as_bytes(), None);
        }

        #[test]
        fn mutated_documents_never_panic(
            which in 0usize..3,
            edits in proptest::collection::vec((any::<u8>(), any::<prop::sample::Index>(), 0usize..4), 1..6),
        ) {
            let mut body = valid_documents()[which].clone().into_bytes();
            for (byte, at, op) in edits {
                let i = at.index(body.len() + 1);
                match op {
                    0 if i < body.len() => body[i] = byte,
                    1 => body.insert(i, byte),
                    2 if i < body.len() => { body.remove(i); }
                    _ => body.truncate(i),
                }
            }
            if let Ok(out) = pidf_to_xmpp(&body, None, &romeo(), &juliet_jid()) {
                for p in out {
                    // Whatever comes out is a stanza the XMPP server will take.
                    let xml = to_xml(p);
                    prop_assert!(Element::from_str(&xml).is_ok(), "{}", xml);
                }
            }
        }

        #[test]
        fn any_presence_round_trips(
            resource in "\\PC{1,24}",
            available in any::<bool>(),
            show in proptest::option::of(0usize..4),
            statuses in proptest::collection::btree_map(
                prop::sample::select(vec!["", "en", "it", "ja", "de-CH"]),
                "\\PC{0,40}",
                0..3,
            ),
            priority in any::<i8>(),
        ) {
            let jid = BareJid::new("juliet@example.com").unwrap();
            let Ok(full) = jid.with_resource_str(&resource) else { return Ok(()) };
            let resource = full.resource().as_str().to_string();
            let from = map().local_user_to_sip(&Jid::from(full.clone())).unwrap();
            let mut sent = if available { Presence::available() } else { Presence::unavailable() };
            sent.from = Some(full.clone().into());
            if available {
                sent.show = show.map(|i| [Show::Away, Show::Chat, Show::Dnd, Show::Xa][i].clone());
                sent.priority = Priority(priority);
            }
            for (lang, text) in &statuses {
                sent.statuses.insert(Lang(lang.to_string()), text.clone());
            }
            let pidf = xmpp_to_pidf(&sent, &from, Some(UNIX_EPOCH)).unwrap();
            let doc = parse_pidf(pidf.body.as_bytes(), pidf.content_language.as_deref()).unwrap();
            prop_assert_eq!(doc.tuples.len(), 1);
            let got = &doc.tuples[0];
            prop_assert_eq!(got.resource.as_deref(), Some(resource.as_str()));
            prop_assert_eq!(got.available, available);
            prop_assert_eq!(&got.show, &sent.show);
            prop_assert_eq!(got.priority, sent.priority.0);
            // Notes are trimmed, and blank ones dropped, on the way in.
            let expected: BTreeMap<String, String> = statuses
                .iter()
                .map(|(l, t)| (l.to_string(), xml_safe(t).trim().to_string()))
                .filter(|(_, t)| !t.is_empty())
                .collect();
            prop_assert_eq!(&got.statuses, &expected);
        }
    }
}
