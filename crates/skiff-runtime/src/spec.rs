//! The OCI runtime config (`config.json`) for one container, built from the
//! image config and the user's `skiff run` flags with Docker's semantics
//! and Docker's default confinement (capabilities, seccomp, masked paths,
//! device allowlist).

use std::collections::HashSet;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{
    Capability, LinuxBuilder, LinuxCapabilitiesBuilder, LinuxCpuBuilder, LinuxDeviceCgroup,
    LinuxDeviceCgroupBuilder, LinuxDeviceType, LinuxMemoryBuilder, LinuxNamespaceBuilder,
    LinuxNamespaceType, LinuxPidsBuilder, LinuxResourcesBuilder, Mount, MountBuilder,
    PosixRlimitBuilder, PosixRlimitType, ProcessBuilder, RootBuilder, Spec, SpecBuilder,
    UserBuilder,
};

use crate::cgroups::{self, CgroupMode};
use crate::rootfs::resolve_in_root;
use crate::seccomp;

/// `PATH` when neither the image nor the user sets one (Docker's value).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// Process limit when the user sets none: a fork bomb stays contained.
pub const DEFAULT_PIDS_LIMIT: i64 = 4096;
/// `RLIMIT_NOFILE` Docker gives containers; capped to this host's hard limit.
pub const DEFAULT_NOFILE: u64 = 1_048_576;
/// CFS period; `--cpus 0.5` becomes a quota of half of it.
const CPU_PERIOD_US: u64 = 100_000;
/// The kernel rejects CFS quotas below 1 ms.
const CPU_QUOTA_MIN_US: i64 = 1_000;

/// Docker's default capability set (moby `oci/caps/defaults.go`).
pub const DEFAULT_CAPABILITIES: [Capability; 14] = [
    Capability::Chown,
    Capability::DacOverride,
    Capability::Fsetid,
    Capability::Fowner,
    Capability::Mknod,
    Capability::NetRaw,
    Capability::Setgid,
    Capability::Setuid,
    Capability::Setfcap,
    Capability::Setpcap,
    Capability::NetBindService,
    Capability::SysChroot,
    Capability::Kill,
    Capability::AuditWrite,
];

/// Paths hidden from the container (Docker/runc defaults): host details a
/// tenant has no business reading, some of them side channels.
pub const MASKED_PATHS: [&str; 12] = [
    "/proc/asound",
    "/proc/acpi",
    "/proc/interrupts",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// Kernel knobs that stay visible but read-only (Docker/runc defaults).
pub const READONLY_PATHS: [&str; 5] = [
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("image has no command; pass one")]
    NoCommand,
    #[error("executable {name:?} not found in the image (PATH={path})")]
    ExecutableNotFound { name: String, path: String },
    #[error("{name:?} in the image is not an executable file")]
    NotExecutable { name: String },
    #[error("user {0:?} not found in the image's /etc/passwd")]
    UnknownUser(String),
    #[error("group {0:?} not found in the image's /etc/group")]
    UnknownGroup(String),
    #[error("invalid user {0:?}: expected NAME, UID, NAME:GROUP or UID:GID")]
    InvalidUser(String),
    #[error("invalid environment entry {0:?}: expected KEY=VALUE")]
    InvalidEnv(String),
    #[error("working directory {0:?} must be an absolute path")]
    RelativeWorkdir(String),
    #[error("mount destination {0:?} must be an absolute path")]
    RelativeMount(String),
    #[error("cannot read {path} in the image: {source}")]
    Read { path: String, source: io::Error },
    #[error("cannot build the OCI config: {0}")]
    Build(#[from] oci_spec::OciSpecError),
}

/// Which network namespace the container gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetworkConfig {
    /// A new, empty namespace: only `lo`.
    None,
    /// The host's namespace (no isolation).
    Host,
    /// Join an existing namespace, e.g. [`crate::network::Attachment::netns_path`].
    Path(PathBuf),
}

/// A host path bind-mounted into the container (`-v SRC:DST[:ro]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindMount {
    pub source: PathBuf,
    pub destination: String,
    pub readonly: bool,
}

/// Host files bind-mounted over the container's `/etc/hosts`,
/// `/etc/hostname` and `/etc/resolv.conf` (the runtime creates the targets
/// when the image lacks them). `None` for a file the rootfs already holds
/// (`skiff run` puts all three in a layer of its own where it can).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcFiles {
    pub hosts: Option<PathBuf>,
    pub hostname: Option<PathBuf>,
    pub resolv_conf: Option<PathBuf>,
}

/// Everything `skiff run` decides about one container.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// The image's config: `Env`, `Entrypoint`, `Cmd`, `WorkingDir`, `User`.
    pub image: oci_spec::image::Config,
    /// `--entrypoint`: replaces the image's entrypoint and drops its `Cmd`;
    /// `Some(vec![])` clears the entrypoint.
    pub entrypoint: Option<Vec<String>>,
    /// Arguments after the image name; `None` or empty keeps the image's `Cmd`.
    pub cmd: Option<Vec<String>>,
    /// `-e K=V`, applied after the image's env; a later entry wins.
    pub env: Vec<String>,
    pub workdir: Option<String>,
    /// `NAME`, `UID`, `NAME:GROUP` or `UID:GID`, resolved in the image.
    pub user: Option<String>,
    pub hostname: String,
    /// Memory limit in bytes; swap is capped to the same (no swap).
    pub memory: Option<u64>,
    /// CPU limit in thousandths of a CPU.
    pub cpus_milli: Option<u64>,
    /// `None`: [`DEFAULT_PIDS_LIMIT`]; `Some(n)` with `n <= 0`: unlimited.
    pub pids_limit: Option<i64>,
    pub mounts: Vec<BindMount>,
    pub network: NetworkConfig,
    pub terminal: bool,
    /// cgroup path of the container, e.g. `/skiff/<id>`.
    pub cgroup_path: String,
    pub etc_files: Option<EtcFiles>,
}

