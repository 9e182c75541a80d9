//! QUIC-level helpers every party shares (SPEC §3, §7): 16-byte Connection IDs that
//! begin with the endpoint's relay token, and a zero-copy Destination CID parser for the
//! TRS's relay-by-CID fast path.
//!
//! ```text
//! CID (16 bytes) = relay token (8) ‖ 8 random bytes
//! short header:  | 0 1 S R R K P P | DCID (16) | packet number … |
//! long header:   | 1 1 T T X X X X | Version (32) | DCID Len (8) | DCID | SCID Len (8) | SCID | …
//! ```

use std::time::Duration;

use quinn_proto::{ConnectionId, ConnectionIdGenerator, InvalidCid};

use crate::ids::RelayToken;

/// Length of every Connection ID in CYPHONIC (SPEC §3).
pub const CID_LEN: usize = 16;
/// QUIC version 1 (RFC 9000).
pub const QUIC_V1: u32 = 1;
/// Smallest short-header packet: first byte, DCID, and the 4 + 16 bytes header
/// protection needs to sample (RFC 9001 §5.4.2: shorter packets are discarded).
pub const MIN_SHORT_PACKET: usize = 1 + CID_LEN + 4 + 16;

const LONG_HEADER_FORM: u8 = 0x80;
/// RFC 9000 §17.2: in version 1 a Connection ID is at most 20 bytes.
const MAX_V1_CID_LEN: usize = 20;

/// Issues this endpoint's Connection IDs: relay token ‖ 8 random bytes, 16 bytes in
/// all, so a TRS can route every packet addressed to this endpoint by its DCID prefix.
///
/// Install with `EndpointConfig::cid_generator(move || Box::new(RelayCidGenerator::new(token)))`.
#[derive(Debug, Clone, Copy)]
pub struct RelayCidGenerator {
    token: RelayToken,
    lifetime: Option<Duration>,
}

impl RelayCidGenerator {
    /// Generator for the endpoint holding `token`; CIDs do not expire.
    pub fn new(token: RelayToken) -> Self {
        RelayCidGenerator {
            token,
            lifetime: None,
        }
    }

    /// Let quinn retire and replace each CID after `lifetime`.
    pub fn with_lifetime(mut self, lifetime: Duration) -> Self {
        self.lifetime = Some(lifetime);
        self
    }

    /// The relay token every generated CID starts with.
    pub fn token(&self) -> RelayToken {
        self.token
    }
}

impl ConnectionIdGenerator for RelayCidGenerator {
    fn generate_cid(&mut self) -> ConnectionId {
        cid_with_token(self.token)
    }

    /// Accepts exactly the 16-byte CIDs that start with this endpoint's token.
    fn validate(&self, cid: &ConnectionId) -> Result<(), InvalidCid> {
        match relay_token_of(cid) {
            Some(t) if t == self.token => Ok(()),
            _ => Err(InvalidCid),
        }
    }

    fn cid_len(&self) -> usize {
        CID_LEN
    }

    fn cid_lifetime(&self) -> Option<Duration> {
        self.lifetime
    }
}

/// The bit of a CID's first random byte (byte 8) that marks a fast-data channel's
/// Destination CID ([`crate::fastdata`]). Every CID quinn issues or dials has it
/// clear, so an endpoint tells its fast-data packets from its QUIC packets by the
/// DCID alone; a TRS routes both by the relay token before it.
pub const FAST_CID_BIT: u8 = 0x80;

fn cid_with_token(token: RelayToken) -> ConnectionId {
    let mut b = [0u8; CID_LEN];
    let (head, tail) = b.split_at_mut(RelayToken::LEN);
    head.copy_from_slice(token.as_bytes());
    tail.copy_from_slice(&rand::random::<[u8; CID_LEN - RelayToken::LEN]>());
    b[RelayToken::LEN] &= !FAST_CID_BIT;
    ConnectionId::new(&b)
}

/// Whether `cid` (16 bytes) is a fast-data channel's Destination CID.
pub fn is_fast_cid(cid: &[u8]) -> bool {
    cid.len() == CID_LEN && cid[RelayToken::LEN] & FAST_CID_BIT != 0
}

/// A Destination CID for the Initiator's first Initial packet to a Responder whose
/// endpoint holds `responder`: the Responder's relay token ‖ 8 random bytes, so a TRS
/// can route the Initial before the Responder has issued any CID (SPEC §7). For
/// `ClientConfig::initial_dst_cid_provider(Arc::new(move || initial_dcid(token)))`.
pub fn initial_dcid(responder: RelayToken) -> ConnectionId {
    cid_with_token(responder)
}

/// Why a datagram is not a QUIC packet a CYPHONIC relay can route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NotQuic {
    /// Too short for the header (short header: [`MIN_SHORT_PACKET`] bytes; long header:
    /// through the Source CID).
    #[error("datagram too short for a QUIC header: need {need} bytes, got {got}")]
    TooShort {
        /// Bytes the header needs.
        need: usize,
        /// Bytes in the datagram.
        got: usize,
    },
    /// Long-header Version 0: a Version Negotiation packet. CYPHONIC endpoints all
    /// speak QUIC v1, so there is nothing to negotiate and a relay drops these.
    #[error("version negotiation packet")]
    VersionNegotiation,
    /// A long-header Destination CID that is not 16 bytes long.
    #[error("destination CID is {0} bytes, CYPHONIC uses 16")]
    CidLength(usize),
    /// A version-1 Source CID longer than 20 bytes (RFC 9000 §17.2).
    #[error("source CID is {0} bytes, more than QUIC v1 allows")]
    SourceCidLength(usize),
}

