//! End-to-end tests of the node daemon (issue 4) on namespace topologies: the real
//! `cyphonic-cloud` and `cyphonic-node` binaries, real TUN devices, real QUIC with
//! certificates from the deployment CA, the overlay DNS in front of a real upstream
//! (dnsmasq), NAT routers made of nftables rules.
//!
//! Each test builds its own bench (unique namespace names) and tears it down.

use std::time::Duration;

use cyphonic_tests::overlay::{
    eventually, fqdn, resolve, tcp_transfer, udp_exchange, CloudProc, NodeOpts, NodeProc,
};
use cyphonic_tests::{
    binary, require_root, Bench, Family, NatKind, DNS_SERVER_V6, DNS_TEST_NAME, DNS_TEST_V4,
};

const MIB: u64 = 1024 * 1024;

fn v6_resolver() -> NodeOpts {
    NodeOpts {
        resolv_conf: format!("nameserver {DNS_SERVER_V6}\n"),
        ..NodeOpts::default()
    }
}

/// Pattern 1 (SPEC §6, Process Code 1): IPv6-only ↔ IPv6-only and public IPv4 ↔
/// public IPv4, each pair by name: ping, a checksummed TCP transfer, a UDP exchange;
/// the tunnel is direct over the pair's own address family.
#[test]
fn pattern1_ipv6_pair_and_ipv4_pair() -> anyhow::Result<()> {
    if !require_root() {
        return Ok(());
    }
    let mut bench = Bench::new("p1")?;
    bench.dns_server()?;
    let cloud_host = bench.public_host("cloud", Family::Dual)?;
    let a6 = bench.public_host("a6", Family::V6)?;
    let b6 = bench.public_host("b6", Family::V6)?;
    let a4 = bench.public_host("a4", Family::V4)?;
    let b4 = bench.public_host("b4", Family::V4)?;
    let cloud = CloudProc::start(&cloud_host)?;
    let na6 = NodeProc::start_with(&a6, &cloud, "a6", &v6_resolver())?;
    let _nb6 = NodeProc::start_with(&b6, &cloud, "b6", &v6_resolver())?;
    let na4 = NodeProc::start(&a4, &cloud, "a4")?;
    let _nb4 = NodeProc::start(&b4, &cloud, "b4")?;

    // IPv6 underlay.
    assert!(na6.ping(&fqdn("b6"), 3, &[])?, "a6 pings b6 by name");
    assert!(
        na6.ping(&fqdn("b6"), 2, &["-4"])?,
        "…over the virtual IPv4 too"
    );
    tcp_transfer(&a6, &b6, &fqdn("b6"), 5001, 8 * MIB)?;
    assert_eq!(udp_exchange(&a6, &b6, &fqdn("b6"), 5002, 20)?, 20);
    let row = na6.peer(&fqdn("b6"))?.expect("a6 has a tunnel to b6");
    assert_eq!(row["path"], "direct");
    let remote = row["remote"].as_str().unwrap_or_default();
    assert!(
        remote.contains(&b6.ipv6.unwrap().to_string()),
        "the tunnel runs over b6's IPv6 address, not {remote}"
    );
    assert!(row["tx_bytes"].as_u64().unwrap_or(0) > 8 * MIB);
    // Both ends offered the fast data channel: the pings (small packets) went on it,
    // the transfer's full-size packets in QUIC datagrams.
    assert_eq!(row["data_channel"], "fast", "{row}");
    assert!(row["fast_tx_packets"].as_u64().unwrap_or(0) >= 5, "{row}");
    assert!(row["fast_rx_packets"].as_u64().unwrap_or(0) >= 5, "{row}");
    // The tunnel's packets: the bytes sent needed at least one QUIC or fast-data
    // packet per 1500 bytes (small datagrams may share a QUIC packet), and on a quiet
    // veth almost none is lost.
    let sent = row["quic_sent_packets"].as_u64().unwrap_or(0);
    let fast = row["fast_tx_packets"].as_u64().unwrap_or(0);
    let lost = row["quic_lost_packets"].as_u64().unwrap_or(u64::MAX);
    assert!(
        (sent + fast).saturating_mul(1500) >= row["tx_bytes"].as_u64().unwrap_or(u64::MAX),
        "{row}"
    );
    assert!(
        lost.saturating_mul(20) < sent,
        "more than 5 % of QUIC packets lost: {row}"
    );
    assert!(row["cwnd"].as_u64().unwrap_or(0) > 0, "{row}");

    // IPv4 underlay.
    assert!(na4.ping(&fqdn("b4"), 3, &[])?, "a4 pings b4 by name");
    tcp_transfer(&a4, &b4, &fqdn("b4"), 5001, 8 * MIB)?;
    assert_eq!(udp_exchange(&a4, &b4, &fqdn("b4"), 5002, 20)?, 20);
    let row = na4.peer(&fqdn("b4"))?.expect("a4 has a tunnel to b4");
    assert_eq!(row["path"], "direct");
    assert_eq!(row["data_channel"], "fast", "{row}");
    assert!(row["remote"]
        .as_str()
        .unwrap_or_default()
        .contains(&b4.ipv4.unwrap().to_string()));
    Ok(())
}

