//! NMS, the Node Management Service (SPEC §1, §5, §6).
//!
//! Keeps each online node's location, answers Direction Requests by choosing the
//! route ([`route::select`]), directs both ends (Route Direction to Responder, pushed
//! on the responder's standing connection; Confirmation; Route Direction to
//! Initiator), asks a TRS to relay when needed, and tells a node's peers when it
//! moves (Location Update) or leaves (Finalization).

pub mod registry;
pub mod route;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use cyphonic_proto::body::{
    DirectionTarget, LocationUpdate, PathEnd, ProcessCode, RegistrationResponse, RouteDirection,
};
use cyphonic_proto::{Body, Extension, Flag, Message, NodeId, PathId, RelayTokens};

use crate::config::Timers;
use crate::identity::Peer;
use crate::rpc::{self, refusal};
use crate::store::Store;
use crate::trs::RelayLink;
use registry::{Online, RegisterError, Registered, Registry};
use route::{Location, Route};

/// The access-control hook: may `initiator` be directed to `responder`? The one place
/// a future policy (ACLs, tags) decides; the default allows every pair.
pub trait Policy: Send + Sync {
    fn allow(&self, initiator: &Online, responder: &Online) -> bool;
}

/// The default policy: every authenticated node may reach every other.
pub struct AllowAll;

impl Policy for AllowAll {
    fn allow(&self, _: &Online, _: &Online) -> bool {
        true
    }
}

/// A TRS NMS may direct relayed pairs to.
#[derive(Clone)]
pub struct TrsTarget {
    pub ipv4: Option<Ipv4Addr>,
    pub ipv6: Option<Ipv6Addr>,
    pub port: u16,
    pub link: RelayLink,
}

pub struct Nms {
    store: Store,
    registry: Mutex<Registry>,
    trs: Vec<TrsTarget>,
    policy: Box<dyn Policy>,
    timers: Timers,
}

fn lock(m: &Mutex<Registry>) -> std::sync::MutexGuard<'_, Registry> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

fn split(a: Option<IpAddr>) -> (Option<Ipv4Addr>, Option<Ipv6Addr>) {
    match a {
        Some(IpAddr::V4(v4)) => (Some(v4), None),
        Some(IpAddr::V6(v6)) => match v6.to_ipv4_mapped() {
            Some(v4) => (Some(v4), None),
            None => (None, Some(v6)),
        },
        None => (None, None),
    }
}

fn unmapped(a: SocketAddr) -> SocketAddr {
    match a {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), v6.port()),
            None => a,
        },
        other => other,
    }
}

/// The fields of one end of a Route Direction, from what NMS knows of it.
fn path_end(o: &Online) -> PathEnd {
    let observed = unmapped(o.location.observed);
    let (nat_ipv4, nat_ipv6) = split(Some(observed.ip()));
    PathEnd {
        fqdn: o.fqdn.clone(),
        nat_port: observed.port(),
        nat_ipv4,
        nat_ipv6,
        real_ipv4: o.location.reported_v4,
        real_ipv6: o.location.reported_v6,
        virtual_ipv4: o.virtual_ipv4,
        virtual_ipv6: o.virtual_ipv6,
    }
}

impl Nms {
    pub fn new(store: Store, trs: Vec<TrsTarget>, timers: Timers) -> Self {
        Nms {
            store,
            registry: Mutex::new(Registry::default()),
            trs,
            policy: Box::new(AllowAll),
            timers,
        }
    }

    pub fn with_policy(mut self, policy: Box<dyn Policy>) -> Self {
        self.policy = policy;
        self
    }

    /// How many nodes are online.
    pub fn online(&self) -> usize {
        lock(&self.registry).len()
    }

