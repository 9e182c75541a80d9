//! Data-plane microbenchmarks: Capsule Message encode/decode (one per TUN packet) and
//! the TRS's Destination CID parse (one per relayed datagram).
//!
//! `cargo bench -p cyphonic-proto --bench capsule`

use std::hint::black_box;

use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use cyphonic_proto::quic::{destination_cid, initial_dcid, relay_token_of, CID_LEN};
use cyphonic_proto::{
    encode_capsule_into, encode_capsule_to_slice, Capsule, CapsuleRef, Message, PathId, RelayToken,
    CAPSULE_OVERHEAD,
};

const SIZES: [usize; 2] = [64, 1400];

fn capsule(c: &mut Criterion) {
    let path = PathId([0x42; 16]);
    let mut g = c.benchmark_group("capsule");
    for size in SIZES {
        let payload = vec![0x45u8; size];
        g.throughput(Throughput::Bytes(size as u64));

        let mut buf = BytesMut::with_capacity(CAPSULE_OVERHEAD + size);
        g.bench_function(format!("encode_into_bytesmut/{size}"), |b| {
            b.iter(|| {
                buf.clear();
                encode_capsule_into(&mut buf, &path, black_box(7), black_box(&payload)).unwrap();
                black_box(buf.len())
            })
        });

        let mut slice = vec![0u8; CAPSULE_OVERHEAD + size];
        g.bench_function(format!("encode_to_slice/{size}"), |b| {
            b.iter(|| {
                encode_capsule_to_slice(&mut slice, &path, black_box(7), black_box(&payload))
                    .unwrap()
            })
        });

        let wire = Message::new(Capsule {
            payload: payload.clone(),
        })
        .with_path_id(path)
        .encode()
        .unwrap();
        g.bench_function(format!("decode_ref/{size}"), |b| {
            b.iter(|| CapsuleRef::decode(black_box(&wire)).unwrap().payload.len())
        });
        g.bench_function(format!("decode_owned_message/{size}"), |b| {
            b.iter(|| Message::decode(black_box(&wire)).unwrap())
        });
    }
    g.finish();
}

fn dcid(c: &mut Criterion) {
    let token = RelayToken::from_u64(0x0102_0304_0506_0708);
    let cid = initial_dcid(token);
    let mut short = vec![0x41u8];
    short.extend_from_slice(&cid);
    short.resize(1200, 0);
    let mut long = vec![0xc3u8, 0, 0, 0, 1, CID_LEN as u8];
    long.extend_from_slice(&cid);
    long.push(CID_LEN as u8);
    long.extend_from_slice(&cid);
    long.resize(1200, 0);
    let mut g = c.benchmark_group("destination_cid");
    g.bench_function("short_header", |b| {
        b.iter(|| relay_token_of(destination_cid(black_box(&short)).unwrap()))
    });
    g.bench_function("long_header", |b| {
        b.iter(|| relay_token_of(destination_cid(black_box(&long)).unwrap()))
    });
    g.finish();
}

criterion_group!(benches, capsule, dcid);
criterion_main!(benches);
