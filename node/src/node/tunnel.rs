//! A tunnel's life once it is up: installing it (one per pair), route optimization
//! while it is relayed (SPEC §8), and its receive side (datagrams and the oversize
//! stream).

use super::*;

impl Node {
    /// Install a link and start its receive loop; flush packets that waited for it.
    pub(super) fn activate(self: Arc<Self>, link: Arc<PeerLink>) -> Arc<PeerLink> {
        let (current, displaced) = self.peers.install(link.clone(), self.me.node_id);
        if let Some(old) = displaced {
            // One connection per pair: close the other after a short drain.
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(2)).await;
                old.conn
                    .close(quinn::VarInt::from_u32(0), b"duplicate connection");
            });
        }
        if !Arc::ptr_eq(&current, &link) {
            return current;
        }
        link.touch();
        {
            let mut known = lock(&self.known);
            if known.len() > 65536 {
                known.clear();
            }
            for a in [
                IpAddr::V4(link.peer.virtual_ipv4),
                IpAddr::V6(link.peer.virtual_ipv6),
            ] {
                known.insert(a, link.peer.fqdn.clone());
            }
        }
        tracing::info!(peer = %link.peer.fqdn, path = %link.kind, remote = %link.conn.remote_address(),
            dialed = link.dialed, max_datagram = ?link.conn.max_datagram_size(), "tunnel up");
        tokio::spawn(self.clone().receive_loop(link.clone()));
        tokio::spawn(self.clone().oversize_reader(link.clone()));
        if let Some(rx) = link.take_oversize_rx() {
            tokio::spawn(Self::oversize_writer(link.clone(), rx));
        }
        tokio::spawn(rpc::serve(link.conn.clone(), |m: Message| async move {
            Some(match m.body {
                Body::KeepAlive => Message::response_to(&m, Flag::Ok, Body::KeepAliveAck),
                Body::HolePunching => Message::response_to(&m, Flag::Optimization, Body::Ack),
                _ => refusal(&m, Flag::Malformed),
            })
        }));
        self.flush_pending(&link);
        if link.kind == PathKind::Relayed {
            let candidates = self
                .peers
                .expected(&link.path_id)
                .map(|e| e.candidates)
                .unwrap_or_default();
            if !candidates.is_empty() && !self.settings.relay_only {
                tokio::spawn(self.clone().optimize(link.clone(), candidates));
            }
        }
        if let Some(from) = link.switched_from.get() {
            tracing::info!(peer = %link.peer.fqdn, from = %from, to = %link.kind,
                remote = %link.conn.remote_address(), "path switched");
        }
        link
    }

    /// SPEC §8 route optimization: while `relayed` carries the pair, dial the peer's
    /// candidates directly (the peer does the same at the same time, so both NATs open
    /// mappings); a direct tunnel that completes replaces the relayed one, which is
    /// closed after a drain. Stops when the relayed tunnel is gone or replaced.
    pub(super) async fn optimize(
        self: Arc<Self>,
        relayed: Arc<PeerLink>,
        candidates: Vec<SocketAddr>,
    ) {
        let mut attempt = 0usize;
        loop {
            let wait = OPTIMIZE_SCHEDULE
                .get(attempt)
                .copied()
                .unwrap_or(OPTIMIZE_EVERY);
            attempt += 1;
            tokio::time::sleep(wait).await;
            let current = self.peers.by_fqdn(&relayed.peer.fqdn);
            if !relayed.is_alive() || !current.is_some_and(|c| Arc::ptr_eq(&c, &relayed)) {
                return;
            }
            let mut tries = tokio::task::JoinSet::new();
            for (i, &addr) in candidates.iter().enumerate() {
                let me = self.clone();
                let peer = relayed.peer.clone();
                let path = relayed.path_id;
                // The first candidate is the NAT mapping NMS observed; the others are
                // the peer's own addresses, reachable only from its LAN.
                let kind = if i == 0 {
                    PathKind::Direct
                } else {
                    PathKind::Lan
                };
                tries.spawn(async move {
                    tokio::time::timeout(
                        OPTIMIZE_ATTEMPT,
                        me.dial(addr, peer, path, kind, None, false),
                    )
                    .await
                    .map_err(|_| anyhow!("timed out"))
                    .and_then(|r| r)
                    .map_err(|e| format!("{addr}: {e:#}"))
                });
            }
            let mut failures = Vec::new();
            while let Some(r) = tries.join_next().await {
                match r {
                    Ok(Ok(link)) if link.kind != PathKind::Relayed => {
                        let hp = Message::request(Body::HolePunching).with_path_id(link.path_id);
                        match rpc::transact(&link.conn, &hp, CLOUD_TIMEOUT).await {
                            Ok(m) if m.flag == Flag::Optimization => {}
                            other => tracing::debug!(?other, "Hole Punching not acknowledged"),
                        }
                        return;
                    }
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => failures.push(e),
                    Err(e) => failures.push(e.to_string()),
                }
            }
            tracing::info!(peer = %relayed.peer.fqdn, attempt, failures = ?failures,
                "still relayed: no direct path yet");
        }
    }

    pub(super) fn flush_pending(&self, link: &Arc<PeerLink>) {
        let waiting: Vec<Vec<u8>> = {
            let mut p = lock(&self.pending);
            let mut out = Vec::new();
            for a in [
                IpAddr::V4(link.peer.virtual_ipv4),
                IpAddr::V6(link.peer.virtual_ipv6),
            ] {
                if let Some(q) = p.remove(&a) {
                    out.extend(q.packets);
                }
            }
            out
        };
        let mut buf = BytesMut::new();
        for pkt in waiting {
            self.send_on(link, &pkt, &mut buf);
        }
    }

    /// Datagrams from the peer to the TUN. Whatever has arrived by the time one is
    /// read is taken too (up to a batch) and written in one go, so runs of one TCP
    /// flow reach the kernel coalesced (see tun.rs).
    pub(super) async fn receive_loop(self: Arc<Self>, link: Arc<PeerLink>) {
        let mut batch = TunBatch::default();
        let reason = 'run: loop {
            let d = match link.conn.read_datagram().await {
                Ok(d) => d,
                Err(e) => break e,
            };
            self.receive_datagram(&link, &d, &mut batch);
            while !batch.is_full() {
                match ready_now(link.conn.read_datagram()) {
                    Some(Ok(d)) => self.receive_datagram(&link, &d, &mut batch),
                    Some(Err(e)) => {
                        self.sink.deliver_batch(&mut batch);
                        break 'run e;
                    }
                    None => break,
                }
            }
            self.sink.deliver_batch(&mut batch);
        };
        if self.peers.remove(&link) {
            tracing::info!(peer = %link.peer.fqdn, reason = %reason, "tunnel closed");
        }
    }

    fn receive_datagram(&self, link: &PeerLink, d: &bytes::Bytes, batch: &mut TunBatch) {
        if link.fast_tx.get().is_some() {
            // The peer sends on QUIC (a bulk flow's large packets): answer there too,
            // so its QUIC ACKs ride our packets as they did before the fast channel.
            link.quic_now();
        }
        match CapsuleRef::decode(d) {
            Ok(cap) => {
                if self.receive(link, cap.path_id, cap.payload) {
                    batch.push(d, cap.payload);
                }
            }
            Err(_) => {
                link.counters.malformed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// One packet from a peer: true when it is on this link's path and from the
    /// peer's own virtual address (SPEC §6 Data), else it is dropped and counted.
    pub(super) fn receive(&self, link: &PeerLink, path: PathId, payload: &[u8]) -> bool {
        let c = &link.counters;
        if path != link.path_id {
            c.malformed.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        match packet::addresses(payload) {
            Some((src, _)) if link.owns(src) => {}
            _ => {
                if c.spoofed.fetch_add(1, Ordering::Relaxed) == 0 {
                    tracing::warn!(peer = %link.peer.fqdn, "dropped a capsule with a spoofed inner source");
                }
                return false;
            }
        }
        c.rx_packets.fetch_add(1, Ordering::Relaxed);
        c.rx_bytes
            .fetch_add(payload.len() as u64, Ordering::Relaxed);
        link.touch();
        true
    }

    /// Capsules the peer sent on streams (packets too large for its datagrams).
    pub(super) async fn oversize_reader(self: Arc<Self>, link: Arc<PeerLink>) {
        while let Ok(mut recv) = link.conn.accept_uni().await {
            let me = self.clone();
            let link = link.clone();
            tokio::spawn(async move {
                while let Ok(m) = read_message(&mut recv, MAX_MESSAGE_LEN).await {
                    match &m.body {
                        Body::Capsule(c) => {
                            if me.receive(&link, m.path_id(), &c.payload) {
                                me.sink.deliver(&c.payload);
                            }
                        }
                        _ => {
                            link.counters.malformed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            });
        }
    }

    /// Writes the link's oversize Capsules, in order, on one unidirectional stream.
    pub(super) async fn oversize_writer(
        link: Arc<PeerLink>,
        mut rx: tokio::sync::mpsc::Receiver<bytes::Bytes>,
    ) {
        let mut stream: Option<quinn::SendStream> = None;
        while let Some(cap) = rx.recv().await {
            if stream.is_none() {
                match link.conn.open_uni().await {
                    Ok(s) => stream = Some(s),
                    Err(_) => return,
                }
            }
            if let Some(s) = stream.as_mut() {
                if s.write_all(&cap).await.is_err() {
                    stream = None;
                }
            }
        }
    }
}

/// The output of `fut` if it is ready without waiting (it is dropped otherwise).
fn ready_now<F: std::future::Future>(fut: F) -> Option<F::Output> {
    let mut fut = std::pin::pin!(fut);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match fut.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(v) => Some(v),
        std::task::Poll::Pending => None,
    }
}
