//! `watch`: one line per connection lifecycle, as text columns or JSON (the record README.md documents under "Connection records").

use std::{
    io::{self, Write},
    time::SystemTime,
};

use serde::{Serialize, Serializer, ser::SerializeMap};
use tracer_common::TcpState;

use super::report::JsonPod;
use super::{Endpoint, Format, JsonNet, JsonTcp, display_addr, rfc3339_millis, time_of_day};
use crate::model::{
    event::PodName,
    human::{human, human_bytes},
    tracker::{ConnRecord, ConnectFailure, Fw2End, StateTimes},
};

/// States shown in the text LINGER column: the closing ones.
const LINGER_STATES: [TcpState; 5] = [
    TcpState::FinWait1,
    TcpState::FinWait2,
    TcpState::Closing,
    TcpState::CloseWait,
    TcpState::LastAck,
];

/// Milliseconds with microsecond precision.
fn ms(ns: u64) -> f64 {
    (ns as f64 / 1_000.0).round() / 1_000.0
}

/// `states_ms`, in the order the lifecycle passes through them.
struct StatesMs<'a>(&'a StateTimes);

impl Serialize for StatesMs<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        for (state, ns) in self.0.iter() {
            map.serialize_entry(state.name(), &ms(ns))?;
        }
        map.end()
    }
}

#[derive(Serialize)]
struct JsonRecord<'a> {
    ts: String,
    cookie: u64,
    netns: u32,
    pid: Option<u32>,
    comm: Option<String>,
    role: &'static str,
    family: &'static str,
    laddr: String,
    lport: u16,
    raddr: String,
    rport: u16,
    closed_by: &'static str,
    lifetime_ms: f64,
    states_ms: StatesMs<'a>,
    fin_wait2_end: Option<&'static str>,
    time_wait: bool,
    /// Only when the connection owed a TIME_WAIT and the kernel, its
    /// table full, made none.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    time_wait_refused: bool,
    complete: bool,
    /// Only on records of sockets still open: those lingering when
    /// tracing stops, those the daemon's history keeps behind a finding.
    #[serde(skip_serializing_if = "Option::is_none")]
    open_state: Option<&'static str>,
    /// The TCP socket's own figures at the first closing act.
    #[serde(skip_serializing_if = "Option::is_none")]
    tcp: Option<JsonTcp>,
    /// The socket's account of its whole life, read at its end.
    #[serde(skip_serializing_if = "Option::is_none")]
    net: Option<JsonNet>,
    /// Only on a connect that never completed: why.
    #[serde(skip_serializing_if = "Option::is_none")]
    connect_failed: Option<&'static str>,
    /// The owner's Kubernetes pod, when the node names it.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    kube: Option<JsonPod<'a>>,
}

pub struct ConnectionWriter<W: Write> {
    out: W,
    format: Format,
}

impl<W: Write> ConnectionWriter<W> {
    pub fn new(out: W, format: Format) -> Self {
        Self { out, format }
    }

    pub fn header(&mut self) -> io::Result<()> {
        if self.format == Format::Text {
            writeln!(
                self.out,
                "{:<12}  {:<22} {:<7}  {:<47} {:<12} {:>9}  LINGER",
                "TIME(UTC)", "PID/COMM", "ROLE", "LOCAL -> REMOTE", "CLOSED_BY", "LIFETIME"
            )?;
        }
        Ok(())
    }

