//! `cyphonic-probe`: the traffic tool the namespace tests run on bench hosts.
//!
//! Every operation is bounded by `--timeout`; on success it prints one JSON line on
//! stdout (per accepted connection for `tcp-sink`) and exits 0; on failure it prints
//! a message on stderr and exits 1 (`udp-ping` still prints its JSON line first).
//! Servers (`tcp-sink`, `udp-echo`, `udp-observe`) print `cyphonic-probe: listening on
//! ADDR` on stderr once bound, for `Proc::wait_for_log("listening")`.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs, UdpSocket};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use cyphonic_tests::payload::{hex, Pattern};
use serde_json::json;
use sha2::{Digest, Sha256};

#[derive(Parser)]
#[command(
    name = "cyphonic-probe",
    about = "Traffic probes for the CYPHONIC namespace bench"
)]
struct Cli {
    /// Upper bound of the whole operation, in seconds.
    #[arg(long, global = true, default_value_t = 10.0)]
    timeout: f64,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Accept connections, read each to EOF, print {"bytes","sha256","peer"} per connection.
    TcpSink {
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long, default_value_t = 1)]
        count: u32,
    },
    /// Connect (retrying until the timeout), send N pseudo-random bytes, print {"bytes","sha256","secs"}.
    TcpSend {
        /// HOST:PORT; HOST may be a name (system resolver).
        #[arg(long)]
        to: String,
        #[arg(long)]
        bytes: u64,
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Echo every datagram back until the timeout (default 60 s here); prints {"echoed"}.
    UdpEcho {
        #[arg(long)]
        listen: SocketAddr,
    },
    /// Send N datagrams, wait for echoes, print {"sent","received","rtt_ms_avg"}.
    UdpPing {
        #[arg(long)]
        to: String,
        #[arg(long, default_value_t = 5)]
        count: u32,
    },
    /// Answer every datagram with "SRC ip:port" of its sender until the timeout
    /// (default 60 s here); prints {"answered"}.
    UdpObserve {
        #[arg(long)]
        listen: SocketAddr,
    },
    /// From local port P, ask an observer what source it sees; prints {"observed"}.
    UdpHello {
        #[arg(long)]
        to: String,
        #[arg(long, default_value_t = 0)]
        from_port: u16,
    },
    /// Resolve a name with the system resolver; prints {"addrs":[...]}.
    Resolve {
        #[arg(long)]
        name: String,
    },
}

fn main() {
    let cli = Cli::parse();
    // Listeners default to a longer life than clients unless --timeout was given.
    let explicit = std::env::args().any(|a| a == "--timeout" || a.starts_with("--timeout="));
    let secs = match (&cli.cmd, explicit) {
        (Cmd::UdpEcho { .. } | Cmd::UdpObserve { .. }, false) => 60.0,
        _ => cli.timeout,
    };
    if !(secs.is_finite() && secs > 0.0 && secs <= 3600.0) {
        eprintln!("cyphonic-probe: --timeout must be in (0, 3600] seconds");
        std::process::exit(2);
    }
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let r = match cli.cmd {
        Cmd::TcpSink { listen, count } => tcp_sink(listen, count, deadline),
        Cmd::TcpSend { to, bytes, seed } => tcp_send(&to, bytes, seed, deadline),
        Cmd::UdpEcho { listen } => udp_serve(listen, deadline, false),
        Cmd::UdpPing { to, count } => udp_ping(&to, count, deadline),
        Cmd::UdpObserve { listen } => udp_serve(listen, deadline, true),
        Cmd::UdpHello { to, from_port } => udp_hello(&to, from_port, deadline),
        Cmd::Resolve { name } => resolve_cmd(&name),
    };
    if let Err(e) = r {
        eprintln!("cyphonic-probe: {e:#}");
        std::process::exit(1);
    }
}

