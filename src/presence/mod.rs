//! Presence interworking (RFC 7248): the sans-IO [`core`] and its tokio edge, which owns
//! the store, sends what the core asks for, and feeds back results and timers.

pub mod core;

use std::collections::HashSet;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::mpsc;
use tracing::Instrument;
use xmpp_parsers::presence::Presence;

use self::core::{Action, Millis, PresenceCore, PresenceSettings, SipResult};
use crate::address::AddressMap;
use crate::config::{Config, OnSipEnd};
use crate::sip::endpoint::{IncomingRequest, SipHandle};
use crate::sip::message::response_to;
use crate::store::{Row, Store, StoreError};
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

/// Opens the store, takes back its subscriptions and starts the presence task.
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
    let (tx, rx) = mpsc::channel(8192);
    tokio::spawn(run(core, store, sip, xmpp, availability, rx));
    Ok(PresenceHandle { tx })
}

async fn run(
    mut core: PresenceCore,
    store: Store,
    sip: SipHandle,
    xmpp: XmppLink,
    availability: Availability,
    mut rx: mpsc::Receiver<Input>,
) {
    let (results_tx, mut results) = mpsc::unbounded_channel::<(u64, SipResult)>();
    // Before the link is up, probes and stanzas would only be queued and lost on the
    // first failure: wait for it once, so a restart's refreshes see real answers.
    xmpp.wait_up().await;
    loop {
        drain(&mut core, &store, &sip, &xmpp, &results_tx);
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
                        let _g = span.enter();
                        let user = p.from.as_ref().map(|j| j.to_bare().to_string());
                        core.handle_xmpp(now_ms(), *p);
                        if let Some(user) = user {
                            availability.set(&user, core.is_available(&user));
                        }
                    }
                    Input::Sip(i) => {
                        let call_id = crate::sip::dialog::header_value(&i.request.headers, "Call-ID").unwrap_or_default();
                        let span = tracing::info_span!("presence_sip", %call_id, method = %i.request.method);
                        let _g = span.enter();
                        match core.handle_sip_request(now_ms(), &i.request) {
                            Some(r) => i.responder.respond(r),
                            None => {
                                let r = response_to(&i.request, 501, None, "");
                                i.responder.respond(r);
                            }
                        }
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

fn drain(
    core: &mut PresenceCore,
    store: &Store,
    sip: &SipHandle,
    xmpp: &XmppLink,
    results: &mpsc::UnboundedSender<(u64, SipResult)>,
) {
    while let Some(action) = core.poll_action() {
        match action {
            Action::Stanza(p) => xmpp.send(p),
            Action::Sip {
                token,
                request,
                in_dialog,
            } => {
                let sip = sip.clone();
                let results = results.clone();
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
            // Write-ahead: the row is committed before the next action goes out.
            Action::Save {
                id,
                kind,
                user,
                remote,
                data,
            } => {
                let row = Row {
                    id,
                    kind: kind.to_string(),
                    local_jid: user,
                    remote,
                    data,
                };
                if let Err(e) = store.put(&row) {
                    tracing::error!(error = %e, "Cannot save a subscription.");
                }
            }
            Action::Delete(id) => {
                if let Err(e) = store.delete(&id) {
                    tracing::error!(error = %e, "Cannot delete a subscription.");
                }
            }
        }
    }
}