/// The Destination Connection ID of the (first) QUIC packet in `datagram`, borrowed
/// from it.
///
/// Short header (form bit 0): the 16 bytes after the first byte; the datagram must be
/// at least [`MIN_SHORT_PACKET`] long. Long header (form bit 1): Version at \[1..5\],
/// DCID Len at \[5\] which must be 16, the DCID, and a complete SCID (≤ 20 bytes for
/// v1); Version 0 (Version Negotiation) is refused. The fixed bit 0x40 is not checked
/// (quinn greases it). Coalesced packets share the first packet's DCID
/// (RFC 9000 §12.2), so the first header decides.
pub fn destination_cid(datagram: &[u8]) -> Result<&[u8], NotQuic> {
    let first = *datagram
        .first()
        .ok_or(NotQuic::TooShort { need: 1, got: 0 })?;
    if first & LONG_HEADER_FORM == 0 {
        if datagram.len() < MIN_SHORT_PACKET {
            return Err(NotQuic::TooShort {
                need: MIN_SHORT_PACKET,
                got: datagram.len(),
            });
        }
        return datagram.get(1..1 + CID_LEN).ok_or(NotQuic::TooShort {
            need: MIN_SHORT_PACKET,
            got: datagram.len(),
        });
    }
    let (version, dcid_len) = match datagram {
        [_, v0, v1, v2, v3, l, ..] => (u32::from_be_bytes([*v0, *v1, *v2, *v3]), usize::from(*l)),
        _ => {
            return Err(NotQuic::TooShort {
                need: 6,
                got: datagram.len(),
            })
        }
    };
    if version == 0 {
        return Err(NotQuic::VersionNegotiation);
    }
    if dcid_len != CID_LEN {
        return Err(NotQuic::CidLength(dcid_len));
    }
    let scid_len_at = 6 + CID_LEN;
    let scid_len = usize::from(*datagram.get(scid_len_at).ok_or(NotQuic::TooShort {
        need: scid_len_at + 1,
        got: datagram.len(),
    })?);
    if version == QUIC_V1 && scid_len > MAX_V1_CID_LEN {
        return Err(NotQuic::SourceCidLength(scid_len));
    }
    let need = scid_len_at + 1 + scid_len;
    if datagram.len() < need {
        return Err(NotQuic::TooShort {
            need,
            got: datagram.len(),
        });
    }
    datagram.get(6..6 + CID_LEN).ok_or(NotQuic::TooShort {
        need,
        got: datagram.len(),
    })
}

/// The relay token a CYPHONIC Connection ID starts with; `None` unless `cid` is
/// exactly [`CID_LEN`] bytes.
pub fn relay_token_of(cid: &[u8]) -> Option<RelayToken> {
    if cid.len() != CID_LEN {
        return None;
    }
    let t: [u8; RelayToken::LEN] = cid.get(..RelayToken::LEN)?.try_into().ok()?;
    Some(RelayToken(t))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: RelayToken = RelayToken([1, 2, 3, 4, 5, 6, 7, 8]);

    #[test]
    fn generator_prefixes_and_validates() {
        let mut g = RelayCidGenerator::new(TOKEN);
        assert_eq!(g.cid_len(), 16);
        assert_eq!(g.cid_lifetime(), None);
        let a = g.generate_cid();
        let b = g.generate_cid();
        assert_eq!(a.len(), 16);
        assert_eq!(&a[..8], TOKEN.as_bytes());
        assert_ne!(a, b, "tails are random");
        assert!(g.validate(&a).is_ok());
        let other = RelayCidGenerator::new(RelayToken::from_u64(9)).generate_cid();
        assert!(g.validate(&other).is_err());
        assert!(g
            .validate(&ConnectionId::new(&[1, 2, 3, 4, 5, 6, 7, 8]))
            .is_err());
        for _ in 0..256 {
            assert!(
                !is_fast_cid(&g.generate_cid()),
                "quinn's CIDs never look fast"
            );
            assert!(!is_fast_cid(&initial_dcid(TOKEN)));
        }
        let g = g.with_lifetime(Duration::from_secs(60));
        assert_eq!(g.cid_lifetime(), Some(Duration::from_secs(60)));
        assert_eq!(g.token(), TOKEN);
    }

    #[test]
    fn initial_dcid_carries_the_responder_token() {
        let c = initial_dcid(TOKEN);
        assert_eq!(c.len(), CID_LEN);
        assert_eq!(relay_token_of(&c), Some(TOKEN));
        assert_ne!(initial_dcid(TOKEN), c);
    }

    #[test]
    fn relay_token_needs_exactly_16_bytes() {
        assert_eq!(relay_token_of(&[0; 15]), None);
        assert_eq!(relay_token_of(&[0; 17]), None);
        let mut c = [0u8; 16];
        c[..8].copy_from_slice(TOKEN.as_bytes());
        assert_eq!(relay_token_of(&c), Some(TOKEN));
    }
}
