//! A tracing session feeding the aggregator, the owners of accepted sockets resolved, and the findings drawn from it: what `report`, `top` and `daemon` share.

use std::{collections::HashSet, fmt::Write as _, io};

use foldhash::{HashMap, HashMapExt as _};
use tracer_common::TcpState;

use crate::{
    host::last_io::Asked,
    model::aggregate::{Aggregator, GroupKey, LiveSocket, Windowing},
    model::diagnose::{self, Figure, Finding, Pathology},
    model::select::Selection,
    model::tracker::{ConnId, ConnRecord, LiveConn, TimewaitEnd, Tracker, Wanted},
    session::{Host, LiveHost, LookAnswer, LookRequest, Progress, Session, TraceOptions},
};

/// The /proc scan that names the processes holding accepted sockets runs
/// at most this often (it reads every process's fd table).
const RESOLVE_EVERY_NS: u64 = 1_000_000_000;

/// How an analysis judges time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Judging {
    pub windowing: Windowing,
    /// The windows closing patterns are judged on, longest first.
    pub spans_ns: Vec<u64>,
    /// Remember the live findings seen at every look, not only the last
    /// (a report covers its whole run: requests unanswered for 20 s in the
    /// middle of it are part of it).
    pub keep_seen: bool,
}

/// How far back a live view (the daemon, `top`) judges: closing patterns
/// on the last 5 minutes (enough closes to judge) and the last minute (a
/// pattern that just started), kept in 10-second buckets.
const RECENT_SPANS_NS: [u64; 2] = [300_000_000_000, 60_000_000_000];
const RECENT_BUCKET_NS: u64 = 10_000_000_000;

impl Judging {
    /// The recent past, and only the findings standing now.
    pub fn recent() -> Self {
        Self {
            windowing: Windowing::sliding(RECENT_BUCKET_NS, RECENT_SPANS_NS[0] + RECENT_BUCKET_NS),
            spans_ns: RECENT_SPANS_NS.to_vec(),
            keep_seen: false,
        }
    }

    /// Everything since the start, and every finding seen on the way.
    pub fn whole_run() -> Self {
        Self {
            windowing: Windowing::WHOLE_RUN,
            spans_ns: vec![u64::MAX],
            keep_seen: true,
        }
    }
}

/// A live finding seen during the run, at its worst.
#[derive(Debug, Clone)]
struct Seen {
    finding: Finding,
    first_ns: u64,
    last_ns: u64,
}

pub struct Analysis<H: Host = LiveHost> {
    pub session: Session<H>,
    pub agg: Aggregator,
    started_ns: u64,
    /// The start-up snapshot is in; before that, the picture is partial.
    pub seeded: bool,
    /// Connections whose lifecycle ended and counted (selected), in all.
    pub connections: u64,
    /// Copies of what was fed to the aggregator, for another consumer (the
    /// daemon's metrics); `None` when nobody asked.
    pub tap: Option<Fed>,
    /// Only connections whose owner's cgroup path starts with this count.
    cgroup: Option<String>,
    /// `--comm` and `--remote`.
    selection: Selection,
    judging: Judging,
    max_groups: usize,
    last_resolve_ns: u64,
    /// A look that names holders went out at this time (boot ns).
    resolve_asked_ns: Option<u64>,
    seen: HashMap<(Pathology, GroupKey), Seen>,
    /// The fds of the processes with a CLOSE_WAIT leak, as last looked up.
    fds: std::collections::HashMap<u32, Vec<u32>>,
    /// Connections that ended feed the aggregate (see
    /// [`Self::lookups_only`]).
    aggregates_ended: bool,
}

/// Tracker output passed to the aggregator.
#[derive(Debug, Default)]
pub struct Fed {
    pub opened: Vec<ConnId>,
    pub records: Vec<ConnRecord>,
    pub timewait_starts: Vec<ConnId>,
    pub timewait_ends: Vec<TimewaitEnd>,
}

/// True when `id`'s owner lives in a cgroup under `prefix`.
pub fn in_cgroup(host: &mut impl Host, prefix: &str, id: &ConnId) -> bool {
    let Some(owner) = id.owner else { return false };
    host.container(owner.cgroup_id).is_some_and(
        |crate::host::cgroups::Container { path, .. }| {
            path == prefix
                || path
                    .strip_prefix(prefix)
                    .is_some_and(|rest| rest.starts_with('/'))
        },
    )
}

