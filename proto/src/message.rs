//! A whole CYPHONIC message (Base Header + extension headers + body) and bundles of
//! them (SPEC §4).

use std::net::SocketAddr;

use bytes::{BufMut, BytesMut};

use crate::body::Body;
use crate::error::{DecodeError, EncodeError};
use crate::ext::{self, Extension, RelayTokens};
use crate::flag::Flag;
use crate::header::{Header, HEADER_LEN, VERSION};
use crate::ids::{NodeId, PathId, TransactionId};
use crate::msg_type::MessageType;
use crate::ProcessCode;

/// Largest message: the Message Length field is 16 bits.
pub const MAX_MESSAGE_LEN: usize = u16::MAX as usize;
/// Most messages in one bundle (the first message's Count is at most `MAX_BUNDLE - 1`).
pub const MAX_BUNDLE: usize = 16;

/// One CYPHONIC message: the Base Header fields a sender chooses, the extension headers
/// in wire order, and the typed body (which determines the Type).
///
/// Message Length, Next Opt, Version and Count are computed when encoding. Build one
/// with [`Message::new`] / [`Message::request`] / [`Message::response_to`] and the
/// `with_*` methods; match on [`Message::body`] when receiving.
///
/// ```
/// use cyphonic_proto::{Body, Flag, Message, NodeId};
/// let ka = Message::request(Body::KeepAlive).with_node_id(NodeId::random());
/// let bytes = ka.encode().unwrap();
/// let back = Message::decode(&bytes).unwrap();
/// assert_eq!(back, ka);
/// let ack = Message::response_to(&back, Flag::Ok, Body::KeepAliveAck);
/// assert_eq!(ack.transaction_id, ka.transaction_id);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Message {
    /// Identifies the signaling transaction; a response echoes the request's.
    pub transaction_id: TransactionId,
    /// Result or state (SPEC §4 Flag codes).
    pub flag: Flag,
    /// Per connection and direction counter, starting at 0 (the sender's job).
    pub sequence: u32,
    /// NodeID or PathID depending on the type ([`MessageType::id_kind`]); see
    /// [`Message::node_id`] / [`Message::path_id`].
    pub id: [u8; 16],
    /// Extension headers in wire order.
    pub extensions: Vec<Extension>,
    /// The typed body; determines the Base Header Type.
    pub body: Body,
}

impl Message {
    /// A message with Transaction ID 0, Flag OK, sequence 0, zero ID, no extensions.
    pub fn new(body: impl Into<Body>) -> Message {
        Message {
            transaction_id: TransactionId(0),
            flag: Flag::Ok,
            sequence: 0,
            id: [0; 16],
            extensions: Vec::new(),
            body: body.into(),
        }
    }

    /// A new request: like [`Message::new`] with a random Transaction ID.
    pub fn request(body: impl Into<Body>) -> Message {
        Message::new(body).with_transaction_id(TransactionId::random())
    }

    /// A response to `request`: echoes its Transaction ID and ID.
    pub fn response_to(request: &Message, flag: Flag, body: impl Into<Body>) -> Message {
        Message::new(body)
            .with_transaction_id(request.transaction_id)
            .with_id(request.id)
            .with_flag(flag)
    }

    /// The answer to a request that failed: an ACK carrying `flag` (usually
    /// [`Flag::Malformed`] or the failure's code), echoing the Transaction ID and ID of
    /// `request`. Needs only the Base Header ([`Header::decode`]); when even that could
    /// not be read, pass [`Header::salvage`] of the input or [`Header::ZERO`].
    ///
    /// Every receiver waiting for a response MUST accept such an ACK in place of the
    /// response type it expected.
    pub fn error_reply(request: &Header, flag: Flag) -> Message {
        Message::new(Body::Ack)
            .with_transaction_id(request.transaction_id)
            .with_id(request.id)
            .with_flag(flag)
    }

    /// Set the Transaction ID.
    pub fn with_transaction_id(mut self, id: TransactionId) -> Message {
        self.transaction_id = id;
        self
    }

    /// Set the Flag.
    pub fn with_flag(mut self, flag: Flag) -> Message {
        self.flag = flag;
        self
    }

    /// Set the Sequence Number.
    pub fn with_sequence(mut self, sequence: u32) -> Message {
        self.sequence = sequence;
        self
    }

    /// Set the raw Base Header ID.
    pub fn with_id(mut self, id: [u8; 16]) -> Message {
        self.id = id;
        self
    }

    /// Set the Base Header ID to a NodeID.
    pub fn with_node_id(self, id: NodeId) -> Message {
        self.with_id(id.0)
    }

