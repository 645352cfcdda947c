//! The rules: one function per pathology, each reading a group's [`Case`] and giving a finding when every threshold of its pattern is met.

use tracer_common::TcpState;

use crate::{
    model::aggregate::{PROMPT_MS, ratio},
    model::tracker::{ClosedBy, ConnectFailure, Role},
};

use super::{
    CLOSE_WAIT_LEAK_AGE_MS, CLOSE_WAIT_LEAK_MIN, CONNECT_FAIL_MIN, CONNECT_FAIL_SHARE, Case,
    DEADLINE_BAND, DEADLINE_BUSY_SHARE, DEADLINE_CLUSTER_SHARE, DEADLINE_LOCAL_SHARE,
    DEADLINE_MIN_CLOSED, DEADLINE_MIN_LIFETIME_MS, DEADLINE_ONE_EXCHANGE_SHARE, LEAK_IDLE_SHARE,
    LEAK_MIN_GROWTH, MIN_CLOSED, NO_REUSE_MIN_OPENED, NO_REUSE_MIN_RATE,
    NO_REUSE_ONE_EXCHANGE_SHARE, SERVER_CLOSES_MIN, SERVER_CLOSES_PROMPT_SHARE, SERVER_FIRST_MIN,
    SERVER_FIRST_SHARE, STUCK_LINGER_MS, STUCK_SHARE, UNANSWERED_MIN, UNANSWERED_SHARE,
    finding::{Figure, Finding, Pathology, dur, ms, pct},
    network::{network_awaiting, network_closes},
};

/// Closes first, then lingers in FIN_WAIT2 (client) / CLOSE_WAIT (server) for seconds.
pub(super) fn client_timeout_stuck_server(c: &Case) -> Option<Finding> {
    let s = c.stats;
    if s.closed < MIN_CLOSED {
        return None;
    }
    let (side, dist) = match c.key.role {
        Role::Client => (ClosedBy::Local, &s.fin_wait2),
        Role::Server => (ClosedBy::Remote, &s.close_wait),
        Role::Unknown => return None,
    };
    let share = s.share(&[side]);
    let p50 = dist.quantile_ms(0.5)?;
    if share < STUCK_SHARE || p50 < STUCK_LINGER_MS {
        return None;
    }
    let p99 = dist.quantile_ms(0.99).unwrap_or(p50);
    let client = c.key.role == Role::Client;
    let mut evidence = vec![
        ("closed", Figure::Count(s.closed)),
        (
            if client {
                "closed_by_local_pct"
            } else {
                "closed_by_remote_pct"
            },
            pct(share),
        ),
        (
            if client {
                "fin_wait2_p50_ms"
            } else {
                "close_wait_p50_ms"
            },
            ms(p50),
        ),
        (
            if client {
                "fin_wait2_p99_ms"
            } else {
                "close_wait_p99_ms"
            },
            ms(p99),
        ),
    ];
    // The wait the network would have to explain: the client's, until it
    // gave up (the lifetime), or the linger itself.
    let wait = s.lifetime.quantile_ms(0.5).unwrap_or(p50).max(p50);
    let network = network_closes(s, wait, &mut evidence);
    let finding = c.finding(Pathology::ClientTimeoutStuckServer, None, evidence, |who, far| {
        if client {
            format!(
                "{who} gives up and closes first, then waits {} (p50) in FIN_WAIT2 for {far} to close: a client timeout racing a stuck server handler; check the server's handler latency against the client's timeout.",
                dur(p50)
            )
        } else {
            let far = far_end_capitalized(far);
            format!(
                "{far} close first and {who} keeps their sockets in CLOSE_WAIT for {} (p50): its handler is stuck past the clients' timeout; check what the handler waits on (locks, downstream calls, pool limits).",
                dur(p50)
            )
        }
    });
    Some(finding.with_note(&network))
}

pub(super) fn far_end_capitalized(far: &str) -> String {
    let mut chars = far.chars();
    chars
        .next()
        .map(|c| c.to_uppercase().chain(chars).collect())
        .unwrap_or_default()
}

