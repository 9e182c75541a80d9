//! End to end with real quinn endpoints: both use [`RelayCidGenerator`], the client sets
//! its Initial DCID with [`initial_dcid`], and a UDP forwarder between them routes every
//! datagram *only* by the relay token in its Destination CID, as a TRS does (SPEC §7).
//! A CYPHONIC transaction and a Capsule in a DATAGRAM then cross it.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use cyphonic_proto::quic::*;
use cyphonic_proto::*;
use quinn_proto::{FixedLengthConnectionIdParser, PartialDecode};
use tokio::net::UdpSocket;

const SERVER_TOKEN: RelayToken = RelayToken([0x5e, 0x5e, 0x5e, 0x5e, 1, 2, 3, 4]);
const CLIENT_TOKEN: RelayToken = RelayToken([0xc1, 0xc1, 0xc1, 0xc1, 5, 6, 7, 8]);
const NAME: &str = "responder.cyphonic.internal";
const ALPN: &[u8] = b"cyphonic-peer/2";

fn endpoint_config(token: RelayToken) -> quinn::EndpointConfig {
    let mut c = quinn::EndpointConfig::default();
    c.cid_generator(move || Box::new(RelayCidGenerator::new(token)));
    c
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn configs() -> (quinn::ServerConfig, quinn::ClientConfig) {
    let ck = rcgen::generate_simple_self_signed(vec![NAME.to_owned()]).unwrap();
    let cert = ck.cert.der().clone();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(ck.signing_key.serialize_der().into());
    let mut server = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.clone()], key)
        .unwrap();
    server.alpn_protocols = vec![ALPN.to_vec()];
    let server = quinn::ServerConfig::with_crypto(Arc::new(
        quinn::crypto::rustls::QuicServerConfig::try_from(server).unwrap(),
    ));

    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert).unwrap();
    let mut client = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    client.alpn_protocols = vec![ALPN.to_vec()];
    let mut client = quinn::ClientConfig::new(Arc::new(
        quinn::crypto::rustls::QuicClientConfig::try_from(client).unwrap(),
    ));
    client.initial_dst_cid_provider(Arc::new(|| initial_dcid(SERVER_TOKEN)));
    (server, client)
}

#[derive(Default)]
struct Log {
    /// (routed to the server?, datagram)
    datagrams: Vec<(bool, Vec<u8>)>,
    unroutable: usize,
}

/// Forward by DCID relay token only: SERVER_TOKEN → server, CLIENT_TOKEN → the client's
/// address (learned from its first datagram).
async fn relay(sock: UdpSocket, server: SocketAddr, log: Arc<Mutex<Log>>) {
    let mut client: Option<SocketAddr> = None;
    let mut buf = vec![0u8; 65_536];
    loop {
        let Ok((n, from)) = sock.recv_from(&mut buf).await else {
            return;
        };
        let d = &buf[..n];
        if from != server {
            client = Some(from);
        }
        let to = match destination_cid(d).ok().and_then(relay_token_of) {
            Some(t) if t == SERVER_TOKEN => Some((true, server)),
            Some(t) if t == CLIENT_TOKEN => client.map(|c| (false, c)),
            _ => None,
        };
        match to {
            Some((to_server, addr)) => {
                log.lock().unwrap().datagrams.push((to_server, d.to_vec()));
                let _ = sock.send_to(d, addr).await;
            }
            None => log.lock().unwrap().unroutable += 1,
        }
    }
}

