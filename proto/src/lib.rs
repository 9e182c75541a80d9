//! CYPHONIC-over-QUIC protocol messages and shared QUIC helpers.
//!
//! Everything here is pure except [`framing`]'s async stream helpers: no sockets, no
//! tasks. See `SPEC.md` §2 (identifiers), §4 (framing), §5 (message bodies) and §7
//! (relay by Connection ID); `docs/wire-format.md` lists every byte layout and the
//! encoding decisions this crate makes where the SPEC leaves room.
//!
//! - [`Message`] = Base Header fields + [`Extension`] headers + typed [`Body`] (one
//!   variant per message type); [`Message::encode`] / [`Message::decode`], bundles with
//!   [`encode_bundle`] / [`decode_bundle`].
//! - [`Header`]: the raw 32-byte Base Header, readable even when the rest is malformed
//!   so the receiver can answer with [`Message::error_reply`].
//! - Capsule Message fast path: [`encode_capsule_into`], [`encode_capsule_to_slice`],
//!   [`CapsuleRef::decode`] (no allocation).
//! - [`framing`]: one message / bundle per QUIC stream read and write.
//! - [`quic`]: 16-byte Connection IDs prefixed with the relay token, and the
//!   Destination CID parser a TRS routes by.

#![warn(missing_docs)]

pub mod body;
mod codec;
pub mod error;
pub mod ext;
pub mod fastdata;
pub mod flag;
pub mod framing;
pub mod header;
pub mod ids;
pub mod message;
pub mod msg_type;
pub mod quic;

pub use body::{
    encode_capsule_into, encode_capsule_to_slice, AuthType, Body, Capsule, CapsuleRef, Date,
    DirectionRequest, DirectionTarget, EnrollRequest, EnrollResponse, GeneralNode, LocationUpdate,
    LoginRequest, LoginResponse, MacAddr, NodeInformation, NotificationType, PathEnd, ProcessCode,
    RegistrationRequest, RegistrationResponse, RelayBinding, RouteDirection, CAPSULE_OVERHEAD,
    MAX_CAPSULE_PAYLOAD,
};
pub use error::{DecodeError, EncodeError};
pub use ext::{Extension, RelayTokens};
pub use flag::Flag;
pub use framing::{read_bundle, read_message, write_bundle, write_message, FrameError};
pub use header::{Header, HEADER_LEN, VERSION};
pub use ids::{ApplicationId, Fqdn, FqdnError, NodeId, PathId, RelayToken, TransactionId};
pub use message::{decode_bundle, encode_bundle, Message, MAX_BUNDLE, MAX_MESSAGE_LEN};
pub use msg_type::{IdKind, MessageType};
