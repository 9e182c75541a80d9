//! The node's side of the SPEC §6 start-up sequence: Enroll (first start only),
//! Login to AS, and the Registration that opens the standing NMS connection.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use cyphonic_pki::rpc::{self, TransactError};
use cyphonic_pki::{Credentials, Role};
use cyphonic_proto::body::{EnrollRequest, LoginRequest, RegistrationRequest};
use cyphonic_proto::{Body, Extension, Flag, Fqdn, Message, NodeId, RelayTokens};

use crate::endpoint::NodeEndpoint;

/// How long one signaling transaction with the cloud may take.
pub const CLOUD_TIMEOUT: Duration = Duration::from_secs(10);

/// What AS told the node at Login.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginInfo {
    pub node_id: NodeId,
    pub fqdn: Fqdn,
    pub virtual_ipv4: Ipv4Addr,
    pub virtual_ipv6: Ipv6Addr,
    /// The NMS to register with, in the address family the AS was reached over when
    /// NMS has one.
    pub nms: SocketAddr,
    /// Every NMS address the Login Response gave (`nms` first): a node that loses the
    /// family it used moves to the other.
    pub nms_all: Vec<SocketAddr>,
}

fn refused(what: &str, flag: Flag) -> anyhow::Error {
    let hint = match flag {
        Flag::CertificateRevoked => {
            "this device was revoked: ask the operator to add it again (`cyphonic-cloud device add`)"
        }
        Flag::NoDatabaseRecord => {
            "the cloud does not know this certificate: is the node pointed at the right deployment?"
        }
        Flag::PasswordMismatch => {
            "the enrollment token is wrong, used or unknown: issue a new one with `cyphonic-cloud \
             device token <name>`"
        }
        Flag::Timeout => "the enrollment token expired: issue a new one with `cyphonic-cloud device token <name>`",
        _ => "see the cloud's log",
    };
    anyhow::anyhow!("{what} refused with flag {flag:?}: {hint}")
}

fn transact_error(what: &str, e: TransactError) -> anyhow::Error {
    match e {
        TransactError::Refused(f) => refused(what, f),
        other => anyhow::anyhow!("{what} failed: {other}"),
    }
}

/// Enroll: a fresh key (written with mode 0600, never sent), a CSR, the one-time
/// token; the AS answers with the signed certificate. Writes the key and the
/// certificate and returns the credentials.
pub async fn enroll(
    ep: &NodeEndpoint,
    cloud: SocketAddr,
    domain: &Fqdn,
    device: &str,
    token: &str,
    cert_path: &Path,
    key_path: &Path,
) -> Result<Credentials> {
    let fqdn = Fqdn::in_domain(device, domain)
        .with_context(|| format!("device name {device:?} does not make a valid FQDN"))?;
    let (csr, key_pem) = cyphonic_pki::generate_csr(&fqdn)?;
    let conn = ep
        .connect_service(None, Role::As, cloud, domain)
        .await
        .context("cannot reach the AS to enroll")?;
    let req = Message::request(Body::EnrollRequest(EnrollRequest {
        device_id: device.to_owned(),
        secret: token.trim().as_bytes().to_vec(),
        csr,
    }));
    let resp = rpc::transact(&conn, &req, CLOUD_TIMEOUT)
        .await
        .map_err(|e| transact_error("enrollment", e))?;
    conn.close(quinn::VarInt::from_u32(0), b"enrolled");
    let Body::EnrollResponse(e) = resp.body else {
        return Err(refused("enrollment", resp.flag));
    };
    if resp.flag != Flag::Ok {
        return Err(refused("enrollment", resp.flag));
    }
    let creds = Credentials::from_der_and_key_pem(e.certificate.clone(), &key_pem)?;
    let id = creds.identity()?;
    if id.name != fqdn {
        bail!(
            "the AS signed a certificate for {} but this node is {}",
            id.name,
            fqdn
        );
    }
    cyphonic_pki::write_private_key(key_path, &key_pem)?;
    let pem = pem_certificate(&e.certificate);
    std::fs::write(cert_path, pem)
        .with_context(|| format!("cannot write {}", cert_path.display()))?;
    tracing::info!(%fqdn, cert = %cert_path.display(), "enrolled");
    Ok(creds)
}

