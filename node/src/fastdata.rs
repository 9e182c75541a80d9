//! The fast data channel (docs/protocol-decisions.md, "Fast data channel"): a
//! tunnel's IP packets sealed with keys exported from its QUIC connection's TLS
//! session and sent straight on the node's socket, without quinn's per-packet work
//! (task hand-offs, packet numbers, ACKs, loss and congestion state). The QUIC
//! connection stays up beside it for signaling, keep-alives and oversize packets.
//!
//! - [`FastSocket`] sits between quinn and the UDP socket: it takes the fast-data
//!   packets out of every receive batch (opened in place, checked, written to the
//!   TUN in batches) and passes everything else to quinn untouched.
//! - [`TxChannel`] seals a packet for a peer; [`RxChannel`] opens the peer's.
//! - The wire format and replay window are in `cyphonic_proto::fastdata`.

use std::collections::HashMap;
use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::BytesMut;
use cyphonic_proto::fastdata::{self, FastHeader, ReplayWindow, HEADER_LEN, MAX_COUNTER};
use cyphonic_proto::{PathId, RelayToken};
use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305};

use crate::node::PacketSink;
use crate::packet;
use crate::peers::Counters;
use crate::tun::TunBatch;

/// TLS exporter label of the channel's keys (RFC 8446 §7.5); the context is the
/// PathID.
pub const EXPORTER_LABEL: &[u8] = b"EXPORTER-cyphonic-fast-data-v1";

/// Authentication failures a channel tolerates before it stops taking packets
/// (ChaCha20-Poly1305's integrity limit, RFC 9001 §6.6, is 2^36).
const MAX_FAILURES: u64 = 1 << 36;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The two directions' keys of one connection, from its TLS exporter: the first 32
/// bytes seal what the dialer sends, the next 32 what the acceptor sends.
pub fn derive_keys(
    conn: &quinn::Connection,
    path: &PathId,
    dialed: bool,
) -> Option<(LessSafeKey, LessSafeKey)> {
    let mut okm = [0u8; 64];
    conn.export_keying_material(&mut okm, EXPORTER_LABEL, path.as_bytes())
        .ok()?;
    let (a, b) = okm.split_at(32);
    let key = |k: &[u8]| {
        UnboundKey::new(&CHACHA20_POLY1305, k)
            .ok()
            .map(LessSafeKey::new)
    };
    let (dialer, acceptor) = (key(a)?, key(b)?);
    Some(if dialed {
        (dialer, acceptor)
    } else {
        (acceptor, dialer)
    })
}

/// Largest fast-data packet (UDP payload) sent: the 1200 bytes every QUIC path must
/// carry (RFC 9000 §14), which the tunnel's padded Initial packets proved both ways.
/// Larger packets stay in QUIC DATAGRAMs, where quinn's path MTU discovery and
/// black-hole detection keep them honest (docs/protocol-decisions.md).
pub const MAX_FAST_PACKET: usize = 1200;

/// The sending half: seals packets for the peer's channel.
pub struct TxChannel {
    key: LessSafeKey,
    dcid: [u8; 16],
    counter: AtomicU64,
}

