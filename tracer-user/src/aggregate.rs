//! Statistics per (process, remote endpoint, role): connections opened and closed and by whom, linger-time histograms, and the sockets alive now, with a cap on groups.

use std::net::IpAddr;

use foldhash::{HashMap, HashMapExt as _};
use hdrhistogram::Histogram;
use tracer_common::TcpState;

use crate::{
    decode::Comm,
    diagnose::{IDLE_AFTER_NS, UNANSWERED_AFTER_NS},
    last_io::LastIo,
    tracker::{ClosedBy, ConnId, ConnRecord, Role, TimewaitEnd},
};

/// Histogram range: 1 µs to a day, 2 significant digits (1% error).
const HIST_MAX_US: u64 = 86_400_000_000;
const HIST_SIGFIGS: u8 = 2;

/// At most this many CLOSE_WAIT sockets per group are remembered, to name
/// their file descriptors in a finding.
const CLOSE_WAIT_SAMPLE: usize = 16;

/// One group: a process talking to one remote endpoint in one role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct GroupKey {
    pub pid: Option<u32>,
    pub comm: Option<Comm>,
    pub role: Role,
    /// The remote address.
    pub peer: IpAddr,
    /// The service port: the remote port of a client, the local port of a
    /// server (its clients' ports are ephemeral).
    pub port: u16,
}

impl GroupKey {
    pub fn of(id: &ConnId) -> Self {
        let port = if id.role == Role::Server {
            id.lport
        } else {
            id.rport
        };
        Self {
            pid: id.owner.map(|o| o.pid),
            comm: id.owner.map(|o| o.comm),
            role: id.role,
            peer: id.raddr.to_canonical(),
            port,
        }
    }

    /// `addr:port` of the far end; a server's clients come from many ports,
    /// so theirs is `*`.
    pub fn remote(&self) -> String {
        let addr = match self.peer {
            IpAddr::V4(a) => a.to_string(),
            IpAddr::V6(a) => format!("[{a}]"),
        };
        match self.role {
            Role::Server => format!("{addr}:*"),
            _ => format!("{addr}:{}", self.port),
        }
    }

    /// The far end in words: `10.0.0.2:8080` for a client, `clients at
    /// 10.0.0.1 on :8080` for a server.
    pub fn far_end(&self) -> String {
        match self.role {
            Role::Server => format!("clients at {} on :{}", self.peer.to_canonical(), self.port),
            _ => self.remote(),
        }
    }

    /// `pid/comm`, or `-` when no process was seen.
    pub fn process(&self) -> String {
        match (self.pid, self.comm) {
            (Some(pid), Some(comm)) => format!("{pid}/{comm}"),
            _ => "-".into(),
        }
    }
}

/// A distribution of durations; the histogram is only allocated once a
/// value arrives, as most groups never see most states.
#[derive(Debug, Clone, Default)]
pub struct Dist(Option<Box<Histogram<u32>>>);

impl Dist {
    pub fn record(&mut self, ns: u64) {
        let hist = self.0.get_or_insert_with(|| {
            Box::new(
                Histogram::new_with_bounds(1, HIST_MAX_US, HIST_SIGFIGS)
                    .expect("valid histogram bounds"),
            )
        });
        hist.saturating_record((ns / 1_000).clamp(1, HIST_MAX_US));
    }

    pub fn count(&self) -> u64 {
        self.0.as_ref().map_or(0, |h| h.len())
    }

    /// The `q` quantile (0..=1) in milliseconds.
    pub fn quantile_ms(&self, q: f64) -> Option<f64> {
        let h = self.0.as_ref().filter(|h| !h.is_empty())?;
        // The middle of the recorded value's bucket: within 0.5% either way.
        Some(h.median_equivalent(h.value_at_quantile(q)) as f64 / 1_000.0)
    }
}

