//! Where things live under `$SKIFF_ROOT`, and lazily opened handles to them.
//!
//! ```text
//! $SKIFF_ROOT/
//!   images/            content store (an OCI image layout + unpacked layers)
//!   containers/<id>/   what a container writes: upper, work (its overlay's
//!                      writable layer), container.log; hosts,
//!                      hostname and resolv.conf under an image whose
//!                      /etc is not plain
//!   trash/<id>/        what is left of a removed container that wrote
//!                      nothing (empty upper and work directories), until
//!                      the next container start takes it as its own
//!                      directory or removes it (see trash.rs)
//!   logs/<service>/    service instances' output, which outlives them:
//!                      <instance>.log (and .log.1, rotated)
//!   state.db           SQLite: containers, services, revisions, traffic
//!   skiff.sock         the daemon's control API (root only)
//!   control.token      the bearer token of the control API on TCP (serve --control)
//!   auth.json          registry credentials (Docker's config.json format)
//! /run/skiff/<hash of $SKIFF_ROOT>/
//!   containers/<id>/   the bundle: config.json, rootfs (the overlay's mount
//!                      point, unmounted once the container exists: see
//!                      container.rs's detach_rootfs), etc-layer (its top
//!                      lower layer: /etc with hostname, resolv.conf and
//!                      hosts), pid, runtime.log
//!   netns/<id>         the container's network namespace (a bind mount)
//!   runtime/<name>/    the OCI runtime's own state (--root)
//! /run/skiff/ipam/       address leases on skiff0, shared by all roots
//! /run/skiff/cgroup-hierarchies.<mount ns>, cgroup2-favordynmods (and a
//!                      .lock): what the host's cgroup mounts are, kept
//!                      for the boot (see skiff-runtime's cgroups.rs)
//! /run/skiff/runtimes/<key>/<runtime>
//!                      a read-only bind mount of the runtime's binary,
//!                      which it runs from (see skiff-runtime's oci.rs)
//! ```
//!
//! What only lives as long as the kernel does (namespaces, the runtime's
//! view of running containers, the bundle it runs from) is kept on tmpfs
//! (Skiff mounts one on /run/skiff where /run is not one: see
//! skiff-runtime's run_root.rs), keyed by the root, so a reboot cannot
//! leave stale entries behind and two roots never meet. It is also
//! faster: on ext4, creating files where many were just deleted makes
//! the inode allocator scan for recently deleted inodes, which cost `crun
//! run` several milliseconds per container here, and every file made and
//! removed is a journal write (a bundle on tmpfs took 1-2 ms off `run
//! --rm` while the disk was busy).

use std::cell::{OnceCell, RefCell};
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;

use anyhow::{Context as _, Result};
use skiff_core::ServiceName;
use skiff_image::store::Store;
use skiff_state::{State, StateError};

/// Creates `dir` (and its parents) private to its owner, or makes it so.
fn private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    if std::fs::metadata(dir)?.permissions().mode() & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

pub struct Context {
    pub root: PathBuf,
    /// The daemon the CLI talks to (`--host`): `tcp://HOST:PORT`, or none
    /// for the root's `skiff.sock`.
    pub host: Option<String>,
    store: OnceCell<Store>,
    state: OnceCell<State>,
    /// The state database being opened ahead (see [`Self::open_state_ahead`]).
    opening: RefCell<Option<JoinHandle<Result<State, StateError>>>>,
    run_dir: OnceCell<PathBuf>,
}

/// A database still being opened is waited for: a process that exits
/// meanwhile (an early error) would cut a first open's setup short.
impl Drop for Context {
    fn drop(&mut self) {
        if let Some(opening) = self.opening.get_mut().take() {
            let _ = opening.join();
        }
    }
}

impl Context {
    pub fn new(root: PathBuf) -> Context {
        Context {
            root,
            host: None,
            store: OnceCell::new(),
            state: OnceCell::new(),
            opening: RefCell::new(None),
            run_dir: OnceCell::new(),
        }
    }

    /// Creates the data directory, private to its owner: image layers and
    /// container upper dirs hold files the images own, setuid-root ones
    /// included, which no other local user may reach (CVE-2021-41091).
    fn ensure_root(&self) -> Result<()> {
        private_dir(&self.root).with_context(|| {
            format!(
                "cannot create the data directory {} (set SKIFF_ROOT or run as root)",
                self.root.display()
            )
        })
    }

