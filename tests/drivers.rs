//! The executor conformance suite (`infraos_exec::conformance`) against each driver,
//! with the real shim: this package's `infraos` binary. Every driver added later (OCI, VM,
//! Wasm) gets its own module here running the same suite unchanged.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::sync::Arc;

use infraos_exec::driver::Driver;
use infraos_exec::drivers::process::ProcessDriver;

mod support;

fn process_driver() -> Arc<dyn Driver> {
    support::require_root("the driver conformance suite");
    let driver = ProcessDriver::new(PathBuf::from(env!("CARGO_BIN_EXE_infraos")), 1 << 20);
    assert!(
        driver.hierarchy().is_some(),
        "no cgroup hierarchy found: the process driver's limits cannot be checked"
    );
    Arc::new(driver)
}

fn process_root() -> PathBuf {
    infraos_exec::conformance::scratch("process")
}

mod process {
    infraos_exec::driver_conformance!(super::process_driver, super::process_root);
}

/// The contained defaults of the process driver (issue 16), seen from inside a workload: what
/// a hostile workload would try first. Each run prints facts about itself; the test reads its
/// log.
mod containment {
    use std::path::{Path, PathBuf};
    use std::time::Duration;

    use infraos_exec::conformance::task;
    use infraos_exec::driver::{Driver, DriverError, TaskConfig, TaskState};
    use infraos_exec::drivers::process::ProcessDriver;

    struct Secrets {
        dir: tempfile::TempDir,
    }

    /// A data dir outside /tmp (which every run gets a fresh tmpfs over), holding a token.
    fn secrets() -> Secrets {
        let dir = tempfile::Builder::new()
            .prefix("infraos-secrets-")
            .tempdir_in("/var/lib")
            .expect("a dir under /var/lib");
        std::fs::write(dir.path().join("admin.token"), "ios_secret_token").unwrap();
        Secrets { dir }
    }

    fn driver(hidden: &Path) -> ProcessDriver {
        crate::support::require_root("the containment tests");
        ProcessDriver::new(PathBuf::from(env!("CARGO_BIN_EXE_infraos")), 1 << 20)
            .with_hidden_paths(vec![hidden.to_path_buf()])
    }

    /// Runs `script` to its end and returns what it printed.
    async fn run(driver: &ProcessDriver, task: &TaskConfig) -> Result<String, DriverError> {
        let handle = driver.start(task).await?;
        let state = tokio::time::timeout(Duration::from_secs(20), driver.wait(&handle))
            .await
            .expect("the run ends");
        assert!(matches!(state, TaskState::Exited(_)), "{state:?}");
        let out = std::fs::read_to_string(task.dir.join("stdout.log")).unwrap_or_default();
        let err = std::fs::read_to_string(task.dir.join("stderr.log")).unwrap_or_default();
        driver.cleanup(&task.id);
        let _ = std::fs::remove_dir_all(&task.dir);
        Ok(format!("{out}\n--- stderr\n{err}"))
    }