/// Builds the OCI runtime config for `cfg` with its root at `rootfs` (the
/// mounted overlay). Reads the image's `/etc/passwd` and `/etc/group` and
/// checks that the command exists in the image, so that a typo fails here
/// with a clear message instead of inside the runtime.
pub fn build_spec(cfg: &RunConfig, rootfs: &Path) -> Result<Spec, SpecError> {
    let args = process_args(cfg)?;
    let user = resolve_user(rootfs, cfg.user.as_deref().or(cfg.image.user().as_deref()))?;
    let env = process_env(cfg, &user.home)?;
    let path_env = env
        .iter()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or(DEFAULT_PATH);
    check_executable(rootfs, &args[0], path_env)?;

    let cwd = match cfg
        .workdir
        .as_deref()
        .or(cfg.image.working_dir().as_deref())
    {
        None | Some("") => "/".to_string(),
        Some(dir) if dir.starts_with('/') => dir.to_string(),
        Some(dir) => return Err(SpecError::RelativeWorkdir(dir.to_string())),
    };

    let caps: HashSet<Capability> = DEFAULT_CAPABILITIES.into_iter().collect();
    let capabilities = LinuxCapabilitiesBuilder::default()
        .bounding(caps.clone())
        .effective(caps.clone())
        .permitted(caps)
        .inheritable(HashSet::new())
        .ambient(HashSet::new())
        .build()?;
    let nofile = nofile_limit();
    let process = ProcessBuilder::default()
        .terminal(cfg.terminal)
        .user(
            UserBuilder::default()
                .uid(user.uid)
                .gid(user.gid)
                .additional_gids(user.additional_gids)
                .build()?,
        )
        .args(args)
        .env(env)
        .cwd(cwd)
        .capabilities(capabilities)
        .rlimits(vec![PosixRlimitBuilder::default()
            .typ(PosixRlimitType::RlimitNofile)
            .soft(nofile)
            .hard(nofile)
            .build()?])
        .no_new_privileges(true)
        .build()?;

    let own_netns = cfg.network != NetworkConfig::Host;
    let mut namespaces = Vec::with_capacity(6);
    for typ in [
        LinuxNamespaceType::Pid,
        LinuxNamespaceType::Mount,
        LinuxNamespaceType::Ipc,
        LinuxNamespaceType::Uts,
    ] {
        namespaces.push(LinuxNamespaceBuilder::default().typ(typ).build()?);
    }
    match &cfg.network {
        NetworkConfig::Host => {}
        NetworkConfig::None => namespaces.push(
            LinuxNamespaceBuilder::default()
                .typ(LinuxNamespaceType::Network)
                .build()?,
        ),
        NetworkConfig::Path(path) => namespaces.push(
            LinuxNamespaceBuilder::default()
                .typ(LinuxNamespaceType::Network)
                .path(path.clone())
                .build()?,
        ),
    }
    let mode = cgroups::mode();
    // A cgroup namespace only hides anything on the unified hierarchy;
    // Docker enables it by default there and nowhere else.
    if mode == CgroupMode::V2 {
        namespaces.push(
            LinuxNamespaceBuilder::default()
                .typ(LinuxNamespaceType::Cgroup)
                .build()?,
        );
    }

    let mut linux = LinuxBuilder::default()
        .namespaces(namespaces)
        .cgroups_path(PathBuf::from(&cfg.cgroup_path))
        .resources(resources(cfg, mode)?)
        .masked_paths(MASKED_PATHS.map(String::from).to_vec())
        .readonly_paths(READONLY_PATHS.map(String::from).to_vec())
        .seccomp(seccomp::default_profile()?);
    if own_netns {
        // Docker's defaults for a private network namespace: any user may
        // bind low ports and send ICMP echo (ping without NET_RAW).
        linux = linux.sysctl(
            [
                ("net.ipv4.ip_unprivileged_port_start", "0"),
                ("net.ipv4.ping_group_range", "0 2147483647"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<std::collections::HashMap<_, _>>(),
        );
    }

    let mut spec = SpecBuilder::default()
        .version("1.0.2")
        .root(
            RootBuilder::default()
                .path(rootfs)
                .readonly(false)
                .build()?,
        )
        .process(process)
        .mounts(mounts(cfg)?)
        .linux(linux.build()?);
    if !cfg.hostname.is_empty() {
        spec = spec.hostname(cfg.hostname.clone());
    }
    Ok(spec.build()?)
}

/// Docker's rules: `--entrypoint` replaces the image's entrypoint and
/// resets its `Cmd`; arguments replace `Cmd`; the result is entrypoint ++ cmd.
fn process_args(cfg: &RunConfig) -> Result<Vec<String>, SpecError> {
    let user_cmd = cfg.cmd.as_ref().filter(|c| !c.is_empty());
    let (entrypoint, cmd) = match &cfg.entrypoint {
        Some(ep) => (ep.clone(), user_cmd.cloned().unwrap_or_default()),
        None => (
            cfg.image.entrypoint().clone().unwrap_or_default(),
            user_cmd
                .cloned()
                .or_else(|| cfg.image.cmd().clone())
                .unwrap_or_default(),
        ),
    };
    let args: Vec<String> = entrypoint.into_iter().chain(cmd).collect();
    match args.first() {
        Some(argv0) if !argv0.is_empty() => Ok(args),
        _ => Err(SpecError::NoCommand),
    }
}

/// Defaults first (`PATH`, `HOSTNAME`, `TERM` for a tty), then the image's
/// env, then the user's; a later value replaces an earlier one in place.
/// `HOME` comes from the image's passwd entry unless something set it.
fn process_env(cfg: &RunConfig, home: &str) -> Result<Vec<String>, SpecError> {
    let mut env: Vec<String> = Vec::new();
    let mut set = |entry: &str| -> Result<(), SpecError> {
        let key = match entry.split_once('=') {
            Some((k, _)) if !k.is_empty() => k,
            _ => return Err(SpecError::InvalidEnv(entry.to_string())),
        };
        match env
            .iter_mut()
            .find(|e| e.split_once('=').map(|(k, _)| k) == Some(key))
        {
            Some(existing) => *existing = entry.to_string(),
            None => env.push(entry.to_string()),
        }
        Ok(())
    };
    set(&format!("PATH={DEFAULT_PATH}"))?;
    if !cfg.hostname.is_empty() {
        set(&format!("HOSTNAME={}", cfg.hostname))?;
    }
    if cfg.terminal {
        set("TERM=xterm")?;
    }
    for entry in cfg.image.env().iter().flatten().chain(&cfg.env) {
        set(entry)?;
    }
    if !env.iter().any(|e| e.starts_with("HOME=")) {
        env.push(format!("HOME={home}"));
    }
    Ok(env)
}

fn resources(
    cfg: &RunConfig,
    mode: CgroupMode,
) -> Result<oci_spec::runtime::LinuxResources, SpecError> {
    let mut res = LinuxResourcesBuilder::default().devices(device_rules()?);
    if let Some(limit) = cfg.memory {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let mut mem = LinuxMemoryBuilder::default().limit(limit);
        // memory+swap = memory: a hog is OOM-killed instead of swapping.
        // On v1 the knob exists only with swap accounting enabled, and the
        // runtime fails on a knob it cannot write.
        if mode == CgroupMode::V2 || v1_swap_accounting() {
            mem = mem.swap(limit);
        }
        res = res.memory(mem.build()?);
    }
    if let Some(milli) = cfg.cpus_milli {
        let quota = i64::try_from(milli.saturating_mul(CPU_PERIOD_US) / 1000).unwrap_or(i64::MAX);
        res = res.cpu(
            LinuxCpuBuilder::default()
                .period(CPU_PERIOD_US)
                .quota(quota.max(CPU_QUOTA_MIN_US))
                .build()?,
        );
    }
    let pids = cfg.pids_limit.unwrap_or(DEFAULT_PIDS_LIMIT);
    if pids > 0 {
        res = res.pids(LinuxPidsBuilder::default().limit(pids).build()?);
    }
    Ok(res.build()?)
}

fn v1_swap_accounting() -> bool {
    Path::new("/sys/fs/cgroup/memory/memory.memsw.limit_in_bytes").exists()
}

/// Deny every device, then allow the ones every container gets (the
/// runtime creates those nodes itself) and mknod of any (CAP_MKNOD is
/// granted, as in Docker; opening such a node stays denied).
fn device_rules() -> Result<Vec<LinuxDeviceCgroup>, SpecError> {
    use LinuxDeviceType::{A, B, C};
    let rule = |allow: bool, typ, major: Option<i64>, minor: Option<i64>, access: &str| {
        let mut b = LinuxDeviceCgroupBuilder::default()
            .allow(allow)
            .typ(typ)
            .access(access);
        if let Some(m) = major {
            b = b.major(m);
        }
        if let Some(m) = minor {
            b = b.minor(m);
        }
        b.build()
    };
    Ok(vec![
        rule(false, A, None, None, "rwm")?,
        rule(true, C, None, None, "m")?,
        rule(true, B, None, None, "m")?,
        rule(true, C, Some(1), Some(3), "rwm")?, // null
        rule(true, C, Some(1), Some(5), "rwm")?, // zero
        rule(true, C, Some(1), Some(7), "rwm")?, // full
        rule(true, C, Some(1), Some(8), "rwm")?, // random
        rule(true, C, Some(1), Some(9), "rwm")?, // urandom
        rule(true, C, Some(5), Some(0), "rwm")?, // tty
        rule(true, C, Some(5), Some(1), "rwm")?, // console
        rule(true, C, Some(5), Some(2), "rwm")?, // ptmx
        rule(true, C, Some(136), None, "rwm")?,  // pts/*
    ])
}

fn mounts(cfg: &RunConfig) -> Result<Vec<Mount>, SpecError> {
    let m = |dest: &str, typ: &str, source: &Path, opts: &[&str]| {
        MountBuilder::default()
            .destination(dest)
            .typ(typ)
            .source(source)
            .options(opts.iter().map(|o| o.to_string()).collect::<Vec<_>>())
            .build()
    };
    let p = Path::new;
    let mut mounts = vec![
        m("/proc", "proc", p("proc"), &["nosuid", "noexec", "nodev"])?,
        m(
            "/dev",
            "tmpfs",
            p("tmpfs"),
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        )?,
        m(
            "/dev/pts",
            "devpts",
            p("devpts"),
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
                "gid=5",
            ],
        )?,
        m(
            "/dev/shm",
            "tmpfs",
            p("shm"),
            &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        )?,
        m(
            "/dev/mqueue",
            "mqueue",
            p("mqueue"),
            &["nosuid", "noexec", "nodev"],
        )?,
        m(
            "/sys",
            "sysfs",
            p("sysfs"),
            &["nosuid", "noexec", "nodev", "ro"],
        )?,
        m(
            "/sys/fs/cgroup",
            "cgroup",
            p("cgroup"),
            &["nosuid", "noexec", "nodev", "relatime", "ro"],
        )?,
    ];
    if let Some(etc) = &cfg.etc_files {
        for (dest, src) in [
            ("/etc/hosts", etc.hosts.as_ref()),
            ("/etc/hostname", etc.hostname.as_ref()),
            ("/etc/resolv.conf", etc.resolv_conf.as_ref()),
        ] {
            if let Some(src) = src {
                mounts.push(m(dest, "bind", src, &["rbind", "rprivate"])?);
            }
        }
    }
    for bind in &cfg.mounts {
        if !bind.destination.starts_with('/') {
            return Err(SpecError::RelativeMount(bind.destination.clone()));
        }
        let opts: &[&str] = if bind.readonly {
            &["rbind", "rprivate", "ro"]
        } else {
            &["rbind", "rprivate"]
        };
        mounts.push(m(&bind.destination, "bind", &bind.source, opts)?);
    }
    Ok(mounts)
}

/// [`DEFAULT_NOFILE`], lowered to what this process may grant: a runtime
/// without CAP_SYS_RESOURCE cannot raise the hard limit.
fn nofile_limit() -> u64 {
    use nix::sys::resource::{getrlimit, Resource};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((_, hard)) => DEFAULT_NOFILE.min(hard),
        Err(_) => 1024,
    }
}

