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

/// Socket buffer size asked for. The kernel caps it at net.core.{r,w}mem_max (often
/// 208 KiB, less than one burst of GSO segments at a few Gbit/s); a process with
/// CAP_NET_ADMIN (the node, which needs it for the TUN, and a root cloud) gets it
/// all the same.
const SOCKET_BUFFER: usize = 8 * 1024 * 1024;

/// `SO_RCVBUF`/`SO_SNDBUF`, beyond the sysctl cap when the process may.
fn large_buffers(socket: &Socket) {
    use std::os::fd::AsRawFd;
    // Best effort: a small buffer costs throughput, not correctness.
    let _ = socket.set_recv_buffer_size(SOCKET_BUFFER);
    let _ = socket.set_send_buffer_size(SOCKET_BUFFER);
    let force = |opt: libc::c_int| {
        let v = SOCKET_BUFFER as libc::c_int;
        // SAFETY: a valid socket, an int option and its size.
        unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                (&v as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        }
    };
    // The kernel reports twice what was set (it counts its bookkeeping).
    if socket.recv_buffer_size().unwrap_or(0) < SOCKET_BUFFER {
        force(libc::SO_RCVBUFFORCE);
    }
    if socket.send_buffer_size().unwrap_or(0) < SOCKET_BUFFER {
        force(libc::SO_SNDBUFFORCE);
    }
}

/// Bind the one UDP socket of a process. An unspecified IPv6 address is bound
/// dual-stack (IPv4 arrives as v4-mapped addresses).
pub fn bind_udp(addr: SocketAddr) -> io::Result<std::net::UdpSocket> {
    let domain = Domain::for_address(addr);
    let socket = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        // Dual-stack unless a specific IPv6 address was asked for.
        socket.set_only_v6(!addr.ip().is_unspecified())?;
    }
    large_buffers(&socket);
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Root (CAP_NET_ADMIN, as the node daemon has) gets the full buffers even where
    /// net.core.rmem_max is smaller; others get what the sysctl allows.
    #[test]
    fn sockets_get_large_buffers() {
        let s = bind_udp("127.0.0.1:0".parse().unwrap()).unwrap();
        let s = Socket::from(s);
        let (rcv, snd) = (s.recv_buffer_size().unwrap(), s.send_buffer_size().unwrap());
        if unsafe { libc::geteuid() } == 0 {
            assert!(rcv >= SOCKET_BUFFER, "receive buffer {rcv}");
            assert!(snd >= SOCKET_BUFFER, "send buffer {snd}");
        } else {
            assert!(rcv > 0 && snd > 0);
        }
    }
}
