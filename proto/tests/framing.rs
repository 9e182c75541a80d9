//! Stream framing over tokio duplex pipes (quinn streams implement the same traits).

use std::time::Duration;

use cyphonic_proto::framing::frame_remaining;
use cyphonic_proto::*;
use tokio::io::{duplex, AsyncWriteExt};

fn ka(seq: u32) -> Message {
    Message::request(Body::KeepAlive)
        .with_sequence(seq)
        .with_node_id(NodeId([seq as u8; 16]))
}

fn route() -> Message {
    Message::request(DirectionRequest {
        application_id: ApplicationId::ZERO,
        path_id: PathId([1; 16]),
        target: DirectionTarget::Fqdn(Fqdn::new("peer.cyphonic.internal").unwrap()),
    })
}

#[tokio::test]
async fn messages_roundtrip_through_a_tiny_pipe() {
    // A 7-byte pipe forces every read and write to be partial.
    let (mut a, mut b) = duplex(7);
    let sent = vec![ka(0), route(), ka(2)];
    let to_send = sent.clone();
    let writer = tokio::spawn(async move {
        for m in &to_send {
            write_message(&mut a, m).await.unwrap();
        }
        a.shutdown().await.unwrap();
    });
    let mut got = Vec::new();
    loop {
        match read_message(&mut b, 4096).await {
            Ok(m) => got.push(m),
            Err(FrameError::Closed) => break,
            Err(e) => panic!("{e}"),
        }
    }
    writer.await.unwrap();
    assert_eq!(got, sent);
}

#[tokio::test]
async fn oversize_length_is_refused_before_reading_the_body() {
    let (mut a, mut b) = duplex(1024);
    let mut hdr = ka(1).encode().unwrap();
    hdr[12..14].copy_from_slice(&60_000u16.to_be_bytes());
    a.write_all(&hdr).await.unwrap();
    // The writer stays open and sends no body: a reader that tried to read 60 000
    // bytes would hang here.
    let r = tokio::time::timeout(Duration::from_secs(5), read_message(&mut b, 4096))
        .await
        .expect("refused without waiting for the body");
    match r {
        Err(FrameError::Malformed {
            header: Some(h),
            error,
        }) => {
            assert_eq!(
                error,
                DecodeError::MessageTooLarge {
                    declared: 60_000,
                    max: 4096
                }
            );
            assert_eq!(h.sequence, 1);
        }
        other => panic!("{other:?}"),
    }
    drop(a);
}

#[tokio::test]
async fn length_below_header_is_refused() {
    let (mut a, mut b) = duplex(1024);
    let mut hdr = ka(1).encode().unwrap();
    hdr[12..14].copy_from_slice(&10u16.to_be_bytes());
    a.write_all(&hdr).await.unwrap();
    let e = read_message(&mut b, 4096).await.unwrap_err();
    assert!(matches!(
        e,
        FrameError::Malformed {
            error: DecodeError::BadMessageLength { declared: 10 },
            ..
        }
    ));
}

#[tokio::test]
async fn eof_mid_header() {
    let (mut a, mut b) = duplex(1024);
    a.write_all(&ka(0).encode().unwrap()[..10]).await.unwrap();
    drop(a);
    let e = read_message(&mut b, 4096).await.unwrap_err();
    assert!(
        matches!(e, FrameError::UnexpectedEof { need: 32, got: 10 }),
        "{e:?}"
    );
    assert!(e.reply().is_none());
}

