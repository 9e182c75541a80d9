//! The fast-data packet (docs/protocol-decisions.md, "Fast data channel"): a tunnel's
//! IP packets between two nodes that have a QUIC connection, sealed with keys that
//! connection's TLS session exported, without QUIC's per-packet machinery.
//!
//! ```text
//! | 0 1 0 0 0 0 0 0 | DCID (16) | Counter (64) | ChaCha20-Poly1305(IP packet) ‖ tag (16) |
//!   first byte        token ‖ channel ID (bit 0x80 of byte 8 set)
//! ```
//!
//! On the wire it is shaped as a QUIC short-header packet addressed to the receiver's
//! relay token, so a TRS routes it by Connection ID like any other (SPEC §7) and a
//! firewall that passes QUIC passes it. The receiver tells it from its QUIC packets
//! by the DCID's [`FAST_CID_BIT`], which no CID quinn uses has. The AEAD nonce is the
//! counter (4 zero bytes ‖ 64-bit big-endian counter); the associated data is the
//! 25-byte header. Receivers drop replays with a [`ReplayWindow`].

use crate::ids::RelayToken;
use crate::quic::{is_fast_cid, CID_LEN, FAST_CID_BIT};

/// First byte: short header form, fixed bit set, everything else zero.
pub const FIRST_BYTE: u8 = 0x40;
/// First byte, DCID and counter.
pub const HEADER_LEN: usize = 1 + CID_LEN + 8;
/// The AEAD tag after the sealed packet.
pub const TAG_LEN: usize = 16;
/// Bytes a fast-data packet adds to the IP packet it carries.
pub const OVERHEAD: usize = HEADER_LEN + TAG_LEN;
/// A sender stops using a key after this many packets (ChaCha20-Poly1305 allows far
/// more; this keeps the counter far from wrapping). Data then goes in QUIC DATAGRAMs.
pub const MAX_COUNTER: u64 = 1 << 60;

/// The header of a fast-data packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FastHeader {
    /// The receiver's channel: relay token ‖ channel ID.
    pub dcid: [u8; CID_LEN],
    /// The sender's packet counter (the AEAD nonce).
    pub counter: u64,
}

impl FastHeader {
    /// The channel ID: the DCID's last 8 bytes as a number (marker bit included).
    pub fn channel(&self) -> u64 {
        channel_of(&self.dcid)
    }

    /// Write the header into `out[..HEADER_LEN]`; `out` must be at least that long.
    pub fn write(&self, out: &mut [u8]) {
        out[0] = FIRST_BYTE;
        out[1..1 + CID_LEN].copy_from_slice(&self.dcid);
        out[1 + CID_LEN..HEADER_LEN].copy_from_slice(&self.counter.to_be_bytes());
    }

    /// The header of `datagram` if it is a fast-data packet: short header form with
    /// the fixed bit, a fast channel's DCID, and room for a tag. Anything else is
    /// `None` (a QUIC packet, or garbage for quinn to drop).
    pub fn parse(datagram: &[u8]) -> Option<FastHeader> {
        if datagram.len() < OVERHEAD || datagram[0] & 0xc0 != FIRST_BYTE {
            return None;
        }
        let dcid: [u8; CID_LEN] = datagram[1..1 + CID_LEN].try_into().ok()?;
        if !is_fast_cid(&dcid) {
            return None;
        }
        let counter = u64::from_be_bytes(datagram[1 + CID_LEN..HEADER_LEN].try_into().ok()?);
        Some(FastHeader { dcid, counter })
    }

    /// The 12-byte AEAD nonce of this packet.
    pub fn nonce(&self) -> [u8; 12] {
        nonce(self.counter)
    }
}

/// The AEAD nonce of counter `c`: 4 zero bytes ‖ `c` big-endian.
pub fn nonce(c: u64) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&c.to_be_bytes());
    n
}

/// A fast channel's Destination CID: `token` ‖ `channel` with [`FAST_CID_BIT`] set.
pub fn fast_dcid(token: RelayToken, channel: u64) -> [u8; CID_LEN] {
    let mut d = [0u8; CID_LEN];
    d[..RelayToken::LEN].copy_from_slice(token.as_bytes());
    d[RelayToken::LEN..].copy_from_slice(&channel.to_be_bytes());
    d[RelayToken::LEN] |= FAST_CID_BIT;
    d
}

