//! The etcd backend: the store contract on an etcd v3 cluster, for several server replicas.
//!
//! ```text
//!   {root}/data{key}          objects, as the embedded store keeps them (revisions are etcd's)
//!   {root}/ledger/{first:020}.{count}   the ledger entries one transaction appends ([`blocks`])
//!   {root}/ledger-head        seq (8 bytes, little-endian) ‖ hash of the newest entry
//! ```
//! A transaction is one etcd `Txn`: the caller's compares, plus (when it appends to the
//! ledger) a compare on the head key's value, so two writers can never both extend the
//! chain from the same head. When it fails, the head is read again: if it moved, the ledger
//! lost the race and the transaction is retried on the new head; otherwise the caller's
//! compares failed. Watches map onto etcd watches with `prev_kv`; a compacted start revision
//! is `StoreError::Compacted`, as for the embedded store.
//!
//! Unlike the embedded store, ledger entries are keys here (one block per transaction): a
//! ledger-only transaction moves the revision on (etcd's revision counts every key it writes).
//!
//! Load: transactions that append to the ledger go through one committer per store, which
//! sends whatever queued meanwhile as one etcd Txn within etcd's limits ([`group`]); a single
//! transaction with more operations than `--max-txn-ops` is refused before it is sent, and
//! etcd's own refusals for size are named ([`StoreError::TxnTooLarge`]); at most
//! `max_in_flight` requests are outstanding at once: the rest wait for a slot (back-pressure)
//! instead of queueing inside the gRPC channel until their deadline passes.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use etcd_client::{
    Client, Compare as EtcdCompare, CompareOp, ConnectOptions, EventType, GetOptions, SortOrder,
    SortTarget, TlsOptions, Txn as EtcdTxn, TxnOp, WatchOptions,
};
use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::{
    Compare, Event, EventKind, KeyValue, LedgerEntry, LedgerHead, Op, RangeResult, Revision, Store,
    StoreError, Txn, TxnCost, TxnLimits, TxnOutcome, WatchStream, check_sizes,
};

/// The largest range answer read: far above any page the callers ask for.
const MAX_RANGE_ANSWER: usize = 1 << 30;

mod blocks;
mod group;

/// Where an etcd store lives and how to reach it.
#[derive(Clone, Debug, Default)]
pub struct EtcdOptions {
    /// `host:port` or `http(s)://host:port`, one per member.
    pub endpoints: Vec<String>,
    /// Key prefix of this InfraOS installation (several may share one etcd).
    pub root: String,
    /// PEM CA bundle that signed the etcd members' certificates (turns on TLS).
    pub ca_pem: Option<Vec<u8>>,
    /// PEM client certificate and key, for etcd's `--client-cert-auth`.
    pub client_cert_pem: Option<(Vec<u8>, Vec<u8>)>,
    pub connect_timeout: Duration,
    /// Each request's deadline, counted once it has a slot (see `max_in_flight`).
    pub request_timeout: Duration,
    /// The members' `--max-txn-ops` (etcd's default: 128): the most compares, and the most
    /// operations, one transaction may carry.
    pub max_txn_ops: usize,
    /// The members' `--max-request-bytes` (etcd's default: 1.5 MiB): groups of ledger
    /// transactions stay under it (a single larger transaction is sent as it is, and etcd
    /// decides).
    pub max_request_bytes: usize,
    /// Requests outstanding at once; more wait for a slot.
    pub max_in_flight: usize,
}

impl EtcdOptions {
    pub fn new(endpoints: Vec<String>) -> Self {
        EtcdOptions {
            endpoints,
            root: "/infraos".into(),
            ca_pem: None,
            client_cert_pem: None,
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(10),
            max_txn_ops: 128,
            max_request_bytes: 1536 * 1024,
            max_in_flight: 128,
        }
    }

