//! The InfraOS control plane (DESIGN §3): HTTPS API → authentication → admission → store →
//! audit, and the controllers (scheduler, leases, claim finalizer) as level-triggered loops
//! over watches of the store.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use tokio::sync::watch;

pub mod admission;
pub mod agents;
pub mod api;
pub mod audit;
pub mod auth;
pub mod bootstrap;
pub mod clock;
pub mod config;
pub mod controllers;
pub mod error;
pub mod events;
pub mod explain;
pub mod init;
pub mod join_tokens;
pub mod lease;
pub mod liveness;
pub mod objects;
pub mod openapi;
pub mod pki;
pub mod reflector;
pub mod state;
pub mod tls;
pub mod update;

pub use clock::{Clock, SharedClock, SystemClock};
pub use config::ServerConfig;
pub use error::{ApiError, ServerError};

/// The file a running server writes its URL to, so scripts and tests can find a port chosen
/// by the OS (`--listen 127.0.0.1:0`).
pub const URL_FILE: &str = "server.url";

/// A running server; dropping it does not stop it, [`Server::shutdown`] does.
pub struct Server {
    addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// Opens the store the config names: the embedded one in the data dir, or etcd.
async fn open_store(config: &ServerConfig) -> Result<Arc<dyn infraos_store::Store>, ServerError> {
    if config.store.is_empty() {
        return Ok(Arc::new(infraos_store::embedded::EmbeddedStore::open(
            &config.store_path(),
            infraos_store::embedded::EmbeddedOptions {
                watch_history: config.watch_history.max(1),
                ..Default::default()
            },
        )?));
    }
    open_etcd(config).await
}

#[cfg(feature = "etcd")]
async fn open_etcd(config: &ServerConfig) -> Result<Arc<dyn infraos_store::Store>, ServerError> {
    use infraos_store::etcd::{EtcdOptions, EtcdStore};
    let read = |path: &std::path::Path| {
        let path = config.data_dir.join(path);
        std::fs::read(&path).map_err(|e| ServerError::io(&path, e))
    };
    let mut options = EtcdOptions::parse_url(&config.store)?;
    if let Some(ca) = &config.etcd_ca_file {
        options.ca_pem = Some(read(ca)?);
    }
    if let (Some(cert), Some(key)) = (&config.etcd_cert_file, &config.etcd_key_file) {
        options.client_cert_pem = Some((read(cert)?, read(key)?));
    }
    Ok(Arc::new(EtcdStore::connect(options).await?))
}

#[cfg(not(feature = "etcd"))]
async fn open_etcd(config: &ServerConfig) -> Result<Arc<dyn infraos_store::Store>, ServerError> {
    Err(ServerError::Config {
        path: "store".into(),
        reason: format!(
            "{}: this infraos was built without the etcd backend; build it with \
             `cargo build --release --features etcd` (needs protoc: Debian protobuf-compiler)",
            config.store
        ),
    })
}

impl Server {
    /// Opens the data dir's store, starts the controllers and listens.
    pub async fn start(config: ServerConfig, clock: SharedClock) -> Result<Server, ServerError> {
        let dir = config.data_dir.clone();
        if !init::is_initialised(&dir) {
            return Err(ServerError::NotInitialised(dir.display().to_string()));
        }
        let store = open_store(&config).await?;
        init::ensure_admin_record(&dir, &*store).await?;
        let tls = tls::load_server_config(
            &dir.join(init::SERVER_CERT),
            &dir.join(init::SERVER_KEY),
            &dir.join(init::CA_CERT),
        )?;
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|source| ServerError::Listen {
                addr: config.listen.to_string(),
                source,
            })?;
        let addr = listener
            .local_addr()
            .map_err(|source| ServerError::Listen {
                addr: config.listen.to_string(),
                source,
            })?;
        let ca = Arc::new(pki::Ca::load(&dir).map_err(|e| ServerError::Cert(e.to_string()))?);
        let agents = Arc::new(agents::AgentDialer::new(&ca, clock.now())?);
        let state = state::AppState {
            store,
            config: Arc::new(config),
            tokens: Arc::new(auth::TokenCache::default()),
            classes: Arc::new(admission::ClassCache::default()),
            clock,
            ready: Arc::new(AtomicBool::new(false)),
            openapi: Arc::new(openapi::document()),
            ca,
            liveness: Arc::new(liveness::Liveness::default()),
            join_locks: Arc::new(join_tokens::JoinLocks::default()),
            agents,
        };
        bootstrap::ensure_builtin_classes(&state).await?;
        let (shutdown, shutdown_rx) = watch::channel(false);
        let mut tasks = vec![
            controllers::scheduler::spawn(state.clone(), shutdown_rx.clone())?,
            controllers::lease::spawn(state.clone(), shutdown_rx.clone()),
            controllers::claims::spawn(state.clone(), shutdown_rx.clone()),
            controllers::nodes::spawn(state.clone(), shutdown_rx.clone()),
        ];
        let app = api::router(state.clone()).layer(
            tower_http::trace::TraceLayer::new_for_http()
                .make_span_with(
                    tower_http::trace::DefaultMakeSpan::new().level(tracing::Level::DEBUG),
                )
                .on_response(
                    tower_http::trace::DefaultOnResponse::new().level(tracing::Level::DEBUG),
                ),
        );
        tasks.push(tokio::spawn(tls::serve(
            listener,
            Arc::new(tls),
            app,
            shutdown_rx,
        )));
        // A wildcard listen address is not something a client can connect to: use loopback.
        let reachable = match addr.ip() {
            std::net::IpAddr::V4(ip) if ip.is_unspecified() => {
                SocketAddr::from(([127, 0, 0, 1], addr.port()))
            }
            std::net::IpAddr::V6(ip) if ip.is_unspecified() => {
                SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, addr.port()))
            }
            _ => addr,
        };
        let url = format!("https://{reachable}");
        init::write_file(&dir.join(URL_FILE), format!("{url}\n").as_bytes(), 0o644)?;
        tracing::info!(%url, data_dir = %dir.display(), "InfraOS server listening");
        Ok(Server {
            addr,
            shutdown,
            tasks,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting, lets requests in flight finish (up to a few seconds), stops the
    /// controllers and closes the store.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        for task in self.tasks {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(10), task).await;
        }
    }
}
