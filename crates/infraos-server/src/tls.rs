//! The HTTPS listener: rustls (ring provider) and hyper serving the axum router, HTTP/1.1 and
//! HTTP/2 by ALPN. Handshakes run in each connection's own task, so a slow client cannot hold
//! up accepting others; every connection is counted and capped first
//! ([`crate::connections`]).
//!
//! The server's certificate is read through [`ServerCert`], which swaps in a new
//! `server.crt`/`server.key` while serving (on SIGHUP, or when the files change): new
//! handshakes get the new certificate, connections already open keep theirs.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::response::IntoResponse;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use parking_lot::{Mutex, RwLock};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tower::ServiceExt;

use crate::ServerError;
use crate::connections::{Admitted, Connections, HandshakeWorkers, Lingering};
use crate::error::ApiError;

/// The identity a client certificate proved during the handshake (agents: `node:<name>`).
#[derive(Clone, Debug)]
pub struct PeerCertificate {
    pub common_name: String,
}

/// The server's certificate and key, replaceable while serving.
#[derive(Debug)]
pub struct ServerCert {
    cert_path: PathBuf,
    key_path: PathBuf,
    provider: Arc<rustls::crypto::CryptoProvider>,
    current: RwLock<Arc<CertifiedKey>>,
    /// Modification times and sizes of the files last loaded.
    stamp: Mutex<Option<FileStamps>>,
}

/// Inode, modification time and size of each file: a file replaced by rename gets a new
/// inode even when its timestamp and size come out the same (timestamps are coarse).
type FileStamps = [(u64, std::time::SystemTime, u64); 2];

fn stamps(cert: &Path, key: &Path) -> Option<FileStamps> {
    use std::os::unix::fs::MetadataExt;
    let one = |p: &Path| {
        let m = std::fs::metadata(p).ok()?;
        Some((m.ino(), m.modified().ok()?, m.len()))
    };
    Some([one(cert)?, one(key)?])
}

impl ServerCert {
    pub fn load(
        cert_path: &Path,
        key_path: &Path,
        provider: Arc<rustls::crypto::CryptoProvider>,
    ) -> Result<ServerCert, ServerError> {
        let stamp = stamps(cert_path, key_path);
        let current = read_certified_key(cert_path, key_path, &provider)?;
        Ok(ServerCert {
            cert_path: cert_path.to_path_buf(),
            key_path: key_path.to_path_buf(),
            provider,
            current: RwLock::new(Arc::new(current)),
            stamp: Mutex::new(stamp),
        })
    }

    /// Loads the files again if they changed since the last load. A pair that does not load
    /// (half-written, a key that does not match) leaves the current certificate in place.
    pub fn reload_if_changed(&self) -> Result<bool, ServerError> {
        let now = stamps(&self.cert_path, &self.key_path);
        if now.is_none() || *self.stamp.lock() == now {
            return Ok(false);
        }
        self.reload().map(|()| true)
    }

    /// Loads the files again whatever their stamps (SIGHUP: the operator asked).
    pub fn reload(&self) -> Result<(), ServerError> {
        let now = stamps(&self.cert_path, &self.key_path);
        let fresh = read_certified_key(&self.cert_path, &self.key_path, &self.provider)?;
        *self.current.write() = Arc::new(fresh);
        *self.stamp.lock() = now;
        Ok(())
    }
}

impl rustls::server::ResolvesServerCert for ServerCert {
    fn resolve(&self, _: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(&self.current.read()))
    }
}

fn read_certified_key(
    cert: &Path,
    key: &Path,
    provider: &rustls::crypto::CryptoProvider,
) -> Result<CertifiedKey, ServerError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| ServerError::Tls(format!("{}: {e}", cert.display())))?
        .collect::<Result<_, _>>()
        .map_err(|e| ServerError::Tls(format!("{}: {e}", cert.display())))?;
    if certs.is_empty() {
        return Err(ServerError::Tls(format!(
            "{}: no certificate in the file",
            cert.display()
        )));
    }
    let key_der = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| ServerError::Tls(format!("{}: {e}", key.display())))?;
    let signing_key = provider
        .key_provider
        .load_private_key(key_der)
        .map_err(|e| ServerError::Tls(format!("{}: {e}", key.display())))?;
    let certified = CertifiedKey::new(certs, signing_key);
    certified.keys_match().map_err(|e| {
        ServerError::Tls(format!(
            "{} does not belong to {}: {e}",
            key.display(),
            cert.display()
        ))
    })?;
    Ok(certified)
}

/// Reloads the server certificate on SIGHUP and whenever its files change (checked every
/// `every`), until shutdown.
pub fn spawn_cert_reloader(
    cert: Arc<ServerCert>,
    every: Duration,
    mut shutdown: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut hangup =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let asked = tokio::select! {
                _ = tick.tick() => false,
                Some(()) = async {
                    match hangup.as_mut() {
                        Some(h) => h.recv().await,
                        None => std::future::pending().await,
                    }
                } => true,
                _ = shutdown.changed() => return,
            };
            let reloaded = if asked {
                cert.reload().map(|()| true)
            } else {
                cert.reload_if_changed()
            };
            match reloaded {
                Ok(true) => tracing::info!(
                    cert = %cert.cert_path.display(),
                    "server certificate reloaded: new connections get the new one"
                ),
                Ok(false) => {}
                Err(e) => tracing::error!(
                    error = %e,
                    "server certificate not reloaded; still serving the previous one"
                ),
            }
        }
    })
}

