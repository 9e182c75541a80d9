//! The namespace test bench: small internets made of Linux network namespaces, veth
//! pairs and nftables, on which the end-to-end tests run the real binaries
//! (`ip netns exec`). Everything a [`Bench`] creates is removed when it is dropped,
//! also when the test panics.
//!
//! # Topology
//!
//! ```text
//!                    public hosts (eth0)      dns (dnsmasq, eth0)
//!                         | pK                    | p63
//!   +---------------------+--------------------+--+-----------------+
//!   |  core: the "Internet", a dual-stack router (forwarding on, no filtering)  |
//!   +-------+------------------------+-----------------------+-------+
//!           | wW                     | wW                    | wW
//!       wan |                    wan |                   wan |
//!   NAT router (EIM)          NAT router (symmetric)   firewall_443
//!       lan (bridge)             lan (bridge)             lan (bridge)
//!        |       \                 |                         |
//!    host eth0  inner NAT wan    host eth0                 host eth0
//!                (nat_behind)
//!                 lan (bridge) -- host eth0
//! ```
//!
//! Every node is one namespace named `cyb-<pid>-<n>-<tag>-<name>` (`<pid>` of the test
//! process, `<n>` a per-process counter), so benches of parallel tests never collide
//! and [`cleanup_stale`] can tell leftovers of dead runs. Interface names are short and
//! fixed (`eth0`, `wan`, `lan`, `pK`, `wW`, `lM` ≤ 15 chars) since every namespace has
//! its own; veth pairs are created with both ends inside bench namespaces, so the root
//! namespace is never touched. IPv6 DAD and router advertisements are off everywhere,
//! so addresses are usable at once; routers forward IPv4 and IPv6.
//!
//! # Address plan (documentation ranges only)
//!
//! | what | prefix | detail |
//! |------|--------|--------|
//! | public host link `k` (0..=62) | 203.0.113.4k/30 | core .4k+1, host .4k+2 |
//! | same link, IPv6 | 2001:db8:(k+1)::/64 | core ::1, host ::2 (hex `k+1`) |
//! | DNS server link (k = 63) | 203.0.113.252/30, 2001:db8:40::/64 | dns at 203.0.113.254, 2001:db8:40::2 |
//! | router WAN link `w` (0..=63) | 198.51.100.4w/30 | core .4w+1, router `wan` .4w+2 |
//! | LAN `j` (0..=15) | 192.0.2.16j/28 | router `lan` .16j+1, hosts .16j+2 ..= .16j+14 |
//! | DNS test answer | 198.51.100.80, 2001:db8:80::80 | `www.example.test` (not routed) |
//!
//! The core only has connected routes: it reaches every public /30 and /64 and every
//! router WAN, but no LAN, so hosts behind a NAT or the firewall are unreachable from
//! outside. Hosts behind a router are IPv4-only. A router made by
//! [`Bench::nat_behind`] takes its WAN address from the outer LAN. Links are never
//! reused within a bench (a moved host gets a new one).
//!
//! # Routers (nftables)
//!
//! - [`NatKind::EndpointIndependent`]: `oifname "wan" ip saddr <lan> masquerade` — the
//!   kernel keeps the source port while the tuple stays unique, so one socket is seen
//!   as the same public ip:port by every destination (shown by the bench tests).
//! - [`NatKind::Symmetric`]: `masquerade random` — a per-destination hashed port.
//! - [`Bench::firewall_443`]: forward policy drop; lets out TCP/UDP to dport 443 and
//!   DNS to [`DNS_SERVER_V4`] (a corporate network's own resolver; the overlay's
//!   resolver forwards ordinary names there), replies via `ct state established,related`;
//!   masquerades like the EIM NAT.
//! - Every router drops new inbound connections on `wan` (forward), and new inbound
//!   TCP/UDP to itself on `wan` (input, before conntrack confirmation, so a peer's early
//!   hole-punching packet cannot occupy the mapping our own packet needs).
//!
//! # Use
//!
//! ```no_run
//! use cyphonic_tests::{require_root, Bench, Family, NatKind};
//! if !require_root() { return Ok(()); }
//! let mut bench = Bench::new("demo")?;
//! let server = bench.public_host("server", Family::Dual)?;
//! let nat = bench.nat("home", NatKind::EndpointIndependent)?;
//! let laptop = bench.host_in(&nat, "laptop")?;
//! assert!(laptop.can_ping(server.ipv4.unwrap().into())?);
//! # Ok::<(), anyhow::Error>(())
//! ```

