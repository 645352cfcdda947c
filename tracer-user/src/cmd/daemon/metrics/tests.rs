//! The metrics' unit tests: what each family exports, and every label budget under churn.

use std::net::{IpAddr, Ipv4Addr};

use super::*;
use crate::{
    model::event::{Comm, Family},
    model::tracker::{ClosedBy, Role, TimewaitEnd},
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
    let mut m = Metrics::new(10);
    let c = id(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)), 8080);
    for _ in 0..3 {
        m.on_record(&record(c, ClosedBy::Local, 1_000, Some(2_000)), &mut |_| {
            None
        });
    }
    let text = m.encode();
    assert!(
        text.contains(r#"tcplinger_connections_closed_total{closed_by="local",comm="curl",container_id="",pod_uid="",port="8080",remote_addr="10.0.0.2",role="client"} 3"#),
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
fn ten_thousand_endpoints_stay_within_the_budget() {
    let limit = 20;
    let mut m = Metrics::new(limit);
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

#[test]
fn series_of_processes_gone_are_deleted_and_their_slots_reused() {
    let mut m = Metrics::new(10);
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
    assert!(m.encode().contains(r#"closed_by="local",comm="curl",container_id="",pod_uid="",port="8080",remote_addr="10.0.0.2",role="client"} 1"#));
}

#[test]
fn socket_gauges_are_replaced_not_accumulated() {
    let mut m = Metrics::new(10);
    let c = id(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)), 8080);
    m.set_sockets([(c, TcpState::CloseWait), (c, TcpState::CloseWait)], |_| {
        None
    });
    assert!(m.encode().contains(
        r#"tcplinger_sockets{comm="curl",container_id="",pod_uid="",state="CLOSE_WAIT"} 2"#
    ));
    m.set_sockets([(c, TcpState::Established)], |_| None);
    let text = m.encode();
    assert!(!text.contains("CLOSE_WAIT"), "{text}");
    assert!(text.contains(r#"state="ESTABLISHED"} 1"#), "{text}");
}

#[test]
fn followed_timewait_sockets_are_counted_as_they_come_and_go() {
    let mut m = Metrics::new(10);
    let c = id(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)), 8080);
    m.on_timewait_start(&c);
    m.on_timewait_start(&c);
    m.set_sockets([(c, TcpState::TimeWait)], |_| None);
    assert!(
        m.encode()
            .contains(r#"comm="curl",container_id="",pod_uid="",state="TIME_WAIT"} 3"#),
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
    let mut m = Metrics::new(10);
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
    let mut m = Metrics::new(10);
    // Make every family appear in the exposition.
    let c = id(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)), 80);
    let mut r = record(c, ClosedBy::Local, 10, Some(5));
    r.states = r
        .states
        .with(TcpState::CloseWait, 1)
        .with(TcpState::LastAck, 1);
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
    ] {
        let panel = panels
            .iter()
            .find(|p| p["title"] == title)
            .unwrap_or_else(|| panic!("no panel {title}"));
        assert_eq!(panel["type"], kind, "{title}");
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
    let mut m = Metrics::new(10);
    let mut c = id(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)), 8080);
    c.owner.as_mut().unwrap().cgroup_id = 42;
    let container = Container {
        path: "/kubepods/pod-x".into(),
        container_id: Some("abc".into()),
        pod_uid: Some("uid-1".into()),
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
        text.contains(r#"tcplinger_connections_opened_total{comm="curl",container_id="abc",pod_uid="uid-1",port="8080",remote_addr="10.0.0.2",role="client"} 3"#),
        "{text}"
    );
    assert!(
        text.contains(r#"tcplinger_connections_opened_total{comm="curl",container_id="",pod_uid="",port="8080",remote_addr="10.0.0.2",role="client"} 1"#),
        "{text}"
    );
}
