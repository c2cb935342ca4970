//! Client configuration: `~/.config/infraos/config.yaml`, overridden by `INFRAOS_SERVER`,
//! `INFRAOS_TOKEN` and `INFRAOS_CA` (a path to the CA certificate).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {reason}")]
    File { path: String, reason: String },
    #[error("no server configured: run `infraos dev`, or set INFRAOS_SERVER, or write {0}")]
    NoServer(String),
}

/// The file form of the client config.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConfigFile {
    pub server: String,
    /// Path to the CA certificate that signed the server's certificate.
    pub ca: PathBuf,
    /// The bearer token, or a file holding it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
}

/// A resolved client configuration.
#[derive(Debug, Clone, Default)]
pub struct ClientConfig {
    pub server: String,
    pub ca_pem: Option<Vec<u8>>,
    pub token: Option<String>,
    /// A client certificate and key (PEM), for agents speaking mTLS.
    pub identity: Option<ClientIdentity>,
}

#[derive(Clone)]
pub struct ClientIdentity {
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
}

impl std::fmt::Debug for ClientIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClientIdentity { .. }")
    }
}

pub fn default_path() -> PathBuf {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
        .unwrap_or_else(|| PathBuf::from("."));
    base.join("infraos").join("config.yaml")
}

fn read(path: &Path) -> Result<Vec<u8>, ConfigError> {
    std::fs::read(path).map_err(|e| ConfigError::File {
        path: path.display().to_string(),
        reason: e.to_string(),
    })
}

impl ClientConfig {
    /// Loads the config file (if any) and applies the environment on top.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        Self::load_for(file, None)
    }

    /// As [`ClientConfig::load`], with the server URL given explicitly (a `--server` flag),
    /// which wins over the file and the environment.
    pub fn load_for(file: Option<&Path>, server: Option<&str>) -> Result<Self, ConfigError> {
        let path = file.map(Path::to_path_buf).unwrap_or_else(default_path);
        let mut config = ClientConfig::default();
        if path.exists() {
            let text = String::from_utf8(read(&path)?).map_err(|_| ConfigError::File {
                path: path.display().to_string(),
                reason: "not UTF-8".into(),
            })?;
            let parsed: ConfigFile =
                serde_norway::from_str(&text).map_err(|e| ConfigError::File {
                    path: path.display().to_string(),
                    reason: e.to_string(),
                })?;
            config.server = parsed.server;
            config.ca_pem = Some(read(&parsed.ca)?);
            config.token = match (parsed.token, parsed.token_file) {
                (Some(t), _) => Some(t),
                (None, Some(f)) => Some(String::from_utf8_lossy(&read(&f)?).trim().to_string()),
                (None, None) => None,
            };
        }
        if let Ok(server) = std::env::var("INFRAOS_SERVER") {
            config.server = server;
        }
        if let Ok(token) = std::env::var("INFRAOS_TOKEN") {
            config.token = Some(token);
        }
        if let Some(ca) = std::env::var_os("INFRAOS_CA") {
            config.ca_pem = Some(read(Path::new(&ca))?);
        }
        if let Some(server) = server {
            config.server = server.to_string();
        }
        if config.server.is_empty() {
            return Err(ConfigError::NoServer(path.display().to_string()));
        }
        Ok(config)
    }
}
