//! Layer tars from overlayfs upper directories.
//!
//! Each filesystem-changing build step runs on an overlayfs mount whose upper
//! directory starts empty, so afterwards the upper directory holds exactly
//! the step's change, in overlayfs format. [`write_layer`] turns it into an
//! uncompressed OCI layer tar, the way containerd and Docker do it:
//!
//! - Entries are relative (`a/b`, directories `a/`) and come depth-first,
//!   parents before children, siblings sorted by byte name, so the same tree
//!   always gives the same tar and therefore the same digest (the build cache
//!   keys on it).
//! - A whiteout (a 0/0 character device `NAME`) becomes an empty file
//!   `.wh.NAME`; a directory marked opaque (`trusted.overlay.opaque=y`, or
//!   `user.overlay.opaque=y` on a `userxattr` mount) is followed by an empty
//!   `DIR/.wh..wh..opq`. Both markers are written as containerd writes
//!   whiteouts: mode 0, owned by root, mtime 0, so they carry nothing that
//!   varies between builds.
//! - `trusted.overlay.*`/`user.overlay.*` xattrs are overlayfs bookkeeping
//!   and never reach the tar. Other xattrs (file capabilities, `user.*`) are
//!   PAX `SCHILY.xattr.*` records, sorted by name.
//! - A regular file with several links whose inode was already written
//!   becomes a hard-link entry to the first path.
//! - Device nodes other than whiteouts, and sockets, are skipped with a
//!   warning: the runtime provides `/dev`, and the unpacker refuses devices.
//! - A renamed directory (`overlay.redirect`) or a metadata-only copy-up
//!   (`overlay.metacopy`) cannot be expressed in a tar without the lower
//!   layers, so they are errors: the builder must mount with
//!   `redirect_dir=off,metacopy=off`.
//!
//! Nothing follows symlinks (`lstat`, `l*xattr`, `O_NOFOLLOW`), and file
//! contents are streamed.

use std::collections::hash_map::{Entry, HashMap};
use std::ffi::OsString;
use std::fs::{self, File, Metadata, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use skiff_core::{Digest, DigestWriter};
use tar::{Builder, EntryType, Header};

const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE_MARKER: &str = ".wh..wh..opq";
/// Where overlayfs keeps its own xattrs: `trusted.` normally, `user.` on a
/// `userxattr` (rootless) mount.
const OVERLAY_XATTR_PREFIXES: [&str; 2] = ["trusted.overlay.", "user.overlay."];
/// Longest link name the header itself holds; longer ones need a GNU
/// long-link entry.
const HEADER_LINK_NAME_LEN: usize = 100;

/// Writes overlayfs upper directory `upper` as an uncompressed OCI layer tar to `out`,
/// returning the tar's sha256 (the layer's diff_id; the caller may compress
/// what it writes) and its size in bytes.
pub fn write_layer(upper: &Path, out: impl Write) -> io::Result<(Digest, u64)> {
    let mut w = LayerWriter {
        upper,
        tar: Builder::new(DigestWriter::new(out)),
        first_links: HashMap::new(),
    };
    // An explicit stack rather than recursion, so a deep tree cannot overflow
    // the thread's stack. Children are pushed in reverse so the smallest name
    // is popped first.
    let mut stack = children(upper, Path::new(""))?;
    while let Some(rel) = stack.pop() {
        if w.entry(&rel)? {
            stack.extend(children(upper, &rel)?);
        }
    }
    let mut hashed = w.tar.into_inner()?;
    hashed.flush()?;
    let (_, digest, size) = hashed.finish();
    Ok((digest, size))
}

/// Whether `upper` holds no change at all (empty directory): the builder then records
/// an empty layer in history instead of writing one.
pub fn is_empty(upper: &Path) -> io::Result<bool> {
    match fs::read_dir(upper).map_err(|e| at(upper, e))?.next() {
        None => Ok(true),
        Some(Ok(_)) => Ok(false),
        Some(Err(e)) => Err(at(upper, e)),
    }
}

struct LayerWriter<'a, W: Write> {
    upper: &'a Path,
    tar: Builder<DigestWriter<W>>,
    /// The first path written for each multiply-linked inode, by (dev, ino).
    first_links: HashMap<(u64, u64), PathBuf>,
}

