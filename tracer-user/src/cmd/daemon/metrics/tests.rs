//! The metrics' unit tests: what each family exports, and every label budget under churn.

use std::{
    collections::HashSet,
    net::{IpAddr, Ipv4Addr},
};

use super::*;
use crate::{
    model::event::{Comm, Family},
    model::tracker::{ClosedBy, ConnectFailure, Role, TimewaitEnd},
    testutil::{comm, owner, record},
};

fn id(raddr: IpAddr, rport: u16) -> ConnId {
    ConnId {
        netns: 1,
        owner: Some(owner(7, "curl")),
        role: Role::Client,
        family: Family::Ipv4,
        laddr: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
        lport: 40000,
        raddr,
        rport,
    }
}

fn series(text: &str, metric: &str) -> usize {
    text.lines()
        .filter(|l| l.starts_with(&format!("{metric}{{")))
        .count()
}

#[test]
fn closes_and_lingers_are_exported_in_seconds() {
    let mut m = Metrics::new(10, 0);
    let c = id(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)), 8080);
    for _ in 0..3 {
        m.on_record(&record(c, ClosedBy::Local, 1_000, Some(2_000)), &mut |_| {
            None
        });
    }
    let text = m.encode();
    assert!(
        text.contains(r#"tcplinger_connections_closed_total{closed_by="local",comm="curl",container="",container_id="",namespace="",pod="",pod_uid="",port="8080",remote_addr="10.0.0.2",role="client"} 3"#),
        "{text}"
    );
    assert!(
        text.contains(r#"tcplinger_fin_wait2_seconds_count{comm="curl",role="client"} 3"#),
        "{text}"
    );
    assert!(
        text.contains(r#"tcplinger_fin_wait2_seconds_sum{comm="curl",role="client"} 6"#),
        "{text}"
    );
    assert!(
        text.contains(r#"tcplinger_fin_wait2_seconds_bucket{comm="curl",role="client",le="2"} 3"#),
        "{text}"
    );
    assert!(
        text.contains(r#"tcplinger_fin_wait2_seconds_bucket{comm="curl",role="client",le="1"} 0"#),
        "{text}"
    );
}

#[test]
fn network_figures_and_failed_connects_are_exported_per_connection_series() {
    let mut m = Metrics::new(10, 0);
    let c = id(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)), 8080);
    let net = crate::testutil::at_close(1000, 50, 400, 2, 0);
    for _ in 0..2 {
        let mut r = record(c, ClosedBy::Local, 1_000, None);
        r.net = Some(net);
        m.on_record(&r, &mut |_| None);
    }
    let mut failed = record(c, ClosedBy::ResetRemote, 1, None);
    failed.connect_failed = Some(ConnectFailure::Refused);
    failed.net = Some(crate::testutil::at_close(0, 0, 0, 0, 111));
    m.on_record(&failed, &mut |_| None);
    let text = m.encode();
    let labels = r#"comm="curl",container="",container_id="",namespace="",pod="",pod_uid="",port="8080",remote_addr="10.0.0.2",role="client""#;
    assert!(
        text.contains(&format!(
            "tcplinger_retransmitted_segments_total{{{labels}}} 4"
        )),
        "{text}"
    );
    assert!(
        text.contains(r#"tcplinger_connection_bytes_total{comm="curl",container="",container_id="",direction="sent",namespace="",pod="",pod_uid="",port="8080",remote_addr="10.0.0.2",role="client"} 2000"#),
        "{text}"
    );
    assert!(
        text.contains(r#"tcplinger_connection_bytes_total{comm="curl",container="",container_id="",direction="received",namespace="",pod="",pod_uid="",port="8080",remote_addr="10.0.0.2",role="client"} 100"#),
        "{text}"
    );
    assert!(
        text.contains(r#"tcplinger_connect_failures_total{comm="curl",container="",container_id="",namespace="",pod="",pod_uid="",port="8080",reason="refused",remote_addr="10.0.0.2",role="client"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(
            r#"tcplinger_connection_rtt_seconds_bucket{comm="curl",role="client",le="0.0005"} 2"#
        ),
        "{text}"
    );
    // A failed attempt is not a closed connection.
    assert!(
        text.contains(&format!(
            r#"tcplinger_connections_closed_total{{closed_by="local",{labels}}} 2"#
        )) && !text.contains(r#"closed_by="reset_remote""#),
        "{text}"
    );
}

#[test]
fn closes_refused_a_time_wait_are_counted_per_connection_series_and_only_they() {
    let mut m = Metrics::new(10, 0);
    let c = id(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)), 8080);
    m.on_record(&record(c, ClosedBy::Local, 1, None), &mut |_| None);
    assert!(
        !m.encode().contains("tcplinger_time_wait_refused_total{"),
        "no series before a refused close"
    );
    for _ in 0..3 {
        let mut r = record(c, ClosedBy::Local, 1, None);
        r.time_wait = false;
        r.time_wait_refused = true;
        m.on_record(&r, &mut |_| None);
    }
    let text = m.encode();
    let labels = r#"comm="curl",container="",container_id="",namespace="",pod="",pod_uid="",port="8080",remote_addr="10.0.0.2",role="client""#;
    assert!(
        text.contains(&format!("tcplinger_time_wait_refused_total{{{labels}}} 3")),
        "{text}"
    );
}

#[test]
fn ten_thousand_endpoints_stay_within_the_budget() {
    let limit = 20;
    let mut m = Metrics::new(limit, 0);
    for i in 0..10_000u32 {
        let addr = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i));
        let repeats = if i % 500 == 0 { 5 } else { 1 };
        for _ in 0..repeats {
            m.on_record(
                &record(id(addr, 443), ClosedBy::Remote, 10, None),
                &mut |_| None,
            );
        }
    }
    let text = m.encode();
    let n = series(&text, "tcplinger_connections_closed_total");
    assert!(n <= limit + 1, "{n} series for a budget of {limit}");
    assert!(text.contains(r#"port="other",remote_addr="other""#));
    // The first endpoints seen have series of their own, with all their closes.
    assert!(
        text.contains(r#"port="443",remote_addr="10.0.0.0",role="client"} 5"#),
        "{text}"
    );
    let total: u64 = text
        .lines()
        .filter(|l| l.starts_with("tcplinger_connections_closed_total{"))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum();
    assert_eq!(total, 10_000 - 20 + 20 * 5, "nothing lost by folding");
}

#[test]
fn label_budget_keeps_its_slots_while_used() {
    let mut b = LabelBudget::new(2);
    assert_eq!(b.label("a"), "a");
    assert_eq!(b.label("b"), "b");
    assert_eq!(b.label("c"), OTHER, "budget spent");
    assert_eq!(b.label("a"), "a");
    b.at(STALE_NS);
    assert_eq!(b.label("a"), "a", "a is used again");
    b.at(STALE_NS + 1);
    assert_eq!(b.release_stale(STALE_NS), HashSet::from(["b".to_string()]));
    assert_eq!(b.label("c"), "c", "b's slot went to c");
}

/// A daemon started on a machine up for a day: the records that come
/// before its first refresh are counted at its start, not "at 0" (which
/// the first refresh took for a day unused, deleting their series).
#[test]
fn series_fed_before_the_first_refresh_are_kept() {
    const DAY: u64 = 86_400_000_000_000;
    let mut m = Metrics::new(10, DAY);
    let curl = id(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)), 8080);
    for _ in 0..3 {
        m.on_record(&record(curl, ClosedBy::Local, 10, Some(1)), &mut |_| None);
    }
    let before = m.encode();
    assert!(
        before.contains(r#"closed_by="local",comm="curl""#),
        "{before}"
    );
    m.at(DAY + 1_000_000_000);
    m.release_stale();
    assert_eq!(m.encode(), before, "the refresh deleted nothing");
}

#[test]
fn series_of_processes_gone_are_deleted_and_their_slots_reused() {
    let mut m = Metrics::new(10, 0);
    m.at(0);
    let mut curl = id(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)), 8080);
    m.on_record(&record(curl, ClosedBy::Local, 10, Some(1)), &mut |_| None);
    let mut wget = curl;
    wget.owner.as_mut().unwrap().comm = Comm::new(comm("wget"));
    // wget keeps going; curl stopped.
    for minute in 1..=11u64 {
        m.at(minute * 60_000_000_000);
        m.on_record(&record(wget, ClosedBy::Local, 10, Some(1)), &mut |_| None);
        m.release_stale();
    }
    let text = m.encode();
    assert!(!text.contains(r#"comm="curl""#), "{text}");
    assert!(
        text.contains(r#"tcplinger_connections_closed_total{closed_by="local",comm="wget""#),
        "{text}"
    );
    assert_eq!(m.comms.admitted.len(), 1);
    // curl is back: a fresh series of its own.
    curl.rport = 8080;
    m.on_record(&record(curl, ClosedBy::Local, 10, Some(1)), &mut |_| None);
    assert!(m.encode().contains(r#"closed_by="local",comm="curl",container="",container_id="",namespace="",pod="",pod_uid="",port="8080",remote_addr="10.0.0.2",role="client"} 1"#));
}

#[test]
fn socket_gauges_are_replaced_not_accumulated() {
    let mut m = Metrics::new(10, 0);
    let c = id(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)), 8080);
    m.set_sockets([(c, TcpState::CloseWait), (c, TcpState::CloseWait)], |_| {
        None
    });
    assert!(m.encode().contains(
        r#"tcplinger_sockets{comm="curl",container="",container_id="",namespace="",pod="",pod_uid="",state="CLOSE_WAIT"} 2"#
    ));
    m.set_sockets([(c, TcpState::Established)], |_| None);
    let text = m.encode();
    assert!(!text.contains("CLOSE_WAIT"), "{text}");
    assert!(text.contains(r#"state="ESTABLISHED"} 1"#), "{text}");
}

#[test]
fn followed_timewait_sockets_are_counted_as_they_come_and_go() {
    let mut m = Metrics::new(10, 0);
    let c = id(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)), 8080);
    m.on_timewait_start(&c);
    m.on_timewait_start(&c);
    m.set_sockets([(c, TcpState::TimeWait)], |_| None);
    assert!(
        m.encode()
            .contains(r#"comm="curl",container="",container_id="",namespace="",pod="",pod_uid="",state="TIME_WAIT"} 3"#),
        "{}",
        m.encode()
    );
    for _ in 0..2 {
        m.on_timewait_end(&TimewaitEnd {
            id: c,
            duration_ns: 1,
        });
    }
    m.set_sockets([], |_| None);
    assert!(
        !m.encode().contains(r#"state="TIME_WAIT""#),
        "{}",
        m.encode()
    );
}

#[test]
fn health_counters_follow_absolute_values() {
    let mut m = Metrics::new(10, 0);
    m.set_health(Health {
        events: 100,
        dropped: 2,
        ..Health::default()
    });
    m.set_health(Health {
        events: 150,
        dropped: 2,
        ring_bytes: 4096,
        ..Health::default()
    });
    m.set_health(Health {
        events: 150,
        dropped: 2,
        ring_bytes: 4096,
        ring_peak: 700,
        ..Health::default()
    });
    m.set_health(Health {
        events: 150,
        dropped: 2,
        ring_bytes: 4096,
        ring_peak: 10,
        ..Health::default()
    });
    let text = m.encode();
    assert!(
        text.contains("tcplinger_ring_peak_bytes 700"),
        "the burst is still shown: {text}"
    );
    assert!(text.contains("tcplinger_events_total 150"), "{text}");
    assert!(text.contains("tcplinger_events_dropped_total 2"), "{text}");
    assert!(text.contains("tcplinger_ring_size_bytes 4096"), "{text}");
}

/// The metric names in a PromQL expression.
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = expr;
    while let Some(i) = rest.find("tcplinger_") {
        let name: String = rest[i..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        rest = &rest[i + name.len()..];
        names.push(name);
    }
    names
}

#[test]
fn the_grafana_dashboard_shows_what_the_daemon_exports() {
    let dashboard: serde_json::Value =
        serde_json::from_str(include_str!("../../../../../deploy/grafana/dashboard.json"))
            .expect("valid JSON");
    let mut m = Metrics::new(10, 0);
    // Make every family appear in the exposition.
    let c = id(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)), 80);
    let mut r = record(c, ClosedBy::Local, 10, Some(5));
    r.states = r
        .states
        .with(TcpState::CloseWait, 1)
        .with(TcpState::LastAck, 1);
    r.net = Some(tracer_common::NetFigures {
        srtt_us: 50,
        read: 1,
        ..Default::default()
    });
    m.on_record(&r, &mut |_| None);
    r.connect_failed = Some(ConnectFailure::Timeout);
    m.on_record(&r, &mut |_| None);
    m.on_opened(&c, &mut |_| None);
    m.on_timewait_end(&TimewaitEnd {
        id: c,
        duration_ns: 1,
    });
    m.set_sockets([(c, TcpState::TimeWait)], |_| None);
    let a = {
        let mut agg = crate::model::aggregate::Aggregator::new(
            10,
            0,
            crate::model::aggregate::Windowing::WHOLE_RUN,
        );
        let s = crate::testutil::id(1, Role::Server, 80);
        for _ in 0..12 {
            let mut r = record(s, ClosedBy::Local, 5, None);
            r.tcp = Some(crate::testutil::figures(0, 0, 1, 1));
            agg.on_record(&r);
        }
        crate::model::diagnose::diagnose(&agg, &[u64::MAX], 10_000_000_000)
    };
    m.on_findings(&a, &a);
    let exported = m.encode();
    let panels = dashboard["panels"].as_array().unwrap();
    for (title, kind) in [
        ("Closes by side", "timeseries"),
        ("FIN_WAIT2 duration", "heatmap"),
        ("CLOSE_WAIT duration", "heatmap"),
        ("Lingering sockets by process", "timeseries"),
        ("Findings", "timeseries"),
        ("Tracer health", "timeseries"),
        ("Findings timeline", "state-timeline"),
        ("This window on the host", "text"),
        ("Failed connects by reason", "timeseries"),
        ("Network: retransmissions and RTT", "timeseries"),
    ] {
        let panel = panels
            .iter()
            .find(|p| p["title"] == title)
            .unwrap_or_else(|| panic!("no panel {title}"));
        assert_eq!(panel["type"], kind, "{title}");
    }
    // The window's report on the host is what the text panel gives.
    let host = panels
        .iter()
        .find(|p| p["title"] == "This window on the host")
        .unwrap();
    let content = host["options"]["content"].as_str().unwrap();
    for command in [
        "tcplinger report --since ${__from:date:iso} --until ${__to:date:iso}",
        "tcplinger history --since ${__from:date:iso}",
    ] {
        assert!(content.contains(command), "{content}");
    }
    for panel in panels {
        for t in panel["targets"].as_array().unwrap() {
            for name in metric_names(t["expr"].as_str().unwrap()) {
                assert!(
                    exported.contains(&format!("\n{name}{{"))
                        || exported.contains(&format!("\n{name} ")),
                    "panel {} uses {name}, which the daemon does not export",
                    panel["title"]
                );
            }
        }
    }
}

#[test]
fn container_labels_appear_when_known() {
    let mut m = Metrics::new(10, 0);
    let mut c = id(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)), 8080);
    c.owner.as_mut().unwrap().cgroup_id = 42;
    let container = Container {
        path: "/kubepods/pod-x".into(),
        container_id: Some("abc".into()),
        pod_uid: Some("uid-1".into()),
        kube: None,
    };
    // Not known at first: asked again, and labelled once known.
    let mut asked = 0;
    m.on_opened(&c, &mut |_| {
        asked += 1;
        None
    });
    for _ in 0..3 {
        m.on_opened(&c, &mut |cgroup_id| {
            asked += 1;
            assert_eq!(cgroup_id, 42);
            Some(container.clone())
        });
    }
    assert_eq!(asked, 2, "cached once known");
    let text = m.encode();
    assert!(
        text.contains(r#"tcplinger_connections_opened_total{comm="curl",container="",container_id="abc",namespace="",pod="",pod_uid="uid-1",port="8080",remote_addr="10.0.0.2",role="client"} 3"#),
        "{text}"
    );
    assert!(
        text.contains(r#"tcplinger_connections_opened_total{comm="curl",container="",container_id="",namespace="",pod="",pod_uid="",port="8080",remote_addr="10.0.0.2",role="client"} 1"#),
        "{text}"
    );
}

/// The exposition's series, counted as the soak counts them: every line
/// that is not a comment (each histogram bucket is one).
fn series_lines(text: &str) -> usize {
    text.lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .count()
}

/// The value of `label` in a series line, if it has that label.
fn label_of<'a>(line: &'a str, label: &str) -> Option<&'a str> {
    let labels = &line[line.find('{')? + 1..line.rfind('}')?];
    labels.split(',').find_map(|pair| {
        pair.strip_prefix(label)?
            .strip_prefix("=\"")?
            .strip_suffix('"')
    })
}

/// The series lines of `metric` (not its namesakes with a suffix).
fn lines_of<'a>(text: &'a str, metric: &str) -> impl Iterator<Item = &'a str> {
    let prefix = format!("{metric}{{");
    text.lines().filter(move |l| l.starts_with(&prefix))
}

