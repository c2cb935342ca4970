//! The API gateway's limits: per-identity request rates and requests in flight (429 with
//! Retry-After), a deadline for every request to be answered, and separate budgets so that
//! agents' heartbeats never wait behind a flooding user.
//!
//! ```text
//!   node:<name>  ─► node bucket (its own, per node)     ─┐
//!   user:<name>  ─► user bucket + in-flight cap per user ─┼─► authorize ─► handler
//!   exempt group ─► (system:masters by default)          ─┘    (deadline: requestTimeout)
//!   refused anonymous requests ─► per-address bucket ─► cluster-wide bucket ─► audited
//!   (failed sign-ins, refused joins)      └── either empty: 429, not audited
//! ```
//! Anonymous requests have no identity, so what bounds them is where they come from: an IPv4
//! address, or an IPv6 /64 (one host usually holds a whole /64, so single IPv6 addresses would
//! be free to mint). The cluster-wide bucket bounds the audit records that every address
//! together can make, so a botnet cannot turn refusals into a disk-filling stream either.
//! Buckets are GCRA (the `governor` crate): a steady rate with a burst allowance, O(1) per
//! request and no background timers.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;

use crate::error::ApiError;
use crate::identity::Identity;

/// `apiLimits:` in server.yaml.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct ApiLimits {
    /// Requests per second each user may make, sustained…
    pub user_rate: u32,
    /// …and in a burst.
    pub user_burst: u32,
    /// Requests of one user being answered at once (watches and log streams count only
    /// until their headers are sent).
    pub user_in_flight: u32,
    /// Requests of one user that may wait for an in-flight slot; beyond, 429 at once.
    pub queue_length: u32,
    /// How long a user's request over the rate waits for its turn (holding one of the user's
    /// in-flight slots) before it gets 429: a client that waits for answers is slowed to the
    /// rate instead of spinning on refusals, as Kubernetes' priority and fairness queues.
    pub queue_wait: infraos_api::Duration,
    /// Requests per second each node (agent) may make, and its burst: a budget of its own.
    pub node_rate: u32,
    pub node_burst: u32,
    /// Refused anonymous requests (failed sign-ins, refused joins) per second per source
    /// address (IPv6: per /64) that are audited; beyond, 429 and no record.
    pub anonymous_rate: u32,
    /// The same, for all addresses together: the most audit records per second that callers
    /// without credentials can cause.
    pub anonymous_total_rate: u32,
    /// Members of these groups are not limited (the administrator's token is in
    /// `system:masters`).
    pub exempt_groups: Vec<String>,
    /// How long a request may take to be answered before it gets 504.
    pub request_timeout: infraos_api::Duration,
    /// Largest request head (request line and headers) accepted, in bytes (431 beyond).
    pub max_header_bytes: usize,
}

impl Default for ApiLimits {
    fn default() -> Self {
        ApiLimits {
            user_rate: 100,
            user_burst: 200,
            user_in_flight: 32,
            queue_length: 128,
            queue_wait: infraos_api::Duration::from_secs(1),
            node_rate: 50,
            node_burst: 100,
            anonymous_rate: 10,
            anonymous_total_rate: 100,
            exempt_groups: vec![infraos_api::kinds::ADMINS_GROUP.to_string()],
            request_timeout: infraos_api::Duration::from_secs(60),
            max_header_bytes: 32 * 1024,
        }
    }
}

impl ApiLimits {
    pub fn validate(&self) -> Result<(), String> {
        for (field, v) in [
            ("userRate", self.user_rate),
            ("userBurst", self.user_burst),
            ("userInFlight", self.user_in_flight),
            ("nodeRate", self.node_rate),
            ("nodeBurst", self.node_burst),
            ("anonymousRate", self.anonymous_rate),
            ("anonymousTotalRate", self.anonymous_total_rate),
        ] {
            if v == 0 {
                return Err(format!("apiLimits.{field}: must be at least 1"));
            }
        }
        if self.request_timeout.as_millis() < 1000 {
            return Err("apiLimits.requestTimeout: must be at least 1s".into());
        }
        if self.max_header_bytes < 8192 {
            return Err("apiLimits.maxHeaderBytes: must be at least 8192".into());
        }
        Ok(())
    }
}

fn quota(rate: u32, burst: u32) -> Quota {
    let one = NonZeroU32::MIN;
    Quota::per_second(NonZeroU32::new(rate).unwrap_or(one))
        .allow_burst(NonZeroU32::new(burst.max(rate)).unwrap_or(one))
}