impl<W: Write> LayerWriter<'_, W> {
    /// Writes the entry (or entries) for `rel`, relative to the upper
    /// directory; returns whether it is a directory to descend into.
    fn entry(&mut self, rel: &Path) -> io::Result<bool> {
        let path = self.upper.join(rel);
        let meta = fs::symlink_metadata(&path).map_err(|e| at(&path, e))?;
        let kind = meta.file_type();
        let res = if kind.is_char_device() && meta.rdev() == 0 {
            let mut name = OsString::from(WHITEOUT_PREFIX);
            name.push(rel.file_name().unwrap_or_default());
            self.marker(&rel.with_file_name(name))
        } else if kind.is_char_device() || kind.is_block_device() || kind.is_socket() {
            tracing::warn!(
                path = %rel.display(),
                "skipping a device node or socket: layers do not carry them"
            );
            Ok(())
        } else if kind.is_dir() {
            self.dir(rel, &path, &meta)
        } else if kind.is_symlink() {
            self.symlink(rel, &path, &meta)
        } else if kind.is_fifo() {
            self.fifo(rel, &path, &meta)
        } else {
            self.file(rel, &path, &meta)
        };
        res.map_err(|e| at(&path, e))?;
        Ok(kind.is_dir())
    }

    /// A directory, and the opaque marker after it if overlayfs hides the
    /// lower layers' contents of it.
    fn dir(&mut self, rel: &Path, path: &Path, meta: &Metadata) -> io::Result<()> {
        let xattrs = Xattrs::of(path)?;
        self.pax(&xattrs)?;
        let mut name = rel.as_os_str().to_os_string();
        name.push("/");
        let mut h = header(meta, EntryType::Directory);
        self.tar.append_data(&mut h, name, io::empty())?;
        if xattrs.opaque {
            self.marker(&rel.join(OPAQUE_MARKER))?;
        }
        Ok(())
    }

    fn fifo(&mut self, rel: &Path, path: &Path, meta: &Metadata) -> io::Result<()> {
        self.pax(&Xattrs::of(path)?)?;
        let mut h = header(meta, EntryType::Fifo);
        self.tar.append_data(&mut h, rel, io::empty())
    }

    fn symlink(&mut self, rel: &Path, path: &Path, meta: &Metadata) -> io::Result<()> {
        let target = fs::read_link(path)?;
        self.pax(&Xattrs::of(path)?)?;
        let mut h = header(meta, EntryType::Symlink);
        let bytes = target.as_os_str().as_bytes();
        if bytes.len() <= HEADER_LINK_NAME_LEN {
            // Literally: `append_link` would normalize `a/./b` to `a/b`.
            h.set_link_name_literal(bytes)?;
            self.tar.append_data(&mut h, rel, io::empty())
        } else {
            self.tar.append_link(&mut h, rel, &target)
        }
    }

    /// A regular file: a hard link to its first path if that was written
    /// already, else its contents.
    fn file(&mut self, rel: &Path, path: &Path, meta: &Metadata) -> io::Result<()> {
        if meta.nlink() > 1 {
            match self.first_links.entry((meta.dev(), meta.ino())) {
                Entry::Occupied(first) => {
                    let mut h = header(meta, EntryType::Link);
                    return self.tar.append_link(&mut h, rel, first.get());
                }
                Entry::Vacant(v) => {
                    v.insert(rel.to_path_buf());
                }
            }
        }
        // O_NOFOLLOW: should the file have been swapped for a symlink since
        // the lstat, fail rather than archive what it points to.
        let file = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)?;
        self.pax(&Xattrs::of(path)?)?;
        let mut h = header(meta, EntryType::Regular);
        h.set_size(meta.len());
        let contents = Exact {
            file,
            left: meta.len(),
        };
        self.tar.append_data(&mut h, rel, contents)
    }

    /// The xattrs of the entry that follows, as one PAX header.
    fn pax(&mut self, xattrs: &Xattrs) -> io::Result<()> {
        let records = xattrs.pax.iter().map(|(k, v)| (k.as_str(), v.as_slice()));
        self.tar.append_pax_extensions(records)
    }

    /// An empty whiteout marker file at `rel`.
    fn marker(&mut self, rel: &Path) -> io::Result<()> {
        let mut h = Header::new_gnu();
        h.set_entry_type(EntryType::Regular);
        h.set_mode(0);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_size(0);
        self.tar.append_data(&mut h, rel, io::empty())
    }
}