/// Sockets of a group alive at the last observation.
#[derive(Debug, Clone, Default)]
pub struct Now {
    /// Count per state, indexed by the kernel's state number.
    pub by_state: [u64; 16],
    /// ESTABLISHED and silent for [`IDLE_AFTER_NS`] or more, last activity
    /// not an unanswered send.
    pub idle: u64,
    /// ESTABLISHED whose last activity is a send with no receive since,
    /// [`UNANSWERED_AFTER_NS`] or more ago.
    pub awaiting: u64,
    pub oldest_awaiting_ns: u64,
    /// How long each ESTABLISHED socket has been silent (since its last
    /// send or receive, or since it was first seen).
    pub idle_time: Dist,
    pub oldest_close_wait_ns: u64,
    /// (netns, cookie) of some CLOSE_WAIT sockets, to find their fds.
    pub close_wait_sample: Vec<(u32, u64)>,
    /// TIME_WAIT sockets the tracker follows, counted as they start and
    /// end rather than walked at each observation: there can be hundreds
    /// of thousands, and each changes once.
    pub time_wait_followed: u64,
}

impl Now {
    pub fn count(&self, state: TcpState) -> u64 {
        let followed = if state == TcpState::TimeWait {
            self.time_wait_followed
        } else {
            0
        };
        self.by_state[state as usize] + followed
    }
}

#[derive(Debug, Clone, Default)]
pub struct Group {
    pub opened: u64,
    pub closed: u64,
    /// Closed connections by [`ClosedBy`] (indexed by its discriminant).
    closed_by: [u64; ClosedBy::COUNT],
    /// Closed connections that went on to TIME_WAIT here.
    pub time_wait_closes: u64,
    pub incomplete: u64,
    pub lifetime: Dist,
    pub fin_wait2: Dist,
    pub close_wait: Dist,
    pub last_ack: Dist,
    pub time_wait: Dist,
    pub now: Now,
    /// ESTABLISHED count at the first observation of the window (0 for a
    /// group that appeared later).
    pub established_first: Option<u64>,
}

impl Group {
    pub fn closed_by(&self, by: ClosedBy) -> u64 {
        self.closed_by[by as usize]
    }

    /// Share of closed connections closed `by`, 0 when none closed.
    pub fn share(&self, by: &[ClosedBy]) -> f64 {
        if self.closed == 0 {
            return 0.0;
        }
        by.iter().map(|b| self.closed_by(*b)).sum::<u64>() as f64 / self.closed as f64
    }

    /// Sockets in a closing or waiting state now: what "lingering" means.
    pub fn lingering(&self) -> u64 {
        [
            TcpState::FinWait1,
            TcpState::FinWait2,
            TcpState::Closing,
            TcpState::CloseWait,
            TcpState::LastAck,
            TcpState::TimeWait,
        ]
        .iter()
        .map(|&s| self.now.count(s))
        .sum()
    }
}

/// A socket alive now, with what the kernel knows of its last I/O.
#[derive(Debug, Clone, Copy)]
pub struct LiveSocket {
    pub id: ConnId,
    pub cookie: u64,
    pub state: TcpState,
    pub since_ns: Option<u64>,
    pub io: Option<LastIo>,
}

/// Every group, up to a cap; groups beyond it are folded into `other`.
pub struct Aggregator {
    groups: HashMap<GroupKey, Group>,
    other: Group,
    max_groups: usize,
    /// Events (opens, closes, sockets observed) folded into `other`.
    folded: u64,
    started_ns: u64,
    observed: bool,
}

impl Aggregator {
    pub fn new(max_groups: usize, started_ns: u64) -> Self {
        Self {
            groups: HashMap::new(),
            other: Group::default(),
            max_groups,
            folded: 0,
            started_ns,
            observed: false,
        }
    }

    /// The group for `key`, or `other` once the cap is reached.
    fn group(&mut self, key: GroupKey) -> &mut Group {
        if !self.groups.contains_key(&key) && self.groups.len() >= self.max_groups {
            self.folded += 1;
            return &mut self.other;
        }
        let observed = self.observed;
        self.groups.entry(key).or_insert_with(|| Group {
            // A group born after the first look had nothing open then.
            established_first: observed.then_some(0),
            ..Group::default()
        })
    }

    pub fn on_opened(&mut self, id: &ConnId) {
        self.group(GroupKey::of(id)).opened += 1;
    }

