//! Mobility (SPEC §6, issue 6): overlay flows survive a change of real address on
//! either end. In every case a long checksummed TCP transfer and a ping stream run
//! across the move; the transfer must complete with identical bytes and no reset, and
//! the ping stream must come back.

use std::time::Duration;

use cyphonic_tests::overlay::{fqdn, unix_now, CloudProc, NodeOpts, NodeProc, PingStream, TcpFlow};
use cyphonic_tests::{require_root, Attach, Bench, Family, Host, NatKind};

const MIB: u64 = 1024 * 1024;
/// Generous for CI (2 cores, debug build); the benchmark reports the real figures.
const MAX_INTERRUPTION: f64 = 5.0;

/// Run a flow from `sender` to `receiver` (by name) and a ping stream (every 20 ms)
/// from `pinger` to `target`, call `mv` a moment into it, and check both survive.
/// Returns the interruption: the longest gap in ping replies after the move began.
fn across_the_move(
    case: &str,
    sender: &Host,
    receiver: &Host,
    receiver_name: &str,
    pinger: &Host,
    target: &str,
    mv: impl FnOnce() -> anyhow::Result<()>,
) -> anyhow::Result<f64> {
    let ping = PingStream::start(pinger, target, 20, 600)?;
    let flow = TcpFlow::start(sender, receiver, receiver_name, 5001, 384 * MIB)?;
    std::thread::sleep(Duration::from_millis(800));
    let moved_at = unix_now();
    mv()?;
    let sent = flow.finish(Duration::from_secs(110))?;
    std::thread::sleep(Duration::from_millis(500));
    let gap = ping
        .interruption_after(moved_at)
        .ok_or_else(|| anyhow::anyhow!("no ping reply after the move"))?;
    ping.stop();
    // One line per case for bench/mobility.sh.
    eprintln!(
        "MOBILITY case={case} interruption_ms={:.0} flow={sent}",
        gap * 1000.0
    );
    assert!(
        gap < MAX_INTERRUPTION,
        "the overlay came back {gap:.3} s after the move"
    );
    Ok(gap)
}

/// (a) The initiator moves (it is the QUIC client of the tunnel: the connection
/// migrates): from one NAT to another.
#[test]
fn initiator_moves_between_nats() -> anyhow::Result<()> {
    if !require_root() {
        return Ok(());
    }
    let mut bench = Bench::new("mva")?;
    bench.dns_server()?;
    let cloud_host = bench.public_host("cloud", Family::Dual)?;
    let home = bench.nat("home", NatKind::EndpointIndependent)?;
    let cafe = bench.nat("cafe", NatKind::EndpointIndependent)?;
    let mut a = bench.host_in(&home, "a")?;
    let b = bench.public_host("b", Family::V4)?;
    let cloud = CloudProc::start(&cloud_host)?;
    let na = NodeProc::start(&a, &cloud, "a")?;
    let nb = NodeProc::start(&b, &cloud, "b")?;
    assert!(na.ping(&fqdn("b"), 1, &[])?);
    let vb = nb.virtual_ipv4()?.to_string();
    let a0 = a.clone();
    across_the_move(
        "a initiator moves NAT→NAT (QUIC client)",
        &a0,
        &b,
        &fqdn("b"),
        &a0,
        &vb,
        || bench.move_host(&mut a, Attach::Net(&cafe)),
    )?;
    assert!(na.proc.log_text().contains("re-registered after the move"));
    assert_eq!(
        na.status()?["cloud"]["observed"]
            .as_str()
            .map(|o| o.starts_with(&cafe.wan_v4.to_string())),
        Some(true),
        "NMS sees a at the new NAT"
    );
    Ok(())
}

/// (b) The responder moves (it was the QUIC server: the pair is set up afresh from
/// its new address): between two public addresses.
#[test]
fn responder_moves_between_public_addresses() -> anyhow::Result<()> {
    if !require_root() {
        return Ok(());
    }
    let mut bench = Bench::new("mvb")?;
    bench.dns_server()?;
    let cloud_host = bench.public_host("cloud", Family::Dual)?;
    let a = bench.public_host("a", Family::V4)?;
    let mut b = bench.public_host("b", Family::V4)?;
    let cloud = CloudProc::start(&cloud_host)?;
    let na = NodeProc::start(&a, &cloud, "a")?;
    let nb = NodeProc::start(&b, &cloud, "b")?;
    assert!(
        na.ping(&fqdn("b"), 1, &[])?,
        "a initiates: b is the responder"
    );
    let vb = nb.virtual_ipv4()?.to_string();
    let b0 = b.clone();
    across_the_move(
        "b responder moves public→public (QUIC server)",
        &a,
        &b0,
        &fqdn("b"),
        &a,
        &vb,
        || bench.move_host(&mut b, Attach::Core(Family::V4)),
    )?;
    assert!(nb
        .proc
        .log_text()
        .contains("tunnel re-established after the move"));
    assert!(na.proc.log_text().contains("peer moved (Location Update)"));
    Ok(())
}