fn pem_certificate(der: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut b64 = String::with_capacity(der.len() * 4 / 3 + 4);
    for chunk in der.chunks(3) {
        let n = match chunk {
            [a, b, c] => (u32::from(*a) << 16) | (u32::from(*b) << 8) | u32::from(*c),
            [a, b] => (u32::from(*a) << 16) | (u32::from(*b) << 8),
            [a] => u32::from(*a) << 16,
            _ => 0,
        };
        for i in 0..4 {
            if i <= chunk.len() {
                b64.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                b64.push('=');
            }
        }
    }
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

/// Login over mutual TLS (SPEC §6 start-up).
pub async fn login(
    ep: &NodeEndpoint,
    creds: &Credentials,
    cloud: SocketAddr,
    domain: &Fqdn,
) -> Result<LoginInfo> {
    let conn = ep
        .connect_service(Some(creds), Role::As, cloud, domain)
        .await
        .context("cannot reach the AS to log in")?;
    let resp = rpc::transact(
        &conn,
        &Message::request(LoginRequest::with_tls_certificate()),
        CLOUD_TIMEOUT,
    )
    .await;
    conn.close(quinn::VarInt::from_u32(0), b"logged in");
    let resp = match resp {
        Ok(r) => r,
        Err(TransactError::Connection(e)) => {
            bail!("the AS closed the connection ({e}): is this certificate revoked or from another deployment?")
        }
        Err(e) => return Err(transact_error("login", e)),
    };
    let node_id = resp.node_id();
    let Body::LoginResponse(l) = resp.body else {
        return Err(refused("login", resp.flag));
    };
    if resp.flag != Flag::Ok {
        return Err(refused("login", resp.flag));
    }
    let nms = match (cloud.ip(), l.nms_ipv4, l.nms_ipv6) {
        (IpAddr::V4(_), Some(a), _) | (IpAddr::V6(_), Some(a), None) => {
            SocketAddr::new(a.into(), l.nms_port)
        }
        (_, _, Some(a)) => SocketAddr::new(a.into(), l.nms_port),
        (_, None, None) => SocketAddr::new(cloud.ip(), l.nms_port),
    };
    let nms = unmapped(nms);
    let mut nms_all = vec![nms];
    for a in [
        l.nms_ipv4.map(|a| SocketAddr::new(a.into(), l.nms_port)),
        l.nms_ipv6.map(|a| SocketAddr::new(a.into(), l.nms_port)),
    ]
    .into_iter()
    .flatten()
    {
        if !nms_all.contains(&a) {
            nms_all.push(a);
        }
    }
    Ok(LoginInfo {
        node_id,
        fqdn: l.fqdn,
        virtual_ipv4: l.virtual_ipv4,
        virtual_ipv6: l.virtual_ipv6,
        nms,
        nms_all,
    })
}

pub fn unmapped(a: SocketAddr) -> SocketAddr {
    match a {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(v4.into(), v6.port()),
            None => a,
        },
        v4 => v4,
    }
}

/// The local address the host would use to reach `to` (no packet is sent: a UDP
/// connect only asks the routing table).
pub fn source_address_for(to: SocketAddr) -> Option<IpAddr> {
    let bind: SocketAddr = match to {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let s = std::net::UdpSocket::bind(bind).ok()?;
    s.connect(to).ok()?;
    Some(s.local_addr().ok()?.ip())
}

/// What the node reports at Registration: its own address toward NMS and its local
/// UDP port (NMS compares them with what it observes to set the NAT flag).
pub fn registration(ep: &NodeEndpoint, node_id: NodeId, nms: SocketAddr) -> Message {
    let local_port = ep.local_addr().port();
    let (v4, v6) = match source_address_for(nms) {
        Some(IpAddr::V4(a)) => (Some(a), None),
        Some(IpAddr::V6(a)) => (None, Some(a)),
        None => (None, None),
    };
    Message::request(Body::RegistrationRequest(RegistrationRequest {
        application_port: local_port,
        notification_type: Default::default(),
        node_ipv4: v4,
        node_ipv6: v6,
    }))
    .with_node_id(node_id)
    .with_extension(Extension::Relay(RelayTokens::own(ep.token)))
}

/// The outcome of a Registration.
#[derive(Debug, Clone)]
pub struct Registered {
    pub observed: Option<SocketAddr>,
    pub nat: bool,
}

/// Register on an open NMS connection.
pub async fn register(conn: &quinn::Connection, request: &Message) -> Result<Registered> {
    let resp = rpc::transact(conn, request, CLOUD_TIMEOUT)
        .await
        .map_err(|e| transact_error("registration", e))?;
    match (&resp.flag, &resp.body) {
        (Flag::Ok, Body::RegistrationResponse(r)) => Ok(Registered {
            observed: resp.observed_address().map(unmapped),
            nat: r.nat,
        }),
        (flag, _) => Err(refused("registration", *flag)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_wraps_base64() {
        let pem = pem_certificate(b"hello world!?");
        assert!(pem.starts_with("-----BEGIN CERTIFICATE-----\naGVsbG8gd29ybGQhPw==\n"));
        assert_eq!(
            pem_certificate(&[0u8; 48]).lines().nth(1).map(str::len),
            Some(64)
        );
    }

    #[test]
    fn unmaps_v4_mapped() {
        let a: SocketAddr = "[::ffff:203.0.113.5]:443".parse().unwrap();
        assert_eq!(
            unmapped(a),
            "203.0.113.5:443".parse::<SocketAddr>().unwrap()
        );
    }
}
