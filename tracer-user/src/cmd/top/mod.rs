//! `tcplinger top`: the loop (refresh every second, keys as they come) and what each key does; the picture is `view`, the screen `draw`.

mod draw;
#[cfg(test)]
mod tests;
mod view;

use std::{
    io::{self, IsTerminal as _},
    time::Duration,
};

use anyhow::Context as _;
use ratatui::crossterm::event::{self, Event, KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use tokio::sync::mpsc;

use self::{
    draw::draw,
    view::{Focus, Model, Replay},
};
use crate::{
    cmd::{Driver, Wake},
    error::UsageError,
    session::Host,
    session::Progress,
    session::analysis::{Analysis, Judging},
    settings,
};

const REFRESH: Duration = Duration::from_secs(1);

/// What a key asks of the loop.
#[derive(Debug, PartialEq, Eq)]
enum Action {
    Quit,
    Redraw,
    /// `Enter`: a group's detail, drawn from the analysis at once.
    Detail,
    /// Space: a replay pauses or resumes.
    Pause,
    /// `n`: a paused replay steps one refresh, at once.
    Step,
    Nothing,
}

/// The keys while a filter is typed: text, Backspace, Enter keeps it, Esc
/// clears it.
fn on_filter_key(model: &mut Model, key: KeyEvent) -> Action {
    match key.code {
        KeyCode::Enter => model.editing = false,
        KeyCode::Esc => {
            model.editing = false;
            model.filter.clear();
        }
        KeyCode::Backspace => {
            model.filter.pop();
        }
        KeyCode::Char('c') if key.modifiers.contains(KeyModifiers::CONTROL) => {
            return Action::Quit;
        }
        KeyCode::Char(c) if model.filter.chars().count() < 40 => model.filter.push(c),
        _ => return Action::Nothing,
    }
    model.table.select(None);
    model.arrange();
    Action::Redraw
}

fn on_key(model: &mut Model, key: KeyEvent) -> Action {
    if key.kind != KeyEventKind::Press {
        return Action::Nothing;
    }
    // Raw mode turns Ctrl-C into a key, not a signal.
    if key.code == KeyCode::Char('c') && key.modifiers.contains(KeyModifiers::CONTROL) {
        return Action::Quit;
    }
    if model.help {
        model.help = false;
        return Action::Redraw;
    }
    if model.editing {
        return on_filter_key(model, key);
    }
    match key.code {
        KeyCode::Esc if model.detail_key.is_some() => {
            model.detail_key = None;
            model.detail = None;
            Action::Redraw
        }
        KeyCode::Char('q') | KeyCode::Esc => Action::Quit,
        KeyCode::Char('?') => {
            model.help = true;
            Action::Redraw
        }
        KeyCode::Char('s') => {
            model.next_sort();
            Action::Redraw
        }
        KeyCode::Char('r') => {
            model.reverse_sort();
            Action::Redraw
        }
        KeyCode::Char('/') => {
            model.editing = true;
            Action::Redraw
        }
        KeyCode::Enter if model.detail_key.is_none() => {
            let key = model.selected_key().or_else(|| {
                model.table.select(Some(0));
                model.selected_key()
            });
            match key {
                Some(key) => {
                    model.detail_key = Some(key);
                    Action::Detail
                }
                None => Action::Nothing,
            }
        }
        KeyCode::Tab | KeyCode::BackTab => {
            model.focus = match model.focus {
                Focus::Table => Focus::Findings,
                Focus::Findings => Focus::Table,
            };
            Action::Redraw
        }
        KeyCode::PageDown => {
            model.scroll_findings(3);
            Action::Redraw
        }
        KeyCode::PageUp => {
            model.scroll_findings(-3);
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
                        Action::Detail => {
                            model.refresh_detail(&mut analysis);
                            true
                        }
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