/// The server's TLS settings. Client certificates are optional (users bring bearer tokens),
/// but one that is presented must chain to `client_ca`.
pub fn load_server_config(
    cert: &Path,
    key: &Path,
    client_ca: &Path,
) -> Result<(rustls::ServerConfig, Arc<ServerCert>), ServerError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let server_cert = Arc::new(ServerCert::load(cert, key, provider.clone())?);
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_file_iter(client_ca)
        .map_err(|e| ServerError::Tls(format!("{}: {e}", client_ca.display())))?
    {
        let ca = ca.map_err(|e| ServerError::Tls(format!("{}: {e}", client_ca.display())))?;
        roots
            .add(ca)
            .map_err(|e| ServerError::Tls(format!("{}: {e}", client_ca.display())))?;
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .allow_unauthenticated()
    .build()
    .map_err(|e| ServerError::Tls(e.to_string()))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ServerError::Tls(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(server_cert.clone());
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    // No TLS 1.3 session tickets: minting two per handshake was the largest part of the
    // handshake work left on the async runtime (after the handshake threads' part), and our
    // clients seldom resume (agents hold one connection; each CLI run is a new process).
    config.send_tls13_tickets = 0;
    Ok((config, server_cert))
}

/// What the listener needs besides the router: the caps on request heads, the connection
/// limits, and the registry that enforces them.
pub struct Edge {
    pub max_header_bytes: usize,
    pub limits: crate::connections::ConnectionLimits,
    pub connections: Arc<Connections>,
    pub handshakes: Arc<HandshakeWorkers>,
}

/// Serves `app` over TLS until `shutdown` turns true.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    app: Router,
    edge: Edge,
    mut shutdown: watch::Receiver<bool>,
) {
    let edge = Arc::new(edge);
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => break,
        };
        // Over the caps with every connection busy: closed at once, before any TLS work.
        let Ok(admitted) = edge.connections.admit(peer.ip()) else {
            drop(tcp);
            continue;
        };
        let _ = tcp.set_nodelay(true);
        tokio::spawn(connection(
            Arc::clone(&tls),
            app.clone(),
            Arc::clone(&edge),
            tcp,
            peer,
            admitted,
            shutdown.clone(),
        ));
    }
}

/// The TLS handshake: the ClientHello is read first (a client that never sends one costs a
/// parked task, nothing else), then the key exchange and signature are computed on a
/// handshake thread in the turn of the client's address, in the lane its open connections
/// choose ([`HandshakeWorkers`]), then the rest completes here.
async fn handshake(
    config: Arc<rustls::ServerConfig>,
    edge: Arc<Edge>,
    addr: std::net::IpAddr,
    io: Lingering,
) -> std::io::Result<tokio_rustls::server::TlsStream<Lingering>> {
    let start =
        tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), io).await?;
    // `into_stream` processes the ClientHello: the expensive part, computing only, no I/O.
    let open = edge.connections.open_from(addr);
    let accept = edge
        .handshakes
        .run(addr, open, move || start.into_stream(config))
        .await
        .ok_or_else(|| std::io::Error::other("the server is shutting down"))?;
    accept.await
}

/// How long requests in flight may take to finish when the server shuts down…
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// …and, on an idle connection being closed, one that crossed the GOAWAY.
const IDLE_GRACE: Duration = Duration::from_secs(5);
/// As [`IDLE_GRACE`] for a connection evicted for a newcomer: its slot is wanted.
const EVICTED_GRACE: Duration = Duration::from_secs(1);
/// How long a closing connection is given to send its GOAWAY.
const GOAWAY_FLUSH: Duration = Duration::from_millis(50);

