//! stox: a SIP <-> XMPP gateway, run as an XMPP external component (XEP-0114).
//!
//! See ARCHITECTURE.md for the module map.

pub mod address;
pub mod chat;
pub mod config;
#[cfg(test)]
mod corpus;
pub mod destination;
pub mod gateway;
pub mod im;
pub mod journal;
pub mod log;
pub mod mapping;
pub mod msrp;
pub mod presence;
#[cfg(test)]
mod route_sip_fuzz;
pub mod sip;
pub mod store;
pub mod xmpp;