fn left(deadline: Instant) -> Result<Duration> {
    let d = deadline.saturating_duration_since(Instant::now());
    if d.is_zero() {
        bail!("timed out");
    }
    Ok(d.max(Duration::from_millis(1)))
}

fn resolve(to: &str) -> Result<Vec<SocketAddr>> {
    let addrs: Vec<_> = to
        .to_socket_addrs()
        .with_context(|| format!("cannot resolve {to:?}"))?
        .collect();
    if addrs.is_empty() {
        bail!("{to:?} resolved to no address");
    }
    Ok(addrs)
}

fn resolve_cmd(name: &str) -> Result<()> {
    let addrs: Vec<String> = resolve(&format!("{name}:0"))?
        .iter()
        .map(|a| a.ip().to_string())
        .collect();
    println!("{}", json!({ "addrs": addrs }));
    Ok(())
}

fn tcp_sink(listen: SocketAddr, count: u32, deadline: Instant) -> Result<()> {
    let l = TcpListener::bind(listen).with_context(|| format!("cannot listen on {listen}"))?;
    l.set_nonblocking(true)?;
    eprintln!("cyphonic-probe: listening on {listen}");
    for i in 0..count {
        let (mut s, peer) = loop {
            match l.accept() {
                Ok(x) => break x,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    left(deadline).with_context(|| {
                        format!("no connection {} of {count} on {listen}", i + 1)
                    })?;
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => return Err(e).context("accept"),
            }
        };
        s.set_nonblocking(false)?;
        let mut h = Sha256::new();
        let mut n: u64 = 0;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            s.set_read_timeout(Some(left(deadline).context("reading to EOF")?))?;
            let k = s
                .read(&mut buf)
                .with_context(|| format!("reading from {peer} after {n} bytes"))?;
            if k == 0 {
                break;
            }
            h.update(&buf[..k]);
            n += k as u64;
        }
        println!(
            "{}",
            json!({ "bytes": n, "sha256": hex(&h.finalize()), "peer": peer.to_string() })
        );
        std::io::stdout().flush()?;
    }
    Ok(())
}

