//! The peer-connection engine (node/src/engine.rs) between two real endpoints on
//! loopback, with certificates from a real CA: a dial and an accept, SPEC §4
//! transactions in both directions, datagrams, the oversize stream, and the two ways
//! a connection ends (an explicit close, and the last handle dropped).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use cyphonic_node::endpoint::{AcceptPeer, NodeEndpoint, TransportSettings};
use cyphonic_node::engine::{ConnHandler, PeerConn};
use cyphonic_pki::{Ca, Credentials, TrustAnchor};
use cyphonic_proto::framing::FrameError;
use cyphonic_proto::{Body, Flag, Fqdn, Message, NodeId, PathId};
use tokio::sync::mpsc;

struct Accepted(mpsc::UnboundedSender<PeerConn>);

impl AcceptPeer for Accepted {
    fn accepted(&self, conn: PeerConn) {
        let _ = self.0.send(conn);
    }
}

/// What a connection's handler saw.
#[derive(Debug)]
enum Seen {
    Datagram(Bytes),
    Message(Box<Result<Message, String>>),
    Closed(String),
}

struct Recorder(mpsc::UnboundedSender<Seen>);

impl ConnHandler for Recorder {
    fn datagrams(&self, datagrams: &mut Vec<Bytes>) {
        for d in datagrams.drain(..) {
            let _ = self.0.send(Seen::Datagram(d));
        }
    }
    fn stream_message(&self, message: Result<Message, FrameError>) {
        let _ = self
            .0
            .send(Seen::Message(Box::new(message.map_err(|e| e.to_string()))));
    }
    fn closed(&self, reason: &quinn::ConnectionError) {
        let _ = self.0.send(Seen::Closed(reason.to_string()));
    }
}

fn creds(ca: &mut Ca, name: &str) -> (Fqdn, Credentials) {
    let fqdn = Fqdn::new(&format!("{name}.cyphonic.internal")).unwrap();
    let issued = ca.issue_node(&fqdn, Some(NodeId::random()), 30).unwrap();
    let c = Credentials::from_der_and_key_pem(issued.cert_der, issued.key_pem.as_deref().unwrap())
        .unwrap();
    (fqdn, c)
}

async fn next(rx: &mut mpsc::UnboundedReceiver<Seen>) -> Seen {
    tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("the handler heard something within 5 s")
        .expect("handler alive")
}

/// Two endpoints, one dialing the other: (dialer's connection, acceptor's).
async fn pair() -> (Arc<NodeEndpoint>, Arc<NodeEndpoint>, PeerConn, PeerConn) {
    let dir = tempfile::tempdir().unwrap();
    let domain = Fqdn::new("cyphonic.internal").unwrap();
    let mut ca = Ca::init(&dir.path().join("ca"), &domain, 30).unwrap();
    let trust = TrustAnchor::from_ca_der(ca.cert_der().to_vec());
    let (server, server_creds) = creds(&mut ca, "server");
    let (_, client_creds) = creds(&mut ca, "client");
    let t = TransportSettings::default();
    let a = NodeEndpoint::bind("127.0.0.1:0".parse().unwrap(), trust.clone(), t).unwrap();
    let b = NodeEndpoint::bind("127.0.0.1:0".parse().unwrap(), trust, t).unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    b.add_identity(&server, server_creds, Arc::new(Accepted(tx)))
        .unwrap();
    let dialed = a
        .dial_peer(&client_creds, b.local_addr(), &server, None)
        .await
        .unwrap();
    let accepted = tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .unwrap()
        .unwrap();
    (a, b, dialed, accepted)
}

