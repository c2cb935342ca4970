//! Workloads: what an agent runs for a claim (`spec.workload`), and what it reports back
//! (`status.workload` on the Allocation).
//!
//! ```text
//!  Pending ─► Starting ─► Running ─► Exited(code) ──restart policy──► Starting …
//!                │            └────► Failed(reason)
//!                └──────────────────► Failed(reason)      any ──stop──► Stopped
//! ```

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::duration::Duration;
use crate::quantity::Quantity;
use crate::time::Time;
use crate::validation::Errors;

mod config;
mod legacy;
mod resource_limits;

pub use config::{ConfigPlacement, DriverConfig, KNOWN_DRIVERS, PROCESS_DRIVER, ProcessConfig};
pub use resource_limits::{DEFAULT_PIDS, ResourceLimits};

pub const MAX_ARGS: usize = 256;
pub const MAX_ENV: usize = 256;
pub const DEFAULT_STOP_GRACE: Duration = Duration::from_secs(10);
pub const DEFAULT_BACKOFF: Duration = Duration::from_secs(1);
pub const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// The driver a workload names when it names none (the only one before drivers had names).
pub const DEFAULT_DRIVER: &str = PROCESS_DRIVER;

/// The capability tier a node needs to run a driver at all: every driver runs code on the
/// node, so `execute`; what a workload asks for beyond that adds its own tiers.
pub fn driver_tier(_driver: &str) -> Tier {
    Tier::Execute
}

/// Capability tiers granted to a node (DESIGN §5): the server never dispatches beyond them and
/// the agent refuses locally too.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    Inventory,
    Execute,
    Network,
    Storage,
    /// Workloads that leave the contained defaults: root, or capabilities beyond the
    /// network ones.
    Privileged,
}

impl Tier {
    pub const ALL: [Tier; 5] = [
        Tier::Inventory,
        Tier::Execute,
        Tier::Network,
        Tier::Storage,
        Tier::Privileged,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Inventory => "inventory",
            Tier::Execute => "execute",
            Tier::Network => "network",
            Tier::Storage => "storage",
            Tier::Privileged => "privileged",
        }
    }

    pub fn bit(self) -> u8 {
        1 << (self as u8)
    }

    pub fn parse(s: &str) -> Option<Tier> {
        Tier::ALL.into_iter().find(|t| t.as_str() == s)
    }
}

/// What to run for a claim: a driver by name, that driver's own `config` (checked against its
/// schema, see [`DriverConfig`]), and what every driver honours: environment, user, network,
/// privileges, limits, restarts and the stop grace.
///
/// The stored shape is `{driver, config: {command, args, workingDir}, …}`; the shape from
/// before drivers had configs (`{driver: process, command, args, workingDir, …}`) is still
/// read and turned into it (`workload/legacy.rs`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", try_from = "legacy::WorkloadWire")]
pub struct WorkloadSpec {
    /// The driver that runs it (`process`); nodes publish the drivers they have.
    pub driver: String,
    /// The driver's own settings; for `process`: `command`, `args`, `workingDir`.
    #[serde(default, skip_serializing_if = "DriverConfig::is_empty")]
    pub config: DriverConfig,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Run as this user (a name, or `uid[:gid]`). Unset: an unprivileged uid of the agent's
    /// own, one per allocation. `root` (or uid 0) is a privileged request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default)]
    pub restart: RestartSpec,
    /// Limits tighter than the allocation; by default the allocation's cpu and memory.
    #[serde(default, skip_serializing_if = "WorkloadLimits::is_empty")]
    pub limits: WorkloadLimits,
    /// Kept for compatibility: every workload now gets a private network namespace (only
    /// loopback) unless it asks for `hostNetwork`.
    #[serde(default)]
    pub isolate_network: bool,
    /// The host's network namespace instead of a private one: a privileged request (tier
    /// `network`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub host_network: bool,
    /// Linux capabilities to keep (`NET_ADMIN`, `CAP_SYS_TIME`…): a privileged request. A
    /// contained workload has none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub capabilities: Vec<String>,
    /// Host paths the workload may write (absolute): a privileged request (tier `storage`).
    /// Everything else of the host is read-only to it, and the agent's state is hidden.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub writable_paths: Vec<String>,
    /// Between SIGTERM and SIGKILL when the workload is stopped.
    #[serde(default = "default_stop_grace")]
    pub stop_grace: Duration,
    /// Capability tiers the workload needs beyond its driver's (`execute`): `network` to
    /// administer the host's network, `storage` its disks. A node must hold every one; such a
    /// workload is high-risk and waits for approval.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tiers: Vec<Tier>,
    /// Where the driver's settings were written, so errors name them where the user did.
    #[serde(skip)]
    #[schemars(skip)]
    pub written: ConfigPlacement,
}