/// Pattern 2: a host behind an endpoint-independent NAT and public hosts, initiated
/// from either side. Behind-NAT → public: the initiator dials out (Process Code 1).
/// Public → behind-NAT: NMS has the responder dial the initiator (Process Code 2),
/// which is the only way in through the NAT.
#[test]
fn pattern2_nat_and_public_either_side_initiates() -> anyhow::Result<()> {
    if !require_root() {
        return Ok(());
    }
    let mut bench = Bench::new("p2")?;
    bench.dns_server()?;
    let cloud_host = bench.public_host("cloud", Family::Dual)?;
    let p1 = bench.public_host("p1", Family::V4)?;
    let p2 = bench.public_host("p2", Family::V4)?;
    let home = bench.nat("home", NatKind::EndpointIndependent)?;
    let h = bench.host_in(&home, "h")?;
    let cloud = CloudProc::start(&cloud_host)?;
    let np1 = NodeProc::start(&p1, &cloud, "p1")?;
    let np2 = NodeProc::start(&p2, &cloud, "p2")?;
    let nh = NodeProc::start(&h, &cloud, "h")?;
    assert_eq!(nh.status()?["cloud"]["nat"], true, "NMS saw h behind NAT");
    assert_eq!(np1.status()?["cloud"]["nat"], false);

    // h (behind NAT) initiates to p1.
    assert!(nh.ping(&fqdn("p1"), 3, &[])?);
    tcp_transfer(&h, &p1, &fqdn("p1"), 5001, 4 * MIB)?;
    let row = np1.peer(&fqdn("h"))?.expect("p1 has a tunnel to h");
    assert_eq!(row["dialed"], false, "h dialed p1 (Process Code 1)");

    // p2 (public) initiates to h behind the NAT: h must dial back.
    assert!(np2.ping(&fqdn("h"), 3, &[])?);
    tcp_transfer(&p2, &h, &fqdn("h"), 5001, 4 * MIB)?;
    let row = np2.peer(&fqdn("h"))?.expect("p2 has a tunnel to h");
    assert_eq!(row["dialed"], false, "h dialed p2 (Process Code 2)");
    assert_eq!(row["path"], "direct");
    let nat_wan = home.wan_v4.to_string();
    assert!(
        row["remote"]
            .as_str()
            .unwrap_or_default()
            .contains(&nat_wan),
        "p2 sees h at the NAT's public address {nat_wan}: {row}"
    );
    Ok(())
}

/// Same NAT (Process Code 4): two hosts behind one NAT talk on their private
/// addresses, not through the NAT's public address.
#[test]
fn same_nat_hosts_use_the_lan_path() -> anyhow::Result<()> {
    if !require_root() {
        return Ok(());
    }
    let mut bench = Bench::new("sn")?;
    bench.dns_server()?;
    let cloud_host = bench.public_host("cloud", Family::Dual)?;
    let office = bench.nat("office", NatKind::EndpointIndependent)?;
    let h1 = bench.host_in(&office, "h1")?;
    let h2 = bench.host_in(&office, "h2")?;
    let cloud = CloudProc::start(&cloud_host)?;
    let n1 = NodeProc::start(&h1, &cloud, "h1")?;
    let n2 = NodeProc::start(&h2, &cloud, "h2")?;
    assert!(n1.ping(&fqdn("h2"), 3, &[])?);
    tcp_transfer(&h1, &h2, &fqdn("h2"), 5001, 4 * MIB)?;
    assert_eq!(n1.path_to(&fqdn("h2"))?, "lan");
    let row = n2.peer(&fqdn("h1"))?.expect("h2 has a tunnel to h1");
    let private = h1.ipv4.unwrap().to_string();
    assert!(
        row["remote"]
            .as_str()
            .unwrap_or_default()
            .contains(&private),
        "h2 sees h1 at its private address {private}: {row}"
    );
    Ok(())
}

