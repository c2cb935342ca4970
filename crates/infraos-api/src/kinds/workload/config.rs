//! A driver's own settings (`spec.workload.config`) and the schemas they are checked against.
//!
//! The API stores a driver's config as an opaque JSON object, so a new driver needs no new
//! field on [`WorkloadSpec`]; admission checks it against the schema of the driver it names
//! (the table [`KNOWN_DRIVERS`]), and the driver parses it again on the node.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{MAX_ARGS, WorkloadSpec};
use crate::validation::Errors;

/// A host process in its own cgroup and namespaces.
pub const PROCESS_DRIVER: &str = "process";

/// The drivers whose config this build can check, each with its checker.
pub const KNOWN_DRIVERS: &[(&str, ValidateConfig)] = &[(PROCESS_DRIVER, validate_process)];

/// Checks one driver's config; `at` is where its fields are written (for error paths).
pub type ValidateConfig = fn(config: &DriverConfig, at: &str, errors: &mut Errors);

/// A driver's settings as written, before its driver parses them.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(transparent)]
pub struct DriverConfig(pub serde_json::Map<String, serde_json::Value>);

impl DriverConfig {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn get(&self, key: &str) -> Option<&serde_json::Value> {
        self.0.get(key)
    }

    pub fn insert(&mut self, key: &str, value: impl Into<serde_json::Value>) {
        self.0.insert(key.to_string(), value.into());
    }

    /// The config as `T` (the driver's own type), or serde's word on why not.
    pub fn parse<T: serde::de::DeserializeOwned>(&self) -> Result<T, String> {
        serde_json::from_value(serde_json::Value::Object(self.0.clone())).map_err(|e| e.to_string())
    }
}

/// Where a workload's driver settings were written: inside `config` (today's shape) or beside
/// the other fields (the shape from before drivers had configs). Not stored; equal always, so
/// two specs that differ only in how they were written compare equal.
#[derive(Clone, Copy, Debug, Default)]
pub enum ConfigPlacement {
    #[default]
    Nested,
    Inline,
}

impl PartialEq for ConfigPlacement {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

/// The `process` driver's config.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProcessConfig {
    /// The program: an absolute path, or a name looked up on the agent's PATH.
    #[serde(default)]
    pub command: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
}

impl ProcessConfig {
    pub fn into_config(self) -> DriverConfig {
        match serde_json::to_value(self) {
            Ok(serde_json::Value::Object(map)) => DriverConfig(map),
            _ => DriverConfig::default(),
        }
    }
}

fn validate_process(config: &DriverConfig, at: &str, errors: &mut Errors) {
    let config: ProcessConfig = match config.parse() {
        Ok(c) => c,
        Err(e) => return errors.add(at.to_string(), e),
    };
    let field = |name: &str| {
        if at.is_empty() {
            name.to_string()
        } else {
            format!("{at}.{name}")
        }
    };
    if config.command.trim().is_empty() {
        errors.add(field("command"), "a command is required");
    }
    if config.command.contains('\0') || config.args.iter().any(|a| a.contains('\0')) {
        errors.add(field("args"), "must not contain NUL bytes");
    }
    if config.args.len() > MAX_ARGS {
        errors.add(field("args"), format!("at most {MAX_ARGS} arguments"));
    }
    if let Some(dir) = &config.working_dir
        && !dir.starts_with('/')
    {
        errors.add(field("workingDir"), "must be an absolute path");
    }
}

impl WorkloadSpec {
    /// A `process` workload running `command` with `args`, everything else by default.
    pub fn process(command: &str, args: Vec<String>) -> WorkloadSpec {
        WorkloadSpec {
            config: ProcessConfig {
                command: command.to_string(),
                args,
                working_dir: None,
            }
            .into_config(),
            ..WorkloadSpec::default()
        }
    }

    /// The `process` driver's config, when this workload is for that driver.
    pub fn process_config(&self) -> Result<ProcessConfig, String> {
        if self.driver != PROCESS_DRIVER {
            return Err(format!("driver {:?} is not {PROCESS_DRIVER}", self.driver));
        }
        self.config.parse()
    }

    /// Checks the driver's name and its config against that driver's schema, naming fields
    /// where they were written (`{at}.config.command`, or `{at}.command` in the old shape).
    pub(super) fn validate_config(&self, at: &str, errors: &mut Errors) {
        let Some((_, validate)) = KNOWN_DRIVERS.iter().find(|(n, _)| *n == self.driver) else {
            let known: Vec<&str> = KNOWN_DRIVERS.iter().map(|(n, _)| *n).collect();
            errors.add(
                format!("{at}.driver"),
                format!(
                    "unknown driver {:?} (known: {})",
                    crate::text::bounded(&self.driver, crate::text::ERROR_STRING_MAX),
                    known.join(", ")
                ),
            );
            return;
        };
        let config_at = match self.written {
            ConfigPlacement::Nested => format!("{at}.config"),
            ConfigPlacement::Inline => at.to_string(),
        };
        validate(&self.config, &config_at, errors);
    }
}