/// The channel ID of a fast DCID (its last 8 bytes).
pub fn channel_of(dcid: &[u8; CID_LEN]) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&dcid[RelayToken::LEN..]);
    u64::from_be_bytes(b)
}

/// Window of recently accepted counters (RFC 6479's bitmap): a counter is accepted
/// once, and only if it is within [`ReplayWindow::SIZE`] of the highest seen, so
/// reordering by the network is tolerated and replays are not.
#[derive(Debug, Clone)]
pub struct ReplayWindow {
    /// Highest accepted counter + 1; 0 before the first.
    next: u64,
    bits: [u64; Self::WORDS],
}

impl Default for ReplayWindow {
    fn default() -> Self {
        ReplayWindow {
            next: 0,
            bits: [0; Self::WORDS],
        }
    }
}

impl ReplayWindow {
    const WORDS: usize = 64;
    /// A counter is taken only if it is less than this far below the highest
    /// accepted one.
    pub const SIZE: u64 = (Self::WORDS as u64 - 1) * 64;

    /// Whether `c` would be accepted (not seen, not too old). Check before the
    /// (costly) decryption, [`ReplayWindow::accept`] after it succeeded.
    pub fn check(&self, c: u64) -> bool {
        if c >= MAX_COUNTER {
            return false;
        }
        if c >= self.next {
            return true;
        }
        if self.next - c > Self::SIZE {
            return false;
        }
        let (w, b) = Self::slot(c);
        self.bits[w] & (1 << b) == 0
    }

    /// Record `c` as received: false (and no change) when [`ReplayWindow::check`]
    /// refuses it.
    pub fn accept(&mut self, c: u64) -> bool {
        if !self.check(c) {
            return false;
        }
        if c >= self.next {
            if self.next > 0 {
                // Clear the words after the old top's, up to the new top's: they
                // hold bits of counters that have now left the window.
                let top_word = (self.next - 1) / 64;
                let gap = (c / 64 - top_word).min(Self::WORDS as u64);
                for i in 1..=gap {
                    self.bits[((top_word + i) % Self::WORDS as u64) as usize] = 0;
                }
            }
            self.next = c + 1;
        }
        let (w, b) = Self::slot(c);
        self.bits[w] |= 1 << b;
        true
    }

    fn slot(c: u64) -> (usize, u64) {
        (((c / 64) % Self::WORDS as u64) as usize, c % 64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_roundtrip() {
        let h = FastHeader {
            dcid: fast_dcid(RelayToken::from_u64(0x0102030405060708), 0x1122),
            counter: 0xabcdef,
        };
        let mut p = vec![0u8; OVERHEAD + 20];
        h.write(&mut p);
        assert_eq!(p[0], FIRST_BYTE);
        assert_eq!(&p[1..9], &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(FastHeader::parse(&p), Some(h));
        assert_eq!(h.channel(), 0x1122 | (1 << 63));
        assert!(
            FastHeader::parse(&p[..OVERHEAD - 1]).is_none(),
            "no room for the tag"
        );
        p[0] = 0xc0;
        assert!(FastHeader::parse(&p).is_none(), "long header");
        p[0] = FIRST_BYTE;
        p[9] &= !FAST_CID_BIT;
        assert!(FastHeader::parse(&p).is_none(), "a QUIC CID");
        assert_eq!(&nonce(1)[..], &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
    }

    #[test]
    fn replay_window_basics() {
        let mut w = ReplayWindow::default();
        assert!(w.accept(0));
        assert!(!w.accept(0));
        assert!(w.accept(5));
        assert!(w.accept(3));
        assert!(!w.accept(3));
        assert!(w.accept(1));
        let top = 100_000;
        assert!(w.accept(top));
        assert!(!w.check(top - ReplayWindow::SIZE), "too old");
        assert!(w.accept(top - ReplayWindow::SIZE + 1));
        assert!(!w.accept(top - ReplayWindow::SIZE + 1));
        assert!(w.accept(top - 1));
        assert!(!w.accept(top));
        assert!(w.accept(MAX_COUNTER - 1));
        assert!(!w.accept(MAX_COUNTER - 1));
        assert!(!w.accept(MAX_COUNTER), "past the key's last counter");
        assert!(!w.accept(u64::MAX));
    }
}
