//! Container networks: each container gets its own network namespace with
//! a veth pair to the bridge `skiff0` (10.89.0.1/16), an address leased
//! host-wide, and no way off the machine: no NAT, no forwarding changes and
//! no default route, so only the bridge's subnet (the host at 10.89.0.1 and
//! other containers) is reachable.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;

use nix::errno::Errno;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{unshare, CloneFlags};
use nix::sys::statfs::{statfs, NSFS_MAGIC};

use crate::netlink::Netlink;

/// The bridge every container's veth is attached to; shared by all Skiff
/// roots on the host.
pub const BRIDGE: &str = "skiff0";
/// The bridge's (the host's) address on the container network.
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 89, 0, 1);
pub const PREFIX_LEN: u8 = 16;
/// The bridge's hardware address, set explicitly (locally administered,
/// `0a:58` and the gateway address, as CNI's bridge plugin makes them).
/// A bridge left to choose takes the lowest address among its ports, so
/// it changes as containers come and go; every container still holding
/// the old one for the gateway in its ARP cache then sends into the void
/// until that entry expires: its new connections to the host (the Lambda
/// Runtime API) and its replies to the gateway stall for seconds.
pub const BRIDGE_MAC: [u8; 6] = [0x0a, 0x58, 10, 89, 0, 1];
/// Host-wide lease directory: leases must be unique across all roots.
pub const DEFAULT_IPAM_DIR: &str = "/run/skiff/ipam";
/// Name of the container's end of the veth pair.
const CONTAINER_IF: &str = "eth0";
/// Usable host part of 10.89.0.0/16: .0.2 to .255.254.
const FIRST_HOST: u32 = 2;
const LAST_HOST: u32 = (1 << (32 - PREFIX_LEN as u32)) - 2;

#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("network namespace {0} exists already; tear the old container's network down first")]
    Exists(PathBuf),
    #[error("cannot create the network namespace {path}: {source}")]
    Netns { path: PathBuf, source: io::Error },
    #[error("no free address left on {BRIDGE} (10.89.0.0/16)")]
    Exhausted,
    #[error("cannot lease an address in {dir}: {source}")]
    Ipam { dir: PathBuf, source: io::Error },
    #[error("cannot {what}: {source}")]
    Netlink { what: String, source: io::Error },
    #[error("cannot remove the network namespace {path}: {source}")]
    Teardown { path: PathBuf, source: io::Error },
}

fn nl_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> NetworkError {
    let what = what.into();
    move |source| NetworkError::Netlink { what, source }
}

/// A container's place on the bridge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    /// Bind mount of the namespace; give it to the runtime to join.
    pub netns_path: PathBuf,
    pub ip: Ipv4Addr,
    /// Host end of the veth pair, `sk` + the address in hex.
    pub host_veth: String,
}

/// Sets up and tears down container networks.
#[derive(Debug, Clone)]
pub struct Network {
    ipam_dir: PathBuf,
    default_route: bool,
}

impl Default for Network {
    fn default() -> Self {
        Self::new()
    }
}

impl Network {
    /// Leases in [`DEFAULT_IPAM_DIR`], no default route.
    pub fn new() -> Self {
        Self::with_ipam_dir(DEFAULT_IPAM_DIR)
    }

    pub fn with_ipam_dir(ipam_dir: impl Into<PathBuf>) -> Self {
        Network {
            ipam_dir: ipam_dir.into(),
            default_route: false,
        }
    }

    /// Adds a default route via the bridge in the container. Off by
    /// default: on a host that forwards IPv4 (any Docker host) the
    /// container's traffic would then leave the machine un-NATed.
    pub fn with_default_route(mut self, on: bool) -> Self {
        self.default_route = on;
        self
    }

    pub fn ipam_dir(&self) -> &Path {
        &self.ipam_dir
    }

    /// Where [`Self::setup`] puts the namespace of container `id`.
    pub fn netns_path(id: &str, netns_dir: &Path) -> PathBuf {
        netns_dir.join(id)
    }

    /// Creates the namespace `netns_dir/<id>` with `lo` up and `eth0` on
    /// the bridge holding a fresh address. On failure nothing is left.
    pub fn setup(&self, id: &str, netns_dir: &Path) -> Result<Attachment, NetworkError> {
        self.setup_announcing(id, netns_dir, |_| {})
    }

