//! proptest strategies for every message body, extension header and message.
#![allow(dead_code)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use cyphonic_proto::*;
use proptest::collection::vec;
use proptest::prelude::*;

pub fn fqdn() -> impl Strategy<Value = Fqdn> {
    // The last label starts with a letter, so no FQDN reads as an IP address.
    (
        vec("[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?", 0..3),
        "[a-z]([a-z0-9-]{0,10}[a-z0-9])?",
    )
        .prop_map(|(mut labels, last)| {
            labels.push(last);
            Fqdn::new(&labels.join(".")).expect("strategy yields valid FQDNs")
        })
}

pub fn ipv4() -> impl Strategy<Value = Ipv4Addr> {
    any::<[u8; 4]>().prop_map(Ipv4Addr::from)
}

pub fn ipv6() -> impl Strategy<Value = Ipv6Addr> {
    any::<[u8; 16]>().prop_map(Ipv6Addr::from)
}

/// Some(address) is never the unspecified address (that encodes as None).
pub fn opt_ipv4() -> impl Strategy<Value = Option<Ipv4Addr>> {
    prop::option::of(ipv4().prop_filter("unspecified means absent", |a| !a.is_unspecified()))
}

pub fn opt_ipv6() -> impl Strategy<Value = Option<Ipv6Addr>> {
    prop::option::of(ipv6().prop_filter("unspecified means absent", |a| !a.is_unspecified()))
}

pub fn socket_addr() -> impl Strategy<Value = SocketAddr> {
    prop_oneof![
        (ipv4(), any::<u16>()).prop_map(|(a, p)| SocketAddr::new(IpAddr::V4(a), p)),
        (ipv6(), any::<u16>()).prop_map(|(a, p)| SocketAddr::new(IpAddr::V6(a), p)),
    ]
}

pub fn date() -> impl Strategy<Value = Option<Date>> {
    prop::option::of(
        (1u16..=9999, 1u8..=12, 1u8..=31)
            .prop_filter_map("calendar date", |(y, m, d)| Date::new(y, m, d)),
    )
}

pub fn text() -> impl Strategy<Value = String> {
    "\\PC{0,24}"
}

pub fn bytes() -> impl Strategy<Value = Vec<u8>> {
    vec(any::<u8>(), 0..48)
}

pub fn id16() -> impl Strategy<Value = [u8; 16]> {
    any::<[u8; 16]>()
}

pub fn token() -> impl Strategy<Value = RelayToken> {
    any::<[u8; 8]>().prop_map(RelayToken)
}

pub fn relay_tokens() -> impl Strategy<Value = RelayTokens> {
    (token(), token()).prop_map(|(initiator, responder)| RelayTokens {
        initiator,
        responder,
    })
}

pub fn extension() -> impl Strategy<Value = Extension> {
    prop_oneof![
        relay_tokens().prop_map(Extension::Relay),
        vec(socket_addr(), 0..=16).prop_map(Extension::Candidates),
        socket_addr().prop_map(Extension::ObservedAddress),
        any::<[u8; 16]>().prop_map(Extension::FastData),
        (4u8..=255, 0usize..4, any::<u8>()).prop_map(|(ty, n, fill)| {
            let mut data: Vec<u8> = (0..6 + 8 * n).map(|i| fill.wrapping_add(i as u8)).collect();
            if ty == cyphonic_proto::ext::EXT_FAST_DATA
                && data[0] == cyphonic_proto::ext::FAST_DATA_V1
            {
                data[0] = 2; // version 1 is Extension::FastData
            }
            Extension::Unknown { ty, data }
        }),
    ]
}

/// Up to 8 extension headers, each defined type at most once.
pub fn extensions() -> impl Strategy<Value = Vec<Extension>> {
    vec(extension(), 0..6).prop_map(|v| {
        let mut out: Vec<Extension> = Vec::new();
        for e in v {
            let ty = e.ty();
            if e.is_defined() && out.iter().any(|p| p.ty() == ty && p.is_defined()) {
                continue;
            }
            out.push(e);
        }
        out
    })
}

pub fn auth_type() -> impl Strategy<Value = AuthType> {
    prop_oneof![Just(AuthType::Password), Just(AuthType::Certificate)]
}

