//! Same-round ratios of the benchmark's interleaved rounds: each configuration's throughput over the no-tracer run of the same round, their median and range, and how far the median moves between the first and the second half of the rounds.

/// The median (the mean of the two middle values of an even count); 0 for
/// none.
pub fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => f64::midpoint(v[n / 2 - 1], v[n / 2]),
    }
}

/// The fewest rounds whose halves are worth comparing (two rounds each).
pub const MIN_ROUNDS_FOR_HALVES: usize = 4;

/// One configuration's ratios to the no-tracer run of the same round.
#[derive(Debug, Clone, PartialEq)]
pub struct SameRound {
    /// Round by round, in the order they ran.
    pub per_round: Vec<f64>,
    pub median: f64,
    pub min: f64,
    pub max: f64,
    /// Medians of the first ⌊n/2⌋ rounds and of the rest, from
    /// [`MIN_ROUNDS_FOR_HALVES`] rounds on.
    pub halves: Option<(f64, f64)>,
}

impl SameRound {
    /// `subject` and `baseline` hold one throughput per round, in order;
    /// rounds missing from either are left out.
    pub fn new(subject: &[f64], baseline: &[f64]) -> SameRound {
        let per_round: Vec<f64> = subject
            .iter()
            .zip(baseline)
            .map(|(s, b)| s / b.max(f64::MIN_POSITIVE))
            .collect();
        let fold = |init: f64, f: fn(f64, f64) -> f64| {
            if per_round.is_empty() {
                0.0
            } else {
                per_round.iter().copied().fold(init, f)
            }
        };
        let halves = (per_round.len() >= MIN_ROUNDS_FOR_HALVES).then(|| {
            let (first, second) = per_round.split_at(per_round.len() / 2);
            (median(first), median(second))
        });
        SameRound {
            median: median(&per_round),
            min: fold(f64::INFINITY, f64::min),
            max: fold(f64::NEG_INFINITY, f64::max),
            halves,
            per_round,
        }
    }

    /// How far apart the halves' medians are (a fraction, like the ratios).
    pub fn shift(&self) -> Option<f64> {
        self.halves.map(|(a, b)| (a - b).abs())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_even_and_none() {
        assert!((median(&[3.0, 1.0, 2.0]) - 2.0).abs() < 1e-12);
        assert!((median(&[4.0, 1.0, 3.0, 2.0]) - 2.5).abs() < 1e-12);
        assert!(median(&[]).abs() < 1e-12);
    }

    #[test]
    fn ratios_range_and_halves() {
        let base = [100.0, 200.0, 100.0, 100.0, 50.0];
        let subject = [90.0, 160.0, 95.0, 85.0, 45.0];
        let r = SameRound::new(&subject, &base);
        let expect = [0.9, 0.8, 0.95, 0.85, 0.9];
        for (got, want) in r.per_round.iter().zip(expect) {
            assert!((got - want).abs() < 1e-12);
        }
        assert!((r.median - 0.9).abs() < 1e-12);
        assert!((r.min - 0.8).abs() < 1e-12);
        assert!((r.max - 0.95).abs() < 1e-12);
        // First two rounds against the last three.
        let (a, b) = r.halves.expect("five rounds");
        assert!((a - 0.85).abs() < 1e-12);
        assert!((b - 0.9).abs() < 1e-12);
        assert!((r.shift().expect("halves") - 0.05).abs() < 1e-12);
    }

    #[test]
    fn too_few_rounds_for_halves() {
        let r = SameRound::new(&[1.0, 2.0, 3.0], &[1.0, 1.0, 1.0]);
        assert_eq!(r.halves, None);
        assert_eq!(r.shift(), None);
        let none = SameRound::new(&[], &[]);
        assert!(none.median.abs() < 1e-12 && none.min.abs() < 1e-12 && none.max.abs() < 1e-12);
    }
}
