//! One value of a flag or of a key in the daemon's file, parsed and bounded: durations, pids, ports, hooks, addresses, cgroups, limits and sizes. The command line and the file share these, so a value means the same written either way.

use std::{num::NonZeroUsize, time::Duration};

use crate::bpf::load::HOOKS;

/// The largest ring accepted: far beyond any burst, and locked kernel memory.
const MAX_RING_BYTES: u64 = 1 << 30;
const MIN_RING_BYTES: u64 = 4096;

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s.trim())
        .map_err(|e| format!("expected a duration like 30s, 5m or 1h ({e})"))?;
    if d.is_zero() {
        return Err("must be longer than zero".into());
    }
    Ok(d)
}

/// `--since`/`--until` of a replay: a time (RFC 3339, e.g.
/// 2026-12-01T03:00:00Z, or `2026-12-01 03:00:00` in UTC), or how far
/// into the recording (`90s`, `5m`).
pub fn parse_when(s: &str) -> Result<super::When, String> {
    let s = s.trim();
    if let Ok(at) = humantime::parse_rfc3339_weak(s) {
        return Ok(super::When::At(at));
    }
    if let Some(at) = time_of_day(s) {
        return at.map(super::When::At);
    }
    humantime::parse_duration(s)
        .map(super::When::Into)
        .map_err(|_| {
            format!(
                "'{s}' is neither a time (03:00, 2026-12-01T03:00:00Z) nor a duration (90s, 2h)"
            )
        })
}

/// `HH:MM` or `HH:MM:SS`, local time: the last time the clock showed it
/// (today, or yesterday if that is still to come). `None` when `s` is not
/// of that shape.
fn time_of_day(s: &str) -> Option<Result<std::time::SystemTime, String>> {
    let parts: Vec<&str> = s.split(':').collect();
    if !(2..=3).contains(&parts.len())
        || !parts
            .iter()
            .all(|p| (1..=2).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_digit()))
    {
        return None;
    }
    let n = |i: usize| parts.get(i).map_or(Some(0), |p| p.parse::<i32>().ok());
    let (Some(h), Some(m), Some(sec)) = (n(0), n(1), n(2)) else {
        return None;
    };
    if h > 23 || m > 59 || sec > 59 {
        return Some(Err(format!(
            "'{s}' is not a time of day (00:00 to 23:59:59)"
        )));
    }
    Some(local_time_today(h, m, sec))
}

/// Today's `h:m:s` on this host's local clock, or yesterday's if that is
/// later than now.
fn local_time_today(h: i32, m: i32, sec: i32) -> Result<std::time::SystemTime, String> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|e| e.to_string())?;
    let now_s = libc::time_t::try_from(now.as_secs()).map_err(|e| e.to_string())?;
    let at = |day_offset: libc::time_t| -> Result<i64, String> {
        let t = now_s - day_offset * 86_400;
        // SAFETY: localtime_r and mktime write only to the struct given.
        let mut tm: libc::tm = unsafe { std::mem::zeroed() };
        if unsafe { libc::localtime_r(&raw const t, &raw mut tm) }.is_null() {
            return Err("cannot read the local time zone".into());
        }
        tm.tm_hour = h;
        tm.tm_min = m;
        tm.tm_sec = sec;
        tm.tm_isdst = -1;
        let made = unsafe { libc::mktime(&raw mut tm) };
        if made == -1 {
            return Err("cannot read the local time zone".into());
        }
        Ok(made)
    };
    let mut t = at(0)?;
    if t > now_s {
        t = at(1)?;
    }
    let t = u64::try_from(t).map_err(|_| "a time before 1970".to_string())?;
    Ok(std::time::UNIX_EPOCH + Duration::from_secs(t))
}

/// `--namespace`, `--pod`: a Kubernetes name (a DNS label or subdomain),
/// or for a pod `namespace/name`.
pub fn parse_kube_name(s: &str) -> Result<String, String> {
    let s = s.trim();
    let ok = |part: &str| {
        !part.is_empty()
            && part.len() <= 253
            && part
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
    };
    let valid = match s.split_once('/') {
        Some((namespace, name)) => ok(namespace) && ok(name),
        None => ok(s),
    };
    if valid {
        Ok(s.to_string())
    } else {
        Err(format!(
            "'{s}' is not a Kubernetes name (lower-case letters, digits, '-' and '.'; a pod may be namespace/name)"
        ))
    }
}

