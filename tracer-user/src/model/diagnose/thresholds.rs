//! Every threshold the rules judge by, with the real-software figures each was set from (the README's rule table repeats them).

/// Fewest closed connections before a closing pattern is judged.
pub const MIN_CLOSED: u64 = 3;
/// client_timeout_stuck_server: FIN_WAIT2 (client) or CLOSE_WAIT (server)
/// median at least this long, on connections mostly closed by the client.
pub const STUCK_LINGER_MS: f64 = 1_000.0;
/// Share of closes that must follow the pattern (client_timeout_stuck_server).
pub const STUCK_SHARE: f64 = 0.5;
/// server_closes: fewest closes, most of them ending right after an
/// exchange, and among them at least this share (and count) where the
/// server's FIN came first. A keep-alive server never closes first right
/// after answering (0 of 200 with nginx and curl); one that closes after
/// every answer wins the race on 21-58% of connections (nginx and curl,
/// ten runs), 77-86% (Go), 87-98% (Python's http.server) between
/// namespaces, and on nearly all over a real network.
pub const SERVER_CLOSES_MIN: u64 = 10;
pub const SERVER_CLOSES_PROMPT_SHARE: f64 = 0.8;
pub const SERVER_FIRST_SHARE: f64 = 0.05;
pub const SERVER_FIRST_MIN: u64 = 5;
/// no_reuse: fewest connections opened and closed, at this rate or more,
/// this share of them used for one exchange and closed right after it (by
/// either side).
pub const NO_REUSE_MIN_OPENED: u64 = 20;
pub const NO_REUSE_MIN_RATE: f64 = 2.0;
pub const NO_REUSE_ONE_EXCHANGE_SHARE: f64 = 0.8;
/// leaked_idle: ESTABLISHED grew by at least this much, and this share of
/// them is idle.
pub const LEAK_MIN_GROWTH: u64 = 10;
pub const LEAK_IDLE_SHARE: f64 = 0.8;
/// unanswered_requests: at least this many connections wait for an
/// answer, and they are this share of the group's ESTABLISHED ones.
pub const UNANSWERED_MIN: u64 = 8;
pub const UNANSWERED_SHARE: f64 = 0.8;
/// deadline_pooled: fewest closes with a known lifetime; share closed by
/// this side (FIN or RST); median lifetime at least this long; this share
/// of lifetimes within `DEADLINE_BAND` of the median (plus 50 ms of
/// scheduling noise: one connection cut short must not hide the pattern);
/// this share closed while in use (data moved in the last half of their
/// life: a deadline, not an idle timeout); and connections reused (at most
/// this share used for one exchange, else it is a slow answer per
/// connection).
pub const DEADLINE_MIN_CLOSED: u64 = 5;
pub const DEADLINE_LOCAL_SHARE: f64 = 0.8;
pub const DEADLINE_MIN_LIFETIME_MS: f64 = 1_000.0;
pub const DEADLINE_BAND: f64 = 0.1;
pub const DEADLINE_CLUSTER_SHARE: f64 = 0.75;
pub const DEADLINE_BUSY_SHARE: f64 = 0.5;
pub const DEADLINE_ONE_EXCHANGE_SHARE: f64 = 0.5;
/// close_wait_leak: at least this many CLOSE_WAIT sockets, the oldest this old.
pub const CLOSE_WAIT_LEAK_MIN: u64 = 3;
pub const CLOSE_WAIT_LEAK_AGE_MS: f64 = 5_000.0;
/// connect_failures: at least this many connect attempts of a client
/// group failed in the window, and they are at least this share of its
/// attempts.
pub const CONNECT_FAIL_MIN: u64 = 5;
pub const CONNECT_FAIL_SHARE: f64 = 0.5;
/// The network may explain a wait when at least this share of the
/// connections judged retransmitted a segment, or when their RTT p99 is at
/// least this fraction of the wait (an exchange takes a few round trips).
/// On loopback and between namespaces here no connection retransmits and
/// the RTT is 10-100 µs; with 10% of packets dropped on a veth, 1 MiB
/// transfers retransmit on every connection.
pub const NET_RETRANS_SHARE: f64 = 0.1;
pub const NET_RTT_SHARE_OF_WAIT: f64 = 0.1;
/// Share of closes that must carry the TCP figures before a rule built on
/// them judges (they are missing when the kernel's layout could not be read).
pub(super) const FIGURES_SHARE: f64 = 0.8;
