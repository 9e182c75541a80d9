//! The TUN device: the node's virtual IPv4/IPv6 addresses, the overlay prefixes
//! routed into it, and the loop that carries packets read from it to peers.
//!
//! With offload (the default, `tun.offload`), the device speaks the virtio-net header:
//! the kernel hands the node whole TCP super-packets of up to 64 KiB (TSO), which
//! tun-rs splits into MTU-sized segments in one read, and the node writes runs of
//! segments of one TCP flow back as one coalesced packet (GRO). One system call then
//! moves dozens of packets each way, and the kernel's TCP stack handles a fraction of
//! the packets it would otherwise (see BENCHMARKS.md for what it bought).

use std::io::{self, IoSlice};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};

use anyhow::{Context, Result};
use bytes::{Bytes, BytesMut};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tun_rs::{GROTable, IDEAL_BATCH_SIZE, VIRTIO_NET_HDR_GSO_UDP_L4, VIRTIO_NET_HDR_LEN};

use crate::fastdata::TunSource;
use crate::node::{Node, PacketSink};

/// Packets written to the TUN in one batch (and read in one offloaded read).
pub const BATCH: usize = IDEAL_BATCH_SIZE;

// virtio-net header values (Linux include/uapi/linux/virtio_net.h).
const VIRTIO_NET_HDR_F_NEEDS_CSUM: u8 = 1;
const VIRTIO_NET_HDR_GSO_NONE: u8 = 0;
const VIRTIO_NET_HDR_GSO_ECN: u8 = 0x80;

/// A zero virtio-net header: "no offload" for a single packet we write.
const NO_OFFLOAD_HDR: [u8; VIRTIO_NET_HDR_LEN] = [0; VIRTIO_NET_HDR_LEN];

/// A TUN device with the node's addresses. Dropping the last handle removes the
/// interface and, with it, its addresses and routes.
pub struct Tun {
    /// Non-blocking; read by the fast path's thread or by [`pump`] on the runtime
    /// (see [`TunSide`]), written by whoever delivers a packet.
    pub device: tun_rs::SyncDevice,
    pub name: String,
    pub mtu: u16,
    /// The virtio-net header is on: TSO super-packets in, GRO-coalesced packets out.
    pub offload: bool,
}

impl Tun {
    /// Create `name` with `v4/v4_len` and `v6/v6_len`: the connected routes of those
    /// prefixes carry the whole overlay into the TUN. `offload` asks for the
    /// virtio-net header; a kernel that refuses it gets a plain device.
    pub fn create(
        name: &str,
        mtu: u16,
        v4: (Ipv4Addr, u8),
        v6: (Ipv6Addr, u8),
        offload: bool,
    ) -> Result<Tun> {
        let build = |offload: bool| {
            tun_rs::DeviceBuilder::new()
                .name(name)
                .mtu(mtu)
                .ipv4(v4.0, v4.1, None)
                .ipv6(v6.0, v6.1)
                .offload(offload)
                .build_sync()
        };
        let device = match build(offload) {
            Ok(d) => d,
            Err(e) if offload => {
                tracing::warn!(tun = name, error = %e,
                    "TUN offload (virtio-net header) refused by the kernel; using a plain device, \
                     which costs throughput");
                build(false).with_context(|| cannot_create(name))?
            }
            Err(e) => return Err(e).with_context(|| cannot_create(name)),
        };
        device
            .set_nonblocking(true)
            .with_context(|| format!("cannot make TUN device {name} non-blocking"))?;
        // tun-rs turns the header on only when the kernel takes the TSO flags.
        let offload = device.tcp_gso();
        tracing::info!(tun = name, v4 = %v4.0, v6 = %v6.0, mtu, offload, "TUN device up");
        Ok(Tun {
            device,
            name: name.to_owned(),
            mtu,
            offload,
        })
    }

