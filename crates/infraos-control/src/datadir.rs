//! The data dir's layout, in one place: every file a server keeps there, and how it writes
//! them. `init` (the server's), `pki` and `signing` take their paths from here, so none of
//! them depends on another for a file name.
//!
//! ```text
//!   D/ca.crt       the cluster CA (clients trust it; agents' certificates chain to it)
//!   D/ca.key       0600
//!   D/server.crt   signed by the CA for localhost, 127.0.0.1, ::1, the host name and --san
//!   D/server.key   0600
//!   D/admin.token  0600, the admin bearer token in plain text (its SHA-256 is in the store)
//!   D/signing.key  0600, the server's signing key (`signing`)
//!   D/signing.pub  0644, its public key, `ALGORITHM:BASE64`: what auditors and agents pin
//!   D/store.redb   the embedded store
//!   D/server.yaml  the optional configuration
//!   D/server.url   the URL a running server listens on (scripts find an OS-chosen port)
//! ```

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

pub const CA_CERT: &str = "ca.crt";
pub const CA_KEY: &str = "ca.key";
pub const SERVER_CERT: &str = "server.crt";
pub const SERVER_KEY: &str = "server.key";
pub const ADMIN_TOKEN: &str = "admin.token";
pub const SIGNING_KEY: &str = "signing.key";
pub const SIGNING_PUB: &str = "signing.pub";
pub const STORE_FILE: &str = "store.redb";
pub const CONFIG_FILE: &str = "server.yaml";
/// The file a running server writes its URL to, so scripts and tests can find a port chosen
/// by the OS (`--listen 127.0.0.1:0`).
pub const URL_FILE: &str = "server.url";

/// The embedded store's file in `dir`.
pub fn store_path(dir: &Path) -> PathBuf {
    dir.join(STORE_FILE)
}

/// A file of the data dir could not be read or written.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {source}")]
pub struct FileError {
    pub path: String,
    #[source]
    pub source: std::io::Error,
}

impl FileError {
    pub fn new(path: &Path, source: std::io::Error) -> Self {
        FileError {
            path: path.display().to_string(),
            source,
        }
    }
}

/// Writes a file atomically (temp file + rename) with the given mode from the start, so a
/// secret is never readable by others, not even for a moment.
pub fn write_file(path: &Path, contents: &[u8], mode: u32) -> Result<(), FileError> {
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(|e| FileError::new(&tmp, e))?;
    f.write_all(contents).map_err(|e| FileError::new(&tmp, e))?;
    f.sync_all().map_err(|e| FileError::new(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| FileError::new(path, e))?;
    Ok(())
}
