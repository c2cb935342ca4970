//! The agent's own HTTPS endpoint, for the control plane only: it presents the node's
//! certificate and accepts only clients with the CA's `system:server` certificate.
//! `GET /v1/logs/<allocation uid>/<stdout|stderr>?follow=true&tail=N` streams a workload's log.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use parking_lot::RwLock;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tower::ServiceExt;

use crate::AgentError;
use crate::identity::Identity;

pub const SERVER_CN: &str = "system:server";

/// TLS settings built from the current identity; replaced on rotation.
pub fn tls_config(identity: &Identity) -> Result<rustls::ServerConfig, AgentError> {
    let err = |e: String| AgentError::Certificate(format!("log endpoint: {e}"));
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(identity.cert_pem.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|e| err(e.to_string()))?;
    let key = PrivateKeyDer::from_pem_slice(identity.key_pem.as_bytes())
        .map_err(|e| err(e.to_string()))?;
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(identity.ca_pem.as_bytes()) {
        roots
            .add(ca.map_err(|e| err(e.to_string()))?)
            .map_err(|e| err(e.to_string()))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .map_err(|e| err(e.to_string()))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| err(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .map_err(|e| err(e.to_string()))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

#[derive(Clone)]
struct LogState {
    workloads: PathBuf,
}

#[derive(serde::Deserialize)]
struct LogParams {
    #[serde(default)]
    follow: Option<String>,
    #[serde(default)]
    tail: Option<u64>,
}

async fn logs(
    State(state): State<LogState>,
    Path((uid, stream)): Path<(String, String)>,
    Query(params): Query<LogParams>,
) -> Response {
    let safe = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
    if !safe(&uid) || !matches!(stream.as_str(), "stdout" | "stderr") {
        return (StatusCode::BAD_REQUEST, "bad workload or stream").into_response();
    }
    let dir = state.workloads.join(&uid);
    if !dir.is_dir() {
        return (StatusCode::NOT_FOUND, "no such workload on this node").into_response();
    }
    let path = infraos_exec::logs::log_path(&dir, &stream);
    let (head, offset) = match infraos_exec::logs::tail(&path, params.tail) {
        Ok(r) => r,
        Err(e) => return (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    };
    let follow = matches!(params.follow.as_deref(), Some("true" | "1"));
    if !follow {
        return Body::from(head).into_response();
    }
    let chunks = futures::stream::unfold(
        (Some(head), offset, path, dir, false),
        |(head, offset, path, dir, done)| async move {
            if let Some(h) = head {
                return Some((
                    Ok::<_, std::io::Error>(bytes::Bytes::from(h)),
                    (None, offset, path, dir, false),
                ));
            }
            if done {
                return None;
            }
            loop {
                let ended = dir.join(infraos_exec::shim::EXIT).exists()
                    || dir.join(infraos_exec::shim::FAILED).exists();
                match infraos_exec::logs::read_from(&path, offset) {
                    Ok((data, next)) if !data.is_empty() => {
                        return Some((
                            Ok(bytes::Bytes::from(data)),
                            (None, next, path, dir, false),
                        ));
                    }
                    Ok(_) if ended => return None,
                    Ok(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                    Err(e) => return Some((Err(e), (None, offset, path, dir, true))),
                }
            }
        },
    );
    Body::from_stream(chunks).into_response()
}

/// Serves until the task is dropped. `tls` is read at each accept, so a rotated
/// certificate is used from the next connection on.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<RwLock<Arc<rustls::ServerConfig>>>,
    workloads: PathBuf,
) {
    let app = Router::new()
        .route("/v1/logs/{uid}/{stream}", axum::routing::get(logs))
        .with_state(LogState { workloads });
    loop {
        let Ok((tcp, peer)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let acceptor = tokio_rustls::TlsAcceptor::from(tls.read().clone());
        let app = app.clone();
        tokio::spawn(async move {
            let Ok(Ok(stream)) =
                tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await
            else {
                return;
            };
            let cn = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .and_then(|der| {
                    x509_parser::parse_x509_certificate(der)
                        .ok()
                        .and_then(|(_, c)| {
                            c.subject()
                                .iter_common_name()
                                .next()
                                .and_then(|n| n.as_str().ok())
                                .map(str::to_string)
                        })
                });
            if cn.as_deref() != Some(SERVER_CN) {
                tracing::warn!(%peer, ?cn, "refused a caller that is not the control plane");
                return;
            }
            let service = hyper::service::service_fn(
                move |request: hyper::Request<hyper::body::Incoming>| {
                    app.clone().oneshot(request.map(Body::new))
                },
            );
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
