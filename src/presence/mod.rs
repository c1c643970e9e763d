//! Presence interworking (RFC 7248): the sans-IO [`core`] and its tokio edge, which owns
//! the store, sends what the core asks for, and feeds back results and timers.

pub mod core;

use std::collections::HashSet;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::mpsc;
use tracing::Instrument;
use xmpp_parsers::presence::{Presence, Type as PresenceType};

use self::core::{Action, Millis, PresenceCore, PresenceSettings, SipResult, KIND_IN, KIND_OUT};
use crate::address::AddressMap;
use crate::config::{Config, OnSipEnd};
use crate::sip::endpoint::{IncomingRequest, SipHandle};
use crate::sip::message::{response_to, unavailable};
use crate::sip::Response;
use crate::store::{Op, Row, Store, StoreError, StoreThread};
use crate::xmpp::link::XmppLink;

/// Which local users the gateway knows to be available (bare JIDs), as the presence task
/// last saw it ([`core::PresenceCore::is_available`]); written by the presence task, read
/// by the chat task (`chat.answer = "when_available"`). Cheap to clone; not persisted, so
/// after a restart a user is unknown until their next presence (a login, or the probe
/// answers their server sends).
#[derive(Clone, Default)]
pub struct Availability(Arc<RwLock<HashSet<String>>>);

impl Availability {
    pub fn new() -> Availability {
        Availability::default()
    }

    pub fn is_available(&self, user: &str) -> bool {
        self.0.read().map(|s| s.contains(user)).unwrap_or(false)
    }

    pub fn set(&self, user: &str, available: bool) {
        if let Ok(mut s) = self.0.write() {
            if available {
                s.insert(user.to_string());
            } else {
                s.remove(user);
            }
        }
    }
}

/// What the gateway hands the presence task.
pub enum Input {
    Xmpp(Box<Presence>),
    Sip(Box<IncomingRequest>),
}

/// The presence task's handle: cheap to clone, never blocks the caller.
#[derive(Clone)]
pub struct PresenceHandle {
    tx: mpsc::Sender<Input>,
}

impl PresenceHandle {
    pub fn xmpp(&self, p: Presence) {
        if self.tx.try_send(Input::Xmpp(Box::new(p))).is_err() {
            tracing::warn!("Presence queue full; a presence stanza was dropped.");
        }
    }

    pub fn sip(&self, incoming: IncomingRequest) {
        if let Err(
            mpsc::error::TrySendError::Full(Input::Sip(i))
            | mpsc::error::TrySendError::Closed(Input::Sip(i)),
        ) = self.tx.try_send(Input::Sip(Box::new(incoming)))
        {
            i.refuse_busy();
        }
    }
}