    /// [`Self::setup`], telling `on_address` the address as soon as it is
    /// leased, before the interface is made.
    pub fn setup_announcing(
        &self,
        id: &str,
        netns_dir: &Path,
        on_address: impl FnOnce(Ipv4Addr),
    ) -> Result<Attachment, NetworkError> {
        let ns = Namespace::make().map_err(|source| NetworkError::Netns {
            path: Self::netns_path(id, netns_dir),
            source,
        })?;
        self.setup_in(id, netns_dir, ns, on_address)
    }

    /// [`Self::setup_announcing`] in a namespace made ahead (see
    /// [`Namespace`]).
    pub fn setup_in(
        &self,
        id: &str,
        netns_dir: &Path,
        ns: Namespace,
        on_address: impl FnOnce(Ipv4Addr),
    ) -> Result<Attachment, NetworkError> {
        crate::run_root::ensure();
        let netns_path = Self::netns_path(id, netns_dir);
        pin_netns(&netns_path, &ns)?;
        let Namespace {
            fd: ns_fd,
            nl: ns_nl,
            ipv6_default,
        } = ns;
        let ip = match self.allocate(&netns_path) {
            Ok(ip) => ip,
            Err(e) => {
                let _ = remove_netns(&netns_path);
                return Err(e);
            }
        };
        on_address(ip);
        let att = Attachment {
            netns_path,
            ip,
            host_veth: veth_name(ip),
        };
        let plumbed = self.plumb(&att, &ns_fd, ns_nl);
        if let Some((default, was)) = ipv6_default {
            // eth0 is made (or never will be): later interfaces get the
            // namespace's own default again. At offset 0: sysctl ignores
            // a write past it.
            use std::os::unix::fs::FileExt;
            if let Err(e) = default.write_all_at(&was, 0) {
                tracing::warn!("cannot set IPv6 back on for the container's next interfaces: {e}");
            }
        }
        match plumbed {
            Ok(()) => Ok(att),
            Err(e) => {
                if let Err(t) = self.teardown(&att) {
                    tracing::warn!("cleaning up a failed network setup: {t}");
                }
                Err(e)
            }
        }
    }

