//! COPY and ADD: writing files into a stage's mounted root filesystem.
//!
//! The root filesystem is image content, so it is hostile: a symlink in it
//! may point at `/etc` and must then mean the image's `/etc`, never the
//! host's. Every directory we write into is therefore found with
//! [`resolve_in_root`] (symlinks followed inside the root), and the final
//! component of every file is created fresh with `O_EXCL|O_NOFOLLOW` after
//! whatever non-directory stood there is removed. No container runs on the
//! root while we write, so nothing can swap a component under us.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use nix::sys::stat::{utimensat, UtimensatFlags};
use nix::sys::time::TimeSpec;
use nix::unistd::{fchownat, Gid, Uid};
use skiff_runtime::rootfs::resolve_in_root;

use skiff_image::store::{Layer, Store};
use skiff_runtime::rootfs::{mount_overlay_with, unmount};

use crate::ast::Heredoc;
use crate::config::clean_abs;
use crate::context::{Entry, EntryKind};

/// How copied files are owned and moded.
#[derive(Debug, Clone, Copy, Default)]
pub struct CopyOptions {
    /// `--chown`: every copied entry and every directory the copy creates.
    pub chown: Option<(u32, u32)>,
    /// `--chmod`: permission bits for every copied entry.
    pub chmod: Option<u32>,
    /// Keep the source's owner (`COPY --from`); otherwise root owns what
    /// comes from the build context, as with Docker.
    pub preserve_owner: bool,
}

fn err(path: &Path, what: &str, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{what} {}: {e}", path.display()))
}

/// Creates directory `dir` (absolute, inside `root`) and its missing
/// parents, like `mkdir -p` in the image; created ones get `owner`.
/// Returns the host path of `dir`.
pub fn mkdir_in_root(root: &Path, dir: &str, owner: Option<(u32, u32)>) -> io::Result<PathBuf> {
    let mut in_root = PathBuf::from("/");
    for comp in Path::new(dir).components() {
        let Component::Normal(name) = comp else {
            continue;
        };
        in_root.push(name);
        let host = resolve_in_root(root, &in_root)?;
        match fs::symlink_metadata(&host) {
            Ok(m) if m.is_dir() => continue,
            Ok(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!(
                        "{} exists in the image and is not a directory",
                        in_root.display()
                    ),
                ))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(err(&in_root, "cannot inspect", e)),
        }
        // A dangling link's target is created too, as `mkdir -p` would.
        fs::create_dir_all(&host).map_err(|e| err(&in_root, "cannot create", e))?;
        fs::set_permissions(&host, fs::Permissions::from_mode(0o755))
            .map_err(|e| err(&in_root, "cannot chmod", e))?;
        if let Some((uid, gid)) = owner {
            chown(&host, uid, gid).map_err(|e| err(&in_root, "cannot chown", e))?;
        }
    }
    resolve_in_root(root, Path::new(dir))
}

/// Whether `path` (absolute, in the image) is an existing directory,
/// following symlinks inside the root.
pub fn is_dir_in_root(root: &Path, path: &str) -> bool {
    resolve_in_root(root, Path::new(path)).is_ok_and(|h| h.is_dir())
}

/// `path` (absolute, in the image at `root`) and those of its parents
/// that do not exist, deepest first (links followed inside the root).
pub fn missing_in_root(root: &Path, path: &str) -> Vec<String> {
    let mut missing = Vec::new();
    let mut p = PathBuf::from(path);
    while p.parent().is_some() {
        let exists = resolve_in_root(root, &p).is_ok_and(|h| fs::symlink_metadata(h).is_ok());
        if exists {
            break;
        }
        missing.push(p.to_string_lossy().into_owned());
        p.pop();
    }
    missing
}

/// Removes `path` (in the image) if it is still a mount stub: an empty
/// directory or an empty regular file.
pub fn remove_stub_in_root(root: &Path, path: &str) {
    let Ok(host) = resolve_in_root(root, Path::new(path)) else {
        return;
    };
    match fs::symlink_metadata(&host) {
        Ok(m) if m.is_dir() => {
            let _ = fs::remove_dir(&host);
        }
        Ok(m) if m.is_file() && m.len() == 0 => {
            let _ = fs::remove_file(&host);
        }
        _ => {}
    }
}