#[tokio::test]
async fn quinn_traffic_is_routable_by_relay_token() {
    let (server_cfg, client_cfg) = configs();
    let server = quinn::Endpoint::new(
        endpoint_config(SERVER_TOKEN),
        Some(server_cfg),
        std::net::UdpSocket::bind("127.0.0.1:0").unwrap(),
        Arc::new(quinn::TokioRuntime),
    )
    .unwrap();
    let client = quinn::Endpoint::new(
        endpoint_config(CLIENT_TOKEN),
        None,
        std::net::UdpSocket::bind("127.0.0.1:0").unwrap(),
        Arc::new(quinn::TokioRuntime),
    )
    .unwrap();
    let relay_sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let relay_addr = relay_sock.local_addr().unwrap();
    let log = Arc::new(Mutex::new(Log::default()));
    let relay_task = tokio::spawn(relay(relay_sock, server.local_addr().unwrap(), log.clone()));

    let path = PathId([0x77; 16]);
    let server_task = tokio::spawn(async move {
        let conn = server.accept().await.unwrap().await.unwrap();
        let (mut send, mut recv) = conn.accept_bi().await.unwrap();
        let req = read_message(&mut recv, 4096).await.unwrap();
        assert_eq!(req.body, Body::TunnelRequest);
        let resp = Message::response_to(&req, Flag::Ok, Body::TunnelResponse);
        write_message(&mut send, &resp).await.unwrap();
        send.finish().unwrap();
        let d = conn.read_datagram().await.unwrap();
        let c = CapsuleRef::decode(&d).unwrap();
        assert_eq!(c.path_id, path);
        let echo = c.payload.to_vec();
        let mut out = BytesMut::new();
        encode_capsule_into(&mut out, &path, 0, &echo).unwrap();
        conn.send_datagram(out.freeze()).unwrap();
        conn.closed().await;
        server
    });

    let run = async {
        let conn = client
            .connect_with(client_cfg, relay_addr, NAME)
            .unwrap()
            .await
            .unwrap();
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        let req = Message::request(Body::TunnelRequest).with_path_id(path);
        write_message(&mut send, &req).await.unwrap();
        send.finish().unwrap();
        let resp = read_message(&mut recv, 4096).await.unwrap();
        assert_eq!(resp.transaction_id, req.transaction_id);
        assert_eq!(resp.body, Body::TunnelResponse);
        let mut out = BytesMut::new();
        encode_capsule_into(&mut out, &path, 0, b"\x45 virtual packet").unwrap();
        conn.send_datagram(out.freeze()).unwrap();
        let back: Bytes = conn.read_datagram().await.unwrap();
        assert_eq!(
            CapsuleRef::decode(&back).unwrap().payload,
            b"\x45 virtual packet"
        );
        conn.close(0u32.into(), b"done");
        conn
    };
    let conn = tokio::time::timeout(Duration::from_secs(20), run)
        .await
        .expect("handshake and exchange through the CID relay");
    drop(conn);
    let server = tokio::time::timeout(Duration::from_secs(10), server_task)
        .await
        .unwrap()
        .unwrap();
    client.wait_idle().await;
    server.wait_idle().await;
    relay_task.abort();

    let log = log.lock().unwrap();
    assert_eq!(log.unroutable, 0, "every datagram carried a routable DCID");
    let (first_to_server, first) = &log.datagrams[0];
    assert!(*first_to_server);
    assert!(
        first[0] & 0x80 != 0,
        "the client's first packet is a long-header Initial"
    );
    assert_eq!(
        relay_token_of(destination_cid(first).unwrap()),
        Some(SERVER_TOKEN)
    );
    let short_to_server = log
        .datagrams
        .iter()
        .filter(|(s, d)| *s && d[0] & 0x80 == 0)
        .count();
    let short_to_client = log
        .datagrams
        .iter()
        .filter(|(s, d)| !*s && d[0] & 0x80 == 0)
        .count();
    assert!(
        short_to_server > 0 && short_to_client > 0,
        "1-RTT packets both ways"
    );
    // quinn-proto's own parser agrees on every recorded datagram.
    for (_, d) in log.datagrams.iter() {
        let (p, _) = PartialDecode::new(
            BytesMut::from(&d[..]),
            &FixedLengthConnectionIdParser::new(CID_LEN),
            &[QUIC_V1],
            true,
        )
        .unwrap();
        assert_eq!(&p.dst_cid()[..], destination_cid(d).unwrap());
    }
}
