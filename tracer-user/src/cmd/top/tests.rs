//! `top` drawn into an 80x24 (or wider) buffer from a synthetic analysis, and its keys.

use ratatui::{
    Terminal,
    backend::TestBackend,
    crossterm::event::{KeyCode, KeyEvent, KeyModifiers},
    style::Modifier,
};
use tracer_common::TcpState;

use super::{
    Action,
    draw::draw,
    on_key,
    view::{Detail, GONE_AFTER_NS, Model, RowView, SocketView},
};
use crate::{
    model::aggregate::Aggregator,
    model::diagnose::diagnose,
    model::tracker::{ClosedBy, Role},
    settings::SortKey,
    testutil::{id, record},
};

/// Two client groups of pid 4242: :8080 whose FIN_WAIT2 lasts 2 s (a
/// finding), :9090 whose lasts 3 ms.
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
            .map(|(k, g)| RowView::of(k, g, &g.total(), 10.0, &g.total()))
            .collect(),
        findings: diagnose(&a, &[u64::MAX], 10_000_000_000),
        sort: Some(SortKey::FinWait2),
        seeded: true,
        rate_s: 10.0,
        ..Model::default()
    };
    m.arrange();
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

fn press(model: &mut Model, code: KeyCode) -> Action {
    on_key(model, KeyEvent::new(code, KeyModifiers::NONE))
}

fn typed(model: &mut Model, text: &str) {
    for c in text.chars() {
        press(model, KeyCode::Char(c));
    }
}

/// A row of the table (not the findings pane) shows `text`.
fn table_has(screen: &str, text: &str) -> bool {
    screen
        .lines()
        .any(|l| l.starts_with("4242/app") && l.contains(text))
}

fn line_with<'a>(screen: &'a str, text: &str) -> &'a str {
    screen
        .lines()
        .find(|l| l.contains(text))
        .unwrap_or_else(|| panic!("no line with {text}:\n{screen}"))
}

#[test]
fn fits_80x24_with_rows_findings_and_keys() {
    let mut m = model();
    let s = screen(&mut m);
    let lines: Vec<&str> = s.lines().collect();
    assert_eq!(lines.len(), 24);
    assert!(lines[0].contains("tcplinger top"), "{s}");
    assert!(lines[0].contains("2 groups"), "{s}");
    let header = line_with(&s, "PROCESS");
    for column in [
        "ENDPOINT", "LINGER", "ESTAB", "CW", "FW2▼", "TW", "NEW/s", "CW_AGE",
    ] {
        assert!(header.contains(column), "{column}: {s}");
    }
    assert!(s.contains("rates: last 10s"), "{s}");
    // Sorted by FIN_WAIT2 (none open): then by its p99, the slow one first.
    let first = s.find("10.0.0.2:8080").unwrap();
    let second = s.find("10.0.0.2:9090").unwrap();
    assert!(first < second, "{s}");
    assert!(
        s.contains("warning client_timeout_stuck_server 4242/app 10.0.0.2:8080"),
        "{s}"
    );
    assert!(s.contains("FIN_WAIT2 p50 2.00s"), "{s}");
    assert!(
        lines[23].contains("q quit") && lines[23].contains("? help"),
        "{s}"
    );
}

#[test]
fn sort_shows_its_column_and_reverses() {
    let mut m = model();
    assert_eq!(press(&mut m, KeyCode::Char('s')), Action::Redraw);
    assert_eq!(m.sort_key(), SortKey::Rate);
    let s = screen(&mut m);
    assert!(line_with(&s, "PROCESS").contains("NEW/s▼"), "{s}");
    // Both opened 5 over 10 s: the tie goes by name, and stays on reverse.
    for _ in 0..4 {
        press(&mut m, KeyCode::Char('s'));
    }
    assert_eq!(m.sort_key(), SortKey::FinWait2);
    let order = |m: &Model| m.shown.iter().map(|r| r.remote.clone()).collect::<Vec<_>>();
    let before = order(&m);
    assert_eq!(press(&mut m, KeyCode::Char('r')), Action::Redraw);
    let s = screen(&mut m);
    assert!(line_with(&s, "PROCESS").contains("FW2▲"), "{s}");
    let mut reversed = before.clone();
    reversed.reverse();
    assert_eq!(order(&m), reversed);
}

