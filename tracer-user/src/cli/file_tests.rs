//! The daemon's file read over the flags' defaults and under the flags given: every key, the shipped file, the README's example, and errors naming line and key.

use std::{collections::HashSet, num::NonZeroUsize};

use ipnet::IpNet;

use crate::{
    error::UsageError,
    model::select::FamilyFilter,
    settings::{
        LogFormat,
        file::{DaemonValues, apply_text},
    },
};

/// The daemon's values with every flag at its default.
fn defaults() -> DaemonValues {
    let parsed = crate::cli::tests::parse(&["daemon"]).unwrap();
    let crate::cli::Command::Daemon(a) = parsed.cli.command else {
        panic!()
    };
    super::into_settings::daemon_values(&a)
}

fn parse(text: &str) -> Result<DaemonValues, UsageError> {
    apply_text(defaults(), text, "t.toml", &HashSet::new())
}

/// A file with every key set away from its default.
const EVERY_KEY: &str = r#"
listen = "[::1]:9999"
allow-non-loopback = true
log-format = "json"
include-self = true
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
history = false
history-dir = "/srv/tcplinger"
history-days = 3
history-max-bytes = "1GiB"
namespace = ["shop", "kube-system"]
pod = ["db/pg-0"]
node-root = "/host"
"#;

#[test]
fn every_key_is_read() {
    let s = parse(EVERY_KEY).unwrap();
    assert_eq!(s.listen, "[::1]:9999".parse().unwrap());
    assert!(s.allow_non_loopback);
    assert_eq!(s.log_format, LogFormat::Json);
    assert!(s.include_self);
    assert_eq!(s.comm, ["nginx", "kube-controller-manager"]);
    assert_eq!(
        s.remote,
        [
            "10.0.0.0/8".parse::<IpNet>().unwrap(),
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
    assert!(!s.history);
    assert_eq!(s.history_dir, std::path::Path::new("/srv/tcplinger"));
    assert_eq!(s.history_days, 3);
    assert_eq!(s.history_max_bytes, 1 << 30);
    assert_eq!(s.namespaces, ["shop", "kube-system"]);
    assert_eq!(s.pods, ["db/pg-0"]);
    assert_eq!(s.node_root, std::path::Path::new("/host"));
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
    assert!(s.history);
    assert_eq!(s.history_dir, defaults().history_dir);
}

/// The daemon's history directory is a volume of its own, writable, on
/// the node (the root file system is read-only).
#[test]
fn the_shipped_daemonset_keeps_the_history_on_the_node() {
    let daemon = daemonset_args("tcplinger");
    let dir = flag(&daemon, "--history-dir");
    let yaml = include_str!("../../../deploy/kubernetes/daemonset.yaml");
    let mount: Vec<&str> = yaml
        .lines()
        .map(str::trim)
        .skip_while(|l| *l != format!("mountPath: {dir}"))
        .take(2)
        .collect();
    assert_eq!(mount.first(), Some(&format!("mountPath: {dir}").as_str()));
    assert_ne!(mount.get(1), Some(&"readOnly: true"), "{mount:?}");
    let volume: Vec<&str> = yaml
        .lines()
        .map(str::trim)
        .skip_while(|l| *l != "- name: history")
        .skip(1)
        .skip_while(|l| *l != "- name: history")
        .take(4)
        .collect();
    assert!(
        volume.contains(&format!("path: {dir}").as_str()) && volume.contains(&"hostPath:"),
        "{volume:?}"
    );
}

/// The `args:` items of one container of the shipped DaemonSet, read as
/// lines (there is no YAML parser among the dependencies, and the file is
/// ours): the `- ` items after the container's `args:`, comments skipped.
fn daemonset_args(container: &str) -> Vec<String> {
    let yaml = include_str!("../../../deploy/kubernetes/daemonset.yaml");
    let mut lines = yaml
        .lines()
        .skip_while(|l| l.trim() != format!("- name: {container}"))
        .skip_while(|l| l.trim() != "args:")
        .skip(1);
    let mut args = Vec::new();
    for line in lines.by_ref() {
        let line = line.trim();
        if line.starts_with('#') {
            continue;
        }
        let Some(item) = line.strip_prefix("- ") else {
            break;
        };
        args.push(item.trim_matches('"').to_string());
    }
    assert!(!args.is_empty(), "no args for {container}");
    args
}

/// The value of `--flag=VALUE` among `args`.
fn flag<'a>(args: &'a [String], name: &str) -> &'a str {
    args.iter()
        .find_map(|a| a.strip_prefix(name)?.strip_prefix('='))
        .unwrap_or_else(|| panic!("no {name} in {args:?}"))
}

/// The DaemonSet keeps the daemon on loopback, and the authenticating proxy
/// is what serves it: its upstream is the daemon's address, and the path
/// the liveness probe asks for is the one it lets through without a token.
#[test]
fn the_shipped_daemonset_serves_metrics_only_through_the_proxy() {
    let daemon = daemonset_args("tcplinger");
    assert_eq!(daemon[0], "daemon");
    assert!(
        !daemon.iter().any(|a| a.contains("allow-non-loopback")),
        "{daemon:?}"
    );
    let mut argv = vec!["tcplinger"];
    argv.extend(daemon.iter().map(String::as_str));
    let parsed = crate::cli::parse_from(argv).unwrap();
    let crate::settings::Command::Daemon(settings) =
        super::into_settings::into_settings(parsed).unwrap()
    else {
        panic!("not the daemon")
    };
    assert!(settings.listen.ip().is_loopback(), "{}", settings.listen);

    let proxy = daemonset_args("kube-rbac-proxy");
    assert_eq!(
        flag(&proxy, "--upstream"),
        format!("http://{}/", settings.listen)
    );
    let served = flag(&proxy, "--secure-listen-address");
    assert!(served.starts_with("[$(NODE_IP)]:"), "{served}");
    let yaml = include_str!("../../../deploy/kubernetes/daemonset.yaml");
    let probe: Vec<&str> = yaml
        .lines()
        .skip_while(|l| l.trim() != "livenessProbe:")
        .take(5)
        .map(str::trim)
        .collect();
    assert!(
        probe.contains(&"path: /livez") && probe.contains(&"scheme: HTTPS"),
        "{probe:?}"
    );
    let port = served.rsplit(':').next().unwrap();
    assert!(
        probe.contains(&format!("port: {port}").as_str()),
        "{probe:?}"
    );
    let ignored: Vec<&str> = flag(&proxy, "--ignore-paths").split(',').collect();
    assert!(ignored.contains(&"/livez"), "{ignored:?}");
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
        "history-dir",
        "history-days",
        "history-max-bytes",
        "namespace",
        "node-root",
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
        ("history-days = 0\n", 1, "history-days"),
        ("history-max-bytes = \"10K\"\n", 1, "history-max-bytes"),
        ("history-dir = \"\"\n", 1, "history-dir"),
        ("namespace = [\"Shop\"]\n", 1, "namespace"),
        ("node-root = \"host\"\n", 1, "node-root"),
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
