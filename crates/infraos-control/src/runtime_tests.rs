//! The runtime on paused time: requeues, backoff caps, one reconcile per key at a time,
//! and the watcher's relist after a compaction.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicUsize, Ordering};

use infraos_store::{Event, EventKind, KeyValue, Store as _, Txn};
use parking_lot::Mutex;
use tokio::sync::Semaphore;

use super::*;
use crate::testing;

/// What a test reconciler does with each run.
#[derive(Clone, Copy)]
enum Behaviour {
    Requeue(Duration),
    Fail,
    /// Waits for a permit of the gate, then awaits a change.
    Gated,
}

struct Probe {
    behaviour: Behaviour,
    runs: Arc<Mutex<Vec<(String, Instant)>>>,
    in_flight: Arc<AtomicUsize>,
    most_in_flight: Arc<AtomicUsize>,
    gate: Arc<Semaphore>,
}

impl Reconciler for Probe {
    type Object = serde_json::Value;
    type Error = String;

    fn name(&self) -> &'static str {
        "probe"
    }

    async fn reconcile(
        &self,
        key: &str,
        _object: Arc<serde_json::Value>,
        _ctx: &Context,
    ) -> Result<Action, String> {
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.most_in_flight.fetch_max(now, Ordering::SeqCst);
        self.runs.lock().push((key.to_string(), Instant::now()));
        let result = match self.behaviour {
            Behaviour::Requeue(d) => Ok(Action::requeue(d)),
            Behaviour::Fail => Err("boom".to_string()),
            Behaviour::Gated => {
                self.gate.acquire().await.unwrap().forget();
                Ok(Action::await_change())
            }
        };
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        result
    }
}

struct Harness {
    tx: mpsc::Sender<Change<()>>,
    runs: Arc<Mutex<Vec<(String, Instant)>>>,
    most_in_flight: Arc<AtomicUsize>,
    gate: Arc<Semaphore>,
    _stop: watch::Sender<bool>,
    _dir: tempfile::TempDir,
}

fn kv(key: &str, revision: u64) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: serde_json::to_vec(&serde_json::json!({"rev": revision}))
            .unwrap()
            .into(),
        create_revision: 1,
        mod_revision: revision,
        version: revision,
    }
}

fn put(key: &str, revision: u64) -> Change<()> {
    Change::Events(
        (),
        Arc::from(vec![Event {
            kind: EventKind::Put,
            kv: kv(key, revision),
            prev: None,
            decoded: None,
        }]),
    )
}

fn start(behaviour: Behaviour, config: Config) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let ctx = testing::context(testing::store(dir.path()));
    let runs = Arc::new(Mutex::new(Vec::new()));
    let most_in_flight = Arc::new(AtomicUsize::new(0));
    let gate = Arc::new(Semaphore::new(0));
    let probe = Probe {
        behaviour,
        runs: runs.clone(),
        in_flight: Arc::new(AtomicUsize::new(0)),
        most_in_flight: most_in_flight.clone(),
        gate: gate.clone(),
    };
    let (tx, rx) = mpsc::channel(64);
    let (stop, stop_rx) = watch::channel(false);
    tokio::spawn(run(probe, config, ctx, rx, stop_rx));
    Harness {
        tx,
        runs,
        most_in_flight,
        gate,
        _stop: stop,
        _dir: dir,
    }
}

fn config() -> Config {
    Config {
        resync: None,
        ..Config::new("/test/")
    }
}

/// Lets the runtime's task run until it waits again (time is paused: nothing else moves).
async fn settle() {
    for _ in 0..50 {
        tokio::task::yield_now().await;
    }
}

fn gaps(runs: &[(String, Instant)]) -> Vec<u64> {
    runs.windows(2)
        .map(|w| (w[1].1 - w[0].1).as_millis() as u64)
        .collect()
}

#[tokio::test(start_paused = true)]
async fn a_requeue_runs_again_without_a_change() {
    let h = start(Behaviour::Requeue(Duration::from_secs(10)), config());
    h.tx.send(Change::Resync((), vec![kv("/test/a", 1)], 1))
        .await
        .unwrap();
    settle().await;
    assert_eq!(h.runs.lock().len(), 1);
    tokio::time::sleep(Duration::from_millis(9_900)).await;
    settle().await;
    assert_eq!(h.runs.lock().len(), 1, "not before its time");
    tokio::time::sleep(Duration::from_millis(35_000)).await;
    settle().await;
    let runs = h.runs.lock().clone();
    assert_eq!(runs.len(), 5, "{runs:?}");
    assert_eq!(gaps(&runs), [10_000, 10_000, 10_000, 10_000]);
}

#[tokio::test(start_paused = true)]
async fn failures_back_off_exponentially_up_to_the_cap() {
    let mut c = config();
    c.backoff = Backoff {
        base: Duration::from_millis(100),
        cap: Duration::from_secs(1),
    };
    let h = start(Behaviour::Fail, c);
    h.tx.send(Change::Resync((), vec![kv("/test/a", 1)], 1))
        .await
        .unwrap();
    settle().await;
    tokio::time::sleep(Duration::from_millis(5_000)).await;
    settle().await;
    let runs = h.runs.lock().clone();
    assert_eq!(gaps(&runs), [100, 200, 400, 800, 1000, 1000, 1000]);
}

