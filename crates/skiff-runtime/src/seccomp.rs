//! Docker's default seccomp profile (moby `profiles/seccomp/default.json`,
//! Apache-2.0) resolved for Docker's default capability set
//! ([`crate::spec::DEFAULT_CAPABILITIES`]): the unconditional allow list,
//! the rules that hold on x86, and those gated on CAP_SYS_CHROOT; nothing
//! gated on CAP_SYS_ADMIN and friends. Everything else fails with EPERM.
//! io_uring is not allowed (as in Docker 25+): its operations bypass
//! seccomp filtering and it has been a steady source of kernel exploits.
//!
//! Unlike Docker, [`default_profile`] lists only the native architecture.
//! Measured with crun 1.8.1 / libseccomp 2.5.4: adding x86 and x32 makes
//! libseccomp spend ~15 ms per container start compiling the filter
//! (`crun run true`: 26 ms instead of 11 ms). The filter still checks the
//! architecture: a 32-bit x86 syscall kills the process (libseccomp's
//! bad-arch action) and an x32 one gets EPERM, so nothing bypasses it;
//! only 32-bit x86 binaries cannot run. [`profile_for`] takes the list for
//! callers that need them.
//!
//! [`compile`] turns a profile into the BPF program the kernel loads, as
//! crun does, so that crun can be handed the program instead of the rules
//! (see [`crate::oci::OciRuntime::write_config`]).

use std::collections::HashMap;
use std::path::Path;
use std::str::FromStr;
use std::sync::{Arc, Mutex, OnceLock};

use libseccomp::{ScmpAction, ScmpArch, ScmpArgCompare, ScmpCompareOp, ScmpFilterContext};
use oci_spec::runtime::{
    Arch, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArg, LinuxSeccompArgBuilder,
    LinuxSeccompOperator, LinuxSyscall,
};
use oci_spec::OciSpecError;
use skiff_core::Digest;

/// A profile libseccomp cannot turn into a filter.
#[derive(Debug, thiserror::Error)]
#[error("cannot compile the seccomp profile: {0}")]
pub struct CompileError(String);

