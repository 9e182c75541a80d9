//! Processes: bounded one-shot commands, and background processes ([`Proc`]) that the
//! bench tracks and stops at teardown.
//!
//! Every child is started in its own process group (`setpgid(0, 0)`), so stopping a
//! process also stops whatever it forked; signals are only ever sent to the groups of
//! children we started and have not reaped yet.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// How often bounded waits poll a child.
const POLL: Duration = Duration::from_millis(10);

/// A printable form of `cmd` for error messages.
pub fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Sends `sig` to the process group `pgid` (ignoring "no such process").
fn kill_group(pgid: u32, sig: i32) {
    // SAFETY: plain syscall; the negative pid addresses the group we created.
    unsafe {
        libc::kill(-(pgid as libc::pid_t), sig);
    }
}

/// Whether the child `pid` has exited, WITHOUT reaping it: while it is an unreaped
/// zombie its pid (and so its process-group id) cannot be reused, which makes a
/// following group kill safe.
fn has_exited(pid: u32) -> bool {
    // SAFETY: waitid with WNOWAIT only inspects our own child; `info` is plain data.
    unsafe {
        let mut info: libc::siginfo_t = std::mem::zeroed();
        let rc = libc::waitid(
            libc::P_PID,
            pid as libc::id_t,
            &mut info,
            libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
        );
        // rc == -1 (ECHILD): already reaped, i.e. gone.
        rc == -1 || info.si_pid() != 0
    }
}

/// Waits until `pid` exits (unreaped) or `deadline`; whether it exited.
fn wait_exit_until(pid: u32, deadline: Instant) -> bool {
    loop {
        if has_exited(pid) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(POLL);
    }
}

/// Kills what is left of the child's group (it has exited or is being killed) and
/// reaps the leader.
fn kill_and_reap(child: &mut Child) -> Result<ExitStatus> {
    kill_group(child.id(), libc::SIGKILL);
    child.wait().context("reaping a child process")
}

/// Runs `cmd` to completion, feeding it `stdin`, killing its process group when it
/// takes longer than `timeout`. Returns its output whatever its exit status; a timeout
/// is an error carrying what it printed so far.
pub fn run_bounded(mut cmd: Command, stdin: Option<&[u8]>, timeout: Duration) -> Result<Output> {
    use std::os::unix::process::CommandExt;
    let what = describe(&cmd);
    cmd.process_group(0)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot start `{what}`"))?;
    let pid = child.id();
    let input = stdin.map(|b| b.to_vec());
    let mut cin = child.stdin.take();
    let writer = std::thread::spawn(move || {
        if let (Some(mut w), Some(data)) = (cin.take(), input) {
            let _ = w.write_all(&data);
        }
    });
    let mut out = child.stdout.take().expect("piped stdout");
    let mut err = child.stderr.take().expect("piped stderr");
    let out_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let err_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let exited = wait_exit_until(pid, Instant::now() + timeout);
    // Either way nothing of the group may outlive this call (a grandchild would also
    // keep the pipes open).
    let status = kill_and_reap(&mut child)?;
    let _ = writer.join();
    let stdout = out_t.join().unwrap_or_default();
    let stderr = err_t.join().unwrap_or_default();
    if !exited {
        bail!(
            "`{what}` did not finish within {timeout:?} (killed)\nstdout: {}\nstderr: {}",
            String::from_utf8_lossy(&stdout).trim_end(),
            String::from_utf8_lossy(&stderr).trim_end()
        );
    }
    Ok(Output {
        status,
        stdout,
        stderr,
    })
}

/// Like [`run_bounded`], but a non-zero exit status is an error carrying stderr.
pub fn run_checked(cmd: Command, stdin: Option<&[u8]>, timeout: Duration) -> Result<Output> {
    let what = describe(&cmd);
    let out = run_bounded(cmd, stdin, timeout)?;
    if !out.status.success() {
        bail!(
            "`{what}` failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim_end(),
            if out.stdout.is_empty() {
                String::new()
            } else {
                format!(
                    "\nstdout: {}",
                    String::from_utf8_lossy(&out.stdout).trim_end()
                )
            }
        );
    }
    Ok(out)
}

/// State shared by a [`Proc`] handle and the bench's registry.
#[derive(Debug)]
pub(crate) struct ProcInner {
    pid: u32,
    what: String,
    log: PathBuf,
    /// `None` once reaped.
    child: Mutex<Option<Child>>,
    status: Mutex<Option<ExitStatus>>,
}

