//! AS, the Authentication Service (SPEC §1, §5 Login/Enroll, §6 start-up).
//!
//! * Enroll: a device with no certificate presents its one-time token and a CSR on
//!   a connection without a client certificate (the only kind AS accepts without
//!   one); AS signs a node certificate for the device's FQDN and consumes the token.
//! * Login: over mutual TLS; the certificate must be one AS issued to a known,
//!   unrevoked device. The response carries NodeID, FQDN, virtual addresses and the
//!   NMS address.
//! * Node Information: an adapter asks for the general nodes bound to it.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use cyphonic_proto::body::{
    AuthType, Date, EnrollResponse, GeneralNode, LoginResponse, NodeInformation,
};
use cyphonic_proto::{Body, Flag, Fqdn, Message, NodeId};

use crate::identity::{Peer, PeerRole};
use crate::rpc::refusal;
use crate::store::{DeviceKind, Store, StoreError, TokenError};

/// A signed node certificate.
#[derive(Debug, Clone)]
pub struct SignedCert {
    pub cert_der: Vec<u8>,
    /// Serial in lower-case hex.
    pub serial: String,
    /// Expiry, unix seconds.
    pub not_after: i64,
}

/// What AS needs from the CA: sign a CSR for a device, and show the CA certificate.
pub trait CsrSigner: Send + Sync {
    /// Check a CSR (well-formed, self-signature valid) before any token is spent.
    fn check(&self, csr_der: &[u8]) -> Result<(), String>;
    fn sign(&self, csr_der: &[u8], fqdn: &Fqdn, node_id: NodeId) -> Result<SignedCert, String>;
    fn ca_cert_der(&self) -> Vec<u8>;
}

/// Where nodes find NMS (Login Response).
#[derive(Debug, Clone, Copy)]
pub struct NmsAddress {
    pub ipv4: Option<Ipv4Addr>,
    pub ipv6: Option<Ipv6Addr>,
    pub port: u16,
}

pub struct AsService {
    store: Store,
    signer: Arc<dyn CsrSigner>,
    nms: NmsAddress,
}

/// Civil date of a unix time (for the Login Response expiry field).
pub fn date_of_unix(secs: i64) -> Option<Date> {
    let days = secs.div_euclid(86_400);
    // Howard Hinnant's days-to-civil algorithm.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    Date::new(u16::try_from(y).ok()?, m as u8, d as u8)
}

impl AsService {
    pub fn new(store: Store, signer: Arc<dyn CsrSigner>, nms: NmsAddress) -> Self {
        AsService { store, signer, nms }
    }

    /// Handle one AS transaction from `peer` (None: no client certificate).
    pub async fn handle(&self, peer: Option<&Peer>, request: Message) -> Message {
        match (&request.body, peer) {
            (Body::EnrollRequest(_), None) => self.enroll(&request).await,
            (Body::EnrollRequest(_), Some(p)) => {
                tracing::warn!(peer = %p.fqdn, "enroll on an authenticated connection refused");
                refusal(&request, Flag::ForbiddenByPolicy)
            }
            (Body::LoginRequest(_), Some(p)) if p.role == PeerRole::Node => {
                self.login(p, &request).await
            }
            (Body::NodeInformationRequest, Some(p)) if p.role == PeerRole::Node => {
                self.node_information(p, &request).await
            }
            (Body::KeepAlive, _) => Message::response_to(&request, Flag::Ok, Body::KeepAliveAck),
            (_, None) => refusal(&request, Flag::Unauthenticated),
            _ => refusal(&request, Flag::Malformed),
        }
    }

