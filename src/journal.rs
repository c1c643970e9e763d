//! The XMPP -> SIP journal (issue 12 item 2): a message stanza taken from the component
//! stream is the gateway's responsibility until its SIP outcome is known.
//!
//! ```text
//!   stanza read -> admit (bound: journal.max_entries, else resource-constraint)
//!               -> row committed (store thread) -> MESSAGE sent (Call-ID, CSeq, From tag
//!                  as journalled)
//!   outcome:     2xx -> row deleted | error -> error stanza bounced, row deleted
//!   restart:     each row younger than journal.max_age_s -> MESSAGE again, same Call-ID,
//!                CSeq and From tag; older -> bounced (remote-server-timeout)
//! ```
//!
//! Pure: the decisions and the row format live here; the store thread and the SIP stack
//! are driven by `im`.

use crate::store::JournalRow;

/// `[journal]` settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JournalConfig {
    /// Messages journalled at once; beyond, a new one is bounced with resource-constraint.
    pub max_entries: usize,
    /// After a restart, rows older than this are bounced instead of re-sent (seconds).
    pub max_age_s: u64,
}

impl Default for JournalConfig {
    fn default() -> Self {
        JournalConfig {
            max_entries: 100_000,
            max_age_s: 300,
        }
    }
}

/// The row id: what a SIP receiver compares to tell a repeat (RFC 3261 8.2.2.2 uses
/// Call-ID, CSeq and the From tag).
pub fn row_id(call_id: &str, cseq: u32) -> String {
    format!("{cseq} {call_id}")
}

/// What the SIP request of a journalled message carries, so a re-send is the same request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub call_id: String,
    pub cseq: u32,
    pub from_tag: String,
    /// The `<message/>` as XML.
    pub stanza: String,
    pub created_ms: u64,
}

impl Entry {
    pub fn to_row(&self) -> JournalRow {
        JournalRow {
            id: row_id(&self.call_id, self.cseq),
            call_id: self.call_id.clone(),
            cseq: self.cseq,
            from_tag: self.from_tag.clone(),
            stanza: self.stanza.clone(),
            created_ms: self.created_ms,
        }
    }

    pub fn from_row(row: JournalRow) -> Entry {
        Entry {
            call_id: row.call_id,
            cseq: row.cseq,
            from_tag: row.from_tag,
            stanza: row.stanza,
            created_ms: row.created_ms,
        }
    }

    pub fn id(&self) -> String {
        row_id(&self.call_id, self.cseq)
    }
}

/// What a restart does with one journalled message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recovery {
    /// Send it again with its Call-ID, CSeq and From tag.
    Resend(Entry),
    /// Too old to be worth sending: bounce it to its sender.
    Bounce(Entry),
}

/// Sorts the rows found at startup into re-sends and bounces, oldest first. A row from
/// the future (the clock stepped back) counts as new.
pub fn recover(rows: Vec<JournalRow>, now_ms: u64, config: &JournalConfig) -> Vec<Recovery> {
    let max_age_ms = config.max_age_s.saturating_mul(1000);
    rows.into_iter()
        .map(Entry::from_row)
        .map(|e| {
            if now_ms.saturating_sub(e.created_ms) > max_age_ms {
                Recovery::Bounce(e)
            } else {
                Recovery::Resend(e)
            }
        })
        .collect()
}

/// How a SIP final response settles a journalled message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    Delivered,
    Refused,
}

/// A 2xx delivers. A 482 (Loop Detected) to a re-send is RFC 3261 8.2.2.2's merged-request
/// answer: the receiver already holds a request with this From tag, Call-ID and CSeq, the
/// original, so the message arrived.
pub fn settle(status: u16, resent: bool) -> Settled {
    match status {
        200..=299 => Settled::Delivered,
        482 if resent => Settled::Delivered,
        _ => Settled::Refused,
    }
}

/// The count of journalled messages against `journal.max_entries`.
#[derive(Debug)]
pub struct Depth {
    max: usize,
    held: usize,
}

/// The journal is full: the stanza is bounced with resource-constraint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the journal holds journal.max_entries ({0}) messages")]
pub struct Full(pub usize);

impl Depth {
    pub fn new(max: usize, held: usize) -> Depth {
        Depth { max, held }
    }

    /// Takes one slot, or refuses when all are taken.
    pub fn admit(&mut self) -> Result<(), Full> {
        if self.held >= self.max {
            return Err(Full(self.max));
        }
        self.held += 1;
        Ok(())
    }

    /// A journalled message was settled (delivered or bounced).
    pub fn release(&mut self) {
        self.held = self.held.saturating_sub(1);
    }

    pub fn held(&self) -> usize {
        self.held
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(call_id: &str, at: u64) -> JournalRow {
        Entry {
            call_id: call_id.into(),
            cseq: 3,
            from_tag: "ft".into(),
            stanza: "<message/>".into(),
            created_ms: at,
        }
        .to_row()
    }

    #[test]
    fn a_row_round_trips_and_is_keyed_by_cseq_and_call_id() {
        let r = row("abc@sip.example.com", 5);
        assert_eq!(r.id, "3 abc@sip.example.com");
        let e = Entry::from_row(r.clone());
        assert_eq!(e.to_row(), r);
        assert_eq!(e.id(), r.id);
    }

    #[test]
    fn a_restart_resends_young_rows_and_bounces_old_ones() {
        let config = JournalConfig {
            max_entries: 10,
            max_age_s: 300,
        };
        let now = 1_000_000_000;
        let got = recover(
            vec![
                row("old", now - 300_001),
                row("edge", now - 300_000),
                row("young", now - 1),
                row("future", now + 60_000),
            ],
            now,
            &config,
        );
        let kinds: Vec<(&str, bool)> = got
            .iter()
            .map(|r| match r {
                Recovery::Resend(e) => (e.call_id.as_str(), true),
                Recovery::Bounce(e) => (e.call_id.as_str(), false),
            })
            .collect();
        assert_eq!(
            kinds,
            vec![
                ("old", false),
                ("edge", true),
                ("young", true),
                ("future", true)
            ]
        );
    }

    #[test]
    fn only_a_2xx_delivers_except_a_482_to_a_resend() {
        assert_eq!(settle(200, false), Settled::Delivered);
        assert_eq!(settle(202, true), Settled::Delivered);
        assert_eq!(settle(482, true), Settled::Delivered);
        assert_eq!(settle(482, false), Settled::Refused);
        assert_eq!(settle(404, true), Settled::Refused);
        assert_eq!(settle(408, false), Settled::Refused);
        assert_eq!(settle(302, false), Settled::Refused);
    }

    #[test]
    fn the_depth_is_bounded_and_released() {
        let mut d = Depth::new(2, 1);
        assert_eq!(d.admit(), Ok(()));
        assert_eq!(d.admit(), Err(Full(2)));
        d.release();
        assert_eq!(d.held(), 1);
        assert_eq!(d.admit(), Ok(()));
        d.release();
        d.release();
        d.release();
        assert_eq!(d.held(), 0, "never below zero");
    }
}
