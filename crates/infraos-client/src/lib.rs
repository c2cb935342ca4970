//! A typed HTTPS client for the InfraOS API.
//!
//! It speaks the Kubernetes-shaped paths of `infraos.io/v1`, trusts the cluster CA from the
//! client config, and turns `Status` bodies into [`ClientError::Api`] with the reason and the
//! fields at fault.
#![forbid(unsafe_code)]

use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use infraos_api::kinds::ClaimSpec;
use infraos_api::path::{ApiPath, BATCH_CREATE, PREFIX, Resource};
use infraos_api::{Kind as _, KindInfo};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use serde::Deserialize;

pub mod config;

pub use config::{ClientConfig, ClientIdentity, ConfigError};
pub use reqwest::Method;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{0}")]
    Config(#[from] ConfigError),
    #[error("cannot reach {url}: {source}")]
    Transport {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{message}")]
    Api {
        code: u16,
        reason: String,
        message: String,
        causes: Vec<Cause>,
    },
    #[error("unexpected response from {url}: {reason}")]
    Decode { url: String, reason: String },
    #[error("TLS setup: {0}")]
    Tls(String),
    #[error("server URL: {0}")]
    Url(String),
}

impl ClientError {
    pub fn code(&self) -> Option<u16> {
        match self {
            ClientError::Api { code, .. } => Some(*code),
            _ => None,
        }
    }

    pub fn is_not_found(&self) -> bool {
        self.code() == Some(404)
    }

    pub fn is_conflict(&self) -> bool {
        self.code() == Some(409)
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct Cause {
    #[serde(default)]
    pub field: String,
    #[serde(default)]
    pub message: String,
}

/// One watch event; `T` is the object's type (any JSON by default).
#[derive(Debug, Clone, Deserialize)]
pub struct WatchEvent<T = serde_json::Value> {
    #[serde(rename = "type")]
    pub type_: String,
    pub object: T,
}

/// A stream of watch events; ends when the server closes the watch.
pub type WatchEvents<T = serde_json::Value> =
    std::pin::Pin<Box<dyn Stream<Item = Result<WatchEvent<T>, ClientError>> + Send>>;

/// A page of the audit chain.
#[derive(Debug, Clone, Deserialize)]
pub struct AuditPage {
    pub metadata: AuditPageMeta,
    pub items: Vec<infraos_api::audit::AuditRecord>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditPageMeta {
    pub head_seq: u64,
    pub head_hash: String,
    pub next: Option<u64>,
}

/// What `apply` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    Created,
    Configured,
    Unchanged,
}

#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    /// Every server URL (`server: https://a:7443,https://b:7443`). Requests go to the
    /// current one and move on to the next when it cannot be reached.
    bases: Arc<[String]>,
    current: Arc<std::sync::atomic::AtomicUsize>,
    token: Option<String>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("bases", &self.bases)
            .finish_non_exhaustive()
    }
}

/// The path of a kind's collection, or of one object ([`infraos_api::path`]: the one
/// definition of the API's URLs, which the server parses).
pub fn path(info: &KindInfo, namespace: Option<&str>, name: Option<&str>) -> String {
    infraos_api::path::object_url(info, namespace, name)
}

impl Client {
    pub fn new(config: &ClientConfig) -> Result<Self, ClientError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        if let Some(pem) = &config.ca_pem {
            for cert in CertificateDer::pem_slice_iter(pem) {
                let cert = cert.map_err(|e| ClientError::Tls(format!("CA certificate: {e}")))?;
                roots
                    .add(cert)
                    .map_err(|e| ClientError::Tls(format!("CA certificate: {e}")))?;
            }
        }
        if roots.is_empty() {
            return Err(ClientError::Tls(
                "no CA certificate: set `ca` in the client config or INFRAOS_CA".into(),
            ));
        }
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| ClientError::Tls(e.to_string()))?
            .with_root_certificates(roots);
        let mut tls = match &config.identity {
            None => builder.with_no_client_auth(),
            Some(identity) => {
                let certs: Vec<CertificateDer<'static>> =
                    CertificateDer::pem_slice_iter(&identity.cert_pem)
                        .collect::<Result<_, _>>()
                        .map_err(|e| ClientError::Tls(format!("client certificate: {e}")))?;
                let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(&identity.key_pem)
                    .map_err(|e| ClientError::Tls(format!("client key: {e}")))?;
                builder
                    .with_client_auth_cert(certs, key)
                    .map_err(|e| ClientError::Tls(format!("client certificate: {e}")))?
            }
        };
        tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .connect_timeout(Duration::from_secs(10))
            .pool_idle_timeout(Duration::from_secs(60))
            // A silent partition leaves a connection that never errors: pings find it out,
            // so a long watch or an agent's next heartbeat moves to a fresh connection.
            .tcp_keepalive(Duration::from_secs(30))
            .http2_keep_alive_interval(Duration::from_secs(30))
            .http2_keep_alive_timeout(Duration::from_secs(10))
            .http2_keep_alive_while_idle(true)
            .build()
            .map_err(|e| ClientError::Tls(e.to_string()))?;
        let bases: Vec<String> = config
            .server
            .split(',')
            .map(|s| s.trim().trim_end_matches('/').to_string())
            .filter(|s| !s.is_empty())
            .collect();
        if bases.is_empty() {
            return Err(ClientError::Url(
                "none set: set `server` in the client config or INFRAOS_SERVER".into(),
            ));
        }
        Ok(Client {
            http,
            bases: bases.into(),
            current: Arc::new(std::sync::atomic::AtomicUsize::new(0)),
            token: config.token.clone(),
        })
    }

    /// The server requests go to now.
    pub fn base_url(&self) -> String {
        self.base()
    }

    fn base(&self) -> String {
        let i = self.current.load(std::sync::atomic::Ordering::Relaxed);
        self.bases[i % self.bases.len()].clone()
    }

    /// Executes a request, moving on to the next server URL when this one cannot be reached
    /// (a connection that never opened carried nothing, so the retry cannot double a write).
    async fn execute(
        &self,
        mut request: reqwest::Request,
        url: &str,
    ) -> Result<reqwest::Response, ClientError> {
        let n = self.bases.len();
        let mut tried = 1;
        loop {
            let retry = if n > 1 { request.try_clone() } else { None };
            match self.http.execute(request).await {
                Ok(response) => return Ok(response),
                Err(source) if source.is_connect() && n > 1 => {
                    let next = self
                        .current
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                        + 1;
                    match retry {
                        Some(mut again) if tried < n => {
                            let base = &self.bases[next % n];
                            let mut moved = reqwest::Url::parse(base)
                                .map_err(|e| ClientError::Url(format!("{base:?}: {e}")))?;
                            moved.set_path(again.url().path());
                            moved.set_query(again.url().query());
                            *again.url_mut() = moved;
                            request = again;
                            tried += 1;
                        }
                        _ => {
                            return Err(ClientError::Transport {
                                url: url.to_string(),
                                source,
                            });
                        }
                    }
                }
                Err(source) => {
                    return Err(ClientError::Transport {
                        url: url.to_string(),
                        source,
                    });
                }
            }
        }
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let mut r = self.http.request(method, format!("{}{path}", self.base()));
        if let Some(t) = &self.token {
            r = r.bearer_auth(t);
        }
        r
    }

    async fn send(
        &self,
        builder: reqwest::RequestBuilder,
        url: &str,
    ) -> Result<reqwest::Response, ClientError> {
        let request = builder.build().map_err(|source| ClientError::Transport {
            url: url.to_string(),
            source,
        })?;
        let response = self.execute(request, url).await?;
        if response.status().is_success() {
            return Ok(response);
        }
        let code = response.status().as_u16();
        let text = response.text().await.unwrap_or_default();
        #[derive(Deserialize)]
        struct Status {
            #[serde(default)]
            reason: String,
            #[serde(default)]
            message: String,
            #[serde(default)]
            details: Option<Details>,
        }
        #[derive(Deserialize)]
        struct Details {
            #[serde(default)]
            causes: Vec<Cause>,
        }
        match serde_json::from_str::<Status>(&text) {
            Ok(s) => Err(ClientError::Api {
                code,
                reason: s.reason,
                message: if s.message.is_empty() {
                    format!("HTTP {code}")
                } else {
                    s.message
                },
                causes: s.details.map(|d| d.causes).unwrap_or_default(),
            }),
            Err(_) => Err(ClientError::Api {
                code,
                reason: String::new(),
                message: format!("HTTP {code}: {}", text.trim()),
                causes: Vec::new(),
            }),
        }
    }

    async fn json(
        &self,
        builder: reqwest::RequestBuilder,
        path: &str,
    ) -> Result<serde_json::Value, ClientError> {
        let url = format!("{}{path}", self.base());
        let response = self.send(builder, &url).await?;
        response.json().await.map_err(|e| ClientError::Decode {
            url,
            reason: e.to_string(),
        })
    }

    /// Sends any request and returns the status code and body as JSON (`null` when the body
    /// is not JSON). For tools and tests that need to send what the typed methods would not.
    pub async fn raw(
        &self,
        method: reqwest::Method,
        path: &str,
        content_type: Option<&str>,
        body: Vec<u8>,
        token: Option<&str>,
    ) -> Result<(u16, serde_json::Value), ClientError> {
        let url = format!("{}{path}", self.base());
        let mut builder = self.http.request(method, &url).body(body);
        if let Some(ct) = content_type {
            builder = builder.header(reqwest::header::CONTENT_TYPE, ct);
        }
        if let Some(t) = token.or(self.token.as_deref()) {
            builder = builder.bearer_auth(t);
        }
        let request = builder.build().map_err(|source| ClientError::Transport {
            url: url.clone(),
            source,
        })?;
        let response = self.execute(request, &url).await?;
        let code = response.status().as_u16();
        let bytes = response.bytes().await.unwrap_or_default();
        Ok((
            code,
            serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
        ))
    }

    /// As [`Client::raw`], with extra request headers, answering the response headers too
    /// (tests of the gateway: Retry-After, oversized heads).
    pub async fn raw_with_headers(
        &self,
        method: reqwest::Method,
        path: &str,
        headers: &[(&str, String)],
        body: Vec<u8>,
        token: Option<&str>,
    ) -> Result<(u16, Vec<(String, String)>, serde_json::Value), ClientError> {
        let url = format!("{}{path}", self.base());
        let mut builder = self.http.request(method, &url).body(body);
        for (name, value) in headers {
            builder = builder.header(*name, value);
        }
        if let Some(t) = token.or(self.token.as_deref()) {
            builder = builder.bearer_auth(t);
        }
        let request = builder.build().map_err(|source| ClientError::Transport {
            url: url.clone(),
            source,
        })?;
        let response = self.execute(request, &url).await?;
        let code = response.status().as_u16();
        let answered: Vec<(String, String)> = response
            .headers()
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or_default().to_string()))
            .collect();
        let bytes = response.bytes().await.unwrap_or_default();
        Ok((
            code,
            answered,
            serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
        ))
    }

    /// `POST`/`PUT` a JSON body to any path and decode the JSON answer (the agent API).
    pub async fn send_json<B: serde::Serialize + ?Sized, R: serde::de::DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: &B,
    ) -> Result<R, ClientError> {
        let url = format!("{}{path}", self.base());
        let response = self
            .send(self.request(method, path).json(body), &url)
            .await?;
        if response.status() == reqwest::StatusCode::NO_CONTENT {
            return serde_json::from_value(serde_json::Value::Null).map_err(|e| {
                ClientError::Decode {
                    url,
                    reason: e.to_string(),
                }
            });
        }
        response.json().await.map_err(|e| ClientError::Decode {
            url,
            reason: e.to_string(),
        })
    }

    /// A streaming `GET` (logs): the response body as it arrives.
    pub async fn get_stream(
        &self,
        path: &str,
    ) -> Result<
        impl futures::Stream<Item = Result<bytes::Bytes, reqwest::Error>> + use<>,
        ClientError,
    > {
        let url = format!("{}{path}", self.base());
        let response = self
            .send(self.request(reqwest::Method::GET, path), &url)
            .await?;
        Ok(response.bytes_stream())
    }

    /// `GET` on any path, returning the JSON body.
    pub async fn get_path(&self, path: &str) -> Result<serde_json::Value, ClientError> {
        self.json(self.request(reqwest::Method::GET, path), path)
            .await
    }

    pub async fn get(
        &self,
        info: &KindInfo,
        ns: Option<&str>,
        name: &str,
    ) -> Result<serde_json::Value, ClientError> {
        self.get_path(&path(info, ns, Some(name))).await
    }

    /// Lists every object (following `continue` tokens), optionally filtered by labels.
    pub async fn list(
        &self,
        info: &KindInfo,
        ns: Option<&str>,
        selector: Option<&str>,
    ) -> Result<(Vec<serde_json::Value>, u64), ClientError> {
        let base = path(info, ns, None);
        let mut items = Vec::new();
        let mut token: Option<String> = None;
        let mut revision = 0;
        loop {
            let mut query: Vec<(&str, String)> = vec![("limit", "1000".into())];
            if let Some(s) = selector {
                query.push(("labelSelector", s.to_string()));
            }
            if let Some(t) = &token {
                query.push(("continue", t.clone()));
            }
            let page = self
                .json(
                    self.request(reqwest::Method::GET, &base).query(&query),
                    &base,
                )
                .await?;
            if revision == 0 {
                revision = page
                    .pointer("/metadata/resourceVersion")
                    .and_then(|v| v.as_str())
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0);
            }
            if let Some(list) = page.get("items").and_then(|i| i.as_array()) {
                items.extend(list.iter().cloned());
            }
            token = page
                .pointer("/metadata/continue")
                .and_then(|v| v.as_str())
                .map(str::to_string);
            if token.is_none() {
                return Ok((items, revision));
            }
        }
    }

    /// Creates an object from its JSON bytes without reading the created object back (status
    /// only), for bulk loaders that prepare their requests in advance.
    pub async fn create_quiet(
        &self,
        info: &KindInfo,
        ns: Option<&str>,
        json: bytes::Bytes,
    ) -> Result<(), ClientError> {
        self.post_quiet(&path(info, ns, None), json, false).await
    }

    /// POSTs a prepared JSON body and drains (not parses) the answer: dropping it unread
    /// resets the HTTP/2 stream, which servers rightly treat as abuse when it happens
    /// thousands of times. `minimal`: ask for a short answer (`Prefer: return=minimal`).
    async fn post_quiet(
        &self,
        p: &str,
        json: bytes::Bytes,
        minimal: bool,
    ) -> Result<(), ClientError> {
        let url = format!("{}{p}", self.base());
        let mut builder = self
            .request(reqwest::Method::POST, p)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(json);
        if minimal {
            builder = builder.header("prefer", "return=minimal");
        }
        let response = self.send(builder, &url).await?;
        response
            .bytes()
            .await
            .map_err(|source| ClientError::Transport { url, source })?;
        Ok(())
    }

    /// Creates several objects in one request and one transaction (`…:batchCreate`): all or
    /// none. Returns the created objects.
    pub async fn create_batch(
        &self,
        info: &KindInfo,
        ns: Option<&str>,
        items: &[serde_json::Value],
    ) -> Result<Vec<serde_json::Value>, ClientError> {
        let p = format!("{}{BATCH_CREATE}", path(info, ns, None));
        let body = serde_json::json!({ "items": items });
        let mut list = self
            .json(self.request(reqwest::Method::POST, &p).json(&body), &p)
            .await?;
        match list.get_mut("items").map(serde_json::Value::take) {
            Some(serde_json::Value::Array(items)) => Ok(items),
            _ => Ok(Vec::new()),
        }
    }

    /// [`Client::create_batch`] with a prepared body (`{"items": […]}`), asking for the short
    /// answer and draining it unread: what load generators use.
    pub async fn create_batch_quiet(
        &self,
        info: &KindInfo,
        ns: Option<&str>,
        json: bytes::Bytes,
    ) -> Result<(), ClientError> {
        self.post_quiet(
            &format!("{}{BATCH_CREATE}", path(info, ns, None)),
            json,
            true,
        )
        .await
    }

    pub async fn create(
        &self,
        info: &KindInfo,
        ns: Option<&str>,
        body: &serde_json::Value,
    ) -> Result<serde_json::Value, ClientError> {
        let p = path(info, ns, None);
        self.json(self.request(reqwest::Method::POST, &p).json(body), &p)
            .await
    }

    pub async fn replace(
        &self,
        info: &KindInfo,
        ns: Option<&str>,
        name: &str,
        body: &serde_json::Value,
    ) -> Result<serde_json::Value, ClientError> {
        let p = path(info, ns, Some(name));
        self.json(self.request(reqwest::Method::PUT, &p).json(body), &p)
            .await
    }

    pub async fn replace_status(
        &self,
        info: &KindInfo,
        ns: Option<&str>,
        name: &str,
        body: &serde_json::Value,
    ) -> Result<serde_json::Value, ClientError> {
        let p = format!("{}/status", path(info, ns, Some(name)));
        self.json(self.request(reqwest::Method::PUT, &p).json(body), &p)
            .await
    }

    pub async fn merge_patch(
        &self,
        info: &KindInfo,
        ns: Option<&str>,
        name: &str,
        patch: &serde_json::Value,
    ) -> Result<serde_json::Value, ClientError> {
        let p = path(info, ns, Some(name));
        let body = serde_json::to_vec(patch).unwrap_or_default();
        let builder = self
            .request(reqwest::Method::PATCH, &p)
            .header(
                reqwest::header::CONTENT_TYPE,
                "application/merge-patch+json",
            )
            .body(body);
        self.json(builder, &p).await
    }

    pub async fn delete(
        &self,
        info: &KindInfo,
        ns: Option<&str>,
        name: &str,
    ) -> Result<serde_json::Value, ClientError> {
        let p = path(info, ns, Some(name));
        self.json(self.request(reqwest::Method::DELETE, &p), &p)
            .await
    }

    /// `renew` or `release` a claim.
    pub async fn claim_action(
        &self,
        ns: &str,
        name: &str,
        action: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<serde_json::Value, ClientError> {
        let p = ApiPath::object(ClaimSpec::INFO, Some(ns), Some(name))
            .subresource(action)
            .to_url();
        let mut builder = self.request(reqwest::Method::POST, &p);
        if let Some(b) = body {
            builder = builder.json(b);
        }
        self.json(builder, &p).await
    }

    /// Creates the object, or replaces its spec, labels and annotations when it exists
    /// (status and server-owned metadata are kept), retrying on conflicts.
    pub async fn apply(
        &self,
        object: &serde_json::Value,
    ) -> Result<(Applied, serde_json::Value), ClientError> {
        let (info, ns, name) = target_of(object)?;
        for _ in 0..5 {
            let current = match self.get(info, ns.as_deref(), &name).await {
                Ok(v) => v,
                Err(e) if e.is_not_found() => {
                    match self.create(info, ns.as_deref(), object).await {
                        Ok(v) => return Ok((Applied::Created, v)),
                        Err(e) if e.is_conflict() => continue,
                        Err(e) => return Err(e),
                    }
                }
                Err(e) => return Err(e),
            };
            let mut desired = current.clone();
            for field in ["spec"] {
                match object.get(field) {
                    Some(v) => desired[field] = v.clone(),
                    None => {
                        if let Some(o) = desired.as_object_mut() {
                            o.remove(field);
                        }
                    }
                }
            }
            for field in ["labels", "annotations"] {
                match object.pointer(&format!("/metadata/{field}")) {
                    Some(v) => desired["metadata"][field] = v.clone(),
                    None => {
                        if let Some(m) = desired.get_mut("metadata").and_then(|m| m.as_object_mut())
                        {
                            m.remove(field);
                        }
                    }
                }
            }
            if desired == current {
                return Ok((Applied::Unchanged, current));
            }
            match self.replace(info, ns.as_deref(), &name, &desired).await {
                Ok(v) => {
                    let unchanged = v.get("spec") == current.get("spec")
                        && v.pointer("/metadata/labels") == current.pointer("/metadata/labels")
                        && v.pointer("/metadata/annotations")
                            == current.pointer("/metadata/annotations");
                    return Ok((
                        if unchanged {
                            Applied::Unchanged
                        } else {
                            Applied::Configured
                        },
                        v,
                    ));
                }
                Err(e) if e.is_conflict() && e.to_string().contains("has been modified") => {
                    continue;
                }
                Err(e) => return Err(e),
            }
        }
        Err(ClientError::Api {
            code: 409,
            reason: "Conflict".into(),
            message: format!(
                "{} {name:?} kept changing while applying; try again",
                info.kind
            ),
            causes: vec![],
        })
    }

    /// Watches a kind: events after `resource_version`, or the current state first.
    pub async fn watch(
        &self,
        info: &KindInfo,
        ns: Option<&str>,
        selector: Option<&str>,
        resource_version: Option<u64>,
    ) -> Result<WatchEvents, ClientError> {
        self.watch_as::<serde_json::Value>(info, ns, selector, resource_version)
            .await
    }

    /// As [`Client::watch`], decoding objects as `T` (fields `T` lacks are skipped unparsed).
    pub async fn watch_as<T: serde::de::DeserializeOwned + Send + 'static>(
        &self,
        info: &KindInfo,
        ns: Option<&str>,
        selector: Option<&str>,
        resource_version: Option<u64>,
    ) -> Result<WatchEvents<T>, ClientError> {
        let p = path(info, ns, None);
        let mut query: Vec<(&str, String)> = vec![
            ("watch", "true".into()),
            ("allowWatchBookmarks", "true".into()),
        ];
        if let Some(s) = selector {
            query.push(("labelSelector", s.to_string()));
        }
        if let Some(rv) = resource_version {
            query.push(("resourceVersion", rv.to_string()));
        }
        let url = format!("{}{p}", self.base());
        let response = self
            .send(self.request(reqwest::Method::GET, &p).query(&query), &url)
            .await?;
        let bytes = response.bytes_stream();
        // `buf[read..]` is what is not parsed yet: lines are parsed in place, and the buffer
        // compacted once per chunk (draining each line off the front moved the rest of a
        // chunk holding hundreds of events once per event).
        let lines = futures::stream::unfold(
            (bytes, Vec::<u8>::new(), 0usize, url),
            |(mut bytes, mut buf, mut read, url)| async move {
                loop {
                    if let Some(len) = buf[read..].iter().position(|b| *b == b'\n') {
                        let line = &buf[read..read + len];
                        read += len + 1;
                        if line.iter().all(u8::is_ascii_whitespace) {
                            continue;
                        }
                        let event = serde_json::from_slice::<WatchEvent<T>>(line).map_err(|e| {
                            ClientError::Decode {
                                url: url.clone(),
                                reason: format!("bad watch event: {e}"),
                            }
                        });
                        return Some((event, (bytes, buf, read, url)));
                    }
                    match bytes.next().await {
                        Some(Ok(chunk)) => {
                            buf.drain(..read);
                            read = 0;
                            buf.extend_from_slice(&chunk);
                        }
                        Some(Err(source)) => {
                            let err = ClientError::Transport {
                                url: url.clone(),
                                source,
                            };
                            return Some((Err(err), (bytes, Vec::new(), 0, url)));
                        }
                        None => return None,
                    }
                }
            },
        );
        Ok(Box::pin(lines))
    }

    pub async fn audit_records(&self, from: u64, limit: usize) -> Result<AuditPage, ClientError> {
        let p = &format!("{PREFIX}/{}", Resource::AuditRecords.plural());
        let url = format!("{}{p}", self.base());
        let response = self
            .send(
                self.request(reqwest::Method::GET, p)
                    .query(&[("from", from.to_string()), ("limit", limit.to_string())]),
                &url,
            )
            .await?;
        response.json().await.map_err(|e| ClientError::Decode {
            url,
            reason: e.to_string(),
        })
    }
}

/// The kind, namespace and name an object's envelope names.
pub fn target_of(
    object: &serde_json::Value,
) -> Result<(&'static KindInfo, Option<String>, String), ClientError> {
    let bad = |reason: String| ClientError::Api {
        code: 400,
        reason: "BadRequest".into(),
        message: reason,
        causes: vec![],
    };
    let kind = object
        .get("kind")
        .and_then(|k| k.as_str())
        .ok_or_else(|| bad("kind: required".into()))?;
    let info = infraos_api::object::kinds()
        .iter()
        .copied()
        .find(|k| k.kind == kind)
        .ok_or_else(|| bad(format!("kind: unknown kind {kind:?}")))?;
    let name = object
        .pointer("/metadata/name")
        .and_then(|n| n.as_str())
        .filter(|n| !n.is_empty())
        .ok_or_else(|| bad(format!("{kind}: metadata.name is required")))?
        .to_string();
    let ns = object
        .pointer("/metadata/namespace")
        .and_then(|n| n.as_str())
        .map(str::to_string);
    if info.namespaced && ns.is_none() {
        return Err(bad(format!(
            "{kind} {name:?}: metadata.namespace is required (the project)"
        )));
    }
    Ok((info, ns, name))
}
