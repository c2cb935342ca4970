//! The expensive step of TLS handshakes (key exchange and signature: a fraction of a
//! millisecond of CPU each) on threads of their own, at a lower priority, taken in turn across
//! source addresses.
//!
//! Computed on the async runtime, a flood of handshakes fills its queues: every heartbeat of
//! an agent already connected waits behind hundreds of them, and a load balancer's `/healthz`
//! probe behind the whole flood. On threads of their own (nice 10), handshakes leave the
//! runtime's workers free for established connections, and the operating system gives the
//! cores to those first. Jobs are taken address by address, the address holding the fewest
//! open connections first (round-robin among equals): a newcomer or a health checker waits
//! for a handshake or two, not for every connection a flooding address has opened.
//!
//! ```text
//!   ClientHello read ─► run(addr, open, job) ─► jobs of addr ─┐  addresses with jobs, by
//!                                                              ├─► (open connections, turn):
//!   (async task awaits the result) ◄──── oneshot ◄────────────┘  a handshake thread takes the
//!                                                                 first one's oldest job
//! ```

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Arc;

use parking_lot::{Condvar, Mutex};
use tokio::sync::oneshot;

type Job = Box<dyn FnOnce() + Send>;

/// The nice value of the handshake threads.
const NICE: i32 = 10;

/// Handshake threads and their queue; dropping it lets the threads finish.
pub struct HandshakeWorkers {
    shared: Arc<Shared>,
}

struct Shared {
    queue: Mutex<Queue>,
    ready: Condvar,
}

#[derive(Default)]
struct Queue {
    /// Each address's jobs, and its open connections when it last queued one.
    jobs: HashMap<IpAddr, (usize, VecDeque<Job>)>,
    /// One entry per address with jobs: (open connections, turn, address).
    order: BTreeSet<(usize, u64, IpAddr)>,
    turn: u64,
    closed: bool,
}

impl Queue {
    fn push(&mut self, addr: IpAddr, open: usize, job: Job) {
        self.turn += 1;
        let turn = self.turn;
        let (load, jobs) = self.jobs.entry(addr).or_default();
        jobs.push_back(job);
        if jobs.len() == 1 {
            *load = open;
            self.order.insert((open, turn, addr));
        }
    }

    /// The next job: the first address's oldest job; the address goes to the back of those
    /// with as many open connections.
    fn next(&mut self) -> Option<Job> {
        let (_, _, addr) = self.order.pop_first()?;
        let (load, jobs) = self.jobs.get_mut(&addr)?;
        let job = jobs.pop_front();
        if jobs.is_empty() {
            self.jobs.remove(&addr);
        } else {
            let load = *load;
            self.turn += 1;
            self.order.insert((load, self.turn, addr));
        }
        job
    }
}

impl HandshakeWorkers {
    /// Starts `threads` handshake threads (at least one).
    pub fn start(threads: usize) -> std::io::Result<HandshakeWorkers> {
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue::default()),
            ready: Condvar::new(),
        });
        for i in 0..threads.max(1) {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name(format!("tls-handshake-{i}"))
                .spawn(move || {
                    if let Err(e) = infraos_sys::process::lower_thread_priority(NICE) {
                        tracing::debug!(error = %e, "handshake thread keeps its priority");
                    }
                    work(&shared)
                })?;
        }
        Ok(HandshakeWorkers { shared })
    }

    /// Runs `f` on a handshake thread in the turn of `addr`, which holds `open` connections;
    /// `None` if the workers stopped. A job whose caller has left (evicted, timed out) by
    /// its turn is skipped.
    pub async fn run<T, F>(&self, addr: IpAddr, open: usize, f: F) -> Option<T>
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
            q.push(addr, open, job);
        }
        self.shared.ready.notify_one();
        rx.await.ok()
    }
}

impl Drop for HandshakeWorkers {
    fn drop(&mut self) {
        self.shared.queue.lock().closed = true;
        self.shared.ready.notify_all();
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
    fn addresses_holding_fewer_connections_go_first_then_in_turn() {
        let mut q = Queue::default();
        let order = Arc::new(Mutex::new(Vec::new()));
        // Address 1 holds 500 connections and queues four; 2 holds 500 and queues one;
        // 3 (a health checker) holds 1.
        for (i, (a, open)) in [(1, 500), (1, 500), (1, 500), (1, 500), (2, 500), (3, 1)]
            .into_iter()
            .enumerate()
        {
            let order = order.clone();
            q.push(addr(a), open, Box::new(move || order.lock().push(i)));
        }
        while let Some(job) = q.next() {
            job();
        }
        // 3 first; then 1 and 2 take turns, so 2 does not wait for all of 1's.
        assert_eq!(*order.lock(), vec![5, 0, 4, 1, 2, 3]);
        assert!(q.jobs.is_empty() && q.order.is_empty());
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
        assert_eq!(name.as_deref(), Some("tls-handshake-0"));
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