/// Checks that `argv0` names an executable regular file inside `rootfs`:
/// an absolute path as is, a bare name through `path_env` (like execvp).
/// Symlinks are resolved relative to `rootfs` and never leave it. A
/// relative path with a slash depends on the working directory at exec
/// time and is left to the runtime.
pub fn check_executable(rootfs: &Path, argv0: &str, path_env: &str) -> Result<(), SpecError> {
    let is_exec = |in_root: &str| -> Result<Option<bool>, SpecError> {
        let host = resolve_in_root(rootfs, Path::new(in_root)).map_err(|e| read_err(in_root, e))?;
        match std::fs::metadata(&host) {
            Ok(md) => Ok(Some(md.is_file() && md.permissions().mode() & 0o111 != 0)),
            Err(e) if is_missing(&e) => Ok(None),
            Err(e) => Err(read_err(in_root, e)),
        }
    };
    if argv0.starts_with('/') {
        return match is_exec(argv0)? {
            Some(true) => Ok(()),
            Some(false) => Err(SpecError::NotExecutable { name: argv0.into() }),
            None => Err(SpecError::ExecutableNotFound {
                name: argv0.into(),
                path: path_env.into(),
            }),
        };
    }
    if argv0.contains('/') {
        return Ok(());
    }
    let mut found_non_exec = false;
    for dir in path_env.split(':').filter(|d| d.starts_with('/')) {
        match is_exec(&format!("{}/{argv0}", dir.trim_end_matches('/')))? {
            Some(true) => return Ok(()),
            Some(false) => found_non_exec = true,
            None => {}
        }
    }
    Err(if found_non_exec {
        SpecError::NotExecutable { name: argv0.into() }
    } else {
        SpecError::ExecutableNotFound {
            name: argv0.into(),
            path: path_env.into(),
        }
    })
}

