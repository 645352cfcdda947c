//! What the commands run with: the command line (and the daemon's TOML file) turned once into validated settings, built from the types the layers below take (`session::TraceOptions`, `bpf::load::LoadOptions`). Nothing flows back, and nothing below the commands sees a flag.

pub mod file;

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use tracer_common::{MAX_FILTER_PIDS, MAX_FILTER_PORTS, TcpState};

use crate::{
    bpf::load::LoadOptions,
    cli::{self, Parsed, TraceArgs},
    cmd::{daemon::LogFormat, top::SortKey},
    error::UsageError,
    model::select::{FamilyFilter, Filters, Selection},
    output::{Format, ReportFormat},
    session::TraceOptions,
};

/// `report` traces this long unless told otherwise.
pub const REPORT_DURATION: Duration = Duration::from_secs(30);

/// A command and everything it runs with.
#[derive(Debug)]
pub enum Command {
    Watch(Watch),
    Report(Report),
    Top(Top),
    Sockets(Sockets),
    Daemon(Daemon),
}

#[derive(Debug)]
pub struct Watch {
    pub duration: Option<Duration>,
    pub trace: TraceOptions,
    /// Every state change as a line (`--transitions`).
    pub transitions: bool,
    pub format: Format,
    pub output: Option<PathBuf>,
}

#[derive(Debug)]
pub struct Report {
    pub duration: Duration,
    pub trace: TraceOptions,
    pub format: ReportFormat,
    /// Groups listed in text and Markdown.
    pub top: usize,
    pub output: Option<PathBuf>,
    pub max_groups: usize,
}

#[derive(Debug)]
pub struct Top {
    pub duration: Option<Duration>,
    pub trace: TraceOptions,
    pub sort: SortKey,
    pub max_groups: usize,
}

#[derive(Debug)]
pub struct Sockets {
    pub filters: Filters,
    pub selection: Selection,
    /// The states shown; empty: every state but LISTEN.
    pub states: Vec<TcpState>,
    pub format: Format,
}

#[derive(Debug)]
pub struct Daemon {
    pub duration: Option<Duration>,
    pub trace: TraceOptions,
    pub listen: std::net::SocketAddr,
    pub log_format: LogFormat,
    pub max_groups: usize,
    pub max_endpoints: usize,
    /// `--check-config`: print `file` as it would be used, and stop.
    pub check_config: bool,
    /// The settings in the file's terms, for `--check-config`.
    pub file: file::DaemonValues,
}

/// The command line (and `--config`) as settings, or the one line that
/// says what is wrong with it.
pub fn from_cli(parsed: Parsed) -> Result<Command, UsageError> {
    Ok(match parsed.cli.command {
        cli::Command::Watch(a) => Command::Watch(Watch {
            duration: a.trace.duration,
            trace: trace(&a.trace, None, a.transitions)?,
            transitions: a.transitions,
            format: a.format,
            output: a.output,
        }),
        cli::Command::Report(a) => Command::Report(Report {
            duration: a.trace.duration.unwrap_or(REPORT_DURATION),
            trace: trace(&a.trace, None, false)?,
            format: a.format,
            top: a.top,
            output: a.output,
            max_groups: a.analysis.max_groups,
        }),
        cli::Command::Top(a) => Command::Top(Top {
            duration: a.trace.duration,
            trace: trace(&a.trace, None, false)?,
            sort: a.sort,
            max_groups: a.analysis.max_groups,
        }),
        // No kernel filter here: any number of pids and ports, and a pid
        // that is gone simply matches nothing.
        cli::Command::Sockets(a) => Command::Sockets(Sockets {
            filters: Filters {
                pids: a.pid,
                ports: a.port,
                family: family(a.ipv4, a.ipv6),
            },
            selection: Selection::new(&a.select.comm, &a.select.remote),
            states: a.state,
            format: a.format,
        }),
        cli::Command::Daemon(a) => {
            let mut values = file::DaemonValues::from_args(&a);
            if let Some(path) = &a.config {
                values = file::apply_file(values, path, &parsed.given)?;
            }
            values.validate()?;
            Command::Daemon(Daemon {
                duration: a.trace.duration,
                trace: TraceOptions {
                    load: LoadOptions {
                        filters: filters(&values.pids, &values.ports, values.family)?,
                        ring_bytes: values.ring_bytes,
                        every_transition: false,
                        disabled_hooks: a.trace.disable_hook.clone(),
                    },
                    max_sockets: values.max_sockets,
                    selection: Selection::new(&values.comm, &values.remote),
                    cgroup: values.cgroup.clone(),
                },
                listen: values.listen,
                log_format: values.log_format,
                max_groups: values.max_groups,
                max_endpoints: values.max_endpoints,
                check_config: a.check_config,
                file: values,
            })
        }
    })
}

fn family(ipv4: bool, ipv6: bool) -> FamilyFilter {
    match (ipv4, ipv6) {
        (true, _) => FamilyFilter::Ipv4,
        (_, true) => FamilyFilter::Ipv6,
        _ => FamilyFilter::Any,
    }
}

/// The tracing settings of `watch`, `report` and `top`.
fn trace(
    a: &TraceArgs,
    cgroup: Option<String>,
    every_transition: bool,
) -> Result<TraceOptions, UsageError> {
    let filters = filters(&a.pid, &a.port, family(a.ipv4, a.ipv6))?;
    Ok(TraceOptions {
        load: LoadOptions {
            filters,
            ring_bytes: a.ring_bytes,
            every_transition,
            disabled_hooks: a.disable_hook.clone(),
        },
        max_sockets: a.max_sockets,
        selection: Selection::new(&a.select.comm, &a.select.remote),
        cgroup,
    })
}

