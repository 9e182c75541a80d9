//! `node.toml`: the configuration of one node daemon. `deploy/node.example.toml`
//! documents every option; the smallest useful file names the cloud, the CA
//! certificate and either existing credentials or an enrollment token.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use cyphonic_proto::Fqdn;
use serde::Deserialize;

use crate::dns::host::HostDnsMode;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeConfig {
    /// Where the node keeps its key, certificate and DNS backup. Created if missing.
    pub state_dir: PathBuf,
    /// The cloud (AS) address, `ip:port` (`[v6]:port` for IPv6).
    pub cloud: Option<SocketAddr>,
    /// The deployment's CA certificate (PEM): the only trust anchor.
    pub ca_cert: Option<PathBuf>,
    /// The overlay domain (FQDN = `<device>.<domain>`).
    pub overlay_domain: Fqdn,
    /// This node's device name as added with `cyphonic-cloud device add`.
    pub device: Option<String>,
    /// One-time enrollment token (first start only; ignored once credentials exist).
    pub enrollment_token: Option<String>,
    /// Certificate and key; default `<state_dir>/node.crt` and `node.key`.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// The one UDP socket for every connection (SPEC §3). Default `[::]:443`.
    pub listen: SocketAddr,
    pub tun: TunConfig,
    pub dns: DnsSettings,
    pub peers: PeerSettings,
    /// The operator CLI's socket.
    pub control_socket: PathBuf,
    /// Threads of the daemon's async runtime; 0: one per CPU. One (the default)
    /// measured fastest for a flow on a small host (BENCHMARKS.md): no hand-offs
    /// between threads on the packet path. A gateway carrying many busy peers on a
    /// large host may do better with more. The fast path's thread (small packets on
    /// fast data channels) is separate and always one.
    pub threads: usize,
    /// Linux scheduling policy of the fast path's thread: `auto` (the default),
    /// `batch` or `normal`. Under `batch` the thread, woken by a packet, does not
    /// preempt the task that woke it (the application writing to the TUN, or a
    /// peer's daemon on the same host); it runs once that task sleeps, on the same
    /// CPU, so a packet's hand-offs stay on one warm CPU instead of waking an idle
    /// (on a VM: halted) one. `normal` preempts, as every thread does by default;
    /// on a host whose CPUs are all busy it gets packets through sooner. `auto` is
    /// `batch` while the host has CPU to spare and `normal` under CPU pressure
    /// (Linux PSI). See the `cyphonic-sched` crate and BENCHMARKS.md.
    pub fast_thread_policy: crate::fastdata::FastThreadPolicy,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TunConfig {
    /// Interface name.
    pub name: String,
    /// Overlay MTU. A full-size packet must fit one QUIC DATAGRAM on a path whose
    /// UDP payload is `path_mtu` (see [`PeerSettings::path_mtu`]); the daemon lowers a
    /// larger value and says so.
    pub mtu: u16,
    /// virtio-net header offload: TCP super-packets in (TSO), coalesced packets out
    /// (GRO). Falls back to a plain device when the kernel refuses it.
    pub offload: bool,
    /// The deployment's virtual IPv4 prefix (routed into the TUN). The IPv6 overlay
    /// prefix is the /48 of the node's own virtual IPv6 address.
    pub ipv4_prefix: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DnsSettings {
    /// Run the overlay resolver.
    pub enable: bool,
    /// Where it listens (UDP and TCP). Loopback only: overlay peers cannot use it.
    pub listen: SocketAddr,
    /// How the host's resolver is pointed at it: "auto", "resolv-conf",
    /// "systemd-resolved" or "off".
    pub host_config: HostDnsMode,
    /// The host's resolver configuration (read for upstreams, rewritten in
    /// resolv-conf mode and restored on exit).
    pub resolv_conf: PathBuf,
    /// Upstream resolvers for non-overlay names. Empty: the nameservers in
    /// `resolv_conf` at start-up.
    pub upstreams: Vec<SocketAddr>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PeerSettings {
    /// UDP payload size assumed for peer paths before MTU discovery (1452 fits a
    /// 1500-byte IPv6 path). Black-hole detection falls back to 1200.
    pub path_mtu: u16,
    /// Close a peer connection that carried no packet for this long.
    pub idle_secs: u64,
    /// QUIC keep-alive on cloud and peer connections (keeps NAT mappings open).
    pub keep_alive_secs: u64,
    /// Give up setting up a path after this long.
    pub setup_timeout_secs: u64,
    /// Carry every tunnel through the TRS, never direct (SPEC §8 Flag 34 on every
    /// Direction Request). For paths where direct UDP is forbidden by policy, and for
    /// measuring the relay (bench/dataplane.sh).
    pub relay_only: bool,
    /// Congestion controller of the tunnels' QUIC connections.
    pub congestion: crate::endpoint::Congestion,
    /// Offer peers the fast data channel (docs/protocol-decisions.md): tunnel
    /// packets sealed with keys exported from the tunnel's TLS session, sent without
    /// QUIC's per-packet work. Used when both ends offer it; `false` keeps every
    /// packet in QUIC DATAGRAMs.
    pub fast_data: bool,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            state_dir: PathBuf::from("/var/lib/cyphonic-node"),
            cloud: None,
            ca_cert: None,
            overlay_domain: Fqdn::new("cyphonic.internal").expect("valid default domain"),
            device: None,
            enrollment_token: None,
            cert: None,
            key: None,
            listen: SocketAddr::new(IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED), 443),
            tun: TunConfig::default(),
            dns: DnsSettings::default(),
            peers: PeerSettings::default(),
            control_socket: PathBuf::from("/run/cyphonic-node.sock"),
            threads: 1,
            fast_thread_policy: crate::fastdata::FastThreadPolicy::default(),
        }
    }
}

