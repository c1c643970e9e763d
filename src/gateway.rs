//! Wiring: binds the SIP listeners, starts the XMPP link, and routes what arrives on each
//! side to the interworking modules until shutdown.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::stream::{FuturesUnordered, StreamExt};
use rsipstack::sip::Method;
use tokio::sync::mpsc;
use xmpp_parsers::stanza::Stanza;

use crate::address::{AddressError, AddressMap};
use crate::chat::ChatHandle;
use crate::config::Config;
use crate::im::Im;
use crate::presence::PresenceHandle;
use crate::sip::endpoint::{self, IncomingRequest, StartError};
use crate::sip::register::{self, RegisterHandle};
use crate::xmpp::link::{self, LinkConfig, XmppLink};
use crate::xmpp::service;

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("{0}")]
    Sip(#[from] StartError),
    #[error("address mapping: {0}")]
    Address(#[from] AddressError),
    #[error("{0}")]
    Store(#[from] crate::store::StoreError),
    #[error("cannot bind msrp.listen: {0}")]
    Msrp(std::io::Error),
}

/// What a running gateway exposes to its caller (tests use it to wait for the link).
pub struct Running {
    pub xmpp: XmppLink,
    pub sip: endpoint::SipHandle,
    /// The registration at `sip.register`, if configured.
    pub registration: Option<RegisterHandle>,
}

/// How long shutdown waits for the registrar to answer the unregistering REGISTER.
const UNREGISTER_WAIT: Duration = Duration::from_secs(2);

/// Starts the gateway and runs it until `shutdown` completes.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), RunError> {
    let mut running = start(config).await?;
    shutdown.await;
    tracing::info!("Shutting down.");
    if let Some(r) = running.registration.take() {
        r.unregister(UNREGISTER_WAIT).await;
    }
    Ok(())
}

/// Starts every part and returns once the SIP listeners are bound (the XMPP link keeps
/// connecting in the background).
pub async fn start(config: Config) -> Result<Running, RunError> {
    let addresses = Arc::new(AddressMap::new(
        &config.xmpp.jid,
        &config.xmpp.domains,
        &config.sip.domains,
        config.sip.default_domain.as_deref(),
    )?);
    let (sip, sip_requests) = endpoint::start(&config).await?;
    let (inbound_tx, inbound) = mpsc::channel::<Stanza>(1024);
    let xmpp = link::spawn(
        LinkConfig {
            jid: config.xmpp.jid.clone(),
            server: config.xmpp.server.clone(),
            secret: config.xmpp.secret.clone(),
            ping_to: config.xmpp.domains.first().cloned().unwrap_or_default(),
            reconnect_max: Duration::from_millis(config.xmpp.reconnect_max_ms),
            queue_limit: config.xmpp.queue_limit,
        },
        inbound_tx,
    );
    // Written by the presence task, read by the chat task (`chat.answer`).
    let availability = crate::presence::Availability::new();
    let presence = crate::presence::start(
        &config,
        addresses.clone(),
        sip.clone(),
        xmpp.clone(),
        availability.clone(),
    )?;
    let im = Arc::new(Im::new(
        addresses.clone(),
        sip.clone(),
        xmpp.clone(),
        config.msrp.listen.is_some(),
    ));
    let chat = crate::chat::start(
        &config,
        addresses.clone(),
        sip.clone(),
        xmpp.clone(),
        im.clone(),
        availability,
    )
    .await
    .map_err(RunError::Msrp)?;
    let jid_limit = crate::xmpp::limit::JidLimit::new(
        config.xmpp.rate_limit_per_jid,
        config.xmpp.rate_burst_per_jid,
    );
    tokio::spawn(route_xmpp(
        inbound,
        jid_limit,
        im.clone(),
        presence.clone(),
        chat.clone(),
    ));
    let trust = crate::sip::trust::Trust::new(&config.sip.trust);
    tokio::spawn(route_sip(sip_requests, trust, im, presence, chat));
    let registration = config.sip.register.as_ref().map(|r| {
        let transport = config
            .sip
            .listen
            .first()
            .map(|l| l.transport)
            .unwrap_or(crate::config::ListenTransport::Udp);
        register::spawn(r, sip.clone(), transport)
    });
    Ok(Running {
        xmpp,
        sip,
        registration,
    })
}

/// Messages each router works on itself (polled in its own task, no spawn and no
/// cross-thread wake-up per message); beyond this many awaiting their answer at once,
/// further ones get a task of their own, as before.
const IN_FLIGHT: usize = 4096;

async fn route_xmpp(
    mut inbound: mpsc::Receiver<Stanza>,
    mut jid_limit: crate::xmpp::limit::JidLimit,
    im: Arc<Im>,
    presence: PresenceHandle,
    chat: Option<ChatHandle>,
) {
    let mut in_flight = FuturesUnordered::new();
    loop {
        let stanza = tokio::select! {
            biased;
            Some(()) = in_flight.next(), if !in_flight.is_empty() => continue,
            s = inbound.recv() => s,
        };
        let Some(stanza) = stanza else { break };
        if let Stanza::Message(m) = &stanza {
            if let Some(e) = jid_limit.check(std::time::Instant::now(), m) {
                tracing::debug!(from = ?m.from, "XMPP message over xmpp.rate_limit_per_jid; bounced.");
                im.xmpp.send(e);
                continue;
            }
        }
        match stanza {
            Stanza::Iq(iq) => {
                if let Some(reply) = service::handle_iq(iq, &im.addresses) {
                    im.xmpp.send(reply);
                }
            }
            Stanza::Message(m) => match &chat {
                // type=chat are chat sessions (RFC 7573) when [msrp] is configured.
                Some(c) if m.type_ == xmpp_parsers::message::MessageType::Chat => {
                    if let Some(bounce) = c.xmpp(m) {
                        im.xmpp.send(bounce);
                    }
                }
                _ if in_flight.len() < IN_FLIGHT => in_flight.push(im.clone().from_xmpp(m)),
                _ => {
                    tokio::spawn(im.clone().from_xmpp(m));
                }
            },
            Stanza::Presence(p) => presence.xmpp(p),
        }
    }
    while in_flight.next().await.is_some() {}
}

async fn route_sip(
    mut requests: mpsc::Receiver<IncomingRequest>,
    mut trust: crate::sip::trust::Trust,
    im: Arc<Im>,
    presence: PresenceHandle,
    chat: Option<ChatHandle>,
) {
    let mut in_flight = FuturesUnordered::new();
    loop {
        let incoming = tokio::select! {
            biased;
            Some(()) = in_flight.next(), if !in_flight.is_empty() => continue,
            r = requests.recv() => r,
        };
        let Some(incoming) = incoming else { break };
        // An ACK or a CANCEL the core answered gets no response and starts nothing.
        let Some(incoming) = (if incoming.responder.expects_response() {
            admit(&mut trust, incoming)
        } else {
            Some(incoming)
        }) else {
            continue;
        };
        match incoming.request.method {
            Method::Invite | Method::Ack | Method::Bye | Method::Cancel if chat.is_some() => {
                if let Some(c) = &chat {
                    c.sip(incoming);
                }
            }
            Method::Message if in_flight.len() < IN_FLIGHT => {
                in_flight.push(im.clone().from_sip(incoming))
            }
            Method::Message => {
                tokio::spawn(im.clone().from_sip(incoming));
            }
            Method::Subscribe | Method::Notify => presence.sip(incoming),
            Method::Options => im.options(incoming),
            _ => im.unsupported(incoming),
        }
    }
    while in_flight.next().await.is_some() {}
}

/// `sip.trusted_peers` and the limits for everyone else: the request back if it may go on,
/// else it is answered here (403, or 503 with Retry-After).
fn admit(
    trust: &mut crate::sip::trust::Trust,
    incoming: IncomingRequest,
) -> Option<IncomingRequest> {
    use crate::sip::trust::Verdict;
    let remote = incoming.source.remote;
    match trust.check(std::time::Instant::now(), &incoming.request, remote.ip()) {
        Verdict::Pass => Some(incoming),
        Verdict::Forbidden(why) => {
            tracing::info!(%remote, method = %incoming.request.method, %why, "SIP request from an untrusted source refused with 403.");
            let r = crate::sip::message::response_to(&incoming.request, 403, Some(why), "");
            incoming.responder.respond(r);
            None
        }
        Verdict::Limited(retry) => {
            tracing::debug!(%remote, method = %incoming.request.method, retry, "SIP request over the rate limit for untrusted sources; answered 503.");
            incoming.refuse_for(retry);
            None
        }
    }
}