pub struct Limits {
    config: ApiLimits,
    users: DefaultKeyedRateLimiter<String>,
    nodes: DefaultKeyedRateLimiter<String>,
    anonymous: DefaultKeyedRateLimiter<IpAddr>,
    anonymous_total: governor::DefaultDirectRateLimiter,
    in_flight: Mutex<HashMap<String, Arc<Slots>>>,
    clock: DefaultClock,
}

/// One user's in-flight slots and the requests waiting for one.
struct Slots {
    semaphore: Arc<Semaphore>,
    waiting: std::sync::atomic::AtomicU32,
}

impl Limits {
    pub fn new(config: ApiLimits) -> Limits {
        Limits {
            users: RateLimiter::keyed(quota(config.user_rate, config.user_burst)),
            nodes: RateLimiter::keyed(quota(config.node_rate, config.node_burst)),
            anonymous: RateLimiter::keyed(quota(config.anonymous_rate, config.anonymous_rate)),
            anonymous_total: RateLimiter::direct(quota(
                config.anonymous_total_rate,
                config.anonymous_total_rate,
            )),
            in_flight: Mutex::new(HashMap::new()),
            clock: DefaultClock::default(),
            config,
        }
    }

    fn retry_after(&self, not_until: governor::NotUntil<governor::clock::QuantaInstant>) -> u64 {
        let wait = not_until.wait_time_from(self.clock.now());
        wait.as_secs() + u64::from(wait.subsec_nanos() > 0)
    }

    /// Whether a refused anonymous request from `ip` (a failed sign-in, a refused join) may
    /// still be audited: within its address's rate and the cluster-wide one. `Err` holds the
    /// seconds to wait, for a 429. Each call that returns `Ok` spends one of each budget.
    pub fn anonymous_allowed(&self, ip: IpAddr) -> Result<(), u64> {
        self.anonymous
            .check_key(&anonymous_key(ip))
            .map_err(|n| self.retry_after(n))?;
        self.anonymous_total
            .check()
            .map_err(|n| self.retry_after(n))
    }

    /// Admits a request of `identity`, or says why not. The permit, if any, is held until
    /// the response is ready.
    async fn admit(
        &self,
        identity: &Identity,
    ) -> Result<Option<tokio::sync::OwnedSemaphorePermit>, ApiError> {
        if let Some(node) = identity.node() {
            return match self.nodes.check_key(&node.to_string()) {
                Ok(()) => Ok(None),
                Err(n) => Err(ApiError::too_many_requests(
                    format!(
                        "node:{node} exceeds {} requests/s (burst {})",
                        self.config.node_rate, self.config.node_burst
                    ),
                    self.retry_after(n),
                )),
            };
        }
        if identity
            .groups
            .iter()
            .any(|g| self.config.exempt_groups.contains(g))
        {
            return Ok(None);
        }
        let slots = {
            let mut map = self.in_flight.lock();
            Arc::clone(map.entry(identity.subject.clone()).or_insert_with(|| {
                Arc::new(Slots {
                    semaphore: Arc::new(Semaphore::new(self.config.user_in_flight as usize)),
                    waiting: Default::default(),
                })
            }))
        };
        let busy = || {
            ApiError::too_many_requests(
                format!(
                    "{} has {} requests in flight and {} waiting already; wait for answers",
                    identity.subject, self.config.user_in_flight, self.config.queue_length
                ),
                1,
            )
        };
        let permit = match Arc::clone(&slots.semaphore).try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                use std::sync::atomic::Ordering::Relaxed;
                if slots.waiting.fetch_add(1, Relaxed) >= self.config.queue_length {
                    slots.waiting.fetch_sub(1, Relaxed);
                    // Answered no sooner than a queued request would be: a client opening
                    // ever more connections gains refusals at the same pace, not faster.
                    tokio::time::sleep(self.config.queue_wait.as_std()).await;
                    return Err(busy());
                }
                let acquired = tokio::time::timeout(
                    self.config.queue_wait.as_std(),
                    Arc::clone(&slots.semaphore).acquire_owned(),
                )
                .await;
                slots.waiting.fetch_sub(1, Relaxed);
                match acquired {
                    Ok(Ok(p)) => p,
                    _ => return Err(busy()),
                }
            }
        };
        if let Err(n) = self.users.check_key(&identity.subject) {
            let retry = self.retry_after(n);
            let waited = tokio::time::timeout(
                self.config.queue_wait.as_std(),
                self.users.until_key_ready(&identity.subject),
            )
            .await;
            if waited.is_err() {
                return Err(ApiError::too_many_requests(
                    format!(
                        "{} exceeds {} requests/s (burst {}); slow down",
                        identity.subject, self.config.user_rate, self.config.user_burst
                    ),
                    retry,
                ));
            }
        }
        Ok(Some(permit))
    }

    /// Forgets idle callers, so the maps do not grow with every identity ever seen.
    pub fn sweep(&self) {
        self.users.retain_recent();
        self.nodes.retain_recent();
        self.anonymous.retain_recent();
        let capacity = self.config.user_in_flight as usize;
        self.in_flight
            .lock()
            .retain(|_, s| s.semaphore.available_permits() < capacity);
    }
}

