//! Overlay lookups with coalescing and a small cache.
//!
//! The first query for a name calls [`OverlayResolver::resolve`] (bounded by the overlay
//! timeout); queries for the same name arriving while that call runs wait for its result
//! instead of calling again. Found answers are cached for the configured TTL, NXDOMAIN for
//! [`NEGATIVE_TTL`]; failures are not cached (the next query tries again). The cache holds
//! at most [`MAX_CACHE`] names; when full, expired entries are purged and, if that is not
//! enough, the cache is emptied.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use cyphonic_proto::Fqdn;
use tokio::sync::watch;
use tokio::time::Instant;

use super::wire::Outcome;
use super::{OverlayError, OverlayResolver, NEGATIVE_TTL};

/// Most names kept in the cache.
pub const MAX_CACHE: usize = 4096;

type Slot = watch::Receiver<Option<Outcome>>;

#[derive(Default)]
struct State {
    cache: HashMap<Fqdn, (Instant, Outcome)>,
    inflight: HashMap<Fqdn, Slot>,
}

/// Coalescing, caching front of an [`OverlayResolver`].
pub struct Lookups {
    resolver: Arc<dyn OverlayResolver>,
    timeout: Duration,
    ttl: Duration,
    state: Mutex<State>,
}

/// Removes the in-flight entry when the leading lookup ends, however it ends.
struct InflightGuard<'a> {
    lookups: &'a Lookups,
    name: &'a Fqdn,
}

impl Drop for InflightGuard<'_> {
    fn drop(&mut self) {
        self.lookups.lock().inflight.remove(self.name);
    }
}

enum Role {
    Done(Outcome),
    Follow(Slot),
    Lead(watch::Sender<Option<Outcome>>),
}

impl Lookups {
    /// Wrap `resolver`; `ttl` in seconds for found names, `timeout` per lookup.
    pub fn new(resolver: Arc<dyn OverlayResolver>, ttl: u32, timeout: Duration) -> Self {
        Lookups {
            resolver,
            timeout,
            ttl: Duration::from_secs(u64::from(ttl)),
            state: Mutex::new(State::default()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the maps inconsistent in a way
        // that matters (worst case a stale entry), so poisoning is ignored.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Resolve `name`, sharing the work with concurrent callers and the cache.
    pub async fn lookup(&self, name: &Fqdn) -> Outcome {
        let role = {
            let mut st = self.lock();
            let now = Instant::now();
            match st.cache.get(name) {
                Some((exp, out)) if *exp > now => Role::Done(out.clone()),
                _ => match st.inflight.get(name) {
                    Some(rx) => Role::Follow(rx.clone()),
                    None => {
                        let (tx, rx) = watch::channel(None);
                        st.inflight.insert(name.clone(), rx);
                        Role::Lead(tx)
                    }
                },
            }
        };
        match role {
            Role::Done(out) => out,
            Role::Follow(mut rx) => {
                // The leader is bounded by the same timeout; the margin only covers
                // scheduling. A leader that vanished (sender dropped) counts as a failure.
                let waited =
                    tokio::time::timeout(self.timeout + Duration::from_millis(500), async {
                        rx.wait_for(Option::is_some)
                            .await
                            .ok()
                            .and_then(|v| v.clone())
                    })
                    .await;
                waited.ok().flatten().unwrap_or(Outcome::Failed)
            }
            Role::Lead(tx) => {
                let _guard = InflightGuard {
                    lookups: self,
                    name,
                };
                let fut = self.resolver.resolve(name.clone());
                let out = match tokio::time::timeout(self.timeout, fut).await {
                    Ok(Ok(ans)) => Outcome::Found(ans),
                    Ok(Err(OverlayError::NoSuchName)) => Outcome::NoSuchName,
                    Ok(Err(OverlayError::Unreachable(why))) => {
                        tracing::debug!(%name, %why, "overlay name unreachable");
                        Outcome::Failed
                    }
                    Err(_) => {
                        tracing::debug!(%name, "overlay lookup timed out");
                        Outcome::Failed
                    }
                };
                self.store(name, &out);
                // Receivers may all be gone; that is fine.
                let _ = tx.send(Some(out.clone()));
                out
            }
        }
    }

    fn store(&self, name: &Fqdn, out: &Outcome) {
        let life = match out {
            Outcome::Found(_) => self.ttl,
            Outcome::NoSuchName => NEGATIVE_TTL,
            Outcome::Failed => return,
        };
        if life.is_zero() {
            return;
        }
        let now = Instant::now();
        let mut st = self.lock();
        if st.cache.len() >= MAX_CACHE {
            st.cache.retain(|_, (exp, _)| *exp > now);
            if st.cache.len() >= MAX_CACHE {
                st.cache.clear();
            }
        }
        st.cache.insert(name.clone(), (now + life, out.clone()));
    }
}
