//! Messages on QUIC streams (SPEC §4: one signaling transaction per bidirectional
//! stream). quinn's `SendStream`/`RecvStream` implement tokio's `AsyncWrite`/`AsyncRead`,
//! so these functions work on them directly (and on `tokio::io::duplex` in tests).
//!
//! The sans-IO core is [`frame_remaining`]: given the 32 header bytes it says how many
//! more bytes make up the message, refusing bad lengths before anything is allocated.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::error::{DecodeError, EncodeError};
use crate::flag::Flag;
use crate::header::{Header, HEADER_LEN, VERSION};
use crate::message::{encode_bundle, Message, MAX_BUNDLE, MAX_MESSAGE_LEN};

/// Why no message could be read from (or written to) a stream.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The stream ended cleanly before the first byte of a message.
    #[error("stream closed before a message began")]
    Closed,
    /// The stream ended inside a message.
    #[error("stream ended inside a message: {got} of {need} bytes")]
    UnexpectedEof {
        /// Bytes the message needed.
        need: usize,
        /// Bytes that arrived.
        got: usize,
    },
    /// The bytes read are not a valid message. `header` is the Base Header when it was
    /// read completely, so the receiver can answer with
    /// [`Message::error_reply`](crate::Message::error_reply).
    #[error("malformed message: {error}")]
    Malformed {
        /// The Base Header, when all 32 bytes were read.
        header: Option<Box<Header>>,
        /// What is wrong.
        error: DecodeError,
    },
    /// The message to send cannot be encoded.
    #[error("cannot encode message: {0}")]
    Encode(#[from] EncodeError),
    /// The underlying stream failed.
    #[error("stream I/O error: {0}")]
    Io(#[from] std::io::Error),
}

impl FrameError {
    /// The Base Header of the offending message, if it was read.
    pub fn header(&self) -> Option<&Header> {
        match self {
            FrameError::Malformed { header, .. } => header.as_deref(),
            _ => None,
        }
    }

    /// The error response a receiver should send on the stream, if one is owed: an ACK
    /// with [`Flag::Malformed`] echoing what could be read of the request. `None` when
    /// the stream closed or failed (there is nobody to answer).
    pub fn reply(&self) -> Option<Message> {
        match self {
            FrameError::Malformed { header, .. } => Some(Message::error_reply(
                header.as_deref().unwrap_or(&Header::ZERO),
                Flag::Malformed,
            )),
            _ => None,
        }
    }

    fn malformed(header: &Header, error: DecodeError) -> FrameError {
        FrameError::Malformed {
            header: Some(Box::new(*header)),
            error,
        }
    }
}

/// Sans-IO core of [`read_message`]: given the 32 Base Header bytes, the number of
/// bytes that follow them in this message (Message Length − 32). Refuses a Version other
/// than 2, a Message Length below 32, and one above `max_len` (capped at 65535).
pub fn frame_remaining(header: &[u8; HEADER_LEN], max_len: usize) -> Result<usize, DecodeError> {
    let h = Header::from_array(header);
    if h.version != VERSION {
        return Err(DecodeError::BadVersion(h.version));
    }
    let len = usize::from(h.length);
    if len < HEADER_LEN {
        return Err(DecodeError::BadMessageLength { declared: h.length });
    }
    let max = max_len.min(MAX_MESSAGE_LEN);
    if len > max {
        return Err(DecodeError::MessageTooLarge {
            declared: h.length,
            max,
        });
    }
    Ok(len - HEADER_LEN)
}

/// Read until `buf` is full or the stream ends; returns how many bytes were read.
async fn read_full<R: AsyncRead + Unpin>(r: &mut R, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while let Some(rest) = buf.get_mut(n..) {
        if rest.is_empty() {
            break;
        }
        match r.read(rest).await? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// Read one message and return it with its Base Header (whose Count says whether more
/// bundled messages follow).
async fn read_one<R: AsyncRead + Unpin>(
    r: &mut R,
    max_len: usize,
) -> Result<(Message, Header), FrameError> {
    let mut hb = [0u8; HEADER_LEN];
    match read_full(r, &mut hb).await? {
        0 => return Err(FrameError::Closed),
        HEADER_LEN => {}
        got => {
            return Err(FrameError::UnexpectedEof {
                need: HEADER_LEN,
                got,
            })
        }
    }
    let header = Header::from_array(&hb);
    let rest = frame_remaining(&hb, max_len).map_err(|e| FrameError::malformed(&header, e))?;
    // Bounded by max_len (≤ 65535) just above.
    let mut buf = vec![0u8; HEADER_LEN + rest];
    if let Some(h) = buf.get_mut(..HEADER_LEN) {
        h.copy_from_slice(&hb);
    }
    let got = match buf.get_mut(HEADER_LEN..) {
        Some(body) => read_full(r, body).await?,
        None => 0,
    };
    if got != rest {
        return Err(FrameError::UnexpectedEof {
            need: HEADER_LEN + rest,
            got: HEADER_LEN + got,
        });
    }
    let (m, h, _) = Message::decode_prefix(&buf).map_err(|e| FrameError::malformed(&header, e))?;
    Ok((m, h))
}

/// Read exactly one message (Count 0) of at most `max_len` bytes. A Count above 0 is
/// [`DecodeError::UnexpectedBundle`]; use [`read_bundle`] where bundles are allowed.
pub async fn read_message<R: AsyncRead + Unpin>(
    r: &mut R,
    max_len: usize,
) -> Result<Message, FrameError> {
    let (m, h) = read_one(r, max_len).await?;
    if h.count != 0 {
        return Err(FrameError::malformed(
            &h,
            DecodeError::UnexpectedBundle { count: h.count },
        ));
    }
    Ok(m)
}

/// Read one bundle: a message and, if its Count is above 0, that many more (each at
/// most `max_len` bytes; at most `max_messages`, itself capped at [`MAX_BUNDLE`]). Each
/// following message's Count must be one less than the previous one's.
pub async fn read_bundle<R: AsyncRead + Unpin>(
    r: &mut R,
    max_len: usize,
    max_messages: usize,
) -> Result<Vec<Message>, FrameError> {
    let (first, h) = read_one(r, max_len).await?;
    let total = usize::from(h.count) + 1;
    let max = max_messages.clamp(1, MAX_BUNDLE);
    if total > max {
        return Err(FrameError::malformed(
            &h,
            DecodeError::BundleTooLarge { count: total, max },
        ));
    }
    let mut out = Vec::with_capacity(total);
    out.push(first);
    let mut expected = h.count;
    while expected > 0 {
        expected -= 1;
        let (m, h) = match read_one(r, max_len).await {
            Err(FrameError::Closed) => {
                return Err(FrameError::UnexpectedEof {
                    need: HEADER_LEN,
                    got: 0,
                })
            }
            other => other?,
        };
        if h.count != expected {
            return Err(FrameError::malformed(
                &h,
                DecodeError::BundleCountMismatch {
                    expected,
                    got: h.count,
                },
            ));
        }
        out.push(m);
    }
    Ok(out)
}

/// Encode and write one message (Count 0), then flush. Finishing the stream is the
/// caller's job.
pub async fn write_message<W: AsyncWrite + Unpin>(
    w: &mut W,
    message: &Message,
) -> Result<(), FrameError> {
    let bytes = message.encode()?;
    w.write_all(&bytes).await?;
    w.flush().await?;
    Ok(())
}

/// Encode `messages` as one bundle ([`encode_bundle`]), write it, then flush.
pub async fn write_bundle<W: AsyncWrite + Unpin>(
    w: &mut W,
    messages: &[Message],
) -> Result<(), FrameError> {
    let bytes = encode_bundle(messages)?;
    w.write_all(&bytes).await?;
    w.flush().await?;
    Ok(())
}
