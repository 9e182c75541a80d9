//! A real cloud in-process and a minimal node client for end-to-end tests of the
//! SPEC §6 sequences over real QUIC with real certificates, on loopback.
//!
//! Loopback fakes the network shapes route selection cares about: a node "behind
//! NAT" reports an address other than the one NMS observes, and nodes bind
//! different 127.0.0.x addresses to sit "behind different NATs".

#![allow(dead_code)]

use std::io::IoSliceMut;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use cyphonic_pki::quic::{self, ALPN_AS, ALPN_NMS, ALPN_PEER, ALPN_TRS};
use cyphonic_pki::{ClientAuth, Credentials, Role, TrustAnchor};
use cyphonic_proto::body::{
    DirectionRequest, DirectionTarget, EnrollRequest, LoginRequest, ProcessCode,
    RegistrationRequest,
};
use cyphonic_proto::quic::initial_dcid;
use cyphonic_proto::{
    ApplicationId, Body, Extension, Flag, Fqdn, Message, NodeId, PathId, RelayToken, RelayTokens,
};
use cyphonic_services::cloud::Cloud;
use cyphonic_services::config::CloudConfig;
use cyphonic_services::rpc;
use quinn::udp::{RecvMeta, Transmit};
use tokio::sync::mpsc;

pub const DOMAIN: &str = "cyphonic.internal";
pub const T: Duration = Duration::from_secs(5);

pub fn fqdn(name: &str) -> Fqdn {
    Fqdn::new(&format!("{name}.{DOMAIN}")).unwrap()
}

pub fn config(dir: &Path, listen: SocketAddr) -> CloudConfig {
    let mut cfg = CloudConfig {
        state_dir: dir.to_owned(),
        listen,
        ..CloudConfig::default()
    };
    cfg.timers.confirmation_timeout_ms = 2000;
    cfg
}

pub async fn start_cloud(dir: &Path) -> Cloud {
    Cloud::start(config(dir, "127.0.0.1:0".parse().unwrap()))
        .await
        .unwrap()
}

/// A new deployment in a temporary directory, serving on loopback.
pub async fn fresh_cloud() -> (tempfile::TempDir, PathBuf, Cloud) {
    let t = tempfile::tempdir().unwrap();
    let dir = state_dir(&t);
    let cloud = start_cloud(&dir).await;
    (t, dir, cloud)
}

/// Every datagram a node's socket sent and received, for byte-identity checks.
#[derive(Debug, Default)]
pub struct Recorder {
    pub sent: Mutex<Vec<(SocketAddr, Vec<u8>)>>,
    pub received: Mutex<Vec<(SocketAddr, Vec<u8>)>>,
}

#[derive(Debug)]
struct RecordingSocket {
    inner: Arc<dyn quinn::AsyncUdpSocket>,
    rec: Arc<Recorder>,
}

impl quinn::AsyncUdpSocket for RecordingSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn quinn::UdpPoller>> {
        self.inner.clone().create_io_poller()
    }
    fn try_send(&self, t: &Transmit) -> std::io::Result<()> {
        self.inner.try_send(t)?;
        let seg = t.segment_size.unwrap_or(t.contents.len()).max(1);
        let mut s = self.rec.sent.lock().unwrap();
        for chunk in t.contents.chunks(seg) {
            s.push((t.destination, chunk.to_vec()));
        }
        Ok(())
    }
    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<std::io::Result<usize>> {
        let r = self.inner.poll_recv(cx, bufs, meta);
        if let Poll::Ready(Ok(n)) = &r {
            let mut g = self.rec.received.lock().unwrap();
            for i in 0..*n {
                let m = meta[i];
                let stride = if m.stride == 0 { m.len } else { m.stride };
                for chunk in bufs[i][..m.len].chunks(stride) {
                    g.push((m.addr, chunk.to_vec()));
                }
            }
        }
        r
    }
    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.inner.local_addr()
    }
    fn max_transmit_segments(&self) -> usize {
        // One datagram per transmit keeps the record simple.
        1
    }
    fn max_receive_segments(&self) -> usize {
        self.inner.max_receive_segments()
    }
    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}

