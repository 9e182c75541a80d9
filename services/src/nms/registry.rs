//! Who is online and where: the NMS's hot state (SPEC §6 registration).
//!
//! One entry per registered node, keyed by NodeID, holding its location, its relay
//! token and the standing connection NMS pushes on. Relay tokens are unique across
//! online endpoints (an adapter's general nodes share their adapter's token).

use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::Instant;

use cyphonic_proto::{Fqdn, NodeId, PathId, RelayToken};

use super::route::Location;

/// One registered, online node.
#[derive(Debug, Clone)]
pub struct Online {
    pub node_id: NodeId,
    pub fqdn: Fqdn,
    pub virtual_ipv4: Ipv4Addr,
    pub virtual_ipv6: Ipv6Addr,
    pub location: Location,
    pub relay_token: RelayToken,
    /// The standing NMS connection (push channel).
    pub connection: quinn::Connection,
    pub registered_at: Instant,
}

/// Why a registration cannot be recorded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegisterError {
    #[error("relay token {0} is already used by another endpoint")]
    TokenInUse(RelayToken),
}

/// What changed with a registration: NMS tells peers when a node moved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Registered {
    First,
    Same,
    Moved { from: Location },
}

#[derive(Debug, Default)]
pub struct Registry {
    nodes: HashMap<NodeId, Online>,
    by_vip4: HashMap<Ipv4Addr, NodeId>,
    by_vip6: HashMap<Ipv6Addr, NodeId>,
    /// Peers each node was directed to talk with, and their path (for Location
    /// Update and Finalization).
    peers: HashMap<NodeId, Vec<(NodeId, PathId)>>,
}

impl Registry {
    /// Record a (re-)registration. A token is refused when a *different endpoint*
    /// holds it: a node other than this one, on a connection other than this one's.
    /// Several identities on one connection's endpoint (an adapter) share a token.
    pub fn register(&mut self, entry: Online) -> Result<Registered, RegisterError> {
        let clash = self.nodes.values().any(|o| {
            o.relay_token == entry.relay_token
                && o.node_id != entry.node_id
                && o.connection.remote_address() != entry.connection.remote_address()
        });
        if clash {
            return Err(RegisterError::TokenInUse(entry.relay_token));
        }
        self.by_vip4.insert(entry.virtual_ipv4, entry.node_id);
        self.by_vip6.insert(entry.virtual_ipv6, entry.node_id);
        let outcome = match self.nodes.insert(entry.node_id, entry.clone()) {
            None => Registered::First,
            Some(old) if old.location == entry.location => Registered::Same,
            Some(old) => Registered::Moved { from: old.location },
        };
        Ok(outcome)
    }

    /// Remove a node if `connection` is still the one it registered on (a stale
    /// connection closing after a re-registration must not take the node offline).
    pub fn remove_if_connection(&mut self, node: NodeId, connection_id: usize) -> Option<Online> {
        match self.nodes.get(&node) {
            Some(o) if o.connection.stable_id() == connection_id => self.remove(node),
            _ => None,
        }
    }

    pub fn remove(&mut self, node: NodeId) -> Option<Online> {
        let o = self.nodes.remove(&node)?;
        self.by_vip4.remove(&o.virtual_ipv4);
        self.by_vip6.remove(&o.virtual_ipv6);
        Some(o)
    }

    pub fn get(&self, node: NodeId) -> Option<&Online> {
        self.nodes.get(&node)
    }

    pub fn by_virtual_v4(&self, a: Ipv4Addr) -> Option<&Online> {
        self.by_vip4.get(&a).and_then(|n| self.nodes.get(n))
    }

    pub fn by_virtual_v6(&self, a: Ipv6Addr) -> Option<&Online> {
        self.by_vip6.get(&a).and_then(|n| self.nodes.get(n))
    }

    pub fn by_fqdn(&self, fqdn: &Fqdn) -> Option<&Online> {
        self.nodes.values().find(|o| &o.fqdn == fqdn)
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Remember that `a` and `b` were directed to each other on `path`.
    pub fn note_pair(&mut self, a: NodeId, b: NodeId, path: PathId) {
        for (x, y) in [(a, b), (b, a)] {
            let list = self.peers.entry(x).or_default();
            if !list.iter().any(|(p, _)| *p == y) {
                list.push((y, path));
            }
        }
    }

    /// Online peers of `node` (those it was directed to talk with) and their paths.
    pub fn peers_of(&self, node: NodeId) -> Vec<(&Online, PathId)> {
        self.peers
            .get(&node)
            .map(|l| {
                l.iter()
                    .filter_map(|(p, path)| self.nodes.get(p).map(|o| (o, *path)))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Forget a node's pairs (it finalized).
    pub fn forget_pairs(&mut self, node: NodeId) {
        let mine = self.peers.remove(&node).unwrap_or_default();
        for (p, _) in &mine {
            if let Some(l) = self.peers.get_mut(p) {
                l.retain(|(x, _)| *x != node);
            }
        }
    }
}
