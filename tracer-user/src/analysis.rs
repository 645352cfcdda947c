//! A tracing session feeding the aggregator, and the findings drawn from it: what `report` and `top` share.

use std::io;

use tracer_common::TcpState;

use crate::{
    aggregate::{Aggregator, LiveSocket},
    cli::{AnalysisArgs, TraceArgs},
    clock,
    diagnose::{Figure, Finding, Pathology, diagnose},
    session::{Progress, Session},
    snapshot,
    tracker::Tracker,
    watch::load_options,
};

pub struct Analysis {
    pub session: Session,
    pub agg: Aggregator,
    started_ns: u64,
    /// The start-up snapshot is in; before that, the picture is partial.
    pub seeded: bool,
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
        })
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
        for id in tracker.take_opened() {
            self.agg.on_opened(&id);
        }
        for record in tracker.take_ready() {
            self.agg.on_record(&record);
        }
        for end in tracker.take_timewait_ends() {
            self.agg.on_timewait_end(&end);
        }
    }

    /// Refreshes the aggregate's picture of what is alive now, with the
    /// kernel's last send/receive time for each open connection.
    pub fn observe(&mut self) {
        let tracer = &self.session.tracer;
        let live: Vec<LiveSocket> = self
            .session
            .tracker
            .live()
            .map(|l| LiveSocket {
                id: l.id,
                cookie: l.cookie,
                state: l.state,
                since_ns: l.since_ns,
                io: (l.state == TcpState::Established)
                    .then(|| tracer.last_io(l.cookie))
                    .flatten(),
            })
            .collect();
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