    /// One record; `pod` is its owner's, when the node names it.
    pub fn write(
        &mut self,
        r: &ConnRecord,
        when: SystemTime,
        pod: Option<&PodName>,
    ) -> io::Result<()> {
        match self.format {
            Format::Json => {
                let line = JsonRecord {
                    ts: rfc3339_millis(when),
                    cookie: r.cookie,
                    netns: r.netns,
                    pid: r.owner.map(|o| o.pid),
                    comm: r.owner.map(|o| o.comm.to_string()),
                    role: r.role.name(),
                    family: r.family.name(),
                    laddr: display_addr(r.laddr).to_string(),
                    lport: r.lport,
                    raddr: display_addr(r.raddr).to_string(),
                    rport: r.rport,
                    closed_by: r.closed_by.name(),
                    lifetime_ms: ms(r.lifetime_ns),
                    states_ms: StatesMs(&r.states),
                    fin_wait2_end: r.fin_wait2_end.map(Fw2End::name),
                    time_wait: r.time_wait,
                    time_wait_refused: r.time_wait_refused,
                    complete: r.complete,
                    open_state: r.open_state.map(TcpState::name),
                    tcp: r.tcp.map(JsonTcp::from),
                    net: r.net.map(JsonNet::from),
                    connect_failed: r.connect_failed.map(ConnectFailure::name),
                    kube: pod.map(JsonPod::of),
                };
                serde_json::to_writer(&mut self.out, &line)?;
                self.out.write_all(b"\n")
            }
            Format::Text => {
                let who = match r.owner {
                    Some(o) => format!("{}/{}", o.pid, o.comm),
                    None => "-".to_string(),
                };
                writeln!(
                    self.out,
                    "{:<12}  {:<22} {:<7}  {:<47} {:<12} {:>9}  {}{}{}",
                    time_of_day(when),
                    who,
                    r.role.name(),
                    format!(
                        "{} -> {}",
                        Endpoint(r.laddr, r.lport),
                        Endpoint(r.raddr, r.rport)
                    ),
                    r.closed_by.name(),
                    human(r.lifetime_ns),
                    linger(r),
                    net_text(r),
                    pod.map(|p| format!("  pod={p}")).unwrap_or_default(),
                )
            }
        }
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    /// The output back (for a record written to memory).
    pub fn into_inner(self) -> W {
        self.out
    }
}

/// The network figures after the lingers, `key=value` as `pod=`:
/// `  rtt=0.041ms retrans=3 sent=1.0MiB received=2B`.
fn net_text(r: &ConnRecord) -> String {
    use std::fmt::Write as _;
    let Some(n) = r.net else {
        return String::new();
    };
    let mut text = String::new();
    if n.srtt_us > 0 {
        let _ = write!(text, "  rtt={}", human(u64::from(n.srtt_us) * 1_000));
    }
    let _ = write!(text, "  retrans={}", n.retrans);
    if r.connect_failed.is_none() {
        let _ = write!(
            text,
            "  sent={} received={}",
            human_bytes(n.bytes_acked),
            human_bytes(n.bytes_received)
        );
    }
    if n.error != 0 {
        let _ = write!(text, "  error={}", super::errno_name(n.error));
    }
    text
}

/// The closing states with their durations, how FIN_WAIT2 ended, TIME_WAIT.
fn linger(r: &ConnRecord) -> String {
    if let Some(reason) = r.connect_failed {
        return format!("connect failed: {}", reason.name());
    }
    let mut parts: Vec<String> = LINGER_STATES
        .iter()
        .filter_map(|&s| {
            let ns = r.states.get(s)?;
            let mut part = format!("{} {}", s.name(), human(ns));
            if s == TcpState::FinWait2 {
                match r.fin_wait2_end {
                    Some(Fw2End::PeerFin) => part.push_str(" (peer FIN)"),
                    Some(Fw2End::Timeout) => part.push_str(" (timeout)"),
                    Some(Fw2End::Reset) => part.push_str(" (reset)"),
                    Some(Fw2End::Open) | None => {}
                }
            }
            if r.open_state == Some(s) {
                part.push_str(" (still open)");
            }
            Some(part)
        })
        .collect();
    if r.time_wait {
        parts.push("TIME_WAIT".into());
    }
    if r.time_wait_refused {
        parts.push("no TIME_WAIT (table full)".into());
    }
    let mut text = if parts.is_empty() {
        "-".to_string()
    } else {
        parts.join(", ")
    };
    if !r.complete {
        text.push_str(" [incomplete]");
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        model::event::Family,
        model::tracker::{ClosedBy, Role},
        testutil::{at_close, owner},
    };

    fn record() -> ConnRecord {
        let mut states = StateTimes::default();
        // Built through the tracker's public surface would need a whole
        // script; set the fields the writer reads.
        states = states.with(TcpState::Established, 1_000_100_000);
        states = states.with(TcpState::FinWait1, 100_000);
        states = states.with(TcpState::FinWait2, 3_004_900_000);
        ConnRecord {
            end_ns: 1,
            cookie: 8812,
            netns: 4_026_531_840,
            owner: Some(owner(4242, "curl")),
            role: Role::Client,
            family: Family::Ipv4,
            laddr: "10.0.0.1".parse().unwrap(),
            lport: 51234,
            raddr: "10.0.0.2".parse().unwrap(),
            rport: 8080,
            closed_by: ClosedBy::Local,
            lifetime_ns: 1_003_200_000,
            states,
            fin_wait2_end: Some(Fw2End::PeerFin),
            time_wait: true,
            time_wait_refused: false,
            complete: true,
            open_state: None,
            opened_seen: true,
            tcp: None,
            net: None,
            connect_failed: None,
        }
    }

    fn render(format: Format, r: &ConnRecord) -> String {
        let mut w = ConnectionWriter::new(Vec::new(), format);
        w.header().unwrap();
        w.write(r, SystemTime::UNIX_EPOCH, None).unwrap();
        String::from_utf8(w.out).unwrap()
    }

    #[test]
    fn a_refused_time_wait_is_said_in_both_formats_and_only_then() {
        let plain = render(Format::Json, &record());
        assert!(!plain.contains("time_wait_refused"), "{plain}");
        let mut refused = record();
        refused.time_wait = false;
        refused.time_wait_refused = true;
        let v: serde_json::Value =
            serde_json::from_str(render(Format::Json, &refused).trim()).unwrap();
        assert_eq!(v["time_wait"], false);
        assert_eq!(v["time_wait_refused"], true);
        let text = render(Format::Text, &refused);
        assert!(text.contains("no TIME_WAIT (table full)"), "{text}");
        assert!(!render(Format::Text, &record()).contains("table full"));
    }

    #[test]
    fn json_matches_the_design_record() {
        let v: serde_json::Value =
            serde_json::from_str(render(Format::Json, &record()).trim()).unwrap();
        assert_eq!(v["cookie"], 8812);
        assert_eq!(v["pid"], 4242);
        assert_eq!(v["comm"], "curl");
        assert_eq!(v["role"], "client");
        assert_eq!(v["family"], "ipv4");
        assert_eq!(v["laddr"], "10.0.0.1");
        assert_eq!(v["rport"], 8080);
        assert_eq!(v["closed_by"], "local");
        assert_eq!(v["lifetime_ms"], 1003.2);
        assert_eq!(v["states_ms"]["ESTABLISHED"], 1000.1);
        assert_eq!(v["states_ms"]["FIN_WAIT1"], 0.1);
        assert_eq!(v["states_ms"]["FIN_WAIT2"], 3004.9);
        assert_eq!(v["fin_wait2_end"], "peer_fin");
        assert_eq!(v["time_wait"], true);
        assert_eq!(v["complete"], true);
        assert!(v.get("open_state").is_none());
        assert!(v.get("tcp").is_none(), "no figures: no field");
        let mut with_figures = record();
        with_figures.tcp = Some(tracer_common::TcpFigures {
            send_age_ms: 0,
            recv_age_ms: 4,
            segs_out: 1,
            segs_in: 2,
        });
        let v: serde_json::Value =
            serde_json::from_str(render(Format::Json, &with_figures).trim()).unwrap();
        assert_eq!(
            v["tcp"],
            serde_json::json!({"send_age_ms": 0, "recv_age_ms": 4, "segs_out": 1, "segs_in": 2})
        );
        // Lifecycle order, not alphabetical.
        let text = render(Format::Json, &record());
        assert!(text.find("ESTABLISHED").unwrap() < text.find("FIN_WAIT1").unwrap());
    }

    #[test]
    fn network_figures_and_failed_connects_are_in_both_formats() {
        let mut r = record();
        r.net = Some(at_close(1_048_578, 2, 41, 3, 0));
        let v: serde_json::Value = serde_json::from_str(render(Format::Json, &r).trim()).unwrap();
        assert_eq!(
            v["net"],
            serde_json::json!({"bytes_acked": 1_048_578, "bytes_received": 2, "rtt_ms": 0.041,
                "rttvar_ms": 0.02, "retrans": 3, "error": null})
        );
        assert!(v.get("connect_failed").is_none());
        let text = render(Format::Text, &r);
        assert!(
            text.contains("  rtt=0.041ms  retrans=3  sent=1.0MiB received=2B"),
            "{text}"
        );

        let mut failed = record();
        failed.states = StateTimes::default().with(TcpState::SynSent, 1_000_000_000);
        failed.time_wait = false;
        failed.fin_wait2_end = None;
        failed.closed_by = ClosedBy::Unknown;
        failed.net = Some(at_close(0, 0, 0, 2, 110));
        failed.connect_failed = Some(ConnectFailure::Timeout);
        let v: serde_json::Value =
            serde_json::from_str(render(Format::Json, &failed).trim()).unwrap();
        assert_eq!(v["connect_failed"], "timeout");
        assert_eq!(v["net"]["error"], "ETIMEDOUT");
        assert_eq!(v["net"]["rtt_ms"], serde_json::Value::Null);
        let text = render(Format::Text, &failed);
        assert!(
            text.contains("connect failed: timeout  retrans=2  error=ETIMEDOUT"),
            "{text}"
        );
        assert!(!text.contains("sent="), "{text}");
    }

    #[test]
    fn text_line_shows_the_linger() {
        let out = render(Format::Text, &record());
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 2);
        let line = lines[1];
        assert!(line.contains("4242/curl"), "{line}");
        assert!(line.contains("10.0.0.1:51234 -> 10.0.0.2:8080"), "{line}");
        assert!(
            line.ends_with("FIN_WAIT1 0.100ms, FIN_WAIT2 3.00s (peer FIN), TIME_WAIT"),
            "{line}"
        );
        assert_eq!(
            lines[0].find("LIFETIME").map(|i| i + "LIFETIME".len()),
            line.find("1.00s").map(|i| i + 5)
        );
    }

    #[test]
    fn lingering_at_exit_and_incomplete_are_visible() {
        let mut r = record();
        r.fin_wait2_end = Some(Fw2End::Open);
        r.open_state = Some(TcpState::FinWait2);
        r.time_wait = false;
        r.complete = false;
        let text = render(Format::Text, &r);
        assert!(
            text.contains("FIN_WAIT2 3.00s (still open) [incomplete]"),
            "{text}"
        );
        let v: serde_json::Value = serde_json::from_str(render(Format::Json, &r).trim()).unwrap();
        assert_eq!(v["open_state"], "FIN_WAIT2");
        assert_eq!(v["fin_wait2_end"], "open");
        assert_eq!(v["complete"], false);
    }
}