/// Copies one walked source to `dest` (absolute, in the image): the
/// source's own entry (empty `rel`) lands on `dest` itself, the rest
/// below it. Parents of `dest` must exist.
pub fn copy_entries(
    root: &Path,
    entries: &[Entry],
    dest: &str,
    opts: &CopyOptions,
) -> io::Result<()> {
    let dest = Path::new(dest);
    for entry in entries {
        let in_root = if entry.rel.as_os_str().is_empty() {
            dest.to_path_buf()
        } else {
            dest.join(&entry.rel)
        };
        let (Some(parent), Some(name)) = (in_root.parent(), in_root.file_name()) else {
            // `dest` is `/`: the root directory itself, which always exists.
            continue;
        };
        let host_parent = resolve_in_root(root, parent)?;
        let host = host_parent.join(name);
        let existing = match fs::symlink_metadata(&host) {
            Ok(m) => Some(m),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(err(&in_root, "cannot inspect", e)),
        };
        let target = match &entry.kind {
            EntryKind::Dir => {
                // An existing directory, or a symlink to one inside the
                // root (`/bin -> usr/bin`), is written into as it is.
                // It keeps its owner and mode, as with BuildKit: only what
                // the copy creates takes the source's (or --chown's).
                let resolved = resolve_in_root(root, &in_root)?;
                if resolved.is_dir() {
                    continue;
                }
                if existing.is_some() {
                    fs::remove_file(&host).map_err(|e| err(&in_root, "cannot replace", e))?;
                }
                fs::create_dir(&host).map_err(|e| err(&in_root, "cannot create", e))?;
                host
            }
            EntryKind::File { .. } | EntryKind::Symlink { .. } => {
                if let Some(m) = &existing {
                    if m.is_dir() {
                        return Err(io::Error::new(
                            io::ErrorKind::AlreadyExists,
                            format!(
                                "cannot copy {} over the directory {}",
                                entry.path.display(),
                                in_root.display()
                            ),
                        ));
                    }
                    fs::remove_file(&host).map_err(|e| err(&in_root, "cannot replace", e))?;
                }
                match &entry.kind {
                    EntryKind::Symlink { target } => std::os::unix::fs::symlink(target, &host)
                        .map_err(|e| err(&in_root, "cannot create symlink", e))?,
                    _ => copy_file(&entry.path, &host)
                        .map_err(|e| err(&in_root, "cannot write", e))?,
                }
                host
            }
            EntryKind::Other => {
                tracing::warn!(path = %entry.path.display(), "not copied: not a file, directory or symlink");
                continue;
            }
        };
        apply_meta(&target, entry, opts)?;
    }
    Ok(())
}

fn copy_file(src: &Path, dst: &Path) -> io::Result<()> {
    let mut from = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(src)?;
    let mut to = OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_NOFOLLOW)
        .mode(0o600)
        .open(dst)?;
    // std uses copy_file_range where it can.
    io::copy(&mut from, &mut to)?;
    Ok(())
}

/// Owner, mode and mtime of an entry the copy created.
fn apply_meta(host: &Path, entry: &Entry, opts: &CopyOptions) -> io::Result<()> {
    let owner = match (opts.chown, opts.preserve_owner) {
        (Some(o), _) => o,
        (None, true) => {
            let m = fs::symlink_metadata(&entry.path)?;
            (m.uid(), m.gid())
        }
        (None, false) => (0, 0),
    };
    chown(host, owner.0, owner.1).map_err(|e| err(host, "cannot chown", e))?;
    if !matches!(entry.kind, EntryKind::Symlink { .. }) {
        let mode = opts.chmod.unwrap_or(entry.mode);
        fs::set_permissions(host, fs::Permissions::from_mode(mode & 0o7777))
            .map_err(|e| err(host, "cannot chmod", e))?;
    }
    let (secs, nanos) = entry.mtime;
    let t = TimeSpec::new(secs, nanos);
    utimensat(
        nix::fcntl::AT_FDCWD,
        host,
        &t,
        &t,
        UtimensatFlags::NoFollowSymlink,
    )
    .map_err(|e| err(host, "cannot set times of", e.into()))
}

fn chown(path: &Path, uid: u32, gid: u32) -> io::Result<()> {
    fchownat(
        nix::fcntl::AT_FDCWD,
        path,
        Some(Uid::from_raw(uid)),
        Some(Gid::from_raw(gid)),
        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
    )
    .map_err(io::Error::from)
}

