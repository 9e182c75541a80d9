//! Tests of the pure query handling.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{DNSClass, Name, RData, RecordType};
use proptest::prelude::*;

use super::*;

fn domain() -> Fqdn {
    Fqdn::new("cyphonic.internal").unwrap()
}

/// A name as it looks after a trip over the wire (labels as given, always fully qualified).
fn wire_name(s: &str) -> Name {
    let labels = s
        .trim_end_matches('.')
        .split('.')
        .filter(|l| !l.is_empty())
        .map(|l| l.as_bytes().to_vec());
    let mut n = Name::from_labels(labels).unwrap();
    n.set_fqdn(true);
    n
}

fn query_msg(id: u16, name: &str, rt: RecordType) -> Message {
    let mut m = Message::new(id, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(wire_name(name), rt));
    m
}

fn query(id: u16, name: &str, rt: RecordType) -> Vec<u8> {
    query_msg(id, name, rt).to_vec().unwrap()
}

fn both() -> OverlayAnswer {
    OverlayAnswer {
        ipv4: Some(Ipv4Addr::new(100, 64, 0, 7)),
        ipv6: Some(Ipv6Addr::from_str("fd00::7").unwrap()),
    }
}

/// Classify, expect an overlay query, answer with `out`, decode.
fn overlay(bytes: &[u8], out: &Outcome) -> (Fqdn, Message) {
    match classify(bytes, &domain()) {
        Classified::Overlay { req, name } => {
            let r = answer_overlay(&req, out, 60);
            (name, Message::from_vec(&r).unwrap())
        }
        other => panic!("expected overlay, got {other:?}"),
    }
}

fn reply(bytes: &[u8]) -> Vec<u8> {
    match classify(bytes, &domain()) {
        Classified::Reply(r) => r,
        other => panic!("expected reply, got {other:?}"),
    }
}

fn check_response_header(m: &Message, id: u16, rcode: ResponseCode) {
    assert_eq!(m.metadata.id, id);
    assert_eq!(m.metadata.message_type, MessageType::Response);
    assert_eq!(m.metadata.response_code, rcode);
    assert!(m.metadata.recursion_available);
}

#[test]
fn a_query_gets_ipv4_authoritatively() {
    let (name, m) = overlay(
        &query(0x1234, "cam1.cyphonic.internal.", RecordType::A),
        &Outcome::Found(both()),
    );
    assert_eq!(name.as_str(), "cam1.cyphonic.internal");
    check_response_header(&m, 0x1234, ResponseCode::NoError);
    assert!(m.metadata.authoritative);
    assert!(m.metadata.recursion_desired);
    assert_eq!(
        m.queries,
        query_msg(0, "cam1.cyphonic.internal.", RecordType::A).queries
    );
    assert_eq!(m.answers.len(), 1);
    assert_eq!(m.answers[0].ttl, 60);
    assert_eq!(m.answers[0].data, RData::A(A(Ipv4Addr::new(100, 64, 0, 7))));
}

#[test]
fn aaaa_query_gets_ipv6() {
    let (_, m) = overlay(
        &query(7, "cam1.cyphonic.internal.", RecordType::AAAA),
        &Outcome::Found(both()),
    );
    check_response_header(&m, 7, ResponseCode::NoError);
    assert_eq!(m.answers.len(), 1);
    assert_eq!(
        m.answers[0].data,
        RData::AAAA(AAAA(Ipv6Addr::from_str("fd00::7").unwrap()))
    );
}

#[test]
fn missing_family_and_other_types_are_nodata() {
    let v4only = OverlayAnswer {
        ipv4: Some(Ipv4Addr::new(100, 64, 0, 9)),
        ipv6: None,
    };
    let (_, m) = overlay(
        &query(8, "x.cyphonic.internal.", RecordType::AAAA),
        &Outcome::Found(v4only),
    );
    check_response_header(&m, 8, ResponseCode::NoError);
    assert!(m.answers.is_empty());
    for rt in [RecordType::MX, RecordType::TXT, RecordType::SRV] {
        let (_, m) = overlay(
            &query(9, "x.cyphonic.internal.", rt),
            &Outcome::Found(both()),
        );
        check_response_header(&m, 9, ResponseCode::NoError);
        assert!(m.metadata.authoritative);
        assert!(m.answers.is_empty());
    }
}

#[test]
fn any_gets_both_families() {
    let (_, m) = overlay(
        &query(9, "x.cyphonic.internal.", RecordType::ANY),
        &Outcome::Found(both()),
    );
    assert_eq!(m.answers.len(), 2);
}

