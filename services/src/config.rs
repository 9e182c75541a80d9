//! `cloud.toml`: the configuration of one cloud process (AS, NMS, TRS or all three).
//!
//! Every option has a default, so the smallest useful file is empty: the process then
//! keeps its state under `state_dir`, uses a SQLite file there, and serves all three
//! roles on UDP 443. `deploy/cloud.example.toml` documents every option.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use cyphonic_proto::Fqdn;
use serde::Deserialize;

/// A role this process serves (SPEC §1), selected per connection by ALPN.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    As,
    Nms,
    Trs,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::As, Role::Nms, Role::Trs];

    pub fn name(self) -> &'static str {
        match self {
            Role::As => "as",
            Role::Nms => "nms",
            Role::Trs => "trs",
        }
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "as" => Ok(Role::As),
            "nms" => Ok(Role::Nms),
            "trs" => Ok(Role::Trs),
            other => Err(format!("unknown role {other:?}: expected as, nms or trs")),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CloudConfig {
    /// Directory holding the CA (`ca/`), the service certificates (`certs/`) and, by
    /// default, the SQLite database. Created on first start.
    pub state_dir: PathBuf,
    /// `sqlite://<path>` (default: `<state_dir>/cloud.db`) or `postgres://…` when
    /// several AS/NMS instances share one store.
    pub database_url: Option<String>,
    /// The overlay domain every FQDN ends in.
    pub overlay_domain: Fqdn,
    /// Prefix virtual IPv4 addresses are allocated from.
    pub ipv4_prefix: String,
    /// UDP address to listen on. `[::]:443` accepts IPv4 and IPv6 (dual-stack).
    pub listen: SocketAddr,
    /// Roles served by this process.
    pub roles: Vec<Role>,
    /// Addresses told to nodes (Login Response NMS address, Route Direction TRS
    /// address). Default: this host's addresses as given by `listen` when it is a
    /// specific address, else loopback.
    pub advertise: Advertise,
    /// TRS instances NMS may direct relayed pairs to. Empty: this process's own TRS
    /// (when it serves `trs`), at the advertised address.
    pub trs: Vec<TrsPeer>,
    pub timers: Timers,
    /// Enrollment token lifetime for `device add`.
    pub enrollment_token_hours: u64,
    /// Lifetime of node certificates signed at enrollment.
    pub node_cert_days: u32,
    /// Linux scheduling policy of the runtime threads (which relay for the TRS):
    /// `auto` (the default), `batch` or `normal`, as the node's
    /// `fast_thread_policy`. A relayed packet is a chain of hand-offs (node → TRS →
    /// node); as `batch` a TRS thread woken by a datagram does not preempt the task
    /// that sent it, and the chain stays on one CPU. `auto` is `batch` while the host
    /// has CPU to spare and `normal` under CPU pressure (Linux PSI).
    pub thread_policy: cyphonic_sched::SchedPolicy,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Advertise {
    pub ipv4: Option<Ipv4Addr>,
    pub ipv6: Option<Ipv6Addr>,
    pub port: Option<u16>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrsPeer {
    pub ipv4: Option<Ipv4Addr>,
    pub ipv6: Option<Ipv6Addr>,
    #[serde(default = "default_port")]
    pub port: u16,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Timers {
    /// QUIC keep-alive on cloud connections (keeps NAT mappings open).
    pub keep_alive_secs: u64,
    /// A node whose connection is idle this long is offline.
    pub idle_timeout_secs: u64,
    /// How long NMS waits for a responder's Route Direction Confirmation.
    pub confirmation_timeout_ms: u64,
    /// Lifetime of a relay binding NMS asks a TRS for.
    pub relay_lifetime_secs: u32,
}

fn default_port() -> u16 {
    443
}

impl Default for Timers {
    fn default() -> Self {
        Timers {
            keep_alive_secs: 10,
            idle_timeout_secs: 30,
            confirmation_timeout_ms: 3000,
            relay_lifetime_secs: 3600,
        }
    }
}

impl Timers {
    pub fn keep_alive(&self) -> Duration {
        Duration::from_secs(self.keep_alive_secs.max(1))
    }
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_secs(self.idle_timeout_secs.max(2))
    }
    pub fn confirmation_timeout(&self) -> Duration {
        Duration::from_millis(self.confirmation_timeout_ms.max(100))
    }
}

pub const DEFAULT_OVERLAY_DOMAIN: &str = "cyphonic.internal";

impl Default for CloudConfig {
    fn default() -> Self {
        CloudConfig {
            state_dir: PathBuf::from("/var/lib/cyphonic"),
            database_url: None,
            overlay_domain: Fqdn::new(DEFAULT_OVERLAY_DOMAIN).expect("constant is a valid FQDN"),
            ipv4_prefix: "100.64.0.0/10".into(),
            listen: SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 443),
            roles: Role::ALL.to_vec(),
            advertise: Advertise::default(),
            trs: Vec::new(),
            timers: Timers::default(),
            enrollment_token_hours: 24,
            node_cert_days: 365,
            thread_policy: cyphonic_sched::SchedPolicy::default(),
        }
    }
}

/// A config file that could not be used, with what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config file {path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

impl CloudConfig {
    /// Read and validate a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let cfg: CloudConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        cfg.validate().map_err(|message| ConfigError::Invalid {
            path: path.to_owned(),
            message,
        })?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<(), String> {
        if self.roles.is_empty() {
            return Err("`roles` is empty: list at least one of \"as\", \"nms\", \"trs\"".into());
        }
        if let Some(url) = &self.database_url {
            if !(url.starts_with("sqlite:")
                || url.starts_with("postgres:")
                || url.starts_with("postgresql:"))
            {
                return Err(format!(
                    "`database_url` {url:?} is neither sqlite:… nor postgres://…"
                ));
            }
        }
        if self
            .trs
            .iter()
            .any(|t| t.ipv4.is_none() && t.ipv6.is_none())
        {
            return Err("every [[trs]] entry needs `ipv4` or `ipv6`".into());
        }
        if self.timers.keep_alive_secs >= self.timers.idle_timeout_secs {
            return Err("timers.keep_alive_secs must be below timers.idle_timeout_secs".into());
        }
        Ok(())
    }

    pub fn database_url(&self) -> String {
        self.database_url.clone().unwrap_or_else(|| {
            format!(
                "sqlite://{}?mode=rwc",
                self.state_dir.join("cloud.db").display()
            )
        })
    }

    pub fn ca_dir(&self) -> PathBuf {
        self.state_dir.join("ca")
    }

    pub fn certs_dir(&self) -> PathBuf {
        self.state_dir.join("certs")
    }

    pub fn serves(&self, role: Role) -> bool {
        self.roles.contains(&role)
    }

    /// The address nodes are told to reach this process at.
    pub fn advertised(&self) -> (Option<Ipv4Addr>, Option<Ipv6Addr>, u16) {
        let port = self.advertise.port.unwrap_or(self.listen.port());
        let (mut v4, mut v6) = (self.advertise.ipv4, self.advertise.ipv6);
        if v4.is_none() && v6.is_none() {
            match self.listen.ip() {
                IpAddr::V4(a) if !a.is_unspecified() => v4 = Some(a),
                IpAddr::V6(a) if !a.is_unspecified() => match a.to_ipv4_mapped() {
                    Some(m) => v4 = Some(m),
                    None => v6 = Some(a),
                },
                _ => v4 = Some(Ipv4Addr::LOCALHOST),
            }
        }
        (v4, v6, port)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_config_is_valid_and_shows_the_defaults() {
        let text = include_str!("../../deploy/cloud.example.toml");
        let c = CloudConfig::parse(text, Path::new("cloud.example.toml")).unwrap();
        let d = CloudConfig::default();
        assert_eq!(c.thread_policy, d.thread_policy);
        assert_eq!(c.node_cert_days, d.node_cert_days);
        assert!(CloudConfig::parse("thread_policy = \"fifo\"", Path::new("x.toml")).is_err());
        let n = CloudConfig::parse("thread_policy = \"normal\"", Path::new("x.toml")).unwrap();
        assert_eq!(n.thread_policy, cyphonic_sched::SchedPolicy::Normal);
    }

    #[test]
    fn empty_file_is_the_default() {
        let c = CloudConfig::parse("", Path::new("x.toml")).unwrap();
        assert_eq!(c.listen, "[::]:443".parse().unwrap());
        assert_eq!(c.roles, Role::ALL.to_vec());
        assert!(c
            .database_url()
            .starts_with("sqlite:///var/lib/cyphonic/cloud.db"));
        assert_eq!(c.advertised(), (Some(Ipv4Addr::LOCALHOST), None, 443));
    }

    #[test]
    fn bad_files_say_what_is_wrong() {
        let e = CloudConfig::parse("listen = 5", Path::new("c.toml")).unwrap_err();
        assert!(e.to_string().contains("c.toml"), "{e}");
        let e = CloudConfig::parse("colour = 1", Path::new("c.toml")).unwrap_err();
        assert!(e.to_string().contains("unknown field"), "{e}");
        let e = CloudConfig::parse("roles = []", Path::new("c.toml")).unwrap_err();
        assert!(e.to_string().contains("roles"), "{e}");
        let e = CloudConfig::parse("overlay_domain = \"a..b\"", Path::new("c.toml")).unwrap_err();
        assert!(e.to_string().contains("empty label"), "{e}");
        let e =
            CloudConfig::parse("database_url = \"mysql://x\"", Path::new("c.toml")).unwrap_err();
        assert!(e.to_string().contains("database_url"), "{e}");
    }

    #[test]
    fn advertised_address_follows_listen() {
        let c = CloudConfig::parse("listen = \"203.0.113.1:8443\"", Path::new("c")).unwrap();
        assert_eq!(
            c.advertised(),
            (Some("203.0.113.1".parse().unwrap()), None, 8443)
        );
    }
}
