//! Converts the kernel's boot-clock timestamps into wall-clock time.

use std::time::{Duration, SystemTime};

fn clock_ns(clock: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid clock id and pointer; these clocks cannot fail on Linux.
    unsafe { libc::clock_gettime(clock, &raw mut ts) };
    i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec)
}

/// Now on the clock the kernel programs stamp records with
/// (`bpf_ktime_get_boot_ns`, i.e. `CLOCK_BOOTTIME`: it keeps counting across suspend).
pub fn boot_ns() -> u64 {
    u64::try_from(clock_ns(libc::CLOCK_BOOTTIME)).unwrap_or(0)
}

/// Offset between the boot clock and the wall clock, refreshed now and then
/// so NTP steps on a long run do not misdate records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct WallClock {
    offset_ns: i128,
}

impl Default for WallClock {
    fn default() -> Self {
        Self::new()
    }
}

impl WallClock {
    pub fn new() -> Self {
        let mut clock = Self { offset_ns: 0 };
        clock.resync();
        clock
    }

    /// The clock of a recording that started at `boot_ns` on the boot
    /// clock and `unix_ns` on the wall clock.
    pub fn at(boot_ns: u64, unix_ns: u64) -> Self {
        Self {
            offset_ns: i128::from(unix_ns) - i128::from(boot_ns),
        }
    }

    /// Wall-clock ns minus boot-clock ns.
    pub fn offset_ns(&self) -> i128 {
        self.offset_ns
    }

    pub fn resync(&mut self) {
        self.offset_ns = clock_ns(libc::CLOCK_REALTIME) - clock_ns(libc::CLOCK_BOOTTIME);
    }

    pub fn wall(&self, boot_ns: u64) -> SystemTime {
        let ns = i128::from(boot_ns) + self.offset_ns;
        SystemTime::UNIX_EPOCH + Duration::from_nanos(u64::try_from(ns).unwrap_or(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_time_now_maps_to_wall_time_now() {
        let clock = WallClock::new();
        let mapped = clock.wall(boot_ns());
        let now = SystemTime::now();
        let skew = now.duration_since(mapped).unwrap_or_else(|e| e.duration());
        assert!(skew < Duration::from_millis(50), "skew {skew:?}");
    }

    #[test]
    fn later_boot_time_is_later_wall_time() {
        let clock = WallClock::new();
        let a = clock.wall(1_000_000_000);
        let b = clock.wall(1_500_000_000);
        assert_eq!(b.duration_since(a).unwrap(), Duration::from_millis(500));
    }
}
