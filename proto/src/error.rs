//! Typed errors of the message codec.
//!
//! Decoding is strict and total: every byte string either decodes to a message or yields
//! one of the [`DecodeError`] variants below, which names what is wrong. A receiver that
//! owes a response answers any of them with [`Flag::Malformed`] (SPEC §4); see
//! [`crate::Message::error_reply`].

use crate::flag::Flag;
use crate::ids::FqdnError;
use crate::msg_type::MessageType;

/// Why a byte string is not a valid CYPHONIC message (or bundle, or Capsule).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The input ends before `what` does: `need` bytes were required, `got` were there.
    #[error("{what} is truncated: need {need} bytes, got {got}")]
    TooShort {
        /// The region being read ("Base Header", "message body", …).
        what: &'static str,
        /// Bytes required.
        need: usize,
        /// Bytes available.
        got: usize,
    },
    /// The Base Header's Message Length is smaller than the Base Header itself.
    #[error("Message Length {declared} is smaller than the 32-byte Base Header")]
    BadMessageLength {
        /// The Message Length field.
        declared: u16,
    },
    /// The Base Header's Message Length does not match the size of the input holding
    /// exactly one message.
    #[error("Message Length says {declared} bytes but the input has {actual}")]
    LengthMismatch {
        /// The Message Length field.
        declared: u16,
        /// Bytes actually present.
        actual: usize,
    },
    /// The Message Length exceeds the receiver's limit.
    #[error("Message Length {declared} exceeds the limit of {max} bytes")]
    MessageTooLarge {
        /// The Message Length field.
        declared: u16,
        /// The limit.
        max: usize,
    },
    /// Version is not 2.
    #[error("unsupported CYPHONIC version {0} (this implementation speaks version 2)")]
    BadVersion(u8),
    /// The Type code is not in SPEC §4's table.
    #[error("unknown message type {0}")]
    UnknownType(u8),
    /// The Type code is in the table but unused or reserved in v2.
    #[error("message type {0:?} is not supported in v2")]
    UnsupportedType(MessageType),
    /// A message of another type was found where `expected` was required.
    #[error("expected a {expected:?} message, got {got:?}")]
    UnexpectedType {
        /// The type required here.
        expected: MessageType,
        /// The type found.
        got: MessageType,
    },
    /// The Flag code is not in SPEC §4's table.
    #[error("unknown flag {0}")]
    UnknownFlag(u8),
    /// An enumerated field holds a value outside its defined set.
    #[error("field {field} has undefined value {value}")]
    BadEnum {
        /// Name of the field (as in SPEC §5).
        field: &'static str,
        /// The value found.
        value: u32,
    },
    /// A field that must be zero (Reserved, Padding, unused bits) is not.
    #[error("reserved/padding field {field} is not zero")]
    NonZeroReserved {
        /// Name of the field (as in SPEC §5).
        field: &'static str,
    },
    /// A v1 key-exchange field that v2 fixes to one value holds another.
    #[error("obsolete v1 field {field} is {value}; v2 requires {expected}")]
    ObsoleteField {
        /// Name of the field (as in SPEC §5).
        field: &'static str,
        /// The value found.
        value: u32,
        /// The only value v2 allows.
        expected: u32,
    },
    /// A text field is not UTF-8.
    #[error("field {field} is not valid UTF-8")]
    BadUtf8 {
        /// Name of the field (as in SPEC §5).
        field: &'static str,
    },
    /// An FQDN field is not a valid FQDN.
    #[error("field {field} is not a valid FQDN: {error}")]
    BadFqdn {
        /// Name of the field (as in SPEC §5).
        field: &'static str,
        /// Why the name is invalid.
        error: FqdnError,
    },
    /// A name or address is valid but not written in its canonical form (FQDNs:
    /// lower-case, no trailing dot; addresses: as Rust's `Display` prints them).
    #[error("field {field} is not in canonical form")]
    NonCanonical {
        /// Name of the field (as in SPEC §5).
        field: &'static str,
    },
    /// A Year/Month/Day field is neither all zero nor a calendar date.
    #[error("{year:04}-{month:02}-{day:02} is not a date")]
    BadDate {
        /// Year field.
        year: u16,
        /// Month field.
        month: u8,
        /// Day field.
        day: u8,
    },
    /// A fixed-size part ends before its enclosing length does.
    #[error("{extra} unexpected bytes after {what}")]
    TrailingBytes {
        /// The region being read ("Base Header", "message body", …).
        what: &'static str,
        /// Number of unexpected bytes.
        extra: usize,
    },
    /// An extension header runs past the end of the message.
    #[error("extension header type {ty} needs {need} bytes but only {got} remain")]
    ExtensionOverrun {
        /// Extension header type code.
        ty: u8,
        /// Bytes required.
        need: usize,
        /// Bytes available.
        got: usize,
    },
    /// More chained extension headers than [`crate::ext::MAX_EXTENSIONS`].
    #[error("more than {max} extension headers")]
    TooManyExtensions {
        /// The limit.
        max: usize,
    },
    /// A defined extension type appears twice in one message.
    #[error("extension header type {ty} appears twice")]
    DuplicateExtension {
        /// Extension header type code.
        ty: u8,
    },
    /// A defined extension header's content is malformed.
    #[error("extension header type {ty} is malformed: {reason}")]
    BadExtension {
        /// Extension header type code.
        ty: u8,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A message lacks an extension header it must carry (e.g. Relay on a Registration
    /// Request).
    #[error("{msg:?} must carry a {ext} extension header")]
    MissingExtension {
        /// Name of the missing extension header.
        ext: &'static str,
        /// The message type that requires it.
        msg: MessageType,
    },
    /// A list has more entries than allowed (or than the input can hold).
    #[error("{what}: {count} entries, at most {max} allowed")]
    TooManyEntries {
        /// The region being read ("Base Header", "message body", …).
        what: &'static str,
        /// Number of entries / messages.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// A single message was expected but its Count says more follow in a bundle.
    #[error("Count is {count}: a bundle where a single message was expected")]
    UnexpectedBundle {
        /// The Count field.
        count: u8,
    },
    /// In a bundle, a message's Count is not one less than the previous message's.
    #[error("bundle message has Count {got}, expected {expected}")]
    BundleCountMismatch {
        /// The Count this position requires.
        expected: u8,
        /// The Count found.
        got: u8,
    },
    /// A bundle announces more messages than the receiver accepts.
    #[error("bundle of {count} messages exceeds the limit of {max}")]
    BundleTooLarge {
        /// Number of entries / messages.
        count: usize,
        /// The limit.
        max: usize,
    },
}

impl DecodeError {
    /// The Flag a receiver puts in its error response (SPEC §4: anything malformed is
    /// answered with a Flag error). Every decode failure is [`Flag::Malformed`] (36).
    pub fn reply_flag(&self) -> Flag {
        Flag::Malformed
    }
}

/// Why a message cannot be put on the wire.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// A variable-length field is longer than its length field (or the message) allows.
    #[error("field {field} is {len} bytes; at most {max} fit")]
    FieldTooLong {
        /// Name of the field (as in SPEC §5).
        field: &'static str,
        /// Length in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The whole message would exceed the 16-bit Message Length.
    #[error("message would be {len} bytes; Message Length allows at most 65535")]
    MessageTooLong {
        /// Length in bytes.
        len: usize,
    },
    /// The message type requires an extension header that is not attached.
    #[error("{msg:?} must carry a {ext} extension header")]
    MissingExtension {
        /// Name of the missing extension header.
        ext: &'static str,
        /// The message type that requires it.
        msg: MessageType,
    },
    /// Two extension headers of the same defined type.
    #[error("extension header type {ty} attached twice")]
    DuplicateExtension {
        /// Extension header type code.
        ty: u8,
    },
    /// An extension header cannot be encoded (e.g. an `Unknown` one using a defined type
    /// code, or data whose length is not 6 + a multiple of 8).
    #[error("extension header type {ty} cannot be encoded: {reason}")]
    BadExtension {
        /// Extension header type code.
        ty: u8,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// More than [`crate::ext::MAX_EXTENSIONS`] extension headers.
    #[error("more than {max} extension headers")]
    TooManyExtensions {
        /// The limit.
        max: usize,
    },
    /// A list has more entries than the encoding allows.
    #[error("{what}: {count} entries, at most {max} allowed")]
    TooManyEntries {
        /// The region being read ("Base Header", "message body", …).
        what: &'static str,
        /// Number of entries / messages.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// A date field is not a calendar date.
    #[error("{year:04}-{month:02}-{day:02} is not a date")]
    BadDate {
        /// Year field.
        year: u16,
        /// Month field.
        month: u8,
        /// Day field.
        day: u8,
    },
    /// A Direction Request target FQDN that reads as an IP address would decode as a
    /// virtual-address target instead.
    #[error("target FQDN {0} looks like an IP address")]
    AmbiguousTarget(String),
    /// A bundle is empty or larger than [`crate::message::MAX_BUNDLE`].
    #[error("a bundle holds 1 to {max} messages, not {count}")]
    BadBundleSize {
        /// Number of entries / messages.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// The output buffer cannot hold the message.
    #[error("buffer of {got} bytes cannot hold {need}")]
    BufferTooSmall {
        /// Bytes required.
        need: usize,
        /// Bytes available.
        got: usize,
    },
}
