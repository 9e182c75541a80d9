//! The bench: an "Internet" core namespace plus public hosts, NAT routers, a
//! port-443-only firewall, LAN hosts and an upstream DNS server, all torn down on drop.
//! See the crate documentation for the topology and the address plan.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::host::{Host, Shared};
use crate::netns::{self, ip_n, NS_PREFIX};

/// Public /30 links to the core: link `k` is 203.0.113.4k/30 and 2001:db8:(k+1)::/64.
const PUBLIC_LINKS: u32 = 64;
/// The public link reserved for [`Bench::dns_server`].
const DNS_LINK: u32 = PUBLIC_LINKS - 1;
/// Router WAN /30 links to the core: link `w` is 198.51.100.4w/30.
const WAN_LINKS: u32 = 64;
/// LAN /28 subnets: LAN `j` is 192.0.2.16j/28.
const LANS: u32 = 16;
/// Last host octet offset inside a /28 (.1 is the router, .2 ..= .14 hosts).
const LAN_LAST_HOST: u32 = 14;

/// IPv4 address of the bench's DNS server ([`Bench::dns_server`]).
pub const DNS_SERVER_V4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 4 * DNS_LINK as u8 + 2);
/// IPv6 address of the bench's DNS server ([`Bench::dns_server`]).
pub const DNS_SERVER_V6: Ipv6Addr =
    Ipv6Addr::new(0x2001, 0xdb8, DNS_LINK as u16 + 1, 0, 0, 0, 0, 2);
/// A name the bench's DNS server always answers (A and AAAA below).
pub const DNS_TEST_NAME: &str = "www.example.test";
/// The A record of [`DNS_TEST_NAME`].
pub const DNS_TEST_V4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 80);
/// The AAAA record of [`DNS_TEST_NAME`].
pub const DNS_TEST_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x80, 0, 0, 0, 0, 0x80);

/// Address families of a public host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// IPv4 only.
    V4,
    /// IPv6 only (no IPv4 address, no IPv4 route).
    V6,
    /// Both.
    Dual,
}

impl Family {
    fn v4(self) -> bool {
        self != Family::V6
    }
    fn v6(self) -> bool {
        self != Family::V4
    }
}

/// NAT behaviour of a router made by [`Bench::nat`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NatKind {
    /// Endpoint-independent mapping: nftables `masquerade` (the kernel keeps the
    /// source port when the resulting tuple is unique, so one local socket gets the
    /// same public ip:port towards every destination).
    EndpointIndependent,
    /// Address-and-port-dependent ("symmetric") mapping: `masquerade random` (the
    /// port is derived from a keyed hash over addresses and destination port, so each
    /// destination sees a different mapped port).
    Symmetric,
}

/// What kind of router a [`Net`] has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NetKind {
    /// A NAT router.
    Nat(NatKind),
    /// A firewall letting out only TCP/UDP to port 443 (and DNS to the bench's DNS
    /// server), masquerading like [`NatKind::EndpointIndependent`].
    Firewall443,
}

/// Where [`Bench::move_host`] re-attaches a host.
#[derive(Debug, Clone, Copy)]
pub enum Attach<'a> {
    /// Directly on the core, with public addresses of these families.
    Core(Family),
    /// On the LAN of this NAT/firewall network.
    Net(&'a Net),
}

/// A routed network: one router namespace with a WAN uplink and a LAN bridge.
#[derive(Debug, Clone)]
pub struct Net {
    /// Name given at creation.
    pub name: String,
    /// The router's namespace.
    pub ns: String,
    /// Router kind.
    pub kind: NetKind,
    /// The router's WAN address: public (198.51.100.x) for a router on the core, an
    /// address of the outer LAN for [`Bench::nat_behind`].
    pub wan_v4: Ipv4Addr,
    /// The LAN subnet (a /28 of 192.0.2.0/24).
    pub lan_v4: Ipv4Addr,
    /// The LAN prefix length (28).
    pub lan_prefix_len: u8,
    /// The router's LAN address, the hosts' default gateway.
    pub gateway_v4: Ipv4Addr,
    idx: usize,
}