/// The overlay resolver: normal names still resolve through it (forwarded to the
/// host's original upstream), unknown overlay names fail fast, and the host's
/// resolver configuration is restored when the node stops.
#[test]
fn dns_forwards_normal_names_and_fails_fast_on_unknown_overlay_names() -> anyhow::Result<()> {
    if !require_root() {
        return Ok(());
    }
    let mut bench = Bench::new("dns")?;
    bench.dns_server()?;
    let cloud_host = bench.public_host("cloud", Family::Dual)?;
    let a = bench.public_host("a", Family::V4)?;
    let b = bench.public_host("b", Family::V4)?;
    let cloud = CloudProc::start(&cloud_host)?;
    let na = NodeProc::start(&a, &cloud, "a")?;
    let nb = NodeProc::start(&b, &cloud, "b")?;

    // A packet to a virtual address with no tunnel yet sets up the route (no DNS).
    let a_v4 = na.virtual_ipv4()?.to_string();
    assert!(
        nb.ping(&a_v4, 3, &[])?,
        "b reaches a's virtual address directly"
    );
    assert!(nb.peer(&fqdn("a"))?.is_some());

    let (addrs, _) = resolve(&a, DNS_TEST_NAME)?;
    assert!(
        addrs.contains(&DNS_TEST_V4.into()),
        "{DNS_TEST_NAME} resolves through the overlay resolver: {addrs:?}"
    );
    let (addrs, took) = resolve(&a, &fqdn("nosuchnode"))?;
    assert!(addrs.is_empty(), "an unknown overlay name does not resolve");
    assert!(took < Duration::from_secs(2), "…and fails fast ({took:?})");
    let (addrs, _) = resolve(&a, &fqdn("b"))?;
    let b_v4 = nb.virtual_ipv4()?;
    assert!(
        addrs.contains(&b_v4.into()),
        "b resolves to its virtual address"
    );

    // The node rewrote resolv.conf in place and puts the original back on exit.
    let etc = format!("/etc/netns/{}/resolv.conf", a.ns);
    let during = std::fs::read_to_string(&etc)?;
    assert!(during.contains("nameserver 127.0.0.88"), "{during}");
    na.stop()?;
    assert!(
        eventually(Duration::from_secs(5), || Ok(nb
            .peer(&fqdn("a"))?
            .is_none()))?,
        "a's clean shutdown (Finalization, tunnels closed) ended b's tunnel to it"
    );
    let after = std::fs::read_to_string(&etc)?;
    assert_eq!(
        after,
        NodeOpts::default().resolv_conf,
        "resolv.conf restored"
    );
    let links = a.run_ok("ip", ["-o", "link"])?;
    assert!(!links.contains("cyphonic0"), "TUN removed on exit: {links}");
    Ok(())
}

/// A revoked node can no longer reach anyone: NMS tells its peers (their live
/// tunnels close), and it cannot set up new ones.
#[test]
fn revoked_node_is_cut_off() -> anyhow::Result<()> {
    if !require_root() {
        return Ok(());
    }
    let mut bench = Bench::new("rv")?;
    bench.dns_server()?;
    let cloud_host = bench.public_host("cloud", Family::Dual)?;
    let a = bench.public_host("a", Family::V4)?;
    let b = bench.public_host("b", Family::V4)?;
    let c = bench.public_host("c", Family::V4)?;
    let cloud = CloudProc::start(&cloud_host)?;
    let na = NodeProc::start(&a, &cloud, "a")?;
    let nb = NodeProc::start(&b, &cloud, "b")?;
    let _nc = NodeProc::start(&c, &cloud, "c")?;
    let a_v4 = na.virtual_ipv4()?.to_string();
    assert!(
        nb.ping(&fqdn("a"), 2, &[])?,
        "before revocation b reaches a"
    );

    cloud.revoke("a")?;
    assert!(
        eventually(Duration::from_secs(10), || Ok(nb
            .peer(&fqdn("a"))?
            .is_none()))?,
        "b's tunnel to the revoked node closes"
    );
    assert!(!nb.ping(&a_v4, 2, &[])?, "b cannot reach a any more");
    assert!(!na.ping(&fqdn("c"), 2, &[])?, "a cannot reach c");
    Ok(())
}

