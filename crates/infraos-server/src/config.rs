//! Server configuration: command-line flags over an optional `server.yaml` in the data dir.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use infraos_api::Duration;
use infraos_api::signature::Algorithm;
use infraos_scheduler::Profile;
use serde::{Deserialize, Serialize};

use crate::ServerError;

pub use infraos_control::datadir::CONFIG_FILE;
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7443";

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct ServerConfig {
    #[serde(skip)]
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    /// How long after a lease's expireTime the control plane waits before freeing it, to
    /// absorb clock skew between servers and agents (DESIGN §2).
    pub lease_skew_margin: Duration,
    /// Most claims the scheduler places per batch.
    pub scheduler_batch: usize,
    pub scheduler: Profile,
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// How long events are kept.
    pub event_ttl: Duration,
    /// How often agents heartbeat.
    pub heartbeat_interval: Duration,
    /// How long without a heartbeat before a node is NotReady.
    pub node_grace_period: Duration,
    /// Lifetime of agents' client certificates (they rotate at two thirds of it).
    pub agent_cert_ttl: Duration,
    /// The most capacity any node's agent may publish, per class and dimension (`count` for
    /// items), unless its Node's `spec.capacityLimits` says otherwise; beyond it (or beyond
    /// the node's own inventory) a report is cut. A class named nowhere is not published.
    pub node_capacity_limits: infraos_api::kinds::ClassAmounts,
    /// How often a watch with `allowWatchBookmarks` is sent a BOOKMARK (when the revision
    /// moved on without a line for it). About a minute, as the Kubernetes API server: often
    /// enough that a resumed watch starts recent, rarely enough that thousands cost nothing.
    pub watch_bookmark_interval: Duration,
    /// Changes the embedded store keeps in memory: how far back watches may resume and
    /// `infraos explain` may replay (older requests get 410 Gone).
    pub watch_history: usize,
    /// Where objects live: empty for the embedded store in the data dir, or
    /// `etcd://host:port[,host:port…][/root]` (a server built with the `etcd` feature).
    pub store: String,
    /// TLS to etcd: the CA that signed its members' certificates, and a client certificate
    /// and key for `--client-cert-auth` (paths; relative ones are under the data dir).
    pub etcd_ca_file: Option<PathBuf>,
    pub etcd_cert_file: Option<PathBuf>,
    pub etcd_key_file: Option<PathBuf>,
    /// On etcd, replicas elect one leader to run the controllers: a leader that has not
    /// renewed for this long is replaced.
    pub leader_lease_duration: Duration,
    /// How often the leader renews (and followers check) the lease.
    pub leader_renew_interval: Duration,
    /// How often the server checks whether `server.crt`/`server.key` changed (SIGHUP checks
    /// at once); new connections get the new certificate, without a restart.
    pub tls_reload_interval: Duration,
    /// A trusted OIDC issuer whose JWTs sign users in (besides API tokens).
    pub oidc: Option<crate::oidc::OidcConfig>,
    /// The API gateway's limits per identity.
    pub api_limits: crate::limits::ApiLimits,
    /// Caps on open connections (in all, per source address) and their timeouts.
    pub connection_limits: crate::connections::ConnectionLimits,
    /// The process's open-files limit, when the caller knows it (the CLI raises it and says
    /// so): the connection cap stays below it.
    #[serde(skip)]
    pub open_files_limit: Option<u64>,
    /// The algorithm of the server's signing key: `ed25519` or `slh-dsa-sha2-128s` (FIPS 205,
    /// hash-based, quantum-resistant; a signature costs ~135 ms of CPU instead of ~13 µs).
    /// Used when the key is created (`server init`); a different key on disk stops the server.
    #[serde(deserialize_with = "crate::signing::algorithm_field")]
    pub signature_algorithm: Algorithm,
    /// The leader signs a checkpoint into the audit chain once this many records were
    /// appended since the last one…
    pub audit_checkpoint_records: u64,
    /// …or once this long has passed since the last one, if any record was appended since.
    pub audit_checkpoint_interval: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            data_dir: PathBuf::new(),
            listen: DEFAULT_LISTEN
                .parse()
                .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 7443))),
            lease_skew_margin: Duration::from_secs(5),
            scheduler_batch: 1024,
            scheduler: Profile::default(),
            max_body_bytes: 3 * 1024 * 1024,
            event_ttl: Duration::from_secs(3600),
            heartbeat_interval: Duration::from_secs(10),
            node_grace_period: Duration::from_secs(40),
            agent_cert_ttl: Duration::from_secs(24 * 3600),
            node_capacity_limits: crate::capacity::default_limits(),
            watch_bookmark_interval: Duration::from_secs(60),
            watch_history: 100_000,
            store: String::new(),
            etcd_ca_file: None,
            etcd_cert_file: None,
            etcd_key_file: None,
            leader_lease_duration: Duration::from_secs(3),
            leader_renew_interval: Duration::from_millis(500),
            tls_reload_interval: Duration::from_secs(30),
            oidc: None,
            api_limits: crate::limits::ApiLimits::default(),
            connection_limits: crate::connections::ConnectionLimits::default(),
            open_files_limit: None,
            signature_algorithm: Algorithm::Ed25519,
            audit_checkpoint_records: 1000,
            audit_checkpoint_interval: Duration::from_secs(60),
        }
    }
}

