//! The ends of a run: sockets found open at the start, and what is still lingering at the end.

use tracer_common::TcpState;

use super::{
    Tracker,
    conn::{Conn, KeptOwner, Phase, closer_implied_by},
    types::{ConnRecord, Figures, Fw2End, Role, Seed, StateTimes},
};

impl Tracker {
    /// Adds the sockets open when tracing started. Sockets already known
    /// from events only get what they lack (owner, role).
    pub fn seed(&mut self, seeds: &[Seed], now_ns: u64) {
        for s in seeds.iter().filter(|s| s.state == TcpState::Listen) {
            self.listeners.entry((s.netns, s.lport)).or_insert(s.owner);
        }
        for s in seeds {
            if matches!(
                s.state,
                TcpState::Listen
                    | TcpState::Close
                    | TcpState::SynRecv
                    | TcpState::NewSynRecv
                    | TcpState::TimeWait
            ) {
                continue;
            }
            let serves = self.listeners.contains_key(&(s.netns, s.lport));
            let role = if serves { Role::Server } else { s.role };
            if let Some(conn) = self.conns.peek_mut(&s.cookie) {
                // A process found holding the socket beats one inherited
                // from the listener.
                if !conn.owner_known && s.owner.is_some() {
                    conn.owner = KeptOwner::new(s.owner);
                    conn.owner_known = true;
                }
                if conn.role == Role::Unknown {
                    conn.role = role;
                }
                let opened = (conn.opened_pending && conn.owner_known).then(|| {
                    conn.opened_pending = false;
                    conn.id()
                });
                self.note_opened(opened);
                continue;
            }
            let mut times = StateTimes::default();
            times.enter(s.state);
            let conn = Conn {
                netns: s.netns,
                family: s.family,
                laddr: s.laddr,
                lport: s.lport,
                raddr: s.raddr,
                rport: s.rport,
                owner: KeptOwner::new(s.owner),
                owner_known: s.owner.is_some(),
                opened_pending: false,
                born: false,
                role,
                closed_by: closer_implied_by(s.state),
                reset_local: None,
                state: s.state,
                since_ns: now_ns,
                first_ns: now_ns,
                last_step: (s.state, s.state),
                times,
                fin_wait2_end: None,
                time_wait: false,
                time_wait_refused: false,
                complete: false,
                phase: Phase::Live,
            };
            self.insert(s.cookie, conn);
        }
    }

    /// At exit: records for every socket still lingering (closing states,
    /// timewait FIN_WAIT2), timed up to `now_ns`, plus any closed socket
    /// still waiting for its verdict. Open connections are not records.
    pub fn finish(&mut self, now_ns: u64) -> Vec<ConnRecord> {
        let mut out = self.take_ready();
        let cookies: Vec<u64> = self.conns.iter().map(|(&c, _)| c).collect();
        for cookie in cookies {
            let Some(mut conn) = self.conns.pop(&cookie) else {
                continue;
            };
            // Open ones too: the opening was seen during the run.
            self.pass_opened(&mut conn, true);
            let figures = self.figures.remove(&cookie).unwrap_or_default();
            match conn.phase {
                Phase::Live
                    if !matches!(
                        conn.state,
                        TcpState::FinWait1
                            | TcpState::FinWait2
                            | TcpState::Closing
                            | TcpState::CloseWait
                            | TcpState::LastAck
                    ) => {}
                Phase::Closed { at_ns, .. } => {
                    out.push(conn.record(figures, cookie, at_ns, at_ns, None));
                }
                Phase::Live | Phase::Fw2Timewait { .. } => {
                    out.extend(timed_open(conn, figures, cookie, now_ns));
                }
            }
        }
        self.followed.clear();
        self.figures.clear();
        self.closing.clear();
        out
    }
}

impl Tracker {
    /// A socket still open, as a record timed up to `now_ns` with its
    /// state in `open_state`, the socket left as it is: what the daemon
    /// keeps of the connections standing behind a finding. `None` for a
    /// socket unknown or already closed.
    pub fn open_record(&self, cookie: u64, now_ns: u64) -> Option<ConnRecord> {
        let conn = self.conns.peek(&cookie)?.clone();
        timed_open(
            conn,
            self.figures.get(&cookie).copied().unwrap_or_default(),
            cookie,
            now_ns,
        )
    }
}

/// An open socket's record at `now_ns`: the time in its present state
/// added; a FIN_WAIT2 not over yet is said to be open.
fn timed_open(mut conn: Conn, figures: Figures, cookie: u64, now_ns: u64) -> Option<ConnRecord> {
    match conn.phase {
        Phase::Live => {
            let state = conn.state;
            if let Some(since) = conn.since() {
                conn.times.add(state, now_ns.saturating_sub(since));
            }
            if state == TcpState::FinWait2 {
                conn.fin_wait2_end = Some(Fw2End::Open);
            }
            Some(conn.record(figures, cookie, now_ns, now_ns, Some(state)))
        }
        Phase::Fw2Timewait { closed_ns, .. } => {
            conn.times
                .add(TcpState::FinWait2, now_ns.saturating_sub(closed_ns));
            conn.fin_wait2_end = Some(Fw2End::Open);
            Some(conn.record(figures, cookie, now_ns, closed_ns, Some(TcpState::FinWait2)))
        }
        Phase::Closed { .. } => None,
    }
}
