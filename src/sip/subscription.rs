//! SIP-specific event notification (RFC 6665) as stox uses it for presence (RFC 3856):
//! the Event and Subscription-State headers, what a subscriber does when a subscription
//! ends, and when it refreshes. Pure functions and values; the presence module keeps the
//! subscriptions themselves.

use std::time::Duration;

/// Subscription-State (RFC 6665 8.2.3 / 4.1.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionState {
    pub state: SubState,
    pub expires: Option<u32>,
    pub reason: Option<Reason>,
    pub retry_after: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubState {
    Active,
    Pending,
    Terminated,
}

/// The event-reason-values of RFC 6665 8.2.3 (others are kept as `Other`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    Deactivated,
    Probation,
    Rejected,
    Timeout,
    Giveup,
    Noresource,
    Invariant,
    Other(String),
}

impl Reason {
    fn parse(s: &str) -> Reason {
        match s.to_ascii_lowercase().as_str() {
            "deactivated" => Reason::Deactivated,
            "probation" => Reason::Probation,
            "rejected" => Reason::Rejected,
            "timeout" => Reason::Timeout,
            "giveup" => Reason::Giveup,
            "noresource" => Reason::Noresource,
            "invariant" => Reason::Invariant,
            other => Reason::Other(other.to_string()),
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            Reason::Deactivated => "deactivated",
            Reason::Probation => "probation",
            Reason::Rejected => "rejected",
            Reason::Timeout => "timeout",
            Reason::Giveup => "giveup",
            Reason::Noresource => "noresource",
            Reason::Invariant => "invariant",
            Reason::Other(s) => s,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed Subscription-State: {0:?}")]
pub struct BadSubscriptionState(pub String);

impl SubscriptionState {
    pub fn parse(value: &str) -> Result<SubscriptionState, BadSubscriptionState> {
        let bad = || BadSubscriptionState(value.to_string());
        let mut parts = value.split(';');
        let state = match parts
            .next()
            .map(|s| s.trim().to_ascii_lowercase())
            .as_deref()
        {
            Some("active") => SubState::Active,
            Some("pending") => SubState::Pending,
            Some("terminated") => SubState::Terminated,
            // 4.1.3: an unknown state is treated as... there is none; refuse it.
            _ => return Err(bad()),
        };
        let mut s = SubscriptionState {
            state,
            expires: None,
            reason: None,
            retry_after: None,
        };
        for p in parts {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            let v = v.trim().trim_matches('"');
            match k.trim().to_ascii_lowercase().as_str() {
                "expires" => s.expires = Some(v.parse().map_err(|_| bad())?),
                "reason" => s.reason = Some(Reason::parse(v)),
                "retry-after" => s.retry_after = Some(v.parse().map_err(|_| bad())?),
                _ => {}
            }
        }
        Ok(s)
    }

    pub fn active(expires: u32) -> Self {
        SubscriptionState {
            state: SubState::Active,
            expires: Some(expires),
            reason: None,
            retry_after: None,
        }
    }

    pub fn pending(expires: u32) -> Self {
        SubscriptionState {
            state: SubState::Pending,
            ..Self::active(expires)
        }
    }

    pub fn terminated(reason: Reason) -> Self {
        SubscriptionState {
            state: SubState::Terminated,
            expires: None,
            reason: Some(reason),
            retry_after: None,
        }
    }

    pub fn header_value(&self) -> String {
        let mut out = match self.state {
            SubState::Active => "active".to_string(),
            SubState::Pending => "pending".to_string(),
            SubState::Terminated => "terminated".to_string(),
        };
        if let Some(r) = &self.reason {
            out.push_str(";reason=");
            out.push_str(r.as_str());
        }
        if let Some(e) = self.expires {
            out.push_str(&format!(";expires={e}"));
        }
        if let Some(r) = self.retry_after {
            out.push_str(&format!(";retry-after={r}"));
        }
        out
    }
}

/// What a subscriber does once a subscription is terminated (RFC 6665 4.1.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterTermination {
    /// Subscribe again at once (deactivated, timeout, or no reason given).
    Resubscribe,
    /// Subscribe again, but not before this (probation, giveup).
    ResubscribeAfter(Duration),
    /// Do not (rejected, noresource, invariant): the subscription is over.
    GiveUp,
}

/// RFC 6665 4.1.3; `default_wait` when probation/giveup come without retry-after.
pub fn after_termination(state: &SubscriptionState, default_wait: Duration) -> AfterTermination {
    let wait = state
        .retry_after
        .map(|s| Duration::from_secs(s.into()))
        .unwrap_or(default_wait);
    match &state.reason {
        None | Some(Reason::Deactivated) | Some(Reason::Timeout) => AfterTermination::Resubscribe,
        Some(Reason::Probation) | Some(Reason::Giveup) => AfterTermination::ResubscribeAfter(wait),
        Some(Reason::Rejected) | Some(Reason::Noresource) | Some(Reason::Invariant) => {
            AfterTermination::GiveUp
        }
        // 4.1.3: unknown reasons are treated as if there were none... but only with
        // retry-after does retrying make sense without hammering the peer.
        Some(Reason::Other(_)) => match state.retry_after {
            Some(_) => AfterTermination::ResubscribeAfter(wait),
            None => AfterTermination::GiveUp,
        },
    }
}

/// When a subscriber refreshes a subscription granted for `expires`: at 90% of the
/// interval, but at least 5 s (or half, for very short ones) before it runs out.
pub fn refresh_after(expires: Duration) -> Duration {
    let margin = (expires / 10).max(Duration::from_secs(5)).min(expires / 2);
    expires - margin
}

/// Whether an Event header names the presence package (RFC 3856; `id` params allowed).
pub fn is_presence_event(value: &str) -> bool {
    value
        .split(';')
        .next()
        .map(|e| e.trim().eq_ignore_ascii_case("presence"))
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscription_state_parses_and_writes() {
        let s = SubscriptionState::parse("terminated;reason=probation;retry-after=30").unwrap();
        assert_eq!(s.state, SubState::Terminated);
        assert_eq!(s.reason, Some(Reason::Probation));
        assert_eq!(s.retry_after, Some(30));
        assert_eq!(
            s.header_value(),
            "terminated;reason=probation;retry-after=30"
        );
        let a = SubscriptionState::parse("Active ; expires=3600").unwrap();
        assert_eq!(a, SubscriptionState::active(3600));
        assert!(SubscriptionState::parse("bogus").is_err());
        assert!(SubscriptionState::parse("active;expires=soon").is_err());
    }

    #[test]
    fn termination_reasons_decide_whether_to_resubscribe() {
        let d = Duration::from_secs(60);
        let t = |v| after_termination(&SubscriptionState::parse(v).unwrap(), d);
        assert_eq!(t("terminated"), AfterTermination::Resubscribe);
        assert_eq!(
            t("terminated;reason=timeout"),
            AfterTermination::Resubscribe
        );
        assert_eq!(
            t("terminated;reason=deactivated"),
            AfterTermination::Resubscribe
        );
        assert_eq!(
            t("terminated;reason=probation;retry-after=5"),
            AfterTermination::ResubscribeAfter(Duration::from_secs(5))
        );
        assert_eq!(
            t("terminated;reason=giveup"),
            AfterTermination::ResubscribeAfter(d)
        );
        assert_eq!(t("terminated;reason=rejected"), AfterTermination::GiveUp);
        assert_eq!(t("terminated;reason=noresource"), AfterTermination::GiveUp);
    }

    #[test]
    fn refreshes_come_before_expiry() {
        assert_eq!(
            refresh_after(Duration::from_secs(3600)),
            Duration::from_secs(3240)
        );
        assert_eq!(
            refresh_after(Duration::from_secs(30)),
            Duration::from_secs(25)
        );
        assert_eq!(
            refresh_after(Duration::from_secs(6)),
            Duration::from_secs(3)
        );
        assert!(is_presence_event("presence;id=1"));
        assert!(!is_presence_event("dialog"));
    }
}
