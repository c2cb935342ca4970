//! Load at the HTTP edge for `infraos bench agents` (issue 16): connections that never speak
//! (`--idle-connections N`: half plain TCP that never starts TLS, half TLS connections that
//! send the HTTP/2 preface and nothing else, spread over `--idle-sources` loopback
//! addresses), claims whose item selector is a CEL bomb (`--cel-bomb N`, five nested
//! comprehensions over literal lists, refused or not), and a `/healthz` prober that opens a
//! fresh connection for every probe, as a load balancer does. The window reports heartbeat
//! and `/healthz` latency against the quiet window of the same run.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::StreamExt;
use infraos_client::{Client, ClientConfig, Method};
use parking_lot::Mutex;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::percentile;

/// What the prober is measuring for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Phase {
    Off = 0,
    Quiet = 1,
    Load = 2,
}

/// `/healthz` on a fresh connection every `PROBE_EVERY`, latencies kept per phase.
pub struct Prober {
    phase: Arc<AtomicU8>,
    samples: Arc<Mutex<Vec<(u8, u32)>>>,
    failures: Arc<[AtomicU64; 3]>,
    task: tokio::task::JoinHandle<()>,
}

const PROBE_EVERY: Duration = Duration::from_millis(100);
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// Where the prober connects from: its own loopback address, as a load balancer's health
/// checker has its own (the simulated agents all come from 127.0.0.1).
const PROBER_ADDRESS: [u8; 4] = [127, 0, 0, 2];

/// TLS to the benchmark's server, trusting the client config's CA, offering `alpn`.
fn tls_config(admin: &ClientConfig, alpn: &[u8]) -> anyhow::Result<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(admin.ca_pem.as_deref().unwrap_or_default()) {
        roots.add(ca?)?;
    }
    let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    tls.alpn_protocols = vec![alpn.to_vec()];
    Ok(tls)
}

