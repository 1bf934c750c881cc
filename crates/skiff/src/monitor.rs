//! The monitor: the process that starts a prepared container and stays with
//! it until it exits (what conmon is to podman, the shim to containerd).
//!
//! It runs the OCI runtime's `run` in the foreground: the runtime forwards
//! the signals it gets to the container, removes the container when it
//! exits, and exits with the container's status (a signal death as 128+N,
//! so an OOM kill is 137). The runtime writes the container's pid once it
//! exists; a runtime that exits without having written it failed to start
//! the container, and its log says why. Meanwhile the monitor copies output
//! to the log, forwards published ports and passes signals on. When the
//! container exits it records the exit and releases what the container held.
//!
//! `skiff run` is the monitor of a foreground container; a detached one
//! gets its own `skiff __monitor` process in a new session. The daemon runs
//! the monitors of its instances as threads of its own: an instance lives
//! no longer than the daemon anyway (a new daemon removes what a killed one
//! left), and a start saves the exec of a monitor process and its opening
//! of the database, about 2.5 ms of a 16 ms cold start.

use std::fs::File;
use std::io::{BufRead, Write};
use std::net::{Ipv4Addr, TcpListener};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use nix::sys::signal::{SigSet, Signal};
use skiff_core::PortMapping;
use skiff_runtime::oci::{OciRuntime, LOG_FILE};
use skiff_state::ContainerRecord;

use crate::container::{detach_rootfs, release, release_held};
use crate::context::Context;
use crate::logs::{log_path, open_log, pump, Stream};
use crate::spawn::{self, Spawned};
use skiff_state::now_ms;

pub struct Options {
    /// Our stdio is the user's: tee output there.
    pub foreground: bool,
    /// Pass our stdin to the container.
    pub interactive: bool,
    /// Pass SIGINT, SIGTERM, SIGHUP and SIGQUIT on to the container: a
    /// monitor with a process of its own does; one in the daemon must not
    /// (those signals are the daemon's), and starts the runtime in a
    /// process group of its own so a Ctrl-C meant for the daemon does not
    /// reach the containers behind its back.
    pub forward_signals: bool,
    /// The command of a container whose preparation is not recorded yet
    /// (see `State::set_prepared`): recorded with its start, with the
    /// address.
    pub unrecorded_command: Option<Vec<String>>,
}

/// Told once whether the container runs (`Ok`) or why it could not start.
pub type Notify = Box<dyn FnOnce(Result<(), String>) + Send>;

/// The processes signals go to: the runtime (which forwards them) and the
/// container's init (for the final SIGKILL). 0 once the container is gone.
#[derive(Default)]
struct Targets {
    runtime: AtomicI32,
    init: AtomicI32,
}

