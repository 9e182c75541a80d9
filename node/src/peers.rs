//! The node's peers: one end-to-end QUIC connection per peer (SPEC §6 Tunnel), found
//! by the peer's virtual address on the data path, and the paths NMS has named
//! (Route Directions) that a peer may open a connection for.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime};

use cyphonic_proto::{Fqdn, NodeId, PathId};

use crate::fasthash::FastMap;
use serde::Serialize;

/// A fresh tunnel replaces an existing one older than this; younger ones are a race
/// of two simultaneous setups, settled by the NodeID rule.
pub const FRESH_AFTER: Duration = Duration::from_secs(2);

/// How long a link's packets stay on QUIC after one too large for the fast data
/// channel went there.
pub const QUIC_STICKY: Duration = Duration::from_millis(50);

/// Oversize packets queued per link for its stream; more are dropped.
const OVERSIZE_QUEUE: usize = 256;

/// How a peer's packets travel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PathKind {
    /// Straight between the two real addresses (Process Code 1 or 2).
    Direct,
    /// Both behind the same NAT, on their private addresses (Process Code 4).
    Lan,
    /// Through a TRS, forwarded by Connection ID (Process Code 3).
    Relayed,
}

impl std::fmt::Display for PathKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PathKind::Direct => "direct",
            PathKind::Lan => "lan",
            PathKind::Relayed => "relayed",
        })
    }
}

/// Who a path leads to, as NMS named it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerInfo {
    pub fqdn: Fqdn,
    pub virtual_ipv4: Ipv4Addr,
    pub virtual_ipv6: Ipv6Addr,
}

/// Per-link counters, updated on the data path without locks.
#[derive(Debug, Default)]
pub struct Counters {
    pub tx_packets: AtomicU64,
    pub tx_bytes: AtomicU64,
    pub rx_packets: AtomicU64,
    pub rx_bytes: AtomicU64,
    /// Capsules whose inner source was not the peer's virtual address.
    pub spoofed: AtomicU64,
    /// Capsules that did not decode or named another path.
    pub malformed: AtomicU64,
    /// Packets answered with Packet Too Big / Fragmentation Needed.
    pub too_big: AtomicU64,
    /// Packets too large for a datagram carried on the link's stream instead.
    pub on_stream: AtomicU64,
    /// Milliseconds since the link's start at the last packet either way.
    pub last_active_ms: AtomicU64,
    /// Packets sent and received on the fast data channel (included in the totals).
    pub fast_tx: AtomicU64,
    pub fast_rx: AtomicU64,
    /// Fast-data packets refused: forged, replayed, or too old.
    pub fast_rejected: AtomicU64,
}

/// A live tunnel to one peer.
#[derive(Debug)]
pub struct PeerLink {
    pub peer: PeerInfo,
    pub path_id: PathId,
    pub kind: PathKind,
    pub conn: quinn::Connection,
    /// Whether this node dialed the connection.
    pub dialed: bool,
    /// A tunnel set up by a Route Direction (or re-set-up after a move), as opposed
    /// to an extra connection from hole punching (Tunnel Request with Flag 12).
    pub fresh: bool,
    pub peer_node_id: Option<NodeId>,
    pub started: Instant,
    pub started_wall: SystemTime,
    pub counters: Arc<Counters>,
    /// The fast data channel to the peer, when both ends offered one (Tunnel
    /// Request/Response with a Fast Data extension).
    pub fast_tx: std::sync::OnceLock<crate::fastdata::TxChannel>,
    /// This end's receive channel; dropping the link unregisters it.
    pub fast_rx: std::sync::OnceLock<crate::fastdata::Registration>,
    /// Until when (ms since `started`) packets stay on QUIC after a large one went
    /// there (see [`PeerLink::on_quic`]).
    quic_until_ms: AtomicU64,
    /// The path this link replaced (relayed → direct), if any.
    pub switched_from: std::sync::OnceLock<PathKind>,
    /// Encoded Capsules too large for a datagram, for the link's stream writer.
    pub oversize: tokio::sync::mpsc::Sender<bytes::Bytes>,
    oversize_rx: std::sync::Mutex<Option<tokio::sync::mpsc::Receiver<bytes::Bytes>>>,
}

