//! `tcplinger top`: a live table of process/endpoint groups refreshed every second, the current findings below it, and a status line.

use std::{
    io::{self, IsTerminal as _},
    time::Duration,
};

use anyhow::Context as _;
use ratatui::{
    Frame,
    crossterm::event::{self, Event, KeyCode, KeyEvent, KeyEventKind, KeyModifiers},
    layout::{Constraint, Layout},
    style::{Modifier, Style},
    text::Line,
    widgets::{Block, Borders, Paragraph, Row, Table, TableState},
};
use tokio::sync::mpsc;
use tracer_common::TcpState;

use crate::{
    cmd::{Driver, Wake},
    error::UsageError,
    model::aggregate::{Group, GroupKey, Stats},
    model::diagnose::Finding,
    model::diagnose::process_short,
    model::human::human,
    session::Host,
    session::Progress,
    session::analysis::{Analysis, Judging},
    settings::{self, SortKey},
};

const REFRESH: Duration = Duration::from_secs(1);

/// The table gets a POD column from this many columns on (the endpoint
/// keeps room for an IPv4 address and port).
const POD_COLUMN_FROM: u16 = 110;
/// Room for `namespace/pod` (longer ones are cut).
const POD_WIDTH: u16 = 30;

/// One table row, computed at each refresh.
#[derive(Debug, Clone, PartialEq)]
struct RowView {
    process: String,
    role: &'static str,
    remote: String,
    established: u64,
    close_wait: u64,
    fin_wait2: u64,
    time_wait: u64,
    opened_per_s: f64,
    oldest_close_wait_ns: u64,
    fin_wait2_p99_ms: Option<f64>,
    lingering: u64,
    /// `namespace/pod` of its busiest process, on a Kubernetes node.
    pod: Option<String>,
}

impl RowView {
    /// `recent` is what the group saw over the last `recent_s` seconds.
    fn of(key: &GroupKey, g: &Group, recent: &Stats, recent_s: f64) -> Self {
        Self {
            process: process_short(key, g.procs.main(), g.procs.count()),
            role: match key.role {
                crate::model::tracker::Role::Client => "client",
                crate::model::tracker::Role::Server => "server",
                crate::model::tracker::Role::Unknown => "?",
            },
            remote: key.endpoint(),
            established: g.now.count(TcpState::Established),
            close_wait: g.now.count(TcpState::CloseWait),
            fin_wait2: g.now.count(TcpState::FinWait2),
            time_wait: g.now.count(TcpState::TimeWait),
            opened_per_s: recent.opened as f64 / recent_s.max(1.0),
            oldest_close_wait_ns: g.now.oldest_close_wait_ns,
            fin_wait2_p99_ms: recent.fin_wait2.quantile_ms(0.99),
            lingering: g.lingering(),
            pod: None,
        }
    }
}

/// Rates and percentiles on screen cover the last minute; findings are
/// judged as the daemon judges them.
const RECENT_NS: u64 = 60_000_000_000;

/// What the screen shows.
#[derive(Debug, Default)]
struct Model {
    rows: Vec<RowView>,
    findings: Vec<Finding>,
    sort: Option<SortKey>,
    events_per_s: f64,
    dropped: u64,
    folded: u64,
    seeded: bool,
    elapsed_s: f64,
    table: TableState,
    last_events: u64,
    /// The host's clock at the last refresh (a replay's is recorded time).
    last_refresh_ns: u64,
    /// Showing a recording: its state.
    replay: Option<Replay>,
}

/// Where a replay shown by `top` is.
#[derive(Debug, Clone, PartialEq)]
struct Replay {
    speed: f64,
    paused: bool,
    /// One refresh's worth asked while paused (`n`).
    step: bool,
    /// The recording is over: the last picture stays until `q`.
    ended: bool,
}

const SORTS: [SortKey; 5] = [
    SortKey::Lingering,
    SortKey::Rate,
    SortKey::CloseWaitAge,
    SortKey::FinWait2,
    SortKey::Established,
];

fn sort_name(key: SortKey) -> &'static str {
    match key {
        SortKey::Lingering => "lingering",
        SortKey::Rate => "rate",
        SortKey::CloseWaitAge => "close-wait-age",
        SortKey::FinWait2 => "fin-wait2",
        SortKey::Established => "established",
    }
}

impl Model {
    fn sort_key(&self) -> SortKey {
        self.sort.unwrap_or(SortKey::Lingering)
    }

