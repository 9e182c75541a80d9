//! TRS, the Tunnel Relay Service (SPEC §1, §7).
//!
//! Nodes keep a control connection to the TRS they are told to use (mutual TLS,
//! ALPN `cyphonic-trs/2`); the TRS learns each node's observed address from it and
//! follows it when QUIC migrates. NMS installs relay bindings with Relay Request.
//! End-to-end peer connections then pass through [`socket::RelaySocket`], which
//! forwards them by Connection ID without decrypting.

pub mod socket;
pub mod table;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cyphonic_proto::body::RelayBinding;
use cyphonic_proto::{Body, Extension, Flag, Message, NodeId, PathId, RelayTokens};

use crate::identity::{Peer, PeerRole};
use crate::rpc::{self, refusal};
use socket::{RelayCounters, RelaySocket};
use table::{ForwardTable, Limits};

/// How often a control connection's remote address is checked for migration.
const ADDRESS_POLL: Duration = Duration::from_millis(200);

pub struct Trs {
    table: Arc<Mutex<ForwardTable>>,
    counters: Arc<RelayCounters>,
    /// The control connection currently representing each node.
    control: Mutex<HashMap<NodeId, usize>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

impl Default for Trs {
    fn default() -> Self {
        Trs::new(Limits::default())
    }
}

impl Trs {
    pub fn new(limits: Limits) -> Self {
        Trs {
            table: Arc::new(Mutex::new(ForwardTable::new(limits))),
            counters: Arc::new(RelayCounters::default()),
            control: Mutex::new(HashMap::new()),
        }
    }

    /// Wrap the process's UDP socket so relay traffic is forwarded before quinn.
    pub fn wrap_socket(
        &self,
        inner: Arc<dyn quinn::AsyncUdpSocket>,
    ) -> Arc<dyn quinn::AsyncUdpSocket> {
        Arc::new(RelaySocket::new(
            inner,
            self.table.clone(),
            self.counters.clone(),
        ))
    }

    pub fn counters(&self) -> &RelayCounters {
        &self.counters
    }

    pub fn binding_count(&self) -> usize {
        lock(&self.table).binding_count()
    }

    /// Drop expired bindings every few seconds, for as long as the TRS lives.
    pub fn spawn_expiry(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            loop {
                tick.tick().await;
                let Some(trs) = weak.upgrade() else { return };
                let n = lock(&trs.table).expire(Instant::now());
                if n > 0 {
                    tracing::info!(expired = n, "relay bindings expired");
                }
            }
        });
    }

    /// Serve one TRS connection: a node's control connection, or NMS's.
    pub async fn serve_connection(self: Arc<Self>, conn: quinn::Connection, peer: Peer) {
        match peer.role {
            PeerRole::Node => self.serve_node(conn, peer).await,
            PeerRole::Nms => {
                let trs = self.clone();
                rpc::serve(conn, move |m| {
                    let trs = trs.clone();
                    async move { Some(trs.handle_relay_request(&m)) }
                })
                .await
            }
            _ => conn.close(
                quinn::VarInt::from_u32(Flag::ForbiddenByPolicy.code() as u32),
                b"role",
            ),
        }
    }

    async fn serve_node(self: Arc<Self>, conn: quinn::Connection, peer: Peer) {
        let Some(node) = peer.node_id else {
            tracing::warn!(fqdn = %peer.fqdn, "TRS: node certificate without NodeID refused");
            conn.close(
                quinn::VarInt::from_u32(Flag::Unauthenticated.code() as u32),
                b"no NodeID",
            );
            return;
        };
        let id = conn.stable_id();
        let mut addr = conn.remote_address();
        lock(&self.control).insert(node, id);
        {
            let mut table = lock(&self.table);
            table.node_at(node, addr);
            table.node_reaches(node, conn.local_ip());
        }
        tracing::info!(fqdn = %peer.fqdn, %addr, "TRS control connection up");

        let serving = {
            let serving = conn.clone();
            let trs = self.clone();
            let watched = conn.clone();
            tokio::spawn(rpc::serve(serving, move |m: Message| {
                // A node's Keep Alive says "this is where I am now" (e.g. right after
                // it moved): follow it at once rather than at the next poll, so the
                // relayed packets it sends next are forwarded.
                if matches!(m.body, Body::KeepAlive) && lock(&trs.control).get(&node) == Some(&id) {
                    let mut table = lock(&trs.table);
                    table.node_at(node, watched.remote_address());
                    table.node_reaches(node, watched.local_ip());
                }
                async move {
                    match m.body {
                        Body::KeepAlive => {
                            Some(Message::response_to(&m, Flag::Ok, Body::KeepAliveAck))
                        }
                        _ => Some(refusal(&m, Flag::Malformed)),
                    }
                }
            }))
        };
        let mut tick = tokio::time::interval(ADDRESS_POLL);
        loop {
            tokio::select! {
                _ = conn.closed() => break,
                _ = tick.tick() => {
                    let now = conn.remote_address();
                    if now != addr && lock(&self.control).get(&node) == Some(&id) {
                        tracing::info!(fqdn = %peer.fqdn, from = %addr, to = %now,
                            "TRS control connection migrated");
                        addr = now;
                        let mut table = lock(&self.table);
                        table.node_at(node, addr);
                        table.node_reaches(node, conn.local_ip());
                    }
                }
            }
        }
        serving.abort();
        let mut control = lock(&self.control);
        if control.get(&node) == Some(&id) {
            control.remove(&node);
            lock(&self.table).node_gone(node);
            tracing::info!(fqdn = %peer.fqdn, "TRS control connection closed");
        }
    }

    /// Handle a Relay Request (from NMS, over QUIC or in-process).
    pub fn handle_relay_request(&self, m: &Message) -> Message {
        let Body::RelayRequest(b) = &m.body else {
            return refusal(m, Flag::Malformed);
        };
        let Some(tokens) = m.relay() else {
            return refusal(m, Flag::Malformed);
        };
        let result = lock(&self.table).bind(
            b.path_id,
            b.initiator,
            tokens.initiator,
            b.responder,
            tokens.responder,
            Duration::from_secs(u64::from(b.lifetime_secs)),
            Instant::now(),
        );
        match result {
            Ok(()) => {
                tracing::info!(path = %b.path_id, initiator = %b.initiator, responder = %b.responder,
                    lifetime = b.lifetime_secs, "relay bound");
                let mut r = Message::response_to(m, Flag::Ok, Body::RelayResponse(*b));
                r.extensions = m.extensions.clone();
                r
            }
            Err(e) => {
                tracing::warn!(path = %b.path_id, error = %e, "relay binding refused");
                let flag = match e {
                    table::BindError::TokenInUse(_) => Flag::RelayTokenInUse,
                    table::BindError::TooManyBindings(_) => Flag::RateLimited,
                    _ => Flag::Malformed,
                };
                refusal(m, flag)
            }
        }
    }

    pub fn unbind_node(&self, node: NodeId) {
        lock(&self.table).unbind_node(node);
    }
}