/// A minimal node: one endpoint, enrollment, login, registration, pushes, peers.
pub struct TestNode {
    pub name: String,
    pub fqdn: Fqdn,
    pub ep: quinn::Endpoint,
    pub token: RelayToken,
    pub trust: TrustAnchor,
    pub cloud: SocketAddr,
    pub creds: Option<Credentials>,
    pub node_id: NodeId,
    pub nms: Option<quinn::Connection>,
    pub trs: Arc<tokio::sync::Mutex<Option<quinn::Connection>>>,
    /// Pushes NMS sent on the standing connection.
    pub pushes: mpsc::UnboundedReceiver<Message>,
    push_tx: mpsc::UnboundedSender<Message>,
    /// Peer connections this node accepted (after Tunnel Request/Response).
    pub accepted: mpsc::UnboundedReceiver<quinn::Connection>,
    accepted_tx: mpsc::UnboundedSender<quinn::Connection>,
    /// Peer connections this node dialed because NMS told it to (Process Code 2).
    pub dialed: mpsc::UnboundedReceiver<quinn::Connection>,
    dialed_tx: mpsc::UnboundedSender<quinn::Connection>,
    pub rec: Arc<Recorder>,
    /// What the node reports at registration (None: its true local address).
    pub report: Option<SocketAddr>,
}

pub fn ca_trust(state_dir: &Path) -> TrustAnchor {
    TrustAnchor::load(&state_dir.join("ca/ca.crt"), None).unwrap()
}

impl TestNode {
    pub fn new(name: &str, bind: IpAddr, cloud: SocketAddr, state_dir: &Path) -> TestNode {
        let rec = Arc::new(Recorder::default());
        let sock = quic::wrap_socket(quic::bind_udp(SocketAddr::new(bind, 0)).unwrap()).unwrap();
        let sock: Arc<dyn quinn::AsyncUdpSocket> = Arc::new(RecordingSocket {
            inner: sock,
            rec: rec.clone(),
        });
        let token = RelayToken::random();
        let ep = quic::endpoint(sock, token, None).unwrap();
        let (push_tx, pushes) = mpsc::unbounded_channel();
        let (accepted_tx, accepted) = mpsc::unbounded_channel();
        let (dialed_tx, dialed) = mpsc::unbounded_channel();
        TestNode {
            name: name.into(),
            fqdn: fqdn(name),
            ep,
            token,
            trust: ca_trust(state_dir),
            cloud,
            creds: None,
            node_id: NodeId::ZERO,
            nms: None,
            trs: Arc::new(tokio::sync::Mutex::new(None)),
            pushes,
            push_tx,
            accepted,
            accepted_tx,
            dialed,
            dialed_tx,
            rec,
            report: None,
        }
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.ep.local_addr().unwrap()
    }

    pub fn client(&self, role: Role, alpn: &[u8], with_cert: bool) -> quinn::ClientConfig {
        let creds = if with_cert { self.creds.as_ref() } else { None };
        let tls = cyphonic_pki::client_config(creds, &self.trust, role, &[alpn]).unwrap();
        let mut cc = quinn::ClientConfig::new(Arc::new(
            quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap(),
        ));
        cc.transport_config(Arc::new(quic::signaling_transport(
            Some(Duration::from_secs(2)),
            Duration::from_secs(30),
        )));
        cc
    }

    pub async fn connect(&self, role: Role, alpn: &[u8], with_cert: bool) -> quinn::Connection {
        let name = format!("{}.{DOMAIN}", role.name());
        self.ep
            .connect_with(self.client(role, alpn, with_cert), self.cloud, &name)
            .unwrap()
            .await
            .unwrap()
    }

    /// Enroll Request on a connection without a certificate.
    pub async fn enroll_with(
        &mut self,
        device: &str,
        secret: &[u8],
        csr: Vec<u8>,
        key: &str,
    ) -> Message {
        let conn = self.connect(Role::As, ALPN_AS, false).await;
        let req = Message::request(Body::EnrollRequest(EnrollRequest {
            device_id: device.into(),
            secret: secret.to_vec(),
            csr,
        }));
        let resp = rpc::transact(&conn, &req, T).await.unwrap();
        if let (Flag::Ok, Body::EnrollResponse(e)) = (resp.flag, &resp.body) {
            let creds = Credentials::from_der_and_key_pem(e.certificate.clone(), key).unwrap();
            self.node_id = creds.identity().unwrap().node_id.unwrap();
            self.install(creds);
        }
        resp
    }

