//! Registration Request (6) and Registration Response (7): node ↔ NMS (SPEC §5).

use std::net::{Ipv4Addr, Ipv6Addr};

use bytes::BufMut;

use crate::codec::{put_opt_ipv4, put_opt_ipv6, Reader};
use crate::error::{DecodeError, EncodeError};

/// Push-notification service of a (mobile) node, v1 Notification Type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[repr(u16)]
pub enum NotificationType {
    /// 0: none (every v2 node).
    #[default]
    None = 0,
    /// 1: Firebase Cloud Messaging.
    Fcm = 1,
    /// 2: Apple Push Notification service.
    Apns = 2,
    /// 3: Windows Notification Service.
    Wns = 3,
}

impl NotificationType {
    fn from_code(v: u16) -> Result<Self, DecodeError> {
        Ok(match v {
            0 => NotificationType::None,
            1 => NotificationType::Fcm,
            2 => NotificationType::Apns,
            3 => NotificationType::Wns,
            _ => {
                return Err(DecodeError::BadEnum {
                    field: "Notification Type",
                    value: v.into(),
                })
            }
        })
    }
}

/// Registration Request (node → NMS; Base Header ID = NodeID; Flag 10 on the first
/// registration). MUST carry a Relay extension with the endpoint's relay token
/// ([`crate::RelayTokens::own`]); MAY carry Candidates.
///
/// Body: `0: Application Port(16) · 2: Notification Type(16) · 4: Node IPv4(32) ·
/// 8: Node IPv6(128)` (24 bytes).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RegistrationRequest {
    /// The node's local UDP port before NAT.
    pub application_port: u16,
    /// Push-notification service (v2: none).
    pub notification_type: NotificationType,
    /// The node's own interface IPv4 address, if any.
    pub node_ipv4: Option<Ipv4Addr>,
    /// The node's own interface IPv6 address, if any.
    pub node_ipv6: Option<Ipv6Addr>,
}

impl RegistrationRequest {
    pub(crate) fn encode(&self, w: &mut impl BufMut) -> Result<(), EncodeError> {
        w.put_u16(self.application_port);
        w.put_u16(self.notification_type as u16);
        put_opt_ipv4(w, self.node_ipv4);
        put_opt_ipv6(w, self.node_ipv6);
        Ok(())
    }

    pub(crate) fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(RegistrationRequest {
            application_port: r.u16()?,
            notification_type: NotificationType::from_code(r.u16()?)?,
            node_ipv4: r.opt_ipv4()?,
            node_ipv6: r.opt_ipv6()?,
        })
    }
}

/// Registration Response (NMS → node). SHOULD carry an Observed Address extension (the
/// address:port NMS saw). A relay token held by another endpoint is refused with
/// [`crate::Flag::RelayTokenInUse`].
///
/// Body: `0: NAT Flag(8) · 1: Padding(24) = 0` (4 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct RegistrationResponse {
    /// NAT Flag: the address the node reported differs from the one NMS observed.
    pub nat: bool,
}

impl RegistrationResponse {
    pub(crate) fn encode(&self, w: &mut impl BufMut) -> Result<(), EncodeError> {
        w.put_u8(self.nat.into());
        w.put_bytes(0, 3);
        Ok(())
    }

    pub(crate) fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let nat = match r.u8()? {
            0 => false,
            1 => true,
            v => {
                return Err(DecodeError::BadEnum {
                    field: "NAT Flag",
                    value: v.into(),
                })
            }
        };
        r.zeros(3, "Registration Response Padding")?;
        Ok(RegistrationResponse { nat })
    }
}
