//! `cyphonic-node`: the node daemon and its operator CLI.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use cyphonic_node::config::NodeConfig;
use cyphonic_node::control::{self, NodeStatus};
use cyphonic_node::peers::PeerStatus;

const DEFAULT_CONFIG: &str = "/etc/cyphonic/node.toml";

#[derive(Parser)]
#[command(
    name = "cyphonic-node",
    version,
    about = "The CYPHONIC node daemon: a TUN with this host's stable virtual IPv4/IPv6 \
             addresses, an overlay DNS resolver, and end-to-end encrypted QUIC tunnels to peers",
    after_help = "Examples:\n  \
      cyphonic-node run --config /etc/cyphonic/node.toml   # start the daemon (root)\n  \
      cyphonic-node status                                # own name, addresses, cloud connection\n  \
      cyphonic-node peers                                 # tunnels: path type, RTT, bytes\n  \
      cyphonic-node peers --json"
)]
struct Cli {
    /// Configuration file (see deploy/node.example.toml).
    #[arg(long, global = true, env = "CYPHONIC_NODE_CONFIG")]
    config: Option<PathBuf>,
    /// The running daemon's control socket (default: `control_socket` of the config).
    #[arg(long, global = true, env = "CYPHONIC_NODE_SOCKET")]
    socket: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon: enroll on first start, log in, bring up the TUN and DNS, and
    /// serve until SIGINT/SIGTERM.
    Run,
    /// This node: FQDN, virtual and observed addresses, NAT flag, cloud connection.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Every tunnel: peer, virtual address, path type (direct/lan/relayed), remote
    /// address, RTT, bytes.
    Peers {
        #[arg(long)]
        json: bool,
    },
}

fn load_config(cli: &Cli) -> Result<NodeConfig> {
    match &cli.config {
        Some(p) => NodeConfig::load(p),
        None if Path::new(DEFAULT_CONFIG).exists() => NodeConfig::load(Path::new(DEFAULT_CONFIG)),
        None => Ok(NodeConfig::default()),
    }
}

fn socket_path(cli: &Cli) -> Result<PathBuf> {
    if let Some(s) = &cli.socket {
        return Ok(s.clone());
    }
    Ok(load_config(cli)?.control_socket)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match real_main(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cyphonic-node: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn real_main(cli: Cli) -> Result<()> {
    match &cli.command {
        Command::Run => {
            tracing_subscriber::fmt()
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_from_default_env()
                        .unwrap_or_else(|_| "info,quinn=warn".into()),
                )
                .init();
            let cfg = load_config(&cli)?;
            let mut rt = match cfg.threads {
                1 => tokio::runtime::Builder::new_current_thread(),
                _ => tokio::runtime::Builder::new_multi_thread(),
            };
            if cfg.threads > 1 {
                rt.worker_threads(cfg.threads);
            }
            let rt = rt
                .enable_all()
                .build()
                .context("cannot start the async runtime")?;
            tracing::info!(threads = cfg.threads, "runtime (0: one thread per CPU)");
            rt.block_on(cyphonic_node::daemon::run(cfg))
        }
        Command::Status { json } => {
            let v = control::query(&socket_path(&cli)?, "status")?;
            if *json {
                println!("{}", serde_json::to_string_pretty(&v)?);
                return Ok(());
            }
            let s: NodeStatus = serde_json::from_value(v)?;
            print_status(&s);
            Ok(())
        }
        Command::Peers { json } => {
            let v = control::query(&socket_path(&cli)?, "peers")?;
            if *json {
                println!("{}", serde_json::to_string_pretty(&v)?);
                return Ok(());
            }
            let peers: Vec<PeerStatus> = serde_json::from_value(v)?;
            print_peers(&peers);
            Ok(())
        }
    }
}

fn print_status(s: &NodeStatus) {
    println!("node        {} (NodeID {})", s.fqdn, s.node_id);
    println!("virtual     {}  {}", s.virtual_ipv4, s.virtual_ipv6);
    println!(
        "interface   {} (MTU {}, offload {})",
        s.tun,
        s.mtu,
        if s.offload { "on" } else { "off" }
    );
    if s.relay_only {
        println!("paths       relay only (peers.relay_only): every tunnel through the TRS");
    }
    println!(
        "listening   UDP {}  relay token {}",
        s.listen, s.relay_token
    );
    if let Some(d) = s.dns {
        println!("dns         {d}");
    }
    let f = &s.fast_path;
    println!(
        "reading     socket: {}, TUN: {} (handed to the runtime: socket {} times, TUN {} times)",
        f.socket, f.tun, f.socket_handovers, f.tun_handovers
    );
    if !f.policy.is_empty() {
        println!("scheduling  fast thread {}", f.policy);
    }
    let c = &s.cloud;
    let state = if c.connected {
        "registered"
    } else {
        "reconnecting"
    };
    println!(
        "cloud       {state} (AS {}, NMS {})",
        c.as_address.map(|a| a.to_string()).unwrap_or("-".into()),
        c.nms_address.map(|a| a.to_string()).unwrap_or("-".into())
    );
    if let Some(o) = c.observed {
        let nat = match c.nat {
            Some(true) => "behind NAT",
            Some(false) => "no NAT",
            None => "unknown",
        };
        println!("observed    {o} ({nat})");
    }
    if let Some(e) = &c.last_error {
        println!("last error  {e}");
    }
    println!("peers       {}", s.peers);
}

fn human_bytes(b: u64) -> String {
    const U: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut i = 0;
    while v >= 1024.0 && i < U.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", U[i])
    }
}

/// `HH:MM:SS` UTC of a unix time (when a tunnel came up or switched path).
fn utc_time(unix: u64) -> String {
    let s = unix % 86_400;
    format!("{:02}:{:02}:{:02}Z", s / 3600, (s / 60) % 60, s % 60)
}

/// Share of the tunnel's QUIC packets lost on the way (overlay packets were lost with
/// them: datagrams are not resent).
fn lost_percent(p: &PeerStatus) -> f64 {
    100.0 * p.quic_lost_packets as f64 / p.quic_sent_packets.max(1) as f64
}

fn print_peers(peers: &[PeerStatus]) {
    if peers.is_empty() {
        println!("no tunnels (a DNS query for a peer's name or a packet to its address opens one)");
        return;
    }
    println!(
        "{:<32} {:<15} {:<21} {:<5} {:<10} {:<40} {:>8} {:>10} {:>10} {:>6}",
        "PEER", "VIRTUAL", "PATH", "DATA", "SINCE", "REMOTE", "RTT", "SENT", "RECEIVED", "LOST"
    );
    for p in peers {
        let path = match p.switched_from {
            Some(from) => format!("{} (was {from})", p.path),
            None => p.path.to_string(),
        };
        println!(
            "{:<32} {:<15} {:<21} {:<5} {:<10} {:<40} {:>6.2}ms {:>10} {:>10} {:>5.1}%",
            p.fqdn,
            p.virtual_ipv4,
            path,
            p.data_channel,
            utc_time(p.since_unix),
            p.remote.to_string(),
            p.rtt_ms,
            human_bytes(p.tx_bytes),
            human_bytes(p.rx_bytes),
            lost_percent(p)
        );
    }
}