    fn plumb(
        &self,
        att: &Attachment,
        ns_fd: &OwnedFd,
        mut ns_nl: Netlink,
    ) -> Result<(), NetworkError> {
        let mut nl = Netlink::open().map_err(nl_err("open a netlink socket"))?;
        let bridge = ensure_bridge(&mut nl)?;
        let what = || format!("create veth {} on {BRIDGE}", att.host_veth);
        match nl.create_veth(&att.host_veth, bridge, CONTAINER_IF, ns_fd.as_raw_fd()) {
            // A leftover of this address that `lease` could not see (no
            // sysfs): delete it, synchronously, and try once more.
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                match nl.delete_link(&att.host_veth) {
                    Ok(()) => {}
                    Err(e) if e.raw_os_error() == Some(libc::ENODEV) => {}
                    Err(e) => return Err(nl_err(what())(e)),
                }
                nl.create_veth(&att.host_veth, bridge, CONTAINER_IF, ns_fd.as_raw_fd())
                    .map_err(nl_err(what()))?;
            }
            other => other.map_err(nl_err(what()))?,
        }
        let eth0 = ns_nl
            .link_index(CONTAINER_IF)
            .map_err(nl_err("find eth0 in the container namespace"))?
            .ok_or_else(|| {
                nl_err("find eth0 in the container namespace")(io::Error::from_raw_os_error(
                    libc::ENODEV,
                ))
            })?;
        ns_nl
            .add_address(eth0, att.ip, PREFIX_LEN)
            .map_err(nl_err(format!("add {}/{PREFIX_LEN} to eth0", att.ip)))?;
        ns_nl.set_up(eth0).map_err(nl_err("bring eth0 up"))?;
        if self.default_route {
            ns_nl
                .add_default_route(GATEWAY)
                .map_err(nl_err("add the default route"))?;
        }
        Ok(())
    }

    /// Removes what [`Self::setup`] made: the namespace, and with it the
    /// veth pair, and the lease (if it is still this namespace's).
    /// Idempotent. Call it once the container is deleted: a process still
    /// in the namespace keeps it, and the veth pair, alive.
    ///
    /// The veth pair goes away asynchronously, when the kernel destroys the
    /// namespace (~15 ms here). Deleting it synchronously instead
    /// (RTM_DELLINK) waits for RCU grace periods: 10-25 ms on the hot path
    /// of `skiff run --rm`. Until the pair is gone its address is not
    /// leased again (see [`Self::lease`]), so a dying interface never
    /// answers for a new container.
    pub fn teardown(&self, att: &Attachment) -> Result<(), NetworkError> {
        self.release(att.ip, &att.netns_path);
        remove_netns(&att.netns_path)
    }

    /// [`Self::teardown`] for a container known only by id, e.g. a
    /// leftover after a crash. Idempotent; nothing to do is success.
    pub fn teardown_by_id(&self, id: &str, netns_dir: &Path) -> Result<(), NetworkError> {
        let netns_path = Self::netns_path(id, netns_dir);
        let ip = match std::fs::read_to_string(ip_file(&netns_path)) {
            Ok(s) => s.trim().parse().ok(),
            // A lease is taken after its namespace file is made and given
            // back before it is removed: without the file there is none,
            // and no need to read every lease to be sure (a second
            // teardown, or a container without a network).
            Err(_) if std::fs::symlink_metadata(&netns_path).is_err() => return Ok(()),
            Err(_) => self.find_lease(&netns_path),
        };
        match ip {
            Some(ip) => self.teardown(&Attachment {
                host_veth: veth_name(ip),
                netns_path,
                ip,
            }),
            None => remove_netns(&netns_path),
        }
    }

    /// Leases an address for the namespace at `owner` and records it next
    /// to the namespace file, so [`Self::teardown_by_id`] finds it without
    /// reading every lease.
    fn allocate(&self, owner: &Path) -> Result<Ipv4Addr, NetworkError> {
        let ipam_err = |source| NetworkError::Ipam {
            dir: self.ipam_dir.clone(),
            source,
        };
        let ip = self
            .lease(owner)
            .map_err(ipam_err)?
            .ok_or(NetworkError::Exhausted)?;
        if let Err(e) = std::fs::write(ip_file(owner), ip.to_string()) {
            self.release(ip, owner);
            return Err(ipam_err(e));
        }
        Ok(ip)
    }

    /// A lease is a file `<ipam_dir>/<ip>` holding the owner's path,
    /// created atomically with its content (hard link of a written temp
    /// file), so no reader sees a half-written lease. A lease whose owner
    /// is no longer a mounted namespace is stale and reclaimed. An address
    /// whose veth still exists (a torn-down namespace the kernel has not
    /// destroyed yet) is skipped.
    fn lease(&self, owner: &Path) -> io::Result<Option<Ipv4Addr>> {
        std::fs::create_dir_all(&self.ipam_dir)?;
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let tmp = self.ipam_dir.join(format!(
            ".tmp-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let result = (|| {
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o644)
                .open(&tmp)?;
            f.write_all(owner.as_os_str().as_encoded_bytes())?;
            drop(f);
            // Start where this owner hashes to: the common case is one
            // link(2) whatever the number of leases.
            let span = LAST_HOST - FIRST_HOST + 1;
            let start = fnv1a(owner.as_os_str().as_encoded_bytes()) % span;
            for i in 0..span {
                let ip = host_ip((start + i) % span);
                if veth_exists(ip) {
                    continue;
                }
                let lease = self.ipam_dir.join(ip.to_string());
                match std::fs::hard_link(&tmp, &lease) {
                    Ok(()) => return Ok(Some(ip)),
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                        if self.reclaim(&lease, &tmp)? {
                            return Ok(Some(ip));
                        }
                    }
                    Err(e) => return Err(e),
                }
            }
            Ok(None)
        })();
        let _ = std::fs::remove_file(&tmp);
        result
    }

    /// Takes over `lease` if its owner is gone. The lock serialises
    /// reclaimers; the owner is re-read under it, and a fresh lease always
    /// has a mounted namespace (created before the lease), so a live lease
    /// is never taken.
    fn reclaim(&self, lease: &Path, tmp: &Path) -> io::Result<bool> {
        let lock = File::create(self.ipam_dir.join(".lock"))?;
        crate::lock_exclusive(&lock)?;
        let owner = match std::fs::read_to_string(lease) {
            Ok(o) => o,
            Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(e),
        };
        if !owner.is_empty() && is_mounted_netns(Path::new(&owner)) {
            return Ok(false);
        }
        tracing::info!(lease = %lease.display(), owner, "reclaiming a stale address lease");
        match std::fs::remove_file(lease) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        match std::fs::hard_link(tmp, lease) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Drops the lease of `ip` if `owner` still holds it.
    fn release(&self, ip: Ipv4Addr, owner: &Path) {
        let lease = self.ipam_dir.join(ip.to_string());
        if std::fs::read(&lease).is_ok_and(|o| o == owner.as_os_str().as_encoded_bytes()) {
            let _ = std::fs::remove_file(&lease);
        }
        let _ = std::fs::remove_file(ip_file(owner));
    }

    fn find_lease(&self, owner: &Path) -> Option<Ipv4Addr> {
        let want = owner.as_os_str().as_encoded_bytes();
        std::fs::read_dir(&self.ipam_dir)
            .ok()?
            .flatten()
            .find(|e| std::fs::read(e.path()).is_ok_and(|o| o == want))
            .and_then(|e| e.file_name().to_str()?.parse().ok())
    }
}

