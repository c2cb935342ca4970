//! The `infraos` command line against a real server: the README walkthrough, output formats,
//! and errors that exit non-zero with one clear line. Also `infraos dev` end to end.

// Test code: a panic is how a test reports failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::process::{Command, Stdio};
use std::time::Duration;

use support::*;

fn ok(out: &std::process::Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed: {}{}",
        stdout(out),
        stderr(out)
    );
    stdout(out)
}

fn fails_with(out: &std::process::Output, what: &str, text: &str) {
    assert!(!out.status.success(), "{what} should fail: {}", stdout(out));
    let err = stderr(out);
    assert!(err.starts_with("error: "), "{what}: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{what}: one line: {err}");
    assert!(err.contains(text), "{what}: {err:?} lacks {text:?}");
}

#[tokio::test]
async fn the_walkthrough_works_from_the_command_line() {
    let server = TestServer::start().await;
    let applied = ok(
        &server.cli(&["apply", "-f", "examples/walkthrough/"]),
        "apply walkthrough",
    );
    assert!(applied.contains("claim/train-h100 created"), "{applied}");
    let again = ok(
        &server.cli(&["apply", "-f", "examples/walkthrough/"]),
        "apply again",
    );
    assert!(
        again.contains("claim/train-h100 unchanged"),
        "apply is idempotent: {again}"
    );
    ok(
        &server.cli(&["apply", "-f", "examples/resource-types/"]),
        "apply resource types",
    );

    // The README's access step: alice's token and binding; she sees ml-team's claims only.
    let alice = ok(
        &server.cli(&["token", "create", "--subject", "alice", "--ttl", "720h"]),
        "token create",
    );
    ok(
        &server.cli(&["apply", "-f", "examples/security/alice-ml-team.yaml"]),
        "apply alice's binding",
    );
    let as_alice = |args: &[&str]| {
        std::process::Command::new(bin())
            .args(args)
            .env("INFRAOS_TOKEN", alice.trim())
            .env("INFRAOS_SERVER", &server.config.server)
            .env("INFRAOS_CA", server.data_dir().join("ca.crt"))
            .env("INFRAOS_CONFIG", "/nonexistent")
            .output()
            .unwrap()
    };
    let listed = ok(
        &as_alice(&["get", "claims", "-n", "ml-team"]),
        "alice lists claims",
    );
    assert!(listed.contains("train-h100"), "{listed}");
    fails_with(
        &as_alice(&["get", "nodes"]),
        "alice lists nodes",
        "user:alice may not list Node",
    );

    let c = server.client();
    eventually(Duration::from_secs(20), "walkthrough claims placed", || {
        let c = c.clone();
        async move {
            let (items, _) = c
                .list(
                    infraos_api::object::kind_by_plural("claims").unwrap(),
                    Some("ml-team"),
                    None,
                )
                .await
                .ok()?;
            let done = items
                .iter()
                .filter(|i| phase(i) == "Allocated" || i["status"]["reason"] == "Unschedulable")
                .count();
            (done == items.len() && items.len() == 6).then_some(())
        }
    })
    .await;

    let table = ok(
        &server.cli(&["get", "claims", "-n", "ml-team"]),
        "get claims",
    );
    let header = table.lines().next().unwrap();
    assert!(
        header.starts_with("NAME") && header.contains("PHASE") && header.contains("EXPIRES"),
        "{table}"
    );
    for (name, state) in [
        ("train-h100", "Allocated"),
        ("batch-etl", "Allocated"),
        ("too-big", "Pending"),
        ("matlab-seat", "Allocated"),
        ("web-frontend", "Allocated"),
        ("notebook", "Allocated"),
    ] {
        let line = table
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("{name} in {table}"));
        assert!(line.contains(state), "{name} is {state}: {line}");
    }
    let json = ok(
        &server.cli(&[
            "get",
            "claim",
            "web-frontend",
            "-n",
            "ml-team",
            "-o",
            "json",
        ]),
        "get -o json",
    );
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["status"]["node"], "cpu-west-1");
    let yaml = ok(&server.cli(&["get", "nodes", "-o", "yaml"]), "get -o yaml");
    assert!(yaml.contains("kind: NodeList"), "{yaml}");
    let selected = ok(&server.cli(&["get", "nodes", "-l", "zone=east"]), "get -l");
    assert!(
        selected.contains("gpu-east-1") && !selected.contains("cpu-west-1"),
        "{selected}"
    );
    let wide = ok(
        &server.cli(&["get", "allocations", "-n", "ml-team", "-o", "wide"]),
        "get -o wide",
    );
    assert!(wide.contains("gpu-east-1-gpus[gpu0+gpu1]"), "{wide}");

    let described = ok(
        &server.cli(&["describe", "claim", "too-big", "-n", "ml-team"]),
        "describe pending",
    );
    assert!(
        described.contains("0/2 nodes are available: 1 insufficient gpu, 1 no gpu."),
        "{described}"
    );
    assert!(
        described.contains("FailedScheduling"),
        "events are shown: {described}"
    );
    let described = ok(
        &server.cli(&["describe", "claim", "train-h100", "-n", "ml-team"]),
        "describe allocated",
    );
    assert!(
        described.contains("fencing epoch 1") && described.contains("binpack="),
        "{described}"
    );
    assert!(described.contains("gpu0, gpu1"), "{described}");
    for (claim, detail) in [("train-h100", "Node:"), ("too-big", "insufficient gpu")] {
        let explained = ok(
            &server.cli(&["explain", "claim", claim, "-n", "ml-team"]),
            "explain",
        );
        assert!(
            explained.contains("the replay reaches the recorded decision")
                && explained.contains(detail),
            "{explained}"
        );
    }
    let res = ok(
        &server.cli(&["describe", "resource", "gpu-east-1-compute"]),
        "describe resource",
    );
    assert!(res.contains("cpu        9 of 32 allocated"), "{res}");

    let renewed = ok(
        &server.cli(&["renew", "train-h100", "-n", "ml-team", "--duration", "3h"]),
        "renew",
    );
    assert!(renewed.contains("renewed until"), "{renewed}");
    ok(
        &server.cli(&["release", "batch-etl", "-n", "ml-team"]),
        "release",
    );
    fails_with(
        &server.cli(&["renew", "batch-etl", "-n", "ml-team"]),
        "renew after release",
        "Released, not Allocated",
    );
    let deleted = ok(
        &server.cli(&["delete", "claim", "notebook", "-n", "ml-team"]),
        "delete",
    );
    assert!(deleted.contains("claim/notebook"), "{deleted}");
    let verified = ok(&server.cli(&["audit", "verify"]), "audit verify");
    assert!(verified.starts_with("audit chain verified: "), "{verified}");
    let version = ok(&server.cli(&["version"]), "version");
    assert!(version.contains("server: infraos"), "{version}");
}