fn is_missing(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::ENOTDIR))
}

fn read_err(path: &str, source: io::Error) -> SpecError {
    SpecError::Read {
        path: path.to_string(),
        source,
    }
}

/// The user the container's process runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ExecUser {
    uid: u32,
    gid: u32,
    additional_gids: Vec<u32>,
    home: String,
}

/// Resolves `NAME`, `UID`, `NAME:GROUP` or `UID:GID` against the image's
/// passwd and group files, as runc does: a number not in passwd is fine
/// (gid 0, home /), a name must exist, and supplementary groups come from
/// group membership only when no group was given.
fn resolve_user(rootfs: &Path, spec: Option<&str>) -> Result<ExecUser, SpecError> {
    let spec = spec.unwrap_or("").trim();
    let (user_part, group_part) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    if group_part == Some("") || (user_part.is_empty() && group_part.is_some()) {
        return Err(SpecError::InvalidUser(spec.to_string()));
    }
    let passwd = read_image_file(rootfs, "/etc/passwd")?;
    let entries = passwd.lines().filter_map(parse_passwd_line);
    let mut user = ExecUser {
        uid: 0,
        gid: 0,
        additional_gids: Vec::new(),
        home: "/".to_string(),
    };
    let mut name = None;
    let user_part = if user_part.is_empty() { "0" } else { user_part };
    if let Ok(uid) = user_part.parse::<u32>() {
        user.uid = uid;
        if let Some(e) = entries.clone().find(|e| e.uid == uid) {
            (user.gid, user.home, name) = (e.gid, e.home.to_string(), Some(e.name));
        }
    } else if user_part.bytes().all(|b| b.is_ascii_digit() || b == b'-') {
        return Err(SpecError::InvalidUser(spec.to_string()));
    } else {
        let e = entries
            .clone()
            .find(|e| e.name == user_part)
            .ok_or_else(|| SpecError::UnknownUser(user_part.to_string()))?;
        (user.uid, user.gid, user.home, name) = (e.uid, e.gid, e.home.to_string(), Some(e.name));
    }

    let group_file = read_image_file(rootfs, "/etc/group")?;
    let groups = group_file.lines().filter_map(parse_group_line);
    match group_part {
        Some(g) => {
            user.gid = match g.parse::<u32>() {
                Ok(gid) => gid,
                Err(_) => groups
                    .clone()
                    .find(|gr| gr.name == g)
                    .map(|gr| gr.gid)
                    .ok_or_else(|| SpecError::UnknownGroup(g.to_string()))?,
            }
        }
        None => {
            if let Some(name) = name {
                for gr in groups.filter(|gr| gr.members.contains(&name)) {
                    if gr.gid != user.gid && !user.additional_gids.contains(&gr.gid) {
                        user.additional_gids.push(gr.gid);
                    }
                }
            }
        }
    }
    if user.home.is_empty() {
        user.home = "/".to_string();
    }
    // (uid_t)-1 means "leave unchanged" to setresuid: the process would
    // stay root while looking like a named user.
    if user.uid == u32::MAX || user.gid == u32::MAX || user.additional_gids.contains(&u32::MAX) {
        return Err(SpecError::InvalidUser(spec.to_string()));
    }
    Ok(user)
}

