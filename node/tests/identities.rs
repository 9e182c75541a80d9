//! One endpoint, several identities (SPEC §3, §9): an adapter carries one identity
//! per general node on one UDP socket, and a dialing peer sees the certificate of the
//! identity its SNI names. Real QUIC and certificates from a real CA, on loopback.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use cyphonic_node::endpoint::{AcceptPeer, NodeEndpoint, TransportSettings};
use cyphonic_pki::{Ca, Credentials, PeerIdentity, TrustAnchor};
use cyphonic_proto::{Fqdn, NodeId};

#[derive(Default)]
struct Record(Mutex<Vec<String>>);

struct Tag(&'static str, Arc<Record>);

impl AcceptPeer for Tag {
    fn accepted(&self, conn: quinn::Connection) {
        self.1 .0.lock().unwrap().push(self.0.to_owned());
        // Keep the connection open until the dialer is done with it.
        tokio::spawn(async move {
            let _ = tokio::time::timeout(Duration::from_secs(5), conn.closed()).await;
        });
    }
}

fn creds(ca: &mut Ca, name: &str) -> (Fqdn, Credentials) {
    let fqdn = Fqdn::new(&format!("{name}.cyphonic.internal")).unwrap();
    // Shorter than the CA's 30 days: a certificate may not outlive its CA, and one
    // issued for 30 days a second after the CA was made would.
    let issued = ca.issue_node(&fqdn, Some(NodeId::random()), 5).unwrap();
    let c = Credentials::from_der_and_key_pem(issued.cert_der, issued.key_pem.as_deref().unwrap())
        .unwrap();
    (fqdn, c)
}

fn server_name(conn: &quinn::Connection) -> Fqdn {
    let certs = conn
        .peer_identity()
        .unwrap()
        .downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
        .unwrap();
    PeerIdentity::from_der(&certs[0]).unwrap().name
}

#[tokio::test]
async fn one_endpoint_serves_each_identity_by_sni() {
    let dir = tempfile::tempdir().unwrap();
    let domain = Fqdn::new("cyphonic.internal").unwrap();
    let mut ca = Ca::init(&dir.path().join("ca"), &domain, 30).unwrap();
    let trust = TrustAnchor::from_ca_der(ca.cert_der().to_vec());
    let (cam1, cam1_creds) = creds(&mut ca, "cam1");
    let (cam2, cam2_creds) = creds(&mut ca, "cam2");
    let (dialer, dialer_creds) = creds(&mut ca, "laptop");
    let (ghost, _) = creds(&mut ca, "ghost");

    let t = TransportSettings::default();
    let adapter = NodeEndpoint::bind("127.0.0.1:0".parse().unwrap(), trust.clone(), t).unwrap();
    let seen = Arc::new(Record::default());
    adapter
        .add_identity(&cam1, cam1_creds, Arc::new(Tag("cam1", seen.clone())))
        .unwrap();
    adapter
        .add_identity(&cam2, cam2_creds, Arc::new(Tag("cam2", seen.clone())))
        .unwrap();
    let laptop = NodeEndpoint::bind("127.0.0.1:0".parse().unwrap(), trust, t).unwrap();
    let at = adapter.local_addr();

    let c1 = laptop
        .dial_peer(&dialer_creds, at, &cam1, None)
        .await
        .unwrap();
    assert_eq!(server_name(&c1), cam1, "SNI cam1 gets cam1's certificate");
    let c2 = laptop
        .dial_peer(&dialer_creds, at, &cam2, None)
        .await
        .unwrap();
    assert_eq!(server_name(&c2), cam2, "SNI cam2 gets cam2's certificate");
    assert_ne!(c1.stable_id(), c2.stable_id());
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        *seen.0.lock().unwrap(),
        vec!["cam1".to_string(), "cam2".to_string()],
        "each identity's handler got its own connection"
    );

    // A name the endpoint does not carry: no certificate, no connection.
    let r = tokio::time::timeout(
        Duration::from_secs(5),
        laptop.dial_peer(&dialer_creds, at, &ghost, None),
    )
    .await
    .expect("refused promptly");
    assert!(r.is_err(), "no identity for {ghost}");

    // Removing an identity stops serving it.
    adapter.remove_identity(&cam2).unwrap();
    let r = laptop.dial_peer(&dialer_creds, at, &cam2, None).await;
    assert!(r.is_err(), "cam2 is no longer carried");
    let _ = dialer;
}