/// The distinct values `label` takes among the series of `metric`.
fn values_of(text: &str, metric: &str, label: &str) -> HashSet<String> {
    lines_of(text, metric)
        .filter_map(|l| label_of(l, label).map(str::to_string))
        .collect()
}

/// The sum of the series of `metric` whose `label` is `value` (any
/// series when `label` is `None`).
fn sum_of(text: &str, metric: &str, label: Option<(&str, &str)>) -> u64 {
    lines_of(text, metric)
        .filter(|l| label.is_none_or(|(name, value)| label_of(l, name) == Some(value)))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum()
}

/// The label a churn makes new values of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Churned {
    Comm,
    Endpoint,
    Container,
    Pid,
}

impl Churned {
    /// The label of its series that tells two values apart.
    fn label(self) -> &'static str {
        match self {
            Self::Comm => "comm",
            Self::Endpoint => "remote_addr",
            Self::Container => "container_id",
            Self::Pid => "pid",
        }
    }

    /// The `i`-th value of its label.
    fn value(self, i: u32) -> String {
        let c = self.conn(i);
        match self {
            Self::Comm => format!("w{i}"),
            Self::Endpoint => c.raddr.to_string(),
            Self::Container => format!("{:064x}", c.owner.unwrap().cgroup_id),
            Self::Pid => c.owner.unwrap().pid.to_string(),
        }
    }

    /// A connection whose churned label takes its `i`-th value; every other
    /// label stays the same: curl (pid 7) to 10.0.0.2:443, outside
    /// containers.
    fn conn(self, i: u32) -> ConnId {
        let mut c = id(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)), 443);
        let o = c.owner.as_mut().unwrap();
        match self {
            Self::Comm => o.comm = Comm::new(comm(&format!("w{i}"))),
            Self::Endpoint => c.raddr = IpAddr::V4(Ipv4Addr::from(0x0a01_0000 + i)),
            Self::Container => o.cgroup_id = u64::from(i) + 1,
            Self::Pid => o.pid = 1000 + i,
        }
        c
    }
}