impl PeerLink {
    pub fn new(
        peer: PeerInfo,
        path_id: PathId,
        kind: PathKind,
        conn: quinn::Connection,
        dialed: bool,
        peer_node_id: Option<NodeId>,
    ) -> PeerLink {
        let (oversize, rx) = tokio::sync::mpsc::channel(OVERSIZE_QUEUE);
        PeerLink {
            peer,
            path_id,
            kind,
            conn,
            dialed,
            fresh: true,
            peer_node_id,
            started: Instant::now(),
            started_wall: SystemTime::now(),
            counters: Arc::new(Counters::default()),
            fast_tx: std::sync::OnceLock::new(),
            fast_rx: std::sync::OnceLock::new(),
            quic_until_ms: AtomicU64::new(0),
            switched_from: std::sync::OnceLock::new(),
            oversize,
            oversize_rx: std::sync::Mutex::new(Some(rx)),
        }
    }

    /// The receiving end of [`PeerLink::oversize`] (once).
    pub fn take_oversize_rx(&self) -> Option<tokio::sync::mpsc::Receiver<bytes::Bytes>> {
        self.oversize_rx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }

    pub fn touch(&self) {
        let ms = self.started.elapsed().as_millis() as u64;
        self.counters.last_active_ms.store(ms, Ordering::Relaxed);
    }

    /// A packet too large for the fast data channel went on QUIC: keep the link's
    /// packets there for [`QUIC_STICKY`], so a flow's small packets do not overtake
    /// its large ones still queued in quinn.
    pub fn quic_now(&self) {
        let until = self.started.elapsed().as_millis() as u64 + QUIC_STICKY.as_millis() as u64;
        self.quic_until_ms.store(until, Ordering::Relaxed);
    }

    /// Whether packets are kept on QUIC (see [`PeerLink::quic_now`]).
    pub fn on_quic(&self) -> bool {
        let until = self.quic_until_ms.load(Ordering::Relaxed);
        until != 0 && (self.started.elapsed().as_millis() as u64) < until
    }

    pub fn idle_for(&self) -> Duration {
        let last = Duration::from_millis(self.counters.last_active_ms.load(Ordering::Relaxed));
        self.started.elapsed().saturating_sub(last)
    }

    pub fn is_alive(&self) -> bool {
        self.conn.close_reason().is_none()
    }

    /// Whether a packet with this inner source may come from this peer.
    pub fn owns(&self, src: IpAddr) -> bool {
        match src {
            IpAddr::V4(a) => a == self.peer.virtual_ipv4,
            IpAddr::V6(a) => a == self.peer.virtual_ipv6,
        }
    }

    pub fn status(&self) -> PeerStatus {
        let c = &self.counters;
        // One look at quinn's connection for every QUIC figure.
        let quic = self.conn.stats().path;
        let since = self
            .started_wall
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        PeerStatus {
            fqdn: self.peer.fqdn.to_string(),
            virtual_ipv4: self.peer.virtual_ipv4,
            virtual_ipv6: self.peer.virtual_ipv6,
            path: self.kind,
            remote: crate::cloud::unmapped(self.conn.remote_address()),
            rtt_ms: quic.rtt.as_secs_f64() * 1000.0,
            since_unix: since,
            dialed: self.dialed,
            path_id: self.path_id.to_string(),
            tx_packets: c.tx_packets.load(Ordering::Relaxed),
            tx_bytes: c.tx_bytes.load(Ordering::Relaxed),
            rx_packets: c.rx_packets.load(Ordering::Relaxed),
            rx_bytes: c.rx_bytes.load(Ordering::Relaxed),
            spoofed_dropped: c.spoofed.load(Ordering::Relaxed),
            malformed_dropped: c.malformed.load(Ordering::Relaxed),
            too_big: c.too_big.load(Ordering::Relaxed),
            on_stream: c.on_stream.load(Ordering::Relaxed),
            idle_secs: self.idle_for().as_secs(),
            max_datagram: self.conn.max_datagram_size(),
            switched_from: self.switched_from.get().copied(),
            quic_sent_packets: quic.sent_packets,
            quic_lost_packets: quic.lost_packets,
            cwnd: quic.cwnd,
            data_channel: if self.fast_tx.get().is_some() {
                "fast"
            } else {
                "quic"
            }
            .to_owned(),
            fast_tx_packets: c.fast_tx.load(Ordering::Relaxed),
            fast_rx_packets: c.fast_rx.load(Ordering::Relaxed),
            fast_rejected: c.fast_rejected.load(Ordering::Relaxed),
        }
    }
}

