//! Destination CID parser on hand-built RFC 9000 packets, cross-checked against
//! quinn-proto's own header parser (`PartialDecode`).

use bytes::BytesMut;
use cyphonic_proto::quic::*;
use cyphonic_proto::RelayToken;
use proptest::prelude::*;
use quinn_proto::{FixedLengthConnectionIdParser, PacketDecodeError, PartialDecode};

const DCID: [u8; 16] = [
    0xa1, 0xa2, 0xa3, 0xa4, 0xa5, 0xa6, 0xa7, 0xa8, 1, 2, 3, 4, 5, 6, 7, 8,
];
const SCID: [u8; 16] = [0xb0; 16];

/// quinn's view of the Destination CID (`Err` when quinn refuses the header).
fn quinn_dcid(datagram: &[u8]) -> Result<Vec<u8>, PacketDecodeError> {
    match PartialDecode::new(
        BytesMut::from(datagram),
        &FixedLengthConnectionIdParser::new(CID_LEN),
        &[QUIC_V1],
        true,
    ) {
        Ok((p, _)) => Ok(p.dst_cid().to_vec()),
        Err(PacketDecodeError::UnsupportedVersion { dst_cid, .. }) => Ok(dst_cid.to_vec()),
        Err(e) => Err(e),
    }
}

fn short(first: u8, total: usize) -> Vec<u8> {
    let mut p = vec![first];
    p.extend_from_slice(&DCID);
    p.resize(total, 0x5a);
    p
}

/// RFC 9000 §17.2.2 Initial: first byte, version, DCID, SCID, Token Length 0, Length
/// (2-byte varint), then `payload` bytes of packet number + protected payload.
fn initial(version: u32, dcid: &[u8], scid: &[u8], payload: usize) -> Vec<u8> {
    let mut p = vec![0xc3];
    p.extend_from_slice(&version.to_be_bytes());
    p.push(dcid.len() as u8);
    p.extend_from_slice(dcid);
    p.push(scid.len() as u8);
    p.extend_from_slice(scid);
    p.push(0); // token length
    p.extend_from_slice(&(0x4000u16 | payload as u16).to_be_bytes());
    p.resize(p.len() + payload, 0x33);
    p
}

#[test]
fn short_header() {
    let p = short(0x41, MIN_SHORT_PACKET);
    assert_eq!(destination_cid(&p), Ok(&DCID[..]));
    assert_eq!(quinn_dcid(&p).unwrap(), DCID);
    assert_eq!(
        relay_token_of(destination_cid(&p).unwrap()),
        Some(RelayToken([0xa1, 0xa2, 0xa3, 0xa4, 0xa5, 0xa6, 0xa7, 0xa8]))
    );
    // Greased fixed bit (0x40 clear) is still QUIC.
    let p = short(0x01, 1200);
    assert_eq!(destination_cid(&p), Ok(&DCID[..]));
    // Too short for a header-protection sample.
    let p = short(0x41, MIN_SHORT_PACKET - 1);
    assert_eq!(
        destination_cid(&p),
        Err(NotQuic::TooShort {
            need: MIN_SHORT_PACKET,
            got: MIN_SHORT_PACKET - 1
        })
    );
    assert_eq!(
        destination_cid(&[]),
        Err(NotQuic::TooShort { need: 1, got: 0 })
    );
}

#[test]
fn long_header_initial() {
    let p = initial(QUIC_V1, &DCID, &SCID, 1100);
    assert_eq!(destination_cid(&p), Ok(&DCID[..]));
    assert_eq!(quinn_dcid(&p).unwrap(), DCID);
    // Greased fixed bit.
    let mut g = p.clone();
    g[0] &= !0x40;
    assert_eq!(destination_cid(&g), Ok(&DCID[..]));
    // Zero-length SCID is legal.
    let p = initial(QUIC_V1, &DCID, &[], 40);
    assert_eq!(destination_cid(&p), Ok(&DCID[..]));
    assert_eq!(quinn_dcid(&p).unwrap(), DCID);
    // An unknown version still has the invariant header (RFC 8999).
    let p = initial(0x1a2a_3a4a, &DCID, &SCID, 40);
    assert_eq!(destination_cid(&p), Ok(&DCID[..]));
    assert_eq!(quinn_dcid(&p).unwrap(), DCID);
}

