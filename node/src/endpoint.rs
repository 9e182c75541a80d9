//! The node's one UDP socket and QUIC endpoint (SPEC §3): cloud connections and every
//! peer connection share it, so NMS, TRS and peers see the same NAT mapping.
//!
//! An endpoint can carry several identities (an adapter's general nodes): each has
//! its own certificate, chosen by the TLS SNI a dialing peer sets (the responder's
//! FQDN), and its own handler for the peer connections it accepts. The node daemon
//! registers one.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::{Context, Result};
use cyphonic_pki::quic::{self, ALPN_AS, ALPN_NMS, ALPN_PEER, ALPN_TRS};
use cyphonic_pki::{ClientAuth, Credentials, Role, SniResolver, TrustAnchor};
use cyphonic_proto::quic::initial_dcid;
use cyphonic_proto::{Fqdn, RelayToken};

use crate::fastdata::{FastRegistry, FastSocket};

/// What a peer connection accepted for an identity is handed to.
pub trait AcceptPeer: Send + Sync + 'static {
    fn accepted(&self, conn: quinn::Connection);
}

/// Transport limits of this node's connections.
#[derive(Debug, Clone, Copy)]
pub struct TransportSettings {
    pub keep_alive: Duration,
    /// Cloud connection idle timeout (NMS treats the node as offline after it).
    pub cloud_idle: Duration,
    /// UDP payload size assumed on peer paths before MTU discovery.
    pub path_mtu: u16,
    /// Congestion controller of peer connections.
    pub congestion: Congestion,
    /// Scheduling policy of the fast path's thread (`fast_thread_policy`).
    pub fast_thread_policy: crate::fastdata::FastThreadPolicy,
}

/// The congestion controller of the outer QUIC connection of a tunnel
/// (`peers.congestion`). See BENCHMARKS.md for how each fares under TCP in the tunnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Congestion {
    Cubic,
    Bbr,
    /// The default: measured a little ahead of CUBIC and BBR under a TCP flow in the
    /// tunnel (BENCHMARKS.md); the outer controller only has to stay out of the inner
    /// TCP's way, and NewReno's simple window does.
    #[default]
    NewReno,
}

impl Default for TransportSettings {
    fn default() -> Self {
        TransportSettings {
            keep_alive: Duration::from_secs(10),
            cloud_idle: Duration::from_secs(30),
            path_mtu: 1452,
            congestion: Congestion::default(),
            fast_thread_policy: crate::fastdata::FastThreadPolicy::default(),
        }
    }
}

struct IdentityEntry {
    creds: Credentials,
    handler: Arc<dyn AcceptPeer>,
}

/// One socket, one QUIC endpoint, one relay token; several identities.
pub struct NodeEndpoint {
    pub endpoint: quinn::Endpoint,
    pub token: RelayToken,
    /// The socket under quinn, with the fast data channel's packets taken out.
    pub fast: Arc<FastSocket>,
    /// The fast data channels this endpoint receives on.
    pub fast_channels: Arc<FastRegistry>,
    trust: TrustAnchor,
    transport: TransportSettings,
    identities: RwLock<HashMap<String, IdentityEntry>>,
}

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|p| p.into_inner())
}