pub fn login_request() -> impl Strategy<Value = LoginRequest> {
    (id16(), auth_type(), any::<u8>(), text(), bytes(), bytes()).prop_map(
        |(app, auth_type, exec_mode, device_id, password, certificate)| LoginRequest {
            application_id: ApplicationId(app),
            auth_type,
            exec_mode,
            device_id,
            password,
            certificate,
        },
    )
}

pub fn login_response() -> impl Strategy<Value = LoginResponse> {
    (
        date(),
        fqdn(),
        any::<u16>(),
        ipv4(),
        ipv6(),
        opt_ipv4(),
        opt_ipv6(),
    )
        .prop_map(
            |(cert_expiry, fqdn, nms_port, virtual_ipv4, virtual_ipv6, nms_ipv4, nms_ipv6)| {
                LoginResponse {
                    cert_expiry,
                    fqdn,
                    nms_port,
                    virtual_ipv4,
                    virtual_ipv6,
                    nms_ipv4,
                    nms_ipv6,
                }
            },
        )
}

pub fn notification_type() -> impl Strategy<Value = NotificationType> {
    prop_oneof![
        Just(NotificationType::None),
        Just(NotificationType::Fcm),
        Just(NotificationType::Apns),
        Just(NotificationType::Wns),
    ]
}

pub fn registration_request() -> impl Strategy<Value = RegistrationRequest> {
    (any::<u16>(), notification_type(), opt_ipv4(), opt_ipv6()).prop_map(
        |(application_port, notification_type, node_ipv4, node_ipv6)| RegistrationRequest {
            application_port,
            notification_type,
            node_ipv4,
            node_ipv6,
        },
    )
}

pub fn direction_target() -> impl Strategy<Value = DirectionTarget> {
    prop_oneof![
        fqdn().prop_map(DirectionTarget::Fqdn),
        ipv4().prop_map(DirectionTarget::VirtualIpv4),
        ipv6().prop_map(DirectionTarget::VirtualIpv6),
    ]
}

pub fn direction_request() -> impl Strategy<Value = DirectionRequest> {
    (id16(), id16(), direction_target()).prop_map(|(a, p, target)| DirectionRequest {
        application_id: ApplicationId(a),
        path_id: PathId(p),
        target,
    })
}

pub fn process_code() -> impl Strategy<Value = ProcessCode> {
    prop_oneof![
        Just(ProcessCode::InitiatorDials),
        Just(ProcessCode::ResponderDials),
        Just(ProcessCode::ViaTrs),
        Just(ProcessCode::SameNat),
    ]
}

pub fn path_end() -> impl Strategy<Value = PathEnd> {
    (
        fqdn(),
        any::<u16>(),
        opt_ipv4(),
        opt_ipv6(),
        opt_ipv4(),
        opt_ipv6(),
        ipv4(),
        ipv6(),
    )
        .prop_map(
            |(fqdn, nat_port, nat_ipv4, nat_ipv6, real_ipv4, real_ipv6, v4, v6)| PathEnd {
                fqdn,
                nat_port,
                nat_ipv4,
                nat_ipv6,
                real_ipv4,
                real_ipv6,
                virtual_ipv4: v4,
                virtual_ipv6: v6,
            },
        )
}

pub fn route_direction() -> impl Strategy<Value = RouteDirection> {
    (
        id16(),
        process_code(),
        any::<u8>(),
        any::<bool>(),
        path_end(),
        path_end(),
        opt_ipv4(),
        opt_ipv6(),
        any::<u16>(),
        date(),
    )
        .prop_map(
            |(
                p,
                process_code,
                exec_mode,
                general_node,
                initiator,
                responder,
                t4,
                t6,
                tp,
                expiry,
            )| {
                RouteDirection {
                    path_id: PathId(p),
                    process_code,
                    exec_mode,
                    general_node,
                    initiator,
                    responder,
                    trs_ipv4: t4,
                    trs_ipv6: t6,
                    trs_port: tp,
                    expiry,
                }
            },
        )
}

pub fn relay_binding() -> impl Strategy<Value = RelayBinding> {
    (id16(), id16(), id16(), any::<u32>()).prop_map(|(p, i, r, l)| RelayBinding {
        path_id: PathId(p),
        initiator: NodeId(i),
        responder: NodeId(r),
        lifetime_secs: l,
    })
}

