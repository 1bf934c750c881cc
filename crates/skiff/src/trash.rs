//! What a removed container that wrote nothing leaves on disk: taken by
//! the next container start, or removed when there is time for it.
//!
//! Such a container leaves a skeleton of empty directories: `upper`, and
//! the overlay's `work/work/incompat/volatile` (with an empty `dirty`).
//! Removing it is waiting for the disk: on an ext4 mounted with `discard`
//! (this kind of VM) every freed directory block is discarded before
//! rmdir returns, 60 us each, 0.4 ms of the end of every `run --rm`
//! (bench/ab-start: -0.55 ms [-0.85, -0.30] with the skeleton moved here).
//! Moved to `$SKIFF_ROOT/trash/<id>` (a rename), it waits for the next
//! container start, which takes it as its own directory (see [`reuse`])
//! and empties the rest of the trash while its runtime sets the container
//! up (see `monitor::start`).
//!
//! The trash never holds what a container wrote: its files (the log, the
//! /etc files of an image whose /etc is not plain) are removed at once,
//! and a container whose upper directory is not empty is removed whole,
//! at once, as before.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::container::remove_dir;
use crate::context::Context;

/// Removes container `id`'s directory `dir`; a skeleton (see the module
/// docs) is moved to `trash` instead.
pub fn discard(id: &str, dir: &Path, trash: &Path) {
    if strip_to_skeleton(dir) {
        let moved =
            std::fs::create_dir_all(trash).and_then(|_| std::fs::rename(dir, trash.join(id)));
        if moved.is_ok() {
            return;
        }
    }
    remove_dir(id, dir);
}

/// Makes container directory `dir` (its `upper` and `work`) out of a
/// skeleton in `trash`, if there is one; whether it did. The directories
/// are renamed into place, not made: on this kind of VM's ext4 (no
/// journal) a deleted inode is not handed out again for a minute or more,
/// and every allocation first steps over each one deleted meanwhile, so a
/// start that makes and later deletes fewer inodes keeps every later one
/// faster. A start takes 3 of its 10 inodes from the skeleton this way:
/// the overlay remakes its own `work/work` and probes the filesystem at
/// every mount.
///
/// The past mount's `work/work` (and in it the mark of a volatile mount,
/// which a mount refuses) goes back to the trash under a dot name, for
/// [`Emptying`] to remove while the runtime makes the container: the
/// mount would remove it itself otherwise, and on an ext4 mounted with
/// `discard` (this kind of VM) every directory removed waits for its
/// block's discard, 60 us each. `upper` is the container's `/` itself: it
/// must be as a new one would be (see [`pristine_upper`]). A skeleton that
/// is not one any more is removed.
pub fn reuse(trash: &Path, dir: &Path) -> bool {
    let Ok(entries) = std::fs::read_dir(trash) else {
        return false;
    };
    for entry in entries.flatten() {
        // Only skeletons: not what a start empties (see `remove_one`).
        let skeleton = entry.file_type().is_ok_and(|t| t.is_dir())
            && !entry.file_name().as_encoded_bytes().starts_with(b".");
        // Another start may take the same one first: then try the next.
        if !skeleton || std::fs::rename(entry.path(), dir).is_err() {
            continue;
        }
        let id = dir.file_name().unwrap_or_default().to_string_lossy();
        let work = dir.join("work");
        let set_aside = match std::fs::rename(work.join("work"), trash.join(format!(".work-{id}")))
        {
            Ok(()) => true,
            Err(e) => e.kind() == std::io::ErrorKind::NotFound,
        };
        if set_aside && is_empty_dir(&work) && pristine_upper(&dir.join("upper")) {
            return true;
        }
        remove_dir(&id, dir);
        return false;
    }
    false
}

/// Whether `upper`, a past container's `/`, can be the next one's: empty,
/// root's, mode 0755 and without extended attributes (a container may
/// have changed any of them on its `/`). The overlay's own uuid (which
/// mounts wrote before they were made with `uuid=off`) is dropped, and
/// the times are reset, so nothing of the past container shows.
fn pristine_upper(upper: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let empty = is_empty_dir(upper);
    let plain = std::fs::symlink_metadata(upper)
        .is_ok_and(|m| m.is_dir() && m.uid() == 0 && m.gid() == 0 && m.mode() & 0o7777 == 0o755);
    if !(empty && plain) {
        return false;
    }
    let Ok(names) = xattr::list(upper) else {
        return false;
    };
    for name in names {
        if name != "trusted.overlay.uuid" || xattr::remove(upper, &name).is_err() {
            return false;
        }
    }
    let now = std::time::SystemTime::now();
    let reset = std::fs::File::open(upper).and_then(|f| {
        f.set_times(
            std::fs::FileTimes::new()
                .set_accessed(now)
                .set_modified(now),
        )
    });
    reset.is_ok()
}

