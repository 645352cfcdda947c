//! The seven pathologies: rules over the aggregated groups, each finding naming the process, the endpoint, the evidence and the likely cause.
//!
//! Every threshold is a named constant here and in the README. A rule fires
//! only when all of its thresholds are met, so a quiet or healthy group
//! (steady keep-alive traffic) produces nothing.

use tracer_common::TcpState;

use crate::{
    aggregate::{Group, GroupKey},
    tracker::{ClosedBy, Role},
};

/// ESTABLISHED sockets silent this long count as idle.
pub const IDLE_AFTER_NS: u64 = 2_000_000_000;
/// A send unanswered this long counts as an unanswered request.
pub const UNANSWERED_AFTER_NS: u64 = 1_000_000_000;

/// Fewest closed connections before a closing pattern is judged.
pub const MIN_CLOSED: u64 = 3;
/// client_timeout_stuck_server: FIN_WAIT2 (client) or CLOSE_WAIT (server)
/// median at least this long, on connections mostly closed by the client.
pub const STUCK_LINGER_MS: f64 = 1_000.0;
/// Share of closes that must follow the pattern (client_timeout_stuck_server).
pub const STUCK_SHARE: f64 = 0.5;
/// server_closes: fewest closes, and the share closed by the server.
pub const SERVER_CLOSES_MIN: u64 = 10;
pub const SERVER_CLOSES_SHARE: f64 = 0.9;
/// no_reuse: fewest connections opened, at this rate or more, living at
/// most this long (median), closed by the client at least this often.
pub const NO_REUSE_MIN_OPENED: u64 = 20;
pub const NO_REUSE_MIN_RATE: f64 = 2.0;
pub const NO_REUSE_MAX_LIFETIME_MS: f64 = 1_000.0;
pub const NO_REUSE_LOCAL_SHARE: f64 = 0.5;
/// leaked_idle: ESTABLISHED grew by at least this much, and this share of
/// them is idle.
pub const LEAK_MIN_GROWTH: u64 = 10;
pub const LEAK_IDLE_SHARE: f64 = 0.8;
/// unanswered_requests: at least this many connections wait for an
/// answer, and they are this share of the group's ESTABLISHED ones.
pub const UNANSWERED_MIN: u64 = 8;
pub const UNANSWERED_SHARE: f64 = 0.8;
/// deadline_pooled: fewest closes; share closed by this side (FIN or RST);
/// median lifetime at least this long; lifetimes between p10 and p90 within
/// this fraction of the median (plus 50 ms of scheduling noise).
pub const DEADLINE_MIN_CLOSED: u64 = 5;
pub const DEADLINE_LOCAL_SHARE: f64 = 0.8;
pub const DEADLINE_MIN_LIFETIME_MS: f64 = 1_000.0;
pub const DEADLINE_SPREAD: f64 = 0.1;
/// close_wait_leak: at least this many CLOSE_WAIT sockets, the oldest this old.
pub const CLOSE_WAIT_LEAK_MIN: u64 = 3;
pub const CLOSE_WAIT_LEAK_AGE_MS: f64 = 5_000.0;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Pathology {
    ClientTimeoutStuckServer,
    ServerCloses,
    NoReuse,
    LeakedIdle,
    UnansweredRequests,
    DeadlinePooled,
    CloseWaitLeak,
}

impl Pathology {
    pub const fn id(self) -> &'static str {
        match self {
            Self::ClientTimeoutStuckServer => "client_timeout_stuck_server",
            Self::ServerCloses => "server_closes",
            Self::NoReuse => "no_reuse",
            Self::LeakedIdle => "leaked_idle",
            Self::UnansweredRequests => "unanswered_requests",
            Self::DeadlinePooled => "deadline_pooled",
            Self::CloseWaitLeak => "close_wait_leak",
        }
    }
}

