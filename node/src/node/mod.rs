//! One node identity on an endpoint: its standing NMS connection, the routes it sets
//! up (SPEC §6 Route selection, Tunnel), and its data plane (Capsule Messages in QUIC
//! DATAGRAMs between the TUN and each peer's connection).
//!
//! Route setup is triggered by a DNS query for a peer FQDN ([`Node::connect`]) or by a
//! packet to a virtual address with no path ([`Node::send_packet`]). The initiator
//! sends a Direction Request; NMS answers with a Process Code and the node dials (1,
//! 4), waits for the responder to dial (2), or dials through the TRS (3). A responder
//! learns of a path from the Route Direction NMS pushes, and accepts a peer connection
//! only for a path NMS named, from the FQDN NMS named.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{anyhow, Context, Result};
use bytes::BytesMut;
use cyphonic_pki::rpc::{self, refusal};
use cyphonic_pki::{Credentials, PeerIdentity, Role};
use cyphonic_proto::body::{DirectionRequest, DirectionTarget, ProcessCode, RouteDirection};
use cyphonic_proto::framing::{read_message, write_message};
use cyphonic_proto::{
    encode_capsule_into, ApplicationId, Body, CapsuleRef, Extension, Flag, Fqdn, Message, PathId,
    RelayToken, CAPSULE_OVERHEAD, MAX_MESSAGE_LEN,
};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;

use crate::cloud::{self, LoginInfo, CLOUD_TIMEOUT};
use crate::endpoint::{AcceptPeer, NodeEndpoint};
use crate::fastdata;
use crate::packet::{self, IcmpError};
use crate::peers::{Expected, PathKind, PeerInfo, PeerLink, PeerTable};
use crate::tun::TunBatch;

mod dataplane;
mod mobility;
mod setup;
mod signaling;
mod tunnel;

/// Where packets from peers go (the TUN, or an adapter's LAN side).
pub trait PacketSink: Send + Sync + 'static {
    /// Deliver one IP packet; may drop it when the device is congested.
    fn deliver(&self, packet: &[u8]);
    /// Deliver the packets of `batch` and empty it.
    fn deliver_batch(&self, batch: &mut TunBatch);
}

/// How long (at least; 4 RTTs on slow paths) a tunnel gets to answer from a node's
/// new location before it is set up afresh.
const MOVE_PROBE: Duration = Duration::from_millis(250);

/// How long a direct attempt (dialing, or waiting for the responder to dial) may take
/// before the pair falls back to a relayed path.
const DIRECT_ATTEMPT: Duration = Duration::from_secs(4);

/// How one route setup attempt ended, when not with a tunnel.
#[derive(Debug)]
enum Setup {
    /// NMS chose a direct route and it could not be used.
    DirectFailed(String),
    Route(RouteError),
}

impl From<RouteError> for Setup {
    fn from(e: RouteError) -> Setup {
        Setup::Route(e)
    }
}

impl Setup {
    fn into_route_error(self) -> RouteError {
        match self {
            Setup::DirectFailed(why) => RouteError::Unreachable(why),
            Setup::Route(e) => e,
        }
    }
}

/// Why a route could not be set up.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RouteError {
    #[error("no such node")]
    NoSuchName,
    #[error("{0}")]
    Unreachable(String),
}

/// Settings of one node identity.
#[derive(Debug, Clone)]
pub struct NodeSettings {
    pub cloud: SocketAddr,
    pub domain: Fqdn,
    pub setup_timeout: Duration,
    pub idle: Duration,
    /// The overlay prefixes: packets to anything else are not ours.
    pub ipv4_prefix: (Ipv4Addr, u8),
    pub ipv6_prefix: (Ipv6Addr, u8),
    /// Every tunnel through the TRS: Direction Requests carry Flag 34, no route
    /// optimization, direct tunnels from peers refused (`peers.relay_only`).
    pub relay_only: bool,
    /// Offer and use the fast data channel (`peers.fast_data`).
    pub fast_data: bool,
}

