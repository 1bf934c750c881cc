//! Skiff's container runtime: OCI bundles, the OCI runtime driver (crun by
//! default), overlay root filesystems, cgroups, network namespaces.
//!
//! Everything here is synchronous and talks to the kernel or to the OCI
//! runtime binary directly; the daemon calls it from blocking threads.
//! Root is required for all but [`spec`] and [`seccomp`].
//!
//! A container's life, as the caller drives it:
//!
//! 1. [`cgroups::prepare_host`] once per process (makes hybrid hosts usable by crun);
//! 2. [`rootfs::mount_overlay`] the image layers onto `<dir>/rootfs`;
//! 3. [`network::Network::setup`] for a private network namespace on `skiff0`;
//! 4. [`spec::build_spec`], then [`oci::OciRuntime::write_config`] into `<dir>`;
//! 5. [`oci::OciRuntime::run_command`], wait (it exits with the container's status);
//! 6. [`oci::OciRuntime::delete`], [`network::Network::teardown`],
//!    [`rootfs::unmount`], [`cgroups::remove_cgroup`].

pub mod cgroups;
pub mod network;
pub mod oci;
pub mod rootfs;
pub mod run_root;
pub mod seccomp;
pub mod spec;

mod netlink;

pub use cgroups::{CgroupError, CgroupMode};
pub use network::{Attachment, Namespace, NamespaceMaker, Network, NetworkError};
pub use oci::{ContainerState, ContainerStatus, OciError, OciRuntime};
pub use rootfs::RootfsError;
pub use spec::{
    build_spec, check_executable, BindMount, EtcFiles, NetworkConfig, RunConfig, SpecError,
};

/// Any error of this crate; each variant's message is one line that names
/// what failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error(transparent)]
    Oci(#[from] OciError),
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    #[error(transparent)]
    Rootfs(#[from] RootfsError),
    #[error(transparent)]
    Network(#[from] NetworkError),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Writes `data` to `file` (making its directory) whole or not at all: a
/// reader never sees half of it, also when threads of one process write
/// the same file at once. Written aside, then renamed over it.
pub(crate) fn write_whole(file: &std::path::Path, data: &[u8]) -> std::io::Result<()> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let dir = file.parent().unwrap_or(std::path::Path::new("."));
    std::fs::create_dir_all(dir)?;
    let n = N.fetch_add(1, Ordering::Relaxed);
    let tmp = dir.join(format!(".{}.{n}.tmp", std::process::id()));
    std::fs::write(&tmp, data)
        .and_then(|()| std::fs::rename(&tmp, file))
        .inspect_err(|_| {
            let _ = std::fs::remove_file(&tmp);
        })
}

/// Takes an exclusive flock on `file`, waiting for it; it is released when
/// the file is closed.
pub(crate) fn lock_exclusive(file: &std::fs::File) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: flock on a descriptor the caller owns.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
