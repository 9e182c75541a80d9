//! Loopback integration tests of the [`DnsServer`]: real UDP/TCP sockets on 127.0.0.1,
//! a test overlay resolver and a tiny real upstream DNS responder.

use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cyphonic_proto::Fqdn;
use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{Name, RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::task::JoinHandle;

use super::{DnsConfig, DnsServer, OverlayAnswer, OverlayError, OverlayResolver, ResolveFuture};

const CLIENT_WAIT: Duration = Duration::from_secs(8);
const UPSTREAM_ANSWER: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 80);

/// Overlay resolver backed by a map; counts calls; takes `delay` per call.
struct TestResolver {
    names: HashMap<String, Result<OverlayAnswer, OverlayError>>,
    calls: AtomicUsize,
    delay: Duration,
}

impl OverlayResolver for TestResolver {
    fn resolve(&self, name: Fqdn) -> ResolveFuture {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let r = self
            .names
            .get(name.as_str())
            .cloned()
            .unwrap_or(Err(OverlayError::NoSuchName));
        let delay = self.delay;
        Box::pin(async move {
            tokio::time::sleep(delay).await;
            r
        })
    }
}

fn resolver(delay: Duration) -> Arc<TestResolver> {
    let mut names = HashMap::new();
    names.insert(
        "cam1.cyphonic.internal".to_owned(),
        Ok(OverlayAnswer {
            ipv4: Some(Ipv4Addr::new(100, 64, 0, 7)),
            ipv6: Some("fd00::7".parse::<Ipv6Addr>().unwrap()),
        }),
    );
    names.insert(
        "sleepy.cyphonic.internal".to_owned(),
        Err(OverlayError::Unreachable("offline".into())),
    );
    Arc::new(TestResolver {
        names,
        calls: AtomicUsize::new(0),
        delay,
    })
}

/// A real upstream: answers every query over UDP and TCP with one A record, or never
/// answers at all (`silent`). Dropping it stops it.
struct Upstream {
    addr: SocketAddr,
    queries: Arc<AtomicUsize>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn upstream_answer(q: &[u8]) -> Option<Vec<u8>> {
    let m = Message::from_vec(q).ok()?;
    let mut r = Message::response(m.metadata.id, OpCode::Query);
    r.metadata.recursion_desired = m.metadata.recursion_desired;
    r.metadata.recursion_available = true;
    let query = m.queries.first()?.clone();
    r.answers.push(Record::from_rdata(
        query.name().clone(),
        300,
        RData::A(A(UPSTREAM_ANSWER)),
    ));
    r.queries.push(query);
    r.to_vec().ok()
}

async fn upstream(silent: bool) -> Upstream {
    let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = udp.local_addr().unwrap();
    let tcp = TcpListener::bind(addr).await.unwrap();
    let queries = Arc::new(AtomicUsize::new(0));
    let qc = queries.clone();
    let u = tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        while let Ok((n, peer)) = udp.recv_from(&mut buf).await {
            qc.fetch_add(1, Ordering::SeqCst);
            if silent {
                continue;
            }
            if let Some(r) = upstream_answer(&buf[..n]) {
                let _ = udp.send_to(&r, peer).await;
            }
        }
    });
    let qc = queries.clone();
    let t = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((mut s, _)) = tcp.accept().await {
            if silent {
                held.push(s);
                continue;
            }
            let qc = qc.clone();
            tokio::spawn(async move {
                let mut len = [0u8; 2];
                if s.read_exact(&mut len).await.is_err() {
                    return;
                }
                let mut q = vec![0u8; usize::from(u16::from_be_bytes(len))];
                if s.read_exact(&mut q).await.is_err() {
                    return;
                }
                qc.fetch_add(1, Ordering::SeqCst);
                if let Some(r) = upstream_answer(&q) {
                    let mut out = (r.len() as u16).to_be_bytes().to_vec();
                    out.extend_from_slice(&r);
                    let _ = s.write_all(&out).await;
                }
            });
        }
    });
    Upstream {
        addr,
        queries,
        tasks: vec![u, t],
    }
}

async fn start(
    upstreams: Vec<SocketAddr>,
    res: Arc<TestResolver>,
    timeout: Duration,
) -> (DnsServer, SocketAddr) {
    let mut cfg = DnsConfig::new(
        vec!["127.0.0.1:0".parse().unwrap()],
        Fqdn::new("cyphonic.internal").unwrap(),
        upstreams,
    );
    cfg.overlay_timeout = timeout;
    let srv = DnsServer::start(cfg, res).await.unwrap();
    let addr = srv.local_addrs()[0];
    assert_ne!(addr.port(), 0);
    (srv, addr)
}

fn query(id: u16, name: &str, rt: RecordType) -> Vec<u8> {
    let mut m = Message::new(id, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), rt));
    m.to_vec().unwrap()
}

async fn ask_raw(server: SocketAddr, bytes: &[u8]) -> Option<Vec<u8>> {
    let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    s.send_to(bytes, server).await.unwrap();
    let mut buf = vec![0u8; 65535];
    match tokio::time::timeout(CLIENT_WAIT, s.recv_from(&mut buf)).await {
        Ok(Ok((n, from))) => {
            assert_eq!(from, server);
            Some(buf[..n].to_vec())
        }
        _ => None,
    }
}

