//! Route setup (SPEC §6): Direction Request on the initiator side with fallback to
//! the relay, dialing a peer, and admitting the tunnels peers open to us.

use super::*;

impl Node {
    // ----- route setup (initiator) ------------------------------------------------

    /// One route setup per peer at a time: a peer's virtual addresses and its FQDN
    /// share one gate once the peer is known.
    pub(super) fn gate_key(&self, target: &DirectionTarget) -> String {
        let vip = match target {
            DirectionTarget::Fqdn(f) => return f.to_string(),
            DirectionTarget::VirtualIpv4(a) => IpAddr::V4(*a),
            DirectionTarget::VirtualIpv6(a) => IpAddr::V6(*a),
        };
        match lock(&self.known).get(&vip) {
            Some(f) => f.to_string(),
            None => target.to_text(),
        }
    }

    pub(super) fn lookup(&self, target: &DirectionTarget) -> Option<Arc<PeerLink>> {
        let l = match target {
            DirectionTarget::Fqdn(f) => self.peers.by_fqdn(f),
            DirectionTarget::VirtualIpv4(a) => self.peers.route(IpAddr::V4(*a)),
            DirectionTarget::VirtualIpv6(a) => self.peers.route(IpAddr::V6(*a)),
        }?;
        l.is_alive().then_some(l)
    }

    /// A tunnel to `target`, set up if needed (SPEC §6). Concurrent calls for one
    /// target share one setup.
    pub async fn connect(
        self: &Arc<Self>,
        target: DirectionTarget,
    ) -> Result<Arc<PeerLink>, RouteError> {
        if let Some(l) = self.lookup(&target) {
            return Ok(l);
        }
        let key = self.gate_key(&target);
        let gate = lock(&self.inflight).entry(key.clone()).or_default().clone();
        let result = {
            let _g = gate.lock().await;
            match self.lookup(&target) {
                Some(l) => Ok(l),
                None => tokio::time::timeout(
                    self.settings.setup_timeout,
                    self.setup_with_fallback(target.clone()),
                )
                .await
                .unwrap_or_else(|_| {
                    Err(RouteError::Unreachable(format!(
                        "path setup took longer than {:?}",
                        self.settings.setup_timeout
                    )))
                }),
            }
        };
        let mut inflight = lock(&self.inflight);
        if Arc::strong_count(&gate) <= 2 {
            inflight.remove(&key);
        }
        result
    }

    /// Set up the route NMS chooses; when a direct one fails, ask again for a relayed
    /// one (SPEC §8 fallback: no configuration by hand).
    pub(super) async fn setup_with_fallback(
        self: &Arc<Self>,
        target: DirectionTarget,
    ) -> Result<Arc<PeerLink>, RouteError> {
        if self.settings.relay_only {
            return self
                .setup(target, true)
                .await
                .map_err(Setup::into_route_error);
        }
        match self.setup(target.clone(), false).await {
            Err(Setup::DirectFailed(why)) => {
                tracing::warn!(target = %target.to_text(), reason = %why,
                    "direct path failed: asking NMS for a relayed path");
                self.setup(target, true)
                    .await
                    .map_err(Setup::into_route_error)
            }
            other => other.map_err(Setup::into_route_error),
        }
    }

