//! Unfolds the kernel's per-socket step logs into the records the tracker takes, each step exactly once: steps read from live entries while a socket lives, the rest when its log is written to the ring.
//!
//! The kernel logs a socket's steps in its map entry and writes the log
//! to the ring when the full socket's life ends (or the log fills, which
//! starts the entry's next *generation*). Userspace reads every live entry
//! now and then, for what is open now. A step can so be seen twice, once
//! in a read and again in the written log; the unfolder remembers, per
//! socket, which generation and how many of its steps it delivered.
//!
//! The order of a read matters: take the read, drain the ring, then apply
//! the read ([`Unfolder::apply_read`]). Every
//! log written before the read was taken is then delivered first; a log
//! drained since the last read was applied is noted, and a read's copy of
//! it ignored (a read may copy an entry in the instant between its log's
//! submission and its reset, on another CPU).

use std::collections::HashMap;

use crate::model::event::{Record, StepLog};

/// Delivers each logged step once; see the module's description.
#[derive(Debug, Default)]
pub struct Unfolder {
    /// Cookie -> the generation of its log read last, and how many of its
    /// steps were delivered. Only sockets in the last read are here.
    delivered: HashMap<u64, (u32, usize)>,
    /// Cookie -> the newest generation of its logs drained since the last
    /// read was applied: a read's copy of those is stale.
    written_since_read: HashMap<u64, u32>,
    /// `--pid`: only sockets of these owners (the kernel applies it to the
    /// logs it writes; reads of live entries see every socket).
    pids: Vec<u32>,
    /// Logs that did not follow on from what was delivered of their socket
    /// (its entry was recycled and made anew): their steps were delivered
    /// from the start of what was left.
    discontinuities: u64,
}

impl Unfolder {
    pub fn new(pids: Vec<u32>) -> Self {
        Self {
            pids,
            ..Self::default()
        }
    }

    /// A log the kernel wrote to the ring: its steps not yet delivered go
    /// to `each`, in order.
    pub fn written(&mut self, log: &StepLog, each: &mut dyn FnMut(&Record)) {
        let cookie = log.cookie();
        let newest = self
            .written_since_read
            .entry(cookie)
            .or_insert(log.generation);
        *newest = (*newest).max(log.generation);
        let done = match self.delivered.remove(&cookie) {
            Some((generation, done)) if generation == log.generation => done,
            _ => 0,
        };
        self.deliver(log, done, each);
    }

    /// The read taken could not be applied (the ring was not drained after
    /// it): it is dropped; the next one, a second later, makes up for it.
    /// The logs noted so far are forgotten, which bounds what is kept while
    /// the ring stays full.
    pub fn read_dropped(&mut self) {
        self.written_since_read.clear();
    }

    /// Whether a live entry read holds steps not delivered yet: only those
    /// are decoded and kept for [`Self::apply_read`], so a read of a host
    /// with many quiet sockets costs little.
    pub fn is_new(&self, cookie: u64, generation: u32, len: usize) -> bool {
        len > 0 && self.delivered.get(&cookie) != Some(&(generation, len))
    }

    /// Applies a read of every live entry, taken before the ring was
    /// drained: `unchanged` are the sockets read with
    /// nothing new ([`Self::is_new`]), `fresh` the logs of the others.
    /// Each socket's steps not yet delivered go to `each`, in order.
    pub fn apply_read(
        &mut self,
        unchanged: &[u64],
        fresh: &[StepLog],
        each: &mut dyn FnMut(&Record),
    ) {
        let written = std::mem::take(&mut self.written_since_read);
        let mut delivered = HashMap::with_capacity(unchanged.len() + fresh.len());
        for cookie in unchanged {
            if let Some(&progress) = self.delivered.get(cookie) {
                delivered.insert(*cookie, progress);
            }
        }
        for log in fresh {
            let cookie = log.cookie();
            let len = log.steps().len();
            if len == 0
                || written.get(&cookie).is_some_and(|&g| g >= log.generation)
                || !self.admits(log)
            {
                continue;
            }
            let done = match self.delivered.get(&cookie) {
                Some(&(generation, done)) if generation == log.generation => done,
                _ => 0,
            };
            self.deliver(log, done, each);
            delivered.insert(cookie, (log.generation, len));
        }
        // Sockets not in the read have no entry any more: forget them.
        self.delivered = delivered;
    }

    /// Logs that did not follow on from what was delivered, in all.
    pub fn discontinuities(&self) -> u64 {
        self.discontinuities
    }

    /// Sockets with steps delivered from a read, whose written log is
    /// still to come.
    #[cfg(test)]
    pub fn open(&self) -> usize {
        self.delivered.len()
    }

    fn admits(&self, log: &StepLog) -> bool {
        self.pids.is_empty()
            || log
                .socket
                .owner
                .is_some_and(|owner| self.pids.contains(&owner.pid))
    }

