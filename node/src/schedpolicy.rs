//! The Linux scheduling policy of the fast path's thread (`fast_thread_policy`).
//!
//! A ping through the tunnel is a chain of hand-offs: the application wakes this
//! node's fast thread (through the TUN), which wakes the peer's (UDP), and back. The
//! kernel marks these wake-ups synchronous and keeps the woken thread on the waker's
//! CPU when the waker is the only task there. A `normal` (`SCHED_OTHER`) thread
//! preempts its waker, so when it sends, its CPU holds two tasks and the next thread
//! in the chain goes to another CPU; when that CPU is idle (on a VM: halted by the
//! host) waking it can cost more than the whole round trip. A `batch`
//! (`SCHED_BATCH`) thread does not preempt on wake-up: it runs once its waker
//! sleeps, and the chain stays on one warm CPU. Its CPU share is the same (same
//! weight); only wake-up preemption differs.
//!
//! What `batch` gives up: on a host whose CPUs are all busy, a packet's wake-up
//! waits for the running task's slice to end (up to a scheduler tick) instead of
//! preempting it. `auto` (the default) therefore runs the thread as `batch` while
//! the host has CPU to spare, and as `normal` while tasks wait for CPU, judged by
//! the kernel's CPU pressure (PSI, `/proc/pressure/cpu`, "some avg10"), read every
//! two seconds with hysteresis. Measured in BENCHMARKS.md ("The fast thread's
//! scheduling policy").

use std::io;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

/// `fast_thread_policy` in the node's configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FastThreadPolicy {
    /// `batch` while the host has idle CPU, `normal` under CPU pressure.
    #[default]
    Auto,
    Batch,
    Normal,
}

/// CPU pressure (% of the last 10 s in which some runnable task waited for a CPU)
/// at or above which `auto` lets the thread preempt again.
pub const PRESSURE_HIGH: f64 = 20.0;
/// ... and below which it goes back to `batch`.
pub const PRESSURE_LOW: f64 = 10.0;
/// How often `auto` reads the pressure.
pub const PRESSURE_PERIOD: Duration = Duration::from_secs(2);
const PRESSURE_FILE: &str = "/proc/pressure/cpu";

/// "some avg10" of `/proc/pressure/cpu`: e.g. `some avg10=1.07 avg60=14.03
/// avg300=7.15 total=1831616429`. `None` for anything else.
pub fn parse_cpu_pressure(text: &str) -> Option<f64> {
    let line = text.lines().find(|l| l.starts_with("some "))?;
    let v = line
        .split_ascii_whitespace()
        .find_map(|f| f.strip_prefix("avg10="))?;
    let v: f64 = v.parse().ok()?;
    (v.is_finite() && (0.0..=100.0).contains(&v)).then_some(v)
}