/// The Kubernetes pod of the owner of a socket with this cgroup, if the
/// node names it.
pub fn pod_of(host: &mut impl Host, cgroup_id: u64) -> Option<crate::model::event::PodName> {
    (cgroup_id != 0).then(|| host.pod(cgroup_id)).flatten()
}

/// True when `id`'s owner is in a pod `--namespace`/`--pod` select.
pub fn in_pods(host: &mut impl Host, selection: &Selection, id: &ConnId) -> bool {
    let pod = id.owner.and_then(|o| pod_of(host, o.cgroup_id));
    selection.admits_pod(pod.as_ref().map(|p| (p.namespace.as_str(), p.pod.as_str())))
}

impl Analysis<LiveHost> {
    pub fn start(
        trace: &TraceOptions,
        max_groups: usize,
        judging: Judging,
    ) -> anyhow::Result<Self> {
        let host = LiveHost::start(&trace.load, &trace.node_root, true)?;
        Ok(Self::on(host, trace, max_groups, judging))
    }
}

impl<H: Host> Analysis<H> {
    /// An analysis of what `host` hands over (the kernel, a recording).
    pub fn on(host: H, trace: &TraceOptions, max_groups: usize, judging: Judging) -> Self {
        // TIME_WAIT is followed to its end: its duration is part of the picture.
        let tracker = Tracker::new(trace.max_sockets)
            .follow_timewait()
            .with_openings();
        Self::new(
            Session::new(host, tracker, true),
            trace,
            max_groups,
            judging,
        )
    }

    /// An analysis of `session` (whose tracker should follow TIME_WAIT).
    pub fn new(
        mut session: Session<H>,
        trace: &TraceOptions,
        max_groups: usize,
        judging: Judging,
    ) -> Self {
        let started_ns = session.host.now_ns();
        Self {
            session,
            agg: Aggregator::new(max_groups, started_ns, judging.windowing),
            started_ns,
            seeded: false,
            connections: 0,
            tap: None,
            cgroup: trace.cgroup.clone(),
            selection: trace.selection.clone(),
            judging,
            max_groups,
            last_resolve_ns: 0,
            resolve_asked_ns: None,
            seen: HashMap::new(),
            fds: std::collections::HashMap::new(),
            aggregates_ended: true,
        }
    }

    /// Keeps only what decides the lookups asked of the host (a
    /// recording's analysis: its replay aggregates the rest). The ended
    /// connections are selected and counted but not aggregated: no
    /// finding drawn from them asks for anything. A CLOSE_WAIT leak, whose
    /// fds are looked up, is judged on the sockets alive at each look,
    /// which are still observed. (Past `max_groups` groups, which ones are
    /// folded into the rest can differ from the replay's, and a leak its
    /// replay finds may then lack its fds.)
    #[must_use]
    pub fn lookups_only(mut self) -> Self {
        self.aggregates_ended = false;
        // Nothing is shown: the findings seen on the way need no keeping.
        self.judging.keep_seen = false;
        self
    }

    fn admitted(&mut self, id: &ConnId) -> bool {
        if !self.selection.admits_pid(id.owner.map(|o| o.pid))
            || !self
                .selection
                .admits(id.owner.as_ref().map(|o| &o.comm), id.raddr)
        {
            return false;
        }
        if self.selection.wants_pods() && !in_pods(&mut self.session.host, &self.selection, id) {
            return false;
        }
        match &self.cgroup {
            Some(prefix) => in_cgroup(&mut self.session.host, prefix, id),
            None => true,
        }
    }

    /// One step of the session, its results fed to the aggregator. The
    /// first look at what is open is asked once the snapshot is in; a
    /// look's answer is applied as it comes.
    pub async fn step(&mut self) -> io::Result<Progress> {
        let progress = self.session.step().await?;
        self.feed();
        Ok(match progress {
            Progress::Seeded { .. } => {
                self.seeded = true;
                self.look();
                progress
            }
            Progress::Answered(answer) => {
                if self.apply(*answer) {
                    Progress::Looked
                } else {
                    Progress::Drained
                }
            }
            other => other,
        })
    }

