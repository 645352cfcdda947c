//! The parsed command line (and the daemon's `--config` file under it) turned into the validated settings of one command: the one place flags become settings.

use crate::{
    bpf::load::LoadOptions,
    error::UsageError,
    model::select::{FamilyFilter, Filters, Selection},
    session::TraceOptions,
    settings::{
        Command, Daemon, History, HistoryKeep, REPORT_DURATION, Record, RecordInfo, Report,
        Sockets, Top, Watch, When, Window,
        file::{DaemonValues, apply_file},
        filters,
    },
};

use super::{Command as Flags, DaemonArgs, Parsed, TraceArgs};

/// The command line (and `--config`) as settings, or the one line that
/// says what is wrong with it.
pub fn into_settings(parsed: Parsed) -> Result<Command, UsageError> {
    Ok(match parsed.cli.command {
        Flags::Watch(a) => Command::Watch(Watch {
            from: replayed(
                replay_only(a.replay.from, a.replay.since, a.replay.until)?,
                &a.trace,
            )?,
            window: window(a.replay.since, a.replay.until)?,
            duration: a.trace.duration,
            trace: trace(&a.trace, None, a.transitions)?,
            transitions: a.transitions,
            format: a.format,
            replace_output: force(a.force, a.output.is_some())?,
            output: a.output,
        }),
        Flags::Report(a) => Command::Report(Report {
            history_dir: history_report(&a)?,
            from: replayed(a.replay.from, &a.trace)?,
            window: window(a.replay.since, a.replay.until)?,
            duration: a.trace.duration.unwrap_or(REPORT_DURATION),
            trace: trace(&a.trace, None, false)?,
            format: a.format,
            top: a.top,
            replace_output: force(a.force, a.output.is_some())?,
            output: a.output,
            max_groups: a.analysis.max_groups,
            quiet: a.quiet,
        }),
        Flags::Top(a) => Command::Top(Top {
            from: replayed(
                replay_only(a.replay.from, a.replay.since, a.replay.until)?,
                &a.trace,
            )?,
            speed: a.speed,
            window: window(a.replay.since, a.replay.until)?,
            duration: a.trace.duration,
            trace: trace(&a.trace, None, false)?,
            sort: a.sort,
            max_groups: a.analysis.max_groups,
        }),
        // No kernel filter here: any number of pids and ports, and a pid
        // that is gone simply matches nothing.
        Flags::Sockets(a) => Command::Sockets(Sockets {
            filters: Filters {
                pids: a.pid,
                ports: a.port,
                family: family(a.ipv4, a.ipv6),
            },
            selection: Selection::new(&a.select.comm, &a.select.remote)
                .with_pods(&a.select.namespace, &a.select.pod),
            states: a.state,
            format: a.format,
            node_root: a.node_root,
        }),
        Flags::History(a) => history(a)?,
        // main.rs answers these from the definitions before any settings.
        Flags::Completions(_) | Flags::Manpage(_) => {
            return Err(UsageError(
                "completions and man pages take no settings".into(),
            ));
        }
        Flags::Record(a) => match (a.info, a.output) {
            (Some(path), _) => Command::RecordInfo(RecordInfo {
                path,
                format: a.format,
            }),
            (None, Some(output)) => Command::Record(Record {
                duration: a.trace.duration,
                trace: trace(&a.trace, a.cgroup.clone(), false)?,
                replace_output: a.force,
                output,
                max_bytes: a.max_bytes,
                args: std::env::args().collect(),
                comm: a.trace.select.comm.clone(),
                remote: a.trace.select.remote.clone(),
            }),
            (None, None) => {
                return Err(UsageError("record: -o FILE (or --info FILE)".into()));
            }
        },
        Flags::Daemon(a) => daemon(&a, &parsed.given)?,
    })
}

/// The daemon's flags over its `--config` file.
fn daemon(
    a: &DaemonArgs,
    given: &std::collections::HashSet<String>,
) -> Result<Command, UsageError> {
    let mut values = daemon_values(a);
    if let Some(path) = &a.config {
        values = apply_file(values, path, given)?;
    }
    values.validate()?;
    Ok(Command::Daemon(Box::new(Daemon {
        duration: a.trace.duration,
        trace: TraceOptions {
            load: LoadOptions {
                filters: filters(&values.pids, &values.ports, values.family)?,
                ring_bytes: values.ring_bytes,
                every_transition: false,
                disabled_hooks: a.trace.disable_hook.clone(),
                owner_entries: owner_entries(values.max_sockets),
            },
            max_sockets: values.max_sockets,
            selection: Selection::new(&values.comm, &values.remote)
                .with_pods(&values.namespaces, &values.pods)
                .without_pid((!values.include_self).then(std::process::id)),
            cgroup: values.cgroup.clone(),
            node_root: values.node_root.clone(),
        },
        listen: values.listen,
        log_format: values.log_format,
        max_groups: values.max_groups,
        max_endpoints: values.max_endpoints,
        history: values.history.then(|| HistoryKeep {
            dir: values.history_dir.clone(),
            days: values.history_days,
            max_bytes: values.history_max_bytes,
        }),
        check_config: a.check_config,
        file: values,
    })))
}