/// A peer presenting a different FQDN than the one NMS named is refused, and a
/// capsule whose inner source is another node's address is dropped (SPEC §10.2).
#[test]
fn impersonation_and_spoofed_sources_are_refused() -> anyhow::Result<()> {
    if !require_root() {
        return Ok(());
    }
    let mut bench = Bench::new("sec")?;
    bench.dns_server()?;
    let cloud_host = bench.public_host("cloud", Family::Dual)?;
    let a = bench.public_host("a", Family::V4)?;
    let b = bench.public_host("b", Family::V4)?;
    let m = bench.public_host("m", Family::V4)?;
    let cloud = CloudProc::start(&cloud_host)?;
    let na = NodeProc::start(&a, &cloud, "a")?;
    let nb = NodeProc::start(&b, &cloud, "b")?;
    assert!(
        na.ping(&fqdn("b"), 2, &[])?,
        "a → b: NMS named a for this path"
    );

    let rogue = binary("cyphonic-rogue")?;
    let cloud_addr = cloud.address_for(&m)?.to_string();
    let ca = cloud.ca_cert().to_string_lossy().into_owned();
    let common = |device: &str, token: &str, state: &str| -> Vec<String> {
        vec![
            "--cloud".into(),
            cloud_addr.clone(),
            "--ca".into(),
            ca.clone(),
            "--device".into(),
            device.into(),
            "--token".into(),
            token.into(),
            "--state".into(),
            m.bench_dir().join(state).to_string_lossy().into_owned(),
        ]
    };

    // mallory claims a's path to b, with mallory's own (valid) certificate.
    let token = cloud.add_device("mallory")?;
    let mut args = vec!["impersonate".to_string()];
    args.extend(common("mallory", &token, "mallory"));
    args.extend([
        "--peer".into(),
        fqdn("b"),
        "--addr".into(),
        format!("{}:443", b.ipv4.unwrap()),
        "--path-initiator".into(),
        fqdn("a"),
    ]);
    let out = m.run_timeout(&rogue, &args, Duration::from_secs(30))?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "rogue failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("\"refused\""),
        "b refused mallory posing on a's path: {text}"
    );

    // eve gets a legitimate tunnel to b, then forges a's virtual address.
    let token = cloud.add_device("eve")?;
    let mut args = vec!["spoof".to_string()];
    args.extend(common("eve", &token, "eve"));
    args.extend([
        "--peer".into(),
        fqdn("b"),
        "--spoof-src".into(),
        na.virtual_ipv4()?.to_string(),
    ]);
    let out = m.run_timeout(&rogue, &args, Duration::from_secs(40))?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "rogue failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_str(text.trim())?;
    assert_eq!(v["legit_reply"], true, "eve's own packets reach b: {v}");
    assert_eq!(
        v["spoofed_reply"], false,
        "the forged packet is dropped: {v}"
    );
    // The rogue has exited (its tunnel is gone); b's log says what it dropped.
    assert!(
        nb.proc
            .log_text()
            .contains("dropped a capsule with a spoofed inner source"),
        "b logged the spoofed capsule"
    );
    Ok(())
}