    /// Write the packets of `batch` (coalescing runs of one TCP flow when offload is
    /// on) and empty it. A full TUN queue drops packets, as a congested NIC would.
    pub fn write_batch(&self, batch: &mut TunBatch) {
        if batch.pkts.is_empty() {
            return;
        }
        if !self.offload || batch.pkts.len() == 1 {
            // Nothing to coalesce: straight to the device, without the GRO table's
            // copy (the common case for interactive traffic, where latency counts).
            for p in batch.pkts.drain(..) {
                self.deliver(&p);
            }
            return;
        }
        WRITE_SCRATCH.with(|scratch| {
            let mut scratch = scratch.borrow_mut();
            let WriteScratch { bufs, gro } = &mut *scratch;
            let gro = gro.get_or_insert_with(GROTable::new);
            let n = batch.pkts.len();
            if bufs.len() < n {
                bufs.resize_with(n, || Vec::with_capacity(2048));
            }
            for (b, p) in bufs.iter_mut().zip(batch.pkts.drain(..)) {
                b.clear();
                b.resize(VIRTIO_NET_HDR_LEN, 0);
                b.extend_from_slice(&p);
            }
            // TUN writes do not block: a full queue drops rather than stall the link.
            let device: &tun_rs::DeviceImpl = &self.device;
            if let Err(e) = device.send_multiple(gro, &mut bufs[..n], VIRTIO_NET_HDR_LEN) {
                tracing::trace!(error = %e, "TUN batch write incomplete");
            }
            // Coalescing grows buffers up to 64 KiB. Keep them while traffic is heavy
            // (no reallocation per batch); give the memory back once it is light.
            if n < 8 {
                for b in bufs.iter_mut().filter(|b| b.capacity() > 16 * 1024) {
                    b.shrink_to(2048);
                }
            }
        });
    }
}

/// The buffers and GRO table TUN batches are written from: one per runtime thread,
/// not one per peer (tun-rs's GRO table alone is about 1 MiB).
#[derive(Default)]
struct WriteScratch {
    bufs: Vec<Vec<u8>>,
    gro: Option<GROTable>,
}

thread_local! {
    static WRITE_SCRATCH: std::cell::RefCell<WriteScratch> = Default::default();
}

impl PacketSink for Tun {
    fn deliver(&self, packet: &[u8]) {
        // A full TUN queue drops the packet, as a congested NIC would.
        let _ = if self.offload {
            self.device
                .send_vectored(&[IoSlice::new(&NO_OFFLOAD_HDR), IoSlice::new(packet)])
        } else {
            self.device.send(packet)
        };
    }

    fn deliver_batch(&self, batch: &mut TunBatch) {
        self.write_batch(batch);
    }
}

/// Packets from one peer on their way to the TUN: references into the received
/// datagrams, copied once, when written.
#[derive(Default)]
pub struct TunBatch {
    pkts: Vec<Bytes>,
}

impl TunBatch {
    /// Queue `packet`, a part of `datagram`.
    pub fn push(&mut self, datagram: &Bytes, packet: &[u8]) {
        self.pkts.push(datagram.slice_ref(packet));
    }

    /// Queue a packet that is a whole buffer of its own.
    pub fn push_bytes(&mut self, packet: Bytes) {
        self.pkts.push(packet);
    }

    pub fn is_full(&self) -> bool {
        self.pkts.len() >= BATCH
    }

    pub fn is_empty(&self) -> bool {
        self.pkts.is_empty()
    }

    /// Take the queued packets out, in order.
    pub fn drain(&mut self) -> impl Iterator<Item = Bytes> + '_ {
        self.pkts.drain(..)
    }

    /// Drop the queued packets unwritten.
    pub fn clear(&mut self) {
        self.pkts.clear();
    }
}

fn cannot_create(name: &str) -> String {
    format!(
        "cannot create TUN device {name}: the daemon needs root (CAP_NET_ADMIN) and \
         /dev/net/tun; is another node already using the name? Set `tun.name`"
    )
}

