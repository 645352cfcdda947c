//! The daemon's settings: defaults, then the TOML file (`--config`), then the flags; every bad key or value is reported with the file, line and key.

use std::{net::SocketAddr, num::NonZeroUsize, path::Path};

use serde::Deserialize;
use toml::Spanned;

use crate::{
    cli::{
        DaemonArgs, FamilyFilter, Filters, LogFormat, SelectArgs, UsageError, parse_cgroup,
        parse_listen, parse_max_endpoints, parse_max_groups, parse_max_sockets, parse_pid,
        parse_port, parse_ring_bytes,
    },
    model::select::{parse_comm, parse_remote},
};

pub const DEFAULT_LISTEN: &str = "127.0.0.1:9917";
pub const DEFAULT_MAX_SOCKETS: usize = 262_144;
pub const DEFAULT_MAX_GROUPS: usize = 500;
pub const DEFAULT_MAX_ENDPOINTS: usize = 100;
pub const DEFAULT_RING_BYTES: u32 = 4 << 20;

/// What the daemon runs with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub listen: SocketAddr,
    /// Serving metrics beyond loopback was asked for explicitly.
    pub allow_non_loopback: bool,
    pub log_format: LogFormat,
    pub filters: Filters,
    /// `comm` and `remote`: applied in userspace.
    pub select: SelectArgs,
    pub cgroup: Option<String>,
    pub max_sockets: NonZeroUsize,
    pub max_groups: usize,
    pub max_endpoints: usize,
    pub ring_bytes: u32,
    /// The hidden `--disable-hook` (tests); never read from the file.
    pub disabled_hooks: Vec<&'static str>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            listen: DEFAULT_LISTEN.parse().expect("valid default"),
            allow_non_loopback: false,
            log_format: LogFormat::Text,
            filters: Filters {
                pids: Vec::new(),
                ports: Vec::new(),
                family: FamilyFilter::Any,
            },
            select: SelectArgs::default(),
            cgroup: None,
            max_sockets: NonZeroUsize::new(DEFAULT_MAX_SOCKETS).expect("non-zero"),
            max_groups: DEFAULT_MAX_GROUPS,
            max_endpoints: DEFAULT_MAX_ENDPOINTS,
            ring_bytes: DEFAULT_RING_BYTES,
            disabled_hooks: Vec::new(),
        }
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

/// Reads `path`, validates every key, and applies it over `base`.
pub fn apply_file(base: Settings, path: &Path) -> Result<Settings, UsageError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| UsageError(format!("--config {}: {e}", path.display())))?;
    apply_text(base, &text, &path.display().to_string())
}