impl Default for TunConfig {
    fn default() -> Self {
        TunConfig {
            name: "cyphonic0".into(),
            mtu: 1360,
            offload: true,
            ipv4_prefix: "100.64.0.0/10".into(),
        }
    }
}

impl Default for DnsSettings {
    fn default() -> Self {
        DnsSettings {
            enable: true,
            listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 88)), 53),
            host_config: HostDnsMode::Auto,
            resolv_conf: PathBuf::from("/etc/resolv.conf"),
            upstreams: Vec::new(),
        }
    }
}

impl Default for PeerSettings {
    fn default() -> Self {
        PeerSettings {
            path_mtu: 1452,
            idle_secs: 300,
            keep_alive_secs: 10,
            setup_timeout_secs: 10,
            relay_only: false,
            congestion: crate::endpoint::Congestion::default(),
            fast_data: true,
        }
    }
}

impl PeerSettings {
    pub fn keep_alive(&self) -> Duration {
        Duration::from_secs(self.keep_alive_secs.max(1))
    }
    pub fn idle(&self) -> Duration {
        Duration::from_secs(self.idle_secs.max(1))
    }
    pub fn setup_timeout(&self) -> Duration {
        Duration::from_secs(self.setup_timeout_secs.max(1))
    }
}

impl NodeConfig {
    pub fn load(path: &Path) -> Result<NodeConfig> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read node configuration {}", path.display()))?;
        let cfg: NodeConfig = toml::from_str(&text).with_context(|| {
            format!(
                "{} is not a valid node configuration (see deploy/node.example.toml)",
                path.display()
            )
        })?;
        Ok(cfg)
    }

    /// Check what start-up needs, with messages that say what to set.
    pub fn validate(&self) -> Result<()> {
        if self.cloud.is_none() {
            bail!("`cloud` is not set: give the AS address, e.g. cloud = \"203.0.113.10:443\"");
        }
        if self.ca_cert.is_none() {
            bail!(
                "`ca_cert` is not set: copy the deployment's CA certificate (state_dir/ca/ca.crt \
                 on the cloud host) here and name it"
            );
        }
        if !self.cert_path().exists() && self.enrollment_token.is_none() {
            bail!(
                "no certificate at {} and no `enrollment_token`: run `cyphonic-cloud device add \
                 <name>` on the cloud host and put the token and the name (`device`) in the \
                 configuration",
                self.cert_path().display()
            );
        }
        if self.enrollment_token.is_some() && self.device.is_none() {
            bail!("`enrollment_token` needs `device` (the name given to `device add`)");
        }
        if self.tun.name.is_empty() || self.tun.name.len() > 15 {
            bail!("`tun.name` must be 1 to 15 characters");
        }
        if self.tun.mtu < 1280 {
            bail!("`tun.mtu` must be at least 1280 (the IPv6 minimum)");
        }
        if !(1200..=9000).contains(&self.peers.path_mtu) {
            bail!("`peers.path_mtu` must be between 1200 and 9000");
        }
        Ok(())
    }

    pub fn cert_path(&self) -> PathBuf {
        self.cert
            .clone()
            .unwrap_or_else(|| self.state_dir.join("node.crt"))
    }

    pub fn key_path(&self) -> PathBuf {
        self.key
            .clone()
            .unwrap_or_else(|| self.state_dir.join("node.key"))
    }

    pub fn dns_backup_path(&self) -> PathBuf {
        self.state_dir.join("resolv.conf.cyphonic-backup")
    }
}