/// A budget as the exposition shows it: the metric and label it bounds,
/// how many values get series of their own, and its value of the folded
/// counter's label.
#[derive(Debug, Clone, Copy)]
struct Watched {
    metric: &'static str,
    budget: usize,
    folded: Budgeted,
}

const CLOSES: &str = "tcplinger_connections_closed_total";
const LINGERS: &str = "tcplinger_fin_wait2_seconds_count";

/// The container of a cgroup id, named after it (as a pod's would be).
#[expect(clippy::unnecessary_wraps, reason = "the shape of Host::container")]
fn container_of(cgroup_id: u64) -> Option<Container> {
    Some(Container {
        path: format!("/kubepods/pod{cgroup_id:032x}/{cgroup_id:064x}"),
        container_id: Some(format!("{cgroup_id:064x}")),
        pod_uid: Some(format!("{cgroup_id:032x}")),
        kube: None,
    })
}

/// One minute, in boot ns.
const MINUTE: u64 = 60_000_000_000;

/// One connection of value `i`, opened and closed (FIN_WAIT2 then
/// TIME_WAIT, so the linger histograms see it too).
fn connect(m: &mut Metrics, what: Churned, i: u32) {
    let c = what.conn(i);
    m.on_opened(&c, &mut container_of);
    m.on_record(&record(c, ClosedBy::Local, 10, Some(1)), &mut container_of);
}

