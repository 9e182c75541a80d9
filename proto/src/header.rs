//! The 32-byte Base Header (SPEC §4).
//!
//! ```text
//!  0               4       5     6     7      8                12             14        15        16          32
//!  | Transaction ID | Version | Flag | Type | Count | Sequence Number | Message Length | Next Opt | Reserved | ID (128) |
//! ```

use crate::error::DecodeError;
use crate::flag::Flag;
use crate::ids::{NodeId, PathId, TransactionId};
use crate::msg_type::MessageType;

/// Size of the Base Header.
pub const HEADER_LEN: usize = 32;
/// The protocol version this crate speaks (SPEC §4).
pub const VERSION: u8 = 2;

/// A Base Header as it is on the wire: every field decoded, nothing interpreted.
///
/// [`Header::decode`] only needs 32 bytes, so a receiver can parse the header of a
/// message whose body is malformed and still answer it (echoing the Transaction ID and
/// ID) with [`crate::Message::error_reply`]. [`Header::validate`] performs the checks
/// every message must pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Header {
    /// Identifies the signaling transaction; a response echoes it.
    pub transaction_id: TransactionId,
    /// Protocol version; must be [`VERSION`].
    pub version: u8,
    /// Raw Flag code (see [`Flag`]).
    pub flag: u8,
    /// Raw Type code (see [`MessageType`]).
    pub msg_type: u8,
    /// Number of further messages bundled after this one in the same unit.
    pub count: u8,
    /// Per connection and direction message counter, starting at 0.
    pub sequence: u32,
    /// Base Header + extension headers + body, in bytes.
    pub length: u16,
    /// Type of the first extension header, 0 = none.
    pub next_opt: u8,
    /// Reserved; must be 0.
    pub reserved: u8,
    /// NodeID or PathID depending on the message type (see
    /// [`MessageType::id_kind`](crate::MessageType::id_kind)).
    pub id: [u8; 16],
}

impl Header {
    /// A header of all zeros: what [`crate::Message::error_reply`] echoes when even the
    /// Base Header could not be read.
    pub const ZERO: Header = Header {
        transaction_id: TransactionId(0),
        version: 0,
        flag: 0,
        msg_type: 0,
        count: 0,
        sequence: 0,
        length: 0,
        next_opt: 0,
        reserved: 0,
        id: [0; 16],
    };

    /// Read the first 32 bytes of `bytes` (anything after them is ignored). Fails only
    /// with [`DecodeError::TooShort`].
    pub fn decode(bytes: &[u8]) -> Result<Header, DecodeError> {
        let h: &[u8; HEADER_LEN] = bytes
            .get(..HEADER_LEN)
            .and_then(|s| s.try_into().ok())
            .ok_or(DecodeError::TooShort {
                what: "Base Header",
                need: HEADER_LEN,
                got: bytes.len(),
            })?;
        Ok(Header::from_array(h))
    }

    /// Decode a complete 32-byte header.
    pub fn from_array(h: &[u8; HEADER_LEN]) -> Header {
        let [t0, t1, t2, t3, version, flag, msg_type, count, s0, s1, s2, s3, l0, l1, next_opt, reserved, id @ ..] =
            *h;
        Header {
            transaction_id: TransactionId(u32::from_be_bytes([t0, t1, t2, t3])),
            version,
            flag,
            msg_type,
            count,
            sequence: u32::from_be_bytes([s0, s1, s2, s3]),
            length: u16::from_be_bytes([l0, l1]),
            next_opt,
            reserved,
            id,
        }
    }

    /// Best-effort header of a possibly truncated input: the bytes present are used,
    /// the missing ones are zero. For echoing the Transaction ID in an error reply when
    /// [`Header::decode`] failed.
    pub fn salvage(bytes: &[u8]) -> Header {
        let mut h = [0u8; HEADER_LEN];
        let n = bytes.len().min(HEADER_LEN);
        if let (Some(dst), Some(src)) = (h.get_mut(..n), bytes.get(..n)) {
            dst.copy_from_slice(src);
        }
        Header::from_array(&h)
    }

    /// The 32 wire bytes.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        let t = self.transaction_id.0.to_be_bytes();
        let s = self.sequence.to_be_bytes();
        let l = self.length.to_be_bytes();
        let fixed = [
            t[0],
            t[1],
            t[2],
            t[3],
            self.version,
            self.flag,
            self.msg_type,
            self.count,
            s[0],
            s[1],
            s[2],
            s[3],
            l[0],
            l[1],
            self.next_opt,
            self.reserved,
        ];
        let (a, b) = h.split_at_mut(16);
        a.copy_from_slice(&fixed);
        b.copy_from_slice(&self.id);
        h
    }

    /// The checks every message passes, in this order: Version is 2, Type is defined and
    /// supported in v2, Flag is defined, Message Length covers at least the header,
    /// Reserved is zero. Returns the typed Type and Flag.
    pub fn validate(&self) -> Result<(MessageType, Flag), DecodeError> {
        if self.version != VERSION {
            return Err(DecodeError::BadVersion(self.version));
        }
        let ty = MessageType::try_from(self.msg_type)?;
        if !ty.is_supported() {
            return Err(DecodeError::UnsupportedType(ty));
        }
        let flag = Flag::try_from(self.flag)?;
        if usize::from(self.length) < HEADER_LEN {
            return Err(DecodeError::BadMessageLength {
                declared: self.length,
            });
        }
        if self.reserved != 0 {
            return Err(DecodeError::NonZeroReserved {
                field: "Base Header Reserved",
            });
        }
        Ok((ty, flag))
    }

    /// The typed Flag.
    pub fn flag(&self) -> Result<Flag, DecodeError> {
        Flag::try_from(self.flag)
    }

    /// The typed Type (known codes, supported or not).
    pub fn message_type(&self) -> Result<MessageType, DecodeError> {
        MessageType::try_from(self.msg_type)
    }

    /// The ID read as a NodeID.
    pub fn node_id(&self) -> NodeId {
        NodeId(self.id)
    }

    /// The ID read as a PathID.
    pub fn path_id(&self) -> PathId {
        PathId(self.id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_decode_and_salvage() {
        let h = Header {
            transaction_id: TransactionId(0xdead_beef),
            version: 2,
            flag: 36,
            msg_type: 3,
            count: 1,
            sequence: 7,
            length: 40,
            next_opt: 2,
            reserved: 0,
            id: [9; 16],
        };
        let b = h.encode();
        assert_eq!(Header::decode(&b).unwrap(), h);
        assert_eq!(Header::salvage(&b), h);
        let s = Header::salvage(&b[..6]);
        assert_eq!(s.transaction_id, TransactionId(0xdead_beef));
        assert_eq!(s.version, 2);
        assert_eq!(s.flag, 36);
        assert_eq!(s.msg_type, 0);
        assert_eq!(Header::salvage(&[]), Header::ZERO);
        assert_eq!(
            Header::decode(&b[..31]),
            Err(DecodeError::TooShort {
                what: "Base Header",
                need: 32,
                got: 31
            })
        );
    }
}
