//! The store against both back ends: every behaviour below runs as `<name>::sqlite`
//! (a temporary file) and `<name>::postgres` (a fresh database on the server named by
//! `CYPHONIC_TEST_POSTGRES_URL`; start one with `eval "$(bash .ci/postgres.sh | tail -1)"`).
//! Without that variable the PostgreSQL half is skipped with a notice, except under CI
//! (`CI` set), where it fails.

use std::collections::HashSet;
use std::future::Future;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cyphonic_proto::Fqdn;
use cyphonic_services::store::{
    parse_mac, Backend, DeploymentSettings, Device, DeviceId, DeviceKind, DeviceStatus, Ipv4Prefix,
    Ipv6Prefix, MacAddr, NewDevice, Store, StoreError, TokenError,
};
use sqlx::{Connection, Executor};

// ---------------------------------------------------------------------------------------
// Harness

/// One test's database: open it (again) with [`TestDb::open`].
#[derive(Clone)]
struct TestDb {
    url: String,
    backend: Backend,
}

impl TestDb {
    async fn open(&self) -> Store {
        Store::open(&self.url)
            .await
            .unwrap_or_else(|e| panic!("open {}: {e}", self.url))
    }

    /// Open and initialise with the default settings (random ULA).
    async fn init(&self) -> Store {
        let store = self.open().await;
        store
            .init_deployment(&DeploymentSettings::default())
            .await
            .unwrap();
        store
    }

    /// Open and initialise with a given IPv4 prefix.
    async fn init_with_v4(&self, prefix: &str) -> Store {
        let store = self.open().await;
        let settings = DeploymentSettings {
            ipv4_prefix: prefix.parse().unwrap(),
            ..DeploymentSettings::default()
        };
        store.init_deployment(&settings).await.unwrap();
        store
    }
}

async fn run_sqlite<F, Fut>(body: F)
where
    F: FnOnce(TestDb) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let dir = tempfile::tempdir().unwrap();
    // A directory that does not exist yet: the store creates it and the file.
    let path = dir.path().join("state").join("cloud.db");
    let db = TestDb {
        url: format!("sqlite://{}", path.display()),
        backend: Backend::Sqlite,
    };
    let result = tokio::spawn(body(db)).await;
    drop(dir);
    if let Err(e) = result {
        std::panic::resume_unwind(e.into_panic());
    }
}

async fn run_postgres<F, Fut>(name: &str, body: F)
where
    F: FnOnce(TestDb) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let Ok(admin_url) = std::env::var("CYPHONIC_TEST_POSTGRES_URL") else {
        if std::env::var_os("CI").is_some() {
            panic!(
                "CI is set but CYPHONIC_TEST_POSTGRES_URL is not: the store's PostgreSQL tests \
                 must run in CI. Start a server with: eval \"$(bash .ci/postgres.sh | tail -1)\""
            );
        }
        eprintln!(
            "notice: CYPHONIC_TEST_POSTGRES_URL is unset: skipping the PostgreSQL half of \
             {name} (start a server with: eval \"$(bash .ci/postgres.sh | tail -1)\")"
        );
        return;
    };
    let db_name = format!("cyphonic_test_{name}_{:08x}", rand::random::<u32>());
    let mut admin = sqlx::PgConnection::connect(&admin_url)
        .await
        .unwrap_or_else(|e| panic!("connect to {admin_url}: {e}"));
    admin
        .execute(format!("CREATE DATABASE \"{db_name}\"").as_str())
        .await
        .unwrap();
    let db = TestDb {
        url: with_database(&admin_url, &db_name),
        backend: Backend::Postgres,
    };
    let result = tokio::spawn(body(db)).await;
    admin
        .execute(format!("DROP DATABASE IF EXISTS \"{db_name}\" WITH (FORCE)").as_str())
        .await
        .unwrap();
    let _ = admin.close().await;
    if let Err(e) = result {
        std::panic::resume_unwind(e.into_panic());
    }
}

/// `url` with its database path replaced by `db`.
fn with_database(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let authority_start = base.find("://").map_or(0, |i| i + 3);
    let server = match base[authority_start..].find('/') {
        Some(i) => &base[..authority_start + i],
        None => base,
    };
    match query {
        Some(q) => format!("{server}/{db}?{q}"),
        None => format!("{server}/{db}"),
    }
}

/// `store_test!(name)` runs `async fn name(db: TestDb)` as `name::sqlite` and
/// `name::postgres`.
macro_rules! store_test {
    ($name:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn sqlite() {
                super::run_sqlite(super::$name).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn postgres() {
                super::run_postgres(stringify!($name), super::$name).await
            }
        }
    };
}