/// Walks `path` (absolute, in the image at `root`) for `COPY --from`: the
/// named path is resolved inside the root (links followed there); below
/// it nothing is followed. Parents come before children, siblings sorted.
pub fn walk_in_root(root: &Path, path: &str) -> io::Result<Vec<Entry>> {
    let host = resolve_in_root(root, Path::new(path))?;
    let mut out = Vec::new();
    walk_host(&host, PathBuf::new(), &mut out)
        .map_err(|e| err(Path::new(path), "cannot read", e))?;
    Ok(out)
}

fn walk_host(host: &Path, rel: PathBuf, out: &mut Vec<Entry>) -> io::Result<()> {
    let m = fs::symlink_metadata(host)?;
    let ft = m.file_type();
    out.push(Entry::from_metadata(rel.clone(), host.to_path_buf(), &m)?);
    if ft.is_dir() {
        let mut names: Vec<_> = fs::read_dir(host)?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<Result<_, _>>()?;
        names.sort();
        for name in names {
            walk_host(&host.join(&name), rel.join(&name), out)?;
        }
    }
    Ok(())
}

/// Whether `file` is a tar archive ADD unpacks (plain, gzip or zstd), and
/// its media type for the layer unpacker. Anything else is copied as is.
pub fn archive_media_type(file: &Path) -> io::Result<Option<&'static str>> {
    use skiff_image::store::media_type as mt;
    use skiff_image::unpack::{decompressed, Compression};
    use std::io::Read;
    let mut head = [0u8; 8];
    let mut f = File::open(file)?;
    let n = f.read(&mut head)?;
    // Recognised, so never copied as a plain file by mistake.
    if head[..n].starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) || head[..n].starts_with(b"BZh") {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            format!(
                "{}: ADD cannot unpack xz or bzip2 archives yet (gzip, zstd and plain tar work)",
                file.display()
            ),
        ));
    }
    let media = match Compression::sniff(&head[..n]) {
        Compression::Gzip => mt::OCI_LAYER_GZIP,
        Compression::Zstd => mt::OCI_LAYER_ZSTD,
        _ => mt::OCI_LAYER,
    };
    // A tar header has "ustar" at offset 257 of its first block.
    let mut block = [0u8; 512];
    let mut r = match decompressed(File::open(file)?, media) {
        Ok(r) => r,
        Err(_) => return Ok(None),
    };
    let mut got = 0;
    while got < block.len() {
        match r.read(&mut block[got..]) {
            Ok(0) => break,
            Ok(k) => got += k,
            Err(_) => return Ok(None),
        }
    }
    Ok((got == 512 && &block[257..262] == b"ustar").then_some(media))
}

/// A glob may match several files; Docker then wants a directory.
pub(crate) fn has_glob(sources: &[String]) -> bool {
    sources.iter().any(|s| s.contains(['*', '?', '[']))
}

pub(crate) enum Source {
    Context,
    Layers { layers: Vec<Layer>, key: String },
}

/// A COPY or ADD, with its sources found before the overlay is mounted.
pub(crate) struct CopyPlan {
    pub(crate) from: Source,
    /// Context-relative paths, or paths in the `--from` image.
    pub(crate) paths: Vec<PathBuf>,
    /// For context sources: each path's walk.
    pub(crate) context_entries: Vec<Vec<Entry>>,
    pub(crate) heredocs: Vec<Heredoc>,
    pub(crate) dest: String,
    pub(crate) dest_is_dir: bool,
    pub(crate) chown: Option<String>,
    pub(crate) chmod: Option<u32>,
    pub(crate) is_add: bool,
    /// What the copied content hashes to, for the cache key.
    pub(crate) content_key: String,
}

