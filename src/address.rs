//! Address mapping between JIDs and SIP URIs (XEP-0106, RFC 7247 section 5).
