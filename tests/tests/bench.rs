//! Tests of the bench itself: routing, NAT mapping behaviour, filtering, DNS, host
//! mobility and teardown. They need root (see `require_root`).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use cyphonic_tests::{
    cleanup_stale, list_ns, payload, require_root, Attach, Bench, Family, Host, NatKind, Proc,
    DNS_SERVER_V4, DNS_TEST_NAME, DNS_TEST_V4,
};
use serde_json::Value;

const PROBE: &str = env!("CARGO_BIN_EXE_cyphonic-probe");
const READY: Duration = Duration::from_secs(10);

/// Runs the probe on `host`; Ok(json of the last stdout line) on success.
fn probe(host: &Host, args: &[&str]) -> Result<Value> {
    let out = host.run(PROBE, args)?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "probe {args:?} on {} failed: {}{}",
            host.name,
            String::from_utf8_lossy(&out.stderr).trim(),
            stdout.trim()
        );
    }
    let line = stdout.lines().last().context("probe printed nothing")?;
    serde_json::from_str(line).with_context(|| format!("probe output {line:?}"))
}

/// Starts a probe server on `host` and waits until it is bound.
fn serve(host: &Host, args: &[&str], log: &str) -> Result<Proc> {
    let p = host.spawn(PROBE, args, log)?;
    p.wait_for_log("listening", READY)?;
    Ok(p)
}

fn v4(h: &Host) -> IpAddr {
    IpAddr::V4(h.ipv4.expect("host has IPv4"))
}

fn v6(h: &Host) -> IpAddr {
    IpAddr::V6(h.ipv6.expect("host has IPv6"))
}

fn sock(ip: IpAddr, port: u16) -> String {
    SocketAddr::new(ip, port).to_string()
}

/// The "ip:port" a public observer saw for a hello from `host` (local port `from`).
fn observed(host: &Host, observer: &str, from: u16) -> Result<SocketAddr> {
    let v = probe(
        host,
        &[
            "udp-hello",
            "--to",
            observer,
            "--from-port",
            &from.to_string(),
        ],
    )?;
    v["observed"]
        .as_str()
        .context("no observed field")?
        .parse()
        .context("observed address")
}

/// Whether `pid` is a live process (a zombie awaiting its new parent's reaping is dead).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, r)| r.trim_start().starts_with('Z'))
        })
        .is_some_and(|zombie| !zombie)
}

#[test]
fn binary_lookup_finds_the_probe_and_explains_missing_binaries() {
    let p = cyphonic_tests::binary("cyphonic-probe").expect("probe is built with the tests");
    assert!(p.is_file());
    let e = cyphonic_tests::binary("no-such-cyphonic-binary")
        .unwrap_err()
        .to_string();
    assert!(e.contains("cargo build --workspace --bins"), "{e}");
}

#[test]
fn public_hosts_ping_each_other_v4_and_v6() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let mut b = Bench::new("ping")?;
    let a4 = b.public_host("a4", Family::V4)?;
    let b4 = b.public_host("b4", Family::V4)?;
    let a6 = b.public_host("a6", Family::V6)?;
    let b6 = b.public_host("b6", Family::V6)?;
    let d = b.public_host("d", Family::Dual)?;
    assert!(a4.ipv6.is_none() && a6.ipv4.is_none());
    assert!(a4.can_ping(v4(&b4))?, "v4 -> v4");
    assert!(a6.can_ping(v6(&b6))?, "v6 -> v6");
    assert!(d.can_ping(v4(&a4))? && d.can_ping(v6(&a6))?, "dual -> both");
    // Families do not mix.
    assert!(
        !a4.can_ping(v6(&b6))?,
        "a v4-only host reached a v6-only host"
    );
    assert!(
        !a6.can_ping(v4(&b4))?,
        "a v6-only host reached a v4-only host"
    );
    // TCP over IPv6 with a checked payload.
    let sink = serve(
        &b6,
        &["tcp-sink", "--listen", &sock(v6(&b6), 5001)],
        "sink6.log",
    )?;
    let sent = probe(
        &a6,
        &[
            "tcp-send",
            "--to",
            &sock(v6(&b6), 5001),
            "--bytes",
            "300000",
            "--seed",
            "9",
        ],
    )?;
    sink.wait(READY)?;
    let got: Value = serde_json::from_str(sink.log_text().lines().last().unwrap_or(""))?;
    assert_eq!(sent["sha256"], payload::pattern_sha256(9, 300_000));
    assert_eq!(got["sha256"], sent["sha256"]);
    assert_eq!(got["bytes"], 300_000);
    Ok(())
}

