//! CPU-heavy request work off the async workers: parsing and checking claims' CEL selectors
//! (issue 16, finding 2). A handler that computes on a worker thread never yields, so
//! nothing else scheduled on that worker runs meanwhile — not `/healthz`, not the request
//! timeout meant to cut it short. Such work runs on tokio's blocking threads instead, at most
//! [`permits`] jobs at once, so a flood of expensive claims takes at most that many cores and
//! queues for the rest, while the workers keep answering.
//!
//! ```text
//!   handler ──► wait for a permit (≤ QUEUE_WAIT, else 503) ──► spawn_blocking(job)
//!          ◄── result, or 504 after JOB_DEADLINE (the job keeps its permit until it ends)
//! ```
//!
//! Every selector is bounded by its static cost estimate and the meter in `infraos-api`, so
//! a job ends in milliseconds; the deadlines are a backstop, not the limit.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use infraos_api::{KindInfo, TypedObject, ValidationErrors};
use tokio::sync::Semaphore;

use crate::error::ApiError;

/// Longest a job waits for a permit before the request is refused with 503.
const QUEUE_WAIT: Duration = Duration::from_secs(10);
/// Longest a request waits for its job once started.
const JOB_DEADLINE: Duration = Duration::from_secs(10);

/// How many jobs run at once: the machine's cores, so that the workers always get a share of
/// the CPU from the OS scheduler while every core checks expressions.
pub fn permits() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
        .max(2)
}

fn semaphore() -> &'static Arc<Semaphore> {
    static PERMITS: OnceLock<Arc<Semaphore>> = OnceLock::new();
    PERMITS.get_or_init(|| Arc::new(Semaphore::new(permits())))
}

/// Runs `job` on a blocking thread under a permit; `what` names it in refusals.
pub async fn run<T: Send + 'static>(
    what: &'static str,
    job: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ApiError> {
    let permit = tokio::time::timeout(QUEUE_WAIT, Arc::clone(semaphore()).acquire_owned())
        .await
        .map_err(|_| {
            ApiError::unavailable(format!(
                "the server is busy {what} for other requests ({} at once); retry",
                permits()
            ))
        })?
        .map_err(|_| ApiError::internal("the expression pool is closed"))?;
    let task = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        job()
    });
    match tokio::time::timeout(JOB_DEADLINE, task).await {
        Ok(Ok(out)) => Ok(out),
        Ok(Err(e)) => Err(ApiError::internal(format!("{what} failed: {e}"))),
        Err(_) => Err(ApiError::timeout(format!(
            "{what} took longer than {}s",
            JOB_DEADLINE.as_secs()
        ))),
    }
}

/// Whether decoding a body of this kind may compile CEL selectors: a claim that mentions a
/// selector. Other bodies are decoded in place, as cheap as before.
pub fn may_hold_selectors(info: &KindInfo, body: &[u8]) -> bool {
    const NEEDLE: &[u8] = b"selector";
    info.kind == "Claim" && body.windows(NEEDLE.len()).any(|w| w == NEEDLE)
}

/// [`TypedObject::parse_slice`], off the workers when the body may hold selectors.
pub async fn parse_slice(
    info: &'static KindInfo,
    bytes: &Bytes,
    yaml: bool,
) -> Result<Result<TypedObject, ValidationErrors>, ApiError> {
    if !may_hold_selectors(info, bytes) {
        return Ok(TypedObject::parse_slice(info, bytes, yaml));
    }
    let bytes = bytes.clone();
    run("parsing selectors", move || {
        TypedObject::parse_slice(info, &bytes, yaml)
    })
    .await
}

/// [`TypedObject::decode`] of a value, off the workers when it is a claim.
pub async fn decode(
    info: &'static KindInfo,
    value: &serde_json::Value,
) -> Result<Result<TypedObject, ValidationErrors>, ApiError> {
    if info.kind != "Claim" {
        return Ok(TypedObject::decode(info, value));
    }
    let value = value.clone();
    run("parsing selectors", move || {
        TypedObject::decode(info, &value)
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn jobs_run_off_the_workers_and_at_most_permits_at_once() {
        let running = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let most = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut jobs = Vec::new();
        for _ in 0..permits() * 3 {
            let (running, most) = (Arc::clone(&running), Arc::clone(&most));
            jobs.push(tokio::spawn(run("testing", move || {
                use std::sync::atomic::Ordering::SeqCst;
                let now = running.fetch_add(1, SeqCst) + 1;
                most.fetch_max(now, SeqCst);
                // Blocking here is the point: on a worker it would stall the others' tasks.
                std::thread::sleep(Duration::from_millis(300));
                running.fetch_sub(1, SeqCst);
            })));
        }
        // The workers stay free meanwhile: a timer on them fires long before a job ends.
        let started = std::time::Instant::now();
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert!(
            started.elapsed() < Duration::from_millis(200),
            "{:?}",
            started.elapsed()
        );
        for job in jobs {
            job.await.unwrap().unwrap();
        }
        let most = most.load(std::sync::atomic::Ordering::SeqCst);
        assert!(most <= permits() && most >= 1, "{most} at once");
    }

    #[test]
    fn only_claims_that_mention_selectors_are_offloaded() {
        use infraos_api::Kind;
        let claim = infraos_api::kinds::ClaimSpec::INFO;
        let project = infraos_api::kinds::ProjectSpec::INFO;
        assert!(may_hold_selectors(
            claim,
            br#"{"spec":{"requests":[{"selector":"x"}]}}"#
        ));
        assert!(!may_hold_selectors(claim, br#"{"spec":{"requests":[]}}"#));
        assert!(!may_hold_selectors(project, br#"{"selector":1}"#));
    }
}
