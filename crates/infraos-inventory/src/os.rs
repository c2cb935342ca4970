//! Operating system facts: kernel release and hostname from procfs, the distribution's
//! `PRETTY_NAME` from `os-release`, and the architecture this agent was built for.

use std::path::Path;

use infraos_api::kinds::OsInfo;

use crate::probe;

/// The distribution name from an `os-release` file (os-release(5)): `PRETTY_NAME`, else
/// `NAME`, else `Linux`, which is the default the format itself defines. Values may be bare
/// or in single or double quotes; inside double quotes a backslash escapes `"`, `\`, `$`
/// and `` ` ``.
pub fn parse_os_release(text: &str) -> String {
    let mut pretty = None;
    let mut name = None;
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        match key.trim() {
            "PRETTY_NAME" => pretty = Some(unquote(value.trim())),
            "NAME" => name = Some(unquote(value.trim())),
            _ => {}
        }
    }
    pretty
        .filter(|p| !p.is_empty())
        .or(name.filter(|n| !n.is_empty()))
        .unwrap_or_else(|| "Linux".to_string())
}

fn unquote(value: &str) -> String {
    if let Some(inner) = value.strip_prefix('"').and_then(|v| v.strip_suffix('"')) {
        let mut out = String::with_capacity(inner.len());
        let mut chars = inner.chars();
        while let Some(c) = chars.next() {
            if c == '\\'
                && let Some(next) = chars.clone().next()
                && matches!(next, '"' | '\\' | '$' | '`')
            {
                out.push(next);
                chars.next();
            } else {
                out.push(c);
            }
        }
        out
    } else if let Some(inner) = value.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')) {
        inner.to_string()
    } else {
        value.to_string()
    }
}

/// Reads the OS facts below `proc_root` and `etc_root`. An unreadable `os-release` leaves
/// the name empty rather than guessing `Linux`, so a reader can tell "unknown" apart.
pub fn collect(proc_root: &Path, etc_root: &Path) -> OsInfo {
    OsInfo {
        kernel: probe::read_trimmed(&proc_root.join("sys/kernel/osrelease")).unwrap_or_default(),
        os: probe::read_text(&etc_root.join("os-release"))
            .map(|text| parse_os_release(&text))
            .unwrap_or_default(),
        arch: std::env::consts::ARCH.to_string(),
        hostname: probe::read_trimmed(&proc_root.join("sys/kernel/hostname")).unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEBIAN_12: &str = r#"PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"
NAME="Debian GNU/Linux"
VERSION_ID="12"
VERSION="12 (bookworm)"
VERSION_CODENAME=bookworm
ID=debian
HOME_URL="https://www.debian.org/"
SUPPORT_URL="https://www.debian.org/support"
BUG_REPORT_URL="https://bugs.debian.org/"
"#;

    #[test]
    fn debian_pretty_name() {
        assert_eq!(
            parse_os_release(DEBIAN_12),
            "Debian GNU/Linux 12 (bookworm)"
        );
    }

    #[test]
    fn quoting_styles() {
        assert_eq!(parse_os_release("PRETTY_NAME=Alpine\n"), "Alpine");
        assert_eq!(
            parse_os_release("PRETTY_NAME='Single Quoted'\n"),
            "Single Quoted"
        );
        assert_eq!(
            parse_os_release(r#"PRETTY_NAME="Say \"hi\" for \$5\\""#),
            r#"Say "hi" for $5\"#
        );
    }

    #[test]
    fn falls_back_to_name_then_linux() {
        assert_eq!(
            parse_os_release("# comment\nNAME=\"Fedora Linux\"\nID=fedora\n"),
            "Fedora Linux"
        );
        assert_eq!(parse_os_release("ID=minimal\n"), "Linux");
        assert_eq!(parse_os_release("PRETTY_NAME=\"\"\nNAME=Arch\n"), "Arch");
    }

    #[test]
    fn collect_reads_kernel_and_hostname() {
        let dir = tempfile::tempdir().unwrap();
        let kernel = dir.path().join("proc/sys/kernel");
        std::fs::create_dir_all(&kernel).unwrap();
        std::fs::write(kernel.join("osrelease"), "6.8.0-45-generic\n").unwrap();
        std::fs::write(kernel.join("hostname"), "gpu-node-07\n").unwrap();
        let os = collect(&dir.path().join("proc"), &dir.path().join("etc"));
        assert_eq!(os.kernel, "6.8.0-45-generic");
        assert_eq!(os.hostname, "gpu-node-07");
        assert_eq!(os.os, "", "no os-release is unknown, not Linux");
    }
}