fn now_ms() -> Millis {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

pub fn settings(config: &Config, contact: String) -> PresenceSettings {
    let p = &config.presence;
    PresenceSettings {
        expires: p.expires,
        max_expires: p.max_expires,
        min_expires: p.min_expires,
        max_per_user: p.max_per_user,
        max_total: p.max_total,
        probe_timeout_ms: p.probe_timeout_ms,
        probe_exempt: p.probe_exempt_domains.clone(),
        seen_window_ms: p.seen_window_s.saturating_mul(1000),
        retry_ms: p.retry_ms,
        min_refresh_s: p.min_refresh_s,
        end_xmpp_with_sip: p.on_sip_end == OnSipEnd::Unsubscribe,
        contact,
    }
}

/// Opens the store, takes back its subscriptions and starts the presence task. The store
/// then lives on its own thread ([`StoreThread`]); only this start reads it on the caller's.
pub fn start(
    config: &Config,
    addresses: Arc<AddressMap>,
    sip: SipHandle,
    xmpp: XmppLink,
    availability: Availability,
) -> Result<PresenceHandle, StoreError> {
    let store = Store::open(&config.store.path)?;
    let contact = format!("sip:stox@{}", sip.contact_host().unwrap_or("127.0.0.1"));
    let mut core = PresenceCore::new(settings(config, contact), addresses);
    let now = now_ms();
    let rows = store.all()?;
    let restored = rows.len();
    for row in rows {
        core.restore(now, &row.kind, &row.data);
    }
    if restored > 0 {
        tracing::info!(
            restored,
            "Presence subscriptions taken back from the store."
        );
    }
    let store = StoreThread::spawn(store).map_err(|_| StoreError::Stopped)?;
    let (tx, rx) = mpsc::channel(8192);
    tokio::spawn(run(core, store, sip, xmpp, availability, rx));
    Ok(PresenceHandle { tx })
}

/// How long a SIP peer is asked to wait after the store refused a write.
const STORE_RETRY_AFTER_S: u32 = 60;

/// The input whose answer depends on the store: it is given only once what the input
/// wrote is committed; if the commit fails, the input is refused instead.
enum Gate {
    /// A SIP request and the answer the core gave it. A SUBSCRIBE that cannot be stored
    /// is not accepted: 503 with Retry-After, and its subscription is forgotten.
    Sip {
        request: Box<IncomingRequest>,
        response: Response,
    },
    /// A `subscribe` from an XMPP user: an error stanza back, the subscription forgotten.
    XmppSubscribe(Box<Presence>),
}

async fn run(
    mut core: PresenceCore,
    store: StoreThread,
    sip: SipHandle,
    xmpp: XmppLink,
    availability: Availability,
    mut rx: mpsc::Receiver<Input>,
) {
    let (results_tx, mut results) = mpsc::unbounded_channel::<(u64, SipResult)>();
    // Before the link is up, probes and stanzas would only be queued and lost on the
    // first failure: wait for it once, so a restart's refreshes see real answers.
    xmpp.wait_up().await;
    let out = Outputs {
        store,
        sip,
        xmpp,
        results: results_tx,
    };
    loop {
        out.drain(&mut core, None).await;
        let wait = core
            .poll_timeout()
            .map(|at| Duration::from_millis(at.saturating_sub(now_ms())));
        tokio::select! {
            input = rx.recv() => {
                let Some(input) = input else { return };
                match input {
                    Input::Xmpp(p) => {
                        let span = tracing::debug_span!(
                            "presence_xmpp",
                            id = p.id.as_deref().unwrap_or(""),
                            from = %p.from.as_ref().map(|j| j.to_string()).unwrap_or_default(),
                            to = %p.to.as_ref().map(|j| j.to_string()).unwrap_or_default(),
                            type_ = ?p.type_,
                        );
                        let gate = {
                            let _g = span.enter();
                            let user = p.from.as_ref().map(|j| j.to_bare().to_string());
                            let gate = (p.type_ == PresenceType::Subscribe)
                                .then(|| Gate::XmppSubscribe(p.clone()));
                            core.handle_xmpp(now_ms(), *p);
                            if let Some(user) = user {
                                availability.set(&user, core.is_available(&user));
                            }
                            gate
                        };
                        out.drain(&mut core, gate).instrument(span).await;
                    }
                    Input::Sip(i) => {
                        let call_id = crate::sip::dialog::header_value(&i.request.headers, "Call-ID").unwrap_or_default();
                        let span = tracing::info_span!("presence_sip", %call_id, method = %i.request.method);
                        let response = {
                            let _g = span.enter();
                            core.handle_sip_request(now_ms(), &i.request)
                                .unwrap_or_else(|| response_to(&i.request, 501, None, ""))
                        };
                        let gate = Gate::Sip { request: i, response };
                        out.drain(&mut core, Some(gate)).instrument(span).await;
                    }
                }
            }
            Some((token, result)) = results.recv() => core.handle_sip_result(now_ms(), token, result),
            _ = sleep_opt(wait) => core.handle_timeout(now_ms()),
        }
    }
}

async fn sleep_opt(d: Option<Duration>) {
    match d {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}

/// Where the core's actions go.
struct Outputs {
    store: StoreThread,
    sip: SipHandle,
    xmpp: XmppLink,
    results: mpsc::UnboundedSender<(u64, SipResult)>,
}

impl Outputs {
    /// Carries out what the core asks for. Write-ahead: the rows the actions save are
    /// committed (one transaction, on the store thread) before any of the other actions
    /// goes out, and before `gate`'s answer.
    async fn drain(&self, core: &mut PresenceCore, mut gate: Option<Gate>) {
        loop {
            let mut ops = Vec::new();
            let mut saved = Vec::new();
            let mut others = Vec::new();
            while let Some(action) = core.poll_action() {
                match action {
                    Action::Save {
                        id,
                        kind,
                        user,
                        remote,
                        data,
                    } => {
                        saved.push((id.clone(), kind));
                        ops.push(Op::Put(Row {
                            id,
                            kind: kind.to_string(),
                            local_jid: user,
                            remote,
                            data,
                        }));
                    }
                    Action::Delete(id) => ops.push(Op::Delete(id)),
                    other => others.push(other),
                }
            }
            if ops.is_empty() && others.is_empty() {
                if let Some(g) = gate.take() {
                    answer(g);
                }
                return;
            }
            let committed = self.store.apply(ops).await;
            match (committed, gate.take()) {
                (Ok(()), g) => {
                    if let Some(g) = g {
                        answer(g);
                    }
                    for a in others {
                        self.act(a);
                    }
                }
                (Err(e), None) => {
                    // Nobody to answer: the subscriptions go on in memory.
                    tracing::error!(error = %e, "Cannot save presence subscriptions.");
                    for a in others {
                        self.act(a);
                    }
                }
                (Err(e), Some(g)) => {
                    tracing::error!(error = %e, "Cannot save a subscription; the request is refused.");
                    // What the refused input set up goes; what it asked to send is not sent.
                    let kind = match &g {
                        Gate::Sip { request, .. }
                            if request.request.method == crate::sip::Method::Subscribe =>
                        {
                            Some(KIND_IN)
                        }
                        Gate::Sip { .. } => None,
                        Gate::XmppSubscribe(_) => Some(KIND_OUT),
                    };
                    let mut forgot = false;
                    for (id, k) in &saved {
                        if Some(*k) == kind {
                            core.forget(id);
                            forgot = true;
                        }
                    }
                    match g {
                        Gate::Sip { request, response } => {
                            let r = if response.status_code.code() < 300 {
                                unavailable(
                                    &request.request,
                                    "Cannot store the subscription",
                                    STORE_RETRY_AFTER_S,
                                )
                            } else {
                                response
                            };
                            request.responder.respond(r);
                        }
                        Gate::XmppSubscribe(p) => core.refuse_unstored(&p),
                    }
                    for a in others {
                        match a {
                            Action::Sip { token, .. } if !core.awaits(token) => {}
                            Action::Stanza(_) if forgot => {}
                            a => self.act(a),
                        }
                    }
                    // The refusal's own actions (its error stanza, the deletes) follow.
                }
            }
        }
    }

    fn act(&self, action: Action) {
        match action {
            Action::Stanza(p) => self.xmpp.send(p),
            Action::Sip {
                token,
                request,
                in_dialog,
            } => {
                let sip = self.sip.clone();
                let results = self.results.clone();
                let call_id = crate::sip::dialog::header_value(&request.headers, "Call-ID")
                    .unwrap_or_default();
                let span = tracing::info_span!("presence_out", %call_id, method = %request.method);
                tokio::spawn(
                    async move {
                        let r = if in_dialog {
                            sip.send_in_dialog(request).await
                        } else {
                            sip.send(request).await
                        };
                        let result = match r {
                            Ok(r) => SipResult::Response(r),
                            Err(e) => {
                                tracing::debug!(error = %e, "Presence request failed.");
                                SipResult::Failed
                            }
                        };
                        let _ = results.send((token, result));
                    }
                    .instrument(span),
                );
            }
            // Collected by `drain` before anything else goes out.
            Action::Save { .. } | Action::Delete(_) => {}
        }
    }
}

fn answer(gate: Gate) {
    match gate {
        Gate::Sip { request, response } => request.responder.respond(response),
        Gate::XmppSubscribe(_) => {}
    }
}
