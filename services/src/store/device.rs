//! Devices (nodes and general nodes): their names, identities and virtual addresses.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::str::FromStr;
use std::time::Duration;

use cyphonic_proto::{Fqdn, NodeId};
use sqlx::any::AnyRow;
use sqlx::{Any, AnyConnection, Executor, Row};

use super::enrollment::{self, EnrollmentToken, DEFAULT_ENROLLMENT_TTL};
use super::error::StoreError;
use super::{allocate, deployment, Result, Store, UnixTime};

/// The operator-chosen name of a device (SPEC §2 DeviceID): one DNS label, stored in
/// lower case. The device's FQDN is `<device id>.<overlay domain>`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeviceId(String);

impl DeviceId {
    /// Validate and canonicalise (lower case): 1–63 letters, digits and hyphens, not
    /// starting or ending with a hyphen.
    pub fn new(name: &str) -> Result<Self> {
        let bad = |reason: &str| StoreError::InvalidDeviceId {
            name: name.to_owned(),
            reason: reason.to_owned(),
        };
        if name.is_empty() {
            return Err(bad("it is empty"));
        }
        if name.len() > 63 {
            return Err(bad("it is longer than 63 characters (one DNS label)"));
        }
        if let Some(c) = name
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-'))
        {
            let reason = if c == '.' {
                "a device name is one DNS label: no dots (the overlay domain is added)".to_owned()
            } else {
                format!("{c:?} is not allowed: use letters a-z, digits and '-'")
            };
            return Err(bad(&reason));
        }
        if name.starts_with('-') || name.ends_with('-') {
            return Err(bad("it starts or ends with '-'"));
        }
        Ok(DeviceId(name.to_ascii_lowercase()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for DeviceId {
    type Err = StoreError;
    fn from_str(s: &str) -> Result<Self> {
        DeviceId::new(s)
    }
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DeviceId({})", self.0)
    }
}

pub use cyphonic_proto::body::MacAddr;

/// Parse a general node's MAC (`aa:bb:cc:dd:ee:ff` or `AA-BB-CC-DD-EE-FF`). A
/// device's MAC is a unicast address: multicast, broadcast and all-zero are refused.
pub fn parse_mac(text: &str) -> Result<MacAddr> {
    let bad = || StoreError::InvalidMac(text.to_owned());
    let m: MacAddr = text.parse().map_err(|_| bad())?;
    if m.0[0] & 1 == 1 || m.0 == [0; 6] {
        return Err(bad());
    }
    Ok(m)
}

/// What a device is (SPEC §1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceKind {
    /// A host running the node daemon (also an adapter: it is a node too).
    Node,
    /// An unmodified device behind an adapter, which runs CYPHONIC on its behalf.
    GeneralNode {
        /// The FQDN of the adapter that carries it.
        adapter: Fqdn,
        mac: MacAddr,
    },
}

/// Whether a device may still log in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceStatus {
    Active,
    Revoked { at: UnixTime },
}

/// A device as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    pub device_id: DeviceId,
    pub fqdn: Fqdn,
    pub kind: DeviceKind,
    pub ipv6_enabled: bool,
    /// Assigned when the device is added; never changes.
    pub node_id: NodeId,
    /// Allocated when the device is added; never changes, never shared.
    pub virtual_ipv4: Ipv4Addr,
    pub virtual_ipv6: Ipv6Addr,
    pub status: DeviceStatus,
    pub created_at: UnixTime,
}

impl Device {
    pub fn is_active(&self) -> bool {
        self.status == DeviceStatus::Active
    }

    fn from_row(row: &AnyRow) -> Result<Device> {
        fn corrupt(what: &'static str, value: &str) -> StoreError {
            StoreError::Corrupt {
                what,
                value: value.to_owned(),
            }
        }
        let id: String = row.try_get("device_id")?;
        let fqdn: String = row.try_get("fqdn")?;
        let kind: String = row.try_get("kind")?;
        let adapter: Option<String> = row.try_get("adapter_fqdn")?;
        let mac: Option<String> = row.try_get("mac")?;
        let node_id: String = row.try_get("node_id")?;
        let v4: String = row.try_get("virtual_ipv4")?;
        let v6: String = row.try_get("virtual_ipv6")?;
        let revoked_at: Option<i64> = row.try_get("revoked_at")?;
        let kind = match (kind.as_str(), adapter, mac) {
            ("node", None, None) => DeviceKind::Node,
            ("general_node", Some(adapter), Some(mac)) => DeviceKind::GeneralNode {
                adapter: Fqdn::new(&adapter).map_err(|_| corrupt("adapter FQDN", &adapter))?,
                mac: parse_mac(&mac).map_err(|_| corrupt("MAC address", &mac))?,
            },
            _ => return Err(corrupt("device kind", &kind)),
        };
        Ok(Device {
            device_id: DeviceId::new(&id).map_err(|_| corrupt("device name", &id))?,
            fqdn: Fqdn::new(&fqdn).map_err(|_| corrupt("FQDN", &fqdn))?,
            kind,
            ipv6_enabled: row.try_get::<i64, _>("ipv6_enabled")? != 0,
            node_id: node_id.parse().map_err(|_| corrupt("NodeID", &node_id))?,
            virtual_ipv4: v4
                .parse()
                .map_err(|_| corrupt("virtual IPv4 address", &v4))?,
            virtual_ipv6: v6
                .parse()
                .map_err(|_| corrupt("virtual IPv6 address", &v6))?,
            status: match revoked_at {
                None => DeviceStatus::Active,
                Some(at) => DeviceStatus::Revoked { at },
            },
            created_at: row.try_get("created_at")?,
        })
    }
}