/// How NMS reaches a TRS: in-process when both roles run in one process, else over
/// a QUIC connection with NMS's service certificate.
#[derive(Clone)]
pub enum RelayLink {
    Local(Arc<Trs>),
    Remote(Arc<RemoteTrs>),
}

/// A TRS in another process.
pub struct RemoteTrs {
    pub endpoint: quinn::Endpoint,
    pub client_config: quinn::ClientConfig,
    pub addr: std::net::SocketAddr,
    pub server_name: String,
    conn: tokio::sync::Mutex<Option<quinn::Connection>>,
}

impl RemoteTrs {
    pub fn new(
        endpoint: quinn::Endpoint,
        client_config: quinn::ClientConfig,
        addr: std::net::SocketAddr,
        server_name: String,
    ) -> Self {
        RemoteTrs {
            endpoint,
            client_config,
            addr,
            server_name,
            conn: tokio::sync::Mutex::new(None),
        }
    }

    async fn connection(&self) -> Result<quinn::Connection, String> {
        let mut slot = self.conn.lock().await;
        if let Some(c) = slot.as_ref() {
            if c.close_reason().is_none() {
                return Ok(c.clone());
            }
        }
        let c = self
            .endpoint
            .connect_with(self.client_config.clone(), self.addr, &self.server_name)
            .map_err(|e| e.to_string())?
            .await
            .map_err(|e| e.to_string())?;
        *slot = Some(c.clone());
        Ok(c)
    }

    async fn request(&self, m: &Message) -> Result<Message, String> {
        let conn = self.connection().await?;
        rpc::transact(&conn, m, rpc::TRANSACTION_TIMEOUT)
            .await
            .map_err(|e| e.to_string())
    }
}

impl RelayLink {
    /// Ask the TRS to relay between two nodes (Relay Request / Relay Response).
    pub async fn bind(
        &self,
        path_id: PathId,
        initiator: NodeId,
        responder: NodeId,
        tokens: RelayTokens,
        lifetime_secs: u32,
    ) -> Result<(), String> {
        let request = Message::request(Body::RelayRequest(RelayBinding {
            path_id,
            initiator,
            responder,
            lifetime_secs,
        }))
        .with_extension(Extension::Relay(tokens));
        let response = match self {
            RelayLink::Local(trs) => trs.handle_relay_request(&request),
            RelayLink::Remote(remote) => remote.request(&request).await?,
        };
        match (response.flag, &response.body) {
            (Flag::Ok, Body::RelayResponse(_)) => Ok(()),
            (flag, _) => Err(format!("TRS answered {flag:?}")),
        }
    }

    /// Forget a node that logged out.
    pub async fn unbind_node(&self, node: NodeId) {
        match self {
            RelayLink::Local(trs) => trs.unbind_node(node),
            // A remote TRS lets the bindings expire; it also drops them when the
            // node's control connection closes.
            RelayLink::Remote(_) => {}
        }
    }
}