#[tokio::test]
async fn transactions_datagrams_and_the_oversize_stream() {
    let (_a, _b, client, server) = pair().await;
    assert_eq!(
        server.server_name().as_deref(),
        Some("server.cyphonic.internal")
    );
    assert!(client.peer_identity().is_some());
    assert!(client.max_datagram_size().unwrap_or(0) > 1000);

    // SPEC §4: one message per stream, answered on the same stream; either side asks.
    let answering = server.clone();
    let serve = tokio::spawn(async move {
        let mut served = 0;
        while let Some(r) = answering.next_request().await {
            let m = r.message.expect("well-formed request");
            r.reply.send(Some(&Message::response_to(
                &m,
                Flag::Ok,
                Body::KeepAliveAck,
            )));
            served += 1;
        }
        served
    });
    for i in 0..20u32 {
        let ka = Message::request(Body::KeepAlive).with_path_id(PathId::ZERO);
        let answer = client
            .transact(&ka, Duration::from_secs(5))
            .await
            .unwrap_or_else(|e| panic!("transaction {i}: {e}"));
        assert_eq!(answer.flag, Flag::Ok);
        assert!(matches!(answer.body, Body::KeepAliveAck));
        assert_eq!(answer.transaction_id, ka.transaction_id);
    }
    // The other direction: nobody serves the client's requests, so it times out.
    let r = server
        .transact(
            &Message::request(Body::KeepAlive),
            Duration::from_millis(300),
        )
        .await;
    assert!(
        r.is_err(),
        "an unanswered request ends in a timeout, not a hang"
    );

    // Datagrams both ways, in order, to whoever handles them.
    let (ctx, mut crx) = mpsc::unbounded_channel();
    let (stx, mut srx) = mpsc::unbounded_channel();
    client.set_handler(Arc::new(Recorder(ctx)));
    server.set_handler(Arc::new(Recorder(stx)));
    for i in 0..50u8 {
        client.send_datagram(Bytes::from(vec![i; 100])).unwrap();
    }
    for i in 0..50u8 {
        match next(&mut srx).await {
            Seen::Datagram(d) => assert_eq!(d, Bytes::from(vec![i; 100])),
            other => panic!("expected datagram {i}, got {other:?}"),
        }
    }
    server.send_datagram(Bytes::from_static(b"back")).unwrap();
    assert!(matches!(next(&mut crx).await, Seen::Datagram(d) if d == "back"));
    let too_big = Bytes::from(vec![0u8; 4000]);
    assert!(matches!(
        client.send_datagram(too_big),
        Err(quinn::SendDatagramError::TooLarge)
    ));

    // The oversize stream: whole messages back to back, one larger than a datagram.
    let big = Message::request(Body::Capsule(cyphonic_proto::body::Capsule {
        payload: vec![9u8; 3000],
    }));
    let small = Message::request(Body::KeepAlive);
    assert!(client.send_on_stream(Bytes::from(big.encode().unwrap())));
    assert!(client.send_on_stream(Bytes::from(small.encode().unwrap())));
    match next(&mut srx).await {
        Seen::Message(m) => assert_eq!(*m, Ok(big)),
        other => panic!("expected the capsule, got {other:?}"),
    }
    match next(&mut srx).await {
        Seen::Message(m) => assert_eq!(*m, Ok(small)),
        other => panic!("expected the keep-alive, got {other:?}"),
    }

    // An explicit close reaches the other side's handler, and ends its requests.
    client.close(quinn::VarInt::from_u32(0), b"done");
    assert!(client.close_reason().is_some());
    match next(&mut srx).await {
        Seen::Closed(why) => assert!(why.contains("closed by peer"), "{why}"),
        other => panic!("expected the close, got {other:?}"),
    }
    assert!(matches!(next(&mut crx).await, Seen::Closed(_)));
    let served = tokio::time::timeout(Duration::from_secs(5), serve)
        .await
        .expect("the serving loop ends with the connection")
        .unwrap();
    assert_eq!(served, 20);
    assert!(matches!(
        client.send_datagram(Bytes::from_static(b"late")),
        Err(quinn::SendDatagramError::ConnectionLost(_))
    ));
}

#[tokio::test]
async fn dropping_the_last_handle_closes_the_connection() {
    let (_a, _b, client, server) = pair().await;
    let seen = Arc::new(Mutex::new(None));
    let s = seen.clone();
    let watcher = tokio::spawn(async move {
        let why = server.closed().await;
        *s.lock().unwrap() = Some(why.to_string());
    });
    let copy = client.clone();
    drop(client);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        seen.lock().unwrap().is_none(),
        "a clone still holds the connection open"
    );
    drop(copy);
    tokio::time::timeout(Duration::from_secs(5), watcher)
        .await
        .expect("the peer sees the close within 5 s")
        .unwrap();
    assert!(seen
        .lock()
        .unwrap()
        .as_deref()
        .unwrap()
        .contains("closed by peer"));
}
