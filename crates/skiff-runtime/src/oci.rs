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
    /// The rules stay in the config for other runtimes and for readers. A
    /// profile that cannot be precompiled is left to crun, which then
    /// reports the problem itself.
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
                }
                Err(e) => tracing::debug!("{e}; crun compiles the profile itself"),
            }
        }
        let path = bundle.join("config.json");
        let json = serde_json::to_vec_pretty(&*spec).map_err(io::Error::other);
        json.and_then(|j| std::fs::write(&path, j))
            .map_err(|source| OciError::WriteConfig { path, source })
    }

    /// Makes the sealed copy of the binary that commands run from (see
    /// [`sealed`]) now rather than at the first command: for a caller
    /// with time to spare while other work finishes.
    pub fn seal(&self) {
        self.sealed();
    }

    /// The sealed copy, for the runtimes known to look for one (crun, and
    /// runc 1.1): another runtime may find its own files through
    /// `/proc/self/exe`, and has nothing to gain.
    fn sealed(&self) -> Option<PathBuf> {
        matches!(self.name.as_str(), "crun" | "runc")
            .then(|| sealed(&self.binary, &self.name))
            .flatten()
    }

    /// The binary with the global options; every command starts here.
    /// It runs from a sealed copy when one can be made (see [`sealed`]),
    /// under its own name.
    pub fn command(&self) -> Command {
        let mut cmd = match self.sealed() {
            Some(copy) => {
                let mut cmd = Command::new(copy);
                cmd.arg0(&self.binary);
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

/// `binary`'s sealed in-memory copy, as a path to exec under `name` (see [`named`];
/// else `/proc/self/fd/N`): made once per process and binary, kept open
/// for the process's life. `None` for a script, or when the kernel cannot
/// make one: the binary then runs as it is.
///
/// crun (and runc 1.1) guard their binary against a container that would
/// overwrite it through `/proc/PID/exe` (CVE-2019-5736) by re-executing
/// themselves from a read-only bind mount or a copy at every command,
/// unless they already run from a memfd sealed against any change, which
/// nobody can write to. Handing them such a memfd keeps the protection
/// and spares the second exec and dynamic link: `crun run` of `true`
/// went from 8.3 to 6.7 ms here (crun's own comment in
/// `cloned_binary.c` suggests the same for admins). An upgrade of the
/// runtime reaches a running daemon at its restart. The price is memory:
/// a copy (490 KB of Debian's crun) lives as long as a runtime process
/// runs from it, so one per daemon, and one per detached container, whose
/// `crun run` stays for its life (crun's own fallback, a copy of its own,
/// costs the same).
fn sealed(binary: &Path, name: &str) -> Option<PathBuf> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    use std::sync::Mutex;
    /// A binary's copy, and the path it is exec'd from.
    type Sealed = Option<(OwnedFd, PathBuf)>;
    static COPIES: Mutex<Vec<(PathBuf, Sealed)>> = Mutex::new(Vec::new());

    let make = || -> io::Result<OwnedFd> {
        // A script (a wrapper around a runtime) cannot run from a
        // close-on-exec descriptor: its interpreter would find it closed.
        let mut magic = [0u8; 4];
        io::Read::read_exact(&mut std::fs::File::open(binary)?, &mut magic)?;
        if &magic != b"\x7fELF" {
            return Err(io::Error::other("not an ELF binary"));
        }
        let name = c"skiff-sealed-runtime";
        let flags = libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING;
        // SAFETY: a plain syscall with a valid C string; the descriptor it
        // returns is owned from here on.
        let mut fd = unsafe { libc::memfd_create(name.as_ptr(), flags | libc::MFD_EXEC) };
        if fd < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::EINVAL) {
            // A kernel before 6.3 knows no MFD_EXEC (nor any policy against
            // executable memfds).
            fd = unsafe { libc::memfd_create(name.as_ptr(), flags) };
        }
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just returned by memfd_create and is ours alone.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let mut copy = std::fs::File::from(fd);
        io::copy(&mut std::fs::File::open(binary)?, &mut copy)?;
        // Exactly these seals: crun and runc compare them for equality.
        let seals =
            libc::F_SEAL_SEAL | libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE;
        // SAFETY: fcntl on a descriptor we own.
        if unsafe { libc::fcntl(copy.as_raw_fd(), libc::F_ADD_SEALS, seals) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(copy.into())
    };
    let mut copies = COPIES.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, copy)) = copies.iter().find(|(b, _)| b == binary) {
        return copy.as_ref().map(|(_, exec)| exec.clone());
    }
    let copy = make()
        .map_err(|e| tracing::debug!("no sealed copy of {}: {e}", binary.display()))
        .ok()
        .map(|fd| {
            let raw = fd.as_raw_fd();
            let copy = PathBuf::from(format!("/proc/self/fd/{raw}"));
            let exec = named(&copy, raw, name).unwrap_or(copy);
            (fd, exec)
        });
    let exec = copy.as_ref().map(|(_, exec)| exec.clone());
    copies.push((binary.to_path_buf(), copy));
    exec
}

