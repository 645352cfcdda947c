//! The daemon's TOML file (`--config`): every key the flags have, applied over the defaults and under the flags given on the command line; every bad key or value is reported with the file, line and key.

use std::{
    collections::HashSet,
    net::SocketAddr,
    num::NonZeroUsize,
    path::{Path, PathBuf},
};

use ipnet::IpNet;
use serde::Deserialize;
use toml::Spanned;

use crate::{
    error::UsageError,
    model::select::{FamilyFilter, parse_comm, parse_remote},
    settings::{
        LogFormat,
        values::{
            parse_cgroup, parse_history_bytes, parse_history_days, parse_kube_name, parse_listen,
            parse_max_endpoints, parse_max_groups, parse_max_sockets, parse_pid, parse_port,
            parse_ring_bytes,
        },
    },
};

/// The daemon's settings in the terms of its file: what a file sets, what
/// `--check-config` prints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DaemonValues {
    pub listen: SocketAddr,
    /// Serving metrics beyond loopback was asked for explicitly.
    pub allow_non_loopback: bool,
    pub log_format: LogFormat,
    /// The daemon's own sockets are judged too (`--include-self`).
    pub include_self: bool,
    pub pids: Vec<u32>,
    pub ports: Vec<u16>,
    pub comm: Vec<String>,
    pub remote: Vec<IpNet>,
    pub family: FamilyFilter,
    pub cgroup: Option<String>,
    pub max_sockets: NonZeroUsize,
    pub max_groups: usize,
    pub max_endpoints: usize,
    pub ring_bytes: u32,
    /// Keep a history (`--no-history`: false).
    pub history: bool,
    pub history_dir: PathBuf,
    pub history_days: u32,
    pub history_max_bytes: u64,
    /// Kubernetes namespaces and pods selected.
    pub namespaces: Vec<String>,
    pub pods: Vec<String>,
    pub node_root: PathBuf,
}

impl DaemonValues {
    /// What no single value can say: metrics beyond loopback need to be
    /// meant.
    pub fn validate(&self) -> Result<(), UsageError> {
        if !self.listen.ip().is_loopback() && !self.allow_non_loopback {
            return Err(UsageError(format!(
                "--listen {}: beyond loopback, metrics name processes and their peers to anyone who can connect; add --allow-non-loopback (allow-non-loopback = true in the file) to mean it",
                self.listen
            )));
        }
        Ok(())
    }
}

/// A size as a number of bytes or a string with a unit (`"4MiB"`).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Size {
    Bytes(i64),
    Text(String),
}

/// The file, as written: every key optional, unknown keys refused.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct FileConfig {
    listen: Option<Spanned<String>>,
    allow_non_loopback: Option<Spanned<bool>>,
    log_format: Option<Spanned<String>>,
    include_self: Option<Spanned<bool>>,
    pid: Option<Spanned<Vec<i64>>>,
    port: Option<Spanned<Vec<i64>>>,
    comm: Option<Spanned<Vec<String>>>,
    remote: Option<Spanned<Vec<String>>>,
    family: Option<Spanned<String>>,
    cgroup: Option<Spanned<String>>,
    max_sockets: Option<Spanned<i64>>,
    max_groups: Option<Spanned<i64>>,
    max_endpoints: Option<Spanned<i64>>,
    ring_bytes: Option<Spanned<Size>>,
    history: Option<Spanned<bool>>,
    history_dir: Option<Spanned<String>>,
    history_days: Option<Spanned<i64>>,
    history_max_bytes: Option<Spanned<Size>>,
    namespace: Option<Spanned<Vec<String>>>,
    pod: Option<Spanned<Vec<String>>>,
    node_root: Option<Spanned<String>>,
}

/// 1-based line of a byte offset.
fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// The key written on `line`, for errors the parser reports by position.
fn key_on_line(text: &str, line: usize) -> Option<&str> {
    let l = text.lines().nth(line - 1)?;
    let (key, _) = l.split_once('=')?;
    Some(key.trim())
}

/// Reads `path`, validates every key, and applies it over `base` but for
/// the flags `given` on the command line (clap ids: `max_sockets`).
pub fn apply_file(
    base: DaemonValues,
    path: &Path,
    given: &HashSet<String>,
) -> Result<DaemonValues, UsageError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| UsageError(format!("--config {}: {e}", path.display())))?;
    apply_text(base, &text, &path.display().to_string(), given)
}