#[test]
fn a_filter_keeps_matching_rows_and_states() {
    let mut m = model();
    assert_eq!(press(&mut m, KeyCode::Char('/')), Action::Redraw);
    typed(&mut m, "9090");
    let s = screen(&mut m);
    assert!(line_with(&s, "filter: 9090").contains("Esc clear"), "{s}");
    press(&mut m, KeyCode::Enter);
    assert!(!m.editing);
    assert_eq!(m.shown.len(), 1);
    let s = screen(&mut m);
    assert!(s.contains("filter \"9090\": 1 of 2"), "{s}");
    assert!(!table_has(&s, ":8080"), "{s}");
    // A state: no group has a socket in CLOSE_WAIT.
    press(&mut m, KeyCode::Char('/'));
    for _ in 0..4 {
        press(&mut m, KeyCode::Backspace);
    }
    typed(&mut m, "close-wait");
    assert!(m.shown.is_empty());
    // A state without a column is text: no row names it.
    for _ in 0.."close-wait".len() {
        press(&mut m, KeyCode::Backspace);
    }
    typed(&mut m, "app");
    assert_eq!(m.shown.len(), 2, "the process name");
    for _ in 0..3 {
        press(&mut m, KeyCode::Backspace);
    }
    // (Even where sockets linger: it is not a column's state.)
    m.rows[0].time_wait = 3;
    m.rows[0].lingering = 3;
    typed(&mut m, "last-ack");
    assert!(m.shown.is_empty());
    for _ in 0.."last-ack".len() {
        press(&mut m, KeyCode::Backspace);
    }
    typed(&mut m, "tw");
    assert_eq!(m.shown.len(), 1, "the row with TIME_WAIT");
    // Esc while typing clears it.
    press(&mut m, KeyCode::Esc);
    assert!(m.filter.is_empty() && !m.editing);
    assert_eq!(m.shown.len(), 2);
    // And then Esc quits (no detail open).
    assert_eq!(press(&mut m, KeyCode::Esc), Action::Quit);
}

#[test]
fn help_lists_the_keys_and_any_key_closes_it() {
    let mut m = model();
    press(&mut m, KeyCode::Char('?'));
    let s = screen(&mut m);
    assert!(
        s.contains(" keys ") && s.contains("reverse the sort"),
        "{s}"
    );
    assert_eq!(
        press(&mut m, KeyCode::Char('q')),
        Action::Redraw,
        "closes, no quit"
    );
    assert!(!screen(&mut m).contains("reverse the sort"));
}

#[test]
fn enter_shows_a_group_in_full_and_esc_goes_back() {
    let mut m = model();
    assert_eq!(press(&mut m, KeyCode::Enter), Action::Detail);
    let key = m.detail_key.expect("the first row");
    assert_eq!(Some(key), m.shown.first().map(|r| r.key));
    // What the loop draws from the analysis, here by hand.
    let row = m.shown[0].clone();
    let mut a = Aggregator::new(10, 0, crate::model::aggregate::Windowing::WHOLE_RUN);
    let c = id(4242, Role::Client, 8080);
    for i in 0..5 {
        let mut r = record(c, ClosedBy::Local, 1_000, Some(2_000));
        r.net = Some(crate::testutil::at_close(
            2048,
            4096,
            150,
            u32::from(i == 0),
            0,
        ));
        a.on_record(&r);
    }
    let mut failed = record(c, ClosedBy::ResetRemote, 1, None);
    failed.connect_failed = Some(crate::model::tracker::ConnectFailure::Refused);
    a.on_record(&failed);
    let total = a.group_of(&key).unwrap().total();
    m.detail = Some(Detail {
        row,
        pids: vec![4242],
        processes: 1,
        recent: total.clone(),
        total,
        findings: m.findings.clone(),
        sockets: (0..30)
            .map(|i| SocketView {
                pid: Some(4242),
                state: TcpState::FinWait2,
                age_ns: Some(1_000_000_000 * (30 - i)),
                local: format!("10.0.0.1:{}", 40000 + i),
                remote: "10.0.0.2:8080".into(),
            })
            .collect(),
    });
    let s = screen(&mut m);
    assert!(s.contains("first FIN: here 100%"), "{s}");
    assert!(line_with(&s, "FIN_WAIT2 ").contains("2.00s"), "{s}");
    assert!(line_with(&s, "RTT ").contains("0.150ms"), "{s}");
    assert!(
        line_with(&s, "network ")
            .contains("1 of 5 retransmitted (1 segment), 2.0KiB out 4.0KiB in each"),
        "{s}"
    );
    assert!(
        line_with(&s, "connects ").contains("failed: refused 1"),
        "{s}"
    );
    assert!(s.contains("client_timeout_stuck_server"), "{s}");
    assert!(s.contains("sockets open now (30)"), "{s}");
    assert!(line_with(&s, "40000").contains("30.00s"), "{s}");
    assert!(s.contains("more (tcplinger sockets"), "{s}");
    assert!(s.lines().count() <= 24);
    assert!(s.lines().last().unwrap().contains("Esc back"), "{s}");
    assert_eq!(press(&mut m, KeyCode::Esc), Action::Redraw);
    assert!(m.detail_key.is_none());
    assert!(screen(&mut m).contains("PROCESS"));
}