    fn next_sort(&mut self) {
        let i = SORTS
            .iter()
            .position(|&s| s == self.sort_key())
            .unwrap_or(0);
        self.sort = Some(SORTS[(i + 1) % SORTS.len()]);
        self.sort_rows();
    }

    fn sort_rows(&mut self) {
        let key = self.sort_key();
        self.rows.sort_by(|a, b| {
            let (x, y) = match key {
                SortKey::Lingering => (a.lingering as f64, b.lingering as f64),
                SortKey::Rate => (a.opened_per_s, b.opened_per_s),
                SortKey::CloseWaitAge => {
                    (a.oldest_close_wait_ns as f64, b.oldest_close_wait_ns as f64)
                }
                SortKey::FinWait2 => (
                    a.fin_wait2_p99_ms.unwrap_or(0.0),
                    b.fin_wait2_p99_ms.unwrap_or(0.0),
                ),
                SortKey::Established => (a.established as f64, b.established as f64),
            };
            y.total_cmp(&x).then_with(|| a.process.cmp(&b.process))
        });
    }

    /// Shows the last look's picture, and asks for the next (its answer
    /// is applied as it comes, off the thread that drains the ring).
    fn refresh<H: Host>(&mut self, analysis: &mut Analysis<H>) {
        analysis.look();
        let window_s = analysis.window_s();
        let now = analysis.now_ns();
        let agg = &analysis.agg;
        let recent_s = agg.span_s(RECENT_NS, now);
        let keys: Vec<GroupKey> = agg.groups().map(|(k, _)| *k).collect();
        self.rows = agg
            .groups()
            .map(|(k, g)| RowView::of(k, g, &agg.window(g, RECENT_NS, now), recent_s))
            .collect();
        let mut pods = analysis.pods();
        for (row, key) in self.rows.iter_mut().zip(&keys) {
            row.pod = pods
                .remove(key)
                .map(|p| format!("{}/{}", p.namespace, p.pod));
        }
        self.sort_rows();
        self.findings = analysis.findings();
        let events = analysis.session.counts.events;
        // Over the time the host's clock says passed: a second live, the
        // recorded time on a replay, whatever its speed.
        let passed_s = if self.last_refresh_ns == 0 {
            REFRESH.as_secs_f64()
        } else {
            now.saturating_sub(self.last_refresh_ns) as f64 / 1e9
        };
        self.events_per_s = (events - self.last_events) as f64 / passed_s.max(1e-3);
        self.last_events = events;
        self.last_refresh_ns = now;
        self.dropped = analysis.session.host.dropped();
        self.folded = analysis.agg.folded();
        self.seeded = analysis.seeded;
        self.elapsed_s = window_s;
    }

    /// Moves the selection, keeping it on the table.
    fn scroll(&mut self, down: bool) {
        let last = self.rows.len().saturating_sub(1);
        let at = self.table.selected().unwrap_or(0);
        self.table.select(Some(if down {
            (at + 1).min(last)
        } else {
            at.saturating_sub(1)
        }));
    }
}

