//! End-to-end: the SPEC §6 sequences against the real cloud over real QUIC with
//! real certificates on loopback — enrollment, login, registration, route
//! direction for every Process Code, the relay by Connection ID, location update,
//! finalization, every refusal, restart and revocation.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use cyphonic_pki::quic::{ALPN_AS, ALPN_NMS, ALPN_TRS};
use cyphonic_pki::Role;
use cyphonic_proto::body::{DirectionTarget, ProcessCode};
use cyphonic_proto::{Body, Flag, Message, NodeId};
use cyphonic_services::cloud::{Cloud, State};
use cyphonic_services::store::{DeviceId, NewDevice};

async fn add(cloud: &Cloud, name: &str) -> String {
    let (_, token) = cloud
        .store
        .add_device(NewDevice::node(DeviceId::new(name).unwrap()))
        .await
        .unwrap();
    token.secret
}

/// A node that is enrolled, logged in and registered, reporting `report` (None:
/// its true address).
async fn online(
    cloud: &Cloud,
    dir: &std::path::Path,
    name: &str,
    bind: u8,
    report: Option<&str>,
) -> TestNode {
    let token = add(cloud, name).await;
    let mut n = TestNode::new(name, lo(bind), cloud.local_addr, dir);
    n.report = report.map(|r| r.parse().unwrap());
    assert_eq!(n.enroll(&token).await.flag, Flag::Ok);
    assert_eq!(n.login().await.flag, Flag::Ok);
    assert_eq!(n.register().await.flag, Flag::Ok);
    n
}

#[tokio::test]
async fn enroll_login_register_and_survive_a_restart() {
    let (_t, dir, cloud) = fresh_cloud().await;
    let port = cloud.local_addr.port();
    let token = add(&cloud, "n1").await;
    let mut n = TestNode::new("n1", lo(1), cloud.local_addr, &dir);

    let e = n.enroll(&token).await;
    assert_eq!(e.flag, Flag::Ok);
    let device = cloud.store.device("n1").await.unwrap();
    assert_eq!(e.node_id(), device.node_id);
    // The certificate names the FQDN and carries the NodeID.
    let id = n.creds.as_ref().unwrap().identity().unwrap();
    assert_eq!(id.name, device.fqdn);
    assert_eq!(id.node_id, Some(device.node_id));

    let l = n.login().await;
    assert_eq!(l.flag, Flag::Ok);
    let Body::LoginResponse(lr) = &l.body else {
        panic!("{l:?}")
    };
    assert_eq!(l.node_id(), device.node_id);
    assert_eq!(
        (lr.virtual_ipv4, lr.virtual_ipv6),
        (device.virtual_ipv4, device.virtual_ipv6)
    );
    assert_eq!(lr.fqdn, device.fqdn);
    assert_eq!(lr.nms_port, port);
    assert!(lr.cert_expiry.is_some());

    let r = n.register().await;
    assert_eq!(r.flag, Flag::Ok);
    let Body::RegistrationResponse(rr) = &r.body else {
        panic!("{r:?}")
    };
    assert!(!rr.nat, "reported == observed: no NAT");
    assert_eq!(r.observed_address(), Some(n.local_addr()));
    assert_eq!(cloud.nms.as_ref().unwrap().online(), 1);

    // Restart on the same store: same NodeID, FQDN and addresses; the node logs in again.
    drop(cloud);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let cloud = Cloud::start(config(&dir, SocketAddr::new(lo(1), port)))
        .await
        .unwrap();
    let again = cloud.store.device("n1").await.unwrap();
    assert_eq!(
        (again.node_id, again.virtual_ipv4, again.virtual_ipv6),
        (device.node_id, device.virtual_ipv4, device.virtual_ipv6)
    );
    let mut n2 = TestNode::new("n1", lo(1), cloud.local_addr, &dir);
    n2.install(n.creds.clone().unwrap());
    n2.node_id = n.node_id;
    let l2 = n2.login().await;
    assert_eq!(l2.flag, Flag::Ok);
    let Body::LoginResponse(lr2) = &l2.body else {
        panic!()
    };
    assert_eq!(
        (l2.node_id(), lr2.virtual_ipv4),
        (device.node_id, device.virtual_ipv4)
    );
    assert_eq!(n2.register().await.flag, Flag::Ok);
}

