//! `watch --transitions`: one line per state change or RST, as text columns or JSON.

use std::{
    io::{self, Write},
    time::SystemTime,
};

use serde::Serialize;
use tracer_common::TcpState;

use super::{Endpoint, Format, JsonNet, JsonTcp, display_addr, rfc3339_millis, time_of_day};
use crate::model::event::{Kind, Record};

pub struct TransitionWriter<W: Write> {
    out: W,
    format: Format,
}

/// The JSON line; its field names are a contract (README.md, "Transition lines").
#[derive(Serialize)]
struct JsonLine {
    ts: String,
    /// `transition`, `reset_sent` or `reset_received`.
    event: &'static str,
    cookie: u64,
    pid: Option<u32>,
    comm: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    old: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    new: Option<&'static str>,
    /// The socket's state when a RST was sent or received.
    #[serde(skip_serializing_if = "Option::is_none")]
    state: Option<&'static str>,
    family: &'static str,
    /// Network namespace inode, as `ls -l /proc/PID/ns/net` shows it.
    netns: u32,
    laddr: String,
    lport: u16,
    raddr: String,
    rport: u16,
    /// On a step leaving ESTABLISHED or SYN_RECV: the TCP socket's own
    /// figures then.
    #[serde(skip_serializing_if = "Option::is_none")]
    tcp: Option<JsonTcp>,
    /// On a step to CLOSE: the socket's account of its whole life.
    #[serde(skip_serializing_if = "Option::is_none")]
    net: Option<JsonNet>,
}

impl<W: Write> TransitionWriter<W> {
    pub fn new(out: W, format: Format) -> Self {
        Self { out, format }
    }

    pub fn header(&mut self) -> io::Result<()> {
        if self.format == Format::Text {
            writeln!(
                self.out,
                "{:<12}  {:>7} {:<15}  {:<22} {:<22} EVENT",
                "TIME(UTC)", "PID", "COMM", "LOCAL", "REMOTE"
            )?;
        }
        Ok(())
    }