/// The server ends its connections right after answering: most closes come
/// within [`PROMPT_MS`] of its last exchange, and on a fair share of them
/// its FIN came first (on the rest the client won the race to close).
pub(super) fn server_closes(c: &Case) -> Option<Finding> {
    let s = c.stats;
    if c.key.role != Role::Server || s.closed < SERVER_CLOSES_MIN || !c.has_figures() {
        return None;
    }
    let prompt_share = ratio(s.prompt(), s.with_figures);
    let first_here = s.prompt_by(ClosedBy::Local) + s.prompt_by(ClosedBy::Simultaneous);
    let first_share = ratio(first_here, s.with_figures);
    if prompt_share < SERVER_CLOSES_PROMPT_SHARE
        || first_share < SERVER_FIRST_SHARE
        || first_here < SERVER_FIRST_MIN
    {
        return None;
    }
    let time_wait = c.group.now.count(TcpState::TimeWait);
    let mut evidence = vec![
        ("closed", Figure::Count(s.closed)),
        ("prompt_close_pct", pct(prompt_share)),
        ("closed_by_local_pct", pct(first_share)),
        (
            "one_exchange_pct",
            pct(ratio(s.one_exchange, s.with_figures)),
        ),
        ("time_wait_now", Figure::Count(time_wait)),
    ];
    if let Some(p50) = s.lifetime.quantile_ms(0.5) {
        evidence.push(("lifetime_p50_ms", ms(p50)));
    }
    // The pile can be capped by the kernel: past `tcp_max_tw_buckets` a
    // close owed a TIME_WAIT gets none.
    let refused = s.time_wait_refused;
    let piles = if refused > 0 {
        evidence.push(("time_wait_refused", Figure::Count(refused)));
        format!(
            "TIME_WAIT piles up here, {time_wait} now, and the kernel's table is full: {refused} of its closes got no TIME_WAIT (net.ipv4.tcp_max_tw_buckets), so a late segment of theirs meets a RST."
        )
    } else {
        format!("TIME_WAIT piles up here, {time_wait} now.")
    };
    Some(c.finding(Pathology::ServerCloses, None, evidence, |who, far| {
        format!(
            "{who} ends {:.0}% of its connections with {far} right after answering (within {PROMPT_MS}ms), and its FIN comes first on {:.0}% (the clients close at once on the rest): keep-alive is off or it answers Connection: close (set by it, or asked for by its clients); {piles}",
            prompt_share * 100.0,
            first_share * 100.0,
        )
    }))
}

/// Many connections to one endpoint, each used for one exchange and closed
/// right after it, whoever closed.
pub(super) fn no_reuse(c: &Case) -> Option<Finding> {
    let s = c.stats;
    if c.key.role != Role::Client
        || s.opened < NO_REUSE_MIN_OPENED
        || s.closed < NO_REUSE_MIN_OPENED
        || !c.has_figures()
    {
        return None;
    }
    let rate = s.opened as f64 / c.opening_s.max(1.0);
    let once = ratio(s.one_exchange, s.with_figures);
    if rate < NO_REUSE_MIN_RATE || once < NO_REUSE_ONE_EXCHANGE_SHARE {
        return None;
    }
    let server_first = s.share(&[ClosedBy::Remote]);
    let mut evidence = vec![
        ("opened", Figure::Count(s.opened)),
        (
            "opened_per_s",
            Figure::PerSecond((rate * 10.0).round() / 10.0),
        ),
        ("one_exchange_pct", pct(once)),
        ("closed_by_remote_pct", pct(server_first)),
        (
            "time_wait_now",
            Figure::Count(c.group.now.count(TcpState::TimeWait)),
        ),
    ];
    if let Some(p50) = s.lifetime.quantile_ms(0.5) {
        evidence.push(("lifetime_p50_ms", ms(p50)));
    }
    Some(c.finding(Pathology::NoReuse, None, evidence, |who, far| {
        let why = if server_first >= 0.5 {
            format!(
                "the server closed {:.0}% of them first: it answers Connection: close or has keep-alive off, unless this client asks for that; check both sides' keep-alive settings",
                server_first * 100.0
            )
        } else {
            "reuse connections (HTTP keep-alive, one shared client or pool per process; a process per request cannot)".into()
        };
        format!(
            "{who} opens a new connection to {far} for each request ({rate:.1}/s, {:.0}% used for one exchange and closed right after), churning TIME_WAIT: {why}.",
            once * 100.0
        )
    }))
}

