//! CYPHONIC on the bench: the real `cyphonic-cloud` and `cyphonic-node` binaries
//! started in bench hosts, with their state under the bench directory, and the
//! checks the end-to-end tests share (ping by name, checksummed TCP, UDP exchange).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::proc::run_checked;
use crate::{binary, Host, Proc};

/// The overlay domain the bench deployments use.
pub const DOMAIN: &str = "cyphonic.internal";

/// The FQDN of a device name.
pub fn fqdn(name: &str) -> String {
    format!("{name}.{DOMAIN}")
}

/// A `cyphonic-cloud` (AS, NMS and TRS in one process, SQLite) on a bench host.
pub struct CloudProc {
    pub host: Host,
    pub proc: Proc,
    pub dir: PathBuf,
    pub config: PathBuf,
    /// UDP port it serves on.
    pub port: u16,
}

impl CloudProc {
    /// Initialise a deployment advertising the host's addresses and start serving.
    pub fn start(host: &Host) -> Result<CloudProc> {
        Self::start_on(host, 443)
    }

    pub fn start_on(host: &Host, port: u16) -> Result<CloudProc> {
        let dir = host.bench_dir().join(format!("cloud-{}", host.name));
        std::fs::create_dir_all(&dir)?;
        let config = dir.join("cloud.toml");
        let mut toml = format!(
            "state_dir = \"{}\"\nlisten = \"[::]:{port}\"\n\n[advertise]\nport = {port}\n",
            dir.join("state").display()
        );
        if let Some(a) = host.ipv4 {
            toml.push_str(&format!("ipv4 = \"{a}\"\n"));
        }
        if let Some(a) = host.ipv6 {
            toml.push_str(&format!("ipv6 = \"{a}\"\n"));
        }
        toml.push_str("\n[timers]\nconfirmation_timeout_ms = 3000\n");
        std::fs::write(&config, toml)?;
        let cloud = binary("cyphonic-cloud")?;
        host.run_ok(&cloud, ["--config", &config.to_string_lossy(), "init"])?;
        let proc = host.spawn(
            &cloud,
            ["--config", &config.to_string_lossy(), "run"],
            &format!("cloud-{}.log", host.name),
        )?;
        proc.wait_for_log("cloud serving", Duration::from_secs(20))?;
        Ok(CloudProc {
            host: host.clone(),
            proc,
            dir,
            config,
            port,
        })
    }

    fn cli(&self) -> Result<Command> {
        let mut c = Command::new(binary("cyphonic-cloud")?);
        c.arg("--config").arg(&self.config);
        Ok(c)
    }

    /// `device add <name>`: the one-time enrollment token.
    pub fn add_device(&self, name: &str) -> Result<String> {
        let mut c = self.cli()?;
        c.args(["device", "add", name, "--json"]);
        let out = run_checked(c, None, Duration::from_secs(20))?;
        let v: Value = serde_json::from_slice(&out.stdout)
            .context("`device add --json` did not print JSON")?;
        v["enrollment_token"]
            .as_str()
            .map(str::to_owned)
            .context("no enrollment_token in `device add --json`")
    }

    /// `device revoke <name>`.
    pub fn revoke(&self, name: &str) -> Result<()> {
        let mut c = self.cli()?;
        c.args(["device", "revoke", name]);
        run_checked(c, None, Duration::from_secs(20))?;
        Ok(())
    }

    pub fn ca_cert(&self) -> PathBuf {
        self.dir.join("state/ca/ca.crt")
    }

    /// The address a host should use to reach the cloud (IPv4 when both have it).
    pub fn address_for(&self, from: &Host) -> Result<SocketAddr> {
        if let (Some(a), Some(_)) = (self.host.ipv4, from.ipv4) {
            return Ok(SocketAddr::new(a.into(), self.port));
        }
        if let (Some(a), Some(_)) = (self.host.ipv6, from.ipv6) {
            return Ok(SocketAddr::new(a.into(), self.port));
        }
        bail!(
            "host {} shares no address family with the cloud host {}",
            from.name,
            self.host.name
        )
    }
}

/// Options of a node daemon on the bench.
#[derive(Debug, Clone)]
pub struct NodeOpts {
    /// UDP port of the node's socket.
    pub port: u16,
    /// `resolv.conf` the host starts with (the node rewrites it and restores it).
    pub resolv_conf: String,
    pub idle_secs: u64,
    /// `peers.relay_only`: every tunnel through the TRS.
    pub relay_only: bool,
    /// `peers.fast_data` (the daemon's default, on, when `None`).
    pub fast_data: Option<bool>,
}