#[expect(clippy::too_many_lines, reason = "one arm per key of the file")]
pub(crate) fn apply_text(
    mut s: DaemonValues,
    text: &str,
    name: &str,
    given: &HashSet<String>,
) -> Result<DaemonValues, UsageError> {
    let file: FileConfig = toml::from_str(text).map_err(|e| {
        let line = e.span().map_or(1, |span| line_of(text, span.start));
        // Unknown keys and type mismatches carry their own wording; name the
        // key in front when the parser did not.
        let message = e.message().trim().replace('\n', " ");
        match key_on_line(text, line) {
            Some(key) if !message.contains(key) => {
                UsageError(format!("{name}:{line}: {key}: {message}"))
            }
            _ => UsageError(format!("{name}:{line}: {message}")),
        }
    })?;
    let at = |span: std::ops::Range<usize>, key: &str, reason: String| {
        UsageError(format!(
            "{name}:{}: {key}: {reason}",
            line_of(text, span.start)
        ))
    };
    // A key is still checked when its flag was given, but the flag wins.
    let flag_given = |key: &str| match key {
        "family" => given.contains("ipv4") || given.contains("ipv6"),
        "history" => given.contains("no_history"),
        key => given.contains(&key.replace('-', "_")),
    };
    macro_rules! check {
        ($field:expr, $key:literal, |$v:ident| $parse:expr) => {
            if let Some(spanned) = $field {
                let span = spanned.span();
                let $v = spanned.into_inner();
                let value = $parse.map_err(|reason: String| at(span, $key, reason))?;
                (!flag_given($key)).then_some(value)
            } else {
                None
            }
        };
    }
    if let Some(v) = check!(file.listen, "listen", |v| parse_listen(&v)) {
        s.listen = v;
    }
    if let Some(v) = check!(file.allow_non_loopback, "allow-non-loopback", |v| Ok::<
        bool,
        String,
    >(v))
    {
        s.allow_non_loopback = v;
    }
    if let Some(v) = check!(file.log_format, "log-format", |v| match v.as_str() {
        "text" => Ok(LogFormat::Text),
        "json" => Ok(LogFormat::Json),
        other => Err(format!("'{other}' is not text or json")),
    }) {
        s.log_format = v;
    }
    if let Some(v) = check!(file.include_self, "include-self", |v| Ok::<bool, String>(v)) {
        s.include_self = v;
    }
    if let Some(v) = check!(file.pid, "pid", |v| v
        .iter()
        .map(|p| parse_pid(&p.to_string()))
        .collect::<Result<Vec<_>, _>>())
    {
        s.pids = v;
    }
    if let Some(v) = check!(file.port, "port", |v| v
        .iter()
        .map(|p| parse_port(&p.to_string()))
        .collect::<Result<Vec<_>, _>>())
    {
        s.ports = v;
    }
    if let Some(v) = check!(file.comm, "comm", |v| v
        .iter()
        .map(|c| parse_comm(c))
        .collect::<Result<Vec<_>, _>>())
    {
        s.comm = v;
    }
    if let Some(v) = check!(file.remote, "remote", |v| v
        .iter()
        .map(|r| parse_remote(r))
        .collect::<Result<Vec<_>, _>>())
    {
        s.remote = v;
    }
    if let Some(v) = check!(file.family, "family", |v| match v.as_str() {
        "any" => Ok(FamilyFilter::Any),
        "ipv4" => Ok(FamilyFilter::Ipv4),
        "ipv6" => Ok(FamilyFilter::Ipv6),
        other => Err(format!("'{other}' is not any, ipv4 or ipv6")),
    }) {
        s.family = v;
    }
    if let Some(v) = check!(file.cgroup, "cgroup", |v| parse_cgroup(&v)) {
        s.cgroup = Some(v);
    }
    if let Some(v) = check!(file.max_sockets, "max-sockets", |v| parse_max_sockets(
        &v.to_string()
    )) {
        s.max_sockets = v;
    }
    if let Some(v) = check!(file.max_groups, "max-groups", |v| parse_max_groups(
        &v.to_string()
    )) {
        s.max_groups = v;
    }
    if let Some(v) = check!(
        file.max_endpoints,
        "max-endpoints",
        |v| parse_max_endpoints(&v.to_string())
    ) {
        s.max_endpoints = v;
    }
    if let Some(v) = check!(file.ring_bytes, "ring-bytes", |v| match v {
        Size::Bytes(n) => parse_ring_bytes(&n.to_string()),
        Size::Text(t) => parse_ring_bytes(&t),
    }) {
        s.ring_bytes = v;
    }
    if let Some(v) = check!(file.history, "history", |v| Ok::<bool, String>(v)) {
        s.history = v;
    }
    if let Some(v) = check!(
        file.history_dir,
        "history-dir",
        |v| if v.trim().is_empty() {
            Err("an empty path (history = false keeps no history)".to_string())
        } else {
            Ok(PathBuf::from(v))
        }
    ) {
        s.history_dir = v;
    }
    if let Some(v) = check!(file.history_days, "history-days", |v| parse_history_days(
        &v.to_string()
    )) {
        s.history_days = v;
    }
    if let Some(v) = check!(file.history_max_bytes, "history-max-bytes", |v| match v {
        Size::Bytes(n) => parse_history_bytes(&n.to_string()),
        Size::Text(t) => parse_history_bytes(&t),
    }) {
        s.history_max_bytes = v;
    }
    if let Some(v) = check!(file.namespace, "namespace", |v| v
        .iter()
        .map(|n| parse_kube_name(n))
        .collect::<Result<Vec<_>, _>>())
    {
        s.namespaces = v;
    }
    if let Some(v) = check!(file.pod, "pod", |v| v
        .iter()
        .map(|n| parse_kube_name(n))
        .collect::<Result<Vec<_>, _>>())
    {
        s.pods = v;
    }
    if let Some(v) = check!(file.node_root, "node-root", |v| if v.starts_with('/') {
        Ok(PathBuf::from(v))
    } else {
        Err("an absolute path".to_string())
    }) {
        s.node_root = v;
    }
    Ok(s)
}