    /// Set the Base Header ID to a PathID.
    pub fn with_path_id(self, id: PathId) -> Message {
        self.with_id(id.0)
    }

    /// Append an extension header.
    pub fn with_extension(mut self, e: Extension) -> Message {
        self.extensions.push(e);
        self
    }

    /// The Base Header Type (from the body).
    pub fn message_type(&self) -> MessageType {
        self.body.message_type()
    }

    /// The ID read as a NodeID.
    pub fn node_id(&self) -> NodeId {
        NodeId(self.id)
    }

    /// The ID read as a PathID.
    pub fn path_id(&self) -> PathId {
        PathId(self.id)
    }

    /// The Relay extension, if attached.
    pub fn relay(&self) -> Option<&RelayTokens> {
        self.extensions.iter().find_map(|e| match e {
            Extension::Relay(t) => Some(t),
            _ => None,
        })
    }

    /// The Candidates extension's entries (empty when not attached).
    pub fn candidates(&self) -> &[SocketAddr] {
        self.extensions
            .iter()
            .find_map(|e| match e {
                Extension::Candidates(c) => Some(c.as_slice()),
                _ => None,
            })
            .unwrap_or(&[])
    }

    /// The Observed Address extension, if attached.
    pub fn observed_address(&self) -> Option<SocketAddr> {
        self.extensions.iter().find_map(|e| match e {
            Extension::ObservedAddress(a) => Some(*a),
            _ => None,
        })
    }

    /// The Fast Data extension's Destination CID (version 1), if attached.
    pub fn fast_data(&self) -> Option<[u8; 16]> {
        self.extensions.iter().find_map(|e| match e {
            Extension::FastData(d) => Some(*d),
            _ => None,
        })
    }

    /// The extension header a message of this type and body must carry, if any:
    /// Relay on Registration Request, Relay Request, and Route Direction to Responder /
    /// to Initiator with Process Code 3.
    fn required_extension(&self) -> Option<&'static str> {
        let needs_relay = match &self.body {
            Body::RegistrationRequest(_) | Body::RelayRequest(_) => true,
            Body::RouteDirectionToResponder(r) | Body::RouteDirectionToInitiator(r) => {
                r.process_code == ProcessCode::ViaTrs
            }
            _ => false,
        };
        (needs_relay && self.relay().is_none()).then_some("Relay")
    }

    /// Encoded size in bytes, or an error if the message cannot be encoded.
    pub fn encoded_len(&self) -> Result<usize, EncodeError> {
        Ok(self.encode()?.len())
    }

    /// Encode as a single message (Count 0).
    pub fn encode(&self) -> Result<Vec<u8>, EncodeError> {
        let mut out = Vec::new();
        self.encode_into(&mut out)?;
        Ok(out)
    }

    /// Append the encoding (Count 0) to `out`. On error `out` is left unchanged.
    pub fn encode_into(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        self.encode_with_count(0, out)
    }

    /// Append the encoding (Count 0) to `out`. On error `out` is left unchanged.
    pub fn encode_into_bytes(&self, out: &mut BytesMut) -> Result<(), EncodeError> {
        self.encode_with_count(0, out)
    }

    fn encode_with_count(&self, count: u8, out: &mut impl Sink) -> Result<(), EncodeError> {
        let start = out.position();
        let r = self.encode_parts(count, out);
        if r.is_err() {
            out.cut(start);
        }
        r
    }

    /// Header, extensions, body; the header's length is patched in at the end.
    fn encode_parts(&self, count: u8, w: &mut impl Sink) -> Result<(), EncodeError> {
        if let Some(ext) = self.required_extension() {
            return Err(EncodeError::MissingExtension {
                ext,
                msg: self.message_type(),
            });
        }
        let start = w.position();
        let mut header = Header {
            transaction_id: self.transaction_id,
            version: VERSION,
            flag: self.flag.code(),
            msg_type: self.message_type().code(),
            count,
            sequence: self.sequence,
            length: 0,
            next_opt: self.extensions.first().map_or(0, Extension::ty),
            reserved: 0,
            id: self.id,
        };
        w.put_slice(&header.encode());
        ext::encode_chain(&self.extensions, w)?;
        self.body.encode(w)?;
        let len = w.position() - start;
        header.length = u16::try_from(len).map_err(|_| EncodeError::MessageTooLong { len })?;
        w.patch(start, &header.encode());
        Ok(())
    }

    /// Decode exactly one message (Count 0) filling all of `bytes`. Strict and total:
    /// every input yields a message or a [`DecodeError`]; nothing panics, and nothing is
    /// allocated from a length field before the input is known to hold that many bytes.
    pub fn decode(bytes: &[u8]) -> Result<Message, DecodeError> {
        let h = Header::decode(bytes)?;
        h.validate()?;
        if usize::from(h.length) != bytes.len() {
            return Err(DecodeError::LengthMismatch {
                declared: h.length,
                actual: bytes.len(),
            });
        }
        if h.count != 0 {
            return Err(DecodeError::UnexpectedBundle { count: h.count });
        }
        Ok(Message::decode_prefix(bytes)?.0)
    }

    /// Decode the message at the front of `bytes` (its Message Length may be shorter
    /// than `bytes`); returns it with its Base Header (for Count) and its length.
    pub fn decode_prefix(bytes: &[u8]) -> Result<(Message, Header, usize), DecodeError> {
        let h = Header::decode(bytes)?;
        let (ty, flag) = h.validate()?;
        let len = usize::from(h.length);
        let msg = bytes.get(..len).ok_or(DecodeError::TooShort {
            what: "message",
            need: len,
            got: bytes.len(),
        })?;
        let after = msg.get(HEADER_LEN..).unwrap_or(&[]);
        let (extensions, ext_len) = ext::decode_chain(h.next_opt, after)?;
        let body = Body::decode(ty, after.get(ext_len..).unwrap_or(&[]))?;
        let m = Message {
            transaction_id: h.transaction_id,
            flag,
            sequence: h.sequence,
            id: h.id,
            extensions,
            body,
        };
        if let Some(ext) = m.required_extension() {
            return Err(DecodeError::MissingExtension { ext, msg: ty });
        }
        Ok((m, h, len))
    }
}