#[test]
fn eim_nat_translates_to_its_wan_address_and_keeps_mappings() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let mut b = Bench::new("eim")?;
    let o1 = b.public_host("o1", Family::V4)?;
    let o2 = b.public_host("o2", Family::V4)?;
    let nat = b.nat("home", NatKind::EndpointIndependent)?;
    let h = b.host_in(&nat, "laptop")?;
    let h2 = b.host_in(&nat, "phone")?;
    assert_ne!(h.ipv4, h2.ipv4);
    assert!(
        h2.can_ping(v4(&h))?,
        "two hosts behind one NAT share the LAN"
    );
    serve(
        &o1,
        &["udp-observe", "--listen", &sock(v4(&o1), 3478)],
        "obs1.log",
    )?;
    serve(
        &o2,
        &["udp-observe", "--listen", &sock(v4(&o2), 3478)],
        "obs2.log",
    )?;
    let m1 = observed(&h, &sock(v4(&o1), 3478), 40000)?;
    let m2 = observed(&h, &sock(v4(&o2), 3478), 40000)?;
    eprintln!("EIM: local :40000 -> {m1} (to o1), {m2} (to o2)");
    assert_eq!(
        m1.ip(),
        IpAddr::V4(nat.wan_v4),
        "source is the NAT's WAN address"
    );
    assert_eq!(
        m1, m2,
        "endpoint-independent: same mapping towards every destination"
    );
    assert_eq!(
        m1.port(),
        40000,
        "masquerade preserves the port when it can"
    );
    // The second host using the same local port to the same observer gets another port.
    let m3 = observed(&h2, &sock(v4(&o1), 3478), 40000)?;
    eprintln!("EIM: second host local :40000 -> {m3}");
    assert_eq!(m3.ip(), IpAddr::V4(nat.wan_v4));
    assert_ne!(m3.port(), m1.port());
    // TCP through the NAT: the server sees the WAN address.
    let sink = serve(
        &o1,
        &["tcp-sink", "--listen", &sock(v4(&o1), 5001)],
        "sink.log",
    )?;
    probe(
        &h,
        &[
            "tcp-send",
            "--to",
            &sock(v4(&o1), 5001),
            "--bytes",
            "100000",
        ],
    )?;
    sink.wait(READY)?;
    let got: Value = serde_json::from_str(sink.log_text().lines().last().unwrap_or(""))?;
    let peer: SocketAddr = got["peer"].as_str().unwrap_or("").parse()?;
    assert_eq!(peer.ip(), IpAddr::V4(nat.wan_v4));
    assert_eq!(got["sha256"], payload::pattern_sha256(1, 100_000));
    Ok(())
}

#[test]
fn symmetric_nat_maps_each_destination_to_another_port() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let mut b = Bench::new("sym")?;
    let o1 = b.public_host("o1", Family::V4)?;
    let o2 = b.public_host("o2", Family::V4)?;
    let nat = b.nat("carrier", NatKind::Symmetric)?;
    let h = b.host_in(&nat, "phone")?;
    serve(
        &o1,
        &["udp-observe", "--listen", &sock(v4(&o1), 3478)],
        "obs1.log",
    )?;
    serve(
        &o2,
        &["udp-observe", "--listen", &sock(v4(&o2), 3478)],
        "obs2.log",
    )?;
    // Same destination port on both observers: only the destination address differs.
    let m1 = observed(&h, &sock(v4(&o1), 3478), 40000)?;
    let m2 = observed(&h, &sock(v4(&o2), 3478), 40000)?;
    eprintln!("symmetric: local :40000 -> {m1} (to o1), {m2} (to o2)");
    assert_eq!(m1.ip(), IpAddr::V4(nat.wan_v4));
    assert_eq!(m2.ip(), IpAddr::V4(nat.wan_v4));
    assert_ne!(
        m1.port(),
        m2.port(),
        "symmetric: a new mapping per destination"
    );
    // And a different destination port on the same observer also gets a new mapping.
    serve(
        &o1,
        &["udp-observe", "--listen", &sock(v4(&o1), 3479)],
        "obs3.log",
    )?;
    let m3 = observed(&h, &sock(v4(&o1), 3479), 40000)?;
    eprintln!("symmetric: local :40000 -> {m3} (to o1:3479)");
    assert_ne!(m3.port(), m1.port());
    Ok(())
}