#[tokio::test]
async fn enrollment_refusals() {
    let (_t, dir, cloud) = fresh_cloud().await;
    let token = add(&cloud, "n1").await;
    let _other = add(&cloud, "n2").await;
    let mut n = TestNode::new("n1", lo(1), cloud.local_addr, &dir);

    // A malformed CSR is refused before the token is spent…
    let r = n
        .enroll_with("n1", token.as_bytes(), b"not a csr".to_vec(), "")
        .await;
    assert_eq!(r.flag, Flag::Malformed);
    // …a wrong token and an unknown device are refused…
    let (csr, key) = cyphonic_pki::generate_csr(&n.fqdn).unwrap();
    let r = n.enroll_with("n1", b"00", csr.clone(), &key).await;
    assert_eq!(r.flag, Flag::PasswordMismatch);
    // (an unknown device gets the same flag as a wrong token: names cannot be probed)
    let r = n
        .enroll_with("ghost", token.as_bytes(), csr.clone(), &key)
        .await;
    assert_eq!(r.flag, Flag::PasswordMismatch);
    let r = n.enroll_with("ghost", b"11", csr.clone(), &key).await;
    assert_eq!(r.flag, Flag::PasswordMismatch);
    // …n2's token does not enroll n1…
    let r = n
        .enroll_with("n2", token.as_bytes(), csr.clone(), &key)
        .await;
    assert_eq!(r.flag, Flag::PasswordMismatch);
    // …the real token works once, and its reuse is refused.
    assert_eq!(
        n.enroll_with("n1", token.as_bytes(), csr.clone(), &key)
            .await
            .flag,
        Flag::Ok
    );
    let mut again = TestNode::new("n1", lo(1), cloud.local_addr, &dir);
    assert_eq!(
        again
            .enroll_with("n1", token.as_bytes(), csr, &key)
            .await
            .flag,
        Flag::PasswordMismatch
    );

    // Enrollment on a connection that shows a certificate is refused.
    let conn = n.connect(Role::As, ALPN_AS, true).await;
    let (csr, _) = cyphonic_pki::generate_csr(&n.fqdn).unwrap();
    let req = Message::request(Body::EnrollRequest(cyphonic_proto::body::EnrollRequest {
        device_id: "n1".into(),
        secret: token.into_bytes(),
        csr,
    }));
    let r = cyphonic_services::rpc::transact(&conn, &req, T)
        .await
        .unwrap();
    assert_eq!(r.flag, Flag::ForbiddenByPolicy);
}

#[tokio::test]
async fn login_and_registration_refusals() {
    let (_t, dir, cloud) = fresh_cloud().await;
    let n1 = online(&cloud, &dir, "n1", 1, None).await;

    // A certificate from the CA for a name that is no device: login refused.
    let state = State::prepare(&config(&dir, cloud.local_addr))
        .await
        .unwrap();
    let issued = {
        let mut ca = cyphonic_pki::Ca::open(&dir.join("ca")).unwrap();
        ca.issue_node(&fqdn("ghost"), None, 1).unwrap()
    };
    let mut ghost = TestNode::new("ghost", lo(2), cloud.local_addr, &dir);
    ghost.install(
        cyphonic_pki::Credentials::from_der_and_key_pem(
            issued.cert_der,
            issued.key_pem.as_deref().unwrap(),
        )
        .unwrap(),
    );
    assert_eq!(ghost.login().await.flag, Flag::NoDatabaseRecord);

    // A node claiming another NodeID in its Registration Request.
    let token = add(&cloud, "n2").await;
    let mut n2 = TestNode::new("n2", lo(2), cloud.local_addr, &dir);
    assert_eq!(n2.enroll(&token).await.flag, Flag::Ok);
    n2.node_id = n1.node_id;
    assert_eq!(n2.register().await.flag, Flag::Unauthenticated);

    // NMS and TRS without a client certificate: the connection is closed.
    let anon = TestNode::new("anon", lo(3), cloud.local_addr, &dir);
    for (role, alpn) in [(Role::Nms, ALPN_NMS), (Role::Trs, ALPN_TRS)] {
        let conn = anon.connect(role, alpn, false).await;
        let r =
            cyphonic_services::rpc::transact(&conn, &Message::request(Body::KeepAlive), T).await;
        assert!(
            r.is_err(),
            "{role}: unauthenticated request answered: {r:?}"
        );
    }
    // AS without a certificate serves only enrollment.
    let conn = anon.connect(Role::As, ALPN_AS, false).await;
    let r = cyphonic_services::rpc::transact(
        &conn,
        &Message::request(cyphonic_proto::body::LoginRequest::with_tls_certificate()),
        T,
    )
    .await
    .unwrap();
    assert_eq!(r.flag, Flag::Unauthenticated);

    // Revocation: refused at once for new logins, live connections closed.
    let (_, serials) = cloud.store.revoke_device("n1").await.unwrap();
    state.revoke_serials(&serials).unwrap();
    let nms = n1.nms.clone().unwrap();
    let closed = tokio::time::timeout(Duration::from_secs(5), nms.closed()).await;
    assert!(
        closed.is_ok(),
        "the revoked node's NMS connection stayed open"
    );
    let mut again = TestNode::new("n1", lo(1), cloud.local_addr, &dir);
    again.install(n1.creds.clone().unwrap());
    assert_ne!(again.login().await.flag, Flag::Ok);
}

