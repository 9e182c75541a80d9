//! `cyphonic-cloud`: the CYPHONIC cloud (AS, NMS, TRS) and the operator's device
//! commands.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use cyphonic_proto::Fqdn;
use cyphonic_sched::ThreadPolicy;
use cyphonic_services::config::{CloudConfig, Role};
use cyphonic_services::store::{parse_mac, Device, DeviceId, DeviceKind, DeviceStatus, NewDevice};

const DEFAULT_CONFIG: &str = "/etc/cyphonic/cloud.toml";
const UP_STATE_DIR: &str = ".cyphonic-run";

#[derive(Parser)]
#[command(
    name = "cyphonic-cloud",
    version,
    about = "The CYPHONIC cloud: AS (authentication/enrollment), NMS (locations, route choice) \
             and TRS (relay), plus the operator's device commands",
    after_help = "Examples:\n  \
      cyphonic-cloud up                              # everything on this host, state in ./.cyphonic-run\n  \
      cyphonic-cloud --state-dir .cyphonic-run device add laptop\n  \
      cyphonic-cloud --config /etc/cyphonic/cloud.toml run\n  \
      cyphonic-cloud --config /etc/cyphonic/cloud.toml run --role trs\n  \
      cyphonic-cloud device add cam1 --adapter gw1.cyphonic.internal --mac 02:00:00:00:00:01\n  \
      cyphonic-cloud device revoke laptop"
)]
struct Cli {
    /// Configuration file (see deploy/cloud.example.toml). Default: /etc/cyphonic/cloud.toml
    /// when it exists, else built-in defaults.
    #[arg(long, global = true, env = "CYPHONIC_CLOUD_CONFIG")]
    config: Option<PathBuf>,
    /// Override `state_dir` (CA, certificates, SQLite database).
    #[arg(long, global = true, env = "CYPHONIC_STATE_DIR")]
    state_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the whole cloud on this host with the embedded defaults: initialises a
    /// deployment in ./.cyphonic-run on first start (CA, service certificates, SQLite).
    Up {
        /// UDP address to serve on.
        #[arg(long, default_value = "[::]:443")]
        listen: SocketAddr,
    },
    /// Run the services named in the configuration (or --role).
    Run {
        /// Serve only these roles (comma-separated: as,nms,trs).
        #[arg(long, value_delimiter = ',')]
        role: Vec<Role>,
    },
    /// Create the CA, the service certificates and the store if they do not exist yet.
    Init,
    /// Deployment facts: overlay domain, prefixes, devices.
    Status,
    /// Manage devices (nodes and general nodes).
    #[command(subcommand)]
    Device(DeviceCommand),
}

