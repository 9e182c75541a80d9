//! One test per typed error: each builds the exact malformed input and checks the
//! variant (and its fields) that decoding or encoding reports.

mod common;

use std::net::{Ipv4Addr, Ipv6Addr};

use common::hex;
use cyphonic_proto::*;

const B: usize = HEADER_LEN; // body offset when there are no extension headers

fn fqdn(s: &str) -> Fqdn {
    Fqdn::new(s).unwrap()
}

fn enc(m: &Message) -> Vec<u8> {
    m.encode().unwrap()
}

/// A header-only message of raw type `ty` with `body` appended and a correct length.
fn raw(ty: u8, flag: u8, next_opt: u8, body: &[u8]) -> Vec<u8> {
    let mut v = Header {
        transaction_id: TransactionId(0x1234_5678),
        version: 2,
        flag,
        msg_type: ty,
        length: (HEADER_LEN + body.len()) as u16,
        next_opt,
        id: [7; 16],
        ..Header::default()
    }
    .encode()
    .to_vec();
    v.extend_from_slice(body);
    v
}

fn login_response() -> LoginResponse {
    LoginResponse {
        cert_expiry: Date::new(2027, 1, 31),
        fqdn: fqdn("n1.cyphonic.internal"),
        nms_port: 443,
        virtual_ipv4: Ipv4Addr::new(100, 64, 0, 9),
        virtual_ipv6: "fd00::9".parse().unwrap(),
        nms_ipv4: Some(Ipv4Addr::new(192, 0, 2, 2)),
        nms_ipv6: None,
    }
}

fn route_direction(code: ProcessCode) -> RouteDirection {
    let end = |f: &str| PathEnd {
        fqdn: fqdn(f),
        nat_port: 1,
        nat_ipv4: None,
        nat_ipv6: None,
        real_ipv4: None,
        real_ipv6: None,
        virtual_ipv4: Ipv4Addr::new(100, 64, 0, 1),
        virtual_ipv6: Ipv6Addr::LOCALHOST,
    };
    RouteDirection {
        path_id: PathId([1; 16]),
        process_code: code,
        exec_mode: 0,
        general_node: false,
        initiator: end("a.x"),
        responder: end("b.x"),
        trs_ipv4: None,
        trs_ipv6: None,
        trs_port: 0,
        expiry: None,
    }
}

fn direction_request(target: DirectionTarget) -> Message {
    Message::new(DirectionRequest {
        application_id: ApplicationId::ZERO,
        path_id: PathId::ZERO,
        target,
    })
}

/// A Direction Request whose target text is `text` (bypassing the encoder).
fn direction_text(text: &[u8]) -> Vec<u8> {
    let mut body = vec![0u8; 32];
    body.extend_from_slice(&(text.len() as u16).to_be_bytes());
    body.extend_from_slice(&[0, 0]);
    body.extend_from_slice(text);
    raw(11, 0, 0, &body)
}

fn relay_ext() -> Extension {
    Extension::Relay(RelayTokens::own(RelayToken::from_u64(5)))
}

// ---------------------------------------------------------------- decode errors

#[test]
fn too_short() {
    assert_eq!(
        Message::decode(&[2; 31]),
        Err(DecodeError::TooShort {
            what: "Base Header",
            need: 32,
            got: 31
        })
    );
    // A Login Response body that stops inside its fixed part (length field consistent).
    let full = enc(&Message::new(login_response()));
    let mut cut = full[..B + 20].to_vec();
    cut[12..14].copy_from_slice(&((B + 20) as u16).to_be_bytes());
    assert!(matches!(
        Message::decode(&cut),
        Err(DecodeError::TooShort {
            what: "message body",
            need: 32,
            got: 20
        })
    ));
    // An FQDN length pointing past the end.
    let mut bad = full.clone();
    bad[B + 8..B + 10].copy_from_slice(&500u16.to_be_bytes());
    assert!(matches!(
        Message::decode(&bad),
        Err(DecodeError::TooShort {
            what: "message body",
            ..
        })
    ));
    // In a bundle, a Message Length longer than what is left.
    let mut b = enc(&Message::new(Body::KeepAlive));
    b[12..14].copy_from_slice(&40u16.to_be_bytes());
    assert_eq!(
        decode_bundle(&b),
        Err(DecodeError::TooShort {
            what: "message",
            need: 40,
            got: 32
        })
    );
}

