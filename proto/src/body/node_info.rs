//! Node Information Request (15) / Response (16): adapter ↔ AS, the general nodes bound
//! to an adapter (SPEC §5, §9).

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use bytes::BufMut;

use super::login::AuthType;
use crate::codec::{len16, Reader};
use crate::error::{DecodeError, EncodeError};
use crate::ids::Fqdn;

/// Size of the fixed part of one Node Information entry.
pub const NODE_INFO_ENTRY_FIXED_LEN: usize = 32;

/// An Ethernet MAC address (a general node's LAN identity).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct MacAddr(pub [u8; 6]);

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MacAddr({self})")
    }
}

/// A MAC address text is not `xx:xx:xx:xx:xx:xx` (or with `-`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a MAC address (expected six hex octets separated by ':' or '-')")]
pub struct MacAddrParseError(pub String);

impl FromStr for MacAddr {
    type Err = MacAddrParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || MacAddrParseError(s.to_owned());
        let mut out = [0u8; 6];
        let sep = if s.contains('-') { '-' } else { ':' };
        let mut parts = s.split(sep);
        for o in out.iter_mut() {
            let p = parts.next().ok_or_else(err)?;
            if p.len() != 2 || !p.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(err());
            }
            *o = u8::from_str_radix(p, 16).map_err(|_| err())?;
        }
        if parts.next().is_some() {
            return Err(err());
        }
        Ok(MacAddr(out))
    }
}

/// One general node bound to an adapter.
///
/// Entry: `0: FQDN Len(16) · 2: Device ID Len(16) · 4: MAC(48) · 10: Auth Type(8) ·
/// 11: Flags(8; bit 0 = IPv6 on, other bits 0) · 12: Virtual IPv4(32) · 16: Virtual
/// IPv6(128) · 32: FQDN · Device ID`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct GeneralNode {
    /// The general node's FQDN (its identity on the overlay).
    pub fqdn: Fqdn,
    /// Operator-chosen device name (UTF-8).
    pub device_id: String,
    /// MAC address the adapter recognises it by on the LAN.
    pub mac: MacAddr,
    /// How the general node authenticates.
    pub auth_type: AuthType,
    /// Virtual IPv4 address (handed out by DHCPv4).
    pub virtual_ipv4: Ipv4Addr,
    /// Virtual IPv6 address (handed out by DHCPv6).
    pub virtual_ipv6: Ipv6Addr,
    /// The general node gets its virtual IPv6 address (RA + DHCPv6) too.
    pub ipv6_enabled: bool,
}

const FLAG_IPV6: u8 = 0x01;

impl GeneralNode {
    fn encode(&self, w: &mut impl BufMut) -> Result<(), EncodeError> {
        w.put_u16(len16("General node FQDN", self.fqdn.as_str().len())?);
        w.put_u16(len16("General node Device ID", self.device_id.len())?);
        w.put_slice(&self.mac.0);
        w.put_u8(self.auth_type as u8);
        w.put_u8(if self.ipv6_enabled { FLAG_IPV6 } else { 0 });
        w.put_slice(&self.virtual_ipv4.octets());
        w.put_slice(&self.virtual_ipv6.octets());
        w.put_slice(self.fqdn.as_str().as_bytes());
        w.put_slice(self.device_id.as_bytes());
        Ok(())
    }

    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let (fl, dl) = (r.u16()?, r.u16()?);
        let mac = MacAddr(r.array()?);
        let auth_type = AuthType::from_code("General node Auth Type", r.u8()?)?;
        let flags = r.u8()?;
        if flags & !FLAG_IPV6 != 0 {
            return Err(DecodeError::NonZeroReserved {
                field: "General node Flags",
            });
        }
        let virtual_ipv4 = r.ipv4()?;
        let virtual_ipv6 = r.ipv6()?;
        Ok(GeneralNode {
            fqdn: r.fqdn(fl.into(), "General node FQDN")?,
            device_id: r.utf8(dl.into(), "General node Device ID")?,
            mac,
            auth_type,
            virtual_ipv4,
            virtual_ipv6,
            ipv6_enabled: flags & FLAG_IPV6 != 0,
        })
    }
}

/// Body of the Node Information Response (AS → adapter; Base Header ID = the adapter's
/// NodeID). The request (adapter → AS) is header only: AS knows the adapter from its
/// TLS identity.
///
/// Body: `0: Entry Count(16) · 2: Padding(16) = 0 · 4: entries` (see [`GeneralNode`]).
/// The whole message is bounded by the 16-bit Message Length (about 1 900 minimal
/// entries).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct NodeInformation {
    /// The general nodes bound to the adapter.
    pub general_nodes: Vec<GeneralNode>,
}

impl NodeInformation {
    pub(crate) fn encode(&self, w: &mut impl BufMut) -> Result<(), EncodeError> {
        let n =
            u16::try_from(self.general_nodes.len()).map_err(|_| EncodeError::TooManyEntries {
                what: "Node Information",
                count: self.general_nodes.len(),
                max: u16::MAX.into(),
            })?;
        w.put_u16(n);
        w.put_u16(0);
        for g in &self.general_nodes {
            g.encode(w)?;
        }
        Ok(())
    }

    pub(crate) fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let count = usize::from(r.u16()?);
        r.zeros(2, "Node Information Padding")?;
        // Each entry needs at least its fixed part plus a 1-byte FQDN: refuse a count
        // the input cannot hold before reserving memory for it.
        let max = r.remaining() / (NODE_INFO_ENTRY_FIXED_LEN + 1);
        if count > max {
            return Err(DecodeError::TooManyEntries {
                what: "Node Information",
                count,
                max,
            });
        }
        let mut general_nodes = Vec::with_capacity(count);
        for _ in 0..count {
            general_nodes.push(GeneralNode::decode(r)?);
        }
        Ok(NodeInformation { general_nodes })
    }
}

#[cfg(test)]
mod mac_tests {
    use super::MacAddr;

    #[test]
    fn mac_text_must_be_hex_octets() {
        assert_eq!(
            "02:ab:CD:00:11:ff".parse::<MacAddr>().unwrap().to_string(),
            "02:ab:cd:00:11:ff"
        );
        for bad in [
            "+f:00:00:00:00:00",
            "02:ab:cd:00:11",
            "02:ab:cd:00:11:ff:00",
            "0g:00:00:00:00:00",
            "",
        ] {
            assert!(bad.parse::<MacAddr>().is_err(), "{bad:?}");
        }
    }
}