fn ip_file(netns_path: &Path) -> PathBuf {
    let mut p = netns_path.as_os_str().to_owned();
    p.push(".ip");
    PathBuf::from(p)
}

/// The `n`th usable address of the subnet (0 is 10.89.0.2).
fn host_ip(n: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(GATEWAY) - 1 + FIRST_HOST + n)
}

fn veth_name(ip: Ipv4Addr) -> String {
    format!("sk{:08x}", u32::from(ip))
}

fn fnv1a(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5u32, |h, b| {
        (h ^ u32::from(*b)).wrapping_mul(0x0100_0193)
    })
}

fn veth_exists(ip: Ipv4Addr) -> bool {
    Path::new("/sys/class/net").join(veth_name(ip)).exists()
}

fn is_mounted_netns(path: &Path) -> bool {
    statfs(path).is_ok_and(|s| s.filesystem_type() == NSFS_MAGIC)
}

/// Makes sure the bridge exists, up, with the gateway address: for a
/// daemon that listens on `GATEWAY` before any container is attached.
pub fn ensure_bridge_up() -> Result<(), NetworkError> {
    let mut nl = Netlink::open().map_err(nl_err("open a netlink socket"))?;
    ensure_bridge(&mut nl).map(|_| ())
}

/// The bridge's index; creates it (up, with the gateway address) when
/// missing. Concurrent creators are fine: EEXIST means someone else won.
fn ensure_bridge(nl: &mut Netlink) -> Result<u32, NetworkError> {
    if let Some(link) = nl
        .link(BRIDGE)
        .map_err(nl_err(format!("look up {BRIDGE}")))?
    {
        if link.mac != Some(BRIDGE_MAC) {
            // A bridge made before its address was fixed (or by hand).
            tracing::info!("giving {BRIDGE} its fixed hardware address");
            nl.set_mac(link.index, BRIDGE_MAC)
                .map_err(nl_err(format!("set the hardware address of {BRIDGE}")))?;
        }
        return Ok(link.index);
    }
    match nl.create_bridge(BRIDGE, BRIDGE_MAC) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
        Err(e) => return Err(nl_err(format!("create bridge {BRIDGE}"))(e)),
    }
    let index = nl
        .link_index(BRIDGE)
        .map_err(nl_err(format!("look up {BRIDGE}")))?
        .ok_or_else(|| {
            nl_err(format!("look up {BRIDGE}"))(io::Error::from_raw_os_error(libc::ENODEV))
        })?;
    match nl.add_address(index, GATEWAY, PREFIX_LEN) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
        Err(e) => return Err(nl_err(format!("add {GATEWAY}/{PREFIX_LEN} to {BRIDGE}"))(e)),
    }
    nl.set_up(index)
        .map_err(nl_err(format!("bring {BRIDGE} up")))?;
    Ok(index)
}

/// A new network namespace with `lo` up, not yet pinned to a path: held
/// only by this value, it goes when the value does (a process that dies
/// leaves none behind). Make it ahead of its container with
/// [`Namespace::make`], on a thread of its own, while other work goes on;
/// [`Network::setup_in`] pins it.
pub struct Namespace {
    fd: OwnedFd,
    /// A netlink socket inside it.
    nl: Netlink,
    /// Its `net.ipv6.conf.default.disable_ipv6`, set while eth0 is made
    /// (see [`Namespace::unshare`]), and the value to put back; `None`
    /// without IPv6.
    ipv6_default: Option<(File, Vec<u8>)>,
}

