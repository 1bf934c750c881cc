//! Container output on disk, one JSON object a line,
//! `{"t": unix_ms, "s": "stdout"|"stderr", "log": "…"}` (lines keep their
//! newline, as Docker's json-file driver does). Output that is not UTF-8 is
//! stored lossily; a line longer than 16 KiB is split.
//!
//! A container logs to `containers/<id>/container.log`, which goes with it.
//! A service instance logs to `logs/<service>/<instance>.log` instead (the
//! record's `log_path`), so its output outlives it (scale to zero removes
//! instances all the time); `skiff delete` removes the directory.
//!
//! The only writer of a file is its container's monitor, which rotates it
//! past [`MAX_FILE`]: `X.log` becomes `X.log.1` (replacing the older one)
//! and a new `X.log` starts, so a container keeps at most twice that.
//! Before an instance starts, the daemon prunes its service's directory to
//! [`MAX_SERVICE`], oldest files first.
//!
//! `skiff logs NAME` prints a container's log, or every instance's of a
//! service, merged by time, each line prefixed with its instance; `-f`
//! follows the files across rotations (as `tail -F` does), and for a
//! service also picks up the files of instances started later.

use std::collections::{BTreeSet, HashSet};
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use skiff_core::ServiceName;
use skiff_state::{now_ms, ContainerRecord, Status, OWNER_SERVE};

use crate::context::Context;

pub const LOG_FILE: &str = "container.log";
const MAX_LINE: usize = 16 * 1024;
/// A log file is rotated before it would grow past this.
pub const MAX_FILE: u64 = 8 << 20;
/// What a service's logs may take on disk, all instances together.
pub const MAX_SERVICE: u64 = 64 << 20;
/// How often `-f` looks for new output.
const POLL: Duration = Duration::from_millis(150);

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

/// Where a container's output is logged.
pub fn log_path(ctx: &Context, c: &ContainerRecord) -> PathBuf {
    match &c.log_path {
        Some(p) => PathBuf::from(p),
        None => ctx.container_dir(&c.id).join(LOG_FILE),
    }
}

/// The file a rotated log's older half is kept in: `X.log.1`.
fn rotated(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".1");
    PathBuf::from(s)
}

/// Appends records to a log file, rotating it before it would pass `max`.
pub struct LogWriter {
    file: File,
    path: PathBuf,
    size: u64,
    max: u64,
}

impl LogWriter {
    pub fn open(path: &Path, max: u64) -> Result<LogWriter> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        let file = append(path).with_context(|| format!("cannot open {}", path.display()))?;
        let size = file.metadata()?.len();
        Ok(LogWriter {
            file,
            path: path.to_path_buf(),
            size,
            max,
        })
    }

    fn write(&mut self, record: &[u8]) -> std::io::Result<()> {
        let len = record.len() as u64;
        // A record larger than the limit still goes in, alone in its file.
        if self.size > 0 && self.size + len > self.max {
            std::fs::rename(&self.path, rotated(&self.path))?;
            self.file = append(&self.path)?;
            self.size = 0;
        }
        self.file.write_all(record)?;
        self.size += len;
        Ok(())
    }
}

fn append(path: &Path) -> std::io::Result<File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
}

pub type SharedLog = Arc<Mutex<LogWriter>>;

/// Opens (creating it and its directory) the log both streams share.
pub fn open_log(path: &Path) -> Result<SharedLog> {
    Ok(Arc::new(Mutex::new(LogWriter::open(path, MAX_FILE)?)))
}

