//! The CYPHONIC built-in CA and the mutual-TLS configuration every party uses.
//!
//! * [`Ca`]: the deployment CA kept in a directory (`cyphonic-ca` is its CLI);
//! * [`PeerIdentity`]: role, FQDN, serial and NodeID read from a certificate;
//! * [`server_config`] / [`client_config`]: rustls configs (ring provider, TLS 1.3)
//!   verifying chains to the CA, its CRL, expiry, and the peer's role.

pub mod ca;
pub mod error;
pub mod identity;
pub mod quic;
pub mod rpc;
pub mod tls;

pub use ca::{check_csr, generate_csr, write_private_key, Ca, IssuedCert, IssuedRecord, Reason};
pub use error::{PkiError, Result};
pub use identity::{parse_serial, serial_hex, PeerIdentity, Role};
pub use tls::{
    client_config, provider, server_config, server_config_single, ClientAuth, Credentials,
    SniResolver, TrustAnchor,
};
