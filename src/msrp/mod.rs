//! MSRP (RFC 4975) for chat sessions (RFC 7573): framing, URIs, a sans-IO session, SDP
//! offer/answer, CPIM and isComposing payloads, and the tokio edge.
//!
//! ```text
//!   TCP <-> conn (tokio) <-> session (sans-IO: handle_* in, poll_* out) <-> frame / uri
//!   SIP INVITE body <-> sdp          message/cpim <-> cpim    isComposing <-> iscomposing
//! ```

pub mod conn;
pub mod cpim;
pub mod frame;
pub mod iscomposing;
pub mod reassembly;
pub mod sdp;
pub mod session;
pub mod uri;