/// Tiers whose use makes a workload high-risk.
pub const HIGH_RISK_TIERS: [Tier; 3] = [Tier::Network, Tier::Storage, Tier::Privileged];

/// Most capabilities and writable paths one workload may name.
pub const MAX_PRIVILEGES: usize = 16;

/// Linux capability names a workload may ask for (`linux/capability.h`, without `CAP_`).
pub const CAPABILITY_NAMES: [&str; 41] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

/// Capabilities that only touch the network: they need the `network` tier, not `privileged`.
const NETWORK_CAPABILITIES: [&str; 4] =
    ["NET_ADMIN", "NET_RAW", "NET_BIND_SERVICE", "NET_BROADCAST"];

/// A capability name as the API stores it: upper case, without `CAP_`; `None` if unknown.
pub fn capability_name(name: &str) -> Option<&'static str> {
    let upper = name.to_ascii_uppercase();
    let bare = upper.strip_prefix("CAP_").unwrap_or(&upper);
    CAPABILITY_NAMES.iter().copied().find(|n| *n == bare)
}

impl WorkloadSpec {
    /// Every tier a node must hold to run the workload: its driver's, those it asks for, and
    /// those its privileged requests imply (root or other capabilities: `privileged`; the host
    /// network or network capabilities: `network`; writable host paths: `storage`).
    pub fn required_tiers(&self) -> Vec<Tier> {
        let mut tiers = vec![driver_tier(&self.driver)];
        let mut add = |t: Tier| {
            if !tiers.contains(&t) {
                tiers.push(t);
            }
        };
        for t in &self.tiers {
            add(*t);
        }
        if self.runs_as_root() {
            add(Tier::Privileged);
        }
        if self.host_network {
            add(Tier::Network);
        }
        for cap in &self.capabilities {
            let name = capability_name(cap).unwrap_or("");
            add(if NETWORK_CAPABILITIES.contains(&name) {
                Tier::Network
            } else {
                Tier::Privileged
            });
        }
        if !self.writable_paths.is_empty() {
            add(Tier::Storage);
        }
        tiers.sort();
        tiers
    }

    /// Whether it asks to run as root (`root`, uid 0, or gid 0).
    pub fn runs_as_root(&self) -> bool {
        match self.user.as_deref().and_then(parse_user) {
            Some(UserSpec::Name(name)) => name == "root",
            Some(UserSpec::Id { uid, gid }) => uid == 0 || gid == Some(0),
            None => false,
        }
    }

    /// Whether it leaves the contained defaults: root, the host network, capabilities or
    /// writable host paths. Such a workload needs the tiers above, granted to the node by an
    /// admin, and an approval; the agent refuses it without either.
    pub fn is_privileged(&self) -> bool {
        self.runs_as_root()
            || self.host_network
            || !self.capabilities.is_empty()
            || !self.writable_paths.is_empty()
    }

    /// What it asks for beyond the contained defaults, in words (for approvals and refusals).
    pub fn privileges(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.runs_as_root() {
            out.push("runs as root".to_string());
        }
        if self.host_network {
            out.push("uses the host's network".to_string());
        }
        if !self.capabilities.is_empty() {
            out.push(format!(
                "keeps capabilities {}",
                self.capabilities.join(",")
            ));
        }
        if !self.writable_paths.is_empty() {
            out.push(format!(
                "writes host paths {}",
                self.writable_paths.join(",")
            ));
        }
        out
    }

    /// The high-risk tiers the workload needs.
    pub fn high_risk_tiers(&self) -> Vec<Tier> {
        self.required_tiers()
            .into_iter()
            .filter(|t| HIGH_RISK_TIERS.contains(t))
            .collect()
    }
}