impl CopyPlan {
    pub(crate) fn apply(&self, store: &Store, rootfs: &Path, bundle: &Path) -> Result<(), String> {
        let owner = match &self.chown {
            Some(spec) => {
                Some(skiff_runtime::spec::chown_ids(rootfs, spec).map_err(|e| e.to_string())?)
            }
            None => None,
        };
        let opts = CopyOptions {
            chown: owner,
            chmod: self.chmod,
            preserve_owner: matches!(self.from, Source::Layers { .. }),
        };
        let dest_is_dir = self.dest_is_dir || is_dir_in_root(rootfs, &self.dest);
        let e = |e: io::Error| e.to_string();
        if dest_is_dir {
            mkdir_in_root(rootfs, &self.dest, owner).map_err(e)?;
        } else if let Some(parent) = Path::new(&self.dest).parent() {
            mkdir_in_root(rootfs, &parent.to_string_lossy(), owner).map_err(e)?;
        }
        // Where one source whose own entry is `entries[0]` lands.
        let target = |name: &std::ffi::OsStr, is_dir: bool| -> String {
            if is_dir || !dest_is_dir {
                self.dest.clone()
            } else {
                format!(
                    "{}/{}",
                    self.dest.trim_end_matches('/'),
                    name.to_string_lossy()
                )
            }
        };
        for doc in &self.heredocs {
            let file = bundle.join(format!("heredoc-{}", doc.name.replace('/', "_")));
            fs::write(&file, &doc.content).map_err(e)?;
            let entry = Entry {
                rel: PathBuf::new(),
                path: file,
                kind: EntryKind::File {
                    size: doc.content.len() as u64,
                },
                mode: 0o644,
                mtime: (skiff_core::time::now_secs(), 0),
            };
            let dest = target(std::ffi::OsStr::new(&doc.name), false);
            copy_entries(rootfs, &[entry], &dest, &opts).map_err(e)?;
        }
        match &self.from {
            Source::Context => {
                for (rel, entries) in self.paths.iter().zip(&self.context_entries) {
                    let Some(top) = entries.first() else { continue };
                    let is_dir = matches!(top.kind, EntryKind::Dir);
                    // The name as written: a named symlink is copied under
                    // its own name with its target's content, as Docker does.
                    let name = rel.file_name().unwrap_or_default();
                    if self.is_add && !is_dir {
                        if let Some(mt) = archive_media_type(&top.path).map_err(e)? {
                            self.extract(rootfs, bundle, &top.path, mt, &opts)?;
                            continue;
                        }
                    }
                    copy_entries(rootfs, entries, &target(name, is_dir), &opts).map_err(e)?;
                }
            }
            Source::Layers { layers, .. } => {
                let src_root = bundle.join("from");
                let mut lowers = Vec::with_capacity(layers.len().max(1));
                for l in layers {
                    lowers.push(store.layer_dir(l).map_err(|e| e.to_string())?);
                }
                if lowers.is_empty() {
                    let empty = bundle.join("from-empty");
                    fs::create_dir(&empty).map_err(e)?;
                    lowers.push(empty);
                }
                mount_overlay_with(
                    &lowers,
                    &bundle.join("from-upper"),
                    &bundle.join("from-work"),
                    &src_root,
                    // Only read: nothing in its upper to sync at unmount.
                    "volatile",
                )
                .map_err(|e| e.to_string())?;
                let res = (|| -> Result<(), String> {
                    for p in self.expand_in_root(&src_root)? {
                        let in_root = clean_abs(&p.to_string_lossy());
                        let entries = walk_in_root(&src_root, &in_root).map_err(|err| {
                            if err.kind() == io::ErrorKind::NotFound {
                                format!("{in_root}: not found in the --from image")
                            } else {
                                err.to_string()
                            }
                        })?;
                        let Some(top) = entries.first() else { continue };
                        let is_dir = matches!(top.kind, EntryKind::Dir);
                        let name = Path::new(&in_root).file_name().unwrap_or_default();
                        copy_entries(rootfs, &entries, &target(name, is_dir), &opts).map_err(e)?;
                    }
                    Ok(())
                })();
                unmount(&src_root).map_err(|e| e.to_string())?;
                res?;
            }
        }
        Ok(())
    }

    /// The `--from` sources, a wildcard in a last component expanded in
    /// the mounted image (sorted); a wildcard matching nothing is an error.
    fn expand_in_root(&self, root: &Path) -> Result<Vec<PathBuf>, String> {
        let mut out = Vec::new();
        for p in &self.paths {
            let name = p.file_name().map(|n| n.to_string_lossy().into_owned());
            let Some(name) = name.filter(|n| crate::context::has_wildcards(n)) else {
                out.push(p.clone());
                continue;
            };
            let parent = clean_abs(&p.parent().unwrap_or(Path::new("/")).to_string_lossy());
            let dir = skiff_runtime::rootfs::resolve_in_root(root, Path::new(&parent))
                .map_err(|e| e.to_string())?;
            let mut found = Vec::new();
            if let Ok(rd) = fs::read_dir(&dir) {
                for entry in rd.flatten() {
                    let n = entry.file_name().to_string_lossy().into_owned();
                    if crate::context::match_component(&name, &n).map_err(|e| e.to_string())? {
                        found.push(Path::new(&parent).join(n));
                    }
                }
            }
            if found.is_empty() {
                return Err(format!("{}: no match in the --from image", p.display()));
            }
            found.sort();
            out.extend(found);
        }
        Ok(out)
    }

