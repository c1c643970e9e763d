//! stox's SIP user agent, on rsipstack's codec.

pub mod locate;