#[test]
fn findings_scroll_most_severe_first() {
    let mut m = model();
    let one = m.findings[0].clone();
    m.findings = (0..6).map(|_| one.clone()).collect();
    let s = screen(&mut m);
    assert!(s.contains("findings 1-3 of 6"), "{s}");
    press(&mut m, KeyCode::PageDown);
    assert!(screen(&mut m).contains("findings 4-6 of 6"));
    press(&mut m, KeyCode::PageDown);
    assert!(
        screen(&mut m).contains("findings 4-6 of 6"),
        "never past the last full page"
    );
    press(&mut m, KeyCode::Tab);
    press(&mut m, KeyCode::Up);
    assert!(screen(&mut m).contains("findings 3-5 of 6"));
    press(&mut m, KeyCode::PageUp);
    press(&mut m, KeyCode::PageUp);
    assert!(screen(&mut m).contains("findings 1-3 of 6"));
}

#[test]
fn idle_groups_dim_then_leave() {
    let mut m = model();
    m.rows[0].idle_ns = 1;
    let dimmed = m.rows[0].remote.clone();
    m.arrange();
    let mut terminal = Terminal::new(TestBackend::new(80, 24)).unwrap();
    terminal.draw(|f| draw(f, &mut m)).unwrap();
    let buffer = terminal.backend().buffer().clone();
    let y = (0..24)
        .find(|&y| {
            (0..80)
                .map(|x| buffer[(x, y)].symbol())
                .collect::<String>()
                .contains(&format!("{dimmed} "))
        })
        .unwrap();
    assert!(buffer[(0, y)].modifier.contains(Modifier::DIM));
    m.rows[0].idle_ns = GONE_AFTER_NS;
    m.arrange();
    assert_eq!(m.shown.len(), 1);
    assert!(!table_has(&screen(&mut m), &dimmed));
}

#[test]
fn pods_get_a_column_on_a_wide_screen_and_the_title_on_a_narrow_one() {
    let mut m = model();
    assert!(
        !screen_of(&mut m, 120).contains("POD"),
        "no pods, no column"
    );
    m.rows[0].pod = Some("shop/web-7d9f8-x2x4q".into());
    let pod_row = m.rows[0].remote.clone();
    m.arrange();
    let wide = screen_of(&mut m, 120);
    assert!(line_with(&wide, "PROCESS").contains("POD"), "{wide}");
    assert!(
        line_with(&wide, &pod_row).contains("shop/web-7d9f8-x2x4q"),
        "{wide}"
    );
    let other = m.rows[1].remote.clone();
    assert!(line_with(&wide, &other).contains(" - "), "{wide}");
    // 80 columns: the endpoint keeps its room; the pod of the row
    // selected is in the title.
    let narrow = screen(&mut m);
    assert!(!narrow.contains("POD"), "{narrow}");
    assert!(!narrow.contains("shop/web"), "nothing selected: {narrow}");
    let at = m.shown.iter().position(|r| r.remote == pod_row).unwrap();
    m.table.select(Some(at));
    let narrow = screen(&mut m);
    assert!(narrow.contains("pod shop/web-7d9f8-x2x4q"), "{narrow}");
}

#[test]
fn keys_select_and_quit() {
    let mut m = model();
    assert_eq!(press(&mut m, KeyCode::Down), Action::Redraw);
    assert_eq!(m.table.selected(), Some(0), "the first move: the top row");
    assert_eq!(press(&mut m, KeyCode::Down), Action::Redraw);
    assert_eq!(press(&mut m, KeyCode::Down), Action::Redraw);
    assert_eq!(m.table.selected(), Some(1), "stays on the last row");
    assert_eq!(
        on_key(
            &mut m,
            KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL)
        ),
        Action::Quit
    );
    assert_eq!(press(&mut m, KeyCode::Char('x')), Action::Nothing);
    assert_eq!(press(&mut m, KeyCode::Char('q')), Action::Quit);
}
