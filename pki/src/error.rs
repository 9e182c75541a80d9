//! Errors of the CA and the TLS layer, worded for the operator who reads them.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{0} holds no CA (no ca.crt/ca.key): create one with `cyphonic-ca init --dir {0}`")]
    NoCa(PathBuf),
    #[error("{0} already holds a CA: refusing to overwrite it (use another --dir)")]
    CaExists(PathBuf),
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0} already exists: refusing to overwrite a private key (remove it first, or choose another path)")]
    KeyExists(PathBuf),
    #[error("{path} is not a valid {what}: {reason}")]
    Corrupt {
        path: PathBuf,
        what: &'static str,
        reason: String,
    },
    #[error(
        "the CA certificate expired ({0}): create a new deployment CA with `cyphonic-ca init`"
    )]
    CaExpired(String),
    #[error("certificate signing request refused: {0}")]
    BadCsr(String),
    #[error("{0}")]
    Fqdn(#[from] cyphonic_proto::FqdnError),
    #[error(
        "no certificate with serial {0} was issued by this CA: list them with `cyphonic-ca list`"
    )]
    NoSuchSerial(String),
    #[error("invalid serial {0:?}: expected hexadecimal digits")]
    BadSerial(String),
    #[error("invalid lifetime: {0}")]
    BadLifetime(String),
    #[error("a {role} certificate needs at least one DNS name or IP address")]
    NoNames { role: &'static str },
    #[error("certificate generation failed: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("TLS configuration failed: {0}")]
    Tls(#[from] rustls::Error),
    #[error("certificate is not usable: {0}")]
    BadCert(String),
}

pub type Result<T, E = PkiError> = std::result::Result<T, E>;