impl ServerConfig {
    /// Reads `server.yaml` from the data dir if there is one, else the defaults.
    pub fn load(data_dir: &Path) -> Result<Self, ServerError> {
        let path = data_dir.join(CONFIG_FILE);
        let mut config = if path.exists() {
            let text = std::fs::read_to_string(&path).map_err(|e| ServerError::io(&path, e))?;
            serde_norway::from_str::<ServerConfig>(&text).map_err(|e| ServerError::Config {
                path: path.display().to_string(),
                reason: e.to_string(),
            })?
        } else {
            ServerConfig::default()
        };
        config.data_dir = data_dir.to_path_buf();
        config.validate().map_err(|reason| ServerError::Config {
            path: path.display().to_string(),
            reason,
        })?;
        Ok(config)
    }

    /// Settings that parse but cannot work together, named by field.
    pub fn validate(&self) -> Result<(), String> {
        let ms = |d: &Duration| d.as_millis();
        if ms(&self.heartbeat_interval) < 100 {
            return Err("heartbeatInterval: must be at least 100ms".into());
        }
        if ms(&self.node_grace_period) <= ms(&self.heartbeat_interval) {
            return Err(format!(
                "nodeGracePeriod: {} must be longer than heartbeatInterval {} (a few beats)",
                self.node_grace_period, self.heartbeat_interval
            ));
        }
        for (class, dims) in &self.node_capacity_limits {
            for (dim, limit) in dims {
                if limit.is_negative() {
                    return Err(format!(
                        "nodeCapacityLimits.{class}.{dim}: must not be negative"
                    ));
                }
            }
        }
        if ms(&self.watch_bookmark_interval) < 100 {
            return Err("watchBookmarkInterval: must be at least 100ms".into());
        }
        if !self.store.is_empty() && !self.store.starts_with("etcd://") {
            return Err(format!(
                "store: {:?} is not a store URL (leave it empty for the embedded store, or \
                 etcd://host:port[,host:port…][/root])",
                self.store
            ));
        }
        if self.etcd_cert_file.is_some() != self.etcd_key_file.is_some() {
            return Err("etcdCertFile and etcdKeyFile go together".into());
        }
        if ms(&self.leader_renew_interval) < 50
            || ms(&self.leader_lease_duration) < 2 * ms(&self.leader_renew_interval)
        {
            return Err(format!(
                "leaderLeaseDuration {} must be at least twice leaderRenewInterval {} (≥ 50ms)",
                self.leader_lease_duration, self.leader_renew_interval
            ));
        }
        if self.watch_history < 100 {
            return Err("watchHistory: must be at least 100 changes".into());
        }
        if ms(&self.agent_cert_ttl) < 10_000 {
            return Err("agentCertTtl: must be at least 10s".into());
        }
        if ms(&self.tls_reload_interval) < 100 {
            return Err("tlsReloadInterval: must be at least 100ms".into());
        }
        self.api_limits.validate()?;
        self.connection_limits.validate()?;
        if let Some(oidc) = &self.oidc {
            oidc.validate()?;
        }
        if self.audit_checkpoint_records == 0 {
            return Err("auditCheckpointRecords: must be at least 1".into());
        }
        if ms(&self.audit_checkpoint_interval) < 100 {
            return Err("auditCheckpointInterval: must be at least 100ms".into());
        }
        // A profile naming an unknown plugin or a bad weight stops the server here, not later
        // in the scheduler.
        infraos_scheduler::Scheduler::new(self.scheduler.clone()).map_err(|e| e.to_string())?;
        Ok(())
    }

    pub fn store_path(&self) -> PathBuf {
        infraos_control::datadir::store_path(&self.data_dir)
    }

    /// The part of the configuration the controllers read.
    pub fn control(&self) -> infraos_control::ControlConfig {
        infraos_control::ControlConfig {
            lease_skew_margin: self.lease_skew_margin,
            scheduler_batch: self.scheduler_batch,
            scheduler: self.scheduler.clone(),
            event_ttl: self.event_ttl,
            heartbeat_interval: self.heartbeat_interval,
            node_grace_period: self.node_grace_period,
            audit_checkpoint_records: self.audit_checkpoint_records,
            audit_checkpoint_interval: self.audit_checkpoint_interval,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Moved here from `signing.rs` (now in infraos-control): it loads a ServerConfig.
    #[test]
    fn an_unknown_algorithm_in_server_yaml_names_the_field() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(CONFIG_FILE), "signatureAlgorithm: rsa\n").unwrap();
        let err = ServerConfig::load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("signatureAlgorithm"), "{err}");
        assert!(
            err.contains("unknown signature algorithm \"rsa\" (known: ed25519, slh-dsa-sha2-128s)"),
            "{err}"
        );
        std::fs::write(
            dir.path().join(CONFIG_FILE),
            "signatureAlgorithm: slh-dsa-sha2-128s\nauditCheckpointRecords: 0\n",
        )
        .unwrap();
        let err = ServerConfig::load(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("auditCheckpointRecords: must be at least 1"),
            "{err}"
        );
    }
}