    /// Serve a node's standing NMS connection until it closes.
    pub async fn serve_connection(self: Arc<Self>, conn: quinn::Connection, peer: Peer) {
        let device = match self.store.device_by_fqdn(&peer.fqdn).await {
            Ok(Some(d)) if d.is_active() => d,
            Ok(_) => {
                tracing::warn!(fqdn = %peer.fqdn, "NMS connection refused: unknown or revoked device");
                conn.close(
                    quinn::VarInt::from_u32(Flag::CertificateRevoked.code() as u32),
                    b"revoked",
                );
                return;
            }
            Err(e) => {
                tracing::error!(error = %e, "NMS: store error");
                conn.close(quinn::VarInt::from_u32(1), b"store error");
                return;
            }
        };
        let node_id = device.node_id;
        let conn_id = conn.stable_id();
        let nms = self.clone();
        let serving = conn.clone();
        rpc::serve(conn, move |request| {
            let nms = nms.clone();
            let device = device.clone();
            let conn = serving.clone();
            async move { Some(nms.handle(&conn, &device, request).await) }
        })
        .await;
        let gone = lock(&self.registry).remove_if_connection(node_id, conn_id);
        if let Some(o) = gone {
            tracing::info!(fqdn = %o.fqdn, "node offline (connection closed)");
        }
        // A revoked node's live tunnels must end too: its peers hold no CRL, so NMS
        // tells them the node is gone (as if it had finalized).
        let revoked =
            matches!(self.store.device_by_fqdn(&peer.fqdn).await, Ok(Some(d)) if !d.is_active());
        if revoked {
            tracing::info!(fqdn = %peer.fqdn, "node revoked: telling its peers it is gone");
            self.notify_gone(node_id).await;
        }
    }

    /// Forget a node's pairs, unbind its relays, and send Finalization to each peer
    /// it was directed to.
    async fn notify_gone(&self, node: NodeId) {
        let peers = {
            let mut reg = lock(&self.registry);
            let peers: Vec<(Online, PathId)> = reg
                .peers_of(node)
                .into_iter()
                .map(|(o, p)| (o.clone(), p))
                .collect();
            reg.forget_pairs(node);
            peers
        };
        for trs in &self.trs {
            trs.link.unbind_node(node).await;
        }
        let timeout = self.timers.confirmation_timeout();
        tokio::spawn(async move {
            for (peer, path_id) in peers {
                let msg = Message::request(Body::Finalization).with_path_id(path_id);
                let _ = rpc::transact(&peer.connection, &msg, timeout).await;
            }
        });
    }

    async fn handle(
        self: &Arc<Self>,
        conn: &quinn::Connection,
        device: &crate::store::Device,
        request: Message,
    ) -> Message {
        match &request.body {
            Body::RegistrationRequest(_) => self.register(conn, device, &request).await,
            Body::DirectionRequest(_) => self.direction(device.node_id, &request).await,
            Body::KeepAlive => Message::response_to(&request, Flag::Ok, Body::KeepAliveAck),
            Body::Finalization => self.finalize(device.node_id, &request).await,
            other => {
                tracing::debug!(message = ?other.message_type(), "unexpected message on NMS");
                refusal(&request, Flag::Malformed)
            }
        }
    }

    async fn register(
        self: &Arc<Self>,
        conn: &quinn::Connection,
        device: &crate::store::Device,
        request: &Message,
    ) -> Message {
        let Body::RegistrationRequest(r) = &request.body else {
            return refusal(request, Flag::Malformed);
        };
        if request.node_id() != device.node_id {
            tracing::warn!(fqdn = %device.fqdn, claimed = %request.node_id(),
                "registration refused: node claims another NodeID");
            return refusal(request, Flag::Unauthenticated);
        }
        let Some(tokens) = request.relay() else {
            return refusal(request, Flag::Malformed);
        };
        let location = Location {
            observed: unmapped(conn.remote_address()),
            local_port: r.application_port,
            reported_v4: r.node_ipv4,
            reported_v6: r.node_ipv6,
        };
        let entry = Online {
            node_id: device.node_id,
            fqdn: device.fqdn.clone(),
            virtual_ipv4: device.virtual_ipv4,
            virtual_ipv6: device.virtual_ipv6,
            location: location.clone(),
            relay_token: tokens.initiator,
            connection: conn.clone(),
            registered_at: Instant::now(),
        };
        let outcome = lock(&self.registry).register(entry);
        let nat = location.behind_nat();
        match outcome {
            Err(RegisterError::TokenInUse(t)) => {
                tracing::warn!(fqdn = %device.fqdn, token = %t, "registration refused: relay token in use");
                return refusal(request, Flag::RelayTokenInUse);
            }
            Ok(Registered::Moved { from }) => {
                tracing::info!(fqdn = %device.fqdn, from = %from.observed, to = %location.observed,
                    nat, "node moved: telling its peers");
                let nms = self.clone();
                let node = device.node_id;
                tokio::spawn(async move { nms.send_location_updates(node).await });
            }
            Ok(Registered::First) => {
                tracing::info!(fqdn = %device.fqdn, observed = %location.observed, nat, "registered");
            }
            Ok(Registered::Same) => {}
        }
        Message::response_to(
            request,
            Flag::Ok,
            Body::RegistrationResponse(RegistrationResponse { nat }),
        )
        .with_extension(Extension::ObservedAddress(location.observed))
    }

