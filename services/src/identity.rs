//! Who is on the other end of a connection, from its verified client certificate.

use cyphonic_proto::{Fqdn, NodeId};

/// The role a certificate was issued for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerRole {
    Node,
    As,
    Nms,
    Trs,
}

/// The authenticated peer of a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub role: PeerRole,
    /// The certificate's FQDN (node) or service name.
    pub fqdn: Fqdn,
    /// Certificate serial, lower-case hex.
    pub serial: String,
    /// Certificate expiry, unix seconds.
    pub not_after: i64,
    /// NodeID the CA put in a node certificate.
    pub node_id: Option<NodeId>,
}

impl Peer {
    /// The peer of a QUIC connection whose client certificate was verified by the TLS
    /// layer (chain to the deployment CA, CRL, expiry); None when it showed none.
    pub fn of_connection(conn: &quinn::Connection) -> Option<Peer> {
        let certs = conn
            .peer_identity()?
            .downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
            .ok()?;
        let leaf = certs.first()?;
        let id = cyphonic_pki::PeerIdentity::from_der(leaf).ok()?;
        Some(Peer {
            role: match id.role {
                cyphonic_pki::Role::Node => PeerRole::Node,
                cyphonic_pki::Role::As => PeerRole::As,
                cyphonic_pki::Role::Nms => PeerRole::Nms,
                cyphonic_pki::Role::Trs => PeerRole::Trs,
            },
            fqdn: id.name,
            serial: id.serial,
            not_after: id.not_after,
            node_id: id.node_id,
        })
    }
}
