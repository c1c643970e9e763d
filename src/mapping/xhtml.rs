//! text/html -> XHTML-IM (XEP-0071).
