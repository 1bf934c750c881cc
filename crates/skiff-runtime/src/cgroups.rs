//! cgroup layout of the host: which version, making a hybrid host usable
//! by crun, removing a container's leftover cgroups, reading OOM kills.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use nix::errno::Errno;
use nix::mount::{mount, MsFlags};
use nix::sys::statfs::{statfs, CGROUP2_SUPER_MAGIC, TMPFS_MAGIC};

const CGROUP_ROOT: &str = "/sys/fs/cgroup";

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("cannot inspect {path}: {source}")]
    Inspect { path: PathBuf, source: io::Error },
    #[error(
        "cgroup hybrid mode: crun needs the {controllers} controller(s) off the unified \
         hierarchy, but mounting {path} failed: {source} (use --runtime runc, or boot \
         with a pure v1 or v2 cgroup layout)"
    )]
    Hybrid {
        controllers: String,
        path: PathBuf,
        source: Errno,
    },
}

/// How the host mounts cgroups.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupMode {
    /// Only v1 hierarchies.
    V1,
    /// v1 controllers plus a cgroup2 mount at `/sys/fs/cgroup/unified`.
    Hybrid,
    /// The unified hierarchy at `/sys/fs/cgroup`.
    V2,
}

/// Reads the host's cgroup mode from `/sys/fs/cgroup`.
pub fn detect_mode() -> Result<CgroupMode, CgroupError> {
    let inspect = |path: &str| {
        statfs(path).map_err(|e| CgroupError::Inspect {
            path: path.into(),
            source: e.into(),
        })
    };
    let root = inspect(CGROUP_ROOT)?;
    if root.filesystem_type() == CGROUP2_SUPER_MAGIC {
        return Ok(CgroupMode::V2);
    }
    if root.filesystem_type() == TMPFS_MAGIC {
        let unified = format!("{CGROUP_ROOT}/unified");
        if let Ok(u) = statfs(unified.as_str()) {
            if u.filesystem_type() == CGROUP2_SUPER_MAGIC {
                return Ok(CgroupMode::Hybrid);
            }
        }
    }
    Ok(CgroupMode::V1)
}

/// [`detect_mode`] once per process; V1 if `/sys/fs/cgroup` is unreadable.
pub fn mode() -> CgroupMode {
    static MODE: OnceLock<CgroupMode> = OnceLock::new();
    *MODE.get_or_init(|| detect_mode().unwrap_or(CgroupMode::V1))
}

/// Makes moving a process into a cgroup cheap: without it, the first
/// such move of a burst waits for an RCU grace period (measured: 14 ms of
/// a 17 ms `crun run` here, and of every cold start). Linux 6.0+ skips
/// that wait while some cgroup hierarchy is mounted with `favordynmods`
/// (systemd can set it too), at a small cost to fork and exit, so the
/// cgroup2 mount is remounted with it, keeping its other options. Returns
/// whether it is set now; an older kernel refuses the option (false).
///
/// Once set, a marker under /run/skiff says so for the rest of the boot,
/// and later processes skip reading mountinfo (90 us here).
pub fn favor_dynmods() -> bool {
    static DONE: OnceLock<bool> = OnceLock::new();
    *DONE.get_or_init(|| {
        const MARKER: &str = "cgroup2-favordynmods";
        if read_for_boot(MARKER).is_some() {
            return true;
        }
        let set = set_favor_dynmods();
        if set {
            write_for_boot(MARKER, b"");
        }
        set
    })
}

/// What file `name` of ours under /run/skiff holds, if it was written
/// during this boot (/run/skiff is a tmpfs, unless one could not be
/// mounted: its first line says which boot wrote it).
fn read_for_boot(name: &str) -> Option<Vec<u8>> {
    let text = std::fs::read(run_file(name)).ok()?;
    let nl = text.iter().position(|&b| b == b'\n')?;
    (text[..nl] == *boot_id()?.as_bytes()).then(|| text[nl + 1..].to_vec())
}

/// Writes file `name` for [`read_for_boot`] (best effort: it only saves
/// work).
fn write_for_boot(name: &str, data: &[u8]) {
    if let Some(boot) = boot_id() {
        let _ = crate::write_whole(&run_file(name), &[boot.as_bytes(), b"\n", data].concat());
    }
}