mod host;
mod netns;
pub mod overlay;
pub mod payload;
mod proc;
mod topology;

use std::path::PathBuf;

use anyhow::{bail, Result};

pub use host::{Host, RUN_TIMEOUT};
pub use netns::{list_ns, NS_PREFIX};
pub use proc::Proc;
pub use topology::{
    Attach, Bench, Family, NatKind, Net, NetKind, DNS_SERVER_V4, DNS_SERVER_V6, DNS_TEST_NAME,
    DNS_TEST_V4, DNS_TEST_V6,
};

/// Whether namespace tests can run here (root, `ip netns` and `nft` usable). When not,
/// prints a loud SKIP line and returns false — unless the environment variable `CI`
/// is set, then it panics: CI must run these tests.
pub fn require_root() -> bool {
    let problem = if unsafe { libc::geteuid() } != 0 {
        Some("not running as root".to_string())
    } else if let Err(e) = list_ns() {
        Some(format!("`ip netns` unusable: {e:#}"))
    } else if !["/usr/sbin/nft", "/sbin/nft", "/usr/bin/nft"]
        .iter()
        .any(|p| std::path::Path::new(p).exists())
    {
        Some("nft (nftables) not installed".to_string())
    } else {
        None
    };
    match problem {
        None => true,
        Some(why) if std::env::var_os("CI").is_some() => {
            panic!("namespace tests cannot run ({why}) but CI is set: they must run in CI")
        }
        Some(why) => {
            eprintln!("\n*** SKIP: namespace test bench unavailable: {why} ***\n");
            false
        }
    }
}

/// Path of a workspace binary: `$CYPHONIC_BIN_DIR/<name>` if that variable is set,
/// else the newest of `<target>/debug/<name>` and `<target>/release/<name>`, where
/// `<target>` is `$CARGO_TARGET_DIR` (relative to the workspace) or `<workspace>/target`.
pub fn binary(name: &str) -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("CYPHONIC_BIN_DIR") {
        let p = PathBuf::from(dir).join(name);
        if p.is_file() {
            return Ok(p);
        }
        bail!(
            "{} not found (CYPHONIC_BIN_DIR is set): run `cargo build --workspace --bins` \
             for that directory first, or unset CYPHONIC_BIN_DIR",
            p.display()
        );
    }
    let workspace = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_default();
    let target = match std::env::var_os("CARGO_TARGET_DIR") {
        Some(t) => workspace.join(t),
        None => workspace.join("target"),
    };
    let newest = ["debug", "release"]
        .iter()
        .map(|p| target.join(p).join(name))
        .filter_map(|p| {
            let m = std::fs::metadata(&p).ok()?.modified().ok()?;
            Some((m, p))
        })
        .max();
    match newest {
        Some((_, p)) => Ok(p),
        None => bail!(
            "binary {name:?} not found in {}/{{debug,release}}: run `cargo build --workspace --bins` first \
             (or set CYPHONIC_BIN_DIR)",
            target.display()
        ),
    }
}

/// Removes namespaces whose name starts with `prefix` (which must start with
/// [`NS_PREFIX`]), follows the benches' `cyb-<pid>-…` pattern, and whose owning
/// test process (the `<pid>` in the name) is dead:
/// kills what runs in them (by pid), deletes them and their `/etc/netns` files.
/// Returns how many were removed. Benches of live processes are left alone.
pub fn cleanup_stale(prefix: &str) -> Result<usize> {
    if !prefix.starts_with(NS_PREFIX) {
        bail!("cleanup_stale: prefix {prefix:?} must start with {NS_PREFIX:?}");
    }
    let mut removed = 0;
    for ns in list_ns()? {
        if !ns.starts_with(prefix) {
            continue;
        }
        // Only the test benches' own names (`cyb-<pid>-…`): another tool's
        // namespaces under the same prefix (`bench/dataplane.sh`'s `cyb-dp-<pid>-…`,
        // running beside the tests) are not ours to judge.
        let Some(owner) = ns[NS_PREFIX.len()..]
            .split('-')
            .next()
            .and_then(|p| p.parse::<i32>().ok())
        else {
            continue;
        };
        if !netns::pid_alive(owner) && netns::del_ns(&ns).is_ok() {
            removed += 1;
        }
    }
    Ok(removed)
}
