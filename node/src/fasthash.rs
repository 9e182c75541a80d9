//! A multiplicative hasher for the data plane's lookups (a packet's channel ID, its
//! destination address): a few instructions where SipHash costs about a hundred
//! per packet.
//!
//! Only for tables whose keys the node inserts itself (its own random channel IDs,
//! the peers' virtual addresses the cloud assigned), so nobody can choose keys that
//! collide; looking up a stranger's key costs one probe like any other.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// FxHash's step (rustc's hasher): rotate, xor, multiply.
#[derive(Default, Clone, Copy)]
pub struct MulHasher(u64);

const K: u64 = 0x51_7c_c1_b7_27_22_0a_95;

impl MulHasher {
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(K);
    }
}

impl Hasher for MulHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.add(u64::from_le_bytes(w));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut w = [0u8; 8];
            w[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(w));
        }
    }

    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
    }

    fn write_u32(&mut self, i: u32) {
        self.add(u64::from(i));
    }

    fn write_u64(&mut self, i: u64) {
        self.add(i);
    }

    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// A map with [`MulHasher`].
pub type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<MulHasher>>;

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    #[test]
    fn distinct_keys_stay_distinct() {
        let mut m: FastMap<Ipv4Addr, u32> = FastMap::default();
        for i in 0..10_000u32 {
            m.insert(Ipv4Addr::from(0x6460_0000 + i), i);
        }
        assert_eq!(m.len(), 10_000);
        for i in 0..10_000u32 {
            assert_eq!(m.get(&Ipv4Addr::from(0x6460_0000 + i)), Some(&i));
        }
        assert!(!m.contains_key(&Ipv4Addr::new(192, 0, 2, 1)));
    }
}
