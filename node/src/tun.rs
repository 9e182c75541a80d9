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
use std::sync::Arc;

use anyhow::{Context, Result};
use bytes::{Bytes, BytesMut};
use tun_rs::{GROTable, IDEAL_BATCH_SIZE, VIRTIO_NET_HDR_LEN};

use crate::node::{Node, PacketSink};

/// Packets written to the TUN in one batch (and read in one offloaded read).
pub const BATCH: usize = IDEAL_BATCH_SIZE;

/// A zero virtio-net header: "no offload" for a single packet we write.
const NO_OFFLOAD_HDR: [u8; VIRTIO_NET_HDR_LEN] = [0; VIRTIO_NET_HDR_LEN];

/// A TUN device with the node's addresses. Dropping the last handle removes the
/// interface and, with it, its addresses and routes.
pub struct Tun {
    pub device: tun_rs::AsyncDevice,
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
                .build_async()
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
            // The synchronous call of the device under the async wrapper: TUN writes
            // do not block, and a full queue should drop rather than stall the link.
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
                .try_send_vectored(&[IoSlice::new(&NO_OFFLOAD_HDR), IoSlice::new(packet)])
        } else {
            self.device.try_send(packet)
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

/// Read packets from the TUN and send each to its peer until the device fails.
pub async fn pump(tun: Arc<Tun>, node: Arc<Node>) {
    let seg = usize::from(tun.mtu) + 64;
    let mut original = vec![0u8; VIRTIO_NET_HDR_LEN + 65536];
    let mut bufs: Vec<Vec<u8>> = (0..BATCH).map(|_| vec![0u8; seg]).collect();
    let mut sizes = vec![0usize; BATCH];
    let mut scratch = BytesMut::with_capacity(256 * 1024);
    let mut errors = 0u64;
    loop {
        let n = if tun.offload {
            tun.device
                .recv_multiple(&mut original, &mut bufs, &mut sizes, 0)
                .await
        } else {
            tun.device.recv(&mut bufs[0]).await.map(|n| {
                sizes[0] = n;
                1
            })
        };
        match n {
            Ok(n) => {
                node.begin_send_batch();
                for (b, &len) in bufs.iter().zip(&sizes).take(n) {
                    if len > 0 {
                        node.send_packet(&b[..len], &mut scratch);
                    }
                }
                node.end_send_batch();
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