#[test]
fn bad_message_length() {
    let mut b = enc(&Message::new(Body::KeepAlive));
    b[12..14].copy_from_slice(&31u16.to_be_bytes());
    assert_eq!(
        Message::decode(&b),
        Err(DecodeError::BadMessageLength { declared: 31 })
    );
}

#[test]
fn length_mismatch() {
    let mut b = enc(&Message::new(Body::KeepAlive));
    b.push(0);
    assert_eq!(
        Message::decode(&b),
        Err(DecodeError::LengthMismatch {
            declared: 32,
            actual: 33
        })
    );
    b.pop();
    b[12..14].copy_from_slice(&33u16.to_be_bytes());
    assert_eq!(
        Message::decode(&b),
        Err(DecodeError::LengthMismatch {
            declared: 33,
            actual: 32
        })
    );
}

#[test]
fn message_too_large() {
    let mut h = enc(&Message::new(Body::KeepAlive));
    h[12..14].copy_from_slice(&5000u16.to_be_bytes());
    let h: [u8; 32] = h[..32].try_into().unwrap();
    assert_eq!(
        framing::frame_remaining(&h, 4096),
        Err(DecodeError::MessageTooLarge {
            declared: 5000,
            max: 4096
        })
    );
    assert_eq!(framing::frame_remaining(&h, 5000), Ok(5000 - 32));
}

#[test]
fn bad_version() {
    for v in [0u8, 1, 3, 255] {
        let mut b = enc(&Message::new(Body::KeepAlive));
        b[4] = v;
        assert_eq!(Message::decode(&b), Err(DecodeError::BadVersion(v)));
        assert_eq!(decode_bundle(&b), Err(DecodeError::BadVersion(v)));
        assert_eq!(CapsuleRef::decode(&b), Err(DecodeError::BadVersion(v)));
    }
}

#[test]
fn unknown_type() {
    for t in [31u8, 100, 255] {
        assert_eq!(
            Message::decode(&raw(t, 0, 0, &[])),
            Err(DecodeError::UnknownType(t))
        );
    }
}

#[test]
fn unsupported_type() {
    for t in [0u8, 1, 5, 9, 10, 19, 20, 26] {
        let ty = MessageType::from_code(t).unwrap();
        assert_eq!(
            Message::decode(&raw(t, 0, 0, &[])),
            Err(DecodeError::UnsupportedType(ty))
        );
    }
}

#[test]
fn unexpected_type() {
    let b = enc(&Message::new(Body::KeepAlive));
    assert_eq!(
        CapsuleRef::decode(&b),
        Err(DecodeError::UnexpectedType {
            expected: MessageType::Capsule,
            got: MessageType::KeepAlive
        })
    );
}

#[test]
fn unknown_flag() {
    for f in [13u8, 31, 40, 255] {
        assert_eq!(
            Message::decode(&raw(8, f, 0, &[])),
            Err(DecodeError::UnknownFlag(f))
        );
    }
}

