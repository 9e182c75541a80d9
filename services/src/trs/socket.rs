//! The TRS's UDP socket: forwards relay traffic by Connection ID before quinn sees it.
//!
//! It wraps the socket quinn would use. On every receive it looks at each datagram's
//! QUIC Destination CID (per GRO segment), asks the [`ForwardTable`] what to do, sends
//! relay traffic on unchanged from the same socket, drops what may not pass, and hands
//! only the TRS's own datagrams (its control connections, and AS/NMS when they share
//! the process) to quinn. Forwarding is one datagram in, at most one out: no
//! amplification.

use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use cyphonic_proto::RelayToken;
use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};

use super::table::{Decision, DropReason, ForwardTable};

/// Counters an operator reads in the TRS status and tests read to prove behaviour.
#[derive(Debug, Default)]
pub struct RelayCounters {
    pub forwarded_packets: AtomicU64,
    pub forwarded_bytes: AtomicU64,
    pub dropped_unknown_sender: AtomicU64,
    pub dropped_not_bound: AtomicU64,
    pub dropped_expired: AtomicU64,
    pub dropped_rate_limited: AtomicU64,
    pub dropped_destination_offline: AtomicU64,
    pub dropped_send_error: AtomicU64,
}

impl RelayCounters {
    fn count_drop(&self, reason: DropReason) {
        let c = match reason {
            DropReason::UnknownSender => &self.dropped_unknown_sender,
            DropReason::NotBound => &self.dropped_not_bound,
            DropReason::Expired => &self.dropped_expired,
            DropReason::RateLimited => &self.dropped_rate_limited,
            DropReason::DestinationOffline => &self.dropped_destination_offline,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// Every datagram refused by the relay rules (not send errors).
    pub fn refused(&self) -> u64 {
        self.dropped_unknown_sender.load(Ordering::Relaxed)
            + self.dropped_not_bound.load(Ordering::Relaxed)
            + self.dropped_expired.load(Ordering::Relaxed)
            + self.dropped_rate_limited.load(Ordering::Relaxed)
            + self.dropped_destination_offline.load(Ordering::Relaxed)
    }
}

/// Relay token in the Destination CID of a datagram, if it is a QUIC packet with a
/// CYPHONIC-length CID.
pub fn relay_token_of(datagram: &[u8]) -> Option<RelayToken> {
    let cid = cyphonic_proto::quic::destination_cid(datagram).ok()?;
    cyphonic_proto::quic::relay_token_of(cid)
}

/// Whether `a` and `b` are of one family (an IPv4-mapped IPv6 address is IPv4).
fn same_family(a: IpAddr, b: IpAddr) -> bool {
    let v4 = |ip: IpAddr| match ip {
        IpAddr::V4(_) => true,
        IpAddr::V6(v6) => v6.to_ipv4_mapped().is_some(),
    };
    v4(a) == v4(b)
}

/// A UDP socket for quinn that relays by Connection ID.
pub struct RelaySocket {
    inner: Arc<dyn AsyncUdpSocket>,
    table: Arc<Mutex<ForwardTable>>,
    counters: Arc<RelayCounters>,
}

impl fmt::Debug for RelaySocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RelaySocket")
            .field("inner", &self.inner)
            .finish()
    }
}

impl RelaySocket {
    pub fn new(
        inner: Arc<dyn AsyncUdpSocket>,
        table: Arc<Mutex<ForwardTable>>,
        counters: Arc<RelayCounters>,
    ) -> Self {
        RelaySocket {
            inner,
            table,
            counters,
        }
    }

