//! `cyphonic-up`: the whole system on this host with the embedded defaults.
//!
//! Builds a small internet of network namespaces (the bench of the end-to-end tests),
//! starts the cloud (AS, NMS and TRS on SQLite, built-in CA) and three nodes — alice
//! on a public dual-stack address, bob behind a home NAT, carol on IPv6 only —
//! enrolls them, shows them reaching each other by name, prints what to try next,
//! and removes everything on Ctrl-C. Nothing to configure by hand.

use std::process::{Command, ExitCode};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Parser;
use cyphonic_tests::overlay::{fqdn, CloudProc, NodeOpts, NodeProc};
use cyphonic_tests::{binary, Bench, Family, Host, NatKind, DNS_SERVER_V6};

#[derive(Parser)]
#[command(
    name = "cyphonic-up",
    about = "Run CYPHONIC on this host: a cloud and three nodes in network namespaces, \
             reaching each other by name. Needs root (namespaces, TUN). Ctrl-C removes \
             everything."
)]
struct Cli {
    /// Show the demo and exit instead of waiting for Ctrl-C.
    #[arg(long)]
    once: bool,
}

fn show(title: &str, host: &Host, program: &str, args: &[&str]) -> Result<bool> {
    println!("\n$ {title}");
    let out = host.run_timeout(program, args, Duration::from_secs(30))?;
    print!("{}", String::from_utf8_lossy(&out.stdout));
    if !out.status.success() {
        print!("{}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(out.status.success())
}

fn cli(node: &NodeProc, what: &str) -> Result<()> {
    println!(
        "\n$ cyphonic-node --socket {} {what}",
        node.socket.display()
    );
    let out = Command::new(binary("cyphonic-node")?)
        .arg("--socket")
        .arg(&node.socket)
        .arg(what)
        .output()?;
    print!("{}", String::from_utf8_lossy(&out.stdout));
    Ok(())
}

fn run(cli_args: Cli) -> Result<()> {
    if unsafe { libc::geteuid() } != 0 {
        bail!("cyphonic-up needs root: it creates network namespaces and TUN devices (try sudo)");
    }
    for b in ["cyphonic-cloud", "cyphonic-node", "cyphonic-probe"] {
        binary(b)?;
    }
    println!("Building a small internet of network namespaces…");
    let mut bench = Bench::new("up")?;
    bench.dns_server()?;
    let cloud_host = bench.public_host("cloud", Family::Dual)?;
    let alice = bench.public_host("alice", Family::Dual)?;
    let home = bench.nat("home", NatKind::EndpointIndependent)?;
    let bob = bench.host_in(&home, "bob")?;
    let carol = bench.public_host("carol", Family::V6)?;

    println!("Starting the cloud (AS, NMS, TRS; SQLite; built-in CA)…");
    let cloud = CloudProc::start(&cloud_host)?;
    println!("Enrolling and starting alice, bob and carol…");
    let na = NodeProc::start(&alice, &cloud, "alice")?;
    let nb = NodeProc::start(&bob, &cloud, "bob")?;
    let nc = NodeProc::start_with(
        &carol,
        &cloud,
        "carol",
        &NodeOpts {
            resolv_conf: format!("nameserver {DNS_SERVER_V6}\n"),
            ..NodeOpts::default()
        },
    )?;

    let mut ok = true;
    ok &= show(
        "alice: ping bob.cyphonic.internal   (bob is behind a NAT)",
        &alice,
        "ping",
        &["-c", "3", "-i", "0.3", &fqdn("bob")],
    )?;
    ok &= show(
        "carol: ping -4 alice.cyphonic.internal   (carol has no IPv4 at all)",
        &carol,
        "ping",
        &["-4", "-c", "3", "-i", "0.3", &fqdn("alice")],
    )?;
    ok &= show(
        "bob: ping carol.cyphonic.internal   (IPv4-only behind NAT → IPv6-only)",
        &bob,
        "ping",
        &["-c", "3", "-i", "0.3", &fqdn("carol")],
    )?;
    cli(&na, "peers")?;
    cli(&nb, "status")?;
    if !ok {
        println!(
            "\nSome pings failed: see the logs in {}",
            bench.bench_dir().display()
        );
    }

    if cli_args.once {
        println!("\nDone (--once): removing everything. Run without --once to keep it up.");
        return if ok {
            Ok(())
        } else {
            bail!("the demo pings failed")
        };
    }
    let dir = bench.bench_dir().display().to_string();
    println!("\nCYPHONIC is up. Try next, in another terminal (as root):");
    println!("  ip netns exec {} ping bob.cyphonic.internal", alice.ns);
    println!(
        "  ip netns exec {} bash            # a shell on bob",
        bob.ns
    );
    for n in [&na, &nb, &nc] {
        println!(
            "  {} --socket {} peers",
            binary("cyphonic-node")?.display(),
            n.socket.display()
        );
    }
    println!(
        "  {} --config {} device list",
        binary("cyphonic-cloud")?.display(),
        cloud.config.display()
    );
    println!("  logs: {dir}/*.log");
    println!("Ctrl-C stops everything and removes the namespaces.");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the signal handler")?;
    rt.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        Ok::<(), std::io::Error>(())
    })?;
    println!("\nStopping…");
    for n in [&na, &nb, &nc] {
        let _ = n.stop();
    }
    drop(cloud);
    bench.teardown()?;
    println!("Removed.");
    Ok(())
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cyphonic-up: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
