//! Message::decode is total and canonical: whatever decodes re-encodes to the same
//! bytes; the allocation-free Capsule decoder accepts exactly the same capsules.
#![no_main]

use cyphonic_proto::{Body, CapsuleRef, Header, Message};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let decoded = Message::decode(data);
    if let Ok(m) = &decoded {
        let re = m.encode().expect("a decoded message must re-encode");
        assert_eq!(re, data, "decode is canonical: re-encoding gives the input back");
        assert_eq!(&Message::decode(&re).expect("re-decode"), m);
        assert_eq!(m.encoded_len().ok(), Some(data.len()));
    }
    let via_message = decoded.ok().and_then(|m| match m.body {
        Body::Capsule(c) => Some(c.payload),
        _ => None,
    });
    let via_ref = CapsuleRef::decode(data).ok().map(|c| c.payload.to_vec());
    assert_eq!(via_message, via_ref, "CapsuleRef and Message agree");
    let _ = Header::salvage(data);
});