fn default_stop_grace() -> Duration {
    DEFAULT_STOP_GRACE
}

impl Default for WorkloadSpec {
    /// A `process` workload with nothing set (tests build on it).
    fn default() -> Self {
        WorkloadSpec {
            driver: DEFAULT_DRIVER.to_string(),
            config: DriverConfig::default(),
            env: BTreeMap::new(),
            user: None,
            restart: RestartSpec::default(),
            limits: WorkloadLimits::default(),
            isolate_network: false,
            host_network: false,
            capabilities: Vec::new(),
            writable_paths: Vec::new(),
            stop_grace: Duration::default(),
            tiers: Vec::new(),
            written: ConfigPlacement::default(),
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum RestartPolicy {
    #[default]
    Never,
    OnFailure,
    Always,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RestartSpec {
    #[serde(default)]
    pub policy: RestartPolicy,
    /// The first delay before a restart; doubles on each consecutive failure.
    #[serde(default = "default_backoff")]
    pub backoff: Duration,
    #[serde(default = "default_max_backoff")]
    pub max_backoff: Duration,
}

fn default_backoff() -> Duration {
    DEFAULT_BACKOFF
}

fn default_max_backoff() -> Duration {
    MAX_BACKOFF
}

impl Default for RestartSpec {
    fn default() -> Self {
        RestartSpec {
            policy: RestartPolicy::Never,
            backoff: DEFAULT_BACKOFF,
            max_backoff: MAX_BACKOFF,
        }
    }
}

impl RestartSpec {
    /// Whether a run that ended with `exit_code` (None: killed by a signal) is restarted.
    pub fn restarts_after(&self, exit_code: Option<i32>) -> bool {
        match self.policy {
            RestartPolicy::Never => false,
            RestartPolicy::OnFailure => exit_code != Some(0),
            RestartPolicy::Always => true,
        }
    }

    /// The delay before restart number `restarts` (0-based): backoff · 2^n, capped.
    pub fn delay(&self, restarts: u32) -> std::time::Duration {
        let base = self.backoff.as_std();
        let cap = self.max_backoff.as_std();
        base.checked_mul(1u32 << restarts.min(20))
            .map_or(cap, |d| d.min(cap))
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkloadLimits {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<Quantity>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<Quantity>,
    /// Maximum number of processes and threads (default 4096).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids: Option<u32>,
}

impl WorkloadLimits {
    pub fn is_empty(&self) -> bool {
        self.cpu.is_none() && self.memory.is_none() && self.pids.is_none()
    }
}

impl WorkloadSpec {
    /// Checks what needs no other object; `allocated` is the claim's total per counted
    /// dimension (`cpu`, `memory`), which the limits must not exceed.
    pub fn validate(&self, at: &str, allocated: &BTreeMap<String, Quantity>, errors: &mut Errors) {
        self.validate_config(at, errors);
        for (i, t) in self.tiers.iter().enumerate() {
            if *t == Tier::Inventory {
                errors.add(
                    format!("{at}.tiers[{i}]"),
                    "inventory is not a tier a workload uses (execute, network, storage)",
                );
            }
        }
        if self.env.len() > MAX_ENV {
            errors.add(format!("{at}.env"), format!("at most {MAX_ENV} variables"));
        }
        for (key, value) in &self.env {
            let valid = !key.is_empty()
                && !key.starts_with(|c: char| c.is_ascii_digit())
                && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid {
                errors.add(
                    format!("{at}.env.{key}"),
                    "names are letters, digits and _, not starting with a digit",
                );
            }
            if value.contains('\0') {
                errors.add(format!("{at}.env.{key}"), "must not contain NUL bytes");
            }
        }
        if self.host_network && self.isolate_network {
            errors.add(
                format!("{at}.hostNetwork"),
                "cannot be set together with isolateNetwork",
            );
        }
        if self.capabilities.len() > MAX_PRIVILEGES {
            errors.add(
                format!("{at}.capabilities"),
                format!("at most {MAX_PRIVILEGES} capabilities"),
            );
        }
        for (i, cap) in self.capabilities.iter().enumerate() {
            if capability_name(cap).is_none() {
                errors.add(
                    format!("{at}.capabilities[{i}]"),
                    format!(
                        "unknown capability {:?} (e.g. NET_ADMIN, SYS_TIME)",
                        crate::text::bounded(cap, crate::text::ERROR_STRING_MAX)
                    ),
                );
            }
        }
        if self.writable_paths.len() > MAX_PRIVILEGES {
            errors.add(
                format!("{at}.writablePaths"),
                format!("at most {MAX_PRIVILEGES} paths"),
            );
        }
        for (i, path) in self.writable_paths.iter().enumerate() {
            let plain = path.starts_with('/')
                && path.len() <= 4096
                && path != "/"
                && !path.contains('\0')
                && path
                    .split('/')
                    .skip(1)
                    .all(|part| !part.is_empty() && part != "." && part != "..");
            if !plain {
                errors.add(
                    format!("{at}.writablePaths[{i}]"),
                    "must be an absolute path other than /, without . or .. or empty parts",
                );
            }
        }
        if let Some(user) = &self.user
            && parse_user(user).is_none()
        {
            errors.add(
                format!("{at}.user"),
                format!("{user:?} is not a user name or uid[:gid]"),
            );
        }
        if self.restart.backoff.as_millis() == 0 || self.restart.backoff > self.restart.max_backoff
        {
            errors.add(
                format!("{at}.restart.backoff"),
                "must be greater than zero and at most maxBackoff",
            );
        }
        for (dim, limit) in [("cpu", &self.limits.cpu), ("memory", &self.limits.memory)] {
            let Some(limit) = limit else { continue };
            let field = format!("{at}.limits.{dim}");
            if limit.is_negative() || limit.is_zero() {
                errors.add(field, "must be greater than zero");
                continue;
            }
            match allocated.get(dim) {
                None => errors.add(
                    field,
                    format!("the claim requests no {dim}, so there is nothing to limit"),
                ),
                Some(total) if limit > total => errors.add(
                    field,
                    format!("{limit} is above the {total} the claim requests"),
                ),
                Some(_) => {}
            }
        }
        if self.limits.pids == Some(0) {
            errors.add(format!("{at}.limits.pids"), "must be greater than zero");
        }
    }
}

/// A user given as a name or `uid[:gid]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UserSpec {
    Name(String),
    Id { uid: u32, gid: Option<u32> },
}

pub fn parse_user(s: &str) -> Option<UserSpec> {
    if s.is_empty() || s.len() > 64 {
        return None;
    }
    if s.starts_with(|c: char| c.is_ascii_digit()) {
        let (uid, gid) = match s.split_once(':') {
            Some((u, g)) => (u, Some(g)),
            None => (s, None),
        };
        let uid = uid.parse().ok()?;
        let gid = match gid {
            Some(g) => Some(g.parse().ok()?),
            None => None,
        };
        return Some(UserSpec::Id { uid, gid });
    }
    let valid = s
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    valid.then(|| UserSpec::Name(s.to_string()))
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum WorkloadState {
    /// Allocated; the agent has not started it yet.
    #[default]
    Pending,
    Starting,
    Running,
    /// The process ended by itself with `exitCode`; it may be restarted by policy.
    Exited,
    /// It could not be started or was killed by something other than a stop.
    Failed,
    /// Stopped on purpose: released, expired, preempted or deleted.
    Stopped,
}

impl WorkloadState {
    pub fn as_str(self) -> &'static str {
        match self {
            WorkloadState::Pending => "Pending",
            WorkloadState::Starting => "Starting",
            WorkloadState::Running => "Running",
            WorkloadState::Exited => "Exited",
            WorkloadState::Failed => "Failed",
            WorkloadState::Stopped => "Stopped",
        }
    }

    /// Nothing more will happen to it on its own.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            WorkloadState::Exited | WorkloadState::Failed | WorkloadState::Stopped
        )
    }
}

/// What the agent reports, stamped with the fencing epoch it acted under.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkloadStatus {
    pub state: WorkloadState,
    pub fencing_epoch: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    #[serde(default)]
    pub restarts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Time>,
    /// The uid it runs as on the node (its own unprivileged one unless it named a user).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(yaml: &str) -> WorkloadSpec {
        serde_norway::from_str(yaml).unwrap()
    }

    fn amounts(cpu: &str, mem: &str) -> BTreeMap<String, Quantity> {
        BTreeMap::from([
            ("cpu".to_string(), cpu.parse().unwrap()),
            ("memory".to_string(), mem.parse().unwrap()),
        ])
    }

    #[test]
    fn limits_above_the_allocation_name_the_field() {
        let w = spec("command: /bin/true\nlimits: {cpu: '4', memory: 1Gi}");
        let mut errors = Errors::default();
        w.validate("spec.workload", &amounts("2", "2Gi"), &mut errors);
        let text = errors.into_result().unwrap_err().to_string();
        assert!(text.contains("spec.workload.limits.cpu"), "{text}");
        assert!(!text.contains("limits.memory"), "{text}");
    }

    #[test]
    fn bad_fields_are_named() {
        let w = spec("command: ''\nworkingDir: tmp\nuser: 'a b'\nenv: {1X: y}");
        let mut errors = Errors::default();
        w.validate("spec.workload", &BTreeMap::new(), &mut errors);
        let text = errors.into_result().unwrap_err().to_string();
        for field in ["command", "workingDir", "user", "env.1X"] {
            assert!(text.contains(&format!("spec.workload.{field}")), "{text}");
        }
    }

    #[test]
    fn privileged_requests_imply_their_tiers() {
        let plain = spec("command: /bin/true\nuser: nobody");
        assert!(!plain.is_privileged());
        assert_eq!(plain.required_tiers(), vec![Tier::Execute]);
        let root = spec("command: /bin/true\nuser: '0'");
        assert!(root.is_privileged() && root.runs_as_root());
        assert_eq!(root.required_tiers(), vec![Tier::Execute, Tier::Privileged]);
        let gid0 = spec("command: /bin/true\nuser: '1000:0'");
        assert!(gid0.runs_as_root(), "group root is root enough");
        let net = spec("command: /bin/true\nhostNetwork: true\ncapabilities: [cap_net_admin]");
        assert_eq!(net.required_tiers(), vec![Tier::Execute, Tier::Network]);
        let time = spec("command: /bin/true\ncapabilities: [SYS_TIME]");
        assert_eq!(time.required_tiers(), vec![Tier::Execute, Tier::Privileged]);
        let disk = spec("command: /bin/true\nwritablePaths: [/srv/data]");
        assert_eq!(disk.required_tiers(), vec![Tier::Execute, Tier::Storage]);
        assert_eq!(disk.privileges(), vec!["writes host paths /srv/data"]);
        for privileged in [&root, &net, &time, &disk] {
            assert!(!privileged.high_risk_tiers().is_empty(), "{privileged:?}");
        }
    }

    #[test]
    fn bad_privileges_are_named() {
        let w = spec(
            "command: /bin/true\nhostNetwork: true\nisolateNetwork: true\n\
             capabilities: [NET_ADMIN, ALL]\nwritablePaths: [/srv/../etc, data, /]",
        );
        let mut errors = Errors::default();
        w.validate("spec.workload", &BTreeMap::new(), &mut errors);
        let text = errors.into_result().unwrap_err().to_string();
        for field in [
            "hostNetwork",
            "capabilities[1]",
            "writablePaths[0]",
            "writablePaths[1]",
            "writablePaths[2]",
        ] {
            assert!(text.contains(&format!("spec.workload.{field}")), "{text}");
        }
        assert!(!text.contains("capabilities[0]"), "{text}");
    }

    #[test]
    fn users_parse() {
        assert_eq!(parse_user("nobody"), Some(UserSpec::Name("nobody".into())));
        assert_eq!(
            parse_user("1000:100"),
            Some(UserSpec::Id {
                uid: 1000,
                gid: Some(100)
            })
        );
        assert_eq!(parse_user("12x"), None);
        assert_eq!(parse_user(""), None);
    }

    #[test]
    fn restart_backoff_doubles_up_to_the_cap() {
        let r = RestartSpec {
            policy: RestartPolicy::OnFailure,
            backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(5),
        };
        assert_eq!(r.delay(0).as_secs(), 1);
        assert_eq!(r.delay(2).as_secs(), 4);
        assert_eq!(r.delay(3).as_secs(), 5);
        assert_eq!(r.delay(99).as_secs(), 5);
        assert!(r.restarts_after(Some(1)) && r.restarts_after(None) && !r.restarts_after(Some(0)));
    }
}