    /// One Direction Request and the tunnel it directs. `direct_failed`: the direct
    /// route NMS gave before could not be used (Flag 34 asks NMS to relay).
    pub(super) async fn setup(
        self: &Arc<Self>,
        target: DirectionTarget,
        direct_failed: bool,
    ) -> Result<Arc<PeerLink>, Setup> {
        let Some(nms) = self.nms_connection() else {
            return Err(RouteError::Unreachable(
                "not registered with NMS (cloud unreachable)".into(),
            )
            .into());
        };
        let text = target.to_text();
        let mut req = Message::request(Body::DirectionRequest(DirectionRequest {
            application_id: ApplicationId::ZERO,
            path_id: PathId::ZERO,
            target,
        }))
        .with_node_id(self.me.node_id);
        if direct_failed {
            req = req.with_flag(Flag::PeerUnreachable);
        }
        let resp = rpc::transact(&nms, &req, CLOUD_TIMEOUT)
            .await
            .map_err(|e| match e {
                rpc::TransactError::Refused(Flag::NoSuchName) => RouteError::NoSuchName,
                e => RouteError::Unreachable(format!("Direction Request: {e}")),
            })?;
        let rd = match (resp.flag, &resp.body) {
            (Flag::Ok, Body::RouteDirectionToInitiator(rd)) => rd.clone(),
            (Flag::NoSuchName, _) => return Err(RouteError::NoSuchName.into()),
            (flag, _) => {
                tracing::info!(target = %text, ?flag, "NMS gave no route");
                return Err(RouteError::Unreachable(format!(
                    "NMS refused the direction: {flag:?}"
                ))
                .into());
            }
        };
        let peer = peer_of(&rd.responder);
        let kind = kind_of(rd.process_code);
        tracing::info!(responder = %peer.fqdn, path = %rd.path_id, code = rd.process_code as u8,
            "Route Direction to Initiator: {kind} path");
        self.expect_path(&resp, &rd, &peer, kind);
        let direct = match rd.process_code {
            ProcessCode::InitiatorDials | ProcessCode::SameNat => {
                let dial = *resp.candidates().first().ok_or_else(|| {
                    RouteError::Unreachable("Route Direction without an address".into())
                })?;
                tokio::time::timeout(
                    DIRECT_ATTEMPT,
                    self.dial(dial, peer, rd.path_id, kind, None, true),
                )
                .await
                .unwrap_or_else(|_| Err(anyhow!("no answer from {dial} within {DIRECT_ATTEMPT:?}")))
            }
            ProcessCode::ResponderDials => {
                tokio::time::timeout(DIRECT_ATTEMPT, self.wait_for_peer(&peer.fqdn))
                    .await
                    .unwrap_or_else(|_| {
                        Err(anyhow!(
                            "{} did not dial back within {DIRECT_ATTEMPT:?}",
                            peer.fqdn
                        ))
                    })
            }
            ProcessCode::ViaTrs => {
                let tokens = resp.relay().ok_or_else(|| {
                    RouteError::Unreachable("relayed Route Direction without relay tokens".into())
                })?;
                let trs = trs_address(&rd, self.current_nms().is_ipv6()).ok_or_else(|| {
                    RouteError::Unreachable("relayed Route Direction without a TRS address".into())
                })?;
                let relayed = match self.ensure_trs(trs).await {
                    Ok(()) => {
                        self.dial(trs, peer, rd.path_id, kind, Some(tokens.responder), true)
                            .await
                    }
                    Err(e) => Err(e),
                };
                return relayed.map_err(|e| RouteError::Unreachable(format!("{e:#}")).into());
            }
        };
        direct.map_err(|e| Setup::DirectFailed(format!("{e:#}")))
    }

    pub(super) async fn wait_for_peer(&self, fqdn: &Fqdn) -> Result<Arc<PeerLink>> {
        loop {
            let notified = self.peers.changed.notified();
            if let Some(l) = self.peers.by_fqdn(fqdn).filter(|l| l.is_alive()) {
                return Ok(l);
            }
            notified.await;
        }
    }

    /// Dial a peer and run Tunnel Request/Response (SPEC §6 Tunnel).
    pub(super) async fn dial(
        self: &Arc<Self>,
        addr: SocketAddr,
        peer: PeerInfo,
        path: PathId,
        kind: PathKind,
        via: Option<RelayToken>,
        fresh: bool,
    ) -> Result<Arc<PeerLink>> {
        let conn = self
            .ep
            .dial_peer(&self.creds, addr, &peer.fqdn, via)
            .await?;
        let id = peer_identity(&conn).context("peer presented no certificate")?;
        if id.name != peer.fqdn {
            conn.close(quinn::VarInt::from_u32(33), b"wrong peer");
            return Err(anyhow!(
                "peer at {addr} is {} but NMS named {}",
                id.name,
                peer.fqdn
            ));
        }
        let mut link = PeerLink::new(peer, path, kind, conn.clone(), true, id.node_id);
        link.fresh = fresh;
        let offer = self.offer_fast(&link);
        let mut req = Message::request(Body::TunnelRequest).with_path_id(path);
        if !fresh {
            // An extra connection from hole punching (SPEC §8).
            req = req.with_flag(Flag::Optimization);
        }
        if let Some((dcid, _)) = &offer {
            req = req.with_extension(Extension::FastData(*dcid));
        }
        let resp = rpc::transact(&conn, &req, CLOUD_TIMEOUT)
            .await
            .map_err(|e| anyhow!("Tunnel Request to {} refused: {e}", link.peer.fqdn))?;
        if resp.flag != Flag::Ok || !matches!(resp.body, Body::TunnelResponse) {
            conn.close(quinn::VarInt::from_u32(0), b"tunnel refused");
            return Err(anyhow!(
                "{} refused the tunnel: {:?}",
                link.peer.fqdn,
                resp.flag
            ));
        }
        if let (Some((_, key)), Some(peer_dcid)) = (offer, resp.fast_data()) {
            self.start_fast(&link, key, peer_dcid);
        }
        let link = Arc::new(link);
        Ok(self.clone().activate(link))
    }

