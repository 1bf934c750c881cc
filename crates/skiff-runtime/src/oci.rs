//! Driver for an OCI runtime CLI (crun by default; runc, youki and runsc
//! take the same commands). Shaped like containerd's `runc` crate: typed
//! arguments build the command line, failures carry the runtime's stderr.
//!
//! # Exit codes
//!
//! Measured with crun 1.8.1 (runc 1.1.5 behaves the same):
//! - `run` (foreground) exits with the container init's exit code, or with
//!   128+N when init was killed by signal N: 137 after `kill -9` from the
//!   host and after the OOM killer; the caller needs no translation.
//! - A failure of the runtime itself (bad config, missing executable,
//!   cgroup trouble) exits 1 with one line on stderr and in `--log`; by its
//!   code alone it looks like a container exiting 1, so read the log.
//! - Signals that init sends itself, and signals for which init installed
//!   no handler (SIGTERM to a plain `sleep`), are ignored by the kernel:
//!   `sh -c 'kill -9 $$'` exits 0. A stop therefore needs SIGKILL after a
//!   grace period, as Docker does.
//! - With `create`/`start` or `run --detach` the runtime exits at once and
//!   the container's init is reparented; the exit status belongs to
//!   whoever reaps it, so the caller must be its child subreaper
//!   (`PR_SET_CHILD_SUBREAPER`) and map `WaitStatus` to 128+N itself.

use std::ffi::OsStr;
use std::io;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::str::FromStr;

use nix::sys::signal::Signal;
use oci_spec::runtime::Spec;
use serde::Deserialize;

/// Name of the runtime's log inside a bundle, written by `create` and `run`.
pub const LOG_FILE: &str = "runtime.log";

/// crun's annotation for a precompiled seccomp filter (base64 BPF); it
/// then ignores the config's seccomp rules.
pub const SECCOMP_BPF_ANNOTATION: &str = "run.oci.seccomp_bpf_data";

const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

#[derive(Debug, thiserror::Error)]
pub enum OciError {
    #[error("OCI runtime {name} not found: {hint}")]
    NotFound { name: String, hint: String },
    #[error("cannot run {binary}: {source}")]
    Spawn { binary: PathBuf, source: io::Error },
    #[error("{runtime} {command} {id} failed ({status}): {message}")]
    Failed {
        runtime: String,
        command: &'static str,
        id: String,
        status: ExitStatus,
        message: String,
    },
    #[error("cannot parse the output of {runtime} {command}: {source}")]
    Parse {
        runtime: String,
        command: &'static str,
        source: serde_json::Error,
    },
    #[error("unknown signal {0:?}")]
    InvalidSignal(String),
    #[error("cannot write {path}: {source}")]
    WriteConfig { path: PathBuf, source: io::Error },
}

/// Status as the runtime reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ContainerStatus {
    Creating,
    Created,
    Running,
    Paused,
    Stopped,
    #[serde(other)]
    Unknown,
}

/// One container as `state` and `list` report it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ContainerState {
    pub id: String,
    /// Host pid of the container's init; 0 once stopped.
    #[serde(default)]
    pub pid: i32,
    pub status: ContainerStatus,
    #[serde(default)]
    pub bundle: PathBuf,
}

/// Where a created container's stdio goes (it inherits the runtime's).
#[derive(Debug)]
pub struct ContainerIo {
    pub stdin: Stdio,
    pub stdout: Stdio,
    pub stderr: Stdio,
}

impl Default for ContainerIo {
    fn default() -> Self {
        Self {
            stdin: Stdio::null(),
            stdout: Stdio::null(),
            stderr: Stdio::null(),
        }
    }
}

/// One OCI runtime binary with its own state directory (`--root`), so
/// that two Skiff roots never see each other's containers.
#[derive(Debug, Clone)]
pub struct OciRuntime {
    name: String,
    binary: PathBuf,
    state_root: PathBuf,
}