/// One row of `cyphonic-node peers`.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct PeerStatus {
    pub fqdn: String,
    pub virtual_ipv4: Ipv4Addr,
    pub virtual_ipv6: Ipv6Addr,
    pub path: PathKind,
    pub remote: SocketAddr,
    pub rtt_ms: f64,
    pub since_unix: u64,
    pub dialed: bool,
    pub path_id: String,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub spoofed_dropped: u64,
    pub malformed_dropped: u64,
    pub too_big: u64,
    pub on_stream: u64,
    pub idle_secs: u64,
    pub max_datagram: Option<usize>,
    /// The path type this tunnel replaced (e.g. relayed before it went direct); the
    /// switch happened at `since_unix`.
    #[serde(default)]
    pub switched_from: Option<PathKind>,
    /// QUIC packets sent on the tunnel, and those QUIC declared lost (datagrams are
    /// not resent: a lost packet is a lost overlay packet).
    #[serde(default)]
    pub quic_sent_packets: u64,
    #[serde(default)]
    pub quic_lost_packets: u64,
    /// The outer congestion window, bytes.
    #[serde(default)]
    pub cwnd: u64,
    /// How packets travel: "fast" (the fast data channel, both ends offered it) or
    /// "quic" (QUIC DATAGRAMs).
    #[serde(default)]
    pub data_channel: String,
    /// Packets sent and received on the fast data channel (part of tx/rx_packets),
    /// and fast-data packets refused (forged, replayed or too old).
    #[serde(default)]
    pub fast_tx_packets: u64,
    #[serde(default)]
    pub fast_rx_packets: u64,
    #[serde(default)]
    pub fast_rejected: u64,
}

impl<'de> serde::Deserialize<'de> for PathKind {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        match s.as_str() {
            "direct" => Ok(PathKind::Direct),
            "lan" => Ok(PathKind::Lan),
            "relayed" => Ok(PathKind::Relayed),
            other => Err(serde::de::Error::custom(format!(
                "unknown path kind {other}"
            ))),
        }
    }
}

/// A path NMS named: the peer that may open (or answer) a connection for it.
#[derive(Debug, Clone)]
pub struct Expected {
    pub peer: PeerInfo,
    pub kind: PathKind,
    pub until: Instant,
    /// For a relayed path: where the peer may be reached directly (SPEC §8).
    pub candidates: Vec<SocketAddr>,
}

#[derive(Default)]
struct Inner {
    by_fqdn: HashMap<Fqdn, Arc<PeerLink>>,
    by_v4: FastMap<Ipv4Addr, Arc<PeerLink>>,
    by_v6: FastMap<Ipv6Addr, Arc<PeerLink>>,
    expected: HashMap<PathId, Expected>,
}

/// Every peer of one identity.
#[derive(Default)]
pub struct PeerTable {
    inner: RwLock<Inner>,
    /// Woken whenever an expectation or a link is added.
    pub changed: tokio::sync::Notify,
}