#[tokio::test(start_paused = true)]
async fn a_change_resets_the_backoff_of_a_deleted_and_recreated_key() {
    let h = start(Behaviour::Fail, config());
    h.tx.send(put("/test/a", 2)).await.unwrap();
    settle().await;
    tokio::time::sleep(Duration::from_millis(350)).await;
    settle().await;
    assert_eq!(h.runs.lock().len(), 3, "0, 100, 300 ms");
    // Deleted: no more retries.
    h.tx.send(Change::Events(
        (),
        Arc::from(vec![Event {
            kind: EventKind::Delete,
            kv: kv("/test/a", 3),
            prev: None,
            decoded: None,
        }]),
    ))
    .await
    .unwrap();
    settle().await;
    tokio::time::sleep(Duration::from_secs(60)).await;
    settle().await;
    assert_eq!(h.runs.lock().len(), 3);
    // Created again: retried from the base delay.
    h.tx.send(put("/test/a", 4)).await.unwrap();
    settle().await;
    tokio::time::sleep(Duration::from_millis(150)).await;
    settle().await;
    assert_eq!(gaps(&h.runs.lock()[3..]), [100]);
}

#[tokio::test(start_paused = true)]
async fn changes_to_a_busy_key_are_merged_into_one_more_run() {
    let h = start(Behaviour::Gated, config());
    h.tx.send(put("/test/a", 1)).await.unwrap();
    h.tx.send(put("/test/b", 2)).await.unwrap();
    settle().await;
    assert_eq!(h.runs.lock().len(), 2, "a and b run side by side");
    for rev in 3..20 {
        h.tx.send(put("/test/a", rev)).await.unwrap();
    }
    settle().await;
    assert_eq!(h.runs.lock().len(), 2, "a is not run again while it runs");
    h.gate.add_permits(2);
    settle().await;
    let keys: Vec<String> = h.runs.lock().iter().map(|(k, _)| k.clone()).collect();
    assert_eq!(keys, ["/test/a", "/test/b", "/test/a"]);
    h.gate.add_permits(10);
    settle().await;
    assert_eq!(h.runs.lock().len(), 3, "seventeen changes, one more run");
    assert_eq!(h.most_in_flight.load(Ordering::SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn a_periodic_resync_reconciles_every_key() {
    let mut c = config();
    c.resync = Some(Duration::from_secs(60));
    // `Duration::MAX` cannot be added to an instant: an await_change in effect.
    let h = start(Behaviour::Requeue(Duration::MAX), c);
    h.tx.send(Change::Resync(
        (),
        vec![kv("/test/a", 1), kv("/test/b", 1)],
        1,
    ))
    .await
    .unwrap();
    settle().await;
    assert_eq!(h.runs.lock().len(), 2);
    tokio::time::sleep(Duration::from_secs(61)).await;
    settle().await;
    assert_eq!(h.runs.lock().len(), 4);
}

/// The watcher (the reflector) relists when the store says the watched revision was
/// compacted, and the cache takes each list whole: a key gone from the list leaves it.
#[tokio::test]
async fn the_watcher_relists_after_a_compaction() {
    let dir = tempfile::tempdir().unwrap();
    let flaky = testing::Flaky::new(testing::store(dir.path()));
    flaky.compactions.store(1, Ordering::SeqCst);
    flaky
        .txn(Txn::new().put("/test/a", "{}").put("/test/b", "{}"))
        .await
        .unwrap();
    let mut cache = Cache::<serde_json::Value>::new(None);
    cache.apply(&Change::Resync(
        (),
        vec![kv("/test/a", 1), kv("/test/stale", 1)],
        1,
    ));
    let (tx, mut rx) = mpsc::channel(16);
    let (_stop, stop_rx) = watch::channel(false);
    tokio::spawn(reflector::run(
        flaky.clone() as Arc<dyn infraos_store::Store>,
        "/test/".to_string(),
        (),
        tx,
        stop_rx,
    ));
    let mut next = async || {
        tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("a change within 10 s")
            .expect("the reflector runs")
    };
    let first = next().await;
    assert!(matches!(first, Change::Resync(..)));
    assert_eq!(
        cache.apply(&first),
        [
            Touched::Put("/test/a".into()),
            Touched::Put("/test/b".into()),
            Touched::Deleted("/test/stale".into())
        ]
    );
    // The first watch was compacted: the reflector lists again.
    let second = next().await;
    assert!(matches!(second, Change::Resync(..)), "relisted");
    assert_eq!(cache.apply(&second).len(), 2);
    // The second watch is a real one: a write arrives as an event.
    flaky.txn(Txn::new().put("/test/c", "{}")).await.unwrap();
    let third = next().await;
    assert_eq!(cache.apply(&third), [Touched::Put("/test/c".into())]);
    assert_eq!(cache.len(), 3);
    assert_eq!(flaky.watches.load(Ordering::SeqCst), 2);
}
