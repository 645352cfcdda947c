//! The daemon's TOML file (`--config`): every key the flags have, applied over the defaults and under the flags given on the command line; every bad key or value is reported with the file, line and key.

use std::{collections::HashSet, net::SocketAddr, num::NonZeroUsize, path::Path};

use ipnet::IpNet;
use serde::Deserialize;
use toml::Spanned;

use crate::{
    cli::{
        DaemonArgs, parse_cgroup, parse_listen, parse_max_endpoints, parse_max_groups,
        parse_max_sockets, parse_pid, parse_port, parse_ring_bytes,
    },
    cmd::daemon::LogFormat,
    error::UsageError,
    model::select::{FamilyFilter, parse_comm, parse_remote},
};

/// The daemon's settings in the terms of its file: what a file sets, what
/// `--check-config` prints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DaemonValues {
    pub listen: SocketAddr,
    /// Serving metrics beyond loopback was asked for explicitly.
    pub allow_non_loopback: bool,
    pub log_format: LogFormat,
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
}

impl DaemonValues {
    /// The flags as given, their defaults where not.
    pub fn from_args(a: &DaemonArgs) -> Self {
        Self {
            listen: a.listen,
            allow_non_loopback: a.allow_non_loopback,
            log_format: a.log_format,
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
        }
    }

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

fn apply_text(
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
    Ok(s)
}

impl DaemonValues {
    /// The settings as a config file: every key, what `--check-config`
    /// prints and what a file must contain to reproduce them.
    pub fn to_toml(&self) -> String {
        let list = |v: &[String]| format!("[{}]", v.join(", "));
        format!(
            "listen = \"{}\"\nallow-non-loopback = {}\nlog-format = \"{}\"\npid = {}\nport = {}\ncomm = {}\nremote = {}\nfamily = \"{}\"\n{}max-sockets = {}\nmax-groups = {}\nmax-endpoints = {}\nring-bytes = {}\n",
            self.listen,
            self.allow_non_loopback,
            match self.log_format {
                LogFormat::Text => "text",
                LogFormat::Json => "json",
            },
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
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The daemon's values with every flag at its default.
    fn defaults() -> DaemonValues {
        let parsed = crate::cli::tests::parse(&["daemon"]).unwrap();
        let crate::cli::Command::Daemon(a) = parsed.cli.command else {
            panic!()
        };
        DaemonValues::from_args(&a)
    }

    fn parse(text: &str) -> Result<DaemonValues, UsageError> {
        apply_text(defaults(), text, "t.toml", &HashSet::new())
    }

    /// A file with every key set away from its default.
    const EVERY_KEY: &str = r#"
listen = "[::1]:9999"
allow-non-loopback = true
log-format = "json"
pid = [1, 2]
port = [80, 443]
comm = ["nginx", "kube-controller-manager"]
remote = ["10.0.0.0/8", "fd00::1"]
family = "ipv6"
cgroup = "/kubepods.slice"
max-sockets = 1000
max-groups = 50
max-endpoints = 7
ring-bytes = "16MiB"
"#;

    #[test]
    fn every_key_is_read() {
        let s = parse(EVERY_KEY).unwrap();
        assert_eq!(s.listen, "[::1]:9999".parse().unwrap());
        assert!(s.allow_non_loopback);
        assert_eq!(s.log_format, LogFormat::Json);
        assert_eq!(s.comm, ["nginx", "kube-controller-manager"]);
        assert_eq!(
            s.remote,
            [
                "10.0.0.0/8".parse::<ipnet::IpNet>().unwrap(),
                "fd00::1/128".parse().unwrap()
            ]
        );
        assert_eq!(s.pids, vec![1, 2]);
        assert_eq!(s.ports, vec![80, 443]);
        assert_eq!(s.family, FamilyFilter::Ipv6);
        assert_eq!(s.cgroup.as_deref(), Some("/kubepods.slice"));
        assert_eq!(s.max_sockets.get(), 1000);
        assert_eq!(s.max_groups, 50);
        assert_eq!(s.max_endpoints, 7);
        assert_eq!(s.ring_bytes, 16 << 20);
    }

    #[test]
    fn every_key_round_trips_through_the_printed_config() {
        let s = parse(EVERY_KEY).unwrap();
        assert_eq!(parse(&s.to_toml()).unwrap(), s);
        let d = defaults();
        assert_eq!(parse(&d.to_toml()).unwrap(), d);
    }

    #[test]
    fn the_shipped_config_file_is_valid() {
        let s = parse(include_str!("../../../deploy/tcplinger.toml")).unwrap();
        assert_eq!(s.listen, defaults().listen, "loopback by default");
        assert_eq!(s.log_format, LogFormat::Json);
    }

    #[test]
    fn the_readme_documents_every_key() {
        let readme = include_str!("../../../README.md");
        let block = readme
            .split("```toml")
            .nth(1)
            .and_then(|rest| rest.split("```").next())
            .expect("a ```toml block in the README");
        let s = parse(block).unwrap();
        assert_ne!(s, defaults(), "the README example sets keys");
        for key in [
            "listen",
            "log-format",
            "pid",
            "port",
            "family",
            "cgroup",
            "max-sockets",
            "max-groups",
            "max-endpoints",
            "ring-bytes",
        ] {
            assert!(
                block.contains(&format!("{key} =")),
                "README config lacks {key}"
            );
        }
    }

    #[test]
    fn bad_files_name_the_line_and_key() {
        for (text, line, key) in [
            ("listen = \"127.0.0.1:1\"\nport = [70000]\n", 2, "port"),
            ("port = [0]\n", 1, "port"),
            ("\n\nlog-format = \"yaml\"\n", 3, "log-format"),
            ("max-sockets = 0\n", 1, "max-sockets"),
            ("ring-bytes = \"3MB\"\n", 1, "ring-bytes"),
            ("family = \"ipx\"\n", 1, "family"),
            ("cgroup = \"kubepods\"\n", 1, "cgroup"),
            ("listen = \"everywhere\"\n", 1, "listen"),
            ("max-groups = \"many\"\n", 1, "max-groups"),
            ("# comment\nmax_socket = 5\n", 2, "max_socket"),
            ("pid = [1, \n", 1, ""),
        ] {
            let err = parse(text).unwrap_err().0;
            assert!(
                err.starts_with(&format!("t.toml:{line}")),
                "{text:?}: {err}"
            );
            assert!(err.contains(key), "{text:?}: {err}");
            assert!(!err.contains('\n'), "one line: {err}");
        }
    }

    #[test]
    fn flags_given_win_over_the_file_and_the_file_over_defaults() {
        let text = "max-sockets = 1000\nring-bytes = \"16MiB\"\nfamily = \"ipv6\"\n";
        let given: HashSet<String> = ["max_sockets".to_string(), "ipv4".to_string()].into();
        let mut base = defaults();
        base.max_sockets = NonZeroUsize::new(7).unwrap();
        base.family = FamilyFilter::Ipv4;
        let s = apply_text(base, text, "t.toml", &given).unwrap();
        assert_eq!(s.max_sockets.get(), 7, "the flag wins");
        assert_eq!(s.family, FamilyFilter::Ipv4, "-4 wins over family");
        assert_eq!(s.ring_bytes, 16 << 20, "the file wins over the default");
        // A bad value is refused even under a flag.
        let err = apply_text(defaults(), "max-sockets = 0\n", "t.toml", &given).unwrap_err();
        assert!(err.0.starts_with("t.toml:1: max-sockets"), "{}", err.0);
    }
}