#[test]
fn nobody_outside_can_connect_into_a_nat() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let mut b = Bench::new("inbound")?;
    let public = b.public_host("public", Family::Dual)?;
    let nat = b.nat("home", NatKind::EndpointIndependent)?;
    let h = b.host_in(&nat, "server")?;
    serve(
        &h,
        &["tcp-sink", "--listen", "0.0.0.0:5001", "--timeout", "30"],
        "sink.log",
    )?;
    serve(
        &h,
        &["udp-echo", "--listen", "0.0.0.0:5002", "--timeout", "30"],
        "echo.log",
    )?;
    for target in [IpAddr::V4(nat.wan_v4), v4(&h)] {
        let tcp = probe(
            &public,
            &[
                "tcp-send",
                "--to",
                &sock(target, 5001),
                "--bytes",
                "10",
                "--timeout",
                "3",
            ],
        );
        assert!(
            tcp.is_err(),
            "TCP into the NAT via {target} succeeded: {tcp:?}"
        );
        let udp = probe(
            &public,
            &[
                "udp-ping",
                "--to",
                &sock(target, 5002),
                "--count",
                "3",
                "--timeout",
                "3",
            ],
        );
        assert!(
            udp.is_err(),
            "UDP into the NAT via {target} succeeded: {udp:?}"
        );
    }
    // The NAT'd host itself can reach the public host.
    assert!(h.can_ping(v4(&public))?);
    Ok(())
}

#[test]
fn double_nat_reaches_out_through_both() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let mut b = Bench::new("dnat")?;
    let o = b.public_host("o", Family::V4)?;
    let outer = b.nat("isp", NatKind::EndpointIndependent)?;
    let inner = b.nat_behind(&outer, "home", NatKind::EndpointIndependent)?;
    assert_ne!(outer.lan_v4, inner.lan_v4);
    let h = b.host_in(&inner, "pc")?;
    assert!(h.can_ping(v4(&o))?);
    serve(
        &o,
        &["udp-observe", "--listen", &sock(v4(&o), 3478)],
        "obs.log",
    )?;
    let m = observed(&h, &sock(v4(&o), 3478), 40001)?;
    eprintln!("double NAT: local :40001 -> {m}");
    assert_eq!(
        m.ip(),
        IpAddr::V4(outer.wan_v4),
        "seen as the outer NAT's WAN address"
    );
    Ok(())
}

#[test]
fn firewall_lets_out_only_port_443_and_dns() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let mut b = Bench::new("fw")?;
    let o = b.public_host("o", Family::V4)?;
    let dns = b.dns_server()?;
    let fw = b.firewall_443("office")?;
    let h = b.host_in(&fw, "desk")?;
    for port in ["443", "4433"] {
        serve(
            &o,
            &[
                "udp-echo",
                "--listen",
                &format!("0.0.0.0:{port}"),
                "--timeout",
                "30",
            ],
            &format!("echo{port}.log"),
        )?;
    }
    serve(
        &o,
        &["tcp-sink", "--listen", "0.0.0.0:443", "--timeout", "30"],
        "sink443.log",
    )?;
    serve(
        &o,
        &["tcp-sink", "--listen", "0.0.0.0:4433", "--timeout", "30"],
        "sink4433.log",
    )?;
    let ok = probe(
        &h,
        &["udp-ping", "--to", &sock(v4(&o), 443), "--count", "3"],
    )?;
    assert_eq!(ok["received"], 3, "UDP 443 passes: {ok}");
    let blocked = probe(
        &h,
        &[
            "udp-ping",
            "--to",
            &sock(v4(&o), 4433),
            "--count",
            "3",
            "--timeout",
            "3",
        ],
    );
    assert!(
        blocked.is_err(),
        "UDP 4433 passed the firewall: {blocked:?}"
    );
    probe(
        &h,
        &["tcp-send", "--to", &sock(v4(&o), 443), "--bytes", "5000"],
    )?;
    let blocked = probe(
        &h,
        &[
            "tcp-send",
            "--to",
            &sock(v4(&o), 4433),
            "--bytes",
            "10",
            "--timeout",
            "3",
        ],
    );
    assert!(
        blocked.is_err(),
        "TCP 4433 passed the firewall: {blocked:?}"
    );
    assert!(!h.can_ping(v4(&o))?, "ICMP passed the firewall");
    // DNS to the bench resolver is allowed (and only to it).
    h.set_resolv_conf(&format!("nameserver {DNS_SERVER_V4}\n"))?;
    let r = probe(&h, &["resolve", "--name", DNS_TEST_NAME])?;
    assert!(
        r["addrs"]
            .as_array()
            .unwrap()
            .contains(&Value::from(DNS_TEST_V4.to_string())),
        "{r}"
    );
    assert!(dns.ipv4 == Some(DNS_SERVER_V4));
    Ok(())
}

