//! Property tests of the fast-data packet header and replay window.

use std::collections::HashSet;

use cyphonic_proto::fastdata::{fast_dcid, FastHeader, ReplayWindow, MAX_COUNTER, OVERHEAD};
use cyphonic_proto::RelayToken;
use proptest::prelude::*;

proptest! {
    /// Any bytes: the classifier never panics, and what it accepts re-encodes to the
    /// same header bytes.
    #[test]
    fn parse_any_bytes(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
        if let Some(h) = FastHeader::parse(&bytes) {
            let mut out = vec![0u8; OVERHEAD];
            h.write(&mut out);
            prop_assert_eq!(&out[1..25], &bytes[1..25]);
            prop_assert_eq!(out[0] & 0xc0, bytes[0] & 0xc0);
        }
    }

    #[test]
    fn header_roundtrip(token in any::<u64>(), channel in any::<u64>(), counter in any::<u64>(), extra in 0usize..64) {
        let h = FastHeader { dcid: fast_dcid(RelayToken::from_u64(token), channel), counter };
        let mut p = vec![0u8; OVERHEAD + extra];
        h.write(&mut p);
        prop_assert_eq!(FastHeader::parse(&p), Some(h));
    }

    /// The window against a model: a counter is accepted iff it was never accepted
    /// and is within SIZE of the highest accepted (and below MAX_COUNTER).
    #[test]
    fn replay_window_matches_model(steps in prop::collection::vec((0u8..4, 0u64..10_000), 1..400)) {
        let mut w = ReplayWindow::default();
        let mut seen = HashSet::new();
        let mut top: Option<u64> = None;
        let mut base = 0u64;
        for (kind, n) in steps {
            let c = match kind {
                0 => base + n,                                  // forward, maybe a jump
                1 => top.unwrap_or(0).saturating_sub(n % 5000), // reordered / old
                2 => top.unwrap_or(0),                          // replay of the top
                _ => { base += n * 50; base }                   // big jumps
            };
            let fresh = !seen.contains(&c)
                && c < MAX_COUNTER
                && top.is_none_or(|t| c > t || t - c < ReplayWindow::SIZE);
            prop_assert_eq!(w.check(c), fresh, "check {}", c);
            prop_assert_eq!(w.accept(c), fresh, "accept {}", c);
            if fresh {
                seen.insert(c);
                top = Some(top.map_or(c, |t| t.max(c)));
            }
        }
    }
}
