//! QUIC endpoint plumbing shared by every CYPHONIC party (SPEC §3).
//!
//! One UDP socket per process (dual-stack when bound to `[::]`), large socket
//! buffers, 16-byte Connection IDs that begin with the endpoint's relay token, QUIC
//! DATAGRAM support, and keep-alive/idle timers.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use cyphonic_proto::quic::RelayCidGenerator;
use cyphonic_proto::RelayToken;
use socket2::{Domain, Protocol, Socket, Type};

/// ALPN of each role (SPEC §3).
pub const ALPN_AS: &[u8] = b"cyphonic-as/2";
pub const ALPN_NMS: &[u8] = b"cyphonic-nms/2";
pub const ALPN_TRS: &[u8] = b"cyphonic-trs/2";
pub const ALPN_PEER: &[u8] = b"cyphonic-peer/2";

/// Socket buffer size asked for (the kernel caps it at net.core.{r,w}mem_max).
const SOCKET_BUFFER: usize = 8 * 1024 * 1024;

/// Bind the one UDP socket of a process. An unspecified IPv6 address is bound
/// dual-stack (IPv4 arrives as v4-mapped addresses).
pub fn bind_udp(addr: SocketAddr) -> io::Result<std::net::UdpSocket> {
    let domain = Domain::for_address(addr);
    let socket = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        // Dual-stack unless a specific IPv6 address was asked for.
        socket.set_only_v6(!addr.ip().is_unspecified())?;
    }
    // Best effort: a small buffer costs throughput, not correctness.
    let _ = socket.set_recv_buffer_size(SOCKET_BUFFER);
    let _ = socket.set_send_buffer_size(SOCKET_BUFFER);
    socket.bind(&addr.into())?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// Transport parameters of cloud (signaling) connections.
pub fn signaling_transport(keep_alive: Option<Duration>, idle: Duration) -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    t.keep_alive_interval(keep_alive);
    t.max_idle_timeout(quinn::IdleTimeout::try_from(idle).ok());
    t.max_concurrent_bidi_streams(64u32.into());
    t.max_concurrent_uni_streams(0u32.into());
    t
}

/// Endpoint configuration whose CIDs carry `token` (SPEC §3, §7).
pub fn endpoint_config(token: RelayToken) -> quinn::EndpointConfig {
    let mut cfg = quinn::EndpointConfig::default();
    cfg.cid_generator(move || Box::new(RelayCidGenerator::new(token)));
    cfg
}

/// Wrap a bound socket for quinn (before any relay filtering is layered on).
pub fn wrap_socket(socket: std::net::UdpSocket) -> io::Result<Arc<dyn quinn::AsyncUdpSocket>> {
    quinn::Runtime::wrap_udp_socket(&quinn::TokioRuntime, socket)
}

/// An endpoint on `socket` with CIDs carrying `token`.
pub fn endpoint(
    socket: Arc<dyn quinn::AsyncUdpSocket>,
    token: RelayToken,
    server: Option<quinn::ServerConfig>,
) -> io::Result<quinn::Endpoint> {
    quinn::Endpoint::new_with_abstract_socket(
        endpoint_config(token),
        server,
        socket,
        Arc::new(quinn::TokioRuntime),
    )
}

/// The ALPN a connection negotiated.
pub fn alpn_of(conn: &quinn::Connection) -> Option<Vec<u8>> {
    conn.handshake_data()?
        .downcast::<quinn::crypto::rustls::HandshakeData>()
        .ok()?
        .protocol
}
