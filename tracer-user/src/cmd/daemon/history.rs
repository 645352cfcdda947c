//! The daemon's side of its history: gathers each settled minute (the groups' slices, the tracer's counters), the findings' lives and the connections worth keeping whole, and hands them to the store's thread once a minute.

use std::{
    collections::{BTreeMap, HashSet},
    sync::atomic::Ordering,
    time::SystemTime,
};

use crate::{
    cmd::daemon::metrics::HistoryLosses,
    host::clock::WallClock,
    host::history::{Batch, HistoryWriter, Kept, MinuteCounts},
    model::aggregate::{Aggregator, GroupKey},
    model::diagnose::{Finding, Pathology},
    model::event::PodName,
    model::history::{
        CONNECTIONS_PER_MINUTE, Life, Lives, MINUTE_NS, OPEN_PER_LIFE, OPEN_PER_LOOK, Slice,
        Slicer, StoredLife, notable, pick_open,
    },
    model::tracker::{ConnRecord, LiveConn},
    output::{Format, connections::ConnectionWriter},
};

/// The tracer's totals at some moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    pub events: u64,
    pub dropped: u64,
    pub missed: u64,
    pub connections: u64,
}

fn unix_ms(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// The Kubernetes pod of a cgroup (by id), when the node names it.
pub type Pods<'a> = dyn FnMut(u64) -> Option<PodName> + 'a;

/// Each slice's pod: its group's busiest process's.
fn name_pods(due: &mut [(u64, Vec<Slice>)], agg: &Aggregator, pod: &mut Pods) {
    for s in due.iter_mut().flat_map(|(_, slices)| slices.iter_mut()) {
        let group = if s.key.is_other() {
            Some(agg.other())
        } else {
            agg.group_of(&s.key)
        };
        s.pod = group
            .and_then(|g| g.procs.cgroup_of(g.procs.main()?))
            .and_then(&mut *pod);
    }
}

pub struct History {
    writer: HistoryWriter,
    slicer: Slicer,
    lives: Lives,
    /// This run's start (unix ms): the findings' lives are numbered in it.
    run_ms: i64,
    /// The totals at the first tick of each minute not cut yet.
    marks: BTreeMap<u64, Totals>,
    /// Connections kept whole, by the minute they ended in, not sent yet.
    kept: BTreeMap<u64, Vec<Kept>>,
    /// Of those, the ones beyond a minute's share.
    skipped: BTreeMap<u64, u64>,
    /// And in all.
    not_kept: u64,
    /// The open connections kept for each finding standing.
    open_kept: BTreeMap<(Pathology, GroupKey), OpenKept>,
}

/// The open connections kept for one life of a finding.
struct OpenKept {
    life: u64,
    /// When they were last looked for.
    looked_ns: u64,
    cookies: HashSet<u64>,
}

impl History {
    pub fn new(writer: HistoryWriter, start_ns: u64) -> Self {
        Self {
            writer,
            slicer: Slicer::new(start_ns),
            lives: Lives::default(),
            run_ms: unix_ms(SystemTime::now()),
            marks: BTreeMap::new(),
            kept: BTreeMap::new(),
            skipped: BTreeMap::new(),
            not_kept: 0,
            open_kept: BTreeMap::new(),
        }
    }

    /// The store's size and what it lost, for the metrics.
    pub fn losses(&self) -> HistoryLosses {
        let stats = &self.writer.stats;
        HistoryLosses {
            bytes: stats.bytes.load(Ordering::Relaxed),
            batches_dropped: stats.dropped.load(Ordering::Relaxed),
            write_failures: stats.failures.load(Ordering::Relaxed),
            connections_not_kept: self.not_kept,
        }
    }

    /// Finished connections: the notable ones are kept, as `watch` prints
    /// them (with the pod `pod` names for a cgroup).
    pub fn on_records(&mut self, records: &[ConnRecord], clock: &WallClock, pod: &mut Pods) {
        for r in records {
            if let Some(reason) = notable(r) {
                self.keep(r, reason.into(), clock, pod);
            }
        }
    }

    /// The findings standing whose open connections are due to be kept:
    /// a new one at once, then a look a minute while it stands.
    pub fn open_wanted(&mut self, now_ns: u64) -> Vec<((Pathology, GroupKey), u64)> {
        let standing: BTreeMap<(Pathology, GroupKey), u64> = self.lives.standing().collect();
        // A life over (or a new life of the same finding) starts afresh.
        self.open_kept
            .retain(|k, o| standing.get(k).is_some_and(|&life| life == o.life));
        standing
            .into_iter()
            .filter(|(k, _)| {
                self.open_kept.get(k).is_none_or(|o| {
                    o.cookies.len() < OPEN_PER_LIFE
                        && now_ns.saturating_sub(o.looked_ns) >= MINUTE_NS
                })
            })
            .collect()
    }

    /// Keeps the connections still open behind the findings `wanted`
    /// (from [`Self::open_wanted`], with their lives' numbers), picked from
    /// `live`, their records drawn by `record` at `now_ns`.
    pub fn keep_open(
        &mut self,
        wanted: &[((Pathology, GroupKey), u64)],
        live: &[LiveConn],
        record: impl Fn(u64) -> Option<ConnRecord>,
        now_ns: u64,
        clock: &WallClock,
        pod: &mut Pods,
    ) {
        for &(k, life) in wanted {
            let open = self.open_kept.entry(k).or_insert_with(|| OpenKept {
                life,
                looked_ns: now_ns,
                cookies: HashSet::new(),
            });
            open.looked_ns = now_ns;
            let room = OPEN_PER_LOOK.min(OPEN_PER_LIFE.saturating_sub(open.cookies.len()));
            let picked = pick_open(live, (k.0, &k.1), &open.cookies, room);
            open.cookies.extend(&picked);
            let reason = format!("open_at_{}", k.0.id());
            for r in picked.into_iter().filter_map(&record) {
                self.keep(&r, reason.clone(), clock, pod);
            }
        }
    }

    /// One connection kept whole, in the minute it ended in (or was seen
    /// open in), within the minute's share.
    fn keep(&mut self, r: &ConnRecord, reason: String, clock: &WallClock, pod: &mut Pods) {
        let minute = r.end_ns / MINUTE_NS;
        let kept = self.kept.entry(minute).or_default();
        if kept.len() >= CONNECTIONS_PER_MINUTE {
            *self.skipped.entry(minute).or_default() += 1;
            self.not_kept += 1;
            return;
        }
        let when = clock.wall(r.end_ns);
        let mut line = ConnectionWriter::new(Vec::new(), Format::Json);
        let named = r.owner.and_then(|o| pod(o.cgroup_id));
        if line.write(r, when, named.as_ref()).is_err() {
            return;
        }
        let Ok(record) = String::from_utf8(line.into_inner()) else {
            return;
        };
        kept.push(Kept {
            end_ms: unix_ms(when),
            reason,
            key: GroupKey::of(&r.id()),
            record: record.trim_end().to_string(),
        });
    }

    /// After an analysis: the picture of the minute that just ended, and
    /// the findings' lives.
    pub fn on_analysis(
        &mut self,
        agg: &Aggregator,
        findings: &[Finding],
        standing: impl Fn(&(Pathology, GroupKey)) -> bool,
        now_ns: u64,
    ) {
        self.slicer.on_look(agg, now_ns);
        self.lives.update(findings, standing, now_ns);
    }

    /// Once a second: the totals at the start of a minute, and the minutes
    /// settled since the last call sent to the store.
    pub fn tick(
        &mut self,
        agg: &Aggregator,
        totals: Totals,
        now_ns: u64,
        clock: &WallClock,
        pod: &mut Pods,
    ) {
        self.marks.entry(now_ns / MINUTE_NS).or_insert(totals);
        let mut due = self.slicer.due(agg, now_ns);
        if !due.is_empty() {
            name_pods(&mut due, agg, pod);
            self.send(due, totals, clock);
        }
    }

    /// The daemon stops: every minute so far (the last one partial), and
    /// the standing findings end.
    pub fn finish(
        mut self,
        agg: &Aggregator,
        totals: Totals,
        now_ns: u64,
        clock: &WallClock,
        pod: &mut Pods,
    ) {
        self.marks.entry(now_ns / MINUTE_NS + 1).or_insert(totals);
        self.lives.end_all();
        let mut due = self.slicer.rest(agg, now_ns);
        name_pods(&mut due, agg, pod);
        self.send(due, totals, clock);
        say(self.writer.finish());
    }

    /// Prints what the writer thread had to say since the last look.
    pub fn say_warnings(&self) {
        say(self.writer.take_warnings());
    }

    fn send(&mut self, due: Vec<(u64, Vec<Slice>)>, totals: Totals, clock: &WallClock) {
        let mut batch = Batch {
            now_ms: unix_ms(SystemTime::now()),
            ..Batch::default()
        };
        let last_cut = due.last().map(|(m, _)| *m);
        for (minute, slices) in due {
            let start = self.marks.get(&minute).copied();
            // The totals at the next minute's first tick, or now.
            let end = self.marks.get(&(minute + 1)).copied().unwrap_or(totals);
            let counts = start.map_or_else(Totals::default, |start| Totals {
                events: end.events.saturating_sub(start.events),
                dropped: end.dropped.saturating_sub(start.dropped),
                missed: end.missed.saturating_sub(start.missed),
                connections: end.connections.saturating_sub(start.connections),
            });
            batch.minutes.push((
                MinuteCounts {
                    start_ms: unix_ms(clock.wall(minute * MINUTE_NS)),
                    events: counts.events,
                    dropped: counts.dropped,
                    missed: counts.missed,
                    connections: counts.connections,
                    kept_skipped: self.skipped.remove(&minute).unwrap_or(0),
                },
                slices,
            ));
            batch
                .kept
                .extend(self.kept.remove(&minute).unwrap_or_default());
            self.marks.retain(|&m, _| m > minute);
        }
        // Connections that ended in a minute already cut (they arrived
        // late) go with this batch; their count beyond the share is lost
        // with nothing to add it to, so they are kept in the last minute's.
        if let Some(last) = last_cut {
            let late: Vec<u64> = self.kept.range(..=last).map(|(m, _)| *m).collect();
            for m in late {
                batch.kept.extend(self.kept.remove(&m).unwrap_or_default());
            }
            let skipped: u64 = self.skipped.range(..=last).map(|(_, n)| *n).sum();
            self.skipped.retain(|&m, _| m > last);
            if let Some((counts, _)) = batch.minutes.last_mut() {
                counts.kept_skipped += skipped;
            }
        }
        let run_ms = self.run_ms;
        batch.lives = self
            .lives
            .take()
            .into_iter()
            .map(|l: Life| StoredLife {
                run_ms,
                life: l.id,
                start_ms: unix_ms(clock.wall(l.start_ns)),
                last_ms: unix_ms(clock.wall(l.last_ns)),
                end_ms: l.end_ns.map(|ns| unix_ms(clock.wall(ns))),
                peak: (&l.peak).into(),
            })
            .collect();
        self.writer.send(batch);
    }
}

/// The history writer's warnings, on stderr as the daemon's others.
fn say(warnings: Vec<String>) {
    for w in warnings {
        eprintln!("tcplinger: history: {w}");
    }
}
