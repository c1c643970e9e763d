//! The XMPP side: the component link and the services the component itself offers.

#[cfg(test)]
mod fuzz;
pub mod limit;
pub mod link;
pub mod service;
