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