/// The closes and the FIN_WAIT2 lingers in the exposition.
fn totals(text: &str) -> (u64, u64) {
    (sum_of(text, CLOSES, None), sum_of(text, LINGERS, None))
}

/// Every close fed is in some series (and its linger), and those under
/// `other` are the folded ones, to the unit.
fn check_accounts(text: &str, label: &str, watched: Option<Watched>, before: (u64, u64), fed: u64) {
    let (closes, lingers) = totals(text);
    assert_eq!(closes, before.0 + fed, "a close went missing");
    assert_eq!(lingers, before.1 + fed, "a linger went missing");
    if let Some(w) = watched {
        assert_eq!(
            sum_of(text, w.metric, Some((label, OTHER))),
            sum_of(
                text,
                "tcplinger_connections_folded_total",
                Some(("label", w.folded.name()))
            ),
            "the closes under other in {} are the folded ones",
            w.metric
        );
    }
}

/// A budget under churn of its label: a burst of `burst` values at once
/// (more than every budget the values count against), then an hour of new
/// values (each used for two minutes) with the stale slots released each
/// minute, as the daemon does each second.
fn churn(what: Churned, w: Watched, burst: usize) {
    let mut m = Metrics::new(
        if w.folded == Budgeted::Endpoint {
            w.budget
        } else {
            1000
        },
        0,
    );
    let label = what.label();
    m.at(0);
    let burst = u32::try_from(burst).unwrap();
    for i in 0..burst {
        connect(&mut m, what, i);
    }
    let text = m.encode();
    assert_eq!(
        values_of(&text, w.metric, label).len(),
        w.budget + 1,
        "a value each, and other"
    );
    check_accounts(&text, label, Some(w), (0, 0), u64::from(burst));
    assert_eq!(
        sum_of(&text, w.metric, Some((label, OTHER))),
        u64::from(burst) - w.budget as u64,
        "{text}"
    );
    let at_full = series_lines(&text);
    let mut before = totals(&text);
    // An hour, one round a minute: each round brings new values and uses
    // the previous round's again. Twelve rounds of values (the ten minutes
    // a slot outlives its last use, and two of use) fit the budget.
    let per_round = u32::try_from(w.budget / 20).unwrap().max(1);
    let mut previous = burst..burst;
    for round in 1..=60u64 {
        m.at(round * MINUTE);
        let fresh = previous.end..previous.end + per_round;
        for i in previous.clone().chain(fresh.clone()) {
            connect(&mut m, what, i);
        }
        let fed = u64::from(previous.end - previous.start + per_round);
        let text = m.encode();
        check_accounts(&text, label, Some(w), before, fed);
        let had_series = values_of(&text, w.metric, label);
        m.release_stale();
        let text = m.encode();
        let values = values_of(&text, w.metric, label);
        for i in previous.clone().chain(fresh.clone()) {
            assert!(
                !had_series.contains(&what.value(i)) || values.contains(&what.value(i)),
                "round {round}: the series of {label} {}, in use, were deleted",
                what.value(i)
            );
        }
        // What was released is gone from the exposition, by design.
        before = totals(&text);
        assert!(
            values.len() <= w.budget + 1,
            "round {round}: {} values of {label} in {} for a budget of {}",
            values.len(),
            w.metric,
            w.budget
        );
        assert!(
            series_lines(&text) <= at_full,
            "round {round}: {} series, more than the {at_full} with the budget full",
            series_lines(&text)
        );
        assert!(m.linger_cache.len() <= LINGER_CACHE);
        assert!(m.conn_cache.len() <= SERIES_CACHE);
        previous = fresh;
    }
    let text = m.encode();
    let values = values_of(&text, w.metric, label);
    for i in previous {
        assert!(
            values.contains(&what.value(i)),
            "the newest {label} {} has no series of its own in {}: stale slots were not reused",
            what.value(i),
            w.metric
        );
    }
    for i in 0..burst {
        assert!(
            !values.contains(&what.value(i)),
            "the burst's {label} {} went stale but still has series in {}",
            what.value(i),
            w.metric
        );
    }
}