/// One named figure of a finding's evidence.
#[derive(Debug, Clone, PartialEq)]
pub enum Figure {
    Count(u64),
    Ms(f64),
    /// 0..=100.
    Percent(f64),
    PerSecond(f64),
    /// File descriptors, filled in when they can be found.
    Fds(Vec<u32>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Finding {
    pub pathology: Pathology,
    pub key: GroupKey,
    pub evidence: Vec<(&'static str, Figure)>,
    pub summary: String,
}

impl Finding {
    pub fn figure(&self, name: &str) -> Option<&Figure> {
        self.evidence
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, f)| f)
    }

    /// One number that grows as the problem does, to tell a finding that
    /// got worse from one that merely persists.
    pub fn magnitude(&self) -> f64 {
        let name = match self.pathology {
            Pathology::ClientTimeoutStuckServer if self.key.role == Role::Client => {
                "fin_wait2_p50_ms"
            }
            Pathology::ClientTimeoutStuckServer => "close_wait_p50_ms",
            Pathology::ServerCloses => "closed",
            Pathology::NoReuse => "opened_per_s",
            Pathology::LeakedIdle => "established_now",
            Pathology::UnansweredRequests => "awaiting_reply",
            Pathology::DeadlinePooled => "closed",
            Pathology::CloseWaitLeak => "close_wait_now",
        };
        match self.figure(name) {
            Some(Figure::Count(n)) => *n as f64,
            Some(Figure::Ms(v) | Figure::Percent(v) | Figure::PerSecond(v)) => *v,
            _ => 0.0,
        }
    }

    /// The decisive figures in a few words, for a one-line display.
    pub fn brief(&self) -> String {
        let f = |name| self.figure(name).map_or_else(|| "?".into(), Figure::show);
        match self.pathology {
            Pathology::ClientTimeoutStuckServer if self.key.role == Role::Client => format!(
                "FIN_WAIT2 p50 {} p99 {}, {} closed here first",
                f("fin_wait2_p50_ms"),
                f("fin_wait2_p99_ms"),
                f("closed_by_local_pct")
            ),
            Pathology::ClientTimeoutStuckServer => format!(
                "CLOSE_WAIT p50 {} p99 {}, {} closed by the peer",
                f("close_wait_p50_ms"),
                f("close_wait_p99_ms"),
                f("closed_by_remote_pct")
            ),
            Pathology::ServerCloses if self.key.role == Role::Client => {
                format!(
                    "server closed {} of {}",
                    f("closed_by_remote_pct"),
                    f("closed")
                )
            }
            Pathology::ServerCloses => format!(
                "closed {} of {} first, {} in TIME_WAIT",
                f("closed_by_local_pct"),
                f("closed"),
                f("time_wait_now")
            ),
            Pathology::NoReuse => format!(
                "{} opened ({}), lifetime p50 {}",
                f("opened"),
                f("opened_per_s"),
                f("lifetime_p50_ms")
            ),
            Pathology::LeakedIdle => format!(
                "ESTABLISHED {} -> {}, {} idle",
                f("established_first"),
                f("established_now"),
                f("idle_pct")
            ),
            Pathology::UnansweredRequests => {
                format!(
                    "{} awaiting a reply, oldest {}",
                    f("awaiting_reply"),
                    f("oldest_wait_ms")
                )
            }
            Pathology::DeadlinePooled => format!(
                "lifetime p50 {} (p10-p90 {}-{})",
                f("lifetime_p50_ms"),
                f("lifetime_p10_ms"),
                f("lifetime_p90_ms")
            ),
            Pathology::CloseWaitLeak => {
                let fds = self
                    .figure("fds")
                    .map(|fds| format!(", fds {}", fds.show()))
                    .unwrap_or_default();
                format!(
                    "{} in CLOSE_WAIT, oldest {}{fds}",
                    f("close_wait_now"),
                    f("oldest_close_wait_ms")
                )
            }
        }
    }
}

fn pct(share: f64) -> Figure {
    Figure::Percent((share * 1000.0).round() / 10.0)
}

fn ms(v: f64) -> Figure {
    Figure::Ms((v * 10.0).round() / 10.0)
}

/// `1.95s` / `850ms`, for summaries.
fn dur(ms: f64) -> String {
    if ms >= 1000.0 {
        format!("{:.2}s", ms / 1000.0)
    } else {
        format!("{ms:.0}ms")
    }
}

fn who(key: &GroupKey) -> String {
    match (key.pid, key.comm) {
        (Some(pid), Some(comm)) => format!("{comm} (pid {pid})"),
        _ => "an unidentified process".into(),
    }
}

type Rule = fn(&GroupKey, &Group, f64) -> Option<Finding>;

/// Every rule over every group. `window_s` is how long the data was
/// gathered, for rates.
pub fn diagnose<'a>(
    groups: impl IntoIterator<Item = (&'a GroupKey, &'a Group)>,
    window_s: f64,
) -> Vec<Finding> {
    let mut findings = Vec::new();
    for (key, g) in groups {
        let rules: [Rule; 7] = [
            client_timeout_stuck_server,
            server_closes,
            no_reuse,
            leaked_idle,
            unanswered_requests,
            deadline_pooled,
            close_wait_leak,
        ];
        findings.extend(rules.iter().filter_map(|rule| rule(key, g, window_s)));
    }
    findings.sort_by(|a, b| {
        a.pathology
            .cmp(&b.pathology)
            .then(a.key.pid.cmp(&b.key.pid))
    });
    findings
}

