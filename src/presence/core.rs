//! Presence interworking (RFC 7248), sans-IO: every subscription in both directions, its
//! refresh and expiry, driven by inputs and a wall-clock `now` in milliseconds (the store
//! keeps deadlines across restarts, so they are wall-clock, not `Instant`s).
//!
//! ```text
//!  XMPP presence ─ handle_xmpp ─┐                       ┌─ poll_action: Stanza | Sip | Save | Delete
//!  SIP SUBSCRIBE/NOTIFY ─ handle_sip_request (-> the response)
//!  SIP results ─ handle_sip_result ─┤  PresenceCore      │
//!  timers ─ handle_timeout ─────┘                       └─ poll_timeout
//! ```
//!
//! XMPP -> SIP ("Outbound"): juliet subscribes to romeo\40example.net@gateway; stox sends
//! SUBSCRIBE, stays neutral until the first NOTIFY, says `subscribed` on the first active
//! one, refreshes before expiry (after a probe of juliet, section 6 of RFC 7248), and lets
//! the SIP side go while juliet is offline ("dormant") until her next login probe.
//! SIP -> XMPP ("Inbound"): romeo's SUBSCRIBE for juliet gets 200 and an immediate
//! NOTIFY (pending), juliet gets `subscribe`; her `subscribed` makes it active and her
//! presence becomes NOTIFYs; at expiry the watcher gets terminated;reason=timeout.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::sync::Arc;

use rsipstack::sip::headers::make_header;
use rsipstack::sip::{Headers, Method, Request, Response, Version};
use serde::{Deserialize, Serialize};
use xmpp_parsers::jid::{BareJid, Jid};
use xmpp_parsers::minidom::Element;
use xmpp_parsers::presence::{Presence, Type as PresenceType};
use xmpp_parsers::stanza_error::{DefinedCondition, StanzaError};

use crate::address::{AddressMap, SipAddress};
use crate::mapping::error::stanza_error;
use crate::mapping::message::sip_uri;
use crate::mapping::presence::{self as pidf, RemotePresence, UserPresence};
use crate::sip::core::random_token;
use crate::sip::dialog::{self, header_value, Dialog};
use crate::sip::message::{dialog_response_to, raw_uri, response_to};
use crate::sip::subscription::{
    after_termination, is_presence_event, refresh_after, AfterTermination, Reason, SubState,
    SubscriptionState,
};

/// Milliseconds since the Unix epoch.
pub type Millis = u64;

#[derive(Debug, Clone)]
pub struct PresenceSettings {
    /// Expires of the SUBSCRIBEs stox sends (seconds).
    pub expires: u32,
    /// The longest subscription a SIP watcher is granted (seconds).
    pub max_expires: u32,
    /// Below this a SIP watcher's SUBSCRIBE gets 423 (seconds, RFC 6665 4.2.1.1).
    pub min_expires: u32,
    pub max_per_user: usize,
    pub max_total: usize,
    /// How long a probe before a refresh waits for the user's server to answer.
    pub probe_timeout_ms: u64,
    /// XMPP domains whose users are refreshed without a probe ("known good" servers).
    pub probe_exempt: Vec<String>,
    /// A refresh goes ahead without an answer to its probe when the user showed up this
    /// recently (a server answers probes only from contacts the user lets see them, so a
    /// one-way subscription never gets one; the login probes the user's server sends are
    /// the evidence then).
    pub seen_window_ms: u64,
    /// Wait before retrying a SUBSCRIBE that timed out or got 5xx/probation.
    pub retry_ms: u64,
    /// When a SIP watcher's subscription ends (expiry, Expires: 0), also end the XMPP
    /// subscription it created (`unsubscribe` to the user). Default: keep it.
    pub end_xmpp_with_sip: bool,
    /// Our Contact URI for dialogs.
    pub contact: String,
}