#[test]
fn process_name_churn_stays_within_the_comm_budget() {
    churn(
        Churned::Comm,
        Watched {
            metric: CLOSES,
            budget: COMMS_KEPT,
            folded: Budgeted::Comm,
        },
        3 * COMMS_KEPT,
    );
}

#[test]
fn process_name_churn_stays_within_the_linger_histogram_budget() {
    churn(
        Churned::Comm,
        Watched {
            metric: LINGERS,
            budget: LINGERS_KEPT,
            folded: Budgeted::Linger,
        },
        // The counters' name budget full too, so no series is added beyond.
        COMMS_KEPT + LINGERS_KEPT,
    );
}

#[test]
fn endpoint_churn_stays_within_the_endpoint_budget() {
    churn(
        Churned::Endpoint,
        Watched {
            metric: CLOSES,
            budget: 40,
            folded: Budgeted::Endpoint,
        },
        120,
    );
}

#[test]
fn container_churn_stays_within_the_container_budget() {
    churn(
        Churned::Container,
        Watched {
            metric: CLOSES,
            budget: CONTAINERS_KEPT,
            folded: Budgeted::Container,
        },
        3 * CONTAINERS_KEPT,
    );
}

#[test]
fn pid_churn_adds_no_series() {
    let mut m = Metrics::new(1000, 0);
    let mut lines = None;
    let mut before = (0, 0);
    // An hour of a new process a second, each with one connection.
    for round in 0..60u32 {
        m.at(u64::from(round) * MINUTE);
        for i in round * 60..(round + 1) * 60 {
            connect(&mut m, Churned::Pid, i);
        }
        let text = m.encode();
        check_accounts(&text, "pid", None, before, 60);
        m.release_stale();
        before = totals(&text);
        assert!(!text.contains("pid="), "no metric is labelled by pid");
        let now = series_lines(&text);
        assert_eq!(*lines.get_or_insert(now), now, "round {round}");
    }
}