/// A clock the test moves by hand.
#[derive(Clone)]
struct TestClock(Arc<AtomicI64>);

impl TestClock {
    fn new(start: i64) -> Self {
        TestClock(Arc::new(AtomicI64::new(start)))
    }
    fn advance(&self, secs: i64) {
        self.0.fetch_add(secs, Ordering::SeqCst);
    }
    fn install(&self, store: Store) -> Store {
        let t = self.0.clone();
        store.with_clock(move || t.load(Ordering::SeqCst))
    }
}

fn id(name: &str) -> DeviceId {
    DeviceId::new(name).unwrap()
}

fn fqdn(name: &str) -> Fqdn {
    Fqdn::new(name).unwrap()
}

fn mac(text: &str) -> MacAddr {
    parse_mac(text).unwrap()
}

async fn add_node(store: &Store, name: &str) -> Device {
    store.add_device(NewDevice::node(id(name))).await.unwrap().0
}

fn token_error(result: Result<Device, StoreError>) -> TokenError {
    match result {
        Err(StoreError::Token(e)) => e,
        other => panic!("expected a token error, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------
// Schema and deployment

store_test!(migrations_create_a_new_store);
async fn migrations_create_a_new_store(db: TestDb) {
    let store = db.open().await;
    assert_eq!(store.backend(), db.backend);
    assert_eq!(store.deployment().await.unwrap(), None);
    assert!(store.devices().await.unwrap().is_empty());
    assert!(matches!(
        store.add_device(NewDevice::node(id("a"))).await,
        Err(StoreError::NotInitialised)
    ));
    store.close().await;
    // Opening again runs the (already applied) migrations again: nothing changes.
    let again = db.open().await;
    assert_eq!(again.deployment().await.unwrap(), None);
    if db.backend == Backend::Sqlite {
        let path = db.url.strip_prefix("sqlite://").unwrap();
        assert!(std::path::Path::new(path).is_file(), "the file was created");
        let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
            .fetch_one(&mut sqlx::SqliteConnection::connect(&db.url).await.unwrap())
            .await
            .unwrap();
        assert_eq!(mode, "wal");
    }
}

store_test!(deployment_init_is_idempotent_and_refuses_changes);
async fn deployment_init_is_idempotent_and_refuses_changes(db: TestDb) {
    let store = db.open().await;
    let wanted = DeploymentSettings::default();
    let first = store.init_deployment(&wanted).await.unwrap();
    assert_eq!(first.overlay_domain.as_str(), "cyphonic.internal");
    assert_eq!(first.ipv4_prefix.to_string(), "100.64.0.0/10");
    assert_eq!(store.init_deployment(&wanted).await.unwrap(), first);
    assert_eq!(store.deployment().await.unwrap(), Some(first.clone()));

    // The same settings with the stored IPv6 prefix spelled out are the same.
    let explicit = DeploymentSettings {
        ipv6_prefix: Some(first.ipv6_prefix),
        ..wanted.clone()
    };
    assert_eq!(store.init_deployment(&explicit).await.unwrap(), first);

    // A different domain: refused, and the message says what differs.
    let other_domain = DeploymentSettings {
        overlay_domain: fqdn("example.org"),
        ..wanted.clone()
    };
    match store.init_deployment(&other_domain).await {
        Err(StoreError::DeploymentMismatch(diffs)) => {
            assert_eq!(diffs.len(), 1);
            assert_eq!(diffs[0].setting, "overlay_domain");
            assert_eq!(diffs[0].stored, "cyphonic.internal");
            assert_eq!(diffs[0].requested, "example.org");
        }
        other => panic!("expected a mismatch, got {other:?}"),
    }
    let e = store
        .init_deployment(&other_domain)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("overlay_domain is cyphonic.internal in the store but example.org"),
        "{e}"
    );

    // Everything different at once: every difference listed.
    let all_different = DeploymentSettings {
        overlay_domain: fqdn("example.org"),
        ipv4_prefix: "10.0.0.0/8".parse().unwrap(),
        ipv6_prefix: Some("fd00:1:2::/48".parse().unwrap()),
    };
    match store.init_deployment(&all_different).await {
        Err(StoreError::DeploymentMismatch(diffs)) => {
            let names: Vec<_> = diffs.iter().map(|d| d.setting).collect();
            assert_eq!(names, ["overlay_domain", "ipv4_prefix", "ipv6_prefix"]);
        }
        other => panic!("expected a mismatch, got {other:?}"),
    }
    // Nothing was changed by the refused calls.
    assert_eq!(store.deployment().await.unwrap(), Some(first));

    // A prefix with no room for devices is refused up front.
    let tiny = DeploymentSettings {
        ipv4_prefix: "10.0.0.0/31".parse().unwrap(),
        ..wanted
    };
    assert!(matches!(
        db.open().await.init_deployment(&tiny).await,
        Err(StoreError::InvalidSetting(_))
    ));
}

store_test!(ula_prefix_is_generated_and_stable);
async fn ula_prefix_is_generated_and_stable(db: TestDb) {
    let store = db.open().await;
    let dep = store
        .init_deployment(&DeploymentSettings::default())
        .await
        .unwrap();
    let ula = dep.ipv6_prefix;
    assert_eq!(ula.len(), 48);
    assert_eq!(ula.network().octets()[0], 0xfd, "RFC 4193: fd00::/8");
    assert!(ula.is_unique_local());
    assert_ne!(
        ula.network().octets()[1..6],
        [0u8; 5],
        "the 40-bit Global ID is random"
    );
    store.close().await;
    let reopened = db.open().await;
    let again = reopened
        .init_deployment(&DeploymentSettings::default())
        .await
        .unwrap();
    assert_eq!(again.ipv6_prefix, ula, "not regenerated on restart");
    assert_eq!(again.created_at, dep.created_at);

    // A prefix the operator chooses is used as given.
    if db.backend == Backend::Sqlite {
        let store = Store::open("sqlite::memory:").await.unwrap();
        let chosen: Ipv6Prefix = "fd12:3456:789a::/48".parse().unwrap();
        let dep = store
            .init_deployment(&DeploymentSettings {
                ipv6_prefix: Some(chosen),
                ..DeploymentSettings::default()
            })
            .await
            .unwrap();
        assert_eq!(dep.ipv6_prefix, chosen);
        assert_ne!(chosen, ula);
    }
}

// ---------------------------------------------------------------------------------------
// Devices

store_test!(devices_add_list_show_remove);
async fn devices_add_list_show_remove(db: TestDb) {
    let store = db.init().await;
    let dep = store.deployment().await.unwrap().unwrap();
    let (gw, token) = store.add_device(NewDevice::node(id("GW1"))).await.unwrap();
    assert_eq!(gw.device_id.as_str(), "gw1", "names are lower-cased");
    assert_eq!(gw.fqdn.as_str(), "gw1.cyphonic.internal");
    assert_eq!(gw.kind, DeviceKind::Node);
    assert!(gw.ipv6_enabled);
    assert_eq!(gw.status, DeviceStatus::Active);
    assert!(!gw.node_id.is_zero());
    assert!(dep.ipv4_prefix.contains(gw.virtual_ipv4));
    assert!(dep.ipv6_prefix.contains(gw.virtual_ipv6));
    assert_eq!(token.device_id, gw.device_id);
    assert_eq!(token.secret.len(), 64);
    assert!(
        !format!("{token:?}").contains(&token.secret),
        "Debug hides the secret"
    );

    let mut cam = NewDevice::general_node(id("cam1"), gw.fqdn.clone(), mac("02:00:5E:10:00:01"));
    cam.ipv6_enabled = false;
    let (cam, _) = store.add_device(cam).await.unwrap();
    assert_eq!(
        cam.kind,
        DeviceKind::GeneralNode {
            adapter: gw.fqdn.clone(),
            mac: mac("02:00:5e:10:00:01")
        }
    );
    assert!(!cam.ipv6_enabled);
    let laptop = add_node(&store, "laptop").await;

    // show
    assert_eq!(store.device_by_id("CAM1").await.unwrap(), Some(cam.clone()));
    assert_eq!(store.device("gw1").await.unwrap(), gw);
    assert_eq!(
        store.device_by_fqdn(&cam.fqdn).await.unwrap(),
        Some(cam.clone())
    );
    assert_eq!(
        store.device_by_node_id(laptop.node_id).await.unwrap(),
        Some(laptop.clone())
    );
    assert_eq!(store.device_by_id("nobody").await.unwrap(), None);
    assert_eq!(store.device_by_id("not a name").await.unwrap(), None);
    let e = store.device("nobody").await.unwrap_err();
    assert_eq!(
        e.to_string(),
        "no device named nobody: list them with `cyphonic-cloud device list`"
    );
    // list
    let names: Vec<_> = store
        .devices()
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.device_id.to_string())
        .collect();
    assert_eq!(names, ["cam1", "gw1", "laptop"]);
    assert_eq!(
        store.general_nodes_of(&gw.fqdn).await.unwrap(),
        vec![cam.clone()]
    );
    assert!(store
        .general_nodes_of(&laptop.fqdn)
        .await
        .unwrap()
        .is_empty());

    // A general node needs a known adapter that is a node.
    let orphan = NewDevice::general_node(
        id("cam2"),
        fqdn("nope.cyphonic.internal"),
        mac("02:00:00:00:00:02"),
    );
    assert!(matches!(
        store.add_device(orphan).await,
        Err(StoreError::NoSuchAdapter(_))
    ));
    let behind_cam =
        NewDevice::general_node(id("cam3"), cam.fqdn.clone(), mac("02:00:00:00:00:03"));
    assert!(matches!(
        store.add_device(behind_cam).await,
        Err(StoreError::NoSuchAdapter(_))
    ));

    // remove: an adapter carrying general nodes first needs them gone.
    let e = store.remove_device("gw1").await.unwrap_err();
    assert!(matches!(e, StoreError::AdapterInUse { .. }), "{e}");
    assert!(e.to_string().contains("cam1"), "{e}");
    let (removed, serials) = store.remove_device("cam1").await.unwrap();
    assert_eq!(removed, cam);
    assert!(serials.is_empty());
    store.remove_device("gw1").await.unwrap();
    assert_eq!(store.device_by_id("cam1").await.unwrap(), None);
    assert_eq!(store.device_by_node_id(cam.node_id).await.unwrap(), None);
    assert!(matches!(
        store.remove_device("cam1").await,
        Err(StoreError::NoSuchDevice(_))
    ));
    assert_eq!(store.devices().await.unwrap(), vec![laptop]);
    // The name and the MAC are free again.
    let again = NewDevice::node(id("cam1"));
    assert!(store.add_device(again).await.is_ok());
}

store_test!(duplicates_are_refused);
async fn duplicates_are_refused(db: TestDb) {
    let store = db.init().await;
    let gw = add_node(&store, "gw").await;
    add_node(&store, "cam1").await;
    let e = store
        .add_device(NewDevice::node(id("Cam1")))
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::DeviceExists(_)), "{e:?}");
    assert_eq!(e.to_string(), "device cam1 already exists");

    let first = NewDevice::general_node(id("plc1"), gw.fqdn.clone(), mac("02:aa:bb:cc:dd:ee"));
    store.add_device(first).await.unwrap();
    let same_mac = NewDevice::general_node(id("plc2"), gw.fqdn.clone(), mac("02-AA-BB-CC-DD-EE"));
    let e = store.add_device(same_mac).await.unwrap_err();
    assert!(matches!(e, StoreError::MacTaken { .. }), "{e:?}");
    assert_eq!(
        e.to_string(),
        "MAC address 02:aa:bb:cc:dd:ee already belongs to general node plc1"
    );
    // A name that is not a DNS label never reaches the store.
    assert!(DeviceId::new("cam.1").is_err());
    assert!(DeviceId::new("cam_1").is_err());
    assert!(parse_mac("ff:ff:ff:ff:ff:ff").is_err());
    // A name that would make the FQDN too long for the domain.
    let long = "a".repeat(63);
    let domain = format!(
        "{}.{}.{}.example",
        "b".repeat(60),
        "c".repeat(60),
        "d".repeat(60)
    );
    let other = db.open().await;
    let s2 = Store::open("sqlite::memory:").await.unwrap();
    s2.init_deployment(&DeploymentSettings {
        overlay_domain: fqdn(&domain),
        ..DeploymentSettings::default()
    })
    .await
    .unwrap();
    assert!(matches!(
        s2.add_device(NewDevice::node(id(&long))).await,
        Err(StoreError::InvalidDeviceId { .. })
    ));
    assert_eq!(
        other.devices().await.unwrap().len(),
        3,
        "nothing half-added"
    );
}