/// Whether a TUN read error ends the data plane (the device is gone) rather than
/// spoiling one read (a malformed offload header, a transient condition).
fn fatal(e: &io::Error) -> bool {
    match e.raw_os_error() {
        Some(code) => !matches!(code, libc::EAGAIN | libc::EINTR | libc::ENOBUFS),
        None => false,
    }
}

/// What one offloaded read of the device holds.
#[derive(Debug, PartialEq, Eq)]
pub enum Offloaded {
    /// One packet, no segmentation to do: it is used where it was read, after the
    /// virtio-net header.
    Whole,
    /// A TSO/USO super-packet split into this many segments.
    Split(usize),
}

/// Make sense of one offloaded read, `read` (virtio-net header, then the packet):
/// a plain packet stays in place (its checksum completed if the kernel left that to
/// us); a super-packet is split into `bufs`/`sizes`. tun-rs's own reader copies
/// even a lone packet out, after checking every one of its 128 buffers: a few
/// cache-cold microseconds on the first packet after an idle spell, on every ping.
pub fn offloaded(
    read: &mut [u8],
    bufs: &mut [Vec<u8>],
    sizes: &mut [usize],
) -> io::Result<Offloaded> {
    let invalid = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_owned());
    if read.len() <= VIRTIO_NET_HDR_LEN {
        return Err(invalid("TUN read shorter than its virtio-net header"));
    }
    let (head, pkt) = read.split_at_mut(VIRTIO_NET_HDR_LEN);
    let mut hdr = tun_rs::VirtioNetHdr::decode(head)?;
    let csum_start = usize::from(hdr.csum_start);
    if hdr.gso_type == VIRTIO_NET_HDR_GSO_NONE {
        if hdr.flags & VIRTIO_NET_HDR_F_NEEDS_CSUM != 0 {
            // CHECKSUM_PARTIAL: the sum from csum_start on goes at csum_offset,
            // seeded with what is there (the pseudo-header's sum).
            let at = csum_start + usize::from(hdr.csum_offset);
            if csum_start > pkt.len() || at + 2 > pkt.len() {
                return Err(invalid("TUN packet's checksum field lies outside it"));
            }
            let seed = u16::from_be_bytes([pkt[at], pkt[at + 1]]);
            pkt[at..at + 2].fill(0);
            let sum = tun_rs::checksum(&pkt[csum_start..], u64::from(seed));
            pkt[at..at + 2].copy_from_slice(&(!sum).to_be_bytes());
        }
        return Ok(Offloaded::Whole);
    }
    let is_v6 = match pkt[0] >> 4 {
        4 => false,
        6 => true,
        _ => return Err(invalid("TUN super-packet is neither IPv4 nor IPv6")),
    };
    // The kernel's hdr_len may span the whole first packet (forwarded traffic): the
    // headers end where the transport header does.
    let transport_len = if hdr.gso_type & !VIRTIO_NET_HDR_GSO_ECN == VIRTIO_NET_HDR_GSO_UDP_L4 {
        8
    } else {
        let off = pkt
            .get(csum_start + 12)
            .ok_or_else(|| invalid("TUN super-packet shorter than its TCP header"))?;
        let n = usize::from(off >> 4) * 4;
        if !(20..=60).contains(&n) {
            return Err(invalid("TUN super-packet's TCP header length is invalid"));
        }
        n
    };
    hdr.hdr_len = u16::try_from(csum_start + transport_len)
        .map_err(|_| invalid("TUN super-packet's headers are too long"))?;
    if pkt.len() < usize::from(hdr.hdr_len) {
        return Err(invalid("TUN super-packet shorter than its headers"));
    }
    tun_rs::gso_split(pkt, hdr, bufs, sizes, 0, is_v6).map(Offloaded::Split)
}