#[tokio::test]
async fn malformed_messages_get_a_flag_and_the_connection_survives() {
    let (_t, dir, cloud) = fresh_cloud().await;
    let n = online(&cloud, &dir, "n1", 1, None).await;
    let garbage: [&[u8]; 3] = [
        // A header claiming version 9.
        &[
            0, 0, 0, 1, 9, 0, 8, 0, 0, 0, 0, 0, 0, 32, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
            0, 0, 0,
        ],
        // A Keep Alive whose length says 40 but carries 32 bytes then FIN.
        &[
            0, 0, 0, 2, 2, 0, 8, 0, 0, 0, 0, 0, 0, 40, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
            0, 0, 0,
        ],
        // Not even a header.
        b"hello",
    ];
    for (role, alpn) in [
        (Role::As, ALPN_AS),
        (Role::Nms, ALPN_NMS),
        (Role::Trs, ALPN_TRS),
    ] {
        let conn = n.connect(role, alpn, true).await;
        for g in garbage {
            let (mut s, mut r) = conn.open_bi().await.unwrap();
            s.write_all(g).await.unwrap();
            s.finish().unwrap();
            let reply = tokio::time::timeout(T, r.read_to_end(1 << 16))
                .await
                .unwrap()
                .unwrap_or_default();
            if let Ok(m) = Message::decode(&reply) {
                assert_eq!(m.flag, Flag::Malformed, "{role}: {m:?}");
            }
        }
        // A well-formed request still works on the same connection.
        let ka = cyphonic_services::rpc::transact(&conn, &Message::request(Body::KeepAlive), T)
            .await
            .unwrap();
        assert_eq!(
            (ka.flag, ka.message_type()),
            (Flag::Ok, cyphonic_proto::MessageType::KeepAliveAck),
            "{role}"
        );
    }
}

