//! The build context of `skiff build CONTEXT`: the directory COPY/ADD read
//! from, with its `.dockerignore` applied.
//!
//! Docker sends the context (minus what `.dockerignore` excludes) to the
//! builder, so an excluded file does not exist as far as the Dockerfile is
//! concerned. We read the directory in place instead, and reproduce that:
//! excluded paths never match a COPY source and are left out of walks and
//! digests. `.dockerignore` patterns follow moby/patternmatcher (including its
//! quirks) so a context means the same here as under `docker build`; COPY
//! sources are globbed per path component like Go's `filepath.Match`.
//!
//! Because we read the host directly, symlinks matter more than for Docker:
//! a named source, or a directory on the way to it, that leads out of the
//! context is refused rather than read from the host.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::fs::{self, File, Metadata};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

use skiff_core::{Digest, DigestWriter};

/// The kernel's limit on symlinks in one lookup; more means a loop.
const MAX_LINKS: usize = 40;

#[derive(Debug, thiserror::Error)]
pub enum ContextError {
    #[error("build context {0}: not a directory")]
    NotADirectory(PathBuf),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{file}:{line}: bad pattern {pattern:?}: {reason}")]
    BadIgnorePattern {
        file: PathBuf,
        line: usize,
        pattern: String,
        reason: String,
    },
    #[error("bad source pattern {pattern:?}: {reason}")]
    BadSourcePattern { pattern: String, reason: String },
    #[error("\"{0}\": forbidden path outside the build context")]
    OutsideContext(String),
    #[error("\"{0}\": not found in the build context (or excluded by .dockerignore)")]
    NotFound(String),
    #[error("{path}: symlink to {target} points outside the build context")]
    SymlinkOutside { path: PathBuf, target: PathBuf },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> ContextError + '_ {
    move |source| ContextError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A build context directory with its .dockerignore applied.
#[derive(Debug)]
pub struct BuildContext {
    /// Canonical, so absolute symlink targets can be compared against it.
    root: PathBuf,
    /// The root as the caller spelled it (made absolute): a link target may
    /// use this spelling when the canonical one differs.
    alias: PathBuf,
    ignore: Ignore,
}

/// One thing a copy brings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Path relative to the walked source (empty for the source itself).
    pub rel: PathBuf,
    /// Host path (under the context root, with a symlinked named source already resolved).
    pub path: PathBuf,
    pub kind: EntryKind,
    /// Permission bits including setuid, setgid and sticky (`st_mode & 0o7777`).
    pub mode: u32,
    /// Modification time: seconds and nanoseconds since the epoch.
    pub mtime: (i64, i64),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    File {
        size: u64,
    },
    Dir,
    /// Not followed: copied as a link, as Docker does.
    Symlink {
        target: PathBuf,
    },
    /// A fifo, socket or device: copies skip it, but callers may want to say so.
    Other,
}

impl BuildContext {
    /// Opens `root` (must be a directory). Reads `ignore_file` if given (Docker's
    /// `<Dockerfile>.dockerignore` next to the Dockerfile), else `root/.dockerignore` if present.
    pub fn open(root: &Path, ignore_file: Option<&Path>) -> Result<BuildContext, ContextError> {
        let canonical = fs::canonicalize(root).map_err(io_err(root))?;
        if !canonical.is_dir() {
            return Err(ContextError::NotADirectory(root.to_path_buf()));
        }
        let alias = std::path::absolute(root).map_err(io_err(root))?;
        let ignore = match ignore_file {
            Some(file) => Ignore::read(file)?,
            None => {
                let file = canonical.join(".dockerignore");
                match fs::symlink_metadata(&file) {
                    Ok(_) => Ignore::read(&file)?,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => Ignore::default(),
                    Err(e) => return Err(io_err(&file)(e)),
                }
            }
        };
        Ok(BuildContext {
            root: canonical,
            alias,
            ignore,
        })
    }

    /// The context directory, canonicalized.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// True when `rel` (relative to root, `/`-separated) is excluded by .dockerignore.
    pub fn is_excluded(&self, rel: &Path) -> bool {
        let rel = rel_string(rel);
        !rel.is_empty() && self.ignore.matches(&rel)
    }