/// Where the sealed copy on descriptor `fd` is exec'd from under its own
/// name: `/run/skiff/sealed/FD/NAME`, a symlink to `/proc/self/fd/FD`.
/// The kernel names a process after the last component of the path it
/// was exec'd from, so through `/proc/self/fd/7` `ps`, `top` and `pgrep
/// crun` would know the runtime as "7". The link is the same for every
/// process with the copy on that descriptor, so it is made once per boot.
/// Root execs through it, so every directory on the way must be this
/// user's and writable by no other (as `/run/skiff`, made by Skiff, is);
/// `None` if one is not, or the link cannot be made.
fn named(copy: &Path, fd: i32, name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    crate::run_root::ensure();
    let dir = Path::new(SEALED_DIR).join(fd.to_string());
    let link = dir.join(name);
    let made = std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir);
    let euid = nix::unistd::geteuid().as_raw();
    let safe = |p: &Path| {
        std::fs::symlink_metadata(p)
            .is_ok_and(|m| m.is_dir() && m.uid() == euid && m.mode() & 0o022 == 0)
    };
    // sealed/FD, sealed and /run/skiff.
    if made.is_err() || !dir.ancestors().take(3).all(safe) {
        return None;
    }
    if std::fs::read_link(&link).is_ok_and(|t| t == copy) {
        return Some(link);
    }
    // Built aside and renamed over: a racing process makes the same link.
    let tmp = dir.join(format!(".{name}.{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(copy, &tmp).ok()?;
    std::fs::rename(&tmp, &link).ok()?;
    Some(link)
}

/// See [`named`].
const SEALED_DIR: &str = "/run/skiff/sealed";

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
    fn runtimes_run_from_a_sealed_copy_of_their_binary() {
        use std::io::Write as _;
        use std::os::fd::AsRawFd as _;
        // A stand-in crun that does nothing.
        let dir = tempfile::tempdir().unwrap();
        let crun = dir.path().join("crun");
        std::fs::copy("/bin/true", &crun).unwrap();
        let rt = OciRuntime::new(&crun, dir.path().join("state")).unwrap();
        let mut cmd = rt.command();
        let copy = PathBuf::from(cmd.get_program());
        // Exec'd under its own name, through a link to the descriptor.
        assert_eq!(copy.file_name().unwrap(), "crun", "{copy:?}");
        let target = std::fs::read_link(&copy).unwrap();
        assert!(target.starts_with("/proc/self/fd"), "{target:?}");
        assert_eq!(std::fs::read(&copy).unwrap(), std::fs::read(&crun).unwrap());
        let file = std::fs::File::open(&copy).unwrap();
        // SAFETY: fcntl on an open descriptor.
        let seals = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GET_SEALS) };
        assert_eq!(
            seals,
            libc::F_SEAL_SEAL | libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE
        );
        let written = std::fs::OpenOptions::new()
            .write(true)
            .open(&copy)
            .and_then(|mut f| f.write_all(b"x"));
        assert!(written.is_err(), "the copy took a write");
        // One copy per binary, and it runs.
        assert_eq!(rt.command().get_program(), copy.as_os_str());
        assert!(cmd.status().unwrap().success());

        // Processes are named after the runtime, not the descriptor
        // (`pgrep crun` finds them); the name stays until it is reaped.
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