    fn feed(&mut self) {
        let now = self.session.host.now_ns();
        let tracker = &mut self.session.tracker;
        let (opened, records, starts, ends) = (
            tracker.take_opened(),
            tracker.take_ready(),
            tracker.take_timewait_starts(),
            tracker.take_timewait_ends(),
        );
        let opened: Vec<ConnId> = opened.into_iter().filter(|id| self.admitted(id)).collect();
        let records: Vec<ConnRecord> = records
            .into_iter()
            .filter(|r| self.admitted(&r.id()))
            .collect();
        let starts: Vec<ConnId> = starts.into_iter().filter(|id| self.admitted(id)).collect();
        let ends: Vec<TimewaitEnd> = ends.into_iter().filter(|e| self.admitted(&e.id)).collect();
        self.connections += records.len() as u64;
        if self.aggregates_ended {
            for id in &opened {
                self.agg.on_opened(id, now);
            }
            for record in &records {
                self.agg.on_record(record);
            }
            // Starts first: a socket can start and end within one batch.
            for id in &starts {
                self.agg.on_timewait_start(id, now);
            }
            for end in &ends {
                self.agg.on_timewait_end(end, now);
            }
        }
        if let Some(tap) = &mut self.tap {
            tap.opened.extend(opened);
            tap.records.extend(records);
            tap.timewait_starts.extend(starts);
            tap.timewait_ends.extend(ends);
        }
    }

    /// The live sockets that count (the cgroup filter applied), but the
    /// followed TIME_WAIT ones: those are counted as they start and end.
    pub fn live(&mut self) -> Vec<LiveConn> {
        let live: Vec<LiveConn> = self.session.tracker.live().collect();
        live.into_iter().filter(|l| self.admitted(&l.id)).collect()
    }

    /// [`Self::live`] without the accepted sockets whose holder has not
    /// been looked for yet: they would be counted under the listener's
    /// process. Once looked for and not found (waiting in the accept
    /// queue: the listener's indeed), they count.
    pub fn live_resolved(&mut self) -> Vec<LiveConn> {
        let tried = self.last_resolve_ns;
        let mut live = self.live();
        live.retain(|l| l.owner_known || l.since_ns.is_some_and(|since| since <= tried));
        live
    }

    /// Asks the host for a look at what is alive now: the kernel's last
    /// send/receive time for each open connection, and the processes that
    /// hold accepted sockets nobody has been seen with (a prefork server's
    /// worker accepted them, not the listener's creator). The answer comes
    /// through [`Self::step`] ([`Progress::Looked`]); a look still out
    /// makes this one wait for the next turn.
    pub fn look(&mut self) {
        let request = self.look_request(false);
        let now = self.session.host.now_ns();
        let resolving = !request.holders_of.is_empty();
        if self.session.host.ask_look(request) && resolving {
            self.resolve_asked_ns = Some(now);
        }
    }

    /// What a look asks: the namespaces of the open connections, and the
    /// holders of provisional sockets if it is time (or `resolve_now`).
    fn look_request(&mut self, resolve_now: bool) -> LookRequest {
        let now = self.session.host.now_ns();
        let provisional: HashMap<u64, u32> = self.session.tracker.provisional().collect();
        let sockets = self
            .session
            .tracker
            .live()
            .filter(|l| {
                matches!(l.state, TcpState::Established | TcpState::CloseWait)
                    && (l.state == TcpState::Established || provisional.contains_key(&l.cookie))
            })
            .map(|l| Asked {
                netns: l.id.netns,
                family: l.id.family,
                socket: Wanted {
                    cookie: l.cookie,
                    laddr: l.id.laddr,
                    lport: l.id.lport,
                    raddr: l.id.raddr,
                    rport: l.id.rport,
                },
            })
            .collect();
        let resolve = resolve_now || now.saturating_sub(self.last_resolve_ns) >= RESOLVE_EVERY_NS;
        LookRequest {
            sockets,
            holders_of: if resolve {
                provisional.into_keys().collect()
            } else {
                HashSet::new()
            },
            fds_of: Vec::new(),
            fds_only: false,
        }
    }