    /// Expands one COPY/ADD source as written in the Dockerfile into the
    /// matching paths relative to the root, sorted, excluded ones dropped.
    ///
    /// A leading `/` means the context root; `.` (or `/`) means the whole
    /// context and yields `"."`. Globs (`*`, `?`, `[a-z]`, `[^x]`, `\`
    /// escapes) work per path component as in Go's `filepath.Match`.
    pub fn expand_source(&self, pattern: &str) -> Result<Vec<PathBuf>, ContextError> {
        let comps =
            clean_source(pattern).ok_or_else(|| ContextError::OutsideContext(pattern.into()))?;
        if comps.is_empty() {
            return Ok(vec![PathBuf::from(".")]);
        }
        let mut candidates = vec![PathBuf::new()];
        for (i, comp) in comps.iter().enumerate() {
            let last = i + 1 == comps.len();
            if !has_meta(comp) {
                candidates.iter_mut().for_each(|c| c.push(comp));
                continue;
            }
            let glob = Glob::component(comp).map_err(|reason| ContextError::BadSourcePattern {
                pattern: pattern.into(),
                reason,
            })?;
            let mut next = Vec::new();
            for prefix in &candidates {
                for name in self.list_dir(prefix)? {
                    if !glob.matches(&name.to_string_lossy()) {
                        continue;
                    }
                    let cand = prefix.join(&name);
                    // A wildcard that hits a non-directory, or a link leading out
                    // of the context, on the way cannot lead to a source: skip it
                    // rather than fail, since nobody named it.
                    if !last && !self.leads_to_dir(&cand)? {
                        continue;
                    }
                    next.push(cand);
                }
            }
            candidates = next;
        }
        let mut found = Vec::new();
        for cand in candidates {
            let Some(real) = self.resolve(&cand)? else {
                continue;
            };
            let is_dir = fs::metadata(self.host(&real)).is_ok_and(|m| m.is_dir());
            if self.drops(&cand, is_dir) || self.drops(&real, is_dir) {
                continue;
            }
            found.push(cand);
        }
        found.sort();
        found.dedup();
        if found.is_empty() {
            return Err(ContextError::NotFound(pattern.into()));
        }
        Ok(found)
    }

    /// Everything a copy of source `rel` (a result of `expand_source`) brings:
    /// the source itself and, for a directory, every non-excluded descendant,
    /// parents before children, siblings sorted by name. Symlinks below the
    /// source are reported, not followed.
    pub fn walk(&self, rel: &Path) -> Result<Vec<Entry>, ContextError> {
        let shown = rel.display().to_string();
        let real = self.resolve(rel)?.ok_or(ContextError::NotFound(shown))?;
        let path = self.host(&real);
        let meta = fs::symlink_metadata(&path).map_err(io_err(&path))?;
        let mut out = vec![entry(PathBuf::new(), path.clone(), &meta)?];
        if meta.is_dir() {
            self.walk_dir(&path, &real, Path::new(""), &mut out, &mut Vec::new())?;
        }
        Ok(out)
    }

    /// sha256 over what `walk` of each of `sources` yields: paths, kinds,
    /// permission bits, link targets and file contents, but not mtimes or
    /// owners. It is the build cache key: `touch` must not invalidate it,
    /// any content or mode change must. The source names count, in order.
    pub fn digest(&self, sources: &[PathBuf]) -> Result<Digest, ContextError> {
        let walks = sources
            .iter()
            .map(|s| Ok((s.clone(), self.walk(s)?)))
            .collect::<Result<Vec<_>, ContextError>>()?;
        Self::digest_walks(&walks)
    }

    /// [`BuildContext::digest`] of sources already walked: each source
    /// with what [`BuildContext::walk`] gave for it.
    pub fn digest_walks(walks: &[(PathBuf, Vec<Entry>)]) -> Result<Digest, ContextError> {
        let mut w = DigestWriter::new(io::sink());
        let hashing = |e| io_err(Path::new("<digest>"))(e);
        w.write_all(b"skiff-context-v1").map_err(hashing)?;
        for (source, entries) in walks {
            w.write_all(b"S").map_err(hashing)?;
            field(&mut w, source.as_os_str().as_bytes()).map_err(hashing)?;
            for e in entries {
                hash_entry(&mut w, e)?;
            }
        }
        Ok(w.finish().1)
    }

    fn host(&self, real: &Path) -> PathBuf {
        if real.as_os_str().is_empty() {
            self.root.clone()
        } else {
            self.root.join(real)
        }
    }

    /// Whether .dockerignore removes `rel` entirely: an excluded directory
    /// stays when an exception may re-include something below it.
    fn drops(&self, rel: &Path, is_dir: bool) -> bool {
        let rel = rel_string(rel);
        if rel.is_empty() || !self.ignore.matches(&rel) {
            return false;
        }
        !(is_dir && self.ignore.may_reinclude_below(&rel))
    }

    /// The names in directory `named` (following links), or none when it is
    /// not a directory.
    fn list_dir(&self, named: &Path) -> Result<Vec<OsString>, ContextError> {
        let Some(real) = self.resolve(named)? else {
            return Ok(Vec::new());
        };
        let dir = self.host(&real);
        if !fs::metadata(&dir).is_ok_and(|m| m.is_dir()) {
            return Ok(Vec::new());
        }
        let mut names = Vec::new();
        for item in fs::read_dir(&dir).map_err(io_err(&dir))? {
            names.push(item.map_err(io_err(&dir))?.file_name());
        }
        names.sort();
        Ok(names)
    }

