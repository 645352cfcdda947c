//! `report --format html`: one self-contained page (no script, no network, no font or file fetched): the findings with their evidence, when each stood, and per group its closes over time and its linger distributions, drawn as inline SVG.

use std::{fmt::Write as _, time::SystemTime};

use tracer_common::TcpState;

use super::{
    EDGE_LABELS, EDGES_MS,
    report::{GroupView, Report, text_name},
};
use crate::model::{
    aggregate::Stats,
    dist::Dist,
    human::{human, human_ms},
    timeline::{Closes, Timeline},
    tracker::ClosedBy,
};

/// What a page draws beyond the report's figures.
#[derive(Default)]
pub struct Pictures<'a> {
    /// The window, on the wall clock.
    pub from: Option<SystemTime>,
    pub to: Option<SystemTime>,
    /// When each finding stood, in the findings' order; `None`: judged on
    /// the whole window.
    pub spans: Vec<Option<(SystemTime, SystemTime)>>,
    /// Closes over time per group, and the wall time its first bucket
    /// starts at.
    pub timeline: Option<(&'a Timeline, SystemTime)>,
}

/// Colours: this side first, the peer first, the rest; and per severity.
const LOCAL: &str = "#3b6fb6";
const REMOTE: &str = "#e08a2c";
const OTHER: &str = "#9a9a9a";