pub fn general_node() -> impl Strategy<Value = GeneralNode> {
    (
        fqdn(),
        text(),
        any::<[u8; 6]>(),
        auth_type(),
        ipv4(),
        ipv6(),
        any::<bool>(),
    )
        .prop_map(
            |(fqdn, device_id, mac, auth_type, v4, v6, ipv6_enabled)| GeneralNode {
                fqdn,
                device_id,
                mac: MacAddr(mac),
                auth_type,
                virtual_ipv4: v4,
                virtual_ipv6: v6,
                ipv6_enabled,
            },
        )
}

pub fn location_update() -> impl Strategy<Value = LocationUpdate> {
    (
        id16(),
        any::<u16>(),
        any::<u16>(),
        opt_ipv4(),
        opt_ipv6(),
        opt_ipv4(),
        opt_ipv6(),
    )
        .prop_map(|(p, np, rp, n4, n6, r4, r6)| LocationUpdate {
            path_id: PathId(p),
            nat_port: np,
            real_port: rp,
            nat_ipv4: n4,
            nat_ipv6: n6,
            real_ipv4: r4,
            real_ipv6: r6,
        })
}

/// Every body variant.
pub fn body() -> impl Strategy<Value = Body> {
    prop_oneof![
        Just(Body::Ack),
        login_request().prop_map(Body::LoginRequest),
        login_response().prop_map(Body::LoginResponse),
        registration_request().prop_map(Body::RegistrationRequest),
        any::<bool>().prop_map(|nat| Body::RegistrationResponse(RegistrationResponse { nat })),
        Just(Body::KeepAlive),
        direction_request().prop_map(Body::DirectionRequest),
        route_direction().prop_map(Body::RouteDirectionToResponder),
        route_direction().prop_map(Body::RouteDirectionConfirmation),
        route_direction().prop_map(Body::RouteDirectionToInitiator),
        Just(Body::NodeInformationRequest),
        vec(general_node(), 0..4).prop_map(|general_nodes| Body::NodeInformationResponse(
            NodeInformation { general_nodes }
        )),
        relay_binding().prop_map(Body::RelayRequest),
        relay_binding().prop_map(Body::RelayResponse),
        Just(Body::HolePunching),
        Just(Body::TunnelRequest),
        Just(Body::TunnelResponse),
        vec(any::<u8>(), 0..200).prop_map(|payload| Body::Capsule(Capsule { payload })),
        Just(Body::KeepAliveAck),
        (text(), bytes(), bytes()).prop_map(|(device_id, secret, csr)| Body::EnrollRequest(
            EnrollRequest {
                device_id,
                secret,
                csr
            }
        )),
        (bytes(), bytes()).prop_map(|(certificate, ca_certificate)| Body::EnrollResponse(
            EnrollResponse {
                certificate,
                ca_certificate
            }
        )),
        location_update().prop_map(Body::LocationUpdate),
        Just(Body::Finalization),
    ]
}

/// Does a message with this body have to carry a Relay extension?
pub fn needs_relay(body: &Body) -> bool {
    match body {
        Body::RegistrationRequest(_) | Body::RelayRequest(_) => true,
        Body::RouteDirectionToResponder(r) | Body::RouteDirectionToInitiator(r) => {
            r.process_code == ProcessCode::ViaTrs
        }
        _ => false,
    }
}

pub fn flag() -> impl Strategy<Value = Flag> {
    prop::sample::select(Flag::ALL)
}

pub fn message_with(body: impl Strategy<Value = Body>) -> impl Strategy<Value = Message> {
    (
        any::<u32>(),
        flag(),
        any::<u32>(),
        id16(),
        extensions(),
        body,
        relay_tokens(),
    )
        .prop_map(|(txid, flag, seq, id, mut extensions, body, relay)| {
            if needs_relay(&body) && !extensions.iter().any(|e| e.ty() == 1) {
                extensions.push(Extension::Relay(relay));
            }
            Message {
                transaction_id: TransactionId(txid),
                flag,
                sequence: seq,
                id,
                extensions,
                body,
            }
        })
}

pub fn message() -> impl Strategy<Value = Message> {
    message_with(body())
}

pub fn hex(s: &str) -> Vec<u8> {
    let s: String = s.chars().filter(|c| c.is_ascii_hexdigit()).collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}