fn boot_id() -> Option<String> {
    let id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    Some(id.trim().to_string())
}

fn run_file(name: &str) -> PathBuf {
    crate::run_root::ensure();
    Path::new(crate::run_root::RUN_ROOT).join(name)
}

/// Remounts the cgroup2 hierarchy with favordynmods unless it has it.
fn set_favor_dynmods() -> bool {
    let Ok(mountinfo) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    // `... MOUNTPOINT ... - cgroup2 cgroup2 SUPEROPTS`
    let Some((point, mount_opts, opts)) = mountinfo.lines().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        let mut r = right.split_whitespace();
        (r.next()? == "cgroup2").then_some(())?;
        let opts = r.nth(1)?.to_string();
        let mut f = left.split_whitespace().skip(4);
        Some((f.next()?.to_string(), f.next()?.to_string(), opts))
    }) else {
        return false;
    };
    if opts.split(',').any(|o| o == "favordynmods") {
        return true;
    }
    let keep: Vec<&str> = opts
        .split(',')
        .filter(|o| *o != "rw" && *o != "ro")
        .chain(std::iter::once("favordynmods"))
        .collect();
    // The mount's own flags stay as they are (a remount resets those not given).
    let flags = mount_opts
        .split(',')
        .fold(MsFlags::MS_REMOUNT, |f, o| match o {
            "ro" => f | MsFlags::MS_RDONLY,
            "nosuid" => f | MsFlags::MS_NOSUID,
            "nodev" => f | MsFlags::MS_NODEV,
            "noexec" => f | MsFlags::MS_NOEXEC,
            "noatime" => f | MsFlags::MS_NOATIME,
            "nodiratime" => f | MsFlags::MS_NODIRATIME,
            "relatime" => f | MsFlags::MS_RELATIME,
            _ => f,
        });
    match mount(
        None::<&str>,
        point.as_str(),
        None::<&str>,
        flags,
        Some(keep.join(",").as_str()),
    ) {
        Ok(()) => {
            tracing::info!(mount = %point, "cgroup2 remounted with favordynmods: moving a container into its cgroups no longer waits for an RCU grace period");
            true
        }
        Err(e) => {
            tracing::debug!(mount = %point, "cannot remount with favordynmods: {e}");
            false
        }
    }
}

