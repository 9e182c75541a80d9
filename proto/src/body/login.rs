//! Login Request (3) and Login Response (4): node ↔ AS (SPEC §5).

use std::net::{Ipv4Addr, Ipv6Addr};

use bytes::BufMut;

use super::date::{put_opt_date, read_opt_date, Date};
use crate::codec::{len16, put_opt_ipv4, put_opt_ipv6, Reader};
use crate::error::{DecodeError, EncodeError};
use crate::ids::{ApplicationId, Fqdn};

/// Cipher Type value meaning "none": v2 has no CYPHONIC-layer encryption (SPEC §4).
pub const CIPHER_NONE: u16 = 0xFFFF;

/// How a node authenticates (Login Request, Node Information entries).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum AuthType {
    /// 1: Device ID and password. v2 accepts it only for enrollment.
    Password = 1,
    /// 2: certificate. With an empty certificate field it means "the TLS client
    /// certificate": the normal v2 login.
    Certificate = 2,
}

impl AuthType {
    pub(crate) fn from_code(field: &'static str, v: u8) -> Result<AuthType, DecodeError> {
        match v {
            1 => Ok(AuthType::Password),
            2 => Ok(AuthType::Certificate),
            _ => Err(DecodeError::BadEnum {
                field,
                value: v.into(),
            }),
        }
    }
}

/// Login Request (node → AS).
///
/// Body: `0: Application ID(128) · 16: Auth Type(8) · 17: Exec Mode(8) · 18: Device ID
/// Len(16) · 20: Password Len(16) · 22: Certificate Len(16) · 24: Device ID · Password ·
/// Certificate`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LoginRequest {
    /// Application ID (v2: zero).
    pub application_id: ApplicationId,
    /// How the node authenticates.
    pub auth_type: AuthType,
    /// v1 execution mode (user/administrator); opaque, v2 senders send 0.
    pub exec_mode: u8,
    /// Operator-chosen device name (UTF-8).
    pub device_id: String,
    /// Password (v1: SHA-512 of it); empty for certificate login.
    pub password: Vec<u8>,
    /// Empty with [`AuthType::Certificate`] = use the TLS client certificate.
    pub certificate: Vec<u8>,
}

impl LoginRequest {
    /// The normal v2 login: certificate authentication by the TLS client certificate.
    pub fn with_tls_certificate() -> Self {
        LoginRequest {
            application_id: ApplicationId::ZERO,
            auth_type: AuthType::Certificate,
            exec_mode: 0,
            device_id: String::new(),
            password: Vec::new(),
            certificate: Vec::new(),
        }
    }

    pub(crate) fn encode(&self, w: &mut impl BufMut) -> Result<(), EncodeError> {
        let d = len16("Device ID", self.device_id.len())?;
        let p = len16("Password", self.password.len())?;
        let c = len16("Certificate", self.certificate.len())?;
        w.put_slice(self.application_id.as_bytes());
        w.put_u8(self.auth_type as u8);
        w.put_u8(self.exec_mode);
        w.put_u16(d);
        w.put_u16(p);
        w.put_u16(c);
        w.put_slice(self.device_id.as_bytes());
        w.put_slice(&self.password);
        w.put_slice(&self.certificate);
        Ok(())
    }

    pub(crate) fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let application_id = ApplicationId(r.array()?);
        let auth_type = AuthType::from_code("Auth Type", r.u8()?)?;
        let exec_mode = r.u8()?;
        let (d, p, c) = (r.u16()?, r.u16()?, r.u16()?);
        Ok(LoginRequest {
            application_id,
            auth_type,
            exec_mode,
            device_id: r.utf8(d.into(), "Device ID")?,
            password: r.vec(p.into())?,
            certificate: r.vec(c.into())?,
        })
    }
}

/// Login Response (AS → node; Base Header ID = the node's NodeID).
///
/// Body: `0: Cipher Type(16) = 0xFFFF · 2: Common Key Len(16) = 0 · 4: Year(16) ·
/// 6: Month(8) · 7: Day(8) · 8: FQDN Len(16) · 10: NMS Port(16) · 12: Virtual IPv4(32) ·
/// 16: Virtual IPv6(128) · 32: NMS IPv4(32) · 36: NMS IPv6(128) · 52: FQDN`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LoginResponse {
    /// Certificate expiry; `None` is all zeros on the wire.
    pub cert_expiry: Option<Date>,
    /// The node's FQDN.
    pub fqdn: Fqdn,
    /// UDP port of the NMS the node must register with.
    pub nms_port: u16,
    /// The node's virtual IPv4 address.
    pub virtual_ipv4: Ipv4Addr,
    /// The node's virtual IPv6 address.
    pub virtual_ipv6: Ipv6Addr,
    /// `None` (0.0.0.0) when NMS has no IPv4 address.
    pub nms_ipv4: Option<Ipv4Addr>,
    /// `None` (::) when NMS has no IPv6 address.
    pub nms_ipv6: Option<Ipv6Addr>,
}

impl LoginResponse {
    pub(crate) fn encode(&self, w: &mut impl BufMut) -> Result<(), EncodeError> {
        w.put_u16(CIPHER_NONE);
        w.put_u16(0);
        put_opt_date(w, self.cert_expiry)?;
        w.put_u16(len16("FQDN", self.fqdn.as_str().len())?);
        w.put_u16(self.nms_port);
        w.put_slice(&self.virtual_ipv4.octets());
        w.put_slice(&self.virtual_ipv6.octets());
        put_opt_ipv4(w, self.nms_ipv4);
        put_opt_ipv6(w, self.nms_ipv6);
        w.put_slice(self.fqdn.as_str().as_bytes());
        Ok(())
    }

    pub(crate) fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        r.obsolete_u16("Cipher Type", CIPHER_NONE)?;
        r.obsolete_u16("Common Key Len", 0)?;
        let cert_expiry = read_opt_date(r)?;
        let fqdn_len = r.u16()?;
        let nms_port = r.u16()?;
        let virtual_ipv4 = r.ipv4()?;
        let virtual_ipv6 = r.ipv6()?;
        let nms_ipv4 = r.opt_ipv4()?;
        let nms_ipv6 = r.opt_ipv6()?;
        let fqdn = r.fqdn(fqdn_len.into(), "FQDN")?;
        Ok(LoginResponse {
            cert_expiry,
            fqdn,
            nms_port,
            virtual_ipv4,
            virtual_ipv6,
            nms_ipv4,
            nms_ipv6,
        })
    }
}
