//! Relay Request (17) and Relay Response (18): NMS ↔ TRS (SPEC §5, §7).

use bytes::BufMut;

use crate::codec::Reader;
use crate::error::{DecodeError, EncodeError};
use crate::ids::{NodeId, PathId};

/// Body of Relay Request (NMS → TRS, Base Header ID = the NMS's NodeID; MUST carry a
/// Relay extension with both relay tokens) and Relay Response (TRS → NMS, same body,
/// Flag = result; SHOULD echo the Relay extension).
///
/// Body: `0: Path ID(128) · 16: Initiator NodeID(128) · 32: Responder NodeID(128) ·
/// 48: Lifetime seconds(32) · 52: Padding(32) = 0` (56 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RelayBinding {
    /// PathID of the relayed pair.
    pub path_id: PathId,
    /// NodeID of the Initiator.
    pub initiator: NodeId,
    /// NodeID of the Responder.
    pub responder: NodeId,
    /// How long the TRS keeps the binding, in seconds.
    pub lifetime_secs: u32,
}

impl RelayBinding {
    pub(crate) fn encode(&self, w: &mut impl BufMut) -> Result<(), EncodeError> {
        w.put_slice(self.path_id.as_bytes());
        w.put_slice(self.initiator.as_bytes());
        w.put_slice(self.responder.as_bytes());
        w.put_u32(self.lifetime_secs);
        w.put_u32(0);
        Ok(())
    }

    pub(crate) fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let b = RelayBinding {
            path_id: PathId(r.array()?),
            initiator: NodeId(r.array()?),
            responder: NodeId(r.array()?),
            lifetime_secs: r.u32()?,
        };
        r.zeros(4, "Relay Padding")?;
        Ok(b)
    }
}
