//! Root filesystems: an overlay of the image's unpacked layers with a
//! private writable upper directory per container, and path resolution
//! inside a root that never escapes it.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::mount::{mount, umount2, MntFlags, MsFlags};

#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    #[error("cannot mount an overlay without layers at {0}")]
    NoLayers(PathBuf),
    #[error("overlay path {0} contains ':' or ',', which overlayfs cannot take")]
    BadPath(PathBuf),
    #[error("cannot prepare {path}: {source}")]
    Prepare { path: PathBuf, source: io::Error },
    #[error("cannot mount the overlay on {target} ({layers} layers): {source}")]
    Mount {
        target: PathBuf,
        layers: usize,
        source: Errno,
    },
    #[error("cannot unmount {target}: {source}")]
    Unmount { target: PathBuf, source: Errno },
}

/// The mount data of one call is a single page; leave room for the rest.
const MAX_MOUNT_DATA: usize = 4000;

/// Mounts `lowers` (lowest layer first, as in the image manifest) under a
/// writable `upper` at `target`. One layer still gets an overlay, so the
/// container never writes into the shared layer cache. `upper`, `work` and
/// `target` are created when missing.
///
/// When the plain option string would pass the one-page limit of mount
/// data, each layer is handed over as `/proc/self/fd/N` of an `O_PATH`
/// descriptor instead: short, thread-safe (no chdir), and resolved by the
/// kernel at mount time.
pub fn mount_overlay(
    lowers: &[PathBuf],
    upper: &Path,
    work: &Path,
    target: &Path,
) -> Result<(), RootfsError> {
    mount_overlay_with(lowers, upper, work, target, "")
}

/// [`mount_overlay`] with extra mount options (`opt=value,...`), e.g. the
/// builder's `redirect_dir=off` so that its upper directory is a plain diff.
pub fn mount_overlay_with(
    lowers: &[PathBuf],
    upper: &Path,
    work: &Path,
    target: &Path,
    extra: &str,
) -> Result<(), RootfsError> {
    if lowers.is_empty() {
        return Err(RootfsError::NoLayers(target.to_path_buf()));
    }
    for p in lowers.iter().map(PathBuf::as_path).chain([upper, work]) {
        let s = p.as_os_str().as_encoded_bytes();
        if s.contains(&b':') || s.contains(&b',') {
            return Err(RootfsError::BadPath(p.to_path_buf()));
        }
    }
    for dir in [upper, work, target] {
        std::fs::create_dir_all(dir).map_err(|source| RootfsError::Prepare {
            path: dir.to_path_buf(),
            source,
        })?;
    }
    let mut tail = format!(",upperdir={},workdir={}", upper.display(), work.display());
    if !extra.is_empty() {
        tail = format!("{tail},{extra}");
    }
    // overlayfs lists the top layer first.
    let plain: Vec<String> = lowers
        .iter()
        .rev()
        .map(|p| p.display().to_string())
        .collect();
    let mut data = format!("lowerdir={}{tail}", plain.join(":"));
    // Keeps the O_PATH descriptors open until the mount call returns.
    let mut _fds = Vec::new();
    if data.len() > MAX_MOUNT_DATA {
        let mut names = Vec::with_capacity(lowers.len());
        for p in lowers.iter().rev() {
            let f = open_path(p).map_err(|source| RootfsError::Prepare {
                path: p.clone(),
                source,
            })?;
            names.push(format!("/proc/self/fd/{}", f.as_raw_fd()));
            _fds.push(f);
        }
        data = format!("lowerdir={}{tail}", names.join(":"));
    }
    mount(
        Some("overlay"),
        target,
        Some("overlay"),
        MsFlags::empty(),
        Some(data.as_str()),
    )
    .map_err(|source| RootfsError::Mount {
        target: target.to_path_buf(),
        layers: lowers.len(),
        source,
    })
}

fn open_path(p: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_DIRECTORY)
        .open(p)
}

/// Detaches the mount at `target`; not mounted or missing is success, so
/// cleanup can run twice.
pub fn unmount(target: &Path) -> Result<(), RootfsError> {
    match umount2(target, MntFlags::MNT_DETACH) {
        Ok(()) | Err(Errno::EINVAL) | Err(Errno::ENOENT) => Ok(()),
        Err(source) => Err(RootfsError::Unmount {
            target: target.to_path_buf(),
            source,
        }),
    }
}

/// Maximum symlinks followed in one resolution, as the kernel's ELOOP limit.
const MAX_SYMLINKS: usize = 40;

/// Resolves `path` as if `root` were `/`: `..` stops at the root and
/// symlinks, absolute or relative, are followed inside it. The result is a
/// host path under `root` whose existing components contain no symlink;
/// missing components are kept as they are. Meant for image content that
/// no container is running on (a running container could swap a component
/// for a symlink between this check and the use).
pub fn resolve_in_root(root: &Path, path: &Path) -> io::Result<PathBuf> {
    let mut pending: VecDeque<OsString> = components(path).collect();
    let mut resolved = PathBuf::new();
    let mut links = 0;
    while let Some(comp) = pending.pop_front() {
        if comp == ".." {
            resolved.pop();
            continue;
        }
        let candidate = resolved.join(&comp);
        match std::fs::symlink_metadata(root.join(&candidate)) {
            Ok(md) if md.file_type().is_symlink() => {
                links += 1;
                if links > MAX_SYMLINKS {
                    return Err(io::Error::from_raw_os_error(libc::ELOOP));
                }
                let target = std::fs::read_link(root.join(&candidate))?;
                if target.is_absolute() {
                    resolved.clear();
                }
                for c in components(&target).collect::<Vec<_>>().into_iter().rev() {
                    pending.push_front(c);
                }
            }
            // Missing (or below a non-directory): nothing further can be a
            // symlink, so the rest is taken literally.
            Ok(_) | Err(_) => resolved = candidate,
        }
    }
    Ok(root.join(resolved))
}

fn components(path: &Path) -> impl Iterator<Item = OsString> + '_ {
    path.components().filter_map(|c| match c {
        Component::Normal(n) => Some(n.to_os_string()),
        Component::ParentDir => Some("..".into()),
        Component::RootDir | Component::CurDir | Component::Prefix(_) => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn resolution_never_leaves_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        std::fs::create_dir_all(r.join("usr/lib")).unwrap();
        symlink("usr/lib", r.join("lib")).unwrap();
        symlink("/../../..", r.join("up")).unwrap();
        symlink("../../../../etc", r.join("usr/etc")).unwrap();
        symlink("loop", r.join("loop")).unwrap();
        let res = |p: &str| resolve_in_root(r, Path::new(p)).unwrap();
        assert_eq!(res("/lib/x.so"), r.join("usr/lib/x.so"));
        assert_eq!(res("/up/etc/passwd"), r.join("etc/passwd"));
        assert_eq!(res("/usr/etc/passwd"), r.join("etc/passwd"));
        assert_eq!(res("../../etc/./passwd"), r.join("etc/passwd"));
        assert_eq!(res("/missing/../lib"), r.join("usr/lib"));
        assert_eq!(
            resolve_in_root(r, Path::new("/loop"))
                .unwrap_err()
                .raw_os_error(),
            Some(libc::ELOOP)
        );
    }

    #[test]
    fn overlay_rejects_bad_input() {
        let t = Path::new("/nonexistent/target");
        assert!(matches!(
            mount_overlay(&[], t, t, t),
            Err(RootfsError::NoLayers(_))
        ));
        assert!(matches!(
            mount_overlay(&["/a:b".into()], t, t, t),
            Err(RootfsError::BadPath(_))
        ));
    }
}