    /// Parses `etcd://host:port,host:port[/root][?maxTxnOps=N&maxRequestBytes=N&maxInFlight=N]`.
    /// The limits must match the members' flags when those are not etcd's defaults.
    pub fn parse_url(url: &str) -> Result<Self, StoreError> {
        let rest = url.strip_prefix("etcd://").ok_or_else(|| {
            StoreError::Backend(format!("{url:?}: an etcd store URL starts with etcd://"))
        })?;
        let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
        let mut limits = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let n = value
                .parse::<usize>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| {
                    StoreError::Backend(format!(
                        "{url:?}: {name} must be a positive integer, not {value:?}"
                    ))
                })?;
            match name {
                "maxTxnOps" | "maxRequestBytes" | "maxInFlight" => limits.push((name, n)),
                other => {
                    return Err(StoreError::Backend(format!(
                        "{url:?}: unknown parameter {other:?} (known: maxTxnOps, maxRequestBytes, maxInFlight)"
                    )));
                }
            }
        }
        let (hosts, root) = match rest.split_once('/') {
            Some((hosts, root)) => (hosts, format!("/{}", root.trim_end_matches('/'))),
            None => (rest, "/infraos".to_string()),
        };
        let endpoints: Vec<String> = hosts
            .split(',')
            .filter(|h| !h.is_empty())
            .map(str::to_string)
            .collect();
        if endpoints.is_empty() || root == "/" {
            return Err(StoreError::Backend(format!(
                "{url:?}: expected etcd://host:port[,host:port…][/root]"
            )));
        }
        let mut options = EtcdOptions::new(endpoints);
        options.root = root;
        for (name, n) in limits {
            match name {
                "maxTxnOps" => options.max_txn_ops = n.max(2),
                "maxRequestBytes" => options.max_request_bytes = n,
                _ => options.max_in_flight = n,
            }
        }
        Ok(options)
    }
}

/// A store on etcd. Cheap to clone: clones share one gRPC channel.
#[derive(Clone)]
pub struct EtcdStore {
    /// Replaced by a fresh connection when requests stop getting answers (a channel whose
    /// members all went away once may not find them again by itself).
    client: Arc<parking_lot::RwLock<Client>>,
    endpoints: Arc<[String]>,
    connect: ConnectOptions,
    request_timeout: Duration,
    data: String,
    ledger: String,
    head: String,
    /// Slots for requests in flight.
    slots: Arc<Semaphore>,
    limits: group::Limits,
    /// The ledger committer's queue ([`group`]); `None` in the committer's own handle, so that
    /// the committer ends when the last other handle is dropped.
    ledger_queue: Option<mpsc::Sender<group::Pending>>,
}

/// etcd's answer as the store's error: its limits and its quota are named, everything else is
/// a backend failure.
fn backend(e: etcd_client::Error) -> StoreError {
    let text = e.to_string();
    if text.contains("too many operations in txn request") {
        StoreError::TxnTooLarge(format!(
            "etcd: {text} (its --max-txn-ops; set maxTxnOps in the store URL to match)"
        ))
    } else if text.contains("request is too large") {
        StoreError::TxnTooLarge(format!("etcd: {text} (its --max-request-bytes)"))
    } else if text.contains("database space exceeded") {
        StoreError::NoSpace(format!("etcd: {text}"))
    } else {
        StoreError::Backend(format!("etcd: {text}"))
    }
}

/// The first key after every key starting with `prefix`.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

fn revision_of(header: Option<&etcd_client::ResponseHeader>) -> Revision {
    header.map_or(0, |h| h.revision().max(0) as Revision)
}

