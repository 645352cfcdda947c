//! `tcplinger sockets`: what lingers right now, by process and endpoint, from one sock_diag snapshot with /proc owners; no tracing, no eBPF.

use std::{
    collections::{BTreeMap, HashMap},
    io::{self, BufWriter, Write},
};

use serde::Serialize;
use tracer_common::TcpState;

use crate::{
    host::netns::{self, NetnsPaths},
    host::owners::socket_owners,
    host::snapshot::{ALL_STATES, Found, dump_all},
    host::{cgroups::Cgroups, kube::NodeFiles},
    model::aggregate::{GroupKey, Procs},
    model::diagnose::{process_short, remote_of},
    model::event::PodName,
    model::human::human,
    model::{
        event::Owner,
        tracker::{ConnId, Role, TIMEWAIT_LEN_NS, role_by_ports},
    },
    output::report::JsonPod,
    settings,
};

/// Shown unless `--state` says otherwise: everything but listeners and
/// sockets already closed.
const DEFAULT_STATES: [TcpState; 9] = [
    TcpState::Established,
    TcpState::SynSent,
    TcpState::SynRecv,
    TcpState::FinWait1,
    TcpState::FinWait2,
    TcpState::TimeWait,
    TcpState::CloseWait,
    TcpState::LastAck,
    TcpState::Closing,
];

/// Counts and ages of one process/endpoint group now.
#[derive(Debug, Default, Clone)]
struct Tally {
    by_state: BTreeMap<TcpState, u64>,
    /// Oldest age per state, in ns, where the kernel tells it: TIME_WAIT
    /// and timewait FIN_WAIT2 from their timers, CLOSE_WAIT from the last
    /// segment received (its FIN, unless the peer sent more).
    oldest_ns: BTreeMap<TcpState, u64>,
    /// Longest silence of an ESTABLISHED socket (TCP_INFO), in ns.
    max_idle_ns: Option<u64>,
    procs: Procs,
    /// The Kubernetes pod of the process holding most of them.
    pod: Option<PodName>,
}

impl Tally {
    fn lingering(&self) -> u64 {
        self.by_state
            .iter()
            .filter(|(s, _)| {
                !matches!(
                    s,
                    TcpState::Established | TcpState::SynSent | TcpState::SynRecv
                )
            })
            .map(|(_, n)| n)
            .sum()
    }

    fn count(&self, state: TcpState) -> u64 {
        self.by_state.get(&state).copied().unwrap_or(0)
    }
}

/// `tcp_fin_timeout` of a namespace, which a timewait FIN_WAIT2 counts down from.
fn fin_timeout_ns(
    inum: u32,
    paths: &mut NetnsPaths,
    cache: &mut HashMap<u32, Option<u64>>,
) -> Option<u64> {
    *cache.entry(inum).or_insert_with(|| {
        netns::sysctl_in(inum, paths, "/proc/sys/net/ipv4/tcp_fin_timeout")?
            .trim()
            .parse::<u64>()
            .ok()
            .map(|s| s * 1_000_000_000)
    })
}