#[tokio::test]
async fn direction_code_1_direct_and_refusals() {
    let (_t, dir, cloud) = fresh_cloud().await;
    let a = online(&cloud, &dir, "a", 1, None).await;
    let mut b = online(&cloud, &dir, "b", 2, None).await;

    let r = a.direction_to(&b).await;
    assert_eq!(r.flag, Flag::Ok, "{r:?}");
    let Body::RouteDirectionToInitiator(rd) = &r.body else {
        panic!("{r:?}")
    };
    assert_eq!(rd.process_code, ProcessCode::InitiatorDials);
    assert_eq!(rd.path_id, cyphonic_proto::PathId::derive(&a.fqdn, &b.fqdn));
    let dev_b = cloud.store.device("b").await.unwrap();
    assert_eq!(
        (rd.responder.virtual_ipv4, rd.responder.virtual_ipv6),
        (dev_b.virtual_ipv4, dev_b.virtual_ipv6)
    );
    assert_eq!(r.candidates(), &[b.local_addr()]);
    // The responder was told first (and confirmed).
    let push = b.pushes.recv().await.unwrap();
    assert!(matches!(push.body, Body::RouteDirectionToResponder(_)));

    let conn = a
        .dial(r.candidates()[0], &b.fqdn, rd.path_id, None)
        .await
        .unwrap();
    let accepted = tokio::time::timeout(T, b.accepted.recv())
        .await
        .unwrap()
        .unwrap();
    datagrams_flow(&conn, &accepted).await;

    // By virtual address too.
    let r = a
        .direction(DirectionTarget::VirtualIpv4(dev_b.virtual_ipv4))
        .await;
    assert_eq!(r.flag, Flag::Ok);

    // Unknown name: no such name, promptly. Known but offline: unreachable.
    let start = std::time::Instant::now();
    let r = a.direction(DirectionTarget::Fqdn(fqdn("nobody"))).await;
    assert_eq!(r.flag, Flag::NoSuchName);
    assert!(start.elapsed() < Duration::from_secs(1));
    add(&cloud, "sleeper").await;
    let r = a.direction(DirectionTarget::Fqdn(fqdn("sleeper"))).await;
    assert_eq!(r.flag, Flag::PeerUnreachable);
    let r = a.direction(DirectionTarget::Fqdn(a.fqdn.clone())).await;
    assert_eq!(r.flag, Flag::FqdnNotAcceptable);
}

#[tokio::test]
async fn direction_code_2_responder_behind_nat_dials_the_initiator() {
    let (_t, dir, cloud) = fresh_cloud().await;
    let mut a = online(&cloud, &dir, "a", 1, None).await;
    let mut b = online(&cloud, &dir, "b", 2, Some("192.0.2.20:443")).await;
    let r = a.direction_to(&b).await;
    assert_eq!(r.flag, Flag::Ok, "{r:?}");
    let Body::RouteDirectionToInitiator(rd) = &r.body else {
        panic!()
    };
    assert_eq!(rd.process_code, ProcessCode::ResponderDials);
    // The NATed responder dialed the initiator's address.
    let from_b = tokio::time::timeout(T, b.dialed.recv())
        .await
        .unwrap()
        .unwrap();
    let at_a = tokio::time::timeout(T, a.accepted.recv())
        .await
        .unwrap()
        .unwrap();
    datagrams_flow(&from_b, &at_a).await;
}

#[tokio::test]
async fn direction_code_4_same_nat_dials_the_private_address() {
    let (_t, dir, cloud) = fresh_cloud().await;
    // Both observed at 127.0.0.1 but reporting private addresses: one NAT.
    let a = online(&cloud, &dir, "a", 1, Some("192.0.2.10:443")).await;
    let b = online(&cloud, &dir, "b", 1, Some("192.0.2.11:443")).await;
    let r = a.direction_to(&b).await;
    let Body::RouteDirectionToInitiator(rd) = &r.body else {
        panic!("{r:?}")
    };
    assert_eq!(rd.process_code, ProcessCode::SameNat);
    assert_eq!(
        r.candidates(),
        &["192.0.2.11:443".parse::<SocketAddr>().unwrap()]
    );
}

