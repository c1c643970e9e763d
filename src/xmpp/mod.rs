//! The XMPP side: the component link and the services the component itself offers.

pub mod limit;
pub mod link;
pub mod service;