impl DaemonValues {
    /// The settings as a config file: every key, what `--check-config`
    /// prints and what a file must contain to reproduce them.
    pub fn to_toml(&self) -> String {
        let list = |v: &[String]| format!("[{}]", v.join(", "));
        format!(
            "listen = \"{}\"\nallow-non-loopback = {}\nlog-format = \"{}\"\ninclude-self = {}\npid = {}\nport = {}\ncomm = {}\nremote = {}\nfamily = \"{}\"\n{}max-sockets = {}\nmax-groups = {}\nmax-endpoints = {}\nring-bytes = {}\nhistory = {}\nhistory-dir = {}\nhistory-days = {}\nhistory-max-bytes = {}\nnamespace = {}\npod = {}\nnode-root = {}\n",
            self.listen,
            self.allow_non_loopback,
            match self.log_format {
                LogFormat::Text => "text",
                LogFormat::Json => "json",
            },
            self.include_self,
            list(&self.pids.iter().map(u32::to_string).collect::<Vec<_>>()),
            list(&self.ports.iter().map(u16::to_string).collect::<Vec<_>>()),
            list(
                &self
                    .comm
                    .iter()
                    .map(|c| serde_json::to_string(c).expect("a string"))
                    .collect::<Vec<_>>()
            ),
            list(
                &self
                    .remote
                    .iter()
                    .map(|r| format!("\"{r}\""))
                    .collect::<Vec<_>>()
            ),
            match self.family {
                FamilyFilter::Any => "any",
                FamilyFilter::Ipv4 => "ipv4",
                FamilyFilter::Ipv6 => "ipv6",
            },
            self.cgroup.as_ref().map_or_else(
                || "# cgroup = \"/kubepods.slice\"\n".to_string(),
                |c| format!("cgroup = \"{c}\"\n")
            ),
            self.max_sockets,
            self.max_groups,
            self.max_endpoints,
            self.ring_bytes,
            self.history,
            serde_json::to_string(&self.history_dir.to_string_lossy()).expect("a string"),
            self.history_days,
            self.history_max_bytes,
            list(
                &self
                    .namespaces
                    .iter()
                    .map(|n| format!("\"{n}\""))
                    .collect::<Vec<_>>()
            ),
            list(
                &self
                    .pods
                    .iter()
                    .map(|p| format!("\"{p}\""))
                    .collect::<Vec<_>>()
            ),
            serde_json::to_string(&self.node_root.to_string_lossy()).expect("a string"),
        )
    }
}