/// The owner `COPY --chown=USER[:GROUP]` gives files, with names looked up
/// in the image at `rootfs`. Docker's rule: without a group the gid is the
/// same number as the uid (not the user's primary group).
pub fn chown_ids(rootfs: &Path, spec: &str) -> Result<(u32, u32), SpecError> {
    let (user_part, group_part) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    if user_part.is_empty() || group_part == Some("") {
        return Err(SpecError::InvalidUser(spec.to_string()));
    }
    let uid = match user_part.parse::<u32>() {
        Ok(uid) => uid,
        Err(_) => {
            let passwd = read_image_file(rootfs, "/etc/passwd")?;
            let found = passwd
                .lines()
                .filter_map(parse_passwd_line)
                .find(|e| e.name == user_part)
                .map(|e| e.uid);
            found.ok_or_else(|| SpecError::UnknownUser(user_part.to_string()))?
        }
    };
    let gid = match group_part {
        None => uid,
        Some(g) => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => {
                let group = read_image_file(rootfs, "/etc/group")?;
                let found = group
                    .lines()
                    .filter_map(parse_group_line)
                    .find(|e| e.name == g)
                    .map(|e| e.gid);
                found.ok_or_else(|| SpecError::UnknownGroup(g.to_string()))?
            }
        },
    };
    Ok((uid, gid))
}

/// Largest /etc/passwd or /etc/group we read from an image.
const MAX_IMAGE_FILE: u64 = 4 << 20;

/// A file of the image, read through [`resolve_in_root`]; missing is empty.
/// The image is untrusted: a FIFO would block us forever and a huge sparse
/// file would exhaust memory, so only a regular file is read, and only its
/// first 4 MiB.
fn read_image_file(rootfs: &Path, in_root: &str) -> Result<String, SpecError> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let host = resolve_in_root(rootfs, Path::new(in_root)).map_err(|e| read_err(in_root, e))?;
    let file = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW)
        .open(&host)
    {
        Ok(f) => f,
        Err(e) if is_missing(&e) => return Ok(String::new()),
        Err(e) => return Err(read_err(in_root, e)),
    };
    let meta = file.metadata().map_err(|e| read_err(in_root, e))?;
    if !meta.is_file() {
        return Err(read_err(
            in_root,
            io::Error::new(io::ErrorKind::InvalidData, "not a regular file"),
        ));
    }
    let mut bytes = Vec::new();
    file.take(MAX_IMAGE_FILE)
        .read_to_end(&mut bytes)
        .map_err(|e| read_err(in_root, e))?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

#[derive(Debug, Clone, Copy)]
struct PasswdEntry<'a> {
    name: &'a str,
    uid: u32,
    gid: u32,
    home: &'a str,
}

fn parse_passwd_line(line: &str) -> Option<PasswdEntry<'_>> {
    let f: Vec<&str> = line.split(':').collect();
    if f.len() < 4 || line.starts_with('#') {
        return None;
    }
    Some(PasswdEntry {
        name: f[0],
        uid: f[2].parse().ok()?,
        gid: f[3].parse().ok()?,
        home: f.get(5).copied().unwrap_or(""),
    })
}

#[derive(Debug, Clone)]
struct GroupEntry<'a> {
    name: &'a str,
    gid: u32,
    members: Vec<&'a str>,
}

