//! The monitor: the process that starts a prepared container and stays with
//! it until it exits (what conmon is to podman, the shim to containerd).
//!
//! It becomes a child subreaper, has the OCI runtime start the container
//! detached, and so inherits the container's init when the runtime exits:
//! `waitpid` then yields the real exit status (a signal death becomes
//! 128+N, so an OOM kill is 137) whatever the runtime reports. Meanwhile it
//! copies output to the log, forwards published ports and, in the
//! foreground, passes Ctrl-C and SIGTERM on. When the container exits it
//! records the exit and releases what the container held.
//!
//! `skiff run` is the monitor of a foreground container; a detached one
//! gets its own `skiff __monitor` process in a new session.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener};
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::Pid;
use skiff_core::PortMapping;
use skiff_runtime::oci::OciRuntime;
use skiff_state::ContainerRecord;

use crate::container::release;
use crate::context::Context;
use crate::logs::{now_ms, open_log, pump, Stream};

pub struct Options {
    /// Our stdio is the user's terminal: tee output there, forward signals.
    pub foreground: bool,
    /// Pass our stdin to the container.
    pub interactive: bool,
}

/// Starts the container and waits for it; returns its exit code.
/// `notify` (detached only) is told `ok` once the container runs, or the error.
pub fn run(
    ctx: &Context,
    record: &ContainerRecord,
    runtime: &OciRuntime,
    ip: Option<Ipv4Addr>,
    listeners: Vec<(TcpListener, PortMapping)>,
    opts: Options,
    mut notify: Option<File>,
) -> Result<u8> {
    let signals = forwarded_signals();
    if opts.foreground {
        // Blocked here (and so in every thread spawned after), taken by
        // `sigwait` in the forwarding thread, unblocked in the runtime child.
        signals
            .thread_block()
            .context("cannot block signals for forwarding")?;
    }
    let dir = ctx.container_dir(&record.id);
    let pid = match start(ctx, record, runtime, &opts) {
        Ok(started) => started,
        Err(e) => {
            release(ctx, &record.id, runtime, true);
            if let Some(n) = notify.as_mut() {
                let _ = writeln!(n, "{e:#}");
            }
            return Err(e);
        }
    };
    let (pid, pumps) = pid;
    let state = ctx.state()?;
    state.set_running(&record.id, pid, std::process::id() as i32)?;
    if let Some(mut n) = notify.take() {
        let _ = n.write_all(b"ok\n");
    }
    if let Some(ip) = ip {
        crate::proxy::serve(listeners, ip);
    }
    let target = Arc::new(AtomicI32::new(pid));
    if opts.foreground {
        let t = target.clone();
        std::thread::spawn(move || forward_signals(signals, t));
    }

    let code = wait_for(pid);
    target.store(0, Ordering::SeqCst);
    for p in pumps {
        let _ = p.join();
    }
    state.set_exited(&record.id, code as i32, now_ms())?;
    release(ctx, &record.id, runtime, record.auto_remove);
    tracing::debug!(id = %record.id, code, dir = %dir.display(), "container exited");
    Ok(code)
}

type Pumps = Vec<std::thread::JoinHandle<std::io::Result<()>>>;