impl OciRuntime {
    /// `runtime` is a name looked up in `PATH` ("crun", "runc", "youki",
    /// "runsc") or a path; `state_root` is its `--root`, e.g.
    /// `$SKIFF_ROOT/crun`.
    pub fn new(
        runtime: impl AsRef<OsStr>,
        state_root: impl Into<PathBuf>,
    ) -> Result<Self, OciError> {
        let runtime = Path::new(runtime.as_ref());
        let name = runtime
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| runtime.display().to_string());
        let not_found = || OciError::NotFound {
            name: name.clone(),
            hint: match name.as_str() {
                "crun" | "runc" => format!("apt-get install {name}"),
                _ => format!("install {name} or pass its path"),
            },
        };
        let binary = if runtime.components().count() > 1 {
            is_executable(runtime).then(|| runtime.to_path_buf())
        } else {
            let path = std::env::var_os("PATH").unwrap_or_else(|| DEFAULT_PATH.into());
            std::env::split_paths(&path)
                .map(|dir| dir.join(runtime))
                .find(|p| is_executable(p))
        }
        .ok_or_else(not_found)?;
        Ok(Self {
            name,
            binary,
            state_root: state_root.into(),
        })
    }

    /// The runtime's name, e.g. "crun".
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn binary(&self) -> &Path {
        &self.binary
    }

    pub fn state_root(&self) -> &Path {
        &self.state_root
    }

    /// Writes `spec` as `<bundle>/config.json`.
    ///
    /// crun gets the seccomp filter already compiled, through its
    /// `run.oci.seccomp_bpf_data` annotation: Debian's crun 1.8 compiles the
    /// profile with libseccomp on every start (1.3 ms of a 10 ms start,
    /// measured with bench/start), newer ones keep a cache of their own.
    /// crun then ignores the rules, so they are left out: 43% of the
    /// config's JSON (5.7 of 13 KB), written here and parsed by crun at
    /// every start. The filter still applies without them (the tests check
    /// `Seccomp: 2` and a denied syscall). A profile that cannot be
    /// precompiled is left to crun, which then reports the problem itself.
    pub fn write_config(&self, bundle: &Path, spec: &Spec) -> Result<(), OciError> {
        let mut spec = std::borrow::Cow::Borrowed(spec);
        let profile = spec.linux().as_ref().and_then(|l| l.seccomp().clone());
        if let (Some(profile), "crun") = (profile, self.name.as_str()) {
            let cache = self.state_root.with_extension("seccomp");
            match crate::seccomp::compile(&profile, Some(&cache)) {
                Ok(bpf) => {
                    use base64::Engine as _;
                    let data = base64::engine::general_purpose::STANDARD.encode(&bpf);
                    let spec = spec.to_mut();
                    let mut annotations = spec.annotations().clone().unwrap_or_default();
                    annotations.insert(SECCOMP_BPF_ANNOTATION.to_string(), data);
                    spec.set_annotations(Some(annotations));
                    if let Some(linux) = spec.linux_mut() {
                        linux.set_seccomp(None);
                    }
                }
                Err(e) => tracing::debug!("{e}; crun compiles the profile itself"),
            }
        }
        let path = bundle.join("config.json");
        let json = serde_json::to_vec(&*spec).map_err(io::Error::other);
        json.and_then(|j| std::fs::write(&path, j))
            .map_err(|source| OciError::WriteConfig { path, source })
    }

    /// The read-only mount (see [`read_only_mount`]), for the runtimes
    /// known to look for one (crun, and runc 1.1): another runtime may find
    /// its own files through `/proc/self/exe`, and has nothing to gain.
    /// `None` also when the mount cannot be made: the binary then runs as
    /// it is.
    fn mounted_binary(&self) -> Option<PathBuf> {
        if !matches!(self.name.as_str(), "crun" | "runc") {
            return None;
        }
        read_only_mount(&self.binary, &self.name)
            .map_err(|e| tracing::debug!("{} runs as it is: {e}", self.binary.display()))
            .ok()
    }

    /// The binary with the global options; every command starts here.
    /// It runs from a read-only mount of itself when one can be made (see
    /// [`read_only_mount`]), under its own name.
    pub fn command(&self) -> Command {
        let mut cmd = match self.mounted_binary() {
            Some(copy) => {
                let mut cmd = Command::new(copy);
                cmd.arg0(&self.binary).env(CLONED_BINARY_ENV, "1");
                cmd
            }
            None => Command::new(&self.binary),
        };
        cmd.arg("--root").arg(&self.state_root);
        cmd
    }

    /// `run --bundle BUNDLE ID` in the foreground: the runtime stays until
    /// the container exits, forwards the signals it gets to the container,
    /// writes init's pid to `pid_file` once the container exists and its
    /// own errors to `log`, and exits with the container's status (see the
    /// module docs). The container inherits this command's stdio.
    pub fn run_command(&self, id: &str, bundle: &Path, pid_file: &Path, log: &Path) -> Command {
        let mut cmd = self.command();
        cmd.arg(log_arg(log))
            .arg("run")
            .arg("--pid-file")
            .arg(pid_file)
            .arg("--bundle")
            .arg(bundle)
            .arg(id);
        cmd
    }

    /// The last error the runtime wrote to `log`, as one line.
    pub fn last_error(&self, log: &Path) -> String {
        match std::fs::read_to_string(log) {
            Ok(text) => text
                .lines()
                .rev()
                .map(runtime_log_message)
                .find(|l| !l.is_empty())
                .unwrap_or_else(|| format!("no message in {}", log.display())),
            Err(e) => format!("no message ({}: {e})", log.display()),
        }
    }

    /// `create`: sets the container up, its init waiting for [`Self::start`].
    /// Errors are read back from `<bundle>/runtime.log`, since stderr
    /// belongs to the container.
    pub fn create(
        &self,
        id: &str,
        bundle: &Path,
        pid_file: &Path,
        io: ContainerIo,
    ) -> Result<(), OciError> {
        let log = bundle.join(LOG_FILE);
        let mut cmd = self.command();
        cmd.arg(log_arg(&log))
            .arg("create")
            .arg("--pid-file")
            .arg(pid_file)
            .arg("--bundle")
            .arg(bundle)
            .arg(id)
            .stdin(io.stdin)
            .stdout(io.stdout)
            .stderr(io.stderr);
        let status = cmd.status().map_err(|source| self.spawn_error(source))?;
        if status.success() {
            return Ok(());
        }
        Err(OciError::Failed {
            runtime: self.name.clone(),
            command: "create",
            id: id.into(),
            status,
            message: self.last_error(&log),
        })
    }

    /// `start`: runs the user's process of a created container.
    pub fn start(&self, id: &str) -> Result<(), OciError> {
        self.captured("start", id, &[id]).map(drop)
    }

    /// `kill [--all] ID SIGNAL` with a signal number (`libc::SIGTERM`,
    /// `Signal::SIGTERM as i32`, [`parse_signal`]); `all` signals every
    /// process of the container. Fails at once for a stopped container.
    pub fn kill(&self, id: &str, signal: i32, all: bool) -> Result<(), OciError> {
        let sig = signal.to_string();
        let args: Vec<&str> = if all {
            vec!["--all", id, &sig]
        } else {
            vec![id, &sig]
        };
        self.captured("kill", id, &args).map(drop)
    }

    /// `delete [--force] ID`; a container the runtime does not know is
    /// already deleted.
    pub fn delete(&self, id: &str, force: bool) -> Result<(), OciError> {
        if !self.knows(id) {
            return Ok(());
        }
        let args: Vec<&str> = if force { vec!["--force", id] } else { vec![id] };
        match self.captured("delete", id, &args) {
            Err(e) if is_unknown(&e) || !self.knows(id) => Ok(()),
            other => other.map(drop),
        }
    }

    /// `state ID`; `None` when the runtime does not know the container.
    pub fn state(&self, id: &str) -> Result<Option<ContainerState>, OciError> {
        if !self.knows(id) {
            return Ok(None);
        }
        let out = match self.captured("state", id, &[id]) {
            Ok(out) => out,
            // Deleted between the check and the command.
            Err(e) if is_unknown(&e) || !self.knows(id) => return Ok(None),
            Err(e) => return Err(e),
        };
        serde_json::from_slice(&out)
            .map(Some)
            .map_err(|source| self.parse_error("state", source))
    }

    /// `list --format json`: every container under this state root.
    pub fn list(&self) -> Result<Vec<ContainerState>, OciError> {
        if !self.state_root.exists() {
            return Ok(Vec::new());
        }
        let out = self.captured("list", "", &["--format", "json"])?;
        // runc prints `null` when empty, crun `[]`.
        let list: Option<Vec<ContainerState>> =
            serde_json::from_slice(&out).map_err(|source| self.parse_error("list", source))?;
        Ok(list.unwrap_or_default())
    }

    /// crun, runc and youki keep one directory per container under
    /// `--root`; checking it spares an exec for unknown containers. Other
    /// runtimes (runsc) are always asked.
    fn knows(&self, id: &str) -> bool {
        if !matches!(self.name.as_str(), "crun" | "runc" | "youki") {
            return true;
        }
        !id.is_empty() && !id.contains('/') && self.state_root.join(id).exists()
    }

    /// Runs `COMMAND ARGS` with stdin closed and the output captured; the
    /// runtime's stdout on success, its stderr in the error otherwise.
    fn captured(
        &self,
        command: &'static str,
        id: &str,
        args: &[&str],
    ) -> Result<Vec<u8>, OciError> {
        let out = self
            .command()
            .arg(command)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|source| self.spawn_error(source))?;
        if out.status.success() {
            return Ok(out.stdout);
        }
        let stderr = String::from_utf8_lossy(&out.stderr);
        let message = stderr
            .lines()
            .map(runtime_log_message)
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join("; ");
        Err(OciError::Failed {
            runtime: self.name.clone(),
            command,
            id: id.into(),
            status: out.status,
            message,
        })
    }

    fn spawn_error(&self, source: io::Error) -> OciError {
        OciError::Spawn {
            binary: self.binary.clone(),
            source,
        }
    }

    fn parse_error(&self, command: &'static str, source: serde_json::Error) -> OciError {
        OciError::Parse {
            runtime: self.name.clone(),
            command,
            source,
        }
    }
}