/// `daemon --history-days`: 1 to 3650.
pub fn parse_history_days(s: &str) -> Result<u32, String> {
    match s.trim().parse::<u32>() {
        Ok(n @ 1..=3650) => Ok(n),
        Ok(_) => Err("from 1 to 3650 days".into()),
        Err(_) => Err(format!("'{s}' is not a number of days")),
    }
}

/// Smallest `daemon --history-max-bytes`: a few hours of a busy host.
const MIN_HISTORY_BYTES: u64 = 1 << 20;

pub fn parse_history_bytes(s: &str) -> Result<u64, String> {
    let bytes = parse_size(s)?;
    if bytes < MIN_HISTORY_BYTES {
        return Err(format!("at least {}MiB", MIN_HISTORY_BYTES >> 20));
    }
    Ok(bytes)
}

/// `history --pathology`: one of the rules' names.
pub fn parse_pathology(s: &str) -> Result<crate::model::diagnose::Pathology, String> {
    let s = s.trim();
    crate::model::diagnose::Pathology::from_id(s).ok_or_else(|| {
        let names: Vec<&str> = crate::model::diagnose::Pathology::ALL
            .iter()
            .map(|p| p.id())
            .collect();
        format!("'{s}' is not one of {}", names.join(", "))
    })
}

/// `top --speed`: recorded seconds per second, 0.1 to 1000.
pub fn parse_speed(s: &str) -> Result<f64, String> {
    match s.trim().trim_end_matches('x').parse::<f64>() {
        Ok(x) if (0.1..=1000.0).contains(&x) => Ok(x),
        Ok(_) => Err("from 0.1 to 1000 (recorded seconds per second)".into()),
        Err(_) => Err(format!("'{s}' is not a speed (e.g. 1, 10, 0.5)")),
    }
}

pub fn parse_pid(s: &str) -> Result<u32, String> {
    match s.trim().parse::<u32>() {
        Ok(0) => Err("pid 0 is not a process".into()),
        Ok(pid) if pid > i32::MAX as u32 => Err(format!("{pid} is beyond any pid")),
        Ok(pid) => Ok(pid),
        Err(_) => Err(format!("'{s}' is not a process id")),
    }
}

pub fn parse_port(s: &str) -> Result<u16, String> {
    match s.trim().parse::<u32>() {
        Ok(port) => u16::try_from(port)
            .ok()
            .filter(|&p| p != 0)
            .ok_or_else(|| format!("{port} is not a port (1-65535)")),
        Err(_) => Err(format!("'{s}' is not a port number")),
    }
}

/// A kernel hook by its program name (`sock_recv_length`).
pub fn parse_hook(s: &str) -> Result<&'static str, String> {
    HOOKS
        .iter()
        .map(|h| h.program)
        .find(|name| *name == s.trim())
        .ok_or_else(|| {
            let names: Vec<&str> = HOOKS.iter().map(|h| h.program).collect();
            format!("'{s}' is not a hook ({})", names.join(", "))
        })
}

pub fn parse_listen(s: &str) -> Result<std::net::SocketAddr, String> {
    s.trim()
        .parse()
        .map_err(|_| format!("'{s}' is not an address:port (e.g. 127.0.0.1:9917 or [::1]:9917)"))
}

pub fn parse_cgroup(s: &str) -> Result<String, String> {
    if s.starts_with('/') {
        Ok(s.trim_end_matches('/').to_string())
    } else {
        Err(format!("'{s}' is not a cgroup path (they start with /)"))
    }
}

/// Keeps the metric series of one daemon within what Prometheus handles well.
const MAX_MAX_ENDPOINTS: usize = 10_000;

pub fn parse_max_endpoints(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(n @ 0..=MAX_MAX_ENDPOINTS) => Ok(n),
        Ok(_) => Err(format!("at most {MAX_MAX_ENDPOINTS}")),
        Err(_) => Err(format!("'{s}' is not a count")),
    }
}

/// Far more groups than a screen or a report can use.
const MAX_MAX_GROUPS: usize = 100_000;

pub fn parse_max_groups(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(n @ 1..=MAX_MAX_GROUPS) => Ok(n),
        Ok(_) => Err(format!("between 1 and {MAX_MAX_GROUPS}")),
        Err(_) => Err(format!("'{s}' is not a count")),
    }
}

/// `report --top`: how many groups a text report lists; none would leave
/// only the findings, which `--top` is not the way to ask for.
pub fn parse_top(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(n @ 1..) => Ok(n),
        Ok(_) => Err("at least 1 (a report lists its findings anyway)".into()),
        Err(_) => Err(format!("'{s}' is not a count")),
    }
}