/// Starts the container and waits for it; returns its exit code.
/// `notify` (detached only) is told once the container runs, or the error.
pub fn run(
    ctx: &Context,
    record: &ContainerRecord,
    runtime: &OciRuntime,
    ip: Option<Ipv4Addr>,
    listeners: Vec<(TcpListener, PortMapping)>,
    opts: Options,
    mut notify: Option<Notify>,
) -> Result<u8> {
    // Blocked here (and so in every thread spawned after), taken by
    // `sigwait` in the forwarding thread; the runtime starts with none.
    let signals = forwarded_signals();
    if opts.forward_signals {
        signals
            .thread_block()
            .context("cannot block signals for forwarding")?;
    }
    // A container that never ran is released whole, record included, and
    // the waiting `run -d` is told why.
    let mut abort = |e: anyhow::Error| {
        release(ctx, &record.id, runtime, true);
        if let Some(n) = notify.take() {
            n(Err(format!("{e:#}")));
        }
        Err(e)
    };
    let mut started = match start(ctx, record, runtime, &opts) {
        Ok(s) => s,
        Err(e) => return abort(e),
    };
    let monitor_pid = std::process::id() as i32;
    let running = ctx.state().and_then(|st| {
        match &opts.unrecorded_command {
            Some(command) => {
                let ip = ip.map(|ip| ip.to_string());
                st.set_prepared_running(
                    &record.id,
                    ip.as_deref(),
                    command,
                    started.pid,
                    monitor_pid,
                )
            }
            None => st.set_running(&record.id, started.pid, monitor_pid),
        }
        .map_err(anyhow::Error::from)
    });
    if let Err(e) = running {
        // Nobody could find or stop a container we cannot record: take it down.
        let _ = runtime.kill(&record.id, libc::SIGKILL, true);
        let _ = started.child.wait();
        return abort(e);
    }
    tracing::debug!(pid = started.pid, "container running");
    if let Some(n) = notify.take() {
        n(Ok(()));
    }
    if let Some(ip) = ip {
        crate::proxy::serve(listeners, ip);
    }
    let targets = Arc::new(Targets::default());
    targets.runtime.store(started.child.id(), Ordering::SeqCst);
    targets.init.store(started.pid, Ordering::SeqCst);
    if opts.forward_signals {
        let t = targets.clone();
        let foreground = opts.foreground;
        std::thread::spawn(move || forward_signals(signals, t, foreground));
    }
    detach_rootfs(ctx, &record.id, runtime);

    // Once the container's init is gone, so is every process of its pid
    // namespace (the kernel kills them before init's exit completes), and
    // the runtime only cleans up after it: about a millisecond of cgroup
    // removal. What the container held on our side goes meanwhile.
    if init_exits_first(started.pid, started.child.id()) {
        release_held(ctx, &record.id, record.auto_remove);
    }
    let status = started
        .child
        .wait()
        .context("waiting for the OCI runtime")?;
    targets.runtime.store(0, Ordering::SeqCst);
    targets.init.store(0, Ordering::SeqCst);
    let code = exit_code(status);
    tracing::debug!(code, "container exited");
    for p in started.pumps.drain(..) {
        let _ = p.join();
    }
    // Release whatever happens to the record: resources matter more. A
    // record about to be removed is not updated first; should this process
    // die before removing it, `ps` finds a running record without its
    // monitor and cleans up as it would have.
    if !record.auto_remove {
        let recorded = ctx
            .state()
            .and_then(|st| Ok(st.set_exited(&record.id, code as i32, now_ms())?));
        if let Err(e) = recorded {
            tracing::warn!(id = %record.id, "cannot record the exit: {e:#}");
        }
    }
    release(ctx, &record.id, runtime, record.auto_remove);
    tracing::debug!("released");
    Ok(code)
}

type Pumps = Vec<std::thread::JoinHandle<std::io::Result<()>>>;

struct Started {
    child: Spawned,
    /// The container's init, as the host sees it.
    pid: i32,
    pumps: Pumps,
}

/// Has the runtime start the container; returns once the container exists
/// (it may already have exited), or with the runtime's error.
fn start(
    ctx: &Context,
    record: &ContainerRecord,
    runtime: &OciRuntime,
    opts: &Options,
) -> Result<Started> {
    skiff_runtime::cgroups::prepare_host(runtime.name())?;
    let dir = ctx.bundle_dir(&record.id);
    let pid_file = dir.join("pid");
    let log_file = dir.join(LOG_FILE);
    let cmd = runtime.run_command(&record.id, &dir, &pid_file, &log_file);
    // A foreground `--rm` container keeps no log: its output goes straight
    // to the terminal, with no copy in between.
    let keep_log = !(opts.foreground && record.auto_remove);
    tracing::debug!("starting the runtime");
    // The forwarding mask must not reach the runtime or the container:
    // the child starts with none (see spawn). A monitor that forwards no
    // signals (the daemon's) puts the runtime in a process group of its own.
    let mut child = spawn::spawn(
        &cmd,
        runtime.binary().as_os_str(),
        spawn::Stdio {
            inherit_stdin: opts.interactive,
            capture_output: keep_log,
        },
        !opts.forward_signals,
    )
    .with_context(|| format!("cannot start the OCI runtime {}", runtime.name()))?;
    let mut pumps = Vec::new();
    if keep_log {
        let log = open_log(&log_path(ctx, record))?;
        let tee = opts.foreground;
        if let Some(out) = child.stdout.take() {
            let l = log.clone();
            pumps.push(std::thread::spawn(move || {
                pump(out, Stream::Stdout, Some(l), tee)
            }));
        }
        if let Some(err) = child.stderr.take() {
            pumps.push(std::thread::spawn(move || {
                pump(err, Stream::Stderr, Some(log), tee)
            }));
        }
    }
    // The pid file appears once the container exists; a runtime that exits
    // before writing it never started the container.
    // Polled at 1 ms at most: a container that starts in 10 ms is not
    // noticed late, and the poll costs one failed open per millisecond.
    // Waiting for events instead (inotify on the bundle, a pidfd on the
    // runtime) was tried and is slower on this kind of VM: `skiff run
    // --rm IMG true` took 25 ms instead of 15, because with this process
    // asleep the idle vCPU makes every hand-off between crun's processes
    // wait for a wake-up.
    // Meanwhile, rather than sleep, the trash is emptied (see trash.rs):
    // one entry, about half a millisecond of waiting for the disk, per turn.
    let mut trash = crate::trash::Emptying::new(ctx);
    let mut delay = Duration::from_micros(100);
    loop {
        if let Some(pid) = read_pid(&pid_file) {
            return Ok(Started { child, pid, pumps });
        }
        if let Some(status) = child.try_wait()? {
            if let Some(pid) = read_pid(&pid_file) {
                return Ok(Started { child, pid, pumps });
            }
            for p in pumps {
                let _ = p.join();
            }
            let why = runtime.last_error(&log_file);
            bail!(
                "the OCI runtime {} could not start the container ({}): {why}",
                runtime.name(),
                status
            );
        }
        if trash.remove_one() {
            continue;
        }
        std::thread::sleep(delay);
        delay = (delay * 2).min(Duration::from_millis(1));
    }
}

