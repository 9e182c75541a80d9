//! One cloud process: the state it needs on disk (CA, service certificates, store),
//! one UDP socket, and the roles it serves, dispatched by ALPN (SPEC §3).
//!
//! Revocation: the CA's CRL file is the source of truth. `device revoke` adds the
//! device's certificates to it; every running process watches the file, rebuilds its
//! TLS configuration with the new CRL (new handshakes are refused at once), and
//! closes the live connections whose certificate serial is now revoked.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};
use cyphonic_pki::{Ca, Credentials, TrustAnchor};
use cyphonic_proto::{Fqdn, NodeId, RelayToken};

use crate::as_service::{AsService, CsrSigner, NmsAddress, SignedCert};
use crate::config::{CloudConfig, Role};
use crate::identity::{Peer, PeerRole};
use crate::nms::{Nms, TrsTarget};
use crate::store::{Deployment, DeploymentSettings, Ipv4Prefix, Store};
use crate::trs::{RelayLink, Trs};
use cyphonic_pki::quic::{self, ALPN_AS, ALPN_NMS, ALPN_TRS};

/// Lifetime of the CA and of service certificates created on first start.
const CA_DAYS: u32 = 3650;
const SERVICE_CERT_DAYS: u32 = 825;
/// How often the CRL file is checked for changes.
const CRL_POLL: Duration = Duration::from_millis(500);

/// The on-disk state of a deployment, prepared (created on first start).
pub struct State {
    pub ca: Arc<Mutex<Ca>>,
    pub ca_dir: PathBuf,
    pub store: Store,
    pub deployment: Deployment,
    pub certs_dir: PathBuf,
}

fn role_cert_role(role: Role) -> cyphonic_pki::Role {
    match role {
        Role::As => cyphonic_pki::Role::As,
        Role::Nms => cyphonic_pki::Role::Nms,
        Role::Trs => cyphonic_pki::Role::Trs,
    }
}

/// The TLS server name of a role's service: `<role>.<overlay domain>` (a node sets
/// it as SNI when it connects to AS, NMS or TRS).
pub fn service_name(role: Role, domain: &Fqdn) -> String {
    format!("{}.{}", role.name(), domain)
}

impl State {
    /// Open (or create) the CA, the service certificates and the store.
    pub async fn prepare(cfg: &CloudConfig) -> Result<State> {
        std::fs::create_dir_all(&cfg.state_dir).with_context(|| {
            format!("cannot create state directory {}", cfg.state_dir.display())
        })?;
        let ca_dir = cfg.ca_dir();
        let ca = if ca_dir.join("ca.crt").exists() {
            Ca::open(&ca_dir)?
        } else {
            tracing::info!(dir = %ca_dir.display(), domain = %cfg.overlay_domain, "creating the deployment CA");
            Ca::init(&ca_dir, &cfg.overlay_domain, CA_DAYS)?
        };
        if ca.domain() != &cfg.overlay_domain {
            anyhow::bail!(
                "the CA in {} is for overlay domain {}, but the configuration says {}: fix \
                 `overlay_domain` or point `state_dir` at the right deployment",
                ca_dir.display(),
                ca.domain(),
                cfg.overlay_domain
            );
        }
        let store = Store::open(&cfg.database_url()).await?;
        let ipv4_prefix: Ipv4Prefix = cfg
            .ipv4_prefix
            .parse()
            .with_context(|| format!("`ipv4_prefix` {:?} is not a prefix", cfg.ipv4_prefix))?;
        let deployment = store
            .init_deployment(&DeploymentSettings {
                overlay_domain: cfg.overlay_domain.clone(),
                ipv4_prefix,
                ipv6_prefix: None,
            })
            .await?;
        let certs_dir = cfg.certs_dir();
        std::fs::create_dir_all(&certs_dir)
            .with_context(|| format!("cannot create {}", certs_dir.display()))?;
        let state = State {
            ca: Arc::new(Mutex::new(ca)),
            ca_dir,
            store,
            deployment,
            certs_dir,
        };
        for role in Role::ALL {
            state.ensure_service_cert(cfg, role)?;
        }
        Ok(state)
    }

    fn ca(&self) -> std::sync::MutexGuard<'_, Ca> {
        match self.ca.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    fn cert_paths(&self, role: Role) -> (PathBuf, PathBuf) {
        (
            self.certs_dir.join(format!("{}.crt", role.name())),
            self.certs_dir.join(format!("{}.key", role.name())),
        )
    }

