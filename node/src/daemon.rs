//! The node daemon: start-up (enroll if needed, login, TUN, register, DNS, control
//! socket), then serve until SIGINT/SIGTERM, then a clean shutdown (Finalization,
//! host DNS restored, TUN and its routes removed).

use std::net::Ipv6Addr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use cyphonic_pki::{Credentials, TrustAnchor};
use cyphonic_proto::body::DirectionTarget;
use cyphonic_proto::Fqdn;

use crate::cloud;
use crate::config::{parse_v4_prefix, NodeConfig};
use crate::control::{ControlServer, ControlState};
use crate::dns::host::HostDns;
use crate::dns::{DnsConfig, DnsServer, OverlayAnswer, OverlayError, OverlayResolver};
use crate::endpoint::{NodeEndpoint, TransportSettings};
use crate::node::{Node, NodeAcceptor, NodeSettings, RouteError};
use crate::tun::{self, Tun};

/// Overlay names are resolved by setting up the route (SPEC §6: a DNS query for a
/// peer FQDN triggers Direction Request).
struct Resolver(std::sync::Weak<Node>);

impl OverlayResolver for Resolver {
    fn resolve(
        &self,
        name: Fqdn,
    ) -> Pin<Box<dyn std::future::Future<Output = Result<OverlayAnswer, OverlayError>> + Send>>
    {
        let node = self.0.upgrade();
        Box::pin(async move {
            let Some(node) = node else {
                return Err(OverlayError::Unreachable("node stopped".into()));
            };
            if name == node.me.fqdn {
                return Ok(OverlayAnswer {
                    ipv4: Some(node.me.virtual_ipv4),
                    ipv6: Some(node.me.virtual_ipv6),
                });
            }
            match node.connect(DirectionTarget::Fqdn(name)).await {
                Ok(link) => Ok(OverlayAnswer {
                    ipv4: Some(link.peer.virtual_ipv4),
                    ipv6: Some(link.peer.virtual_ipv6),
                }),
                Err(RouteError::NoSuchName) => Err(OverlayError::NoSuchName),
                Err(RouteError::Unreachable(why)) => Err(OverlayError::Unreachable(why)),
            }
        })
    }
}

fn create_state_dir(cfg: &NodeConfig) -> Result<()> {
    std::fs::create_dir_all(&cfg.state_dir)
        .with_context(|| format!("cannot create state directory {}", cfg.state_dir.display()))?;
    Ok(())
}

