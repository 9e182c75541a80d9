//! Mutual TLS over real QUIC handshakes on loopback (issue: pki tests).
//!
//! A refused *client* certificate shows on the client only after `connect()` returned
//! (TLS 1.3: the client finishes first), so every check here is made on the first
//! application message, never on the handshake alone.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use cyphonic_pki::quic::{self, ALPN_NMS};
use cyphonic_pki::{
    client_config, server_config_single, Ca, ClientAuth, Credentials, Reason, Role, TrustAnchor,
};
use cyphonic_proto::{Fqdn, RelayToken};
use time::OffsetDateTime;

fn fqdn(s: &str) -> Fqdn {
    Fqdn::new(s).unwrap()
}

struct Pki {
    _dir: tempfile::TempDir,
    ca: Ca,
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::init(&dir.path().join("ca"), &fqdn("cyphonic.internal"), 30).unwrap();
        Pki { _dir: dir, ca }
    }
    fn trust(&self) -> TrustAnchor {
        TrustAnchor::load(&self.ca.dir().join("ca.crt"), Some(&self.ca.crl_path())).unwrap()
    }
    fn service(&mut self, role: Role, name: &str) -> Credentials {
        let i = self
            .ca
            .issue_service(role, &[name.to_owned()], &[], 5)
            .unwrap();
        Credentials::from_der_and_key_pem(i.cert_der, i.key_pem.as_deref().unwrap()).unwrap()
    }
    fn node(&mut self, name: &str) -> (Credentials, String) {
        let i = self.ca.issue_node(&fqdn(name), None, 5).unwrap();
        let serial = i.serial.clone();
        (
            Credentials::from_der_and_key_pem(i.cert_der, i.key_pem.as_deref().unwrap()).unwrap(),
            serial,
        )
    }
}

/// A server that echoes one stream per connection.
fn echo_server(creds: &Credentials, trust: &TrustAnchor) -> (quinn::Endpoint, SocketAddr) {
    let tls = server_config_single(creds, trust, ClientAuth::Required, &[ALPN_NMS]).unwrap();
    let sc = quinn::ServerConfig::with_crypto(Arc::new(
        quinn::crypto::rustls::QuicServerConfig::try_from(tls).unwrap(),
    ));
    let sock = quic::wrap_socket(quic::bind_udp("127.0.0.1:0".parse().unwrap()).unwrap()).unwrap();
    let ep = quic::endpoint(sock, RelayToken::random(), Some(sc)).unwrap();
    let addr = ep.local_addr().unwrap();
    let server = ep.clone();
    tokio::spawn(async move {
        while let Some(inc) = server.accept().await {
            tokio::spawn(async move {
                let Ok(conn) = inc.await else { return };
                while let Ok((mut s, mut r)) = conn.accept_bi().await {
                    let buf = r.read_to_end(1024).await.unwrap_or_default();
                    let _ = s.write_all(&buf).await;
                    let _ = s.finish();
                }
            });
        }
    });
    (ep, addr)
}

/// Connect and exchange one message; Ok(echo) or Err(why).
async fn exchange(
    client: Option<&Credentials>,
    trust: &TrustAnchor,
    server_role: Role,
    addr: SocketAddr,
    name: &str,
) -> Result<Vec<u8>, String> {
    let tls = client_config(client, trust, server_role, &[ALPN_NMS]).unwrap();
    let cc = quinn::ClientConfig::new(Arc::new(
        quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap(),
    ));
    let sock = quic::wrap_socket(quic::bind_udp("127.0.0.1:0".parse().unwrap()).unwrap()).unwrap();
    let ep = quic::endpoint(sock, RelayToken::random(), None).unwrap();
    let work = async {
        let conn = ep
            .connect_with(cc, addr, name)
            .map_err(|e| e.to_string())?
            .await
            .map_err(|e| e.to_string())?;
        let (mut s, mut r) = conn.open_bi().await.map_err(|e| e.to_string())?;
        s.write_all(b"hello").await.map_err(|e| e.to_string())?;
        s.finish().map_err(|e| e.to_string())?;
        r.read_to_end(1024).await.map_err(|e| e.to_string())
    };
    tokio::time::timeout(Duration::from_secs(5), work)
        .await
        .unwrap_or_else(|_| Err("timeout".into()))
}

#[tokio::test]
async fn correctly_issued_pair_connects() {
    let mut pki = Pki::new();
    let nms = pki.service(Role::Nms, "nms.cyphonic.internal");
    let (node, _) = pki.node("n1.cyphonic.internal");
    let (_ep, addr) = echo_server(&nms, &pki.trust());
    let got = exchange(
        Some(&node),
        &pki.trust(),
        Role::Nms,
        addr,
        "nms.cyphonic.internal",
    )
    .await;
    assert_eq!(got.unwrap(), b"hello");
}

