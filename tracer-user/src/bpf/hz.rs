//! The kernel's tick rate (`CONFIG_HZ`), which TCP's jiffy timestamps count in.

use std::{
    fs,
    io::Read as _,
    thread,
    time::{Duration, Instant},
};

/// Tick rates Linux can be built with.
const STANDARD_HZ: [u32; 4] = [100, 250, 300, 1000];

/// `CONFIG_HZ` of the running kernel: from its build configuration where
/// the distribution ships it (`/boot/config-RELEASE`, as libbpf looks), else
/// `/proc/config.gz`, else measured from how fast `jiffies` advances in
/// `/proc/timer_list`. `None` if none of them can be read.
pub fn kernel_hz() -> Option<u32> {
    let release = fs::read_to_string("/proc/sys/kernel/osrelease").ok();
    let boot_config = release
        .as_deref()
        .and_then(|r| fs::read_to_string(format!("/boot/config-{}", r.trim())).ok());
    boot_config
        .as_deref()
        .and_then(config_hz)
        .or_else(|| proc_config().as_deref().and_then(config_hz))
        .or_else(measured_hz)
}

fn proc_config() -> Option<String> {
    let gz = fs::read("/proc/config.gz").ok()?;
    let mut text = String::new();
    flate2::read::GzDecoder::new(gz.as_slice())
        .read_to_string(&mut text)
        .ok()?;
    Some(text)
}

/// `CONFIG_HZ=250` in a kernel configuration.
fn config_hz(config: &str) -> Option<u32> {
    config
        .lines()
        .find_map(|l| l.strip_prefix("CONFIG_HZ="))
        .and_then(|v| v.trim().parse().ok())
        .filter(|hz| *hz > 0)
}

/// The first `jiffies: N` of `/proc/timer_list`.
fn jiffies_now() -> Option<u64> {
    let text = fs::read_to_string("/proc/timer_list").ok()?;
    text.lines()
        .find_map(|l| l.trim().strip_prefix("jiffies:"))
        .and_then(|v| v.trim().parse().ok())
}

/// Jiffies counted over a fifth of a second, rounded to the nearest rate a
/// kernel can be built with (they are at least 10% apart; the count is off
/// by at most one tick).
fn measured_hz() -> Option<u32> {
    let (t0, j0) = (Instant::now(), jiffies_now()?);
    thread::sleep(Duration::from_millis(200));
    let (t1, j1) = (Instant::now(), jiffies_now()?);
    let rate = j1.checked_sub(j0)? as f64 / t1.duration_since(t0).as_secs_f64();
    nearest_standard(rate)
}

fn nearest_standard(rate: f64) -> Option<u32> {
    STANDARD_HZ
        .into_iter()
        .min_by(|a, b| {
            (f64::from(*a) - rate)
                .abs()
                .total_cmp(&(f64::from(*b) - rate).abs())
        })
        .filter(|hz| (f64::from(*hz) - rate).abs() < f64::from(*hz) * 0.1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_config_hz() {
        let config = "# comment\nCONFIG_HZ_250=y\nCONFIG_HZ=250\nCONFIG_OTHER=1\n";
        assert_eq!(config_hz(config), Some(250));
        assert_eq!(config_hz("CONFIG_HZ_1000=y\n"), None);
        assert_eq!(config_hz("CONFIG_HZ=0\n"), None);
    }

    #[test]
    fn measured_rates_round_to_a_standard_one() {
        assert_eq!(nearest_standard(247.5), Some(250));
        assert_eq!(nearest_standard(305.0), Some(300));
        assert_eq!(nearest_standard(990.0), Some(1000));
        assert_eq!(nearest_standard(500.0), None, "no kernel ticks at 500");
    }

    #[test]
    fn the_configured_rate_is_the_one_jiffies_advance_at() {
        let hz = kernel_hz().expect("CONFIG_HZ of the running kernel");
        // /proc/timer_list is root's only; the tests run as root.
        assert_eq!(Some(hz), measured_hz(), "CONFIG_HZ vs jiffies counted");
    }
}
