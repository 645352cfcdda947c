//! Drawing `top`'s screen from its model: the status line, the table or one group's detail, the findings pane, the keys line, and the help over them. Fits 80x24.

use std::fmt::Write as _;

use ratatui::{
    Frame,
    layout::{Constraint, Layout, Rect},
    style::{Modifier, Style},
    text::Line,
    widgets::{Block, Borders, Clear, Paragraph, Row, Table},
};

use super::view::{Detail, FINDINGS_SHOWN, Focus, Model, closers, sort_name};
use crate::{
    model::aggregate::Stats,
    model::dist::Dist,
    model::human::{human, human_bytes, human_ms},
    model::tracker::ConnectFailure,
    output::{
        EDGE_LABELS,
        report::{bars, plural},
    },
    settings::SortKey,
};

/// The table gets a POD column from this many columns on (the endpoint
/// keeps room for an IPv4 address and port).
pub const POD_COLUMN_FROM: u16 = 110;
/// Room for `namespace/pod` (longer ones are cut).
const POD_WIDTH: u16 = 30;

/// Draws one frame.
pub fn draw(frame: &mut Frame, model: &mut Model) {
    // Up to three findings of two lines each, under a title line.
    let shown = u16::try_from(model.findings.len().min(FINDINGS_SHOWN)).unwrap_or(3);
    let findings_height = (shown * 2 + 1).max(2);
    let [status, main, findings, keys] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Min(5),
        Constraint::Length(if model.detail_key.is_some() {
            0
        } else {
            findings_height
        }),
        Constraint::Length(1),
    ])
    .areas(frame.area());
    frame.render_widget(
        Paragraph::new(status_line(model)).style(Style::new().add_modifier(Modifier::REVERSED)),
        status,
    );
    match (&model.detail_key, &model.detail) {
        (Some(_), Some(detail)) => draw_detail(frame, main, detail),
        (Some(_), None) => frame.render_widget(
            Paragraph::new(" that group is gone (Esc: back to the table)"),
            main,
        ),
        (None, _) => {
            draw_table(frame, main, model);
            draw_findings(frame, findings, model);
        }
    }
    frame.render_widget(Paragraph::new(keys_line(model)), keys);
    if model.help {
        draw_help(frame);
    }
}

fn status_line(model: &Model) -> String {
    let replay = match &model.replay {
        None => String::new(),
        Some(r) if r.ended => "  end of recording".into(),
        Some(r) if r.paused => "  paused".into(),
        Some(r) => format!("  replay ×{}", r.speed),
    };
    format!(
        " tcplinger top  {:.0}s{replay}  {:.0} events/s  {} dropped  {}{}{}",
        model.elapsed_s,
        model.events_per_s,
        model.dropped,
        plural(model.rows.len(), "group"),
        if model.folded > 0 {
            format!(" (+{} folded)", model.folded)
        } else {
            String::new()
        },
        if model.seeded {
            ""
        } else {
            "  (reading open sockets…)"
        }
    )
}

fn keys_line(model: &Model) -> String {
    if model.editing {
        return format!(" filter: {}█   Enter keep   Esc clear", model.filter);
    }
    if model.detail_key.is_some() {
        return " Esc back   q quit   ? help".into();
    }
    if model.replay.is_some() {
        " q quit  s/r sort  / filter  Enter detail  space pause  n step  ? help".into()
    } else {
        " q quit  s/r sort  / filter  Enter detail  Tab findings  ? help".into()
    }
}

/// The table's columns: header, width, and the sort they show (if any).
const COLUMNS: [(&str, u16, Option<SortKey>); 7] = [
    ("LINGER", 7, Some(SortKey::Lingering)),
    ("ESTAB", 6, Some(SortKey::Established)),
    ("CW", 4, None),
    ("FW2", 4, Some(SortKey::FinWait2)),
    ("TW", 5, None),
    ("NEW/s", 6, Some(SortKey::Rate)),
    ("CW_AGE", 7, Some(SortKey::CloseWaitAge)),
];

