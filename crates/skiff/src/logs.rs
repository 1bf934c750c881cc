//! Container output on disk: `containers/<id>/container.log`, one JSON
//! object a line, `{"t": unix_ms, "s": "stdout"|"stderr", "log": "…"}`
//! (lines keep their newline, as Docker's json-file driver does). Output
//! that is not UTF-8 is stored lossily; a line longer than 16 KiB is split.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, Result};
use skiff_state::{now_ms, Status};

use crate::context::Context;

pub const LOG_FILE: &str = "container.log";
const MAX_LINE: usize = 16 * 1024;

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    fn name(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// Copies one of the container's output pipes into the log (shared by both
/// streams) and, for a foreground container, to our own stdout/stderr as it
/// arrives (not a line at a time, so prompts show).
pub fn pump(
    mut from: impl Read,
    stream: Stream,
    log: Option<Arc<Mutex<File>>>,
    tee: bool,
) -> std::io::Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut pending: Vec<u8> = Vec::new();
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        let chunk = &buf[..n];
        if tee {
            // A closed terminal must not stop the log from being written.
            let _ = match stream {
                Stream::Stdout => std::io::stdout().lock().write_all(chunk),
                Stream::Stderr => std::io::stderr().lock().write_all(chunk),
            };
        }
        if let Some(log) = &log {
            pending.extend_from_slice(chunk);
            while let Some(line) = take_line(&mut pending) {
                write_record(log, stream, &line)?;
            }
        }
    }
    if let Some(log) = &log {
        if !pending.is_empty() {
            write_record(log, stream, &pending)?;
        }
    }
    Ok(())
}

fn take_line(pending: &mut Vec<u8>) -> Option<Vec<u8>> {
    let end = match pending.iter().position(|&b| b == b'\n') {
        Some(i) if i < MAX_LINE => i + 1,
        _ if pending.len() >= MAX_LINE => MAX_LINE,
        _ => return None,
    };
    Some(pending.drain(..end).collect())
}

fn write_record(log: &Mutex<File>, stream: Stream, line: &[u8]) -> std::io::Result<()> {
    let rec = serde_json::json!({
        "t": now_ms(),
        "s": stream.name(),
        "log": String::from_utf8_lossy(line),
    });
    let mut text = rec.to_string();
    text.push('\n');
    let mut f = log
        .lock()
        .map_err(|_| std::io::Error::other("log writer poisoned"))?;
    f.write_all(text.as_bytes())
}

/// `skiff logs [-f] NAME`.
pub fn print(ctx: &Context, name: &str, follow: bool) -> Result<()> {
    let state = ctx.state()?;
    let c = state
        .find_container(name)?
        .with_context(|| format!("no such container: {name}"))?;
    let path = ctx.container_dir(&c.id).join(LOG_FILE);
    let file = match File::open(&path) {
        Ok(f) => f,
        // A foreground `--rm` container keeps no log.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let mut reader = BufReader::new(file);
    let mut line = String::new();
    let mut out = std::io::stdout().lock();
    loop {
        line.clear();
        let n = reader.read_line(&mut line)?;
        if n > 0 && line.ends_with('\n') {
            emit(&line, &mut out);
            continue;
        }
        if n > 0 {
            // A record still being written: read it again once complete.
            let back = -(n as i64);
            reader.seek(SeekFrom::Current(back))?;
        }
        if !follow {
            return Ok(());
        }
        out.flush()?;
        match state.find_container(&c.id)? {
            Some(now) if now.status != Status::Exited => {}
            // Exited (or removed): one last pass picks up what it wrote last.
            _ => {
                let mut rest = String::new();
                reader.read_to_string(&mut rest)?;
                for l in rest.lines() {
                    emit(l, &mut out);
                }
                return Ok(());
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn emit(line: &str, out: &mut impl Write) {
    let Ok(rec) = serde_json::from_str::<serde_json::Value>(line) else {
        return;
    };
    let text = rec["log"].as_str().unwrap_or_default();
    if rec["s"] == "stderr" {
        let _ = std::io::stderr().write_all(text.as_bytes());
    } else {
        let _ = out.write_all(text.as_bytes());
    }
}

pub fn open_log(dir: &Path) -> Result<Arc<Mutex<File>>> {
    let path = dir.join(LOG_FILE);
    let f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    Ok(Arc::new(Mutex::new(f)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_split_and_long_lines_capped() {
        let mut p = b"a\nbc".to_vec();
        assert_eq!(take_line(&mut p).unwrap(), b"a\n");
        assert!(take_line(&mut p).is_none());
        let mut long = vec![b'x'; MAX_LINE + 10];
        assert_eq!(take_line(&mut long).unwrap().len(), MAX_LINE);
        assert_eq!(long.len(), 10);
    }

    #[test]
    fn pump_writes_records() {
        let dir = tempfile::tempdir().unwrap();
        let log = open_log(dir.path()).unwrap();
        pump(&b"one\ntwo"[..], Stream::Stderr, Some(log), false).unwrap();
        let text = std::fs::read_to_string(dir.path().join(LOG_FILE)).unwrap();
        let recs: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(recs.len(), 2);
        assert_eq!(recs[0]["log"], "one\n");
        assert_eq!(recs[1]["log"], "two");
        assert_eq!(recs[1]["s"], "stderr");
    }
}
