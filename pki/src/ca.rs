//! The built-in CA of a deployment, kept in one directory.
//!
//! ```text
//! <dir>/ca.crt      CA certificate (PEM)
//! <dir>/ca.key      CA private key (PEM, mode 0600)
//! <dir>/ca.json     overlay domain and creation time
//! <dir>/index.json  every certificate issued: serial, role, names, validity, revocation
//! <dir>/crl.pem     the current CRL, re-signed on every revocation
//! <dir>/lock        taken (flock) while the index or CRL is changed
//! ```
//!
//! Serials are 16 random bytes (top bit clear), checked against the index, so no
//! serial is ever reused (rcgen would otherwise derive it from the public key).
//! Writes go to a temporary file and are renamed into place.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use cyphonic_proto::{Fqdn, NodeId};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams,
    CertificateSigningRequestParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose, RevocationReason, RevokedCertParams, SanType,
    SerialNumber,
};
use rustls_pki_types::{CertificateDer, CertificateSigningRequestDer};
use serde::{Deserialize, Serialize};
use time::{Duration, OffsetDateTime};

use crate::error::{PkiError, Result};
use crate::identity::{node_id_uri, parse_serial, serial_hex, Role};

/// Lifetime of a CRL; services accept an older one too (the CA re-signs it on every
/// revocation), so this only tells other verifiers when to look again.
const CRL_DAYS: i64 = 30;

/// A certificate the CA just issued.
#[derive(Clone)]
pub struct IssuedCert {
    pub serial: String,
    pub cert_der: Vec<u8>,
    pub cert_pem: String,
    /// The private key, when the CA generated it (`issue_*`); None for `sign_csr`.
    pub key_pem: Option<String>,
    pub not_after: i64,
}

impl std::fmt::Debug for IssuedCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedCert")
            .field("serial", &self.serial)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

/// One line of the CA's index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IssuedRecord {
    pub serial: String,
    pub role: Role,
    pub names: Vec<String>,
    pub node_id: Option<NodeId>,
    pub not_before: i64,
    pub not_after: i64,
    pub revoked_at: Option<i64>,
    pub reason: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
struct CaMeta {
    domain: Fqdn,
    created_at: i64,
}

/// Why a certificate is revoked (RFC 5280 reason codes an operator uses).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    Unspecified,
    KeyCompromise,
    Superseded,
    CessationOfOperation,
}

impl std::str::FromStr for Reason {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "unspecified" => Ok(Reason::Unspecified),
            "keyCompromise" | "key-compromise" => Ok(Reason::KeyCompromise),
            "superseded" => Ok(Reason::Superseded),
            "cessationOfOperation" | "cessation-of-operation" => Ok(Reason::CessationOfOperation),
            _ => Err(format!(
                "unknown reason {s:?}: expected unspecified, keyCompromise, superseded or \
                 cessationOfOperation"
            )),
        }
    }
}

impl Reason {
    fn name(self) -> &'static str {
        match self {
            Reason::Unspecified => "unspecified",
            Reason::KeyCompromise => "keyCompromise",
            Reason::Superseded => "superseded",
            Reason::CessationOfOperation => "cessationOfOperation",
        }
    }
    fn code(name: &str) -> Option<RevocationReason> {
        match name {
            "keyCompromise" => Some(RevocationReason::KeyCompromise),
            "superseded" => Some(RevocationReason::Superseded),
            "cessationOfOperation" => Some(RevocationReason::CessationOfOperation),
            _ => Some(RevocationReason::Unspecified),
        }
    }
}

/// What goes into one end-entity certificate.
struct LeafSpec<'a> {
    role: Role,
    dns: &'a [String],
    ips: &'a [IpAddr],
    node_id: Option<NodeId>,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
}

/// The deployment CA.
pub struct Ca {
    dir: PathBuf,
    domain: Fqdn,
    cert_der: CertificateDer<'static>,
    cert_pem: String,
    key: KeyPair,
    not_after: i64,
}

fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|source| PkiError::Read {
        path: path.to_owned(),
        source,
    })
}