impl EtcdStore {
    /// Connects and checks that the cluster answers (a clear error at start, not later).
    pub async fn connect(options: EtcdOptions) -> Result<Self, StoreError> {
        let mut connect = ConnectOptions::new()
            .with_connect_timeout(options.connect_timeout)
            .with_timeout(options.request_timeout)
            .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5));
        if let Some(ca) = &options.ca_pem {
            let mut tls =
                TlsOptions::new().ca_certificate(etcd_client::Certificate::from_pem(ca.clone()));
            if let Some((cert, key)) = &options.client_cert_pem {
                tls = tls.identity(etcd_client::Identity::from_pem(cert.clone(), key.clone()));
            }
            connect = connect.with_tls(tls);
        }
        let endpoints: Vec<String> = options
            .endpoints
            .iter()
            .map(|e| {
                if e.contains("://") {
                    e.clone()
                } else if options.ca_pem.is_some() {
                    format!("https://{e}")
                } else {
                    format!("http://{e}")
                }
            })
            .collect();
        let client = Client::connect(&endpoints, Some(connect.clone()))
            .await
            .map_err(|e| {
                StoreError::Backend(format!("cannot reach etcd at {}: {e}", endpoints.join(",")))
            })?;
        let store = EtcdStore {
            client: Arc::new(parking_lot::RwLock::new(client)),
            endpoints: endpoints.clone().into(),
            connect,
            request_timeout: options.request_timeout,
            data: format!("{}/data", options.root),
            ledger: format!("{}/ledger/", options.root),
            head: format!("{}/ledger-head", options.root),
            slots: Arc::new(Semaphore::new(options.max_in_flight.max(1))),
            limits: group::Limits {
                max_txn_ops: options.max_txn_ops.max(2),
                max_request_bytes: options.max_request_bytes,
            },
            ledger_queue: None,
        };
        store.current_revision().await.map_err(|e| {
            StoreError::Backend(format!(
                "etcd at {} does not answer: {e}",
                endpoints.join(",")
            ))
        })?;
        let (queue, pending) = mpsc::channel(4096);
        tokio::spawn(group::run(store.clone(), store.limits, pending));
        Ok(EtcdStore {
            ledger_queue: Some(queue),
            ..store
        })
    }

    fn client(&self) -> Client {
        self.client.read().clone()
    }

    /// A client for ranges, whose answers may exceed gRPC's default 4 MiB: a page of 5,000
    /// allocations is ~5.5 MB, and a server restarted on a store holding that many could not
    /// list them (found by `bench coldstart`). The answer holds only what was stored.
    fn reader(&self) -> etcd_client::KvClient {
        self.client()
            .kv_client()
            .max_decoding_message_size(MAX_RANGE_ANSWER)
    }

    /// A fresh connection to every member, for when the current one stopped answering.
    async fn reconnect(&self) {
        match Client::connect(self.endpoints.as_ref(), Some(self.connect.clone())).await {
            Ok(client) => {
                tracing::info!("reconnected to etcd");
                *self.client.write() = client;
            }
            Err(e) => tracing::warn!(error = %e, "cannot reconnect to etcd"),
        }
    }

    /// Runs one store operation: again (up to 5 times, 25–125 ms apart) while the members it
    /// reached are down; with a fresh connection after a request got no answer in time (a
    /// read is then sent again; a write is not, since it may have been applied).
    async fn again<T, F, Fut>(&self, read: bool, mut op: F) -> Result<T, StoreError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, StoreError>>,
    {
        let mut attempt = 0u64;
        loop {
            let slot = self.slots.acquire().await.map_err(|_| StoreError::Closed)?;
            let outcome = tokio::time::timeout(self.request_timeout, op()).await;
            drop(slot);
            let retry = match &outcome {
                Ok(Err(e)) => unreached(e),
                Err(_) => {
                    self.reconnect().await;
                    read
                }
                Ok(Ok(_)) => false,
            };
            if retry && attempt < 5 {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(25 * attempt)).await;
                continue;
            }
            return match outcome {
                Ok(result) => result,
                Err(_) => Err(StoreError::Backend(format!(
                    "etcd did not answer within {:?}",
                    self.request_timeout
                ))),
            };
        }
    }

    fn key(&self, key: &str) -> String {
        format!("{}{key}", self.data)
    }

    fn to_kv(&self, kv: &etcd_client::KeyValue) -> Result<KeyValue, StoreError> {
        let raw = std::str::from_utf8(kv.key()).map_err(|_| StoreError::Corrupt {
            key: String::from_utf8_lossy(kv.key()).into_owned(),
            reason: "the key is not UTF-8".into(),
        })?;
        let key = raw.strip_prefix(&self.data).unwrap_or(raw).to_string();
        Ok(KeyValue {
            key,
            value: Bytes::copy_from_slice(kv.value()),
            create_revision: kv.create_revision().max(0) as Revision,
            mod_revision: kv.mod_revision().max(0) as Revision,
            version: kv.version().max(0) as u64,
        })
    }

    /// Maps etcd's "compacted" and "future revision" answers to the store's errors.
    fn at_revision_error(e: etcd_client::Error, requested: Revision) -> StoreError {
        let text = e.to_string();
        if text.contains("compacted") {
            StoreError::Compacted {
                requested,
                compacted: requested,
            }
        } else if text.contains("future revision") {
            StoreError::FutureRevision {
                requested,
                current: 0,
            }
        } else {
            backend(e)
        }
    }

    async fn read_head(&self) -> Result<(LedgerHead, i64), StoreError> {
        let mut client = self.client();
        let resp = client
            .get(self.head.as_bytes(), None)
            .await
            .map_err(backend)?;
        match resp.kvs().first() {
            None => Ok((LedgerHead::default(), 0)),
            Some(kv) => {
                let v = kv.value();
                if v.len() != 40 {
                    return Err(StoreError::Corrupt {
                        key: self.head.clone(),
                        reason: format!("ledger head of {} bytes, expected 40", v.len()),
                    });
                }
                let mut seq = [0u8; 8];
                seq.copy_from_slice(&v[..8]);
                let mut hash = [0u8; 32];
                hash.copy_from_slice(&v[8..]);
                Ok((
                    LedgerHead {
                        seq: u64::from_le_bytes(seq),
                        hash,
                    },
                    kv.mod_revision(),
                ))
            }
        }
    }

    /// The key of a ledger block, from its suffix ([`blocks`]).
    fn ledger_block_key(&self, suffix: String) -> String {
        format!("{}{suffix}", self.ledger)
    }
}