#[expect(
    clippy::too_many_lines,
    reason = "dump, select, group and print, in the order the reader checks them"
)]
pub fn run(settings: settings::Sockets) -> anyhow::Result<()> {
    let settings::Sockets {
        filters,
        selection,
        states,
        format,
        node_root,
    } = settings;
    let mut cgroups = Cgroups::new(NodeFiles::new(node_root));
    let mut pod_of = |cgroup_id: u64| -> Option<PodName> {
        cgroups.lookup(cgroup_id).and_then(|c| c.kube.clone())
    };
    let states: Vec<TcpState> = if states.is_empty() {
        DEFAULT_STATES.to_vec()
    } else {
        states
    };
    if unsafe { libc::geteuid() } != 0 {
        eprintln!(
            "tcplinger: warning: not root: other users' processes and other network namespaces are not visible"
        );
    }
    // Listeners are dumped whatever is shown: they name the owner and role
    // of server-side sockets no file refers to any more.
    let (found, failed) = dump_all(&ALL_STATES, true);
    if failed > 0 {
        eprintln!(
            "tcplinger: warning: {failed} sock_diag dumps failed; those namespaces are missing"
        );
    }
    let owners = socket_owners();
    let listeners: HashMap<(u32, u16), Option<Owner>> = found
        .iter()
        .filter(|f| f.socket.state == TcpState::Listen)
        .map(|f| {
            let owner = owners.get(&f.socket.inode).copied();
            ((f.netns, f.socket.lport), owner)
        })
        .collect();
    let mut paths = NetnsPaths::default();
    let mut fin_timeouts = HashMap::new();
    let mut ephemeral: HashMap<u32, (u16, u16)> = HashMap::new();
    let mut groups: HashMap<GroupKey, Tally> = HashMap::new();
    let mut total = 0u64;
    for Found { netns, socket: s } in &found {
        if !states.contains(&s.state) {
            continue;
        }
        let listener = listeners.get(&(*netns, s.lport));
        let owner = owners
            .get(&s.inode)
            .copied()
            .or_else(|| listener.copied().flatten());
        if !filters.admits(s.family, s.lport, s.rport, owner.map(|o| o.pid))
            || !selection.admits(owner.as_ref().map(|o| &o.comm), s.raddr)
        {
            continue;
        }
        if selection.wants_pods() {
            let pod = owner.and_then(|o| pod_of(o.cgroup_id));
            if !selection.admits_pod(pod.as_ref().map(|p| (p.namespace.as_str(), p.pod.as_str()))) {
                continue;
            }
        }
        let range = *ephemeral
            .entry(*netns)
            .or_insert_with(|| netns::ephemeral_ports(*netns, &mut paths));
        let id = ConnId {
            netns: *netns,
            owner,
            role: if s.state == TcpState::Listen {
                Role::Unknown
            } else {
                // The TIME_WAIT of a server that exited has no listener
                // left: its ports still say which side it was.
                role_by_ports(listener.is_some(), s.lport, s.rport, range)
            },
            family: s.family,
            laddr: s.laddr,
            lport: s.lport,
            raddr: s.raddr,
            rport: s.rport,
        };
        total += 1;
        let tally = groups.entry(GroupKey::of(&id)).or_default();
        *tally.by_state.entry(s.state).or_default() += 1;
        if let Some(o) = owner {
            tally.procs.add_owner(&o, 1);
        }
        let left_ns = s.timewait_expires_ms.map(|ms| u64::from(ms) * 1_000_000);
        let age = match (s.state, left_ns, s.tcp_info) {
            (TcpState::TimeWait, Some(left), _) => Some(TIMEWAIT_LEN_NS.saturating_sub(left)),
            (TcpState::FinWait2, Some(left), _) => {
                fin_timeout_ns(*netns, &mut paths, &mut fin_timeouts)
                    .map(|t| t.saturating_sub(left))
            }
            (TcpState::CloseWait, None, Some(info)) => {
                Some(u64::from(info.last_ack_recv_ms) * 1_000_000)
            }
            _ => None,
        };
        if let Some(age) = age {
            let oldest = tally.oldest_ns.entry(s.state).or_default();
            *oldest = (*oldest).max(age);
        }
        if let (TcpState::Established, Some(info)) = (s.state, s.tcp_info) {
            let idle = u64::from(info.last_data_sent_ms.min(info.last_data_recv_ms)) * 1_000_000;
            tally.max_idle_ns = Some(tally.max_idle_ns.unwrap_or(0).max(idle));
        }
    }
    for tally in groups.values_mut() {
        let cgroup = tally
            .procs
            .main()
            .and_then(|pid| tally.procs.cgroup_of(pid));
        tally.pod = cgroup.and_then(&mut pod_of);
    }
    let mut rows: Vec<(GroupKey, Tally)> = groups.into_iter().collect();
    rows.sort_by_key(|(k, t)| {
        std::cmp::Reverse((
            t.lingering(),
            t.by_state.values().sum::<u64>(),
            k.endpoint(),
        ))
    });
    let mut out = BufWriter::new(io::stdout().lock());
    let written = match format {
        crate::output::Format::Json => write_json(&mut out, &rows, total, failed),
        crate::output::Format::Text => write_text(&mut out, &rows, total),
    }
    .and_then(|()| out.flush());
    super::output_result("stdout", written)
}

