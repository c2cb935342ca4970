//! The server's own certificate rotates without a restart: an operator (or cert-manager)
//! replaces `server.crt`/`server.key` and sends SIGHUP; new TLS handshakes get the new
//! certificate, the API keeps answering, and a pair that does not fit is refused while the
//! previous certificate stays in service.

// Test code: a panic is how a test reports failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use support::*;

/// The leaf certificate the server presents to a new connection.
async fn served(server: &TestServer) -> Vec<u8> {
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_file_iter(server.data_dir().join("ca.crt")).unwrap() {
        roots.add(ca.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", server.port()))
        .await
        .unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

fn der_of(pem_file: &Path) -> Vec<u8> {
    CertificateDer::from_pem_file(pem_file).unwrap().to_vec()
}

/// A new server certificate from the data dir's CA, for the names clients use.
fn issue(dir: &Path) -> (String, String) {
    let ca_pem = std::fs::read_to_string(dir.join("ca.crt")).unwrap();
    let ca_key =
        rcgen::KeyPair::from_pem(&std::fs::read_to_string(dir.join("ca.key")).unwrap()).unwrap();
    let issuer = rcgen::Issuer::from_ca_cert_pem(&ca_pem, ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let params =
        rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    (cert.pem(), key.serialize_pem())
}

/// Replaces a file the way deployment tools do: write aside, then rename over it.
fn replace(path: &Path, contents: &str) {
    let aside = path.with_extension("new");
    std::fs::write(&aside, contents).unwrap();
    std::fs::rename(&aside, path).unwrap();
}

fn hangup(server: &TestServer) {
    let pid = nix::unistd::Pid::from_raw(server.pid().unwrap() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).unwrap();
}

#[tokio::test]
async fn the_server_certificate_rotates_without_a_restart() {
    let server = TestServer::start().await;
    let dir = server.data_dir().to_path_buf();
    let client = server.client();
    let first = served(&server).await;
    assert_eq!(first, der_of(&dir.join("server.crt")));

    let (cert, key) = issue(&dir);
    replace(&dir.join("server.key"), &key);
    replace(&dir.join("server.crt"), &cert);
    hangup(&server);
    let second = der_of(&dir.join("server.crt"));
    assert_ne!(first, second);
    eventually(
        Duration::from_secs(10),
        "the new certificate is served",
        || {
            let server = &server;
            let second = second.clone();
            async move { (served(server).await == second).then_some(()) }
        },
    )
    .await;
    // Clients that trust the CA go on, over new connections and old ones.
    client.get_path("/apis/infraos.io/v1/nodes").await.unwrap();
    server
        .client()
        .get_path("/apis/infraos.io/v1/nodes")
        .await
        .unwrap();

    // A certificate with someone else's key is refused; the previous pair stays in service.
    let (other_cert, _) = issue(&dir);
    replace(&dir.join("server.crt"), &other_cert);
    hangup(&server);
    eventually(Duration::from_secs(10), "the refusal is logged", || {
        let log = server.log();
        async move {
            log.contains("server certificate not reloaded")
                .then_some(())
        }
    })
    .await;
    assert_eq!(served(&server).await, second);
    server
        .client()
        .get_path("/apis/infraos.io/v1/nodes")
        .await
        .unwrap();
}
