//! decode_bundle is total and canonical, and agrees with walking the input message by
//! message with Message::decode_prefix.
#![no_main]

use cyphonic_proto::{decode_bundle, encode_bundle, Message};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(ms) = decode_bundle(data) {
        assert!(!ms.is_empty() && ms.len() <= cyphonic_proto::MAX_BUNDLE);
        let re = encode_bundle(&ms).expect("a decoded bundle must re-encode");
        assert_eq!(re, data, "bundle decode is canonical");
        let mut rest = data;
        for (i, m) in ms.iter().enumerate() {
            let (d, h, len) = Message::decode_prefix(rest).expect("prefix decode");
            assert_eq!(&d, m);
            assert_eq!(usize::from(h.count), ms.len() - 1 - i);
            rest = &rest[len..];
        }
        assert!(rest.is_empty());
    }
});