/// Set thread `tid` (0: the caller) to `SCHED_BATCH` or `SCHED_OTHER`.
fn set_policy(tid: i32, batch: bool) -> io::Result<()> {
    let policy = if batch {
        libc::SCHED_BATCH
    } else {
        libc::SCHED_OTHER
    };
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: plain syscall with a valid parameter block; Linux applies it to the one
    // thread `tid` names.
    if unsafe { libc::sched_setscheduler(tid, policy, &param) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The fast thread's policy: configured, and in force now.
#[derive(Debug)]
pub struct ThreadPolicy {
    configured: FastThreadPolicy,
    /// The thread's id once it has started (0 before).
    tid: AtomicI32,
    /// Whether it runs as `batch` now.
    batch: AtomicBool,
    /// Why the policy could not be set, if it could not.
    refused: std::sync::Mutex<Option<String>>,
    /// The last CPU pressure read (`auto`), in hundredths of a per cent; `u64::MAX`
    /// when none could be read.
    pressure: AtomicU64,
    /// Times `auto` switched the thread.
    switches: AtomicU64,
}

impl ThreadPolicy {
    pub fn new(configured: FastThreadPolicy) -> Arc<ThreadPolicy> {
        Arc::new(ThreadPolicy {
            configured,
            tid: AtomicI32::new(0),
            batch: AtomicBool::new(false),
            refused: std::sync::Mutex::new(None),
            pressure: AtomicU64::new(u64::MAX),
            switches: AtomicU64::new(0),
        })
    }

    /// Called by the fast thread itself when it starts.
    pub fn enter(&self) {
        // SAFETY: gettid has no preconditions.
        let tid = unsafe { libc::gettid() };
        let batch = match self.configured {
            FastThreadPolicy::Normal => false,
            FastThreadPolicy::Batch => true,
            // Start as the pressure says; `batch` when it cannot be read.
            FastThreadPolicy::Auto => read_pressure().is_none_or(|p| p < PRESSURE_HIGH),
        };
        match set_policy(0, batch) {
            Ok(()) => self.batch.store(batch, Ordering::Release),
            Err(e) => self.refuse(batch, &e),
        }
        self.tid.store(tid, Ordering::Release);
    }

    fn refuse(&self, batch: bool, e: &io::Error) {
        let name = if batch { "batch" } else { "normal" };
        tracing::warn!(error = %e, policy = name, "cannot set the fast path's thread's scheduling policy; it keeps the one it has");
        *self.refused.lock().unwrap_or_else(|p| p.into_inner()) =
            Some(format!("{name} refused: {e}"));
    }

    /// `auto`: given the CPU pressure now (`None`: unreadable), switch the thread if
    /// it crossed a threshold. Returns whether it switched.
    pub fn retune(&self, pressure: Option<f64>) -> bool {
        self.pressure.store(
            pressure.map_or(u64::MAX, |p| (p * 100.0).round() as u64),
            Ordering::Relaxed,
        );
        let tid = self.tid.load(Ordering::Acquire);
        if self.configured != FastThreadPolicy::Auto || tid == 0 {
            return false;
        }
        let Some(p) = pressure else { return false };
        let batch = self.batch.load(Ordering::Acquire);
        let want = if batch {
            p < PRESSURE_HIGH
        } else {
            p < PRESSURE_LOW
        };
        if want == batch {
            return false;
        }
        match set_policy(tid, want) {
            Ok(()) => {
                self.batch.store(want, Ordering::Release);
                self.switches.fetch_add(1, Ordering::Relaxed);
                if want {
                    tracing::info!(cpu_pressure = p, "CPU to spare: the fast path's thread waits for the task that wakes it (batch), keeping a packet's hand-offs on one CPU");
                } else {
                    tracing::info!(cpu_pressure = p, "tasks wait for CPU: the fast path's thread preempts on wake-up again (normal), so packets do not wait for a busy CPU's slice");
                }
                true
            }
            Err(e) => {
                self.refuse(want, &e);
                false
            }
        }
    }

    /// For `status`: e.g. "batch (auto, CPU pressure 1.07 %)".
    pub fn describe(&self) -> String {
        if self.tid.load(Ordering::Acquire) == 0 {
            return String::new();
        }
        let now = if self.batch.load(Ordering::Acquire) {
            "batch"
        } else {
            "normal"
        };
        let mut s = match self.configured {
            FastThreadPolicy::Auto => {
                let p = self.pressure.load(Ordering::Relaxed);
                let switches = self.switches.load(Ordering::Relaxed);
                if p == u64::MAX {
                    format!("{now} (auto; CPU pressure not readable)")
                } else {
                    format!(
                        "{now} (auto; CPU pressure {:.2} %, switched {switches} times)",
                        p as f64 / 100.0
                    )
                }
            }
            _ => now.to_string(),
        };
        if let Some(r) = &*self.refused.lock().unwrap_or_else(|p| p.into_inner()) {
            s.push_str(&format!("; {r}"));
        }
        s
    }

    /// Whether the thread runs as `batch` now.
    pub fn is_batch(&self) -> bool {
        self.batch.load(Ordering::Acquire)
    }

    /// `auto`: read the CPU pressure every [`PRESSURE_PERIOD`] on the runtime until
    /// the policy is dropped.
    pub fn spawn_auto(self: &Arc<Self>, rt: &tokio::runtime::Handle) {
        if self.configured != FastThreadPolicy::Auto {
            return;
        }
        let weak: Weak<ThreadPolicy> = Arc::downgrade(self);
        rt.spawn(async move {
            let mut tick = tokio::time::interval(PRESSURE_PERIOD);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut warned = false;
            loop {
                tick.tick().await;
                let Some(me) = weak.upgrade() else { return };
                let p = read_pressure();
                if p.is_none() && !warned {
                    warned = true;
                    tracing::info!(
                        file = PRESSURE_FILE,
                        "no CPU pressure information (kernel without PSI): the fast path's thread stays as it is"
                    );
                }
                me.retune(p);
            }
        });
    }
}

fn read_pressure() -> Option<f64> {
    parse_cpu_pressure(&std::fs::read_to_string(PRESSURE_FILE).ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_the_kernels_cpu_pressure() {
        let t = "some avg10=1.07 avg60=14.03 avg300=7.15 total=1831616429\n\
                 full avg10=0.00 avg60=0.00 avg300=0.00 total=0\n";
        assert_eq!(parse_cpu_pressure(t), Some(1.07));
        assert_eq!(
            parse_cpu_pressure("some avg10=100.00 avg60=0 avg300=0 total=1"),
            Some(100.0)
        );
        for bad in [
            "",
            "full avg10=3.00",
            "some avg60=3.00",
            "some avg10=",
            "some avg10=x",
            "some avg10=NaN",
            "some avg10=-1",
            "some avg10=101",
            "some avg10=inf",
        ] {
            assert_eq!(parse_cpu_pressure(bad), None, "{bad:?}");
        }
    }

    proptest! {
        #[test]
        fn any_text_parses_to_none_or_a_percentage(s in ".{0,200}") {
            if let Some(p) = parse_cpu_pressure(&s) {
                prop_assert!((0.0..=100.0).contains(&p));
            }
        }
    }

    /// `auto` switches with hysteresis: to `normal` at PRESSURE_HIGH, back to
    /// `batch` only below PRESSURE_LOW; unreadable pressure changes nothing. Run on
    /// a thread of the test's own, read back from the kernel.
    #[test]
    fn auto_switches_with_hysteresis() {
        let pol = ThreadPolicy::new(FastThreadPolicy::Auto);
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let p2 = pol.clone();
        let t = std::thread::spawn(move || {
            p2.enter();
            let _ = rx.recv();
        });
        while pol.tid.load(Ordering::Acquire) == 0 {
            std::thread::yield_now();
        }
        let tid = pol.tid.load(Ordering::Acquire);
        // SAFETY: plain syscall.
        let kernel = || unsafe { libc::sched_getscheduler(tid) };
        pol.batch.store(true, Ordering::Release);
        set_policy(tid, true).unwrap();
        assert_eq!(kernel(), libc::SCHED_BATCH);
        assert!(!pol.retune(Some(PRESSURE_HIGH - 0.01)));
        assert!(!pol.retune(None));
        assert!(pol.retune(Some(PRESSURE_HIGH)));
        assert!(!pol.is_batch());
        assert_eq!(kernel(), libc::SCHED_OTHER);
        assert!(pol
            .describe()
            .starts_with("normal (auto; CPU pressure 20.00 %"));
        assert!(!pol.retune(Some(PRESSURE_LOW)));
        assert!(!pol.retune(Some(PRESSURE_HIGH - 1.0)));
        assert!(pol.retune(Some(PRESSURE_LOW - 0.01)));
        assert_eq!(kernel(), libc::SCHED_BATCH);
        assert!(pol.describe().contains("switched 2 times"));
        tx.send(()).unwrap();
        t.join().unwrap();
    }

    #[test]
    fn fixed_policies_never_switch() {
        for (c, expect) in [
            (FastThreadPolicy::Batch, libc::SCHED_BATCH),
            (FastThreadPolicy::Normal, libc::SCHED_OTHER),
        ] {
            let pol = ThreadPolicy::new(c);
            let p2 = pol.clone();
            let got = std::thread::spawn(move || {
                p2.enter();
                assert!(!p2.retune(Some(100.0)));
                assert!(!p2.retune(Some(0.0)));
                // SAFETY: plain syscall on the calling thread.
                unsafe { libc::sched_getscheduler(0) }
            })
            .join()
            .unwrap();
            assert_eq!(got, expect, "{c:?}");
        }
    }
}