/// One attempt of each store operation; [`Store`] sends them again while members are down.
impl EtcdStore {
    async fn get_once(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        let mut client = self.client();
        let resp = client.get(self.key(key), None).await.map_err(backend)?;
        resp.kvs().first().map(|kv| self.to_kv(kv)).transpose()
    }

    async fn range_once(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
    ) -> Result<RangeResult, StoreError> {
        let full = self.key(prefix);
        let start = match start_after {
            Some(after) if after >= prefix => {
                let mut k = self.key(after).into_bytes();
                k.push(0);
                k
            }
            _ => full.clone().into_bytes(),
        };
        let mut options = GetOptions::new().with_range(prefix_end(full.as_bytes()));
        if limit > 0 {
            options = options.with_limit(limit as i64 + 1);
        }
        let resp = self
            .reader()
            .get(start, Some(options))
            .await
            .map_err(backend)?;
        let revision = revision_of(resp.header());
        let mut kvs = resp
            .kvs()
            .iter()
            .map(|kv| self.to_kv(kv))
            .collect::<Result<Vec<_>, _>>()?;
        let more = limit > 0 && kvs.len() > limit;
        kvs.truncate(if limit > 0 { limit } else { kvs.len() });
        Ok(RangeResult {
            kvs,
            revision,
            more,
        })
    }

