//! The TRS forwarding decision (SPEC §7), as a pure table.
//!
//! A UDP datagram arriving at the TRS is forwarded unchanged to node Y when its QUIC
//! Destination Connection ID begins with Y's relay token **and** its source address
//! is the observed address of a node X that holds a live relay binding with Y.
//! Anything else is the TRS's own traffic (its control connections) or is dropped.
//! The table never looks past the DCID and never holds a key of the end-to-end
//! connection: it cannot decrypt what it forwards.

/// The table's maps: keyed by what arrives in packets (relay tokens, addresses), so
/// hashed with a keyed hash (DoS-resistant) that is cheaper than SipHash per lookup.
type HashMap<K, V> = std::collections::HashMap<K, V, ahash::RandomState>;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use cyphonic_proto::{NodeId, PathId, RelayToken};

/// What to do with one received datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Not relay traffic: hand it to the TRS's own QUIC stack.
    Own,
    /// Send the datagram, byte for byte, to this address.
    Forward(SocketAddr),
    /// Relay traffic that may not pass.
    Drop(DropReason),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// The sender is not a node with a TRS control connection (unauthenticated).
    UnknownSender,
    /// Sender and destination have no live binding (the TRS is not an open relay).
    NotBound,
    /// The binding's lifetime has passed.
    Expired,
    /// The binding exceeded its rate limit.
    RateLimited,
    /// The destination node has no control connection (no known address).
    DestinationOffline,
}

/// Token bucket for one binding direction pair.
#[derive(Debug, Clone)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

#[derive(Debug, Clone)]
pub struct Binding {
    pub path_id: PathId,
    pub initiator: NodeId,
    pub responder: NodeId,
    pub expires: Instant,
    bucket: Bucket,
}

/// Limits applied to every binding.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Sustained packets per second per binding (both directions together).
    pub packets_per_sec: f64,
    /// Burst allowance in packets.
    pub burst: f64,
    /// Longest lifetime a Relay Request may ask for.
    pub max_lifetime: Duration,
    /// Most bindings one node may hold.
    pub max_bindings_per_node: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            // Enough for several Gbit/s of full-size packets; a bound on abuse, not a
            // shaper.
            packets_per_sec: 500_000.0,
            burst: 50_000.0,
            max_lifetime: Duration::from_secs(24 * 3600),
            max_bindings_per_node: 4096,
        }
    }
}

/// Why a Relay Request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BindError {
    #[error("a node cannot be relayed to itself")]
    SameNode,
    #[error("relay token {0} is already bound to another node")]
    TokenInUse(RelayToken),
    #[error("node {0} already holds the maximum number of relay bindings")]
    TooManyBindings(NodeId),
    #[error("lifetime of 0 seconds")]
    ZeroLifetime,
}

/// Everything the forwarding decision needs, kept by the TRS.
#[derive(Debug, Default)]
pub struct ForwardTable {
    limits: Limits,
    /// Relay token → the node whose endpoint issues CIDs with it.
    token_owner: HashMap<RelayToken, NodeId>,
    /// Node → relay token (for cleanup).
    node_token: HashMap<NodeId, RelayToken>,
    /// Observed address of each node's control connection.
    node_addr: HashMap<NodeId, SocketAddr>,
    /// Reverse of `node_addr`.
    addr_node: HashMap<SocketAddr, NodeId>,
    /// The TRS's own address each node's control connection reaches it at: relayed
    /// packets to the node leave from it (the node knows its TRS by that address).
    node_local: HashMap<NodeId, IpAddr>,
    /// Live bindings, keyed by the unordered pair (lower NodeID first).
    bindings: HashMap<(NodeId, NodeId), Binding>,
}

fn pair(a: NodeId, b: NodeId) -> (NodeId, NodeId) {
    if a <= b {
        (a, b)
    } else {
        (b, a)
    }
}

impl ForwardTable {
    pub fn new(limits: Limits) -> Self {
        ForwardTable {
            limits,
            ..Default::default()
        }
    }

    /// A node's control connection is up (or has migrated) at `addr`.
    pub fn node_at(&mut self, node: NodeId, addr: SocketAddr) {
        if let Some(old) = self.node_addr.insert(node, addr) {
            if old != addr {
                self.addr_node.remove(&old);
            }
        }
        self.addr_node.insert(addr, node);
    }

    /// The TRS address a node's control connection reaches (`None`: unknown).
    pub fn node_reaches(&mut self, node: NodeId, local: Option<IpAddr>) {
        match local {
            Some(ip) => self.node_local.insert(node, ip),
            None => self.node_local.remove(&node),
        };
    }

    /// The address to relay from toward the node at `addr`: the one it reaches the
    /// TRS at, when known.
    pub fn source_toward(&self, addr: SocketAddr) -> Option<IpAddr> {
        let node = self.addr_node.get(&addr)?;
        self.node_local.get(node).copied()
    }

    /// A node's control connection is gone.
    pub fn node_gone(&mut self, node: NodeId) {
        self.node_local.remove(&node);
        if let Some(addr) = self.node_addr.remove(&node) {
            if self.addr_node.get(&addr) == Some(&node) {
                self.addr_node.remove(&addr);
            }
        }
    }