#[test]
fn bad_enum() {
    let cases: Vec<(Vec<u8>, &str, u32)> = vec![
        {
            let mut b = enc(&Message::new(LoginRequest::with_tls_certificate()));
            b[B + 16] = 3;
            (b, "Auth Type", 3)
        },
        {
            let mut b = enc(&Message::new(RegistrationRequest {
                application_port: 1,
                notification_type: NotificationType::None,
                node_ipv4: None,
                node_ipv6: None,
            })
            .with_extension(relay_ext()));
            b[B + 24 + 3] = 4;
            (b, "Notification Type", 4)
        },
        {
            let mut b = enc(&Message::new(RegistrationResponse { nat: true }));
            b[B] = 2;
            (b, "NAT Flag", 2)
        },
        {
            let mut b = enc(&Message::new(Body::RouteDirectionConfirmation(
                route_direction(ProcessCode::SameNat),
            )));
            b[B + 16] = 5;
            (b, "Process Code", 5)
        },
        {
            let mut b = enc(&Message::new(Body::RouteDirectionConfirmation(
                route_direction(ProcessCode::SameNat),
            )));
            b[B + 16] = 0;
            (b, "Process Code", 0)
        },
        {
            let mut b = enc(&Message::new(Body::RouteDirectionConfirmation(
                route_direction(ProcessCode::InitiatorDials),
            )));
            b[B + 19] = 2;
            (b, "General Node Flag", 2)
        },
        {
            let mut b = enc(&Message::new(NodeInformation {
                general_nodes: vec![GeneralNode {
                    fqdn: fqdn("g.x"),
                    device_id: String::new(),
                    mac: MacAddr([2, 0, 0, 0, 0, 1]),
                    auth_type: AuthType::Password,
                    virtual_ipv4: Ipv4Addr::UNSPECIFIED,
                    virtual_ipv6: Ipv6Addr::UNSPECIFIED,
                    ipv6_enabled: false,
                }],
            }));
            b[B + 4 + 10] = 0;
            (b, "General node Auth Type", 0)
        },
    ];
    for (b, field, value) in cases {
        assert_eq!(
            Message::decode(&b),
            Err(DecodeError::BadEnum { field, value }),
            "{field}"
        );
    }
}

#[test]
fn non_zero_reserved() {
    let mut b = enc(&Message::new(Body::KeepAlive));
    b[15] = 1;
    assert_eq!(
        Message::decode(&b),
        Err(DecodeError::NonZeroReserved {
            field: "Base Header Reserved"
        })
    );

    let mut b = enc(&Message::new(Capsule { payload: vec![1] }));
    b[B + 3] = 1;
    let e = DecodeError::NonZeroReserved {
        field: "Capsule Padding",
    };
    assert_eq!(Message::decode(&b), Err(e.clone()));
    assert_eq!(CapsuleRef::decode(&b), Err(e));

    let mut b = enc(&Message::new(RegistrationResponse { nat: false }));
    b[B + 2] = 1;
    assert_eq!(
        Message::decode(&b),
        Err(DecodeError::NonZeroReserved {
            field: "Registration Response Padding"
        })
    );

    let rb = RelayBinding {
        path_id: PathId::ZERO,
        initiator: NodeId::ZERO,
        responder: NodeId::ZERO,
        lifetime_secs: 60,
    };
    let mut b = enc(&Message::new(Body::RelayResponse(rb)));
    b[B + 55] = 1;
    assert_eq!(
        Message::decode(&b),
        Err(DecodeError::NonZeroReserved {
            field: "Relay Padding"
        })
    );

    let mut b = enc(&Message::new(EnrollRequest {
        device_id: "d".into(),
        secret: vec![1],
        csr: vec![2],
    }));
    b[B + 7] = 1;
    assert_eq!(
        Message::decode(&b),
        Err(DecodeError::NonZeroReserved {
            field: "Enroll Request Padding"
        })
    );

    let mut b = enc(&Message::new(Body::KeepAlive).with_extension(relay_ext()));
    b[B + 4] = 1;
    assert_eq!(
        Message::decode(&b),
        Err(DecodeError::NonZeroReserved {
            field: "Relay extension Reserved"
        })
    );

    let mut b = enc(&Message::new(Body::KeepAlive)
        .with_extension(Extension::ObservedAddress("192.0.2.1:1".parse().unwrap())));
    b[B + 9] = 1;
    assert_eq!(
        Message::decode(&b),
        Err(DecodeError::NonZeroReserved {
            field: "address entry Reserved"
        })
    );

    let mut b = enc(
        &Message::new(Body::KeepAlive).with_extension(Extension::ObservedAddress(
            "[2001:db8::1]:1".parse().unwrap(),
        )),
    );
    b[B + 8 + 23] = 1;
    assert_eq!(
        Message::decode(&b),
        Err(DecodeError::NonZeroReserved {
            field: "address entry padding"
        })
    );

    let mut b = enc(&Message::new(NodeInformation {
        general_nodes: vec![GeneralNode {
            fqdn: fqdn("g.x"),
            device_id: String::new(),
            mac: MacAddr::default(),
            auth_type: AuthType::Certificate,
            virtual_ipv4: Ipv4Addr::UNSPECIFIED,
            virtual_ipv6: Ipv6Addr::UNSPECIFIED,
            ipv6_enabled: true,
        }],
    }));
    b[B + 4 + 11] = 0x03;
    assert_eq!(
        Message::decode(&b),
        Err(DecodeError::NonZeroReserved {
            field: "General node Flags"
        })
    );
}