    async fn range_at_once(
        &self,
        prefix: &str,
        revision: Revision,
    ) -> Result<RangeResult, StoreError> {
        let current = self.current_revision().await?;
        if revision > current {
            return Err(StoreError::FutureRevision {
                requested: revision,
                current,
            });
        }
        let full = self.key(prefix);
        let options = GetOptions::new()
            .with_range(prefix_end(full.as_bytes()))
            .with_revision(revision as i64);
        let resp = self
            .reader()
            .get(full, Some(options))
            .await
            .map_err(|e| Self::at_revision_error(e, revision))?;
        let kvs = resp
            .kvs()
            .iter()
            .map(|kv| self.to_kv(kv))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(RangeResult {
            kvs,
            revision,
            more: false,
        })
    }

    /// A transaction without ledger entries, sent as it is.
    async fn txn_once(&self, txn: &Txn) -> Result<TxnOutcome, StoreError> {
        let resp = self
            .client()
            .txn(
                EtcdTxn::new()
                    .when(self.compares(txn))
                    .and_then(self.ops(txn)),
            )
            .await
            .map_err(backend)?;
        Ok(TxnOutcome {
            succeeded: resp.succeeded(),
            revision: revision_of(resp.header()),
            ledger_seqs: Vec::new(),
        })
    }

    /// A transaction's compares, on this store's keys.
    fn compares(&self, txn: &Txn) -> Vec<EtcdCompare> {
        txn.compares
            .iter()
            .map(|compare| match compare {
                Compare::ModRevision(key, rev) => {
                    EtcdCompare::mod_revision(self.key(key), CompareOp::Equal, *rev as i64)
                }
                Compare::Version(key, version) => {
                    EtcdCompare::version(self.key(key), CompareOp::Equal, *version as i64)
                }
            })
            .collect()
    }

    /// A transaction's writes, each key once: etcd refuses a key written twice in one txn, so
    /// the last write wins, as applied in order.
    fn ops(&self, txn: &Txn) -> Vec<TxnOp> {
        let mut ops: Vec<(&str, Option<&Bytes>)> = Vec::new();
        for op in &txn.ops {
            let (key, value) = match op {
                Op::Put(k, v) => (k.as_str(), Some(v)),
                Op::Delete(k) => (k.as_str(), None),
            };
            ops.retain(|(k, _)| *k != key);
            ops.push((key, value));
        }
        ops.iter()
            .map(|(k, v)| match v {
                Some(v) => TxnOp::put(self.key(k), v.to_vec(), None),
                None => TxnOp::delete(self.key(k), None),
            })
            .collect()
    }

    async fn watch_once(&self, prefix: &str, after: Revision) -> Result<WatchStream, StoreError> {
        // A start revision etcd has compacted away is refused here, as the embedded store does.
        let current = self.current_revision().await?;
        if after < current {
            let mut client = self.client();
            client
                .get(
                    self.key(prefix),
                    Some(
                        GetOptions::new()
                            .with_revision(after.max(1) as i64)
                            .with_count_only(),
                    ),
                )
                .await
                .map_err(|e| Self::at_revision_error(e, after))?;
        }
        let mut client = self.client();
        let full = self.key(prefix);
        let options = WatchOptions::new()
            .with_range(prefix_end(full.as_bytes()))
            .with_start_revision(after as i64 + 1)
            .with_prev_key();
        let stream = client.watch(full, Some(options)).await.map_err(backend)?;
        let store = self.clone();
        let state = (stream, store, after, false);
        Ok(Box::pin(futures::stream::unfold(
            state,
            |(mut stream, store, after, done)| async move {
                if done {
                    return None;
                }
                loop {
                    match stream.message().await {
                        Ok(Some(resp)) => {
                            if resp.compact_revision() > 0 {
                                let e = StoreError::Compacted {
                                    requested: after,
                                    compacted: resp.compact_revision() as Revision,
                                };
                                return Some((Err(e), (stream, store, after, true)));
                            }
                            if resp.canceled() {
                                let e = StoreError::Backend(format!(
                                    "etcd canceled the watch: {}",
                                    resp.cancel_reason()
                                ));
                                return Some((Err(e), (stream, store, after, true)));
                            }
                            let mut batch = Vec::with_capacity(resp.events().len());
                            for e in resp.events() {
                                match store.to_event(e) {
                                    Ok(Some(ev)) => batch.push(ev),
                                    Ok(None) => {}
                                    Err(err) => {
                                        return Some((Err(err), (stream, store, after, true)));
                                    }
                                }
                            }
                            if !batch.is_empty() {
                                return Some((Ok(batch.into()), (stream, store, after, false)));
                            }
                        }
                        // The member went away or dropped the stream: the watcher relists and
                        // watches again, through another member. Not `Closed`: that means this
                        // store is shutting down, and watchers stop for good.
                        Ok(None) => {
                            let e = StoreError::Backend("etcd ended the watch stream".into());
                            return Some((Err(e), (stream, store, after, true)));
                        }
                        Err(e) => return Some((Err(backend(e)), (stream, store, after, true))),
                    }
                }
            },
        )))
    }

