//! `/run/skiff`: what lives only as long as the kernel (bundles, the OCI
//! runtime's state, network namespaces, address leases, the runtime's
//! read-only mount), kept on a tmpfs.
//!
//! /run is a tmpfs on a usual Linux host, and then so is `/run/skiff`.
//! Where it is not (a VM whose init leaves /run on the root filesystem),
//! Skiff mounts a tmpfs there itself, once per boot: every container start
//! creates and removes a dozen small files under it, and on a disk
//! filesystem that costs. Measured on such a VM (ext4 without a journal,
//! which scans recently deleted inodes on every new one): `skiff run --rm
//! IMG true` 1.49 ms faster [0.99, 1.90] with the run directory on tmpfs
//! (`bench/ab-start`, 300 runs a side). A tmpfs is also cleared at boot,
//! as FHS asks of /run, so nothing of a past boot is mistaken for live.

use std::fs::File;
use std::io;
use std::path::Path;
use std::sync::OnceLock;

use nix::mount::{mount, MsFlags};
use nix::sys::statfs::{statfs, TMPFS_MAGIC};

/// The root of everything per boot; see the module docs.
pub const RUN_ROOT: &str = "/run/skiff";

/// Makes sure [`RUN_ROOT`] is on a tmpfs, mounting one if it is not and
/// holds nothing live; once per process, before anything is made under
/// it. Failing that, Skiff goes on where the directory is: slower, not
/// wrong.
pub fn ensure() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        if let Err(e) = mount_tmpfs(Path::new(RUN_ROOT)) {
            tracing::debug!("{RUN_ROOT} is not on a tmpfs and stays so: {e}");
        }
    });
}

fn mount_tmpfs(root: &Path) -> io::Result<()> {
    if on_tmpfs(root)? {
        return Ok(());
    }
    std::fs::create_dir_all(root)?;
    // Serialised on the directory as it is before the mount: a process
    // that opens it after the mount gets the tmpfs's root instead, and
    // finds the tmpfs below.
    let dir = File::open(root)?;
    crate::lock_exclusive(&dir)?;
    if on_tmpfs(root)? {
        return Ok(());
    }
    // A container started before (by a Skiff that did not mount) has its
    // rootfs and network namespace mounted below, and its runtime's state
    // there: hiding them under a new tmpfs would strand it. Without either,
    // what is there is files of a past boot, or of containers gone.
    let mounts = std::fs::read_to_string("/proc/self/mountinfo")?;
    if mounts_below(&mounts, root) || runtime_state_below(root) {
        return Err(io::Error::other(
            "containers started before it was needed are still there",
        ));
    }
    mount(
        Some("skiff"),
        root,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        // Debian's own size for /run.
        Some("mode=0755,size=10%"),
    )?;
    tracing::debug!("mounted a tmpfs on {}", root.display());
    Ok(())
}

/// Whether an OCI runtime keeps the state of a container under `root`
/// (`<root>/<hash>/runtime/<runtime>/<id>`).
fn runtime_state_below(root: &Path) -> bool {
    let entries = |p: &Path| std::fs::read_dir(p).into_iter().flatten().flatten();
    entries(root).any(|hash| {
        entries(&hash.path().join("runtime"))
            .any(|rt| rt.path().is_dir() && entries(&rt.path()).next().is_some())
    })
}

/// Whether `path`, or the directory it would be made in, is on a tmpfs.
fn on_tmpfs(path: &Path) -> io::Result<bool> {
    for p in path.ancestors() {
        match statfs(p) {
            Ok(fs) => return Ok(fs.filesystem_type() == TMPFS_MAGIC),
            Err(nix::errno::Errno::ENOENT) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(false)
}

/// Whether mountinfo lists a mount at or below `dir`, but for Skiff's
/// read-only mounts of runtime binaries (see oci.rs), which hide safely:
/// nothing looks them up again, and a runtime running from one keeps it.
fn mounts_below(mountinfo: &str, dir: &Path) -> bool {
    let dir = dir.to_string_lossy();
    let runtimes = format!("{dir}/runtimes/");
    mountinfo.lines().any(|line| {
        line.split_whitespace().nth(4).is_some_and(|mp| {
            (mp == dir
                || mp
                    .strip_prefix(&*dir)
                    .is_some_and(|rest| rest.starts_with('/')))
                && !mp.starts_with(&runtimes)
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mounts_below_a_directory() {
        let info = "\
22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
40 22 0:40 / /run/skiffy rw - tmpfs tmpfs rw
42 22 254:0 /usr/bin/crun /run/skiff/runtimes/ab/crun ro - ext4 /dev/vda rw
41 22 0:41 / /run/skiff/ab/netns/x rw - nsfs nsfs rw
";
        let d = |p: &str| Path::new(p).to_path_buf();
        assert!(mounts_below(info, &d("/run/skiff")));
        assert!(!mounts_below(info, &d("/run/skif")));
        // A runtime's read-only mount alone does not hold it back.
        let three: String = info.lines().take(3).map(|l| format!("{l}\n")).collect();
        assert!(!mounts_below(&three, &d("/run/skiff")));
        assert!(mounts_below(info, &d("/run/skiffy")));
    }

    /// On a directory of a disk filesystem: one tmpfs, however often
    /// asked, and none over a runtime's live state. (Needs root.)
    #[test]
    fn a_tmpfs_goes_on_once_and_never_over_live_state() {
        let base = tempfile::tempdir_in("/var/tmp").unwrap();
        assert!(
            !on_tmpfs(base.path()).unwrap(),
            "this test needs /var/tmp on a disk filesystem"
        );
        let root = base.path().join("run");
        let live = root.join("0123456789ab/runtime/crun/c1");
        std::fs::create_dir_all(&live).unwrap();
        assert!(mount_tmpfs(&root).is_err(), "mounted over live state");
        assert!(!on_tmpfs(&root).unwrap());
        std::fs::remove_dir(&live).unwrap();
        mount_tmpfs(&root).unwrap();
        assert!(on_tmpfs(&root).unwrap());
        mount_tmpfs(&root).unwrap();
        let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let root_str = root.to_string_lossy();
        let count = info
            .lines()
            .filter(|l| l.split_whitespace().nth(4) == Some(&*root_str))
            .count();
        nix::mount::umount2(&root, nix::mount::MntFlags::MNT_DETACH).unwrap();
        assert_eq!(count, 1, "stacked tmpfs mounts");
    }
}