    /// Resolve the target of a Direction Request to an online node, or the flag to
    /// answer with.
    async fn resolve(&self, target: &DirectionTarget) -> Result<Online, Flag> {
        let online = {
            let reg = lock(&self.registry);
            match target {
                DirectionTarget::Fqdn(f) => reg.by_fqdn(f).cloned(),
                DirectionTarget::VirtualIpv4(a) => reg.by_virtual_v4(*a).cloned(),
                DirectionTarget::VirtualIpv6(a) => reg.by_virtual_v6(*a).cloned(),
            }
        };
        if let Some(o) = online {
            return Ok(o);
        }
        // Not online: known device (offline → 34) or no such name (2).
        match target {
            DirectionTarget::Fqdn(f) => match self.store.device_by_fqdn(f).await {
                Ok(Some(_)) => Err(Flag::PeerUnreachable),
                Ok(None) => Err(Flag::NoSuchName),
                Err(_) => Err(Flag::UnknownError),
            },
            _ => Err(Flag::PeerUnreachable),
        }
    }

    fn pick_trs(&self, path: PathId, a: &Online, b: &Online) -> Option<&TrsTarget> {
        let fits = |t: &TrsTarget, o: &Online| match unmapped(o.location.observed) {
            SocketAddr::V4(_) => t.ipv4.is_some(),
            SocketAddr::V6(_) => t.ipv6.is_some(),
        };
        let usable: Vec<&TrsTarget> = self
            .trs
            .iter()
            .filter(|t| fits(t, a) && fits(t, b))
            .collect();
        if usable.is_empty() {
            return None;
        }
        // Spread pairs over the TRS instances, stably per path.
        let i = path
            .0
            .iter()
            .fold(0usize, |h, x| h.wrapping_mul(31).wrapping_add(*x as usize));
        usable.get(i % usable.len()).copied()
    }