#[tokio::test]
async fn eof_mid_body() {
    let (mut a, mut b) = duplex(1024);
    let bytes = route().encode().unwrap();
    a.write_all(&bytes[..bytes.len() - 3]).await.unwrap();
    drop(a);
    let e = read_message(&mut b, 4096).await.unwrap_err();
    match e {
        FrameError::UnexpectedEof { need, got } => {
            assert_eq!(need, bytes.len());
            assert_eq!(got, bytes.len() - 3);
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn clean_close_is_closed() {
    let (a, mut b) = duplex(16);
    drop(a);
    assert!(matches!(
        read_message(&mut b, 4096).await,
        Err(FrameError::Closed)
    ));
}

#[tokio::test]
async fn malformed_body_keeps_the_header_for_the_reply() {
    let (mut a, mut b) = duplex(1024);
    let req = route().with_transaction_id(TransactionId(0x0bad_cafe));
    let mut bytes = req.encode().unwrap();
    bytes[32 + 35] = 1; // Certificate Len must be 0 in v2
    a.write_all(&bytes).await.unwrap();
    let e = read_message(&mut b, 4096).await.unwrap_err();
    assert_eq!(
        e.header().unwrap().transaction_id,
        TransactionId(0x0bad_cafe)
    );
    let reply = e.reply().unwrap();
    assert_eq!(reply.flag, Flag::Malformed);
    assert_eq!(reply.transaction_id, TransactionId(0x0bad_cafe));
    assert_eq!(reply.body, Body::Ack);
    // The stream is still usable: the reply goes back the other way.
    write_message(&mut b, &reply).await.unwrap();
    assert_eq!(read_message(&mut a, 4096).await.unwrap(), reply);
}

#[tokio::test]
async fn bad_version_is_refused_early() {
    let (mut a, mut b) = duplex(1024);
    let mut bytes = ka(0).encode().unwrap();
    bytes[4] = 1;
    a.write_all(&bytes[..32]).await.unwrap();
    let e = tokio::time::timeout(Duration::from_secs(5), read_message(&mut b, 4096))
        .await
        .unwrap()
        .unwrap_err();
    assert!(matches!(
        e,
        FrameError::Malformed {
            error: DecodeError::BadVersion(1),
            ..
        }
    ));
}

#[tokio::test]
async fn bundles() {
    // Small enough that the writer runs ahead of the reader in pieces, large enough
    // to hold what the reader never consumes (the tail of the refused bundle).
    let (mut a, mut b) = duplex(512);
    let sent = vec![ka(0), route(), ka(1)];
    let single = ka(9);
    let (s, one) = (sent.clone(), single.clone());
    let w = tokio::spawn(async move {
        write_bundle(&mut a, &s).await.unwrap();
        write_message(&mut a, &one).await.unwrap();
        write_bundle(&mut a, &s).await.unwrap();
        a
    });
    assert_eq!(read_bundle(&mut b, 4096, 8).await.unwrap(), sent);
    // A single message is a bundle of one.
    assert_eq!(read_bundle(&mut b, 4096, 8).await.unwrap(), vec![single]);
    // read_message refuses a bundle.
    let e = read_message(&mut b, 4096).await.unwrap_err();
    assert!(matches!(
        e,
        FrameError::Malformed {
            error: DecodeError::UnexpectedBundle { count: 2 },
            ..
        }
    ));
    drop(b);
    drop(w.await.unwrap());
}

#[tokio::test]
async fn bundle_limits_and_errors() {
    // More messages than the reader accepts.
    let (mut a, mut b) = duplex(4096);
    write_bundle(&mut a, &[ka(0), ka(1), ka(2)]).await.unwrap();
    let e = read_bundle(&mut b, 4096, 2).await.unwrap_err();
    assert!(matches!(
        e,
        FrameError::Malformed {
            error: DecodeError::BundleTooLarge { count: 3, max: 2 },
            ..
        }
    ));

    // A following message whose Count does not count down.
    let (mut a, mut b) = duplex(4096);
    let mut bytes = encode_bundle(&[ka(0), ka(1), ka(2)]).unwrap();
    bytes[32 + 7] = 5;
    a.write_all(&bytes).await.unwrap();
    let e = read_bundle(&mut b, 4096, 8).await.unwrap_err();
    assert!(matches!(
        e,
        FrameError::Malformed {
            error: DecodeError::BundleCountMismatch {
                expected: 1,
                got: 5
            },
            ..
        }
    ));

    // The stream ends after the first of three.
    let (mut a, mut b) = duplex(4096);
    let bytes = encode_bundle(&[ka(0), ka(1), ka(2)]).unwrap();
    a.write_all(&bytes[..32]).await.unwrap();
    drop(a);
    let e = read_bundle(&mut b, 4096, 8).await.unwrap_err();
    assert!(
        matches!(e, FrameError::UnexpectedEof { need: 32, got: 0 }),
        "{e:?}"
    );
}

#[tokio::test]
async fn write_refuses_unencodable_messages() {
    let (mut a, _b) = duplex(64);
    let m = Message::new(Body::RelayRequest(RelayBinding {
        path_id: PathId::ZERO,
        initiator: NodeId::ZERO,
        responder: NodeId::ZERO,
        lifetime_secs: 1,
    }));
    assert!(matches!(
        write_message(&mut a, &m).await,
        Err(FrameError::Encode(EncodeError::MissingExtension { .. }))
    ));
}

#[test]
fn sans_io_core() {
    let mut h: [u8; 32] = route().encode().unwrap()[..32].try_into().unwrap();
    let len = u16::from_be_bytes([h[12], h[13]]) as usize;
    assert_eq!(frame_remaining(&h, 4096), Ok(len - 32));
    assert_eq!(
        frame_remaining(&h, len - 1),
        Err(DecodeError::MessageTooLarge {
            declared: len as u16,
            max: len - 1
        })
    );
    // max_len above 65535 is capped.
    assert_eq!(frame_remaining(&h, usize::MAX), Ok(len - 32));
    h[12..14].copy_from_slice(&32u16.to_be_bytes());
    assert_eq!(frame_remaining(&h, 4096), Ok(0));
    h[12..14].copy_from_slice(&0u16.to_be_bytes());
    assert_eq!(
        frame_remaining(&h, 4096),
        Err(DecodeError::BadMessageLength { declared: 0 })
    );
    h[4] = 3;
    assert_eq!(frame_remaining(&h, 4096), Err(DecodeError::BadVersion(3)));
}
