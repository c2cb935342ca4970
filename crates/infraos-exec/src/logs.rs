//! Workload output: the shim writes each stream to `<task>/<stream>.log`, rotating it at a
//! size limit to `.1`, `.2`, …; the agent reads it back for `infraos logs` (tail, follow).

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// How many rotated files are kept besides the live one.
pub const KEEP: u32 = 3;

pub fn log_path(dir: &Path, stream: &str) -> PathBuf {
    dir.join(format!("{stream}.log"))
}

/// An append-only file that rotates itself when it grows past `max_bytes`.
pub struct RotatingFile {
    path: PathBuf,
    file: File,
    written: u64,
    max_bytes: u64,
}

impl RotatingFile {
    pub fn open(path: PathBuf, max_bytes: u64) -> std::io::Result<RotatingFile> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)?;
        let written = file.metadata().map(|m| m.len()).unwrap_or(0);
        Ok(RotatingFile {
            path,
            file,
            written,
            max_bytes: max_bytes.max(1024),
        })
    }

    pub fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        if self.written + bytes.len() as u64 > self.max_bytes && self.written > 0 {
            self.rotate()?;
        }
        self.file.write_all(bytes)?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        for n in (1..KEEP).rev() {
            let from = rotated(&self.path, n);
            if from.exists() {
                std::fs::rename(&from, rotated(&self.path, n + 1))?;
            }
        }
        std::fs::rename(&self.path, rotated(&self.path, 1))?;
        self.file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        self.written = 0;
        Ok(())
    }
}

fn rotated(path: &Path, n: u32) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{n}"));
    PathBuf::from(s)
}

/// The last `lines` lines of the stream (across the live file and the newest rotated one),
/// and the live file's length to follow from.
pub fn tail(path: &Path, lines: Option<u64>) -> std::io::Result<(Vec<u8>, u64)> {
    let mut data = Vec::new();
    if lines.is_some()
        && let Ok(mut f) = File::open(rotated(path, 1))
    {
        f.read_to_end(&mut data)?;
    }
    let mut live = Vec::new();
    let offset = match File::open(path) {
        Ok(mut f) => {
            f.read_to_end(&mut live)?;
            live.len() as u64
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
        Err(e) => return Err(e),
    };
    data.extend_from_slice(&live);
    if let Some(n) = lines {
        let mut seen = 0u64;
        let mut start = data.len();
        for (i, b) in data.iter().enumerate().rev() {
            if *b == b'\n' && i + 1 != data.len() {
                seen += 1;
                if seen == n {
                    start = i + 1;
                    break;
                }
            }
            start = i;
        }
        if n == 0 {
            start = data.len();
        }
        data.drain(..start);
    }
    Ok((data, offset))
}

/// Reads what was appended to `path` after `offset`; a rotation restarts from 0.
pub fn read_from(path: &Path, offset: u64) -> std::io::Result<(Vec<u8>, u64)> {
    let mut f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), offset)),
        Err(e) => return Err(e),
    };
    let len = f.metadata()?.len();
    let from = if len < offset { 0 } else { offset };
    f.seek(SeekFrom::Start(from))?;
    let mut out = Vec::new();
    f.read_to_end(&mut out)?;
    let next = from + out.len() as u64;
    Ok((out, next))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_rotate_and_tail_spans_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = log_path(dir.path(), "stdout");
        let mut f = RotatingFile::open(path.clone(), 1024).unwrap();
        for i in 0..400 {
            f.write(format!("line {i:04}\n").as_bytes()).unwrap();
        }
        assert!(rotated(&path, 1).exists() && rotated(&path, 2).exists());
        assert!(!rotated(&path, KEEP + 1).exists());
        let (last, _) = tail(&path, Some(3)).unwrap();
        assert_eq!(
            String::from_utf8(last).unwrap(),
            "line 0397\nline 0398\nline 0399\n"
        );
        let (_, offset) = tail(&path, None).unwrap();
        f.write(b"more\n").unwrap();
        let (new, _) = read_from(&path, offset).unwrap();
        assert_eq!(new, b"more\n");
    }
}
