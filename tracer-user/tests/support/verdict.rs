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

/// A report of `server` closing first on a TIME_WAIT table of `table`
/// sockets that filled: its group counts the closes that got none
/// (`time_wait_refused`, returned), at most `table` kept one, and only
/// closes that owed one are among them; the report's total and the
/// `server_closes` finding say the same.
pub fn time_wait_refused(report: &Value, server: &str, table: u64) -> u64 {
    let g = report["groups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["comm"] == server && g["role"] == "server")
        .unwrap_or_else(|| panic!("no server group for {server}: {report:#}"));
    let refused = g["time_wait_refused"].as_u64().unwrap_or(0);
    let kept = g["time_wait_closes"].as_u64().unwrap();
    let first = g["closed_by"]["local"].as_u64().unwrap_or(0)
        + g["closed_by"]["simultaneous"].as_u64().unwrap_or(0);
    assert!(refused > 0, "the table filled: {g}");
    assert!(
        kept <= table,
        "no more TIME_WAITs than the table holds: {g}"
    );
    assert!(kept + refused <= first, "only closes that owed one: {g}");
    assert_eq!(report["time_wait_refused"], refused, "{report:#}");
    let f = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["pathology"] == "server_closes" && f["comm"] == server)
        .unwrap_or_else(|| panic!("no server_closes of {server}: {report:#}"));
    #[expect(
        clippy::cast_precision_loss,
        reason = "counts of sockets, far below 2^52"
    )]
    let (refused_figure, table_figure) = (refused as f64, table as f64);
    assert_eq!(figure(f, "time_wait_refused"), refused_figure, "{f}");
    assert!(figure(f, "time_wait_now") <= table_figure, "{f}");
    assert!(
        f["summary"]
            .as_str()
            .unwrap()
            .contains("tcp_max_tw_buckets"),
        "{f}"
    );
    refused
}