/// The kernel-side filters: sorted, no repeats, within the kernel's slots,
/// and pids that exist (a typo would otherwise trace nothing, silently).
pub fn filters(pids: &[u32], ports: &[u16], family: FamilyFilter) -> Result<Filters, UsageError> {
    let mut pids = pids.to_vec();
    pids.sort_unstable();
    pids.dedup();
    if pids.len() > MAX_FILTER_PIDS {
        return Err(UsageError(format!(
            "--pid: at most {MAX_FILTER_PIDS} process ids (got {})",
            pids.len()
        )));
    }
    if let Some(pid) = pids
        .iter()
        .find(|pid| !Path::new(&format!("/proc/{pid}")).exists())
    {
        return Err(UsageError(format!("--pid: no process {pid}")));
    }
    let mut ports = ports.to_vec();
    ports.sort_unstable();
    ports.dedup();
    if ports.len() > MAX_FILTER_PORTS {
        return Err(UsageError(format!(
            "--port: at most {MAX_FILTER_PORTS} ports (got {})",
            ports.len()
        )));
    }
    Ok(Filters {
        pids,
        ports,
        family,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{cli::tests::parse, model::event::Family};

    fn settings(args: &[&str]) -> Result<Command, UsageError> {
        from_cli(parse(args).expect("parses"))
    }

    fn watch(args: &[&str]) -> Watch {
        let mut all = vec!["watch"];
        all.extend(args);
        match settings(&all).unwrap() {
            Command::Watch(w) => w,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn defaults() {
        let w = watch(&[]);
        assert_eq!(w.trace.load.filters, Filters::default());
        assert_eq!(w.trace.load.ring_bytes, 4 << 20);
        assert_eq!(w.trace.max_sockets.get(), 262144);
        assert!(!w.trace.load.every_transition);
        assert!(watch(&["--transitions"]).trace.load.every_transition);
        let Command::Report(r) = settings(&["report"]).unwrap() else {
            panic!()
        };
        assert_eq!(r.duration, REPORT_DURATION);
        assert_eq!(r.max_groups, 500);
    }

    #[test]
    fn pids_and_ports_accept_lists_and_repeats() {
        let me = std::process::id().to_string();
        let w = watch(&[
            "--pid",
            &format!("{me},1"),
            "--pid",
            &me,
            "--port",
            "80",
            "--port",
            "443,8080",
        ]);
        assert_eq!(w.trace.load.filters.pids.len(), 2);
        assert_eq!(w.trace.load.filters.ports, vec![80, 443, 8080]);
    }

    #[test]
    fn family_flags() {
        assert_eq!(watch(&["-4"]).trace.load.filters.family, FamilyFilter::Ipv4);
        assert_eq!(watch(&["-6"]).trace.load.filters.family, FamilyFilter::Ipv6);
    }

    #[test]
    fn too_many_filter_values_and_missing_pids_name_the_flag() {
        let pids: Vec<String> = (1..=9).map(|p| p.to_string()).collect();
        let err = settings(&["watch", "--pid", &pids.join(",")])
            .unwrap_err()
            .0;
        assert!(err.starts_with("--pid:"), "{err}");
        let err = settings(&["watch", "--port", "1,2,3,4,5,6,7,8,9"])
            .unwrap_err()
            .0;
        assert!(err.starts_with("--port:"), "{err}");
        let err = settings(&["report", "--pid", "2147483646"]).unwrap_err().0;
        assert_eq!(err, "--pid: no process 2147483646");
    }

    #[test]
    fn userspace_filter_matches_the_kernel_rules() {
        let any = Filters::default();
        assert!(any.admits(Family::Ipv6, 1, 2, None));
        let f = filters(&[1], &[80], FamilyFilter::Ipv4).unwrap();
        assert!(f.admits(Family::Ipv4, 80, 5000, Some(1)));
        assert!(
            f.admits(Family::Ipv4, 5000, 80, Some(1)),
            "remote port counts"
        );
        assert!(!f.admits(Family::Ipv6, 80, 5000, Some(1)));
        assert!(!f.admits(Family::Ipv4, 81, 5000, Some(1)));
        assert!(!f.admits(Family::Ipv4, 80, 5000, Some(8)));
        assert!(
            !f.admits(Family::Ipv4, 80, 5000, None),
            "unknown owner fails a pid filter"
        );
    }

    #[test]
    fn sockets_and_top_flags() {
        let Command::Sockets(s) = settings(&["sockets", "--pid", "2147483646"]).unwrap() else {
            panic!()
        };
        assert_eq!(
            s.filters.pids,
            vec![2147483646],
            "no process: no sockets, no error"
        );
        let Command::Sockets(s) =
            settings(&["sockets", "--state", "close-wait,TIME_WAIT", "--pid", "1"]).unwrap()
        else {
            panic!()
        };
        assert_eq!(s.states, vec![TcpState::CloseWait, TcpState::TimeWait]);
        assert_eq!(s.filters.pids, vec![1]);
        let Command::Top(t) = settings(&["top", "--sort", "rate", "--max-groups", "7"]).unwrap()
        else {
            panic!()
        };
        assert_eq!((t.sort, t.max_groups), (SortKey::Rate, 7));
    }
}