    async fn direction(self: &Arc<Self>, initiator_id: NodeId, request: &Message) -> Message {
        let Body::DirectionRequest(d) = &request.body else {
            return refusal(request, Flag::Malformed);
        };
        let Some(initiator) = lock(&self.registry).get(initiator_id).cloned() else {
            return refusal(request, Flag::TableNoEntry);
        };
        let responder = match self.resolve(&d.target).await {
            Ok(r) => r,
            Err(flag) => {
                tracing::info!(initiator = %initiator.fqdn, target = %d.target.to_text(), ?flag,
                    "direction refused: responder unknown or offline");
                return refusal(request, flag);
            }
        };
        if responder.node_id == initiator.node_id {
            return refusal(request, Flag::FqdnNotAcceptable);
        }
        if !self.policy.allow(&initiator, &responder) {
            tracing::info!(initiator = %initiator.fqdn, responder = %responder.fqdn,
                "direction refused by policy");
            return refusal(request, Flag::ForbiddenByPolicy);
        }
        let path_id = PathId::derive(&initiator.fqdn, &responder.fqdn);
        // A Direction Request with Flag 34 says the direct route NMS gave before could
        // not be used (blocked port, filtering NAT, firewall): relay this pair.
        let choice = if request.flag == Flag::PeerUnreachable {
            route::Choice {
                route: Route::Relay,
                reason: "the initiator could not reach the responder on the direct route",
            }
        } else {
            route::select(&initiator.location, &responder.location)
        };
        tracing::info!(initiator = %initiator.fqdn, responder = %responder.fqdn, path = %path_id,
            "route chosen: {choice}");

        let mut rd = RouteDirection {
            path_id,
            process_code: match choice.route {
                Route::Direct { .. } => ProcessCode::InitiatorDials,
                Route::ResponderDials { .. } => ProcessCode::ResponderDials,
                Route::Relay => ProcessCode::ViaTrs,
                Route::SameNat { .. } => ProcessCode::SameNat,
            },
            exec_mode: 0,
            general_node: false,
            initiator: path_end(&initiator),
            responder: path_end(&responder),
            trs_ipv4: None,
            trs_ipv6: None,
            trs_port: 0,
            expiry: None,
        };
        let mut extensions = Vec::new();
        match choice.route {
            Route::Direct { dial } | Route::ResponderDials { dial } | Route::SameNat { dial } => {
                // The address to dial, with its port (Route Direction has no field for
                // a private port, which Process Code 4 needs).
                extensions.push(Extension::Candidates(vec![dial]));
            }
            Route::Relay => {
                let Some(trs) = self.pick_trs(path_id, &initiator, &responder) else {
                    tracing::warn!(initiator = %initiator.fqdn, responder = %responder.fqdn,
                        "no TRS serves both address families: cannot relay");
                    return refusal(request, Flag::PeerUnreachable);
                };
                let tokens = RelayTokens {
                    initiator: initiator.relay_token,
                    responder: responder.relay_token,
                };
                let bind = trs
                    .link
                    .bind(
                        path_id,
                        initiator.node_id,
                        responder.node_id,
                        tokens,
                        self.timers.relay_lifetime_secs,
                    )
                    .await;
                if let Err(e) = bind {
                    tracing::warn!(initiator = %initiator.fqdn, responder = %responder.fqdn,
                        error = %e, "TRS refused the relay binding");
                    return refusal(request, Flag::PeerUnreachable);
                }
                rd.trs_ipv4 = trs.ipv4;
                rd.trs_ipv6 = trs.ipv6;
                rd.trs_port = trs.port;
                extensions.push(Extension::Relay(tokens));
            }
        }

        // For a relayed pair each end also learns where the other may be reached
        // directly, to keep trying to go direct (SPEC §8).
        let (mut to_responder, mut to_initiator) = (extensions.clone(), extensions);
        if rd.process_code == ProcessCode::ViaTrs {
            to_responder.push(Extension::Candidates(initiator.location.candidates()));
            to_initiator.push(Extension::Candidates(responder.location.candidates()));
        }
        let mut push = Message::request(Body::RouteDirectionToResponder(rd.clone()))
            .with_node_id(responder.node_id);
        push.extensions = to_responder;
        match rpc::transact(
            &responder.connection,
            &push,
            self.timers.confirmation_timeout(),
        )
        .await
        {
            Ok(m)
                if m.flag == Flag::Ok && matches!(m.body, Body::RouteDirectionConfirmation(_)) => {}
            Ok(m) => {
                tracing::info!(responder = %responder.fqdn, flag = ?m.flag,
                    "responder refused the Route Direction");
                return refusal(request, Flag::PeerUnreachable);
            }
            Err(e) => {
                tracing::info!(responder = %responder.fqdn, error = %e,
                    "responder did not confirm the Route Direction");
                return refusal(request, Flag::PeerUnreachable);
            }
        }
        lock(&self.registry).note_pair(initiator.node_id, responder.node_id, path_id);
        let mut reply =
            Message::response_to(request, Flag::Ok, Body::RouteDirectionToInitiator(rd));
        reply.extensions = to_initiator;
        reply
    }

    async fn send_location_updates(&self, moved: NodeId) {
        let (me, peers) = {
            let reg = lock(&self.registry);
            let Some(me) = reg.get(moved).cloned() else {
                return;
            };
            let peers: Vec<(Online, PathId)> = reg
                .peers_of(moved)
                .into_iter()
                .map(|(o, p)| (o.clone(), p))
                .collect();
            (me, peers)
        };
        let end = path_end(&me);
        for (peer, path_id) in peers {
            let update = LocationUpdate {
                path_id,
                nat_port: end.nat_port,
                real_port: me.location.local_port,
                nat_ipv4: end.nat_ipv4,
                nat_ipv6: end.nat_ipv6,
                real_ipv4: end.real_ipv4,
                real_ipv6: end.real_ipv6,
            };
            let msg = Message::request(Body::LocationUpdate(update)).with_path_id(path_id);
            match rpc::transact(&peer.connection, &msg, self.timers.confirmation_timeout()).await {
                Ok(_) => {
                    tracing::info!(moved = %me.fqdn, peer = %peer.fqdn, "location update sent")
                }
                Err(e) => tracing::info!(moved = %me.fqdn, peer = %peer.fqdn, error = %e,
                    "location update not delivered"),
            }
        }
    }

    async fn finalize(self: &Arc<Self>, node: NodeId, request: &Message) -> Message {
        self.notify_gone(node).await;
        if let Some(o) = lock(&self.registry).remove(node) {
            tracing::info!(fqdn = %o.fqdn, "finalized (graceful logout)");
        }
        Message::response_to(request, Flag::Ok, Body::Ack)
    }
}