    /// ADD of a local tar: unpacked with the layer unpacker's rules (no
    /// path leaves the directory) into scratch space, then copied in.
    fn extract(
        &self,
        rootfs: &Path,
        bundle: &Path,
        archive: &Path,
        media: &str,
        opts: &CopyOptions,
    ) -> Result<(), String> {
        let dir = bundle.join("extract");
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir(&dir).map_err(|e| e.to_string())?;
        let file = fs::File::open(archive).map_err(|e| e.to_string())?;
        skiff_image::unpack::unpack_layer(io::BufReader::new(file), media, &dir)
            .map_err(|e| format!("cannot extract {}: {e}", archive.display()))?;
        let entries = walk_in_root(&dir, "/").map_err(|e| e.to_string())?;
        let opts = CopyOptions {
            preserve_owner: true,
            ..*opts
        };
        copy_entries(rootfs, &entries, &self.dest, &opts).map_err(|e| e.to_string())?;
        let _ = fs::remove_dir_all(&dir);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(root: &Path) -> Vec<Entry> {
        let mut out = Vec::new();
        walk_host(root, PathBuf::new(), &mut out).unwrap();
        out
    }

    #[test]
    fn copies_into_the_image_never_through_its_symlinks_to_the_host() {
        let img = tempfile::tempdir().unwrap();
        let host_dir = tempfile::tempdir().unwrap();
        // The image's /etc is a link to the host's directory, as a hostile
        // image could make it; inside the image it means <root>/<host_dir>.
        std::os::unix::fs::symlink(host_dir.path(), img.path().join("etc")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", img.path().join("passwd")).unwrap();
        let src = tempfile::tempdir().unwrap();
        fs::write(src.path().join("conf"), "x").unwrap();
        fs::set_permissions(src.path().join("conf"), fs::Permissions::from_mode(0o640)).unwrap();

        let opts = CopyOptions::default();
        mkdir_in_root(img.path(), "/etc", None).unwrap();
        copy_entries(img.path(), &entries(src.path()), "/etc", &opts).unwrap();
        assert!(
            !host_dir.path().join("conf").exists(),
            "wrote through to the host"
        );
        let inside = resolve_in_root(img.path(), Path::new("/etc/conf")).unwrap();
        assert!(inside.starts_with(img.path()));
        assert_eq!(fs::read_to_string(&inside).unwrap(), "x");
        assert_eq!(fs::metadata(&inside).unwrap().mode() & 0o777, 0o640);

        // A file copied onto a symlink replaces the link.
        let file = entries(&src.path().join("conf"));
        copy_entries(img.path(), &file, "/passwd", &opts).unwrap();
        let m = fs::symlink_metadata(img.path().join("passwd")).unwrap();
        assert!(m.is_file());
    }

    #[test]
    fn chown_chmod_and_created_parents() {
        let img = tempfile::tempdir().unwrap();
        let src = tempfile::tempdir().unwrap();
        fs::create_dir(src.path().join("d")).unwrap();
        fs::write(src.path().join("d/f"), "y").unwrap();
        let opts = CopyOptions {
            chown: Some((1000, 1001)),
            chmod: Some(0o700),
            preserve_owner: false,
        };
        let dest = mkdir_in_root(img.path(), "/app/sub", Some((1000, 1001))).unwrap();
        assert!(dest.is_dir());
        copy_entries(img.path(), &entries(src.path()), "/app/sub", &opts).unwrap();
        let f = fs::metadata(img.path().join("app/sub/d/f")).unwrap();
        assert_eq!((f.uid(), f.gid(), f.mode() & 0o7777), (1000, 1001, 0o700));
        let app = fs::metadata(img.path().join("app")).unwrap();
        assert_eq!((app.uid(), app.gid()), (1000, 1001));
        fs::write(img.path().join("file"), "").unwrap();
        assert!(mkdir_in_root(img.path(), "/file/x", None).is_err());
    }

    #[test]
    fn recognises_archives() {
        let dir = tempfile::tempdir().unwrap();
        let tar_path = dir.path().join("a.tar");
        let mut b = tar::Builder::new(File::create(&tar_path).unwrap());
        let mut h = tar::Header::new_ustar();
        h.set_size(1);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, "x", &b"1"[..]).unwrap();
        b.finish().unwrap();
        drop(b);
        assert!(archive_media_type(&tar_path).unwrap().is_some());
        fs::write(dir.path().join("t.txt"), "just text").unwrap();
        assert_eq!(archive_media_type(&dir.path().join("t.txt")).unwrap(), None);
    }
}
