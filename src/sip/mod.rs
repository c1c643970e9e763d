//! stox's SIP user agent: rsipstack's codec behind stox's own framing, transactions and
//! transports.
//!
//! Only this module names rsipstack; the rest of stox sees `Request`/`Response` through
//! the re-exports below and the typed handles of [`endpoint`].

pub mod auth;
pub mod core;
pub mod dialog;
pub mod endpoint;
#[cfg(test)]
mod fuzz;
pub mod grammar;
pub mod locate;
pub mod message;
pub mod register;
pub mod subscription;
pub mod tls;
pub mod transaction;
pub mod trust;

pub use rsipstack::sip::{Method, Request, Response, SipMessage};

use locate::{Destination, Transport};

/// The user part of a `sip:`/`sips:` URI (`None` when it has none), for config checks.
pub fn uri_user(uri: &str) -> Result<Option<String>, String> {
    let parsed =
        rsipstack::sip::parse_uri(uri.trim()).map_err(|e| format!("not a SIP URI ({e})"))?;
    match &parsed.scheme {
        Some(rsipstack::sip::Scheme::Sip) | Some(rsipstack::sip::Scheme::Sips) => {}
        _ => return Err("not a sip: or sips: URI".into()),
    }
    if parsed.host_with_port.host.to_string().is_empty() {
        return Err("no host".into());
    }
    Ok(parsed.auth.map(|a| a.user))
}

/// A next hop from config (`sip.outbound_proxy`, `sip.routes`): a SIP URI naming a host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NextHop {
    pub uri: String,
    pub destination: Destination,
}

impl NextHop {
    pub fn parse(uri: &str) -> Result<NextHop, String> {
        let uri = uri.trim();
        let parsed = rsipstack::sip::parse_uri(uri).map_err(|e| format!("not a SIP URI ({e})"))?;
        let secure = match &parsed.scheme {
            Some(rsipstack::sip::Scheme::Sip) => false,
            Some(rsipstack::sip::Scheme::Sips) => true,
            _ => return Err("not a sip: or sips: URI".into()),
        };
        let host = parsed.host_with_port.host.to_string();
        if host.is_empty() {
            return Err("no host".into());
        }
        let mut transport = None;
        for p in &parsed.params {
            if let rsipstack::sip::Param::Transport(t) = p {
                transport = Some(
                    Transport::from_param(&t.to_string())
                        .ok_or_else(|| format!("unsupported transport {t}"))?,
                );
            }
        }
        Ok(NextHop {
            uri: uri.to_string(),
            destination: Destination {
                host,
                port: parsed.host_with_port.port.map(|p| p.value()),
                transport,
                secure,
            },
        })
    }
}