/// Lifetimes cluster at one value and end by this side's close or reset
/// while in use, while the peer answers the close promptly.
pub(super) fn deadline_pooled(c: &Case) -> Option<Finding> {
    let s = c.stats;
    if c.key.role == Role::Server || s.timed < DEADLINE_MIN_CLOSED || !c.has_figures() {
        return None;
    }
    let share = s.share(&[ClosedBy::Local, ClosedBy::ResetLocal]);
    let p50 = s.lifetime.quantile_ms(0.5)?;
    let band = p50 * DEADLINE_BAND + 50.0;
    let clustered = s.lifetime.share_within_ms(p50 - band, p50 + band);
    let busy = ratio(s.busy, s.timed.min(s.with_figures));
    let once = ratio(s.one_exchange, s.with_figures);
    // A peer that keeps FIN_WAIT2 long is the stuck-server pattern instead.
    let prompt_peer = s
        .fin_wait2
        .quantile_ms(0.5)
        .is_none_or(|fw2| fw2 < STUCK_LINGER_MS);
    if share < DEADLINE_LOCAL_SHARE
        || p50 < DEADLINE_MIN_LIFETIME_MS
        || clustered < DEADLINE_CLUSTER_SHARE
        || busy < DEADLINE_BUSY_SHARE
        || once > DEADLINE_ONE_EXCHANGE_SHARE
        || !prompt_peer
    {
        return None;
    }
    let (p10, p90) = (s.lifetime.quantile_ms(0.1)?, s.lifetime.quantile_ms(0.9)?);
    let mut evidence = vec![
        ("closed", Figure::Count(s.timed)),
        ("closed_by_local_pct", pct(share)),
        ("lifetime_p10_ms", ms(p10)),
        ("lifetime_p50_ms", ms(p50)),
        ("lifetime_p90_ms", ms(p90)),
        ("clustered_pct", pct(clustered)),
        ("band_ms", ms(band)),
        ("closed_in_use_pct", pct(busy)),
    ];
    let network = network_closes(s, p50, &mut evidence);
    let finding = c.finding(Pathology::DeadlinePooled, None, evidence, |who, far| {
        format!(
            "{who} closes its connections to {far} {} after they open ({:.0}% within ±{}), while they are in use: a fixed deadline or maximum connection age on pooled connections (requests in flight fail, or are retried); check deadlines set once per connection, client timeouts and pool max-lifetime settings.",
            dur(p50),
            clustered * 100.0,
            dur(band)
        )
    });
    Some(finding.with_note(&network))
}

/// ESTABLISHED keeps growing, and nearly all of it is idle. Judged on the
/// side that opens the connections: a server holding them is the victim.
pub(super) fn leaked_idle(c: &Case) -> Option<Finding> {
    if c.key.role == Role::Server {
        return None;
    }
    let now = &c.group.now;
    let (first, established) = c.group.established_growth(c.since_ns);
    let growth = established.saturating_sub(first);
    if growth < LEAK_MIN_GROWTH || established == 0 {
        return None;
    }
    let share = ratio(now.idle, established);
    if share < LEAK_IDLE_SHARE {
        return None;
    }
    let evidence = vec![
        ("established_first", Figure::Count(first)),
        ("established_now", Figure::Count(established)),
        ("idle_now", Figure::Count(now.idle)),
        ("idle_pct", pct(share)),
    ];
    Some(c.finding(
        Pathology::LeakedIdle,
        now.main_pid(|p| p.established),
        evidence,
        |who, far| {
            format!(
                "{who} holds {established} connections to {far} (up from {first}), {:.0}% of them idle: connections are opened and never closed, e.g. a client/transport or pool created per request; reuse one and close what it opens.",
                share * 100.0
            )
        },
    ))
}

/// Requests sent, nothing back, and they fill the pool (client side).
pub(super) fn unanswered_requests(c: &Case) -> Option<Finding> {
    if c.key.role == Role::Server {
        return None;
    }
    let now = &c.group.now;
    let established = now.count(TcpState::Established);
    if now.awaiting < UNANSWERED_MIN || established == 0 {
        return None;
    }
    let share = ratio(now.awaiting, established);
    if share < UNANSWERED_SHARE {
        return None;
    }
    let oldest = now.oldest_awaiting_ns as f64 / 1e6;
    let awaiting = now.awaiting;
    let mut evidence = vec![
        ("awaiting_reply", Figure::Count(awaiting)),
        ("established_now", Figure::Count(established)),
        ("awaiting_pct", pct(share)),
        ("oldest_wait_ms", ms(oldest)),
    ];
    let network = network_awaiting(now, &mut evidence);
    let finding = c.finding(
        Pathology::UnansweredRequests,
        now.main_pid(|p| p.awaiting),
        evidence,
        |who, far| {
            format!(
                "{who} has {awaiting} connections to {far} whose last act was sending a request, unanswered for up to {}: the peer does not answer and the pool fills up (a pool limit may be reached); check the peer's health and set a request timeout.",
                dur(oldest)
            )
        },
    );
    Some(finding.with_note(&network))
}

