//! The durable state of the CYPHONIC cloud (DESIGN.md "Control plane and store"): the
//! deployment settings, the devices with their NodeID, FQDN and virtual addresses, the
//! one-time enrollment tokens and the certificates issued to devices.
//!
//! One interface, two back ends through sqlx's `Any` driver, chosen by the URL scheme:
//! a SQLite file (`sqlite://PATH`, the embedded default, created if missing, WAL mode)
//! and PostgreSQL (`postgres://…`, shared by several AS/NMS instances). Every query is
//! plain SQL with `$N` placeholders that both accept; values are primitive (TEXT for
//! names, NodeIDs and addresses, BIGINT for times in unix seconds and flags), which is
//! all `Any` can carry. Each back end has its own migration directory
//! (`services/migrations/{sqlite,postgres}`) with the same version numbers.
//!
//! Everything that must stay unique (names, FQDNs, MACs, NodeIDs, virtual addresses,
//! one use of a token) is enforced by the database itself (UNIQUE constraints, a
//! conditional UPDATE), so concurrent instances on PostgreSQL cannot break it.
//!
//! Hot, ephemeral state (who is online and where, relay tokens) is not kept here: that
//! is the NMS's memory.

mod allocate;
mod certificate;
mod deployment;
mod device;
mod enrollment;
mod error;
mod prefix;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::migrate::Migrator;
use sqlx::{Any, AnyPool, ConnectOptions, Connection, Transaction};

pub use certificate::{canonical_serial, CertificateRecord};
pub use deployment::{Deployment, DeploymentSettings, DEFAULT_IPV4_PREFIX, DEFAULT_OVERLAY_DOMAIN};
pub use device::{parse_mac, Device, DeviceId, DeviceKind, DeviceStatus, MacAddr, NewDevice};
pub use enrollment::{EnrollmentToken, DEFAULT_ENROLLMENT_TTL};
pub use error::{SettingDifference, StoreError, TokenError};
pub use prefix::{Ipv4Prefix, Ipv6Prefix, PrefixError};

/// Seconds since the Unix epoch (UTC). Every time in the store has this form.
pub type UnixTime = i64;

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/postgres");

/// Which database the store is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    /// The back end a database URL names, if any.
    pub fn of_url(url: &str) -> Option<Backend> {
        if url.starts_with("sqlite:") {
            Some(Backend::Sqlite)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Some(Backend::Postgres)
        } else {
            None
        }
    }
}

type Clock = Arc<dyn Fn() -> UnixTime + Send + Sync>;

/// The cloud's durable store. Cheap to clone (a connection pool behind an `Arc`).
#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
    clock: Clock,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("backend", &self.backend)
            .finish_non_exhaustive()
    }
}

