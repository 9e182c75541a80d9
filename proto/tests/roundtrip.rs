//! Property tests: every message type round-trips, decoding is total and canonical.

mod common;

use std::collections::BTreeSet;

use bytes::BytesMut;
use common::*;
use cyphonic_proto::*;
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::TestRunner;

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    /// decode(encode(m)) == m for every message type, extensions included.
    #[test]
    fn every_message_roundtrips(m in message()) {
        let bytes = m.encode().unwrap();
        prop_assert_eq!(bytes.len(), m.encoded_len().unwrap());
        let h = Header::decode(&bytes).unwrap();
        prop_assert_eq!(usize::from(h.length), bytes.len());
        prop_assert_eq!(h.msg_type, m.message_type().code());
        prop_assert_eq!(h.next_opt, m.extensions.first().map_or(0, Extension::ty));
        prop_assert_eq!(h.count, 0);
        prop_assert_eq!(h.version, 2);
        let back = Message::decode(&bytes).unwrap();
        prop_assert_eq!(&back, &m);
        // BytesMut path gives the same bytes.
        let mut bm = BytesMut::new();
        m.encode_into_bytes(&mut bm).unwrap();
        prop_assert_eq!(&bm[..], &bytes[..]);
    }

    /// Any truncation of a valid encoding is an error; any single bit flip is an error
    /// or decodes to a message that re-encodes to exactly the flipped bytes.
    #[test]
    fn truncations_and_bit_flips(m in message(), cut in any::<prop::sample::Index>(), bit in any::<prop::sample::Index>()) {
        let bytes = m.encode().unwrap();
        let k = cut.index(bytes.len());
        prop_assert!(Message::decode(&bytes[..k]).is_err());
        let mut flipped = bytes.clone();
        let b = bit.index(bytes.len() * 8);
        flipped[b / 8] ^= 1 << (b % 8);
        if let Ok(m2) = Message::decode(&flipped) {
            prop_assert_eq!(m2.encode().unwrap(), flipped);
        }
    }

    /// Arbitrary bytes never panic, and whatever decodes is canonical: it re-encodes to
    /// the very same bytes.
    #[test]
    fn arbitrary_bytes_are_total_and_canonical(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
        if let Ok(m) = Message::decode(&bytes) {
            prop_assert_eq!(m.encode().unwrap(), bytes.clone());
        }
        if let Ok(ms) = decode_bundle(&bytes) {
            prop_assert_eq!(encode_bundle(&ms).unwrap(), bytes.clone());
        }
        let _ = CapsuleRef::decode(&bytes);
        let _ = Header::decode(&bytes);
    }

    /// Valid header with random rest: exercises the body decoders much harder than
    /// uniformly random bytes, which almost never pass the header checks.
    #[test]
    fn random_bodies_behind_a_valid_header(
        ty in prop::sample::select(MessageType::ALL),
        next_opt in prop_oneof![Just(0u8), 1u8..=4],
        rest in prop::collection::vec(any::<u8>(), 0..300),
    ) {
        let mut bytes = Header {
            version: 2,
            msg_type: ty.code(),
            length: (32 + rest.len()) as u16,
            next_opt,
            ..Header::default()
        }
        .encode()
        .to_vec();
        bytes.extend_from_slice(&rest);
        match Message::decode(&bytes) {
            Ok(m) => prop_assert_eq!(m.encode().unwrap(), bytes),
            Err(e) => { let _ = e.to_string(); }
        }
    }

    /// Bundles round-trip and carry decreasing Counts.
    #[test]
    fn bundles_roundtrip(ms in prop::collection::vec(message(), 1..=5)) {
        let bytes = encode_bundle(&ms).unwrap();
        let mut rest = &bytes[..];
        for (i, m) in ms.iter().enumerate() {
            let (d, h, len) = Message::decode_prefix(rest).unwrap();
            prop_assert_eq!(usize::from(h.count), ms.len() - 1 - i);
            prop_assert_eq!(&d, m);
            rest = &rest[len..];
        }
        prop_assert!(rest.is_empty());
        prop_assert_eq!(decode_bundle(&bytes).unwrap(), ms.clone());
        if ms.len() > 1 {
            prop_assert_eq!(
                Message::decode(&bytes[..usize::from(Header::decode(&bytes).unwrap().length)]),
                Err(DecodeError::UnexpectedBundle { count: (ms.len() - 1) as u8 })
            );
        }
    }

    /// The allocation-free Capsule path produces and accepts exactly what the Message
    /// path does.
    #[test]
    fn capsule_fast_path_matches_message(
        path in id16(),
        seq in any::<u32>(),
        payload in prop::collection::vec(any::<u8>(), 0..1500),
        flip in any::<prop::sample::Index>(),
    ) {
        let path_id = PathId(path);
        let mut fast = BytesMut::with_capacity(CAPSULE_OVERHEAD + payload.len());
        encode_capsule_into(&mut fast, &path_id, seq, &payload).unwrap();
        let mut slice = vec![0u8; CAPSULE_OVERHEAD + payload.len() + 7];
        let n = encode_capsule_to_slice(&mut slice, &path_id, seq, &payload).unwrap();
        prop_assert_eq!(&slice[..n], &fast[..]);
        let slow = Message::new(Capsule { payload: payload.clone() })
            .with_path_id(path_id)
            .with_sequence(seq)
            .encode()
            .unwrap();
        prop_assert_eq!(&fast[..], &slow[..]);
        let c = CapsuleRef::decode(&fast).unwrap();
        prop_assert_eq!(c.payload, &payload[..]);
        prop_assert_eq!(c.path_id, path_id);
        prop_assert_eq!(c.sequence, seq);
        // Same acceptance as Message::decode on a corrupted copy.
        let mut bad = fast.to_vec();
        let b = flip.index(bad.len() * 8);
        bad[b / 8] ^= 1 << (b % 8);
        let via_message = Message::decode(&bad).ok().and_then(|m| match m.body {
            Body::Capsule(c) => Some(c.payload),
            _ => None,
        });
        let via_ref = CapsuleRef::decode(&bad).ok().map(|c| c.payload.to_vec());
        prop_assert_eq!(via_message, via_ref);
    }

    /// CapsuleRef and Message agree on capsules carrying extension headers too.
    #[test]
    fn capsule_ref_with_extensions(m in message_with(prop::collection::vec(any::<u8>(), 0..64).prop_map(|payload| Body::Capsule(Capsule { payload })))) {
        let bytes = m.encode().unwrap();
        let c = CapsuleRef::decode(&bytes).unwrap();
        let Body::Capsule(body) = &m.body else { unreachable!() };
        prop_assert_eq!(c.payload, &body.payload[..]);
        prop_assert_eq!(c.flag, m.flag);
        prop_assert_eq!(c.transaction_id, m.transaction_id);
    }
}

/// The body strategy covers every message type v2 supports, so the round-trip property
/// above is exercised for each of them.
#[test]
fn strategy_covers_every_supported_type() {
    let mut runner = TestRunner::deterministic();
    let strategy = message();
    let mut seen = BTreeSet::new();
    for _ in 0..3000 {
        let m = strategy.new_tree(&mut runner).unwrap().current();
        seen.insert(m.message_type());
    }
    let supported: BTreeSet<MessageType> = MessageType::ALL
        .iter()
        .copied()
        .filter(|t| t.is_supported())
        .collect();
    assert_eq!(seen, supported);
    assert_eq!(supported.len(), 23);
}
