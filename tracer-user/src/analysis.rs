//! A tracing session feeding the aggregator, and the findings drawn from it: what `report` and `top` share.

use std::io;

use tracer_common::TcpState;

use crate::{
    aggregate::{Aggregator, LiveSocket},
    cgroups::Cgroups,
    cli::{AnalysisArgs, TraceArgs},
    clock,
    diagnose::{Figure, Finding, Pathology, diagnose},
    last_io::IoReader,
    select::Selection,
    session::{Progress, Session},
    snapshot,
    tracker::{ConnId, ConnRecord, LiveConn, TimewaitEnd, Tracker},
    watch::load_options,
};

pub struct Analysis {
    pub session: Session,
    pub agg: Aggregator,
    started_ns: u64,
    /// The start-up snapshot is in; before that, the picture is partial.
    pub seeded: bool,
    /// Copies of what was fed to the aggregator, for another consumer (the
    /// daemon's metrics); `None` when nobody asked.
    pub tap: Option<Fed>,
    /// Only connections whose owner's cgroup path starts with this count.
    cgroup: Option<(String, Cgroups)>,
    /// `--comm` and `--remote`.
    selection: Selection,
    io: IoReader,
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
fn in_cgroup(cgroups: &mut Cgroups, prefix: &str, id: &ConnId) -> bool {
    let Some(owner) = id.owner else { return false };
    cgroups.lookup(owner.cgroup_id).is_some_and(|c| {
        c.path == prefix
            || c.path
                .strip_prefix(prefix)
                .is_some_and(|rest| rest.starts_with('/'))
    })
}

impl Analysis {
    pub fn start(trace: &TraceArgs, analysis: &AnalysisArgs) -> anyhow::Result<Self> {
        let options = load_options(trace)?;
        // TIME_WAIT is followed to its end: its duration is part of the picture.
        let tracker = Tracker::new(trace.max_sockets).follow_timewait();
        let session = Session::start(&options, tracker, true)?;
        let started_ns = clock::boot_ns();
        Ok(Self {
            session,
            agg: Aggregator::new(analysis.max_groups, started_ns),
            started_ns,
            seeded: false,
            tap: None,
            cgroup: None,
            selection: trace.select.selection(),
            io: IoReader::default(),
        })
    }

    /// Counts only connections owned by processes in cgroups under `prefix`.
    pub fn only_cgroup(&mut self, prefix: String) {
        self.cgroup = Some((prefix, Cgroups::new()));
    }

    fn admitted(&mut self, id: &ConnId) -> bool {
        if !self
            .selection
            .admits(id.owner.as_ref().map(|o| &o.comm), id.raddr)
        {
            return false;
        }
        match &mut self.cgroup {
            Some((prefix, cgroups)) => in_cgroup(cgroups, prefix, id),
            None => true,
        }
    }

    /// One step of the session, its results fed to the aggregator. The
    /// first look at what is open happens once the snapshot is in.
    pub async fn step(&mut self) -> io::Result<Progress> {
        let progress = self.session.step().await?;
        self.feed();
        if let Progress::Seeded { .. } = progress {
            self.seeded = true;
            self.observe();
        }
        Ok(progress)
    }

    fn feed(&mut self) {
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
        for id in &opened {
            self.agg.on_opened(id);
        }
        for record in &records {
            self.agg.on_record(record);
        }
        // Starts first: a socket can start and end within one batch.
        for id in &starts {
            self.agg.on_timewait_start(id);
        }
        for end in &ends {
            self.agg.on_timewait_end(end);
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

    /// Refreshes the aggregate's picture of what is alive now, with the
    /// kernel's last send/receive time for each open connection.
    pub fn observe(&mut self) {
        let live = self.live();
        let io = self.io.read(
            live.iter()
                .filter(|l| l.state == TcpState::Established)
                .map(|l| (l.id.netns, l.id.family)),
        );
        let live = live.into_iter().map(|l| LiveSocket {
            id: l.id,
            cookie: l.cookie,
            state: l.state,
            since_ns: l.since_ns,
            io: io.get(&l.cookie).copied(),
        });
        self.agg.observe(live, clock::boot_ns());
    }

    /// Detaches and takes in the last of it; the aggregate then describes
    /// the whole run, and what is still alive at its end.
    pub async fn stop(&mut self) -> io::Result<()> {
        self.session.stop().await?;
        self.feed();
        self.observe();
        Ok(())
    }

    pub fn window_s(&self) -> f64 {
        clock::boot_ns().saturating_sub(self.started_ns) as f64 / 1e9
    }

    /// The findings now, with the file descriptors of leaked CLOSE_WAIT
    /// sockets looked up for the process that holds them.
    pub fn findings(&self) -> Vec<Finding> {
        let mut findings = diagnose(self.agg.groups(), self.window_s());
        for f in findings
            .iter_mut()
            .filter(|f| f.pathology == Pathology::CloseWaitLeak)
        {
            let sample = self
                .agg
                .groups()
                .find(|(k, _)| **k == f.key)
                .map(|(_, g)| g.now.close_wait_sample.clone())
                .unwrap_or_default();
            if let Some(pid) = f.key.pid {
                let fds = snapshot::close_wait_fds(pid, &sample);
                if !fds.is_empty() {
                    f.summary = f.summary.replacen(
                        " in CLOSE_WAIT,",
                        &format!(" in CLOSE_WAIT (fds {}),", fd_list(&fds)),
                        1,
                    );
                    f.evidence.push(("fds", Figure::Fds(fds)));
                }
            }
        }
        findings
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