/// Draws one frame; fits 80x24 (the table takes what the findings and
/// status lines leave).
#[expect(
    clippy::too_many_lines,
    reason = "the screen top to bottom, one block per pane"
)]
fn draw(frame: &mut Frame, model: &mut Model) {
    // Up to three findings of two lines each, under a title line.
    let shown = u16::try_from(model.findings.len().min(3)).unwrap_or(3);
    let findings_height = (shown * 2 + 1).max(2);
    let [status, table, findings, keys] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Min(5),
        Constraint::Length(findings_height),
        Constraint::Length(1),
    ])
    .areas(frame.area());

    let replay = match &model.replay {
        None => String::new(),
        Some(r) if r.ended => "  end of recording".into(),
        Some(r) if r.paused => "  paused".into(),
        Some(r) => format!("  replay ×{}", r.speed),
    };
    let status_text = format!(
        " tcplinger top  {:.0}s{replay}  {:.0} events/s  {} dropped  {} groups{}{}",
        model.elapsed_s,
        model.events_per_s,
        model.dropped,
        model.rows.len(),
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
    );
    frame.render_widget(
        Paragraph::new(status_text).style(Style::new().add_modifier(Modifier::REVERSED)),
        status,
    );

    // On a Kubernetes node, the pods in a column of their own where the
    // screen is wide enough; else the selected row's in the title.
    let pods = model.rows.iter().any(|r| r.pod.is_some());
    let pod_column = pods && table.width >= POD_COLUMN_FROM;
    let mut header = vec!["PROCESS"];
    if pod_column {
        header.push("POD");
    }
    header.extend([
        "ROLE", "ENDPOINT", "ESTAB", "CW", "FW2", "TW", "NEW/s", "CW_AGE",
    ]);
    let header = Row::new(header).style(Style::new().add_modifier(Modifier::BOLD));
    let rows = model.rows.iter().map(|r| {
        let mut cells = vec![r.process.clone()];
        if pod_column {
            cells.push(r.pod.clone().unwrap_or_else(|| "-".into()));
        }
        cells.extend([
            r.role.to_string(),
            r.remote.clone(),
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
        Row::new(cells)
    });
    let mut widths = vec![Constraint::Length(16)];
    if pod_column {
        widths.push(Constraint::Length(POD_WIDTH));
    }
    widths.extend([
        Constraint::Length(6),
        Constraint::Fill(1),
        Constraint::Length(6),
        Constraint::Length(4),
        Constraint::Length(4),
        Constraint::Length(5),
        Constraint::Length(6),
        Constraint::Length(7),
    ]);
    let selected_pod = model
        .table
        .selected()
        .and_then(|i| model.rows.get(i))
        .and_then(|r| r.pod.as_deref())
        .filter(|_| pods && !pod_column);
    let title = match selected_pod {
        Some(pod) => format!(
            " groups, sorted by {}  (selected: pod {pod}) ",
            sort_name(model.sort_key())
        ),
        None => format!(" groups, sorted by {} ", sort_name(model.sort_key())),
    };
    let table_widget = Table::new(rows, widths)
        .header(header)
        .column_spacing(1)
        .row_highlight_style(Style::new().add_modifier(Modifier::REVERSED))
        .block(Block::new().borders(Borders::TOP).title(title));
    frame.render_stateful_widget(table_widget, table, &mut model.table);

    // Two lines per finding: what and who, then the figures behind it.
    let shown = usize::from(findings.height.saturating_sub(1)) / 2;
    let mut lines: Vec<Line> = Vec::new();
    for f in model.findings.iter().take(shown) {
        lines.push(
            Line::from(format!(
                " {} {} {}{}",
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
    if model.findings.is_empty() {
        lines.push(Line::from(" none"));
    } else if model.findings.len() > shown {
        let last = lines.len().saturating_sub(1);
        lines.truncate(last);
        lines.push(Line::from(format!(
            " … {} more: `tcplinger report` has them all",
            model.findings.len() - shown + 1
        )));
    }
    frame.render_widget(
        Paragraph::new(lines).block(
            Block::new()
                .borders(Borders::TOP)
                .title(format!(" findings ({}) ", model.findings.len())),
        ),
        findings,
    );
    let key_help = if model.replay.is_some() {
        " q quit   s sort   ↑/↓ select   space pause   n step"
    } else {
        " q quit   s sort   ↑/↓ select"
    };
    frame.render_widget(Paragraph::new(key_help), keys);
}

enum Action {
    Quit,
    Redraw,
    /// Space: a replay pauses or resumes.
    Pause,
    /// `n`: a paused replay steps one refresh, at once.
    Step,
    Nothing,
}

fn on_key(model: &mut Model, key: KeyEvent) -> Action {
    if key.kind != KeyEventKind::Press {
        return Action::Nothing;
    }
    match key.code {
        KeyCode::Char('q') | KeyCode::Esc => Action::Quit,
        // Raw mode turns Ctrl-C into a key, not a signal.
        KeyCode::Char('c') if key.modifiers.contains(KeyModifiers::CONTROL) => Action::Quit,
        KeyCode::Char('s') => {
            model.next_sort();
            Action::Redraw
        }
        KeyCode::Char(' ') if model.replay.is_some() => Action::Pause,
        KeyCode::Char('n') => match &mut model.replay {
            Some(r) if r.paused => {
                r.step = true;
                Action::Step
            }
            _ => Action::Nothing,
        },
        KeyCode::Down => {
            model.scroll(true);
            Action::Redraw
        }
        KeyCode::Up => {
            model.scroll(false);
            Action::Redraw
        }
        _ => Action::Nothing,
    }
}

/// Restores the terminal however `run` ends (the panic hook installed by
/// ratatui covers panics).
struct Restore;

impl Drop for Restore {
    fn drop(&mut self) {
        ratatui::restore();
    }
}

pub async fn run(s: settings::Top) -> anyhow::Result<()> {
    if !io::stdout().is_terminal() || !io::stdin().is_terminal() {
        return Err(UsageError(
            "top needs a terminal; for output to a pipe or file use `tcplinger report`".into(),
        )
        .into());
    }
    // Loaded before the screen is taken over, so errors print normally.
    if let Some(path) = &s.from {
        let (host, since) = super::replay(path, s.window)?;
        let driver = Driver::new(None, REFRESH)?
            .paced(s.speed)
            .paced_after(since.unwrap_or(0));
        let trace = super::as_recorded(&s.trace, &host);
        let analysis = Analysis::on(host, &trace, s.max_groups, Judging::recent());
        let replay = Replay {
            speed: s.speed,
            paused: false,
            step: false,
            ended: false,
        };
        return show(&s, driver, analysis, Some(replay)).await;
    }
    let driver = Driver::new(s.duration, REFRESH)?;
    let analysis = Analysis::start(&s.trace, s.max_groups, Judging::recent())?;
    show(&s, driver, analysis, None).await
}

/// The screen, until `q` (or the end of a live run).
async fn show<H: Host>(
    s: &settings::Top,
    mut driver: Driver,
    mut analysis: Analysis<H>,
    replay: Option<Replay>,
) -> anyhow::Result<()> {
    let mut terminal = ratatui::try_init()?;
    let restore = Restore;
    let (tx, mut keys) = mpsc::unbounded_channel();
    // crossterm's reader blocks; it lives on its own thread and ends with
    // the process.
    std::thread::Builder::new()
        .name("tcplinger-keys".into())
        .spawn(move || {
            while let Ok(ev) = event::read() {
                if tx.send(ev).is_err() {
                    break;
                }
            }
        })
        .context("cannot start the thread reading keys (is the pids limit reached?)")?;
    let mut model = Model {
        sort: Some(s.sort),
        replay,
        ..Model::default()
    };
    let result: anyhow::Result<()> = async {
        // The screen is drawn once at once, then every second.
        model.refresh(&mut analysis);
        terminal.draw(|frame| draw(frame, &mut model))?;
        loop {
            // A replay paused (and not stepping) or over waits for keys.
            let stepping = model
                .replay
                .as_ref()
                .is_none_or(|r| !r.ended && (!r.paused || r.step));
            let redraw = tokio::select! {
                biased;
                Some(ev) = keys.recv() => match ev {
                    Event::Key(key) => match on_key(&mut model, key) {
                        Action::Quit => break,
                        Action::Redraw => true,
                        Action::Step => {
                            driver.repace();
                            true
                        }
                        Action::Pause => {
                            if let Some(r) = &mut model.replay {
                                r.paused = !r.paused;
                                driver.repace();
                            }
                            true
                        }
                        Action::Nothing => false,
                    },
                    Event::Resize(..) => true,
                    _ => false,
                },
                wake = async {
                    if stepping {
                        driver.next(&mut analysis).await
                    } else {
                        driver.stopped().await;
                        Ok(Wake::Stop)
                    }
                } => match wake? {
                    Wake::Stop => match &mut model.replay {
                        Some(r) if stepping && analysis.session.host.exhausted() => {
                            r.ended = true;
                            true
                        }
                        _ => break,
                    },
                    Wake::Tick => {
                        model.refresh(&mut analysis);
                        if let Some(r) = &mut model.replay {
                            r.step = false;
                        }
                        true
                    }
                    Wake::Step(progress) => matches!(progress, Progress::Seeded { .. }),
                },
            };
            if redraw {
                terminal.draw(|frame| draw(frame, &mut model))?;
            }
        }
        Ok(())
    }
    .await;
    drop(restore);
    analysis.session.host.detach();
    eprintln!("{}", analysis.session.summary(s.trace.max_sockets.get()));
    result
}

#[cfg(test)]
mod tests {
    use ratatui::{Terminal, backend::TestBackend};

    use super::*;
    use crate::{
        model::aggregate::Aggregator,
        model::diagnose::diagnose,
        model::tracker::{ClosedBy, Role},
        testutil::{id, record},
    };

    fn model() -> Model {
        let mut a = Aggregator::new(10, 0, crate::model::aggregate::Windowing::WHOLE_RUN);
        for port in [8080, 9090] {
            let c = id(4242, Role::Client, port);
            for _ in 0..5 {
                a.on_opened(&c, 0);
                a.on_record(&record(
                    c,
                    ClosedBy::Local,
                    1_000,
                    Some(if port == 8080 { 2_000 } else { 3 }),
                ));
            }
        }
        let mut m = Model {
            rows: a
                .groups()
                .map(|(k, g)| RowView::of(k, g, &g.total(), 10.0))
                .collect(),
            findings: diagnose(&a, &[u64::MAX], 10_000_000_000),
            sort: Some(SortKey::FinWait2),
            seeded: true,
            ..Model::default()
        };
        m.sort_rows();
        m
    }

    fn screen(model: &mut Model) -> String {
        screen_of(model, 80)
    }

    fn screen_of(model: &mut Model, width: u16) -> String {
        let mut terminal = Terminal::new(TestBackend::new(width, 24)).unwrap();
        terminal.draw(|f| draw(f, model)).unwrap();
        let buffer = terminal.backend().buffer().clone();
        (0..24)
            .map(|y| {
                (0..width)
                    .map(|x| buffer[(x, y)].symbol())
                    .collect::<String>()
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn pods_get_a_column_on_a_wide_screen_and_the_title_on_a_narrow_one() {
        let mut m = model();
        assert!(
            !screen_of(&mut m, 120).contains("POD"),
            "no pods, no column"
        );
        m.rows[0].pod = Some("shop/web-7d9f8-x2x4q".into());
        let wide = screen_of(&mut m, 120);
        let header = wide.lines().find(|l| l.contains("PROCESS")).unwrap();
        assert!(header.contains("POD"), "{wide}");
        let row = wide.lines().find(|l| l.contains("10.0.0.2:8080")).unwrap();
        assert!(row.contains("shop/web-7d9f8-x2x4q"), "{wide}");
        let other = wide.lines().find(|l| l.contains("10.0.0.2:9090")).unwrap();
        assert!(other.contains(" - "), "{wide}");
        // 80 columns: the endpoint keeps its room; the pod of the row
        // selected is in the title.
        let narrow = screen(&mut m);
        assert!(!narrow.contains("POD"), "{narrow}");
        assert!(narrow.contains("10.0.0.2:8080"), "{narrow}");
        assert!(!narrow.contains("shop/web"), "nothing selected: {narrow}");
        m.table.select(Some(0));
        let narrow = screen(&mut m);
        assert!(narrow.contains("pod shop/web-7d9f8-x2x4q"), "{narrow}");
    }

    #[test]
    fn fits_80x24_with_rows_findings_and_keys() {
        let mut m = model();
        let s = screen(&mut m);
        let lines: Vec<&str> = s.lines().collect();
        assert_eq!(lines.len(), 24);
        assert!(lines[0].contains("tcplinger top"), "{s}");
        assert!(
            s.contains("PROCESS") && s.contains("ENDPOINT") && s.contains("CW_AGE"),
            "{s}"
        );
        // Sorted by FIN_WAIT2 p99: the slow endpoint first.
        let first = s.find("10.0.0.2:8080").unwrap();
        let second = s.find("10.0.0.2:9090").unwrap();
        assert!(first < second, "{s}");
        assert!(
            s.contains(" client_timeout_stuck_server 4242/app 10.0.0.2:8080"),
            "{s}"
        );
        assert!(s.contains("FIN_WAIT2 p50 2.00s"), "{s}");
        assert!(lines[23].contains("q quit"), "{s}");
    }

    #[test]
    fn keys_sort_select_and_quit() {
        let mut m = model();
        let press = |c| KeyEvent::new(c, KeyModifiers::NONE);
        assert!(matches!(
            on_key(&mut m, press(KeyCode::Char('s'))),
            Action::Redraw
        ));
        assert_eq!(m.sort_key(), SortKey::Established);
        assert!(matches!(
            on_key(&mut m, press(KeyCode::Down)),
            Action::Redraw
        ));
        assert!(matches!(
            on_key(&mut m, press(KeyCode::Down)),
            Action::Redraw
        ));
        assert_eq!(m.table.selected(), Some(1), "stays on the last row");
        assert!(matches!(
            on_key(&mut m, press(KeyCode::Char('q'))),
            Action::Quit
        ));
        assert!(matches!(
            on_key(
                &mut m,
                KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL)
            ),
            Action::Quit
        ));
        assert!(matches!(
            on_key(&mut m, press(KeyCode::Char('x'))),
            Action::Nothing
        ));
    }
}