    /// Writes the line for `record`.
    pub fn write(&mut self, record: &Record, when: SystemTime) -> io::Result<()> {
        let (event, old, new, state) = match record.kind {
            Kind::StateChange { old, new } => ("transition", Some(old), Some(new), None),
            Kind::SendReset { state } => ("reset_sent", None, None, Some(state)),
            Kind::ReceiveReset { state } => ("reset_received", None, None, Some(state)),
        };
        match self.format {
            Format::Json => {
                let line = JsonLine {
                    ts: rfc3339_millis(when),
                    event,
                    cookie: record.cookie,
                    pid: record.owner.map(|o| o.pid),
                    comm: record.owner.map(|o| o.comm.to_string()),
                    old: old.map(TcpState::name),
                    new: new.map(TcpState::name),
                    state: state.map(TcpState::name),
                    family: record.family.name(),
                    netns: record.netns,
                    laddr: display_addr(record.laddr).to_string(),
                    lport: record.lport,
                    raddr: display_addr(record.raddr).to_string(),
                    rport: record.rport,
                    tcp: record.tcp.map(JsonTcp::from),
                    net: record.net.map(JsonNet::from),
                };
                serde_json::to_writer(&mut self.out, &line)?;
                self.out.write_all(b"\n")
            }
            Format::Text => {
                let (pid, comm) = match record.owner {
                    Some(o) => (o.pid.to_string(), o.comm.to_string()),
                    None => ("-".to_string(), "-".to_string()),
                };
                let what = match record.kind {
                    Kind::StateChange { old, new } => format!("{} -> {}", old.name(), new.name()),
                    Kind::SendReset { state } => format!("RST sent in {}", state.name()),
                    Kind::ReceiveReset { state } => format!("RST received in {}", state.name()),
                };
                writeln!(
                    self.out,
                    "{:<12}  {:>7} {:<15}  {:<22} {:<22} {what}",
                    time_of_day(when),
                    pid,
                    comm,
                    Endpoint(record.laddr, record.lport),
                    Endpoint(record.raddr, record.rport),
                )
            }
        }
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::event::{Family, Owner};
    use crate::testutil::owner;

    fn record(kind: Kind, owner: Option<Owner>) -> Record {
        Record {
            ts_ns: 5_000_000_000,
            cookie: 77,
            kind,
            family: Family::Ipv4,
            laddr: "10.0.0.1".parse().unwrap(),
            lport: 40000,
            raddr: "10.0.0.2".parse().unwrap(),
            rport: 8080,
            owner,
            netns: 4_026_531_840,
            peer_fin: None,
            since_ns: None,
            tcp: None,
            net: None,
            no_timewait: false,
        }
    }

    #[expect(
        clippy::unnecessary_wraps,
        reason = "fills the optional field it is written into"
    )]
    fn curl() -> Option<Owner> {
        Some(owner(4242, "curl"))
    }

    fn render(format: Format, records: &[Record]) -> String {
        let mut w = TransitionWriter::new(Vec::new(), format);
        for r in records {
            w.write(r, SystemTime::UNIX_EPOCH).unwrap();
        }
        String::from_utf8(w.out).unwrap()
    }

    #[test]
    fn json_transition_has_the_contract_fields() {
        let out = render(
            Format::Json,
            &[record(
                Kind::StateChange {
                    old: TcpState::Established,
                    new: TcpState::CloseWait,
                },
                curl(),
            )],
        );
        let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        for field in [
            "ts", "cookie", "pid", "comm", "old", "new", "laddr", "lport", "raddr", "rport",
            "family",
        ] {
            assert!(v.get(field).is_some(), "missing {field} in {v}");
        }
        assert_eq!(v["pid"], 4242);
        assert_eq!(v["comm"], "curl");
        assert_eq!(v["old"], "ESTABLISHED");
        assert_eq!(v["new"], "CLOSE_WAIT");
        assert_eq!(v["family"], "ipv4");
        assert_eq!(v["raddr"], "10.0.0.2");
        assert_eq!(v["rport"], 8080);
        assert!(v["ts"].as_str().unwrap().ends_with('Z'));
    }

    #[test]
    fn unknown_owner_is_null_not_zero() {
        let out = render(
            Format::Json,
            &[record(
                Kind::StateChange {
                    old: TcpState::SynRecv,
                    new: TcpState::Established,
                },
                None,
            )],
        );
        let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        assert!(v["pid"].is_null() && v["comm"].is_null(), "{v}");
    }

    #[test]
    fn resets_are_shown() {
        let out = render(
            Format::Text,
            &[
                record(
                    Kind::SendReset {
                        state: TcpState::Established,
                    },
                    curl(),
                ),
                record(
                    Kind::ReceiveReset {
                        state: TcpState::FinWait2,
                    },
                    None,
                ),
            ],
        );
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 2, "{out}");
        assert!(
            lines[0].contains("4242") && lines[0].ends_with("RST sent in ESTABLISHED"),
            "{out}"
        );
        assert!(
            lines[1].contains(" - ") && lines[1].ends_with("RST received in FIN_WAIT2"),
            "{out}"
        );
    }

    #[test]
    fn text_columns_line_up_with_the_header() {
        let mut w = TransitionWriter::new(Vec::new(), Format::Text);
        w.header().unwrap();
        w.write(
            &record(
                Kind::StateChange {
                    old: TcpState::Established,
                    new: TcpState::FinWait1,
                },
                curl(),
            ),
            SystemTime::UNIX_EPOCH,
        )
        .unwrap();
        let out = String::from_utf8(w.out).unwrap();
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(
            lines[0].find("LOCAL"),
            lines[1].find("10.0.0.1:40000"),
            "{out}"
        );
        assert_eq!(
            lines[0].find("EVENT"),
            lines[1].find("ESTABLISHED"),
            "{out}"
        );
    }
}