fn apply_text(mut s: Settings, text: &str, name: &str) -> Result<Settings, UsageError> {
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
    macro_rules! check {
        ($field:expr, $key:literal, |$v:ident| $parse:expr) => {
            if let Some(spanned) = $field {
                let span = spanned.span();
                let $v = spanned.into_inner();
                Some($parse.map_err(|reason: String| at(span, $key, reason))?)
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
        s.filters.pids = v;
    }
    if let Some(v) = check!(file.port, "port", |v| v
        .iter()
        .map(|p| parse_port(&p.to_string()))
        .collect::<Result<Vec<_>, _>>())
    {
        s.filters.ports = v;
    }
    if let Some(v) = check!(file.comm, "comm", |v| v
        .iter()
        .map(|c| parse_comm(c))
        .collect::<Result<Vec<_>, _>>())
    {
        s.select.comm = v;
    }
    if let Some(v) = check!(file.remote, "remote", |v| v
        .iter()
        .map(|r| parse_remote(r))
        .collect::<Result<Vec<_>, _>>())
    {
        s.select.remote = v;
    }
    if let Some(v) = check!(file.family, "family", |v| match v.as_str() {
        "any" => Ok(FamilyFilter::Any),
        "ipv4" => Ok(FamilyFilter::Ipv4),
        "ipv6" => Ok(FamilyFilter::Ipv6),
        other => Err(format!("'{other}' is not any, ipv4 or ipv6")),
    }) {
        s.filters.family = v;
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

/// Flags given on the command line win over the file.
fn apply_flags(mut s: Settings, args: &DaemonArgs) -> Settings {
    if let Some(v) = args.listen {
        s.listen = v;
    }
    if args.allow_non_loopback {
        s.allow_non_loopback = true;
    }
    if let Some(v) = &args.comm {
        s.select.comm = v.clone();
    }
    if let Some(v) = &args.remote {
        s.select.remote = v.clone();
    }
    if let Some(v) = args.log_format {
        s.log_format = v;
    }
    if let Some(v) = &args.pid {
        s.filters.pids = v.clone();
    }
    if let Some(v) = &args.port {
        s.filters.ports = v.clone();
    }
    if args.ipv4 {
        s.filters.family = FamilyFilter::Ipv4;
    }
    if args.ipv6 {
        s.filters.family = FamilyFilter::Ipv6;
    }
    if let Some(v) = &args.cgroup {
        s.cgroup = Some(v.clone());
    }
    if let Some(v) = args.max_sockets {
        s.max_sockets = v;
    }
    if let Some(v) = args.max_groups {
        s.max_groups = v;
    }
    if let Some(v) = args.max_endpoints {
        s.max_endpoints = v;
    }
    if let Some(v) = args.ring_bytes {
        s.ring_bytes = v;
    }
    s
}

/// Defaults, then `--config`, then flags; then the same checks as the
/// tracing commands' filters (at most 8 pids and ports).
pub fn resolve(args: &DaemonArgs) -> Result<Settings, UsageError> {
    let mut s = Settings::default();
    if let Some(path) = &args.config {
        s = apply_file(s, path)?;
    }
    let s = apply_flags(s, args);
    let trace = crate::cli::TraceArgs {
        duration: None,
        pid: s.filters.pids.clone(),
        port: s.filters.ports.clone(),
        ipv4: s.filters.family == FamilyFilter::Ipv4,
        ipv6: s.filters.family == FamilyFilter::Ipv6,
        max_sockets: s.max_sockets,
        ring_bytes: s.ring_bytes,
        select: s.select.clone(),
        disable_hook: args.disable_hook.clone(),
    };
    let filters = trace.filters()?;
    if !s.listen.ip().is_loopback() && !s.allow_non_loopback {
        return Err(UsageError(format!(
            "--listen {}: beyond loopback, metrics name processes and their peers to anyone who can connect; add --allow-non-loopback (allow-non-loopback = true in the file) to mean it",
            s.listen
        )));
    }
    Ok(Settings {
        filters,
        disabled_hooks: args.disable_hook.clone(),
        ..s
    })
}

impl Settings {
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
            list(
                &self
                    .filters
                    .pids
                    .iter()
                    .map(u32::to_string)
                    .collect::<Vec<_>>()
            ),
            list(
                &self
                    .filters
                    .ports
                    .iter()
                    .map(u16::to_string)
                    .collect::<Vec<_>>()
            ),
            list(
                &self
                    .select
                    .comm
                    .iter()
                    .map(|c| serde_json::to_string(c).expect("a string"))
                    .collect::<Vec<_>>()
            ),
            list(
                &self
                    .select
                    .remote
                    .iter()
                    .map(|r| format!("\"{r}\""))
                    .collect::<Vec<_>>()
            ),
            match self.filters.family {
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

    fn parse(text: &str) -> Result<Settings, UsageError> {
        apply_text(Settings::default(), text, "t.toml")
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
        assert_eq!(s.select.comm, ["nginx", "kube-controller-manager"]);
        assert_eq!(
            s.select.remote,
            [
                "10.0.0.0/8".parse::<ipnet::IpNet>().unwrap(),
                "fd00::1/128".parse().unwrap()
            ]
        );
        assert_eq!(s.filters.pids, vec![1, 2]);
        assert_eq!(s.filters.ports, vec![80, 443]);
        assert_eq!(s.filters.family, FamilyFilter::Ipv6);
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
        let d = Settings::default();
        assert_eq!(parse(&d.to_toml()).unwrap(), d);
    }

    #[test]
    fn the_shipped_config_file_is_valid() {
        let s = parse(include_str!("../../deploy/tcplinger.toml")).unwrap();
        assert_eq!(
            s.listen,
            DEFAULT_LISTEN.parse().unwrap(),
            "loopback by default"
        );
        assert_eq!(s.log_format, LogFormat::Json);
    }

    #[test]
    fn the_readme_documents_every_key() {
        let readme = include_str!("../../README.md");
        let block = readme
            .split("```toml")
            .nth(1)
            .and_then(|rest| rest.split("```").next())
            .expect("a ```toml block in the README");
        let s = parse(block).unwrap();
        assert_ne!(s, Settings::default(), "the README example sets keys");
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
}