#[test]
fn nxdomain_and_servfail() {
    let q = query(10, "ghost.cyphonic.internal.", RecordType::A);
    let (_, m) = overlay(&q, &Outcome::NoSuchName);
    check_response_header(&m, 10, ResponseCode::NXDomain);
    assert!(m.metadata.authoritative);
    assert!(m.answers.is_empty());
    let (_, m) = overlay(&q, &Outcome::Failed);
    check_response_header(&m, 10, ResponseCode::ServFail);
    assert_eq!(m.queries.len(), 1);
}

#[test]
fn case_insensitive_with_and_without_trailing_dot() {
    for n in [
        "CaM1.CyPhOnIc.InTeRnAl.",
        "cam1.cyphonic.internal",
        "CAM1.CYPHONIC.INTERNAL",
        "a.b.cam1.cyphonic.internal.",
    ] {
        let (name, m) = overlay(&query(1, n, RecordType::A), &Outcome::Found(both()));
        assert!(name.as_str().ends_with("cam1.cyphonic.internal"), "{n}");
        assert_eq!(name.as_str(), name.as_str().to_ascii_lowercase());
        // The question is echoed exactly as asked (0x20 case randomisation survives).
        assert_eq!(m.queries[0].name(), &wire_name(n));
    }
}

#[test]
fn apex_is_nodata_without_lookup() {
    for n in ["cyphonic.internal.", "CYPHONIC.internal"] {
        let m = Message::from_vec(&reply(&query(3, n, RecordType::A))).unwrap();
        check_response_header(&m, 3, ResponseCode::NoError);
        assert!(m.metadata.authoritative);
        assert!(m.answers.is_empty());
    }
}

#[test]
fn other_names_are_forwarded() {
    for n in [
        "example.com.",
        "internal.",
        "xcyphonic.internal.",
        "cyphonic.internal.example.",
        ".",
    ] {
        match classify(&query(4, n, RecordType::A), &domain()) {
            Classified::Forward(req) => assert_eq!(req.id(), 4),
            other => panic!("{n}: expected forward, got {other:?}"),
        }
    }
}

#[test]
fn invalid_names_below_the_domain_are_nxdomain() {
    for n in [
        "_sip._tcp.cyphonic.internal.",
        "a_b.cyphonic.internal.",
        "-x.cyphonic.internal.",
    ] {
        let m = Message::from_vec(&reply(&query(5, n, RecordType::SRV))).unwrap();
        check_response_header(&m, 5, ResponseCode::NXDomain);
    }
    // A label containing a dot must not be taken for two labels.
    let mut name = Name::from_labels(vec![b"a.cyphonic".to_vec(), b"internal".to_vec()]).unwrap();
    name.set_fqdn(true);
    let mut m = Message::new(6, MessageType::Query, OpCode::Query);
    m.add_query(Query::query(name, RecordType::A));
    assert!(matches!(
        classify(&m.to_vec().unwrap(), &domain()),
        Classified::Forward(_)
    ));
}

#[test]
fn non_in_class_is_refused() {
    let mut m = query_msg(11, "x.cyphonic.internal.", RecordType::A);
    m.queries[0].set_query_class(DNSClass::CH);
    let r = Message::from_vec(&reply(&m.to_vec().unwrap())).unwrap();
    check_response_header(&r, 11, ResponseCode::Refused);
}

#[test]
fn edns_queries_get_edns_answers() {
    let mut m = query_msg(12, "x.cyphonic.internal.", RecordType::A);
    m.set_edns(Edns::new());
    let (_, r) = overlay(&m.to_vec().unwrap(), &Outcome::Found(both()));
    assert_eq!(r.edns.as_ref().map(Edns::max_payload), Some(EDNS_PAYLOAD));
    let (_, r) = overlay(
        &query(12, "x.cyphonic.internal.", RecordType::A),
        &Outcome::Found(both()),
    );
    assert!(r.edns.is_none());
}

#[test]
fn short_input_and_responses_are_dropped() {
    for len in 0..HEADER_LEN {
        assert!(matches!(
            classify(&vec![0u8; len], &domain()),
            Classified::Drop
        ));
    }
    let mut resp = query_msg(13, "x.cyphonic.internal.", RecordType::A);
    resp.metadata.message_type = MessageType::Response;
    assert!(matches!(
        classify(&resp.to_vec().unwrap(), &domain()),
        Classified::Drop
    ));
}

fn expect_header_only(r: &[u8], id: u16, rcode: ResponseCode) {
    assert_eq!(r.len(), HEADER_LEN);
    let m = Message::from_vec(r).unwrap();
    check_response_header(&m, id, rcode);
    assert!(m.queries.is_empty());
}