    pub fn node_addr(&self, node: NodeId) -> Option<SocketAddr> {
        self.node_addr.get(&node).copied()
    }

    /// Install (or renew) the binding a Relay Request asks for.
    #[allow(clippy::too_many_arguments)]
    pub fn bind(
        &mut self,
        path_id: PathId,
        initiator: NodeId,
        initiator_token: RelayToken,
        responder: NodeId,
        responder_token: RelayToken,
        lifetime: Duration,
        now: Instant,
    ) -> Result<(), BindError> {
        if initiator == responder {
            return Err(BindError::SameNode);
        }
        if lifetime.is_zero() {
            return Err(BindError::ZeroLifetime);
        }
        for (node, token) in [(initiator, initiator_token), (responder, responder_token)] {
            if let Some(owner) = self.token_owner.get(&token) {
                if *owner != node {
                    return Err(BindError::TokenInUse(token));
                }
            }
        }
        let key = pair(initiator, responder);
        if !self.bindings.contains_key(&key) {
            for node in [initiator, responder] {
                if self.bindings_of(node) >= self.limits.max_bindings_per_node {
                    return Err(BindError::TooManyBindings(node));
                }
            }
        }
        for (node, token) in [(initiator, initiator_token), (responder, responder_token)] {
            // A node that restarted picks a new token: forget the old one.
            if let Some(old) = self.node_token.insert(node, token) {
                if old != token {
                    self.token_owner.remove(&old);
                }
            }
            self.token_owner.insert(token, node);
        }
        let expires = now + lifetime.min(self.limits.max_lifetime);
        let burst = self.limits.burst;
        self.bindings
            .entry(key)
            .and_modify(|b| {
                b.expires = expires;
                b.path_id = path_id;
            })
            .or_insert(Binding {
                path_id,
                initiator,
                responder,
                expires,
                bucket: Bucket {
                    tokens: burst,
                    last: now,
                },
            });
        Ok(())
    }

    fn bindings_of(&self, node: NodeId) -> usize {
        self.bindings
            .keys()
            .filter(|(a, b)| *a == node || *b == node)
            .count()
    }

    /// Remove every binding of a node (it logged out).
    pub fn unbind_node(&mut self, node: NodeId) {
        self.bindings.retain(|(a, b), _| *a != node && *b != node);
        if let Some(token) = self.node_token.remove(&node) {
            self.token_owner.remove(&token);
        }
    }

    /// Drop expired bindings; returns how many were removed.
    pub fn expire(&mut self, now: Instant) -> usize {
        let before = self.bindings.len();
        self.bindings.retain(|_, b| b.expires > now);
        before - self.bindings.len()
    }

    pub fn binding_count(&self) -> usize {
        self.bindings.len()
    }

