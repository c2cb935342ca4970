//! The expensive step of TLS handshakes (key exchange and signature: a fraction of a
//! millisecond of CPU each) on threads of their own, taken in turn across source addresses.
//!
//! Computed on the async runtime, a flood of handshakes fills its queues: every heartbeat of
//! an agent already connected waits behind hundreds of them, and a load balancer's `/healthz`
//! probe behind the whole flood. On threads of their own, handshakes leave the runtime's
//! workers free for established connections. Two lanes:
//!
//! - express (one thread, normal priority): clients from an address holding at most
//!   [`EXPRESS_MAX`] connections — an agent (one connection per machine), a health checker,
//!   a person's CLI;
//! - bulk (nice 10, so the cores go to established connections first): addresses holding
//!   more — a flood, or many clients behind one NAT.
//!
//! In each lane jobs are taken in rotation over the addresses waiting, so one address's
//! hundred handshakes do not delay another's by a hundred. (Serving addresses that hold fewer
//! connections strictly first was tried: it starved busier addresses while a flood's were
//! young.)
//!
//! ```text
//!   ClientHello read ─► run(addr, open, job) ─┬─ open ≤ EXPRESS_MAX ─► express lane ─┐ ring of
//!                                             └─ otherwise ─────────► bulk lane ─────┤ addresses;
//!   (async task awaits the result) ◄──────── oneshot ◄──────────────────────────────┘ next one's
//!                                                                                       oldest job
//! ```

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Arc;

use parking_lot::{Condvar, Mutex};
use tokio::sync::oneshot;

type Job = Box<dyn FnOnce() + Send>;

/// Open connections an address may hold for its handshakes to take the express lane.
pub const EXPRESS_MAX: usize = 4;

/// The nice value of the bulk lane's threads.
const BULK_NICE: i32 = 10;

/// The two lanes of handshake threads; dropping it lets the threads finish.
pub struct HandshakeWorkers {
    express: Lane,
    bulk: Lane,
}

/// Threads sharing one queue.
struct Lane {
    shared: Arc<Shared>,
}

struct Shared {
    queue: Mutex<Queue>,
    ready: Condvar,
}

#[derive(Default)]
struct Queue {
    jobs: HashMap<IpAddr, VecDeque<Job>>,
    /// Each address with jobs, once, in turn order.
    ring: VecDeque<IpAddr>,
    closed: bool,
}

impl Queue {
    fn push(&mut self, addr: IpAddr, job: Job) {
        let jobs = self.jobs.entry(addr).or_default();
        jobs.push_back(job);
        if jobs.len() == 1 {
            self.ring.push_back(addr);
        }
    }

    /// The next job: the ring's next address, its oldest job; the address goes to the back.
    fn next(&mut self) -> Option<Job> {
        let addr = self.ring.pop_front()?;
        let jobs = self.jobs.get_mut(&addr)?;
        let job = jobs.pop_front();
        if jobs.is_empty() {
            self.jobs.remove(&addr);
        } else {
            self.ring.push_back(addr);
        }
        job
    }
}

impl Lane {
    fn start(name: &str, threads: usize, nice: i32) -> std::io::Result<Lane> {
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue::default()),
            ready: Condvar::new(),
        });
        for i in 0..threads.max(1) {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name(format!("tls-{name}-{i}"))
                .spawn(move || {
                    if nice > 0
                        && let Err(e) = infraos_sys::process::lower_thread_priority(nice)
                    {
                        tracing::debug!(error = %e, "handshake thread keeps its priority");
                    }
                    work(&shared)
                })?;
        }
        Ok(Lane { shared })
    }

    async fn run<T, F>(&self, addr: IpAddr, f: F) -> Option<T>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move || {
            if !tx.is_closed() {
                let _ = tx.send(f());
            }
        });
        {
            let mut q = self.shared.queue.lock();
            if q.closed {
                return None;
            }
            q.push(addr, job);
        }
        self.shared.ready.notify_one();
        rx.await.ok()
    }
}