impl ProcInner {
    /// SIGTERM, wait up to `grace`, then SIGKILL; reaps the child. Idempotent.
    pub(crate) fn stop(&self, grace: Duration) -> Result<ExitStatus> {
        let mut guard = self.child.lock().unwrap_or_else(|e| e.into_inner());
        let Some(child) = guard.as_mut() else {
            return self
                .status
                .lock()
                .unwrap()
                .context("process already reaped");
        };
        if !has_exited(self.pid) {
            kill_group(self.pid, libc::SIGTERM);
            wait_exit_until(self.pid, Instant::now() + grace);
        }
        let st = kill_and_reap(child)?;
        *guard = None;
        *self.status.lock().unwrap() = Some(st);
        Ok(st)
    }

    /// Sends SIGTERM to the group if the leader is still running (no waiting).
    pub(crate) fn terminate(&self) {
        let guard = self.child.lock().unwrap_or_else(|e| e.into_inner());
        if guard.is_some() && !has_exited(self.pid) {
            kill_group(self.pid, libc::SIGTERM);
        }
    }

    /// Whether the leader is still running (exited-but-unreaped counts as not running).
    fn running(&self) -> bool {
        let guard = self.child.lock().unwrap_or_else(|e| e.into_inner());
        guard.is_some() && !has_exited(self.pid)
    }
}

/// Processes started by one bench, stopped at its teardown.
pub(crate) type Registry = Arc<Mutex<Vec<Arc<ProcInner>>>>;

/// A background process started in a namespace by [`crate::Host::spawn`]; stdout and
/// stderr go to a log file in the bench directory. Dropping the handle does not stop
/// the process: the bench stops every process it started when it is dropped.
#[derive(Debug, Clone)]
pub struct Proc {
    inner: Arc<ProcInner>,
}

impl Proc {
    /// Starts `cmd` in its own process group, output appended to `log`, and registers it.
    pub(crate) fn start(mut cmd: Command, log: &Path, registry: &Registry) -> Result<Proc> {
        use std::os::unix::process::CommandExt;
        let what = describe(&cmd);
        let file = File::options()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("cannot open log {}", log.display()))?;
        let file2 = file.try_clone().context("dup log file")?;
        cmd.process_group(0)
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(file2);
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start `{what}`"))?;
        let inner = Arc::new(ProcInner {
            pid: child.id(),
            what,
            log: log.to_path_buf(),
            child: Mutex::new(Some(child)),
            status: Mutex::new(None),
        });
        registry
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(inner.clone());
        Ok(Proc { inner })
    }

    /// The process id (also its process-group id).
    pub fn pid(&self) -> u32 {
        self.inner.pid
    }

    /// The command line it was started with.
    pub fn command_line(&self) -> &str {
        &self.inner.what
    }

    /// Path of its log file (stdout and stderr).
    pub fn log_path(&self) -> &Path {
        &self.inner.log
    }

    /// The log so far (lossy UTF-8; empty if unreadable).
    pub fn log_text(&self) -> String {
        std::fs::read(&self.inner.log)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// Whether the process is still running (not exited).
    pub fn is_running(&self) -> bool {
        self.inner.running()
    }

    /// Sends `sig` (e.g. `libc::SIGHUP`) to the process group, if still running.
    pub fn signal(&self, sig: i32) -> Result<()> {
        if !self.is_running() {
            bail!(
                "`{}` (pid {}) is not running",
                self.inner.what,
                self.inner.pid
            );
        }
        kill_group(self.inner.pid, sig);
        Ok(())
    }

    /// Stops it: SIGTERM to the group, wait up to 5 s, then SIGKILL. Returns its status.
    pub fn stop(&self) -> Result<ExitStatus> {
        self.inner.stop(Duration::from_secs(5))
    }

    /// Waits up to `timeout` for it to exit by itself and returns its status; an error
    /// (with the log) if it is still running then.
    pub fn wait(&self, timeout: Duration) -> Result<ExitStatus> {
        if !wait_exit_until(self.inner.pid, Instant::now() + timeout) {
            bail!(
                "`{}` (pid {}) still running after {timeout:?}; log:\n{}",
                self.inner.what,
                self.inner.pid,
                self.log_text()
            );
        }
        self.inner.stop(Duration::ZERO)
    }

    /// Waits up to `timeout` until the log contains `needle`; an error (with the log)
    /// if it does not, or if the process exits first.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.log_text().contains(needle) {
                return Ok(());
            }
            if !self.is_running() && !self.log_text().contains(needle) {
                bail!(
                    "`{}` exited before logging {needle:?}; log:\n{}",
                    self.inner.what,
                    self.log_text()
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "`{}` did not log {needle:?} within {timeout:?}; log:\n{}",
                    self.inner.what,
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
