//! The TRS's per-datagram forwarding decision (SPEC §7): the Destination CID's relay
//! token ([`relay_token_of`]) and the [`ForwardTable`] lookup ([`ForwardTable::decide`])
//! that `RelaySocket` runs on every received datagram before quinn sees it. The UDP
//! send of a forwarded datagram is not included.
//!
//! `cargo bench -p cyphonic-services --bench trs_forward`
//!
//! The table holds [`NODES`] nodes with a control connection, each bound to the next
//! (a ring: [`NODES`] bindings, two per node), with the default [`Limits`]. The
//! "flows" cases cycle through every binding so the lookups are not all one cache line.
//! The virtual clock advances by one packet interval at the default sustained rate
//! limit per packet, so the token bucket is refilled and charged on every hit, exactly
//! as under load, and never runs dry.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use cyphonic_proto::quic::{RelayCidGenerator, CID_LEN, QUIC_V1};
use cyphonic_proto::{NodeId, PathId, RelayToken};
use cyphonic_services::trs::socket::relay_token_of;
use cyphonic_services::trs::table::{Decision, DropReason, ForwardTable, Limits};
use quinn::ConnectionIdGenerator;

/// Nodes (and bindings) in the table.
const NODES: usize = 1000;
/// A typical full-size QUIC datagram on a 1400-byte-MTU path.
const PACKET_LEN: usize = 1350;
/// A client Initial is padded to at least 1200 bytes (RFC 9000 §14.1).
const INITIAL_LEN: usize = 1200;

fn token(i: usize) -> RelayToken {
    RelayToken::from_u64(0x5eed_0000_0000_0000 ^ (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15))
}

/// Observed address of node `i`'s control connection: IPv4 and IPv6 mixed.
fn addr(i: usize) -> SocketAddr {
    let ip = if i.is_multiple_of(2) {
        IpAddr::V4(Ipv4Addr::new(198, 51, 100, 1 + (i % 250) as u8))
    } else {
        IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, i as u16))
    };
    SocketAddr::new(ip, 40_000 + i as u16)
}

/// Deterministic filler for the encrypted part of a packet.
fn fill(buf: &mut Vec<u8>, len: usize, seed: usize) {
    let mut x = 0x2545_f491_4f6c_dd1du64 ^ seed as u64;
    while buf.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        buf.push(x as u8);
    }
}

/// A 1-RTT (short header) packet addressed to the endpoint holding `to`: first byte
/// with the fixed bit and a 4-byte packet number, a DCID issued by that endpoint's
/// [`RelayCidGenerator`], then ciphertext.
fn short_packet(to: RelayToken, seed: usize) -> Vec<u8> {
    let cid = RelayCidGenerator::new(to).generate_cid();
    let mut p = Vec::with_capacity(PACKET_LEN);
    p.push(0x43);
    p.extend_from_slice(&cid);
    fill(&mut p, PACKET_LEN, seed);
    p
}

/// A client Initial (long header) addressed to the endpoint holding `to`.
fn initial_packet(to: RelayToken, from: RelayToken) -> Vec<u8> {
    let dcid = cyphonic_proto::quic::initial_dcid(to);
    let scid = RelayCidGenerator::new(from).generate_cid();
    let mut p = vec![0xc3];
    p.extend_from_slice(&QUIC_V1.to_be_bytes());
    p.push(CID_LEN as u8);
    p.extend_from_slice(&dcid);
    p.push(CID_LEN as u8);
    p.extend_from_slice(&scid);
    fill(&mut p, INITIAL_LEN, 0);
    p
}

/// Node `i` and node `i + 1` (mod [`NODES`]) are bound.
fn table(now: Instant) -> ForwardTable {
    let mut t = ForwardTable::new(Limits::default());
    for i in 0..NODES {
        t.node_at(NodeId((i as u128).to_be_bytes()), addr(i));
    }
    for i in 0..NODES {
        let j = (i + 1) % NODES;
        t.bind(
            PathId((i as u128 | 1 << 64).to_be_bytes()),
            NodeId((i as u128).to_be_bytes()),
            token(i),
            NodeId((j as u128).to_be_bytes()),
            token(j),
            Duration::from_secs(24 * 3600),
            now,
        )
        .expect("bind");
    }
    t
}

/// One interval at the default sustained rate limit: the bucket refills one packet's
/// worth per packet.
fn packet_interval() -> Duration {
    Duration::from_secs_f64(1.0 / Limits::default().packets_per_sec)
}

/// The three kinds of datagram the TRS sees, as (source, datagram, expected decision).
struct Traffic {
    /// Relayed: node `i` sends to its bound neighbour `i + 1`; one per binding.
    forward: Vec<(SocketAddr, Vec<u8>, SocketAddr)>,
    /// The TRS's own traffic: a node's packet on its control connection, whose DCID
    /// (issued by the cloud endpoint) carries no node's token.
    own: (SocketAddr, Vec<u8>),
    /// A bound node's token from an address without a control connection.
    stranger: (SocketAddr, Vec<u8>),
}