/// The cloud connection as `status` shows it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CloudStatus {
    pub as_address: Option<SocketAddr>,
    pub nms_address: Option<SocketAddr>,
    pub connected: bool,
    /// Unix seconds of the last (re)registration or disconnection.
    pub since_unix: u64,
    pub observed: Option<SocketAddr>,
    pub nat: Option<bool>,
    pub last_error: Option<String>,
    pub registrations: u64,
}

/// Packets waiting for a route, per destination.
struct Pending {
    packets: VecDeque<Vec<u8>>,
    started: Instant,
}

const PENDING_MAX_PACKETS: usize = 32;
/// After a failed route setup, packets to that address are answered with ICMP
/// unreachable for this long instead of asking NMS again.
const NEGATIVE_TTL: Duration = Duration::from_secs(3);
/// How long a Route Direction to Responder lets the initiator dial.
const EXPECT_TTL: Duration = Duration::from_secs(60);

pub struct Node {
    pub ep: Arc<NodeEndpoint>,
    creds: Credentials,
    pub me: LoginInfo,
    pub settings: NodeSettings,
    pub peers: PeerTable,
    sink: Arc<dyn PacketSink>,
    nms: tokio::sync::watch::Sender<Option<quinn::Connection>>,
    cloud_status: Mutex<CloudStatus>,
    /// One route setup per target at a time.
    inflight: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    pending: Mutex<HashMap<IpAddr, Pending>>,
    negative: Mutex<HashMap<IpAddr, Instant>>,
    trs: tokio::sync::Mutex<HashMap<SocketAddr, quinn::Connection>>,
    seq: AtomicU32,
    /// The NMS address in use (of `me.nms_all`, one the host can reach now).
    nms_now: Mutex<SocketAddr>,
    /// The local address toward NMS at the last check (a change is a move).
    last_source: Mutex<Option<IpAddr>>,
    /// One move handled at a time.
    moving: tokio::sync::Mutex<()>,
    /// Virtual addresses of peers seen so far → their FQDN (see `gate_key`).
    known: Mutex<HashMap<IpAddr, Fqdn>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn in_prefix(a: IpAddr, v4: (Ipv4Addr, u8), v6: (Ipv6Addr, u8)) -> bool {
    match a {
        IpAddr::V4(a) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(v4.1)).unwrap_or(0);
            u32::from(a) & mask == u32::from(v4.0) & mask
        }
        IpAddr::V6(a) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(v6.1)).unwrap_or(0);
            u128::from(a) & mask == u128::from(v6.0) & mask
        }
    }
}

fn peer_of(end: &cyphonic_proto::PathEnd) -> PeerInfo {
    PeerInfo {
        fqdn: end.fqdn.clone(),
        virtual_ipv4: end.virtual_ipv4,
        virtual_ipv6: end.virtual_ipv6,
    }
}

fn kind_of(code: ProcessCode) -> PathKind {
    match code {
        ProcessCode::InitiatorDials | ProcessCode::ResponderDials => PathKind::Direct,
        ProcessCode::SameNat => PathKind::Lan,
        ProcessCode::ViaTrs => PathKind::Relayed,
    }
}

/// The TRS address of a Route Direction, in the family we reach the cloud over.
fn trs_address(rd: &RouteDirection, prefer_v6: bool) -> Option<SocketAddr> {
    let v4 = rd.trs_ipv4.map(|a| SocketAddr::new(a.into(), rd.trs_port));
    let v6 = rd.trs_ipv6.map(|a| SocketAddr::new(a.into(), rd.trs_port));
    if prefer_v6 {
        v6.or(v4)
    } else {
        v4.or(v6)
    }
}

/// The peer's direct candidates of a relayed Route Direction (SPEC §8).
fn relay_candidates(m: &Message, rd: &RouteDirection) -> Vec<SocketAddr> {
    if rd.process_code == ProcessCode::ViaTrs {
        m.candidates().to_vec()
    } else {
        Vec::new()
    }
}