    fn deliver(&mut self, log: &StepLog, done: usize, each: &mut dyn FnMut(&Record)) {
        let len = log.steps().len();
        let from = if done > len {
            self.discontinuities += 1;
            0
        } else {
            done
        };
        for i in from..len {
            each(&log.record(i));
        }
    }
}

#[cfg(test)]
mod tests {
    use tracer_common::TcpState::{
        self, Close, CloseWait, Established, FinWait1, FinWait2, LastAck, SynRecv, SynSent,
    };

    use super::*;
    use crate::{
        model::event::{Kind, LoggedStep},
        testutil::Sock,
    };

    fn step(ts_ns: u64, old: TcpState, new: TcpState) -> LoggedStep {
        LoggedStep {
            ts_ns,
            kind: Kind::StateChange { old, new },
            peer_fin: Some(false),
            tcp: false,
            no_timewait: false,
        }
    }

    /// A client's whole life: connect at 1, established at 2, closes at
    /// 3, FIN_WAIT2 at 4, hands over to TIME_WAIT at 5.
    fn client_life() -> Vec<LoggedStep> {
        vec![
            step(1, Close, SynSent),
            step(2, SynSent, Established),
            step(3, Established, FinWait1),
            step(4, FinWait1, FinWait2),
            step(5, FinWait2, Close),
        ]
    }

    fn log_of(sock: &Sock, generation: u32, steps: &[LoggedStep]) -> StepLog {
        StepLog::new(sock.step(0, Close, Close), generation, None, None, steps)
    }

    fn collect(f: impl FnOnce(&mut dyn FnMut(&Record))) -> Vec<(u64, Kind, Option<u64>)> {
        let mut out = Vec::new();
        f(&mut |r: &Record| out.push((r.ts_ns, r.kind, r.since_ns)));
        out
    }

    /// A read of `fresh` (and `unchanged` sockets) taken, then applied.
    fn apply(
        u: &mut Unfolder,
        unchanged: &[u64],
        fresh: &[StepLog],
    ) -> Vec<(u64, Kind, Option<u64>)> {
        collect(|each| u.apply_read(unchanged, fresh, each))
    }

    fn times(records: &[(u64, Kind, Option<u64>)]) -> Vec<u64> {
        records.iter().map(|r| r.0).collect()
    }

    #[test]
    fn a_written_log_alone_unfolds_into_every_step_dated_by_the_one_before() {
        let sock = Sock::client(7);
        let mut u = Unfolder::default();
        let out = collect(|each| u.written(&log_of(&sock, 0, &client_life()), each));
        assert_eq!(times(&out), [1, 2, 3, 4, 5]);
        assert_eq!(out[0].2, None, "nothing dates the state before connect");
        assert_eq!(out[2].2, Some(2), "ESTABLISHED was entered at 2");
        assert_eq!(out[4].2, Some(4));
    }

    #[test]
    fn steps_read_while_alive_are_not_delivered_again_when_written() {
        let sock = Sock::client(7);
        let life = client_life();
        let mut u = Unfolder::default();
        let read = apply(&mut u, &[], &[log_of(&sock, 0, &life[..2])]);
        assert_eq!(times(&read), [1, 2]);
        assert_eq!(u.open(), 1);
        let read = apply(&mut u, &[], &[log_of(&sock, 0, &life[..3])]);
        assert_eq!(times(&read), [3], "only the step new since the last read");
        let written = collect(|each| u.written(&log_of(&sock, 0, &life), each));
        assert_eq!(times(&written), [4, 5]);
        assert_eq!(u.open(), 0);
        assert_eq!(u.discontinuities(), 0);
    }

    #[test]
    fn a_log_written_after_the_read_was_taken_supersedes_it() {
        let sock = Sock::client(7);
        let life = client_life();
        let mut u = Unfolder::default();
        // Drained after the read was taken: the whole life, in the ring.
        let written = collect(|each| u.written(&log_of(&sock, 0, &life), each));
        assert_eq!(times(&written), [1, 2, 3, 4, 5]);
        // The read's older copy of the same log adds nothing.
        let read = collect(|each| u.apply_read(&[], &[log_of(&sock, 0, &life[..3])], each));
        assert!(read.is_empty(), "{read:?}");
        assert_eq!(u.open(), 0);
    }

    #[test]
    fn a_full_log_written_early_is_followed_by_the_next_generation() {
        let sock = Sock::server(9);
        let mut u = Unfolder::default();
        let first = [
            step(10, SynRecv, Established),
            step(11, Established, CloseWait),
        ];
        let read = apply(&mut u, &[], &[log_of(&sock, 0, &first[..1])]);
        assert_eq!(times(&read), [10]);
        // The log filled and was written out; the next generation began.
        let written = collect(|each| u.written(&log_of(&sock, 0, &first), each));
        assert_eq!(times(&written), [11]);
        let second = [step(12, CloseWait, LastAck)];
        let next = StepLog::new(sock.step(0, Close, Close), 1, Some(11), None, &second);
        let read = apply(&mut u, &[], &[next]);
        assert_eq!(read.len(), 1);
        assert_eq!(read[0].2, Some(11), "the prior step dates the state left");
        let end = [step(12, CloseWait, LastAck), step(13, LastAck, Close)];
        let written = collect(|each| {
            u.written(
                &StepLog::new(sock.step(0, Close, Close), 1, Some(11), None, &end),
                each,
            );
        });
        assert_eq!(times(&written), [13]);
    }

