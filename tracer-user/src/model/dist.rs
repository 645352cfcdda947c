//! A distribution of durations small enough to keep one per group per time bucket: log-spaced bins, 1% wide, stored sparsely, mergeable.
//!
//! An HDR histogram covering 1 µs to a day costs about 16 KiB whatever it
//! holds; the daemon keeps a distribution per state, per group and per
//! 10-second bucket for five minutes, so that would be hundreds of MiB.
//! Real durations cluster (a handler's latency, a timeout, TIME_WAIT's
//! 60 s), so a sparse list of the bins actually hit is a few dozen bytes.

/// Bins grow by this ratio: a value is reported within 1% of itself.
const RATIO_LN: f64 = 0.019_802_627_296_179_712; // ln(1.02)

/// The bin of a duration (1 µs resolution; 1 µs to far beyond a day).
#[expect(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    reason = "float-to-int `as` saturates, and the logarithm of at least 1 µs is not negative"
)]
fn bin(ns: u64) -> u16 {
    let us = (ns as f64 / 1_000.0).max(1.0);
    (us.ln() / RATIO_LN) as u16
}

/// One bin in use: its values' count and sum, whose mean stands for them
/// (exact when they are all the same, within the bin's 2% otherwise).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct Bin {
    index: u16,
    count: u32,
    sum_us: u64,
}

impl Bin {
    fn mean_ms(&self) -> f64 {
        self.sum_us as f64 / f64::from(self.count.max(1)) / 1_000.0
    }
}

/// Durations recorded in log-spaced bins; empty until used.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct Dist {
    /// Sorted by bin.
    bins: Vec<Bin>,
}

impl Dist {
    pub fn record(&mut self, ns: u64) {
        self.add(Bin {
            index: bin(ns),
            count: 1,
            sum_us: ns / 1_000,
        });
    }

    fn add(&mut self, add: Bin) {
        match self.bins.binary_search_by_key(&add.index, |b| b.index) {
            Ok(i) => {
                let b = &mut self.bins[i];
                b.count = b.count.saturating_add(add.count);
                b.sum_us = b.sum_us.saturating_add(add.sum_us);
            }
            Err(i) => self.bins.insert(i, add),
        }
    }

    /// Adds everything `other` holds.
    pub fn merge(&mut self, other: &Dist) {
        if self.bins.is_empty() {
            self.bins.clone_from(&other.bins);
            return;
        }
        for &b in &other.bins {
            self.add(b);
        }
    }

    pub fn count(&self) -> u64 {
        self.bins.iter().map(|b| u64::from(b.count)).sum()
    }

    /// The `q` quantile (0..=1) in milliseconds: the value at rank
    /// ceil(q × count), within 1% (exact for values that repeat).
    pub fn quantile_ms(&self, q: f64) -> Option<f64> {
        let count = self.count();
        if count == 0 {
            return None;
        }
        #[expect(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            reason = "between 0 and count, which came from a u64"
        )]
        let rank = ((q.clamp(0.0, 1.0) * count as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for b in &self.bins {
            seen += u64::from(b.count);
            if seen >= rank {
                return Some(b.mean_ms());
            }
        }
        self.bins.last().map(Bin::mean_ms)
    }

    /// Share (0..=1) of the values between `lo_ms` and `hi_ms`.
    pub fn share_within_ms(&self, lo_ms: f64, hi_ms: f64) -> f64 {
        let count = self.count();
        if count == 0 {
            return 0.0;
        }
        let within: u64 = self
            .bins
            .iter()
            .filter(|b| (lo_ms..=hi_ms).contains(&b.mean_ms()))
            .map(|b| u64::from(b.count))
            .sum();
        within as f64 / count as f64
    }

    /// How many values fall in each of `edges_ms` (ascending): index `i`
    /// counts values below `edges_ms[i]` and at or above the one before;
    /// the last slot counts the rest. A value stands for its bin's mean.
    pub fn counts_between(&self, edges_ms: &[f64]) -> Vec<u64> {
        let mut out = vec![0; edges_ms.len() + 1];
        for b in &self.bins {
            let i = edges_ms.partition_point(|&e| e <= b.mean_ms());
            out[i] += u64::from(b.count);
        }
        out
    }

    /// Bins in use: what the distribution costs.
    #[cfg(test)]
    pub fn bins(&self) -> usize {
        self.bins.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    #[test]
    fn quantiles_are_within_one_percent() {
        let mut d = Dist::default();
        for i in 1..=1000u64 {
            d.record(i * MS);
        }
        assert_eq!(d.count(), 1000);
        for (q, want) in [(0.1, 100.0), (0.5, 500.0), (0.9, 900.0), (0.99, 990.0)] {
            let got = d.quantile_ms(q).unwrap();
            assert!((got - want).abs() <= want * 0.011, "q{q}: {got} vs {want}");
        }
        assert_eq!(Dist::default().quantile_ms(0.5), None);
    }

    #[test]
    fn clustered_values_take_a_few_bins() {
        let mut d = Dist::default();
        for i in 0..10_000u64 {
            d.record(3_000 * MS + (i % 20) * MS);
        }
        d.record(1_011 * MS);
        assert!(d.bins() <= 3, "{} bins", d.bins());
        let p50 = d.quantile_ms(0.5).unwrap();
        assert!((p50 - 3_010.0).abs() < 35.0, "{p50}");
        let within = d.share_within_ms(2_700.0, 3_300.0);
        assert!((within - 10_000.0 / 10_001.0).abs() < 1e-9, "{within}");
    }

    #[test]
    fn merging_is_recording_both() {
        let (mut a, mut b, mut both) = (Dist::default(), Dist::default(), Dist::default());
        for v in [1u64, 5, 5, 70, 3_000, 60_000] {
            a.record(v * MS);
            both.record(v * MS);
        }
        for v in [5u64, 800, 60_000, 86_400_000] {
            b.record(v * MS);
            both.record(v * MS);
        }
        a.merge(&b);
        assert_eq!(a, both);
        let mut empty = Dist::default();
        empty.merge(&both);
        assert_eq!(empty, both);
    }

    #[test]
    fn repeated_values_come_back_exactly() {
        let mut d = Dist::default();
        for _ in 0..5 {
            d.record(2_000 * MS);
        }
        assert_eq!(d.quantile_ms(0.5), Some(2_000.0));
    }

    #[test]
    fn extremes_do_not_overflow() {
        let mut d = Dist::default();
        d.record(0);
        d.record(u64::MAX);
        assert_eq!(d.count(), 2);
        assert!(d.quantile_ms(0.0).unwrap() <= 0.002);
        assert!(d.quantile_ms(1.0).unwrap() > 1e12);
    }
}
