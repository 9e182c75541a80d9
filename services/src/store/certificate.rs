//! Certificates the CA issued to devices: what AS login checks ("the certificate must
//! belong to a known, unrevoked device") and what revocation hands to the CA.

use sqlx::any::AnyRow;
use sqlx::Row;

use super::device::DeviceId;
use super::error::StoreError;
use super::{Result, Store, UnixTime};

/// A certificate issued to a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateRecord {
    /// Canonical hex serial (see [`canonical_serial`]).
    pub serial: String,
    pub device_id: DeviceId,
    pub not_after: UnixTime,
    pub recorded_at: UnixTime,
    pub revoked_at: Option<UnixTime>,
}

impl CertificateRecord {
    fn from_row(row: &AnyRow) -> Result<CertificateRecord> {
        let device: String = row.try_get("device_id")?;
        Ok(CertificateRecord {
            serial: row.try_get("serial")?,
            device_id: DeviceId::new(&device).map_err(|_| StoreError::Corrupt {
                what: "device name",
                value: device.clone(),
            })?,
            not_after: row.try_get("not_after")?,
            recorded_at: row.try_get("recorded_at")?,
            revoked_at: row.try_get("revoked_at")?,
        })
    }
}

/// The form serials are stored and looked up in: lower-case hex digits without
/// separators (`:` or spaces) or leading zeros (`"00:AB:0c"` → `"ab0c"`), since a
/// serial is an integer however it is printed.
pub fn canonical_serial(serial: &str) -> Result<String> {
    let digits: String = serial
        .chars()
        .filter(|c| *c != ':' && !c.is_whitespace())
        .collect();
    if digits.is_empty() || !digits.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(StoreError::InvalidSerial(serial.to_owned()));
    }
    let trimmed = digits.trim_start_matches('0');
    Ok(if trimmed.is_empty() {
        "0".to_owned()
    } else {
        trimmed.to_ascii_lowercase()
    })
}

const SELECT: &str =
    "SELECT serial, device_id, not_after, recorded_at, revoked_at FROM certificates ";

impl Store {
    /// Record that the CA issued certificate `serial` (valid until `not_after`) to the
    /// device `device_id`. Refused when the device is unknown or revoked (a revocation
    /// running at the same moment either sees this certificate or makes this fail), or
    /// when the serial is already recorded.
    pub async fn record_certificate(
        &self,
        device_id: &str,
        serial: &str,
        not_after: UnixTime,
    ) -> Result<CertificateRecord> {
        let serial = canonical_serial(serial)?;
        let id =
            DeviceId::new(device_id).map_err(|_| StoreError::NoSuchDevice(device_id.to_owned()))?;
        let now = self.now();
        let mut tx = self.begin_write().await?;
        // A no-op write that locks the device row while it is active (revoke_device
        // writes the same row first), so revocation and recording are serialised.
        let active: Option<String> = sqlx::query_scalar(
            "UPDATE devices SET revoked_at = NULL WHERE device_id = $1 AND revoked_at IS NULL \
             RETURNING device_id",
        )
        .bind(id.as_str().to_owned())
        .fetch_optional(&mut *tx)
        .await?;
        if active.is_none() {
            let exists: Option<String> =
                sqlx::query_scalar("SELECT device_id FROM devices WHERE device_id = $1")
                    .bind(id.as_str().to_owned())
                    .fetch_optional(&mut *tx)
                    .await?;
            return Err(match exists {
                Some(_) => StoreError::DeviceRevoked(id),
                None => StoreError::NoSuchDevice(device_id.to_owned()),
            });
        }
        let row = sqlx::query(
            "INSERT INTO certificates (serial, device_id, not_after, recorded_at) \
             VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING \
             RETURNING serial, device_id, not_after, recorded_at, revoked_at",
        )
        .bind(serial.clone())
        .bind(id.as_str().to_owned())
        .bind(not_after)
        .bind(now)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            return Err(StoreError::DuplicateSerial(serial));
        };
        let record = CertificateRecord::from_row(&row)?;
        tx.commit().await?;
        Ok(record)
    }

    /// The certificate with this serial, if recorded.
    pub async fn certificate(&self, serial: &str) -> Result<Option<CertificateRecord>> {
        let serial = canonical_serial(serial)?;
        let row = sqlx::query(&format!("{SELECT} WHERE serial = $1"))
            .bind(serial)
            .fetch_optional(self.pool())
            .await?;
        row.as_ref().map(CertificateRecord::from_row).transpose()
    }

    /// Every certificate issued to the device, by serial.
    pub async fn certificates_of(&self, device_id: &str) -> Result<Vec<CertificateRecord>> {
        let rows = sqlx::query(&format!("{SELECT} WHERE device_id = $1 ORDER BY serial"))
            .bind(device_id.to_ascii_lowercase())
            .fetch_all(self.pool())
            .await?;
        rows.iter().map(CertificateRecord::from_row).collect()
    }

    /// True when the certificate is recorded, not revoked, not expired, and its device
    /// exists and is not revoked: the AS login check. Unknown or malformed serials are
    /// simply not active.
    pub async fn is_certificate_active(&self, serial: &str) -> Result<bool> {
        let Ok(serial) = canonical_serial(serial) else {
            return Ok(false);
        };
        let n: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM certificates JOIN devices \
             ON devices.device_id = certificates.device_id \
             WHERE certificates.serial = $1 AND certificates.revoked_at IS NULL \
             AND certificates.not_after > $2 AND devices.revoked_at IS NULL",
        )
        .bind(serial)
        .bind(self.now())
        .fetch_one(self.pool())
        .await?;
        Ok(n > 0)
    }

    /// Mark one certificate revoked (e.g. replaced, or its key lost) without revoking
    /// the device. Idempotent; returns the record.
    pub async fn revoke_certificate(&self, serial: &str) -> Result<CertificateRecord> {
        let serial = canonical_serial(serial)?;
        sqlx::query(
            "UPDATE certificates SET revoked_at = $2 WHERE serial = $1 AND revoked_at IS NULL",
        )
        .bind(serial.clone())
        .bind(self.now())
        .execute(self.pool())
        .await?;
        self.certificate(&serial)
            .await?
            .ok_or(StoreError::NoSuchCertificate(serial))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serials_are_canonical() {
        assert_eq!(canonical_serial("00:AB:0c").unwrap(), "ab0c");
        assert_eq!(canonical_serial("0000").unwrap(), "0");
        assert_eq!(canonical_serial("7F 01").unwrap(), "7f01");
        assert!(canonical_serial("").is_err());
        assert!(canonical_serial("xyz").is_err());
        assert!(canonical_serial("-1").is_err());
    }
}