fn draw_table(frame: &mut Frame, area: Rect, model: &mut Model) {
    // On a Kubernetes node, the pods in a column of their own where the
    // screen is wide enough; else the selected row's in the title.
    let pods = model.rows.iter().any(|r| r.pod.is_some());
    let pod_column = pods && area.width >= POD_COLUMN_FROM;
    let arrow = if model.reverse { "▲" } else { "▼" };
    let sort = model.sort_key();
    let mut header = vec!["PROCESS".to_string()];
    let mut widths = vec![Constraint::Length(15)];
    if pod_column {
        header.push("POD".into());
        widths.push(Constraint::Length(POD_WIDTH));
    }
    header.push("ENDPOINT".into());
    widths.push(Constraint::Fill(1));
    for (name, width, key) in COLUMNS {
        header.push(if key == Some(sort) {
            format!("{name}{arrow}")
        } else {
            name.into()
        });
        widths.push(Constraint::Length(width));
    }
    let header = Row::new(header).style(Style::new().add_modifier(Modifier::BOLD));
    let rows = model.shown.iter().map(|r| {
        let mut cells = vec![r.process.clone()];
        if pod_column {
            cells.push(r.pod.clone().unwrap_or_else(|| "-".into()));
        }
        cells.extend([
            r.remote.clone(),
            r.lingering.to_string(),
            r.established.to_string(),
            r.close_wait.to_string(),
            r.fin_wait2.to_string(),
            r.time_wait.to_string(),
            format!("{:.1}", r.opened_per_s),
            if r.oldest_close_wait_ns > 0 {
                human(r.oldest_close_wait_ns)
            } else {
                "-".into()
            },
        ]);
        // Nothing open, opened or closed lately: on its way out.
        let style = if r.idle_ns > 0 {
            Style::new().add_modifier(Modifier::DIM)
        } else {
            Style::new()
        };
        Row::new(cells).style(style)
    });
    let mut title = format!(
        " groups by {} {arrow}  rates: last {:.0}s ",
        sort_name(sort),
        model.rate_s
    );
    if !model.filter.is_empty() {
        let _ = write!(
            title,
            " filter \"{}\": {} of {} ",
            model.filter,
            model.shown.len(),
            model.rows.len()
        );
    }
    let selected = model.selected_key();
    if let Some(pod) = model
        .shown
        .iter()
        .find(|r| Some(r.key) == selected)
        .and_then(|r| r.pod.as_deref())
        .filter(|_| !pod_column)
    {
        let _ = write!(title, " pod {pod} ");
    }
    let focused = model.focus == Focus::Table;
    let table = Table::new(rows, widths)
        .header(header)
        .column_spacing(1)
        .row_highlight_style(Style::new().add_modifier(Modifier::REVERSED))
        .block(
            Block::new()
                .borders(Borders::TOP)
                .title(title)
                .title_style(title_style(focused)),
        );
    frame.render_stateful_widget(table, area, &mut model.table);
}

fn title_style(focused: bool) -> Style {
    if focused {
        Style::new().add_modifier(Modifier::BOLD)
    } else {
        Style::new()
    }
}

/// Two lines per finding, most severe first, from the pane's offset.
fn draw_findings(frame: &mut Frame, area: Rect, model: &Model) {
    let room = usize::from(area.height.saturating_sub(1)) / 2;
    let total = model.findings.len();
    let first = model.findings_offset.min(total.saturating_sub(1));
    let mut lines: Vec<Line> = Vec::new();
    for f in model.findings.iter().skip(first).take(room) {
        lines.push(
            Line::from(format!(
                " {} {} {} {}{}",
                f.severity().name(),
                f.pathology.id(),
                f.process_short(),
                f.key.endpoint(),
                f.who
                    .pod
                    .as_ref()
                    .map_or_else(String::new, |p| format!(" pod {}/{}", p.namespace, p.pod))
            ))
            .style(Style::new().add_modifier(Modifier::BOLD)),
        );
        lines.push(Line::from(format!("   {}", f.brief())));
    }
    if total == 0 {
        lines.push(Line::from(" none"));
    }
    let shown_to = (first + room).min(total);
    let title = if total > room {
        format!(
            " findings {}-{shown_to} of {total} (Tab, ↑/↓, PgUp/PgDn) ",
            first + 1
        )
    } else {
        format!(" findings ({total}) ")
    };
    frame.render_widget(
        Paragraph::new(lines).block(
            Block::new()
                .borders(Borders::TOP)
                .title(title)
                .title_style(title_style(model.focus == Focus::Findings)),
        ),
        area,
    );
}

/// One distribution's line: its percentiles and bars by band.
fn dist_line(name: &str, d: &Dist) -> String {
    match (d.quantile_ms(0.5), d.quantile_ms(0.99)) {
        (Some(p50), Some(p99)) => format!(
            "  {name:<11}{:>9} {:>9}  {}  {}",
            human_ms(p50),
            human_ms(p99),
            bars(d),
            d.count()
        ),
        _ => format!("  {name:<11}{:>9} {:>9}", "-", "-"),
    }
}

/// The network figures of the last 5 minutes' closes (retransmissions,
/// bytes per connection each way), and failed connects by reason: a line
/// each, within 80 columns.
fn network_lines(s: &Stats) -> Vec<String> {
    let mut lines = vec![if s.with_net > 0 {
        format!(
            "  network    {} of {} retransmitted ({}), {} out {} in each",
            s.retrans_conns,
            s.with_net,
            plural(
                usize::try_from(s.retrans_segs).unwrap_or(usize::MAX),
                "segment"
            ),
            human_bytes(s.bytes_acked / s.with_net),
            human_bytes(s.bytes_received / s.with_net)
        )
    } else {
        "  network    -".into()
    }];
    let failed: Vec<String> = ConnectFailure::ALL
        .iter()
        .filter(|&&r| s.connect_failed(r) > 0)
        .map(|&r| format!("{} {}", r.name(), s.connect_failed(r)))
        .collect();
    if !failed.is_empty() {
        lines.push(format!("  connects   failed: {}", failed.join(", ")));
    }
    lines
}