#[test]
fn malformed_queries_get_formerr_with_their_id() {
    // Header claims one question, body is garbage.
    let mut g = vec![0xab, 0xcd, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    g.extend_from_slice(&[0xff; 20]);
    expect_header_only(&reply(&g), 0xabcd, ResponseCode::FormErr);
    // Header only, QDCOUNT 1 but no question.
    expect_header_only(&reply(&g[..HEADER_LEN]), 0xabcd, ResponseCode::FormErr);
    // QDCOUNT 0 and 2.
    let mut z = query(0x0102, "example.com.", RecordType::A);
    z[5] = 0;
    expect_header_only(&reply(&z), 0x0102, ResponseCode::FormErr);
    z[5] = 2;
    expect_header_only(&reply(&z), 0x0102, ResponseCode::FormErr);
    // Answer records in a query.
    let mut an = query(0x0103, "example.com.", RecordType::A);
    an[7] = 1;
    expect_header_only(&reply(&an), 0x0103, ResponseCode::FormErr);
    // Huge additional count.
    let mut ar = query(0x0104, "example.com.", RecordType::A);
    ar[10] = 0xff;
    expect_header_only(&reply(&ar), 0x0104, ResponseCode::FormErr);
}

#[test]
fn other_opcodes_get_notimp() {
    let mut m = query_msg(14, "x.cyphonic.internal.", RecordType::A);
    m.metadata.op_code = OpCode::Notify;
    let r = reply(&m.to_vec().unwrap());
    assert_eq!(r.len(), HEADER_LEN);
    let d = Message::from_vec(&r).unwrap();
    check_response_header(&d, 14, ResponseCode::NotImp);
    assert_eq!(d.metadata.op_code, OpCode::Notify);
}

#[test]
fn id_helpers() {
    let mut q = query(0x4242, "example.com.", RecordType::A);
    assert_eq!(message_id(&q), Some(0x4242));
    set_message_id(&mut q, 0x0101);
    assert_eq!(message_id(&q), Some(0x0101));
    assert!(!is_response(&q));
    assert_eq!(message_id(&q[..5]), None);
    set_message_id(&mut [0u8; 1], 3);
}

fn label() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9]{1,12}"
}

fn rtype() -> impl Strategy<Value = RecordType> {
    prop::sample::select(vec![
        RecordType::A,
        RecordType::AAAA,
        RecordType::ANY,
        RecordType::MX,
        RecordType::TXT,
        RecordType::HTTPS,
    ])
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 512,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
        match classify(&bytes, &domain()) {
            Classified::Drop => {}
            Classified::Reply(r) => {
                prop_assert_eq!(message_id(&r), message_id(&bytes));
                prop_assert!(is_response(&r));
            }
            Classified::Overlay { req, .. } => {
                for out in [Outcome::Found(both()), Outcome::NoSuchName, Outcome::Failed] {
                    let r = answer_overlay(&req, &out, 60);
                    prop_assert_eq!(message_id(&r), message_id(&bytes));
                }
            }
            Classified::Forward(req) => prop_assert_eq!(Some(req.id()), message_id(&bytes)),
        }
    }

    #[test]
    fn well_formed_queries_round_trip(
        id in any::<u16>(),
        labels in prop::collection::vec(label(), 1..4),
        below in any::<bool>(),
        dot in any::<bool>(),
        rt in rtype(),
        edns in any::<bool>(),
    ) {
        let mut name = labels.join(".");
        if below {
            name.push_str(".Cyphonic.INTERNAL");
        } else {
            name.push_str(".example");
        }
        if dot {
            name.push('.');
        }
        let mut m = query_msg(id, &name, rt);
        if edns {
            m.set_edns(Edns::new());
        }
        let bytes = m.to_vec().unwrap();
        match classify(&bytes, &domain()) {
            Classified::Overlay { req, name: fq } => {
                prop_assert!(below);
                prop_assert_eq!(fq.as_str(), name.trim_end_matches('.').to_ascii_lowercase());
                for (out, rcode) in [
                    (Outcome::Found(both()), ResponseCode::NoError),
                    (Outcome::NoSuchName, ResponseCode::NXDomain),
                    (Outcome::Failed, ResponseCode::ServFail),
                ] {
                    let r = Message::from_vec(&answer_overlay(&req, &out, 30)).unwrap();
                    prop_assert_eq!(r.metadata.id, id);
                    prop_assert_eq!(r.metadata.message_type, MessageType::Response);
                    prop_assert_eq!(r.metadata.response_code, rcode);
                    prop_assert_eq!(&r.queries, &m.queries);
                    prop_assert_eq!(r.edns.is_some(), edns);
                }
            }
            Classified::Forward(req) => {
                prop_assert!(!below);
                prop_assert_eq!(req.id(), id);
                let r = Message::from_vec(&req.reply(ResponseCode::ServFail, Vec::new(), false)).unwrap();
                prop_assert_eq!(r.metadata.id, id);
                prop_assert_eq!(&r.queries, &m.queries);
            }
            other => prop_assert!(false, "unexpected {:?}", other),
        }
    }
}