#[test]
fn long_header_refusals() {
    // DCID of another length.
    let p = initial(QUIC_V1, &DCID[..8], &SCID, 40);
    assert_eq!(destination_cid(&p), Err(NotQuic::CidLength(8)));
    let p = initial(QUIC_V1, &[], &SCID, 40);
    assert_eq!(destination_cid(&p), Err(NotQuic::CidLength(0)));
    // Version Negotiation (version 0).
    let p = initial(0, &DCID, &SCID, 8);
    assert_eq!(destination_cid(&p), Err(NotQuic::VersionNegotiation));
    // v1 SCID longer than 20 bytes.
    let p = initial(QUIC_V1, &DCID, &[0; 21], 40);
    assert_eq!(destination_cid(&p), Err(NotQuic::SourceCidLength(21)));
    assert!(quinn_dcid(&p).is_err(), "quinn refuses it too");
    // Truncated inside the DCID, at the SCID length, inside the SCID.
    let p = initial(QUIC_V1, &DCID, &SCID, 40);
    assert_eq!(
        destination_cid(&p[..5]),
        Err(NotQuic::TooShort { need: 6, got: 5 })
    );
    assert_eq!(
        destination_cid(&p[..20]),
        Err(NotQuic::TooShort { need: 23, got: 20 })
    );
    assert_eq!(
        destination_cid(&p[..30]),
        Err(NotQuic::TooShort { need: 39, got: 30 })
    );
}

fn long_packet() -> impl Strategy<Value = Vec<u8>> {
    (
        any::<u8>().prop_map(|b| b | 0x80),
        prop_oneof![Just(0u32), Just(1u32), any::<u32>()],
        prop_oneof![Just(16usize), 0usize..=24],
        prop_oneof![Just(16usize), 0usize..=24],
        proptest::collection::vec(any::<u8>(), 0..80),
        any::<prop::sample::Index>(),
    )
        .prop_map(|(first, version, dl, sl, tail, cut)| {
            let mut p = vec![first];
            p.extend_from_slice(&version.to_be_bytes());
            p.push(dl as u8);
            p.extend((0..dl).map(|i| i as u8));
            p.push(sl as u8);
            p.extend((0..sl).map(|i| 0x80 | i as u8));
            p.extend_from_slice(&tail);
            let keep = cut.index(p.len() + 1);
            p.truncate(keep.max(p.len() / 2));
            p
        })
}

fn any_packet() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        long_packet(),
        proptest::collection::vec(any::<u8>(), 0..64),
        (any::<u8>(), proptest::collection::vec(any::<u8>(), 0..64)).prop_map(|(b, mut t)| {
            t.insert(0, b & 0x7f);
            t
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 5000, ..ProptestConfig::default() })]

    /// Whenever both parsers accept a datagram they agree on the DCID; whenever quinn
    /// accepts one with a 16-byte DCID that is long enough for us (and is not Version
    /// Negotiation), we accept it too.
    #[test]
    fn agrees_with_quinn(p in any_packet()) {
        let ours = destination_cid(&p);
        let theirs = quinn_dcid(&p);
        if let (Ok(a), Ok(b)) = (&ours, &theirs) {
            prop_assert_eq!(a.to_vec(), b.clone());
        }
        if let Ok(b) = &theirs {
            let long = p[0] & 0x80 != 0;
            let vn = long && p[1..5] == [0, 0, 0, 0];
            if b.len() == CID_LEN && !vn && (long || p.len() >= MIN_SHORT_PACKET) {
                prop_assert!(ours.is_ok(), "quinn accepted {:?}, we said {:?}", p, ours);
            }
        }
        if let Ok(c) = ours {
            prop_assert_eq!(c.len(), CID_LEN);
            prop_assert!(relay_token_of(c).is_some());
        }
    }
}
