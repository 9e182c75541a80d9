//! Deterministic test payloads: the bytes `cyphonic-probe tcp-send` sends, so a test can
//! compute the expected digest without moving the data through the test process.

use sha2::{Digest, Sha256};

/// A cheap deterministic byte stream (splitmix64), seeded.
#[derive(Debug, Clone)]
pub struct Pattern {
    state: u64,
    buf: [u8; 8],
    used: usize,
}

impl Pattern {
    /// The stream for `seed`.
    pub fn new(seed: u64) -> Pattern {
        Pattern {
            state: seed,
            buf: [0; 8],
            used: 8,
        }
    }

    fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Fills `out` with the next bytes of the stream.
    pub fn fill(&mut self, out: &mut [u8]) {
        for b in out.iter_mut() {
            if self.used == 8 {
                self.buf = self.next_u64().to_le_bytes();
                self.used = 0;
            }
            *b = self.buf[self.used];
            self.used += 1;
        }
    }
}

/// Lower-case hex SHA-256 of the first `len` bytes of the stream for `seed`.
pub fn pattern_sha256(seed: u64, len: u64) -> String {
    let mut p = Pattern::new(seed);
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut left = len;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        p.fill(&mut buf[..n]);
        h.update(&buf[..n]);
        left -= n as u64;
    }
    hex(&h.finalize())
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunking_does_not_change_the_stream() {
        let mut a = Pattern::new(7);
        let mut whole = vec![0u8; 1000];
        a.fill(&mut whole);
        let mut b = Pattern::new(7);
        let mut parts = vec![0u8; 1000];
        let (x, y) = parts.split_at_mut(13);
        b.fill(x);
        b.fill(y);
        assert_eq!(whole, parts);
        assert_ne!(Pattern::new(8).next_u64(), Pattern::new(7).next_u64());
    }

    #[test]
    fn digest_of_empty_stream() {
        assert_eq!(
            pattern_sha256(1, 0),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
