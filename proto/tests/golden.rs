//! Golden byte vectors written by hand from SPEC §4/§5 and docs/wire-format.md, not by
//! calling the encoder: the encoder must produce them and the decoder must read them.

mod common;

use std::net::{Ipv4Addr, Ipv6Addr};

use common::hex;
use cyphonic_proto::*;

fn ip4(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}
fn ip6(s: &str) -> Ipv6Addr {
    s.parse().unwrap()
}
fn fqdn(s: &str) -> Fqdn {
    Fqdn::new(s).unwrap()
}

#[test]
fn base_header() {
    let bytes = hex("01020304 \
         02 0a 06 03 \
         00000007 \
         0050 01 00 \
         00112233445566778899aabbccddeeff");
    assert_eq!(bytes.len(), 32);
    let h = Header {
        transaction_id: TransactionId(0x0102_0304),
        version: 2,
        flag: 10,
        msg_type: 6,
        count: 3,
        sequence: 7,
        length: 0x50,
        next_opt: 1,
        reserved: 0,
        id: *hex("00112233445566778899aabbccddeeff")
            .as_slice()
            .first_chunk()
            .unwrap(),
    };
    assert_eq!(h.encode().to_vec(), bytes);
    assert_eq!(Header::decode(&bytes).unwrap(), h);
    assert_eq!(
        h.validate().unwrap(),
        (MessageType::RegistrationRequest, Flag::FirstRegistration)
    );
}

#[test]
fn registration_request_with_relay_extension() {
    let bytes = hex(
        // Base Header: txid, v2, Flag 10 (first registration), Type 6, Count 0,
        // seq 7, length 80, Next Opt 1 (Relay), Reserved, ID = NodeID
        "01020304 02 0a 06 00 00000007 0050 01 00 00112233445566778899aabbccddeeff \
         00 02 000000000000 a1a2a3a4a5a6a7a8 0000000000000000 \
         01bb 0000 c0000201 20010db8000000000000000000000001",
    );
    let m = Message::new(RegistrationRequest {
        application_port: 443,
        notification_type: NotificationType::None,
        node_ipv4: Some(ip4("192.0.2.1")),
        node_ipv6: Some(ip6("2001:db8::1")),
    })
    .with_transaction_id(TransactionId(0x0102_0304))
    .with_flag(Flag::FirstRegistration)
    .with_sequence(7)
    .with_node_id("00112233-4455-6677-8899-aabbccddeeff".parse().unwrap())
    .with_extension(Extension::Relay(RelayTokens::own(RelayToken::from_u64(
        0xa1a2_a3a4_a5a6_a7a8,
    ))));
    assert_eq!(m.encode().unwrap(), bytes);
    assert_eq!(Message::decode(&bytes).unwrap(), m);
}

/// The 180-byte fixed body of Route Direction (thesis appendix A.10, SPEC §5) followed
/// by both FQDNs, field by field at the offsets of the appendix.
#[test]
fn route_direction_fixed_body() {
    let body = hex("101112131415161718191a1b1c1d1e1f \
         01 \
         00 \
         0001 \
         01bb \
         7530 \
         cb007101 \
         00000000000000000000000000000000 \
         c6336402 \
         20010db8000000000000000000000002 \
         c0a80a05 \
         00000000000000000000000000000000 \
         00000000 \
         20010db8000000000000000000000002 \
         64400001 \
         fd000000000000000000000000000001 \
         64400002 \
         fd000000000000000000000000000002 \
         c0000207 \
         20010db8000000000000000000000007 \
         ffff \
         0000 \
         0000 \
         01bb \
         07ea 0b 16 \
         0013 \
         0016");
    assert_eq!(body.len(), 180, "the fixed part is exactly 180 bytes");
    // Offsets of the appendix, checked on the hand-written bytes.
    assert_eq!(body[16], 1, "Process Code at 16");
    assert_eq!(body[18..20], [0, 1], "General Node Flag at 18");
    assert_eq!(body[20..22], [0x01, 0xbb], "NAT Initiator Port at 20");
    assert_eq!(body[22..24], [0x75, 0x30], "NAT Responder Port at 22");
    assert_eq!(body[24..28], [203, 0, 113, 1], "NAT Initiator IPv4 at 24");
    assert_eq!(body[44..48], [198, 51, 100, 2], "NAT Responder IPv4 at 44");
    assert_eq!(body[64..68], [192, 168, 10, 5], "Initiator Real IPv4 at 64");
    assert_eq!(
        body[104..108],
        [100, 64, 0, 1],
        "Initiator Virtual IPv4 at 104"
    );
    assert_eq!(
        body[124..128],
        [100, 64, 0, 2],
        "Responder Virtual IPv4 at 124"
    );
    assert_eq!(body[144..148], [192, 0, 2, 7], "TRS IPv4 at 144");
    assert_eq!(
        body[164..166],
        [0xff, 0xff],
        "Tunnel Key Cipher Type at 164"
    );
    assert_eq!(body[170..172], [0x01, 0xbb], "TRS Port at 170");
    assert_eq!(body[172..176], [0x07, 0xea, 11, 22], "Y/M/D at 172");
    assert_eq!(body[176..178], [0, 19], "Initiator FQDN Len at 176");
    assert_eq!(body[178..180], [0, 22], "Responder FQDN Len at 178");

    let mut bytes = hex("cafebabe 02 00 0c 00 00000000 00fd 00 00 \
         0f0e0d0c0b0a09080706050403020100");
    bytes.extend_from_slice(&body);
    bytes.extend_from_slice(b"a.cyphonic.internal");
    bytes.extend_from_slice(b"cam1.cyphonic.internal");
    assert_eq!(bytes.len(), 0xfd);

    let rd = RouteDirection {
        path_id: PathId(
            *hex("101112131415161718191a1b1c1d1e1f")
                .first_chunk()
                .unwrap(),
        ),
        process_code: ProcessCode::InitiatorDials,
        exec_mode: 0,
        general_node: true,
        initiator: PathEnd {
            fqdn: fqdn("a.cyphonic.internal"),
            nat_port: 443,
            nat_ipv4: Some(ip4("203.0.113.1")),
            nat_ipv6: None,
            real_ipv4: Some(ip4("192.168.10.5")),
            real_ipv6: None,
            virtual_ipv4: ip4("100.64.0.1"),
            virtual_ipv6: ip6("fd00::1"),
        },
        responder: PathEnd {
            fqdn: fqdn("cam1.cyphonic.internal"),
            nat_port: 30000,
            nat_ipv4: Some(ip4("198.51.100.2")),
            nat_ipv6: Some(ip6("2001:db8::2")),
            real_ipv4: None,
            real_ipv6: Some(ip6("2001:db8::2")),
            virtual_ipv4: ip4("100.64.0.2"),
            virtual_ipv6: ip6("fd00::2"),
        },
        trs_ipv4: Some(ip4("192.0.2.7")),
        trs_ipv6: Some(ip6("2001:db8::7")),
        trs_port: 443,
        expiry: Date::new(2026, 11, 22),
    };
    let m = Message::new(Body::RouteDirectionToResponder(rd))
        .with_transaction_id(TransactionId(0xcafe_babe))
        .with_id(
            *hex("0f0e0d0c0b0a09080706050403020100")
                .first_chunk()
                .unwrap(),
        );
    assert_eq!(m.encode().unwrap(), bytes);
    assert_eq!(Message::decode(&bytes).unwrap(), m);
}