fn write_json(
    out: &mut impl Write,
    rows: &[(GroupKey, Tally)],
    total: u64,
    failed: usize,
) -> io::Result<()> {
    #[derive(Serialize)]
    struct Group<'a> {
        /// The process holding most of the group's sockets.
        pid: Option<u32>,
        /// Its Kubernetes pod, when the node names it.
        #[serde(flatten, skip_serializing_if = "Option::is_none")]
        kube: Option<JsonPod<'a>>,
        comm: Option<String>,
        processes: u64,
        pids: Vec<u32>,
        role: &'static str,
        endpoint: String,
        remote: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        local_port: Option<u16>,
        states: BTreeMap<&'static str, u64>,
        oldest_ms: BTreeMap<&'static str, f64>,
        established_max_idle_ms: Option<f64>,
    }
    #[derive(Serialize)]
    struct Json<'a> {
        sockets: u64,
        failed_dumps: usize,
        groups: Vec<Group<'a>>,
    }
    let ms = |ns: u64| (ns as f64 / 1e3).round() / 1e3;
    let json = Json {
        sockets: total,
        failed_dumps: failed,
        groups: rows
            .iter()
            .map(|(k, t)| Group {
                pid: t.procs.main(),
                kube: t.pod.as_ref().map(JsonPod::of),
                comm: k.comm.map(|c| c.to_string()),
                processes: t.procs.count(),
                pids: t.procs.pids().into_iter().take(16).collect(),
                role: k.role.name(),
                endpoint: k.endpoint(),
                remote: remote_of(k, None),
                local_port: (k.role == Role::Server).then_some(k.port),
                states: t.by_state.iter().map(|(s, n)| (s.name(), *n)).collect(),
                oldest_ms: t
                    .oldest_ns
                    .iter()
                    .map(|(s, ns)| (s.name(), ms(*ns)))
                    .collect(),
                established_max_idle_ms: t.max_idle_ns.map(ms),
            })
            .collect(),
    };
    serde_json::to_writer(&mut *out, &json)?;
    writeln!(out)
}

fn write_text(out: &mut impl Write, rows: &[(GroupKey, Tally)], total: u64) -> io::Result<()> {
    writeln!(
        out,
        "{:<22} {:<7} {:<28} {:>6} {:>10} {:>9} {:>9} {:>6}  OLDEST / MAX IDLE",
        "PROCESS", "ROLE", "ENDPOINT", "ESTAB", "CLOSE_WAIT", "FIN_WAIT2", "TIME_WAIT", "OTHER"
    )?;
    for (k, t) in rows {
        let remote = k.endpoint();
        let main = [
            TcpState::Established,
            TcpState::CloseWait,
            TcpState::FinWait2,
            TcpState::TimeWait,
        ];
        let other: u64 = t
            .by_state
            .iter()
            .filter(|(s, _)| !main.contains(s))
            .map(|(_, n)| n)
            .sum();
        let mut ages: Vec<String> = t
            .oldest_ns
            .iter()
            .map(|(s, ns)| {
                let approx = if *s == TcpState::CloseWait { "~" } else { "" };
                format!("{} {approx}{}", s.name(), human(*ns))
            })
            .collect();
        if let Some(idle) = t.max_idle_ns {
            ages.push(format!("idle {}", human(idle)));
        }
        if let Some(pod) = &t.pod {
            ages.push(format!("pod {pod}"));
        }
        writeln!(
            out,
            "{:<22} {:<7} {:<28} {:>6} {:>10} {:>9} {:>9} {:>6}  {}",
            process_short(k, t.procs.main(), t.procs.count()),
            k.role.name(),
            remote,
            t.count(TcpState::Established),
            t.count(TcpState::CloseWait),
            t.count(TcpState::FinWait2),
            t.count(TcpState::TimeWait),
            other,
            if ages.is_empty() {
                "-".to_string()
            } else {
                ages.join(", ")
            }
        )?;
    }
    writeln!(
        out,
        "{} in {}",
        crate::output::report::plural(usize::try_from(total).unwrap_or(usize::MAX), "socket"),
        crate::output::report::plural(rows.len(), "group")
    )
}
