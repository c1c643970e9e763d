//! RFC 3261 section 17 transaction state machines, sans-IO.
//!
//! Each machine is a plain struct: inputs are `on_*` calls with `now`, outputs are the
//! return values (what to send, what to tell the transaction user) and `deadline()`, the
//! next instant at which `on_timer` must be called. No sockets, no clock.
//!
//! ```text
//!   ClientNonInvite  17.1.2  Trying -> Proceeding -> Completed -> Terminated   (E, F, K)
//!   ClientInvite     17.1.1  Calling -> Proceeding -> Completed -> Terminated   (A, B, D)
//!                    RFC 6026          \-> Accepted -> Terminated             (M)
//!   ServerNonInvite  17.2.2  Trying -> Proceeding -> Completed -> Terminated   (J)
//!   ServerInvite     17.2.1  Proceeding -> Completed -> Confirmed -> Terminated (G, H, I)
//!                    RFC 6026          \-> Accepted -> Terminated             (L)
//! ```
//!
//! In Accepted, the server INVITE machine also retransmits the 2xx until the ACK comes
//! (RFC 3261 13.3.1.4 gives that to the UAS core; keeping it here keeps one schedule).

use std::time::{Duration, Instant};

use bytes::Bytes;

/// T1, T2, T4 (RFC 3261 17.1.1.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timers {
    pub t1: Duration,
    pub t2: Duration,
    pub t4: Duration,
}

impl Default for Timers {
    fn default() -> Self {
        Timers {
            t1: Duration::from_millis(500),
            t2: Duration::from_secs(4),
            t4: Duration::from_secs(5),
        }
    }
}

impl From<crate::config::Timers> for Timers {
    fn from(t: crate::config::Timers) -> Self {
        Timers {
            t1: Duration::from_millis(t.t1_ms),
            t2: Duration::from_millis(t.t2_ms),
            t4: Duration::from_millis(t.t4_ms),
        }
    }
}

impl Timers {
    /// 64*T1: the transaction timeout (timers B, F, H, J).
    pub fn timeout(&self) -> Duration {
        self.t1 * 64
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientState {
    Trying,
    Proceeding,
    Completed,
    Terminated,
}

/// What a client transaction asks for when a timer fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientTimer {
    /// Nothing to do (early wakeup or a timer that only changed state).
    Idle,
    /// Send the request again (timer E).
    Retransmit,
    /// Timer F fired: tell the TU the request timed out (it becomes a 408).
    Timeout,
}

/// Non-INVITE client transaction (RFC 3261 17.1.2).
#[derive(Debug, Clone)]
pub struct ClientNonInvite {
    state: ClientState,
    reliable: bool,
    timers: Timers,
    interval: Duration,
    retransmit_at: Option<Instant>,
    timeout_at: Instant,
    terminate_at: Option<Instant>,
}

impl ClientNonInvite {
    /// The request has just been sent for the first time.
    pub fn new(now: Instant, reliable: bool, timers: Timers) -> Self {
        ClientNonInvite {
            state: ClientState::Trying,
            reliable,
            timers,
            interval: timers.t1,
            retransmit_at: (!reliable).then(|| now + timers.t1),
            timeout_at: now + timers.timeout(),
            terminate_at: None,
        }
    }

    pub fn state(&self) -> ClientState {
        self.state
    }

    /// A response matched this transaction. Returns true when the TU must see it;
    /// retransmitted final responses in Completed are absorbed.
    pub fn on_response(&mut self, now: Instant, status: u16) -> bool {
        match self.state {
            ClientState::Trying | ClientState::Proceeding => {
                if status < 200 {
                    self.state = ClientState::Proceeding;
                    if !self.reliable {
                        // In Proceeding, E fires every T2.
                        self.interval = self.timers.t2;
                    }
                } else {
                    self.state = ClientState::Completed;
                    self.retransmit_at = None;
                    let k = if self.reliable {
                        Duration::ZERO
                    } else {
                        self.timers.t4
                    };
                    self.terminate_at = Some(now + k);
                }
                true
            }
            ClientState::Completed | ClientState::Terminated => false,
        }
    }

    /// A transport error: the TU hears it as a 503 (RFC 3261 8.1.3.1); the transaction ends.
    pub fn on_transport_error(&mut self) {
        self.state = ClientState::Terminated;
    }