#[test]
fn obsolete_fields() {
    let lr = enc(&Message::new(login_response()));
    let mut b = lr.clone();
    b[B..B + 2].copy_from_slice(&[0, 4]); // AES256GCM in v1
    assert_eq!(
        Message::decode(&b),
        Err(DecodeError::ObsoleteField {
            field: "Cipher Type",
            value: 4,
            expected: 0xffff
        })
    );
    let mut b = lr;
    b[B + 3] = 16;
    assert_eq!(
        Message::decode(&b),
        Err(DecodeError::ObsoleteField {
            field: "Common Key Len",
            value: 16,
            expected: 0
        })
    );

    let mut b = enc(&direction_request(DirectionTarget::Fqdn(fqdn("b.x"))));
    b[B + 35] = 1;
    assert_eq!(
        Message::decode(&b),
        Err(DecodeError::ObsoleteField {
            field: "Certificate Len",
            value: 1,
            expected: 0
        })
    );

    let rd = enc(&Message::new(Body::RouteDirectionConfirmation(
        route_direction(ProcessCode::InitiatorDials),
    )));
    for (off, field, expected) in [
        (164, "Tunnel Key Cipher Type", 0xffffu32),
        (166, "Tunnel Key Len", 0),
        (168, "Temp Key Len", 0),
    ] {
        let mut b = rd.clone();
        b[B + off..B + off + 2].copy_from_slice(&[0, 16]);
        assert_eq!(
            Message::decode(&b),
            Err(DecodeError::ObsoleteField {
                field,
                value: 16,
                expected
            })
        );
    }
}

#[test]
fn bad_utf8() {
    let mut b = enc(&Message::new(EnrollRequest {
        device_id: "ab".into(),
        secret: vec![],
        csr: vec![],
    }));
    b[B + 8] = 0xff;
    assert_eq!(
        Message::decode(&b),
        Err(DecodeError::BadUtf8 { field: "Device ID" })
    );
    assert_eq!(
        Message::decode(&direction_text(&[0xc3, 0x28])),
        Err(DecodeError::BadUtf8 {
            field: "Direction Request FQDN"
        })
    );
    let mut b = enc(&Message::new(login_response()));
    let n = b.len();
    b[n - 1] = 0x80;
    assert_eq!(
        Message::decode(&b),
        Err(DecodeError::BadUtf8 { field: "FQDN" })
    );
}

#[test]
fn bad_fqdn() {
    assert_eq!(
        Message::decode(&direction_text(b"a..b")),
        Err(DecodeError::BadFqdn {
            field: "Direction Request FQDN",
            error: FqdnError::EmptyLabel
        })
    );
    assert_eq!(
        Message::decode(&direction_text(b"")),
        Err(DecodeError::BadFqdn {
            field: "Direction Request FQDN",
            error: FqdnError::Empty
        })
    );
    let mut b = enc(&Message::new(login_response()));
    let n = b.len();
    b[n - 1] = b'_';
    assert_eq!(
        Message::decode(&b),
        Err(DecodeError::BadFqdn {
            field: "FQDN",
            error: FqdnError::BadCharacter('_')
        })
    );
}

#[test]
fn non_canonical() {
    for text in [
        &b"B.example"[..],
        b"b.example.",
        b"FD00::1",
        b"0:0:0:0:0:0:0:1",
    ] {
        assert_eq!(
            Message::decode(&direction_text(text)),
            Err(DecodeError::NonCanonical {
                field: "Direction Request FQDN"
            }),
            "{}",
            String::from_utf8_lossy(text)
        );
    }
    // Canonical texts decode to the right target.
    let m = Message::decode(&direction_text(b"fd00::1")).unwrap();
    let Body::DirectionRequest(d) = m.body else {
        panic!()
    };
    assert_eq!(
        d.target,
        DirectionTarget::VirtualIpv6("fd00::1".parse().unwrap())
    );
    let m = Message::decode(&direction_text(b"100.64.0.7")).unwrap();
    let Body::DirectionRequest(d) = m.body else {
        panic!()
    };
    assert_eq!(
        d.target,
        DirectionTarget::VirtualIpv4(Ipv4Addr::new(100, 64, 0, 7))
    );
}

