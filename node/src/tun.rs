//! The TUN device: the node's virtual IPv4/IPv6 addresses, the overlay prefixes
//! routed into it, and the loop that carries packets read from it to peers.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use anyhow::{Context, Result};
use bytes::BytesMut;

use crate::node::{Node, PacketSink};

/// A TUN device with the node's addresses. Dropping the last handle removes the
/// interface and, with it, its addresses and routes.
pub struct Tun {
    pub device: tun_rs::AsyncDevice,
    pub name: String,
    pub mtu: u16,
}

impl Tun {
    /// Create `name` with `v4/v4_len` and `v6/v6_len`: the connected routes of those
    /// prefixes carry the whole overlay into the TUN.
    pub fn create(
        name: &str,
        mtu: u16,
        v4: Ipv4Addr,
        v4_len: u8,
        v6: Ipv6Addr,
        v6_len: u8,
    ) -> Result<Tun> {
        let device = tun_rs::DeviceBuilder::new()
            .name(name)
            .mtu(mtu)
            .ipv4(v4, v4_len, None)
            .ipv6(v6, v6_len)
            .build_async()
            .with_context(|| {
                format!(
                    "cannot create TUN device {name}: the daemon needs root (CAP_NET_ADMIN) and \
                     /dev/net/tun; is another node already using the name? Set `tun.name`"
                )
            })?;
        tracing::info!(tun = name, %v4, %v6, mtu, "TUN device up");
        Ok(Tun {
            device,
            name: name.to_owned(),
            mtu,
        })
    }
}

impl PacketSink for Tun {
    fn deliver(&self, packet: &[u8]) {
        // A full TUN queue drops the packet, as a congested NIC would.
        let _ = self.device.try_send(packet);
    }
}

/// Read packets from the TUN and send each to its peer until the device fails.
pub async fn pump(tun: Arc<Tun>, node: Arc<Node>) {
    let mut pkt = vec![0u8; 65536];
    let mut scratch = BytesMut::with_capacity(256 * 1024);
    loop {
        match tun.device.recv(&mut pkt).await {
            Ok(0) => continue,
            Ok(n) => node.send_packet(&pkt[..n], &mut scratch),
            Err(e) => {
                tracing::error!(error = %e, tun = %tun.name, "TUN read failed; data plane stopped");
                return;
            }
        }
    }
}