#[tokio::test]
async fn errors_are_one_clear_line() {
    let server = TestServer::start().await;
    fails_with(
        &server.cli(&["get", "pods"]),
        "unknown kind",
        "unknown kind \"pods\"",
    );
    fails_with(
        &server.cli(&["get", "claim", "x"]),
        "missing -n",
        "pass -n PROJECT",
    );
    fails_with(
        &server.cli(&["get", "nodes", "-l", "zone in (a"]),
        "bad selector",
        "--selector",
    );
    fails_with(
        &server.cli(&["describe", "node", "ghost"]),
        "missing object",
        "Node \"ghost\" not found",
    );
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "apiVersion: infraos.io/v1\nkind: Tenant\nmetadata: {name: t}\n---\napiVersion: infraos.io/v1\nkind: Project\nmetadata: {name: p}\nspec: {tenant: t}\n---\napiVersion: infraos.io/v1\nkind: ResourceClass\nmetadata: {name: compute}\nspec: {kind: counted, dimensions: [{name: cpu}]}\n---\napiVersion: infraos.io/v1\nkind: Claim\nmetadata: {name: c, namespace: p}\nspec:\n  requests:\n    - class: compute\n      amount: {cpu: 4Gx}\n",
    )
    .unwrap();
    fails_with(
        &server.cli(&["apply", "-f", bad.to_str().unwrap()]),
        "bad quantity",
        "spec.requests[0].amount.cpu: quantity \"4Gx\" is not valid",
    );
    std::fs::write(&bad, "kind: [").unwrap();
    fails_with(
        &server.cli(&["apply", "-f", bad.to_str().unwrap()]),
        "bad yaml",
        "bad.yaml",
    );
    let no_server = Command::new(bin())
        .args(["get", "nodes"])
        .env_clear()
        .env("HOME", dir.path())
        .output()
        .unwrap();
    fails_with(&no_server, "no config", "no server configured");
}

#[tokio::test]
async fn dev_writes_the_client_config_so_the_next_command_just_works() {
    let home = tempfile::tempdir().unwrap();
    let data = home.path().join("dev-data");
    let mut dev = Command::new(bin())
        .args(["dev", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data)
        .env_clear()
        .env("HOME", home.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let config = home.path().join(".config/infraos/config.yaml");
    eventually(
        Duration::from_secs(30),
        "dev writes the client config",
        || {
            let exists = config.exists();
            async move { exists.then_some(()) }
        },
    )
    .await;
    let text = std::fs::read_to_string(&config).unwrap();
    assert!(
        text.contains("tokenFile:") && text.contains("ca.crt"),
        "{text}"
    );
    let token = data.join("admin.token");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&token).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600, "admin.token is private");
    let get = || {
        Command::new(bin())
            .args(["get", "nodes"])
            .env_clear()
            .env("HOME", home.path())
            .output()
            .unwrap()
    };
    // The local agent joins its own server: its node turns up Ready.
    let out = eventually(
        Duration::from_secs(30),
        "dev's local agent is Ready",
        || {
            let out = get();
            async move { (out.status.success() && stdout(&out).contains("Ready")).then_some(out) }
        },
    )
    .await;
    assert!(!stdout(&out).contains("NotReady"), "{}", stdout(&out));
    let _ = dev.kill();
    let _ = dev.wait();
}
