//! The data plane, TUN → peer: a packet to a virtual address goes as a Capsule in a
//! QUIC DATAGRAM on its peer's tunnel, is queued while the tunnel is set up, or is
//! answered per SPEC §6 when it does not fit.

use super::*;

impl Node {
    // ----- data plane: TUN → peer ------------------------------------------------

    pub(super) fn is_overlay(&self, a: IpAddr) -> bool {
        in_prefix(a, self.settings.ipv4_prefix, self.settings.ipv6_prefix)
            && a != IpAddr::V4(self.me.virtual_ipv4)
            && a != IpAddr::V6(self.me.virtual_ipv6)
    }

    /// Send a packet read from the TUN to its peer, setting up the route when there
    /// is none. `buf` is scratch space reused across calls. Returns whether the
    /// packet needed the async runtime: it went on QUIC, or a route is being set up
    /// for it (a packet on a fast data channel, or dropped, did not).
    pub fn send_packet(self: &Arc<Self>, pkt: &[u8], buf: &mut BytesMut) -> bool {
        let Some(dst) = packet::destination(pkt) else {
            return false;
        };
        if !self.is_overlay(dst) {
            return false;
        }
        if let Some(link) = self.peers.route(dst) {
            if let Some(tx) = link.fast_tx.get() {
                if self.send_fast(&link, tx, pkt) {
                    return false;
                }
            }
            if self.send_quic(&link, pkt, buf) {
                return true;
            }
        }
        self.queue_and_route(dst, pkt);
        true
    }

    /// Send `pkt` on `link`: false when the link's connection is gone (the packet
    /// is left to the caller, which sets up a new route). The hot path takes quinn's
    /// connection lock once: the datagram is offered as it is, and only a datagram
    /// quinn refuses as too large takes the oversize path (SPEC §6 Data).
    pub(super) fn send_on(&self, link: &PeerLink, pkt: &[u8], buf: &mut BytesMut) -> bool {
        if let Some(tx) = link.fast_tx.get() {
            if self.send_fast(link, tx, pkt) {
                return true;
            }
        }
        self.send_quic(link, pkt, buf)
    }

    /// [`Node::send_on`]'s QUIC half.
    fn send_quic(&self, link: &PeerLink, pkt: &[u8], buf: &mut BytesMut) -> bool {
        buf.reserve(CAPSULE_OVERHEAD + pkt.len());
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        if encode_capsule_into(buf, &link.path_id, seq, pkt).is_err() {
            return true;
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
            // A peer that takes no datagrams still gets every packet, on the stream.
            Err(
                quinn::SendDatagramError::UnsupportedByPeer | quinn::SendDatagramError::Disabled,
            ) => self.oversize(link, pkt, 0, buf),
            Err(quinn::SendDatagramError::ConnectionLost(e)) => {
                tracing::debug!(peer = %link.peer.fqdn, error = %e, "tunnel gone; routing again");
                return false;
            }
        }
        true
    }

    /// Send `pkt` on the link's fast data channel: false when it is larger than
    /// [`fastdata::MAX_FAST_PACKET`] allows, when larger packets went on QUIC just
    /// before it, or when the key is spent; the QUIC path takes it then.
    fn send_fast(&self, link: &PeerLink, tx: &fastdata::TxChannel, pkt: &[u8]) -> bool {
        if !fastdata::TxChannel::fits(pkt.len()) {
            link.quic_now();
            return false;
        }
        if link.on_quic() {
            // A run of large packets is on QUIC: the small ones of the same flows
            // follow it there rather than overtake it.
            return false;
        }
        let dest = link.conn.remote_address();
        let sent = FAST_OUT.with(|out| {
            let mut o = out.borrow_mut();
            let key = link as *const PeerLink as usize;
            let len = pkt.len() + cyphonic_proto::fastdata::OVERHEAD;
            // GSO sends segments of one size, only the last may be shorter.
            let joins = o.count > 0
                && o.key == key
                && o.dest == Some(dest)
                && len <= o.seg
                && !o.closed
                && o.count < MAX_GSO_SEGMENTS;
            if !joins {
                self.flush_fast_out(&mut o);
            }
            if !tx.seal(pkt, &mut o.buf) {
                return false;
            }
            if o.count == 0 {
                o.seg = len;
                o.key = key;
                o.dest = Some(dest);
            }
            o.count += 1;
            o.closed |= len < o.seg;
            if !o.batching || o.count >= MAX_GSO_SEGMENTS {
                self.flush_fast_out(&mut o);
            }
            true
        });
        if sent {
            let c = &link.counters;
            c.tx_packets.fetch_add(1, Ordering::Relaxed);
            c.tx_bytes.fetch_add(pkt.len() as u64, Ordering::Relaxed);
            c.fast_tx.fetch_add(1, Ordering::Relaxed);
            link.touch();
        }
        sent
    }

    /// Packets sent between this and [`Node::end_send_batch`] (one TUN read's) may go
    /// out together: fast-data packets to one peer leave in GSO sends.
    pub fn begin_send_batch(&self) {
        FAST_OUT.with(|o| o.borrow_mut().batching = true);
    }

    /// Send what [`Node::begin_send_batch`] held back.
    pub fn end_send_batch(&self) {
        FAST_OUT.with(|o| {
            let mut o = o.borrow_mut();
            self.flush_fast_out(&mut o);
            o.batching = false;
        });
    }

    fn flush_fast_out(&self, o: &mut FastOut) {
        if o.count > 0 {
            if let Some(dest) = o.dest {
                let seg = (o.count > 1).then_some(o.seg);
                if let Err(e) = self.ep.fast.send(dest, &o.buf, seg) {
                    // A full socket buffer drops the packets, as a congested link would.
                    tracing::trace!(%dest, error = %e, packets = o.count, "fast-data send failed");
                }
            }
        }
        o.buf.clear();
        o.count = 0;
        o.closed = false;
    }

    /// SPEC §6 Data: a packet larger than the path's datagram (`room` bytes of
    /// payload) never vanishes silently. IPv4 with DF set: Fragmentation Needed with
    /// the MTU that fits. IPv6 larger than 1280: Packet Too Big with what fits, but
    /// not below IPv6's minimum of 1280. What still cannot be sent that way (IPv6 up
    /// to 1280 bytes on a path whose datagrams are smaller, IPv4 without DF) is carried
    /// on the link's stream (see docs/protocol-decisions.md).
    pub(super) fn oversize(&self, link: &PeerLink, pkt: &[u8], room: usize, buf: &mut BytesMut) {
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

    pub(super) fn queue_and_route(self: &Arc<Self>, dst: IpAddr, pkt: &[u8]) {
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

/// Most fast-data packets in one GSO send (quinn's cap too: larger sends lost
/// segments on veth, docs/design-dataplane-loop.md).
const MAX_GSO_SEGMENTS: usize = 10;

/// Fast-data packets sealed and not yet sent: a run to one peer, of one size.
#[derive(Default)]
struct FastOut {
    /// Inside a send batch (a TUN read): hold packets back for GSO.
    batching: bool,
    buf: Vec<u8>,
    count: usize,
    seg: usize,
    /// A shorter packet was added: the run is complete.
    closed: bool,
    key: usize,
    dest: Option<SocketAddr>,
}

thread_local! {
    /// One per runtime thread.
    static FAST_OUT: std::cell::RefCell<FastOut> = std::cell::RefCell::new(FastOut::default());
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
}
