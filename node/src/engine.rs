//! The peer data plane (docs/design-dataplane-loop.md): one task owns the node's UDP
//! socket (SPEC §3: one socket for the cloud and every peer) and drives the peer
//! connections through `quinn_proto` inline. A datagram goes from the socket to the
//! TUN, or from the TUN to the socket, in one wake of one task: no hand-off between
//! an endpoint driver, a connection driver and a reader, which is where quinn's
//! runtime spent as much time as QUIC itself (BENCHMARKS.md).
//!
//! The cloud connections (AS, NMS, TRS: long-lived and stream-heavy) stay on a
//! `quinn::Endpoint` whose socket is this engine ([`CloudSocket`]): the engine hands it
//! the datagrams that are not for a peer connection. Which stack a datagram is for
//! is told by its Destination CID alone: every CID of the node starts with its relay
//! token, and the engine's carry [`PEER_PLANE_BIT`] while the cloud endpoint's do not
//! (proto/src/quic.rs). Only peers dial a node, so an Initial with a CID of another
//! length, another token or the bit set is a peer's.
//!
//! What the rest of the node needs of a peer connection is a [`PeerConn`]: datagrams,
//! one-message-per-stream transactions (SPEC §4), the oversize stream (SPEC §6), the
//! figures `status` shows, and close.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::io::{self, IoSliceMut};
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use cyphonic_pki::rpc::{TransactError, MAX_SIGNALING_LEN};
use cyphonic_proto::framing::{frame_remaining, read_message, FrameError};
use cyphonic_proto::quic::{on_peer_plane, CID_LEN};
use cyphonic_proto::{Message, RelayToken, HEADER_LEN, MAX_MESSAGE_LEN};
use quinn::udp::{RecvMeta, UdpSocketState};
use quinn_proto as qp;
use tokio::io::unix::AsyncFd;
use tokio::sync::{mpsc, oneshot, Notify};

use crate::node::Node;
use crate::tun::{Tun, BATCH};

/// Oversize Capsules queued per connection for its stream; more are refused.
const UNI_QUEUE: usize = 256;
/// Datagrams waiting for the cloud endpoint; more are dropped (it reads them within a
/// wake of its driver, so this only fills when that driver is starved).
const CLOUD_QUEUE: usize = 1024;
/// Receive batches the loop takes from the socket before it looks at the TUN again.
const RX_ROUNDS: usize = 8;
/// Datagrams in one GSO send at most (see `Engine::start`).
const MAX_GSO_SEGMENTS: usize = 10;
/// Largest UDP payload the engine receives in one segment (GRO buffers hold several).
const MAX_UDP: usize = 65536;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Where a peer connection's traffic goes once it carries a tunnel.
pub trait ConnHandler: Send + Sync + 'static {
    /// Datagrams received on the connection since the last call, in order.
    fn datagrams(&self, datagrams: &mut Vec<Bytes>);
    /// One whole message from an oversize stream (SPEC §6 Data), or the reason it
    /// was malformed.
    fn stream_message(&self, message: Result<Message, FrameError>);
    /// The connection is closed, by either side or by a timeout.
    fn closed(&self, reason: &qp::ConnectionError);
}

/// A request a peer sent on a stream of its own, and how to answer it.
pub struct Request {
    pub message: Result<Message, FrameError>,
    pub reply: Responder,
}

/// Answers one request stream (dropping it closes the stream without an answer).
pub struct Responder {
    conn: PeerConn,
    stream: qp::StreamId,
    done: bool,
}

impl Responder {
    /// Send `reply` (None: nothing) and finish the stream.
    pub fn send(mut self, reply: Option<&Message>) {
        self.done = true;
        let bytes = match reply.map(Message::encode) {
            Some(Ok(b)) => Bytes::from(b),
            Some(Err(e)) => {
                tracing::debug!(error = %e, "cannot encode a reply");
                Bytes::new()
            }
            None => Bytes::new(),
        };
        let stream = self.stream;
        self.conn.with(|st, h| {
            if let Some(e) = st.conns.get_mut(&h) {
                e.write(stream, bytes, true);
            }
        });
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        if !self.done {
            let stream = self.stream;
            self.conn.with(|st, h| {
                if let Some(e) = st.conns.get_mut(&h) {
                    e.write(stream, Bytes::new(), true);
                }
            });
        }
    }
}

/// The TUN and the node whose packets the engine carries (attached after login).
pub struct DataPlane {
    pub tun: Arc<Tun>,
    pub node: Arc<Node>,
}

/// Datagrams for the cloud endpoint, and its reader's waker.
#[derive(Default)]
struct CloudQueue {
    datagrams: VecDeque<(Vec<u8>, RecvMeta)>,
    waker: Option<Waker>,
    dropped: u64,
}

pub struct Engine {
    me: std::sync::Weak<Engine>,
    io: AsyncFd<std::net::UdpSocket>,
    udp: UdpSocketState,
    local: SocketAddr,
    state: Mutex<State>,
    cloud: Mutex<CloudQueue>,
    /// Wakes the loop: timers moved, connections to close, a data plane attached.
    wake: Notify,
    attach: Mutex<Option<DataPlane>>,
    /// Connections whose last handle is gone (closed by the loop).
    orphans: Mutex<Vec<qp::ConnectionHandle>>,
    acceptor: OnceLock<Box<dyn Fn(PeerConn) + Send + Sync>>,
    stopped: std::sync::atomic::AtomicBool,
    pub counters: EngineCounters,
}

/// What the engine's socket did, for `status`.
#[derive(Debug, Default)]
pub struct EngineCounters {
    rx_peer: AtomicU64,
    rx_cloud: AtomicU64,
    tx_dropped: AtomicU64,
    rx_errors: AtomicU64,
}

/// [`EngineCounters`] at one moment (`cyphonic-node status`, `socket`).
#[derive(Debug, Clone, Copy, Default, serde::Serialize, serde::Deserialize)]
pub struct SocketStats {
    /// Datagrams for peer connections (the engine) and for the cloud endpoint.
    pub rx_peer: u64,
    pub rx_cloud: u64,
    /// Sends the socket refused (its buffer full): QUIC's loss recovery resends.
    pub tx_dropped: u64,
    /// Receive errors (ICMP errors reported on the socket).
    pub rx_errors: u64,
}