#[test]
fn bad_date() {
    let mut b = enc(&Message::new(login_response()));
    b[B + 4..B + 8].copy_from_slice(&[0x07, 0xea, 2, 30]);
    assert_eq!(
        Message::decode(&b),
        Err(DecodeError::BadDate {
            year: 2026,
            month: 2,
            day: 30
        })
    );
}

#[test]
fn trailing_bytes() {
    assert_eq!(
        Message::decode(&raw(8, 0, 0, &[0])),
        Err(DecodeError::TrailingBytes {
            what: "message body",
            extra: 1
        })
    );
    // Tunnel Request/Response bodies are empty in v2.
    assert_eq!(
        Message::decode(&raw(22, 0, 0, &[0; 4])),
        Err(DecodeError::TrailingBytes {
            what: "message body",
            extra: 4
        })
    );
    // Capsule whose Payload Length is shorter than the rest.
    let mut b = enc(&Message::new(Capsule {
        payload: vec![1, 2, 3],
    }));
    b[B + 1] = 2;
    assert_eq!(
        Message::decode(&b),
        Err(DecodeError::TrailingBytes {
            what: "message body",
            extra: 1
        })
    );
    assert_eq!(
        CapsuleRef::decode(&b),
        Err(DecodeError::TrailingBytes {
            what: "Capsule body",
            extra: 1
        })
    );
    // A fixed-size body with garbage after it.
    let mut body = vec![0u8; 4];
    body.push(9);
    assert_eq!(
        Message::decode(&raw(7, 0, 0, &body)),
        Err(DecodeError::TrailingBytes {
            what: "message body",
            extra: 1
        })
    );
    // Bytes after the last message of a bundle.
    let mut b = enc(&Message::new(Body::KeepAlive));
    b.extend_from_slice(&[1, 2]);
    assert_eq!(
        decode_bundle(&b),
        Err(DecodeError::TrailingBytes {
            what: "bundle",
            extra: 2
        })
    );
}

#[test]
fn extension_overrun() {
    assert_eq!(
        Message::decode(&raw(8, 0, 1, &[])),
        Err(DecodeError::ExtensionOverrun {
            ty: 1,
            need: 8,
            got: 0
        })
    );
    // Length says 2 units (24 bytes) but only 8 are there.
    assert_eq!(
        Message::decode(&raw(8, 0, 9, &[0, 2, 0, 0, 0, 0, 0, 0])),
        Err(DecodeError::ExtensionOverrun {
            ty: 9,
            need: 24,
            got: 8
        })
    );
    // The capsule path walks the chain with the same checks.
    assert_eq!(
        CapsuleRef::decode(&raw(24, 0, 9, &[0, 2, 0, 0, 0, 0, 0, 0])),
        Err(DecodeError::ExtensionOverrun {
            ty: 9,
            need: 24,
            got: 8
        })
    );
}

#[test]
fn too_many_extensions() {
    // Nine chained unknown extension headers (type 9 pointing to 9 … then 0).
    let mut body = Vec::new();
    for i in 0..9 {
        body.extend_from_slice(&[if i < 8 { 9 } else { 0 }, 0, 0, 0, 0, 0, 0, 0]);
    }
    assert_eq!(
        Message::decode(&raw(8, 0, 9, &body)),
        Err(DecodeError::TooManyExtensions { max: 8 })
    );
    // Eight are fine.
    let body8 = {
        let mut b = Vec::new();
        for i in 0..8 {
            b.extend_from_slice(&[if i < 7 { 9 } else { 0 }, 0, 0, 0, 0, 0, 0, 0]);
        }
        b
    };
    assert_eq!(
        Message::decode(&raw(8, 0, 9, &body8))
            .unwrap()
            .extensions
            .len(),
        8
    );
}

