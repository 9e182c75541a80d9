//! End-to-end tests of paths through every kind of network (issue 5): relayed paths
//! through the TRS (forwarded by Connection ID), route optimization from relayed to
//! direct (SPEC §8) with a TCP flow running across the switch, and the outcome matrix
//! of SPEC §8 for the NAT kinds the bench has.

use std::time::{Duration, Instant};

use cyphonic_tests::overlay::{eventually, fqdn, tcp_transfer, CloudProc, NodeOpts, NodeProc};
use cyphonic_tests::{require_root, Bench, Family, NatKind, DNS_SERVER_V6};

const MIB: u64 = 1024 * 1024;

/// Pairs no direct path can serve go through the TRS, automatically: both behind
/// symmetric NATs, IPv4-only ↔ IPv6-only, and a host behind a firewall that only lets
/// 443 out ↔ a host behind a symmetric NAT. Each carries a checksummed TCP transfer;
/// the symmetric pair keeps trying to go direct and stays relayed.
#[test]
fn relayed_paths_for_symmetric_nats_v4_v6_and_firewalls() -> anyhow::Result<()> {
    if !require_root() {
        return Ok(());
    }
    let mut bench = Bench::new("rel")?;
    bench.dns_server()?;
    let cloud_host = bench.public_host("cloud", Family::Dual)?;
    let sym1 = bench.nat("sym1", NatKind::Symmetric)?;
    let sym2 = bench.nat("sym2", NatKind::Symmetric)?;
    let fw = bench.firewall_443("corp")?;
    let s1 = bench.host_in(&sym1, "s1")?;
    let s2 = bench.host_in(&sym2, "s2")?;
    let f = bench.host_in(&fw, "f")?;
    let v4 = bench.public_host("v4", Family::V4)?;
    let v6 = bench.public_host("v6", Family::V6)?;
    let cloud = CloudProc::start(&cloud_host)?;
    let ns1 = NodeProc::start(&s1, &cloud, "s1")?;
    let _ns2 = NodeProc::start(&s2, &cloud, "s2")?;
    let nf = NodeProc::start(&f, &cloud, "f")?;
    let nv4 = NodeProc::start(&v4, &cloud, "v4")?;
    let _nv6 = NodeProc::start_with(
        &v6,
        &cloud,
        "v6",
        &NodeOpts {
            resolv_conf: format!("nameserver {DNS_SERVER_V6}\n"),
            ..NodeOpts::default()
        },
    )?;
    assert_eq!(
        nf.status()?["cloud"]["connected"],
        true,
        "behind the 443-only firewall: registered"
    );

    // Symmetric NAT ↔ symmetric NAT.
    assert!(ns1.ping(&fqdn("s2"), 3, &[])?);
    tcp_transfer(&s1, &s2, &fqdn("s2"), 5001, 4 * MIB)?;
    assert_eq!(ns1.path_to(&fqdn("s2"))?, "relayed");

    // IPv4-only ↔ IPv6-only: the TRS bridges the families.
    assert!(nv4.ping(&fqdn("v6"), 3, &[])?);
    tcp_transfer(&v4, &v6, &fqdn("v6"), 5002, 4 * MIB)?;
    tcp_transfer(&v6, &v4, &fqdn("v4"), 5003, 4 * MIB)?;
    assert_eq!(nv4.path_to(&fqdn("v6"))?, "relayed");

    // 443-only firewall ↔ symmetric NAT.
    assert!(nf.ping(&fqdn("s1"), 3, &[])?);
    tcp_transfer(&f, &s1, &fqdn("s1"), 5004, 4 * MIB)?;
    assert_eq!(nf.path_to(&fqdn("s1"))?, "relayed");

    // The symmetric pair keeps trying to go direct (attempts at 0.5, 2, 5 s) and fails.
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(
        ns1.path_to(&fqdn("s2"))?,
        "relayed",
        "symmetric ↔ symmetric stays relayed"
    );
    assert!(
        ns1.proc
            .log_text()
            .contains("still relayed: no direct path yet"),
        "the log says why the pair is still relayed"
    );
    Ok(())
}