impl Namespace {
    /// Unshares the calling thread's network namespace: call it on a
    /// thread that ends after (the thread stays in the namespace), as
    /// [`Namespace::spawn`] does.
    fn unshare() -> io::Result<Namespace> {
        unshare(CloneFlags::CLONE_NEWNET)?;
        // The container network is IPv4 only, and so is the container's
        // interface, as Docker (26 and later) leaves one on an IPv4-only
        // network. With IPv6 on, the kernel gives eth0 a link-local
        // address as it comes up, checks it for duplicates and announces
        // it over the bridge to every container, and containers could
        // reach the host's services bound to `::` over it. Off by default
        // in the namespace until eth0 is made (see `setup_in`): `lo` keeps
        // ::1, and interfaces made later get the namespace's own default
        // back. The file, opened here, stays this namespace's setting
        // wherever it is written from. A kernel without IPv6 has none.
        let ipv6_default = match OpenOptions::new()
            .read(true)
            .write(true)
            .open("/proc/sys/net/ipv6/conf/default/disable_ipv6")
            .and_then(|mut f| {
                let mut was = Vec::new();
                std::io::Read::read_to_end(&mut f, &mut was)?;
                use std::os::unix::fs::FileExt;
                f.write_all_at(b"1", 0).map(|_| (f, was))
            }) {
            Ok(d) => Some(d),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => {
                tracing::debug!("cannot turn IPv6 off for the container's interface: {e}");
                None
            }
        };
        let fd = File::open("/proc/thread-self/ns/net")?.into();
        let mut nl = Netlink::open()?;
        // A new namespace has only `lo`, always index 1.
        nl.set_up(1)?;
        Ok(Namespace {
            fd,
            nl,
            ipv6_default,
        })
    }

    /// Starts making a namespace on a throwaway thread (unshare(CLONE_NEWNET)
    /// moves only the calling thread); join the handle for it.
    ///
    /// The thread yields first, as SCHED_BATCH. Made ahead, the namespace
    /// (0.6 ms of kernel work) is meant to overlap other work, not to stop
    /// it: a new thread often starts on its maker's CPU, in its place, and
    /// kept it for a whole time slice half the time here, its maker waiting
    /// (`skiff run --rm IMG true`, bench/ab-start: about -0.5 ms). The
    /// yield gives the CPU back; as a batch thread, it does not take it
    /// again each time it wakes, but keeps its normal share (on a busy
    /// host it is not starved while it holds the kernel's network locks).
    pub fn spawn() -> io::Result<NamespaceMaker> {
        let thread = std::thread::Builder::new().spawn(|| {
            let param = libc::sched_param { sched_priority: 0 };
            // SAFETY: changes the calling thread's policy only; reads the
            // param we pass. A failure leaves it as it was: only slower.
            unsafe { libc::sched_setscheduler(0, libc::SCHED_BATCH, &param) };
            std::thread::yield_now();
            Namespace::unshare()
        })?;
        Ok(NamespaceMaker(thread))
    }

    /// [`Namespace::spawn`], waited for.
    fn make() -> io::Result<Namespace> {
        Namespace::spawn()?.join()
    }
}

/// A namespace being made on a thread of its own (see [`Namespace::spawn`]).
pub struct NamespaceMaker(JoinHandle<io::Result<Namespace>>);

impl NamespaceMaker {
    /// The namespace, made (or why not).
    pub fn join(self) -> io::Result<Namespace> {
        self.0
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("netns helper thread panicked")))
    }
}

/// Pins `ns` at `path`, as `ip netns add` does (a bind mount of the
/// namespace onto an empty file), so that it outlives this process.
fn pin_netns(path: &Path, ns: &Namespace) -> Result<(), NetworkError> {
    let err = |source: io::Error| NetworkError::Netns {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    match OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o444)
        .open(path)
    {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            return Err(NetworkError::Exists(path.to_path_buf()))
        }
        Err(e) => return Err(err(e)),
    }
    let source = format!("/proc/self/fd/{}", ns.fd.as_raw_fd());
    mount(
        Some(source.as_str()),
        path,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(|e| {
        let _ = remove_netns(path);
        err(e.into())
    })
}

/// Unmounts and removes a namespace file; absent is fine.
fn remove_netns(path: &Path) -> Result<(), NetworkError> {
    let err = |source: io::Error| NetworkError::Teardown {
        path: path.to_path_buf(),
        source,
    };
    match umount2(path, MntFlags::MNT_DETACH) {
        Ok(()) | Err(Errno::EINVAL) | Err(Errno::ENOENT) => {}
        Err(e) => return Err(err(e.into())),
    }
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(err(e)),
    }
}