#[tokio::test]
async fn client_from_another_ca_is_refused() {
    let mut pki = Pki::new();
    let mut other = Pki::new();
    let nms = pki.service(Role::Nms, "nms.cyphonic.internal");
    let (stranger, _) = other.node("n1.cyphonic.internal");
    let (_ep, addr) = echo_server(&nms, &pki.trust());
    // The stranger trusts our CA (it knows the server), but its own cert is foreign.
    let got = exchange(
        Some(&stranger),
        &pki.trust(),
        Role::Nms,
        addr,
        "nms.cyphonic.internal",
    )
    .await;
    assert!(got.is_err(), "a foreign certificate got through: {got:?}");
}

#[tokio::test]
async fn client_without_certificate_is_refused_where_required() {
    let mut pki = Pki::new();
    let nms = pki.service(Role::Nms, "nms.cyphonic.internal");
    let (_ep, addr) = echo_server(&nms, &pki.trust());
    let got = exchange(None, &pki.trust(), Role::Nms, addr, "nms.cyphonic.internal").await;
    assert!(got.is_err(), "no certificate got through: {got:?}");
}

#[tokio::test]
async fn revoked_client_is_refused() {
    let mut pki = Pki::new();
    let nms = pki.service(Role::Nms, "nms.cyphonic.internal");
    let (node, serial) = pki.node("n1.cyphonic.internal");
    // Before revocation it works; the server then loads the new CRL.
    let (_ep, addr) = echo_server(&nms, &pki.trust());
    assert!(exchange(
        Some(&node),
        &pki.trust(),
        Role::Nms,
        addr,
        "nms.cyphonic.internal"
    )
    .await
    .is_ok());
    pki.ca.revoke(&serial, Reason::KeyCompromise).unwrap();
    let (_ep2, addr2) = echo_server(&nms, &pki.trust());
    let got = exchange(
        Some(&node),
        &pki.trust(),
        Role::Nms,
        addr2,
        "nms.cyphonic.internal",
    )
    .await;
    // The same certificate passed above: only the CRL differs.
    assert!(got.is_err(), "a revoked certificate got through");
}

#[tokio::test]
async fn expired_client_is_refused() {
    let mut pki = Pki::new();
    let nms = pki.service(Role::Nms, "nms.cyphonic.internal");
    let now = OffsetDateTime::now_utc();
    let i = pki
        .ca
        .issue_node_between(
            &fqdn("old.cyphonic.internal"),
            None,
            now - time::Duration::days(10),
            now - time::Duration::days(1),
        )
        .unwrap();
    let old = Credentials::from_der_and_key_pem(i.cert_der, i.key_pem.as_deref().unwrap()).unwrap();
    let (_ep, addr) = echo_server(&nms, &pki.trust());
    let got = exchange(
        Some(&old),
        &pki.trust(),
        Role::Nms,
        addr,
        "nms.cyphonic.internal",
    )
    .await;
    assert!(got.is_err(), "an expired certificate got through: {got:?}");
}

#[tokio::test]
async fn node_certificate_cannot_pose_as_a_service() {
    let mut pki = Pki::new();
    // A node serves with its own (valid) certificate under the NMS name it claims…
    let (rogue, _) = pki.node("nms.cyphonic.internal");
    let (client, _) = pki.node("n1.cyphonic.internal");
    let (_ep, addr) = echo_server(&rogue, &pki.trust());
    // …and a client that requires role NMS refuses it,
    let got = exchange(
        Some(&client),
        &pki.trust(),
        Role::Nms,
        addr,
        "nms.cyphonic.internal",
    )
    .await;
    let err = got.expect_err("a node certificate posed as NMS");
    assert!(err.contains("role"), "{err}");
    // while a client expecting a node accepts the same server.
    let ok = exchange(
        Some(&client),
        &pki.trust(),
        Role::Node,
        addr,
        "nms.cyphonic.internal",
    )
    .await;
    assert!(ok.is_ok(), "{ok:?}");
}

#[tokio::test]
async fn wrong_server_name_is_refused() {
    let mut pki = Pki::new();
    let nms = pki.service(Role::Nms, "nms.cyphonic.internal");
    let (node, _) = pki.node("n1.cyphonic.internal");
    let (_ep, addr) = echo_server(&nms, &pki.trust());
    let got = exchange(
        Some(&node),
        &pki.trust(),
        Role::Nms,
        addr,
        "as.cyphonic.internal",
    )
    .await;
    assert!(got.is_err());
}