/// Waits until the container's init or the runtime exits; whether init
/// did first. True at once when init is no more (its parent, the runtime
/// for crun and runc, reaped it already: a short-lived container often
/// is, by the time it is recorded as running). False without waiting
/// when either cannot be watched otherwise (a kernel without pidfds):
/// the caller then waits for the runtime as before. Should init's pid
/// have been reused already, its exit was reaped, so true is still the
/// truth about the container.
fn init_exits_first(init: i32, runtime: i32) -> bool {
    let watch = |pid: i32| {
        // SAFETY: pidfd_open takes a pid and flags; a descriptor it
        // returns is ours to own.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
    };
    let init_fd = match watch(init) {
        Ok(fd) => fd,
        Err(e) => return e.raw_os_error() == Some(libc::ESRCH),
    };
    let Ok(runtime_fd) = watch(runtime) else {
        return false;
    };
    let mut fds = [init_fd.as_raw_fd(), runtime_fd.as_raw_fd()].map(|fd| libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    });
    loop {
        // SAFETY: poll on two pollfds we own, for their whole length.
        match unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) } {
            n if n > 0 => return fds[0].revents != 0 && fds[1].revents == 0,
            _ if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted => {}
            _ => return false,
        }
    }
}

fn read_pid(path: &Path) -> Option<i32> {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok())
        .filter(|&p| p > 0)
}

/// The runtime's exit status is the container's; a runtime killed by a
/// signal is reported as that signal, as a shell would.
fn exit_code(status: ExitStatus) -> u8 {
    match (status.code(), status.signal()) {
        (Some(c), _) => c as u8,
        (None, Some(sig)) => 128u8.wrapping_add(sig as u8),
        _ => 255,
    }
}

pub fn forwarded_signals() -> SigSet {
    let mut s = SigSet::empty();
    for sig in [
        Signal::SIGINT,
        Signal::SIGTERM,
        Signal::SIGHUP,
        Signal::SIGQUIT,
    ] {
        s.add(sig);
    }
    s
}

/// A forwarded signal that arrived while blocked, taken off the queue.
pub fn pending(set: &SigSet) -> Option<i32> {
    // SAFETY: sigpending fills the zeroed set we pass; sigismember reads it.
    let sig = unsafe {
        let mut waiting: libc::sigset_t = std::mem::zeroed();
        if libc::sigpending(&mut waiting) != 0 {
            return None;
        }
        set.iter()
            .find(|s| libc::sigismember(&waiting, *s as i32) == 1)?
    };
    let mut only = SigSet::empty();
    only.add(sig);
    only.wait().ok().map(|s| s as i32)
}

/// Passes signals to the runtime, which passes them to the container. An
/// init that ignores them (pid 1 has no default handlers) would make Ctrl-C
/// useless, so a second signal, or ten seconds after the first, kills it.
fn forward_signals(set: SigSet, targets: Arc<Targets>, foreground: bool) {
    let mut first = true;
    loop {
        let Ok(sig) = set.wait() else { return };
        let runtime = targets.runtime.load(Ordering::SeqCst);
        if runtime <= 0 {
            return;
        }
        if !first {
            kill(targets.init.load(Ordering::SeqCst), libc::SIGKILL);
            continue;
        }
        first = false;
        // Ctrl-C on our terminal already reached the runtime, which is in
        // our process group: sending it again would deliver it twice.
        if !(foreground && sig == Signal::SIGINT && terminal_is_ours()) {
            kill(runtime, sig as i32);
        }
        let t = targets.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_secs(10));
            kill(t.init.load(Ordering::SeqCst), libc::SIGKILL);
        });
    }
}