#[tokio::test]
async fn relay_by_connection_id_forwards_unchanged_and_only_for_bound_pairs() {
    let (_t, dir, cloud) = fresh_cloud().await;
    let trs = cloud.trs.clone().unwrap();
    // Behind two different NATs: observed at 127.0.0.2 / .3, reporting private addresses.
    let a = online(&cloud, &dir, "a", 2, Some("192.0.2.10:443")).await;
    let mut b = online(&cloud, &dir, "b", 3, Some("198.51.100.10:443")).await;
    let c = online(&cloud, &dir, "c", 4, Some("203.0.113.77:443")).await;

    let r = a.direction_to(&b).await;
    assert_eq!(r.flag, Flag::Ok, "{r:?}");
    let Body::RouteDirectionToInitiator(rd) = &r.body else {
        panic!()
    };
    assert_eq!(rd.process_code, ProcessCode::ViaTrs);
    let tokens = *r.relay().unwrap();
    assert_eq!((tokens.initiator, tokens.responder), (a.token, b.token));
    assert_eq!(trs.binding_count(), 1);

    // Through the TRS: the Initial's DCID carries b's relay token.
    a.connect_trs(cloud.local_addr).await;
    let conn = a
        .dial(cloud.local_addr, &b.fqdn, rd.path_id, Some(b.token))
        .await
        .unwrap();
    let accepted = tokio::time::timeout(T, b.accepted.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        accepted.remote_address(),
        cloud.local_addr,
        "b sees the TRS, not a"
    );
    for _ in 0..20 {
        datagrams_flow(&conn, &accepted).await;
    }
    let forwarded = trs.counters().forwarded_packets.load(Ordering::Relaxed);
    assert!(forwarded >= 40, "forwarded {forwarded}");

    // Byte identity: every datagram a sent to the TRS for b's token reached b unchanged.
    let for_b: Vec<Vec<u8>> = a
        .rec
        .sent
        .lock()
        .unwrap()
        .iter()
        .filter(|(to, d)| {
            *to == cloud.local_addr
                && cyphonic_services::trs::socket::relay_token_of(d) == Some(b.token)
        })
        .map(|(_, d)| d.clone())
        .collect();
    assert!(for_b.len() >= 20);
    let got: std::collections::HashSet<Vec<u8>> = b
        .rec
        .received
        .lock()
        .unwrap()
        .iter()
        .map(|(_, d)| d.clone())
        .collect();
    let missing = for_b.iter().filter(|d| !got.contains(*d)).count();
    assert!(
        missing <= 1,
        "{missing} of {} relayed datagrams not found byte-identical at b",
        for_b.len()
    );

    // c is authenticated but not bound to b: nothing is forwarded.
    c.connect_trs(cloud.local_addr).await;
    let refused_before = trs.counters().refused();
    let r = c
        .dial(cloud.local_addr, &b.fqdn, rd.path_id, Some(b.token))
        .await;
    assert!(r.is_err(), "an unbound node used the relay");
    assert!(trs.counters().dropped_not_bound.load(Ordering::Relaxed) > 0);

    // An unauthenticated sender (no control connection) gets nothing forwarded.
    let stranger = std::net::UdpSocket::bind("127.0.0.9:0").unwrap();
    let mut pkt = vec![0x40u8];
    pkt.extend_from_slice(b.token.as_bytes());
    pkt.extend_from_slice(&[7u8; 40]);
    stranger.send_to(&pkt, cloud.local_addr).unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        trs.counters()
            .dropped_unknown_sender
            .load(Ordering::Relaxed)
            >= 1
    );
    assert!(trs.counters().refused() > refused_before);
}

#[tokio::test]
async fn location_update_and_finalization_reach_the_peer() {
    let (_t, dir, cloud) = fresh_cloud().await;
    let mut a = online(&cloud, &dir, "a", 1, None).await;
    let mut b = online(&cloud, &dir, "b", 2, None).await;
    assert_eq!(a.direction_to(&b).await.flag, Flag::Ok);
    let _ = b.pushes.recv().await;

    // b "moves": it re-registers reporting another address.
    b.report = Some("192.0.2.99:443".parse().unwrap());
    let reg = b.register().await;
    assert_eq!(reg.flag, Flag::Ok);
    let Body::RegistrationResponse(rr) = &reg.body else {
        panic!()
    };
    assert!(rr.nat);
    let push = tokio::time::timeout(T, a.pushes.recv())
        .await
        .unwrap()
        .unwrap();
    let Body::LocationUpdate(lu) = &push.body else {
        panic!("{push:?}")
    };
    assert_eq!(lu.path_id, cyphonic_proto::PathId::derive(&a.fqdn, &b.fqdn));
    assert_eq!(lu.real_ipv4, Some("192.0.2.99".parse().unwrap()));

    // b leaves: a hears of it, and b is no longer reachable.
    let fin = b
        .transact_nms(&Message::request(Body::Finalization).with_node_id(b.node_id))
        .await;
    assert_eq!(fin.flag, Flag::Ok);
    let push = tokio::time::timeout(T, a.pushes.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(push.body, Body::Finalization), "{push:?}");
    assert_eq!(a.direction_to(&b).await.flag, Flag::PeerUnreachable);
    let _ = NodeId::ZERO;
}