    #[test]
    fn sockets_gone_from_a_read_are_forgotten_and_a_shrunk_log_is_counted() {
        let (a, b) = (Sock::client(1), Sock::client(2));
        let life = client_life();
        let mut u = Unfolder::default();
        apply(
            &mut u,
            &[],
            &[log_of(&a, 0, &life[..2]), log_of(&b, 0, &life[..3])],
        );
        assert_eq!(u.open(), 2);
        // `a`'s entry went (recycled); `b`'s was made anew with one step.
        let read = apply(&mut u, &[], &[log_of(&b, 0, &life[3..4])]);
        assert_eq!(times(&read), [4]);
        assert_eq!(u.open(), 1);
        assert_eq!(u.discontinuities(), 1);
    }

    #[test]
    fn quiet_sockets_are_kept_without_being_decoded_again() {
        let (a, b) = (Sock::client(1), Sock::client(2));
        let life = client_life();
        let mut u = Unfolder::default();
        apply(
            &mut u,
            &[],
            &[log_of(&a, 0, &life[..2]), log_of(&b, 0, &life[..2])],
        );
        assert!(!u.is_new(1, 0, 2), "nothing new in a's entry");
        assert!(u.is_new(2, 0, 3), "b moved on");
        assert!(!u.is_new(3, 0, 0), "an entry with nothing logged");
        let read = apply(&mut u, &[1], &[log_of(&b, 0, &life[..3])]);
        assert_eq!(times(&read), [3]);
        assert_eq!(u.open(), 2, "a is still open");
        let written = collect(|each| u.written(&log_of(&a, 0, &life), each));
        assert_eq!(times(&written), [3, 4, 5]);
    }

    #[test]
    fn a_read_dropped_leaves_the_written_logs_to_say_it_all() {
        let sock = Sock::client(7);
        let life = client_life();
        let mut u = Unfolder::default();
        u.read_dropped();
        let written = collect(|each| u.written(&log_of(&sock, 0, &life), each));
        assert_eq!(times(&written), [1, 2, 3, 4, 5]);
    }

    /// The kernel submits a log, then empties its entry: a read on another
    /// CPU in between copies the whole log, already drained. It must not
    /// deliver the life again.
    #[test]
    fn a_read_copying_an_entry_just_written_out_adds_nothing() {
        let sock = Sock::client(7);
        let life = client_life();
        let mut u = Unfolder::default();
        let written = collect(|each| u.written(&log_of(&sock, 0, &life), each));
        assert_eq!(times(&written), [1, 2, 3, 4, 5]);
        // The next read starts after that drain and copies the entry.
        let read = apply(&mut u, &[], &[log_of(&sock, 0, &life)]);
        assert!(read.is_empty(), "{read:?}");
        assert_eq!(u.open(), 0);
        // Once applied, the note is gone: a later life of the same cookie
        // (a new entry, generation 0 again) is read as usual.
        let again = apply(&mut u, &[], &[log_of(&sock, 0, &life[..2])]);
        assert_eq!(times(&again), [1, 2]);
    }

    #[test]
    fn the_pid_filter_applies_to_live_entries() {
        let sock = Sock::client(7);
        let owner = sock
            .step(0, Close, Close)
            .owner
            .expect("an owned socket")
            .pid;
        let life = client_life();
        let mut other = Unfolder::new(vec![owner + 1]);
        assert!(apply(&mut other, &[], &[log_of(&sock, 0, &life[..2])]).is_empty());
        let mut mine = Unfolder::new(vec![owner]);
        assert_eq!(
            apply(&mut mine, &[], &[log_of(&sock, 0, &life[..2])]).len(),
            2
        );
    }

    #[test]
    fn a_reset_between_steps_does_not_date_the_next_state_change() {
        let sock = Sock::client(7);
        let steps = [
            step(2, SynSent, Established),
            LoggedStep {
                ts_ns: 3,
                kind: Kind::ReceiveReset { state: Established },
                peer_fin: None,
                tcp: false,
                no_timewait: false,
            },
            step(4, Established, Close),
        ];
        let mut u = Unfolder::default();
        let out = collect(|each| u.written(&log_of(&sock, 0, &steps), each));
        assert_eq!(out[1].2, None, "a RST has no since");
        assert_eq!(
            out[2].2,
            Some(2),
            "ESTABLISHED was entered at 2, not at the RST"
        );
    }
}
