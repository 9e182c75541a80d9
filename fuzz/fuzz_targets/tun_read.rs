//! An offloaded TUN read (virtio-net header, then a packet or a TSO/USO super-packet)
//! never panics the node's reader: `offloaded` returns an error or what it read, and
//! a split never reports more segments, or longer ones, than its buffers hold.
#![no_main]

use cyphonic_node::tun::{offloaded, Offloaded, BATCH};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut read = data.to_vec();
    let mut bufs: Vec<Vec<u8>> = (0..BATCH).map(|_| vec![0u8; 1564]).collect();
    let mut sizes = vec![0usize; BATCH];
    if let Ok(Offloaded::Split(n)) = offloaded(&mut read, &mut bufs, &mut sizes) {
        assert!(n <= BATCH);
        for (b, &s) in bufs.iter().zip(&sizes).take(n) {
            assert!(s <= b.len());
        }
    }
});