/// An IPv4 prefix `a.b.c.d/len`.
pub fn parse_v4_prefix(s: &str) -> Result<(Ipv4Addr, u8)> {
    let (a, l) = s
        .split_once('/')
        .with_context(|| format!("{s:?} is not a prefix like 100.64.0.0/10"))?;
    let addr: Ipv4Addr = a
        .parse()
        .with_context(|| format!("{a:?} is not an IPv4 address"))?;
    let len: u8 = l
        .parse()
        .ok()
        .filter(|l| *l <= 32)
        .with_context(|| format!("{l:?} is not a prefix length (0-32)"))?;
    Ok((addr, len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_is_defaults() {
        let c: NodeConfig = toml::from_str("").unwrap();
        assert_eq!(c.listen.port(), 443);
        assert_eq!(c.tun.mtu, 1360);
        assert!(c.validate().is_err(), "cloud is required");
    }

    #[test]
    fn the_example_config_is_valid() {
        let text = include_str!("../../deploy/node.example.toml");
        let c: NodeConfig = toml::from_str(text).expect("deploy/node.example.toml parses");
        assert_eq!(c.cloud, Some("203.0.113.10:443".parse().unwrap()));
        assert_eq!(c.dns.listen.port(), 53);
        let d = NodeConfig::default();
        assert_eq!(c.tun.mtu, d.tun.mtu, "the example shows the defaults");
        assert_eq!(c.peers.idle_secs, d.peers.idle_secs);
        assert_eq!(c.listen, d.listen);
        assert_eq!(c.fast_thread_policy, d.fast_thread_policy);
    }

    #[test]
    fn fast_thread_policy_parses_and_bad_values_are_refused_with_the_choices() {
        let c: NodeConfig = toml::from_str("fast_thread_policy = \"normal\"").unwrap();
        assert_eq!(
            c.fast_thread_policy,
            crate::fastdata::FastThreadPolicy::Normal
        );
        let e = toml::from_str::<NodeConfig>("fast_thread_policy = \"fifo\"")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("auto") && e.contains("batch") && e.contains("normal"),
            "{e}"
        );
    }

    #[test]
    fn unknown_keys_are_refused() {
        assert!(toml::from_str::<NodeConfig>("clowd = \"1.2.3.4:443\"").is_err());
    }

    #[test]
    fn prefix_parsing() {
        assert_eq!(
            parse_v4_prefix("100.64.0.0/10").unwrap(),
            (Ipv4Addr::new(100, 64, 0, 0), 10)
        );
        assert!(parse_v4_prefix("100.64.0.0").is_err());
        assert!(parse_v4_prefix("100.64.0.0/33").is_err());
        assert!(parse_v4_prefix("x/8").is_err());
    }
}