fn assert_unique_addresses(devices: &[Device], v4: Ipv4Prefix, v6: Ipv6Prefix) {
    let mut seen4 = HashSet::new();
    let mut seen6 = HashSet::new();
    let mut ids = HashSet::new();
    let broadcast = Ipv4Addr::from(u32::from(v4.network()) | (u32::MAX >> v4.len()));
    for d in devices {
        assert!(
            v4.contains(d.virtual_ipv4),
            "{} outside {v4}",
            d.virtual_ipv4
        );
        assert!(
            v6.contains(d.virtual_ipv6),
            "{} outside {v6}",
            d.virtual_ipv6
        );
        assert_ne!(d.virtual_ipv4, v4.network(), "network address handed out");
        assert_ne!(d.virtual_ipv4, broadcast, "broadcast address handed out");
        assert_ne!(
            d.virtual_ipv6,
            v6.network(),
            "all-zero IPv6 host handed out"
        );
        assert!(seen4.insert(d.virtual_ipv4), "{} twice", d.virtual_ipv4);
        assert!(seen6.insert(d.virtual_ipv6), "{} twice", d.virtual_ipv6);
        assert!(ids.insert(d.node_id), "{} twice", d.node_id);
    }
}

store_test!(virtual_addresses_are_unique_and_never_network_or_broadcast);
async fn virtual_addresses_are_unique_and_never_network_or_broadcast(db: TestDb) {
    // A /27 has 30 usable addresses: fill it completely, so the network (.0) and
    // broadcast (.31) addresses would have to show up if they were ever handed out.
    let store = db.init_with_v4("10.20.30.64/27").await;
    let dep = store.deployment().await.unwrap().unwrap();
    let mut devices = Vec::new();
    for i in 0..30 {
        devices.push(add_node(&store, &format!("n{i}")).await);
    }
    assert_unique_addresses(&devices, dep.ipv4_prefix, dep.ipv6_prefix);
    let mut all: Vec<_> = devices.iter().map(|d| d.virtual_ipv4).collect();
    all.sort();
    let expected: Vec<_> = (65..=94).map(|h| Ipv4Addr::new(10, 20, 30, h)).collect();
    assert_eq!(all, expected);
    assert_eq!(store.devices().await.unwrap().len(), 30);
}

