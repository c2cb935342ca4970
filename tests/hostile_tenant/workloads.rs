//! Hostile-tenant tests: workloads (finding 1). A plain project member's workload on
//! `infraos dev` tried to read the admin token, the CA key and the node key, and ran as root
//! with every capability in the host's namespaces. Now it is contained; root is a privileged
//! request that needs an approval and a node tier.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use infraos_client::{Client, ClientConfig};
use serde_json::{Value, json};

use crate::support::{bin, eventually, mint_token, require_root};

const V1: &str = "/apis/infraos.io/v1";

/// `infraos dev` (server and local agent in one process) on its own data dir and port.
struct Dev {
    dir: tempfile::TempDir,
    home: tempfile::TempDir,
    child: Child,
    url: String,
}

impl Dev {
    async fn start() -> Dev {
        require_root("workload containment tests");
        let dir = tempfile::Builder::new()
            .prefix("infraos-dev-")
            .tempdir_in("/var/lib")
            .expect("a data dir outside /tmp, as a real one would be");
        let home = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let log = std::fs::File::create(home.path().join("dev.log")).unwrap();
        let child = Command::new(bin())
            .args(["dev", "--no-client-config", "--listen"])
            .arg(format!("127.0.0.1:{port}"))
            .arg("--data-dir")
            .arg(dir.path())
            .env("HOME", home.path())
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start infraos dev");
        let dev = Dev {
            dir,
            home,
            child,
            url: format!("https://127.0.0.1:{port}"),
        };
        let token = dev.data_dir().join("admin.token");
        let ca = dev.data_dir().join("ca.crt");
        eventually(
            Duration::from_secs(60),
            "the dev data dir initialised",
            || {
                let ready = std::fs::read_to_string(&token).is_ok_and(|t| !t.trim().is_empty())
                    && std::fs::metadata(&ca).is_ok_and(|m| m.len() > 0);
                async move { ready.then_some(()) }
            },
        )
        .await;
        let admin = dev.admin();
        eventually(
            Duration::from_secs(60),
            "the local agent's node ready",
            || {
                let admin = admin.clone();
                async move {
                    let (nodes, _) = admin.list(kind("nodes"), None, None).await.ok()?;
                    nodes
                        .iter()
                        .find(|n| {
                            n["status"]["conditions"].as_array().is_some_and(|c| {
                                c.iter()
                                    .any(|c| c["type"] == "Ready" && c["status"] == "True")
                            })
                        })
                        .map(|n| {
                            n["metadata"]["name"]
                                .as_str()
                                .unwrap_or_default()
                                .to_string()
                        })
                }
            },
        )
        .await;
        dev
    }

    fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    fn client(&self, token: &str) -> Client {
        Client::new(&ClientConfig {
            server: self.url.clone(),
            ca_pem: Some(std::fs::read(self.data_dir().join("ca.crt")).unwrap()),
            token: Some(token.to_string()),
            identity: None,
        })
        .unwrap()
    }

    fn admin(&self) -> Client {
        let token = std::fs::read_to_string(self.data_dir().join("admin.token")).unwrap();
        self.client(token.trim())
    }

    async fn node(&self) -> String {
        let (nodes, _) = self.admin().list(kind("nodes"), None, None).await.unwrap();
        nodes[0]["metadata"]["name"].as_str().unwrap().to_string()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.home.path().join("dev.log")).unwrap_or_default()
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn kind(plural: &str) -> &'static infraos_api::KindInfo {
    infraos_api::object::kind_by_plural(plural).unwrap()
}

/// A tenant, project `p`, alice (member), bob (project admin, who may approve).
async fn world(dev: &Dev) -> (Client, Client) {
    let admin = dev.admin();
    for doc in [
        json!({"apiVersion": "infraos.io/v1", "kind": "Tenant", "metadata": {"name": "t"}, "spec": {}}),
        json!({"apiVersion": "infraos.io/v1", "kind": "Project", "metadata": {"name": "p"}, "spec": {"tenant": "t"}}),
        json!({"apiVersion": "infraos.io/v1", "kind": "RoleBinding", "metadata": {"name": "alice"},
               "spec": {"role": "project-member", "scope": {"project": "p"}, "subjects": [{"kind": "User", "name": "alice"}]}}),
        json!({"apiVersion": "infraos.io/v1", "kind": "RoleBinding", "metadata": {"name": "bob"},
               "spec": {"role": "project-admin", "scope": {"project": "p"}, "subjects": [{"kind": "User", "name": "bob"}]}}),
    ] {
        admin
            .apply(&doc)
            .await
            .unwrap_or_else(|e| panic!("{doc}: {e}"));
    }
    let alice = dev.client(&mint_token(&admin, "alice", None).await);
    let bob = dev.client(&mint_token(&admin, "bob", None).await);
    (alice, bob)
}

fn claim(name: &str, workload: Value) -> Value {
    json!({
        "apiVersion": "infraos.io/v1", "kind": "Claim",
        "metadata": {"name": name, "namespace": "p"},
        "spec": {
            "requests": [{"class": "compute", "amount": {"cpu": "100m", "memory": "64Mi"}}],
            "lease": {"duration": "10m"},
            "workload": workload,
        }
    })
}

async fn workload_state(client: &Client, name: &str) -> Value {
    client
        .get_path(&format!("{V1}/namespaces/p/allocations/{name}"))
        .await
        .map(|a| a["status"]["workload"].clone())
        .unwrap_or(Value::Null)
}