/// Whether a failure says the container does not exist (the wording of
/// crun, runc, youki and runsc).
fn is_unknown(e: &OciError) -> bool {
    match e {
        OciError::Failed { message, .. } => {
            let m = message.to_ascii_lowercase();
            m.contains("does not exist") || m.contains("not found") || m.contains("no such file")
        }
        _ => false,
    }
}

/// `--log=PATH`, which crun and runc both accept.
fn log_arg(log: &Path) -> std::ffi::OsString {
    let mut arg = std::ffi::OsString::from("--log=");
    arg.push(log);
    arg
}

/// The message of one log line: crun writes plain text, runc logfmt
/// (`time=… level=error msg="…"`).
fn runtime_log_message(line: &str) -> String {
    let line = line.trim();
    if let Some(start) = line.find("msg=\"") {
        let rest = &line[start + 5..];
        let mut msg = String::new();
        let mut chars = rest.chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' => msg.extend(chars.next()),
                '"' => break,
                c => msg.push(c),
            }
        }
        return msg;
    }
    line.to_string()
}

/// Where the runtime runs from: `/run/skiff/runtimes/KEY/NAME`, a read-only
/// bind mount of `binary` made once per boot and binary (KEY hashes its
/// path, device, inode, size and mtime, so an upgraded binary gets a mount
/// of its own, which a running daemon finds at its next command). A
/// script is refused: it has no binary of its own to protect.
///
/// crun (and runc 1.1) guard their binary against a container that would
/// overwrite it through `/proc/PID/exe` (CVE-2019-5736) by re-executing
/// themselves, at every command, from a read-only bind mount of
/// themselves made for the purpose or from a sealed copy in memory. They
/// skip that when they already run from such a mount and are told so by
/// `_LIBCONTAINER_CLONED_BINARY` (their `is_self_cloned`): a write through
/// `/proc/PID/exe` then meets the read-only mount, as it would theirs.
/// Keeping the mount spares every command the second exec and dynamic
/// link, and every process the copy of its own that Skiff made before:
/// `skiff run --rm IMG true` 1.39 ms faster [1.08, 1.59] than from a
/// per-process sealed copy (bench/ab-start, 400 runs a side), and a
/// detached container's monitor no longer holds 490 KB of crun. (A sealed
/// memfd cannot be kept this way: the kernel refuses to bind-mount it.)
/// A mount of an older version stays until reboot: a process may be
/// about to run from it.
fn read_only_mount(binary: &Path, name: &str) -> io::Result<PathBuf> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
    // The binary is opened once: what is checked, keyed and mounted is
    // that file, whatever replaces the path meanwhile.
    let mut file = std::fs::File::open(binary)?;
    // A script (a wrapper around a runtime) reads its interpreter's idea of
    // its own path; only binaries are mounted.
    let mut magic = [0u8; 4];
    io::Read::read_exact(&mut file, &mut magic)?;
    if &magic != b"\x7fELF" {
        return Err(io::Error::other("not an ELF binary"));
    }
    let md = file.metadata()?;
    let key = skiff_core::Digest::of(
        format!(
            "{}\0{}:{}:{}:{}.{}",
            binary.display(),
            md.dev(),
            md.ino(),
            md.size(),
            md.mtime(),
            md.mtime_nsec(),
        )
        .as_bytes(),
    );
    crate::run_root::ensure();
    let mounts = Path::new(RUNTIME_MOUNTS);
    let dir = mounts.join(key.short());
    let target = dir.join(name);
    // Root execs from here: every directory on the way must be root's and
    // writable by no other (as Skiff makes them).
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)?;
    let euid = nix::unistd::geteuid().as_raw();
    let safe = |p: &Path| {
        std::fs::symlink_metadata(p)
            .is_ok_and(|m| m.is_dir() && m.uid() == euid && m.mode() & 0o022 == 0)
    };
    // runtimes/KEY, runtimes and /run/skiff.
    if !dir.ancestors().take(3).all(safe) {
        return Err(io::Error::other(format!(
            "{} is not root's alone",
            dir.display()
        )));
    }
    let mounted = || {
        let here = std::fs::symlink_metadata(&target);
        here.is_ok_and(|m| m.dev() == md.dev() && m.ino() == md.ino())
            && nix::sys::statvfs::statvfs(&target)
                .is_ok_and(|v| v.flags().contains(nix::sys::statvfs::FsFlags::ST_RDONLY))
    };
    if mounted() {
        return Ok(target);
    }
    // One maker at a time; a process that waited finds the mount made.
    let lock = std::fs::File::open(mounts)?;
    crate::lock_exclusive(&lock)?;
    if mounted() {
        return Ok(target);
    }
    // Nothing good is there: at most the empty file of a failed attempt.
    // A mount point in this namespace refuses the unlink (EBUSY), and the
    // mount over it must be replaced by hand.
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o500)
        .open(&target)
    {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            if std::fs::symlink_metadata(&target)?.len() != 0 {
                return Err(io::Error::other(format!(
                    "{} is in the way",
                    target.display()
                )));
            }
        }
        Err(e) => return Err(e),
    }
    // A detached copy of a mount of the opened file, made read-only before
    // it is attached (open_tree, mount_setattr, move_mount): never seen
    // writable, here or in a namespace it propagates to.
    const OPEN_TREE_CLONE: libc::c_uint = 1;
    const MOUNT_ATTR_RDONLY: u64 = 1;
    const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 4;
    #[repr(C)]
    struct MountAttr {
        attr_set: u64,
        attr_clr: u64,
        propagation: u64,
        userns_fd: u64,
    }
    let empty = c"";
    // SAFETY: open_tree on our open descriptor with an empty path; a
    // descriptor it returns is ours to own.
    let tree = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            file.as_raw_fd(),
            empty.as_ptr(),
            OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint | libc::AT_EMPTY_PATH as libc::c_uint,
        )
    };
    if tree < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor from open_tree.
    let tree = unsafe { OwnedFd::from_raw_fd(tree as i32) };
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_RDONLY,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    let target_c =
        std::ffi::CString::new(target.as_os_str().as_encoded_bytes()).map_err(io::Error::other)?;
    // SAFETY: mount_setattr and move_mount on the detached tree we own,
    // with a valid attribute struct and NUL-terminated paths.
    let made = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            empty.as_ptr(),
            libc::AT_EMPTY_PATH,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        ) == 0
            && libc::syscall(
                libc::SYS_move_mount,
                tree.as_raw_fd(),
                empty.as_ptr(),
                libc::AT_FDCWD,
                target_c.as_ptr(),
                MOVE_MOUNT_F_EMPTY_PATH,
            ) == 0
    };
    if !made {
        return Err(io::Error::last_os_error());
    }
    if !mounted() {
        let _ = nix::mount::umount2(
            &target,
            nix::mount::MntFlags::MNT_DETACH | nix::mount::MntFlags::UMOUNT_NOFOLLOW,
        );
        return Err(io::Error::other("the mount does not show as read-only"));
    }
    Ok(target)
}