    pub fn on_record(&mut self, r: &ConnRecord) {
        if r.open_state.is_some() {
            // Still lingering at exit: part of the current picture, not a close.
            return;
        }
        let g = self.group(GroupKey::of(&r.id()));
        g.closed += 1;
        g.closed_by[r.closed_by as usize] += 1;
        if r.time_wait {
            g.time_wait_closes += 1;
        }
        if !r.complete {
            g.incomplete += 1;
        }
        g.lifetime.record(r.lifetime_ns);
        for (state, dist) in [
            (TcpState::FinWait2, &mut g.fin_wait2),
            (TcpState::CloseWait, &mut g.close_wait),
            (TcpState::LastAck, &mut g.last_ack),
        ] {
            if let Some(ns) = r.states.get(state) {
                dist.record(ns);
            }
        }
    }

    /// The tracker follows one more TIME_WAIT socket.
    pub fn on_timewait_start(&mut self, id: &ConnId) {
        self.group(GroupKey::of(id)).now.time_wait_followed += 1;
    }

    pub fn on_timewait_end(&mut self, end: &TimewaitEnd) {
        let g = self.group(GroupKey::of(&end.id));
        g.time_wait.record(end.duration_ns);
        g.now.time_wait_followed = g.now.time_wait_followed.saturating_sub(1);
    }

    /// Replaces the picture of what is alive now: `live` are the sockets
    /// alive but the followed TIME_WAIT ones, which are counted as they
    /// come and go.
    pub fn observe(&mut self, live: impl IntoIterator<Item = LiveSocket>, now_ns: u64) {
        for now in self
            .groups
            .values_mut()
            .map(|g| &mut g.now)
            .chain([&mut self.other.now])
        {
            *now = Now {
                time_wait_followed: now.time_wait_followed,
                ..Now::default()
            };
        }
        for s in live {
            let started_ns = self.started_ns;
            let key = GroupKey::of(&s.id);
            let g = self.group(key);
            let now = &mut g.now;
            now.by_state[s.state as usize] += 1;
            let since = s.since_ns.unwrap_or(started_ns);
            match s.state {
                TcpState::Established => {
                    let io = s.io.unwrap_or_default();
                    let last = [io.send_ns, io.recv_ns, Some(since)]
                        .into_iter()
                        .flatten()
                        .max()
                        .unwrap_or(since);
                    let silent = now_ns.saturating_sub(last);
                    now.idle_time.record(silent);
                    // A server that answered and waits for the next request
                    // also sent last: for it that is idleness, not waiting.
                    let unanswered = key.role != Role::Server
                        && io
                            .send_ns
                            .is_some_and(|send| send > io.recv_ns.unwrap_or(0));
                    if unanswered && silent >= UNANSWERED_AFTER_NS {
                        now.awaiting += 1;
                        now.oldest_awaiting_ns = now.oldest_awaiting_ns.max(silent);
                    } else if !unanswered && silent >= IDLE_AFTER_NS {
                        now.idle += 1;
                    }
                }
                TcpState::CloseWait => {
                    now.oldest_close_wait_ns =
                        now.oldest_close_wait_ns.max(now_ns.saturating_sub(since));
                    if now.close_wait_sample.len() < CLOSE_WAIT_SAMPLE {
                        now.close_wait_sample.push((s.id.netns, s.cookie));
                    }
                }
                _ => {}
            }
        }
        for g in self.groups.values_mut() {
            g.established_first
                .get_or_insert(g.now.count(TcpState::Established));
        }
        self.observed = true;
    }

    pub fn groups(&self) -> impl Iterator<Item = (&GroupKey, &Group)> {
        self.groups.iter()
    }

    /// Everything beyond the group cap, merged.
    pub fn other(&self) -> &Group {
        &self.other
    }