/// Waits for the run to end and returns its log.
async fn finished_log(client: &Client, name: &str) -> String {
    eventually(
        Duration::from_secs(60),
        &format!("{name} ended"),
        || async {
            let w = workload_state(client, name).await;
            matches!(w["state"].as_str(), Some("Exited" | "Failed")).then_some(())
        },
    )
    .await;
    use futures::StreamExt as _;
    let mut stream = client
        .get_stream(&format!("{V1}/namespaces/p/claims/{name}/log"))
        .await
        .unwrap_or_else(|e| panic!("log of {name}: {e}"));
    let mut text = Vec::new();
    while let Some(chunk) = stream.next().await {
        text.extend_from_slice(&chunk.expect("log bytes"));
    }
    String::from_utf8_lossy(&text).into_owned()
}

fn secrets(dev: &Dev) -> Vec<PathBuf> {
    let d = dev.data_dir();
    vec![
        d.join("admin.token"),
        d.join("ca.key"),
        d.join("signing.key"),
        d.join("store.redb"),
        d.join("agent/identity/node.key"),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_members_workload_runs_unprivileged_and_reads_no_secret() {
    let dev = Dev::start().await;
    let (alice, _) = world(&dev).await;
    let reads: Vec<String> = secrets(&dev)
        .iter()
        .map(|p| {
            format!(
                "echo {}: $(head -c 64 {} 2>&1 | base64 -w0)",
                p.display(),
                p.display()
            )
        })
        .collect();
    let script = format!(
        "id; grep -E '^(CapEff|NoNewPrivs|Seccomp):' /proc/self/status; {}; \
         echo ls: $(ls -A {} 2>&1); echo net: $(tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' ')",
        reads.join("; "),
        dev.data_dir().display()
    );
    alice
        .create(
            kind("claims"),
            Some("p"),
            &claim("pwn", json!({"command": "/bin/sh", "args": ["-c", script]})),
        )
        .await
        .expect("a member may create a contained claim without approval");
    let log = finished_log(&alice, "pwn").await;
    let admin_token = std::fs::read_to_string(dev.data_dir().join("admin.token")).unwrap();
    assert!(
        !log.contains(admin_token.trim()),
        "the admin token leaked:\n{log}"
    );
    for secret in secrets(&dev) {
        let bytes = std::fs::read(&secret).unwrap_or_default();
        let head: Vec<u8> = bytes.iter().take(64).copied().collect();
        if head.is_empty() {
            continue;
        }
        let encoded = base64_encode(&head);
        assert!(
            !log.contains(&encoded),
            "{} leaked:\n{log}",
            secret.display()
        );
    }
    assert!(!log.contains("uid=0("), "ran as root:\n{log}");
    assert!(log.contains("uid=1000"), "its own high uid:\n{log}");
    assert!(log.contains("CapEff:\t0000000000000000"), "{log}");
    assert!(
        log.contains("NoNewPrivs:\t1") && log.contains("Seccomp:\t2"),
        "{log}"
    );
    assert!(log.contains("net: lo"), "its own network namespace:\n{log}");
    let listing = log
        .lines()
        .find(|l| l.starts_with("ls:"))
        .unwrap_or_default();
    assert!(
        !listing.contains("admin.token"),
        "the data dir is covered:\n{log}"
    );
    let w = workload_state(&alice, "pwn").await;
    assert!(w["uid"].as_u64().is_some_and(|u| u >= 1_000_000_000), "{w}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn root_needs_an_approval_and_the_privileged_tier() {
    let dev = Dev::start().await;
    let (alice, bob) = world(&dev).await;
    let node = dev.node().await;
    let root = claim(
        "as-root",
        json!({"command": "/bin/sh", "args": ["-c", "id"], "user": "root"}),
    );
    alice
        .create(kind("claims"), Some("p"), &root)
        .await
        .expect("created");
    let c = alice
        .get_path(&format!("{V1}/namespaces/p/claims/as-root"))
        .await
        .unwrap();
    assert_eq!(c["status"]["phase"], "PendingApproval", "{c}");
    let because = c["status"]["approval"]["because"].to_string();
    assert!(
        because.contains("privileged") && because.contains("runs as root"),
        "{because}"
    );
    // Alice cannot approve her own.
    let own = alice
        .claim_action("p", "as-root", "approve", Some(&json!({})))
        .await;
    assert!(own.is_err(), "self-approval refused");
    bob.claim_action(
        "p",
        "as-root",
        "approve",
        Some(&json!({"comment": "needed for the test"})),
    )
    .await
    .expect("bob approves");
    // Approved, but the local node holds no `privileged` tier: never placed, and says why.
    let pending = eventually(Duration::from_secs(30), "explained as pending", || async {
        let c = alice
            .get_path(&format!("{V1}/namespaces/p/claims/as-root"))
            .await
            .ok()?;
        (c["status"]["phase"] == "Pending" && c["status"].to_string().contains("tier")).then_some(c)
    })
    .await;
    assert!(pending["status"]["allocation"].is_null(), "{pending}");
    // An admin grants the tier: it runs, as root, and the signed instruction names bob.
    let admin = dev.admin();
    let current = admin.get(kind("nodes"), None, &node).await.unwrap();
    let mut tiers = current["spec"]["tiers"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    tiers.push(json!("privileged"));
    admin
        .merge_patch(
            kind("nodes"),
            None,
            &node,
            &json!({"spec": {"tiers": tiers}}),
        )
        .await
        .unwrap_or_else(|e| panic!("grant: {e}\n{}", dev.log()));
    let log = finished_log(&alice, "as-root").await;
    assert!(log.contains("uid=0(root)"), "{log}");
    let a = alice
        .get_path(&format!("{V1}/namespaces/p/allocations/as-root"))
        .await
        .unwrap();
    assert_eq!(a["spec"]["approvedBy"], json!(["user:bob"]), "{a}");
}

fn base64_encode(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}
