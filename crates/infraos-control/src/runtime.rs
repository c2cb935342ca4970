//! The controller runtime, written once for every controller (kube-runtime's `Controller`).
//!
//! ```text
//!   store ──list/watch──► reflector ──Change──► Cache<T> (Arc<T>, swapped whole on relist)
//!         (relists on a compacted revision)         │ touched keys
//!                                                   ▼
//!   resync tick ──all keys──► WorkQueue (dedup; one run per key at a time; timers)
//!                                                   │ pop
//!                                                   ▼
//!                  reconcile(Arc<T>, ctx) ──► Ok(Action::requeue(d) | await_change)
//!                                        └──► Err(e) ──► error_policy(e, backoff) ──► Action
//! ```
//! Reconcilers are level-triggered: they get the object as the cache holds it now, never an
//! event, so a missed or merged change costs nothing. A failure is retried after a capped
//! exponential backoff without waiting for another change: a claim whose finalization keeps
//! conflicting is finalized as soon as the conflicts stop.

pub mod cache;
pub mod queue;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use foldhash::HashMap;
use futures::StreamExt as _;
use futures::stream::FuturesUnordered;
use serde::de::DeserializeOwned;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::Context;
use crate::reflector::{self, Change};
pub use cache::{Cache, Select, Touched};
pub use queue::{Backoff, WorkQueue};

/// What a reconcile asks for next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Action {
    requeue_after: Option<Duration>,
}

impl Action {
    /// Reconcile again after `after`, even if nothing changes (a lease that will run out).
    pub fn requeue(after: Duration) -> Action {
        Action {
            requeue_after: Some(after),
        }
    }

    /// Reconcile again only when the object changes (or at the periodic resync).
    pub fn await_change() -> Action {
        Action {
            requeue_after: None,
        }
    }

    pub fn requeue_after(&self) -> Option<Duration> {
        self.requeue_after
    }
}

/// One controller: what it watches, how it decides, and how it takes failures.
pub trait Reconciler: Send + Sync + 'static {
    /// The cached form of a watched object: `Object<K>`, or a smaller view of it.
    type Object: DeserializeOwned + Send + Sync + 'static;
    type Error: std::fmt::Display + Send + 'static;

    /// Names the controller in logs.
    fn name(&self) -> &'static str;

    /// Brings the world in line with `object` (stored at `key`); idempotent.
    fn reconcile(
        &self,
        key: &str,
        object: Arc<Self::Object>,
        ctx: &Context,
    ) -> impl Future<Output = Result<Action, Self::Error>> + Send;

    /// What to do after a failed reconcile; `backoff` is the runtime's capped exponential
    /// delay for this key's failures in a row.
    fn error_policy(&self, _key: &str, _error: &Self::Error, backoff: Duration) -> Action {
        Action::requeue(backoff)
    }

    /// The object at `key` left the cache (deleted, or no longer selected).
    fn deleted(&self, _key: &str) {}

    /// Resolves when every cached key should be reconciled again, for a signal from outside
    /// the store (heartbeats kept in memory); never, by default.
    fn woken(&self) -> impl Future<Output = ()> + Send {
        std::future::pending()
    }
}

/// How a controller runs.
#[derive(Clone, Debug)]
pub struct Config {
    /// The watched prefix of the store.
    pub prefix: String,
    /// Which objects to cache, judged on their bytes (the others are never reconciled).
    pub select: Option<Select>,
    /// Most reconciles in flight at once (of different keys).
    pub concurrency: usize,
    /// Every key is reconciled again this often, changed or not.
    pub resync: Option<Duration>,
    pub backoff: Backoff,
}

impl Config {
    pub fn new(prefix: impl Into<String>) -> Config {
        Config {
            prefix: prefix.into(),
            select: None,
            concurrency: 16,
            resync: Some(Duration::from_secs(300)),
            backoff: Backoff::default(),
        }
    }
}

/// Starts the watch of `config.prefix` and the controller over it, until `shutdown`.
pub fn spawn<R: Reconciler>(
    reconciler: R,
    config: Config,
    ctx: Context,
    shutdown: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    let (tx, rx) = mpsc::channel(4096);
    tokio::spawn(reflector::run(
        ctx.store.clone(),
        config.prefix.clone(),
        (),
        tx,
        shutdown.clone(),
    ));
    tokio::spawn(run(reconciler, config, ctx, rx, shutdown))
}

type Running<'a, E> = Pin<Box<dyn Future<Output = (String, Result<Action, E>)> + Send + 'a>>;

/// The controller loop over the changes `rx` delivers (a reflector's, or a test's).
pub async fn run<R: Reconciler>(
    reconciler: R,
    config: Config,
    ctx: Context,
    mut rx: mpsc::Receiver<Change<()>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut cache = Cache::<R::Object>::new(config.select);
    let mut queue = WorkQueue::default();
    let mut failures: HashMap<String, u32> = HashMap::default();
    let mut running: FuturesUnordered<Running<'_, R::Error>> = FuturesUnordered::new();
    let resync_every = config.resync.unwrap_or(Duration::MAX);
    let mut next_resync = Instant::now().checked_add(resync_every);
    let concurrency = config.concurrency.max(1);
    loop {
        while running.len() < concurrency
            && let Some(key) = queue.pop()
        {
            match cache.get(&key) {
                Some(object) => {
                    let reconciler = &reconciler;
                    let ctx = &ctx;
                    running.push(Box::pin(async move {
                        let result = reconciler.reconcile(&key, object, ctx).await;
                        (key, result)
                    }));
                }
                None => queue.done(&key, None, Instant::now()),
            }
        }
        let wake = [queue.next_timer(), next_resync]
            .into_iter()
            .flatten()
            .min();
        tokio::select! {
            change = rx.recv() => {
                let Some(change) = change else { return };
                for touched in cache.apply(&change) {
                    match touched {
                        Touched::Put(key) => queue.trigger(&key),
                        Touched::Deleted(key) => {
                            queue.forget(&key);
                            failures.remove(&key);
                            reconciler.deleted(&key);
                        }
                    }
                }
            }
            Some((key, result)) = running.next(), if !running.is_empty() => {
                let action = match result {
                    Ok(action) => {
                        failures.remove(&key);
                        action
                    }
                    Err(error) => {
                        let n = failures.entry(key.clone()).or_insert(0);
                        *n = n.saturating_add(1);
                        let backoff = config.backoff.delay(*n);
                        tracing::warn!(
                            controller = reconciler.name(),
                            %key,
                            %error,
                            retry_in_ms = backoff.as_millis() as u64,
                            "reconcile failed"
                        );
                        reconciler.error_policy(&key, &error, backoff)
                    }
                };
                queue.done(&key, action.requeue_after(), Instant::now());
            }
            _ = sleep_until(wake) => {
                let now = Instant::now();
                queue.fire_due(now);
                if next_resync.is_some_and(|at| at <= now) {
                    for key in cache.keys() {
                        queue.trigger(key);
                    }
                    next_resync = now.checked_add(resync_every);
                }
            }
            _ = reconciler.woken() => {
                for key in cache.keys() {
                    queue.trigger(key);
                }
            }
            _ = shutdown.changed() => return,
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
#[path = "runtime_tests.rs"]
mod tests;