impl fmt::Debug for TxChannel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TxChannel")
            .field("counter", &self.counter.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl TxChannel {
    pub fn new(key: LessSafeKey, dcid: [u8; 16]) -> TxChannel {
        TxChannel {
            key,
            dcid,
            counter: AtomicU64::new(0),
        }
    }

    /// Whether an IP packet of `len` bytes may go as a fast-data packet.
    pub fn fits(len: usize) -> bool {
        len + fastdata::OVERHEAD <= MAX_FAST_PACKET
    }

    /// Append the fast-data packet carrying `pkt` to `out`; false when the key is
    /// spent (the caller sends on QUIC instead).
    pub fn seal(&self, pkt: &[u8], out: &mut Vec<u8>) -> bool {
        let counter = self.counter.fetch_add(1, Ordering::Relaxed);
        if counter >= MAX_COUNTER {
            self.counter.store(MAX_COUNTER, Ordering::Relaxed);
            return false;
        }
        let start = out.len();
        out.resize(start + HEADER_LEN, 0);
        FastHeader {
            dcid: self.dcid,
            counter,
        }
        .write(&mut out[start..]);
        out.extend_from_slice(pkt);
        let (head, body) = out[start..].split_at_mut(HEADER_LEN);
        let nonce = Nonce::assume_unique_for_key(fastdata::nonce(counter));
        match self
            .key
            .seal_in_place_separate_tag(nonce, Aad::from(&*head), body)
        {
            Ok(tag) => {
                out.extend_from_slice(tag.as_ref());
                true
            }
            Err(_) => {
                out.truncate(start);
                false
            }
        }
    }
}

/// Where a channel's packets go, and what they must look like: the peer's own
/// virtual addresses as inner source (SPEC §6 Data), counted on its link.
pub struct LinkRx {
    pub sink: Arc<dyn PacketSink>,
    pub peer_v4: Ipv4Addr,
    pub peer_v6: Ipv6Addr,
    pub counters: Arc<Counters>,
    pub started: Instant,
}

impl LinkRx {
    /// A decrypted packet: true when it may be delivered (and it is counted).
    fn accept(&self, pkt: &[u8]) -> bool {
        let c = &self.counters;
        let owned = match packet::addresses(pkt) {
            Some((IpAddr::V4(s), _)) => s == self.peer_v4,
            Some((IpAddr::V6(s), _)) => s == self.peer_v6,
            None => false,
        };
        if !owned {
            if c.spoofed.fetch_add(1, Ordering::Relaxed) == 0 {
                tracing::warn!(peer_v4 = %self.peer_v4,
                    "dropped a fast-data packet with a spoofed inner source");
            }
            return false;
        }
        c.rx_packets.fetch_add(1, Ordering::Relaxed);
        c.rx_bytes.fetch_add(pkt.len() as u64, Ordering::Relaxed);
        c.fast_rx.fetch_add(1, Ordering::Relaxed);
        let ms = self.started.elapsed().as_millis() as u64;
        c.last_active_ms.store(ms, Ordering::Relaxed);
        true
    }
}

/// The receiving half of a channel, registered with the socket.
pub struct RxChannel {
    key: LessSafeKey,
    replay: Mutex<ReplayWindow>,
    failures: AtomicU64,
    target: LinkRx,
}

impl RxChannel {
    pub fn new(key: LessSafeKey, target: LinkRx) -> RxChannel {
        RxChannel {
            key,
            replay: Mutex::new(ReplayWindow::default()),
            failures: AtomicU64::new(0),
            target,
        }
    }

    /// Open the fast-data packet `seg` (header `h`) in place: the IP packet's range
    /// in `seg`, or None (forged, replayed, or too old) and counted.
    fn open(&self, h: &FastHeader, seg: &mut [u8]) -> Option<std::ops::Range<usize>> {
        let refuse = || {
            self.target
                .counters
                .fast_rejected
                .fetch_add(1, Ordering::Relaxed);
            None
        };
        if self.failures.load(Ordering::Relaxed) >= MAX_FAILURES
            || !lock(&self.replay).check(h.counter)
        {
            return refuse();
        }
        let (head, body) = seg.split_at_mut(HEADER_LEN);
        let nonce = Nonce::assume_unique_for_key(h.nonce());
        let Ok(plain) = self.key.open_in_place(nonce, Aad::from(&*head), body) else {
            // Only forgeries count toward the integrity limit, not replays.
            self.failures.fetch_add(1, Ordering::Relaxed);
            return refuse();
        };
        let len = plain.len();
        if !lock(&self.replay).accept(h.counter) {
            return refuse();
        }
        Some(HEADER_LEN..HEADER_LEN + len)
    }
}

/// The channels this endpoint receives on, by channel ID.
#[derive(Default)]
pub struct FastRegistry {
    channels: RwLock<HashMap<u64, Arc<RxChannel>>>,
}

impl FastRegistry {
    /// Register `rx` under a fresh channel ID; returns the Destination CID peers
    /// address it with and the registration, which unregisters when dropped.
    pub fn register(
        self: &Arc<Self>,
        token: RelayToken,
        rx: RxChannel,
    ) -> (Registration, [u8; 16]) {
        let rx = Arc::new(rx);
        let mut map = self.channels.write().unwrap_or_else(|p| p.into_inner());
        loop {
            let dcid = fastdata::fast_dcid(token, rand::random());
            let id = fastdata::channel_of(&dcid);
            if let std::collections::hash_map::Entry::Vacant(e) = map.entry(id) {
                e.insert(rx);
                return (
                    Registration {
                        registry: self.clone(),
                        id,
                    },
                    dcid,
                );
            }
        }
    }

    fn get(&self, id: u64) -> Option<Arc<RxChannel>> {
        self.channels
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .cloned()
    }

    pub fn len(&self) -> usize {
        self.channels
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A registered receive channel; dropping it unregisters the channel.
pub struct Registration {
    registry: Arc<FastRegistry>,
    id: u64,
}

impl fmt::Debug for Registration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Registration({:#x})", self.id)
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.registry
            .channels
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.id);
    }
}

/// Scratch space of the receive filter.
#[derive(Default)]
struct RxScratch {
    batch: TunBatch,
    buf: BytesMut,
}

/// quinn's socket with the fast-data packets taken out (see the module docs).
pub struct FastSocket {
    inner: Arc<dyn AsyncUdpSocket>,
    registry: Arc<FastRegistry>,
    scratch: Mutex<RxScratch>,
}

impl fmt::Debug for FastSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FastSocket")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl FastSocket {
    pub fn new(inner: Arc<dyn AsyncUdpSocket>, registry: Arc<FastRegistry>) -> FastSocket {
        FastSocket {
            inner,
            registry,
            scratch: Mutex::new(RxScratch::default()),
        }
    }

    /// Send one fast-data packet (or, with `segment`, several of that size back to
    /// back, by GSO) to `to`. A full socket buffer drops it, as a congested link
    /// would.
    pub fn send(&self, to: SocketAddr, contents: &[u8], segment: Option<usize>) -> io::Result<()> {
        self.inner.try_send(&Transmit {
            destination: to,
            ecn: None,
            contents,
            segment_size: segment,
            src_ip: None,
        })
    }

    pub fn max_transmit_segments(&self) -> usize {
        self.inner.max_transmit_segments()
    }

    /// Take the fast-data packets out of the `n` received messages: each is opened
    /// and delivered; a message left with no QUIC packet gets length 0 (quinn skips
    /// it), one with some keeps them, moved to its front in order.
    fn filter(&self, bufs: &mut [IoSliceMut<'_>], meta: &mut [RecvMeta], n: usize) {
        let mut scratch = lock(&self.scratch);
        let RxScratch { batch, buf } = &mut *scratch;
        let mut current: Option<(u64, Arc<RxChannel>)> = None;
        for (m, b) in meta.iter_mut().zip(bufs.iter_mut()).take(n) {
            let len = m.len.min(b.len());
            let stride = if m.stride == 0 { len } else { m.stride };
            if len == 0 || stride == 0 {
                continue;
            }
            let data: &mut [u8] = &mut b[..len];
            let mut kept = 0usize;
            let mut any_fast = false;
            let mut start = 0usize;
            while start < len {
                let end = (start + stride).min(len);
                let seg_len = end - start;
                let handled = match FastHeader::parse(&data[start..end]) {
                    Some(h) => {
                        let id = h.channel();
                        if current.as_ref().is_none_or(|(cid, _)| *cid != id) {
                            if let Some((_, ch)) = current.take() {
                                ch.target.sink.deliver_batch(batch);
                            }
                            current = self.registry.get(id).map(|ch| (id, ch));
                        }
                        match &current {
                            Some((_, ch)) => {
                                let seg = &mut data[start..end];
                                if let Some(r) = ch.open(&h, seg) {
                                    let pkt = &seg[r];
                                    if ch.target.accept(pkt) {
                                        buf.extend_from_slice(pkt);
                                        batch.push_bytes(buf.split().freeze());
                                        if batch.is_full() {
                                            ch.target.sink.deliver_batch(batch);
                                        }
                                    }
                                }
                                true
                            }
                            // Not a channel of ours: quinn decides (it may be a
                            // stateless reset that happens to have the bit).
                            None => false,
                        }
                    }
                    None => false,
                };
                if handled {
                    any_fast = true;
                } else {
                    if kept != start {
                        data.copy_within(start..end, kept);
                    }
                    kept += seg_len;
                }
                start = end;
            }
            if any_fast {
                m.len = kept;
            }
        }
        if let Some((_, ch)) = current {
            ch.target.sink.deliver_batch(batch);
        }
        // Give a grown buffer back once traffic is light.
        if buf.capacity() > 1 << 20 && batch.is_empty() {
            *buf = BytesMut::new();
        }
    }
}

impl AsyncUdpSocket for FastSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        self.inner.clone().create_io_poller()
    }

    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        self.inner.try_send(transmit)
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        match self.inner.poll_recv(cx, bufs, meta) {
            Poll::Ready(Ok(n)) => {
                if !self.registry.is_empty() {
                    self.filter(bufs, meta, n);
                }
                Poll::Ready(Ok(n))
            }
            other => other,
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        self.inner.max_transmit_segments()
    }

    fn max_receive_segments(&self) -> usize {
        self.inner.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keypair() -> (LessSafeKey, LessSafeKey) {
        let k = [7u8; 32];
        (
            LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, &k).unwrap()),
            LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, &k).unwrap()),
        )
    }

    struct NullSink;
    impl PacketSink for NullSink {
        fn deliver(&self, _: &[u8]) {}
        fn deliver_batch(&self, b: &mut TunBatch) {
            b.clear();
        }
    }

    fn v4_packet(src: [u8; 4]) -> Vec<u8> {
        let mut p = vec![0u8; 28];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&28u16.to_be_bytes());
        p[8] = 64;
        p[9] = 17;
        p[12..16].copy_from_slice(&src);
        p[16..20].copy_from_slice(&[100, 64, 0, 2]);
        p
    }

    fn rx(key: LessSafeKey) -> RxChannel {
        RxChannel::new(
            key,
            LinkRx {
                sink: Arc::new(NullSink),
                peer_v4: Ipv4Addr::new(100, 64, 0, 1),
                peer_v6: Ipv6Addr::LOCALHOST,
                counters: Arc::new(Counters::default()),
                started: Instant::now(),
            },
        )
    }

    #[test]
    fn seal_open_replay_tamper() {
        let (k1, k2) = keypair();
        let dcid = fastdata::fast_dcid(RelayToken::from_u64(1), 5);
        let tx = TxChannel::new(k1, dcid);
        let rx = rx(k2);
        let pkt = v4_packet([100, 64, 0, 1]);
        let mut out = Vec::new();
        assert!(tx.seal(&pkt, &mut out));
        assert_eq!(out.len(), pkt.len() + fastdata::OVERHEAD);
        let h = FastHeader::parse(&out).unwrap();
        assert_eq!(h.dcid, dcid);
        let mut copy = out.clone();
        let r = rx.open(&h, &mut copy).unwrap();
        assert_eq!(&copy[r], &pkt[..]);
        assert!(rx.target.accept(&pkt));
        // Replay.
        let mut copy = out.clone();
        assert!(rx.open(&h, &mut copy).is_none());
        // Tampered body, header, tag.
        for i in [1usize, 20, 30, out.len() - 1] {
            let mut second = Vec::new();
            assert!(tx.seal(&pkt, &mut second));
            second[i] ^= 1;
            if let Some(h2) = FastHeader::parse(&second) {
                assert!(rx.open(&h2, &mut second).is_none(), "byte {i}");
            }
        }
        assert!(rx.target.counters.fast_rejected.load(Ordering::Relaxed) >= 4);
        // A spoofed inner source is refused.
        assert!(!rx.target.accept(&v4_packet([100, 64, 0, 9])));
        assert!(TxChannel::fits(MAX_FAST_PACKET - fastdata::OVERHEAD));
        assert!(!TxChannel::fits(MAX_FAST_PACKET - fastdata::OVERHEAD + 1));
    }

    #[test]
    fn registry_unregisters_on_drop() {
        let reg = Arc::new(FastRegistry::default());
        let (k, _) = keypair();
        let (r, dcid) = reg.register(RelayToken::from_u64(3), rx(k));
        assert!(cyphonic_proto::quic::is_fast_cid(&dcid));
        assert_eq!(&dcid[..8], RelayToken::from_u64(3).as_bytes());
        assert!(reg.get(fastdata::channel_of(&dcid)).is_some());
        drop(r);
        assert!(reg.is_empty());
    }
}
