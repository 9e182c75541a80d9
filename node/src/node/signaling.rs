//! The standing NMS connection: registration, reconnection, and what NMS pushes on
//! it (Route Direction to Responder, Location Update, Finalization); TRS control
//! connections.

use super::*;

impl Node {
    // ----- the standing NMS connection -------------------------------------------

    /// Keep a registered NMS connection, reconnecting with backoff, until the task is
    /// aborted.
    pub async fn run_cloud(self: Arc<Self>) {
        let mut backoff = Duration::from_millis(500);
        loop {
            let mut again_at_once = false;
            match self.clone().cloud_session().await {
                Ok(()) => {
                    // It was registered: reconnect at once (e.g. after a move).
                    backoff = Duration::from_millis(500);
                    again_at_once = true;
                }
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), retry_in = ?backoff, "cloud connection failed");
                    let mut s = lock(&self.cloud_status);
                    s.last_error = Some(format!("{e:#}"));
                }
            }
            self.nms.send_replace(None);
            {
                let mut s = lock(&self.cloud_status);
                s.connected = false;
                s.since_unix = unix_now();
            }
            if again_at_once {
                continue;
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(15));
        }
    }

    pub(super) async fn cloud_session(self: Arc<Self>) -> Result<()> {
        let nms = self.pick_nms();
        lock(&self.cloud_status).nms_address = Some(nms);
        let conn = self
            .ep
            .connect_service(Some(&self.creds), Role::Nms, nms, &self.settings.domain)
            .await?;
        let serving = conn.clone();
        let me = self.clone();
        let pushes = tokio::spawn(rpc::serve(serving, move |m: Message| {
            let me = me.clone();
            async move { Some(me.handle_push(m).await) }
        }));
        let request = cloud::registration(&self.ep, self.me.node_id, nms);
        let reg = match cloud::register(&conn, &request).await {
            Ok(r) => r,
            Err(e) => {
                pushes.abort();
                conn.close(quinn::VarInt::from_u32(0), b"registration failed");
                return Err(e);
            }
        };
        tracing::info!(fqdn = %self.me.fqdn, nms = %nms, observed = ?reg.observed, nat = reg.nat,
            "registered with NMS");
        {
            let mut s = lock(&self.cloud_status);
            s.connected = true;
            s.since_unix = unix_now();
            s.observed = reg.observed;
            s.nat = Some(reg.nat);
            s.last_error = None;
            s.registrations += 1;
        }
        self.nms.send_replace(Some(conn.clone()));
        let reason = conn.closed().await;
        pushes.abort();
        tracing::warn!(reason = %reason, "NMS connection closed; reconnecting");
        Ok(())
    }

    /// Finalization (SPEC §6 Shutdown), best effort within `timeout`.
    pub async fn finalize(&self, timeout: Duration) {
        if let Some(conn) = self.nms_connection() {
            let m = Message::request(Body::Finalization).with_node_id(self.me.node_id);
            match rpc::transact(&conn, &m, timeout).await {
                Ok(_) => tracing::info!("finalized with NMS"),
                Err(e) => tracing::warn!(error = %e, "finalization not acknowledged"),
            }
            conn.close(quinn::VarInt::from_u32(0), b"finalized");
        }
        for link in self.peers.links() {
            link.conn
                .close(quinn::VarInt::from_u32(0), b"node shutting down");
        }
    }

    pub(super) async fn handle_push(self: &Arc<Self>, m: Message) -> Message {
        match &m.body {
            Body::RouteDirectionToResponder(rd) => self.route_direction_to_responder(&m, rd).await,
            Body::LocationUpdate(u) => {
                tracing::info!(path = %u.path_id, nat_ipv4 = ?u.nat_ipv4, nat_ipv6 = ?u.nat_ipv6,
                    port = u.nat_port, "peer moved (Location Update)");
                Message::response_to(&m, Flag::Ok, Body::Ack)
            }
            Body::Finalization => {
                let path = m.path_id();
                for link in self.peers.finalize(&path) {
                    tracing::info!(peer = %link.peer.fqdn, "peer left (Finalization): closing its tunnel");
                    link.conn
                        .close(quinn::VarInt::from_u32(0), b"peer finalized");
                }
                Message::response_to(&m, Flag::Ok, Body::Ack)
            }
            Body::KeepAlive => Message::response_to(&m, Flag::Ok, Body::KeepAliveAck),
            other => {
                tracing::debug!(message = ?other.message_type(), "unexpected push from NMS");
                refusal(&m, Flag::Malformed)
            }
        }
    }

    pub(super) async fn route_direction_to_responder(
        self: &Arc<Self>,
        m: &Message,
        rd: &RouteDirection,
    ) -> Message {
        let peer = peer_of(&rd.initiator);
        let kind = kind_of(rd.process_code);
        tracing::info!(initiator = %peer.fqdn, path = %rd.path_id, code = rd.process_code as u8,
            "Route Direction to Responder: {kind} path");
        // The initiator has no tunnel to us, or it would not ask: a link we still hold
        // is dead on its side.
        if let Some(old) = self.peers.by_fqdn(&peer.fqdn) {
            if self.peers.remove(&old) {
                old.conn
                    .close(quinn::VarInt::from_u32(0), b"superseded by a new direction");
            }
        }
        self.expect_path(m, rd, &peer, kind);
        match rd.process_code {
            ProcessCode::ViaTrs => {
                let prefer_v6 = self.current_nms().is_ipv6();
                let Some(trs) = trs_address(rd, prefer_v6) else {
                    return refusal(m, Flag::PeerUnreachable);
                };
                if let Err(e) = self.ensure_trs(trs).await {
                    tracing::warn!(error = %format!("{e:#}"), "cannot reach the TRS");
                    return refusal(m, Flag::PeerUnreachable);
                }
            }
            ProcessCode::ResponderDials if self.settings.relay_only => {
                // The initiator's direct attempt times out and it asks again with
                // Flag 34 (SPEC §8 fallback): the pair ends up on the TRS.
                tracing::info!(initiator = %peer.fqdn,
                    "not dialing the initiator: peers.relay_only keeps every tunnel on the TRS");
            }
            ProcessCode::ResponderDials => {
                let Some(&dial) = m.candidates().first() else {
                    return refusal(m, Flag::Malformed);
                };
                let me = self.clone();
                let path = rd.path_id;
                tokio::spawn(async move {
                    // NMS answers the initiator after our confirmation; give it a moment.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    if let Err(e) = me
                        .dial(dial, peer, path, PathKind::Direct, None, true)
                        .await
                    {
                        tracing::warn!(error = %format!("{e:#}"), %dial, "dialing the initiator failed");
                    }
                });
            }
            ProcessCode::InitiatorDials | ProcessCode::SameNat => {}
        }
        let mut r = Message::response_to(m, Flag::Ok, Body::RouteDirectionConfirmation(rd.clone()));
        r.extensions = m.extensions.clone();
        r
    }

    /// Remember the path a Route Direction named (to Responder or to Initiator): the
    /// peer that may open or answer a tunnel for it, and its candidates if relayed.
    pub(super) fn expect_path(
        &self,
        m: &Message,
        rd: &RouteDirection,
        peer: &PeerInfo,
        kind: PathKind,
    ) {
        self.peers.expect(
            rd.path_id,
            Expected {
                peer: peer.clone(),
                kind,
                until: Instant::now() + EXPECT_TTL,
                candidates: relay_candidates(m, rd),
            },
        );
    }

    /// A control connection to a TRS, so it knows our observed address (SPEC §7).
    pub(super) async fn ensure_trs(&self, addr: SocketAddr) -> Result<()> {
        let mut g = self.trs.lock().await;
        if let Some(c) = g.get(&addr) {
            if c.close_reason().is_none() {
                return Ok(());
            }
        }
        let c = self
            .ep
            .connect_service(Some(&self.creds), Role::Trs, addr, &self.settings.domain)
            .await?;
        // The TRS learns our address when it accepts the connection and answers Keep
        // Alive after that: one round trip, and packets from us will be forwarded.
        let ka = Message::request(Body::KeepAlive).with_node_id(self.me.node_id);
        if let Err(e) = rpc::transact(&c, &ka, CLOUD_TIMEOUT).await {
            tracing::debug!(error = %e, "TRS did not answer Keep Alive");
        }
        tracing::info!(trs = %addr, "TRS control connection up");
        g.insert(addr, c);
        Ok(())
    }
}
