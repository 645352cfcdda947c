//! Durations as people read them (`0.052ms`, `12.3ms`, `2.00s`, `75s`): findings are written with them, and every output prints them the same way.

/// A duration for people: `0.052ms`, `12.3ms`, `2.00s`, `75s`.
pub fn human(ns: u64) -> String {
    human_ms(ns as f64 / 1e6)
}

/// [`human`], for a duration already in milliseconds.
pub fn human_ms(ms: f64) -> String {
    let ms = ms.max(0.0);
    if ms < 1.0 {
        format!("{ms:.3}ms")
    } else if ms < 1000.0 {
        format!("{ms:.1}ms")
    } else if ms < 100_000.0 {
        format!("{:.2}s", ms / 1000.0)
    } else {
        format!("{:.0}s", ms / 1000.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_with_sensible_precision() {
        assert_eq!(human(52_000), "0.052ms");
        assert_eq!(human(12_340_000), "12.3ms");
        assert_eq!(human(2_004_000_000), "2.00s");
        assert_eq!(human(75_000_000_000), "75.00s");
        assert_eq!(human(250_000_000_000), "250s");
        assert_eq!(human_ms(-1.0), "0.000ms");
    }
}