    pub fn on_timer(&mut self, now: Instant) -> ClientTimer {
        match self.state {
            ClientState::Trying | ClientState::Proceeding => {
                if now >= self.timeout_at {
                    self.state = ClientState::Terminated;
                    return ClientTimer::Timeout;
                }
                match self.retransmit_at {
                    Some(at) if now >= at => {
                        if self.state == ClientState::Trying {
                            self.interval = (self.interval * 2).min(self.timers.t2);
                        }
                        self.retransmit_at = Some(now + self.interval);
                        ClientTimer::Retransmit
                    }
                    _ => ClientTimer::Idle,
                }
            }
            ClientState::Completed => {
                if self.terminate_at.is_some_and(|at| now >= at) {
                    self.state = ClientState::Terminated;
                }
                ClientTimer::Idle
            }
            ClientState::Terminated => ClientTimer::Idle,
        }
    }

    pub fn deadline(&self) -> Option<Instant> {
        match self.state {
            ClientState::Trying | ClientState::Proceeding => Some(match self.retransmit_at {
                Some(r) => r.min(self.timeout_at),
                None => self.timeout_at,
            }),
            ClientState::Completed => self.terminate_at,
            ClientState::Terminated => None,
        }
    }

    pub fn is_terminated(&self) -> bool {
        self.state == ClientState::Terminated
    }
}

/// What the TU and the wire get for a response to an INVITE client transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InviteResponse {
    /// Pass it to the TU.
    Pass,
    /// The first non-2xx final: pass it and send the ACK (17.1.1.3).
    PassAndAck,
    /// A retransmitted non-2xx final: send the ACK again, tell the TU nothing.
    Ack,
    /// Nothing to do.
    Absorb,
}

/// INVITE client transaction (RFC 3261 17.1.1, with RFC 6026's Accepted state: every 2xx,
/// retransmitted or from another fork, reaches the TU, which ACKs it).
#[derive(Debug, Clone)]
pub struct ClientInvite {
    state: ClientState,
    accepted: bool,
    reliable: bool,
    timers: Timers,
    interval: Duration,
    retransmit_at: Option<Instant>,
    timeout_at: Option<Instant>,
    terminate_at: Option<Instant>,
}

impl ClientInvite {
    /// The INVITE has just been sent for the first time.
    pub fn new(now: Instant, reliable: bool, timers: Timers) -> Self {
        ClientInvite {
            state: ClientState::Trying,
            accepted: false,
            reliable,
            timers,
            interval: timers.t1,
            retransmit_at: (!reliable).then(|| now + timers.t1),
            timeout_at: Some(now + timers.timeout()),
            terminate_at: None,
        }
    }

    pub fn state(&self) -> ClientState {
        self.state
    }

    /// A provisional response was seen: CANCEL may now be sent (RFC 3261 9.1).
    pub fn is_proceeding(&self) -> bool {
        self.state == ClientState::Proceeding
    }

    pub fn is_accepted(&self) -> bool {
        self.accepted
    }

    pub fn on_response(&mut self, now: Instant, status: u16) -> InviteResponse {
        match (self.state, status) {
            (ClientState::Trying | ClientState::Proceeding, 100..=199) => {
                self.state = ClientState::Proceeding;
                // Timer A stops in Proceeding; B keeps running until a final response.
                self.retransmit_at = None;
                InviteResponse::Pass
            }
            (ClientState::Trying | ClientState::Proceeding, 200..=299) => {
                // Accepted (timer M): absorb nothing, pass every 2xx.
                self.state = ClientState::Completed;
                self.accepted = true;
                self.retransmit_at = None;
                self.timeout_at = None;
                self.terminate_at = Some(now + self.timers.timeout());
                InviteResponse::Pass
            }
            (ClientState::Trying | ClientState::Proceeding, _) => {
                self.state = ClientState::Completed;
                self.retransmit_at = None;
                self.timeout_at = None;
                // Timer D: at least 32 s over UDP to absorb final-response retransmissions.
                let d = if self.reliable {
                    Duration::ZERO
                } else {
                    Duration::from_secs(32).max(self.timers.timeout())
                };
                self.terminate_at = Some(now + d);
                InviteResponse::PassAndAck
            }
            (ClientState::Completed, 200..=299) if self.accepted => InviteResponse::Pass,
            (ClientState::Completed, 300..) if !self.accepted => InviteResponse::Ack,
            _ => InviteResponse::Absorb,
        }
    }

    pub fn on_transport_error(&mut self) {
        self.state = ClientState::Terminated;
    }

