//! Output: formatting shared by every writer (timestamps, endpoints), and one module per kind of output.

pub mod connections;
pub mod history;
pub mod html;
pub mod report;
pub mod transitions;

use std::{
    fmt,
    io::{self, Write},
    net::IpAddr,
    time::SystemTime,
};

use serde::Serialize;
use tracer_common::{NetFigures, TcpFigures};

/// How connection records and transition lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Text,
    Json,
}

/// How a report is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportFormat {
    Text,
    Json,
    Markdown,
    /// One self-contained page with pictures (`output::html`).
    Html,
}

/// Bounds of the linger bars, in ms: under 1 ms, 1-10 ms, ... 10-60 s, 60 s and more.
pub const EDGES_MS: [f64; 6] = [1.0, 10.0, 100.0, 1_000.0, 10_000.0, 60_000.0];
pub const EDGE_LABELS: [&str; 7] = [
    "<1ms", "1-10ms", "10-100ms", "0.1-1s", "1-10s", "10-60s", "≥60s",
];

/// Writes `report` in `format`; an HTML page draws `pictures` too.
pub fn write_report(
    report: &report::Report,
    format: ReportFormat,
    out: &mut impl Write,
    pictures: &html::Pictures,
) -> io::Result<()> {
    match format {
        ReportFormat::Html => out.write_all(html::page(report, pictures).as_bytes()),
        ReportFormat::Json => report.write_json(out),
        ReportFormat::Text => out.write_all(report.text().as_bytes()),
        ReportFormat::Markdown => out.write_all(report.markdown().as_bytes()),
    }
}

/// What the TCP socket knew of its traffic at the connection's first
/// closing act, in JSON (connection records and transition lines).
#[derive(Serialize)]
pub struct JsonTcp {
    send_age_ms: u32,
    recv_age_ms: u32,
    segs_out: u32,
    segs_in: u32,
}

impl From<TcpFigures> for JsonTcp {
    fn from(t: TcpFigures) -> Self {
        Self {
            send_age_ms: t.send_age_ms,
            recv_age_ms: t.recv_age_ms,
            segs_out: t.segs_out,
            segs_in: t.segs_in,
        }
    }
}

/// The socket's account of its whole life, read at its end, in JSON
/// (connection records and transition lines).
#[derive(Serialize)]
pub struct JsonNet {
    bytes_acked: u64,
    bytes_received: u64,
    /// Smoothed RTT and its mean deviation, ms with µs precision; `null`
    /// when the connection never had an RTT sample.
    rtt_ms: Option<f64>,
    rttvar_ms: Option<f64>,
    retrans: u32,
    /// The error the socket ended with (`ECONNREFUSED`, `ETIMEDOUT`...);
    /// `null` for none.
    error: Option<String>,
}

impl From<NetFigures> for JsonNet {
    fn from(n: NetFigures) -> Self {
        let ms = |us: u32| f64::from(us) / 1_000.0;
        Self {
            bytes_acked: n.bytes_acked,
            bytes_received: n.bytes_received,
            rtt_ms: (n.srtt_us > 0).then(|| ms(n.srtt_us)),
            rttvar_ms: (n.srtt_us > 0).then(|| ms(n.rttvar_us)),
            retrans: n.retrans,
            error: (n.error != 0).then(|| errno_name(n.error)),
        }
    }
}

/// The name of an errno a TCP socket ends with, or `errno N`.
pub fn errno_name(errno: u16) -> String {
    let name = match i32::from(errno) {
        libc::ECONNREFUSED => "ECONNREFUSED",
        libc::ETIMEDOUT => "ETIMEDOUT",
        libc::ECONNRESET => "ECONNRESET",
        libc::ECONNABORTED => "ECONNABORTED",
        libc::EHOSTUNREACH => "EHOSTUNREACH",
        libc::ENETUNREACH => "ENETUNREACH",
        libc::EHOSTDOWN => "EHOSTDOWN",
        libc::ENETDOWN => "ENETDOWN",
        libc::EPIPE => "EPIPE",
        libc::EPROTO => "EPROTO",
        libc::EMSGSIZE => "EMSGSIZE",
        libc::EACCES => "EACCES",
        libc::EPERM => "EPERM",
        _ => return format!("errno {errno}"),
    };
    name.into()
}

/// RFC 3339 UTC with milliseconds, as in the JSON contract: `2026-01-01T00:00:00.123Z`.
pub fn rfc3339_millis(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

/// `HH:MM:SS.mmm` (UTC) for text columns.
pub fn time_of_day(t: SystemTime) -> String {
    let full = rfc3339_millis(t);
    full.get(11..23).unwrap_or(&full).to_string()
}

/// An address for display: IPv4-mapped IPv6 addresses are shown as the IPv4
/// address they carry, which is what an operator will search for.
pub fn display_addr(addr: IpAddr) -> IpAddr {
    addr.to_canonical()
}

/// `addr:port`, with brackets around IPv6.
pub struct Endpoint(pub IpAddr, pub u16);

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = match display_addr(self.0) {
            IpAddr::V4(a) => format!("{a}:{}", self.1),
            IpAddr::V6(a) => format!("[{a}]:{}", self.1),
        };
        // Through `pad` so column widths apply.
        f.pad(&text)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn endpoints() {
        assert_eq!(
            Endpoint("10.0.0.1".parse().unwrap(), 80).to_string(),
            "10.0.0.1:80"
        );
        assert_eq!(
            Endpoint("fd00::1".parse().unwrap(), 443).to_string(),
            "[fd00::1]:443"
        );
        assert_eq!(
            Endpoint("::ffff:10.1.2.3".parse().unwrap(), 8080).to_string(),
            "10.1.2.3:8080"
        );
        assert_eq!(
            format!("{:<14}|", Endpoint("1.2.3.4".parse().unwrap(), 5)),
            "1.2.3.4:5     |"
        );
    }

    #[test]
    fn errors_read_as_people_say_them() {
        assert_eq!(errno_name(111), "ECONNREFUSED");
        assert_eq!(errno_name(110), "ETIMEDOUT");
        assert_eq!(errno_name(4242), "errno 4242");
    }

    #[test]
    fn timestamps() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_767_225_600_123);
        assert_eq!(rfc3339_millis(t), "2026-01-01T00:00:00.123Z");
        assert_eq!(time_of_day(t), "00:00:00.123");
    }
}