    /// Offer the fast data channel on `link` (`peers.fast_data`): register this
    /// end's receive channel (on the link, so it goes with it) and return its
    /// Destination CID with the key this end will send with.
    fn offer_fast(&self, link: &PeerLink) -> Option<([u8; 16], ring::aead::LessSafeKey)> {
        if !self.settings.fast_data {
            return None;
        }
        let Some((tx, rx)) = fastdata::derive_keys(&link.conn, &link.path_id, link.dialed) else {
            tracing::warn!(peer = %link.peer.fqdn, "no keys for the fast data channel; packets go in QUIC datagrams");
            return None;
        };
        let target = fastdata::LinkRx {
            sink: self.sink.clone(),
            peer_v4: link.peer.virtual_ipv4,
            peer_v6: link.peer.virtual_ipv6,
            counters: link.counters.clone(),
            started: link.started,
        };
        let (reg, dcid) = self
            .ep
            .fast_channels
            .register(self.ep.token, fastdata::RxChannel::new(rx, target));
        let _ = link.fast_rx.set(reg);
        Some((dcid, tx))
    }

    /// Both ends offered the fast data channel: send to the peer's.
    fn start_fast(&self, link: &PeerLink, key: ring::aead::LessSafeKey, peer_dcid: [u8; 16]) {
        let _ = link.fast_tx.set(fastdata::TxChannel::new(key, peer_dcid));
    }

    // ----- accepted peer connections (responder side) ----------------------------

    pub(super) async fn accept(self: Arc<Self>, conn: quinn::Connection) -> Result<()> {
        let Some(id) = peer_identity(&conn) else {
            conn.close(quinn::VarInt::from_u32(33), b"no certificate");
            return Err(anyhow!("peer connection without a certificate"));
        };
        let (mut send, mut recv) = tokio::time::timeout(Duration::from_secs(5), conn.accept_bi())
            .await
            .context("no Tunnel Request")??;
        let req = tokio::time::timeout(
            Duration::from_secs(5),
            read_message(&mut recv, rpc::MAX_SIGNALING_LEN),
        )
        .await
        .context("Tunnel Request timed out")??;
        if !matches!(req.body, Body::TunnelRequest) {
            let _ = write_message(&mut send, &refusal(&req, Flag::Malformed)).await;
            let _ = send.shutdown().await;
            conn.close(quinn::VarInt::from_u32(36), b"expected a Tunnel Request");
            return Err(anyhow!(
                "first message from {} was not a Tunnel Request",
                id.name
            ));
        }
        let path = req.path_id();
        let expected = self
            .peers
            .wait_expected(&path, Duration::from_secs(3))
            .await;
        let ok = expected.as_ref().is_some_and(|e| e.peer.fqdn == id.name);
        if !ok {
            tracing::warn!(peer = %id.name, path = %path,
                named = ?expected.as_ref().map(|e| e.peer.fqdn.to_string()),
                "tunnel refused: NMS named no such peer for this path");
            refuse_tunnel(
                &conn,
                send,
                &req,
                Flag::Unauthenticated,
                b"not the peer NMS named",
            )
            .await;
            return Ok(());
        }
        let e = expected.expect("checked above");
        // Through a TRS the connection comes from the TRS's address; anything else on a
        // relayed path is the peer itself, hole-punched (SPEC §8).
        let remote = cloud::unmapped(conn.remote_address());
        let via_trs = self.trs.lock().await.contains_key(&remote);
        if self.settings.relay_only && !via_trs {
            tracing::info!(peer = %id.name, %remote,
                "direct tunnel refused: peers.relay_only keeps every tunnel on the TRS");
            refuse_tunnel(&conn, send, &req, Flag::PeerUnreachable, b"relay only").await;
            return Ok(());
        }
        let kind = match e.kind {
            _ if via_trs => PathKind::Relayed,
            PathKind::Relayed => PathKind::Direct,
            k => k,
        };
        let mut link = PeerLink::new(e.peer, path, kind, conn, false, id.node_id);
        link.fresh = req.flag != Flag::Optimization;
        let mut resp = Message::response_to(&req, Flag::Ok, Body::TunnelResponse);
        if let Some(peer_dcid) = req.fast_data() {
            if let Some((dcid, key)) = self.offer_fast(&link) {
                resp = resp.with_extension(Extension::FastData(dcid));
                self.start_fast(&link, key, peer_dcid);
            }
        }
        write_message(&mut send, &resp).await?;
        let _ = send.shutdown().await;
        let link = Arc::new(link);
        self.activate(link);
        Ok(())
    }
}

/// Answer a Tunnel Request with a refusal carrying `flag`, give it a moment to reach
/// the peer, and close the connection (the flag's code is the close code).
async fn refuse_tunnel(
    conn: &quinn::Connection,
    mut send: quinn::SendStream,
    req: &Message,
    flag: Flag,
    reason: &[u8],
) {
    let _ = write_message(&mut send, &refusal(req, flag)).await;
    let _ = send.shutdown().await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    conn.close(quinn::VarInt::from_u32(flag.code() as u32), reason);
}