impl NodeEndpoint {
    /// Bind `listen` (an unspecified IPv6 address is dual-stack) with a fresh relay
    /// token.
    pub fn bind(
        listen: SocketAddr,
        trust: TrustAnchor,
        transport: TransportSettings,
    ) -> Result<Arc<NodeEndpoint>> {
        let socket = quic::bind_udp(listen).with_context(|| {
            format!(
                "cannot bind UDP {listen}: another process may use it, or binding a port below \
                 1024 needs root; choose another with `listen`"
            )
        })?;
        let token = RelayToken::random();
        let fast_channels = Arc::new(FastRegistry::default());
        let fast = FastSocket::start(socket, fast_channels.clone(), transport.fast_thread_policy)?;
        let endpoint = quic::endpoint(fast.clone(), token, None)?;
        let ep = Arc::new(NodeEndpoint {
            endpoint,
            token,
            fast,
            fast_channels,
            trust,
            transport,
            identities: RwLock::new(HashMap::new()),
        });
        tokio::spawn(accept_loop(ep.clone()));
        Ok(ep)
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.endpoint
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    pub fn trust(&self) -> &TrustAnchor {
        &self.trust
    }

    /// Serve peer connections for `fqdn` with `creds`; accepted connections go to
    /// `handler`.
    pub fn add_identity(
        &self,
        fqdn: &Fqdn,
        creds: Credentials,
        handler: Arc<dyn AcceptPeer>,
    ) -> Result<()> {
        {
            let mut ids = self.identities.write().unwrap_or_else(|p| p.into_inner());
            ids.insert(fqdn.as_str().to_owned(), IdentityEntry { creds, handler });
        }
        self.rebuild_server_config()
    }

    pub fn remove_identity(&self, fqdn: &Fqdn) -> Result<()> {
        {
            let mut ids = self.identities.write().unwrap_or_else(|p| p.into_inner());
            ids.remove(fqdn.as_str());
        }
        self.rebuild_server_config()
    }

    fn rebuild_server_config(&self) -> Result<()> {
        let ids = read(&self.identities);
        if ids.is_empty() {
            self.endpoint.set_server_config(None);
            return Ok(());
        }
        let mut resolver = SniResolver::new();
        for (name, e) in ids.iter() {
            resolver.add(name, &e.creds)?;
        }
        let tls = cyphonic_pki::server_config(
            Arc::new(resolver),
            &self.trust,
            ClientAuth::Required,
            &[ALPN_PEER],
        )?;
        let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
            .context("TLS configuration unusable for QUIC")?;
        let mut sc = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        sc.transport_config(Arc::new(self.peer_transport()));
        self.endpoint.set_server_config(Some(sc));
        Ok(())
    }

    /// Transport of peer connections: datagrams, keep-alive for NAT mappings, an
    /// initial MTU large enough for a full-size overlay packet.
    pub fn peer_transport(&self) -> quinn::TransportConfig {
        let mut t = quic::signaling_transport(
            Some(self.transport.keep_alive),
            self.transport.keep_alive * 3,
        );
        t.initial_mtu(self.transport.path_mtu);
        let mut mtud = quinn::MtuDiscoveryConfig::default();
        mtud.upper_bound(self.transport.path_mtu.max(1452));
        t.mtu_discovery_config(Some(mtud));
        t.datagram_receive_buffer_size(Some(4 * 1024 * 1024));
        t.datagram_send_buffer_size(4 * 1024 * 1024);
        // The stream that carries packets too large for a datagram (node.rs).
        t.max_concurrent_uni_streams(4u32.into());
        let cc: Arc<dyn quinn::congestion::ControllerFactory + Send + Sync> =
            match self.transport.congestion {
                Congestion::Cubic => Arc::new(quinn::congestion::CubicConfig::default()),
                Congestion::Bbr => Arc::new(quinn::congestion::BbrConfig::default()),
                Congestion::NewReno => Arc::new(quinn::congestion::NewRenoConfig::default()),
            };
        t.congestion_controller_factory(cc);
        t
    }

    fn client(
        &self,
        creds: Option<&Credentials>,
        role: Role,
        alpn: &[u8],
        transport: quinn::TransportConfig,
    ) -> Result<quinn::ClientConfig> {
        let tls = cyphonic_pki::client_config(creds, &self.trust, role, &[alpn])?;
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
            .context("TLS configuration unusable for QUIC")?;
        let mut cc = quinn::ClientConfig::new(Arc::new(crypto));
        cc.transport_config(Arc::new(transport));
        Ok(cc)
    }

    fn cloud_transport(&self) -> quinn::TransportConfig {
        quic::signaling_transport(Some(self.transport.keep_alive), self.transport.cloud_idle)
    }

    /// Connect to a cloud service (`as`, `nms`, `trs`) as `creds` (None: no client
    /// certificate, for enrollment). The server name is `<role>.<domain>`.
    pub async fn connect_service(
        &self,
        creds: Option<&Credentials>,
        role: Role,
        addr: SocketAddr,
        domain: &Fqdn,
    ) -> Result<quinn::Connection> {
        let alpn = match role {
            Role::As => ALPN_AS,
            Role::Nms => ALPN_NMS,
            Role::Trs => ALPN_TRS,
            Role::Node => ALPN_PEER,
        };
        let cc = self.client(creds, role, alpn, self.cloud_transport())?;
        let name = format!("{}.{}", role.name(), domain);
        let conn = self
            .endpoint
            .connect_with(cc, addr, &name)
            .with_context(|| format!("cannot connect to {name} at {addr}"))?
            .await
            .with_context(|| format!("QUIC handshake with {name} at {addr} failed"))?;
        Ok(conn)
    }

    /// Dial a peer node as `creds`: SNI and the verified server name are the
    /// responder's FQDN; through a TRS the Initial's DCID starts with the responder's
    /// relay token (SPEC §7).
    pub async fn dial_peer(
        &self,
        creds: &Credentials,
        addr: SocketAddr,
        peer: &Fqdn,
        via_token: Option<RelayToken>,
    ) -> Result<quinn::Connection> {
        let mut cc = self.client(Some(creds), Role::Node, ALPN_PEER, self.peer_transport())?;
        if let Some(t) = via_token {
            cc.initial_dst_cid_provider(Arc::new(move || initial_dcid(t)));
        }
        let conn = self
            .endpoint
            .connect_with(cc, addr, peer.as_str())
            .with_context(|| format!("cannot dial {peer} at {addr}"))?
            .await
            .with_context(|| format!("QUIC handshake with {peer} at {addr} failed"))?;
        Ok(conn)
    }

    /// The credentials of a carried identity.
    pub fn credentials(&self, fqdn: &Fqdn) -> Option<Credentials> {
        read(&self.identities)
            .get(fqdn.as_str())
            .map(|e| e.creds.clone())
    }

    fn handler_for(&self, sni: Option<&str>) -> Option<Arc<dyn AcceptPeer>> {
        let ids = read(&self.identities);
        match sni {
            Some(n) => ids.get(&n.to_ascii_lowercase()).map(|e| e.handler.clone()),
            // No SNI: only unambiguous with one identity.
            None if ids.len() == 1 => ids.values().next().map(|e| e.handler.clone()),
            None => None,
        }
    }
}

async fn accept_loop(ep: Arc<NodeEndpoint>) {
    while let Some(incoming) = ep.endpoint.accept().await {
        let ep = ep.clone();
        tokio::spawn(async move {
            let conn = match incoming.await {
                Ok(c) => c,
                Err(e) => {
                    tracing::debug!(error = %e, "incoming peer handshake failed");
                    return;
                }
            };
            let sni = conn
                .handshake_data()
                .and_then(|h| h.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
                .and_then(|h| h.server_name);
            match ep.handler_for(sni.as_deref()) {
                Some(h) => h.accepted(conn),
                None => conn.close(quinn::VarInt::from_u32(33), b"no such identity here"),
            }
        });
    }
}
