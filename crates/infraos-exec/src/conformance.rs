//! The executor conformance suite (STYLE §8): what every [`Driver`] must do, run unchanged
//! against each one, as the store backends share theirs. A driver's tests call
//! [`driver_conformance!`](crate::driver_conformance) with a function that makes a fresh
//! instance; a second instance stands for the agent after a restart.
//!
//! The checks, each on a real workload (`/bin/sh` scripts):
//! - a run ends with its exit code, and `wait` and `inspect` agree;
//! - a program that does not exist is refused, and nothing starts;
//! - `stop` ends the workload and everything it spawned, even what ignores SIGTERM, within
//!   the grace;
//! - a new instance `recover`s a running task, can wait for it and stop it;
//! - the run honours its lease bound without the agent, and a moved bound is honoured.
//!
//! Compiled with the `conformance` feature (tests only); panics are its assertions.
#![allow(clippy::panic)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use infraos_api::kinds::{ResourceLimits, WorkloadSpec};

use crate::driver::{Deadline, Driver, DriverError, TaskConfig, TaskHandle, TaskState};

/// Makes a driver instance; each call stands for a fresh agent process.
pub type MakeDriver = fn() -> Arc<dyn Driver>;

fn now_ms() -> i64 {
    crate::now_ms()
}

/// A task running `script` under `/bin/sh`, with its own directory under `root`.
pub fn task(root: &Path, id: &str, script: &str) -> TaskConfig {
    TaskConfig {
        id: format!("conformance-{id}-{}", std::process::id()),
        spec: WorkloadSpec::process("/bin/sh", vec!["-c".into(), script.into()]),
        limits: ResourceLimits {
            memory_bytes: Some(64 << 20),
            cpu_millis: Some(500),
            pids: Some(64),
        },
        dir: root.join(id),
        hostname: id.into(),
        workload_uid: 1_000_000_000 + std::process::id() % 60_000,
        deadline: Deadline {
            stop_at_ms: now_ms() + 600_000,
            grace_ms: 1_000,
        },
    }
}

fn pid_alive(pid: Option<i32>) -> bool {
    pid.is_some_and(|pid| {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z "))
    })
}

async fn start(driver: &dyn Driver, task: &TaskConfig) -> TaskHandle {
    match driver.start(task).await {
        Ok(h) => h,
        Err(e) => panic!("{}: start {}: {e}", driver.name(), task.id),
    }
}

async fn wait_within(driver: &dyn Driver, handle: &TaskHandle, limit: Duration) -> TaskState {
    match tokio::time::timeout(limit, driver.wait(handle)).await {
        Ok(state) => state,
        Err(_) => panic!(
            "{}: {} still running after {limit:?}",
            driver.name(),
            handle.id
        ),
    }
}

/// Leaves nothing behind: the workload, its cgroup, its task dir.
fn finish(driver: &dyn Driver, handle: Option<&TaskHandle>, task: &TaskConfig) {
    if let Some(pid) = handle.and_then(|h| h.pid) {
        let _ = infraos_sys::process::signal(pid, nix::sys::signal::Signal::SIGKILL);
    }
    driver.cleanup(&task.id);
    let _ = std::fs::remove_dir_all(&task.dir);
}

pub async fn runs_to_completion_with_its_exit_code(make: MakeDriver, root: &Path) {
    let driver = make();
    let task = task(root, "exit", "echo hello; exit 7");
    let handle = start(&*driver, &task).await;
    let state = wait_within(&*driver, &handle, Duration::from_secs(10)).await;
    let TaskState::Exited(exit) = state else {
        panic!("{}: expected an exit, got {state:?}", driver.name())
    };
    assert_eq!(exit.exit_code, Some(7), "{}: {exit:?}", driver.name());
    assert!(!exit.lease_expired);
    assert_eq!(driver.inspect(&handle), state, "wait and inspect disagree");
    finish(&*driver, None, &task);
}

pub async fn refuses_a_program_that_does_not_exist(make: MakeDriver, root: &Path) {
    let driver = make();
    let mut task = task(root, "missing", "");
    task.spec = WorkloadSpec::process("/no/such/program", Vec::new());
    match driver.start(&task).await {
        Err(DriverError::Refused(reason)) => {
            assert!(reason.contains("/no/such/program"), "{reason}")
        }
        other => panic!("{}: expected a refusal, got {other:?}", driver.name()),
    }
    finish(&*driver, None, &task);
}

