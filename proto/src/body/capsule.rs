//! Capsule Message (24): one virtual IPv4/IPv6 packet in one QUIC DATAGRAM (SPEC §5).
//!
//! This is the data-plane hot path, so besides the owned [`Capsule`] body used by
//! [`crate::Message`] there is an allocation-free pair: [`encode_capsule_into`] /
//! [`encode_capsule_to_slice`] and the borrowed [`CapsuleRef::decode`]. Both accept and
//! produce exactly the same bytes as the [`crate::Message`] path.

use bytes::BufMut;

use crate::codec::Reader;
use crate::error::{DecodeError, EncodeError};
use crate::ext;
use crate::flag::Flag;
use crate::header::{Header, HEADER_LEN, VERSION};
use crate::ids::{PathId, TransactionId};
use crate::msg_type::MessageType;

/// Bytes a Capsule Message adds in front of the packet: Base Header + Payload Length +
/// Padding.
pub const CAPSULE_OVERHEAD: usize = HEADER_LEN + 4;
/// Largest payload a Capsule Message can carry (the 16-bit Message Length minus the
/// overhead). The QUIC path's datagram size is usually the tighter limit.
pub const MAX_CAPSULE_PAYLOAD: usize = u16::MAX as usize - CAPSULE_OVERHEAD;

/// Capsule Message body (owned form).
///
/// Body: `0: Payload Length(16) · 2: Padding(16) = 0 · 4: Payload`. The Base Header ID
/// is the PathID; Transaction ID and Flag are 0 when sent by [`encode_capsule_into`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Capsule {
    /// One virtual IPv4 or IPv6 packet.
    pub payload: Vec<u8>,
}

impl Capsule {
    pub(crate) fn encode(&self, w: &mut impl BufMut) -> Result<(), EncodeError> {
        let len = payload_len(self.payload.len())?;
        w.put_u16(len);
        w.put_u16(0);
        w.put_slice(&self.payload);
        Ok(())
    }

    pub(crate) fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let len = r.u16()?;
        r.zeros(2, "Capsule Padding")?;
        Ok(Capsule {
            payload: r.vec(len.into())?,
        })
    }
}

fn payload_len(len: usize) -> Result<u16, EncodeError> {
    if len > MAX_CAPSULE_PAYLOAD {
        return Err(EncodeError::FieldTooLong {
            field: "Capsule payload",
            len,
            max: MAX_CAPSULE_PAYLOAD,
        });
    }
    // ≤ MAX_CAPSULE_PAYLOAD < u16::MAX.
    Ok(len as u16)
}

fn capsule_header(path_id: &PathId, sequence: u32, payload: u16) -> [u8; HEADER_LEN] {
    Header {
        transaction_id: TransactionId(0),
        version: VERSION,
        flag: Flag::Ok.code(),
        msg_type: MessageType::Capsule.code(),
        count: 0,
        sequence,
        length: payload + CAPSULE_OVERHEAD as u16,
        next_opt: 0,
        reserved: 0,
        id: path_id.0,
    }
    .encode()
}

/// Append a Capsule Message carrying `payload` on path `path_id` to `out`. Allocates
/// only if `out` lacks capacity (reserve [`CAPSULE_OVERHEAD`] + payload up front, or
/// reuse a buffer).
pub fn encode_capsule_into(
    out: &mut impl BufMut,
    path_id: &PathId,
    sequence: u32,
    payload: &[u8],
) -> Result<(), EncodeError> {
    let len = payload_len(payload.len())?;
    out.put_slice(&capsule_header(path_id, sequence, len));
    out.put_u16(len);
    out.put_u16(0);
    out.put_slice(payload);
    Ok(())
}

/// Write a Capsule Message into the front of `out`; returns the number of bytes
/// written ([`CAPSULE_OVERHEAD`] + payload). Never allocates.
pub fn encode_capsule_to_slice(
    out: &mut [u8],
    path_id: &PathId,
    sequence: u32,
    payload: &[u8],
) -> Result<usize, EncodeError> {
    let len = payload_len(payload.len())?;
    let total = CAPSULE_OVERHEAD + payload.len();
    let got = out.len();
    let dst = out
        .get_mut(..total)
        .ok_or(EncodeError::BufferTooSmall { need: total, got })?;
    let (hdr, rest) = dst.split_at_mut(HEADER_LEN);
    hdr.copy_from_slice(&capsule_header(path_id, sequence, len));
    let (lens, body) = rest.split_at_mut(4);
    let l = len.to_be_bytes();
    lens.copy_from_slice(&[l[0], l[1], 0, 0]);
    body.copy_from_slice(payload);
    Ok(total)
}

/// A decoded Capsule Message borrowing its payload from the datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CapsuleRef<'a> {
    /// PathID from the Base Header ID.
    pub path_id: PathId,
    /// Sequence Number from the Base Header.
    pub sequence: u32,
    /// Transaction ID from the Base Header (0 from this crate's encoder).
    pub transaction_id: TransactionId,
    /// Flag from the Base Header (0 from this crate's encoder).
    pub flag: Flag,
    /// The virtual IP packet.
    pub payload: &'a [u8],
}

impl<'a> CapsuleRef<'a> {
    /// Decode one Capsule Message filling the whole `datagram`, with the same checks as
    /// [`crate::Message::decode`] (so exactly the same inputs are accepted). Allocates
    /// nothing unless the message carries extension headers (which a sender has no
    /// reason to attach; they are validated and ignored).
    pub fn decode(datagram: &'a [u8]) -> Result<CapsuleRef<'a>, DecodeError> {
        let h = Header::decode(datagram)?;
        let (ty, flag) = h.validate()?;
        if ty != MessageType::Capsule {
            return Err(DecodeError::UnexpectedType {
                expected: MessageType::Capsule,
                got: ty,
            });
        }
        if usize::from(h.length) != datagram.len() {
            return Err(DecodeError::LengthMismatch {
                declared: h.length,
                actual: datagram.len(),
            });
        }
        if h.count != 0 {
            return Err(DecodeError::UnexpectedBundle { count: h.count });
        }
        let after = datagram.get(HEADER_LEN..).unwrap_or(&[]);
        let ext_len = if h.next_opt == 0 {
            0
        } else {
            ext::decode_chain(h.next_opt, after)?.1
        };
        let mut r = Reader::new(after.get(ext_len..).unwrap_or(&[]), "Capsule body");
        let len = r.u16()?;
        r.zeros(2, "Capsule Padding")?;
        let payload = r.take(len.into())?;
        r.finish()?;
        Ok(CapsuleRef {
            path_id: PathId(h.id),
            sequence: h.sequence,
            transaction_id: h.transaction_id,
            flag,
            payload,
        })
    }
}
