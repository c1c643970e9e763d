//! Pure mappings between SIP and XMPP.

pub mod xhtml;