/// Makes the host usable by `runtime` (a name or path like "crun"), and
/// fast for any runtime (see [`favor_dynmods`]).
///
/// crun (checked with 1.8.1) refuses a hybrid host whose cgroup2 mount
/// still owns controllers ("cgroups in hybrid mode not supported, drop all
/// controllers from cgroupv2"). Controllers no v1 hierarchy has claimed
/// (typically `hugetlb`) sit on the unified hierarchy; mounting each as a
/// v1 hierarchy moves it off, after which crun runs. runc needs nothing.
///
/// Idempotent and safe to race: a concurrent mount of the same controller
/// fails with EBUSY, which is success once the unified hierarchy is empty.
pub fn prepare_host(runtime: &str) -> Result<(), CgroupError> {
    favor_dynmods();
    let is_crun = Path::new(runtime)
        .file_name()
        .is_some_and(|n| n.to_string_lossy().starts_with("crun"));
    if !is_crun || mode() != CgroupMode::Hybrid {
        return Ok(());
    }
    let controllers_file = PathBuf::from(format!("{CGROUP_ROOT}/unified/cgroup.controllers"));
    let read = || {
        std::fs::read_to_string(&controllers_file).map_err(|source| CgroupError::Inspect {
            path: controllers_file.clone(),
            source,
        })
    };
    let controllers = read()?;
    let mounting = !controllers.trim().is_empty();
    let _lock = mounting.then(hierarchies_lock);
    for c in controllers.split_whitespace() {
        let dir = PathBuf::from(format!("{CGROUP_ROOT}/{c}"));
        if let Err(e) = std::fs::create_dir(&dir) {
            if e.kind() != io::ErrorKind::AlreadyExists {
                return Err(CgroupError::Hybrid {
                    controllers: c.into(),
                    path: dir,
                    source: Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
                });
            }
        }
        match mount(
            Some("cgroup"),
            &dir,
            Some("cgroup"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            Some(c),
        ) {
            Ok(()) => {
                // There are more hierarchies now.
                let _ = std::fs::remove_file(run_file(&hierarchies_file()));
                tracing::info!(
                    controller = c,
                    "mounted as cgroup v1 so that crun accepts this hybrid host"
                )
            }
            // Mounted already, by us or by a racing process.
            Err(Errno::EBUSY) => {}
            Err(source) => {
                return Err(CgroupError::Hybrid {
                    controllers: c.into(),
                    path: dir,
                    source,
                })
            }
        }
    }
    let left = read()?;
    if !left.trim().is_empty() {
        return Err(CgroupError::Hybrid {
            controllers: left.split_whitespace().collect::<Vec<_>>().join(","),
            path: format!("{CGROUP_ROOT}/unified").into(),
            source: Errno::EBUSY,
        });
    }
    Ok(())
}

/// Every directory that `path` (e.g. `/skiff/<id>`) maps to: one per v1
/// hierarchy, plus the unified one (see [`hierarchies`]).
pub fn cgroup_dirs(path: &str) -> Vec<PathBuf> {
    let rel = path.trim_start_matches('/');
    let mut dirs: Vec<PathBuf> = hierarchies()
        .into_iter()
        .map(|(mountpoint, _)| mountpoint.join(rel))
        .collect();
    dirs.dedup();
    dirs
}

/// The host's cgroup hierarchies ([`cgroup_mounts`] of mountinfo), kept
/// for the boot in /run/skiff: reading mountinfo takes 90 us here (3 us
/// a mount, more with every running container's overlay), on the way out
/// of every `skiff run`, to find hierarchies mounted once at boot.
/// [`prepare_host`] drops the copy when it mounts one. A hierarchy that
/// someone else mounts later is missed until reboot by the sweep of
/// leftovers only: the runtime finds its hierarchies itself.
fn hierarchies() -> Vec<(PathBuf, Vec<String>)> {
    let file = hierarchies_file();
    let kept = || read_for_boot(&file).and_then(|b| serde_json::from_slice(&b).ok());
    if let Some(h) = kept() {
        return h;
    }
    // Read and kept under the lock `prepare_host` mounts under: a list
    // read before its mount is not kept after it.
    let _lock = hierarchies_lock();
    if let Some(h) = kept() {
        return h;
    }
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let h = cgroup_mounts(&info);
    if let (false, Ok(json)) = (h.is_empty(), serde_json::to_vec(&h)) {
        write_for_boot(&file, &json);
    }
    h
}

/// Where [`hierarchies`] keeps them: one file per mount namespace, which
/// is what mountinfo shows (a daemon in one of its own sees other mounts).
fn hierarchies_file() -> String {
    let ns = std::fs::read_link("/proc/self/ns/mnt").unwrap_or_default();
    let id: String = ns
        .to_string_lossy()
        .chars()
        .filter(char::is_ascii_digit)
        .collect();
    format!("cgroup-hierarchies.{id}")
}

/// An exclusive lock on the kept list of hierarchies, held until dropped;
/// `None` if it cannot be had (the list is then only less sure).
fn hierarchies_lock() -> Option<std::fs::File> {
    let file = std::fs::File::create(run_file("cgroup-hierarchies.lock")).ok()?;
    crate::lock_exclusive(&file).ok()?;
    Some(file)
}

/// (mount point, controllers) of each cgroup (v1) and cgroup2 mount; the
/// controllers of cgroup2 are empty.
fn cgroup_mounts(mountinfo: &str) -> Vec<(PathBuf, Vec<String>)> {
    let mut out = Vec::new();
    for line in mountinfo.lines() {
        // ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTS [OPTIONAL...] - FSTYPE SOURCE SUPEROPTS
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let mut r = right.split_whitespace();
        let (fstype, super_opts) = (r.next(), r.nth(1).unwrap_or(""));
        let Some(mountpoint) = left.split_whitespace().nth(4) else {
            continue;
        };
        // Only the hierarchy roots: a bind of a sub-cgroup would map the
        // path somewhere else.
        if left.split_whitespace().nth(3) != Some("/") {
            continue;
        }
        let mountpoint = PathBuf::from(unescape_mountinfo(mountpoint));
        match fstype {
            Some("cgroup2") => out.push((mountpoint, Vec::new())),
            Some("cgroup") => {
                let controllers = super_opts
                    .split(',')
                    .filter(|o| {
                        !matches!(
                            *o,
                            "rw" | "ro" | "relatime" | "noatime" | "nosuid" | "nodev" | "noexec"
                        )
                    })
                    .map(String::from)
                    .collect();
                out.push((mountpoint, controllers));
            }
            _ => {}
        }
    }
    out
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = u16::from(b[i + 1] - b'0') * 64 + u16::from(b[i + 2] - b'0') * 8;
            out.push((v + u16::from(b[i + 3] - b'0')) as u8);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Removes the cgroup directories of `path` in every hierarchy, children
/// first. Missing directories are fine. A cgroup is briefly busy while its
/// last tasks are reaped, so EBUSY is retried for up to ~200 ms. Failures
/// are logged; cleanup goes on with the other hierarchies.
pub fn remove_cgroup(path: &str) {
    if path.trim_matches('/').is_empty() {
        return;
    }
    for dir in cgroup_dirs(path) {
        if let Err(e) = remove_tree(&dir) {
            tracing::warn!(dir = %dir.display(), "cannot remove cgroup: {e}");
        }
    }
}

fn remove_tree(dir: &Path) -> io::Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            remove_tree(&entry.path())?;
        }
    }
    let mut delay = Duration::from_millis(1);
    loop {
        match std::fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e)
                if e.raw_os_error() == Some(libc::EBUSY) && delay < Duration::from_millis(128) =>
            {
                std::thread::sleep(delay);
                delay *= 2;
            }
            Err(e) => return Err(e),
        }
    }
}