/// A device the operator adds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewDevice {
    pub device_id: DeviceId,
    pub kind: DeviceKind,
    pub ipv6_enabled: bool,
    /// Lifetime of the enrollment token issued with the device.
    pub token_ttl: Duration,
}

impl NewDevice {
    /// A node with IPv6 on and a token valid for [`DEFAULT_ENROLLMENT_TTL`].
    pub fn node(device_id: DeviceId) -> Self {
        NewDevice {
            device_id,
            kind: DeviceKind::Node,
            ipv6_enabled: true,
            token_ttl: DEFAULT_ENROLLMENT_TTL,
        }
    }

    /// A general node carried by the adapter `adapter`.
    pub fn general_node(device_id: DeviceId, adapter: Fqdn, mac: MacAddr) -> Self {
        NewDevice {
            kind: DeviceKind::GeneralNode { adapter, mac },
            ..NewDevice::node(device_id)
        }
    }
}

macro_rules! select_devices {
    ($($tail:literal)?) => {
        concat!(
            "SELECT device_id, fqdn, kind, adapter_fqdn, mac, ipv6_enabled, node_id, ",
            "virtual_ipv4, virtual_ipv6, created_at, revoked_at FROM devices "
            $(, $tail)?
        )
    };
}

pub(crate) async fn by_id<'e, E>(executor: E, id: &DeviceId) -> Result<Option<Device>>
where
    E: Executor<'e, Database = Any>,
{
    let row = sqlx::query(select_devices!("WHERE device_id = $1"))
        .bind(id.as_str().to_owned())
        .fetch_optional(executor)
        .await?;
    row.as_ref().map(Device::from_row).transpose()
}

async fn by_fqdn<'e, E>(executor: E, fqdn: &Fqdn) -> Result<Option<Device>>
where
    E: Executor<'e, Database = Any>,
{
    let row = sqlx::query(select_devices!("WHERE fqdn = $1"))
        .bind(fqdn.as_str().to_owned())
        .fetch_optional(executor)
        .await?;
    row.as_ref().map(Device::from_row).transpose()
}

/// The first reason `new` cannot be inserted (name, FQDN or MAC taken; unknown adapter).
async fn check_new(conn: &mut AnyConnection, new: &NewDevice, fqdn: &Fqdn) -> Result<()> {
    if by_id(&mut *conn, &new.device_id).await?.is_some() {
        return Err(StoreError::DeviceExists(new.device_id.clone()));
    }
    if by_fqdn(&mut *conn, fqdn).await?.is_some() {
        return Err(StoreError::FqdnTaken(fqdn.clone()));
    }
    if let DeviceKind::GeneralNode { adapter, mac } = &new.kind {
        let owner: Option<String> =
            sqlx::query_scalar("SELECT device_id FROM devices WHERE mac = $1")
                .bind(mac.to_string())
                .fetch_optional(&mut *conn)
                .await?;
        if let Some(owner) = owner {
            return Err(StoreError::MacTaken {
                mac: *mac,
                device: DeviceId::new(&owner).map_err(|_| StoreError::Corrupt {
                    what: "device name",
                    value: owner.clone(),
                })?,
            });
        }
        match by_fqdn(&mut *conn, adapter).await? {
            Some(d) if d.kind == DeviceKind::Node => {}
            _ => return Err(StoreError::NoSuchAdapter(adapter.clone())),
        }
    }
    Ok(())
}

/// How often `add_device` picks new addresses after losing a race for them.
const MAX_ALLOCATION_ATTEMPTS: u32 = 32;

