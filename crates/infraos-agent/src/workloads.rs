//! The agent's local state: one record per allocation it runs, in
//! `D/workloads/<allocation uid>/record.json`, written before and after every step, so a
//! restarted agent knows what it was running and a workload is never started twice.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use infraos_api::Time;
use infraos_api::kinds::{RenewPolicy, WorkloadSpec, WorkloadState, WorkloadStatus};
use serde::{Deserialize, Serialize};

use crate::{AgentError, write_atomic};
use infraos_exec::TaskHandle;

pub const RECORD: &str = "record.json";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadRecord {
    pub uid: String,
    pub namespace: String,
    pub name: String,
    pub epoch: u64,
    pub spec: WorkloadSpec,
    pub renew_policy: RenewPolicy,
    /// The lease end as last seen: past it, the workload is stopped even with no server.
    pub expire_time: Time,
    #[serde(default)]
    pub lease_ms: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handle: Option<TaskHandle>,
    pub status: WorkloadStatus,
    /// Whether the server has acknowledged `status`.
    #[serde(default)]
    pub reported: bool,
    /// Why the agent stopped it, once it decided to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopping: Option<String>,
    /// No restart before this time (backoff).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_start_ms: Option<i64>,
}

impl WorkloadRecord {
    pub fn dir(root: &Path, uid: &str) -> PathBuf {
        root.join(uid)
    }

    pub fn save(&self, root: &Path) -> Result<(), AgentError> {
        let dir = Self::dir(root, &self.uid);
        std::fs::create_dir_all(&dir).map_err(|e| AgentError::io(&dir, e))?;
        let bytes =
            serde_json::to_vec_pretty(self).map_err(|e| AgentError::Config(e.to_string()))?;
        write_atomic(&dir.join(RECORD), &bytes, 0o600)
    }

    pub fn set_state(&mut self, state: WorkloadState) {
        if self.status.state != state {
            self.status.state = state;
            self.reported = false;
        }
    }
}

/// Every record under `root`; unreadable ones are logged and skipped.
pub fn load_all(root: &Path) -> BTreeMap<String, WorkloadRecord> {
    let mut out = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir(root) else {
        return out;
    };
    for entry in entries.flatten() {
        let path = entry.path().join(RECORD);
        match std::fs::read(&path).map(|b| serde_json::from_slice::<WorkloadRecord>(&b)) {
            Ok(Ok(record)) => {
                out.insert(record.uid.clone(), record);
            }
            Ok(Err(e)) => {
                tracing::warn!(path = %path.display(), error = %e, "unreadable workload record")
            }
            Err(_) => {}
        }
    }
    out
}

pub fn remove(root: &Path, uid: &str) {
    let dir = WorkloadRecord::dir(root, uid);
    if let Err(e) = std::fs::remove_dir_all(&dir) {
        tracing::debug!(dir = %dir.display(), error = %e, "removing a workload dir");
    }
}
