//! The Base Header's Type (SPEC §4 "Type codes").

use crate::error::DecodeError;

macro_rules! types {
    ($($(#[$doc:meta])* $name:ident = $code:literal,)*) => {
        /// Type of a CYPHONIC message (SPEC §4). Every code of the table is listed,
        /// including the ones v2 does not use; see [`MessageType::is_supported`].
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[repr(u8)]
        pub enum MessageType {
            $($(#[$doc])* $name = $code,)*
        }

        impl MessageType {
            /// Every code of the table, in code order.
            pub const ALL: &'static [MessageType] = &[$(MessageType::$name,)*];

            /// The type with wire code `code`, or `None` if the table has no such code.
            pub const fn from_code(code: u8) -> Option<MessageType> {
                match code {
                    $($code => Some(MessageType::$name),)*
                    _ => None,
                }
            }
        }
    };
}

types! {
    /// 0: v1 "Default" placeholder; not a message in v2.
    Default = 0,
    /// 1: v1 Key Sharing; unused in v2 (keys come from TLS).
    KeySharing = 1,
    /// 2: ACK (header only). Also the generic error reply, see
    /// [`crate::Message::error_reply`].
    Ack = 2,
    /// 3: Login Request (node → AS).
    LoginRequest = 3,
    /// 4: Login Response (AS → node).
    LoginResponse = 4,
    /// 5: v1 Key Distribution; unused in v2.
    KeyDistribution = 5,
    /// 6: Registration Request (node → NMS).
    RegistrationRequest = 6,
    /// 7: Registration Response (NMS → node).
    RegistrationResponse = 7,
    /// 8: Keep Alive (header only).
    KeepAlive = 8,
    /// 9: Notification Direction; reserved.
    NotificationDirection = 9,
    /// 10: Notification Registration; reserved.
    NotificationRegistration = 10,
    /// 11: Direction Request (Initiator → NMS).
    DirectionRequest = 11,
    /// 12: Route Direction to Responder (NMS → Responder).
    RouteDirectionToResponder = 12,
    /// 13: Route Direction Confirmation (Responder → NMS).
    RouteDirectionConfirmation = 13,
    /// 14: Route Direction to Initiator (NMS → Initiator).
    RouteDirectionToInitiator = 14,
    /// 15: Node Information Request (adapter → AS).
    NodeInformationRequest = 15,
    /// 16: Node Information Response (AS → adapter).
    NodeInformationResponse = 16,
    /// 17: Relay Request (NMS → TRS).
    RelayRequest = 17,
    /// 18: Relay Response (TRS → NMS).
    RelayResponse = 18,
    /// 19: Notification Request; reserved.
    NotificationRequest = 19,
    /// 20: Route Request; reserved.
    RouteRequest = 20,
    /// 21: Hole Punching (header only, ID = PathID).
    HolePunching = 21,
    /// 22: Tunnel Request (first transaction on a peer connection, ID = PathID).
    TunnelRequest = 22,
    /// 23: Tunnel Response (ID = PathID).
    TunnelResponse = 23,
    /// 24: Capsule Message (one virtual IP packet in a QUIC DATAGRAM, ID = PathID).
    Capsule = 24,
    /// 25: Keep Alive ACK (header only).
    KeepAliveAck = 25,
    /// 26: Multicast Request; reserved.
    MulticastRequest = 26,
    /// 27 (v2): Enroll Request (device without certificate → AS).
    EnrollRequest = 27,
    /// 28 (v2): Enroll Response (AS → device).
    EnrollResponse = 28,
    /// 29 (v2): Location Update (NMS → a moved node's peers).
    LocationUpdate = 29,
    /// 30 (v2): Finalization (graceful logout, node → NMS; header only).
    Finalization = 30,
}

/// What the Base Header's 128-bit ID holds for a message type (SPEC §2, §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdKind {
    /// A NodeID (node ↔ cloud signaling).
    NodeId,
    /// A PathID (messages on a peer connection).
    PathId,
    /// NodeID towards NMS, PathID towards a peer or TRS (Keep Alive, Keep Alive ACK, ACK).
    Either,
    /// Zero: the sender has no identifier yet (Login Request, Enroll) or the type is
    /// not used in v2.
    Zero,
}

impl MessageType {
    /// The wire code.
    pub const fn code(self) -> u8 {
        self as u8
    }

    /// False for the codes v2 does not use (0, 1, 5) or keeps reserved (9, 10, 19, 20,
    /// 26). Receiving one is [`DecodeError::UnsupportedType`], answered with Flag 36.
    pub const fn is_supported(self) -> bool {
        !matches!(
            self,
            MessageType::Default
                | MessageType::KeySharing
                | MessageType::KeyDistribution
                | MessageType::NotificationDirection
                | MessageType::NotificationRegistration
                | MessageType::NotificationRequest
                | MessageType::RouteRequest
                | MessageType::MulticastRequest
        )
    }

    /// The type that answers this request type in the same transaction, if any.
    pub const fn response_type(self) -> Option<MessageType> {
        use MessageType::*;
        Some(match self {
            LoginRequest => LoginResponse,
            EnrollRequest => EnrollResponse,
            RegistrationRequest => RegistrationResponse,
            KeepAlive => KeepAliveAck,
            DirectionRequest => RouteDirectionToInitiator,
            RouteDirectionToResponder => RouteDirectionConfirmation,
            NodeInformationRequest => NodeInformationResponse,
            RelayRequest => RelayResponse,
            TunnelRequest => TunnelResponse,
            HolePunching => Ack,
            _ => return None,
        })
    }

    /// What the Base Header ID holds for this type.
    pub const fn id_kind(self) -> IdKind {
        use MessageType::*;
        match self {
            LoginResponse
            | RegistrationRequest
            | RegistrationResponse
            | DirectionRequest
            | RouteDirectionToResponder
            | RouteDirectionConfirmation
            | RouteDirectionToInitiator
            | NodeInformationRequest
            | NodeInformationResponse
            | RelayRequest
            | RelayResponse
            | LocationUpdate
            | Finalization => IdKind::NodeId,
            HolePunching | TunnelRequest | TunnelResponse | Capsule => IdKind::PathId,
            KeepAlive | KeepAliveAck | Ack => IdKind::Either,
            _ => IdKind::Zero,
        }
    }
}

impl From<MessageType> for u8 {
    fn from(t: MessageType) -> u8 {
        t.code()
    }
}

impl TryFrom<u8> for MessageType {
    type Error = DecodeError;
    /// Unknown codes are [`DecodeError::UnknownType`]; known but unused ones decode
    /// (use [`MessageType::is_supported`] to refuse them).
    fn try_from(code: u8) -> Result<MessageType, DecodeError> {
        MessageType::from_code(code).ok_or(DecodeError::UnknownType(code))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_0_to_30_and_nothing_else() {
        for code in 0..=u8::MAX {
            match MessageType::try_from(code) {
                Ok(t) => {
                    assert!(code <= 30);
                    assert_eq!(t.code(), code);
                }
                Err(e) => {
                    assert!(code > 30);
                    assert_eq!(e, DecodeError::UnknownType(code));
                }
            }
        }
        assert_eq!(MessageType::ALL.len(), 31);
    }

    #[test]
    fn unsupported_codes() {
        let unsupported: Vec<u8> = MessageType::ALL
            .iter()
            .filter(|t| !t.is_supported())
            .map(|t| t.code())
            .collect();
        assert_eq!(unsupported, vec![0, 1, 5, 9, 10, 19, 20, 26]);
    }

    #[test]
    fn responses() {
        assert_eq!(
            MessageType::LoginRequest.response_type(),
            Some(MessageType::LoginResponse)
        );
        assert_eq!(
            MessageType::DirectionRequest.response_type(),
            Some(MessageType::RouteDirectionToInitiator)
        );
        assert_eq!(MessageType::Capsule.response_type(), None);
        assert_eq!(MessageType::Capsule.id_kind(), IdKind::PathId);
        assert_eq!(MessageType::LoginRequest.id_kind(), IdKind::Zero);
    }
}