/// The bucket an anonymous caller is counted in: its IPv4 address (also when it arrives
/// IPv4-mapped), or its IPv6 /64.
fn anonymous_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(std::net::Ipv6Addr::from(bits))
        }
        v4 => v4,
    }
}

/// Sweeps the limiters once a minute until shutdown.
pub fn spawn_sweeper(
    limits: Arc<Limits>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while !crate::reflector::sleep_or_shutdown(
            &mut shutdown,
            std::time::Duration::from_secs(60),
        )
        .await
        {
            limits.sweep();
        }
    })
}

/// The tower middleware, between authentication and authorization. It takes only the
/// limits, not the whole `AppState`, which holds them.
pub async fn limit(State(limits): State<Arc<Limits>>, request: Request, next: Next) -> Response {
    let Some(identity) = request.extensions().get::<Arc<Identity>>().cloned() else {
        return next.run(request).await;
    };
    let permit = match limits.admit(&identity).await {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    let deadline = limits.config.request_timeout;
    let response = with_deadline(deadline, next.run(request)).await;
    drop(permit);
    response
}

/// `handler`'s response, or 504 once `deadline` has passed. The handler runs as its own
/// task, so the deadline is kept by this one: a handler that computes without yielding would
/// otherwise also stall the timer meant to stop it (issue 16: a CEL selector held its worker
/// for minutes and no 504 came). Dropping this future (the client went away) or the deadline
/// aborts the handler at its next await. CPU-heavy work still belongs off the workers
/// ([`crate::offload`]): when every worker spins, no timer runs at all.
pub(crate) async fn with_deadline(
    deadline: infraos_api::Duration,
    handler: impl std::future::Future<Output = Response> + Send + 'static,
) -> Response {
    let handler = AbortOnDrop(tokio::spawn(tracing::Instrument::in_current_span(handler)));
    match tokio::time::timeout(deadline.as_std(), handler).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            tracing::error!(error = %e, "request handler failed");
            ApiError::internal("the request's handler failed").into_response()
        }
        Err(_) => ApiError::timeout(format!(
            "the request was not answered within {deadline} (apiLimits.requestTimeout)"
        ))
        .into_response(),
    }
}

/// A spawned handler, aborted when its waiter is dropped (timed out or cancelled).
struct AbortOnDrop(tokio::task::JoinHandle<Response>);