/// When a relayed pair tries to go direct again (after the relayed tunnel is up);
/// then every [`OPTIMIZE_EVERY`].
const OPTIMIZE_SCHEDULE: [Duration; 5] = [
    Duration::from_millis(500),
    Duration::from_secs(2),
    Duration::from_secs(5),
    Duration::from_secs(10),
    Duration::from_secs(30),
];
const OPTIMIZE_EVERY: Duration = Duration::from_secs(60);
/// How long one direct attempt may take.
const OPTIMIZE_ATTEMPT: Duration = Duration::from_secs(3);

fn peer_identity(conn: &quinn::Connection) -> Option<PeerIdentity> {
    let certs = conn
        .peer_identity()?
        .downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
        .ok()?;
    PeerIdentity::from_der(certs.first()?).ok()
}

impl Node {
    pub fn new(
        ep: Arc<NodeEndpoint>,
        creds: Credentials,
        me: LoginInfo,
        settings: NodeSettings,
        sink: Arc<dyn PacketSink>,
    ) -> Arc<Node> {
        let nms = me.nms;
        let (nms_tx, _) = tokio::sync::watch::channel(None);
        let status = CloudStatus {
            as_address: Some(settings.cloud),
            nms_address: Some(me.nms),
            ..Default::default()
        };
        Arc::new(Node {
            ep,
            creds,
            me,
            settings,
            peers: PeerTable::default(),
            sink,
            nms: nms_tx,
            cloud_status: Mutex::new(status),
            inflight: Mutex::new(HashMap::new()),
            pending: Mutex::new(HashMap::new()),
            negative: Mutex::new(HashMap::new()),
            trs: tokio::sync::Mutex::new(HashMap::new()),
            seq: AtomicU32::new(0),
            nms_now: Mutex::new(nms),
            last_source: Mutex::new(cloud::source_address_for(nms)),
            moving: tokio::sync::Mutex::new(()),
            known: Mutex::new(HashMap::new()),
        })
    }

    pub fn credentials(&self) -> &Credentials {
        &self.creds
    }

    pub fn cloud_status(&self) -> CloudStatus {
        lock(&self.cloud_status).clone()
    }

    fn nms_connection(&self) -> Option<quinn::Connection> {
        self.nms
            .borrow()
            .clone()
            .filter(|c| c.close_reason().is_none())
    }

    /// Wait until the node is registered with NMS (for start-up ordering).
    pub async fn wait_registered(&self, timeout: Duration) -> bool {
        let mut rx = self.nms.subscribe();
        let registered = tokio::time::timeout(timeout, rx.wait_for(|c| c.is_some()))
            .await
            .is_ok_and(|r| r.is_ok());
        registered
    }
}

/// Hands accepted connections to a node (the endpoint holds this, not the node, so
/// there is no reference cycle keeping a stopped node alive).
pub struct NodeAcceptor(pub std::sync::Weak<Node>);

impl AcceptPeer for NodeAcceptor {
    fn accepted(&self, conn: quinn::Connection) {
        let Some(node) = self.0.upgrade() else {
            conn.close(quinn::VarInt::from_u32(0), b"node stopped");
            return;
        };
        tokio::spawn(async move {
            let remote = conn.remote_address();
            if let Err(e) = node.accept(conn).await {
                tracing::info!(%remote, error = %format!("{e:#}"), "peer connection refused");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes() {
        let v4 = (Ipv4Addr::new(100, 64, 0, 0), 10);
        let v6: (Ipv6Addr, u8) = ("fd12:3456:789a::".parse().unwrap(), 48);
        assert!(in_prefix("100.64.0.1".parse().unwrap(), v4, v6));
        assert!(in_prefix("100.127.255.255".parse().unwrap(), v4, v6));
        assert!(!in_prefix("100.128.0.1".parse().unwrap(), v4, v6));
        assert!(in_prefix("fd12:3456:789a:1::5".parse().unwrap(), v4, v6));
        assert!(!in_prefix("fd12:3456:789b::5".parse().unwrap(), v4, v6));
        assert!(in_prefix(
            "1.2.3.4".parse().unwrap(),
            (Ipv4Addr::UNSPECIFIED, 0),
            v6
        ));
    }
}