/// Route optimization (SPEC §8): two hosts behind different endpoint-independent NATs
/// start relayed (NMS's table says 3), hole-punch a direct connection, and move to it
/// make-before-break. A TCP transfer running across the switch completes with
/// identical bytes; `peers` shows the path went from relayed to direct.
#[test]
fn relayed_pair_goes_direct_without_breaking_a_tcp_flow() -> anyhow::Result<()> {
    if !require_root() {
        return Ok(());
    }
    let mut bench = Bench::new("opt")?;
    bench.dns_server()?;
    let cloud_host = bench.public_host("cloud", Family::Dual)?;
    let home1 = bench.nat("home1", NatKind::EndpointIndependent)?;
    let home2 = bench.nat("home2", NatKind::EndpointIndependent)?;
    let h1 = bench.host_in(&home1, "h1")?;
    let h2 = bench.host_in(&home2, "h2")?;
    let cloud = CloudProc::start(&cloud_host)?;
    let n1 = NodeProc::start(&h1, &cloud, "h1")?;
    let n2 = NodeProc::start(&h2, &cloud, "h2")?;

    assert!(n1.ping(&fqdn("h2"), 1, &[])?, "h1 reaches h2");
    let first = n1.path_to(&fqdn("h2"))?;
    let started = Instant::now();
    // Large enough to run for seconds, across the switch.
    tcp_transfer(&h1, &h2, &fqdn("h2"), 5001, 256 * MIB)?;
    let took = started.elapsed();
    assert!(
        eventually(Duration::from_secs(15), || Ok(
            n1.path_to(&fqdn("h2"))? == "direct"
        ))?,
        "the pair went direct"
    );
    let row = n1.peer(&fqdn("h2"))?.expect("tunnel");
    assert_eq!(
        row["switched_from"], "relayed",
        "peers shows the switch: {row}"
    );
    assert_eq!(first, "relayed", "the pair started relayed (code 3)");
    let row2 = n2.peer(&fqdn("h1"))?.expect("tunnel");
    assert_eq!(row2["path"], "direct", "both ends moved: {row2}");
    assert!(
        n1.proc.log_text().contains("path switched"),
        "the switch is logged"
    );
    eprintln!("256 MiB across the relayed→direct switch in {took:?}");
    Ok(())
}

/// SPEC §8's outcome matrix on the bench's NAT kinds: each pair is relayed first
/// (both behind NAT) and then either goes direct or stays relayed. Endpoint-
/// independent NATs (port-preserving, filtering inbound until the inside sends) act as
/// port-restricted cones.
#[test]
fn outcome_matrix_of_nat_kinds() -> anyhow::Result<()> {
    if !require_root() {
        return Ok(());
    }
    let mut bench = Bench::new("mx")?;
    bench.dns_server()?;
    let cloud_host = bench.public_host("cloud", Family::Dual)?;
    let e1 = bench.nat("e1", NatKind::EndpointIndependent)?;
    let e2 = bench.nat("e2", NatKind::EndpointIndependent)?;
    let s1 = bench.nat("s1", NatKind::Symmetric)?;
    let outer = bench.nat("outer", NatKind::EndpointIndependent)?;
    let inner = bench.nat_behind(&outer, "inner", NatKind::EndpointIndependent)?;
    let hosts = [
        bench.host_in(&e1, "x1")?,
        bench.host_in(&e2, "x2")?,
        bench.host_in(&s1, "y1")?,
        bench.host_in(&inner, "z")?,
    ];
    let cloud = CloudProc::start(&cloud_host)?;
    let mut nodes = Vec::new();
    for h in &hosts {
        nodes.push(NodeProc::start(h, &cloud, &h.name)?);
    }
    let node = |n: &str| nodes.iter().find(|x| x.name == n).expect("node");
    // (initiator, responder, expected path after optimization)
    let cells = [
        ("x1", "x2", "direct"),  // EIM ↔ EIM
        ("z", "x2", "direct"),   // double EIM ↔ EIM
        ("x1", "y1", "relayed"), // EIM (port-restricted) ↔ symmetric
    ];
    let mut report = Vec::new();
    for (a, b, want) in cells {
        assert!(node(a).ping(&fqdn(b), 1, &[])?, "{a} reaches {b}");
        let settled = eventually(Duration::from_secs(12), || {
            Ok(node(a).path_to(&fqdn(b))? == want)
        })?;
        if want == "relayed" {
            std::thread::sleep(Duration::from_secs(3));
        }
        let got = node(a).path_to(&fqdn(b))?;
        report.push(format!("{a} -> {b}: {got}"));
        assert!(
            settled && got == want,
            "{a} ↔ {b}: expected {want}, got {got}"
        );
        assert!(
            node(a).ping(&fqdn(b), 2, &[])?,
            "{a} still reaches {b} ({got})"
        );
    }
    eprintln!("outcome matrix: {report:?}");
    Ok(())
}

