//! Location Update (29): NMS → the peers of a node that re-registered from a new
//! address (SPEC §5, §6 "Mobility"; new in v2).

use std::net::{Ipv4Addr, Ipv6Addr};

use bytes::BufMut;

use crate::codec::{put_opt_ipv4, put_opt_ipv6, Reader};
use crate::error::{DecodeError, EncodeError};
use crate::ids::PathId;

/// Location Update (NMS → peer, pushed on the peer's NMS connection; Base Header ID =
/// the receiving peer's NodeID). The moved node is the other end of `path_id`.
///
/// Body: `0: Path ID(128) · 16: NAT Port(16) · 18: Real Port(16) · 20: NAT IPv4(32) ·
/// 24: NAT IPv6(128) · 40: Real IPv4(32) · 44: Real IPv6(128)` (60 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LocationUpdate {
    /// PathID of the path between the receiving peer and the moved node.
    pub path_id: PathId,
    /// Port NMS now observes the moved node at.
    pub nat_port: u16,
    /// The moved node's local UDP port (its Registration Request Application Port).
    pub real_port: u16,
    /// IPv4 address NMS now observes the moved node at.
    pub nat_ipv4: Option<Ipv4Addr>,
    /// IPv6 address NMS now observes the moved node at.
    pub nat_ipv6: Option<Ipv6Addr>,
    /// The moved node's own interface IPv4 address.
    pub real_ipv4: Option<Ipv4Addr>,
    /// The moved node's own interface IPv6 address.
    pub real_ipv6: Option<Ipv6Addr>,
}

impl LocationUpdate {
    pub(crate) fn encode(&self, w: &mut impl BufMut) -> Result<(), EncodeError> {
        w.put_slice(self.path_id.as_bytes());
        w.put_u16(self.nat_port);
        w.put_u16(self.real_port);
        put_opt_ipv4(w, self.nat_ipv4);
        put_opt_ipv6(w, self.nat_ipv6);
        put_opt_ipv4(w, self.real_ipv4);
        put_opt_ipv6(w, self.real_ipv6);
        Ok(())
    }

    pub(crate) fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(LocationUpdate {
            path_id: PathId(r.array()?),
            nat_port: r.u16()?,
            real_port: r.u16()?,
            nat_ipv4: r.opt_ipv4()?,
            nat_ipv6: r.opt_ipv6()?,
            real_ipv4: r.opt_ipv4()?,
            real_ipv6: r.opt_ipv6()?,
        })
    }
}
