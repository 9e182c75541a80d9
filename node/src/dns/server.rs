//! The listeners: UDP and TCP sockets on every configured address, a bounded number of
//! queries in flight, and the glue from [`wire::classify`] to lookups and forwarding.

use std::net::SocketAddr;
use std::sync::Arc;

use cyphonic_proto::Fqdn;
use hickory_proto::op::ResponseCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{mpsc, Semaphore};
use tokio::task::{JoinHandle, JoinSet};

use super::forward::{self, Transport};
use super::lookup::Lookups;
use super::wire::{self, Classified};
use super::{
    DnsConfig, OverlayResolver, MAX_INFLIGHT, MAX_TCP_CONNECTIONS, TCP_IDLE_TIMEOUT,
    UPSTREAM_TIMEOUT,
};

/// Largest UDP query we read; longer datagrams are cut and then fail to decode (FORMERR).
const UDP_QUERY_BUF: usize = 4096;
/// Queries read ahead on one TCP connection while earlier ones are still being answered.
const TCP_PIPELINE: usize = 16;

/// Everything a query handler needs.
struct Shared {
    domain: Fqdn,
    ttl: u32,
    upstreams: Vec<SocketAddr>,
    lookups: Lookups,
    inflight: Arc<Semaphore>,
}

/// The running overlay DNS server. Dropping it stops every task it spawned.
pub struct DnsServer {
    udp_addrs: Vec<SocketAddr>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        // Aborting a listener drops its JoinSet, which aborts every task it spawned.
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// True when sending to `up` would reach one of our own listeners: the same address, or
/// a loopback/unspecified address on the port of a wildcard listener.
fn is_own_address(up: SocketAddr, bound: &[SocketAddr]) -> bool {
    bound.iter().any(|l| {
        up == *l
            || (up.port() == l.port()
                && l.ip().is_unspecified()
                && (up.ip().is_loopback() || up.ip().is_unspecified()))
    })
}

impl DnsServer {
    /// Bind UDP and TCP on every `cfg.listen` address and start serving.
    pub async fn start(
        cfg: DnsConfig,
        resolver: Arc<dyn OverlayResolver>,
    ) -> std::io::Result<DnsServer> {
        let mut udps = Vec::new();
        let mut tcps = Vec::new();
        for &addr in &cfg.listen {
            let udp = UdpSocket::bind(addr).await?;
            let real = udp.local_addr()?;
            // TCP on the same port as UDP (port 0 resolved by the UDP bind).
            let tcp = TcpListener::bind(real).await?;
            udps.push(udp);
            tcps.push(tcp);
        }
        let udp_addrs: Vec<SocketAddr> = udps
            .iter()
            .map(UdpSocket::local_addr)
            .collect::<std::io::Result<_>>()?;
        let mut own = udp_addrs.clone();
        own.extend(cfg.listen.iter().copied());
        let upstreams: Vec<SocketAddr> = cfg
            .upstreams
            .iter()
            .copied()
            .filter(|up| {
                let own_addr = is_own_address(*up, &own);
                if own_addr {
                    tracing::warn!(upstream = %up, "dropping upstream that is our own listen address");
                }
                !own_addr
            })
            .collect();
        let shared = Arc::new(Shared {
            domain: cfg.domain.clone(),
            ttl: cfg.ttl,
            upstreams,
            lookups: Lookups::new(resolver, cfg.ttl, cfg.overlay_timeout),
            inflight: Arc::new(Semaphore::new(MAX_INFLIGHT)),
        });
        let conns = Arc::new(Semaphore::new(MAX_TCP_CONNECTIONS));
        let mut tasks = Vec::new();
        for udp in udps {
            tasks.push(tokio::spawn(udp_loop(Arc::new(udp), shared.clone())));
        }
        for tcp in tcps {
            tasks.push(tokio::spawn(tcp_loop(tcp, shared.clone(), conns.clone())));
        }
        tracing::info!(listen = ?udp_addrs, domain = %cfg.domain, "overlay DNS started");
        Ok(DnsServer { udp_addrs, tasks })
    }

    /// The bound UDP addresses (with the real port when 0 was asked for); TCP listens on
    /// the same addresses.
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.udp_addrs.clone()
    }
}

/// Answer one query (UDP datagram or TCP frame). `None`: say nothing.
async fn handle(bytes: &[u8], transport: Transport, shared: &Shared) -> Option<Vec<u8>> {
    match wire::classify(bytes, &shared.domain) {
        Classified::Drop => {
            tracing::debug!(len = bytes.len(), "dropping non-query");
            None
        }
        Classified::Reply(r) => {
            tracing::debug!(len = bytes.len(), "answered locally");
            Some(r)
        }
        Classified::Overlay { req, name } => {
            let out = shared.lookups.lookup(&name).await;
            tracing::debug!(%name, qtype = %req.query().query_type(), outcome = ?out, "overlay query");
            Some(wire::answer_overlay(&req, &out, shared.ttl))
        }
        Classified::Forward(req) => {
            if shared.upstreams.is_empty() {
                return Some(req.reply(ResponseCode::Refused, Vec::new(), false));
            }
            match forward::forward(bytes, &shared.upstreams, transport, UPSTREAM_TIMEOUT).await {
                Ok(answer) => {
                    tracing::debug!(name = %req.query().name(), "forwarded");
                    Some(answer)
                }
                Err(e) => {
                    tracing::debug!(name = %req.query().name(), error = ?e, "all upstreams failed");
                    Some(req.reply(ResponseCode::ServFail, Vec::new(), false))
                }
            }
        }
    }
}

