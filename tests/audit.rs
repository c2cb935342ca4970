//! The audit chain detects tampering with the store file: a changed record, a removed one,
//! two swapped, and a truncated tail are each reported by `infraos audit verify`, naming the
//! first bad record; an untouched copy verifies.
//!
//! The server signs the chain: `infraos audit export` writes records and a signed head that
//! `infraos audit verify --from FILE --public-key-file signing.pub` checks with the server
//! stopped; an edited, dropped, reordered or truncated export, and one re-signed with another
//! key, each fail naming the first bad record. No token reaches the trail.

// Test code: a panic is how a test reports failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::Path;
use std::time::Duration;

use infraos_api::audit::{
    AuditCheckpoint, AuditHead, CHECKPOINT_VERB, canonical_json, chain_hash, checkpoint_body,
    head_body,
};
use infraos_api::signature::{Algorithm, Purpose};
use infraos_server::signing::ServerKey;
use redb::ReadableTable;
use serde_json::{Value, json};
use support::*;

const LEDGER: redb::TableDefinition<u64, &[u8]> = redb::TableDefinition::new("ledger");

fn tamper(store: &std::path::Path, how: &str, head: u64) {
    let db = redb::Database::open(store).expect("open store file");
    let tx = db.begin_write().unwrap();
    {
        let mut ledger = tx.open_table(LEDGER).unwrap();
        let get =
            |t: &redb::Table<u64, &[u8]>, seq: u64| t.get(seq).unwrap().unwrap().value().to_vec();
        match how {
            "change" => {
                let mut raw = get(&ledger, 3);
                let text = String::from_utf8(raw[64..].to_vec()).unwrap();
                assert!(text.contains("\"create\""), "{text}");
                let changed = text.replace("\"create\"", "\"update\"");
                raw.truncate(64);
                raw.extend_from_slice(changed.as_bytes());
                ledger.insert(3, raw.as_slice()).unwrap();
            }
            "remove" => {
                ledger.remove(3).unwrap();
            }
            "reorder" => {
                let (three, four) = (get(&ledger, 3), get(&ledger, 4));
                ledger.insert(3, four.as_slice()).unwrap();
                ledger.insert(4, three.as_slice()).unwrap();
            }
            "truncate" => {
                ledger.remove(head).unwrap();
            }
            _ => {}
        }
    }
    tx.commit().unwrap();
}

#[tokio::test]
async fn tampering_with_the_store_file_is_detected() {
    let mut server = TestServer::start().await;
    let c = server.client();
    let tenants = infraos_api::object::kind_by_plural("tenants").unwrap();
    for i in 0..6 {
        c.create(tenants, None, &json!({"apiVersion": "infraos.io/v1", "kind": "Tenant", "metadata": {"name": format!("a{i}")}}))
            .await
            .unwrap();
    }
    let head = c.audit_records(1, 1).await.unwrap().metadata.head_seq;
    assert!(head >= 6);
    server.stop();
    for (how, expect) in [
        ("intact", String::new()),
        ("change", "audit record 3: hash does not match".to_string()),
        (
            "remove",
            "audit record 3: expected record 3 next, found 4".to_string(),
        ),
        (
            "reorder",
            "audit record 3: prevHash does not match".to_string(),
        ),
        ("truncate", format!("audit record {head}")),
    ] {
        let copy = server.copy_data_dir();
        tamper(&copy.path().join("store.redb"), how, head);
        let tampered = TestServer::start_in(copy).await;
        let out = tampered.cli(&["audit", "verify"]);
        if expect.is_empty() {
            assert!(out.status.success(), "{how}: {}", stderr(&out));
            assert!(
                stdout(&out).contains(&format!("audit chain verified: {head} records")),
                "{how}: {}",
                stdout(&out)
            );
        } else {
            assert!(!out.status.success(), "{how} must be detected");
            let err = stderr(&out);
            assert!(err.contains(&expect), "{how}: {err}");
            assert_eq!(err.trim().lines().count(), 1, "{how}: one line: {err}");
        }
    }
}