    async fn enroll(&self, request: &Message) -> Message {
        let Body::EnrollRequest(e) = &request.body else {
            return refusal(request, Flag::Malformed);
        };
        let refuse = |flag: Flag| refusal(request, flag);
        let Ok(secret) = std::str::from_utf8(&e.secret) else {
            tracing::warn!(device = %e.device_id, "enroll refused: token is not text");
            return refuse(Flag::PasswordMismatch);
        };
        // Check the CSR first: a malformed one must not spend the one-time token.
        if let Err(why) = self.signer.check(&e.csr) {
            tracing::warn!(device = %e.device_id, error = %why, "enroll refused: bad CSR");
            return refuse(Flag::Malformed);
        }
        let device = match self
            .store
            .consume_enrollment_token(&e.device_id, secret.trim())
            .await
        {
            Ok(d) => d,
            Err(err) => {
                let flag = match &err {
                    StoreError::NoSuchDevice(_) => Flag::NoSuchName,
                    StoreError::Token(TokenError::DeviceRevoked { .. })
                    | StoreError::DeviceRevoked(_) => Flag::CertificateRevoked,
                    StoreError::Token(TokenError::Expired { .. }) => Flag::Timeout,
                    StoreError::Token(_) => Flag::PasswordMismatch,
                    _ => Flag::UnknownError,
                };
                tracing::warn!(device = %e.device_id, error = %err, "enroll refused");
                return refuse(flag);
            }
        };
        let signed = match self.signer.sign(&e.csr, &device.fqdn, device.node_id) {
            Ok(s) => s,
            Err(why) => {
                // The CSR passed `check`, so this is the CA failing, not the device.
                tracing::error!(device = %device.device_id, error = %why, "cannot sign certificate");
                return refuse(Flag::UnknownError);
            }
        };
        if let Err(err) = self
            .store
            .record_certificate(device.device_id.as_str(), &signed.serial, signed.not_after)
            .await
        {
            tracing::error!(device = %device.device_id, error = %err, "cannot record certificate");
            return refuse(Flag::UnknownError);
        }
        tracing::info!(device = %device.device_id, fqdn = %device.fqdn, serial = %signed.serial,
            "enrolled: node certificate signed");
        Message::response_to(
            request,
            Flag::Ok,
            Body::EnrollResponse(EnrollResponse {
                certificate: signed.cert_der,
                ca_certificate: self.signer.ca_cert_der(),
            }),
        )
        .with_node_id(device.node_id)
    }

    async fn login(&self, peer: &Peer, request: &Message) -> Message {
        let refuse = |flag: Flag| refusal(request, flag);
        let device = match self.store.device_by_fqdn(&peer.fqdn).await {
            Ok(Some(d)) => d,
            Ok(None) => {
                tracing::warn!(fqdn = %peer.fqdn, "login refused: no such device");
                return refuse(Flag::NoDatabaseRecord);
            }
            Err(err) => {
                tracing::error!(error = %err, "login: store error");
                return refuse(Flag::UnknownError);
            }
        };
        if !device.is_active() {
            tracing::warn!(fqdn = %peer.fqdn, "login refused: device revoked");
            return refuse(Flag::CertificateRevoked);
        }
        match self.store.is_certificate_active(&peer.serial).await {
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!(fqdn = %peer.fqdn, serial = %peer.serial,
                    "login refused: certificate revoked or not issued to this device");
                return refuse(Flag::CertificateRevoked);
            }
            Err(err) => {
                tracing::error!(error = %err, "login: store error");
                return refuse(Flag::UnknownError);
            }
        }
        if let Ok(Some(rec)) = self.store.certificate(&peer.serial).await {
            if rec.device_id != device.device_id {
                tracing::warn!(fqdn = %peer.fqdn, "login refused: certificate belongs to another device");
                return refuse(Flag::Unauthenticated);
            }
        }
        tracing::info!(fqdn = %device.fqdn, node_id = %device.node_id, "login");
        Message::response_to(
            request,
            Flag::Ok,
            Body::LoginResponse(LoginResponse {
                cert_expiry: date_of_unix(peer.not_after),
                fqdn: device.fqdn.clone(),
                nms_port: self.nms.port,
                virtual_ipv4: device.virtual_ipv4,
                virtual_ipv6: device.virtual_ipv6,
                nms_ipv4: self.nms.ipv4,
                nms_ipv6: self.nms.ipv6,
            }),
        )
        .with_node_id(device.node_id)
    }

    async fn node_information(&self, peer: &Peer, request: &Message) -> Message {
        let nodes = match self.store.general_nodes_of(&peer.fqdn).await {
            Ok(n) => n,
            Err(err) => {
                tracing::error!(error = %err, "node information: store error");
                return refusal(request, Flag::UnknownError);
            }
        };
        let general_nodes = nodes
            .into_iter()
            .filter(|d| d.is_active())
            .filter_map(|d| match d.kind {
                DeviceKind::GeneralNode { mac, .. } => Some(GeneralNode {
                    fqdn: d.fqdn,
                    device_id: d.device_id.as_str().to_owned(),
                    mac,
                    auth_type: AuthType::Certificate,
                    virtual_ipv4: d.virtual_ipv4,
                    virtual_ipv6: d.virtual_ipv6,
                    ipv6_enabled: d.ipv6_enabled,
                }),
                DeviceKind::Node => None,
            })
            .collect();
        Message::response_to(
            request,
            Flag::Ok,
            Body::NodeInformationResponse(NodeInformation { general_nodes }),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        assert_eq!(date_of_unix(0), Date::new(1970, 1, 1));
        assert_eq!(date_of_unix(951_782_400), Date::new(2000, 2, 29));
        assert_eq!(date_of_unix(1_795_305_600), Date::new(2026, 11, 22));
    }
}