/// Copies one of the container's output pipes into the log (shared by both
/// streams) and, for a foreground container, to our own stdout/stderr as it
/// arrives (not a line at a time, so prompts show).
pub fn pump(
    mut from: impl Read,
    stream: Stream,
    log: Option<SharedLog>,
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

fn write_record(log: &Mutex<LogWriter>, stream: Stream, line: &[u8]) -> std::io::Result<()> {
    let mut w = log
        .lock()
        .map_err(|_| std::io::Error::other("log writer poisoned"))?;
    // Stamped under the lock, so a file's times never go back between the
    // two streams and a merge by time keeps each file's order.
    let rec = serde_json::json!({
        "t": now_ms(),
        "s": stream.name(),
        "log": String::from_utf8_lossy(line),
    });
    let mut text = rec.to_string();
    text.push('\n');
    w.write(text.as_bytes())
}

/// Deletes the oldest files (by mtime) in a service's log directory until
/// they take at most `budget` bytes. The current file of a running
/// instance (`live`) is never deleted: its writer holds it open, so that
/// would free nothing and only hide its output.
pub fn prune(dir: &Path, budget: u64, live: &HashSet<PathBuf>) -> Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", dir.display())),
    };
    let mut total = 0;
    let mut deletable = Vec::new();
    for entry in entries.flatten() {
        // Gone since the listing (a rotation, another start pruning): skip it.
        let Ok(meta) = entry.metadata() else { continue };
        if !meta.is_file() {
            continue;
        }
        total += meta.len();
        if !live.contains(&entry.path()) {
            let mtime = meta.modified().unwrap_or(std::time::UNIX_EPOCH);
            deletable.push((mtime, meta.len(), entry.path()));
        }
    }
    deletable.sort();
    for (_, len, path) in deletable {
        if total <= budget {
            break;
        }
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            // Another start pruning at the same time got there first.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("cannot remove {}", path.display())),
        }
        total -= len;
    }
    Ok(())
}

/// Keeps a service's logs within [`MAX_SERVICE`]; the daemon calls it
/// before it starts an instance.
pub fn prune_service_logs(ctx: &Context, service: &ServiceName) -> Result<()> {
    let live = ctx
        .state()?
        .list_containers_owned_by(OWNER_SERVE)?
        .into_iter()
        .filter_map(|c| c.log_path.map(PathBuf::from))
        .collect();
    prune(&ctx.service_logs_dir(service), MAX_SERVICE, &live)
}

/// `skiff delete`: the service's logs go with it.
pub fn remove_service_logs(ctx: &Context, service: &ServiceName) -> Result<()> {
    let dir = ctx.service_logs_dir(service);
    match std::fs::remove_dir_all(&dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("cannot remove {}", dir.display()))
        }
        _ => Ok(()),
    }
}

/// `skiff logs [-f] [--tail N] NAME`: a container's output, or else a
/// service's (all its instances').
pub fn print(ctx: &Context, name: &str, follow: bool, tail: Option<usize>) -> Result<()> {
    let state = ctx.state()?;
    let printed = if let Some(c) = state.find_container(name)? {
        print_container(ctx, &c, follow, tail)
    } else if let Some(service) = known_service(ctx, name)? {
        print_service(ctx, &service, follow, tail)
    } else {
        bail!("no such container or service: {name}")
    };
    // A reader that went away (`skiff logs -f x | head`) ends it quietly.
    match printed {
        Err(e) if is_broken_pipe(&e) => Ok(()),
        other => other,
    }
}