store_test!(many_devices_in_the_default_prefixes);
async fn many_devices_in_the_default_prefixes(db: TestDb) {
    let store = db.init().await;
    let dep = store.deployment().await.unwrap().unwrap();
    let mut devices = Vec::new();
    for i in 0..200 {
        devices.push(add_node(&store, &format!("host{i}")).await);
    }
    assert_unique_addresses(&devices, dep.ipv4_prefix, dep.ipv6_prefix);
    assert_eq!(store.devices().await.unwrap().len(), 200);
}

store_test!(small_prefix_fills_up_then_errors);
async fn small_prefix_fills_up_then_errors(db: TestDb) {
    let store = db.init_with_v4("192.168.77.8/29").await;
    let mut devices = Vec::new();
    for i in 0..6 {
        devices.push(add_node(&store, &format!("d{i}")).await);
    }
    let dep = store.deployment().await.unwrap().unwrap();
    assert_unique_addresses(&devices, dep.ipv4_prefix, dep.ipv6_prefix);
    let e = store
        .add_device(NewDevice::node(id("d6")))
        .await
        .unwrap_err();
    match &e {
        StoreError::PrefixFull {
            family,
            prefix,
            capacity,
        } => {
            assert_eq!(*family, "IPv4");
            assert_eq!(prefix, "192.168.77.8/29");
            assert_eq!(*capacity, 6);
        }
        other => panic!("expected PrefixFull, got {other:?}"),
    }
    assert!(e.to_string().contains("192.168.77.8/29 is full"), "{e}");
    assert_eq!(store.device_by_id("d6").await.unwrap(), None);
    // Removing a device frees its address for the next one.
    let (gone, _) = store.remove_device("d3").await.unwrap();
    let next = add_node(&store, "d6").await;
    assert_eq!(next.virtual_ipv4, gone.virtual_ipv4);
}