/// Syscalls allowed with any arguments.
#[rustfmt::skip]
pub const ALLOWED: &[&str] = &[
    "accept", "accept4", "access", "adjtimex", "alarm", "bind", "brk", "capget", "capset", "chdir",
    "chmod", "chown", "chown32", "clock_adjtime", "clock_adjtime64", "clock_getres",
    "clock_getres_time64", "clock_gettime", "clock_gettime64", "clock_nanosleep",
    "clock_nanosleep_time64", "close", "close_range", "connect", "copy_file_range", "creat", "dup",
    "dup2", "dup3", "epoll_create", "epoll_create1", "epoll_ctl", "epoll_ctl_old", "epoll_pwait",
    "epoll_pwait2", "epoll_wait", "epoll_wait_old", "eventfd", "eventfd2", "execve", "execveat",
    "exit", "exit_group", "faccessat", "faccessat2", "fadvise64", "fadvise64_64", "fallocate",
    "fanotify_mark", "fchdir", "fchmod", "fchmodat", "fchown", "fchown32", "fchownat", "fcntl",
    "fcntl64", "fdatasync", "fgetxattr", "flistxattr", "flock", "fork", "fremovexattr",
    "fsetxattr", "fstat", "fstat64", "fstatat64", "fstatfs", "fstatfs64", "fsync", "ftruncate",
    "ftruncate64", "futex", "futex_time64", "futex_waitv", "futimesat", "getcpu", "getcwd",
    "getdents", "getdents64", "getegid", "getegid32", "geteuid", "geteuid32", "getgid", "getgid32",
    "getgroups", "getgroups32", "getitimer", "getpeername", "getpgid", "getpgrp", "getpid",
    "getppid", "getpriority", "getrandom", "getresgid", "getresgid32", "getresuid", "getresuid32",
    "getrlimit", "get_robust_list", "getrusage", "getsid", "getsockname", "getsockopt",
    "get_thread_area", "gettid", "gettimeofday", "getuid", "getuid32", "getxattr",
    "inotify_add_watch", "inotify_init", "inotify_init1", "inotify_rm_watch", "io_cancel", "ioctl",
    "io_destroy", "io_getevents", "io_pgetevents", "io_pgetevents_time64", "ioprio_get",
    "ioprio_set", "io_setup", "io_submit", 
    "ipc", "kill", "landlock_add_rule", "landlock_create_ruleset", "landlock_restrict_self",
    "lchown", "lchown32", "lgetxattr", "link", "linkat", "listen", "listxattr", "llistxattr",
    "_llseek", "lremovexattr", "lseek", "lsetxattr", "lstat", "lstat64", "madvise", "membarrier",
    "memfd_create", "memfd_secret", "mincore", "mkdir", "mkdirat", "mknod", "mknodat", "mlock",
    "mlock2", "mlockall", "mmap", "mmap2", "mprotect", "mq_getsetattr", "mq_notify", "mq_open",
    "mq_timedreceive", "mq_timedreceive_time64", "mq_timedsend", "mq_timedsend_time64",
    "mq_unlink", "mremap", "msgctl", "msgget", "msgrcv", "msgsnd", "msync", "munlock",
    "munlockall", "munmap", "name_to_handle_at", "nanosleep", "newfstatat", "_newselect", "open",
    "openat", "openat2", "pause", "pidfd_open", "pidfd_send_signal", "pipe", "pipe2", "pkey_alloc",
    "pkey_free", "pkey_mprotect", "poll", "ppoll", "ppoll_time64", "prctl", "pread64", "preadv",
    "preadv2", "prlimit64", "process_mrelease", "pselect6", "pselect6_time64", "pwrite64",
    "pwritev", "pwritev2", "read", "readahead", "readlink", "readlinkat", "readv", "recv",
    "recvfrom", "recvmmsg", "recvmmsg_time64", "recvmsg", "remap_file_pages", "removexattr",
    "rename", "renameat", "renameat2", "restart_syscall", "rmdir", "rseq", "rt_sigaction",
    "rt_sigpending", "rt_sigprocmask", "rt_sigqueueinfo", "rt_sigreturn", "rt_sigsuspend",
    "rt_sigtimedwait", "rt_sigtimedwait_time64", "rt_tgsigqueueinfo", "sched_getaffinity",
    "sched_getattr", "sched_getparam", "sched_get_priority_max", "sched_get_priority_min",
    "sched_getscheduler", "sched_rr_get_interval", "sched_rr_get_interval_time64",
    "sched_setaffinity", "sched_setattr", "sched_setparam", "sched_setscheduler", "sched_yield",
    "seccomp", "select", "semctl", "semget", "semop", "semtimedop", "semtimedop_time64", "send",
    "sendfile", "sendfile64", "sendmmsg", "sendmsg", "sendto", "setfsgid", "setfsgid32",
    "setfsuid", "setfsuid32", "setgid", "setgid32", "setgroups", "setgroups32", "setitimer",
    "setpgid", "setpriority", "setregid", "setregid32", "setresgid", "setresgid32", "setresuid",
    "setresuid32", "setreuid", "setreuid32", "setrlimit", "set_robust_list", "setsid",
    "setsockopt", "set_thread_area", "set_tid_address", "setuid", "setuid32", "setxattr", "shmat",
    "shmctl", "shmdt", "shmget", "shutdown", "sigaltstack", "signalfd", "signalfd4", "sigprocmask",
    "sigreturn", "socketcall", "socketpair", "splice", "stat", "stat64", "statfs", "statfs64",
    "statx", "symlink", "symlinkat", "sync", "sync_file_range", "syncfs", "sysinfo", "tee",
    "tgkill", "time", "timer_create", "timer_delete", "timer_getoverrun", "timer_gettime",
    "timer_gettime64", "timer_settime", "timer_settime64", "timerfd_create", "timerfd_gettime",
    "timerfd_gettime64", "timerfd_settime", "timerfd_settime64", "times", "tkill", "truncate",
    "truncate64", "ugetrlimit", "umask", "uname", "unlink", "unlinkat", "utime", "utimensat",
    "utimensat_time64", "utimes", "vfork", "vmsplice", "wait4", "waitid", "waitpid", "write",
    "writev",
    // Kernel >= 4.8: ptrace can no longer bypass seccomp.
    "process_vm_readv", "process_vm_writev", "ptrace",
    // x86 only.
    "arch_prctl", "modify_ldt",
    // CAP_SYS_CHROOT is a default capability.
    "chroot",
];