/// See [`read_only_mount`].
const RUNTIME_MOUNTS: &str = "/run/skiff/runtimes";
/// Tells crun and runc 1.1 that they run from a read-only mount of
/// themselves (see [`read_only_mount`]).
const CLONED_BINARY_ENV: &str = "_LIBCONTAINER_CLONED_BINARY";

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Parses a signal as images and users write it: `SIGTERM`, `TERM`,
/// `term` or `15` (an image's `StopSignal`, `skiff stop --signal`).
pub fn parse_signal(s: &str) -> Result<Signal, OciError> {
    let invalid = || OciError::InvalidSignal(s.to_string());
    let t = s.trim();
    if let Ok(n) = t.parse::<i32>() {
        return Signal::try_from(n).map_err(|_| invalid());
    }
    let upper = t.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    Signal::from_str(&name).map_err(|_| invalid())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(cmd: &Command) -> Vec<String> {
        cmd.get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn runtimes_run_from_a_read_only_mount_of_their_binary() {
        use std::io::Write as _;
        // A stand-in crun that does nothing.
        let dir = tempfile::tempdir().unwrap();
        let crun = dir.path().join("crun");
        std::fs::copy("/bin/true", &crun).unwrap();
        let rt = OciRuntime::new(&crun, dir.path().join("state")).unwrap();
        let mut cmd = rt.command();
        let mounted = PathBuf::from(cmd.get_program());
        // Under its own name, with the variable that tells it so.
        assert_eq!(mounted.file_name().unwrap(), "crun", "{mounted:?}");
        assert!(mounted.starts_with(RUNTIME_MOUNTS), "{mounted:?}");
        assert!(cmd
            .get_envs()
            .any(|(k, v)| k == CLONED_BINARY_ENV && v == Some(OsStr::new("1"))));
        assert_eq!(
            std::fs::read(&mounted).unwrap(),
            std::fs::read(&crun).unwrap()
        );
        let vfs = nix::sys::statvfs::statvfs(&mounted).unwrap();
        assert!(vfs.flags().contains(nix::sys::statvfs::FsFlags::ST_RDONLY));
        let written = std::fs::OpenOptions::new()
            .write(true)
            .open(&mounted)
            .and_then(|mut f| f.write_all(b"x"));
        assert_eq!(
            written.unwrap_err().raw_os_error(),
            Some(libc::EROFS),
            "the mount took a write"
        );
        // One mount per binary, and it runs.
        assert_eq!(rt.command().get_program(), mounted.as_os_str());
        assert!(cmd.status().unwrap().success());

        // Processes are named after the runtime (`pgrep crun` finds them).
        let mut child = rt
            .command()
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let comm = format!("/proc/{}/comm", child.id());
        let named = (0..200).any(|_| {
            std::thread::sleep(std::time::Duration::from_millis(5));
            std::fs::read_to_string(&comm).is_ok_and(|c| c.trim() == "crun")
        });
        child.wait().unwrap();
        assert!(named, "the runtime's process is not called crun");

        // A new version of the binary gets a mount of its own, found by
        // the next command; the old one stays (a process may be about to
        // run from it).
        std::fs::remove_file(&crun).unwrap();
        std::fs::copy("/bin/false", &crun).unwrap();
        let again = PathBuf::from(rt.command().get_program());
        assert_ne!(again, mounted);
        assert!(
            std::fs::symlink_metadata(&mounted).is_ok(),
            "{mounted:?} went"
        );
        assert!(!Command::new(&again).status().unwrap().success());
        for m in [&mounted, &again] {
            let _ = nix::mount::umount2(m, nix::mount::MntFlags::MNT_DETACH);
            let _ = std::fs::remove_dir_all(m.parent().unwrap());
        }
    }

    #[test]
    fn other_runtimes_and_scripts_run_as_they_are() {
        let rt = OciRuntime::new("/bin/true", "/var/lib/skiff/true").unwrap();
        assert_eq!(rt.command().get_program(), "/bin/true");
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("crun");
        std::fs::write(&script, "#!/bin/sh\nexit 0\n").unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        let rt = OciRuntime::new(&script, dir.path().join("state")).unwrap();
        let mut cmd = rt.command();
        assert_eq!(cmd.get_program(), script.as_os_str());
        assert!(cmd.status().unwrap().success());
    }

    #[test]
    fn command_lines() {
        let rt = OciRuntime::new("/bin/true", "/var/lib/skiff/crun").unwrap();
        assert_eq!(rt.name(), "true");
        assert_eq!(
            args(&rt.run_command(
                "c1",
                Path::new("/b"),
                Path::new("/b/pid"),
                Path::new("/b/log")
            )),
            [
                "--root",
                "/var/lib/skiff/crun",
                "--log=/b/log",
                "run",
                "--pid-file",
                "/b/pid",
                "--bundle",
                "/b",
                "c1"
            ]
        );
    }

    #[test]
    fn missing_runtime_says_how_to_install() {
        let e = OciRuntime::new("crun-does-not-exist", "/x").unwrap_err();
        assert!(e
            .to_string()
            .starts_with("OCI runtime crun-does-not-exist not found"));
        let e = OciRuntime::new("/nope/crun", "/x").unwrap_err();
        assert_eq!(
            e.to_string(),
            "OCI runtime crun not found: apt-get install crun"
        );
    }

    #[test]
    fn unknown_containers_are_not_errors() {
        let dir = tempfile::tempdir().unwrap();
        // A "crun" that fails whatever it is asked: unknown ids must not reach it.
        let fake = dir.path().join("crun");
        std::os::unix::fs::symlink("/bin/false", &fake).unwrap();
        let rt = OciRuntime::new(&fake, dir.path().join("state")).unwrap();
        assert_eq!(rt.name(), "crun");
        assert!(rt.list().unwrap().is_empty());
        assert_eq!(rt.state("nope").unwrap(), None);
        rt.delete("nope", true).unwrap();
    }

    #[test]
    fn log_lines() {
        assert_eq!(
            runtime_log_message(
                r#"time="2026-01-01T00:00:00Z" level=error msg="exec: \"x\": not found""#
            ),
            r#"exec: "x": not found"#
        );
        assert_eq!(
            runtime_log_message("  plain crun error  "),
            "plain crun error"
        );
    }

    #[test]
    fn signals() {
        assert_eq!(parse_signal("SIGTERM").unwrap(), Signal::SIGTERM);
        assert_eq!(parse_signal("term").unwrap(), Signal::SIGTERM);
        assert_eq!(parse_signal("9").unwrap(), Signal::SIGKILL);
        assert!(parse_signal("SIGNOPE").is_err());
        assert!(parse_signal("99").is_err());
    }

    #[test]
    fn state_json() {
        let s: ContainerState = serde_json::from_str(
            r#"{"ociVersion":"1.0.0","id":"a","pid":42,"status":"running","bundle":"/b","rootfs":"/b/rootfs","created":"x","owner":""}"#,
        )
        .unwrap();
        assert_eq!((s.pid, s.status), (42, ContainerStatus::Running));
        let s: ContainerState = serde_json::from_str(r#"{"id":"a","status":"weird"}"#).unwrap();
        assert_eq!(s.status, ContainerStatus::Unknown);
    }
}