/// Closes first, then lingers in FIN_WAIT2 (client) / CLOSE_WAIT (server) for seconds.
fn client_timeout_stuck_server(key: &GroupKey, g: &Group, _: f64) -> Option<Finding> {
    if g.closed < MIN_CLOSED {
        return None;
    }
    let (side, dist, state) = match key.role {
        Role::Client => (ClosedBy::Local, &g.fin_wait2, "fin_wait2"),
        Role::Server => (ClosedBy::Remote, &g.close_wait, "close_wait"),
        Role::Unknown => return None,
    };
    let share = g.share(&[side]);
    let p50 = dist.quantile_ms(0.5)?;
    if share < STUCK_SHARE || p50 < STUCK_LINGER_MS {
        return None;
    }
    let p99 = dist.quantile_ms(0.99).unwrap_or(p50);
    let summary = match key.role {
        Role::Client => format!(
            "{} gives up and closes first, then waits {} (p50) in FIN_WAIT2 for {} to close: a client timeout racing a stuck server handler; check the server's handler latency against the client's timeout.",
            who(key),
            dur(p50),
            key.remote()
        ),
        _ => format!(
            "The {} close first and {} keeps their sockets in CLOSE_WAIT for {} (p50): its handler is stuck past the clients' timeout; check what the handler waits on (locks, downstream calls, pool limits).",
            key.far_end(),
            who(key),
            dur(p50)
        ),
    };
    Some(Finding {
        pathology: Pathology::ClientTimeoutStuckServer,
        key: *key,
        evidence: vec![
            ("closed", Figure::Count(g.closed)),
            (
                if key.role == Role::Client {
                    "closed_by_local_pct"
                } else {
                    "closed_by_remote_pct"
                },
                pct(share),
            ),
            (
                if state == "fin_wait2" {
                    "fin_wait2_p50_ms"
                } else {
                    "close_wait_p50_ms"
                },
                ms(p50),
            ),
            (
                if state == "fin_wait2" {
                    "fin_wait2_p99_ms"
                } else {
                    "close_wait_p99_ms"
                },
                ms(p99),
            ),
        ],
        summary,
    })
}

