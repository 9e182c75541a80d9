//! The node's overlay DNS query handling (cyphonic_node::dns::wire) is total: any bytes
//! classify without panicking; every reply carries the query's ID and is a response; an
//! overlay query answered with each possible outcome yields a decodable response that
//! echoes the question.
#![no_main]

use cyphonic_node::dns::wire::{self, Classified, Outcome};
use cyphonic_node::dns::OverlayAnswer;
use cyphonic_proto::Fqdn;
use hickory_proto::op::{Message, MessageType};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let domain = Fqdn::new("cyphonic.internal").expect("valid domain");
    match wire::classify(data, &domain) {
        Classified::Drop => {}
        Classified::Reply(r) => {
            assert_eq!(wire::message_id(&r), wire::message_id(data));
            assert!(wire::is_response(&r));
        }
        Classified::Forward(req) => {
            assert_eq!(Some(req.id()), wire::message_id(data));
        }
        Classified::Overlay { req, name } => {
            assert!(name.is_below(&domain));
            let found = OverlayAnswer {
                ipv4: Some([100, 64, 0, 1].into()),
                ipv6: Some([0xfd00, 0, 0, 0, 0, 0, 0, 1].into()),
            };
            for out in [Outcome::Found(found), Outcome::NoSuchName, Outcome::Failed] {
                let r = wire::answer_overlay(&req, &out, 60);
                let m = Message::from_vec(&r).expect("our answer decodes");
                assert_eq!(m.metadata.id, req.id());
                assert_eq!(m.metadata.message_type, MessageType::Response);
                assert_eq!(m.queries.len(), 1);
                assert_eq!(&m.queries[0], req.query());
            }
        }
    }
});
