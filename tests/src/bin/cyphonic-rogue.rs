//! `cyphonic-rogue`: an enrolled, authenticated node that misbehaves on purpose, for
//! the security tests of SPEC §10 on the namespace bench. It is built on the node
//! library (real enrollment, login, registration, QUIC with real certificates) and
//! prints one JSON line with what happened.
//!
//! - `spoof`: sets up a legitimate tunnel to `--peer` through NMS, sends an ICMP echo
//!   request from its own virtual address (the reply must come back), then one from
//!   `--spoof-src` (another node's address: the peer must drop it, so no reply).
//! - `impersonate`: dials `--peer` at `--addr` directly, without any Route Direction,
//!   presenting its own certificate but claiming the path NMS named for the pair
//!   `--path-initiator` → `--peer`; the peer must refuse the Tunnel Request.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use cyphonic_node::cloud;
use cyphonic_node::endpoint::{NodeEndpoint, TransportSettings};
use cyphonic_pki::rpc;
use cyphonic_pki::{Credentials, Role, TrustAnchor};
use cyphonic_proto::body::{DirectionRequest, DirectionTarget, ProcessCode};
use cyphonic_proto::{
    encode_capsule_into, ApplicationId, Body, CapsuleRef, Flag, Fqdn, Message, PathId,
};
use serde_json::json;

#[derive(Parser)]
#[command(
    name = "cyphonic-rogue",
    about = "A misbehaving node for CYPHONIC's security tests"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Args)]
struct Common {
    /// The cloud (AS) address.
    #[arg(long)]
    cloud: SocketAddr,
    /// The deployment CA certificate.
    #[arg(long)]
    ca: PathBuf,
    /// Device name and one-time enrollment token.
    #[arg(long)]
    device: String,
    #[arg(long)]
    token: String,
    /// Where the key and certificate are written.
    #[arg(long)]
    state: PathBuf,
    #[arg(long, default_value = "cyphonic.internal")]
    domain: Fqdn,
}

#[derive(Subcommand)]
enum Command {
    Spoof {
        #[command(flatten)]
        common: Common,
        /// The victim's FQDN.
        #[arg(long)]
        peer: Fqdn,
        /// The forged inner source (another node's virtual IPv4 address).
        #[arg(long)]
        spoof_src: Ipv4Addr,
    },
    Impersonate {
        #[command(flatten)]
        common: Common,
        /// The victim's FQDN and real address.
        #[arg(long)]
        peer: Fqdn,
        #[arg(long)]
        addr: SocketAddr,
        /// The node whose path to the victim is claimed.
        #[arg(long)]
        path_initiator: Fqdn,
    },
}

struct Rogue {
    ep: std::sync::Arc<NodeEndpoint>,
    creds: Credentials,
    me: cloud::LoginInfo,
    common: Common,
}

async fn start(common: Common) -> Result<Rogue> {
    std::fs::create_dir_all(&common.state)?;
    let trust = TrustAnchor::load(&common.ca, None)?;
    let ep = NodeEndpoint::bind("0.0.0.0:0".parse()?, trust, TransportSettings::default())?;
    let creds = cloud::enroll(
        &ep,
        common.cloud,
        &common.domain,
        &common.device,
        &common.token,
        &common.state.join("rogue.crt"),
        &common.state.join("rogue.key"),
    )
    .await?;
    let me = cloud::login(&ep, &creds, common.cloud, &common.domain).await?;
    Ok(Rogue {
        ep,
        creds,
        me,
        common,
    })
}

/// An ICMP echo request from `src` to `dst`.
fn echo_request(src: Ipv4Addr, dst: Ipv4Addr, seq: u16) -> Vec<u8> {
    let mut p = vec![0u8; 28 + 8];
    p[0] = 0x45;
    let total = p.len() as u16;
    p[2..4].copy_from_slice(&total.to_be_bytes());
    p[8] = 64;
    p[9] = 1;
    p[12..16].copy_from_slice(&src.octets());
    p[16..20].copy_from_slice(&dst.octets());
    let h = checksum(&p[..20]);
    p[10..12].copy_from_slice(&h.to_be_bytes());
    p[20] = 8;
    p[24..26].copy_from_slice(&0x4359u16.to_be_bytes());
    p[26..28].copy_from_slice(&seq.to_be_bytes());
    p[28..].copy_from_slice(b"cyphonic");
    let c = checksum(&p[20..]);
    p[22..24].copy_from_slice(&c.to_be_bytes());
    p
}

fn checksum(d: &[u8]) -> u16 {
    let mut s: u32 = d
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    !(s as u16)
}

