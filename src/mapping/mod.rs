//! Pure mappings between SIP and XMPP.

pub mod error;
pub mod message;
pub mod presence;
pub mod xhtml;