const STYLE: &str = "
body{font:14px/1.45 system-ui,-apple-system,'Segoe UI',sans-serif;margin:24px auto;max-width:1100px;color:#1d1d1f;padding:0 16px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:18px;margin:28px 0 10px;border-bottom:1px solid #ddd;padding-bottom:4px}
h3{font-size:15px;margin:0 0 6px}.meta{color:#555;margin:2px 0}
.finding{border:1px solid #ddd;border-left:6px solid #999;border-radius:4px;padding:10px 14px;margin:10px 0}
.critical{border-left-color:#c62828}.warning{border-left-color:#ef8f00}.notice{border-left-color:#2e7d32}
.badge{display:inline-block;font-size:12px;font-weight:600;text-transform:uppercase;padding:1px 6px;border-radius:3px;color:#fff;margin-right:6px}
.badge.critical{background:#c62828}.badge.warning{background:#ef8f00}.badge.notice{background:#2e7d32}
code{font:12px ui-monospace,monospace;background:#f4f4f4;padding:1px 3px;border-radius:3px}
table{border-collapse:collapse;font-size:13px}td,th{padding:2px 10px 2px 0;text-align:left}th{color:#555;font-weight:600}
.group{border:1px solid #e3e3e3;border-radius:4px;padding:10px 14px;margin:12px 0}
.charts{display:flex;flex-wrap:wrap;gap:14px;margin-top:8px}figure{margin:0}figcaption{font-size:12px;color:#555}
.legend span{display:inline-block;width:10px;height:10px;margin:0 4px 0 10px;vertical-align:middle}
svg text{font:11px system-ui,sans-serif;fill:#444}
";

/// Text made safe for HTML (names come from processes: anything goes).
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn when(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

fn seconds_between(a: SystemTime, b: SystemTime) -> f64 {
    b.duration_since(a).map_or(0.0, |d| d.as_secs_f64())
}

/// A bar chart of counts with a label under each bar.
fn bars(counts: &[u64], labels: &[&str], colour: &str, title: &str) -> String {
    let (w, h, pad) = (380.0_f64, 110.0_f64, 18.0_f64);
    let max = counts.iter().copied().max().unwrap_or(0).max(1) as f64;
    let slot = w / counts.len().max(1) as f64;
    let mut s = format!(
        "<svg class=\"chart\" role=\"img\" aria-label=\"{}\" width=\"{w}\" height=\"{}\" viewBox=\"0 0 {w} {}\">",
        esc(title),
        h + pad,
        h + pad
    );
    for (i, (&n, label)) in counts.iter().zip(labels).enumerate() {
        let bh = (n as f64 / max) * (h - 14.0);
        let x = i as f64 * slot;
        let _ = write!(
            s,
            "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{bh:.1}\" fill=\"{colour}\"><title>{}: {n}</title></rect>",
            x + 2.0,
            h - bh,
            slot - 4.0,
            esc(label)
        );
        if n > 0 {
            let _ = write!(
                s,
                "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{n}</text>",
                x + slot / 2.0,
                (h - bh - 2.0).max(10.0)
            );
        }
        let _ = write!(
            s,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
            x + slot / 2.0,
            h + 13.0,
            esc(label)
        );
    }
    s.push_str("</svg>");
    s
}

/// Closes per bucket, stacked: this side first, the peer first, the rest.
fn closes_over_time(series: &[Closes], bucket_ns: u64, title: &str) -> String {
    let bucket_s = bucket_ns as f64 / 1e9;
    let (w, h) = (460.0_f64, 110.0_f64);
    let max = series
        .iter()
        .map(|c| c.iter().sum::<u64>())
        .max()
        .unwrap_or(0)
        .max(1) as f64;
    let slot = w / series.len().max(1) as f64;
    let mut s = format!(
        "<svg class=\"chart\" role=\"img\" aria-label=\"{}\" width=\"{w}\" height=\"{}\" viewBox=\"0 0 {w} {}\">",
        esc(title),
        h + 16.0,
        h + 16.0
    );
    for (i, c) in series.iter().enumerate() {
        let mut y = h;
        for (n, colour) in c.iter().zip([LOCAL, REMOTE, OTHER]) {
            if *n == 0 {
                continue;
            }
            let bh = (*n as f64 / max) * (h - 4.0);
            y -= bh;
            let _ = write!(
                s,
                "<rect x=\"{:.2}\" y=\"{y:.2}\" width=\"{:.2}\" height=\"{bh:.2}\" fill=\"{colour}\"><title>{:.0}s: {n}</title></rect>",
                i as f64 * slot,
                (slot - 0.5).max(0.5),
                i as f64 * bucket_s
            );
        }
    }
    let _ = write!(
        s,
        "<line x1=\"0\" y1=\"{h}\" x2=\"{w}\" y2=\"{h}\" stroke=\"#bbb\"/><text x=\"0\" y=\"{}\">0</text><text x=\"{w}\" y=\"{}\" text-anchor=\"end\">{}</text><text x=\"{w}\" y=\"10\" text-anchor=\"end\">max {max:.0} per {}</text></svg>",
        h + 13.0,
        h + 13.0,
        human(series.len() as u64 * bucket_ns),
        human(bucket_ns)
    );
    s
}

/// One row per finding: a bar from when it was first seen to when last
/// (hatched over the whole window when it was judged on all of it).
fn findings_timeline(report: &Report, pictures: &Pictures) -> Option<String> {
    let (from, to) = (pictures.from?, pictures.to?);
    let span = seconds_between(from, to).max(1.0);
    let (width, row, label_w) = (1000.0_f64, 22.0_f64, 330.0_f64);
    let height = row * report.findings.len() as f64 + 24.0;
    let mut s = format!(
        "<svg class=\"chart\" role=\"img\" aria-label=\"when the findings stood\" width=\"{width}\" height=\"{height}\" viewBox=\"0 0 {width} {height}\"><defs><pattern id=\"whole\" width=\"6\" height=\"6\" patternUnits=\"userSpaceOnUse\" patternTransform=\"rotate(45)\"><rect width=\"3\" height=\"6\" fill=\"#bbb\"/></pattern></defs>"
    );
    let plot = width - label_w - 10.0;
    for (i, f) in report.findings.iter().enumerate() {
        let y = i as f64 * row;
        let colour = match f.severity().name() {
            "critical" => "#c62828",
            "warning" => "#ef8f00",
            _ => "#2e7d32",
        };
        let _ = write!(
            s,
            "<text x=\"0\" y=\"{:.1}\">{}</text>",
            y + 15.0,
            esc(&format!("{} {}", f.pathology.id(), f.process_short()))
        );
        let (x0, x1, fill) = match pictures.spans.get(i).copied().flatten() {
            Some((a, b)) => (
                seconds_between(from, a) / span,
                seconds_between(from, b).max(seconds_between(from, a) + span / 200.0) / span,
                colour.to_string(),
            ),
            None => (0.0, 1.0, "url(#whole)".to_string()),
        };
        let _ = write!(
            s,
            "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{fill}\"><title>{}</title></rect>",
            label_w + x0.clamp(0.0, 1.0) * plot,
            y + 4.0,
            ((x1 - x0).clamp(0.0, 1.0) * plot).max(2.0),
            row - 8.0,
            esc(&f.brief())
        );
    }
    let axis = height - 20.0;
    let _ = write!(
        s,
        "<line x1=\"{label_w}\" y1=\"{axis}\" x2=\"{:.1}\" y2=\"{axis}\" stroke=\"#bbb\"/><text x=\"{label_w}\" y=\"{:.1}\">{}</text><text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text></svg>",
        label_w + plot,
        axis + 14.0,
        esc(&when(from)),
        label_w + plot,
        axis + 14.0,
        esc(&when(to))
    );
    Some(s)
}

fn linger(d: &Dist, name: &str, colour: &str) -> Option<String> {
    if d.count() == 0 {
        return None;
    }
    let p = |q| d.quantile_ms(q).map_or("-".into(), human_ms);
    let caption = format!("{name}: {} (p50 {}, p99 {})", d.count(), p(0.5), p(0.99));
    Some(format!(
        "<figure>{}<figcaption>{}</figcaption></figure>",
        bars(&d.counts_between(&EDGES_MS), &EDGE_LABELS, colour, &caption),
        esc(&caption)
    ))
}

fn group(out: &mut String, v: &GroupView, report: &Report, p: &Pictures) {
    let s: &Stats = &v.stats;
    let pod = report
        .pods
        .get(v.key)
        .map(|p| format!(" · pod {p}"))
        .unwrap_or_default();
    let title = format!(
        "{} {} {}{pod}",
        crate::model::diagnose::process_short(v.key, v.group.procs.main(), v.group.procs.count()),
        if v.key.is_other() {
            "-"
        } else {
            v.key.role.name()
        },
        if v.key.is_other() {
            "other".to_string()
        } else {
            v.key.endpoint()
        }
    );
    let _ = write!(
        out,
        "<div class=\"group\"><h3>{}</h3><table><tr><th>opened</th><th>closed</th><th>this side first</th><th>peer first</th><th>resets</th><th>ESTABLISHED</th><th>CLOSE_WAIT</th><th>FIN_WAIT2</th><th>TIME_WAIT</th></tr><tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr></table><div class=\"charts\">",
        esc(&title),
        s.opened,
        s.closed,
        s.closed_by(ClosedBy::Local),
        s.closed_by(ClosedBy::Remote),
        s.closed_by(ClosedBy::ResetLocal) + s.closed_by(ClosedBy::ResetRemote),
        v.group.now.count(TcpState::Established),
        v.group.now.count(TcpState::CloseWait),
        v.group.now.count(TcpState::FinWait2),
        v.group.now.count(TcpState::TimeWait),
    );
    if let Some((timeline, _)) = p.timeline {
        let series = timeline.of(v.key);
        if series.iter().any(|c| c.iter().any(|&n| n > 0)) {
            let _ = write!(
                out,
                "<figure>{}<figcaption class=\"legend\">closes over time<span style=\"background:{LOCAL}\"></span>this side first<span style=\"background:{REMOTE}\"></span>peer first<span style=\"background:{OTHER}\"></span>other</figcaption></figure>",
                closes_over_time(&series, timeline.bucket_ns(), "closes over time")
            );
        }
    }
    for chart in [
        linger(&s.lifetime, "lifetime", "#5c6bc0"),
        linger(&s.fin_wait2, "FIN_WAIT2", LOCAL),
        linger(&s.close_wait, "CLOSE_WAIT", REMOTE),
        linger(&s.last_ack, "LAST_ACK", "#8d6e63"),
        linger(&s.time_wait, "TIME_WAIT", OTHER),
    ]
    .into_iter()
    .flatten()
    {
        out.push_str(&chart);
    }
    out.push_str("</div></div>");
}

/// The page.
pub fn page(report: &Report, p: &Pictures) -> String {
    let mut out = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width\"><title>tcplinger report</title><style>{STYLE}</style></head><body><header><h1>tcplinger report</h1><p class=\"meta\">{}</p>",
        esc(&report.headline())
    );
    if let (Some(from), Some(to)) = (p.from, p.to) {
        let _ = write!(
            out,
            "<p class=\"meta\">from {} to {} (UTC)</p>",
            esc(&when(from)),
            esc(&when(to))
        );
    }
    out.push_str("</header><section id=\"findings\"><h2>Findings</h2>");
    if report.findings.is_empty() {
        out.push_str("<p>None: no pattern crossed its thresholds.</p>");
    }
    for f in report.findings {
        let sev = f.severity().name();
        let pod = f
            .who
            .pod
            .as_ref()
            .map(|p| format!(" · pod {p}"))
            .unwrap_or_default();
        let _ = write!(
            out,
            "<div class=\"finding {sev}\"><span class=\"badge {sev}\">{sev}</span><code>{}</code> {} {} <code>{}</code>{}<p>{}</p><table><tr><th>evidence</th><th>value</th></tr>",
            esc(f.pathology.id()),
            esc(&f.process_short()),
            esc(f.key.role.name()),
            esc(&f.key.endpoint()),
            esc(&pod),
            esc(&f.summary)
        );
        for (n, v) in &f.evidence {
            let _ = write!(
                out,
                "<tr><td>{}</td><td>{}</td></tr>",
                esc(&text_name(n)),
                esc(&v.show())
            );
        }
        out.push_str("</table></div>");
    }
    out.push_str("</section>");
    if !report.findings.is_empty()
        && let Some(svg) = findings_timeline(report, p)
    {
        let _ = write!(
            out,
            "<section id=\"timeline\"><h2>When the findings stood</h2>{svg}<p class=\"meta\">A bar runs from when a finding was first seen to when last; hatched: judged on the whole window.</p></section>"
        );
    }
    let _ = write!(
        out,
        "<section id=\"groups\"><h2>Groups</h2><p class=\"meta\">{} of {}, most interesting first.</p>",
        report.groups.len().min(report.top),
        report.groups.len()
    );
    for v in report.groups.iter().take(report.top) {
        group(&mut out, v, report, p);
    }
    if report.folded > 0 {
        group(&mut out, &report.other, report, p);
    }
    if let Some(note) = report.time_wait_refused_note() {
        let _ = write!(out, "<p class=\"meta\">{}</p>", esc(&note));
    }
    let _ = writeln!(
        out,
        "</section><footer class=\"meta\"><p>{}</p></footer></body></html>",
        esc(
            "Made by tcplinger. Bars of lingers count connections by the time they spent in the state; a bar's tooltip gives its count."
        )
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        model::aggregate::{Aggregator, Windowing},
        model::diagnose::diagnose,
        model::tracker::{ClosedBy, Role},
        output::report::{other, rank},
        testutil::{figures, id_named, record},
    };
    use std::collections::HashMap;

    #[test]
    fn a_page_holds_the_findings_their_timeline_and_each_groups_charts() {
        let mut a = Aggregator::new(10, 0, Windowing::WHOLE_RUN);
        let mut timeline = Timeline::new(0, 1_000_000_000);
        // A name a process could choose, to be shown, not run.
        let c = id_named(1, "<script>x", Role::Server, 80);
        for i in 0..20 {
            let mut r = record(c, ClosedBy::Local, 5, None);
            r.end_ns = i * 1_000_000_000;
            r.tcp = Some(figures(0, 0, 1, 1));
            timeline.on_record(&r);
            a.on_record(&r);
        }
        let findings = diagnose(&a, &[u64::MAX], 20_000_000_000);
        assert!(!findings.is_empty());
        let report = Report {
            window_s: 20.0,
            events: 40,
            dropped: 0,
            findings: &findings,
            groups: rank(&a, &findings),
            other: other(&a),
            folded: 0,
            top: 20,
            pods: HashMap::new(),
        };
        let start = SystemTime::UNIX_EPOCH + std::time::Duration::from_hours(500_000);
        let p = Pictures {
            from: Some(start),
            to: Some(start + std::time::Duration::from_secs(20)),
            spans: vec![None; findings.len()],
            timeline: Some((&timeline, start)),
        };
        let html = page(&report, &p);
        assert!(html.starts_with("<!doctype html>") && html.ends_with("</html>\n"));
        assert!(!html.contains("<script"), "names are escaped");
        assert!(html.contains("&lt;script&gt;x"));
        assert!(html.contains("server_closes"));
        // The timeline, closes over time, and the lifetime bars.
        assert_eq!(html.matches("<svg class=\"chart\"").count(), 3, "{html}");
        assert!(
            !html.contains("http://") && !html.contains("https://"),
            "nothing fetched"
        );
    }
}
