//! Following sockets that live on as timewait sockets: what sock_diag is asked, and how its answers end FIN_WAIT2 and TIME_WAIT.

use std::{cmp::Reverse, collections::BinaryHeap, net::IpAddr};

use foldhash::{HashMap, HashMapExt as _};
use tracer_common::TcpState;

use super::{
    Tracker,
    conn::{Phase, Timewait},
    types::{
        DiagRequest, Fw2End, Sightings, TIMEWAIT_LEN_NS, TimewaitEnd, TimewaitSighting, Wanted,
    },
};
use crate::model::event::{Family, Record};

/// Timer rounding tolerated before a vanished timewait socket counts as
/// killed early rather than expired.
const EXPIRY_SLACK_NS: u64 = 20_000_000;

/// A socket's endpoints in its namespace: two sockets cannot hold the
/// same at once.
type Tuple = (u32, IpAddr, u16, IpAddr, u16);

/// The TIME_WAIT sockets followed to their end: by cookie; by endpoints,
/// since a new socket on the same ones ends a TIME_WAIT (a connect reusing
/// it, or a SYN it accepted); and in the order their timers are due.
#[derive(Default)]
pub(super) struct Timewaits {
    by_cookie: HashMap<u64, Timewait>,
    /// A hash of the endpoints -> the cookie (16 bytes an entry where the
    /// endpoints would take 56: at `--max-sockets` that is tens of MB); a
    /// match is checked against the socket's own endpoints.
    by_tuple: HashMap<u64, u64>,
    /// (when due, cookie), soonest first. A look may find a timer set
    /// later than thought (the peer's FIN came again): the socket is then
    /// due anew. Entries of sockets ended otherwise stay until due or
    /// compacted away.
    pub(super) due: BinaryHeap<Reverse<(u64, u64)>>,
}

/// `due` is rebuilt from the sockets still followed once it holds this
/// many entries more than twice their number: under churn most
/// TIME_WAITs end reused long before due, and their entries would
/// otherwise pile up for 60 s whatever `--max-sockets` says.
pub(super) const DUE_SLACK: usize = 1024;

impl Timewaits {
    pub(super) fn len(&self) -> usize {
        self.by_cookie.len()
    }

    pub(super) fn insert(&mut self, cookie: u64, tw: Timewait) {
        self.by_tuple.insert(hash(&tuple(&tw)), cookie);
        self.due.push(Reverse((tw.expires_ns, cookie)));
        self.by_cookie.insert(cookie, tw);
        if self.due.len() > 2 * self.by_cookie.len() + DUE_SLACK {
            self.due = self
                .by_cookie
                .iter()
                .map(|(&cookie, tw)| Reverse((tw.expires_ns, cookie)))
                .collect();
        }
    }

    pub(super) fn remove(&mut self, cookie: u64) -> Option<Timewait> {
        let tw = self.by_cookie.remove(&cookie)?;
        let key = hash(&tuple(&tw));
        if self.by_tuple.get(&key) == Some(&cookie) {
            self.by_tuple.remove(&key);
        }
        Some(tw)
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = (&u64, &Timewait)> {
        self.by_cookie.iter()
    }

    /// The followed socket on these endpoints, if any.
    fn on(&self, key: &Tuple) -> Option<(u64, &Timewait)> {
        let cookie = *self.by_tuple.get(&hash(key))?;
        let tw = self.by_cookie.get(&cookie)?;
        (tuple(tw) == *key).then_some((cookie, tw))
    }
}

fn hash(key: &Tuple) -> u64 {
    use std::hash::BuildHasher as _;
    foldhash::fast::FixedState::with_seed(0).hash_one(key)
}

fn tuple(tw: &Timewait) -> Tuple {
    let id = &tw.id;
    (id.netns, id.laddr, id.lport, id.raddr, id.rport)
}

impl Tracker {
    /// What sock_diag should be asked now; empty when nothing is followed.
    /// With `timewait`, the followed TIME_WAIT sockets too: they change
    /// once in 60 s, and their table can be large.
    pub fn diag_requests(&self, timewait: bool) -> Vec<DiagRequest> {
        fn request(
            map: &mut HashMap<(u32, Family), DiagRequest>,
            netns: u32,
            family: Family,
        ) -> &mut DiagRequest {
            map.entry((netns, family)).or_insert_with(|| DiagRequest {
                netns,
                family,
                fin_wait2: Vec::new(),
                time_wait: Vec::new(),
            })
        }
        let mut by_namespace: HashMap<(u32, Family), DiagRequest> = HashMap::new();
        for (&(netns, family), cookies) in &self.followed {
            for &cookie in cookies {
                if let Some(c) = self.conns.peek(&cookie) {
                    request(&mut by_namespace, netns, family)
                        .fin_wait2
                        .push(Wanted {
                            cookie,
                            laddr: c.laddr,
                            lport: c.lport,
                            raddr: c.raddr,
                            rport: c.rport,
                        });
                }
            }
        }
        if timewait {
            for (&cookie, tw) in self.timewaits.iter().flat_map(Timewaits::iter) {
                request(&mut by_namespace, tw.id.netns, tw.id.family)
                    .time_wait
                    .push(cookie);
            }
        }
        by_namespace.into_values().collect()
    }