    pub fn on_timer(&mut self, now: Instant) -> ClientTimer {
        match self.state {
            ClientState::Trying | ClientState::Proceeding => {
                if self.timeout_at.is_some_and(|t| now >= t) {
                    self.state = ClientState::Terminated;
                    return ClientTimer::Timeout;
                }
                match self.retransmit_at {
                    Some(at) if now >= at => {
                        // Timer A doubles without the T2 cap of non-INVITE (17.1.1.2).
                        self.interval *= 2;
                        self.retransmit_at = Some(now + self.interval);
                        ClientTimer::Retransmit
                    }
                    _ => ClientTimer::Idle,
                }
            }
            ClientState::Completed => {
                if self.terminate_at.is_some_and(|at| now >= at) {
                    self.state = ClientState::Terminated;
                }
                ClientTimer::Idle
            }
            ClientState::Terminated => ClientTimer::Idle,
        }
    }

    pub fn deadline(&self) -> Option<Instant> {
        match self.state {
            ClientState::Trying | ClientState::Proceeding => {
                match (self.retransmit_at, self.timeout_at) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                }
            }
            ClientState::Completed => self.terminate_at,
            ClientState::Terminated => None,
        }
    }

    pub fn is_terminated(&self) -> bool {
        self.state == ClientState::Terminated
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerState {
    Trying,
    Proceeding,
    Completed,
    Confirmed,
    /// RFC 6026: a 2xx was sent; retransmitted until the ACK, INVITE retransmissions absorbed.
    Accepted,
    Terminated,
}

/// Non-INVITE server transaction (RFC 3261 17.2.2).
#[derive(Debug, Clone)]
pub struct ServerNonInvite {
    state: ServerState,
    reliable: bool,
    timers: Timers,
    last_response: Option<Bytes>,
    deadline: Option<Instant>,
}

impl ServerNonInvite {
    /// A new request arrived. If the TU never answers, the transaction still ends after
    /// 64*T1 (the client has given up by then), so a stuck TU cannot pin memory.
    pub fn new(now: Instant, reliable: bool, timers: Timers) -> Self {
        ServerNonInvite {
            state: ServerState::Trying,
            reliable,
            timers,
            last_response: None,
            deadline: Some(now + timers.timeout()),
        }
    }

    pub fn state(&self) -> ServerState {
        self.state
    }

    /// The same request again: the last response, if any, to send again.
    pub fn on_retransmission(&self) -> Option<Bytes> {
        match self.state {
            ServerState::Proceeding | ServerState::Completed => self.last_response.clone(),
            _ => None,
        }
    }

    /// The TU sends a response. Returns false when the state forbids it (a second final).
    pub fn on_respond(&mut self, now: Instant, status: u16, bytes: Bytes) -> bool {
        match self.state {
            ServerState::Trying | ServerState::Proceeding => {
                self.last_response = Some(bytes);
                if status >= 200 {
                    self.state = ServerState::Completed;
                    // Timer J: absorb request retransmissions over UDP.
                    let j = if self.reliable {
                        Duration::ZERO
                    } else {
                        self.timers.timeout()
                    };
                    self.deadline = Some(now + j);
                } else {
                    self.state = ServerState::Proceeding;
                }
                true
            }
            _ => false,
        }
    }

    pub fn on_timer(&mut self, now: Instant) {
        if self.deadline.is_some_and(|d| now >= d) {
            self.state = ServerState::Terminated;
            self.deadline = None;
            self.last_response = None;
        }
    }

    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    pub fn is_terminated(&self) -> bool {
        self.state == ServerState::Terminated
    }
}

/// What a server INVITE transaction asks for when a timer fires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerInviteTimer {
    Idle,
    /// Timer G: send the final response again.
    Retransmit(Bytes),
    /// Timer H: no ACK came.
    NoAck,
}

/// INVITE server transaction (RFC 3261 17.2.1 with RFC 6026's Accepted state).
#[derive(Debug, Clone)]
pub struct ServerInvite {
    state: ServerState,
    reliable: bool,
    timers: Timers,
    last_response: Option<Bytes>,
    interval: Duration,
    retransmit_at: Option<Instant>,
    deadline: Option<Instant>,
}

impl ServerInvite {
    pub fn new(now: Instant, reliable: bool, timers: Timers) -> Self {
        ServerInvite {
            state: ServerState::Proceeding,
            reliable,
            timers,
            last_response: None,
            interval: timers.t1,
            retransmit_at: None,
            deadline: Some(now + timers.timeout()),
        }
    }