fn write_err(path: &Path) -> impl FnOnce(std::io::Error) -> PkiError + '_ {
    move |source| PkiError::Write {
        path: path.to_owned(),
        source,
    }
}

/// Write a file atomically (temporary file + rename) with the given mode.
pub(crate) fn write_atomic(path: &Path, data: &[u8], mode: u32) -> Result<()> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)
            .map_err(write_err(&tmp))?;
        f.write_all(data).map_err(write_err(&tmp))?;
        f.sync_all().map_err(write_err(&tmp))?;
    }
    std::fs::rename(&tmp, path).map_err(write_err(path))
}

/// Write a private key with mode 0600; never overwrites an existing file.
pub fn write_private_key(path: &Path, pem: &str) -> Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                PkiError::KeyExists(path.to_owned())
            } else {
                PkiError::Write {
                    path: path.to_owned(),
                    source: e,
                }
            }
        })?;
    f.write_all(pem.as_bytes()).map_err(write_err(path))
}

fn corrupt(path: &Path, what: &'static str, reason: impl ToString) -> PkiError {
    PkiError::Corrupt {
        path: path.to_owned(),
        what,
        reason: reason.to_string(),
    }
}

/// Parse and verify a CSR (structure and self-signature). Nothing it requests is
/// used except its public key.
pub fn check_csr(csr_der: &[u8]) -> Result<()> {
    parse_csr(csr_der).map(|_| ())
}

fn parse_csr(csr_der: &[u8]) -> Result<CertificateSigningRequestParams> {
    let der = CertificateSigningRequestDer::from(csr_der.to_vec());
    CertificateSigningRequestParams::from_der(&der).map_err(|e| PkiError::BadCsr(e.to_string()))
}

/// Read a CSR file in PEM or DER.
pub fn csr_der_from_file_bytes(bytes: &[u8]) -> Result<Vec<u8>> {
    use rustls_pki_types::pem::PemObject;
    if bytes.starts_with(b"-----") {
        CertificateSigningRequestDer::from_pem_slice(bytes)
            .map(|d| d.as_ref().to_vec())
            .map_err(|e| PkiError::BadCsr(format!("not a PEM certificate request: {e}")))
    } else {
        Ok(bytes.to_vec())
    }
}

/// A node's side of enrollment: a fresh key (never leaves the host) and a CSR for
/// `fqdn`. Returns (CSR DER, private key PEM).
pub fn generate_csr(fqdn: &Fqdn) -> Result<(Vec<u8>, String)> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(vec![fqdn.to_string()])?;
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, fqdn.as_str());
    let csr = params.serialize_request(&key)?;
    Ok((csr.der().as_ref().to_vec(), key.serialize_pem()))
}

impl Ca {
    fn paths(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
        (dir.join("ca.crt"), dir.join("ca.key"), dir.join("ca.json"))
    }

