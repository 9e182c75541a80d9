//! What can go wrong in the store, in words an operator can act on.

use std::fmt;

use cyphonic_proto::Fqdn;

use super::device::{DeviceId, MacAddr};
use super::UnixTime;

/// Every failure of a [`Store`](super::Store) operation.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "database URL {0:?} is not supported: use sqlite://PATH (a file, created if missing) \
         or postgres://USER@HOST:PORT/DATABASE"
    )]
    UnsupportedUrl(String),
    #[error("cannot open the store {url}: {source}")]
    Open {
        /// The URL with any password replaced by `***`.
        url: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("cannot bring the store's schema up to date: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error(
        "the store holds a {what} it cannot read ({value:?}); was the database edited by hand?"
    )]
    Corrupt { what: &'static str, value: String },

    #[error("the deployment settings are not initialised: start the cloud once (it creates them)")]
    NotInitialised,
    #[error("invalid deployment setting: {0}")]
    InvalidSetting(String),
    #[error("{}", mismatch_message(.0))]
    DeploymentMismatch(Vec<SettingDifference>),

    #[error("invalid device name {name:?}: {reason}")]
    InvalidDeviceId { name: String, reason: String },
    #[error("invalid MAC address {0:?}: expected six hexadecimal octets like aa:bb:cc:dd:ee:ff")]
    InvalidMac(String),
    #[error("device {0} already exists")]
    DeviceExists(DeviceId),
    #[error("FQDN {0} is already taken by another device")]
    FqdnTaken(Fqdn),
    #[error("MAC address {mac} already belongs to general node {device}")]
    MacTaken { mac: MacAddr, device: DeviceId },
    #[error("no device named {0}: list them with `cyphonic-cloud device list`")]
    NoSuchDevice(String),
    #[error(
        "adapter {0} is not a known node: add the adapter as a device (kind node) before its \
         general nodes"
    )]
    NoSuchAdapter(Fqdn),
    #[error(
        "adapter {adapter} still carries general nodes {}: remove them first",
        general_nodes.join(", ")
    )]
    AdapterInUse {
        adapter: DeviceId,
        general_nodes: Vec<String>,
    },
    #[error("device {0} is revoked: add it again under a new name, or remove it first")]
    DeviceRevoked(DeviceId),
    #[error(
        "the virtual {family} prefix {prefix} is full ({capacity} addresses, all allocated): \
         remove unused devices"
    )]
    PrefixFull {
        family: &'static str,
        prefix: String,
        capacity: u128,
    },
    #[error(
        "could not allocate free virtual addresses after {0} attempts (other instances \
         allocating at the same time?): try again"
    )]
    AllocationContention(u32),

    #[error("enrollment refused: {0}")]
    Token(#[from] TokenError),

    #[error("invalid certificate serial {0:?}: expected hexadecimal digits")]
    InvalidSerial(String),
    #[error("certificate serial {0} is already recorded")]
    DuplicateSerial(String),
    #[error("no certificate with serial {0}")]
    NoSuchCertificate(String),
}

/// Why a one-time enrollment token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("unknown enrollment token: ask the operator for a new one (`cyphonic-cloud device token <name>`)")]
    Unknown,
    #[error("the enrollment token of {device} was already used: ask the operator for a new one")]
    AlreadyUsed { device: DeviceId },
    #[error(
        "the enrollment token of {device} expired at {expired_at} (unix time): ask the operator \
         for a new one"
    )]
    Expired {
        device: DeviceId,
        expired_at: UnixTime,
    },
    #[error("the enrollment token was issued for device {issued_for}, not {presented_as}")]
    WrongDevice {
        issued_for: DeviceId,
        presented_as: String,
    },
    #[error("device {device} is revoked")]
    DeviceRevoked { device: DeviceId },
}

/// One deployment setting whose stored value differs from the requested one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettingDifference {
    /// The configuration name of the setting (`overlay_domain`, `ipv4_prefix`, `ipv6_prefix`).
    pub setting: &'static str,
    pub stored: String,
    pub requested: String,
}

impl fmt::Display for SettingDifference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} is {} in the store but {} in the configuration",
            self.setting, self.stored, self.requested
        )
    }
}

fn mismatch_message(diffs: &[SettingDifference]) -> String {
    let list = diffs
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ");
    format!(
        "the configuration does not match this deployment: {list}. These settings are fixed \
         when a deployment is created (every FQDN, address and certificate depends on them): \
         set the configuration back to the stored values, or start a new deployment with an \
         empty store"
    )
}

/// `url` with the password (if any) replaced by `***`, for messages and logs.
pub(crate) fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_owned();
    };
    let rest = &url[scheme_end + 3..];
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    match (authority.rfind('@'), authority.find(':')) {
        (Some(at), Some(colon)) if colon < at => format!(
            "{}{}:***{}",
            &url[..scheme_end + 3],
            &authority[..colon],
            &rest[at..]
        ),
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact_url("postgres://cy:secret@db:5432/cloud"),
            "postgres://cy:***@db:5432/cloud"
        );
        assert_eq!(
            redact_url("postgres://cy@db/cloud"),
            "postgres://cy@db/cloud"
        );
        assert_eq!(
            redact_url("sqlite:///var/lib/x.db"),
            "sqlite:///var/lib/x.db"
        );
        assert_eq!(redact_url("sqlite:x.db"), "sqlite:x.db");
    }
}