/// Buffers of one TUN reader.
struct Reader {
    /// An offloaded read (virtio-net header and up to 64 KiB of packet); a lone
    /// packet is used from here, a super-packet is split into `bufs`.
    original: Vec<u8>,
    /// The last offloaded read was one packet, at `original[VIRTIO_NET_HDR_LEN..]`
    /// up to this length.
    whole: Option<usize>,
    bufs: Vec<Vec<u8>>,
    sizes: Vec<usize>,
    scratch: BytesMut,
    /// The fast path's thread: reads in a row that needed the runtime.
    runtime_run: u32,
}

impl Reader {
    fn new(mtu: u16) -> Reader {
        let seg = usize::from(mtu) + 64;
        Reader {
            original: vec![0u8; VIRTIO_NET_HDR_LEN + 65536],
            whole: None,
            bufs: (0..BATCH).map(|_| vec![0u8; seg]).collect(),
            sizes: vec![0usize; BATCH],
            scratch: BytesMut::with_capacity(256 * 1024),
            runtime_run: 0,
        }
    }

    /// One read of the device (non-blocking): the number of packets read (in
    /// `bufs`, or the one in `original`: see `whole`).
    fn read(&mut self, tun: &Tun) -> io::Result<usize> {
        self.whole = None;
        if tun.offload {
            let fd = tun.device.as_raw_fd();
            let len = loop {
                // SAFETY: reads at most `original.len()` bytes into it.
                let n = unsafe {
                    libc::read(fd, self.original.as_mut_ptr().cast(), self.original.len())
                };
                if n >= 0 {
                    break n as usize;
                }
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            };
            match offloaded(&mut self.original[..len], &mut self.bufs, &mut self.sizes)? {
                Offloaded::Whole => {
                    self.whole = Some(len);
                    Ok(1)
                }
                Offloaded::Split(n) => Ok(n),
            }
        } else {
            tun.device.recv(&mut self.bufs[0]).map(|n| {
                self.sizes[0] = n;
                1
            })
        }
    }

    /// Send the `n` packets just read; true when one of them needed the runtime
    /// (see [`Node::send_packet`]).
    fn send(&mut self, n: usize, node: &Arc<Node>) -> bool {
        if let Some(len) = self.whole {
            // One packet: no batch to gather.
            return node.send_packet(&self.original[VIRTIO_NET_HDR_LEN..len], &mut self.scratch);
        }
        let mut runtime = false;
        node.begin_send_batch();
        for (b, &len) in self.bufs.iter().zip(&self.sizes).take(n) {
            if len > 0 {
                runtime |= node.send_packet(&b[..len], &mut self.scratch);
            }
        }
        node.end_send_batch();
        runtime
    }
}

/// Who reads the TUN. The fast path's thread does (`FastSocket::attach_tun`) while
/// what it reads goes on fast data channels: a ping's reply then leaves on the same
/// thread that wrote the request to the TUN, with no wake-up of the runtime. A run
/// of packets that need the runtime (QUIC: a bulk transfer's large packets, a peer
/// without a fast channel; a route to set up) hands the device to [`pump`], which
/// reads it while such packets come, and gives it back after a read with none; a
/// lone one is sent from the thread, which keeps the device. The device is watched
/// by the thread's poller or by the runtime's reactor, never by both.
pub struct TunSide {
    tun: Weak<Tun>,
    node: Weak<Node>,
    fd: RawFd,
    /// The thread's buffers, made on its first read.
    reader: Mutex<Option<Reader>>,
    /// The runtime's [`pump`] has the turn.
    runtime: AtomicBool,
    wake: tokio::sync::Notify,
}

impl TunSource for TunSide {
    fn fd(&self) -> RawFd {
        self.fd
    }