    async fn current_revision_once(&self) -> Result<Revision, StoreError> {
        let mut client = self.client();
        let resp = client
            .get(
                self.head.as_bytes(),
                Some(GetOptions::new().with_count_only()),
            )
            .await
            .map_err(backend)?;
        Ok(revision_of(resp.header()))
    }

    async fn compact_once(&self, revision: Revision) -> Result<(), StoreError> {
        let current = self.current_revision().await?;
        let mut client = self.client();
        match client.compact(revision.min(current) as i64, None).await {
            Ok(_) => Ok(()),
            // Already compacted that far: nothing to do.
            Err(e) if e.to_string().contains("compacted") => Ok(()),
            Err(e) => Err(backend(e)),
        }
    }

    async fn ledger_range_once(
        &self,
        from: u64,
        limit: usize,
    ) -> Result<Vec<LedgerEntry>, StoreError> {
        let from = from.max(1);
        let mut client = self.client();
        // The key holding `from`: the last one that sorts before every later entry's key.
        let holding = client
            .get(
                self.ledger.as_bytes(),
                Some(
                    GetOptions::new()
                        .with_range(self.ledger_block_key(blocks::range_end_for(from)))
                        .with_sort(SortTarget::Key, SortOrder::Descend)
                        .with_limit(1)
                        .with_keys_only(),
                ),
            )
            .await
            .map_err(backend)?;
        let start = match holding.kvs().first() {
            Some(kv) => kv.key().to_vec(),
            None => self.ledger.as_bytes().to_vec(),
        };
        let mut options = GetOptions::new().with_range(prefix_end(self.ledger.as_bytes()));
        if limit > 0 {
            // Every key holds one entry or more; the first may hold some before `from`.
            options = options.with_limit(limit.saturating_add(1) as i64);
        }
        let resp = self
            .reader()
            .get(start, Some(options))
            .await
            .map_err(backend)?;
        let mut out = Vec::new();
        for kv in resp.kvs() {
            let key = String::from_utf8_lossy(kv.key()).into_owned();
            let entries = key
                .strip_prefix(&self.ledger)
                .ok_or_else(|| "not a ledger key".to_string())
                .and_then(|suffix| blocks::decode(suffix, kv.value()))
                .map_err(|reason| StoreError::Corrupt {
                    key: key.clone(),
                    reason,
                })?;
            out.extend(entries.into_iter().filter(|e| e.seq >= from));
            if limit > 0 && out.len() >= limit {
                out.truncate(limit);
                break;
            }
        }
        Ok(out)
    }

    async fn ledger_head_once(&self) -> Result<LedgerHead, StoreError> {
        Ok(self.read_head().await?.0)
    }
}

/// Whether a request never reached a member (its connection did not open): sending it again
/// cannot apply it twice, and the client's balancer tries another member.
fn unreached(e: &StoreError) -> bool {
    matches!(e, StoreError::Backend(m) if m.contains("tcp connect error") || m.contains("Connection refused"))
}