impl Drop for Lane {
    fn drop(&mut self) {
        self.shared.queue.lock().closed = true;
        self.shared.ready.notify_all();
    }
}

impl HandshakeWorkers {
    /// Starts the express thread and `bulk` bulk threads (at least one).
    pub fn start(bulk: usize) -> std::io::Result<HandshakeWorkers> {
        Ok(HandshakeWorkers {
            express: Lane::start("express", 1, 0)?,
            bulk: Lane::start("bulk", bulk, BULK_NICE)?,
        })
    }

    /// Runs `f` on a handshake thread in the turn of `addr`, which holds `open` connections
    /// (this one included); `None` if the workers stopped. A job whose caller has left
    /// (evicted, timed out) by its turn is skipped.
    pub async fn run<T, F>(&self, addr: IpAddr, open: usize, f: F) -> Option<T>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let lane = if open <= EXPRESS_MAX {
            &self.express
        } else {
            &self.bulk
        };
        lane.run(addr, f).await
    }
}

fn work(shared: &Shared) {
    loop {
        let job = {
            let mut q = shared.queue.lock();
            loop {
                if let Some(job) = q.next() {
                    break job;
                }
                if q.closed {
                    return;
                }
                shared.ready.wait(&mut q);
            }
        };
        job();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(last: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, last])
    }

    #[test]
    fn jobs_go_round_the_addresses_not_in_arrival_order() {
        let mut q = Queue::default();
        let order = Arc::new(Mutex::new(Vec::new()));
        for (i, a) in [1, 1, 1, 1, 2, 3].into_iter().enumerate() {
            let order = order.clone();
            q.push(addr(a), Box::new(move || order.lock().push(i)));
        }
        while let Some(job) = q.next() {
            job();
        }
        // Address 1 queued four first; 2 and 3 go second and third, not fifth and sixth.
        assert_eq!(*order.lock(), vec![0, 4, 5, 1, 2, 3]);
        assert!(q.jobs.is_empty() && q.ring.is_empty());
    }

    #[tokio::test]
    async fn jobs_run_on_the_handshake_threads_and_skip_callers_that_left() {
        let workers = HandshakeWorkers::start(1).unwrap();
        let name = workers
            .run(addr(1), 0, || {
                std::thread::current().name().map(str::to_string)
            })
            .await
            .unwrap();
        assert_eq!(name.as_deref(), Some("tls-express-0"));
        let name = workers
            .run(addr(1), EXPRESS_MAX + 1, || {
                std::thread::current().name().map(str::to_string)
            })
            .await
            .unwrap();
        assert_eq!(name.as_deref(), Some("tls-bulk-0"));
        // The one thread is kept busy while a second caller queues, then leaves.
        let workers = Arc::new(workers);
        let (release, blocked) = std::sync::mpsc::channel::<()>();
        let blocker = {
            let workers = workers.clone();
            tokio::spawn(async move {
                workers
                    .run(addr(1), 0, move || {
                        let _ = blocked.recv();
                    })
                    .await
            })
        };
        let ran = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let leaver = {
            let (workers, ran) = (workers.clone(), ran.clone());
            tokio::spawn(async move {
                workers
                    .run(addr(2), 0, move || {
                        ran.store(true, std::sync::atomic::Ordering::SeqCst)
                    })
                    .await
            })
        };
        // Both queue their jobs (this test's runtime is single-threaded).
        tokio::task::yield_now().await;
        leaver.abort();
        assert!(leaver.await.is_err());
        release.send(()).unwrap();
        blocker.await.unwrap().unwrap();
        // Jobs of one address run in order: once this one ran, the leaver's turn has passed.
        workers.run(addr(2), 0, || ()).await.unwrap();
        assert!(
            !ran.load(std::sync::atomic::Ordering::SeqCst),
            "the job of a caller that left is skipped"
        );
    }
}