#[test]
fn dnsmasq_answers_test_names() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let mut b = Bench::new("dns")?;
    let sinkhost = b.public_host("sinkhost", Family::V4)?;
    b.dns_server_with(&[("sink.example.test", v4(&sinkhost))])?;
    let nat = b.nat("home", NatKind::EndpointIndependent)?;
    let h = b.host_in(&nat, "client")?;
    h.set_resolv_conf(&format!(
        "nameserver {DNS_SERVER_V4}\noptions timeout:1 attempts:2\n"
    ))?;
    let r = probe(&h, &["resolve", "--name", DNS_TEST_NAME])?;
    let addrs: Vec<&str> = r["addrs"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    assert!(addrs.contains(&DNS_TEST_V4.to_string().as_str()), "{r}");
    // A name resolved by the probe's system resolver, then used for a transfer.
    let sink = serve(
        &sinkhost,
        &["tcp-sink", "--listen", "0.0.0.0:5001"],
        "sink.log",
    )?;
    probe(
        &h,
        &[
            "tcp-send",
            "--to",
            "sink.example.test:5001",
            "--bytes",
            "4096",
        ],
    )?;
    sink.wait(READY)?;
    // Unknown names fail (no upstream).
    assert!(probe(&h, &["resolve", "--name", "nothing.example.test"]).is_err());
    Ok(())
}

#[test]
fn move_host_keeps_processes_and_changes_address() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let mut b = Bench::new("move")?;
    let o = b.public_host("o", Family::Dual)?;
    let home = b.nat("home", NatKind::EndpointIndependent)?;
    let cafe = b.nat("cafe", NatKind::Symmetric)?;
    let mut m = b.host_in(&home, "mobile")?;
    let echo = serve(
        &m,
        &["udp-echo", "--listen", "[::]:7000", "--timeout", "60"],
        "echo.log",
    )?;
    serve(
        &o,
        &[
            "udp-observe",
            "--listen",
            &sock(v4(&o), 3478),
            "--timeout",
            "60",
        ],
        "obs.log",
    )?;
    let before = m.ipv4;
    assert_eq!(
        observed(&m, &sock(v4(&o), 3478), 0)?.ip(),
        IpAddr::V4(home.wan_v4)
    );

    b.move_host(&mut m, Attach::Net(&cafe))?;
    assert!(echo.is_running(), "process survived the move");
    assert_ne!(m.ipv4, before);
    assert_eq!(
        observed(&m, &sock(v4(&o), 3478), 0)?.ip(),
        IpAddr::V4(cafe.wan_v4)
    );

    b.move_host(&mut m, Attach::Core(Family::Dual))?;
    assert!(echo.is_running(), "process survived the second move");
    assert!(m.ipv6.is_some());
    // Now public: the same echo process answers on the new addresses.
    let v = probe(
        &o,
        &["udp-ping", "--to", &sock(v4(&m), 7000), "--count", "3"],
    )?;
    assert_eq!(v["received"], 3);
    let v = probe(
        &o,
        &["udp-ping", "--to", &sock(v6(&m), 7000), "--count", "3"],
    )?;
    assert_eq!(v["received"], 3);
    let ip = m.run_ok("ip", ["-o", "addr", "show", "dev", "eth0"])?;
    assert!(ip.contains(&m.ipv4.unwrap().to_string()), "{ip}");
    Ok(())
}

