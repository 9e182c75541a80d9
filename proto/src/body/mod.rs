//! Message bodies of SPEC §5, one file per message family, and the [`Body`] enum that
//! has one variant per message type.

mod capsule;
mod date;
mod direction;
mod enroll;
mod location;
mod login;
mod node_info;
mod registration;
mod relay;
mod route;

pub use capsule::{
    encode_capsule_into, encode_capsule_to_slice, Capsule, CapsuleRef, CAPSULE_OVERHEAD,
    MAX_CAPSULE_PAYLOAD,
};
pub use date::Date;
pub use direction::{DirectionRequest, DirectionTarget};
pub use enroll::{EnrollRequest, EnrollResponse};
pub use location::LocationUpdate;
pub use login::{AuthType, LoginRequest, LoginResponse, CIPHER_NONE};
pub use node_info::{
    GeneralNode, MacAddr, MacAddrParseError, NodeInformation, NODE_INFO_ENTRY_FIXED_LEN,
};
pub use registration::{NotificationType, RegistrationRequest, RegistrationResponse};
pub use relay::RelayBinding;
pub use route::{PathEnd, ProcessCode, RouteDirection, ROUTE_DIRECTION_FIXED_LEN};

use bytes::BufMut;

use crate::codec::Reader;
use crate::error::{DecodeError, EncodeError};
use crate::msg_type::MessageType;

/// The typed body of a message: one variant per message type v2 uses. The variant
/// determines the Base Header Type.
///
/// Header-only messages (Keep Alive, ACK, Hole Punching, Tunnel Request/Response, Node
/// Information Request, Finalization) are unit variants: their body is empty, and any
/// byte after their extension headers is [`DecodeError::TrailingBytes`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Body {
    /// 2: ACK (header only). The result is the Flag; with [`crate::Flag::Optimization`]
    /// it confirms a route-optimization switch (ID = PathID). Also the generic error
    /// reply ([`crate::Message::error_reply`]).
    Ack,
    /// 3: Login Request.
    LoginRequest(LoginRequest),
    /// 4: Login Response.
    LoginResponse(LoginResponse),
    /// 6: Registration Request (MUST carry a Relay extension).
    RegistrationRequest(RegistrationRequest),
    /// 7: Registration Response.
    RegistrationResponse(RegistrationResponse),
    /// 8: Keep Alive (header only).
    KeepAlive,
    /// 11: Direction Request.
    DirectionRequest(DirectionRequest),
    /// 12: Route Direction to Responder.
    RouteDirectionToResponder(RouteDirection),
    /// 13: Route Direction Confirmation.
    RouteDirectionConfirmation(RouteDirection),
    /// 14: Route Direction to Initiator.
    RouteDirectionToInitiator(RouteDirection),
    /// 15: Node Information Request (header only).
    NodeInformationRequest,
    /// 16: Node Information Response.
    NodeInformationResponse(NodeInformation),
    /// 17: Relay Request (MUST carry a Relay extension).
    RelayRequest(RelayBinding),
    /// 18: Relay Response.
    RelayResponse(RelayBinding),
    /// 21: Hole Punching (header only).
    HolePunching,
    /// 22: Tunnel Request (empty body in v2).
    TunnelRequest,
    /// 23: Tunnel Response (empty body in v2).
    TunnelResponse,
    /// 24: Capsule Message.
    Capsule(Capsule),
    /// 25: Keep Alive ACK (header only).
    KeepAliveAck,
    /// 27: Enroll Request.
    EnrollRequest(EnrollRequest),
    /// 28: Enroll Response.
    EnrollResponse(EnrollResponse),
    /// 29: Location Update.
    LocationUpdate(LocationUpdate),
    /// 30: Finalization (header only, ID = NodeID).
    Finalization,
}

impl Body {
    /// The Base Header Type of this body.
    pub fn message_type(&self) -> MessageType {
        match self {
            Body::Ack => MessageType::Ack,
            Body::LoginRequest(_) => MessageType::LoginRequest,
            Body::LoginResponse(_) => MessageType::LoginResponse,
            Body::RegistrationRequest(_) => MessageType::RegistrationRequest,
            Body::RegistrationResponse(_) => MessageType::RegistrationResponse,
            Body::KeepAlive => MessageType::KeepAlive,
            Body::DirectionRequest(_) => MessageType::DirectionRequest,
            Body::RouteDirectionToResponder(_) => MessageType::RouteDirectionToResponder,
            Body::RouteDirectionConfirmation(_) => MessageType::RouteDirectionConfirmation,
            Body::RouteDirectionToInitiator(_) => MessageType::RouteDirectionToInitiator,
            Body::NodeInformationRequest => MessageType::NodeInformationRequest,
            Body::NodeInformationResponse(_) => MessageType::NodeInformationResponse,
            Body::RelayRequest(_) => MessageType::RelayRequest,
            Body::RelayResponse(_) => MessageType::RelayResponse,
            Body::HolePunching => MessageType::HolePunching,
            Body::TunnelRequest => MessageType::TunnelRequest,
            Body::TunnelResponse => MessageType::TunnelResponse,
            Body::Capsule(_) => MessageType::Capsule,
            Body::KeepAliveAck => MessageType::KeepAliveAck,
            Body::EnrollRequest(_) => MessageType::EnrollRequest,
            Body::EnrollResponse(_) => MessageType::EnrollResponse,
            Body::LocationUpdate(_) => MessageType::LocationUpdate,
            Body::Finalization => MessageType::Finalization,
        }
    }