/// Creates `n` tenants named `{prefix}{i}`.
async fn tenants(server: &TestServer, prefix: &str, n: usize) {
    let c = server.client();
    let tenants = infraos_api::object::kind_by_plural("tenants").unwrap();
    for i in 0..n {
        c.create(tenants, None, &json!({"apiVersion": "infraos.io/v1", "kind": "Tenant", "metadata": {"name": format!("{prefix}{i}")}}))
            .await
            .unwrap();
    }
}

/// Waits until the chain holds at least `n` checkpoint records.
async fn wait_for_checkpoints(server: &TestServer, n: usize) {
    let c = server.client();
    eventually(
        Duration::from_secs(60),
        &format!("{n} audit checkpoints"),
        || {
            let c = c.clone();
            async move {
                let page = c.audit_records(1, 5000).await.ok()?;
                let count = page
                    .items
                    .iter()
                    .filter(|r| r.entry["verb"] == CHECKPOINT_VERB)
                    .count();
                (count >= n).then_some(())
            }
        },
    )
    .await;
}

/// `infraos audit export -o FILE` against `server`, as parsed lines.
fn export(server: &TestServer, file: &Path) -> Vec<Value> {
    let out = server.cli(&["audit", "export", "-o", file.to_str().unwrap()]);
    assert!(out.status.success(), "export: {}", stderr(&out));
    assert!(stdout(&out).starts_with("exported "), "{}", stdout(&out));
    std::fs::read_to_string(file)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn write_lines(path: &Path, lines: &[Value]) {
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    std::fs::write(path, text).unwrap();
}

/// `infraos audit verify --from FILE --public-key-file KEY`.
fn verify_offline(server: &TestServer, file: &Path, key: &Path) -> std::process::Output {
    server.cli(&[
        "audit",
        "verify",
        "--from",
        file.to_str().unwrap(),
        "--public-key-file",
        key.to_str().unwrap(),
    ])
}

fn seq_of(line: &Value) -> u64 {
    line["seq"].as_u64().unwrap()
}

fn is_checkpoint(line: &Value) -> bool {
    line["entry"]["verb"] == CHECKPOINT_VERB
}

/// What someone with write access to an export (or the store) and a key of their own does
/// after editing record `from`: re-link every record from there, re-sign the checkpoints
/// after it and the head with `forger`.
fn relink_and_resign(lines: &mut [Value], from: u64, forger: &ServerKey) {
    let head_at = lines.len() - 1;
    let mut prev = [0u8; 32];
    for i in 0..head_at {
        let seq = seq_of(&lines[i]);
        if seq >= from {
            if is_checkpoint(&lines[i]) {
                let covered = lines[i]["entry"]["checkpoint"]["seq"].as_u64().unwrap();
                let hash: [u8; 32] = lines[..i]
                    .iter()
                    .find(|l| seq_of(l) == covered)
                    .map(|l| hex_hash(l["hash"].as_str().unwrap()))
                    .unwrap();
                let cp = AuditCheckpoint {
                    hash: hex(&hash),
                    key_id: forger.public_key().key_id(),
                    seq: covered,
                    signature: forger
                        .sign(Purpose::AuditCheckpoint, &checkpoint_body(covered, &hash))
                        .unwrap(),
                };
                lines[i]["entry"]["checkpoint"] = serde_json::to_value(cp).unwrap();
            }
            let hash = chain_hash(seq, &prev, &canonical_json(&lines[i]["entry"]));
            lines[i]["prevHash"] = hex(&prev).into();
            lines[i]["hash"] = hex(&hash).into();
        }
        prev = hex_hash(lines[i]["hash"].as_str().unwrap());
    }
    let mut head: AuditHead = serde_json::from_value(lines[head_at].clone()).unwrap();
    head.hash = hex(&prev);
    head.key_id = forger.public_key().key_id();
    head.signature = forger
        .sign(Purpose::AuditHead, &head_body(head.seq, &prev, head.time))
        .unwrap();
    lines[head_at] = serde_json::to_value(head).unwrap();
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn hex_hash(s: &str) -> [u8; 32] {
    let bytes: Vec<u8> = (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect();
    bytes.try_into().unwrap()
}

#[tokio::test]
async fn exports_verify_offline_and_tampering_names_the_record() {
    let mut server =
        TestServer::start_with_config("auditCheckpointRecords: 4\nauditCheckpointInterval: 1h\n")
            .await;
    // A join token made through the API, then revoked: both actions audited, the token never.
    let out = server.cli(&["join-token", "create"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let join_token = stdout(&out).trim().to_string();
    assert!(join_token.len() > 20, "{join_token}");
    // One checkpoint covers whatever landed before it: two batches make two.
    tenants(&server, "s", 5).await;
    wait_for_checkpoints(&server, 1).await;
    tenants(&server, "t", 5).await;
    wait_for_checkpoints(&server, 2).await;

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("audit.jsonl");
    let lines = export(&server, &file);
    let key_file = server.data_dir().join("signing.pub");
    let pinned = std::fs::read_to_string(&key_file).unwrap();
    let out = server.cli(&["audit", "public-key"]);
    assert_eq!(
        stdout(&out),
        pinned,
        "the server serves the key in signing.pub"
    );
    // Online, pinned.
    let out = server.cli(&["audit", "verify", "--public-key", pinned.trim()]);
    assert!(out.status.success(), "online: {}", stderr(&out));
    assert!(stdout(&out).contains("(pinned)"), "{}", stdout(&out));

    let admin_token = server.config.token.clone().unwrap();
    server.stop();
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(
        !text.contains(&join_token),
        "the join token is in the audit trail"
    );
    assert!(
        !text.contains(&admin_token),
        "the admin token is in the audit trail"
    );
    assert!(
        text.contains("\"JoinToken\""),
        "creating the token is audited"
    );

    // Offline, server stopped: the whole export verifies.
    let records = lines.len() as u64 - 1;
    let out = verify_offline(&server, &file, &key_file);
    assert!(out.status.success(), "intact: {}", stderr(&out));
    let report = stdout(&out);
    assert!(
        report.contains(&format!("audit chain verified: {records} records")),
        "{report}"
    );
    assert_eq!(lines.last().unwrap()["kind"], "AuditHead");
    let checkpoints: Vec<u64> = lines
        .iter()
        .filter(|l| is_checkpoint(l))
        .map(seq_of)
        .collect();
    assert!(checkpoints.len() >= 2, "{checkpoints:?}");
    // Without a pinned key, --from refuses to guess.
    let out = server.cli(&["audit", "verify", "--from", file.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("--public-key"), "{}", stderr(&out));

    let forger = ServerKey::generate(Algorithm::Ed25519).unwrap();
    let first_cp_after_3 = *checkpoints.iter().find(|&&s| s > 3).unwrap();
    let head = lines.len() - 1;
    let cases: Vec<(&str, Vec<Value>, String)> = vec![
        (
            "edit",
            {
                let mut l = lines.clone();
                l[2]["entry"]["verb"] = "tampered".into();
                l
            },
            "audit record 3: hash does not match the record's content".into(),
        ),
        (
            "drop",
            {
                let mut l = lines.clone();
                l.remove(4);
                l
            },
            "audit record 5: expected record 5 next, found 6".into(),
        ),
        (
            "drop a checkpoint",
            {
                let mut l = lines.clone();
                l.remove(checkpoints[0] as usize - 1);
                l
            },
            format!("audit record {0}: expected record {0} next", checkpoints[0]),
        ),
        (
            "reorder",
            {
                let mut l = lines.clone();
                l.swap(5, 6);
                l
            },
            "audit record 6: expected record 6 next, found 7".into(),
        ),
        (
            "truncate",
            {
                let mut l = lines.clone();
                l.drain(head - 2..head);
                l
            },
            format!(
                "audit record {}: the chain ends after record {} but the signed head names record {records}",
                records - 1,
                records - 2
            ),
        ),
        (
            "truncate with the head",
            lines[..head - 2].to_vec(),
            format!(
                "audit chain broken after audit record {}: the export has no signed head line",
                records - 2
            ),
        ),
        (
            "drop the head",
            lines[..head].to_vec(),
            format!(
                "audit chain broken after audit record {records}: the export has no signed head line"
            ),
        ),
        (
            "re-sign with another key",
            {
                let mut l = lines.clone();
                l[2]["entry"]["verb"] = "tampered".into();
                relink_and_resign(&mut l, 3, &forger);
                // The forgery is consistent under the forger's own key.
                let forged = dir.path().join("forged.jsonl");
                write_lines(&forged, &l);
                let forged_pub = dir.path().join("forged.pub");
                std::fs::write(&forged_pub, forger.public_key().to_string()).unwrap();
                let out = verify_offline(&server, &forged, &forged_pub);
                assert!(
                    out.status.success(),
                    "forgery under its own key: {}",
                    stderr(&out)
                );
                l
            },
            format!(
                "audit record {first_cp_after_3}: checkpoint signature does not verify with public key"
            ),
        ),
    ];
    for (how, tampered, expect) in cases {
        let path = dir.path().join(format!("{}.jsonl", how.replace(' ', "-")));
        write_lines(&path, &tampered);
        let out = verify_offline(&server, &path, &key_file);
        assert!(!out.status.success(), "{how} must be detected");
        let err = stderr(&out);
        assert!(err.contains(&expect), "{how}: expected {expect:?} in {err}");
        assert_eq!(err.trim().lines().count(), 1, "{how}: one line: {err}");
    }
}

#[tokio::test]
async fn slh_dsa_signs_the_chain_when_configured() {
    // server.yaml before init: the key is made with the configured algorithm.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("server.yaml"),
        "signatureAlgorithm: slh-dsa-sha2-128s\nauditCheckpointRecords: 3\nauditCheckpointInterval: 1h\n",
    )
    .unwrap();
    let out = std::process::Command::new(bin())
        .args(["server", "init", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "init: {}", stderr(&out));
    let pinned = std::fs::read_to_string(dir.path().join("signing.pub")).unwrap();
    assert!(pinned.starts_with("slh-dsa-sha2-128s:"), "{pinned}");
    assert!(
        stdout(&out).contains(pinned.trim()),
        "init prints the public key to pin: {}",
        stdout(&out)
    );
    let mut server = TestServer::start_in(dir).await;
    tenants(&server, "q", 4).await;
    wait_for_checkpoints(&server, 1).await;
    let out_dir = tempfile::tempdir().unwrap();
    let file = out_dir.path().join("audit.jsonl");
    let lines = export(&server, &file);
    server.stop();
    let key_file = out_dir.path().join("signing.pub");
    std::fs::write(&key_file, &pinned).unwrap();
    let out = verify_offline(&server, &file, &key_file);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("signed by slh-dsa-sha2-128s key"),
        "{}",
        stdout(&out)
    );
    // An ed25519 key of a forger does not pass for it.
    let forger = ServerKey::generate(Algorithm::Ed25519).unwrap();
    let mut forged = lines.clone();
    relink_and_resign(&mut forged, 1, &forger);
    write_lines(&file, &forged);
    let out = verify_offline(&server, &file, &key_file);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("the signature is ed25519 but the public key is slh-dsa-sha2-128s"),
        "{}",
        stderr(&out)
    );
}

fn init(dir: &Path) -> String {
    let out = std::process::Command::new(bin())
        .args(["server", "init", "--data-dir"])
        .arg(dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "init: {}", stderr(&out));
    stdout(&out)
}

fn remove_signing_key(dir: &Path) {
    for f in ["signing.key", "signing.pub"] {
        std::fs::remove_file(dir.join(f)).unwrap();
    }
}

#[tokio::test]
async fn a_data_dir_from_before_signing_gets_its_key() {
    // As initialised by an older build: no signing key, none recorded in the store.
    let dir = tempfile::tempdir().unwrap();
    init(dir.path());
    remove_signing_key(dir.path());
    let again = init(dir.path());
    assert!(
        again.contains("already initialised; added its signing key"),
        "{again}"
    );
    assert!(again.contains("ed25519:"), "{again}");
    remove_signing_key(dir.path());
    // A server start makes it when init is not run again.
    let mut server = TestServer::start_in(dir).await;
    use std::os::unix::fs::PermissionsExt;
    let mode = |f: &str| {
        std::fs::metadata(server.data_dir().join(f))
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!((mode("signing.key"), mode("signing.pub")), (0o600, 0o644));
    tenants(&server, "o", 2).await;
    let out = server.cli(&["audit", "verify"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("from the server, not pinned"),
        "{}",
        stdout(&out)
    );
    server.stop();

    // A replica with a key of its own would sign the same chain with another key: refused.
    remove_signing_key(server.data_dir());
    let mut child = std::process::Command::new(bin())
        .args(["server", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(server.data_dir())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let status = eventually(
        Duration::from_secs(30),
        "the server refuses to start",
        || {
            let status = child.try_wait().unwrap();
            async move { status }
        },
    )
    .await;
    assert!(!status.success());
    let out = child.wait_with_output().unwrap();
    assert!(
        stderr(&out).contains("is not the cluster's"),
        "{}",
        stderr(&out)
    );
}

/// Two replicas on etcd: only the leader checkpoints (two would sign the same head twice,
/// which the verifier refuses), with the key both copied from one data dir, and after the
/// leader is killed the new one goes on; the chain verifies with the pinned key.
#[cfg(feature = "etcd")]
#[tokio::test]
async fn only_the_leader_checkpoints_and_a_new_leader_takes_over() {
    let etcd = infraos_store::conformance::EtcdCluster::start(1).await;
    let config = format!(
        "store: {}\nleaderLeaseDuration: 3s\nleaderRenewInterval: 500ms\nauditCheckpointRecords: 3\nauditCheckpointInterval: 1h\n",
        etcd.url("audit")
    );
    let first = TestServer::start_with_config(&config).await;
    let copy = first.copy_data_dir();
    let mut servers = [first, TestServer::start_in(copy).await];
    let leading = |s: &TestServer| {
        let c = s.client();
        async move {
            let (_, body) = c
                .raw(infraos_client::Method::GET, "/leader", None, vec![], None)
                .await
                .ok()?;
            Some(body["leading"] == true)
        }
    };
    let leader = eventually(Duration::from_secs(30), "one leader", || async {
        let a = leading(&servers[0]).await?;
        let b = leading(&servers[1]).await?;
        (a != b).then_some(if a { 0 } else { 1 })
    })
    .await;
    let follower = 1 - leader;
    // Writes through both replicas; one checkpointer.
    tenants(&servers[follower], "f", 3).await;
    tenants(&servers[leader], "l", 3).await;
    wait_for_checkpoints(&servers[follower], 1).await;
    servers[leader].kill9();
    let before = servers[follower]
        .client()
        .audit_records(1, 5000)
        .await
        .unwrap()
        .items
        .iter()
        .filter(|r| r.entry["verb"] == CHECKPOINT_VERB)
        .count();
    tenants(&servers[follower], "g", 4).await;
    wait_for_checkpoints(&servers[follower], before + 1).await;
    let key_file = servers[follower].data_dir().join("signing.pub");
    let out = servers[follower].cli(&[
        "audit",
        "verify",
        "--public-key-file",
        key_file.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("(pinned)"), "{}", stdout(&out));
}