/// The server side sends the first FIN of (nearly) every connection.
fn server_closes(key: &GroupKey, g: &Group, _: f64) -> Option<Finding> {
    if g.closed < SERVER_CLOSES_MIN {
        return None;
    }
    let (side, name) = match key.role {
        Role::Client => (ClosedBy::Remote, "closed_by_remote_pct"),
        Role::Server => (ClosedBy::Local, "closed_by_local_pct"),
        Role::Unknown => return None,
    };
    let share = g.share(&[side]);
    if share < SERVER_CLOSES_SHARE {
        return None;
    }
    let summary = match key.role {
        Role::Client => format!(
            "{} closes {:.0}% of the connections from {}: it closes every connection (Connection: close, or keep-alive off), so TIME_WAIT piles up on the server; check its keep-alive settings.",
            key.remote(),
            share * 100.0,
            who(key)
        ),
        _ => format!(
            "{} closes {:.0}% of its connections with {} first (Connection: close, or keep-alive off): TIME_WAIT piles up here, {} now; check its keep-alive settings.",
            who(key),
            share * 100.0,
            key.far_end(),
            g.now.count(TcpState::TimeWait)
        ),
    };
    let mut evidence = vec![("closed", Figure::Count(g.closed)), (name, pct(share))];
    if key.role == Role::Server {
        evidence.push((
            "time_wait_now",
            Figure::Count(g.now.count(TcpState::TimeWait)),
        ));
    }
    if let Some(p50) = g.lifetime.quantile_ms(0.5) {
        evidence.push(("lifetime_p50_ms", ms(p50)));
    }
    Some(Finding {
        pathology: Pathology::ServerCloses,
        key: *key,
        evidence,
        summary,
    })
}

/// Many short connections to one endpoint, closed by the client.
fn no_reuse(key: &GroupKey, g: &Group, window_s: f64) -> Option<Finding> {
    if key.role != Role::Client || g.opened < NO_REUSE_MIN_OPENED || g.closed < NO_REUSE_MIN_OPENED
    {
        return None;
    }
    let rate = g.opened as f64 / window_s.max(1.0);
    let p50 = g.lifetime.quantile_ms(0.5)?;
    let share = g.share(&[ClosedBy::Local, ClosedBy::ResetLocal]);
    if rate < NO_REUSE_MIN_RATE || p50 > NO_REUSE_MAX_LIFETIME_MS || share < NO_REUSE_LOCAL_SHARE {
        return None;
    }
    Some(Finding {
        pathology: Pathology::NoReuse,
        key: *key,
        evidence: vec![
            ("opened", Figure::Count(g.opened)),
            (
                "opened_per_s",
                Figure::PerSecond((rate * 10.0).round() / 10.0),
            ),
            ("lifetime_p50_ms", ms(p50)),
            ("closed_by_local_pct", pct(share)),
            (
                "time_wait_now",
                Figure::Count(g.now.count(TcpState::TimeWait)),
            ),
        ],
        summary: format!(
            "{} opens a new connection per request to {} ({rate:.1}/s, each living {} p50) and closes it, churning TIME_WAIT on this host: reuse connections (HTTP keep-alive, one shared client/pool).",
            who(key),
            key.remote(),
            dur(p50)
        ),
    })
}

/// ESTABLISHED keeps growing, and nearly all of it is idle. Judged on the
/// side that opens the connections: a server holding them is the victim.
fn leaked_idle(key: &GroupKey, g: &Group, _: f64) -> Option<Finding> {
    if key.role == Role::Server {
        return None;
    }
    let now = g.now.count(TcpState::Established);
    let first = g.established_first.unwrap_or(now);
    let growth = now.saturating_sub(first);
    if growth < LEAK_MIN_GROWTH || now == 0 {
        return None;
    }
    let share = g.now.idle as f64 / now as f64;
    if share < LEAK_IDLE_SHARE {
        return None;
    }
    Some(Finding {
        pathology: Pathology::LeakedIdle,
        key: *key,
        evidence: vec![
            ("established_first", Figure::Count(first)),
            ("established_now", Figure::Count(now)),
            ("idle_now", Figure::Count(g.now.idle)),
            ("idle_pct", pct(share)),
            ("opened", Figure::Count(g.opened)),
            ("closed", Figure::Count(g.closed)),
        ],
        summary: format!(
            "{} holds {now} connections to {} (up from {first}), {:.0}% of them idle: connections are opened and never closed, e.g. a client/transport or pool created per request; reuse one and close what it opens.",
            who(key),
            key.remote(),
            share * 100.0
        ),
    })
}

