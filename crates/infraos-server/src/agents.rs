//! Calling agents: the server dials `https://<node>.nodes.infraos.internal:<port>` at the
//! address the agent published, presenting its `system:server` client certificate and
//! checking that the agent's certificate names that node. Used for logs.

use std::net::SocketAddr;
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::error::ApiError;
use crate::pki::{Ca, node_dns_name};

pub struct AgentDialer {
    tls: rustls::ClientConfig,
}

impl AgentDialer {
    pub fn new(ca: &Ca, now: infraos_api::Time) -> Result<AgentDialer, crate::ServerError> {
        let tls_err = |e: String| crate::ServerError::Tls(format!("agent dialer: {e}"));
        let (cert_pem, key_pem) = ca
            .issue_server_client(now)
            .map_err(|e| tls_err(e.to_string()))?;
        let certs: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(cert_pem.as_bytes())
                .collect::<Result<_, _>>()
                .map_err(|e| tls_err(e.to_string()))?;
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
            .map_err(|e| tls_err(e.to_string()))?;
        let mut roots = rustls::RootCertStore::empty();
        for ca in CertificateDer::pem_slice_iter(ca.cert_pem().as_bytes()) {
            let ca = ca.map_err(|e| tls_err(e.to_string()))?;
            roots.add(ca).map_err(|e| tls_err(e.to_string()))?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| tls_err(e.to_string()))?
            .with_root_certificates(roots)
            .with_client_auth_cert(certs, key)
            .map_err(|e| tls_err(e.to_string()))?;
        Ok(AgentDialer { tls })
    }

    /// A client that reaches `node` at `address` (`host:port`) and nothing else.
    pub fn client_for(
        &self,
        node: &str,
        address: &str,
    ) -> Result<(reqwest::Client, String), ApiError> {
        let addr: SocketAddr = address.parse().map_err(|_| {
            ApiError::unavailable(format!(
                "node {node} published an address that is not host:port: {address:?}"
            ))
        })?;
        let host = node_dns_name(node);
        let client = reqwest::Client::builder()
            .use_preconfigured_tls(self.tls.clone())
            .resolve(&host, addr)
            .connect_timeout(std::time::Duration::from_secs(5))
            .build()
            .map_err(|e| ApiError::internal(format!("agent client: {e}")))?;
        Ok((client, format!("https://{host}:{}", addr.port())))
    }
}