fn kill(pid: i32, sig: i32) {
    if pid > 0 {
        // SAFETY: plain syscall; a stale pid is the only risk and pids are
        // cleared as soon as the runtime has been reaped.
        unsafe { libc::kill(pid, sig) };
    }
}

fn terminal_is_ours() -> bool {
    // SAFETY: plain syscalls on fds we hold.
    unsafe {
        [libc::STDIN_FILENO, libc::STDERR_FILENO]
            .iter()
            .any(|&fd| libc::isatty(fd) == 1 && libc::tcgetpgrp(fd) == libc::getpgrp())
    }
}

/// Starts `skiff __monitor ID` in its own session and waits until it says
/// the container runs (or why not). The published ports' sockets, bound by
/// the caller, are handed over open, so a port in use fails `run` itself.
/// Returns the monitor process: a caller that outlives it reaps it (the
/// daemon does, to learn of the exit); one that exits first may drop it,
/// as `run -d` does, and init adopts it.
pub fn spawn_detached(
    ctx: &Context,
    record: &ContainerRecord,
    listeners: Vec<(TcpListener, PortMapping)>,
) -> Result<Child> {
    let (rd, wr) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).context("pipe")?;
    let wr_fd = wr.as_raw_fd();
    let listen_fds: Vec<RawFd> = listeners.iter().map(|(l, _)| l.as_raw_fd()).collect();
    // The running binary itself, not its path: a long-running daemon whose
    // file was replaced by an upgrade (or deleted) still starts monitors,
    // and they are always the daemon's own version.
    let mut cmd = Command::new("/proc/self/exe");
    cmd.arg0("skiff")
        .arg("--root")
        .arg(&ctx.root)
        .arg("__monitor")
        .arg(&record.id)
        .arg("--notify-fd")
        .arg(wr_fd.to_string());
    for fd in &listen_fds {
        cmd.arg("--listen-fd").arg(fd.to_string());
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let inherit: Vec<RawFd> = std::iter::once(wr_fd).chain(listen_fds).collect();
    unsafe {
        cmd.pre_exec(move || {
            nix::unistd::setsid().map_err(std::io::Error::from)?;
            for fd in &inherit {
                if libc::fcntl(*fd, libc::F_SETFD, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().context("cannot start the container monitor")?;
    drop(wr);
    drop(listeners);
    // One line: `ok`, or why not. EOF first means the monitor died.
    let mut msg = String::new();
    std::io::BufReader::new(File::from(rd)).read_line(&mut msg)?;
    match msg.trim() {
        "ok" => Ok(child),
        "" => {
            let _ = child.wait();
            bail!("the container monitor exited before the container started (see SKIFF_LOG=debug)")
        }
        why => {
            let _ = child.wait();
            bail!("{why}")
        }
    }
}

/// `skiff __monitor ID`: the detached half of `skiff run -d`.
pub fn detached_main(ctx: &Context, id: &str, notify_fd: i32, listen_fds: &[i32]) -> Result<u8> {
    // The fds came without close-on-exec so that they could reach us; the
    // runtime and the container must not inherit them (an inherited notify
    // pipe would keep `skiff run -d` waiting for as long as the container runs).
    for fd in std::iter::once(&notify_fd).chain(listen_fds) {
        // SAFETY: fcntl on an fd number; a bad one fails with EBADF.
        if unsafe { libc::fcntl(*fd, libc::F_SETFD, libc::FD_CLOEXEC) } < 0 {
            bail!("fd {fd} handed to the monitor is not open");
        }
    }
    // SAFETY: the fds were handed to us open by `spawn_detached`, once each.
    let mut notify = unsafe { File::from_raw_fd(notify_fd) };
    let tell: Notify = Box::new(move |started| {
        let _ = match started {
            Ok(()) => writeln!(notify, "ok"),
            Err(why) => writeln!(notify, "{why}"),
        };
    });
    let record = match ctx.state()?.find_container(id)? {
        Some(r) => r,
        None => {
            tell(Err(format!("container {id} vanished before it started")));
            bail!("no such container: {id}");
        }
    };
    let listeners = listen_fds
        .iter()
        .zip(&record.ports)
        .map(|(fd, p)| (unsafe { TcpListener::from_raw_fd(*fd) }, *p))
        .collect();
    let runtime = OciRuntime::new(&record.runtime, ctx.runtime_state_dir(&record.runtime))?;
    let ip = record.ip.as_deref().and_then(|s| s.parse().ok());
    let opts = Options {
        foreground: false,
        interactive: false,
        forward_signals: true,
        unrecorded_command: None,
    };
    run(ctx, &record, &runtime, ip, listeners, opts, Some(tell))
}
