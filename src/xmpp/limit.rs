//! `xmpp.rate_limit_per_jid`: messages per second (and burst) per sending bare JID (issue 11
//! item 3). Off by default, the XMPP server has its own limits; with it on, a message
//! beyond the limit goes back to its sender as `resource-constraint` (type `wait`) instead
//! of becoming a SIP request.
//!
//! Sans-IO: `now` is passed in; the bucket map is bounded (see `Buckets`).

use std::time::Instant;

use xmpp_parsers::message::{Message, MessageType};
use xmpp_parsers::stanza_error::DefinedCondition;

use crate::mapping::error::stanza_error;
use crate::sip::trust::Buckets;

/// Most senders remembered at once.
const MAX_JIDS: usize = 16_384;

pub struct JidLimit {
    buckets: Option<Buckets<String>>,
}

impl JidLimit {
    /// `rate` messages per second after a burst of `burst`; a rate of 0 is no limit.
    pub fn new(rate: u32, burst: u32) -> JidLimit {
        JidLimit {
            buckets: (rate > 0).then(|| Buckets::new(rate, burst, MAX_JIDS)),
        }
    }

    /// None when `m` may go on; else the error to send back to its sender.
    pub fn check(&mut self, now: Instant, m: &Message) -> Option<Message> {
        let buckets = self.buckets.as_mut()?;
        // An error answers something stox sent; bouncing it would only echo.
        if m.type_ == MessageType::Error {
            return None;
        }
        let from = m.from.as_ref()?.to_bare().to_string();
        let retry = buckets.take(&from, now).err()?;
        let text = format!("over xmpp.rate_limit_per_jid; try again in {retry} s");
        crate::chat::core::bounce(m, stanza_error(DefinedCondition::ResourceConstraint, text))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;
    use std::time::Duration;
    use xmpp_parsers::jid::Jid;

    fn message(from: &str) -> Message {
        let mut m = Message::new(Some(
            Jid::from_str("romeo\\40sip.test@sip.example.com").unwrap(),
        ));
        m.from = Some(Jid::from_str(from).unwrap());
        m.type_ = MessageType::Chat;
        m
    }

    #[test]
    fn off_by_default_then_burst_then_rate_per_bare_jid() {
        let t0 = Instant::now();
        let mut off = JidLimit::new(0, 0);
        for _ in 0..1000 {
            assert!(off.check(t0, &message("juliet@example.com/a")).is_none());
        }
        let mut l = JidLimit::new(1, 3);
        for r in ["a", "b", "a"] {
            assert!(l
                .check(t0, &message(&format!("juliet@example.com/{r}")))
                .is_none());
        }
        let e = l
            .check(t0, &message("juliet@example.com/b"))
            .expect("over the burst, whatever the resource");
        let xml = String::from(&xmpp_parsers::minidom::Element::from(e));
        assert!(
            xml.contains("type='error'") || xml.contains("type=\"error\""),
            "{xml}"
        );
        assert!(
            xml.contains("resource-constraint") && xml.contains("wait"),
            "{xml}"
        );
        assert!(
            xml.contains("juliet@example.com/b"),
            "back to its sender: {xml}"
        );
        assert!(
            l.check(t0, &message("nurse@example.com/x")).is_none(),
            "another JID"
        );
        assert!(l
            .check(
                t0 + Duration::from_secs(1),
                &message("juliet@example.com/a")
            )
            .is_none());
        let mut err = message("juliet@example.com/a");
        err.type_ = MessageType::Error;
        assert!(
            l.check(t0 + Duration::from_secs(1), &err).is_none(),
            "errors pass"
        );
    }
}