    /// A followed TIME_WAIT socket in a dump, or missing from it.
    fn on_timewait_sighting(&mut self, cookie: u64, seen: Option<&TimewaitSighting>, done_ns: u64) {
        let Some(timewaits) = &mut self.timewaits else {
            return;
        };
        let Some(tw) = timewaits.by_cookie.get_mut(&cookie) else {
            return;
        };
        if let Some(s) = seen {
            tw.seen_ns = s.seen_ns;
            tw.expires_ns = expiry(s);
        } else {
            let end = if done_ns.saturating_add(EXPIRY_SLACK_NS) < tw.expires_ns {
                // Gone early: reused by a new connection, or killed by a RST.
                done_ns
            } else {
                tw.expires_ns.clamp(tw.seen_ns, done_ns.max(tw.seen_ns))
            };
            self.timewait_ends.push(TimewaitEnd {
                id: tw.id,
                duration_ns: end.saturating_sub(tw.since_ns),
            });
            timewaits.remove(cookie);
        }
    }

    /// A socket established in `r` ends the followed TIME_WAIT on its
    /// endpoints: the kernel gave them to it (a connect reusing them, or
    /// the SYN of a new connection accepted over the timewait socket).
    /// That TIME_WAIT ended as this socket entered SYN_SENT or SYN_RECV.
    pub(super) fn end_reused_timewait(&mut self, r: &Record) {
        let Some(timewaits) = &mut self.timewaits else {
            return;
        };
        let key = (r.netns, r.laddr, r.lport, r.raddr, r.rport);
        let Some((cookie, tw)) = timewaits.on(&key) else {
            return;
        };
        if cookie == r.cookie || tw.since_ns > r.ts_ns {
            return;
        }
        let taken_ns = r.since_ns.unwrap_or(r.ts_ns);
        if let Some(tw) = timewaits.remove(cookie) {
            self.timewait_ends.push(TimewaitEnd {
                id: tw.id,
                duration_ns: taken_ns.saturating_sub(tw.since_ns),
            });
        }
    }

    /// Ends the followed TIME_WAIT sockets whose timer is due by `now_ns`,
    /// at its due time: the kernel's timer ends a TIME_WAIT, and a look is
    /// needed only to catch one ended early (reset, or reused unseen).
    pub(super) fn expire_timewaits(&mut self, now_ns: u64) {
        let Some(timewaits) = &mut self.timewaits else {
            return;
        };
        while let Some(&Reverse((due_ns, cookie))) = timewaits.due.peek() {
            if due_ns.saturating_add(EXPIRY_SLACK_NS) > now_ns {
                break;
            }
            timewaits.due.pop();
            let Some(tw) = timewaits.by_cookie.get(&cookie) else {
                continue;
            };
            if tw.expires_ns > due_ns {
                // A look saw its timer set later: due then.
                timewaits.due.push(Reverse((tw.expires_ns, cookie)));
                continue;
            }
            let end = tw.expires_ns.max(tw.seen_ns);
            self.timewait_ends.push(TimewaitEnd {
                id: tw.id,
                duration_ns: end.saturating_sub(tw.since_ns),
            });
            timewaits.remove(cookie);
        }
    }

