//! Durations and byte counts as people read them (`0.052ms`, `12.3ms`, `2.00s`, `75s`; `1.5KiB`): findings are written with them, and every output prints them the same way.

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

/// A byte count for people: `512B`, `1.5KiB`, `1.0MiB`, `2.3GiB`.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        return format!("{bytes}B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1}{}", UNITS[unit])
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

    #[test]
    fn byte_counts_read_with_binary_units() {
        assert_eq!(human_bytes(0), "0B");
        assert_eq!(human_bytes(1023), "1023B");
        assert_eq!(human_bytes(1536), "1.5KiB");
        assert_eq!(human_bytes(1_048_578), "1.0MiB");
        assert_eq!(human_bytes(5 << 30), "5.0GiB");
        assert_eq!(human_bytes(u64::MAX), "16777216.0TiB");
    }
}