/// `tcplinger history`.
fn history(a: super::HistoryArgs) -> Result<Command, UsageError> {
    if let Some(until) = a.until {
        let now = std::time::SystemTime::now();
        if until.ago(now) <= a.since.ago(now) {
            return Err(UsageError("--until: must come after --since".into()));
        }
    }
    Ok(Command::History(History {
        dir: a.history_dir,
        since: a.since,
        until: a.until,
        pathologies: a.pathology,
        selection: Selection::new(&a.comm, &[]),
        connections: a.connections,
        format: a.format,
    }))
}

/// `--since`/`--until` of `watch` and `top`: points of a recording.
fn replay_only(
    from: Option<std::path::PathBuf>,
    since: Option<When>,
    until: Option<When>,
) -> Result<Option<std::path::PathBuf>, UsageError> {
    if from.is_none() {
        let flag = if since.is_some() {
            Some("--since")
        } else if until.is_some() {
            Some("--until")
        } else {
            None
        };
        if let Some(flag) = flag {
            return Err(UsageError(format!(
                "{flag}: only with --from FILE here (the daemon's history: report --since, tcplinger history)"
            )));
        }
    }
    Ok(from)
}

/// `report --since` without `--from` reads the daemon's history: the
/// flags of a live run mean nothing there, and are refused.
fn history_report(a: &super::ReportArgs) -> Result<Option<std::path::PathBuf>, UsageError> {
    if a.replay.from.is_some() {
        return Ok(None);
    }
    if a.replay.since.is_none() {
        if a.replay.until.is_some() {
            return Err(UsageError(
                "--until: with --since (the daemon's history) or --from FILE".into(),
            ));
        }
        return Ok(None);
    }
    let t = &a.trace;
    let live_flag = [
        (!t.pid.is_empty(), "--pid"),
        (!t.port.is_empty(), "--port"),
        (t.ipv4, "--ipv4"),
        (t.ipv6, "--ipv6"),
        (t.duration.is_some(), "--duration"),
    ]
    .into_iter()
    .find_map(|(given, name)| given.then_some(name));
    if let Some(name) = live_flag {
        return Err(UsageError(format!(
            "{name} with --since: the daemon's history is read, not traced; --comm and --remote select in it"
        )));
    }
    Ok(Some(a.history_dir.clone()))
}

/// `--from FILE`: the flags that tell the kernel what to trace were for
/// the recording to take; here they would select nothing a user can see
/// the effect of, so they are refused rather than ignored.
fn replayed(
    from: Option<std::path::PathBuf>,
    a: &TraceArgs,
) -> Result<Option<std::path::PathBuf>, UsageError> {
    if from.is_none() {
        return Ok(None);
    }
    let kernel_flag = [
        (!a.pid.is_empty(), "--pid"),
        (!a.port.is_empty(), "--port"),
        (a.ipv4, "--ipv4"),
        (a.ipv6, "--ipv6"),
        (a.duration.is_some(), "--duration"),
    ]
    .into_iter()
    .find_map(|(given, name)| given.then_some(name));
    if let Some(name) = kernel_flag {
        return Err(UsageError(format!(
            "{name} with --from: a recording is filtered when it is made (tcplinger record {name} ...); after the fact, --comm and --remote select"
        )));
    }
    Ok(from)
}

/// `--since` and `--until`, the second after the first when both are of
/// one kind (times or offsets).
fn window(since: Option<When>, until: Option<When>) -> Result<Window, UsageError> {
    let backwards = match (since, until) {
        (Some(When::At(a)), Some(When::At(b))) => b <= a,
        (Some(When::Into(a)), Some(When::Into(b))) => b <= a,
        _ => false,
    };
    if backwards {
        return Err(UsageError("--until: must come after --since".into()));
    }
    Ok(Window { since, until })
}

/// `--force` says what may happen to the `--output` file; alone it would
/// do nothing, which is more likely a mistake than a wish.
fn force(force: bool, output: bool) -> Result<bool, UsageError> {
    if force && !output {
        return Err(UsageError(
            "--force: only with --output (it lets --output replace an existing file)".into(),
        ));
    }
    Ok(force)
}

/// The kernel's owner map holds as many sockets as the tracker follows.
fn owner_entries(max_sockets: std::num::NonZeroUsize) -> u32 {
    u32::try_from(max_sockets.get()).unwrap_or(u32::MAX)
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
            owner_entries: owner_entries(a.max_sockets),
        },
        max_sockets: a.max_sockets,
        selection: Selection::new(&a.select.comm, &a.select.remote)
            .with_pods(&a.select.namespace, &a.select.pod),
        cgroup,
        node_root: a.node_root.clone(),
    })
}