impl EngineCounters {
    pub fn snapshot(&self) -> SocketStats {
        SocketStats {
            rx_peer: self.rx_peer.load(Relaxed),
            rx_cloud: self.rx_cloud.load(Relaxed),
            tx_dropped: self.tx_dropped.load(Relaxed),
            rx_errors: self.rx_errors.load(Relaxed),
        }
    }
}

struct State {
    endpoint: qp::Endpoint,
    conns: HashMap<qp::ConnectionHandle, Entry>,
    /// Connections touched since the last drive (sends from the TUN batch).
    dirty: Vec<qp::ConnectionHandle>,
    /// Work to do once the lock is released (callbacks into the node).
    later: Vec<Later>,
    buf: Vec<u8>,
    gso: usize,
}

enum Later {
    Datagrams(Arc<dyn ConnHandler>, Vec<Bytes>),
    Message(Arc<dyn ConnHandler>, Box<Result<Message, FrameError>>),
    Closed(Arc<dyn ConnHandler>, qp::ConnectionError),
    Accepted(PeerConn),
    Drop(Box<Entry>),
}

struct RpcOut {
    answer: oneshot::Sender<Result<Message, TransactError>>,
    buf: Vec<u8>,
}

struct Entry {
    conn: qp::Connection,
    shared: Arc<Shared>,
    handler: Option<Arc<dyn ConnHandler>>,
    established: Option<oneshot::Sender<Result<(), qp::ConnectionError>>>,
    /// Accepted (not dialed): handed to the acceptor once connected.
    incoming: bool,
    requests: mpsc::UnboundedSender<Request>,
    rpc_out: HashMap<qp::StreamId, RpcOut>,
    rpc_in: HashMap<qp::StreamId, Vec<u8>>,
    uni_in: HashMap<qp::StreamId, Vec<u8>>,
    /// Unwritten tails of stream writes, with whether to finish after them.
    pending: HashMap<qp::StreamId, (Bytes, bool)>,
    uni_out: Option<qp::StreamId>,
    uni_queue: VecDeque<Bytes>,
}

/// What every handle of one connection shares.
struct Shared {
    /// The owner every handle given out shares (see [`Owner`]).
    owner: Mutex<std::sync::Weak<Owner>>,
    lost: OnceLock<qp::ConnectionError>,
    closed: Notify,
    requests: tokio::sync::Mutex<mpsc::UnboundedReceiver<Request>>,
    remote: SocketAddr,
}

/// Closes its connection when the last [`PeerConn`] is dropped (as quinn does).
struct Owner {
    engine: std::sync::Weak<Engine>,
    handle: qp::ConnectionHandle,
}

impl Drop for Owner {
    fn drop(&mut self) {
        if let Some(engine) = self.engine.upgrade() {
            lock(&engine.orphans).push(self.handle);
            engine.wake.notify_one();
        }
    }
}

/// A handle to one peer connection on the engine.
#[derive(Clone)]
pub struct PeerConn {
    engine: Arc<Engine>,
    handle: qp::ConnectionHandle,
    shared: Arc<Shared>,
    _owner: Arc<Owner>,
}

impl std::fmt::Debug for PeerConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerConn")
            .field("handle", &self.handle.0)
            .field("remote", &self.shared.remote)
            .finish()
    }
}