    fn leads_to_dir(&self, named: &Path) -> Result<bool, ContextError> {
        match self.resolve(named) {
            Ok(Some(real)) => Ok(fs::metadata(self.host(&real)).is_ok_and(|m| m.is_dir())),
            Ok(None) | Err(ContextError::SymlinkOutside { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Follows `rel` from the root the way the kernel would, symlinks
    /// included, but refusing to leave the context. Returns the real path
    /// relative to the root, or `None` when something on the way is missing.
    fn resolve(&self, rel: &Path) -> Result<Option<PathBuf>, ContextError> {
        let mut todo: VecDeque<OsString> = rel
            .components()
            .filter_map(|c| match c {
                Component::Normal(n) => Some(n.to_os_string()),
                Component::ParentDir => Some("..".into()),
                _ => None,
            })
            .collect();
        let mut done = PathBuf::new();
        let mut links = 0;
        let mut last_link: Option<(PathBuf, PathBuf)> = None;
        while let Some(name) = todo.pop_front() {
            if name == ".." {
                // Only a link target brings `..` here: `rel` is clean.
                if !done.pop() {
                    let (path, target) = last_link.unwrap_or_default();
                    return Err(ContextError::SymlinkOutside { path, target });
                }
                continue;
            }
            let cand = done.join(&name);
            let host = self.host(&cand);
            let meta = match fs::symlink_metadata(&host) {
                Ok(m) => m,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
                Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => return Ok(None),
                Err(e) => return Err(io_err(&host)(e)),
            };
            if !meta.file_type().is_symlink() {
                done = cand;
                continue;
            }
            links += 1;
            if links > MAX_LINKS {
                return Err(io_err(&host)(io::Error::from_raw_os_error(libc::ELOOP)));
            }
            let target = fs::read_link(&host).map_err(io_err(&host))?;
            let rest = if target.is_absolute() {
                let inside = [&self.root, &self.alias]
                    .iter()
                    .find_map(|r| target.strip_prefix(r).ok());
                match inside {
                    Some(inside) => {
                        done = PathBuf::new();
                        inside
                    }
                    None => {
                        return Err(ContextError::SymlinkOutside { path: cand, target });
                    }
                }
            } else {
                target.as_path()
            };
            let mut prefix: Vec<OsString> = rest
                .components()
                .filter_map(|c| match c {
                    Component::Normal(n) => Some(n.to_os_string()),
                    Component::ParentDir => Some("..".into()),
                    _ => None,
                })
                .collect();
            prefix.extend(todo);
            todo = prefix.into();
            last_link = Some((cand, target.clone()));
        }
        Ok(Some(done))
    }

    /// Appends the entries below directory `host` (real path `real` under the
    /// root, `rel` under the walked source). `pending` holds excluded
    /// directories we descended into for an exception: they are emitted only
    /// once something below them is, so the copy can create them.
    fn walk_dir(
        &self,
        host: &Path,
        real: &Path,
        rel: &Path,
        out: &mut Vec<Entry>,
        pending: &mut Vec<Entry>,
    ) -> Result<(), ContextError> {
        let mut names = Vec::new();
        for item in fs::read_dir(host).map_err(io_err(host))? {
            names.push(item.map_err(io_err(host))?.file_name());
        }
        names.sort();
        for name in names {
            let path = host.join(&name);
            let meta = fs::symlink_metadata(&path).map_err(io_err(&path))?;
            let child_real = real.join(&name);
            let child_rel = rel.join(&name);
            let e = entry(child_rel.clone(), path.clone(), &meta)?;
            let key = rel_string(&child_real);
            if self.ignore.matches(&key) {
                if meta.is_dir() && self.ignore.may_reinclude_below(&key) {
                    let depth = pending.len();
                    pending.push(e);
                    self.walk_dir(&path, &child_real, &child_rel, out, pending)?;
                    pending.truncate(depth);
                }
                continue;
            }
            out.append(pending);
            out.push(e);
            if meta.is_dir() {
                self.walk_dir(&path, &child_real, &child_rel, out, pending)?;
            }
        }
        Ok(())
    }
}

fn entry(rel: PathBuf, path: PathBuf, meta: &Metadata) -> Result<Entry, ContextError> {
    let at = path.clone();
    Entry::from_metadata(rel, path, meta).map_err(io_err(&at))
}

impl Entry {
    /// The entry for `path`, whose `lstat` is `meta` (a link's target is
    /// read, never followed).
    pub(crate) fn from_metadata(rel: PathBuf, path: PathBuf, meta: &Metadata) -> io::Result<Entry> {
        let ft = meta.file_type();
        let kind = if ft.is_symlink() {
            EntryKind::Symlink {
                target: fs::read_link(&path)?,
            }
        } else if ft.is_dir() {
            EntryKind::Dir
        } else if ft.is_file() {
            EntryKind::File { size: meta.len() }
        } else {
            EntryKind::Other
        };
        Ok(Entry {
            rel,
            path,
            kind,
            mode: meta.mode() & 0o7777,
            mtime: (meta.mtime(), meta.mtime_nsec()),
        })
    }
}

/// Writes a length-prefixed field, so no two different inputs hash alike.
fn field(w: &mut impl Write, bytes: &[u8]) -> io::Result<()> {
    w.write_all(&(bytes.len() as u64).to_le_bytes())?;
    w.write_all(bytes)
}

fn hash_entry(w: &mut impl Write, e: &Entry) -> Result<(), ContextError> {
    let at = io_err(&e.path);
    let result = (|| {
        let tag: &[u8] = match e.kind {
            EntryKind::File { .. } => b"F",
            EntryKind::Dir => b"D",
            EntryKind::Symlink { .. } => b"L",
            EntryKind::Other => b"O",
        };
        w.write_all(tag)?;
        field(w, e.rel.as_os_str().as_bytes())?;
        w.write_all(&e.mode.to_le_bytes())?;
        match &e.kind {
            EntryKind::File { size } => {
                w.write_all(&size.to_le_bytes())?;
                // Exactly `size` bytes, streamed: a file that changes size
                // under us would otherwise break the framing.
                let copied = io::copy(&mut File::open(&e.path)?.take(*size), w)?;
                if copied != *size {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "file shrank while hashing",
                    ));
                }
            }
            EntryKind::Symlink { target } => field(w, target.as_os_str().as_bytes())?,
            EntryKind::Dir | EntryKind::Other => {}
        }
        Ok(())
    })();
    result.map_err(at)
}

/// `rel` as the `/`-separated string .dockerignore patterns see, without
/// `.` components or a leading `/`; empty for the root.
fn rel_string(rel: &Path) -> String {
    let parts: Vec<_> = rel
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_string_lossy()),
            Component::ParentDir => Some("..".into()),
            _ => None,
        })
        .collect();
    parts.join("/")
}