/// The header fields every entry takes from its inode. User and group names
/// stay empty: ids are what a container sees, and names would depend on the
/// build host's /etc/passwd.
fn header(meta: &Metadata, kind: EntryType) -> Header {
    let mut h = Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(meta.mode() & 0o7777);
    h.set_uid(meta.uid().into());
    h.set_gid(meta.gid().into());
    // Seconds only, as Docker writes them; a pre-1970 mtime becomes 0.
    h.set_mtime(u64::try_from(meta.mtime()).unwrap_or(0));
    h.set_size(0);
    h
}

/// The names of the entries of directory `rel`, as paths relative to
/// `upper`, in reverse byte order (for popping off a stack).
fn children(upper: &Path, rel: &Path) -> io::Result<Vec<PathBuf>> {
    let dir = upper.join(rel);
    let mut names = fs::read_dir(&dir)
        .and_then(|it| {
            it.map(|e| e.map(|e| e.file_name()))
                .collect::<io::Result<Vec<_>>>()
        })
        .map_err(|e| at(&dir, e))?;
    names.sort_unstable_by(|a, b| b.cmp(a));
    Ok(names.into_iter().map(|n| rel.join(n)).collect())
}

/// What an entry's xattrs contribute to the tar.
#[derive(Default)]
struct Xattrs {
    /// `SCHILY.xattr.NAME` records, sorted for a deterministic tar.
    pax: Vec<(String, Vec<u8>)>,
    /// Whether overlayfs marks the directory opaque.
    opaque: bool,
}

impl Xattrs {
    fn of(path: &Path) -> io::Result<Xattrs> {
        let mut out = Xattrs::default();
        let names = match xattr::list(path) {
            Ok(names) => names,
            // A filesystem without xattrs has none to carry.
            Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => return Ok(out),
            Err(e) => return Err(e),
        };
        for name in names {
            let Some(name) = name.to_str() else {
                let why = format!("xattr name {name:?} is not UTF-8 (PAX keys must be)");
                return Err(io::Error::new(io::ErrorKind::InvalidData, why));
            };
            let Some(value) = xattr::get(path, name)? else {
                continue;
            };
            let overlay = OVERLAY_XATTR_PREFIXES
                .iter()
                .find_map(|p| name.strip_prefix(p));
            match overlay {
                Some("opaque") => out.opaque |= value == b"y",
                Some(key @ ("redirect" | "metacopy")) => {
                    let why = format!(
                        "overlayfs {key} cannot be written as a layer without the lower \
                         layers (mount with redirect_dir=off,metacopy=off)"
                    );
                    return Err(io::Error::new(io::ErrorKind::Unsupported, why));
                }
                Some(_) => {}
                None => out.pax.push((format!("SCHILY.xattr.{name}"), value)),
            }
        }
        out.pax.sort();
        Ok(out)
    }
}

/// A file's contents, exactly `left` bytes of them. The size is already in
/// the header, and the tar crate pads by what it copied, so a file that
/// shrank since the lstat must fail the layer instead of corrupting it; one
/// that grew is cut at the size written.
struct Exact {
    file: File,
    left: u64,
}

