//! The audit chain detects tampering with the store file: a changed record, a removed one,
//! two swapped, and a truncated tail are each reported by `infraos audit verify`, naming the
//! first bad record; an untouched copy verifies.

// Test code: a panic is how a test reports failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use redb::ReadableTable;
use serde_json::json;
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