store_test!(devices_survive_a_restart);
async fn devices_survive_a_restart(db: TestDb) {
    let store = db.init().await;
    let gw = add_node(&store, "gw").await;
    let cam = store
        .add_device(NewDevice::general_node(
            id("cam"),
            gw.fqdn.clone(),
            mac("02:01:02:03:04:05"),
        ))
        .await
        .unwrap()
        .0;
    let dep = store.deployment().await.unwrap().unwrap();
    store.close().await;
    drop(store);

    let store = db.open().await;
    assert_eq!(
        store
            .init_deployment(&DeploymentSettings::default())
            .await
            .unwrap(),
        dep
    );
    assert_eq!(store.device("gw").await.unwrap(), gw);
    assert_eq!(store.device("cam").await.unwrap(), cam);
    let by_node_id = store.device_by_node_id(cam.node_id).await.unwrap().unwrap();
    assert_eq!(by_node_id.fqdn, cam.fqdn);
    assert_eq!(by_node_id.virtual_ipv4, cam.virtual_ipv4);
    assert_eq!(by_node_id.virtual_ipv6, cam.virtual_ipv6);
    // New devices after the restart do not get the old addresses.
    let next = add_node(&store, "next").await;
    assert_unique_addresses(&[gw, cam, next], dep.ipv4_prefix, dep.ipv6_prefix);
}