/// Sockets the peer closed that the application never closes.
pub(super) fn close_wait_leak(c: &Case) -> Option<Finding> {
    let now = &c.group.now;
    let count = now.count(TcpState::CloseWait);
    let oldest = now.oldest_close_wait_ns as f64 / 1e6;
    if count < CLOSE_WAIT_LEAK_MIN || oldest < CLOSE_WAIT_LEAK_AGE_MS {
        return None;
    }
    let evidence = vec![
        ("close_wait_now", Figure::Count(count)),
        ("oldest_close_wait_ms", ms(oldest)),
    ];
    Some(c.finding(
        Pathology::CloseWaitLeak,
        now.main_pid(|p| p.close_wait),
        evidence,
        |who, far| {
            format!(
                "{who} has {count} sockets with {far} in CLOSE_WAIT, the oldest for {}: the peer closed them and the application never does, a socket leak; check the error paths that return without close().",
                dur(oldest)
            )
        },
    ))
}

/// A client's connect attempts keep failing: refused, timed out,
/// unreachable, or given up by the process itself.
pub(super) fn connect_failures(c: &Case) -> Option<Finding> {
    let s = c.stats;
    let failed = s.connects_failed();
    if c.key.role != Role::Client || failed < CONNECT_FAIL_MIN {
        return None;
    }
    // Attempts: the openings counted in the window (an attempt's opening
    // and its failure may fall in different windows).
    let attempts = s.opened.max(failed);
    let share = ratio(failed, attempts);
    if share < CONNECT_FAIL_SHARE {
        return None;
    }
    let mut evidence = vec![
        ("connect_attempts", Figure::Count(attempts)),
        ("connects_failed", Figure::Count(failed)),
        ("failed_pct", pct(share)),
    ];
    for reason in ConnectFailure::ALL {
        let n = s.connect_failed(reason);
        if n > 0 {
            evidence.push((failed_name(reason), Figure::Count(n)));
        }
    }
    if s.failed_syn_retrans > 0 {
        evidence.push(("syn_retransmits", Figure::Count(s.failed_syn_retrans)));
    }
    let main = ConnectFailure::ALL
        .into_iter()
        .max_by_key(|&r| (s.connect_failed(r), std::cmp::Reverse(r)))
        .unwrap_or(ConnectFailure::Other);
    let syns = s.failed_syn_retrans;
    Some(c.finding(Pathology::ConnectFailures, None, evidence, |who, far| {
        let why = match main {
            ConnectFailure::Refused => format!(
                "{far} answers its SYNs with a RST: nothing listens on that port (the service is down, restarting, or the address or port is wrong) or a firewall rejects"
            ),
            ConnectFailure::Timeout => format!(
                "its SYNs to {far} go unanswered until the kernel gives up ({syns} SYN retransmissions in all): a firewall drops them, or the host is down or unreachable"
            ),
            ConnectFailure::Unreachable => format!(
                "ICMP errors say {far} cannot be reached: check routes, the address and firewalls on the way"
            ),
            ConnectFailure::Abandoned if syns > 0 => format!(
                "it gives up before the handshake with {far} completes (its own connect timeout, shorter than the kernel's), after {syns} SYN retransmissions in all: the SYNs or their answers are lost on the way (a firewall dropping them, a host down), or the peer's accept backlog is full"
            ),
            ConnectFailure::Abandoned => format!(
                "it gives up before the handshake with {far} completes (its own connect timeout, shorter than the kernel's first SYN retry): the timeout is shorter than the round trip, or the peer is slow to answer SYNs"
            ),
            ConnectFailure::Other => {
                "the kernel ended them with errors other than refused or timed out (see the records' error), or the reason could not be read".into()
            }
        };
        format!(
            "{who} fails to connect to {far}: {failed} of {attempts} attempts ({:.0}%), mostly {}: {why}.",
            share * 100.0,
            main.name()
        )
    }))
}

/// The evidence name of a count of failed connects.
const fn failed_name(reason: ConnectFailure) -> &'static str {
    match reason {
        ConnectFailure::Refused => "failed_refused",
        ConnectFailure::Timeout => "failed_timeout",
        ConnectFailure::Unreachable => "failed_unreachable",
        ConnectFailure::Abandoned => "failed_abandoned",
        ConnectFailure::Other => "failed_other",
    }
}