    fn read(&self) -> bool {
        let (Some(tun), Some(node)) = (self.tun.upgrade(), self.node.upgrade()) else {
            return false;
        };
        let mut r = self.reader.lock().unwrap_or_else(|p| p.into_inner());
        let r = r.get_or_insert_with(|| Reader::new(tun.mtu));
        match r.read(&tun) {
            // A lone packet that needed the runtime (a large one on QUIC, one to a
            // peer being set up) was sent or queued from this thread, which keeps the
            // device: handing it over at once left it with the runtime until the
            // next packet, so the first small packet after every large one went
            // through the runtime's wake-up. A run of them (two reads in a row, or
            // one offloaded read of several segments: a bulk transfer) hands it over.
            Ok(n) => {
                if !r.send(n, &node) {
                    r.runtime_run = 0;
                    return true;
                }
                r.runtime_run += 1;
                let keep = n <= 1 && r.runtime_run < 2;
                if !keep {
                    r.runtime_run = 0;
                }
                keep
            }
            // The runtime's reader reports it and, if the device is gone, stops.
            Err(e) if fatal(&e) => false,
            Err(e) => {
                tracing::trace!(error = %e, tun = %tun.name, "TUN read dropped");
                true
            }
        }
    }

    fn to_runtime(&self) {
        self.runtime.store(true, Ordering::Release);
        self.wake.notify_one();
    }

    fn on_runtime(&self) -> bool {
        self.runtime.load(Ordering::Acquire)
    }
}

/// The TUN's descriptor, as registered with the runtime while [`pump`] has the turn.
struct TunFd(RawFd);

impl AsRawFd for TunFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}