    /// Issue the role's service certificate on first start.
    fn ensure_service_cert(&self, cfg: &CloudConfig, role: Role) -> Result<()> {
        let (crt, key) = self.cert_paths(role);
        if crt.exists() && key.exists() {
            return Ok(());
        }
        let (v4, v6, _) = cfg.advertised();
        let ips: Vec<std::net::IpAddr> = v4
            .map(std::net::IpAddr::V4)
            .into_iter()
            .chain(v6.map(std::net::IpAddr::V6))
            .collect();
        let name = service_name(role, &cfg.overlay_domain);
        let issued = self.ca().issue_service(
            role_cert_role(role),
            std::slice::from_ref(&name),
            &ips,
            SERVICE_CERT_DAYS,
        )?;
        let key_pem = issued
            .key_pem
            .as_deref()
            .context("the CA returned no key for a service certificate")?;
        cyphonic_pki::write_private_key(&key, key_pem)?;
        std::fs::write(&crt, &issued.cert_pem)
            .with_context(|| format!("cannot write {}", crt.display()))?;
        tracing::info!(%name, serial = %issued.serial, "issued service certificate");
        Ok(())
    }

    pub fn credentials(&self, role: Role) -> Result<Credentials> {
        let (crt, key) = self.cert_paths(role);
        Ok(Credentials::load(&crt, &key)?)
    }

    pub fn crl_path(&self) -> PathBuf {
        self.ca_dir.join("crl.pem")
    }

    /// The CA certificate and the current CRL.
    pub fn trust(&self) -> Result<TrustAnchor> {
        Ok(TrustAnchor::load(
            &self.ca_dir.join("ca.crt"),
            Some(&self.crl_path()),
        )?)
    }

    /// Add certificates to the CRL (already revoked ones are fine).
    pub fn revoke_serials(&self, serials: &[String]) -> Result<()> {
        let mut ca = self.ca();
        for s in serials {
            ca.revoke_if_not(s)?;
        }
        Ok(())
    }
}

/// Signs node CSRs at enrollment with the deployment CA.
struct CaSigner {
    ca: Arc<Mutex<Ca>>,
    days: u32,
}

impl CsrSigner for CaSigner {
    fn check(&self, csr_der: &[u8]) -> Result<(), String> {
        cyphonic_pki::check_csr(csr_der).map_err(|e| e.to_string())
    }

    fn sign(&self, csr_der: &[u8], fqdn: &Fqdn, node_id: NodeId) -> Result<SignedCert, String> {
        let mut ca = match self.ca.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        let issued = ca
            .sign_csr(csr_der, fqdn, Some(node_id), self.days)
            .map_err(|e| e.to_string())?;
        Ok(SignedCert {
            cert_der: issued.cert_der,
            serial: issued.serial,
            not_after: issued.not_after,
        })
    }

    fn ca_cert_der(&self) -> Vec<u8> {
        match self.ca.lock() {
            Ok(g) => g.cert_der().to_vec(),
            Err(p) => p.into_inner().cert_der().to_vec(),
        }
    }
}

/// Live connections by certificate serial, so revocation can close them.
#[derive(Default)]
struct Live {
    conns: Mutex<HashMap<usize, (String, quinn::Connection)>>,
}

impl Live {
    fn add(&self, serial: String, conn: quinn::Connection) {
        if let Ok(mut m) = self.conns.lock() {
            m.insert(conn.stable_id(), (serial, conn));
        }
    }
    fn remove(&self, id: usize) {
        if let Ok(mut m) = self.conns.lock() {
            m.remove(&id);
        }
    }
    /// Close every connection whose serial is in `revoked`; returns how many.
    fn close_revoked(&self, revoked: &HashSet<String>) -> usize {
        let Ok(m) = self.conns.lock() else { return 0 };
        let mut n = 0;
        for (serial, conn) in m.values() {
            if revoked.contains(serial) {
                conn.close(
                    quinn::VarInt::from_u32(u32::from(
                        cyphonic_proto::Flag::CertificateRevoked.code(),
                    )),
                    b"certificate revoked",
                );
                n += 1;
            }
        }
        n
    }
}

/// A running cloud process.
pub struct Cloud {
    pub endpoint: quinn::Endpoint,
    pub local_addr: SocketAddr,
    pub nms: Option<Arc<Nms>>,
    pub trs: Option<Arc<Trs>>,
    pub store: Store,
    pub deployment: Deployment,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Cloud {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        self.endpoint.close(quinn::VarInt::from_u32(0), b"shutdown");
    }
}

