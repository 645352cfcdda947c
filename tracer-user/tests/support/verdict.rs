//! Reading a finding of `report --format json`, shared by the live scenarios and their replayed recordings.

use serde_json::Value;

/// A named figure of a finding's evidence.
pub fn figure(f: &Value, name: &str) -> f64 {
    f["evidence"][name]
        .as_f64()
        .unwrap_or_else(|| panic!("no {name} in {f:#}"))
}

/// The finding weighed the network and cleared it: the connections it
/// judged carried their figures, none retransmitted (between two
/// namespaces nothing is lost), and the summary says so.
pub fn not_the_network(f: &Value) {
    assert_eq!(figure(f, "retrans_pct"), 0.0, "{f:#}");
    assert_eq!(figure(f, "retrans_segments"), 0.0, "{f:#}");
    assert!(figure(f, "rtt_p50_ms") < 10.0, "{f:#}");
    assert!(
        f["summary"]
            .as_str()
            .unwrap()
            .contains(" Not the network: "),
        "{f:#}"
    );
}

/// An `unanswered_requests` finding that cleared the network: the peer's
/// kernel acknowledged every request, so its application is what does not
/// answer.
pub fn peer_acknowledged(f: &Value) {
    assert_eq!(figure(f, "unacked_requests"), 0.0, "{f:#}");
    assert!(
        f["summary"]
            .as_str()
            .unwrap()
            .contains(" Not the network: the peer's TCP acknowledged every request"),
        "{f:#}"
    );
}
