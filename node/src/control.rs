//! The operator's view of a running daemon: a Unix socket answering `status` and
//! `peers` with one JSON document each (the CLI formats it for humans).

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use crate::fastdata::FastPathStatus;
use crate::node::{CloudStatus, Node};
use crate::peers::PeerStatus;

/// `cyphonic-node status`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeStatus {
    pub fqdn: String,
    pub node_id: String,
    pub virtual_ipv4: Ipv4Addr,
    pub virtual_ipv6: Ipv6Addr,
    pub listen: SocketAddr,
    pub relay_token: String,
    pub tun: String,
    pub mtu: u16,
    /// TUN offload (TSO in, GRO out) is on.
    #[serde(default)]
    pub offload: bool,
    /// `peers.relay_only`: every tunnel through the TRS.
    #[serde(default)]
    pub relay_only: bool,
    pub dns: Option<SocketAddr>,
    pub cloud: CloudStatus,
    pub peers: usize,
    /// Who reads the socket and the TUN: the fast path's thread or the runtime.
    #[serde(default)]
    pub fast_path: FastPathStatus,
}

/// What the control socket needs from the daemon.
pub struct ControlState {
    pub node: Arc<Node>,
    pub tun: String,
    pub mtu: u16,
    pub offload: bool,
    pub dns: Option<SocketAddr>,
}

impl ControlState {
    pub fn status(&self) -> NodeStatus {
        let n = &self.node;
        NodeStatus {
            fqdn: n.me.fqdn.to_string(),
            node_id: n.me.node_id.to_string(),
            virtual_ipv4: n.me.virtual_ipv4,
            virtual_ipv6: n.me.virtual_ipv6,
            listen: n.ep.local_addr(),
            relay_token: n.ep.token.to_string(),
            tun: self.tun.clone(),
            mtu: self.mtu,
            offload: self.offload,
            relay_only: n.settings.relay_only,
            dns: self.dns,
            cloud: n.cloud_status(),
            peers: n.peers.links().len(),
            fast_path: n.ep.fast.path_status(),
        }
    }

    pub fn peers(&self) -> Vec<PeerStatus> {
        self.node.peers.links().iter().map(|l| l.status()).collect()
    }
}

/// Serves the control socket until dropped (the socket file is removed then).
pub struct ControlServer {
    path: PathBuf,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.path);
    }
}

impl ControlServer {
    pub fn start(path: &Path, state: Arc<ControlState>) -> Result<ControlServer> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        if path.exists() {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                bail!(
                    "another daemon answers on {}: stop it, or give this one another \
                     `control_socket`",
                    path.display()
                );
            }
            let _ = std::fs::remove_file(path);
        }
        let listener = UnixListener::bind(path)
            .with_context(|| format!("cannot listen on {}", path.display()))?;
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660));
        }
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let state = state.clone();
                tokio::spawn(async move {
                    let _ =
                        tokio::time::timeout(Duration::from_secs(5), answer(stream, &state)).await;
                });
            }
        });
        Ok(ControlServer {
            path: path.to_owned(),
            task,
        })
    }
}

async fn answer(stream: UnixStream, state: &ControlState) -> Result<()> {
    let (r, mut w) = stream.into_split();
    let mut line = String::new();
    BufReader::new(r.take(256)).read_line(&mut line).await?;
    let body = match line.trim() {
        "status" => serde_json::to_vec(&state.status())?,
        "peers" => serde_json::to_vec(&state.peers())?,
        other => serde_json::to_vec(&serde_json::json!({
            "error": format!("unknown request {other:?}: expected status or peers")
        }))?,
    };
    w.write_all(&body).await?;
    w.shutdown().await?;
    Ok(())
}

/// Ask a running daemon (the CLI side).
pub fn query(path: &Path, request: &str) -> Result<serde_json::Value> {
    use std::io::{Read, Write};
    let mut s = std::os::unix::net::UnixStream::connect(path).with_context(|| {
        format!(
            "no node daemon answers on {}: is it running (and is this its `control_socket`)?",
            path.display()
        )
    })?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(format!("{request}\n").as_bytes())?;
    let mut out = Vec::new();
    s.read_to_end(&mut out)?;
    let v: serde_json::Value =
        serde_json::from_slice(&out).context("the daemon's answer is not JSON")?;
    if let Some(e) = v.get("error").and_then(|e| e.as_str()) {
        bail!("daemon: {e}");
    }
    Ok(v)
}