/// Firewall traversal and fallback: a host behind a firewall that only lets 443 out
/// gets full service. A peer listening on 443 is reached directly; peers listening on
/// 4433 cannot be (NMS still directs them direct: code 1 when the firewalled host
/// initiates, code 2 when the peer does), the direct attempt fails, and the pair is
/// carried by the TRS automatically, with a log line saying why.
#[test]
fn firewalled_host_goes_direct_on_443_and_falls_back_to_the_relay_otherwise() -> anyhow::Result<()>
{
    if !require_root() {
        return Ok(());
    }
    let mut bench = Bench::new("fw")?;
    bench.dns_server()?;
    let cloud_host = bench.public_host("cloud", Family::Dual)?;
    let corp = bench.firewall_443("corp")?;
    let f = bench.host_in(&corp, "f")?;
    let p = bench.public_host("p", Family::V4)?;
    let q = bench.public_host("q", Family::V4)?;
    let r = bench.public_host("r", Family::V4)?;
    let cloud = CloudProc::start(&cloud_host)?;
    let nf = NodeProc::start(&f, &cloud, "f")?;
    let _np = NodeProc::start(&p, &cloud, "p")?;
    let on_4433 = NodeOpts {
        port: 4433,
        ..NodeOpts::default()
    };
    let _nq = NodeProc::start_with(&q, &cloud, "q", &on_4433)?;
    let nr = NodeProc::start_with(&r, &cloud, "r", &on_4433)?;

    assert!(
        nf.ping(&fqdn("p"), 2, &[])?,
        "f reaches p (listening on 443)"
    );
    assert_eq!(nf.path_to(&fqdn("p"))?, "direct");

    assert!(
        nf.ping(&fqdn("q"), 2, &[])?,
        "f reaches q (listening on 4433)"
    );
    assert_eq!(
        nf.path_to(&fqdn("q"))?,
        "relayed",
        "code 1 failed, relayed instead"
    );
    tcp_transfer(&f, &q, &fqdn("q"), 5001, 4 * MIB)?;

    assert!(
        nr.ping(&fqdn("f"), 2, &[])?,
        "r reaches f behind the firewall"
    );
    assert_eq!(
        nr.path_to(&fqdn("f"))?,
        "relayed",
        "code 2 failed, relayed instead"
    );
    for (node, why) in [(&nf, "f"), (&nr, "r")] {
        assert!(
            node.proc
                .log_text()
                .contains("direct path failed: asking NMS for a relayed path"),
            "{why}'s log says why the pair is relayed"
        );
    }
    Ok(())
}

