//! Safe layer unpacking into overlayfs-format lower directories.
//!
//! A layer comes from whoever built or served the image, so every tar entry is
//! hostile until proven otherwise. The rules, and why:
//!
//! - Paths are cleaned lexically: a leading `/` is dropped (Docker treats `/a`
//!   as `a`), `.` is ignored, and a `..` that would climb above the layer root
//!   is an error rather than being clamped, since no honest layer has one.
//! - Every parent directory is opened component by component with
//!   `O_NOFOLLOW|O_DIRECTORY` relative to the previous one (an `openat` walk
//!   from a descriptor of `dest`). A parent that is a symlink is refused: an
//!   image builder never emits a path through a link of its own layer, and
//!   refusing is simpler to reason about than resolving links "in scope".
//! - The final component is never followed: whatever exists there is removed
//!   (a directory is kept only when the new entry is a directory too) and the
//!   new file is created with `O_CREAT|O_EXCL|O_NOFOLLOW`, so a symlink planted
//!   by an earlier entry is replaced, never written through. Ownership, modes,
//!   xattrs and times are set through the new descriptor or with `*at` calls
//!   that do not follow links, never by path.
//! - Hard-link targets are resolved with the same walk (no symlinks, inside
//!   `dest`), so a link can only name something this layer already created.
//! - Device nodes are skipped with a warning: the runtime provides `/dev`, and
//!   a device node in an image is a way to hand a container raw access to a
//!   host disk or to kernel memory.
//! - `trusted.overlay.*` xattrs in the tar are dropped: overlayfs interprets
//!   them (redirects, metacopy, opaque), so only the whiteout markers below may
//!   produce them.
//!
//! A compressed layer is small but may expand without bound, so nothing kept
//! in memory may grow with the stream (see `HeaderGuard`):
//!
//! - Extension headers (GNU long name/link, PAX) may declare at most 1 MiB, as
//!   in Go's archive/tar: the tar crate reads their bodies whole into memory.
//! - GNU sparse entries are refused: the tar crate writes out their declared,
//!   unchecked size as zeros and keeps their chunk maps in memory, and image
//!   builders do not emit them.
//! - A layer has at most [`MAX_ENTRIES`] entries, and the directory mtimes
//!   kept for the end are keyed by path and capped in total path bytes.
//!
//! Whiteouts are converted to overlayfs format: `.wh.NAME` becomes a 0/0
//! character device `NAME`, `.wh..wh..opq` sets `trusted.overlay.opaque=y` on
//! its directory. Unpacking runs as root (ownership and whiteout devices need
//! it); without root, ownership is left to the caller's uid, as GNU tar does.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{open, openat, AtFlags, OFlag};
use nix::sys::stat::{
    fchmod, fstat, fstatat, futimens, mkdirat, mknodat, utimensat, Mode, SFlag, UtimensatFlags,
};
use nix::sys::time::TimeSpec;
use nix::unistd::{fchown, fchownat, linkat, symlinkat, unlinkat, Gid, Uid, UnlinkatFlags};
use skiff_core::{Digest, DigestReader};
use tar::EntryType;
use xattr::FileExt;

/// Why a layer could not be unpacked. Every variant names the entry at fault.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    /// The compressed or tar stream is corrupt or ends early.
    #[error("layer stream is corrupt or truncated: {0}")]
    Stream(#[source] io::Error),
    /// Reading an entry's contents failed (the stream ended inside it, or is corrupt).
    #[error("layer entry {path:?}: stream is corrupt or truncated: {source}")]
    EntryStream {
        path: String,
        #[source]
        source: io::Error,
    },
    /// The entry is unsafe or malformed and was refused.
    #[error("layer entry {path:?}: {why}")]
    Refused { path: String, why: String },
    /// A filesystem operation failed while creating the entry.
    #[error("layer entry {path:?}: {op}: {source}")]
    Io {
        path: String,
        op: &'static str,
        #[source]
        source: io::Error,
    },
}

/// How a layer blob is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

const GZIP_MAGIC: &[u8] = &[0x1f, 0x8b];
const ZSTD_MAGIC: &[u8] = &[0x28, 0xb5, 0x2f, 0xfd];

impl Compression {
    /// What the content itself says (magic bytes); `None` for anything else.
    pub fn sniff(prefix: &[u8]) -> Compression {
        if prefix.starts_with(GZIP_MAGIC) {
            Compression::Gzip
        } else if prefix.starts_with(ZSTD_MAGIC) {
            Compression::Zstd
        } else {
            Compression::None
        }
    }

    /// What a layer media type claims (OCI and Docker spellings).
    pub fn from_media_type(media_type: &str) -> Compression {
        if media_type.ends_with("gzip") {
            Compression::Gzip
        } else if media_type.ends_with("zstd") {
            Compression::Zstd
        } else {
            Compression::None
        }
    }
}

/// A stream whose first bytes were read ahead and are replayed.
pub(crate) type Peeked<R> = io::Chain<io::Cursor<Vec<u8>>, R>;

/// Reads up to `n` bytes from the front of `reader` and returns them together
/// with a reader that still yields the whole stream.
pub(crate) fn peek<R: Read>(mut reader: R, n: usize) -> io::Result<(Vec<u8>, Peeked<R>)> {
    let mut head = vec![0u8; n];
    let mut got = 0;
    while got < n {
        match reader.read(&mut head[got..]) {
            Ok(0) => break,
            Ok(k) => got += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    head.truncate(got);
    Ok((head.clone(), io::Cursor::new(head).chain(reader)))
}

/// Wraps `reader` in the right decompressor. The magic bytes decide (a tar
/// cannot start with either magic); a media type that claims compression the
/// content does not have is an error, since the blob is then not what the
/// manifest says it is.
pub fn decompressed<'a, R: Read + 'a>(
    reader: R,
    media_type: &str,
) -> Result<Box<dyn Read + 'a>, UnpackError> {
    let (head, reader) = peek(reader, 4).map_err(UnpackError::Stream)?;
    let sniffed = Compression::sniff(&head);
    let claimed = Compression::from_media_type(media_type);
    if claimed != Compression::None && sniffed != claimed && !head.is_empty() {
        return Err(UnpackError::Stream(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("media type {media_type} says {claimed:?} but the content is not"),
        )));
    }
    Ok(match sniffed {
        // Multi-member gzip, as Go's gzip reader (and so Docker) accepts.
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(reader)),
        Compression::Zstd => {
            Box::new(zstd::stream::read::Decoder::new(reader).map_err(UnpackError::Stream)?)
        }
        Compression::None => Box::new(reader),
    })
}

/// Most entries one layer may have: ten times the largest real layers, yet
/// a bound on the per-entry work that duplicated entries can multiply.
pub const MAX_ENTRIES: usize = 10_000_000;
/// Largest body an extension header may declare (Go's maxSpecialFileSize).
const MAX_EXTENSION: u64 = 1 << 20;
/// Most path bytes of distinct directories remembered for their mtimes.
const MAX_DIR_TIME_BYTES: usize = 256 << 20;
const BLOCK: usize = 512;

const SPARSE: &str = "GNU sparse files are not supported (the tar crate writes out their \
                      declared size as zeros; image builders do not produce them)";

/// A pass-through reader that follows the tar block structure of what the
/// tar crate reads, and fails at a header the tar crate must not process:
/// an oversized extension header (the crate reads those bodies whole into
/// memory, with no limit to set) or a GNU sparse entry.
///
/// It must see headers exactly where the crate does, or a hostile tar could
/// hide one inside what the guard takes for data. So it mirrors the crate's
/// framing (tar 0.4.46 `next_entry_raw`): a header block, then its size
/// rounded up to whole blocks, where a pending PAX `size` record overrides
/// the size of the next non-extension header. Sparse entries, whose extra
/// header blocks would complicate this, never get that far; nor do extension
/// headers without ustar/GNU magic, which the crate does not treat as such.
/// All-zero blocks (end of archive) are passed over, so it stays alert.
struct HeaderGuard<R> {
    inner: R,
    block: [u8; BLOCK],
    /// Bytes of `block` filled so far: headers may span read() calls.
    have: usize,
    /// Data and padding bytes before the next header.
    skip: u64,
    /// The body being read of a long-name (`true`) or PAX (`false`) header,
    /// and its declared size (the padding after it is not kept).
    body: Option<(bool, Vec<u8>, usize)>,
    /// Extension bodies that apply to the next non-extension header.
    long_name: Option<Vec<u8>>,
    pax: Option<Vec<u8>>,
    /// Why the stream was refused; the tar crate only passes on an io::Error.
    refusal: Option<UnpackError>,
}