    /// Applies a look's answer: names holders, redraws the picture of what
    /// is alive, and keeps fds. True when the look is complete; false when
    /// a CLOSE_WAIT leak stands whose fds were asked for in a further look
    /// (so its finding is never shown without them).
    fn apply(&mut self, answer: LookAnswer) -> bool {
        if answer.fds_only {
            self.fds = answer.fds;
            return true;
        }
        let now = self.session.host.now_ns();
        if let Some(asked) = self.resolve_asked_ns.take() {
            self.last_resolve_ns = asked;
            let provisional: HashMap<u64, u32> = self.session.tracker.provisional().collect();
            if !provisional.is_empty() {
                self.resolve(&provisional, &answer);
                self.feed();
            }
        }
        let seen = &answer.seen;
        let live = self.live();
        let live = live.into_iter().map(|l| LiveSocket {
            id: l.id,
            owner_known: l.owner_known,
            cookie: l.cookie,
            state: l.state,
            since_ns: l.since_ns,
            io: seen.get(&l.cookie).and_then(|s| s.io),
        });
        self.agg.observe(live, now);
        self.agg.expire(now);
        if self.judging.keep_seen {
            self.remember_live_findings(now);
        }
        let leaks = self.leaks(now);
        if leaks.is_empty() {
            self.fds.clear();
            return true;
        }
        let request = LookRequest {
            fds_of: leaks,
            fds_only: true,
            ..LookRequest::default()
        };
        !self.session.host.ask_look(request)
    }

    /// The processes with a CLOSE_WAIT leak standing now, and a sample of
    /// their CLOSE_WAIT sockets (netns, cookie) to find the fds of.
    fn leaks(&self, now: u64) -> Vec<(u32, Vec<(u32, u64)>)> {
        let mut leaks: Vec<(u32, Vec<(u32, u64)>)> =
            diagnose::diagnose(&self.agg, &self.judging.spans_ns, now)
                .into_iter()
                .filter(|f| f.pathology == Pathology::CloseWaitLeak)
                .filter_map(|f| {
                    let sample = self.agg.group_of(&f.key)?.now.close_wait_sample.clone();
                    Some((f.who.pid?, sample))
                })
                .collect();
        leaks.sort_unstable();
        leaks.dedup_by_key(|(pid, _)| *pid);
        leaks
    }

    /// Names the holders of provisional sockets from their inodes.
    fn resolve(&mut self, provisional: &HashMap<u64, u32>, answer: &LookAnswer) {
        let seen = &answer.seen;
        let holders = &answer.holders;
        let listed: Vec<(u64, Option<u32>)> = self
            .session
            .tracker
            .live()
            .filter(|l| provisional.contains_key(&l.cookie))
            .map(|l| (l.cookie, l.id.owner.map(|o| o.pid)))
            .collect();
        for (cookie, listener_pid) in listed {
            let Some(inode) = seen.get(&cookie).map(|s| s.inode) else {
                continue;
            };
            let Some(found) = holders.get(&inode) else {
                continue;
            };
            // Shared across a fork: the process that is not the listener's
            // creator is the one that accepted it.
            let owner = found
                .iter()
                .find(|o| Some(o.pid) != listener_pid)
                .or_else(|| found.first());
            if let Some(&owner) = owner {
                self.session.tracker.resolve(cookie, owner);
            }
        }
    }

    /// Keeps the live findings of this look, each at its worst so far.
    fn remember_live_findings(&mut self, now: u64) {
        let live: Vec<Finding> = diagnose::diagnose(&self.agg, &self.judging.spans_ns, now)
            .into_iter()
            .filter(|f| f.pathology.is_live())
            .collect();
        for f in live {
            let key = (f.pathology, f.key);
            match self.seen.get_mut(&key) {
                Some(seen) => {
                    seen.last_ns = now;
                    if f.magnitude() >= seen.finding.magnitude() {
                        seen.finding = f;
                    }
                }
                None => {
                    self.seen.insert(
                        key,
                        Seen {
                            finding: f,
                            first_ns: now,
                            last_ns: now,
                        },
                    );
                }
            }
        }
    }

    /// Detaches and takes in the last of it; the aggregate then describes
    /// the whole run, and what is still alive at its end.
    pub async fn stop(&mut self) -> io::Result<()> {
        self.session.stop().await?;
        self.feed();
        // A last look names the holders of accepted sockets; then open
        // connections whose opening was seen count as opened.
        let request = self.look_request(true);
        self.resolve_asked_ns = Some(self.session.host.now_ns());
        if let Some(answer) = self.session.host.look_now(request).await {
            self.apply_now(answer).await;
        }
        self.session.tracker.finish_opened();
        self.feed();
        Ok(())
    }

    /// [`Self::apply`], with the fds of leaks looked up at once.
    async fn apply_now(&mut self, answer: LookAnswer) {
        if self.apply(answer) {
            return;
        }
        // The further look was asked; the session is stopped, so it is
        // waited for here.
        for event in self.session.host.settle().await {
            if let super::host::Event::Looked(fds) = event {
                self.apply(fds);
            }
        }
    }