fn parse_group_line(line: &str) -> Option<GroupEntry<'_>> {
    let f: Vec<&str> = line.split(':').collect();
    if f.len() < 3 || line.starts_with('#') {
        return None;
    }
    Some(GroupEntry {
        name: f[0],
        gid: f[2].parse().ok()?,
        members: f
            .get(3)
            .map(|m| {
                m.split(',')
                    .map(str::trim)
                    .filter(|m| !m.is_empty())
                    .collect()
            })
            .unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::image::ConfigBuilder;
    use std::os::unix::fs::symlink;

    fn image(ep: Option<&[&str]>, cmd: Option<&[&str]>) -> oci_spec::image::Config {
        let mut c = ConfigBuilder::default();
        if let Some(ep) = ep {
            c = c.entrypoint(ep.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        }
        if let Some(cmd) = cmd {
            c = c.cmd(cmd.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        }
        c.env(vec![
            "PATH=/bin:/usr/bin".to_string(),
            "A=image".to_string(),
        ])
        .build()
        .unwrap()
    }

    fn cfg(image: oci_spec::image::Config) -> RunConfig {
        RunConfig {
            image,
            entrypoint: None,
            cmd: None,
            env: vec![],
            workdir: None,
            user: None,
            hostname: "c1".into(),
            memory: None,
            cpus_milli: None,
            pids_limit: None,
            mounts: vec![],
            network: NetworkConfig::None,
            terminal: false,
            cgroup_path: "/skiff/c1".into(),
            etc_files: None,
        }
    }

    fn v(s: &[&str]) -> Vec<String> {
        s.iter().map(|s| s.to_string()).collect()
    }

    /// A fake image root: executables, passwd, group, and a symlink that
    /// points outside the root (it must resolve inside it).
    fn fake_rootfs() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        for d in ["bin", "usr/bin", "etc", "home/app"] {
            std::fs::create_dir_all(r.join(d)).unwrap();
        }
        for exe in ["bin/sh", "bin/app", "usr/bin/env"] {
            std::fs::write(r.join(exe), "#!").unwrap();
            std::fs::set_permissions(r.join(exe), std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        std::fs::write(r.join("bin/data"), "x").unwrap();
        symlink("/bin/app", r.join("usr/bin/app-link")).unwrap();
        // Absolute link to the *host's* /etc/shadow-ish path: must stay in root.
        symlink("/../../../../etc/hostname", r.join("bin/escape")).unwrap();
        std::fs::write(
            r.join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\n# comment\napp:x:1000:1000::/home/app:/bin/sh\nnobody:x:65534:65534::/nonexistent:/bin/false\n",
        )
        .unwrap();
        std::fs::write(
            r.join("etc/group"),
            "root:x:0:\napp:x:1000:\nstaff:x:50:app,other\naudio:x:29:app\nnogroup:x:65534:\n",
        )
        .unwrap();
        dir
    }

    fn args_of(c: &RunConfig) -> Result<Vec<String>, SpecError> {
        process_args(c)
    }

    #[test]
    fn entrypoint_and_cmd_follow_docker() {
        let img = image(Some(&["/bin/app"]), Some(&["--serve"]));
        let mut c = cfg(img.clone());
        assert_eq!(args_of(&c).unwrap(), v(&["/bin/app", "--serve"]));
        c.cmd = Some(v(&["--once"]));
        assert_eq!(args_of(&c).unwrap(), v(&["/bin/app", "--once"]));
        // --entrypoint resets the image's Cmd …
        c.cmd = None;
        c.entrypoint = Some(v(&["sh"]));
        assert_eq!(args_of(&c).unwrap(), v(&["sh"]));
        // … unless arguments are given.
        c.cmd = Some(v(&["-c", "true"]));
        assert_eq!(args_of(&c).unwrap(), v(&["sh", "-c", "true"]));
        // An empty --entrypoint clears it: the arguments are the command.
        c.entrypoint = Some(vec![]);
        c.cmd = Some(v(&["env"]));
        assert_eq!(args_of(&c).unwrap(), v(&["env"]));
        // Empty arguments keep the image's Cmd.
        let mut c = cfg(image(None, Some(&["sh"])));
        c.cmd = Some(vec![]);
        assert_eq!(args_of(&c).unwrap(), v(&["sh"]));
    }

    #[test]
    fn no_command_is_an_error() {
        let c = cfg(image(None, None));
        let e = args_of(&c).unwrap_err();
        assert_eq!(e.to_string(), "image has no command; pass one");
        let mut c = cfg(image(Some(&["/bin/app"]), None));
        c.entrypoint = Some(vec![]);
        assert!(matches!(args_of(&c), Err(SpecError::NoCommand)));
    }

    #[test]
    fn env_overrides_in_place_and_defaults() {
        let mut c = cfg(image(None, Some(&["sh"])));
        c.env = v(&["A=user", "B=1", "B=2"]);
        let env = process_env(&c, "/root").unwrap();
        assert_eq!(
            env,
            v(&[
                "PATH=/bin:/usr/bin",
                "HOSTNAME=c1",
                "A=user",
                "B=2",
                "HOME=/root"
            ])
        );
        c.env = v(&["HOME=/x", "HOSTNAME=h"]);
        let env = process_env(&c, "/root").unwrap();
        assert!(env.contains(&"HOME=/x".to_string()) && env.contains(&"HOSTNAME=h".to_string()));
        assert_eq!(env.iter().filter(|e| e.starts_with("HOME=")).count(), 1);
        c.env = v(&["NOVALUE"]);
        assert!(matches!(
            process_env(&c, "/"),
            Err(SpecError::InvalidEnv(_))
        ));
        // No PATH anywhere: Docker's default.
        let c = cfg(ConfigBuilder::default().build().unwrap());
        assert_eq!(
            process_env(&c, "/").unwrap()[0],
            format!("PATH={DEFAULT_PATH}")
        );
    }

    #[test]
    fn users_resolve_in_the_image() {
        let root = fake_rootfs();
        let r = root.path();
        let u = resolve_user(r, None).unwrap();
        assert_eq!((u.uid, u.gid, u.home.as_str()), (0, 0, "/root"));
        let u = resolve_user(r, Some("app")).unwrap();
        assert_eq!((u.uid, u.gid, u.home.as_str()), (1000, 1000, "/home/app"));
        assert_eq!(u.additional_gids, vec![50, 29]);
        let u = resolve_user(r, Some("1000")).unwrap();
        assert_eq!((u.uid, u.gid, u.additional_gids.len()), (1000, 1000, 2));
        // Explicit group: no supplementary groups (runc's rule).
        let u = resolve_user(r, Some("app:staff")).unwrap();
        assert_eq!((u.uid, u.gid, u.additional_gids.len()), (1000, 50, 0));
        let u = resolve_user(r, Some("4242:4343")).unwrap();
        assert_eq!((u.uid, u.gid, u.home.as_str()), (4242, 4343, "/"));
        let u = resolve_user(r, Some("4242")).unwrap();
        assert_eq!((u.uid, u.gid), (4242, 0));
        let e = resolve_user(r, Some("ghost")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "user \"ghost\" not found in the image's /etc/passwd"
        );
        let e = resolve_user(r, Some("app:ghosts")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "group \"ghosts\" not found in the image's /etc/group"
        );
        assert!(matches!(
            resolve_user(r, Some("app:")),
            Err(SpecError::InvalidUser(_))
        ));
        assert!(matches!(
            resolve_user(r, Some("-1")),
            Err(SpecError::InvalidUser(_))
        ));
        // No passwd at all: numbers still work, names don't.
        let empty = tempfile::tempdir().unwrap();
        assert_eq!(resolve_user(empty.path(), Some("7:8")).unwrap().gid, 8);
        assert!(resolve_user(empty.path(), Some("app")).is_err());
    }

    #[test]
    fn passwd_symlinked_out_of_the_root_stays_inside() {
        let root = fake_rootfs();
        let r = root.path();
        std::fs::rename(r.join("etc/passwd"), r.join("etc/passwd.real")).unwrap();
        // An absolute link must resolve against the image root, not the host.
        symlink("/etc/passwd.real", r.join("etc/passwd")).unwrap();
        assert_eq!(resolve_user(r, Some("app")).unwrap().uid, 1000);
        std::fs::remove_file(r.join("etc/passwd")).unwrap();
        symlink("../../../../../../etc/passwd", r.join("etc/passwd")).unwrap();
        // Resolves to <root>/etc/passwd itself → a loop, never the host's file.
        assert!(resolve_user(r, Some("root")).is_err());
    }

    #[test]
    fn executables_are_checked_inside_the_root() {
        let root = fake_rootfs();
        let r = root.path();
        check_executable(r, "sh", "/usr/bin:/bin").unwrap();
        check_executable(r, "/bin/app", "").unwrap();
        check_executable(r, "app-link", "/usr/bin").unwrap();
        check_executable(r, "./relative/is/left/to/the/runtime", "/bin").unwrap();
        let e = check_executable(r, "foo", "/usr/bin:/bin").unwrap_err();
        assert_eq!(
            e.to_string(),
            "executable \"foo\" not found in the image (PATH=/usr/bin:/bin)"
        );
        assert!(matches!(
            check_executable(r, "data", "/bin"),
            Err(SpecError::NotExecutable { .. })
        ));
        assert!(matches!(
            check_executable(r, "/bin", "/bin"),
            Err(SpecError::NotExecutable { .. })
        ));
        // The host has /etc/hostname; the image does not.
        assert!(matches!(
            check_executable(r, "/bin/escape", ""),
            Err(SpecError::ExecutableNotFound { .. })
        ));
    }

    fn built(c: &RunConfig) -> Spec {
        let root = fake_rootfs();
        build_spec(c, root.path()).unwrap()
    }

    #[test]
    fn spec_confines_like_docker() {
        let mut c = cfg(image(None, Some(&["sh"])));
        c.user = Some("app".into());
        c.workdir = Some("/home/app".into());
        let spec = built(&c);
        let p = spec.process().as_ref().unwrap();
        assert_eq!(p.cwd(), Path::new("/home/app"));
        assert_eq!(p.user().uid(), 1000);
        assert_eq!(p.no_new_privileges(), Some(true));
        let caps = p.capabilities().as_ref().unwrap();
        let want: HashSet<_> = DEFAULT_CAPABILITIES.into_iter().collect();
        assert_eq!(caps.bounding().as_ref(), Some(&want));
        assert_eq!(caps.effective().as_ref(), Some(&want));
        assert_eq!(caps.permitted().as_ref(), Some(&want));
        assert!(caps.inheritable().as_ref().unwrap().is_empty());
        assert!(caps.ambient().as_ref().unwrap().is_empty());
        assert!(!want.contains(&Capability::SysAdmin));
        let nofile = p.rlimits().as_ref().unwrap()[0];
        assert!(nofile.hard() <= DEFAULT_NOFILE && nofile.hard() == nofile.soft());

        let linux = spec.linux().as_ref().unwrap();
        assert_eq!(
            linux.cgroups_path().as_deref(),
            Some(Path::new("/skiff/c1"))
        );
        let ns: Vec<_> = linux
            .namespaces()
            .as_ref()
            .unwrap()
            .iter()
            .map(|n| n.typ())
            .collect();
        for t in [
            LinuxNamespaceType::Pid,
            LinuxNamespaceType::Mount,
            LinuxNamespaceType::Ipc,
            LinuxNamespaceType::Uts,
            LinuxNamespaceType::Network,
        ] {
            assert!(ns.contains(&t), "{t:?}");
        }
        assert!(linux
            .masked_paths()
            .as_ref()
            .unwrap()
            .contains(&"/proc/kcore".to_string()));
        assert!(linux
            .readonly_paths()
            .as_ref()
            .unwrap()
            .contains(&"/proc/sys".to_string()));
        assert!(linux.seccomp().is_some());
        let devices = linux
            .resources()
            .as_ref()
            .unwrap()
            .devices()
            .as_ref()
            .unwrap();
        assert!(!devices[0].allow() && devices[0].typ() == Some(LinuxDeviceType::A));
        assert_eq!(
            linux.resources().as_ref().unwrap().pids().unwrap().limit(),
            DEFAULT_PIDS_LIMIT
        );
        let dests: Vec<_> = spec
            .mounts()
            .as_ref()
            .unwrap()
            .iter()
            .map(|m| m.destination().to_string_lossy().into_owned())
            .collect();
        for d in [
            "/proc",
            "/dev",
            "/dev/pts",
            "/dev/shm",
            "/dev/mqueue",
            "/sys",
            "/sys/fs/cgroup",
        ] {
            assert!(dests.contains(&d.to_string()), "{d}");
        }
    }

    #[test]
    fn resources_and_network_modes() {
        let mut c = cfg(image(None, Some(&["sh"])));
        c.memory = Some(32 << 20);
        c.cpus_milli = Some(500);
        c.pids_limit = Some(0);
        c.network = NetworkConfig::Path("/run/netns/x".into());
        c.mounts = vec![BindMount {
            source: "/srv/data".into(),
            destination: "/data".into(),
            readonly: true,
        }];
        c.etc_files = Some(EtcFiles {
            hosts: Some("/h".into()),
            hostname: Some("/hn".into()),
            resolv_conf: None,
        });
        let spec = built(&c);
        let linux = spec.linux().as_ref().unwrap();
        let res = linux.resources().as_ref().unwrap();
        assert_eq!(res.memory().unwrap().limit(), Some(32 << 20));
        let cpu = res.cpu().as_ref().unwrap();
        assert_eq!((cpu.quota(), cpu.period()), (Some(50_000), Some(100_000)));
        assert!(res.pids().is_none());
        let net = linux
            .namespaces()
            .as_ref()
            .unwrap()
            .iter()
            .find(|n| n.typ() == LinuxNamespaceType::Network)
            .unwrap();
        assert_eq!(net.path().as_deref(), Some(Path::new("/run/netns/x")));
        assert!(linux.sysctl().is_some());
        let mounts = spec.mounts().as_ref().unwrap();
        let data = mounts
            .iter()
            .find(|m| m.destination() == Path::new("/data"))
            .unwrap();
        assert!(data.options().as_ref().unwrap().contains(&"ro".to_string()));
        // Only the /etc files given are bind-mounted.
        let etc: Vec<_> = mounts
            .iter()
            .filter(|m| m.destination().starts_with("/etc"))
            .map(|m| m.destination().to_str().unwrap())
            .collect();
        assert_eq!(etc, ["/etc/hosts", "/etc/hostname"]);

        c.network = NetworkConfig::Host;
        c.cpus_milli = Some(1);
        let spec = built(&c);
        let linux = spec.linux().as_ref().unwrap();
        assert!(!linux
            .namespaces()
            .as_ref()
            .unwrap()
            .iter()
            .any(|n| n.typ() == LinuxNamespaceType::Network));
        assert!(linux.sysctl().is_none());
        let cpu = linux.resources().as_ref().unwrap().cpu().clone().unwrap();
        assert_eq!(cpu.quota(), Some(CPU_QUOTA_MIN_US));
    }

    #[test]
    fn build_spec_reports_bad_input() {
        let root = fake_rootfs();
        let mut c = cfg(image(None, Some(&["nosuchcmd"])));
        let e = build_spec(&c, root.path()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "executable \"nosuchcmd\" not found in the image (PATH=/bin:/usr/bin)"
        );
        c.cmd = Some(v(&["sh"]));
        c.workdir = Some("relative".into());
        assert!(matches!(
            build_spec(&c, root.path()),
            Err(SpecError::RelativeWorkdir(_))
        ));
    }
}