/// The PAX `size` override exactly as the tar crate's `pax_extensions_value`
/// computes it (it gives up at the first malformed record).
fn pax_size(pax: &[u8]) -> Option<u64> {
    for ext in tar::PaxExtensions::new(pax) {
        let ext = ext.ok()?;
        if ext.key_bytes() == b"size" {
            return ext.value().ok()?.parse().ok();
        }
    }
    None
}

impl<R: Read> HeaderGuard<R> {
    fn new(inner: R) -> Self {
        HeaderGuard {
            inner,
            block: [0; BLOCK],
            have: 0,
            skip: 0,
            body: None,
            long_name: None,
            pax: None,
            refusal: None,
        }
    }

    fn watch(&mut self, mut data: &[u8]) -> Result<(), UnpackError> {
        while !data.is_empty() {
            if self.skip > 0 {
                let k = data
                    .len()
                    .min(usize::try_from(self.skip).unwrap_or(usize::MAX));
                if let Some((_, body, size)) = &mut self.body {
                    let room = *size - body.len();
                    body.extend_from_slice(&data[..k.min(room)]);
                }
                self.skip -= k as u64;
                data = &data[k..];
                if self.skip == 0 {
                    self.end_body();
                }
                continue;
            }
            let k = (BLOCK - self.have).min(data.len());
            self.block[self.have..self.have + k].copy_from_slice(&data[..k]);
            self.have += k;
            data = &data[k..];
            if self.have == BLOCK {
                self.have = 0;
                self.header()?;
            }
        }
        Ok(())
    }

    fn end_body(&mut self) {
        match self.body.take() {
            Some((true, b, _)) => self.long_name = Some(b),
            Some((false, b, _)) => self.pax = Some(b),
            None => {}
        }
    }

    fn header(&mut self) -> Result<(), UnpackError> {
        if self.block.iter().all(|b| *b == 0) {
            return Ok(());
        }
        let h = tar::Header::from_byte_slice(&self.block);
        let kind = h.entry_type();
        // The tar crate reads these bodies into memory and applies them to
        // the next header; a global header is handed on like an entry.
        let slurped = matches!(
            kind,
            EntryType::GNULongName | EntryType::GNULongLink | EntryType::XHeader
        );
        let extension = slurped || kind == EntryType::XGlobalHeader;
        // An unparseable size fails the tar crate at this very header.
        let Ok(mut size) = h.entry_size() else {
            return Ok(());
        };
        if !extension {
            if let Some(s) = self.pax.as_deref().and_then(pax_size) {
                size = s;
            }
        }
        // Named as the tar crate will name it: long name, PAX path, header.
        let pax_path = || {
            let pax = self.pax.as_deref()?;
            tar::PaxExtensions::new(pax)
                .filter_map(Result::ok)
                .find(|e| e.key_bytes() == b"path")
                .map(|e| e.value_bytes().to_vec())
        };
        let path = match &self.long_name {
            _ if extension => h.path_bytes().into_owned(),
            Some(l) => l.strip_suffix(b"\0").unwrap_or(l).to_vec(),
            None => pax_path().unwrap_or_else(|| h.path_bytes().into_owned()),
        };
        let refuse = |why: String| UnpackError::Refused {
            path: String::from_utf8_lossy(&path).into_owned(),
            why,
        };
        if kind == EntryType::GNUSparse {
            return Err(refuse(SPARSE.to_string()));
        }
        if extension && size > MAX_EXTENSION {
            return Err(refuse(format!(
                "{kind:?} extension header declares {size} bytes, more than the \
                 {MAX_EXTENSION} allowed"
            )));
        }
        if slurped && h.as_ustar().is_none() && h.as_gnu().is_none() {
            return Err(refuse(format!(
                "{kind:?} extension header without ustar or GNU magic"
            )));
        }
        if !slurped {
            // This header ends the member the extensions described.
            self.long_name = None;
            self.pax = None;
        }
        // On overflow the tar crate fails at this header.
        self.skip = size
            .checked_add(BLOCK as u64 - 1)
            .map_or(0, |s| s & !(BLOCK as u64 - 1));
        if matches!(kind, EntryType::GNULongName | EntryType::XHeader) {
            // size <= MAX_EXTENSION, checked above.
            let size = size as usize;
            let body = Vec::with_capacity(size);
            self.body = Some((kind == EntryType::GNULongName, body, size));
            if self.skip == 0 {
                self.end_body();
            }
        }
        Ok(())
    }
}

impl<R: Read> Read for HeaderGuard<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let refused = |e: &UnpackError| io::Error::new(io::ErrorKind::InvalidData, e.to_string());
        if let Some(e) = &self.refusal {
            return Err(refused(e));
        }
        let n = self.inner.read(buf)?;
        if let Err(e) = self.watch(&buf[..n]) {
            let io = refused(&e);
            self.refusal = Some(e);
            return Err(io);
        }
        Ok(n)
    }
}

/// Unpacks one layer into `dest` (an existing, empty directory) in overlayfs
/// lower-dir format and returns the digest of the uncompressed tar stream
/// (the layer's diff_id). The caller compares it with the image config and
/// discards `dest` on mismatch or error.
pub fn unpack_layer(
    reader: impl Read,
    media_type: &str,
    dest: &Path,
) -> Result<Digest, UnpackError> {
    let mut hashed = DigestReader::new(decompressed(reader, media_type)?);
    let mut u = Unpacker::new(dest)?;
    let mut guard = HeaderGuard::new(&mut hashed);
    let res = u.entries(&mut guard);
    // The tar crate passes a guard refusal on as a bare read error.
    if let Some(e) = guard.refusal.take() {
        return Err(e);
    }
    res?;
    // The diff_id covers the whole uncompressed stream, padding after the
    // end-of-archive marker included; draining also makes gzip check its CRC.
    io::copy(&mut hashed, &mut io::sink()).map_err(UnpackError::Stream)?;
    u.finish()?;
    Ok(hashed.finish().1)
}

/// The metadata of one entry, gathered before its data is read.
struct Meta {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: TimeSpec,
    xattrs: Vec<(OsString, Vec<u8>)>,
}

struct Unpacker {
    root: OwnedFd,
    dest: PathBuf,
    privileged: bool,
    max_entries: usize,
    max_dir_time_bytes: usize,
    /// Directory mtimes are set last: creating children changes them. Keyed
    /// by path, so a directory repeated many times is remembered once.
    dir_times: HashMap<PathBuf, TimeSpec>,
    dir_time_bytes: usize,
    devices_skipped: usize,
}

fn errno(e: Errno) -> io::Error {
    io::Error::from_raw_os_error(e as i32)
}

fn join(comps: &[OsString]) -> String {
    let mut p = PathBuf::new();
    p.extend(comps);
    p.display().to_string()
}

/// Lexically cleans an entry path into its components (see the module docs).
fn clean(path: &Path) -> Result<Vec<OsString>, &'static str> {
    let mut out = Vec::new();
    for c in path.components() {
        match c {
            Component::Prefix(_) | Component::RootDir | Component::CurDir => {}
            Component::ParentDir => {
                if out.pop().is_none() {
                    return Err("path climbs out of the layer with '..'");
                }
            }
            Component::Normal(s) => out.push(s.to_os_string()),
        }
    }
    Ok(out)
}

