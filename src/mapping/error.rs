//! Error mapping, RFC 7247 section 8: SIP response codes <-> XMPP stanza error conditions.
//!
//! Both directions are exhaustive matches so that every code and condition has one
//! deliberate answer; unknown SIP codes fall back to their class (RFC 3261 8.1.3.2: an
//! unknown code is treated as x00).

use xmpp_parsers::stanza_error::{DefinedCondition, ErrorType, StanzaError};

/// RFC 7247 section 8.2 (Table 4): a SIP failure response -> the XMPP condition.
// The class ranges after the listed codes are the deliberate x00 fallback.
#[allow(clippy::match_overlapping_arm)]
pub fn sip_to_xmpp(status: u16) -> DefinedCondition {
    use DefinedCondition::*;
    match status {
        300..=399 => Redirect { new_address: None },
        400 => BadRequest,
        401 => NotAuthorized,
        402 => BadRequest,
        403 => Forbidden,
        404 => ItemNotFound,
        405 => FeatureNotImplemented,
        406 => NotAcceptable,
        407 => NotAuthorized,
        408 => RemoteServerTimeout,
        410 => Gone { new_address: None },
        413 => PolicyViolation,
        414 => JidMalformed,
        415 => NotAcceptable,
        416 => JidMalformed,
        420 => FeatureNotImplemented,
        421 => NotAcceptable,
        423 => ResourceConstraint,
        430 => RecipientUnavailable,
        433 => PolicyViolation,
        480 => RecipientUnavailable,
        481 => ItemNotFound,
        482 => NotAcceptable,
        483 => NotAcceptable,
        484 => ItemNotFound,
        485 => ItemNotFound,
        486 => RecipientUnavailable,
        487 => ServiceUnavailable,
        488 => NotAcceptable,
        489 => PolicyViolation,
        491 => UnexpectedRequest,
        493 => ServiceUnavailable,
        400..=499 => BadRequest,
        500 => InternalServerError,
        501 => FeatureNotImplemented,
        502 => RemoteServerNotFound,
        503 => ServiceUnavailable,
        504 => RemoteServerTimeout,
        505 => NotAcceptable,
        513 => PolicyViolation,
        500..=599 => InternalServerError,
        600 => ServiceUnavailable,
        603 => ServiceUnavailable,
        604 => ItemNotFound,
        606 => NotAcceptable,
        600..=699 => ServiceUnavailable,
        _ => UndefinedCondition,
    }
}

/// RFC 7247 section 8.1 (Table 3): an XMPP stanza error condition -> the SIP response code.
pub fn xmpp_to_sip(condition: &DefinedCondition) -> u16 {
    use DefinedCondition::*;
    match condition {
        BadRequest => 400,
        Conflict => 400,
        FeatureNotImplemented => 405,
        Forbidden => 403,
        Gone {
            new_address: Some(_),
        } => 301,
        Gone { new_address: None } => 410,
        InternalServerError => 500,
        ItemNotFound => 404,
        JidMalformed => 400,
        NotAcceptable => 406,
        NotAllowed => 405,
        NotAuthorized => 401,
        PolicyViolation => 403,
        RecipientUnavailable => 480,
        Redirect { .. } => 302,
        RegistrationRequired => 400,
        RemoteServerNotFound => 404,
        RemoteServerTimeout => 408,
        ResourceConstraint => 500,
        ServiceUnavailable => 503,
        SubscriptionRequired => 400,
        UndefinedCondition => 400,
        UnexpectedRequest => 491,
    }
}

/// The element name of a condition (RFC 6120 section 8.3.3), for logs and reason phrases.
pub fn condition_name(condition: &DefinedCondition) -> &'static str {
    use DefinedCondition::*;
    match condition {
        BadRequest => "bad-request",
        Conflict => "conflict",
        FeatureNotImplemented => "feature-not-implemented",
        Forbidden => "forbidden",
        Gone { .. } => "gone",
        InternalServerError => "internal-server-error",
        ItemNotFound => "item-not-found",
        JidMalformed => "jid-malformed",
        NotAcceptable => "not-acceptable",
        NotAllowed => "not-allowed",
        NotAuthorized => "not-authorized",
        PolicyViolation => "policy-violation",
        RecipientUnavailable => "recipient-unavailable",
        Redirect { .. } => "redirect",
        RegistrationRequired => "registration-required",
        RemoteServerNotFound => "remote-server-not-found",
        RemoteServerTimeout => "remote-server-timeout",
        ResourceConstraint => "resource-constraint",
        ServiceUnavailable => "service-unavailable",
        SubscriptionRequired => "subscription-required",
        UndefinedCondition => "undefined-condition",
        UnexpectedRequest => "unexpected-request",
    }
}

/// The SIP answer to a stanza the XMPP server refused (RFC 7247 section 8.1): the code of
/// Table 3 and a reason phrase naming the condition.
pub fn sip_answer_for_xmpp(error: &StanzaError) -> (u16, String) {
    let c = &error.defined_condition;
    (
        xmpp_to_sip(c),
        format!("Refused by the XMPP server: {}", condition_name(c)),
    )
}