#[tokio::test]
async fn nms_directs_relayed_pairs_to_a_trs_in_another_process() {
    let t = tempfile::tempdir().unwrap();
    let dir = state_dir(&t);
    // The TRS alone, then AS+NMS told to use it (same deployment state).
    let mut trs_cfg = config(&dir, "127.0.0.1:0".parse().unwrap());
    trs_cfg.roles = vec![cyphonic_services::config::Role::Trs];
    let trs_cloud = Cloud::start(trs_cfg).await.unwrap();
    let trs = trs_cloud.trs.clone().unwrap();
    let mut cfg = config(&dir, "127.0.0.1:0".parse().unwrap());
    cfg.roles = vec![
        cyphonic_services::config::Role::As,
        cyphonic_services::config::Role::Nms,
    ];
    cfg.trs = vec![cyphonic_services::config::TrsPeer {
        ipv4: Some("127.0.0.1".parse().unwrap()),
        ipv6: None,
        port: trs_cloud.local_addr.port(),
    }];
    let cloud = Cloud::start(cfg).await.unwrap();
    assert!(cloud.trs.is_none());

    let a = online(&cloud, &dir, "a", 2, Some("192.0.2.10:443")).await;
    let mut b = online(&cloud, &dir, "b", 3, Some("198.51.100.10:443")).await;
    let r = a.direction_to(&b).await;
    assert_eq!(r.flag, Flag::Ok, "{r:?}");
    let Body::RouteDirectionToInitiator(rd) = &r.body else {
        panic!()
    };
    assert_eq!(rd.process_code, ProcessCode::ViaTrs);
    assert_eq!(rd.trs_port, trs_cloud.local_addr.port());
    assert_eq!(
        trs.binding_count(),
        1,
        "NMS bound the pair on the remote TRS"
    );

    a.connect_trs(trs_cloud.local_addr).await;
    let conn = a
        .dial(trs_cloud.local_addr, &b.fqdn, rd.path_id, Some(b.token))
        .await
        .unwrap();
    let accepted = tokio::time::timeout(T, b.accepted.recv())
        .await
        .unwrap()
        .unwrap();
    datagrams_flow(&conn, &accepted).await;
    assert!(trs.counters().forwarded_packets.load(Ordering::Relaxed) > 0);
}

/// The whole cloud on PostgreSQL: enroll, login, register, direct a pair, restart.
#[tokio::test]
async fn cloud_runs_on_postgresql() {
    let Ok(admin) = std::env::var("CYPHONIC_TEST_POSTGRES_URL") else {
        assert!(
            std::env::var("CI").is_err(),
            "CI must provide CYPHONIC_TEST_POSTGRES_URL"
        );
        eprintln!("CYPHONIC_TEST_POSTGRES_URL unset: skipping the PostgreSQL cloud test");
        return;
    };
    let db = format!("cloud_e2e_{}", std::process::id());
    let base = admin.rsplit_once('/').map(|(b, _)| b.to_owned()).unwrap();
    {
        use sqlx::Executor;
        let mut c = <sqlx::PgConnection as sqlx::Connection>::connect(&admin)
            .await
            .unwrap();
        c.execute(format!("DROP DATABASE IF EXISTS {db}").as_str())
            .await
            .unwrap();
        c.execute(format!("CREATE DATABASE {db}").as_str())
            .await
            .unwrap();
    }
    let t = tempfile::tempdir().unwrap();
    let dir = state_dir(&t);
    let mut cfg = config(&dir, "127.0.0.1:0".parse().unwrap());
    cfg.database_url = Some(format!("{base}/{db}"));
    let cloud = Cloud::start(cfg.clone()).await.unwrap();
    let a = online(&cloud, &dir, "a", 1, None).await;
    let b = online(&cloud, &dir, "b", 2, None).await;
    assert_eq!(a.direction_to(&b).await.flag, Flag::Ok);
    let before = cloud.store.device("a").await.unwrap();
    drop(cloud);
    let cloud = Cloud::start(cfg).await.unwrap();
    let after = cloud.store.device("a").await.unwrap();
    assert_eq!(
        (before.node_id, before.virtual_ipv4),
        (after.node_id, after.virtual_ipv4)
    );
    cloud.store.close().await;
    drop(cloud);
    use sqlx::Executor;
    let mut c = <sqlx::PgConnection as sqlx::Connection>::connect(&admin)
        .await
        .unwrap();
    let _ = c
        .execute(format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)").as_str())
        .await;
}