/// Read packets from the TUN and send each to its peer until the device fails:
/// the fast path's thread does while they go on fast data channels, this task
/// while they need the runtime (see [`TunSide`]).
pub async fn pump(tun: Arc<Tun>, node: Arc<Node>) {
    let side = Arc::new(TunSide {
        tun: Arc::downgrade(&tun),
        node: Arc::downgrade(&node),
        fd: tun.device.as_raw_fd(),
        reader: Mutex::new(None),
        runtime: AtomicBool::new(false),
        wake: tokio::sync::Notify::new(),
    });
    let fast = node.ep.fast.clone();
    let attached = match fast.attach_tun(side.clone()) {
        Ok(()) => true,
        Err(e) => {
            tracing::debug!(error = %e, tun = %tun.name, "TUN read on the runtime only");
            side.runtime.store(true, Ordering::Release);
            false
        }
    };
    let mut reader = Reader::new(tun.mtu);
    let mut errors = 0u64;
    loop {
        if !side.runtime.load(Ordering::Acquire) {
            side.wake.notified().await;
            continue;
        }
        // SAFETY: `tun` (held by this task) keeps the descriptor open for as long as
        // the registration lives; it is dropped before the turn is given back.
        let io = match unsafe {
            AsyncFd::register_with_interest(TunFd(side.fd), Interest::READABLE)
        } {
            Ok(io) => io,
            Err(e) => {
                tracing::error!(error = %e, tun = %tun.name, "cannot watch the TUN; data plane stopped");
                return;
            }
        };
        loop {
            let mut guard = match io.readable().await {
                Ok(g) => g,
                Err(e) => {
                    tracing::error!(error = %e, tun = %tun.name, "TUN wait failed; data plane stopped");
                    return;
                }
            };
            let n = match guard.try_io(|_| reader.read(&tun)) {
                Ok(r) => r,
                Err(_would_block) => continue,
            };
            match n {
                Ok(n) => {
                    if !reader.send(n, &node) && attached {
                        // Nothing in this read needed the runtime: back to the fast
                        // path's thread, off this reactor first.
                        drop(guard);
                        drop(io);
                        side.runtime.store(false, Ordering::Release);
                        if let Err(e) = fast.give_tun() {
                            tracing::warn!(error = %e, tun = %tun.name, "cannot give the TUN to the fast path");
                            side.runtime.store(true, Ordering::Release);
                        }
                        break;
                    }
                }
                Err(e) if fatal(&e) => {
                    tracing::error!(error = %e, tun = %tun.name, "TUN read failed; data plane stopped");
                    return;
                }
                Err(e) => {
                    errors += 1;
                    if errors.is_power_of_two() {
                        tracing::debug!(error = %e, errors, tun = %tun.name, "TUN read dropped");
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use tun_rs::VirtioNetHdr;

    /// The one's-complement sum of `b` (RFC 1071) plus `seed`, folded (the packet
    /// module's own arithmetic): 0xffff over a region whose checksum is right.
    fn sum(b: &[u8], seed: u32) -> u16 {
        !crate::packet::fold(seed + crate::packet::sum_bytes(b))
    }

    fn read_of(hdr: VirtioNetHdr, pkt: &[u8]) -> Vec<u8> {
        let mut v = vec![0u8; VIRTIO_NET_HDR_LEN];
        hdr.encode(&mut v).unwrap();
        v.extend_from_slice(pkt);
        v
    }

    fn bufs() -> (Vec<Vec<u8>>, Vec<usize>) {
        (
            (0..BATCH).map(|_| vec![0u8; 1564]).collect(),
            vec![0; BATCH],
        )
    }

    /// An IPv4 packet from 198.51.100.1 to 198.51.100.2 with `proto` and `l4`.
    fn v4(proto: u8, l4: &[u8]) -> Vec<u8> {
        let total = (20 + l4.len()) as u16;
        let mut p = vec![
            0x45, 0, 0, 0, 0, 1, 0x40, 0, 64, proto, 0, 0, 198, 51, 100, 1, 198, 51, 100, 2,
        ];
        p[2..4].copy_from_slice(&total.to_be_bytes());
        let c = !sum(&p, 0);
        p[10..12].copy_from_slice(&c.to_be_bytes());
        p.extend_from_slice(l4);
        p
    }

    /// The pseudo-header sum of `p`'s transport part (what the kernel leaves in the
    /// checksum field of a CHECKSUM_PARTIAL packet).
    fn pseudo(p: &[u8]) -> u16 {
        let mut ph = p[12..20].to_vec();
        ph.extend_from_slice(&[0, p[9]]);
        ph.extend_from_slice(&((p.len() - 20) as u16).to_be_bytes());
        sum(&ph, 0)
    }

    #[test]
    fn a_lone_packet_stays_in_place() {
        let pkt = v4(1, &[8, 0, 0xf7, 0xfe, 0, 1, 0, 1]);
        let mut read = read_of(VirtioNetHdr::default(), &pkt);
        let (mut b, mut s) = bufs();
        assert_eq!(
            offloaded(&mut read, &mut b, &mut s).unwrap(),
            Offloaded::Whole
        );
        assert_eq!(&read[VIRTIO_NET_HDR_LEN..], &pkt[..]);
    }

    #[test]
    fn a_partial_checksum_is_completed() {
        let mut pkt = v4(
            17,
            &[
                0x30, 0x39, 0x01, 0xbb, 0, 13, 0, 0, b'h', b'e', b'l', b'l', b'o',
            ],
        );
        let ps = pseudo(&pkt);
        pkt[26..28].copy_from_slice(&ps.to_be_bytes());
        let hdr = VirtioNetHdr {
            flags: VIRTIO_NET_HDR_F_NEEDS_CSUM,
            csum_start: 20,
            csum_offset: 6,
            ..Default::default()
        };
        let mut read = read_of(hdr, &pkt);
        let (mut b, mut s) = bufs();
        assert_eq!(
            offloaded(&mut read, &mut b, &mut s).unwrap(),
            Offloaded::Whole
        );
        let out = &read[VIRTIO_NET_HDR_LEN..];
        // Pseudo-header plus datagram sums to all ones when the checksum is right.
        let mut ph = out[12..20].to_vec();
        ph.extend_from_slice(&[0, 17, 0, 13]);
        assert_eq!(sum(&out[20..], u32::from(sum(&ph, 0))), 0xffff);
        // A checksum field beyond the packet is refused, not written.
        let bad = VirtioNetHdr {
            csum_offset: 60,
            ..hdr
        };
        let mut read = read_of(bad, &pkt);
        assert!(offloaded(&mut read, &mut b, &mut s).is_err());
        assert_eq!(&read[VIRTIO_NET_HDR_LEN..], &pkt[..]);
    }

    #[test]
    fn a_tso_super_packet_is_split() {
        let mut tcp = vec![0u8; 20];
        tcp[0..2].copy_from_slice(&40000u16.to_be_bytes());
        tcp[2..4].copy_from_slice(&5201u16.to_be_bytes());
        tcp[4..8].copy_from_slice(&1000u32.to_be_bytes());
        tcp[12] = 5 << 4;
        tcp[13] = 0x18; // PSH, ACK
        tcp.extend((0..3000u32).map(|i| i as u8));
        let mut pkt = v4(6, &tcp);
        let ps = pseudo(&pkt);
        pkt[36..38].copy_from_slice(&ps.to_be_bytes());
        let hdr = VirtioNetHdr {
            flags: VIRTIO_NET_HDR_F_NEEDS_CSUM,
            gso_type: 1, // TCPv4
            // What the kernel may say for forwarded traffic: not to be trusted.
            hdr_len: 1040,
            gso_size: 1000,
            csum_start: 20,
            csum_offset: 16,
        };
        let mut read = read_of(hdr, &pkt);
        let (mut b, mut s) = bufs();
        assert_eq!(
            offloaded(&mut read, &mut b, &mut s).unwrap(),
            Offloaded::Split(3)
        );
        for (i, seg) in b.iter().zip(&s).take(3).map(|(b, &n)| &b[..n]).enumerate() {
            assert_eq!(seg.len(), 1040);
            assert_eq!(u16::from_be_bytes([seg[2], seg[3]]), 1040);
            let seq = u32::from_be_bytes([seg[24], seg[25], seg[26], seg[27]]);
            assert_eq!(seq, 1000 + 1000 * i as u32);
            assert_eq!(&seg[40..], &pkt[40 + 1000 * i..40 + 1000 * (i + 1)]);
        }
    }

    #[test]
    fn short_and_foreign_reads_are_errors() {
        let (mut b, mut s) = bufs();
        assert!(offloaded(&mut [0u8; 4], &mut b, &mut s).is_err());
        assert!(offloaded(&mut [0u8; VIRTIO_NET_HDR_LEN], &mut b, &mut s).is_err());
        let gso = VirtioNetHdr {
            gso_type: 1,
            gso_size: 100,
            csum_start: 20,
            csum_offset: 16,
            ..Default::default()
        };
        let mut read = read_of(gso, &[0x20; 64]);
        assert!(offloaded(&mut read, &mut b, &mut s).is_err());
    }

    proptest! {
        #[test]
        fn arbitrary_reads_never_panic(
            head in proptest::collection::vec(any::<u8>(), VIRTIO_NET_HDR_LEN..VIRTIO_NET_HDR_LEN + 1),
            flags in 0u8..4, gso in prop_oneof![Just(0u8), Just(1), Just(4), Just(5), Just(0x81), any::<u8>()],
            body in proptest::collection::vec(any::<u8>(), 0..3000),
        ) {
            let mut read = head;
            read[0] = flags;
            read[1] = gso;
            read.extend_from_slice(&body);
            let (mut b, mut s) = bufs();
            if let Ok(Offloaded::Split(n)) = offloaded(&mut read, &mut b, &mut s) {
                prop_assert!(n <= BATCH);
                for i in 0..n {
                    prop_assert!(s[i] <= b[i].len());
                }
            }
        }
    }
}