/// SPEC §6 Data: a packet too large for the path's datagram never vanishes silently.
/// b sits on a 1280-byte-MTU link (both ends), so QUIC's datagrams shrink below a full overlay
/// packet (MTU 1360) once quinn detects the black hole; the node answers such packets
/// with ICMP Fragmentation Needed / Packet Too Big, or carries IPv6 packets that may not
/// be made smaller than 1280 on the link's stream, and the inner TCP (over IPv4 and
/// over IPv6) completes. Without that, TCP stalls on a black hole and times out.
#[test]
fn oversize_packets_get_packet_too_big_and_tcp_adapts() -> anyhow::Result<()> {
    if !require_root() {
        return Ok(());
    }
    let mut bench = Bench::new("mtu")?;
    bench.dns_server()?;
    let cloud_host = bench.public_host("cloud", Family::Dual)?;
    let a = bench.public_host("a", Family::V4)?;
    let b = bench.public_host("b", Family::V4)?;
    // b's link is a 1280-byte-MTU link: the core router drops larger packets to b,
    // and b cannot send larger ones.
    let core = bench.core_ns().to_owned();
    let route = std::process::Command::new("ip")
        .args([
            "-n",
            &core,
            "-o",
            "route",
            "get",
            &b.ipv4.unwrap().to_string(),
        ])
        .output()?;
    let route = String::from_utf8_lossy(&route.stdout).into_owned();
    let dev = route
        .split_whitespace()
        .skip_while(|w| *w != "dev")
        .nth(1)
        .expect("core has a route to b")
        .to_owned();
    let st = std::process::Command::new("ip")
        .args(["-n", &core, "link", "set", &dev, "mtu", "1280"])
        .status()?;
    assert!(st.success());
    b.run_ok("ip", ["link", "set", "eth0", "mtu", "1280"])?;
    let cloud = CloudProc::start(&cloud_host)?;
    let na = NodeProc::start(&a, &cloud, "a")?;
    let nb = NodeProc::start(&b, &cloud, "b")?;
    assert!(na.ping(&fqdn("b"), 2, &[])?);
    let vb = nb.virtual_ipv4()?.to_string();
    let va = na.virtual_ipv4()?.to_string();
    tcp_transfer(&a, &b, &fqdn("b"), 5001, 2 * MIB)?;
    tcp_transfer(&b, &a, &fqdn("a"), 5002, 2 * MIB)?;
    tcp_transfer(&a, &b, &vb, 5003, 2 * MIB)?;
    tcp_transfer(&b, &a, &va, 5004, 2 * MIB)?;
    let row = na.peer(&fqdn("b"))?.expect("a has a tunnel to b");
    let handled = row["too_big"].as_u64().unwrap_or(0) + row["on_stream"].as_u64().unwrap_or(0);
    assert!(
        handled >= 1,
        "a answered oversize packets with Packet Too Big or carried them: {row}"
    );
    Ok(())
}

/// Idle tunnels are closed (here after 2 s without a packet) and set up again on
/// demand.
#[test]
fn idle_tunnels_close_and_come_back() -> anyhow::Result<()> {
    if !require_root() {
        return Ok(());
    }
    let mut bench = Bench::new("idle")?;
    bench.dns_server()?;
    let cloud_host = bench.public_host("cloud", Family::Dual)?;
    let a = bench.public_host("a", Family::V4)?;
    let b = bench.public_host("b", Family::V4)?;
    let cloud = CloudProc::start(&cloud_host)?;
    let quick = NodeOpts {
        idle_secs: 2,
        ..NodeOpts::default()
    };
    let na = NodeProc::start_with(&a, &cloud, "a", &quick)?;
    let _nb = NodeProc::start_with(&b, &cloud, "b", &quick)?;
    assert!(na.ping(&fqdn("b"), 1, &[])?);
    assert!(na.peer(&fqdn("b"))?.is_some());
    assert!(
        eventually(Duration::from_secs(15), || Ok(na
            .peer(&fqdn("b"))?
            .is_none()))?,
        "the idle tunnel was closed"
    );
    assert!(na.ping(&fqdn("b"), 1, &[])?, "and comes back on demand");
    Ok(())
}

/// Captures the UDP payloads sent to port 443 from `src` for `secs` seconds (on every
/// interface of the host it runs on), one hex line each, then sends each line's
/// payload again to `dst`:443, and a copy whose counter (bytes 17..25 of a fast-data
/// packet) is pushed far ahead, so it passes the replay window and must fail the AEAD.
const CAPTURE_PY: &str = r#"
import socket, sys, time
src, secs, out = sys.argv[1], float(sys.argv[2]), sys.argv[3]
s = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(0x0800))
s.settimeout(0.2)
end = time.time() + secs
seen = []
while time.time() < end:
    try:
        pkt = s.recv(65535)
    except socket.timeout:
        continue
    ihl = (pkt[0] & 15) * 4
    if pkt[9] != 17 or socket.inet_ntoa(pkt[12:16]) != src:
        continue
    if int.from_bytes(pkt[ihl + 2:ihl + 4], "big") != 443:
        continue
    seen.append(pkt[ihl + 8:].hex())
open(out, "w").write("\n".join(seen))
"#;