#[test]
fn duplicate_extension() {
    let mut b = enc(&Message::new(Body::KeepAlive).with_extension(relay_ext()));
    // Chain a second Relay: Next Opt of the first → 1, append a copy, fix the length.
    let ext = b[B..B + 24].to_vec();
    b[B] = 1;
    b.extend_from_slice(&ext);
    let len = b.len() as u16;
    b[12..14].copy_from_slice(&len.to_be_bytes());
    assert_eq!(
        Message::decode(&b),
        Err(DecodeError::DuplicateExtension { ty: 1 })
    );
}

#[test]
fn bad_extension() {
    // Relay with Length 1 instead of 2.
    assert_eq!(
        Message::decode(&raw(
            8,
            0,
            1,
            &[0, 1, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8]
        )),
        Err(DecodeError::BadExtension {
            ty: 1,
            reason: "Relay must be 24 bytes (Length 2)"
        })
    );
    // Observed Address with family 5.
    assert_eq!(
        Message::decode(&raw(
            8,
            0,
            3,
            &[0, 1, 0, 0, 0, 0, 0, 0, 5, 0, 0, 1, 1, 2, 3, 4]
        )),
        Err(DecodeError::BadExtension {
            ty: 3,
            reason: "address family is neither 4 nor 6"
        })
    );
    // Candidates: Count 1 (IPv4, 8 bytes) but Length 2 (16 bytes of entries).
    let mut c = vec![0, 2, 1, 0, 0, 0, 0, 0, 4, 0, 0, 1, 1, 2, 3, 4];
    c.extend_from_slice(&[0; 8]);
    assert_eq!(
        Message::decode(&raw(8, 0, 2, &c)),
        Err(DecodeError::BadExtension {
            ty: 2,
            reason: "Length does not match the content"
        })
    );
}

#[test]
fn missing_extension() {
    let reg = RegistrationRequest {
        application_port: 443,
        notification_type: NotificationType::None,
        node_ipv4: None,
        node_ipv6: None,
    };
    let b = raw(
        6,
        10,
        0,
        &enc(&Message::new(reg.clone()).with_extension(relay_ext()))[B + 24..],
    );
    assert_eq!(
        Message::decode(&b),
        Err(DecodeError::MissingExtension {
            ext: "Relay",
            msg: MessageType::RegistrationRequest
        })
    );
    let with = enc(
        &Message::new(Body::RouteDirectionToInitiator(route_direction(
            ProcessCode::ViaTrs,
        )))
        .with_extension(relay_ext()),
    );
    let b = raw(14, 0, 0, &with[B + 24..]);
    assert_eq!(
        Message::decode(&b),
        Err(DecodeError::MissingExtension {
            ext: "Relay",
            msg: MessageType::RouteDirectionToInitiator
        })
    );
    // Code 1 needs none.
    let b = enc(&Message::new(Body::RouteDirectionToInitiator(
        route_direction(ProcessCode::InitiatorDials),
    )));
    assert!(Message::decode(&b).is_ok());
}

#[test]
fn too_many_entries() {
    // Candidates Count 17.
    assert_eq!(
        Message::decode(&raw(8, 0, 2, &[0, 0, 17, 0, 0, 0, 0, 0])),
        Err(DecodeError::TooManyEntries {
            what: "Candidates extension",
            count: 17,
            max: 16
        })
    );
    // Node Information announcing 60000 entries in 4 bytes: refused before reserving.
    assert_eq!(
        Message::decode(&raw(16, 0, 0, &[0xea, 0x60, 0, 0])),
        Err(DecodeError::TooManyEntries {
            what: "Node Information",
            count: 60000,
            max: 0
        })
    );
}

#[test]
fn unexpected_bundle() {
    let mut b = enc(&Message::new(Body::KeepAlive));
    b[7] = 1;
    assert_eq!(
        Message::decode(&b),
        Err(DecodeError::UnexpectedBundle { count: 1 })
    );
    let mut c = enc(&Message::new(Capsule { payload: vec![] }));
    c[7] = 2;
    assert_eq!(
        CapsuleRef::decode(&c),
        Err(DecodeError::UnexpectedBundle { count: 2 })
    );
}

