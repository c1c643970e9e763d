//! Pure mappings between SIP and XMPP.

pub mod error;
#[cfg(test)]
mod fuzz;
pub mod message;
pub mod presence;
pub mod xhtml;
