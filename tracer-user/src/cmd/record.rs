//! `tcplinger record`: trace as `report` does (the same looks at live sockets, the same lookups, but nothing aggregated that decides none), writing everything the host hands over to a file for `watch`/`report --from`; `record --info` says what a recording holds.

use std::{
    collections::BTreeMap,
    io::{IsTerminal as _, Write as _},
    time::{Duration, Instant, SystemTime},
};

use anyhow::Context as _;

use super::{Driver, Output, Wake};
use crate::{
    host::{
        netns::{self, NetnsPaths},
        recording_file::{Header, RecordingWriter},
    },
    output::Format,
    session::{
        Host as _, LiveHost, Progress,
        analysis::{Analysis, Judging},
        journal::{self, Recorder},
    },
    settings,
};

/// The live sockets are looked at as often as `report` does, so a report
/// of the recording has the answers it would have asked for.
const LOOK_EVERY: Duration = Duration::from_secs(1);
/// Progress on a terminal this often.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);
/// Groups the recording's own analysis keeps (it decides which leaks'
/// fds are looked up); `report`'s default.
const GROUPS: usize = 500;

pub async fn run(s: settings::Record) -> anyhow::Result<()> {
    let output = Output::open(Some(&s.output), s.replace_output)?;
    let name = output.name();
    let mut driver = Driver::new(s.duration, LOOK_EVERY)?;
    let host = LiveHost::start(&s.trace.load, &s.trace.node_root, true)?;
    let header = Header {
        cgroup: s.trace.cgroup.clone(),
        comm: s.comm.clone(),
        remote: s.remote.iter().map(ToString::to_string).collect(),
        ..Header::of_this_host(s.args.clone())
    };
    let writer = RecordingWriter::new(output.begin()?, &header, s.max_bytes)
        .with_context(|| format!("writing {name}"))?;
    let mut recorder = Recorder::new(host, writer);
    recorder.note_namespaces(&fin_timeouts());
    let mut analysis =
        Analysis::on(recorder, &s.trace, GROUPS, Judging::whole_run()).lookups_only();
    let terminal = std::io::stderr().is_terminal();
    let mut last_progress = Instant::now();
    let mut full = false;
    loop {
        match driver.next(&mut analysis).await? {
            Wake::Stop => break,
            Wake::Tick => {
                analysis.look();
                analysis.session.host.note_wall_clock();
            }
            Wake::Step(Progress::Seeded { open, .. }) => {
                eprintln!(
                    "tcplinger: tracing TCP connections, recording to {name} ({open} already open) {}",
                    super::how_to_stop(s.duration)
                );
            }
            Wake::Step(_) => {}
        }
        let recorder = &analysis.session.host;
        if recorder.failure().is_some() {
            break;
        }
        if recorder.is_full() {
            full = true;
            eprintln!("tcplinger: {name} reached --max-bytes; recording stopped");
            break;
        }
        if terminal && last_progress.elapsed() >= PROGRESS_EVERY {
            last_progress = Instant::now();
            let dropped = analysis.session.host.dropped();
            let recorder = &analysis.session.host;
            eprintln!(
                "tcplinger: recording: {} written, {} records, {} connections ended, {dropped} dropped",
                bytes(recorder.written()),
                recorder.records,
                analysis.connections,
            );
        }
    }
    analysis.stop().await?;
    // The summary reads every loss counter: before the last chunk, so the
    // recording has them all.
    let summary = analysis.session.summary(s.trace.max_sockets.get());
    let recorder = &mut analysis.session.host;
    // Namespaces made during the run too.
    recorder.note_namespaces(&fin_timeouts());
    recorder.note_wall_clock();
    let (records, left_out) = (recorder.records, recorder.left_out());
    let finished = recorder.finish();
    eprintln!("{summary}");
    let size = finished.with_context(|| format!("writing {name}; recording stopped"))?;
    let why = if full || left_out > 0 {
        format!(" (--max-bytes reached: the last {left_out} blocks were left out)")
    } else {
        String::new()
    };
    eprintln!(
        "tcplinger: recorded {records} records in {} to {name}{why}",
        bytes(size)
    );
    Ok(())
}