impl Read for Exact {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            return Ok(0);
        }
        let max = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let n = self.file.read(&mut buf[..max])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "file shrank while being written to the layer",
            ));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

/// `e`, saying which path it concerns.
fn at(path: &Path, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{chown, symlink, PermissionsExt};

    use nix::sys::stat::{makedev, mknod, Mode, SFlag};

    const LAYER: &str = "application/vnd.oci.image.layer.v1.tar";

    /// On the real disk: tmpfs may lack `user.*` xattrs.
    fn tempdir() -> tempfile::TempDir {
        tempfile::Builder::new()
            .prefix("skiff-layer-")
            .tempdir_in("/var/tmp")
            .unwrap()
    }

    fn write(path: &Path, data: &[u8], mode: u32) {
        fs::write(path, data).unwrap();
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
    }

    fn mkdir(path: &Path, mode: u32) {
        fs::create_dir(path).unwrap();
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
    }

    fn long_target() -> String {
        format!("../{}", "t".repeat(150))
    }

    fn long_name() -> String {
        format!("long/{}", "n".repeat(120))
    }

    /// An upper directory with one of everything. Returns whether the
    /// filesystem took the `user.test` xattr.
    fn build_upper(u: &Path) -> bool {
        mkdir(&u.join("bin"), 0o755);
        let tool = u.join("bin/tool");
        write(&tool, b"#!/bin/sh\n", 0o644);
        // chown first: it clears setuid.
        chown(&tool, Some(1000), Some(1000)).unwrap();
        fs::set_permissions(&tool, fs::Permissions::from_mode(0o4755)).unwrap();
        xattr::set(&tool, "trusted.overlay.origin", b"bookkeeping").unwrap();

        mkdir(&u.join("etc"), 0o755);
        let whiteout = SFlag::S_IFCHR;
        mknod(&u.join("etc/gone"), whiteout, Mode::empty(), makedev(0, 0)).unwrap();
        write(&u.join("etc/secret"), b"s3cret", 0o600);
        write(&u.join("etc/hard1"), b"same inode", 0o644);
        fs::hard_link(u.join("etc/hard1"), u.join("etc/hard2")).unwrap();

        nix::unistd::mkfifo(&u.join("fifo"), Mode::from_bits_truncate(0o640)).unwrap();
        fs::set_permissions(u.join("fifo"), fs::Permissions::from_mode(0o640)).unwrap();
        symlink(long_target(), u.join("link")).unwrap();
        symlink("a/./b/", u.join("short")).unwrap();
        mkdir(&u.join("long"), 0o700);
        write(&u.join(long_name()), b"long", 0o644);
        mknod(
            &u.join("null"),
            SFlag::S_IFCHR,
            Mode::from_bits_truncate(0o666),
            makedev(1, 3),
        )
        .unwrap();

        mkdir(&u.join("var"), 0o1777);
        xattr::set(u.join("var"), "trusted.overlay.opaque", b"y").unwrap();
        write(&u.join("var/new"), b"new", 0o644);

        let x = u.join("x");
        write(&x, b"x", 0o644);
        xattr::set(&x, "trusted.skiff", b"1").unwrap();
        match xattr::set(&x, "user.test", b"1") {
            Ok(()) => true,
            Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => {
                eprintln!(
                    "NOTE: {} has no user xattrs; user.test is not checked",
                    x.display()
                );
                false
            }
            Err(e) => panic!("setting user.test: {e}"),
        }
    }

    /// One tar entry as the tests compare it.
    #[derive(Debug, PartialEq)]
    struct Seen {
        path: String,
        kind: EntryType,
        mode: u32,
        owner: (u64, u64),
        link: String,
        xattrs: Vec<(String, Vec<u8>)>,
        data: Vec<u8>,
    }

    fn read_tar(bytes: &[u8]) -> Vec<Seen> {
        let mut archive = tar::Archive::new(bytes);
        let mut out = Vec::new();
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let mut xattrs = Vec::new();
            if let Some(pax) = entry.pax_extensions().unwrap() {
                for ext in pax {
                    let ext = ext.unwrap();
                    let key = ext.key().unwrap().to_string();
                    xattrs.push((key, ext.value_bytes().to_vec()));
                }
            }
            let h = entry.header();
            let (path, kind, mode) = (
                String::from_utf8(entry.path_bytes().into_owned()).unwrap(),
                h.entry_type(),
                h.mode().unwrap(),
            );
            let owner = (h.uid().unwrap(), h.gid().unwrap());
            assert!(h.username_bytes().is_none_or(<[u8]>::is_empty), "{path}");
            let link = entry
                .link_name_bytes()
                .map(|l| String::from_utf8(l.into_owned()).unwrap())
                .unwrap_or_default();
            let mut data = Vec::new();
            entry.read_to_end(&mut data).unwrap();
            out.push(Seen {
                path,
                kind,
                mode,
                owner,
                link,
                xattrs,
                data,
            });
        }
        out
    }

    fn layer(upper: &Path) -> (Vec<u8>, Digest, u64) {
        let mut bytes = Vec::new();
        let (digest, size) = write_layer(upper, &mut bytes).unwrap();
        (bytes, digest, size)
    }

    #[test]
    fn writes_an_upper_dir_as_an_oci_layer() {
        let tmp = tempdir();
        let upper = tmp.path().join("upper");
        fs::create_dir(&upper).unwrap();
        let user_xattrs = build_upper(&upper);
        let (bytes, digest, size) = layer(&upper);
        assert_eq!(digest, Digest::of(&bytes));
        assert_eq!(size, bytes.len() as u64);
        assert!(
            !bytes.windows(15).any(|w| w == b"trusted.overlay"),
            "overlayfs xattrs leaked into the tar"
        );

        use EntryType::{Directory as D, Fifo, Link, Regular as F, Symlink};
        let root = (0, 0);
        let e = |path: &str, kind, mode, owner, link: &str, data: &[u8]| Seen {
            path: path.to_string(),
            kind,
            mode,
            owner,
            link: link.to_string(),
            xattrs: vec![],
            data: data.to_vec(),
        };
        let mut x = e("x", F, 0o644, root, "", b"x");
        x.xattrs
            .push(("SCHILY.xattr.trusted.skiff".into(), b"1".to_vec()));
        if user_xattrs {
            x.xattrs
                .push(("SCHILY.xattr.user.test".into(), b"1".to_vec()));
        }
        let expected = vec![
            e("bin/", D, 0o755, root, "", b""),
            e("bin/tool", F, 0o4755, (1000, 1000), "", b"#!/bin/sh\n"),
            e("etc/", D, 0o755, root, "", b""),
            e("etc/.wh.gone", F, 0, root, "", b""),
            e("etc/hard1", F, 0o644, root, "", b"same inode"),
            e("etc/hard2", Link, 0o644, root, "etc/hard1", b""),
            e("etc/secret", F, 0o600, root, "", b"s3cret"),
            e("fifo", Fifo, 0o640, root, "", b""),
            e("link", Symlink, 0o777, root, &long_target(), b""),
            e("long/", D, 0o700, root, "", b""),
            e(&long_name(), F, 0o644, root, "", b"long"),
            e("short", Symlink, 0o777, root, "a/./b/", b""),
            e("var/", D, 0o1777, root, "", b""),
            e("var/.wh..wh..opq", F, 0, root, "", b""),
            e("var/new", F, 0o644, root, "", b"new"),
            x,
        ];
        let seen = read_tar(&bytes);
        for (s, e) in seen.iter().zip(&expected) {
            assert_eq!(s, e);
        }
        assert_eq!(seen.len(), expected.len(), "{seen:#?}");
    }

    #[test]
    fn round_trips_through_the_unpacker() {
        let tmp = tempdir();
        let upper = tmp.path().join("upper");
        fs::create_dir(&upper).unwrap();
        let user_xattrs = build_upper(&upper);
        let (bytes, digest, _) = layer(&upper);

        let dest = tmp.path().join("dest");
        fs::create_dir(&dest).unwrap();
        let diff_id = skiff_image::unpack::unpack_layer(&bytes[..], LAYER, &dest).unwrap();
        assert_eq!(diff_id, digest);

        let meta = |p: &str| fs::symlink_metadata(dest.join(p)).unwrap();
        let gone = meta("etc/gone");
        assert!(gone.file_type().is_char_device() && gone.rdev() == 0);
        assert!(!dest.join("etc/.wh.gone").exists());
        let opaque = xattr::get(dest.join("var"), "trusted.overlay.opaque").unwrap();
        assert_eq!(opaque.as_deref(), Some(&b"y"[..]));
        assert!(!dest.join("var/.wh..wh..opq").exists());
        assert!(
            fs::symlink_metadata(dest.join("null")).is_err(),
            "device kept"
        );
        let tool = meta("bin/tool");
        assert_eq!(
            (tool.mode() & 0o7777, tool.uid(), tool.gid()),
            (0o4755, 1000, 1000)
        );
        assert_eq!(meta("etc/secret").mode() & 0o7777, 0o600);
        assert_eq!(meta("var").mode() & 0o7777, 0o1777);
        assert!(meta("fifo").file_type().is_fifo());
        assert_eq!(meta("fifo").mode() & 0o7777, 0o640);
        assert_eq!(
            fs::read_link(dest.join("link")).unwrap(),
            Path::new(&long_target())
        );
        assert_eq!(fs::read(dest.join(long_name())).unwrap(), b"long");
        assert_eq!(meta("etc/hard1").ino(), meta("etc/hard2").ino());
        let x = dest.join("x");
        assert_eq!(
            xattr::get(&x, "trusted.skiff").unwrap().as_deref(),
            Some(&b"1"[..])
        );
        if user_xattrs {
            assert_eq!(
                xattr::get(&x, "user.test").unwrap().as_deref(),
                Some(&b"1"[..])
            );
        }
        assert_eq!(
            xattr::get(dest.join("bin/tool"), "trusted.overlay.origin").unwrap(),
            None
        );

        // The unpacked tree is the same change, so it writes the same layer.
        assert_eq!(layer(&dest).1, digest);
    }

    #[test]
    fn is_deterministic() {
        let tmp = tempdir();
        build_upper(tmp.path());
        let (first, d1, _) = layer(tmp.path());
        let (second, d2, _) = layer(tmp.path());
        assert_eq!(d1, d2);
        assert_eq!(first, second);
    }

    #[test]
    fn refuses_what_needs_the_lower_layers() {
        for key in ["trusted.overlay.redirect", "trusted.overlay.metacopy"] {
            let tmp = tempdir();
            mkdir(&tmp.path().join("d"), 0o755);
            xattr::set(tmp.path().join("d"), key, b"/old").unwrap();
            let err = write_layer(tmp.path(), io::sink()).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::Unsupported, "{err}");
            assert!(err.to_string().contains("redirect_dir=off"), "{err}");
        }
    }

    #[test]
    fn empty_upper_dirs() {
        let tmp = tempdir();
        assert!(is_empty(tmp.path()).unwrap());
        let (bytes, digest, size) = layer(tmp.path());
        assert_eq!((bytes, size), (vec![0; 1024], 1024));
        assert_eq!(digest, Digest::of(&[0; 1024]));
        fs::create_dir(tmp.path().join("d")).unwrap();
        assert!(!is_empty(tmp.path()).unwrap());
        assert!(is_empty(&tmp.path().join("missing")).is_err());
    }
}