    pub fn state(&self) -> ServerState {
        self.state
    }

    pub fn on_retransmission(&self) -> Option<Bytes> {
        match self.state {
            ServerState::Proceeding | ServerState::Completed => self.last_response.clone(),
            _ => None,
        }
    }

    pub fn on_respond(&mut self, now: Instant, status: u16, bytes: Bytes) -> bool {
        if self.state != ServerState::Proceeding {
            return false;
        }
        self.last_response = Some(bytes);
        if (200..300).contains(&status) {
            // 13.3.1.4: the 2xx goes again at T1, 2*T1, ... capped at T2, over any
            // transport (the ACK is end to end), until the ACK or 64*T1 (timer L).
            self.state = ServerState::Accepted;
            self.interval = self.timers.t1;
            self.retransmit_at = Some(now + self.timers.t1);
            self.deadline = Some(now + self.timers.timeout());
        } else if status >= 300 {
            self.state = ServerState::Completed;
            self.interval = self.timers.t1;
            self.retransmit_at = (!self.reliable).then(|| now + self.timers.t1);
            self.deadline = Some(now + self.timers.timeout());
        }
        true
    }

    /// The ACK for a 2xx (it has its own branch, so the core matches it by dialog).
    /// Returns true the first time, when the TU must see it.
    pub fn on_ack_2xx(&mut self) -> bool {
        if self.state == ServerState::Accepted && self.retransmit_at.is_some() {
            // Stay Accepted until timer L to absorb INVITE retransmissions.
            self.retransmit_at = None;
            return true;
        }
        false
    }

    /// Whether the 2xx is still waiting for its ACK.
    pub fn awaits_ack_2xx(&self) -> bool {
        self.state == ServerState::Accepted && self.retransmit_at.is_some()
    }

    /// The ACK for a non-2xx final response.
    pub fn on_ack(&mut self, now: Instant) {
        if self.state == ServerState::Completed {
            self.state = ServerState::Confirmed;
            self.retransmit_at = None;
            let i = if self.reliable {
                Duration::ZERO
            } else {
                self.timers.t4
            };
            self.deadline = Some(now + i);
        }
    }

    pub fn on_timer(&mut self, now: Instant) -> ServerInviteTimer {
        match self.state {
            ServerState::Completed | ServerState::Accepted => {
                if self.deadline.is_some_and(|d| now >= d) {
                    let acked = self.state == ServerState::Accepted && self.retransmit_at.is_none();
                    self.state = ServerState::Terminated;
                    self.retransmit_at = None;
                    self.deadline = None;
                    return if acked {
                        ServerInviteTimer::Idle
                    } else {
                        ServerInviteTimer::NoAck
                    };
                }
                if let Some(at) = self.retransmit_at {
                    if now >= at {
                        self.interval = (self.interval * 2).min(self.timers.t2);
                        self.retransmit_at = Some(now + self.interval);
                        if let Some(r) = &self.last_response {
                            return ServerInviteTimer::Retransmit(r.clone());
                        }
                    }
                }
                ServerInviteTimer::Idle
            }
            ServerState::Proceeding | ServerState::Confirmed => {
                if self.deadline.is_some_and(|d| now >= d) {
                    self.state = ServerState::Terminated;
                    self.deadline = None;
                }
                ServerInviteTimer::Idle
            }
            _ => ServerInviteTimer::Idle,
        }
    }