    pub async fn enroll(&mut self, token: &str) -> Message {
        let (csr, key) = cyphonic_pki::generate_csr(&self.fqdn).unwrap();
        let name = self.name.clone();
        self.enroll_with(&name, token.as_bytes(), csr, &key).await
    }

    /// Use these credentials and serve peer connections with them.
    pub fn install(&mut self, creds: Credentials) {
        let tls = cyphonic_pki::server_config_single(
            &creds,
            &self.trust,
            ClientAuth::Required,
            &[ALPN_PEER],
        )
        .unwrap();
        let sc = quinn::ServerConfig::with_crypto(Arc::new(
            quinn::crypto::rustls::QuicServerConfig::try_from(tls).unwrap(),
        ));
        self.ep.set_server_config(Some(sc));
        self.creds = Some(creds);
        let ep = self.ep.clone();
        let tx = self.accepted_tx.clone();
        tokio::spawn(async move {
            while let Some(inc) = ep.accept().await {
                let tx = tx.clone();
                tokio::spawn(async move {
                    let Ok(conn) = inc.await else { return };
                    let serving = conn.clone();
                    tokio::spawn(rpc::serve(serving, |m: Message| async move {
                        match m.body {
                            Body::TunnelRequest => {
                                Some(Message::response_to(&m, Flag::Ok, Body::TunnelResponse))
                            }
                            _ => Some(rpc::refusal(&m, Flag::Malformed)),
                        }
                    }));
                    let _ = tx.send(conn);
                });
            }
        });
    }

    pub async fn login(&self) -> Message {
        let conn = self.connect(Role::As, ALPN_AS, true).await;
        rpc::transact(
            &conn,
            &Message::request(LoginRequest::with_tls_certificate()),
            T,
        )
        .await
        .unwrap_or_else(|e| rpc::refusal(&Message::new(Body::Ack), flag_of(&e)))
    }

    fn registration(&self) -> Message {
        let report = self.report.unwrap_or_else(|| self.local_addr());
        let (v4, v6) = match report.ip() {
            IpAddr::V4(a) => (Some(a), None),
            IpAddr::V6(a) => (None, Some(a)),
        };
        Message::request(Body::RegistrationRequest(RegistrationRequest {
            application_port: report.port(),
            notification_type: Default::default(),
            node_ipv4: v4,
            node_ipv6: v6,
        }))
        .with_node_id(self.node_id)
        .with_extension(Extension::Relay(RelayTokens::own(self.token)))
    }

    /// Connect to NMS, serve its pushes, and register.
    pub async fn register(&mut self) -> Message {
        let conn = self.connect(Role::Nms, ALPN_NMS, true).await;
        self.nms = Some(conn.clone());
        let tx = self.push_tx.clone();
        let dialed = self.dialed_tx.clone();
        let me = PeerDialer::of(self);
        tokio::spawn(rpc::serve(conn.clone(), move |m: Message| {
            let tx = tx.clone();
            let me = me.clone();
            let dialed = dialed.clone();
            async move {
                let _ = tx.send(m.clone());
                match &m.body {
                    Body::RouteDirectionToResponder(rd) => {
                        if rd.process_code == ProcessCode::ViaTrs {
                            let ip = rd
                                .trs_ipv4
                                .map(IpAddr::V4)
                                .expect("TRS IPv4 in Route Direction");
                            me.ensure_trs(SocketAddr::new(ip, rd.trs_port)).await;
                        }
                        if rd.process_code == ProcessCode::ResponderDials {
                            let dial = m.candidates()[0];
                            let peer = rd.initiator.fqdn.clone();
                            let path = rd.path_id;
                            tokio::spawn(async move {
                                tokio::time::sleep(Duration::from_millis(50)).await;
                                if let Ok(c) = me.dial(dial, &peer, path, None).await {
                                    let _ = dialed.send(c);
                                }
                            });
                        }
                        let mut r = Message::response_to(
                            &m,
                            Flag::Ok,
                            Body::RouteDirectionConfirmation(rd.clone()),
                        );
                        r.extensions = m.extensions.clone();
                        Some(r)
                    }
                    _ => Some(Message::response_to(&m, Flag::Ok, Body::Ack)),
                }
            }
        }));
        self.transact_nms(&self.registration()).await
    }

    pub async fn transact_nms(&self, m: &Message) -> Message {
        let conn = self.nms.as_ref().expect("registered");
        match rpc::transact(conn, m, T).await {
            Ok(r) => r,
            Err(e) => rpc::refusal(m, flag_of(&e)),
        }
    }