/// Lexically cleans a COPY source (a leading `/` is the context root).
/// `None` when it climbs out of the context.
fn clean_source(pattern: &str) -> Option<Vec<String>> {
    let mut out: Vec<String> = Vec::new();
    for part in pattern.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                out.pop()?;
            }
            _ => out.push(part.to_string()),
        }
    }
    Some(out)
}

fn has_meta(s: &str) -> bool {
    s.contains(['*', '?', '[', '\\'])
}

/// Go's `filepath.Clean` on a `/`-separated path.
fn go_clean(p: &str) -> String {
    let rooted = p.starts_with('/');
    let mut out: Vec<&str> = Vec::new();
    for part in p.split('/') {
        match part {
            "" | "." => {}
            ".." => match out.last() {
                Some(&last) if last != ".." => {
                    out.pop();
                }
                _ if rooted => {}
                _ => out.push(".."),
            },
            _ => out.push(part),
        }
    }
    let joined = out.join("/");
    match (rooted, joined.is_empty()) {
        (true, _) => format!("/{joined}"),
        (false, true) => ".".into(),
        (false, false) => joined,
    }
}

/// A parsed .dockerignore.
#[derive(Debug, Default)]
struct Ignore {
    patterns: Vec<Pattern>,
}

#[derive(Debug)]
struct Pattern {
    exclusion: bool,
    /// The cleaned text without `!`, `/`-separated.
    text: String,
    matcher: Matcher,
}

/// moby's four match types: most patterns are compared as strings, only
/// those with wildcards go through the glob matcher.
#[derive(Debug)]
enum Matcher {
    Exact,
    /// Pattern ends in `**`: the path starts with the rest.
    Prefix,
    /// Pattern starts with `**`: the path ends with the rest.
    Suffix,
    Glob(Glob),
}

impl Ignore {
    fn read(file: &Path) -> Result<Ignore, ContextError> {
        let bytes = fs::read(file).map_err(io_err(file))?;
        let text = String::from_utf8_lossy(&bytes);
        let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
        let mut patterns = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let bad = |reason: &str| ContextError::BadIgnorePattern {
                file: file.to_path_buf(),
                line: i + 1,
                pattern: line.to_string(),
                reason: reason.to_string(),
            };
            if let Some(p) = Pattern::parse(line).map_err(|r| bad(&r))? {
                patterns.push(p);
            }
        }
        Ok(Ignore { patterns })
    }

    /// moby's `MatchesOrParentMatches`: the last pattern matching `path` or
    /// one of its parents decides. An exception is only tried when the path
    /// is excluded so far, and an exclusion only when it is not.
    fn matches(&self, path: &str) -> bool {
        let parents: Vec<&str> = match path.rfind('/') {
            Some(i) => path[..i].split('/').collect(),
            None => Vec::new(),
        };
        let mut matched = false;
        for p in &self.patterns {
            if p.exclusion != matched {
                continue;
            }
            let hit =
                p.matches(path) || (1..=parents.len()).any(|n| p.matches(&parents[..n].join("/")));
            if hit {
                matched = !p.exclusion;
            }
        }
        matched
    }

    /// Whether some exception could match a path below directory `dir`, so
    /// an excluded `dir` must still be descended into. Generous (moby only
    /// looks at exceptions spelled with `dir/` as a prefix): the entries
    /// found are filtered one by one anyway.
    fn may_reinclude_below(&self, dir: &str) -> bool {
        let dir: Vec<&str> = dir.split('/').collect();
        self.patterns.iter().filter(|p| p.exclusion).any(|p| {
            let parts: Vec<&str> = p.text.split('/').collect();
            for (i, part) in parts.iter().enumerate() {
                if part.contains("**") {
                    return true;
                }
                let Some(d) = dir.get(i) else {
                    return true;
                };
                match Glob::component(part) {
                    Ok(g) if g.matches(d) => {}
                    _ => return false,
                }
            }
            false
        })
    }
}

impl Pattern {
    /// One .dockerignore line, as moby's `ignorefile.ReadAll` and
    /// `NewPatternMatcher` treat it; `None` for blanks and comments.
    fn parse(line: &str) -> Result<Option<Pattern>, String> {
        // moby checks for comments before trimming: " #x" is a pattern.
        if line.starts_with('#') {
            return Ok(None);
        }
        let mut text = line.trim();
        if text.is_empty() {
            return Ok(None);
        }
        let exclusion = text.starts_with('!');
        if exclusion {
            text = text[1..].trim();
        }
        if text.is_empty() {
            return Err("illegal exclusion pattern: \"!\"".into());
        }
        let mut text = go_clean(text);
        if text.len() > 1 && text.starts_with('/') {
            text.remove(0);
        }
        let matcher = compile(&text)?;
        Ok(Some(Pattern {
            exclusion,
            text,
            matcher,
        }))
    }