fn tcp_send(to: &str, bytes: u64, seed: u64, deadline: Instant) -> Result<()> {
    let start = Instant::now();
    let mut last_err = None;
    let mut stream = None;
    'outer: while Instant::now() < deadline {
        let addrs = match resolve(to) {
            Ok(a) => a,
            Err(e) => {
                last_err = Some(e);
                std::thread::sleep(Duration::from_millis(200));
                continue;
            }
        };
        for a in addrs {
            let Ok(t) = left(deadline) else { break 'outer };
            match TcpStream::connect_timeout(&a, t) {
                Ok(s) => {
                    stream = Some(s);
                    break 'outer;
                }
                Err(e) => last_err = Some(anyhow::Error::new(e).context(format!("connect {a}"))),
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let Some(mut s) = stream else {
        return Err(last_err.unwrap_or_else(|| anyhow::anyhow!("timed out")))
            .with_context(|| format!("cannot connect to {to}"));
    };
    let mut p = Pattern::new(seed);
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut sent: u64 = 0;
    while sent < bytes {
        let n = (bytes - sent).min(buf.len() as u64) as usize;
        p.fill(&mut buf[..n]);
        h.update(&buf[..n]);
        s.set_write_timeout(Some(left(deadline).context("sending")?))?;
        s.write_all(&buf[..n])
            .with_context(|| format!("sending to {to} after {sent} bytes"))?;
        sent += n as u64;
    }
    s.shutdown(Shutdown::Write)?;
    // Wait for the sink to close: then it has read everything.
    loop {
        s.set_read_timeout(Some(
            left(deadline).context("waiting for the sink to close")?,
        ))?;
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => return Err(e).context("waiting for the sink to close"),
        }
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{}",
        json!({ "bytes": sent, "sha256": hex(&h.finalize()), "secs": secs })
    );
    Ok(())
}

fn udp_serve(listen: SocketAddr, deadline: Instant, observe: bool) -> Result<()> {
    let s = UdpSocket::bind(listen).with_context(|| format!("cannot bind {listen}"))?;
    eprintln!("cyphonic-probe: listening on {listen}");
    let mut buf = vec![0u8; 65536];
    let mut n: u64 = 0;
    while let Ok(t) = left(deadline) {
        s.set_read_timeout(Some(t.min(Duration::from_millis(500))))?;
        match s.recv_from(&mut buf) {
            Ok((k, from)) => {
                let reply: Vec<u8> = if observe {
                    format!("SRC {from}").into_bytes()
                } else {
                    buf[..k].to_vec()
                };
                // A failed reply (e.g. unreachable) is not fatal for a server.
                let _ = s.send_to(&reply, from);
                n += 1;
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::ConnectionRefused
                ) => {}
            Err(e) => return Err(e).context("recv"),
        }
    }
    let key = if observe { "answered" } else { "echoed" };
    println!("{}", json!({ key: n }));
    Ok(())
}

fn bind_for(target: &SocketAddr, port: u16) -> Result<UdpSocket> {
    let local: SocketAddr = if target.is_ipv4() {
        ([0, 0, 0, 0], port).into()
    } else {
        ([0u16; 8], port).into()
    };
    UdpSocket::bind(local).with_context(|| format!("cannot bind {local}"))
}

fn udp_ping(to: &str, count: u32, deadline: Instant) -> Result<()> {
    let target = resolve(to)?[0];
    let s = bind_for(&target, 0)?;
    s.connect(target)
        .with_context(|| format!("connect {target}"))?;
    // Spread the attempts over the time available, at most 1 s per datagram.
    let per = (left(deadline)? / count.max(1)).min(Duration::from_secs(1));
    let (mut received, mut rtt_total) = (0u32, 0f64);
    let mut buf = [0u8; 2048];
    for seq in 0..count {
        let msg = format!("cyphonic-probe ping {seq}");
        let sent_at = Instant::now();
        let _ = s.send(msg.as_bytes());
        let until = (sent_at + per).min(deadline);
        while let Some(t) = until
            .checked_duration_since(Instant::now())
            .filter(|t| !t.is_zero())
        {
            s.set_read_timeout(Some(t))?;
            match s.recv(&mut buf) {
                Ok(k) if &buf[..k] == msg.as_bytes() => {
                    received += 1;
                    rtt_total += sent_at.elapsed().as_secs_f64() * 1000.0;
                    break;
                }
                Ok(_) => {} // a late echo of an earlier datagram
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                    std::thread::sleep(t.min(Duration::from_millis(50)));
                }
                Err(_) => break,
            }
        }
    }
    let avg = if received > 0 {
        rtt_total / received as f64
    } else {
        0.0
    };
    println!(
        "{}",
        json!({ "sent": count, "received": received, "rtt_ms_avg": avg })
    );
    if received == 0 {
        bail!("no echo from {target} ({count} datagrams)");
    }
    Ok(())
}

fn udp_hello(to: &str, from_port: u16, deadline: Instant) -> Result<()> {
    let target = resolve(to)?[0];
    let s = bind_for(&target, from_port)?;
    let mut buf = [0u8; 512];
    while let Ok(t) = left(deadline) {
        let _ = s.send_to(b"HELLO", target);
        s.set_read_timeout(Some(t.min(Duration::from_millis(300))))?;
        match s.recv_from(&mut buf) {
            Ok((k, from)) if from == target => {
                let text = String::from_utf8_lossy(&buf[..k]);
                let Some(observed) = text.strip_prefix("SRC ") else {
                    bail!("unexpected answer from {from}: {text:?}");
                };
                println!("{}", json!({ "observed": observed }));
                return Ok(());
            }
            Ok(_) => {}
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
    bail!("no answer from observer {target}")
}