/// Parses a PAX time (`secs[.fraction]`, possibly negative).
fn pax_time(v: &str) -> Option<TimeSpec> {
    let (whole, frac) = v.split_once('.').unwrap_or((v, ""));
    let secs: i64 = whole.parse().ok()?;
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mut nanos: i64 = 0;
    for i in 0..9 {
        nanos = nanos * 10 + frac.as_bytes().get(i).map_or(0, |b| i64::from(b - b'0'));
    }
    if whole.starts_with('-') && nanos > 0 {
        return Some(TimeSpec::new(secs.checked_sub(1)?, 1_000_000_000 - nanos));
    }
    Some(TimeSpec::new(secs, nanos))
}

impl Unpacker {
    fn new(dest: &Path) -> Result<Unpacker, UnpackError> {
        let root = open(
            dest,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| UnpackError::Io {
            path: dest.display().to_string(),
            op: "opening the destination directory",
            source: e.into(),
        })?;
        Ok(Unpacker {
            root,
            dest: dest.to_path_buf(),
            privileged: nix::unistd::geteuid().is_root(),
            max_entries: MAX_ENTRIES,
            max_dir_time_bytes: MAX_DIR_TIME_BYTES,
            dir_times: HashMap::new(),
            dir_time_bytes: 0,
            devices_skipped: 0,
        })
    }

    fn entries(&mut self, tar: impl Read) -> Result<(), UnpackError> {
        let mut archive = tar::Archive::new(tar);
        // The default, made explicit: the first zero block ends the archive,
        // and what follows it is only hashed, never parsed.
        archive.set_ignore_zeros(false);
        for (n, entry) in archive.entries().map_err(UnpackError::Stream)?.enumerate() {
            let entry = entry.map_err(UnpackError::Stream)?;
            if n >= self.max_entries {
                return Err(UnpackError::Refused {
                    path: String::from_utf8_lossy(&entry.path_bytes()).into_owned(),
                    why: format!("layer has more than {} entries", self.max_entries),
                });
            }
            self.entry(entry)?;
        }
        Ok(())
    }