fn known_service(ctx: &Context, name: &str) -> Result<Option<ServiceName>> {
    let Ok(service) = ServiceName::new(name) else {
        return Ok(None);
    };
    // Logs outlive nothing but instances; a service deployed and never
    // started has no directory yet, but is still a service.
    if ctx.service_logs_dir(&service).is_dir() || ctx.state()?.get_service(&service)?.is_some() {
        return Ok(Some(service));
    }
    Ok(None)
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

fn print_container(
    ctx: &Context,
    c: &ContainerRecord,
    follow: bool,
    tail: Option<usize>,
) -> Result<()> {
    let path = log_path(ctx, c);
    let mut sources = vec![Source::new(None, path.clone())];
    let src = &mut sources[0];
    let mut recs = Vec::new();
    src.read_rotated(0, &mut recs)?;
    src.tail
        .poll(0, &mut recs)
        .with_context(|| format!("cannot read {}", path.display()))?;
    // A foreground `--rm` container keeps no log.
    if src.tail.reader.is_none() && recs.is_empty() {
        return Ok(());
    }
    emit(&sources, last(recs, tail))?;
    if !follow {
        return Ok(());
    }
    let state = ctx.state()?;
    loop {
        let exited = !matches!(state.find_container(&c.id)?,
            Some(now) if now.status != Status::Exited);
        // Exited (or removed): this last read picks up what it wrote last.
        let mut recs = Vec::new();
        sources[0].tail.poll(0, &mut recs)?;
        emit(&sources, recs)?;
        if exited {
            return Ok(());
        }
        std::thread::sleep(POLL);
    }
}

fn print_service(
    ctx: &Context,
    service: &ServiceName,
    follow: bool,
    tail: Option<usize>,
) -> Result<()> {
    let dir = ctx.service_logs_dir(service);
    let mut sources: Vec<Source> = Vec::new();
    let mut recs = Vec::new();
    for instance in instances_in(&dir)? {
        sources.push(Source::instance(&dir, instance));
    }
    for (i, src) in sources.iter_mut().enumerate() {
        src.read_rotated(i, &mut recs)?;
        src.tail.poll(i, &mut recs)?;
    }
    // Each file is in order already; a stable sort keeps it.
    recs.sort_by_key(|r| r.t);
    emit(&sources, last(recs, tail))?;
    if !follow {
        return Ok(());
    }
    loop {
        std::thread::sleep(POLL);
        let mut recs = Vec::new();
        for (i, src) in sources.iter_mut().enumerate() {
            src.tail.poll(i, &mut recs)?;
        }
        // Instances started since: their files from the top.
        for instance in instances_in(&dir)? {
            if !sources.iter().any(|s| s.prefix.as_ref() == Some(&instance)) {
                let i = sources.len();
                let mut src = Source::instance(&dir, instance);
                src.read_rotated(i, &mut recs)?;
                src.tail.poll(i, &mut recs)?;
                sources.push(src);
            }
        }
        recs.sort_by_key(|r| r.t);
        emit(&sources, recs)?;
    }
}

/// The instances with a log in `dir` (current or rotated), by name.
fn instances_in(dir: &Path) -> Result<BTreeSet<String>> {
    let mut names = BTreeSet::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(names),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", dir.display())),
    };
    for entry in entries {
        let file = entry?.file_name();
        let Some(file) = file.to_str() else { continue };
        let base = file.strip_suffix(".1").unwrap_or(file);
        if let Some(name) = base.strip_suffix(".log") {
            names.insert(name.to_string());
        }
    }
    Ok(names)
}

/// One container's log, as printed: an optional prefix (the instance).
struct Source {
    prefix: Option<String>,
    tail: Tail,
}

impl Source {
    fn new(prefix: Option<String>, path: PathBuf) -> Source {
        Source {
            prefix,
            tail: Tail {
                path,
                reader: None,
                id: (0, 0),
                partial: Vec::new(),
            },
        }
    }

    /// An instance's log in its service's directory.
    fn instance(dir: &Path, name: String) -> Source {
        let path = dir.join(format!("{name}.log"));
        Source::new(Some(name), path)
    }

    /// The rotated half, `X.log.1`, read whole (it no longer changes);
    /// records are tagged with `source`, the index this source will have.
    fn read_rotated(&self, source: usize, into: &mut Vec<Record>) -> Result<()> {
        let path = rotated(&self.tail.path);
        let text = match std::fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        into.extend(
            text.split(|&b| b == b'\n')
                .filter_map(|l| Record::parse(l, source)),
        );
        Ok(())
    }
}

/// Reads a log file's complete records as they are written, following the
/// name across rotations (as `tail -F` does): once the name points at a
/// new file, the old one is finished and the new one read from the top.
struct Tail {
    path: PathBuf,
    /// `None` until the file exists.
    reader: Option<BufReader<File>>,
    /// Device and inode of the open file.
    id: (u64, u64),
    /// A record still being written.
    partial: Vec<u8>,
}

