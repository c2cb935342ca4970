//! The collectors' only ways to touch the machine besides `statvfs` and `getifaddrs`: read a
//! small text file, find an executable on a search path, run a tool with a deadline. Each
//! failure is returned as a [`ProbeError`] and logged once, here, at `debug`.

use std::ffi::OsStr;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Why a probe of the machine gave nothing.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start {program}")]
    Spawn {
        program: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{program} did not finish within {after:?} and was killed")]
    Timeout { program: PathBuf, after: Duration },
    #[error("{program} exited with {status}")]
    Failed {
        program: PathBuf,
        status: ExitStatus,
    },
    #[error("cannot read the output of {program}")]
    Output {
        program: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// How often [`run_with_timeout`] checks whether the child has exited.
const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// Reads a whole text file; `None` (logged) when it cannot be read.
pub fn read_text(path: &Path) -> Option<String> {
    std::fs::read_to_string(path)
        .map_err(|source| ProbeError::Read {
            path: path.to_path_buf(),
            source,
        })
        .map_err(log)
        .ok()
}

/// Reads a one-line sysfs or procfs value without its surrounding whitespace.
pub fn read_trimmed(path: &Path) -> Option<String> {
    read_text(path).map(|text| text.trim().to_string())
}

/// The first regular file named `name` with an execute bit in the directories of `path_env`
/// (a `PATH`-style list). Empty entries, which a shell reads as the current directory, are
/// skipped: the agent's working directory is no place to pick a runtime from.
pub fn find_executable(path_env: Option<&OsStr>, name: &str) -> Option<PathBuf> {
    let path_env = path_env?;
    std::env::split_paths(path_env)
        .filter(|dir| !dir.as_os_str().is_empty())
        .map(|dir| dir.join(name))
        .find(|candidate| {
            std::fs::metadata(candidate)
                .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
        })
}

/// Runs `program` with `args`, stdin and stderr closed, and returns its stdout if it exits
/// successfully within `timeout`; otherwise kills it. Stdout is drained on a helper thread so
/// a chatty child cannot block on a full pipe while this thread waits for it.
pub fn run_with_timeout(
    program: &Path,
    args: &[&str],
    timeout: Duration,
) -> Result<String, ProbeError> {
    let deadline = Instant::now() + timeout;
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|source| ProbeError::Spawn {
            program: program.to_path_buf(),
            source,
        })?;

    let (tx, rx) = mpsc::channel();
    if let Some(mut stdout) = child.stdout.take() {
        let reader = std::thread::Builder::new()
            .name("inventory-probe".into())
            .spawn(move || {
                let mut text = String::new();
                let result = stdout.read_to_string(&mut text).map(|_| text);
                // The receiver may have given up already; nothing to do then.
                let _ = tx.send(result);
            });
        if let Err(source) = reader {
            kill(&mut child);
            return Err(ProbeError::Output {
                program: program.to_path_buf(),
                source,
            });
        }
    }

    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() >= deadline => {
                kill(&mut child);
                return Err(ProbeError::Timeout {
                    program: program.to_path_buf(),
                    after: timeout,
                });
            }
            Ok(None) => std::thread::sleep(POLL_INTERVAL),
            Err(source) => {
                kill(&mut child);
                return Err(ProbeError::Output {
                    program: program.to_path_buf(),
                    source,
                });
            }
        }
    };
    if !status.success() {
        return Err(ProbeError::Failed {
            program: program.to_path_buf(),
            status,
        });
    }
    // The child has exited, so its end of the pipe is closed unless it left a grandchild
    // holding it; wait for the reader only as long as the deadline allows.
    let wait = deadline
        .saturating_duration_since(Instant::now())
        .max(POLL_INTERVAL);
    match rx.recv_timeout(wait) {
        Ok(Ok(text)) => Ok(text),
        Ok(Err(source)) => Err(ProbeError::Output {
            program: program.to_path_buf(),
            source,
        }),
        Err(_) => Err(ProbeError::Timeout {
            program: program.to_path_buf(),
            after: timeout,
        }),
    }
}

fn kill(child: &mut std::process::Child) {
    // Either may fail only because the child already exited, which is what we want anyway.
    let _ = child.kill();
    let _ = child.wait();
}

/// Logs a probe failure at `debug` and hands it back, for `map_err(log)`.
pub(crate) fn log(error: ProbeError) -> ProbeError {
    tracing::debug!(error = %error, source = ?std::error::Error::source(&error), "inventory probe failed");
    error
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_with_timeout_returns_stdout_of_a_successful_child() {
        let out = run_with_timeout(
            Path::new("/bin/sh"),
            &["-c", "echo hello; echo ignored >&2"],
            Duration::from_secs(10),
        )
        .unwrap();
        assert_eq!(out, "hello\n");
    }

    #[test]
    fn run_with_timeout_reports_a_failing_child() {
        let err = run_with_timeout(
            Path::new("/bin/sh"),
            &["-c", "echo partial; exit 9"],
            Duration::from_secs(10),
        )
        .unwrap_err();
        assert!(matches!(err, ProbeError::Failed { status, .. } if status.code() == Some(9)));
    }

    /// Regression guard: a hung tool (nvidia-smi with a wedged driver) must not hang the agent.
    #[test]
    fn run_with_timeout_kills_a_child_that_overruns() {
        let started = Instant::now();
        let err = run_with_timeout(
            Path::new("/bin/sh"),
            &["-c", "exec sleep 30"],
            Duration::from_millis(200),
        )
        .unwrap_err();
        assert!(matches!(err, ProbeError::Timeout { .. }), "{err:?}");
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn run_with_timeout_reports_a_missing_program() {
        let err = run_with_timeout(Path::new("/nonexistent/tool"), &[], Duration::from_secs(1))
            .unwrap_err();
        assert!(matches!(err, ProbeError::Spawn { .. }));
    }

    #[test]
    fn find_executable_needs_an_execute_bit_and_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::create_dir_all(&a).unwrap();
        std::fs::create_dir_all(b.join("tool-dir")).unwrap();
        std::fs::write(a.join("tool"), "not executable").unwrap();
        std::fs::write(b.join("tool"), "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(b.join("tool"), std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = std::env::join_paths([&a, &b]).unwrap();

        assert_eq!(
            find_executable(Some(&path), "tool"),
            Some(b.join("tool")),
            "the non-executable file in the first directory must be passed over"
        );
        assert_eq!(find_executable(Some(&path), "tool-dir"), None);
        assert_eq!(find_executable(Some(&path), "missing"), None);
        assert_eq!(find_executable(None, "tool"), None);
    }

    #[test]
    fn read_trimmed_strips_the_newline_and_misses_quietly() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("f"), "  6.1.0\n").unwrap();
        assert_eq!(
            read_trimmed(&dir.path().join("f")).as_deref(),
            Some("6.1.0")
        );
        assert_eq!(read_trimmed(&dir.path().join("missing")), None);
    }
}