    /// The Route Direction body of types 12, 13 and 14.
    pub fn route_direction(&self) -> Option<&RouteDirection> {
        match self {
            Body::RouteDirectionToResponder(r)
            | Body::RouteDirectionConfirmation(r)
            | Body::RouteDirectionToInitiator(r) => Some(r),
            _ => None,
        }
    }

    pub(crate) fn encode(&self, w: &mut impl BufMut) -> Result<(), EncodeError> {
        match self {
            Body::LoginRequest(b) => b.encode(w),
            Body::LoginResponse(b) => b.encode(w),
            Body::RegistrationRequest(b) => b.encode(w),
            Body::RegistrationResponse(b) => b.encode(w),
            Body::DirectionRequest(b) => b.encode(w),
            Body::RouteDirectionToResponder(b)
            | Body::RouteDirectionConfirmation(b)
            | Body::RouteDirectionToInitiator(b) => b.encode(w),
            Body::NodeInformationResponse(b) => b.encode(w),
            Body::RelayRequest(b) | Body::RelayResponse(b) => b.encode(w),
            Body::Capsule(b) => b.encode(w),
            Body::EnrollRequest(b) => b.encode(w),
            Body::EnrollResponse(b) => b.encode(w),
            Body::LocationUpdate(b) => b.encode(w),
            Body::Ack
            | Body::KeepAlive
            | Body::NodeInformationRequest
            | Body::HolePunching
            | Body::TunnelRequest
            | Body::TunnelResponse
            | Body::KeepAliveAck
            | Body::Finalization => Ok(()),
        }
    }

    /// Decode the body of a message of type `ty` from exactly `bytes`.
    pub(crate) fn decode(ty: MessageType, bytes: &[u8]) -> Result<Body, DecodeError> {
        use MessageType as T;
        let mut r = Reader::new(bytes, "message body");
        let r = &mut r;
        let body = match ty {
            T::Ack => Body::Ack,
            T::LoginRequest => Body::LoginRequest(LoginRequest::decode(r)?),
            T::LoginResponse => Body::LoginResponse(LoginResponse::decode(r)?),
            T::RegistrationRequest => Body::RegistrationRequest(RegistrationRequest::decode(r)?),
            T::RegistrationResponse => Body::RegistrationResponse(RegistrationResponse::decode(r)?),
            T::KeepAlive => Body::KeepAlive,
            T::DirectionRequest => Body::DirectionRequest(DirectionRequest::decode(r)?),
            T::RouteDirectionToResponder => {
                Body::RouteDirectionToResponder(RouteDirection::decode(r)?)
            }
            T::RouteDirectionConfirmation => {
                Body::RouteDirectionConfirmation(RouteDirection::decode(r)?)
            }
            T::RouteDirectionToInitiator => {
                Body::RouteDirectionToInitiator(RouteDirection::decode(r)?)
            }
            T::NodeInformationRequest => Body::NodeInformationRequest,
            T::NodeInformationResponse => {
                Body::NodeInformationResponse(NodeInformation::decode(r)?)
            }
            T::RelayRequest => Body::RelayRequest(RelayBinding::decode(r)?),
            T::RelayResponse => Body::RelayResponse(RelayBinding::decode(r)?),
            T::HolePunching => Body::HolePunching,
            T::TunnelRequest => Body::TunnelRequest,
            T::TunnelResponse => Body::TunnelResponse,
            T::Capsule => Body::Capsule(Capsule::decode(r)?),
            T::KeepAliveAck => Body::KeepAliveAck,
            T::EnrollRequest => Body::EnrollRequest(EnrollRequest::decode(r)?),
            T::EnrollResponse => Body::EnrollResponse(EnrollResponse::decode(r)?),
            T::LocationUpdate => Body::LocationUpdate(LocationUpdate::decode(r)?),
            T::Finalization => Body::Finalization,
            T::Default
            | T::KeySharing
            | T::KeyDistribution
            | T::NotificationDirection
            | T::NotificationRegistration
            | T::NotificationRequest
            | T::RouteRequest
            | T::MulticastRequest => return Err(DecodeError::UnsupportedType(ty)),
        };
        if r.remaining() != 0 {
            return Err(DecodeError::TrailingBytes {
                what: "message body",
                extra: r.remaining(),
            });
        }
        Ok(body)
    }
}

macro_rules! from_body {
    ($($ty:ident),*) => {
        $(impl From<$ty> for Body {
            fn from(b: $ty) -> Body {
                Body::$ty(b)
            }
        })*
    };
}

from_body!(
    LoginRequest,
    LoginResponse,
    RegistrationRequest,
    RegistrationResponse,
    DirectionRequest,
    Capsule,
    EnrollRequest,
    EnrollResponse,
    LocationUpdate
);

impl From<NodeInformation> for Body {
    fn from(b: NodeInformation) -> Body {
        Body::NodeInformationResponse(b)
    }
}
