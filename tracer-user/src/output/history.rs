//! `tcplinger history`: the findings' lives as a table or JSON lines, and the connections kept whole.

use std::{
    io::{self, Write},
    time::SystemTime,
};

use serde::Serialize;

use super::{
    Format,
    report::{JsonFinding, json_finding},
    rfc3339_millis,
};
use crate::model::{diagnose::Finding, human::human};

/// A finding from its first to its last sight.
pub struct LifeView {
    pub start: SystemTime,
    pub last: SystemTime,
    /// `None` while it stands.
    pub end: Option<SystemTime>,
    /// At its worst.
    pub finding: Finding,
}

#[derive(Serialize)]
struct JsonLife<'a> {
    start: String,
    /// Null while it stands.
    end: Option<String>,
    last_seen: String,
    standing: bool,
    #[serde(flatten)]
    finding: JsonFinding<'a>,
}

/// `2026-12-01 03:04:05` (UTC), for tables.
fn seconds(t: SystemTime) -> String {
    let full = humantime::format_rfc3339_seconds(t).to_string();
    full.trim_end_matches('Z').replacen('T', " ", 1)
}

fn span_ns(from: SystemTime, to: SystemTime) -> u64 {
    to.duration_since(from)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

pub fn write_lives(out: &mut impl Write, format: Format, lives: &[LifeView]) -> io::Result<()> {
    match format {
        Format::Json => {
            for l in lives {
                let line = JsonLife {
                    start: rfc3339_millis(l.start),
                    end: l.end.map(rfc3339_millis),
                    last_seen: rfc3339_millis(l.last),
                    standing: l.end.is_none(),
                    finding: json_finding(&l.finding),
                };
                serde_json::to_writer(&mut *out, &line)?;
                out.write_all(b"\n")?;
            }
            Ok(())
        }
        Format::Text => {
            writeln!(
                out,
                "{:<19}  {:>8}  {:<8}  {:<27}  {:<20} {:<7} {:<22} AT ITS WORST",
                "START(UTC)", "LASTED", "SEVERITY", "PATHOLOGY", "PROCESS", "ROLE", "ENDPOINT"
            )?;
            for l in lives {
                let f = &l.finding;
                let lasted = match l.end {
                    Some(end) => human(span_ns(l.start, end)),
                    None => format!("{}+", human(span_ns(l.start, l.last))),
                };
                writeln!(
                    out,
                    "{:<19}  {:>8}  {:<8}  {:<27}  {:<20} {:<7} {:<22} {}",
                    seconds(l.start),
                    lasted,
                    f.severity().name(),
                    f.pathology.id(),
                    f.process_short(),
                    f.key.role.name(),
                    f.key.endpoint(),
                    f.brief()
                )?;
            }
            if lives.iter().any(|l| l.end.is_none()) {
                writeln!(
                    out,
                    "(+: standing when last written, or the daemon stopped before it could say it was over)"
                )?;
            }
            Ok(())
        }
    }
}

/// One connection kept whole: why, and its `watch` JSON record.
pub struct KeptView<'a> {
    pub reason: &'a str,
    pub record: &'a str,
}

pub fn write_kept(out: &mut impl Write, format: Format, kept: &[KeptView]) -> io::Result<()> {
    match format {
        Format::Json => {
            for k in kept {
                // The record with its reason in front: still one JSON object.
                match k.record.strip_prefix('{') {
                    Some(rest) => writeln!(
                        out,
                        "{{\"reason\":{},{rest}",
                        serde_json::to_string(k.reason)?
                    )?,
                    None => writeln!(out, "{}", k.record)?,
                }
            }
            Ok(())
        }
        Format::Text => {
            writeln!(
                out,
                "{:<24}  {:<28} {:<22} {:<7}  {:<47} {:<18} LIFETIME",
                "TIME(UTC)", "WHY", "PID/COMM", "ROLE", "LOCAL -> REMOTE", "CLOSED_BY"
            )?;
            for k in kept {
                let v: serde_json::Value = serde_json::from_str(k.record).unwrap_or_default();
                let s = |name: &str| match &v[name] {
                    serde_json::Value::String(s) => s.clone(),
                    serde_json::Value::Null => "-".into(),
                    other => other.to_string(),
                };
                let who = match (&v["pid"], &v["comm"]) {
                    (serde_json::Value::Number(pid), serde_json::Value::String(comm)) => {
                        format!("{pid}/{comm}")
                    }
                    _ => "-".into(),
                };
                // A connection kept while still open: the state it was in.
                let closed = match &v["open_state"] {
                    serde_json::Value::String(state) => format!("(open) {state}"),
                    _ => s("closed_by"),
                };
                writeln!(
                    out,
                    "{:<24}  {:<28} {:<22} {:<7}  {:<47} {:<18} {}ms",
                    s("ts"),
                    k.reason,
                    who,
                    s("role"),
                    format!(
                        "{}:{} -> {}:{}",
                        s("laddr"),
                        s("lport"),
                        s("raddr"),
                        s("rport")
                    ),
                    closed,
                    s("lifetime_ms"),
                )?;
            }
            Ok(())
        }
    }
}
