//! After events were lost: what is marked incomplete, and how the tracker is set right from a dump of every socket.

use tracer_common::TcpState;

use super::{
    Tracker,
    conn::{NOT_KNOWN, Phase, closer_implied_by},
    types::{Alive, ClosedBy},
};

impl Tracker {
    /// Events were lost since the last call: every socket alive now, and
    /// every record not yet written, may be missing some.
    pub fn note_loss(&mut self) {
        self.conns.for_each_mut(|_, conn| conn.complete = false);
        for record in &mut self.ready {
            record.complete = false;
        }
    }

    /// After a loss, what the kernel holds now (`alive`, dumped from
    /// `started_ns`) corrects what the lost events would have: a live
    /// socket not heard from since before the dump began and no longer
    /// there is written as ended (when it was last known of, incomplete,
    /// `closed_by` as far as its last state says); one found in TIME_WAIT
    /// is written as such; one found as a timewait socket in FIN_WAIT2 (an
    /// orphan handed over) is closed and followed as if its step to CLOSE
    /// had been seen; one found in another state moves there. Without
    /// this a socket whose closing events were all dropped would count as
    /// open until evicted.
    pub fn reconcile(&mut self, alive: &Alive, started_ns: u64) {
        let mut ended = Vec::new();
        let mut moved = Vec::new();
        let mut handed_over = Vec::new();
        for (&cookie, conn) in self.conns.iter() {
            let last_known = conn.since().unwrap_or(conn.first_ns);
            if conn.phase != Phase::Live
                || last_known >= started_ns
                || !alive.netns.contains(&conn.netns)
            {
                continue;
            }
            match alive.states.get(&cookie) {
                None => ended.push((cookie, last_known, false)),
                Some(TcpState::TimeWait) => ended.push((cookie, last_known, true)),
                Some(TcpState::FinWait2) if alive.timewait.contains(&cookie) => {
                    handed_over.push(cookie);
                }
                Some(&state) if state != conn.state => moved.push((cookie, state)),
                Some(_) => {}
            }
        }
        for (cookie, last_known, time_wait) in ended {
            let Some(mut conn) = self.conns.pop(&cookie) else {
                continue;
            };
            self.pass_opened(&mut conn, true);
            self.unfollow(cookie, conn.netns, conn.family);
            conn.complete = false;
            if conn.closed_by.is_none() {
                conn.closed_by = closer_implied_by(conn.state).or(
                    // Only the side that sent a FIN first (or both) gets there.
                    time_wait.then_some(ClosedBy::Local),
                );
            }
            conn.time_wait = time_wait;
            // How long its last state really lasted is unknown.
            conn.since_ns = NOT_KNOWN;
            conn.enter(TcpState::Close, last_known);
            self.ready.push(conn.record(
                self.figures.remove(&cookie).unwrap_or_default(),
                cookie,
                last_known,
                last_known,
                None,
            ));
        }
        for cookie in handed_over {
            let Some(conn) = self.conns.peek_mut(&cookie) else {
                continue;
            };
            conn.complete = false;
            if conn.closed_by.is_none() {
                conn.closed_by = closer_implied_by(TcpState::FinWait2);
            }
            if conn.state != TcpState::FinWait2 {
                // When it got there is unknown; its FIN_WAIT2 is timed
                // from the dump, a lower bound.
                conn.since_ns = NOT_KNOWN;
                conn.enter(TcpState::FinWait2, started_ns);
            }
            conn.last_step = (TcpState::FinWait2, TcpState::Close);
            conn.enter(TcpState::Close, started_ns);
            self.closed(cookie, TcpState::FinWait2, started_ns, Some(false), false);
        }
        for (cookie, state) in moved {
            if let Some(conn) = self.conns.peek_mut(&cookie) {
                conn.complete = false;
                if conn.closed_by.is_none() {
                    conn.closed_by = closer_implied_by(state);
                }
                // Its old state's end is unknown; the new one is timed
                // from the dump, a lower bound.
                conn.since_ns = NOT_KNOWN;
                conn.enter(state, started_ns);
                conn.last_step = (state, state);
            }
        }
    }
}