/// `personality(2)` personas that are allowed: PER_LINUX, PER_LINUX32,
/// UNAME26, UNAME26|PER_LINUX32, and the query 0xffffffff.
const PERSONALITIES: [u64; 5] = [0x0, 0x8, 0x20000, 0x20008, 0xffff_ffff];

/// CLONE_NEWNS|NEWUTS|NEWIPC|NEWUSER|NEWPID|NEWNET|NEWCGROUP: without
/// CAP_SYS_ADMIN, `clone` may create threads and processes, no namespaces.
pub const CLONE_NAMESPACE_FLAGS: u64 = 0x7E02_0000;

/// Socket family that is refused: AF_VSOCK (host/guest sockets).
const AF_VSOCK: u64 = 40;

const EPERM: u32 = 1;
const ENOSYS: u32 = 38;

fn rule(names: &[&str], action: LinuxSeccompAction) -> LinuxSyscall {
    let mut s = LinuxSyscall::default();
    s.set_names(names.iter().map(|n| n.to_string()).collect());
    s.set_action(action);
    s
}

fn arg(
    index: usize,
    value: u64,
    value_two: Option<u64>,
    op: LinuxSeccompOperator,
) -> Result<LinuxSeccompArg, OciSpecError> {
    let mut a = LinuxSeccompArgBuilder::default()
        .index(index)
        .value(value)
        .op(op);
    if let Some(v) = value_two {
        a = a.value_two(v);
    }
    a.build()
}

/// The architecture this binary runs on, the only one the default filter
/// lets through.
pub const NATIVE_ARCH: Arch = if cfg!(target_arch = "aarch64") {
    Arch::ScmpArchAarch64
} else {
    Arch::ScmpArchX86_64
};

/// Docker's default profile for the native architecture.
pub fn default_profile() -> Result<LinuxSeccomp, OciSpecError> {
    profile_for(&[NATIVE_ARCH])
}

/// Docker's default profile for `arches` (Docker lists x86-64, x86, x32).
pub fn profile_for(arches: &[Arch]) -> Result<LinuxSeccomp, OciSpecError> {
    use LinuxSeccompAction::{ScmpActAllow, ScmpActErrno};
    use LinuxSeccompOperator::{ScmpCmpEq, ScmpCmpMaskedEq, ScmpCmpNe};

    let mut syscalls = vec![rule(ALLOWED, ScmpActAllow)];
    let mut socket = rule(&["socket"], ScmpActAllow);
    socket.set_args(Some(vec![arg(0, AF_VSOCK, None, ScmpCmpNe)?]));
    syscalls.push(socket);
    for persona in PERSONALITIES {
        let mut p = rule(&["personality"], ScmpActAllow);
        p.set_args(Some(vec![arg(0, persona, None, ScmpCmpEq)?]));
        syscalls.push(p);
    }
    // (flags & CLONE_NAMESPACE_FLAGS) == 0; OCI puts the mask in `value`
    // and the expected result in `valueTwo`.
    let mut clone = rule(&["clone"], ScmpActAllow);
    clone.set_args(Some(vec![arg(
        0,
        CLONE_NAMESPACE_FLAGS,
        Some(0),
        ScmpCmpMaskedEq,
    )?]));
    syscalls.push(clone);
    // clone3 passes its flags in memory, out of seccomp's reach: ENOSYS
    // makes libcs fall back to clone, which the rule above can inspect.
    let mut clone3 = rule(&["clone3"], ScmpActErrno);
    clone3.set_errno_ret(Some(ENOSYS));
    syscalls.push(clone3);

    let mut profile = LinuxSeccomp::default();
    profile.set_default_action(ScmpActErrno);
    profile.set_default_errno_ret(Some(EPERM));
    profile.set_architectures(Some(arches.to_vec()));
    profile.set_syscalls(Some(syscalls));
    Ok(profile)
}