    pub fn folded(&self) -> u64 {
        self.folded
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::{
        decode::{Family, tests::comm},
        tracker::{OwnerRef, StateTimes},
    };

    pub(crate) const MS: u64 = 1_000_000;

    pub(crate) fn id(pid: u32, role: Role, rport: u16) -> ConnId {
        ConnId {
            netns: 1,
            owner: Some(OwnerRef {
                pid,
                comm: Comm::new(comm("app")),
                cgroup_id: 0,
            }),
            role,
            family: Family::Ipv4,
            laddr: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
            lport: if role == Role::Server {
                8080
            } else {
                40000 + rport % 100
            },
            raddr: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)),
            rport,
        }
    }

    pub(crate) fn record(
        id: ConnId,
        closed_by: ClosedBy,
        lifetime_ms: u64,
        fin_wait2_ms: Option<u64>,
    ) -> ConnRecord {
        let mut states = StateTimes::default();
        if let Some(ms) = fin_wait2_ms {
            states = states.with(TcpState::FinWait2, ms * MS);
        }
        ConnRecord {
            end_ns: 0,
            cookie: 1,
            netns: id.netns,
            owner: id.owner,
            role: id.role,
            family: id.family,
            laddr: id.laddr,
            lport: id.lport,
            raddr: id.raddr,
            rport: id.rport,
            closed_by,
            lifetime_ns: lifetime_ms * MS,
            states,
            fin_wait2_end: None,
            time_wait: fin_wait2_ms.is_some(),
            complete: true,
            open_state: None,
        }
    }

    pub(crate) fn live(
        id: ConnId,
        cookie: u64,
        state: TcpState,
        since_ms: u64,
        io: Option<(Option<u64>, Option<u64>)>,
    ) -> LiveSocket {
        LiveSocket {
            id,
            cookie,
            state,
            since_ns: Some(since_ms * MS),
            io: io.map(|(s, r)| LastIo {
                send_ns: s.map(|ms| ms * MS),
                recv_ns: r.map(|ms| ms * MS),
            }),
        }
    }

    #[test]
    fn closes_are_counted_by_side_with_percentiles() {
        let mut a = Aggregator::new(10, 0);
        let client = id(1, Role::Client, 8080);
        for i in 0..100 {
            a.on_opened(&client);
            a.on_record(&record(
                client,
                ClosedBy::Local,
                1000 + i,
                Some(2000 + 10 * i),
            ));
        }
        a.on_record(&record(client, ClosedBy::Remote, 5, None));
        let (key, g) = a.groups().next().unwrap();
        assert_eq!(key.remote(), "10.0.0.2:8080");
        assert_eq!(key.process(), "1/app");
        assert_eq!(g.opened, 100);
        assert_eq!(g.closed, 101);
        assert_eq!(g.closed_by(ClosedBy::Local), 100);
        assert!((g.share(&[ClosedBy::Local]) - 100.0 / 101.0).abs() < 1e-9);
        assert_eq!(g.fin_wait2.count(), 100);
        let p50 = g.fin_wait2.quantile_ms(0.5).unwrap();
        assert!((p50 - 2495.0).abs() <= 25.0, "{p50}");
        let p99 = g.fin_wait2.quantile_ms(0.99).unwrap();
        assert!((p99 - 2980.0).abs() <= 30.0, "{p99}");
        assert_eq!(g.time_wait_closes, 100);
        assert_eq!(g.close_wait.quantile_ms(0.5), None);
    }

    #[test]
    fn servers_group_by_their_port_and_clients_by_the_remote_port() {
        let mut a = Aggregator::new(10, 0);
        for rport in [50001, 50002, 50003] {
            let mut s = id(2, Role::Server, rport);
            s.rport = rport;
            a.on_record(&record(s, ClosedBy::Remote, 10, None));
        }
        assert_eq!(
            a.groups().count(),
            1,
            "one server group for many client ports"
        );
        let (key, g) = a.groups().next().unwrap();
        assert_eq!(key.port, 8080);
        assert_eq!(key.remote(), "10.0.0.2:*");
        assert_eq!(g.closed, 3);
    }

    #[test]
    fn groups_beyond_the_cap_fold_into_other() {
        let mut a = Aggregator::new(2, 0);
        for port in 1..=5 {
            a.on_record(&record(
                id(3, Role::Client, port),
                ClosedBy::Local,
                10,
                None,
            ));
        }
        assert_eq!(a.groups().count(), 2);
        assert_eq!(a.other().closed, 3);
        assert_eq!(a.folded(), 3);
    }

    #[test]
    fn live_sockets_make_the_current_picture() {
        let mut a = Aggregator::new(10, 0);
        let c = id(4, Role::Client, 9000);
        let now = 100_000;
        a.observe(
            [
                // Talked 10 s ago, answered: idle.
                live(
                    c,
                    1,
                    TcpState::Established,
                    0,
                    Some((Some(now - 10_000), Some(now - 9_999))),
                ),
                // Sent 5 s ago, no answer: awaiting.
                live(
                    c,
                    2,
                    TcpState::Established,
                    0,
                    Some((Some(now - 5_000), Some(now - 60_000))),
                ),
                // Sent just now: neither.
                live(c, 3, TcpState::Established, 0, Some((Some(now - 10), None))),
                live(c, 4, TcpState::CloseWait, now - 30_000, None),
                live(c, 5, TcpState::TimeWait, now - 1_000, None),
            ],
            now * MS,
        );
        let g = a.groups().next().unwrap().1;
        assert_eq!(g.now.count(TcpState::Established), 3);
        assert_eq!(g.now.idle, 1);
        assert_eq!(g.now.awaiting, 1);
        assert_eq!(g.now.oldest_awaiting_ns, 5_000 * MS);
        assert_eq!(g.now.idle_time.count(), 3);
        assert!((g.now.idle_time.quantile_ms(0.5).unwrap() - 5_000.0).abs() < 50.0);
        assert_eq!(g.now.oldest_close_wait_ns, 30_000 * MS);
        assert_eq!(g.now.close_wait_sample, vec![(1, 4)]);
        assert_eq!(g.lingering(), 2);
        assert_eq!(g.established_first, Some(3));
        // Observed again with more open: growth is measured from the first look.
        a.observe(
            (10..20).map(|i| live(c, i, TcpState::Established, now, None)),
            (now + 1) * MS,
        );
        let g = a.groups().next().unwrap().1;
        assert_eq!(g.now.count(TcpState::Established), 10);
        assert_eq!(g.established_first, Some(3));
        assert_eq!(g.now.count(TcpState::CloseWait), 0, "replaced, not added");
    }

    #[test]
    fn a_group_born_after_the_first_look_started_from_zero() {
        let mut a = Aggregator::new(10, 0);
        a.observe([], 0);
        let c = id(5, Role::Client, 7000);
        a.on_opened(&c);
        a.observe([live(c, 1, TcpState::Established, 0, None)], MS);
        assert_eq!(a.groups().next().unwrap().1.established_first, Some(0));
    }

    #[test]
    fn records_still_lingering_at_exit_are_not_closes() {
        let mut a = Aggregator::new(10, 0);
        let mut r = record(id(6, Role::Server, 1), ClosedBy::Remote, 10, None);
        r.open_state = Some(TcpState::CloseWait);
        a.on_record(&r);
        assert_eq!(a.groups().count(), 0);
    }

    #[test]
    fn followed_timewait_sockets_are_counted_as_they_come_and_go() {
        let mut a = Aggregator::new(10, 0);
        let s = id(8, Role::Client, 443);
        for _ in 0..3 {
            a.on_timewait_start(&s);
        }
        // An observation replaces the rest of the picture, not these.
        a.observe([live(s, 9, TcpState::TimeWait, 0, None)], MS);
        let g = a.groups().next().unwrap().1;
        assert_eq!(g.now.count(TcpState::TimeWait), 4);
        assert_eq!(g.lingering(), 4);
        a.on_timewait_end(&TimewaitEnd {
            id: s,
            duration_ns: 60_000 * MS,
        });
        a.observe([], 2 * MS);
        let g = a.groups().next().unwrap().1;
        assert_eq!(g.now.count(TcpState::TimeWait), 2);
        assert_eq!(g.time_wait.count(), 1);
    }

    #[test]
    fn timewait_durations_are_recorded() {
        let mut a = Aggregator::new(10, 0);
        let s = id(7, Role::Server, 1);
        a.on_timewait_end(&TimewaitEnd {
            id: s,
            duration_ns: 60_000 * MS,
        });
        let g = a.groups().next().unwrap().1;
        assert_eq!(g.time_wait.count(), 1);
        assert!((g.time_wait.quantile_ms(0.5).unwrap() - 60_000.0).abs() < 600.0);
    }
}