const REPLAY_PY: &str = r#"
import socket, sys
dst, path = sys.argv[1], sys.argv[2]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
n = 0
for line in open(path).read().split():
    p = bytes.fromhex(line)
    if len(p) < 41 or p[0] & 0xc0 != 0x40 or p[9] & 0x80 == 0:
        continue  # not a fast-data packet
    s.sendto(p, (dst, 443))
    forged = bytearray(p)
    c = int.from_bytes(p[17:25], "big") + 1000
    forged[17:25] = c.to_bytes(8, "big")
    s.sendto(bytes(forged), (dst, 443))
    n += 1
print(n)
"#;

/// The fast data channel (docs/protocol-decisions.md): two nodes that both offer it
/// carry small packets on it; a node with `peers.fast_data = false` still gets every
/// packet, in QUIC datagrams; fast-data packets captured on the wire and sent again
/// are refused (replay window), and so are copies with a forged counter (AEAD), with
/// nothing delivered twice.
#[test]
fn fast_data_channel_negotiated_and_replays_refused() -> anyhow::Result<()> {
    if !require_root() {
        return Ok(());
    }
    let mut bench = Bench::new("fd")?;
    bench.dns_server()?;
    let cloud_host = bench.public_host("cloud", Family::Dual)?;
    let a = bench.public_host("a", Family::V4)?;
    let b = bench.public_host("b", Family::V4)?;
    let c = bench.public_host("c", Family::V4)?;
    let cloud = CloudProc::start(&cloud_host)?;
    let na = NodeProc::start(&a, &cloud, "fa")?;
    let nb = NodeProc::start(&b, &cloud, "fb")?;
    let quic_only = NodeOpts {
        fast_data: Some(false),
        ..NodeOpts::default()
    };
    let nc = NodeProc::start_with(&c, &cloud, "fc", &quic_only)?;

    // a ↔ b: both offer it. Capture what a sends b while a pings.
    assert!(na.ping(&fqdn("fb"), 2, &[])?, "a pings b");
    let dir = b.bench_dir().to_path_buf();
    let script = dir.join("capture.py");
    std::fs::write(&script, CAPTURE_PY)?;
    let captured = dir.join("captured.hex");
    let a_ip = a.ipv4.expect("a has IPv4").to_string();
    let cap = b.spawn(
        "python3",
        [
            script.to_string_lossy().as_ref(),
            &a_ip,
            "4",
            captured.to_string_lossy().as_ref(),
        ],
        "capture.log",
    )?;
    std::thread::sleep(Duration::from_millis(500));
    assert!(na.ping(&fqdn("fb"), 5, &[])?, "a pings b while b captures");
    cap.wait(Duration::from_secs(10))?;
    let row = na.peer(&fqdn("fb"))?.expect("a has a tunnel to b");
    assert_eq!(row["data_channel"], "fast", "{row}");
    assert!(row["fast_tx_packets"].as_u64().unwrap_or(0) >= 7, "{row}");
    let before = nb.peer(&fqdn("fa"))?.expect("b has a tunnel to a");
    assert_eq!(before["data_channel"], "fast", "{before}");
    assert!(
        before["fast_rx_packets"].as_u64().unwrap_or(0) >= 7,
        "{before}"
    );
    assert_eq!(before["fast_rejected"], 0, "{before}");

    // Send every captured fast-data packet again, and a forged copy of each.
    let replay = dir.join("replay.py");
    std::fs::write(&replay, REPLAY_PY)?;
    let out = a.run_ok(
        "python3",
        [
            replay.to_string_lossy().as_ref(),
            &b.ipv4.expect("b has IPv4").to_string(),
            captured.to_string_lossy().as_ref(),
        ],
    )?;
    let resent: u64 = out.trim().parse().unwrap_or(0);
    assert!(
        resent >= 5,
        "the capture holds a's fast-data packets: {out}"
    );
    let after = eventually(Duration::from_secs(5), || {
        let r = nb.peer(&fqdn("fa"))?.expect("b still has the tunnel");
        Ok(r["fast_rejected"].as_u64().unwrap_or(0) >= 2 * resent)
    })?;
    let row = nb.peer(&fqdn("fa"))?.expect("b still has the tunnel");
    assert!(after, "b refused every replayed and forged packet: {row}");
    assert_eq!(
        row["rx_packets"], before["rx_packets"],
        "nothing was delivered twice: {row}"
    );
    assert!(na.ping(&fqdn("fb"), 2, &[])?, "the tunnel still works");

    // The fast path's thread read a's TUN for those pings. A bulk transfer hands
    // a's TUN and b's socket to the runtime (its large packets go on QUIC), arrives
    // whole, and pings afterwards give both back to the thread.
    let st = na.status()?;
    assert_eq!(st["fast_path"]["tun"], "fast-thread", "{st}");
    tcp_transfer(&a, &b, &fqdn("fb"), 5002, 4 * MIB)?;
    let st = na.status()?;
    assert!(
        st["fast_path"]["tun_handovers"].as_u64().unwrap_or(0) >= 1,
        "{st}"
    );
    let st = nb.status()?;
    assert!(
        st["fast_path"]["socket_handovers"].as_u64().unwrap_or(0) >= 1,
        "{st}"
    );
    let back = eventually(Duration::from_secs(10), || {
        na.ping(&fqdn("fb"), 2, &[])?;
        let (sa, sb) = (na.status()?, nb.status()?);
        Ok(sa["fast_path"]["tun"] == "fast-thread" && sb["fast_path"]["socket"] == "fast-thread")
    })?;
    assert!(
        back,
        "the fast path's thread takes the TUN and the socket back: {} / {}",
        na.status()?["fast_path"],
        nb.status()?["fast_path"]
    );

    // One large packet each way (a ping too large for the fast channel, and its
    // reply) goes on QUIC from the thread, which keeps the TUN and the socket: the
    // next small packet needs no wake-up of the runtime. Before, each end's TUN and
    // socket stayed with the runtime after such a packet, and after every
    // keep-alive, until the next packet came.
    let tun_handovers = |n: &NodeProc| -> anyhow::Result<u64> {
        Ok(n.status()?["fast_path"]["tun_handovers"]
            .as_u64()
            .unwrap_or(0))
    };
    let (ta, tb) = (tun_handovers(&na)?, tun_handovers(&nb)?);
    assert!(
        na.ping(&fqdn("fb"), 1, &["-s", "1300"])?,
        "a large ping goes on QUIC"
    );
    std::thread::sleep(Duration::from_millis(300)); // its acknowledgements
    for (node, t, name) in [(&na, ta, "a"), (&nb, tb, "b")] {
        let st = node.status()?;
        let fp = &st["fast_path"];
        assert_eq!(fp["tun"], "fast-thread", "{name}: {fp}");
        assert_eq!(fp["socket"], "fast-thread", "{name}: {fp}");
        assert_eq!(
            fp["tun_handovers"], t,
            "{name}: no hand-over for one packet: {fp}"
        );
    }
    let row = na.peer(&fqdn("fb"))?.expect("a has a tunnel to b");
    assert!(
        row["rx_packets"].as_u64().unwrap_or(0) > row["fast_rx_packets"].as_u64().unwrap_or(0),
        "the large reply came on QUIC: {row}"
    );

    // a ↔ c: c does not offer it, so a sends c QUIC datagrams.
    assert!(na.ping(&fqdn("fc"), 3, &[])?, "a pings c");
    tcp_transfer(&a, &c, &fqdn("fc"), 5001, 2 * MIB)?;
    for (node, peer) in [(&na, "fc"), (&nc, "fa")] {
        let row = node.peer(&fqdn(peer))?.expect("tunnel a ↔ c");
        assert_eq!(row["data_channel"], "quic", "{row}");
        assert_eq!(row["fast_tx_packets"], 0, "{row}");
        assert_eq!(row["fast_rx_packets"], 0, "{row}");
        assert!(row["rx_packets"].as_u64().unwrap_or(0) >= 3, "{row}");
    }
    Ok(())
}