async fn send_capsule(conn: &quinn::Connection, path: PathId, pkt: &[u8]) -> Result<()> {
    let mut b = bytes::BytesMut::new();
    encode_capsule_into(&mut b, &path, 0, pkt)?;
    conn.send_datagram(b.freeze())?;
    Ok(())
}

/// Wait for an echo reply with `seq` on `conn`.
async fn echo_reply(conn: &quinn::Connection, seq: u16, wait: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + wait;
    while let Ok(Ok(d)) = tokio::time::timeout_at(deadline, conn.read_datagram()).await {
        if let Ok(c) = CapsuleRef::decode(&d) {
            let p = c.payload;
            if p.len() >= 28 && p[9] == 1 && p[20] == 0 && p[26..28] == seq.to_be_bytes() {
                return true;
            }
        }
    }
    false
}

async fn spoof(common: Common, peer: Fqdn, spoof_src: Ipv4Addr) -> Result<serde_json::Value> {
    let r = start(common).await?;
    let nms =
        r.ep.connect_service(Some(&r.creds), Role::Nms, r.me.nms, &r.common.domain)
            .await?;
    let reg = cloud::registration(&r.ep, r.me.node_id, r.me.nms);
    cloud::register(&nms, &reg).await?;
    let req = Message::request(Body::DirectionRequest(DirectionRequest {
        application_id: ApplicationId::ZERO,
        path_id: PathId::ZERO,
        target: DirectionTarget::Fqdn(peer.clone()),
    }))
    .with_node_id(r.me.node_id);
    let resp = rpc::transact(&nms, &req, Duration::from_secs(10)).await?;
    let Body::RouteDirectionToInitiator(rd) = &resp.body else {
        bail!("no route to {peer}: {:?}", resp.flag);
    };
    if !matches!(
        rd.process_code,
        ProcessCode::InitiatorDials | ProcessCode::SameNat
    ) {
        bail!(
            "the rogue only dials directly; NMS said {:?}",
            rd.process_code
        );
    }
    let dial = *resp.candidates().first().context("no address to dial")?;
    let conn = r.ep.dial_peer(&r.creds, dial, &peer, None).await?;
    let t = rpc::transact(
        &conn,
        &Message::request(Body::TunnelRequest).with_path_id(rd.path_id),
        Duration::from_secs(5),
    )
    .await?;
    if t.flag != Flag::Ok {
        bail!("tunnel refused: {:?}", t.flag);
    }
    let dst = rd.responder.virtual_ipv4;
    send_capsule(&conn, rd.path_id, &echo_request(r.me.virtual_ipv4, dst, 1)).await?;
    let legit = echo_reply(&conn, 1, Duration::from_secs(5)).await;
    send_capsule(&conn, rd.path_id, &echo_request(spoof_src, dst, 2)).await?;
    let spoofed = echo_reply(&conn, 2, Duration::from_secs(2)).await;
    Ok(json!({"legit_reply": legit, "spoofed_reply": spoofed}))
}

async fn impersonate(
    common: Common,
    peer: Fqdn,
    addr: SocketAddr,
    path_initiator: Fqdn,
) -> Result<serde_json::Value> {
    let r = start(common).await?;
    let path = PathId::derive(&path_initiator, &peer);
    let conn = r.ep.dial_peer(&r.creds, addr, &peer, None).await?;
    let resp = rpc::transact(
        &conn,
        &Message::request(Body::TunnelRequest).with_path_id(path),
        Duration::from_secs(8),
    )
    .await;
    let outcome = match resp {
        Ok(m) if m.flag == Flag::Ok => json!({"tunnel": "accepted"}),
        Ok(m) => json!({"tunnel": "refused", "flag": format!("{:?}", m.flag)}),
        Err(rpc::TransactError::Refused(f)) => {
            json!({"tunnel": "refused", "flag": format!("{f:?}")})
        }
        Err(e) => json!({"tunnel": "refused", "error": e.to_string()}),
    };
    Ok(outcome)
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cyphonic-rogue: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let out = rt.block_on(async {
        match cli.command {
            Command::Spoof {
                common,
                peer,
                spoof_src,
            } => spoof(common, peer, spoof_src).await,
            Command::Impersonate {
                common,
                peer,
                addr,
                path_initiator,
            } => impersonate(common, peer, addr, path_initiator).await,
        }
    });
    match out {
        Ok(v) => {
            println!("{v}");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("cyphonic-rogue: {:#}", anyhow!(e));
            std::process::ExitCode::FAILURE
        }
    }
}