/// The BPF program for `profile`, as crun (1.8 to 1.20) builds it from the
/// same rules with the same libseccomp: rules whose action is the default
/// one are left out, unknown syscall names are skipped (the profile lists
/// syscalls of other architectures and newer kernels), and a rule testing
/// one argument twice becomes one rule per test. A test in
/// tests/containers.rs checks the bytes against crun's own.
///
/// Compiling Docker's profile takes libseccomp over a millisecond, as long
/// as the rest of `skiff run`'s own work, so programs are kept for the life
/// of the process and, with `cache_dir`, in `<cache_dir>/<sha256 of the
/// profile>.bpf` for the next one (a tmpfs under /run: gone at reboot,
/// when libseccomp may have been upgraded).
pub fn compile(
    profile: &LinuxSeccomp,
    cache_dir: Option<&Path>,
) -> Result<Arc<[u8]>, CompileError> {
    static MEMORY: OnceLock<Mutex<HashMap<String, Arc<[u8]>>>> = OnceLock::new();
    let key = serde_json::to_string(profile).map_err(|e| CompileError(e.to_string()))?;
    let memory = MEMORY.get_or_init(Default::default);
    if let Some(bpf) = memory.lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
        return Ok(bpf.clone());
    }
    let file = cache_dir.map(|d| d.join(format!("{}.bpf", Digest::of(key.as_bytes()).hex())));
    let cached = file
        .as_ref()
        .and_then(|f| std::fs::read(f).ok())
        .filter(|b| is_program(b));
    let bpf: Arc<[u8]> = match cached {
        Some(b) => b.into(),
        None => {
            let b = compile_uncached(profile)?;
            if let Some(f) = &file {
                if let Err(e) = crate::write_whole(f, &b) {
                    tracing::debug!("cannot cache the seccomp filter in {}: {e}", f.display());
                }
            }
            b.into()
        }
    };
    memory
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(key, bpf.clone());
    Ok(bpf)
}

/// A BPF program is a whole number of 8-byte instructions.
fn is_program(b: &[u8]) -> bool {
    !b.is_empty() && b.len().is_multiple_of(8)
}

fn compile_uncached(profile: &LinuxSeccomp) -> Result<Vec<u8>, CompileError> {
    let fail =
        |what: &str, e: libseccomp::error::SeccompError| CompileError(format!("{what}: {e}"));
    let default = action(profile.default_action(), profile.default_errno_ret())?;
    let mut ctx = ScmpFilterContext::new(default).map_err(|e| fail("seccomp_init", e))?;
    for arch in profile.architectures().iter().flatten() {
        let name = serde_json::to_value(arch)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        let arch = ScmpArch::from_str(&name).map_err(|e| fail("architecture", e))?;
        ctx.add_arch(arch).map_err(|e| fail("architecture", e))?;
    }
    for rule in profile.syscalls().iter().flatten() {
        let act = action(rule.action(), rule.errno_ret())?;
        if act == default {
            continue;
        }
        let (mut tests, mut indices) = (Vec::new(), Vec::new());
        for a in rule.args().iter().flatten() {
            let index = u32::try_from(a.index())
                .ok()
                .filter(|i| *i < 6)
                .ok_or_else(|| CompileError(format!("argument index {} is not 0-5", a.index())))?;
            let (op, datum) = match a.op() {
                LinuxSeccompOperator::ScmpCmpNe => (ScmpCompareOp::NotEqual, a.value()),
                LinuxSeccompOperator::ScmpCmpLt => (ScmpCompareOp::Less, a.value()),
                LinuxSeccompOperator::ScmpCmpLe => (ScmpCompareOp::LessOrEqual, a.value()),
                LinuxSeccompOperator::ScmpCmpEq => (ScmpCompareOp::Equal, a.value()),
                LinuxSeccompOperator::ScmpCmpGe => (ScmpCompareOp::GreaterEqual, a.value()),
                LinuxSeccompOperator::ScmpCmpGt => (ScmpCompareOp::Greater, a.value()),
                // OCI: `value` is the mask, `valueTwo` the expected result.
                LinuxSeccompOperator::ScmpCmpMaskedEq => (
                    ScmpCompareOp::MaskedEqual(a.value()),
                    a.value_two().unwrap_or(0),
                ),
            };
            tests.push(ScmpArgCompare::new(index, op, datum));
            indices.push(index);
        }
        indices.sort_unstable();
        let repeated = indices.windows(2).any(|w| w[0] == w[1]);
        for name in rule.names() {
            let Ok(nr) = libseccomp::ScmpSyscall::from_name(name) else {
                continue;
            };
            let added = if repeated {
                tests.iter().try_for_each(|t| {
                    ctx.add_rule_conditional(act, nr, std::slice::from_ref(t))
                        .map(drop)
                })
            } else {
                ctx.add_rule_conditional(act, nr, &tests).map(drop)
            };
            added.map_err(|e| fail(name, e))?;
        }
    }
    export(&ctx)
}

