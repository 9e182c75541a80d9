//! rustls configurations for mutual TLS between CYPHONIC parties (SPEC §3).
//!
//! Every config uses the ring provider explicitly (one crypto provider in the tree),
//! TLS 1.3 only. Servers verify client chains to the deployment CA against its CRL;
//! clients verify the server chain, the CRL, the server name, **and** that the server
//! certificate carries the role they expect (a node certificate can never pose as NMS,
//! and a peer connection needs a node certificate).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{
    CertificateDer, CertificateRevocationListDer, PrivateKeyDer, ServerName, UnixTime,
};

use crate::error::{PkiError, Result};
use crate::identity::{serial_hex, PeerIdentity, Role};

/// The one crypto provider of the project.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|source| PkiError::Read {
        path: path.to_owned(),
        source,
    })
}

fn corrupt(path: &Path, what: &'static str, reason: impl ToString) -> PkiError {
    PkiError::Corrupt {
        path: path.to_owned(),
        what,
        reason: reason.to_string(),
    }
}

/// A certificate chain and its private key.
pub struct Credentials {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

impl Clone for Credentials {
    fn clone(&self) -> Self {
        Credentials {
            chain: self.chain.clone(),
            key: self.key.clone_key(),
        }
    }
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("chain_len", &self.chain.len())
            .finish_non_exhaustive()
    }
}

impl Credentials {
    /// Load a PEM certificate chain and a PEM private key.
    pub fn load(cert: &Path, key: &Path) -> Result<Credentials> {
        let chain = CertificateDer::pem_slice_iter(&read(cert)?)
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| corrupt(cert, "PEM certificate chain", e))?;
        if chain.is_empty() {
            return Err(corrupt(
                cert,
                "PEM certificate chain",
                "no certificate in it",
            ));
        }
        let key_der = PrivateKeyDer::from_pem_slice(&read(key)?)
            .map_err(|e| corrupt(key, "PEM private key", e))?;
        Ok(Credentials {
            chain,
            key: key_der,
        })
    }

    /// A DER leaf certificate (as Enroll Response carries it) and a PEM key.
    pub fn from_der_and_key_pem(cert_der: Vec<u8>, key_pem: &str) -> Result<Credentials> {
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
            .map_err(|e| PkiError::BadCert(format!("private key is not valid PEM: {e}")))?;
        Ok(Credentials {
            chain: vec![CertificateDer::from(cert_der)],
            key,
        })
    }

    /// The identity in the leaf certificate.
    pub fn identity(&self) -> Result<PeerIdentity> {
        let leaf = self
            .chain
            .first()
            .ok_or_else(|| PkiError::BadCert("empty certificate chain".into()))?;
        PeerIdentity::from_der(leaf)
    }

    pub fn certified_key(&self) -> Result<Arc<CertifiedKey>> {
        Ok(Arc::new(CertifiedKey::from_der(
            self.chain.clone(),
            self.key.clone_key(),
            &provider(),
        )?))
    }
}

/// What a party trusts: the deployment CA and its current CRL.
#[derive(Clone, Debug)]
pub struct TrustAnchor {
    pub ca: CertificateDer<'static>,
    pub crls: Vec<CertificateRevocationListDer<'static>>,
}

impl TrustAnchor {
    /// Load the CA certificate (PEM) and, if given and present, the CRL (PEM).
    pub fn load(ca: &Path, crl: Option<&Path>) -> Result<TrustAnchor> {
        let ca_der = CertificateDer::from_pem_slice(&read(ca)?)
            .map_err(|e| corrupt(ca, "PEM CA certificate", e))?;
        let mut crls = Vec::new();
        if let Some(p) = crl {
            if p.exists() {
                let crl = CertificateRevocationListDer::from_pem_slice(&read(p)?)
                    .map_err(|e| corrupt(p, "PEM CRL", e))?;
                crls.push(crl);
            }
        }
        Ok(TrustAnchor { ca: ca_der, crls })
    }

    /// Trust a CA certificate given in DER (Enroll Response), without a CRL.
    pub fn from_ca_der(der: Vec<u8>) -> TrustAnchor {
        TrustAnchor {
            ca: CertificateDer::from(der),
            crls: Vec::new(),
        }
    }

    fn roots(&self) -> Result<Arc<RootCertStore>> {
        let mut roots = RootCertStore::empty();
        roots
            .add(self.ca.clone())
            .map_err(|e| PkiError::BadCert(format!("CA certificate unusable: {e}")))?;
        Ok(Arc::new(roots))
    }

    /// Serials (canonical hex) listed in the CRLs.
    pub fn revoked_serials(&self) -> Vec<String> {
        let mut out = Vec::new();
        for crl in &self.crls {
            if let Ok((_, parsed)) = x509_parser::parse_x509_crl(crl.as_ref()) {
                for r in parsed.iter_revoked_certificates() {
                    out.push(serial_hex(r.raw_serial()));
                }
            }
        }
        out
    }
}

