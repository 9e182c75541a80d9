//! Forwarding of non-overlay queries to the host's upstream resolvers.
//!
//! Each forwarded query goes out from a fresh socket (a new random source port) with a
//! fresh random ID, so an off-path attacker has to guess both; the answer is accepted only
//! from the upstream's address with that ID and QR set, and is handed back byte for byte
//! except that its ID is set back to the client's. A truncated UDP answer (TC) is passed on
//! as is: the client retries over TCP, and TCP queries are forwarded over TCP.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

use super::wire;

/// Largest DNS message (TCP length prefix limit; also bounds UDP receive buffers).
pub const MAX_MESSAGE: usize = 65535;

/// Why one upstream gave no usable answer.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    /// No answer within the per-upstream timeout.
    #[error("upstream {0} timed out")]
    Timeout(SocketAddr),
    /// A socket error talking to the upstream.
    #[error("upstream {addr}: {source}")]
    Io {
        /// The upstream.
        addr: SocketAddr,
        /// The error.
        source: std::io::Error,
    },
    /// The upstream sent something that is not the answer to our query.
    #[error("upstream {0} sent a malformed answer")]
    Malformed(SocketAddr),
    /// The query is too large to forward.
    #[error("query too large to forward")]
    TooLarge,
}

/// The transport a query arrived on (and is forwarded on).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// UDP datagrams.
    Udp,
    /// TCP with the 2-byte length prefix.
    Tcp,
}

/// Forward `query` to each upstream in turn until one answers within `timeout`; the answer
/// carries the ID of `query`. `Err` holds the last upstream's failure (or `None` if there
/// were no upstreams).
pub async fn forward(
    query: &[u8],
    upstreams: &[SocketAddr],
    transport: Transport,
    timeout: Duration,
) -> Result<Vec<u8>, Option<ForwardError>> {
    let client_id = wire::message_id(query).ok_or(Some(ForwardError::TooLarge))?;
    let mut last = None;
    for &up in upstreams {
        let our_id: u16 = rand::random();
        let mut q = query.to_vec();
        wire::set_message_id(&mut q, our_id);
        let attempt = match transport {
            Transport::Udp => tokio::time::timeout(timeout, udp_exchange(&q, up, our_id)).await,
            Transport::Tcp => tokio::time::timeout(timeout, tcp_exchange(&q, up, our_id)).await,
        };
        match attempt {
            Ok(Ok(mut answer)) => {
                wire::set_message_id(&mut answer, client_id);
                return Ok(answer);
            }
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "forwarding failed; trying next upstream");
                last = Some(e);
            }
            Err(_) => {
                tracing::debug!(upstream = %up, "upstream timed out; trying next");
                last = Some(ForwardError::Timeout(up));
            }
        }
    }
    Err(last)
}

fn unspecified_for(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(_) => SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0),
        IpAddr::V6(_) => SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0),
    }
}

async fn udp_exchange(q: &[u8], up: SocketAddr, id: u16) -> Result<Vec<u8>, ForwardError> {
    let io = |source| ForwardError::Io { addr: up, source };
    let sock = UdpSocket::bind(unspecified_for(up)).await.map_err(io)?;
    // connect() makes the kernel discard datagrams from any other address.
    sock.connect(up).await.map_err(io)?;
    sock.send(q).await.map_err(io)?;
    let mut buf = vec![0u8; MAX_MESSAGE];
    // Bounded by the caller's timeout; stray datagrams with a wrong ID are skipped.
    loop {
        let n = sock.recv(&mut buf).await.map_err(io)?;
        let answer = &buf[..n];
        if wire::message_id(answer) == Some(id) && wire::is_response(answer) {
            return Ok(answer.to_vec());
        }
    }
}

async fn tcp_exchange(q: &[u8], up: SocketAddr, id: u16) -> Result<Vec<u8>, ForwardError> {
    let io = |source| ForwardError::Io { addr: up, source };
    let len = u16::try_from(q.len()).map_err(|_| ForwardError::TooLarge)?;
    let mut stream = TcpStream::connect(up).await.map_err(io)?;
    let mut framed = Vec::with_capacity(q.len() + 2);
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(q);
    stream.write_all(&framed).await.map_err(io)?;
    let mut lenbuf = [0u8; 2];
    stream.read_exact(&mut lenbuf).await.map_err(io)?;
    let n = usize::from(u16::from_be_bytes(lenbuf));
    let mut answer = vec![0u8; n];
    stream.read_exact(&mut answer).await.map_err(io)?;
    if wire::message_id(&answer) == Some(id) && wire::is_response(&answer) {
        Ok(answer)
    } else {
        Err(ForwardError::Malformed(up))
    }
}