    pub fn deadline(&self) -> Option<Instant> {
        match (self.retransmit_at, self.deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    pub fn is_terminated(&self) -> bool {
        self.state == ServerState::Terminated
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Drives a client transaction with no responses and records when it retransmits.
    fn retransmit_schedule(reliable: bool) -> (Vec<u64>, u64) {
        let t0 = Instant::now();
        let mut tx = ClientNonInvite::new(t0, reliable, Timers::default());
        let mut sends = Vec::new();
        while let Some(d) = tx.deadline() {
            match tx.on_timer(d) {
                ClientTimer::Retransmit => sends.push((d - t0).as_millis() as u64),
                ClientTimer::Timeout => return (sends, (d - t0).as_millis() as u64),
                ClientTimer::Idle => {}
            }
        }
        panic!("ended without timeout");
    }

    #[test]
    fn timer_e_doubles_up_to_t2_and_timer_f_ends_at_64_t1() {
        let (sends, timeout) = retransmit_schedule(false);
        assert_eq!(
            &sends[..6],
            &[500, 1500, 3500, 7500, 11500, 15500],
            "E: T1, 2T1, 4T1, then every T2"
        );
        assert_eq!(*sends.last().unwrap(), 31500);
        assert_eq!(timeout, 32000);
    }

    #[test]
    fn reliable_transports_never_retransmit() {
        let (sends, timeout) = retransmit_schedule(true);
        assert!(sends.is_empty());
        assert_eq!(timeout, 32000);
    }

    #[test]
    fn a_provisional_response_moves_retransmissions_to_t2() {
        let t0 = Instant::now();
        let mut tx = ClientNonInvite::new(t0, false, Timers::default());
        assert_eq!(tx.on_timer(t0 + ms(500)), ClientTimer::Retransmit);
        assert!(tx.on_response(t0 + ms(600), 100));
        assert_eq!(tx.state(), ClientState::Proceeding);
        // The pending E (1500) still fires, then every T2.
        assert_eq!(tx.on_timer(t0 + ms(1500)), ClientTimer::Retransmit);
        assert_eq!(tx.deadline(), Some(t0 + ms(5500)));
    }

    #[test]
    fn a_final_response_completes_and_retransmissions_are_absorbed_for_t4() {
        let t0 = Instant::now();
        let mut tx = ClientNonInvite::new(t0, false, Timers::default());
        assert!(tx.on_response(t0 + ms(10), 200));
        assert_eq!(tx.state(), ClientState::Completed);
        assert!(!tx.on_response(t0 + ms(20), 200), "absorbed");
        assert_eq!(tx.deadline(), Some(t0 + ms(5010)));
        tx.on_timer(t0 + ms(5010));
        assert!(tx.is_terminated());
    }

    #[test]
    fn over_tcp_completed_ends_at_once() {
        let t0 = Instant::now();
        let mut tx = ClientNonInvite::new(t0, true, Timers::default());
        assert!(tx.on_response(t0, 404));
        assert_eq!(tx.deadline(), Some(t0));
        tx.on_timer(t0);
        assert!(tx.is_terminated());
    }

    #[test]
    fn configured_timers_scale_the_schedule() {
        let t0 = Instant::now();
        let timers = Timers {
            t1: ms(100),
            t2: ms(400),
            t4: ms(1000),
        };
        let mut tx = ClientNonInvite::new(t0, false, timers);
        assert_eq!(tx.deadline(), Some(t0 + ms(100)));
        assert_eq!(tx.on_timer(t0 + ms(6400)), ClientTimer::Timeout);
    }

    #[test]
    fn server_non_invite_resends_its_last_response_until_j() {
        let t0 = Instant::now();
        let mut tx = ServerNonInvite::new(t0, false, Timers::default());
        assert_eq!(tx.on_retransmission(), None, "Trying absorbs");
        assert!(tx.on_respond(t0, 200, Bytes::from_static(b"200")));
        assert_eq!(tx.on_retransmission(), Some(Bytes::from_static(b"200")));
        assert!(!tx.on_respond(t0, 500, Bytes::from_static(b"500")));
        assert_eq!(tx.deadline(), Some(t0 + ms(32000)));
        tx.on_timer(t0 + ms(31999));
        assert!(!tx.is_terminated());
        tx.on_timer(t0 + ms(32000));
        assert!(tx.is_terminated());
        assert_eq!(tx.on_retransmission(), None);
    }

    #[test]
    fn an_unanswered_server_transaction_still_ends() {
        let t0 = Instant::now();
        let mut tx = ServerNonInvite::new(t0, true, Timers::default());
        tx.on_timer(t0 + ms(32000));
        assert!(tx.is_terminated());
    }

    #[test]
    fn server_invite_retransmits_a_failure_until_ack() {
        let t0 = Instant::now();
        let mut tx = ServerInvite::new(t0, false, Timers::default());
        assert!(tx.on_respond(t0, 405, Bytes::from_static(b"405")));
        assert_eq!(tx.state(), ServerState::Completed);
        assert_eq!(
            tx.on_timer(t0 + ms(500)),
            ServerInviteTimer::Retransmit(Bytes::from_static(b"405"))
        );
        assert_eq!(tx.deadline(), Some(t0 + ms(1500)));
        tx.on_ack(t0 + ms(700));
        assert_eq!(tx.state(), ServerState::Confirmed);
        assert_eq!(tx.deadline(), Some(t0 + ms(5700)));
        tx.on_timer(t0 + ms(5700));
        assert!(tx.is_terminated());
    }

    #[test]
    fn client_invite_timer_a_doubles_without_a_cap_and_b_ends_it() {
        let t0 = Instant::now();
        let mut tx = ClientInvite::new(t0, false, Timers::default());
        let mut sends = Vec::new();
        let end = loop {
            let d = tx.deadline().unwrap();
            match tx.on_timer(d) {
                ClientTimer::Retransmit => sends.push((d - t0).as_millis() as u64),
                ClientTimer::Timeout => break (d - t0).as_millis() as u64,
                ClientTimer::Idle => {}
            }
        };
        assert_eq!(sends, vec![500, 1500, 3500, 7500, 15500, 31500]);
        assert_eq!(end, 32000);
    }

    #[test]
    fn client_invite_passes_every_2xx_and_acks_failures_itself() {
        let t0 = Instant::now();
        let mut tx = ClientInvite::new(t0, false, Timers::default());
        assert_eq!(tx.on_response(t0, 180), InviteResponse::Pass);
        assert!(tx.is_proceeding());
        assert_eq!(tx.deadline(), Some(t0 + ms(32000)), "A stops, B runs");
        assert_eq!(tx.on_response(t0 + ms(10), 200), InviteResponse::Pass);
        assert_eq!(
            tx.on_response(t0 + ms(20), 200),
            InviteResponse::Pass,
            "a fork or retransmission"
        );
        assert_eq!(tx.on_response(t0 + ms(30), 486), InviteResponse::Absorb);
        tx.on_timer(t0 + ms(32010));
        assert!(tx.is_terminated(), "timer M");

        let mut tx = ClientInvite::new(t0, false, Timers::default());
        assert_eq!(tx.on_response(t0, 486), InviteResponse::PassAndAck);
        assert_eq!(tx.on_response(t0 + ms(500), 486), InviteResponse::Ack);
        assert_eq!(tx.deadline(), Some(t0 + ms(32000)), "timer D");
        let mut tx = ClientInvite::new(t0, true, Timers::default());
        assert_eq!(tx.on_response(t0, 603), InviteResponse::PassAndAck);
        assert_eq!(tx.deadline(), Some(t0), "D is 0 over TCP");
    }

    #[test]
    fn server_invite_retransmits_a_2xx_until_the_ack_then_absorbs_until_l() {
        let t0 = Instant::now();
        let mut tx = ServerInvite::new(t0, true, Timers::default());
        assert!(tx.on_respond(t0, 200, Bytes::from_static(b"200")));
        assert_eq!(tx.state(), ServerState::Accepted);
        assert_eq!(
            tx.on_retransmission(),
            None,
            "INVITE retransmissions are absorbed"
        );
        assert_eq!(
            tx.on_timer(t0 + ms(500)),
            ServerInviteTimer::Retransmit(Bytes::from_static(b"200")),
            "even over TCP: the ACK is end to end"
        );
        assert!(tx.awaits_ack_2xx());
        assert!(tx.on_ack_2xx());
        assert!(!tx.on_ack_2xx(), "a retransmitted ACK is not news");
        assert_eq!(tx.deadline(), Some(t0 + ms(32000)));
        assert_eq!(tx.on_timer(t0 + ms(32000)), ServerInviteTimer::Idle);
        assert!(tx.is_terminated());

        let mut tx = ServerInvite::new(t0, false, Timers::default());
        tx.on_respond(t0, 200, Bytes::from_static(b"200"));
        let mut n = 0;
        let last = loop {
            let d = tx.deadline().unwrap();
            match tx.on_timer(d) {
                ServerInviteTimer::Retransmit(_) => n += 1,
                ServerInviteTimer::NoAck => break d,
                ServerInviteTimer::Idle => {}
            }
        };
        assert_eq!(last, t0 + ms(32000));
        assert!(n >= 8, "{n}");
    }

    #[test]
    fn server_invite_gives_up_after_timer_h() {
        let t0 = Instant::now();
        let mut tx = ServerInvite::new(t0, false, Timers::default());
        tx.on_respond(t0, 486, Bytes::from_static(b"486"));
        let mut retransmits = 0;
        loop {
            let d = tx.deadline().unwrap();
            match tx.on_timer(d) {
                ServerInviteTimer::Retransmit(_) => retransmits += 1,
                ServerInviteTimer::NoAck => {
                    assert_eq!(d, t0 + ms(32000));
                    break;
                }
                ServerInviteTimer::Idle => {}
            }
        }
        assert!(retransmits >= 8, "{retransmits}");
        assert!(tx.is_terminated());
    }
}