/// Every network namespace of the host and its `tcp_fin_timeout`.
fn fin_timeouts() -> BTreeMap<u32, u64> {
    let mut paths = NetnsPaths::default();
    netns::all()
        .into_keys()
        .filter_map(|inum| {
            let text = netns::sysctl_in(inum, &mut paths, "/proc/sys/net/ipv4/tcp_fin_timeout")?;
            Some((inum, text.trim().parse().ok()?))
        })
        .collect()
}

/// `record --info FILE`.
pub fn info(s: &settings::RecordInfo) -> anyhow::Result<()> {
    let summary =
        journal::summarize(&s.path).map_err(|e| anyhow::anyhow!("{}: {e:#}", s.path.display()))?;
    let mut out = std::io::stdout().lock();
    let written = match s.format {
        Format::Json => serde_json::to_writer_pretty(&mut out, &summary)
            .map_err(std::io::Error::other)
            .and_then(|()| writeln!(out)),
        Format::Text => out.write_all(info_text(s, &summary).as_bytes()),
    };
    super::output_result("stdout", written)
}

fn info_text(s: &settings::RecordInfo, summary: &journal::Summary) -> String {
    let h = &summary.header;
    let start = SystemTime::UNIX_EPOCH + Duration::from_nanos(h.started_unix_ns);
    let span = match (summary.first_ns, summary.last_ns) {
        (Some(first), Some(last)) => {
            let first = first.min(h.started_boot_ns);
            format!("{:.1}s", last.saturating_sub(first) as f64 / 1e9)
        }
        _ => "nothing".into(),
    };
    let state = match (&summary.damage, summary.complete) {
        (Some(damage), _) => format!("cut short: {damage}"),
        (None, true) => "complete".into(),
        (None, false) => "cut short after its last whole chunk (no stop recorded)".into(),
    };
    format!(
        "recording   {} ({}, {} chunks, format {})\n\
         host        {}, kernel {}, tcplinger {}\n\
         recorded    from {} for {span}: {}\n\
         holds       {} ring records; {} sockets seen; {} dropped, {} missed\n\
         fin_timeout {}\n\
         state       {state}\n",
        s.path.display(),
        bytes(summary.bytes),
        summary.chunks,
        summary.version,
        h.hostname,
        h.kernel,
        h.tool_version,
        humantime::format_rfc3339_seconds(start),
        h.args.join(" "),
        summary.records,
        summary.sockets,
        summary.dropped,
        summary.missed,
        fin_timeouts_text(&summary.tcp_fin_timeout_s),
    )
}

/// `60s in 3 namespaces`, or each value with its namespaces when they
/// differ.
fn fin_timeouts_text(by_netns: &BTreeMap<u32, u64>) -> String {
    let mut by_value: BTreeMap<u64, Vec<u32>> = BTreeMap::new();
    for (&netns, &s) in by_netns {
        by_value.entry(s).or_default().push(netns);
    }
    match by_value.len() {
        0 => "not recorded".into(),
        1 => {
            let (s, list) = by_value.iter().next().expect("one value");
            let plural = if list.len() == 1 { "" } else { "s" };
            format!("{s}s in {} network namespace{plural}", list.len())
        }
        _ => by_value
            .iter()
            .map(|(s, list)| {
                let names: Vec<String> = list.iter().take(4).map(u32::to_string).collect();
                let more = if list.len() > 4 { ", …" } else { "" };
                format!("{s}s in {} ({}{more})", list.len(), names.join(", "))
            })
            .collect::<Vec<_>>()
            .join("; "),
    }
}

/// `1.2 MiB`.
fn bytes(n: u64) -> String {
    match n {
        n if n >= 1 << 30 => format!("{:.1} GiB", n as f64 / f64::from(1u32 << 30)),
        n if n >= 1 << 20 => format!("{:.1} MiB", n as f64 / f64::from(1u32 << 20)),
        n if n >= 1 << 10 => format!("{:.1} KiB", n as f64 / 1024.0),
        n => format!("{n} bytes"),
    }
}
