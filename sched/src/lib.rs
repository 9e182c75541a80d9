//! The Linux scheduling policy of CYPHONIC's packet-forwarding threads: the node's
//! fast path thread (`fast_thread_policy`) and the cloud's runtime threads, which
//! run the TRS (`thread_policy`).
//!
//! A ping through the tunnel is a chain of hand-offs: the application wakes this
//! node's fast thread (through the TUN), which wakes the peer's (UDP) or the TRS's,
//! and back. The kernel marks these wake-ups synchronous and keeps the woken thread
//! on the waker's CPU when the waker is the only task there. A `normal`
//! (`SCHED_OTHER`) thread preempts its waker, so when it sends, its CPU holds two
//! tasks and the next thread in the chain goes to another CPU; when that CPU is
//! idle (on a VM: halted by the host) waking it can cost more than the whole round
//! trip. A `batch` (`SCHED_BATCH`) thread does not preempt on wake-up: it runs once
//! its waker sleeps, and the chain stays on one warm CPU. Its CPU share is the same
//! (same weight); only wake-up preemption differs.
//!
//! What `batch` gives up: on a host whose CPUs are all busy, a packet's wake-up
//! waits for the running task's slice to end (up to a scheduler tick) instead of
//! preempting it. `auto` (the default) therefore runs the threads as `batch` while
//! the host has CPU to spare, and as `normal` while tasks wait for CPU, judged by
//! the kernel's CPU pressure (PSI, `/proc/pressure/cpu`: the share of the last two
//! seconds in which some task waited for a CPU), with hysteresis. Measured in
//! BENCHMARKS.md ("The fast thread's scheduling policy").

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

/// The configured policy (`fast_thread_policy`, `thread_policy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SchedPolicy {
    /// `batch` while the host has idle CPU, `normal` under CPU pressure.
    #[default]
    Auto,
    Batch,
    Normal,
}

impl SchedPolicy {
    fn code(self) -> u8 {
        match self {
            SchedPolicy::Auto => 0,
            SchedPolicy::Batch => 1,
            SchedPolicy::Normal => 2,
        }
    }
    fn from_code(c: u8) -> SchedPolicy {
        match c {
            1 => SchedPolicy::Batch,
            2 => SchedPolicy::Normal,
            _ => SchedPolicy::Auto,
        }
    }
}

/// CPU pressure (% of the time in which some runnable task waited for a CPU, over the
/// last [`PRESSURE_PERIOD`]) at or above which `auto` lets the threads preempt again.
pub const PRESSURE_HIGH: f64 = 20.0;
/// ... and below which it goes back to `batch`.
pub const PRESSURE_LOW: f64 = 10.0;
/// How often `auto` reads the pressure, and the window it judges it over. The
/// kernel's own averages lag: avg10 decays with a 10 s time constant, so after a
/// burst at 100 % (a build) it stays above 10 % for about 23 s. The window is
/// measured from the cumulative stall time (`total`) instead.
pub const PRESSURE_PERIOD: Duration = Duration::from_secs(2);
const PRESSURE_FILE: &str = "/proc/pressure/cpu";
const UNREADABLE: u64 = u64::MAX;
const NOT_YET: u64 = u64::MAX - 1;

/// The "some" line of `/proc/pressure/cpu`, e.g. `some avg10=1.07 avg60=14.03
/// avg300=7.15 total=1831616429`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CpuPressure {
    /// % of the last 10 s.
    pub avg10: f64,
    /// Cumulative time (µs) in which some task waited for a CPU.
    pub total_us: u64,
}

/// Parse `/proc/pressure/cpu`; `None` for anything that is not its "some" line.
pub fn parse_cpu_pressure(text: &str) -> Option<CpuPressure> {
    let line = text.lines().find(|l| l.starts_with("some "))?;
    let field = |name: &str| {
        line.split_ascii_whitespace()
            .find_map(|f| f.strip_prefix(name))
    };
    let avg10: f64 = field("avg10=")?.parse().ok()?;
    let total_us: u64 = field("total=")?.parse().ok()?;
    (avg10.is_finite() && (0.0..=100.0).contains(&avg10)).then_some(CpuPressure { avg10, total_us })
}

