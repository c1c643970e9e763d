//! stox: a SIP <-> XMPP gateway, run as an XMPP external component (XEP-0114).
//!
//! See ARCHITECTURE.md for the module map.

pub mod address;
pub mod chat;
pub mod config;
pub mod destination;
pub mod gateway;
pub mod im;
pub mod mapping;
pub mod msrp;
pub mod presence;
pub mod sip;
pub mod store;
pub mod xmpp;
