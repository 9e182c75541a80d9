//! One-time enrollment tokens (SPEC §5 Enroll Request: the Secret).
//!
//! A token is 32 random bytes shown to the operator once, as 64 hex digits. The store
//! keeps only its SHA-256, so a copy of the database does not let anyone enroll.

use std::fmt;
use std::time::Duration;

use sha2::{Digest, Sha256};
use sqlx::AnyConnection;

use super::device::{self, Device, DeviceId};
use super::error::{StoreError, TokenError};
use super::{add_duration, Result, Store, UnixTime};

/// How long a token stays valid unless the operator says otherwise.
pub const DEFAULT_ENROLLMENT_TTL: Duration = Duration::from_secs(24 * 60 * 60);

/// A freshly issued enrollment token. The secret exists only here: show it to the
/// operator and drop it. `Debug` does not print it.
#[derive(Clone, PartialEq, Eq)]
pub struct EnrollmentToken {
    pub device_id: DeviceId,
    /// The secret to give the device (64 lower-case hex digits).
    pub secret: String,
    /// The token is refused from this time on (unix seconds).
    pub expires_at: UnixTime,
}

impl fmt::Debug for EnrollmentToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EnrollmentToken")
            .field("device_id", &self.device_id)
            .field("secret", &"<redacted>")
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

fn hex(bytes: &[u8]) -> String {
    use fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// What the store keeps of a secret. Surrounding white space and case are ignored, so
/// a token pasted with a newline or in upper case still works.
fn hash_secret(secret: &str) -> String {
    hex(&Sha256::digest(
        secret.trim().to_ascii_lowercase().as_bytes(),
    ))
}

/// Issue a token for `device` valid for `ttl` from `now`, replacing the device's
/// unused ones.
pub(crate) async fn insert_token(
    conn: &mut AnyConnection,
    device: &DeviceId,
    now: UnixTime,
    ttl: Duration,
) -> Result<EnrollmentToken> {
    let secret = hex(&rand::random::<[u8; 32]>());
    let expires_at = add_duration(now, ttl);
    sqlx::query("DELETE FROM enrollment_tokens WHERE device_id = $1 AND used_at IS NULL")
        .bind(device.as_str().to_owned())
        .execute(&mut *conn)
        .await?;
    sqlx::query(
        "INSERT INTO enrollment_tokens (token_hash, device_id, created_at, expires_at) \
         VALUES ($1, $2, $3, $4)",
    )
    .bind(hash_secret(&secret))
    .bind(device.as_str().to_owned())
    .bind(now)
    .bind(expires_at)
    .execute(&mut *conn)
    .await?;
    Ok(EnrollmentToken {
        device_id: device.clone(),
        secret,
        expires_at,
    })
}

impl Store {
    /// Issue a new one-time token for an existing, unrevoked device, valid for `ttl`.
    /// The device's earlier unused tokens stop working.
    pub async fn new_enrollment_token(
        &self,
        device_id: &str,
        ttl: Duration,
    ) -> Result<EnrollmentToken> {
        let id =
            DeviceId::new(device_id).map_err(|_| StoreError::NoSuchDevice(device_id.to_owned()))?;
        let mut tx = self.begin_write().await?;
        let device = device::by_id(&mut *tx, &id)
            .await?
            .ok_or_else(|| StoreError::NoSuchDevice(device_id.to_owned()))?;
        if !device.is_active() {
            return Err(StoreError::DeviceRevoked(id));
        }
        let token = insert_token(&mut tx, &id, self.now(), ttl).await?;
        tx.commit().await?;
        Ok(token)
    }

    /// Use the one-time `token` presented by `device_id` (Enroll Request). Exactly one
    /// of any number of concurrent callers with the same token succeeds: a single
    /// conditional UPDATE marks it used. On success returns the device; otherwise
    /// [`StoreError::Token`] says why (unknown, already used, expired, issued for
    /// another device, device revoked).
    pub async fn consume_enrollment_token(&self, device_id: &str, token: &str) -> Result<Device> {
        let now = self.now();
        let hash = hash_secret(token);
        let presented = device_id.to_ascii_lowercase();
        let used: Option<String> = sqlx::query_scalar(
            "UPDATE enrollment_tokens SET used_at = $1 \
             WHERE token_hash = $2 AND device_id = $3 AND used_at IS NULL AND expires_at > $1 \
             AND EXISTS (SELECT 1 FROM devices \
                         WHERE devices.device_id = $3 AND devices.revoked_at IS NULL) \
             RETURNING device_id",
        )
        .bind(now)
        .bind(hash.clone())
        .bind(presented.clone())
        .fetch_optional(self.pool())
        .await?;
        if let Some(id) = used {
            let device = self.device(&id).await?;
            tracing::info!(device = %device.device_id, "enrollment token used");
            return Ok(device);
        }
        Err(self.why_refused(&hash, &presented, now).await?.into())
    }

    /// Why the token with `hash` could not be used by `presented` at `now`.
    async fn why_refused(&self, hash: &str, presented: &str, now: UnixTime) -> Result<TokenError> {
        let row: Option<(String, Option<i64>, i64)> = sqlx::query_as(
            "SELECT device_id, used_at, expires_at FROM enrollment_tokens WHERE token_hash = $1",
        )
        .bind(hash.to_owned())
        .fetch_optional(self.pool())
        .await?;
        let Some((owner, used_at, expires_at)) = row else {
            return Ok(TokenError::Unknown);
        };
        let device = DeviceId::new(&owner).map_err(|_| StoreError::Corrupt {
            what: "device name",
            value: owner.clone(),
        })?;
        if owner != presented {
            return Ok(TokenError::WrongDevice {
                issued_for: device,
                presented_as: presented.to_owned(),
            });
        }
        match device::by_id(self.pool(), &device).await? {
            None => return Ok(TokenError::Unknown),
            Some(d) if !d.is_active() => return Ok(TokenError::DeviceRevoked { device }),
            Some(_) => {}
        }
        if used_at.is_some() {
            return Ok(TokenError::AlreadyUsed { device });
        }
        if expires_at <= now {
            return Ok(TokenError::Expired {
                device,
                expired_at: expires_at,
            });
        }
        // Not used, not expired, device active, yet the UPDATE matched nothing: the row
        // changed in between (another caller used it a moment ago).
        Ok(TokenError::AlreadyUsed { device })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_hashed_case_and_space_insensitively() {
        let h = hash_secret("ABcd\n");
        assert_eq!(h, hash_secret("abcd"));
        assert_eq!(h.len(), 64);
        assert_ne!(h, hash_secret("abce"));
        assert_eq!(hex(&[0, 0xab, 0x10]), "00ab10");
    }
}