/// (c) A host moves from a public network to behind a NAT, mid-flow.
#[test]
fn public_host_moves_behind_a_nat() -> anyhow::Result<()> {
    if !require_root() {
        return Ok(());
    }
    let mut bench = Bench::new("mvc")?;
    bench.dns_server()?;
    let cloud_host = bench.public_host("cloud", Family::Dual)?;
    let home = bench.nat("home", NatKind::EndpointIndependent)?;
    let a = bench.public_host("a", Family::V4)?;
    let mut b = bench.public_host("b", Family::V4)?;
    let cloud = CloudProc::start(&cloud_host)?;
    let na = NodeProc::start(&a, &cloud, "a")?;
    let nb = NodeProc::start(&b, &cloud, "b")?;
    assert!(na.ping(&fqdn("b"), 1, &[])?);
    let va = na.virtual_ipv4()?.to_string();
    let b0 = b.clone();
    // b sends to a and pings a while it moves behind the NAT.
    across_the_move(
        "c public→behind NAT (QUIC server)",
        &b0,
        &a,
        &fqdn("a"),
        &b0,
        &va,
        || bench.move_host(&mut b, Attach::Net(&home)),
    )?;
    assert_eq!(nb.status()?["cloud"]["nat"], true, "b is behind NAT now");
    Ok(())
}

/// (d) A dual-stack host loses IPv4 and keeps IPv6: it reconnects to NMS over IPv6
/// and the pair continues (through the TRS, since its peer is on IPv4).
#[test]
fn dual_stack_host_loses_ipv4() -> anyhow::Result<()> {
    if !require_root() {
        return Ok(());
    }
    let mut bench = Bench::new("mvd")?;
    bench.dns_server()?;
    let cloud_host = bench.public_host("cloud", Family::Dual)?;
    let a = bench.public_host("a", Family::Dual)?;
    let b = bench.public_host("b", Family::V4)?;
    let cloud = CloudProc::start(&cloud_host)?;
    let na = NodeProc::start(&a, &cloud, "a")?;
    let nb = NodeProc::start(&b, &cloud, "b")?;
    assert!(na.ping(&fqdn("b"), 1, &[])?);
    assert_eq!(na.path_to(&fqdn("b"))?, "direct");
    let vb = nb.virtual_ipv4()?.to_string();
    across_the_move(
        "d dual-stack loses IPv4 (direct→relayed)",
        &a,
        &b,
        &fqdn("b"),
        &a,
        &vb,
        || {
            a.run_ok("ip", ["-4", "addr", "flush", "dev", "eth0"])?;
            Ok(())
        },
    )?;
    let nms = na.status()?["cloud"]["nms_address"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(nms.starts_with('['), "a talks to NMS over IPv6 now: {nms}");
    assert_eq!(
        na.path_to(&fqdn("b"))?,
        "relayed",
        "IPv6-only a ↔ IPv4-only b"
    );
    Ok(())
}

/// (e) A move that makes the pair switch from direct to relayed: two hosts behind
/// endpoint-independent NATs went direct (hole punching); one moves behind a
/// symmetric NAT, where no direct path exists, so the pair continues through the TRS.
#[test]
fn move_switches_the_pair_from_direct_to_relayed() -> anyhow::Result<()> {
    if !require_root() {
        return Ok(());
    }
    let mut bench = Bench::new("mve")?;
    bench.dns_server()?;
    let cloud_host = bench.public_host("cloud", Family::Dual)?;
    let home1 = bench.nat("home1", NatKind::EndpointIndependent)?;
    let home2 = bench.nat("home2", NatKind::EndpointIndependent)?;
    let sym = bench.nat("sym", NatKind::Symmetric)?;
    let mut a = bench.host_in(&home1, "a")?;
    let b = bench.host_in(&home2, "b")?;
    let cloud = CloudProc::start(&cloud_host)?;
    let na = NodeProc::start_with(&a, &cloud, "a", &NodeOpts::default())?;
    let nb = NodeProc::start(&b, &cloud, "b")?;
    assert!(na.ping(&fqdn("b"), 1, &[])?);
    assert!(
        cyphonic_tests::overlay::eventually(Duration::from_secs(10), || Ok(na
            .path_to(&fqdn("b"))?
            == "direct"))?,
        "the pair went direct first"
    );
    let vb = nb.virtual_ipv4()?.to_string();
    let a0 = a.clone();
    across_the_move(
        "e EIM NAT→symmetric NAT (direct→relayed)",
        &a0,
        &b,
        &fqdn("b"),
        &a0,
        &vb,
        || bench.move_host(&mut a, Attach::Net(&sym)),
    )?;
    assert_eq!(
        na.path_to(&fqdn("b"))?,
        "relayed",
        "behind the symmetric NAT: relayed"
    );
    Ok(())
}