fn system_now() -> UnixTime {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// `t + d`, saturating (a TTL is operator input).
pub(crate) fn add_duration(t: UnixTime, d: Duration) -> UnixTime {
    t.saturating_add(i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

impl Store {
    /// Open (and create, for a SQLite file) the store at `database_url` and bring its
    /// schema up to date.
    ///
    /// * `sqlite://PATH`, `sqlite:PATH` (relative or absolute; `sqlite:///abs/path`):
    ///   a file, created with its directory when missing (`mode=rwc` is implied), in WAL
    ///   mode with a 5 s busy timeout and foreign keys on.
    /// * `sqlite::memory:`: a private in-memory database (one connection; tests).
    /// * `postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE`: an existing database.
    pub async fn open(database_url: &str) -> Result<Store> {
        sqlx::any::install_default_drivers();
        let backend = Backend::of_url(database_url)
            .ok_or_else(|| StoreError::UnsupportedUrl(error::redact_url(database_url)))?;
        let open_err = |source| StoreError::Open {
            url: error::redact_url(database_url),
            source,
        };
        let store = match backend {
            Backend::Sqlite => {
                let (url, in_memory) = sqlite_url(database_url);
                if !in_memory {
                    prepare_sqlite_file(&url).await.map_err(open_err)?;
                }
                let options = if in_memory {
                    // Each connection to `:memory:` is its own database: keep exactly one,
                    // forever.
                    AnyPoolOptions::new()
                        .max_connections(1)
                        .min_connections(1)
                        .idle_timeout(None)
                        .max_lifetime(None)
                } else {
                    AnyPoolOptions::new().max_connections(8)
                };
                let pool = options.connect(&url).await.map_err(open_err)?;
                Store::from_pool(pool, Backend::Sqlite)
            }
            Backend::Postgres => {
                let pool = AnyPoolOptions::new()
                    .max_connections(10)
                    .connect(database_url)
                    .await
                    .map_err(open_err)?;
                Store::from_pool(pool, Backend::Postgres)
            }
        };
        store.migrate().await?;
        Ok(store)
    }

    fn from_pool(pool: AnyPool, backend: Backend) -> Store {
        Store {
            pool,
            backend,
            clock: Arc::new(system_now),
        }
    }

    async fn migrate(&self) -> Result<()> {
        let migrator = match self.backend {
            Backend::Sqlite => &SQLITE_MIGRATIONS,
            Backend::Postgres => &POSTGRES_MIGRATIONS,
        };
        migrator.run(&self.pool).await?;
        Ok(())
    }

    /// The same store with another clock (the time every expiry and timestamp uses).
    /// For tests; services use the system clock.
    pub fn with_clock(mut self, clock: impl Fn() -> UnixTime + Send + Sync + 'static) -> Store {
        self.clock = Arc::new(clock);
        self
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Close every connection (waits for the ones in use to be returned).
    pub async fn close(&self) {
        self.pool.close().await;
    }

    pub(crate) fn now(&self) -> UnixTime {
        (self.clock)()
    }

    /// A transaction that, on SQLite, takes the write lock at once (`BEGIN IMMEDIATE`):
    /// a deferred transaction that reads first and writes later fails with "database is
    /// locked" instead of waiting when another connection wrote in between.
    pub(crate) async fn begin_write(&self) -> Result<Transaction<'static, Any>> {
        Ok(match self.backend {
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await?,
            Backend::Postgres => self.pool.begin().await?,
        })
    }

    pub(crate) fn pool(&self) -> &AnyPool {
        &self.pool
    }
}

/// The URL sqlx should open, with `mode=rwc` added unless a mode is given, and whether
/// it names an in-memory database.
fn sqlite_url(url: &str) -> (String, bool) {
    let in_memory = url == "sqlite::memory:"
        || url.starts_with("sqlite::memory:?")
        || url.contains("mode=memory");
    if in_memory || url.contains("mode=") {
        return (url.to_owned(), in_memory);
    }
    let sep = if url.contains('?') { '&' } else { '?' };
    (format!("{url}{sep}mode=rwc"), false)
}

/// The file path of a (non-memory) SQLite URL.
fn sqlite_path(url: &str) -> &str {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
        .unwrap_or(url);
    rest.split('?').next().unwrap_or(rest)
}

/// Create the file's directory and switch the database to WAL. The journal mode is
/// persistent in the file and needs an exclusive lock that `busy_timeout` does not wait
/// for, so it is set once here, on one connection, before the pool opens.
async fn prepare_sqlite_file(url: &str) -> Result<(), sqlx::Error> {
    let path = std::path::Path::new(sqlite_path(url));
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        tokio::fs::create_dir_all(dir).await?;
    }
    let options: AnyConnectOptions = url.parse()?;
    let mut conn = options.connect().await?;
    sqlx::query("PRAGMA journal_mode = WAL")
        .fetch_optional(&mut conn)
        .await?;
    conn.close().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_urls() {
        assert_eq!(
            sqlite_url("sqlite:///var/lib/c.db"),
            ("sqlite:///var/lib/c.db?mode=rwc".into(), false)
        );
        assert_eq!(
            sqlite_url("sqlite:c.db?mode=ro"),
            ("sqlite:c.db?mode=ro".into(), false)
        );
        assert_eq!(
            sqlite_url("sqlite:c.db?cache=shared").0,
            "sqlite:c.db?cache=shared&mode=rwc"
        );
        assert!(sqlite_url("sqlite::memory:").1);
        assert_eq!(
            sqlite_path("sqlite:///var/lib/c.db?mode=rwc"),
            "/var/lib/c.db"
        );
        assert_eq!(sqlite_path("sqlite:c.db"), "c.db");
        assert_eq!(sqlite_path("sqlite://dir/c.db"), "dir/c.db");
        assert_eq!(Backend::of_url("postgresql://x/y"), Some(Backend::Postgres));
        assert_eq!(Backend::of_url("mysql://x/y"), None);
    }
}