/// Has the runtime start the container detached; returns the container's
/// init pid and the threads copying its output.
fn start(
    ctx: &Context,
    record: &ContainerRecord,
    runtime: &OciRuntime,
    opts: &Options,
) -> Result<(i32, Pumps)> {
    // Orphans we inherit: the container's init, once the runtime exits.
    nix::sys::prctl::set_child_subreaper(true).context("cannot become a subreaper")?;
    skiff_runtime::cgroups::prepare_host(runtime.name())?;
    let dir = ctx.container_dir(&record.id);
    let pid_file = dir.join("pid");
    let mut cmd =
        runtime.run_detached_command(&record.id, &dir, &pid_file, &dir.join("runtime.log"));
    cmd.stdin(if opts.interactive {
        Stdio::inherit()
    } else {
        Stdio::null()
    });
    // A foreground `--rm` container keeps no log: its output goes straight
    // to the terminal, with no copy in between.
    let keep_log = !(opts.foreground && record.auto_remove);
    if keep_log {
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    }
    unsafe {
        cmd.pre_exec(|| {
            // The forwarding mask must not reach the container.
            SigSet::empty()
                .thread_set_mask()
                .map_err(std::io::Error::from)
        });
    }
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot start the OCI runtime {}", runtime.name()))?;
    let mut pumps = Vec::new();
    if keep_log {
        let log = open_log(&dir)?;
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
    let status = child.wait().context("waiting for the OCI runtime")?;
    if !status.success() {
        let why = runtime.last_error(&dir.join("runtime.log"));
        bail!(
            "the OCI runtime {} could not start the container: {why}",
            runtime.name()
        );
    }
    let pid = std::fs::read_to_string(&pid_file)
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok())
        .with_context(|| format!("the OCI runtime wrote no pid to {}", pid_file.display()))?;
    Ok((pid, pumps))
}

/// Reaps the container's init; its exit code, or 128+signal.
fn wait_for(pid: i32) -> u8 {
    loop {
        match waitpid(Pid::from_raw(pid), None) {
            Ok(WaitStatus::Exited(_, code)) => return code as u8,
            Ok(WaitStatus::Signaled(_, sig, _)) => return 128u8.wrapping_add(sig as u8),
            Ok(_) => continue,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => {
                tracing::warn!(pid, "waitpid: {e}");
                return 255;
            }
        }
    }
}

fn forwarded_signals() -> SigSet {
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

/// Passes signals to the container's init. An init that ignores them (pid 1
/// has no default handlers) would make Ctrl-C useless, so a second signal,
/// or ten seconds after the first, kills it.
fn forward_signals(set: SigSet, target: Arc<AtomicI32>) {
    let mut first = true;
    loop {
        let Ok(sig) = set.wait() else { return };
        let pid = target.load(Ordering::SeqCst);
        if pid <= 0 {
            return;
        }
        if first {
            first = false;
            unsafe { libc::kill(pid, sig as i32) };
            let t = target.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_secs(10));
                let pid = t.load(Ordering::SeqCst);
                if pid > 0 {
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            });
        } else {
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

/// Starts `skiff __monitor ID` in its own session and waits until it says
/// the container runs (or why not). The published ports' sockets, bound by
/// the caller, are handed over open, so a port in use fails `run` itself.
pub fn spawn_detached(
    ctx: &Context,
    record: &ContainerRecord,
    listeners: Vec<(TcpListener, PortMapping)>,
) -> Result<()> {
    let (rd, wr) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).context("pipe")?;
    let wr_fd = wr.as_raw_fd();
    let listen_fds: Vec<RawFd> = listeners.iter().map(|(l, _)| l.as_raw_fd()).collect();
    let exe = std::env::current_exe().context("cannot find the skiff executable")?;
    let mut cmd = Command::new(exe);
    cmd.arg("--root")
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
    let child = cmd.spawn().context("cannot start the container monitor")?;
    drop(wr);
    drop(listeners);
    let mut msg = String::new();
    File::from(rd).read_to_string(&mut msg)?;
    // The monitor lives on, reparented to init once we exit.
    std::mem::forget(child);
    match msg.trim() {
        "ok" => Ok(()),
        "" => {
            bail!("the container monitor exited before the container started (see SKIFF_LOG=debug)")
        }
        why => bail!("{why}"),
    }
}

/// `skiff __monitor ID`: the detached half of `skiff run -d`.
pub fn detached_main(ctx: &Context, id: &str, notify_fd: i32, listen_fds: &[i32]) -> Result<u8> {
    // SAFETY: the fds were handed to us open by `spawn_detached`, once each.
    let mut notify = unsafe { File::from_raw_fd(notify_fd) };
    let record = match ctx.state()?.find_container(id)? {
        Some(r) => r,
        None => {
            let _ = writeln!(notify, "container {id} vanished before it started");
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
    };
    run(ctx, &record, &runtime, ip, listeners, opts, Some(notify))
}