    /// Starts the picture afresh at `now_ns` (a replay's `--since`): the
    /// tracker keeps what it follows, the aggregate and the findings seen
    /// so far go.
    pub fn restart(&mut self, now_ns: u64) {
        self.agg = Aggregator::new(self.max_groups, now_ns, self.judging.windowing);
        self.started_ns = now_ns;
        self.seen.clear();
    }

    /// When the window judged started (boot ns).
    pub fn started_ns(&self) -> u64 {
        self.started_ns
    }

    /// When a live finding was first and last seen in the run (boot ns);
    /// `None` for one judged on closes over the whole window.
    pub fn seen_span(&self, f: &Finding) -> Option<(u64, u64)> {
        self.seen
            .get(&(f.pathology, f.key))
            .map(|s| (s.first_ns, s.last_ns))
    }

    /// The host's boot clock now.
    pub fn now_ns(&mut self) -> u64 {
        self.session.host.now_ns()
    }

    pub fn window_s(&mut self) -> f64 {
        self.now_ns().saturating_sub(self.started_ns) as f64 / 1e9
    }

    /// The findings now: closing patterns over the judged windows, the
    /// live ones on the sockets alive now (and, for a whole-run judging,
    /// the worst seen at any look), with the file descriptors of leaked
    /// CLOSE_WAIT sockets looked up for the process that holds them.
    pub fn findings(&mut self) -> Vec<Finding> {
        let now = self.session.host.now_ns();
        let mut findings = diagnose::diagnose(&self.agg, &self.judging.spans_ns, now);
        if self.judging.keep_seen {
            for seen in self.seen.values() {
                let here = findings.iter().position(|f| {
                    f.pathology == seen.finding.pathology && f.key == seen.finding.key
                });
                match here {
                    Some(i) if findings[i].magnitude() >= seen.finding.magnitude() => {}
                    Some(i) => findings[i] = seen.finding.clone(),
                    None => {
                        let mut f = seen.finding.clone();
                        let _ = write!(
                            f.summary,
                            " (Seen from {:.0}s to {:.0}s into the run; over by its end.)",
                            seen.first_ns.saturating_sub(self.started_ns) as f64 / 1e9,
                            seen.last_ns.saturating_sub(self.started_ns) as f64 / 1e9,
                        );
                        findings.push(f);
                    }
                }
            }
            diagnose::sort(&mut findings);
        }
        for f in findings
            .iter_mut()
            .filter(|f| f.pathology == Pathology::CloseWaitLeak)
        {
            if let Some(fds) = f.who.pid.and_then(|pid| self.fds.get(&pid))
                && !fds.is_empty()
            {
                f.summary = f.summary.replacen(
                    " in CLOSE_WAIT,",
                    &format!(" in CLOSE_WAIT (fds {}),", fd_list(fds)),
                    1,
                );
                f.evidence.push(("fds".into(), Figure::Fds(fds.clone())));
            }
        }
        for f in &mut findings {
            if f.who.pod.is_none() {
                f.who.pod = self.pod_of_pid(&f.key, f.who.pid);
            }
        }
        findings
    }

    /// The pod of a process of a group, if the node names it.
    fn pod_of_pid(
        &mut self,
        key: &GroupKey,
        pid: Option<u32>,
    ) -> Option<crate::model::event::PodName> {
        let group = if key.is_other() {
            Some(self.agg.other())
        } else {
            self.agg.group_of(key)
        };
        let cgroup = group?.procs.cgroup_of(pid?)?;
        pod_of(&mut self.session.host, cgroup)
    }

    /// The Kubernetes pod of each group's busiest process, where the node
    /// names one.
    pub fn pods(&mut self) -> std::collections::HashMap<GroupKey, crate::model::event::PodName> {
        let mains: Vec<(GroupKey, Option<u32>)> = self
            .agg
            .groups()
            .map(|(k, g)| (*k, g.procs.main()))
            .collect();
        mains
            .into_iter()
            .filter_map(|(key, pid)| Some((key, self.pod_of_pid(&key, pid)?)))
            .collect()
    }
}

/// `3, 5, 7` (at most 8, then `…`).
fn fd_list(fds: &[u32]) -> String {
    let mut text: Vec<String> = fds.iter().take(8).map(u32::to_string).collect();
    if fds.len() > 8 {
        text.push("…".into());
    }
    text.join(", ")
}