impl Tail {
    /// Reads what was written since the last call, tagging records with
    /// `source`; false when the file is gone (rotating, pruned, deleted),
    /// in which case it is read from the top should it appear again.
    fn poll(&mut self, source: usize, into: &mut Vec<Record>) -> std::io::Result<bool> {
        loop {
            self.drain(source, into)?;
            let now = match std::fs::metadata(&self.path) {
                Ok(m) => Some((m.dev(), m.ino())),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(e) => return Err(e),
            };
            if self.reader.is_some() && now == Some(self.id) {
                return Ok(true);
            }
            // Renamed or removed: the writer wrote to the old file only
            // before that, so one more read finishes it.
            self.drain(source, into)?;
            self.reader = None;
            self.partial.clear();
            if now.is_none() {
                return Ok(false);
            }
            let file = match File::open(&self.path) {
                Ok(f) => f,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
                Err(e) => return Err(e),
            };
            let meta = file.metadata()?;
            self.id = (meta.dev(), meta.ino());
            self.reader = Some(BufReader::new(file));
        }
    }

    /// The complete records up to the end of the open file.
    fn drain(&mut self, source: usize, into: &mut Vec<Record>) -> std::io::Result<()> {
        let Some(r) = self.reader.as_mut() else {
            return Ok(());
        };
        loop {
            let n = r.read_until(b'\n', &mut self.partial)?;
            if n == 0 || !self.partial.ends_with(b"\n") {
                return Ok(());
            }
            if let Some(rec) = Record::parse(&self.partial, source) {
                into.push(rec);
            }
            self.partial.clear();
        }
    }
}

struct Record {
    t: i64,
    stderr: bool,
    text: String,
    /// Index of the source it came from.
    source: usize,
}

impl Record {
    fn parse(line: &[u8], source: usize) -> Option<Record> {
        let rec: serde_json::Value = serde_json::from_slice(line).ok()?;
        Some(Record {
            t: rec["t"].as_i64().unwrap_or(0),
            stderr: rec["s"] == "stderr",
            text: rec["log"].as_str()?.to_string(),
            source,
        })
    }
}

fn last(mut recs: Vec<Record>, tail: Option<usize>) -> Vec<Record> {
    if let Some(n) = tail {
        recs.drain(..recs.len().saturating_sub(n));
    }
    recs
}