/// One connection: handshake, then HTTP/1.1 or HTTP/2 until the client leaves, the connection
/// idles out, is evicted for a newcomer, or the server shuts down.
async fn connection(
    tls: Arc<rustls::ServerConfig>,
    app: Router,
    edge: Arc<Edge>,
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    admitted: Admitted,
    mut shutdown: watch::Receiver<bool>,
) {
    let Admitted { slot, conn } = admitted;
    let io = Lingering::new(tcp, slot);
    let linger = io.switch();
    let no_linger = || linger.store(false, std::sync::atomic::Ordering::Release);
    // The handshake future owns the socket: it is dropped after the switch is set.
    let handshake = tokio::time::timeout(
        edge.limits.handshake_timeout.as_std(),
        handshake(tls, Arc::clone(&edge), peer.ip(), io),
    );
    tokio::pin!(handshake);
    let tls = tokio::select! {
        result = &mut handshake => match result {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                no_linger();
                tracing::debug!(%peer, error = %e, "TLS handshake failed");
                return;
            }
            Err(_) => {
                no_linger();
                tracing::debug!(%peer, "TLS handshake timed out");
                return;
            }
        },
        _ = conn.evicted() => {
            no_linger();
            tracing::debug!(%peer, "connection evicted during its handshake");
            return;
        }
    };
    let peer_cert = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .and_then(|der| crate::pki::common_name(der))
        .map(|common_name| PeerCertificate { common_name });
    conn.handshaken(peer_cert.is_some());
    let service_conn = Arc::clone(&conn);
    let max_header_bytes = edge.max_header_bytes;
    let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
        let guard = service_conn.request();
        let (mut parts, body) = request.into_parts();
        let too_large = head_too_large(&parts, max_header_bytes);
        let expects_continue = parts
            .headers
            .get(http::header::EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
        parts
            .extensions
            .insert(axum::extract::ConnectInfo::<SocketAddr>(peer));
        parts.extensions.insert(Arc::clone(&service_conn));
        if let Some(cert) = &peer_cert {
            parts.extensions.insert(cert.clone());
        }
        let (body, held) = crate::connections::hold_request_body(body);
        let request = hyper::Request::from_parts(parts, axum::body::Body::new(body));
        let app = app.clone();
        async move {
            let response = match too_large {
                Some(e) => e.into_response(),
                None => app.oneshot(request).await?,
            };
            held.settle(expects_continue).await;
            Ok::<_, std::convert::Infallible>(
                response.map(|b| crate::connections::Answer::new(b, held, guard)),
            )
        }
    });
    let limits = &edge.limits;
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    // Request heads beyond the cap get 431; a client that trickles its head is cut off
    // (slowloris), and so is an HTTP/1.1 connection idle between requests.
    builder
        .http1()
        .max_buf_size(edge.max_header_bytes)
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(limits.header_timeout.as_std());
    // HTTP/2: pings find out peers that vanished (their connections would otherwise stay
    // open, holding a slot and a descriptor, for as long as the kernel keeps the socket).
    // Heads are decoded up to four times the cap, so that one over it still gets a 431
    // Status from `head_too_large`, as on HTTP/1.1; beyond that h2 refuses the header block
    // itself (its own 431, or GOAWAY for a block it cannot skip).
    builder
        .http2()
        .timer(hyper_util::rt::TokioTimer::new())
        .keep_alive_interval(limits.keepalive_interval.as_std())
        .keep_alive_timeout(limits.keepalive_timeout.as_std())
        .max_header_list_size(
            u32::try_from(edge.max_header_bytes.saturating_mul(4)).unwrap_or(u32::MAX),
        );
    let connection = builder.serve_connection_with_upgrades(TokioIo::new(tls), service);
    tokio::pin!(connection);
    let (reason, grace) = tokio::select! {
        result = connection.as_mut() => {
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
            return;
        }
        _ = shutdown.changed() => ("server shutting down", SHUTDOWN_GRACE),
        _ = conn.idle_for(limits.idle_timeout.as_std()) => ("idle", IDLE_GRACE),
        _ = conn.evicted() => {
            no_linger();
            ("evicted for a newcomer", EVICTED_GRACE)
        }
    };
    tracing::debug!(%peer, reason, "closing connection");
    // HTTP/2: GOAWAY, then the streams in flight finish; HTTP/1.1: closed after the answer
    // in flight, if any.
    connection.as_mut().graceful_shutdown();
    if reason == "server shutting down" {
        let _ = tokio::time::timeout(grace, connection).await;
        return;
    }
    // Nothing was in flight: once the GOAWAY is out and nothing started meanwhile (a request
    // that crossed it), close, rather than wait for a client that may never answer the
    // GOAWAY's ping.
    let _ = tokio::time::timeout(grace, async {
        tokio::select! {
            _ = connection.as_mut() => {}
            _ = async {
                tokio::time::sleep(GOAWAY_FLUSH).await;
                conn.idle_for(GOAWAY_FLUSH).await;
            } => {}
        }
    })
    .await;
}

/// A request head over `max` bytes, counted as HTTP/2 counts a header list (each field's name
/// and value plus 32; the method and target too): the 431 that HTTP/1.1 answers from the
/// parser (which reads no more than `max`) is answered here for HTTP/2.
fn head_too_large(parts: &http::request::Parts, max: usize) -> Option<ApiError> {
    if parts.version != http::Version::HTTP_2 {
        return None;
    }
    let target = parts.uri.path_and_query().map_or(0, |p| p.as_str().len());
    let size = parts.method.as_str().len()
        + target
        + 64
        + parts
            .headers
            .iter()
            .map(|(k, v)| k.as_str().len() + v.len() + 32)
            .sum::<usize>();
    (size > max).then(|| ApiError {
        code: http::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        reason: "RequestHeaderFieldsTooLarge",
        message: format!(
            "the request head ({size} bytes) exceeds the {max}-byte limit \
             (apiLimits.maxHeaderBytes); shorten the query or headers"
        ),
        details: None,
        retry_after: None,
    })
}