impl Store {
    /// Add a device: check its name, FQDN and MAC are free, assign its NodeID, allocate
    /// its virtual IPv4 and IPv6 addresses, and issue its first enrollment token.
    ///
    /// Safe against concurrent callers (other tasks or other instances on PostgreSQL):
    /// the UNIQUE constraints decide, and a lost race for an address is retried with
    /// other addresses.
    pub async fn add_device(&self, new: NewDevice) -> Result<(Device, EnrollmentToken)> {
        let mut tx = self.begin_write().await?;
        let dep = deployment::load(&mut *tx)
            .await?
            .ok_or(StoreError::NotInitialised)?;
        let fqdn = Fqdn::in_domain(new.device_id.as_str(), &dep.overlay_domain).map_err(|e| {
            StoreError::InvalidDeviceId {
                name: new.device_id.to_string(),
                reason: e.to_string(),
            }
        })?;
        check_new(&mut tx, &new, &fqdn).await?;
        let now = self.now();
        let (adapter, mac, kind) = match &new.kind {
            DeviceKind::Node => (None, None, "node"),
            DeviceKind::GeneralNode { adapter, mac } => (
                Some(adapter.to_string()),
                Some(mac.to_string()),
                "general_node",
            ),
        };
        for _ in 0..MAX_ALLOCATION_ATTEMPTS {
            let (v4, v6) = allocate::pick_addresses(&mut tx, &dep).await?;
            let node_id = NodeId::random();
            let inserted: Option<String> = sqlx::query_scalar(
                "INSERT INTO devices (device_id, fqdn, kind, adapter_fqdn, mac, ipv6_enabled, \
                 node_id, virtual_ipv4, virtual_ipv6, created_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
                 ON CONFLICT DO NOTHING RETURNING device_id",
            )
            .bind(new.device_id.as_str().to_owned())
            .bind(fqdn.to_string())
            .bind(kind)
            .bind(adapter.clone())
            .bind(mac.clone())
            .bind(i64::from(new.ipv6_enabled))
            .bind(node_id.to_string())
            .bind(v4.to_string())
            .bind(v6.to_string())
            .bind(now)
            .fetch_optional(&mut *tx)
            .await?;
            if inserted.is_none() {
                // Someone else committed a conflicting row meanwhile: a name or MAC is a
                // real error, an address (or, astronomically unlikely, a NodeID) a retry.
                check_new(&mut tx, &new, &fqdn).await?;
                tracing::debug!(device = %new.device_id, "virtual address taken concurrently; picking again");
                continue;
            }
            let token =
                enrollment::insert_token(&mut tx, &new.device_id, now, new.token_ttl).await?;
            let device = by_id(&mut *tx, &new.device_id)
                .await?
                .ok_or_else(|| StoreError::NoSuchDevice(new.device_id.to_string()))?;
            tx.commit().await?;
            tracing::info!(
                device = %device.device_id,
                fqdn = %device.fqdn,
                node_id = %device.node_id,
                ipv4 = %device.virtual_ipv4,
                ipv6 = %device.virtual_ipv6,
                "device added"
            );
            return Ok((device, token));
        }
        Err(StoreError::AllocationContention(MAX_ALLOCATION_ATTEMPTS))
    }

    /// The device named `device_id` (any case), if any.
    pub async fn device_by_id(&self, device_id: &str) -> Result<Option<Device>> {
        match DeviceId::new(device_id) {
            Ok(id) => by_id(self.pool(), &id).await,
            Err(_) => Ok(None),
        }
    }

    /// The device named `device_id`, or [`StoreError::NoSuchDevice`] (for the CLI).
    pub async fn device(&self, device_id: &str) -> Result<Device> {
        self.device_by_id(device_id)
            .await?
            .ok_or_else(|| StoreError::NoSuchDevice(device_id.to_owned()))
    }

    pub async fn device_by_fqdn(&self, fqdn: &Fqdn) -> Result<Option<Device>> {
        by_fqdn(self.pool(), fqdn).await
    }

    pub async fn device_by_node_id(&self, node_id: NodeId) -> Result<Option<Device>> {
        let row = sqlx::query(select_devices!("WHERE node_id = $1"))
            .bind(node_id.to_string())
            .fetch_optional(self.pool())
            .await?;
        row.as_ref().map(Device::from_row).transpose()
    }

    /// Every device, by name.
    pub async fn devices(&self) -> Result<Vec<Device>> {
        let rows = sqlx::query(select_devices!("ORDER BY device_id"))
            .fetch_all(self.pool())
            .await?;
        rows.iter().map(Device::from_row).collect()
    }