    pub fn store(&self) -> Result<&Store> {
        if let Some(s) = self.store.get() {
            return Ok(s);
        }
        self.ensure_root()?;
        let s = Store::open(self.root.join("images"))?;
        Ok(self.store.get_or_init(|| s))
    }

    /// Starts opening the state database on a thread of its own, for
    /// [`Self::state`] to take. Opening it reads it and, unless another
    /// process has it open, rebuilds the index of its write-ahead log
    /// (0.3-0.5 ms here, part of it waiting for the disk), which `skiff
    /// run` does meanwhile instead of before its first write: -0.29 ms [-0.53, -0.05] and -0.37
    /// [-0.75, -0.08] of `skiff run --rm IMG true` (bench/ab-start, 400
    /// runs a side, both orders). A failure is left for `state` to report.
    pub fn open_state_ahead(&self) {
        if self.state.get().is_some() || self.opening.borrow().is_some() {
            return;
        }
        if self.ensure_root().is_err() {
            return;
        }
        let path = self.root.join("state.db");
        if let Ok(opening) = std::thread::Builder::new().spawn(move || State::open(&path)) {
            *self.opening.borrow_mut() = Some(opening);
        }
    }

    pub fn state(&self) -> Result<&State> {
        if let Some(s) = self.state.get() {
            return Ok(s);
        }
        // A thread that panicked is as if there was none: opened here.
        if let Some(Ok(opened)) = self.opening.borrow_mut().take().map(JoinHandle::join) {
            let s = opened?;
            return Ok(self.state.get_or_init(|| s));
        }
        self.ensure_root()?;
        let s = State::open(&self.root.join("state.db"))?;
        Ok(self.state.get_or_init(|| s))
    }

    /// What container `id` writes: its overlay's upper and work
    /// directories, the /etc files it may write to, and its log.
    pub fn container_dir(&self, id: &str) -> PathBuf {
        self.root.join("containers").join(id)
    }

    /// Where a removed container's empty directories wait (see `trash`).
    pub fn trash_dir(&self) -> PathBuf {
        self.root.join("trash")
    }

    /// The OCI bundle container `id` runs from (see the module docs).
    pub fn bundle_dir(&self, id: &str) -> PathBuf {
        self.bundles_dir().join(id)
    }

    fn bundles_dir(&self) -> PathBuf {
        self.run_dir().join("containers")
    }

    /// Creates the directory of bundles, private to root as the data
    /// directory is: a bundle holds the container's environment
    /// (config.json) and its rootfs mount point, whose setuid files no
    /// other local user may reach.
    pub fn ensure_bundles_dir(&self) -> Result<()> {
        let dir = self.bundles_dir();
        private_dir(&dir).with_context(|| format!("cannot create {}", dir.display()))
    }

    /// Where a service's instances log (see `logs`).
    pub fn service_logs_dir(&self, service: &ServiceName) -> PathBuf {
        self.root.join("logs").join(service.as_str())
    }

    /// `/run/skiff/<12 hex of sha256(canonical root)>`. Worked out once
    /// the root exists (a path through a symlink canonicalizes only then),
    /// and kept: every path of a container's start is under it.
    pub fn run_dir(&self) -> PathBuf {
        use std::os::unix::ffi::OsStrExt;
        if let Some(dir) = self.run_dir.get() {
            return dir.clone();
        }
        let (root, exists) = match std::fs::canonicalize(&self.root) {
            Ok(root) => (root, true),
            Err(_) => (self.root.clone(), false),
        };
        let key = skiff_core::Digest::of(root.as_os_str().as_bytes());
        skiff_runtime::run_root::ensure();
        let dir = Path::new(skiff_runtime::run_root::RUN_ROOT).join(key.short());
        if exists {
            let _ = self.run_dir.set(dir.clone());
        }
        dir
    }

    pub fn netns_dir(&self) -> PathBuf {
        self.run_dir().join("netns")
    }

    pub fn runtime_state_dir(&self, runtime: &str) -> PathBuf {
        // A path-selected runtime gets a directory named after its file.
        let name = Path::new(runtime)
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("runtime");
        self.run_dir().join("runtime").join(name)
    }
}

/// Root is required for namespaces, overlay mounts and cgroups: say so once, clearly.
pub fn require_root(what: &str) -> Result<()> {
    if nix::unistd::geteuid().is_root() {
        Ok(())
    } else {
        anyhow::bail!(
            "{what} needs root (namespaces, overlayfs, cgroups): run it as root, e.g. with sudo"
        )
    }
}