/// Requests sent, nothing back, and they fill the pool (client side).
fn unanswered_requests(key: &GroupKey, g: &Group, _: f64) -> Option<Finding> {
    if key.role == Role::Server {
        return None;
    }
    let established = g.now.count(TcpState::Established);
    if g.now.awaiting < UNANSWERED_MIN || established == 0 {
        return None;
    }
    let share = g.now.awaiting as f64 / established as f64;
    if share < UNANSWERED_SHARE {
        return None;
    }
    let oldest = g.now.oldest_awaiting_ns as f64 / 1e6;
    Some(Finding {
        pathology: Pathology::UnansweredRequests,
        key: *key,
        evidence: vec![
            ("awaiting_reply", Figure::Count(g.now.awaiting)),
            ("established_now", Figure::Count(established)),
            ("awaiting_pct", pct(share)),
            ("oldest_wait_ms", ms(oldest)),
        ],
        summary: format!(
            "{} has {} connections to {} whose last act was sending a request, unanswered for up to {}: the peer does not answer and the pool fills up (a pool limit may be reached); check the peer's health and set a request timeout.",
            who(key),
            g.now.awaiting,
            key.remote(),
            dur(oldest)
        ),
    })
}

/// Lifetimes cluster at one value and end by this side's close or reset,
/// while the peer answers the close promptly.
fn deadline_pooled(key: &GroupKey, g: &Group, _: f64) -> Option<Finding> {
    if g.closed < DEADLINE_MIN_CLOSED || key.role == Role::Server {
        return None;
    }
    let share = g.share(&[ClosedBy::Local, ClosedBy::ResetLocal]);
    let p50 = g.lifetime.quantile_ms(0.5)?;
    let (p10, p90) = (g.lifetime.quantile_ms(0.1)?, g.lifetime.quantile_ms(0.9)?);
    let clustered = p90 - p10 <= p50 * DEADLINE_SPREAD + 50.0;
    // A peer that keeps FIN_WAIT2 long is the stuck-server pattern instead.
    let prompt_peer = g
        .fin_wait2
        .quantile_ms(0.5)
        .is_none_or(|fw2| fw2 < STUCK_LINGER_MS);
    if share < DEADLINE_LOCAL_SHARE || p50 < DEADLINE_MIN_LIFETIME_MS || !clustered || !prompt_peer
    {
        return None;
    }
    Some(Finding {
        pathology: Pathology::DeadlinePooled,
        key: *key,
        evidence: vec![
            ("closed", Figure::Count(g.closed)),
            ("closed_by_local_pct", pct(share)),
            ("lifetime_p10_ms", ms(p10)),
            ("lifetime_p50_ms", ms(p50)),
            ("lifetime_p90_ms", ms(p90)),
        ],
        summary: format!(
            "{} closes its connections to {} {} after they open (p10-p90 {}-{}): a fixed deadline or maximum connection age on pooled connections; check client timeouts and pool max-lifetime settings.",
            who(key),
            key.remote(),
            dur(p50),
            dur(p10),
            dur(p90)
        ),
    })
}

/// Sockets the peer closed that the application never closes.
fn close_wait_leak(key: &GroupKey, g: &Group, _: f64) -> Option<Finding> {
    let count = g.now.count(TcpState::CloseWait);
    let oldest = g.now.oldest_close_wait_ns as f64 / 1e6;
    if count < CLOSE_WAIT_LEAK_MIN || oldest < CLOSE_WAIT_LEAK_AGE_MS {
        return None;
    }
    Some(Finding {
        pathology: Pathology::CloseWaitLeak,
        key: *key,
        evidence: vec![
            ("close_wait_now", Figure::Count(count)),
            ("oldest_close_wait_ms", ms(oldest)),
        ],
        summary: format!(
            "{} has {count} sockets with {} in CLOSE_WAIT, the oldest for {}: the peer closed them and the application never does, a socket leak; check the error paths that return without close().",
            who(key),
            key.far_end(),
            dur(oldest)
        ),
    })
}

#[cfg(test)]
mod tests;
