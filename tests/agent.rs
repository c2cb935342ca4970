//! The node agent against a real server, as separate processes on loopback: join with tokens,
//! mTLS and the node authorizer with two agents, a workload in a real cgroup and namespaces,
//! logs through the server, stop on release, re-adoption after `kill -9` of the agent, and
//! degraded mode with the server killed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use infraos_api::Kind as _;
use infraos_api::kinds::ClaimSpec;
use infraos_client::{Client, ClientConfig, ClientIdentity};
use support::{TestServer, apply_yaml, bin, eventually};

fn require_root() {
    support::require_root("the agent tests");
}

struct TestAgent {
    name: String,
    dir: tempfile::TempDir,
    server: String,
    ca: PathBuf,
    child: Option<Child>,
}

impl TestAgent {
    fn start(server: &TestServer, name: &str, token: &str) -> TestAgent {
        let mut agent = TestAgent {
            name: name.to_string(),
            dir: tempfile::tempdir().expect("tempdir"),
            server: server.config.server.clone(),
            ca: server.data_dir().join("ca.crt"),
            child: None,
        };
        agent.spawn(Some(token));
        agent
    }

    fn command(&self, token: Option<&str>) -> Command {
        let mut c = Command::new(bin());
        c.args([
            "agent",
            "--server",
            &self.server,
            "--name",
            &self.name,
            "--data-dir",
        ])
        .arg(self.dir.path())
        .arg("--ca")
        .arg(&self.ca)
        .env("RUST_LOG", "info");
        if let Some(t) = token {
            c.args(["--join-token", t]);
        }
        c
    }

    fn spawn(&mut self, token: Option<&str>) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("agent.log"))
            .expect("agent.log");
        let child = self
            .command(token)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn infraos agent");
        self.child = Some(child);
    }

    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// A client with this agent's own certificate, as the agent speaks to the server.
    fn client(&self) -> Client {
        let id = self.dir.path().join("identity");
        Client::new(&ClientConfig {
            server: self.server.clone(),
            ca_pem: Some(std::fs::read(&self.ca).expect("ca")),
            token: None,
            identity: Some(ClientIdentity {
                cert_pem: std::fs::read(id.join("node.crt")).expect("node.crt"),
                key_pem: std::fs::read(id.join("node.key")).expect("node.key"),
            }),
        })
        .expect("agent client")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default()
    }
}

impl Drop for TestAgent {
    fn drop(&mut self) {
        self.kill9();
        // Leave nothing running behind a failed test.
        for dir in std::fs::read_dir(self.dir.path().join("workloads"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let uid = dir.file_name().to_string_lossy().to_string();
            for controller in ["pids", "memory", "cpu", "freezer"] {
                let cg = Path::new("/sys/fs/cgroup")
                    .join(controller)
                    .join("infraos")
                    .join(&uid);
                for pid in std::fs::read_to_string(cg.join("cgroup.procs"))
                    .unwrap_or_default()
                    .lines()
                {
                    let _ = Command::new("kill").args(["-9", pid]).status();
                }
            }
        }
    }
}

fn join_token(server: &TestServer, extra: &[&str]) -> String {
    let mut args = vec!["join-token", "create"];
    args.extend_from_slice(extra);
    let out = server.cli(&args);
    assert!(
        out.status.success(),
        "join-token create: {}",
        support::stderr(&out)
    );
    support::stdout(&out).trim().to_string()
}

async fn wait_ready(client: &Client, node: &str) -> serde_json::Value {
    eventually(
        Duration::from_secs(30),
        &format!("node {node} Ready"),
        || async {
            let n = client
                .get_path(&format!("/apis/infraos.io/v1/nodes/{node}"))
                .await
                .ok()?;
            let ready = n["status"]["conditions"]
                .as_array()?
                .iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True");
            let has_compute = client
                .get_path(&format!("/apis/infraos.io/v1/resources/{node}-compute"))
                .await
                .is_ok();
            // The report writes the Resources first and the Node's inventory after them.
            let reported = !n["status"]["inventory"].is_null();
            (ready && has_compute && reported).then_some(n)
        },
    )
    .await
}

const TENANCY: &str = r#"
apiVersion: infraos.io/v1
kind: Tenant
metadata: {name: t}
spec: {}
---
apiVersion: infraos.io/v1
kind: Project
metadata: {name: p}
spec: {tenant: t}
"#;

fn workload_claim(name: &str, script: &str, lease: &str, renew: &str) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "infraos.io/v1", "kind": "Claim",
        "metadata": {"name": name, "namespace": "p"},
        "spec": {
            "requests": [{"class": "compute", "amount": {"cpu": "100m", "memory": "64Mi"}}],
            "lease": {"duration": lease, "renewPolicy": renew},
            "workload": {"command": "/bin/sh", "args": ["-c", script], "stopGrace": "2s"}
        }
    })
}