    pub async fn direction(&self, target: DirectionTarget) -> Message {
        let req = Message::request(Body::DirectionRequest(DirectionRequest {
            application_id: ApplicationId::ZERO,
            path_id: PathId::ZERO,
            target,
        }))
        .with_node_id(self.node_id);
        self.transact_nms(&req).await
    }

    pub async fn direction_to(&self, peer: &TestNode) -> Message {
        self.direction(DirectionTarget::Fqdn(peer.fqdn.clone()))
            .await
    }

    /// A control connection to the TRS at `addr`.
    pub async fn connect_trs(&self, addr: SocketAddr) {
        PeerDialer::of(self).ensure_trs(addr).await
    }

    pub async fn dial(
        &self,
        addr: SocketAddr,
        peer: &Fqdn,
        path: PathId,
        via_token: Option<RelayToken>,
    ) -> Result<quinn::Connection, String> {
        PeerDialer::of(self).dial(addr, peer, path, via_token).await
    }
}

/// What a push handler needs to dial (cloneable, no borrows of the node).
#[derive(Clone)]
pub struct PeerDialer {
    ep: quinn::Endpoint,
    peer_client: quinn::ClientConfig,
    trs_client: quinn::ClientConfig,
    cloud: SocketAddr,
    trs: Arc<tokio::sync::Mutex<Option<quinn::Connection>>>,
}

impl PeerDialer {
    pub fn of(n: &TestNode) -> PeerDialer {
        PeerDialer {
            ep: n.ep.clone(),
            peer_client: n.client(Role::Node, ALPN_PEER, true),
            trs_client: n.client(Role::Trs, ALPN_TRS, true),
            cloud: n.cloud,
            trs: n.trs.clone(),
        }
    }

    /// Keep a control connection to the TRS at `addr`.
    pub async fn ensure_trs(&self, addr: SocketAddr) {
        let mut slot = self.trs.lock().await;
        if slot.is_none() {
            let c = self
                .ep
                .connect_with(self.trs_client.clone(), addr, &format!("trs.{DOMAIN}"))
                .unwrap()
                .await
                .unwrap();
            *slot = Some(c);
            // Let the TRS register the control connection's address.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Dial a peer (directly, or through the TRS with the responder's token as the
    /// Initial DCID) and run Tunnel Request/Response.
    pub async fn dial(
        &self,
        addr: SocketAddr,
        peer: &Fqdn,
        path: PathId,
        via_token: Option<RelayToken>,
    ) -> Result<quinn::Connection, String> {
        let mut cc = self.peer_client.clone();
        if let Some(t) = via_token {
            cc.initial_dst_cid_provider(Arc::new(move || initial_dcid(t)));
        }
        let work = async {
            let conn = self
                .ep
                .connect_with(cc, addr, peer.as_str())
                .map_err(|e| e.to_string())?
                .await
                .map_err(|e| e.to_string())?;
            let req = Message::request(Body::TunnelRequest).with_path_id(path);
            let resp = rpc::transact(&conn, &req, T)
                .await
                .map_err(|e| e.to_string())?;
            if resp.flag != Flag::Ok {
                return Err(format!("tunnel refused: {:?}", resp.flag));
            }
            Ok(conn)
        };
        tokio::time::timeout(Duration::from_secs(3), work)
            .await
            .unwrap_or_else(|_| Err("timeout".into()))
    }
}

pub fn flag_of(e: &rpc::TransactError) -> Flag {
    match e {
        rpc::TransactError::Refused(f) => *f,
        rpc::TransactError::Timeout(_) => Flag::Timeout,
        _ => Flag::UnknownError,
    }
}

/// Send a datagram each way on a peer connection and check both arrive.
pub async fn datagrams_flow(a: &quinn::Connection, b: &quinn::Connection) {
    a.send_datagram(bytes::Bytes::from_static(b"ping from a"))
        .unwrap();
    let got = tokio::time::timeout(T, b.read_datagram())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&got[..], b"ping from a");
    b.send_datagram(bytes::Bytes::from_static(b"pong from b"))
        .unwrap();
    let got = tokio::time::timeout(T, a.read_datagram())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&got[..], b"pong from b");
}

pub fn lo(n: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, n))
}

pub fn state_dir(t: &tempfile::TempDir) -> PathBuf {
    t.path().join("state")
}