// ---------------------------------------------------------------------------------------
// Enrollment tokens

store_test!(enrollment_token_is_one_time);
async fn enrollment_token_is_one_time(db: TestDb) {
    let store = db.init().await;
    let (dev, token) = store.add_device(NewDevice::node(id("n1"))).await.unwrap();
    assert_eq!(
        token_error(store.consume_enrollment_token("n1", "00").await),
        TokenError::Unknown
    );
    let used = store
        .consume_enrollment_token("N1", &token.secret)
        .await
        .unwrap();
    assert_eq!(used, dev);
    assert_eq!(
        token_error(store.consume_enrollment_token("n1", &token.secret).await),
        TokenError::AlreadyUsed { device: id("n1") }
    );
    // A new token works once, and replaces older unused ones.
    let t2 = store
        .new_enrollment_token("n1", Duration::from_secs(60))
        .await
        .unwrap();
    let t3 = store
        .new_enrollment_token("n1", Duration::from_secs(60))
        .await
        .unwrap();
    assert_ne!(t2.secret, t3.secret);
    assert_eq!(
        token_error(store.consume_enrollment_token("n1", &t2.secret).await),
        TokenError::Unknown
    );
    // Pasted in upper case with a trailing newline: still the same token.
    let pasted = format!("{}\n", t3.secret.to_uppercase());
    store.consume_enrollment_token("n1", &pasted).await.unwrap();
    assert!(matches!(
        store
            .new_enrollment_token("ghost", Duration::from_secs(60))
            .await,
        Err(StoreError::NoSuchDevice(_))
    ));
}

store_test!(enrollment_token_expires);
async fn enrollment_token_expires(db: TestDb) {
    let clock = TestClock::new(1_800_000_000);
    let store = clock.install(db.init().await);
    let mut new = NewDevice::node(id("n1"));
    new.token_ttl = Duration::from_secs(3600);
    let (_, token) = store.add_device(new).await.unwrap();
    assert_eq!(token.expires_at, 1_800_000_000 + 3600);
    clock.advance(3600);
    assert_eq!(
        token_error(store.consume_enrollment_token("n1", &token.secret).await),
        TokenError::Expired {
            device: id("n1"),
            expired_at: 1_800_003_600
        }
    );
    // One second before expiry it works.
    let t = store
        .new_enrollment_token("n1", Duration::from_secs(10))
        .await
        .unwrap();
    clock.advance(9);
    store
        .consume_enrollment_token("n1", &t.secret)
        .await
        .unwrap();
    // A TTL of zero is expired at once.
    let t0 = store
        .new_enrollment_token("n1", Duration::ZERO)
        .await
        .unwrap();
    assert!(matches!(
        token_error(store.consume_enrollment_token("n1", &t0.secret).await),
        TokenError::Expired { .. }
    ));
    // The default TTL is 24 h.
    let (_, t24) = store.add_device(NewDevice::node(id("n2"))).await.unwrap();
    assert_eq!(t24.expires_at - clock.0.load(Ordering::SeqCst), 24 * 3600);
}

store_test!(enrollment_token_for_another_device_is_refused);
async fn enrollment_token_for_another_device_is_refused(db: TestDb) {
    let store = db.init().await;
    let (_, t1) = store.add_device(NewDevice::node(id("n1"))).await.unwrap();
    add_node(&store, "n2").await;
    let e = token_error(store.consume_enrollment_token("n2", &t1.secret).await);
    assert_eq!(
        e,
        TokenError::WrongDevice {
            issued_for: id("n1"),
            presented_as: "n2".into()
        }
    );
    // The failed attempt did not use it up.
    store
        .consume_enrollment_token("n1", &t1.secret)
        .await
        .unwrap();
}

store_test!(enrollment_token_of_a_revoked_device_is_refused);
async fn enrollment_token_of_a_revoked_device_is_refused(db: TestDb) {
    let store = db.init().await;
    let (_, t1) = store.add_device(NewDevice::node(id("n1"))).await.unwrap();
    store.revoke_device("n1").await.unwrap();
    assert_eq!(
        token_error(store.consume_enrollment_token("n1", &t1.secret).await),
        TokenError::DeviceRevoked { device: id("n1") }
    );
    assert!(matches!(
        store
            .new_enrollment_token("n1", Duration::from_secs(60))
            .await,
        Err(StoreError::DeviceRevoked(_))
    ));
}

