//! Opening a recording for a command's replay: the window cut by --since/--until, and the tracing options it was recorded with.

use std::path::Path;

use crate::error::UsageError;

/// Opens a recording for a replay of `window`: the host ends at
/// `--until`; returned with it, the boot-clock time of `--since`.
pub fn replay(
    path: &Path,
    window: crate::settings::Window,
) -> anyhow::Result<(crate::session::journal::ReplayHost, Option<u64>)> {
    let mut host = crate::session::journal::open(path)?;
    let header = host.header();
    let (boot, unix) = (header.started_boot_ns, header.started_unix_ns);
    let since = window.since.map(|since| since.boot_ns(boot, unix));
    let until = window.until.map(|until| until.boot_ns(boot, unix));
    if let (Some(since), Some(until)) = (since, until)
        && until <= since
    {
        return Err(UsageError("--until: must come after --since".into()).into());
    }
    if let Some(until) = until {
        host.until(until);
    }
    Ok((host, since))
}

/// The tracing options of a replay: `record --cgroup` holds for it, and
/// `record --comm`/`--remote` unless the replay selects for itself (every
/// record was kept, so it may look wider).
pub fn as_recorded(
    trace: &crate::session::TraceOptions,
    host: &crate::session::journal::ReplayHost,
) -> crate::session::TraceOptions {
    use crate::model::select::{Selection, parse_remote};
    let header = host.header();
    let selection = if trace.selection == Selection::default() {
        let remote: Vec<_> = header
            .remote
            .iter()
            .filter_map(|r| parse_remote(r).ok())
            .collect();
        Selection::new(&header.comm, &remote)
    } else {
        trace.selection.clone()
    };
    crate::session::TraceOptions {
        cgroup: header.cgroup.clone(),
        selection,
        ..trace.clone()
    }
}