#[test]
fn teardown_removes_namespaces_and_processes() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let (prefix, dir, pids) = {
        let mut b = Bench::new("teardown")?;
        let h = b.public_host("h", Family::Dual)?;
        let nat = b.nat("nat", NatKind::Symmetric)?;
        let n = b.host_in(&nat, "n")?;
        n.set_resolv_conf("nameserver 192.0.2.1\n")?;
        // One process that ignores SIGTERM (needs the SIGKILL fallback) and one
        // that forks a grandchild into its process group.
        let stubborn = h.spawn(
            "sh",
            ["-c", "trap '' TERM; while :; do sleep 1; done"],
            "a.log",
        )?;
        let forker = n.spawn("sh", ["-c", "sleep 300 & wait"], "b.log")?;
        std::thread::sleep(Duration::from_millis(200));
        assert!(stubborn.is_running() && forker.is_running());
        // Every process inside the bench's namespaces, grandchildren included.
        let mut pids = Vec::new();
        for ns in b.namespaces() {
            let out = std::process::Command::new("ip")
                .args(["netns", "pids", ns])
                .output()?;
            pids.extend(
                String::from_utf8_lossy(&out.stdout)
                    .split_whitespace()
                    .filter_map(|p| p.parse::<u32>().ok()),
            );
        }
        assert!(
            pids.len() >= 4,
            "expected sh, sleep, sh, sleep; got {pids:?}"
        );
        assert!(pids.contains(&stubborn.pid()) && pids.contains(&forker.pid()));
        (b.prefix().to_string(), b.bench_dir().to_path_buf(), pids)
    };
    let left: Vec<_> = list_ns()?
        .into_iter()
        .filter(|n| n.starts_with(&prefix))
        .collect();
    assert!(left.is_empty(), "namespaces left: {left:?}");
    for pid in pids {
        assert!(!alive(pid), "pid {pid} still alive after teardown");
    }
    assert!(!dir.exists(), "bench dir kept without a failure");
    assert!(!std::path::Path::new(&format!("/etc/netns/{prefix}-n")).exists());
    Ok(())
}

#[test]
fn teardown_happens_on_panic_and_stale_benches_are_removed() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let seen = std::sync::Mutex::new(None);
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut b = Bench::new("panic").unwrap();
        b.public_host("x", Family::V4).unwrap();
        *seen.lock().unwrap() = Some((b.prefix().to_string(), b.bench_dir().to_path_buf()));
        panic!("test failure inside a bench (expected)");
    }));
    assert!(r.is_err());
    let (prefix, dir) = seen.lock().unwrap().take().unwrap();
    assert!(list_ns()?.iter().all(|n| !n.starts_with(&prefix)));
    assert!(dir.exists(), "logs are kept after a failure");
    std::fs::remove_dir_all(&dir)?;

    // A leftover of a dead run (pid 999999999 cannot exist: above pid_max).
    let stale = "cyb-999999999-0-stale-core";
    let st = std::process::Command::new("ip")
        .args(["netns", "add", stale])
        .status()?;
    assert!(st.success());
    // (A concurrent Bench::new may have removed it already.)
    let removed = cleanup_stale("cyb-999999999-")?;
    assert!(removed <= 1);
    assert!(!list_ns()?.iter().any(|n| n == stale));
    assert!(
        cleanup_stale("other-").is_err(),
        "foreign prefixes are refused"
    );
    // Another tool's namespace under the prefix (bench/dataplane.sh names its own
    // `cyb-dp-<pid>-…`) is left alone, even with no live owner in its name: the
    // tests once killed a running benchmark this way.
    let foreign = format!("cyb-dp-{}-stale-probe", std::process::id());
    let st = std::process::Command::new("ip")
        .args(["netns", "add", &foreign])
        .status()?;
    assert!(st.success());
    cleanup_stale("cyb-")?;
    let kept = list_ns()?.contains(&foreign);
    let _ = std::process::Command::new("ip")
        .args(["netns", "del", &foreign])
        .status();
    assert!(kept, "cleanup_stale removed a namespace it does not own");
    Ok(())
}

#[test]
fn early_inbound_packet_does_not_steal_the_eim_mapping() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let mut b = Bench::new("punch")?;
    let o = b.public_host("peer", Family::V4)?;
    let nat = b.nat("home", NatKind::EndpointIndependent)?;
    let h = b.host_in(&nat, "node")?;
    // The peer's hole-punching packets (from :3478) reach the NAT before ours leave.
    let early = probe(
        &o,
        &[
            "udp-hello",
            "--to",
            &sock(IpAddr::V4(nat.wan_v4), 40002),
            "--from-port",
            "3478",
            "--timeout",
            "1",
        ],
    );
    assert!(
        early.is_err(),
        "unsolicited packet got an answer: {early:?}"
    );
    serve(
        &o,
        &["udp-observe", "--listen", &sock(v4(&o), 3478)],
        "obs.log",
    )?;
    let m = observed(&h, &sock(v4(&o), 3478), 40002)?;
    assert_eq!(
        m,
        SocketAddr::new(IpAddr::V4(nat.wan_v4), 40002),
        "mapping was displaced"
    );
    Ok(())
}
