//! Direction Request (11): Initiator → NMS (SPEC §5).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use bytes::BufMut;

use crate::codec::{len16, parse_canonical_fqdn, Reader};
use crate::error::{DecodeError, EncodeError};
use crate::ids::{ApplicationId, Fqdn, PathId};

/// Whom the Initiator wants to reach: the "FQDN" field of a Direction Request.
///
/// v2 allows a node that only knows a virtual address (an application connected to a
/// bare IP) to send that address as text. On the wire: an IPv4 address in dotted
/// decimal, an IPv6 address in RFC 5952 form (as Rust prints it), or a canonical FQDN.
/// A text that parses as an IP address is an address, never an FQDN.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum DirectionTarget {
    /// The Responder's FQDN.
    Fqdn(Fqdn),
    /// The Responder's virtual IPv4 address.
    VirtualIpv4(Ipv4Addr),
    /// The Responder's virtual IPv6 address.
    VirtualIpv6(Ipv6Addr),
}

impl DirectionTarget {
    /// The wire text.
    pub fn to_text(&self) -> String {
        match self {
            DirectionTarget::Fqdn(f) => f.as_str().to_owned(),
            DirectionTarget::VirtualIpv4(a) => a.to_string(),
            DirectionTarget::VirtualIpv6(a) => a.to_string(),
        }
    }

    /// Parse the wire text strictly: it must be in the canonical form [`Self::to_text`]
    /// produces.
    pub fn parse(text: &str) -> Result<Self, DecodeError> {
        const FIELD: &str = "Direction Request FQDN";
        if let Ok(ip) = IpAddr::from_str(text) {
            if ip.to_string() != text {
                return Err(DecodeError::NonCanonical { field: FIELD });
            }
            return Ok(match ip {
                IpAddr::V4(a) => DirectionTarget::VirtualIpv4(a),
                IpAddr::V6(a) => DirectionTarget::VirtualIpv6(a),
            });
        }
        parse_canonical_fqdn(text, FIELD).map(DirectionTarget::Fqdn)
    }
}

impl From<Fqdn> for DirectionTarget {
    fn from(f: Fqdn) -> Self {
        DirectionTarget::Fqdn(f)
    }
}

impl From<IpAddr> for DirectionTarget {
    fn from(a: IpAddr) -> Self {
        match a {
            IpAddr::V4(a) => DirectionTarget::VirtualIpv4(a),
            IpAddr::V6(a) => DirectionTarget::VirtualIpv6(a),
        }
    }
}

/// Direction Request (Initiator → NMS; Base Header ID = Initiator NodeID). Answered
/// with a Route Direction to Initiator.
///
/// Body: `0: Application ID(128) · 16: Path ID(128) · 32: FQDN Len(16) ·
/// 34: Certificate Len(16) = 0 · 36: FQDN (target text)`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DirectionRequest {
    /// Application ID (v2: zero).
    pub application_id: ApplicationId,
    /// PathID of Initiator → Responder ([`PathId::derive`]); zero when the target is
    /// an address and the Initiator cannot derive it.
    pub path_id: PathId,
    /// Whom the Initiator wants to reach.
    pub target: DirectionTarget,
}

impl DirectionRequest {
    pub(crate) fn encode(&self, w: &mut impl BufMut) -> Result<(), EncodeError> {
        let text = self.target.to_text();
        if let DirectionTarget::Fqdn(f) = &self.target {
            if IpAddr::from_str(f.as_str()).is_ok() {
                return Err(EncodeError::AmbiguousTarget(text));
            }
        }
        w.put_slice(self.application_id.as_bytes());
        w.put_slice(self.path_id.as_bytes());
        w.put_u16(len16("FQDN", text.len())?);
        w.put_u16(0);
        w.put_slice(text.as_bytes());
        Ok(())
    }

    pub(crate) fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let application_id = ApplicationId(r.array()?);
        let path_id = PathId(r.array()?);
        let len = r.u16()?;
        r.obsolete_u16("Certificate Len", 0)?;
        let text = r.take(len.into())?;
        let text = std::str::from_utf8(text).map_err(|_| DecodeError::BadUtf8 {
            field: "Direction Request FQDN",
        })?;
        Ok(DirectionRequest {
            application_id,
            path_id,
            target: DirectionTarget::parse(text)?,
        })
    }
}