/// `/etc/hosts` for a container called `hostname` at `ip` (loopback when
/// it has no network of its own).
pub fn etc_hosts(hostname: &str, ip: Option<Ipv4Addr>) -> String {
    let own = ip.unwrap_or(Ipv4Addr::LOCALHOST);
    format!(
        "127.0.0.1\tlocalhost\n\
         ::1\tlocalhost ip6-localhost ip6-loopback\n\
         fe00::0\tip6-localnet\n\
         ff00::0\tip6-mcastprefix\n\
         ff02::1\tip6-allnodes\n\
         ff02::2\tip6-allrouters\n\
         {own}\t{hostname}\n"
    )
}

/// `/etc/resolv.conf` for containers, from the host's: loopback
/// nameservers (systemd-resolved, dnsmasq) mean nothing inside a
/// container's namespace and are dropped; `search` and `options` stay.
pub fn resolv_conf() -> String {
    resolv_conf_from(&std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default())
}

/// [`resolv_conf`] from the given host file content.
pub fn resolv_conf_from(host: &str) -> String {
    let mut out = String::new();
    for line in host.lines().map(str::trim) {
        let mut words = line.split_whitespace();
        match words.next() {
            Some("nameserver") => {
                let Some(addr) = words.next() else { continue };
                let addr = addr.split('%').next().unwrap_or(addr);
                let loopback = addr
                    .parse::<std::net::IpAddr>()
                    .map_or(true, |a| a.is_loopback());
                if !loopback {
                    out.push_str(line);
                    out.push('\n');
                }
            }
            Some("search") | Some("domain") | Some("options") => {
                out.push_str(line);
                out.push('\n');
            }
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_and_resolv() {
        let h = etc_hosts("abc", Some(Ipv4Addr::new(10, 89, 1, 2)));
        assert!(h.starts_with("127.0.0.1\tlocalhost\n"));
        assert!(h.ends_with("10.89.1.2\tabc\n"));
        assert!(etc_hosts("abc", None).ends_with("127.0.0.1\tabc\n"));
        let r = resolv_conf_from(
            "# generated\nnameserver 127.0.0.53\nnameserver ::1\nnameserver 192.0.2.1\nsearch example.org\noptions edns0\n",
        );
        assert_eq!(
            r,
            "nameserver 192.0.2.1\nsearch example.org\noptions edns0\n"
        );
        assert_eq!(resolv_conf_from("nameserver 127.0.0.1\n"), "");
    }

    #[test]
    fn names_and_ranges() {
        assert_eq!(veth_name(Ipv4Addr::new(10, 89, 0, 2)), "sk0a590002");
        assert!(veth_name(Ipv4Addr::new(10, 89, 255, 254)).len() <= 15);
        assert_eq!(LAST_HOST, 65534);
        assert_eq!(
            ip_file(Path::new("/r/netns/abc")),
            Path::new("/r/netns/abc.ip")
        );
    }

    #[test]
    fn leases_are_unique_and_stale_ones_reclaimed() {
        let dir = tempfile::tempdir().unwrap();
        let ipam = dir.path().join("ipam");
        let net = Network::with_ipam_dir(&ipam);
        // A mounted namespace file: these leases are live.
        let live = Path::new("/proc/self/ns/net");
        assert!(is_mounted_netns(live));
        let ips: std::collections::HashSet<_> =
            (0..50).map(|_| net.lease(live).unwrap().unwrap()).collect();
        assert_eq!(ips.len(), 50);
        // A lease whose owner is gone is taken over.
        let owner = dir.path().join("ns-new");
        let span = LAST_HOST - FIRST_HOST + 1;
        let first = host_ip(fnv1a(owner.as_os_str().as_encoded_bytes()) % span);
        std::fs::write(ipam.join(first.to_string()), "/gone/netns/x").unwrap();
        assert_eq!(net.lease(&owner).unwrap(), Some(first));
        assert_eq!(net.find_lease(&owner), Some(first));
        net.release(first, &owner);
        assert!(!ipam.join(first.to_string()).exists());
        // Releasing someone else's lease does nothing.
        let other = ips.iter().next().copied().unwrap();
        net.release(other, &owner);
        assert!(ipam.join(other.to_string()).exists());
        assert!(std::fs::read_dir(&ipam)
            .unwrap()
            .flatten()
            .all(|e| !e.file_name().to_string_lossy().starts_with(".tmp")));
    }
}