/// The scheduling policies of the threads named `comm` of process `pid`, from the
/// kernel (field 41 of /proc/PID/task/TID/stat: SCHED_OTHER 0, SCHED_BATCH 3).
fn thread_policies(pid: u32, comm: &str) -> anyhow::Result<Vec<i64>> {
    let mut found = Vec::new();
    for t in std::fs::read_dir(format!("/proc/{pid}/task"))?.flatten() {
        if std::fs::read_to_string(t.path().join("comm"))?.trim() != comm {
            continue;
        }
        let stat = std::fs::read_to_string(t.path().join("stat"))?;
        let rest = &stat[stat.rfind(')').map_or(0, |i| i + 2)..];
        found.push(
            rest.split(' ')
                .nth(38)
                .and_then(|f| f.parse().ok())
                .unwrap_or(-1),
        );
    }
    anyhow::ensure!(!found.is_empty(), "process {pid} has no thread {comm}");
    Ok(found)
}

/// Whether every thread `comm` of `pid` runs under `policy`.
fn all_threads(pid: u32, comm: &str, policy: i64) -> anyhow::Result<bool> {
    Ok(thread_policies(pid, comm)?.iter().all(|&p| p == policy))
}

/// `fast_thread_policy = "auto"` (the node's default) and `thread_policy = "auto"`
/// (the cloud's): the node's fast path thread and the cloud's runtime threads (the
/// TRS) run as SCHED_BATCH while the host has CPU to spare (a packet's hand-offs
/// stay on one CPU, BENCHMARKS.md), turn SCHED_OTHER when tasks wait for CPU (Linux
/// PSI), so that a packet's wake-up preempts a busy CPU's task again, and turn back
/// afterwards; pings go through all along.
#[test]
fn fast_thread_policy_follows_cpu_pressure() -> anyhow::Result<()> {
    if !require_root() {
        return Ok(());
    }
    let mut bench = Bench::new("sp")?;
    bench.dns_server()?;
    let cloud_host = bench.public_host("cloud", Family::Dual)?;
    let a = bench.public_host("a", Family::V4)?;
    let b = bench.public_host("b", Family::V4)?;
    let cloud = CloudProc::start(&cloud_host)?;
    let na = NodeProc::start(&a, &cloud, "pa")?;
    let nb = NodeProc::start(&b, &cloud, "pb")?;
    assert!(na.ping(&fqdn("pb"), 2, &[])?, "a pings b");
    let policy = |n: &NodeProc| -> anyhow::Result<String> {
        Ok(n.status()?["fast_path"]["policy"]
            .as_str()
            .unwrap_or_default()
            .to_owned())
    };
    if std::fs::read_to_string("/proc/pressure/cpu").is_err() {
        eprintln!(
            "no /proc/pressure/cpu (kernel without PSI): `auto` keeps batch; only that is checked"
        );
        assert!(policy(&na)?.starts_with("batch (auto; CPU pressure not readable"));
        return Ok(());
    }
    // Node and cloud threads all batch, read back from the kernel, within `wait`.
    let all_batch = |why: &str, wait: Duration| -> anyhow::Result<()> {
        let ok = eventually(wait, || {
            Ok(policy(&na)?.starts_with("batch (auto")
                && policy(&nb)?.starts_with("batch (auto")
                && all_threads(cloud.proc.pid(), "tokio-rt-worker", 3)?)
        })?;
        assert!(
            ok,
            "{why}: node {}, cloud's runtime threads {:?}",
            policy(&na)?,
            thread_policies(cloud.proc.pid(), "tokio-rt-worker")?
        );
        assert!(all_threads(na.proc.pid(), "cyphonic-fast", 3)?);
        Ok(())
    };
    // The bench's own start-up may have raised the pressure; let it settle.
    all_batch(
        "batch while the host has CPU to spare",
        Duration::from_secs(60),
    )?;

    // One CPU-bound loop more than there are CPUs, at the lowest priority so that
    // the tests running beside this one hardly notice them: some task always waits.
    let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
    let mut hogs = Vec::new();
    for i in 0..=cpus {
        hogs.push(a.spawn(
            "nice",
            [
                "-n",
                "19",
                "timeout",
                "90",
                "sh",
                "-c",
                "while :; do :; done",
            ],
            &format!("hog{i}.log"),
        )?);
    }
    let pressed = eventually(Duration::from_secs(40), || {
        Ok(policy(&na)?.starts_with("normal (auto")
            && cloud
                .proc
                .log_text()
                .contains("tasks wait for CPU: the cloud's runtime threads"))
    });
    let under_pressure = na.ping(&fqdn("pb"), 3, &[]);
    for h in &hogs {
        let _ = h.stop();
    }
    assert!(
        pressed?,
        "node and cloud turn normal under CPU pressure: {}",
        policy(&na)?
    );
    assert!(all_threads(na.proc.pid(), "cyphonic-fast", 0)?);
    assert!(under_pressure?, "pings go through under CPU pressure");
    assert!(
        na.proc.log_text().contains("tasks wait for CPU"),
        "the switch is logged with its reason"
    );

    all_batch(
        "batch again once the pressure is gone",
        Duration::from_secs(90),
    )?;
    assert!(na.ping(&fqdn("pb"), 2, &[])?, "a still pings b");
    Ok(())
}
