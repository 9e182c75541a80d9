//! Roles and identities carried in CYPHONIC certificates.
//!
//! Every end-entity certificate carries, besides its DNS names, two URI SANs:
//! `urn:cyphonic:role:<node|as|nms|trs>` and, on node certificates,
//! `urn:cyphonic:node-id:<uuid>`. webpki ignores URI SANs when it matches server
//! names, so they cost nothing there; [`PeerIdentity::from_der`] reads them back.

use std::fmt;
use std::str::FromStr;

use cyphonic_proto::{Fqdn, NodeId};
use rustls_pki_types::CertificateDer;
use x509_parser::prelude::*;

use crate::error::{PkiError, Result};

const ROLE_URI: &str = "urn:cyphonic:role:";
const NODE_ID_URI: &str = "urn:cyphonic:node-id:";

/// What a certificate was issued for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// A node (or an adapter's general node): SAN = its FQDN.
    Node,
    /// Authentication Service.
    As,
    /// Node Management Service.
    Nms,
    /// Tunnel Relay Service.
    Trs,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Node => "node",
            Role::As => "as",
            Role::Nms => "nms",
            Role::Trs => "trs",
        }
    }

    pub(crate) fn uri(self) -> String {
        format!("{ROLE_URI}{}", self.name())
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "node" => Ok(Role::Node),
            "as" => Ok(Role::As),
            "nms" => Ok(Role::Nms),
            "trs" => Ok(Role::Trs),
            _ => Err(format!("unknown role {s:?}: expected node, as, nms or trs")),
        }
    }
}

pub(crate) fn node_id_uri(id: NodeId) -> String {
    format!("{NODE_ID_URI}{id}")
}

/// Canonical text of a certificate serial: lower-case hex, no leading zeros.
pub fn serial_hex(raw: &[u8]) -> String {
    let s: String = raw.iter().map(|b| format!("{b:02x}")).collect();
    let t = s.trim_start_matches('0');
    if t.is_empty() {
        "0".into()
    } else {
        t.into()
    }
}

/// Parse a serial given by an operator (hex, optional `:` separators, any case).
pub fn parse_serial(text: &str) -> Result<String> {
    let hex: String = text.trim().chars().filter(|c| *c != ':').collect();
    if hex.is_empty() || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(PkiError::BadSerial(text.to_owned()));
    }
    let t = hex.to_ascii_lowercase();
    let t = t.trim_start_matches('0');
    Ok(if t.is_empty() { "0".into() } else { t.into() })
}

/// The identity in a certificate (usually the verified leaf of a peer's chain).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    pub role: Role,
    /// First DNS name: the node FQDN, or the service name.
    pub name: Fqdn,
    /// Every DNS name.
    pub dns_names: Vec<String>,
    /// Serial, canonical hex ([`serial_hex`]).
    pub serial: String,
    /// Validity, unix seconds.
    pub not_before: i64,
    pub not_after: i64,
    /// NodeID of a node certificate issued at enrollment.
    pub node_id: Option<NodeId>,
}

impl PeerIdentity {
    /// Read the identity of a DER certificate. This does not verify it: call it on
    /// a chain the TLS layer already verified.
    pub fn from_der(der: &CertificateDer<'_>) -> Result<PeerIdentity> {
        let (_, cert) = X509Certificate::from_der(der.as_ref())
            .map_err(|e| PkiError::BadCert(format!("not an X.509 certificate: {e}")))?;
        let mut dns_names = Vec::new();
        let mut role = None;
        let mut node_id = None;
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for gn in &san.value.general_names {
                match gn {
                    GeneralName::DNSName(n) => dns_names.push((*n).to_owned()),
                    GeneralName::URI(u) => {
                        if let Some(r) = u.strip_prefix(ROLE_URI) {
                            role = r.parse().ok();
                        } else if let Some(id) = u.strip_prefix(NODE_ID_URI) {
                            node_id = id.parse().ok();
                        }
                    }
                    _ => {}
                }
            }
        }
        let role = role.ok_or_else(|| {
            PkiError::BadCert("no CYPHONIC role: not issued by a CYPHONIC CA".into())
        })?;
        let first = dns_names
            .first()
            .ok_or_else(|| PkiError::BadCert("no DNS name".into()))?;
        Ok(PeerIdentity {
            role,
            name: Fqdn::new(first)?,
            serial: serial_hex(cert.raw_serial()),
            not_before: cert.validity().not_before.timestamp(),
            not_after: cert.validity().not_after.timestamp(),
            node_id,
            dns_names,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serials_are_canonical() {
        assert_eq!(serial_hex(&[0, 0x0a, 0xbc]), "abc");
        assert_eq!(parse_serial("00:0A:BC").unwrap(), "abc");
        assert!(parse_serial("xyz").is_err());
        assert!(parse_serial("").is_err());
    }

    #[test]
    fn roles_parse() {
        for r in [Role::Node, Role::As, Role::Nms, Role::Trs] {
            assert_eq!(r.name().parse::<Role>().unwrap(), r);
        }
        assert!("root".parse::<Role>().is_err());
    }
}