async fn udp_loop(sock: Arc<UdpSocket>, shared: Arc<Shared>) {
    let mut set = JoinSet::new();
    let mut buf = vec![0u8; UDP_QUERY_BUF];
    loop {
        tokio::select! {
            r = sock.recv_from(&mut buf) => {
                let (n, peer) = match r {
                    Ok(x) => x,
                    Err(e) => {
                        // ICMP errors of earlier sends show up here on some systems.
                        tracing::debug!(error = %e, "udp receive error");
                        continue;
                    }
                };
                let Ok(permit) = shared.inflight.clone().try_acquire_owned() else {
                    tracing::debug!(%peer, "too many queries in flight; dropping");
                    continue;
                };
                let query = buf[..n].to_vec();
                let (sock, shared) = (sock.clone(), shared.clone());
                set.spawn(async move {
                    let _permit = permit;
                    if let Some(reply) = handle(&query, Transport::Udp, &shared).await {
                        if let Err(e) = sock.send_to(&reply, peer).await {
                            tracing::debug!(%peer, error = %e, "udp send failed");
                        }
                    }
                });
            }
            Some(_) = set.join_next(), if !set.is_empty() => {}
        }
    }
}

async fn tcp_loop(listener: TcpListener, shared: Arc<Shared>, conns: Arc<Semaphore>) {
    let mut set = JoinSet::new();
    loop {
        tokio::select! {
            r = listener.accept() => {
                let (stream, peer) = match r {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::debug!(error = %e, "tcp accept error");
                        // Out of file descriptors and the like: do not spin.
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let Ok(permit) = conns.clone().try_acquire_owned() else {
                    tracing::debug!(%peer, "too many tcp connections; closing");
                    continue;
                };
                let shared = shared.clone();
                set.spawn(async move {
                    let _permit = permit;
                    tcp_connection(stream, shared).await;
                });
            }
            Some(_) = set.join_next(), if !set.is_empty() => {}
        }
    }
}

/// Serve one TCP connection: queries are read ahead (up to [`TCP_PIPELINE`]) and answered
/// concurrently, in whatever order they complete (RFC 7766 §6.2.1.1).
async fn tcp_connection(stream: TcpStream, shared: Arc<Shared>) {
    let (mut rd, mut wr) = stream.into_split();
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(TCP_PIPELINE);
    let mut queries = JoinSet::new();
    // The reader is aborted when this function returns (AbortOnDrop below).
    let reader = tokio::spawn(async move {
        loop {
            let frame = tokio::time::timeout(TCP_IDLE_TIMEOUT, async {
                let mut len = [0u8; 2];
                rd.read_exact(&mut len).await?;
                let mut body = vec![0u8; usize::from(u16::from_be_bytes(len))];
                rd.read_exact(&mut body).await?;
                Ok::<_, std::io::Error>(body)
            })
            .await;
            match frame {
                Ok(Ok(body)) => {
                    if tx.send(body).await.is_err() {
                        return;
                    }
                }
                _ => return,
            }
        }
    });
    struct AbortOnDrop(JoinHandle<()>);
    impl Drop for AbortOnDrop {
        fn drop(&mut self) {
            self.0.abort();
        }
    }
    let _reader = AbortOnDrop(reader);
    let mut reading = true;
    loop {
        tokio::select! {
            q = rx.recv(), if reading => {
                let Some(q) = q else { reading = false; continue; };
                let Ok(permit) = shared.inflight.clone().acquire_owned().await else { return };
                let shared = shared.clone();
                queries.spawn(async move {
                    let _permit = permit;
                    handle(&q, Transport::Tcp, &shared).await
                });
            }
            done = queries.join_next(), if !queries.is_empty() => {
                let Some(Ok(Some(reply))) = done else { continue };
                let Ok(len) = u16::try_from(reply.len()) else { continue };
                let mut framed = Vec::with_capacity(reply.len() + 2);
                framed.extend_from_slice(&len.to_be_bytes());
                framed.extend_from_slice(&reply);
                let wrote = tokio::time::timeout(TCP_IDLE_TIMEOUT, wr.write_all(&framed)).await;
                if !matches!(wrote, Ok(Ok(()))) {
                    return;
                }
            }
            else => return,
        }
    }
}
