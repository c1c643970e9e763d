//! application/im-iscomposing+xml (RFC 3994), and its mapping to XEP-0085 chat states
//! (RFC 7573 section 5, Tables 3 and 4).
//!
//! ```text
//!   <isComposing xmlns="urn:ietf:params:xml:ns:im-iscomposing">   <- IsComposing::parse
//!     <state>active</state><refresh>60</refresh>                  -> IsComposing::to_xml
//!   </isComposing>
//!   State <-> ChatState: sip_to_xmpp / xmpp_to_sip
//! ```

use xmpp_parsers::chatstates::ChatState;
use xmpp_parsers::minidom::Element;

pub const NS: &str = "urn:ietf:params:xml:ns:im-iscomposing";
pub const CONTENT_TYPE: &str = "application/im-iscomposing+xml";

/// Section 3: the sender is composing (`active`) or not (`idle`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Active,
    Idle,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IsComposing {
    pub state: State,
    /// When the sender last composed (RFC 3339 date-time, kept as written).
    pub lastactive: Option<String>,
    /// The media type being composed, such as text/plain or audio.
    pub contenttype: Option<String>,
    /// Seconds after which an `active` state lapses unless refreshed (section 4).
    pub refresh: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IsComposingError {
    #[error("not well-formed XML: {0}")]
    Xml(String),
    #[error("root element is not isComposing in {NS}")]
    Root,
    #[error("no <state>")]
    NoState,
    #[error("invalid <state> {0:?}")]
    State(String),
    #[error("invalid <refresh> {0:?}")]
    Refresh(String),
}

impl IsComposing {
    pub fn new(state: State) -> IsComposing {
        IsComposing {
            state,
            lastactive: None,
            contenttype: None,
            refresh: None,
        }
    }

    pub fn parse(xml: &str) -> Result<IsComposing, IsComposingError> {
        let root: Element = xml
            .parse()
            .map_err(|e: xmpp_parsers::minidom::Error| IsComposingError::Xml(e.to_string()))?;
        if !root.is("isComposing", NS) {
            return Err(IsComposingError::Root);
        }
        let text = |name: &str| {
            root.get_child(name, NS)
                .map(|c| c.text().trim().to_string())
        };
        let state = match text("state").ok_or(IsComposingError::NoState)?.as_str() {
            "active" => State::Active,
            "idle" => State::Idle,
            other => return Err(IsComposingError::State(other.to_string())),
        };
        let refresh = match text("refresh") {
            None => None,
            Some(r) => match r.parse::<u32>() {
                Ok(n) if n > 0 => Some(n),
                _ => return Err(IsComposingError::Refresh(r)),
            },
        };
        Ok(IsComposing {
            state,
            lastactive: text("lastactive"),
            contenttype: text("contenttype"),
            refresh,
        })
    }

    pub fn to_xml(&self) -> String {
        let child =
            |name: &str, value: &str| Element::builder(name, NS).append(value.to_string()).build();
        let mut root = Element::builder("isComposing", NS).append(child(
            "state",
            match self.state {
                State::Active => "active",
                State::Idle => "idle",
            },
        ));
        if let Some(l) = &self.lastactive {
            root = root.append(child("lastactive", l));
        }
        if let Some(c) = &self.contenttype {
            root = root.append(child("contenttype", c));
        }
        if let Some(r) = self.refresh {
            root = root.append(child("refresh", &r.to_string()));
        }
        let root = root.build();
        format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n{}",
            String::from(&root)
        )
    }
}

/// Table 3: isComposing `active` is `composing`, `idle` is `active`.
pub fn sip_to_xmpp(state: State) -> ChatState {
    match state {
        State::Active => ChatState::Composing,
        State::Idle => ChatState::Active,
    }
}

