//! The fast-data classifier and replay window take any bytes: FastHeader::parse never
//! panics, what it accepts is a short-header datagram whose DCID has the fast bit and
//! the TRS's DCID parser agrees on; the window accepts each counter at most once.
#![no_main]

use cyphonic_proto::fastdata::{FastHeader, ReplayWindow, OVERHEAD};
use cyphonic_proto::quic::{destination_cid, is_fast_cid};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(h) = FastHeader::parse(data) {
        assert!(data.len() >= OVERHEAD);
        assert!(is_fast_cid(&h.dcid));
        assert_eq!(destination_cid(data).ok(), Some(&h.dcid[..]), "the TRS routes it");
    }
    // The bytes as a sequence of counters (8 bytes each, small steps mixed with jumps).
    let mut w = ReplayWindow::default();
    let mut accepted = std::collections::HashSet::new();
    for chunk in data.chunks_exact(8) {
        let c = u64::from_le_bytes(chunk.try_into().unwrap_or_default()) >> 40;
        let first = w.accept(c);
        if first {
            assert!(accepted.insert(c), "counter {c} accepted twice");
        }
        assert!(!w.accept(c), "counter {c} accepted right after itself");
    }
});