impl Prober {
    pub fn spawn(admin: &ClientConfig) -> anyhow::Result<Prober> {
        let tls = tls_config(admin, b"h2")?;
        let url = format!("{}/healthz", admin.server.trim_end_matches('/'));
        let phase = Arc::new(AtomicU8::new(Phase::Off as u8));
        let samples = Arc::new(Mutex::new(Vec::new()));
        let failures: Arc<[AtomicU64; 3]> = Arc::new(Default::default());
        let (p, s, f) = (phase.clone(), samples.clone(), failures.clone());
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(PROBE_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let now = p.load(Ordering::Relaxed);
                if now == Phase::Off as u8 {
                    continue;
                }
                // A new client: a new connection and TLS handshake, as a fresh probe has.
                let Ok(client) = reqwest::Client::builder()
                    .use_preconfigured_tls(tls.clone())
                    .local_address(IpAddr::from(PROBER_ADDRESS))
                    .timeout(PROBE_TIMEOUT)
                    .build()
                else {
                    continue;
                };
                let t = Instant::now();
                let answer = client.get(&url).send().await;
                let us = u32::try_from(t.elapsed().as_micros()).unwrap_or(u32::MAX);
                match answer {
                    Ok(r) if r.status().as_u16() == 200 => s.lock().push((now, us)),
                    _ => {
                        f[usize::from(now)].fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        });
        Ok(Prober {
            phase,
            samples,
            failures,
            task,
        })
    }

    pub fn set(&self, phase: Phase) {
        self.phase.store(phase as u8, Ordering::Relaxed);
    }

    /// The sorted latencies (µs) and the failures of `phase`.
    pub fn results(&self, phase: Phase) -> (Vec<u32>, u64) {
        let mut v: Vec<u32> = self
            .samples
            .lock()
            .iter()
            .filter(|(p, _)| *p == phase as u8)
            .map(|(_, us)| *us)
            .collect();
        v.sort_unstable();
        (v, self.failures[phase as usize].load(Ordering::Relaxed))
    }
}

impl Drop for Prober {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn ms(us: u32) -> f64 {
    f64::from(us) / 1000.0
}

/// p50/p99 of a sorted sample, in ms, for a report line.
pub fn summary(sorted: &[u32]) -> String {
    format!(
        "p50 {:.2}, p99 {:.2}, max {:.2} ({} samples)",
        ms(percentile(sorted, 0.50)),
        ms(percentile(sorted, 0.99)),
        ms(sorted.last().copied().unwrap_or(0)),
        sorted.len()
    )
}

pub fn p99_ms(sorted: &[u32]) -> f64 {
    ms(percentile(sorted, 0.99))
}

#[derive(Default)]
pub struct IdleCounts {
    pub attempted: AtomicU64,
    pub opened: AtomicU64,
    pub failed: AtomicU64,
    pub closed_by_server: AtomicU64,
}

/// The HTTP/2 client preface and an empty SETTINGS frame.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";

/// The idle connections' own runtime: their TLS handshakes (a fraction of a millisecond of
/// CPU each, hundreds at a time) must not delay the measuring clients' tasks in this
/// process, as they would on a shared runtime; an attacker runs elsewhere. Dropping it closes
/// every connection.
pub struct IdleFlood {
    runtime: Option<tokio::runtime::Runtime>,
}

impl Drop for IdleFlood {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// Opens `n` idle connections (held until the returned [`IdleFlood`] is dropped), 256 at a
/// time, from `sources` loopback addresses 127.0.1.x, on a thread at nice value `nice`.
pub fn open_idle(
    admin: &ClientConfig,
    n: usize,
    sources: usize,
    nice: i32,
    counts: Arc<IdleCounts>,
) -> anyhow::Result<IdleFlood> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("idle-flood")
        .on_thread_start(move || {
            if nice > 0
                && let Err(e) = infraos_sys::process::lower_thread_priority(nice)
            {
                eprintln!("note: the idle flood runs at the usual priority: {e}");
            }
        })
        .enable_all()
        .build()
        .context("cannot start the idle connections' runtime")?;
    let url = reqwest::Url::parse(&admin.server).context("the server URL")?;
    let host = url.host_str().unwrap_or("127.0.0.1").to_string();
    let addr: SocketAddr = format!("{host}:{}", url.port().unwrap_or(443))
        .parse()
        .context("--idle-connections needs a server at an IP address")?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(tls_config(admin, b"h2")?));
    let name = ServerName::try_from(host)?;
    let sources = sources.clamp(1, 250);
    runtime.spawn(async move {
        let mut held = tokio::task::JoinSet::new();
        let mut opening = futures::stream::iter(0..n)
            .map(|i| {
                let (connector, name, counts) = (connector.clone(), name.clone(), counts.clone());
                async move {
                    counts.attempted.fetch_add(1, Ordering::Relaxed);
                    let from = IpAddr::from([127, 0, 1, 1 + (i % sources) as u8]);
                    let conn = idle_one(addr, from, i % 2 == 1, connector, name).await;
                    if conn.is_none() {
                        counts.failed.fetch_add(1, Ordering::Relaxed);
                    }
                    conn
                }
            })
            .buffer_unordered(256);
        while let Some(conn) = opening.next().await {
            let Some(mut conn) = conn else { continue };
            counts.opened.fetch_add(1, Ordering::Relaxed);
            let counts = counts.clone();
            // Held, and read, so that a close by the server is seen and counted.
            held.spawn(async move {
                let mut buf = [0u8; 1024];
                loop {
                    let n = match &mut conn {
                        Held::Tcp(s) => s.read(&mut buf).await,
                        Held::Tls(s) => s.read(&mut buf).await,
                    };
                    if !matches!(n, Ok(n) if n > 0) {
                        counts.closed_by_server.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                }
            });
        }
        // Holds them until the runtime is dropped.
        while held.join_next().await.is_some() {}
        std::future::pending::<()>().await;
    });
    Ok(IdleFlood {
        runtime: Some(runtime),
    })
}

enum Held {
    Tcp(tokio::net::TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>),
}

async fn idle_one(
    addr: SocketAddr,
    from: IpAddr,
    tls: bool,
    connector: tokio_rustls::TlsConnector,
    name: ServerName<'static>,
) -> Option<Held> {
    let socket = tokio::net::TcpSocket::new_v4().ok()?;
    socket.bind(SocketAddr::new(from, 0)).ok()?;
    let tcp = tokio::time::timeout(Duration::from_secs(10), socket.connect(addr))
        .await
        .ok()?
        .ok()?;
    if !tls {
        return Some(Held::Tcp(tcp));
    }
    let mut stream = tokio::time::timeout(Duration::from_secs(10), connector.connect(name, tcp))
        .await
        .ok()?
        .ok()?;
    stream.write_all(H2_PREFACE).await.ok()?;
    stream.flush().await.ok()?;
    Some(Held::Tls(Box::new(stream)))
}

/// A selector of five nested comprehensions over literal lists of 100 (10^10 steps if
/// evaluated; ~1.5 KB), never true. Each level names its variable `item`, shadowing the
/// selected item, so that a check of the names an expression uses lets it through and only a
/// bound on its cost refuses it.
pub fn cel_bomb_selector() -> String {
    let list = format!(
        "[{}]",
        (0..100)
            .map(|i| i.to_string())
            .collect::<Vec<_>>()
            .join(",")
    );
    let mut expr = "item == -1".to_string();
    for _ in 0..5 {
        expr = format!("{list}.exists(item, {expr})");
    }
    expr
}

#[derive(Default)]
pub struct BombCounts {
    pub sent: AtomicU64,
    pub ok: AtomicU64,
    pub client_errors: AtomicU64,
    pub server_errors: AtomicU64,
    pub failed: AtomicU64,
    /// The first refusal's message, to tell which check refused.
    pub first_refusal: Mutex<Option<String>>,
}

/// Sets up a project member `bomb`, an item class and a pool for it to select from.
pub async fn setup_bomb(admin: &Client, admin_config: &ClientConfig) -> anyhow::Result<Client> {
    let items: Vec<serde_json::Value> = (0..8)
        .map(|i| serde_json::json!({"name": format!("i{i}")}))
        .collect();
    for doc in [
        serde_json::json!({"apiVersion": "infraos.io/v1", "kind": "Tenant", "metadata": {"name": "bench-bomb"}}),
        serde_json::json!({"apiVersion": "infraos.io/v1", "kind": "Project", "metadata": {"name": "bench-bomb"}, "spec": {"tenant": "bench-bomb"}}),
        serde_json::json!({"apiVersion": "infraos.io/v1", "kind": "RoleBinding", "metadata": {"name": "bench-bomb"},
            "spec": {"role": "project-member", "scope": {"project": "bench-bomb"}, "subjects": [{"kind": "User", "name": "bomb"}]}}),
        serde_json::json!({"apiVersion": "infraos.io/v1", "kind": "ResourceClass", "metadata": {"name": "bench-bomb"},
            "spec": {"kind": "items", "attributes": {"model": "string"}}}),
        serde_json::json!({"apiVersion": "infraos.io/v1", "kind": "Resource", "metadata": {"name": "bench-bomb-pool"},
            "spec": {"class": "bench-bomb", "items": items, "attributes": {"model": "pool"}}}),
    ] {
        admin
            .apply(&doc)
            .await
            .context("cannot set up the CEL-bomb user")?;
    }
    let minted: serde_json::Value = admin
        .send_json(
            Method::POST,
            "/apis/infraos.io/v1/tokens",
            &serde_json::json!({"subject": "bomb", "ttl": "1h"}),
        )
        .await
        .context("cannot mint the CEL-bomb user's token")?;
    Ok(Client::new(&ClientConfig {
        token: minted["token"].as_str().map(str::to_string),
        identity: None,
        ..admin_config.clone()
    })?)
}

/// Submits `n` claims with a CEL-bomb selector, four at a time; answers are counted, never
/// fatal (a refusal is the expected answer once selectors are bounded).
pub fn submit_bombs(
    client: Client,
    n: usize,
    counts: Arc<BombCounts>,
) -> tokio::task::JoinHandle<()> {
    let selector = cel_bomb_selector();
    tokio::spawn(async move {
        futures::stream::iter(0..n)
            .for_each_concurrent(4, |i| {
                let (client, counts, selector) = (client.clone(), counts.clone(), selector.clone());
                async move {
                    let claim = serde_json::json!({
                        "apiVersion": "infraos.io/v1", "kind": "Claim",
                        "metadata": {"name": format!("bomb-{i:05}"), "namespace": "bench-bomb"},
                        "spec": {"lease": {"duration": "1h"},
                                 "requests": [{"name": "accel", "class": "bench-bomb", "count": 1, "selector": selector}]}
                    });
                    let body = serde_json::to_vec(&claim).unwrap_or_default();
                    counts.sent.fetch_add(1, Ordering::Relaxed);
                    let answer = client
                        .raw(
                            Method::POST,
                            "/apis/infraos.io/v1/namespaces/bench-bomb/claims",
                            Some("application/json"),
                            body,
                            None,
                        )
                        .await;
                    if let Ok((code, body)) = &answer
                        && (400..500).contains(code)
                    {
                        let message = body["message"].as_str().unwrap_or_default();
                        counts.first_refusal.lock().get_or_insert_with(|| {
                            format!("{code}: {}", message.chars().take(160).collect::<String>())
                        });
                    }
                    let bucket = match answer {
                        Ok((code, _)) if code < 300 => &counts.ok,
                        Ok((code, _)) if code < 500 => &counts.client_errors,
                        Ok(_) => &counts.server_errors,
                        Err(_) => &counts.failed,
                    };
                    bucket.fetch_add(1, Ordering::Relaxed);
                }
            })
            .await;
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bomb_is_five_levels_deep_and_about_1_5_kb() {
        let s = cel_bomb_selector();
        assert_eq!(s.matches(".exists(").count(), 5);
        assert!((1400..2000).contains(&s.len()), "{}", s.len());
    }
}