    /// The general nodes carried by the adapter `adapter` (Node Information, SPEC §5),
    /// by name.
    pub async fn general_nodes_of(&self, adapter: &Fqdn) -> Result<Vec<Device>> {
        let rows = sqlx::query(select_devices!(
            "WHERE kind = 'general_node' AND adapter_fqdn = $1 ORDER BY device_id"
        ))
        .bind(adapter.as_str().to_owned())
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(Device::from_row).collect()
    }

    /// Revoke a device: it can no longer enroll or log in, and every certificate issued
    /// to it is marked revoked. Returns the device and the serials of **all** its
    /// certificates (sorted), for the CA's CRL; repeating the call is harmless and
    /// returns the same serials.
    pub async fn revoke_device(&self, device_id: &str) -> Result<(Device, Vec<String>)> {
        let id =
            DeviceId::new(device_id).map_err(|_| StoreError::NoSuchDevice(device_id.to_owned()))?;
        let now = self.now();
        let mut tx = self.begin_write().await?;
        // The device row first: this write locks it against a concurrent
        // record_certificate (which locks it the same way).
        sqlx::query(
            "UPDATE devices SET revoked_at = $2 WHERE device_id = $1 AND revoked_at IS NULL",
        )
        .bind(id.as_str().to_owned())
        .bind(now)
        .execute(&mut *tx)
        .await?;
        let device = by_id(&mut *tx, &id)
            .await?
            .ok_or_else(|| StoreError::NoSuchDevice(device_id.to_owned()))?;
        sqlx::query(
            "UPDATE certificates SET revoked_at = $2 WHERE device_id = $1 AND revoked_at IS NULL",
        )
        .bind(id.as_str().to_owned())
        .bind(now)
        .execute(&mut *tx)
        .await?;
        let serials: Vec<String> = sqlx::query_scalar(
            "SELECT serial FROM certificates WHERE device_id = $1 ORDER BY serial",
        )
        .bind(id.as_str().to_owned())
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        tracing::info!(device = %id, certificates = serials.len(), "device revoked");
        Ok((device, serials))
    }

    /// Remove a device and everything about it (tokens, certificate records); its name,
    /// FQDN, MAC, NodeID and addresses become free. Returns the device and the serials
    /// of all its certificates, which the CA must revoke. An adapter that still carries
    /// general nodes cannot be removed.
    pub async fn remove_device(&self, device_id: &str) -> Result<(Device, Vec<String>)> {
        let id =
            DeviceId::new(device_id).map_err(|_| StoreError::NoSuchDevice(device_id.to_owned()))?;
        let mut tx = self.begin_write().await?;
        let device = by_id(&mut *tx, &id)
            .await?
            .ok_or_else(|| StoreError::NoSuchDevice(device_id.to_owned()))?;
        let carried: Vec<String> = sqlx::query_scalar(
            "SELECT device_id FROM devices WHERE adapter_fqdn = $1 ORDER BY device_id",
        )
        .bind(device.fqdn.to_string())
        .fetch_all(&mut *tx)
        .await?;
        if !carried.is_empty() {
            return Err(StoreError::AdapterInUse {
                adapter: id,
                general_nodes: carried,
            });
        }
        let serials: Vec<String> = sqlx::query_scalar(
            "SELECT serial FROM certificates WHERE device_id = $1 ORDER BY serial",
        )
        .bind(id.as_str().to_owned())
        .fetch_all(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM devices WHERE device_id = $1")
            .bind(id.as_str().to_owned())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        tracing::info!(device = %id, certificates = serials.len(), "device removed");
        Ok((device, serials))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_ids() {
        assert_eq!(DeviceId::new("Cam-1").unwrap().as_str(), "cam-1");
        for bad in ["", "-a", "a-", "a.b", "a_b", "é", &"a".repeat(64)] {
            assert!(DeviceId::new(bad).is_err(), "{bad:?}");
        }
        let e = DeviceId::new("a.b").unwrap_err().to_string();
        assert!(e.contains("no dots"), "{e}");
    }

    #[test]
    fn macs() {
        let m = parse_mac("02-AB-cd-00-11-ff").unwrap();
        assert_eq!(m.to_string(), "02:ab:cd:00:11:ff");
        assert_eq!(parse_mac("02:ab:cd:00:11:ff").unwrap(), m);
        for bad in [
            "",
            "02:ab:cd:00:11",
            "02:ab:cd:00:11:ff:00",
            "02:ab:cd:00:11:f",
            "02:ab:cd:00:11:gg",
            "ff:ff:ff:ff:ff:ff",
            "01:00:5e:00:00:01",
            "00:00:00:00:00:00",
            "02:ab-cd:00:11:ff",
            "02:+b:cd:00:11:ff",
        ] {
            assert!(parse_mac(bad).is_err(), "{bad:?}");
        }
    }
}
