//! Hosts: one namespace with one uplink `eth0`, running commands and background
//! processes.

use std::ffi::OsStr;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::netns;
use crate::proc::{run_bounded, run_checked, Proc, Registry};

/// Default timeout of [`Host::run`].
pub const RUN_TIMEOUT: Duration = Duration::from_secs(30);

/// State shared by the bench and its hosts.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) dir: PathBuf,
    pub(crate) procs: Registry,
}

/// A host namespace with one uplink `eth0`.
#[derive(Debug, Clone)]
pub struct Host {
    /// Name given at creation.
    pub name: String,
    /// Its namespace.
    pub ns: String,
    /// Its IPv4 address, if any (private for hosts behind a NAT).
    pub ipv4: Option<Ipv4Addr>,
    /// Its IPv6 address, if any (public hosts only).
    pub ipv6: Option<Ipv6Addr>,
    pub(crate) shared: Arc<Shared>,
}

impl Host {
    /// `ip netns exec <ns> program` (add arguments, then run it yourself).
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        netns::exec_cmd(&self.ns, program.as_ref())
    }

    /// Runs `program args` in the host, killed after [`RUN_TIMEOUT`]; its output
    /// whatever the exit status (a timeout is an error).
    pub fn run<I, S>(&self, program: impl AsRef<OsStr>, args: I) -> Result<Output>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.run_timeout(program, args, RUN_TIMEOUT)
    }

    /// [`Host::run`] with an explicit timeout.
    pub fn run_timeout<I, S>(
        &self,
        program: impl AsRef<OsStr>,
        args: I,
        timeout: Duration,
    ) -> Result<Output>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut c = self.command(program);
        c.args(args);
        run_bounded(c, None, timeout).with_context(|| format!("on host {}", self.name))
    }

    /// [`Host::run`], but a non-zero exit status is an error (with stderr); returns stdout.
    pub fn run_ok<I, S>(&self, program: impl AsRef<OsStr>, args: I) -> Result<String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut c = self.command(program);
        c.args(args);
        let out =
            run_checked(c, None, RUN_TIMEOUT).with_context(|| format!("on host {}", self.name))?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Starts `program args` in the background; stdout and stderr are appended to
    /// `<bench_dir>/<log>`. The bench stops it at teardown.
    pub fn spawn<I, S>(&self, program: impl AsRef<OsStr>, args: I, log: &str) -> Result<Proc>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        if log.is_empty() || log.contains('/') {
            bail!("log name {log:?} must be a plain file name");
        }
        let mut c = self.command(program);
        c.args(args);
        Proc::start(c, &self.shared.dir.join(log), &self.shared.procs)
            .with_context(|| format!("on host {}", self.name))
    }

    /// Whether `to` answers pings from this host (up to 3 echo requests, 1 s each).
    pub fn can_ping(&self, to: IpAddr) -> Result<bool> {
        let out = self.run_timeout(
            "ping",
            ["-n", "-c", "1", "-w", "3", "-W", "1", &to.to_string()],
            Duration::from_secs(10),
        )?;
        Ok(out.status.success())
    }

    /// Writes `/etc/netns/<ns>/resolv.conf`, which `ip netns exec` bind-mounts over
    /// `/etc/resolv.conf` for programs started afterwards. Removed at teardown.
    pub fn set_resolv_conf(&self, contents: &str) -> Result<()> {
        let dir = netns::etc_dir(&self.ns);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let f = dir.join("resolv.conf");
        std::fs::write(&f, contents).with_context(|| format!("writing {}", f.display()))
    }

    /// The bench directory (for logs and state files).
    pub fn bench_dir(&self) -> &Path {
        &self.shared.dir
    }
}