    fn matches(&self, path: &str) -> bool {
        match &self.matcher {
            Matcher::Exact => path == self.text,
            Matcher::Prefix => path.starts_with(&self.text[..self.text.len() - 2]),
            Matcher::Suffix => {
                let suffix = &self.text[2..];
                path.ends_with(suffix) || suffix.strip_prefix('/').is_some_and(|rest| path == rest)
            }
            Matcher::Glob(g) => g.matches(path),
        }
    }
}

/// moby's `Pattern.compile`, producing glob tokens instead of a regexp.
fn compile(text: &str) -> Result<Matcher, String> {
    #[derive(PartialEq)]
    enum Type {
        Exact,
        Prefix,
        Suffix,
        Regexp,
    }
    let mut ty = Type::Exact;
    let mut toks = Vec::new();
    let chars: Vec<char> = text.chars().collect();
    let mut pos = 0;
    let mut first = true;
    while pos < chars.len() {
        let ch = chars[pos];
        pos += 1;
        match ch {
            '*' if chars.get(pos) == Some(&'*') => {
                pos += 1;
                if chars.get(pos) == Some(&'/') {
                    pos += 1;
                }
                if pos == chars.len() {
                    if ty == Type::Exact {
                        ty = Type::Prefix;
                    } else {
                        toks.push(Tok::All);
                        ty = Type::Regexp;
                    }
                } else {
                    toks.push(Tok::DirPrefix);
                    ty = Type::Regexp;
                }
                if first {
                    ty = Type::Suffix;
                }
            }
            c => {
                if glob_token(c, &chars, &mut pos, &mut toks)? {
                    ty = Type::Regexp;
                }
            }
        }
        first = false;
    }
    Ok(match ty {
        Type::Exact => Matcher::Exact,
        Type::Prefix => Matcher::Prefix,
        Type::Suffix => Matcher::Suffix,
        Type::Regexp => Matcher::Glob(Glob { toks }),
    })
}

/// Whether `name` (one path component) matches `pattern` as Go's
/// `filepath.Match` does, for sources outside the context (`COPY --from`).
pub fn match_component(pattern: &str, name: &str) -> Result<bool, ContextError> {
    let glob = Glob::component(pattern).map_err(|reason| ContextError::BadSourcePattern {
        pattern: pattern.into(),
        reason,
    })?;
    Ok(glob.matches(name))
}

/// Whether a source pattern has wildcards.
pub fn has_wildcards(pattern: &str) -> bool {
    has_meta(pattern)
}

/// The token for `ch` (just read; `pos` is after it) of a glob: `*`, `?`,
/// a `\\` escape, a `[...]` class or a literal. True when it is a wildcard.
fn glob_token(
    ch: char,
    chars: &[char],
    pos: &mut usize,
    toks: &mut Vec<Tok>,
) -> Result<bool, String> {
    match ch {
        '*' => toks.push(Tok::Star),
        '?' => toks.push(Tok::One),
        '\\' => {
            let c = chars.get(*pos).ok_or("trailing backslash")?;
            *pos += 1;
            toks.push(Tok::Lit(*c));
            return Ok(false);
        }
        '[' => {
            let (class, used) = parse_class(&chars[*pos..])?;
            *pos += used;
            toks.push(class);
        }
        c => {
            toks.push(Tok::Lit(c));
            return Ok(false);
        }
    }
    Ok(true)
}