fn server_config(
    state: &State,
    cfg: &CloudConfig,
    trust: &TrustAnchor,
) -> Result<quinn::ServerConfig> {
    let mut resolver = cyphonic_pki::SniResolver::new();
    let mut alpn: Vec<Vec<u8>> = Vec::new();
    for role in &cfg.roles {
        resolver.add(
            &service_name(*role, &cfg.overlay_domain),
            &state.credentials(*role)?,
        )?;
        alpn.push(
            match role {
                Role::As => ALPN_AS,
                Role::Nms => ALPN_NMS,
                Role::Trs => ALPN_TRS,
            }
            .to_vec(),
        );
    }
    let alpn_refs: Vec<&[u8]> = alpn.iter().map(|a| a.as_slice()).collect();
    let tls = cyphonic_pki::server_config(
        Arc::new(resolver),
        trust,
        cyphonic_pki::ClientAuth::Optional,
        &alpn_refs,
    )?;
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
        .context("TLS configuration has no TLS 1.3 cipher suite QUIC can use")?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    server.transport_config(Arc::new(quic::signaling_transport(
        None,
        cfg.timers.idle_timeout(),
    )));
    Ok(server)
}

impl Cloud {
    /// Prepare the state and start serving.
    pub async fn start(cfg: CloudConfig) -> Result<Cloud> {
        let state = State::prepare(&cfg).await?;
        let trust = state.trust()?;

        let socket = quic::bind_udp(cfg.listen).with_context(|| {
            format!(
                "cannot listen on UDP {}: is another process using it, or does binding a port \
                 below 1024 need root? Choose another with `listen` / --listen",
                cfg.listen
            )
        })?;
        let local_addr = socket.local_addr()?;
        let mut udp = quic::wrap_socket(socket)?;
        let trs = cfg.serves(Role::Trs).then(|| Arc::new(Trs::default()));
        if let Some(t) = &trs {
            udp = t.wrap_socket(udp);
            t.spawn_expiry();
        }
        let endpoint = quic::endpoint(
            udp,
            RelayToken::random(),
            Some(server_config(&state, &cfg, &trust)?),
        )?;

        let (v4, v6, port) = cfg.advertised();
        let port = if port == 0 { local_addr.port() } else { port };
        let as_service = cfg.serves(Role::As).then(|| {
            Arc::new(AsService::new(
                state.store.clone(),
                Arc::new(CaSigner {
                    ca: state.ca.clone(),
                    days: cfg.node_cert_days,
                }),
                NmsAddress {
                    ipv4: v4,
                    ipv6: v6,
                    port,
                },
            ))
        });
        let nms = if cfg.serves(Role::Nms) {
            let mut targets = Vec::new();
            if cfg.trs.is_empty() {
                if let Some(t) = &trs {
                    targets.push(TrsTarget {
                        ipv4: v4,
                        ipv6: v6,
                        port,
                        link: RelayLink::Local(t.clone()),
                    });
                }
            } else {
                let creds = state.credentials(Role::Nms)?;
                let tls = cyphonic_pki::client_config(
                    Some(&creds),
                    &trust,
                    cyphonic_pki::Role::Trs,
                    &[ALPN_TRS],
                )?;
                let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
                    .context("TLS configuration unusable for QUIC")?;
                let client = quinn::ClientConfig::new(Arc::new(crypto));
                for t in &cfg.trs {
                    let addr = match (t.ipv6, t.ipv4) {
                        (_, Some(a)) => SocketAddr::new(a.into(), t.port),
                        (Some(a), None) => SocketAddr::new(a.into(), t.port),
                        (None, None) => continue,
                    };
                    targets.push(TrsTarget {
                        ipv4: t.ipv4,
                        ipv6: t.ipv6,
                        port: t.port,
                        link: RelayLink::Remote(Arc::new(crate::trs::RemoteTrs::new(
                            endpoint.clone(),
                            client.clone(),
                            addr,
                            service_name(Role::Trs, &cfg.overlay_domain),
                        ))),
                    });
                }
            }
            Some(Arc::new(Nms::new(
                state.store.clone(),
                targets,
                cfg.timers.clone(),
            )))
        } else {
            None
        };

        let live = Arc::new(Live::default());
        let tasks = vec![
            tokio::spawn(accept_loop(
                endpoint.clone(),
                as_service,
                nms.clone(),
                trs.clone(),
                live.clone(),
            )),
            tokio::spawn(watch_crl(
                endpoint.clone(),
                Arc::new(state),
                cfg.clone(),
                live,
            )),
        ];
        tracing::info!(%local_addr, roles = ?cfg.roles, domain = %cfg.overlay_domain, "cloud serving");
        let store = Store::open(&cfg.database_url()).await?;
        let deployment = store
            .deployment()
            .await?
            .context("deployment disappeared from the store")?;
        Ok(Cloud {
            endpoint,
            local_addr,
            nms,
            trs,
            store,
            deployment,
            tasks,
        })
    }
}

