//! Overlay DNS: the node's local resolver (SPEC §1, §2, §6 "Route selection").
//!
//! Every peer is named `<name>.<overlay domain>` (default `cyphonic.internal`). The
//! [`DnsServer`] listens on UDP and TCP (RFC 1035 2-byte length prefix) on each configured
//! address and:
//!
//! - answers names at or below the overlay domain itself, authoritatively (AA set). A query
//!   for a peer FQDN is the SPEC §6 trigger for route selection: the server calls
//!   [`OverlayResolver::resolve`] (the daemon's Direction Request to NMS) and answers A/AAAA
//!   with the peer's virtual addresses once the route is confirmed; other types get
//!   NOERROR/no data if the name resolves. `NoSuchName` → NXDOMAIN, `Unreachable` or no
//!   result within [`DnsConfig::overlay_timeout`] → SERVFAIL. The bare domain is NOERROR/no
//!   data without any lookup. Concurrent queries for one name share one `resolve` call;
//!   positive results are cached for [`DnsConfig::ttl`] seconds, NXDOMAIN for
//!   [`NEGATIVE_TTL`] (see [`lookup`]).
//! - forwards every other name verbatim to [`DnsConfig::upstreams`], in order, moving to the
//!   next after [`UPSTREAM_TIMEOUT`] (UDP queries over UDP, TCP over TCP), and returns the
//!   upstream bytes unchanged except for the client's ID. All failing → SERVFAIL; no
//!   upstreams → REFUSED. Upstreams that are one of our own listen addresses are dropped.
//! - never lets input hurt it: malformed messages get FORMERR (NOTIMP for other opcodes)
//!   when they carry a full header and are dropped otherwise (see [`wire`]); at most
//!   [`MAX_INFLIGHT`] queries are handled at once and at most [`MAX_TCP_CONNECTIONS`] TCP
//!   connections are open, each closed after [`TCP_IDLE_TIMEOUT`] of silence.
//!
//! Dropping the [`DnsServer`] stops every task it spawned.
//!
//! [`host`] points the host's own resolver at the server (resolv.conf or systemd-resolved)
//! and puts it back on shutdown.

pub mod forward;
pub mod host;
pub mod lookup;
mod server;
pub mod wire;

#[cfg(test)]
mod server_tests;

use std::future::Future;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::time::Duration;

use cyphonic_proto::Fqdn;

pub use host::{HostDns, HostDnsMode};
pub use server::DnsServer;

/// How long NXDOMAIN for an overlay name is remembered.
pub const NEGATIVE_TTL: Duration = Duration::from_secs(5);
/// How long one upstream gets to answer a forwarded query before the next is tried.
pub const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);
/// Most queries handled at once (UDP and TCP together); more UDP queries are dropped,
/// more TCP queries wait.
pub const MAX_INFLIGHT: usize = 256;
/// Most TCP connections open at once; more are accepted and closed at once.
pub const MAX_TCP_CONNECTIONS: usize = 64;
/// A TCP connection that sends no complete query for this long is closed.
pub const TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(10);

/// The virtual addresses of a peer, as the overlay resolved them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct OverlayAnswer {
    /// The peer's virtual IPv4, if it has one.
    pub ipv4: Option<Ipv4Addr>,
    /// The peer's virtual IPv6, if it has one.
    pub ipv6: Option<Ipv6Addr>,
}

/// Why an overlay name did not resolve.
#[derive(Debug, Clone, thiserror::Error)]
pub enum OverlayError {
    /// No such device: NXDOMAIN.
    #[error("no such overlay name")]
    NoSuchName,
    /// Known but offline, unreachable or timed out: SERVFAIL.
    #[error("overlay name unreachable: {0}")]
    Unreachable(String),
}

/// The future returned by [`OverlayResolver::resolve`].
pub type ResolveFuture = Pin<Box<dyn Future<Output = Result<OverlayAnswer, OverlayError>> + Send>>;

/// Route setup for an overlay name (implemented by the daemon: SPEC §6 Direction Request).
pub trait OverlayResolver: Send + Sync + 'static {
    /// Resolve an overlay FQDN (already checked to be below the overlay domain, lower-case,
    /// no trailing dot).
    fn resolve(&self, name: Fqdn) -> ResolveFuture;
}

/// Configuration of the [`DnsServer`].
#[derive(Debug, Clone)]
pub struct DnsConfig {
    /// Addresses to listen on, UDP and TCP on each (port 0 picks a free port).
    pub listen: Vec<SocketAddr>,
    /// The overlay domain.
    pub domain: Fqdn,
    /// Where every other name is forwarded, tried in order.
    pub upstreams: Vec<SocketAddr>,
    /// TTL of overlay answers, in seconds (default [`DnsConfig::DEFAULT_TTL`]).
    pub ttl: u32,
    /// Give up on an overlay name after this and answer SERVFAIL (default 5 s).
    pub overlay_timeout: Duration,
}

impl DnsConfig {
    /// Default TTL of overlay answers.
    pub const DEFAULT_TTL: u32 = 60;
    /// Default overlay lookup timeout.
    pub const DEFAULT_OVERLAY_TIMEOUT: Duration = Duration::from_secs(5);

    /// A configuration with the default TTL and timeout.
    pub fn new(listen: Vec<SocketAddr>, domain: Fqdn, upstreams: Vec<SocketAddr>) -> Self {
        DnsConfig {
            listen,
            domain,
            upstreams,
            ttl: Self::DEFAULT_TTL,
            overlay_timeout: Self::DEFAULT_OVERLAY_TIMEOUT,
        }
    }
}
