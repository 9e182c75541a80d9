//! The deployment settings: overlay domain and virtual prefixes, fixed at first start.

use cyphonic_proto::Fqdn;
use sqlx::any::AnyRow;
use sqlx::{Any, Executor, Row};

use super::error::{SettingDifference, StoreError};
use super::prefix::{Ipv4Prefix, Ipv6Prefix};
use super::{Result, Store, UnixTime};

/// The overlay domain of a deployment that does not choose one (SPEC §2).
pub const DEFAULT_OVERLAY_DOMAIN: &str = "cyphonic.internal";
/// The virtual IPv4 prefix of a deployment that does not choose one (SPEC §2).
pub const DEFAULT_IPV4_PREFIX: &str = "100.64.0.0/10";

/// What the configuration asks the deployment to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeploymentSettings {
    pub overlay_domain: Fqdn,
    pub ipv4_prefix: Ipv4Prefix,
    /// `None`: generate a random ULA `/48` when the deployment is created, and accept
    /// whatever prefix an existing deployment has.
    pub ipv6_prefix: Option<Ipv6Prefix>,
}

impl Default for DeploymentSettings {
    fn default() -> Self {
        DeploymentSettings {
            overlay_domain: Fqdn::new(DEFAULT_OVERLAY_DOMAIN)
                .unwrap_or_else(|_| unreachable!("the default overlay domain is a valid FQDN")),
            ipv4_prefix: DEFAULT_IPV4_PREFIX
                .parse()
                .unwrap_or_else(|_| unreachable!("the default IPv4 prefix is valid")),
            ipv6_prefix: None,
        }
    }
}

impl DeploymentSettings {
    fn validate(&self) -> Result<()> {
        if self.ipv4_prefix.len() > 30 {
            return Err(StoreError::InvalidSetting(format!(
                "ipv4_prefix {} leaves no room for devices: use a prefix of length 30 or less \
                 (the default is {DEFAULT_IPV4_PREFIX})",
                self.ipv4_prefix
            )));
        }
        if let Some(p) = self.ipv6_prefix {
            if p.len() > 126 {
                return Err(StoreError::InvalidSetting(format!(
                    "ipv6_prefix {p} leaves no room for devices: use a prefix of length 126 \
                     or less (a /48 is usual)"
                )));
            }
        }
        Ok(())
    }
}

/// The deployment as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deployment {
    pub overlay_domain: Fqdn,
    pub ipv4_prefix: Ipv4Prefix,
    pub ipv6_prefix: Ipv6Prefix,
    pub created_at: UnixTime,
}

impl Deployment {
    fn differences(&self, wanted: &DeploymentSettings) -> Vec<SettingDifference> {
        let mut diffs = Vec::new();
        if self.overlay_domain != wanted.overlay_domain {
            diffs.push(SettingDifference {
                setting: "overlay_domain",
                stored: self.overlay_domain.to_string(),
                requested: wanted.overlay_domain.to_string(),
            });
        }
        if self.ipv4_prefix != wanted.ipv4_prefix {
            diffs.push(SettingDifference {
                setting: "ipv4_prefix",
                stored: self.ipv4_prefix.to_string(),
                requested: wanted.ipv4_prefix.to_string(),
            });
        }
        if let Some(v6) = wanted.ipv6_prefix {
            if self.ipv6_prefix != v6 {
                diffs.push(SettingDifference {
                    setting: "ipv6_prefix",
                    stored: self.ipv6_prefix.to_string(),
                    requested: v6.to_string(),
                });
            }
        }
        diffs
    }

    fn from_row(row: &AnyRow) -> Result<Deployment> {
        let domain: String = row.try_get("overlay_domain")?;
        let v4: String = row.try_get("ipv4_prefix")?;
        let v6: String = row.try_get("ipv6_prefix")?;
        Ok(Deployment {
            overlay_domain: Fqdn::new(&domain).map_err(|_| StoreError::Corrupt {
                what: "overlay domain",
                value: domain.clone(),
            })?,
            ipv4_prefix: v4.parse().map_err(|_| StoreError::Corrupt {
                what: "IPv4 prefix",
                value: v4.clone(),
            })?,
            ipv6_prefix: v6.parse().map_err(|_| StoreError::Corrupt {
                what: "IPv6 prefix",
                value: v6.clone(),
            })?,
            created_at: row.try_get("created_at")?,
        })
    }
}

pub(crate) async fn load<'e, E>(executor: E) -> Result<Option<Deployment>>
where
    E: Executor<'e, Database = Any>,
{
    let row = sqlx::query(
        "SELECT overlay_domain, ipv4_prefix, ipv6_prefix, created_at FROM deployment WHERE id = 1",
    )
    .fetch_optional(executor)
    .await?;
    row.as_ref().map(Deployment::from_row).transpose()
}

impl Store {
    /// Create the deployment settings on first start; afterwards check that the
    /// configuration still asks for the same ones.
    ///
    /// Idempotent: when the stored settings equal `wanted` (an unset `ipv6_prefix`
    /// accepts any stored one) it returns them; when they differ it fails with
    /// [`StoreError::DeploymentMismatch`] naming every difference, and changes nothing.
    /// Safe when several instances start at once: the first one's settings win and the
    /// others compare against them.
    pub async fn init_deployment(&self, wanted: &DeploymentSettings) -> Result<Deployment> {
        wanted.validate()?;
        if let Some(existing) = load(self.pool()).await? {
            return check(existing, wanted);
        }
        let v6 = wanted.ipv6_prefix.unwrap_or_else(Ipv6Prefix::random_ula);
        sqlx::query(
            "INSERT INTO deployment (id, overlay_domain, ipv4_prefix, ipv6_prefix, created_at) \
             VALUES (1, $1, $2, $3, $4) ON CONFLICT DO NOTHING",
        )
        .bind(wanted.overlay_domain.to_string())
        .bind(wanted.ipv4_prefix.to_string())
        .bind(v6.to_string())
        .bind(self.now())
        .execute(self.pool())
        .await?;
        let stored = load(self.pool()).await?.ok_or(StoreError::NotInitialised)?;
        if stored.ipv6_prefix == v6 {
            tracing::info!(
                domain = %stored.overlay_domain,
                ipv4_prefix = %stored.ipv4_prefix,
                ipv6_prefix = %stored.ipv6_prefix,
                "deployment initialised"
            );
        }
        check(stored, wanted)
    }

    /// The stored deployment settings, or `None` before [`Store::init_deployment`].
    pub async fn deployment(&self) -> Result<Option<Deployment>> {
        load(self.pool()).await
    }
}

fn check(stored: Deployment, wanted: &DeploymentSettings) -> Result<Deployment> {
    let diffs = stored.differences(wanted);
    if diffs.is_empty() {
        Ok(stored)
    } else {
        Err(StoreError::DeploymentMismatch(diffs))
    }
}