    /// Send `d` (one datagram, or several of `stride` bytes each, the last possibly
    /// shorter) to `to` in one system call (UDP GSO when there are several).
    fn forward(
        &self,
        table: &ForwardTable,
        to: SocketAddr,
        meta: &RecvMeta,
        d: &[u8],
        stride: usize,
    ) {
        if d.is_empty() {
            return;
        }
        let count = d.len().div_ceil(stride) as u64;
        let t = Transmit {
            destination: to,
            ecn: meta.ecn,
            contents: d,
            segment_size: (count > 1).then_some(stride),
            // From the address the destination node reaches the TRS at: it knows its
            // TRS by that address, and a host with several would otherwise pick one
            // by route. Unknown: the address the datagram came to, if of the same
            // family, else the kernel's choice.
            src_ip: table
                .source_toward(to)
                .or_else(|| meta.dst_ip.filter(|ip| same_family(*ip, to.ip()))),
        };
        match self.inner.try_send(&t) {
            Ok(()) => {
                self.counters
                    .forwarded_packets
                    .fetch_add(count, Ordering::Relaxed);
                self.counters
                    .forwarded_bytes
                    .fetch_add(d.len() as u64, Ordering::Relaxed);
            }
            // UDP: a full socket buffer means the packets are lost, as on any router.
            // The end-to-end QUIC connection recovers.
            Err(_) => {
                self.counters
                    .dropped_send_error
                    .fetch_add(count, Ordering::Relaxed);
            }
        }
    }

    /// Filter the datagrams of one receive buffer in place; returns the bytes kept.
    /// With GRO the buffer holds segments of `stride` bytes (the last may be shorter);
    /// kept segments are moved together so quinn sees a valid GRO buffer. A run of
    /// segments relayed to the same node leaves in one GSO send: one datagram in, one
    /// out, as many system calls as runs rather than datagrams.
    fn filter_buffer(
        &self,
        table: &mut ForwardTable,
        buf: &mut [u8],
        meta: &RecvMeta,
        now: Instant,
    ) -> usize {
        let len = meta.len.min(buf.len());
        let stride = if meta.stride == 0 { len } else { meta.stride };
        // A GSO send carries at most this many segments and 64 KiB.
        let max_run = (self.inner.max_transmit_segments().max(1) * stride).min(65_000);
        let mut kept = 0usize;
        let mut start = 0usize;
        // Segments [run_start, start) go to `run_to`, not sent yet.
        let mut run_start = 0usize;
        let mut run_to: Option<SocketAddr> = None;
        while start < len {
            let end = (start + stride).min(len);
            let decision = table.decide(meta.addr, relay_token_of(&buf[start..end]), now);
            if let Some(to) = run_to {
                let joins = matches!(decision, Decision::Forward(t) if t == to)
                    && end - run_start <= max_run;
                if !joins {
                    self.forward(table, to, meta, &buf[run_start..start], stride);
                    run_to = None;
                }
            }
            match decision {
                Decision::Own => {
                    if kept != start {
                        buf.copy_within(start..end, kept);
                    }
                    kept += end - start;
                }
                Decision::Forward(to) => {
                    if run_to.is_none() {
                        run_to = Some(to);
                        run_start = start;
                    }
                }
                Decision::Drop(reason) => self.counters.count_drop(reason),
            }
            start = end;
        }
        if let Some(to) = run_to {
            self.forward(table, to, meta, &buf[run_start..len], stride);
        }
        kept
    }
}

impl AsyncUdpSocket for RelaySocket {
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
        loop {
            let n = match self.inner.poll_recv(cx, bufs, meta) {
                Poll::Ready(Ok(n)) => n,
                other => return other,
            };
            let now = Instant::now();
            let mut out = 0usize;
            {
                let mut table = match self.table.lock() {
                    Ok(t) => t,
                    Err(poisoned) => poisoned.into_inner(),
                };
                for i in 0..n.min(bufs.len()).min(meta.len()) {
                    let m = meta[i];
                    let kept = self.filter_buffer(&mut table, &mut bufs[i], &m, now);
                    if kept == 0 {
                        continue;
                    }
                    if out != i {
                        let (head, tail) = bufs.split_at_mut(i);
                        head[out][..kept].copy_from_slice(&tail[0][..kept]);
                    }
                    meta[out] = RecvMeta { len: kept, ..m };
                    out += 1;
                }
            }
            if out > 0 {
                return Poll::Ready(Ok(out));
            }
            // Everything was relay traffic: poll again so the waker stays registered.
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