fn traffic() -> Traffic {
    let forward = (0..NODES)
        .map(|i| {
            let j = (i + 1) % NODES;
            (addr(i), short_packet(token(j), i), addr(j))
        })
        .collect();
    let cloud_token = RelayToken::from_u64(0xc10d_c10d_c10d_c10d);
    Traffic {
        forward,
        own: (addr(0), short_packet(cloud_token, 1)),
        stranger: (
            "203.0.113.66:443".parse().unwrap(),
            short_packet(token(1), 2),
        ),
    }
}

/// Check the fixtures decide what each case claims to measure.
fn check(t: &mut ForwardTable, tr: &Traffic, now: Instant) {
    for (src, p, to) in &tr.forward {
        assert_eq!(
            t.decide(*src, relay_token_of(p), now),
            Decision::Forward(*to)
        );
    }
    let (src, p) = &tr.own;
    assert_eq!(t.decide(*src, relay_token_of(p), now), Decision::Own);
    let (src, p) = &tr.stranger;
    assert_eq!(
        t.decide(*src, relay_token_of(p), now),
        Decision::Drop(DropReason::UnknownSender)
    );
    assert_eq!(t.binding_count(), NODES);
}

fn parse(c: &mut Criterion) {
    let short = short_packet(token(7), 0);
    let initial = initial_packet(token(7), token(8));
    assert_eq!(relay_token_of(&short), Some(token(7)));
    assert_eq!(relay_token_of(&initial), Some(token(7)));
    let mut g = c.benchmark_group("trs/relay_token_of");
    g.throughput(Throughput::Elements(1));
    g.bench_function("short_header_1350B", |b| {
        b.iter(|| relay_token_of(black_box(&short)))
    });
    g.bench_function("initial_1200B", |b| {
        b.iter(|| relay_token_of(black_box(&initial)))
    });
    g.finish();
}

fn decide(c: &mut Criterion) {
    let start = Instant::now();
    let step = packet_interval();
    let mut t = table(start);
    let tr = traffic();
    check(&mut t, &tr, start);
    let fwd: Vec<(SocketAddr, RelayToken)> = tr
        .forward
        .iter()
        .map(|(src, p, _)| (*src, relay_token_of(p).unwrap()))
        .collect();
    let own = (tr.own.0, relay_token_of(&tr.own.1));
    let stranger = (tr.stranger.0, relay_token_of(&tr.stranger.1));

    let mut g = c.benchmark_group(format!("trs/decide/{NODES}_nodes"));
    g.throughput(Throughput::Elements(1));
    let mut now = start;
    let (src, tok) = fwd[0];
    g.bench_function("forward_1_flow", |b| {
        b.iter(|| {
            now += step;
            t.decide(black_box(src), black_box(Some(tok)), now)
        })
    });
    let mut k = 0usize;
    g.bench_function(format!("forward_{NODES}_flows"), |b| {
        b.iter(|| {
            now += step;
            let (src, tok) = fwd[k];
            k = (k + 1) % fwd.len();
            t.decide(black_box(src), black_box(Some(tok)), now)
        })
    });
    g.bench_function("own_not_relay", |b| {
        b.iter(|| t.decide(black_box(own.0), black_box(own.1), now))
    });
    g.bench_function("drop_unknown_sender", |b| {
        b.iter(|| t.decide(black_box(stranger.0), black_box(stranger.1), now))
    });
    g.finish();
    // Still forwarding: the bucket never ran dry.
    assert!(matches!(
        t.decide(fwd[0].0, Some(fwd[0].1), now + step),
        Decision::Forward(_)
    ));
}

fn per_datagram(c: &mut Criterion) {
    let start = Instant::now();
    let step = packet_interval();
    let mut t = table(start);
    let tr = traffic();
    check(&mut t, &tr, start);

    let mut g = c.benchmark_group(format!("trs/datagram/{NODES}_nodes"));
    g.throughput(Throughput::Elements(1));
    let mut now = start;
    let (src, p, _) = &tr.forward[0];
    g.bench_function("forward_1_flow", |b| {
        b.iter(|| {
            now += step;
            t.decide(black_box(*src), relay_token_of(black_box(p)), now)
        })
    });
    let mut k = 0usize;
    g.bench_function(format!("forward_{NODES}_flows"), |b| {
        b.iter(|| {
            now += step;
            let (src, p, _) = &tr.forward[k];
            k = (k + 1) % tr.forward.len();
            t.decide(black_box(*src), relay_token_of(black_box(p)), now)
        })
    });
    let (src, p) = &tr.own;
    g.bench_function("own_not_relay", |b| {
        b.iter(|| t.decide(black_box(*src), relay_token_of(black_box(p)), now))
    });
    let (src, p) = &tr.stranger;
    g.bench_function("drop_unknown_sender", |b| {
        b.iter(|| t.decide(black_box(*src), relay_token_of(black_box(p)), now))
    });
    g.finish();
}

criterion_group!(benches, parse, decide, per_datagram);
criterion_main!(benches);