impl Default for PresenceSettings {
    fn default() -> Self {
        PresenceSettings {
            expires: 3600,
            max_expires: 86400,
            min_expires: 60,
            max_per_user: 1000,
            max_total: 200_000,
            probe_timeout_ms: 10_000,
            probe_exempt: Vec::new(),
            seen_window_ms: 7 * 86_400_000,
            retry_ms: 60_000,
            end_xmpp_with_sip: false,
            contact: "sip:stox@127.0.0.1".into(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum OutState {
    /// SUBSCRIBE sent, no NOTIFY yet: neutral toward the XMPP user.
    Subscribing,
    /// NOTIFY said pending.
    Pending,
    Active,
    /// Waiting to subscribe again (timeout, 5xx, probation).
    Retrying,
    /// Not subscribed on the SIP side while the user is away; revived by the user's probe.
    Dormant,
}

/// XMPP user -> SIP presentity: stox is the subscriber.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Outbound {
    pub user: String,
    pub contact_jid: String,
    pub target: String,
    pub from_uri: String,
    pub call_id: String,
    pub from_tag: String,
    pub cseq: u32,
    pub dialog: Option<Dialog>,
    /// The dialog was made from the SUBSCRIBE's 2xx, before any NOTIFY: the first NOTIFY
    /// sets its route set (RFC 6665 4.4.1).
    #[serde(default)]
    pub dialog_from_2xx: bool,
    pub state: OutState,
    pub told_subscribed: bool,
    /// When the user last showed up (a stanza from them, their server's login probe).
    #[serde(default)]
    pub seen_at: Millis,
    /// When the SIP side's subscription runs out (0: not subscribed).
    pub expires_at: Millis,
    /// The next thing to do for it (refresh, retry).
    pub next_at: Millis,
    /// The contact's tuples from the last NOTIFY: the next one says what changed, and the
    /// open ones answer probes. Not stored: a NOTIFY after the refresh brings them again.
    #[serde(skip)]
    pub remote: RemotePresence,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum InState {
    Pending,
    Active,
}

/// SIP watcher -> XMPP user: stox is the notifier.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Inbound {
    pub user: String,
    pub watcher_jid: String,
    pub watcher_uri: String,
    pub dialog: Dialog,
    pub state: InState,
    pub expires_at: Millis,
    /// A NOTIFY is out and unanswered: the next waits for it (so they arrive in order).
    #[serde(skip)]
    pub busy: bool,
    /// The user's state changed since the last NOTIFY.
    #[serde(skip)]
    pub dirty: bool,
    /// Ending: the terminated NOTIFY goes once the one in flight is answered.
    #[serde(skip)]
    pub ending: Option<Reason>,
    /// The version of the user's presence (`PresenceCore::versions`) the last NOTIFY
    /// carried: a stanza to this watcher's contact JID that finds it behind notifies it,
    /// even when the stanza changes nothing because one to another contact came first.
    #[serde(skip)]
    pub sent_version: u64,
}

#[derive(Debug)]
pub enum Action {
    Stanza(Presence),
    /// Send a SIP request; its result comes back through `handle_sip_result(token, ..)`.
    Sip {
        token: u64,
        request: Request,
        in_dialog: bool,
    },
    Save {
        id: String,
        kind: &'static str,
        user: String,
        remote: String,
        data: String,
    },
    Delete(String),
}

/// A SIP request's outcome, as the edge reports it.
#[derive(Debug)]
pub enum SipResult {
    Response(Response),
    /// No response: timeout, transport error, no route.
    Failed,
}

enum Pending {
    Subscribe {
        key: String,
        expires: u32,
    },
    Notify {
        key: String,
    },
    /// The SUBSCRIBE with Expires: 0 of the subscription with this Call-ID.
    Unsubscribe {
        call_id: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    Out(String),
    In(String),
    Probe(String),
    Notify(String),
    /// An ended subscription (by Call-ID) stops waiting for its terminated NOTIFY.
    Ending(String),
}

/// An XMPP -> SIP subscription stox ended with SUBSCRIBE Expires: 0 (RFC 6665 4.1.2.3):
/// the notifier answers with a terminated NOTIFY, which gets 200, not 481; the NOTIFYs
/// before it too. Kept until that NOTIFY or [`UNSUBSCRIBE_WAIT_MS`].
#[derive(Debug)]
struct Ending {
    /// Our tag: the To tag of the notifier's NOTIFYs.
    from_tag: String,
    deadline: Millis,
}

/// How long an ended subscription waits for its terminated NOTIFY: 64*T1, the longest a
/// notifier's transaction for the unsubscribe and its NOTIFY can take.
pub const UNSUBSCRIBE_WAIT_MS: Millis = 32_000;

/// Presence changes within this window go out as one NOTIFY (a burst of stanzas, e.g.
/// `subscribed` followed by the user's presence, makes one notification, not several).
const NOTIFY_DEBOUNCE_MS: Millis = 100;

pub const KIND_OUT: &str = "xmpp-to-sip";
pub const KIND_IN: &str = "sip-to-xmpp";

pub struct PresenceCore {
    settings: PresenceSettings,
    addresses: Arc<AddressMap>,
    /// Boxed, like `ins`: a map's free slots would each hold a whole record's room.
    outs: HashMap<String, Box<Outbound>>,
    /// The keys of `outs` by the Call-ID of their SUBSCRIBE, for finding a NOTIFY's
    /// subscription without a walk over all of them.
    outs_by_call_id: HashMap<String, String>,
    ins: HashMap<String, Box<Inbound>>,
    /// The keys of `ins` by (user, watcher JID): what a user's approval or presence
    /// concerns, without a walk over every watcher.
    ins_by_pair: HashMap<(String, String), Vec<String>>,
    /// The XMPP users' presence per resource, for NOTIFY bodies.
    views: HashMap<String, UserPresence>,
    /// Counts the changes of each entry of `views`.
    versions: HashMap<String, u64>,
    /// Users probed before a refresh: the deadline and the subscriptions waiting.
    probes: HashMap<String, (Millis, Vec<String>)>,
    per_user: HashMap<String, usize>,
    /// When each user last showed up.
    seen: HashMap<String, Millis>,
    /// The resources of each user that sent available presence to the gateway's own
    /// domain (directed, or because the gateway is in the roster), until unavailable.
    at_gateway: HashMap<String, std::collections::HashSet<String>>,
    pending: HashMap<u64, Pending>,
    /// Ended subscriptions by Call-ID, until their terminated NOTIFY (bounded by
    /// `max_total`).
    ending: HashMap<String, Ending>,
    next_token: u64,
    timers: BinaryHeap<Reverse<(Millis, Timer)>>,
    actions: VecDeque<Action>,
}

fn out_key(user: &str, target: &str) -> String {
    format!("out|{user}|{target}")
}

fn in_key(d: &Dialog) -> String {
    format!("in|{}|{}", d.id.call_id, d.id.local_tag)
}

fn bare(j: &Jid) -> String {
    j.to_bare().to_string()
}

fn secs(s: u32) -> Millis {
    u64::from(s) * 1000
}

/// The whole SUBSCRIBE/NOTIFY answer for what cannot be handled.
fn answer(req: &Request, status: u16, reason: Option<&str>) -> Response {
    response_to(req, status, reason, "")
}

impl PresenceCore {
    pub fn new(settings: PresenceSettings, addresses: Arc<AddressMap>) -> Self {
        PresenceCore {
            settings,
            addresses,
            outs: HashMap::new(),
            outs_by_call_id: HashMap::new(),
            ins: HashMap::new(),
            ins_by_pair: HashMap::new(),
            views: HashMap::new(),
            versions: HashMap::new(),
            probes: HashMap::new(),
            per_user: HashMap::new(),
            seen: HashMap::new(),
            at_gateway: HashMap::new(),
            pending: HashMap::new(),
            ending: HashMap::new(),
            next_token: 1,
            timers: BinaryHeap::new(),
            actions: VecDeque::new(),
        }
    }

    pub fn counts(&self) -> (usize, usize) {
        (self.outs.len(), self.ins.len())
    }

    pub fn outbound(&self, user: &str, target: &str) -> Option<&Outbound> {
        self.outs.get(&out_key(user, target)).map(|o| &**o)
    }

    pub fn inbounds(&self) -> impl Iterator<Item = &Inbound> {
        self.ins.values().map(|i| &**i)
    }

    // ----- restart -----

    /// Takes back what the store had, before anything else happens. Every XMPP -> SIP
    /// subscription is refreshed at once (through the probe rule); every SIP -> XMPP one
    /// keeps its expiry, and its user is probed so NOTIFYs carry current presence.
    pub fn restore(&mut self, now: Millis, kind: &str, data: &str) {
        match kind {
            KIND_OUT => {
                if let Ok(mut o) = serde_json::from_str::<Outbound>(data) {
                    if o.state != OutState::Dormant {
                        o.next_at = now;
                    }
                    let key = out_key(&o.user, &o.target);
                    self.count(&o.user, 1);
                    let seen = self.seen.entry(o.user.clone()).or_insert(0);
                    *seen = (*seen).max(o.seen_at);
                    self.timers
                        .push(Reverse((o.next_at, Timer::Out(key.clone()))));
                    if !o.call_id.is_empty() {
                        self.outs_by_call_id.insert(o.call_id.clone(), key.clone());
                    }
                    self.outs.insert(key, Box::new(o));
                }
            }
            KIND_IN => {
                if let Ok(i) = serde_json::from_str::<Inbound>(data) {
                    let key = in_key(&i.dialog);
                    self.count(&i.user, 1);
                    self.timers
                        .push(Reverse((i.expires_at, Timer::In(key.clone()))));
                    if let Ok(user) = BareJid::new(&i.user) {
                        if let Ok(from) = Jid::new(&i.watcher_jid) {
                            self.stanza(
                                Presence::new(PresenceType::Probe)
                                    .with_from(from)
                                    .with_to(Jid::from(user)),
                            );
                        }
                    }
                    self.insert_in(key, i);
                }
            }
            _ => {}
        }
    }

    // ----- outputs -----

    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    pub fn poll_timeout(&self) -> Option<Millis> {
        self.timers.peek().map(|Reverse((at, _))| *at)
    }

    fn stanza(&mut self, p: Presence) {
        self.actions.push_back(Action::Stanza(p));
    }

    fn sip(&mut self, request: Request, in_dialog: bool, pending: Pending) {
        let token = self.next_token;
        self.next_token += 1;
        self.pending.insert(token, pending);
        self.actions.push_back(Action::Sip {
            token,
            request,
            in_dialog,
        });
    }

    fn save_out(&mut self, key: &str) {
        if let Some(o) = self.outs.get_mut(key) {
            o.seen_at = o.seen_at.max(self.seen.get(&o.user).copied().unwrap_or(0));
            let o = &*o;
            if let Ok(data) = serde_json::to_string(o) {
                self.actions.push_back(Action::Save {
                    id: key.to_string(),
                    kind: KIND_OUT,
                    user: o.user.clone(),
                    remote: o.target.clone(),
                    data,
                });
            }
        }
    }

    fn save_in(&mut self, key: &str) {
        if let Some(i) = self.ins.get(key) {
            if let Ok(data) = serde_json::to_string(i) {
                self.actions.push_back(Action::Save {
                    id: key.to_string(),
                    kind: KIND_IN,
                    user: i.user.clone(),
                    remote: i.watcher_uri.clone(),
                    data,
                });
            }
        }
    }

    fn count(&mut self, user: &str, delta: isize) {
        let n = self.per_user.entry(user.to_string()).or_insert(0);
        *n = n.saturating_add_signed(delta);
        if *n == 0 {
            self.per_user.remove(user);
        }
    }

    fn at_limit(&self, user: &str) -> bool {
        self.outs.len() + self.ins.len() >= self.settings.max_total
            || self.per_user.get(user).copied().unwrap_or(0) >= self.settings.max_per_user
    }

    fn remove_out(&mut self, key: &str) {
        if let Some(o) = self.outs.remove(key) {
            if self
                .outs_by_call_id
                .get(&o.call_id)
                .is_some_and(|k| k == key)
            {
                self.outs_by_call_id.remove(&o.call_id);
            }
            self.count(&o.user, -1);
            self.actions.push_back(Action::Delete(key.to_string()));
        }
    }

    fn insert_in(&mut self, key: String, i: Inbound) {
        let keys = self
            .ins_by_pair
            .entry((i.user.clone(), i.watcher_jid.clone()))
            .or_default();
        if !keys.contains(&key) {
            keys.push(key.clone());
        }
        self.ins.insert(key, Box::new(i));
    }

    /// The watchers' subscriptions of `watcher_jid` to `user`.
    fn pair_keys(&self, user: &str, watcher_jid: &str) -> Vec<String> {
        self.ins_by_pair
            .get(&(user.to_string(), watcher_jid.to_string()))
            .cloned()
            .unwrap_or_default()
    }

    fn remove_in(&mut self, key: &str) {
        if let Some(i) = self.ins.remove(key) {
            let pair = (i.user.clone(), i.watcher_jid.clone());
            if let Some(keys) = self.ins_by_pair.get_mut(&pair) {
                keys.retain(|k| k != key);
                if keys.is_empty() {
                    self.ins_by_pair.remove(&pair);
                }
            }
            self.count(&i.user, -1);
            self.actions.push_back(Action::Delete(key.to_string()));
        }
    }

    fn schedule_out(&mut self, key: &str, at: Millis) {
        if let Some(o) = self.outs.get_mut(key) {
            o.next_at = at;
            self.timers.push(Reverse((at, Timer::Out(key.to_string()))));
        }
    }

    /// A presence from the SIP contact to the user (subscription answers and presence).
    fn contact_says(&self, o: &Outbound, type_: PresenceType) -> Option<Presence> {
        Some(
            Presence::new(type_)
                .with_from(Jid::new(&o.contact_jid).ok()?)
                .with_to(Jid::new(&o.user).ok()?),
        )
    }

    // ----- XMPP input -----

    /// A presence stanza addressed to the gateway (a contact JID or the gateway itself).
    pub fn handle_xmpp(&mut self, now: Millis, p: Presence) {
        let (Some(from), Some(to)) = (p.from.clone(), p.to.clone()) else {
            return;
        };
        let user = bare(&from);
        if to.node().is_none() {
            // To the gateway itself: an answer to our probe, or a user adding the gateway.
            self.user_to_gateway(now, &user, &from, p);
            return;
        }
        if self.addresses.local_user_to_sip(&from).is_err() {
            if p.type_ == PresenceType::Subscribe {
                tracing::info!(%from, "Presence subscription from outside the served domains refused.");
                self.error_reply(
                    &p,
                    DefinedCondition::Forbidden,
                    "Only users of this server's domains may use the gateway",
                );
            }
            return;
        }
        let target = match self.addresses.gateway_jid_to_sip(&to) {
            Ok(a) => a.aor(),
            Err(e) => {
                if matches!(p.type_, PresenceType::Subscribe | PresenceType::Probe) {
                    self.error_reply(&p, e.xmpp_condition(), &e.to_string());
                }
                return;
            }
        };
        let contact_jid = to.to_bare().to_string();
        // Anything from the user shows the user exists and still cares (probe rule).
        if p.type_ != PresenceType::Error {
            self.confirm_user(now, &user);
        }
        match p.type_ {
            PresenceType::Subscribe => self.out_subscribe(now, &user, &contact_jid, &target, &p),
            PresenceType::Unsubscribe => self.out_unsubscribe(now, &user, &target),
            PresenceType::Probe => self.out_probe(now, &user, &contact_jid, &target),
            PresenceType::Subscribed => self.in_authorized(now, &user, &contact_jid),
            PresenceType::Unsubscribed => self.in_revoked(&user, &contact_jid),
            PresenceType::None | PresenceType::Unavailable => {
                self.user_presence(now, &from, &contact_jid, &target, p)
            }
            PresenceType::Error => {
                tracing::debug!(%from, "Presence error from XMPP ignored.");
            }
        }
    }

    fn error_reply(&mut self, p: &Presence, cond: DefinedCondition, text: &str) {
        let (Some(from), Some(to)) = (p.from.clone(), p.to.clone()) else {
            return;
        };
        let e: StanzaError = stanza_error(cond, text.to_string());
        let mut r = Presence::new(PresenceType::Error)
            .with_from(to)
            .with_to(from);
        r.id = p.id.clone();
        r.payloads.push(Element::from(e));
        self.stanza(r);
    }

    fn user_to_gateway(&mut self, now: Millis, user: &str, from: &Jid, p: Presence) {
        match p.type_ {
            PresenceType::Error => {
                // The user's server says the user is not there: end what was waiting.
                if let Some((_, keys)) = self.probes.remove(user) {
                    for key in keys {
                        tracing::info!(%user, "Probe answered with an error; ending the subscription.");
                        self.end_out_sip(now, &key);
                        self.remove_out(&key);
                    }
                }
            }
            PresenceType::Subscribe if self.addresses.local_user_to_sip(from).is_ok() => {
                // XEP-0100: a user may add the gateway itself to the roster.
                let gw = Jid::new(self.addresses.component()).ok();
                if let Some(gw) = gw {
                    let to = Jid::from(from.to_bare());
                    self.stanza(
                        Presence::new(PresenceType::Subscribed)
                            .with_from(gw.clone())
                            .with_to(to.clone()),
                    );
                    self.stanza(Presence::new(PresenceType::None).with_from(gw).with_to(to));
                }
                self.confirm_user(now, user);
            }
            PresenceType::Probe => {
                if let Ok(gw) = Jid::new(self.addresses.component()) {
                    self.stanza(
                        Presence::new(PresenceType::None)
                            .with_from(gw)
                            .with_to(from.clone()),
                    );
                }
            }
            PresenceType::None | PresenceType::Unavailable => {
                let resource = from.resource().map(|r| r.to_string()).unwrap_or_default();
                if p.type_ == PresenceType::None {
                    self.at_gateway
                        .entry(user.to_string())
                        .or_default()
                        .insert(resource);
                } else if let Some(set) = self.at_gateway.get_mut(user) {
                    // A bare unavailable ends every resource.
                    if resource.is_empty() {
                        set.clear();
                    } else {
                        set.remove(&resource);
                    }
                    if set.is_empty() {
                        self.at_gateway.remove(user);
                    }
                }
                self.confirm_user(now, user)
            }
            _ => self.confirm_user(now, user),
        }
    }

    /// Whether `user` (a bare JID) is known to be available: some resource of theirs has
    /// sent available presence to a contact JID at the gateway or to the gateway's own
    /// domain, and has not sent unavailable since. Nothing seen means not available.
    pub fn is_available(&self, user: &str) -> bool {
        self.views.get(user).is_some_and(|v| v.is_available()) || self.at_gateway.contains_key(user)
    }

    fn out_subscribe(
        &mut self,
        now: Millis,
        user: &str,
        contact_jid: &str,
        target: &SipAddress,
        p: &Presence,
    ) {
        let target_uri = target.to_uri_string();
        let key = out_key(user, &target_uri);
        if let Some(o) = self.outs.get_mut(&key) {
            if o.state == OutState::Active {
                // Already there: say so again (the client may have lost it).
                if let Some(r) = self
                    .outs
                    .get(&key)
                    .and_then(|o| self.contact_says(o, PresenceType::Subscribed))
                {
                    self.stanza(r);
                }
                return;
            }
            if matches!(o.state, OutState::Dormant | OutState::Retrying) {
                self.send_new_subscribe(now, &key);
            }
            return;
        }
        if self.at_limit(user) {
            self.error_reply(
                p,
                DefinedCondition::ResourceConstraint,
                "Too many presence subscriptions",
            );
            return;
        }
        if self.new_outbound(now, user, contact_jid, &target_uri, false) {
            self.send_new_subscribe(now, &key);
        }
    }

    /// A new XMPP -> SIP subscription, not yet sent. False when the user cannot be mapped.
    fn new_outbound(
        &mut self,
        now: Millis,
        user: &str,
        contact_jid: &str,
        target: &str,
        told: bool,
    ) -> bool {
        let Ok(from_jid) = Jid::new(user) else {
            return false;
        };
        let Ok(from_addr) = self.addresses.local_user_to_sip(&from_jid) else {
            return false;
        };
        let o = Outbound {
            user: user.to_string(),
            contact_jid: contact_jid.to_string(),
            target: target.to_string(),
            from_uri: from_addr.aor().to_uri_string(),
            call_id: String::new(),
            from_tag: String::new(),
            cseq: 0,
            dialog: None,
            dialog_from_2xx: false,
            state: OutState::Subscribing,
            told_subscribed: told,
            seen_at: now,
            expires_at: 0,
            next_at: 0,
            remote: RemotePresence::new(),
        };
        self.count(user, 1);
        self.outs.insert(out_key(user, target), Box::new(o));
        true
    }

    /// A SUBSCRIBE outside any dialog (the first, or after the dialog was lost).
    fn send_new_subscribe(&mut self, now: Millis, key: &str) {
        let expires = self.settings.expires;
        let contact = self.settings.contact.clone();
        let Some(o) = self.outs.get_mut(key) else {
            return;
        };
        let call_id = format!("{}@{}", random_token(20), self.addresses.component());
        let old = std::mem::replace(&mut o.call_id, call_id.clone());
        // NOTIFYs of the old dialog get 481 from now on, as before.
        if self.outs_by_call_id.get(&old).is_some_and(|k| k == key) {
            self.outs_by_call_id.remove(&old);
        }
        self.outs_by_call_id.insert(call_id, key.to_string());
        let Some(o) = self.outs.get_mut(key) else {
            return;
        };
        o.from_tag = random_token(10);
        o.cseq = 1;
        o.dialog = None;
        o.dialog_from_2xx = false;
        o.state = OutState::Subscribing;
        // If nothing comes back at all, try again later.
        o.next_at = now + secs(expires);
        let Some(request) = subscribe_request(o, expires, &contact) else {
            tracing::info!(target = %o.target, "Cannot write a SUBSCRIBE for this address.");
            return;
        };
        self.save_out(key);
        self.sip(
            request,
            false,
            Pending::Subscribe {
                key: key.to_string(),
                expires,
            },
        );
    }

    /// A refresh (or with `expires` 0, the end) inside the dialog, or a new SUBSCRIBE.
    fn send_refresh(&mut self, now: Millis, key: &str, expires: u32) {
        let contact = self.settings.contact.clone();
        let Some(o) = self.outs.get_mut(key) else {
            return;
        };
        let Some(dialog) = o.dialog.as_mut() else {
            if expires > 0 {
                self.send_new_subscribe(now, key);
            } else if o.state == OutState::Subscribing {
                // Not yet in a dialog: end it with an out-of-dialog SUBSCRIBE, same Call-ID.
                o.cseq += 1;
                let call_id = o.call_id.clone();
                if let Some(r) = subscribe_request(o, 0, &contact) {
                    self.sip(r, false, Pending::Unsubscribe { call_id });
                }
            }
            return;
        };
        let Ok(mut request) = dialog.request(Method::Subscribe) else {
            return;
        };
        o.cseq = dialog.local_seq;
        add_subscribe_headers(&mut request.headers, expires, &contact);
        let pending = if expires > 0 {
            Pending::Subscribe {
                key: key.to_string(),
                expires,
            }
        } else {
            Pending::Unsubscribe {
                call_id: o.call_id.clone(),
            }
        };
        if expires > 0 {
            o.next_at = now + secs(self.settings.expires);
        }
        self.sip(request, true, pending);
    }

    /// Ends the SIP side (SUBSCRIBE Expires: 0) and keeps its Call-ID in `ending` until
    /// the notifier's terminated NOTIFY; the record itself no longer answers NOTIFYs.
    fn end_out_sip(&mut self, now: Millis, key: &str) {
        let Some(o) = self.outs.get(key) else { return };
        if !(o.expires_at > 0 || o.state == OutState::Subscribing) {
            return;
        }
        let (call_id, from_tag) = (o.call_id.clone(), o.from_tag.clone());
        self.send_refresh(now, key, 0);
        if self.outs_by_call_id.get(&call_id).is_some_and(|k| k == key) {
            self.outs_by_call_id.remove(&call_id);
        }
        if self.ending.len() < self.settings.max_total {
            let deadline = now + UNSUBSCRIBE_WAIT_MS;
            self.timers
                .push(Reverse((deadline, Timer::Ending(call_id.clone()))));
            self.ending.insert(call_id, Ending { from_tag, deadline });
        }
    }

    fn out_unsubscribe(&mut self, now: Millis, user: &str, target: &SipAddress) {
        let key = out_key(user, &target.to_uri_string());
        let Some(o) = self.outs.get(&key) else { return };
        let reply = self.contact_says(o, PresenceType::Unsubscribed);
        self.end_out_sip(now, &key);
        self.remove_out(&key);
        if let Some(r) = reply {
            self.stanza(r);
        }
    }

    /// The user's server probes the contact (the user came online): answer with what we
    /// know, and bring a dormant or lost subscription back.
    fn out_probe(&mut self, now: Millis, user: &str, contact_jid: &str, target: &SipAddress) {
        let key = out_key(user, &target.to_uri_string());
        let Some(o) = self.outs.get(&key) else {
            // A roster entry from before (or a lost store): subscribe again, as a standing
            // subscription (RFC 7248: re-SUBSCRIBE on the user's initial presence).
            if self.at_limit(user) {
                return;
            }
            if !self.new_outbound(now, user, contact_jid, &target.to_uri_string(), true) {
                return;
            }
            if let Some(r) = self
                .outs
                .get(&key)
                .and_then(|o| self.contact_says(o, PresenceType::Unavailable))
            {
                self.stanza(r);
            }
            self.send_new_subscribe(now, &key);
            return;
        };
        let answers: Vec<Presence> = match (BareJid::new(&o.contact_jid), Jid::new(user)) {
            (Ok(contact), Ok(to)) => o.remote.shown(&contact, &to),
            _ => Vec::new(),
        };
        let answers = if answers.is_empty() {
            self.contact_says(o, PresenceType::Unavailable)
                .into_iter()
                .collect()
        } else {
            answers
        };
        let state = o.state;
        for p in answers {
            self.stanza(p);
        }
        if matches!(state, OutState::Dormant | OutState::Retrying) {
            self.send_new_subscribe(now, &key);
        }
    }

    /// Evidence that the user exists and keeps the subscription: refresh what waits.
    fn confirm_user(&mut self, now: Millis, user: &str) {
        self.seen.insert(user.to_string(), now);
        if let Some((_, keys)) = self.probes.remove(user) {
            for key in keys {
                self.send_refresh(now, &key, self.settings.expires);
            }
        }
    }

    fn user_presence(
        &mut self,
        now: Millis,
        from: &Jid,
        contact_jid: &str,
        target: &SipAddress,
        p: Presence,
    ) {
        let user = bare(from);
        let Ok(from_addr) = self.addresses.local_user_to_sip(from) else {
            return;
        };
        let view = self
            .views
            .entry(user.clone())
            .or_insert_with(|| UserPresence::new(&from_addr));
        let unavailable = p.type_ == PresenceType::Unavailable;
        let changed = match view.update(&from_addr, &p, None) {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(error = %e, "Presence not mapped to PIDF.");
                false
            }
        };
        let gone = !view.is_available();
        let version = self.versions.entry(user.clone()).or_insert(0);
        if changed {
            *version += 1;
        }
        let version = *version;
        // NOTIFY every active watcher behind this contact JID that has not had this state
        // yet. The user's server sends her presence to each contact in turn, and only the
        // first stanza changes the view: the watchers behind the others are behind it.
        let keys: Vec<String> = self
            .pair_keys(&user, contact_jid)
            .into_iter()
            .filter(|k| {
                self.ins
                    .get(k)
                    .is_some_and(|i| i.state == InState::Active && i.sent_version != version)
            })
            .collect();
        for key in keys {
            self.notify(now, &key);
        }
        // RFC 7248 section 4 item 4: the user went away, so the SIP subscription can go
        // too; the user's next login probe brings it back.
        if gone && unavailable {
            let key = out_key(&user, &target.to_uri_string());
            if self
                .outs
                .get(&key)
                .is_some_and(|o| o.state != OutState::Dormant)
            {
                self.go_dormant(now, &key);
            }
        }
    }

    /// Lets the SIP side of a subscription go while its user is away (kept in the store;
    /// the user's next login probe subscribes again).
    fn go_dormant(&mut self, now: Millis, key: &str) {
        self.end_out_sip(now, key);
        if let Some(o) = self.outs.get_mut(key) {
            o.state = OutState::Dormant;
            o.dialog = None;
            o.expires_at = 0;
        }
        self.save_out(key);
    }

    // ----- SIP -> XMPP direction (stox notifies) -----

    fn in_authorized(&mut self, now: Millis, user: &str, watcher_jid: &str) {
        let keys = self.pair_keys(user, watcher_jid);
        for key in keys {
            if let Some(i) = self.ins.get_mut(&key) {
                if i.state == InState::Pending {
                    i.state = InState::Active;
                    self.save_in(&key);
                    self.notify(now, &key);
                }
            }
        }
    }

    fn in_revoked(&mut self, user: &str, watcher_jid: &str) {
        let keys = self.pair_keys(user, watcher_jid);
        for key in keys {
            self.end_watch(0, &key, Reason::Rejected);
        }
    }

    /// The user's state changed: NOTIFY the watcher soon (debounced, one at a time).
    fn notify(&mut self, now: Millis, key: &str) {
        let Some(i) = self.ins.get_mut(key) else {
            return;
        };
        i.dirty = true;
        if !i.busy {
            self.timers.push(Reverse((
                now + NOTIFY_DEBOUNCE_MS,
                Timer::Notify(key.to_string()),
            )));
        }
    }

    /// Ends a watcher's subscription with a terminated NOTIFY (after the one in flight).
    fn end_watch(&mut self, now: Millis, key: &str, reason: Reason) {
        if !self.ins.contains_key(key) {
            return;
        }
        if reason == Reason::Timeout {
            self.sip_watch_ended(key);
        }
        let Some(i) = self.ins.get_mut(key) else {
            return;
        };
        if i.busy {
            i.ending = Some(reason);
            return;
        }
        self.send_notify(now, key, Some(reason));
        self.remove_in(key);
    }

    /// Sends the watcher the user's state: active/pending with the PIDF, or terminated.
    fn send_notify(&mut self, now: Millis, key: &str, end: Option<Reason>) {
        let contact = self.settings.contact.clone();
        let Some(i) = self.ins.get_mut(key) else {
            return;
        };
        let Ok(mut request) = i.dialog.request(Method::Notify) else {
            return;
        };
        i.busy = true;
        i.dirty = false;
        i.sent_version = self.versions.get(&i.user).copied().unwrap_or(0);
        let left = (i.expires_at.saturating_sub(now) / 1000) as u32;
        let state = match (&end, i.state) {
            (Some(r), _) => SubscriptionState::terminated(r.clone()),
            (None, InState::Active) => SubscriptionState::active(left),
            (None, InState::Pending) => SubscriptionState::pending(left),
        };
        let h = &mut request.headers;
        h.push(make_header("Event", "presence".into()));
        h.push(make_header("Subscription-State", state.header_value()));
        h.push(make_header("Contact", format!("<{contact}>")));
        // Pending says nothing of the user (RFC 3856 6.6.2: polite blocking); terminated
        // says closed; active says what the user shows.
        if end.is_some() || i.state == InState::Active {
            let view = match end {
                Some(_) => None,
                None => self.views.get(&i.user),
            };
            let doc = match view {
                Some(v) => v.to_pidf(),
                // Nothing known, or the end: one closed tuple.
                None => match Jid::new(&i.user)
                    .ok()
                    .and_then(|j| self.addresses.local_user_to_sip(&j).ok())
                {
                    Some(a) => UserPresence::new(&a).to_pidf(),
                    None => return,
                },
            };
            h.push(make_header("Content-Type", pidf::CONTENT_TYPE.into()));
            if let Some(lang) = doc.content_language {
                h.push(make_header("Content-Language", lang));
            }
            request.body = doc.body.into_bytes();
        }
        let key = key.to_string();
        self.save_in(&key);
        self.sip(request, true, Pending::Notify { key });
    }

    // ----- SIP input -----

    /// A SUBSCRIBE or NOTIFY. Returns the response to send, or None when the request is
    /// not presence's (the caller answers it).
    pub fn handle_sip_request(&mut self, now: Millis, req: &Request) -> Option<Response> {
        match req.method {
            Method::Subscribe => Some(self.on_subscribe(now, req)),
            Method::Notify => Some(self.on_notify(now, req)),
            _ => None,
        }
    }

    fn on_subscribe(&mut self, now: Millis, req: &Request) -> Response {
        let h = &req.headers;
        let Some(event) = header_value(h, "Event").or_else(|| header_value(h, "o")) else {
            return with_allow_events(answer(req, 489, None));
        };
        if !is_presence_event(&event) {
            return with_allow_events(answer(req, 489, None));
        }
        let accept = dialog::header_values(h, "Accept");
        if !accept.is_empty()
            && !accept.iter().any(|a| {
                let a = a
                    .split(';')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_ascii_lowercase();
                a == "application/pidf+xml" || a == "application/*" || a == "*/*"
            })
        {
            let mut r = answer(req, 406, None);
            r.headers
                .push(make_header("Accept", "application/pidf+xml".into()));
            return r;
        }
        let asked = match header_value(h, "Expires").map(|e| e.parse::<u32>()) {
            None => self.settings.expires,
            Some(Ok(e)) => e,
            Some(Err(_)) => return answer(req, 400, Some("Malformed Expires")),
        };
        if asked > 0 && asked < self.settings.min_expires {
            let mut r = answer(req, 423, None);
            r.headers.push(make_header(
                "Min-Expires",
                self.settings.min_expires.to_string(),
            ));
            return r;
        }
        let granted = asked.min(self.settings.max_expires);
        // In a dialog: a refresh or the end of one of ours.
        if let Some((call_id, local_tag, _)) = dialog::incoming_key(req) {
            let key = format!("in|{call_id}|{local_tag}");
            let Some(i) = self.ins.get_mut(&key) else {
                return answer(req, 481, None);
            };
            if let Err(code) = i.dialog.check_request(req) {
                return answer(req, code, None);
            }
            let mut ok = answer(req, 200, None);
            ok.headers.push(make_header("Expires", granted.to_string()));
            ok.headers.push(make_header(
                "Contact",
                format!("<{}>", self.settings.contact),
            ));
            if granted == 0 {
                self.end_watch(now, &key, Reason::Timeout);
            } else {
                i.expires_at = now + secs(granted);
                let at = i.expires_at;
                let busy = i.busy;
                self.timers.push(Reverse((at, Timer::In(key.clone()))));
                // RFC 6665 4.2.1.2: every accepted SUBSCRIBE gets a NOTIFY.
                if busy {
                    self.notify(now, &key);
                } else {
                    self.send_notify(now, &key, None);
                }
            }
            return ok;
        }
        // A new subscription to a local user.
        let Ok(user) = SipAddress::parse(&raw_uri(&req.uri))
            .and_then(|a| self.addresses.sip_to_local_user(&a.aor()))
        else {
            return answer(req, 404, None);
        };
        let user = bare(&user);
        let watcher = header_value(h, "From")
            .map(|f| dialog::uri_of(&f))
            .and_then(|u| SipAddress::parse(&u).ok())
            .map(|a| a.aor());
        let Some(watcher) = watcher else {
            return answer(req, 400, Some("From cannot be mapped to XMPP"));
        };
        let Ok(watcher_jid) = self.addresses.sip_to_gateway_jid(&watcher) else {
            return answer(req, 400, Some("From cannot be mapped to XMPP"));
        };
        let tag = random_token(10);
        // RFC 3261 12.1.1 (RFC 6665 4.1.2.4): the 2xx carries the Record-Route.
        let mut ok = dialog_response_to(req, 200, None, &tag);
        ok.headers.push(make_header("Expires", granted.to_string()));
        ok.headers.push(make_header(
            "Contact",
            format!("<{}>", self.settings.contact),
        ));
        let dialog = match Dialog::as_uas(req, &tag) {
            Ok(d) => d,
            Err(e) => return answer(req, 400, Some(&format!("Cannot form a dialog: {e}"))),
        };
        let key = in_key(&dialog);
        if granted > 0 && self.at_limit(&user) {
            let mut r = answer(req, 503, Some("Too many subscriptions"));
            r.headers.push(make_header("Retry-After", "300".into()));
            return r;
        }
        let watcher_jid = watcher_jid.to_bare().to_string();
        // Known already (another dialog for the same pair, or the user approved before):
        // active at once if an approval exists.
        let approved = self
            .pair_keys(&user, &watcher_jid)
            .iter()
            .any(|k| self.ins.get(k).is_some_and(|i| i.state == InState::Active));
        let inbound = Inbound {
            user: user.clone(),
            watcher_jid: watcher_jid.clone(),
            watcher_uri: watcher.to_uri_string(),
            dialog,
            state: if approved {
                InState::Active
            } else {
                InState::Pending
            },
            expires_at: now + secs(granted),
            busy: false,
            dirty: false,
            ending: None,
            sent_version: 0,
        };
        self.count(&user, 1);
        self.insert_in(key.clone(), inbound);
        if granted == 0 {
            // A fetch (RFC 6665 4.4.3): one NOTIFY with the state, then it is over.
            self.send_notify(now, &key, None);
            self.remove_in(&key);
            return ok;
        }
        self.timers
            .push(Reverse((now + secs(granted), Timer::In(key.clone()))));
        // The first NOTIFY goes at once (RFC 6665 4.2.1.2).
        self.send_notify(now, &key, None);
        if !approved {
            if let (Ok(from), Ok(to)) = (Jid::new(&watcher_jid), Jid::new(&user)) {
                self.stanza(
                    Presence::new(PresenceType::Subscribe)
                        .with_from(from)
                        .with_to(to),
                );
                // No probe: a server answers one from a not-yet-subscribed contact with
                // `unsubscribed`. If the user approved this watcher before, the server
                // answers `subscribed` at once (RFC 6121 3.1.3) and sends the presence.
            }
        }
        ok
    }

    /// A SIP watcher's subscription ended: by default the XMPP one stays.
    fn sip_watch_ended(&mut self, key: &str) {
        if !self.settings.end_xmpp_with_sip {
            return;
        }
        if let Some(i) = self.ins.get(key) {
            let still = self
                .pair_keys(&i.user, &i.watcher_jid)
                .iter()
                .any(|k| k != key);
            if !still {
                if let (Ok(from), Ok(to)) = (Jid::new(&i.watcher_jid), Jid::new(&i.user)) {
                    self.stanza(
                        Presence::new(PresenceType::Unsubscribe)
                            .with_from(from)
                            .with_to(to),
                    );
                }
            }
        }
    }

    fn on_notify(&mut self, now: Millis, req: &Request) -> Response {
        let h = &req.headers;
        let (Some(call_id), Some(to)) = (header_value(h, "Call-ID"), header_value(h, "To")) else {
            return answer(req, 400, None);
        };
        let Some(to_tag) = dialog::header_param(&to, "tag") else {
            return answer(req, 481, None);
        };
        let Some(key) = self
            .outs_by_call_id
            .get(&call_id)
            .filter(|k| self.outs.get(*k).is_some_and(|o| o.from_tag == to_tag))
            .cloned()
        else {
            return self.notify_after_unsubscribe(req, &call_id, &to_tag);
        };
        match header_value(h, "Event") {
            Some(e) if is_presence_event(&e) => {}
            _ => return with_allow_events(answer(req, 489, None)),
        }
        let Some(state) =
            header_value(h, "Subscription-State").and_then(|s| SubscriptionState::parse(&s).ok())
        else {
            return answer(req, 400, Some("Missing or malformed Subscription-State"));
        };
        let contact = self.settings.contact.clone();
        let lang = header_value(h, "Content-Language");
        let document = if req.body.is_empty() {
            None
        } else {
            let ctype = header_value(h, "Content-Type")
                .unwrap_or_default()
                .to_ascii_lowercase();
            if !ctype.starts_with("application/pidf+xml") {
                let mut r = answer(req, 415, None);
                r.headers
                    .push(make_header("Accept", "application/pidf+xml".into()));
                return r;
            }
            match pidf::parse_pidf(&req.body, lang.as_deref()) {
                Ok(d) => Some(d),
                Err(e) => {
                    return answer(req, e.sip_status(), Some(&format!("Malformed PIDF: {e}")))
                }
            }
        };
        let Some(o) = self.outs.get_mut(&key) else {
            return answer(req, 481, None);
        };
        // The first NOTIFY (from any fork) makes the dialog; later ones must match it.
        let mut creates_dialog = o.dialog.is_none() || o.dialog_from_2xx;
        match &mut o.dialog {
            Some(d) if d.matches(req) => {
                if let Err(code) = d.check_request(req) {
                    return answer(req, code, None);
                }
                if o.dialog_from_2xx {
                    // RFC 6665 4.4.1: the subscriber's route set comes from the NOTIFY,
                    // not from the 2xx to the SUBSCRIBE.
                    let mut route_set = dialog::header_values(&req.headers, "Record-Route");
                    route_set.reverse();
                    d.route_set = route_set;
                    o.dialog_from_2xx = false;
                }
            }
            Some(_) => {
                // Another fork: RFC 6665 4.1.2.4 lets us refuse it.
                return answer(req, 481, None);
            }
            None => match subscribe_request(o, 0, &contact).map(|s| Dialog::as_subscriber(&s, req))
            {
                Some(Ok(d)) => o.dialog = Some(d),
                _ => return answer(req, 400, Some("NOTIFY cannot form a dialog")),
            },
        }
        if o.dialog.as_ref().is_some_and(|d| !d.matches(req)) {
            creates_dialog = false;
        }
        let ok = if creates_dialog {
            dialog_response_to(req, 200, None, "")
        } else {
            response_to(req, 200, None, "")
        };
        match state.state {
            SubState::Active | SubState::Pending => {
                if let Some(e) = state.expires {
                    o.expires_at = now + secs(e);
                    let refresh = now
                        + refresh_after(std::time::Duration::from_secs(e.into())).as_millis()
                            as u64;
                    o.next_at = refresh;
                }
                let first_active = state.state == SubState::Active && !o.told_subscribed;
                o.state = if state.state == SubState::Active {
                    OutState::Active
                } else {
                    OutState::Pending
                };
                if first_active {
                    o.told_subscribed = true;
                }
                let next = o.next_at;
                let o = o.clone();
                if first_active {
                    if let Some(r) = self.contact_says(&o, PresenceType::Subscribed) {
                        self.stanza(r);
                    }
                }
                self.schedule_out(&key, next);
                self.save_out(&key);
                if o.state == OutState::Active {
                    self.contact_presence(&key, document);
                }
            }
            SubState::Terminated => {
                match after_termination(
                    &state,
                    std::time::Duration::from_millis(self.settings.retry_ms),
                ) {
                    AfterTermination::Resubscribe => {
                        o.dialog = None;
                        self.contact_presence(&key, document);
                        self.send_new_subscribe(now, &key);
                    }
                    AfterTermination::ResubscribeAfter(wait) => {
                        o.dialog = None;
                        o.state = OutState::Retrying;
                        o.expires_at = 0;
                        self.schedule_out(&key, now + wait.as_millis() as u64);
                        self.save_out(&key);
                        self.contact_gone(&key);
                    }
                    AfterTermination::GiveUp => {
                        let o = o.clone();
                        self.contact_gone(&key);
                        if let Some(r) = self.contact_says(&o, PresenceType::Unsubscribed) {
                            self.stanza(r);
                        }
                        self.remove_out(&key);
                    }
                }
            }
        }
        ok
    }

    /// A NOTIFY for a subscription stox ended (RFC 6665 4.1.2.3, 4.4.1): 200 to each until
    /// the terminated one, which ends it; 481 for one stox never had.
    fn notify_after_unsubscribe(&mut self, req: &Request, call_id: &str, to_tag: &str) -> Response {
        if self
            .ending
            .get(call_id)
            .is_none_or(|e| e.from_tag != to_tag)
        {
            return answer(req, 481, None);
        }
        let terminated = header_value(&req.headers, "Subscription-State")
            .and_then(|s| SubscriptionState::parse(&s).ok())
            .is_some_and(|s| s.state == SubState::Terminated);
        if terminated {
            tracing::debug!(%call_id, "Terminated NOTIFY after the unsubscribe; the subscription is over.");
            self.ending.remove(call_id);
        }
        answer(req, 200, None)
    }

    /// PIDF presences of the SIP contact -> the XMPP user.
    fn contact_presence(&mut self, key: &str, document: Option<pidf::PidfDocument>) {
        let Some(document) = document else { return };
        let Some(o) = self.outs.get_mut(key) else {
            return;
        };
        let Ok(to) = Jid::new(&o.user) else { return };
        let Ok(contact) = BareJid::new(&o.contact_jid) else {
            return;
        };
        let out: Vec<Presence> = o
            .remote
            .update(document)
            .iter()
            .map(|state| state.to_xmpp(&contact, &to))
            .collect();
        for p in out {
            self.stanza(p);
        }
    }

    /// The contact's presence is no longer known: unavailable for each resource shown.
    fn contact_gone(&mut self, key: &str) {
        let Some(o) = self.outs.get_mut(key) else {
            return;
        };
        let remote = std::mem::take(&mut o.remote);
        let (Ok(contact), Ok(to)) = (BareJid::new(&o.contact_jid), Jid::new(&o.user)) else {
            return;
        };
        for p in remote.shown(&contact, &to) {
            let mut u = Presence::new(PresenceType::Unavailable);
            u.from = p.from;
            u.to = p.to;
            self.stanza(u);
        }
    }

    /// What became of a request stox sent.
    pub fn handle_sip_result(&mut self, now: Millis, token: u64, result: SipResult) {
        let Some(pending) = self.pending.remove(&token) else {
            return;
        };
        match pending {
            Pending::Unsubscribe { call_id } => {
                // Refused or lost: no terminated NOTIFY will come.
                let refused = match &result {
                    SipResult::Response(r) => r.status_code.code() >= 300,
                    SipResult::Failed => true,
                };
                if refused {
                    self.ending.remove(&call_id);
                }
            }
            Pending::Notify { key } => {
                let gone = match &result {
                    SipResult::Response(r) => matches!(r.status_code.code(), 481 | 408 | 404),
                    SipResult::Failed => true,
                };
                if gone {
                    tracing::info!(%key, "Watcher's subscription is gone (NOTIFY failed); removed.");
                    self.remove_in(&key);
                    return;
                }
                let Some(i) = self.ins.get_mut(&key) else {
                    return;
                };
                i.busy = false;
                if let Some(reason) = i.ending.take() {
                    self.send_notify(now, &key, Some(reason));
                    self.remove_in(&key);
                } else if i.dirty {
                    self.send_notify(now, &key, None);
                }
            }
            Pending::Subscribe { key, expires } => {
                self.subscribe_result(now, &key, expires, result)
            }
        }
    }

    fn subscribe_result(&mut self, now: Millis, key: &str, expires: u32, result: SipResult) {
        let retry = now + self.settings.retry_ms;
        let Some(o) = self.outs.get_mut(key) else {
            return;
        };
        match result {
            SipResult::Response(r) if r.status_code.code() < 300 => {
                let granted = header_value(&r.headers, "Expires")
                    .and_then(|e| e.parse::<u32>().ok())
                    .unwrap_or(expires);
                o.expires_at = now + secs(granted);
                let next = now
                    + refresh_after(std::time::Duration::from_secs(granted.into())).as_millis()
                        as u64;
                match &mut o.dialog {
                    Some(d) => d.on_refresh_response(&r),
                    None => {
                        // The 2xx can form the dialog before the NOTIFY does.
                        let contact = self.settings.contact.clone();
                        if let Some(Ok(d)) =
                            subscribe_request(o, 0, &contact).map(|s| Dialog::as_uac(&s, &r))
                        {
                            o.dialog = Some(d);
                            o.dialog_from_2xx = true;
                        }
                    }
                }
                self.schedule_out(key, next);
                self.save_out(key);
            }
            SipResult::Response(r) if r.status_code.code() == 423 => {
                let min =
                    header_value(&r.headers, "Min-Expires").and_then(|e| e.parse::<u32>().ok());
                match min {
                    Some(m) if m > expires => {
                        self.settings.expires = self.settings.expires.max(m);
                        self.send_refresh(now, key, m);
                    }
                    _ => self.give_up(key),
                }
            }
            SipResult::Response(r) if r.status_code.code() == 481 => {
                // The dialog is gone on the other side: start over.
                o.dialog = None;
                self.send_new_subscribe(now, key);
            }
            SipResult::Response(r) if matches!(r.status_code.code(), 408 | 480 | 500..=599) => {
                o.state = OutState::Retrying;
                o.dialog = None;
                self.schedule_out(key, retry);
                self.save_out(key);
            }
            SipResult::Response(r) => {
                tracing::info!(status = r.status_code.code(), %key, "SUBSCRIBE refused; ending the XMPP subscription.");
                self.give_up(key);
            }
            SipResult::Failed => {
                o.state = OutState::Retrying;
                o.dialog = None;
                self.schedule_out(key, retry);
                self.save_out(key);
            }
        }
    }

    fn give_up(&mut self, key: &str) {
        let Some(o) = self.outs.get(key).cloned() else {
            return;
        };
        self.contact_gone(key);
        if let Some(r) = self.contact_says(&o, PresenceType::Unsubscribed) {
            self.stanza(r);
        }
        self.remove_out(key);
    }

    // ----- timers -----

    pub fn handle_timeout(&mut self, now: Millis) {
        while let Some(Reverse((at, timer))) = self.timers.peek().cloned() {
            if at > now {
                break;
            }
            self.timers.pop();
            match timer {
                Timer::Out(key) => {
                    let Some(o) = self.outs.get(&key) else {
                        continue;
                    };
                    if o.next_at != at {
                        continue; // superseded
                    }
                    match o.state {
                        OutState::Dormant => {}
                        OutState::Retrying => self.send_new_subscribe(now, &key),
                        _ => self.refresh_with_probe(now, &key),
                    }
                }
                Timer::In(key) => {
                    let Some(i) = self.ins.get(&key) else {
                        continue;
                    };
                    if i.expires_at != at {
                        continue;
                    }
                    tracing::debug!(%key, "A SIP watcher's subscription expired.");
                    self.end_watch(now, &key, Reason::Timeout);
                }
                Timer::Notify(key) => {
                    if self.ins.get(&key).is_some_and(|i| i.dirty && !i.busy) {
                        self.send_notify(now, &key, None);
                    }
                }
                Timer::Probe(user) => {
                    let Some((deadline, _)) = self.probes.get(&user) else {
                        continue;
                    };
                    if *deadline != at {
                        continue;
                    }
                    let (_, keys) = self.probes.remove(&user).unwrap_or_default();
                    for key in keys {
                        // No sign of the user: let the SIP side go until the user is back.
                        tracing::info!(%user, "No answer to the probe before a refresh; the subscription waits for the user's return.");
                        self.contact_gone(&key);
                        self.go_dormant(now, &key);
                    }
                }
                Timer::Ending(call_id) => {
                    if self.ending.get(&call_id).is_some_and(|e| e.deadline == at) {
                        tracing::debug!(%call_id, "No terminated NOTIFY after the unsubscribe; forgotten.");
                        self.ending.remove(&call_id);
                    }
                }
            }
        }
    }

    /// RFC 7248 section 6: probe the user's bare JID from the gateway before refreshing.
    fn refresh_with_probe(&mut self, now: Millis, key: &str) {
        let Some(o) = self.outs.get(key) else { return };
        let user = o.user.clone();
        let domain = user.rsplit('@').next().unwrap_or("").to_string();
        if self
            .settings
            .probe_exempt
            .iter()
            .any(|d| d.eq_ignore_ascii_case(&domain))
        {
            self.send_refresh(now, key, self.settings.expires);
            return;
        }
        let recently = self
            .seen
            .get(&user)
            .is_some_and(|t| now.saturating_sub(*t) <= self.settings.seen_window_ms);
        if recently {
            // Still probe, as section 6 asks; its answer renews the evidence.
            if let (Ok(gw), Ok(to)) = (Jid::new(self.addresses.component()), Jid::new(&user)) {
                self.stanza(Presence::new(PresenceType::Probe).with_from(gw).with_to(to));
            }
            self.send_refresh(now, key, self.settings.expires);
            return;
        }
        let deadline = now + self.settings.probe_timeout_ms;
        let entry = self
            .probes
            .entry(user.clone())
            .or_insert((deadline, Vec::new()));
        let first = entry.1.is_empty();
        if !entry.1.iter().any(|k| k == key) {
            entry.1.push(key.to_string());
        }
        if first {
            entry.0 = deadline;
            self.timers
                .push(Reverse((deadline, Timer::Probe(user.clone()))));
            if let (Ok(gw), Ok(to)) = (Jid::new(self.addresses.component()), Jid::new(&user)) {
                self.stanza(Presence::new(PresenceType::Probe).with_from(gw).with_to(to));
            }
        }
    }
}

fn with_allow_events(mut r: Response) -> Response {
    r.headers
        .push(make_header("Allow-Events", "presence".into()));
    r
}

fn add_subscribe_headers(h: &mut Headers, expires: u32, contact: &str) {
    h.push(make_header("Event", "presence".into()));
    h.push(make_header("Accept", "application/pidf+xml".into()));
    h.push(make_header("Expires", expires.to_string()));
    h.push(make_header("Contact", format!("<{contact}>")));
}

/// The out-of-dialog SUBSCRIBE of an Outbound (also the template its dialog is made from).
fn subscribe_request(o: &Outbound, expires: u32, contact: &str) -> Option<Request> {
    let target = SipAddress::parse(&o.target).ok()?;
    let uri = sip_uri(&target).ok()?;
    let mut headers = Headers::default();
    headers.push(make_header("To", format!("<{}>", o.target)));
    headers.push(make_header(
        "From",
        format!("<{}>;tag={}", o.from_uri, o.from_tag),
    ));
    headers.push(make_header("Call-ID", o.call_id.clone()));
    headers.push(make_header("CSeq", format!("{} SUBSCRIBE", o.cseq.max(1))));
    add_subscribe_headers(&mut headers, expires, contact);
    Some(Request {
        method: Method::Subscribe,
        uri,
        version: Version::V2,
        headers,
        body: Vec::new(),
    })
}

#[cfg(test)]
#[path = "core_tests.rs"]
mod tests;