/// How many times the kernel's OOM killer killed a task of the cgroup at
/// `path` (`oom_kill` in v1 `memory.oom_control` or v2 `memory.events`).
/// `None` when the cgroup is gone: read it after the container exited and
/// before `delete` removes the cgroup (`crun run` removes it on exit).
pub fn memory_oom_kills(path: &str) -> Option<u64> {
    let rel = path.trim_start_matches('/');
    for (mountpoint, controllers) in hierarchies() {
        let file = if controllers.is_empty() {
            mountpoint.join(rel).join("memory.events")
        } else if controllers.iter().any(|c| c == "memory") {
            mountpoint.join(rel).join("memory.oom_control")
        } else {
            continue;
        };
        if let Ok(text) = std::fs::read_to_string(&file) {
            if let Some(n) = text
                .lines()
                .find_map(|l| l.strip_prefix("oom_kill "))
                .and_then(|n| n.trim().parse().ok())
            {
                return Some(n);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_kept_for_the_boot_is_read_during_that_boot_only() {
        let name = format!("test-for-boot-{}", std::process::id());
        assert_eq!(read_for_boot(&name), None);
        write_for_boot(&name, b"[1,2]");
        assert_eq!(read_for_boot(&name).as_deref(), Some(&b"[1,2]"[..]));
        // As if written before a reboot.
        std::fs::write(run_file(&name), "another-boot ns\n[1,2]").unwrap();
        assert_eq!(read_for_boot(&name), None);
        std::fs::remove_file(run_file(&name)).unwrap();
    }

    const MOUNTINFO: &str = "\
25 30 0:23 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
31 25 0:27 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:28 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:29 / /sys/fs/cgroup/memory rw,nosuid,relatime - cgroup cgroup rw,nosuid,memory
34 31 0:30 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
35 31 0:31 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
36 31 0:29 /nested /mnt/bind\\040dir rw - cgroup cgroup rw,memory
";

    #[test]
    fn mountinfo_cgroup_mounts() {
        let m = cgroup_mounts(MOUNTINFO);
        let points: Vec<_> = m.iter().map(|(p, _)| p.to_str().unwrap()).collect();
        assert_eq!(
            points,
            [
                "/sys/fs/cgroup/cpu",
                "/sys/fs/cgroup/memory",
                "/sys/fs/cgroup/systemd",
                "/sys/fs/cgroup/unified"
            ]
        );
        assert_eq!(m[1].1, vec!["memory".to_string()]);
        assert_eq!(m[2].1, vec!["name=systemd".to_string()]);
        assert!(m[3].1.is_empty());
        assert_eq!(unescape_mountinfo("/a\\040b\\134c"), "/a b\\c");
    }

    #[test]
    fn mode_is_detected() {
        // Whatever the host is, detection must not fail on a Linux host.
        detect_mode().unwrap();
    }
}
