//! The InfraOS control plane's HTTP edge (DESIGN §3, §9): HTTPS API → authentication → limits
//! → authorization → admission → store → audit. The controllers (scheduler, leases, claim
//! finalizer), object writes with audit, leader election and explain live in
//! `infraos-control`; the modules re-exported below keep their old paths here.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use tokio::sync::watch;

pub mod admission;
pub mod agents;
pub mod api;
pub mod auth;
pub mod authz;
pub mod bootstrap;
pub mod border;
pub mod capacity;
pub mod config;
pub mod connections;
mod control;
pub mod error;
pub mod identity;
pub mod init;
pub mod join_tokens;
pub mod kinds;
pub mod limits;
pub mod offload;
pub mod oidc;
pub mod openapi;
pub mod pki;
pub mod state;
#[cfg(test)]
mod testing;
pub mod tls;
pub mod update;

pub use infraos_control::{
    ControlError, audit, controllers, datadir, events, explain, holdings, leader, lease, liveness,
    objects, reflector, signing,
};

pub use config::ServerConfig;
pub use error::{ApiError, ServerError};
pub use infraos_api::time::{Clock, SharedClock, SystemClock};

pub use datadir::URL_FILE;

/// A running server; dropping it does not stop it, [`Server::shutdown`] does.
pub struct Server {
    addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// Connections the kernel completes and queues for `accept` (clamped to `net.core.somaxconn`):
/// room for a burst, so that a flood of connects does not make new clients' SYNs be dropped
/// (and retried a second later) before the accept loop catches up.
const LISTEN_BACKLOG: u32 = 4096;

fn listen(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    // As std's `TcpListener::bind`: a restarted server can bind at once.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
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
             `cargo build --release --features etcd` (needs protoc: Debian protobuf-compiler and libprotobuf-dev)",
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
        // A data dir from before signing gets its key here; replicas must share one.
        let (signer, created) = signing::ServerKey::ensure(&dir, config.signature_algorithm)?;
        if created {
            tracing::info!(public_key = %signer.public_key(), "created the server's signing key");
        }
        let store = open_store(&config).await?;
        init::ensure_admin_record(&dir, &*store).await?;
        signing::register(&*store, signer.public_key(), &dir).await?;
        let (tls, server_cert) = tls::load_server_config(
            &dir.join(init::SERVER_CERT),
            &dir.join(init::SERVER_KEY),
            &dir.join(init::CA_CERT),
        )?;
        let listener = listen(config.listen).map_err(|source| ServerError::Listen {
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
        // The embedded store serves one server: it always leads. On etcd the replicas elect.
        let elect = !config.store.is_empty();
        let identity = format!(
            "{}-{}",
            std::fs::read_to_string("/etc/hostname")
                .map(|h| h.trim().to_string())
                .unwrap_or_else(|_| "server".into()),
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        let (leader_tx, leader_rx) = watch::channel(leader::Status {
            identity: identity.clone(),
            term: (!elect).then_some(leader::Term {
                epoch: 0,
                fence_revision: 0,
            }),
            holder: (!elect).then(|| identity.clone()),
        });
        let timing = leader::Timing {
            lease_duration: config.leader_lease_duration.as_std(),
            renew_interval: config.leader_renew_interval.as_std(),
        };
        let rbac = Arc::new(authz::Rbac::default());
        rbac.load(&*store).await?;
        let oidc = match &config.oidc {
            Some(c) => Some(Arc::new(
                oidc::Oidc::new(c.clone(), dir.clone())
                    .await
                    .map_err(|e| ServerError::Config {
                        path: "oidc".into(),
                        reason: e.to_string(),
                    })?,
            )),
            None => None,
        };
        let limits = Arc::new(limits::Limits::new(config.api_limits.clone()));
        let control = infraos_control::Context {
            store,
            clock,
            config: Arc::new(config.control()),
            liveness: Arc::new(liveness::Liveness::default()),
            ready: Arc::new(AtomicBool::new(false)),
            signer: Arc::new(signer),
        };
        let state = state::AppState::new(state::Shared {
            control,
            config: Arc::new(config),
            rbac,
            oidc,
            limits,
            classes: Arc::new(admission::ClassCache::default()),
            openapi: Arc::new(openapi::document()),
            ca,
            join_locks: Arc::new(join_tokens::JoinLocks::default()),
            agents,
            leader: leader_rx,
        });
        bootstrap::ensure_builtin_classes(&state).await?;
        let (shutdown, shutdown_rx) = watch::channel(false);
        // Fails here, not later, on a profile the scheduler refuses.
        infraos_scheduler::Scheduler::new(state.config.scheduler.clone())?;
        let mut tasks = Vec::new();
        if elect {
            tasks.push(controllers::heartbeats::spawn(
                state.control.clone(),
                identity.clone(),
                shutdown_rx.clone(),
            ));
            tasks.push(tokio::spawn(leader::run(
                state.store.clone(),
                state.clock.clone(),
                identity,
                timing,
                leader_tx,
                shutdown_rx.clone(),
            )));
        } else {
            drop(leader_tx);
        }
        tasks.push(authz::spawn_feed(
            state.rbac.clone(),
            state.store.clone(),
            shutdown_rx.clone(),
        ));
        tasks.push(limits::spawn_sweeper(
            state.limits.clone(),
            shutdown_rx.clone(),
        ));
        tasks.push(tokio::spawn(infraos_control::supervisor::supervise(
            state.control.clone(),
            state.leader.clone(),
            shutdown_rx.clone(),
        )));
        let app = api::router(state.clone()).layer(
            tower_http::trace::TraceLayer::new_for_http()
                .make_span_with(
                    tower_http::trace::DefaultMakeSpan::new().level(tracing::Level::DEBUG),
                )
                .on_response(
                    tower_http::trace::DefaultOnResponse::new().level(tracing::Level::DEBUG),
                ),
        );
        tasks.push(tls::spawn_cert_reloader(
            server_cert,
            state.config.tls_reload_interval.as_std(),
            shutdown_rx.clone(),
        ));
        let caps = state
            .config
            .connection_limits
            .caps(state.config.open_files_limit);
        if caps.total < state.config.connection_limits.max_connections {
            tracing::warn!(
                configured = state.config.connection_limits.max_connections,
                in_force = caps.total,
                open_files_limit = state.config.open_files_limit,
                "connectionLimits.maxConnections lowered to stay below the open-files limit \
                 (raise `ulimit -n` / LimitNOFILE to allow more)"
            );
        }
        tasks.push(tokio::spawn(tls::serve(
            listener,
            Arc::new(tls),
            app,
            tls::Edge {
                max_header_bytes: state.config.api_limits.max_header_bytes,
                limits: state.config.connection_limits.clone(),
                connections: connections::Connections::new(caps),
                // An express thread, and half the cores for a flood's handshakes at most.
                handshakes: Arc::new(
                    connections::HandshakeWorkers::start(
                        std::thread::available_parallelism().map_or(1, |n| n.get() / 2),
                    )
                    .map_err(|e| {
                        ServerError::Tls(format!("cannot start the TLS handshake threads: {e}"))
                    })?,
                ),
            },
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