store_test!(concurrent_consumption_of_one_token_has_one_winner);
async fn concurrent_consumption_of_one_token_has_one_winner(db: TestDb) {
    let store = db.init().await;
    // A second pool on the same database, as a second AS instance would have.
    let other = db.open().await;
    add_node(&store, "n1").await;
    for round in 0..20 {
        let token = store
            .new_enrollment_token("n1", Duration::from_secs(60))
            .await
            .unwrap();
        let barrier = Arc::new(tokio::sync::Barrier::new(2));
        let tasks: Vec<_> = [store.clone(), other.clone()]
            .into_iter()
            .map(|s| {
                let secret = token.secret.clone();
                let barrier = barrier.clone();
                tokio::spawn(async move {
                    barrier.wait().await;
                    s.consume_enrollment_token("n1", &secret).await
                })
            })
            .collect();
        let mut ok = 0;
        for t in tasks {
            match t.await.unwrap() {
                Ok(_) => ok += 1,
                Err(StoreError::Token(TokenError::AlreadyUsed { .. })) => {}
                Err(e) => panic!("round {round}: unexpected error {e:?}"),
            }
        }
        assert_eq!(ok, 1, "round {round}: exactly one consumer succeeds");
    }
    // And with more contenders.
    let token = store
        .new_enrollment_token("n1", Duration::from_secs(60))
        .await
        .unwrap();
    let barrier = Arc::new(tokio::sync::Barrier::new(8));
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let s = if i % 2 == 0 {
                store.clone()
            } else {
                other.clone()
            };
            let secret = token.secret.clone();
            let barrier = barrier.clone();
            tokio::spawn(async move {
                barrier.wait().await;
                s.consume_enrollment_token("n1", &secret).await.is_ok()
            })
        })
        .collect();
    let mut winners = 0;
    for t in tasks {
        winners += usize::from(t.await.unwrap());
    }
    assert_eq!(winners, 1);
}

store_test!(concurrent_add_device_gives_unique_addresses);
async fn concurrent_add_device_gives_unique_addresses(db: TestDb) {
    // 24 devices into a /27 (30 addresses) from two "instances" at once: collisions on
    // addresses are likely and must be resolved by retrying.
    let store = db.init_with_v4("10.9.8.0/27").await;
    let other = db.open().await;
    let dep = store.deployment().await.unwrap().unwrap();
    let barrier = Arc::new(tokio::sync::Barrier::new(24));
    let tasks: Vec<_> = (0..24)
        .map(|i| {
            let s = if i % 2 == 0 {
                store.clone()
            } else {
                other.clone()
            };
            let barrier = barrier.clone();
            tokio::spawn(async move {
                barrier.wait().await;
                s.add_device(NewDevice::node(DeviceId::new(&format!("c{i}")).unwrap()))
                    .await
            })
        })
        .collect();
    let mut devices = Vec::new();
    for t in tasks {
        devices.push(t.await.unwrap().unwrap().0);
    }
    assert_unique_addresses(&devices, dep.ipv4_prefix, dep.ipv6_prefix);
    assert_eq!(store.devices().await.unwrap(), {
        let mut d = devices.clone();
        d.sort_by(|a, b| a.device_id.cmp(&b.device_id));
        d
    });
    // The same name from two tasks at once: one wins, the other is told it exists.
    let tasks: Vec<_> = [store.clone(), other.clone()]
        .into_iter()
        .map(|s| {
            tokio::spawn(async move {
                s.add_device(NewDevice::node(DeviceId::new("same").unwrap()))
                    .await
            })
        })
        .collect();
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.unwrap());
    }
    let errors: Vec<String> = results
        .iter()
        .filter_map(|r| r.as_ref().err().map(|e| format!("{e:?}")))
        .collect();
    assert_eq!(
        results.iter().filter(|r| r.is_ok()).count(),
        1,
        "{errors:?}"
    );
    assert!(
        results
            .iter()
            .any(|r| matches!(r, Err(StoreError::DeviceExists(_)))),
        "{errors:?}"
    );
}

// ---------------------------------------------------------------------------------------
// Certificates and revocation