impl Default for NodeOpts {
    fn default() -> Self {
        NodeOpts {
            port: 443,
            resolv_conf: format!("nameserver {}\n", crate::DNS_SERVER_V4),
            idle_secs: 300,
            relay_only: false,
            fast_data: None,
        }
    }
}

/// A `cyphonic-node` daemon on a bench host, enrolled on first start.
pub struct NodeProc {
    pub host: Host,
    pub name: String,
    pub fqdn: String,
    pub proc: Proc,
    pub socket: PathBuf,
    pub dir: PathBuf,
}

impl NodeProc {
    pub fn start(host: &Host, cloud: &CloudProc, name: &str) -> Result<NodeProc> {
        Self::start_with(host, cloud, name, &NodeOpts::default())
    }

    pub fn start_with(
        host: &Host,
        cloud: &CloudProc,
        name: &str,
        opts: &NodeOpts,
    ) -> Result<NodeProc> {
        let token = cloud.add_device(name)?;
        let dir = host.bench_dir().join(format!("node-{name}"));
        std::fs::create_dir_all(&dir)?;
        host.set_resolv_conf(&opts.resolv_conf)?;
        let socket = dir.join("control.sock");
        let config = dir.join("node.toml");
        let toml = format!(
            "state_dir = \"{state}\"\ncloud = \"{cloud_addr}\"\nca_cert = \"{ca}\"\n\
             device = \"{name}\"\nenrollment_token = \"{token}\"\n\
             control_socket = \"{sock}\"\nlisten = \"[::]:{port}\"\n\n\
             [dns]\nhost_config = \"resolv-conf\"\n\n[peers]\nidle_secs = {idle}\n\
             relay_only = {relay_only}\n{fast_data}",
            state = dir.join("state").display(),
            cloud_addr = cloud.address_for(host)?,
            ca = cloud.ca_cert().display(),
            sock = socket.display(),
            port = opts.port,
            idle = opts.idle_secs,
            relay_only = opts.relay_only,
            fast_data = opts
                .fast_data
                .map(|f| format!("fast_data = {f}\n"))
                .unwrap_or_default(),
        );
        std::fs::write(&config, toml)?;
        let proc = host.spawn(
            binary("cyphonic-node")?,
            ["--config", &config.to_string_lossy(), "run"],
            &format!("node-{name}.log"),
        )?;
        proc.wait_for_log("node ready", Duration::from_secs(30))?;
        Ok(NodeProc {
            host: host.clone(),
            name: name.to_owned(),
            fqdn: fqdn(name),
            proc,
            socket,
            dir,
        })
    }

    fn query(&self, what: &str) -> Result<Value> {
        let mut c = Command::new(binary("cyphonic-node")?);
        c.arg("--socket").arg(&self.socket).args([what, "--json"]);
        let out = run_checked(c, None, Duration::from_secs(10))?;
        serde_json::from_slice(&out.stdout)
            .with_context(|| format!("`cyphonic-node {what} --json` did not print JSON"))
    }

    /// `cyphonic-node status --json`.
    pub fn status(&self) -> Result<Value> {
        self.query("status")
    }

    /// `cyphonic-node peers --json`.
    pub fn peers(&self) -> Result<Vec<Value>> {
        match self.query("peers")? {
            Value::Array(v) => Ok(v),
            other => bail!("`peers --json` is not a list: {other}"),
        }
    }

    /// This node's row for `peer` (an FQDN) in `peers`.
    pub fn peer(&self, peer: &str) -> Result<Option<Value>> {
        Ok(self
            .peers()?
            .into_iter()
            .find(|p| p["fqdn"].as_str() == Some(peer)))
    }

    pub fn virtual_ipv4(&self) -> Result<Ipv4Addr> {
        self.status()?["virtual_ipv4"]
            .as_str()
            .context("no virtual_ipv4 in status")?
            .parse()
            .context("virtual_ipv4 is not an address")
    }

    /// The path type (`direct`, `lan`, `relayed`) of the tunnel to `peer`.
    pub fn path_to(&self, peer: &str) -> Result<String> {
        let p = self
            .peer(peer)?
            .with_context(|| format!("{} has no tunnel to {peer}", self.name))?;
        Ok(p["path"].as_str().unwrap_or_default().to_owned())
    }