/// The error type RFC 6120 section 8.3.3 gives each condition.
pub fn error_type(condition: &DefinedCondition) -> ErrorType {
    use DefinedCondition::*;
    match condition {
        BadRequest | JidMalformed | NotAcceptable | PolicyViolation | Redirect { .. } => {
            ErrorType::Modify
        }
        Forbidden | NotAuthorized | RegistrationRequired | SubscriptionRequired => ErrorType::Auth,
        RecipientUnavailable | RemoteServerTimeout | ResourceConstraint | UnexpectedRequest => {
            ErrorType::Wait
        }
        Conflict
        | FeatureNotImplemented
        | Gone { .. }
        | InternalServerError
        | ItemNotFound
        | NotAllowed
        | RemoteServerNotFound
        | ServiceUnavailable
        | UndefinedCondition => ErrorType::Cancel,
    }
}

/// A stanza error for a condition, with a human-readable text.
pub fn stanza_error(condition: DefinedCondition, text: impl Into<String>) -> StanzaError {
    let text = text.into();
    let mut e = StanzaError::new(error_type(&condition), condition, "en", text.clone());
    if text.is_empty() {
        e.texts.clear();
    }
    e
}

/// A stanza error for a SIP failure response, naming the SIP status in its text.
pub fn stanza_error_for_sip(status: u16, reason: &str) -> StanzaError {
    stanza_error(
        sip_to_xmpp(status),
        format!("SIP {status} {reason}").trim().to_string(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use DefinedCondition::*;

    #[test]
    fn table_4_sip_to_xmpp() {
        for (code, cond) in [
            (302, Redirect { new_address: None }),
            (400, BadRequest),
            (401, NotAuthorized),
            (402, BadRequest),
            (403, Forbidden),
            (404, ItemNotFound),
            (405, FeatureNotImplemented),
            (406, NotAcceptable),
            (407, NotAuthorized),
            (408, RemoteServerTimeout),
            (410, Gone { new_address: None }),
            (413, PolicyViolation),
            (414, JidMalformed),
            (415, NotAcceptable),
            (416, JidMalformed),
            (420, FeatureNotImplemented),
            (421, NotAcceptable),
            (423, ResourceConstraint),
            (430, RecipientUnavailable),
            (433, PolicyViolation),
            (480, RecipientUnavailable),
            (481, ItemNotFound),
            (482, NotAcceptable),
            (483, NotAcceptable),
            (484, ItemNotFound),
            (485, ItemNotFound),
            (486, RecipientUnavailable),
            (487, ServiceUnavailable),
            (488, NotAcceptable),
            (489, PolicyViolation),
            (491, UnexpectedRequest),
            (493, ServiceUnavailable),
            (500, InternalServerError),
            (501, FeatureNotImplemented),
            (502, RemoteServerNotFound),
            (503, ServiceUnavailable),
            (504, RemoteServerTimeout),
            (505, NotAcceptable),
            (513, PolicyViolation),
            (600, ServiceUnavailable),
            (603, ServiceUnavailable),
            (604, ItemNotFound),
            (606, NotAcceptable),
        ] {
            assert_eq!(sip_to_xmpp(code), cond, "SIP {code}");
        }
    }

    #[test]
    fn unknown_codes_fall_back_to_their_class() {
        assert_eq!(sip_to_xmpp(499), BadRequest);
        assert_eq!(sip_to_xmpp(599), InternalServerError);
        assert_eq!(sip_to_xmpp(699), ServiceUnavailable);
        assert_eq!(sip_to_xmpp(399), Redirect { new_address: None });
        assert_eq!(sip_to_xmpp(99), UndefinedCondition);
    }

    #[test]
    fn table_3_xmpp_to_sip() {
        for (cond, code) in [
            (BadRequest, 400),
            (Conflict, 400),
            (FeatureNotImplemented, 405),
            (Forbidden, 403),
            (Gone { new_address: None }, 410),
            (
                Gone {
                    new_address: Some("xmpp:juliet@example.org".into()),
                },
                301,
            ),
            (InternalServerError, 500),
            (ItemNotFound, 404),
            (JidMalformed, 400),
            (NotAcceptable, 406),
            (NotAllowed, 405),
            (NotAuthorized, 401),
            (PolicyViolation, 403),
            (RecipientUnavailable, 480),
            (Redirect { new_address: None }, 302),
            (RegistrationRequired, 400),
            (RemoteServerNotFound, 404),
            (RemoteServerTimeout, 408),
            (ResourceConstraint, 500),
            (ServiceUnavailable, 503),
            (SubscriptionRequired, 400),
            (UndefinedCondition, 400),
            (UnexpectedRequest, 491),
        ] {
            assert_eq!(xmpp_to_sip(&cond), code, "{cond:?}");
        }
    }

    #[test]
    fn a_sip_failure_becomes_a_stanza_error_that_names_it() {
        let e = stanza_error_for_sip(404, "Not Found");
        assert_eq!(e.defined_condition, ItemNotFound);
        assert_eq!(e.type_, ErrorType::Cancel);
        assert_eq!(
            e.texts.get("en").map(String::as_str),
            Some("SIP 404 Not Found")
        );
        assert_eq!(
            stanza_error_for_sip(408, "Request Timeout").type_,
            ErrorType::Wait
        );
    }
}