/// Parses a character class after its `[`: `^` negates, `a-z` is a range,
/// `\` escapes. Returns the token and how many chars it used (with `]`).
fn parse_class(chars: &[char]) -> Result<(Tok, usize), String> {
    let mut pos = 0;
    let negated = chars.first() == Some(&'^');
    if negated {
        pos += 1;
    }
    let mut ranges = Vec::new();
    let read = |pos: &mut usize| -> Result<char, String> {
        let c = match chars.get(*pos) {
            Some('\\') => {
                *pos += 1;
                chars.get(*pos).copied()
            }
            Some('-') | Some(']') => None,
            other => other.copied(),
        };
        *pos += 1;
        c.ok_or_else(|| "bad character class".to_string())
    };
    loop {
        match chars.get(pos) {
            None => return Err("unterminated character class".into()),
            Some(']') if !ranges.is_empty() => {
                return Ok((Tok::Class { negated, ranges }, pos + 1))
            }
            _ => {}
        }
        let lo = read(&mut pos)?;
        let mut hi = lo;
        if chars.get(pos) == Some(&'-') {
            pos += 1;
            hi = read(&mut pos)?;
        }
        ranges.push((lo, hi));
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Lit(char),
    /// `*`: any run of characters but `/`.
    Star,
    /// `?`: one character but `/`.
    One,
    Class {
        negated: bool,
        ranges: Vec<(char, char)>,
    },
    /// `**/` inside a .dockerignore pattern: nothing, or anything ending in `/`.
    DirPrefix,
    /// A trailing `**`: anything.
    All,
}

#[derive(Debug, Clone)]
struct Glob {
    toks: Vec<Tok>,
}

impl Glob {
    /// One path component of a COPY source, as Go's `filepath.Match`.
    fn component(pattern: &str) -> Result<Glob, String> {
        let chars: Vec<char> = pattern.chars().collect();
        let mut toks = Vec::new();
        let mut pos = 0;
        while pos < chars.len() {
            let ch = chars[pos];
            pos += 1;
            glob_token(ch, &chars, &mut pos, &mut toks)?;
        }
        Ok(Glob { toks })
    }

    fn matches(&self, s: &str) -> bool {
        let s: Vec<char> = s.chars().collect();
        // memo[t * (n + 1) + i]: whether toks[t..] matches s[i..].
        let n = s.len();
        let mut memo = vec![None; (self.toks.len() + 1) * (n + 1)];
        self.match_at(0, 0, &s, &mut memo)
    }

    fn match_at(&self, t: usize, i: usize, s: &[char], memo: &mut [Option<bool>]) -> bool {
        let key = t * (s.len() + 1) + i;
        if let Some(v) = memo[key] {
            return v;
        }
        let rest = &s[i..];
        let v = match self.toks.get(t) {
            None => rest.is_empty(),
            Some(Tok::Lit(c)) => rest.first() == Some(c) && self.match_at(t + 1, i + 1, s, memo),
            Some(Tok::One) => {
                rest.first().is_some_and(|&c| c != '/') && self.match_at(t + 1, i + 1, s, memo)
            }
            Some(Tok::Class { negated, ranges }) => {
                rest.first()
                    .is_some_and(|&c| ranges.iter().any(|&(lo, hi)| lo <= c && c <= hi) != *negated)
                    && self.match_at(t + 1, i + 1, s, memo)
            }
            Some(Tok::Star) => {
                let run = rest.iter().take_while(|&&c| c != '/').count();
                (0..=run).any(|k| self.match_at(t + 1, i + k, s, memo))
            }
            Some(Tok::DirPrefix) => {
                self.match_at(t + 1, i, s, memo)
                    || (0..rest.len())
                        .any(|k| rest[k] == '/' && self.match_at(t + 1, i + k + 1, s, memo))
            }
            Some(Tok::All) => true,
        };
        memo[key] = Some(v);
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{symlink, PermissionsExt};

    fn ignore(lines: &str) -> Ignore {
        let mut patterns = Vec::new();
        for line in lines.lines() {
            if let Some(p) = Pattern::parse(line).unwrap() {
                patterns.push(p);
            }
        }
        Ignore { patterns }
    }

    /// A context with `files` (path, content); paths ending in `/` are directories.
    fn context(
        files: &[(&str, &str)],
        dockerignore: Option<&str>,
    ) -> (tempfile::TempDir, BuildContext) {
        let dir = tempfile::tempdir().unwrap();
        for (path, content) in files {
            let full = dir.path().join(path);
            if path.ends_with('/') {
                fs::create_dir_all(&full).unwrap();
            } else {
                fs::create_dir_all(full.parent().unwrap()).unwrap();
                fs::write(&full, content).unwrap();
            }
        }
        if let Some(text) = dockerignore {
            fs::write(dir.path().join(".dockerignore"), text).unwrap();
        }
        let ctx = BuildContext::open(dir.path(), None).unwrap();
        (dir, ctx)
    }

    fn expand(ctx: &BuildContext, pattern: &str) -> Vec<String> {
        ctx.expand_source(pattern)
            .unwrap()
            .iter()
            .map(|p| p.display().to_string())
            .collect()
    }

    fn walked(ctx: &BuildContext, rel: &str) -> Vec<String> {
        ctx.walk(Path::new(rel))
            .unwrap()
            .iter()
            .map(|e| e.rel.display().to_string())
            .collect()
    }

    #[test]
    fn ignore_last_match_wins() {
        let ig = ignore("*.md\n!README.md\n");
        assert!(ig.matches("CHANGES.md"));
        assert!(!ig.matches("README.md"));
        assert!(!ig.matches("docs/x.md"), "* does not cross /");
        // Order matters: an exclusion after the exception wins again.
        let ig = ignore("!README.md\n*.md\n");
        assert!(ig.matches("README.md"));
    }

    #[test]
    fn ignore_parent_directories() {
        let ig = ignore("build\n");
        assert!(ig.matches("build"));
        assert!(ig.matches("build/x/y"));
        assert!(!ig.matches("builder"));
        assert!(!ig.matches("src/build"));
        let ig = ignore("/build/\n");
        assert!(ig.matches("build/x"));
    }

    #[test]
    fn ignore_double_star() {
        let ig = ignore("**/*.pyc\n");
        assert!(ig.matches("a/b/c.pyc"));
        assert!(ig.matches("c.pyc"));
        assert!(!ig.matches("c.py"));
        let ig = ignore("a/**/z\n");
        assert!(ig.matches("a/z"));
        assert!(ig.matches("a/b/c/z"));
        assert!(!ig.matches("b/z"));
        let ig = ignore("logs/**\n");
        assert!(ig.matches("logs/x"));
        assert!(ig.matches("logs/a/b"));
        assert!(!ig.matches("log"));
        let ig = ignore("**/node_modules\n");
        assert!(ig.matches("node_modules"));
        assert!(ig.matches("web/node_modules/x.js"));
        assert!(!ig.matches("xnode_modules"));
    }

    #[test]
    fn ignore_file_syntax() {
        let ig = ignore("# a comment\n\n   \n  tmp  \n?x\n[a-c].txt\n[^a].log\n");
        assert_eq!(ig.patterns.len(), 4);
        assert!(ig.matches("tmp/q"));
        assert!(ig.matches("ax") && !ig.matches("a/x"));
        assert!(ig.matches("b.txt") && !ig.matches("d.txt"));
        assert!(ig.matches("b.log") && !ig.matches("a.log"));
        assert!(Pattern::parse("!").is_err());
        assert!(Pattern::parse("[a").is_err());
        // Cleaned like filepath.Clean.
        let ig = ignore("./a/../b//c\n");
        assert!(ig.matches("b/c"));
    }

    #[test]
    fn expands_globs_and_literals() {
        let (_d, ctx) = context(
            &[
                ("a.txt", ""),
                ("b.txt", ""),
                ("c.md", ""),
                ("src/one/x", ""),
                ("src/two/x", ""),
                ("src/two/y", ""),
                ("src/file", ""),
            ],
            None,
        );
        assert_eq!(expand(&ctx, "*.txt"), ["a.txt", "b.txt"]);
        assert_eq!(expand(&ctx, "src/*/x"), ["src/one/x", "src/two/x"]);
        assert_eq!(expand(&ctx, "?.md"), ["c.md"]);
        assert_eq!(expand(&ctx, "[ab].txt"), ["a.txt", "b.txt"]);
        assert_eq!(expand(&ctx, "[^a].txt"), ["b.txt"]);
        assert_eq!(expand(&ctx, "/src/one/x"), ["src/one/x"]);
        assert_eq!(expand(&ctx, "./src/../c.md"), ["c.md"]);
        assert_eq!(expand(&ctx, "."), ["."]);
        assert_eq!(expand(&ctx, "/"), ["."]);
    }

    #[test]
    fn refuses_climbing_out() {
        let (_d, ctx) = context(&[("a", "")], None);
        for p in ["../x", "a/../../x", ".."] {
            assert!(
                matches!(ctx.expand_source(p), Err(ContextError::OutsideContext(_))),
                "{p}"
            );
        }
    }

    #[test]
    fn not_found_names_the_source() {
        let (_d, ctx) = context(&[("a", ""), ("secret", "")], Some("secret\n"));
        let err = ctx.expand_source("nope*").unwrap_err();
        assert_eq!(
            err.to_string(),
            "\"nope*\": not found in the build context (or excluded by .dockerignore)"
        );
        assert!(matches!(
            ctx.expand_source("missing"),
            Err(ContextError::NotFound(_))
        ));
        assert!(matches!(
            ctx.expand_source("secret"),
            Err(ContextError::NotFound(_))
        ));
        assert!(matches!(
            ctx.expand_source("a/b"),
            Err(ContextError::NotFound(_))
        ));
    }

    #[test]
    fn symlinks_as_sources() {
        let (d, ctx) = context(&[("sub/file", "hi"), ("sub/other", "")], None);
        symlink("/etc", d.path().join("link")).unwrap();
        symlink("sub/file", d.path().join("ok")).unwrap();
        symlink("../..", d.path().join("sub/up")).unwrap();
        symlink("sub", d.path().join("dirlink")).unwrap();
        match ctx.expand_source("link") {
            Err(ContextError::SymlinkOutside { path, target }) => {
                assert_eq!(path, Path::new("link"));
                assert_eq!(target, Path::new("/etc"));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            ctx.expand_source("link/passwd"),
            Err(ContextError::SymlinkOutside { .. })
        ));
        assert!(matches!(
            ctx.expand_source("sub/up"),
            Err(ContextError::SymlinkOutside { .. })
        ));
        assert_eq!(expand(&ctx, "ok"), ["ok"]);
        let entries = ctx.walk(Path::new("ok")).unwrap();
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].path, ctx.root().join("sub/file"));
        assert_eq!(entries[0].kind, EntryKind::File { size: 2 });
        // A linked directory on the way inside the context is followed.
        assert_eq!(expand(&ctx, "dirlink/f*"), ["dirlink/file"]);
    }

    #[test]
    fn walk_reports_symlinks_without_following() {
        let (d, ctx) = context(
            &[("dir/a", "x"), ("dir/sub/b", "y"), ("elsewhere/big", "z")],
            None,
        );
        symlink("../elsewhere", d.path().join("dir/link")).unwrap();
        symlink("/etc", d.path().join("dir/out")).unwrap();
        assert_eq!(
            walked(&ctx, "dir"),
            ["", "a", "link", "out", "sub", "sub/b"]
        );
        let entries = ctx.walk(Path::new("dir")).unwrap();
        assert_eq!(entries[0].kind, EntryKind::Dir);
        assert_eq!(
            entries[3].kind,
            EntryKind::Symlink {
                target: PathBuf::from("/etc")
            }
        );
    }

    #[test]
    fn bang_in_class_is_literal_as_in_go() {
        let (_d, ctx) = context(&[("a", ""), ("b", ""), ("!", "")], None);
        // Go's filepath.Match negates only with `^`.
        assert_eq!(expand(&ctx, "[!a]"), ["!", "a"]);
        assert_eq!(expand(&ctx, "[^a]"), ["!", "b"]);
        assert_eq!(expand(&ctx, "\\!"), ["!"]);
    }

    #[test]
    fn links_are_judged_by_where_they_lead() {
        let (d, ctx) = context(&[("secret/key", ""), ("pub/x", "")], Some("secret\n"));
        symlink("secret", d.path().join("alias")).unwrap();
        symlink("/etc", d.path().join("pub/out")).unwrap();
        // The real path is excluded, whatever the link is called.
        assert!(matches!(
            ctx.expand_source("alias/key"),
            Err(ContextError::NotFound(_))
        ));
        // A wildcard that lands on a link leading out is refused too...
        assert!(matches!(
            ctx.expand_source("pub/*"),
            Err(ContextError::SymlinkOutside { .. })
        ));
        // ...but one that only passes through it on the way is skipped.
        assert_eq!(expand(&ctx, "*/x"), ["pub/x"]);
    }

    #[test]
    fn walk_reports_special_files() {
        let (d, ctx) = context(&[("dir/", "")], None);
        let _sock = std::os::unix::net::UnixListener::bind(d.path().join("dir/sock")).unwrap();
        let entries = ctx.walk(Path::new("dir")).unwrap();
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[1].kind, EntryKind::Other);
    }

    #[test]
    fn walk_skips_excluded_and_reincludes_exceptions() {
        let (_d, ctx) = context(
            &[
                ("app/main.rs", ""),
                ("app/target/big", ""),
                ("app/notes.md", ""),
                ("build/x/y", ""),
                ("cache/junk", ""),
                ("cache/deep/keep", ""),
                ("cache/deep/drop", ""),
            ],
            Some("app/target\n*/*.md\nbuild\ncache\n!cache/deep/keep\n"),
        );
        assert_eq!(
            walked(&ctx, "."),
            [
                "",
                ".dockerignore",
                "app",
                "app/main.rs",
                "cache",
                "cache/deep",
                "cache/deep/keep"
            ]
        );
        assert!(ctx.is_excluded(Path::new("build/x/y")));
        assert!(!ctx.is_excluded(Path::new("cache/deep/keep")));
        // Naming the excluded directory still finds what the exception keeps.
        assert_eq!(expand(&ctx, "cache"), ["cache"]);
        assert_eq!(walked(&ctx, "cache"), ["", "deep", "deep/keep"]);
        assert!(matches!(
            ctx.expand_source("build"),
            Err(ContextError::NotFound(_))
        ));
    }

    #[test]
    fn explicit_ignore_file() {
        let (d, _) = context(&[("a", ""), ("b", "")], Some("a\n"));
        let other = d.path().join("Dockerfile.dockerignore");
        fs::write(&other, "b\n").unwrap();
        let ctx = BuildContext::open(d.path(), Some(&other)).unwrap();
        assert!(ctx.is_excluded(Path::new("b")));
        assert!(!ctx.is_excluded(Path::new("a")));
        assert!(BuildContext::open(&d.path().join("a"), None).is_err());
    }

    #[test]
    fn digest_tracks_content_mode_and_names_not_mtime() {
        let (d, ctx) = context(&[("dir/a", "one"), ("dir/b", "two")], None);
        let src = vec![PathBuf::from("dir")];
        let base = ctx.digest(&src).unwrap();
        assert_eq!(ctx.digest(&src).unwrap(), base);

        let a = d.path().join("dir/a");
        let f = File::options().write(true).open(&a).unwrap();
        f.set_modified(std::time::SystemTime::UNIX_EPOCH).unwrap();
        drop(f);
        assert_eq!(ctx.walk(Path::new("dir")).unwrap()[1].mtime, (0, 0));
        assert_eq!(ctx.digest(&src).unwrap(), base, "touch");

        fs::write(&a, "uno").unwrap();
        let content = ctx.digest(&src).unwrap();
        assert_ne!(content, base, "content");

        let mode = fs::metadata(&a).unwrap().permissions().mode();
        fs::set_permissions(&a, fs::Permissions::from_mode(mode ^ 0o100)).unwrap();
        let moded = ctx.digest(&src).unwrap();
        assert_ne!(moded, content, "mode");

        fs::rename(&a, d.path().join("dir/c")).unwrap();
        assert_ne!(ctx.digest(&src).unwrap(), moded, "rename");

        // Source names and order count.
        let (_d2, ctx2) = context(&[("x", "1"), ("y", "1")], None);
        let xy = ctx2
            .digest(&[PathBuf::from("x"), PathBuf::from("y")])
            .unwrap();
        let yx = ctx2
            .digest(&[PathBuf::from("y"), PathBuf::from("x")])
            .unwrap();
        assert_ne!(xy, yx);
        assert_ne!(
            ctx2.digest(&[PathBuf::from("x")]).unwrap(),
            ctx2.digest(&[PathBuf::from("y")]).unwrap()
        );
    }
}