    /// The forwarding decision for one datagram whose DCID begins with `token`
    /// (`None`: not a QUIC packet carrying a 16-byte CID, so not relay traffic).
    pub fn decide(&mut self, src: SocketAddr, token: Option<RelayToken>, now: Instant) -> Decision {
        let Some(token) = token else {
            return Decision::Own;
        };
        let Some(&dst_node) = self.token_owner.get(&token) else {
            return Decision::Own;
        };
        let Some(&src_node) = self.addr_node.get(&src) else {
            return Decision::Drop(DropReason::UnknownSender);
        };
        if src_node == dst_node {
            // A node's own token on a packet it sent: a CID the TRS never issued.
            return Decision::Drop(DropReason::NotBound);
        }
        let Some(binding) = self.bindings.get_mut(&pair(src_node, dst_node)) else {
            return Decision::Drop(DropReason::NotBound);
        };
        if binding.expires <= now {
            return Decision::Drop(DropReason::Expired);
        }
        let b = &mut binding.bucket;
        let elapsed = now.saturating_duration_since(b.last).as_secs_f64();
        b.tokens = (b.tokens + elapsed * self.limits.packets_per_sec).min(self.limits.burst);
        b.last = now;
        if b.tokens < 1.0 {
            return Decision::Drop(DropReason::RateLimited);
        }
        b.tokens -= 1.0;
        match self.node_addr.get(&dst_node) {
            Some(&addr) => Decision::Forward(addr),
            None => Decision::Drop(DropReason::DestinationOffline),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(n: u8) -> NodeId {
        NodeId([n; 16])
    }
    fn tok(n: u8) -> RelayToken {
        RelayToken([n; 8])
    }
    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn table() -> (ForwardTable, Instant) {
        let now = Instant::now();
        let mut t = ForwardTable::new(Limits::default());
        t.node_at(node(1), addr("192.0.2.1:443"));
        t.node_at(node(2), addr("[2001:db8::2]:443"));
        t.node_at(node(3), addr("198.51.100.3:443"));
        t.bind(
            PathId([9; 16]),
            node(1),
            tok(1),
            node(2),
            tok(2),
            Duration::from_secs(60),
            now,
        )
        .unwrap();
        (t, now)
    }

    #[test]
    fn bound_pair_forwards_both_ways_across_families() {
        let (mut t, now) = table();
        assert_eq!(
            t.decide(addr("192.0.2.1:443"), Some(tok(2)), now),
            Decision::Forward(addr("[2001:db8::2]:443"))
        );
        assert_eq!(
            t.decide(addr("[2001:db8::2]:443"), Some(tok(1)), now),
            Decision::Forward(addr("192.0.2.1:443"))
        );
    }

    #[test]
    fn not_an_open_relay() {
        let (mut t, now) = table();
        // Node 3 is authenticated but has no binding with node 2.
        assert_eq!(
            t.decide(addr("198.51.100.3:443"), Some(tok(2)), now),
            Decision::Drop(DropReason::NotBound)
        );
        // A stranger (no control connection) gets nothing forwarded.
        assert_eq!(
            t.decide(addr("203.0.113.66:443"), Some(tok(2)), now),
            Decision::Drop(DropReason::UnknownSender)
        );
        // A node sending to its own token.
        assert_eq!(
            t.decide(addr("192.0.2.1:443"), Some(tok(1)), now),
            Decision::Drop(DropReason::NotBound)
        );
        // Unknown token or no CID: the TRS's own traffic.
        assert_eq!(
            t.decide(addr("192.0.2.1:443"), Some(tok(7)), now),
            Decision::Own
        );
        assert_eq!(t.decide(addr("192.0.2.1:443"), None, now), Decision::Own);
    }

    #[test]
    fn lifetime_is_enforced() {
        let (mut t, now) = table();
        let later = now + Duration::from_secs(61);
        assert_eq!(
            t.decide(addr("192.0.2.1:443"), Some(tok(2)), later),
            Decision::Drop(DropReason::Expired)
        );
        assert_eq!(t.expire(later), 1);
        assert_eq!(
            t.decide(addr("192.0.2.1:443"), Some(tok(2)), later),
            Decision::Drop(DropReason::NotBound)
        );
    }

    #[test]
    fn follows_migration_and_forgets_departed_nodes() {
        let (mut t, now) = table();
        t.node_at(node(1), addr("192.0.2.77:5000"));
        assert_eq!(
            t.decide(addr("192.0.2.1:443"), Some(tok(2)), now),
            Decision::Drop(DropReason::UnknownSender)
        );
        assert_eq!(
            t.decide(addr("[2001:db8::2]:443"), Some(tok(1)), now),
            Decision::Forward(addr("192.0.2.77:5000"))
        );
        t.node_gone(node(1));
        assert_eq!(
            t.decide(addr("[2001:db8::2]:443"), Some(tok(1)), now),
            Decision::Drop(DropReason::DestinationOffline)
        );
        t.unbind_node(node(2));
        assert_eq!(
            t.decide(addr("192.0.2.1:443"), Some(tok(2)), now),
            Decision::Own
        );
    }

    #[test]
    fn rate_limited_and_no_token_theft() {
        let now = Instant::now();
        let limits = Limits {
            packets_per_sec: 10.0,
            burst: 3.0,
            ..Limits::default()
        };
        let mut t = ForwardTable::new(limits);
        t.node_at(node(1), addr("192.0.2.1:1"));
        t.node_at(node(2), addr("192.0.2.2:1"));
        t.bind(
            PathId::ZERO,
            node(1),
            tok(1),
            node(2),
            tok(2),
            Duration::from_secs(9),
            now,
        )
        .unwrap();
        let fwd = (0..5)
            .filter(|_| {
                matches!(
                    t.decide(addr("192.0.2.1:1"), Some(tok(2)), now),
                    Decision::Forward(_)
                )
            })
            .count();
        assert_eq!(fwd, 3, "burst of 3, then limited");
        let later = now + Duration::from_millis(200);
        assert!(matches!(
            t.decide(addr("192.0.2.1:1"), Some(tok(2)), later),
            Decision::Forward(_)
        ));
        // Node 3 cannot claim node 2's token.
        assert_eq!(
            t.bind(
                PathId::ZERO,
                node(3),
                tok(2),
                node(1),
                tok(1),
                Duration::from_secs(9),
                now
            ),
            Err(BindError::TokenInUse(tok(2)))
        );
        assert_eq!(
            t.bind(
                PathId::ZERO,
                node(1),
                tok(1),
                node(1),
                tok(1),
                Duration::from_secs(9),
                now
            ),
            Err(BindError::SameNode)
        );
    }

    #[test]
    fn relays_toward_a_node_from_the_address_it_reaches() {
        let mut t = ForwardTable::new(Limits::default());
        let a = addr("192.0.2.1:443");
        t.node_at(node(1), a);
        assert_eq!(t.source_toward(a), None, "unknown until the node says");
        t.node_reaches(node(1), Some("203.0.113.100".parse().unwrap()));
        assert_eq!(t.source_toward(a), Some("203.0.113.100".parse().unwrap()));
        assert_eq!(t.source_toward(addr("192.0.2.9:443")), None, "not a node");
        t.node_gone(node(1));
        assert_eq!(t.source_toward(a), None);
    }
}