pub async fn stop_ends_everything_within_the_grace(make: MakeDriver, root: &Path) {
    let driver = make();
    // A child that ignores SIGTERM, and a parent that does too.
    let task = task(
        root,
        "stop",
        "trap '' TERM; (trap '' TERM; while true; do sleep 0.1; done) & while true; do sleep 0.1; done",
    );
    let handle = start(&*driver, &task).await;
    assert_eq!(driver.inspect(&handle), TaskState::Running);
    let began = Instant::now();
    if let Err(e) = driver.stop(&handle, Duration::from_millis(500)).await {
        panic!("{}: stop: {e}", driver.name());
    }
    let state = wait_within(&*driver, &handle, Duration::from_secs(10)).await;
    assert!(
        began.elapsed() < Duration::from_secs(7),
        "{}: stopping took {:?}",
        driver.name(),
        began.elapsed()
    );
    assert!(
        matches!(state, TaskState::Exited(e) if e.signal.is_some()),
        "{}: {state:?}",
        driver.name()
    );
    assert!(!pid_alive(handle.pid), "the workload outlived stop");
    finish(&*driver, Some(&handle), &task);
}

pub async fn a_new_instance_recovers_a_running_task(make: MakeDriver, root: &Path) {
    let first = make();
    let task = task(root, "recover", "while true; do sleep 0.1; done");
    let handle = start(&*first, &task).await;
    drop(first);
    let second = make();
    assert_eq!(
        second.recover(&handle),
        TaskState::Running,
        "{}: not re-adopted",
        second.name()
    );
    assert!(pid_alive(handle.pid));
    let waiter = {
        let (driver, handle) = (second.clone(), handle.clone());
        tokio::spawn(async move { driver.wait(&handle).await })
    };
    if let Err(e) = second.stop(&handle, Duration::from_millis(500)).await {
        panic!("{}: stop after recover: {e}", second.name());
    }
    match tokio::time::timeout(Duration::from_secs(10), waiter).await {
        Ok(Ok(TaskState::Exited(_))) => {}
        other => panic!("{}: wait after recover: {other:?}", second.name()),
    }
    finish(&*second, Some(&handle), &task);
}

pub async fn honours_its_lease_bound_without_the_agent(make: MakeDriver, root: &Path) {
    let driver = make();
    let mut task = task(
        root,
        "deadline",
        "trap '' TERM; while true; do sleep 0.1; done",
    );
    task.deadline = Deadline {
        stop_at_ms: now_ms() + 1_500,
        grace_ms: 500,
    };
    let handle = start(&*driver, &task).await;
    // The bound moves on once (a renewal), then nobody watches: the driver's own supervision
    // must end the run at the new bound, SIGTERM ignored, SIGKILL after the grace.
    let bound = now_ms() + 2_500;
    if let Err(e) = driver.set_deadline(
        &handle,
        Deadline {
            stop_at_ms: bound,
            grace_ms: 500,
        },
    ) {
        panic!("{}: set_deadline: {e}", driver.name());
    }
    drop(driver);
    tokio::time::sleep(Duration::from_millis(1_800)).await;
    assert!(pid_alive(handle.pid), "stopped at the old bound");
    let observer = make();
    let state = wait_within(&*observer, &handle, Duration::from_secs(10)).await;
    let ended = now_ms();
    let TaskState::Exited(exit) = state else {
        panic!("{}: {state:?}", observer.name())
    };
    assert!(exit.lease_expired, "{exit:?}");
    assert!(
        exit.at_ms >= bound && ended <= bound + 500 + 2_000,
        "{}: ended at {} for a bound at {bound}",
        observer.name(),
        exit.at_ms
    );
    finish(&*observer, Some(&handle), &task);
}

/// Runs every check of the suite against drivers made by `$make`, each as its own test.
/// `$root` names a function returning a scratch directory (a `PathBuf`) for task dirs.
#[macro_export]
macro_rules! driver_conformance {
    ($make:expr, $root:expr) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn runs_to_completion_with_its_exit_code() {
            let root: std::path::PathBuf = $root();
            $crate::conformance::runs_to_completion_with_its_exit_code($make, &root).await
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn refuses_a_program_that_does_not_exist() {
            let root: std::path::PathBuf = $root();
            $crate::conformance::refuses_a_program_that_does_not_exist($make, &root).await
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn stop_ends_everything_within_the_grace() {
            let root: std::path::PathBuf = $root();
            $crate::conformance::stop_ends_everything_within_the_grace($make, &root).await
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn a_new_instance_recovers_a_running_task() {
            let root: std::path::PathBuf = $root();
            $crate::conformance::a_new_instance_recovers_a_running_task($make, &root).await
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn honours_its_lease_bound_without_the_agent() {
            let root: std::path::PathBuf = $root();
            $crate::conformance::honours_its_lease_bound_without_the_agent($make, &root).await
        }
    };
}

/// A scratch directory that lives for the test process.
pub fn scratch(name: &str) -> PathBuf {
    let dir =
        std::env::temp_dir().join(format!("infraos-conformance-{name}-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    dir
}