    fn entry<R: Read>(&mut self, mut entry: tar::Entry<'_, R>) -> Result<(), UnpackError> {
        let raw = entry.path_bytes().into_owned();
        let shown = String::from_utf8_lossy(&raw).into_owned();
        let refuse = |why: &str| UnpackError::Refused {
            path: shown.clone(),
            why: why.to_string(),
        };
        let kind = entry.header().entry_type();
        if kind == EntryType::XGlobalHeader {
            // Archive-wide PAX defaults (comments, mostly); nothing we apply.
            return Ok(());
        }
        if raw.contains(&0) {
            return Err(refuse("name contains a NUL byte"));
        }
        let comps = clean(Path::new(OsStr::from_bytes(&raw))).map_err(refuse)?;

        if let Some((last, parent)) = comps.split_last() {
            let name = last.as_bytes();
            if name == b".wh..wh..opq" {
                return self.opaque(parent, &shown);
            }
            if name.starts_with(b".wh..wh.") {
                // AUFS bookkeeping (.wh..wh.plnk, .wh..wh.aufs): not content.
                tracing::debug!(entry = %shown, "skipping aufs metadata entry");
                return Ok(());
            }
            if let Some(hidden) = name.strip_prefix(b".wh.") {
                if hidden.is_empty() || hidden == b"." || hidden == b".." {
                    return Err(refuse("malformed whiteout name"));
                }
                return self.whiteout(parent, OsStr::from_bytes(hidden), &shown);
            }
        }

        let meta = self.meta(&mut entry, &shown)?;
        match kind {
            EntryType::Regular | EntryType::Continuous => {
                self.file(&comps, &mut entry, &meta, &shown)
            }
            // HeaderGuard refuses these first; this covers unguarded streams.
            EntryType::GNUSparse => Err(refuse(SPARSE)),
            EntryType::Directory => self.dir(&comps, &meta, &shown),
            EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .map(|t| t.into_owned())
                    .unwrap_or_default();
                if target.is_empty() {
                    return Err(refuse("symlink without a target"));
                }
                if target.contains(&0) {
                    return Err(refuse("symlink target contains a NUL byte"));
                }
                self.symlink(&comps, OsStr::from_bytes(&target), &meta, &shown)
            }
            EntryType::Link => {
                let target = entry
                    .link_name_bytes()
                    .map(|t| t.into_owned())
                    .unwrap_or_default();
                if target.contains(&0) {
                    return Err(refuse("hard link target contains a NUL byte"));
                }
                let target = clean(Path::new(OsStr::from_bytes(&target)))
                    .map_err(|why| refuse(&format!("hard link target: {why}")))?;
                self.hardlink(&comps, &target, &shown)
            }
            EntryType::Char | EntryType::Block => {
                self.devices_skipped += 1;
                if self.devices_skipped == 1 {
                    tracing::warn!(entry = %shown, "skipping device node in layer; the runtime provides /dev");
                }
                Ok(())
            }
            EntryType::Fifo => self.fifo(&comps, &meta, &shown),
            other => Err(refuse(&format!("unsupported tar entry type {other:?}"))),
        }
    }

    fn meta<R: Read>(
        &self,
        entry: &mut tar::Entry<'_, R>,
        shown: &str,
    ) -> Result<Meta, UnpackError> {
        let refuse = |why: String| UnpackError::Refused {
            path: shown.to_string(),
            why,
        };
        let h = entry.header();
        let old = h.as_old();
        // An all-NUL/space numeric field reads as 0, as Go's archive/tar (and
        // so Docker) reads it; anything else unparseable is refused.
        let num = |v: io::Result<u64>, raw: &[u8], what: &str| match v {
            Ok(v) => Ok(v),
            Err(_) if raw.iter().all(|b| *b == 0 || *b == b' ') => Ok(0),
            Err(e) => Err(refuse(format!("bad {what} field: {e}"))),
        };
        let mode = num(h.mode().map(u64::from), &old.mode, "mode")? as u32 & 0o7777;
        let id = |v: io::Result<u64>, raw: &[u8], what: &str| {
            u32::try_from(num(v, raw, what)?).map_err(|_| refuse(format!("{what} out of range")))
        };
        let uid = id(h.uid(), &old.uid, "uid")?;
        let gid = id(h.gid(), &old.gid, "gid")?;
        let secs = num(h.mtime(), &old.mtime, "mtime")?;
        let mut mtime = TimeSpec::new(i64::try_from(secs).unwrap_or(i64::MAX), 0);
        let mut xattrs = Vec::new();
        let pax = entry
            .pax_extensions()
            .map_err(|e| refuse(format!("malformed PAX header: {e}")))?;
        for ext in pax.into_iter().flatten() {
            let ext = ext.map_err(|e| refuse(format!("malformed PAX header: {e}")))?;
            let key = ext.key_bytes();
            if key == b"mtime" {
                mtime = std::str::from_utf8(ext.value_bytes())
                    .ok()
                    .and_then(pax_time)
                    .ok_or_else(|| refuse("bad PAX mtime".to_string()))?;
            } else if let Some(name) = key.strip_prefix(b"SCHILY.xattr.") {
                if name.starts_with(b"trusted.overlay.") {
                    tracing::debug!(entry = %shown, "dropping overlayfs xattr from layer");
                    continue;
                }
                if name.is_empty() || name.contains(&0) {
                    return Err(refuse("malformed xattr name".to_string()));
                }
                xattrs.push((
                    OsStr::from_bytes(name).to_os_string(),
                    ext.value_bytes().to_vec(),
                ));
            }
        }
        Ok(Meta {
            mode,
            uid,
            gid,
            mtime,
            xattrs,
        })
    }

    /// Opens the directory `comps` below the root without following any
    /// symlink, creating missing components (0755, owner root) when `create`.
    fn walk(&self, comps: &[OsString], create: bool, shown: &str) -> Result<OwnedFd, UnpackError> {
        let io_err = |op, e: Errno| UnpackError::Io {
            path: shown.to_string(),
            op,
            source: errno(e),
        };
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let mut cur = self.root.try_clone().map_err(|e| UnpackError::Io {
            path: shown.to_string(),
            op: "duplicating the root descriptor",
            source: e,
        })?;
        for (i, c) in comps.iter().enumerate() {
            let next = match openat(&cur, c.as_os_str(), flags, Mode::empty()) {
                Ok(fd) => fd,
                Err(Errno::ENOENT) if create => {
                    match mkdirat(&cur, c.as_os_str(), Mode::from_bits_truncate(0o755)) {
                        Ok(()) | Err(Errno::EEXIST) => {}
                        Err(e) => return Err(io_err("creating a parent directory", e)),
                    }
                    let fd = openat(&cur, c.as_os_str(), flags, Mode::empty())
                        .map_err(|e| io_err("opening a parent directory", e))?;
                    // Independent of the process umask.
                    fchmod(&fd, Mode::from_bits_truncate(0o755))
                        .map_err(|e| io_err("setting a parent directory's mode", e))?;
                    fd
                }
                Err(Errno::ENOENT) => {
                    return Err(UnpackError::Refused {
                        path: shown.to_string(),
                        why: format!("{} does not exist in this layer", join(&comps[..=i])),
                    })
                }
                Err(Errno::ELOOP | Errno::ENOTDIR) => {
                    let is_link = fstatat(&cur, c.as_os_str(), AtFlags::AT_SYMLINK_NOFOLLOW)
                        .is_ok_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFLNK);
                    let what = if is_link {
                        "is a symbolic link; entries are never created through links"
                    } else {
                        "is not a directory"
                    };
                    return Err(UnpackError::Refused {
                        path: shown.to_string(),
                        why: format!("{} {what}", join(&comps[..=i])),
                    });
                }
                Err(e) => return Err(io_err("opening a parent directory", e)),
            };
            cur = next;
        }
        Ok(cur)
    }

    /// The parent directory of a non-root entry, and its last component.
    fn parent<'c>(
        &self,
        comps: &'c [OsString],
        shown: &str,
    ) -> Result<(OwnedFd, &'c OsStr), UnpackError> {
        let (name, parent) = comps.split_last().ok_or_else(|| UnpackError::Refused {
            path: shown.to_string(),
            why: "entry names the layer root".to_string(),
        })?;
        Ok((self.walk(parent, true, shown)?, name.as_os_str()))
    }

    /// Removes whatever is at `name` (never following it). Keeps an existing
    /// directory when `keep_dir`, returning true in that case.
    fn clear(
        &self,
        parent: &OwnedFd,
        comps: &[OsString],
        keep_dir: bool,
        shown: &str,
    ) -> Result<bool, UnpackError> {
        let Some(name) = comps.last() else {
            return Ok(true);
        };
        let io_err = |e: io::Error| UnpackError::Io {
            path: shown.to_string(),
            op: "replacing an earlier entry",
            source: e,
        };
        match fstatat(parent, name.as_os_str(), AtFlags::AT_SYMLINK_NOFOLLOW) {
            Err(Errno::ENOENT) => Ok(false),
            Err(e) => Err(io_err(errno(e))),
            Ok(st) if st.st_mode & libc::S_IFMT == libc::S_IFDIR => {
                if keep_dir {
                    return Ok(true);
                }
                // Every component up to here was just checked to be a real
                // directory, so this path names the same directory.
                // remove_dir_all does not follow symlinks inside it.
                let mut path = self.dest.clone();
                path.extend(comps);
                std::fs::remove_dir_all(&path).map_err(io_err)?;
                Ok(false)
            }
            Ok(_) => {
                unlinkat(parent, name.as_os_str(), UnlinkatFlags::NoRemoveDir)
                    .map_err(|e| io_err(errno(e)))?;
                Ok(false)
            }
        }
    }

    /// Ownership, mode and xattrs through a descriptor of the new object.
    fn apply(&self, file: &File, meta: &Meta, shown: &str) -> Result<(), UnpackError> {
        self.own(file, meta, shown)?;
        for (name, value) in &meta.xattrs {
            if let Err(e) = file.set_xattr(name, value) {
                self.xattr_failed(name, e, shown)?;
            }
        }
        Ok(())
    }

    /// Ownership, then mode: chown clears setuid bits and file capabilities.
    fn own(&self, file: &File, meta: &Meta, shown: &str) -> Result<(), UnpackError> {
        let io_err = |op, e: Errno| UnpackError::Io {
            path: shown.to_string(),
            op,
            source: errno(e),
        };
        if self.privileged {
            fchown(
                file,
                Some(Uid::from_raw(meta.uid)),
                Some(Gid::from_raw(meta.gid)),
            )
            .map_err(|e| io_err("setting ownership", e))?;
        }
        fchmod(file, Mode::from_bits_truncate(meta.mode)).map_err(|e| io_err("setting mode", e))
    }

    /// Filesystems without xattr support lose them (as containerd does);
    /// anything else is an error. Unprivileged runs cannot set trusted.* or
    /// security.* and skip them.
    fn xattr_failed(&self, name: &OsStr, e: io::Error, shown: &str) -> Result<(), UnpackError> {
        let unsupported = e.raw_os_error() == Some(libc::EOPNOTSUPP);
        let denied = !self.privileged && e.raw_os_error() == Some(libc::EPERM);
        if unsupported || denied {
            tracing::warn!(entry = %shown, xattr = %name.to_string_lossy(), error = %e, "xattr not set");
            return Ok(());
        }
        Err(UnpackError::Io {
            path: shown.to_string(),
            op: "setting an xattr",
            source: e,
        })
    }

    fn file<R: Read>(
        &mut self,
        comps: &[OsString],
        entry: &mut tar::Entry<'_, R>,
        meta: &Meta,
        shown: &str,
    ) -> Result<(), UnpackError> {
        let (parent, name) = self.parent(comps, shown)?;
        self.clear(&parent, comps, false, shown)?;
        let fd = openat(
            &parent,
            name,
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o600),
        )
        .map_err(|e| UnpackError::Io {
            path: shown.to_string(),
            op: "creating file",
            source: errno(e),
        })?;
        let mut file = File::from(fd);
        // Hand-rolled copy so a short stream and a full disk read differently.
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match entry.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(source) => {
                    return Err(UnpackError::EntryStream {
                        path: shown.to_string(),
                        source,
                    })
                }
            };
            file.write_all(&buf[..n])
                .map_err(|source| UnpackError::Io {
                    path: shown.to_string(),
                    op: "writing file",
                    source,
                })?;
        }
        self.apply(&file, meta, shown)?;
        futimens(&file, &meta.mtime, &meta.mtime).map_err(|e| UnpackError::Io {
            path: shown.to_string(),
            op: "setting mtime",
            source: errno(e),
        })
    }

    fn dir(&mut self, comps: &[OsString], meta: &Meta, shown: &str) -> Result<(), UnpackError> {
        let fd = if comps.is_empty() {
            // "./": the layer root's own metadata.
            self.walk(&[], false, shown)?
        } else {
            let (parent, name) = self.parent(comps, shown)?;
            if !self.clear(&parent, comps, true, shown)? {
                mkdirat(&parent, name, Mode::from_bits_truncate(0o700)).map_err(|e| {
                    UnpackError::Io {
                        path: shown.to_string(),
                        op: "creating directory",
                        source: errno(e),
                    }
                })?;
            }
            self.walk(comps, false, shown)?
        };
        self.apply(&File::from(fd), meta, shown)?;
        let key: PathBuf = comps.iter().collect();
        if !self.dir_times.contains_key(&key) {
            self.dir_time_bytes += key.as_os_str().len() + 1;
            if self.dir_time_bytes > self.max_dir_time_bytes {
                return Err(UnpackError::Refused {
                    path: shown.to_string(),
                    why: format!(
                        "layer's directory paths add up to more than {} bytes",
                        self.max_dir_time_bytes
                    ),
                });
            }
        }
        self.dir_times.insert(key, meta.mtime);
        Ok(())
    }

    fn symlink(
        &mut self,
        comps: &[OsString],
        target: &OsStr,
        meta: &Meta,
        shown: &str,
    ) -> Result<(), UnpackError> {
        let (parent, name) = self.parent(comps, shown)?;
        self.clear(&parent, comps, false, shown)?;
        let io_err = |op, e: Errno| UnpackError::Io {
            path: shown.to_string(),
            op,
            source: errno(e),
        };
        // The target is stored verbatim: it is resolved inside the container.
        symlinkat(target, &parent, name).map_err(|e| io_err("creating symlink", e))?;
        if self.privileged {
            fchownat(
                &parent,
                name,
                Some(Uid::from_raw(meta.uid)),
                Some(Gid::from_raw(meta.gid)),
                AtFlags::AT_SYMLINK_NOFOLLOW,
            )
            .map_err(|e| io_err("setting ownership", e))?;
        }
        if !meta.xattrs.is_empty() {
            // Parents were just verified as real directories; xattr::set does not follow the link.
            let mut path = self.dest.clone();
            path.extend(comps);
            for (k, v) in &meta.xattrs {
                if let Err(e) = xattr::set(&path, k, v) {
                    self.xattr_failed(k, e, shown)?;
                }
            }
        }
        utimensat(
            &parent,
            name,
            &meta.mtime,
            &meta.mtime,
            UtimensatFlags::NoFollowSymlink,
        )
        .map_err(|e| io_err("setting mtime", e))
    }

    fn hardlink(
        &mut self,
        comps: &[OsString],
        target: &[OsString],
        shown: &str,
    ) -> Result<(), UnpackError> {
        let refuse = |why: &str| UnpackError::Refused {
            path: shown.to_string(),
            why: why.to_string(),
        };
        let (tname, tparent) = target
            .split_last()
            .ok_or_else(|| refuse("hard link to the layer root"))?;
        let tdir = self.walk(tparent, false, shown)?;
        match fstatat(&tdir, tname.as_os_str(), AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) if st.st_mode & libc::S_IFMT == libc::S_IFDIR => {
                return Err(refuse("hard link to a directory"))
            }
            Ok(_) => {}
            Err(Errno::ENOENT) => {
                return Err(refuse(&format!(
                    "hard link target {} is not an earlier entry of this layer",
                    join(target)
                )))
            }
            Err(e) => {
                return Err(UnpackError::Io {
                    path: shown.to_string(),
                    op: "inspecting hard link target",
                    source: errno(e),
                })
            }
        }
        if comps == target {
            return Ok(());
        }
        let (parent, name) = self.parent(comps, shown)?;
        self.clear(&parent, comps, false, shown)?;
        // No AT_SYMLINK_FOLLOW: a link to a symlink links the symlink itself.
        linkat(&tdir, tname.as_os_str(), &parent, name, AtFlags::empty()).map_err(|e| {
            UnpackError::Io {
                path: shown.to_string(),
                op: "creating hard link",
                source: errno(e),
            }
        })
    }

    fn fifo(&mut self, comps: &[OsString], meta: &Meta, shown: &str) -> Result<(), UnpackError> {
        let (parent, name) = self.parent(comps, shown)?;
        self.clear(&parent, comps, false, shown)?;
        let io_err = |op, e: Errno| UnpackError::Io {
            path: shown.to_string(),
            op,
            source: errno(e),
        };
        mknodat(
            &parent,
            name,
            SFlag::S_IFIFO,
            Mode::from_bits_truncate(0o600),
            0,
        )
        .map_err(|e| io_err("creating fifo", e))?;
        // Everything else goes through a descriptor, as for files: O_NONBLOCK
        // so opening a fifo does not wait for a writer, and the fstat proves
        // the name still is the fifo just made.
        let fd = openat(
            &parent,
            name,
            OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| io_err("opening fifo", e))?;
        let st = fstat(&fd).map_err(|e| io_err("inspecting fifo", e))?;
        if st.st_mode & libc::S_IFMT != libc::S_IFIFO {
            return Err(UnpackError::Refused {
                path: shown.to_string(),
                why: "fifo was replaced while being created".to_string(),
            });
        }
        let file = File::from(fd);
        // No xattrs, as before: Linux refuses user.* ones on fifos.
        self.own(&file, meta, shown)?;
        futimens(&file, &meta.mtime, &meta.mtime).map_err(|e| io_err("setting mtime", e))
    }

    fn whiteout(
        &mut self,
        parent: &[OsString],
        hidden: &OsStr,
        shown: &str,
    ) -> Result<(), UnpackError> {
        let dir = self.walk(parent, true, shown)?;
        let mut comps = parent.to_vec();
        comps.push(hidden.to_os_string());
        self.clear(&dir, &comps, false, shown)?;
        // overlayfs: a 0/0 character device hides the name in lower layers.
        mknodat(&dir, hidden, SFlag::S_IFCHR, Mode::empty(), 0).map_err(|e| UnpackError::Io {
            path: shown.to_string(),
            op: "creating whiteout device (needs root)",
            source: errno(e),
        })
    }

    fn opaque(&mut self, dir: &[OsString], shown: &str) -> Result<(), UnpackError> {
        let fd = self.walk(dir, true, shown)?;
        File::from(fd)
            .set_xattr("trusted.overlay.opaque", b"y")
            .map_err(|source| UnpackError::Io {
                path: shown.to_string(),
                op: "marking directory opaque (trusted.overlay.opaque needs root)",
                source,
            })
    }

    fn finish(&mut self) -> Result<(), UnpackError> {
        for (path, t) in std::mem::take(&mut self.dir_times) {
            let comps: Vec<OsString> = path.iter().map(OsString::from).collect();
            let shown = path.display().to_string();
            let res = match comps.split_last() {
                None => futimens(&self.root, &t, &t),
                Some((name, parent)) => match self.walk(parent, false, &shown) {
                    Ok(fd) => utimensat(
                        &fd,
                        name.as_os_str(),
                        &t,
                        &t,
                        UtimensatFlags::NoFollowSymlink,
                    ),
                    // Removed or replaced by a later entry.
                    Err(UnpackError::Refused { .. }) => continue,
                    Err(e) => return Err(e),
                },
            };
            match res {
                Ok(()) | Err(Errno::ENOENT) => {}
                Err(e) => {
                    return Err(UnpackError::Io {
                        path: shown,
                        op: "setting directory mtime",
                        source: errno(e),
                    })
                }
            }
        }
        if self.devices_skipped > 1 {
            tracing::warn!(
                count = self.devices_skipped,
                "skipped device nodes in layer"
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::fs;
    use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};

    /// Appends an entry with a raw (unchecked) name, as a hostile tar would.
    fn raw(
        b: &mut tar::Builder<Vec<u8>>,
        name: &str,
        kind: EntryType,
        link: &str,
        data: &[u8],
        mode: u32,
    ) {
        let mut h = tar::Header::new_old();
        h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        h.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
        h.set_entry_type(kind);
        h.set_size(data.len() as u64);
        h.set_mode(mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_600_000_000);
        h.set_cksum();
        b.append(&h, data).unwrap();
    }

    fn tar(f: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        f(&mut b);
        b.into_inner().unwrap()
    }

    /// A snapshot of everything under `dir` (not following links).
    fn snapshot(dir: &Path) -> BTreeMap<PathBuf, String> {
        let mut out = BTreeMap::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                let m = fs::symlink_metadata(&p).unwrap();
                let desc = if m.is_dir() {
                    stack.push(p.clone());
                    format!("dir {:o}", m.mode())
                } else if m.file_type().is_symlink() {
                    format!("link {:?}", fs::read_link(&p).unwrap())
                } else if !m.is_file() {
                    // Never open a fifo: that waits for a writer.
                    format!("special {:o} {}", m.mode(), m.rdev())
                } else {
                    format!(
                        "file {:o} {:?} {}",
                        m.mode(),
                        fs::read(&p).unwrap(),
                        m.nlink()
                    )
                };
                out.insert(p, desc);
            }
        }
        out
    }

    /// Unpacks `layer` into `<tmp>/dest` next to a sentinel dir and asserts
    /// that nothing outside dest changed. Returns the result and the tempdir.
    fn hostile(layer: &[u8]) -> (Result<Digest, UnpackError>, tempfile::TempDir) {
        let tmp = tempfile::tempdir().unwrap();
        let sentinel = tmp.path().join("sentinel");
        fs::create_dir(&sentinel).unwrap();
        fs::write(sentinel.join("secret"), b"keep me").unwrap();
        fs::create_dir(tmp.path().join("dest")).unwrap();
        let outside = |snap: BTreeMap<PathBuf, String>| {
            snap.into_iter()
                .filter(|(p, _)| !p.starts_with(tmp.path().join("dest")))
                .collect::<BTreeMap<_, _>>()
        };
        let before = outside(snapshot(tmp.path()));
        let res = unpack_layer(
            layer,
            "application/vnd.oci.image.layer.v1.tar",
            &tmp.path().join("dest"),
        );
        assert_eq!(
            before,
            outside(snapshot(tmp.path())),
            "something outside dest changed"
        );
        (res, tmp)
    }

    #[test]
    fn unpacks_files_modes_links_and_whiteouts() {
        let layer = tar(|b| {
            raw(b, "./", EntryType::Directory, "", b"", 0o755);
            raw(b, "bin/", EntryType::Directory, "", b"", 0o755);
            raw(
                b,
                "bin/tool",
                EntryType::Regular,
                "",
                b"#!/bin/sh\n",
                0o4755,
            );
            raw(b, "tmp/", EntryType::Directory, "", b"", 0o1777);
            raw(b, "bin/sh", EntryType::Symlink, "/bin/tool", b"", 0o777);
            raw(b, "bin/hard", EntryType::Link, "bin/tool", b"", 0o755);
            raw(b, "etc/.wh.gone", EntryType::Regular, "", b"", 0o644);
            raw(b, "var/.wh..wh..opq", EntryType::Regular, "", b"", 0o644);
            raw(b, "var/", EntryType::Directory, "", b"", 0o750);
            raw(b, "dev/null", EntryType::Char, "", b"", 0o666);
            raw(b, "run/fifo", EntryType::Fifo, "", b"", 0o640);
            let mut h = tar::Header::new_gnu();
            h.set_size(3);
            h.set_mode(0o600);
            h.set_uid(1000);
            h.set_gid(1001);
            h.set_entry_type(EntryType::Regular);
            h.set_mtime(1_600_000_000);
            b.append_pax_extensions([
                ("SCHILY.xattr.user.note", &b"hi"[..]),
                ("mtime", &b"1500000000.5"[..]),
            ])
            .unwrap();
            b.append_data(&mut h, "home/owned", &b"abc"[..]).unwrap();
        });
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        let diff = unpack_layer(&layer[..], "application/vnd.oci.image.layer.v1.tar", d).unwrap();
        assert_eq!(diff, Digest::of(&layer));

        let tool = fs::metadata(d.join("bin/tool")).unwrap();
        assert_eq!(tool.permissions().mode() & 0o7777, 0o4755);
        assert_eq!(tool.nlink(), 2);
        assert_eq!(fs::read(d.join("bin/hard")).unwrap(), b"#!/bin/sh\n");
        assert_eq!(
            fs::read_link(d.join("bin/sh")).unwrap(),
            Path::new("/bin/tool")
        );
        assert_eq!(
            fs::metadata(d.join("tmp")).unwrap().permissions().mode() & 0o7777,
            0o1777
        );
        assert_eq!(tool.mtime(), 1_600_000_000);
        assert_eq!(fs::metadata(d.join("bin")).unwrap().mtime(), 1_600_000_000);

        let wh = fs::symlink_metadata(d.join("etc/gone")).unwrap();
        assert!(wh.file_type().is_char_device());
        assert_eq!(wh.rdev(), 0);
        assert!(!d.join("etc/.wh.gone").exists());
        assert_eq!(
            xattr::get(d.join("var"), "trusted.overlay.opaque")
                .unwrap()
                .as_deref(),
            Some(&b"y"[..])
        );
        assert_eq!(
            fs::metadata(d.join("var")).unwrap().permissions().mode() & 0o7777,
            0o750
        );
        assert!(!d.join("dev/null").exists(), "device nodes are skipped");
        assert!(fs::symlink_metadata(d.join("run/fifo"))
            .unwrap()
            .file_type()
            .is_fifo());

        let owned = fs::metadata(d.join("home/owned")).unwrap();
        assert_eq!((owned.uid(), owned.gid()), (1000, 1001));
        assert_eq!(owned.mtime(), 1_500_000_000);
        assert_eq!(owned.mtime_nsec(), 500_000_000);
        assert_eq!(
            xattr::get(d.join("home/owned"), "user.note")
                .unwrap()
                .as_deref(),
            Some(&b"hi"[..])
        );
    }

    #[test]
    fn pax_times() {
        let t = |v| pax_time(v).map(|t| (t.tv_sec(), t.tv_nsec()));
        assert_eq!(t("1.5"), Some((1, 500_000_000)));
        assert_eq!(t("-1.25"), Some((-2, 750_000_000)));
        assert_eq!(t("-0.5"), Some((-1, 500_000_000)));
        assert_eq!(t("7"), Some((7, 0)));
        assert_eq!(t("1.x"), None);
        assert_eq!(t(""), None);
    }

    #[test]
    fn drops_overlay_xattrs_from_the_tar() {
        let layer = tar(|b| {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(EntryType::Directory);
            h.set_mode(0o755);
            h.set_size(0);
            b.append_pax_extensions([("SCHILY.xattr.trusted.overlay.redirect", &b"/x"[..])])
                .unwrap();
            b.append_data(&mut h, "d/", &b""[..]).unwrap();
        });
        let tmp = tempfile::tempdir().unwrap();
        unpack_layer(&layer[..], "", tmp.path()).unwrap();
        assert_eq!(
            xattr::get(tmp.path().join("d"), "trusted.overlay.redirect").unwrap(),
            None
        );
    }

    #[test]
    fn compressed_layers() {
        let layer = tar(|b| raw(b, "f", EntryType::Regular, "", b"data", 0o644));
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&layer).unwrap();
        let gz = gz.finish().unwrap();
        let zst = zstd::encode_all(&layer[..], 3).unwrap();
        for (bytes, mt) in [
            (&gz, "application/vnd.oci.image.layer.v1.tar+gzip"),
            (&gz, "application/vnd.docker.image.rootfs.diff.tar.gzip"),
            (&gz, "application/octet-stream"),
            (&zst, "application/vnd.oci.image.layer.v1.tar+zstd"),
        ] {
            let tmp = tempfile::tempdir().unwrap();
            let diff = unpack_layer(&bytes[..], mt, tmp.path()).unwrap();
            assert_eq!(diff, Digest::of(&layer), "{mt}");
            assert_eq!(fs::read(tmp.path().join("f")).unwrap(), b"data");
        }
        // Truncated gzip: an error, not a short layer.
        let tmp = tempfile::tempdir().unwrap();
        let err = unpack_layer(
            &gz[..gz.len() / 2],
            "application/vnd.oci.image.layer.v1.tar+gzip",
            tmp.path(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("corrupt or truncated"), "{err}");
        // Claimed gzip that is not.
        assert!(unpack_layer(
            &layer[..],
            "application/vnd.oci.image.layer.v1.tar+gzip",
            tmp.path()
        )
        .is_err());
        // Truncated plain tar inside an entry.
        let tmp = tempfile::tempdir().unwrap();
        let big = tar(|b| raw(b, "f", EntryType::Regular, "", &[7u8; 4096], 0o644));
        let err = unpack_layer(&big[..2048], "", tmp.path()).unwrap_err();
        assert!(err.to_string().contains("truncated"), "{err}");
    }

    #[test]
    fn refuses_climbing_out() {
        for name in ["../evil", "a/../../evil", "./../sentinel/evil"] {
            let layer = tar(|b| raw(b, name, EntryType::Regular, "", b"x", 0o644));
            let (res, _tmp) = hostile(&layer);
            let err = res.unwrap_err();
            assert!(err.to_string().contains(name), "{err}");
        }
    }

    #[test]
    fn absolute_paths_land_inside() {
        let layer = tar(|b| raw(b, "/abs/evil", EntryType::Regular, "", b"x", 0o644));
        let (res, tmp) = hostile(&layer);
        res.unwrap();
        assert_eq!(fs::read(tmp.path().join("dest/abs/evil")).unwrap(), b"x");
    }

    #[test]
    fn refuses_writing_through_symlinks() {
        for target in ["/", "../../..", "../sentinel"] {
            let layer = tar(|b| {
                raw(b, "link", EntryType::Symlink, target, b"", 0o777);
                raw(b, "link/evil", EntryType::Regular, "", b"x", 0o644);
            });
            let (res, _tmp) = hostile(&layer);
            let err = res.unwrap_err();
            assert!(err.to_string().contains("symbolic link"), "{err}");
        }
        // Absolute link into the sentinel, and a directory entry through it.
        let tmp_probe = tempfile::tempdir().unwrap();
        let abs = tmp_probe.path().to_str().unwrap().to_string();
        let layer = tar(|b| {
            raw(b, "link", EntryType::Symlink, &abs, b"", 0o777);
            raw(b, "link/sub/", EntryType::Directory, "", b"", 0o777);
        });
        assert!(hostile(&layer).0.is_err());
        assert_eq!(fs::read_dir(tmp_probe.path()).unwrap().count(), 0);
    }

    #[test]
    fn replaces_symlink_instead_of_writing_through() {
        let tmp = tempfile::tempdir().unwrap();
        let target = tmp.path().join("outside");
        fs::write(&target, b"original").unwrap();
        let layer = tar(|b| {
            raw(
                b,
                "f",
                EntryType::Symlink,
                target.to_str().unwrap(),
                b"",
                0o777,
            );
            raw(b, "f", EntryType::Regular, "", b"new", 0o644);
            raw(b, "g", EntryType::Symlink, "../sentinel/secret", b"", 0o777);
            raw(b, "g", EntryType::Directory, "", b"", 0o755);
        });
        let (res, t2) = hostile(&layer);
        res.unwrap();
        assert_eq!(fs::read(&target).unwrap(), b"original");
        let f = t2.path().join("dest/f");
        assert!(fs::symlink_metadata(&f).unwrap().is_file());
        assert_eq!(fs::read(&f).unwrap(), b"new");
        assert!(fs::symlink_metadata(t2.path().join("dest/g"))
            .unwrap()
            .is_dir());
    }

    #[test]
    fn refuses_hostile_hardlinks() {
        let cases: [&[(&str, EntryType, &str)]; 4] = [
            &[("passwd", EntryType::Link, "../../etc/passwd")],
            &[("passwd", EntryType::Link, "/etc/passwd")],
            &[
                ("l", EntryType::Symlink, "../sentinel"),
                ("stolen", EntryType::Link, "l/secret"),
            ],
            &[
                ("d/", EntryType::Directory, ""),
                ("x", EntryType::Link, "d"),
            ],
        ];
        for case in cases {
            let layer = tar(|b| {
                for (name, kind, link) in case {
                    raw(b, name, *kind, link, b"", 0o644);
                }
            });
            let (res, _tmp) = hostile(&layer);
            assert!(res.is_err(), "{case:?} should be refused");
        }
    }

    #[test]
    fn refuses_odd_entries() {
        let layer = tar(|b| raw(b, "dev/sda", EntryType::Block, "", b"", 0o600));
        let (res, tmp) = hostile(&layer);
        res.unwrap();
        assert!(!tmp.path().join("dest/dev/sda").exists());

        // NUL inside a PAX path.
        let layer = tar(|b| {
            b.append_pax_extensions([("path", &b"a\0b"[..])]).unwrap();
            raw(b, "placeholder", EntryType::Regular, "", b"", 0o644);
        });
        let err = hostile(&layer).0.unwrap_err();
        assert!(err.to_string().contains("NUL"), "{err}");

        for name in [".wh.", "x/.wh..."] {
            let layer = tar(|b| raw(b, name, EntryType::Regular, "", b"", 0o644));
            assert!(hostile(&layer).0.is_err(), "{name}");
        }
        let layer = tar(|b| raw(b, "./", EntryType::Regular, "", b"", 0o644));
        assert!(hostile(&layer).0.is_err());
        // A corrupt header checksum.
        let mut layer = tar(|b| raw(b, "f", EntryType::Regular, "", b"x", 0o644));
        layer[0] = b'g';
        let err = hostile(&layer).0.unwrap_err();
        assert!(matches!(err, UnpackError::Stream(_)), "{err}");
    }

    /// One raw header block with GNU magic, as a hostile tar may have it.
    fn block(name: &str, kind: EntryType, size: u64) -> Vec<u8> {
        let mut h = tar::Header::new_gnu();
        h.as_gnu_mut().unwrap().name[..name.len()].copy_from_slice(name.as_bytes());
        h.set_entry_type(kind);
        h.set_size(size);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_600_000_000);
        h.set_cksum();
        h.as_bytes().to_vec()
    }

    fn padded(data: &[u8]) -> Vec<u8> {
        let mut v = data.to_vec();
        v.resize(data.len().div_ceil(BLOCK) * BLOCK, 0);
        v
    }

    /// Hands out its source in odd, small chunks (so headers straddle reads)
    /// and fails after `left` bytes: a guard that misses a hostile header
    /// then shows up as a wrong error rather than as an OOM.
    struct Trickle<R> {
        inner: R,
        left: usize,
        turn: usize,
    }

    impl<R: Read> Trickle<R> {
        fn new(inner: R, left: usize) -> Self {
            Trickle {
                inner,
                left,
                turn: 0,
            }
        }
    }

    impl<R: Read> Read for Trickle<R> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            const CHUNKS: [usize; 6] = [1, 7, 511, 2, 513, 4096];
            if self.left == 0 {
                return match self.inner.read(&mut [0])? {
                    0 => Ok(0),
                    _ => Err(io::Error::other("test read budget exhausted")),
                };
            }
            let n = buf
                .len()
                .min(CHUNKS[self.turn % CHUNKS.len()])
                .min(self.left);
            self.turn += 1;
            let n = self.inner.read(&mut buf[..n])?;
            self.left -= n;
            Ok(n)
        }
    }

    fn refused(res: Result<Digest, UnpackError>, path: &str, why: &str) {
        match res {
            Err(UnpackError::Refused { path: p, why: w }) if p == path && w.contains(why) => {}
            other => panic!("expected {path:?} refused with {why:?}, got {other:?}"),
        }
    }

    #[test]
    fn refuses_oversized_extension_headers() {
        use EntryType::{GNULongLink, GNULongName, XGlobalHeader, XHeader};
        for kind in [GNULongName, GNULongLink, XHeader, XGlobalHeader] {
            // Octal and base-256 sizes; then an endless body to read in.
            for size in [MAX_EXTENSION + 1, 1 << 40] {
                let head = block("././@LongLink", kind, size);
                let src = Trickle::new(io::Cursor::new(head).chain(io::repeat(b'a')), 64 << 10);
                let tmp = tempfile::tempdir().unwrap();
                let why = format!("declares {size} bytes");
                refused(unpack_layer(src, "", tmp.path()), "././@LongLink", &why);
            }
        }
        // Inside a zstd layer, after an honest entry.
        let mut layer = block("ok", EntryType::Regular, 4);
        layer.extend(padded(b"fine"));
        layer.extend(block("././@LongLink", GNULongName, 1 << 40));
        layer.resize(layer.len() + (8 << 20), b'a');
        let zst = zstd::encode_all(&layer[..], 3).unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let res = unpack_layer(
            &zst[..],
            "application/vnd.oci.image.layer.v1.tar+zstd",
            tmp.path(),
        );
        refused(res, "././@LongLink", "more than the 1048576 allowed");
        assert_eq!(fs::read(tmp.path().join("ok")).unwrap(), b"fine");

        // Exactly 1 MiB is allowed.
        let comment = vec![b'c'; (1 << 20) - "1048576 comment=\n".len()];
        let layer = tar(|b| {
            b.append_pax_extensions([("comment", &comment[..])])
                .unwrap();
            raw(b, "f", EntryType::Regular, "", b"x", 0o644);
        });
        assert_eq!(&layer[124..135], b"00004000000", "PAX body is 1 MiB");
        let tmp = tempfile::tempdir().unwrap();
        unpack_layer(&layer[..], "", tmp.path()).unwrap();
        assert_eq!(fs::read(tmp.path().join("f")).unwrap(), b"x");

        // Extension headers the tar crate would hand over as entries.
        let mut h = tar::Header::new_old();
        h.as_old_mut().name[..4].copy_from_slice(b"note");
        h.set_entry_type(XHeader);
        h.set_size(0);
        h.set_cksum();
        let mut layer = h.as_bytes().to_vec();
        layer.resize(3 * BLOCK, 0);
        let tmp = tempfile::tempdir().unwrap();
        refused(unpack_layer(&layer[..], "", tmp.path()), "note", "magic");
    }

    #[test]
    fn guard_follows_pax_sizes_like_the_tar_crate() {
        // A PAX size gives "f" (header size 0) two blocks of data. The first
        // looks like a header whose data covers the long-name header after
        // it: a guard going by header sizes alone would skip that one.
        let pax = b"13 size=1024\n";
        let mut layer = block("pax", EntryType::XHeader, pax.len() as u64);
        layer.extend(padded(pax));
        layer.extend(block("f", EntryType::Regular, 0));
        let decoy = block("decoy", EntryType::Regular, 1024);
        layer.extend(padded(&decoy));
        layer.extend([0; BLOCK]);
        layer.extend(block("././@LongLink", EntryType::GNULongName, 1 << 40));
        let src = Trickle::new(io::Cursor::new(layer).chain(io::repeat(b'a')), 64 << 10);
        let tmp = tempfile::tempdir().unwrap();
        refused(
            unpack_layer(src, "", tmp.path()),
            "././@LongLink",
            "declares",
        );
        assert_eq!(fs::metadata(tmp.path().join("f")).unwrap().len(), 1024);
    }

    #[test]
    fn guard_passes_real_archives_in_any_chunking() {
        let long = format!("{}/{}", "d".repeat(120), "f".repeat(120));
        let layer = tar(|b| {
            raw(
                b,
                "g",
                EntryType::XGlobalHeader,
                "",
                b"17 comment=hello\n",
                0o644,
            );
            for (i, n) in [0, 1, 511, 512, 513, 5000].into_iter().enumerate() {
                raw(
                    b,
                    &format!("f{i}"),
                    EntryType::Regular,
                    "",
                    &vec![b'x'; n],
                    0o644,
                );
            }
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(EntryType::Regular);
            h.set_mode(0o644);
            h.set_size(4);
            b.append_data(&mut h, &long, &b"long"[..]).unwrap();
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(EntryType::Symlink);
            h.set_size(0);
            b.append_link(&mut h, "link", &long).unwrap();
            b.append_pax_extensions([("SCHILY.xattr.user.k", &b"v"[..])])
                .unwrap();
            raw(b, "pax", EntryType::Regular, "", b"pax", 0o644);
        });
        for budget in [usize::MAX, layer.len()] {
            let tmp = tempfile::tempdir().unwrap();
            let d = tmp.path();
            let diff = unpack_layer(Trickle::new(&layer[..], budget), "", d).unwrap();
            assert_eq!(diff, Digest::of(&layer));
            assert_eq!(fs::read(d.join("f4")).unwrap(), vec![b'x'; 513]);
            assert_eq!(fs::read(d.join("f5")).unwrap().len(), 5000);
            assert_eq!(fs::read(d.join(&long)).unwrap(), b"long");
            assert_eq!(fs::read_link(d.join("link")).unwrap(), Path::new(&long));
            assert_eq!(fs::read(d.join("pax")).unwrap(), b"pax");
        }
    }

    #[test]
    fn refuses_sparse_files() {
        // 512 bytes in the archive, a terabyte of zeros on disk.
        let mut h = tar::Header::new_gnu();
        h.as_gnu_mut().unwrap().name[..6].copy_from_slice(b"sparse");
        h.set_entry_type(EntryType::GNUSparse);
        h.set_size(512);
        h.set_mode(0o644);
        let g = h.as_gnu_mut().unwrap();
        g.set_real_size(1 << 40);
        g.sparse[0].set_offset((1 << 40) - 512);
        g.sparse[0].set_length(512);
        h.set_cksum();
        let mut layer = h.as_bytes().to_vec();
        layer.extend([b'z'; BLOCK]);
        layer.extend([0; 2 * BLOCK]);
        let (res, tmp) = hostile(&layer);
        refused(res, "sparse", "sparse files are not supported");
        assert!(!tmp.path().join("dest/sparse").exists());
        // Refused by the entry itself too, should the guard ever be bypassed.
        let tmp = tempfile::tempdir().unwrap();
        let err = Unpacker::new(tmp.path())
            .unwrap()
            .entries(&layer[..])
            .unwrap_err();
        assert!(err.to_string().contains("sparse files"), "{err}");

        // The crate would read extension blocks of the sparse map for as
        // long as each says another follows, keeping every chunk.
        h.as_gnu_mut().unwrap().set_is_extended(true);
        h.set_cksum();
        let mut ext = tar::GnuExtSparseHeader::new();
        ext.set_is_extended(true);
        let mut layer = h.as_bytes().to_vec();
        for _ in 0..1000 {
            layer.extend(ext.as_bytes());
        }
        let tmp = tempfile::tempdir().unwrap();
        let src = Trickle::new(&layer[..], 64 << 10);
        refused(unpack_layer(src, "", tmp.path()), "sparse", "sparse files");
    }

    #[test]
    fn repeated_directories_are_remembered_once() {
        let n = 20_000;
        let layer = tar(|b| {
            for i in 0..n {
                let mut h = tar::Header::new_gnu();
                h.set_entry_type(EntryType::Directory);
                h.set_mode(0o755);
                h.set_mtime(1_000_000 + i);
                h.set_size(0);
                b.append_data(&mut h, "d/", io::empty()).unwrap();
            }
        });
        let tmp = tempfile::tempdir().unwrap();
        let mut u = Unpacker::new(tmp.path()).unwrap();
        u.entries(&layer[..]).unwrap();
        assert_eq!(u.dir_times.len(), 1);
        u.finish().unwrap();
        let m = fs::metadata(tmp.path().join("d")).unwrap();
        assert_eq!(m.mtime(), 1_000_000 + n as i64 - 1, "the last entry wins");
    }

    #[test]
    fn caps_entries_and_directory_bookkeeping() {
        let layer = tar(|b| {
            for i in 0..6 {
                raw(b, &format!("f{i}"), EntryType::Regular, "", b"", 0o644);
            }
        });
        let tmp = tempfile::tempdir().unwrap();
        let mut u = Unpacker::new(tmp.path()).unwrap();
        u.max_entries = 5;
        refused(
            u.entries(&layer[..]).map(|()| Digest::of(b"")),
            "f5",
            "more than 5 entries",
        );

        let layer = tar(|b| {
            for d in ["aaaa/", "bbbb/", "aaaa/", "cccc/"] {
                raw(b, d, EntryType::Directory, "", b"", 0o755);
            }
        });
        let tmp = tempfile::tempdir().unwrap();
        let mut u = Unpacker::new(tmp.path()).unwrap();
        u.max_dir_time_bytes = 10;
        let res = u.entries(&layer[..]).map(|()| Digest::of(b""));
        refused(res, "cccc/", "more than 10 bytes");
    }

    #[test]
    fn fifos_are_set_up_through_a_descriptor() {
        let layer = tar(|b| {
            raw(b, "q", EntryType::Symlink, "../sentinel/secret", b"", 0o777);
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(EntryType::Fifo);
            h.set_mode(0o640);
            h.set_uid(1234);
            h.set_gid(4321);
            h.set_mtime(1_500_000_000);
            h.set_size(0);
            b.append_data(&mut h, "q", io::empty()).unwrap();
        });
        // hostile() also checks the symlink's target was left alone.
        let (res, tmp) = hostile(&layer);
        res.unwrap();
        let m = fs::symlink_metadata(tmp.path().join("dest/q")).unwrap();
        assert!(m.file_type().is_fifo());
        assert_eq!(m.mode() & 0o7777, 0o640);
        assert_eq!(m.mtime(), 1_500_000_000);
        if nix::unistd::geteuid().is_root() {
            assert_eq!((m.uid(), m.gid()), (1234, 4321));
        }
    }
}