/// Encode `messages` as one bundle: each message's Count is the number of messages
/// after it (n−1, n−2, …, 0).
pub fn encode_bundle(messages: &[Message]) -> Result<Vec<u8>, EncodeError> {
    let n = messages.len();
    if n == 0 || n > MAX_BUNDLE {
        return Err(EncodeError::BadBundleSize {
            count: n,
            max: MAX_BUNDLE,
        });
    }
    let mut out = Vec::new();
    for (i, m) in messages.iter().enumerate() {
        // n ≤ MAX_BUNDLE = 16, so the Count fits.
        m.encode_with_count((n - 1 - i) as u8, &mut out)?;
    }
    Ok(out)
}

/// Decode a bundle filling all of `bytes`: the first message's Count says how many
/// follow (at most [`MAX_BUNDLE`] − 1), and each following message's Count must be one
/// less than the previous one's. A single message (Count 0) is a bundle of one.
pub fn decode_bundle(bytes: &[u8]) -> Result<Vec<Message>, DecodeError> {
    let first = Header::decode(bytes)?;
    first.validate()?;
    let total = usize::from(first.count) + 1;
    if total > MAX_BUNDLE {
        return Err(DecodeError::BundleTooLarge {
            count: total,
            max: MAX_BUNDLE,
        });
    }
    let mut out = Vec::with_capacity(total);
    let mut rest = bytes;
    let mut expected = first.count;
    loop {
        let (m, h, len) = Message::decode_prefix(rest)?;
        if h.count != expected {
            return Err(DecodeError::BundleCountMismatch {
                expected,
                got: h.count,
            });
        }
        out.push(m);
        rest = rest.get(len..).unwrap_or(&[]);
        if expected == 0 {
            break;
        }
        expected -= 1;
    }
    if !rest.is_empty() {
        return Err(DecodeError::TrailingBytes {
            what: "bundle",
            extra: rest.len(),
        });
    }
    Ok(out)
}

/// A growable buffer whose earlier bytes can be overwritten (to fill in Message
/// Length) and cut back (on error).
trait Sink: BufMut {
    fn position(&self) -> usize;
    fn patch(&mut self, at: usize, bytes: &[u8]);
    fn cut(&mut self, at: usize);
}

impl Sink for Vec<u8> {
    fn position(&self) -> usize {
        self.len()
    }
    fn patch(&mut self, at: usize, bytes: &[u8]) {
        if let Some(dst) = self.get_mut(at..at + bytes.len()) {
            dst.copy_from_slice(bytes);
        }
    }
    fn cut(&mut self, at: usize) {
        self.truncate(at);
    }
}

impl Sink for BytesMut {
    fn position(&self) -> usize {
        self.len()
    }
    fn patch(&mut self, at: usize, bytes: &[u8]) {
        if let Some(dst) = self.get_mut(at..at + bytes.len()) {
            dst.copy_from_slice(bytes);
        }
    }
    fn cut(&mut self, at: usize) {
        self.truncate(at);
    }
}