#[test]
fn handle_caches_stay_capped_under_name_churn() {
    let mut m = Metrics::new(1000, 0);
    m.at(0);
    let names = u32::try_from(SERIES_CACHE + LINGER_CACHE).unwrap();
    for i in 0..names {
        connect(&mut m, Churned::Comm, i);
        assert!(m.linger_cache.len() <= LINGER_CACHE, "after {i} names");
        assert!(m.conn_cache.len() <= SERIES_CACHE, "after {i} names");
    }
    let text = m.encode();
    check_accounts(
        &text,
        "comm",
        Some(Watched {
            metric: CLOSES,
            budget: COMMS_KEPT,
            folded: Budgeted::Comm,
        }),
        (0, 0),
        u64::from(names),
    );
    assert_eq!(
        sum_of(
            &text,
            "tcplinger_connections_closed_total",
            Some(("comm", OTHER))
        ),
        u64::from(names) - COMMS_KEPT as u64
    );
}

#[test]
fn socket_gauges_add_containers_beyond_the_budget_under_other() {
    let mut m = Metrics::new(10, 0);
    let n = u32::try_from(2 * CONTAINERS_KEPT).unwrap();
    let live: Vec<(ConnId, TcpState)> = (0..n)
        .map(|i| (Churned::Container.conn(i), TcpState::Established))
        .collect();
    m.set_sockets(live, container_of);
    let text = m.encode();
    assert_eq!(
        values_of(&text, "tcplinger_sockets", "container_id").len(),
        CONTAINERS_KEPT + 1
    );
    assert_eq!(sum_of(&text, "tcplinger_sockets", None), u64::from(n));
    assert_eq!(
        sum_of(&text, "tcplinger_sockets", Some(("container_id", OTHER))),
        u64::from(n) - CONTAINERS_KEPT as u64
    );
}

