//! Test support: a real `infraos` server process on a temporary data dir, on loopback.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use infraos_client::{Client, ClientConfig};

/// Fails with a clear message unless the test runs as root (cgroups and namespaces need it).
pub fn require_root(what: &str) {
    let uid = std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1).map(str::to_string))
        .unwrap_or_default();
    assert_eq!(
        uid, "0",
        "{what} create cgroups and namespaces: run them as root (CI does)"
    );
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_infraos")
}

pub fn repo_path(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

pub struct TestServer {
    pub dir: tempfile::TempDir,
    child: Option<Child>,
    pub config: ClientConfig,
    /// The address the server binds (its port chosen at the first start).
    listen_host: String,
}

impl TestServer {
    /// Initialises a data dir with `infraos server init` and starts `infraos server` on it.
    pub async fn start() -> TestServer {
        Self::start_with_config("").await
    }

    /// As [`start`], with `server.yaml` holding `config_yaml`.
    pub async fn start_with_config(config_yaml: &str) -> TestServer {
        Self::start_with(config_yaml, &[], "127.0.0.1").await
    }

    /// As [`start_with_config`], with extra certificate names and a listen host (`0.0.0.0` to
    /// be reached from network namespaces).
    pub async fn start_with(config_yaml: &str, sans: &[&str], host: &str) -> TestServer {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut init = Command::new(bin());
        init.args(["server", "init", "--data-dir"]).arg(dir.path());
        for san in sans {
            init.args(["--san", san]);
        }
        let out = init.output().expect("run infraos server init");
        assert!(
            out.status.success(),
            "server init failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        let token = std::fs::read_to_string(dir.path().join("admin.token")).expect("admin.token");
        assert!(
            stdout.contains(token.trim()),
            "init prints the admin token once"
        );
        if !config_yaml.is_empty() {
            std::fs::write(dir.path().join("server.yaml"), config_yaml).expect("server.yaml");
        }
        let mut server = TestServer {
            dir,
            child: None,
            config: ClientConfig::default(),
            listen_host: host.to_string(),
        };
        server.spawn().await;
        server
    }

    /// Starts a server on an existing, initialised data dir.
    pub async fn start_in(dir: tempfile::TempDir) -> TestServer {
        Self::start_in_on(dir, "127.0.0.1").await
    }

    /// As [`start_in`], binding `host`.
    pub async fn start_in_on(dir: tempfile::TempDir, host: &str) -> TestServer {
        let mut server = TestServer {
            dir,
            child: None,
            config: ClientConfig::default(),
            listen_host: host.to_string(),
        };
        server.spawn().await;
        server
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.config
            .server
            .rsplit(':')
            .next()
            .and_then(|p| p.parse::<u16>().ok())
            .expect("the server has a port")
    }

    /// A copy of the data dir (the server should be stopped first).
    pub fn copy_data_dir(&self) -> tempfile::TempDir {
        let copy = tempfile::tempdir().expect("temp dir");
        for entry in std::fs::read_dir(self.dir.path()).expect("read data dir") {
            let entry = entry.expect("entry");
            if entry.file_type().expect("type").is_file() {
                std::fs::copy(entry.path(), copy.path().join(entry.file_name())).expect("copy");
            }
        }
        copy
    }

    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    /// The server process's pid while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Starts the server again on the port it had (clients and agents keep its URL).
    pub async fn respawn_same_port(&mut self) {
        let listen = format!("{}:{}", self.listen_host, self.port());
        self.spawn_on(&listen).await;
    }

    /// Starts the server process on the data dir and waits until it is ready.
    pub async fn spawn(&mut self) {
        let listen = format!("{}:0", self.listen_host);
        self.spawn_on(&listen).await;
    }

    async fn spawn_on(&mut self, listen: &str) {
        let dir = self.dir.path().to_path_buf();
        let _ = std::fs::remove_file(dir.join("server.url"));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("server.log"))
            .expect("server.log");
        let child = Command::new(bin())
            .args(["server", "--listen", listen, "--data-dir"])
            .arg(&dir)
            // INFRAOS_TEST_SERVER_LOG: a filter for the servers' logs when chasing a failure.
            .env(
                "RUST_LOG",
                std::env::var("INFRAOS_TEST_SERVER_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn infraos server");
        self.child = Some(child);
        let url = eventually(Duration::from_secs(30), "server writes server.url", || {
            let url = std::fs::read_to_string(dir.join("server.url")).ok();
            async move { url.map(|u| u.trim().to_string()) }
        })
        .await;
        self.config = ClientConfig {
            server: url,
            ca_pem: Some(std::fs::read(dir.join("ca.crt")).expect("ca.crt")),
            token: Some(
                std::fs::read_to_string(dir.join("admin.token"))
                    .expect("token")
                    .trim()
                    .to_string(),
            ),
            identity: None,
        };
        let client = self.client();
        eventually(Duration::from_secs(30), "server is ready", || {
            let client = client.clone();
            async move {
                let (code, _) = client
                    .raw(infraos_client::Method::GET, "/readyz", None, vec![], None)
                    .await
                    .ok()?;
                (code == 200).then_some(())
            }
        })
        .await;
    }

    pub fn client(&self) -> Client {
        Client::new(&self.config).expect("client")
    }

    /// SIGKILL: no chance to flush or clean up.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for a clean exit.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(c.id().to_string())
                .status();
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                if let Ok(Some(_)) = c.try_wait() {
                    break;
                }
                if Instant::now() > deadline {
                    let _ = c.kill();
                    let _ = c.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// Runs the CLI against this server, with a private HOME so no user config leaks in.
    pub fn cli(&self, args: &[&str]) -> Output {
        let home = self.dir.path().join("home");
        let _ = std::fs::create_dir_all(&home);
        Command::new(bin())
            .args(args)
            .env_clear()
            .env("HOME", &home)
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("INFRAOS_SERVER", &self.config.server)
            .env("INFRAOS_CA", self.dir.path().join("ca.crt"))
            .env("INFRAOS_TOKEN", self.config.token.as_deref().unwrap_or(""))
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .expect("run infraos")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Polls `f` until it returns `Some`, or panics after `deadline` naming what was awaited.
pub async fn eventually<T, F, Fut>(deadline: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            start.elapsed() < deadline,
            "timed out after {deadline:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).to_string()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

/// Applies the objects of a YAML string through the API.
pub async fn apply_yaml(client: &Client, yaml: &str) {
    for doc in infraos_api::object::parse_documents(yaml).expect("yaml") {
        client
            .apply(&doc)
            .await
            .unwrap_or_else(|e| panic!("apply {doc}: {e}"));
    }
}

/// A tenant, a project `p`, a `compute` class and one node with `cpu` CPUs.
pub fn small_cluster(cpu: u32) -> String {
    format!(
        r#"
apiVersion: infraos.io/v1
kind: Tenant
metadata: {{name: t}}
---
apiVersion: infraos.io/v1
kind: Project
metadata: {{name: p}}
spec: {{tenant: t}}
---
apiVersion: infraos.io/v1
kind: ResourceClass
metadata: {{name: compute}}
spec:
  kind: counted
  dimensions: [{{name: cpu}}, {{name: memory}}]
---
apiVersion: infraos.io/v1
kind: ResourceClass
metadata: {{name: gpu}}
spec:
  kind: items
  attributes: {{model: string, memoryGiB: int}}
---
apiVersion: infraos.io/v1
kind: Node
metadata: {{name: n1, labels: {{zone: a}}}}
spec: {{}}
---
apiVersion: infraos.io/v1
kind: Resource
metadata: {{name: n1-compute}}
spec:
  class: compute
  node: n1
  capacity: {{cpu: "{cpu}", memory: 64Gi}}
"#
    )
}

pub fn claim(name: &str, cpu: &str, lease: &str) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "infraos.io/v1", "kind": "Claim",
        "metadata": {"name": name, "namespace": "p"},
        "spec": {"requests": [{"class": "compute", "amount": {"cpu": cpu}}], "lease": {"duration": lease}}
    })
}

pub fn phase(claim: &serde_json::Value) -> &str {
    claim
        .pointer("/status/phase")
        .and_then(|p| p.as_str())
        .unwrap_or("")
}

/// Mints an API token for `user` as the administrator (with a TTL, if given).
pub async fn mint_token(admin: &Client, user: &str, ttl: Option<&str>) -> String {
    let mut body = serde_json::json!({"subject": user});
    if let Some(ttl) = ttl {
        body["ttl"] = ttl.into();
    }
    let created: serde_json::Value = admin
        .send_json(
            infraos_client::Method::POST,
            "/apis/infraos.io/v1/tokens",
            &body,
        )
        .await
        .expect("mint a token");
    created["token"].as_str().expect("token").to_string()
}