/// Table 4: `gone` has no isComposing counterpart (it ends the session instead).
pub fn xmpp_to_sip(state: &ChatState) -> Option<State> {
    match state {
        ChatState::Composing => Some(State::Active),
        ChatState::Active | ChatState::Inactive | ChatState::Paused => Some(State::Idle),
        ChatState::Gone => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 3994 section 7 (both examples).
    const ACTIVE: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<isComposing xmlns="urn:ietf:params:xml:ns:im-iscomposing"
  xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"
  xsi:schemaLocation="urn:ietf:params:xml:ns:im-composing iscomposing.xsd">
  <state>active</state>
  <contenttype>text/plain</contenttype>
  <refresh>90</refresh>
</isComposing>"#;

    const IDLE: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<isComposing xmlns="urn:ietf:params:xml:ns:im-iscomposing"
  xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"
  xsi:schemaLocation="urn:ietf:params:xml:ns:im-composing iscomposing.xsd">
  <state>idle</state>
  <lastactive>2003-01-27T10:43:00Z</lastactive>
  <contenttype>audio</contenttype>
</isComposing>"#;

    #[test]
    fn the_rfc3994_examples_parse() {
        let a = IsComposing::parse(ACTIVE).unwrap();
        assert_eq!(
            a,
            IsComposing {
                state: State::Active,
                lastactive: None,
                contenttype: Some("text/plain".into()),
                refresh: Some(90)
            }
        );
        let i = IsComposing::parse(IDLE).unwrap();
        assert_eq!(i.state, State::Idle);
        assert_eq!(i.lastactive.as_deref(), Some("2003-01-27T10:43:00Z"));
        assert_eq!(i.contenttype.as_deref(), Some("audio"));
    }

    #[test]
    fn built_documents_parse_back() {
        let mut c = IsComposing::new(State::Active);
        c.refresh = Some(60);
        c.contenttype = Some("text/plain".into());
        let xml = c.to_xml();
        assert_eq!(
            xml,
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<isComposing xmlns='urn:ietf:params:xml:ns:im-iscomposing'>\
             <state>active</state><contenttype>text/plain</contenttype><refresh>60</refresh></isComposing>"
        );
        assert_eq!(IsComposing::parse(&xml).unwrap(), c);
        let idle = IsComposing::new(State::Idle);
        assert_eq!(IsComposing::parse(&idle.to_xml()).unwrap(), idle);
    }

    #[test]
    fn invalid_documents_say_why() {
        let doc = |inner: &str| format!("<isComposing xmlns='{NS}'>{inner}</isComposing>");
        assert!(matches!(
            IsComposing::parse("<isComposing"),
            Err(IsComposingError::Xml(_))
        ));
        assert_eq!(
            IsComposing::parse("<x xmlns='urn:other'/>"),
            Err(IsComposingError::Root)
        );
        assert_eq!(IsComposing::parse(&doc("")), Err(IsComposingError::NoState));
        assert_eq!(
            IsComposing::parse(&doc("<state>typing</state>")),
            Err(IsComposingError::State("typing".into()))
        );
        assert_eq!(
            IsComposing::parse(&doc("<state>active</state><refresh>0</refresh>")),
            Err(IsComposingError::Refresh("0".into()))
        );
        // Unknown elements are extensions and are ignored.
        assert!(IsComposing::parse(&doc("<state>idle</state><x xmlns='urn:ext'/>")).is_ok());
    }

    #[test]
    fn chat_states_map_by_tables_3_and_4() {
        assert_eq!(sip_to_xmpp(State::Active), ChatState::Composing);
        assert_eq!(sip_to_xmpp(State::Idle), ChatState::Active);
        assert_eq!(xmpp_to_sip(&ChatState::Active), Some(State::Idle));
        assert_eq!(xmpp_to_sip(&ChatState::Inactive), Some(State::Idle));
        assert_eq!(xmpp_to_sip(&ChatState::Gone), None);
        assert_eq!(xmpp_to_sip(&ChatState::Composing), Some(State::Active));
        assert_eq!(xmpp_to_sip(&ChatState::Paused), Some(State::Idle));
    }
}