impl PeerTable {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(|p| p.into_inner())
    }
    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(|p| p.into_inner())
    }

    /// The link carrying packets to `dst`.
    pub fn route(&self, dst: IpAddr) -> Option<Arc<PeerLink>> {
        let g = self.read();
        match dst {
            IpAddr::V4(a) => g.by_v4.get(&a).cloned(),
            IpAddr::V6(a) => g.by_v6.get(&a).cloned(),
        }
    }

    pub fn by_fqdn(&self, fqdn: &Fqdn) -> Option<Arc<PeerLink>> {
        self.read().by_fqdn.get(fqdn).cloned()
    }

    /// Install a link. When the peer already has a live one, one connection per pair
    /// survives (SPEC §6, §8): a fresh tunnel (set up by a Route Direction, e.g. after
    /// a move) replaces one older than [`FRESH_AFTER`]; otherwise a direct (or LAN) path
    /// beats a relayed one; between two of the same kind dialed by different ends, the
    /// one dialed by the lower NodeID; otherwise the newer. Returns the link now in use
    /// and the one displaced (to be closed after a drain), if any.
    pub fn install(
        &self,
        link: Arc<PeerLink>,
        my_id: NodeId,
    ) -> (Arc<PeerLink>, Option<Arc<PeerLink>>) {
        let mut g = self.write();
        let old = g.by_fqdn.get(&link.peer.fqdn).cloned();
        let relayed = |l: &PeerLink| l.kind == PathKind::Relayed;
        let keep_new = match &old {
            None => true,
            Some(o) if !o.is_alive() => true,
            Some(o) if link.fresh && o.started.elapsed() > FRESH_AFTER => true,
            Some(o) if relayed(o) != relayed(&link) => relayed(o),
            Some(o) if o.dialed == link.dialed => true,
            Some(o) => {
                let dialer = |l: &PeerLink| {
                    if l.dialed {
                        Some(my_id)
                    } else {
                        l.peer_node_id
                    }
                };
                match (dialer(o), dialer(&link)) {
                    (Some(a), Some(b)) => b.0 < a.0,
                    _ => true,
                }
            }
        };
        if !keep_new {
            let o = old.expect("checked above");
            return (o, Some(link));
        }
        // Keep the path history: relayed → direct, also when a second direct
        // connection (both ends hole-punched) replaces the first.
        if let Some(o) = old.as_ref().filter(|o| o.is_alive()) {
            let from = if o.kind != link.kind {
                Some(o.kind)
            } else {
                o.switched_from.get().copied()
            };
            if let Some(f) = from {
                let _ = link.switched_from.set(f);
            }
        }
        g.by_fqdn.insert(link.peer.fqdn.clone(), link.clone());
        g.by_v4.insert(link.peer.virtual_ipv4, link.clone());
        g.by_v6.insert(link.peer.virtual_ipv6, link.clone());
        drop(g);
        self.changed.notify_waiters();
        (link, old)
    }

    /// Remove `link` if it is still the one in use for its peer.
    pub fn remove(&self, link: &Arc<PeerLink>) -> bool {
        let mut g = self.write();
        let current = g.by_fqdn.get(&link.peer.fqdn);
        if !current.is_some_and(|c| Arc::ptr_eq(c, link)) {
            return false;
        }
        g.by_fqdn.remove(&link.peer.fqdn);
        g.by_v4.remove(&link.peer.virtual_ipv4);
        g.by_v6.remove(&link.peer.virtual_ipv6);
        true
    }

    /// Links that are closed or idle longer than `idle`.
    pub fn stale(&self, idle: Duration) -> Vec<Arc<PeerLink>> {
        self.read()
            .by_fqdn
            .values()
            .filter(|l| !l.is_alive() || l.idle_for() > idle)
            .cloned()
            .collect()
    }

    pub fn links(&self) -> Vec<Arc<PeerLink>> {
        let mut v: Vec<_> = self.read().by_fqdn.values().cloned().collect();
        v.sort_by(|a, b| a.peer.fqdn.as_str().cmp(b.peer.fqdn.as_str()));
        v
    }

    pub fn expect(&self, path: PathId, e: Expected) {
        let mut g = self.write();
        let now = Instant::now();
        g.expected.retain(|_, e| e.until > now);
        g.expected.insert(path, e);
        drop(g);
        self.changed.notify_waiters();
    }

    pub fn expected(&self, path: &PathId) -> Option<Expected> {
        let g = self.read();
        g.expected
            .get(path)
            .filter(|e| e.until > Instant::now())
            .cloned()
    }

    /// The expectation for `path`, waiting up to `wait` for NMS's word to arrive (the
    /// dialing peer can be faster than our Route Direction).
    pub async fn wait_expected(&self, path: &PathId, wait: Duration) -> Option<Expected> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let notified = self.changed.notified();
            if let Some(e) = self.expected(path) {
                return Some(e);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.expected(path);
            }
        }
    }

    /// Forget every path named for `path` and close its link (Finalization).
    pub fn finalize(&self, path: &PathId) -> Vec<Arc<PeerLink>> {
        let mut g = self.write();
        g.expected.remove(path);
        let gone: Vec<Arc<PeerLink>> = g
            .by_fqdn
            .values()
            .filter(|l| &l.path_id == path)
            .cloned()
            .collect();
        for l in &gone {
            g.by_fqdn.remove(&l.peer.fqdn);
            g.by_v4.remove(&l.peer.virtual_ipv4);
            g.by_v6.remove(&l.peer.virtual_ipv6);
        }
        gone
    }
}