async fn ask(server: SocketAddr, id: u16, name: &str, rt: RecordType) -> Message {
    let r = ask_raw(server, &query(id, name, rt))
        .await
        .expect("an answer");
    let m = Message::from_vec(&r).unwrap();
    assert_eq!(m.metadata.id, id);
    assert_eq!(m.metadata.message_type, MessageType::Response);
    m
}

async fn ask_tcp(server: SocketAddr, queries: &[Vec<u8>]) -> Vec<Message> {
    let mut s = TcpStream::connect(server).await.unwrap();
    for q in queries {
        let mut out = (q.len() as u16).to_be_bytes().to_vec();
        out.extend_from_slice(q);
        s.write_all(&out).await.unwrap();
    }
    let mut answers = Vec::new();
    for _ in queries {
        let frame = tokio::time::timeout(CLIENT_WAIT, async {
            let mut len = [0u8; 2];
            s.read_exact(&mut len).await?;
            let mut body = vec![0u8; usize::from(u16::from_be_bytes(len))];
            s.read_exact(&mut body).await?;
            Ok::<_, std::io::Error>(body)
        })
        .await
        .expect("tcp answer in time")
        .unwrap();
        answers.push(Message::from_vec(&frame).unwrap());
    }
    answers
}

fn a_of(m: &Message) -> Vec<Ipv4Addr> {
    m.answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(a.0),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn overlay_answers_and_cache() {
    let res = resolver(Duration::ZERO);
    let (_srv, addr) = start(vec![], res.clone(), Duration::from_secs(5)).await;
    let m = ask(addr, 1, "CAM1.cyphonic.internal.", RecordType::A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert!(m.metadata.authoritative);
    assert_eq!(a_of(&m), vec![Ipv4Addr::new(100, 64, 0, 7)]);
    let m = ask(addr, 2, "cam1.cyphonic.internal", RecordType::AAAA).await;
    assert_eq!(m.answers.len(), 1);
    assert!(matches!(m.answers[0].data, RData::AAAA(_)));
    let m = ask(addr, 3, "cam1.cyphonic.internal.", RecordType::MX).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert!(m.answers.is_empty());
    // Three queries, one resolve: the rest came from the cache.
    assert_eq!(res.calls.load(Ordering::SeqCst), 1);
    let m = ask(addr, 4, "sleepy.cyphonic.internal.", RecordType::A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
    let m = ask(addr, 5, "cyphonic.internal.", RecordType::A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    // No upstreams: other names are refused.
    let m = ask(addr, 6, "example.com.", RecordType::A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::Refused);
}

#[tokio::test]
async fn nxdomain_is_fast_and_cached_briefly() {
    let res = resolver(Duration::ZERO);
    let (_srv, addr) = start(vec![], res.clone(), Duration::from_secs(5)).await;
    let t = Instant::now();
    let m = ask(addr, 9, "ghost.cyphonic.internal.", RecordType::A).await;
    assert!(t.elapsed() < Duration::from_secs(1));
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    assert!(m.metadata.authoritative);
    let m = ask(addr, 10, "ghost.cyphonic.internal.", RecordType::AAAA).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    assert_eq!(res.calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn concurrent_queries_share_one_resolve() {
    let res = resolver(Duration::from_millis(300));
    let (_srv, addr) = start(vec![], res.clone(), Duration::from_secs(5)).await;
    let mut joins = Vec::new();
    for i in 0..20u16 {
        joins.push(tokio::spawn(async move {
            ask(addr, 100 + i, "cam1.cyphonic.internal.", RecordType::A).await
        }));
    }
    for (i, j) in joins.into_iter().enumerate() {
        let m = j.await.unwrap();
        assert_eq!(m.metadata.id, 100 + i as u16);
        assert_eq!(a_of(&m), vec![Ipv4Addr::new(100, 64, 0, 7)]);
    }
    assert_eq!(res.calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn slow_overlay_lookup_times_out_to_servfail() {
    let res = resolver(Duration::from_secs(30));
    let (_srv, addr) = start(vec![], res.clone(), Duration::from_millis(300)).await;
    let t = Instant::now();
    let m = ask(addr, 11, "cam1.cyphonic.internal.", RecordType::A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
    assert!(t.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn other_names_are_forwarded_over_udp_and_tcp() {
    let up = upstream(false).await;
    let res = resolver(Duration::ZERO);
    let (srv, addr) = start(vec![up.addr], res.clone(), Duration::from_secs(5)).await;
    let m = ask(addr, 0xbeef, "www.example.com.", RecordType::A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert!(!m.metadata.authoritative);
    assert_eq!(a_of(&m), vec![UPSTREAM_ANSWER]);
    assert_eq!(
        m.queries[0].name(),
        &Name::from_ascii("www.example.com.").unwrap()
    );
    assert_eq!(up.queries.load(Ordering::SeqCst), 1);
    // TCP: one forwarded and one overlay query pipelined on one connection.
    let answers = ask_tcp(
        addr,
        &[
            query(0x0a0a, "tcp.example.net.", RecordType::A),
            query(0x0b0b, "cam1.cyphonic.internal.", RecordType::A),
        ],
    )
    .await;
    let by_id: HashMap<u16, &Message> = answers.iter().map(|m| (m.metadata.id, m)).collect();
    assert_eq!(a_of(by_id[&0x0a0a]), vec![UPSTREAM_ANSWER]);
    assert_eq!(a_of(by_id[&0x0b0b]), vec![Ipv4Addr::new(100, 64, 0, 7)]);
    assert_eq!(up.queries.load(Ordering::SeqCst), 2);
    assert_eq!(res.calls.load(Ordering::SeqCst), 1);
    drop(srv);
}

#[tokio::test]
async fn dead_upstream_is_skipped_and_all_dead_is_servfail() {
    let dead = upstream(true).await;
    let good = upstream(false).await;
    let (_srv, addr) = start(
        vec![dead.addr, good.addr],
        resolver(Duration::ZERO),
        Duration::from_secs(5),
    )
    .await;
    let t = Instant::now();
    let m = ask(addr, 21, "a.example.com.", RecordType::A).await;
    assert_eq!(a_of(&m), vec![UPSTREAM_ANSWER]);
    assert!(t.elapsed() >= super::UPSTREAM_TIMEOUT);
    assert_eq!(dead.queries.load(Ordering::SeqCst), 1);
    assert_eq!(good.queries.load(Ordering::SeqCst), 1);

    let (_srv2, addr2) = start(
        vec![dead.addr],
        resolver(Duration::ZERO),
        Duration::from_secs(5),
    )
    .await;
    let m = ask(addr2, 22, "b.example.com.", RecordType::A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
}

#[tokio::test]
async fn garbage_does_not_break_the_server() {
    let up = upstream(false).await;
    let (_srv, addr) = start(
        vec![up.addr],
        resolver(Duration::ZERO),
        Duration::from_secs(5),
    )
    .await;
    let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    // Short junk and responses are dropped; full-header junk gets FORMERR.
    s.send_to(b"x", addr).await.unwrap();
    s.send_to(&[0u8; 0], addr).await.unwrap();
    let mut resp = Message::from_vec(&query(5, "example.com.", RecordType::A)).unwrap();
    resp.metadata.message_type = MessageType::Response;
    s.send_to(&resp.to_vec().unwrap(), addr).await.unwrap();
    let mut junk = vec![0x77, 0x88, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0];
    junk.extend_from_slice(&[0xc0; 40]);
    s.send_to(&junk, addr).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let (n, _) = tokio::time::timeout(CLIENT_WAIT, s.recv_from(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let m = Message::from_vec(&buf[..n]).unwrap();
    assert_eq!(m.metadata.id, 0x7788);
    assert_eq!(m.metadata.response_code, ResponseCode::FormErr);
    // Only the FORMERR came back (the dropped ones produced nothing).
    assert!(
        tokio::time::timeout(Duration::from_millis(200), s.recv_from(&mut buf))
            .await
            .is_err()
    );
    // A TCP connection sending a bogus length and hanging up does no harm either.
    let mut t = TcpStream::connect(addr).await.unwrap();
    t.write_all(&[0xff, 0xff, 1, 2, 3]).await.unwrap();
    drop(t);
    let m = ask(addr, 23, "cam1.cyphonic.internal.", RecordType::A).await;
    assert_eq!(a_of(&m), vec![Ipv4Addr::new(100, 64, 0, 7)]);
    let m = ask(addr, 24, "example.com.", RecordType::A).await;
    assert_eq!(a_of(&m), vec![UPSTREAM_ANSWER]);
}

#[tokio::test]
async fn own_address_is_never_an_upstream() {
    // Bind a socket to learn a free port, free it, then listen there and list it as upstream.
    let probe = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let own = probe.local_addr().unwrap();
    drop(probe);
    let mut cfg = DnsConfig::new(
        vec![own],
        Fqdn::new("cyphonic.internal").unwrap(),
        vec![own],
    );
    cfg.overlay_timeout = Duration::from_secs(1);
    let Ok(srv) = DnsServer::start(cfg, resolver(Duration::ZERO)).await else {
        return; // port taken meanwhile by someone else: nothing to test
    };
    let m = ask(srv.local_addrs()[0], 25, "loop.example.", RecordType::A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::Refused);
}

#[tokio::test]
async fn drop_stops_the_server() {
    let (srv, addr) = start(vec![], resolver(Duration::ZERO), Duration::from_secs(5)).await;
    let _ = ask(addr, 26, "cam1.cyphonic.internal.", RecordType::A).await;
    drop(srv);
    // Give the runtime a moment to run the aborts, then the port must be free again.
    let mut freed = false;
    for _ in 0..50 {
        if UdpSocket::bind(addr).await.is_ok() && TcpListener::bind(addr).await.is_ok() {
            freed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(freed, "listeners still bound after drop");
}