/// `peers.relay_only` keeps a pair that could go direct (public hosts) on the TRS.
/// Set on the initiator: NMS is asked for a relayed path (Flag 34) and no route
/// optimization runs. Set on the responder only: it refuses the direct tunnel and the
/// initiator falls back to the relay. Checksummed TCP crosses the relayed pair, and
/// both stay relayed past the first optimization attempts (0.5 and 2 s).
#[test]
fn relay_only_keeps_public_pairs_on_the_trs() -> anyhow::Result<()> {
    if !require_root() {
        return Ok(());
    }
    let mut bench = Bench::new("ro")?;
    bench.dns_server()?;
    let cloud_host = bench.public_host("cloud", Family::Dual)?;
    let a = bench.public_host("a", Family::Dual)?;
    let b = bench.public_host("b", Family::Dual)?;
    let c = bench.public_host("c", Family::Dual)?;
    let cloud = CloudProc::start(&cloud_host)?;
    let relay_only = NodeOpts {
        relay_only: true,
        ..NodeOpts::default()
    };
    let na = NodeProc::start_with(&a, &cloud, "ra", &relay_only)?;
    let nb = NodeProc::start(&b, &cloud, "rb")?;
    let nc = NodeProc::start(&c, &cloud, "rc")?;

    assert_eq!(na.status()?["relay_only"], true, "status says relay only");
    assert_eq!(nb.status()?["relay_only"], false);
    assert_eq!(na.status()?["offload"], true, "TUN offload is on");
    // The relay-only node initiates.
    assert!(na.ping(&fqdn("rb"), 3, &[])?);
    tcp_transfer(&a, &b, &fqdn("rb"), 5101, 4 * MIB)?;
    assert_eq!(na.path_to(&fqdn("rb"))?, "relayed");
    assert_eq!(nb.path_to(&fqdn("ra"))?, "relayed");
    // The TRS forwards fast-data packets by their CID like QUIC packets.
    let row = nb.peer(&fqdn("ra"))?.expect("rb has a tunnel to ra");
    assert_eq!(row["data_channel"], "fast", "{row}");
    assert!(row["fast_rx_packets"].as_u64().unwrap_or(0) >= 3, "{row}");
    assert!(row["fast_tx_packets"].as_u64().unwrap_or(0) >= 3, "{row}");

    // The relay-only node is the responder of a pair NMS would connect directly.
    assert!(
        eventually(Duration::from_secs(20), || nc.ping(&fqdn("ra"), 1, &[]))?,
        "rc reaches the relay-only node"
    );
    assert_eq!(nc.path_to(&fqdn("ra"))?, "relayed");
    tcp_transfer(&c, &a, &fqdn("ra"), 5102, 4 * MIB)?;
    assert!(
        na.proc.log_text().contains("peers.relay_only"),
        "ra's log says it kept the pair off the direct path"
    );

    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(na.path_to(&fqdn("rb"))?, "relayed", "no route optimization");
    assert_eq!(nc.path_to(&fqdn("ra"))?, "relayed", "no route optimization");
    Ok(())
}

/// A TRS host with several addresses relays from the one it advertises (the address
/// each datagram arrived on), not from whichever the route to the node would pick:
/// the cloud advertises a second IPv6 address of its link, the kernel picks the
/// first as the source toward the nodes, and a relayed pair still carries traffic both ways.
#[test]
fn trs_relays_from_the_address_it_advertises() -> anyhow::Result<()> {
    if !require_root() {
        return Ok(());
    }
    let mut bench = Bench::new("trsaddr")?;
    bench.dns_server()?;
    let mut cloud_host = bench.public_host("cloud", Family::V6)?;
    let primary = cloud_host.ipv6.expect("an IPv6 host");
    let mut seg = primary.segments();
    seg[7] = 3;
    let second = std::net::Ipv6Addr::from(seg);
    // Deprecated (preferred_lft 0): never chosen as a source by the kernel, still
    // an address of the host that datagrams can arrive on and be sent from.
    cloud_host.run_ok(
        "ip",
        [
            "-6",
            "addr",
            "add",
            &format!("{second}/64"),
            "dev",
            "eth0",
            "nodad",
            "preferred_lft",
            "0",
        ],
    )?;
    // Advertise (and so be reached at) the second address only.
    cloud_host.ipv6 = Some(second);
    let a = bench.public_host("a", Family::V6)?;
    let b = bench.public_host("b", Family::V6)?;
    let route = cloud_host.run_ok("ip", ["-6", "route", "get", &a.ipv6.unwrap().to_string()])?;
    assert!(
        route.contains(&format!("src {primary}")),
        "the kernel would send from the first address: {route}"
    );
    let cloud = CloudProc::start(&cloud_host)?;
    let opts = NodeOpts {
        relay_only: true,
        resolv_conf: format!("nameserver {DNS_SERVER_V6}\n"),
        ..NodeOpts::default()
    };
    let na = NodeProc::start_with(&a, &cloud, "ta", &opts)?;
    let _nb = NodeProc::start_with(&b, &cloud, "tb", &opts)?;
    assert!(
        eventually(Duration::from_secs(15), || na.ping(&fqdn("tb"), 2, &[]))?,
        "the relayed pair carries pings"
    );
    assert_eq!(na.path_to(&fqdn("tb"))?, "relayed");
    tcp_transfer(&a, &b, &fqdn("tb"), 5103, 4 * MIB)?;
    Ok(())
}
