//! Mobility (SPEC §6): what a node does when its real address changes.

use super::*;

impl Node {
    // ----- mobility (SPEC §6) --------------------------------------------------------

    pub fn current_nms(&self) -> SocketAddr {
        *lock(&self.nms_now)
    }

    /// The NMS address to use: the current one while the host can reach its family,
    /// else another the Login Response gave.
    pub(super) fn pick_nms(&self) -> SocketAddr {
        let now = self.current_nms();
        let reachable = |a: &SocketAddr| cloud::source_address_for(*a).is_some();
        if reachable(&now) {
            return now;
        }
        let next = self
            .me
            .nms_all
            .iter()
            .copied()
            .find(reachable)
            .unwrap_or(now);
        *lock(&self.nms_now) = next;
        next
    }

    /// The host's addresses or routes changed: if this node's own address toward NMS
    /// changed, it moved. It re-registers (the NMS connection migrates, NMS tells the
    /// peers), then checks every tunnel: where this node is the QUIC client the
    /// connection migrates and a probe confirms it; where it was the server (QUIC
    /// cannot move a server) or the probe fails, the pair is set up afresh from the new
    /// location and the fresh tunnel replaces the stale one. Virtual addresses never
    /// change, so overlay flows only see a pause.
    pub async fn network_changed(self: &Arc<Self>) {
        let _one = self.moving.lock().await;
        let before = self.current_nms();
        let nms = self.pick_nms();
        let source = cloud::source_address_for(nms);
        let previous = std::mem::replace(&mut *lock(&self.last_source), source);
        if previous == source && nms == before {
            return;
        }
        tracing::info!(from = ?previous, to = ?source, nms = %nms,
            "real address changed: re-registering and checking tunnels");
        if source.is_none() {
            return; // no route at all: wait for the next change
        }
        let registered = match self.nms_connection() {
            Some(conn) if nms == before => {
                let req = cloud::registration(&self.ep, self.me.node_id, nms);
                match cloud::register(&conn, &req).await {
                    Ok(reg) => {
                        tracing::info!(observed = ?reg.observed, nat = reg.nat, "re-registered after the move");
                        let mut s = lock(&self.cloud_status);
                        s.observed = reg.observed;
                        s.nat = Some(reg.nat);
                        s.since_unix = unix_now();
                        s.registrations += 1;
                        true
                    }
                    Err(e) => {
                        tracing::warn!(error = %format!("{e:#}"), "re-registration failed; reconnecting");
                        conn.close(quinn::VarInt::from_u32(0), b"moved");
                        false
                    }
                }
            }
            Some(conn) => {
                // Another address family: a new connection (run_cloud reconnects).
                conn.close(quinn::VarInt::from_u32(0), b"moved to another family");
                false
            }
            None => false,
        };
        if !registered {
            let mut rx = self.nms.subscribe();
            let _ = rx.borrow_and_update();
            let live = |c: &Option<quinn::Connection>| {
                c.as_ref().is_some_and(|c| c.close_reason().is_none())
            };
            let _ = tokio::time::timeout(Duration::from_secs(10), rx.wait_for(live)).await;
        }
        self.revalidate_trs().await;
        for link in self.peers.links() {
            let me = self.clone();
            tokio::spawn(async move { me.revalidate(link).await });
        }
    }

    /// Make the TRS control connections migrate now (a round trip from the new
    /// address), so relayed tunnels follow.
    pub(super) async fn revalidate_trs(&self) {
        let conns: Vec<quinn::Connection> = self.trs.lock().await.values().cloned().collect();
        for c in conns {
            let ka = Message::request(Body::KeepAlive).with_node_id(self.me.node_id);
            let _ = rpc::transact(&c, &ka, Duration::from_secs(2)).await;
        }
    }

    pub(super) async fn revalidate(self: Arc<Self>, link: Arc<PeerLink>) {
        let remote = cloud::unmapped(link.conn.remote_address());
        let routable = cloud::source_address_for(remote).is_some();
        if routable && (link.dialed || link.kind == PathKind::Relayed) {
            let ka = Message::request(Body::KeepAlive).with_path_id(link.path_id);
            let wait = (link.conn.rtt() * 4).max(MOVE_PROBE);
            if rpc::transact(&link.conn, &ka, wait).await.is_ok() {
                tracing::info!(peer = %link.peer.fqdn, path = %link.kind, "tunnel survived the move");
                return;
            }
        }
        let current = self.peers.by_fqdn(&link.peer.fqdn);
        if !current.is_some_and(|c| Arc::ptr_eq(&c, &link)) {
            return;
        }
        tracing::info!(peer = %link.peer.fqdn, was = %link.kind, dialed = link.dialed,
            "tunnel cannot follow the move: setting the pair up afresh");
        // It is dead from here: packets wait for the new tunnel instead, and the new
        // one does not have to win against it.
        self.peers.remove(&link);
        let stale = link.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(5)).await;
            stale.conn.close(quinn::VarInt::from_u32(0), b"moved");
        });
        let target = DirectionTarget::Fqdn(link.peer.fqdn.clone());
        let gate = lock(&self.inflight)
            .entry(self.gate_key(&target))
            .or_default()
            .clone();
        let _g = gate.lock().await;
        match tokio::time::timeout(
            self.settings.setup_timeout,
            self.setup_with_fallback(target),
        )
        .await
        {
            Ok(Ok(l)) => {
                tracing::info!(peer = %l.peer.fqdn, path = %l.kind, "tunnel re-established after the move")
            }
            Ok(Err(e)) => {
                tracing::warn!(peer = %link.peer.fqdn, error = %e, "could not re-establish the tunnel")
            }
            Err(_) => {
                tracing::warn!(peer = %link.peer.fqdn, "re-establishing the tunnel timed out")
            }
        }
    }
}