#[test]
fn idle_handles_are_dropped_and_their_series_go_on() {
    let mut m = Metrics::new(1000, 0);
    m.at(0);
    for i in 0..5_000 {
        connect(&mut m, Churned::Endpoint, i);
    }
    assert_eq!(m.conn_cache.len(), 5_000);
    // Two minutes without a use: the handles go, the series stay.
    m.at(2 * MINUTE);
    m.release_stale();
    assert!(m.conn_cache.is_empty() && m.linger_cache.is_empty());
    let text = m.encode();
    assert_eq!(totals(&text), (5_000, 5_000));
    // Used again: the same series count on.
    connect(&mut m, Churned::Endpoint, 0);
    let text = m.encode();
    assert_eq!(
        sum_of(
            &text,
            CLOSES,
            Some(("remote_addr", &Churned::Endpoint.value(0)))
        ),
        2
    );
    assert_eq!(totals(&text), (5_001, 5_001));
}

#[test]
fn losses_given_as_totals_grow_their_counters_by_the_difference() {
    let mut m = Metrics::new(10, 0);
    let mut host = HostLosses {
        lookups_failed: 3,
        ..HostLosses::default()
    };
    host.kernel.owner_inserts = 1;
    let mut history = HistoryLosses {
        bytes: 4096,
        write_failures: 1,
        ..HistoryLosses::default()
    };
    m.set_losses(&host, 2, 0, [5, 0], &history);
    host.lookups_failed = 4;
    host.entry_reads_failed = 1;
    history.write_failures = 2;
    history.bytes = 8192;
    m.set_losses(&host, 2, 3, [5, 1], &history);
    let text = m.encode();
    assert!(text.contains("tcplinger_history_bytes 8192\n"), "{text}");
    for (kind, n) in [
        ("lookup_failed", 4),
        ("owner_not_recorded", 1),
        ("time_wait_unfollowed", 2),
        ("http_connection_shed", 5),
        ("http_accept_failed", 1),
        ("netns_not_found", 0),
        ("entry_read_failed", 1),
        ("log_out_of_step", 3),
        ("history_write_failed", 2),
        ("history_minute_dropped", 0),
    ] {
        let line = format!("tcplinger_losses_total{{kind=\"{kind}\"}} {n}\n");
        assert!(text.contains(&line), "{line} in {text}");
    }
}
