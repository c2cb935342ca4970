//! The agent's OS layer (DESIGN §9, STYLE "executors"): every cgroup write, namespace,
//! mount, rlimit, uid switch and raw process call the agent makes goes through here, so the
//! rest of the agent stays `forbid(unsafe_code)` and testable.

pub mod caps;
pub mod cgroup;
pub mod mounts;
pub mod process;
pub mod seccomp;
pub mod users;

#[derive(Debug, thiserror::Error)]
pub enum SysError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{call}: {source}")]
    Call {
        call: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Unsupported(String),
}

impl SysError {
    pub fn io(path: &std::path::Path, source: std::io::Error) -> Self {
        SysError::Io {
            path: path.display().to_string(),
            source,
        }
    }

    pub fn call(call: &'static str, errno: nix::errno::Errno) -> Self {
        SysError::Call {
            call,
            source: std::io::Error::from(errno),
        }
    }
}
