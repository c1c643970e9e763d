//! RFC 3263 server location.