async fn accept_loop(
    endpoint: quinn::Endpoint,
    as_service: Option<Arc<AsService>>,
    nms: Option<Arc<Nms>>,
    trs: Option<Arc<Trs>>,
    live: Arc<Live>,
) {
    while let Some(incoming) = endpoint.accept().await {
        let (as_service, nms, trs, live) =
            (as_service.clone(), nms.clone(), trs.clone(), live.clone());
        tokio::spawn(async move {
            let conn = match incoming.await {
                Ok(c) => c,
                Err(e) => {
                    tracing::debug!(error = %e, "handshake failed");
                    return;
                }
            };
            let alpn = quic::alpn_of(&conn).unwrap_or_default();
            let peer = Peer::of_connection(&conn);
            let id = conn.stable_id();
            if let Some(p) = &peer {
                live.add(p.serial.clone(), conn.clone());
            }
            serve(conn, &alpn, peer, as_service, nms, trs).await;
            live.remove(id);
        });
    }
}

async fn serve(
    conn: quinn::Connection,
    alpn: &[u8],
    peer: Option<Peer>,
    as_service: Option<Arc<AsService>>,
    nms: Option<Arc<Nms>>,
    trs: Option<Arc<Trs>>,
) {
    let refuse = |why: &'static [u8]| {
        conn.close(
            quinn::VarInt::from_u32(u32::from(cyphonic_proto::Flag::Unauthenticated.code())),
            why,
        )
    };
    match alpn {
        a if a == ALPN_AS => {
            let Some(svc) = as_service else {
                return refuse(b"no AS here");
            };
            let peer = peer.map(Arc::new);
            crate::rpc::serve(conn, move |m| {
                let (svc, peer) = (svc.clone(), peer.clone());
                async move { Some(svc.handle(peer.as_deref(), m).await) }
            })
            .await
        }
        a if a == ALPN_NMS => match (nms, peer) {
            (Some(nms), Some(p)) if p.role == PeerRole::Node => nms.serve_connection(conn, p).await,
            _ => refuse(b"NMS needs a node certificate"),
        },
        a if a == ALPN_TRS => match (trs, peer) {
            (Some(trs), Some(p)) => trs.serve_connection(conn, p).await,
            _ => refuse(b"TRS needs a certificate"),
        },
        _ => refuse(b"unknown ALPN"),
    }
}

fn modified(p: &Path) -> Option<SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

/// Reload TLS with the current CRL whenever the CRL file changes, and close the live
/// connections of revoked certificates.
async fn watch_crl(
    endpoint: quinn::Endpoint,
    state: Arc<State>,
    cfg: CloudConfig,
    live: Arc<Live>,
) {
    let path = state.crl_path();
    let mut seen = modified(&path);
    let mut tick = tokio::time::interval(CRL_POLL);
    loop {
        tick.tick().await;
        let now = modified(&path);
        if now == seen {
            continue;
        }
        seen = now;
        let trust = match state.trust() {
            Ok(t) => t,
            Err(e) => {
                tracing::error!(error = %e, "cannot reload the CRL; keeping the previous one");
                continue;
            }
        };
        match server_config(&state, &cfg, &trust) {
            Ok(sc) => endpoint.set_server_config(Some(sc)),
            Err(e) => {
                tracing::error!(error = %e, "cannot rebuild TLS with the new CRL");
                continue;
            }
        }
        let revoked: HashSet<String> = trust.revoked_serials().into_iter().collect();
        let closed = live.close_revoked(&revoked);
        tracing::info!(revoked = revoked.len(), closed, "CRL reloaded");
    }
}

/// Run until SIGINT/SIGTERM. `up` prints what to try next.
pub async fn run_until_signal(cfg: CloudConfig, up: bool) -> Result<()> {
    let state_dir = cfg.state_dir.clone();
    let cloud = Cloud::start(cfg).await?;
    if up {
        let dir = state_dir.display();
        println!(
            "CYPHONIC cloud is up: AS, NMS and TRS on UDP {}",
            cloud.local_addr
        );
        println!("  overlay domain {}", cloud.deployment.overlay_domain);
        println!("  virtual IPv4   {}", cloud.deployment.ipv4_prefix);
        println!("  virtual IPv6   {}", cloud.deployment.ipv6_prefix);
        println!("  state          {dir} (CA, service certificates, SQLite)");
        println!();
        println!("Try next, in another terminal:");
        println!(
            "  cyphonic-cloud --state-dir {dir} device add laptop     # prints an enrollment token"
        );
        println!("  cyphonic-cloud --state-dir {dir} device list");
        println!("  cyphonic-ca list --dir {dir}/ca                        # certificates issued");
        println!("  cyphonic-cloud --state-dir {dir} device revoke laptop");
        println!("Stop with Ctrl-C; start again and every device keeps its NodeID and addresses.");
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
    cloud
        .endpoint
        .close(quinn::VarInt::from_u32(0), b"shutdown");
    cloud.endpoint.wait_idle().await;
    Ok(())
}
