//! Closes over time per group, for the pictures of a report: counts by who closed first in buckets that widen (doubling) as the window grows, so a report of an hour costs what one of a minute does.

use std::collections::{BTreeMap, HashMap};

use crate::model::{
    aggregate::GroupKey,
    tracker::{ClosedBy, ConnRecord},
};

/// At most this many buckets across the window: beyond, they double.
pub const MAX_BUCKETS: u64 = 240;

/// Closes in one bucket: this side first, the peer first, and the rest
/// (resets, simultaneous, unknown).
pub type Closes = [u64; 3];

#[derive(Debug, Clone, Default)]
pub struct Timeline {
    /// Where the window starts (any clock, ns) and how wide a bucket is.
    start_ns: u64,
    bucket_ns: u64,
    /// Bucket index to counts, per group.
    series: HashMap<GroupKey, BTreeMap<u64, Closes>>,
    /// The last instant seen (what the buckets have to cover).
    end_ns: u64,
}

impl Timeline {
    /// A timeline from `start_ns`, its buckets `bucket_ns` wide to begin with.
    pub fn new(start_ns: u64, bucket_ns: u64) -> Self {
        Self {
            start_ns,
            bucket_ns: bucket_ns.max(1),
            series: HashMap::new(),
            end_ns: start_ns,
        }
    }

    /// One more close of `by` at `at_ns` in `key`'s group.
    pub fn add(&mut self, key: GroupKey, at_ns: u64, by: ClosedBy, n: u64) {
        let at = at_ns.max(self.start_ns);
        self.end_ns = self.end_ns.max(at);
        while (self.end_ns - self.start_ns) / self.bucket_ns >= MAX_BUCKETS {
            self.widen();
        }
        let i = (at - self.start_ns) / self.bucket_ns;
        let slot = match by {
            ClosedBy::Local => 0,
            ClosedBy::Remote => 1,
            _ => 2,
        };
        self.series.entry(key).or_default().entry(i).or_default()[slot] += n;
    }

    /// A finished connection (not one still open at the end, nor a
    /// connect that failed: never a connection, so never a close).
    pub fn on_record(&mut self, r: &ConnRecord) {
        if r.open_state.is_none() && r.connect_failed.is_none() {
            self.add(GroupKey::of(&r.id()), r.end_ns, r.closed_by, 1);
        }
    }

    /// The window reaches `end_ns` (nothing closed since, maybe).
    pub fn reach(&mut self, end_ns: u64) {
        self.end_ns = self.end_ns.max(end_ns);
        while (self.end_ns - self.start_ns) / self.bucket_ns >= MAX_BUCKETS {
            self.widen();
        }
    }

    fn widen(&mut self) {
        self.bucket_ns *= 2;
        for buckets in self.series.values_mut() {
            let old = std::mem::take(buckets);
            for (i, c) in old {
                let merged = buckets.entry(i / 2).or_default();
                for (a, b) in merged.iter_mut().zip(c) {
                    *a += b;
                }
            }
        }
    }

    pub fn start_ns(&self) -> u64 {
        self.start_ns
    }

    pub fn bucket_ns(&self) -> u64 {
        self.bucket_ns
    }

    /// Buckets from the start to the last instant seen.
    pub fn buckets(&self) -> u64 {
        (self.end_ns - self.start_ns) / self.bucket_ns + 1
    }

    /// A group's closes per bucket, every bucket of the window (zeros
    /// where nothing closed); empty if it never closed anything.
    pub fn of(&self, key: &GroupKey) -> Vec<Closes> {
        let Some(buckets) = self.series.get(key) else {
            return Vec::new();
        };
        let mut out = vec![[0; 3]; usize::try_from(self.buckets()).unwrap_or(0)];
        for (&i, c) in buckets {
            if let Some(slot) = usize::try_from(i).ok().and_then(|i| out.get_mut(i)) {
                *slot = *c;
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::tracker::Role;
    use crate::testutil::id;

    const S: u64 = 1_000_000_000;

    #[test]
    fn closes_land_in_their_bucket_by_who_closed() {
        let key = GroupKey::of(&id(1, Role::Client, 80));
        let mut t = Timeline::new(100 * S, S);
        t.add(key, 100 * S, ClosedBy::Local, 1);
        t.add(key, 102 * S + 5, ClosedBy::Remote, 2);
        t.add(key, 102 * S, ClosedBy::ResetRemote, 1);
        let got = t.of(&key);
        assert_eq!(got, vec![[1, 0, 0], [0, 0, 0], [0, 2, 1]]);
        assert!(t.of(&GroupKey::OTHER).is_empty());
    }

    #[test]
    fn a_long_window_widens_the_buckets_and_keeps_every_close() {
        let key = GroupKey::of(&id(1, Role::Server, 80));
        let mut t = Timeline::new(0, S);
        for s in 0..3600 {
            t.add(key, s * S, ClosedBy::Local, 1);
        }
        assert!(t.buckets() <= MAX_BUCKETS, "{}", t.buckets());
        assert_eq!(t.bucket_ns(), 16 * S);
        let total: u64 = t.of(&key).iter().map(|c| c[0]).sum();
        assert_eq!(total, 3600);
    }
}