/// Whether a server demands a client certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// Every client must present a valid certificate.
    Required,
    /// A client may come without one (only AS, for enrollment); one it presents is
    /// still fully verified.
    Optional,
}

/// Chooses the server certificate by SNI, for an endpoint carrying several
/// identities (an adapter's general nodes; a cloud process serving several roles).
#[derive(Debug, Default)]
pub struct SniResolver {
    by_name: HashMap<String, Arc<CertifiedKey>>,
    default: Option<Arc<CertifiedKey>>,
}

impl SniResolver {
    pub fn new() -> Self {
        Self::default()
    }

    /// Present `creds` to clients that ask for `name`. The first one added is also
    /// the default for clients that send no SNI.
    pub fn add(&mut self, name: &str, creds: &Credentials) -> Result<()> {
        let ck = creds.certified_key()?;
        if self.default.is_none() {
            self.default = Some(ck.clone());
        }
        self.by_name.insert(name.to_ascii_lowercase(), ck);
        Ok(())
    }

    pub fn remove(&mut self, name: &str) {
        self.by_name.remove(&name.to_ascii_lowercase());
    }

    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        match hello.server_name() {
            Some(n) => self.by_name.get(&n.to_ascii_lowercase()).cloned(),
            None => self.default.clone(),
        }
    }
}

fn alpn_list(alpn: &[&[u8]]) -> Vec<Vec<u8>> {
    alpn.iter().map(|a| a.to_vec()).collect()
}

/// A server configuration: certificate(s) from `resolver`, client certificates
/// verified to the CA with its CRL.
pub fn server_config(
    resolver: Arc<dyn ResolvesServerCert>,
    trust: &TrustAnchor,
    auth: ClientAuth,
    alpn: &[&[u8]],
) -> Result<rustls::ServerConfig> {
    let mut verifier = WebPkiClientVerifier::builder_with_provider(trust.roots()?, provider())
        .with_crls(trust.crls.clone())
        .only_check_end_entity_revocation();
    if auth == ClientAuth::Optional {
        verifier = verifier.allow_unauthenticated();
    }
    let verifier = verifier
        .build()
        .map_err(|e| PkiError::BadCert(format!("client verifier: {e}")))?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(resolver);
    cfg.alpn_protocols = alpn_list(alpn);
    Ok(cfg)
}

/// A server configuration with a single certificate.
pub fn server_config_single(
    creds: &Credentials,
    trust: &TrustAnchor,
    auth: ClientAuth,
    alpn: &[&[u8]],
) -> Result<rustls::ServerConfig> {
    let mut r = SniResolver::new();
    r.add("", creds)?;
    // Clients that send a name get the single certificate too.
    struct One(Arc<CertifiedKey>);
    impl std::fmt::Debug for One {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("One")
        }
    }
    impl ResolvesServerCert for One {
        fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
            Some(self.0.clone())
        }
    }
    server_config(Arc::new(One(creds.certified_key()?)), trust, auth, alpn)
}

/// Verifies the server chain (webpki, with CRL) and then its CYPHONIC role.
#[derive(Debug)]
struct RoleVerifier {
    inner: Arc<WebPkiServerVerifier>,
    role: Role,
}

impl ServerCertVerifier for RoleVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        let ok =
            self.inner
                .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)?;
        match PeerIdentity::from_der(end_entity) {
            Ok(id) if id.role == self.role => Ok(ok),
            Ok(id) => Err(rustls::Error::General(format!(
                "server certificate is for role {}, expected {}",
                id.role, self.role
            ))),
            Err(e) => Err(rustls::Error::General(e.to_string())),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// A client configuration: presents `creds` (None: no client certificate, for
/// enrollment), verifies the server to the CA with its CRL and requires the server
/// certificate's role to be `server_role`.
pub fn client_config(
    creds: Option<&Credentials>,
    trust: &TrustAnchor,
    server_role: Role,
    alpn: &[&[u8]],
) -> Result<rustls::ClientConfig> {
    let inner = WebPkiServerVerifier::builder_with_provider(trust.roots()?, provider())
        .with_crls(trust.crls.clone())
        .only_check_end_entity_revocation()
        .build()
        .map_err(|e| PkiError::BadCert(format!("server verifier: {e}")))?;
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(RoleVerifier {
            inner,
            role: server_role,
        }));
    let mut cfg = match creds {
        Some(c) => builder.with_client_auth_cert(c.chain.clone(), c.key.clone_key())?,
        None => builder.with_no_client_auth(),
    };
    cfg.alpn_protocols = alpn_list(alpn);
    Ok(cfg)
}