/// What crun maps each OCI action to; an errno defaults to EPERM.
fn action(a: LinuxSeccompAction, errno: Option<u32>) -> Result<ScmpAction, CompileError> {
    let errno = errno.unwrap_or(EPERM);
    Ok(match a {
        LinuxSeccompAction::ScmpActKill | LinuxSeccompAction::ScmpActKillThread => {
            ScmpAction::KillThread
        }
        LinuxSeccompAction::ScmpActKillProcess => ScmpAction::KillProcess,
        LinuxSeccompAction::ScmpActTrap => ScmpAction::Trap,
        LinuxSeccompAction::ScmpActErrno => ScmpAction::Errno(errno as i32),
        LinuxSeccompAction::ScmpActTrace => ScmpAction::Trace(errno as u16),
        LinuxSeccompAction::ScmpActLog => ScmpAction::Log,
        LinuxSeccompAction::ScmpActAllow => ScmpAction::Allow,
        LinuxSeccompAction::ScmpActNotify => {
            return Err(CompileError(
                "SCMP_ACT_NOTIFY needs a listener and cannot be precompiled".into(),
            ))
        }
    })
}

/// The filter's BPF program; libseccomp 2.5 exports only to a file
/// descriptor, so through a memfd.
fn export(ctx: &ScmpFilterContext) -> Result<Vec<u8>, CompileError> {
    use nix::sys::memfd::{memfd_create, MFdFlags};
    use std::io::{Read, Seek};
    let mut f = memfd_create(c"skiff-seccomp", MFdFlags::MFD_CLOEXEC)
        .map(std::fs::File::from)
        .map_err(|e| CompileError(format!("memfd_create: {e}")))?;
    ctx.export_bpf(&f)
        .map_err(|e| CompileError(format!("export: {e}")))?;
    let mut bpf = Vec::new();
    f.rewind()
        .and_then(|_| f.read_to_end(&mut bpf))
        .map_err(|e| CompileError(format!("reading the filter back: {e}")))?;
    if !is_program(&bpf) {
        return Err(CompileError(format!(
            "libseccomp exported {} bytes",
            bpf.len()
        )));
    }
    Ok(bpf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profile_shape() {
        let p = default_profile().unwrap();
        assert_eq!(p.default_action(), LinuxSeccompAction::ScmpActErrno);
        assert_eq!(p.default_errno_ret(), Some(EPERM));
        let rules = p.syscalls().as_ref().unwrap();
        let allowed = |name: &str| {
            rules.iter().any(|r| {
                r.action() == LinuxSeccompAction::ScmpActAllow
                    && r.args().is_none()
                    && r.names().iter().any(|n| n == name)
            })
        };
        for name in ["read", "execve", "chroot", "arch_prctl", "ptrace"] {
            assert!(allowed(name), "{name}");
        }
        for name in [
            "mount", "umount2", "unshare", "setns", "keyctl", "bpf", "reboot", "clone",
        ] {
            assert!(!allowed(name), "{name} must not be allowed unconditionally");
        }
        let mut names: Vec<&str> = ALLOWED.to_vec();
        names.sort_unstable();
        let before = names.len();
        names.dedup();
        assert_eq!(before, names.len(), "duplicate names in ALLOWED");
        let json = serde_json::to_value(&p).unwrap();
        assert_eq!(json["defaultAction"], "SCMP_ACT_ERRNO");
        assert_eq!(json["architectures"][0], "SCMP_ARCH_X86_64");
    }
}