thread_local! {
    /// Set while the engine's loop sends a TUN batch: connections are flushed once
    /// after the batch (GSO), not after each packet.
    static IN_LOOP: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

impl Engine {
    /// Take over `socket` (bound, non-blocking) as the node's one socket, with CIDs
    /// that carry `token`. Starts the loop on the current runtime.
    pub fn start(socket: std::net::UdpSocket, token: RelayToken) -> io::Result<Arc<Engine>> {
        let udp = UdpSocketState::new((&socket).into())?;
        let local = socket.local_addr()?;
        let mut cfg = qp::EndpointConfig::default();
        cfg.cid_generator(move || {
            Box::new(cyphonic_proto::quic::RelayCidGenerator::new(token).with_plane(true))
        });
        let endpoint = qp::Endpoint::new(Arc::new(cfg), None, !udp.may_fragment(), None);
        // quinn's cap: 64-segment sends lost ~5 % of their segments on the bench's
        // veth (BENCHMARKS.md); 10 to 32 all measured alike.
        let gso = udp.max_gso_segments().clamp(1, MAX_GSO_SEGMENTS);
        // SAFETY: the engine owns the socket from here on; the descriptor stays open for
        // as long as the AsyncFd that holds it.
        let io =
            unsafe { AsyncFd::register(socket) }.map_err(|e| io::Error::other(e.to_string()))?;
        let engine = Arc::new_cyclic(|me| Engine {
            me: me.clone(),
            io,
            udp,
            local,
            state: Mutex::new(State {
                endpoint,
                conns: HashMap::new(),
                dirty: Vec::new(),
                later: Vec::new(),
                buf: Vec::with_capacity(MAX_UDP),
                gso,
            }),
            cloud: Mutex::new(CloudQueue::default()),
            wake: Notify::new(),
            attach: Mutex::new(None),
            orphans: Mutex::new(Vec::new()),
            acceptor: OnceLock::new(),
            stopped: Default::default(),
            counters: Default::default(),
        });
        tokio::spawn(engine.clone().run());
        Ok(engine)
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Who accepted peer connections are handed to (once connected).
    pub fn set_acceptor(&self, f: Box<dyn Fn(PeerConn) + Send + Sync>) {
        let _ = self.acceptor.set(f);
    }

    pub fn set_server_config(&self, sc: Option<Arc<qp::ServerConfig>>) {
        lock(&self.state).endpoint.set_server_config(sc);
    }

    /// Carry `dp`'s TUN: its packets are read and sent by this loop from now on.
    pub fn attach(&self, dp: DataPlane) {
        *lock(&self.attach) = Some(dp);
        self.wake.notify_one();
    }

    /// Close every peer connection and stop the loop.
    pub fn stop(&self, code: qp::VarInt, reason: &[u8]) {
        {
            let mut st = lock(&self.state);
            let handles: Vec<_> = st.conns.keys().copied().collect();
            for h in handles {
                st.close(self, h, code, reason);
            }
        }
        self.run_later();
        self.stopped
            .store(true, std::sync::atomic::Ordering::Relaxed);
        self.wake.notify_one();
    }

    /// A socket for a `quinn::Endpoint` that carries the cloud connections.
    pub fn cloud_socket(self: &Arc<Self>) -> Arc<dyn quinn::AsyncUdpSocket> {
        Arc::new(CloudSocket(self.clone()))
    }

    /// Dial `addr` as a client; resolves once the handshake is done.
    pub async fn connect(
        self: &Arc<Self>,
        config: qp::ClientConfig,
        addr: SocketAddr,
        server_name: &str,
    ) -> anyhow::Result<PeerConn> {
        let addr = self.normalize(addr);
        let (conn, rx) = {
            let mut st = lock(&self.state);
            let (h, c) = st
                .endpoint
                .connect(Instant::now(), config, addr, server_name)?;
            let (tx, rx) = oneshot::channel();
            let shared = st.insert(h, c, false, Some(tx));
            let conn = self.handle_for(h, &shared);
            st.drive(self, h);
            (conn, rx)
        };
        self.run_later();
        self.wake.notify_one();
        match rx.await {
            Ok(Ok(())) => Ok(conn),
            Ok(Err(e)) => Err(e.into()),
            Err(_) => Err(anyhow::anyhow!("connection dropped during the handshake")),
        }
    }

    /// quinn's rule: a dual-stack socket addresses IPv4 peers as v4-mapped IPv6.
    fn normalize(&self, addr: SocketAddr) -> SocketAddr {
        match addr {
            SocketAddr::V4(a) if self.local.is_ipv6() => {
                SocketAddr::new(IpAddr::V6(a.ip().to_ipv6_mapped()), a.port())
            }
            a => a,
        }
    }

    fn send(&self, t: &qp::Transmit, contents: &[u8]) {
        let transmit = quinn::udp::Transmit {
            destination: t.destination,
            ecn: t
                .ecn
                .and_then(|e| quinn::udp::EcnCodepoint::from_bits(e as u8)),
            contents,
            segment_size: t.segment_size,
            src_ip: t.src_ip,
        };
        // A full socket buffer drops the datagram, as a congested link would; QUIC's
        // loss recovery resends what mattered.
        if let Err(e) = self.udp.send(self.io.get_ref().into(), &transmit) {
            self.counters.tx_dropped.fetch_add(1, Relaxed);
            if e.kind() != io::ErrorKind::WouldBlock {
                tracing::trace!(error = %e, to = %t.destination, "UDP send failed");
            }
        }
    }

    /// Run what the last locked section left for outside the lock.
    fn run_later(&self) {
        let later = std::mem::take(&mut lock(&self.state).later);
        if later.is_empty() {
            return;
        }
        let mut later = later;
        for l in later.drain(..) {
            match l {
                Later::Datagrams(h, mut ds) => h.datagrams(&mut ds),
                Later::Message(h, m) => h.stream_message(*m),
                Later::Closed(h, reason) => h.closed(&reason),
                Later::Accepted(conn) => match self.acceptor.get() {
                    Some(f) => f(conn),
                    None => conn.close(qp::VarInt::from_u32(0), b"not accepting"),
                },
                Later::Drop(e) => drop(e),
            }
        }
        // Give the (now empty) vector back for reuse.
        let mut st = lock(&self.state);
        if st.later.is_empty() {
            st.later = later;
        }
    }

    async fn run(self: Arc<Self>) {
        let mut rx = RxBufs::new(self.udp.gro_segments());
        let mut dp: Option<(Arc<Tun>, Arc<Node>)> = None;
        let mut tun_io: Option<TunIo> = None;
        let mut scratch = BytesMut::with_capacity(256 * 1024);
        let idle_deadline = Instant::now() + Duration::from_secs(365 * 86_400);
        let mut armed = idle_deadline;
        let mut sleep = std::pin::pin!(tokio::time::sleep_until(idle_deadline.into()));
        loop {
            if self.stopped.load(std::sync::atomic::Ordering::Relaxed) {
                return;
            }
            if dp.is_none() {
                if let Some(d) = lock(&self.attach).as_ref() {
                    tun_io = Some(TunIo::new(d.tun.mtu));
                    dp = Some((d.tun.clone(), d.node.clone()));
                }
            }
            let deadline = self.housekeeping();
            self.run_later();
            // One timer, moved only when the deadline changes: registering a new one
            // each turn costs a timer-wheel update (and a wake of the driver when it
            // is earlier).
            let deadline = deadline.unwrap_or(idle_deadline);
            if deadline != armed {
                sleep.as_mut().reset(deadline.into());
                armed = deadline;
            }
            let tun_got = tokio::select! {
                // Unbiased: a busy socket must not starve the TUN (nor the reverse).
                r = self.io.readable() => { match r {
                    Ok(mut guard) => {
                        let drained = self.receive(&mut rx);
                        if drained {
                            guard.clear_ready();
                        }
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "UDP socket failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }; None },
                n = tun_read(dp.as_ref().map(|d| &d.0), tun_io.as_mut()) => Some(n),
                _ = self.wake.notified() => None,
                _ = &mut sleep => {
                    // Fired: re-arm next turn whatever the deadline is.
                    armed = idle_deadline;
                    None
                }
            };
            if let Some(n) = tun_got {
                if let (Some((tun, node)), Some(io)) = (&dp, &tun_io) {
                    match n {
                        Ok(n) => {
                            IN_LOOP.with(|f| f.set(true));
                            for (b, &len) in io.bufs.iter().zip(&io.sizes).take(n) {
                                if len > 0 {
                                    node.send_packet(&b[..len], &mut scratch);
                                }
                            }
                            IN_LOOP.with(|f| f.set(false));
                            let mut st = lock(&self.state);
                            let dirty = std::mem::take(&mut st.dirty);
                            for h in &dirty {
                                st.drive(&self, *h);
                            }
                            st.dirty = dirty;
                            st.dirty.clear();
                        }
                        Err(e) if crate::tun::fatal(&e) => {
                            tracing::error!(error = %e, tun = %tun.name,
                                    "TUN read failed; data plane stopped");
                            dp = None;
                            tun_io = None;
                        }
                        Err(e) => tracing::debug!(error = %e, tun = %tun.name, "TUN read dropped"),
                    }
                }
            }
        }
    }

    /// Close orphaned connections, run due timers; the next deadline.
    fn housekeeping(&self) -> Option<Instant> {
        let orphans = std::mem::take(&mut *lock(&self.orphans));
        let mut st = lock(&self.state);
        for h in orphans {
            st.close(self, h, qp::VarInt::from_u32(0), b"");
        }
        let now = Instant::now();
        let due: Vec<qp::ConnectionHandle> = st
            .conns
            .iter_mut()
            .filter_map(|(h, e)| {
                e.conn
                    .poll_timeout()
                    .is_some_and(|t| t <= now)
                    .then_some(*h)
            })
            .collect();
        for h in due {
            if let Some(e) = st.conns.get_mut(&h) {
                e.conn.handle_timeout(now);
            }
            st.drive(self, h);
        }
        st.conns
            .values_mut()
            .filter_map(|e| e.conn.poll_timeout())
            .min()
    }

    /// Read what the socket holds (up to a budget): true when it is drained.
    fn receive(&self, rx: &mut RxBufs) -> bool {
        let mut touched: Vec<qp::ConnectionHandle> = Vec::new();
        for _ in 0..RX_ROUNDS {
            let mut cloud_got = false;
            {
                let mut st = lock(&self.state);
                let n = {
                    let mut iovs: Vec<IoSliceMut<'_>> =
                        rx.bufs.iter_mut().map(|b| IoSliceMut::new(b)).collect();
                    match self
                        .udp
                        .recv(self.io.get_ref().into(), &mut iovs, &mut rx.meta)
                    {
                        Ok(n) => n,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                        Err(e) => {
                            self.counters.rx_errors.fetch_add(1, Relaxed);
                            // ICMP errors surface here (port unreachable): not fatal.
                            tracing::trace!(error = %e, "UDP receive error");
                            continue;
                        }
                    }
                };
                let now = Instant::now();
                for i in 0..n {
                    let meta = rx.meta[i];
                    // One copy per GRO list; its datagrams are split off it.
                    let mut data = BytesMut::from(&rx.bufs[i][..meta.len]);
                    let stride = meta.stride.max(1);
                    while !data.is_empty() {
                        let seg = data.split_to(stride.min(data.len()));
                        if !for_peer_plane(&seg) {
                            self.counters.rx_cloud.fetch_add(1, Relaxed);
                            cloud_got |= self.to_cloud(&seg, meta);
                            continue;
                        }
                        self.counters.rx_peer.fetch_add(1, Relaxed);
                        let ecn = meta.ecn.and_then(|e| qp::EcnCodepoint::from_bits(e as u8));
                        st.handle_datagram(
                            self,
                            now,
                            meta.addr,
                            meta.dst_ip,
                            ecn,
                            seg,
                            &mut touched,
                        );
                    }
                }
                // Deliver each batch before reading the next: quinn-proto buffers
                // received datagrams only up to its limit.
                for h in touched.drain(..) {
                    st.drive(self, h);
                }
            }
            self.run_later();
            if cloud_got {
                if let Some(w) = lock(&self.cloud).waker.take() {
                    w.wake();
                }
            }
        }
        false
    }

    /// Queue a datagram for the cloud endpoint: true if queued.
    fn to_cloud(&self, seg: &[u8], meta: RecvMeta) -> bool {
        let mut q = lock(&self.cloud);
        if q.datagrams.len() >= CLOUD_QUEUE {
            q.dropped += 1;
            if q.dropped.is_power_of_two() {
                tracing::debug!(
                    dropped = q.dropped,
                    "cloud endpoint queue full; datagram dropped"
                );
            }
            return false;
        }
        let mut m = meta;
        m.len = seg.len();
        m.stride = seg.len();
        q.datagrams.push_back((seg.to_vec(), m));
        true
    }
}

/// Whether a datagram is for a peer connection (the engine) rather than the cloud
/// endpoint (see the module docs).
fn for_peer_plane(pkt: &[u8]) -> bool {
    let Some(&first) = pkt.first() else {
        return false;
    };
    if first & 0x80 == 0 {
        // Short header: the DCID is ours, 16 bytes.
        return pkt.get(1..1 + CID_LEN).is_some_and(on_peer_plane);
    }
    // Long header: version (4), DCID length (1), DCID.
    let Some(&len) = pkt.get(5) else {
        return false;
    };
    let Some(dcid) = pkt.get(6..6 + usize::from(len)) else {
        return false;
    };
    // Our cloud connections' CIDs are 16 bytes without the bit; anything else is a
    // peer's Initial (a random DCID of its choice) or a peer connection's packet.
    dcid.len() != CID_LEN || on_peer_plane(dcid)
}

impl State {
    #[allow(clippy::too_many_arguments)]
    fn handle_datagram(
        &mut self,
        engine: &Engine,
        now: Instant,
        from: SocketAddr,
        dst_ip: Option<IpAddr>,
        ecn: Option<qp::EcnCodepoint>,
        data: BytesMut,
        touched: &mut Vec<qp::ConnectionHandle>,
    ) {
        self.buf.clear();
        match self
            .endpoint
            .handle(now, from, dst_ip, ecn, data, &mut self.buf)
        {
            Some(qp::DatagramEvent::ConnectionEvent(h, ev)) => {
                if let Some(e) = self.conns.get_mut(&h) {
                    e.conn.handle_event(ev);
                    if !touched.contains(&h) {
                        touched.push(h);
                    }
                }
            }
            Some(qp::DatagramEvent::NewConnection(incoming)) => {
                let mut buf = std::mem::take(&mut self.buf);
                buf.clear();
                match self.endpoint.accept(incoming, now, &mut buf, None) {
                    Ok((h, conn)) => {
                        self.insert(h, conn, true, None);
                        touched.push(h);
                    }
                    Err(e) => {
                        tracing::debug!(error = %e.cause, %from, "incoming peer connection refused");
                        if let Some(t) = e.response {
                            engine.send(&t, &buf[..t.size]);
                        }
                    }
                }
                self.buf = buf;
            }
            Some(qp::DatagramEvent::Response(t)) => {
                let buf = std::mem::take(&mut self.buf);
                engine.send(&t, &buf[..t.size]);
                self.buf = buf;
            }
            None => {}
        }
    }

    fn insert(
        &mut self,
        h: qp::ConnectionHandle,
        conn: qp::Connection,
        incoming: bool,
        established: Option<oneshot::Sender<Result<(), qp::ConnectionError>>>,
    ) -> Arc<Shared> {
        let (tx, rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            owner: Mutex::new(std::sync::Weak::new()),
            lost: OnceLock::new(),
            closed: Notify::new(),
            requests: tokio::sync::Mutex::new(rx),
            remote: conn.remote_address(),
        });
        self.conns.insert(
            h,
            Entry {
                conn,
                shared: shared.clone(),
                handler: None,
                established,
                incoming,
                requests: tx,
                rpc_out: HashMap::new(),
                rpc_in: HashMap::new(),
                uni_in: HashMap::new(),
                pending: HashMap::new(),
                uni_out: None,
                uni_queue: VecDeque::new(),
            },
        );
        // Handles are made on demand: one made here and dropped would close it.
        shared
    }

    fn close(&mut self, engine: &Engine, h: qp::ConnectionHandle, code: qp::VarInt, reason: &[u8]) {
        let Some(e) = self.conns.get_mut(&h) else {
            return;
        };
        if e.shared.lost.get().is_none() {
            e.conn
                .close(Instant::now(), code, Bytes::copy_from_slice(reason));
            e.lost(qp::ConnectionError::LocallyClosed, &mut self.later);
        }
        self.drive(engine, h);
    }

    /// Process what a connection has to say after anything touched it: endpoint
    /// events, application events, received datagrams and stream data; then send
    /// what it has to send, and forget it once drained.
    fn drive(&mut self, engine: &Engine, h: qp::ConnectionHandle) {
        let Some(e) = self.conns.get_mut(&h) else {
            return;
        };
        let now = Instant::now();
        while let Some(ev) = e.conn.poll_endpoint_events() {
            if let Some(ce) = self.endpoint.handle_event(h, ev) {
                e.conn.handle_event(ce);
            }
        }
        while let Some(ev) = e.conn.poll() {
            match ev {
                qp::Event::HandshakeDataReady | qp::Event::DatagramsUnblocked => {}
                qp::Event::Connected => {
                    if let Some(tx) = e.established.take() {
                        let _ = tx.send(Ok(()));
                    }
                    if e.incoming {
                        self.later
                            .push(Later::Accepted(engine.handle_for(h, &e.shared)));
                    }
                }
                qp::Event::ConnectionLost { reason } => e.lost(reason, &mut self.later),
                qp::Event::Stream(qp::StreamEvent::Opened { dir }) => {
                    while let Some(id) = e.conn.streams().accept(dir) {
                        match dir {
                            qp::Dir::Bi => e.rpc_in.insert(id, Vec::new()),
                            qp::Dir::Uni => e.uni_in.insert(id, Vec::new()),
                        };
                        e.read(engine, h, id, &mut self.later);
                    }
                }
                qp::Event::Stream(qp::StreamEvent::Readable { id }) => {
                    e.read(engine, h, id, &mut self.later)
                }
                qp::Event::Stream(qp::StreamEvent::Writable { id }) => e.resume(id),
                qp::Event::Stream(qp::StreamEvent::Stopped { id, .. }) => {
                    e.pending.remove(&id);
                    if e.uni_out == Some(id) {
                        e.uni_out = None;
                    }
                }
                qp::Event::Stream(qp::StreamEvent::Available { dir: qp::Dir::Uni }) => {
                    e.write_uni()
                }
                qp::Event::Stream(_) => {}
                qp::Event::DatagramReceived => {}
            }
        }
        if let Some(handler) = &e.handler {
            let mut ds = Vec::new();
            while let Some(d) = e.conn.datagrams().recv() {
                ds.push(d);
            }
            if !ds.is_empty() {
                self.later.push(Later::Datagrams(handler.clone(), ds));
            }
        }
        loop {
            self.buf.clear();
            match e.conn.poll_transmit(now, self.gso, &mut self.buf) {
                Some(t) => engine.send(&t, &self.buf[..t.size]),
                None => break,
            }
        }
        while let Some(ev) = e.conn.poll_endpoint_events() {
            if let Some(ce) = self.endpoint.handle_event(h, ev) {
                e.conn.handle_event(ce);
            }
        }
        if e.conn.is_drained() {
            if e.shared.lost.get().is_none() {
                e.lost(qp::ConnectionError::TimedOut, &mut self.later);
            }
            if let Some(e) = self.conns.remove(&h) {
                self.later.push(Later::Drop(Box::new(e)));
            }
        }
    }
}

impl Entry {
    fn lost(&mut self, reason: qp::ConnectionError, later: &mut Vec<Later>) {
        if self.shared.lost.set(reason.clone()).is_err() {
            return;
        }
        self.shared.closed.notify_waiters();
        if let Some(tx) = self.established.take() {
            let _ = tx.send(Err(reason.clone()));
        }
        for (_, rpc) in self.rpc_out.drain() {
            let _ = rpc
                .answer
                .send(Err(TransactError::Connection(reason.clone())));
        }
        self.rpc_in.clear();
        self.uni_in.clear();
        self.pending.clear();
        self.uni_queue.clear();
        if let Some(h) = self.handler.take() {
            later.push(Later::Closed(h, reason));
        }
    }

    /// Read what stream `id` has; complete a transaction, a request or oversize
    /// messages.
    fn read(
        &mut self,
        engine: &Engine,
        h: qp::ConnectionHandle,
        id: qp::StreamId,
        later: &mut Vec<Later>,
    ) {
        let mut fin = false;
        let mut failed = false;
        let mut got: Vec<Bytes> = Vec::new();
        {
            let mut rs = self.conn.recv_stream(id);
            let Ok(mut chunks) = rs.read(true) else {
                return;
            };
            loop {
                match chunks.next(usize::MAX) {
                    Ok(Some(c)) => got.push(c.bytes),
                    Ok(None) => {
                        fin = true;
                        break;
                    }
                    Err(qp::ReadError::Blocked) => break,
                    Err(qp::ReadError::Reset(_)) => {
                        failed = true;
                        break;
                    }
                }
            }
            let _ = chunks.finalize();
        }
        if let Some(rpc) = self.rpc_out.get_mut(&id) {
            for c in &got {
                rpc.buf.extend_from_slice(c);
            }
            let too_long = rpc.buf.len() > MAX_SIGNALING_LEN;
            if fin || failed || too_long {
                let rpc = self.rpc_out.remove(&id).expect("present");
                let answer = if failed {
                    Err(TransactError::Frame(FrameError::Closed))
                } else {
                    decode_one(&rpc.buf, MAX_SIGNALING_LEN).map_err(TransactError::Frame)
                };
                if too_long {
                    let _ = self.conn.recv_stream(id).stop(qp::VarInt::from_u32(0));
                }
                let _ = rpc.answer.send(answer);
            }
        } else if let Some(buf) = self.rpc_in.get_mut(&id) {
            for c in &got {
                buf.extend_from_slice(c);
            }
            let too_long = buf.len() > MAX_SIGNALING_LEN;
            if fin || too_long {
                let buf = self.rpc_in.remove(&id).expect("present");
                if too_long {
                    let _ = self.conn.recv_stream(id).stop(qp::VarInt::from_u32(0));
                }
                let message = decode_one(&buf, MAX_SIGNALING_LEN);
                let reply = Responder {
                    conn: engine.handle_for(h, &self.shared),
                    stream: id,
                    done: false,
                };
                let _ = self.requests.send(Request { message, reply });
            } else if failed {
                self.rpc_in.remove(&id);
            }
        } else if let Some(buf) = self.uni_in.get_mut(&id) {
            for c in &got {
                buf.extend_from_slice(c);
            }
            // Whole messages, back to back.
            let mut start = 0;
            let mut bad = false;
            while buf.len() - start >= HEADER_LEN {
                let header: &[u8; HEADER_LEN] = buf[start..start + HEADER_LEN]
                    .try_into()
                    .expect("length checked");
                let rest = match frame_remaining(header, MAX_MESSAGE_LEN) {
                    Ok(r) => r,
                    Err(_) => {
                        bad = true;
                        break;
                    }
                };
                let end = start + HEADER_LEN + rest;
                if buf.len() < end {
                    break;
                }
                let m = decode_one(&buf[start..end], MAX_MESSAGE_LEN);
                if let Some(h) = &self.handler {
                    later.push(Later::Message(h.clone(), Box::new(m)));
                }
                start = end;
            }
            buf.drain(..start);
            if bad || failed || fin {
                if bad {
                    if let Some(h) = &self.handler {
                        later.push(Later::Message(
                            h.clone(),
                            Box::new(Err(FrameError::UnexpectedEof { need: 0, got: 0 })),
                        ));
                    }
                    let _ = self.conn.recv_stream(id).stop(qp::VarInt::from_u32(0));
                }
                self.uni_in.remove(&id);
            }
        } else if !fin && !failed {
            // A stream we no longer follow (a transaction that timed out).
            let _ = self.conn.recv_stream(id).stop(qp::VarInt::from_u32(0));
        }
    }

    /// Write `data` on `id` (what does not fit now is written when it may), then
    /// finish the stream if `finish`.
    fn write(&mut self, id: qp::StreamId, data: Bytes, finish: bool) {
        let mut s = self.conn.send_stream(id);
        let n = match s.write(&data) {
            Ok(n) => n,
            Err(qp::WriteError::Blocked) => 0,
            Err(_) => return,
        };
        if n < data.len() {
            self.pending.insert(id, (data.slice(n..), finish));
        } else if finish {
            let _ = s.finish();
        }
    }

    fn resume(&mut self, id: qp::StreamId) {
        if self.uni_out == Some(id) {
            self.write_uni();
            return;
        }
        if let Some((data, finish)) = self.pending.remove(&id) {
            self.write(id, data, finish);
        }
    }

    /// Write queued oversize Capsules on the connection's one uni stream.
    fn write_uni(&mut self) {
        if self.uni_queue.is_empty() {
            return;
        }
        let id = match self.uni_out {
            Some(id) => id,
            None => match self.conn.streams().open(qp::Dir::Uni) {
                Some(id) => {
                    self.uni_out = Some(id);
                    id
                }
                None => return,
            },
        };
        while let Some(head) = self.uni_queue.front_mut() {
            match self.conn.send_stream(id).write(head) {
                Ok(n) if n == head.len() => {
                    self.uni_queue.pop_front();
                }
                Ok(n) => {
                    bytes::Buf::advance(head, n);
                    return;
                }
                Err(qp::WriteError::Blocked) => return,
                Err(_) => {
                    self.uni_out = None;
                    return;
                }
            }
        }
    }
}

/// One message from whole stream bytes (the same rules as `read_message`).
fn decode_one(bytes: &[u8], max: usize) -> Result<Message, FrameError> {
    let mut r = bytes;
    let fut = read_message(&mut r, max);
    let mut fut = std::pin::pin!(fut);
    let mut cx = Context::from_waker(Waker::noop());
    match fut.as_mut().poll(&mut cx) {
        Poll::Ready(r) => r,
        // A slice never blocks; treat the impossible as a truncated message.
        Poll::Pending => Err(FrameError::Closed),
    }
}

impl Engine {
    /// A handle to connection `h`. Every handle shares one [`Owner`], so the
    /// connection closes when the last one is gone.
    fn handle_for(&self, h: qp::ConnectionHandle, shared: &Arc<Shared>) -> PeerConn {
        let engine = self.me.upgrade().expect("the engine outlives its loop");
        let owner = {
            let mut slot = lock(&shared.owner);
            match slot.upgrade() {
                Some(o) => o,
                None => {
                    let o = Arc::new(Owner {
                        engine: self.me.clone(),
                        handle: h,
                    });
                    *slot = Arc::downgrade(&o);
                    o
                }
            }
        };
        PeerConn {
            engine,
            handle: h,
            shared: shared.clone(),
            _owner: owner,
        }
    }
}

impl PeerConn {
    /// Run `f` on the engine state with this connection's handle, then drive the
    /// connection (send what it has) and run callbacks outside the lock.
    fn with<R>(&self, f: impl FnOnce(&mut State, qp::ConnectionHandle) -> R) -> R {
        let r = {
            let mut st = lock(&self.engine.state);
            let r = f(&mut st, self.handle);
            st.drive(&self.engine, self.handle);
            r
        };
        self.engine.run_later();
        self.engine.wake.notify_one();
        r
    }

    /// Read-only access to the connection, if it still exists.
    fn peek<R>(&self, f: impl FnOnce(&qp::Connection) -> R) -> Option<R> {
        let st = lock(&self.engine.state);
        st.conns.get(&self.handle).map(|e| f(&e.conn))
    }

    /// Why the connection ended (None while it is open).
    pub fn close_reason(&self) -> Option<qp::ConnectionError> {
        self.shared.lost.get().cloned()
    }

    /// Wait until the connection is closed.
    pub async fn closed(&self) -> qp::ConnectionError {
        loop {
            let notified = self.shared.closed.notified();
            let mut notified = std::pin::pin!(notified);
            notified.as_mut().enable();
            if let Some(r) = self.shared.lost.get() {
                return r.clone();
            }
            notified.await;
        }
    }

    pub fn close(&self, code: qp::VarInt, reason: &[u8]) {
        let engine = self.engine.clone();
        self.with(|st, h| st.close(&engine, h, code, reason));
    }

    /// An identifier unique among this engine's live connections.
    pub fn stable_id(&self) -> usize {
        self.handle.0
    }

    pub fn remote_address(&self) -> SocketAddr {
        self.peek(|c| c.remote_address())
            .unwrap_or(self.shared.remote)
    }

    /// QUIC's view of the path: packets sent and lost, congestion window.
    pub fn path_stats(&self) -> Option<qp::PathStats> {
        self.peek(|c| c.stats().path)
    }

    pub fn rtt(&self) -> Duration {
        self.peek(|c| c.rtt()).unwrap_or_default()
    }

    pub fn max_datagram_size(&self) -> Option<usize> {
        let st = &mut *lock(&self.engine.state);
        st.conns
            .get_mut(&self.handle)
            .and_then(|e| e.conn.datagrams().max_size())
    }

    /// The peer's certificate chain (`Vec<CertificateDer>`), as quinn gives it.
    pub fn peer_identity(&self) -> Option<Box<dyn std::any::Any>> {
        self.peek(|c| c.crypto_session().peer_identity()).flatten()
    }

    /// The server name the dialer asked for (TLS SNI), on an accepted connection.
    pub fn server_name(&self) -> Option<String> {
        self.peek(|c| {
            c.crypto_session()
                .handshake_data()?
                .downcast::<qp::crypto::rustls::HandshakeData>()
                .ok()?
                .server_name
        })
        .flatten()
    }

    /// Send one datagram. Errors as quinn's `send_datagram`.
    pub fn send_datagram(&self, d: Bytes) -> Result<(), quinn::SendDatagramError> {
        if let Some(r) = self.shared.lost.get() {
            return Err(quinn::SendDatagramError::ConnectionLost(r.clone()));
        }
        let in_loop = IN_LOOP.with(|f| f.get());
        let engine = &self.engine;
        let mut st = lock(&engine.state);
        let r = match st.conns.get_mut(&self.handle) {
            Some(e) => e.conn.datagrams().send(d, true).map_err(|e| match e {
                qp::SendDatagramError::UnsupportedByPeer => {
                    quinn::SendDatagramError::UnsupportedByPeer
                }
                qp::SendDatagramError::Disabled => quinn::SendDatagramError::Disabled,
                qp::SendDatagramError::TooLarge => quinn::SendDatagramError::TooLarge,
                // Only without `drop`, which this never asks for.
                qp::SendDatagramError::Blocked(_) => quinn::SendDatagramError::Disabled,
            }),
            None => Err(quinn::SendDatagramError::ConnectionLost(
                qp::ConnectionError::LocallyClosed,
            )),
        };
        if r.is_ok() {
            if in_loop {
                if !st.dirty.contains(&self.handle) {
                    st.dirty.push(self.handle);
                }
            } else {
                st.drive(engine, self.handle);
                drop(st);
                engine.run_later();
                engine.wake.notify_one();
            }
        }
        r
    }

    /// Queue an encoded message for the connection's oversize stream: false when
    /// the queue is full or the connection is gone.
    pub fn send_on_stream(&self, bytes: Bytes) -> bool {
        self.with(|st, h| match st.conns.get_mut(&h) {
            Some(e) if e.shared.lost.get().is_none() && e.uni_queue.len() < UNI_QUEUE => {
                e.uni_queue.push_back(bytes);
                e.write_uni();
                true
            }
            _ => false,
        })
    }

    /// Where datagrams and oversize messages go from now on; datagrams that came
    /// before are handed over at once.
    pub fn set_handler(&self, handler: Arc<dyn ConnHandler>) {
        self.with(|st, h| {
            if let Some(e) = st.conns.get_mut(&h) {
                if let Some(reason) = e.shared.lost.get() {
                    st.later.push(Later::Closed(handler, reason.clone()));
                } else {
                    e.handler = Some(handler);
                }
            } else {
                let reason = self
                    .close_reason()
                    .unwrap_or(qp::ConnectionError::LocallyClosed);
                st.later.push(Later::Closed(handler, reason));
            }
        });
    }

    /// The next request the peer sent on a stream of its own (None: closed).
    pub async fn next_request(&self) -> Option<Request> {
        let mut rx = self.shared.requests.lock().await;
        tokio::select! {
            r = rx.recv() => r,
            _ = self.closed() => None,
        }
    }

    /// SPEC §4 transaction: `request` on a new stream, its answer.
    pub async fn transact(
        &self,
        request: &Message,
        timeout: Duration,
    ) -> Result<Message, TransactError> {
        let bytes = Bytes::from(
            request
                .encode()
                .map_err(|e| TransactError::Frame(FrameError::Encode(e)))?,
        );
        let deadline = tokio::time::Instant::now() + timeout;
        let (id, rx) = loop {
            let opened = self.with(|st, h| {
                let e = st.conns.get_mut(&h)?;
                if e.shared.lost.get().is_some() {
                    return None;
                }
                let id = e.conn.streams().open(qp::Dir::Bi)?;
                let (tx, rx) = oneshot::channel();
                e.rpc_out.insert(
                    id,
                    RpcOut {
                        answer: tx,
                        buf: Vec::new(),
                    },
                );
                e.write(id, bytes.clone(), true);
                Some((id, rx))
            });
            if let Some(o) = opened {
                break o;
            }
            if let Some(r) = self.close_reason() {
                return Err(TransactError::Connection(r));
            }
            if self.peek(|_| ()).is_none() {
                return Err(TransactError::Connection(
                    qp::ConnectionError::LocallyClosed,
                ));
            }
            // Every stream the peer allows is in use: wait for one.
            if tokio::time::Instant::now() >= deadline {
                return Err(TransactError::Timeout(timeout));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(TransactError::Connection(
                self.close_reason()
                    .unwrap_or(qp::ConnectionError::LocallyClosed),
            )),
            Err(_) => {
                self.with(|st, h| {
                    if let Some(e) = st.conns.get_mut(&h) {
                        e.rpc_out.remove(&id);
                        let _ = e.conn.recv_stream(id).stop(qp::VarInt::from_u32(0));
                    }
                });
                Err(TransactError::Timeout(timeout))
            }
        }
    }
}

/// Receive buffers: one per datagram of a `recvmmsg`, each large enough for a GRO
/// super-datagram.
struct RxBufs {
    bufs: Vec<Vec<u8>>,
    meta: Vec<RecvMeta>,
}

impl RxBufs {
    fn new(gro: usize) -> RxBufs {
        // A GRO list can hold 64 datagrams of any size: a buffer smaller than that
        // truncates it and loses the rest (quinn sizes its buffers the same way).
        // Pages the kernel never writes are never made resident.
        let per = gro.max(1) * MAX_UDP;
        let n = quinn::udp::BATCH_SIZE.max(1);
        RxBufs {
            bufs: (0..n).map(|_| vec![0u8; per]).collect(),
            meta: vec![RecvMeta::default(); n],
        }
    }
}

/// TUN read buffers (offload: one super-packet split into segments).
struct TunIo {
    original: Vec<u8>,
    bufs: Vec<Vec<u8>>,
    sizes: Vec<usize>,
}

impl TunIo {
    fn new(mtu: u16) -> TunIo {
        let seg = usize::from(mtu) + 64;
        TunIo {
            original: vec![0u8; tun_rs::VIRTIO_NET_HDR_LEN + 65536],
            bufs: (0..BATCH).map(|_| vec![0u8; seg]).collect(),
            sizes: vec![0usize; BATCH],
        }
    }
}

/// Read a batch from the TUN (pending forever when there is none).
async fn tun_read(tun: Option<&Arc<Tun>>, io: Option<&mut TunIo>) -> io::Result<usize> {
    let (Some(tun), Some(io)) = (tun, io) else {
        return std::future::pending().await;
    };
    if tun.offload {
        tun.device
            .recv_multiple(&mut io.original, &mut io.bufs, &mut io.sizes, 0)
            .await
    } else {
        let n = tun.device.recv(&mut io.bufs[0]).await?;
        io.sizes[0] = n;
        Ok(1)
    }
}

/// The engine as the socket of the cloud's `quinn::Endpoint`.
#[derive(Debug)]
struct CloudSocket(Arc<Engine>);

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("local", &self.local)
            .finish()
    }
}

#[derive(Debug)]
struct CloudPoller(Arc<Engine>);

impl quinn::UdpPoller for CloudPoller {
    fn poll_writable(self: Pin<&mut Self>, cx: &mut Context) -> Poll<io::Result<()>> {
        // quinn asks before every send. Readiness is cleared only by a send that
        // would block (`try_send`), as tokio's own socket does.
        self.0.io.poll_write_ready(cx).map_ok(|_| ())
    }
}

impl quinn::AsyncUdpSocket for CloudSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn quinn::UdpPoller>> {
        Box::pin(CloudPoller(self.0.clone()))
    }

    fn try_send(&self, transmit: &quinn::udp::Transmit) -> io::Result<()> {
        self.0.io.try_io(tokio::io::Interest::WRITABLE, |s| {
            self.0.udp.send(s.into(), transmit)
        })
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        let mut q = lock(&self.0.cloud);
        if q.datagrams.is_empty() {
            q.waker = Some(cx.waker().clone());
            return Poll::Pending;
        }
        let mut n = 0;
        while n < bufs.len().min(meta.len()) {
            let Some((d, m)) = q.datagrams.pop_front() else {
                break;
            };
            let len = d.len().min(bufs[n].len());
            bufs[n][..len].copy_from_slice(&d[..len]);
            let mut m = m;
            m.len = len;
            m.stride = len;
            meta[n] = m;
            n += 1;
        }
        Poll::Ready(Ok(n))
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.0.local)
    }

    fn max_transmit_segments(&self) -> usize {
        self.0.udp.max_gso_segments()
    }

    fn max_receive_segments(&self) -> usize {
        1
    }

    fn may_fragment(&self) -> bool {
        self.0.udp.may_fragment()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cyphonic_proto::quic::{initial_dcid, RelayCidGenerator};
    use qp::ConnectionIdGenerator;

    fn short(cid: &[u8]) -> Vec<u8> {
        let mut p = vec![0x40];
        p.extend_from_slice(cid);
        p.extend_from_slice(&[0u8; 24]);
        p
    }

    fn long(cid: &[u8]) -> Vec<u8> {
        let mut p = vec![0xc0, 0, 0, 0, 1, cid.len() as u8];
        p.extend_from_slice(cid);
        p.extend_from_slice(&[0u8; 24]);
        p
    }

    #[test]
    fn datagrams_go_to_their_plane() {
        let token = RelayToken::random();
        let mut peer = RelayCidGenerator::new(token).with_plane(true);
        let mut cloud = RelayCidGenerator::new(token).with_plane(false);
        for _ in 0..32 {
            let p = peer.generate_cid();
            let c = cloud.generate_cid();
            assert!(for_peer_plane(&short(&p)));
            assert!(!for_peer_plane(&short(&c)));
            assert!(for_peer_plane(&long(&p)));
            assert!(!for_peer_plane(&long(&c)));
            assert!(for_peer_plane(&long(&initial_dcid(token))));
        }
        // A direct dialer's Initial: a random DCID of 20 bytes.
        assert!(for_peer_plane(&long(&[7u8; 20])));
        // Garbage never panics (and see the property test below).
        for p in [
            &[][..],
            &[0x40][..],
            &[0xc0, 0, 0][..],
            &[0xc0, 0, 0, 0, 1, 30, 1][..],
        ] {
            let _ = for_peer_plane(p);
        }
    }

    proptest::proptest! {
        /// Any datagram is classified without panicking, and a short-header packet
        /// goes to the peer plane exactly when its DCID carries the bit.
        #[test]
        fn classifier_takes_any_bytes(pkt in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64)) {
            let peer = for_peer_plane(&pkt);
            if pkt.len() > CID_LEN && pkt[0] & 0x80 == 0 {
                proptest::prop_assert_eq!(peer, on_peer_plane(&pkt[1..1 + CID_LEN]));
            }
        }
    }
}