async fn workload(client: &Client, name: &str) -> serde_json::Value {
    client
        .get_path(&format!(
            "/apis/infraos.io/v1/namespaces/p/allocations/{name}"
        ))
        .await
        .map(|a| a["status"]["workload"].clone())
        .unwrap_or(serde_json::Value::Null)
}

async fn wait_state(client: &Client, name: &str, state: &str) -> serde_json::Value {
    eventually(
        Duration::from_secs(30),
        &format!("workload {name} {state}"),
        || async {
            let w = workload(client, name).await;
            (w["state"] == state).then_some(w)
        },
    )
    .await
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(0))
}

fn alive(pid: u64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s.contains(") Z "))
        .unwrap_or(false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_join_with_tokens_and_reach_only_their_own_node() {
    require_root();
    let server = TestServer::start().await;
    let admin = server.client();
    let token = join_token(&server, &["--uses", "2", "--labels", "zone=a"]);

    // A wrong token is refused with the reason, and nothing is registered.
    let bad = TestAgent {
        name: "intruder".into(),
        dir: tempfile::tempdir().expect("tempdir"),
        server: server.config.server.clone(),
        ca: server.data_dir().join("ca.crt"),
        child: None,
    };
    let out = bad
        .command(Some("iojoin_forged"))
        .output()
        .expect("run agent");
    assert!(!out.status.success());
    assert!(
        support::stderr(&out).contains("not known"),
        "{}",
        support::stderr(&out)
    );
    assert!(
        admin
            .get_path("/apis/infraos.io/v1/nodes/intruder")
            .await
            .is_err()
    );

    let a = TestAgent::start(&server, "node-a", &token);
    let b = TestAgent::start(&server, "node-b", &token);
    let node_a = wait_ready(&admin, "node-a").await;
    wait_ready(&admin, "node-b").await;
    assert_eq!(node_a["metadata"]["labels"]["zone"], "a");
    assert_eq!(
        node_a["spec"]["tiers"],
        serde_json::json!(["inventory", "execute"])
    );
    assert!(
        node_a["status"]["inventory"]["cpu"]["cores"]
            .as_u64()
            .unwrap_or(0)
            >= 1
    );

    // The token had two uses: a third join is refused.
    let c = TestAgent {
        name: "node-c".into(),
        dir: tempfile::tempdir().expect("tempdir"),
        server: server.config.server.clone(),
        ca: server.data_dir().join("ca.crt"),
        child: None,
    };
    let out = c.command(Some(&token)).output().expect("run agent");
    assert!(
        support::stderr(&out).contains("used 2 of 2"),
        "{}",
        support::stderr(&out)
    );

    // The node authorizer: node-a's certificate reaches node-a's objects only.
    let as_a = a.client();
    assert!(
        as_a.get_path("/apis/infraos.io/v1/nodes/node-a")
            .await
            .is_ok()
    );
    let denied = as_a
        .get_path("/apis/infraos.io/v1/nodes/node-b")
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Some(403), "{denied}");
    let own = as_a
        .get_path("/apis/infraos.io/v1/allocations?labelSelector=infraos.io%2Fnode%3Dnode-a")
        .await;
    assert!(own.is_ok(), "{own:?}");
    let others = as_a
        .get_path("/apis/infraos.io/v1/allocations?labelSelector=infraos.io%2Fnode%3Dnode-b")
        .await
        .unwrap_err();
    assert_eq!(others.code(), Some(403));
    let (code, _) = as_a
        .raw(
            reqwest::Method::DELETE,
            "/apis/infraos.io/v1/nodes/node-b",
            None,
            Vec::new(),
            None,
        )
        .await
        .expect("delete");
    assert_eq!(code, 403);
    // Publishing a resource on another node, or asking for another node's certificate.
    let report = serde_json::json!({
        "agent": {"version": "x", "protocolVersion": 1},
        "inventory": node_a["status"]["inventory"],
        "resources": [{"apiVersion": "infraos.io/v1", "kind": "Resource",
                       "metadata": {"name": "node-b-compute"},
                       "spec": {"class": "compute", "node": "node-b", "capacity": {"cpu": "64"}}}]
    });
    let (code, body) = as_a
        .raw(
            reqwest::Method::PUT,
            "/agent/v1/status",
            Some("application/json"),
            report.to_string().into_bytes(),
            None,
        )
        .await
        .expect("report");
    assert_eq!(code, 403, "{body}");
    // A resource the agent stops reporting (a GPU pulled out) is removed; the rest stay.
    let compute = admin
        .get_path("/apis/infraos.io/v1/resources/node-a-compute")
        .await
        .expect("compute");
    let report_with = |extra: bool| {
        let mut resources = vec![serde_json::json!({
            "apiVersion": "infraos.io/v1", "kind": "Resource",
            "metadata": {"name": "node-a-compute"},
            "spec": compute["spec"].clone()})];
        if extra {
            resources.push(serde_json::json!({
                "apiVersion": "infraos.io/v1", "kind": "Resource",
                "metadata": {"name": "node-a-extra"},
                "spec": {"class": "compute", "node": "node-a", "capacity": {"cpu": "1"}}}));
        }
        // Published capacity is bounded by the inventory: the extra resource comes with an
        // extra core.
        let mut inventory = node_a["status"]["inventory"].clone();
        if extra {
            let cores = inventory["cpu"]["cores"].as_u64().unwrap_or(0);
            inventory["cpu"]["cores"] = (cores + 1).into();
        }
        serde_json::json!({
            "agent": node_a["status"]["agent"],
            "inventory": inventory,
            "resources": resources,
        })
        .to_string()
        .into_bytes()
    };
    for (extra, present) in [(true, true), (false, false)] {
        let (code, body) = as_a
            .raw(
                reqwest::Method::PUT,
                "/agent/v1/status",
                Some("application/json"),
                report_with(extra),
                None,
            )
            .await
            .expect("report");
        assert_eq!(code, 200, "{body}");
        let found = admin
            .get_path("/apis/infraos.io/v1/resources/node-a-extra")
            .await
            .is_ok();
        assert_eq!(found, present);
    }
    assert!(
        admin
            .get_path("/apis/infraos.io/v1/resources/node-a-compute")
            .await
            .is_ok()
    );
    let (_, csr) = infraos_agent::identity::new_key_and_csr("node-b").expect("csr");
    let (code, body) = as_a
        .raw(
            reqwest::Method::POST,
            "/agent/v1/certificate",
            Some("application/json"),
            serde_json::json!({"csr": csr}).to_string().into_bytes(),
            None,
        )
        .await
        .expect("certificate");
    assert_eq!(code, 403, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap_or_default()
            .contains("node:node-a"),
        "{body}"
    );
    drop(b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workloads_run_confined_log_and_stop_without_leftovers_and_survive_agent_restarts() {
    require_root();
    let server = TestServer::start().await;
    let admin = server.client();
    apply_yaml(&admin, TENANCY).await;
    let token = join_token(&server, &[]);
    let mut agent = TestAgent::start(&server, "worker", &token);
    wait_ready(&admin, "worker").await;

    let script = "echo started in $(hostname) as pid $$; trap 'echo bye; exit 0' TERM; while true; do sleep 0.2; done";
    admin
        .apply(&workload_claim("job", script, "10m", "Manual"))
        .await
        .expect("claim");
    let running = wait_state(&admin, "job", "Running").await;
    let pid = running["pid"].as_u64().expect("pid");
    assert!(alive(pid));
    // In its own cgroup, with the allocation's limits.
    let uid = admin
        .get_path("/apis/infraos.io/v1/namespaces/p/allocations/job")
        .await
        .expect("allocation")["metadata"]["uid"]
        .as_str()
        .expect("uid")
        .to_string();
    let memory = std::fs::read_to_string(format!(
        "/sys/fs/cgroup/memory/infraos/{uid}/memory.limit_in_bytes"
    ))
    .expect("memory cgroup");
    assert_eq!(memory.trim(), (64u64 << 20).to_string());
    let quota =
        std::fs::read_to_string(format!("/sys/fs/cgroup/cpu/infraos/{uid}/cpu.cfs_quota_us"))
            .expect("cpu cgroup");
    assert_eq!(quota.trim(), "10000");

    // Logs through the server, from the agent: the workload is PID 1 of its namespace.
    let logs = eventually(Duration::from_secs(10), "logs", || async {
        let out = server.cli(&["logs", "job", "-n", "p"]);
        let text = support::stdout(&out);
        text.contains("started").then_some(text)
    })
    .await;
    assert!(logs.contains("started in job as pid 1"), "{logs}");

    // kill -9 the agent: the workload keeps running; the new agent re-adopts it.
    agent.kill9();
    assert!(alive(pid), "the workload must outlive its agent");
    agent.spawn(None);
    eventually(Duration::from_secs(20), "re-adoption logged", || async {
        agent
            .log()
            .contains("re-adopted a running workload")
            .then_some(())
    })
    .await;
    let after = workload(&admin, "job").await;
    assert_eq!(after["state"], "Running");
    assert_eq!(after["pid"].as_u64(), Some(pid), "not started again");
    assert_eq!(after["restarts"], 0);

    // Release: SIGTERM, the workload exits, nothing is left behind.
    let out = server.cli(&["release", "job", "-n", "p"]);
    assert!(out.status.success(), "{}", support::stderr(&out));
    wait_state(&admin, "job", "Stopped").await;
    assert!(!alive(pid));
    eventually(Duration::from_secs(10), "cgroup removed", || async {
        (!Path::new(&format!("/sys/fs/cgroup/pids/infraos/{uid}")).exists()).then_some(())
    })
    .await;

    // A workload whose binary is missing fails with the reason; nothing starts.
    let mut missing = workload_claim("missing", "true", "10m", "Manual");
    missing["spec"]["workload"]["command"] = "/no/such/binary".into();
    admin.apply(&missing).await.expect("claim");
    let failed = wait_state(&admin, "missing", "Failed").await;
    assert!(
        failed["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("does not exist"),
        "{failed}"
    );
    assert!(failed["pid"].is_null());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_server_workloads_run_until_their_lease_ends() {
    require_root();
    let mut server = TestServer::start().await;
    let admin = server.client();
    apply_yaml(&admin, TENANCY).await;
    let token = join_token(&server, &[]);
    let agent = TestAgent::start(&server, "edge", &token);
    wait_ready(&admin, "edge").await;
    admin
        .apply(&workload_claim(
            "lease",
            "while true; do sleep 0.2; done",
            "6s",
            "Manual",
        ))
        .await
        .expect("claim");
    let running = wait_state(&admin, "lease", "Running").await;
    let pid = running["pid"].as_u64().expect("pid");
    let expire = admin
        .get_path(&format!(
            "{}/lease",
            infraos_client::path(ClaimSpec::INFO, Some("p"), None)
        ))
        .await
        .expect("claim")["status"]["expireTime"]
        .as_str()
        .expect("expireTime")
        .to_string();
    // The control plane disappears; the workload must keep running within its lease…
    server.kill9();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        alive(pid),
        "degraded mode keeps workloads running (lease ends {expire})"
    );
    // …and stop once the lease is over, with nobody to tell it.
    eventually(
        Duration::from_secs(20),
        "workload stopped at lease end",
        || async { (!alive(pid)).then_some(()) },
    )
    .await;
    assert!(agent.log().contains("LeaseExpired"), "{}", agent.log());
}

/// A client presenting a `node:<name>` certificate signed by a CA the server never saw.
fn foreign_client(server: &TestServer, node: &str) -> Client {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "infraos-ca");
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, format!("node:{node}"));
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let cert = params.signed_by(&key, &issuer).unwrap();
    Client::new(&ClientConfig {
        server: server.config.server.clone(),
        ca_pem: Some(std::fs::read(server.data_dir().join("ca.crt")).unwrap()),
        token: None,
        identity: Some(ClientIdentity {
            cert_pem: cert.pem().into_bytes(),
            key_pem: key.serialize_pem().into_bytes(),
        }),
    })
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_rotate_without_dropping_work_grants_change_and_bad_credentials_are_refused() {
    require_root();
    let server = TestServer::start_with_config(
        "agentCertTtl: 12s\nheartbeatInterval: 1s\nnodeGracePeriod: 4s\n",
    )
    .await;
    let admin = server.client();
    apply_yaml(&admin, TENANCY).await;

    // An expired token is refused with the reason; nothing is registered.
    let expired = join_token(&server, &["--ttl", "1s"]);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let late = TestAgent {
        name: "late".into(),
        dir: tempfile::tempdir().expect("tempdir"),
        server: server.config.server.clone(),
        ca: server.data_dir().join("ca.crt"),
        child: None,
    };
    let out = late.command(Some(&expired)).output().expect("run agent");
    assert!(!out.status.success());
    assert!(
        support::stderr(&out).contains("expired"),
        "{}",
        support::stderr(&out)
    );
    assert!(
        admin
            .get_path("/apis/infraos.io/v1/nodes/late")
            .await
            .is_err()
    );

    let token = join_token(&server, &[]);
    let joined = std::time::Instant::now();
    let agent = TestAgent::start(&server, "rot", &token);
    wait_ready(&admin, "rot").await;
    let cert_path = agent.dir.path().join("identity/node.crt");
    let first_cert = std::fs::read_to_string(&cert_path).expect("node.crt");

    // A certificate for the same node from another CA fails the TLS handshake.
    let forged = foreign_client(&server, "rot")
        .get_path("/apis/infraos.io/v1/nodes/rot")
        .await
        .unwrap_err();
    assert_eq!(forged.code(), None, "refused before HTTP: {forged}");
    // Without a certificate the agent API is closed.
    let (code, body) = admin
        .raw(
            reqwest::Method::POST,
            "/agent/v1/heartbeat",
            Some("application/json"),
            b"{}".to_vec(),
            None,
        )
        .await
        .expect("heartbeat");
    assert_eq!(code, 403, "{body}");

    let script = "echo up; while true; do sleep 0.2; done";
    admin
        .apply(&workload_claim("steady", script, "10m", "Manual"))
        .await
        .expect("claim");
    let pid = wait_state(&admin, "steady", "Running").await["pid"]
        .as_u64()
        .expect("pid");

    // A user that does not exist on the node: Failed with the reason, nothing started.
    let mut nobody = workload_claim("nobody", "true", "10m", "Manual");
    nobody["spec"]["workload"]["user"] = "no-such-user".into();
    admin.apply(&nobody).await.expect("claim");
    let failed = wait_state(&admin, "nobody", "Failed").await;
    assert!(
        failed["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("no-such-user"),
        "{failed}"
    );
    assert!(failed["pid"].is_null(), "{failed}");

    // Rotation at two thirds of the 12 s lifetime, with a fresh key.
    // The files change first; the agent logs once it swapped its connections over.
    eventually(Duration::from_secs(20), "certificate rotated", || async {
        let now = std::fs::read_to_string(&cert_path).unwrap_or_default();
        let swapped = agent.log().contains("certificate rotated");
        (now != first_cert && !now.is_empty() && swapped).then_some(())
    })
    .await;
    // Past the first certificate's end and a grace period more: heartbeats went on with the
    // new one (else the node would be NotReady), the server still reaches the agent for logs,
    // and the workload never stopped.
    let first_end = Duration::from_secs(12 + 4 + 1);
    if let Some(left) = first_end.checked_sub(joined.elapsed()) {
        tokio::time::sleep(left).await;
    }
    let node = wait_ready(&admin, "rot").await;
    let ready = node["status"]["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == "Ready").cloned())
        .expect("Ready");
    assert_eq!(ready["status"], "True", "{node}");
    let out = server.cli(&["logs", "steady", "-n", "p"]);
    assert!(
        support::stdout(&out).contains("up"),
        "{}",
        support::stderr(&out)
    );
    assert!(alive(pid));
    assert_eq!(workload(&admin, "steady").await["pid"].as_u64(), Some(pid));

    // An administrator revokes execute: nothing new is placed there, what runs keeps running,
    // and the agent learns the grant with its next heartbeat.
    let out = server.cli(&["node", "revoke", "rot", "execute"]);
    assert!(out.status.success(), "{}", support::stderr(&out));
    assert!(support::stdout(&out).contains("tiers: inventory"));
    eventually(
        Duration::from_secs(10),
        "agent learnt the grant",
        || async {
            agent
                .log()
                .contains("granted tiers: inventory\n")
                .then_some(())
        },
    )
    .await;
    admin
        .apply(&workload_claim("later", "true", "10m", "Manual"))
        .await
        .expect("claim");
    let pending = eventually(Duration::from_secs(10), "later explained", || async {
        let c = admin
            .get_path("/apis/infraos.io/v1/namespaces/p/claims/later")
            .await
            .ok()?;
        let text = c["status"].to_string();
        text.contains("execute tier").then_some(c)
    })
    .await;
    assert_eq!(pending["status"]["phase"], "Pending", "{pending}");
    assert!(alive(pid));
    let out = server.cli(&["node", "grant", "rot", "execute"]);
    assert!(out.status.success(), "{}", support::stderr(&out));
    wait_state(&admin, "later", "Exited").await;

    // Deleting the node: its certificate no longer speaks for anything.
    let out = server.cli(&["delete", "node", "rot"]);
    assert!(out.status.success(), "{}", support::stderr(&out));
    eventually(Duration::from_secs(10), "agent told", || async {
        agent
            .log()
            .contains("no longer knows this node")
            .then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_agent_still_ends_its_workloads_with_their_lease() {
    require_root();
    let server = TestServer::start().await;
    let admin = server.client();
    apply_yaml(&admin, TENANCY).await;
    let token = join_token(&server, &[]);
    let mut agent = TestAgent::start(&server, "mortal", &token);
    wait_ready(&admin, "mortal").await;

    // A workload that ignores SIGTERM: only the SIGKILL after the grace ends it.
    let mut claim = workload_claim(
        "bounded",
        "trap '' TERM; while true; do sleep 0.2; done",
        "8s",
        "Manual",
    );
    claim["spec"]["workload"]["stopGrace"] = "2s".into();
    admin.apply(&claim).await.expect("claim");
    let pid = wait_state(&admin, "bounded", "Running").await["pid"]
        .as_u64()
        .expect("pid");
    let claim = admin
        .get_path("/apis/infraos.io/v1/namespaces/p/claims/bounded")
        .await
        .expect("claim");
    let expire: infraos_api::Time =
        serde_json::from_value(claim["status"]["expireTime"].clone()).expect("expireTime");
    let until = |t: infraos_api::Time| {
        let ms = t.unix_millis() - now_ms();
        Duration::from_millis(u64::try_from(ms).unwrap_or(0))
    };

    // The agent dies for good: nobody but the shim is left to honour the lease.
    agent.kill9();
    let stop_at = infraos_api::Time::from_unix_millis(expire.unix_millis() - 2000);
    tokio::time::sleep(until(stop_at).saturating_sub(Duration::from_millis(700))).await;
    assert!(alive(pid), "stopped before its lease bound");
    let dead = eventually(Duration::from_secs(15), "workload ended", || async {
        (!alive(pid)).then(|| infraos_api::Time::from_unix_millis(now_ms()))
    })
    .await;
    // SIGKILL is due at the lease's end; allow for a loaded machine, well inside the 5 s
    // skew margin after which the control plane could place the claim elsewhere.
    assert!(
        dead.unix_millis() <= expire.unix_millis() + 2000,
        "still running {} ms after its lease ended",
        dead.unix_millis() - expire.unix_millis()
    );
    // The lease's end is when the control plane may place the claim elsewhere (after the skew
    // margin): by then nothing of it runs here.
    let cgroup = Path::new("/sys/fs/cgroup/pids/infraos");
    let leftovers: Vec<String> = std::fs::read_dir(cgroup)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|d| std::fs::read_to_string(d.path().join("cgroup.procs")).ok())
        .filter(|p| p.lines().any(|l| l.trim() == pid.to_string()))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // The agent comes back, finds the run ended, and says so.
    agent.spawn(None);
    let ended = eventually(Duration::from_secs(20), "the end reported", || async {
        let w = workload(&admin, "bounded").await;
        (w["state"] != "Running" && !w["state"].is_null()).then_some(w)
    })
    .await;
    assert_eq!(ended["state"], "Stopped", "{ended}");
    assert_eq!(ended["reason"], "LeaseExpired", "{ended}");
}

/// Pauses a process (a partition of the agent from everything, as far as the server can tell).
fn signal(pid: u32, sig: &str) {
    let status = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
}

async fn allocation(client: &Client, name: &str) -> serde_json::Value {
    client
        .get_path(&format!(
            "/apis/infraos.io/v1/namespaces/p/allocations/{name}"
        ))
        .await
        .unwrap_or(serde_json::Value::Null)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_node_s_claims_move_only_after_their_lease_and_short_partitions_evict_nothing() {
    require_root();
    let server = TestServer::start_with_config(
        "heartbeatInterval: 500ms\nnodeGracePeriod: 2s\nleaseSkewMargin: 1s\n",
    )
    .await;
    let admin = server.client();
    apply_yaml(&admin, TENANCY).await;
    let token = join_token(&server, &[]);
    let a = TestAgent::start(&server, "node-a", &token);
    wait_ready(&admin, "node-a").await;

    // Two workloads on node-a: one with a long lease, one whose lease ends during the pause.
    let script = "echo up; while true; do sleep 0.2; done";
    admin
        .apply(&workload_claim("long", script, "60s", "Manual"))
        .await
        .expect("claim");
    // Long enough that node-b joins and node-a goes NotReady well before it ends.
    let mut short = workload_claim("short", script, "12s", "Manual");
    short["spec"]["workload"]["stopGrace"] = "1s".into();
    admin.apply(&short).await.expect("claim");
    let long_pid = wait_state(&admin, "long", "Running").await["pid"]
        .as_u64()
        .expect("pid");
    let short_pid = wait_state(&admin, "short", "Running").await["pid"]
        .as_u64()
        .expect("pid");
    let first = allocation(&admin, "short").await;
    assert_eq!(first["spec"]["node"], "node-a");
    let first_epoch = first["status"]["lease"]["fencingEpoch"]
        .as_u64()
        .expect("epoch");
    let b = TestAgent::start(&server, "node-b", &token);
    wait_ready(&admin, "node-b").await;

    // node-a falls silent: NotReady after the grace period, but nothing moves yet.
    let a_pid = a.child.as_ref().expect("agent").id();
    signal(a_pid, "-STOP");
    eventually(Duration::from_secs(10), "node-a NotReady", || async {
        let n = admin
            .get_path("/apis/infraos.io/v1/nodes/node-a")
            .await
            .ok()?;
        n["status"]["conditions"]
            .as_array()?
            .iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "False")
            .then_some(())
    })
    .await;
    assert!(alive(long_pid) && alive(short_pid));
    assert_eq!(allocation(&admin, "long").await["spec"]["node"], "node-a");

    // The short lease ends: its run on node-a ends with it (the shim), and only then, after
    // the skew margin, is the claim Lost and placed on node-b with a newer epoch.
    let moved = eventually(Duration::from_secs(30), "short runs on node-b", || async {
        let alloc = allocation(&admin, "short").await;
        (alloc["spec"]["node"] == "node-b" && alloc["status"]["workload"]["state"] == "Running")
            .then_some(alloc)
    })
    .await;
    assert!(
        moved["status"]["lease"]["fencingEpoch"]
            .as_u64()
            .expect("epoch")
            > first_epoch
    );
    assert!(!alive(short_pid), "the lost run still runs on node-a");
    let started_b: infraos_api::Time =
        serde_json::from_value(moved["status"]["workload"]["startedAt"].clone())
            .expect("startedAt");
    let expire_a: infraos_api::Time =
        serde_json::from_value(first["status"]["lease"]["expireTime"].clone()).expect("expireTime");
    assert!(
        started_b.unix_millis() > expire_a.unix_millis(),
        "node-b started it before node-a's lease ended"
    );

    // node-a comes back well within the long lease: the long workload never stopped, and the
    // agent drops the lost one instead of starting it again.
    signal(a_pid, "-CONT");
    wait_ready(&admin, "node-a").await;
    let long = wait_state(&admin, "long", "Running").await;
    assert_eq!(long["pid"].as_u64(), Some(long_pid));
    assert_eq!(allocation(&admin, "long").await["spec"]["node"], "node-a");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(allocation(&admin, "short").await["spec"]["node"], "node-b");
    assert!(!a.log().contains("panicked"));
    drop(b);
}

/// With several servers on etcd, an agent given every server URL talks to a follower, and
/// the leader still hears its heartbeats (replicas share them); when that follower is
/// SIGKILLed the agent moves to the next URL without its node going NotReady or its
/// workload stopping.
#[cfg(feature = "etcd")]
#[tokio::test]
async fn an_agent_fails_over_between_servers_and_its_heartbeats_reach_the_leader() {
    require_root();
    let etcd = infraos_store::conformance::EtcdProcess::start().await;
    let config = format!(
        "store: etcd://{}/agents\nheartbeatInterval: 500ms\nnodeGracePeriod: 2s\n",
        etcd.endpoint
    );
    let first = TestServer::start_with_config(&config).await;
    let copy = first.copy_data_dir();
    let second = TestServer::start_in(copy).await;
    let leads = |s: &TestServer| {
        let c = s.client();
        async move {
            c.raw(infraos_client::Method::GET, "/leader", None, vec![], None)
                .await
                .ok()
                .is_some_and(|(_, b)| b["leading"] == true)
        }
    };
    let first_leads = eventually(Duration::from_secs(30), "a leader", || async {
        match (leads(&first).await, leads(&second).await) {
            (true, false) => Some(true),
            (false, true) => Some(false),
            _ => None,
        }
    })
    .await;
    let (leader, mut follower) = if first_leads {
        (first, second)
    } else {
        (second, first)
    };
    let admin = leader.client();
    apply_yaml(&admin, TENANCY).await;
    let token = join_token(&leader, &[]);
    // The follower first: every request of the agent goes there while it is up.
    let mut agent = TestAgent {
        name: "node-ha".into(),
        dir: tempfile::tempdir().expect("tempdir"),
        server: format!("{},{}", follower.config.server, leader.config.server),
        ca: leader.data_dir().join("ca.crt"),
        child: None,
    };
    agent.spawn(Some(&token));
    wait_ready(&admin, "node-ha").await;
    admin
        .apply(&workload_claim(
            "steady",
            "echo up; while true; do sleep 0.2; done",
            "60s",
            "Manual",
        ))
        .await
        .expect("claim");
    let pid = wait_state(&admin, "steady", "Running").await["pid"]
        .as_u64()
        .expect("pid");
    // Lose the follower the agent talks to: it moves on to the leader.
    follower.kill9();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let node = admin
        .get_path("/apis/infraos.io/v1/nodes/node-ha")
        .await
        .unwrap();
    let ready = node["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Ready")
        .cloned()
        .unwrap();
    assert_eq!(ready["status"], "True", "{ready}");
    let w = workload(&admin, "steady").await;
    assert_eq!(
        (w["state"].as_str(), w["pid"].as_u64()),
        (Some("Running"), Some(pid))
    );
    assert!(alive(pid));
    drop(agent);
}

/// Rewrites one stored object in the embedded store's file (the server is stopped), as an
/// attacker with the disk or a backup could.
fn tamper_stored(store: &Path, key: &str, change: impl Fn(&mut serde_json::Value)) {
    use redb::ReadableTable;
    const KV: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("kv");
    let db = redb::Database::open(store).expect("open store file");
    let tx = db.begin_write().expect("write");
    {
        let mut kv = tx.open_table(KV).expect("kv");
        let raw = kv.get(key).expect("get").expect("stored").value().to_vec();
        let (header, body) = raw.split_at(24);
        let mut value: serde_json::Value = serde_json::from_slice(body).expect("json");
        change(&mut value);
        let mut out = header.to_vec();
        out.extend_from_slice(&serde_json::to_vec(&value).expect("encode"));
        kv.insert(key, out.as_slice()).expect("insert");
    }
    tx.commit().expect("commit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_run_only_instructions_the_server_signed() {
    require_root();
    let mut server = TestServer::start().await;
    let client = server.client();
    apply_yaml(&client, TENANCY).await;
    let token = join_token(&server, &[]);
    let mut agent = TestAgent::start(&server, "signed-1", &token);
    wait_ready(&client, "signed-1").await;
    // The agent pinned the server's signing key when it joined.
    let pinned = eventually(Duration::from_secs(10), "the signing key pinned", || {
        let path = agent.dir.path().join("identity").join("server-signing.pub");
        async move { std::fs::read_to_string(path).ok() }
    })
    .await;
    let served =
        std::fs::read_to_string(server.data_dir().join("signing.pub")).expect("signing.pub");
    assert_eq!(pinned.trim(), served.trim());

    // A signed instruction runs.
    client
        .apply(&workload_claim("honest", "sleep 30", "1h", "Manual"))
        .await
        .expect("claim");
    wait_state(&client, "honest", "Running").await;
    let alloc = client
        .get_path("/apis/infraos.io/v1/namespaces/p/allocations/honest")
        .await
        .expect("allocation");
    assert!(
        alloc["spec"]["signature"]
            .as_str()
            .is_some_and(|s| s.starts_with("ed25519:")),
        "{alloc}"
    );

    // With the agent away, a placed instruction is changed in the store file: the agent
    // refuses it when it comes back, reports why, and never runs the changed command.
    agent.kill9();
    let marker = agent.dir.path().join("pwned");
    client
        .apply(&workload_claim("target", "sleep 30", "1h", "Manual"))
        .await
        .expect("claim");
    eventually(Duration::from_secs(20), "target allocated", || {
        let client = client.clone();
        async move {
            client
                .get_path("/apis/infraos.io/v1/namespaces/p/allocations/target")
                .await
                .ok()
        }
    })
    .await;
    server.stop();
    let script = format!("touch {}", marker.display());
    tamper_stored(
        &server.data_dir().join("store.redb"),
        "/registry/allocations/p/target",
        // The stored workload keeps the process driver's settings in `config` (schema 2).
        |a| a["spec"]["workload"]["config"]["args"] = serde_json::json!(["-c", script]),
    );
    server.respawn_same_port().await;
    agent.spawn(None);
    let refused = wait_state(&client, "target", "Failed").await;
    let reason = refused["reason"].as_str().unwrap_or_default().to_string();
    assert!(reason.contains("signature"), "{refused}");
    assert!(!marker.exists(), "the tampered command ran");
    // The refusal is in the audit trail, with the node and the reason.
    let records = client
        .get_path("/apis/infraos.io/v1/auditrecords")
        .await
        .expect("audit");
    assert!(
        records["items"].as_array().expect("items").iter().any(|r| {
            r["entry"]["verb"] == "report-workload"
                && r["entry"]["node"] == "signed-1"
                && r["entry"]["result"]["reason"]
                    .as_str()
                    .is_some_and(|s| s.contains("signature"))
        }),
        "the refused instruction is audited"
    );
    // The honest workload was not disturbed.
    assert_eq!(workload(&client, "honest").await["state"], "Running");
}
