//! destination_cid never panics, returns a 16-byte slice of the input, and agrees with
//! quinn-proto's PartialDecode whenever both accept; when quinn accepts a packet with a
//! 16-byte DCID that is long enough for us (and is not Version Negotiation), so do we.
#![no_main]

use bytes::BytesMut;
use cyphonic_proto::quic::{destination_cid, relay_token_of, CID_LEN, MIN_SHORT_PACKET, QUIC_V1};
use libfuzzer_sys::fuzz_target;
use quinn_proto::{FixedLengthConnectionIdParser, PacketDecodeError, PartialDecode};

fuzz_target!(|data: &[u8]| {
    let ours = destination_cid(data);
    if let Ok(c) = ours {
        assert_eq!(c.len(), CID_LEN);
        assert!(relay_token_of(c).is_some());
    }
    let theirs = match PartialDecode::new(
        BytesMut::from(data),
        &FixedLengthConnectionIdParser::new(CID_LEN),
        &[QUIC_V1],
        true,
    ) {
        Ok((p, _)) => Some(p.dst_cid().to_vec()),
        Err(PacketDecodeError::UnsupportedVersion { dst_cid, .. }) => Some(dst_cid.to_vec()),
        Err(_) => None,
    };
    if let (Ok(a), Some(b)) = (ours, &theirs) {
        assert_eq!(a, &b[..], "both parsers accept: same DCID");
    }
    if let Some(b) = theirs {
        let long = data[0] & 0x80 != 0;
        let vn = long && data.get(1..5) == Some(&[0, 0, 0, 0][..]);
        if b.len() == CID_LEN && !vn && (long || data.len() >= MIN_SHORT_PACKET) {
            assert!(ours.is_ok(), "quinn accepted, we refused: {ours:?}");
        }
    }
});