#[derive(Subcommand)]
enum DeviceCommand {
    /// Add a device and print its one-time enrollment token.
    Add(AddArgs),
    /// List every device.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Show one device.
    Show {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Issue a new enrollment token (the old unused one stops working).
    Token {
        name: String,
        /// Token lifetime in hours.
        #[arg(long)]
        hours: Option<u64>,
    },
    /// Revoke a device: its certificates join the CRL, new logins are refused at
    /// once, and running services close its connections.
    Revoke { name: String },
    /// Remove a revoked or unused device and free its name and addresses.
    Remove { name: String },
}

#[derive(Args)]
struct AddArgs {
    /// Device name: becomes <name>.<overlay domain>.
    name: String,
    /// The adapter that carries this general node (an unmodified device).
    #[arg(long, requires = "mac")]
    adapter: Option<Fqdn>,
    /// MAC address of the general node on the adapter's LAN.
    #[arg(long, requires = "adapter")]
    mac: Option<String>,
    /// Do not hand this device an IPv6 address on the adapter's LAN.
    #[arg(long)]
    no_ipv6: bool,
    /// Enrollment token lifetime in hours.
    #[arg(long)]
    hours: Option<u64>,
    /// Print the device and its token as JSON (for scripts).
    #[arg(long)]
    json: bool,
}

fn load_config(cli: &Cli) -> Result<CloudConfig> {
    let mut cfg = match &cli.config {
        Some(p) => CloudConfig::load(p)?,
        None if Path::new(DEFAULT_CONFIG).exists() => CloudConfig::load(Path::new(DEFAULT_CONFIG))?,
        None => CloudConfig::default(),
    };
    if let Some(dir) = &cli.state_dir {
        cfg.state_dir = dir.clone();
    }
    Ok(cfg)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,quinn=warn,sqlx=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    // The runtime's threads relay for the TRS; their scheduling policy is set once
    // the configuration is read (`thread_policy`).
    let policy = ThreadPolicy::pending("the cloud's runtime threads (TRS)");
    let (p1, p2) = (policy.clone(), policy.clone());
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .on_thread_start(move || p1.enter())
        .on_thread_stop(move || p2.leave())
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // This thread polls the top-level future (`block_on`): it is one of them too.
    policy.enter();
    match rt.block_on(run(cli, policy)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Apply `thread_policy` to the runtime's threads and say what is in force.
fn settle_threads(policy: &Arc<ThreadPolicy>, cfg: &CloudConfig) {
    policy.configure(cfg.thread_policy);
    policy.spawn_auto(&tokio::runtime::Handle::current());
    tracing::info!(
        policy = %policy.describe(),
        "runtime threads' scheduling (thread_policy)"
    );
}

async fn run(cli: Cli, policy: Arc<ThreadPolicy>) -> Result<()> {
    match &cli.command {
        Command::Up { listen } => {
            let mut cfg = load_config(&cli)?;
            if cli.state_dir.is_none() && cli.config.is_none() {
                cfg.state_dir = PathBuf::from(UP_STATE_DIR);
            }
            cfg.listen = *listen;
            settle_threads(&policy, &cfg);
            cyphonic_services::cloud::run_until_signal(cfg, true).await
        }
        Command::Run { role } => {
            let mut cfg = load_config(&cli)?;
            if !role.is_empty() {
                cfg.roles = role.clone();
            }
            settle_threads(&policy, &cfg);
            cyphonic_services::cloud::run_until_signal(cfg, false).await
        }
        Command::Init => {
            let cfg = load_config(&cli)?;
            let state = cyphonic_services::cloud::State::prepare(&cfg).await?;
            println!("deployment ready in {}", cfg.state_dir.display());
            println!("  overlay domain {}", state.deployment.overlay_domain);
            println!("  virtual IPv4   {}", state.deployment.ipv4_prefix);
            println!("  virtual IPv6   {}", state.deployment.ipv6_prefix);
            Ok(())
        }
        Command::Status => {
            let cfg = load_config(&cli)?;
            let state = cyphonic_services::cloud::State::prepare(&cfg).await?;
            let devices = state.store.devices().await?;
            let active = devices.iter().filter(|d| d.is_active()).count();
            println!("state dir       {}", cfg.state_dir.display());
            println!("store           {}", redact(&cfg.database_url()));
            println!("overlay domain  {}", state.deployment.overlay_domain);
            println!("virtual IPv4    {}", state.deployment.ipv4_prefix);
            println!("virtual IPv6    {}", state.deployment.ipv6_prefix);
            println!(
                "devices         {} ({} active, {} revoked)",
                devices.len(),
                active,
                devices.len() - active
            );
            Ok(())
        }
        Command::Device(cmd) => device(&cli, cmd).await,
    }
}

/// The database URL without a password.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.find(':') {
                Some(c) => format!("{}{}:***{}", &url[..s + 3], &creds[..c], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

fn print_device(d: &Device) {
    println!("name         {}", d.device_id);
    println!("fqdn         {}", d.fqdn);
    println!("node id      {}", d.node_id);
    println!("virtual IPv4 {}", d.virtual_ipv4);
    println!("virtual IPv6 {}", d.virtual_ipv6);
    match &d.kind {
        DeviceKind::Node => println!("kind         node"),
        DeviceKind::GeneralNode { adapter, mac } => {
            println!("kind         general node on {adapter}, MAC {mac}");
            println!("IPv6 on LAN  {}", if d.ipv6_enabled { "yes" } else { "no" });
        }
    }
    match d.status {
        DeviceStatus::Active => println!("status       active"),
        DeviceStatus::Revoked { at } => println!("status       revoked (unix time {at})"),
    }
}

fn device_json(d: &Device) -> serde_json::Value {
    let (kind, adapter, mac) = match &d.kind {
        DeviceKind::Node => ("node", None, None),
        DeviceKind::GeneralNode { adapter, mac } => (
            "general_node",
            Some(adapter.to_string()),
            Some(mac.to_string()),
        ),
    };
    serde_json::json!({
        "name": d.device_id.as_str(),
        "fqdn": d.fqdn.as_str(),
        "node_id": d.node_id.to_string(),
        "virtual_ipv4": d.virtual_ipv4.to_string(),
        "virtual_ipv6": d.virtual_ipv6.to_string(),
        "kind": kind,
        "adapter": adapter,
        "mac": mac,
        "ipv6_enabled": d.ipv6_enabled,
        "revoked": !d.is_active(),
    })
}

async fn device(cli: &Cli, cmd: &DeviceCommand) -> Result<()> {
    let cfg = load_config(cli)?;
    let state = cyphonic_services::cloud::State::prepare(&cfg).await?;
    let store = &state.store;
    let hours =
        |h: Option<u64>| Duration::from_secs(3600 * h.unwrap_or(cfg.enrollment_token_hours));
    match cmd {
        DeviceCommand::Add(a) => {
            let id = DeviceId::new(&a.name)?;
            let mut new = match (&a.adapter, &a.mac) {
                (Some(adapter), Some(mac)) => {
                    NewDevice::general_node(id, adapter.clone(), parse_mac(mac)?)
                }
                _ => NewDevice::node(id),
            };
            new.ipv6_enabled = !a.no_ipv6;
            new.token_ttl = hours(a.hours);
            let (d, token) = store.add_device(new).await?;
            if a.json {
                let mut v = device_json(&d);
                v["enrollment_token"] = serde_json::Value::String(token.secret.clone());
                println!("{}", serde_json::to_string_pretty(&v)?);
                return Ok(());
            }
            print_device(&d);
            println!();
            println!(
                "enrollment token (valid {} h, shown once):",
                new_hours(a.hours, &cfg)
            );
            println!("  {}", token.secret);
            Ok(())
        }
        DeviceCommand::List { json } => {
            let devices = store.devices().await?;
            if *json {
                let v: Vec<_> = devices.iter().map(device_json).collect();
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                println!(
                    "{:<20} {:<40} {:<16} {:<8}",
                    "NAME", "FQDN", "VIRTUAL IPv4", "STATUS"
                );
                for d in &devices {
                    println!(
                        "{:<20} {:<40} {:<16} {:<8}",
                        d.device_id.as_str(),
                        d.fqdn.as_str(),
                        d.virtual_ipv4,
                        if d.is_active() { "active" } else { "revoked" }
                    );
                }
            }
            Ok(())
        }
        DeviceCommand::Show { name, json } => {
            let d = store.device(name).await?;
            if *json {
                println!("{}", serde_json::to_string_pretty(&device_json(&d))?);
            } else {
                print_device(&d);
            }
            Ok(())
        }
        DeviceCommand::Token { name, hours: h } => {
            let d = store.device(name).await?;
            if !d.is_active() {
                bail!("device {name} is revoked: add it again under a new name");
            }
            let token = store.new_enrollment_token(name, hours(*h)).await?;
            println!(
                "enrollment token for {} (valid {} h, shown once):",
                d.fqdn,
                new_hours(*h, &cfg)
            );
            println!("  {}", token.secret);
            Ok(())
        }
        DeviceCommand::Revoke { name } => {
            let (d, serials) = store.revoke_device(name).await?;
            state.revoke_serials(&serials).context("updating the CRL")?;
            println!(
                "revoked {} ({} certificate(s) added to the CRL); running services close its connections",
                d.fqdn,
                serials.len()
            );
            Ok(())
        }
        DeviceCommand::Remove { name } => {
            let (d, serials) = store.remove_device(name).await?;
            state.revoke_serials(&serials).context("updating the CRL")?;
            println!("removed {}; its name and addresses are free", d.fqdn);
            Ok(())
        }
    }
}

fn new_hours(h: Option<u64>, cfg: &CloudConfig) -> u64 {
    h.unwrap_or(cfg.enrollment_token_hours)
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn passwords_are_not_printed() {
        assert_eq!(redact("postgres://u:secret@h/db"), "postgres://u:***@h/db");
        assert_eq!(redact("sqlite:///x.db"), "sqlite:///x.db");
    }
}