/// Run the daemon until a signal.
pub async fn run(cfg: NodeConfig) -> Result<()> {
    cfg.validate()?;
    create_state_dir(&cfg)?;
    let cloud_addr = cfg.cloud.context("`cloud` is not set")?;
    let ca = cfg.ca_cert.clone().context("`ca_cert` is not set")?;
    let trust = TrustAnchor::load(&ca, None)
        .with_context(|| format!("cannot load the CA certificate {}", ca.display()))?;
    let ep = NodeEndpoint::bind(
        cfg.listen,
        trust,
        TransportSettings {
            keep_alive: cfg.peers.keep_alive(),
            cloud_idle: Duration::from_secs(30),
            path_mtu: cfg.peers.path_mtu,
            congestion: cfg.peers.congestion,
            fast_thread_policy: cfg.fast_thread_policy,
        },
    )?;
    let domain = &cfg.overlay_domain;
    let creds = if cfg.cert_path().exists() {
        Credentials::load(&cfg.cert_path(), &cfg.key_path())?
    } else {
        let device = cfg.device.as_deref().context("`device` is not set")?;
        let token = cfg
            .enrollment_token
            .as_deref()
            .context("`enrollment_token` is not set")?;
        cloud::enroll(
            &ep,
            cloud_addr,
            domain,
            device,
            token,
            &cfg.cert_path(),
            &cfg.key_path(),
        )
        .await?
    };
    let me = cloud::login(&ep, &creds, cloud_addr, domain).await?;
    tracing::info!(fqdn = %me.fqdn, node_id = %me.node_id, ipv4 = %me.virtual_ipv4,
        ipv6 = %me.virtual_ipv6, nms = %me.nms, "logged in");

    let (v4_net, v4_len) = parse_v4_prefix(&cfg.tun.ipv4_prefix)?;
    let v6_net = Ipv6Addr::from(u128::from(me.virtual_ipv6) & (u128::MAX << 80));
    let mtu = fit_mtu(cfg.tun.mtu, cfg.peers.path_mtu);
    let tun = Arc::new(Tun::create(
        &cfg.tun.name,
        mtu,
        (me.virtual_ipv4, v4_len),
        (me.virtual_ipv6, 48),
        cfg.tun.offload,
    )?);
    let settings = NodeSettings {
        cloud: cloud_addr,
        domain: domain.clone(),
        setup_timeout: cfg.peers.setup_timeout(),
        idle: cfg.peers.idle(),
        ipv4_prefix: (v4_net, v4_len),
        ipv6_prefix: (v6_net, 48),
        relay_only: cfg.peers.relay_only,
        fast_data: cfg.peers.fast_data,
    };
    let node = Node::new(ep.clone(), creds.clone(), me.clone(), settings, tun.clone());
    ep.add_identity(
        &me.fqdn,
        creds,
        Arc::new(NodeAcceptor(Arc::downgrade(&node))),
    )?;
    let mut tasks = vec![
        tokio::spawn(node.clone().run_cloud()),
        tokio::spawn(tun::pump(tun.clone(), node.clone())),
    ];
    {
        let node = node.clone();
        tasks.push(tokio::spawn(async move {
            let mut t = tokio::time::interval(Duration::from_secs(5));
            loop {
                t.tick().await;
                node.sweep();
            }
        }));
    }
    // SPEC §6 Mobility: address and route changes from netlink; a slow poll only as
    // a backstop for events the kernel dropped.
    match crate::netwatch::NetWatch::new() {
        Ok(watch) => {
            let node = node.clone();
            tasks.push(tokio::spawn(async move {
                loop {
                    tokio::select! {
                        r = watch.changed() => {
                            if let Err(e) = r {
                                tracing::error!(error = %e, "netlink watch failed; polling only");
                                tokio::time::sleep(Duration::from_secs(5)).await;
                            }
                            // Let a move's burst of events settle.
                            tokio::time::sleep(Duration::from_millis(30)).await;
                        }
                        _ = tokio::time::sleep(Duration::from_secs(10)) => {}
                    }
                    node.network_changed().await;
                }
            }));
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch address changes (netlink); mobility needs a restart")
        }
    }
    if !node.wait_registered(Duration::from_secs(15)).await {
        tracing::warn!("not registered with NMS yet; continuing and retrying in the background");
    }

    let mut dns_guard = None;
    let mut host_dns = None;
    if cfg.dns.enable {
        let mut upstreams = if cfg.dns.upstreams.is_empty() {
            HostDns::upstreams_from(&cfg.dns.resolv_conf)
        } else {
            cfg.dns.upstreams.clone()
        };
        upstreams.retain(|u| u.ip() != cfg.dns.listen.ip());
        let server = DnsServer::start(
            DnsConfig {
                listen: vec![cfg.dns.listen],
                domain: domain.clone(),
                upstreams: upstreams.clone(),
                ttl: 60,
                overlay_timeout: cfg.peers.setup_timeout(),
            },
            Arc::new(Resolver(Arc::downgrade(&node))),
        )
        .await
        .with_context(|| {
            format!(
                "cannot serve DNS on {}: set `dns.listen` or `dns.enable = false`",
                cfg.dns.listen
            )
        })?;
        tracing::info!(listen = %cfg.dns.listen, ?upstreams, "overlay DNS up");
        match HostDns::apply(
            cfg.dns.host_config,
            cfg.dns.listen.ip(),
            domain,
            &cfg.tun.name,
            &cfg.dns.resolv_conf,
            &cfg.dns_backup_path(),
        ) {
            Ok(h) => host_dns = Some(h),
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "could not point the host resolver at the overlay DNS")
            }
        }
        dns_guard = Some(server);
    }
    let control = ControlServer::start(
        &cfg.control_socket,
        Arc::new(ControlState {
            node: node.clone(),
            tun: cfg.tun.name.clone(),
            mtu,
            offload: tun.offload,
            dns: cfg.dns.enable.then_some(cfg.dns.listen),
        }),
    )?;
    tracing::info!(fqdn = %me.fqdn, control = %cfg.control_socket.display(), "node ready");

    wait_for_signal().await?;
    tracing::info!("shutting down");
    node.finalize(Duration::from_secs(2)).await;
    for t in &tasks {
        t.abort();
    }
    if let Some(h) = host_dns {
        if let Err(e) = h.restore() {
            tracing::error!(error = %format!("{e:#}"), "could not restore the host resolver configuration");
        }
    }
    drop(dns_guard);
    drop(control);
    ep.endpoint.close(quinn::VarInt::from_u32(0), b"shutdown");
    let _ = tokio::time::timeout(Duration::from_secs(1), ep.endpoint.wait_idle()).await;
    drop(node);
    drop(tun);
    tracing::info!("stopped");
    Ok(())
}

/// The overlay MTU: what was asked for, lowered so a full packet fits one datagram on
/// a path of `path_mtu` UDP payload bytes (QUIC short header with a 16-byte CID,
/// packet number, AEAD tag and DATAGRAM frame: at most 40 bytes; Capsule: 36).
pub fn fit_mtu(asked: u16, path_mtu: u16) -> u16 {
    const QUIC_OVERHEAD: u16 = 1 + 16 + 4 + 16 + 3;
    let fits = path_mtu.saturating_sub(QUIC_OVERHEAD + cyphonic_proto::CAPSULE_OVERHEAD as u16);
    if asked > fits {
        tracing::warn!(
            asked,
            fits,
            "tun.mtu lowered so a full packet fits one QUIC datagram"
        );
        fits.max(1280)
    } else {
        asked
    }
}

async fn wait_for_signal() -> Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mtu_fits_the_path() {
        assert_eq!(fit_mtu(1360, 1452), 1360);
        assert_eq!(fit_mtu(1500, 1452), 1452 - 40 - 36);
        assert_eq!(fit_mtu(1400, 1200), 1280);
    }
}