#[async_trait::async_trait]
impl Store for EtcdStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        self.again(true, || self.get_once(key)).await
    }

    async fn range(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
    ) -> Result<RangeResult, StoreError> {
        self.again(true, || self.range_once(prefix, start_after, limit))
            .await
    }

    async fn range_at(&self, prefix: &str, revision: Revision) -> Result<RangeResult, StoreError> {
        self.again(true, || self.range_at_once(prefix, revision))
            .await
    }

    async fn txn(&self, txn: Txn) -> Result<TxnOutcome, StoreError> {
        check_sizes(&txn)?;
        let cost = TxnCost::of(&txn);
        if let Some(refused) = self.limits.refuse(cost) {
            return Err(refused);
        }
        if txn.ledger.is_empty() {
            return self.again(false, || self.txn_once(&txn)).await;
        }
        let queue = self.ledger_queue.as_ref().ok_or(StoreError::Closed)?;
        let (reply, answer) = oneshot::channel();
        queue
            .send(group::Pending { txn, cost, reply })
            .await
            .map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }

    async fn watch(&self, prefix: &str, after: Revision) -> Result<WatchStream, StoreError> {
        self.again(true, || self.watch_once(prefix, after)).await
    }

    async fn current_revision(&self) -> Result<Revision, StoreError> {
        self.again(true, || self.current_revision_once()).await
    }

    async fn compact(&self, revision: Revision) -> Result<(), StoreError> {
        self.again(false, || self.compact_once(revision)).await
    }

    async fn ledger_range(&self, from: u64, limit: usize) -> Result<Vec<LedgerEntry>, StoreError> {
        self.again(true, || self.ledger_range_once(from, limit))
            .await
    }

    async fn ledger_head(&self) -> Result<LedgerHead, StoreError> {
        self.again(true, || self.ledger_head_once()).await
    }

    fn txn_limits(&self) -> TxnLimits {
        self.limits.for_writers()
    }
}

impl EtcdStore {
    /// One etcd event as the store contract has it; `None` for keys outside the data space.
    fn to_event(&self, e: &etcd_client::Event) -> Result<Option<Event>, StoreError> {
        let Some(kv) = e.kv() else {
            return Ok(None);
        };
        if !kv.key().starts_with(self.data.as_bytes()) {
            return Ok(None);
        }
        let prev = e.prev_kv().map(|p| self.to_kv(p)).transpose()?;
        Ok(Some(match e.event_type() {
            EventType::Put => Event {
                kind: EventKind::Put,
                kv: self.to_kv(kv)?,
                prev,
                decoded: None,
            },
            EventType::Delete => {
                let deleted = self.to_kv(kv)?;
                // The deleted value, stamped with the revision of the delete.
                let mut gone = prev.clone().unwrap_or(deleted.clone());
                gone.mod_revision = deleted.mod_revision;
                Event {
                    kind: EventKind::Delete,
                    kv: gone,
                    prev,
                    decoded: None,
                }
            }
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_urls_parse_or_say_what_is_expected() {
        let o = EtcdOptions::parse_url("etcd://127.0.0.1:2379,127.0.0.1:22379").unwrap();
        assert_eq!(o.endpoints, ["127.0.0.1:2379", "127.0.0.1:22379"]);
        assert_eq!(o.root, "/infraos");
        let o = EtcdOptions::parse_url("etcd://e1:2379/prod/").unwrap();
        assert_eq!((o.endpoints.len(), o.root.as_str()), (1, "/prod"));
        for bad in ["http://x:1", "etcd://", "etcd:///root"] {
            let e = EtcdOptions::parse_url(bad).unwrap_err().to_string();
            assert!(e.contains("etcd://"), "{bad}: {e}");
        }
    }

    #[test]
    fn prefix_ends_bound_exactly_the_prefix() {
        assert_eq!(prefix_end(b"/a/"), b"/a0".to_vec());
        assert_eq!(prefix_end(&[b'a', 0xff]), b"b".to_vec());
    }
}
