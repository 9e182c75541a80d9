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
    encode_capsule_into, ApplicationId, Body, CapsuleRef, Flag, Fqdn, Message, PathId, RelayToken,
    CAPSULE_OVERHEAD, MAX_MESSAGE_LEN,
};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;

use crate::cloud::{self, LoginInfo, CLOUD_TIMEOUT};
use crate::endpoint::{AcceptPeer, NodeEndpoint};
use crate::packet::{self, IcmpError};
use crate::peers::{Expected, PathKind, PeerInfo, PeerLink, PeerTable};

/// Where packets from peers go (the TUN, or an adapter's LAN side).
pub trait PacketSink: Send + Sync + 'static {
    /// Deliver one IP packet; may drop it when the device is congested.
    fn deliver(&self, packet: &[u8]);
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

    // ----- the standing NMS connection -------------------------------------------

    /// Keep a registered NMS connection, reconnecting with backoff, until the task is
    /// aborted.
    pub async fn run_cloud(self: Arc<Self>) {
        let mut backoff = Duration::from_millis(500);
        loop {
            let mut again_at_once = false;
            match self.clone().cloud_session().await {
                Ok(()) => {
                    // It was registered: reconnect at once (e.g. after a move).
                    backoff = Duration::from_millis(500);
                    again_at_once = true;
                }
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), retry_in = ?backoff, "cloud connection failed");
                    let mut s = lock(&self.cloud_status);
                    s.last_error = Some(format!("{e:#}"));
                }
            }
            self.nms.send_replace(None);
            {
                let mut s = lock(&self.cloud_status);
                s.connected = false;
                s.since_unix = unix_now();
            }
            if again_at_once {
                continue;
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(15));
        }
    }

    async fn cloud_session(self: Arc<Self>) -> Result<()> {
        let nms = self.pick_nms();
        lock(&self.cloud_status).nms_address = Some(nms);
        let conn = self
            .ep
            .connect_service(Some(&self.creds), Role::Nms, nms, &self.settings.domain)
            .await?;
        let serving = conn.clone();
        let me = self.clone();
        let pushes = tokio::spawn(rpc::serve(serving, move |m: Message| {
            let me = me.clone();
            async move { Some(me.handle_push(m).await) }
        }));
        let request = cloud::registration(&self.ep, self.me.node_id, nms);
        let reg = match cloud::register(&conn, &request).await {
            Ok(r) => r,
            Err(e) => {
                pushes.abort();
                conn.close(quinn::VarInt::from_u32(0), b"registration failed");
                return Err(e);
            }
        };
        tracing::info!(fqdn = %self.me.fqdn, nms = %nms, observed = ?reg.observed, nat = reg.nat,
            "registered with NMS");
        {
            let mut s = lock(&self.cloud_status);
            s.connected = true;
            s.since_unix = unix_now();
            s.observed = reg.observed;
            s.nat = Some(reg.nat);
            s.last_error = None;
            s.registrations += 1;
        }
        self.nms.send_replace(Some(conn.clone()));
        let reason = conn.closed().await;
        pushes.abort();
        tracing::warn!(reason = %reason, "NMS connection closed; reconnecting");
        Ok(())
    }

    /// Finalization (SPEC §6 Shutdown), best effort within `timeout`.
    pub async fn finalize(&self, timeout: Duration) {
        if let Some(conn) = self.nms_connection() {
            let m = Message::request(Body::Finalization).with_node_id(self.me.node_id);
            match rpc::transact(&conn, &m, timeout).await {
                Ok(_) => tracing::info!("finalized with NMS"),
                Err(e) => tracing::warn!(error = %e, "finalization not acknowledged"),
            }
            conn.close(quinn::VarInt::from_u32(0), b"finalized");
        }
        for link in self.peers.links() {
            link.conn
                .close(quinn::VarInt::from_u32(0), b"node shutting down");
        }
    }

    async fn handle_push(self: &Arc<Self>, m: Message) -> Message {
        match &m.body {
            Body::RouteDirectionToResponder(rd) => self.route_direction_to_responder(&m, rd).await,
            Body::LocationUpdate(u) => {
                tracing::info!(path = %u.path_id, nat_ipv4 = ?u.nat_ipv4, nat_ipv6 = ?u.nat_ipv6,
                    port = u.nat_port, "peer moved (Location Update)");
                Message::response_to(&m, Flag::Ok, Body::Ack)
            }
            Body::Finalization => {
                let path = m.path_id();
                for link in self.peers.finalize(&path) {
                    tracing::info!(peer = %link.peer.fqdn, "peer left (Finalization): closing its tunnel");
                    link.conn
                        .close(quinn::VarInt::from_u32(0), b"peer finalized");
                }
                Message::response_to(&m, Flag::Ok, Body::Ack)
            }
            Body::KeepAlive => Message::response_to(&m, Flag::Ok, Body::KeepAliveAck),
            other => {
                tracing::debug!(message = ?other.message_type(), "unexpected push from NMS");
                refusal(&m, Flag::Malformed)
            }
        }
    }

    async fn route_direction_to_responder(
        self: &Arc<Self>,
        m: &Message,
        rd: &RouteDirection,
    ) -> Message {
        let peer = peer_of(&rd.initiator);
        let kind = kind_of(rd.process_code);
        tracing::info!(initiator = %peer.fqdn, path = %rd.path_id, code = rd.process_code as u8,
            "Route Direction to Responder: {kind} path");
        // The initiator has no tunnel to us, or it would not ask: a link we still hold
        // is dead on its side.
        if let Some(old) = self.peers.by_fqdn(&peer.fqdn) {
            if self.peers.remove(&old) {
                old.conn
                    .close(quinn::VarInt::from_u32(0), b"superseded by a new direction");
            }
        }
        self.expect_path(m, rd, &peer, kind);
        match rd.process_code {
            ProcessCode::ViaTrs => {
                let prefer_v6 = self.current_nms().is_ipv6();
                let Some(trs) = trs_address(rd, prefer_v6) else {
                    return refusal(m, Flag::PeerUnreachable);
                };
                if let Err(e) = self.ensure_trs(trs).await {
                    tracing::warn!(error = %format!("{e:#}"), "cannot reach the TRS");
                    return refusal(m, Flag::PeerUnreachable);
                }
            }
            ProcessCode::ResponderDials => {
                let Some(&dial) = m.candidates().first() else {
                    return refusal(m, Flag::Malformed);
                };
                let me = self.clone();
                let path = rd.path_id;
                tokio::spawn(async move {
                    // NMS answers the initiator after our confirmation; give it a moment.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    if let Err(e) = me
                        .dial(dial, peer, path, PathKind::Direct, None, true)
                        .await
                    {
                        tracing::warn!(error = %format!("{e:#}"), %dial, "dialing the initiator failed");
                    }
                });
            }
            ProcessCode::InitiatorDials | ProcessCode::SameNat => {}
        }
        let mut r = Message::response_to(m, Flag::Ok, Body::RouteDirectionConfirmation(rd.clone()));
        r.extensions = m.extensions.clone();
        r
    }

    /// Remember the path a Route Direction named (to Responder or to Initiator): the
    /// peer that may open or answer a tunnel for it, and its candidates if relayed.
    fn expect_path(&self, m: &Message, rd: &RouteDirection, peer: &PeerInfo, kind: PathKind) {
        self.peers.expect(
            rd.path_id,
            Expected {
                peer: peer.clone(),
                kind,
                until: Instant::now() + EXPECT_TTL,
                candidates: relay_candidates(m, rd),
            },
        );
    }

    /// A control connection to a TRS, so it knows our observed address (SPEC §7).
    async fn ensure_trs(&self, addr: SocketAddr) -> Result<()> {
        let mut g = self.trs.lock().await;
        if let Some(c) = g.get(&addr) {
            if c.close_reason().is_none() {
                return Ok(());
            }
        }
        let c = self
            .ep
            .connect_service(Some(&self.creds), Role::Trs, addr, &self.settings.domain)
            .await?;
        // The TRS learns our address when it accepts the connection and answers Keep
        // Alive after that: one round trip, and packets from us will be forwarded.
        let ka = Message::request(Body::KeepAlive).with_node_id(self.me.node_id);
        if let Err(e) = rpc::transact(&c, &ka, CLOUD_TIMEOUT).await {
            tracing::debug!(error = %e, "TRS did not answer Keep Alive");
        }
        tracing::info!(trs = %addr, "TRS control connection up");
        g.insert(addr, c);
        Ok(())
    }

    // ----- mobility (SPEC §6) --------------------------------------------------------

    pub fn current_nms(&self) -> SocketAddr {
        *lock(&self.nms_now)
    }

    /// The NMS address to use: the current one while the host can reach its family,
    /// else another the Login Response gave.
    fn pick_nms(&self) -> SocketAddr {
        let now = self.current_nms();
        let reachable = |a: &SocketAddr| cloud::source_address_for(*a).is_some();
        if reachable(&now) {
            return now;
        }
        let next = self
            .me
            .nms_all
            .iter()
            .copied()
            .find(reachable)
            .unwrap_or(now);
        *lock(&self.nms_now) = next;
        next
    }

    /// The host's addresses or routes changed: if this node's own address toward NMS
    /// changed, it moved. It re-registers (the NMS connection migrates, NMS tells the
    /// peers), then checks every tunnel: where this node is the QUIC client the
    /// connection migrates and a probe confirms it; where it was the server (QUIC
    /// cannot move a server) or the probe fails, the pair is set up afresh from the new
    /// location and the fresh tunnel replaces the stale one. Virtual addresses never
    /// change, so overlay flows only see a pause.
    pub async fn network_changed(self: &Arc<Self>) {
        let _one = self.moving.lock().await;
        let before = self.current_nms();
        let nms = self.pick_nms();
        let source = cloud::source_address_for(nms);
        let previous = std::mem::replace(&mut *lock(&self.last_source), source);
        if previous == source && nms == before {
            return;
        }
        tracing::info!(from = ?previous, to = ?source, nms = %nms,
            "real address changed: re-registering and checking tunnels");
        if source.is_none() {
            return; // no route at all: wait for the next change
        }
        let registered = match self.nms_connection() {
            Some(conn) if nms == before => {
                let req = cloud::registration(&self.ep, self.me.node_id, nms);
                match cloud::register(&conn, &req).await {
                    Ok(reg) => {
                        tracing::info!(observed = ?reg.observed, nat = reg.nat, "re-registered after the move");
                        let mut s = lock(&self.cloud_status);
                        s.observed = reg.observed;
                        s.nat = Some(reg.nat);
                        s.since_unix = unix_now();
                        s.registrations += 1;
                        true
                    }
                    Err(e) => {
                        tracing::warn!(error = %format!("{e:#}"), "re-registration failed; reconnecting");
                        conn.close(quinn::VarInt::from_u32(0), b"moved");
                        false
                    }
                }
            }
            Some(conn) => {
                // Another address family: a new connection (run_cloud reconnects).
                conn.close(quinn::VarInt::from_u32(0), b"moved to another family");
                false
            }
            None => false,
        };
        if !registered {
            let mut rx = self.nms.subscribe();
            let _ = rx.borrow_and_update();
            let live = |c: &Option<quinn::Connection>| {
                c.as_ref().is_some_and(|c| c.close_reason().is_none())
            };
            let _ = tokio::time::timeout(Duration::from_secs(10), rx.wait_for(live)).await;
        }
        self.revalidate_trs().await;
        for link in self.peers.links() {
            let me = self.clone();
            tokio::spawn(async move { me.revalidate(link).await });
        }
    }

    /// Make the TRS control connections migrate now (a round trip from the new
    /// address), so relayed tunnels follow.
    async fn revalidate_trs(&self) {
        let conns: Vec<quinn::Connection> = self.trs.lock().await.values().cloned().collect();
        for c in conns {
            let ka = Message::request(Body::KeepAlive).with_node_id(self.me.node_id);
            let _ = rpc::transact(&c, &ka, Duration::from_secs(2)).await;
        }
    }

    async fn revalidate(self: Arc<Self>, link: Arc<PeerLink>) {
        let remote = cloud::unmapped(link.conn.remote_address());
        let routable = cloud::source_address_for(remote).is_some();
        if routable && (link.dialed || link.kind == PathKind::Relayed) {
            let ka = Message::request(Body::KeepAlive).with_path_id(link.path_id);
            let wait = (link.conn.rtt() * 4).max(MOVE_PROBE);
            if rpc::transact(&link.conn, &ka, wait).await.is_ok() {
                tracing::info!(peer = %link.peer.fqdn, path = %link.kind, "tunnel survived the move");
                return;
            }
        }
        let current = self.peers.by_fqdn(&link.peer.fqdn);
        if !current.is_some_and(|c| Arc::ptr_eq(&c, &link)) {
            return;
        }
        tracing::info!(peer = %link.peer.fqdn, was = %link.kind, dialed = link.dialed,
            "tunnel cannot follow the move: setting the pair up afresh");
        // It is dead from here: packets wait for the new tunnel instead, and the new
        // one does not have to win against it.
        self.peers.remove(&link);
        let stale = link.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(5)).await;
            stale.conn.close(quinn::VarInt::from_u32(0), b"moved");
        });
        let target = DirectionTarget::Fqdn(link.peer.fqdn.clone());
        let gate = lock(&self.inflight)
            .entry(self.gate_key(&target))
            .or_default()
            .clone();
        let _g = gate.lock().await;
        match tokio::time::timeout(
            self.settings.setup_timeout,
            self.setup_with_fallback(target),
        )
        .await
        {
            Ok(Ok(l)) => {
                tracing::info!(peer = %l.peer.fqdn, path = %l.kind, "tunnel re-established after the move")
            }
            Ok(Err(e)) => {
                tracing::warn!(peer = %link.peer.fqdn, error = %e, "could not re-establish the tunnel")
            }
            Err(_) => {
                tracing::warn!(peer = %link.peer.fqdn, "re-establishing the tunnel timed out")
            }
        }
    }

    // ----- route setup (initiator) ------------------------------------------------

    /// One route setup per peer at a time: a peer's virtual addresses and its FQDN
    /// share one gate once the peer is known.
    fn gate_key(&self, target: &DirectionTarget) -> String {
        let vip = match target {
            DirectionTarget::Fqdn(f) => return f.to_string(),
            DirectionTarget::VirtualIpv4(a) => IpAddr::V4(*a),
            DirectionTarget::VirtualIpv6(a) => IpAddr::V6(*a),
        };
        match lock(&self.known).get(&vip) {
            Some(f) => f.to_string(),
            None => target.to_text(),
        }
    }

    fn lookup(&self, target: &DirectionTarget) -> Option<Arc<PeerLink>> {
        let l = match target {
            DirectionTarget::Fqdn(f) => self.peers.by_fqdn(f),
            DirectionTarget::VirtualIpv4(a) => self.peers.route(IpAddr::V4(*a)),
            DirectionTarget::VirtualIpv6(a) => self.peers.route(IpAddr::V6(*a)),
        }?;
        l.is_alive().then_some(l)
    }

    /// A tunnel to `target`, set up if needed (SPEC §6). Concurrent calls for one
    /// target share one setup.
    pub async fn connect(
        self: &Arc<Self>,
        target: DirectionTarget,
    ) -> Result<Arc<PeerLink>, RouteError> {
        if let Some(l) = self.lookup(&target) {
            return Ok(l);
        }
        let key = self.gate_key(&target);
        let gate = lock(&self.inflight).entry(key.clone()).or_default().clone();
        let result = {
            let _g = gate.lock().await;
            match self.lookup(&target) {
                Some(l) => Ok(l),
                None => tokio::time::timeout(
                    self.settings.setup_timeout,
                    self.setup_with_fallback(target.clone()),
                )
                .await
                .unwrap_or_else(|_| {
                    Err(RouteError::Unreachable(format!(
                        "path setup took longer than {:?}",
                        self.settings.setup_timeout
                    )))
                }),
            }
        };
        let mut inflight = lock(&self.inflight);
        if Arc::strong_count(&gate) <= 2 {
            inflight.remove(&key);
        }
        result
    }

    /// Set up the route NMS chooses; when a direct one fails, ask again for a relayed
    /// one (SPEC §8 fallback: no configuration by hand).
    async fn setup_with_fallback(
        self: &Arc<Self>,
        target: DirectionTarget,
    ) -> Result<Arc<PeerLink>, RouteError> {
        match self.setup(target.clone(), false).await {
            Err(Setup::DirectFailed(why)) => {
                tracing::warn!(target = %target.to_text(), reason = %why,
                    "direct path failed: asking NMS for a relayed path");
                self.setup(target, true)
                    .await
                    .map_err(Setup::into_route_error)
            }
            other => other.map_err(Setup::into_route_error),
        }
    }

    /// One Direction Request and the tunnel it directs. `direct_failed`: the direct
    /// route NMS gave before could not be used (Flag 34 asks NMS to relay).
    async fn setup(
        self: &Arc<Self>,
        target: DirectionTarget,
        direct_failed: bool,
    ) -> Result<Arc<PeerLink>, Setup> {
        let Some(nms) = self.nms_connection() else {
            return Err(RouteError::Unreachable(
                "not registered with NMS (cloud unreachable)".into(),
            )
            .into());
        };
        let text = target.to_text();
        let mut req = Message::request(Body::DirectionRequest(DirectionRequest {
            application_id: ApplicationId::ZERO,
            path_id: PathId::ZERO,
            target,
        }))
        .with_node_id(self.me.node_id);
        if direct_failed {
            req = req.with_flag(Flag::PeerUnreachable);
        }
        let resp = rpc::transact(&nms, &req, CLOUD_TIMEOUT)
            .await
            .map_err(|e| match e {
                rpc::TransactError::Refused(Flag::NoSuchName) => RouteError::NoSuchName,
                e => RouteError::Unreachable(format!("Direction Request: {e}")),
            })?;
        let rd = match (resp.flag, &resp.body) {
            (Flag::Ok, Body::RouteDirectionToInitiator(rd)) => rd.clone(),
            (Flag::NoSuchName, _) => return Err(RouteError::NoSuchName.into()),
            (flag, _) => {
                tracing::info!(target = %text, ?flag, "NMS gave no route");
                return Err(RouteError::Unreachable(format!(
                    "NMS refused the direction: {flag:?}"
                ))
                .into());
            }
        };
        let peer = peer_of(&rd.responder);
        let kind = kind_of(rd.process_code);
        tracing::info!(responder = %peer.fqdn, path = %rd.path_id, code = rd.process_code as u8,
            "Route Direction to Initiator: {kind} path");
        self.expect_path(&resp, &rd, &peer, kind);
        let direct = match rd.process_code {
            ProcessCode::InitiatorDials | ProcessCode::SameNat => {
                let dial = *resp.candidates().first().ok_or_else(|| {
                    RouteError::Unreachable("Route Direction without an address".into())
                })?;
                tokio::time::timeout(
                    DIRECT_ATTEMPT,
                    self.dial(dial, peer, rd.path_id, kind, None, true),
                )
                .await
                .unwrap_or_else(|_| Err(anyhow!("no answer from {dial} within {DIRECT_ATTEMPT:?}")))
            }
            ProcessCode::ResponderDials => {
                tokio::time::timeout(DIRECT_ATTEMPT, self.wait_for_peer(&peer.fqdn))
                    .await
                    .unwrap_or_else(|_| {
                        Err(anyhow!(
                            "{} did not dial back within {DIRECT_ATTEMPT:?}",
                            peer.fqdn
                        ))
                    })
            }
            ProcessCode::ViaTrs => {
                let tokens = resp.relay().ok_or_else(|| {
                    RouteError::Unreachable("relayed Route Direction without relay tokens".into())
                })?;
                let trs = trs_address(&rd, self.current_nms().is_ipv6()).ok_or_else(|| {
                    RouteError::Unreachable("relayed Route Direction without a TRS address".into())
                })?;
                let relayed = match self.ensure_trs(trs).await {
                    Ok(()) => {
                        self.dial(trs, peer, rd.path_id, kind, Some(tokens.responder), true)
                            .await
                    }
                    Err(e) => Err(e),
                };
                return relayed.map_err(|e| RouteError::Unreachable(format!("{e:#}")).into());
            }
        };
        direct.map_err(|e| Setup::DirectFailed(format!("{e:#}")))
    }

    async fn wait_for_peer(&self, fqdn: &Fqdn) -> Result<Arc<PeerLink>> {
        loop {
            let notified = self.peers.changed.notified();
            if let Some(l) = self.peers.by_fqdn(fqdn).filter(|l| l.is_alive()) {
                return Ok(l);
            }
            notified.await;
        }
    }

    /// Dial a peer and run Tunnel Request/Response (SPEC §6 Tunnel).
    async fn dial(
        self: &Arc<Self>,
        addr: SocketAddr,
        peer: PeerInfo,
        path: PathId,
        kind: PathKind,
        via: Option<RelayToken>,
        fresh: bool,
    ) -> Result<Arc<PeerLink>> {
        let conn = self
            .ep
            .dial_peer(&self.creds, addr, &peer.fqdn, via)
            .await?;
        let id = peer_identity(&conn).context("peer presented no certificate")?;
        if id.name != peer.fqdn {
            conn.close(quinn::VarInt::from_u32(33), b"wrong peer");
            return Err(anyhow!(
                "peer at {addr} is {} but NMS named {}",
                id.name,
                peer.fqdn
            ));
        }
        let mut req = Message::request(Body::TunnelRequest).with_path_id(path);
        if !fresh {
            // An extra connection from hole punching (SPEC §8).
            req = req.with_flag(Flag::Optimization);
        }
        let resp = rpc::transact(&conn, &req, CLOUD_TIMEOUT)
            .await
            .map_err(|e| anyhow!("Tunnel Request to {} refused: {e}", peer.fqdn))?;
        if resp.flag != Flag::Ok || !matches!(resp.body, Body::TunnelResponse) {
            conn.close(quinn::VarInt::from_u32(0), b"tunnel refused");
            return Err(anyhow!("{} refused the tunnel: {:?}", peer.fqdn, resp.flag));
        }
        let mut link = PeerLink::new(peer, path, kind, conn, true, id.node_id);
        link.fresh = fresh;
        let link = Arc::new(link);
        Ok(self.clone().activate(link))
    }

    /// Install a link and start its receive loop; flush packets that waited for it.
    fn activate(self: Arc<Self>, link: Arc<PeerLink>) -> Arc<PeerLink> {
        let (current, displaced) = self.peers.install(link.clone(), self.me.node_id);
        if let Some(old) = displaced {
            // One connection per pair: close the other after a short drain.
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(2)).await;
                old.conn
                    .close(quinn::VarInt::from_u32(0), b"duplicate connection");
            });
        }
        if !Arc::ptr_eq(&current, &link) {
            return current;
        }
        link.touch();
        {
            let mut known = lock(&self.known);
            if known.len() > 65536 {
                known.clear();
            }
            for a in [
                IpAddr::V4(link.peer.virtual_ipv4),
                IpAddr::V6(link.peer.virtual_ipv6),
            ] {
                known.insert(a, link.peer.fqdn.clone());
            }
        }
        tracing::info!(peer = %link.peer.fqdn, path = %link.kind, remote = %link.conn.remote_address(),
            dialed = link.dialed, max_datagram = ?link.conn.max_datagram_size(), "tunnel up");
        tokio::spawn(self.clone().receive_loop(link.clone()));
        tokio::spawn(self.clone().oversize_reader(link.clone()));
        if let Some(rx) = link.take_oversize_rx() {
            tokio::spawn(Self::oversize_writer(link.clone(), rx));
        }
        tokio::spawn(rpc::serve(link.conn.clone(), |m: Message| async move {
            Some(match m.body {
                Body::KeepAlive => Message::response_to(&m, Flag::Ok, Body::KeepAliveAck),
                Body::HolePunching => Message::response_to(&m, Flag::Optimization, Body::Ack),
                _ => refusal(&m, Flag::Malformed),
            })
        }));
        self.flush_pending(&link);
        if link.kind == PathKind::Relayed {
            let candidates = self
                .peers
                .expected(&link.path_id)
                .map(|e| e.candidates)
                .unwrap_or_default();
            if !candidates.is_empty() {
                tokio::spawn(self.clone().optimize(link.clone(), candidates));
            }
        }
        if let Some(from) = link.switched_from.get() {
            tracing::info!(peer = %link.peer.fqdn, from = %from, to = %link.kind,
                remote = %link.conn.remote_address(), "path switched");
        }
        link
    }

    /// SPEC §8 route optimization: while `relayed` carries the pair, dial the peer's
    /// candidates directly (the peer does the same at the same time, so both NATs open
    /// mappings); a direct tunnel that completes replaces the relayed one, which is
    /// closed after a drain. Stops when the relayed tunnel is gone or replaced.
    async fn optimize(self: Arc<Self>, relayed: Arc<PeerLink>, candidates: Vec<SocketAddr>) {
        let mut attempt = 0usize;
        loop {
            let wait = OPTIMIZE_SCHEDULE
                .get(attempt)
                .copied()
                .unwrap_or(OPTIMIZE_EVERY);
            attempt += 1;
            tokio::time::sleep(wait).await;
            let current = self.peers.by_fqdn(&relayed.peer.fqdn);
            if !relayed.is_alive() || !current.is_some_and(|c| Arc::ptr_eq(&c, &relayed)) {
                return;
            }
            let mut tries = tokio::task::JoinSet::new();
            for (i, &addr) in candidates.iter().enumerate() {
                let me = self.clone();
                let peer = relayed.peer.clone();
                let path = relayed.path_id;
                // The first candidate is the NAT mapping NMS observed; the others are
                // the peer's own addresses, reachable only from its LAN.
                let kind = if i == 0 {
                    PathKind::Direct
                } else {
                    PathKind::Lan
                };
                tries.spawn(async move {
                    tokio::time::timeout(
                        OPTIMIZE_ATTEMPT,
                        me.dial(addr, peer, path, kind, None, false),
                    )
                    .await
                    .map_err(|_| anyhow!("timed out"))
                    .and_then(|r| r)
                    .map_err(|e| format!("{addr}: {e:#}"))
                });
            }
            let mut failures = Vec::new();
            while let Some(r) = tries.join_next().await {
                match r {
                    Ok(Ok(link)) if link.kind != PathKind::Relayed => {
                        let hp = Message::request(Body::HolePunching).with_path_id(link.path_id);
                        match rpc::transact(&link.conn, &hp, CLOUD_TIMEOUT).await {
                            Ok(m) if m.flag == Flag::Optimization => {}
                            other => tracing::debug!(?other, "Hole Punching not acknowledged"),
                        }
                        return;
                    }
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => failures.push(e),
                    Err(e) => failures.push(e.to_string()),
                }
            }
            tracing::info!(peer = %relayed.peer.fqdn, attempt, failures = ?failures,
                "still relayed: no direct path yet");
        }
    }

    fn flush_pending(&self, link: &Arc<PeerLink>) {
        let waiting: Vec<Vec<u8>> = {
            let mut p = lock(&self.pending);
            let mut out = Vec::new();
            for a in [
                IpAddr::V4(link.peer.virtual_ipv4),
                IpAddr::V6(link.peer.virtual_ipv6),
            ] {
                if let Some(q) = p.remove(&a) {
                    out.extend(q.packets);
                }
            }
            out
        };
        let mut buf = BytesMut::new();
        for pkt in waiting {
            self.send_on(link, &pkt, &mut buf);
        }
    }

    async fn receive_loop(self: Arc<Self>, link: Arc<PeerLink>) {
        let reason = loop {
            let d = match link.conn.read_datagram().await {
                Ok(d) => d,
                Err(e) => break e,
            };
            match CapsuleRef::decode(&d) {
                Ok(cap) => self.receive(&link, cap.path_id, cap.payload),
                Err(_) => {
                    link.counters.malformed.fetch_add(1, Ordering::Relaxed);
                }
            }
        };
        if self.peers.remove(&link) {
            tracing::info!(peer = %link.peer.fqdn, reason = %reason, "tunnel closed");
        }
    }

    /// One packet from a peer: on this link's path and from the peer's own virtual
    /// address (SPEC §6 Data), else dropped and counted.
    fn receive(&self, link: &PeerLink, path: PathId, payload: &[u8]) {
        let c = &link.counters;
        if path != link.path_id {
            c.malformed.fetch_add(1, Ordering::Relaxed);
            return;
        }
        match packet::addresses(payload) {
            Some((src, _)) if link.owns(src) => {}
            _ => {
                if c.spoofed.fetch_add(1, Ordering::Relaxed) == 0 {
                    tracing::warn!(peer = %link.peer.fqdn, "dropped a capsule with a spoofed inner source");
                }
                return;
            }
        }
        c.rx_packets.fetch_add(1, Ordering::Relaxed);
        c.rx_bytes
            .fetch_add(payload.len() as u64, Ordering::Relaxed);
        link.touch();
        self.sink.deliver(payload);
    }

    /// Capsules the peer sent on streams (packets too large for its datagrams).
    async fn oversize_reader(self: Arc<Self>, link: Arc<PeerLink>) {
        while let Ok(mut recv) = link.conn.accept_uni().await {
            let me = self.clone();
            let link = link.clone();
            tokio::spawn(async move {
                while let Ok(m) = read_message(&mut recv, MAX_MESSAGE_LEN).await {
                    match &m.body {
                        Body::Capsule(c) => me.receive(&link, m.path_id(), &c.payload),
                        _ => {
                            link.counters.malformed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            });
        }
    }

    /// Writes the link's oversize Capsules, in order, on one unidirectional stream.
    async fn oversize_writer(
        link: Arc<PeerLink>,
        mut rx: tokio::sync::mpsc::Receiver<bytes::Bytes>,
    ) {
        let mut stream: Option<quinn::SendStream> = None;
        while let Some(cap) = rx.recv().await {
            if stream.is_none() {
                match link.conn.open_uni().await {
                    Ok(s) => stream = Some(s),
                    Err(_) => return,
                }
            }
            if let Some(s) = stream.as_mut() {
                if s.write_all(&cap).await.is_err() {
                    stream = None;
                }
            }
        }
    }

    // ----- accepted peer connections (responder side) ----------------------------

    async fn accept(self: Arc<Self>, conn: quinn::Connection) -> Result<()> {
        let Some(id) = peer_identity(&conn) else {
            conn.close(quinn::VarInt::from_u32(33), b"no certificate");
            return Err(anyhow!("peer connection without a certificate"));
        };
        let (mut send, mut recv) = tokio::time::timeout(Duration::from_secs(5), conn.accept_bi())
            .await
            .context("no Tunnel Request")??;
        let req = tokio::time::timeout(
            Duration::from_secs(5),
            read_message(&mut recv, rpc::MAX_SIGNALING_LEN),
        )
        .await
        .context("Tunnel Request timed out")??;
        if !matches!(req.body, Body::TunnelRequest) {
            let _ = write_message(&mut send, &refusal(&req, Flag::Malformed)).await;
            let _ = send.shutdown().await;
            conn.close(quinn::VarInt::from_u32(36), b"expected a Tunnel Request");
            return Err(anyhow!(
                "first message from {} was not a Tunnel Request",
                id.name
            ));
        }
        let path = req.path_id();
        let expected = self
            .peers
            .wait_expected(&path, Duration::from_secs(3))
            .await;
        let ok = expected.as_ref().is_some_and(|e| e.peer.fqdn == id.name);
        if !ok {
            tracing::warn!(peer = %id.name, path = %path,
                named = ?expected.as_ref().map(|e| e.peer.fqdn.to_string()),
                "tunnel refused: NMS named no such peer for this path");
            let _ = write_message(&mut send, &refusal(&req, Flag::Unauthenticated)).await;
            let _ = send.shutdown().await;
            tokio::time::sleep(Duration::from_millis(100)).await;
            conn.close(quinn::VarInt::from_u32(33), b"not the peer NMS named");
            return Ok(());
        }
        let e = expected.expect("checked above");
        write_message(
            &mut send,
            &Message::response_to(&req, Flag::Ok, Body::TunnelResponse),
        )
        .await?;
        let _ = send.shutdown().await;
        // Through a TRS the connection comes from the TRS's address; anything else on a
        // relayed path is the peer itself, hole-punched (SPEC §8).
        let remote = cloud::unmapped(conn.remote_address());
        let via_trs = self.trs.lock().await.contains_key(&remote);
        let kind = match e.kind {
            _ if via_trs => PathKind::Relayed,
            PathKind::Relayed => PathKind::Direct,
            k => k,
        };
        let mut link = PeerLink::new(e.peer, path, kind, conn, false, id.node_id);
        link.fresh = req.flag != Flag::Optimization;
        let link = Arc::new(link);
        self.activate(link);
        Ok(())
    }

    // ----- data plane: TUN → peer ------------------------------------------------

    fn is_overlay(&self, a: IpAddr) -> bool {
        in_prefix(a, self.settings.ipv4_prefix, self.settings.ipv6_prefix)
            && a != IpAddr::V4(self.me.virtual_ipv4)
            && a != IpAddr::V6(self.me.virtual_ipv6)
    }

    /// Send a packet read from the TUN to its peer, setting up the route when there
    /// is none. `buf` is scratch space reused across calls.
    pub fn send_packet(self: &Arc<Self>, pkt: &[u8], buf: &mut BytesMut) {
        let Some(dst) = packet::destination(pkt) else {
            return;
        };
        if !self.is_overlay(dst) {
            return;
        }
        if let Some(link) = self.peers.route(dst) {
            if link.is_alive() {
                self.send_on(&link, pkt, buf);
                return;
            }
        }
        self.queue_and_route(dst, pkt);
    }

    fn send_on(&self, link: &PeerLink, pkt: &[u8], buf: &mut BytesMut) {
        let max = link.conn.max_datagram_size().unwrap_or(0);
        if CAPSULE_OVERHEAD + pkt.len() > max {
            self.oversize(link, pkt, max.saturating_sub(CAPSULE_OVERHEAD), buf);
            return;
        }
        buf.reserve(CAPSULE_OVERHEAD + pkt.len());
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        if encode_capsule_into(buf, &link.path_id, seq, pkt).is_err() {
            return;
        }
        let d = buf.split().freeze();
        match link.conn.send_datagram(d) {
            Ok(()) => {
                let c = &link.counters;
                c.tx_packets.fetch_add(1, Ordering::Relaxed);
                c.tx_bytes.fetch_add(pkt.len() as u64, Ordering::Relaxed);
                link.touch();
            }
            Err(quinn::SendDatagramError::TooLarge) => {
                let room = link
                    .conn
                    .max_datagram_size()
                    .unwrap_or(0)
                    .saturating_sub(CAPSULE_OVERHEAD);
                self.oversize(link, pkt, room, buf)
            }
            Err(e) => tracing::debug!(peer = %link.peer.fqdn, error = %e, "datagram not sent"),
        }
    }

    /// SPEC §6 Data: a packet larger than the path's datagram (`room` bytes of
    /// payload) never vanishes silently. IPv4 with DF set: Fragmentation Needed with
    /// the MTU that fits. IPv6 larger than 1280: Packet Too Big with what fits, but
    /// not below IPv6's minimum of 1280. What still cannot be sent that way (IPv6 up
    /// to 1280 bytes on a path whose datagrams are smaller, IPv4 without DF) is carried
    /// on the link's stream (see docs/protocol-decisions.md).
    fn oversize(&self, link: &PeerLink, pkt: &[u8], room: usize, buf: &mut BytesMut) {
        match oversize_action(pkt, room) {
            Oversize::TooBig(mtu) => {
                link.counters.too_big.fetch_add(1, Ordering::Relaxed);
                let Some((_, dst)) = packet::addresses(pkt) else {
                    return;
                };
                if let Some(icmp) = packet::icmp_error(pkt, dst, IcmpError::TooBig { mtu }) {
                    self.sink.deliver(&icmp);
                }
            }
            Oversize::Stream => {
                buf.reserve(CAPSULE_OVERHEAD + pkt.len());
                let seq = self.seq.fetch_add(1, Ordering::Relaxed);
                if encode_capsule_into(buf, &link.path_id, seq, pkt).is_err() {
                    return;
                }
                if link.oversize.try_send(buf.split().freeze()).is_ok() {
                    let c = &link.counters;
                    c.on_stream.fetch_add(1, Ordering::Relaxed);
                    c.tx_packets.fetch_add(1, Ordering::Relaxed);
                    c.tx_bytes.fetch_add(pkt.len() as u64, Ordering::Relaxed);
                }
            }
        }
    }

    fn queue_and_route(self: &Arc<Self>, dst: IpAddr, pkt: &[u8]) {
        let now = Instant::now();
        {
            let mut neg = lock(&self.negative);
            if let Some(until) = neg.get(&dst) {
                if *until > now {
                    drop(neg);
                    if let Some(icmp) = packet::icmp_error(pkt, dst, IcmpError::Unreachable) {
                        self.sink.deliver(&icmp);
                    }
                    return;
                }
                neg.remove(&dst);
            }
        }
        let start = {
            let mut p = lock(&self.pending);
            let entry = p.entry(dst).or_insert_with(|| Pending {
                packets: VecDeque::new(),
                started: now,
            });
            if entry.packets.len() >= PENDING_MAX_PACKETS {
                entry.packets.pop_front();
            }
            entry.packets.push_back(pkt.to_vec());
            entry.packets.len() == 1 && entry.started == now
        };
        if !start {
            return;
        }
        let me = self.clone();
        tokio::spawn(async move {
            let target = match dst {
                IpAddr::V4(a) => DirectionTarget::VirtualIpv4(a),
                IpAddr::V6(a) => DirectionTarget::VirtualIpv6(a),
            };
            match me.connect(target).await {
                Ok(link) => me.flush_pending(&link),
                Err(e) => {
                    tracing::info!(%dst, error = %e, "no route to overlay address");
                    lock(&me.negative).insert(dst, Instant::now() + NEGATIVE_TTL);
                    let dropped = lock(&me.pending).remove(&dst);
                    if let Some(q) = dropped {
                        if let Some(first) = q.packets.front() {
                            if let Some(icmp) =
                                packet::icmp_error(first, dst, IcmpError::Unreachable)
                            {
                                me.sink.deliver(&icmp);
                            }
                        }
                    }
                }
            }
        });
    }

    /// Close idle tunnels (SPEC: idle connections closed) and forget stale pending
    /// packets. Run every few seconds.
    pub fn sweep(&self) {
        for link in self.peers.stale(self.settings.idle) {
            if self.peers.remove(&link) {
                tracing::info!(peer = %link.peer.fqdn, idle = ?link.idle_for(), "closing idle tunnel");
                link.conn.close(quinn::VarInt::from_u32(0), b"idle");
            }
        }
        let now = Instant::now();
        lock(&self.pending)
            .retain(|_, p| now.duration_since(p.started) < self.settings.setup_timeout * 2);
        lock(&self.negative).retain(|_, until| *until > now);
    }
}

/// What to do with a packet that does not fit a datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Oversize {
    /// Answer with ICMP Fragmentation Needed / Packet Too Big carrying this MTU.
    TooBig(u16),
    /// Carry it on the link's stream.
    Stream,
}

/// The oversize policy of [`Node::oversize`], as a pure function.
fn oversize_action(pkt: &[u8], room: usize) -> Oversize {
    let room16 = room.min(usize::from(u16::MAX)) as u16;
    match pkt.first().map(|b| b >> 4) {
        Some(4) if pkt.len() >= 20 && pkt[6] & 0x40 != 0 && room >= 576 => Oversize::TooBig(room16),
        Some(6) if pkt.len() > 1280 => Oversize::TooBig(room16.max(1280)),
        _ => Oversize::Stream,
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
    fn oversize_policy() {
        let mut v4 = vec![0u8; 1400];
        v4[0] = 0x45;
        v4[6] = 0x40; // DF
        assert_eq!(oversize_action(&v4, 1100), Oversize::TooBig(1100));
        assert_eq!(
            oversize_action(&v4, 500),
            Oversize::Stream,
            "no MTU below 576"
        );
        v4[6] = 0;
        assert_eq!(
            oversize_action(&v4, 1100),
            Oversize::Stream,
            "no DF: carried"
        );
        let mut v6 = vec![0u8; 1400];
        v6[0] = 0x60;
        assert_eq!(oversize_action(&v6, 1300), Oversize::TooBig(1300));
        assert_eq!(
            oversize_action(&v6, 1100),
            Oversize::TooBig(1280),
            "never below 1280"
        );
        v6.truncate(1280);
        assert_eq!(
            oversize_action(&v6, 1100),
            Oversize::Stream,
            "IPv6 minimum is carried"
        );
        assert_eq!(oversize_action(&[], 1100), Oversize::Stream);
    }

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