    fn field<'a>(out: &'a str, name: &str) -> &'a str {
        out.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(str::trim)
            .unwrap_or_else(|| panic!("no {name} in:\n{out}"))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_contained_run_has_no_privilege_and_sees_no_secret() {
        let secrets = secrets();
        let driver = driver(secrets.dir.path());
        let root = infraos_exec::conformance::scratch("containment");
        let token = secrets.dir.path().join("admin.token");
        let script = format!(
            "grep -E '^(Uid|Gid|Groups|CapEff|CapPrm|CapBnd|CapAmb|NoNewPrivs|Seccomp):' /proc/self/status; \
             echo uidmap: $(cat /proc/self/uid_map); \
             echo token: $(cat {token} 2>&1); \
             echo listing: $(ls -A {dir} 2>&1 | tr '\\n' ' '); \
             echo usr: $(touch /usr/infraos-pwned 2>&1 && echo WROTE); \
             echo tmp: $(touch /tmp/x && echo writable); \
             echo ifaces: $(tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' ' | tr '\\n' ' '); \
             echo cgroup: $(cat /proc/self/cgroup | tail -1); \
             echo unshare: $(unshare -U true 2>&1 && echo UNSHARED); \
             echo end",
            dir = secrets.dir.path().display(),
            token = token.display(),
        );
        let task = task(&root, "contained", &script);
        let out = run(&driver, &task).await.expect("starts");
        let uid = task.workload_uid.to_string();
        assert!(
            field(&out, "Uid:").split_whitespace().all(|u| u == uid),
            "{out}"
        );
        assert!(
            field(&out, "Gid:").split_whitespace().all(|g| g == uid),
            "{out}"
        );
        for caps in ["CapEff:", "CapPrm:", "CapAmb:"] {
            assert_eq!(field(&out, caps), "0000000000000000", "{caps} {out}");
        }
        assert_eq!(field(&out, "NoNewPrivs:"), "1", "{out}");
        assert_eq!(field(&out, "Seccomp:"), "2", "a filter is installed: {out}");
        if driver.user_namespaces() {
            let map: Vec<&str> = field(&out, "uidmap:").split_whitespace().collect();
            assert_eq!(map, [uid.as_str(), uid.as_str(), "1"], "{out}");
        }
        let seen = field(&out, "token:");
        assert!(
            !seen.contains("ios_secret_token"),
            "the token leaked: {out}"
        );
        assert!(
            !field(&out, "listing:").contains("admin.token"),
            "the data dir is covered: {out}"
        );
        assert!(
            !field(&out, "usr:").contains("WROTE"),
            "the host is writable: {out}"
        );
        assert_eq!(field(&out, "tmp:"), "writable", "{out}");
        assert_eq!(field(&out, "ifaces:"), "lo", "its own network: {out}");
        assert_eq!(
            field(&out, "cgroup:").rsplit(':').next(),
            Some("/"),
            "{out}"
        );
        assert!(!field(&out, "unshare:").contains("UNSHARED"), "{out}");
        assert!(!Path::new("/usr/infraos-pwned").exists());
        assert_eq!(field(&out, "end").len(), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_named_user_runs_as_itself_without_its_groups_or_capabilities() {
        let secrets = secrets();
        let driver = driver(secrets.dir.path());
        let root = infraos_exec::conformance::scratch("containment-named");
        // `sync` is uid 4 on Debian: a real host user, not root.
        let mut named = task(&root, "named", "id; grep CapEff /proc/self/status");
        named.spec.user = Some("sync".into());
        assert!(!named.spec.runs_as_root() && !named.spec.is_privileged());
        let out = run(&driver, &named)
            .await
            .expect("a non-root named user runs");
        assert!(out.contains("uid=4("), "{out}");
        assert_eq!(field(&out, "CapEff:"), "0000000000000000", "{out}");
        // gid 0 is a root request, refused at admission without the privileged tier.
        named.spec.user = Some("4:0".into());
        assert!(named.spec.runs_as_root());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn explicit_root_keeps_only_the_default_capabilities_and_the_read_only_view() {
        let secrets = secrets();
        let driver = driver(secrets.dir.path());
        let root = infraos_exec::conformance::scratch("containment-privileged");
        let token = secrets.dir.path().join("admin.token");
        let mut t = task(
            &root,
            "privileged",
            &format!(
                "grep -E '^(CapEff|Seccomp):' /proc/self/status; \
                 echo token: $(cat {} 2>&1); echo usr: $(touch /usr/infraos-pwned 2>&1 && echo WROTE)",
                token.display()
            ),
        );
        t.spec.user = Some("root".into());
        let out = run(&driver, &t).await.expect("starts");
        // CHOWN … SETFCAP: Docker's 14 defaults, no SYS_ADMIN (bit 21).
        let eff = u64::from_str_radix(field(&out, "CapEff:"), 16).unwrap();
        assert_eq!(eff.count_ones(), 14, "{out}");
        assert_eq!(eff & (1 << 21), 0, "no SYS_ADMIN: {out}");
        assert_eq!(field(&out, "Seccomp:"), "2", "{out}");
        assert!(!field(&out, "token:").contains("ios_secret_token"), "{out}");
        assert!(!field(&out, "usr:").contains("WROTE"), "{out}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn writable_paths_are_writable_and_never_uncover_a_hidden_one() {
        let secrets = secrets();
        let driver = driver(secrets.dir.path());
        let root = infraos_exec::conformance::scratch("containment-writable");
        let granted = tempfile::Builder::new()
            .prefix("infraos-granted-")
            .tempdir_in("/var/lib")
            .unwrap();
        let mut t = task(
            &root,
            "writer",
            &format!(
                "echo hello > {}/out && echo wrote",
                granted.path().display()
            ),
        );
        t.spec.user = Some("root".into());
        t.spec.writable_paths = vec![granted.path().display().to_string()];
        let out = run(&driver, &t).await.expect("starts");
        assert!(out.contains("wrote"), "{out}");
        assert_eq!(
            std::fs::read_to_string(granted.path().join("out")).unwrap(),
            "hello\n"
        );
        let mut uncover = task(&root, "uncover", "true");
        uncover.spec.writable_paths = vec!["/var/lib".into()];
        match driver.start(&uncover).await {
            Err(DriverError::Refused(reason)) => assert!(reason.contains("overlaps"), "{reason}"),
            other => panic!("expected a refusal, got {other:?}"),
        }
    }
}