    /// Create a CA for `domain` in `dir` (created if missing). Refuses to touch a
    /// directory that already holds a CA.
    pub fn init(dir: &Path, domain: &Fqdn, days: u32) -> Result<Ca> {
        if days == 0 {
            return Err(PkiError::BadLifetime("a CA needs at least one day".into()));
        }
        let (crt, key_path, meta) = Self::paths(dir);
        if crt.exists() || key_path.exists() {
            return Err(PkiError::CaExists(dir.to_owned()));
        }
        std::fs::create_dir_all(dir).map_err(write_err(dir))?;
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, format!("CYPHONIC CA {domain}"));
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.serial_number = Some(random_serial());
        let start = now() - Duration::minutes(5);
        params.not_before = start;
        params.not_after = start + Duration::days(i64::from(days));
        let cert = params.self_signed(&key)?;
        write_private_key(&key_path, &key.serialize_pem())?;
        write_atomic(&crt, cert.pem().as_bytes(), 0o644)?;
        let m = CaMeta {
            domain: domain.clone(),
            created_at: now().unix_timestamp(),
        };
        let json = serde_json::to_vec_pretty(&m).map_err(|e| corrupt(&meta, "CA metadata", e))?;
        write_atomic(&meta, &json, 0o644)?;
        write_atomic(&dir.join("index.json"), b"[]\n", 0o644)?;
        let ca = Ca::open(dir)?;
        ca.write_crl(&[])?;
        Ok(ca)
    }

    /// Open the CA in `dir`.
    pub fn open(dir: &Path) -> Result<Ca> {
        let (crt, key_path, meta) = Self::paths(dir);
        if !crt.exists() || !key_path.exists() {
            return Err(PkiError::NoCa(dir.to_owned()));
        }
        use rustls_pki_types::pem::PemObject;
        let cert_bytes = read(&crt)?;
        let cert_der = CertificateDer::from_pem_slice(&cert_bytes)
            .map_err(|e| corrupt(&crt, "PEM certificate", e))?;
        let cert_pem =
            String::from_utf8(cert_bytes).map_err(|e| corrupt(&crt, "PEM certificate", e))?;
        let key_text = String::from_utf8(read(&key_path)?)
            .map_err(|e| corrupt(&key_path, "PEM private key", e))?;
        let key =
            KeyPair::from_pem(&key_text).map_err(|e| corrupt(&key_path, "PEM private key", e))?;
        let m: CaMeta = serde_json::from_slice(&read(&meta)?)
            .map_err(|e| corrupt(&meta, "CA metadata file", e))?;
        let (_, parsed) = x509_parser::parse_x509_certificate(cert_der.as_ref())
            .map_err(|e| corrupt(&crt, "X.509 certificate", e))?;
        let not_after = parsed.validity().not_after.timestamp();
        // The key must belong to the certificate.
        if parsed.public_key().subject_public_key.data.as_ref()
            != rcgen::PublicKeyData::der_bytes(&key)
        {
            return Err(corrupt(&key_path, "CA key", "it does not match ca.crt"));
        }
        if not_after <= now().unix_timestamp() {
            return Err(PkiError::CaExpired(format!(
                "{} expired at unix time {not_after}",
                crt.display()
            )));
        }
        Ok(Ca {
            dir: dir.to_owned(),
            domain: m.domain,
            cert_der,
            cert_pem,
            key,
            not_after,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn domain(&self) -> &Fqdn {
        &self.domain
    }

    pub fn cert_der(&self) -> &[u8] {
        self.cert_der.as_ref()
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    fn issuer(&self) -> Result<Issuer<'static, &KeyPair>> {
        Ok(Issuer::from_ca_cert_der(&self.cert_der, &self.key)?)
    }

    fn lock(&self) -> Result<File> {
        let path = self.dir.join("lock");
        let f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(write_err(&path))?;
        f.lock().map_err(write_err(&path))?;
        Ok(f)
    }

    fn index_path(&self) -> PathBuf {
        self.dir.join("index.json")
    }

    fn read_index(&self) -> Result<Vec<IssuedRecord>> {
        let p = self.index_path();
        if !p.exists() {
            return Ok(Vec::new());
        }
        serde_json::from_slice(&read(&p)?).map_err(|e| corrupt(&p, "certificate index", e))
    }

    fn write_index(&self, index: &[IssuedRecord]) -> Result<()> {
        let p = self.index_path();
        let json =
            serde_json::to_vec_pretty(index).map_err(|e| corrupt(&p, "certificate index", e))?;
        write_atomic(&p, &json, 0o644)
    }

    /// Every certificate issued, oldest first.
    pub fn list(&self) -> Result<Vec<IssuedRecord>> {
        self.read_index()
    }

    pub fn show(&self, serial: &str) -> Result<IssuedRecord> {
        let serial = parse_serial(serial)?;
        self.read_index()?
            .into_iter()
            .find(|r| r.serial == serial)
            .ok_or(PkiError::NoSuchSerial(serial))
    }

    fn leaf_params(&self, spec: &LeafSpec<'_>, serial: SerialNumber) -> Result<CertificateParams> {
        let LeafSpec {
            role,
            dns,
            ips,
            node_id,
            not_before,
            not_after,
        } = *spec;
        if dns.is_empty() {
            return Err(PkiError::NoNames { role: role.name() });
        }
        if not_after <= not_before {
            return Err(PkiError::BadLifetime(
                "not_after must be after not_before".into(),
            ));
        }
        if not_after.unix_timestamp() > self.not_after {
            return Err(PkiError::BadLifetime(format!(
                "the certificate would outlive the CA (expires at unix time {}): ask for fewer days",
                self.not_after
            )));
        }
        let mut p = CertificateParams::default();
        p.distinguished_name = DistinguishedName::new();
        p.distinguished_name
            .push(DnType::CommonName, dns[0].as_str());
        for d in dns {
            let d = Fqdn::new(d)?;
            p.subject_alt_names
                .push(SanType::DnsName(d.to_string().try_into()?));
        }
        for ip in ips {
            p.subject_alt_names.push(SanType::IpAddress(*ip));
        }
        p.subject_alt_names
            .push(SanType::URI(role.uri().try_into()?));
        if let Some(id) = node_id {
            p.subject_alt_names
                .push(SanType::URI(node_id_uri(id).try_into()?));
        }
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        p.use_authority_key_identifier_extension = true;
        p.key_identifier_method = KeyIdMethod::Sha256;
        p.serial_number = Some(serial);
        p.not_before = not_before;
        p.not_after = not_after;
        Ok(p)
    }

    fn validity(days: u32) -> Result<(OffsetDateTime, OffsetDateTime)> {
        if days == 0 {
            return Err(PkiError::BadLifetime("at least one day".into()));
        }
        let start = now() - Duration::minutes(5);
        Ok((start, start + Duration::days(i64::from(days))))
    }

    /// Issue with a fresh key (the CA generates it) or for a CSR's public key.
    fn issue(
        &mut self,
        spec: LeafSpec<'_>,
        csr: Option<CertificateSigningRequestParams>,
    ) -> Result<IssuedCert> {
        let _lock = self.lock()?;
        let mut index = self.read_index()?;
        let serial = loop {
            let s = random_serial();
            if !index.iter().any(|r| r.serial == serial_hex(&s.to_bytes())) {
                break s;
            }
        };
        let serial_text = serial_hex(&serial.to_bytes());
        let params = self.leaf_params(&spec, serial)?;
        let issuer = self.issuer()?;
        let (cert, key_pem) = match csr {
            Some(mut csrp) => {
                // The CA decides everything but the public key.
                csrp.params = params;
                (csrp.signed_by(&issuer)?, None)
            }
            None => {
                let key = KeyPair::generate()?;
                (params.signed_by(&key, &issuer)?, Some(key.serialize_pem()))
            }
        };
        index.push(IssuedRecord {
            serial: serial_text.clone(),
            role: spec.role,
            names: spec.dns.to_vec(),
            node_id: spec.node_id,
            not_before: spec.not_before.unix_timestamp(),
            not_after: spec.not_after.unix_timestamp(),
            revoked_at: None,
            reason: None,
        });
        self.write_index(&index)?;
        Ok(IssuedCert {
            serial: serial_text,
            cert_der: cert.der().as_ref().to_vec(),
            cert_pem: cert.pem(),
            key_pem,
            not_after: spec.not_after.unix_timestamp(),
        })
    }

    /// A service certificate (AS, NMS or TRS) with a fresh key.
    pub fn issue_service(
        &mut self,
        role: Role,
        dns: &[String],
        ips: &[IpAddr],
        days: u32,
    ) -> Result<IssuedCert> {
        if role == Role::Node {
            return Err(PkiError::BadCert(
                "use issue_node (or `--role node --fqdn`) for node certificates".into(),
            ));
        }
        let (not_before, not_after) = Self::validity(days)?;
        self.issue(
            LeafSpec {
                role,
                dns,
                ips,
                node_id: None,
                not_before,
                not_after,
            },
            None,
        )
    }

    /// A node certificate with a key the CA generates (for operators; enrollment
    /// uses [`Ca::sign_csr`] so the key never leaves the node).
    pub fn issue_node(
        &mut self,
        fqdn: &Fqdn,
        node_id: Option<NodeId>,
        days: u32,
    ) -> Result<IssuedCert> {
        let (a, b) = Self::validity(days)?;
        self.issue_node_between(fqdn, node_id, a, b)
    }

    /// A node certificate with an explicit validity window (backdated certificates
    /// for tests of expiry, or a planned rollover).
    pub fn issue_node_between(
        &mut self,
        fqdn: &Fqdn,
        node_id: Option<NodeId>,
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    ) -> Result<IssuedCert> {
        fqdn.require_below(&self.domain)?;
        self.issue(
            Self::node_spec(&[fqdn.to_string()], node_id, not_before, not_after),
            None,
        )
    }

    /// Sign a node's CSR: SAN = `fqdn` (which must be below the overlay domain),
    /// role node, `node_id` if given, `days` of validity. Nothing the CSR asks for
    /// is used but its public key; its signature is verified.
    pub fn sign_csr(
        &mut self,
        csr_der: &[u8],
        fqdn: &Fqdn,
        node_id: Option<NodeId>,
        days: u32,
    ) -> Result<IssuedCert> {
        fqdn.require_below(&self.domain)?;
        let csr = parse_csr(csr_der)?;
        let (a, b) = Self::validity(days)?;
        self.issue(
            Self::node_spec(&[fqdn.to_string()], node_id, a, b),
            Some(csr),
        )
    }

    fn node_spec(
        dns: &[String],
        node_id: Option<NodeId>,
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    ) -> LeafSpec<'_> {
        LeafSpec {
            role: Role::Node,
            dns,
            ips: &[],
            node_id,
            not_before,
            not_after,
        }
    }

    /// Revoke a certificate and re-sign the CRL.
    pub fn revoke(&mut self, serial: &str, reason: Reason) -> Result<IssuedRecord> {
        let serial = parse_serial(serial)?;
        let _lock = self.lock()?;
        let mut index = self.read_index()?;
        let rec = index
            .iter_mut()
            .find(|r| r.serial == serial)
            .ok_or_else(|| PkiError::NoSuchSerial(serial.clone()))?;
        if rec.revoked_at.is_none() {
            rec.revoked_at = Some(now().unix_timestamp());
            rec.reason = Some(reason.name().to_owned());
        }
        let out = rec.clone();
        self.write_index(&index)?;
        self.write_crl(&index)?;
        Ok(out)
    }

    /// Revoke unless already revoked (idempotent; for the cloud's device revoke).
    pub fn revoke_if_not(&mut self, serial: &str) -> Result<()> {
        self.revoke(serial, Reason::CessationOfOperation)
            .map(|_| ())
    }

    /// Re-sign and write the CRL from the index.
    pub fn refresh_crl(&self) -> Result<()> {
        let _lock = self.lock()?;
        let index = self.read_index()?;
        self.write_crl(&index)
    }

    pub fn crl_path(&self) -> PathBuf {
        self.dir.join("crl.pem")
    }

    fn write_crl(&self, index: &[IssuedRecord]) -> Result<()> {
        let t = now();
        let mut revoked = Vec::new();
        for r in index {
            let Some(at) = r.revoked_at else { continue };
            let bytes = hex_bytes(&r.serial)
                .ok_or_else(|| corrupt(&self.index_path(), "certificate index", "bad serial"))?;
            revoked.push(RevokedCertParams {
                serial_number: SerialNumber::from_slice(&bytes),
                revocation_time: OffsetDateTime::from_unix_timestamp(at).unwrap_or(t),
                reason_code: r.reason.as_deref().and_then(Reason::code),
                invalidity_date: None,
            });
        }
        let params = CertificateRevocationListParams {
            this_update: t - Duration::minutes(1),
            next_update: t + Duration::days(CRL_DAYS),
            crl_number: SerialNumber::from_slice(&t.unix_timestamp_nanos().to_be_bytes()[4..]),
            issuing_distribution_point: None,
            revoked_certs: revoked,
            key_identifier_method: KeyIdMethod::Sha256,
        };
        let crl = params.signed_by(&self.issuer()?)?;
        write_atomic(&self.crl_path(), crl.pem()?.as_bytes(), 0o644)
    }
}

fn hex_bytes(s: &str) -> Option<Vec<u8>> {
    let padded = if s.len() % 2 == 1 {
        format!("0{s}")
    } else {
        s.to_owned()
    };
    (0..padded.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(padded.get(i..i + 2)?, 16).ok())
        .collect()
}

fn random_serial() -> SerialNumber {
    let mut b: [u8; 16] = rand::random();
    b[0] &= 0x7f;
    if b[0] == 0 {
        b[0] = 1;
    }
    SerialNumber::from_slice(&b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn domain() -> Fqdn {
        Fqdn::new("cyphonic.internal").unwrap()
    }

    #[test]
    fn hex_round_trip() {
        assert_eq!(hex_bytes("abc").unwrap(), vec![0x0a, 0xbc]);
        assert_eq!(serial_hex(&hex_bytes("7f01").unwrap()), "7f01");
    }

    #[test]
    fn csr_overrides_requested_names_and_ca_flag() {
        let dir = tempfile::tempdir().unwrap();
        let mut ca = Ca::init(dir.path(), &domain(), 30).unwrap();
        // A CSR asking for another name and CA rights.
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(vec!["evil.other".to_string()]).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let csr = p.serialize_request(&key).unwrap();
        let fqdn = Fqdn::new("n1.cyphonic.internal").unwrap();
        let id = NodeId::random();
        let issued = ca.sign_csr(csr.der(), &fqdn, Some(id), 10).unwrap();
        let ident =
            crate::PeerIdentity::from_der(&CertificateDer::from(issued.cert_der.clone())).unwrap();
        assert_eq!(ident.name, fqdn);
        assert_eq!(ident.dns_names, vec![fqdn.to_string()]);
        assert_eq!(ident.role, Role::Node);
        assert_eq!(ident.node_id, Some(id));
        let (_, c) = x509_parser::parse_x509_certificate(&issued.cert_der).unwrap();
        assert!(!c.is_ca());
        assert!(issued.key_pem.is_none());
    }

    #[test]
    fn bad_inputs_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut ca = Ca::init(dir.path(), &domain(), 30).unwrap();
        assert!(matches!(
            ca.sign_csr(b"junk", &Fqdn::new("a.cyphonic.internal").unwrap(), None, 1),
            Err(PkiError::BadCsr(_))
        ));
        let (csr, _) = generate_csr(&Fqdn::new("a.other").unwrap()).unwrap();
        assert!(matches!(
            ca.sign_csr(&csr, &Fqdn::new("a.other").unwrap(), None, 1),
            Err(PkiError::Fqdn(_))
        ));
        assert!(matches!(
            ca.issue_node(&Fqdn::new("a.cyphonic.internal").unwrap(), None, 400),
            Err(PkiError::BadLifetime(_))
        ));
        assert!(matches!(
            Ca::init(dir.path(), &domain(), 30),
            Err(PkiError::CaExists(_))
        ));
        assert!(matches!(
            Ca::open(&dir.path().join("none")),
            Err(PkiError::NoCa(_))
        ));
        assert!(matches!(
            ca.revoke("abcd", Reason::Superseded),
            Err(PkiError::NoSuchSerial(_))
        ));
    }

    #[test]
    fn serials_never_repeat_even_for_the_same_key() {
        let dir = tempfile::tempdir().unwrap();
        let mut ca = Ca::init(dir.path(), &domain(), 30).unwrap();
        let fqdn = Fqdn::new("n1.cyphonic.internal").unwrap();
        let (csr, _) = generate_csr(&fqdn).unwrap();
        let mut seen = std::collections::HashSet::new();
        for _ in 0..20 {
            assert!(seen.insert(ca.sign_csr(&csr, &fqdn, None, 5).unwrap().serial));
        }
        assert_eq!(ca.list().unwrap().len(), 20);
    }
}