store_test!(certificates_are_recorded_and_checked);
async fn certificates_are_recorded_and_checked(db: TestDb) {
    let clock = TestClock::new(1_800_000_000);
    let store = clock.install(db.init().await);
    add_node(&store, "n1").await;
    let rec = store
        .record_certificate("n1", "00:1A:2B", 1_800_000_000 + 86_400)
        .await
        .unwrap();
    assert_eq!(rec.serial, "1a2b");
    assert_eq!(rec.device_id, id("n1"));
    assert_eq!(rec.revoked_at, None);
    assert_eq!(store.certificate("1A2B").await.unwrap(), Some(rec.clone()));
    assert!(store.is_certificate_active("1a2b").await.unwrap());
    assert!(
        !store.is_certificate_active("ffff").await.unwrap(),
        "unknown serial"
    );
    assert!(!store.is_certificate_active("not hex").await.unwrap());
    assert!(matches!(
        store.record_certificate("n1", "1a2b", 0).await,
        Err(StoreError::DuplicateSerial(_))
    ));
    assert!(matches!(
        store.record_certificate("ghost", "99", 0).await,
        Err(StoreError::NoSuchDevice(_))
    ));
    assert!(matches!(
        store.record_certificate("n1", "xyz", 0).await,
        Err(StoreError::InvalidSerial(_))
    ));
    // Expiry.
    clock.advance(86_400);
    assert!(
        !store.is_certificate_active("1a2b").await.unwrap(),
        "expired"
    );
    // Revoking one certificate leaves the device and its other certificates alone.
    let far = 1_900_000_000;
    store.record_certificate("n1", "0b", far).await.unwrap();
    store.record_certificate("n1", "0c", far).await.unwrap();
    let revoked = store.revoke_certificate("b").await.unwrap();
    assert!(revoked.revoked_at.is_some());
    assert!(!store.is_certificate_active("0b").await.unwrap());
    assert!(store.is_certificate_active("0c").await.unwrap());
    assert_eq!(store.certificates_of("n1").await.unwrap().len(), 3);
}

store_test!(revoking_a_device_returns_its_serials);
async fn revoking_a_device_returns_its_serials(db: TestDb) {
    let store = db.init().await;
    add_node(&store, "n1").await;
    add_node(&store, "n2").await;
    let far = 4_000_000_000;
    store.record_certificate("n1", "a1", far).await.unwrap();
    store.record_certificate("n1", "a2", far).await.unwrap();
    store.record_certificate("n2", "b1", far).await.unwrap();

    let (dev, serials) = store.revoke_device("n1").await.unwrap();
    assert!(matches!(dev.status, DeviceStatus::Revoked { .. }));
    assert_eq!(serials, ["a1", "a2"]);
    assert!(!store.is_certificate_active("a1").await.unwrap());
    assert!(!store.is_certificate_active("a2").await.unwrap());
    assert!(store
        .certificate("a1")
        .await
        .unwrap()
        .unwrap()
        .revoked_at
        .is_some());
    assert!(
        store.is_certificate_active("b1").await.unwrap(),
        "other devices untouched"
    );
    assert!(!store.device("n1").await.unwrap().is_active());
    // No new certificate for a revoked device.
    assert!(matches!(
        store.record_certificate("n1", "a3", far).await,
        Err(StoreError::DeviceRevoked(_))
    ));
    // Again: same serials, same revocation time (so the CA can simply retry).
    let (dev2, serials2) = store.revoke_device("n1").await.unwrap();
    assert_eq!(dev2.status, dev.status);
    assert_eq!(serials2, serials);
    assert!(matches!(
        store.revoke_device("ghost").await,
        Err(StoreError::NoSuchDevice(_))
    ));
    // Removing a device hands back its serials too, and forgets them.
    let (_, removed) = store.remove_device("n2").await.unwrap();
    assert_eq!(removed, ["b1"]);
    assert_eq!(store.certificate("b1").await.unwrap(), None);
    assert!(!store.is_certificate_active("b1").await.unwrap());
}

// ---------------------------------------------------------------------------------------
// SQLite specifics

#[tokio::test]
async fn sqlite_in_memory_store_works_with_its_single_connection() {
    let store = Store::open("sqlite::memory:").await.unwrap();
    store
        .init_deployment(&DeploymentSettings::default())
        .await
        .unwrap();
    let (_, token) = store.add_device(NewDevice::node(id("m1"))).await.unwrap();
    store
        .consume_enrollment_token("m1", &token.secret)
        .await
        .unwrap();
    assert_eq!(store.devices().await.unwrap().len(), 1);
}

#[tokio::test]
async fn unsupported_urls_are_refused_with_a_hint() {
    let e = Store::open("mysql://u:secret@h/db").await.unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("use sqlite://PATH"), "{msg}");
    assert!(!msg.contains("secret"), "password leaked: {msg}");
    // A file that cannot be created. (An unreachable PostgreSQL server is retried for
    // 30 s by the pool before the same `Open` error, so it is not tried here.)
    let e = Store::open("sqlite:///proc/cyphonic-no-such-dir/cloud.db")
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::Open { .. }), "{e:?}");
    assert!(
        e.to_string()
            .contains("/proc/cyphonic-no-such-dir/cloud.db"),
        "{e}"
    );
}