/// The daemon's flags as given, their defaults where not, in the terms
/// of its file.
pub(super) fn daemon_values(a: &DaemonArgs) -> DaemonValues {
    DaemonValues {
        listen: a.listen,
        allow_non_loopback: a.allow_non_loopback,
        log_format: a.log_format,
        include_self: a.include_self,
        pids: a.trace.pid.clone(),
        ports: a.trace.port.clone(),
        comm: a.trace.select.comm.clone(),
        remote: a.trace.select.remote.clone(),
        family: match (a.trace.ipv4, a.trace.ipv6) {
            (true, _) => FamilyFilter::Ipv4,
            (_, true) => FamilyFilter::Ipv6,
            _ => FamilyFilter::Any,
        },
        cgroup: a.cgroup.clone(),
        max_sockets: a.trace.max_sockets,
        max_groups: a.analysis.max_groups,
        max_endpoints: a.max_endpoints,
        ring_bytes: a.trace.ring_bytes,
        history: !a.no_history,
        history_dir: a.history_dir.clone(),
        history_days: a.history_days,
        history_max_bytes: a.history_max_bytes,
        namespaces: a.trace.select.namespace.clone(),
        pods: a.trace.select.pod.clone(),
        node_root: a.trace.node_root.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        cli::tests::parse,
        model::event::Family,
        settings::{REPORT_DURATION, SortKey, Watch},
    };
    use tracer_common::TcpState;

    fn settings(args: &[&str]) -> Result<Command, UsageError> {
        into_settings(parse(args).expect("parses"))
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
        assert_eq!(w.trace.max_sockets.get(), 262_144);
        assert!(!w.trace.load.every_transition);
        assert!(watch(&["--transitions"]).trace.load.every_transition);
        let Command::Report(r) = settings(&["report"]).unwrap() else {
            panic!()
        };
        assert_eq!(r.duration, REPORT_DURATION);
        assert_eq!(r.max_groups, 500);
    }

    #[test]
    fn force_goes_with_output() {
        assert!(!watch(&["--output", "f"]).replace_output);
        assert!(watch(&["--output", "f", "--force"]).replace_output);
        let Command::Report(r) = settings(&["report", "--force", "--output", "f"]).unwrap() else {
            panic!()
        };
        assert!(r.replace_output);
        for command in ["watch", "report"] {
            let err = settings(&[command, "--force"]).unwrap_err().0;
            assert!(
                err.starts_with("--force:") && err.contains("--output"),
                "{err}"
            );
        }
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
            vec![2_147_483_646],
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

    #[test]
    fn since_without_from_is_the_daemons_history_on_report_only() {
        let Command::Report(r) = settings(&["report", "--since", "2h"]).unwrap() else {
            panic!()
        };
        assert_eq!(
            r.history_dir.as_deref(),
            Some(std::path::Path::new(crate::settings::HISTORY_DIR))
        );
        assert_eq!(
            r.window.since,
            Some(When::Into(std::time::Duration::from_hours(2)))
        );
        let Command::Report(r) =
            settings(&["report", "--since", "1h", "--history-dir", "/srv/h"]).unwrap()
        else {
            panic!()
        };
        assert_eq!(
            r.history_dir.as_deref(),
            Some(std::path::Path::new("/srv/h"))
        );
        let Command::Report(r) = settings(&["report"]).unwrap() else {
            panic!()
        };
        assert_eq!(r.history_dir, None, "a live report");
        for (args, said) in [
            (
                &["report", "--since", "2h", "--pid", "1"][..],
                "--pid with --since",
            ),
            (
                &["report", "--since", "2h", "--duration", "5s"][..],
                "--duration with --since",
            ),
            (&["report", "--until", "1h"][..], "--until: with --since"),
            (&["watch", "--since", "5m"][..], "--since: only with --from"),
            (&["top", "--until", "5m"][..], "--until: only with --from"),
            (
                &["history", "--since", "1h", "--until", "2h"][..],
                "--until: must come after",
            ),
        ] {
            let err = settings(args).unwrap_err().0;
            assert!(err.contains(said), "{args:?}: {err}");
        }
    }

    #[test]
    fn history_flags() {
        let Command::History(h) = settings(&[
            "history",
            "--pathology",
            "close_wait_leak,no_reuse",
            "--comm",
            "nginx",
            "--connections",
        ])
        .unwrap() else {
            panic!()
        };
        assert_eq!(
            h.pathologies,
            [
                crate::model::diagnose::Pathology::CloseWaitLeak,
                crate::model::diagnose::Pathology::NoReuse
            ]
        );
        assert!(h.connections && h.selection.admits_name("nginx"));
        assert_eq!(h.since, When::Into(std::time::Duration::from_hours(24)));
        let err = parse(&["history", "--pathology", "slow"])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("close_wait_leak"),
            "the names are listed: {err}"
        );
        let Command::Daemon(d) = settings(&["daemon", "--no-history"]).unwrap() else {
            panic!()
        };
        assert_eq!(d.history, None);
        let Command::Daemon(d) = settings(&["daemon", "--history-days", "3"]).unwrap() else {
            panic!()
        };
        let keep = d.history.unwrap();
        assert_eq!((keep.days, keep.max_bytes), (3, 256 << 20));
        assert!(parse(&["daemon", "--history-max-bytes", "100K"]).is_err());
        assert!(parse(&["daemon", "--history-days", "0"]).is_err());
    }
}