/// The pressure (%) over a window: stall time grown by `stalled_us` in
/// `elapsed_us` of wall time, clamped to 0–100. `None` for an empty window.
pub fn window_pressure(stalled_us: u64, elapsed_us: u64) -> Option<f64> {
    (elapsed_us > 0).then(|| (stalled_us as f64 * 100.0 / elapsed_us as f64).min(100.0))
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

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The policy of a set of threads: configured, and in force now.
#[derive(Debug)]
pub struct ThreadPolicy {
    /// Who they are, for the log ("the fast path's thread").
    role: &'static str,
    configured: AtomicU8,
    /// Whether [`ThreadPolicy::configure`] has run (threads that enter before it
    /// keep the policy they inherited until then).
    settled: AtomicBool,
    /// The threads' ids.
    tids: Mutex<Vec<i32>>,
    /// Whether they run as `batch` now.
    batch: AtomicBool,
    /// Why the policy could not be set, if it could not.
    refused: Mutex<Option<String>>,
    /// The last CPU pressure measured (`auto`), in hundredths of a per cent;
    /// [`UNREADABLE`] when none could be read, [`NOT_YET`] before the first window.
    pressure: AtomicU64,
    /// Times `auto` switched the threads.
    switches: AtomicU64,
}

impl ThreadPolicy {
    /// A policy configured now: threads take it as they [`enter`](Self::enter).
    pub fn new(configured: SchedPolicy, role: &'static str) -> Arc<ThreadPolicy> {
        let p = Self::pending(role);
        p.configured.store(configured.code(), Ordering::Release);
        p.batch
            .store(p.initial_batch(configured), Ordering::Release);
        p.settled.store(true, Ordering::Release);
        p
    }

    /// A policy configured later ([`configure`](Self::configure)): threads that
    /// enter before keep what they inherited (for a runtime built before its
    /// configuration is read).
    pub fn pending(role: &'static str) -> Arc<ThreadPolicy> {
        Arc::new(ThreadPolicy {
            role,
            configured: AtomicU8::new(SchedPolicy::Auto.code()),
            settled: AtomicBool::new(false),
            tids: Mutex::new(Vec::new()),
            batch: AtomicBool::new(false),
            refused: Mutex::new(None),
            pressure: AtomicU64::new(NOT_YET),
            switches: AtomicU64::new(0),
        })
    }

    fn initial_batch(&self, configured: SchedPolicy) -> bool {
        match configured {
            SchedPolicy::Normal => false,
            SchedPolicy::Batch => true,
            // As the pressure says; `batch` when it cannot be read.
            // (The last 10 s: no window has been measured yet.)
            SchedPolicy::Auto => read_pressure().is_none_or(|p| p.avg10 < PRESSURE_HIGH),
        }
    }

    fn configured(&self) -> SchedPolicy {
        SchedPolicy::from_code(self.configured.load(Ordering::Acquire))
    }

    /// Called by each thread when it starts.
    pub fn enter(&self) {
        // SAFETY: gettid has no preconditions.
        let tid = unsafe { libc::gettid() };
        let mut tids = lock(&self.tids);
        if self.settled.load(Ordering::Acquire) {
            let batch = self.batch.load(Ordering::Acquire);
            if let Err(e) = set_policy(0, batch) {
                self.refuse(batch, &e);
            }
        }
        tids.push(tid);
    }

    /// Called by each thread when it ends (runtime threads come and go).
    pub fn leave(&self) {
        // SAFETY: gettid has no preconditions.
        let tid = unsafe { libc::gettid() };
        lock(&self.tids).retain(|&t| t != tid);
    }

    /// Set the configured policy and apply it to every thread that has entered.
    pub fn configure(&self, configured: SchedPolicy) {
        let tids = lock(&self.tids);
        self.configured.store(configured.code(), Ordering::Release);
        let batch = self.initial_batch(configured);
        self.batch.store(batch, Ordering::Release);
        self.settled.store(true, Ordering::Release);
        for &t in tids.iter() {
            if let Err(e) = set_policy(t, batch) {
                self.refuse(batch, &e);
            }
        }
    }

    fn refuse(&self, batch: bool, e: &io::Error) {
        let name = if batch { "batch" } else { "normal" };
        tracing::warn!(error = %e, policy = name, "cannot set the scheduling policy of {}; it keeps the one it has", self.role);
        *lock(&self.refused) = Some(format!("{name} refused: {e}"));
    }

    /// `auto`: given the CPU pressure now (`None`: unreadable), switch the threads
    /// if it crossed a threshold. Returns whether they switched. Once the kernel
    /// has refused a policy (a sandbox that forbids `sched_setscheduler`), `auto`
    /// stops switching: the refusal is logged once and shown by `describe`, not
    /// retried every [`PRESSURE_PERIOD`].
    pub fn retune(&self, pressure: Option<f64>) -> bool {
        self.pressure.store(
            pressure.map_or(UNREADABLE, |p| (p * 100.0).round() as u64),
            Ordering::Relaxed,
        );
        if self.configured() != SchedPolicy::Auto
            || !self.settled.load(Ordering::Acquire)
            || lock(&self.refused).is_some()
        {
            return false;
        }
        let Some(p) = pressure else { return false };
        let mut tids = lock(&self.tids);
        let batch = self.batch.load(Ordering::Acquire);
        let want = if batch {
            p < PRESSURE_HIGH
        } else {
            p < PRESSURE_LOW
        };
        if want == batch || tids.is_empty() {
            return false;
        }
        let mut refused = None;
        tids.retain(|&t| match set_policy(t, want) {
            Ok(()) => true,
            // A thread that ended without leaving.
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => false,
            Err(e) => {
                refused = Some(e);
                true
            }
        });
        if let Some(e) = refused {
            self.refuse(want, &e);
            return false;
        }
        if tids.is_empty() {
            return false;
        }
        self.batch.store(want, Ordering::Release);
        self.switches.fetch_add(1, Ordering::Relaxed);
        if want {
            tracing::info!(cpu_pressure = p, "CPU to spare: {} waits for the task that wakes it (batch), keeping a packet's hand-offs on one CPU", self.role);
        } else {
            tracing::info!(cpu_pressure = p, "tasks wait for CPU: {} preempts on wake-up again (normal), so packets do not wait for a busy CPU's slice", self.role);
        }
        true
    }

    /// For `status`: e.g. "batch (auto; CPU pressure 1.07 %, switched 0 times)";
    /// empty until a thread has entered.
    pub fn describe(&self) -> String {
        if lock(&self.tids).is_empty() || !self.settled.load(Ordering::Acquire) {
            return String::new();
        }
        let now = if self.batch.load(Ordering::Acquire) {
            "batch"
        } else {
            "normal"
        };
        let mut s = match self.configured() {
            SchedPolicy::Auto => {
                let p = self.pressure.load(Ordering::Relaxed);
                let switches = self.switches.load(Ordering::Relaxed);
                match p {
                    UNREADABLE => format!("{now} (auto; CPU pressure not readable)"),
                    NOT_YET => format!("{now} (auto; CPU pressure not measured yet)"),
                    p => format!(
                        "{now} (auto; CPU pressure {:.2} %, switched {switches} times)",
                        p as f64 / 100.0
                    ),
                }
            }
            _ => now.to_string(),
        };
        if let Some(r) = &*lock(&self.refused) {
            s.push_str(&format!("; {r}"));
        }
        s
    }

    /// The ids of the threads that have entered (and not left).
    pub fn threads(&self) -> Vec<i32> {
        lock(&self.tids).clone()
    }

    /// Whether the threads run as `batch` now.
    pub fn is_batch(&self) -> bool {
        self.batch.load(Ordering::Acquire)
    }

    /// `auto`: read the CPU pressure every [`PRESSURE_PERIOD`] on the runtime until
    /// the policy is dropped.
    pub fn spawn_auto(self: &Arc<Self>, rt: &tokio::runtime::Handle) {
        if self.configured() != SchedPolicy::Auto {
            return;
        }
        let weak: Weak<ThreadPolicy> = Arc::downgrade(self);
        rt.spawn(async move {
            let mut tick = tokio::time::interval(PRESSURE_PERIOD);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut warned = false;
            let mut last: Option<(std::time::Instant, u64)> = None;
            loop {
                tick.tick().await;
                let Some(me) = weak.upgrade() else { return };
                let now = std::time::Instant::now();
                let read = read_pressure();
                let p = match (read, last) {
                    (Some(r), Some((then, total))) => window_pressure(
                        r.total_us.saturating_sub(total),
                        now.duration_since(then).as_micros() as u64,
                    ),
                    _ => None,
                };
                last = read.map(|r| (now, r.total_us));
                if read.is_none() && !warned {
                    warned = true;
                    tracing::info!(
                        file = PRESSURE_FILE,
                        "no CPU pressure information (kernel without PSI): {} keeps its scheduling policy",
                        me.role
                    );
                }
                // The first reading gives no window yet.
                if read.is_none() || p.is_some() {
                    me.retune(p);
                }
            }
        });
    }
}

fn read_pressure() -> Option<CpuPressure> {
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
        assert_eq!(
            parse_cpu_pressure(t),
            Some(CpuPressure {
                avg10: 1.07,
                total_us: 1831616429
            })
        );
        assert_eq!(
            parse_cpu_pressure("some avg10=100.00 avg60=0 avg300=0 total=1").map(|p| p.avg10),
            Some(100.0)
        );
        for bad in [
            "",
            "full avg10=3.00 total=1",
            "some avg60=3.00 total=1",
            "some avg10= total=1",
            "some avg10=x total=1",
            "some avg10=NaN total=1",
            "some avg10=-1 total=1",
            "some avg10=101 total=1",
            "some avg10=inf total=1",
            "some avg10=1.00",
            "some avg10=1.00 total=-1",
            "some avg10=1.00 total=18446744073709551616",
        ] {
            assert_eq!(parse_cpu_pressure(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn window_pressure_is_the_stalled_share_of_the_window() {
        assert_eq!(window_pressure(0, 2_000_000), Some(0.0));
        assert_eq!(window_pressure(400_000, 2_000_000), Some(20.0));
        // Several tasks stalled at once count once; a clock step cannot exceed 100.
        assert_eq!(window_pressure(5_000_000, 2_000_000), Some(100.0));
        assert_eq!(window_pressure(1, 0), None);
    }

    proptest! {
        #[test]
        fn any_text_parses_to_none_or_a_percentage(s in ".{0,200}") {
            if let Some(p) = parse_cpu_pressure(&s) {
                prop_assert!((0.0..=100.0).contains(&p.avg10));
            }
        }

        #[test]
        fn any_window_is_a_percentage(stalled: u64, elapsed: u64) {
            if let Some(p) = window_pressure(stalled, elapsed) {
                prop_assert!((0.0..=100.0).contains(&p));
            }
        }
    }

    // SAFETY (both): plain syscalls.
    fn kernel_policy(tid: i32) -> i32 {
        unsafe { libc::sched_getscheduler(tid) }
    }
    fn my_tid() -> i32 {
        unsafe { libc::gettid() }
    }

    /// Threads that wait for the test to end, each entered into `pol`.
    fn threads(pol: &Arc<ThreadPolicy>, n: usize) -> (Vec<i32>, impl FnOnce()) {
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let done_rx = Arc::new(Mutex::new(done_rx));
        let (tid_tx, tid_rx) = std::sync::mpsc::channel();
        let mut handles = Vec::new();
        for _ in 0..n {
            let (pol, tid_tx, done_rx) = (pol.clone(), tid_tx.clone(), done_rx.clone());
            handles.push(std::thread::spawn(move || {
                pol.enter();
                tid_tx.send(my_tid()).unwrap();
                let _ = lock(&done_rx).recv();
            }));
        }
        let tids = (0..n).map(|_| tid_rx.recv().unwrap()).collect();
        (tids, move || {
            drop(done_tx);
            for h in handles {
                h.join().unwrap();
            }
        })
    }

    /// `auto` switches every thread with hysteresis: to `normal` at PRESSURE_HIGH,
    /// back to `batch` only below PRESSURE_LOW; unreadable pressure changes
    /// nothing. Read back from the kernel.
    #[test]
    fn auto_switches_with_hysteresis() {
        let pol = ThreadPolicy::pending("test threads");
        let (tids, end) = threads(&pol, 2);
        for &t in &tids {
            assert_eq!(
                kernel_policy(t),
                libc::SCHED_OTHER,
                "inherited until configured"
            );
        }
        assert_eq!(pol.describe(), "");
        pol.configure(SchedPolicy::Auto);
        assert!(
            pol.describe()
                .ends_with("(auto; CPU pressure not measured yet)"),
            "{}",
            pol.describe()
        );
        // Start from batch whatever this host's pressure is now.
        for &t in &tids {
            set_policy(t, true).unwrap();
        }
        pol.batch.store(true, Ordering::Release);
        assert!(!pol.retune(Some(PRESSURE_HIGH - 0.01)));
        assert!(!pol.retune(None));
        assert!(pol
            .describe()
            .ends_with("(auto; CPU pressure not readable)"));
        assert!(pol.retune(Some(PRESSURE_HIGH)));
        assert!(!pol.is_batch());
        for &t in &tids {
            assert_eq!(kernel_policy(t), libc::SCHED_OTHER);
        }
        assert!(pol
            .describe()
            .starts_with("normal (auto; CPU pressure 20.00 %"));
        assert!(!pol.retune(Some(PRESSURE_LOW)));
        assert!(!pol.retune(Some(PRESSURE_HIGH - 1.0)));
        assert!(pol.retune(Some(PRESSURE_LOW - 0.01)));
        for &t in &tids {
            assert_eq!(kernel_policy(t), libc::SCHED_BATCH);
        }
        assert!(pol.describe().contains("switched 2 times"));
        // After a refusal (recorded as `refuse` does), `auto` stops trying.
        *lock(&pol.refused) = Some("normal refused: Operation not permitted".into());
        assert!(!pol.retune(Some(100.0)), "no retry after a refusal");
        for &t in &tids {
            assert_eq!(kernel_policy(t), libc::SCHED_BATCH);
        }
        assert!(pol
            .describe()
            .ends_with("; normal refused: Operation not permitted"));
        *lock(&pol.refused) = None;
        end();
        // The threads are gone without leaving: a switch drops them.
        assert!(!pol.retune(Some(100.0)), "no thread left to switch");
        assert!(lock(&pol.tids).is_empty());
    }

    /// A fixed policy applies to threads entering before and after `configure`,
    /// and never switches.
    #[test]
    fn fixed_policies_apply_to_every_thread_and_never_switch() {
        for (c, expect) in [
            (SchedPolicy::Batch, libc::SCHED_BATCH),
            (SchedPolicy::Normal, libc::SCHED_OTHER),
        ] {
            let pol = ThreadPolicy::pending("test threads");
            let (early, end1) = threads(&pol, 1);
            pol.configure(c);
            let (late, end2) = threads(&pol, 1);
            for t in early.iter().chain(&late) {
                assert_eq!(kernel_policy(*t), expect, "{c:?}");
            }
            assert!(!pol.retune(Some(100.0)));
            assert!(!pol.retune(Some(0.0)));
            assert_eq!(
                pol.describe(),
                if expect == libc::SCHED_BATCH {
                    "batch"
                } else {
                    "normal"
                }
            );
            end1();
            end2();
        }
        let pol = ThreadPolicy::new(SchedPolicy::Batch, "test threads");
        let (t, end) = threads(&pol, 1);
        assert_eq!(kernel_policy(t[0]), libc::SCHED_BATCH);
        end();
    }

    #[test]
    fn policies_parse_from_their_names() {
        #[derive(serde::Deserialize)]
        struct C {
            p: SchedPolicy,
        }
        let parse = |s: &str| -> Option<SchedPolicy> {
            serde::Deserialize::deserialize(serde::de::value::MapDeserializer::<
                _,
                serde::de::value::Error,
            >::new(std::iter::once(("p", s))))
            .ok()
            .map(|c: C| c.p)
        };
        assert_eq!(parse("auto"), Some(SchedPolicy::Auto));
        assert_eq!(parse("batch"), Some(SchedPolicy::Batch));
        assert_eq!(parse("normal"), Some(SchedPolicy::Normal));
        assert_eq!(parse("fifo"), None);
    }
}