/// Removes the files in `dir`; whether what is left is a skeleton: an
/// empty `upper` and the overlay's `work` with nothing but its own.
fn strip_to_skeleton(dir: &Path) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return false;
    };
    let mut skeleton = true;
    for entry in entries.flatten() {
        let path = entry.path();
        match (entry.file_type(), entry.file_name().to_str()) {
            (Ok(t), Some("work")) if t.is_dir() => skeleton &= only_overlay_own(&path, ""),
            (Ok(t), Some("upper")) if t.is_dir() => {
                skeleton &= is_empty_dir(&path);
            }
            (Ok(t), _) if !t.is_dir() => skeleton &= std::fs::remove_file(&path).is_ok(),
            _ => skeleton = false,
        }
    }
    skeleton
}

/// Whether `dir` is a directory with nothing in it.
fn is_empty_dir(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|mut d| d.next().is_none())
}

/// What overlayfs keeps in a work directory it is done with: its own
/// `work`, and for a volatile mount `work/incompat/volatile/dirty`, an
/// empty file. Anything else (a copy-up it could not clean) is data.
const OVERLAY_OWN: [&str; 4] = [
    "work",
    "work/incompat",
    "work/incompat/volatile",
    "work/incompat/volatile/dirty",
];

/// Whether `dir` (`rel` below the work directory) holds only [`OVERLAY_OWN`].
fn only_overlay_own(dir: &Path, rel: &str) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return false;
    };
    entries.flatten().all(|entry| {
        let name = entry.file_name();
        let Some(name) = name.to_str() else {
            return false;
        };
        let rel = if rel.is_empty() {
            name.to_string()
        } else {
            format!("{rel}/{name}")
        };
        match entry.file_type() {
            Ok(_) if !OVERLAY_OWN.contains(&rel.as_str()) => false,
            Ok(t) if t.is_dir() => only_overlay_own(&entry.path(), &rel),
            Ok(t) => t.is_file() && entry.metadata().is_ok_and(|m| m.len() == 0),
            Err(_) => false,
        }
    })
}

/// The trash's entries as they were when made; [`Self::remove_one`]
/// removes them one at a time. Another process emptying the same trash
/// meanwhile is harmless: what it removed first is simply gone.
pub struct Emptying(Vec<PathBuf>);

impl Emptying {
    pub fn new(ctx: &Context) -> Emptying {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(ctx.trash_dir())
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        // Starts that empty it at once (a daemon's) begin at different
        // entries rather than all on the same one.
        static STARTS: AtomicUsize = AtomicUsize::new(0);
        if !entries.is_empty() {
            let at = std::process::id() as usize + STARTS.fetch_add(1, Ordering::Relaxed);
            let len = entries.len();
            entries.rotate_left(at % len);
        }
        Emptying(entries)
    }

    /// Removes one entry; false once there is none left. The entry is
    /// first renamed to a name no start takes (a dot name), so a start
    /// that takes it meanwhile (see [`reuse`]) gets it whole or not at
    /// all, never half removed.
    pub fn remove_one(&mut self) -> bool {
        static REMOVING: AtomicUsize = AtomicUsize::new(0);
        let Some(entry) = self.0.pop() else {
            return false;
        };
        let id = entry.file_name().unwrap_or_default().to_string_lossy();
        let claimed = entry.with_file_name(format!(
            ".removing-{}-{}",
            std::process::id(),
            REMOVING.fetch_add(1, Ordering::Relaxed)
        ));
        if std::fs::rename(&entry, &claimed).is_ok() {
            // Only skeletons are put here; anything else is removed too.
            if claimed.symlink_metadata().is_ok_and(|m| m.is_dir()) {
                remove_dir(&id, &claimed);
            } else if let Err(e) = std::fs::remove_file(&claimed) {
                tracing::warn!(id = %id, "remove {}: {e}", claimed.display());
            }
        }
        true
    }
}