/// Internal per-net allocation state.
#[derive(Debug)]
struct NetState {
    ns: String,
    lan_base: u32,
    next_host: u32,
    next_port: u32,
}

/// A small internet of network namespaces; everything is removed when it is dropped.
#[derive(Debug)]
pub struct Bench {
    prefix: String,
    core: String,
    shared: Arc<Shared>,
    /// Creation order; deleted in reverse.
    namespaces: Vec<String>,
    names: HashSet<String>,
    next_public: u32,
    next_wan: u32,
    next_lan: u32,
    nets: Vec<NetState>,
    dns: bool,
    torn_down: bool,
}

static BENCH_COUNTER: AtomicU32 = AtomicU32::new(0);

fn sanitize(tag: &str, max: usize) -> String {
    let s: String = tag
        .chars()
        .map(|c| c.to_ascii_lowercase())
        .filter(|c| c.is_ascii_alphanumeric())
        .take(max)
        .collect();
    if s.is_empty() {
        "b".into()
    } else {
        s
    }
}

fn lan_addr(lan_base: u32, off: u32) -> Ipv4Addr {
    Ipv4Addr::new(192, 0, 2, (16 * lan_base + off) as u8)
}

impl Bench {
    /// Creates the core namespace (a dual-stack router, `<prefix>-core`). `tag` (its
    /// alphanumerics, up to 12) goes into the names, e.g. the test name. Namespaces
    /// left by dead processes are removed first ([`crate::cleanup_stale`]).
    pub fn new(tag: &str) -> Result<Bench> {
        let removed = crate::cleanup_stale(NS_PREFIX)?;
        if removed > 0 {
            eprintln!("bench: removed {removed} stale namespace(s) of dead runs");
        }
        let n = BENCH_COUNTER.fetch_add(1, Ordering::Relaxed);
        let prefix = format!(
            "{NS_PREFIX}{}-{n}-{}",
            std::process::id(),
            sanitize(tag, 12)
        );
        let dir = std::env::temp_dir().join(&prefix);
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("creating bench dir {}", dir.display()))?;
        let mut bench = Bench {
            core: format!("{prefix}-core"),
            prefix,
            shared: Arc::new(Shared {
                dir,
                procs: Arc::new(Mutex::new(Vec::new())),
            }),
            namespaces: Vec::new(),
            names: HashSet::from(["core".to_string()]),
            next_public: 0,
            next_wan: 0,
            next_lan: 0,
            nets: Vec::new(),
            dns: false,
            torn_down: false,
        };
        let core = bench.core.clone();
        bench.add_ns(&core, true)?;
        Ok(bench)
    }

    /// The name prefix of every namespace of this bench (`cyb-<pid>-<n>-<tag>`).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The core ("Internet") namespace.
    pub fn core_ns(&self) -> &str {
        &self.core
    }

    /// All namespaces of this bench, in creation order.
    pub fn namespaces(&self) -> &[String] {
        &self.namespaces
    }

    /// A directory for logs and state, removed at teardown unless the test panicked
    /// (or `CYPHONIC_KEEP_BENCH` is set); then its path is printed.
    pub fn bench_dir(&self) -> &Path {
        &self.shared.dir
    }

    fn add_ns(&mut self, ns: &str, router: bool) -> Result<()> {
        // Recorded first so a half-configured namespace is removed too.
        self.namespaces.push(ns.to_string());
        netns::add_ns(ns, router)
    }

    fn claim_name(&mut self, name: &str) -> Result<String> {
        let ok = !name.is_empty()
            && name.len() <= 24
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if !ok {
            bail!("bad bench node name {name:?}: use 1-24 of [a-z0-9-]");
        }
        if !self.names.insert(name.to_string()) {
            bail!("bench node name {name:?} already used");
        }
        Ok(format!("{}-{name}", self.prefix))
    }

    fn host_handle(&self, name: &str, ns: String) -> Host {
        Host {
            name: name.into(),
            ns,
            ipv4: None,
            ipv6: None,
            shared: self.shared.clone(),
        }
    }

    /// Connects `ns` (interface `eth0`) to the core on public link `k`.
    fn attach_core_link(
        &mut self,
        ns: &str,
        family: Family,
        k: u32,
    ) -> Result<(Option<Ipv4Addr>, Option<Ipv6Addr>)> {
        let core_if = format!("p{k}");
        netns::veth(ns, "eth0", &self.core, &core_if)?;
        let mut v4 = None;
        let mut v6 = None;
        if family.v4() {
            let gw = Ipv4Addr::new(203, 0, 113, (4 * k + 1) as u8);
            let me = Ipv4Addr::new(203, 0, 113, (4 * k + 2) as u8);
            self.uplink(ns, &core_if, gw.into(), me.into(), 30)?;
            v4 = Some(me);
        }
        if family.v6() {
            let gw = Ipv6Addr::new(0x2001, 0xdb8, (k + 1) as u16, 0, 0, 0, 0, 1);
            let me = Ipv6Addr::new(0x2001, 0xdb8, (k + 1) as u16, 0, 0, 0, 0, 2);
            self.uplink(ns, &core_if, gw.into(), me.into(), 64)?;
            v6 = Some(me);
        }
        Ok((v4, v6))
    }

    /// Address one family of a host's uplink: the core's side `gw`, the host's `me`,
    /// both `/len`, and the host's default route via `gw`.
    fn uplink(&self, ns: &str, core_if: &str, gw: IpAddr, me: IpAddr, len: u8) -> Result<()> {
        netns::addr_add(&self.core, core_if, &format!("{gw}/{len}"))?;
        netns::addr_add(ns, "eth0", &format!("{me}/{len}"))?;
        let family = if gw.is_ipv6() { "-6" } else { "-4" };
        let gw = gw.to_string();
        ip_n(
            ns,
            &[family, "route", "add", "default", "via", &gw, "dev", "eth0"],
        )?;
        Ok(())
    }

    fn attach_core(
        &mut self,
        ns: &str,
        family: Family,
    ) -> Result<(Option<Ipv4Addr>, Option<Ipv6Addr>)> {
        let k = self.next_public;
        if k >= DNS_LINK {
            bail!("bench out of public links ({DNS_LINK} per bench)");
        }
        self.next_public += 1;
        self.attach_core_link(ns, family, k)
    }

    /// Connects `ns` (interface `ifname`) to the LAN of net `idx`; returns its address.
    fn attach_lan(&mut self, ns: &str, ifname: &str, idx: usize) -> Result<Ipv4Addr> {
        let st = &mut self.nets[idx];
        if st.next_host > LAN_LAST_HOST {
            bail!(
                "LAN of {} is full ({} hosts per LAN)",
                st.ns,
                LAN_LAST_HOST - 1
            );
        }
        let me = lan_addr(st.lan_base, st.next_host);
        let gw = lan_addr(st.lan_base, 1);
        let port = format!("l{}", st.next_port);
        st.next_host += 1;
        st.next_port += 1;
        let router = st.ns.clone();
        netns::veth(ns, ifname, &router, &port)?;
        ip_n(&router, &["link", "set", &port, "master", "lan"])?;
        netns::addr_add(ns, ifname, &format!("{me}/28"))?;
        ip_n(
            ns,
            &[
                "route",
                "add",
                "default",
                "via",
                &gw.to_string(),
                "dev",
                ifname,
            ],
        )?;
        Ok(me)
    }

    /// A public host on the core with addresses of `family` (see the address plan).
    pub fn public_host(&mut self, name: &str, family: Family) -> Result<Host> {
        let ns = self.claim_name(name)?;
        self.add_ns(&ns, false)?;
        let (v4, v6) = self
            .attach_core(&ns, family)
            .with_context(|| format!("attaching public host {name}"))?;
        let mut h = self.host_handle(name, ns);
        h.ipv4 = v4;
        h.ipv6 = v6;
        Ok(h)
    }

    fn net_handle(&self, idx: usize, name: &str, kind: NetKind, wan_v4: Ipv4Addr) -> Net {
        let st = &self.nets[idx];
        Net {
            name: name.into(),
            ns: st.ns.clone(),
            kind,
            wan_v4,
            lan_v4: lan_addr(st.lan_base, 0),
            lan_prefix_len: 28,
            gateway_v4: lan_addr(st.lan_base, 1),
            idx,
        }
    }

    /// Creates a router namespace with its LAN bridge and rules; `uplink` attaches its
    /// `wan` interface and returns the WAN address.
    fn router(&mut self, name: &str, kind: NetKind, outer: Option<&Net>) -> Result<Net> {
        let ns = self.claim_name(name)?;
        if self.next_lan >= LANS {
            bail!("bench out of LAN subnets ({LANS} per bench)");
        }
        let lan_base = self.next_lan;
        self.next_lan += 1;
        self.add_ns(&ns, true)?;
        let wan_v4 = match outer {
            None => {
                let w = self.next_wan;
                if w >= WAN_LINKS {
                    bail!("bench out of WAN links ({WAN_LINKS} per bench)");
                }
                self.next_wan += 1;
                let core_if = format!("w{w}");
                netns::veth(&ns, "wan", &self.core, &core_if)?;
                let gw = Ipv4Addr::new(198, 51, 100, (4 * w + 1) as u8);
                let me = Ipv4Addr::new(198, 51, 100, (4 * w + 2) as u8);
                netns::addr_add(&self.core, &core_if, &format!("{gw}/30"))?;
                netns::addr_add(&ns, "wan", &format!("{me}/30"))?;
                ip_n(
                    &ns,
                    &[
                        "route",
                        "add",
                        "default",
                        "via",
                        &gw.to_string(),
                        "dev",
                        "wan",
                    ],
                )?;
                me
            }
            Some(outer) => {
                self.check_net(outer)?;
                self.attach_lan(&ns, "wan", outer.idx)?
            }
        };
        let gw = lan_addr(lan_base, 1);
        ip_n(
            &ns,
            &["link", "add", "lan", "type", "bridge", "forward_delay", "0"],
        )?;
        netns::addr_add(&ns, "lan", &format!("{gw}/28"))?;
        ip_n(&ns, &["link", "set", "lan", "up"])?;
        let lan = format!("{}/28", lan_addr(lan_base, 0));
        netns::nft(&ns, &router_rules(kind, &lan))?;
        self.nets.push(NetState {
            ns,
            lan_base,
            next_host: 2,
            next_port: 0,
        });
        Ok(self.net_handle(self.nets.len() - 1, name, kind, wan_v4))
    }

    /// A NAT router on the core: WAN 198.51.100.x, LAN a 192.0.2.0/28-sized subnet.
    /// Hosts behind it ([`Bench::host_in`]) are IPv4-only.
    pub fn nat(&mut self, name: &str, kind: NatKind) -> Result<Net> {
        self.router(name, NetKind::Nat(kind), None)
            .with_context(|| format!("creating NAT {name}"))
    }

    /// A NAT router whose WAN side is a host on `outer`'s LAN (double NAT).
    pub fn nat_behind(&mut self, outer: &Net, name: &str, kind: NatKind) -> Result<Net> {
        self.router(name, NetKind::Nat(kind), Some(outer))
            .with_context(|| format!("creating NAT {name} behind {}", outer.name))
    }

    /// A firewall router on the core that lets out only TCP/UDP to destination port
    /// 443, plus DNS (port 53) to [`DNS_SERVER_V4`] only; replies come back through
    /// `ct state established,related`. It also masquerades (endpoint-independent),
    /// like the corporate/hotel networks it models, so its LAN can stay private.
    pub fn firewall_443(&mut self, name: &str) -> Result<Net> {
        self.router(name, NetKind::Firewall443, None)
            .with_context(|| format!("creating firewall {name}"))
    }

    fn check_net(&self, net: &Net) -> Result<()> {
        match self.nets.get(net.idx) {
            Some(st) if st.ns == net.ns => Ok(()),
            _ => bail!(
                "network {} does not belong to bench {}",
                net.name,
                self.prefix
            ),
        }
    }

    /// A host on `net`'s LAN (IPv4 only), default route via the router.
    pub fn host_in(&mut self, net: &Net, name: &str) -> Result<Host> {
        self.check_net(net)?;
        let ns = self.claim_name(name)?;
        self.add_ns(&ns, false)?;
        let v4 = self
            .attach_lan(&ns, "eth0", net.idx)
            .with_context(|| format!("attaching host {name} to {}", net.name))?;
        let mut h = self.host_handle(name, ns);
        h.ipv4 = Some(v4);
        Ok(h)
    }

    /// Re-attaches a host to another network while its processes keep running: its
    /// uplink `eth0` is deleted (with its addresses and routes) and a new `eth0` with
    /// a new address and default route is created. `host`'s addresses are updated.
    pub fn move_host(&mut self, host: &mut Host, to: Attach<'_>) -> Result<()> {
        if !self.namespaces.contains(&host.ns) || host.ns == self.core {
            bail!(
                "host {} does not belong to bench {}",
                host.name,
                self.prefix
            );
        }
        if self.nets.iter().any(|n| n.ns == host.ns) {
            bail!("{} is a router, not a host", host.name);
        }
        ip_n(&host.ns, &["link", "del", "eth0"])
            .with_context(|| format!("detaching host {}", host.name))?;
        host.ipv4 = None;
        host.ipv6 = None;
        match to {
            Attach::Core(family) => {
                let (v4, v6) = self.attach_core(&host.ns, family)?;
                host.ipv4 = v4;
                host.ipv6 = v6;
            }
            Attach::Net(net) => {
                self.check_net(net)?;
                host.ipv4 = Some(self.attach_lan(&host.ns, "eth0", net.idx)?);
            }
        }
        Ok(())
    }

    /// A dual-stack public host `dns` at [`DNS_SERVER_V4`]/[`DNS_SERVER_V6`] running
    /// dnsmasq as an ordinary upstream resolver that answers [`DNS_TEST_NAME`] (and
    /// nothing else: no upstream, no /etc/hosts). Its log is `dnsmasq.log`.
    pub fn dns_server(&mut self) -> Result<Host> {
        self.dns_server_with(&[])
    }

    /// Like [`Bench::dns_server`], with extra `(name, address)` records.
    pub fn dns_server_with(&mut self, records: &[(&str, IpAddr)]) -> Result<Host> {
        if self.dns {
            bail!("bench {} already has a DNS server", self.prefix);
        }
        let dnsmasq = ["/usr/sbin/dnsmasq", "/usr/bin/dnsmasq", "/sbin/dnsmasq"]
            .into_iter()
            .map(PathBuf::from)
            .find(|p| p.exists())
            .context("dnsmasq not installed (Debian: apt-get install dnsmasq-base)")?;
        let ns = self.claim_name("dns")?;
        self.add_ns(&ns, false)?;
        let (v4, v6) = self.attach_core_link(&ns, Family::Dual, DNS_LINK)?;
        self.dns = true;
        let mut h = self.host_handle("dns", ns);
        h.ipv4 = v4;
        h.ipv6 = v6;
        let mut args: Vec<String> = [
            "--keep-in-foreground",
            "--no-resolv",
            "--no-hosts",
            "--no-poll",
            "--conf-file=/dev/null",
            "--pid-file=",
            "--user=root",
            "--bind-interfaces",
            "--log-queries",
            "--log-facility=-",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.push(format!("--listen-address={DNS_SERVER_V4}"));
        args.push(format!("--listen-address={DNS_SERVER_V6}"));
        args.push(format!("--address=/{DNS_TEST_NAME}/{DNS_TEST_V4}"));
        args.push(format!("--address=/{DNS_TEST_NAME}/{DNS_TEST_V6}"));
        for (name, addr) in records {
            args.push(format!("--host-record={name},{addr}"));
        }
        let p = h.spawn(&dnsmasq, &args, "dnsmasq.log")?;
        p.wait_for_log("started", Duration::from_secs(10))
            .context("dnsmasq did not start")?;
        Ok(h)
    }

    /// Stops every process, deletes every namespace, removes the bench directory
    /// (kept when panicking). Called by `Drop`; explicit calls report errors.
    pub fn teardown(&mut self) -> Result<()> {
        if self.torn_down {
            return Ok(());
        }
        self.torn_down = true;
        let procs: Vec<_> = self
            .shared
            .procs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        for p in &procs {
            p.terminate();
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut first_err: Option<anyhow::Error> = None;
        for p in &procs {
            let grace = deadline.saturating_duration_since(Instant::now());
            if let Err(e) = p.stop(grace) {
                first_err.get_or_insert(e);
            }
        }
        for ns in self.namespaces.iter().rev() {
            if let Err(e) = netns::del_ns(ns) {
                first_err.get_or_insert(e.context(format!("deleting namespace {ns}")));
            }
        }
        let keep = std::thread::panicking() || std::env::var_os("CYPHONIC_KEEP_BENCH").is_some();
        if keep {
            eprintln!(
                "bench {}: logs kept in {}",
                self.prefix,
                self.shared.dir.display()
            );
        } else {
            let _ = std::fs::remove_dir_all(&self.shared.dir);
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

impl Drop for Bench {
    fn drop(&mut self) {
        if let Err(e) = self.teardown() {
            eprintln!("bench {}: teardown error: {e:#}", self.prefix);
        }
    }
}

/// nftables rules of a router with WAN `wan` and LAN bridge `lan`.
///
/// The input rule matters for NAT traversal: a new inbound UDP/TCP packet to the
/// router's own WAN address (e.g. a peer's hole-punching packet arriving before ours
/// went out) is dropped *before conntrack confirms it*, so it leaves no entry that
/// would clash with, and re-map, the mapping our outbound packet needs a moment later.
fn router_rules(kind: NetKind, lan: &str) -> String {
    // A symmetric NAT maps every destination to a fresh random port from the whole
    // unprivileged range, as a carrier-grade NAT does. (Without `to`, Linux keeps a
    // privileged source port such as 443 among 1-511, so two destinations got the
    // same port about once in 511 mappings, and the pair then went direct.)
    let masq = match kind {
        NetKind::Nat(NatKind::Symmetric) => format!(
            "oifname \"wan\" ip saddr {lan} meta l4proto {{ tcp, udp }} masquerade to :1024-65535 random\n    \
             oifname \"wan\" ip saddr {lan} masquerade random"
        ),
        NetKind::Nat(NatKind::EndpointIndependent) | NetKind::Firewall443 => {
            format!("oifname \"wan\" ip saddr {lan} masquerade")
        }
    };
    let forward = match kind {
        NetKind::Nat(_) => "policy accept;\n\
             ct state established,related accept\n\
             iifname \"wan\" drop"
            .to_string(),
        NetKind::Firewall443 => format!(
            "policy drop;\n\
             ct state established,related accept\n\
             iifname \"lan\" meta l4proto {{ tcp, udp }} th dport 443 accept\n\
             iifname \"lan\" ip daddr {DNS_SERVER_V4} meta l4proto {{ tcp, udp }} th dport 53 accept"
        ),
    };
    format!(
        "table ip cyb_nat {{
  chain postrouting {{
    type nat hook postrouting priority srcnat; policy accept;
    {masq}
  }}
}}
table inet cyb_filter {{
  chain input {{
    type filter hook input priority filter; policy accept;
    iifname \"wan\" ct state new meta l4proto {{ tcp, udp }} drop
  }}
  chain forward {{
    type filter hook forward priority filter; {forward}
  }}
}}
"
    )
}
