//! Two network namespaces ("client" and "server" hosts) joined by a veth pair, with IPv4 and IPv6 addresses; removed on drop.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
};

static NEXT: AtomicU32 = AtomicU32::new(1);

fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("running ip (iproute2)");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

pub struct NetPair {
    pub client_ns: String,
    pub server_ns: String,
    pub client_v4: IpAddr,
    pub server_v4: IpAddr,
    pub client_v6: IpAddr,
    pub server_v6: IpAddr,
}

impl NetPair {
    pub fn new() -> Self {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let tag = format!("{}{n}", std::process::id());
        let client_ns = format!("tlc{tag}");
        let server_ns = format!("tls{tag}");
        // Each pair gets its own subnet so leftovers of a crashed run cannot clash.
        let subnet = u8::try_from((std::process::id() % 200 + n) % 256).expect("below 256");
        let pair = Self {
            client_v4: IpAddr::V4(Ipv4Addr::new(10, 231, subnet, 1)),
            server_v4: IpAddr::V4(Ipv4Addr::new(10, 231, subnet, 2)),
            client_v6: IpAddr::V6(Ipv6Addr::new(
                0xfd00,
                0x231,
                u16::from(subnet),
                0,
                0,
                0,
                0,
                1,
            )),
            server_v6: IpAddr::V6(Ipv6Addr::new(
                0xfd00,
                0x231,
                u16::from(subnet),
                0,
                0,
                0,
                0,
                2,
            )),
            client_ns,
            server_ns,
        };
        ip(&["netns", "add", &pair.client_ns]);
        ip(&["netns", "add", &pair.server_ns]);
        ip(&[
            "link",
            "add",
            "veth0",
            "netns",
            &pair.client_ns,
            "type",
            "veth",
            "peer",
            "name",
            "veth0",
            "netns",
            &pair.server_ns,
        ]);
        for (ns, v4, v6) in [
            (&pair.client_ns, pair.client_v4, pair.client_v6),
            (&pair.server_ns, pair.server_v4, pair.server_v6),
        ] {
            ip(&["-n", ns, "link", "set", "lo", "up"]);
            ip(&["-n", ns, "addr", "add", &format!("{v4}/24"), "dev", "veth0"]);
            ip(&[
                "-n",
                ns,
                "-6",
                "addr",
                "add",
                &format!("{v6}/64"),
                "dev",
                "veth0",
                "nodad",
            ]);
            ip(&["-n", ns, "link", "set", "veth0", "up"]);
        }
        pair
    }

    /// Rate-limits both directions of the link (token bucket, one packet
    /// of burst): a packet queued behind a full-size one waits about 1 s at
    /// 10kbit, which stands in for network latency (netem is not always built).
    pub fn rate_limit(&self, rate: &str) {
        for ns in [&self.client_ns, &self.server_ns] {
            let out = Command::new("ip")
                .args([
                    "netns", "exec", ns, "tc", "qdisc", "add", "dev", "veth0", "root", "tbf",
                ])
                .args(["rate", rate, "burst", "1540", "latency", "5s"])
                .output()
                .expect("running tc (iproute2)");
            assert!(
                out.status.success(),
                "tc: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }

    /// Adds an iptables rule (`iptables ARGS`) inside one namespace; it
    /// goes with the namespace.
    #[expect(clippy::unused_self, reason = "a namespace of this pair is meant")]
    pub fn iptables(&self, ns: &str, args: &[&str]) {
        let mut argv = vec!["netns", "exec", ns, "iptables"];
        argv.extend_from_slice(args);
        ip(&argv);
    }

    /// Sets a sysctl inside one namespace, e.g. `net.ipv4.tcp_fin_timeout`.
    #[expect(clippy::unused_self, reason = "a namespace of this pair is meant")]
    pub fn sysctl(&self, ns: &str, key: &str, value: &str) {
        ip(&[
            "netns",
            "exec",
            ns,
            "sysctl",
            "-qw",
            &format!("{key}={value}"),
        ]);
    }
}

impl NetPair {
    /// A `TcpExt` counter of one namespace's `/proc/net/netstat`, e.g.
    /// `TCPTimeWaitOverflow`: what the kernel itself counted there.
    #[expect(clippy::unused_self, reason = "a namespace of this pair is meant")]
    pub fn tcp_ext(&self, ns: &str, name: &str) -> u64 {
        let out = Command::new("ip")
            .args(["netns", "exec", ns, "cat", "/proc/net/netstat"])
            .output()
            .expect("ip netns exec");
        assert!(out.status.success(), "{out:?}");
        let text = String::from_utf8_lossy(&out.stdout);
        // Pairs of lines: `TcpExt: Name...` then `TcpExt: value...`.
        let rows: Vec<Vec<&str>> = text
            .lines()
            .filter(|l| l.starts_with("TcpExt:"))
            .map(|l| l.split_whitespace().skip(1).collect())
            .collect();
        let [names, values] = rows.as_slice() else {
            panic!("no TcpExt pair in {text}");
        };
        let at = names
            .iter()
            .position(|n| *n == name)
            .unwrap_or_else(|| panic!("no {name} in {text}"));
        values[at].parse().expect("a counter")
    }
}

impl Drop for NetPair {
    fn drop(&mut self) {
        // Deleting a namespace deletes its end of the veth, and with it the pair.
        for ns in [&self.client_ns, &self.server_ns] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}