impl std::future::Future for AbortOnDrop {
    type Output = Result<Response, tokio::task::JoinError>;
    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.0).poll(cx)
    }
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression (issue 16, finding 2): a handler that spins on its worker without yielding
    /// still gets its 504 on time, and is not waited for.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_deadline_fires_while_a_handler_spins() {
        let started = std::time::Instant::now();
        let response = with_deadline(infraos_api::Duration::from_millis(200), async {
            let spin = std::time::Instant::now();
            while spin.elapsed() < std::time::Duration::from_secs(3) {
                std::hint::spin_loop();
            }
            Response::default()
        })
        .await;
        assert_eq!(response.status(), http::StatusCode::GATEWAY_TIMEOUT);
        assert!(
            started.elapsed() < std::time::Duration::from_millis(1500),
            "{:?}",
            started.elapsed()
        );
        // A handler that answers in time is answered as it is.
        let ok = with_deadline(infraos_api::Duration::from_secs(5), async {
            (http::StatusCode::CREATED, "made").into_response()
        })
        .await;
        assert_eq!(ok.status(), http::StatusCode::CREATED);
    }

    fn user(name: &str) -> Identity {
        Identity {
            subject: format!("user:{name}"),
            groups: Vec::new(),
            token: None,
        }
    }

    #[tokio::test]
    async fn each_identity_has_its_own_bucket_and_nodes_another() {
        let limits = Limits::new(ApiLimits {
            user_rate: 1,
            user_burst: 3,
            queue_wait: infraos_api::Duration::from_millis(0),
            ..Default::default()
        });
        let flood = user("flood");
        let mut admitted = 0;
        for _ in 0..10 {
            admitted += usize::from(limits.admit(&flood).await.is_ok());
        }
        assert_eq!(admitted, 3, "the burst, then 429");
        let e = limits.admit(&flood).await.unwrap_err();
        assert_eq!(e.code.as_u16(), 429);
        assert!(e.retry_after.is_some_and(|s| s >= 1));
        assert!(
            limits.admit(&user("quiet")).await.is_ok(),
            "another user is not affected"
        );
        assert!(
            limits.admit(&Identity::for_node("n1")).await.is_ok(),
            "nodes have their own budget"
        );
        let admin = Identity {
            groups: vec![infraos_api::kinds::ADMINS_GROUP.into()],
            ..user("admin")
        };
        for _ in 0..100 {
            assert!(limits.admit(&admin).await.is_ok(), "exempt");
        }
    }

    #[tokio::test]
    async fn over_the_rate_a_request_waits_its_turn_then_gets_429() {
        // One request a second: the second waits for its token and goes through…
        let limits = Limits::new(ApiLimits {
            user_rate: 1,
            user_burst: 1,
            queue_wait: infraos_api::Duration::from_millis(2500),
            ..Default::default()
        });
        let u = user("eager");
        limits.admit(&u).await.unwrap();
        limits.admit(&u).await.unwrap();
        // …unless it may not wait that long.
        let slow = Limits::new(ApiLimits {
            user_rate: 1,
            user_burst: 1,
            queue_wait: infraos_api::Duration::from_millis(100),
            ..Default::default()
        });
        slow.admit(&u).await.unwrap();
        assert_eq!(slow.admit(&u).await.unwrap_err().code.as_u16(), 429);
    }

    #[tokio::test]
    async fn requests_in_flight_are_capped_per_user() {
        let limits = Limits::new(ApiLimits {
            user_in_flight: 2,
            queue_length: 0,
            ..Default::default()
        });
        let u = user("busy");
        let a = limits.admit(&u).await.unwrap();
        let b = limits.admit(&u).await.unwrap();
        assert!(limits.admit(&u).await.is_err());
        drop(a);
        assert!(limits.admit(&u).await.is_ok());
        drop(b);
        limits.sweep();
    }

    #[test]
    fn anonymous_refusals_are_bounded_per_address_per_ipv6_64_and_in_all() {
        let limits = Limits::new(ApiLimits {
            anonymous_rate: 3,
            anonymous_total_rate: 5,
            ..Default::default()
        });
        let v4: IpAddr = "192.0.2.7".parse().unwrap();
        let allowed = (0..10)
            .filter(|_| limits.anonymous_allowed(v4).is_ok())
            .count();
        assert_eq!(allowed, 3, "the address's burst, then 429");
        assert!(limits.anonymous_allowed(v4).unwrap_err() >= 1);
        // The same address arriving IPv4-mapped is the same caller.
        assert!(
            limits
                .anonymous_allowed("::ffff:192.0.2.7".parse().unwrap())
                .is_err()
        );
        // Every address of one IPv6 /64 shares a bucket…
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        assert!(limits.anonymous_allowed(a).is_ok());
        assert!(limits.anonymous_allowed(b).is_ok());
        // …and all addresses together stop at the cluster-wide rate (3 + 2 = 5 spent).
        let other: IpAddr = "198.51.100.1".parse().unwrap();
        assert!(limits.anonymous_allowed(other).is_err());
        assert_eq!(anonymous_key(a), anonymous_key(b));
        assert_ne!(
            anonymous_key(a),
            anonymous_key("2001:db8:1:3::1".parse().unwrap())
        );
    }

    #[test]
    fn zero_limits_are_refused() {
        let bad = ApiLimits {
            user_rate: 0,
            ..Default::default()
        };
        assert!(bad.validate().unwrap_err().contains("apiLimits.userRate"));
    }
}
