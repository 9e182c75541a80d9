//! Thin wrappers over `ip`, `nft` and `sysctl`, each bounded by a timeout and failing
//! with the command line and its stderr.
//!
//! Nothing here touches the root namespace: veth pairs are created with both ends
//! directly inside bench namespaces (`ip -n A link add X type veth peer name Y netns B`).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::proc::run_checked;

/// Timeout of one configuration command.
pub(crate) const CMD_TIMEOUT: Duration = Duration::from_secs(15);

/// Every namespace name this crate creates starts with this.
pub const NS_PREFIX: &str = "cyb-";

/// `ip netns add/del` serialised within the process (concurrent first use of
/// /run/netns races on its mount propagation).
static NETNS_LOCK: Mutex<()> = Mutex::new(());

fn find(tool: &str) -> PathBuf {
    for dir in ["/usr/sbin", "/sbin", "/usr/bin", "/bin"] {
        let p = Path::new(dir).join(tool);
        if p.exists() {
            return p;
        }
    }
    PathBuf::from(tool)
}

/// Path of the `ip` binary.
pub(crate) fn ip_bin() -> PathBuf {
    find("ip")
}

/// `ip ARGS`, checked.
pub(crate) fn ip(args: &[&str]) -> Result<Output> {
    let mut c = Command::new(ip_bin());
    c.args(args);
    run_checked(c, None, CMD_TIMEOUT)
}

/// `ip -n NS ARGS`, checked.
pub(crate) fn ip_n(ns: &str, args: &[&str]) -> Result<Output> {
    let mut c = Command::new(ip_bin());
    c.arg("-n").arg(ns).args(args);
    run_checked(c, None, CMD_TIMEOUT)
}

/// `ip netns exec NS PROGRAM` as an unstarted command.
pub(crate) fn exec_cmd(ns: &str, program: &std::ffi::OsStr) -> Command {
    let mut c = Command::new(ip_bin());
    c.arg("netns").arg("exec").arg(ns).arg(program);
    c
}

/// Loads an nftables ruleset (`nft -f -`) in `ns`.
pub(crate) fn nft(ns: &str, rules: &str) -> Result<()> {
    let mut c = exec_cmd(ns, find("nft").as_os_str());
    c.args(["-f", "-"]);
    run_checked(c, Some(rules.as_bytes()), CMD_TIMEOUT)
        .with_context(|| format!("loading nftables rules in {ns}:\n{rules}"))?;
    Ok(())
}

/// `sysctl -qw KEY=VALUE...` in `ns`.
pub(crate) fn sysctl(ns: &str, settings: &[&str]) -> Result<()> {
    let mut c = exec_cmd(ns, find("sysctl").as_os_str());
    c.arg("-qw").args(settings);
    run_checked(c, None, CMD_TIMEOUT)?;
    Ok(())
}

/// Creates namespace `ns` with `lo` up and IPv6 duplicate-address detection off (so
/// addresses are usable at once), forwarding on if `router`.
pub(crate) fn add_ns(ns: &str, router: bool) -> Result<()> {
    {
        let _g = NETNS_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        ip(&["netns", "add", ns]).with_context(|| format!("creating namespace {ns}"))?;
    }
    ip_n(ns, &["link", "set", "lo", "up"])?;
    sysctl(
        ns,
        &[
            "net.ipv6.conf.all.accept_dad=0",
            "net.ipv6.conf.default.accept_dad=0",
            "net.ipv6.conf.all.accept_ra=0",
            "net.ipv6.conf.default.accept_ra=0",
        ],
    )?;
    if router {
        sysctl(
            ns,
            &["net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"],
        )?;
        // If br_netfilter is loaded, bridged LAN traffic must not traverse the IP
        // firewall hooks (best effort: the keys do not exist without the module).
        let _ = sysctl(
            ns,
            &[
                "net.bridge.bridge-nf-call-iptables=0",
                "net.bridge.bridge-nf-call-ip6tables=0",
            ],
        );
    }
    Ok(())
}

/// Namespaces that exist (`ip netns list`).
pub fn list_ns() -> Result<Vec<String>> {
    let out = ip(&["netns", "list"])?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect())
}

/// Pids of processes living in `ns` (`ip netns pids`).
pub(crate) fn ns_pids(ns: &str) -> Vec<i32> {
    ip(&["netns", "pids", ns])
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Kills (by pid) every process still inside `ns`, deletes it and its
/// `/etc/netns/<ns>` directory. Best effort; returns the first error.
pub(crate) fn del_ns(ns: &str) -> Result<()> {
    if !ns.starts_with(NS_PREFIX) {
        bail!("refusing to delete namespace {ns:?}: not ours");
    }
    for pid in ns_pids(ns) {
        if pid > 1 {
            // SAFETY: plain syscall on a pid that lives in our namespace.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
    }
    let r = {
        let _g = NETNS_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        ip(&["netns", "del", ns]).map(|_| ())
    };
    let etc = etc_dir(ns);
    if etc.exists() {
        let _ = std::fs::remove_dir_all(&etc);
    }
    r
}

/// `/etc/netns/<ns>`: files here are bind-mounted over `/etc` by `ip netns exec`.
pub(crate) fn etc_dir(ns: &str) -> PathBuf {
    Path::new("/etc/netns").join(ns)
}

/// Creates a veth pair with `a` in `ns_a` and `b` in `ns_b`, both up.
pub(crate) fn veth(ns_a: &str, a: &str, ns_b: &str, b: &str) -> Result<()> {
    debug_assert!(a.len() <= 15 && b.len() <= 15);
    ip_n(
        ns_a,
        &[
            "link", "add", a, "type", "veth", "peer", "name", b, "netns", ns_b,
        ],
    )
    .with_context(|| format!("veth {ns_a}/{a} <-> {ns_b}/{b}"))?;
    ip_n(ns_a, &["link", "set", a, "up"])?;
    ip_n(ns_b, &["link", "set", b, "up"])?;
    Ok(())
}

/// Adds `addr` (CIDR) to `dev` in `ns`; IPv6 addresses get `nodad`.
pub(crate) fn addr_add(ns: &str, dev: &str, cidr: &str) -> Result<()> {
    if cidr.contains(':') {
        ip_n(ns, &["-6", "addr", "add", cidr, "dev", dev, "nodad"])?;
    } else {
        ip_n(ns, &["addr", "add", cidr, "dev", dev])?;
    }
    Ok(())
}

/// Whether `pid` is alive (exists in /proc and is not a zombie).
pub(crate) fn pid_alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => {
            // state is the first field after the ")" closing comm.
            let state = s
                .rsplit_once(')')
                .and_then(|(_, r)| r.split_whitespace().next());
            !matches!(state, Some("Z") | Some("X") | None)
        }
        Err(_) => false,
    }
}