/// Prints records as they came (stderr ones to stderr), an instance's
/// prefixed with its name and always ending their line.
fn emit(sources: &[Source], recs: Vec<Record>) -> Result<()> {
    let mut out = std::io::stdout().lock();
    let mut err = std::io::stderr().lock();
    for rec in recs {
        let w: &mut dyn Write = if rec.stderr { &mut err } else { &mut out };
        match sources.get(rec.source).and_then(|s| s.prefix.as_deref()) {
            Some(prefix) => {
                let nl = if rec.text.ends_with('\n') { "" } else { "\n" };
                write!(w, "{prefix} | {}{nl}", rec.text)?;
            }
            None => w.write_all(rec.text.as_bytes())?,
        }
    }
    out.flush()?;
    Ok(())
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

    fn records(path: &Path) -> Vec<serde_json::Value> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[test]
    fn pump_writes_records() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/x.log");
        let log = open_log(&path).unwrap();
        pump(&b"one\ntwo"[..], Stream::Stderr, Some(log), false).unwrap();
        let recs = records(&path);
        assert_eq!(recs.len(), 2);
        assert_eq!(recs[0]["log"], "one\n");
        assert_eq!(recs[1]["log"], "two");
        assert_eq!(recs[1]["s"], "stderr");
    }

    #[test]
    fn writer_rotates_past_its_limit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.log");
        let log = Arc::new(Mutex::new(LogWriter::open(&path, 200).unwrap()));
        let lines: String = (0..10).map(|i| format!("line {i}\n")).collect();
        pump(lines.as_bytes(), Stream::Stdout, Some(log.clone()), false).unwrap();
        let (old, new) = (records(&rotated(&path)), records(&path));
        assert!(std::fs::metadata(&path).unwrap().len() <= 200);
        assert!(std::fs::metadata(rotated(&path)).unwrap().len() <= 200);
        // Only the last two files' worth is kept, in order, up to the end.
        let kept: Vec<&str> = old
            .iter()
            .chain(&new)
            .map(|r| r["log"].as_str().unwrap())
            .collect();
        assert!(kept.len() < 10 && kept.len() >= 2, "{kept:?}");
        assert_eq!(kept.last(), Some(&"line 9\n"));
        let first: usize = kept[0][5..6].parse().unwrap();
        let expected: Vec<String> = (first..10).map(|i| format!("line {i}\n")).collect();
        assert_eq!(kept, expected);
        // Reopened (a new monitor), it appends and counts what is there.
        let size = std::fs::metadata(&path).unwrap().len();
        assert_eq!(LogWriter::open(&path, 200).unwrap().size, size);
    }

    #[test]
    fn tail_follows_rotation_and_waits_for_whole_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.log");
        let mut src = Source::new(Some("x".into()), path.clone());
        let mut recs = Vec::new();
        assert!(!src.tail.poll(3, &mut recs).unwrap(), "no file yet");
        // 64 bytes fit, the third record does not: it starts a new file.
        let mut w = LogWriter::open(&path, 80).unwrap();
        w.write(b"{\"t\":1,\"s\":\"stdout\",\"log\":\"a\\n\"}\n")
            .unwrap();
        // Half a record: not read until it is whole.
        w.write(br#"{"t":2,"s":"stderr","#).unwrap();
        assert!(src.tail.poll(3, &mut recs).unwrap());
        assert_eq!(recs.len(), 1);
        assert_eq!((recs[0].t, recs[0].source, &*recs[0].text), (1, 3, "a\n"));
        w.write(b"\"log\":\"b\"}\n").unwrap();
        // Rotates: the rest of the old file, then the new one from the top.
        w.write(b"{\"t\":3,\"s\":\"stdout\",\"log\":\"c\\n\"}\n")
            .unwrap();
        assert!(rotated(&path).exists());
        assert!(src.tail.poll(3, &mut recs).unwrap());
        let got: Vec<(i64, bool)> = recs.iter().map(|r| (r.t, r.stderr)).collect();
        assert_eq!(got, [(1, false), (2, true), (3, false)]);
        std::fs::remove_file(&path).unwrap();
        assert!(!src.tail.poll(3, &mut recs).unwrap());
    }

    fn file(dir: &Path, name: &str, len: usize, age_s: u64) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, vec![b'x'; len]).unwrap();
        let t = std::time::SystemTime::now() - Duration::from_secs(age_s);
        File::options()
            .write(true)
            .open(&p)
            .unwrap()
            .set_modified(t)
            .unwrap();
        p
    }

    #[test]
    fn prune_deletes_oldest_first_but_not_live_files() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let live = file(d, "a-1.log", 40, 500);
        let old1 = file(d, "a-1.log.1", 40, 600);
        let b = file(d, "b-2.log", 40, 300);
        let c = file(d, "c-3.log", 40, 100);
        let live_set: HashSet<PathBuf> = [live.clone()].into();
        // 160 bytes, 100 allowed: the two oldest that are not live go.
        prune(d, 100, &live_set).unwrap();
        assert!(live.exists() && c.exists());
        assert!(!old1.exists() && !b.exists());
        // Within the budget: nothing goes.
        prune(d, 100, &live_set).unwrap();
        assert!(live.exists() && c.exists());
        // Over it with only a live file left to spare: that one stays.
        prune(d, 10, &live_set).unwrap();
        assert!(live.exists() && !c.exists());
        // No directory (the service never ran): nothing to do.
        prune(&d.join("none"), 10, &live_set).unwrap();
    }

    #[test]
    fn instances_are_named_by_their_files() {
        let dir = tempfile::tempdir().unwrap();
        for f in ["a-1.log", "a-1.log.1", "b-2.log.1", "junk"] {
            std::fs::write(dir.path().join(f), "").unwrap();
        }
        let names: Vec<String> = instances_in(dir.path()).unwrap().into_iter().collect();
        assert_eq!(names, ["a-1", "b-2"]);
    }
}