    /// Applies one dump (timewait sockets by cookie) taken for `request`;
    /// `done_ns` is when the dump finished. A namespace that no longer
    /// exists is an empty dump: its timewait sockets went with it.
    pub fn on_diag(&mut self, request: &DiagRequest, timewait: &Sightings, done_ns: u64) {
        for cookie in request.fin_wait2.iter().map(|w| w.cookie) {
            let seen = timewait.get(&cookie);
            let Some(conn) = self.conns.get_mut(&cookie) else {
                self.unfollow(cookie, request.netns, request.family);
                self.on_timewait_sighting(cookie, seen, done_ns);
                continue;
            };
            match conn.phase {
                Phase::Closed {
                    at_ns,
                    timewait_candidate: true,
                } => match seen {
                    Some(tw) if tw.state == TcpState::TimeWait => {
                        // Either created as TIME_WAIT (the FIN had come while
                        // the full socket lived) or it switched from FIN_WAIT2
                        // before this first look: the timer dates which.
                        conn.time_wait = true;
                        let mut end = at_ns;
                        if conn.times.get(TcpState::FinWait2).is_some() {
                            end = timewait_switch(tw, at_ns);
                            conn.times.add(TcpState::FinWait2, end - at_ns);
                            conn.fin_wait2_end = Some(Fw2End::PeerFin);
                        }
                        self.finalize(cookie, end);
                    }
                    Some(tw) => {
                        conn.phase = Phase::Fw2Timewait {
                            closed_ns: at_ns,
                            seen_ns: tw.seen_ns,
                            expires_ns: expiry(tw),
                        };
                        // Keep followed sockets away from LRU eviction.
                        self.conns.promote(&cookie);
                    }
                    None => {
                        // No successor: the timewait table was full
                        // (tcp_max_tw_buckets) or it was gone before we asked.
                        self.finalize(cookie, at_ns);
                    }
                },
                Phase::Fw2Timewait {
                    closed_ns,
                    seen_ns,
                    expires_ns,
                } => match seen {
                    Some(tw) if tw.state == TcpState::TimeWait => {
                        let end = timewait_switch(tw, seen_ns);
                        conn.times
                            .add(TcpState::FinWait2, end.saturating_sub(closed_ns));
                        conn.fin_wait2_end = Some(Fw2End::PeerFin);
                        conn.time_wait = true;
                        self.finalize(cookie, end);
                    }
                    Some(tw) => {
                        conn.phase = Phase::Fw2Timewait {
                            closed_ns,
                            seen_ns: tw.seen_ns,
                            expires_ns: expiry(tw),
                        };
                        self.conns.promote(&cookie);
                    }
                    None => {
                        let (end, how) = if done_ns.saturating_add(EXPIRY_SLACK_NS) < expires_ns {
                            // Gone before its timer: killed by a RST or reused.
                            (done_ns, Fw2End::Reset)
                        } else {
                            (
                                expires_ns.clamp(seen_ns, done_ns.max(seen_ns)),
                                Fw2End::Timeout,
                            )
                        };
                        conn.times
                            .add(TcpState::FinWait2, end.saturating_sub(closed_ns));
                        conn.fin_wait2_end = Some(how);
                        self.finalize(cookie, end);
                    }
                },
                _ => self.unfollow(cookie, request.netns, request.family),
            }
        }
        // A followed TIME_WAIT's full socket ended when its TIME_WAIT
        // began: only its own table is asked (a dump answers for every one
        // followed, over 100,000 when the kernel's table is full).
        for &cookie in &request.time_wait {
            self.on_timewait_sighting(cookie, timewait.get(&cookie), done_ns);
        }
    }

    /// sock_diag could not answer `request`: sockets waiting for their
    /// first look are written without a verdict on their successor
    /// (incomplete); followed ones wait for a later look.
    pub fn on_diag_failed(&mut self, request: &DiagRequest) {
        for cookie in request.cookies() {
            if let Some(conn) = self.conns.peek_mut(&cookie)
                && let Phase::Closed {
                    at_ns,
                    timewait_candidate: true,
                } = conn.phase
            {
                conn.complete = false;
                self.finalize(cookie, at_ns);
            }
        }
    }
}

/// When a timewait socket seen in TIME_WAIT left FIN_WAIT2: its timer
/// restarted at [`TIMEWAIT_LEN_NS`] then. Clamped to after `not_before`
/// (when it was last known to be in FIN_WAIT2) and to the sighting itself.
fn timewait_switch(tw: &TimewaitSighting, not_before: u64) -> u64 {
    let left_ns = u64::from(tw.expires_ms) * 1_000_000;
    let switched = tw
        .seen_ns
        .saturating_sub(TIMEWAIT_LEN_NS.saturating_sub(left_ns));
    switched.clamp(not_before, tw.seen_ns.max(not_before))
}

/// When a timewait socket's timer is due, from one sighting.
fn expiry(tw: &TimewaitSighting) -> u64 {
    // Saturating: a sighting may come from a recording, not the kernel.
    tw.seen_ns
        .saturating_add(u64::from(tw.expires_ms).saturating_mul(1_000_000))
}