    /// Pings `target` (a name or address) `count` times; true when all answered.
    pub fn ping(&self, target: &str, count: u32, extra: &[&str]) -> Result<bool> {
        let count = count.to_string();
        let mut args: Vec<&str> = vec!["-n", "-c", &count, "-i", "0.2", "-W", "2"];
        args.extend_from_slice(extra);
        args.push(target);
        let out = self
            .host
            .run_timeout("ping", &args, Duration::from_secs(30))?;
        let text = String::from_utf8_lossy(&out.stdout);
        Ok(out.status.success() && text.contains(&format!("{count} received")))
    }

    /// Stop the daemon gracefully (SIGTERM) and wait for it.
    pub fn stop(&self) -> Result<()> {
        self.proc.stop()?;
        Ok(())
    }
}

/// Run the probe with `args` on `host`, bounded, and parse its JSON line.
pub fn probe(host: &Host, args: &[&str], timeout: Duration) -> Result<Value> {
    let out = host.run_timeout(binary("cyphonic-probe")?, args, timeout)?;
    if !out.status.success() {
        bail!(
            "cyphonic-probe {args:?} on {} failed: {}",
            host.name,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().last().unwrap_or_default();
    serde_json::from_str(line).with_context(|| format!("probe printed {text:?}"))
}

/// Send `bytes` over TCP from `from` to `to_name:port` (a name resolved through the
/// overlay DNS) and check the receiver got exactly the same bytes (SHA-256).
pub fn tcp_transfer(from: &Host, to: &Host, to_name: &str, port: u16, bytes: u64) -> Result<()> {
    let sink = to.spawn(
        binary("cyphonic-probe")?,
        [
            "--timeout",
            "60",
            "tcp-sink",
            "--listen",
            &format!("[::]:{port}"),
        ],
        &format!("tcp-sink-{}-{port}.log", to.name),
    )?;
    std::thread::sleep(Duration::from_millis(300));
    let sent = probe(
        from,
        &[
            "--timeout",
            "60",
            "tcp-send",
            "--to",
            &format!("{to_name}:{port}"),
            "--bytes",
            &bytes.to_string(),
        ],
        Duration::from_secs(70),
    )?;
    sink.wait(Duration::from_secs(20))?;
    let log = sink.log_text();
    let got: Value = log
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .with_context(|| format!("tcp-sink printed no result: {log}"))?;
    if got["bytes"] != sent["bytes"] || got["sha256"] != sent["sha256"] {
        bail!("TCP transfer corrupted: sent {sent}, received {got}");
    }
    Ok(())
}

/// A UDP exchange: `count` datagrams from `from` to an echo server on `to`, reached
/// at `to_name`; returns how many came back.
pub fn udp_exchange(from: &Host, to: &Host, to_name: &str, port: u16, count: u32) -> Result<u64> {
    let _echo = to.spawn(
        binary("cyphonic-probe")?,
        [
            "--timeout",
            "30",
            "udp-echo",
            "--listen",
            &format!("[::]:{port}"),
        ],
        &format!("udp-echo-{}-{port}.log", to.name),
    )?;
    std::thread::sleep(Duration::from_millis(300));
    let r = probe(
        from,
        &[
            "--timeout",
            "15",
            "udp-ping",
            "--to",
            &format!("{to_name}:{port}"),
            "--count",
            &count.to_string(),
        ],
        Duration::from_secs(25),
    )?;
    r["received"].as_u64().context("udp-ping printed no count")
}

/// Resolve `name` on `host` through its system resolver; the addresses and how long
/// it took.
pub fn resolve(host: &Host, name: &str) -> Result<(Vec<IpAddr>, Duration)> {
    let t = Instant::now();
    let out = host.run_timeout(
        binary("cyphonic-probe")?,
        ["--timeout", "10", "resolve", "--name", name],
        Duration::from_secs(15),
    )?;
    let took = t.elapsed();
    if !out.status.success() {
        return Ok((Vec::new(), took));
    }
    let v: Value = serde_json::from_slice(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .last()
            .unwrap_or_default()
            .as_bytes(),
    )?;
    let addrs = v["addrs"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| {
                    x.as_str()?
                        .parse::<SocketAddr>()
                        .ok()
                        .map(|s| s.ip())
                        .or_else(|| x.as_str()?.parse().ok())
                })
                .collect()
        })
        .unwrap_or_default();
    Ok((addrs, took))
}

