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