#[test]
fn capsule_message() {
    let bytes = hex(
        "00000000 02 00 18 00 0000002a 0029 00 00 101112131415161718191a1b1c1d1e1f \
         0005 0000 4500000102",
    );
    let path = PathId(
        *hex("101112131415161718191a1b1c1d1e1f")
            .first_chunk()
            .unwrap(),
    );
    let mut out = bytes::BytesMut::new();
    encode_capsule_into(&mut out, &path, 42, &[0x45, 0, 0, 1, 2]).unwrap();
    assert_eq!(&out[..], &bytes[..]);
    let c = CapsuleRef::decode(&bytes).unwrap();
    assert_eq!(c.payload, [0x45, 0, 0, 1, 2]);
    assert_eq!(c.sequence, 42);
    assert_eq!(c.path_id, path);
}

#[test]
fn registration_response_with_observed_address() {
    let bytes = hex(
        "01020304 02 00 07 00 00000001 0034 03 00 00112233445566778899aabbccddeeff \
         00 01 000000000000 04 00 7530 cb007109 \
         01 000000",
    );
    let m = Message::new(RegistrationResponse { nat: true })
        .with_transaction_id(TransactionId(0x0102_0304))
        .with_sequence(1)
        .with_id(
            *hex("00112233445566778899aabbccddeeff")
                .first_chunk()
                .unwrap(),
        )
        .with_extension(Extension::ObservedAddress(
            "203.0.113.9:30000".parse().unwrap(),
        ));
    assert_eq!(m.encode().unwrap(), bytes);
    assert_eq!(Message::decode(&bytes).unwrap(), m);
    assert_eq!(
        m.observed_address(),
        Some("203.0.113.9:30000".parse().unwrap())
    );
}

#[test]
fn node_information_response_entry() {
    // Header (length 0x53 = 32 + 4 + 32 + 11 + 4), Entry Count 1, Padding, then one
    // entry: FQDN Len 11, Device ID Len 4, MAC, Auth Type 2, Flags (IPv6 on), vIPv4,
    // vIPv6, FQDN, Device ID.
    let mut want = hex(
        "00000001 02 00 10 00 00000000 0053 00 00 00000000000000000000000000000000 \
         0001 0000 \
         000b 0004 020000000001 02 01 64400005 fd000000000000000000000000000005",
    );
    want.extend_from_slice(b"cam.example");
    want.extend_from_slice(b"dev1");
    assert_eq!(want.len(), 0x53);
    let m = Message::new(NodeInformation {
        general_nodes: vec![GeneralNode {
            fqdn: fqdn("cam.example"),
            device_id: "dev1".into(),
            mac: "02:00:00:00:00:01".parse().unwrap(),
            auth_type: AuthType::Certificate,
            virtual_ipv4: ip4("100.64.0.5"),
            virtual_ipv6: ip6("fd00::5"),
            ipv6_enabled: true,
        }],
    })
    .with_transaction_id(TransactionId(1));
    assert_eq!(m.encode().unwrap(), want);
    assert_eq!(Message::decode(&want).unwrap(), m);
}