/// A TCP state by its name, any case, `-` or `_`: `close-wait`, `TIME_WAIT`.
pub fn parse_state(s: &str) -> Result<tracer_common::TcpState, String> {
    let wanted = s.trim().to_ascii_uppercase().replace('-', "_");
    (1..=13)
        .filter_map(tracer_common::TcpState::from_u8)
        .find(|state| state.name() == wanted)
        .ok_or_else(|| {
            format!("'{s}' is not a TCP state (e.g. established, close-wait, fin-wait2, time-wait)")
        })
}

/// Far more than any host holds; keeps a typo from reserving absurd memory.
const MAX_MAX_SOCKETS: usize = 1 << 26;

pub fn parse_max_sockets(s: &str) -> Result<NonZeroUsize, String> {
    match s.trim().parse::<usize>() {
        Ok(n @ 1..=MAX_MAX_SOCKETS) => Ok(NonZeroUsize::new(n).expect("n >= 1")),
        Ok(_) => Err(format!("between 1 and {MAX_MAX_SOCKETS}")),
        Err(_) => Err(format!("'{s}' is not a count")),
    }
}

/// A size with an optional unit (K, M, G; powers of 1024).
fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    let multiplier: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        other => return Err(format!("unknown size unit '{other}' (use K, M or G)")),
    };
    let value: u64 = digits
        .parse()
        .map_err(|_| format!("'{s}' is not a size (e.g. 4MiB, 262144)"))?;
    // Beyond 16 EiB is beyond every bound a caller checks against.
    Ok(value.saturating_mul(multiplier))
}

/// Smallest `record --max-bytes`: the header and a chunk or two.
const MIN_RECORDING_BYTES: u64 = 64 << 10;

pub fn parse_max_bytes(s: &str) -> Result<u64, String> {
    let bytes = parse_size(s)?;
    if bytes < MIN_RECORDING_BYTES {
        return Err(format!("at least {}KiB", MIN_RECORDING_BYTES >> 10));
    }
    Ok(bytes)
}

pub fn parse_ring_bytes(s: &str) -> Result<u32, String> {
    let bytes = parse_size(s)?;
    if bytes > MAX_RING_BYTES {
        return Err(format!("at most {}MiB", MAX_RING_BYTES >> 20));
    }
    if bytes < MIN_RING_BYTES {
        return Err(format!("at least {MIN_RING_BYTES} bytes (one page)"));
    }
    if !bytes.is_power_of_two() {
        return Err(format!("{bytes} is not a power of two"));
    }
    u32::try_from(bytes).map_err(|_| format!("at most {}MiB", MAX_RING_BYTES >> 20))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_sizes_take_units() {
        assert_eq!(parse_ring_bytes("4096"), Ok(4096));
        assert_eq!(parse_ring_bytes("64K"), Ok(65536));
        assert_eq!(parse_ring_bytes("16MiB"), Ok(16 << 20));
        assert_eq!(parse_ring_bytes("1G"), Ok(1 << 30));
    }

    #[test]
    fn ports_are_1_to_65535() {
        assert_eq!(parse_port("80"), Ok(80));
        assert_eq!(parse_port(" 65535 "), Ok(65535));
        assert!(parse_port("0").is_err());
        assert!(parse_port("65536").is_err());
        assert!(parse_port("http").is_err());
    }

    #[test]
    fn a_time_of_day_is_the_last_time_the_clock_showed_it() {
        let now = std::time::SystemTime::now();
        for text in ["00:00", "03:00", "12:30:15", "23:59:59", "7:5"] {
            let Ok(crate::settings::When::At(at)) = parse_when(text) else {
                panic!("{text}")
            };
            let ago = now.duration_since(at).expect("not in the future");
            assert!(ago < Duration::from_hours(25), "{text}: {ago:?}");
        }
        for bad in ["24:00", "12:60", "12:00:61"] {
            assert!(
                parse_when(bad).unwrap_err().contains("time of day"),
                "{bad}"
            );
        }
        assert_eq!(
            parse_when("2h"),
            Ok(crate::settings::When::Into(Duration::from_hours(2)))
        );
        assert!(parse_when("03:00pm").is_err());
    }

    #[test]
    fn kubernetes_names_are_dns_labels_and_pods_may_have_a_namespace() {
        for good in ["shop", "web-7d9f8-x2x4q", "kube-system/coredns-1", "a.b"] {
            assert_eq!(parse_kube_name(good).as_deref(), Ok(good));
        }
        for bad in ["", "Shop", "web_1", "a/b/c", "/web", "shop/"] {
            assert!(parse_kube_name(bad).is_err(), "{bad}");
        }
    }
}