/// The group's head: who, what it holds now, who closed first, the
/// legend of the percentiles and bars.
fn detail_head(d: &Detail) -> Vec<Line<'static>> {
    let r = &d.row;
    vec![
        Line::from(format!(
            " {}  {}  {}{}",
            r.process,
            r.remote,
            if d.processes > 1 {
                format!(
                    "{} processes: {}",
                    d.processes,
                    d.pids
                        .iter()
                        .take(8)
                        .map(u32::to_string)
                        .collect::<Vec<_>>()
                        .join(" ")
                )
            } else {
                String::new()
            },
            r.pod
                .as_ref()
                .map_or_else(String::new, |p| format!("  pod {p}")),
        ))
        .style(Style::new().add_modifier(Modifier::BOLD)),
        Line::from(format!(
            " now: ESTAB {}  CW {}  FW2 {}  TW {}{}",
            r.established,
            r.close_wait,
            r.fin_wait2,
            r.time_wait,
            if r.oldest_close_wait_ns > 0 {
                format!("  (oldest CLOSE_WAIT {})", human(r.oldest_close_wait_ns))
            } else {
                String::new()
            }
        )),
        Line::from(format!(
            " last minute: opened {}, closed {} (first FIN: {})",
            d.recent.opened,
            d.recent.closed,
            closers(&d.recent)
        )),
        Line::from(format!(
            " last 5 min {:>11} {:>9}  [bands: {}…{}]",
            "p50",
            "p99",
            EDGE_LABELS[0],
            EDGE_LABELS[EDGE_LABELS.len() - 1]
        )),
    ]
}

fn draw_detail(frame: &mut Frame, area: Rect, d: &Detail) {
    let mut lines = detail_head(d);
    for (name, dist) in [
        ("lifetime", &d.total.lifetime),
        ("FIN_WAIT2", &d.total.fin_wait2),
        ("CLOSE_WAIT", &d.total.close_wait),
        ("LAST_ACK", &d.total.last_ack),
        ("TIME_WAIT", &d.total.time_wait),
        ("RTT", &d.total.rtt),
    ] {
        lines.push(Line::from(dist_line(name, dist)));
    }
    lines.extend(network_lines(&d.total).into_iter().map(Line::from));
    for f in &d.findings {
        lines.push(
            Line::from(format!(
                " {} {}: {}",
                f.severity().name(),
                f.pathology.id(),
                f.brief()
            ))
            .style(Style::new().add_modifier(Modifier::BOLD)),
        );
    }
    lines.push(Line::from(format!(
        " sockets open now ({}), longest in their state first:",
        d.sockets.len()
    )));
    lines.push(Line::from(format!(
        "  {:<8} {:<12} {:>9}  LOCAL -> REMOTE",
        "PID", "STATE", "FOR"
    )));
    // Under the block's top line; one line kept to say how many more.
    let fits = usize::from(area.height).saturating_sub(lines.len() + 1);
    let room = if d.sockets.len() > fits {
        fits.saturating_sub(1)
    } else {
        fits
    };
    for s in d.sockets.iter().take(room) {
        lines.push(Line::from(format!(
            "  {:<8} {:<12} {:>9}  {} -> {}",
            s.pid.map_or_else(|| "-".into(), |p| p.to_string()),
            s.state.name(),
            s.age_ns.map_or_else(|| "(before)".into(), human),
            s.local,
            s.remote
        )));
    }
    if d.sockets.len() > room {
        lines.push(Line::from(format!(
            "  … {} more (tcplinger sockets lists them all)",
            d.sockets.len() - room
        )));
    }
    frame.render_widget(
        Paragraph::new(lines).block(Block::new().borders(Borders::TOP).title(" group ")),
        area,
    );
}

const HELP: [&str; 13] = [
    " s          next sort column (its header shows ▼)",
    " r          reverse the sort (▲)",
    " /          filter: text in the process, endpoint or pod,",
    "            or a state: cw, fw2, tw, estab, close-wait, ...",
    " Enter      the selected group: histograms, sockets, finding",
    " Esc        back from a group; clears a filter being typed",
    " ↑/↓        move in the table, or the findings after Tab",
    " PgUp/PgDn  scroll the findings",
    " space, n   pause, step a replay (top --from)",
    " q, Ctrl-C  quit",
    "",
    " Dimmed: nothing open, opened or closed lately; gone after 60s",
    " (report keeps every group). Any key closes this.",
];

fn draw_help(frame: &mut Frame) {
    let area = frame.area();
    let width = area.width.min(66);
    let height = area.height.min(u16::try_from(HELP.len()).unwrap_or(13) + 2);
    let x = area.x + (area.width - width) / 2;
    let y = area.y + (area.height - height) / 2;
    let box_area = Rect::new(x, y, width, height);
    frame.render_widget(Clear, box_area);
    frame.render_widget(
        Paragraph::new(HELP.iter().map(|l| Line::from(*l)).collect::<Vec<_>>())
            .block(Block::bordered().title(" keys ")),
        box_area,
    );
}