#[test]
fn bundle_count_mismatch() {
    let mut b = encode_bundle(&[
        Message::new(Body::KeepAlive),
        Message::new(Body::KeepAlive),
        Message::new(Body::KeepAlive),
    ])
    .unwrap();
    assert_eq!([b[7], b[32 + 7], b[64 + 7]], [2, 1, 0]);
    b[32 + 7] = 0;
    assert_eq!(
        decode_bundle(&b),
        Err(DecodeError::BundleCountMismatch {
            expected: 1,
            got: 0
        })
    );
}

#[test]
fn bundle_too_large() {
    let mut b = enc(&Message::new(Body::KeepAlive));
    b[7] = 16;
    assert_eq!(
        decode_bundle(&b),
        Err(DecodeError::BundleTooLarge { count: 17, max: 16 })
    );
}

#[test]
fn every_decode_error_answers_flag_36() {
    assert_eq!(DecodeError::BadVersion(1).reply_flag(), Flag::Malformed);
    assert_eq!(
        DecodeError::UnsupportedType(MessageType::KeySharing).reply_flag(),
        Flag::Malformed
    );
}

// ---------------------------------------------------------------- error replies

#[test]
fn error_reply_echoes_what_could_be_read() {
    // A Login Request with a broken body: the header is still readable.
    let mut b = enc(&Message::new(LoginRequest::with_tls_certificate())
        .with_transaction_id(TransactionId(0xabcd_0001))
        .with_id([3; 16]));
    b[B + 16] = 9;
    let err = Message::decode(&b).unwrap_err();
    let h = Header::decode(&b).unwrap();
    let reply = Message::error_reply(&h, err.reply_flag());
    assert_eq!(reply.body, Body::Ack);
    assert_eq!(reply.flag, Flag::Malformed);
    assert_eq!(reply.transaction_id, TransactionId(0xabcd_0001));
    assert_eq!(reply.id, [3; 16]);
    // It is itself a valid message.
    assert_eq!(Message::decode(&enc(&reply)).unwrap(), reply);
    // Not even a header: salvage the Transaction ID from a 5-byte stub.
    let stub = hex("abcd0001 02");
    assert!(Header::decode(&stub).is_err());
    let reply = Message::error_reply(&Header::salvage(&stub), Flag::Malformed);
    assert_eq!(reply.transaction_id, TransactionId(0xabcd_0001));
    assert_eq!(reply.id, [0; 16]);
}

#[test]
fn response_to_echoes_transaction_and_id() {
    let req = Message::request(Body::HolePunching)
        .with_flag(Flag::Optimization)
        .with_path_id(PathId([4; 16]));
    let resp = Message::response_to(&req, Flag::Optimization, Body::Ack);
    assert_eq!(resp.transaction_id, req.transaction_id);
    assert_eq!(resp.path_id(), PathId([4; 16]));
    assert_eq!(
        resp.message_type(),
        MessageType::HolePunching.response_type().unwrap()
    );
}

// ---------------------------------------------------------------- encode errors

#[test]
fn encode_field_too_long() {
    let m = Message::new(EnrollRequest {
        device_id: "x".repeat(70_000),
        secret: vec![],
        csr: vec![],
    });
    assert_eq!(
        m.encode(),
        Err(EncodeError::FieldTooLong {
            field: "Device ID",
            len: 70_000,
            max: 65_535
        })
    );
    let big = vec![0u8; MAX_CAPSULE_PAYLOAD + 1];
    let e = EncodeError::FieldTooLong {
        field: "Capsule payload",
        len: MAX_CAPSULE_PAYLOAD + 1,
        max: MAX_CAPSULE_PAYLOAD,
    };
    assert_eq!(
        Message::new(Capsule {
            payload: big.clone()
        })
        .encode(),
        Err(e.clone())
    );
    let mut out = bytes::BytesMut::new();
    assert_eq!(
        encode_capsule_into(&mut out, &PathId::ZERO, 0, &big),
        Err(e)
    );
    assert!(out.is_empty());
    // The largest payload fits exactly.
    let max = vec![0u8; MAX_CAPSULE_PAYLOAD];
    let b = Message::new(Capsule { payload: max }).encode().unwrap();
    assert_eq!(b.len(), 65_535);
    assert!(Message::decode(&b).is_ok());
}