/// Wait until `check` is true, polling every 200 ms, for at most `timeout`.
pub fn eventually(timeout: Duration, mut check: impl FnMut() -> Result<bool>) -> Result<bool> {
    let deadline = Instant::now() + timeout;
    loop {
        if check()? {
            return Ok(true);
        }
        if Instant::now() >= deadline {
            return Ok(false);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A checksummed TCP transfer running in the background (for flows that must
/// survive something happening meanwhile).
pub struct TcpFlow {
    sink: Proc,
    send: Proc,
}

impl TcpFlow {
    /// Start a transfer of `bytes` from `from` to `to` (reached at `to_name`).
    pub fn start(from: &Host, to: &Host, to_name: &str, port: u16, bytes: u64) -> Result<TcpFlow> {
        let sink = to.spawn(
            binary("cyphonic-probe")?,
            [
                "--timeout",
                "120",
                "tcp-sink",
                "--listen",
                &format!("[::]:{port}"),
            ],
            &format!("flow-sink-{}-{port}.log", to.name),
        )?;
        sink.wait_for_log("listening", Duration::from_secs(10))?;
        let send = from.spawn(
            binary("cyphonic-probe")?,
            [
                "--timeout",
                "120",
                "tcp-send",
                "--to",
                &format!("{to_name}:{port}"),
                "--bytes",
                &bytes.to_string(),
            ],
            &format!("flow-send-{}-{port}.log", from.name),
        )?;
        Ok(TcpFlow { sink, send })
    }

    /// Wait for the end; an error unless the receiver got exactly what was sent.
    pub fn finish(self, timeout: Duration) -> Result<Value> {
        let status = self.send.wait(timeout)?;
        let sent = last_json(&self.send.log_text()).with_context(|| {
            format!(
                "sender printed no result ({status}): {}",
                self.send.log_text()
            )
        })?;
        self.sink.wait(Duration::from_secs(20))?;
        let got = last_json(&self.sink.log_text())
            .with_context(|| format!("receiver printed no result: {}", self.sink.log_text()))?;
        if got["bytes"] != sent["bytes"] || got["sha256"] != sent["sha256"] {
            bail!("TCP flow corrupted: sent {sent}, received {got}");
        }
        Ok(sent)
    }
}

fn last_json(text: &str) -> Option<Value> {
    text.lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
}

/// `ping -D` in the background: the arrival time of every reply, to measure how long
/// the overlay was interrupted.
pub struct PingStream {
    proc: Proc,
}

impl PingStream {
    /// Ping `target` every `interval_ms` (root may go below 200 ms), `count` times.
    pub fn start(host: &Host, target: &str, interval_ms: u32, count: u32) -> Result<PingStream> {
        let interval = format!("{:.3}", f64::from(interval_ms) / 1000.0);
        let proc = host.spawn(
            "ping",
            [
                "-D",
                "-n",
                "-W",
                "1",
                "-i",
                &interval,
                "-c",
                &count.to_string(),
                target,
            ],
            &format!("ping-{}-{}.log", host.name, target.replace(':', "_")),
        )?;
        Ok(PingStream { proc })
    }

    /// Unix times (seconds) of the replies so far.
    pub fn replies(&self) -> Vec<f64> {
        self.proc
            .log_text()
            .lines()
            .filter(|l| l.contains("bytes from"))
            .filter_map(|l| l.strip_prefix('[')?.split(']').next()?.parse().ok())
            .collect()
    }

    /// The interruption after `t` (unix time): the longest silence between replies
    /// from `t` on, i.e. from the last reply before the outage to the first packet
    /// through the tunnel again. None when no reply came after `t`.
    pub fn interruption_after(&self, t: f64) -> Option<f64> {
        let replies = self.replies();
        let mut prev = replies
            .iter()
            .rev()
            .find(|r| **r <= t)
            .copied()
            .unwrap_or(t);
        let mut worst: Option<f64> = None;
        for r in replies.into_iter().filter(|r| *r > t) {
            worst = Some(worst.unwrap_or(0.0).max(r - prev));
            prev = r;
        }
        worst
    }

    pub fn stop(&self) {
        let _ = self.proc.stop();
    }
}

/// The current unix time in seconds.
pub fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}
