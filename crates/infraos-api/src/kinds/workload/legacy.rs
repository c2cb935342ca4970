//! How a workload is read: today's shape (`config: {…}`) or the one from before drivers had
//! configs, where the process driver's `command`, `args` and `workingDir` sat beside the
//! other fields. Stored objects of the old shape are turned into the new one as they are read
//! (and written back in it on their next write); the stored-schema version was bumped with it.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::Deserialize;

use super::config::{ConfigPlacement, DriverConfig, PROCESS_DRIVER};
use super::{DEFAULT_DRIVER, RestartSpec, Tier, WorkloadLimits, WorkloadSpec, default_stop_grace};
use crate::duration::Duration;

/// Either shape, as written.
#[derive(Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkloadWire {
    #[serde(default)]
    driver: Option<String>,
    #[serde(default)]
    config: Option<DriverConfig>,
    /// The old shape: the process driver's program.
    #[serde(default)]
    command: Option<String>,
    /// The old shape: the process driver's arguments.
    #[serde(default)]
    args: Option<Vec<String>>,
    /// The old shape: the process driver's working directory.
    #[serde(default)]
    working_dir: Option<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    restart: RestartSpec,
    #[serde(default)]
    limits: WorkloadLimits,
    #[serde(default)]
    isolate_network: bool,
    #[serde(default)]
    host_network: bool,
    #[serde(default)]
    capabilities: Vec<String>,
    #[serde(default)]
    writable_paths: Vec<String>,
    #[serde(default = "default_stop_grace")]
    stop_grace: Duration,
    #[serde(default)]
    tiers: Vec<Tier>,
}

impl TryFrom<WorkloadWire> for WorkloadSpec {
    type Error = String;

    fn try_from(w: WorkloadWire) -> Result<WorkloadSpec, String> {
        let inline = w.command.is_some() || w.args.is_some() || w.working_dir.is_some();
        let driver = w.driver.unwrap_or_else(|| DEFAULT_DRIVER.to_string());
        let (config, written) = match (w.config, inline) {
            (Some(_), true) => {
                return Err(
                    "give the driver's settings in `config` or, for the process driver, as \
                     `command`, `args` and `workingDir` beside it, not both"
                        .into(),
                );
            }
            (Some(config), false) => (config, ConfigPlacement::Nested),
            (None, _) if driver != PROCESS_DRIVER && !inline => {
                (DriverConfig::default(), ConfigPlacement::Nested)
            }
            (None, _) => {
                let mut config = DriverConfig::default();
                config.insert("command", w.command.unwrap_or_default());
                if let Some(args) = w.args.filter(|a| !a.is_empty()) {
                    config.insert("args", args);
                }
                if let Some(dir) = w.working_dir {
                    config.insert("workingDir", dir);
                }
                (config, ConfigPlacement::Inline)
            }
        };
        Ok(WorkloadSpec {
            driver,
            config,
            env: w.env,
            user: w.user,
            restart: w.restart,
            limits: w.limits,
            isolate_network: w.isolate_network,
            host_network: w.host_network,
            capabilities: w.capabilities,
            writable_paths: w.writable_paths,
            stop_grace: w.stop_grace,
            tiers: w.tiers,
            written,
        })
    }
}

impl WorkloadSpec {
    /// This spec in the old shape (the process driver's fields beside the others), as servers
    /// wrote and signed it before `config`; `None` for other drivers.
    pub fn legacy_value(&self) -> Option<serde_json::Value> {
        if self.driver != PROCESS_DRIVER {
            return None;
        }
        let mut value = serde_json::to_value(self).ok()?;
        let object = value.as_object_mut()?;
        let config = object.remove("config");
        object.insert(
            "command".into(),
            config
                .as_ref()
                .and_then(|c| c.get("command"))
                .cloned()
                .unwrap_or_else(|| "".into()),
        );
        for key in ["args", "workingDir"] {
            if let Some(v) = config.as_ref().and_then(|c| c.get(key)) {
                object.insert(key.into(), v.clone());
            }
        }
        Some(value)
    }
}

#[cfg(test)]
mod tests {
    use super::super::ProcessConfig;
    use super::*;

    #[test]
    fn the_old_shape_reads_as_the_new_and_writes_as_it() {
        let old: WorkloadSpec = serde_json::from_value(serde_json::json!({
            "driver": "process", "command": "/bin/sh", "args": ["-c", "true"],
            "workingDir": "/tmp", "stopGrace": "2s"
        }))
        .unwrap();
        let new: WorkloadSpec = serde_json::from_value(serde_json::json!({
            "driver": "process",
            "config": {"command": "/bin/sh", "args": ["-c", "true"], "workingDir": "/tmp"},
            "stopGrace": "2s"
        }))
        .unwrap();
        assert_eq!(old, new);
        assert_eq!(
            old.process_config().unwrap(),
            ProcessConfig {
                command: "/bin/sh".into(),
                args: vec!["-c".into(), "true".into()],
                working_dir: Some("/tmp".into()),
            }
        );
        let written = serde_json::to_value(&old).unwrap();
        assert_eq!(written["config"]["command"], "/bin/sh");
        assert!(written.get("command").is_none(), "{written}");
        let again: WorkloadSpec = serde_json::from_value(written).unwrap();
        assert_eq!(again, old);
    }

    #[test]
    fn both_shapes_at_once_are_refused() {
        let both = serde_json::from_value::<WorkloadSpec>(serde_json::json!({
            "command": "/bin/true", "config": {"command": "/bin/true"}
        }));
        assert!(both.is_err());
    }

    #[test]
    fn config_errors_name_the_field_where_it_was_written() {
        let mut errors = crate::validation::Errors::default();
        let nested: WorkloadSpec = serde_json::from_value(serde_json::json!({
            "config": {"command": "", "colour": "red"}
        }))
        .unwrap();
        nested.validate("spec.workload", &BTreeMap::new(), &mut errors);
        let text = errors.into_result().unwrap_err().to_string();
        assert!(text.contains("spec.workload.config"), "{text}");
        assert!(text.contains("colour"), "{text}");

        let mut errors = crate::validation::Errors::default();
        let unknown: WorkloadSpec =
            serde_json::from_value(serde_json::json!({"driver": "teleport"})).unwrap();
        unknown.validate("spec.workload", &BTreeMap::new(), &mut errors);
        let text = errors.into_result().unwrap_err().to_string();
        assert!(text.contains("spec.workload.driver"), "{text}");
    }
}