#[test]
fn encode_message_too_long() {
    let m = Message::new(EnrollResponse {
        certificate: vec![1; 40_000],
        ca_certificate: vec![2; 40_000],
    });
    assert_eq!(
        m.encode(),
        Err(EncodeError::MessageTooLong {
            len: 32 + 4 + 80_000
        })
    );
    // encode_into leaves the buffer as it was.
    let mut out = vec![9u8; 3];
    assert!(m.encode_into(&mut out).is_err());
    assert_eq!(out, [9, 9, 9]);
}

#[test]
fn encode_missing_extension() {
    let m = Message::new(Body::RelayRequest(RelayBinding {
        path_id: PathId::ZERO,
        initiator: NodeId::ZERO,
        responder: NodeId::ZERO,
        lifetime_secs: 1,
    }));
    assert_eq!(
        m.encode(),
        Err(EncodeError::MissingExtension {
            ext: "Relay",
            msg: MessageType::RelayRequest
        })
    );
    assert!(m.with_extension(relay_ext()).encode().is_ok());
}

#[test]
fn encode_duplicate_and_bad_extensions() {
    let m = Message::new(Body::KeepAlive)
        .with_extension(relay_ext())
        .with_extension(relay_ext());
    assert_eq!(m.encode(), Err(EncodeError::DuplicateExtension { ty: 1 }));
    let m = Message::new(Body::KeepAlive).with_extension(Extension::Unknown {
        ty: 2,
        data: vec![0; 6],
    });
    assert!(matches!(
        m.encode(),
        Err(EncodeError::BadExtension { ty: 2, .. })
    ));
    let m = Message::new(Body::KeepAlive).with_extension(Extension::Unknown {
        ty: 77,
        data: vec![0; 7],
    });
    assert!(matches!(
        m.encode(),
        Err(EncodeError::BadExtension { ty: 77, .. })
    ));
    let mut m = Message::new(Body::KeepAlive);
    for _ in 0..9 {
        m = m.with_extension(Extension::Unknown {
            ty: 77,
            data: vec![0; 6],
        });
    }
    assert_eq!(m.encode(), Err(EncodeError::TooManyExtensions { max: 8 }));
    let m = Message::new(Body::KeepAlive).with_extension(Extension::Candidates(vec![
        "192.0.2.1:1"
            .parse()
            .unwrap();
        17
    ]));
    assert_eq!(
        m.encode(),
        Err(EncodeError::TooManyEntries {
            what: "Candidates extension",
            count: 17,
            max: 16
        })
    );
}

#[test]
fn encode_bad_date() {
    let mut lr = login_response();
    lr.cert_expiry = Some(Date {
        year: 2026,
        month: 2,
        day: 30,
    });
    assert_eq!(
        Message::new(lr).encode(),
        Err(EncodeError::BadDate {
            year: 2026,
            month: 2,
            day: 30
        })
    );
}

#[test]
fn encode_ambiguous_target() {
    let m = direction_request(DirectionTarget::Fqdn(fqdn("1.2.3.4")));
    assert_eq!(
        m.encode(),
        Err(EncodeError::AmbiguousTarget("1.2.3.4".into()))
    );
}

#[test]
fn encode_bad_bundle_size() {
    assert_eq!(
        encode_bundle(&[]),
        Err(EncodeError::BadBundleSize { count: 0, max: 16 })
    );
    let many = vec![Message::new(Body::KeepAlive); 17];
    assert_eq!(
        encode_bundle(&many),
        Err(EncodeError::BadBundleSize { count: 17, max: 16 })
    );
    assert_eq!(
        decode_bundle(&encode_bundle(&many[..16]).unwrap())
            .unwrap()
            .len(),
        16
    );
}

#[test]
fn encode_buffer_too_small() {
    let mut buf = [0u8; 40];
    assert_eq!(
        encode_capsule_to_slice(&mut buf, &PathId::ZERO, 0, &[0; 5]),
        Err(EncodeError::BufferTooSmall { need: 41, got: 40 })
    );
    assert_eq!(
        encode_capsule_to_slice(&mut buf, &PathId::ZERO, 0, &[0; 4]),
        Ok(40)
    );
}
